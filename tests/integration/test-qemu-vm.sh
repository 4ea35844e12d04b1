#!/bin/bash
# VM tier: backups of a running qemu-system-x86_64 (TCG, q35, no guest OS) through the qemu
# provider.  Two virtio disks (qcow2 and raw) are written from HMP `qemu-io` on the devices, the
# way a guest writes; the test keeps the truth (a raw copy with the same writes applied) and
# every backup must restore to the truth at the instant of its snapshot, while writes made after
# the snapshot, during the backup, never appear.  Then QEMU is killed with -9 in the middle of a
# backup and restarted: the next backup is full and correct.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/guest/lib-guest.sh"

command -v qemu-system-x86_64 >/dev/null || { skip "qemu-system-x86_64 is not installed (qemu-system-x86)"; exit 0; }
SEED=${VMEXPORT_SEED:-$(( (RANDOM << 15) | RANDOM ))}
diag "seed=$SEED (rerun with VMEXPORT_SEED=$SEED)"
RANDOM=$((SEED % 32768))
MIB=$((1 << 20))
SIZES=(64 32) # MiB
DISKS=("$WORK/d0.qcow2" "$WORK/d1.raw")

qemu-img create -q -f qcow2 "${DISKS[0]}" "${SIZES[0]}M"
truncate -s "${SIZES[1]}M" "${DISKS[1]}"
for i in 0 1; do truncate -s "${SIZES[$i]}M" "$WORK/truth$i"; done
vm_start v1 "" "${DISKS[@]}" && ok "QEMU (TCG, q35) starts with a qcow2 and a raw virtio disk" ||
    { not_ok "QEMU starts: $(tail -3 "$WORK/vm-v1.log")"; exit 1; }

# random_writes N: N random writes through the devices (vmctl.py writes), the truth follows.
GEN_SEED=$SEED
random_writes() {
    GEN_SEED=$((GEN_SEED + 1))
    vmctl writes "$WORK/vm-v1.qmp" "$GEN_SEED" "$1" disk0="$WORK/truth0" disk1="$WORK/truth1"
}

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.live]" "type = qemu" "qmp_sockets = $WORK/qmp/*.qmp" \
    "scratch_dir = $WORK/scratch" "nbd_dir = $WORK/nbd" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" && ok "daemon starts with the qemu provider" ||
    { not_ok "daemon starts"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
REPO=$WORK/repo
"$VMEXPORT" repo init "$REPO" >/dev/null || { not_ok "repo init"; exit 1; }

expect_status 200 "the VM is listed by its -name" GET /api/v1/vms/v1
mapfile -t NAMES < <(jq -r '.disks[].name' "$WORK/body")
check "  with its two disks" test "${#NAMES[@]}" = 2

# wait_snapshot_ready: until the VM has a ready snapshot that was not there before (the running
# backup's), so that later writes are known to come after it.
wait_snapshot_ready() {
    local i
    for i in $(seq 300); do
        api GET /api/v1/vms/v1/snapshots >/dev/null
        if jq -e --argjson before "$1" '[.[] | select(.status == "ready") | .id] - $before | length > 0' "$WORK/body" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.02
    done
    return 1
}
snapshot_ids() {
    api GET /api/v1/vms/v1/snapshots >/dev/null
    jq -c '[.[] | .id]' "$WORK/body"
}

# backup_during_writes GEN: a backup whose devices are written after its snapshot was taken,
# before and while it reads; it must restore to the truth before those writes.
backup_during_writes() {
    local gen=$1 before
    for i in 0 1; do cp --sparse=always "$WORK/truth$i" "$WORK/truth$i.gen$gen"; done
    before=$(snapshot_ids)
    "$VMEXPORT" backup v1 --repo "$REPO" --json >"$WORK/backup$gen.out" 2>"$WORK/backup$gen.err" &
    local bpid=$! late=0
    # The client is stopped once its snapshot is ready, so that the writes surely come after the
    # snapshot and before the reads (a 100 MiB backup takes well under a second here).
    if wait_snapshot_ready "$before" && kill -STOP "$bpid" 2>/dev/null; then
        late=$(random_writes 20) || not_ok "writes during backup $gen"
        kill -CONT "$bpid"
    fi
    wait "$bpid" || { not_ok "backup $gen: $(tail -2 "$WORK/backup$gen.err")"; return 1; }
    grep '"type":"summary"' "$WORK/backup$gen.out" | tail -1 >"$WORK/summary$gen"
    diag "backup $gen: $late writes after its snapshot, $(jq -c '{incremental, bytes_read, transport}' "$WORK/summary$gen")"
    restore_matches "$gen" "$(jq -r .backup "$WORK/summary$gen")"
}

# restore_matches GEN BACKUP: both disks restore to the truth of generation GEN.
restore_matches() {
    local gen=$1 id=$2 i
    rm -rf "$WORK/r" && mkdir "$WORK/r"
    "$VMEXPORT" restore --repo "$REPO" "$id" --to "$WORK/r" >/dev/null 2>"$WORK/restore.err" ||
        { not_ok "restore $gen: $(tail -1 "$WORK/restore.err")"; return 1; }
    for i in 0 1; do
        if cmp -s "$WORK/r/${NAMES[$i]}" "$WORK/truth$i.gen$gen"; then
            ok "backup $gen of ${NAMES[$i]} restores to the content at its snapshot"
        else
            not_ok "backup $gen of ${NAMES[$i]} differs from the content at its snapshot: $(cmp "$WORK/r/${NAMES[$i]}" "$WORK/truth$i.gen$gen" 2>&1 | head -1)"
        fi
    done
}

# every MiB its own content, so that a full backup reads (and the writer overlaps) a while
vmctl fill "$WORK/vm-v1.qmp" disk0="$WORK/truth0" disk1="$WORK/truth1" || not_ok "fill through HMP qemu-io"
random_writes 30 >/dev/null || not_ok "writes through HMP qemu-io"
backup_during_writes 1
check "  the first backup is full" jq -e '.incremental == false' "$WORK/summary1"
random_writes 20 >/dev/null
backup_during_writes 2
check "  the second backup is incremental" jq -e '.incremental == true' "$WORK/summary2"
check "  and reads less than the disks' size" jq -e ".bytes_read < $(( (SIZES[0] + SIZES[1]) * MIB ))" "$WORK/summary2"

# kill -9 of QEMU in the middle of a backup; QEMU restarted on the same disks.
random_writes 10 >/dev/null
before=$(snapshot_ids)
"$VMEXPORT" backup v1 --repo "$REPO" --json >"$WORK/backup3.out" 2>"$WORK/backup3.err" &
bpid=$!
wait_snapshot_ready "$before" || diag "no snapshot seen before the kill"
vm_kill v1
if wait "$bpid"; then
    diag "the backup finished before QEMU was killed"
else
    ok "the backup fails when QEMU is killed under it ($(tail -1 "$WORK/backup3.err" | head -c 200))"
fi
vm_start v1 "" "${DISKS[@]}" && ok "QEMU restarts on the same disks" || { not_ok "QEMU restarts"; exit 1; }
random_writes 5 >/dev/null
for i in 0 1; do cp --sparse=always "$WORK/truth$i" "$WORK/truth$i.gen4"; done
if "$VMEXPORT" backup v1 --repo "$REPO" --json >"$WORK/backup4.out" 2>"$WORK/backup4.err"; then
    grep '"type":"summary"' "$WORK/backup4.out" | tail -1 >"$WORK/summary4"
    ok "the backup after the restart succeeds ($(jq -c '{incremental, bytes_read}' "$WORK/summary4"))"
    check "  and every disk is read in full, saying why ($(jq -c '[.disks[].full_reason]' "$WORK/summary4"))" \
        jq -e '[.disks[] | select(.incremental == false and (.full_reason | length) > 0)] | length == 2' "$WORK/summary4"
    restore_matches 4 "$(jq -r .backup "$WORK/summary4")"
else
    not_ok "the backup after the restart: $(tail -2 "$WORK/backup4.err")"
fi
