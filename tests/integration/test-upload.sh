#!/bin/bash
# vmexportd's upload API (restore to a host) on a real XFS filesystem, driven with curl as an
# ovirt-imageio client would: a new disk in a new VM written with parallel out-of-order
# Content-Range PUTs and a chunked PUT, zeroing, extents, OPTIONS and finalize (the disk then
# holds exactly the bytes sent); the same through /images/{id} without a token; every error
# status; cancel, idle expiry, and kill -9 in the middle of an upload.
source "$(dirname "$0")/lib.sh"
require_root
for tool in curl jq openssl sqlite3; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done

MIB=1048576
CA=$WORK/certs/ca.crt

make_fs xfs 400 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/web01"
truncate -s 8M "$VMS/web01/root.img"
echo "not a disk" >"$VMS/web01/notes.txt"

start_dir_daemon local "$VMS"

# tcurl ARGS...: curl with the CA and, when TOKEN is set, the token.
tcurl() { curl -s --path-as-is --cacert "$CA" ${TOKEN:+-H "Authorization: Bearer $TOKEN"} "$@"; }

# new_upload VM DISK SIZE: POST an upload; sets ID (empty on failure), body in $WORK/body.
new_upload() {
    local got
    got=$(api POST "/api/v1/vms/$1/uploads" -d "{\"disk\":\"$2\",\"size\":$3,\"format\":\"raw\"}")
    ID=$(jq -r '.id // empty' "$WORK/body" 2>/dev/null)
    [ "$got" = 201 ] && [ -n "$ID" ]
}

# put_range PATH FILE OFFSET LENGTH [CURL ARGS...]: PUT bytes OFFSET.. of FILE (the expected
# disk) with Content-Range and Content-Length; prints the status.
put_range() {
    local path=$1 file=$2 off=$3 len=$4; shift 4
    dd if="$file" bs=64K iflag=skip_bytes,count_bytes skip="$off" count="$len" status=none |
        tcurl -X PUT -H "Content-Range: bytes $off-$((off + len - 1))/*" --data-binary @- \
            -o /dev/null -w '%{http_code}' "$@" "$URL$path"
}

# partials: the partial files of the uploads in progress, in the provider's staging directory
# (tests/integration/test-security-upload.sh checks their names and modes).
partials() { find "$VMS/.vmexport-staging" -maxdepth 1 -name '*.partial' 2>/dev/null; }

# upload_rows: uploads recorded in the catalog.
upload_rows() { sqlite3 "$WORK/state/catalog.db" 'SELECT count(*) FROM uploads'; }

# ---- a new disk in a new VM, through /api/v1/transfers ----
SIZE=$((6 * MIB))
EXPECTED=$WORK/expected.img
head -c $((5 * MIB)) /dev/urandom >"$EXPECTED"
truncate -s $SIZE "$EXPECTED" # the last MiB is never written: it must read as zeros

if new_upload newvm disk0.img $SIZE; then ok "POST uploads is 201 Created"; else
    not_ok "POST uploads: $(cat "$WORK/body")"; exit 1; fi
check "upload fields" jq -e --arg id "$ID" '(.id | test("^[0-9a-f]{32}$")) and .url == "/api/v1/transfers/\($id)" and .imageio_url == "/images/\($id)" and .vm == "newvm" and .disk == "disk0.img" and .size == 6291456 and (.expires_at | test("^[0-9-]+T[0-9:]+Z$"))' "$WORK/body"
T=/api/v1/transfers/$ID
check "the VM directory was created" test -d "$VMS/newvm"
check "a partial file of the disk's size" test "$(stat -c %s "$(partials)")" = $SIZE
check "the partial file is sparse" test "$(stat -c %b "$(partials)")" -eq 0
check "the upload is recorded in the catalog" test "$(upload_rows)" = 1
expect_status 200 "the new VM is listed during the upload" GET /api/v1/vms/newvm
check "the partial file is not a disk" jq -e '.disks == []' "$WORK/body"

# Four 1 MiB chunks out of order, in parallel.
pids=()
for i in 3 1 0 2; do
    put_range "$T" "$EXPECTED" $((i * MIB)) $MIB >"$WORK/put.$i" &
    pids+=($!)
done
wait "${pids[@]}" # not a bare wait: the daemon is a child too
all=""
for i in 0 1 2 3; do all="$all $(cat "$WORK/put.$i")"; done
if [ "$all" = " 200 200 200 200" ]; then ok "4 parallel out-of-order Content-Range PUTs are 200"; else
    not_ok "parallel PUTs:$all"; fi

# The fifth MiB with chunked transfer encoding, from a pipe.
got=$(dd if="$EXPECTED" bs=64K iflag=skip_bytes,count_bytes skip=$((4 * MIB)) count=$MIB status=none |
    tcurl -X PUT -H 'Transfer-Encoding: chunked' -H "Content-Range: bytes $((4 * MIB))-$((5 * MIB - 1))/$SIZE" \
        -T - -o "$WORK/body" -w '%{http_code}' "$URL$T")
if [ "$got" = 200 ]; then ok "chunked PUT from a pipe is 200"; else not_ok "chunked PUT: $got $(cat "$WORK/body")"; fi
check "PUT answers {}" jq -e '. == {}' "$WORK/body"

# Zero 64 KiB that held data, as imageio clients do for zero areas.
ZOFF=$((MIB + 131072))
expect_status 200 "PATCH zero" PATCH "$T" -d "{\"op\":\"zero\",\"offset\":$ZOFF,\"size\":65536,\"flush\":false}"
dd if=/dev/zero of="$EXPECTED" bs=64K seek=$((ZOFF / 65536)) count=1 conv=notrunc status=none
expect_status 200 "PATCH flush" PATCH "$T" -d '{"op":"flush"}'
expect_status 400 "PATCH with an unknown op is 400" PATCH "$T" -d '{"op":"copy"}'
expect_status 400 "PATCH without a body is 400" PATCH "$T"
expect_status 416 "PATCH zero beyond the end is 416" PATCH "$T" -d "{\"op\":\"zero\",\"offset\":$((SIZE - 10)),\"size\":11}"
expect_status 400 "PATCH zero of 0 bytes is 400" PATCH "$T" -d '{"op":"zero","offset":0,"size":0}'

expect_status 200 "GET extents" GET "$T/extents"
cp "$WORK/body" "$WORK/extents.json"
check "extents cover the whole disk, contiguous" jq -e --argjson s $SIZE 'reduce .[] as $e ({pos: 0, ok: true}; {pos: ($e.start + $e.length), ok: (.ok and $e.start == .pos)}) | .ok and .pos == $s' "$WORK/extents.json"
check "extents have imageio's fields" jq -e 'all(.[]; has("start") and has("length") and (.zero | type == "boolean") and (.hole | type == "boolean"))' "$WORK/extents.json"
check "the zeroed range is zero and a hole" jq -e --argjson o $ZOFF 'any(.[]; .start <= $o and .start + .length >= $o + 65536 and .zero and .hole)' "$WORK/extents.json"
check "written data is not zero" jq -e '.[0].start == 0 and .[0].zero == false and .[0].hole == false' "$WORK/extents.json"
check "the never-written last MiB is zero and a hole" jq -e --argjson s $SIZE '.[-1] | .zero and .hole and .start <= $s - 1048576 and .start + .length == $s' "$WORK/extents.json"
expect_status 200 "GET extents?context=zero" GET "$T/extents?context=zero"
check "context=zero gives the same extents" cmp -s "$WORK/body" "$WORK/extents.json"
expect_status 400 "GET extents?context=dirty is 400" GET "$T/extents?context=dirty"

curl -s --cacert "$CA" -H "Authorization: Bearer $TOKEN" -X OPTIONS -D "$WORK/hdrs" -o "$WORK/body" "$URL$T"
check "OPTIONS is 200" grep -q '^HTTP/1.1 200' "$WORK/hdrs"
check "OPTIONS Allow header" grep -qi '^allow: OPTIONS, GET, PUT, PATCH, POST, DELETE' "$WORK/hdrs"
check "OPTIONS body as imageio's" jq -e '.features == ["extents","zero","flush"] and .max_readers == 1 and .max_writers == 8 and .unix_socket == null' "$WORK/body"

expect_status 200 "finalize" POST "$T/finalize"
check "finalize answers vm, disk, path, size" jq -e --arg p "$VMS/newvm/disk0.img" '.vm == "newvm" and .disk == "disk0.img" and .path == $p and .size == 6291456' "$WORK/body"
cached=$(fincore --bytes --noheadings --output RES "$VMS/newvm/disk0.img" | tr -d ' ')
check "the uploaded disk is not left in the host's page cache ($cached bytes)" test "$cached" -lt 65536
expect_status 200 "GET /vms/newvm" GET /api/v1/vms/newvm
check "the disk is listed with its size" jq -e '.disks == [.disks[0]] and .disks[0].name == "disk0.img" and .disks[0].size == 6291456' "$WORK/body"
check "the disk holds exactly the bytes uploaded" cmp "$VMS/newvm/disk0.img" "$EXPECTED"
check "no partial file is left" test -z "$(partials)"
check "the catalog record is gone" test "$(upload_rows)" = 0
expect_status 404 "PUT after finalize is 404" PUT "$T" -H "Content-Range: bytes 0-3/*" --data-binary abcd
expect_status 404 "PATCH after finalize is 404" PATCH "$T" -d '{"op":"flush"}'
expect_status 404 "finalize again is 404" POST "$T/finalize"
expect_status 404 "DELETE after finalize is 404" DELETE "$T"
expect_status 201 "a snapshot of the uploaded VM works" POST /api/v1/vms/newvm/snapshots

# ---- the same through /images/{id}, without a token ----
SIZE2=$((2 * MIB + 12345))
EXPECTED2=$WORK/expected2.img
head -c $SIZE2 /dev/urandom >"$EXPECTED2"
new_upload newvm disk1.raw $SIZE2 && ok "second upload into the now existing VM" || not_ok "second upload: $(cat "$WORK/body")"
IMG=/images/$ID
SAVED=$TOKEN
TOKEN=""
got=$(put_range "$IMG" "$EXPECTED2" $MIB $((SIZE2 - MIB)))
got="$got $(put_range "$IMG" "$EXPECTED2" 0 $MIB)"
if [ "$got" = "200 200" ]; then ok "/images PUTs without a token are 200"; else not_ok "/images PUTs: $got"; fi
expect_status 200 "/images OPTIONS without a token" OPTIONS "$IMG"
expect_status 200 "/images extents without a token" GET "$IMG/extents"
check "/images extents: all data" jq -e --argjson s $SIZE2 'map(select(.zero == false) | .length) | add == $s' "$WORK/body"
expect_status 405 "GET /images/{id} is 405" GET "$IMG"
expect_status 404 "/images of an unknown transfer is 404" PUT /images/0123456789abcdef0123456789abcdef -H "Content-Range: bytes 0-3/*" --data-binary abcd
expect_status 404 "/api/v1/images is not a route" OPTIONS "/api/v1/images/$ID"
expect_status 401 "/api/v1/transfers/{id} without a token is 401" OPTIONS "/api/v1/transfers/$ID"
expect_status 401 "PUT /api/v1/transfers/{id} without a token is 401" PUT "/api/v1/transfers/$ID" -H "Content-Range: bytes 0-3/*" --data-binary abcd
expect_status 401 "POST uploads without a token is 401" POST /api/v1/vms/newvm/uploads -d '{"disk":"x.img","size":1}'
expect_status 200 "/images finalize without a token" POST "$IMG/finalize"
TOKEN=$SAVED
check "the /images upload holds exactly the bytes sent" cmp "$VMS/newvm/disk1.raw" "$EXPECTED2"

# ---- one long PUT: its writeback runs behind it, every 32 MiB, not only at its end ----
SIZE3=$((80 * MIB))
EXPECTED3=$WORK/expected3.img
head -c $SIZE3 /dev/urandom >"$EXPECTED3"
new_upload newvm disk2.raw $SIZE3 && ok "an 80 MiB upload" || not_ok "80 MiB upload: $(cat "$WORK/body")"
got=$(put_range "/api/v1/transfers/$ID" "$EXPECTED3" 0 $SIZE3)
check "one 80 MiB PUT is 200 ($got)" test "$got" = 200
cached=$(fincore --bytes --noheadings --output RES "$(partials)" | tr -d ' ')
check "at most its last 32 MiB stay in the page cache after the PUT ($cached bytes)" test "$cached" -le $((32 * MIB))
expect_status 200 "finalize the 80 MiB upload" POST "/api/v1/transfers/$ID/finalize"
cached=$(fincore --bytes --noheadings --output RES "$VMS/newvm/disk2.raw" | tr -d ' ')
check "none of it after the finalize ($cached bytes)" test "$cached" -lt 65536
check "the 80 MiB upload holds exactly the bytes sent" cmp "$VMS/newvm/disk2.raw" "$EXPECTED3"
rm -f "$EXPECTED3"

# ---- refused uploads ----
expect_status 409 "uploading over an existing disk is 409" POST /api/v1/vms/web01/uploads -d '{"disk":"root.img","size":1048576}'
expect_status 409 "uploading over a just-uploaded disk is 409" POST /api/v1/vms/newvm/uploads -d '{"disk":"disk0.img","size":1048576}'
mkdir "$VMS/web01/dir.img" # a name taken by something that is not a disk
expect_status 409 "a name taken by a directory is 409" POST /api/v1/vms/web01/uploads -d '{"disk":"dir.img","size":1}'
rmdir "$VMS/web01/dir.img"
new_upload web01 data.img $MIB && ok "upload of a new disk of an existing VM" || not_ok "new disk of web01: $(cat "$WORK/body")"
D=$ID
expect_status 409 "a second concurrent upload of the same disk is 409" POST /api/v1/vms/web01/uploads -d '{"disk":"data.img","size":1048576}'
check "the 409 does not reveal the other transfer's ID" bash -c "! grep -q '$D' '$WORK/body'"
for bad in '../x.img' 'a/b.img' 'notes.txt' '.hidden.img' 'disk' ''; do
    expect_status 400 "disk name '$bad' is 400" POST /api/v1/vms/web01/uploads -d "{\"disk\":\"$bad\",\"size\":1048576}"
done
expect_status 400 "a hidden VM name is 400" POST /api/v1/vms/.vm/uploads -d '{"disk":"a.img","size":1048576}'
expect_status 400 "size 0 is 400" POST /api/v1/vms/web01/uploads -d '{"disk":"z.img","size":0}'
expect_status 400 "negative size is 400" POST /api/v1/vms/web01/uploads -d '{"disk":"z.img","size":-1}'
expect_status 400 "size 2^62 + 1 is 400" POST /api/v1/vms/web01/uploads -d '{"disk":"z.img","size":4611686018427387905}'
expect_status 400 "format qcow2 is 400" POST /api/v1/vms/web01/uploads -d '{"disk":"z.img","size":1048576,"format":"qcow2"}'
expect_status 400 "a body that is not JSON is 400" POST /api/v1/vms/web01/uploads -d 'disk=z.img'
expect_status 400 "an unknown provider is 400" POST /api/v1/vms/vmx/uploads -d '{"disk":"z.img","size":1,"provider":"nope"}'
check "refused uploads left nothing behind (only data.img's partial file, no new VM)" \
    test "$(partials | wc -l)$(ls -A "$VMS" | grep -v -e '^newvm$' -e '^web01$' -e '^.vmexport-snapshots$' -e '^.vmexport-staging$')" = 1

# ---- writes refused ----
DT=/api/v1/transfers/$D
expect_status 404 "an unknown transfer is 404" PUT /api/v1/transfers/nope -H "Content-Range: bytes 0-3/*" --data-binary abcd
expect_status 404 "an unknown transfer's extents are 404" GET /api/v1/transfers/0123456789abcdef0123456789abcdef/extents
curl -s --cacert "$CA" -H "Authorization: Bearer $TOKEN" -X PUT -H "Content-Range: bytes $MIB-$((MIB + 3))/*" \
    --data-binary abcd -D "$WORK/hdrs" -o "$WORK/body" "$URL$DT"
check "a range beyond the end is 416" grep -q '^HTTP/1.1 416' "$WORK/hdrs"
check "416 tells the size in Content-Range" grep -qi "^content-range: bytes \*/$MIB" "$WORK/hdrs"
expect_status 416 "a body longer than its range is 416" PUT "$DT" -H "Content-Range: bytes 0-3/*" --data-binary abcdef
expect_status 416 "a chunked body longer than its range is 416" PUT "$DT" -H "Content-Range: bytes 0-3/*" -H 'Transfer-Encoding: chunked' --data-binary abcdef
expect_status 400 "a body shorter than its range is 400" PUT "$DT" -H "Content-Range: bytes 0-7/*" --data-binary abcd
expect_status 416 "a Content-Range for another size is 416" PUT "$DT" -H "Content-Range: bytes 0-3/999" --data-binary abcd
expect_status 400 "a malformed Content-Range is 400" PUT "$DT" -H "Content-Range: bytes=0-3" --data-binary abcd
expect_status 416 "a body larger than the disk without Content-Range is 416" PUT "$DT" --data-binary @"$EXPECTED2"

# A slow writer (about 4 s) holds bytes 0..393215; an overlapping writer is refused meanwhile,
# a disjoint one works in parallel, and finalize waits for the writes to end.
head -c $MIB /dev/urandom >"$WORK/expected3.img"
SLOW=$((384 * 1024))
put_range "$DT" "$WORK/expected3.img" 0 $SLOW --limit-rate 100K >"$WORK/slow.status" &
SLOW_PID=$!
sleep 1
got=$(put_range "$DT" "$WORK/expected3.img" 65536 65536)
if [ "$got" = 409 ]; then ok "an overlapping concurrent writer is 409"; else not_ok "overlapping writer: $got"; fi
got=$(put_range "$DT" "$WORK/expected3.img" $SLOW $((MIB - SLOW)))
if [ "$got" = 200 ]; then ok "a disjoint writer works in parallel"; else not_ok "disjoint writer: $got"; fi
expect_status 409 "finalize during a write is 409" POST "$DT/finalize"
expect_status 409 "zeroing under a write in progress is 409" PATCH "$DT" -d '{"op":"zero","offset":0,"size":4096}'
wait $SLOW_PID
if [ "$(cat "$WORK/slow.status")" = 200 ]; then ok "the slow writer finishes with 200"; else
    not_ok "slow writer: $(cat "$WORK/slow.status")"; fi
expect_status 200 "finalize after the writes" POST "$DT/finalize"
check "web01/data.img holds the bytes of both writers" cmp "$VMS/web01/data.img" "$WORK/expected3.img"

# ---- cancel ----
new_upload web01 cancelled.img $MIB && ok "upload to cancel" || not_ok "upload to cancel"
got=$(put_range "/api/v1/transfers/$ID" "$WORK/expected3.img" 0 4096)
check "a partial file exists before cancel" test -n "$(partials)"
expect_status 204 "DELETE cancels" DELETE "/api/v1/transfers/$ID"
check "cancel removed the partial file" test -z "$(partials)"
check "cancel removed no disk" test ! -e "$VMS/web01/cancelled.img"
check "cancel removed the catalog record" test "$(upload_rows)" = 0
expect_status 404 "PUT after cancel is 404" PUT "/api/v1/transfers/$ID" -H "Content-Range: bytes 0-3/*" --data-binary abcd
expect_status 404 "cancel again is 404" DELETE "/images/$ID"

# ---- metrics ----
expect_status 200 "metrics" GET /metrics
check "metrics count bytes uploaded" grep -qE '^vmexport_bytes_uploaded_total [1-9]' "$WORK/body"
check "metrics count upload routes" grep -q 'vmexport_http_requests_total{route="transfer_put",status="200"}' "$WORK/body"
check "metrics count /images routes" grep -q 'vmexport_http_requests_total{route="image_finalize",status="200"}' "$WORK/body"

# ---- idle expiry ----
stop_daemon
check "daemon stops cleanly" test $? -eq 0
write_config "$WORK/idle.conf" "$PORT" "$WORK/state" "[provider.local]" "type = dir" "path = $VMS" \
    "[upload]" "idle_timeout = 2" || not_ok "write idle config"
start_daemon "$WORK/idle.conf" "$PORT" && ok "daemon starts with idle_timeout = 2" || { not_ok "restart"; exit 1; }
new_upload web01 idle.img $MIB && ok "upload to leave idle" || not_ok "upload to leave idle"
got=$(put_range "/images/$ID" "$WORK/expected3.img" 0 65536)
check "partial file before expiry" test -n "$(partials)"
sleep 4
expect_status 404 "an idle transfer expires (404)" PUT "/images/$ID" -H "Content-Range: bytes 0-3/*" --data-binary abcd
check "expiry removed the partial file" test -z "$(partials)"
check "expiry removed the catalog record" test "$(upload_rows)" = 0
check "expiry is logged" grep -q "upload ${ID:0:8} .*expired" "$WORK/daemon.log"

# ---- kill -9 in the middle of an upload, restart ----
new_upload crashvm disk.img $MIB && ok "upload into a new VM before the crash" || not_ok "upload before crash"
CRASH_ID=$ID
put_range "/images/$ID" "$WORK/expected3.img" 0 $MIB --limit-rate 100K >/dev/null &
CURL_PID=$!
sleep 1
check "the partial file exists mid-upload" test -n "$(partials)"
exec 3>&2 2>/dev/null # no "Killed" notice from bash
kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" "$CURL_PID"
exec 2>&3 3>&-
start_daemon "$CONF" "$PORT" && ok "daemon restarts after kill -9" || { not_ok "restart after kill -9"; exit 1; }
check "no partial file after the restart" test -z "$(partials)"
check "no catalog record after the restart" test "$(upload_rows)" = 0
check "the cleanup is logged" grep -q "upload ${CRASH_ID:0:8} .*interrupted by a restart: removed" "$WORK/daemon.log"
expect_status 200 "the VM is there" GET /api/v1/vms/crashvm
check "with no disk" jq -e '.disks == []' "$WORK/body"
expect_status 404 "the old transfer is gone" PUT "/images/$CRASH_ID" -H "Content-Range: bytes 0-3/*" --data-binary abcd
new_upload crashvm disk.img $MIB && ok "a fresh upload of the same disk" || not_ok "fresh upload: $(cat "$WORK/body")"
got=$(put_range "/images/$ID" "$WORK/expected3.img" 0 $MIB)
if [ "$got" = 200 ]; then ok "fresh upload PUT"; else not_ok "fresh upload PUT: $got"; fi
expect_status 200 "fresh upload finalize" POST "/images/$ID/finalize"
check "the retried disk holds exactly the bytes sent" cmp "$VMS/crashvm/disk.img" "$WORK/expected3.img"

# ---- an upload still open at a clean stop is removed ----
new_upload web01 open-at-stop.img $MIB && ok "upload left open" || not_ok "upload left open"
stop_daemon
check "daemon stops cleanly with an upload open" test $? -eq 0
check "the stop removed the partial file" test -z "$(partials)"
check "the stop removed the catalog record" test "$(upload_rows)" = 0
