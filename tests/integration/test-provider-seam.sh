#!/bin/bash
# The provider seam (provider.h) driven directly, for the dir and ovm providers: snapshot of
# all disks or none, readers (pread, map, identity), changes between two snapshots equal to
# fs/fsdiff.h's, deletion, upload writers.  The unit program test_provider_seam runs on an XFS
# loop filesystem (reflink snapshots, diffs from the extent maps), on ext4 and on tmpfs (hashed
# copies, diffs from the block hashes).
source "$(dirname "$0")/lib.sh"
require_root

SEAM=$BUILD/tests/unit/test_provider_seam
[ -x "$SEAM" ] || { not_ok "test_provider_seam is not built in $BUILD"; exit 1; }

# run_seam NAME DIR MODE METHOD: the tests in DIR, whose snapshots must be MODE and whose
# changes must come by METHOD.
run_seam() {
    local what=$1 dir=$2 mode=$3 method=$4
    if TMPDIR=$dir "$SEAM" >"$WORK/$what.log" 2>&1; then
        ok "$what: every provider_ops test passes (dir and ovm)"
    else
        not_ok "$what: $(grep -E 'ERROR|LINE|FAILED' "$WORK/$what.log" | head -5 | tr '\n' ' ')"
    fi
    check "$what: every snapshot is $mode" test "$(grep '^# snapshot mode' "$WORK/$what.log" |
        sort -u)" = "# snapshot mode $mode"
    check "$what: changes come from $method" test "$(grep '^# diff method' "$WORK/$what.log" |
        sort -u)" = "# diff method $method"
}

if make_fs xfs 320 XFS; then run_seam xfs "$XFS" reflink reflink; else not_ok "xfs: mkfs"; fi
if make_fs ext4 64 EXT4; then run_seam ext4 "$EXT4" copy hash; else not_ok "ext4: mkfs"; fi
SHM=$(mktemp -d /dev/shm/vmexport-seam.XXXXXX)
at_exit "rm -rf $SHM"
run_seam tmpfs "$SHM" copy hash

# ---- a catalog of an earlier version: its snapshot paths are served as locators ----
for tool in curl jq sqlite3; do
    command -v "$tool" >/dev/null || { skip "upgrade part needs $tool"; exit 0; }
done
MIB=1048576
VMS=$XFS/vms
mkdir -p "$VMS/web01"
head -c $((4 * MIB)) /dev/urandom >"$VMS/web01/root.img"
start_dir_daemon local "$VMS"
stop_daemon
check "daemon stops" test $? -eq 0
# What an earlier vmexportd left: a reflink clone at <snapshot_dir>/<vm>/<snapshot>/<disk> and
# catalog rows naming its path.
OLD=11111111-2222-4333-8444-555555555555
OLDFILE=$VMS/.vmexport-snapshots/web01/$OLD/root.img
mkdir -p -m 700 "$(dirname "$OLDFILE")"
"$VMEXPORT" clone --mode reflink "$VMS/web01/root.img" "$OLDFILE" >/dev/null &&
    ok "an earlier version's snapshot file" || not_ok "clone"
sqlite3 "$WORK/state/catalog.db" "INSERT INTO snapshots (id, vm_id, provider, created_at, status)
    VALUES ('$OLD', 'web01', 'local', '2026-01-01T00:00:00Z', 'ready');
    INSERT INTO snapshot_disks VALUES ('$OLD', 0, 'root.img', '$OLDFILE', '$VMS/web01/root.img',
    NULL, '$OLD/0', 'reflink', $((4 * MIB)));" && ok "and its catalog rows" || not_ok "sqlite3"
dd if=/dev/urandom of="$VMS/web01/root.img" bs=64K count=1 seek=16 conv=notrunc,fsync status=none
start_daemon "$CONF" "$PORT" && ok "the daemon starts on that catalog" || { not_ok "restart"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }
expect_status 200 "the old snapshot's disk is served" GET "/api/v1/vms/web01/snapshots/$OLD/disks/root.img"
check "  byte for byte" cmp "$WORK/body" "$OLDFILE"
expect_status 200 "the old snapshot is listed with its path" GET "/api/v1/vms/web01/snapshots/$OLD"
check "  path and chunks" jq -e --arg p "$OLDFILE" '.disks[0].path == $p and (.disks[0].chunks | length) > 0' "$WORK/body"
expect_status 201 "a new snapshot" POST /api/v1/vms/web01/snapshots
NEW=$(jq -r .id "$WORK/body")
expect_status 200 "compareTo the old snapshot" GET "/api/v1/vms/web01/snapshots/$NEW?compareTo=$OLD"
check "  exactly the 64 KiB written since, from the extent maps" jq -e --argjson m $MIB \
    '.disks[0].diff_mode == "reflink" and .disks[0].chunks == [{"start": $m, "length": 65536, "physical_start": .disks[0].chunks[0].physical_start}] and .disks[0].zeroed == []' "$WORK/body"
expect_status 204 "the old snapshot is deleted" DELETE "/api/v1/vms/web01/snapshots/$OLD"
check "  its file and directory are gone" test ! -e "$(dirname "$OLDFILE")"
check "  the new one stays" test -n "$(find "$VMS/.vmexport-snapshots/web01/$NEW" -name root.img)"
