#!/bin/bash
# End-to-end backups against the real daemon: a VM with three disks (mostly holes, random,
# compressible), ten generations of random workloads with a backup after each, then every
# generation restored and compared bit for bit; incremental transfer proportional to the change;
# corruption detection; kill -9 at random moments; a full repository filesystem; encryption;
# prune with a fixed clock and gc; two VMs backed up at once.
source "$(dirname "$0")/lib.sh"
require_root

SEED=${VMEXPORT_SEED:-$(( (RANDOM << 15) | RANDOM ))}
diag "seed=$SEED (rerun with VMEXPORT_SEED=$SEED)"
RANDOM=$((SEED % 32768))
MIB=$((1 << 20))
CHUNK=$((1 << 20))
# VMEXPORT_QUICK=1 (the sanitizer pass): fewer generations and kills, same checks.
GENS=10 KILLS=20
if [ -n "${VMEXPORT_QUICK:-}" ]; then GENS=5 KILLS=6; fi

make_fs xfs 1200 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/vm1" "$VMS/vm2"
truncate -s 256M "$VMS/vm1/holes.img"
dd if=/dev/urandom of="$VMS/vm1/holes.img" bs=64K count=4 seek=100 conv=notrunc status=none
dd if=/dev/urandom of="$VMS/vm1/random.raw" bs=1M count=24 status=none
yes "vmexport compressible line of text for the backup test $SEED" | head -c $((32 * MIB)) >"$VMS/vm1/text.img"
dd if=/dev/urandom of="$VMS/vm2/other.img" bs=1M count=16 status=none
sync

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" || { not_ok "daemon starts"; exit 1; }
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt
export XDG_CACHE_HOME=$WORK/cache

REPO=$WORK/repo
# Format 2 (one file per chunk): the damage tests below pick chunk files.
check "repo init" "$VMEXPORT" repo init "$REPO" --chunk-size 1M --format-version 2
check_fails "repo init refuses a non-empty directory" "$VMEXPORT" repo init "$REPO"
check "a new repository compresses with zstd level 1" jq -e '.compression_level == 1 and .version == 2' "$REPO/config"
check "repo init --compression-level 19" "$VMEXPORT" repo init "$WORK/repo19" --compression-level 19
check "  is recorded in the config" jq -e '.compression_level == 19' "$WORK/repo19/config"
check "without --chunk-size, chunks are 1 MiB" jq -e '.chunk_size == 1048576' "$WORK/repo19/config"
check "repo init --chunk-size 4M" "$VMEXPORT" repo init "$WORK/repo4m" --chunk-size 4M
check "  is recorded in the config" jq -e '.chunk_size == 4194304' "$WORK/repo4m/config"
"$VMEXPORT" repo init "$WORK/repo-bad" --compression-level 0 >/dev/null 2>&1
check "--compression-level 0 is a usage error (exit 2)" test $? = 2
check "  and creates nothing" test ! -e "$WORK/repo-bad"

# backup_json VM [ARGS...]: run a backup with --json, keep the summary in $WORK/summary.
backup_json() {
    "$VMEXPORT" backup "$@" --repo "$REPO" --json >"$WORK/backup.out" 2>"$WORK/backup.err" &&
        grep '"type":"summary"' "$WORK/backup.out" | tail -1 >"$WORK/summary"
}

# --- ten generations ---
declare -a GEN_IDS
for gen in $(seq 1 "$GENS"); do
    if [ "$gen" -gt 1 ]; then
        s=$((SEED + gen))
        "$BUILD/workload" --ops 6 --max-size $((300 * MIB)) "$VMS/vm1/holes.img" "$s"
        "$BUILD/workload" --ops 4 --max-size $((40 * MIB)) "$VMS/vm1/random.raw" "$((s + 100))"
        "$BUILD/workload" --ops 3 --max-size $((40 * MIB)) "$VMS/vm1/text.img" "$((s + 200))"
        sync
    fi
    mkdir -p "$WORK/gen$gen"
    for d in holes.img random.raw text.img; do cp --sparse=always "$VMS/vm1/$d" "$WORK/gen$gen/$d"; done
    # Odd generations read over HTTPS, even ones the snapshot files on this host directly.
    tr=https; [ $((gen % 2)) = 0 ] && tr=local
    if backup_json vm1 --jobs $((1 + gen % 4)) --transport $tr &&
        jq -e ".transport == \"$tr\"" "$WORK/summary" >/dev/null; then
        GEN_IDS[$gen]=$(jq -r .backup "$WORK/summary")
        ok "generation $gen backed up ($(jq -c '{incremental, bytes_read, chunks_new, chunks_reused, transport}' "$WORK/summary"))"
    else
        not_ok "generation $gen backup: $(tail -2 "$WORK/backup.err")"
    fi
done
check "generation 2+ backups are incremental" jq -e '.incremental == true' "$WORK/summary"
"$VMEXPORT" backups --repo "$REPO" vm1 --json >"$WORK/list.json"
check "$GENS backups listed" jq -e "length == $GENS" "$WORK/list.json"

all_ok=1
for gen in $(seq 1 "$GENS"); do
    rm -rf "$WORK/r"
    if ! "$VMEXPORT" restore --repo "$REPO" "${GEN_IDS[$gen]}" --to "$WORK/r" >/dev/null 2>"$WORK/restore.err"; then
        not_ok "restore generation $gen: $(tail -1 "$WORK/restore.err")"; all_ok=0; continue
    fi
    for d in holes.img random.raw text.img; do
        cmp -s "$WORK/r/$d" "$WORK/gen$gen/$d" || { not_ok "generation $gen disk $d differs"; all_ok=0; }
    done
done
[ $all_ok = 1 ] && ok "every generation restores bit for bit (3 disks x $GENS)"
check "restored disks are sparse" test "$(du -k "$WORK/r/holes.img" | cut -f1)" -lt $((200 * 1024))
check_fails "restore refuses to overwrite without --force" "$VMEXPORT" restore --repo "$REPO" "${GEN_IDS[$GENS]}" --to "$WORK/r"
check "restore --force overwrites" "$VMEXPORT" restore --repo "$REPO" "${GEN_IDS[$GENS]}" --to "$WORK/r" --force
check "restore of one disk to a file" "$VMEXPORT" restore --repo "$REPO" "${GEN_IDS[3]}" --disk text.img --to "$WORK/one.img"
if [ "$(stat -f -c %T "$WORK")" = tmpfs ]; then
    skip "restored file leaves the page cache: $WORK is on tmpfs"
else
    cached=$(fincore --bytes --noheadings --output RES "$WORK/one.img" | tr -d ' ')
    check "the restored file is not left in the page cache ($cached bytes of $(stat -c %s "$WORK/one.img"))" \
        test "$cached" -lt 65536
fi
check "that file is generation 3's text.img" cmp -s "$WORK/one.img" "$WORK/gen3/text.img"
check_fails "restore of an unknown backup fails" "$VMEXPORT" restore --repo "$REPO" nope --to "$WORK/x"

# --- incremental transfer is proportional to the change ---
# Change ~1% of random.raw: 4 KiB writes in 3 distinct 1 MiB chunks.  The workloads may have
# shrunk it (some seeds leave less than 1 MiB): give it 12 MiB of data and a base first.
if [ "$(stat -c %s "$VMS/vm1/random.raw")" -lt $((12 * MIB)) ]; then
    dd if=/dev/urandom of="$VMS/vm1/random.raw" bs=1M count=12 status=none
    sync
    backup_json vm1 || not_ok "base backup of the regrown random.raw: $(tail -1 "$WORK/backup.err")"
fi
size=$(stat -c %s "$VMS/vm1/random.raw")
touched=0
for c in 1 5 9; do
    if [ $((c * CHUNK)) -lt "$size" ]; then
        dd if=/dev/urandom of="$VMS/vm1/random.raw" bs=4K count=1 seek=$((c * 256 + 7)) conv=notrunc status=none
        touched=$((touched + 1))
    fi
done
sync
backup_json vm1 --transport https || not_ok "incremental backup after a small change"
read_bytes=$(jq .bytes_read "$WORK/summary")
check "bytes read ($read_bytes) <= the $touched changed chunks ($((touched * CHUNK)))" test "$read_bytes" -le $((touched * CHUNK))
# Only the changed blocks of a touched chunk are read (the rest comes from the previous
# backup's chunk): 4 KiB writes must not cost more than 64 KiB each.
check "bytes read ($read_bytes) <= 64 KiB per changed 4 KiB block ($((touched * 65536)))" test "$read_bytes" -le $((touched * 65536))
check "bytes read > 0" test "$read_bytes" -gt 0
check "chunks fetched = changed chunks" jq -e ".chunks_fetched == $touched" "$WORK/summary"
# The same over the local transport: the bytes read from the snapshot file are as few.
dd if=/dev/urandom of="$VMS/vm1/random.raw" bs=4K count=1 seek=$((2 * 256 + 3)) conv=notrunc status=none
sync
backup_json vm1 || not_ok "local incremental backup after a small change"
check "with no --transport, a backup on the server's host reads locally" jq -e '.transport == "local"' "$WORK/summary"
check "local: bytes read ($(jq .bytes_read "$WORK/summary")) <= 64 KiB for one changed 4 KiB block" jq -e '.bytes_read > 0 and .bytes_read <= 65536 and .chunks_fetched == 1' "$WORK/summary"
cp --sparse=always "$VMS/vm1/random.raw" "$WORK/random.after"
LAST=$(jq -r .backup "$WORK/summary")
rm -rf "$WORK/r"
"$VMEXPORT" restore --repo "$REPO" "$LAST" --disk random.raw --to "$WORK/r.raw" >/dev/null
check "the local incremental restores bit for bit" cmp -s "$WORK/r.raw" "$WORK/random.after"

# --- written zeros do not cross the network (sparse answers) ---
# A disk of 2 MiB data, 4 MiB of written zeros (data extents, not holes), 2 MiB data, and a
# 4 KiB block of zeros inside the last MiB: over https only the data travels.
mkdir -p "$VMS/vm4"
{ head -c $((2 * MIB)) /dev/urandom; head -c $((4 * MIB)) /dev/zero; head -c $((2 * MIB)) /dev/urandom; } >"$VMS/vm4/zeros.img"
dd if=/dev/zero of="$VMS/vm4/zeros.img" bs=4K count=1 seek=$((7 * 256 + 10)) conv=notrunc status=none
sync
if backup_json vm4 --transport https; then
    check "https backup of written zeros: 8 MiB read, at most the 4 MiB of data on the wire ($(jq -c '{bytes_read, bytes_transferred}' "$WORK/summary"))" \
        jq -e ".bytes_read == $((8 * MIB)) and .bytes_transferred > $((4 * MIB - 8192)) and .bytes_transferred <= $((4 * MIB - 4096 + 64 * 16))" "$WORK/summary"
    "$VMEXPORT" restore --repo "$REPO" "$(jq -r .backup "$WORK/summary")" --disk zeros.img --to "$WORK/zeros.raw" >/dev/null 2>&1
    check "  and restores bit for bit" cmp -s "$WORK/zeros.raw" "$VMS/vm4/zeros.img"
else
    not_ok "https backup of a disk with written zeros: $(tail -2 "$WORK/backup.err")"
fi
# --- scattered small extents over https: many ranges per request (multipart/byteranges) ---
# 32 extents of 4 KiB, each in its own chunk: read in a few requests, not one per extent.
mkdir -p "$VMS/vm6"
truncate -s $((64 * MIB)) "$VMS/vm6/scatter.img"
for c in $(seq 0 2 62); do
    dd if=/dev/urandom of="$VMS/vm6/scatter.img" bs=4K count=1 seek=$((c * 256 + c)) conv=notrunc status=none
done
sync
disk_gets() { # disk_gets: the disk data requests answered 206 so far
    login admin secret && api GET /metrics >/dev/null &&
        { grep -E '^vmexport_http_requests_total\{route="disk",status="206"\}' "$WORK/body" || echo "x 0"; } |
        awk '{ print $2 }'
}
gets0=$(disk_gets)
if backup_json vm6 --transport https; then
    gets=$(($(disk_gets) - gets0))
    check "https backup of 32 scattered 4 KiB extents: $gets range requests (16 chunks per request)" \
        test "$gets" -ge 2 -a "$gets" -le 4
    check "  128 KiB read" jq -e ".bytes_read == $((32 * 4096)) and .chunks_fetched == 32" "$WORK/summary"
    "$VMEXPORT" restore --repo "$REPO" "$(jq -r .backup "$WORK/summary")" --disk scatter.img --to "$WORK/scatter.raw" >/dev/null 2>&1
    check "  and restores bit for bit" cmp -s "$WORK/scatter.raw" "$VMS/vm6/scatter.img"
else
    not_ok "https backup of scattered extents: $(tail -2 "$WORK/backup.err")"
fi

backup_json vm4 --transport local --full ||
    not_ok "local backup of a disk with written zeros: $(tail -2 "$WORK/backup.err")"

# --- a disk whose size is not a multiple of the chunk size ---
# 3 MiB + 12345 bytes with a hole inside: the last chunk is partial, with data up to the last
# byte.  A full backup over https, then a write across the end that grows the disk by 2000
# bytes and a local incremental; each restores bit for bit, at its exact size.
mkdir -p "$VMS/vm5"
head -c $((3 * MIB + 12345)) /dev/urandom >"$VMS/vm5/odd.img"
fallocate --punch-hole -o $MIB -l $((64 * 1024)) "$VMS/vm5/odd.img"
sync
cp --sparse=always "$VMS/vm5/odd.img" "$WORK/odd.1"
backup_json vm5 --transport https --full || not_ok "full backup of a disk of 3 MiB + 12345 bytes: $(tail -2 "$WORK/backup.err")"
ODD1=$(jq -r .backup "$WORK/summary")
head -c 4000 /dev/urandom |
    dd of="$VMS/vm5/odd.img" bs=4000 oflag=seek_bytes seek=$((3 * MIB + 10345)) conv=notrunc status=none
sync
cp --sparse=always "$VMS/vm5/odd.img" "$WORK/odd.2"
backup_json vm5 --transport local || not_ok "incremental backup of the grown odd-sized disk: $(tail -2 "$WORK/backup.err")"
check "the odd-sized disk's second backup is incremental" jq -e '.incremental == true' "$WORK/summary"
ODD2=$(jq -r .backup "$WORK/summary")
for i in 1 2; do
    id=ODD$i
    rm -f "$WORK/odd.r$i"
    "$VMEXPORT" restore --repo "$REPO" "${!id}" --disk odd.img --to "$WORK/odd.r$i" >/dev/null 2>"$WORK/restore.err" ||
        not_ok "restore of the odd-sized disk, backup $i: $(tail -1 "$WORK/restore.err")"
    check "odd-sized disk, backup $i: restored size $(stat -c %s "$WORK/odd.$i") exactly" \
        test "$(stat -c %s "$WORK/odd.r$i" 2>/dev/null)" = "$(stat -c %s "$WORK/odd.$i")"
    check "odd-sized disk, backup $i: restored bit for bit" cmp -s "$WORK/odd.r$i" "$WORK/odd.$i"
done
check "a local backup transfers nothing over the network" jq -e '.bytes_transferred == 0 and .transport == "local"' "$WORK/summary"
rm -f "$WORK/r.raw"

# Where the snapshot files are not the server's (here: hidden under a tmpfs in another mount
# namespace, as on another host), local is refused with the reason and auto falls back to HTTPS.
SNAPDIR=$VMS/.vmexport-snapshots
if unshare -m sh -c "mount -t tmpfs none '$SNAPDIR' && exec '$VMEXPORT' backup vm2 --repo '$REPO' --transport local" >/dev/null 2>"$WORK/backup.err"; then
    not_ok "--transport local with the snapshot files hidden succeeded"
else
    check "--transport local: refused with the reason: $(head -c 160 "$WORK/backup.err")" \
        grep -q "cannot read the snapshot locally (--transport local): $SNAPDIR/.*No such file" "$WORK/backup.err"
fi
if unshare -m sh -c "mount -t tmpfs none '$SNAPDIR' && exec '$VMEXPORT' backup vm2 --repo '$REPO' --json" >"$WORK/backup.out" 2>"$WORK/backup.err"; then
    grep '"type":"summary"' "$WORK/backup.out" >"$WORK/summary"
    check "auto falls back to https there" jq -e '.transport == "https"' "$WORK/summary"
else
    not_ok "auto backup with the snapshot files hidden: $(tail -1 "$WORK/backup.err")"
fi
"$VMEXPORT" backup vm2 --repo "$REPO" --transport nfs >/dev/null 2>&1
check "--transport nfs is a usage error (exit 2)" test $? = 2

# --- verify ---
check "verify passes" "$VMEXPORT" verify --repo "$REPO"
check "verify --sample passes" "$VMEXPORT" verify --repo "$REPO" --sample 10

# --- kill -9 at random moments ---
before=$("$VMEXPORT" backups --repo "$REPO" --json | jq length)
kills_ok=1
for k in $(seq 1 "$KILLS"); do
    dd if=/dev/urandom of="$VMS/vm1/random.raw" bs=64K count=8 seek=$((RANDOM % 300)) conv=notrunc status=none
    "$VMEXPORT" backup vm1 --repo "$REPO" --full >/dev/null 2>&1 &
    pid=$!
    sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    now=$("$VMEXPORT" backups --repo "$REPO" --json | jq length)
    if [ "$now" -ne "$before" ] && [ "$now" -ne $((before + 1)) ]; then
        not_ok "kill $k: backups went from $before to $now"; kills_ok=0
    fi
    before=$now
    if ! "$VMEXPORT" verify --repo "$REPO" --sample 20 >"$WORK/verify.out" 2>&1; then
        not_ok "kill $k: verify failed: $(grep -v ': ok' "$WORK/verify.out" | head -2)"; kills_ok=0
    fi
done
[ $kills_ok = 1 ] && ok "$KILLS backups killed with -9 at random moments: no partial backup listed, verify passes"
check "a backup after the kills succeeds" backup_json vm1
cp --sparse=always "$VMS/vm1/random.raw" "$WORK/random.final"
rm -rf "$WORK/r"
"$VMEXPORT" restore --repo "$REPO" "$(jq -r .backup "$WORK/summary")" --to "$WORK/r" >/dev/null
check "and it restores bit for bit" cmp -s "$WORK/r/random.raw" "$WORK/random.final"
check "gc removes what the kills left" "$VMEXPORT" gc --repo "$REPO"
check "verify passes after gc" "$VMEXPORT" verify --repo "$REPO"

# --- corruption ---
cp -a "$REPO" "$WORK/repo-pristine"
chunk_of() { # chunk_of BACKUP DISK: path of some non-zero chunk file the backup uses
    find "$REPO/chunks" -type f ! -name '*.tmp.*' | sort | sed -n "${1}p"
}
mapfile -t CHUNKS < <(find "$REPO/chunks" -type f ! -name '*.tmp.*' | sort)
victim=${CHUNKS[$((RANDOM % ${#CHUNKS[@]}))]}
printf '\xff' | dd of="$victim" bs=1 seek=40 conv=notrunc status=none
"$VMEXPORT" verify --repo "$REPO" >"$WORK/verify.out" 2>&1
rc=$?
check "verify fails (exit 1) on a flipped byte" test $rc -eq 1
check "verify names the damaged chunk" grep -q "$(basename "$victim") DAMAGED" "$WORK/verify.out"
damaged_backup=$(grep -m1 "$(basename "$victim")" "$WORK/verify.out" | awk '{print $2}' | tr -d :)
"$VMEXPORT" restore --repo "$REPO" "$damaged_backup" --to "$WORK/dmg" >/dev/null 2>"$WORK/err"
rc=$?
check "restore refuses damaged data (exit 1, no crash)" test $rc -eq 1
check "restore error names the chunk" grep -q "$(basename "$victim")" "$WORK/err"
damaged_disk=$(grep -m1 "$(basename "$victim")" "$WORK/verify.out" | awk '{print $4}' | tr -d :)
check "the damaged disk ($damaged_disk) was not written" test ! -e "$WORK/dmg/$damaged_disk"
check "no temporary restore file left" bash -c "! ls -a '$WORK/dmg' 2>/dev/null | grep -q vxrestore"
rm -rf "$REPO" && cp -a "$WORK/repo-pristine" "$REPO"
truncate -s 10 "$victim"
"$VMEXPORT" verify --repo "$REPO" >"$WORK/verify.out" 2>&1
check "verify fails on a truncated chunk" test $? -eq 1
rm -rf "$REPO" && cp -a "$WORK/repo-pristine" "$REPO"
rm -f "$victim"
"$VMEXPORT" verify --repo "$REPO" >"$WORK/verify.out" 2>&1
check "verify fails on a deleted chunk" test $? -eq 1
check "verify says MISSING" grep -q "$(basename "$victim") MISSING" "$WORK/verify.out"
rm -rf "$REPO" && cp -a "$WORK/repo-pristine" "$REPO"
manifest=$(find "$REPO/backups" -name '*.manifest' | sort | head -1)
printf 'garbage' | dd of="$manifest" bs=1 seek=20 conv=notrunc status=none
"$VMEXPORT" verify --repo "$REPO" >"$WORK/verify.out" 2>&1
rc=$?
check "verify fails on a damaged manifest" test $rc -eq 1
check "verify names the damaged manifest" grep -q "DAMAGED manifest" "$WORK/verify.out"
rm -rf "$REPO" && cp -a "$WORK/repo-pristine" "$REPO"
check "the pristine copy verifies again" "$VMEXPORT" verify --repo "$REPO" --sample 5

# --- a repository on a small full filesystem ---
make_fs ext4 48 SMALL || not_ok "create small ext4"
check "repo init on the small filesystem" "$VMEXPORT" repo init "$SMALL/repo" --chunk-size 1M
"$VMEXPORT" backup vm2 --repo "$SMALL/repo" >/dev/null 2>&1 || true   # fits (16 MiB)
dd if=/dev/urandom of="$VMS/vm1/random.raw" bs=1M count=60 conv=notrunc status=none
sync
"$VMEXPORT" backup vm1 --repo "$SMALL/repo" --full >/dev/null 2>"$WORK/err"
rc=$?
check "backup to a full filesystem fails (exit 1)" test $rc -eq 1
check "with a clear 'no space' message" grep -qi "no space" "$WORK/err"
check "the repository still verifies" "$VMEXPORT" verify --repo "$SMALL/repo"
check "only the backup that fitted is listed" bash -c "[ \"\$('$VMEXPORT' backups --repo '$SMALL/repo' --json | jq length)\" -le 1 ]"

# --- encryption ---
printf 'correct horse battery staple\n' >"$WORK/pass"
printf 'wrong\n' >"$WORK/wrongpass"
check "repo init --encrypt" "$VMEXPORT" repo init "$WORK/erepo" --encrypt --passphrase-file "$WORK/pass"
MARKER="VMEXPORT-PLAINTEXT-MARKER-$SEED"
mkdir -p "$VMS/vm3"
/usr/bin/python3 -c 'import os, sys
sys.stdout.write("".join("%s-%06d-%s\n" % (sys.argv[1], i, os.urandom(24).hex()) for i in range(1, 2001)))' "$MARKER" >"$VMS/vm3/secret.img"
truncate -s 4M "$VMS/vm3/secret.img"
check "encrypted backup" "$VMEXPORT" backup vm3 --repo "$WORK/erepo" --passphrase-file "$WORK/pass"
check "no chunk file contains the plaintext marker" bash -c "! grep -rqa '$MARKER' '$WORK/erepo'"
"$VMEXPORT" backups --repo "$WORK/erepo" --passphrase-file "$WORK/wrongpass" >/dev/null 2>"$WORK/err"
check "wrong passphrase refused (exit 1)" test $? -eq 1
check "with a clear message" grep -qi "passphrase" "$WORK/err"
EID=$("$VMEXPORT" backups --repo "$WORK/erepo" --passphrase-file "$WORK/pass" --json | jq -r '.[0].id')
check "encrypted restore" "$VMEXPORT" restore --repo "$WORK/erepo" --passphrase-file "$WORK/pass" "$EID" --to "$WORK/secret.out"
check "encrypted restore is bit-identical" cmp -s "$WORK/secret.out" "$VMS/vm3/secret.img"
check "VMEXPORT_PASSPHRASE works" env VMEXPORT_PASSPHRASE='correct horse battery staple' "$VMEXPORT" verify --repo "$WORK/erepo"

# --- prune with a fixed clock, gc ---
PREPO=$WORK/prepo
"$VMEXPORT" repo init "$PREPO" --chunk-size 1M --format-version 2 >/dev/null # counts chunk files
day=86400
base=$(date -u -d '2026-01-05 12:00' +%s)   # a Monday
declare -A T
i=0
for off in 0 1 2 2.5 3 9 10 16 40 41 70; do
    t=$(awk -v b="$base" -v o="$off" -v d="$day" 'BEGIN{printf "%d", b + o * d}')
    dd if=/dev/urandom of="$VMS/vm2/other.img" bs=64K count=1 seek=$((i * 3)) conv=notrunc status=none
    VMEXPORT_NOW=$t "$VMEXPORT" backup vm2 --repo "$PREPO" --json >"$WORK/p.out" 2>/dev/null
    T[$i]=$(grep summary "$WORK/p.out" | jq -r .backup)
    i=$((i + 1))
done
check "11 backups at fixed times" bash -c "[ \"\$('$VMEXPORT' backups --repo '$PREPO' --json | jq length)\" -eq 11 ]"
"$VMEXPORT" prune --repo "$PREPO" --keep-last 2 --keep-daily 3 --keep-weekly 2 --keep-monthly 3 --dry-run >/dev/null
check "dry run removes nothing" bash -c "[ \"\$('$VMEXPORT' backups --repo '$PREPO' --json | jq length)\" -eq 11 ]"
chunks_before=$(find "$PREPO/chunks" -type f | wc -l)
check "prune" "$VMEXPORT" prune --repo "$PREPO" --keep-last 2 --keep-daily 3 --keep-weekly 2 --keep-monthly 3
kept=$("$VMEXPORT" backups --repo "$PREPO" --json | jq -r '[.[].id] | join(" ")')
# Expected: last 2 = days 70, 41; daily 3 = 70, 41, 40; weekly 2 = weeks of day 70 and 41
# (41 is newest of its week); monthly 3 = March (70), February (41), January (16).
want="${T[6]} ${T[8]} ${T[9]} ${T[10]}"
want=$(for x in ${T[7]} ${T[8]} ${T[9]} ${T[10]}; do echo "$x"; done | sort | tr '\n' ' ' | sed 's/ $//')
got=$(echo "$kept" | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')
if [ "$got" = "$want" ]; then ok "prune keeps exactly the expected backups"; else not_ok "prune kept [$got], want [$want]"; fi
check "gc" "$VMEXPORT" gc --repo "$PREPO"
chunks_after=$(find "$PREPO/chunks" -type f | wc -l)
check "gc freed chunks ($chunks_before -> $chunks_after)" test "$chunks_after" -lt "$chunks_before"
check "every kept backup verifies after gc" "$VMEXPORT" verify --repo "$PREPO"
rm -f "$WORK/p.img"
check "the oldest kept backup restores" "$VMEXPORT" restore --repo "$PREPO" "${T[7]}" --to "$WORK/p.img"
check "gc again frees nothing" bash -c "'$VMEXPORT' gc --repo '$PREPO' --json | jq -e '.chunks_deleted == 0' >/dev/null"

# --- two VMs at once into one repository ---
"$VMEXPORT" backup vm1 --repo "$REPO" >"$WORK/c1" 2>&1 &
p1=$!
"$VMEXPORT" backup vm2 --repo "$REPO" >"$WORK/c2" 2>&1 &
p2=$!
wait $p1; r1=$?
wait $p2; r2=$?
check "two VMs backed up concurrently into one repository both succeed" test $r1 -eq 0 -a $r2 -eq 0
check "verify after concurrent backups" "$VMEXPORT" verify --repo "$REPO" --sample 20
