#!/bin/bash
# Benchmark: serving snapshot data over HTTP(S) — vmexportd vs nginx — and snapshot latency.
#
# Builds a loop XFS filesystem (reflink=1) with two VMs for a `dir` provider:
#   serve  one raw disk of SIZE bytes (default 1 GiB) of pseudo-random data
#   snap4  four sparse 10 GiB disks with SNAP_DATA_MIB (default 64) MiB of data each
# takes a snapshot of `serve` and serves the snapshot's disk file, in the same run, from
#   vmexportd (plain HTTP: insecure_http = true; TLS: the same daemon state restarted with TLS)
#   nginx     (a throwaway nginx on 127.0.0.1 with its own config, pid file and logs under the
#              temp dir; sendfile on, tcp_nopush on, access_log off; root = the snapshot
#              directory; TLS with the same certificate and key; 2 worker processes)
# and measures, page cache warm (the file is read once before):
#   1. full-file GET with curl (output to /dev/null): 1 connection fetching the whole file,
#      and 8 connections fetching one 1/8 byte range each (aggregate = file size / wall time);
#      best of REPS runs; plain HTTP and TLS (TLS 1.3, curl's default cipher choice);
#   2. 4 KiB ranged GETs at random 4 KiB-aligned offsets with wrk (2 threads, 64 connections,
#      DURATION seconds, Lua script setting Range and, for vmexportd, Authorization: Bearer);
#      requests per second; any non-2xx answer aborts the benchmark;
#   3. snapshot create latency: POST /api/v1/vms/snap4/snapshots (4 reflink clones + catalog
#      commit + extent lists in the answer), SNAPS times (default 10), each snapshot deleted
#      outside the timing; median and max of curl's time_total (TLS daemon).
# Ratios are vmexportd / nginx (above 1: vmexportd is faster).  nginx does no authentication,
# vmexportd checks a JWT on every request.  Client and servers share the machine's CPUs.
# The file is read again before every measurement (other benchmarks on the machine may drop the
# page cache), and the CPU time (user + system, from /proc) each server spends is added up over
# all runs of a test: CPU per GiB and per 1000 requests depend much less on the machine's load
# than throughput does.  The TLS cipher suite each server negotiated with curl is printed.
# This is a benchmark, not a test: it fails only if a tool fails or a response is wrong.
#
# Run as root (loop devices, mount): bench/bench-serve.sh
#     SIZE=2G REPS=3 DURATION=10 bench/bench-serve.sh
# Environment: SIZE (default 1G), REPS (3), DURATION (10), SNAPS (10), SNAP_DATA_MIB (64),
# VMEXPORTD (default build/vmexportd), BENCH_TMPDIR (default /var/tmp).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(dirname "$here")
VMEXPORTD=${VMEXPORTD:-$root/build/vmexportd}
SIZE=${SIZE:-1G}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
SNAPS=${SNAPS:-10}
SNAP_DATA_MIB=${SNAP_DATA_MIB:-64}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}

die() { echo "bench-serve: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (loop devices, mount)"
for t in nginx wrk curl jq openssl mkfs.xfs losetup mount ss; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
[ -x "$VMEXPORTD" ] || die "no vmexportd binary at $VMEXPORTD (build with: ninja -C build)"

to_bytes() {
    local v=$1
    case $v in
        *[Gg]) echo $((${v%?} << 30)) ;;
        *[Mm]) echo $((${v%?} << 20)) ;;
        *) echo "$v" ;;
    esac
}
size=$(to_bytes "$SIZE")
[ $((size % (8 << 20))) -eq 0 ] || die "SIZE must be a multiple of 8M"

load_start=$(cut -d" " -f1-3 /proc/loadavg)
work=$(mktemp -d "$BENCH_TMPDIR/vmexport-bench-serve.XXXXXX")
bench_cleanup_at_exit
mnt="$work/mnt"
bench_cleanup_extra() { # nginx, when the run stops while it serves
    if [ -s "$work/nginx/nginx.pid" ]; then kill -QUIT "$(cat "$work/nginx/nginx.pid")" 2>/dev/null; sleep 0.5; fi
}

hz=$(getconf CLK_TCK)
ticks() { # ticks PID...: CPU time (user + system, all threads) of the processes, in clock ticks
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
    echo "$t"
}

# --- filesystem, VMs -------------------------------------------------------------------------
fs_bytes=$((size + 4 * (SNAP_DATA_MIB << 20) + (1 << 30)))
loopdev=""
mkloop loopdev xfs "$fs_bytes" plain
mkfs.xfs -q -f -m reflink=1 "$loopdev"
bench_mount "$loopdev" "$mnt"
mkdir -p "$mnt/vms/serve" "$mnt/vms/snap4"
head -c "$size" /dev/urandom >"$mnt/vms/serve/disk.raw"
for d in 1 2 3 4; do
    f="$mnt/vms/snap4/disk$d.img"
    truncate -s 10G "$f"
    # SNAP_DATA_MIB of data in 1 MiB pieces spread over the disk (many extents)
    for ((i = 0; i < SNAP_DATA_MIB; i++)); do
        dd if=/dev/urandom of="$f" bs=1M count=1 seek=$((i * 10240 / SNAP_DATA_MIB + d)) conv=notrunc status=none
    done
done
sync

# --- certificates, users, daemon --------------------------------------------------------------
c="$work/certs"
bench_certs "$work"

vport=$(free_port)
[ "$vport" != 0 ] || die "no free port"
start_daemon() { # start_daemon plain|tls: sets VURL, TOKEN
    bench_run_daemon "$work" "$mnt/vms" "$vport" "$1" "max_connections = 256"
    TOKEN=$(curl -sf --cacert "$c/ca.crt" -d '{"username":"admin","password":"secret"}' \
        "$VURL/api/v1/auth/login" | jq -r .token)
    [ -n "$TOKEN" ] && [ "$TOKEN" != null ] || die "login failed"
}
stop_daemon() { kill -TERM "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=""; }

# --- nginx --------------------------------------------------------------------------------------
nport=$(free_port)
nsport=$(free_port)
mkdir -p "$work/nginx"
start_nginx() { # start_nginx ROOTDIR
    cat >"$work/nginx/nginx.conf" <<EOF
user root;
worker_processes $(nproc);
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$nport;
        root $1;
    }
    server {
        listen 127.0.0.1:$nsport ssl;
        ssl_certificate $c/server.crt;
        ssl_certificate_key $c/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $1;
    }
}
EOF
    nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" ||
        die "nginx failed: $(tail -3 "$work/nginx/error.log")"
    for _ in $(seq 50); do [ -s "$work/nginx/nginx.pid" ] && break; sleep 0.1; done
    for _ in $(seq 50); do
        mapfile -t NGINX_WORKERS < <(pgrep -P "$(cat "$work/nginx/nginx.pid")")
        [ "${#NGINX_WORKERS[@]}" -ge "$(nproc)" ] && break
        sleep 0.1
    done
}

# --- snapshot of `serve` ----------------------------------------------------------------------
start_daemon plain
snap_json=$(curl -sf -H "Authorization: Bearer $TOKEN" -X POST "$VURL/api/v1/vms/serve/snapshots")
SNAP=$(jq -r .id <<<"$snap_json")
snapfile=$(find "$mnt/vms" -path "*$SNAP*" -name disk.raw -type f | head -n1)
[ -f "$snapfile" ] || die "snapshot file of $SNAP not found"
cmp "$snapfile" "$mnt/vms/serve/disk.raw" || die "snapshot differs from the disk"
cat "$snapfile" >/dev/null # warm the page cache (both servers read this inode)
start_nginx "$(dirname "$snapfile")"
VPATH="/api/v1/vms/serve/snapshots/$SNAP/disks/disk.raw"
NPATH="/disk.raw"
curl -sf -o /dev/null "http://127.0.0.1:$nport$NPATH" -r 0-0 || die "nginx does not serve the file"

# get_full URL HEADERS... -> seconds for 1 connection and for 8 range connections
get_one() { # get_one URL [curl args]: whole file, prints seconds; checks the size
    local url=$1; shift
    local out
    out=$(curl -sf --cacert "$c/ca.crt" -o /dev/null -w '%{size_download} %{time_total}' "$@" "$url") || die "GET $url failed"
    [ "${out% *}" -eq "$size" ] || die "GET $url: ${out% *} bytes, expected $size"
    echo "${out#* }"
}
get_par() { # get_par URL [curl args]: 8 ranges in parallel, prints wall seconds
    local url=$1; shift
    local part=$((size / 8)) t0 t1 i pids=()
    t0=$EPOCHREALTIME
    for ((i = 0; i < 8; i++)); do
        curl -sf --cacert "$c/ca.crt" -o /dev/null -r $((i * part))-$(((i + 1) * part - 1)) "$@" "$url" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || die "parallel GET $url failed"; done
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }'
}

cat >"$work/range.lua" <<'EOF'
-- 4 KiB ranged GETs at random aligned offsets; FILESIZE, TOKEN, FPATH from the environment
local blocks = math.floor(tonumber(os.getenv("FILESIZE")) / 4096)
local token = os.getenv("TOKEN") or ""
local fpath = os.getenv("FPATH")
local n = 0
setup = function(thread) n = n + 1; thread:set("seed", n) end
init = function(args) math.randomseed(seed * 7919 + os.time()) end
request = function()
    local off = math.random(0, blocks - 1) * 4096
    wrk.headers["Range"] = "bytes=" .. off .. "-" .. (off + 4095)
    if token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
    return wrk.format("GET", fpath)
end
EOF
run_wrk() { # run_wrk BASEURL PATH TOKEN -> requests/s
    local out rps
    out=$(FILESIZE=$size TOKEN=$3 FPATH=$2 wrk -t2 -c64 -d"${DURATION}s" -s "$work/range.lua" "$1") || die "wrk failed"
    echo "$out" >>"$work/wrk.log"
    if grep -q "Non-2xx" <<<"$out"; then die "wrk against $1: $(grep Non-2xx <<<"$out")"; fi
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    [ -n "$rps" ] || die "wrk output without Requests/sec"
    echo "$rps"
}
# check that both return the same 4 KiB range
curl -sf -r 4096-8191 -o "$work/n.bin" "http://127.0.0.1:$nport$NPATH"
curl -sf -r 4096-8191 -H "Authorization: Bearer $TOKEN" -o "$work/v.bin" "$VURL$VPATH"
cmp "$work/n.bin" "$work/v.bin" || die "vmexportd and nginx return different bytes"

cipher() { # cipher URL [curl args]: the TLS version and cipher suite curl negotiates
    curl -sv --cacert "$c/ca.crt" -o /dev/null -r 0-0 "$@" 2>&1 |
        sed -n 's/^\* SSL connection using //p' | head -n1
}
warm() { cat "$snapfile" >/dev/null; }

declare -A R # R[proto.server.kind] = value
declare -A C # C[proto.server.kind] = CPU ticks of the server over all runs of the test
measure() { # measure plain|tls
    local proto=$1 vbase nbase i t a=() b=() p=() q=()
    if [ "$proto" = plain ]; then nbase="http://127.0.0.1:$nport"; else nbase="https://127.0.0.1:$nsport"; fi
    vbase=$VURL
    for k in c1 c8 rps; do C[$proto.v.$k]=0; C[$proto.n.$k]=0; done
    for ((i = 0; i < REPS; i++)); do
        warm; t=$(ticks "$daemon_pid")
        a+=("$(get_one "$vbase$VPATH" -H "Authorization: Bearer $TOKEN")")
        C[$proto.v.c1]=$((C[$proto.v.c1] + $(ticks "$daemon_pid") - t))
        warm; t=$(ticks "${NGINX_WORKERS[@]}")
        b+=("$(get_one "$nbase$NPATH")")
        C[$proto.n.c1]=$((C[$proto.n.c1] + $(ticks "${NGINX_WORKERS[@]}") - t))
        warm; t=$(ticks "$daemon_pid")
        p+=("$(get_par "$vbase$VPATH" -H "Authorization: Bearer $TOKEN")")
        C[$proto.v.c8]=$((C[$proto.v.c8] + $(ticks "$daemon_pid") - t))
        warm; t=$(ticks "${NGINX_WORKERS[@]}")
        q+=("$(get_par "$nbase$NPATH")")
        C[$proto.n.c8]=$((C[$proto.n.c8] + $(ticks "${NGINX_WORKERS[@]}") - t))
    done
    R[$proto.v.c1]=$(printf '%s\n' "${a[@]}" | best)
    R[$proto.n.c1]=$(printf '%s\n' "${b[@]}" | best)
    R[$proto.v.c8]=$(printf '%s\n' "${p[@]}" | best)
    R[$proto.n.c8]=$(printf '%s\n' "${q[@]}" | best)
    warm; t=$(ticks "$daemon_pid")
    R[$proto.v.rps]=$(run_wrk "$vbase" "$VPATH" "$TOKEN")
    C[$proto.v.rps]=$(($(ticks "$daemon_pid") - t))
    warm; t=$(ticks "${NGINX_WORKERS[@]}")
    R[$proto.n.rps]=$(run_wrk "$nbase" "$NPATH" "")
    C[$proto.n.rps]=$(($(ticks "${NGINX_WORKERS[@]}") - t))
    if [ "$proto" = tls ]; then
        R[tls.v.cipher]=$(cipher "$vbase$VPATH" -H "Authorization: Bearer $TOKEN")
        R[tls.n.cipher]=$(cipher "$nbase$NPATH")
    fi
    echo "  $proto done" >&2
}
measure plain
stop_daemon
start_daemon tls
measure tls

# --- snapshot create latency (TLS daemon) -------------------------------------------------------
lat=()
for ((i = 0; i < SNAPS; i++)); do
    out=$(curl -s --cacert "$c/ca.crt" -H "Authorization: Bearer $TOKEN" -X POST \
        -o "$work/snap.json" -w '%{http_code} %{time_total}' "$VURL/api/v1/vms/snap4/snapshots")
    [ "${out% *}" = 201 ] || die "snapshot create: HTTP ${out% *}: $(head -c 300 "$work/snap.json")"
    [ "$(jq '.disks | length' "$work/snap.json")" -eq 4 ] || die "snapshot without 4 disks"
    lat+=("${out#* }")
    sid=$(jq -r .id "$work/snap.json")
    curl -sf --cacert "$c/ca.crt" -H "Authorization: Bearer $TOKEN" -X DELETE \
        "$VURL/api/v1/vms/snap4/snapshots/$sid" >/dev/null || die "snapshot delete failed"
done
extents=$(jq '[.disks[].chunks | length] | add' "$work/snap.json")
snap_med=$(printf '%s\n' "${lat[@]}" | median)
snap_max=$(printf '%s\n' "${lat[@]}" | sort -g | tail -n1)
stop_daemon

# --- report ---------------------------------------------------------------------------------------
echo "# vmexportd vs nginx serving benchmark — $(date)"
echo "# $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -r); $(nginx -v 2>&1); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); curl $(curl -V | head -n1 | cut -d' ' -f2)"
echo "# file: $size bytes of random data (a reflink snapshot on XFS), page cache warmed before each test; best of $REPS for GETs, wrk $DURATION s"
echo "# load average (1, 5, 15 min) at start: $load_start; at end: $(cut -d" " -f1-3 /proc/loadavg)"
echo "# MB/s = 10^6 bytes/s; ratio = vmexportd / nginx (above 1: vmexportd is faster)"
echo
printf '| %-38s | %14s | %14s | %8s |\n' test vmexportd nginx ratio
printf '| %-38s | %14s | %14s | %8s |\n' --- ---: ---: ---:
for proto in plain tls; do
    P=$([ "$proto" = plain ] && echo "HTTP" || echo "TLS")
    awk -v l="$P full GET, 1 connection" -v v="${R[$proto.v.c1]}" -v n="${R[$proto.n.c1]}" -v s="$size" 'BEGIN {
        printf "| %-38s | %9.0f MB/s | %9.0f MB/s | %7.2fx |\n", l, s / v / 1e6, s / n / 1e6, n / v }'
    awk -v l="$P full file, 8 connections (ranges)" -v v="${R[$proto.v.c8]}" -v n="${R[$proto.n.c8]}" -v s="$size" 'BEGIN {
        printf "| %-38s | %9.0f MB/s | %9.0f MB/s | %7.2fx |\n", l, s / v / 1e6, s / n / 1e6, n / v }'
    awk -v l="$P 4 KiB ranged GETs, 64 conns (wrk)" -v v="${R[$proto.v.rps]}" -v n="${R[$proto.n.rps]}" 'BEGIN {
        printf "| %-38s | %10.0f r/s | %10.0f r/s | %7.2fx |\n", l, v, n, v / n }'
done
echo
echo "Server CPU time (user + system, all runs of a test; ratio = vmexportd / nginx, below 1: vmexportd uses less):"
echo
printf '| %-38s | %14s | %14s | %8s |\n' test vmexportd nginx ratio
printf '| %-38s | %14s | %14s | %8s |\n' --- ---: ---: ---:
for proto in plain tls; do
    P=$([ "$proto" = plain ] && echo "HTTP" || echo "TLS")
    for k in c1 c8; do
        l="$P full GET, 1 connection"
        [ "$k" = c8 ] && l="$P full file, 8 connections (ranges)"
        awk -v l="$l" -v v="${C[$proto.v.$k]}" -v n="${C[$proto.n.$k]}" -v hz="$hz" -v g="$((REPS * size))" 'BEGIN {
            gib = g / 1073741824
            printf "| %-38s | %8.2f s/GiB | %8.2f s/GiB | %7.2fx |\n", l, v / hz / gib, n / hz / gib, n ? v / n : 0 }'
    done
    awk -v l="$P 4 KiB ranged GETs, 64 conns (wrk)" -v v="${C[$proto.v.rps]}" -v n="${C[$proto.n.rps]}" \
        -v hz="$hz" -v vr="${R[$proto.v.rps]}" -v nr="${R[$proto.n.rps]}" -v d="$DURATION" 'BEGIN {
        vk = vr * d / 1000; nk = nr * d / 1000
        printf "| %-38s | %6.1f ms/kreq | %6.1f ms/kreq | %7.2fx |\n", l, v / hz * 1000 / vk, n / hz * 1000 / nk, (v / vk) / (n / nk) }'
done
echo
echo "TLS: vmexportd negotiated ${R[tls.v.cipher]}; nginx ${R[tls.n.cipher]} (curl $(curl -V | head -n1 | cut -d' ' -f2), its default preferences)"
echo
awk -v m="$snap_med" -v x="$snap_max" -v n="$SNAPS" -v e="$extents" -v d="$SNAP_DATA_MIB" 'BEGIN {
    printf "snapshot create (POST, 4 disks x 10 GiB sparse, %d MiB data each, %d extents in all, TLS): median %.1f ms, max %.1f ms over %d\n",
        d, e, m * 1000, x * 1000, n }'
