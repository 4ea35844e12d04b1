#!/bin/bash
# The qemu provider (provider/qemu.c) against a real qemu-storage-daemon, through vmexportd over
# TLS: the VM and its disks (qcow2, raw, a read-only node), snapshots whose data is the disks'
# content at the instant of the snapshot while the "guest" keeps writing (through writable FUSE
# exports of the same nodes), changes between snapshots equal to exactly the 64 KiB blocks
# written, zeroed blocks, the NBD identity a client on the host reads directly, deletion that
# leaves no node, export, job or scratch file behind, and a checkpoint removed behind our back.
source "$(dirname "$0")/lib.sh"

QSD=$(command -v qemu-storage-daemon) ||
    { skip "no qemu-storage-daemon (Debian package qemu-system-common)"; exit 0; }
for tool in qemu-img curl jq python3 nbdcopy; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done
[ -c /dev/fuse ] || { skip "no /dev/fuse for the test's writable FUSE exports"; exit 0; }

QMP="python3 $VMEXPORT_ROOT/tests/integration/qmp_call.py"
BLK=65536
IMG=$WORK/img
mkdir -p "$IMG" "$WORK/qmp" "$WORK/truth"
qemu-img create -q -f qcow2 "$IMG/d0.qcow2" 32M
qemu-img create -q -f raw "$IMG/d1.raw" 16M
head -c 1048576 /dev/urandom >"$IMG/cd.iso"
# Data before the first snapshot: some blocks, and holes.
qemu-io -f qcow2 -c "write -P 0x5a 0 2M" -c "write -P 0x33 8M 1M" "$IMG/d0.qcow2" >/dev/null
dd if=/dev/urandom of="$IMG/d1.raw" bs=1M count=2 seek=4 conv=notrunc status=none

# Short: the NBD socket path goes into a 96-byte identity (nbd+unix:///EXPORT?socket=PATH).
NBD_DIR=$(mktemp -d /tmp/vmx-nbd.XXXXXX)
at_exit "rm -rf $NBD_DIR"
SCRATCH=$WORK/scratch
CTL=$WORK/ctl.sock # the test's own monitor: a QMP socket serves one client at a time
F0=$WORK/fuse0 F1=$WORK/fuse1
touch "$F0" "$F1"
at_exit "umount -l $F0; umount -l $F1"
"$QSD" --blockdev "file,node-name=f0,filename=$IMG/d0.qcow2" \
    --blockdev qcow2,node-name=disk0,file=f0 \
    --blockdev "file,node-name=disk1,filename=$IMG/d1.raw" \
    --blockdev "file,node-name=cd0,filename=$IMG/cd.iso,read-only=on" \
    --chardev "socket,id=m0,path=$WORK/qmp/vm1.qmp,server=on,wait=off" --monitor chardev=m0 \
    --chardev "socket,id=m1,path=$CTL,server=on,wait=off" --monitor chardev=m1 \
    --export "fuse,id=x0,node-name=disk0,mountpoint=$F0,writable=on" \
    --export "fuse,id=x1,node-name=disk1,mountpoint=$F1,writable=on" \
    >"$WORK/qsd.log" 2>&1 &
QSD_PID=$!
at_exit "kill -9 $QSD_PID"
for _ in $(seq 200); do [ -S "$CTL" ] && [ -S "$WORK/qmp/vm1.qmp" ] && break; sleep 0.05; done
$QMP "$CTL" query-block-exports >/dev/null && ok "qemu-storage-daemon runs" ||
    { not_ok "qemu-storage-daemon: $(tail -3 "$WORK/qsd.log")"; exit 1; }

PORT=$(free_port)
CONF=$WORK/vmexportd.conf
write_config "$CONF" "$PORT" "$WORK/state" "[provider.live]" "type = qemu" \
    "qmp_sockets = $WORK/qmp/*.qmp" "scratch_dir = $SCRATCH" "nbd_dir = $NBD_DIR" ||
    { not_ok "write config"; exit 1; }
start_daemon "$CONF" "$PORT" && ok "daemon starts" || { not_ok "daemon starts"; exit 1; }
login admin secret && ok "login" || { not_ok "login"; exit 1; }

# ---- the VM and its disks ----
expect_status 200 "the VM is listed" GET /api/v1/vms
check "  by its socket's name, with the provider" jq -e '[.[] | .name] == ["vm1"]' "$WORK/body"
expect_status 200 "the VM" GET /api/v1/vms/vm1
check "  three disks: qcow2 and raw writable, the read-only node not snapshotted" jq -e '
    [.disks[] | [.name, .mode, .snapshot_compatible, .size]] ==
    [["cd0","r",false,1048576],["disk0","w",true,33554432],["disk1","w",true,16777216]]' "$WORK/body"

VM=vm1 # the VM of the helpers below
# write_block FILE BLOCK: random data into one 64 KiB block through the FUSE export.
write_block() {
    dd if=/dev/urandom of="$1" bs=$BLK seek="$2" count=1 conv=notrunc,fsync status=none
}
# snapshot NAME [BODY]: POST a snapshot, its ID into the variable NAME.
snapshot() {
    local got
    got=$(api POST "/api/v1/vms/$VM/snapshots" -H 'Content-Type: application/json' -d "${2:-{\}}")
    if [ "$got" = 201 ]; then
        printf -v "$1" '%s' "$(jq -r .id "$WORK/body")"
        ok "snapshot $1"
    else
        not_ok "snapshot $1 (HTTP $got): $(head -c 300 "$WORK/body")"
        exit 1
    fi
}
# blocks SNAP BASE DISK FIELD: the 64 KiB block numbers in FIELD (chunks or zeroed) of DISK
# in SNAP compared to BASE, as one line.
blocks() {
    api GET "/api/v1/vms/$VM/snapshots/$1?compareTo=$2" >/dev/null
    jq -r --arg d "$3" --arg f "$4" --argjson b $BLK '[.disks[] | select(.name == $d) | .[$f][] |
        range(.start / $b; (.start + .length) / $b)] | map(tostring) | join(" ")' "$WORK/body"
}
# same_bytes SNAP DISK TRUTH: the snapshot disk's bytes, served over HTTPS, equal TRUTH.
same_bytes() {
    api GET "/api/v1/vms/$VM/snapshots/$1/disks/$2" >/dev/null && cmp -s "$WORK/body" "$3"
}

cp "$F0" "$WORK/truth/s1.disk0" && cp "$F1" "$WORK/truth/s1.disk1"
snapshot S1
check "  of the two writable disks, by fleecing" jq -e \
    '[.disks[] | [.name, .snapshot_mode]] == [["disk0","fleece"],["disk1","fleece"]]' "$WORK/body"
diag "$(grep -o "snapshot [^ ]* of 2 disks: scratch images.*" "$WORK/daemon.log" | tail -1)"

# The guest writes on while the snapshot is read: blocks W0 now, and a writer that goes over
# blocks 200..207 again and again (one full pass at least before it stops).
W0="3 17 100 101 300"
for b in $W0; do write_block "$F0" "$b"; done
write_block "$F1" 9
(
    while :; do
        for b in 200 201 202 203 204 205 206 207; do write_block "$F0" "$b"; done
        touch "$WORK/pass"
    done
) &
WRITER=$!
at_exit "kill $WRITER"
check "the snapshot's disk0 is the disk at the snapshot (qcow2, writes going on)" \
    same_bytes "$S1" disk0 "$WORK/truth/s1.disk0"
check "the snapshot's disk1 is the disk at the snapshot (raw)" \
    same_bytes "$S1" disk1 "$WORK/truth/s1.disk1"
check "  and not the disk now" test "$(cmp -s "$F0" "$WORK/truth/s1.disk0"; echo $?)" = 1
for _ in $(seq 200); do [ -e "$WORK/pass" ] && break; sleep 0.05; done
kill "$WRITER"
wait "$WRITER" 2>/dev/null

expect_status 200 "the snapshot with its disks" GET "/api/v1/vms/vm1/snapshots/$S1"
URI=$(jq -r '.disks[] | select(.name == "disk0") | .file_id' "$WORK/body")
check "  its file_id is the NBD export of the scratch image" test "${URI#nbd+unix:///}" != "$URI"
nbdcopy "$URI" "$WORK/nbd.out" 2>/dev/null
check "  which a client on the host reads: the same bytes" cmp -s "$WORK/nbd.out" "$WORK/truth/s1.disk0"
rm -f "$WORK/nbd.out"
check "  the checkpoint of the qcow2 disk is persistent, the raw disk's not" test "$($QMP "$CTL" \
    query-named-block-nodes '{"flat":true}' | jq -r '[.[] | select(.["node-name"] == "disk0" or
    .["node-name"] == "disk1") | .["node-name"] + ":" + (.["dirty-bitmaps"][] |
    select((.name // "") | startswith("vmexport.default.")) | .persistent | tostring)] | sort | join(" ")')" \
    = "disk0:true disk1:false"

cp "$F0" "$WORK/truth/s2.disk0"
snapshot S2
check "changes S1 -> S2 of disk0: exactly the blocks written" \
    test "$(blocks "$S2" "$S1" disk0 chunks)" = "3 17 100 101 200 201 202 203 204 205 206 207 300"
check "  by the dirty bitmap" jq -e '.disks[0].diff_mode == "bitmap"' "$WORK/body"
check "changes S1 -> S2 of disk1: the block written" test "$(blocks "$S2" "$S1" disk1 chunks)" = 9
check "S2's data is the disk at S2" same_bytes "$S2" disk0 "$WORK/truth/s2.disk0"

# A zeroed block (zeros written through the export: a qcow2 zero cluster) and a new one.
fallocate -z -o $((8 * 1048576)) -l $BLK "$F0"
write_block "$F0" 5
snapshot S3
check "changes S2 -> S3: the zeroed and the written block" \
    test "$(blocks "$S3" "$S2" disk0 chunks)" = "5 128"
check "  the zeroed one as zeroed" test "$(blocks "$S3" "$S2" disk0 zeroed)" = 128
check "changes S1 -> S3: the union over two checkpoints" \
    test "$(blocks "$S3" "$S1" disk0 chunks)" = "3 5 17 100 101 128 200 201 202 203 204 205 206 207 300"

# ---- release: the checkpoint alone keeps the changes known ----
expect_status 204 "S2's data is released (keepCheckpoint)" DELETE "/api/v1/vms/vm1/snapshots/$S2?keepCheckpoint=true"
check "  its scratch images are gone, S1's and S3's stay" test "$(ls "$SCRATCH" | wc -l)" = 4
check "  its exports are gone" test "$($QMP "$CTL" query-block-exports |
    jq '[.[] | select(.id | startswith("vmxe"))] | length')" = 4
expect_status 409 "  its data answers 409" GET "/api/v1/vms/vm1/snapshots/$S2/disks/disk0"
check "  changes S2 (checkpoint) -> S3 still known" test "$(blocks "$S3" "$S2" disk0 chunks)" = "5 128"

# ---- deleting ----
expect_status 204 "S1 is deleted" DELETE "/api/v1/vms/vm1/snapshots/$S1"
check "  S2 -> S3 still known" test "$(blocks "$S3" "$S2" disk0 chunks)" = "5 128"
check "  its scratch images are gone, S3's stay" test "$(ls "$SCRATCH" | wc -l)" = 2
expect_status 204 "S2 is deleted" DELETE "/api/v1/vms/vm1/snapshots/$S2"
expect_status 204 "S3 is deleted" DELETE "/api/v1/vms/vm1/snapshots/$S3"
check "no node of ours is left" test "$($QMP "$CTL" query-named-block-nodes '{"flat":true}' |
    jq '[.[] | select(.["node-name"] | startswith("vmx"))] | length')" = 0
check "no export of ours, no job" test "$($QMP "$CTL" query-block-exports | jq -c '[.[].id] | sort')$($QMP \
    "$CTL" query-jobs | jq length)" = '["x0","x1"]0'
check "no checkpoint of ours" test "$($QMP "$CTL" query-named-block-nodes '{"flat":true}' |
    jq '[.[] | .["dirty-bitmaps"][]? | select((.name // "") | startswith("vmexport."))] | length')" = 0
check "no scratch image" test -z "$(ls -A "$SCRATCH")"
check "the disks' exports are on the user's nodes again" test "$($QMP "$CTL" query-block-exports |
    jq -c '[.[]["node-name"]] | sort')" = '["disk0","disk1"]'

# ---- chains: two repositories back up the same VM independently ----
snapshot S4
write_block "$F0" 7
snapshot R1 '{"chain":"repo-2"}'
check "  in chain repo-2" jq -e '.chain == "repo-2"' "$WORK/body"
write_block "$F0" 9
snapshot R2 '{"chain":"repo-2"}'
snapshot S5
check "chain repo-2: changes R1 -> R2" test "$(blocks "$R2" "$R1" disk0 chunks)" = 9
check "chain default: changes S4 -> S5 over the other chain's snapshots" \
    test "$(blocks "$S5" "$S4" disk0 chunks)" = "7 9"
api GET "/api/v1/vms/vm1/snapshots/$R2?compareTo=$S4" >/dev/null
check "a base of another chain: the disk in full, saying why" jq -e '[.disks[] | .diff_mode] ==
    ["full","full"] and (.disks[0].diff_reason | test("chain"))' "$WORK/body"

# ---- a checkpoint removed behind our back ----
write_block "$F0" 11
snapshot S6
T5=$(api GET "/api/v1/vms/vm1/snapshots/$S5" >/dev/null; jq -r '.disks[] | select(.name == "disk0") | .path | fromjson | .t' "$WORK/body")
CH5=$(jq -r '.disks[] | select(.name == "disk0") | .change_id' "$WORK/body")
B5=$($QMP "$CTL" query-named-block-nodes '{"flat":true}' | jq -r --arg t "$T5" '.[] |
    select(.["node-name"] == "disk0") | .["dirty-bitmaps"][] | .name // "" |
    select(startswith("vmexport.default." + $t))')
$QMP "$CTL" block-dirty-bitmap-remove "{\"node\":\"disk0\",\"name\":\"$B5\"}" >/dev/null &&
    ok "S5's checkpoint on disk0 is removed by someone else" || not_ok "remove $B5"
api GET "/api/v1/vms/vm1/snapshots/$S6?compareTo=$S5" >/dev/null
check "compareTo S5: disk0 in full, saying why; disk1 still by its bitmap" jq -e '
    (.disks[] | select(.name == "disk0") | .diff_mode == "full" and (.diff_reason | test("gone"))) and
    (.disks[] | select(.name == "disk1") | .diff_mode == "bitmap" and .chunks == [])' "$WORK/body"
expect_status 409 "the disk's changes since S5: 409" \
    GET "/api/v1/vms/vm1/snapshots/$S6/disks/disk0/changes?changeId=$CH5"
check "  error checkpoint, saying why" jq -e '.error == "checkpoint" and (.details | test("gone"))' "$WORK/body"

# ---- the VM's definition ----
expect_status 200 "the VM's definition" GET /api/v1/vms/vm1/definition
check "  what QMP says of its block nodes, without ours" jq -e '.format == "qemu-qmp-json" and
    (.definition | fromjson | [.nodes[]["node-name"]] | sort == ["cd0","disk0","disk1","f0"])' "$WORK/body"

for s in "$S4" "$R1" "$R2" "$S5" "$S6"; do api DELETE "/api/v1/vms/vm1/snapshots/$s" >/dev/null; done
check "all deleted: no node, export, checkpoint or scratch image of ours" test "$($QMP "$CTL" \
    query-named-block-nodes '{"flat":true}' | jq '[.[] | select(.["node-name"] | startswith("vmx")),
    (.["dirty-bitmaps"][]? | select((.name // "") | startswith("vmexport.")))] | length')$(ls -A "$SCRATCH")" = 0

# ---- vmexport backup reads the exports over NBD: full, then only the blocks written ----
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
REPO=$WORK/repo
"$VMEXPORT" repo init "$REPO" >/dev/null
# backup_summary: back up vm1, its summary line into $WORK/summary.
backup_summary() {
    "$VMEXPORT" backup vm1 --repo "$REPO" --json >"$WORK/backup.out" 2>"$WORK/backup.err" &&
        grep '"type":"summary"' "$WORK/backup.out" | tail -1 >"$WORK/summary"
}
cp "$F0" "$WORK/truth/b1.disk0"
backup_summary && ok "a full backup" || not_ok "full backup: $(tail -3 "$WORK/backup.err")"
check "  read over NBD" jq -e '.transport == "nbd" and .incremental == false' "$WORK/summary"
B1=$(jq -r .backup "$WORK/summary")
write_block "$F0" 40
write_block "$F0" 300
cp "$F0" "$WORK/truth/b2.disk0"
backup_summary && ok "an incremental backup" || not_ok "incremental backup: $(tail -3 "$WORK/backup.err")"
check "  read the two blocks written and nothing else" jq -e \
    '.transport == "nbd" and .incremental == true and .bytes_read == 131072' "$WORK/summary"
B2=$(jq -r .backup "$WORK/summary")
for b in B1 B2; do
    rm -rf "$WORK/restore"
    "$VMEXPORT" restore --repo "$REPO" "${!b}" --disk disk0 --to "$WORK/restore" >/dev/null 2>&1
    check "  restore of $b: disk0 as it was at its snapshot" cmp -s "$WORK/restore" \
        "$WORK/truth/${b,,}.disk0"
done
api GET /api/v1/vms/vm1/snapshots >/dev/null
for s in $(jq -r '.[].id' "$WORK/body"); do api DELETE "/api/v1/vms/vm1/snapshots/$s" >/dev/null; done

# ---- scratch_limit and snapshot_lifetime: the snapshot ends, the guest's writes go on ----
stop_daemon
check "the daemon stops cleanly" test $? -eq 0
write_config "$CONF" "$PORT" "$WORK/state" "[provider.live]" "type = qemu" \
    "qmp_sockets = $WORK/qmp/*.qmp" "scratch_dir = $SCRATCH" "nbd_dir = $NBD_DIR" \
    "scratch_limit = 1048576" "snapshot_lifetime = 3"
start_daemon "$CONF" "$PORT" && login admin secret && ok "daemon restarts with limits" ||
    { not_ok "daemon restarts"; exit 1; }
snapshot L1
head -c 4194304 /dev/urandom >"$WORK/4m"
dd if="$WORK/4m" of="$F0" bs=1M conv=notrunc,fsync status=none &&
    ok "the guest overwrites 4 MiB while its snapshot copies the old data into scratch" || not_ok "guest write failed"
# wait_log TEXT: until the daemon logs TEXT (the watcher looks once a second).
wait_log() { for _ in $(seq 100); do grep -q "$1" "$WORK/daemon.log" && return 0; sleep 0.1; done; return 1; }
check "the watcher ends the snapshot over scratch_limit, saying why" \
    wait_log "disk disk0: its scratch image grew to [0-9]* bytes, over scratch_limit 1048576"
expect_status 410 "  its data is gone" GET "/api/v1/vms/vm1/snapshots/$L1/disks/disk0"
check "  saying why" grep -q "its scratch space reached scratch_limit" "$WORK/body"
check "  the guest's data is all there" cmp -s <(dd if="$F0" bs=1M count=4 status=none) "$WORK/4m"
check "  its backup job and export are gone" test "$($QMP "$CTL" query-jobs | jq length)$($QMP \
    "$CTL" query-block-exports | jq '[.[] | select(.id | startswith("vmxe"))] | length')" = 00
snapshot L2
check "the watcher ends a snapshot older than snapshot_lifetime" \
    wait_log "snapshot $L2: disk disk1: older than snapshot_lifetime 3 s"
expect_status 410 "  its data is gone" GET "/api/v1/vms/vm1/snapshots/$L2/disks/disk1"
check "  saying why" grep -q "it outlived snapshot_lifetime" "$WORK/body"
for s in "$L1" "$L2"; do expect_status 204 "ended snapshot is deleted" DELETE "/api/v1/vms/vm1/snapshots/$s"; done
check "  nothing of them is left" test "$($QMP "$CTL" query-named-block-nodes '{"flat":true}' |
    jq '[.[] | select(.["node-name"] | startswith("vmx")), (.["dirty-bitmaps"][]? |
    select((.name // "") | startswith("vmexport.")))] | length')$(ls -A "$SCRATCH")" = 0

# ---- a process that runs an NBD server of its own: no snapshot, nothing left ----
qemu-img create -q -f qcow2 "$IMG/e0.qcow2" 8M
"$QSD" --blockdev "file,node-name=g0,filename=$IMG/e0.qcow2" --blockdev qcow2,node-name=edisk,file=g0 \
    --nbd-server "addr.type=unix,addr.path=$WORK/own-nbd.sock" \
    --chardev "socket,id=m0,path=$WORK/qmp/vm2.qmp,server=on,wait=off" --monitor chardev=m0 \
    --chardev "socket,id=m1,path=$WORK/ctl2.sock,server=on,wait=off" --monitor chardev=m1 \
    >"$WORK/qsd2.log" 2>&1 &
at_exit "kill -9 $!"
for _ in $(seq 200); do [ -S "$WORK/ctl2.sock" ] && [ -S "$WORK/qmp/vm2.qmp" ] && break; sleep 0.05; done
expect_status 409 "a VM whose process runs its own NBD server: no snapshot" POST /api/v1/vms/vm2/snapshots
check "  saying why" grep -q "NBD server that vmexport did not start" "$WORK/body"
check "  and nothing of it is left: nodes, exports, jobs, checkpoints, scratch images" test "$($QMP \
    "$WORK/ctl2.sock" query-named-block-nodes '{"flat":true}' | jq '[.[] | select(.["node-name"] |
    startswith("vmx")), (.["dirty-bitmaps"][]? | select((.name // "") | startswith("vmexport.")))] |
    length')$($QMP "$WORK/ctl2.sock" query-block-exports | jq length)$($QMP "$WORK/ctl2.sock" \
    query-jobs | jq length)$(ls -A "$SCRATCH")" = 000

# ---- a QEMU VM: its -name, its devices, a CD-ROM ----
if ! command -v qemu-system-x86_64 >/dev/null; then
    skip "QEMU VM part: no qemu-system-x86_64"
    exit 0
fi
qemu-img create -q -f qcow2 "$IMG/v0.qcow2" 16M
qemu-io -f qcow2 -c "write -P 0x44 0 1M" "$IMG/v0.qcow2" >/dev/null
# start_qemu NODE: the VM, paused (-S: the disk changes only by the test's writes through the
# device), its disk's node named NODE.
start_qemu() {
    rm -f "$WORK/ctl3.sock" "$WORK/qmp/qemu-1.qmp"
    qemu-system-x86_64 -name web1 -M q35 -accel tcg -S -nodefaults -display none \
        -blockdev "file,node-name=vf,filename=$IMG/v0.qcow2" -blockdev "qcow2,node-name=$1,file=vf" \
        -device "virtio-blk-pci,drive=$1,id=vd0" \
        -drive "if=none,id=cd,media=cdrom,file=$IMG/cd.iso,format=raw,readonly=on" \
        -device ide-cd,drive=cd,id=cd0 \
        -chardev "socket,id=m0,path=$WORK/qmp/qemu-1.qmp,server=on,wait=off" -mon chardev=m0,mode=control \
        -chardev "socket,id=m1,path=$WORK/ctl3.sock,server=on,wait=off" -mon chardev=m1,mode=control \
        >>"$WORK/qemu.log" 2>&1 &
    QEMU_PID=$!
    at_exit "kill -9 $QEMU_PID"
    for _ in $(seq 200); do [ -S "$WORK/ctl3.sock" ] && [ -S "$WORK/qmp/qemu-1.qmp" ] && break; sleep 0.05; done
}
start_qemu vdisk
expect_status 200 "a QEMU VM is listed by its -name" GET /api/v1/vms/web1
check "  its disks by device ID: the CD-ROM not snapshotted" jq -e '
    [.disks[] | [.name, .device_name, .mode, .snapshot_compatible, .size]] ==
    [["cd0","cd0:cdrom","r",false,1048576],["vd0","vd0","w",true,16777216]]' "$WORK/body"
hmp() {
    $QMP "$WORK/ctl3.sock" human-monitor-command \
        "{\"command-line\": \"qemu-io -d /machine/peripheral/vd0/virtio-backend \\\"$1\\\"\"}" >/dev/null
}
VM=web1
snapshot V1
hmp "write -P 0x55 64k 64k"
{ head -c 1048576 /dev/zero | tr '\0' '\104'; head -c $((15 * 1048576)) /dev/zero; } >"$WORK/truth/v1"
check "its snapshot is the disk at the snapshot" same_bytes "$V1" vd0 "$WORK/truth/v1"
snapshot V2
check "changes V1 -> V2: the block written through the device" test "$(blocks "$V2" "$V1" vd0 chunks)" = 1
# A clean restart of QEMU under another node name (libvirt and -drive name nodes anew on each
# start): the persistent checkpoint carries the changes over.
$QMP "$WORK/ctl3.sock" quit >/dev/null
wait "$QEMU_PID" 2>/dev/null
start_qemu vdisk2
hmp "write -P 0x66 192k 64k"
snapshot V3
check "after a restart under another node name: changes V2 -> V3, the block written since" \
    test "$(blocks "$V3" "$V2" vd0 chunks)" = 3
for s in "$V1" "$V2" "$V3"; do api DELETE "/api/v1/vms/web1/snapshots/$s" >/dev/null; done
check "deleted: the device's node is the user's again, without checkpoints" test "$($QMP \
    "$WORK/ctl3.sock" query-block | jq -r '.[] | select(.qdev | test("vd0")) | .inserted |
    .["node-name"] + ":" + ([.["dirty-bitmaps"][]? | select((.name // "") |
    startswith("vmexport."))] | length | tostring)')" = vdisk2:0
