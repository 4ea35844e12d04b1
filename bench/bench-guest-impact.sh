#!/bin/bash
# Benchmark: what a live backup costs the guest (qemu provider, guest agent).
#
# The tiny guest of the guest tier (tests/integration/guest/) under qemu-system-x86_64 -accel
# tcg, with a 256 MiB ext4 qcow2 data disk (mounted on /mnt) and three more 64 MiB qcow2 disks,
# its agent on org.qemu.guest_agent.0, and vmexportd with a qemu provider over it.  Timed:
#   guest writes: inside the guest, dd of WRITE_MIB MiB over an existing file with O_DIRECT
#     (64 KiB blocks: throughput; 4 KiB blocks: mean latency), with no snapshot, and while a
#     snapshot lives (every first write to a cluster copies its old data to the scratch image:
#     copy-before-write), and during a `vmexport backup` reading the disks over NBD
#   freeze: how long the guest's filesystems stayed frozen (the snapshot's frozenMs: from the
#     freeze sent to the thaw confirmed), ROUNDS snapshots
#   snapshot create time of the 4-disk VM: POST .../snapshots as the client sees it, ROUNDS
#     times, each snapshot deleted after (plain DELETE)
# Figures are medians.  Usage: bench/bench-guest-impact.sh [BUILD_DIR]
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
ROUNDS=${ROUNDS:-7}
WRITE_MIB=${WRITE_MIB:-32}
export BUILD VMEXPORT_ROOT=$ROOT
source "$ROOT/tests/integration/lib.sh"
source "$ROOT/tests/integration/guest/lib-guest.sh"
source "$ROOT/bench/lib.sh"

guest_build GUEST
truncate -s 256M "$WORK/data.raw"
mkfs.ext4 -q -F "$WORK/data.raw"
qemu-img convert -O qcow2 "$WORK/data.raw" "$WORK/data.qcow2" && rm -f "$WORK/data.raw"
for i in 1 2 3; do qemu-img create -q -f qcow2 "$WORK/extra$i.qcow2" 64M; done
vm_start g1 "$GUEST" "$WORK/data.qcow2" "$WORK/extra1.qcow2" "$WORK/extra2.qcow2" "$WORK/extra3.qcow2" || exit 1
CMD=$WORK/vm-g1.cmd
vmctl wait-sh "$CMD" 120 && vmctl wait-qga "$WORK/qga/g1.qga" 30 || { echo "guest does not boot"; exit 1; }

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.live]" "type = qemu" "qmp_sockets = $WORK/qmp/*.qmp" \
    "guest_agent_sockets = $WORK/qga/*.qga" "scratch_dir = $WORK/scratch" "nbd_dir = $WORK/nbd"
start_daemon "$WORK/vmexportd.conf" "$PORT" || { echo "daemon does not start"; exit 1; }
login admin secret
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
"$VMEXPORT" repo init "$WORK/repo" >/dev/null

# The file the guest overwrites: allocated once, so later writes are overwrites.
vmctl sh "$CMD" "dd if=/dev/urandom of=/mnt/bench bs=1M count=$WRITE_MIB 2>/dev/null && sync" >/dev/null

# guest_dd BS COUNT: nanoseconds of an O_DIRECT overwrite of /mnt/bench inside the guest.
guest_dd() {
    vmctl sh "$CMD" "t0=\$(date +%s%N); dd if=/dev/zero of=/mnt/bench bs=$1 count=$2 conv=notrunc oflag=direct 2>/dev/null; t1=\$(date +%s%N); echo \$((t1 - t0))" 120
}
# measure LABEL: throughput (64 KiB) and mean latency (4 KiB) of guest writes.
measure() {
    local ns lat
    ns=$(guest_dd 64k $((WRITE_MIB * 16)))
    lat=$(guest_dd 4k 1024)
    printf '%-44s %8.1f MiB/s %8.3f ms per 4 KiB write\n' "$1" \
        "$(echo "$WRITE_MIB / ($ns / 1000000000)" | bc -l)" "$(echo "$lat / 1024 / 1000000" | bc -l)"
}
snapshot() {
    curl -s --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" -X POST \
        -o "$WORK/snap.json" -w '%{time_total}' "$URL/api/v1/vms/g1/snapshots"
}
delete_snapshot() {
    api DELETE "/api/v1/vms/g1/snapshots/$(jq -r .id "$WORK/snap.json")" >/dev/null
}

echo "guest writes (TCG guest, qcow2 on $(df --output=fstype "$WORK" | tail -1), ${WRITE_MIB} MiB O_DIRECT):"
measure "no snapshot"
snapshot >/dev/null
measure "while a snapshot lives (copy-before-write)"
delete_snapshot
measure "no snapshot (again)"
"$VMEXPORT" backup g1 --repo "$WORK/repo" >/dev/null 2>&1 &
bpid=$!
measure "during a full vmexport backup"
wait "$bpid"

frozen="" create=""
for r in $(seq "$ROUNDS"); do
    t=$(snapshot)
    create+=" $t"
    frozen+=" $(jq -r '.frozenMs // empty' "$WORK/snap.json")"
    delete_snapshot
done
printf 'freeze (frozenMs, median of %d):              %8.1f ms (min %s, max %s)\n' "$ROUNDS" \
    "$(echo "$frozen" | median)" "$(echo "$frozen" | best)" "$(echo "$frozen" | tr ' ' '\n' | grep . | sort -g | tail -1)"
printf 'snapshot create of 4 disks (POST, median):   %8.1f ms (min %.1f)\n' \
    "$(echo "$(echo "$create" | median) * 1000" | bc -l)" "$(echo "$(echo "$create" | best) * 1000" | bc -l)"
