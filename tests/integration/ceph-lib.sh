# shellcheck shell=bash
# A real single-node Ceph for the tests (sourced after lib.sh): one monitor, one OSD on
# memstore, radosgw with a beast endpoint, all on 127.0.0.1 with cephx, all data in memory
# (a tmpfs directory), no systemd, no ceph-mgr.  Up in about two seconds on this machine kind.
#
#   require_ceph        skip the whole test (exit 0) where the Ceph packages are missing
#   ceph_start [rgw]    start mon + OSD (+ radosgw with "rgw"), create the test pool, and export
#                       CEPH_CONF, CEPH_KEYRING_FILE, CEPH_ID=admin, VMEXPORT_TEST_POOL,
#                       and with rgw: VMEXPORT_S3_ENDPOINT (http://127.0.0.1:PORT),
#                       AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION=default
#   ceph_stop_osd / ceph_start_osd, ceph_stop_rgw / ceph_start_rgw   for fault tests
#   ceph_pool NAME      create (and enable for rbd) another pool
#   CEPH_PIDS           the PIDs started; every one is killed at exit, even when the test fails
#
# The admin keyring is named in ceph.conf ([client] keyring), so librados, rbd, rados and
# radosgw-admin find it through CEPH_CONF alone; CEPH_ARGS is never exported (it would leak a
# keyring into the daemons).

CEPH_TEST_ACCESS_KEY=VMEXPORTTESTACCESS01
CEPH_TEST_SECRET_KEY=vmexport-test-secret-key-0123456789abcdef
CEPH_TEST_POOL=vmexport-test
CEPH_WAIT_SECONDS=30 # how long a daemon may take to answer before the test gives up

declare -A CEPH_PID # mon, osd, rgw -> PID

require_ceph() {
    local t missing=
    for t in ceph-mon ceph-osd ceph ceph-authtool monmaptool rados; do
        command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
    done
    if [ -n "$missing" ]; then
        echo "1..0 # SKIP Ceph is not installed (missing:$missing; Debian ceph-mon ceph-osd ceph-common radosgw)"
        trap - EXIT
        rm -rf "$WORK"
        exit 0
    fi
}

# _ceph_wait WHAT COMMAND...: retry COMMAND until it succeeds or CEPH_WAIT_SECONDS pass.
_ceph_wait() {
    local what=$1 i; shift
    for ((i = 0; i < CEPH_WAIT_SECONDS * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "ceph-lib: $what did not come up within ${CEPH_WAIT_SECONDS}s (logs in $CEPH_DIR/log)" >&2
    tail -n 20 "$CEPH_DIR"/log/*.log >&2 2>/dev/null || true
    return 1
}

_ceph_kill() {
    local name=$1 pid=${CEPH_PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    CEPH_PID[$name]=
}

ceph_start() {
    local with_rgw=${1:-}
    if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && [ -w /dev/shm ]; then
        CEPH_DIR=$(mktemp -d /dev/shm/vmexport-ceph.XXXXXX)
    else
        CEPH_DIR=$WORK/ceph
        mkdir -p "$CEPH_DIR"
    fi
    at_exit "ceph_stop"
    local mon_port fsid
    mon_port=$(free_port)
    fsid=$(cat /proc/sys/kernel/random/uuid)
    mkdir -p "$CEPH_DIR"/{mon,osd,log,run,rgw}
    export CEPH_CONF=$CEPH_DIR/ceph.conf
    export CEPH_KEYRING_FILE=$CEPH_DIR/admin.keyring
    export CEPH_ID=admin
    cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool delete = true
# one Paxos round per mon command instead of one a second: pool and auth set-up in ms
paxos propose interval = 0.01
paxos min wait = 0.001
mon allow pool size one = true
mon warn on pool no redundancy = false
osd objectstore = memstore
memstore device bytes = 2147483648
osd crush chooseleaf type = 0
osd max object name len = 460
osd max object namespace len = 64
run dir = $CEPH_DIR/run
log file = $CEPH_DIR/log/\$name.log
admin socket = $CEPH_DIR/run/\$name.asok
pid file = $CEPH_DIR/run/\$name.pid
keyring = $CEPH_DIR/\$name.keyring
ms bind ipv6 = false
rados mon op timeout = 10
rados osd op timeout = 10
client mount timeout = 10
[mon.a]
mon data = $CEPH_DIR/mon
[osd.0]
osd data = $CEPH_DIR/osd
osd journal = $CEPH_DIR/osd/journal
[client]
keyring = $CEPH_KEYRING_FILE
[client.rgw.a]
keyring = $CEPH_DIR/client.rgw.a.keyring
rgw data = $CEPH_DIR/rgw
EOF
    (
        set -e
        ceph-authtool --create-keyring "$CEPH_DIR/mon.a.keyring" --gen-key -n mon. \
            --cap mon 'allow *'
        ceph-authtool --create-keyring "$CEPH_KEYRING_FILE" --gen-key -n client.admin \
            --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *'
        ceph-authtool "$CEPH_DIR/mon.a.keyring" --import-keyring "$CEPH_KEYRING_FILE"
        monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" \
            "$CEPH_DIR/monmap"
        ceph-mon -c "$CEPH_CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" \
            --keyring "$CEPH_DIR/mon.a.keyring"
    ) >"$CEPH_DIR/log/setup.log" 2>&1 || { cat "$CEPH_DIR/log/setup.log" >&2; return 1; }
    ceph-mon -c "$CEPH_CONF" -i a -f >>"$CEPH_DIR/log/mon.out" 2>&1 &
    CEPH_PID[mon]=$!
    _ceph_wait "ceph-mon" ceph -c "$CEPH_CONF" --connect-timeout 5 mon stat || return 1

    local osd_uuid
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    (
        set -e
        ceph -c "$CEPH_CONF" osd new "$osd_uuid" 0
        ceph-authtool --create-keyring "$CEPH_DIR/osd.0.keyring" --gen-key -n osd.0
        ceph -c "$CEPH_CONF" auth add osd.0 osd 'allow *' mon 'allow profile osd' \
            mgr 'allow profile osd' -i "$CEPH_DIR/osd.0.keyring"
        ceph-osd -c "$CEPH_CONF" -i 0 --mkfs --osd-uuid "$osd_uuid"
    ) >>"$CEPH_DIR/log/setup.log" 2>&1 || { cat "$CEPH_DIR/log/setup.log" >&2; return 1; }
    ceph_start_osd || return 1
    ceph_pool "$CEPH_TEST_POOL" || return 1
    export VMEXPORT_TEST_POOL=$CEPH_TEST_POOL

    if [ "$with_rgw" = rgw ]; then
        command -v radosgw >/dev/null 2>&1 || {
            echo "ceph-lib: radosgw is not installed (Debian radosgw)" >&2
            return 1
        }
        (
            set -e
            ceph-authtool --create-keyring "$CEPH_DIR/client.rgw.a.keyring" --gen-key \
                -n client.rgw.a
            ceph -c "$CEPH_CONF" auth add client.rgw.a mon 'allow rw' osd 'allow rwx' \
                -i "$CEPH_DIR/client.rgw.a.keyring"
        ) >>"$CEPH_DIR/log/setup.log" 2>&1 || { cat "$CEPH_DIR/log/setup.log" >&2; return 1; }
        CEPH_RGW_PORT=$(free_port)
        ceph_start_rgw || return 1
        radosgw-admin -c "$CEPH_CONF" user create --uid=vmexport-test \
            --display-name="vmexport test" --access-key="$CEPH_TEST_ACCESS_KEY" \
            --secret-key="$CEPH_TEST_SECRET_KEY" >>"$CEPH_DIR/log/setup.log" 2>&1 || return 1
        export VMEXPORT_S3_ENDPOINT=http://127.0.0.1:$CEPH_RGW_PORT
        export AWS_ACCESS_KEY_ID=$CEPH_TEST_ACCESS_KEY
        export AWS_SECRET_ACCESS_KEY=$CEPH_TEST_SECRET_KEY
        export AWS_DEFAULT_REGION=default
    fi
}

# ceph_pool NAME: a replicated pool of 8 PGs enabled for rbd (radosgw makes its own pools).
ceph_pool() {
    ceph -c "$CEPH_CONF" osd pool create "$1" 8 8 >>"$CEPH_DIR/log/setup.log" 2>&1 || return 1
    ceph -c "$CEPH_CONF" osd pool application enable "$1" rbd >>"$CEPH_DIR/log/setup.log" 2>&1
    # The pool serves I/O once its PGs are active: a stat of a missing object then says ENOENT.
    _ceph_wait "pool $1" _ceph_pool_ready "$1"
}

_ceph_pool_ready() {
    local out
    out=$(timeout 5 rados -c "$CEPH_CONF" -p "$1" stat vmexport-probe 2>&1)
    case $out in *"No such file"*) return 0 ;; esac
    return 1
}

ceph_start_osd() {
    ceph-osd -c "$CEPH_CONF" -i 0 -f >>"$CEPH_DIR/log/osd.out" 2>&1 &
    CEPH_PID[osd]=$!
    _ceph_wait "ceph-osd" _ceph_osd_up
}

_ceph_osd_up() {
    ceph -c "$CEPH_CONF" --connect-timeout 5 osd dump 2>/dev/null | grep -q '^osd\.0 up'
}

ceph_stop_osd() {
    _ceph_kill osd
    ceph -c "$CEPH_CONF" osd down 0 >/dev/null 2>&1 || true
}

# tcp_nodelay=1: without it beast sends a small answer's head and body in two segments, and
# Nagle holds the body until the client's delayed ACK of the head: 40 ms per request (measured:
# the repository property test on S3 took 77 s, with it 7 s).
ceph_start_rgw() {
    radosgw -c "$CEPH_CONF" -n client.rgw.a -f \
        --rgw-frontends="beast endpoint=127.0.0.1:$CEPH_RGW_PORT tcp_nodelay=1" \
        >>"$CEPH_DIR/log/rgw.out" 2>&1 &
    CEPH_PID[rgw]=$!
    _ceph_wait "radosgw" curl -s -o /dev/null "http://127.0.0.1:$CEPH_RGW_PORT/"
}

ceph_stop_rgw() { _ceph_kill rgw; }

ceph_stop() {
    _ceph_kill rgw
    _ceph_kill osd
    _ceph_kill mon
    case ${CEPH_DIR:-} in /dev/shm/vmexport-ceph.*) rm -rf "$CEPH_DIR" ;; esac
}
