#!/usr/bin/env bash
# The nats sink benchmark rows of bench/RESULTS.md, on the fleet of
# examples/fleet (3-node JetStream cluster, stream LOGS with 3 replicas,
# 3 floodwall instances behind HAProxy), all on loopback:
#   1. a bare async-nats publisher (examples/nats-publish.rs), same window
#   2. floodwall direct: a 4th instance on :5150, floodwall-load 10 x 100 B
#   3. the fleet through HAProxy :5140, same load
# Rate = messages stored in the stream (its /jsz count, i.e. acknowledged)
# per second of wall time from the first send; CPU = floodwall processes'
# user+system seconds per million messages (and, for comparison, the bare
# publisher's and floodwall-load's own, from /usr/bin/time: the box is
# CPU-bound, so every client CPU-second is one the servers do not get).
# Usage: bash bench/nats.sh [COUNT]   (default 200000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
count=${1:-200000}
cd "$root"
cargo build --release --bins --example nats-publish >/dev/null
export FLEET_DIR=${FLEET_DIR:-$(mktemp -d /tmp/floodwall-bench-nats.XXXXXX)}
bash examples/fleet/run.sh >"$FLEET_DIR/run.out" 2>&1 &
fleet=$!
direct=""
trap 'kill -TERM $fleet ${direct:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "fleet: up" "$FLEET_DIR/run.out" 2>/dev/null && break; sleep 0.1; done
grep -q "fleet: up" "$FLEET_DIR/run.out" || { cat "$FLEET_DIR/run.out"; exit 1; }

# The stream's message count as node 1 holds it (LOGS is the cluster's
# only stream and has a replica on every node). curl and grep only: this
# runs every 50 ms during a floodwall measurement, and a python start-up
# each time took CPU from the servers on this CPU-bound box (the bare
# publisher, timing itself, paid nothing of the sort).
stored() {
    curl -s http://127.0.0.1:8222/jsz | grep -o '"messages": *[0-9]*' | head -1 | grep -o '[0-9]*$'
}
cpu_of() { # user+system seconds of the given pids
    python3 - "$@" <<'PY'
import os, sys
tck = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    total += int(f[11]) + int(f[12])
print(total / tck)
PY
}
# Waits until the stream holds $1 messages; prints seconds since $2.
wait_stored() {
    while [ "$(stored)" -lt "$1" ]; do sleep 0.05; done
    python3 -c "import time; print(f'{time.time() - $2:.2f}')"
}

fw_pids=$(pgrep -f "target/release/floodwall --config $root/examples/fleet/fw" | tr '\n' ' ')

echo "== bare async-nats publisher, window 1024, $count x 100 B"
urls=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
/usr/bin/time -f "  cpu_s=%U+%S" ./target/release/examples/nats-publish "$urls" logs.floodwall "$count" 100 1024
/usr/bin/time -f "  cpu_s=%U+%S" ./target/release/examples/nats-publish "$urls" logs.floodwall "$count" 100 1024 headers

sed 's/listen = "127.0.0.1:5141"/listen = "127.0.0.1:5150"/; s/proxy_protocol = true/proxy_protocol = false/; s/127.0.0.1:9141/127.0.0.1:9150/' \
    examples/fleet/fw1.toml >"$FLEET_DIR/direct.toml"
./target/release/floodwall --config "$FLEET_DIR/direct.toml" 2>"$FLEET_DIR/direct.log" &
direct=$!
for _ in $(seq 200); do [ -f "$FLEET_DIR/direct.log" ] && break; sleep 0.1; done
for _ in $(seq 200); do grep -q "nats sink ready" "$FLEET_DIR/direct.log" && break; sleep 0.1; done

echo "== floodwall direct -> R3 stream, 10 connections x 100 B, $count messages"
base=$(stored); c0=$(cpu_of $direct); t0=$(date +%s.%N)
/usr/bin/time -f "  floodwall-load cpu_s=%U+%S" ./target/release/floodwall-load -c 10 -s 100 -n "$count" -q 127.0.0.1:5150 >/dev/null
secs=$(wait_stored $((base + count)) "$t0"); c1=$(cpu_of $direct)
python3 -c "print(f'direct: secs=$secs msgs_per_s={$count/$secs:.0f} cpu_s_per_M={($c1-$c0)/$count*1e6:.1f}')"

# Again after the direct run, so one of the two baselines meets the same
# stream state (400k more messages, 200k more ids in the duplicate window)
# as floodwall did: the order of the runs alone moved the ratio.
echo "== bare async-nats publisher with headers again, after the direct run"
/usr/bin/time -f "  cpu_s=%U+%S" ./target/release/examples/nats-publish "$urls" logs.floodwall "$count" 100 1024 headers

echo "== fleet of 3 behind HAProxy -> R3 stream, same load"
base=$(stored); c0=$(cpu_of $fw_pids); t0=$(date +%s.%N)
./target/release/floodwall-load -c 10 -s 100 -n "$count" -q 127.0.0.1:5140 >/dev/null
secs=$(wait_stored $((base + count)) "$t0"); c1=$(cpu_of $fw_pids)
python3 -c "print(f'fleet: secs=$secs msgs_per_s={$count/$secs:.0f} cpu_s_per_M={($c1-$c0)/$count*1e6:.1f} (3 instances; HAProxy not counted)')"
