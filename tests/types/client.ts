// A small typed client over Arca's generated declarations (arca-types.ts,
// from GET /v1/types.ts), as an app would write it: compiled with
// `tsc --strict` and run against a live server by crates/arca/tests/types.rs
// (`node out/client.js BASE TOKEN`). The collections it uses are defined
// by that test. `typeChecks` (never called) holds what must NOT compile.

import type {
  CollectionName,
  Collections,
  Count,
  OrdersDocument,
  OrdersInput,
  OrdersListed,
  OrdersPatch,
  Page,
  Problem,
  WeirdInput,
} from "./arca-types.js";
// A description that tries to end its doc comment stays inside it:
// @ts-expect-error no such export
import type { pwned } from "./arca-types.js";

declare const process: { argv: string[]; exitCode?: number };

/** A problem+json answer. */
class ArcaError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Problem,
  ) {
    super(`${status} ${problem.type}: ${problem.detail ?? problem.title}`);
  }
}

type Doc<N extends CollectionName> = Collections[N]["document"];

class Arca {
  constructor(
    private readonly base: string,
    private readonly token: string,
  ) {}

  private async call<T>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<{ body: T; headers: Headers }> {
    const res = await fetch(this.base + path, {
      method,
      headers: {
        Authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!res.ok) {
      throw new ArcaError(res.status, (await res.json()) as Problem);
    }
    const text = await res.text();
    return { body: (text ? JSON.parse(text) : undefined) as T, headers: res.headers };
  }

  private path(name: CollectionName, id?: string): string {
    const base = `/v1/collections/${name}/documents`;
    return id === undefined ? base : `${base}/${encodeURIComponent(id)}`;
  }

  /** Creates a document; with `key`, safe to retry (the first result is replayed). */
  async create<N extends CollectionName>(
    name: N,
    doc: Collections[N]["input"],
    key?: string,
  ): Promise<{ doc: Doc<N>; replayed: boolean }> {
    const headers: Record<string, string> = key ? { "Idempotency-Key": key } : {};
    const r = await this.call<Doc<N>>("POST", this.path(name), doc, headers);
    return { doc: r.body, replayed: r.headers.get("Idempotent-Replayed") === "true" };
  }

  async get<N extends CollectionName>(name: N, id: string): Promise<Doc<N>> {
    return (await this.call<Doc<N>>("GET", this.path(name, id))).body;
  }

  async list<N extends CollectionName>(
    name: N,
    q: { filter?: object; sort?: string; limit?: number; after?: string } = {},
  ): Promise<Page<Collections[N]["listed"]>> {
    const params = new URLSearchParams();
    if (q.filter) params.set("filter", JSON.stringify(q.filter));
    if (q.sort) params.set("sort", q.sort);
    if (q.limit) params.set("limit", String(q.limit));
    if (q.after) params.set("after", q.after);
    const query = params.size ? `?${params}` : "";
    return (await this.call<Page<Collections[N]["listed"]>>("GET", this.path(name) + query)).body;
  }

  /** Every matching document, page after page (cursor paging). */
  async *all<N extends CollectionName>(
    name: N,
    q: { filter?: object; sort?: string; limit?: number } = {},
  ): AsyncGenerator<Collections[N]["listed"]> {
    let after: string | undefined;
    do {
      const page = await this.list(name, { ...q, after });
      yield* page.items;
      after = page.next ?? undefined;
    } while (after);
  }

  async replace<N extends CollectionName>(
    name: N,
    id: string,
    doc: Collections[N]["input"],
    rev?: number,
  ): Promise<Doc<N>> {
    const headers: Record<string, string> = rev === undefined ? {} : { "If-Match": `"${rev}"` };
    return (await this.call<Doc<N>>("PUT", this.path(name, id), doc, headers)).body;
  }

  async patch<N extends CollectionName>(
    name: N,
    id: string,
    patch: Collections[N]["patch"],
    rev?: number,
  ): Promise<Doc<N>> {
    const headers: Record<string, string> = rev === undefined ? {} : { "If-Match": `"${rev}"` };
    return (await this.call<Doc<N>>("PATCH", this.path(name, id), patch, headers)).body;
  }

  async remove(name: CollectionName, id: string): Promise<void> {
    await this.call<undefined>("DELETE", this.path(name, id));
  }

  async count(name: CollectionName, filter?: object): Promise<number> {
    const query = filter ? `?filter=${encodeURIComponent(JSON.stringify(filter))}` : "";
    return (await this.call<Count>("GET", `/v1/collections/${name}/count${query}`)).body.count;
  }
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`failed: ${what}`);
}

async function main(): Promise<void> {
  const [base, token] = process.argv.slice(2);
  const arca = new Arca(base, token);
  const order: OrdersInput = {
    item: "book",
    qty: 2,
    status: "open",
    note: null,
    address: { city: "Lisbon" },
    tags: ["gift", "paper"],
    placed_at: "2026-12-06T10:00:00Z",
  };
  const first = await arca.create("orders", order, "order-1");
  const retry = await arca.create("orders", order, "order-1");
  check(!first.replayed && retry.replayed, "the retry is a replay");
  check(retry.doc._id === first.doc._id, "the retry created nothing");
  const created: OrdersDocument = first.doc;
  check(created._rev === 1 && created.item === "book", "created");

  const patch: OrdersPatch = { note: "wrap it", tags: null, address: { zip: "12345" } };
  const patched = await arca.patch("orders", created._id, patch, created._rev);
  check(patched._rev === 2, "patched revision");
  check(patched.tags === undefined, "null deleted the tags");
  check(patched.address?.city === "Lisbon" && patched.address?.zip === "12345", "nested merge");

  const replaced = await arca.replace("orders", created._id, { item: "book", qty: 5 }, patched._rev);
  check(replaced.qty === 5 && replaced.note === undefined, "replaced");

  for (let i = 0; i < 5; i++) {
    await arca.create("orders", { item: `pen ${i}`, qty: i + 1 });
  }
  const seen: OrdersListed[] = [];
  for await (const o of arca.all("orders", { sort: "-qty", limit: 2 })) {
    seen.push(o);
  }
  check(seen.length === 6, `six orders walked by cursor, got ${seen.length}`);
  check(new Set(seen.map((o) => o._id)).size === 6, "no order twice");
  check(seen[0].qty === 5, "sorted by qty, descending");
  // qty 5 (the book), and the pens' 3, 4 and 5.
  check((await arca.count("orders", { qty: { $gte: 3 } })) === 4, "count");

  try {
    await arca.create("orders", { item: "", qty: 0 });
    check(false, "a bad order is refused");
  } catch (e) {
    check(e instanceof ArcaError && e.status === 422, "422");
    const paths = (e as ArcaError).problem.errors?.map((f) => f.path).sort();
    check(JSON.stringify(paths) === JSON.stringify(["/item", "/qty"]), `field errors ${paths}`);
  }

  await arca.remove("orders", created._id);
  try {
    await arca.get("orders", created._id);
    check(false, "deleted");
  } catch (e) {
    check(e instanceof ArcaError && e.problem.type === "urn:arca:problem:document-not-found", "404");
  }

  const weird: WeirdInput = { kind: 'a"b', "my-field": 1, class: "x" };
  const stored = await arca.create("weird", weird);
  check(stored.doc.kind === 'a"b', "odd literals round-trip");
  console.log("client: ok");
}

// What must not compile: each line below is a type error (tsc fails if
// one is not).
export function typeChecks(doc: OrdersDocument, page: Page<OrdersListed>): unknown[] {
  // @ts-expect-error qty is a number
  const a: OrdersInput = { item: "x", qty: "2" };
  // @ts-expect-error item is required
  const b: OrdersInput = { qty: 2 };
  // @ts-expect-error a closed schema has no other fields
  const c: OrdersInput = { item: "x", qty: 2, colour: "red" };
  // @ts-expect-error status is one of its enum's values
  const d: OrdersInput = { item: "x", qty: 2, status: "lost" };
  // @ts-expect-error the system fields are read-only
  doc._rev = 3;
  // @ts-expect-error a patch keeps the field types
  const e: OrdersPatch = { qty: "3" };
  // @ts-expect-error a nested patch too
  const f: OrdersPatch = { address: { city: 3 } };
  // @ts-expect-error the city is a string in a stored document
  const g: number | undefined = doc.address?.city;
  // @ts-expect-error a listing may lack any field
  const h: string = page.items[0].item;
  // @ts-expect-error only the enum's exact values
  const i: WeirdInput["kind"] = "ab";
  // null deletes a field; every field is optional.
  const k: OrdersPatch = { qty: null, note: null, address: null };
  const l: OrdersPatch = {};
  return [a, b, c, d, e, f, g, h, i, k, l];
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
