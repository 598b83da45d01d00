#!/usr/bin/env bash
# Runs every test of BeyondTP: installs what is missing (nats-server), builds once, then runs the
# whole workspace's tests (cargo nextest when available, cargo test otherwise), plus fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

ensure_rust
ensure_nats_server

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    log "building and running tests (cargo nextest)"
    cargo nextest run --workspace --locked --no-fail-fast
else
    log "building and running tests (cargo test)"
    cargo test --workspace --locked --no-fail-fast
fi
