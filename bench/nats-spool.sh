#!/usr/bin/env bash
# The nats sink with and without [spool] (docs/spool.md "With the nats
# sink"): one nats-server (JetStream, file store, R1) on loopback, one
# floodwall, floodwall-load 10 connections x 100 B; two rounds each,
# alternating. Rate = messages stored in the stream per second of wall
# time from the first send; CPU = floodwall's user+system seconds per
# million messages. Fixed ports 14222/18222/15150 (a bench, not a test).
# Usage: bash bench/nats-spool.sh [COUNT]   (default 200000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --bins --manifest-path "$root/Cargo.toml" >/dev/null
W=$(mktemp -d /tmp/floodwall-bench-nats-spool.XXXXXX); BIN=$root/target/release
count=${1:-200000}
/usr/sbin/nats-server -js -a 127.0.0.1 -p 14222 -m 18222 -sd $W/store >$W/nats.log 2>&1 &
nats=$!
trap 'kill $nats ${fw:-} 2>/dev/null || true; rm -rf "$W"' EXIT
for _ in $(seq 100); do curl -s http://127.0.0.1:18222/jsz >/dev/null && break; sleep 0.1; done
stored() { curl -s http://127.0.0.1:18222/jsz | grep -o '"messages": *[0-9]*' | head -1 | grep -o '[0-9]*$'; }
run() { # name, extra config
  cat >$W/fw.toml <<T
[server]
listen = "127.0.0.1:15150"
[limits]
send_timeout = "60s"
[sink]
type = "nats"
servers = ["nats://127.0.0.1:14222"]
stream = "BENCH"
subject = "bench.x"
[log]
stats_interval = "0s"
$2
T
  $BIN/floodwall --config $W/fw.toml 2>$W/fw-$1.log &
  fw=$!
  for _ in $(seq 100); do grep -q "nats sink ready" $W/fw-$1.log && break; sleep 0.1; done
  base=$(stored); t0=$(date +%s.%N)
  $BIN/floodwall-load -c 10 -s 100 -n "$count" -q 127.0.0.1:15150 >/dev/null
  while [ "$(stored)" -lt $((base + count)) ]; do sleep 0.05; done
  t1=$(date +%s.%N)
  cpu=$(awk '{print ($14+$15)/100}' /proc/$fw/stat)
  kill -TERM $fw; wait $fw || true
  rm -rf $W/spool
  python3 -c "print(f'$1: msgs_per_s={$count/($t1-$t0):.0f} secs={$t1-$t0:.2f} fw_cpu_s_per_M={$cpu/$count*1e6:.1f}')"
}
run nospool ""
run spool "[spool]
dir = \"$W/spool\"
sync = \"200ms\""
run nospool ""
run spool "[spool]
dir = \"$W/spool\"
sync = \"200ms\""
