#!/usr/bin/env bash
# BeyondTP against rclone and cp on the same data, in the same run: times (median of RUNS),
# MiB/s, files/s, ratios, and peak RSS of every process. Writes BENCHMARKS.md.
#
# Parameters (environment):
#   BENCH_DIR     where data sets live (default /dev/shm/btp-bench: tmpfs, so runs measure CPU
#                 cost and repeat within a few percent; a disk directory measures the disk)
#   SMALL_FILES   files of data set (a) (default 20000), SMALL_SIZE bytes each (default 4096)
#   BIG_FILES     files of data set (b) (default 8), BIG_MIB MiB each (default 256)
#   RUNS          runs per tool and data set (default 3); WORKERS concurrency (default 8)
#   BTP_BIN       a btp binary to run instead of building a release one (BUILD=debug to say so)
#   S3_SMALL_FILES, S3_BIG_FILES  data sets (d) and (e), fs -> S3 on a local moto server
#                 (defaults 2000 and 2; S3_SMALL_FILES=0 skips both)
#   SCALE_FILES   when set (the figure to run is 1000000; not in CI): only the scale run, which
#                 copies that many empty files on tmpfs with one task through the two-client
#                 cluster (server with a --secret-key-file, as in production), then times
#                 `task get`, `task report`, the per-file CSV (`task files -o csv` and the HTTP
#                 export), prints peak RSS (VmHWM) of the server and the clients and the store's
#                 size per file, and replaces the "Scale" section of BENCHMARKS.md.
#   LIMIT_MIB     speed limit of the limit-accuracy run in MiB/s (default 40; 0 skips it)
#   SSC_FILES     S3 -> S3 on one moto server, server-side copy against client-side copy: this
#                 many files of SSC_MIB MiB (defaults 4 and 64) plus SSC_SMALL files of 4 KiB
#                 (default 200); SSC_FILES=0 skips it. SSC_ONLY=1 runs only this and replaces its
#                 section of BENCHMARKS.md.
#   HA_SMALL, HA_BIG  the replicated-cluster comparison: HA_SMALL files of 4 KiB (default 5000)
#                 and HA_BIG files of 256 MiB (default 2), fs -> fs through one nats-server
#                 (--replicas 1) and through a 3-node JetStream cluster (--replicas 3);
#                 HA_SMALL=0 skips it. HA_ONLY=1 runs only this and replaces its section.
#   MANIFEST_LINES  when set (the figure to run is 1000000): only the manifest run, which copies
#                 that many empty files named by a manifest on a local moto server
#                 (`--files-from s3://...`) through the two-client cluster, prints the server's and
#                 the clients' peak RSS and replaces the "Manifest" section of BENCHMARKS.md.
#   CHECK_FILES   when set (the figure to run is 100000): only the check run, which verifies a
#                 copy of that many 4 KiB files (fs -> fs on BENCH_DIR) with `--mode check`
#                 through the two-client cluster, by size and time and with `--compare checksum`,
#                 next to `rclone check --size-only` and `rclone check` (MD5s) on the same data,
#                 and replaces the "Check" section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

BENCH_DIR=${BENCH_DIR:-/dev/shm/btp-bench}
SMALL_FILES=${SMALL_FILES:-20000}
SMALL_SIZE=${SMALL_SIZE:-4096}
BIG_FILES=${BIG_FILES:-8}
BIG_MIB=${BIG_MIB:-256}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-8}
SCALE_FILES=${SCALE_FILES:-0}
S3_SMALL_FILES=${S3_SMALL_FILES:-2000}
S3_BIG_FILES=${S3_BIG_FILES:-2}
SSC_FILES=${SSC_FILES:-4}
SSC_MIB=${SSC_MIB:-64}
SSC_SMALL=${SSC_SMALL:-200}
SSC_ONLY=${SSC_ONLY:-0}
HA_SMALL=${HA_SMALL:-5000}
HA_BIG=${HA_BIG:-2}
HA_ONLY=${HA_ONLY:-0}
MANIFEST_LINES=${MANIFEST_LINES:-0}
CHECK_FILES=${CHECK_FILES:-0}
OUT=${BENCH_OUT:-BENCHMARKS.md}

ensure_rust
ensure_nats_server
[ "$MANIFEST_LINES" -gt 0 ] || [ "$SCALE_FILES" -gt 0 ] || command -v rclone >/dev/null 2>&1 || { log "installing rclone"; apt_install rclone; }
[ -x /usr/bin/time ] || { log "installing time"; apt_install time; }
if [ "$CHECK_FILES" -eq 0 ]; then
    [ "$S3_SMALL_FILES" -eq 0 ] && [ "$SSC_FILES" -eq 0 ] && [ "$MANIFEST_LINES" -eq 0 ] || ensure_moto
fi

if [ -n "${BTP_BIN:-}" ]; then
    BTP=$BTP_BIN # a binary already built (BUILD says which profile, for the notes)
else
    log "building btp (release)"
    cargo build --release --locked --bin btp
    BTP="${CARGO_TARGET_DIR:-$PWD/target}/release/btp"
fi
BUILD=${BUILD:-release}
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
RESULTS="$BENCH_DIR/results.tsv"
: > "$RESULTS"

gen_small() { # dir count size
    local dir=$1 count=$2 size=$3
    mkdir -p "$dir"
    python3 - "$dir" "$count" "$size" <<'PY'
import os, sys
root, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
block = os.urandom(size)
for i in range(count):
    d = os.path.join(root, f"d{i % 20:02}", f"s{(i // 20) % 10}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07}.bin"), "wb") as f:
        f.write(block[i % 97:] + block[:i % 97])
PY
}

gen_big() { # dir count mib
    mkdir -p "$1"
    for i in $(seq 1 "$2"); do head -c $(( $3 * 1024 * 1024 )) /dev/urandom > "$1/big-$i.bin"; done
}

if [ "$SSC_ONLY" != 1 ] && [ "$HA_ONLY" != 1 ] && [ "$MANIFEST_LINES" -eq 0 ] && [ "$CHECK_FILES" -eq 0 ] && [ "$SCALE_FILES" -eq 0 ]; then
log "generating data sets in $BENCH_DIR"
gen_small "$BENCH_DIR/small" "$SMALL_FILES" "$SMALL_SIZE"
gen_big "$BENCH_DIR/big" "$BIG_FILES" "$BIG_MIB"
gen_small "$BENCH_DIR/mix/small" $(( SMALL_FILES / 2 )) "$SMALL_SIZE"
gen_big "$BENCH_DIR/mix/big" $(( BIG_FILES / 2 > 0 ? BIG_FILES / 2 : 1 )) "$BIG_MIB"
if [ "$S3_SMALL_FILES" -gt 0 ]; then
    gen_small "$BENCH_DIR/s3small" "$S3_SMALL_FILES" "$SMALL_SIZE"
    mkdir -p "$BENCH_DIR/s3big"
    for i in $(seq 1 "$S3_BIG_FILES"); do
        [ -f "$BENCH_DIR/big/big-$i.bin" ] && ln "$BENCH_DIR/big/big-$i.bin" "$BENCH_DIR/s3big/"
    done
fi
fi

now() { date +%s.%N; }

# Runs a command under GNU time; prints "seconds peak_rss_kib".
timed() {
    local t0 t1 rss
    t0=$(now)
    /usr/bin/time -f "%M" -o "$BENCH_DIR/time.out" "$@" > "$BENCH_DIR/cmd.out" 2> "$BENCH_DIR/cmd.err" || {
        cat "$BENCH_DIR/cmd.err" >&2; return 1; }
    t1=$(now)
    rss=$(tail -n 1 "$BENCH_DIR/time.out")
    echo "$(echo "$t1 - $t0" | bc -l) $rss"
}

vmhwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A cluster: nats-server (NODES=3: a JetStream cluster of three, each with its own store and
# route port), server (SERVER_ARGS added to `server run`), two client processes of WORKERS/2
# workers each.
cluster_start() {
    local dir=$BENCH_DIR/cluster nodes=${NODES:-1} i urls="" routes=""
    rm -rf "$dir"; mkdir -p "$dir"
    local ports=() route_ports=()
    for i in $(seq 1 "$nodes"); do ports+=("$(free_port)"); route_ports+=("$(free_port)"); done
    for i in $(seq 0 $(( nodes - 1 ))); do
        urls+="${urls:+,}nats://127.0.0.1:${ports[$i]}"
        routes+="${routes:+,}nats://127.0.0.1:${route_ports[$i]}"
    done
    NATS_PIDS=()
    for i in $(seq 0 $(( nodes - 1 ))); do
        local cluster_flags=()
        [ "$nodes" -gt 1 ] && cluster_flags=(-n "node-$i" --cluster_name btp-bench
            --cluster "nats://127.0.0.1:${route_ports[$i]}" --routes "$routes")
        "$NATS" -a 127.0.0.1 -p "${ports[$i]}" -js -sd "$dir/nats-$i" "${cluster_flags[@]}" \
            > "$dir/nats-$i.log" 2>&1 &
        NATS_PIDS+=($!)
    done
    export BTP_NATS_URL=$urls
    for i in $(seq 0 $(( nodes - 1 ))); do
        for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/${ports[$i]}") 2>/dev/null && break; sleep 0.05; done
    done
    # shellcheck disable=SC2086
    "$BTP" server run --data-dir "$dir/server" ${SERVER_ARGS:-} > "$dir/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 600); do "$BTP" task list > /dev/null 2>&1 && break; sleep 0.1; done
    local half=$(( WORKERS / 2 > 0 ? WORKERS / 2 : 1 ))
    "$BTP" client run --id bench-1 --workers "$half" > "$dir/c1.log" 2>&1 &
    C1_PID=$!
    "$BTP" client run --id bench-2 --workers "$half" > "$dir/c2.log" 2>&1 &
    C2_PID=$!
    for _ in $(seq 1 100); do
        [ "$("$BTP" client list -o json | grep -c '"online": true')" -ge 2 ] && break
        sleep 0.1
    done
}

cluster_stop() {
    kill -TERM "$C1_PID" "$C2_PID" "$SERVER_PID" 2>/dev/null || true
    wait "$C1_PID" "$C2_PID" "$SERVER_PID" 2>/dev/null || true
    kill -TERM "${NATS_PIDS[@]}" 2>/dev/null || true
    wait "${NATS_PIDS[@]}" 2>/dev/null || true
}

# One cluster run: prints "seconds server_rss client_rss" (duration from the task's report).
# Arguments after SRC and DST go to `task create`.
cluster_run() {
    local src=$1 dst=$2 id state
    shift 2
    id=$("$BTP" task create --src "$src" --dst "$dst" --start -o json "$@" | sed -n 's/^  "id": "\(.*\)",$/\1/p')
    echo "$id" > "$BENCH_DIR/last-task"
    while :; do
        state=$("$BTP" task get "$id" -o json | sed -n 's/^  "state": "\(.*\)",$/\1/p')
        case $state in completed) break ;; failed|cancelled) echo "task $id $state" >&2; return 1 ;; esac
        sleep 0.05
    done
    local ms
    ms=$("$BTP" task report "$id" -o json | sed -n 's/^  "duration_ms": \([0-9]*\),$/\1/p')
    echo "$(echo "$ms / 1000" | bc -l) $(vmhwm "$SERVER_PID") $(( $(vmhwm "$C1_PID") > $(vmhwm "$C2_PID") ? $(vmhwm "$C1_PID") : $(vmhwm "$C2_PID") ))"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The S3 side: a moto server on a free port, a bucket, and rclone configured through its
# environment (remote `btps3:`).
s3_start() {
    S3_PORT=$(free_port)
    moto_server -H 127.0.0.1 -p "$S3_PORT" > "$BENCH_DIR/moto.log" 2>&1 &
    MOTO_PID=$!
    for _ in $(seq 1 200); do (echo > "/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break; sleep 0.05; done
    # rclone's S3 client refuses to start with a CA bundle in the environment; the server is plain http.
    unset AWS_CA_BUNDLE
    export RCLONE_CONFIG_BTPS3_TYPE=s3 RCLONE_CONFIG_BTPS3_PROVIDER=Other RCLONE_CONFIG_BTPS3_REGION=us-east-1 \
        RCLONE_CONFIG_BTPS3_ENDPOINT="http://127.0.0.1:$S3_PORT" RCLONE_CONFIG_BTPS3_ACCESS_KEY_ID=bench \
        RCLONE_CONFIG_BTPS3_SECRET_ACCESS_KEY=bench-secret
    S3_OPTS=(--dst-opt "endpoint=http://127.0.0.1:$S3_PORT" --dst-opt region=us-east-1
        --dst-opt access_key_id=bench --dst-opt secret_access_key=bench-secret)
    rclone mkdir btps3:bench 2> /dev/null
}

s3_stop() { kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; }

# S3 -> S3 on one moto server: the same objects copied by the service (CopyObject,
# UploadPartCopy) and through the clients (--server-side-copy off), from the same source
# prefix. Sets SSC to the section's table rows.
ssc_bench() {
    local src=$BENCH_DIR/ssc mode line id t sec through bytes
    gen_small "$src/small" "$SSC_SMALL" 4096
    gen_big "$src/big" "$SSC_FILES" "$SSC_MIB"
    s3_start
    local opts=("${S3_OPTS[@]}" --src-opt "endpoint=http://127.0.0.1:$S3_PORT" --src-opt region=us-east-1
        --src-opt access_key_id=bench --src-opt secret_access_key=bench-secret)
    cluster_start
    cluster_run "$src" s3://bench/ssc-src "${S3_OPTS[@]}" > /dev/null
    SSC=""
    for mode in auto off; do
        line=$(cluster_run s3://bench/ssc-src "s3://bench/ssc-$mode" "${opts[@]}" --server-side-copy "$mode")
        id=$(cat "$BENCH_DIR/last-task")
        t=$("$BTP" task get "$id" -o json)
        through=$(echo "$t" | sed -n 's/^  "bytes_through_clients": \([0-9]*\),$/\1/p')
        bytes=$(echo "$t" | sed -n 's/^  "bytes_copied": \([0-9]*\),$/\1/p')
        sec=${line%% *}
        SSC+="| $(( SSC_FILES + SSC_SMALL )) files, $(( bytes / 1048576 )) MiB | --server-side-copy $mode | $(printf '%.2f' "$sec") s | $(printf '%.1f' "$(echo "$bytes / 1048576 / $sec" | bc -l)") MiB/s | $(( through / 1048576 )) MiB |"$'\n'
        log "server-side copy $mode: $sec s, $through bytes through clients"
    done
    cluster_stop
    s3_stop
    rm -rf "$src"
}

ssc_section() { # the markdown section of the server-side copy rows
    printf '%s\n' "## S3 -> S3 server-side copy" "" \
        "Between two prefixes of one moto server (2 clients of $(( WORKERS / 2 > 0 ? WORKERS / 2 : 1 )) workers, default part size and threshold: the large files go in 32 MiB parts; $BUILD build of btp). \`auto\` has moto copy the objects (CopyObject, UploadPartCopy); \`off\` streams them through the clients. Bytes through clients: the task's \`bytes_through_clients\`. moto copies in its own (Python) process, so the time saved here is the clients' part of the work only; the bytes through clients are what a copy between buckets of a remote service no longer sends over the clients' network." "" \
        "| data set | mode | time | rate | bytes through clients |" "| --- | --- | --- | --- | --- |"
    printf '%s' "$SSC"
}

# Replaces the section of OUT headed by $1 (up to the next "## ") with the file $2, or appends it.
replace_section() {
    python3 - "$OUT" "$1" "$2" <<'PY'
import sys
out, head, new = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
text = open(out).read()
if head in text:
    start = text.index(head)
    nxt = text.find("\n## ", start + len(head))
    text = text[:start] + new + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
else:
    text = text.rstrip("\n") + "\n\n" + new
open(out, "w").write(text)
print(new)
PY
}

# The same copies through one nats-server (streams with 1 replica) and through a 3-node
# JetStream cluster (streams and consumers with 3 replicas): what replication costs. Sets HA to
# the section's table rows.
ha_bench() {
    local src=$BENCH_DIR/ha set nodes line runs_s r
    gen_small "$src/small" "$HA_SMALL" 4096
    gen_big "$src/big" "$HA_BIG" 256
    HA=""
    for set in small big; do
        local files bytes
        files=$(find "$src/$set" -type f | wc -l)
        bytes=$(du -sb --apparent-size "$src/$set" | cut -f1)
        local one=""
        for nodes in 1 3; do
            NODES=$nodes SERVER_ARGS="--replicas $nodes" cluster_start
            runs_s=""
            for r in $(seq 1 "$RUNS"); do
                rm -rf "$BENCH_DIR/ha-dst"
                line=$(cluster_run "$src/$set" "$BENCH_DIR/ha-dst")
                runs_s+="${line%% *}"$'\n'
            done
            NODES=$nodes cluster_stop
            local sec
            sec=$(printf '%s' "$runs_s" | median)
            [ "$nodes" = 1 ] && one=$sec
            local topo="1 nats-server, --replicas 1"
            [ "$nodes" = 3 ] && topo="3-node JetStream cluster, --replicas 3"
            HA+="| $files files, $(( bytes / 1048576 )) MiB | $topo | $(printf '%.2f' "$sec") s | $(printf '%.0f' "$(echo "$files / $sec" | bc -l)") files/s | $(printf '%.1f' "$(echo "$bytes / 1048576 / $sec" | bc -l)") MiB/s | $(printf '%.2f' "$(echo "$one / $sec" | bc -l)")x |"$'\n'
            log "ha: $set on $nodes node(s): $sec s"
        done
    done
    rm -rf "$src" "$BENCH_DIR/ha-dst"
}

ha_section() {
    printf '%s\n' "## Replicated cluster throughput" "" \
        "fs -> fs on tmpfs, 2 clients of $(( WORKERS / 2 > 0 ? WORKERS / 2 : 1 )) workers, median of $RUNS runs, $BUILD build of btp, all processes on one machine of $(nproc) cores (the three nats-servers share its cores with the server and the clients, so this is the CPU cost of replication, not a network's latency). Time from the task's report. The last column is the speed against the single node." "" \
        "| data set | NATS | time | files/s | MiB/s | vs 1 node |" "| --- | --- | --- | --- | --- | --- |"
    printf '%s' "$HA"
}

if [ "$SSC_ONLY" = 1 ]; then
    rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
    ssc_bench
    ssc_section > "$BENCH_DIR/ssc.md"
    replace_section "## S3 -> S3 server-side copy" "$BENCH_DIR/ssc.md"
    log "wrote the server-side copy section of $OUT"
    exit 0
fi
if [ "$HA_ONLY" = 1 ]; then
    ha_bench
    ha_section > "$BENCH_DIR/ha.md"
    replace_section "## Replicated cluster throughput" "$BENCH_DIR/ha.md"
    log "wrote the replicated cluster section of $OUT"
    exit 0
fi


# A check of a copy of CHECK_FILES files of 4 KiB (fs -> fs): btp's check tasks through the
# two-client cluster against rclone check on the same two trees, by metadata and by MD5.
if [ "$CHECK_FILES" -gt 0 ]; then
    rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
    log "check run: $CHECK_FILES files"
    gen_small "$BENCH_DIR/csrc" "$CHECK_FILES" 4096
    cp -a "$BENCH_DIR/csrc" "$BENCH_DIR/cdst"
    bytes=$(du -sb --apparent-size "$BENCH_DIR/csrc" | cut -f1)
    CHECK=""
    check_row() { # what tool seconds rss_kib [hashed_bytes]
        local rate hashed="-"
        rate=$(printf '%.0f' "$(echo "$CHECK_FILES / $3" | bc -l)")
        [ -n "${5:-}" ] && hashed="$(printf '%.1f' "$(echo "$5 / 1048576 / $3" | bc -l)") MiB/s"
        CHECK+="| $1 | $2 | $(printf '%.2f' "$3") s | $rate files/s | $hashed | $(( $4 / 1024 )) MiB |"$'\n'
        log "check: $1, $2: $3 s"
    }
    line=$(timed rclone check --size-only --checkers "$WORKERS" "$BENCH_DIR/csrc" "$BENCH_DIR/cdst")
    check_row "size" "rclone check --size-only" $line
    line=$(timed rclone check --checkers "$WORKERS" "$BENCH_DIR/csrc" "$BENCH_DIR/cdst")
    check_row "content (MD5)" "rclone check" $line "$(( bytes * 2 ))"
    cluster_start
    for compare in size-mtime checksum; do
        line=$(cluster_run "$BENCH_DIR/csrc" "$BENCH_DIR/cdst" --mode check --compare "$compare")
        id=$(cat "$BENCH_DIR/last-task")
        "$BTP" task report "$id" -o json > "$BENCH_DIR/check-report.json"
        read -r same hashed shares < <(python3 - "$BENCH_DIR/check-report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["task"]["check"]
print(c["same"], c["bytes_hashed"], "/".join(str(s["jobs"]) for s in r["clients"]))
PY
)
        [ "$same" = "$CHECK_FILES" ] || { echo "check $id: $same of $CHECK_FILES paths the same" >&2; exit 1; }
        set -- $line
        what="size and time"; [ "$compare" = checksum ] && what="content (MD5)"
        check_row "$what" "btp check, 2 clients (jobs $shares)" "$1" "$(( $2 > $3 ? $2 : $3 ))" \
            "$([ "$compare" = checksum ] && echo "$hashed")"
    done
    cluster_stop
    printf '%s\n' "## Check" "" \
        "\`CHECK_FILES=$CHECK_FILES deploy/bench.sh\`: a copy of $CHECK_FILES files of 4 KiB ($(( bytes / 1048576 )) MiB, 200 directories; \`cp -a\`, so times match) checked on tmpfs, every path the same; $(nproc) cores, $BUILD build of btp. btp: a check task through the two-client cluster (2 clients of $(( WORKERS / 2 > 0 ? WORKERS / 2 : 1 )) workers; the jobs each client ran in brackets), time from its report, peak RSS of the largest btp process (server or client); rclone: \`--checkers $WORKERS\`, wall time and peak RSS. Hashed: bytes read and hashed per second, both sides." "" \
        "| compared | tool | time | rate | hashed | peak RSS |" "| --- | --- | --- | --- | --- | --- |" \
        > "$BENCH_DIR/check.md"
    printf '%s' "$CHECK" >> "$BENCH_DIR/check.md"
    replace_section "## Check" "$BENCH_DIR/check.md"
    rm -rf "$BENCH_DIR/csrc" "$BENCH_DIR/cdst"
    exit 0
fi

# A manifest of MANIFEST_LINES lines on moto names as many empty files of a file-system source:
# the task plans from the manifest (no listing of the source) and copies exactly those files.
if [ "$MANIFEST_LINES" -gt 0 ]; then
    rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
    log "manifest run: $MANIFEST_LINES files named by a manifest on S3"
    gen_small "$BENCH_DIR/msrc" "$MANIFEST_LINES" 0
    # Every file the source has, in a shuffled order (a manifest is not sorted by directory).
    (cd "$BENCH_DIR/msrc" && find . -type f | sed 's|^\./||' | shuf --random-source=<(yes)) > "$BENCH_DIR/manifest.txt"
    mbytes=$(stat -c %s "$BENCH_DIR/manifest.txt")
    S3_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    moto_server -H 127.0.0.1 -p "$S3_PORT" > "$BENCH_DIR/moto.log" 2>&1 &
    MOTO_PID=$!
    trap s3_stop EXIT
    for _ in $(seq 1 200); do (echo > "/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break; sleep 0.05; done
    # The bucket and the manifest, by plain PUTs (moto takes unsigned requests).
    python3 - "$S3_PORT" "$BENCH_DIR/manifest.txt" <<'PY'
import sys, urllib.request
port, path = sys.argv[1], sys.argv[2]
for url, body in [(f"http://127.0.0.1:{port}/lists", b""),
                  (f"http://127.0.0.1:{port}/lists/manifest.txt", open(path, "rb").read())]:
    req = urllib.request.Request(url, data=body, method="PUT",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req).read()
PY
    cluster_start
    mopts=(--files-from s3://lists/manifest.txt --files-from-opt "endpoint=http://127.0.0.1:$S3_PORT"
        --files-from-opt region=us-east-1 --files-from-opt access_key_id=bench
        --files-from-opt secret_access_key=bench-secret)
    line=$(cluster_run "$BENCH_DIR/msrc" "$BENCH_DIR/mdst" "${mopts[@]}")
    id=$(cat "$BENCH_DIR/last-task")
    copied=$("$BTP" task get "$id" -o json | sed -n 's/^  "files_copied": \([0-9]*\),$/\1/p')
    cluster_stop
    s3_stop
    trap - EXIT
    set -- $line
    [ "$copied" = "$MANIFEST_LINES" ] || { echo "copied $copied of $MANIFEST_LINES files" >&2; exit 1; }
    printf '%s\n' "## Manifest" "" \
        "\`MANIFEST_LINES=$MANIFEST_LINES deploy/bench.sh\`: a manifest of $MANIFEST_LINES lines ($(( mbytes / 1048576 )) MiB, shuffled) on a local moto server, \`--files-from s3://lists/manifest.txt\`, naming as many empty files of a file-system source on tmpfs (2 clients of $(( WORKERS / 2 > 0 ? WORKERS / 2 : 1 )) workers, $BUILD build of btp). One List job reads the manifest as a stream and looks up its entries page by page; peak RSS of the server and of the larger client over the whole task." "" \
        "| manifest | files copied | time | rate | server peak RSS | client peak RSS |" "| --- | --- | --- | --- | --- | --- |" \
        "| $MANIFEST_LINES lines on S3 | $copied | $(printf '%.1f' "$1") s | $(printf '%.0f' "$(echo "$MANIFEST_LINES / $1" | bc -l)") files/s | $(( $2 / 1024 )) MiB | $(( $3 / 1024 )) MiB |" \
        > "$BENCH_DIR/manifest.md"
    log "manifest: $(tail -n 1 "$BENCH_DIR/manifest.md")"
    replace_section "## Manifest" "$BENCH_DIR/manifest.md"
    rm -rf "$BENCH_DIR/msrc" "$BENCH_DIR/mdst"
    exit 0
fi

# SCALE_FILES empty files copied by one task: memory, store size and report latency at scale.
if [ "$SCALE_FILES" -gt 0 ]; then
    rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
    log "scale run: $SCALE_FILES empty files"
    gen_small "$BENCH_DIR/scale" "$SCALE_FILES" 0
    HTTP_PORT=$(free_port)
    SERVER_ARGS="--http-addr 127.0.0.1:$HTTP_PORT --secret-key-file $BENCH_DIR/secret.key" cluster_start
    set -- $(cluster_run "$BENCH_DIR/scale" "$BENCH_DIR/scale-dst")
    secs=$1 rss_client=$3
    id=$(cat "$BENCH_DIR/last-task")
    copied=$("$BTP" task get "$id" -o json | sed -n 's/^  "files_copied": \([0-9]*\),$/\1/p')
    [ "$copied" = "$SCALE_FILES" ] || { echo "copied $copied of $SCALE_FILES files" >&2; exit 1; }
    ms() { echo "$1" | awk '{printf "%.0f", $1 * 1000}'; }
    get=$(timed "$BTP" task get "$id"); get=$(ms "$get")
    report=$(timed "$BTP" task report "$id"); report=$(ms "$report")
    # The per-file report whole, page after page: from the CLI, and from the HTTP export.
    t0=$(now)
    rows=$("$BTP" task files "$id" -o csv | wc -l)
    t1=$(now)
    [ "$rows" = $(( SCALE_FILES + 1 )) ] || { echo "task files gave $rows lines" >&2; exit 1; }
    files_s=$(echo "$t1 - $t0" | bc -l)
    t0=$(now)
    rows=$(curl -sS -X POST -H 'content-type: application/json' --data "{\"id\": \"$id\"}" \
        "http://127.0.0.1:$HTTP_PORT/api/v1/task.report.csv" | wc -l)
    t1=$(now)
    [ "$rows" = $(( SCALE_FILES + 1 )) ] || { echo "the CSV export gave $rows lines" >&2; exit 1; }
    csv_s=$(echo "$t1 - $t0" | bc -l)
    rss_server=$(vmhwm "$SERVER_PID")
    cluster_stop
    # The store once its WAL is checkpointed: the file, and the pages in use (pages freed while
    # the task ran, as done jobs shrank, are reused by later tasks).
    read -r db used < <(python3 - "$BENCH_DIR/cluster/server/btp.db" <<'PY'
import os, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
page = c.execute("PRAGMA page_size").fetchone()[0]
used = c.execute("PRAGMA page_count").fetchone()[0] - c.execute("PRAGMA freelist_count").fetchone()[0]
c.close()
print(os.path.getsize(sys.argv[1]), used * page)
PY
)
    {
        echo "## Scale"
        echo
        echo "\`SCALE_FILES=$SCALE_FILES deploy/bench.sh\`: $SCALE_FILES empty files on tmpfs copied by one task through the two-client cluster ($(( WORKERS / 2 > 0 ? WORKERS / 2 : 1 )) workers each, server with \`--secret-key-file\`, SQLite store, $BUILD build of btp). Peak RSS (VmHWM) of the server over the whole run (the CSV exports included) and of the larger client; \`task get\` and \`task report\` once the task is done (CLI start included); the whole per-file report streamed as CSV by \`btp task files -o csv\` and by the HTTP export (\`POST /api/v1/task.report.csv\`), each checked to hold one row a file; the store (btp.db, its WAL checkpointed): the file, and the bytes of its pages in use per file (pages freed as done jobs shrink are reused by later tasks)."
        echo
        echo "| files | copy time | rate | server peak RSS | client peak RSS | get / report | files CSV / HTTP CSV | store file | store in use per file |"
        echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        echo "| $SCALE_FILES | $(printf '%.1f' "$secs") s | $(printf '%.0f' "$(echo "$SCALE_FILES / $secs" | bc -l)") files/s | $(( rss_server / 1024 )) MiB | $(( rss_client / 1024 )) MiB | $get ms / $report ms | $(printf '%.1f' "$files_s") s / $(printf '%.1f' "$csv_s") s | $(( db / 1048576 )) MiB | $(( used / SCALE_FILES )) bytes |"
    } > "$BENCH_DIR/scale.md"
    log "scale: $(tail -n 1 "$BENCH_DIR/scale.md")"
    replace_section "## Scale" "$BENCH_DIR/scale.md"
    rm -rf "$BENCH_DIR/scale" "$BENCH_DIR/scale-dst"
    exit 0
fi

bench_set() { # name kind (fs: to a directory, with cp; s3: to the moto bucket)
    local name=$1 kind=$2 src=$BENCH_DIR/$1 dst files bytes tools=(cp rclone btp-copy btp-cluster)
    files=$(find "$src" -type f | wc -l)
    bytes=$(du -sb --apparent-size "$src" | cut -f1)
    [ "$kind" = s3 ] && tools=(rclone btp-copy btp-cluster)
    for tool in "${tools[@]}"; do
        local times=() rss=0 rss2=0 line
        [ "$tool" = btp-cluster ] && cluster_start
        for run in $(seq 1 "$RUNS"); do
            if [ "$kind" = s3 ]; then
                dst="bench/$name-$tool-$run"
                case $tool in
                    rclone) line=$(timed rclone copy --transfers "$WORKERS" --checkers "$WORKERS" "$src" "btps3:$dst") ;;
                    btp-copy) line=$(timed "$BTP" copy "$src" "s3://$dst" "${S3_OPTS[@]}" --workers "$WORKERS") ;;
                    btp-cluster) line=$(cluster_run "$src" "s3://$dst" "${S3_OPTS[@]}") ;;
                esac
                # Every object there with the source's size (and MD5 where the ETag is one).
                rclone check --one-way -q "$src" "btps3:$dst" 2> "$BENCH_DIR/check.err" \
                    || { cat "$BENCH_DIR/check.err" >&2; log "$tool: bucket differs from $src"; exit 1; }
                rclone purge "btps3:$dst" 2> /dev/null
            else
                dst=$BENCH_DIR/dst
                rm -rf "$dst"; sync
                case $tool in
                    cp) line=$(timed cp -r "$src" "$dst") ;;
                    rclone) line=$(timed rclone copy --transfers "$WORKERS" --checkers "$WORKERS" "$src" "$dst") ;;
                    btp-copy) line=$(timed "$BTP" copy "$src" "$dst" --workers "$WORKERS") ;;
                    btp-cluster) line=$(cluster_run "$src" "$dst") ;;
                esac
                diff -rq "$src" "$dst" > /dev/null || { log "$tool: destination differs from $src"; exit 1; }
            fi
            set -- $line
            times+=("$1")
            [ "${2:-0}" -gt "$rss" ] && rss=$2
            [ "${3:-0}" -gt "$rss2" ] && rss2=$3
            log "$name $tool run $run: $1 s"
        done
        [ "$tool" = btp-cluster ] && cluster_stop
        local med
        med=$(printf '%s\n' "${times[@]}" | median)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$tool" "$med" "$files" "$bytes" "$rss" "$rss2" >> "$RESULTS"
    done
    rm -rf "$BENCH_DIR/dst"
}

export RCLONE_CONFIG=/dev/null
for set in small big mix; do bench_set "$set" fs; done
if [ "$S3_SMALL_FILES" -gt 0 ]; then
    s3_start
    trap s3_stop EXIT
    for set in s3small s3big; do bench_set "$set" s3; done
    s3_stop
fi

# Speed-limit accuracy: two large files through the two-client cluster at LIMIT_MIB MiB/s.
LIMIT_MIB=${LIMIT_MIB:-40}
LIMIT=""
if [ "$LIMIT_MIB" -gt 0 ]; then
    mkdir -p "$BENCH_DIR/limited"
    cp "$BENCH_DIR"/big/big-1.bin "$BENCH_DIR"/big/big-2.bin "$BENCH_DIR/limited/" 2>/dev/null \
        || cp "$BENCH_DIR"/big/big-1.bin "$BENCH_DIR/limited/"
    cluster_start
    lbytes=$(du -sb --apparent-size "$BENCH_DIR/limited" | cut -f1)
    id=$("$BTP" task create --src "$BENCH_DIR/limited" --dst "$BENCH_DIR/limited-dst" --start \
        --speed-limit "${LIMIT_MIB}MiB/s" -o json | sed -n 's/^  "id": "\(.*\)",$/\1/p')
    while [ "$("$BTP" task get "$id" -o json | sed -n 's/^  "state": "\(.*\)",$/\1/p')" = running ]; do sleep 0.2; done
    ms=$("$BTP" task report "$id" -o json | sed -n 's/^  "duration_ms": \([0-9]*\),$/\1/p')
    cluster_stop
    rate=$(echo "$lbytes / 1048576 / ($ms / 1000)" | bc -l)
    LIMIT="| $(( lbytes / 1048576 )) MiB at a limit of ${LIMIT_MIB} MiB/s, 2 clients | $(printf '%.1f' "$(echo "$ms / 1000" | bc -l)") s | $(printf '%.1f' "$rate") MiB/s | $(printf '%.3f' "$(echo "$rate / $LIMIT_MIB" | bc -l)") |"
    log "speed limit: $LIMIT"
    rm -rf "$BENCH_DIR/limited" "$BENCH_DIR/limited-dst"
fi

SSC=""
[ "$SSC_FILES" -eq 0 ] || ssc_bench
SSC_MD=""
[ -z "$SSC" ] || SSC_MD=$(ssc_section)
HA=""
[ "$HA_SMALL" -eq 0 ] || ha_bench
HA_MD=""
[ -z "$HA" ] || HA_MD=$(ha_section)

SCALE=""
python3 - "$RESULTS" "$OUT" "$BENCH_DIR" "$WORKERS" "$RUNS" "$SCALE" "$LIMIT" "$SSC_MD" "$HA_MD" <<'PY'
import sys, platform, subprocess, datetime, os
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
out, where, workers, runs, scale, limit = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
ssc, ha = sys.argv[8], sys.argv[9]
# Sections of the old file this run does not write (measured by tests or other runs) are kept.
old = open(out).read().split("\n## ")[1:] if os.path.exists(out) else []
by = {}
for name, tool, sec, files, size, rss, rss2 in rows:
    by.setdefault(name, {})[tool] = (float(sec), int(files), int(size), int(rss), int(rss2))
def ver(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
    except Exception:
        return "?"
lines = ["# Benchmarks", "",
         f"Measured by `deploy/bench.sh` on {datetime.date.today()} ({platform.machine()}, "
         f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores), data in `{where}`, "
         f"median of {runs} runs, concurrency {workers} (rclone `--transfers {workers} --checkers {workers}`; "
         f"the cluster runs 2 clients of {int(workers)//2 or 1} workers). {ver(['rclone', 'version'])}.", "",
         "`btp copy` includes starting and stopping its private cluster (nats-server, server, client); "
         "`btp cluster` is the time from task start to completion in the task's report, with the cluster already running. "
         "Peak RSS: of the process (for the cluster: server, and the larger client).", "",
         "| data set | tool | time | MiB/s | files/s | vs rclone | vs cp | peak RSS |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
for name, tools in by.items():
    cp, rc = tools.get("cp"), tools.get("rclone")
    for tool, (sec, files, size, rss, rss2) in tools.items():
        mibs = size / 1048576 / sec
        fps = files / sec
        vs_rc = f"{rc[0] / sec:.2f}x" if rc else "-"
        vs_cp = f"{cp[0] / sec:.2f}x" if cp else "-"
        mem = f"server {rss // 1024} MiB, client {rss2 // 1024} MiB" if tool == "btp-cluster" else f"{rss // 1024} MiB"
        label = {"small": f"(a) {files} small files", "big": f"(b) {files} large files", "mix": f"(c) mix, {files} files",
                 "s3small": f"(d) fs -> S3, {files} small files", "s3big": f"(e) fs -> S3, {files} large files"}[name]
        lines.append(f"| {label} | {tool} | {sec:.2f} s | {mibs:.1f} | {fps:.0f} | {vs_rc} | {vs_cp} | {mem} |")
lines += ["", "Ratios are speed ratios (time of the other tool / time of this one): above 1 is faster.", ""]
if "s3small" in by or "s3big" in by:
    lines += ["Data sets (d) and (e) are copied from the file system into a bucket of a local moto S3 server "
              "(`moto_server`, Python): that server does most of the work, so these rows compare how many "
              "requests and how much waiting each tool needs rather than raw bandwidth. Each copy is checked with "
              "`rclone check --one-way` (sizes, and MD5 where the ETag is one) and the prefix purged.", ""]
if limit:
    lines += ["## Speed limit", "", "Rate over the whole task (start to end, from the report), against the limit.", "",
              "| run | time | rate | rate / limit |", "| --- | --- | --- | --- |", limit, ""]
if scale:
    lines += ["## Scale", "", "Peak RSS of the server and of the larger client; the time of `btp task get` and "
              "`btp task report` (CLI start included) once the task is done, and the size of the server's data "
              "directory (SQLite store).", "",
              "| run | time | rate | server peak RSS | client peak RSS | get / report | store |",
              "| --- | --- | --- | --- | --- | --- | --- |", scale, ""]
if ssc:
    lines += [ssc, ""]
if ha:
    lines += [ha, ""]
written = {l.split("\n", 1)[0][3:] for l in lines if l.startswith("## ")}
for section in old:
    if section.split("\n", 1)[0] not in written:
        lines += ["## " + section.rstrip("\n"), ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
log "wrote $OUT"
