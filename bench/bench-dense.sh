#!/bin/bash
# Benchmark: a dense disk of real files — vmexport backup (full, incremental after an update of
# the files) and restore against restic and borg backing up the same raw image, with the
# repository sizes (issue 19: "dense data keeps its lead").
#
# Source: an ext4 image made with `mkfs.ext4 -d` from a directory holding DATA (default 2400M,
# counted in 4 KiB blocks) of real files copied from FILES_FROM (default /usr/lib /usr/share
# /usr/bin; files under 64 MiB, in path order), IMG_SIZE (default DATA + 15% + 192 MiB) big,
# the disk of VM `dense` on a loop XFS (reflink=1, direct-I/O loop) served by vmexportd over TLS
# on 127.0.0.1.  Repositories and restores are on a loop ext4 (no reflink).  Page cache dropped
# before every timed run; every backup and restore ends with a `sync` of its destination inside
# the timing.  Timed (seconds and peak RSS, /usr/bin/time -f '%e %M'), side by side:
#     vmexport backup dense --transport https      full, then incremental, into repository H
#     vmexport backup dense --transport local      the same into repository L (reads the snapshot
#                                                  file, as restic and borg read the image)
#     the same with a repository made with --encrypt (restic always encrypts)
#     restic backup IMAGE                          restic's defaults (repository v2, zstd auto)
#     borg create R::NAME IMAGE                    borg init -e none, --compression BORG_COMPRESSION
#   the update between full and incremental: the image is mounted (loop) and, in path order,
#   every 100th file gets its first 4 KiB overwritten, every 100th (+50) 8 KiB appended, every
#   100th (+25) is deleted, and UPDATE_ADD (64M) of further real files is added; then unmounted.
#   restore of the incremental: vmexport restore --to FILE, restic restore latest --target DIR,
#   borg extract; each compared with the image with cmp (out of the timing).
# vmexport's incrementals read only the changed blocks (the server's snapshot diff); restic and
# borg read the whole image again and deduplicate it with content-defined chunks.  Ratios: the
# other tool's time / vmexport's (above 1: vmexport is faster); sizes: vmexport's / the other's.
# This is a benchmark, not a test: it fails only if a tool fails or a restore differs.
#
# Run as root (loop devices, mount, drop_caches): bench/bench-dense.sh
#     DATA=300M UPDATE_ADD=16M bench/bench-dense.sh            # quick run
# Needs restic and borg (Debian packages restic, borgbackup: installed here when missing).
# Environment: DATA (2400M), IMG_SIZE (DATA + 15% + 192M), FILES_FROM, UPDATE_ADD (64M), JOBS
# (backup/restore --jobs, 4), BORG_COMPRESSION (lz4, borg's default), ENCRYPTED (1: also time an
# encrypted vmexport repository; 0: not), VMEXPORT, VMEXPORTD (default build/...), BENCH_TMPDIR
# (default /var/tmp).  Only the CLI and the daemon are used, so any build can be measured.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(dirname "$here")
VMEXPORT=${VMEXPORT:-$root/build/vmexport}
VMEXPORTD=${VMEXPORTD:-$root/build/vmexportd}
DATA=${DATA:-2400M}
FILES_FROM=${FILES_FROM:-/usr/lib /usr/share /usr/bin}
UPDATE_ADD=${UPDATE_ADD:-64M}
JOBS=${JOBS:-4}
BORG_COMPRESSION=${BORG_COMPRESSION:-lz4}
ENCRYPTED=${ENCRYPTED:-1}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}

die() { echo "bench-dense: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (loop devices, mount, drop_caches)"
for t in openssl curl jq losetup mount mkfs.xfs mkfs.ext4 ss tar cmp; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
[ -x /usr/bin/time ] || die "missing /usr/bin/time (apt-get install time)"
[ -x "$VMEXPORT" ] && [ -x "$VMEXPORTD" ] || die "build first: ninja -C build"
bench_install restic restic
bench_install borgbackup borg

MiB=$((1 << 20))
data=$(to_bytes "$DATA")
update_add=$(to_bytes "$UPDATE_ADD")
img_size=$(to_bytes "${IMG_SIZE:-$((data + data * 15 / 100 + 192 * MiB))}")
img_size=$((img_size / MiB * MiB))

load_start=$(cut -d" " -f1-3 /proc/loadavg)
work=$(mktemp -d "$BENCH_TMPDIR/vmexport-bench-dense.XXXXXX")
bench_cleanup_at_exit
img_loop="" img_mnt=""
bench_cleanup_extra() { # the image's loop mount, when the run stops while it is mounted
    if [ -n "$img_mnt" ]; then umount "$img_mnt" || umount -l "$img_mnt"; fi
    if [ -n "$img_loop" ]; then losetup -d "$img_loop"; fi
}
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# --- filesystems ------------------------------------------------------------------------------------
srcdev="" dstdev=""
mkloop srcdev src $((img_size * 2 + 1024 * MiB))
mkfs.xfs -q -f -m reflink=1 "$srcdev"
bench_mount "$srcdev" "$work/src"
mkloop dstdev dst $((img_size * 6 + 2048 * MiB))
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dstdev"
bench_mount "$dstdev" "$work/dst"

# --- the image ----------------------------------------------------------------------------------------
# file lists, in path order: list.base (DATA, in 4 KiB blocks) and list.add (UPDATE_ADD)
t0=$EPOCHREALTIME
# shellcheck disable=SC2086 # FILES_FROM is a list of directories
find $FILES_FROM -xdev -type f -size -64M -readable -printf '%s\t%P\t%H\n' 2>/dev/null |
    LC_ALL=C sort -t "$(printf '\t')" -k3,3 -k2,2 |
    awk -F'\t' -v d="$data" -v a="$update_add" -v base="$work/list.base" -v add="$work/list.add" '
        { b = int(($1 + 4095) / 4096) * 4096; p = $3 "/" $2; sub(/^\//, "", p) }
        n < d { n += b; print p > base; next }
        m < a { m += b; print p > add }'
[ -s "$work/list.base" ] && [ -s "$work/list.add" ] || die "not enough files under $FILES_FROM"
mkdir "$work/tree"
tar -C / -cf - --no-recursion -T "$work/list.base" | tar -C "$work/tree" -xf -
nfiles=$(wc -l <"$work/list.base")
mkdir -p "$work/src/vms/dense"
img="$work/src/vms/dense/disk.raw"
mkfs.ext4 -q -F -d "$work/tree" -E lazy_itable_init=0,lazy_journal_init=0 "$img" $((img_size / 1024))k \
    >"$work/mkfs.log" 2>&1 || die "mkfs.ext4 -d: $(tail -3 "$work/mkfs.log")"
rm -rf "$work/tree"
sync
t1=$EPOCHREALTIME
img_alloc=$(($(stat -c '%b * %B' "$img")))
echo "# image: $img_size bytes, $img_alloc allocated, $nfiles files ($(secs "$t0" "$t1") s)" >&2

# update_image: mount the image and change it (see the header); then unmount
update_image() {
    img_loop=$(losetup -f --show "$img")
    img_mnt="$work/imgmnt"
    mkdir -p "$img_mnt"
    mount -t ext4 "$img_loop" "$img_mnt"
    local i=0 f
    while IFS= read -r f; do
        f="$img_mnt/$f"
        case $((i % 100)) in
            0) head -c 4096 /dev/urandom | dd of="$f" bs=4096 count=1 conv=notrunc status=none ;;
            25) rm -f "$f" ;;
            50) head -c 8192 /dev/urandom >>"$f" ;;
        esac
        i=$((i + 1))
    done <"$work/list.base"
    mkdir "$img_mnt/added"
    tar -C / -cf - --no-recursion -T "$work/list.add" | tar -C "$img_mnt/added" -xf -
    umount "$img_mnt"
    img_mnt=""
    losetup -d "$img_loop"
    img_loop=""
    sync
}

# --- tools, repositories ----------------------------------------------------------------------------
bench_start_daemon "$work" "$work/src/vms"
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/restic-cache
export BORG_BASE_DIR=$work/borg-base BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
repo_h="$work/dst/vmexport-https"
repo_l="$work/dst/vmexport-local"
repo_e="$work/dst/vmexport-encrypted"
repo_r="$work/dst/restic"
repo_b="$work/dst/borg"
"$VMEXPORT" repo init "$repo_h" >/dev/null
"$VMEXPORT" repo init "$repo_l" >/dev/null
# only the encrypted repository's commands get a passphrase (the others refuse one)
if [ "$ENCRYPTED" = 1 ]; then VMEXPORT_PASSPHRASE=bench "$VMEXPORT" repo init --encrypt "$repo_e" >/dev/null; fi
restic init --repo "$repo_r" >"$work/restic-init.log" 2>&1 || die "restic init: $(tail -2 "$work/restic-init.log")"
borg init -e none "$repo_b" >"$work/borg-init.log" 2>&1 || die "borg init: $(tail -2 "$work/borg-init.log")"

# timed NAME SYNC_DIR COMMAND...: a cold run under /usr/bin/time (in the directory $TIMED_CWD
# when set), then sync -f SYNC_DIR, both timed; seconds in T[NAME], peak RSS (KiB) in
# RSS[NAME]; stdout in $work/NAME.out
declare -A T RSS SZ
timed() {
    local name=$1 sd=$2; shift 2
    drop_caches
    local t0 t1
    t0=$EPOCHREALTIME
    (if [ -n "${TIMED_CWD:-}" ]; then cd "$TIMED_CWD"; fi
        exec /usr/bin/time -f '%e %M' -o "$work/$name.time" "$@") >"$work/$name.out" 2>"$work/$name.err" ||
        die "$name failed: $(tail -3 "$work/$name.err")"
    sync -f "$sd"
    t1=$EPOCHREALTIME
    T[$name]=$(secs "$t0" "$t1")
    RSS[$name]=$(awk '{ v = $2 } END { print v }' "$work/$name.time")
    echo "  $name: ${T[$name]} s, peak RSS $((RSS[$name] / 1024)) MiB" >&2
}
summary() { grep '"type":"summary"' "$work/$1.out" | tail -n1; }
# backups LEVEL: every tool's backup of the image at LEVEL (full or incr)
backups() {
    local lv=$1
    timed "vh_$lv" "$repo_h" "$VMEXPORT" backup dense --repo "$repo_h" --jobs "$JOBS" --transport https --json
    timed "vl_$lv" "$repo_l" "$VMEXPORT" backup dense --repo "$repo_l" --jobs "$JOBS" --transport local --json
    if [ "$ENCRYPTED" = 1 ]; then
        timed "ve_$lv" "$repo_e" env VMEXPORT_PASSPHRASE=bench "$VMEXPORT" backup dense --repo "$repo_e" --jobs "$JOBS" --transport local --json
    fi
    local want=false
    [ "$lv" = incr ] && want=true
    for n in vh vl $([ "$ENCRYPTED" = 1 ] && echo ve); do
        jq -e ".incremental == $want" <<<"$(summary "${n}_$lv")" >/dev/null ||
            die "$n $lv backup: incremental is not $want: $(summary "${n}_$lv")"
    done
    timed "restic_$lv" "$repo_r" restic --repo "$repo_r" backup "$img"
    TIMED_CWD=$(dirname "$img") timed "borg_$lv" "$repo_b" \
        borg create --compression "$BORG_COMPRESSION" "$repo_b::$lv" disk.raw
    local r
    for r in h l e r b; do
        case $r in
            h) SZ[${r}_$lv]=$(du -sb "$repo_h" | cut -f1) ;;
            l) SZ[${r}_$lv]=$(du -sb "$repo_l" | cut -f1) ;;
            e) [ "$ENCRYPTED" = 1 ] && SZ[${r}_$lv]=$(du -sb "$repo_e" | cut -f1) ;;
            r) SZ[${r}_$lv]=$(du -sb "$repo_r" | cut -f1) ;;
            b) SZ[${r}_$lv]=$(du -sb "$repo_b" | cut -f1) ;;
        esac
    done
}

echo "# full backups ..." >&2
backups full
echo "# update: every 100th file overwritten / appended / deleted, $UPDATE_ADD added ..." >&2
update_image
echo "# incremental backups ..." >&2
backups incr

echo "# restores ..." >&2
rdir="$work/dst/restore"
mkdir -p "$rdir"
id=$(jq -r .backup <<<"$(summary vl_incr)")
timed v_restore "$rdir" "$VMEXPORT" restore --repo "$repo_l" "$id" --disk disk.raw --jobs "$JOBS" --to "$rdir/disk.raw"
cmp "$img" "$rdir/disk.raw" || die "vmexport's restore differs from the image"
rm -rf "$rdir" && mkdir -p "$rdir"
timed restic_restore "$rdir" restic --repo "$repo_r" restore latest --target "$rdir"
cmp "$img" "$rdir$img" || die "restic's restore differs from the image"
rm -rf "$rdir" && mkdir -p "$rdir"
TIMED_CWD=$rdir timed borg_restore "$rdir" borg extract "$repo_b::incr"
cmp "$img" "$rdir/disk.raw" || die "borg's restore differs from the image"
rm -rf "$rdir"

# --- report ------------------------------------------------------------------------------------------
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
kmib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
echo "# vmexport dense-image benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -r)"
echo "# image: ext4 (mkfs.ext4 -d) of $nfiles real files from $FILES_FROM, $((img_size / MiB)) MiB, $((img_alloc / MiB)) MiB allocated, on an XFS reflink loop"
echo "# update: $((nfiles / 100)) files overwritten, appended and deleted each, $(wc -l <"$work/list.add") files ($UPDATE_ADD) added"
echo "# repositories and restores: ext4 loop; vmexport --jobs $JOBS (1 MiB chunks, zstd 1); $(restic version | head -n1 | cut -d' ' -f1-2) (defaults); $(borg --version) (-e none, --compression $BORG_COMPRESSION)"
echo "# binaries: $VMEXPORT ($("$VMEXPORT" --version 2>&1 | head -n1)), $VMEXPORTD"
echo "# load average (1, 5, 15 min) at start: $load_start; at end: $(cut -d" " -f1-3 /proc/loadavg)"
echo "# every run cold (caches dropped), one run each; backups and restores include a sync of the destination"
echo
printf '| %-38s | %9s | %9s | %9s | %10s | %10s | %16s |\n' tool "full (s)" "incr (s)" "restore" "repo full" "repo +incr" "peak RSS f/i/r"
printf '| %-38s | %9s | %9s | %9s | %10s | %10s | %16s |\n' --- ---: ---: ---: ---: ---: ---:
line() { # line LABEL FULL INCR RESTORE SIZEKEY
    local rs="-" rr="-"
    [ -n "$4" ] && rs=${T[$4]} && rr=$(kmib "${RSS[$4]}")
    printf '| %-38s | %9s | %9s | %9s | %6s MiB | %6s MiB | %16s |\n' "$1" "${T[$2]}" "${T[$3]}" "$rs" \
        "$(mib "${SZ[${5}_full]}")" "$(mib "${SZ[${5}_incr]}")" "$(kmib "${RSS[$2]}") / $(kmib "${RSS[$3]}") / $rr"
}
line "vmexport, --transport local" vl_full vl_incr v_restore l
line "vmexport, --transport https" vh_full vh_incr "" h
if [ "$ENCRYPTED" = 1 ]; then line "vmexport, local, encrypted repository" ve_full ve_incr "" e; fi
line "restic" restic_full restic_incr restic_restore r
line "borg ($BORG_COMPRESSION)" borg_full borg_incr borg_restore b
echo
for o in restic borg; do
    awk -v o="$o" -v f="${T[vl_full]}" -v i="${T[vl_incr]}" -v r="${T[v_restore]}" \
        -v of="${T[${o}_full]}" -v oi="${T[${o}_incr]}" -v or="${T[${o}_restore]}" \
        'BEGIN { printf "%-6s time / vmexport local: full %.2fx, incremental %.2fx, restore %.2fx\n", o, of / f, oi / i, or / r }'
done
for o in restic borg; do
    k=${o:0:1}
    awk -v o="$o" -v v="${SZ[l_full]}" -v vi="${SZ[l_incr]}" -v x="${SZ[${k}_full]}" -v xi="${SZ[${k}_incr]}" \
        'BEGIN { printf "repository size vmexport / %-6s: after full %.2fx, after incremental %.2fx\n", o, v / x, vi / xi }'
done
for n in vl_full vh_full vl_incr vh_incr; do
    echo "summary $n: $(jq -c '{incremental, transport, bytes_read, bytes_written, chunks_new, chunks_reused, seconds}' <<<"$(summary "$n")")"
done
