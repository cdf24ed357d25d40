#!/usr/bin/env python3
"""Change event benchmark: what the event log costs the write path, how
fast a change reaches many subscribers, and what idle subscribers cost.

Runs a release `arca serve --dev` (embedded engine, synchronous = FULL,
log level warn) and `events_load` (crates/arca/examples/events_load.rs,
a Rust client) on this machine:

  create    wrk -t2 -c32 create.lua on two servers started side by side,
            one with the event log (events.enabled = true, the default) and
            one without (false), and the first again while --followers
            streams follow the collection; --rounds rounds, interleaved;
            medians and round-by-round ratios.
  latency   --subscribers streams (default 1,000) on one collection while
            one writer sends --rate creates per second (default 1,000) for
            --duration seconds: send-to-receipt latency of every delivery
            (an upper bound of commit-to-delivery: it includes the write's
            own commit), deliveries made vs expected, server CPU.
  idle      --idle streams (default 10,000) opened and held: the server's
            RSS before and with them.

The client shares the machine's cores with the server (and with other
work on it): absolute numbers are pessimistic and noisy; the with/without
comparison runs in the same rounds. Results: Markdown on stdout and in
bench/events-last-run.md.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRK = ROOT / "bench" / "wrk"
CLK = os.sysconf("SC_CLK_TCK")
ITEMS = {
    "schema": {"type": "object", "properties": {
        "category": {"type": "string"}, "name": {"type": "string", "minLength": 1},
        "price": {"type": "number", "minimum": 0}, "qty": {"type": "integer", "minimum": 0}},
        "required": ["category", "name"]},
    "indexes": [{"fields": {"category": 1}}],
    "access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]}},
}
BENCH = {"access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]}}}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, token=None, body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def cpu_seconds(pid):
    rest = Path(f"/proc/{pid}/stat").read_text()
    rest = rest[rest.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / CLK


def rss_kib(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


class Arca:
    def __init__(self, binary, work, name, env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = work / name
        data.mkdir()
        self.env = {**os.environ, "ARCA_STORE__URL": f"sqlite://{data}/arca.db",
                    "ARCA_SERVER__LISTEN": f"127.0.0.1:{self.port}", "ARCA_LOG__LEVEL": "warn",
                    "ARCA_LOG__FORMAT": "json", "MIMALLOC_ARENA_EAGER_COMMIT": "0", **env}
        self.log = open(work / f"{name}.log", "w")
        self.p = subprocess.Popen([binary, "serve", "--dev"], env=self.env, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if http("GET", f"{self.url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        else:
            raise SystemExit(f"{name} never became ready")
        self.token = subprocess.run([binary, "token", "--sub", "bench", "--role", "admin", "--ttl", "2h"],
                                    env=self.env, capture_output=True, text=True, check=True).stdout.strip()

    def define(self, name, body):
        status, text = http("PUT", f"{self.url}/v1/collections/{name}", self.token, body)
        assert status in (200, 201), (status, text)

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)


def wrk(server, args):
    cmd = ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "-s",
           str(WRK / "create.lua"), "-H", f"Authorization: Bearer {server.token}", server.url]
    before = cpu_seconds(server.p.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(server.p.pid) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
            "p99": to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
            "errors": non2xx, "cpu": cpu, "per_cpu": total / cpu if cpu else float("inf")}


def load(args, *rest):
    return subprocess.Popen([str(args.load), *rest], stdout=subprocess.PIPE, text=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arca", required=True)
    ap.add_argument("--load", required=True, help="the events_load example binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--followers", type=int, default=100,
                    help="streams following the collection in the third create variant")
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--idle", type=int, default=10_000)
    ap.add_argument("--skip", default="", help="comma-separated scenarios to skip: create,latency,idle")
    args = ap.parse_args()
    args.load = Path(args.load)
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="arca-events-bench-"))
    lines = []
    out = lambda s="": (print(s, flush=True), lines.append(s))
    load_avg = os.getloadavg()[0]
    out(f"# Change event benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load {load_avg:.2f})")
    servers = []
    try:
        if "create" not in skip:
            on = Arca(args.arca, work, "with-log", {})
            off = Arca(args.arca, work, "without-log", {"ARCA_EVENTS__ENABLED": "false"})
            servers += [on, off]
            for s in (on, off):
                s.define("items", ITEMS)
            runs = {"with event log": [], "without event log": [], f"with event log, {args.followers} streams following": []}
            for r in range(args.rounds):
                # Alternate the order, so neither always runs first.
                order = [("with event log", on), ("without event log", off)]
                if r % 2:
                    order.reverse()
                for label, s in order:
                    runs[label].append(wrk(s, args))
                followers = load(args, "idle", "--base", on.url, "--token", on.token, "--collection", "items",
                                 "--subscribers", str(args.followers), "--hold", str(args.duration + 30))
                json.loads(followers.stdout.readline())
                runs[f"with event log, {args.followers} streams following"].append(wrk(on, args))
                followers.terminate()
                followers.wait()
            out()
            out(f"## create: wrk -t2 -c{args.connections} -d{args.duration}s, {args.rounds} rounds interleaved, medians")
            out()
            out("| server | req/s | p50 ms | p99 ms | errors | server CPU s | req per CPU-s |")
            out("|---|---:|---:|---:|---:|---:|---:|")
            for label, rs in runs.items():
                med = lambda k: statistics.median(x[k] for x in rs)
                out(f"| {label} | {med('rps'):,.0f} | {med('p50'):.2f} | {med('p99'):.2f} | "
                    f"{sum(x['errors'] for x in rs)} | {med('cpu'):.2f} | {med('per_cpu'):,.0f} |")
            pairs = list(zip(runs["with event log"], runs["without event log"]))
            ratio_rps = [w["rps"] / o["rps"] for w, o in pairs]
            ratio_cpu = [w["per_cpu"] / o["per_cpu"] for w, o in pairs]
            out()
            out(f"with/without, per round: req/s {', '.join(f'{x:.3f}' for x in ratio_rps)} "
                f"(median {statistics.median(ratio_rps):.3f}); per CPU-second "
                f"{', '.join(f'{x:.3f}' for x in ratio_cpu)} (median {statistics.median(ratio_cpu):.3f})")
            for s in (on, off):
                s.stop()
        if "latency" not in skip:
            s = Arca(args.arca, work, "latency", {"ARCA_SERVER__MAX_CONNECTIONS": "12000",
                                                  "ARCA_SERVER__MAX_CONNECTIONS_PER_IP": "20000"})
            servers.append(s)
            s.define("bench", BENCH)
            before = cpu_seconds(s.p.pid)
            t0 = time.monotonic()
            p = load(args, "latency", "--base", s.url, "--token", s.token, "--subscribers", str(args.subscribers),
                     "--rate", str(args.rate), "--duration", str(args.duration))
            result = json.loads(p.stdout.readline())
            p.wait()
            cpu = cpu_seconds(s.p.pid) - before
            wall = time.monotonic() - t0
            out()
            out(f"## latency: {result['subscribers']} subscribers, {args.rate} writes/s asked for {args.duration} s")
            out()
            out("| writes/s achieved | writes | deliveries / expected | delivery p50 ms | p99 ms | max ms | "
                "write (POST) p50 ms | p99 ms | server CPU s (wall s) |")
            out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            out(f"| {result['write_rate']:,.0f} | {result['writes']:,} | {result['deliveries']:,} / "
                f"{result['expected_deliveries']:,} | {result['delivery_p50_ms']:.1f} | {result['delivery_p99_ms']:.1f} | "
                f"{result['delivery_max_ms']:.1f} | {result['post_p50_ms']:.1f} | {result['post_p99_ms']:.1f} | "
                f"{cpu:.1f} ({wall:.1f}) |")
            out(f"\n(failed writes: {result['failed_writes']})")
            s.stop()
        if "idle" not in skip:
            s = Arca(args.arca, work, "idle", {"ARCA_SERVER__MAX_CONNECTIONS": "12000",
                                               "ARCA_SERVER__MAX_CONNECTIONS_PER_IP": "20000",
                                               "ARCA_EVENTS__MAX_SUBSCRIBERS": str(args.idle)})
            servers.append(s)
            s.define("bench", BENCH)
            # One stream and one write first, so what every process has
            # anyway (the tail, the first event's buffers) is in the base.
            warm = load(args, "idle", "--base", s.url, "--token", s.token, "--subscribers", "1", "--hold", "1")
            json.loads(warm.stdout.readline())
            warm.wait()
            time.sleep(1)
            base = rss_kib(s.p.pid)
            p = load(args, "idle", "--base", s.url, "--token", s.token, "--subscribers", str(args.idle),
                     "--hold", "15")
            ready = json.loads(p.stdout.readline())
            time.sleep(3)
            held = rss_kib(s.p.pid)
            peak = rss_kib(s.p.pid, "VmHWM")
            # A write while they are open reaches them all.
            status, _ = http("POST", f"{s.url}/v1/collections/bench/documents", s.token, {"t": 0})
            p.wait()
            out()
            out(f"## idle: {ready['ready']:,} streams open (opened in {ready['open_s']:.1f} s)")
            out()
            out("| server RSS before | with the streams | peak | per stream |")
            out("|---:|---:|---:|---:|")
            out(f"| {base / 1024:.1f} MiB | {held / 1024:.1f} MiB | {peak / 1024:.1f} MiB | "
                f"{(held - base) / max(ready['ready'], 1):.1f} KiB |")
            s.stop()
    finally:
        for s in servers:
            s.stop()
    (ROOT / "bench" / "events-last-run.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
