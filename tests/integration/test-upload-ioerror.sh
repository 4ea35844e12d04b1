#!/bin/bash
# An upload onto storage that fails when the data is written back, not when it is written: an
# ext4 on a thinly provisioned device (a loop device over a sparse file on a small file system)
# accepts the writes into the page cache, and the disk behind it runs out of space later.  The
# daemon's writeback behind the writes meets the failure first and the kernel reports it once
# per file, so the daemon must remember it: no flush and no finalize may succeed afterwards,
# and no disk with lost data may be published.
source "$(dirname "$0")/lib.sh"
require_root

MIB=1048576
CA=$WORK/certs/ca.crt
# Lower: a small file system holding the thin device's backing file.
make_fs ext4 48 LOWER || { not_ok "create the lower ext4"; exit 1; }
truncate -s 512M "$LOWER/thin.img"
THIN_DEV=$(losetup -f --show "$LOWER/thin.img") || { not_ok "thin loop device"; exit 1; }
at_exit "losetup -d $THIN_DEV"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$THIN_DEV" >/dev/null 2>&1 ||
    { not_ok "mkfs on the thin device"; exit 1; }
THIN=$WORK/thin
mkdir -p "$THIN" && mount -o errors=continue "$THIN_DEV" "$THIN" || { not_ok "mount the thin ext4"; exit 1; }
at_exit "umount $THIN || umount -l $THIN"
mkdir -p "$THIN/vms"
free_lower=$(($(stat -f -c '%a * %S' "$LOWER")))
ok "an ext4 of 512 MiB over $((free_lower / MIB)) MiB of real space"

start_dir_daemon thin "$THIN/vms"

# 160 MiB in five PUTs of 32 MiB (flush=n): more than the lower file system can hold.
SIZE=$((160 * MIB))
head -c $SIZE /dev/urandom >"$WORK/disk.img"
got=$(api POST /api/v1/vms/vm1/uploads -d "{\"disk\":\"disk0.img\",\"size\":$SIZE,\"format\":\"raw\"}")
ID=$(jq -r '.id // empty' "$WORK/body")
check "upload created ($got)" test "$got" = 201 -a -n "$ID"
T=/api/v1/transfers/$ID
codes=""
for ((i = 0; i < 5; i++)); do
    code=$(dd if="$WORK/disk.img" bs=1M skip=$((i * 32)) count=32 status=none |
        curl -s --cacert "$CA" -H "Authorization: Bearer $TOKEN" -X PUT \
            -H "Content-Range: bytes $((i * 32 * MIB))-$(((i + 1) * 32 * MIB - 1))/*" \
            --data-binary @- -o "$WORK/put$i" -w '%{http_code}' "$URL$T?flush=n")
    codes="$codes $code"
done
diag "PUT answers:$codes"
check "a PUT fails once the data cannot reach the disk (answers:$codes)" \
    bash -c "echo '$codes' | grep -qE '500|507'"
failed=$(grep -l '"error"' "$WORK"/put* | head -1)
check "its error says the data could not be written back" grep -qE "writing( back)? .*(Input/output error|No space left)" "$failed"
expect_status_in "500 507" "a flush afterwards fails" PATCH "$T" -d '{"op":"flush"}'
expect_status_in "500 507" "the finalize fails" POST "$T/finalize"
check "no disk was published" test ! -e "$THIN/vms/vm1/disk0.img"
expect_status_in "500 507" "the finalize fails again: the failure is remembered" POST "$T/finalize"
expect_status 204 "the transfer can be cancelled" DELETE "$T"
for f in "$WORK"/put*; do diag "$(basename "$f"): $(head -c 200 "$f")"; done
check "no disk is published after the cancel" test ! -e "$THIN/vms/vm1/disk0.img"
check "the daemon still answers" curl -sf --cacert "$CA" -o /dev/null "$URL/healthz"
