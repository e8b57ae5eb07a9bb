#!/usr/bin/env bash
# Builds the Debian package into target/debian/: the release binary, the
# man page and shell completions it generates from its own clap
# definition (`floodwall --generate`), then cargo-deb with the metadata in
# Cargo.toml ([package.metadata.deb]) and the units in pkg/debian/.
# Install it with: sudo apt install ./target/debian/floodwall_*.deb
# --no-build: package the release binary already in target/release
# (the tests use it to avoid a second release build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
build=(--no-build)
if [ "${1:-}" != "--no-build" ]; then
    cargo build --release --bin floodwall
fi
rm -rf target/assets
target/release/floodwall --generate target/assets
gzip -9n target/assets/floodwall.1
cargo deb "${build[@]}" --strip --output target/debian/ >&2
ls target/debian/floodwall_*.deb | tail -n1
