#!/bin/bash
# vmexport backup of a live VM (the qemu provider over a real qemu-storage-daemon, vmexportd over
# TLS): the disks are read straight from the snapshot's NBD exports (--transport auto picks nbd);
# incrementals read exactly the blocks the "guest" wrote (through writable FUSE exports) since the
# previous backup; after each backup only the checkpoint stays on the server (no export, no
# scratch image); a checkpoint removed behind our back makes that disk full, saying why, the other
# disk stays incremental; a second repository keeps its own chain; --disk picks one disk; the
# VM's definition (what QMP says) is stored.  Every backup is restored and compared with the
# disks at the instant of its snapshot.
source "$(dirname "$0")/lib.sh"

QSD=$(command -v qemu-storage-daemon) ||
    { skip "no qemu-storage-daemon (Debian package qemu-system-common)"; exit 0; }
for tool in qemu-img qemu-io curl jq python3; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done
[ -c /dev/fuse ] || { skip "no /dev/fuse for the test's writable FUSE exports"; exit 0; }

QMP="python3 $VMEXPORT_ROOT/tests/integration/qmp_call.py"
BLK=65536
MIB=1048576
IMG=$WORK/img
mkdir -p "$IMG" "$WORK/qmp" "$WORK/truth"
qemu-img create -q -f qcow2 "$IMG/d0.qcow2" 32M
qemu-img create -q -f raw "$IMG/d1.raw" 16M
qemu-io -f qcow2 -c "write -P 0x5a 0 2M" -c "write -P 0x33 8M 1M" "$IMG/d0.qcow2" >/dev/null
dd if=/dev/urandom of="$IMG/d1.raw" bs=1M count=2 seek=4 conv=notrunc status=none

# Short: the socket path goes into the disks' NBD URIs.
NBD_DIR=$(mktemp -d /tmp/vmx-nbd.XXXXXX)
at_exit "rm -rf $NBD_DIR"
SCRATCH=$WORK/scratch
CTL=$WORK/ctl.sock
F0=$WORK/fuse0 F1=$WORK/fuse1
touch "$F0" "$F1"
at_exit "umount -l $F0; umount -l $F1"
"$QSD" --blockdev "file,node-name=f0,filename=$IMG/d0.qcow2" \
    --blockdev qcow2,node-name=disk0,file=f0 \
    --blockdev "file,node-name=disk1,filename=$IMG/d1.raw" \
    --chardev "socket,id=m0,path=$WORK/qmp/vm1.qmp,server=on,wait=off" --monitor chardev=m0 \
    --chardev "socket,id=m1,path=$CTL,server=on,wait=off" --monitor chardev=m1 \
    --export "fuse,id=x0,node-name=disk0,mountpoint=$F0,writable=on" \
    --export "fuse,id=x1,node-name=disk1,mountpoint=$F1,writable=on" \
    >"$WORK/qsd.log" 2>&1 &
at_exit "kill -9 $!"
for _ in $(seq 200); do [ -S "$CTL" ] && [ -S "$WORK/qmp/vm1.qmp" ] && break; sleep 0.05; done
$QMP "$CTL" query-block-exports >/dev/null ||
    { not_ok "qemu-storage-daemon: $(tail -3 "$WORK/qsd.log")"; exit 1; }

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" "[provider.live]" "type = qemu" \
    "qmp_sockets = $WORK/qmp/*.qmp" "scratch_dir = $SCRATCH" "nbd_dir = $NBD_DIR" ||
    { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" || { not_ok "daemon starts"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

R=$WORK/repo
"$VMEXPORT" repo init "$R" >/dev/null || { not_ok "repo init"; exit 1; }
CHAIN=vmexport-$(jq -r .id "$R/config")

write_block() { dd if=/dev/urandom of="$1" bs=$BLK seek="$2" count=1 conv=notrunc,fsync status=none; }
# backup N [OPTIONS...]: back up vm1 into $R (summary in $WORK/sN), after keeping the disks'
# content (no writes happen during the backup) as the truth of backup N.
backup() {
    local n=$1; shift
    cp "$F0" "$WORK/truth/$n.disk0" && cp "$F1" "$WORK/truth/$n.disk1"
    if "$VMEXPORT" backup vm1 --repo "${REPO:-$R}" --json "$@" >"$WORK/s$n" 2>"$WORK/e$n"; then
        ok "backup $n $*"
    else
        not_ok "backup $n $*: $(tail -2 "$WORK/e$n")"
    fi
}
# summary N JQ: check the JSON summary of backup N.
summary() { jq -e -s ".[-1] | $2" "$WORK/s$1" >/dev/null; }
# restored N DISK...: restore backup N's disks and compare them with its truth.
restored() {
    local n=$1; shift
    local id d
    id=$(jq -r -s '.[-1].backup' "$WORK/s$n")
    rm -rf "$WORK/r"
    mkdir "$WORK/r"
    "$VMEXPORT" restore --repo "${REPO:-$R}" "$id" --to "$WORK/r" >/dev/null 2>&1 || return 1
    for d in "$@"; do cmp -s "$WORK/r/$d" "$WORK/truth/$n.$d" || return 1; done
}
ours() { # bitmaps and nodes of vmexport on the daemon, and our exports
    $QMP "$CTL" query-named-block-nodes '{"flat":true}' | jq -r '.[] | (.["dirty-bitmaps"][]? |
        .name // "" | select(startswith("vmexport."))), (.["node-name"] | select(startswith("vmx")))'
    $QMP "$CTL" query-block-exports | jq -r '.[].id | select(startswith("vmx"))'
}

backup 1
check "  both disks full, read over NBD" summary 1 \
    '.transport == "nbd" and ([.disks[] | [.name, .incremental, .transport]] == [["disk0",false,"nbd"],["disk1",false,"nbd"]])'
check "  restores to the disks at its snapshot" restored 1 disk0 disk1
api GET /api/v1/vms/vm1/snapshots?chunks=false >/dev/null
check "  on the server: one snapshot, only its checkpoint, in the repository's chain" jq -e \
    --arg c "$CHAIN" 'length == 1 and .[0].status == "checkpoint" and .[0].chain == $c' "$WORK/body"
check "  no export, job or scratch image left, the checkpoints kept" test \
    "$(ours | grep -vc '^vmexport\.')$($QMP "$CTL" query-jobs | jq length)$(ls -A "$SCRATCH")" = 00
check "  the VM's definition is stored" summary 1 '.definition_format == "qemu-qmp-json"'
"$VMEXPORT" restore --repo "$R" "$(jq -r -s '.[-1].backup' "$WORK/s1")" \
    --definition-out "$WORK/def.json" >/dev/null 2>&1
check "  and written back: QMP's view of the disks" jq -e \
    '[.nodes[]["node-name"]] | sort == ["disk0","disk1","f0"]' "$WORK/def.json"

for b in 3 17 100; do write_block "$F0" $b; done
write_block "$F1" 9
backup 2
check "  both disks incremental over NBD" summary 2 \
    '[.disks[] | [.incremental, .transport]] == [[true,"nbd"],[true,"nbd"]]'
check "  read exactly the 4 blocks written" summary 2 ".bytes_read == $((4 * BLK))"
check "  restores to the disks at its snapshot" restored 2 disk0 disk1
api GET /api/v1/vms/vm1/snapshots?chunks=false >/dev/null
S2=$(jq -r -s '.[-1].snapshot' "$WORK/s2")
check "  the server keeps only its checkpoint (the previous one deleted)" jq -e \
    --arg s "$S2" '[.[] | [.id, .status]] == [[$s, "checkpoint"]]' "$WORK/body"

# Someone removes our checkpoints on disk0 (qemu-img, a host that moved the disk ...).
for bm in $($QMP "$CTL" query-named-block-nodes '{"flat":true}' | jq -r '.[] |
    select(.["node-name"] == "disk0") | .["dirty-bitmaps"][]? | .name // "" | select(startswith("vmexport."))'); do
    $QMP "$CTL" block-dirty-bitmap-remove "{\"node\":\"disk0\",\"name\":\"$bm\"}" >/dev/null
done
write_block "$F0" 5
write_block "$F1" 11
backup 3
check "  disk0 full, with the server's reason" summary 3 \
    '.disks[0] | .name == "disk0" and .incremental == false and (.full_reason | test("^the server cannot tell the changes: no changes of disk .disk0. since changeId .*: the checkpoint of the base snapshot .* is gone"))'
check "  disk1 still incremental" summary 3 '.disks[1] | .name == "disk1" and .incremental'
check "  read: disk0's data (3 MiB, and block 100 outside it) and one block of disk1" summary 3 \
    ".bytes_read == $((3 * MIB + 2 * BLK))"
check "  restores to the disks at its snapshot" restored 3 disk0 disk1

# A second repository: its own chain; the first one's next backup stays incremental.
R2=$WORK/repo2
"$VMEXPORT" repo init "$R2" >/dev/null
REPO=$R2 backup 4
check "  (second repository) full" summary 4 '[.disks[].incremental] == [false, false]'
write_block "$F0" 6
backup 5
check "  the first repository's next backup: incremental, one block" summary 5 \
    "[.disks[].incremental] == [true, true] and .bytes_read == $BLK"
check "  restores to the disks at its snapshot" restored 5 disk0 disk1
api GET /api/v1/vms/vm1/snapshots?chunks=false >/dev/null
check "  the server keeps one checkpoint per repository, each in its chain" jq -e \
    --arg c "$CHAIN" --arg c2 "vmexport-$(jq -r .id "$R2/config")" \
    '[.[] | .chain] | sort == ([$c, $c2] | sort)' "$WORK/body"

# One disk only.
write_block "$F1" 12
backup 6 --disk disk1 --transport nbd
check "  only disk1, incremental, one block" summary 6 \
    "[.disks[] | [.name, .incremental]] == [[\"disk1\", true]] and .bytes_read == $BLK"
check "  restores to the disk at its snapshot" restored 6 disk1

# A client on another host: the NBD sockets are not there (a mount namespace hides them).
if unshare -m true 2>/dev/null; then
    write_block "$F0" 13
    cp "$F0" "$WORK/truth/7.disk0" && cp "$F1" "$WORK/truth/7.disk1"
    unshare -m bash -c "mount -t tmpfs none '$NBD_DIR' && exec '$VMEXPORT' backup vm1 --repo '$R' --json" \
        >"$WORK/s7" 2>"$WORK/e7"
    # (disk0 is full: the latest backup, 6, had disk1 only)
    check "without the sockets, auto reads through the server" summary 7 \
        '[.disks[] | [.transport, .incremental, .full_reason]] == [["https", false, "no previous backup of the disk"], ["https", true, null]]'
    check "  silently" test ! -s "$WORK/e7"
    check "  restores to the disks at its snapshot" restored 7 disk0 disk1
    out=$(unshare -m bash -c "mount -t tmpfs none '$NBD_DIR' && exec '$VMEXPORT' backup vm1 --repo '$R' --transport nbd" 2>&1)
    if [ $? = 1 ] && grep -q "disk disk0: cannot read the snapshot's NBD export (--transport nbd): $NBD_DIR/.*No such file" <<<"$out"; then
        ok "  --transport nbd fails there, naming the socket"
    else
        not_ok "  --transport nbd fails there, naming the socket: $out"
    fi
else
    skip "no mount namespaces (unshare -m) to hide the NBD sockets"
fi
