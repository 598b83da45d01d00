#!/usr/bin/env bash
# BeyondTP quickstart: installs what is missing (nats-server), builds release, generates a small
# demo tree, migrates it with a standalone cluster (nats-server + server + client), verifies the
# copy and prints the report.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

ensure_rust
ensure_nats_server

log "building btp (release)"
cargo build --release --locked --bin btp
BTP="${CARGO_TARGET_DIR:-$PWD/target}/release/btp"

DEMO="${BTP_DEMO_DIR:-$(mktemp -d /tmp/btp-demo.XXXXXX)}"
SRC="$DEMO/source"
DST="$DEMO/destination"
DATA="$DEMO/data"
mkdir -p "$SRC" "$DATA"
log "generating a demo tree in $SRC"
for d in 1 2 3 4 5; do
    mkdir -p "$SRC/photos/200$d/summer trip" "$SRC/docs/level1/level2/level3"
    for f in $(seq 1 40); do
        head -c $((f * 523)) /dev/urandom > "$SRC/photos/200$d/summer trip/img #$f.jpg"
    done
done
for f in $(seq 1 30); do echo "note $f" > "$SRC/docs/level1/level2/level3/note-$f.txt"; done
: > "$SRC/docs/empty file"
head -c $((16 * 1024 * 1024)) /dev/urandom > "$SRC/backup.tar"

log "starting a standalone cluster (data in $DATA)"
"$BTP" standalone --data-dir "$DATA" --workers 4 > "$DEMO/standalone.out" 2> "$DEMO/standalone.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 100); do
    URL=$(sed -n 's/^NATS URL: //p' "$DEMO/standalone.out")
    [ -n "$URL" ] && break
    kill -0 $PID 2>/dev/null || { cat "$DEMO/standalone.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$URL" ] || { log "standalone did not start"; cat "$DEMO/standalone.log" >&2; exit 1; }
export BTP_NATS_URL="$URL"
sed -n 's/^Console: /web console (while the demo runs): /p' "$DEMO/standalone.out" >&2

log "migrating $SRC -> $DST"
ID=$("$BTP" task create --src "$SRC" --dst "$DST" --start --output json | sed -n 's/^  "id": "\(.*\)",$/\1/p')
"$BTP" task watch "$ID"
"$BTP" client list

log "verifying the destination byte for byte"
diff -r "$SRC" "$DST"
echo "OK: destination is identical to the source ($(find "$SRC" -type f | wc -l) files)"

kill -TERM $PID
wait $PID
trap - EXIT
log "standalone stopped cleanly; demo files are in $DEMO"
