#!/bin/bash
# Scale (issue 19): a 64 TiB sparse raw disk with a few thousand scattered extents (about 45 MiB
# of data), served by the real daemon: a full backup, an incremental after a few hundred
# changed extents, restores of both compared extent by extent (SEEK_DATA/SEEK_HOLE maps of both
# files, the data ranges compared byte for byte: never a read of 64 TiB), verify, prune and gc,
# each with its peak RSS under 128 MiB (the ASan build's RSS is inflated by its shadow memory:
# the RSS checks are skipped there).  Also: two VMs with the same data share every chunk, and
# one byte changed changes exactly one chunk ID.
source "$(dirname "$0")/lib.sh"
require_root

TIB=$((1 << 40))
MIB=$((1 << 20))
RSS_MAX_KIB=$((128 * 1024))
EXTENTS=3000
CHANGED=300
ASAN=0
ldd "$VMEXPORT" 2>/dev/null | grep -q libasan && ASAN=1

make_fs xfs 700 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/big" "$VMS/twin1" "$VMS/twin2"
BIG=$VMS/big/disk.raw

# write_extents FILE SEED N SIZES LOG [REWRITE]: N extents of random data at random 4 KiB-aligned
# offsets (sizes in 4 KiB blocks picked from SIZES), the file truncated to 64 TiB first; the
# offsets are appended to LOG.  With REWRITE, the first REWRITE of them go to offsets LOG
# already lists instead (data changed where there was data).
write_extents() {
    python3 - "$@" <<'EOF'
import os, random, sys
path, seed, n, sizes, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rewrite = int(sys.argv[6]) if len(sys.argv) > 6 else 0
size = 64 << 40
rng = random.Random(seed)
blocks = [int(b) for b in sizes.split(",")]
old = [int(x) for x in open(log)] if rewrite else []
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
if os.fstat(fd).st_size != size:
    os.ftruncate(fd, size)
with open(log, "a") as out:
    for i in range(n):
        nb = rng.choice(blocks)
        if i < rewrite:
            off = min(old[i], size - nb * 4096)
        else:
            off = rng.randrange(0, size // 4096 - nb) * 4096
        os.pwrite(fd, rng.randbytes(nb * 4096), off)
        out.write("%d\n" % off)
os.fsync(fd)
os.close(fd)
EOF
}

# same_content A B: the two files have the same size and the same bytes, compared over the
# union of their data extents (SEEK_DATA/SEEK_HOLE); everything else is a hole in both.
# Prints the number of data extents of A and the bytes compared.
same_content() {
    python3 - "$1" "$2" <<'EOF'
import os, sys
def extents(fd, size):
    out, off = [], 0
    while off < size:
        try:
            s = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        e = os.lseek(fd, s, os.SEEK_HOLE)
        out.append((s, e))
        off = e
    return out
a, b = (os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in sys.argv[1:3])
size = os.fstat(a).st_size
if os.fstat(b).st_size != size:
    sys.exit("sizes differ: %d %d" % (size, os.fstat(b).st_size))
ea, eb = extents(a, size), extents(b, size)
ranges = sorted(ea + eb)
compared = 0
end = 0
for s, e in ranges:
    s = max(s, end)
    while s < e:
        n = min(e - s, 1 << 20)
        x, y = os.pread(a, n, s), os.pread(b, n, s)
        if x != y:
            sys.exit("bytes differ in [%d, %d)" % (s, s + n))
        compared += n
        s += n
    end = max(end, e)
print(len(ea), compared)
EOF
}

# rss_ok WHAT FILE: the peak RSS /usr/bin/time wrote to FILE (KiB) is under the bound.
rss_ok() {
    local kib
    kib=$(tail -1 "$2")
    if [ "$ASAN" = 1 ]; then
        skip "$1: peak RSS ${kib} KiB not checked (ASan's shadow memory inflates RSS)"
    else
        check "$1: peak RSS ${kib} KiB < $RSS_MAX_KIB KiB" test "$kib" -lt "$RSS_MAX_KIB"
    fi
}

write_extents "$BIG" 1919 "$EXTENTS" 1,2,4,8 "$WORK/extents.txt"
# The twins: the same 8 MiB of data; twin2 later differs in one byte.
head -c $((8 * MIB)) /dev/urandom >"$VMS/twin1/d.raw"
cp "$VMS/twin1/d.raw" "$VMS/twin2/d.raw"
sync

start_dir_daemon local "$VMS"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
REPO=$WORK/repo
check "repo init" "$VMEXPORT" repo init "$REPO"

# timed NAME CMD...: run CMD under /usr/bin/time (peak RSS in $WORK/NAME.rss), its output in
# $WORK/NAME.out and .err.
timed() {
    local name=$1; shift
    /usr/bin/time -f %M -o "$WORK/$name.rss" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
}
summary() { grep '"type":"summary"' "$WORK/$1.out" | tail -1; }

# --- full backup ---
# Copies and restores live on the XFS too: 64 TiB files need a filesystem that takes them.
OUT=$XFS/out
mkdir -p "$OUT"
cp --reflink=always "$BIG" "$OUT/gen1.raw"
if timed full "$VMEXPORT" backup big --repo "$REPO" --json; then
    FULL_ID=$(summary full | jq -r .backup)
    ok "full backup of the 64 TiB disk ($(summary full | jq -c '{incremental, bytes_read, chunks_new, seconds}'))"
    rss_ok "full backup" "$WORK/full.rss"
    check "  read no more than the data extents (under 64 MiB)" \
        test "$(summary full | jq .bytes_read)" -lt $((64 * MIB))
else
    not_ok "full backup: $(tail -3 "$WORK/full.err")"
fi

# --- incremental: a few hundred extents of 64 KiB, half over data, half new ---
write_extents "$BIG" 2020 "$CHANGED" 16 "$WORK/extents.txt" $((CHANGED / 2))
sync
if timed incr "$VMEXPORT" backup big --repo "$REPO" --json; then
    INCR_ID=$(summary incr | jq -r .backup)
    ok "incremental backup ($(summary incr | jq -c '{incremental, bytes_read, chunks_new, chunks_reused, seconds}'))"
    check "  is incremental" jq -e '.incremental == true' <(summary incr)
    # Every changed 64 KiB extent is read at most with its chunk (1 MiB) around it.
    check "  read about the change, not the data (<= $CHANGED MiB)" \
        test "$(summary incr | jq .bytes_read)" -le $((CHANGED * MIB))
    rss_ok "incremental backup" "$WORK/incr.rss"
else
    not_ok "incremental backup: $(tail -3 "$WORK/incr.err")"
fi

# --- restores, compared extent by extent ---
restore_check() { # NAME BACKUP_ID REFERENCE
    if timed "$1" "$VMEXPORT" restore --repo "$REPO" "$2" --to "$OUT/$1.raw"; then
        local r
        if r=$(same_content "$3" "$OUT/$1.raw" 2>&1); then
            ok "$1: the restored 64 TiB file equals the disk (extents, bytes compared: $r)"
        else
            not_ok "$1: the restored file differs: $r"
        fi
        local alloc=$(($(stat -c %b "$OUT/$1.raw") * 512))
        check "  and is sparse ($alloc bytes allocated)" test "$alloc" -lt $((128 * MIB))
        rss_ok "$1" "$WORK/$1.rss"
    else
        not_ok "$1: $(tail -3 "$WORK/$1.err")"
    fi
    rm -f "$OUT/$1.raw"
}
restore_check restore-full "$FULL_ID" "$OUT/gen1.raw"
restore_check restore-incr "$INCR_ID" "$BIG"

# --- verify, prune, gc ---
if timed verify "$VMEXPORT" verify --repo "$REPO"; then
    ok "verify: every chunk of both backups checks"
    rss_ok "verify" "$WORK/verify.rss"
else
    not_ok "verify: $(tail -3 "$WORK/verify.err")"
fi
if timed prune "$VMEXPORT" prune --repo "$REPO" big --keep-last 1; then
    rss_ok "prune" "$WORK/prune.rss"
    "$VMEXPORT" backups --repo "$REPO" big --json >"$WORK/list.json"
    check "prune kept the incremental only" jq -e --arg id "$INCR_ID" \
        'length == 1 and .[0].id == $id' "$WORK/list.json"
else
    not_ok "prune: $(tail -3 "$WORK/prune.err")"
fi
if timed gc "$VMEXPORT" gc --repo "$REPO" --json; then
    ok "gc ($(tail -1 "$WORK/gc.out" | jq -c . 2>/dev/null))"
    # The full backup's versions of the rewritten chunks went with it.
    check "  deleted the chunks only the pruned backup used" \
        jq -e '.chunks_deleted >= 100' <(tail -1 "$WORK/gc.out")
    rss_ok "gc" "$WORK/gc.rss"
else
    not_ok "gc: $(tail -3 "$WORK/gc.err")"
fi
restore_check restore-after-gc "$INCR_ID" "$BIG"
check "verify after gc" "$VMEXPORT" verify --repo "$REPO"

# --- dedup across VMs, and one byte: one chunk ---
TREPO=$WORK/trepo
check "repo init (twins)" "$VMEXPORT" repo init "$TREPO"
tb() { "$VMEXPORT" backup "$1" --repo "$TREPO" --json >"$WORK/$2.out" 2>"$WORK/$2.err"; }
if tb twin1 t1 && tb twin2 t2; then
    n1=$(summary t1 | jq .chunks_new)
    check "twin1: 8 chunks stored" test "$n1" = 8
    check "twin2, the same data: no new chunk, all 8 shared" \
        jq -e '.chunks_new == 0 and .chunks_reused == 8' <(summary t2)
else
    not_ok "twin backups: $(tail -2 "$WORK/t1.err" "$WORK/t2.err")"
fi
# One byte of twin2 changed (in its sixth chunk).
printf '\x5a' | dd of="$VMS/twin2/d.raw" bs=1 seek=$((5 * MIB + 12345)) conv=notrunc status=none
cmp -s "$VMS/twin1/d.raw" "$VMS/twin2/d.raw" && printf '\xa5' |
    dd of="$VMS/twin2/d.raw" bs=1 seek=$((5 * MIB + 12345)) conv=notrunc status=none
sync
if tb twin2 t3; then
    check "one byte changed: exactly one new chunk, 7 kept" \
        jq -e '.chunks_new == 1 and .chunks_reused == 7' <(summary t3)
    T1=$(summary t1 | jq -r .backup) T3=$(summary t3 | jq -r .backup)
    "$VMEXPORT" backups --repo "$TREPO" --chunks "$T1" >"$WORK/c1.txt" 2>"$WORK/c1.err"
    "$VMEXPORT" backups --repo "$TREPO" --chunks "$T3" >"$WORK/c3.txt" 2>"$WORK/c3.err"
    check "the chunk listing of both backups names 8 chunks each" \
        test "$(wc -l <"$WORK/c1.txt")" = 8 -a "$(wc -l <"$WORK/c3.txt")" = 8
    diff "$WORK/c1.txt" "$WORK/c3.txt" | grep '^[<>]' >"$WORK/cdiff.txt"
    check "exactly one chunk ID differs, the one at offset $((5 * MIB))" \
        test "$(grep -c '^<' "$WORK/cdiff.txt")" = 1 -a "$(grep -c '^>' "$WORK/cdiff.txt")" = 1 \
        -a "$(awk '{print $3}' "$WORK/cdiff.txt" | sort -u)" = $((5 * MIB))
else
    not_ok "twin2 backup after a one-byte change: $(tail -2 "$WORK/t3.err")"
fi

