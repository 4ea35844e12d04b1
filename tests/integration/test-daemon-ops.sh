#!/bin/bash
# vmexportd in operation: configuration errors, crash safety of snapshot creation (kill -9 in
# the middle of a hashed copy), copy-mode diffs and the 004 incremental download on ext4, the
# Oracle VM provider, concurrent downloads during snapshot churn, request limits, graceful stop
# with a download running, mutual TLS and TLS versions, and the login rate limit.
source "$(dirname "$0")/lib.sh"
require_root
for tool in curl jq openssl sqlite3; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done

CA=$WORK/certs/ca.crt
make_cert "$WORK/certs" || { not_ok "make certificates"; exit 1; }
B64K=65536

# curl against the current daemon with the current token; extra arguments as given.
tcurl() { curl -s --cacert "$CA" ${TOKEN:+-H "Authorization: Bearer $TOKEN"} "$@"; }

# HTTP size of a snapshot disk (HEAD), as the 004 client asks for it.
head_size() { # URL_PATH
    tcurl -I "$URL$1" | tr -d '\r' | awk 'tolower($1) == "content-length:" {print $2}'
}

# The 004 client's download: each chunk of DISK in the snapshot JSON with a ranged GET, written
# at its offset into OUT (a sparse file of the right size).
download_chunks() { # SNAPSHOT_JSON DISK OUT
    local json=$1 disk=$2 out=$3 s l vm id
    vm=$(jq -r .vm_id "$json")
    id=$(jq -r .id "$json")
    jq -r --arg d "$disk" '.disks[] | select(.name == $d) | .chunks[] | "\(.start) \(.length)"' "$json" |
        while read -r s l; do
            tcurl -H "Range: bytes=$s-$((s + l - 1))" "$URL/api/v1/vms/$vm/snapshots/$id/disks/$disk" |
                dd of="$out" bs=1M oflag=seek_bytes seek="$s" conv=notrunc status=none
        done
}

# The sorted 64 KiB block numbers covered by the ranges under KEY of DISK in a snapshot JSON;
# "misaligned" when a range does not start and end on a block boundary.
blocks_of() { # JSON DISK KEY
    jq -r --arg d "$1" --arg k "$3" --argjson b "$B64K" '.disks[] | select(.name == $d) | .[$k][] |
        if (.start % $b != 0) or (.length % $b != 0) then "misaligned \(.start) \(.length)"
        else range(.start / $b; (.start + .length) / $b) end' "$2" | sort -n | tr '\n' ' '
}

# ===================================================================================== 1. config
VMDIR_CFG=$WORK/cfg-vms
mkdir -p "$VMDIR_CFG/vm1"
truncate -s 1M "$VMDIR_CFG/vm1/d.img"
CFG_PORT=$(free_port)
write_config "$WORK/good.conf" "$CFG_PORT" "$WORK/cfg-state" \
    "[provider.p]" "type = dir" "path = $VMDIR_CFG" || { not_ok "write config"; exit 1; }

# config_fails WHAT CONFIG_FILE TEXT: vmexportd exits 1 and its message contains TEXT.
config_fails() {
    local what=$1 cfg=$2 text=$3 rc
    timeout 20 "$VMEXPORTD" --config "$cfg" >"$WORK/cfg.out" 2>"$WORK/cfg.err"
    rc=$?
    if [ "$rc" = 1 ] && grep -qF -- "$text" "$WORK/cfg.err"; then
        ok "config: $what (exit 1, message names '$text')"
    else
        not_ok "config: $what (exit $rc, want 1 and '$text' in: $(head -c 300 "$WORK/cfg.err"))"
    fi
}
variant() { # NAME SED_SCRIPT: a copy of the good config changed by sed
    sed "$2" "$WORK/good.conf" >"$WORK/$1.conf"
    echo "$WORK/$1.conf"
}
config_fails "unknown key in [server]" "$(variant badkey '/^\[server\]/a frobnicate = 1')" \
    "unknown key 'frobnicate'"
config_fails "block_hash = md5" "$(variant badhash '$a [snapshot]\nblock_hash = md5')" \
    "block_hash: must be xxh128 or sha256, not 'md5'"
cfg=$(variant badsect '$a [serverr]\nlisten = 127.0.0.1:1')
config_fails "unknown section" "$cfg" "unknown section [serverr]"
config_fails "missing certificate file" \
    "$(variant nocert "s|^certificate = .*|certificate = $WORK/no-such-dir/server.crt|")" \
    "$WORK/no-such-dir/server.crt"
config_fails "insecure_http = maybe" "$(variant badbool '/^\[server\]/a insecure_http = maybe')" \
    "insecure_http: invalid value"
config_fails "provider of an unknown type" "$(variant badtype 's|^type = dir|type = vmware|')" \
    "unknown provider type 'vmware'"
config_fails "dir provider path that does not exist" \
    "$(variant nopath "s|^path = .*|path = $WORK/no-such-vms|")" "$WORK/no-such-vms"
# --check refuses what the start would refuse, with the same message: check_fails WHAT CONFIG TEXT.
check_and_start_fail() {
    local what=$1 cfg=$2 text=$3 rc
    timeout 20 "$VMEXPORTD" --config "$cfg" --check >"$WORK/cfg.out" 2>"$WORK/cfg.err"
    rc=$?
    if [ "$rc" = 1 ] && grep -qF -- "$text" "$WORK/cfg.err" && ! grep -q 'configuration OK' "$WORK/cfg.out"; then
        ok "--check: $what (exit 1, message names '$text')"
    else
        not_ok "--check: $what (exit $rc, want 1 and '$text' in: $(head -c 300 "$WORK/cfg.err"))"
    fi
    config_fails "$what" "$cfg" "$text"
}
check_and_start_fail "listen with a host name" "$(variant listenname '/^listen = /s/127.0.0.1/localhost/')" \
    "listen: 'localhost:$CFG_PORT' is not ADDRESS:PORT"
check_and_start_fail "listen without a port" "$(variant listennoport 's/^listen = .*/listen = 127.0.0.1/')" \
    "listen: '127.0.0.1' is not ADDRESS:PORT"
check_and_start_fail "listen with a bad IPv4 address" "$(variant listenbad 's/^listen = .*/listen = 127.0.0.300:5544/')" \
    "listen: '127.0.0.300:5544' is not ADDRESS:PORT"
check_and_start_fail "a key that is not the certificate's" \
    "$(variant wrongkey "s|^key = .*|key = $WORK/certs/client.key|")" \
    "key: $WORK/certs/client.key is not the key of the certificate $WORK/certs/server.crt"
echo "not a key" >"$WORK/garbage.key"
check_and_start_fail "a key file that is no key" "$(variant garbagekey "s|^key = .*|key = $WORK/garbage.key|")" \
    "$WORK/garbage.key"
check_and_start_fail "a key given twice" "$(variant twice '/^\[server\]/a shutdown_grace = 5')" \
    "[server] shutdown_grace given twice"
check_and_start_fail "a listen given twice" "$(variant twicelisten '/^\[server\]/a listen = 127.0.0.1:1')" \
    "[server] listen given twice"
check_and_start_fail "a malformed tls_priorities" "$(variant badprio '/^\[server\]/a tls_priorities = NORMAL:+NOPE')" \
    "tls_priorities:"
timeout 20 "$VMEXPORTD" --config "$WORK/good.conf" --check >"$WORK/cfg.out" 2>"$WORK/cfg.err"
rc=$?
if [ "$rc" = 0 ] && grep -q 'configuration OK' "$WORK/cfg.out"; then
    ok "--check on a good config exits 0"
else
    not_ok "--check on a good config (exit $rc): $(head -c 300 "$WORK/cfg.err")"
fi
timeout 20 "$VMEXPORTD" >"$WORK/cfg.out" 2>"$WORK/cfg.err"
rc=$?
if [ "$rc" = 2 ] && grep -q -- '--config' "$WORK/cfg.err"; then
    ok "no --config: exit 2 with a usage message"
else
    not_ok "no --config (exit $rc, want 2): $(head -c 300 "$WORK/cfg.err")"
fi

# ============================================================================ filesystems, daemon
make_fs ext4 2000 EXT || { not_ok "create ext4"; exit 1; }
make_fs xfs 1024 XFS || { not_ok "create xfs"; exit 1; }
EVMS=$EXT/vms
SNAPDIR=$EVMS/.vmexport-snapshots
mkdir -p "$EVMS/big"
truncate -s 320M "$EVMS/big/disk.img"
dd if=/dev/urandom of="$EVMS/big/disk.img" bs=1M count=240 seek=16 conv=notrunc status=none
XVMS=$XFS/vms
mkdir -p "$XVMS/stream" "$XVMS/par" "$XVMS/churn"
dd if=/dev/urandom of="$XVMS/stream/disk.img" bs=1M count=100 status=none
dd if=/dev/urandom of="$XVMS/par/disk.img" bs=1M count=64 status=none
truncate -s 8M "$XVMS/churn/disk.img"
dd if=/dev/urandom of="$XVMS/churn/disk.img" bs=64K count=4 seek=3 conv=notrunc status=none

# OVM fixture: one compatible VM (file disk + cdrom), one with a phy: disk.
REPO=$XFS/ovm/repo1
OVM1=0004fb00000600001111aaaa00000001
OVM2=0004fb00000600002222bbbb00000002
OVM1_UUID=0004fb00-0006-0000-1111-aaaa00000001
OVM2_UUID=0004fb00-0006-0000-2222-bbbb00000002
mkdir -p "$REPO/VirtualMachines/$OVM1" "$REPO/VirtualMachines/$OVM2" "$REPO/VirtualDisks" "$REPO/ISOs"
truncate -s 32M "$REPO/VirtualDisks/a.img"
dd if=/dev/urandom of="$REPO/VirtualDisks/a.img" bs=1M count=2 seek=5 conv=notrunc status=none
truncate -s 2M "$REPO/ISOs/x.iso"
cat >"$REPO/VirtualMachines/$OVM1/vm.cfg" <<EOF
# Oracle VM 3 style vm.cfg
name = '$OVM1'
OVM_simple_name = 'web server'
uuid = '$OVM1_UUID'
memory = 2048
vcpus = 2
disk = ['file:$REPO/VirtualDisks/a.img,xvda,w',
        'file:$REPO/ISOs/x.iso,xvdb:cdrom,r']
vif = ['mac=00:21:f6:00:00:01,bridge=xenbr0']
EOF
cat >"$REPO/VirtualMachines/$OVM2/vm.cfg" <<EOF
name = '$OVM2'
OVM_simple_name = 'db server'
uuid = '$OVM2_UUID'
disk = ['phy:/dev/mapper/x,xvda,w']
EOF
sync

PORT=$(free_port)
write_config "$WORK/main.conf" "$PORT" "$WORK/state" \
    "[provider.ext]" "type = dir" "path = $EVMS" \
    "[provider.xfs]" "type = dir" "path = $XVMS" \
    "[provider.ovm]" "type = ovm" "repositories = $REPO" || { not_ok "write config"; exit 1; }
DB=$WORK/state/catalog.db
start_daemon "$WORK/main.conf" "$PORT" && ok "daemon starts (dir on ext4, dir on xfs, ovm)" ||
    { not_ok "daemon starts"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }

# ============================================================================ 2. crash safety
expect_status 200 "ext4 VM is listed" GET /api/v1/vms/big
check "ext4 disk snapshots by hashed copy" jq -e '.disks[0].snapshot_mode == "copy"' "$WORK/body"

catalog() { sqlite3 -cmd '.timeout 5000' "$DB" "$1" 2>/dev/null; }
tmp_files() { find "$SNAPDIR" -name '*.vxtmp.*' 2>/dev/null | head -1; }

# crash_round WHEN DELAY: POST a snapshot of big, wait for WHEN (row: a 'creating' row in the
# catalog; tmp: a *.vxtmp.* copy in progress), sleep DELAY, kill -9.  Returns 0 when the kill
# hit a snapshot in creation, 1 when the snapshot had finished already, 2 on other trouble.
crash_round() {
    local when=$1 delay=$2 i seen=
    tcurl -o /dev/null -X POST "$URL/api/v1/vms/big/snapshots" &
    local cpid=$!
    for i in $(seq 2000); do
        case $when in
            row) [ "$(catalog "SELECT count(*) FROM snapshots WHERE status = 'creating'")" = 1 ] && seen=1 ;;
            tmp) [ -n "$(tmp_files)" ] && seen=1 ;;
        esac
        [ -n "$seen" ] && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.005
    done
    sleep "$delay"
    kill -9 "$DAEMON_PID"
    wait "$DAEMON_PID" 2>/dev/null
    wait "$cpid" 2>/dev/null
    [ -n "$seen" ] || return 2
    local creating ready
    creating=$(catalog "SELECT count(*) FROM snapshots WHERE status = 'creating'")
    ready=$(catalog "SELECT count(*) FROM snapshots WHERE status = 'ready'")
    if [ "$creating" = 1 ]; then return 0; fi
    if [ "$ready" != 0 ]; then return 1; fi
    return 2
}

n_tmp_seen=0
for round in 1 2 3; do
    case $round in
        1) when=row delay=0 ;;
        2) when=tmp delay=0.05 ;;
        3) when=tmp delay=0.$((RANDOM % 20 + 15)) ;;
    esac
    hit=
    for attempt in 1 2 3 4; do
        crash_round "$when" "$delay"
        rc=$?
        [ -n "$(tmp_files)" ] && n_tmp_seen=$((n_tmp_seen + 1))
        if [ "$rc" = 0 ]; then hit=1; break; fi
        diag "round $round attempt $attempt: kill after $delay s missed the copy (rc $rc); retrying sooner"
        delay=0
        # The snapshot finished before the kill: remove it, with the daemon, and try again.
        start_daemon "$WORK/main.conf" "$PORT" || break
        api DELETE /api/v1/vms/big/snapshots >/dev/null
    done
    if [ -n "$hit" ]; then
        ok "crash $round: kill -9 ${delay}s after the $when appeared hit a snapshot in creation"
        # --check must not recover (it could be run beside a live daemon): nothing changes.
        files_before=$(find "$SNAPDIR" | sort | md5sum)
        timeout 20 "$VMEXPORTD" --config "$WORK/main.conf" --check >/dev/null 2>&1
        check "crash $round: vmexportd --check leaves the 'creating' row" \
            test "$(catalog "SELECT count(*) FROM snapshots WHERE status = 'creating'")" = 1
        check "crash $round: vmexportd --check leaves the snapshot files" \
            test "$(find "$SNAPDIR" | sort | md5sum)" = "$files_before"
    else
        not_ok "crash $round: could not kill the daemon during a snapshot"
        start_daemon "$WORK/main.conf" "$PORT" || true
        continue
    fi
    if start_daemon "$WORK/main.conf" "$PORT"; then ok "crash $round: daemon restarts"; else
        not_ok "crash $round: daemon restarts"; break; fi
    expect_status 200 "crash $round: snapshot list after restart" GET /api/v1/vms/big/snapshots
    check "crash $round: no snapshot listed for the VM" jq -e '. == []' "$WORK/body"
    check "crash $round: catalog has no rows left" test "$(catalog 'SELECT count(*) FROM snapshots')" = 0
    left=$(find "$SNAPDIR" -type f 2>/dev/null | head -5 | tr '\n' ' ')
    if [ -z "$left" ]; then ok "crash $round: no snapshot or temporary files left"; else
        not_ok "crash $round: files left under the snapshot dir: $left"; fi
    check "crash $round: catalog integrity_check ok" test "$(sqlite3 "$DB" 'PRAGMA integrity_check')" = ok
done
check "at least one kill left a temporary copy behind for recovery to remove" test "$n_tmp_seen" -gt 0
grep -q "left 'creating' by a crash" "$WORK/daemon.log" && ok "recovery is logged" ||
    not_ok "recovery is logged"

expect_status 201 "snapshot after the crashes succeeds" POST /api/v1/vms/big/snapshots
cp "$WORK/body" "$WORK/snapA.json"
SA=$(jq -r .id "$WORK/snapA.json")
check "it is a hashed copy (snapshot_mode copy)" jq -e '.status == "ready" and .disks[0].snapshot_mode == "copy"' "$WORK/snapA.json"
SA_PATH=$(jq -r '.disks[0].path' "$WORK/snapA.json")
check "its file equals the disk" cmp -s "$SA_PATH" "$EVMS/big/disk.img"

# =========================================================================== 3. copy-mode diffs
# A 4 KiB write inside block 640, a 100 KiB write over blocks 1601-1603, a 1 MiB discard of
# blocks 2400-2415 (data before).
dd if=/dev/urandom of="$EVMS/big/disk.img" bs=4K count=1 seek=$(( (640 * B64K + 8192) / 4096 )) conv=notrunc,fsync status=none
dd if=/dev/urandom of="$EVMS/big/disk.img" bs=1K count=100 seek=$(( (1601 * B64K + 60 * 1024) / 1024 )) conv=notrunc,fsync status=none
fallocate --punch-hole -o $((2400 * B64K)) -l $((16 * B64K)) "$EVMS/big/disk.img"
sync
expect_status 201 "second snapshot of the ext4 VM" POST /api/v1/vms/big/snapshots
SB=$(jq -r .id "$WORK/body")
SB_PATH=$(jq -r '.disks[0].path' "$WORK/body")
expect_status 200 "GET with compareTo on copy-mode snapshots (004 default)" GET "/api/v1/vms/big/snapshots/$SB?compareTo=$SA"
got=$(blocks_of disk.img "$WORK/body" chunks)
want="640 1601 1602 1603 $(seq -s ' ' 2400 2415) "
[ "$got" = "$want" ] && ok "by default chunks also cover the discarded blocks" ||
    not_ok "default chunks: got blocks '$got', want '$want'"
expect_status 200 "GET with compareTo&zeroedInChunks=0 on copy-mode snapshots" GET "/api/v1/vms/big/snapshots/$SB?compareTo=$SA&zeroedInChunks=0"
cp "$WORK/body" "$WORK/diffAB.json"
check "diff_mode is hash" jq -e '.disks[0].diff_mode == "hash"' "$WORK/diffAB.json"
got=$(blocks_of disk.img "$WORK/diffAB.json" chunks)
want="640 1601 1602 1603 "
[ "$got" = "$want" ] && ok "chunks are exactly the changed 64 KiB blocks ($want)" ||
    not_ok "chunks: got blocks '$got', want '$want'"
got=$(blocks_of disk.img "$WORK/diffAB.json" zeroed)
want="$(seq -s ' ' 2400 2415) "
[ "$got" = "$want" ] && ok "zeroed is exactly the discarded blocks" ||
    not_ok "zeroed: got blocks '$got', want '$want'"

# The 004 client: full download of A, then B's changes on top.
DISKA=/api/v1/vms/big/snapshots/$SA/disks/disk.img
size=$(head_size "$DISKA")
check "HEAD gives the disk size" test "$size" = $((320 << 20))
rm -f "$WORK/big.dl"
truncate -s "${size:-0}" "$WORK/big.dl"
download_chunks "$WORK/snapA.json" disk.img "$WORK/big.dl"
check "HEAD + ranged GETs reproduce snapshot A" cmp -s "$WORK/big.dl" "$SA_PATH"
truncate -s "$(jq -r '.disks[0].size' "$WORK/diffAB.json")" "$WORK/big.dl"
download_chunks "$WORK/diffAB.json" disk.img "$WORK/big.dl"
jq -r '.disks[0].zeroed[] | "\(.start) \(.length)"' "$WORK/diffAB.json" |
    while read -r s l; do fallocate --punch-hole -o "$s" -l "$l" "$WORK/big.dl"; done
check "incremental download reproduces snapshot B bit for bit" cmp -s "$WORK/big.dl" "$SB_PATH"
check "snapshot B equals the disk" cmp -s "$SB_PATH" "$EVMS/big/disk.img"
rm -f "$WORK/big.dl"

# Sidecars: XXH3-128 by default (version 2, algorithm 2); with [snapshot] block_hash = sha256
# the daemon writes SHA-256 ones (version 1, as older vmexport versions did), and a diff from
# either kind finds exactly the changed blocks.
sidecar_kind() { # DISK_PATH: "VERSION/ALGORITHM" from the header of DISK_PATH.vxhash
    echo "$(od -An -tu4 -j8 -N4 "$1.vxhash" | tr -d ' ')/$(od -An -tu4 -j56 -N4 "$1.vxhash" | tr -d ' ')"
}
check "default sidecar: xxh128 (version 2, algorithm 2)" test "$(sidecar_kind "$SA_PATH")" = 2/2
check "default sidecar: 16 bytes per 64 KiB block" test "$(stat -c %s "$SA_PATH.vxhash")" = $((64 + 16 * 5120))
stop_daemon
cp "$WORK/main.conf" "$WORK/sha.conf"
printf '[snapshot]\nblock_hash = sha256\n' >>"$WORK/sha.conf"
start_daemon "$WORK/sha.conf" "$PORT" && ok "daemon starts with block_hash = sha256" ||
    not_ok "daemon starts with block_hash = sha256"
expect_status 201 "snapshot C with SHA-256 sidecars" POST /api/v1/vms/big/snapshots
SC=$(jq -r .id "$WORK/body")
SC_PATH=$(jq -r '.disks[0].path' "$WORK/body")
check "sha256 sidecar: version 1, no algorithm field" test "$(sidecar_kind "$SC_PATH")" = 1/0
check "sha256 sidecar: 32 bytes per 64 KiB block" test "$(stat -c %s "$SC_PATH.vxhash")" = $((64 + 32 * 5120))
dd if=/dev/urandom of="$EVMS/big/disk.img" bs=4K count=1 seek=$(( 700 * B64K / 4096 + 3 )) conv=notrunc,fsync status=none
expect_status 201 "snapshot D after a 4 KiB write" POST /api/v1/vms/big/snapshots
SD=$(jq -r .id "$WORK/body")
expect_status 200 "compareTo from the sha256 snapshot" GET "/api/v1/vms/big/snapshots/$SD?compareTo=$SC"
check "diff_mode is hash from a sha256 sidecar" jq -e '.disks[0].diff_mode == "hash"' "$WORK/body"
got="$(blocks_of disk.img "$WORK/body" chunks)/$(blocks_of disk.img "$WORK/body" zeroed)"
[ "$got" = "700 /" ] && ok "sha256 base: exactly the written block changed" ||
    not_ok "sha256 base: got blocks '$got', want '700 /'"
expect_status 200 "compareTo from the xxh128 snapshot A" GET "/api/v1/vms/big/snapshots/$SD?compareTo=$SA&zeroedInChunks=false"
got=$(blocks_of disk.img "$WORK/body" chunks)
[ "$got" = "640 700 1601 1602 1603 " ] && ok "xxh128 base: the changes since A" ||
    not_ok "xxh128 base: got blocks '$got'"
expect_status 204 "delete snapshot C" DELETE "/api/v1/vms/big/snapshots/$SC"
expect_status 204 "delete snapshot D" DELETE "/api/v1/vms/big/snapshots/$SD"
stop_daemon
start_daemon "$WORK/main.conf" "$PORT" && ok "daemon restarts with the default block_hash" ||
    not_ok "daemon restarts with the default block_hash"

# =============================================================================== 8. OVM provider
expect_status 200 "GET /vms with the OVM provider" GET /api/v1/vms
jq --arg id "$OVM1" '.[] | select(.name == $id)' "$WORK/body" >"$WORK/ovm1.json"
jq --arg id "$OVM2" '.[] | select(.name == $id)' "$WORK/body" >"$WORK/ovm2.json"
check "OVM VM: friendly_name from OVM_simple_name, uuid, provider" \
    jq -e --arg u "$OVM1_UUID" '.friendly_name == "web server" and .uuid == $u and .provider == "ovm"' "$WORK/ovm1.json"
check "OVM VM: file disk is xvda, w, snapshot compatible" \
    jq -e --arg p "$REPO/VirtualDisks/a.img" '.disks[] | select(.name == "a.img") | .path == $p and .device_name == "xvda" and .mode == "w" and .snapshot_compatible == true' "$WORK/ovm1.json"
check "OVM VM: cdrom is xvdb:cdrom, r, not snapshot compatible" \
    jq -e '.disks[] | select(.name == "x.iso") | .device_name == "xvdb:cdrom" and .mode == "r" and .snapshot_compatible == false' "$WORK/ovm1.json"
check "OVM VM with a cdrom is snapshot compatible" jq -e '.snapshot_compatible == true and (.disks | length == 2)' "$WORK/ovm1.json"
check "OVM VM with a phy: disk: disk and VM not snapshot compatible" \
    jq -e --arg u "$OVM2_UUID" '.friendly_name == "db server" and .uuid == $u and .snapshot_compatible == false and (.disks | length == 1) and .disks[0].device_name == "xvda" and .disks[0].mode == "w" and .disks[0].snapshot_compatible == false and .disks[0].path == "/dev/mapper/x"' "$WORK/ovm2.json"
expect_status 200 "the OVM VM's definition" GET "/api/v1/vms/$OVM1/definition"
check "  is its vm.cfg, byte for byte" cmp <(jq -j .definition "$WORK/body") "$REPO/VirtualMachines/$OVM1/vm.cfg"
check "  in the ovm-vm.cfg format" jq -e '.format == "ovm-vm.cfg" and .vm_id == "'"$OVM1"'"' "$WORK/body"
expect_status 404 "a dir provider keeps no VM definition" GET "/api/v1/vms/churn/definition"
check "  and says so" jq -e '.details | test("keeps no definition")' "$WORK/body"
expect_status 404 "no definition of an unknown VM" GET "/api/v1/vms/nosuchvm/definition"
expect_status 201 "POST snapshot of the compatible OVM VM" POST "/api/v1/vms/$OVM1/snapshots"
SO=$(jq -r .id "$WORK/body")
check "OVM snapshot has only the file disk, in CoriolisSnapshots/<id>/" \
    jq -e --arg p "$REPO/CoriolisSnapshots/$SO/a.img" '(.disks | length == 1) and .disks[0].path == $p and .disks[0].parent_path != null' "$WORK/body"
check "OVM snapshot file exists and equals the disk" cmp -s "$REPO/CoriolisSnapshots/$SO/a.img" "$REPO/VirtualDisks/a.img"
expect_status 409 "POST snapshot of the phy: VM is 409" POST "/api/v1/vms/$OVM2/snapshots"
check "no snapshot directory for the refused VM" bash -c "[ \$(ls '$REPO/CoriolisSnapshots' | wc -l) = 1 ]"
expect_status 204 "delete the OVM snapshot" DELETE "/api/v1/vms/$OVM1/snapshots/$SO"
check "its directory is gone" test ! -e "$REPO/CoriolisSnapshots/$SO"

# ============================================================================== 6. concurrency
expect_status 201 "snapshot of the 64 MiB VM" POST /api/v1/vms/par/snapshots
SP=$(jq -r .id "$WORK/body")
SP_PATH=$(jq -r '.disks[0].path' "$WORK/body")
dl_pids=()
for i in 1 2 3 4 5 6 7 8; do
    tcurl --limit-rate 5M -o "$WORK/par.$i" -w '%{http_code}' \
        "$URL/api/v1/vms/par/snapshots/$SP/disks/disk.img" >"$WORK/par.$i.code" &
    dl_pids+=($!)
done
churn_bad=""
for i in 1 2 3 4 5; do
    c=$(tcurl -o "$WORK/churn.json" -w '%{http_code}' -X POST "$URL/api/v1/vms/churn/snapshots")
    [ "$c" = 201 ] || churn_bad+=" POST#$i=$c"
    id=$(jq -r .id "$WORK/churn.json" 2>/dev/null)
    c=$(tcurl -o /dev/null -w '%{http_code}' "$URL/api/v1/vms/churn/snapshots/$id")
    [ "$c" = 200 ] || churn_bad+=" GET#$i=$c"
    c=$(tcurl -o /dev/null -w '%{http_code}' -X DELETE "$URL/api/v1/vms/churn/snapshots/$id")
    [ "$c" = 204 ] || churn_bad+=" DELETE#$i=$c"
done
running=0
for p in "${dl_pids[@]}"; do kill -0 "$p" 2>/dev/null && running=$((running + 1)); done
check "downloads were still running while the snapshots churned ($running of 8)" test "$running" -gt 0
[ -z "$churn_bad" ] && ok "5 snapshot create/get/delete cycles during the downloads: 201/200/204" ||
    not_ok "snapshot churn statuses:$churn_bad"
for p in "${dl_pids[@]}"; do wait "$p"; done
bad=""
for i in 1 2 3 4 5 6 7 8; do
    [ "$(cat "$WORK/par.$i.code")" = 200 ] && cmp -s "$WORK/par.$i" "$SP_PATH" || bad+=" #$i($(cat "$WORK/par.$i.code"))"
    rm -f "$WORK/par.$i"
done
[ -z "$bad" ] && ok "8 parallel full downloads: all 200 and bit-identical" || not_ok "parallel downloads wrong:$bad"
expect_status 200 "churn VM has no snapshots left" GET /api/v1/vms/churn/snapshots
check "churn list is empty" jq -e '. == []' "$WORK/body"

# ============================================================================ 9. request limits
{ printf '{"username":"admin","password":"'; head -c $((70 * 1024)) /dev/zero | tr '\0' 'a'; printf '"}'; } >"$WORK/big-login.json"
TOKEN="" expect_status 413 "login body over 64 KiB is 413" POST /api/v1/auth/login --data-binary @"$WORK/big-login.json"
for i in 1 2 3 4; do printf 'X-Filler-%d: %s\n' "$i" "$(head -c 90000 /dev/zero | tr '\0' 'h')"; done >"$WORK/big-headers"
got=$(api GET /api/v1/vms --max-time 3 -H @"$WORK/big-headers")
# libmicrohttpd 0.9.75 (Debian 12) answers 431 over plain HTTP, but over TLS it never sends the
# 431 for a header larger than about half the connection memory limit: the connection is left
# unanswered until connection_timeout.  What we can and do require: the request is never
# executed (no 2xx) and the daemon keeps serving.
if [[ $got == 4[0-9][0-9] ]]; then ok "a 360 KB request header is refused (HTTP $got)"
elif [[ $got == 2[0-9][0-9] ]]; then not_ok "a 360 KB request header was executed (HTTP $got)"
else
    ok "a 360 KB request header is not executed (no answer over TLS: libmicrohttpd limitation)"
    diag "libmicrohttpd $(dpkg-query -W -f='${Version}' libmicrohttpd12 2>/dev/null) over TLS leaves over-large headers unanswered"
fi
expect_status 200 "daemon still answers after the huge header (healthz)" GET /healthz
check "daemon process is alive" kill -0 "$DAEMON_PID"

# ============================================================================= 4. graceful stop
expect_status 201 "snapshot of the 100 MiB VM" POST /api/v1/vms/stream/snapshots
SS=$(jq -r .id "$WORK/body")
SS_PATH=$(jq -r '.disks[0].path' "$WORK/body")
tcurl --limit-rate 20M -o "$WORK/stream.dl" -w '%{http_code}' \
    "$URL/api/v1/vms/stream/snapshots/$SS/disks/disk.img" >"$WORK/stream.code" &
dl_pid=$!
for _ in $(seq 100); do [ -s "$WORK/stream.dl" ] && break; sleep 0.05; done
check "the slow download has started" test -s "$WORK/stream.dl"
t0=$(date +%s.%N)
kill -TERM "$DAEMON_PID"
refused=
for _ in $(seq 20); do
    sleep 0.1
    curl -s --cacert "$CA" --connect-timeout 2 -o /dev/null "$URL/healthz"
    if [ $? = 7 ]; then refused=1; break; fi
done
[ -n "$refused" ] && ok "new connections are refused soon after SIGTERM" ||
    not_ok "new connections still accepted 2 s after SIGTERM"
check "the download is still running after SIGTERM" kill -0 "$dl_pid"
wait "$dl_pid"
check "the running download completes with 200" test "$(cat "$WORK/stream.code")" = 200
check "the downloaded bytes equal the snapshot" cmp -s "$WORK/stream.dl" "$SS_PATH"
rm -f "$WORK/stream.dl"
for _ in $(seq 150); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
wait "$DAEMON_PID"
rc=$?
t1=$(date +%s.%N)
elapsed=$(awk -v a="$t1" -v b="$t0" 'BEGIN {printf "%.1f", a - b}')
check "daemon exits 0 after SIGTERM (exit $rc)" test "$rc" = 0
check "daemon exits within shutdown_grace (${elapsed}s <= 10s)" awk -v e="$elapsed" 'BEGIN {exit !(e <= 10.5)}'

# ========================================================================== 5. mTLS, TLS versions
make_cert "$WORK/other-ca" || not_ok "make a second CA"
MPORT=$(free_port)
write_config "$WORK/mtls.conf" "$MPORT" "$WORK/mtls-state" \
    "[server]" "ca_certificate = $CA" \
    "[provider.m]" "type = dir" "path = $XVMS" || { not_ok "write mtls config"; exit 1; }
start_daemon "$WORK/mtls.conf" "$MPORT" && ok "daemon starts with ca_certificate" ||
    { not_ok "mTLS daemon starts"; exit 1; }
CLIENT=(--cert "$WORK/certs/client.crt" --key "$WORK/certs/client.key")
OTHER=(--cert "$WORK/other-ca/client.crt" --key "$WORK/other-ca/client.key")
TOKEN=""
got=$(api POST /api/v1/auth/login -d '{"username":"admin","password":"secret"}')
[ "$got" != 200 ] && ok "login without a client certificate is refused (HTTP $got)" ||
    not_ok "login without a client certificate: 200"
expect_status 200 "login with the client certificate" POST /api/v1/auth/login "${CLIENT[@]}" -d '{"username":"admin","password":"secret"}'
TOKEN=$(jq -r .token "$WORK/body")
got=$(api GET /api/v1/vms)
[ "$got" != 200 ] && ok "token without a client certificate is refused (HTTP $got)" ||
    not_ok "token without a client certificate: 200"
expect_status 200 "token with the client certificate: 200" GET /api/v1/vms "${CLIENT[@]}"
check "the VMs are listed" jq -e 'length == 3' "$WORK/body"
got=$(api GET /api/v1/vms "${OTHER[@]}")
[ "$got" != 200 ] && ok "a client certificate of another CA is refused (HTTP $got)" ||
    not_ok "a client certificate of another CA: 200"

# TLS 1.1: first show this curl can speak it (to an openssl s_server limited to 1.1), so that
# its failure against vmexportd means the daemon refused it.
OLD_TLS=(--tlsv1.1 --tls-max 1.1 --ciphers 'DEFAULT:@SECLEVEL=0')
SPORT=$(free_port)
openssl s_server -accept "127.0.0.1:$SPORT" -cert "$WORK/certs/server.crt" -key "$WORK/certs/server.key" \
    -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' -www -quiet >/dev/null 2>&1 &
SPID=$!
at_exit "kill $SPID"
for _ in $(seq 50); do ss -ltn | grep -q ":$SPORT " && break; sleep 0.1; done
if curl -s -o /dev/null --cacert "$CA" "${OLD_TLS[@]}" "https://127.0.0.1:$SPORT/"; then
    ok "control: this curl can connect with TLS 1.1"
    tls11_testable=1
else
    skip "this curl/OpenSSL cannot speak TLS 1.1; its refusal below proves little"
    tls11_testable=
fi
kill "$SPID" 2>/dev/null
curl -s -o /dev/null --cacert "$CA" "${OLD_TLS[@]}" "${CLIENT[@]}" "$URL/healthz"
rc=$?
if [ "$rc" = 0 ]; then not_ok "TLS 1.1 connection succeeded"
elif [ -n "$tls11_testable" ]; then ok "TLS 1.1 is refused by the daemon (curl exit $rc)"
else skip "TLS 1.1 failed (curl exit $rc), but this client cannot speak it anyway"; fi
got=$(api GET /healthz --tlsv1.2 --tls-max 1.2 "${CLIENT[@]}")
[ "$got" = 200 ] && ok "TLS 1.2 works" || not_ok "TLS 1.2: HTTP $got"
got=$(api GET /healthz --tlsv1.3 "${CLIENT[@]}")
[ "$got" = 200 ] && ok "TLS 1.3 works" || not_ok "TLS 1.3: HTTP $got"
stop_daemon
check "mTLS daemon stops cleanly" test $? -eq 0

# =========================================================================== 7. login rate limit
CAROL_PW="Carol-Pw-$RANDOM$RANDOM-ok"
echo "carol:$(openssl passwd -6 "$CAROL_PW")" >>"$WORK/state/users"
start_daemon "$WORK/main.conf" "$PORT" && ok "main daemon starts again" || { not_ok "restart"; exit 1; }
log_from=$(wc -l <"$WORK/daemon.log")
TOKEN=""
expect_status 200 "carol's password works before any failure" POST /api/v1/auth/login \
    -d "{\"username\":\"carol\",\"password\":\"$CAROL_PW\"}"
wrong=()
for i in 1 2 3 4 5; do
    wrong+=("Wrong-$RANDOM$RANDOM-$i")
    expect_status 401 "wrong password $i is 401" POST /api/v1/auth/login \
        -d "{\"username\":\"carol\",\"password\":\"${wrong[-1]}\"}"
done
expect_status 429 "after 5 failures the right password is refused" POST /api/v1/auth/login \
    -d "{\"username\":\"carol\",\"password\":\"$CAROL_PW\"}"
check "the refusal says to wait" grep -q 'too many failed logins.*retry in' "$WORK/body"
expect_status 429 "another user from the same address is refused too" POST /api/v1/auth/login \
    -d '{"username":"admin","password":"secret"}'
tail -n +"$((log_from + 1))" "$WORK/daemon.log" >"$WORK/limit.log"
check "log names the failed logins" grep -q "login failed for user 'carol' from 127.0.0.1" "$WORK/limit.log"
check "log tells the address is blocked" grep -q 'failed logins from 127.0.0.1' "$WORK/limit.log"
leak=""
for pw in "$CAROL_PW" "${wrong[@]}"; do grep -qF -- "$pw" "$WORK/daemon.log" && leak+=" $pw"; done
[ -z "$leak" ] && ok "the daemon log never contains a password" || not_ok "passwords in the log:$leak"
stop_daemon
check "main daemon stops cleanly" test $? -eq 0

# ============================================================ 10. descriptors beyond FD_SETSIZE
# A busy daemon holds many descriptors (a socket and two file descriptors per download); those
# past 1023 cannot be watched with select().  Start the daemon holding 1100 inherited ones, so
# that every further socket is numbered above 1024: idle connections and requests must still be
# served (with select, MHD dropped them without a word).
(
    ulimit -n 4096
    for _ in $(seq 1100); do exec {_fd}</dev/null; done
    exec "$VMEXPORTD" --config "$WORK/main.conf" >>"$WORK/daemon.log" 2>&1
) &
DAEMON_PID=$!
at_exit "kill -9 $DAEMON_PID"
for _ in $(seq 100); do curl -s --cacert "$WORK/certs/ca.crt" -o /dev/null "$URL/healthz" && break; sleep 0.1; done
idle=()
for _ in 1 2 3 4 5 6; do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT"; sleep 6) &
    idle+=($!)
done
sleep 0.5
high=$(ls -l "/proc/$DAEMON_PID/fd" | awk '/socket:/ { n = $9 + 0; if (n >= 1024) c++ } END { print c + 0 }')
check "the daemon holds sockets numbered >= 1024 ($high)" test "$high" -ge 1
TOKEN=""
expect_status 200 "login over a socket numbered >= 1024" POST /api/v1/auth/login \
    -d '{"username":"admin","password":"secret"}'
TOKEN=$(jq -r .token "$WORK/body" 2>/dev/null)
expect_status 200 "GET /vms over a socket numbered >= 1024" GET /api/v1/vms
kill "${idle[@]}" 2>/dev/null
stop_daemon
check "the daemon stops cleanly" test $? -eq 0

# The soft limit on open files (1024 by default, for select() users) is raised to the hard one;
# a hard limit below what max_connections may need ((1024 + its 144 margin) x 4 + 64 here) is
# warned about.
log_from=$(wc -l <"$WORK/daemon.log")
( ulimit -Sn 1024; ulimit -Hn 4096; exec "$VMEXPORTD" --config "$WORK/main.conf" -v >>"$WORK/daemon.log" 2>&1 ) &
DAEMON_PID=$!
at_exit "kill -9 $DAEMON_PID"
for _ in $(seq 100); do curl -s --cacert "$WORK/certs/ca.crt" -o /dev/null "$URL/healthz" && break; sleep 0.1; done
check "soft open-files limit raised to the hard one (4096)" \
    grep -Eq '^Max open files +4096 +4096 ' "/proc/$DAEMON_PID/limits"
check "the raise is logged" bash -c "tail -n +$((log_from + 1)) '$WORK/daemon.log' | grep -q 'open files limit raised from 1024 to 4096'"
stop_daemon
log_from=$(wc -l <"$WORK/daemon.log")
( ulimit -n 512; exec "$VMEXPORTD" --config "$WORK/main.conf" >>"$WORK/daemon.log" 2>&1 ) &
DAEMON_PID=$!
at_exit "kill -9 $DAEMON_PID"
for _ in $(seq 100); do curl -s --cacert "$WORK/certs/ca.crt" -o /dev/null "$URL/healthz" && break; sleep 0.1; done
check "a daemon with 512 open files at most still serves" curl -s --cacert "$WORK/certs/ca.crt" -o /dev/null "$URL/healthz"
check "and warns that max_connections may need more" bash -c "tail -n +$((log_from + 1)) '$WORK/daemon.log' | grep -q 'open files limit 512 is below the 4736 that max_connections = 1024 may need'"
stop_daemon
check "the daemon stops cleanly" test $? -eq 0
