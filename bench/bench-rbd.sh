#!/bin/bash
# Benchmark: backups of an RBD image by vmexport vs Ceph's own tools, on a single-node Ceph
# (tests/integration/ceph-lib.sh: one mon, one OSD on memstore, everything on 127.0.0.1).
#
# The image: SIZE bytes (default 256M) of random data (rbd import of /dev/urandom), the one disk
# of VM `benchvm` (an RBD group, so snapshots are RBD group snapshots) of a vmexportd with an
# rbd provider.  Timed, side by side:
#     full:  vmexport backup benchvm --transport rbd (snapshot through the daemon over TLS, data
#            read from Ceph with librbd, SHA-256, zstd, stored in a local repository)
#            vs rbd snap create + rbd export IMAGE@SNAP FILE (the raw image into a local file)
#            (and vmexport backup --transport https, through the daemon, for reference)
#     incremental, INCR_REPS rounds (median): CHANGE_PCT % of the image rewritten in 64 KiB
#            random writes, then
#            vmexport backup benchvm --transport rbd (incremental: rbd_diff_iterate2 from the
#            previous snapshot, only the changed ranges read)
#            vs rbd snap create + rbd export-diff --from-snap PREV IMAGE@SNAP FILE + rbd
#            import-diff FILE COPY (the same change applied to a copy of the image, as a
#            replica kept by Ceph's tools is)
# Every backup is restored once and compared with `rbd export` of its state (outside timing).
# Ratios: Ceph tool's time / vmexport's (above 1: vmexport is faster).  The load average is
# printed at the start and the end: the machine may be shared.
# This is a benchmark, not a test: it fails only if a tool fails or a restore differs.
#
# Run as root: bench/bench-rbd.sh       SIZE=256M INCR_REPS=3 CHANGE_PCT=5 bench/bench-rbd.sh
# Environment: SIZE (default 256M: ceph-lib's memstore OSD holds 2 GiB, and the image, the copy
# and the whole 4 MiB objects their snapshots clone on a random write must fit: at 512M the OSD
# filled up and stalled every client),
# CHANGE_PCT (5), INCR_REPS (3), JOBS (backup --jobs, 4), VMEXPORT, VMEXPORTD,
# BENCH_TMPDIR (default /var/tmp).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(dirname "$here")
VMEXPORT=${VMEXPORT:-$root/build/vmexport}
VMEXPORTD=${VMEXPORTD:-$root/build/vmexportd}
RW=${RW:-$root/build/rbd_workload}
SIZE=${SIZE:-256M}
CHANGE_PCT=${CHANGE_PCT:-5}
INCR_REPS=${INCR_REPS:-3}
JOBS=${JOBS:-4}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
WRITE=65536

die() { echo "bench-rbd: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (the Ceph daemons' directories)"
for t in rbd ceph-mon ceph-osd jq cmp openssl curl; do
    command -v "$t" >/dev/null || die "$t is missing"
done
size=$(to_bytes "$SIZE")

# What ceph-lib.sh needs of tests/integration/lib.sh: WORK, at_exit.
WORK=$(mktemp -d "$BENCH_TMPDIR/bench-rbd.XXXXXX")
_cleanups=()
at_exit() { _cleanups+=("$*"); }
cleanup() {
    local i
    for ((i = ${#_cleanups[@]} - 1; i >= 0; i--)); do eval "${_cleanups[$i]}" >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=tests/integration/ceph-lib.sh
source "$root/tests/integration/ceph-lib.sh"

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
mbs() { echo "scale=1; $1 / $2 / 1000000" | bc -l; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "# bench-rbd: SIZE=$SIZE CHANGE_PCT=$CHANGE_PCT INCR_REPS=$INCR_REPS JOBS=$JOBS, $(nproc) CPUs"
echo "# load average at start: $(load)"
ceph_start >/dev/null || die "ceph does not start"
P=$VMEXPORT_TEST_POOL
# Ceph's tools chatter on stderr (progress, an admin socket the daemon's client already holds):
# kept in a log, shown when a command fails.
rbd_() { rbd -c "$CEPH_CONF" "$@" 2>>"$WORK/rbd.err" || { tail -3 "$WORK/rbd.err" >&2; return 1; }; }

head -c "$size" /dev/urandom >"$WORK/seed.raw"
rbd_ import --no-progress "$WORK/seed.raw" "$P/disk0" >/dev/null
rm -f "$WORK/seed.raw"
rbd_ group create "$P/benchvm"
rbd_ group image add "$P/benchvm" "$P/disk0"

# The daemon: lib.sh's helper makes certificates and a dir provider; the config then gets an
# rbd provider instead.
mkdir -p "$WORK/vms"
bench_start_daemon "$WORK/d" "$WORK/vms"
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true
sed -i '/^\[provider.local\]/,$d' "$WORK/d/vmexportd.conf"
printf '[provider.ceph]\ntype = rbd\npool = %s\n' "$P" >>"$WORK/d/vmexportd.conf"
"$VMEXPORTD" --config "$WORK/d/vmexportd.conf" >>"$WORK/d/daemon.log" 2>&1 &
daemon_pid=$!
at_exit "kill $daemon_pid"
for _ in $(seq 100); do
    curl -s --cacert "$VMEXPORT_CACERT" -o /dev/null "$VMEXPORT_SERVER/healthz" && break
    kill -0 "$daemon_pid" 2>/dev/null || die "vmexportd exited: $(tail -3 "$WORK/d/daemon.log")"
    sleep 0.1
done

# restored_equals REPO SNAPSHOT-SPEC: the backup of $WORK/last.json equals rbd export of SPEC.
restored_equals() {
    local id
    id=$(jq -r -s '.[-1].backup' "$WORK/last.json")
    rm -f "$WORK/restored" "$WORK/truth"
    "$VMEXPORT" restore --repo "$1" "$id" --to "$WORK/restored" >/dev/null
    rbd_ export --no-progress "$2" "$WORK/truth" >/dev/null
    cmp -s "$WORK/restored" "$WORK/truth" || die "the restore of $1's backup differs from $2"
    rm -f "$WORK/restored" "$WORK/truth"
}
# backup REPO TRANSPORT: time of one backup into REPO (its JSON summary in $WORK/last.json).
backup() {
    local t0
    sync
    t0=$(now)
    "$VMEXPORT" backup benchvm --repo "$1" --transport "$2" --jobs "$JOBS" --json >"$WORK/last.json" ||
        die "backup --transport $2 failed"
    since "$t0"
}
# The user snapshot vmexport kept for the newest backup of REPO (its base of the next diff).
last_snap() { jq -r -s '.[-1].snapshot' "$WORK/last.json"; }

"$VMEXPORT" repo init "$WORK/repo" >/dev/null
"$VMEXPORT" repo init "$WORK/repo-https" >/dev/null

# ---- full ----
t_full=$(backup "$WORK/repo" rbd)
restored_equals "$WORK/repo" "$P/disk0@vmexport-$(last_snap)"
t_https=$(backup "$WORK/repo-https" https)
t0=$(now)
rbd_ snap create "$P/disk0@r0"
rbd_ export --no-progress "$P/disk0@r0" "$WORK/export.raw" >/dev/null
sync "$WORK/export.raw"
t_export=$(since "$t0")
# The replica the incremental rounds keep up to date with import-diff.
rbd_ import --no-progress "$WORK/export.raw" "$P/copy" >/dev/null
rbd_ snap create "$P/copy@r0"
rm -f "$WORK/export.raw"

printf '\n%-58s %8s %9s\n' "full backup of $SIZE of random data" seconds "MB/s"
printf '%-58s %8.2f %9s\n' "vmexport backup --transport rbd" "$t_full" "$(mbs "$size" "$t_full")"
printf '%-58s %8.2f %9s\n' "vmexport backup --transport https (through the daemon)" "$t_https" "$(mbs "$size" "$t_https")"
printf '%-58s %8.2f %9s\n' "rbd snap create + rbd export (raw file)" "$t_export" "$(mbs "$size" "$t_export")"
echo "ratio full, rbd export / vmexport --transport rbd: $(ratio "$t_export" "$t_full")"

# ---- incremental ----
writes=$((size * CHANGE_PCT / 100 / WRITE))
vm_times=() rbd_times=()
for ((k = 1; k <= INCR_REPS; k++)); do
    "$RW" randwrite "$P" disk0 "$k" "$writes" "$WRITE"
    t=$(backup "$WORK/repo" rbd)
    jq -e -s '.[-1].incremental' "$WORK/last.json" >/dev/null || die "backup $k was not incremental"
    vm_times+=("$t")
    read_bytes=$(jq -s '.[-1].bytes_read' "$WORK/last.json")
    fetched=$(jq -s '.[-1].chunks_fetched' "$WORK/last.json")
    restored_equals "$WORK/repo" "$P/disk0@vmexport-$(last_snap)"
    sync
    t0=$(now)
    rbd_ snap create "$P/disk0@r$k"
    rbd_ export-diff --no-progress --from-snap "r$((k - 1))" "$P/disk0@r$k" "$WORK/diff.bin" >/dev/null
    rbd_ import-diff --no-progress "$WORK/diff.bin" "$P/copy" >/dev/null
    rbd_times+=("$(since "$t0")")
    diff_bytes=$(stat -c %s "$WORK/diff.bin")
    rm -f "$WORK/diff.bin"
    rbd_ export --no-progress "$P/copy@r$k" "$WORK/c" >/dev/null && rbd_ export --no-progress "$P/disk0@r$k" "$WORK/d0" >/dev/null
    cmp -s "$WORK/c" "$WORK/d0" || die "import-diff copy differs"
    rm -f "$WORK/c" "$WORK/d0"
    # Only the newest snapshot stays on each side, as vmexport keeps only its newest.
    rbd_ snap rm "$P/disk0@r$((k - 1))" && rbd_ snap rm "$P/copy@r$((k - 1))"
    echo "# round $k: vmexport ${vm_times[-1]} s (read $read_bytes bytes; $fetched chunks of the previous backup fetched to lay the changes over), rbd export-diff + import-diff ${rbd_times[-1]} s ($diff_bytes bytes of diff)"
done
t_vm=$(echo "${vm_times[@]}" | median)
t_rbd=$(echo "${rbd_times[@]}" | median)
changed=$((writes * WRITE))
printf '\n%-58s %8s\n' "incremental: $writes random 64 KiB writes ($CHANGE_PCT %), median" seconds
printf '%-58s %8.2f\n' "vmexport backup --transport rbd (incremental)" "$t_vm"
printf '%-58s %8.2f\n' "rbd snap create + export-diff + import-diff" "$t_rbd"
echo "ratio incremental, rbd export-diff+import-diff / vmexport: $(ratio "$t_rbd" "$t_vm")"
echo "# changed bytes written per round: $changed"
echo "# load average at end: $(load)"
