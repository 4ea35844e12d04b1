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
