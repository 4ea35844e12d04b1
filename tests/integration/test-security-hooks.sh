#!/bin/bash
# Freeze/thaw hooks run without a shell (issue 16, point 5): a VM named `-x --force *` (or
# `$(touch pwned)`) reaches the hook as exactly one argument, after the configured ones; the
# hook starts with only descriptors 0 (/dev/null), 1 and 2 and a minimal environment; a hook that
# sleeps is killed, with its children, at hook_timeout; commands that need a shell are refused
# when the configuration is loaded; every descriptor the daemon opens is close-on-exec.
source "$(dirname "$0")/lib.sh"
for tool in curl jq openssl; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done
PROBE=$BUILD/hook_probe
[ -x "$PROBE" ] || { not_ok "$PROBE is built"; exit 1; }
cd "$WORK" || exit 1 # the daemon's working directory: where `touch pwned` would land

VM1='-x --force *'
VM2='$(touch pwned)'
VMS=$WORK/vms
for vm in "$VM1" "$VM2"; do
    mkdir -p "$VMS/$vm"
    head -c 65536 /dev/urandom >"$VMS/$vm/disk.img"
done
touch "$WORK/a" "$WORK/b" # what a glob of * would find

PORT=$(free_port)
write_config "$WORK/hooks.conf" "$PORT" "$WORK/state" \
    "[snapshot]" "freeze_command = $PROBE $WORK/freeze.out 'two words'" \
    "thaw_command = \"$PROBE\" $WORK/thaw.out" \
    "[provider.p]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/hooks.conf" "$PORT" && ok "daemon starts" || { not_ok "daemon starts"; exit 1; }
login admin secret && ok "login" || { not_ok "login"; exit 1; }

# probe_ok OUT HOOK VM WANT_ARGC ARGS...: the probe's report in OUT shows exactly the arguments
# ARGS, fds 0 (/dev/null), 1 and 2 only, and exactly the three variables of the environment.
probe_ok() {
    local out=$1 hook=$2 vm=$3 argc=$4; shift 4
    local what="$hook hook of VM '$vm'"
    if [ ! -s "$out" ]; then
        not_ok "$what ran (no report in $out)"
        return
    fi
    check "$what: argc is $argc (\"\$#\" after its first configured argument)" grep -qx "argc $argc" "$out"
    local want got
    want=$(for a in "$@"; do printf 'arg [%s]\n' "$a"; done)
    got=$(grep '^arg ' "$out")
    if [ "$got" = "$want" ]; then ok "$what: the arguments, each exactly"; else not_ok "$what: arguments: $(echo "$got" | tr '\n' '|')"; fi
    got=$(grep '^fd ' "$out" | awk '{print $2}' | sort -n | tr '\n' ' ')
    if [ "$got" = "0 1 2 " ]; then ok "$what: only descriptors 0 1 2 open"; else not_ok "$what: open descriptors: $(grep '^fd ' "$out" | tr '\n' '|')"; fi
    check "$what: stdin is /dev/null" grep -qx "fd 0 -> /dev/null" "$out"
    want=$(printf 'env PATH=/usr/sbin:/usr/bin:/sbin:/bin\nenv VMEXPORT_VM_ID=%s\nenv VMEXPORT_HOOK=%s' "$vm" "$hook" | sort)
    got=$(grep '^env ' "$out" | sort)
    if [ "$got" = "$want" ]; then ok "$what: the minimal environment"; else not_ok "$what: environment: $(echo "$got" | tr '\n' '|')"; fi
}

vm_url() { jq -rn --arg v "$1" '$v | @uri'; }

for vm in "$VM1" "$VM2"; do
    rm -f "$WORK/freeze.out" "$WORK/thaw.out"
    expect_status 201 "snapshot of VM '$vm' with hooks" POST "/api/v1/vms/$(vm_url "$vm")/snapshots"
    probe_ok "$WORK/freeze.out" freeze "$vm" 2 "two words" "$vm"
    probe_ok "$WORK/thaw.out" thaw "$vm" 1 "$vm"
done
check "no command in a VM name was run" test ! -e "$WORK/pwned"

# Every descriptor the daemon opened itself is close-on-exec, looked at while a download is
# running (0, 1, 2 and what it inherited from this shell aside).
snap=$(jq -r .id "$WORK/body")
curl -s --cacert "$WORK/certs/ca.crt" -H "Authorization: Bearer $TOKEN" --limit-rate 1K -o /dev/null \
    "$URL/api/v1/vms/$(vm_url "$VM2")/snapshots/$snap/disks/disk.img" &
slow=$!
sleep 1
inherited=" $(ls /proc/$$/fd | tr '\n' ' ') "
leaky=""
for f in /proc/$DAEMON_PID/fdinfo/*; do
    fd=${f##*/}
    [[ "$inherited" == *" $fd "* ]] && continue
    flags=$(awk '/^flags:/ {print $2}' "$f")
    [ -n "$flags" ] && (((8#$flags & 8#2000000) == 0)) && leaky+=" $fd->$(readlink "/proc/$DAEMON_PID/fd/$fd")"
done
check "every descriptor the daemon opened is close-on-exec ($(ls /proc/$DAEMON_PID/fd | wc -l) open)${leaky:+; not:$leaky}" test -z "$leaky"
kill "$slow" 2>/dev/null
wait "$slow" 2>/dev/null
stop_daemon

# ============================================================================ the timeout
# A hook that starts a child and waits for it: both are killed at hook_timeout.
cat >"$WORK/slow.sh" <<EOF
#!/bin/sh
echo \$\$ >$WORK/slow.pid
sleep 600 &
echo \$! >$WORK/slow.child
wait
EOF
chmod +x "$WORK/slow.sh"
PORT=$(free_port)
write_config "$WORK/slow.conf" "$PORT" "$WORK/state" \
    "[snapshot]" "freeze_command = $WORK/slow.sh" "hook_timeout = 1" \
    "[provider.p]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/slow.conf" "$PORT" && ok "daemon with a 1 s hook_timeout starts" || { not_ok "daemon starts"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }
expect_status 500 "a freeze hook that sleeps past hook_timeout fails the snapshot" \
    POST "/api/v1/vms/$(vm_url "$VM1")/snapshots" --max-time 120
check "  the answer names the freeze command" grep -q "freeze" "$WORK/body"
check "  the daemon log says it timed out and was killed" grep -q "freeze command for VM .* timed out after 1 s; killed" "$WORK/daemon.log"
pid=$(cat "$WORK/slow.pid" 2>/dev/null)
child=$(cat "$WORK/slow.child" 2>/dev/null)
check "  the hook ran (pid $pid, child $child)" test -n "$pid" -a -n "$child"
# gone PID: no such process, or a zombie (dead, waiting for whoever reaps orphans).
gone() { [ ! -e "/proc/$1" ] || awk '{exit $3 != "Z"}' "/proc/$1/stat" 2>/dev/null || [ ! -e "/proc/$1" ]; }
check "  the hook is gone" gone "$pid"
check "  and so is its child (one process group)" gone "$child"
api GET "/api/v1/vms/$(vm_url "$VM1")/snapshots" >/dev/null
check "  no snapshot is left" jq -e 'length == 1' "$WORK/body" # the one taken above
stop_daemon

# ============================================================================ refused at load
# config_refused WHAT VALUE TEXT: a freeze_command that vmexportd refuses to start with.
config_refused() {
    local what=$1 value=$2 text=$3 rc
    write_config "$WORK/bad.conf" "$(free_port)" "$WORK/state" \
        "[snapshot]" "freeze_command = $value" "[provider.p]" "type = dir" "path = $VMS"
    timeout 20 "$VMEXPORTD" --config "$WORK/bad.conf" >"$WORK/bad.out" 2>&1
    rc=$?
    if [ "$rc" = 1 ] && grep -qF -- "$text" "$WORK/bad.out"; then
        ok "freeze_command $what is refused at start: $(head -1 "$WORK/bad.out")"
    else
        not_ok "freeze_command $what: exit $rc: $(head -3 "$WORK/bad.out")"
    fi
}
config_refused "with \$1 (a shell would expand it)" "$PROBE \$1" "'\$' needs a shell"
config_refused "with a pipe" "$PROBE x | /bin/cat" "'|' needs a shell"
config_refused "with \"\$VMEXPORT_VM_ID\"" "$PROBE \"\$VMEXPORT_VM_ID\"" "in double quotes"
config_refused "with an unterminated quote" "$PROBE 'x" "unterminated single quote"
config_refused "with a relative program" "hook_probe x" "absolute path"
config_refused "naming a missing program" "$WORK/missing x" "$WORK/missing"
