#!/usr/bin/env bash
# The change event benchmark in one command: builds Arca and the events_load
# client in release mode, installs wrk if missing, and runs bench/events.py
# (options go to it: --rounds, --duration, --subscribers, --rate, --idle,
# --followers, --skip create,latency,idle). Results: Markdown on stdout and
# in bench/events-last-run.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${ARCA_CACHE:-$HOME/.cache/arca}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
command -v wrk >/dev/null || { $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk; }
cargo build --release --locked -p arca --bin arca --example events_load
exec python3 bench/events.py --arca "$CARGO_TARGET_DIR/release/arca" \
  --load "$CARGO_TARGET_DIR/release/examples/events_load" "$@"
