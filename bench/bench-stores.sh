#!/bin/bash
# Benchmark: the same backups into a local, a RADOS and an S3 (radosgw) repository, side by side,
# on the single-node Ceph of the tests (tests/integration/ceph-lib.sh: one OSD on memstore, in
# memory, radosgw on 127.0.0.1: the network and the disks of a real cluster are not measured,
# the client's cost per request and per byte is).
#
# Source: VM `bench` served by vmexportd with one sparse raw disk of SIZE (default 1 GiB) whose
# every 256 MiB stripe holds 96 MiB pseudo-random data, 64 MiB base64 text, 96 MiB hole; read
# with --transport local (the snapshot file on this host), so the store side is what differs.
# Timed for each store:
#     full backup (first, into an empty repository)
#     incremental backup after CHANGE_PCT % (default 1) of the disk changed in 1 MiB writes
#     restore of the incremental to a file (compared with the disk: must be equal)
#     peak RSS of each (Maximum resident set size, /usr/bin/time -v): target < 256 MiB
#     requests per GiB of disk: RADOS ops from the OSD's perf counters (osd.op), S3 requests
#       from radosgw's (rgw.req), over each command
# Ratios: throughput of RADOS and S3 over local (below 1: slower than a local directory).
# This is a benchmark, not a test: it fails only if a command fails or a restore differs.
#
#     bench/bench-stores.sh                    # as root (Ceph daemons)
#     SIZE=256M bench/bench-stores.sh          # quick
# Environment: SIZE (multiple of 256M), CHANGE_PCT (1), JOBS (--jobs, default 4), VMEXPORT,
# VMEXPORTD (default build/...), BENCH_TMPDIR (default /var/tmp).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD=${BUILD:-$here/../build}
export BUILD
source "$here/../tests/integration/lib.sh" >/dev/null
source "$here/../tests/integration/ceph-lib.sh"
source "$here/lib.sh"
die() { echo "bench-stores: $*" >&2; exit 1; }

SIZE=$(to_bytes "${SIZE:-1G}")
CHANGE_PCT=${CHANGE_PCT:-1}
JOBS=${JOBS:-4}
MIB=$((1 << 20))
STRIPE=$((256 * MIB))
[ $((SIZE % STRIPE)) = 0 ] || die "SIZE must be a multiple of 256M"
VMEXPORT=${VMEXPORT:-$BUILD/vmexport}
VMEXPORTD=${VMEXPORTD:-$BUILD/vmexportd}
TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/vmexport-bench-stores.XXXXXX")
at_exit "rm -rf '$TMP'"
at_exit 'kill $daemon_pid 2>/dev/null'

command -v ceph-osd >/dev/null || die "Ceph is not installed (scripts/install-deps.sh)"
ceph_start rgw >/dev/null || die "ceph does not start"
POOL=$VMEXPORT_TEST_POOL
BUCKET=vmexport-bench-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')

# ---- the disk ----
mkdir -p "$TMP/vms/bench"
DISK=$TMP/vms/bench/disk.img
truncate -s "$SIZE" "$DISK"
for ((s = 0; s < SIZE / STRIPE; s++)); do
    dd if=/dev/urandom of="$DISK" bs=1M count=96 seek=$((s * 256)) conv=notrunc status=none
    head -c $((48 * MIB)) /dev/urandom | base64 -w 76 | head -c $((64 * MIB)) |
        dd of="$DISK" bs=1M seek=$((s * 256 + 96)) conv=notrunc status=none
done
sync
bench_start_daemon "$TMP/d" "$TMP/vms"

# perf counters: total RADOS ops of the OSD, S3 requests of radosgw.
osd_ops() { ceph --admin-daemon "$CEPH_DIR/run/osd.0.asok" perf dump 2>/dev/null | jq '.osd.op'; }
rgw_reqs() {
    ceph --admin-daemon "$CEPH_DIR/run/client.rgw.a.asok" perf dump 2>/dev/null | jq '.rgw.req'
}
counter() {
    case $1 in
        rados) osd_ops ;;
        s3) rgw_reqs ;;
        *) echo 0 ;;
    esac
}

# timed KIND LABEL CMD...: run CMD under /usr/bin/time -v; sets SECS, RSS_MIB, REQS.
timed() {
    local kind=$1 label=$2 before after
    shift 2
    before=$(counter "$kind")
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$TMP/time.txt" "$@" >"$TMP/out.txt" 2>"$TMP/err.txt" ||
        die "$label: $(tail -2 "$TMP/err.txt")"
    t1=$(date +%s.%N)
    after=$(counter "$kind")
    SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    RSS_MIB=$(awk '/Maximum resident/ { printf "%d", $NF / 1024 }' "$TMP/time.txt")
    REQS=$((after - before))
}

mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? b / s / 1e6 : 0) }'; }
per_gib() { awk -v r="$1" -v b="$2" 'BEGIN { printf "%.0f", r / (b / 1073741824) }'; }

declare -A FULL INCR REST RSS_F RSS_I RSS_R REQ_F REQ_I REQ_R
CHANGED=$((SIZE * CHANGE_PCT / 100 / MIB))
cp --sparse=always "$DISK" "$TMP/disk.v1"
for kind in local rados s3; do
    case $kind in
        local) REPO=$TMP/repo ;;
        rados) REPO=rados://$POOL/bench ;;
        s3) REPO=s3://$BUCKET/bench ;;
    esac
    cp --sparse=always "$TMP/disk.v1" "$DISK"
    sync
    "$VMEXPORT" repo init "$REPO" >/dev/null 2>&1 || die "repo init $REPO"
    timed $kind "$kind full" "$VMEXPORT" backup bench --repo "$REPO" --transport local --jobs "$JOBS"
    FULL[$kind]=$SECS RSS_F[$kind]=$RSS_MIB REQ_F[$kind]=$REQS
    # CHANGE_PCT % in 1 MiB writes at the same places for every store (fixed seed).
    RANDOM=42
    for ((i = 0; i < CHANGED; i++)); do
        dd if=/dev/urandom of="$DISK" bs=1M count=1 seek=$(((RANDOM * 32768 + RANDOM) % (SIZE / MIB))) \
            conv=notrunc status=none
    done
    sync
    timed $kind "$kind incremental" "$VMEXPORT" backup bench --repo "$REPO" --transport local --jobs "$JOBS" --json
    INCR[$kind]=$SECS RSS_I[$kind]=$RSS_MIB REQ_I[$kind]=$REQS
    id=$(jq -r 'select(.type == "summary") | .backup' "$TMP/out.txt")
    rm -f "$TMP/restored.img"
    timed $kind "$kind restore" "$VMEXPORT" restore --repo "$REPO" "$id" --disk disk.img --to "$TMP/restored.img"
    REST[$kind]=$SECS RSS_R[$kind]=$RSS_MIB REQ_R[$kind]=$REQS
    cmp -s "$TMP/restored.img" "$DISK" || die "$kind: the restore differs from the disk"
    rm -f "$TMP/restored.img"
done

gib=$(awk -v b="$SIZE" 'BEGIN { printf "%.2f", b / 1073741824 }')
echo "# bench-stores: disk $gib GiB (3/8 random, 1/4 text, 3/8 hole), --jobs $JOBS, incremental after $CHANGE_PCT % changed; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %24s %18s %26s %10s\n' store "full MB/s (s, req/GiB)" "incr s (req/GiB)" "restore MB/s (s, req/GiB)" "peak RSS"
for kind in local rados s3; do
    req() { [ $kind = local ] && echo - || per_gib "$1" "$SIZE"; }
    rss=${RSS_F[$kind]}
    for v in "${RSS_I[$kind]}" "${RSS_R[$kind]}"; do [ "$v" -gt "$rss" ] && rss=$v; done
    printf '%-6s %24s %18s %26s %7s MiB\n' $kind \
        "$(mbps "$SIZE" "${FULL[$kind]}") (${FULL[$kind]}, $(req "${REQ_F[$kind]}"))" \
        "${INCR[$kind]} ($(req "${REQ_I[$kind]}"))" \
        "$(mbps "$SIZE" "${REST[$kind]}") (${REST[$kind]}, $(req "${REQ_R[$kind]}"))" "$rss"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }'; }
for kind in rados s3; do
    echo "# $kind / local throughput: full $(ratio "${FULL[$kind]}" "${FULL[local]}"), incremental $(ratio "${INCR[$kind]}" "${INCR[local]}"), restore $(ratio "${REST[$kind]}" "${REST[local]}")"
done
echo "# restore from S3 vs local: $(ratio "${REST[s3]}" "${REST[local]}")x the throughput"
