#!/bin/bash
# What a client may ask of a new snapshot beyond the 004 contract (POST .../snapshots with a JSON
# body): a label, the changed-block-tracking chain it belongs to, and only some of the VM's
# disks; what the answer says back (chain, frozen, hasData); DELETE ?keepCheckpoint=true on a
# provider without checkpoints keeps the snapshot whole.  Bad bodies change nothing.
source "$(dirname "$0")/lib.sh"
require_root
for tool in curl jq; do command -v "$tool" >/dev/null || { skip "needs $tool"; exit 0; }; done

MIB=1048576
VMS=$WORK/vms
mkdir -p "$VMS/web01"
head -c $((2 * MIB)) /dev/urandom >"$VMS/web01/a.img"
head -c $((1 * MIB)) /dev/urandom >"$VMS/web01/b.img"
start_dir_daemon local "$VMS"

snapshot_count() { api GET /api/v1/vms/web01/snapshots?chunks=false >/dev/null; jq length "$WORK/body"; }

# ---- the 004 way still works: no body ----
expect_status 201 "a snapshot without a body" POST /api/v1/vms/web01/snapshots
check "  of both disks, in the default chain, not frozen, with data" jq -e \
    '(.disks | map(.name) | sort) == ["a.img", "b.img"] and .chain == "default" and .frozen == false and .hasData == true and (has("frozenMs") | not)' "$WORK/body"
S0=$(jq -r .id "$WORK/body")

# ---- a body with label, chain and disks ----
expect_status 201 "a snapshot of one disk in chain repo-1" POST /api/v1/vms/web01/snapshots \
    -H 'Content-Type: application/json' -d '{"label":"nightly","chain":"repo-1","disks":["b.img"]}'
check "  has that disk only, the label and the chain" jq -e \
    '(.disks | map(.name)) == ["b.img"] and .label == "nightly" and .chain == "repo-1"' "$WORK/body"
S1=$(jq -r .id "$WORK/body")
expect_status 200 "  and the catalog kept them" GET "/api/v1/vms/web01/snapshots/$S1?chunks=false"
check "  (GET says the same)" jq -e '.chain == "repo-1" and .label == "nightly" and (.disks | length) == 1' "$WORK/body"
api GET "/api/v1/vms/web01/snapshots/$S1/disks/b.img" >/dev/null
check "  its disk reads as the VM's" cmp "$WORK/body" "$VMS/web01/b.img"
expect_status 201 "an empty JSON object is a plain snapshot" POST /api/v1/vms/web01/snapshots -d '{}'
check "  of both disks" jq -e '(.disks | length) == 2' "$WORK/body"

# ---- bad bodies: 400, and no snapshot is taken ----
before=$(snapshot_count)
files_before=$(find "$VMS/.vmexport-snapshots" -type f | wc -l)
expect_status 400 "a disk the VM does not have" POST /api/v1/vms/web01/snapshots -d '{"disks":["c.img"]}'
check "  is named" jq -e '.details | test("no disk .c.img.")' "$WORK/body"
expect_status 400 "a chain with a slash" POST /api/v1/vms/web01/snapshots -d '{"chain":"../x"}'
expect_status 400 "a chain of 65 characters" POST /api/v1/vms/web01/snapshots \
    -d "{\"chain\":\"$(printf 'c%.0s' $(seq 65))\"}"
expect_status 400 "an empty disk list" POST /api/v1/vms/web01/snapshots -d '{"disks":[]}'
expect_status 400 "disks that are not strings" POST /api/v1/vms/web01/snapshots -d '{"disks":[1]}'
expect_status 400 "an unknown key" POST /api/v1/vms/web01/snapshots -d '{"chains":"x"}'
expect_status 400 "a body that is not JSON" POST /api/v1/vms/web01/snapshots -d 'chain=x'
expect_status 400 "a bad label in the body" POST /api/v1/vms/web01/snapshots -d '{"label":"a b"}'
check "no snapshot was taken by a bad request" test "$(snapshot_count)" = "$before"
check "  and no snapshot file was left" test "$(find "$VMS/.vmexport-snapshots" -type f | wc -l)" = "$files_before"

# ---- keepCheckpoint: a dir snapshot has no checkpoint apart from its data: it stays whole ----
expect_status 204 "DELETE ?keepCheckpoint=true" DELETE "/api/v1/vms/web01/snapshots/$S0?keepCheckpoint=true"
expect_status 200 "  the snapshot is still there" GET "/api/v1/vms/web01/snapshots/$S0?chunks=false"
check "  ready, with its data" jq -e '.status == "ready" and .hasData == true' "$WORK/body"
api GET "/api/v1/vms/web01/snapshots/$S0/disks/a.img" >/dev/null
check "  its data is served" cmp "$WORK/body" "$VMS/web01/a.img"
expect_status 400 "keepCheckpoint must be a boolean" DELETE "/api/v1/vms/web01/snapshots/$S0?keepCheckpoint=maybe"
expect_status 204 "a plain DELETE removes it" DELETE "/api/v1/vms/web01/snapshots/$S0"
expect_status 404 "  gone" GET "/api/v1/vms/web01/snapshots/$S0"

