#!/usr/bin/env bash
# The benchmark, in one command: builds Arca in release mode, installs wrk
# and the DRF peer's Python environment if missing, and runs bench.py
# (Arca and the DRF peer side by side, same data, scenarios and
# connections). Options go to bench.py: --n, --duration, --connections, --rounds,
# --skip-drf, --no-scale, --no-one-worker, --baseline BIN, --store URL. Results: a Markdown table on stdout and in
# bench/last-run.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${ARCA_CACHE:-$HOME/.cache/arca}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
command -v wrk >/dev/null || { $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk; }
shared="${ARCA_SHARED:-$(cd .. && pwd)/shared}"
[ -d "$shared/peers/drf" ] || { echo "the DRF peer is expected in $shared/peers (set ARCA_SHARED)" >&2; exit 2; }
venv="$cache/drf-venv"
if ! "$venv/bin/python" -c 'import django, rest_framework, jwt, gunicorn' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$shared/peers/drf/requirements.txt"
fi
cargo build --release --locked -p arca
exec "$venv/bin/python" bench/bench.py --arca "$CARGO_TARGET_DIR/release/arca" --shared "$shared" --python "$venv/bin/python" "$@"
