#!/usr/bin/env bash
# Install the real syslog peers that floodwall's tests and benchmarks talk to.
#
#   - rsyslog (apt), never started as the system service
#   - syslog-ng-core 3.38 (apt-get download + dpkg -x into $FLOODWALL_PEERS_DIR/syslog-ng,
#     because the Debian packages rsyslog and syslog-ng-core conflict), plus its
#     runtime libraries (apt); also provides `loggen`
#   - socat and util-linux `logger`
#   - rsyslog-openssl (TLS driver), rsyslog-relp (imrelp, omrelp), nats-server,
#     haproxy, prometheus + promtool,
#     openssl (apt; their services are never started)
#
# Idempotent: a second run does nothing but check. Quiet on success (one summary
# line); on failure prints the failing step and its log.
#
# Env:
#   FLOODWALL_PEERS_DIR  where to unpack syslog-ng (default: <repo>/.peers)
#   FLOODWALL_INSTALL_VERBOSE=1  show apt/dpkg output
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
PEERS_DIR="${FLOODWALL_PEERS_DIR:-$REPO_DIR/.peers}"
SNG_DIR="$PEERS_DIR/syslog-ng"
SNG_VERSION_DIR="3.38"
SNG_RUNTIME_LIBS=(libivykis0 libjson-c5 libnet1 libpcre3 libglib2.0-0 libwrap0 libcap2 libsystemd0 libssl3)

LOG="$(mktemp /tmp/floodwall-install-peers.XXXXXX.log)"
TMPD="$(mktemp -d /tmp/floodwall-install-peers.XXXXXX)"
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_CREATED=0
START_TS=$(date +%s.%N)

cleanup() {
    if [[ $POLICY_RC_CREATED == 1 ]]; then rm -f "$POLICY_RC"; fi
    rm -rf "$TMPD"
}
trap cleanup EXIT
# shellcheck disable=SC2154
trap 'rc=$?; echo "install-peers: ERROR: unexpected failure (exit $rc) at line $LINENO: $BASH_COMMAND" >&2; exit $rc' ERR

die() {
    echo "install-peers: ERROR: $*" >&2
    if [[ -s $LOG ]]; then
        echo "---- last 40 lines of $LOG ----" >&2
        tail -n 40 "$LOG" >&2
    fi
    exit 1
}

# run DESCRIPTION CMD...: run quietly, log output, die with context on failure.
run() {
    local what="$1"; shift
    echo "+ $*" >>"$LOG"
    if [[ ${FLOODWALL_INSTALL_VERBOSE:-0} == 1 ]]; then
        "$@" 2>&1 | tee -a "$LOG" || die "$what failed (command: $*)"
    else
        "$@" >>"$LOG" 2>&1 || die "$what failed (command: $*)"
    fi
}

[[ $(id -u) == 0 ]] || die "must run as root (apt-get install)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian only"

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED == 0 ]]; then
        run "apt-get update" apt-get update -q
        APT_UPDATED=1
    fi
}

# Packages that are not installed (dpkg status "install ok installed").
missing_pkgs() {
    local p
    for p in "$@"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
            echo "$p"
        fi
    done
}

apt_install() {
    local missing
    missing=$(missing_pkgs "$@")
    [[ -z $missing ]] && return 0
    apt_update_once
    # shellcheck disable=SC2086
    run "apt-get install $missing" apt-get install -y -q --no-install-recommends $missing
}

# Keep package maintainer scripts from starting services (rsyslog's postinst
# would otherwise start the system rsyslogd, which opens /dev/log).
block_service_start() {
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
        POLICY_RC_CREATED=1
    fi
}

# If a system rsyslogd got started anyway (not one of our foreground
# instances, which never use /run/rsyslogd.pid), stop it.
stop_system_rsyslog() {
    local pid=""
    if [[ -s /run/rsyslogd.pid ]]; then pid=$(cat /run/rsyslogd.pid 2>/dev/null || true); fi
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        echo "install-peers: stopping system rsyslogd (pid $pid) started by the package" >&2
        if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
            systemctl stop rsyslog.service syslog.socket >>"$LOG" 2>&1 || true
            systemctl disable rsyslog.service >>"$LOG" 2>&1 || true
        fi
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f /run/rsyslogd.pid
    fi
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        systemctl disable rsyslog.service >>"$LOG" 2>&1 || true
    fi
}

# ---------------------------------------------------------------- rsyslog
if ! command -v rsyslogd >/dev/null 2>&1 && [[ ! -x /usr/sbin/rsyslogd ]]; then
    block_service_start
    apt_install rsyslog
    stop_system_rsyslog
fi
[[ -x /usr/sbin/rsyslogd ]] || die "rsyslogd not found after install"

# ------------------------------------------------------- socat, logger
apt_install socat
# scripts/peers.sh waits for ports with `ss` (iproute2), not on every minimal image.
apt_install iproute2
# The tests signal daemons with kill(1) (procps: not in slim images) and
# mount the disk-full tests' tmpfs with mount/umount (mount), and make
# fifos with mkfifo (coreutils).
apt_install procps mount coreutils
command -v logger >/dev/null 2>&1 || apt_install bsdutils
logger --help 2>&1 | grep -q -- '--octet-count' || die "logger is not util-linux logger (no --octet-count)"

# ---------------------------------- TLS, NATS, HAProxy, Prometheus peers
# rsyslog-openssl: rsyslog's ossl stream driver (TLS tests); nats-server
# (JetStream sink tests); haproxy (fleet, PROXY protocol); prometheus and
# promtool (metrics tests); openssl CLI (certificates, s_client). Their
# packages may try to start system services: policy-rc.d blocks that, and
# the tests run their own instances in the foreground.
block_service_start
apt_install rsyslog-openssl rsyslog-relp nats-server haproxy prometheus openssl
# The package and systemd tests (tests/it/service/package.rs, tests/alone/socket_activation.rs):
# lintian on the .deb; systemd-analyze and systemd-socket-activate.
apt_install lintian systemd
for b in nats-server haproxy prometheus promtool openssl; do
    command -v "$b" >/dev/null 2>&1 || die "$b not found after install"
done
ls /usr/lib/*/rsyslog/lmnsd_ossl.so >/dev/null 2>&1 || die "rsyslog ossl driver (lmnsd_ossl.so) not found after install"
ls /usr/lib/*/rsyslog/imrelp.so /usr/lib/*/rsyslog/omrelp.so >/dev/null 2>&1 || die "rsyslog-relp (imrelp.so, omrelp.so) not found after install"
# A service started anyway (no policy-rc.d honoured): stop it, our tests
# bind their own ports and must not share a machine-wide instance.
for svc in nats-server haproxy prometheus; do
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        systemctl stop "$svc" >>"$LOG" 2>&1 || true
        systemctl disable "$svc" >>"$LOG" 2>&1 || true
    fi
done

# ------------------------------------------------ syslog-ng (unpacked)
apt_install "${SNG_RUNTIME_LIBS[@]}"

SNG_BIN="$SNG_DIR/usr/sbin/syslog-ng"
SNG_STAMP="$SNG_DIR/.installed-version"
want_version=""
if [[ ! -x $SNG_BIN || ! -s $SNG_STAMP ]]; then
    apt_update_once
    chmod 755 "$TMPD"
    # apt's _apt sandbox user must be able to write the download dir.
    if id _apt >/dev/null 2>&1; then chown _apt "$TMPD" 2>/dev/null || true; fi
    pushd "$TMPD" >/dev/null
    run "apt-get download syslog-ng-core" apt-get download -q syslog-ng-core
    popd >/dev/null
    debs=("$TMPD"/syslog-ng-core_*.deb)
    deb="${debs[0]}"
    [[ -f $deb ]] || die "no syslog-ng-core .deb downloaded"
    want_version=$(dpkg-deb -f "$deb" Version)
    rm -rf "$SNG_DIR.tmp"
    mkdir -p "$SNG_DIR.tmp"
    run "dpkg -x syslog-ng-core" dpkg -x "$deb" "$SNG_DIR.tmp"
    rm -rf "$SNG_DIR"
    mv "$SNG_DIR.tmp" "$SNG_DIR"
    echo "$want_version" >"$SNG_STAMP"
fi

SNG_LIB="$SNG_DIR/usr/lib/syslog-ng"
SNG_MOD="$SNG_LIB/$SNG_VERSION_DIR"
for f in "$SNG_BIN" "$SNG_DIR/usr/bin/loggen" "$SNG_MOD/libafsocket.so" "$SNG_MOD/libaffile.so" "$SNG_MOD/libsyslogformat.so"; do
    [[ -e $f ]] || die "missing $f in unpacked syslog-ng-core (remove $SNG_DIR and retry)"
done

# Every binary and module must resolve all its libraries.
notfound=""
for f in "$SNG_BIN" "$SNG_DIR/usr/bin/loggen" "$SNG_DIR/usr/sbin/syslog-ng-ctl" \
         "$SNG_MOD"/*.so "$SNG_MOD"/loggen/*.so; do
    out=$(LD_LIBRARY_PATH="$SNG_LIB" ldd "$f" 2>&1 || true)
    if grep -q 'not found' <<<"$out"; then
        notfound+="$f:"$'\n'"$(grep 'not found' <<<"$out")"$'\n'
    fi
done
[[ -z $notfound ]] || die "unresolved libraries for syslog-ng:"$'\n'"$notfound"

# Smoke test: the binary runs and reports its version.
ver_out=$(LD_LIBRARY_PATH="$SNG_LIB" "$SNG_BIN" --version 2>&1) || die "syslog-ng --version failed: $ver_out"
grep -q "^syslog-ng 3" <<<"$ver_out" || die "unexpected syslog-ng --version output: $ver_out"
# loggen finds its transport plugins under $SYSLOGNG_PREFIX/lib/syslog-ng/3.38/loggen.
lg_out=$(SYSLOGNG_PREFIX="$SNG_DIR/usr" LD_LIBRARY_PATH="$SNG_LIB" "$SNG_DIR/usr/bin/loggen" --help-all 2>&1 || true)
grep -q -- '--stream' <<<"$lg_out" || die "loggen cannot load its plugins: $lg_out"
rs_ver=$(/usr/sbin/rsyslogd -v 2>/dev/null | head -n1 | awk '{print $2}' | tr -d ,)

elapsed=$(awk -v s="$START_TS" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
echo "install-peers: ok in ${elapsed}s (rsyslogd ${rs_ver}, syslog-ng $(awk -F": " "/^Installer-Version/{print \$2}" <<<"$ver_out") in $SNG_DIR, socat, logger, rsyslog-openssl, rsyslog-relp, nats-server, haproxy, prometheus, openssl)"
rm -f "$LOG"
