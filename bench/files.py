#!/usr/bin/env python3
"""Files: upload and download throughput, memory under concurrent uploads,
and thumbnail time, on a release build of Arca (embedded engine by default,
or --store URL).

  upload      POST a 25 MiB file (random bytes), one at a time: MB/s
  download    GET it back whole: MB/s
  rss         20 uploads of 25 MiB at once: the server's resident memory
              (sampled every 20 ms) before, at its peak, and the growth per
              upload in flight; then the same with 20 photo-like 12 MP JPEGs
              (each is read back and decoded on the image pool before it
              is committed)
  thumbnail   a 12-megapixel JPEG (4000 x 3000): the first thumbnail
              request (decode, orient, resize, encode, cache) and the next
              ones (from the cache), size 256, JPEG

Usage: bench/files.py [--bin target/release/arca] [--example-bin PATH]
       [--store URL] [--rounds 5]

Needs the release binary and the bench_image example
(cargo build --release -p arca --example bench_image). Talks to the server
on loopback only; each phase is bounded in count.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    def __init__(self, binary, store):
        self.dir = tempfile.mkdtemp(prefix="arca-bench-files-")
        self.port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            {
                "ARCA_SERVER__LISTEN": f"127.0.0.1:{self.port}",
                "ARCA_STORE__URL": store or f"sqlite://{self.dir}/arca.db",
                "ARCA_LOG__LEVEL": "warn",
                "ARCA_LOG__FORMAT": "json",
                "ARCA_FILES__MAX_BYTES": str(26 * MIB),
                "MIMALLOC_ARENA_EAGER_COMMIT": "0",
            }
        )
        self.binary = binary
        self.proc = subprocess.Popen(
            [binary, "serve", "--dev"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit("arca did not become ready")
        self.token = subprocess.run(
            [binary, "token", "--sub", "bench", "--tenant", "t1"],
            env=self.env, capture_output=True, text=True, check=True,
        ).stdout.strip()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def upload(self, body, content_type="application/octet-stream"):
        c = self.conn()
        c.request("POST", "/v1/files", body=body, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type,
            "Content-Length": str(len(body)),
        })
        r = c.getresponse()
        data = r.read()
        if r.status != 201:
            raise SystemExit(f"upload: {r.status} {data[:300]!r}")
        return json.loads(data)

    def get(self, path, headers=None):
        c = self.conn()
        h = {"Authorization": f"Bearer {self.token}"}
        h.update(headers or {})
        c.request("GET", path, headers=h)
        r = c.getresponse()
        n = 0
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
        if r.status != 200:
            raise SystemExit(f"GET {path}: {r.status}")
        return n


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def concurrent_rss(server, bodies, content_type):
    """Uploads `bodies` at once; (before KiB, peak KiB, seconds)."""
    pid = server.proc.pid
    before = rss_kib(pid)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    errors = []

    def one(body):
        try:
            server.upload(body, content_type)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(b,)) for b in bodies]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    done.set()
    sampler.join()
    if errors:
        raise SystemExit(f"concurrent uploads failed: {errors[0]}")
    return before, peak[0], elapsed


def main():
    ap = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    ap.add_argument("--bin", default=f"{target}/release/arca")
    ap.add_argument("--example-bin", default=f"{target}/release/examples/bench_image")
    ap.add_argument("--store", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="arca-bench-files-data-"))
    big = os.urandom(25 * MIB)
    photo = work / "photo.jpg"
    subprocess.run([args.example_bin, "4000", "3000", str(photo)], check=True)
    photo_bytes = photo.read_bytes()

    server = Server(args.bin, args.store)
    try:
        idle = rss_kib(server.proc.pid)
        ups, downs = [], []
        file_id = None
        for _ in range(args.rounds):
            s, meta = timed(lambda: server.upload(big))
            ups.append(25 * MIB / s / 1e6)
            file_id = meta["id"]
            s, n = timed(lambda: server.get(f"/v1/files/{file_id}"))
            assert n == len(big)
            downs.append(25 * MIB / s / 1e6)

        before, peak, secs = concurrent_rss(server, [big] * 20, "application/octet-stream")
        before_img, peak_img, secs_img = concurrent_rss(server, [photo_bytes] * 20, "image/jpeg")

        meta = server.upload(photo_bytes, "image/jpeg")
        path = f"/v1/files/{meta['id']}/thumbnail?size=256"
        cold, _ = timed(lambda: server.get(path))
        cached = sorted(timed(lambda: server.get(path))[0] for _ in range(20))
        webp_cold, _ = timed(lambda: server.get(path.replace("256", "512"), {"Accept": "image/webp"}))
    finally:
        server.stop()

    store = args.store.split("@")[-1] if args.store else "embedded (SQLite, synchronous=FULL)"
    print(f"store: {store}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
    print(f"upload 25 MiB:   {statistics.median(ups):7.1f} MB/s (median of {args.rounds}; {min(ups):.1f}-{max(ups):.1f})")
    print(f"download 25 MiB: {statistics.median(downs):7.1f} MB/s (median of {args.rounds}; {min(downs):.1f}-{max(downs):.1f})")
    print(f"RSS idle {idle / 1024:.1f} MiB")
    print(
        f"20 x 25 MiB random bytes at once: RSS {before / 1024:.1f} -> peak {peak / 1024:.1f} MiB "
        f"(+{(peak - before) / 1024:.1f} MiB, {(peak - before) / 1024 / 20:.2f} MiB per upload) in {secs:.1f} s"
    )
    print(
        f"20 x 12 MP JPEG ({len(photo_bytes) / MIB:.1f} MiB) at once: RSS {before_img / 1024:.1f} -> peak "
        f"{peak_img / 1024:.1f} MiB (+{(peak_img - before_img) / 1024:.1f} MiB) in {secs_img:.1f} s"
    )
    print(
        f"thumbnail of a 12 MP JPEG (256, JPEG): cold {cold * 1000:.0f} ms, cached p50 "
        f"{cached[10] * 1000:.1f} ms (max {cached[-1] * 1000:.1f}); 512 WebP cold {webp_cold * 1000:.0f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
