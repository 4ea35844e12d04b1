# A private libvirtd and a small TCG domain for the libvirt tier (sourced after lib.sh).
#
# The daemon is libvirt's session daemon of the user nobody, with its configuration, runtime,
# cache and data directories under the test's own directory: nothing of the host's libvirt is
# used or changed, the domains and checkpoints are gone with the directory, and it runs QEMU as
# nobody without /dev/kvm, so no KVM capability probe slows it down.  Measured here: socket
# after 0.15 s, first answer after ~5 s (QEMU capabilities probe), domain start ~1.2 s.
# Root can talk to it: vmexportd and virsh connect through LV_URI.

LV_USER=nobody

# start_libvirtd DIR: start the daemon with its state in DIR (short: the sockets live there) and
# wait until it answers; sets LV_URI and LV_PID (killed at exit).  Returns 1 with LV_WHY set
# when it cannot run here.
start_libvirtd() {
    local d=$1
    LV_WHY=
    if ! command -v libvirtd >/dev/null && [ ! -x /usr/sbin/libvirtd ]; then
        LV_WHY="libvirtd is not installed (Debian package libvirt-daemon-system)"
        return 1
    fi
    command -v virsh >/dev/null || { LV_WHY="virsh is not installed (libvirt-clients)"; return 1; }
    command -v qemu-system-x86_64 >/dev/null ||
        { LV_WHY="qemu-system-x86_64 is not installed"; return 1; }
    id "$LV_USER" >/dev/null 2>&1 || { LV_WHY="no user $LV_USER to run libvirtd as"; return 1; }
    mkdir -p "$d"/{cfg,run,cache,data,home}
    chmod 711 "$d"
    chown -R "$LV_USER" "$d"
    chmod 700 "$d/run"
    runuser -u "$LV_USER" -- env -i HOME="$d/home" XDG_CONFIG_HOME="$d/cfg" \
        XDG_RUNTIME_DIR="$d/run" XDG_CACHE_HOME="$d/cache" XDG_DATA_HOME="$d/data" \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/sbin/libvirtd >"$d/libvirtd.log" 2>&1 &
    LV_PID=$!
    LV_DIR=$d
    at_exit "stop_libvirtd"
    LV_URI="qemu+unix:///session?socket=$d/run/libvirt/libvirt-sock"
    local i
    for i in $(seq 300); do
        if [ -S "$d/run/libvirt/libvirt-sock" ] && virsh -q -c "$LV_URI" version >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$LV_PID" 2>/dev/null; then
            LV_WHY="libvirtd exited: $(grep -v ' : \(dnsmasq\|virGDBus\|udev\|virHostCPU\)' "$d/libvirtd.log" | tail -2)"
            return 1
        fi
        sleep 0.1
    done
    LV_WHY="libvirtd did not answer within 30 s"
    return 1
}

# stop_libvirtd: the domains' QEMUs, libvirtd and its virtlogd, each by the PID it wrote.
stop_libvirtd() {
    local f
    for f in "$LV_DIR"/run/libvirt/qemu/run/*.pid; do
        case $f in */driver.pid) ;; *) [ -f "$f" ] && kill -9 "$(cat "$f")" ;; esac
    done
    kill -9 "$LV_PID"
    [ -f "$LV_DIR/run/libvirt/libvirtd.pid" ] && kill -9 "$(cat "$LV_DIR/run/libvirt/libvirtd.pid")"
    [ -f "$LV_DIR/run/libvirt/virtlogd.pid" ] && kill -9 "$(cat "$LV_DIR/run/libvirt/virtlogd.pid")"
    return 0
}

# lv_virsh ARGS...: virsh on the private daemon.
lv_virsh() { virsh -q -c "$LV_URI" "$@"; }

# define_tcg_domain NAME DIR DISKS_XML: define and start a domain without an OS (SeaBIOS finds
# nothing to boot and waits), TCG, with the <disk> elements DISKS_XML; the files must be
# readable and writable by $LV_USER.
define_tcg_domain() {
    local name=$1 dir=$2 disks=$3
    cat >"$dir/$name.xml" <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    $disks
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
    lv_virsh define "$dir/$name.xml" >/dev/null && lv_virsh start "$name" >/dev/null
}

# lv_qemu_io DOMAIN DEVICE_ID CMD: a qemu-io command on the domain's device (its <alias>,
# "virtio-disk0" ...) through HMP, as the guest's own writes would go.
lv_qemu_io() {
    local out
    out=$(lv_virsh qemu-monitor-command --hmp "$1" \
        "qemu-io -d /machine/peripheral/$2/virtio-backend \"$3\"") || return 1
    case $out in *rror*) echo "$out" >&2; return 1 ;; esac
}
