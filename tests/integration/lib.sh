# Shared helpers of the integration tests (sourced).
#
# Output is TAP: every check prints "ok N - what" or "not ok N - what"; the runner counts them.
# Loop filesystems and servers started here are removed by an EXIT trap even when a test fails.

set -u
VMEXPORT_ROOT=${VMEXPORT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BUILD=${BUILD:-$VMEXPORT_ROOT/build}
VMEXPORT=${VMEXPORT:-$BUILD/vmexport}
TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "/tmp/vmexport-$TEST_NAME.XXXXXX")

_tap_n=0
_tap_failed=0
_cleanups=()

ok()     { _tap_n=$((_tap_n + 1)); echo "ok $_tap_n - $*"; }
not_ok() { _tap_n=$((_tap_n + 1)); _tap_failed=$((_tap_failed + 1)); echo "not ok $_tap_n - $*"; }
skip()   { _tap_n=$((_tap_n + 1)); echo "ok $_tap_n - # SKIP $*"; }
diag()   { echo "# $*"; }

# check DESCRIPTION COMMAND...: one TAP line from a command's exit status.
check() {
    local what=$1; shift
    if "$@" >/dev/null; then ok "$what"; else not_ok "$what"; fi
}

# check_fails DESCRIPTION COMMAND...: the command must fail.
check_fails() {
    local what=$1; shift
    if "$@"; then not_ok "$what (unexpectedly succeeded)"; else ok "$what"; fi
}

at_exit() { _cleanups+=("$*"); }

_run_cleanups() {
    local rc=$?
    local i
    for ((i = ${#_cleanups[@]} - 1; i >= 0; i--)); do
        eval "${_cleanups[$i]}" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
    echo "1..$_tap_n"
    if [ "$_tap_failed" -gt 0 ]; then exit 1; fi
    exit "$rc"
}
trap _run_cleanups EXIT
trap 'exit 130' INT TERM

# make_fs KIND SIZE_MB VAR: create and mount a filesystem on a loop device and store its mount
# point in VAR (not a $(...) subshell, so the cleanup is registered in this shell).
# KIND: xfs (reflink=1), btrfs, ext4.
make_fs() {
    local kind=$1 size=$2 var=$3
    local img="$WORK/$kind.img" mnt="$WORK/mnt-$kind"
    # mkfs.xfs refuses filesystems under 300 MB
    if [ "$kind" = xfs ] && [ "$size" -lt 320 ]; then size=320; fi
    mkdir -p "$mnt"
    truncate -s "${size}M" "$img"
    local dev
    dev=$(losetup -f --show "$img") || return 1
    at_exit "losetup -d $dev"
    case $kind in
        xfs) mkfs.xfs -q -f -m reflink=1 "$dev" ;;
        btrfs) mkfs.btrfs -q -f "$dev" ;;
        ext4) mkfs.ext4 -q -F "$dev" ;;
        *) echo "make_fs: unknown kind $kind" >&2; return 1 ;;
    esac >/dev/null 2>&1 || return 1
    mount "$dev" "$mnt" || return 1
    at_exit "umount $mnt || umount -l $mnt"
    printf -v "$var" '%s' "$mnt"
}

# require_root: loop devices and mounts need root; skip the whole test without it.
require_root() {
    if [ "$(id -u)" != 0 ]; then
        skip "$TEST_NAME needs root for loop devices"
        exit 0
    fi
}

# ---- daemon helpers ----
VMEXPORTD=${VMEXPORTD:-$BUILD/vmexportd}

# make_cert DIR: a CA, a server certificate for 127.0.0.1/localhost signed by it, and a client
# certificate signed by it: DIR/{ca,server,client}.{crt,key}.
make_cert() {
    local d=$1
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=vmexport test CA" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null || return 1
    local who
    for who in server client; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=$who" -keyout "$d/$who.key" -out "$d/$who.csr" 2>/dev/null || return 1
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/$who.ext"
        openssl x509 -req -in "$d/$who.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
            -days 2 -extfile "$d/$who.ext" -out "$d/$who.crt" 2>/dev/null || return 1
    done
}

# free_port: a TCP port nothing uses, below the ephemeral range (scripts/free-port.sh).
source "$VMEXPORT_ROOT/scripts/free-port.sh"

# write_config FILE PORT STATE_DIR [EXTRA_INI...]: a daemon config with TLS, the test users
# (admin:secret, alice:wonderland) and the sections given as extra arguments.
write_config() {
    local file=$1 port=$2 state=$3; shift 3
    mkdir -p "$state"
    [ -f "$state/users" ] || {
        echo "admin:$(openssl passwd -6 secret)"
        echo "alice:$(openssl passwd -6 wonderland)"
    } >"$state/users"
    chmod 600 "$state/users" # vmexportd refuses a users file that others can read
    [ -f "$WORK/certs/server.crt" ] || make_cert "$WORK/certs" || return 1
    {
        echo "[server]"
        echo "listen = 127.0.0.1:$port"
        echo "certificate = $WORK/certs/server.crt"
        echo "key = $WORK/certs/server.key"
        echo "shutdown_grace = 10"
        echo "[auth]"
        echo "users_file = $state/users"
        echo "jwt_secret_file = $state/jwt.key"
        echo "[catalog]"
        echo "db_file = $state/catalog.db"
        local s
        for s in "$@"; do printf '%s\n' "$s"; done
    } >"$file"
}

# start_daemon CONFIG PORT: start vmexportd, wait until /healthz answers; sets DAEMON_PID and
# URL.  The daemon is killed at exit.
start_daemon() {
    local cfg=$1 port=$2
    "$VMEXPORTD" --config "$cfg" -v >>"$WORK/daemon.log" 2>&1 &
    DAEMON_PID=$!
    at_exit "kill -9 $DAEMON_PID"
    URL="https://127.0.0.1:$port"
    local i
    for i in $(seq 100); do
        if curl -s --cacert "$WORK/certs/ca.crt" -o /dev/null "$URL/healthz"; then return 0; fi
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            diag "vmexportd exited: $(tail -3 "$WORK/daemon.log")"
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# start_dir_daemon NAME PATH: write $CONF (a free $PORT, state in $WORK/state, one `dir` provider
# NAME over PATH), start the daemon and log in as admin, with a TAP line each; the test ends
# when one fails.
start_dir_daemon() {
    PORT=$(free_port)
    CONF=$WORK/vmexportd.conf
    write_config "$CONF" "$PORT" "$WORK/state" "[provider.$1]" "type = dir" "path = $2" ||
        { not_ok "write config"; exit 1; }
    start_daemon "$CONF" "$PORT" && ok "daemon starts" || { not_ok "daemon starts"; exit 1; }
    login admin secret && ok "login" || { not_ok "login"; exit 1; }
}

# stop_daemon: SIGTERM and wait for the exit status.
stop_daemon() {
    kill -TERM "$DAEMON_PID" 2>/dev/null
    wait "$DAEMON_PID"
}

# api METHOD PATH [CURL ARGS...]: call the API with the current TOKEN; body in $WORK/body,
# status echoed.
api() {
    local method=$1 path=$2; shift 2
    curl -s --path-as-is --cacert "$WORK/certs/ca.crt" -X "$method" -o "$WORK/body" -w '%{http_code}' \
        ${TOKEN:+-H "Authorization: Bearer $TOKEN"} "$@" "$URL$path"
}

# login USER PASSWORD: sets TOKEN.
login() {
    TOKEN=$(curl -s --cacert "$WORK/certs/ca.crt" -X POST \
        -d "{\"username\":\"$1\",\"password\":\"$2\"}" "$URL/api/v1/auth/login" | jq -r .token)
    [ -n "$TOKEN" ] && [ "$TOKEN" != null ]
}

# expect_status WANT DESCRIPTION METHOD PATH [CURL ARGS...]
expect_status() {
    local want=$1 what=$2; shift 2
    local got
    got=$(api "$@")
    if [ "$got" = "$want" ]; then ok "$what"; else not_ok "$what (HTTP $got, want $want): $(head -c 300 "$WORK/body")"; fi
}

# expect_status_in "CODES" DESCRIPTION METHOD PATH [CURL ARGS...]: any of the codes.
expect_status_in() {
    local want=$1 what=$2; shift 2
    local got
    got=$(api "$@")
    if [[ " $want " == *" $got "* ]]; then ok "$what (HTTP $got)"; else not_ok "$what (HTTP $got, want one of $want): $(head -c 300 "$WORK/body")"; fi
}
