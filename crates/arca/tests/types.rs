//! TypeScript for clients, against real `arca serve` processes:
//! `GET /v1/types.ts` (and `arca types`) compiled by `tsc --strict`
//! (npm `typescript` 5) with a typed client (`tests/types/client.ts`) that
//! then runs against the server; openapi-typescript's output for
//! `/openapi.json` compiled with an openapi-fetch call of every document
//! route (`tests/types/openapi-client.ts`), run too; the route's
//! visibility, revalidation and following collection changes. The node
//! tools come from `ARCA_TEST_TYPES_DIR` (`scripts/test` installs
//! `tests/types/package.json` into `~/.cache/arca/types-tools`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Where `scripts/test` installed the node tools.
fn tools() -> PathBuf {
    let dir = std::env::var("ARCA_TEST_TYPES_DIR").map_or_else(
        |_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            PathBuf::from(home).join(".cache/arca/types-tools")
        },
        PathBuf::from,
    );
    for package in ["typescript", "openapi-typescript", "openapi-fetch"] {
        assert!(
            dir.join("node_modules").join(package).exists(),
            "{package} is needed in {} (set ARCA_TEST_TYPES_DIR): ./scripts/test installs it",
            dir.display()
        );
    }
    dir
}

/// The repository's `tests/types/` folder.
fn sources() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/types")
}

/// A folder to compile in: the given files, the shared `tsconfig.json`,
/// ES modules, and the installed packages.
fn workdir(files: &[(&str, &[u8])]) -> TempDir {
    let dir = TempDir::new("types");
    std::os::unix::fs::symlink(tools().join("node_modules"), dir.0.join("node_modules"))
        .expect("link node_modules");
    std::fs::write(dir.0.join("package.json"), r#"{"type": "module"}"#).expect("package.json");
    std::fs::copy(sources().join("tsconfig.json"), dir.0.join("tsconfig.json")).expect("tsconfig");
    for (name, bytes) in files {
        std::fs::write(dir.0.join(name), bytes).expect("write");
    }
    dir
}

/// Runs `node args...` in `dir`; its stdout, or a failure with both streams.
fn node(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("node")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("node");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "node {args:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `tsc -p .` (strict, per tests/types/tsconfig.json).
fn tsc(dir: &Path) {
    let tsc = tools().join("node_modules/typescript/bin/tsc");
    node(dir, &[tsc.to_str().expect("path"), "-p", "."]);
}

/// The collections the clients in `tests/types/` are written for: every
/// kind of field a schema may have, and one (`weird`) whose names and
/// texts try to break the generated code.
async fn define_client_collections(s: &Server) {
    let t = s.admin();
    let all = json!({"read": {"roles": ["*"]}, "create": {"roles": ["*"]},
                     "update": {"roles": ["*"]}, "delete": {"roles": ["*"]}});
    define(
        s,
        &t,
        "orders",
        json!({"schema": {"type": "object", "additionalProperties": false, "required": ["item", "qty"],
            "properties": {
                "item": {"type": "string", "minLength": 1, "description": "What was ordered"},
                "qty": {"type": "integer", "minimum": 1},
                "note": {"type": ["string", "null"]},
                "status": {"enum": ["open", "shipped", "cancelled"]},
                "address": {"type": "object", "required": ["city"],
                            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}},
                "tags": {"type": "array", "items": {"type": "string"}},
                "placed_at": {"type": "string", "format": "date-time"}}},
            "access": all}),
    )
    .await;
    define(
        s,
        &t,
        "weird",
        json!({"schema": {"type": "object", "additionalProperties": false,
            "properties": {
                "kind": {"enum": ["a\"b", "c\\d", "\u{2028}"]},
                "my-field": {"type": "number", "description": "*/ export const pwned = 1; /*"},
                "class": {"type": "string"},
                "a\"; export const pwned = 2; //": {"type": "string"},
                "either": {"anyOf": [{"type": "string"},
                                     {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}]},
                "größe": {"type": "boolean"}}},
            "access": all}),
    )
    .await;
    define(
        s,
        &t,
        "free_form",
        json!({"indexes": [{"fields": {"n": 1}}], "access": all}),
    )
    .await;
}

async fn text(s: &Server, path: &str) -> String {
    let r = client().get(s.url(path)).send().await.expect("GET");
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.expect("text")
}

#[tokio::test]
async fn the_declarations_compile_strict_with_a_typed_client_that_runs() {
    let s = Server::dev();
    define_client_collections(&s).await;
    let declarations = text(&s, "/v1/types.ts").await;
    for name in [
        "OrdersInput",
        "OrdersDocument",
        "OrdersListed",
        "OrdersPatch",
        "WeirdInput",
        "FreeFormDocument",
    ] {
        assert!(
            declarations.contains(&format!("export type {name} = ")),
            "{name}"
        );
    }
    let client = std::fs::read(sources().join("client.ts")).expect("client.ts");
    let dir = workdir(&[
        ("arca-types.ts", declarations.as_bytes()),
        ("client.ts", &client),
    ]);
    tsc(&dir.0);
    let token = s.token("app-user", &[], None);
    let out = node(&dir.0, &["out/client.js", &s.base, &token]);
    assert!(out.contains("client: ok"), "{out}");
}

#[tokio::test]
async fn openapi_typescript_output_compiles_with_a_typed_call_of_every_document_route() {
    let s = Server::dev();
    define_client_collections(&s).await;
    let spec = text(&s, "/openapi.json").await;
    let client = std::fs::read(sources().join("openapi-client.ts")).expect("openapi-client.ts");
    let dir = workdir(&[
        ("openapi.json", spec.as_bytes()),
        ("openapi-client.ts", &client),
    ]);
    let generator = tools().join("node_modules/openapi-typescript/bin/cli.js");
    node(
        &dir.0,
        &[
            generator.to_str().expect("path"),
            "openapi.json",
            "-o",
            "openapi.d.ts",
        ],
    );
    let generated = std::fs::read_to_string(dir.0.join("openapi.d.ts")).expect("generated");
    // The patch is typed field by field now (it used to be an object with
    // no properties: `Record<string, never>`, which no client can send).
    let patch = generated
        .split("OrdersPatch: {")
        .nth(1)
        .expect("OrdersPatch");
    assert!(patch.contains("qty?: number | null;"), "{patch}");
    tsc(&dir.0);
    let token = s.token("app-user", &[], None);
    let out = node(&dir.0, &["out/openapi-client.js", &s.base, &token]);
    assert!(out.contains("openapi client: ok"), "{out}");
}

#[tokio::test]
async fn types_ts_follows_collection_changes_and_revalidates() {
    let s = Server::dev();
    let t = s.admin();
    let get = |tag: Option<String>, gzip: bool| {
        let mut req = client().get(s.url("/v1/types.ts"));
        if let Some(tag) = tag {
            req = req.header("if-none-match", tag);
        }
        if gzip {
            req = req.header("accept-encoding", "gzip");
        }
        req.send()
    };
    let r = get(None, false).await.expect("types");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/typescript; charset=utf-8"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let tag = r.headers()["etag"].to_str().expect("etag").to_owned();
    assert!(tag.starts_with("W/\""), "{tag}");
    let before = r.text().await.expect("text");
    assert!(
        before.contains("export interface Collections {\n}"),
        "{before}"
    );
    assert_eq!(
        get(Some(tag.clone()), false).await.expect("304").status(),
        304
    );
    let zipped = get(None, true).await.expect("gzip");
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    define(
        &s,
        &t,
        "notes",
        json!({"schema": {"type": "object", "properties": {"text": {"type": "string"}}}}),
    )
    .await;
    let r = get(Some(tag.clone()), false).await.expect("after");
    assert_eq!(r.status(), 200, "a new version");
    let after = r.text().await.expect("text");
    assert!(after.contains("export type NotesDocument = {"), "{after}");
    assert!(after.contains("  notes: { input: NotesInput;"), "{after}");
    let r = s.delete("/v1/collections/notes", &t).await;
    assert_eq!(r.status(), 204);
    assert!(!text(&s, "/v1/types.ts").await.contains("Notes"));
}

#[tokio::test]
async fn types_ts_is_visible_like_openapi_json() {
    let s = Server::dev();
    // Public: any Authorization header is ignored, as for /openapi.json.
    assert_eq!(s.get("/v1/types.ts", "garbage").await.status(), 200);
    let s = Server::start(Opts {
        env: vec![("ARCA_DOCS__PUBLIC".into(), "false".into())],
        ..Opts::default()
    });
    problem(
        client()
            .get(s.url("/v1/types.ts"))
            .send()
            .await
            .expect("types"),
        401,
    )
    .await;
    problem(s.get("/v1/types.ts", "not-a-token").await, 401).await;
    let t = s.token("reader", &[], None);
    assert_eq!(s.get("/v1/types.ts", &t).await.status(), 200);
}

#[tokio::test]
async fn arca_types_prints_the_declarations_of_the_configured_store() {
    let data = std::sync::Arc::new(TempDir::new("types-cli"));
    let served = {
        let s = Server::start(Opts {
            data: Some(data.clone()),
            ..Opts::default()
        });
        define_client_collections(&s).await;
        text(&s, "/v1/types.ts").await
    };
    let out = Command::new(BIN)
        .arg("types")
        .envs(common::store_env(&data.0))
        .env_remove("ARCA_CONFIG")
        .output()
        .expect("arca types");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).expect("utf-8"), served);
}
