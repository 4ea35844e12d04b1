#!/bin/bash
# Repositories in Ceph RADOS (rados://POOL/NAMESPACE) on a real single-node Ceph (ceph-lib.sh):
# the store contract of tests/unit/test_store.c on the RADOS store (with processes racing to
# create the same objects, and staged objects in memory and in temporary files); then through the CLI and the real daemon: repo init, a full and an
# incremental backup, restores equal to the disk byte for byte, verify, prune, gc (the objects
# checked in the pool with `rados ls`); clear errors for a wrong CEPH_ID, a missing pool, a
# cluster that does not answer (within the connect timeout) and a namespace already in use; two
# `repo init` of one URL at once: exactly one wins.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/ceph-lib.sh"
require_ceph
ceph_start && ok "ceph starts" || { not_ok "ceph starts"; exit 1; }
POOL=$VMEXPORT_TEST_POOL
REPO=rados://$POOL/repo
rados_ls() { rados -c "$CEPH_CONF" -p "$POOL" -N "$1" ls | sort; }

# ---- the store contract ----
# Staged objects beyond 2 bytes in all wait in temporary files: test_staged stages 3 bytes,
# then 1 and 1, so both places are used.
out=$(VMEXPORT_TEST_RADOS=rados://$POOL/unit VMEXPORT_RADOS_STAGE_MEMORY=2 \
    CMOCKA_MESSAGE_OUTPUT=TAP "$BUILD/tests/unit/test_store" 2>&1)
rc=$?
if [ "$rc" = 0 ] && ! grep -q '^not ok' <<<"$out" && grep -q '^ok .* test_rados_create_race' <<<"$out"; then
    ok "the store contract passes on RADOS ($(grep -c '^ok' <<<"$out") tests)"
else
    not_ok "the store contract passes on RADOS (exit $rc)"
    grep -v '^ok' <<<"$out" | tail -20 | sed 's/^/# /'
fi
check "  and leaves nothing in its namespaces" test -z "$(rados -c "$CEPH_CONF" -p "$POOL" --all ls)"

# ---- a repository through the CLI and the daemon ----
mkdir -p "$WORK/vms/vm1"
DISK=$WORK/vms/vm1/disk.img
truncate -s 24M "$DISK"
dd if=/dev/urandom of="$DISK" bs=1M count=6 seek=2 conv=notrunc status=none
start_dir_daemon local "$WORK/vms"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

out=$("$VMEXPORT" repo init "$REPO" --chunk-size 256K 2>&1)
check "repo init $REPO" test $? = 0
check "  the config is an object in the namespace" grep -qx config <(rados_ls repo)
out=$("$VMEXPORT" repo init "$REPO" 2>&1)
check "a second repo init there is refused" test $? = 1
check "  saying the namespace is in use" grep -q "holds objects already" <<<"$out"

check "full backup" "$VMEXPORT" backup vm1 --repo "$REPO"
check "  stored packs and index objects in the pool" \
    test "$(rados_ls repo | grep -c '^packs/')" -gt 0 -a "$(rados_ls repo | grep -c '^index/')" -gt 0
cp "$DISK" "$WORK/disk.v1"
dd if=/dev/urandom of="$DISK" bs=64K count=3 seek=100 conv=notrunc status=none
# Its packs staged in temporary files rather than in memory.
VMEXPORT_RADOS_STAGE_MEMORY=0 "$VMEXPORT" backup vm1 --repo "$REPO" --json >"$WORK/b2.json"
check "incremental backup (staging in temporary files)" test $? = 0
summary=$(jq -c 'select(.type == "summary")' "$WORK/b2.json")
check "  read only the changes" test "$(jq -r '.incremental' <<<"$summary")" = true
check "  reusing the stored chunks" test "$(jq -r '.chunks_reused' <<<"$summary")" -gt 0

mapfile -t IDS < <("$VMEXPORT" backups --repo "$REPO" --json | jq -r '.[].id')
check "backups lists both" test "${#IDS[@]}" = 2
"$VMEXPORT" restore --repo "$REPO" "${IDS[0]}" --to "$WORK/r1.img" >/dev/null 2>&1
check "restore of the full backup equals the disk then" cmp -s "$WORK/r1.img" "$WORK/disk.v1"
"$VMEXPORT" restore --repo "$REPO" "${IDS[1]}" --to "$WORK/r2.img" >/dev/null 2>&1
check "restore of the incremental equals the disk now" cmp -s "$WORK/r2.img" "$DISK"
check "verify" "$VMEXPORT" verify --repo "$REPO"

before=$(rados_ls repo | wc -l)
check "prune --keep-last 1" "$VMEXPORT" prune --repo "$REPO" --keep-last 1
check "  removed the older backup's objects" \
    test -z "$(rados_ls repo | grep "^backups/.*/${IDS[0]}/")"
check "gc" "$VMEXPORT" gc --repo "$REPO"
after=$(rados_ls repo | wc -l)
check "  deleted objects ($before -> $after)" test "$after" -lt "$before"
"$VMEXPORT" restore --repo "$REPO" "${IDS[1]}" --to "$WORK/r3.img" --force >/dev/null 2>&1
check "  the kept backup still restores bit-exact" cmp -s "$WORK/r3.img" "$DISK"
check "  and verifies" "$VMEXPORT" verify --repo "$REPO"

# ---- clear errors ----
out=$(CEPH_ID=nobody "$VMEXPORT" backups --repo "$REPO" 2>&1)
check "a wrong CEPH_ID fails" test $? = 1
check "  naming the user and CEPH_ID" grep -q "refused client.nobody.*CEPH_ID" <<<"$out"
check "--ceph-conf and --ceph-id stand for CEPH_CONF and CEPH_ID" \
    env -u CEPH_CONF -u CEPH_ID "$VMEXPORT" backups --repo "$REPO" --ceph-conf "$CEPH_CONF" \
    --ceph-id client.admin
out=$("$VMEXPORT" backups --repo "$REPO" --ceph-id nobody 2>&1)
check "  a wrong --ceph-id fails" grep -q "refused client.nobody" <<<"$out"
out=$("$VMEXPORT" backups --repo "rados://no-such-pool/x" 2>&1)
check "a missing pool fails" test $? = 1
check "  naming the pool" grep -q "pool no-such-pool does not exist" <<<"$out"
# A monitor address nobody listens on, and no timeouts of the test cluster's ceph.conf: the
# store's own bound (10 s) ends the wait, where librados' default would wait 5 minutes.
sed -e "s/^mon host = .*/mon host = v2:127.0.0.1:$(free_port)/" -e '/timeout/d' "$CEPH_CONF" \
    >"$WORK/dead.conf"
out=$(timeout 60 "$VMEXPORT" backups --repo "$REPO" --ceph-conf "$WORK/dead.conf" 2>&1)
check "a cluster that does not answer fails within the connect timeout" test $? = 1
check "  saying so" grep -q "no answer from the Ceph monitors" <<<"$out"
out=$("$VMEXPORT" backups --repo "rados://$POOL/empty" 2>&1)
check "an empty namespace is not a repository" grep -q "not a vmexport repository" <<<"$out"

# ---- two repo init at once ----
"$VMEXPORT" repo init "rados://$POOL/race" >"$WORK/i1" 2>&1 &
p1=$!
"$VMEXPORT" repo init "rados://$POOL/race" >"$WORK/i2" 2>&1 &
p2=$!
wait $p1; r1=$?
wait $p2; r2=$?
check "two repo init of one URL at once: exactly one succeeds ($r1, $r2)" test $((r1 + r2)) = 1
check "  and a repository is there" "$VMEXPORT" backups --repo "rados://$POOL/race"
