#!/bin/bash
# vmexportd over TLS on a real XFS (reflink) filesystem, driven with curl: every route and
# status, the auth matrix, the Range matrix, path tricks, the 004 client's incremental download
# sequence reproducing the disks bit for bit, and VMware-style changed areas.
source "$(dirname "$0")/lib.sh"
require_root

make_fs xfs 400 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/web01" "$VMS/db01" "$VMS/.hidden"
truncate -s 64M "$VMS/web01/root.img"
dd if=/dev/urandom of="$VMS/web01/root.img" bs=1M count=8 seek=4 conv=notrunc status=none
truncate -s 16M "$VMS/web01/data.raw"
dd if=/dev/urandom of="$VMS/web01/data.raw" bs=64K count=3 seek=17 conv=notrunc status=none
echo "not a disk" >"$VMS/web01/notes.txt"
truncate -s 8M "$VMS/db01/db.qcow2"
sync

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" && ok "daemon starts with TLS on 127.0.0.1:$PORT" ||
    { not_ok "daemon starts"; exit 1; }

# --- health, metrics, unknown routes ---
expect_status 200 "GET /healthz without a token" GET /healthz
expect_status 200 "GET /api/v1/healthz/ with a trailing slash" GET /api/v1/healthz/
expect_status 404 "unknown route is 404" GET /api/v1/nothing
check "errors carry error and details" jq -e 'has("error") and has("details")' "$WORK/body"
expect_status 404 "path outside the API is 404" GET /etc/passwd

# --- auth matrix ---
expect_status 401 "no Authorization header" GET /api/v1/vms
check "401 body has error and details" jq -e '.error and .details' "$WORK/body"
expect_status 400 "login without a body" POST /api/v1/auth/login
expect_status 400 "login with malformed JSON" POST /api/v1/auth/login -d '{"username":'
expect_status 401 "login with a wrong password" POST /api/v1/auth/login -d '{"username":"admin","password":"nope"}'
cp "$WORK/body" "$WORK/wrongpass"
expect_status 401 "login as an unknown user" POST /api/v1/auth/login -d '{"username":"mallory","password":"nope"}'
check "wrong password and unknown user look the same" cmp -s "$WORK/body" "$WORK/wrongpass"
expect_status 200 "login with the right password" POST /api/v1/auth/login -d '{"username":"admin","password":"secret"}'
TOKEN=$(jq -r .token "$WORK/body")
check "login returns a token" test -n "$TOKEN" -a "$TOKEN" != null
expect_status 200 "login route with a trailing slash" POST /api/v1/auth/login/ -d '{"username":"alice","password":"wonderland"}'

good=$TOKEN
TOKEN="" expect_status 401 "Basic scheme is refused" GET /api/v1/vms -H "Authorization: Basic YWRtaW46c2VjcmV0"
TOKEN="" expect_status 401 "lower-case bearer is refused" GET /api/v1/vms -H "Authorization: bearer $good"
TOKEN="" expect_status 401 "token without scheme is refused" GET /api/v1/vms -H "Authorization: $good"
TOKEN="${good%?}x" expect_status 401 "bad signature is refused" GET /api/v1/vms
# Tampered payload: same signature, sub changed.
IFS=. read -r h p s <<<"$good"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
tampered_payload=$(printf '{"sub":"root","iat":%d,"exp":%d,"iss":"vmexportd"}' "$(date +%s)" $(( $(date +%s) + 3600 )) | b64url)
TOKEN="$h.$tampered_payload.$s" expect_status 401 "tampered payload is refused" GET /api/v1/vms
none_header=$(printf '{"alg":"none","typ":"JWT"}' | b64url)
TOKEN="$none_header.$p." expect_status 401 "alg none is refused" GET /api/v1/vms
# Expired token, correctly signed with the daemon's own key.
sign() { # sign HEADER.PAYLOAD: the key is the secret file's content without its line end
    printf '%s' "$1" | openssl dgst -sha256 -mac HMAC \
        -macopt "hexkey:$(tr -d '\n' <"$WORK/state/jwt.key" | od -An -v -tx1 | tr -d ' \n')" -binary | b64url
}
hs_header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
now=$(date +%s)
b64url_decode() { local s=${1//-/+}; s=${s//_//}; while (( ${#s} % 4 )); do s+="="; done; printf '%s' "$s" | base64 -d; }
# The claims of a real token (sub, iss, and pwh: the digest of admin's password hash) with
# another iat and exp.
claims() { b64url_decode "$p" | jq -c --argjson iat "$1" --argjson exp "$2" '.iat = $iat | .exp = $exp'; }
valid_payload=$(claims "$now" $((now + 600)) | b64url)
TOKEN="$hs_header.$valid_payload.$(sign "$hs_header.$valid_payload")" \
    expect_status 200 "a token we sign with the daemon key works (the signing check is real)" GET /api/v1/vms
nopwh_payload=$(claims "$now" $((now + 600)) | jq -c 'del(.pwh)' | b64url)
TOKEN="$hs_header.$nopwh_payload.$(sign "$hs_header.$nopwh_payload")" \
    expect_status 401 "a token without the password-hash digest (pwh) is refused" GET /api/v1/vms
expired_payload=$(claims $((now - 7200)) $((now - 3600)) | b64url)
TOKEN="$hs_header.$expired_payload.$(sign "$hs_header.$expired_payload")" \
    expect_status 401 "expired token is refused" GET /api/v1/vms
TOKEN=$good

# --- VMs ---
expect_status 200 "GET /vms" GET /api/v1/vms
check "two VMs, hidden directory ignored" jq -e 'map(.name) | sort == ["db01","web01"]' "$WORK/body"
check "004 VM fields present" jq -e 'all(.[]; has("friendly_name") and has("name") and has("uuid") and has("disks") and has("snapshot_compatible") and has("snapshots") and has("provider"))' "$WORK/body"
expect_status 200 "GET /vms/web01/ (trailing slash)" GET /api/v1/vms/web01/
check "disk fields: 004 + size + snapshot_mode" jq -e '(.disks | length == 2) and all(.disks[]; has("name") and has("path") and has("device_name") and has("mode") and .snapshot_compatible == true and .snapshot_mode == "reflink") and (.disks | map(.name) | sort == ["data.raw","root.img"])' "$WORK/body"
check "disk size reported" jq -e '.disks[] | select(.name == "root.img") | .size == 67108864' "$WORK/body"
expect_status 404 "unknown VM is 404" GET /api/v1/vms/nope

# --- path tricks: never 200, never a file outside ---
expect_status_in "400 404" "'..' as VM ID" GET /api/v1/vms/..
expect_status_in "400 404" "%2f in a VM ID" GET /api/v1/vms/web01%2f..%2f..
expect_status 404 "'.hidden' is not a VM" GET /api/v1/vms/.hidden
long=$(printf 'a%.0s' $(seq 300))
expect_status 400 "over-long ID is 400" GET "/api/v1/vms/$long"
expect_status_in "400 404" "NUL in an ID" GET "/api/v1/vms/web01%00x"
expect_status_in "400 404" "disk path trick" GET "/api/v1/vms/web01/snapshots/x/disks/..%2f..%2fetc%2fpasswd"

# --- snapshots ---
expect_status 200 "no snapshots yet" GET /api/v1/vms/web01/snapshots
check "empty list" jq -e '. == []' "$WORK/body"
expect_status 201 "POST snapshot is 201 Created" POST /api/v1/vms/web01/snapshots/
cp "$WORK/body" "$WORK/snap1.json"
S1=$(jq -r .id "$WORK/snap1.json")
check "snapshot fields" jq -e '.id and .vm_id == "web01" and .created_at and .status == "ready" and (.disks | length == 2) and all(.disks[]; .name and .path and .parent_path and .snapshot_id and .repo_mountpoint and .size and .change_id and (.chunks | type == "array"))' "$WORK/snap1.json"
# file_id: boot ID, st_dev and st_ino of the snapshot file, as this host sees them.
fid_ok=1
while IFS=$'\t' read -r p fid; do
    want="$(cat /proc/sys/kernel/random/boot_id):$(stat -c '%d:%i' "$p")"
    [ "$fid" = "$want" ] || { fid_ok=0; diag "file_id of $p: $fid, want $want"; }
done < <(jq -r '.disks[] | [.path, .file_id] | @tsv' "$WORK/snap1.json")
[ "$fid_ok" = 1 ] && ok "file_id of each snapshot disk = boot ID:device:inode of its file" || not_ok "file_id of each snapshot disk"
check "chunks of root.img squashed: one 8 MiB chunk at 4 MiB" jq -e '.disks[] | select(.name == "root.img") | .chunks | length == 1 and .[0].start == 4194304 and .[0].length == 8388608 and (.[0].physical_start | type == "number")' "$WORK/snap1.json"
# Keep what the disks held at snapshot 1.
cp --sparse=always "$VMS/web01/root.img" "$WORK/root.at1"
cp --sparse=always "$VMS/web01/data.raw" "$WORK/data.at1"

expect_status 200 "GET the snapshot" GET "/api/v1/vms/web01/snapshots/$S1"
expect_status 200 "GET with squashChunks=false" GET "/api/v1/vms/web01/snapshots/$S1/?squashChunks=false"
expect_status 400 "squashChunks=maybe is 400" GET "/api/v1/vms/web01/snapshots/$S1?squashChunks=maybe"
expect_status 404 "unknown snapshot is 404" GET /api/v1/vms/web01/snapshots/00000000-0000-0000-0000-000000000000
expect_status 404 "snapshot under the wrong VM is 404" GET "/api/v1/vms/db01/snapshots/$S1"
expect_status 200 "VM lists its snapshot" GET /api/v1/vms/web01
check "snapshot id in VM's snapshots" jq -e --arg s "$S1" '.snapshots == [$s]' "$WORK/body"
expect_status 405 "PUT on snapshots is 405" PUT /api/v1/vms/web01/snapshots

# --- the 004 client's sequence: full download of snapshot 1 into sparse files ---
download_chunks() { # SNAPSHOT_JSON DISK OUT
    local json=$1 disk=$2 out=$3 s l
    jq -r --arg d "$disk" '.disks[] | select(.name == $d) | .chunks[] | "\(.start) \(.length)"' "$json" |
    while read -r s l; do
        curl -s --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" \
            -H "Range: bytes=$s-$((s + l - 1))" "$URL/api/v1/vms/web01/snapshots/$(jq -r .id "$json")/disks/$disk" |
            dd of="$out" bs=1M oflag=seek_bytes seek="$s" conv=notrunc status=none
    done
}
for d in root.img data.raw; do
    size=$(curl -s -I --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" \
        "$URL/api/v1/vms/web01/snapshots/$S1/disks/$d" | tr -d '\r' | awk 'tolower($1) == "content-length:" {print $2}')
    rm -f "$WORK/$d.dl"
    truncate -s "$size" "$WORK/$d.dl"
    download_chunks "$WORK/snap1.json" "$d" "$WORK/$d.dl"
done
check "HEAD + ranged GETs of root.img reproduce snapshot 1" cmp -s "$WORK/root.img.dl" "$WORK/root.at1"
check "HEAD + ranged GETs of data.raw reproduce snapshot 1" cmp -s "$WORK/data.raw.dl" "$WORK/data.at1"
# The snapshot's data was cold (a new clone has no cached pages): TLS responses read it with
# O_DIRECT, so serving it did not pull it into the page cache.  Warm data is read through the
# cache: the same range again, after reading the file, still gives the same bytes.
snap_root=$(jq -r '.disks[] | select(.name == "root.img") | .path' "$WORK/snap1.json")
cached=$(fincore --bytes --noheadings --output RES "$snap_root" | tr -d ' ')
check "cold snapshot data served with O_DIRECT: $cached bytes of it cached after the download" test "$cached" -lt $((1 << 20))
cat "$snap_root" >/dev/null
curl -s --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" -H "Range: bytes=$((4 << 20))-$(((12 << 20) - 1))" \
    -o "$WORK/warm.part" "$URL/api/v1/vms/web01/snapshots/$S1/disks/root.img"
check "warm snapshot data (read through the page cache) gives the same bytes" \
    cmp -s "$WORK/warm.part" <(dd if="$WORK/root.at1" bs=1M skip=4 count=8 status=none)

# Change the VM: a 4 KiB write, a discard, growth.
dd if=/dev/urandom of="$VMS/web01/root.img" bs=4K count=1 seek=2000 conv=notrunc,fsync status=none
fallocate --punch-hole -o $((6 << 20)) -l $((1 << 20)) "$VMS/web01/root.img"
truncate -s 80M "$VMS/web01/root.img"
dd if=/dev/urandom of="$VMS/web01/root.img" bs=64K count=2 seek=1200 conv=notrunc,fsync status=none
sync
expect_status 201 "second snapshot" POST /api/v1/vms/web01/snapshots
S2=$(jq -r .id "$WORK/body")
cp --sparse=always "$VMS/web01/root.img" "$WORK/root.at2"
# The 004 client reads only "chunks": by default they cover the zeroed ranges too, in order.
expect_status 200 "GET with compareTo (004 default: chunks cover zeroed ranges)" GET "/api/v1/vms/web01/snapshots/$S2?compareTo=$S1"
cp "$WORK/body" "$WORK/diff12-004.json"
check "compareTo default: the discard is in chunks (physical_start 0) and in zeroed" \
    jq -e '.disks[] | select(.name == "root.img") | [.chunks[] | [.start, .length]] == [[6291456,1048576],[8192000,4096],[78643200,131072]] and .chunks[0].physical_start == 0 and .zeroed == [{"start":6291456,"length":1048576,"physical_start":0}]' "$WORK/diff12-004.json"
cp --sparse=always "$WORK/root.at1" "$WORK/root.img.004"
truncate -s 83886080 "$WORK/root.img.004"
download_chunks "$WORK/diff12-004.json" root.img "$WORK/root.img.004"
check "004 client (chunks only, zeroed ignored) reproduces snapshot 2 bit for bit" cmp -s "$WORK/root.img.004" "$WORK/root.at2"
expect_status 200 "zeroedInChunks=False keeps the ranges apart" GET "/api/v1/vms/web01/snapshots/$S2?compareTo=$S1&zeroedInChunks=False"
check "zeroedInChunks=False: chunks without the discard" jq -e '.disks[] | select(.name == "root.img") | [.chunks[] | .start] == [8192000,78643200]' "$WORK/body"
expect_status 200 "GET with compareTo&zeroedInChunks=false (vmexport's own client)" GET "/api/v1/vms/web01/snapshots/$S2?compareTo=$S1&zeroedInChunks=false"
cp "$WORK/body" "$WORK/diff12.json"
check "compareTo: only the 4 KiB write and the growth are chunks, the discard is zeroed" \
    jq -e '.disks[] | select(.name == "root.img") | .chunks == [{"start":8192000,"length":4096,"physical_start":.chunks[0].physical_start},{"start":78643200,"length":131072,"physical_start":.chunks[1].physical_start}] and .zeroed == [{"start":6291456,"length":1048576,"physical_start":0}] and .size == 83886080' "$WORK/diff12.json"
check "compareTo: unchanged data.raw has no chunks" jq -e '.disks[] | select(.name == "data.raw") | .chunks == [] and .zeroed == []' "$WORK/diff12.json"
# Apply: grow, fetch changed chunks only, zero the zeroed ranges.
truncate -s 83886080 "$WORK/root.img.dl"
download_chunks "$WORK/diff12.json" root.img "$WORK/root.img.dl"
jq -r '.disks[] | select(.name == "root.img") | .zeroed[] | "\(.start) \(.length)"' "$WORK/diff12.json" |
    while read -r s l; do fallocate --punch-hole -o "$s" -l "$l" "$WORK/root.img.dl"; done
check "incremental download reproduces snapshot 2 bit for bit" cmp -s "$WORK/root.img.dl" "$WORK/root.at2"

expect_status 400 "compareTo a newer snapshot is 400" GET "/api/v1/vms/web01/snapshots/$S1?compareTo=$S2"
expect_status 400 "compareTo itself is 400" GET "/api/v1/vms/web01/snapshots/$S1?compareTo=$S1"
expect_status 404 "compareTo unknown is 404" GET "/api/v1/vms/web01/snapshots/$S2?compareTo=nope"
expect_status 201 "snapshot of another VM" POST /api/v1/vms/db01/snapshots
D1=$(jq -r .id "$WORK/body")
expect_status 409 "compareTo a snapshot of another VM is 409" GET "/api/v1/vms/web01/snapshots/$S2?compareTo=$D1"

# --- Range matrix on snapshot 2's root.img ---
DISK=/api/v1/vms/web01/snapshots/$S2/disks/root.img
expect_status 200 "full GET" GET "$DISK"
check "full GET body equals the disk" cmp -s "$WORK/body" "$WORK/root.at2"
expect_status 206 "single range" GET "$DISK" -H "Range: bytes=8192000-8196095"
check "single range bytes" cmp -s "$WORK/body" <(dd if="$WORK/root.at2" bs=4096 skip=2000 count=1 status=none)
expect_status 206 "suffix range" GET "$DISK" -H "Range: bytes=-100"
check "suffix range bytes" cmp -s "$WORK/body" <(tail -c 100 "$WORK/root.at2")
expect_status 206 "open-ended range" GET "$DISK" -H "Range: bytes=83886000-"
check "open-ended range bytes" cmp -s "$WORK/body" <(tail -c 80 "$WORK/root.at2")
curl -s -D "$WORK/hdrs" -o "$WORK/body" --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" \
    -H "Range: bytes=0-9,4194304-4194313" "$URL$DISK"
check "multiple ranges: multipart/byteranges" grep -qi '^content-type: multipart/byteranges; boundary=' "$WORK/hdrs"
check "multipart body holds both parts" bash -c "grep -ac 'Content-Range: bytes' '$WORK/body' | grep -qx 2"
# Many parts, as a backup asks for scattered extents: small ones (read ahead together, through
# the page cache), some not 4 KiB-aligned, parts over the read-ahead limit of a part (256 KiB)
# or past that of an answer (4 MiB), one out of order; each part is the disk's bytes, in order.
ranges=""
for ((i = 0; i < 30; i++)); do ranges+="$((10485760 + i * 65536))-$((10485760 + i * 65536 + 4095)),"; done
for ((i = 0; i < 5; i++)); do ranges+="$((12583912 + i * 8192))-$((12583912 + i * 8192 + 2999)),"; done
for ((i = 0; i < 20; i++)); do ranges+="$((4194304 + i * 266240))-$((4194304 + i * 266240 + 262143)),"; done
ranges+="20971520-21495807,31457280-31981567,1048576-1052671"
curl -s -D "$WORK/hdrs" -o "$WORK/body" --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" \
    -H "Range: bytes=$ranges" "$URL$DISK"
if out=$(/usr/bin/python3 "$VMEXPORT_ROOT/tests/tools/multipart_check.py" "$WORK/hdrs" "$WORK/body" \
    "$WORK/root.at2" "$ranges" 2>&1); then
    ok "58 ranges: each part the disk's bytes, in request order ($out)"
else
    not_ok "58 ranges: $out"
fi
expect_status 416 "unsatisfiable range" GET "$DISK" -H "Range: bytes=90000000-90000010"
curl -s -D "$WORK/hdrs" -o /dev/null --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" "$URL$DISK" -r 0-0
ETAG=$(tr -d '\r' <"$WORK/hdrs" | awk 'tolower($1) == "etag:" {print $2}')
check "strong ETag present" test -n "$ETAG" -a "${ETAG:0:2}" != 'W/'
check "Accept-Ranges: bytes" grep -qi '^accept-ranges: bytes' "$WORK/hdrs"
expect_status 206 "If-Range with the ETag honours Range" GET "$DISK" -H "Range: bytes=0-9" -H "If-Range: $ETAG"
expect_status 200 "If-Range with another ETag sends everything" GET "$DISK" -H "Range: bytes=0-9" -H 'If-Range: "other"'
curl -s -I --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" "$URL$DISK" | tr -d '\r' >"$WORK/hdrs"
check "HEAD gives Content-Length" grep -qi '^content-length: 83886080$' "$WORK/hdrs"

# --- sparse answers (Accept: application/vnd.vmexport.sparse): blocks of zeros left out ---
SPARSE=application/vnd.vmexport.sparse
# sparse_get WHAT START END [ACCEPT]: one ranged GET asking for the sparse encoding; the body
# decodes to exactly the disk's bytes and carries at most the data blocks.
sparse_get() {
    local what=$1 a=$2 b=$3 accept=${4:-$SPARSE}
    curl -s -D "$WORK/hdrs" -o "$WORK/body" --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" \
        -H "Accept: $accept" -H "Range: bytes=$a-$b" "$URL$DISK"
    tr -d '\r' <"$WORK/hdrs" >"$WORK/hdrs.txt"
    dd if="$WORK/root.at2" bs=1M skip="$a" count=$((b - a + 1)) iflag=skip_bytes,count_bytes status=none >"$WORK/want"
    if ! grep -qi "^content-type: $SPARSE\$" "$WORK/hdrs.txt" || ! grep -q '^HTTP/1.1 206' "$WORK/hdrs.txt" ||
        ! grep -qi "^content-range: bytes $a-$b/83886080\$" "$WORK/hdrs.txt"; then
        not_ok "$what: 206, sparse Content-Type and Content-Range: $(head -c 300 "$WORK/hdrs.txt")"
        return
    fi
    local out
    if out=$(/usr/bin/python3 "$VMEXPORT_ROOT/tests/tools/sparse_decode.py" "$WORK/body" $((b - a + 1)) "$WORK/got") &&
        cmp -s "$WORK/got" "$WORK/want"; then
        ok "$what: decodes to the disk's bytes ($out, body $(stat -c %s "$WORK/body") of $((b - a + 1)))"
    else
        not_ok "$what: sparse body does not decode to the disk's bytes: $out"
    fi
}
# the layout of root.img at snapshot 2, for the expected sizes below
nonzero4k() { # blocks of 4 KiB (disk-aligned) in [A, B] holding a non-zero byte
    /usr/bin/python3 -c '
import sys
a, b = int(sys.argv[2]), int(sys.argv[3])
f = open(sys.argv[1], "rb"); n = 0; pos = a
while pos <= b:
    e = min((pos // 4096 + 1) * 4096, b + 1); f.seek(pos)
    n += any(f.read(e - pos)); pos = e
print(n)' "$WORK/root.at2" "$1" "$2"
}
sparse_get "sparse range of 16 MiB" 0 $(((16 << 20) - 1))
blocks=$(nonzero4k 0 $(((16 << 20) - 1)))
body=$(stat -c %s "$WORK/body")
check "sparse body: the data blocks and their headers only ($blocks blocks of data, body $body)" \
    test "$body" -le $((blocks * 4096 + blocks * 16)) -a "$body" -lt $((16 << 20))
check "sparse answer says Vary: Accept" grep -qi '^vary: accept' "$WORK/hdrs.txt"
sparse_get "the sparse example of docs/api.md" 4190208 4202495
check "  one segment at 4096 of 8192 bytes (the first 4 KiB are zeros), as documented" \
    bash -c "[ \"\$(od -A n -t u8 -N 16 '$WORK/body' | xargs)\" = '4096 8192' ] && [ \$(stat -c %s '$WORK/body') = 8208 ]"
sparse_get "sparse range not aligned to 4 KiB" $(((4 << 20) - 1000)) $(((4 << 20) + 70000))
sparse_get "sparse range of one byte" 8192000 8192000
sparse_get "sparse range to the end" 83000000 83886079
sparse_get "sparse range with other types listed" $((4 << 20)) $(((5 << 20) - 1)) "application/octet-stream;q=0.5, $SPARSE;q=0.9"
# a range of zeros: an empty body
zero_at=$(/usr/bin/python3 -c '
import sys
f = open(sys.argv[1], "rb"); pos = 0
while True:
    b = f.read(1 << 20)
    if not b: print(-1); break
    if not any(b): print(pos); break
    pos += len(b)' "$WORK/root.at2")
if [ "$zero_at" -ge 0 ]; then
    sparse_get "sparse range of zeros" "$zero_at" $((zero_at + (1 << 20) - 1))
    check "a range of zeros has an empty body" test "$(stat -c %s "$WORK/body")" -eq 0
else
    not_ok "root.img at snapshot 2 has no MiB of zeros to test with"
fi
# HTTP/1.0 has no chunked encoding: the end of the connection ends the body.
curl -s --http1.0 -D "$WORK/hdrs" -o "$WORK/body" --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" \
    -H "Accept: $SPARSE" -H "Range: bytes=4190208-4202495" "$URL$DISK"
check "a sparse answer to HTTP/1.0: the same body, ended by closing the connection" \
    bash -c "grep -qi '^content-type: $SPARSE' '$WORK/hdrs' && grep -qi '^connection: close' '$WORK/hdrs' && [ \$(stat -c %s '$WORK/body') = 8208 ]"
for accept in "$SPARSE;q=0" "*/*" "application/*" "application/octet-stream"; do
    curl -s -D "$WORK/hdrs" -o "$WORK/body" --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" \
        -H "Accept: $accept" -H "Range: bytes=0-1048575" "$URL$DISK"
    check "Accept: $accept gives the plain bytes" bash -c "grep -qi '^content-type: application/octet-stream' '$WORK/hdrs' && cmp -s '$WORK/body' <(head -c 1048576 '$WORK/root.at2')"
done
curl -s -D "$WORK/hdrs" -o "$WORK/body" --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" \
    -H "Accept: $SPARSE" -H "Range: bytes=0-9,4194304-4194313" "$URL$DISK"
check "several ranges stay multipart/byteranges with Accept: $SPARSE" grep -qi '^content-type: multipart/byteranges' "$WORK/hdrs"
curl -s -D "$WORK/hdrs" -o "$WORK/body" --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" \
    -H "Accept: $SPARSE" "$URL$DISK"
check "a GET without Range stays the plain disk with Accept: $SPARSE" bash -c "grep -q '^HTTP/1.1 200' '$WORK/hdrs' && cmp -s '$WORK/body' '$WORK/root.at2'"
curl -s -I --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" -H "Accept: $SPARSE" \
    -H "Range: bytes=0-1048575" "$URL$DISK" | tr -d '\r' >"$WORK/hdrs"
check "HEAD of a range with Accept: $SPARSE: Content-Length of the range" grep -qi '^content-length: 1048576$' "$WORK/hdrs"
expect_status 404 "unknown disk is 404" GET "/api/v1/vms/web01/snapshots/$S2/disks/nope.img"

# --- VMware-style changed areas ---
CH=/api/v1/vms/web01/snapshots/$S2/disks/root.img/changes
expect_status 400 "changes without changeId is 400" GET "$CH"
expect_status 200 "changes with changeId=*" GET "$CH?changeId=*"
check "* lists allocated areas" jq -e '.startOffset == 0 and .length == 83886080 and (.changedArea | length > 0) and .changeId' "$WORK/body"
CID1=$(jq -r '.disks[] | select(.name == "root.img") | .change_id' "$WORK/snap1.json")
expect_status 200 "changes since snapshot 1's change ID" GET "$CH?changeId=$CID1"
check "changedArea covers write, discard and growth; zeroedArea the discard" \
    jq -e '.changedArea == [{"start":6291456,"length":1048576},{"start":8192000,"length":4096},{"start":78643200,"length":131072}] and .zeroedArea == [{"start":6291456,"length":1048576}]' "$WORK/body"
expect_status 200 "changes from a startOffset" GET "$CH?changeId=$CID1&startOffset=8000000"
check "startOffset skips earlier areas" jq -e '.startOffset == 8000000 and .changedArea[0].start == 8192000 and .length == 75886080' "$WORK/body"
expect_status 400 "a change ID of another disk is 400" GET "$CH?changeId=$(jq -r '.disks[] | select(.name == "data.raw") | .change_id' "$WORK/snap1.json")"
# zeroedInChanged=false: changedArea is the new data only, zeroedArea stays; true is the default.
expect_status 200 "changes with zeroedInChanged=false" GET "$CH?changeId=$CID1&zeroedInChanged=false"
check "  changedArea leaves the zeroed MiB out, zeroedArea has it" \
    jq -e '.changedArea == [{"start":8192000,"length":4096},{"start":78643200,"length":131072}] and .zeroedArea == [{"start":6291456,"length":1048576}] and .startOffset == 0 and .length == 83886080' "$WORK/body"
expect_status 200 "  from a startOffset inside the zeroed MiB" GET "$CH?changeId=$CID1&zeroedInChanged=false&startOffset=6815744"
check "  the zeroed area is clipped to it, the changed data follows" \
    jq -e '.changedArea == [{"start":8192000,"length":4096},{"start":78643200,"length":131072}] and .zeroedArea == [{"start":6815744,"length":524288}] and .length == 77070336' "$WORK/body"
api GET "$CH?changeId=$CID1" >/dev/null && cp "$WORK/body" "$WORK/changes-default"
expect_status 200 "changes with zeroedInChanged=true" GET "$CH?changeId=$CID1&zeroedInChanged=true"
check "  is the default answer" cmp -s "$WORK/body" "$WORK/changes-default"
api GET "$CH?changeId=*" >/dev/null && cp "$WORK/body" "$WORK/changes-all"
expect_status 200 "changeId=* with zeroedInChanged=false" GET "$CH?changeId=*&zeroedInChanged=false"
check "  lists the same data areas" cmp -s "$WORK/body" "$WORK/changes-all"
expect_status 400 "zeroedInChanged=maybe is 400" GET "$CH?changeId=$CID1&zeroedInChanged=maybe"
check "  naming the parameter" jq -e '.details | test("zeroedInChanged")' "$WORK/body"
expect_status 400 "startOffset past the end is 400" GET "$CH?changeId=*&startOffset=999999999999"

# --- delete, purge, orphans ---
expect_status 204 "DELETE a snapshot is 204" DELETE "/api/v1/vms/web01/snapshots/$S1/"
check "its files are gone" bash -c "! ls '$VMS/.vmexport-snapshots/web01/$S1' 2>/dev/null"
expect_status 404 "deleted snapshot is 404" GET "/api/v1/vms/web01/snapshots/$S1"
expect_status 404 "deleting it again is 404" DELETE "/api/v1/vms/web01/snapshots/$S1"
rm -rf "$VMS/db01"
expect_status 404 "the removed VM is gone" GET /api/v1/vms/db01
expect_status 200 "orphaned snapshots are listed" GET "/api/v1/snapshots?orphaned=true"
check "the orphan is db01's" jq -e --arg d "$D1" 'map(.id) == [$d]' "$WORK/body"
expect_status 200 "an orphan stays readable" GET "/api/v1/vms/db01/snapshots/$D1"
expect_status 204 "an orphan can be deleted" DELETE "/api/v1/vms/db01/snapshots/$D1"
expect_status 204 "purge all snapshots of a VM" DELETE /api/v1/vms/web01/snapshots
expect_status 200 "after purge" GET /api/v1/vms/web01/snapshots
check "no snapshots left" jq -e '. == []' "$WORK/body"
check "snapshot area empty" bash -c "[ -z \"\$(ls -A '$VMS/.vmexport-snapshots' 2>/dev/null)\" ]"

# --- metrics ---
TOKEN=x expect_status 401 "metrics need a valid token" GET /metrics
expect_status 200 "metrics" GET /metrics
check "metrics count requests by route and status" grep -q 'vmexport_http_requests_total{route="snapshot_create",status="201"} 3' "$WORK/body"
check "metrics count bytes served" grep -qE '^vmexport_bytes_served_total [1-9]' "$WORK/body"
check "metrics have snapshot latency" grep -q 'vmexport_snapshot_create_seconds_count 3' "$WORK/body"

stop_daemon
check "SIGTERM stops the daemon cleanly (exit 0)" test $? -eq 0
