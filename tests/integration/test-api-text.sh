#!/bin/bash
# vmexportd over TLS on XFS: names that are not UTF-8 (a VM directory named with the bytes
# \xff\xfe, a disk file named d\xff.img, a catalog entry from an older version, a query
# argument) never give invalid JSON or a dropped connection; boolean query parameters take Go's
# strconv.ParseBool spellings and nothing else; Range requests at and past the end of a
# 1000-byte disk; compareTo lists zeroed ranges in chunks (merged with a changed range they
# touch) unless zeroedInChunks=false.
source "$(dirname "$0")/lib.sh"
require_root

make_fs xfs 320 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
BAD_VM=$'\xff\xfe'
mkdir -p "$VMS/good" "$VMS/$BAD_VM" "$VMS/mixed"
head -c 1000 /dev/urandom >"$VMS/good/small.img" # not a multiple of any block size
truncate -s 1M "$VMS/$BAD_VM/root.img"
truncate -s 1M "$VMS/mixed/ok.img"
truncate -s 1M "$VMS/mixed/d"$'\xff'".img"
sync
start_dir_daemon local "$VMS"

# answered_json WHAT STATUS_WANT METHOD PATH [CURL ARGS...]: the request is answered (no dropped
# connection), with the wanted status and a body that is valid UTF-8 (iconv) and JSON (jq).
# Every body is kept for one more check by Python's json.loads at the end.
mkdir -p "$WORK/bodies"
answered_json() {
    local what=$1 want=$2 got; shift 2
    : >"$WORK/body"
    got=$(api "$@")
    cp "$WORK/body" "$WORK/bodies/$_tap_n.json"
    if [ "$got" != "$want" ]; then
        not_ok "$what: HTTP $got, want $want (000: the connection was dropped): $(head -c 200 "$WORK/body" | od -c | head -3)"
    elif ! iconv -f UTF-8 -t UTF-8 "$WORK/body" >/dev/null 2>&1 || ! jq -e . "$WORK/body" >/dev/null 2>&1; then
        not_ok "$what: the body is not valid UTF-8 JSON: $(head -c 200 "$WORK/body" | od -c | head -3)"
    else
        ok "$what (HTTP $got, valid JSON)"
    fi
}

# ---- names that are not UTF-8 ----
answered_json "GET /vms with a VM named \\xff\\xfe" 200 GET /api/v1/vms
check "only the VMs whose names are all UTF-8 are listed" jq -e 'map(.name) | sort == ["good"]' "$WORK/body"
check "the daemon log names the VM it left out" grep -qF "VM '"$'\xef\xbf\xbd\xef\xbf\xbd'"': its name is not UTF-8" "$WORK/daemon.log"
check "and the VM whose disk name is not UTF-8" grep -q "VM 'mixed': the name or path of a disk is not UTF-8" "$WORK/daemon.log"
answered_json "GET /vms/%ff%fe is a JSON 400" 400 GET /api/v1/vms/%ff%fe
answered_json "GET /vms/%ff%fe/ (trailing slash) is a JSON 400" 400 GET /api/v1/vms/%ff%fe/
answered_json "POST /vms/%ff%fe/snapshots is a JSON 400" 400 POST /api/v1/vms/%ff%fe/snapshots
check "no snapshot was taken of it" test "$(sqlite3 "$WORK/state/catalog.db" 'SELECT count(*) FROM snapshots')" = 0
answered_json "GET /vms/%ff%fe/snapshots is a JSON 400" 400 GET /api/v1/vms/%ff%fe/snapshots
answered_json "a truncated sequence (%e2%82) in a disk ID is a JSON 400" 400 GET /api/v1/vms/good/snapshots/x/disks/%e2%82
answered_json "an overlong '/' (%c0%af) is a JSON 400" 400 GET /api/v1/vms/good%c0%af..
answered_json "GET /vms/mixed (a disk name is not UTF-8) is a JSON 404" 404 GET /api/v1/vms/mixed
answered_json "POST /vms/mixed/snapshots is a JSON 404" 404 POST /api/v1/vms/mixed/snapshots
answered_json "UTF-8 that is not ASCII is a plain unknown VM" 404 GET /api/v1/vms/caf%c3%a9
check "and the details quote it" jq -e '.details == "VM '"'"'café'"'"' not found"' "$WORK/body"

answered_json "snapshot of the good VM" 201 POST /api/v1/vms/good/snapshots
S1=$(jq -r .id "$WORK/body")
answered_json "a query argument that is not UTF-8 (compareTo=%ff%fe) is quoted in a JSON 404" 404 GET "/api/v1/vms/good/snapshots/$S1?compareTo=%ff%fe"
check "with U+FFFD for the bad bytes" jq -e '.details == "compareTo snapshot '"'"'\ufffd\ufffd'"'"' not found"' "$WORK/body"

# A catalog entry written by an older vmexportd, which took snapshots of such VMs.
sqlite3 "$WORK/state/catalog.db" "
  INSERT INTO snapshots(id, vm_id, provider, created_at, parent_id, status)
    VALUES ('legacy-1', CAST(X'fffe' AS TEXT), 'local', '2026-01-01T00:00:00Z', NULL, 'ready');
  INSERT INTO snapshot_disks(snapshot_id, idx, name, path, parent_path, repo_mountpoint, change_id, mode, size)
    VALUES ('legacy-1', 0, CAST(X'64ff2e696d67' AS TEXT), CAST(X'2f6e6f2f64ff2e696d67' AS TEXT),
            CAST(X'2f6e6f2f64ff' AS TEXT), '/no', 'legacy-1-0', 'reflink', 1048576);" ||
    not_ok "insert a legacy catalog entry"
answered_json "GET /snapshots?chunks=false with a legacy entry named \\xff\\xfe" 200 GET "/api/v1/snapshots?chunks=false"
check "the legacy entry is there, its bad bytes as U+FFFD" jq -e 'any(.[]; .id == "legacy-1" and .vm_id == "\ufffd\ufffd" and .disks[0].name == "d\ufffd.img")' "$WORK/body"
answered_json "GET /snapshots?orphaned=true" 200 GET "/api/v1/snapshots?orphaned=true&chunks=false"
check "the legacy entry is an orphan, the good VM's snapshot is not" jq -e 'map(.id) == ["legacy-1"]' "$WORK/body"

# ---- boolean query parameters: strconv.ParseBool ----
SNAP=/api/v1/vms/good/snapshots/$S1
for v in 1 t T TRUE true True; do
    answered_json "chunks=$v" 200 GET "$SNAP?chunks=$v"
    check "chunks=$v lists chunks" jq -e '.disks[0] | has("chunks")' "$WORK/body"
done
for v in 0 f F FALSE false False; do
    answered_json "chunks=$v" 200 GET "$SNAP?chunks=$v"
    check "chunks=$v lists none" jq -e '.disks[0] | has("chunks") | not' "$WORK/body"
done
answered_json "chunks= (empty) is the default" 200 GET "$SNAP?chunks="
check "chunks= lists chunks" jq -e '.disks[0] | has("chunks")' "$WORK/body"
for v in yes no y tRUE FaLse 2 -1 on %20true true%20; do
    answered_json "chunks=$v is 400" 400 GET "$SNAP?chunks=$v"
    check "chunks=$v: the details name the parameter" jq -e '.details | startswith("query parameter '"'"'chunks'"'"' takes a boolean")' "$WORK/body"
done
answered_json "squashChunks=F" 200 GET "$SNAP?squashChunks=F"
answered_json "squashChunks=nope is 400" 400 GET "$SNAP?squashChunks=nope"
answered_json "zeroedInChunks=maybe is 400" 400 GET "$SNAP?compareTo=$S1&zeroedInChunks=maybe"
answered_json "orphaned=T on /snapshots" 200 GET "/api/v1/snapshots?orphaned=T&chunks=0"
check "orphaned=T: the orphans only" jq -e 'map(.id) == ["legacy-1"]' "$WORK/body"
answered_json "orphaned=F on /snapshots" 200 GET "/api/v1/snapshots?orphaned=F&chunks=0"
check "orphaned=F: every snapshot" jq -e 'map(.id) | sort == (["legacy-1", "'"$S1"'"] | sort)' "$WORK/body"
answered_json "orphaned=x is 400" 400 GET "/api/v1/snapshots?orphaned=x"
before=$(sqlite3 "$WORK/state/catalog.db" 'SELECT count(*) FROM snapshots')
answered_json "POST snapshots?chunks=bad is 400" 400 POST "/api/v1/vms/good/snapshots?chunks=bad"
check "and takes no snapshot" test "$(sqlite3 "$WORK/state/catalog.db" 'SELECT count(*) FROM snapshots')" = "$before"
answered_json "POST snapshots?chunks=f" 201 POST "/api/v1/vms/good/snapshots?chunks=f"
check "POST snapshots?chunks=f lists no chunks" jq -e '.disks[0] | has("chunks") | not' "$WORK/body"
# imageio's flush takes y/n and the same booleans.
answered_json "upload of a 4 KiB disk" 201 POST /api/v1/vms/newvm/uploads -d '{"disk":"u.img","size":4096,"format":"raw"}'
T=/api/v1/transfers/$(jq -r .id "$WORK/body")
head -c 4096 /dev/urandom >"$WORK/u.img"
for v in T 0 y n ""; do
    got=$(api PUT "$T?flush=$v" -H "Content-Range: bytes 0-4095/*" --data-binary @"$WORK/u.img")
    [ "$got" = 200 ] || [ "$got" = 204 ] && ok "PUT ?flush=$v is accepted (HTTP $got)" ||
        not_ok "PUT ?flush=$v: HTTP $got $(head -c 200 "$WORK/body")"
done
answered_json "PUT ?flush=yes is 400" 400 PUT "$T?flush=yes" -H "Content-Range: bytes 0-4095/*" --data-binary @"$WORK/u.img"

# ---- Range at the end of a 1000-byte disk ----
DISK=$SNAP/disks/small.img
range_case() { # WHAT RANGE WANT_CONTENT_RANGE FIRST LAST
    local what=$1 range=$2 want=$3 first=$4 last=$5 hdr
    hdr=$(curl -s --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" -H "Range: $range" \
        -D - -o "$WORK/part" -w '%{http_code}' "$URL$DISK" | tr -d '\r')
    check "$what: 206" grep -qx 206 <<<"${hdr##*$'\n'}"
    check "$what: Content-Range: $want" grep -qix "content-range: $want" <<<"$hdr"
    check "$what: the body is bytes $first-$last of the disk" \
        cmp -s "$WORK/part" <(tail -c +$((first + 1)) "$VMS/good/small.img" | head -c $((last - first + 1)))
}
range_case "bytes=10-999 (end = size - 1)" "bytes=10-999" "bytes 10-999/1000" 10 999
range_case "bytes=10-1000 (end = size)" "bytes=10-1000" "bytes 10-999/1000" 10 999
range_case "bytes=10-1001 (end past the size)" "bytes=10-1001" "bytes 10-999/1000" 10 999
range_case "bytes=999-999 (the last byte)" "bytes=999-999" "bytes 999-999/1000" 999 999
range_case "bytes=-1 (suffix, the last byte)" "bytes=-1" "bytes 999-999/1000" 999 999
hdr=$(curl -s --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" -H "Range: bytes=1000-1000" \
    -D - -o "$WORK/part" -w '%{http_code}' "$URL$DISK" | tr -d '\r')
check "bytes=1000-1000 (starts at the size): 416" grep -qx 416 <<<"${hdr##*$'\n'}"
check "bytes=1000-1000: Content-Range: bytes */1000" grep -qix 'content-range: bytes \*/1000' <<<"$hdr"

# ---- compareTo: zeroed ranges in chunks, merged with a changed range they touch ----
mkdir -p "$VMS/diffvm"
head -c $((1 << 20)) /dev/urandom >"$VMS/diffvm/d.img"
sync
answered_json "snapshot D1" 201 POST /api/v1/vms/diffvm/snapshots
D1=$(jq -r .id "$WORK/body")
dd if=/dev/urandom of="$VMS/diffvm/d.img" bs=4K count=1 seek=64 conv=notrunc,fsync status=none
fallocate --punch-hole -o $((260 << 10)) -l $((64 << 10)) "$VMS/diffvm/d.img"
sync
answered_json "snapshot D2 after a 4 KiB write at 256 KiB and a 64 KiB discard right after it" 201 POST /api/v1/vms/diffvm/snapshots
D2=$(jq -r .id "$WORK/body")
answered_json "compareTo (defaults)" 200 GET "/api/v1/vms/diffvm/snapshots/$D2?compareTo=$D1"
check "one squashed chunk: the write and the discard, at the write's physical address" \
    jq -e '.disks[0] | (.chunks | map([.start, .length])) == [[262144, 69632]] and .chunks[0].physical_start > 0 and (.zeroed | map([.start, .length])) == [[266240, 65536]]' "$WORK/body"
answered_json "compareTo&squashChunks=false" 200 GET "/api/v1/vms/diffvm/snapshots/$D2?compareTo=$D1&squashChunks=false"
check "two chunks: the write, then the discard (physical_start 0)" \
    jq -e '.disks[0].chunks | map([.start, .length, (.physical_start > 0)]) == [[262144, 4096, true], [266240, 65536, false]]' "$WORK/body"
answered_json "compareTo&zeroedInChunks=false" 200 GET "/api/v1/vms/diffvm/snapshots/$D2?compareTo=$D1&zeroedInChunks=false"
check "the write only" jq -e '.disks[0] | (.chunks | map([.start, .length])) == [[262144, 4096]] and (.zeroed | length) == 1' "$WORK/body"

check "every JSON body is valid for Python's json.loads (strict UTF-8)" python3 -c '
import json, pathlib, sys
for p in pathlib.Path(sys.argv[1]).iterdir():
    json.loads(p.read_bytes().decode("utf-8"))' "$WORK/bodies"
check "the daemon is still running" kill -0 "$DAEMON_PID"
