#!/usr/bin/env python3
"""Arca against the DRF design and against the HTTP ceiling, in one run.

Starts a JWKS/OIDC issuer (shared/peers/mint.py), Arca (release build,
embedded engine, synchronous=FULL) and the DRF peer (gunicorn, 2 workers x 4
threads), seeds both with the same N documents (timed), then drives each
scenario with wrk for a fixed time at the same connection count:

  get      GET a random document by id
  list     list with an equality filter on the indexed field, limit 10
  create   create a validated document (durable)
  ceiling  a constant response through the same middleware stack (/healthz)

Both servers stay up and each scenario runs Arca then DRF back to back, for
--rounds rounds (default 3): the shared machine's slow and fast phases then
hit both alike, and the ratios are medians of round-by-round pairs.

For each run it reports req/s, p50, p99, non-2xx responses, the server's CPU
seconds during the run (utime+stime of the server and its children, from
/proc) and requests per server CPU-second, plus Arca's RSS idle and peak,
time to ready, the effect of the verified-token cache, and the list p99 at
a larger N (100k vs 1M). A run with any non-2xx response is marked invalid.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRK = ROOT / "bench" / "wrk"
CLK = os.sysconf("SC_CLK_TCK")
ITEMS = {
    "schema": {
        "type": "object",
        "properties": {
            "category": {"type": "string"},
            "name": {"type": "string", "minLength": 1},
            "price": {"type": "number", "minimum": 0},
            "qty": {"type": "integer", "minimum": 0},
        },
        "required": ["category", "name"],
    },
    "indexes": [{"fields": {"category": 1}}],
    "access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]}},
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, token=None, body=None, timeout=30):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_status(url, want=200, timeout=60, step=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http("GET", url, timeout=2)[0] == want:
                return True
        except OSError:
            pass
        time.sleep(step)
    raise SystemExit(f"{url} never answered {want}")


def cpu_seconds(pid):
    """utime+stime of pid and all its descendants, in seconds."""
    children = {}
    stats = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2:].split()
        ppid, ut, st = int(rest[1]), int(rest[11]), int(rest[12])
        stats[int(d.name)] = ut + st
        children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0)
        todo.extend(children.get(p, []))
    return total / CLK


def rss_kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def wrk(url, script, token, args, server_pid, env=None):
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
           "-s", str(WRK / script), "-H", f"Authorization: Bearer {token}", url]
    before = cpu_seconds(server_pid)
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True).stdout
    cpu = cpu_seconds(server_pid) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])
    sock = re.search(r"Socket errors: (.*)", out)
    errors = non2xx + (sum(int(x) for x in re.findall(r"\d+", sock.group(1))) if sock else 0)
    if errors:
        print(f"{url} {script}: " + "; ".join(re.findall(r"(Non-2xx[^\n]*|Socket errors[^\n]*)", out)), file=sys.stderr)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors, "cpu": cpu,
            "per_cpu": total / cpu if cpu > 0 else float("inf"), "requests": total}


class Proc:
    def __init__(self, cmd, env, cwd=None, log=None):
        self.t0 = time.monotonic()
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.p = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)


def heavy_count_url(base):
    """A count that scans every document (no index serves it) and tests
    each against four 1,000-value `$in` lists: the issue's attack, on the
    bench collection."""
    ints = list(range(100_000, 101_000))
    strs = [f"x{i}" for i in ints]
    f = {"$or": [{"qty": {"$in": ints}}, {"price": {"$in": ints}}, {"name": {"$in": strs}},
                 {"category": {"$nin": ["c1"], "$in": strs}}]}
    return f"{base}/v1/collections/items/count?filter=" + urllib.parse.quote(json.dumps(f))


def noisy_neighbour(url, quiet, attacker, args, pid, env, results, facts):
    """The noisy-neighbour scenario: one caller's GETs by id (wrk, 4
    connections), first alone, then while another caller keeps six heavy
    counts in flight, half of them abandoned after 100 ms (a client that
    gives up and sends again) and half honouring 429's Retry-After."""
    calm = dict(vars(args), connections=4, threads=1)
    results[("arca, GET alone (4 conns)", "get")] = [wrk(url, "get.lua", quiet, argparse.Namespace(**calm), pid, env)]
    target, stop = heavy_count_url(url), threading.Event()
    seen, lock = {}, threading.Lock()

    def attack(i):
        while not stop.is_set():
            req = urllib.request.Request(target, headers={"Authorization": f"Bearer {attacker}"})
            try:
                with urllib.request.urlopen(req, timeout=0.1 if i % 2 == 0 else 60) as r:
                    r.read()
                    status = str(r.status)
            except urllib.error.HTTPError as e:
                status = str(e.code)
                if e.code == 429:
                    time.sleep(float(e.headers.get("Retry-After", "1")))
            except (TimeoutError, OSError, urllib.error.URLError):
                status = "abandoned"
            with lock:
                seen[status] = seen.get(status, 0) + 1

    threads = [threading.Thread(target=attack, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(1)
    try:
        results[("arca, GET under attack (4 conns)", "get")] = [
            wrk(url, "get.lua", quiet, argparse.Namespace(**calm), pid, env)]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=65)
    facts["noisy_attacker"] = dict(sorted(seen.items()))


FULL_GROUP = {"pipeline": [{"$group": {"_id": "$category", "total": {"$sum": "$price"}, "n": {"$sum": 1}}}]}


def aggregations(url, token, args, pid, env, results, facts):
    """The aggregation scenarios (issue 19): wrk on an indexed $match +
    $group; a $group over the whole collection, timed one at a time; and
    one caller's GETs (wrk, 4 connections) alone and while two other
    clients run whole-collection $groups back to back."""
    results[("arca", "aggregate")] = [wrk(url, "aggregate.lua", token, args, pid, env)]
    took = []
    for _ in range(5):
        t = time.monotonic()
        status, body = http("POST", f"{url}/v1/collections/items/aggregate", token, FULL_GROUP, timeout=60)[:2]
        took.append((time.monotonic() - t) * 1000)
        assert status == 200, body
    facts["full_group_ms"] = sorted(took)
    calm = argparse.Namespace(**dict(vars(args), connections=4, threads=1))
    results[("arca, GET alone, before the $groups (4 conns)", "get")] = [wrk(url, "get.lua", token, calm, pid, env)]
    stop, runs, lock = threading.Event(), {"ok": 0, "other": 0}, threading.Lock()

    def loop():
        while not stop.is_set():
            status = http("POST", f"{url}/v1/collections/items/aggregate", token, FULL_GROUP, timeout=60)[0]
            with lock:
                runs["ok" if status == 200 else "other"] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    try:
        results[("arca, GET during 2 whole-collection $groups (4 conns)", "get")] = [
            wrk(url, "get.lua", token, calm, pid, env)]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=65)
    facts["groups_during_get"] = runs


def ndjson(path, start, count):
    with open(path, "w") as f:
        for i in range(start, start + count):
            f.write(json.dumps({"_id": f"d{i:07d}", "category": f"c{i % 100}", "name": f"item {i}",
                                "price": round((i % 1000) * 1.25, 2), "qty": i % 50}) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arca", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--scale-n", type=int, default=1_000_000, help="N for the list-at-scale run")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-drf", action="store_true")
    ap.add_argument("--rounds", type=int, default=3,
                    help="each scenario runs this many times, Arca and DRF interleaved; medians are reported")
    ap.add_argument("--one-worker", action=argparse.BooleanOptionalAction, default=True,
                    help="also run get, list and ceiling on Arca with server.workers = 1")
    ap.add_argument("--noisy", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the noisy-neighbour scenario: GET p99 of one caller, alone and while another "
                         "caller sends heavy counts (six at a time, half of them abandoned after 100 ms)")
    ap.add_argument("--aggregate", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the aggregation scenarios: an indexed $match + $group (wrk), a $group over the "
                         "whole collection (timed), and GET p99 while two clients run whole-collection $groups")
    ap.add_argument("--store", metavar="URL",
                    help="run Arca on this store (e.g. a mongodb:// URI of a real MongoDB; its database is "
                         "dropped and filled) instead of a fresh SQLite file; implies --no-one-worker and "
                         "no --baseline (those copy the SQLite file)")
    ap.add_argument("--baseline", metavar="BIN",
                    help="another arca binary (an earlier build) run in the same rounds on its own copy of "
                         "the data; the report gives this build's per-CPU-second ratio to it per scenario")
    args = ap.parse_args()
    if args.store:
        if args.baseline:
            ap.error("--baseline needs the embedded store (it copies the SQLite file)")
        args.one_worker = False

    work = Path(tempfile.mkdtemp(prefix="arca-bench-"))
    procs = []
    results = {}
    facts = {}
    try:
        # Issuer: JWKS + discovery, and the tokens.
        peers = work / "peers"
        shutil.copytree(Path(args.shared) / "peers", peers)
        idp_port = free_port()
        issuer = f"http://127.0.0.1:{idp_port}"
        mint_env = {"MINT_KEYS_DIR": str(work / "keys")}
        procs.append(Proc([args.python, str(peers / "mint.py"), "serve", "--port", str(idp_port)], mint_env))
        wait_status(f"{issuer}/jwks.json")
        token = subprocess.run([args.python, str(peers / "mint.py"), "token", "--sub", "bench", "--role", "admin",
                                "--aud", "api://arca", "--iss", issuer, "--ttl", "7200"],
                               env={**os.environ, **mint_env}, capture_output=True, text=True, check=True).stdout.strip()

        # Arca: define, import N documents (timed), restart (time to ready).
        arca_port = free_port()
        arca_url = f"http://127.0.0.1:{arca_port}"
        arca_env = {"ARCA_STORE__URL": args.store or f"sqlite://{work}/arca/arca.db",
                    "ARCA_SERVER__LISTEN": f"127.0.0.1:{arca_port}",
                    "ARCA_AUTH__ISSUER": issuer, "ARCA_AUTH__AUDIENCE": "api://arca", "ARCA_LOG__LEVEL": "warn",
                    "ARCA_LOG__FORMAT": "json",
                    # The container image's setting (deploy/Dockerfile).
                    "MIMALLOC_ARENA_EAGER_COMMIT": "0"}

        # wrk is one caller (one token) with many connections: the limit on
        # one caller's listings in flight (default 2) is raised to them for
        # the throughput scenarios; the noisy-neighbour one keeps it.
        per_caller = {"ARCA_QUERY__MAX_CONCURRENT_PER_CALLER": str(max(args.connections, 2))}

        def start_arca(extra=None):
            p = Proc([args.arca, "serve"], {**arca_env, **per_caller, **(extra or {})}, log=work / "arca.log")
            wait_status(f"{arca_url}/readyz", step=0.001)
            return p, (time.monotonic() - p.t0) * 1000

        arca, _ = start_arca()
        if args.store:
            # A store that outlives the run: start from an empty collection.
            http("DELETE", f"{arca_url}/v1/collections/items", token)
        assert http("PUT", f"{arca_url}/v1/collections/items", token, ITEMS)[0] in (200, 201)
        arca.stop()
        data = work / "seed.ndjson"
        ndjson(data, 0, args.n)
        t = time.monotonic()
        subprocess.run([args.arca, "import", "--collection", "items", str(data)], env={**os.environ, **arca_env},
                       check=True, capture_output=True)
        facts["arca_seed_s"] = time.monotonic() - t
        # The import's last commits may still be in the WAL: copy it too.
        for copy, wanted in (("arca1", args.one_worker), ("base", args.baseline)):
            for suffix in ("", "-wal"):
                if wanted and (work / "arca" / f"arca.db{suffix}").exists():
                    shutil.copy(work / "arca" / f"arca.db{suffix}", work / f"{copy}.db{suffix}")
        arca, ready_ms = start_arca()
        facts["arca_ready_ms"] = ready_ms
        facts["arca_rss_idle_kib"] = rss_kib(arca.p.pid, "VmRSS")
        env = {"BENCH_N": str(args.n)}
        # Both servers stay up (an idle one costs nothing) so that each
        # scenario runs Arca then DRF back to back, round after round: the
        # shared machine's slow and fast phases hit both alike.
        servers = [("arca", arca_url, arca)]
        # The same build sized to the one core wrk leaves it: one async
        # worker (`server.workers = 1`), its own copy of the data, same rounds.
        one_port = free_port()
        one = (f"http://127.0.0.1:{one_port}", Proc([args.arca, "serve"], {
            **arca_env, "ARCA_STORE__URL": f"sqlite://{work}/arca1.db", "ARCA_SERVER__LISTEN": f"127.0.0.1:{one_port}",
            "ARCA_SERVER__WORKERS": "1", **per_caller}, log=work / "arca1.log")) \
            if args.one_worker else None
        if one:
            procs.append(one[1])
            wait_status(f"{one[0]}/readyz", step=0.001)
        # An earlier build, same settings, its own copy of the data: its
        # rows sit right after this build's in every round.
        if args.baseline:
            base_port = free_port()
            base = Proc([args.baseline, "serve"], {
                **arca_env, "ARCA_STORE__URL": f"sqlite://{work}/base.db",
                "ARCA_SERVER__LISTEN": f"127.0.0.1:{base_port}"}, log=work / "base.log")
            procs.append(base)
            wait_status(f"http://127.0.0.1:{base_port}/readyz", step=0.001)
            servers.insert(1, (BASE, f"http://127.0.0.1:{base_port}", base))

        # The DRF peer: same issuer, same collection, same N.
        if not args.skip_drf:
            drf_port = free_port()
            drf_url = f"http://127.0.0.1:{drf_port}"
            drf_dir = peers / "drf"
            drf_env = {"PEER_DATA_DIR": str(work / "drf"), "PEER_JWKS_URL": f"{issuer}/jwks.json",
                       "PEER_AUDIENCE": "api://arca", "PEER_ISSUER": issuer}
            (work / "drf").mkdir()
            subprocess.run([args.python, "manage.py", "migrate", "-v", "0"], cwd=drf_dir,
                           env={**os.environ, **drf_env}, check=True)
            gunicorn = str(Path(args.python).parent / "gunicorn")
            drf_proc = Proc([gunicorn, "arcapeer.wsgi:application", "--bind", f"127.0.0.1:{drf_port}", "--workers", "2",
                        "--threads", "4", "--worker-class", "gthread", "--no-control-socket",
                        "--pid", str(work / "drf" / "gunicorn.pid")], drf_env, cwd=drf_dir, log=work / "drf.log")
            procs.append(drf_proc)
            wait_status(f"{drf_url}/healthz")
            facts["drf_ready_ms"] = (time.monotonic() - drf_proc.t0) * 1000
            assert http("PUT", f"{drf_url}/v1/collections/items", token, ITEMS)[0] in (200, 201)
            seed = (
                "import json\n"
                "from django.utils import timezone\n"
                "from documents.models import Collection, Document\n"
                "c = Collection.objects.get(name='items'); now = timezone.now(); batch = []\n"
                f"for line in open({str(data)!r}):\n"
                "    d = json.loads(line); i = d.pop('_id')\n"
                "    batch.append(Document(collection=c, doc_id=i, rev=1, owner='import', created_at=now, updated_at=now, data=d))\n"
                "    if len(batch) == 5000:\n"
                "        Document.objects.bulk_create(batch); batch = []\n"
                "Document.objects.bulk_create(batch)\n"
            )
            t = time.monotonic()
            subprocess.run([args.python, "manage.py", "shell", "-c", seed], cwd=drf_dir,
                           env={**os.environ, **drf_env}, check=True)
            facts["drf_seed_s"] = time.monotonic() - t
            servers.append(("drf", drf_url, drf_proc))

        for _ in range(args.rounds):
            for name in ("get", "list", "create", "ceiling"):
                for server, url, proc in servers:
                    r = wrk(url, f"{name}.lua", token, args, proc.p.pid, env)
                    results.setdefault((server, name), []).append(r)
                if one and name != "create":
                    r = wrk(one[0], f"{name}.lua", token, args, one[1].p.pid, env)
                    results.setdefault((ONE, name), []).append(r)
        facts["arca_rss_peak_kib"] = rss_kib(arca.p.pid, "VmHWM")
        for _, _, proc in servers:
            proc.stop()
        if one:
            one[1].stop()

        # Noisy neighbour: the default configuration (2 heavy reads per
        # caller), nothing else running.
        if args.noisy:
            attacker = subprocess.run([args.python, str(peers / "mint.py"), "token", "--sub", "attacker", "--role",
                                       "member", "--aud", "api://arca", "--iss", issuer, "--ttl", "7200"],
                                      env={**os.environ, **mint_env}, capture_output=True, text=True,
                                      check=True).stdout.strip()
            arca, _ = start_arca({"ARCA_QUERY__MAX_CONCURRENT_PER_CALLER": "2"})
            noisy_neighbour(arca_url, token, attacker, args, arca.p.pid, env, results, facts)
            arca.stop()

        if args.aggregate:
            arca, _ = start_arca()
            aggregations(arca_url, token, args, arca.p.pid, env, results, facts)
            arca.stop()

        # The verified-token cache: the same GET scenario without it.
        arca, _ = start_arca({"ARCA_AUTH__TOKEN_CACHE_SIZE": "0"})
        results[("arca (no token cache)", "get")] = [wrk(arca_url, "get.lua", token, args, arca.p.pid, env)]
        arca.stop()

        # List at scale: import up to scale-n documents, list again.
        if not args.no_scale and args.scale_n > args.n:
            more = work / "more.ndjson"
            ndjson(more, args.n, args.scale_n - args.n)
            t = time.monotonic()
            subprocess.run([args.arca, "import", "--collection", "items", str(more)], env={**os.environ, **arca_env},
                           check=True, capture_output=True)
            facts["arca_scale_seed_s"] = time.monotonic() - t
            more.unlink()
            arca, _ = start_arca()
            results[(f"arca @ {args.scale_n:,}", "list")] = [wrk(arca_url, "list.lua", token, args, arca.p.pid, env)]
            arca.stop()
    finally:
        for p in procs:
            p.stop()

    report(args, results, facts)
    shutil.rmtree(work, ignore_errors=True)


ONE = "arca (1 worker)"
BASE = "arca (baseline build)"


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def summary(runs):
    """One row from a scenario's rounds: medians, errors summed."""
    return {
        "rps": median([r["rps"] for r in runs]),
        "p50": median([r["p50"] for r in runs]),
        "p99": median([r["p99"] for r in runs]),
        "errors": sum(r["errors"] for r in runs),
        "cpu": median([r["cpu"] for r in runs]),
        "per_cpu": median([r["per_cpu"] for r in runs]),
        "lo": min(r["per_cpu"] for r in runs),
        "hi": max(r["per_cpu"] for r in runs),
        "rounds": len(runs),
    }


def paired(num, den, key="per_cpu"):
    """Median and range of round-by-round ratios of `key` (runs of one
    round were made back to back, so each pair saw the same machine)."""
    ratios = [a[key] / b[key] for a, b in zip(num, den)]
    return median(ratios), min(ratios), max(ratios)


def report(args, results, facts):
    lines = []
    machine = f"{os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, load {os.getloadavg()[0]:.2f}"
    if args.store:
        shown = re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", args.store)
        lines.append(f"Arca's store: {shown}")
    lines.append(f"N = {args.n:,} documents; wrk -t{args.threads} -c{args.connections} -d{args.duration}s; "
                 f"{args.rounds} rounds, Arca and DRF interleaved, medians; {machine}")
    lines.append("")
    lines.append("| server | scenario | req/s | p50 ms | p99 ms | errors | server CPU s | req per CPU-s | per CPU-s, min-max |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    invalid = []
    rows = {k: summary(v) for k, v in results.items()}
    for (server, name), r in rows.items():
        lines.append(f"| {server} | {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | "
                     f"{r['cpu']:.2f} | {r['per_cpu']:,.0f} | {r['lo']:,.0f}-{r['hi']:,.0f} |")
        if r["errors"]:
            invalid.append(f"{server}/{name}")
    lines.append("")
    a = {k[1]: v for k, v in rows.items() if k[0] == "arca"}
    ar = {k[1]: v for k, v in results.items() if k[0] == "arca"}
    dr = {k[1]: v for k, v in results.items() if k[0] == "drf"}
    if dr:
        for name in ("get", "list", "create", "ceiling"):
            m, lo, hi = paired(ar[name], dr[name])
            lines.append(f"- Arca/DRF per CPU-second, {name}: {m:.1f}x (rounds: {lo:.1f}-{hi:.1f}x)")
    m, lo, hi = paired(ar["get"], ar["ceiling"])
    lines.append(f"- Arca GET / ceiling (per CPU-second): {100 * m:.0f} % (rounds: {100 * lo:.0f}-{100 * hi:.0f} %)")
    # The target does not say which; the per-CPU-second ratio is
    # the stricter one here (wrk shares the cores), so both are printed.
    m, lo, hi = paired(ar["get"], ar["ceiling"], "rps")
    lines.append(f"- Arca GET / ceiling (req/s): {100 * m:.0f} % (rounds: {100 * lo:.0f}-{100 * hi:.0f} %)")
    b = {k[1]: v for k, v in results.items() if k[0] == BASE}
    for name in b:
        m, lo, hi = paired(ar[name], b[name])
        lines.append(f"- this build / baseline build per CPU-second, {name}: {m:.3f} (rounds: {lo:.3f}-{hi:.3f})")
    o = {k[1]: v for k, v in results.items() if k[0] == ONE}
    if o:
        line = f"- {ONE}: GET / ceiling {100 * paired(o['get'], o['ceiling'])[0]:.0f} %"
        if dr:
            line += "".join(f"; {n} {paired(o[n], dr[n])[0]:.1f}x DRF" for n in ("get", "list"))
        lines.append(line + " (medians of round-by-round ratios)")
    nc = rows.get(("arca (no token cache)", "get"))
    if nc:
        lines.append(f"- verified-token cache: GET {a['get']['per_cpu']:,.0f} req/CPU-s with it, "
                     f"{nc['per_cpu']:,.0f} without ({a['get']['per_cpu'] / nc['per_cpu']:.1f}x)")
    scale = [(k, v) for k, v in rows.items() if k[0].startswith("arca @")]
    for (server, _), r in scale:
        lines.append(f"- list p99 at {args.n:,}: {a['list']['p99']:.2f} ms; {server.removeprefix('arca @ ')}: "
                     f"{r['p99']:.2f} ms ({r['p99'] / a['list']['p99']:.2f}x)")
    lines.append(f"- Arca RSS idle {facts['arca_rss_idle_kib'] / 1024:.1f} MiB, peak {facts['arca_rss_peak_kib'] / 1024:.1f} MiB; "
                 f"time to ready {facts['arca_ready_ms']:.0f} ms (process start to /readyz 200, {args.n:,} documents)")
    lines.append(f"- seeding {args.n:,} documents: Arca `arca import` {facts['arca_seed_s']:.1f} s"
                 + (f", DRF bulk_create {facts['drf_seed_s']:.1f} s" if "drf_seed_s" in facts else "")
                 + (f"; Arca up to {args.scale_n:,}: +{facts['arca_scale_seed_s']:.1f} s" if "arca_scale_seed_s" in facts else ""))
    alone, hit = rows.get(("arca, GET alone (4 conns)", "get")), rows.get(("arca, GET under attack (4 conns)", "get"))
    if alone and hit:
        lines.append(f"- noisy neighbour: one caller's GET p99 {alone['p99']:.2f} ms alone, {hit['p99']:.2f} ms while "
                     f"another caller's heavy counts run (p50 {alone['p50']:.2f} / {hit['p50']:.2f} ms); the "
                     f"attacker's outcomes: {facts['noisy_attacker']}")
    if "full_group_ms" in facts:
        g = facts["full_group_ms"]
        during = rows.get(("arca, GET during 2 whole-collection $groups (4 conns)", "get"))
        alone = rows.get(("arca, GET alone, before the $groups (4 conns)", "get"))
        lines.append(f"- whole-collection $group over {args.n:,} documents: median {g[len(g) // 2]:.0f} ms "
                     f"(runs: {', '.join(f'{x:.0f}' for x in g)})")
        if alone and during:
            lines.append(f"- GET p99 {alone['p99']:.2f} ms alone, {during['p99']:.2f} ms while two clients run "
                         f"whole-collection $groups back to back ({facts['groups_during_get']})")
    if "drf_ready_ms" in facts:
        lines.append(f"- DRF time to ready {facts['drf_ready_ms']:.0f} ms")
    lines.append("")
    lines.append("INVALID RUN: non-2xx responses in " + ", ".join(invalid) if invalid else "Valid run: no non-2xx response.")
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "last-run.md").write_text(text + "\n")
    if invalid:
        sys.exit(1)


if __name__ == "__main__":
    main()
