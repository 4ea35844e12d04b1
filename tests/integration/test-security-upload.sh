#!/bin/bash
# Hostile upload clients and local users against vmexportd (issue 16, points 2, 3 and 22), over
# TLS on a real ext4 filesystem, on both /api/v1/transfers/{id} (token) and /images/{id} (the ID
# is the credential):
#   - Content-Ranges that are reversed ("bytes 4095-0/*"), reach 2^64-1 or lie past the disk, and
#     bodies one byte longer than their range (chunked and with Content-Length), in the middle of
#     the disk (the byte after the range, written before, stays) and at its end: each refused,
#     and the partial file keeps exactly the disk's size and the bytes written before;
#   - finalize refuses a partial file whose size is not the disk's;
#   - the partial file does not carry the transfer ID in its name and lies in a 0700 staging
#     directory; everything the daemon creates (catalog and its journals, keys, snapshots,
#     staging, VM directories, disks) is 0600/0700 although it was started with umask 000;
#     the log never holds a whole transfer ID; a damaged catalog record naming another file
#     that contains the ID does not make the next start delete that file.
source "$(dirname "$0")/lib.sh"
require_root
for tool in curl jq openssl sqlite3 od; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done

MIB=1048576
SIZE=$MIB
CA=$WORK/certs/ca.crt
STATE=$WORK/state
IDS=() # every transfer ID made, to look for in the log

make_fs ext4 64 FS || { not_ok "create ext4"; exit 1; }
VMS=$FS/vms
mkdir -p "$VMS/web01"
head -c $MIB /dev/urandom >"$VMS/web01/root.img"

PORT=$(free_port)
CONF=$WORK/vmexportd.conf
write_config "$CONF" "$PORT" "$STATE" "[provider.local]" "type = dir" "path = $VMS" ||
    { not_ok "write config"; exit 1; }
umask 000 # the daemon must not depend on the umask it is started with
start_daemon "$CONF" "$PORT" && ok "daemon starts with umask 000" || { not_ok "daemon starts"; exit 1; }
umask 022
login admin secret && ok "login" || { not_ok "login"; exit 1; }

# tcurl ARGS...: curl with the CA and, when TOKEN is set, the token.
tcurl() { curl -s --path-as-is --cacert "$CA" ${TOKEN:+-H "Authorization: Bearer $TOKEN"} "$@"; }

# new_upload VM DISK SIZE: POST an upload; sets ID (empty on failure) and PARTIAL (its partial
# file, as the catalog records it).
new_upload() {
    local got
    got=$(api POST "/api/v1/vms/$1/uploads" -d "{\"disk\":\"$2\",\"size\":$3,\"format\":\"raw\"}")
    ID=$(jq -r '.id // empty' "$WORK/body" 2>/dev/null)
    [ "$got" = 201 ] && [ -n "$ID" ] || return 1
    IDS+=("$ID")
    PARTIAL=$(sqlite3 "$STATE/catalog.db" "SELECT partial_path FROM uploads WHERE id = '$ID'")
    [ -f "$PARTIAL" ]
}

# put PATH CONTENT_RANGE FILE chunked|length: PUT the bytes of FILE, with chunked transfer
# encoding or a Content-Length; prints the status.
put() {
    local path=$1 range=$2 file=$3 mode=$4
    if [ "$mode" = chunked ]; then
        tcurl -X PUT -H "Content-Range: $range" -H 'Transfer-Encoding: chunked' -T - \
            -o "$WORK/body" -w '%{http_code}' "$URL$path" <"$file"
    else
        tcurl -X PUT -H "Content-Range: $range" --data-binary @"$file" \
            -o "$WORK/body" -w '%{http_code}' "$URL$path"
    fi
}

# expect_put WANT DESCRIPTION PUT-ARGS...: the status of put, and the partial file still has
# exactly the disk's size and the bytes of $EXPECTED.
expect_put() {
    local want=$1 what=$2 got size
    shift 2
    got=$(put "$@")
    size=$(stat -c %s "$PARTIAL")
    if [ "$got" != "$want" ]; then
        not_ok "$what (HTTP $got, want $want; partial file $size bytes): $(head -c 200 "$WORK/body")"
    elif [ "$size" != $SIZE ]; then
        not_ok "$what: HTTP $got, but the partial file grew to $size bytes"
    elif ! cmp -s "$PARTIAL" "$EXPECTED"; then
        not_ok "$what: HTTP $got, but the partial file's bytes changed: $(cmp "$PARTIAL" "$EXPECTED" 2>&1 | head -1)"
    else
        ok "$what (HTTP $got, partial file intact)"
    fi
}

# range_plus_one OFFSET LENGTH OUT: bytes OFFSET.. of $EXPECTED (what the range holds already)
# and one byte more that differs from the byte after the range.
range_plus_one() {
    local off=$1 len=$2 out=$3 next
    dd if="$EXPECTED" bs=64K iflag=skip_bytes,count_bytes skip="$off" count="$len" status=none >"$out"
    next=$(od -An -tu1 -j $((off + len)) -N1 "$EXPECTED" | tr -d ' ')
    printf "\\$(printf '%03o' $(((${next:-0} + 1) % 256)))" >>"$out"
}

# ---- point 2 and 22: ranges and bodies, on both route families ----
for family in api images; do
    EXPECTED=$WORK/expected-$family.img
    head -c $SIZE /dev/urandom >"$EXPECTED"
    new_upload sec "$family.img" $SIZE && ok "$family: upload of a 1 MiB disk" ||
        { not_ok "$family: upload: $(cat "$WORK/body")"; continue; }
    if [ $family = api ]; then P=/api/v1/transfers/$ID; else P=/images/$ID; SAVED=$TOKEN; TOKEN=""; fi
    got=$(put "$P" "bytes 0-$((SIZE - 1))/*" "$EXPECTED" length)
    check "$family: the whole disk written with one PUT ($got)" test "$got" = 200

    head -c $((2 * MIB)) /dev/urandom >"$WORK/2mib"
    head -c 100000 /dev/urandom >"$WORK/100k"
    expect_put 400 "$family: reversed 'bytes 4095-0/*', 2 MiB chunked, is 400" "$P" "bytes 4095-0/*" "$WORK/2mib" chunked
    expect_put 400 "$family: reversed 'bytes 4095-0/*', 4096 bytes with Content-Length, is 400" "$P" "bytes 4095-0/*" "$WORK/2mib" length
    expect_put 400 "$family: reversed 'bytes 1048000-10/*', 100 KB chunked, is 400" "$P" "bytes 1048000-10/*" "$WORK/100k" chunked
    expect_put 400 "$family: reversed 'bytes 1048000-10/*', 100 KB with Content-Length, is 400" "$P" "bytes 1048000-10/*" "$WORK/100k" length
    expect_put 400 "$family: reversed with the size, 'bytes 4095-0/$SIZE', is 400" "$P" "bytes 4095-0/$SIZE" "$WORK/100k" chunked
    printf 'ab' >"$WORK/2b"
    expect_put 400 "$family: reversed from 2^64-1, 'bytes 18446744073709551615-0/*', is 400" "$P" "bytes 18446744073709551615-0/*" "$WORK/2b" chunked
    expect_put 416 "$family: 'bytes 18446744073709551615-18446744073709551615/*' is 416" "$P" "bytes 18446744073709551615-18446744073709551615/*" "$WORK/2b" chunked
    expect_put 416 "$family: 'bytes 1048575-18446744073709551615/*' is 416" "$P" "bytes 1048575-18446744073709551615/*" "$WORK/100k" chunked
    expect_put 400 "$family: 'bytes 0-18446744073709551616/*' (2^64) is 400" "$P" "bytes 0-18446744073709551616/*" "$WORK/2b" chunked
    expect_put 416 "$family: 'bytes 1048576-1048577/*' (just past the end) is 416" "$P" "bytes 1048576-1048577/*" "$WORK/2b" length

    # One byte over, in the middle: the byte after the range was written by the PUT above.
    MID=$((256 * 1024 + 17))
    LEN=4096
    range_plus_one $MID $LEN "$WORK/over"
    expect_put 416 "$family: a chunked body one byte over a range in the middle is 416, the byte after it stays" "$P" "bytes $MID-$((MID + LEN - 1))/*" "$WORK/over" chunked
    expect_put 416 "$family: a Content-Length body one byte over a range in the middle is 416, the byte after it stays" "$P" "bytes $MID-$((MID + LEN - 1))/*" "$WORK/over" length
    # One byte over at the disk's end: the file must not grow.
    END=$((SIZE - LEN))
    dd if="$EXPECTED" bs=64K iflag=skip_bytes skip=$END status=none >"$WORK/over"
    printf 'x' >>"$WORK/over"
    expect_put 416 "$family: a chunked body one byte over a range at the disk's end is 416, the file does not grow" "$P" "bytes $END-$((SIZE - 1))/*" "$WORK/over" chunked
    expect_put 416 "$family: a Content-Length body one byte over a range at the disk's end is 416" "$P" "bytes $END-$((SIZE - 1))/*" "$WORK/over" length
    # A body one byte over its range when none is given: the whole disk and a byte more.
    cp "$EXPECTED" "$WORK/over" && printf 'x' >>"$WORK/over"
    got=$(tcurl -X PUT -H 'Transfer-Encoding: chunked' -T - -o "$WORK/body" -w '%{http_code}' "$URL$P" <"$WORK/over")
    check "$family: a chunked body without Content-Range one byte longer than the disk is 416 ($got)" test "$got" = 416
    check "$family: ... and the file does not grow" test "$(stat -c %s "$PARTIAL")" = $SIZE

    # What is still accepted: the last byte alone, and a range exactly at the end.
    dd if="$EXPECTED" bs=1 skip=$((SIZE - 1)) count=1 status=none >"$WORK/last"
    expect_put 200 "$family: the last byte alone, 'bytes 1048575-1048575/$SIZE', is 200" "$P" "bytes $((SIZE - 1))-$((SIZE - 1))/$SIZE" "$WORK/last" chunked

    got=$(tcurl -X POST -o "$WORK/body" -w '%{http_code}' "$URL$P/finalize")
    check "$family: finalize ($got)" test "$got" = 200
    check "$family: the disk holds exactly the bytes sent, at the disk's size" cmp "$VMS/sec/$family.img" "$EXPECTED"
    [ $family = images ] && TOKEN=$SAVED
done

# ---- finalize checks the partial file's size ----
EXPECTED=$WORK/expected-size.img
head -c $SIZE /dev/urandom >"$EXPECTED"
new_upload sec size.img $SIZE && ok "upload to finalize with a wrong size" || not_ok "upload: $(cat "$WORK/body")"
got=$(put "/api/v1/transfers/$ID" "bytes 0-$((SIZE - 1))/*" "$EXPECTED" length)
truncate -s $((SIZE + 4096)) "$PARTIAL" # grown behind the daemon's back
expect_status 500 "finalize of a partial file longer than the disk is refused" POST "/api/v1/transfers/$ID/finalize"
check "with the sizes in the message" jq -e --arg s "$((SIZE + 4096)) bytes, not the disk's $SIZE" '.details | contains($s)' "$WORK/body"
check "no disk is published" test ! -e "$VMS/sec/size.img"
truncate -s $((SIZE - 1)) "$PARTIAL"
expect_status 500 "finalize of a partial file shorter than the disk is refused" POST "/images/$ID/finalize"
check "no disk is published" test ! -e "$VMS/sec/size.img"
truncate -s $SIZE "$PARTIAL"
dd if="$EXPECTED" of="$PARTIAL" bs=1 skip=$((SIZE - 1)) seek=$((SIZE - 1)) count=1 conv=notrunc status=none
expect_status 200 "at the right size again, finalize works" POST "/api/v1/transfers/$ID/finalize"
check "and publishes exactly the bytes sent" cmp "$VMS/sec/size.img" "$EXPECTED"

# ---- point 3: the transfer ID is not where local users can read it ----
new_upload sec secret.img $SIZE && ok "an upload to look for its ID" || not_ok "upload: $(cat "$WORK/body")"
STAGING=$(dirname "$PARTIAL")
check "the partial file lies in the staging directory $VMS/.vmexport-staging" test "$STAGING" = "$VMS/.vmexport-staging"
check "the staging directory is 0700" test "$(stat -c %a "$STAGING")" = 700
check "the partial file is 0600" test "$(stat -c %a "$PARTIAL")" = 600
check "the partial file's name does not hold the ID" bash -c "! grep -qiF '${ID:0:8}' <<<'$(basename "$PARTIAL")'"
check "no name in the VM directories holds the ID" bash -c "! find '$VMS' -name '*${ID:0:8}*' | grep -q ."
chmod 755 "$STAGING" # as if opened up by hand: the next upload makes it private again
new_upload sec secret2.img $SIZE && ok "another upload" || not_ok "upload: $(cat "$WORK/body")"
check "the staging directory is 0700 again" test "$(stat -c %a "$STAGING")" = 700
expect_status 201 "a snapshot of web01" POST /api/v1/vms/web01/snapshots

# A damaged catalog record naming a file that is no partial file of the daemon's, though its
# name holds the upload's ID: the next start must leave it alone.
stop_daemon
check "daemon stops (its open uploads are cancelled)" test $? -eq 0
VICTIM_ID=0123456789abcdef0123456789abcdef
echo "precious" >"$VMS/web01/notes-$VICTIM_ID.txt"
sqlite3 "$STATE/catalog.db" "INSERT INTO uploads VALUES ('$VICTIM_ID', 'web01', 'x.img',
    '$VMS/web01/notes-$VICTIM_ID.txt', '$VMS/web01/x.img', 1, '2026-01-01T00:00:00Z')"
# A partial file of an earlier version (named after the ID, in the VM directory) is removed.
LEGACY_ID=fedcba9876543210fedcba9876543210
LEGACY=$VMS/web01/.vmexport-upload-$LEGACY_ID.partial
echo "half an upload" >"$LEGACY"
sqlite3 "$STATE/catalog.db" "INSERT INTO uploads VALUES ('$LEGACY_ID', 'web01', 'y.img',
    '$LEGACY', '$VMS/web01/y.img', 1, '2026-01-01T00:00:00Z')"
chmod 644 "$STATE/catalog.db" # as an earlier version left it
umask 000
start_daemon "$CONF" "$PORT" && ok "daemon restarts with umask 000" || { not_ok "restart"; exit 1; }
umask 022
check "a catalog left readable by others is made 0600 at the start" test "$(stat -c %a "$STATE/catalog.db")" = 600
check "the file named in the damaged record is left alone" grep -qx precious "$VMS/web01/notes-$VICTIM_ID.txt"
check "and the refusal is logged" grep -q "recorded partial file .*notes-.* is not named after the upload; left alone" "$WORK/daemon.log"
check "an earlier version's partial file is removed" test ! -e "$LEGACY"
check "no upload is recorded any more" test "$(sqlite3 "$STATE/catalog.db" 'SELECT count(*) FROM uploads')" = 0
login admin secret || not_ok "login after the restart"
new_upload sec last.img $SIZE && ok "an upload after the restart" || not_ok "upload: $(cat "$WORK/body")"

# Everything the daemon made, under umask 000: nothing for group or others.
created=$(find "$STATE" "$VMS" -mindepth 1 ! -path "$STATE/users" ! -path "$VMS/web01" \
    ! -path "$VMS/web01/root.img" ! -path "$VMS/web01/notes-$VICTIM_ID.txt" ! -path "$VMS/lost+found*")
diag "$(wc -l <<<"$created") files and directories made by the daemon"
for want in "$STATE/catalog.db" "$STATE/catalog.db-wal" "$STATE/catalog.db-shm" "$STATE/jwt.key" \
    "$VMS/.vmexport-staging" "$VMS/.vmexport-snapshots" "$VMS/sec" "$VMS/sec/api.img" "$PARTIAL"; do
    check "the daemon made $want" grep -qxF "$want" <<<"$created"
done
check "snapshot directories and files are among them" grep -q "^$VMS/.vmexport-snapshots/web01/.*/root.img$" <<<"$created"
loose=$(while read -r f; do
    m=$(stat -c %a "$f")
    if [ -d "$f" ]; then [ "$m" = 700 ] || echo "$m $f"; else [ "$m" = 600 ] || echo "$m $f"; fi
done <<<"$created")
if [ -z "$loose" ]; then ok "every file the daemon made is 0600 and every directory 0700"; else
    not_ok "made with other modes: $(tr '\n' ';' <<<"$loose")"; fi

# ---- a VM directory swapped for a symlink during an upload ----
# A local user who can write the VM root swaps the VM's directory for a link to somewhere else
# before the finalize: the disk must not be published through the link.
new_upload swap disk.img $SIZE && ok "an upload into VM swap" || not_ok "upload: $(cat "$WORK/body")"
head -c $SIZE /dev/urandom >"$WORK/swap.bin"
got=$(put "/api/v1/transfers/$ID" "bytes 0-$((SIZE - 1))/$SIZE" "$WORK/swap.bin" length)
check "its data is written (HTTP $got)" test "$got" = 200
mkdir -p "$FS/elsewhere" # on the same filesystem, so a rename through the link would work
mv "$VMS/swap" "$VMS/swap.moved"
ln -s "$FS/elsewhere" "$VMS/swap"
got=$(api POST "/api/v1/transfers/$ID/finalize")
check "the finalize through a symlinked VM directory is refused (HTTP $got)" test "$got" != 200
check "nothing is published where the link points" test ! -e "$FS/elsewhere/disk.img"
check "nor in the moved VM directory" test ! -e "$VMS/swap.moved/disk.img"
rm "$VMS/swap"
mv "$VMS/swap.moved" "$VMS/swap"
got=$(api POST "/api/v1/transfers/$ID/finalize")
check "once the directory is back the finalize succeeds (HTTP $got)" test "$got" = 200
check "and the disk holds the data" cmp -s "$VMS/swap/disk.img" "$WORK/swap.bin"

# ---- the log ----
check "the log names uploads by their IDs' first 8 characters" grep -q "upload ${IDS[0]:0:8} " "$WORK/daemon.log"
leaked=""
for id in "${IDS[@]}"; do grep -qF "$id" "$WORK/daemon.log" && leaked="$leaked $id"; done
check "the log holds none of the ${#IDS[@]} whole transfer IDs" test -z "$leaked"
