#!/bin/bash
# --json of the repository commands is valid JSON whatever the names hold: a VM whose ID holds a
# quote and a space (the server refuses backslashes), with a disk whose name holds a quote, is
# backed up through the real daemon; `backups`, `restore`, `verify` (sound, then with a damaged
# chunk), `prune` and `gc` with --json each give output that python3's json module reads,
# carrying the names intact.
source "$(dirname "$0")/lib.sh"
require_root
command -v python3 >/dev/null || { skip "python3 is missing"; exit 0; }

VM='q"vm 1'
DISK='d"isk.img'
make_fs xfs 320 XFS || { not_ok "create xfs"; exit 1; }
mkdir -p "$XFS/vms/$VM"
truncate -s 8M "$XFS/vms/$VM/$DISK"
dd if=/dev/urandom of="$XFS/vms/$VM/$DISK" bs=1M count=2 seek=3 conv=notrunc status=none
sync
start_dir_daemon local "$XFS/vms"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

REPO=$WORK/repo
"$VMEXPORT" repo init "$REPO" --chunk-size 1M >/dev/null
check "backup of the VM with a quote in its ID" "$VMEXPORT" backup "$VM" --repo "$REPO"
check "a second backup" "$VMEXPORT" backup "$VM" --repo "$REPO"

# json_doc FILE: the file is one JSON document.  json_lines FILE: every line is one.
json_doc() { python3 -m json.tool "$1" >/dev/null; }
json_lines() {
    python3 -c 'import json, sys
n = 0
for line in open(sys.argv[1]):
    json.loads(line); n += 1
sys.exit(0 if n else 1)' "$1"
}
# py FILE EXPR: EXPR (Python, over `d`, the document, or `ls`, the list of lines; the names
# are VM and DISK) is true.
export VM DISK
py() {
    python3 -c 'import json, os, sys
VM, DISK = os.environ["VM"], os.environ["DISK"]
text = open(sys.argv[1]).read()
ls = [json.loads(l) for l in text.splitlines() if l.strip()]
d = ls[0] if len(ls) == 1 else None
sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2"
}

"$VMEXPORT" backups --repo "$REPO" --json >"$WORK/backups.json"
check "backups --json is one valid JSON document" json_doc "$WORK/backups.json"
check "  with the VM ID and disk name intact" \
    py "$WORK/backups.json" "[b['vm'] for b in d] == [VM] * 2 and d[0]['disks'][0]['name'] == DISK"
BID=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[0]["id"])' "$WORK/backups.json")

mkdir "$WORK/out"
"$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/out" --json >"$WORK/restore.json"
check "restore --json gives JSON lines" json_lines "$WORK/restore.json"
check "  the restored line names the disk and the file" \
    py "$WORK/restore.json" "[l for l in ls if l['type'] == 'restored'][0]['disk'] == DISK"
check "  which holds the disk" cmp -s "$WORK/out/$DISK" "$XFS/vms/$VM/$DISK"

"$VMEXPORT" verify --repo "$REPO" --json >"$WORK/verify.json"
check "verify --json gives JSON lines" json_lines "$WORK/verify.json"
check "  a summary with no damage" py "$WORK/verify.json" "ls[-1]['damaged_backups'] == 0"

# One damaged byte in the first stored object: a chunk file (formats 1, 2) or, in format 3,
# the first pack, where byte 200 is inside its first chunk's container.
victim=$(find "$REPO/chunks" "$REPO/packs" -type f 2>/dev/null | sort | head -1)
cp "$victim" "$WORK/pristine"
printf 'X' | dd of="$victim" bs=1 seek=200 conv=notrunc status=none
"$VMEXPORT" backups --repo "$REPO" --chunks "$BID" | awk '{print $NF}' >"$WORK/bid-chunks"
"$VMEXPORT" verify --repo "$REPO" --json >"$WORK/verify.json"
check "verify --json exits 1 on a damaged chunk" test $? -eq 1
check "  still JSON lines" json_lines "$WORK/verify.json"
# one chunk damaged, reported with each of the two backups (they share it), and it is one of the
# chunks the backups are made of
check "  naming the chunk with each backup" \
    py "$WORK/verify.json" "len({l['chunk'] for l in ls if l['type'] == 'damaged_chunk'}) == 1 and len([l for l in ls if l['type'] == 'damaged_chunk' and l['disk'] == DISK and l['chunk'] in open('$WORK/bid-chunks').read().split()]) == 2"
cp "$WORK/pristine" "$victim"

"$VMEXPORT" prune --repo "$REPO" --keep-last 1 --json >"$WORK/prune.json"
check "prune --json gives JSON lines" json_lines "$WORK/prune.json"
check "  naming the VM of the removed backup" py "$WORK/prune.json" "d['type'] == 'remove' and d['backup'] == '$BID' and d['vm'] == VM"
"$VMEXPORT" gc --repo "$REPO" --json >"$WORK/gc.json"
check "gc --json is valid JSON" json_doc "$WORK/gc.json"

# A backup whose VM ID is not UTF-8 (imported under such a name) is listed, its ID written with
# U+FFFD in place of the bad bytes, like every other --json.
BID2=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[-1]["id"])' "$WORK/backups.json")
"$VMEXPORT" export --repo "$REPO" "$BID2" -o "$WORK/vm.tar" >/dev/null
check "import under a VM ID that is not UTF-8" \
    "$VMEXPORT" import "$WORK/vm.tar" --repo "$REPO" --vm $'\xff\xfe odd'
"$VMEXPORT" backups --repo "$REPO" --json >"$WORK/backups2.json"
check "backups --json is still one valid JSON document" json_doc "$WORK/backups2.json"
check "  listing that backup with U+FFFD for the bad bytes" \
    py "$WORK/backups2.json" "len(d) == 2 and any(b['vm'] == '\ufffd\ufffd odd' for b in d)"
