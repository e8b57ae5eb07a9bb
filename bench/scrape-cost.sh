#!/usr/bin/env bash
# Issue 10's performance goal: scraping /metrics every 100 ms during a
# full-speed run costs < 2% of throughput. Runs floodwall (null sink,
# metrics on) under floodwall-load, alternating runs without and with a
# scraper (curl every 100 ms), and prints one line per run plus the
# medians. Knobs: RUNS (3 each), SECS (5), CONNS (10), SIZE (100).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} SECS=${SECS:-5} CONNS=${CONNS:-10} SIZE=${SIZE:-100}
cargo build --release --bin floodwall --bin floodwall-load >/dev/null 2>&1
BIN=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { # $1 = scrape | none
  cat >"$work/fw.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[sink]
type = "null"
[metrics]
listen = "127.0.0.1:0"
[log]
stats_interval = "0s"
TOML
  "$BIN/floodwall" --config "$work/fw.toml" 2>"$work/fw.log" &
  local fw=$!
  local addr maddr
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*] listening addr=\([^ ]*\).*/\1/p' "$work/fw.log")
    maddr=$(sed -n 's/.*metrics serving addr=\([^ ]*\).*/\1/p' "$work/fw.log")
    [[ -n $addr && -n $maddr ]] && break
    sleep 0.05
  done
  local scraper=
  local scrapes="$work/scrapes"
  : >"$scrapes"
  if [[ $1 == scrape ]]; then
    # One python process (not a curl per scrape: fork+exec on a 2-core
    # box would cost more than the scrape), a scrape every 100 ms.
    python3 - "$maddr" "$scrapes" <<'PY' &
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
out = open(sys.argv[2], "a", buffering=1)
while True:
    start = time.monotonic()
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    took = time.monotonic() - start
    out.write(f"{data.split(b' ', 2)[1].decode()} {took:.4f}\n")
    time.sleep(max(0.0, 0.1 - took))
PY
    scraper=$!
  fi
  local cpu0 cpu1
  cpu0=$(awk '{print $14+$15}' /proc/$fw/stat)
  "$BIN/floodwall-load" "$addr" -c "$CONNS" -s "$SIZE" -d "${SECS}s" -q >"$work/load.out"
  cpu1=$(awk '{print $14+$15}' /proc/$fw/stat)
  [[ -n $scraper ]] && kill "$scraper" && wait "$scraper" 2>/dev/null || true
  kill -TERM $fw; wait $fw || true
  local delivered secs
  delivered=$(grep -o ' delivered=[0-9]*' "$work/fw.log" | tail -1 | cut -d= -f2)
  secs=$(grep -o ' secs=[0-9.]*' "$work/load.out" | cut -d= -f2)
  local ok slow
  ok=$(grep -c '^200 ' "$scrapes" || true)
  slow=$(awk '$2 > m {m=$2} END {print m+0}' "$scrapes")
  awk -v mode="$1" -v d="$delivered" -v s="$secs" -v c0="$cpu0" -v c1="$cpu1" -v ok="$ok" -v slow="$slow" \
    'BEGIN {printf "%-6s delivered/s=%.0f server_cpu_s=%.2f cpu_s_per_M=%.4f scrapes_200=%d slowest_scrape_s=%.4f\n", mode, d/s, (c1-c0)/100, (c1-c0)/100/(d/1e6), ok, slow}'
}

for i in $(seq "$RUNS"); do
  run none
  run scrape
done | tee "$work/rows"
for mode in none scrape; do
  grep "^$mode " "$work/rows" | sed 's/.*delivered\/s=\([0-9]*\).*cpu_s_per_M=\([0-9.]*\).*/\1 \2/' |
    sort -n | awk -v mode="$mode" '{a[NR]=$1; c[NR]=$2} END {printf "median %-6s delivered/s=%d (cpu_s_per_M of that run %s)\n", mode, a[int((NR+1)/2)], c[int((NR+1)/2)]}'
done
