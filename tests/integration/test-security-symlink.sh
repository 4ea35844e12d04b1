#!/bin/bash
# Symlinks never lead vmexportd out of a VM directory or its snapshot area (issue 16, point 1).
#
# The race: a swapper exchanges a VM's disk.img with a symlink to a secret file (renameat2
# RENAME_EXCHANGE, a tight loop) while hundreds of snapshots of that VM are created over TLS, on
# XFS (reflink clones) and on ext4 (hashed copies).  No snapshot disk served by GET, and no file
# left in the snapshot area, may hold a byte block of the secret; what is served is the disk.
# Static cases: a disk that is a symlink, a VM directory that is a symlink, a symlink planted in
# the snapshot area (in place of a snapshot's directory, of a snapshot disk and of a sidecar),
# and an Oracle VM vm.cfg whose disk path goes through a symlink.
source "$(dirname "$0")/lib.sh"
require_root
for tool in curl jq openssl; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done
PY=/usr/bin/python3
RACE=$VMEXPORT_ROOT/tests/tools/symlink_race.py
# Snapshot creates per filesystem: enough for the race to be won many times over by the old
# code (it won within 30 creates), few enough to keep the test near a minute.
ROUNDS=${VMEXPORT_SYMLINK_ROUNDS:-300}
DISK_SIZE=65536

make_cert "$WORK/certs" || { not_ok "make certificates"; exit 1; }
make_fs xfs 320 XFS || { not_ok "make xfs"; exit 1; }
make_fs ext4 128 EXT || { not_ok "make ext4"; exit 1; }

# A VM with one disk of DISK_SIZE random bytes and a secret file on the same filesystem (so
# that a reflink of it would succeed), outside the VM tree; and .swap, a symlink to the secret
# beside the disk (hidden, so never listed).
make_race_vm() { # FS_ROOT VM
    local fs=$1 vm=$2
    mkdir -p "$fs/vms/$vm" "$fs/private"
    head -c $DISK_SIZE /dev/urandom >"$fs/vms/$vm/disk.img"
    cp "$fs/vms/$vm/disk.img" "$fs/expected-$vm"
    head -c $DISK_SIZE /dev/urandom >"$fs/private/shadow"
    chmod 600 "$fs/private/shadow"
    ln -s "$fs/private/shadow" "$fs/vms/$vm/.swap"
}
make_race_vm "$XFS" xrace
make_race_vm "$EXT" erace

# Static fixtures on XFS.
# A disk that is a symlink to the secret.
mkdir -p "$XFS/vms/linkdisk"
ln -s "$XFS/private/shadow" "$XFS/vms/linkdisk/disk.img"
# A VM directory that is a symlink to a directory holding the secret as a disk.
mkdir -p "$XFS/elsewhere"
cp "$XFS/private/shadow" "$XFS/elsewhere/disk.img"
ln -s "$XFS/elsewhere" "$XFS/vms/linkvm"
# A VM whose directory in the snapshot area is a symlink planted to an outside directory.
mkdir -p "$XFS/vms/planted" "$XFS/vms/.vmexport-snapshots" "$XFS/outside"
head -c $DISK_SIZE /dev/urandom >"$XFS/vms/planted/disk.img"
ln -s "$XFS/outside" "$XFS/vms/.vmexport-snapshots/planted"
# A plain VM for the snapshot-area swaps after the fact.
mkdir -p "$XFS/vms/plain"
head -c $DISK_SIZE /dev/urandom >"$XFS/vms/plain/disk.img"
mkdir -p "$EXT/vms/eplain"
head -c $DISK_SIZE /dev/urandom >"$EXT/vms/eplain/disk.img"
# Oracle VM: a disk path through a symlinked file and one through a symlinked directory, both
# pointing at the secret inside the repository.
REPO=$XFS/ovm/repo1
OVMA=0004fb00000600001111aaaa00000001
OVMB=0004fb00000600001111aaaa00000002
mkdir -p "$REPO/VirtualMachines/$OVMA" "$REPO/VirtualMachines/$OVMB" "$REPO/VirtualDisks" "$REPO/private"
cp "$XFS/private/shadow" "$REPO/private/shadow.img"
ln -s "$REPO/private/shadow.img" "$REPO/VirtualDisks/link.img"
ln -s "$REPO/private" "$REPO/LinkedDisks"
printf "name = '%s'\ndisk = ['file:%s,xvda,w']\n" "$OVMA" "$REPO/VirtualDisks/link.img" \
    >"$REPO/VirtualMachines/$OVMA/vm.cfg"
printf "name = '%s'\ndisk = ['file:%s,xvda,w']\n" "$OVMB" "$REPO/LinkedDisks/shadow.img" \
    >"$REPO/VirtualMachines/$OVMB/vm.cfg"
sync

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.xfs]" "type = dir" "path = $XFS/vms" \
    "[provider.ext]" "type = dir" "path = $EXT/vms" \
    "[provider.ovm]" "type = ovm" "repositories = $REPO" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" && ok "daemon starts" || { not_ok "daemon starts"; exit 1; }
login admin secret && ok "login" || { not_ok "login"; exit 1; }

# ============================================================================ the race
# race FS VM MODE: ROUNDS snapshot creates of VM with the swapper running.
race() {
    local fs=$1 vm=$2 mode=$3 out swapper files scan
    "$PY" "$RACE" swap "$fs/vms/$vm/disk.img" "$fs/vms/$vm/.swap" &
    swapper=$!
    at_exit "kill $swapper"
    out=$("$PY" "$RACE" snapshots "$URL" "$WORK/certs/ca.crt" "$TOKEN" "$vm" disk.img "$ROUNDS" \
        "$fs/expected-$vm" "$fs/private/shadow" 2>&1)
    kill "$swapper"
    wait "$swapper" 2>/dev/null
    diag "$mode race: $out"
    local created=${out#*created=}; created=${created%% *}
    local secret=${out#*served_secret=}; secret=${secret%% *}
    local other=${out#*served_other=}; other=${other%% *}
    if [[ "$created" =~ ^[0-9]+$ && "$secret" =~ ^[0-9]+$ && "$other" =~ ^[0-9]+$ ]]; then
        check "$mode race: some of $ROUNDS snapshots were created while the disk was swapped ($created)" \
            test "$created" -gt 0
        check "$mode race: no snapshot disk served the secret ($secret of $created did)" test "$secret" = 0
        check "$mode race: every snapshot disk served is the disk ($other of $created were not)" test "$other" = 0
    else
        not_ok "$mode race: the snapshot loop failed: $out"
    fi
    # Whatever is in the snapshot area: clones, copies, sidecars and temporary files.
    mapfile -t files < <(find "$fs/vms/.vmexport-snapshots" -type f)
    scan=$("$PY" "$RACE" scan "$fs/private/shadow" "$fs/expected-$vm" "${files[@]}")
    check "$mode race: no file in the snapshot area holds the secret (${#files[@]} files: $scan)" \
        test "${scan%% *}" = "secret=0"
    # the disk is back in place for later checks
    [ -L "$fs/vms/$vm/disk.img" ] && mv -T "$fs/vms/$vm/.swap" "$fs/vms/$vm/disk.tmp" &&
        mv -T "$fs/vms/$vm/disk.img" "$fs/vms/$vm/.swap" && mv -T "$fs/vms/$vm/disk.tmp" "$fs/vms/$vm/disk.img"
}
race "$XFS" xrace "xfs (reflink)"
race "$EXT" erace "ext4 (copy)"

# ============================================================================ static cases
SECRET=$XFS/private/shadow
# no_secret FILE: FILE holds no 4 KiB block of the secret.
no_secret() { ! "$PY" "$RACE" scan "$SECRET" "$1" "$1" | grep -q '^secret=1'; }

expect_status 200 "a disk that is a symlink: its VM is listed" GET /api/v1/vms/linkdisk
check "  without that disk" jq -e '(.disks | length) == 0' "$WORK/body"
code=$(api POST /api/v1/vms/linkdisk/snapshots)
check "  no snapshot of it (HTTP $code)" test "$code" != 201

expect_status 404 "a VM directory that is a symlink is no VM" GET /api/v1/vms/linkvm
expect_status 404 "  and cannot be snapshotted" POST /api/v1/vms/linkvm/snapshots

code=$(api POST /api/v1/vms/planted/snapshots)
check "a symlink planted for a VM's directory in the snapshot area: no snapshot (HTTP $code)" test "$code" != 201
check "  and nothing written where it points" test -z "$(ls -A "$XFS/outside")"
check "  the planted link is left alone" test -L "$XFS/vms/.vmexport-snapshots/planted"
check "  the failure is logged as a symlink" grep -q "symlink" "$WORK/daemon.log"

# A snapshot disk, or its snapshot's directory, replaced by a symlink after the snapshot was
# taken (before it was ever read, so that nothing holds it open).
snap_of() { # VM: create a snapshot, print its ID
    api POST "/api/v1/vms/$1/snapshots" >/dev/null && jq -r .id "$WORK/body"
}
S1=$(snap_of plain)
SD=$XFS/vms/.vmexport-snapshots/plain/$S1
if [ -f "$SD/disk.img" ]; then
    mv "$SD/disk.img" "$SD/disk.orig" && ln -s "$SECRET" "$SD/disk.img"
    code=$(api GET "/api/v1/vms/plain/snapshots/$S1/disks/disk.img")
    check "a snapshot disk swapped for a symlink is not served (HTTP $code)" test "$code" != 200
    check "  no byte of the secret in the answer" no_secret "$WORK/body"
    code=$(api GET "/api/v1/vms/plain/snapshots/$S1/disks/disk.img/changes?changeId=*")
    check "  nor are its changed areas read through it (HTTP $code)" test "$code" != 200
    rm "$SD/disk.img" && mv "$SD/disk.orig" "$SD/disk.img"
else
    not_ok "snapshot of plain: $(head -c 300 "$WORK/body")"
fi
S2=$(snap_of plain)
SD=$XFS/vms/.vmexport-snapshots/plain/$S2
mkdir -p "$XFS/fake" && cp "$SECRET" "$XFS/fake/disk.img"
if [ -d "$SD" ]; then
    mv "$SD" "$SD.orig" && ln -s "$XFS/fake" "$SD"
    code=$(api GET "/api/v1/vms/plain/snapshots/$S2/disks/disk.img")
    check "a snapshot's directory swapped for a symlink is not served (HTTP $code)" test "$code" != 200
    check "  no byte of the secret in the answer" no_secret "$WORK/body"
    rm "$SD" && mv "$SD.orig" "$SD"
    expect_status 200 "  the snapshot is served again once the directory is back" \
        GET "/api/v1/vms/plain/snapshots/$S2/disks/disk.img"
    check "  with the disk's bytes" cmp -s "$WORK/body" "$XFS/vms/plain/disk.img"
else
    not_ok "snapshot of plain: $(head -c 300 "$WORK/body")"
fi
expect_status 204 "deleting a snapshot whose disk was a symlink for a while" DELETE "/api/v1/vms/plain/snapshots/$S1"
check "  removes its directory" test ! -e "$XFS/vms/.vmexport-snapshots/plain/$S1"

# A copy-mode snapshot's sidecar swapped for a symlink to itself moved elsewhere: the diff does
# not use it (it reads both files) and gives the right answer.
E1=$(snap_of eplain)
printf 'changed!' | dd of="$EXT/vms/eplain/disk.img" bs=1 seek=8192 conv=notrunc status=none
E2=$(snap_of eplain)
ESD=$EXT/vms/.vmexport-snapshots/eplain/$E1
if [ -f "$ESD/disk.img.vxhash" ] && [ -n "$E2" ]; then
    expect_status 200 "copy-mode diff with its sidecar" GET "/api/v1/vms/eplain/snapshots/$E2?compareTo=$E1"
    check "  uses the block hashes" jq -e '.disks[0].diff_mode == "hash"' "$WORK/body"
    mv "$ESD/disk.img.vxhash" "$EXT/private/sidecar" && ln -s "$EXT/private/sidecar" "$ESD/disk.img.vxhash"
    expect_status 200 "copy-mode diff whose sidecar is a symlink" GET "/api/v1/vms/eplain/snapshots/$E2?compareTo=$E1"
    check "  does not read the sidecar through it (reads the files: diff_mode read)" \
        jq -e '.disks[0].diff_mode == "read"' "$WORK/body"
    check "  and finds the change" jq -e '[.disks[0].chunks[] | select(.start <= 8192 and .start + .length > 8192)] | length == 1' "$WORK/body"
else
    not_ok "copy-mode snapshots of eplain: no sidecar at $ESD"
fi

# Oracle VM: disk paths through a symlinked file and a symlinked directory of the repository.
for vm in "$OVMA" "$OVMB"; do
    expect_status 200 "OVM VM $vm with a disk path through a symlink is listed" GET "/api/v1/vms/$vm"
    check "  its disk cannot be snapshotted" jq -e '.disks | length == 1 and .[0].snapshot_compatible == false' "$WORK/body"
    code=$(api POST "/api/v1/vms/$vm/snapshots")
    check "  no snapshot of it (HTTP $code)" test "$code" != 201
done
mapfile -t files < <(find "$REPO" -path "$REPO/private" -prune -o -type f -print)
scan=$("$PY" "$RACE" scan "$SECRET" /dev/null "${files[@]}")
check "no file in the OVM repository outside private/ holds the secret (${#files[@]} files: $scan)" \
    test "${scan%% *}" = "secret=0"
