#!/bin/bash
# Every --json of the command line is valid JSON when the names it prints hold characters JSON
# must escape: VM IDs and disk names with a double quote (the daemon refuses a backslash in the
# IDs of a URL, so a VM and disk with one are only listed), a chain directory and files with
# both, served by a real vmexportd over TLS.  Each output is parsed (python3 -m json.tool)
# and the names are read back exactly (jq), for vms, snapshots, snapshot create, download,
# chain info, restore --upload (its "uploaded" lines and progress lines) and map, clone, diff.
source "$(dirname "$0")/lib.sh"
require_root

VM='we"b01'
DISK='d"isk.img'
NEWVM='ba"ckup'
LISTED='li\"st\ed' # listed only
FILE='f"i\le.img'

# valid_json DESCRIPTION FILE: FILE has lines, and every line parses as JSON.
valid_json() {
    local line n=0 bad=0
    while IFS= read -r line; do
        n=$((n + 1))
        printf '%s' "$line" | python3 -m json.tool >/dev/null 2>&1 || bad=$((bad + 1))
    done <"$2"
    if [ "$n" -gt 0 ] && [ "$bad" -eq 0 ]; then ok "$1: $n line(s) of valid JSON"; else
        not_ok "$1: $bad of $n lines are not JSON: $(head -c 300 "$2")"; fi
}

make_fs xfs 300 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/$VM" "$VMS/$LISTED"
truncate -s 1M "$VMS/$LISTED/$FILE"
truncate -s 8M "$VMS/$VM/$DISK"
dd if=/dev/urandom of="$VMS/$VM/$DISK" bs=64K count=4 seek=10 conv=notrunc status=none
sync

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" || { not_ok "daemon starts"; exit 1; }
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

# --- the remote commands ---
"$VMEXPORT" vms --json >"$WORK/vms.json"
valid_json "vms --json" "$WORK/vms.json"
check "vms --json names the VMs and disks exactly" \
    jq -e --arg vm "$VM" --arg d "$DISK" --arg l "$LISTED" --arg f "$FILE" \
    'any(.[]; .name == $vm and (.disks | map(.name) == [$d])) and
     any(.[]; .name == $l and (.disks | map(.name) == [$f]))' "$WORK/vms.json"

"$VMEXPORT" snapshot create --json "$VM" >"$WORK/snap.json"
valid_json "snapshot create --json" "$WORK/snap.json"
SNAP=$(jq -r .id "$WORK/snap.json")
"$VMEXPORT" snapshots --json "$VM" >"$WORK/snaps.json"
valid_json "snapshots --json" "$WORK/snaps.json"
check "snapshots --json lists the snapshot with the disk's name" \
    jq -e --arg s "$SNAP" --arg d "$DISK" 'any(.[]; .id == $s and (.disks | map(.name) == [$d]))' \
    "$WORK/snaps.json"

"$VMEXPORT" download --json -o "$WORK/dl" "$VM" "$SNAP" >"$WORK/dl.json"
valid_json "download --json" "$WORK/dl.json"
check "download --json names the VM and the disk exactly" \
    jq -e --arg vm "$VM" --arg d "$DISK" '.vm == $vm and .disks[0].name == $d and .disks[0].created' \
    "$WORK/dl.json"
check "the downloaded disk is the VM's" cmp "$WORK/dl/$DISK" "$VMS/$VM/$DISK"

# --- restore --upload: the lines of the upload engine ---
REPO=$WORK/repo
"$VMEXPORT" repo init "$REPO" >/dev/null
check "backup of the VM" "$VMEXPORT" backup "$VM" --repo "$REPO"
BID=$("$VMEXPORT" backups --repo "$REPO" --json | jq -r '.[0].id')
"$VMEXPORT" restore --repo "$REPO" "$BID" --upload "$NEWVM" --json >"$WORK/up.json" 2>"$WORK/up.err"
check "restore --upload into a VM whose ID needs escaping" test $? -eq 0
valid_json "restore --upload --json" "$WORK/up.json"
check "the uploaded line names the VM and the disk exactly" \
    jq -se --arg vm "$NEWVM" --arg d "$DISK" \
    'any(.[]; .type == "uploaded" and .vm == $vm and .disk == $d)' "$WORK/up.json"
check "the uploaded disk is the VM's" cmp "$VMS/$NEWVM/$DISK" "$VMS/$VM/$DISK"

# --- chain info: a directory and an image whose names need escaping ---
CHAIN=$WORK/'ch"a\in'
mkdir -p "$CHAIN"
truncate -s 1M "$CHAIN/$FILE"
"$VMEXPORT" chain info --json "$CHAIN" >"$WORK/chain.json"
valid_json "chain info --json" "$WORK/chain.json"
check "chain info --json names the directory and the image exactly" \
    jq -e --arg dir "$CHAIN" --arg d "$FILE" '.directory == $dir and .top == $d and .layers[0].name == $d' \
    "$WORK/chain.json"

# --- the local file commands on such names ---
cp "$VMS/$VM/$DISK" "$XFS/$FILE"
"$VMEXPORT" map --json "$XFS/$FILE" >"$WORK/map.json"
valid_json "map --json" "$WORK/map.json"
"$VMEXPORT" clone --json "$XFS/$FILE" "$XFS/c$FILE" >"$WORK/clone.json"
valid_json "clone --json" "$WORK/clone.json"
"$VMEXPORT" diff --json "$XFS/$FILE" "$XFS/c$FILE" >"$WORK/diff.json"
valid_json "diff --json" "$WORK/diff.json"

