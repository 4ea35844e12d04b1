# shellcheck shell=bash
# Helpers of the fast live-VM tests (sourced after lib.sh): qemu-storage-daemon "VMs" with
# qcow2 and raw disks, a guest that writes through a writable FUSE export of each disk, and the
# truth: a file per disk that always holds what the disk reads, copied at every snapshot instant.
#
# Layout under $QSD_ROOT (a directory on /dev/shm where it is a tmpfs, else $WORK: the images,
# truths, restores and repositories of a test are small, and every round copies and compares
# them):
#   qmp/VM.qmp          the daemon's QMP monitor: the one vmexportd's qemu provider finds
#                       (qmp_sockets = $QSD_ROOT/qmp/*.qmp)
#   qsd/VM/test.sock    a second monitor for the test (a QMP socket serves one client at a time)
#   qsd/VM/DISK.{qcow2,raw}  the images;  qsd/VM/DISK.dev  the FUSE export the guest writes
#   truth/VM/DISK       what DISK reads now;  truth/VM/DISK.touched  ranges written since the
#                       last snapshot instant
#   snap/TAG/VM/DISK    what DISK read at the snapshot instant TAG
# Every daemon is killed by its PID at exit, even when the test fails, and its FUSE mounts are
# lazily unmounted.

if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && [ -w /dev/shm ]; then
    QSD_ROOT=$(mktemp -d /dev/shm/vmexport-qsd.XXXXXX)
    at_exit "rm -rf $QSD_ROOT"
else
    QSD_ROOT=$WORK
fi
QSD=${QSD:-$(command -v qemu-storage-daemon)}
QSD_TOOL="/usr/bin/python3 $VMEXPORT_ROOT/tests/integration/qsd_tool.py"
GRANULE=65536      # the provider's bitmap granularity
REPO_CHUNK=1048576 # chunk size of the test repositories (repo init --chunk-size 1M)
BG_WROTE=0

declare -A QSD_PID    # VM -> PID of its running daemon
declare -A QSD_DISKS  # VM -> "NAME:FORMAT:SIZE_MB ..." of the writable disks, in node order
declare -A QSD_RO     # VM -> "NAME:FORMAT:SIZE_MB:ro ..." of its read-only disks
declare -A QSD_CLEAN  # VM -> 1 once the exit cleanup is registered

# require_qsd: skip the test where qemu-storage-daemon, FUSE or python3 cannot run.
require_qsd() {
    local why=
    if [ -z "$QSD" ]; then why="qemu-storage-daemon is not installed (Debian qemu-system-common)"
    elif ! command -v qemu-img >/dev/null; then why="qemu-img is not installed (qemu-utils)"
    elif [ ! -x /usr/bin/python3 ]; then why="/usr/bin/python3 is not installed"
    elif [ ! -c /dev/fuse ]; then why="no /dev/fuse: the guest writes through a FUSE export"
    elif [ "$(id -u)" != 0 ]; then why="FUSE exports and mounts need root here"
    fi
    if [ -n "$why" ]; then skip "$TEST_NAME: $why"; exit 0; fi
}


# qsd_create VM SPEC...: the images and truth files of a VM; SPEC is NAME:FORMAT:SIZE_MB with
# FORMAT qcow2 or raw (reading as zeros), or NAME:FORMAT:SIZE_MB:ro for a read-only disk (a
# node opened read-only, its export not writable, some data in it; the guest never writes it).
qsd_create() {
    local vm=$1; shift
    mkdir -p "$QSD_ROOT/qsd/$vm" "$QSD_ROOT/truth/$vm" "$QSD_ROOT/qmp"
    local spec rw=() ro=()
    for spec in "$@"; do
        _qsd_new_disk "$vm" "${spec%:ro}" || return 1
        if [ "${spec%:ro}" != "$spec" ]; then
            local name fmt
            IFS=: read -r name fmt _ <<<"$spec"
            qemu-io -f "$fmt" -c "write -P 0x5a 0 1M" "$QSD_ROOT/qsd/$vm/$name.$fmt" >/dev/null || return 1
            ro+=("$spec")
        else
            rw+=("$spec")
        fi
    done
    QSD_DISKS[$vm]="${rw[*]}"
    QSD_RO[$vm]="${ro[*]}"
    guest_start
}

_qsd_new_disk() {
    local vm=$1 name fmt mb
    IFS=: read -r name fmt mb <<<"$2"
    local img; img="$QSD_ROOT/qsd/$vm/$name.$fmt"
    case $fmt in
        qcow2) qemu-img create -q -f qcow2 "$img" "${mb}M" ;;
        raw) truncate -s "${mb}M" "$img" ;;
        *) echo "qsd_create: unknown format $fmt" >&2; return 1 ;;
    esac || return 1
    truncate -s "${mb}M" "$QSD_ROOT/truth/$vm/$name"
    : >"$QSD_ROOT/truth/$vm/$name.touched"
    : >"$QSD_ROOT/qsd/$vm/$name.dev"
}

# _qsd_disk_args VM SPEC: the --blockdev and --export options of one disk.
_qsd_disk_args() {
    local vm=$1 name fmt mb ro d writable=on ropt=''
    IFS=: read -r name fmt mb ro <<<"$2"
    d=$QSD_ROOT/qsd/$vm
    [ "$ro" = ro ] && writable=off ropt=,read-only=on
    printf '%s\n' --blockdev "driver=file,node-name=file-$name,filename=$d/$name.$fmt,discard=unmap$ropt" \
        --blockdev "driver=$fmt,node-name=$name,file=file-$name,discard=unmap$ropt" \
        --export "type=fuse,id=guest-$name,node-name=$name,mountpoint=$d/$name.dev,writable=$writable"
}

_qsd_mounted() { grep -q " $1 fuse" /proc/self/mounts; }

# qsd_start VM: start the VM's daemon on its images (first start or restart); waits until
# both monitors answer and every disk's export is mounted.
qsd_start() {
    local vm=$1 d spec
    d=$QSD_ROOT/qsd/$vm
    rm -f "$QSD_ROOT/qmp/$vm.qmp" "$d/test.sock"
    local args=()
    for spec in ${QSD_DISKS[$vm]} ${QSD_RO[$vm]:-}; do
        mapfile -t -O "${#args[@]}" args < <(_qsd_disk_args "$vm" "$spec")
    done
    "$QSD" "${args[@]}" \
        --chardev "socket,id=vmexport,path=$QSD_ROOT/qmp/$vm.qmp,server=on,wait=off" \
        --monitor chardev=vmexport \
        --chardev "socket,id=test,path=$d/test.sock,server=on,wait=off" \
        --monitor chardev=test >>"$d/qsd.log" 2>&1 &
    QSD_PID[$vm]=$!
    if [ -z "${QSD_CLEAN[$vm]:-}" ]; then
        at_exit "qsd_kill9 $vm"
        QSD_CLEAN[$vm]=1
    fi
    local i name
    for i in $(seq 500); do
        if [ -S "$d/test.sock" ] && [ -S "$QSD_ROOT/qmp/$vm.qmp" ]; then
            local all=1
            for spec in ${QSD_DISKS[$vm]} ${QSD_RO[$vm]:-}; do
                name=${spec%%:*}
                _qsd_mounted "$d/$name.dev" || all=0
            done
            [ $all = 1 ] && return 0
        fi
        if ! kill -0 "${QSD_PID[$vm]}" 2>/dev/null; then
            diag "qemu-storage-daemon of $vm exited: $(tail -3 "$d/qsd.log")"
            return 1
        fi
        sleep 0.01
    done
    diag "qemu-storage-daemon of $vm did not come up"
    return 1
}

_qsd_unmount() {
    local vm=$1 spec d
    d=$QSD_ROOT/qsd/$vm
    for spec in ${QSD_DISKS[$vm]} ${QSD_RO[$vm]:-}; do
        if _qsd_mounted "$d/${spec%%:*}.dev"; then umount -l "$d/${spec%%:*}.dev"; fi
    done
}

# qsd_kill9 VM: kill -9 the VM's daemon (a crash: qcow2 bitmaps stay marked in use) and
# unmount its dead exports.
qsd_kill9() {
    local vm=$1 pid=${QSD_PID[$1]:-}
    if [ -n "$pid" ]; then
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        QSD_PID[$vm]=
    fi
    _qsd_unmount "$vm"
}

# qsd_stop VM: a clean stop (SIGTERM): persistent bitmaps are stored in the qcow2 images.
qsd_stop() {
    local vm=$1 pid=${QSD_PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    QSD_PID[$vm]=
    _qsd_unmount "$vm"
}

# qmp VM JSON...: commands on the test's monitor of VM; each "return" printed as a JSON line.
qmp() {
    local vm=$1; shift
    $QSD_TOOL qmp "$QSD_ROOT/qsd/$vm/test.sock" "$@"
}

# qsd_bitmaps VM: {"node": [bitmaps...]} of every named node.
qsd_bitmaps() { $QSD_TOOL bitmaps "$QSD_ROOT/qsd/$1/test.sock"; }

# qsd_add_disk VM SPEC: a new disk while the daemon runs (blockdev-add + FUSE export).
qsd_add_disk() {
    local vm=$1 spec=$2 name fmt mb d
    IFS=: read -r name fmt mb <<<"$spec"
    d=$QSD_ROOT/qsd/$vm
    _qsd_new_disk "$vm" "$spec" || return 1
    QSD_DISKS[$vm]="${QSD_DISKS[$vm]} $spec"
    qmp "$vm" \
        "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"file\",\"node-name\":\"file-$name\",\"filename\":\"$d/$name.$fmt\",\"discard\":\"unmap\"}}" \
        "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"$fmt\",\"node-name\":\"$name\",\"file\":\"file-$name\",\"discard\":\"unmap\"}}" \
        "{\"execute\":\"block-export-add\",\"arguments\":{\"type\":\"fuse\",\"id\":\"guest-$name\",\"node-name\":\"$name\",\"mountpoint\":\"$d/$name.dev\",\"writable\":true}}" \
        >/dev/null
}

# qsd_remove_disk VM NAME: end the disk's export and remove its nodes while the daemon runs.
qsd_remove_disk() {
    local vm=$1 name=$2 spec rest=
    for spec in ${QSD_DISKS[$vm]}; do [ "${spec%%:*}" = "$name" ] || rest="$rest $spec"; done
    qmp "$vm" "{\"execute\":\"block-export-del\",\"arguments\":{\"id\":\"guest-$name\"}}" >/dev/null || return 1
    local i
    for i in $(seq 200); do
        _qsd_mounted "$QSD_ROOT/qsd/$vm/$name.dev" || break
        sleep 0.01
    done
    qmp "$vm" "{\"execute\":\"blockdev-del\",\"arguments\":{\"node-name\":\"$name\"}}" \
        "{\"execute\":\"blockdev-del\",\"arguments\":{\"node-name\":\"file-$name\"}}" >/dev/null || return 1
    QSD_DISKS[$vm]=${rest# }
}

# qsd_disk_names VM: the VM's disk names, one a line.
qsd_disk_names() {
    local spec
    for spec in ${QSD_DISKS[$1]}; do echo "${spec%%:*}"; done
}

# disks_of VM: sets DISKS to the VM's writable disk names (no subshell: the rounds are many).
disks_of() {
    local spec
    DISKS=()
    for spec in ${QSD_DISKS[$1]}; do DISKS+=("${spec%%:*}"); done
}

# The guest: one qsd_tool.py process for the whole test (a coprocess), so that writes cost no
# interpreter start.  guest_cmd sends one command line and waits for its answer; its output
# lines go to $QSD_ROOT/guest.out.
guest_start() {
    [ -n "${GUEST_PID:-}" ] && return 0
    coproc GUEST { $QSD_TOOL serve; }
    at_exit guest_stop
}

# guest_stop: end the guest process.
guest_stop() {
    [ -n "${GUEST_PID:-}" ] || return 0
    local pid=$GUEST_PID
    local fd=${GUEST[1]}
    exec {fd}>&- # it reads to the end of its input and exits
    wait "$pid" 2>/dev/null
}

guest_send() { echo "$*" >&"${GUEST[1]}"; }

guest_reply() {
    local line
    : >"$QSD_ROOT/guest.out"
    while IFS= read -r line <&"${GUEST[0]}"; do
        case $line in
            "=ok") return 0 ;;
            "=error "*) diag "guest: ${line#=error }"; return 1 ;;
            *) echo "$line" >>"$QSD_ROOT/guest.out" ;;
        esac
    done
    diag "guest: the qsd_tool.py process ended"
    return 1
}

guest_cmd() { guest_send "$@" && guest_reply; }

# guest_write VM DISK SEED OPS [MAXLEN]: OPS random writes, zeroes and discards on the disk
# (through its export) and its truth; the ranges are added to the disk's touched list.
guest_write() {
    local vm=$1 disk=$2 seed=$3 ops=$4 maxlen=${5:-262144}
    guest_cmd write "$QSD_ROOT/qsd/$vm/$disk.dev" "$QSD_ROOT/truth/$vm/$disk" "$seed" "$ops" "$maxlen" \
        "$QSD_ROOT/truth/$vm/$disk.touched"
}

# guest_write_all VM SEED OPS [MAXLEN]: guest_write on every disk of the VM.
guest_write_all() {
    local vm=$1 seed=$2 ops=$3 maxlen=${4:-262144} disk i=0
    disks_of "$vm"
    for disk in "${DISKS[@]}"; do
        i=$((i + 1))
        guest_write "$vm" "$disk" "$((seed * 8 + i))" "$ops" "$maxlen" || return 1
    done
}

# truth_check VM: every disk reads exactly its truth (a self-check of the truth keeper).
truth_check() {
    local vm=$1 disk
    disks_of "$vm"
    for disk in "${DISKS[@]}"; do
        cmp -s "$QSD_ROOT/qsd/$vm/$disk.dev" "$QSD_ROOT/truth/$vm/$disk" || { diag "$vm/$disk differs from its truth"; return 1; }
    done
}

# truth_snap VM TAG: keep what every disk reads now as snapshot TAG (sparse copies), and start
# a new touched list per disk; the old one is kept as snap/TAG/VM/DISK.touched.
truth_snap() {
    local vm=$1 tag=$2 disk
    mkdir -p "$QSD_ROOT/snap/$tag/$vm"
    disks_of "$vm"
    for disk in "${DISKS[@]}"; do
        cp --sparse=always "$QSD_ROOT/truth/$vm/$disk" "$QSD_ROOT/snap/$tag/$vm/$disk"
        mv "$QSD_ROOT/truth/$vm/$disk.touched" "$QSD_ROOT/snap/$tag/$vm/$disk.touched"
        : >"$QSD_ROOT/truth/$vm/$disk.touched"
    done
}

# truth_drop TAG: forget snapshot TAG's truth.
truth_drop() { rm -rf "${QSD_ROOT:?}/snap/$1"; }

# touched_bytes TAG VM [DISK...]: sets TOUCHED_BYTES to the most an incremental backup of
# snapshot TAG (since the snapshot before) reads of the disks (all disks of the VM when none are
# named): the 64 KiB blocks written in between, and the gaps between them within a repository
# chunk (the backup engine merges the ranges of a chunk across small gaps).
touched_bytes() {
    local tag=$1 vm=$2; shift 2
    local disks=("$@") disk
    [ ${#disks[@]} -gt 0 ] || { disks_of "$vm"; disks=("${DISKS[@]}"); }
    TOUCHED_BYTES=0
    for disk in "${disks[@]}"; do
        guest_cmd granules "$QSD_ROOT/snap/$tag/$vm/$disk.touched" "$GRANULE" "$REPO_CHUNK" || return 1
        local b
        read -r b <"$QSD_ROOT/guest.out"
        TOUCHED_BYTES=$((TOUCHED_BYTES + b))
    done
}

# known_jobs VM FILE: the VM's running backup jobs (of snapshots that live), one a line.
known_jobs() { guest_cmd jobs "$QSD_ROOT/qsd/$1/test.sock" && cp "$QSD_ROOT/guest.out" "$2"; }

# wait_snapshot VM [PID]: wait until a backup job runs that was not in $QSD_ROOT/known
# (known_jobs VM): a snapshot's transaction ran.  Fails when process PID ended first.
wait_snapshot() {
    $QSD_TOOL wait-job "$QSD_ROOT/qsd/$1/test.sock" "$QSD_ROOT/known" 60 ${2:-} >/dev/null
}

# ---- vmexportd with a qemu provider over the daemons' monitors ----

# qsd_daemon_start [EXTRA_INI...]: vmexportd with [provider.qemu] over $QSD_ROOT/qmp/*.qmp (TLS,
# the test users), logged in as admin; exports what the vmexport CLI needs.  Sets PORT, CONF.
qsd_daemon_start() {
    PORT=$(free_port)
    CONF=$WORK/vmexportd.conf
    mkdir -m 700 "$QSD_ROOT/scratch" "$QSD_ROOT/nbd"
    write_config "$CONF" "$PORT" "$WORK/state" "[provider.qemu]" "type = qemu" \
        "qmp_sockets = $QSD_ROOT/qmp/*.qmp" "scratch_dir = $QSD_ROOT/scratch" "nbd_dir = $QSD_ROOT/nbd" "$@" ||
        return 1
    start_daemon "$CONF" "$PORT" || return 1
    login admin secret || return 1
    export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
    export VMEXPORT_CACERT=$WORK/certs/ca.crt
    export XDG_CACHE_HOME=$WORK/cache
}

# backup REPO VM [ARGS...]: vmexport backup --json; the summary in $WORK/summary, stderr in
# $WORK/backup.err.
backup() {
    local repo=$1 vm=$2; shift 2
    "$VMEXPORT" backup "$vm" --repo "$repo" --json "$@" >"$WORK/backup.out" 2>"$WORK/backup.err" &&
        grep '"type":"summary"' "$WORK/backup.out" | tail -1 >"$WORK/summary"
}

# backup_while_writing REPO VM TAG SEED OPS [ARGS...]: a backup of VM during which the guest
# keeps writing.  The truth of every disk is kept as TAG first; the guest waits until the
# snapshot's transaction ran (a new backup job in the VM), then writes OPS operations on every
# disk while the backup reads: none of them may be in the backup (BG_WROTE counts the backups
# during which it wrote).  Same results as backup().
backup_while_writing() {
    local repo=$1 vm=$2 tag=$3 seed=$4 ops=$5; shift 5
    known_jobs "$vm" "$QSD_ROOT/known" || return 1
    truth_snap "$vm" "$tag"
    backup "$repo" "$vm" "$@" &
    local bpid=$! disk devs=() rc=0
    disks_of "$vm"
    for disk in "${DISKS[@]}"; do
        devs+=("$QSD_ROOT/qsd/$vm/$disk.dev" "$QSD_ROOT/truth/$vm/$disk" "$QSD_ROOT/truth/$vm/$disk.touched")
    done
    guest_send bgwrite "$QSD_ROOT/qsd/$vm/test.sock" "$QSD_ROOT/known" "$bpid" "$seed" "$ops" \
        262144 "${devs[@]}"
    wait "$bpid" || rc=1
    guest_reply || rc=1
    local said=
    read -r said <"$QSD_ROOT/guest.out"
    [ "$said" != wrote ] || BG_WROTE=$((BG_WROTE + 1))
    return $rc
}

# restore_check REPO BACKUP TAG VM [DISK...]: restore the backup and compare every disk (or
# those named) bit for bit with the truth at snapshot TAG.
restore_check() {
    local repo=$1 id=$2 tag=$3 vm=$4; shift 4
    local disks=("$@") disk
    [ ${#disks[@]} -gt 0 ] || { disks_of "$vm"; disks=("${DISKS[@]}"); }
    rm -rf "$QSD_ROOT/r"
    mkdir -p "$QSD_ROOT/r"
    "$VMEXPORT" restore --repo "$repo" "$id" --to "$QSD_ROOT/r" >/dev/null 2>"$WORK/restore.err" ||
        { diag "restore $id: $(tail -1 "$WORK/restore.err")"; return 1; }
    for disk in "${disks[@]}"; do
        cmp -s "$QSD_ROOT/r/$disk" "$QSD_ROOT/snap/$tag/$vm/$disk" ||
            { diag "backup $id: disk $disk differs from its truth at $tag: $(cmp "$QSD_ROOT/r/$disk" "$QSD_ROOT/snap/$tag/$vm/$disk" 2>&1 | head -1)"; return 1; }
    done
}
