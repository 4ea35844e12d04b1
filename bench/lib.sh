# Helpers shared by the bench/*.sh scripts (sourced, not run).

# bench_cleanup_at_exit: at exit (Ctrl-C too: exit 130), bench_cleanup_extra when the script
# defines it, then the daemon daemon_pid (kill -9), the filesystems in mounts (the last first;
# lazily when busy), the loop devices in loops (bench_mount and mkloop fill both), and the
# script's work directory $work.
bench_cleanup_at_exit() {
    loops=()
    mounts=()
    daemon_pid=""
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
bench_cleanup() {
    set +e
    if declare -F bench_cleanup_extra >/dev/null; then bench_cleanup_extra; fi
    if [ -n "$daemon_pid" ]; then kill -9 "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null; fi
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" || umount -l "${mounts[$i]}"; done
    for ((i = ${#loops[@]} - 1; i >= 0; i--)); do losetup -d "${loops[$i]}"; done
    # shellcheck disable=SC2154 # work: the script's
    rm -rf "$work"
}

# drop_caches: write dirty pages and empty the page cache (root), before a cold run.
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# mkloop VAR NAME BYTES [plain]: a loop device on a new sparse file $work/NAME.img of BYTES,
# with direct I/O (unless plain, or where refused), into VAR; detached at exit.
mkloop() {
    local dev
    truncate -s "$3" "$work/$2.img"
    if [ "${4:-}" = plain ] || ! dev=$(losetup --direct-io=on -f --show "$work/$2.img" 2>/dev/null); then
        dev=$(losetup -f --show "$work/$2.img")
    fi
    loops+=("$dev")
    printf -v "$1" '%s' "$dev"
}

# bench_mount DEV DIR [MOUNT_OPTIONS...]: DIR (made if missing) mounts DEV; unmounted at exit.
bench_mount() {
    mkdir -p "$2"
    mount "${@:3}" "$1" "$2"
    mounts+=("$2")
}

# best / median: of the numbers on stdin, separated by spaces or newlines.
best() { tr ' ' '\n' | grep . | sort -g | head -n1; }
median() {
    tr ' ' '\n' | grep . | sort -g |
        awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# free_port: a TCP port nothing uses, below the ephemeral range.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/free-port.sh"

# to_bytes SIZE: SIZE with an optional K, M, G or T suffix (powers of 1024) in bytes.
to_bytes() {
    local v=$1
    case $v in
        *[Tt]) echo $((${v%?} << 40)) ;;
        *[Gg]) echo $((${v%?} << 30)) ;;
        *[Mm]) echo $((${v%?} << 20)) ;;
        *[Kk]) echo $((${v%?} << 10)) ;;
        *) echo "$v" ;;
    esac
}

# bench_certs DIR: a CA and a server certificate for 127.0.0.1 in DIR/certs, and the user
# admin/secret in DIR/state/users.
bench_certs() {
    local d=$1 c="$1/certs"
    mkdir -p "$c" "$d/state"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=bench CA" -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=server" \
        -keyout "$c/server.key" -out "$c/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$c/server.ext"
    openssl x509 -req -in "$c/server.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
        -days 2 -extfile "$c/server.ext" -out "$c/server.crt" 2>/dev/null
    echo "admin:$(openssl passwd -6 secret)" >"$d/state/users"
    chmod 600 "$d/state/users"
}

# bench_run_daemon DIR VMS_DIR PORT tls|plain [SERVER_LINE...]: vmexportd on 127.0.0.1:PORT
# (TLS with bench_certs DIR's certificate, or plain HTTP), a `dir` provider over VMS_DIR, its
# state under DIR, the SERVER_LINEs added to [server]; returns once /healthz answers.  Sets
# daemon_pid (bench_cleanup kills it) and VURL.  Needs VMEXPORTD and die().
bench_run_daemon() {
    local d=$1 vms=$2 port=$3 mode=$4 c="$1/certs" conf="$1/vmexportd-$4.conf" line
    shift 4
    {
        echo "[server]"
        echo "listen = 127.0.0.1:$port"
        if [ "$mode" = plain ]; then
            echo "insecure_http = true"
        else
            echo "certificate = $c/server.crt"
            echo "key = $c/server.key"
        fi
        echo "shutdown_grace = 2"
        for line in "$@"; do echo "$line"; done
        echo "[auth]"
        echo "users_file = $d/state/users"
        echo "jwt_secret_file = $d/state/jwt.key"
        echo "[catalog]"
        echo "db_file = $d/state/catalog.db"
        echo "[provider.local]"
        echo "type = dir"
        echo "path = $vms"
    } >"$conf"
    "$VMEXPORTD" --config "$conf" >>"$d/daemon.log" 2>&1 &
    daemon_pid=$!
    if [ "$mode" = plain ]; then VURL=http://127.0.0.1:$port; else VURL=https://127.0.0.1:$port; fi
    for _ in $(seq 100); do
        curl -s --cacert "$c/ca.crt" -o /dev/null "$VURL/healthz" && break
        kill -0 "$daemon_pid" 2>/dev/null || die "vmexportd exited: $(tail -3 "$d/daemon.log")"
        sleep 0.1
    done
}

# bench_start_daemon DIR VMS_DIR: bench_certs DIR and bench_run_daemon over TLS on a free port;
# exports the VMEXPORT_* variables the CLI reads.
bench_start_daemon() {
    local port
    bench_certs "$1"
    port=$(free_port)
    [ "$port" != 0 ] || die "no free port"
    bench_run_daemon "$1" "$2" "$port" tls
    export VMEXPORT_SERVER=$VURL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
    export VMEXPORT_CACERT=$1/certs/ca.crt XDG_CACHE_HOME=$1/cache
}

# bench_install PACKAGE COMMAND: install the Debian PACKAGE when COMMAND is missing (bench-only
# tools, not in scripts/install-deps.sh).
bench_install() {
    command -v "$2" >/dev/null && return 0
    echo "# installing $1 ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null ||
        die "cannot install $1"
    command -v "$2" >/dev/null || die "$1 installed but $2 is missing"
}
