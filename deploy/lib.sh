# Shared helpers of the deploy scripts: install what is missing, quietly.
# shellcheck shell=bash

log() { printf '==> %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "apt-get is not available: install $* by hand"
        return 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ "$apt_updated" -eq 0 ]; then
        $sudo apt-get update -qq >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# nats-server is looked for on PATH and in /usr/sbin (where Debian puts it).
ensure_nats_server() {
    if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
        return 0
    fi
    log "installing nats-server"
    apt_install nats-server
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo not found: install a Rust toolchain (rustup or apt-get install cargo)"
        return 1
    fi
}
