#!/bin/bash
# Benchmark: restore to a host — `vmexport restore --upload` through vmexportd's upload API,
# against a plain `curl -T` PUT of the same raw file, and the cost of sparse (mostly-hole) disks.
#
# Builds a loop XFS filesystem (reflink=1, sparse image of FS_SIZE) for a `dir` provider with:
#   dense   one raw disk of SIZE (default 2G) holding DATA (default 1G) of random data, in
#           PIECE_MIB pieces spread evenly over the disk
#   sparse  one raw disk of SPARSE_SIZE (default 64G) holding SPARSE_DATA (default 1G)
#   huge    (HUGE=1, default) one raw disk of HUGE_SIZE (default 1T) holding HUGE_DATA
#           (default 1536M, i.e. ~1.5 GiB), to compare with ovirt-imageio's published figure
#           (an 8 TiB disk holding 1.5 GB uploaded in 323 s)
# backs each VM up into a repository (chunk size CHUNK, default 4M, on BENCH_TMPDIR, not on the
# loop fs), restores `dense` to a raw file with `vmexport restore --to`, and then, page cache
# warm, once over plain HTTP (insecure_http = true) and once over TLS (the same daemon state
# restarted with a certificate), times end to end:
#   1. vmexport restore --repo R BACKUP --upload VM --jobs 1    (and --jobs 4): login, transfer,
#      chunks read from the repository (zstd + SHA-256 check), data PUT, zero runs PATCHed,
#      flush, finalize
#   2. curl -T RAWFILE of the restored raw file: POST /api/v1/vms/VM/uploads, one PUT of the
#      whole file (?flush=n; curl sends every byte, zeros included), POST .../finalize
#   best of REPS runs each; MB/s = disk size / time (MB = 10^6 bytes) and data / time;
#   ratios against curl (above 1: vmexport is faster);
#   3. the sparse disks with --jobs 4: the time must track the data (1 GiB), not the size.
# Every uploaded disk is compared with its source (cmp) once and then deleted.  Client and
# server share the machine's CPUs.  This is a benchmark, not a test: no pass/fail; it stops
# only when a tool fails or an uploaded disk differs.
#
# Run as root (loop devices, mount): bench/bench-upload.sh
#     SIZE=4G DATA=2G REPS=3 HUGE=0 bench/bench-upload.sh
# Environment: SIZE (2G), DATA (1G), SPARSE_SIZE (64G), SPARSE_DATA (1G), HUGE (1),
# HUGE_SIZE (1T), HUGE_DATA (1536M), PIECE_MIB (64), CHUNK (4M), REPS (3), FS_SIZE (1200G,
# sparse image), VMEXPORT / VMEXPORTD (default build/...), BENCH_TMPDIR (default /var/tmp).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(dirname "$here")
VMEXPORT=${VMEXPORT:-$root/build/vmexport}
VMEXPORTD=${VMEXPORTD:-$root/build/vmexportd}
SIZE=${SIZE:-2G}
DATA=${DATA:-1G}
SPARSE_SIZE=${SPARSE_SIZE:-64G}
SPARSE_DATA=${SPARSE_DATA:-1G}
HUGE=${HUGE:-1}
HUGE_SIZE=${HUGE_SIZE:-1T}
HUGE_DATA=${HUGE_DATA:-1536M}
PIECE_MIB=${PIECE_MIB:-64}
CHUNK=${CHUNK:-4M}
REPS=${REPS:-3}
FS_SIZE=${FS_SIZE:-1200G}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}

die() { echo "bench-upload: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (loop devices, mount)"
for t in curl jq openssl mkfs.xfs losetup mount ss cmp; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
[ -x "$VMEXPORT" ] && [ -x "$VMEXPORTD" ] || die "no binaries in build/ (build with: ninja -C build)"

to_bytes() {
    local v=$1
    case $v in
        *[Tt]) echo $((${v%?} << 40)) ;;
        *[Gg]) echo $((${v%?} << 30)) ;;
        *[Mm]) echo $((${v%?} << 20)) ;;
        *) echo "$v" ;;
    esac
}

work=$(mktemp -d "$BENCH_TMPDIR/vmexport-bench-upload.XXXXXX")
bench_cleanup_at_exit
mnt="$work/mnt"

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
mbs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1e6 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# --- filesystem, VMs ---------------------------------------------------------------------------
# make_disk FILE SIZE DATA: a sparse file of SIZE with DATA of random data in PIECE_MIB pieces
# spread evenly (piece offsets 4 MiB aligned).
make_disk() {
    local f=$1 size data pieces stride i
    size=$(to_bytes "$2"); data=$(to_bytes "$3")
    truncate -s "$size" "$f"
    pieces=$((data / (PIECE_MIB << 20)))
    [ "$pieces" -ge 1 ] || die "DATA smaller than PIECE_MIB"
    stride=$(((size / pieces) >> 22 << 22))
    for ((i = 0; i < pieces; i++)); do
        head -c $((PIECE_MIB << 20)) /dev/urandom |
            dd of="$f" bs=4M seek=$((i * stride)) oflag=seek_bytes conv=notrunc iflag=fullblock status=none
    done
}
loopdev=""
mkloop loopdev xfs "$FS_SIZE" plain
mkfs.xfs -q -f -K -m reflink=1 "$loopdev"
bench_mount "$loopdev" "$mnt"
mkdir -p "$mnt/vms/dense" "$mnt/vms/sparse"
echo "# creating disks: dense $SIZE/$DATA, sparse $SPARSE_SIZE/$SPARSE_DATA$([ "$HUGE" = 1 ] && echo ", huge $HUGE_SIZE/$HUGE_DATA")" >&2
make_disk "$mnt/vms/dense/disk.raw" "$SIZE" "$DATA"
make_disk "$mnt/vms/sparse/disk.raw" "$SPARSE_SIZE" "$SPARSE_DATA"
if [ "$HUGE" = 1 ]; then
    mkdir -p "$mnt/vms/huge"
    make_disk "$mnt/vms/huge/disk.raw" "$HUGE_SIZE" "$HUGE_DATA"
fi
sync

# --- certificates, users, daemon ---------------------------------------------------------------
c="$work/certs"
bench_certs "$work"

vport=$(free_port)
[ "$vport" != 0 ] || die "no free port"
start_daemon() { # start_daemon plain|tls: sets VURL, TOKEN and the vmexport client environment
    bench_run_daemon "$work" "$mnt/vms" "$vport" "$1"
    TOKEN=$(curl -sf --cacert "$c/ca.crt" -d '{"username":"admin","password":"secret"}' \
        "$VURL/api/v1/auth/login" | jq -r .token)
    [ -n "$TOKEN" ] && [ "$TOKEN" != null ] || die "login failed"
    export VMEXPORT_SERVER=$VURL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
    export VMEXPORT_CACERT=$c/ca.crt XDG_CACHE_HOME=$work/cache
}
stop_daemon() { kill -TERM "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=""; }

# --- repository, backups, raw file ---------------------------------------------------------------
REPO="$work/repo"
"$VMEXPORT" repo init "$REPO" --chunk-size "$CHUNK" >/dev/null
start_daemon plain
declare -A BID
for vm in dense sparse $([ "$HUGE" = 1 ] && echo huge); do
    t0=$(now)
    "$VMEXPORT" backup "$vm" --repo "$REPO" --jobs 4 >/dev/null
    echo "# backup of $vm: $(elapsed "$t0" "$(now)") s" >&2
    BID[$vm]=$("$VMEXPORT" backups --repo "$REPO" "$vm" --json | jq -r '.[-1].id')
done
RAW="$work/dense.raw"
"$VMEXPORT" restore --repo "$REPO" "${BID[dense]}" --to "$RAW" >/dev/null
cmp "$RAW" "$mnt/vms/dense/disk.raw" || die "restore --to differs from the disk"
stop_daemon

# same_disk A B: cmp for disks up to 4 GiB; for larger (sparse) ones the same size and the
# same bytes in B's data extents (reading terabytes of holes would dominate the run).
same_disk() {
    local sz; sz=$(stat -c %s "$2")
    [ "$(stat -c %s "$1")" = "$sz" ] || return 1
    if [ "$sz" -le $((4 << 30)) ]; then cmp -s "$1" "$2"; return; fi
    local off len
    while read -r off len; do
        cmp -s -n "$len" -i "$off:$off" "$1" "$2" || return 1
    done < <(xfs_io -r -c "fiemap" "$2" | awk '$3 != "hole" && /\[/ { split($2, a, /[][.:]+/); printf "%d %d\n", a[2] * 512, (a[3] - a[2] + 1) * 512 }')
}
# up_vmexport BACKUP SRCDISK JOBS: one timed restore --upload into a new VM; prints seconds.
up_vmexport() {
    local vm="up${EPOCHREALTIME/./}" t0 t1
    sync
    t0=$(now)
    "$VMEXPORT" restore --repo "$REPO" "$1" --upload "$vm" --jobs "$3" --json >"$work/up.json"
    t1=$(now)
    if [ ! -e "$work/checked-${2//\//_}-$3-$mode" ]; then
        same_disk "$mnt/vms/$vm/disk.raw" "$2" || die "uploaded disk differs from $2"
        touch "$work/checked-${2//\//_}-$3-$mode"
    fi
    rm -rf "${mnt:?}/vms/$vm"
    elapsed "$t0" "$t1"
}
# up_curl RAWFILE SRCDISK: POST uploads + curl -T + finalize; prints seconds.
up_curl() {
    local vm="up${EPOCHREALTIME/./}" t0 t1 size tid
    size=$(stat -c %s "$1")
    sync
    t0=$(now)
    tid=$(curl -sf --cacert "$c/ca.crt" -H "Authorization: Bearer $TOKEN" \
        -d "{\"disk\":\"disk.raw\",\"size\":$size,\"format\":\"raw\"}" \
        "$VURL/api/v1/vms/$vm/uploads" | jq -r .id)
    curl -sf --cacert "$c/ca.crt" -H "Authorization: Bearer $TOKEN" -T "$1" \
        "$VURL/api/v1/transfers/$tid?flush=n" -o /dev/null
    curl -sf --cacert "$c/ca.crt" -H "Authorization: Bearer $TOKEN" -X POST \
        "$VURL/api/v1/transfers/$tid/finalize" -o /dev/null
    t1=$(now)
    if [ ! -e "$work/checked-curl-$mode" ]; then
        cmp "$mnt/vms/$vm/disk.raw" "$2" || die "curl-uploaded disk differs from $2"
        touch "$work/checked-curl-$mode"
    fi
    rm -rf "${mnt:?}/vms/$vm"
    elapsed "$t0" "$t1"
}

size_b=$(to_bytes "$SIZE"); data_b=$(to_bytes "$DATA")
cat "$RAW" >/dev/null   # page cache warm: the raw file and the repository
find "$REPO" -type f -exec cat {} + >/dev/null
declare -A T
for mode in plain tls; do
    start_daemon "$mode"
    for ((r = 0; r < REPS; r++)); do
        echo "# $mode run $((r + 1))/$REPS" >&2
        T[$mode-j1]+="$(up_vmexport "${BID[dense]}" "$mnt/vms/dense/disk.raw" 1) "
        T[$mode-j4]+="$(up_vmexport "${BID[dense]}" "$mnt/vms/dense/disk.raw" 4) "
        T[$mode-curl]+="$(up_curl "$RAW" "$mnt/vms/dense/disk.raw") "
    done
    T[$mode-sparse]=$(up_vmexport "${BID[sparse]}" "$mnt/vms/sparse/disk.raw" 4)
    zs=$(jq -s '[.[] | select(.type == "uploaded")][0] | "\(.bytes_sent) \(.zero_requests)"' -r "$work/up.json")
    T[$mode-sparse-sent]=$zs
    if [ "$HUGE" = 1 ]; then
        T[$mode-huge]=$(up_vmexport "${BID[huge]}" "$mnt/vms/huge/disk.raw" 4)
        T[$mode-huge-sent]=$(jq -s '[.[] | select(.type == "uploaded")][0] | "\(.bytes_sent) \(.zero_requests)"' -r "$work/up.json")
    fi
    stop_daemon
done

# --- report ---------------------------------------------------------------------------------------
echo
echo "## Upload of a $SIZE disk holding $DATA of data (chunk $CHUNK), best of $REPS, MB = 10^6 B"
echo
echo "| transport | client | time s | disk MB/s | data MB/s | vs curl |"
echo "| --- | --- | --: | --: | --: | --: |"
for mode in plain tls; do
    tc=$(best <<<"${T[$mode-curl]}")
    for k in j1 j4 curl; do
        t=$(tr ' ' '\n' <<<"${T[$mode-$k]}" | grep . | best)
        case $k in
            j1) name="vmexport restore --upload --jobs 1" ;;
            j4) name="vmexport restore --upload --jobs 4" ;;
            curl) name="curl -T raw file (POST + PUT + finalize)" ;;
        esac
        echo "| $([ "$mode" = plain ] && echo HTTP || echo TLS) | $name | $t | $(mbs "$size_b" "$t") | $(mbs "$data_b" "$t") | $(ratio "$tc" "$t") |"
    done
done
echo
echo "All runs (s): $(for k in "${!T[@]}"; do [[ $k == *-sent ]] || echo -n "$k: ${T[$k]}; "; done)"
echo
echo "## Sparse disks, vmexport restore --upload --jobs 4 (one run)"
echo
echo "| transport | disk | data | time s | data MB/s | bytes sent | zero PATCHes | s per GiB of data |"
echo "| --- | --- | --- | --: | --: | --: | --: | --: |"
for mode in plain tls; do
    for k in sparse $([ "$HUGE" = 1 ] && echo huge); do
        if [ "$k" = sparse ]; then ds=$SPARSE_SIZE; dd_=$SPARSE_DATA; else ds=$HUGE_SIZE; dd_=$HUGE_DATA; fi
        db=$(to_bytes "$dd_"); t=${T[$mode-$k]}
        read -r sent zr <<<"${T[$mode-$k-sent]}"
        echo "| $([ "$mode" = plain ] && echo HTTP || echo TLS) | $ds | $dd_ | $t | $(mbs "$db" "$t") | $sent | $zr | $(awk -v t="$t" -v b="$db" 'BEGIN { printf "%.2f", t / (b / 2^30) }') |"
    done
done
echo
echo "ovirt-imageio reported 323 s for an 8 TiB disk holding 1.5 GB: $(awk 'BEGIN { printf "%.0f", 323 / (1.5e9 / 2^30) }') s per GiB of data, $(awk 'BEGIN { printf "%.1f", 1.5e9 / 1e6 / 323 }') MB/s of data."
