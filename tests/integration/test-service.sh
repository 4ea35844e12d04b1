#!/bin/bash
# The systemd unit and least privilege: contrib/vmexportd.service passes `systemd-analyze
# verify` and keeps an exposure level of at most 2.0 in `systemd-analyze security` (both
# offline: no systemd as PID 1 needed), and vmexportd does its work as an unprivileged user
# (nobody) with only group access to the VM directories, no capabilities and no way to gain
# any: snapshot, full and ranged download, incremental diff, upload of a new disk.
source "$(dirname "$0")/lib.sh"
require_root

UNIT=$VMEXPORT_ROOT/contrib/vmexportd.service
MAX_EXPOSURE=20 # systemd-analyze's scale: 20 is the "2.0" it prints

# ---- the unit, checked offline ----
if ! command -v systemd-analyze >/dev/null; then
    skip "systemd-analyze is missing (Debian package systemd)"
else
    # verify insists that ExecStart's binary exists: check a copy that starts the build's one.
    mkdir -p "$WORK/unit"
    sed "s|/usr/local/bin/vmexportd|$VMEXPORTD|g" "$UNIT" >"$WORK/unit/vmexportd.service"
    check "the checked copy differs from the unit only in the binary's path" \
        test "$(diff "$UNIT" "$WORK/unit/vmexportd.service" | grep -c '^>')" = 2
    (cd "$WORK/unit" && systemd-analyze verify "$WORK/unit/vmexportd.service") >"$WORK/verify.out" 2>&1
    rc=$?
    [ $rc = 0 ] && [ ! -s "$WORK/verify.out" ] && ok "systemd-analyze verify passes without a warning" ||
        not_ok "systemd-analyze verify: exit $rc: $(head -5 "$WORK/verify.out")"
    systemd-analyze security --offline=true --threshold=$MAX_EXPOSURE "$WORK/unit/vmexportd.service" \
        >"$WORK/security.out" 2>&1
    rc=$?
    level=$(grep -o 'Overall exposure level for [^:]*: [0-9.]*' "$WORK/security.out" | grep -o '[0-9.]*$')
    [ $rc = 0 ] && ok "systemd-analyze security: exposure $level (at most 2.0)" ||
        not_ok "systemd-analyze security: exit $rc, exposure ${level:-?}: $(grep '✗' "$WORK/security.out" | head -5)"
    for key in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
        'CapabilityBoundingSet=$' SystemCallFilter=@system-service ReadWritePaths= User=vmexport; do
        check "the unit sets ${key%\$}" grep -q "^$key" "$UNIT"
    done
fi

# ---- vmexportd as nobody, with group access to the VM directories ----
command -v setpriv >/dev/null || { skip "setpriv is missing (Debian package util-linux)"; exit 0; }
NOBODY=$(id -u nobody) || { not_ok "user nobody"; exit 1; }
VMGID=47101
while getent group "$VMGID" >/dev/null; do VMGID=$((VMGID + 1)); done # a group nobody is in

make_fs xfs 320 XFS || { not_ok "create xfs"; exit 1; }
chmod 0711 "$WORK" # nobody passes through to its files, lists nothing
VMS=$XFS/vms
mkdir -p "$VMS/web01"
head -c $((3 << 20)) /dev/urandom >"$VMS/web01/root.img"
truncate -s 8M "$VMS/web01/root.img"
# The VM directories: root's, shared with the group (setgid, so new files keep the group).
chown -R "root:$VMGID" "$VMS"
chmod 2770 "$VMS" "$VMS/web01"
chmod 0660 "$VMS/web01/root.img"

PORT=$(free_port)
CONF=$WORK/vmexportd.conf
write_config "$CONF" "$PORT" "$WORK/state" "[provider.local]" "type = dir" "path = $VMS" ||
    { not_ok "write config"; exit 1; }
# Configuration, key and users: root's, readable by the group only; the state directory the
# daemon's own (StateDirectory= in the unit).
chown "root:$VMGID" "$CONF" "$WORK/certs/server.key" "$WORK/state/users"
chmod 0640 "$CONF" "$WORK/certs/server.key" "$WORK/state/users"
chown "$NOBODY" "$WORK/state"
chmod 0700 "$WORK/state"
cat >"$WORK/vmexportd-nobody" <<EOF
#!/bin/sh
umask 0077
exec setpriv --reuid=$NOBODY --regid=$(id -g nobody) --groups=$VMGID --inh-caps=-all \\
    --ambient-caps=-all --bounding-set=-all --no-new-privs "$VMEXPORTD" "\$@"
EOF
chmod 0755 "$WORK/vmexportd-nobody"
VMEXPORTD=$WORK/vmexportd-nobody start_daemon "$CONF" "$PORT" && ok "vmexportd starts as nobody" ||
    { not_ok "vmexportd starts as nobody: $(tail -3 "$WORK/daemon.log")"; exit 1; }
status=/proc/$DAEMON_PID/status
check "it runs as uid $NOBODY" grep -qE "^Uid:\s+$NOBODY\s+$NOBODY\s+$NOBODY\s+$NOBODY$" "$status"
check "with the VM group as its only supplementary group" grep -qE "^Groups:\s+$VMGID\s*$" "$status"
check "with no capabilities, effective or bounding" grep -qE '^CapEff:\s+0+$' "$status"
check "  (bounding set empty)" grep -qE '^CapBnd:\s+0+$' "$status"
check "and no_new_privs" grep -qE '^NoNewPrivs:\s+1$' "$status"
login admin secret && ok "login" || { not_ok "login"; exit 1; }

expect_status 200 "GET /vms" GET /api/v1/vms
check "the VM and its disk are listed" jq -e '.[0].name == "web01" and .[0].disks[0].name == "root.img" and .[0].snapshot_compatible' "$WORK/body"
expect_status 201 "snapshot as nobody" POST /api/v1/vms/web01/snapshots
S1=$(jq -r .id "$WORK/body")
S1_PATH=$(jq -r '.disks[0].path' "$WORK/body")
check "the snapshot file is nobody's" test "$(stat -c %u "$S1_PATH")" = "$NOBODY"
cp "$VMS/web01/root.img" "$WORK/root.at1"
DISK=/api/v1/vms/web01/snapshots/$S1/disks/root.img
expect_status 200 "full download" GET "$DISK"
check "the download is the disk bit for bit" cmp -s "$WORK/body" "$WORK/root.at1"
expect_status 206 "ranged download" GET "$DISK" -H "Range: bytes=1000-1048575"
check "the range is the disk's bytes" cmp -s "$WORK/body" <(tail -c +1001 "$WORK/root.at1" | head -c $((1048576 - 1000)))

dd if=/dev/urandom of="$VMS/web01/root.img" bs=4K count=1 seek=1000 conv=notrunc,fsync status=none
expect_status 201 "second snapshot" POST /api/v1/vms/web01/snapshots
S2=$(jq -r .id "$WORK/body")
expect_status 200 "compareTo as nobody" GET "/api/v1/vms/web01/snapshots/$S2?compareTo=$S1&zeroedInChunks=false"
check "exactly the 4 KiB write changed" jq -e '.disks[0].chunks | map([.start, .length]) == [[4096000, 4096]]' "$WORK/body"

# An upload writes a new disk into the shared VM directory.
head -c 65536 /dev/urandom >"$WORK/new.img"
expect_status 201 "upload of a new disk" POST /api/v1/vms/web01/uploads -d '{"disk":"new.img","size":65536,"format":"raw"}'
T=/api/v1/transfers/$(jq -r .id "$WORK/body")
expect_status_in "200 204" "PUT its data" PUT "$T" -H "Content-Range: bytes 0-65535/*" --data-binary @"$WORK/new.img"
expect_status_in "200 201 204" "finalize" POST "$T/finalize"
check "the new disk is in the VM directory, bit for bit" cmp -s "$VMS/web01/new.img" "$WORK/new.img"
check "  in the VM group (setgid directory)" test "$(stat -c %g "$VMS/web01/new.img")" = "$VMGID"

# What the group cannot reach, the daemon cannot either.
mkdir -p "$VMS/private"
head -c 65536 /dev/urandom >"$VMS/private/secret.img"
chown root:root "$VMS/private" "$VMS/private/secret.img"
chmod 0700 "$VMS/private"
chmod 0600 "$VMS/private/secret.img"
expect_status_in "403 404 409 500" "a VM directory outside the group is not snapshotted" POST /api/v1/vms/private/snapshots
check "and the catalog has no snapshot of it" \
    test "$(sqlite3 "$WORK/state/catalog.db" "SELECT count(*) FROM snapshots WHERE vm_id = 'private'")" = 0

stop_daemon
check "vmexportd as nobody stops cleanly" test $? = 0
