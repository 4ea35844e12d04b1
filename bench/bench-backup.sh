#!/bin/bash
# Benchmark: `vmexport backup` / `vmexport restore` through vmexportd vs plain copy tools.
#
# Source: a loop XFS (reflink=1, direct-I/O loop) holding VM `bench` with one sparse raw disk
# of SIZE bytes (default 8 GiB) whose every 512 MiB stripe holds
#     128 MiB pseudo-random data, 64 MiB base64 text (compressible ~1.3x, every chunk unique),
#      64 MiB written zeros, 256 MiB hole           -> half of SIZE allocated (4 GiB by default)
# served by vmexportd over TLS on 127.0.0.1.  Destinations (repository, copies, restores) are on
# a second loop filesystem without reflink (ext4, direct-I/O loop).  Page cache dropped before
# every timed run (cold); copies end with `sync DST` inside the timing (the repository and
# restore fsync themselves).  Timed, side by side:
#     vmexport backup bench --repo R --jobs JOBS       full (first) backup: snapshot, TLS
#         --transport https                            download, SHA-256, zstd, store
#     the same with --transport local                  (into a second repository) reading the
#                                                      snapshot file directly, as a backup on
#                                                      the hypervisor host does by default
#     nbdcopy SRC DST | cp --sparse=always --reflink=never SRC DST | qemu-img convert -O raw
#     the CPU limit of SHA-256 + zstd level 1 on all cores: openssl speed -evp sha256 -multi N
#       (1 MiB blocks) and zstd -b1 on a sample of the image's data, combined as
#       1 / (1/sha + 1/zstd) over the allocated data (the bytes a backup must hash+compress)
#     incremental backup after changing CHANGE_PCT % (default 1) of the logical size in
#       1 MiB random writes, both transports; its time (median of INCR_REPS rounds) as a
#       fraction of the full backup's
#     vmexport restore BACKUP --to FILE vs cp --sparse=always SRC DST
#     vmexport download VM SNAP -o DIR (the disk as a sparse file over TLS, fsynced) vs cp
#     peak memory (Maximum resident set size from /usr/bin/time -v) of backup and restore
#     a thick disk (VM `thick`: 256 MiB of random data, then THICK_ZEROS of written zeros, as a
#       preallocated raw disk holds): full backup over https (blocks of zeros are left out of
#       the daemon's answers) and local, vs cp --sparse=always of the same file
# Every backup is restored once and compared with cmp (outside the timing).
# Throughput: MB/s (10^6 bytes/s) of the logical size and of the allocated data.
# Ratios: vmexport throughput / other tool's (above 1: vmexport is faster).
# This is a benchmark, not a test: it fails only if a tool fails or a copy differs.
#
# Run as root (loop devices, mount, drop_caches): bench/bench-backup.sh
#     SIZE=2G bench/bench-backup.sh                    # quick run
# Environment: SIZE (multiple of 512M, default 8G), JOBS (backup --jobs, default 4),
# CHANGE_PCT (1), THICK_ZEROS (2G; 0 skips the thick disk), INCR_REPS (incremental rounds, median counts; default 3), CHUNK_SIZE (repo init --chunk-size, default 1M: the repository default), REPS (full backups and copies: best of REPS runs, default 3), VMEXPORT,
# VMEXPORTD (default build/...), BENCH_TMPDIR (default /var/tmp).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(dirname "$here")
VMEXPORT=${VMEXPORT:-$root/build/vmexport}
VMEXPORTD=${VMEXPORTD:-$root/build/vmexportd}
SIZE=${SIZE:-8G}
JOBS=${JOBS:-4}
CHANGE_PCT=${CHANGE_PCT:-1}
CHUNK_SIZE=${CHUNK_SIZE:-1M}
REPS=${REPS:-3}
THICK_ZEROS=${THICK_ZEROS:-2G}
INCR_REPS=${INCR_REPS:-3}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}

die() { echo "bench-backup: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (loop devices, mount, drop_caches)"
for t in nbdcopy qemu-img zstd openssl curl jq cmp losetup mount mkfs.xfs mkfs.ext4 base64 ss; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
[ -x /usr/bin/time ] || die "missing /usr/bin/time (apt-get install time)"
[ -x "$VMEXPORT" ] && [ -x "$VMEXPORTD" ] || die "build first: ninja -C build"

to_bytes() {
    local v=$1
    case $v in
        *[Gg]) echo $((${v%?} << 30)) ;;
        *[Mm]) echo $((${v%?} << 20)) ;;
        *) echo "$v" ;;
    esac
}
size=$(to_bytes "$SIZE")
MiB=$((1 << 20))
stripe=$((512 * MiB))
if [ "$size" -lt "$stripe" ] || [ $((size % stripe)) -ne 0 ]; then die "SIZE must be a multiple of 512M"; fi

load_start=$(cut -d" " -f1-3 /proc/loadavg)
work=$(mktemp -d "$BENCH_TMPDIR/vmexport-bench-backup.XXXXXX")
bench_cleanup_at_exit
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# --- filesystems ----------------------------------------------------------------------------------
thick_zeros=$(to_bytes "$THICK_ZEROS")
srcdev="" dstdev=""
mkloop srcdev src $((size * 3 / 4 + 1024 * MiB + thick_zeros + 256 * MiB))
mkfs.xfs -q -f -m reflink=1 "$srcdev"
bench_mount "$srcdev" "$work/src"
mkloop dstdev dst $((size * 5 / 2 + 1024 * MiB))
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dstdev"
bench_mount "$dstdev" "$work/dst"

# --- source image -------------------------------------------------------------------------------
mkdir -p "$work/src/vms/bench"
src="$work/src/vms/bench/disk.raw"
truncate -s "$size" "$src"
t0=$EPOCHREALTIME
for ((s = 0; s < size; s += stripe)); do
    head -c $((128 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=$((s / MiB)) conv=notrunc status=none
    head -c $((48 * MiB)) /dev/urandom | base64 -w 76 >"$work/text.tmp"
    dd if="$work/text.tmp" of="$src" bs=1M count=64 seek=$((s / MiB + 128)) conv=notrunc status=none
    dd if=/dev/zero of="$src" bs=1M count=64 seek=$((s / MiB + 192)) conv=notrunc status=none
done
rm -f "$work/text.tmp"
sync
t1=$EPOCHREALTIME
allocated=$(($(stat -c '%b * %B' "$src")))
# a 256 MiB sample of the data for zstd -b1: 128 random + 64 text + 64 zeros
head -c $((256 * MiB)) "$src" >"$work/sample.bin"

# --- daemon (TLS) ---------------------------------------------------------------------------------
bench_start_daemon "$work" "$work/src/vms"
repo="$work/dst/repo"      # --transport https
repo_l="$work/dst/repo-local" # --transport local
"$VMEXPORT" repo init --chunk-size "$CHUNK_SIZE" "$repo" >/dev/null
"$VMEXPORT" repo init --chunk-size "$CHUNK_SIZE" "$repo_l" >/dev/null

# timed_v NAME COMMAND...: cold run under /usr/bin/time -v (then sync $SYNC_AFTER when set); stores seconds in T[NAME], peak RSS
# (KiB) in RSS[NAME]; stdout in $work/NAME.out
declare -A T RSS
timed_v() {
    local name=$1; shift
    drop_caches
    local t0 t1
    t0=$EPOCHREALTIME
    /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err" ||
        die "$name failed: $(tail -3 "$work/$name.err")"
    if [ -n "${SYNC_AFTER:-}" ]; then sync "$SYNC_AFTER"; fi
    t1=$EPOCHREALTIME
    T[$name]=$(secs "$t0" "$t1")
    RSS[$name]=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/$name.time")
    echo "  $name: ${T[$name]} s, max RSS ${RSS[$name]} KiB" >&2
}
# timed_copy NAME DST COMMAND...: cold runs + sync DST inside the timing, best of REPS; cmp
# with COPY_SRC (default $src; outside the timing) after the first
timed_copy() {
    local name=$1 dst=$2; shift 2
    local i t0 t1 t best=""
    for ((i = 0; i < REPS; i++)); do
        rm -f "$dst"; sync
        drop_caches
        t0=$EPOCHREALTIME
        "$@" >/dev/null 2>"$work/$name.err" || die "$name failed: $(tail -3 "$work/$name.err")"
        sync "$dst"
        t1=$EPOCHREALTIME
        t=$(secs "$t0" "$t1")
        if [ "$i" = 0 ]; then cmp "${COPY_SRC:-$src}" "$dst" || die "$name: copy differs"; fi
        rm -f "$dst"
        echo "  $name: $t s" >&2
        if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
    done
    T[$name]=$best
}
# full_backup NAME REPO TRANSPORT: best of REPS full backups, each into REPO made anew (the
# last one stays, as the base of the incremental); summary of the last in $work/NAME.out
full_backup() {
    local name=$1 rp=$2 tr=$3 i best="" bestrss=""
    for ((i = 0; i < REPS; i++)); do
        rm -rf "$rp"; "$VMEXPORT" repo init --chunk-size "$CHUNK_SIZE" "$rp" >/dev/null; sync
        timed_v "$name" "$VMEXPORT" backup bench --repo "$rp" --jobs "$JOBS" --transport "$tr" --json
        if [ -z "$best" ] || awk -v a="${T[$name]}" -v b="$best" 'BEGIN { exit !(a < b) }'; then
            best=${T[$name]}
        fi
        if [ -z "$bestrss" ] || [ "${RSS[$name]}" -gt "$bestrss" ]; then bestrss=${RSS[$name]}; fi
    done
    T[$name]=$best
    RSS[$name]=$bestrss # the peak over all runs
}

# --- full backup, copies ---------------------------------------------------------------------------
full_backup backup "$repo" https
summary_full=$(grep '"type":"summary"' "$work/backup.out" | tail -n1)
full_id=$(jq -r .backup <<<"$summary_full")
full_backup backup_l "$repo_l" local
summary_full_l=$(grep '"type":"summary"' "$work/backup_l.out" | tail -n1)
full_id_l=$(jq -r .backup <<<"$summary_full_l")
d="$work/dst/copy.raw"
timed_copy cp "$d" cp --sparse=always --reflink=never "$src" "$d"
timed_copy nbdcopy "$d" nbdcopy "$src" "$d"
timed_copy qemu-img "$d" qemu-img convert -f raw -O raw "$src" "$d"

# --- restore -----------------------------------------------------------------------------------------
r="$work/dst/restored.raw"
sync
SYNC_AFTER=$r timed_v restore "$VMEXPORT" restore --repo "$repo" "$full_id" --disk disk.raw --to "$r"
cmp "$src" "$r" || die "restored full backup differs"
restored_alloc=$(($(stat -c '%b * %B' "$r")))
rm -f "$r"
"$VMEXPORT" restore --repo "$repo_l" "$full_id_l" --disk disk.raw --to "$r" >/dev/null
cmp "$src" "$r" || die "restored full backup (local transport) differs"
rm -f "$r"

# --- download: the snapshot's disk into a directory over TLS (the 004 client's job) ---------------------
dl_snap=$("$VMEXPORT" snapshot create --json bench | jq -r .id)
dl="$work/dst/dl"
for ((i = 0; i < REPS; i++)); do
    rm -rf "$dl"; sync
    timed_v download "$VMEXPORT" download --jobs "$JOBS" -o "$dl" bench "$dl_snap"
    if [ -z "${T[download_best]:-}" ] || awk -v a="${T[download]}" -v b="${T[download_best]}" 'BEGIN { exit !(a < b) }'; then
        T[download_best]=${T[download]}
    fi
done
cmp "$src" "$dl/disk.raw" || die "downloaded disk differs"
rm -rf "$dl"
"$VMEXPORT" snapshot delete bench "$dl_snap" >/dev/null
T[download]=${T[download_best]}

# --- thick disk: written zeros ------------------------------------------------------------------------
if [ "$thick_zeros" -gt 0 ]; then
    mkdir -p "$work/src/vms/thick"
    thick="$work/src/vms/thick/disk.raw"
    { head -c $((256 * MiB)) /dev/urandom; head -c "$thick_zeros" /dev/zero; } >"$thick"
    sync
    for tr in https local; do
        rm -rf "$work/dst/repo-thick"
        "$VMEXPORT" repo init --chunk-size "$CHUNK_SIZE" "$work/dst/repo-thick" >/dev/null
        timed_v "thick_$tr" "$VMEXPORT" backup thick --repo "$work/dst/repo-thick" --jobs "$JOBS" --transport "$tr" --json
    done
    summary_thick=$(grep '"type":"summary"' "$work/thick_https.out" | tail -n1)
    "$VMEXPORT" restore --repo "$work/dst/repo-thick" "$(jq -r .backup <<<"$(grep '"type":"summary"' "$work/thick_local.out" | tail -n1)")" --disk disk.raw --to "$r" >/dev/null
    cmp "$thick" "$r" || die "restored thick disk differs"
    rm -f "$r"
    rm -rf "$work/dst/repo-thick"
    COPY_SRC=$thick timed_copy cp_thick "$d" cp --sparse=always --reflink=never "$thick" "$d"
fi

# --- incremental after CHANGE_PCT % ------------------------------------------------------------------
# INCR_REPS rounds, each changing CHANGE_PCT % more and backing up over both transports (each
# backup the base of the next); the median time counts.  One cold run moves by several points
# of the full backup's time from run to run.
nchange=$((size / MiB * CHANGE_PCT / 100))
RANDOM=4242
incr_runs="" incr_l_runs=""
for ((k = 0; k < INCR_REPS; k++)); do
    for ((i = 0; i < nchange; i++)); do
        off=$(((RANDOM * 32768 + RANDOM) % (size / MiB)))
        dd if=/dev/urandom of="$src" bs=1M count=1 seek="$off" conv=notrunc status=none
    done
    sync
    timed_v incr "$VMEXPORT" backup bench --repo "$repo" --jobs "$JOBS" --transport https --json
    summary_incr=$(grep '"type":"summary"' "$work/incr.out" | tail -n1)
    jq -e '.incremental == true' <<<"$summary_incr" >/dev/null || die "backup after the change was not incremental: $summary_incr"
    timed_v incr_l "$VMEXPORT" backup bench --repo "$repo_l" --jobs "$JOBS" --transport local --json
    summary_incr_l=$(grep '"type":"summary"' "$work/incr_l.out" | tail -n1)
    jq -e '.incremental == true' <<<"$summary_incr_l" >/dev/null || die "local backup after the change was not incremental: $summary_incr_l"
    incr_runs+="${T[incr]} "
    incr_l_runs+="${T[incr_l]} "
    for pair in "$repo:$summary_incr" "$repo_l:$summary_incr_l"; do
        "$VMEXPORT" restore --repo "${pair%%:*}" "$(jq -r .backup <<<"${pair#*:}")" --disk disk.raw --to "$r" >/dev/null
        cmp "$src" "$r" || die "restored incremental backup (${pair%%:*}) differs"
        rm -f "$r"
    done
done
T[incr]=$(median <<<"$incr_runs")
T[incr_l]=$(median <<<"$incr_l_runs")
repo_bytes=$(du -sb "$repo" | cut -f1)

# --- CPU limit: SHA-256 + zstd -1 on all cores ----------------------------------------------------------
ncpu=$(nproc)
sha_out=$(openssl speed -evp sha256 -multi "$ncpu" -seconds 3 -bytes 1048576 2>/dev/null)
# last line: "sha256  <kB/s for 1 MiB blocks>k"
sha_kbs=$(awk '/^(evp_)?sha256|^SHA256|^sha256/ { v = $NF } END { sub(/k$/, "", v); print v }' <<<"$sha_out")
[ -n "$sha_kbs" ] || die "cannot parse openssl speed output"
sha_mbs=$(awk -v k="$sha_kbs" 'BEGIN { printf "%.0f", k * 1000 / 1e6 }')
zstd_out=$(zstd -b1 -i3 "$work/sample.bin" 2>&1 | tr '\r' '\n' | grep -E 'MB/s' | tail -n1)
zstd_1=$(sed -E 's/.*\), *([0-9.]+) MB\/s.*/\1/' <<<"$zstd_out")
[ -n "$zstd_1" ] || die "cannot parse zstd -b1 output: $zstd_out"
zstd_mbs=$(awk -v z="$zstd_1" -v n="$ncpu" 'BEGIN { printf "%.0f", z * n }')
limit_mbs=$(awk -v s="$sha_mbs" -v z="$zstd_mbs" 'BEGIN { printf "%.0f", 1 / (1 / s + 1 / z) }')

# --- report ----------------------------------------------------------------------------------------
mbs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
echo "# vmexport backup/restore benchmark — $(date)"
echo "# $ncpu CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -r)"
echo "# SRC: XFS reflink loop ($srcdev), $size bytes logical, $allocated allocated (random/base64 text/zeros/hole); written in $(secs "$t0" "$t1") s"
echo "# destinations and repositories: ext4 loop ($dstdev), no reflink; repository chunk size $CHUNK_SIZE; backup --jobs $JOBS"
echo "# binaries: $VMEXPORT, $VMEXPORTD"
echo "# load average (1, 5, 15 min) at start: $load_start; at end: $(cut -d" " -f1-3 /proc/loadavg)"
echo "# every run cold (caches dropped); full backups and copies: best of $REPS; copies include sync DST; MB/s = 10^6 bytes/s"
echo
printf '| %-52s | %8s | %12s | %13s | %12s |\n' command seconds "MB/s logical" "MB/s data" "peak RSS"
printf '| %-52s | %8s | %12s | %13s | %12s |\n' --- ---: ---: ---: ---:
row() { # row LABEL NAME
    local rss="-"
    [ -n "${RSS[$2]:-}" ] && rss=$(awk -v k="${RSS[$2]}" 'BEGIN { printf "%.0f MiB", k / 1024 }')
    printf '| %-52s | %8.2f | %12s | %13s | %12s |\n' "$1" "${T[$2]}" "$(mbs "$size" "${T[$2]}")" "$(mbs "$allocated" "${T[$2]}")" "$rss"
}
row "vmexport backup (full, --transport https: TLS)" backup
row "vmexport backup (full, --transport local)" backup_l
row "cp --sparse=always --reflink=never" cp
row "nbdcopy SRC DST" nbdcopy
row "qemu-img convert -f raw -O raw" qemu-img
printf '| %-52s | %8s | %12s | %13s | %12s |\n' "SHA-256+zstd-1 limit ($sha_mbs + $zstd_mbs MB/s, $ncpu cores)" \
    "$(awk -v a="$allocated" -v l="$limit_mbs" 'BEGIN { printf "%.2f", a / l / 1e6 }')" "-" "$limit_mbs" "-"
row "vmexport backup (incremental, ${CHANGE_PCT}% changed, https; median)" incr
row "vmexport backup (incremental, ${CHANGE_PCT}% changed, local; median)" incr_l
row "vmexport restore --to FILE (+ sync FILE)" restore
row "vmexport download --jobs $JOBS (https, fsynced; best)" download
echo
if [ "$thick_zeros" -gt 0 ]; then
    thick_size=$((256 * MiB + thick_zeros))
    echo "thick disk ($((thick_size / MiB)) MiB: 256 MiB random data, then written zeros), full backup:"
    for n in thick_https thick_local cp_thick; do
        printf '  %-12s %6.2f s  %5s MB/s\n' "$n" "${T[$n]}" "$(mbs "$thick_size" "${T[$n]}")"
    done
    awk -v h="${T[thick_https]}" -v l="${T[thick_local]}" -v c="${T[cp_thick]}" \
        'BEGIN { printf "  backup / cp: https %.2fx, local %.2fx\n", c / h, c / l }'
    echo "  https summary: $(jq -c '{bytes_read, bytes_transferred, bytes_written, seconds}' <<<"$summary_thick")"
    echo
fi
for o in cp nbdcopy qemu-img; do
    awk -v o="$o" -v v="${T[backup]}" -v l="${T[backup_l]}" -v x="${T[$o]}" \
        'BEGIN { printf "backup / %-9s https %.2fx   local %.2fx\n", o, x / v, x / l }'
done
for b in backup backup_l; do
    awk -v b="$b" -v v="${T[$b]}" -v a="$allocated" -v l="$limit_mbs" 'BEGIN { printf "%-8s / CPU limit %.2fx (data MB/s %.0f of %.0f)\n", b, a / v / 1e6 / l, a / v / 1e6, l }'
done
awk -v f="${T[backup]}" -v i="${T[incr]}" 'BEGIN { printf "incremental / full time, https: %.1f%%\n", 100 * i / f }'
awk -v f="${T[backup_l]}" -v i="${T[incr_l]}" 'BEGIN { printf "incremental / full time, local: %.1f%%\n", 100 * i / f }'
echo "incremental runs (s): https $incr_runs; local $incr_l_runs"
awk -v r="${T[restore]}" -v c="${T[cp]}" 'BEGIN { printf "restore / cp --sparse=always (the copy above) %.2fx\n", c / r }'
awk -v d="${T[download]}" -v c="${T[cp]}" -v n="${T[nbdcopy]}" 'BEGIN { printf "download / cp %.2fx, / nbdcopy %.2fx\n", c / d, n / d }'
echo
for sm in "$summary_full" "$summary_full_l" "$summary_incr" "$summary_incr_l"; do
    echo "summary: $(jq -c '{incremental, transport, bytes_read, bytes_transferred, bytes_written, chunks_new, chunks_reused, chunks_fetched, seconds}' <<<"$sm")"
done
echo "changed: $INCR_REPS x $nchange x 1 MiB random writes; repository size after all: $((repo_bytes / MiB)) MiB; restored file allocated $((restored_alloc / MiB)) MiB"
