#!/bin/bash
# What users of other live-VM backup tools complain about, each a case against the qemu
# provider (fast tier, qemu-storage-daemon): bitmaps in use after a crash, bitmaps removed by
# someone (QMP, qemu-img), an interrupted backup (client killed, vmexportd killed mid-snapshot),
# disks added and removed between backups, two repositories backing up the same VM, a checkpoint
# of another chain, --disk/--exclude-disk, read-only disks.  In every case the next backup of
# the disk concerned is full and says why, the other disks stay incremental, stale bitmaps of
# ours are cleaned, and every backup restores bit for bit as the disks were at its snapshot:
# never an incremental on a broken chain.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/qsd-lib.sh"
require_qsd
for tool in curl jq; do command -v $tool >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }; done

SEED=${VMEXPORT_SEED:-$(( (RANDOM << 15) | RANDOM ))}
diag "seed=$SEED (rerun with VMEXPORT_SEED=$SEED)"
OPS=4

qsd_create vm1 a:qcow2:8 b:qcow2:8 c:raw:8 iso:raw:4:ro || { not_ok "create vm1's images"; exit 1; }
qsd_create vm2 root:qcow2:8 || { not_ok "create vm2's images"; exit 1; }
qsd_start vm1 && qsd_start vm2 && ok "qemu-storage-daemon runs vm1 (a, b qcow2; c raw; iso read-only) and vm2" ||
    { not_ok "qemu-storage-daemon starts"; exit 1; }
guest_write_all vm1 "$SEED" 16 1048576 && guest_write_all vm2 "$((SEED + 1))" 16 1048576 ||
    { not_ok "first writes"; exit 1; }
qsd_daemon_start || { not_ok "vmexportd starts with a qemu provider"; exit 1; }
REPO=$QSD_ROOT/repo
check "repo init" "$VMEXPORT" repo init "$REPO" --chunk-size 1M

n=0
# bk WHAT REPO VM [BACKUP ARGS...]: the guest writes, then a backup during which it goes on
# writing; the backup restored must equal every backed-up disk's truth at the snapshot: one TAP
# line.  Sets BK (backup ID) and TAG; the summary is in $WORK/summary.
bk() {
    local what=$1 repo=$2 vm=$3; shift 3
    n=$((n + 1))
    TAG=t$n
    BK=
    if ! guest_write_all "$vm" $((SEED + 100 * n)) $OPS; then
        not_ok "$what: the guest cannot write"
        return 1
    fi
    : >"$WORK/summary"
    if ! backup_while_writing "$repo" "$vm" "$TAG" $((SEED + 100 * n + 50)) $OPS "$@"; then
        not_ok "$what: backup of $vm: $(tail -2 "$WORK/backup.err" | tr '\n' ' ')"
        return 1
    fi
    BK=$(jq -r .backup "$WORK/summary")
    local disks
    mapfile -t disks < <(backup_disks "$repo" "$BK")
    if restore_check "$repo" "$BK" "$TAG" "$vm" "${disks[@]}" 2>&1; then
        ok "$what"
    else
        not_ok "$what"
        return 1
    fi
}

# backup_disks REPO BACKUP: the disk names in a backup, one a line, sorted.
backup_disks() {
    "$VMEXPORT" backups --repo "$1" --json | jq -r --arg id "$2" '.[] | select(.id == $id) | .disks[].name' | sort
}

# disk_mode DISK: "incremental" or "full", as the last summary says of DISK.
disk_mode() {
    jq -r --arg d "$1" '.disks // [] | .[] | select(.name == $d) | if .incremental then "incremental" else "full" end' "$WORK/summary"
}

# disk_reason DISK: why the last backup read DISK in full (empty when it did not say).
disk_reason() {
    jq -r --arg d "$1" '.disks // [] | .[] | select(.name == $d) | .full_reason // ""' "$WORK/summary"
}

# expect_modes WHAT DISK=MODE...: each disk was backed up as said (MODE incremental, full, or
# any); a full one says why.
expect_modes() {
    local what=$1; shift
    local kv d m got why='' reason
    for kv in "$@"; do
        d=${kv%%=*} m=${kv#*=}
        got=$(disk_mode "$d")
        [ "$m" = any ] && [ -n "$got" ] && m=$got
        [ "$got" = "$m" ] || why="$why $d is ${got:-missing}, not $m;"
        if [ "$m" = full ]; then
            reason=$(disk_reason "$d")
            [ -n "$reason" ] && diag "  $d full: $reason" || why="$why $d full without a reason;"
        fi
    done
    if [ -z "$why" ]; then ok "$what"; else not_ok "$what:$why $(head -c 600 "$WORK/summary")"; fi
}

# our_bitmaps VM NODE: the names of our bitmaps on NODE (vmexport.*), one a line.
our_bitmaps() {
    qsd_bitmaps "$1" | jq -r --arg n "$2" '.[$n] // [] | .[] | select((.name // "") | startswith("vmexport.")) | .name'
}

# stale_bitmaps VM NODE: our bitmaps on NODE that are inconsistent (in use after a crash).
stale_bitmaps() {
    qsd_bitmaps "$1" | jq -r --arg n "$2" '.[$n] // [] | .[] | select(((.name // "") | startswith("vmexport.")) and (.inconsistent // false)) | .name'
}

# leftovers VM: what a snapshot left in the VM and the scratch directory although no snapshot
# holds data now (backups release theirs): backup jobs, exports other than the guest's, scratch
# images.  Empty when clean.
leftovers() {
    qmp "$1" '{"execute":"query-block-jobs"}' '{"execute":"query-block-exports"}' |
        jq -r 'if type == "array" then .[] | (.device // .id) else empty end' | grep -v '^guest-'
    ls -A "$QSD_ROOT/scratch"
}

# ---- a first full backup, read-only disks skipped, then an incremental one ----
bk "vm1: first backup (full), restores as at its snapshot" "$REPO" vm1
check "  the read-only disk iso is not backed up by default" test "$(backup_disks "$REPO" "$BK" | tr '\n' ' ')" = "a b c "
bk "vm2: first backup" "$REPO" vm2
bk "vm1: second backup restores as at its snapshot" "$REPO" vm1
expect_modes "  every disk incremental" a=incremental b=incremental c=incremental

# ---- bitmaps removed by someone ----
for b in $(our_bitmaps vm1 a); do
    qmp vm1 "{\"execute\":\"block-dirty-bitmap-remove\",\"arguments\":{\"node\":\"a\",\"name\":\"$b\"}}" >/dev/null
done
check "our bitmaps of disk a removed through QMP (block-dirty-bitmap-remove)" test -z "$(our_bitmaps vm1 a)"
bk "vm1: the next backup restores as at its snapshot" "$REPO" vm1
expect_modes "  a full (its checkpoint is gone), b and c incremental" a=full b=incremental c=incremental
check "  the summary says a's base checkpoint is gone" grep -q "checkpoint of the base snapshot .* is gone" <(disk_reason a)

qsd_stop vm1
for b in $(qemu-img info --output=json "$QSD_ROOT/qsd/vm1/b.qcow2" | jq -r '.["format-specific"].data.bitmaps // [] | .[].name | select(startswith("vmexport."))'); do
    qemu-img bitmap --remove "$QSD_ROOT/qsd/vm1/b.qcow2" "$b"
done
check "vm1 stopped cleanly; qemu-img bitmap --remove took b's bitmaps" \
    test "$(qemu-img info --output=json "$QSD_ROOT/qsd/vm1/b.qcow2" | jq '[.["format-specific"].data.bitmaps // [] | .[] | select(.name | startswith("vmexport."))] | length')" = 0
check "  and a's persistent bitmaps are stored in a.qcow2" \
    test "$(qemu-img info --output=json "$QSD_ROOT/qsd/vm1/a.qcow2" | jq '[.["format-specific"].data.bitmaps // [] | .[] | select(.name | startswith("vmexport."))] | length')" -gt 0
qsd_start vm1 || { not_ok "vm1 restarts"; exit 1; }
bk "vm1 restarted: the next backup restores as at its snapshot" "$REPO" vm1
expect_modes "  a incremental (persistent bitmap), b full (removed), c full (raw: its bitmap did not survive the restart)" \
    a=incremental b=full c=full
check "  the summary says b's and c's base checkpoints are gone" \
    test "$(disk_reason b | grep -c 'checkpoint of the base snapshot .* is gone')$(disk_reason c | grep -c 'checkpoint of the base snapshot .* is gone')" = 11

# ---- a crash: bitmaps in use ----
# A clean stop stores every bitmap; a start marks them in use in the images; kill -9 leaves
# them so: after the restart they are inconsistent.
qsd_stop vm1
qsd_start vm1 && qsd_kill9 vm1 && qsd_start vm1 || { not_ok "vm1 stop, start, kill -9, start"; exit 1; }
check "after kill -9 and a restart, our bitmaps of a and b are inconsistent" \
    test -n "$(stale_bitmaps vm1 a)" -a -n "$(stale_bitmaps vm1 b)"
bk "vm2: a backup while vm1 is broken" "$REPO" vm2
expect_modes "  vm2 stays incremental" root=incremental
bk "vm1: the backup after the crash restores as at its snapshot" "$REPO" vm1
expect_modes "  every disk full (in use after the crash; raw: gone)" a=full b=full c=full
check "  the inconsistent bitmaps of ours are removed" test -z "$(stale_bitmaps vm1 a)$(stale_bitmaps vm1 b)"
bk "vm1: the backup after that" "$REPO" vm1
expect_modes "  is incremental again" a=incremental b=incremental c=incremental

# One disk crashed alone: a.qcow2 was open in another process that died (its bitmaps in use),
# b.qcow2 was not.
qsd_stop vm1
"$QSD" --blockdev "driver=file,node-name=f,filename=$QSD_ROOT/qsd/vm1/a.qcow2" \
    --blockdev "driver=qcow2,node-name=a,file=f" >/dev/null 2>&1 &
crash_pid=$!
for _ in $(seq 500); do # until the image is open: its bitmaps marked in use
    qemu-img info -U --output=json "$QSD_ROOT/qsd/vm1/a.qcow2" |
        jq -e '[.["format-specific"].data.bitmaps // [] | .[].flags | index("in-use")] | any' >/dev/null && break
    sleep 0.01
done
{ kill -9 $crash_pid; wait $crash_pid; } 2>/dev/null
qsd_start vm1 || { not_ok "vm1 restarts"; exit 1; }
check "only a's bitmaps are inconsistent" test -n "$(stale_bitmaps vm1 a)" -a -z "$(stale_bitmaps vm1 b)"
bk "vm1: the next backup restores as at its snapshot" "$REPO" vm1
expect_modes "  a full (in use), b incremental, c full (raw, restarted)" a=full b=incremental c=full
check "  a's inconsistent bitmaps are removed" test -z "$(stale_bitmaps vm1 a)"

# ---- an interrupted backup ----
# interrupt VICTIM: a backup of vm1, and once its snapshot's transaction ran (a new backup job),
# kill -9 of VICTIM: "client" (the backup) or "daemon" (vmexportd, in the middle of the
# snapshot's request).  A backup that ends before the test sees its job (a busy machine) is
# just one more backup: then again, up to 5 times.
interrupt() {
    local victim=$1 bpid
    for _ in 1 2 3 4 5; do
        known_jobs vm1 "$QSD_ROOT/known" || return 1
        "$VMEXPORT" backup vm1 --repo "$REPO" --json >/dev/null 2>&1 &
        bpid=$!
        if wait_snapshot vm1 $bpid 2>/dev/null; then
            if [ "$victim" = client ]; then
                { kill -9 $bpid; wait $bpid; } 2>/dev/null
            else
                { kill -9 "$DAEMON_PID"; wait "$DAEMON_PID"; wait $bpid; } 2>/dev/null
            fi
            return 0
        fi
        wait $bpid
    done
    return 1
}

guest_write_all vm1 $((SEED + 7001)) $OPS
check "a backup client killed once its snapshot was taken" interrupt client
bk "vm1: the next backup works and restores as at its snapshot" "$REPO" vm1
# The killed backup's snapshot is deleted as stale: its checkpoints fold into the previous ones,
# which the chain continues from.
expect_modes "  still incremental from the last good backup" a=incremental b=incremental c=incremental
check "  the killed backup's snapshot left nothing in the VM nor in scratch_dir" test -z "$(leftovers vm1)"
bk "vm1: the one after that" "$REPO" vm1
expect_modes "  is incremental" a=incremental b=incremental c=incremental

check "vmexportd killed mid-snapshot (its transaction ran)" interrupt daemon
start_daemon "$CONF" "$PORT" && login admin secret || { not_ok "vmexportd restarts"; exit 1; }
bk "vm1: the next backup works and restores as at its snapshot" "$REPO" vm1
# The interrupted snapshot is deleted when vmexportd restarts: its checkpoints fold into the
# previous ones.
expect_modes "  still incremental from the last good backup" a=incremental b=incremental c=incremental
check "  the interrupted snapshot left nothing in the VM nor in scratch_dir" test -z "$(leftovers vm1)"
bk "and the one after that" "$REPO" vm1
expect_modes "  is incremental" a=incremental b=incremental c=incremental

# ---- disks added and removed between backups ----
qsd_add_disk vm1 d:qcow2:8 || not_ok "add disk d"
bk "vm1 with a new disk d: backup restores as at its snapshot" "$REPO" vm1
expect_modes "  d full (new), a b c incremental" d=full a=incremental b=incremental c=incremental
qsd_remove_disk vm1 b || not_ok "remove disk b"
bk "vm1 without disk b: backup restores as at its snapshot" "$REPO" vm1
check "  b is not in it" test "$(backup_disks "$REPO" "$BK" | tr '\n' ' ')" = "a c d "
expect_modes "  a c d incremental" a=incremental c=incremental d=incremental

# ---- --disk and --exclude-disk ----
bk "vm1 --disk a: backup restores as at its snapshot" "$REPO" vm1 --disk a
check "  only a is in it" test "$(backup_disks "$REPO" "$BK" | tr '\n' ' ')" = "a "
expect_modes "  a incremental" a=incremental
bk "vm1 --exclude-disk a: backup restores as at its snapshot" "$REPO" vm1 --exclude-disk a
check "  a is not in it" test "$(backup_disks "$REPO" "$BK" | tr '\n' ' ')" = "c d "
bk "vm1: a backup of every disk" "$REPO" vm1
# a was not in the backup before: full (with the reason), or incremental from its last backup.
expect_modes "  c d incremental" a=any c=incremental d=incremental

# ---- two repositories back up the same VM, each its own chain ----
REPO2=$QSD_ROOT/repo2
check "a second repository" "$VMEXPORT" repo init "$REPO2" --chunk-size 1M
bk "vm1 into the second repository (its first: full)" "$REPO2" vm1
expect_modes "  full, no base in that repository" a=full c=full d=full
bk "vm1 into the first repository" "$REPO" vm1
expect_modes "  incremental" a=incremental c=incremental d=incremental
bk "vm1 into the second repository" "$REPO2" vm1
expect_modes "  incremental: the first repository's backup in between did not break its chain" \
    a=incremental c=incremental d=incremental
chains=$(our_bitmaps vm1 a | cut -d. -f2 | sort -u | wc -l)
check "disk a carries bitmaps of two chains ($chains)" test "$chains" -ge 2

# ---- a checkpoint of another chain is refused ----
expect_status 201 "a snapshot of vm2 in chain x" POST "/api/v1/vms/vm2/snapshots?chunks=false" -d '{"chain":"x"}'
SX=$(jq -r .id "$WORK/body")
CX=$(jq -r '.disks[] | select(.name == "root") | .change_id' "$WORK/body")
check "  it says its chain" jq -e '.chain == "x"' "$WORK/body"
expect_status 201 "a snapshot of vm2 in chain y" POST "/api/v1/vms/vm2/snapshots?chunks=false" -d '{"chain":"y"}'
SY=$(jq -r .id "$WORK/body")
expect_status 409 "changes of chain y's snapshot since chain x's are refused" \
    GET "/api/v1/vms/vm2/snapshots/$SY/disks/root/changes?changeId=$CX"
check "  as a checkpoint error that says why" jq -e '.error == "checkpoint" and (.details | length) > 0' "$WORK/body"
diag "  $(jq -r .details "$WORK/body")"
expect_status 200 "compareTo chain x's snapshot" GET "/api/v1/vms/vm2/snapshots/$SY?compareTo=$SX"
check "  lists every data area (diff_mode full) and says why" jq -e '.disks[0].diff_mode == "full" and (.disks[0].diff_reason | test("chain")) and (.disks[0].chunks | length) > 0' "$WORK/body"
expect_status 204 "delete x" DELETE "/api/v1/vms/vm2/snapshots/$SX"
expect_status 204 "delete y" DELETE "/api/v1/vms/vm2/snapshots/$SY"
bk "vm2: its repository's chain still incremental" "$REPO" vm2
expect_modes "  incremental" root=incremental

check "the guest's writes are all on the disks" truth_check vm1

# Under the sanitizers a leak or memory error shows in the daemon's exit status.
stop_daemon
check "vmexportd stops cleanly" test $? -eq 0
