#!/bin/bash
# The backup engine's side of live VMs, against the real daemon (dir and ovm providers):
# --disk/--exclude-disk choose the disks (unknown names are an error before anything is taken);
# every snapshot is in the repository's own chain; after the commit the new snapshot is released
# with DELETE ?keepCheckpoint=true and the older one deleted; a 409 on one disk's changes (injected
# by a proxy in front of the daemon, since the dir provider always knows its changes) makes that
# disk full, with the reason in the summary, and the others stay incremental; the VM's definition
# is stored with the backup and written back by restore --definition-out.
source "$(dirname "$0")/lib.sh"
for tool in curl jq python3; do command -v "$tool" >/dev/null || { skip "needs $tool"; exit 0; }; done

MIB=1048576
VMS=$WORK/vms
mkdir -p "$VMS/web01"
head -c $((4 * MIB)) /dev/urandom >"$VMS/web01/a.img"
head -c $((4 * MIB)) /dev/urandom >"$VMS/web01/b.img"
head -c $((2 * MIB)) /dev/urandom >"$VMS/web01/c.img"

# An OVM repository with one VM: its vm.cfg is the definition the server keeps.
OREPO=$WORK/ovm/repo1
OVM1=0004fb00000600001111aaaa00000001
mkdir -p "$OREPO/VirtualMachines/$OVM1" "$OREPO/VirtualDisks"
head -c $((2 * MIB)) /dev/urandom >"$OREPO/VirtualDisks/o.img"
cat >"$OREPO/VirtualMachines/$OVM1/vm.cfg" <<EOC
name = '$OVM1'
OVM_simple_name = 'web server'
uuid = '0004fb00-0006-0000-1111-aaaa00000001'
memory = 2048
disk = ['file:$OREPO/VirtualDisks/o.img,xvda,w']
EOC

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" "[provider.local]" "type = dir" \
    "path = $VMS" "[provider.ovm]" "type = ovm" "repositories = $OREPO" ||
    { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" || { not_ok "daemon starts"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }

# The proxy: forwards to the daemon, logs requests, answers 409 where $RULES says.
PPORT=$(free_port)
RULES=$WORK/rules
PLOG=$WORK/proxy.log
: >"$RULES"
python3 "$VMEXPORT_ROOT/tests/tools/fault_proxy.py" "$PPORT" "$WORK/certs/server.crt" \
    "$WORK/certs/server.key" "$URL" "$WORK/certs/ca.crt" "$PLOG" "$RULES" 2>>"$WORK/proxy.err" &
PROXY_PID=$!
at_exit "kill $PROXY_PID"
for _ in $(seq 50); do
    curl -s --cacert "$WORK/certs/ca.crt" -o /dev/null "https://127.0.0.1:$PPORT/healthz" && break
    sleep 0.1
done

export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
R=$WORK/repo
"$VMEXPORT" repo init "$R" >/dev/null || { not_ok "repo init"; exit 1; }
CHAIN=vmexport-$(jq -r .id "$R/config")

snap_ids() { api GET /api/v1/vms/web01/snapshots?chunks=false >/dev/null; jq -r '.[].id' "$WORK/body" | sort; }
backup_count() { "$VMEXPORT" backups --repo "$R" --json | jq 'length'; }

# ---- --disk: only the disks named ----
"$VMEXPORT" backup web01 --repo "$R" --disk b.img --disk c.img --json >"$WORK/s1" 2>"$WORK/e1"
check "backup --disk b.img --disk c.img succeeds" test $? -eq 0
check "  the summary lists b.img and c.img, full: no previous backup" jq -e -s \
    '.[-1].disks | map(.name) == ["b.img", "c.img"] and all(.[]; .incremental == false and .full_reason == "no previous backup of the disk")' "$WORK/s1"
"$VMEXPORT" backups --repo "$R" --json >"$WORK/b1"
check "  the backup holds b.img and c.img only" jq -e '.[-1].disks | map(.name) == ["b.img", "c.img"]' "$WORK/b1"
S1=$(jq -r -s '.[-1].snapshot' "$WORK/s1")
expect_status 200 "  its server snapshot exists" GET "/api/v1/vms/web01/snapshots/$S1?chunks=false"
check "  of those disks, in the repository's chain $CHAIN" jq -e --arg c "$CHAIN" \
    '(.disks | map(.name) | sort) == ["b.img", "c.img"] and .chain == $c' "$WORK/body"

# ---- --exclude-disk: every disk but those ----
head -c 65536 /dev/urandom | dd of="$VMS/web01/b.img" bs=64K seek=10 conv=notrunc status=none
"$VMEXPORT" backup web01 --repo "$R" --exclude-disk a.img --json >"$WORK/s2" 2>"$WORK/e2"
check "backup --exclude-disk a.img succeeds" test $? -eq 0
check "  b.img and c.img, both incremental" jq -e -s \
    '.[-1].disks | map(.name) == ["b.img", "c.img"] and all(.[]; .incremental and .full_reason == null)' "$WORK/s2"
check "  b.img read only its changed 64 KiB" jq -e -s '.[-1].bytes_read == 65536' "$WORK/s2"
S2=$(jq -r -s '.[-1].snapshot' "$WORK/s2")
check "  the previous snapshot was deleted (--keep-snapshots 1), the new one kept" \
    test "$(snap_ids)" = "$S2"

# ---- unknown names: an error before anything is taken ----
before_snaps=$(snap_ids)
before_backups=$(backup_count)
out=$("$VMEXPORT" backup web01 --repo "$R" --disk zz.img 2>&1)
rc=$?
if [ $rc = 1 ] && grep -q "VM web01 has no disk 'zz.img' (--disk)" <<<"$out"; then
    ok "an unknown --disk is an error naming it"
else
    not_ok "an unknown --disk is an error naming it (exit $rc: $out)"
fi
out=$("$VMEXPORT" backup web01 --repo "$R" --exclude-disk a.img --exclude-disk zz.img 2>&1)
rc=$?
if [ $rc = 1 ] && grep -q "VM web01 has no disk 'zz.img' (--exclude-disk)" <<<"$out"; then
    ok "an unknown --exclude-disk is an error naming it"
else
    not_ok "an unknown --exclude-disk is an error naming it (exit $rc: $out)"
fi
out=$("$VMEXPORT" backup web01 --repo "$R" --exclude-disk a.img --exclude-disk b.img \
    --exclude-disk c.img 2>&1)
rc=$?
if [ $rc = 1 ] && grep -q "no disk left to back up" <<<"$out"; then
    ok "excluding every disk is an error"
else
    not_ok "excluding every disk is an error (exit $rc: $out)"
fi
check "  no snapshot was taken and no backup made by them" \
    test "$(snap_ids) $(backup_count)" = "$before_snaps $before_backups"

# ---- a full backup of all disks, then changes, then an incremental with a 409 on b.img ----
"$VMEXPORT" backup web01 --repo "$R" --json >"$WORK/s3" 2>"$WORK/e3"
check "backup of every disk succeeds" test $? -eq 0
check "  a.img full (not in the previous backup), b.img and c.img incremental" jq -e -s \
    '.[-1].disks | map([.name, .incremental]) == [["a.img", false], ["b.img", true], ["c.img", true]]' "$WORK/s3"
S3=$(jq -r -s '.[-1].snapshot' "$WORK/s3")
for d in a b c; do
    head -c 65536 /dev/urandom | dd of="$VMS/web01/$d.img" bs=64K seek=3 conv=notrunc status=none
done
# (the client escapes changeId=*: %2A)
echo '^GET /api/v1/vms/web01/snapshots/[^/]+/disks/b\.img/changes\?changeId=(?!%2A)' >"$RULES"
: >"$PLOG"
VMEXPORT_SERVER=https://127.0.0.1:$PPORT "$VMEXPORT" backup web01 --repo "$R" --json \
    >"$WORK/s4" 2>"$WORK/e4"
check "backup through the proxy (409 on b.img's changes) succeeds" test $? -eq 0
check "  b.img full, the server's reason in its full_reason" jq -e -s \
    '.[-1].disks[] | select(.name == "b.img") | .incremental == false and .full_reason == "the server cannot tell the changes: injected: the checkpoint bitmap is gone"' "$WORK/s4"
check "  a.img and c.img stay incremental" jq -e -s \
    '[.[-1].disks[] | select(.name != "b.img") | .incremental] == [true, true]' "$WORK/s4"
check "  read: b.img whole (4 MiB) + 64 KiB each of a.img and c.img" \
    jq -e -s ".[-1].bytes_read == $((4 * MIB + 2 * 65536))" "$WORK/s4"
S4=$(jq -r -s '.[-1].snapshot' "$WORK/s4")
check "  b.img's changes were asked again from scratch (changeId=*)" \
    grep -q "^GET /api/v1/vms/web01/snapshots/$S4/disks/b.img/changes?changeId=%2A" "$PLOG"
check "  the new snapshot's data was released (DELETE ?keepCheckpoint=true)" \
    grep -qx "DELETE /api/v1/vms/web01/snapshots/$S4?keepCheckpoint=true" "$PLOG"
check "  the previous one deleted outright" grep -qx "DELETE /api/v1/vms/web01/snapshots/$S3" "$PLOG"
check "  and the new one never deleted outright" bash -c "! grep -qx 'DELETE /api/v1/vms/web01/snapshots/$S4' '$PLOG'"
B4=$("$VMEXPORT" backups --repo "$R" --json | jq -r '[.[] | select(.snapshot == "'"$S4"'")][0].id')
rm -rf "$WORK/r4"
mkdir -p "$WORK/r4"
"$VMEXPORT" restore --repo "$R" "$B4" --to "$WORK/r4" >/dev/null 2>&1
# The disks have not changed since $S4 was taken: compare with them now.
for d in a b c; do
    check "  the restored $d.img is the disk at the snapshot" cmp "$WORK/r4/$d.img" "$VMS/web01/$d.img"
done

# Text summary: one line per disk with its mode and reason.
: >"$PLOG"
head -c 65536 /dev/urandom | dd of="$VMS/web01/b.img" bs=64K seek=5 conv=notrunc status=none
VMEXPORT_SERVER=https://127.0.0.1:$PPORT "$VMEXPORT" backup web01 --repo "$R" >"$WORK/s5" 2>&1
check "the text summary says b.img is full and why" \
    grep -qx "  disk b.img: full (local): the server cannot tell the changes: injected: the checkpoint bitmap is gone" "$WORK/s5"
check "  and a.img incremental" grep -q "^  disk a.img: incremental (local)" "$WORK/s5"

# ---- the VM's definition ----
check "a dir VM has no definition: none stored" jq -e -s '.[-1].definition_format == null' "$WORK/s4"
B3=$(jq -r -s '.[-1].backup' "$WORK/s3")
out=$("$VMEXPORT" restore --repo "$R" "$B3" --definition-out "$WORK/def-none" 2>&1)
rc=$?
if [ $rc = 1 ] && grep -q "has no VM definition" <<<"$out" && [ ! -e "$WORK/def-none" ]; then
    ok "  restore --definition-out says so and writes nothing"
else
    not_ok "  restore --definition-out says so and writes nothing (exit $rc: $out)"
fi
"$VMEXPORT" backup "$OVM1" --repo "$R" --json >"$WORK/s6" 2>"$WORK/e6"
check "backup of an OVM VM succeeds" test $? -eq 0
check "  its vm.cfg is stored (summary)" jq -e -s '.[-1].definition_format == "ovm-vm.cfg"' "$WORK/s6"
B6=$(jq -r -s '.[-1].backup' "$WORK/s6")
check "  backups --json says so" bash -c "'$VMEXPORT' backups --repo '$R' --json | jq -e '.[] | select(.id == \"$B6\") | .definition_format == \"ovm-vm.cfg\"'"
"$VMEXPORT" restore --repo "$R" "$B6" --definition-out "$WORK/vm.cfg" >"$WORK/d6" 2>&1
check "  restore --definition-out writes it back byte for byte" \
    cmp "$WORK/vm.cfg" "$OREPO/VirtualMachines/$OVM1/vm.cfg"
check "  mode 0600" test "$(stat -c %a "$WORK/vm.cfg")" = 600
check_fails "  an existing file is not replaced without --force" \
    "$VMEXPORT" restore --repo "$R" "$B6" --definition-out "$WORK/vm.cfg" 2>/dev/null
check "  with --force it is" "$VMEXPORT" restore --repo "$R" "$B6" --definition-out "$WORK/vm.cfg" --force
