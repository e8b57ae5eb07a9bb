#!/usr/bin/env bash
# The nats sink benchmark rows of bench/RESULTS.md, on the fleet of
# examples/fleet (3-node JetStream cluster, stream LOGS with 3 replicas,
# 3 floodwall instances behind HAProxy), all on loopback:
#   1. a bare async-nats publisher (examples/nats-publish.rs), same window
#   2. floodwall direct: a 4th instance on :5150, floodwall-load 10 x 100 B
#   3. the fleet through HAProxy :5140, same load
# Rate = messages stored in the stream (its /jsz count, i.e. acknowledged)
# per second of wall time from the first send; CPU = floodwall processes'
# user+system seconds per million messages.
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

stored() {
    curl -s 'http://127.0.0.1:8222/jsz?streams=true' | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(sum(s["state"]["messages"] for a in d.get("account_details", []) for s in a.get("stream_detail", []) if s["name"] == "LOGS"))'
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
./target/release/examples/nats-publish "$urls" logs.floodwall "$count" 100 1024
./target/release/examples/nats-publish "$urls" logs.floodwall "$count" 100 1024 headers

sed 's/listen = "127.0.0.1:5141"/listen = "127.0.0.1:5150"/; s/proxy_protocol = true/proxy_protocol = false/' \
    examples/fleet/fw1.toml >"$FLEET_DIR/direct.toml"
./target/release/floodwall --config "$FLEET_DIR/direct.toml" 2>"$FLEET_DIR/direct.log" &
direct=$!
for _ in $(seq 200); do [ -f "$FLEET_DIR/direct.log" ] && break; sleep 0.1; done
for _ in $(seq 200); do grep -q "nats sink ready" "$FLEET_DIR/direct.log" && break; sleep 0.1; done

echo "== floodwall direct -> R3 stream, 10 connections x 100 B, $count messages"
base=$(stored); c0=$(cpu_of $direct); t0=$(date +%s.%N)
./target/release/floodwall-load -c 10 -s 100 -n "$count" -q 127.0.0.1:5150 >/dev/null
secs=$(wait_stored $((base + count)) "$t0"); c1=$(cpu_of $direct)
python3 -c "print(f'direct: secs=$secs msgs_per_s={$count/$secs:.0f} cpu_s_per_M={($c1-$c0)/$count*1e6:.1f}')"

echo "== fleet of 3 behind HAProxy -> R3 stream, same load"
base=$(stored); c0=$(cpu_of $fw_pids); t0=$(date +%s.%N)
./target/release/floodwall-load -c 10 -s 100 -n "$count" -q 127.0.0.1:5140 >/dev/null
secs=$(wait_stored $((base + count)) "$t0"); c1=$(cpu_of $fw_pids)
python3 -c "print(f'fleet: secs=$secs msgs_per_s={$count/$secs:.0f} cpu_s_per_M={($c1-$c0)/$count*1e6:.1f} (3 instances; HAProxy not counted)')"
