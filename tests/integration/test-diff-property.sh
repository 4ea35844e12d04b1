#!/bin/bash
# Property test of clone + diff on real filesystems (XFS reflink=1, btrfs, ext4).
#
# Each round: build a base image with data, holes and preallocated ranges; snapshot it with
# 'vmexport clone'; apply a random workload to the live file (writes, zero writes, punch-hole,
# zero-range, fallocate, extend, truncate); diff snapshot -> live; apply the diff to a copy of
# the snapshot; the result must equal the live file byte for byte.
#
# VMEXPORT_SEED sets the seed (printed), VMEXPORT_ROUNDS the rounds per filesystem (default 200).
source "$(dirname "$0")/lib.sh"
require_root

SEED=${VMEXPORT_SEED:-$(( (RANDOM << 15) | RANDOM ))}
ROUNDS=${VMEXPORT_ROUNDS:-200}
WORKLOAD=$BUILD/workload
APPLY=$BUILD/diff_apply
diag "seed=$SEED rounds=$ROUNDS (rerun with VMEXPORT_SEED=$SEED)"

# run_rounds FS DIR CLONE_MODE DIFF_MODE EXPECTED_MODE
run_rounds() {
    local fs=$1 dir=$2 clone_mode=$3 diff_mode=$4 expect=$5
    local r failures=0 first_fail=""
    local base=$dir/live snap=$dir/snap target=$dir/target out=$dir/diff.txt
    for ((r = 0; r < ROUNDS; r++)); do
        local s=$((SEED + r))
        rm -f "$base" "$snap" "$snap.vxhash" "$target"
        "$WORKLOAD" --init --max-size $((8 << 20)) "$base" "$s" &&
        "$VMEXPORT" clone --mode "$clone_mode" "$base" "$snap" >/dev/null &&
        "$WORKLOAD" --ops $((1 + s % 12)) --max-size $((12 << 20)) "$base" "$((s * 7 + 1))" &&
        "$VMEXPORT" diff --mode "$diff_mode" "$snap" "$base" >"$out" &&
        grep -q "mode $expect," "$out" &&
        cp --sparse=always "$snap" "$target" &&
        "$APPLY" "$target" "$base" <"$out" &&
        cmp -s "$target" "$base"
        if [ $? -ne 0 ]; then
            failures=$((failures + 1))
            [ -n "$first_fail" ] || first_fail=$s
            diag "$fs $clone_mode/$diff_mode: round $r (seed $s) failed: $(head -1 "$out" 2>/dev/null)"
            [ "$failures" -lt 3 ] || break
        fi
    done
    if [ "$failures" -eq 0 ]; then
        ok "$fs: $ROUNDS rounds clone=$clone_mode diff=$diff_mode ($expect mode) restore bit-identical"
    else
        not_ok "$fs: clone=$clone_mode diff=$diff_mode: $failures failed rounds, first seed $first_fail"
    fi
}

make_fs xfs 256 XFS || { not_ok "create xfs"; exit 1; }
make_fs btrfs 256 BTRFS || { not_ok "create btrfs"; exit 1; }
make_fs ext4 256 EXT4 || { not_ok "create ext4"; exit 1; }

run_rounds xfs "$XFS" auto auto reflink
run_rounds btrfs "$BTRFS" auto auto reflink
run_rounds ext4 "$EXT4" auto auto hash

# The other ways, fewer rounds: hash on a reflink filesystem, read everywhere.
ROUNDS=$((ROUNDS / 4 > 0 ? ROUNDS / 4 : 1))
run_rounds xfs "$XFS" copy auto hash
run_rounds ext4 "$EXT4" copy read read
run_rounds btrfs "$BTRFS" reflink read read
