#!/usr/bin/env bash
# bench/compare.sh: floodwall side by side with rsyslog and syslog-ng on
# loopback, plus the ceiling (a bare read-and-discard listener) and
# floodwall's null sink. See bench/README.md for what each column means.
#
#   bash bench/compare.sh            full matrix (about 10 minutes)
#   QUICK=1 bash bench/compare.sh    one load per server, short runs (~1.5 min)
#
# Env knobs:
#   RUN_SECS    seconds per throughput run (integer; default 5, QUICK 2)
#   CONNS       connection counts (default "1 10 100", QUICK "10")
#   SIZES       message sizes in bytes, LF included (default "100 1024", QUICK "100";
#               loggen cannot go below 127, so 100 becomes 127 for loggen)
#   SERVERS     subset of "discard fw-null fw-file rsyslog syslog-ng"
#   CLIENTS     subset of "fwl loggen"
#   IDLE_N      idle connections for the connection-scale test (default 10000, QUICK 1000)
#   SKIP        any of "matrix idle latency timeline tls churn plots" to skip those parts
#   CHURN_SERVERS  servers of the churn part (default "fw-file rsyslog syslog-ng
#               fw-tls rsyslog-tls syslog-ng-tls"); CHURN_SENDERS its sender
#               thread counts (default "10 100")
#   TLS_CONNS   connection counts of the TLS rows (default "10 100", QUICK "10");
#               TLS_IDLE_N idle TLS connections per server (default 1000)
#   TLS_PARTS   subset of "rates idle handshakes" of the TLS part (default all)
#   TLS_SERVERS subset of "fw-tls fw-tls-rustls rsyslog-tls syslog-ng-tls" (default
#               all); fw-tls-rustls is floodwall with [server.tls] record_layer =
#               "rustls" (rustls's reader instead of floodwall's record layer)
#   FW_TLS_RECORD_LAYER  record_layer of the fw-tls rows (default "floodwall")
#   CARGO_TARGET_DIR  where cargo builds (default <repo>/target)
#   BENCH_WORK  where the servers write their output (default bench/out/work;
#               e.g. a tmpfs such as /dev/shm/fwbench, so that a disk's write-back
#               stalls measure no server)
#   FW_BIN      the floodwall binary to measure (default the one built there;
#               e.g. a copy of an older build, for a before/after comparison)
#   LOGGEN_RATE loggen's rate per connection (default 100000000: as fast as it can);
#               e.g. to measure plaintext and TLS at the same offered rate
#
# Output: bench/out/results.csv, idle.csv, latency.txt, timeline/, tls.csv,
# tls_idle.csv, tls_handshakes.csv, churn.csv, results.md
# (bench/out is gitignored), and bench/throughput.svg + bench/timeline.svg.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
# shellcheck source=../scripts/peers.sh
source scripts/peers.sh

QUICK="${QUICK:-0}"
if [[ $QUICK == 1 ]]; then
    RUN_SECS="${RUN_SECS:-2}"; CONNS="${CONNS:-10}"; SIZES="${SIZES:-100}"; IDLE_N="${IDLE_N:-1000}"
else
    RUN_SECS="${RUN_SECS:-5}"; CONNS="${CONNS:-1 10 100}"; SIZES="${SIZES:-100 1024}"; IDLE_N="${IDLE_N:-10000}"
fi
SERVERS="${SERVERS:-discard fw-null fw-file rsyslog syslog-ng}"
if [[ $QUICK == 1 ]]; then TLS_CONNS="${TLS_CONNS:-10}"; else TLS_CONNS="${TLS_CONNS:-10 100}"; fi
TLS_IDLE_N="${TLS_IDLE_N:-1000}"
TLS_PARTS="${TLS_PARTS:-rates idle handshakes}"
TLS_SERVERS="${TLS_SERVERS:-fw-tls fw-tls-rustls rsyslog-tls syslog-ng-tls}"
FW_TLS_RECORD_LAYER="${FW_TLS_RECORD_LAYER:-floodwall}"
CLIENTS="${CLIENTS:-fwl loggen}"
LOGGEN_RATE="${LOGGEN_RATE:-100000000}"
SKIP="${SKIP:-}"
CHURN_SERVERS="${CHURN_SERVERS:-fw-file rsyslog syslog-ng fw-tls rsyslog-tls syslog-ng-tls}"
CHURN_SENDERS="${CHURN_SENDERS:-10 100}"
OUT="$REPO/bench/out"
WORK="${BENCH_WORK:-$OUT/work}"
TLS_DIR="$WORK/tls-certs"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
FW="${FW_BIN:-$TARGET/release/floodwall}"
LOAD="$TARGET/release/floodwall-load"
TCK=$(getconf CLK_TCK)
POLL=0.05

log() { echo "[compare $(date +%H:%M:%S)] $*" >&2; }
die() { echo "compare.sh: ERROR: $*" >&2; exit 1; }
skipping() { [[ " $SKIP " == *" $1 "* ]]; }

# ------------------------------------------------------------------ setup
if ! [[ -x /usr/sbin/rsyslogd && -x "$(peers_peer_bin syslog-ng)" && -x "$(peers_peer_bin loggen)" ]]; then
    log "installing peers (scripts/install-peers.sh)"
    bash scripts/install-peers.sh || die "cannot install the peers"
fi
log "building release binaries into $TARGET"
cargo build --release --quiet --bins || die "cargo build failed"
ulimit -n "$(ulimit -Hn)" || die "cannot raise the fd limit"
mkdir -p "$OUT"
rm -rf "$WORK"; mkdir -p "$WORK"

# Every process this script starts, so an interrupted run leaves none behind.
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -CONT "$p" 2>/dev/null
        kill -TERM "$p" 2>/dev/null
    done
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----------------------------------------------------------- /proc probes
cpu_ticks() { local s; s=$(<"/proc/$1/stat") || return 1; s=${s##*) }; set -- $s; echo $(( ${12} + ${13} )); }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null; }
threads_of() { local k v; while read -r k v; do [[ $k == Threads: ]] && { echo "$v"; return; }; done <"/proc/$1/status"; }
now_ns() { date +%s%N; }
kv() { grep -o "\b$1=[^ ]*" "$2" | tail -n1 | cut -d= -f2; }  # kv KEY FILE

# -------------------------------------------------------------- servers
# start_server KIND PORT DIR -> sets SRV_PID, SRV_OUT (output file or "")
fw_config() { # fw_config PORT SINK_TOML [EXTRA_TOML]
    cat <<EOF
[server]
listen = "127.0.0.1:$1"
backlog = 4096
[limits]
max_connections = $((IDLE_N + 100))
idle_timeout = "600s"
[sink]
$2
[log]
level = "info"
stats_interval = "1s"
${3:-}
EOF
}

start_server() {
    local kind="$1" port="$2" dir="$3"
    mkdir -p "$dir"; SRV_OUT=""; SRV_PID=""
    case "$kind" in
        discard)
            "$LOAD" --discard-listen "127.0.0.1:$port" -q >"$dir/discard.out" 2>&1 &
            SRV_PID=$!
            peers_wait_port "$port" 10 || { kill "$SRV_PID"; return 1; } ;;
        fw-null|fw-file)
            if [[ $kind == fw-null ]]; then
                fw_config "$port" 'type = "null"' >"$dir/fw.toml"
            else
                SRV_OUT="$dir/messages.log"
                fw_config "$port" "type = \"file\"
path = \"$SRV_OUT\"" >"$dir/fw.toml"
            fi
            "$FW" --config "$dir/fw.toml" 2>"$dir/fw.log" &
            SRV_PID=$!
            peers_wait_port "$port" 10 || { cat "$dir/fw.log" >&2; kill "$SRV_PID"; return 1; } ;;
        rsyslog)
            SRV_OUT="$dir/messages.log"
            SRV_PID=$(peers_start_rsyslog_file "$port" "$SRV_OUT" "$dir") || return 1 ;;
        syslog-ng)
            SRV_OUT="$dir/messages.log"
            SRV_PID=$(peers_start_syslogng_file "$port" "$SRV_OUT" "$dir") || return 1 ;;
        # TLS (server certificate only: loggen -U presents none).
        fw-tls|fw-tls-rustls)
            SRV_OUT="$dir/messages.log"
            local layer="$FW_TLS_RECORD_LAYER"
            [[ $kind == fw-tls-rustls ]] && layer=rustls
            fw_config "$port" "type = \"file\"
path = \"$SRV_OUT\"" "[server.tls]
cert = \"$TLS_DIR/server.crt\"
key = \"$TLS_DIR/server.key\"
record_layer = \"$layer\"" >"$dir/fw.toml"
            "$FW" --config "$dir/fw.toml" 2>"$dir/fw.log" &
            SRV_PID=$!
            peers_wait_port "$port" 10 || { cat "$dir/fw.log" >&2; kill "$SRV_PID"; return 1; } ;;
        rsyslog-tls)
            SRV_OUT="$dir/messages.log"
            SRV_PID=$(peers_start_rsyslog_tls_file "$port" "$SRV_OUT" "$dir" \
                "$TLS_DIR/ca.crt" "$TLS_DIR/server.crt" "$TLS_DIR/server.key" anon) || return 1 ;;
        syslog-ng-tls)
            SRV_OUT="$dir/messages.log"
            SRV_PID=$(peers_start_syslogng_tls_file "$port" "$SRV_OUT" "$dir" \
                "$TLS_DIR/ca.crt" "$TLS_DIR/server.crt" "$TLS_DIR/server.key") || return 1 ;;
        *) die "unknown server $kind" ;;
    esac
    PIDS+=("$SRV_PID")
}

file_size() { [[ -f $1 ]] && stat -c %s "$1" || echo 0; }

# ------------------------------------------------------------ one run
# run_one SERVER CLIENT CONNS SIZE -> appends a CSV row to $CSV
CSV="$OUT/results.csv"
is_tls() { [[ $1 == *-tls || $1 == *-tls-* ]]; }
run_one() {
    local server="$1" client="$2" conns="$3" size="$4"
    local port dir; port=$(peers_free_port) || die "no free port"
    dir="$WORK/$server-$client-$conns-$size"
    start_server "$server" "$port" "$dir" || { log "SKIP $server: did not start"; return 0; }
    local pid="$SRV_PID" out="$SRV_OUT"
    local msize="$size" cpu0 cpu1
    [[ $client == loggen && $size -lt 127 ]] && msize=127
    cpu0=$(cpu_ticks "$pid")
    local tfile="$dir/client.time" cout="$dir/client.out"
    (
        TIMEFORMAT='%U %S'
        # loggen: -i -S is plain TCP, -U alone TLS (one transport plugin).
        local fwl_tls=() transport=(-i -S)
        if is_tls "$server"; then fwl_tls=(--tls-ca "$TLS_DIR/ca.crt"); transport=(-U); fi
        if [[ $client == fwl ]]; then
            { time "$LOAD" "127.0.0.1:$port" -c "$conns" -s "$msize" -d "${RUN_SECS}s" -q "${fwl_tls[@]}" >"$cout" 2>&1; } 2>"$tfile"
        else
            { time peers_loggen "${transport[@]}" -s "$msize" -I "$RUN_SECS" -r "$LOGGEN_RATE" \
                --active-connections="$conns" 127.0.0.1 "$port" >"$cout" 2>&1; } 2>"$tfile"
        fi
    ) &
    local cpid=$!
    # Poll the output: when it first and last grew, peak threads.
    local t_first=0 t_last=0 last_size=0 sz t stable=0 thr peak=0
    while :; do
        thr=$(threads_of "$pid" 2>/dev/null); thr=${thr:-0}
        (( thr > peak )) && peak=$thr
        if [[ -n $out ]]; then
            sz=$(file_size "$out"); t=$(now_ns)
            if (( sz != last_size )); then
                (( t_first == 0 )) && t_first=$t
                t_last=$t; last_size=$sz; stable=0
            else
                stable=$((stable + 1))
            fi
        fi
        if ! kill -0 "$cpid" 2>/dev/null; then
            # Client gone: wait for the output to stop growing (0.5 s still, 60 s max).
            [[ -z $out ]] && break
            (( stable >= 10 )) && break
            (( $(now_ns) - t_last > 60000000000 )) && { log "WARN $dir: output still growing after 60 s"; break; }
        fi
        sleep "$POLL"
    done
    wait "$cpid"
    [[ -z $out ]] && sleep 0.3  # discard/null: let the last reads land
    cpu1=$(cpu_ticks "$pid")
    local hwm; hwm=$(status_kib "$pid" VmHWM)
    peers_stop "$pid"
    local written bytes secs
    if [[ $server == discard ]]; then
        written=$(kv msgs "$dir/discard.out"); bytes=$(kv bytes "$dir/discard.out")
        secs=$(kv active_secs "$dir/discard.out")
    elif [[ $server == fw-null ]]; then
        # Nothing to count in a file: floodwall's own final delivered count.
        written=$(grep ' stats ' "$dir/fw.log" | tail -n1 | grep -o '\bdelivered=[0-9]*' | cut -d= -f2)
        bytes=$(( ${written:-0} * msize ))
        secs=""
    else
        written=$(wc -l <"$out"); bytes=$(file_size "$out")
        secs=$(awk -v a="$t_first" -v b="$t_last" 'BEGIN{printf "%.3f", (b-a)/1e9}')
    fi
    local sent
    if [[ $client == fwl ]]; then sent=$(kv sent "$cout")
    else sent=$(grep -o 'average rate.*count=[0-9]*' "$cout" | grep -o 'count=[0-9]*' | cut -d= -f2)
    fi
    # fw-null has no output to time: use the client's sending time.
    if [[ -z $secs || $secs == 0.000 ]]; then
        if [[ $client == fwl ]]; then secs=$(kv secs "$cout"); else secs=$RUN_SECS; fi
    fi
    local ccpu; ccpu=$(awk '{printf "%.2f", $1+$2}' "$tfile" 2>/dev/null)
    awk -v s="$server" -v c="$client" -v n="$conns" -v z="$size" -v mz="$msize" -v secs="$secs" \
        -v sent="${sent:-0}" -v w="${written:-0}" -v b="${bytes:-0}" -v c0="$cpu0" -v c1="$cpu1" \
        -v tck="$TCK" -v cc="${ccpu:-0}" -v hwm="${hwm:-0}" -v thr="$peak" 'BEGIN {
        cpu = (c1 - c0) / tck
        rate = secs > 0 ? w / secs : 0
        printf "%s,%s,%d,%d,%d,%.3f,%d,%d,%d,%.0f,%.1f,%.2f,%.2f,%.2f,%d,%d\n",
            s, c, n, z, mz, secs, sent, w, sent - w, rate, (secs > 0 ? b / secs / 1e6 : 0),
            cpu, (w > 0 ? cpu / (w / 1e6) : 0), cc, hwm, thr
    }' >>"$CSV"
    log "$(tail -n1 "$CSV")"
    rm -f "$out"
}

# ---------------------------------------------------------------- matrix
if ! skipping matrix; then
    echo "server,client,conns,size,msg_bytes,secs,sent,written,lost,msgs_per_s,mb_per_s,server_cpu_s,cpu_s_per_m,client_cpu_s,peak_rss_kib,threads_peak" \
        >"$OUT/results.csv"
    for server in $SERVERS; do
        for size in $SIZES; do
            for conns in $CONNS; do
                for client in $CLIENTS; do
                    run_one "$server" "$client" "$conns" "$size"
                done
            done
        done
    done
fi

# ------------------------------------------------ 10,000 idle connections
# RSS and threads before and while IDLE_N idle connections are held.
IDLE_CSV="$OUT/idle.csv"
idle_one() {
    local server="$1" hello="${2:-}" port dir label="$1${2:+ (1 msg each)}"
    local tls=(); is_tls "$server" && tls=(--tls-ca "$TLS_DIR/ca.crt")
    port=$(peers_free_port) || die "no free port"
    dir="$WORK/idle-$server${hello:+-hello}"
    FLOODWALL_PEER_MAX_CONN=$((IDLE_N + 100)) start_server "$server" "$port" "$dir" || { log "SKIP idle $server"; return 0; }
    local pid="$SRV_PID" rss0 thr0 rss1 thr1 i est=0
    sleep 0.5  # let a peer finish its start-up allocations
    rss0=$(status_kib "$pid" VmRSS); thr0=$(threads_of "$pid")
    "$LOAD" "127.0.0.1:$port" --idle "$IDLE_N" ${hello:+--hello} "${tls[@]}" -d 300s >"$dir/idle.out" 2>&1 &
    local cpid=$!; PIDS+=("$cpid")
    for ((i = 0; i < 1200; i++)); do  # <= 60 s
        grep -q 'fwl idle connected=' "$dir/idle.out" && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.05
    done
    local connected; connected=$(grep -o 'connected=[0-9]*' "$dir/idle.out" | head -n1 | cut -d= -f2)
    # Wait until the server has accepted them all (and, for floodwall, spawned their threads).
    for ((i = 0; i < 600; i++)); do  # <= 60 s
        est=$(ss -Htn state established "( sport = :$port )" | wc -l)
        thr1=$(threads_of "$pid")
        if (( est >= ${connected:-0} )) && { [[ $server != fw-* ]] || (( thr1 >= thr0 + ${connected:-0} )); }; then break; fi
        sleep 0.1
    done
    sleep 1  # settle: the last threads touch their stacks
    rss1=$(status_kib "$pid" VmRSS); thr1=$(threads_of "$pid")
    kill -TERM "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null
    peers_stop "$pid"
    awk -v s="$label" -v n="$IDLE_N" -v c="${connected:-0}" -v e="$est" -v r0="$rss0" -v r1="$rss1" \
        -v t0="$thr0" -v t1="$thr1" 'BEGIN {
        printf "%s,%d,%d,%d,%d,%d,%d,%d,%.2f\n", s, n, c, e, r0, r1, t0, t1, (c > 0 ? (r1 - r0) / c : 0)
    }' >>"$IDLE_CSV"
    log "idle: $(tail -n1 "$IDLE_CSV")"
}
if ! skipping idle; then
    echo "server,asked,connected,established,rss_before_kib,rss_after_kib,threads_before,threads_after,kib_per_conn" >"$OUT/idle.csv"
    idle_one fw-null
    idle_one fw-null hello
    idle_one rsyslog
    idle_one syslog-ng
fi

# --------------------------------------------------------------- latency
# floodwall -> tcp sink -> floodwall-load --latency-listen (the collector
# timestamps each line when its read returns). First the pipeline's max
# rate (10 connections, 100 B), then 50% of it paced.
start_collector() { # DIR -> COL_PID, COL_ADDR
    "$LOAD" --latency-listen 127.0.0.1:0 -q >"$1/collector.out" 2>&1 &
    COL_PID=$!; PIDS+=("$COL_PID")
    local i
    for ((i = 0; i < 200; i++)); do
        COL_ADDR=$(grep -o 'listening addr=[0-9.:]*' "$1/collector.out" | cut -d= -f2)
        [[ -n $COL_ADDR ]] && return 0
        sleep 0.05
    done
    return 1
}
latency_phase() { # NAME RATE -> prints collector result path
    local rate="$2" dir="$WORK/latency-$1" port
    mkdir -p "$dir"; port=$(peers_free_port)
    start_collector "$dir" || die "collector did not start"
    fw_config "$port" "type = \"tcp\"
address = \"$COL_ADDR\"" >"$dir/fw.toml"
    "$FW" --config "$dir/fw.toml" 2>"$dir/fw.log" &
    local fpid=$!; PIDS+=("$fpid")
    peers_wait_port "$port" 10 || die "floodwall did not start: $(cat "$dir/fw.log")"
    "$LOAD" "127.0.0.1:$port" -c 10 -s 100 -d "${RUN_SECS}s" -r "$rate" -q >"$dir/client.out" 2>&1
    peers_stop "$fpid"        # drains to the collector
    peers_stop "$COL_PID"     # prints its result
    echo "$dir/collector.out"
}
if ! skipping latency; then
    maxf=$(latency_phase max 0)
    max_rate=$(kv msgs_per_s "$maxf")
    half=$(( ${max_rate:-0} / 2 ))
    halff=$(latency_phase half "$half")
    {
        echo "max_rate=$max_rate"
        echo "half_rate=$half"
        echo "max_$(grep fwl_result "$maxf" | sed 's/^fwl_result //; s/ / max_/g')"
        echo "half_$(grep fwl_result "$halff" | sed 's/^fwl_result //; s/ / half_/g')"
        echo "half_client_$(grep fwl_result "$WORK/latency-half/client.out" | sed 's/^fwl_result //; s/ / half_client_/g')"
    } | tr ' ' '\n' >"$OUT/latency.txt"
    log "latency: max ${max_rate} msg/s; at ${half} msg/s p50=$(kv p50_us "$halff")us p99=$(kv p99_us "$halff")us"
fi

# -------------------------------------------------------------- timeline
# A stall-then-recover run: 50 clients at 100k msg/s, the downstream
# collector is SIGSTOPped for 5 s, then SIGCONTed. Stats every 200 ms.
if ! skipping timeline; then
    tdir="$OUT/timeline"; rm -rf "$tdir"; mkdir -p "$tdir"
    start_collector "$tdir" || die "collector did not start"
    port=$(peers_free_port)
    cat >"$tdir/fw.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[limits]
max_connections = 200
send_timeout = "500ms"
[queue]
capacity = 50000
[sink]
type = "tcp"
address = "$COL_ADDR"
write_timeout = "2s"
[log]
stats_interval = "200ms"
EOF
    "$FW" --config "$tdir/fw.toml" 2>"$tdir/fw.log" &
    fpid=$!; PIDS+=("$fpid")
    peers_wait_port "$port" 10 || die "floodwall did not start"
    "$LOAD" "127.0.0.1:$port" -c 50 -s 100 -r 100000 -d 14s --reconnect -q >"$tdir/client.out" 2>&1 &
    lpid=$!; PIDS+=("$lpid")
    : >"$tdir/threads.tsv"; : >"$tdir/events.tsv"
    t0=$(now_ns)
    stopped=0
    while kill -0 "$lpid" 2>/dev/null; do
        t=$(now_ns)
        echo "$((t / 1000000)) $(threads_of "$fpid")" >>"$tdir/threads.tsv"
        el=$(( (t - t0) / 1000000 ))
        if (( stopped == 0 && el >= 4000 )); then kill -STOP "$COL_PID"; echo "stall_start $((t / 1000000))" >>"$tdir/events.tsv"; stopped=1; fi
        if (( stopped == 1 && el >= 9000 )); then kill -CONT "$COL_PID"; echo "stall_end $((t / 1000000))" >>"$tdir/events.tsv"; stopped=2; fi
        sleep 0.1
    done
    wait "$lpid"
    peers_stop "$fpid"; peers_stop "$COL_PID"
    log "timeline: $(grep fwl_result "$tdir/collector.out")"
fi

# ------------------------------------------------------------------- TLS
# The same client and machine against each server's TLS listener (server
# certificate only: loggen -U presents no client certificate), 100 B
# messages; then TLS_IDLE_N idle TLS connections per server (RSS each,
# after the handshake); then full handshakes per second (one openssl
# s_time client, new session every time, 5 s).
if ! skipping tls; then
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR" || exit 1
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout ca.key -out ca.crt -days 30 -subj "/CN=bench CA" &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout server.key -out server.csr -subj "/CN=localhost" &&
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -out server.crt -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1')
    ) >/dev/null 2>&1 || die "cannot make the TLS certificates"
    CSV="$OUT/tls.csv"
    if [[ " $TLS_PARTS " == *" rates "* ]]; then
        echo "server,client,conns,size,msg_bytes,secs,sent,written,lost,msgs_per_s,mb_per_s,server_cpu_s,cpu_s_per_m,client_cpu_s,peak_rss_kib,threads_peak" >"$CSV"
        for server in $TLS_SERVERS; do
            for conns in $TLS_CONNS; do
                for client in $CLIENTS; do
                    run_one "$server" "$client" "$conns" 100
                done
            done
        done
    fi
    IDLE_CSV="$OUT/tls_idle.csv"
    if [[ " $TLS_PARTS " == *" idle "* ]]; then
        echo "server,asked,connected,established,rss_before_kib,rss_after_kib,threads_before,threads_after,kib_per_conn" >"$IDLE_CSV"
        for server in $TLS_SERVERS; do
            IDLE_N=$TLS_IDLE_N idle_one "$server"
        done
    fi
    if [[ " $TLS_PARTS " == *" handshakes "* ]]; then
        echo "server,handshakes,secs,per_s,server_cpu_s,server_ms_per_handshake" >"$OUT/tls_handshakes.csv"
        for server in $TLS_SERVERS; do
            port=$(peers_free_port); dir="$WORK/handshakes-$server"
            start_server "$server" "$port" "$dir" || continue
            c0=$(cpu_ticks "$SRV_PID")
            openssl s_time -connect "127.0.0.1:$port" -new -time 5 -CAfile "$TLS_DIR/ca.crt" >"$dir/s_time.out" 2>&1
            c1=$(cpu_ticks "$SRV_PID")
            peers_stop "$SRV_PID"
            # "N connections in S real seconds"; if s_time gave up with an
            # error first, its progress stars (one per connection) over 5 s.
            n=$(grep -o '^[0-9]* connections in [0-9]* real seconds' "$dir/s_time.out" | head -n1)
            [[ -n $n ]] || n="$(tr -cd '*' <"$dir/s_time.out" | wc -c) connections in 5 real"
            awk -v s="$server" -v line="$n" -v c0="$c0" -v c1="$c1" -v tck="$TCK" 'BEGIN {
                split(line, f, " "); secs = f[4]; cpu = (c1 - c0) / tck
                printf "%s,%d,%.2f,%.0f,%.2f,%.3f\n", s, f[1], secs, (secs > 0 ? f[1] / secs : 0), cpu, (f[1] > 0 ? cpu * 1000 / f[1] : 0)
            }' >>"$OUT/tls_handshakes.csv"
            log "handshakes: $(tail -n1 "$OUT/tls_handshakes.csv")"
        done
    fi
fi

# ----------------------------------------------------------------- churn
# Short connections (issue 17): floodwall-load --churn, CHURN_SENDERS
# threads each connecting, sending --per-conn messages of 100 B and
# closing, for RUN_SECS; plaintext at 1 and 10 messages per connection,
# TLS with a full handshake every time (no resumption). Server CPU per
# connection from /proc; "arrived" is what the server wrote, read after a
# bounded wait (a server that loses lines shows it here).
if ! skipping churn; then
    if [[ ! -f $TLS_DIR/server.crt ]]; then
        mkdir -p "$TLS_DIR"
        (
            cd "$TLS_DIR" || exit 1
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -keyout ca.key -out ca.crt -days 30 -subj "/CN=bench CA" &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -keyout server.key -out server.csr -subj "/CN=localhost" &&
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
                -out server.crt -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1')
        ) >/dev/null 2>&1 || die "cannot make the TLS certificates"
    fi
    CHURN_CSV="$OUT/churn.csv"
    echo "server,tls,senders,per_conn,secs,connections,conns_per_s,sent,arrived,server_cpu_s,server_us_per_conn,client_cpu_s" >"$CHURN_CSV"
    for server in $CHURN_SERVERS; do
        for senders in $CHURN_SENDERS; do
            per_list="1 10"; tls_args=()
            if is_tls "$server"; then per_list="1"; tls_args=(--tls-ca "$TLS_DIR/ca.crt"); fi
            for per in $per_list; do
                port=$(peers_free_port); dir="$WORK/churn-$server-$senders-$per"
                start_server "$server" "$port" "$dir" || { log "SKIP churn $server"; continue; }
                c0=$(cpu_ticks "$SRV_PID")
                "$LOAD" --churn -q -c "$senders" --per-conn "$per" -d "${RUN_SECS}s" \
                    "${tls_args[@]}" "127.0.0.1:$port" >"$dir/load.out" 2>"$dir/load.err"
                c1=$(cpu_ticks "$SRV_PID")
                sent=$(kv sent "$dir/load.out"); sent=${sent:-0}
                arrived=0
                for _ in $(seq 100); do
                    arrived=$( [[ -f $SRV_OUT ]] && wc -l <"$SRV_OUT" || echo 0 )
                    (( arrived >= sent )) && break
                    sleep 0.1
                done
                peers_stop "$SRV_PID"
                awk -v s="$server" -v t="$(is_tls "$server" && echo 1 || echo 0)" -v n="$senders" -v p="$per" \
                    -v secs="$(kv secs "$dir/load.out")" -v conns="$(kv connections "$dir/load.out")" \
                    -v sent="$sent" -v arrived="$arrived" -v c0="$c0" -v c1="$c1" -v tck="$TCK" \
                    -v ccpu="$(kv client_cpu_s "$dir/load.out")" 'BEGIN {
                    cpu = (c1 - c0) / tck
                    printf "%s,%d,%d,%d,%.2f,%d,%.0f,%d,%d,%.2f,%.1f,%s\n", s, t, n, p, secs, conns,
                        (secs > 0 ? conns / secs : 0), sent, arrived, cpu, (conns > 0 ? cpu * 1e6 / conns : 0), ccpu
                }' >>"$CHURN_CSV"
                log "churn: $(tail -n1 "$CHURN_CSV")"
            done
        done
    done
fi

# ---------------------------------------------------------------- report
if ! skipping plots; then
    python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib || die "pip install matplotlib failed"
    {
        echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') x $(nproc) cores"
        echo "kernel=$(uname -r)"
        echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
        echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "command=QUICK=$QUICK RUN_SECS=$RUN_SECS bash bench/compare.sh"
    } >"$OUT/machine.txt"
    python3 bench/report.py "$OUT" "$REPO/bench" || die "report.py failed"
    log "wrote $OUT/results.md, bench/throughput.svg, bench/timeline.svg"
fi
