#!/bin/bash
# Repository hardening (issue 16) against the real daemon over TLS:
#  - a failed restore leaves nothing in the destination and never clobbers an existing file
#    (a damaged chunk in the second disk; a destination filesystem that fills up);
#  - an encrypted repository cannot be downgraded or have its config changed without the key;
#  - snapshots left on the server by killed backups are removed by the next backup of the VM
#    into the same repository, while the user's own and other repositories' snapshots stay.
source "$(dirname "$0")/lib.sh"
require_root

MIB=$((1 << 20))
make_fs xfs 320 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/vm1"
# Two disks; the second restores after the first (disks are listed by name).
dd if=/dev/urandom of="$VMS/vm1/a.img" bs=1M count=4 status=none
dd if=/dev/urandom of="$VMS/vm1/b.img" bs=1M count=12 status=none
sync

start_dir_daemon local "$VMS"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt
export XDG_CACHE_HOME=$WORK/cache
unset VMEXPORT_PASSPHRASE

# ---------------------------------------------------------------------------------------------
# A failed restore leaves nothing in the destination.
REPO=$WORK/repo
check "repo init" "$VMEXPORT" repo init "$REPO"
"$VMEXPORT" backup vm1 --repo "$REPO" --json >"$WORK/b.out" 2>"$WORK/b.err" &&
    ok "backup of vm1 (a.img, b.img)" || not_ok "backup of vm1: $(tail -2 "$WORK/b.err")"
BID=$(grep '"type":"summary"' "$WORK/b.out" | jq -r .backup)
"$VMEXPORT" backups --repo "$REPO" --json >"$WORK/list.json"
check "the backup lists a.img before b.img" \
    jq -e '.[0].disks | map(.name) == ["a.img", "b.img"]' "$WORK/list.json"

# Damage b.img's third chunk: chunks of an unencrypted repository are named by their SHA-256.
cid=$(dd if="$VMS/vm1/b.img" bs=1M skip=2 count=1 status=none | sha256sum | cut -c1-64)
chunk=$REPO/chunks/${cid:0:2}/$cid
check "b.img's third chunk is in the repository" test -f "$chunk"
cp "$chunk" "$WORK/chunk.good"
size=$(stat -c %s "$chunk")
printf '\xff' | dd of="$chunk" bs=1 seek=$((size / 2)) conv=notrunc status=none
cmp -s "$chunk" "$WORK/chunk.good" && printf '\x00' | dd of="$chunk" bs=1 seek=$((size / 2)) conv=notrunc status=none

# listing DIR: its entries, hidden ones too, one a line.
listing() { (cd "$1" && ls -A | sort); }

mkdir -p "$WORK/dest"
echo "the user's own file" >"$WORK/dest/notes.txt"
listing "$WORK/dest" >"$WORK/before"
check_fails "restore with a damaged chunk in the second disk fails" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/dest"
listing "$WORK/dest" >"$WORK/after"
if cmp -s "$WORK/before" "$WORK/after"; then ok "  the destination directory holds nothing new"
else not_ok "  the destination directory holds: $(tr '\n' ' ' <"$WORK/after")"; fi

check_fails "restore into a new directory with a damaged chunk fails" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/newdest"
check "  and does not leave the directory it created" test ! -e "$WORK/newdest"

echo "precious a.img" >"$WORK/dest/a.img"
listing "$WORK/dest" >"$WORK/before"
check_fails "restore --force over an existing a.img, b.img damaged, fails" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/dest" --force
check "  the existing a.img is not clobbered" grep -qx "precious a.img" "$WORK/dest/a.img"
listing "$WORK/dest" >"$WORK/after"
check "  and nothing else appeared" cmp -s "$WORK/before" "$WORK/after"
check_fails "restore without --force refuses the existing a.img" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/dest"
check "  before writing anything" cmp -s "$WORK/before" <(listing "$WORK/dest")

# A destination filesystem that fills up half-way (a.img fits, b.img does not).
make_fs ext4 12 SMALL || { not_ok "create a small ext4"; exit 1; }
cp "$WORK/chunk.good" "$chunk"
listing "$SMALL" >"$WORK/before"
"$VMEXPORT" restore --repo "$REPO" "$BID" --to "$SMALL" >/dev/null 2>"$WORK/r.err"
rc=$?
if [ $rc != 0 ] && grep -q "no space left" "$WORK/r.err"; then ok "restore onto a filesystem that fills up fails (no space)"
else not_ok "restore onto a filesystem that fills up: exit $rc: $(tail -2 "$WORK/r.err")"; fi
check "  the filesystem holds nothing new" cmp -s "$WORK/before" <(listing "$SMALL")
check "  and its space is free again" test "$(df --output=used -k "$SMALL" | tail -1)" -lt 2048

# And with the chunk repaired, a restore over the existing file works.
check "restore --force with every chunk intact succeeds" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/dest" --force
check "  a.img is the backup's" cmp -s "$WORK/dest/a.img" "$VMS/vm1/a.img"
check "  b.img is the backup's" cmp -s "$WORK/dest/b.img" "$VMS/vm1/b.img"
check "  no temporary file is left" test -z "$(ls -A "$WORK/dest" | grep vxrestore)"
check "  restored files are 0600" test "$(stat -c %a "$WORK/dest/b.img")" = 600
check "restore of one disk to a file" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --disk a.img --to "$WORK/one.img"
check "  is that disk" cmp -s "$WORK/one.img" "$VMS/vm1/a.img"
check_fails "  again without --force is refused" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --disk a.img --to "$WORK/one.img"
