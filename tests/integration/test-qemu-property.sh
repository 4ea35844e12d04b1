#!/bin/bash
# Property test of live backups through the qemu provider (fast tier, qemu-storage-daemon):
# a "VM" with a qcow2 and a raw disk that a guest writes through FUSE exports.  Every round
# writes at random (writes, zeroes, discards); every fourth round then backs the VM up through
# vmexportd (over the NBD transport and over https in turn) while the guest goes on writing once
# the snapshot is taken, restores the backup and compares it bit for bit with what the disks
# read at the snapshot's instant: the writes made during the backup never appear in it.  Every
# backup after the first is incremental and reads no more than the 64 KiB blocks written since
# the one before (and the small gaps between them that the backup engine reads across); every
# third backup has a checkpoint of its chain between it and its base, so that its changes are
# the union of two bitmaps.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/qsd-lib.sh"
require_qsd
for tool in curl jq; do command -v $tool >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }; done

SEED=${VMEXPORT_SEED:-$(( (RANDOM << 15) | RANDOM ))}
diag "seed=$SEED (rerun with VMEXPORT_SEED=$SEED)"
RANDOM=$((SEED % 32768))
# Rounds of guest writes; every SNAP_EVERY-th (and the first) ends in a backup.
# VMEXPORT_QUICK=1 (the sanitizer pass): fewer rounds, same checks.
ROUNDS=${VMEXPORT_QSD_ROUNDS:-100}
[ -n "${VMEXPORT_QUICK:-}" ] && ROUNDS=15
SNAP_EVERY=4
OPS=2       # guest operations per disk and round
BG_OPS=3    # and while each backup runs
MAXLEN=131072

qsd_create vm1 sys:qcow2:32 data:raw:16 || { not_ok "create images"; exit 1; }
qsd_start vm1 && ok "qemu-storage-daemon runs vm1 (qcow2 + raw disks, FUSE exports)" ||
    { not_ok "qemu-storage-daemon starts"; exit 1; }
guest_write_all vm1 "$SEED" 40 1048576 && truth_check vm1 &&
    ok "the guest wrote its first data; the disks read their truth" || { not_ok "first writes"; exit 1; }
qsd_daemon_start || { not_ok "vmexportd starts with a qemu provider"; exit 1; }
expect_status 200 "vmexportd lists vm1" GET /api/v1/vms/vm1
check "  with its two disks" jq -e '[.disks[].name] | sort == ["data", "sys"]' "$WORK/body"
REPO=$QSD_ROOT/repo
check "repo init" "$VMEXPORT" repo init "$REPO" --chunk-size 1M

bad=0 incr=0 read_total=0 backups=0
for round in $(seq 1 "$ROUNDS"); do
    tag=r$round
    guest_write_all vm1 $((SEED + round)) $OPS $MAXLEN || { not_ok "round $round: guest writes"; bad=1; break; }
    [ "$round" = 1 ] || [ $((round % SNAP_EVERY)) = 0 ] || continue
    backups=$((backups + 1))
    if [ $((backups % 3)) = 0 ]; then
        # A checkpoint of the repository's chain between two backups (another client's
        # snapshot, released at once): the next backup's changes span two bitmaps.
        expect_status 201 "round $round: a snapshot in the repository's chain ($CHAIN)" \
            POST "/api/v1/vms/vm1/snapshots?chunks=false" -d "{\"chain\":\"$CHAIN\"}"
        mid=$(jq -r .id "$WORK/body")
        expect_status 204 "  released to its checkpoint" DELETE "/api/v1/vms/vm1/snapshots/$mid?keepCheckpoint=true"
        guest_write_all vm1 $((SEED + round + 77777)) $OPS $MAXLEN || { not_ok "round $round: guest writes"; bad=1; break; }
    fi
    tr=nbd
    [ $((backups % 2)) = 0 ] && tr=https
    if ! backup_while_writing "$REPO" vm1 "$tag" $((SEED * 1000 + round)) $BG_OPS --transport $tr; then
        not_ok "round $round: backup over $tr: $(tail -2 "$WORK/backup.err" | tr '\n' ' ')"
        bad=1
        break
    fi
    read -r id got_tr bytes incremental < <(jq -r '"\(.backup) \(.transport) \(.bytes_read) \(.incremental)"' "$WORK/summary")
    why=
    [ "$got_tr" = "$tr" ] || why="$why transport $got_tr, not $tr;"
    if [ "$backups" -gt 1 ]; then
        touched_bytes "$tag" vm1 || why="$why no blocks written;"
        limit=$TOUCHED_BYTES
        [ "$incremental" = true ] || why="$why not incremental;"
        [ "$bytes" -le "$limit" ] || why="$why read $bytes bytes, more than the $limit of the blocks written since (and the gaps between them in a chunk);"
        incr=$((incr + 1))
        read_total=$((read_total + bytes))
    fi
    restore_check "$REPO" "$id" "$tag" vm1 || why="$why restore differs from the truth at its snapshot;"
    if [ "$backups" = 1 ]; then
        api GET "/api/v1/vms/vm1/snapshots/$(jq -r .snapshot "$WORK/summary")?chunks=false" >/dev/null
        CHAIN=$(jq -r .chain "$WORK/body")
    fi
    if [ -z "$why" ]; then
        kind=full; [ "$backups" = 1 ] || kind=incremental
        ok "round $round: $tr backup $kind, $bytes bytes read, restores as the disks were at the snapshot"
    else
        not_ok "round $round ($tr):$why"
        bad=1
    fi
    truth_drop "$tag"
done
check "the guest's writes during the last backup are on the disks (and not in the backup)" truth_check vm1
check "$incr incremental backups read $read_total bytes in all (some data)" test "$read_total" -gt 0
check "the guest wrote during $BG_WROTE of the $backups backups (after their snapshot)" test "$BG_WROTE" -gt 0
[ $bad = 0 ] && diag "seed $SEED: $ROUNDS rounds, $backups backups, every one equal to its snapshot's truth"

# Under the sanitizers a leak or memory error shows in the daemon's exit status.
stop_daemon
check "vmexportd stops cleanly" test $? -eq 0
