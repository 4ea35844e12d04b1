#!/bin/bash
# Benchmark: a big, thin, scattered sparse raw disk — vmexport backup / incremental / restore /
# verify / prune+gc against plain copies of the same file, and peak memory against the disk's
# logical size (issue 19: "any disk size in bounded memory, sparse data at copy speed").
#
# Source: a loop XFS (reflink=1, direct-I/O loop) holding VM `main`, one raw disk of SIZE
# (default 4 TiB) logical with EXTENTS (65536) extents of EXTENT (4 KiB) pseudo-random data,
# one every SIZE/EXTENTS bytes (256 MiB of data by default: every 1 MiB chunk that holds data
# holds one extent), served by vmexportd over TLS on 127.0.0.1.  Repositories, copies and
# restores are on a second loop XFS without reflink (ext4 cannot hold a file over 16 TiB).
# Page cache dropped before every timed run; copies and restores end with `sync DST` inside the
# timing.  Timed (seconds and peak RSS, /usr/bin/time -f '%e %M'), side by side:
#     vmexport backup main --transport https    full, into repository H
#     vmexport backup main --transport local    full, into repository L (reads the snapshot file)
#     cp --sparse=always --reflink=never SRC DST  (cold, best of REPS; then once warm: its data in
#       the page cache, as right after writing it — every cold tool waits for one random 4 KiB
#       read per extent)
#     qemu-img convert -f raw -O raw -o extent_size_hint=0 SRC DST   (without the option qemu-img
#       sets a 1 MiB extent size hint on an XFS destination: every 4 KiB extent allocates 1 MiB)
#     nbdcopy [ qemu-nbd -r -f raw SRC ] DST      (an NBD export of the file, socket-activated;
#                                                 nbdkit's file export took 2.5x as long)
#     incremental after CHANGES (100) writes of CHANGE (64 KiB) random data at random aligned
#       offsets, https into H and local into L
#     vmexport restore (of L's incremental) --to FILE, vmexport verify (that backup),
#     vmexport prune --keep-last 1 + vmexport gc (of L)
# Every copy and restore is compared with the source extent by extent (bench/sparsecmp.c, out
# of the timing; cmp would read terabytes of zeros).  Ratios: time / cp's time (below 2 is
# issue 19's target for backup, restore and verify; https / local below 1.3).
# Then the memory series: the same EXTENTS extents spread over each logical size in SERIES
# (default "1T 4T 16T 64T"), VM `sN`, local transport: full backup, incremental (the same
# change), restore, verify, prune+gc, each with its peak RSS (the goal: a flat line, < 128 MiB),
# and cp's time at that size.  The SIZE point of the series reuses the figures above.
# This is a benchmark, not a test: it fails only if a tool fails or a copy differs.
#
# Run as root (loop devices, mount, drop_caches): bench/bench-sparse.sh
#     SIZE=256G EXTENTS=4096 SERIES="64G 256G" bench/bench-sparse.sh      # quick run
# Environment: SIZE (4T), EXTENTS (65536), EXTENT (4K), CHANGES (100), CHANGE (64K), SERIES
# ("1T 4T 16T 64T"; empty: none), JOBS (backup --jobs, 4), CHUNK_SIZE (repo init --chunk-size,
# default: the repository's), REPS (cp: best of REPS, default 2; qemu-img and nbdcopy, slower
# on a big sparse file, run once), DST_FS_SIZE (64G, sparse
# image), VMEXPORT, VMEXPORTD (default build/...), BENCH_TMPDIR (default /var/tmp).
# Only the CLI and the daemon are used, so any build of vmexport can be measured.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(dirname "$here")
VMEXPORT=${VMEXPORT:-$root/build/vmexport}
VMEXPORTD=${VMEXPORTD:-$root/build/vmexportd}
SIZE=${SIZE:-4T}
EXTENTS=${EXTENTS:-65536}
EXTENT=${EXTENT:-4K}
CHANGES=${CHANGES:-100}
CHANGE=${CHANGE:-64K}
SERIES=${SERIES-1T 4T 16T 64T}
JOBS=${JOBS:-4}
CHUNK_SIZE=${CHUNK_SIZE:-}
REPS=${REPS:-2}
DST_FS_SIZE=${DST_FS_SIZE:-64G}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}

die() { echo "bench-sparse: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (loop devices, mount, drop_caches)"
for t in nbdcopy qemu-nbd qemu-img cc openssl curl jq losetup mount mkfs.xfs ss dd; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
[ -x /usr/bin/time ] || die "missing /usr/bin/time (apt-get install time)"
[ -x "$VMEXPORT" ] && [ -x "$VMEXPORTD" ] || die "build first: ninja -C build"

size=$(to_bytes "$SIZE")
extent=$(to_bytes "$EXTENT")
change=$(to_bytes "$CHANGE")
MiB=$((1 << 20))
[ $((size % EXTENTS)) -eq 0 ] && [ $((size / EXTENTS % extent)) -eq 0 ] ||
    die "SIZE must be a multiple of EXTENTS x EXTENT"
nseries=$(wc -w <<<"$SERIES")

load_start=$(cut -d" " -f1-3 /proc/loadavg)
work=$(mktemp -d "$BENCH_TMPDIR/vmexport-bench-sparse.XXXXXX")
bench_cleanup_at_exit
daemon_pid="" # bench_start_daemon sets it
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# --- filesystems, tools ---------------------------------------------------------------------------
data=$((EXTENTS * extent))
srcdev="" dstdev=""
mkloop srcdev src $((2048 * MiB + (nseries + 1) * 2 * data))
mkfs.xfs -q -f -m reflink=1 "$srcdev"
bench_mount "$srcdev" "$work/src"
mkloop dstdev dst "$(to_bytes "$DST_FS_SIZE")"
mkfs.xfs -q -f -m reflink=0 "$dstdev"
bench_mount "$dstdev" "$work/dst"
cc -O2 -Wall -o "$work/mkfrag" "$here/mkfrag.c"
cc -O2 -Wall -o "$work/sparsecmp" "$here/sparsecmp.c"

# make_disk VM BYTES SEED: VM's disk.raw, BYTES logical, EXTENTS extents spread evenly
make_disk() {
    local f="$work/src/vms/$1/disk.raw" n
    mkdir -p "$work/src/vms/$1"
    truncate -s "$2" "$f"
    n=$("$work/mkfrag" -s "$3" "$f" 0 "$2" $(($2 / EXTENTS)) "$extent")
    [ "$n" -eq "$EXTENTS" ] || die "mkfrag wrote $n extents, not $EXTENTS"
}
# change_disk VM BYTES: CHANGES writes of CHANGE random bytes at random CHANGE-aligned offsets
change_disk() {
    local f="$work/src/vms/$1/disk.raw" i slot
    RANDOM=4242
    for ((i = 0; i < CHANGES; i++)); do
        slot=$(((RANDOM * 32768 + RANDOM) % ($2 / change)))
        head -c "$change" /dev/urandom |
            dd of="$f" bs="$change" seek="$slot" conv=notrunc iflag=fullblock status=none
    done
    sync
}
t0=$EPOCHREALTIME
make_disk main "$size" 1
t1=$EPOCHREALTIME
src="$work/src/vms/main/disk.raw"
allocated=$(($(stat -c '%b * %B' "$src")))

bench_start_daemon "$work" "$work/src/vms"
init_repo() { # init_repo PATH
    rm -rf "$1"
    "$VMEXPORT" repo init ${CHUNK_SIZE:+--chunk-size "$CHUNK_SIZE"} "$1" >/dev/null
}

# timed NAME COMMAND...: a cold run (warm with WARM=1) under /usr/bin/time (then sync
# $SYNC_AFTER when set, inside the timing); seconds in T[NAME], peak RSS (KiB) in RSS[NAME];
# stdout in $work/NAME.out
declare -A T RSS
timed() {
    local name=$1; shift
    if [ -z "${WARM:-}" ]; then drop_caches; fi
    local t0 t1
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%e %M' -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err" ||
        die "$name failed: $(tail -3 "$work/$name.err")"
    if [ -n "${SYNC_AFTER:-}" ]; then sync "$SYNC_AFTER"; fi
    t1=$EPOCHREALTIME
    T[$name]=$(secs "$t0" "$t1")
    RSS[$name]=$(awk '{ v = $2 } END { print v }' "$work/$name.time")
    echo "  $name: ${T[$name]} s, peak RSS $((RSS[$name] / 1024)) MiB" >&2
}
# same SRC DST: the copy or restore DST equals SRC (extent by extent); prints bytes compared
same() {
    "$work/sparsecmp" "$1" "$2" || die "$2 differs from $1"
}
# timed_copy NAME SRC DST COMMAND...: best of REPS cold runs with sync DST inside the timing,
# the first compared with SRC (out of the timing)
timed_copy() {
    local name=$1 s=$2 dst=$3; shift 3
    local i best="" bestrss=""
    for ((i = 0; i < REPS; i++)); do
        rm -f "$dst"
        SYNC_AFTER=$dst timed "$name" "$@"
        if [ "$i" = 0 ]; then same "$s" "$dst" >/dev/null; fi
        rm -f "$dst"
        if [ -z "$best" ] || awk -v a="${T[$name]}" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=${T[$name]}; fi
        if [ -z "$bestrss" ] || [ "${RSS[$name]}" -gt "$bestrss" ]; then bestrss=${RSS[$name]}; fi
    done
    T[$name]=$best
    RSS[$name]=$bestrss
}
# summary NAME: the summary line of backup NAME's JSON output
summary() { grep '"type":"summary"' "$work/$1.out" | tail -n1; }
# vmexport_steps VM BYTES SUFFIX REPO: full backup (local), change, incremental (local), restore
# + compare, verify, prune + gc of VM into REPO; names end in SUFFIX
vmexport_steps() {
    local vm=$1 bytes=$2 sfx=$3 rp=$4 id r="$work/dst/restored.raw"
    timed "full$sfx" "$VMEXPORT" backup "$vm" --repo "$rp" --jobs "$JOBS" --transport local --json
    change_disk "$vm" "$bytes"
    timed "incr$sfx" "$VMEXPORT" backup "$vm" --repo "$rp" --jobs "$JOBS" --transport local --json
    jq -e '.incremental == true' <<<"$(summary "incr$sfx")" >/dev/null ||
        die "$vm: the backup after the change was not incremental: $(summary "incr$sfx")"
    id=$(jq -r .backup <<<"$(summary "incr$sfx")")
    rm -f "$r"
    SYNC_AFTER=$r timed "restore$sfx" "$VMEXPORT" restore --repo "$rp" "$id" --disk disk.raw --to "$r"
    RESTORED_ALLOC=$(($(stat -c '%b * %B' "$r")))
    same "$work/src/vms/$vm/disk.raw" "$r" >/dev/null
    rm -f "$r"
    timed "verify$sfx" "$VMEXPORT" verify --repo "$rp" "$id"
    timed "prune$sfx" "$VMEXPORT" prune --repo "$rp" --keep-last 1
    timed "gc$sfx" "$VMEXPORT" gc --repo "$rp"
}

# --- the SIZE disk: backups, copies, incrementals, restore, verify ----------------------------------
echo "# $SIZE disk, $EXTENTS x $EXTENT extents ($allocated bytes allocated, made in $(secs "$t0" "$t1") s)" >&2
repo_h="$work/dst/repo-https"
repo_l="$work/dst/repo-local"
init_repo "$repo_h"
sync
timed full_h "$VMEXPORT" backup main --repo "$repo_h" --jobs "$JOBS" --transport https --json
d="$work/dst/copy.raw"
timed_copy cp "$src" "$d" cp --sparse=always --reflink=never "$src" "$d"
# the runs above (and their comparison) left the source's data in the page cache
WARM=1 REPS=1 timed_copy cp_warm "$src" "$d" cp --sparse=always --reflink=never "$src" "$d"
REPS=1 timed_copy qemu-img "$src" "$d" qemu-img convert -f raw -O raw -o extent_size_hint=0 "$src" "$d"
REPS=1 timed_copy nbdcopy "$src" "$d" nbdcopy -- [ qemu-nbd -r -f raw "$src" ] "$d"
# the local full backup, then one change that both incrementals (https into H, local into L) see
init_repo "$repo_l"
sync
vmexport_steps_main() {
    timed full "$VMEXPORT" backup main --repo "$repo_l" --jobs "$JOBS" --transport local --json
    change_disk main "$size"
    timed incr_h "$VMEXPORT" backup main --repo "$repo_h" --jobs "$JOBS" --transport https --json
    jq -e '.incremental == true' <<<"$(summary incr_h)" >/dev/null ||
        die "the https backup after the change was not incremental: $(summary incr_h)"
    timed incr "$VMEXPORT" backup main --repo "$repo_l" --jobs "$JOBS" --transport local --json
    jq -e '.incremental == true' <<<"$(summary incr)" >/dev/null ||
        die "the local backup after the change was not incremental: $(summary incr)"
    local id r="$work/dst/restored.raw"
    id=$(jq -r .backup <<<"$(summary incr)")
    SYNC_AFTER=$r timed restore "$VMEXPORT" restore --repo "$repo_l" "$id" --disk disk.raw --to "$r"
    RESTORED_ALLOC=$(($(stat -c '%b * %B' "$r")))
    compared=$(same "$src" "$r")
    rm -f "$r"
    timed verify "$VMEXPORT" verify --repo "$repo_l" "$id"
    repo_bytes=$(du -sb "$repo_l" | cut -f1)
    timed prune "$VMEXPORT" prune --repo "$repo_l" --keep-last 1
    timed gc "$VMEXPORT" gc --repo "$repo_l"
}
vmexport_steps_main
restored_alloc_main=$RESTORED_ALLOC
repo_h_bytes=$(du -sb "$repo_h" | cut -f1)
rm -rf "$repo_h"

# --- memory series ---------------------------------------------------------------------------------
declare -A CP_AT
CP_AT[$size]=${T[cp]}
k=0
for s in $SERIES; do
    k=$((k + 1))
    b=$(to_bytes "$s")
    if [ "$b" = "$size" ]; then
        for n in full incr restore verify prune gc; do T[$n@$b]=${T[$n]}; RSS[$n@$b]=${RSS[$n]}; done
        continue
    fi
    echo "# series: $s" >&2
    make_disk "s$s" "$b" $((k + 1))
    REPS=1 timed_copy "cp@$b" "$work/src/vms/s$s/disk.raw" "$d" \
        cp --sparse=always --reflink=never "$work/src/vms/s$s/disk.raw" "$d"
    CP_AT[$b]=${T[cp@$b]}
    rp="$work/dst/repo-s$s"
    init_repo "$rp"
    vmexport_steps "s$s" "$b" "@$b" "$rp"
    rm -rf "$rp"
done
daemon_hwm=$(awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$daemon_pid/status")

# --- report ------------------------------------------------------------------------------------------
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
echo "# vmexport sparse-disk benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -r)"
echo "# SRC: XFS reflink loop, $SIZE ($size bytes) logical, $EXTENTS x $EXTENT extents every $((size / EXTENTS)) bytes, $allocated bytes allocated"
echo "# repositories, copies, restores: XFS loop without reflink; chunk size ${CHUNK_SIZE:-default}; backup --jobs $JOBS"
echo "# binaries: $VMEXPORT ($("$VMEXPORT" --version 2>&1 | head -n1)), $VMEXPORTD"
echo "# load average (1, 5, 15 min) at start: $load_start; at end: $(cut -d" " -f1-3 /proc/loadavg)"
echo "# every run cold (caches dropped); cp: best of $REPS, the other copies one run; copies and restores include sync DST"
echo
printf '| %-58s | %8s | %8s | %9s |\n' "step ($SIZE, $EXTENTS x $EXTENT)" seconds "peak RSS" "time / cp"
printf '| %-58s | %8s | %8s | %9s |\n' --- ---: ---: ---:
row() { # row LABEL NAME
    printf '| %-58s | %8.2f | %4s MiB | %8.2fx |\n' "$1" "${T[$2]}" "$(mib "${RSS[$2]}")" \
        "$(awk -v a="${T[$2]}" -v c="${T[cp]}" 'BEGIN { printf "%.2f", a / c }')"
}
row "vmexport backup, full, --transport local" full
row "vmexport backup, full, --transport https" full_h
row "cp --sparse=always --reflink=never" cp
row "cp --sparse=always --reflink=never, warm" cp_warm
row "qemu-img convert -f raw -O raw -o extent_size_hint=0" qemu-img
row "nbdcopy [ qemu-nbd -r -f raw SRC ] DST" nbdcopy
row "vmexport backup, incremental ($CHANGES x $CHANGE changed), local" incr
row "vmexport backup, incremental, https" incr_h
row "vmexport restore --to FILE (+ sync)" restore
row "vmexport verify BACKUP" verify
row "vmexport prune --keep-last 1" prune
row "vmexport gc" gc
echo
awk -v h="${T[full_h]}" -v l="${T[full]}" 'BEGIN { printf "full backup https / local: %.2fx\n", h / l }'
echo "vmexportd peak RSS over the whole run: $daemon_hwm MiB"
echo "restore compared $compared bytes of data; restored file allocated $((restored_alloc_main / MiB)) MiB"
echo "repository sizes after full + incremental: local $((repo_bytes / MiB)) MiB, https $((repo_h_bytes / MiB)) MiB"
for n in full full_h incr incr_h; do
    echo "summary $n: $(jq -c '{incremental, transport, bytes_read, bytes_written, chunks_new, chunks_reused, seconds}' <<<"$(summary "$n")" 2>/dev/null || echo '?')"
done
if [ -n "$SERIES" ]; then
    echo
    echo "Peak RSS (MiB) vs logical size, the same $EXTENTS x $EXTENT extents, --transport local:"
    echo
    printf '| %-8s | %7s | %12s | %12s | %12s | %12s | %9s | %9s |\n' size "cp (s)" "full s / MiB" "incr s / MiB" "restore" "verify" "prune MiB" "gc MiB"
    printf '| %-8s | %7s | %12s | %12s | %12s | %12s | %9s | %9s |\n' --- ---: ---: ---: ---: ---: ---: ---:
    for s in $SERIES; do
        b=$(to_bytes "$s")
        cell() { printf '%s / %s' "${T[$1@$b]}" "$(mib "${RSS[$1@$b]}")"; }
        printf '| %-8s | %7s | %12s | %12s | %12s | %12s | %9s | %9s |\n' "$s" "${CP_AT[$b]}" \
            "$(cell full)" "$(cell incr)" "$(cell restore)" "$(cell verify)" \
            "$(mib "${RSS[prune@$b]}")" "$(mib "${RSS[gc@$b]}")"
    done
fi
