#!/usr/bin/env bash
# The test command: installs what the tests talk to (util-linux logger,
# socat, rsyslog, syslog-ng unpacked under .peers/), then runs every test.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-peers.sh
exec cargo test --release "$@"
