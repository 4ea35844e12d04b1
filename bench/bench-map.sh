#!/bin/bash
# Benchmark: extent-map listing of a heavily fragmented file.
#
# Builds a loop XFS filesystem (reflink=1), writes a file with EXTENTS separate data extents
# (4 KiB of data every 8 KiB, written by bench/mkfrag.c) and times, side by side and
# interleaved, the wall-clock time of
#     vmexport map --json FILE
#     xfs_io -r -c 'fiemap -v' FILE
#     qemu-img map --output=json -f raw FILE
# each with its output sent to /dev/null: warm (REPS runs after a warm-up; best and median)
# and cold (page cache, dentries and inodes dropped before each of COLD_REPS runs).  Prints the
# number of data extents each tool reported and the ratios other tool / vmexport.
# This is a benchmark, not a test: it fails only if a tool fails or reports a wrong count.
#
# Run as root from anywhere (needs loop devices, mkfs.xfs, xfs_io, qemu-img, jq, cc):
#     bench/bench-map.sh
#     EXTENTS=50000 REPS=3 bench/bench-map.sh          # quicker
# Environment: VMEXPORT (default build/vmexport), EXTENTS (200000), REPS (7), COLD_REPS (3),
# BENCH_TMPDIR (where the loop image lives; default /var/tmp).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(dirname "$here")
VMEXPORT=${VMEXPORT:-$root/build/vmexport}
EXTENTS=${EXTENTS:-200000}
REPS=${REPS:-7}
COLD_REPS=${COLD_REPS:-3}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}

die() { echo "bench-map: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (loop devices, mount, drop_caches)"
for t in mkfs.xfs xfs_io qemu-img jq cc losetup mount; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
[ -x "$VMEXPORT" ] || die "no vmexport binary at $VMEXPORT (build with: ninja -C build)"

load_start=$(cut -d" " -f1-3 /proc/loadavg)
work=$(mktemp -d "$BENCH_TMPDIR/vmexport-bench-map.XXXXXX")
bench_cleanup_at_exit
mnt="$work/mnt"

# Elapsed wall-clock seconds of "$@" (stdout discarded), from bash's microsecond clock.
time_cmd() {
    local t0 t1
    t0=$EPOCHREALTIME
    "$@" >/dev/null || die "failed: $*"
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }'
}


# --- filesystem and fragmented file ------------------------------------------------------
data_mib=$((EXTENTS * 4 / 1024))
fs_mib=$((data_mib + data_mib / 4 + 128))
[ "$fs_mib" -ge 320 ] || fs_mib=320
loopdev=""
mkloop loopdev xfs "${fs_mib}M" plain
mkfs.xfs -q -m reflink=1 "$loopdev"
bench_mount "$loopdev" "$mnt"

cc -O2 -Wall -o "$work/mkfrag" "$here/mkfrag.c"
file="$mnt/frag.raw"
size=$((EXTENTS * 8192))
truncate -s "$size" "$file"
t0=$EPOCHREALTIME
written=$("$work/mkfrag" "$file" 0 "$size" 8K 4K)
t1=$EPOCHREALTIME
[ "$written" -eq "$EXTENTS" ] || die "mkfrag wrote $written chunks, expected $EXTENTS"

# --- extent counts (also checks that every tool sees them all) -----------------------------
n_vmexport=$("$VMEXPORT" map --json "$file" | jq '.extents | length') || die "vmexport map failed"
n_xfs_io=$(xfs_io -r -c 'fiemap -v' "$file" | awk '/^ *[0-9]+: / && !/hole/ { n++ } END { print n + 0 }') || die "xfs_io fiemap failed"
n_qemu=$(qemu-img map --output=json -f raw "$file" | jq '[.[] | select(.data)] | length') || die "qemu-img map failed"

tools=(vmexport xfs_io qemu-img)
run_tool() {
    case $1 in
        vmexport) time_cmd "$VMEXPORT" map --json "$file" ;;
        xfs_io)   time_cmd xfs_io -r -c 'fiemap -v' "$file" ;;
        qemu-img) time_cmd qemu-img map --output=json -f raw "$file" ;;
    esac
}

# --- timing: warm (interleaved rounds) then cold --------------------------------------------
declare -A warm cold
for t in "${tools[@]}"; do run_tool "$t" >/dev/null; warm[$t]=""; cold[$t]=""; done
for ((i = 0; i < REPS; i++)); do
    for t in "${tools[@]}"; do warm[$t]+="$(run_tool "$t") "; done
done
for ((i = 0; i < COLD_REPS; i++)); do
    for t in "${tools[@]}"; do
        drop_caches
        cold[$t]+="$(run_tool "$t") "
    done
done

declare -A count=([vmexport]=$n_vmexport [xfs_io]=$n_xfs_io [qemu-img]=$n_qemu)
declare -A wbest wmed cbest cmed
for t in "${tools[@]}"; do
    wbest[$t]=$(best <<<"${warm[$t]}")
    wmed[$t]=$(median <<<"${warm[$t]}")
    cbest[$t]=$(best <<<"${cold[$t]}")
    cmed[$t]=$(median <<<"${cold[$t]}")
done

echo "# vmexport map benchmark — $(date)"
echo "# $(nproc) CPUs, $(uname -r); XFS (reflink=1, ${fs_mib} MiB) on $loopdev, backing file in $BENCH_TMPDIR"
awk -v t0="$t0" -v t1="$t1" -v n="$EXTENTS" -v sz="$size" 'BEGIN {
    printf "# file: %d bytes, %d extents of 4 KiB every 8 KiB, written in %.2f s\n", sz, n, t1 - t0 }'
echo "# load average (1, 5, 15 min) at start: $load_start; at end: $(cut -d" " -f1-3 /proc/loadavg)"
echo "# warm: best/median of $REPS runs after a warm-up; cold: best/median of $COLD_REPS runs, caches dropped before each"
echo
printf '| %-54s | %9s | %10s | %10s | %10s | %10s | %11s | %11s |\n' \
    command extents "warm best" "warm med" "cold best" "cold med" "warm ratio" "cold ratio"
printf '| %-54s | %9s | %10s | %10s | %10s | %10s | %11s | %11s |\n' \
    "---" "---:" "---:" "---:" "---:" "---:" "---:" "---:"
declare -A label=(
    [vmexport]="vmexport map --json FILE"
    [xfs_io]="xfs_io -r -c 'fiemap -v' FILE"
    [qemu-img]="qemu-img map --output=json -f raw FILE"
)
for t in "${tools[@]}"; do
    awk -v l="${label[$t]}" -v n="${count[$t]}" \
        -v wb="${wbest[$t]}" -v wm="${wmed[$t]}" -v cb="${cbest[$t]}" -v cm="${cmed[$t]}" \
        -v vwm="${wmed[vmexport]}" -v vcm="${cmed[vmexport]}" 'BEGIN {
        printf "| %-54s | %9d | %7.1f ms | %7.1f ms | %7.1f ms | %7.1f ms | %10.2fx | %10.2fx |\n",
            l, n, wb * 1000, wm * 1000, cb * 1000, cm * 1000, wm / vwm, cm / vcm }'
done
echo
echo "ratio = that command's median time / vmexport's median time (above 1: vmexport is faster)"

for t in "${tools[@]}"; do
    [ "${count[$t]}" -eq "$EXTENTS" ] || die "$t reported ${count[$t]} data extents, expected $EXTENTS"
done
