#!/bin/bash
# The backup engine as a library (src/backup/), against the real daemon over TLS: the cmocka
# program tests/unit/test_backup_engine runs backup_run() through the https and the local
# source in turn, changes the disks between runs (new data, a discarded range, a grown disk,
# the base snapshot deleted), and compares the repository with the disk files bit for bit
# after each run; it also checks that the engine prints nothing.  Its TAP lines are relayed.
source "$(dirname "$0")/lib.sh"
require_root

PROG=$BUILD/tests/unit/test_backup_engine
[ -x "$PROG" ] || { not_ok "$PROG is built"; exit 1; }
MIB=$((1 << 20))

make_fs xfs 400 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/vmeng"
# a.img: 64 MiB, mostly holes, 2 MiB of data at 4 MiB and 1 MiB at 20 MiB.
truncate -s 64M "$VMS/vmeng/a.img"
dd if=/dev/urandom of="$VMS/vmeng/a.img" bs=1M count=2 seek=4 conv=notrunc status=none
dd if=/dev/urandom of="$VMS/vmeng/a.img" bs=1M count=1 seek=20 conv=notrunc status=none
# b.raw: 3 MiB + 12345 bytes of data (an odd size: a short last chunk).
head -c $((3 * MIB + 12345)) /dev/urandom >"$VMS/vmeng/b.raw"
# A VM whose ID holds a quote and a non-ASCII letter: the --json summary must stay valid JSON.
QVM='vm"q-é'
mkdir -p "$VMS/$QVM"
head -c $((2 * MIB)) /dev/urandom >"$VMS/$QVM/d.img"
sync

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" || { not_ok "daemon starts"; exit 1; }
ok "daemon starts"

VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret \
    VMEXPORT_CACERT=$WORK/certs/ca.crt VMEXPORT_TEST_VMS=$VMS VMEXPORT_TEST_WORK=$WORK \
    CMOCKA_MESSAGE_OUTPUT=TAP "$PROG" >"$WORK/engine.tap" 2>&1
rc=$?
# Relay the program's results as this script's TAP lines.
while IFS= read -r line; do
    case $line in
        "not ok "*) not_ok "engine: ${line#not ok [0-9]* - }" ;;
        "ok "*) case $line in *"# SKIP"*) not_ok "engine: skipped with a daemon: $line" ;;
                    *) ok "engine: ${line#ok [0-9]* - }" ;; esac ;;
        "#"*) echo "$line" ;;
    esac
done <"$WORK/engine.tap"
check "test_backup_engine exits 0 (exit $rc)" test "$rc" = 0
login admin secret || { not_ok "login"; exit 1; }
expect_status 200 "list the snapshots of vmeng" GET "/api/v1/vms/vmeng/snapshots?chunks=false"
check "one snapshot of vmeng is left on the server (the newest base: --keep-snapshots 1)" \
    jq -e 'length == 1 and (.[0].label | startswith("vmexport-backup:"))' "$WORK/body"

# vmexport backup --json writes its summary through the JSON writer (core/jsonw.h).
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
"$VMEXPORT" repo init "$WORK/qrepo" >/dev/null || not_ok "repo init"
if "$VMEXPORT" backup "$QVM" --repo "$WORK/qrepo" --json >"$WORK/q.out" 2>"$WORK/q.err"; then
    check "the summary of a backup of VM $QVM is valid JSON naming it" \
        jq -e --arg vm "$QVM" 'select(.type == "summary") | .vm == $vm and .bytes_read == 2097152' "$WORK/q.out"
else
    not_ok "backup of VM $QVM: $(tail -2 "$WORK/q.err")"
fi
