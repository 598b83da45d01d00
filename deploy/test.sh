#!/usr/bin/env bash
# Runs every test of BeyondTP: installs what is missing (nats-server, PostgreSQL), checks fmt and
# clippy, builds once, then runs the whole workspace's tests (cargo nextest when available,
# cargo test otherwise): unit tests, the store suite on SQLite and PostgreSQL, the request fuzz
# test (BTP_FUZZ_CASES, default 20000) and the end-to-end and fault tests with real processes;
# then the web console's test in headless Chromium (screenshots in target/browser-artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

ensure_rust
ensure_nats_server
ensure_moto || { [ -z "${CI:-}" ] || exit 1; log "moto unavailable: S3 tests are skipped"; }
ensure_seaweedfs || { [ -z "${CI:-}" ] || exit 1; log "seaweedfs unavailable: its S3 tests are skipped"; }
ensure_fake_gcs || { [ -z "${CI:-}" ] || exit 1; log "fake-gcs-server unavailable: GCS tests are skipped"; }
ensure_wsgidav || { [ -z "${CI:-}" ] || exit 1; log "wsgidav unavailable: WebDAV tests are skipped"; }
ensure_azurite || { [ -z "${CI:-}" ] || exit 1; log "azurite unavailable: Azure tests are skipped"; }
ensure_sshd || { [ -z "${CI:-}" ] || exit 1; log "sshd unavailable: SFTP tests are skipped"; }
ensure_prometheus || { [ -z "${CI:-}" ] || exit 1; log "prometheus unavailable: metrics checks are skipped"; }
browser=1
ensure_browser || { [ -z "${CI:-}" ] || exit 1; browser=0; log "chromium or npm unavailable: the console's browser test is skipped"; }
if ! ensure_postgres; then
    if [ -n "${CI:-}" ]; then
        log "PostgreSQL is required under CI"
        exit 1
    fi
    log "PostgreSQL unavailable: the store suite runs on SQLite only"
fi

if command -v promtool >/dev/null 2>&1; then
    log "promtool check config deploy/prometheus.yml"
    promtool check config deploy/prometheus.yml >/dev/null
fi

log "cargo fmt --check"
cargo fmt --all -- --check


# Clippy lints the workspace's crates while they are built for the tests (clippy-driver as the
# workspace wrapper, as `cargo clippy` runs it, with -D warnings), so the build happens once
# instead of a check build and a test build. Dependencies are built by rustc alone either way.
if clippy_driver=$(command -v clippy-driver); then
    log "cargo clippy (while building the tests)"
    export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
    export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
else
    log "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi

if cargo nextest --version >/dev/null 2>&1; then
    log "building tests (cargo nextest)"
    cargo nextest run --workspace --locked --no-run
else
    log "building tests (cargo test)"
    cargo test --workspace --locked --no-run
fi

# The previous version, for the rolling-upgrade test (tests/upgrade.rs): the commit named in
# deploy/previous-version, built in a target directory of its own that starts with hard links
# to this build's dependencies, so that only BeyondTP's own crates are compiled again.
target=${CARGO_TARGET_DIR:-$PWD/target}
previous=$(grep -v '^#' deploy/previous-version | head -n 1)
if git cat-file -e "$previous^{commit}" 2>/dev/null; then
    log "building the previous version ${previous:0:12} for the upgrade test"
    out=$target/previous
    rm -rf "$out"
    mkdir -p "$out/src" "$out/target/debug"
    git archive "$previous" | tar -x -m -C "$out/src"
    for d in deps build .fingerprint; do cp -al "$target/debug/$d" "$out/target/debug/"; done
    rm -rf "$out/target/debug/.fingerprint"/btp-* "$out/target/debug/build"/btp-* \
        "$out/target/debug/deps"/btp-* "$out/target/debug/deps"/libbtp_*
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS CARGO_INCREMENTAL=0 \
        cargo build --locked --quiet --manifest-path "$out/src/Cargo.toml" \
        --target-dir "$out/target" --bin btp
    cp "$out/target/debug/btp" "$out/btp"
    export BTP_PREVIOUS_BIN="$out/btp"
elif [ -n "${CI:-}" ]; then
    log "deploy/previous-version names $previous, which this clone does not have"
    exit 1
else
    log "the previous version $previous is not in this clone: the upgrade test is skipped"
fi

if cargo nextest --version >/dev/null 2>&1; then
    log "running tests (cargo nextest)"
    cargo nextest run --workspace --locked --no-fail-fast
else
    log "running tests (cargo test)"
    cargo test --workspace --locked --no-fail-fast
fi

if [ "$browser" -eq 1 ]; then
    log "browser test of the web console (headless chromium)"
    cargo build --locked --bin btp
    BTP="${CARGO_TARGET_DIR:-$PWD/target}/debug/btp" \
        BTP_ARTIFACTS="${CARGO_TARGET_DIR:-$PWD/target}/browser-artifacts" \
        node tests/browser/console.test.mjs
fi
