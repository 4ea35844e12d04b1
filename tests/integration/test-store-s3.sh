#!/bin/bash
# Repositories on S3 (store_s3.c) against a real radosgw (ceph-lib.sh): the store contract of
# test_store on S3; `repo init s3://...` creating the bucket; backups through the real daemon,
# restored bit for bit, verify, prune, gc; wrong keys and a missing bucket give clear errors
# without the secret; two backups from two processes into one bucket at once; radosgw killed
# mid-backup (clear error, nothing visible, the next backup reuses what was stored); and
# --lock-days: Object Lock retention that neither prune nor a raw DeleteObject with the keys
# gets past.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/ceph-lib.sh"
require_root
require_ceph
command -v radosgw >/dev/null || { skip "radosgw is not installed"; exit 0; }

ceph_start rgw || { not_ok "Ceph with radosgw starts"; exit 1; }
ok "Ceph with radosgw starts"
EMPTY_SHA=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

# s3 METHOD PATH [CURL ARGS...]: a raw signed request with the test keys; body on stdout, the
# HTTP status on the last line.
s3() {
    local method=$1 path=$2; shift 2
    curl -s -X "$method" --aws-sigv4 "aws:amz:$AWS_DEFAULT_REGION:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H "x-amz-content-sha256: $EMPTY_SHA" \
        -w '\n%{http_code}' "$@" "$VMEXPORT_S3_ENDPOINT/$path"
}
# s3_keys BUCKET PREFIX: the keys under PREFIX, one a line (up to 1000: enough here).
s3_keys() {
    local pfx
    pfx=$(printf %s "$2" | jq -sRr @uri)
    s3 GET "$1?list-type=2&prefix=$pfx" | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g'
}

# ---- the store contract ----
out=$(VMEXPORT_TEST_S3=s3://vmx-contract/c "$BUILD/tests/unit/test_store" 2>&1)
rc=$?
if [ $rc -eq 0 ] && ! grep -q SKIPPED <<<"$out" && grep -q "test_staged" <<<"$out"; then
    ok "the store contract passes on S3"
else
    not_ok "the store contract passes on S3"
    diag "$(grep -E 'FAIL|ERROR|error' <<<"$out" | head -20)"
fi

# ---- a repository ----
make_fs xfs 320 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/vm1" "$VMS/vm2" "$VMS/vm3"
dd if=/dev/urandom of="$VMS/vm1/a.img" bs=1M count=6 status=none
truncate -s 32M "$VMS/vm1/holes.img"
dd if=/dev/urandom of="$VMS/vm1/holes.img" bs=64K count=8 seek=100 conv=notrunc status=none
dd if=/dev/urandom of="$VMS/vm2/b.img" bs=1M count=6 status=none
# vm3: its first disk is committed (one pack) before the second, big one, is read.
dd if=/dev/urandom of="$VMS/vm3/a-first.img" bs=1M count=4 status=none
dd if=/dev/urandom of="$VMS/vm3/b-second.img" bs=1M count=24 status=none
sync
start_dir_daemon local "$VMS"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

REPO=s3://vmx-repo/backups/main
out=$("$VMEXPORT" backups --repo "$REPO" 2>&1)
check "a missing bucket is an error" test $? -ne 0
check "  that says the bucket does not exist" grep -q "bucket vmx-repo does not exist" <<<"$out"
check "repo init $REPO" "$VMEXPORT" repo init "$REPO" --chunk-size 256K
check "  created the bucket with the config under the prefix" \
    grep -qx "backups/main/config" <(s3_keys vmx-repo backups/)
check_fails "  a second init there is refused" "$VMEXPORT" repo init "$REPO"
check "  the new repository lists no backups" test "$("$VMEXPORT" backups --repo "$REPO" --json)" = "[]"
check "  and verifies" "$VMEXPORT" verify --repo "$REPO"

out=$(AWS_SECRET_ACCESS_KEY=not-the-secret-XYZZY "$VMEXPORT" backups --repo "$REPO" 2>&1)
check "wrong keys are an error" test $? -ne 0
check "  that says access is denied and names the variables" \
    grep -q "access denied.*AWS_SECRET_ACCESS_KEY" <<<"$out"
check "  and does not print the secret" bash -c '! grep -q XYZZY <<<"$1"' _ "$out"

check "backup of vm1" "$VMEXPORT" backup vm1 --repo "$REPO"
dd if=/dev/urandom of="$VMS/vm1/a.img" bs=64K count=3 seek=40 conv=notrunc status=none
cp "$VMS/vm1/a.img" "$WORK/a.gen2"
cp "$VMS/vm1/holes.img" "$WORK/holes.gen2"
"$VMEXPORT" backup vm1 --repo "$REPO" --json >"$WORK/b2.json"
check "an incremental backup of vm1" test $? -eq 0
check "  stores only the changed chunks" \
    jq -e '.chunks_new >= 1 and .chunks_new <= 2' "$(tail -1 "$WORK/b2.json" >"$WORK/b2.sum"; echo "$WORK/b2.sum")"
BID=$("$VMEXPORT" backups --repo "$REPO" --json | jq -r '[.[] | select(.vm == "vm1")] | sort_by(.id) | last | .id')
mkdir "$WORK/out"
check "restore the latest backup of vm1" "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/out"
check "  bit for bit (random disk)" cmp "$WORK/out/a.img" "$WORK/a.gen2"
check "  bit for bit (sparse disk)" cmp "$WORK/out/holes.img" "$WORK/holes.gen2"
check "verify" "$VMEXPORT" verify --repo "$REPO"

# ---- TLS: radosgw behind a TLS front with the test CA's certificate ----
cat >"$WORK/tls_front.py" <<'PY'
import socket, ssl, sys, threading
cert, key, port, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
    except (ssl.SSLError, OSError):
        c.close()
        return
    u = socket.create_connection(("127.0.0.1", target))
    threading.Thread(target=pipe, args=(t, u), daemon=True).start()
    pipe(u, t)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
TLS_PORT=$(free_port)
python3 "$WORK/tls_front.py" "$WORK/certs/server.crt" "$WORK/certs/server.key" "$TLS_PORT" \
    "$CEPH_RGW_PORT" 2>/dev/null &
at_exit "kill $!"
for ((i = 0; i < 50; i++)); do
    curl -s -o /dev/null --cacert "$WORK/certs/ca.crt" "https://127.0.0.1:$TLS_PORT/" && break
    sleep 0.1
done
out=$("$VMEXPORT" backups --repo "$REPO" --s3-endpoint "https://127.0.0.1:$TLS_PORT" 2>&1)
check "an https endpoint whose CA is not trusted is refused" test $? -ne 0
check "  naming the certificate problem" grep -qi "certificate" <<<"$out"
check "  --s3-ca trusts it" "$VMEXPORT" backups --repo "$REPO" \
    --s3-endpoint "https://127.0.0.1:$TLS_PORT" --s3-ca "$WORK/certs/ca.crt"
check "  as does VMEXPORT_S3_CA" env VMEXPORT_S3_ENDPOINT="https://127.0.0.1:$TLS_PORT" \
    VMEXPORT_S3_CA="$WORK/certs/ca.crt" "$VMEXPORT" backups --repo "$REPO"

# ---- two processes backing up into one bucket at once ----
"$VMEXPORT" backup vm1 --repo "$REPO" --full >"$WORK/c1.log" 2>&1 &
p1=$!
"$VMEXPORT" backup vm2 --repo "$REPO" >"$WORK/c2.log" 2>&1 &
p2=$!
wait $p1; r1=$?
wait $p2; r2=$?
check "two concurrent backups (two processes) both succeed" test $r1 -eq 0 -a $r2 -eq 0
n1=$("$VMEXPORT" backups --repo "$REPO" --json | jq '[.[] | select(.vm == "vm1")] | length')
n2=$("$VMEXPORT" backups --repo "$REPO" --json | jq '[.[] | select(.vm == "vm2")] | length')
check "  and both are listed" test "$n1" = 3 -a "$n2" = 1
rm -rf "$WORK/out2" && mkdir "$WORK/out2"
BID2=$("$VMEXPORT" backups --repo "$REPO" --json | jq -r '[.[] | select(.vm == "vm2")][0].id')
"$VMEXPORT" restore --repo "$REPO" "$BID2" --to "$WORK/out2" >/dev/null
check "  vm2's restores bit for bit" cmp "$WORK/out2/b.img" "$VMS/vm2/b.img"

# ---- prune and gc ----
check "prune --keep-last 1" "$VMEXPORT" prune --repo "$REPO" vm1 --keep-last 1
n1=$("$VMEXPORT" backups --repo "$REPO" --json | jq '[.[] | select(.vm == "vm1")] | length')
check "  leaves one backup of vm1" test "$n1" = 1
before=$(s3_keys vmx-repo backups/main/ | wc -l)
"$VMEXPORT" gc --repo "$REPO" --json >"$WORK/gc.json"
check "gc" test $? -eq 0
after=$(s3_keys vmx-repo backups/main/ | wc -l)
check "  deleted objects ($before -> $after)" test "$after" -lt "$before"
check "verify after gc" "$VMEXPORT" verify --repo "$REPO"
rm -rf "$WORK/out" && mkdir "$WORK/out"
BID=$("$VMEXPORT" backups --repo "$REPO" --json | jq -r '[.[] | select(.vm == "vm1")][0].id')
"$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/out" >/dev/null
check "  the kept backup restores bit for bit" cmp "$WORK/out/a.img" "$VMS/vm1/a.img"

# ---- radosgw killed mid-backup ----
# vm3's first disk is committed (a pack) before the second is read; the backup is paused right
# then, radosgw killed, the backup resumed: it must fail clearly and leave no backup.  Its
# leases are short so that the next backup need not wait an hour for its VM lock.
packs_before=$(s3_keys vmx-repo backups/main/packs/ | wc -l)
VMEXPORT_LEASE_SECONDS=6 "$VMEXPORT" backup vm3 --repo "$REPO" --jobs 1 >"$WORK/kill.log" 2>&1 &
pk=$!
for ((i = 0; i < 600; i++)); do
    [ "$(s3_keys vmx-repo backups/main/packs/ | wc -l)" -gt "$packs_before" ] && break
    kill -0 $pk 2>/dev/null || break
    sleep 0.05
done
if kill -STOP $pk 2>/dev/null; then
    ok "vm3's backup paused after its first disk was stored"
    ceph_stop_rgw
    kill -CONT $pk
    wait $pk
    check "  with radosgw gone it fails" test $? -ne 0
    check "  naming the endpoint and the cause" \
        grep -q "S3 endpoint $VMEXPORT_S3_ENDPOINT.*Couldn't connect to server" "$WORK/kill.log"
    ceph_start_rgw || { not_ok "radosgw restarts"; exit 1; }
    n3=$("$VMEXPORT" backups --repo "$REPO" --json | jq '[.[] | select(.vm == "vm3")] | length')
    check "  no backup of vm3 is visible" test "$n3" = 0
    "$VMEXPORT" backup vm3 --repo "$REPO" --json >"$WORK/b3.json" 2>"$WORK/b3.err"
    check "  after the restart the next backup succeeds" test $? -eq 0
    tail -1 "$WORK/b3.json" >"$WORK/b3.sum"
    # a-first.img: 4 MiB in 256 KiB chunks, stored before radosgw went
    check "  reusing the chunks stored before ($(jq -c '{chunks_new, chunks_reused}' "$WORK/b3.sum"))" \
        jq -e '.chunks_reused >= 16' "$WORK/b3.sum"
    rm -rf "$WORK/out3" && mkdir "$WORK/out3"
    BID3=$("$VMEXPORT" backups --repo "$REPO" --json | jq -r '[.[] | select(.vm == "vm3")][0].id')
    "$VMEXPORT" restore --repo "$REPO" "$BID3" --to "$WORK/out3" >/dev/null
    check "  and restores bit for bit" \
        bash -c 'cmp "$1/a-first.img" "$2/a-first.img" && cmp "$1/b-second.img" "$2/b-second.img"' \
        _ "$WORK/out3" "$VMS/vm3"
else
    not_ok "vm3's backup paused after its first disk was stored (it ended first: $(tail -2 "$WORK/kill.log"))"
fi

# ---- Object Lock: --lock-days ----
LREPO=s3://vmx-locked/r
check "repo init --lock-days 1" "$VMEXPORT" repo init "$LREPO" --lock-days 1 --chunk-size 256K
check "  made the bucket with Object Lock" grep -q "<ObjectLockEnabled>Enabled<" <(s3 GET "vmx-locked?object-lock=")
check "two backups of vm2 into it" bash -c '"$1" backup vm2 --repo "$2" && "$1" backup vm2 --repo "$2" --full' \
    _ "$VMEXPORT" "$LREPO"
OLD=$("$VMEXPORT" backups --repo "$LREPO" --json | jq -r '[.[] | select(.vm == "vm2")] | sort_by(.id) | .[0].id')
head=$(s3 HEAD "vmx-locked/r/backups/vm2/$OLD/backup.json" -I)
check "  its objects carry COMPLIANCE retention" grep -qi "x-amz-object-lock-mode: COMPLIANCE" <<<"$head"
"$VMEXPORT" prune --repo "$LREPO" --keep-last 1 >"$WORK/lprune.log" 2>&1
check "prune of a locked backup reports it kept" grep -q "backup $OLD is kept: the store refuses" "$WORK/lprune.log"
n=$("$VMEXPORT" backups --repo "$LREPO" --json | jq 'length')
check "  both backups are still there" test "$n" = 2
version=$(sed -n 's/^x-amz-version-id: *//Ip' <<<"$head" | tr -d '\r')
code=$(s3 DELETE "vmx-locked/r/backups/vm2/$OLD/backup.json?versionId=$version" | tail -1)
check "a raw DeleteObject of its version with the keys is refused ($code)" test "$code" = 403
rm -rf "$WORK/outl" && mkdir "$WORK/outl"
"$VMEXPORT" restore --repo "$LREPO" "$OLD" --to "$WORK/outl" >/dev/null
check "  the locked backup still restores bit for bit" cmp "$WORK/outl/b.img" "$VMS/vm2/b.img"
# A leftover of an interrupted write, retained like everything in the bucket: gc keeps it and
# says so instead of failing.
body=leftover
curl -s -o /dev/null -X PUT --aws-sigv4 "aws:amz:$AWS_DEFAULT_REGION:s3" \
    --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: $(printf %s "$body" | sha256sum | cut -c1-64)" \
    -H "Content-MD5: $(printf %s "$body" | openssl md5 -binary | base64)" \
    -H "x-amz-object-lock-mode: COMPLIANCE" \
    -H "x-amz-object-lock-retain-until-date: $(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)" \
    --data-binary "$body" "$VMEXPORT_S3_ENDPOINT/vmx-locked/r/packs/00/x.tmp.0123456789abcdef"
"$VMEXPORT" gc --repo "$LREPO" >"$WORK/lgc.log" 2>&1
check "gc on the locked repository succeeds" test $? -eq 0
check "  reporting the retained leftover it could not delete" \
    grep -q "packs/00/x.tmp.0123456789abcdef: kept: the store refuses" "$WORK/lgc.log"
check "  verify passes" "$VMEXPORT" verify --repo "$LREPO"
