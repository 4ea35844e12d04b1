#!/bin/bash
# The map, clone and diff commands: output shapes, modes, errors, exit codes, help.
source "$(dirname "$0")/lib.sh"
require_root

# expect_exit CODE DESCRIPTION COMMAND...: exit status must be CODE.
expect_exit() {
    local want=$1 what=$2; shift 2
    "$@" >"$WORK/out" 2>"$WORK/err"
    local rc=$?
    if [ "$rc" -eq "$want" ]; then ok "$what"; else not_ok "$what (exit $rc, want $want): $(head -2 "$WORK/err")"; fi
}

# --- help and usage ---
for c in map clone diff; do
    expect_exit 0 "$c --help exits 0" "$VMEXPORT" "$c" --help
    check "$c --help documents the exit status" grep -q "Exit status" "$WORK/out"
    expect_exit 2 "$c with no arguments is a usage error (2)" "$VMEXPORT" "$c"
done
expect_exit 0 "vmexport --help" "$VMEXPORT" --help
check "--help lists the commands" grep -q "clone" "$WORK/out"
expect_exit 2 "unknown command is a usage error" "$VMEXPORT" frobnicate
# An option error is said once, by vmexport, naming the option (getopt stays silent).
expect_exit 2 "an option a command does not take is a usage error" "$VMEXPORT" backups --jobs 2
check "one message naming the unknown option" \
    test "$(grep -c "option" "$WORK/err")" = 1 -a "$(grep -c "unknown option '--jobs'" "$WORK/err")" = 1
expect_exit 2 "a missing value is a usage error" "$VMEXPORT" backups --repo
check "the message names the option that needs a value" grep -q "option '--repo' needs a value" "$WORK/err"
expect_exit 2 "an unknown short option is a usage error" "$VMEXPORT" map -Z x
check "the message names the short option" grep -q "unknown option '-Z'" "$WORK/err"
expect_exit 2 "bad --mode is a usage error" "$VMEXPORT" clone --mode fast a b
check "bad --mode message names the choices" grep -q "auto, reflink or copy" "$WORK/err"

make_fs xfs 400 XFS || { not_ok "create xfs"; exit 1; }
make_fs ext4 200 EXT4 || { not_ok "create ext4"; exit 1; }

# --- map ---
truncate -s 16M "$XFS/img"
dd if=/dev/urandom of="$XFS/img" bs=64K count=4 seek=10 conv=notrunc status=none
fallocate -l 1M -o 8M --keep-size "$XFS/img"   # unwritten: not data
sync
expect_exit 0 "map --json on xfs" "$VMEXPORT" map --json "$XFS/img"
check "map --json is valid JSON with the documented fields" \
    jq -e '(.size == 16777216) and (.block_size == 4096) and (.extents | length == 1)
           and (.extents[0] | .start == 655360 and .length == 262144 and (.physical_start | type == "number") and .shared == false)' "$WORK/out"
expect_exit 0 "map --all lists unwritten extents" "$VMEXPORT" map --json --all "$XFS/img"
check "unwritten extent marked" jq -e '[.extents[] | select(.unwritten)] | length == 1' "$WORK/out"
cp --reflink=always "$XFS/img" "$XFS/img2"
"$VMEXPORT" map --json "$XFS/img2" >"$WORK/out"
check "shared flag after a reflink copy" jq -e '.extents[0].shared == true' "$WORK/out"

mkdir -p "$WORK/tmpfs" && mount -t tmpfs -o size=64M tmpfs "$WORK/tmpfs" && at_exit "umount $WORK/tmpfs"
truncate -s 4M "$WORK/tmpfs/img"
dd if=/dev/urandom of="$WORK/tmpfs/img" bs=4K count=2 seek=100 conv=notrunc status=none
expect_exit 0 "map on tmpfs (no FIEMAP) falls back to SEEK_DATA" "$VMEXPORT" map --json "$WORK/tmpfs/img"
check "fallback map: method seek, the data range" \
    jq -e '.method == "seek" and (.extents | length == 1) and .extents[0].start == 409600 and .extents[0].length == 8192' "$WORK/out"

expect_exit 1 "map of a missing file fails (1)" "$VMEXPORT" map "$XFS/nope"
check "error names the file and the cause" grep -q "$XFS/nope: No such file or directory" "$WORK/err"
expect_exit 1 "map of a directory fails" "$VMEXPORT" map "$XFS"
check "directory error is clear" grep -q "not a regular file" "$WORK/err"

# --- clone ---
expect_exit 0 "clone --mode reflink on xfs" "$VMEXPORT" clone --json --mode reflink "$XFS/img" "$XFS/c1"
check "reflink clone reported" jq -e '.mode == "reflink"' "$WORK/out"
check "reflink clone is identical" cmp -s "$XFS/img" "$XFS/c1"
check "reflink clone has no sidecar" test ! -e "$XFS/c1.vxhash"

cp "$XFS/img" "$EXT4/img"
expect_exit 1 "clone --mode reflink on ext4 fails" "$VMEXPORT" clone --mode reflink "$EXT4/img" "$EXT4/c1"
check "message says reflink is not supported on ext4" grep -q "reflink not supported on ext4" "$WORK/err"
check "failed reflink leaves no DST" test ! -e "$EXT4/c1"
check "failed reflink leaves no temporary file" bash -c "! ls -a '$EXT4' | grep -q vxtmp"
expect_exit 1 "clone --mode reflink across filesystems fails" "$VMEXPORT" clone --mode reflink "$XFS/img" "$EXT4/x"
check "message says different filesystems" grep -q "different filesystems" "$WORK/err"
check "cross-filesystem reflink leaves no DST" test ! -e "$EXT4/x"

expect_exit 0 "clone auto on ext4 copies" "$VMEXPORT" clone --json "$EXT4/img" "$EXT4/c2"
check "auto on ext4 is a copy that wrote only data" jq -e '.mode == "copy" and .bytes_written == 262144' "$WORK/out"
check "copy is identical" cmp -s "$EXT4/img" "$EXT4/c2"
check "copy has a sidecar" test -s "$EXT4/c2.vxhash"
check "copy stays sparse" test "$(du -k "$EXT4/c2" | cut -f1)" -le 300

# The copy hashes in worker threads and writes out of order; the sidecar must still hold the
# digest of every block in file order.  Check each digest against Python's xxhash (Debian's
# python3-xxhash, for Debian's /usr/bin/python3) or hashlib for layouts that cross many pipeline
# slots: data runs, whole-block holes between them, a block that is part hole, written zeros, a
# partial last block of data, and a tail that is a hole.
check_sidecar() { # FILE [ALGO]: the sidecar of FILE has the ALGO (xxh128) of every 64 KiB block
    /usr/bin/python3 - "$1" "${2:-xxh128}" <<'PY'
import hashlib, struct, sys, xxhash
path, algo = sys.argv[1], sys.argv[2]
side = open(path + ".vxhash", "rb").read()
magic, ver, bs, size, _ino, _s, _ns, n, alg = struct.unpack("<8sIIQQqqQI", side[:60])
data = open(path, "rb").read()
want = {"xxh128": (2, 2, 16, xxhash.xxh3_128_digest), "sha256": (1, 0, 32, lambda b: hashlib.sha256(b).digest())}
wver, walg, ds, fn = want[algo]
assert magic == b"VXHASH\0\n" and ver == wver and alg == walg, "header %r %d %d" % (magic, ver, alg)
assert bs == 65536 and size == len(data) and side[60:64] == b"\0" * 4, "header fields"
assert n == (size + bs - 1) // bs and len(side) == 64 + ds * n, "block count"
for i in range(n):
    blk = data[i * bs:(i + 1) * bs].ljust(bs, b"\0")
    if side[64 + ds * i:64 + ds * (i + 1)] != fn(blk):
        sys.exit("digest %d differs" % i)
PY
}
lay="$EXT4/layout"
truncate -s $((40 * 1048576 + 12345)) "$lay"
for off in 0 3 7 19 20 33; do
    dd if=/dev/urandom of="$lay" bs=1M count=2 seek="$off" conv=notrunc status=none
done
dd if=/dev/zero of="$lay" bs=1M count=3 seek=10 conv=notrunc status=none
dd if=/dev/urandom of="$lay" bs=4K count=1 seek=$((25 * 256 + 3)) conv=notrunc status=none
for ((k = 0; k < 64; k++)); do
    dd if=/dev/urandom of="$lay" bs=4K count=1 seek=$((28 * 256 + k * 4)) conv=notrunc status=none
done
expect_exit 0 "copy of a mixed layout (tail hole, odd size)" "$VMEXPORT" clone --json --mode copy "$lay" "$lay.c"
check "mixed layout copy is identical" cmp -s "$lay" "$lay.c"
check "mixed layout sidecar: every block's digest in order" check_sidecar "$lay.c"
check "copy reports its block hash" jq -e '.hash == "xxh128"' "$WORK/out"
expect_exit 0 "copy with --hash sha256" "$VMEXPORT" clone --json --hash sha256 --mode copy "$lay" "$lay.s"
check "sha256 copy is identical" cmp -s "$lay" "$lay.s"
check "sha256 sidecar: every block's SHA-256 in order (version 1)" check_sidecar "$lay.s" sha256
check "sha256 copy reports its block hash" jq -e '.hash == "sha256"' "$WORK/out"
expect_exit 2 "unknown --hash is a usage error" "$VMEXPORT" clone --hash md5 --mode copy "$lay" "$lay.x"
check "message names the accepted digests" grep -q "xxh128 or sha256" "$WORK/err"
check "no copy left after a usage error" test ! -e "$lay.x"
rm -f "$lay.s" "$lay.s.vxhash"
# Short holes between data (the 4 KiB fragments) are read with the data around them, but only
# non-zero pages are written: 12 MiB + 4 KiB + 64 x 4 KiB of data, no written zeros, no holes.
alloc_kib=$(du -k "$lay.c" | cut -f1)
check "mixed layout copy allocates only the data ($alloc_kib KiB)" test "$alloc_kib" -le $((12 * 1024 + 4 + 256 + 64))
dd if=/dev/urandom of="$lay" bs=1 count=100 seek=$((40 * 1048576 + 12245)) conv=notrunc status=none
expect_exit 0 "copy of a file ending in a partial data block" "$VMEXPORT" clone --mode copy "$lay" "$lay.d"
check "partial-tail copy is identical" cmp -s "$lay" "$lay.d"
check "partial-tail sidecar: every block's digest in order" check_sidecar "$lay.d"
# A cold source (not in the page cache) is read with O_DIRECT: same bytes and digests, and the
# source's pages are not pulled into the cache.
rm -f "$lay.d" "$lay.d.vxhash"
sync "$lay" && dd if="$lay" iflag=nocache count=0 status=none
check "source dropped from the page cache" test "$(fincore --bytes --noheadings --output RES "$lay" | tr -d ' ')" -lt 65536
expect_exit 0 "copy of a cold source" "$VMEXPORT" clone --mode copy "$lay" "$lay.d"
cached=$(fincore --bytes --noheadings --output RES "$lay" | tr -d ' ')
check "cold copy read directly: $cached bytes of the source cached afterwards" test "$cached" -lt $((1 << 20))
check "cold copy is identical" cmp -s "$lay" "$lay.d"
check "cold copy sidecar: every block's digest in order" check_sidecar "$lay.d"
rm -f "$lay" "$lay".[cd] "$lay".[cd].vxhash
# The copy's written-back pages leave the page cache behind it (three 32 MiB writeback
# windows here, so the wait-and-drop inside the copy runs too, not only the final drop).
dd if=/dev/urandom of="$XFS/wb" bs=1M count=96 status=none
expect_exit 0 "copy of 96 MiB of data" "$VMEXPORT" clone --mode copy "$XFS/wb" "$XFS/wb.c"
cached=$(fincore --bytes --noheadings --output RES "$XFS/wb.c" | tr -d ' ')
check "copy left $cached bytes of the destination in the page cache (of 96 MiB)" test "$cached" -lt 65536
check "96 MiB copy is identical" cmp -s "$XFS/wb" "$XFS/wb.c"
check "96 MiB copy sidecar: every block's digest in order" check_sidecar "$XFS/wb.c"
rm -f "$XFS/wb" "$XFS/wb.c" "$XFS/wb.c.vxhash"

expect_exit 1 "clone never overwrites" "$VMEXPORT" clone "$EXT4/img" "$EXT4/c2"
check "message says DST exists" grep -q "already exists" "$WORK/err"
expect_exit 1 "clone of a missing file fails" "$VMEXPORT" clone "$EXT4/missing" "$EXT4/c3"
check "missing source named" grep -q "$EXT4/missing" "$WORK/err"
check "nothing created for a missing source" test ! -e "$EXT4/c3"

# A full disk: clean error, nothing left behind.
make_fs btrfs 128 SMALL || { not_ok "create small btrfs"; exit 1; }
dd if=/dev/urandom of="$WORK/big" bs=1M count=200 status=none
expect_exit 1 "copy onto a full filesystem fails" "$VMEXPORT" clone --mode copy "$WORK/big" "$SMALL/big"
check "no-space message" grep -q "no space left" "$WORK/err"
check "nothing left on the full filesystem" bash -c "[ -z \"\$(ls -A '$SMALL')\" ]"

# --- diff ---
expect_exit 0 "diff of identical clones" "$VMEXPORT" diff --json "$XFS/img" "$XFS/c1"
check "identical clones: nothing changed, reflink mode" \
    jq -e '.mode == "reflink" and .changed == [] and .zeroed == [] and .size == 16777216' "$WORK/out"
fallocate --punch-hole -o 655360 -l 65536 "$XFS/c1"
dd if=/dev/urandom of="$XFS/c1" bs=4K count=1 seek=2000 conv=notrunc status=none
expect_exit 0 "diff after punch and write" "$VMEXPORT" diff --json "$XFS/img" "$XFS/c1"
check "punched range is zeroed, written block changed" \
    jq -e '.changed == [{"start":8192000,"length":4096}] and .zeroed == [{"start":655360,"length":65536}]' "$WORK/out"

dd if=/dev/urandom of="$EXT4/img" bs=4K count=1 seek=3 conv=notrunc status=none
expect_exit 0 "diff against a copy uses hashes" "$VMEXPORT" diff --json "$EXT4/c2" "$EXT4/img"
check "hash mode (xxh128), 64 KiB precision" jq -e '.mode == "hash" and .hash == "xxh128" and .changed == [{"start":0,"length":65536}]' "$WORK/out"
expect_exit 0 "text diff against a copy" "$VMEXPORT" diff "$EXT4/c2" "$EXT4/img"
check "text header: mode, then the digest at the end" grep -Eq '^# .*: mode hash, block size 65536, size [0-9]+ \(base [0-9]+\), digest xxh128$' "$WORK/out"
check "text: the changed 64 KiB block" grep -Eq '^changed +0 +65536$' "$WORK/out"
# A base whose sidecar holds SHA-256 digests (--hash sha256, or written by an older vmexport):
# same answer.  A sidecar naming an unknown digest is refused as damaged, never half-used.
expect_exit 0 "a sha256 copy of the base" "$VMEXPORT" clone --hash sha256 --mode copy "$EXT4/c2" "$EXT4/c2s"
expect_exit 0 "diff against a sha256 sidecar" "$VMEXPORT" diff --json "$EXT4/c2s" "$EXT4/img"
check "sha256 sidecar: hash mode, same ranges" jq -e '.mode == "hash" and .hash == "sha256" and .changed == [{"start":0,"length":65536}] and .zeroed == []' "$WORK/out"
printf '\x02' | dd of="$EXT4/c2s.vxhash" bs=1 seek=8 conv=notrunc status=none
expect_exit 1 "diff --mode hash with version 2 and no algorithm fails" "$VMEXPORT" diff --mode hash "$EXT4/c2s" "$EXT4/img"
check "unknown digest: sidecar called damaged" grep -q "sidecar is damaged" "$WORK/err"
printf '\x07' | dd of="$EXT4/c2s.vxhash" bs=1 seek=56 conv=notrunc status=none
expect_exit 1 "diff --mode hash with an unknown algorithm field fails" "$VMEXPORT" diff --mode hash "$EXT4/c2s" "$EXT4/img"
expect_exit 0 "auto mode falls back to reading" "$VMEXPORT" diff --json "$EXT4/c2s" "$EXT4/img"
check "damaged sidecar: read mode, 4 KiB precision" jq -e '.mode == "read" and .changed == [{"start":12288,"length":4096}]' "$WORK/out"
rm -f "$EXT4/c2s" "$EXT4/c2s.vxhash"
expect_exit 0 "diff --mode read" "$VMEXPORT" diff --json --mode read "$EXT4/c2" "$EXT4/img"
check "read mode, 4 KiB precision" jq -e '.mode == "read" and (has("hash") | not) and .changed == [{"start":12288,"length":4096}]' "$WORK/out"
expect_exit 1 "diff --mode reflink on ext4 fails" "$VMEXPORT" diff --mode reflink "$EXT4/c2" "$EXT4/img"
check "reflink-mode refusal explains" grep -q "does not share blocks" "$WORK/err"
expect_exit 1 "diff --mode hash without a sidecar fails" "$VMEXPORT" diff --mode hash "$EXT4/img" "$EXT4/c2"
check "hash-mode refusal explains" grep -q "no block-hash sidecar" "$WORK/err"
touch -d '2001-01-01' "$EXT4/c2"
expect_exit 0 "a stale sidecar is not used" "$VMEXPORT" diff --json "$EXT4/c2" "$EXT4/img"
check "stale sidecar: read mode" jq -e '.mode == "read"' "$WORK/out"
expect_exit 1 "diff with a missing file fails" "$VMEXPORT" diff "$EXT4/c2" "$EXT4/none"
check "missing file named" grep -q "$EXT4/none" "$WORK/err"
