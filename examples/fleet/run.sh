#!/usr/bin/env bash
# Starts the whole fleet on loopback, in the foreground, until Ctrl-C:
#   3-node NATS JetStream cluster (clients 4222-4224, monitoring 8222-8224)
#   the stream LOGS (subject logs.floodwall, 3 replicas)
#   3 floodwall instances (5141-5143, PROXY protocol on, nats sink)
#   HAProxy on 5140 (leastconn, send-proxy-v2) in front of them
# Send to it:  logger --tcp -n 127.0.0.1 -P 5140 "hello fleet"
# Needs: nats-server, haproxy (bash scripts/install-peers.sh) and a release
# build (cargo build --release). Logs and data go to $FLEET_DIR (default: a
# new temp dir), which is printed at start.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
floodwall=${FLOODWALL:-$root/target/release/floodwall}
FLEET_DIR=${FLEET_DIR:-$(mktemp -d /tmp/floodwall-fleet.XXXXXX)}
mkdir -p "$FLEET_DIR"
echo "fleet: logs and data in $FLEET_DIR"

for bin in nats-server haproxy "$floodwall"; do
    command -v "$bin" >/dev/null || { echo "fleet: $bin not found (scripts/install-peers.sh; cargo build --release)" >&2; exit 1; }
done

pids=()
cleanup() {
    echo "fleet: stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Waits (at most 20 s) until TCP port $1 on loopback accepts.
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "fleet: nothing listens on port $1" >&2
    return 1
}

# 1. The JetStream cluster.
for n in 1 2 3; do
    sed "s|@FLEET_DIR@|$FLEET_DIR|" "$here/nats-n$n.conf" >"$FLEET_DIR/nats-n$n.conf"
    nats-server -c "$FLEET_DIR/nats-n$n.conf" 2>"$FLEET_DIR/nats-n$n.log" &
    pids+=($!)
done
for port in 4222 4223 4224; do wait_port "$port"; done

# 2. The stream, with 3 replicas, over the plain NATS protocol (no nats
# CLI in Debian): a JetStream API request, retried while the cluster
# elects its meta leader.
create_stream() {
    local body='{"name":"LOGS","subjects":["logs.floodwall"],"num_replicas":3,"storage":"file"}'
    exec 3<>/dev/tcp/127.0.0.1/4222
    printf 'CONNECT {"verbose":false,"headers":true}\r\nSUB _INBOX.fleet 1\r\nPUB $JS.API.STREAM.CREATE.LOGS _INBOX.fleet %d\r\n%s\r\n' \
        "${#body}" "$body" >&3
    local reply=""
    while IFS= read -r -t 5 line <&3; do
        case "$line" in
            '{'*) reply=$line; break ;;
        esac
    done
    exec 3>&-
    case "$reply" in
        *'"error"'*"stream name already in use"*) return 0 ;;
        *'"error"'*) echo "fleet: stream create: $reply" >&2; return 1 ;;
        *'"config"'*) return 0 ;;
        *) return 1 ;;
    esac
}
for _ in $(seq 60); do create_stream && break; sleep 0.5; done
create_stream || { echo "fleet: cannot create the stream" >&2; exit 1; }
echo "fleet: stream LOGS ready (3 replicas)"

# 3. Three floodwall instances.
# Waits (at most 20 s) for a "listening" line in log $1: a bare connect
# to a PROXY-protocol listener would be counted as a bad header.
wait_listening() {
    for _ in $(seq 200); do
        grep -q "listening addr=" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "fleet: no listening line in $1" >&2
    return 1
}
for n in 1 2 3; do
    "$floodwall" --config "$here/fw$n.toml" 2>"$FLEET_DIR/fw$n.log" &
    pids+=($!)
done
for n in 1 2 3; do wait_listening "$FLEET_DIR/fw$n.log"; done

# 4. HAProxy in front.
haproxy -c -f "$here/haproxy.cfg" >/dev/null
haproxy -f "$here/haproxy.cfg" -db 2>"$FLEET_DIR/haproxy.log" &
pids+=($!)
wait_port 5140
echo "fleet: up; send to 127.0.0.1:5140 (Ctrl-C stops everything)"
wait
