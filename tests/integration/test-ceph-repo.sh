#!/bin/bash
# Repositories on a real single-node Ceph (ceph-lib.sh), RADOS and S3 (radosgw) alike: the
# repository property test (tests/unit/test_repo_property.c: generations of random workloads,
# restores bit for bit, corruption, verify, prune, gc, a backup process killed with SIGKILL) on
# each store; then through the CLI and the real daemon on each: kill -9 of a backup mid-way
# (nothing listed, verify passes, the next backup reuses its chunks); the OSD or radosgw killed
# mid-backup (a clear error, nothing listed, the next backup after the restart succeeds); gc
# during a SIGSTOP-paused backup (a short pause: gc waits, the backup commits and restores bit
# for bit; a pause past a short lease: the backup fails saying its lease was lost, verify
# passes); two backups from two processes into one repository at once.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/ceph-lib.sh"
require_ceph
ceph_start rgw && ok "ceph starts (mon, osd, radosgw)" || { not_ok "ceph starts"; exit 1; }
POOL=$VMEXPORT_TEST_POOL
BUCKET=vmexport-test-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
export XDG_CACHE_HOME=$WORK/cache
MIB=$((1 << 20))
DISK_MIB=${VMEXPORT_CEPH_DISK_MIB:-128}
SHORT_LEASE=4 # seconds: a pause past it loses the lease

# Which stores this build has: a URL of a store it lacks says "not available".
STORES=("rados://$POOL/prop")
URLS=("rados://$POOL/cli")
if "$VMEXPORT" backups --repo "s3://$BUCKET/probe" 2>&1 | grep -qi "not available\|not built"; then
    skip "S3: this build has no S3 store"
else
    STORES+=("s3://$BUCKET/prop")
    URLS+=("s3://$BUCKET/cli")
fi

# ---- the property test on each store ----
for url in "${STORES[@]}"; do
    out=$(VMEXPORT_TEST_STORE_URL=$url CMOCKA_MESSAGE_OUTPUT=TAP "$BUILD/tests/unit/test_repo_property" 2>&1)
    rc=$?
    if [ $rc = 0 ] && grep -q '^ok .* test_property_url$' <<<"$out"; then
        ok "the repository property test passes on ${url%%:*} at ${SECONDS}s ($(grep -E '^# (after|flipped)' <<<"$out" | sed 's/^# //' | tr '\n' ';'))"
    else
        not_ok "the repository property test on $url (exit $rc)"
        grep -v '^ok' <<<"$out" | tail -20 | sed 's/^/# /'
    fi
done

# ---- through the CLI and the daemon ----
mkdir -p "$WORK/vms/vm1" "$WORK/vms/vm2"
DISK=$WORK/vms/vm1/disk.img
dd if=/dev/urandom of="$WORK/vms/vm2/small.img" bs=1M count=8 status=none
start_dir_daemon local "$WORK/vms"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt

# new_data: fresh random data in both disks of vm1 (a backup of them stores every chunk anew).
# The small first disk is flushed at its end (the engine flushes every 512 MiB and at the end of
# each disk): a backup killed in the second one has stored the first one's chunks.
FIRST=$WORK/vms/vm1/a-first.img
FIRST_MIB=16
new_data() {
    dd if=/dev/urandom of="$FIRST" bs=1M count="$FIRST_MIB" status=none
    dd if=/dev/urandom of="$DISK" bs=1M count="$DISK_MIB" status=none conv=notrunc
    sync
}

# backups_count REPO
backups_count() { "$VMEXPORT" backups --repo "$1" --json 2>/dev/null | jq length; }

# start_backup REPO [ENV...]: a backup of vm1 in the background (PID in BPID, --json output in
# $WORK/bg.out); waits until a quarter of the disk is read (then it is storing chunks).
start_backup() {
    local repo=$1 i
    shift
    env "$@" "$VMEXPORT" backup vm1 --repo "$repo" --transport local --jobs 2 --json \
        >"$WORK/bg.out" 2>"$WORK/bg.err" &
    BPID=$!
    for ((i = 0; i < 600; i++)); do
        if jq -e "select(.type == \"progress\" and .bytes_done >= $(((FIRST_MIB + DISK_MIB / 4) * MIB)))" \
            "$WORK/bg.out" 2>/dev/null | grep -q .; then
            return 0
        fi
        kill -0 "$BPID" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# restores_bit_exact REPO ID FILE
restores_bit_exact() {
    rm -f "$WORK/restored.img"
    "$VMEXPORT" restore --repo "$1" "$2" --disk disk.img --to "$WORK/restored.img" >/dev/null 2>&1 &&
        cmp -s "$WORK/restored.img" "$3"
}

truncate -s $((DISK_MIB * MIB)) "$DISK"
for REPO in "${URLS[@]}"; do
    kind=${REPO%%:*}
    diag "$kind: the CLI scenarios start at ${SECONDS}s"
    check "$kind: repo init $REPO" "$VMEXPORT" repo init "$REPO"
    new_data
    check "$kind: a first backup" "$VMEXPORT" backup vm1 --repo "$REPO" --transport local
    n=$(backups_count "$REPO")

    # kill -9 mid-way: nothing listed, verify passes, the next backup reuses its chunks.
    new_data
    cp "$DISK" "$WORK/disk.killed"
    if start_backup "$REPO" VMEXPORT_LEASE_SECONDS=$SHORT_LEASE; then
        kill -9 "$BPID"
        wait "$BPID" 2>/dev/null
        check "$kind: kill -9 mid-backup: nothing listed" test "$(backups_count "$REPO")" = "$n"
        check "$kind:   verify passes" "$VMEXPORT" verify --repo "$REPO"
        "$VMEXPORT" backup vm1 --repo "$REPO" --transport local --json >"$WORK/next.out" 2>"$WORK/next.err"
        summary=$(jq -c 'select(.type == "summary")' "$WORK/next.out")
        check "$kind:   the next backup succeeds, reusing the killed one's chunks ($(jq -c '{chunks_new, chunks_reused}' <<<"$summary"))" \
            test "$(jq -r .chunks_reused <<<"$summary")" -gt 0
        n=$((n + 1))
        check "$kind:   and restores bit for bit" restores_bit_exact "$REPO" "$(jq -r .backup <<<"$summary")" "$WORK/disk.killed"
    else
        not_ok "$kind: the backup to kill did not get going: $(tail -2 "$WORK/bg.err")"
    fi

    # gc during a short SIGSTOP pause: gc waits, the backup commits and restores bit for bit.
    new_data
    cp "$DISK" "$WORK/disk.paused"
    if start_backup "$REPO"; then
        kill -STOP "$BPID"
        "$VMEXPORT" gc --repo "$REPO" >"$WORK/gc.out" 2>&1 &
        gpid=$!
        sleep 1
        check "$kind: gc during a paused backup waits for it" kill -0 "$gpid"
        kill -CONT "$BPID"
        wait "$BPID"
        check "$kind:   the backup commits" test $? = 0
        wait "$gpid"
        check "$kind:   gc then runs" test $? = 0
        id=$(jq -r 'select(.type == "summary") | .backup' "$WORK/bg.out")
        check "$kind:   the backup restores bit for bit" restores_bit_exact "$REPO" "$id" "$WORK/disk.paused"
        n=$((n + 1))
    else
        not_ok "$kind: the backup to pause did not get going: $(tail -2 "$WORK/bg.err")"
    fi

    # Paused past its (short) lease: gc runs meanwhile; the backup fails saying so.
    new_data
    if start_backup "$REPO" VMEXPORT_LEASE_SECONDS=$SHORT_LEASE; then
        kill -STOP "$BPID"
        sleep $((SHORT_LEASE + 1))
        check "$kind: gc runs while a backup is paused past its lease" "$VMEXPORT" gc --repo "$REPO"
        kill -CONT "$BPID"
        wait "$BPID"
        rc=$?
        check "$kind:   the backup fails (exit $rc)" test $rc = 1
        diag "$(tail -3 "$WORK/bg.err")"
        check "$kind:   saying its lease was lost" grep -q "lease was lost" "$WORK/bg.err"
        check "$kind:   nothing listed" test "$(backups_count "$REPO")" = "$n"
        check "$kind:   verify passes" "$VMEXPORT" verify --repo "$REPO"
    else
        not_ok "$kind: the backup to pause did not get going: $(tail -2 "$WORK/bg.err")"
    fi

    # Two processes back up into the repository at once.
    new_data
    "$VMEXPORT" backup vm1 --repo "$REPO" --transport local >"$WORK/c1" 2>&1 &
    p1=$!
    "$VMEXPORT" backup vm2 --repo "$REPO" --transport local >"$WORK/c2" 2>&1 &
    p2=$!
    wait $p1; r1=$?
    wait $p2; r2=$?
    check "$kind: two backups from two processes at once both succeed ($r1, $r2)" test $r1 = 0 -a $r2 = 0
    n=$((n + 2))
    check "$kind:   both listed" test "$(backups_count "$REPO")" = "$n"
    check "$kind:   gc, then verify passes" sh -c "'$VMEXPORT' gc --repo '$REPO' >/dev/null && '$VMEXPORT' verify --repo '$REPO' >/dev/null"
done

# ---- the store's server gone mid-backup ----
# A clear error and nothing listed; once the server is back the next backup succeeds.
# radosgw is killed and restarted.  The OSD is frozen (SIGSTOP) instead of killed, and last:
# the test cluster's OSD keeps its data in memory (memstore), so a restarted one comes back
# empty, and a thawed one may take long to serve again (then that part is skipped).
# (A short lease: the failed backup cannot release its locks while the server is gone.)
server_gone() {
    local REPO=$1 kind=${1%%:*} what rc i n
    n=$(backups_count "$REPO")
    new_data
    # The backup cut off from a frozen OSD gives up after 3 s per operation, not ceph-lib's 10.
    sed 's/^rados osd op timeout = .*/rados osd op timeout = 3/' "$CEPH_CONF" >"$WORK/short.conf"
    if ! start_backup "$REPO" VMEXPORT_LEASE_SECONDS=$SHORT_LEASE CEPH_CONF="$WORK/short.conf"; then
        not_ok "$kind: the backup to cut off did not get going: $(tail -2 "$WORK/bg.err")"
        return
    fi
    if [ "$kind" = rados ]; then
        kill -STOP "${CEPH_PID[osd]}"
        what="the OSD frozen"
    else
        ceph_stop_rgw
        what="radosgw killed"
    fi
    wait "$BPID"
    rc=$?
    check "$kind: $what mid-backup: the backup fails (exit $rc)" test "$rc" = 1
    diag "$(tail -1 "$WORK/bg.err")"
    check "$kind:   with a clear error" grep -Eqi "timed out|timeout|connect|no answer|unavailable|endpoint" "$WORK/bg.err"
    if [ "$kind" = rados ]; then kill -CONT "${CEPH_PID[osd]}"; else ceph_start_rgw; fi
    # 30 s in all, each try bounded (a listing of a store not yet serving waits for its timeouts)
    local until=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$until" ]; do
        [ -n "$(CEPH_CONF="$WORK/short.conf" timeout 8 "$VMEXPORT" backups --repo "$REPO" --json 2>/dev/null | jq length)" ] && break
        sleep 1
    done
    if [ -z "$(backups_count "$REPO")" ]; then
        skip "$kind: the store did not serve again within 30 s of $what being undone (test cluster)"
        return
    fi
    check "$kind:   once it is back nothing is listed" test "$(backups_count "$REPO")" = "$n"
    check "$kind:   and the next backup succeeds" "$VMEXPORT" backup vm1 --repo "$REPO" --transport local
    check "$kind:   verify passes" "$VMEXPORT" verify --repo "$REPO"
}
diag "the server faults start at ${SECONDS}s"
for ((k = ${#URLS[@]} - 1; k >= 0; k--)); do
    server_gone "${URLS[$k]}"
done
diag "done at ${SECONDS}s"
