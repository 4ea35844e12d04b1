#!/bin/bash
# GET .../changes over a disk with more areas than one page (10,000) on XFS: 10,500 rewritten
# 4 KiB blocks and 10,500 discarded ones between two snapshots.  Paged with startOffset, with
# zeroedInChanged=false and without, the areas must be exactly the workload's, the same as the
# unpaged compareTo answer, no page over 10,000 areas in either list; and the backup engine,
# which pages through /changes with zeroedInChanged=false, must back the disk up (full, then
# incremental) so that it restores bit for bit.
source "$(dirname "$0")/lib.sh"
require_root

N=10500      # pairs of 4 KiB blocks: more than a page (10,000) of each kind of area
STRIDE=16384 # block k: data at k*STRIDE (rewritten), data at k*STRIDE+8192 (discarded)
PAGE_MAX=10000

make_fs xfs 600 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/frag"
DISK=$VMS/frag/frag.img

# frag STEP: base writes both blocks of every pair; change rewrites the first and punches the
# second.
frag() {
    python3 - "$DISK" "$N" "$STRIDE" "$1" <<'PY'
import ctypes, os, sys
path, n, stride, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, n * stride)
for k in range(n):
    os.pwrite(fd, os.urandom(4096), k * stride)
    if step == "base":
        os.pwrite(fd, os.urandom(4096), k * stride + 8192)
    elif libc.fallocate(fd, PUNCH, k * stride + 8192, 4096) != 0:
        sys.exit("fallocate: " + os.strerror(ctypes.get_errno()))
os.fsync(fd)
os.close(fd)
PY
}
frag base && ok "a disk with $((2 * N)) separate 4 KiB data blocks" || { not_ok "write the disk"; exit 1; }

start_dir_daemon local "$VMS"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt
export XDG_CACHE_HOME=$WORK/cache
REPO=$WORK/repo
check "repo init" "$VMEXPORT" repo init "$REPO" --chunk-size 1M

# changes_pages SNAP CHANGE_ID ARGS OUT: every page of the disk's changes, one JSON per line.
changes_pages() {
    local path="/api/v1/vms/frag/snapshots/$1/disks/frag.img/changes" start=0 size=1 n=0
    : >"$4"
    while [ "$start" -lt "$size" ] && [ $n -lt 20 ]; do
        [ "$(api GET "$path?changeId=$2&startOffset=$start$3")" = 200 ] || return 1
        jq -c . "$WORK/body" >>"$4"
        start=$((start + $(jq .length "$WORK/body")))
        size=$(jq .diskSize "$WORK/body")
        n=$((n + 1))
    done
    [ "$start" = "$size" ]
}
# backed_up WHAT: back the VM up, restore that backup and compare it with the disk.
backed_up() {
    "$VMEXPORT" backup frag --repo "$REPO" --json >"$WORK/backup.out" 2>"$WORK/backup.err" ||
        { not_ok "$1: backup: $(tail -2 "$WORK/backup.err")"; return 1; }
    grep '"type":"summary"' "$WORK/backup.out" | tail -1 >"$WORK/summary"
    rm -f "$WORK/r.img"
    "$VMEXPORT" restore --repo "$REPO" "$(jq -r .backup "$WORK/summary")" --to "$WORK/r.img" \
        >/dev/null 2>"$WORK/restore.err" || { not_ok "$1: restore: $(tail -1 "$WORK/restore.err")"; return 1; }
    check "$1: restores bit for bit" cmp "$WORK/r.img" "$DISK"
}
changes_requests() {
    api GET /metrics >/dev/null
    sed -n 's/^vmexport_http_requests_total{route="disk_changes",status="200"} //p' "$WORK/body" | grep . || echo 0
}

[ "$(api POST /api/v1/vms/frag/snapshots)" = 201 ] && S1=$(jq -r .id "$WORK/body") &&
    CID1=$(jq -r '.disks[0].change_id' "$WORK/body") && ok "snapshot 1" || { not_ok "snapshot 1"; exit 1; }
before=$(changes_requests)
backed_up "a full backup of the fragmented disk"
check "  asked for the areas in 3 or more pages" test $(($(changes_requests) - before)) -ge 3

frag change && ok "rewrite $N blocks, discard $N others" || { not_ok "change the disk"; exit 1; }
[ "$(api POST /api/v1/vms/frag/snapshots)" = 201 ] && S2=$(jq -r .id "$WORK/body") &&
    ok "snapshot 2" || { not_ok "snapshot 2"; exit 1; }

# What the workload did, and the unpaged compareTo answer.
jq -nc --argjson n "$N" --argjson s "$STRIDE" '[range(0; $n) | {start: (. * $s), length: 4096}]' >"$WORK/want-changed"
jq -nc --argjson n "$N" --argjson s "$STRIDE" '[range(0; $n) | {start: (. * $s + 8192), length: 4096}]' >"$WORK/want-zeroed"
check "the unpaged compareTo answer" test "$(api GET "/api/v1/vms/frag/snapshots/$S2?compareTo=$S1&zeroedInChunks=false&squashChunks=false")" = 200
jq -c '.disks[0].chunks | map({start, length})' "$WORK/body" >"$WORK/unpaged-changed"
jq -c '.disks[0].zeroed | map({start, length})' "$WORK/body" >"$WORK/unpaged-zeroed"
check "  lists the workload's changes" bash -c "cmp -s '$WORK/unpaged-changed' '$WORK/want-changed' && cmp -s '$WORK/unpaged-zeroed' '$WORK/want-zeroed'"

# The areas of all pages joined (an area may be split across pages).
JOIN='def join: reduce .[] as $a ([]; if length > 0 and (.[-1].start + .[-1].length) == $a.start
    then .[-1].length += $a.length else . + [$a] end);'

check "zeroedInChanged=false, paged" changes_pages "$S2" "$CID1" "&zeroedInChanged=false" "$WORK/sep"
check "  in 2 or more pages, none over $PAGE_MAX areas in either list" jq -se --argjson m "$PAGE_MAX" \
    'length >= 2 and all(.[]; (.changedArea | length) <= $m and (.zeroedArea | length) <= $m)' "$WORK/sep"
check "  each page starts where the last ended" jq -se \
    '[.[0].startOffset == 0] + [range(1; length) as $i | .[$i].startOffset == .[$i - 1].startOffset + .[$i - 1].length] | all' "$WORK/sep"
jq -sc "$JOIN [.[].changedArea[]] | join" "$WORK/sep" >"$WORK/sep-changed"
jq -sc "$JOIN [.[].zeroedArea[]] | join" "$WORK/sep" >"$WORK/sep-zeroed"
check "  changedArea: the rewritten blocks only, as unpaged" cmp "$WORK/sep-changed" "$WORK/unpaged-changed"
check "  zeroedArea: the discarded blocks, as unpaged" cmp "$WORK/sep-zeroed" "$WORK/unpaged-zeroed"

check "default (zeroedInChanged=true), paged" changes_pages "$S2" "$CID1" "" "$WORK/dflt"
check "  in 3 or more pages, none over $PAGE_MAX changed areas" jq -se --argjson m "$PAGE_MAX" \
    'length >= 3 and all(.[]; (.changedArea | length) <= $m)' "$WORK/dflt"
check "  changedArea: rewritten and discarded blocks" bash -c "jq -sc '$JOIN [.[].changedArea[]] | join' '$WORK/dflt' |
    cmp -s - <(jq -sc 'add | sort_by(.start)' '$WORK/sep-changed' '$WORK/sep-zeroed')"
check "  zeroedArea: the same as with zeroedInChanged=false" bash -c \
    "jq -sc '$JOIN [.[].zeroedArea[]] | join' '$WORK/dflt' | cmp -s - '$WORK/sep-zeroed'"

check "changeId=*, zeroedInChanged=false, paged" changes_pages "$S2" "*" "&zeroedInChanged=false" "$WORK/all"
check "  the data blocks left, in 2 pages, nothing zeroed" bash -c "jq -se 'length == 2 and all(.[]; .zeroedArea == [])' '$WORK/all' >/dev/null &&
    jq -sc '$JOIN [.[].changedArea[]] | join' '$WORK/all' | cmp -s - '$WORK/want-changed'"

before=$(changes_requests)
backed_up "an incremental backup over the rewrites and discards"
check "  is incremental" jq -e '.incremental == true' "$WORK/summary"
check "  asked for the changes in 2 or more pages" test $(($(changes_requests) - before)) -ge 2
