#!/bin/bash
# The rbd provider on a real single-node Ceph (ceph-lib.sh), through the real daemon over TLS:
# VMs found by each group_by mode (rbd_group in the default namespace, metadata and openstack
# in RBD namespaces), a VM of three images snapshotted atomically as one RBD group snapshot
# while a writer keeps writing, random workloads (byte-offset writes, zero writes, whole-object
# discards: librbd skips discards of parts of objects, rbd_skip_partial_discard) whose changes
# applied to a copy (vmexport download --diff-from) equal `rbd export` of the images, byte
# precision of the changes, backups read straight from Ceph (--transport rbd) restored bit for
# bit, an upload that creates RBD images, snapshot deletion, and clear errors for a missing
# pool, namespace or user.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/ceph-lib.sh"
require_ceph

RW=$BUILD/rbd_workload
MB=$((1024 * 1024))
ceph_start || { not_ok "ceph starts"; exit 1; }
ok "ceph starts"
P=$VMEXPORT_TEST_POOL
rbd_() { rbd -c "$CEPH_CONF" "$@"; }

# The images: 1 MiB objects, so that a few MiB hold many objects.  Each rbd command connects
# anew (~0.4 s), so independent ones run in parallel.
U=0f2c3d4e-5a6b-4c7d-8e9f-a0b1c2d3e4f5
V=11111111-2222-4333-8444-555555555555
setup() {
    rbd_ namespace create "$P/meta" & rbd_ namespace create "$P/os" & rbd_ group create "$P/vm3" &
    for i in a b c; do rbd_ create --size 12M --object-size 1M "$P/vm3-$i" & done
    rbd_ create --size 8M --object-size 1M "$P/loner" & # in no group: no VM in rbd_group mode
    wait
    for i in a b c; do rbd_ group image add "$P/vm3" "$P/vm3-$i" & done
    for i in m1 m2; do
        { rbd_ create --size 8M --object-size 1M "$P/meta/$i" &&
            rbd_ image-meta set "$P/meta/$i" vmexport.vm metavm; } &
    done
    rbd_ create --size 4M "$P/meta/other" & # no vmexport.vm: no VM
    rbd_ create --size 8M --object-size 1M "$P/os/${U}_disk" &
    rbd_ create --size 4M --object-size 1M "$P/os/${U}_disk.eph0" &
    rbd_ create --size 4M --object-size 1M "$P/os/volume-$V" &
    rbd_ create --size 4M "$P/os/image-cache" & # neither Nova's nor Cinder's: no VM
    wait
}
(setup) >"$WORK/setup.log" 2>&1 # a subshell: its wait is for its own jobs, not for Ceph
seed=0
mix3() { seed=$((seed + 10)); "$RW" mix "$P" $seed "$1" vm3-a vm3-b vm3-c; }
mix3 300
"$RW" mix "$P/meta" 7 200 m1 m2
"$RW" mix "$P/os" 9 200 "${U}_disk"
[ "$(rbd_ group image list "$P/vm3" | wc -l)" = 3 ] && [ "$(rbd_ ls "$P/meta" | wc -l)" = 3 ] &&
    [ "$(rbd_ ls "$P/os" | wc -l)" = 4 ] && ok "images, a group, namespaces and workloads made" ||
    { not_ok "set-up: $(cat "$WORK/setup.log")"; exit 1; }

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.grp]" "type = rbd" "pool = $P" "ceph_conf = $CEPH_CONF" \
    "[provider.meta]" "type = rbd" "pool = $P" "namespace = meta" "group_by = metadata" \
    "[provider.os]" "type = rbd" "pool = $P" "namespace = os" "group_by = openstack" \
    "ceph_id = admin" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" || { not_ok "daemon starts: $(tail -3 "$WORK/daemon.log")"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }
ok "daemon starts with three rbd providers"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

# ---- VMs by each group_by mode ----
api GET /api/v1/vms >/dev/null
vms=$(jq -r '[.[] | .name] | sort | join(" ")' "$WORK/body")
[ "$vms" = "$U $V metavm vm3" ] && ok "VMs: group, metadata, Nova and Cinder ($vms)" ||
    not_ok "VMs: $vms"
disks() { api GET "/api/v1/vms/$1" >/dev/null; jq -r '[.disks[] | .name] | join(" ")' "$WORK/body"; }
[ "$(disks vm3)" = "vm3-a vm3-b vm3-c" ] && ok "rbd_group: the group's images are the disks" ||
    not_ok "rbd_group disks: $(disks vm3)"
[ "$(disks metavm)" = "m1 m2" ] && ok "metadata: the images with vmexport.vm=metavm" ||
    not_ok "metadata disks: $(disks metavm)"
[ "$(disks "$U")" = "${U}_disk ${U}_disk.eph0" ] && ok "openstack: Nova's disk and ephemeral disk" ||
    not_ok "openstack disks: $(disks "$U")"
[ "$(disks "$V")" = "volume-$V" ] && ok "openstack: a Cinder volume" || not_ok "cinder: $(disks "$V")"
api GET /api/v1/vms/vm3 >/dev/null
[ "$(jq -r '.disks[0].size' "$WORK/body")" = $((12 * MB)) ] && ok "disk size from librbd" ||
    not_ok "disk size: $(jq -c '.disks[0]' "$WORK/body")"

# truth DIR POOL[/NS] IMAGE...: `rbd export` of each image into DIR/IMAGE.
truth() {
    local d=$1 pool=$2; shift 2
    mkdir -p "$d"
    local i r=0 pids=()
    for i in "$@"; do
        rbd_ export --no-progress "$pool/$i" "$d/$i" >/dev/null 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || r=1; done
    return $r
}
# same DIR1 DIR2 NAME...: the files are equal.
same() {
    local a=$1 b=$2 i; shift 2
    for i in "$@"; do cmp -s "$a/$i" "$b/$i" || { diag "$i differs"; return 1; }; done
}
snap() { "$VMEXPORT" snapshot create --json "$1" | jq -r .id; }

# ---- a VM of three images: one group snapshot, diffs applied to a copy ----
truth "$WORK/t1" "$P" vm3-a vm3-b vm3-c
S1=$(snap vm3)
[ -n "$S1" ] && [ "$S1" != null ] && ok "snapshot of vm3" || not_ok "snapshot of vm3"
rbd_ group snap ls "$P/vm3" --format json | jq -e --arg s "vmexport-$S1" 'map(.snapshot) == [$s]' >/dev/null &&
    ok "it is one RBD group snapshot" || not_ok "group snapshots: $(rbd_ group snap ls "$P/vm3")"
api GET "/api/v1/vms/vm3/snapshots/$S1" >/dev/null
jq -e '[.disks[] | .snapshot_mode] == ["rbd-group","rbd-group","rbd-group"]' "$WORK/body" >/dev/null &&
    ok "its disks say rbd-group" || not_ok "modes: $(jq -c '[.disks[] | .snapshot_mode]' "$WORK/body")"
"$VMEXPORT" download -o "$WORK/dl" vm3 "$S1" >/dev/null 2>"$WORK/err" &&
    same "$WORK/t1" "$WORK/dl" vm3-a vm3-b vm3-c && ok "full download equals rbd export" ||
    not_ok "full download: $(cat "$WORK/err")"

mix3 300
truth "$WORK/t2" "$P" vm3-a vm3-b vm3-c
S2=$(snap vm3)
"$VMEXPORT" download --json --diff-from "$S1" -o "$WORK/dl" vm3 "$S2" >"$WORK/dl2.json" 2>"$WORK/err" &&
    same "$WORK/t2" "$WORK/dl" vm3-a vm3-b vm3-c && ok "changes applied to the copy equal rbd export" ||
    not_ok "diff download: $(cat "$WORK/err")"
jq -e '[.disks[] | .zeroed_bytes] | add > 0' "$WORK/dl2.json" >/dev/null &&
    ok "whole-object discards come back as zeroed ranges" ||
    not_ok "no zeroed ranges: $(jq -c '.disks' "$WORK/dl2.json")"
api GET "/api/v1/vms/vm3/snapshots/$S2?compareTo=$S1&zeroedInChunks=false" >/dev/null
jq -e '[.disks[] | .diff_mode] | unique == ["rbd-diff"]' "$WORK/body" >/dev/null &&
    ok "diff_mode rbd-diff" || not_ok "diff modes: $(jq -c '[.disks[] | .diff_mode]' "$WORK/body")"

# Byte precision: 100 bytes at an odd offset are 100 changed bytes, nothing else.
"$RW" write "$P" vm3-b 1234567 100 5
S3=$(snap vm3)
api GET "/api/v1/vms/vm3/snapshots/$S3?compareTo=$S2&zeroedInChunks=false" >/dev/null
got=$(jq -c '[.disks[] | select(.name == "vm3-b") | .chunks[] | [.start, .length]]' "$WORK/body")
other=$(jq -c '[.disks[] | select(.name != "vm3-b") | .chunks[]] | length' "$WORK/body")
[ "$got" = "[[1234567,100]]" ] && [ "$other" = 0 ] && ok "changes at byte precision: $got" ||
    not_ok "changes of a 100-byte write: $got, other disks: $other"

# A base whose RBD snapshot was removed behind the daemon's back: that disk is listed in full,
# saying why; the others keep their changes.
rbd_ snap rm "$P/vm3-a@vmexport-$S2" >/dev/null 2>&1
api GET "/api/v1/vms/vm3/snapshots/$S3?compareTo=$S2&zeroedInChunks=false" >/dev/null
jq -e '[.disks[] | .diff_mode] == ["full", "rbd-diff", "rbd-diff"] and
       (.disks[0].diff_reason | test("RBD snapshot is gone"))' "$WORK/body" >/dev/null &&
    ok "a base RBD snapshot removed behind the daemon: full, with the reason" ||
    not_ok "removed base: $(jq -c '[.disks[] | {diff_mode, diff_reason}]' "$WORK/body")"

# ---- atomic: a writer bumps a counter on a, b, c in turn while snapshots are taken ----
"$RW" counter "$P" 4.5 vm3-a vm3-b vm3-c >"$WORK/counter" 2>&1 &
WPID=$!
at_exit "kill $WPID"
sleep 0.3
consistent=0
for n in 1 2 3; do
    s=$(snap vm3)
    c=()
    for i in a b c; do
        c+=("$(curl -s --cacert "$VMEXPORT_CACERT" -H "Authorization: Bearer $TOKEN" -r 0-7 \
            "$URL/api/v1/vms/vm3/snapshots/$s/disks/vm3-$i" | od -An -t u8 | tr -d ' ')")
    done
    # a consistent cut of "a=n, b=n, c=n, a=n+1 ...": a >= b >= c >= a - 1
    if [ "${c[0]}" -ge "${c[1]}" ] && [ "${c[1]}" -ge "${c[2]}" ] && [ "${c[2]}" -ge $((c[0] - 1)) ]; then
        consistent=$((consistent + 1))
    else
        diag "snapshot $n: counters ${c[*]}"
    fi
    "$VMEXPORT" snapshot delete vm3 "$s" >/dev/null
done
wait $WPID && ok "the writer's writes never failed ($(cat "$WORK/counter") rounds)" ||
    not_ok "the writer failed: $(cat "$WORK/counter")"
[ $consistent = 3 ] && ok "3 group snapshots under writes: the images' counters form a consistent cut" ||
    not_ok "only $consistent of 3 snapshots consistent"

# ---- metadata mode: images in no group: one snapshot per image ----
truth "$WORK/m1" "$P/meta" m1 m2
M1=$(snap metavm)
api GET "/api/v1/vms/metavm/snapshots/$M1" >/dev/null
jq -e '[.disks[] | .snapshot_mode] == ["rbd-image","rbd-image"]' "$WORK/body" >/dev/null &&
    rbd_ snap ls "$P/meta/m1" | grep -q "vmexport-$M1" && ok "metadata: one RBD snapshot per image" ||
    not_ok "metadata snapshot: $(jq -c '.disks' "$WORK/body")"
"$VMEXPORT" download -o "$WORK/mdl" metavm "$M1" >/dev/null && same "$WORK/m1" "$WORK/mdl" m1 m2 &&
    ok "metadata: full download equals rbd export" || not_ok "metadata: full download"
"$RW" mix "$P/meta" 8 200 m1 m2
truth "$WORK/m2" "$P/meta" m1 m2
M2=$(snap metavm)
"$VMEXPORT" download --diff-from "$M1" -o "$WORK/mdl" metavm "$M2" >/dev/null &&
    same "$WORK/m2" "$WORK/mdl" m1 m2 && ok "metadata: changes applied to the copy equal rbd export" ||
    not_ok "metadata: diff download"

# All or nothing: m2 may hold no more snapshots, so the snapshot fails and m1's is removed.
rbd_ snap limit set --limit "$(rbd_ snap ls "$P/meta/m2" | grep -c vmexport-)" "$P/meta/m2"
before=$(rbd_ snap ls "$P/meta/m1" | grep -c vmexport-)
out=$("$VMEXPORT" snapshot create metavm 2>&1) && not_ok "a snapshot over m2's limit succeeded" ||
    { [[ $out == *"disk m2: creating RBD snapshot"* ]] &&
        [ "$(rbd_ snap ls "$P/meta/m1" | grep -c vmexport-)" = "$before" ] &&
        ok "a failed image snapshot removes the others' (all or nothing)" ||
        not_ok "snapshot over the limit: $out; m1: $(rbd_ snap ls "$P/meta/m1")"; }
rbd_ snap limit clear "$P/meta/m2"

# ---- openstack mode ----
truth "$WORK/o1" "$P/os" "${U}_disk" "${U}_disk.eph0"
O1=$(snap "$U")
"$VMEXPORT" download -o "$WORK/odl" "$U" "$O1" >/dev/null &&
    same "$WORK/o1" "$WORK/odl" "${U}_disk" "${U}_disk.eph0" && ok "openstack: a Nova VM's snapshot downloads" ||
    not_ok "openstack: download"

# ---- backups read straight from Ceph ----
R=$WORK/repo
"$VMEXPORT" repo init "$R" >/dev/null || { not_ok "repo init"; exit 1; }
backup() {
    local n=$1
    truth "$WORK/b$n" "$P" vm3-a vm3-b vm3-c
    "$VMEXPORT" backup vm3 --repo "$R" --transport rbd --json >"$WORK/bs$n" 2>"$WORK/be$n"
}
restored() {
    local n=$1 id
    id=$(jq -r -s '.[-1].backup' "$WORK/bs$n")
    rm -rf "$WORK/r$n"; mkdir -p "$WORK/r$n"
    "$VMEXPORT" restore --repo "$R" "$id" --to "$WORK/r$n" >/dev/null 2>&1 &&
        same "$WORK/b$n" "$WORK/r$n" vm3-a vm3-b vm3-c
}
backup 1 && jq -e -s '.[-1] | .transport == "rbd" and .incremental == false' "$WORK/bs1" >/dev/null &&
    ok "backup --transport rbd: full, read from Ceph" || not_ok "backup 1: $(tail -2 "$WORK/be1") $(tail -c 300 "$WORK/bs1")"
restored 1 && ok "full backup restores bit for bit" || not_ok "restore of backup 1"
mix3 200
backup 2 && jq -e -s '.[-1] | .transport == "rbd" and .incremental == true' "$WORK/bs2" >/dev/null &&
    ok "backup --transport rbd: incremental" || not_ok "backup 2: $(tail -2 "$WORK/be2") $(tail -c 300 "$WORK/bs2")"
restored 2 && ok "incremental backup restores bit for bit" || not_ok "restore of backup 2"
read1=$(jq -s '.[-1].bytes_read' "$WORK/bs1") read2=$(jq -s '.[-1].bytes_read' "$WORK/bs2")
[ "$read2" -lt "$read1" ] && ok "the incremental read less ($read2 < $read1 bytes)" ||
    not_ok "incremental read $read2, full $read1"
out=$(CEPH_ID=nobody "$VMEXPORT" backup vm3 --repo "$R" --transport rbd 2>&1) &&
    not_ok "backup as an unknown Ceph user succeeded" ||
    { [[ $out == *"client.nobody"* ]] && ok "backup as an unknown Ceph user fails and names it" ||
        not_ok "unknown user: $out"; }

# ---- uploads create RBD images: metavm's backup restored as a new group VM ----
"$VMEXPORT" repo init "$WORK/repo2" >/dev/null
"$VMEXPORT" backup metavm --repo "$WORK/repo2" --json >"$WORK/mb" 2>"$WORK/mbe" || not_ok "backup metavm: $(cat "$WORK/mbe")"
mid=$(jq -r -s '.[-1].backup' "$WORK/mb")
truth "$WORK/m3" "$P/meta" m1 m2
"$VMEXPORT" restore --repo "$WORK/repo2" "$mid" --upload restored >/dev/null 2>"$WORK/err" &&
    ok "restore --upload to the rbd provider" || not_ok "upload: $(cat "$WORK/err")"
[ "$(disks restored)" = "m1 m2" ] && rbd_ group image list "$P/restored" | grep -q "$P/m1" &&
    ok "the upload made images m1, m2 in a new group 'restored'" || not_ok "uploaded VM: $(disks restored)"
truth "$WORK/up" "$P" m1 m2
same "$WORK/m3" "$WORK/up" m1 m2 && ok "uploaded images equal the originals" || not_ok "uploaded data"
[ -z "$(rbd_ ls "$P" | grep vmexport-partial)" ] && ok "no partial image left" || not_ok "partial images: $(rbd_ ls "$P")"

# ---- deletion removes the RBD snapshots ----
for s in $(jq -r '.[].id' <("$VMEXPORT" snapshots --json vm3 2>/dev/null || echo '[]')); do
    "$VMEXPORT" snapshot delete vm3 "$s" >/dev/null
done
"$VMEXPORT" snapshot purge vm3 >/dev/null 2>&1
[ -z "$(rbd_ group snap ls "$P/vm3")" ] && [ -z "$(rbd_ snap ls "$P/vm3-a")" ] &&
    ok "deleting the snapshots removes the group and image snapshots" ||
    not_ok "left: $(rbd_ group snap ls "$P/vm3") $(rbd_ snap ls "$P/vm3-a")"

stop_daemon && ok "the daemon stops cleanly (no leak under ASan)" || not_ok "daemon exit status $?"

# ---- clear errors ----
cfg_err() {
    write_config "$WORK/bad.conf" "$(free_port)" "$WORK/bad" "[provider.x]" "type = rbd" "$@"
    "$VMEXPORTD" --config "$WORK/bad.conf" --check 2>&1
}
out=$(cfg_err "pool = nosuchpool") && not_ok "a missing pool is accepted" ||
    { [[ $out == *"pool: nosuchpool: no such pool"* ]] && ok "missing pool: $out" || not_ok "missing pool: $out"; }
out=$(cfg_err "pool = $P" "namespace = nosuchns") && not_ok "a missing namespace is accepted" ||
    { [[ $out == *"namespace: nosuchns: no such RBD namespace"* ]] && ok "missing namespace: $out" || not_ok "missing namespace: $out"; }
out=$(cfg_err "pool = $P" "ceph_id = nobody") && not_ok "an unknown user is accepted" ||
    { [[ $out == *"client.nobody"* ]] && ok "wrong ceph_id: $out" || not_ok "wrong ceph_id: $out"; }
out=$(cfg_err "pool = $P" "group_by = tags") && not_ok "a bad group_by is accepted" ||
    { [[ $out == *"group_by: 'tags'"* ]] && ok "bad group_by: $out" || not_ok "bad group_by: $out"; }
