#!/usr/bin/env bash
# Shutdown benchmark (issue 8): how long SIGTERM takes and what it loses.
#   1. 10 clients x 2 MB (20,000 lines of 100 B each) written and closed,
#      then SIGTERM at once: expect lost=0, every line in the file.
#   2. 100 clients writing flat out when SIGTERM arrives (shutdown.timeout
#      2s): the stop time, lost = dropped_shutdown + queued, and the
#      client's sent count against delivered + lost.
# Loopback only; everything stops by itself. Usage: bash bench/shutdown.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet
FW=target/release/floodwall
LOAD=target/release/floodwall-load
OUT=$(mktemp -d /tmp/floodwall-bench-shutdown.XXXXXX)
trap '[[ -n ${KEEP:-} ]] || rm -rf "$OUT"' EXIT
ulimit -n "$(ulimit -Hn)"

start() { # CONFIG -> sets PID, ADDR
    "$FW" --config "$1" 2>"$OUT/log" &
    PID=$!
    for _ in $(seq 200); do
        ADDR=$(grep -o 'listening addr=[0-9.:]*' "$OUT/log" | head -1 | cut -d= -f2 || true)
        [[ -n $ADDR ]] && return 0
        sleep 0.05
    done
    echo "daemon did not start"; cat "$OUT/log"; exit 1
}

stop_timed() { # -> sets TOOK (seconds from SIGTERM to exit) and RC
    local t0 t1
    t0=$(date +%s.%N)
    kill -TERM "$PID"
    set +e; wait "$PID"; RC=$?; set -e
    t1=$(date +%s.%N)
    TOOK=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
}

field() { grep '] stats ' "$OUT/log" | tail -1 | grep -o " $1=[0-9]*" | cut -d= -f2; }

cat >"$OUT/a.toml" <<EOT
[server]
listen = "127.0.0.1:0"
[sink]
type = "file"
path = "$OUT/a.log"
[log]
stats_interval = "0s"
EOT
start "$OUT/a.toml"
"$LOAD" -c 10 -s 100 -n 200000 "$ADDR" >"$OUT/load-a" 2>&1
stop_timed
lost=$(grep -o 'lost=[0-9]*' "$OUT/log" | cut -d= -f2)
lines=$(wc -l <"$OUT/a.log")
echo "10 x 2 MB written and closed, then SIGTERM: stop ${TOOK}s, exit $RC, lost=$lost, lines in file $lines / 200000"

cat >"$OUT/b.toml" <<EOT
[server]
listen = "127.0.0.1:0"
[limits]
max_connections = 200
[sink]
type = "file"
path = "$OUT/b.log"
[shutdown]
timeout = "2s"
[log]
stats_interval = "0s"
EOT
start "$OUT/b.toml"
"$LOAD" -c 100 -s 100 -d 8s "$ADDR" >"$OUT/load-b" 2>&1 &
LPID=$!
sleep 2
stop_timed
wait "$LPID" || true
lost=$(grep -o 'lost=[0-9]*' "$OUT/log" | cut -d= -f2)
sent=$(grep '^fwl_result' "$OUT/load-b" | grep -o ' sent=[0-9]*' | cut -d= -f2 || echo "?")
echo "100 clients flat out, shutdown.timeout 2s: stop ${TOOK}s, exit $RC, lost=$lost (dropped_shutdown=$(field dropped_shutdown) queued=$(field queue_depth)), received=$(field received) delivered=$(field delivered) dropped_send_timeout=$(field dropped_send_timeout), client sent=$sent (conns accepted $(field conns_total)/100), file lines $(wc -l <"$OUT/b.log")"
