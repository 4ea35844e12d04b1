#!/bin/bash
# Benchmark: sparse copy of a raw VM disk image onto a filesystem without reflink.
#
# Builds a loop filesystem without reflink (ext4 by default, or XFS with reflink=0), writes a
# sparse raw image of SIZE bytes (default 8 GiB) holding a mix of pseudo-random data, written
# zeros and holes (bench/mkfrag.c), and times on the same filesystem
#     vmexport clone --mode copy SRC DST              (also XXH3-128 of every 64 KiB block,
#                                                      sidecar DST.vxhash, fsync, rename)
#     vmexport clone --mode copy --hash sha256 SRC DST (the same with SHA-256 digests)
#     cp --sparse=always --reflink=never SRC DST
#     nbdcopy SRC DST
#     qemu-img convert -f raw -O raw -S 4k SRC DST    (reference)
# Every timed run ends with `sync DST` (fsync) inside the timing, so tools that do not fsync
# themselves pay for writeback too.  Cold runs drop the page cache first (the loop device uses
# direct I/O, so the backing file is not cached twice); warm runs have SRC in the page cache.
# Throughput is reported in MB/s (10^6 bytes) of the logical size and of the allocated data
# of SRC, with ratios vmexport/cp and vmexport/nbdcopy (above 1: vmexport is faster).  Every
# copy is checked with cmp outside the timing, and deleted before the next run.
# This is a benchmark, not a test: it fails only if a tool fails or a copy differs.
#
# Run as root (needs loop devices, mkfs, drop_caches, cc, qemu-img, nbdcopy):
#     bench/bench-clone.sh
#     SIZE=1G bench/bench-clone.sh                     # quick run
# Environment: SIZE (multiple of 512M, default 8G), COLD_REPS (5: cp's own cold time varies
# 2-3x between runs on a virtual machine, so one cold run decides little; best and median are
# printed), WARM_REPS (2),
# FS (ext4 | xfs, default ext4), VMEXPORT (default build/vmexport),
# BENCH_TMPDIR (where the loop image lives; default /var/tmp), LOOP_DIO (1: direct I/O loop).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(dirname "$here")
VMEXPORT=${VMEXPORT:-$root/build/vmexport}
SIZE=${SIZE:-8G}
COLD_REPS=${COLD_REPS:-5}
WARM_REPS=${WARM_REPS:-2}
FS=${FS:-ext4}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
LOOP_DIO=${LOOP_DIO:-1}

die() { echo "bench-clone: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (loop devices, mount, drop_caches)"
for t in qemu-img nbdcopy cc cmp losetup mount; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
[ -x "$VMEXPORT" ] || die "no vmexport binary at $VMEXPORT (build with: ninja -C build)"

to_bytes() {
    local v=$1
    case $v in
        *[Gg]) echo $((${v%?} << 30)) ;;
        *[Mm]) echo $((${v%?} << 20)) ;;
        *[Kk]) echo $((${v%?} << 10)) ;;
        *) echo "$v" ;;
    esac
}
size=$(to_bytes "$SIZE")
region=$((64 << 20))
stripe=$((8 * region)) # the layout repeats every 512 MiB
if [ "$size" -lt "$stripe" ] || [ $((size % stripe)) -ne 0 ]; then die "SIZE must be a multiple of 512M"; fi

load_start=$(cut -d" " -f1-3 /proc/loadavg)
work=$(mktemp -d "$BENCH_TMPDIR/vmexport-bench-clone.XXXXXX")
bench_cleanup_at_exit
mnt="$work/mnt"

# --- filesystem (no reflink) -----------------------------------------------------------------
# SRC allocates 15/32 of SIZE; a copy at most as much; plus the sidecar and slack.
fs_bytes=$((size + size / 2 + (512 << 20)))
loopdev=""
dio=off
if [ "$LOOP_DIO" = 1 ]; then
    mkloop loopdev fs "$fs_bytes"
    dio=$(cat "/sys/block/${loopdev#/dev/}/loop/dio" 2>/dev/null || echo "?")
    [ "$dio" = 1 ] && dio=on
    [ "$dio" = 0 ] && dio=off
else
    mkloop loopdev fs "$fs_bytes" plain
fi
case $FS in
    ext4) mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$loopdev" ;;
    xfs) mkfs.xfs -q -f -m reflink=0 "$loopdev" ;;
    *) die "FS must be ext4 or xfs" ;;
esac
bench_mount "$loopdev" "$mnt"

# --- source image ----------------------------------------------------------------------------
# Every 512 MiB stripe of eight 64 MiB regions:
#   0-1  pseudo-random data, contiguous         128 MiB
#   2    zeros, written (allocated)               64 MiB
#   3    4 KiB of random data every 16 KiB        16 MiB data, 48 MiB holes
#   4    32 MiB random data, then 32 MiB hole     32 MiB
#   5-7  hole                                    192 MiB
cc -O2 -Wall -o "$work/mkfrag" "$here/mkfrag.c"
src="$mnt/src.raw"
dst="$mnt/dst.raw"
truncate -s "$size" "$src"
t0=$EPOCHREALTIME
"$work/mkfrag" -s 1 "$src" 0 "$size" "$stripe" $((2 * region)) >/dev/null
"$work/mkfrag" -z "$src" $((2 * region)) $((size - 2 * region)) "$stripe" "$region" >/dev/null
"$work/mkfrag" -s 2 "$src" $((4 * region)) $((size - 4 * region)) "$stripe" $((region / 2)) >/dev/null
for ((s = 0; s < size; s += stripe)); do
    "$work/mkfrag" -s $((3 + s / stripe)) "$src" $((s + 3 * region)) "$region" 16K 4K >/dev/null
done
t1=$EPOCHREALTIME
stripes=$((size / stripe))
nonzero=$((stripes * (2 * region + region / 4 + region / 2)))
allocated=$(($(stat -c '%b * %B' "$src")))

# --- runs ------------------------------------------------------------------------------------
tools=(vmexport vmexport-sha256 cp nbdcopy qemu-img)
declare -A label=(
    [vmexport]="vmexport clone --mode copy SRC DST"
    [vmexport-sha256]="vmexport clone --mode copy --hash sha256 SRC DST"
    [cp]="cp --sparse=always --reflink=never SRC DST"
    [nbdcopy]="nbdcopy SRC DST"
    [qemu-img]="qemu-img convert -f raw -O raw -S 4k SRC DST"
)
run_tool() {
    case $1 in
        vmexport) "$VMEXPORT" clone --mode copy "$src" "$dst" ;;
        vmexport-sha256) "$VMEXPORT" clone --mode copy --hash sha256 "$src" "$dst" ;;
        cp) cp --sparse=always --reflink=never "$src" "$dst" ;;
        nbdcopy) nbdcopy "$src" "$dst" ;;
        qemu-img) qemu-img convert -f raw -O raw -S 4k "$src" "$dst" ;;
    esac
}
remove_outputs() { rm -f "$dst" "$dst.vxhash"; sync; }

# One timed run: prints seconds (and leaves the allocated size of DST in $work/alloc.TOOL).
# Verification and cleanup are outside the timing.
one_run() {
    local tool=$1 kind=$2 t0 t1 secs
    remove_outputs
    if [ "$kind" = cold ]; then drop_caches; fi
    t0=$EPOCHREALTIME
    run_tool "$tool" >/dev/null || die "$tool failed"
    sync "$dst"
    t1=$EPOCHREALTIME
    cmp "$src" "$dst" || die "$tool: copy differs from source"
    case $tool in vmexport*) [ -s "$dst.vxhash" ] || die "$tool: no $dst.vxhash" ;; esac
    echo $(($(stat -c "%b * %B" "$dst"))) >"$work/alloc.$tool"
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    echo "  $tool ($kind): $secs s" >&2
    echo "$secs"
}

declare -A cold warm
for t in "${tools[@]}"; do cold[$t]=""; warm[$t]=""; done
for ((i = 0; i < COLD_REPS; i++)); do
    for t in "${tools[@]}"; do cold[$t]+="$(one_run "$t" cold) "; done
done
for ((i = 0; i < WARM_REPS; i++)); do
    for t in "${tools[@]}"; do warm[$t]+="$(one_run "$t" warm) "; done
done
remove_outputs

declare -A cb wb cm dst_alloc
for t in "${tools[@]}"; do
    cb[$t]=$(best <<<"${cold[$t]}")
    wb[$t]=$(best <<<"${warm[$t]}")
    cm[$t]=$(median <<<"${cold[$t]}")
    dst_alloc[$t]=$(cat "$work/alloc.$t")
done

mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }
echo "# vmexport clone --mode copy benchmark — $(date)"
echo "# $(nproc) CPUs, $(uname -r); $FS (no reflink) on $loopdev (direct I/O: $dio), backing file in $BENCH_TMPDIR"
echo "# SRC: $size bytes logical ($(mib "$size")), $allocated allocated ($(mib "$allocated")), $nonzero non-zero ($(mib "$nonzero")); written in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
echo "# load average (1, 5, 15 min) at start: $load_start; at end: $(cut -d" " -f1-3 /proc/loadavg)"
echo "# cold: best of $COLD_REPS, page cache dropped before each; warm: best of $WARM_REPS with SRC cached; each run includes 'sync DST'"
echo "# MB/s = 10^6 bytes/s; 'data' = allocated bytes of SRC; ratio = vmexport throughput / other's"
echo
printf '| %-46s | %8s | %13s | %14s | %8s | %13s | %14s | %10s |\n' \
    command "cold s" "cold MB/s log" "cold MB/s data" "warm s" "warm MB/s log" "warm MB/s data" "DST alloc"
printf '| %-46s | %8s | %13s | %14s | %8s | %13s | %14s | %10s |\n' \
    --- ---: ---: ---: ---: ---: ---: ---:
for t in "${tools[@]}"; do
    awk -v l="${label[$t]}" -v c="${cb[$t]}" -v w="${wb[$t]}" -v s="$size" -v d="$allocated" \
        -v a="${dst_alloc[$t]}" 'BEGIN {
        printf "| %-46s | %8.2f | %13.0f | %14.0f | %8.2f | %13.0f | %14.0f | %6.0f MiB |\n",
            l, c, s / c / 1e6, d / c / 1e6, w, s / w / 1e6, d / w / 1e6, a / 1048576 }'
done
echo
# Cold times of one tool spread by 2-3x on a virtual machine (how much of the page cache the
# guest must take anew from the host), so the median of the cold runs is shown beside the best.
echo "cold runs (s), in order:"
for t in "${tools[@]}"; do printf '  %-16s %s (median %s)\n' "$t" "${cold[$t]}" "${cm[$t]}"; done
echo
for v in vmexport vmexport-sha256; do
    for o in cp nbdcopy qemu-img; do
        awk -v v="$v" -v o="$o" -v vc="${cb[$v]}" -v vw="${wb[$v]}" -v oc="${cb[$o]}" -v ow="${wb[$o]}" \
            -v vm="${cm[$v]}" -v om="${cm[$o]}" 'BEGIN {
            printf "%s/%-8s  cold %.2fx (median %.2fx)   warm %.2fx\n", v, o, oc / vc, om / vm, ow / vw }'
    done
done
