#!/usr/bin/env bash
# Spool benchmark rows (issue 12): file sink, 10 connections x 100 B for
# RUN_SECS, spool off vs on; then the spool's write rate during an outage
# (tcp sink to a listener that never reads) beside `dd conv=fdatasync` on
# the same disk. Prints markdown rows for bench/RESULTS.md.
#   bash bench/spool.sh            (needs cargo build --release first)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/floodwall
LOAD=target/release/floodwall-load
RUN_SECS=${RUN_SECS:-5}
WORK=$(mktemp -d "${SPOOL_BENCH_DIR:-$PWD/target}/spool-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

cpu_secs() { # utime+stime of PID in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"
}

start() { # config file -> sets PID PORT
  "$BIN" --config "$1" 2>"$WORK/log" &
  PID=$!
  for _ in $(seq 200); do
    PORT=$(grep -o 'listening addr=[0-9.]*:[0-9]*' "$WORK/log" | sed 's/.*://' || true)
    [ -n "$PORT" ] && return 0
    sleep 0.05
  done
  echo "daemon did not start" >&2; cat "$WORK/log" >&2; exit 1
}

file_row() { # name, extra config
  rm -rf "$WORK/out.log" "$WORK/spool"
  cat >"$WORK/c.toml" <<CFG
[server]
listen = "127.0.0.1:0"
framing = "lines"
[sink]
type = "file"
path = "$WORK/out.log"
[log]
stats_interval = "0s"
$2
CFG
  start "$WORK/c.toml"
  "$LOAD" -c 10 -s 100 -d "${RUN_SECS}s" "127.0.0.1:$PORT" >"$WORK/load.out" 2>&1
  # Let the sink finish what is queued, then read the CPU and stop.
  sleep 1
  local cpu; cpu=$(cpu_secs "$PID")
  kill -TERM "$PID"; wait "$PID" || true
  local n; n=$(wc -l <"$WORK/out.log")
  awk -v name="$1" -v n="$n" -v s="$RUN_SECS" -v cpu="$cpu" 'BEGIN {
    printf "| %s | 10 | 100 | %.2fM | %.1f | %.2f | %.1f |\n", name, n/s/1e6, n*100/s/1e6, cpu/(n/1e6), cpu }'
}

echo "| server | conns | size (B) | written msg/s | MB/s | server CPU-s / M msgs | server CPU-s |"
echo "|---|---|---|---|---|---|---|"
file_row "fw-file, no spool" ""
file_row "fw-file, spool (sync 200ms)" "[spool]
dir = \"$WORK/spool\"
max_bytes = \"4GiB\""

# Outage: the downstream accepts but never reads; the spool takes it all.
python3 - "$WORK/port" <<'PY' &
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
c, _ = s.accept()
time.sleep(3600)
PY
SINKPID=$!
trap 'kill $SINKPID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.05; done
rm -rf "$WORK/spool"
cat >"$WORK/c.toml" <<CFG
[server]
listen = "127.0.0.1:0"
framing = "lines"
[sink]
type = "tcp"
address = "127.0.0.1:$(cat "$WORK/port")"
[spool]
dir = "$WORK/spool"
max_bytes = "4GiB"
[log]
stats_interval = "0s"
[shutdown]
timeout = "1s"
CFG
start "$WORK/c.toml"
"$LOAD" -c 10 -s 100 -d "${RUN_SECS}s" "127.0.0.1:$PORT" >"$WORK/load.out" 2>&1
bytes=$(du -sb "$WORK/spool" | cut -f1)
kill -TERM "$PID"; wait "$PID" || true
echo
echo "spool write rate during an outage: $(awk -v b="$bytes" -v s="$RUN_SECS" 'BEGIN{printf "%.1f", b/s/1e6}') MB/s ($bytes bytes in ${RUN_SECS}s, sync 200ms)"
rm -rf "$WORK/spool"
echo "dd conv=fdatasync, same disk: $(dd if=/dev/zero of="$WORK/dd" bs=1M count=1024 conv=fdatasync 2>&1 | tail -1)"
