#!/bin/bash
# Benchmark: `vmexport backup` (libvirt provider, read over NBD) vs virtnbdbackup on the same
# running libvirt domain: full and incremental backup time, bytes read, repository size.
#
# The domain runs under a private libvirtd (tests/integration/libvirt-lib.sh: the session daemon
# of nobody, TCG, no OS), with one qcow2 disk of SIZE (default 4G) whose every 512 MiB stripe
# holds 128 MiB pseudo-random data, 64 MiB base64 text, 64 MiB written zeros and a 256 MiB hole.
# Both tools use libvirt's checkpoints and pull-mode backup jobs, one after the other (libvirt
# runs one backup job per domain): vmexport through vmexportd (TLS on 127.0.0.1; the data read
# straight from the job's NBD export, transport auto), into a repository (SHA-256, zstd 1);
# virtnbdbackup into its stream format, plain and with -z (lz4).  Page cache dropped before
# every timed run.  Between the full and the incremental backups, CHANGE_PCT % (default 1) of
# the disk is rewritten with 1 MiB writes of random data at random offsets, through the running
# QEMU (HMP qemu-io).  vmexport's backups are restored and compared with the disk (outside the
# timing).  This is a benchmark, not a test: it fails only if a tool fails or a restore differs.
#
# Run as root: bench/bench-virtnbdbackup.sh      SIZE=1G bench/bench-virtnbdbackup.sh (quick)
# Needs virtnbdbackup (Debian package virtnbdbackup; installed here when missing).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
export BUILD=${BUILD:-$root/build}
SIZE=${SIZE:-4G}
CHANGE_PCT=${CHANGE_PCT:-1}
# lib.sh prints TAP and cleans up at exit; the libvirt helpers need its at_exit.
# shellcheck source=tests/integration/lib.sh
source "$root/tests/integration/lib.sh"
# shellcheck source=tests/integration/libvirt-lib.sh
source "$root/tests/integration/libvirt-lib.sh"
set -eu
die() { echo "bench-virtnbdbackup: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"
if ! command -v virtnbdbackup >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends virtnbdbackup \
        >/dev/null || die "cannot install virtnbdbackup"
fi
MIB=1048576
size=$(numfmt --from=iec "$SIZE")
[ $((size % (512 * MIB))) = 0 ] || die "SIZE must be a multiple of 512M"

ms() { echo $(((${2} - ${1}) / 1000000)); }
now() { date +%s%N; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }

chmod 711 "$WORK"
start_libvirtd "$WORK/lv" || die "$LV_WHY"
IMG=$WORK/img
NBD=$(mktemp -d /tmp/vxnbd.XXXXXX)
at_exit "rm -rf $NBD"
mkdir -p "$IMG" "$WORK/scratch" "$WORK/vnbscratch"

echo "# building a $SIZE qcow2 disk ..."
raw=$WORK/src.raw
truncate -s "$size" "$raw"
for ((s = 0; s < size / (512 * MIB); s++)); do
    base=$((s * 512))
    head -c $((128 * MIB)) /dev/urandom | dd of="$raw" bs=1M seek=$base conv=notrunc status=none
    head -c $((48 * MIB)) /dev/urandom | base64 -w 0 | head -c $((64 * MIB)) |
        dd of="$raw" bs=1M seek=$((base + 128)) conv=notrunc status=none
done
qemu-img convert -O qcow2 "$raw" "$IMG/bench.qcow2"
rm -f "$raw"
for ((s = 0; s < size / (512 * MIB); s++)); do # written zeros: allocated zero clusters
    qemu-io -f qcow2 -c "write -z $((s * 512 + 192))M 64M" "$IMG/bench.qcow2" >/dev/null
done
chown -R "$LV_USER" "$IMG" "$WORK/scratch" "$WORK/vnbscratch" "$NBD"
define_tcg_domain bench "$WORK" "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$IMG/bench.qcow2'/><target dev='vda' bus='virtio'/></disk>" ||
    die "the domain does not start"

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" "[provider.lv]" "type = libvirt" \
    "uri = $LV_URI" "scratch_dir = $WORK/scratch" "nbd_dir = $NBD" || die "config"
start_daemon "$WORK/vmexportd.conf" "$PORT" || die "vmexportd does not start"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
VMEXPORT=$BUILD/vmexport
REPO=$WORK/repo
"$VMEXPORT" repo init "$REPO" >/dev/null

# vmexport_run LEVEL: a backup; sets T (ms), READ (bytes)
vmexport_run() {
    cold
    local t0 t1
    t0=$(now)
    "$VMEXPORT" backup bench --repo "$REPO" --json >"$WORK/backup.out" 2>"$WORK/backup.err" ||
        die "vmexport backup: $(tail -2 "$WORK/backup.err")"
    t1=$(now)
    T=$(ms "$t0" "$t1")
    grep '"type":"summary"' "$WORK/backup.out" | tail -1 >"$WORK/summary"
    READ=$(jq -r .bytes_read "$WORK/summary")
    jq -e ".incremental == $([ "$1" = full ] && echo false || echo true) and .transport == \"nbd\"" \
        "$WORK/summary" >/dev/null || die "vmexport $1 backup: $(cat "$WORK/summary")"
    "$VMEXPORT" restore --repo "$REPO" "$(jq -r .backup "$WORK/summary")" --to "$WORK/r" \
        --force >/dev/null || die "restore"
    qemu-img convert -U -O raw "$IMG/bench.qcow2" "$WORK/truth"
    cmp "$WORK/r" "$WORK/truth" || die "vmexport's $1 backup differs from the disk"
    rm -f "$WORK/r" "$WORK/truth"
}

# vnb_run LEVEL DIR [ARGS...]: a virtnbdbackup run; sets T (ms), READ (bytes)
vnb_run() {
    local level=$1 dir=$2 t0 t1
    shift 2
    cold
    t0=$(now)
    virtnbdbackup -U "$LV_URI" --user none --password none -d bench -l "$level" -o "$dir" \
        -S "$WORK/vnbscratch" -f "$NBD/vnb.sock" -n "$@" >"$WORK/vnb.log" 2>&1 ||
        die "virtnbdbackup $level: $(grep -v DEBUG "$WORK/vnb.log" | tail -3)"
    t1=$(now)
    T=$(ms "$t0" "$t1")
    READ=$(grep -o '[0-9]* bytes of data extents to backup' "$WORK/vnb.log" | awk '{s += $1} END {print s + 0}')
}

writes=$((size * CHANGE_PCT / 100 / MIB))
# change: CHANGE_PCT % of the disk in 1 MiB writes of random data at random offsets
change() {
    local i off
    for ((i = 0; i < writes; i++)); do
        head -c $MIB /dev/urandom >"$WORK/scratch/w"
        chown "$LV_USER" "$WORK/scratch/w"
        off=$(((RANDOM * 32768 + RANDOM) % (size / MIB)))
        lv_qemu_io bench virtio-disk0 "write -s $WORK/scratch/w ${off}M 1M" || die "qemu-io write"
    done
    rm -f "$WORK/scratch/w"
}

# virtnbdbackup refuses to run next to checkpoints it did not make, while vmexport's chains
# ignore other tools' checkpoints: each virtnbdbackup chain (its full starts a new one) runs
# first, vmexport's last.  Each tool's incremental follows its own change of the same size.
declare -A RES
echo "# virtnbdbackup: full, $CHANGE_PCT % changed ($writes MiB), incremental ..."
vnb_run full "$WORK/vnb"
RES[vnb,full]="$T $READ $(du -sb "$WORK/vnb" | cut -f1)"
change
vnb_run inc "$WORK/vnb"
RES[vnb,inc]="$T $READ $(du -sb "$WORK/vnb" | cut -f1)"
echo "# virtnbdbackup -z: the same ..."
vnb_run full "$WORK/vnbz" -z
RES[vnbz,full]="$T $READ $(du -sb "$WORK/vnbz" | cut -f1)"
change
vnb_run inc "$WORK/vnbz" -z
RES[vnbz,inc]="$T $READ $(du -sb "$WORK/vnbz" | cut -f1)"
echo "# vmexport: the same ..."
vmexport_run full
RES[vmexport,full]="$T $READ $(du -sb "$REPO" | cut -f1)"
change
vmexport_run inc
RES[vmexport,inc]="$T $READ $(du -sb "$REPO" | cut -f1)"

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
echo
echo "| $SIZE qcow2, $CHANGE_PCT % changed | time full | time incr | incr/full | read full | read incr | repository after both |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for tool in vmexport vnb vnbz; do
    read -r tf rf _ <<<"${RES[$tool,full]}"
    read -r ti ri si <<<"${RES[$tool,inc]}"
    case $tool in
        vmexport) name="vmexport backup (NBD, zstd)" ;;
        vnb) name="virtnbdbackup" ;;
        vnbz) name="virtnbdbackup -z (lz4)" ;;
    esac
    echo "| $name | $tf ms | $ti ms | $(awk -v a="$ti" -v b="$tf" 'BEGIN { printf "%.1f %%", 100 * a / b }') | $(mb "$rf") MB | $(mb "$ri") MB | $(mb "$si") MB |"
done
