#!/bin/bash
# Precision of reflink diffs: one 4 KiB write into the middle of a 64 MiB file is reported as
# exactly that 4 KiB on XFS and on btrfs, and a hole punched into it as exactly that zeroed range.  For comparison it also prints what the 004 exporter's
# rule (an extent is unchanged only if start, length and physical_start all match) would report.
source "$(dirname "$0")/lib.sh"
require_root

MIB=$((1 << 20))
OFFSET=$((32 * MIB + 12 * 4096))

for fs in xfs btrfs; do
    make_fs "$fs" 400 MNT || { not_ok "$fs: create filesystem"; continue; }
    dd if=/dev/urandom of="$MNT/disk" bs=1M count=64 conv=fsync status=none
    "$VMEXPORT" clone --mode reflink "$MNT/disk" "$MNT/snap" >/dev/null ||
        { not_ok "$fs: reflink clone"; continue; }
    dd if=/dev/urandom of="$MNT/disk" bs=4096 count=1 seek=$((OFFSET / 4096)) conv=notrunc,fsync \
        status=none
    "$VMEXPORT" diff --json "$MNT/snap" "$MNT/disk" >"$WORK/$fs.json" ||
        { not_ok "$fs: diff"; continue; }
    got=$(jq -c '{mode, changed, zeroed}' "$WORK/$fs.json")
    want="{\"mode\":\"reflink\",\"changed\":[{\"start\":$OFFSET,\"length\":4096}],\"zeroed\":[]}"
    if [ "$got" = "$want" ]; then
        ok "$fs: 4 KiB write in 64 MiB reported as exactly 4 KiB"
    else
        not_ok "$fs: expected $want, got $got"
    fi

    # The 004 rule, computed from the two maps, for the record.
    "$VMEXPORT" map --json "$MNT/snap" >"$WORK/$fs-base.json"
    "$VMEXPORT" map --json "$MNT/disk" >"$WORK/$fs-new.json"
    rule004=$(jq -n --slurpfile b "$WORK/$fs-base.json" --slurpfile n "$WORK/$fs-new.json" '
        ($b[0].extents | map({start, length, physical_start})) as $base
        | [$n[0].extents[] | {start, length, physical_start} | select(. as $e | $base | index([$e]) | not) | .length]
        | add // 0')
    diag "$fs: the 004 exact-extent rule would report $rule004 bytes changed; vmexport reports 4096"

    # A hole punched into the clone's source: those bytes must become zeros, which is what
    # "zeroed" says (a restore writes zeros there; 004 never listed such ranges).  The range
    # is exact, and the 4 KiB write is still the only change.
    fallocate --punch-hole --keep-size --offset $((8 * MIB)) --length $((2 * MIB)) "$MNT/disk" &&
        sync "$MNT/disk" || { not_ok "$fs: punch a hole"; continue; }
    "$VMEXPORT" diff --json "$MNT/snap" "$MNT/disk" >"$WORK/$fs-hole.json" ||
        { not_ok "$fs: diff after the punched hole"; continue; }
    got=$(jq -c '{mode, changed, zeroed}' "$WORK/$fs-hole.json")
    want="{\"mode\":\"reflink\",\"changed\":[{\"start\":$OFFSET,\"length\":4096}],\"zeroed\":[{\"start\":$((8 * MIB)),\"length\":$((2 * MIB))}]}"
    if [ "$got" = "$want" ]; then
        ok "$fs: a 2 MiB hole punched into the disk is reported as exactly that zeroed range"
    else
        not_ok "$fs: after the punched hole, expected $want, got $got"
    fi
done
