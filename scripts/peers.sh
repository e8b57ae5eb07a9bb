#!/usr/bin/env bash
# Start/stop real syslog peers (rsyslog, syslog-ng) for floodwall's tests and
# benchmarks, each in the foreground with its own config, pid file and work dir
# under a WORKDIR the caller owns. Never touches the system rsyslog/syslog-ng
# config or /dev/log. Loopback (127.0.0.1) only.
#
# Use as a command:
#   scripts/peers.sh start-rsyslog-file     PORT OUT WORKDIR
#   scripts/peers.sh start-rsyslog-forward  PORT TARGET_PORT FRAMING WORKDIR [FORMAT]
#   scripts/peers.sh start-syslogng-file    PORT OUT WORKDIR [FRAMING]
#   scripts/peers.sh start-rsyslog-tls-forward  PORT TARGET_PORT WORKDIR CA CERT KEY [PEER_NAME]
#   scripts/peers.sh start-rsyslog-tls-file     PORT OUT WORKDIR CA CERT KEY [AUTHMODE]
#   scripts/peers.sh start-syslogng-tls-file    PORT OUT WORKDIR CA CERT KEY
#   scripts/peers.sh start-syslogng-tls-forward PORT TARGET_PORT WORKDIR CA CERT KEY
#   scripts/peers.sh start-rsyslog-relp-file    PORT OUT WORKDIR [CA CERT KEY]
#   scripts/peers.sh start-rsyslog-relp-forward PORT TARGET_PORT WORKDIR [--window N] [CA CERT KEY [PEER_NAME]]
#   scripts/peers.sh stop                   PID|PIDFILE|PEERDIR
#   scripts/peers.sh peer-bin               [rsyslogd|syslog-ng|loggen|syslog-ng-ctl]
#   scripts/peers.sh loggen                 LOGGEN-ARGS...   (loggen with its env set)
#   scripts/peers.sh free-port
#   scripts/peers.sh wait-port              PORT [TIMEOUT_S]
#   scripts/peers.sh wait-lines             FILE N [TIMEOUT_S]
# or `source scripts/peers.sh` and call peers_start_rsyslog_file, peers_stop, ...
# (every subcommand is a function peers_<name with - replaced by _>).
#
# The *-tls-* peers speak TLS with certificates from PEM files (CA, own
# cert, own key): *-tls-forward read plain TCP on PORT and forward over
# mutual TLS to 127.0.0.1:TARGET_PORT (rsyslog: omfwd, ossl driver, server
# name checked against PEER_NAME, default localhost; syslog-ng: network()
# transport("tls"), peer-verify(required-trusted)); start-rsyslog-tls-file
# is an imtcp listener that is TLS-only (ossl) and requires a client
# certificate chaining to CA (AUTHMODE x509/certvalid, the default; "anon"
# asks for none); start-syslogng-tls-file is syslog-ng's TLS listener
# (network(), no client certificate asked for).
#
# start-rsyslog-relp-file is an imrelp listener (rsyslog-relp) writing each
# message's raw text and LF to OUT, with a Direct main queue: imrelp answers
# rsp 200 only once omfile wrote the message (flushed per transaction), so a
# kill -9 of this peer loses nothing it acknowledged. With CA CERT KEY it
# speaks TLS only (tls.tlslib openssl) and requires a client certificate
# that chains to CA (authmode certvalid).
# FLOODWALL_RSYSLOG_RELP_QUEUE=memory (benchmarks) uses rsyslog's default
# in-memory main queue instead: faster, but an ack no longer means written.
# start-rsyslog-relp-forward reads plain TCP on PORT and forwards with
# omrelp (librelp, rsyslog-relp) to 127.0.0.1:TARGET_PORT; with CA CERT KEY
# over TLS (tls="on", tls.tlslib="openssl", mutual: its own certificate,
# the server's name checked against PEER_NAME, default localhost).
# --window N (or env FLOODWALL_RELP_WINDOW) sets omrelp's windowSize
# (default 128). Its main queue runs one worker (FLOODWALL_RSYSLOG_WORKERS,
# default 1): rsyslog starts a second one under load, and each worker's
# omrelp opens its own RELP session, so messages would arrive over two
# sessions, interleaved.
#
# start-* print the daemon's pid on stdout once its port accepts connections
# (bounded wait, FLOODWALL_PEER_START_TIMEOUT, default 10 s); on failure they
# print the peer's logs to stderr, kill it and return 1. The peer's files live in
# WORKDIR/<kind>-<PORT>/ : config, pid, stderr.log, internal.log, spool/...
#
# Env knobs (read at start time):
#   FLOODWALL_PEERS_DIR          syslog-ng unpack root (default <repo>/.peers)
#   FLOODWALL_PEER_MAX_MSG       max message bytes for both peers (default 65536,
#                                floodwall's default; rsyslog's own default is 8096)
#   FLOODWALL_PEER_MAX_CONN      max concurrent TCP connections (default 10000;
#                                rsyslog's default is 200, syslog-ng's is 10)
#   FLOODWALL_RSYSLOG_OCTET      on|off: imtcp octet-counted framing auto-detect
#                                (default on; see README-peers.md gotchas)
#   FLOODWALL_PEER_START_TIMEOUT seconds to wait for the port (default 10)

_PEERS_SELF="${BASH_SOURCE[0]}"
_PEERS_REPO="$(cd "$(dirname "$_PEERS_SELF")/.." && pwd)"

_peers_err() { echo "peers.sh: $*" >&2; }

_peers_sng_root() { echo "${FLOODWALL_PEERS_DIR:-$_PEERS_REPO/.peers}/syslog-ng"; }

peers_peer_bin() {
    local root; root="$(_peers_sng_root)"
    local rs; rs="$(command -v rsyslogd 2>/dev/null || echo /usr/sbin/rsyslogd)"
    case "${1:-}" in
        rsyslogd) echo "$rs" ;;
        syslog-ng) echo "$root/usr/sbin/syslog-ng" ;;
        syslog-ng-ctl) echo "$root/usr/sbin/syslog-ng-ctl" ;;
        loggen) echo "$root/usr/bin/loggen" ;;
        syslog-ng-libdir) echo "$root/usr/lib/syslog-ng" ;;
        syslog-ng-moddir) echo "$root/usr/lib/syslog-ng/3.38" ;;
        "")
            echo "rsyslogd=$rs"
            echo "syslog-ng=$root/usr/sbin/syslog-ng"
            echo "syslog-ng-ctl=$root/usr/sbin/syslog-ng-ctl"
            echo "loggen=$root/usr/bin/loggen"
            echo "LD_LIBRARY_PATH=$root/usr/lib/syslog-ng"
            echo "SYSLOGNG_PREFIX=$root/usr"
            echo "module-path=$root/usr/lib/syslog-ng/3.38"
            ;;
        *) _peers_err "peer-bin: unknown name '$1'"; return 2 ;;
    esac
}

# Run loggen (from the unpacked syslog-ng-core) with the env it needs: its
# libraries and its transport plugins (SYSLOGNG_PREFIX/lib/syslog-ng/3.38/loggen).
peers_loggen() {
    local root; root="$(_peers_sng_root)"
    [[ -x $root/usr/bin/loggen ]] || { _peers_err "loggen not found under $root (run scripts/install-peers.sh)"; return 1; }
    SYSLOGNG_PREFIX="$root/usr" LD_LIBRARY_PATH="$root/usr/lib/syslog-ng${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$root/usr/bin/loggen" "$@"
}

# A free TCP port on 127.0.0.1 below the ephemeral range (32768+), so client
# sockets of a test never collide with it.
peers_free_port() {
    local i p
    for i in $(seq 200); do
        p=$(( 20000 + (RANDOM % 12000) ))
        if [[ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]]; then echo "$p"; return 0; fi
    done
    _peers_err "free-port: no free port found"; return 1
}

_peers_listening() { [[ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]]; }

peers_wait_port() {
    local port="$1" timeout="${2:-10}" i
    for ((i = 0; i < timeout * 20; i++)); do
        _peers_listening "$port" && return 0
        sleep 0.05
    done
    return 1
}

# Wait until FILE has at least N lines (bounded); prints the final count.
peers_wait_lines() {
    local file="$1" n="$2" timeout="${3:-10}" i c=0
    for ((i = 0; i < timeout * 20; i++)); do
        c=$( [[ -f $file ]] && wc -l <"$file" || echo 0 )
        if (( c >= n )); then echo "$c"; return 0; fi
        sleep 0.05
    done
    echo "$c"; return 1
}

_peers_alive() {
    local pid="$1" st
    kill -0 "$pid" 2>/dev/null || return 1
    st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $st != Z ]]
}

# stop PID | PIDFILE | PEERDIR: TERM, wait up to 10 s, then KILL.
peers_stop() {
    local arg="${1:-}" pid=""
    [[ -n $arg ]] || { _peers_err "stop: need a PID, pid file or peer dir"; return 2; }
    # A peer dir: its daemon's pid file (removed by the daemon on a clean exit),
    # else the pid recorded at launch, so stopping twice is harmless.
    if [[ -d $arg ]]; then
        if [[ -s $arg/pid ]]; then arg="$arg/pid"; else arg="$arg/launched.pid"; fi
    fi
    if [[ $arg =~ ^[0-9]+$ ]]; then pid="$arg"
    elif [[ -f $arg ]]; then pid="$(tr -dc '0-9' <"$arg")"
    else _peers_err "stop: '$arg' is not a pid, pid file or peer dir"; return 2
    fi
    [[ -n $pid ]] || { _peers_err "stop: empty pid file $arg"; return 2; }
    if ! _peers_alive "$pid"; then wait "$pid" 2>/dev/null || true; return 0; fi
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 200; i++)); do
        _peers_alive "$pid" || break
        sleep 0.05
    done
    if _peers_alive "$pid"; then
        _peers_err "stop: pid $pid ignored SIGTERM for 10 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.1
    fi
    wait "$pid" 2>/dev/null || true  # reap if it is our child
    return 0
}

# _peers_launch DIR PORT CMD...: start CMD in the background (stdin /dev/null,
# stdout+stderr to DIR/stderr.log, fd soft limit raised to the hard limit),
# wait for PORT, print the pid.
_peers_launch() {
    local dir="$1" port="$2"; shift 2
    local timeout="${FLOODWALL_PEER_START_TIMEOUT:-10}"
    if _peers_listening "$port"; then
        _peers_err "port 127.0.0.1:$port is already in use:"; ss -Htlnp "sport = :$port" >&2
        return 1
    fi
    ( ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@" ) </dev/null >"$dir/stderr.log" 2>&1 &
    local pid=$! name="${dir##*/}"
    local i ok=0
    for ((i = 0; i < timeout * 20; i++)); do
        if ! _peers_alive "$pid"; then break; fi
        if _peers_listening "$port"; then ok=1; break; fi
        sleep 0.05
    done
    if [[ $ok != 1 ]]; then
        if _peers_alive "$pid"; then
            _peers_err "$name did not listen on 127.0.0.1:$port within ${timeout}s; killing pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
        else
            _peers_err "$name exited before listening on 127.0.0.1:$port"
        fi
        wait "$pid" 2>/dev/null || true
        local f
        for f in "$dir/stderr.log" "$dir/internal.log"; do
            [[ -s $f ]] && { echo "---- $f ----" >&2; tail -n 30 "$f" >&2; }
        done
        return 1
    fi
    echo "$pid" >"$dir/launched.pid"
    echo "$pid"
}

# Runs the unpacked syslog-ng in the foreground on DIR/syslog-ng.conf, its
# pid, persist and control files in DIR, and waits for PORT (_peers_launch).
_peers_launch_syslogng() {
    local dir="$1" port="$2" root; root="$(_peers_sng_root)"
    _peers_launch "$dir" "$port" env LD_LIBRARY_PATH="$root/usr/lib/syslog-ng" \
        "$root/usr/sbin/syslog-ng" -F --no-caps -f "$dir/syslog-ng.conf" -p "$dir/pid" \
        -R "$dir/syslog-ng.persist" -c "$dir/syslog-ng.ctl" \
        --module-path="$root/usr/lib/syslog-ng/3.38"
}

_peers_check_args() {
    local name="$1" want="$2"; shift 2
    if (( $# < want )); then _peers_err "$name: missing arguments"; return 2; fi
    local port="$1"
    if ! [[ $port =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
        _peers_err "$name: bad port '$port'"; return 2
    fi
}

_peers_abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# _peers_rsyslog_dir KIND PORT WORKDIR -> creates and prints the peer dir
_peers_mkdir() {
    local d; d="$(_peers_abs "$3")/$1-$2"
    mkdir -p "$d/spool" || return 1
    rm -f "$d/pid" "$d/launched.pid"
    echo "$d"
}

# Common head of every rsyslog config: own work dir, no imuxsock/imklog
# (nothing is loaded implicitly in rsyslog v8), big messages, imtcp on loopback
# bound to ruleset "in"; rsyslog's own messages go to internal.log.
_peers_rsyslog_head() {
    local dir="$1" port="$2" global_extra="${3:-}" imtcp_extra="${4:-}"
    local maxmsg="${FLOODWALL_PEER_MAX_MSG:-65536}" maxconn="${FLOODWALL_PEER_MAX_CONN:-10000}"
    local octet="${FLOODWALL_RSYSLOG_OCTET:-on}"
    cat <<EOF
# generated by floodwall scripts/peers.sh -- do not edit
global(
  workDirectory="$dir/spool"
  maxMessageSize="$maxmsg"
  parser.escapeControlCharactersOnReceive="off"
  processInternalMessages="on"
  $global_extra
)
module(load="imtcp" MaxSessions="$maxconn" $imtcp_extra)
# rsyslog's own diagnostics (default ruleset) -> internal.log, never OUT
*.* action(type="omfile" file="$dir/internal.log")
input(type="imtcp" address="127.0.0.1" port="$port" ruleset="in"
      SupportOctetCountedFraming="$octet")
EOF
}

peers_start_rsyslog_file() {
    _peers_check_args start-rsyslog-file 3 "$@" || return
    local port="$1" out dir
    out="$(_peers_abs "$2")"
    dir="$(_peers_mkdir rsyslog-file "$port" "$3")" || return 1
    mkdir -p "$(dirname "$out")" || return 1
    local conf="$dir/rsyslog.conf"
    {
        _peers_rsyslog_head "$dir" "$port"
        cat <<EOF
template(name="floodwall_raw" type="string" string="%rawmsg%\n")
ruleset(name="in") {
  action(type="omfile" file="$out" template="floodwall_raw"
         ioBufferSize="256k" flushOnTXEnd="on" asyncWriting="off")
}
EOF
    } >"$conf"
    _peers_launch "$dir" "$port" "$(peers_peer_bin rsyslogd)" -n -f "$conf" -i "$dir/pid"
}

# FRAMING: traditional|octet-counted (also lf|octet)
# FORMAT (optional): raw (default: the message exactly as received, %rawmsg%),
#   rfc5424 (RSYSLOG_SyslogProtocol23Format), rfc3164 (RSYSLOG_ForwardFormat,
#   rsyslog's classic forwarding format with high-precision timestamp),
#   legacy (RSYSLOG_TraditionalForwardFormat, omfwd's built-in default).
peers_start_rsyslog_forward() {
    _peers_check_args start-rsyslog-forward 4 "$@" || return
    local port="$1" tport="$2" framing="$3" dir tmpl
    case "$framing" in
        traditional|lf|LF) framing=traditional ;;
        octet-counted|octet) framing="octet-counted" ;;
        *) _peers_err "start-rsyslog-forward: FRAMING must be traditional or octet-counted, not '$framing'"; return 2 ;;
    esac
    [[ $tport =~ ^[0-9]+$ ]] || { _peers_err "start-rsyslog-forward: bad target port '$tport'"; return 2; }
    case "${5:-raw}" in
        raw) tmpl=floodwall_fwd_raw ;;
        rfc5424) tmpl=RSYSLOG_SyslogProtocol23Format ;;
        rfc3164) tmpl=RSYSLOG_ForwardFormat ;;
        legacy) tmpl=RSYSLOG_TraditionalForwardFormat ;;
        *) _peers_err "start-rsyslog-forward: FORMAT must be raw|rfc5424|rfc3164|legacy"; return 2 ;;
    esac
    dir="$(_peers_mkdir rsyslog-forward "$port" "$4")" || return 1
    local conf="$dir/rsyslog.conf"
    {
        _peers_rsyslog_head "$dir" "$port"
        cat <<EOF
# no trailing LF in the template: omfwd adds the frame (LF or "LEN ").
template(name="floodwall_fwd_raw" type="string" string="%rawmsg%")
ruleset(name="in") {
  action(type="omfwd" target="127.0.0.1" port="$tport" protocol="tcp"
         TCP_Framing="$framing" template="$tmpl"
         action.resumeRetryCount="-1" action.resumeInterval="1")
}
EOF
    } >"$conf"
    _peers_launch "$dir" "$port" "$(peers_peer_bin rsyslogd)" -n -f "$conf" -i "$dir/pid"
}

# FRAMING (optional): lf (default: network() source, one message per line) or
# octet (syslog() source, RFC 6587 octet counting). flags(no-parse): the whole
# received message is ${MSG}; the file gets "${MSG}\n".
peers_start_syslogng_file() {
    _peers_check_args start-syslogng-file 3 "$@" || return
    local port="$1" out dir drv
    local maxmsg="${FLOODWALL_PEER_MAX_MSG:-65536}" maxconn="${FLOODWALL_PEER_MAX_CONN:-10000}"
    case "${4:-lf}" in
        lf|LF|traditional) drv=network ;;
        octet|octet-counted) drv=syslog ;;
        *) _peers_err "start-syslogng-file: FRAMING must be lf or octet"; return 2 ;;
    esac
    local root; root="$(_peers_sng_root)"
    local bin="$root/usr/sbin/syslog-ng"
    [[ -x $bin ]] || { _peers_err "syslog-ng not found at $bin (run scripts/install-peers.sh)"; return 1; }
    out="$(_peers_abs "$2")"
    dir="$(_peers_mkdir syslogng-file "$port" "$3")" || return 1
    mkdir -p "$(dirname "$out")" || return 1
    local conf="$dir/syslog-ng.conf"
    # log-iw-size is shared by all connections of a source: keep ~100 per connection.
    cat >"$conf" <<EOF
@version: 3.38
# generated by floodwall scripts/peers.sh -- do not edit
options {
  use-dns(no); use-fqdn(no); dns-cache(no); keep-hostname(yes);
  log-msg-size($maxmsg);
  stats-freq(0);
  create-dirs(yes);
};
source s_in {
  $drv(ip("127.0.0.1") port($port) transport("tcp")
       flags(no-parse) max-connections($maxconn) listen-backlog(4096)
       log-iw-size($(( maxconn * 100 ))) log-msg-size($maxmsg));
};
source s_internal { internal(); };
destination d_out { file("$out" template("\${MSG}\n")); };
destination d_internal { file("$dir/internal.log"); };
log { source(s_in); destination(d_out); };
# warnings and worse only: per-connection accept/close notices would flood it
filter f_internal { level(warning..emerg); };
log { source(s_internal); filter(f_internal); destination(d_internal); };
EOF
    _peers_launch_syslogng "$dir" "$port"
}

# global() lines naming the ossl driver's CA, certificate and key.
_peers_rsyslog_tls_files() {
    local ca cert key f
    ca="$(_peers_abs "$1")"; cert="$(_peers_abs "$2")"; key="$(_peers_abs "$3")"
    for f in "$ca" "$cert" "$key"; do
        [[ -r $f ]] || { _peers_err "cannot read $f"; return 1; }
    done
    printf 'DefaultNetstreamDriverCAFile="%s"\n  DefaultNetstreamDriverCertFile="%s"\n  DefaultNetstreamDriverKeyFile="%s"' \
        "$ca" "$cert" "$key"
}

peers_start_rsyslog_tls_forward() {
    _peers_check_args start-rsyslog-tls-forward 6 "$@" || return
    local port="$1" tport="$2" dir files name="${7:-localhost}"
    [[ $tport =~ ^[0-9]+$ ]] || { _peers_err "start-rsyslog-tls-forward: bad target port '$tport'"; return 2; }
    files="$(_peers_rsyslog_tls_files "$4" "$5" "$6")" || return 1
    dir="$(_peers_mkdir rsyslog-tls-forward "$port" "$3")" || return 1
    local conf="$dir/rsyslog.conf"
    {
        _peers_rsyslog_head "$dir" "$port" "$files"
        cat <<EOF
template(name="floodwall_fwd_raw" type="string" string="%rawmsg%")
ruleset(name="in") {
  action(type="omfwd" target="127.0.0.1" port="$tport" protocol="tcp"
         StreamDriver="ossl" StreamDriverMode="1"
         StreamDriverAuthMode="x509/name" StreamDriverPermittedPeers="$name"
         TCP_Framing="traditional" template="floodwall_fwd_raw"
         action.resumeRetryCount="-1" action.resumeInterval="1")
}
EOF
    } >"$conf"
    _peers_launch "$dir" "$port" "$(peers_peer_bin rsyslogd)" -n -f "$conf" -i "$dir/pid"
}

peers_start_rsyslog_tls_file() {
    _peers_check_args start-rsyslog-tls-file 6 "$@" || return
    local port="$1" out dir files auth="${7:-x509/certvalid}"
    out="$(_peers_abs "$2")"
    files="$(_peers_rsyslog_tls_files "$4" "$5" "$6")" || return 1
    dir="$(_peers_mkdir rsyslog-tls-file "$port" "$3")" || return 1
    mkdir -p "$(dirname "$out")" || return 1
    local conf="$dir/rsyslog.conf"
    {
        _peers_rsyslog_head "$dir" "$port" "$files" \
            "StreamDriver.Name=\"ossl\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"$auth\""
        cat <<EOF
template(name="floodwall_raw" type="string" string="%rawmsg%\n")
ruleset(name="in") {
  action(type="omfile" file="$out" template="floodwall_raw"
         ioBufferSize="256k" flushOnTXEnd="on" asyncWriting="off")
}
EOF
    } >"$conf"
    _peers_launch "$dir" "$port" "$(peers_peer_bin rsyslogd)" -n -f "$conf" -i "$dir/pid"
}

peers_start_rsyslog_relp_file() {
    _peers_check_args start-rsyslog-relp-file 3 "$@" || return
    local port="$1" out dir tls="" tlslib="" queue
    local maxmsg="${FLOODWALL_PEER_MAX_MSG:-65536}"
    case "${FLOODWALL_RSYSLOG_RELP_QUEUE:-direct}" in
        direct) queue=Direct ;;
        memory) queue=LinkedList ;;
        *) _peers_err "FLOODWALL_RSYSLOG_RELP_QUEUE must be direct or memory"; return 2 ;;
    esac
    out="$(_peers_abs "$2")"
    if (( $# >= 6 )); then
        local ca cert key f
        ca="$(_peers_abs "$4")"; cert="$(_peers_abs "$5")"; key="$(_peers_abs "$6")"
        for f in "$ca" "$cert" "$key"; do
            [[ -r $f ]] || { _peers_err "cannot read $f"; return 1; }
        done
        tlslib='tls.tlslib="openssl"'
        tls="tls=\"on\" tls.cacert=\"$ca\" tls.mycert=\"$cert\" tls.myprivkey=\"$key\" tls.authmode=\"certvalid\""
    fi
    dir="$(_peers_mkdir rsyslog-relp-file "$port" "$3")" || return 1
    mkdir -p "$(dirname "$out")" || return 1
    local conf="$dir/rsyslog.conf"
    cat >"$conf" <<EOF
# generated by floodwall scripts/peers.sh -- do not edit
global(
  workDirectory="$dir/spool"
  maxMessageSize="$maxmsg"
  parser.escapeControlCharactersOnReceive="off"
  processInternalMessages="on"
)
main_queue(queue.type="$queue")
module(load="imrelp" $tlslib)
*.* action(type="omfile" file="$dir/internal.log")
template(name="floodwall_raw" type="string" string="%rawmsg%\n")
ruleset(name="in") {
  action(type="omfile" file="$out" template="floodwall_raw"
         ioBufferSize="256k" flushOnTXEnd="on" asyncWriting="off")
}
input(type="imrelp" address="127.0.0.1" port="$port" ruleset="in"
      maxDataSize="$maxmsg" $tls)
EOF
    _peers_launch "$dir" "$port" "$(peers_peer_bin rsyslogd)" -n -f "$conf" -i "$dir/pid"
}

peers_start_syslogng_tls_forward() {
    _peers_check_args start-syslogng-tls-forward 6 "$@" || return
    local port="$1" tport="$2" dir ca cert key
    local maxmsg="${FLOODWALL_PEER_MAX_MSG:-65536}"
    [[ $tport =~ ^[0-9]+$ ]] || { _peers_err "start-syslogng-tls-forward: bad target port '$tport'"; return 2; }
    ca="$(_peers_abs "$4")"; cert="$(_peers_abs "$5")"; key="$(_peers_abs "$6")"
    local root; root="$(_peers_sng_root)"
    local bin="$root/usr/sbin/syslog-ng"
    [[ -x $bin ]] || { _peers_err "syslog-ng not found at $bin (run scripts/install-peers.sh)"; return 1; }
    dir="$(_peers_mkdir syslogng-tls-forward "$port" "$3")" || return 1
    local conf="$dir/syslog-ng.conf"
    cat >"$conf" <<EOF
@version: 3.38
# generated by floodwall scripts/peers.sh -- do not edit
options {
  use-dns(no); use-fqdn(no); dns-cache(no); keep-hostname(yes);
  log-msg-size($maxmsg); stats-freq(0);
};
source s_in {
  network(ip("127.0.0.1") port($port) transport("tcp") flags(no-parse)
          log-msg-size($maxmsg));
};
source s_internal { internal(); };
destination d_floodwall {
  network("127.0.0.1" port($tport) transport("tls") template("\${MSG}\n")
          tls(ca-file("$ca") cert-file("$cert") key-file("$key")
              peer-verify(required-trusted)));
};
destination d_internal { file("$dir/internal.log"); };
log { source(s_in); destination(d_floodwall); };
filter f_internal { level(warning..emerg); };
log { source(s_internal); filter(f_internal); destination(d_internal); };
EOF
    _peers_launch_syslogng "$dir" "$port"
}

# TLS receiver writing each message to OUT (benchmarks): network() source,
# transport("tls"), no client certificate asked for.
peers_start_syslogng_tls_file() {
    _peers_check_args start-syslogng-tls-file 6 "$@" || return
    local port="$1" out dir ca cert key
    local maxmsg="${FLOODWALL_PEER_MAX_MSG:-65536}" maxconn="${FLOODWALL_PEER_MAX_CONN:-10000}"
    ca="$(_peers_abs "$4")"; cert="$(_peers_abs "$5")"; key="$(_peers_abs "$6")"
    local root; root="$(_peers_sng_root)"
    local bin="$root/usr/sbin/syslog-ng"
    [[ -x $bin ]] || { _peers_err "syslog-ng not found at $bin (run scripts/install-peers.sh)"; return 1; }
    out="$(_peers_abs "$2")"
    dir="$(_peers_mkdir syslogng-tls-file "$port" "$3")" || return 1
    mkdir -p "$(dirname "$out")" || return 1
    local conf="$dir/syslog-ng.conf"
    cat >"$conf" <<EOF
@version: 3.38
# generated by floodwall scripts/peers.sh -- do not edit
options {
  use-dns(no); use-fqdn(no); dns-cache(no); keep-hostname(yes);
  log-msg-size($maxmsg); stats-freq(0); create-dirs(yes);
};
source s_in {
  network(ip("127.0.0.1") port($port) transport("tls")
          tls(ca-file("$ca") cert-file("$cert") key-file("$key")
              peer-verify(optional-untrusted))
          flags(no-parse) max-connections($maxconn) listen-backlog(4096)
          log-iw-size($(( maxconn * 100 ))) log-msg-size($maxmsg));
};
source s_internal { internal(); };
destination d_out { file("$out" template("\${MSG}\n")); };
destination d_internal { file("$dir/internal.log"); };
log { source(s_in); destination(d_out); };
filter f_internal { level(warning..emerg); };
log { source(s_internal); filter(f_internal); destination(d_internal); };
EOF
    _peers_launch_syslogng "$dir" "$port"
}

peers_start_rsyslog_relp_forward() {
    _peers_check_args start-rsyslog-relp-forward 3 "$@" || return
    local window="${FLOODWALL_RELP_WINDOW:-128}" workers="${FLOODWALL_RSYSLOG_WORKERS:-1}"
    if [[ ${4:-} == --window ]]; then
        window="${5:-}"; set -- "$1" "$2" "$3" "${@:6}"
    fi
    [[ $window =~ ^[0-9]+$ ]] || { _peers_err "start-rsyslog-relp-forward: bad window '$window'"; return 2; }
    local port="$1" tport="$2" dir tls="" tlslib="" name="${7:-localhost}"
    [[ $tport =~ ^[0-9]+$ ]] || { _peers_err "start-rsyslog-relp-forward: bad target port '$tport'"; return 2; }
    if [[ -n ${4:-} ]]; then
        local ca cert key f
        ca="$(_peers_abs "$4")"; cert="$(_peers_abs "${5:-}")"; key="$(_peers_abs "${6:-}")"
        for f in "$ca" "$cert" "$key"; do
            [[ -r $f ]] || { _peers_err "cannot read $f"; return 1; }
        done
        # tls.tlslib is omrelp's module parameter (8.2302 refuses it on the
        # action and falls back to librelp's default, GnuTLS).
        tlslib='tls.tlslib="openssl"'
        tls="tls=\"on\" tls.caCert=\"$ca\" tls.myCert=\"$cert\" tls.myPrivKey=\"$key\" tls.authMode=\"name\" tls.permittedPeer=[\"$name\"]"
    fi
    dir="$(_peers_mkdir rsyslog-relp-forward "$port" "$3")" || return 1
    local conf="$dir/rsyslog.conf"
    {
        _peers_rsyslog_head "$dir" "$port"
        cat <<EOF
# One main queue worker: under load rsyslog starts a second one, whose own
# omrelp instance opens a second RELP session; the two interleave.
main_queue(queue.workerThreads="$workers")
module(load="omrelp" $tlslib)
template(name="floodwall_fwd_raw" type="string" string="%rawmsg%")
ruleset(name="in") {
  action(type="omrelp" target="127.0.0.1" port="$tport" template="floodwall_fwd_raw"
         windowSize="$window" $tls
         action.resumeRetryCount="-1" action.resumeInterval="1")
}
EOF
    } >"$conf"
    _peers_launch "$dir" "$port" "$(peers_peer_bin rsyslogd)" -n -f "$conf" -i "$dir/pid"
}

_peers_usage() {
    sed -n '2,/^$/p' "$_PEERS_SELF" | sed 's/^# \{0,1\}//' >&2
}

peers() {
    local cmd="${1:-}"
    [[ -n $cmd ]] || { _peers_usage; return 2; }
    shift
    case "$cmd" in
        start-rsyslog-file|start-rsyslog-forward|start-syslogng-file|start-rsyslog-tls-forward|start-rsyslog-tls-file|start-rsyslog-relp-file|start-rsyslog-relp-forward|start-syslogng-tls-forward|start-syslogng-tls-file|stop|peer-bin|loggen|free-port|wait-port|wait-lines)
            "peers_${cmd//-/_}" "$@" ;;
        -h|--help|help) _peers_usage ;;
        *) _peers_err "unknown command '$cmd'"; _peers_usage; return 2 ;;
    esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -uo pipefail
    peers "$@"
    exit $?
fi
