#!/bin/bash
# Restore to a host: backups uploaded back through vmexportd's upload API into a new VM are
# byte-identical; zero and hole ranges travel as PATCH zero, not as bytes; a client killed
# mid-upload leaves no disk behind and a retry succeeds; freeze/thaw hooks run around snapshots.
source "$(dirname "$0")/lib.sh"
require_root

MIB=$((1 << 20))
make_fs xfs 800 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/src"
# Zero-heavy: 128 MiB with 2 MiB of data; plus a written-zeros region (data extents of zeros).
truncate -s 128M "$VMS/src/sparse.img"
dd if=/dev/urandom of="$VMS/src/sparse.img" bs=1M count=2 seek=40 conv=notrunc status=none
dd if=/dev/zero of="$VMS/src/sparse.img" bs=1M count=8 seek=80 conv=notrunc status=none
dd if=/dev/urandom of="$VMS/src/full.raw" bs=1M count=40 status=none
sync
printf '#!/bin/sh\necho "freeze $1" >>%s\n' "$WORK/hooks.log" >"$WORK/freeze.sh"
printf '#!/bin/sh\necho "thaw $VMEXPORT_VM_ID" >>%s\n' "$WORK/hooks.log" >"$WORK/thaw.sh"
chmod +x "$WORK/freeze.sh" "$WORK/thaw.sh"

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[snapshot]" "freeze_command = $WORK/freeze.sh" "thaw_command = $WORK/thaw.sh" \
    "[upload]" "idle_timeout = 3" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" || { not_ok "daemon starts"; exit 1; }
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

REPO=$WORK/repo
"$VMEXPORT" repo init "$REPO" --chunk-size 1M >/dev/null
check "backup of the source VM" "$VMEXPORT" backup src --repo "$REPO"
check "freeze and thaw ran around the snapshot, in order" \
    bash -c "[ \"\$(cat '$WORK/hooks.log')\" = \"\$(printf 'freeze src\nthaw src')\" ]"
BID=$("$VMEXPORT" backups --repo "$REPO" --json | jq -r '.[0].id')

"$VMEXPORT" restore --repo "$REPO" "$BID" --upload restored --jobs 4 --json >"$WORK/up.json" 2>"$WORK/up.err"
check "restore --upload into a new VM" test $? -eq 0
check "both disks appear in the new VM" bash -c "'$VMEXPORT' vms --json | jq -e '.[] | select(.name == \"restored\") | .disks | map(.name) | sort == [\"full.raw\",\"sparse.img\"]' >/dev/null"
check "sparse.img uploaded byte-identical" cmp -s "$VMS/restored/sparse.img" "$VMS/src/sparse.img"
check "full.raw uploaded byte-identical" cmp -s "$VMS/restored/full.raw" "$VMS/src/full.raw"
check "zeros of sparse.img travelled as PATCH zero: only the 2 MiB of data were sent" \
    jq -se '.[] | select(.type == "uploaded" and .disk == "sparse.img") | .bytes_sent == 2097152 and .zero_requests >= 2 and .zero_bytes == 132120576' "$WORK/up.json"
login admin secret
api GET /metrics >/dev/null
up=$(awk '/^vmexport_bytes_uploaded_total/ {print $2}' "$WORK/body")
check "the daemon received only data bytes ($up = 2 MiB + 40 MiB)" test "$up" = $((42 * MIB))
check "the uploaded sparse disk stays sparse" test "$(du -k "$VMS/restored/sparse.img" | cut -f1)" -lt $((20 * 1024))
"$VMEXPORT" restore --repo "$REPO" "$BID" --upload restored >/dev/null 2>"$WORK/err"
check "uploading over existing disks is refused (exit 1)" test $? -eq 1
check "with a clear message" grep -q "already has a disk" "$WORK/err"
check "and the existing disk is untouched" cmp -s "$VMS/restored/full.raw" "$VMS/src/full.raw"

# A client killed mid-upload: no disk appears; after the idle timeout a retry succeeds.
dd if=/dev/urandom of="$VMS/src/full.raw" bs=1M count=300 status=none
sync
"$VMEXPORT" backup src --repo "$REPO" >/dev/null
BID2=$("$VMEXPORT" backups --repo "$REPO" --json | jq -r '.[-1].id')
"$VMEXPORT" restore --repo "$REPO" "$BID2" --disk full.raw --upload killed --jobs 1 >/dev/null 2>&1 &
pid=$!
# partials: the partial files of uploads in progress (the provider's staging directory).
partials() { find "$VMS/.vmexport-staging" -name '*.partial' 2>/dev/null; }
for _ in $(seq 100); do [ -n "$(partials)" ] && break; sleep 0.05; done
sleep 0.3
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
check "no disk appears after the client was killed" test ! -e "$VMS/killed/full.raw"
api GET /api/v1/vms/killed >/dev/null
check "the VM lists no disk" jq -e '.disks == []' "$WORK/body"
sleep 5   # idle_timeout = 3: the abandoned transfer expires
check "the partial file is gone after the idle timeout" test -z "$(partials)"
check "a retry succeeds" "$VMEXPORT" restore --repo "$REPO" "$BID2" --disk full.raw --upload killed --jobs 2
check "and is byte-identical" cmp -s "$VMS/killed/full.raw" "$VMS/src/full.raw"

# A failing freeze command aborts the snapshot: nothing is created.
printf '#!/bin/sh\nexit 3\n' >"$WORK/freeze.sh"
expect_status 500 "a failing freeze command aborts the snapshot" POST /api/v1/vms/src/snapshots
check "the error says so" grep -q "freeze" "$WORK/body"
api GET /api/v1/vms/src/snapshots >/dev/null
check "no extra snapshot was recorded" jq -e 'length == 1' "$WORK/body"
