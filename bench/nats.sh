#!/usr/bin/env bash
# The nats sink benchmark rows of bench/RESULTS.md, on the fleet of
# examples/fleet (3-node JetStream cluster, stream LOGS with 3 replicas,
# 3 floodwall instances behind HAProxy), all on loopback:
#   ROUNDS rounds, alternating, the same COUNT x 100 B each:
#     - a bare async-nats publisher (examples/nats-publish.rs) with the
#       sink's headers (Nats-Msg-Id + Floodwall-Peer) and window (1024);
#     - floodwall direct: a 4th instance on :5150, floodwall-load 10 x
#       100 B;
#     - the fleet through HAProxy :5140, same load (its instances keep
#       their three-server lists: each may sit on a follower).
#   Then one more bare run, so every direct run sits between two bare
#   runs (the stream grows and its duplicate window fills run by run:
#   the order alone moves a rate). Prints each run and the median ratios.
# Rate = acknowledged messages per second:
#   - bare: the publisher times itself, from its first send to its last
#     ack (connect excluded), and touches nothing else;
#   - floodwall: one long-lived python poller (no process spawn in its
#     loop, nothing asked of the nats servers) starts the clock, spawns
#     floodwall-load and reads floodwall's own /metrics every 20 ms until
#     floodwall_messages_delivered_total (counted at the stream's ack) has
#     grown by COUNT. Both clock biases are against floodwall: its clock
#     includes floodwall-load's start and connects (a few ms) and ends at
#     the first poll after the last ack (10 ms late on average).
#   The stream's own count (/jsz, once per run, after the clock stopped)
#   confirms every acked message is stored.
# CPU = user+system seconds per million messages: floodwall's (ingest
# included), floodwall-load's and the bare publisher's own. The box is
# CPU-bound: every client CPU-second is one the servers do not get.
# The 50 polls a second are floodwall's own work (it renders /metrics),
# counted in its CPU.
# Both talk to one server, the same: the stream's leader (found once,
# after start-up). Left to pick (async-nats shuffles the list), each run
# landed on a random node, and the node moves the rate: three alternating
# pairs of bare runs (29 Nov, load 8) gave 4-12% more through a follower
# (which relays to the leader over a route) than through the leader.
# WORKERS=2 runs the direct instance with sink.workers = 2 and
# max_in_flight = 512 each (the same total window, 1024).
# Running throughout, the same for both kinds of run: the fleet's three
# floodwall instances (idle) and HAProxy (a health check per instance a second), and
# the direct instance, idle during the bare runs.
# Usage: bash bench/nats.sh [COUNT] [ROUNDS]   (default 200000 3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
count=${1:-200000}
rounds=${2:-3}
workers=${WORKERS:-1}
cd "$root"
cargo build --release --bins --example nats-publish >/dev/null
export FLEET_DIR=${FLEET_DIR:-$(mktemp -d /tmp/floodwall-bench-nats.XXXXXX)}
bash examples/fleet/run.sh >"$FLEET_DIR/run.out" 2>&1 &
fleet=$!
direct=""
trap 'kill -TERM $fleet ${direct:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "fleet: up" "$FLEET_DIR/run.out" 2>/dev/null && break; sleep 0.1; done
grep -q "fleet: up" "$FLEET_DIR/run.out" || { cat "$FLEET_DIR/run.out"; exit 1; }

# The stream's message count as its leader holds it (LOGS is the
# cluster's only stream; a follower's count lags under load). Never
# inside a timed window: only before and after a run.
stored() {
    curl -s "http://127.0.0.1:$((8221 + ${leader#n}))/jsz" | grep -o '"messages": *[0-9]*' | head -1 | grep -o '[0-9]*$'
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
# timed_load ADDR METRICS_PORT...: runs floodwall-load (10 x 100 B,
# $count messages) against ADDR and prints "secs load_cpu_s": the time
# until the named instances' delivered counters together grew by $count.
timed_load() {
    python3 - "$count" "$@" <<'PY'
import re, resource, socket, subprocess, sys, time
count, addr, ports = int(sys.argv[1]), sys.argv[2], [int(p) for p in sys.argv[3:]]
pattern = re.compile(rb"^floodwall_messages_delivered_total (\d+)", re.M)
def delivered():
    total = 0
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            body = b""
            while chunk := s.recv(65536):
                body += chunk
        total += int(pattern.search(body).group(1))
    return total
base = delivered()
start = time.monotonic()
load = subprocess.Popen(["./target/release/floodwall-load", "-c", "10", "-s", "100",
                         "-n", str(count), "-q", addr], stdout=subprocess.DEVNULL)
deadline = start + 600
while delivered() < base + count:
    if time.monotonic() > deadline:
        sys.exit("timed out waiting for the acks")
    time.sleep(0.02)
secs = time.monotonic() - start
if load.wait() != 0:
    sys.exit("floodwall-load failed")
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{secs:.3f} {r.ru_utime + r.ru_stime:.2f}")
PY
}

fw_pids=$(pgrep -f "target/release/floodwall --config $root/examples/fleet/fw" | tr '\n' ' ')
# The stream leader's client URL (n1..n3 listen on 4222..4224).
leader=""
for _ in $(seq 100); do
    leader=$(curl -s "http://127.0.0.1:8222/jsz?streams=true" | grep -o '"leader": *"n[123]"' | tail -1 | grep -o 'n[123]' || true)
    [ -n "$leader" ] && break
    sleep 0.1
done
[ -n "$leader" ] || { echo "no stream leader"; exit 1; }
url="nats://127.0.0.1:$((4221 + ${leader#n}))"
echo "== stream leader $leader: bare publisher and direct instance both use $url only"

sed "s/listen = \"127.0.0.1:5141\"/listen = \"127.0.0.1:5150\"/; s/proxy_protocol = true/proxy_protocol = false/; s/127.0.0.1:9141/127.0.0.1:9150/;
     s|^servers = .*|servers = [\"$url\"]|; s/^max_in_flight = 1024/max_in_flight = $((1024 / workers))\nworkers = $workers/" \
    examples/fleet/fw1.toml >"$FLEET_DIR/direct.toml"
grep -E '^(servers|max_in_flight|workers)' "$FLEET_DIR/direct.toml" | sed 's/^/  direct: /'
./target/release/floodwall --config "$FLEET_DIR/direct.toml" 2>"$FLEET_DIR/direct.log" &
direct=$!
for _ in $(seq 200); do [ "$(grep -c "nats sink ready" "$FLEET_DIR/direct.log" 2>/dev/null)" -ge "$workers" ] && break; sleep 0.1; done
grep -q "nats sink ready" "$FLEET_DIR/direct.log" || { cat "$FLEET_DIR/direct.log"; exit 1; }

results="$FLEET_DIR/results"
: >"$results"
bare() { # one bare run with headers; records its rate
    local out
    out=$(/usr/bin/time -f "cpu_s=%U+%S" ./target/release/examples/nats-publish "$url" logs.floodwall "$count" 100 1024 headers 2>&1)
    echo "$out" | sed 's/^/  /'
    echo "bare $(echo "$out" | grep -o 'msgs_per_s=[0-9]*' | cut -d= -f2)" >>"$results"
}
direct_run() { # one floodwall direct run; records its rate
    local base c0 c1 secs load_cpu after
    base=$(stored); c0=$(cpu_of $direct)
    read -r secs load_cpu < <(timed_load 127.0.0.1:5150 9150)
    c1=$(cpu_of $direct); after=$(stored)
    python3 -c "print(f'  floodwall direct: acked={$count} secs=$secs msgs_per_s={$count/$secs:.0f} floodwall_cpu_s_per_M={($c1-$c0)/$count*1e6:.2f} floodwall_load_cpu_s_per_M={$load_cpu/$count*1e6:.2f} stream_grew_by={$after-$base}')"
    python3 -c "print(f'direct {$count/$secs:.0f}')" >>"$results"
}

fleet_run() { # the same load through HAProxy to the fleet; records its rate
    local base c0 c1 h0 h1 secs load_cpu after
    base=$(stored); c0=$(cpu_of $fw_pids); h0=$(cpu_of $hp_pid)
    read -r secs load_cpu < <(timed_load 127.0.0.1:5140 9141 9142 9143)
    c1=$(cpu_of $fw_pids); h1=$(cpu_of $hp_pid); after=$(stored)
    python3 -c "print(f'  fleet of 3 via HAProxy: acked={$count} secs=$secs msgs_per_s={$count/$secs:.0f} floodwall_cpu_s_per_M={($c1-$c0)/$count*1e6:.2f} (sum of 3) haproxy_cpu_s_per_M={($h1-$h0)/$count*1e6:.2f} floodwall_load_cpu_s_per_M={$load_cpu/$count*1e6:.2f} stream_grew_by={$after-$base}')"
    python3 -c "print(f'fleet {$count/$secs:.0f}')" >>"$results"
}
hp_pid=$(pgrep -f "haproxy -f $root/examples/fleet/haproxy.cfg" | head -1)

echo "== $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds of bare (headers, window 1024) / floodwall direct / fleet, $count x 100 B each"
for r in $(seq "$rounds"); do
    echo "-- round $r, load $(cut -d' ' -f1-3 /proc/loadavg)"
    bare
    direct_run
    fleet_run
done
echo "-- closing bare run, load $(cut -d' ' -f1-3 /proc/loadavg)"
bare
python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
bare = [float(v) for k, v in rows if k == "bare"]
fw = [float(v) for k, v in rows if k == "direct"]
fleet = [float(v) for k, v in rows if k == "fleet"]
def show(name, xs):
    print(f"{name:40}", " ".join(f"{x:.3f}" for x in xs), f"median {statistics.median(xs):.3f}")
show("ratio direct / bare run before it:", [f / b for f, b in zip(fw, bare)])
show("ratio direct / mean of bare around it:", [f / ((b + a) / 2) for f, b, a in zip(fw, bare, bare[1:])])
show("ratio fleet / direct run before it:", [f / d for f, d in zip(fleet, fw)])
PY

echo "== bare publisher without headers (reference), load $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -f "  cpu_s=%U+%S" ./target/release/examples/nats-publish "$url" logs.floodwall "$count" 100 1024
