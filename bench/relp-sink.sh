#!/usr/bin/env bash
# RELP senders into the same receiver (docs/relp.md, "The relp sink"): rsyslog imrelp
# -> omfile (in-memory main queue, FLOODWALL_RSYSLOG_RELP_QUEUE=memory),
# fed by
#   floodwall:  floodwall-load -> floodwall (relp sink, window W)
#   rsyslog:    floodwall-load -> rsyslog imtcp -> omrelp (windowSize W)
# floodwall-load 10 connections x 100 B, COUNT messages; one round each per
# window W in WINDOWS (default "128 1024": 128 is both senders' default;
# omrelp stalls at 128 on loopback, about 2k msg/s, and streams at 1024). Rate = lines in the receiver's file per second of wall time
# from the first send; CPU = the sender's (floodwall's or the forwarding
# rsyslog's) and the receiver's user+system seconds per million messages.
# Fixed ports 25140/25141/25142 (a bench, not a test).
# Usage: [WINDOWS="128 1024"] bash bench/relp-sink.sh [COUNT]   (default 200000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --bins --manifest-path "$root/Cargo.toml" >/dev/null
W=$(mktemp -d /tmp/floodwall-bench-relp.XXXXXX); BIN=$root/target/release
count=${1:-200000}
RECV=25140 IN=25141 FWD=25142
peers() { bash "$root/scripts/peers.sh" "$@"; }
cpu_of() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
lines() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
trap 'kill ${fw:-} 2>/dev/null || true; peers stop ${recv:-0} >/dev/null 2>&1 || true; peers stop ${fwd:-0} >/dev/null 2>&1 || true; rm -rf "$W"' EXIT

run() { # name
  local out=$W/out-$1.log sender
  rm -f "$out"
  recv=$(FLOODWALL_RSYSLOG_RELP_QUEUE=memory peers start-rsyslog-relp-file $RECV "$out" "$W/recv-$1")
  if [ "$1" = floodwall ]; then
    cat >$W/fw.toml <<T
[server]
listen = "127.0.0.1:$IN"
framing = "lines"
[limits]
send_timeout = "60s"
[sink]
type = "relp"
address = "127.0.0.1:$RECV"
window = $window
[log]
stats_interval = "0s"
T
    $BIN/floodwall --config $W/fw.toml 2>$W/fw.log &
    fw=$!; sender=$fw
    peers wait-port $IN 10
  else
    mkdir -p "$W/fwd-$1"
    cat >"$W/fwd-$1/rsyslog.conf" <<T
global(workDirectory="$W/fwd-$1" maxMessageSize="65536")
module(load="imtcp" MaxSessions="1000")
module(load="omrelp")
template(name="raw" type="string" string="%rawmsg%")
input(type="imtcp" address="127.0.0.1" port="$IN" ruleset="fwd" SupportOctetCountedFraming="off")
ruleset(name="fwd") {
  action(type="omrelp" target="127.0.0.1" port="$RECV" template="raw" windowSize="$window")
}
T
    /usr/sbin/rsyslogd -n -f "$W/fwd-$1/rsyslog.conf" -i "$W/fwd-$1/pid" >"$W/fwd-$1/stderr.log" 2>&1 &
    fwd=$!; sender=$fwd
    peers wait-port $IN 10
  fi
  local t0 t1 scpu rcpu
  t0=$(date +%s.%N)
  $BIN/floodwall-load -c 10 -s 100 -n "$count" -q 127.0.0.1:$IN >/dev/null
  # Bounded: 10 minutes.
  for _ in $(seq 12000); do [ "$(lines "$out")" -ge "$count" ] && break; sleep 0.05; done
  t1=$(date +%s.%N)
  scpu=$(cpu_of $sender); rcpu=$(cpu_of $recv)
  got=$(lines "$out")
  if [ "$1" = floodwall ]; then kill -TERM $fw; wait $fw || true; fw=; else peers stop $fwd >/dev/null; fwd=; fi
  peers stop $recv >/dev/null; recv=
  python3 -c "print(f'$1: window=$window lines={$got} msgs_per_s={$got/($t1-$t0):.0f} secs={$t1-$t0:.2f} sender_cpu_s_per_M={$scpu/$count*1e6:.2f} receiver_cpu_s_per_M={$rcpu/$count*1e6:.2f}')"
}
for window in ${WINDOWS:-128 1024}; do
  run floodwall
  run rsyslog
done
