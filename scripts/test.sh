#!/usr/bin/env bash
# The test command: installs what the tests talk to (util-linux logger,
# socat, rsyslog, syslog-ng unpacked under .peers/), then runs every test.
# Extra arguments go to `cargo test` (e.g. a test name filter).
#
# Without arguments, the tests of TLS sessions then run again with
# `record_layer = "rustls"` (FLOODWALL_TEST_RECORD_LAYER, read by
# tests/support/pki.rs): both record readers pass the same suite. They are
# modules of the one test binary `it`, picked by name. The handshake flood
# (tests/alone/tls_flood.rs) is left out: it never reaches a reader.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-peers.sh
cargo test --release "$@"
if [ "$#" -eq 0 ]; then
    FLOODWALL_TEST_RECORD_LAYER=rustls cargo test --release --test it -- \
        tls::session:: tls::truncation:: tls::refusals:: interop::tls::
    # RELP over TLS (the session writes its answers through the reader).
    FLOODWALL_TEST_RECORD_LAYER=rustls cargo test --release --test it -- \
        relp::rsyslog_omrelp_over_mutual_tls
fi
