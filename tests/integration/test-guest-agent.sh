#!/bin/bash
# Guest tier: a tiny Linux guest (tests/integration/guest/build-guest.sh) under
# qemu-system-x86_64 -accel tcg with qemu-guest-agent, backed up through the qemu provider with
# guest_agent_sockets.  A file written in the guest and never synced is complete in the frozen
# snapshot's backup, whose filesystem e2fsck finds clean; the snapshot says it was frozen and for
# how long.  An agent that hangs in the freeze makes the snapshot fail with a clear error after
# freeze_timeout, and the guest is thawed afterwards (guest-fsfreeze-status, and a write in the
# guest goes through).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/guest/lib-guest.sh"

command -v qemu-system-x86_64 >/dev/null || { skip "qemu-system-x86_64 is not installed (qemu-system-x86)"; exit 0; }
command -v debugfs >/dev/null || { skip "debugfs is not installed (e2fsprogs)"; exit 0; }
FREEZE_TIMEOUT=3 # seconds: a freeze takes ~0.1 s under TCG
HANG=8           # seconds the guest's freeze hook hangs in the hung-agent case

guest_build GUEST
truncate -s 64M "$WORK/disk.raw"
mkfs.ext4 -q -F "$WORK/disk.raw" >/dev/null
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/disk.qcow2" && rm -f "$WORK/disk.raw"
vm_start g1 "$GUEST" "$WORK/disk.qcow2" || { not_ok "QEMU starts"; exit 1; }
CMD=$WORK/vm-g1.cmd QGA=$WORK/qga/g1.qga
vmctl wait-sh "$CMD" 90 && ok "the tiny guest boots" ||
    { not_ok "the tiny guest boots: $(tail -5 "$WORK/vm-g1.console")"; exit 1; }
vmctl wait-qga "$QGA" 30 && ok "its guest agent answers" || { not_ok "guest agent answers"; exit 1; }

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.live]" "type = qemu" "qmp_sockets = $WORK/qmp/*.qmp" \
    "guest_agent_sockets = $WORK/qga/*.qga" "freeze_timeout = $FREEZE_TIMEOUT" \
    "scratch_dir = $WORK/scratch" "nbd_dir = $WORK/nbd" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" && ok "daemon starts" || { not_ok "daemon starts"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
REPO=$WORK/repo
"$VMEXPORT" repo init "$REPO" >/dev/null || { not_ok "repo init"; exit 1; }
expect_status 200 "the VM is listed" GET /api/v1/vms/g1
DISK=$(jq -r '.disks[0].name' "$WORK/body")

# A file the guest writes and does not sync: ext4 keeps it in the page cache (delayed
# allocation, 30 s before writeback), so only a freeze puts it on the disk in time.
SUM=$(vmctl sh "$CMD" 'dd if=/dev/urandom of=/mnt/unsynced.bin bs=64k count=32 2>/dev/null && md5sum /mnt/unsynced.bin')
SUM=${SUM%% *}
check "the guest wrote 2 MiB without sync" test ${#SUM} = 32
diag "guest dirty memory: $(vmctl sh "$CMD" 'grep Dirty: /proc/meminfo' | tr -s ' ')"

# backup GEN: a backup through the daemon; its summary in $WORK/summaryGEN.
backup() {
    "$VMEXPORT" backup g1 --repo "$REPO" --json >"$WORK/backup$1.out" 2>"$WORK/backup$1.err" &&
        grep '"type":"summary"' "$WORK/backup$1.out" | tail -1 >"$WORK/summary$1"
}
if backup 1; then
    ok "backup of the running guest"
    SID=$(jq -r .snapshot "$WORK/summary1")
    expect_status 200 "its snapshot is listed" GET "/api/v1/vms/g1/snapshots/$SID"
    check "  as frozen by the guest agent" jq -e '.frozen == true' "$WORK/body"
    check "  for a reported time ($(jq .frozenMs "$WORK/body") ms)" jq -e '(.frozenMs | type) == "number" and .frozenMs > 0' "$WORK/body"
    rm -rf "$WORK/r" && mkdir "$WORK/r"
    "$VMEXPORT" restore --repo "$REPO" "$(jq -r .backup "$WORK/summary1")" --to "$WORK/r" >/dev/null 2>&1
    IMG=$WORK/r/$DISK
    check "the backup restores" test -s "$IMG"
    check "e2fsck -n finds the restored filesystem clean" e2fsck -fn "$IMG"
    debugfs -R "dump /unsynced.bin $WORK/unsynced.bin" "$IMG" >/dev/null 2>&1
    check "the unsynced file is complete in the backup" test "$(md5sum <"$WORK/unsynced.bin" | cut -d' ' -f1)" = "$SUM"
else
    not_ok "backup of the running guest: $(tail -2 "$WORK/backup1.err")"
fi
grep -o 'guest .*frozen for [^;]*' "$WORK/daemon.log" | tail -1 | sed 's/^/# /'

# A hung agent: the guest's freeze hook sleeps HANG seconds, longer than freeze_timeout.
vmctl sh "$CMD" "echo $HANG > /run/hang-freeze" >/dev/null
code=$(api POST /api/v1/vms/g1/snapshots)
if [ "$code" -ge 500 ] && grep -q 'guest-fsfreeze-freeze' "$WORK/body"; then
    ok "a hung agent fails the snapshot after freeze_timeout (HTTP $code: $(jq -r .details "$WORK/body" | head -c 200))"
else
    not_ok "a hung agent fails the snapshot (HTTP $code, want 5xx naming the freeze): $(head -c 300 "$WORK/body")"
fi
check "the guest is thawed afterwards (guest-fsfreeze-status)" \
    test "$(vmctl qga "$QGA" guest-fsfreeze-status)" = '"thawed"'
check "and its filesystem takes writes" vmctl sh "$CMD" 'echo after > /mnt/after.txt && sync' 20
api GET /api/v1/vms/g1/snapshots >/dev/null
check "the failed snapshot left no record" jq -e "[.[] | select(.id != \"$SID\")] | length == 0" "$WORK/body"
vmctl sh "$CMD" 'rm /run/hang-freeze' >/dev/null
if backup 2; then
    ok "the next backup succeeds ($(jq -c '{incremental, bytes_read}' "$WORK/summary2"))"
    expect_status 200 "  its snapshot is listed" GET "/api/v1/vms/g1/snapshots/$(jq -r .snapshot "$WORK/summary2")"
    check "  frozen again" jq -e '.frozen == true' "$WORK/body"
else
    not_ok "the next backup: $(tail -2 "$WORK/backup2.err")"
fi
