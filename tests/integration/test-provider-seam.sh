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
