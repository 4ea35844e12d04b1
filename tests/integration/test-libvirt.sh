#!/bin/bash
# The libvirt provider on a private libvirtd (libvirt-lib.sh) and a running TCG domain with a
# qcow2 disk, a raw disk and a CD-ROM: listing, full and incremental backups through the daemon
# (checkpoints and pull-mode backup jobs), restored and compared bit for bit with what the disks
# held when each snapshot was taken; a snapshot never shows the guest's later writes; deleting
# snapshots ends their jobs, scratch files and checkpoints; a shut-off domain is read from its
# files, which it cannot change meanwhile; restore --define re-creates the domain; a tiny guest
# with its agent is frozen for the snapshot, which holds a file it wrote without sync; backups of
# the shut-off domain stay incremental through its image's bitmaps, also across a restart, and
# go full on a broken chain.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/libvirt-lib.sh"
require_root
for tool in curl jq qemu-img qemu-io; do
    command -v "$tool" >/dev/null || { skip "libvirt tier needs $tool"; exit 0; }
done
MIB=1048576
chmod 711 "$WORK" # libvirtd and QEMU run as $LV_USER below it

t0=$(date +%s%N)
start_libvirtd "$WORK/lv" || { skip "libvirt tier: $LV_WHY"; exit 0; }
diag "libvirtd answered after $((($(date +%s%N) - t0) / 1000000)) ms"

# The disks and the truth: raw copies that receive the same writes as the domain's disks.
IMG=$WORK/img TRUTH=$WORK/truth
# A short directory for the NBD sockets: a disk's NBD URI (its file_id) must fit 96 bytes.
NBD=$(mktemp -d /tmp/vxnbd.XXXXXX)
at_exit "rm -rf $NBD"
mkdir -p "$IMG" "$TRUTH" "$WORK/scratch"
truncate -s 64M "$TRUTH/vda"
truncate -s 32M "$TRUTH/vdb"
qemu-io -f raw -c "write -P 0x11 0 4M" -c "write -P 0x12 40M 1M" "$TRUTH/vda" >/dev/null
qemu-io -f raw -c "write -P 0x21 1M 2M" "$TRUTH/vdb" >/dev/null
qemu-img convert -O qcow2 "$TRUTH/vda" "$IMG/vda.qcow2"
cp --sparse=always "$TRUTH/vdb" "$IMG/vdb.raw"
truncate -s 1M "$IMG/cd.iso"
chown -R "$LV_USER" "$IMG" "$WORK/scratch" "$NBD"
disk() { # TYPE FILE TARGET BUS [DEVICE]
    echo "<disk type='file' device='${5:-disk}'><driver name='qemu' type='$1'/><source file='$2'/><target dev='$3' bus='$4'/>$([ "${5:-}" = cdrom ] && echo '<readonly/>')</disk>"
}
t0=$(date +%s%N)
define_tcg_domain vxt "$WORK" "$(disk qcow2 "$IMG/vda.qcow2" vda virtio)$(disk raw "$IMG/vdb.raw" vdb virtio)$(disk raw "$IMG/cd.iso" hdc ide cdrom)" ||
    { not_ok "a TCG domain starts: $(tail -2 "$WORK/lv/libvirtd.log")"; exit 1; }
ok "a TCG domain starts ($((($(date +%s%N) - t0) / 1000000)) ms)"
# write DISK DEVICE_ID QEMU_IO_CMD: into the running domain's disk, and into the truth
write() {
    lv_qemu_io vxt "$2" "$3" && qemu-io -f raw -c "$3" "$TRUTH/$1" >/dev/null
}

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" "[provider.lv]" "type = libvirt" \
    "uri = $LV_URI" "scratch_dir = $WORK/scratch" "nbd_dir = $NBD" ||
    { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" || { not_ok "daemon starts"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }
# the qemu-storage-daemons of shut-off snapshots, by the PIDs they wrote
at_exit 'for f in "$WORK"/scratch/*.qsd.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")"; done'
UUID=$(lv_virsh domuuid vxt)
expect_status 200 "the domain is a VM" GET /api/v1/vms/vxt
check "  with its UUID; vda and vdb can be snapshotted, the CD-ROM cannot" jq -e --arg u "$UUID" \
    '.uuid == $u and ([.disks[] | select(.snapshot_compatible) | .name] == ["vda", "vdb"]) and
     ([.disks[] | select(.name == "hdc") | .snapshot_compatible] == [false])' "$WORK/body"
expect_status 200 "its definition" GET /api/v1/vms/vxt/definition
check "  is the domain XML, persistent config" jq -e --arg u "$UUID" '.format == "libvirt-xml" and
    (.definition | contains("<uuid>" + $u + "</uuid>") and contains("vda.qcow2") and (contains("<alias") | not))' "$WORK/body"

export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
REPO=$WORK/repo
"$VMEXPORT" repo init "$REPO" >/dev/null || { not_ok "repo init"; exit 1; }
# backup_restore WHAT: back vxt up, restore it and compare with the truth as it is now.
backup_restore() {
    local what=$1 t
    t=$(date +%s%N)
    if ! "$VMEXPORT" backup vxt --repo "$REPO" --json >"$WORK/backup.out" 2>"$WORK/backup.err"; then
        not_ok "$what backup: $(tail -2 "$WORK/backup.err")"
        return 1
    fi
    grep '"type":"summary"' "$WORK/backup.out" | tail -1 >"$WORK/summary"
    ok "$what backup ($((($(date +%s%N) - t) / 1000000)) ms: $(jq -c '{incremental, bytes_read, transport}' "$WORK/summary"))"
    BACKUP=$(jq -r .backup "$WORK/summary")
    rm -rf "$WORK/r"
    "$VMEXPORT" restore --repo "$REPO" "$BACKUP" --to "$WORK/r" >/dev/null 2>"$WORK/restore.err" ||
        { not_ok "$what restore: $(tail -2 "$WORK/restore.err")"; return 1; }
    check "  restored vda is the qcow2 disk at the snapshot, bit for bit" cmp "$WORK/r/vda" "$TRUTH/vda"
    check "  restored vdb is the raw disk at the snapshot" cmp "$WORK/r/vdb" "$TRUTH/vdb"
}
backup_restore full
check "  it read the disks in full, from the job's NBD exports (transport auto)" \
    jq -e '.incremental == false and .transport == "nbd"' "$WORK/summary"

write vda virtio-disk0 "write -P 0x33 1M 64k"
write vda virtio-disk0 "write -z 40M 512k"
write vdb virtio-disk1 "write -P 0x44 5M 128k"

# A snapshot is a point in time: the guest's writes after it do not show in its data.  It is
# of the repository's chain, after the backup's snapshot B1 (released: its checkpoint stays).
B1=$(jq -r .snapshot "$WORK/summary")
expect_status 200 "the backup's snapshot stays as a checkpoint" GET "/api/v1/vms/vxt/snapshots/$B1"
CHAIN=$(jq -r .chain "$WORK/body")
check "  of the repository's chain" jq -e '.status == "checkpoint" and (.chain | startswith("vmexport-"))' "$WORK/body"
expect_status 201 "a snapshot through the API" POST /api/v1/vms/vxt/snapshots -d "{\"chain\": \"$CHAIN\"}"
SNAP=$(jq -r .id "$WORK/body")
check "  of that chain, not frozen (no guest agent)" jq -e --arg c "$CHAIN" '.chain == $c and .frozen == false' "$WORK/body"
cp --sparse=always "$TRUTH/vda" "$WORK/vda-at-snap"
write vda virtio-disk0 "write -P 0x55 1M 128k"
expect_status 200 "  its vda read after the guest wrote again" GET "/api/v1/vms/vxt/snapshots/$SNAP/disks/vda"
check "  is vda as it was at the snapshot" cmp "$WORK/body" "$WORK/vda-at-snap"
expect_status 200 "  vda's changes since B1 (the dirty bitmap of B1's checkpoint)" \
    GET "/api/v1/vms/vxt/snapshots/$SNAP/disks/vda/changes?changeId=$B1/0&zeroedInChanged=false"
check "  are the 64 KiB written and the 512 KiB zeroed" jq -e \
    '.changedArea == [{"start": 1048576, "length": 65536}] and .zeroedArea == [{"start": 41943040, "length": 524288}]' "$WORK/body"
expect_status 409 "  the raw vdb has no bitmap: its changes are unknown" \
    GET "/api/v1/vms/vxt/snapshots/$SNAP/disks/vdb/changes?changeId=$B1/1"
check "  and the answer says why" grep -q "raw disk" "$WORK/body"
expect_status 409 "a snapshot of another chain is refused while it lives" \
    POST /api/v1/vms/vxt/snapshots -d '{"chain": "other"}'
check "  saying why" grep -q "one backup job per domain" "$WORK/body"

# Released (keepCheckpoint): its job and scratch files end, its checkpoint stays a base.
expect_status 204 "the snapshot released" DELETE "/api/v1/vms/vxt/snapshots/$SNAP?keepCheckpoint=true"
check "  its scratch files are gone" test -z "$(ls "$WORK/scratch")"
check "  its checkpoint stays" test -n "$(lv_virsh checkpoint-list vxt --name | grep "$SNAP")"
expect_status 409 "  its data is no longer served" GET "/api/v1/vms/vxt/snapshots/$SNAP/disks/vda"
expect_status 201 "a next snapshot" POST /api/v1/vms/vxt/snapshots -d "{\"chain\": \"$CHAIN\"}"
SNAP2=$(jq -r .id "$WORK/body")
expect_status 200 "  its vda changes since the released one" \
    GET "/api/v1/vms/vxt/snapshots/$SNAP2/disks/vda/changes?changeId=$SNAP/0&zeroedInChanged=false"
check "  are the 128 KiB written after it" jq -e \
    '.changedArea == [{"start": 1048576, "length": 131072}] and .zeroedArea == []' "$WORK/body"
expect_status 204 "both deleted" DELETE "/api/v1/vms/vxt/snapshots/$SNAP2"
expect_status 204 "" DELETE "/api/v1/vms/vxt/snapshots/$SNAP"
check "  their checkpoints are gone" test -z "$(lv_virsh checkpoint-list vxt --name | grep "$SNAP")"
check "  and their scratch files" test -z "$(ls "$WORK/scratch")"

# Another chain (another repository) never gets changes from this chain's checkpoints.
expect_status 201 "a snapshot of chain other" POST /api/v1/vms/vxt/snapshots -d '{"chain": "other"}'
OTHER=$(jq -r .id "$WORK/body")
expect_status 409 "  its changes since B1 of the repository's chain are refused" \
    GET "/api/v1/vms/vxt/snapshots/$OTHER/disks/vda/changes?changeId=$B1/0"
check "  naming the chains" grep -q "chain other" "$WORK/body"
expect_status 204 "  deleted" DELETE "/api/v1/vms/vxt/snapshots/$OTHER"

# The next backup: vda from the dirty bitmap since B1's checkpoint, the raw vdb in full.
backup_restore incremental
check "  it read vda's changes only, vdb in full, and says why" jq -e \
    '.incremental == true and .bytes_read < 33554432 + 1048576' "$WORK/summary"
B2=$(jq -r .snapshot "$WORK/summary")
grep -q 'raw disk' "$WORK/backup.out" "$WORK/backup.err" && ok "  the reason for vdb is shown" ||
    not_ok "  the reason for vdb is shown: $(cat "$WORK/summary")"

# ---- restore --define: a new domain on the restored disks ----
chown -R "$LV_USER" "$WORK/r"
if "$VMEXPORT" restore --repo "$REPO" "$BACKUP" --to "$WORK/r" --force --define \
    --uri "$LV_URI" >"$WORK/define.out" 2>"$WORK/define.err"; then
    ok "restore --define ($(tail -1 "$WORK/define.out"))"
else
    not_ok "restore --define: $(tail -2 "$WORK/define.err")"
fi
check "  defines vxt-restored-1 (vxt exists)" lv_virsh dominfo vxt-restored-1
check "  with a new UUID" test "$(lv_virsh domuuid vxt-restored-1)" != "$UUID"
lv_virsh dumpxml vxt-restored-1 >"$WORK/restored.xml"
check "  its disks are the restored files" grep -q "source file='$WORK/r/vdb'" "$WORK/restored.xml"
chown -R "$LV_USER" "$WORK/r"
check "  it starts" lv_virsh start vxt-restored-1

# ---- a shut-off domain: its files, read-only, through a qemu-storage-daemon ----
lv_virsh destroy vxt >/dev/null
expect_status 200 "a shut-off domain's disks can still be snapshotted" GET /api/v1/vms/vxt
check "  vda and vdb" jq -e '[.disks[] | select(.snapshot_compatible) | .name] == ["vda", "vdb"]' "$WORK/body"
expect_status 201 "  a snapshot of the shut-off domain" POST /api/v1/vms/vxt/snapshots
OFF=$(jq -r .id "$WORK/body")
check "  taken from its files" jq -e '[.disks[].snapshot_mode] == ["libvirt-offline", "libvirt-offline"]' "$WORK/body"
for d in vda vdb; do
    expect_status 200 "  its $d" GET "/api/v1/vms/vxt/snapshots/$OFF/disks/$d"
    check "  is the disk as the domain left it" cmp "$WORK/body" "$TRUTH/$d"
done
start_quiet() { lv_virsh start vxt >/dev/null 2>&1; }
check_fails "  the domain cannot start (and change its disks) while it lives" start_quiet
expect_status 409 "  of chain default: no changes since B2 of the repository's chain" \
    GET "/api/v1/vms/vxt/snapshots/$OFF/disks/vda/changes?changeId=$B2/0"
check "  naming the chains" grep -q "chain default" "$WORK/body"
expect_status 204 "  deleted" DELETE "/api/v1/vms/vxt/snapshots/$OFF"
check "  its qemu-storage-daemon is gone" test -z "$(ls "$WORK/scratch")"
check "  the domain starts again" lv_virsh start vxt

# ---- the guest agent through libvirt: a frozen snapshot holds what the guest did not sync ----
source "$(dirname "$0")/guest/lib-guest.sh"
if ! command -v debugfs >/dev/null; then
    skip "guest agent part: debugfs is not installed (e2fsprogs)"
elif ! GDIR=$(bash "$GUEST_DIR/build-guest.sh" "${VMEXPORT_GUEST_CACHE:-$VMEXPORT_ROOT/build}" 2>"$WORK/guest-build.err"); then
    skip "guest agent part: the tiny guest cannot be built: $(tail -1 "$WORK/guest-build.err")"
else
    G=$WORK/g
    mkdir -p "$G"
    cp "$GDIR/vmlinuz" "$GDIR/initrd.img" "$G/"
    truncate -s 64M "$G/disk.raw"
    mkfs.ext4 -q -F "$G/disk.raw" >/dev/null
    qemu-img convert -O qcow2 "$G/disk.raw" "$G/vda.qcow2" && rm -f "$G/disk.raw"
    chown -R "$LV_USER" "$G"
    cat >"$G/vxg.xml" <<XML
<domain type='qemu'>
  <name>vxg</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>$G/vmlinuz</kernel><initrd>$G/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    $(disk qcow2 "$G/vda.qcow2" vda virtio)
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='unix'><source mode='bind' path='$G/cmd'/><target type='virtio' name='vmexport.cmd'/></channel>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    t0=$(date +%s%N)
    if lv_virsh define "$G/vxg.xml" >/dev/null && lv_virsh start vxg >/dev/null &&
        vmctl wait-sh "$G/cmd" 90; then
        ok "the tiny guest boots in a domain ($((($(date +%s%N) - t0) / 1000000)) ms)"
    else
        not_ok "the tiny guest boots in a domain"
    fi
    for i in $(seq 300); do
        lv_virsh qemu-agent-command vxg '{"execute":"guest-ping"}' >/dev/null 2>&1 && break
        sleep 0.1
    done
    check "  its agent answers through libvirt" lv_virsh qemu-agent-command vxg '{"execute":"guest-ping"}'
    SUM=$(vmctl sh "$G/cmd" 'dd if=/dev/urandom of=/mnt/unsynced.bin bs=64k count=32 2>/dev/null && md5sum /mnt/unsynced.bin')
    SUM=${SUM%% *}
    check "  the guest wrote 2 MiB without sync" test ${#SUM} = 32
    expect_status 201 "  a snapshot" POST /api/v1/vms/vxg/snapshots
    GS=$(jq -r .id "$WORK/body")
    check "  frozen by the guest agent through libvirt ($(jq .frozenMs "$WORK/body") ms)" \
        jq -e '.frozen == true and .frozenMs > 0' "$WORK/body"
    expect_status 200 "  its disk" GET "/api/v1/vms/vxg/snapshots/$GS/disks/vda"
    mv "$WORK/body" "$G/snap.img"
    debugfs -R "dump /unsynced.bin $G/unsynced.bin" "$G/snap.img" >/dev/null 2>&1
    check "  holds the unsynced file, complete" test "$(md5sum <"$G/unsynced.bin" | cut -d' ' -f1)" = "$SUM"
    fsck_quiet() { e2fsck -fn "$1" >/dev/null 2>&1; }
    check "  in a clean filesystem (e2fsck -n)" fsck_quiet "$G/snap.img"
    check "  the guest is thawed: its writes go on" vmctl sh "$G/cmd" 'echo after >/mnt/after && sync'
    # Ending its job.  The guest reopens its command port several times a second while no one
    # is connected to it, and libvirt 9.0 makes each of those port changes wait 30 s for the
    # backup job in the domain's event queue, ahead of the job's own end: the provider has the
    # job's end handled outside that queue (lv_job_blockjobs_settle).
    port_changed() { lv_virsh qemu-monitor-event vxg --event VSERPORT_CHANGE --timeout 10 | grep -q VSERPORT; }
    check "  the guest changed a virtio-serial port while the job lives" port_changed
    expect_status 204 "  released while the guest toggles a virtio-serial port" \
        DELETE "/api/v1/vms/vxg/snapshots/$GS?keepCheckpoint=true"
    no_job() { ! lv_virsh backup-dumpxml vxg >/dev/null 2>&1; }
    check "  its backup job is gone" no_job
    check "  and its scratch file" test -z "$(ls "$WORK/scratch")"
    expect_status 201 "  a next snapshot of the guest" POST /api/v1/vms/vxg/snapshots
    GS2=$(jq -r .id "$WORK/body")
    check "  frozen again" jq -e '.frozen == true' "$WORK/body"
    expect_status 200 "  its changes since the released one" \
        GET "/api/v1/vms/vxg/snapshots/$GS2/disks/vda/changes?changeId=$GS/0"
    check "  include the file written after it" jq -e '.changedArea | length > 0' "$WORK/body"
    expect_status 204 "  both deleted" DELETE "/api/v1/vms/vxg/snapshots/$GS2"
    expect_status 204 "" DELETE "/api/v1/vms/vxg/snapshots/$GS"
    check "  no job, checkpoint or scratch file is left" test -z \
        "$(lv_virsh checkpoint-list vxg --name; lv_virsh backup-dumpxml vxg 2>/dev/null; ls "$WORK/scratch")"
fi

# ---- a shut-off domain's backups stay incremental: the qcow2 image's persistent bitmaps ----
# Its snapshot makes no checkpoint (libvirt makes none for an inactive domain) but counts its
# changes from the chain's newest one, through the bitmaps of the chain's checkpoints in the
# image, which also record what qemu-io writes into the image while the domain is off.
disk_field() { jq -r --arg d "$1" --arg f "$2" '.disks[] | select(.name == $d) | .[$f] | if . == null then "" else tostring end' "$WORK/summary"; }
vda_incremental() { test "$(disk_field vda incremental)" = true; }
offline_write() { # DISK CMD: qemu-io on the shut-off domain's image, and the truth
    qemu-io -f qcow2 -c "$2" "$IMG/$1.qcow2" >/dev/null && qemu-io -f raw -c "$2" "$TRUTH/$1" >/dev/null
}
write vda virtio-disk0 "write -P 0x61 8M 192k"
backup_restore "running domain:" && check "  vda incremental" vda_incremental
B3=$(jq -r .snapshot "$WORK/summary")
write vda virtio-disk0 "write -P 0x62 9M 64k"
write vda virtio-disk0 "write -z 0 64k"
lv_virsh destroy vxt >/dev/null
NCP=$(lv_virsh checkpoint-list vxt --name | wc -l)
expect_status 201 "shut off: a snapshot of the repository's chain" POST /api/v1/vms/vxt/snapshots -d "{\"chain\": \"$CHAIN\"}"
OFF=$(jq -r .id "$WORK/body")
check "  makes no checkpoint" test "$(lv_virsh checkpoint-list vxt --name | wc -l)" = "$NCP"
expect_status 200 "  vda's changes since B3, from the image's bitmaps" \
    GET "/api/v1/vms/vxt/snapshots/$OFF/disks/vda/changes?changeId=$B3/0&zeroedInChanged=false"
check "  are the 64 KiB written and the 64 KiB zeroed while it ran" jq -e \
    '.changedArea == [{"start": 9437184, "length": 65536}] and .zeroedArea == [{"start": 0, "length": 65536}]' "$WORK/body"
expect_status 409 "  the raw vdb's are unknown" GET "/api/v1/vms/vxt/snapshots/$OFF/disks/vdb/changes?changeId=$B3/1"
check "  saying why" grep -q "keeps no bitmaps" "$WORK/body"
expect_status 204 "  deleted" DELETE "/api/v1/vms/vxt/snapshots/$OFF"
backup_restore "shut-off domain:" &&
    check "  vda incremental, the raw vdb in full ($(disk_field vdb full_reason))" test "$(disk_field vda incremental)$(disk_field vdb incremental)" = truefalse
offline_write vda "write -P 0x63 20M 128k"
backup_restore "shut-off domain whose image qemu-io wrote:" && check "  vda incremental" vda_incremental
check "  no checkpoint was made while it was off" test "$(lv_virsh checkpoint-list vxt --name | wc -l)" = "$NCP"
check "started again" lv_virsh start vxt
write vda virtio-disk0 "write -P 0x64 30M 64k"
backup_restore "running again, from the shut-off backup:" && check "  vda incremental" vda_incremental
# The checkpoint the shut-off backups counted from outlived its own snapshot (deleted as old
# while the domain was off) and went with the last of theirs.
check "  one checkpoint of the chain is left, and no record of a shut-off snapshot" test \
    "$(lv_virsh checkpoint-list vxt --name | grep -c "$CHAIN")$(ls "$WORK/scratch")" = 1
lv_virsh destroy vxt >/dev/null
BM=$(qemu-img info -U --output=json "$IMG/vda.qcow2" |
    jq -r '.["format-specific"].data.bitmaps[].name' | grep -F "vmexport.$CHAIN." | sort | tail -1)
check "  shut off, the chain's newest bitmap removed with qemu-img ($BM)" qemu-img bitmap --remove "$IMG/vda.qcow2" "$BM"
offline_write vda "write -P 0x65 2M 64k"
backup_restore "shut-off domain with a broken chain:" &&
    check "  vda in full, saying why" test "$(disk_field vda incremental)" = false
disk_field vda full_reason | grep -q "is gone from the image" && ok "  the reason names the gone bitmap" ||
    not_ok "  the reason names the gone bitmap: $(disk_field vda full_reason)"

stop_daemon
check "the daemon stops cleanly (under ASan: nothing leaked)" test $? -eq 0
