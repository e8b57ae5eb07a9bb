#!/usr/bin/env bash
# RELP receivers behind the same sender (docs/relp.md, "Throughput"):
#   floodwall:       [relp] listener -> file sink (answers once written)
#   rsyslog-direct:  rsyslog imrelp -> omfile, Direct main queue (answers once written)
#   rsyslog-memory:  rsyslog imrelp -> omfile, in-memory main queue (answers once queued)
# each fed by the same sender: floodwall-load (10 connections x 127 B, COUNT
# messages) -> rsyslog imtcp -> omrelp (windowSize W, one main queue worker,
# scripts/peers.sh start-rsyslog-relp-forward). One round per receiver and
# window W in WINDOWS (default "128 1024"). Rate = lines in the receiver's
# file per second of wall time from the first send, stopping after
# TIMEOUT_S (default 60) if not all arrived; CPU = the receiver's user+system
# seconds per million lines it wrote, and the sender's the same way.
# Ports from scripts/peers.sh free-port.
# Usage: [WINDOWS="128 1024"] [RECEIVERS="floodwall rsyslog-direct rsyslog-memory"]
#        bash bench/relp-in.sh [COUNT]   (default 200000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --bins --manifest-path "$root/Cargo.toml" >/dev/null
W=$(mktemp -d /tmp/floodwall-bench-relp-in.XXXXXX); BIN=$root/target/release
count=${1:-200000}
timeout_s=${TIMEOUT_S:-60}
peers() { bash "$root/scripts/peers.sh" "$@"; }
cpu_of() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
lines() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
trap 'kill ${fw:-} 2>/dev/null || true; peers stop ${recv:-0} >/dev/null 2>&1 || true; peers stop ${fwd:-0} >/dev/null 2>&1 || true; rm -rf "$W"' EXIT

run() { # receiver window
  local kind=$1 window=$2 out=$W/out-$1-$2.log port in
  port=$(peers free-port); in=$(peers free-port)
  rm -f "$out"
  case $kind in
    floodwall)
      cat >"$W/fw.toml" <<T
[server]
listen = "127.0.0.1:0"
[relp]
listen = "127.0.0.1:$port"
[sink]
type = "file"
path = "$out"
[log]
stats_interval = "0s"
T
      "$BIN/floodwall" --config "$W/fw.toml" 2>"$W/fw-$window.log" &
      fw=$!; recv=$fw
      peers wait-port "$port" 10 ;;
    rsyslog-direct|rsyslog-memory)
      recv=$(FLOODWALL_RSYSLOG_RELP_QUEUE=${kind#rsyslog-} peers start-rsyslog-relp-file "$port" "$out" "$W/recv-$kind-$window") ;;
    *) echo "unknown receiver $kind" >&2; return 2 ;;
  esac
  fwd=$(peers start-rsyslog-relp-forward "$in" "$port" "$W/fwd-$kind-$window" --window "$window")
  local t0 t1 scpu rcpu got
  t0=$(date +%s.%N)
  "$BIN/floodwall-load" -c 10 -s 127 -n "$count" -q "127.0.0.1:$in" >/dev/null &
  local load=$!
  for _ in $(seq $((timeout_s * 20))); do [ "$(lines "$out")" -ge "$count" ] && break; sleep 0.05; done
  t1=$(date +%s.%N)
  scpu=$(cpu_of "$fwd"); rcpu=$(cpu_of "$recv"); got=$(lines "$out")
  peers stop "$fwd" >/dev/null; fwd=
  kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true
  if [ "$kind" = floodwall ]; then kill -TERM "$fw"; wait "$fw" || true; fw=; else peers stop "$recv" >/dev/null; fi
  recv=
  python3 -c "g=max($got,1); print(f'| $kind | $window | {$got} | {$got/($t1-$t0):,.0f} | {$rcpu/g*1e6:.2f} | {$scpu/g*1e6:.2f} |')"
}
echo "| receiver | window | lines | msg/s | receiver CPU-s per million | sender (omrelp) CPU-s per million |"
echo "|---|---|---|---|---|---|"
for window in ${WINDOWS:-128 1024}; do
  for kind in ${RECEIVERS:-floodwall rsyslog-direct rsyslog-memory}; do
    run "$kind" "$window"
  done
done
