# Boots QEMU VMs for the VM and guest tiers (sourced after tests/integration/lib.sh).
#
# guest_build VAR            build (or reuse) the tiny guest; VAR = its directory (skips the
#                            test with a reason when the packages cannot be downloaded)
# vm_start NAME KERNEL_DIR DISK...  start qemu-system-x86_64 -accel tcg named NAME with the
#                            qcow2 or raw DISKs as virtio disks (ids disk0, disk1, ...); with
#                            KERNEL_DIR "" no guest OS runs (q35, no kernel).  Sockets:
#                            $WORK/qmp/NAME.qmp  the daemon's monitor (glob $WORK/qmp/*.qmp)
#                            $WORK/vm-NAME.qmp   the test's monitor
#                            $WORK/qga/NAME.qga  the guest agent (org.qemu.guest_agent.0)
#                            $WORK/vm-NAME.cmd   the tiny guest's command port
#                            Killed by PID at exit.  VM_PID_<NAME> holds the PID.
# vm_kill NAME               kill -9 the VM
# vmctl ARGS...              tests/integration/guest/vmctl.py

GUEST_DIR="$VMEXPORT_ROOT/tests/integration/guest"
vmctl() { python3 "$GUEST_DIR/vmctl.py" "$@"; }

guest_build() {
    local var=$1 dir
    # in the normal build directory, also for the sanitizer pass: built once per suite
    local cache=${VMEXPORT_GUEST_CACHE:-$VMEXPORT_ROOT/build}
    if ! dir=$(bash "$GUEST_DIR/build-guest.sh" "$cache" 2>"$WORK/guest-build.err"); then
        skip "tiny guest cannot be built: $(tail -1 "$WORK/guest-build.err")"
        exit 0
    fi
    printf -v "$var" '%s' "$dir"
}

vm_start() {
    local name=$1 kdir=$2; shift 2
    local args=() i=0 d fmt
    mkdir -p "$WORK/qmp" "$WORK/qga"
    for d in "$@"; do
        fmt=$(qemu-img info --output=json "$d" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
        args+=(-blockdev "driver=file,filename=$d,node-name=file$i,cache.direct=off"
               -blockdev "driver=$fmt,file=file$i,node-name=drive$i"
               -device "virtio-blk-pci,drive=drive$i,id=disk$i")
        i=$((i + 1))
    done
    if [ -n "$kdir" ]; then
        args+=(-kernel "$kdir/vmlinuz" -initrd "$kdir/initrd.img"
               -append "console=ttyS0 panic=-1 quiet")
    fi
    rm -f "$WORK/qmp/$name.qmp" "$WORK/vm-$name.qmp" "$WORK/qga/$name.qga" "$WORK/vm-$name.cmd"
    qemu-system-x86_64 -accel tcg -machine q35 -m 256 -nodefaults -display none -no-reboot \
        -name "$name" -pidfile "$WORK/vm-$name.pid" -serial "file:$WORK/vm-$name.console" \
        -chardev "socket,id=qmp0,path=$WORK/qmp/$name.qmp,server=on,wait=off" -mon qmp0,mode=control \
        -chardev "socket,id=qmp1,path=$WORK/vm-$name.qmp,server=on,wait=off" -mon qmp1,mode=control \
        -device virtio-serial-pci,id=vser0 \
        -chardev "socket,id=qga0,path=$WORK/qga/$name.qga,server=on,wait=off" \
        -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
        -chardev "socket,id=cmd0,path=$WORK/vm-$name.cmd,server=on,wait=off" \
        -device virtserialport,chardev=cmd0,name=vmexport.cmd \
        "${args[@]}" >"$WORK/vm-$name.log" 2>&1 &
    local pid=$!
    printf -v "VM_PID_$name" '%s' "$pid"
    at_exit "kill -9 $pid"
    for i in $(seq 100); do
        [ -S "$WORK/vm-$name.qmp" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "vm_start $name: QEMU did not start: $(tail -3 "$WORK/vm-$name.log")" >&2
    return 1
}

vm_kill() {
    local pid_var="VM_PID_$1"
    kill -9 "${!pid_var}" 2>/dev/null
    wait "${!pid_var}" 2>/dev/null || true
}
