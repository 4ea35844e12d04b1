#!/bin/bash
# The remote commands (vms, snapshots, snapshot create|delete|purge, download) against a real
# vmexportd over TLS on a reflink XFS: tables and JSON, global options anywhere, environment
# variables, password files, token caching and re-login, clear errors (wrong password,
# unreachable server, bad CA), full and incremental downloads reproducing the snapshots bit for
# bit with one and several connections, mutual TLS, and usage errors.
source "$(dirname "$0")/lib.sh"
require_root

# expect_exit CODE DESCRIPTION COMMAND...: exit status must be CODE; stdout in $WORK/out,
# stderr in $WORK/err.
expect_exit() {
    local want=$1 what=$2; shift 2
    "$@" >"$WORK/out" 2>"$WORK/err"
    local rc=$?
    if [ "$rc" -eq "$want" ]; then ok "$what"; else not_ok "$what (exit $rc, want $want): $(head -3 "$WORK/err")"; fi
}

# check_err DESCRIPTION PATTERN: the last command's stderr matches (grep -E).
check_err() {
    if grep -qE -- "$2" "$WORK/err"; then ok "$1"; else not_ok "$1: stderr was: $(head -3 "$WORK/err")"; fi
}

# Never touch the real ~/.cache; no connection settings from the caller's environment.
export XDG_CACHE_HOME=$WORK/cache
unset VMEXPORT_SERVER VMEXPORT_USER VMEXPORT_PASSWORD VMEXPORT_CACERT

# --- help and usage errors (no daemon needed) ---
for c in vms snapshots snapshot download; do
    expect_exit 0 "$c --help exits 0" "$VMEXPORT" "$c" --help
    check "$c --help has the connection options and exit status" \
        bash -c "grep -q -- '--password-file FILE' '$WORK/out' && grep -q 'Exit status' '$WORK/out'"
done
expect_exit 0 "vmexport --help lists the remote commands" "$VMEXPORT" --help
check "download is listed" grep -q '^  download ' "$WORK/out"
expect_exit 2 "vms with an operand is a usage error" "$VMEXPORT" vms extra
expect_exit 2 "snapshots without a VM is a usage error" "$VMEXPORT" snapshots
expect_exit 2 "snapshot without a subcommand is a usage error" "$VMEXPORT" snapshot
expect_exit 2 "unknown snapshot subcommand is a usage error" "$VMEXPORT" snapshot frob web01
check_err "the message names the subcommands" "create, delete or purge"
expect_exit 2 "snapshot delete without SNAPSHOT is a usage error" "$VMEXPORT" snapshot delete web01
expect_exit 2 "download without --out-dir is a usage error" "$VMEXPORT" download web01 s1
check_err "the message asks for --out-dir" "--out-dir DIR is required"
expect_exit 2 "download --jobs 0 is a usage error" "$VMEXPORT" download --jobs 0 -o "$WORK/x" web01 s1
expect_exit 2 "download --jobs abc is a usage error" "$VMEXPORT" download --jobs abc -o "$WORK/x" web01 s1
expect_exit 2 "unknown option is a usage error" "$VMEXPORT" vms --frob
expect_exit 2 "--server without a value is a usage error" "$VMEXPORT" vms --server
check_err "the message names the option" "'--server' needs a value"
expect_exit 1 "no server configured fails (1)" "$VMEXPORT" vms
check_err "and says how to give one" "no server: use --server URL or VMEXPORT_SERVER"
expect_exit 1 "no user configured fails" "$VMEXPORT" --server https://127.0.0.1:1 vms
check_err "and says how to give one" "no user: use --user NAME or VMEXPORT_USER"
expect_exit 1 "no password configured fails" "$VMEXPORT" --server https://127.0.0.1:1 --user admin vms
check_err "and says how to give one" "no password: use --password-file FILE or VMEXPORT_PASSWORD"
expect_exit 1 "a missing password file fails" "$VMEXPORT" --server https://127.0.0.1:1 --user admin \
    --password-file "$WORK/nope" vms
check_err "naming the file and the cause" "password file $WORK/nope: No such file or directory"

# --- a daemon with one two-disk VM and one VM without disks ---
make_fs xfs 400 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/web01" "$VMS/empty01"
truncate -s 64M "$VMS/web01/root.img"
dd if=/dev/urandom of="$VMS/web01/root.img" bs=1M count=12 seek=4 conv=notrunc status=none
dd if=/dev/zero of="$VMS/web01/root.img" bs=1M count=1 seek=20 conv=notrunc status=none # zero data
dd if=/dev/urandom of="$VMS/web01/root.img" bs=64K count=4 seek=700 conv=notrunc status=none
truncate -s 16M "$VMS/web01/data.raw"
dd if=/dev/urandom of="$VMS/web01/data.raw" bs=64K count=3 seek=17 conv=notrunc status=none
sync

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" && ok "daemon starts on 127.0.0.1:$PORT" ||
    { not_ok "daemon starts"; exit 1; }
CA=$WORK/certs/ca.crt
echo secret >"$WORK/pw"
chmod 600 "$WORK/pw"
R=("$VMEXPORT" --server "$URL" --user admin --password-file "$WORK/pw" --cacert "$CA")

# logins_ok: successful logins so far, from the daemon's metrics (TOKEN from one curl login).
login admin secret || not_ok "curl login for metrics"
logins_ok() {
    curl -s --cacert "$CA" -H "Authorization: Bearer $TOKEN" "$URL/metrics" |
        awk '/^vmexport_http_requests_total\{route="login",status="200"\}/ {n = $2} END {print n + 0}'
}

# --- vms ---
expect_exit 0 "vms prints a table" "${R[@]}" vms
check "table header" grep -qE '^NAME +PROVIDER +DISKS +SIZE +SNAPSHOTS +COMPATIBLE$' "$WORK/out"
check "web01 row: 2 disks, 80 MiB, no snapshots, compatible" \
    grep -qE '^web01 +local +2 +80\.0 MiB +0 +yes$' "$WORK/out"
check "empty01 row: not compatible" grep -qE '^empty01 +local +0 +0 B +0 +no$' "$WORK/out"
expect_exit 0 "vms --json" "${R[@]}" vms --json
check "vms --json is the server's VM list" \
    jq -e 'map(.name) == ["empty01","web01"] and (.[1].disks | length == 2) and .[1].snapshot_compatible' "$WORK/out"

# --- global options anywhere, environment, password file ---
expect_exit 0 "global options after the command name" \
    "$VMEXPORT" vms --json --server "$URL" --user admin --password-file "$WORK/pw" --cacert "$CA"
check "same answer" jq -e 'length == 2' "$WORK/out"
expect_exit 0 "--opt=value spelling, mixed before and after" \
    "$VMEXPORT" --server="$URL" --user=admin vms --password-file="$WORK/pw" --cacert="$CA" --json
expect_exit 0 "-v before, --verbose after the command name" "${R[@]}" -v vms --verbose
check_err "verbose logs the requests" "GET /api/v1/vms"
expect_exit 0 "connection from VMEXPORT_* variables" env VMEXPORT_SERVER="$URL" VMEXPORT_USER=admin \
    VMEXPORT_PASSWORD=secret VMEXPORT_CACERT="$CA" "$VMEXPORT" vms
check "table from env settings" grep -q '^web01 ' "$WORK/out"
expect_exit 0 "options override the variables" env VMEXPORT_SERVER=https://127.0.0.1:1 \
    VMEXPORT_USER=nobody VMEXPORT_PASSWORD=secret "${R[@]}" vms
printf 'wonderland\r\nsecond line\n' >"$WORK/pw-alice"
expect_exit 0 "--password-file uses the first line (CRLF stripped)" \
    "$VMEXPORT" --server "$URL" --user alice --password-file "$WORK/pw-alice" --cacert "$CA" vms

# --- token cache ---
files=("$XDG_CACHE_HOME"/vmexport/token-*)
check "tokens are cached, one file per (server, user)" test "${#files[@]}" -eq 2
check "cache files are mode 0600" bash -c "stat -c %a $XDG_CACHE_HOME/vmexport/token-* | sort -u | grep -qx 600"
before=$(logins_ok)
expect_exit 0 "a second command" "${R[@]}" vms
expect_exit 0 "and a third" "${R[@]}" snapshots web01
check "reuse the cached token: no new login (login count $before -> $(logins_ok))" test "$(logins_ok)" -eq "$before"
export XDG_CACHE_HOME=$WORK/cache-fresh
expect_exit 0 "with an empty cache" "${R[@]}" vms
check "a command logs in once (login count $before -> $(logins_ok))" test "$(logins_ok)" -eq $((before + 1))
# A cached token the server refuses (bad signature, exp still ahead): log in again and retry.
f=$(echo "$XDG_CACHE_HOME"/vmexport/token-*)
tok=$(cat "$f")
sig=${tok##*.}
if [ "${sig:0:1}" = A ]; then bad=B; else bad=A; fi
printf '%s.%s%s\n' "${tok%.*}" "$bad" "${sig:1}" >"$f"
expect_exit 0 "a refused cached token: one new login and the request succeeds" "${R[@]}" vms
check "logged in once more" test "$(logins_ok)" -eq $((before + 2))
check "the cache holds the new token" bash -c "[ \"\$(cat '$f')\" != '${tok%.*}.$bad${sig:1}' ]"
export XDG_CACHE_HOME=$WORK/cache

# --- clear errors ---
echo wrong >"$WORK/pw-wrong"
XDG_CACHE_HOME=$WORK/cache-wrong expect_exit 1 "wrong password fails (1)" \
    "$VMEXPORT" --server "$URL" --user admin --password-file "$WORK/pw-wrong" --cacert "$CA" vms
check_err "says login failed: invalid credentials, naming the server" \
    "^vmexport vms: $URL: login failed: invalid credentials"
DEAD=$(free_port)
expect_exit 1 "unreachable server fails (1)" "$VMEXPORT" --server "https://127.0.0.1:$DEAD" \
    --user admin --password-file "$WORK/pw" --cacert "$CA" -v vms
check_err "says connection refused, naming the server" "https://127.0.0.1:$DEAD: connection refused"
check "after 5 retries with backoff" bash -c "[ \$(grep -c 'retry [1-5] of 5 in' '$WORK/err') -eq 5 ] &&
    grep -q 'retry 5 of 5 in 1600 ms' '$WORK/err'"
expect_exit 1 "missing --cacert file fails" "${R[@]}" --cacert "$WORK/nope.crt" vms
check_err "naming the file" "--cacert $WORK/nope.crt: No such file or directory"
make_cert "$WORK/other" || not_ok "make another CA"
XDG_CACHE_HOME=$WORK/cache-ca expect_exit 1 "a CA that did not sign the server fails" \
    "${R[@]}" --cacert "$WORK/other/ca.crt" vms
check_err "certificate verify failed, naming the CA file" "certificate verify failed.*$WORK/other/ca.crt"
XDG_CACHE_HOME=$WORK/cache-ca expect_exit 1 "no --cacert: the system store does not know the test CA" \
    "$VMEXPORT" --server "$URL" --user admin --password-file "$WORK/pw" vms
check_err "suggests --cacert" "certificate verify failed.*use --cacert"
echo "not a certificate" >"$WORK/garbage.crt"
XDG_CACHE_HOME=$WORK/cache-ca expect_exit 1 "a --cacert that holds no certificate fails" \
    "${R[@]}" --cacert "$WORK/garbage.crt" vms
check_err "naming the file" "$WORK/garbage.crt"
XDG_CACHE_HOME=$WORK/cache-ca expect_exit 0 "--insecure skips verification" \
    "$VMEXPORT" --server "$URL" --user admin --password-file "$WORK/pw" --insecure vms
expect_exit 1 "snapshots of an unknown VM fails" "${R[@]}" snapshots nope
check_err "with the server's reason" "VM 'nope' not found"
expect_exit 1 "snapshot create of a VM without disks fails" "${R[@]}" snapshot create empty01
check_err "with the server's reason" "has no disks"

# --- snapshots ---
expect_exit 0 "snapshots of a VM without any" "${R[@]}" snapshots web01
check "header only" bash -c "grep -qE '^ID +CREATED +DISKS +SIZE$' '$WORK/out' && [ \$(wc -l <'$WORK/out') -eq 1 ]"
expect_exit 0 "snapshot create" "${R[@]}" snapshot create web01
check "prints the new snapshot" grep -qE '^created snapshot [0-9a-f-]{36} of web01: 2 disks, 80\.0 MiB' "$WORK/out"
S0=$(grep -oE '[0-9a-f-]{36}' "$WORK/out")
expect_exit 0 "snapshot create --json" "${R[@]}" snapshot create --json web01
S1=$(jq -r .id "$WORK/out")
cp "$WORK/out" "$WORK/s1.json"
check "the snapshot's JSON with its chunks" jq -e '.vm_id == "web01" and (.disks | length == 2) and all(.disks[]; .chunks | type == "array")' "$WORK/s1.json"
cp --sparse=always "$VMS/web01/root.img" "$WORK/root.at1"
cp --sparse=always "$VMS/web01/data.raw" "$WORK/data.at1"
expect_exit 0 "snapshots table" "${R[@]}" snapshots web01
check "two rows, oldest first, with time, disks and size" \
    bash -c "grep -qE '^$S0 +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z +2 +80\.0 MiB$' '$WORK/out' && sed -n 3p '$WORK/out' | grep -q '^$S1 '"
expect_exit 0 "snapshots --json" "${R[@]}" snapshots --json web01
check "the list without chunks" jq -e --arg a "$S0" --arg b "$S1" 'map(.id) == [$a, $b] and all(.[].disks[]; has("chunks") | not)' "$WORK/out"
expect_exit 0 "snapshot delete" "${R[@]}" snapshot delete web01 "$S0"
check "says what it deleted" grep -q "deleted snapshot $S0 of web01" "$WORK/out"
expect_exit 1 "deleting it again fails" "${R[@]}" snapshot delete web01 "$S0"
check_err "not found" "snapshot '$S0' of VM 'web01' not found"

# --- full download ---
total1=$(jq '[.disks[].chunks[].length] | add' "$WORK/s1.json")
expect_exit 0 "download --jobs 1" "${R[@]}" download --jobs 1 --out-dir "$WORK/full1" web01 "$S1"
check "root.img equals the disk at snapshot time" cmp "$WORK/full1/root.img" "$WORK/root.at1"
check "data.raw equals the disk at snapshot time" cmp "$WORK/full1/data.raw" "$WORK/data.at1"
check "summary line" grep -qE "^downloaded snapshot $S1 of web01 into $WORK/full1: 2 disks, .* fetched in [0-9.]+ s" "$WORK/out"
check "the files are sparse" test "$(du -k "$WORK/full1/root.img" | cut -f1)" -lt 20000
expect_exit 0 "download --jobs 4 --json" "${R[@]}" download -J 4 --json -o "$WORK/full4" web01 "$S1"
check "root.img (4 connections) equals the disk" cmp "$WORK/full4/root.img" "$WORK/root.at1"
check "data.raw (4 connections) equals the disk" cmp "$WORK/full4/data.raw" "$WORK/data.at1"
check "--json: fetched exactly the chunks" jq -e --argjson t "$total1" \
    '.bytes_fetched == $t and .snapshot != null and .compared_to == null and (.disks | length == 2) and .seconds >= 0' "$WORK/out"
check "all-zero data stays a hole" bash -c \
    "'$VMEXPORT' map --json '$WORK/full4/root.img' | jq -e 'all(.extents[]; .start + .length <= 20971520 or .start >= 22020096)'"
# Written pieces leave the page cache behind the download (checked before anything reads them).
expect_exit 0 "download onto XFS" "${R[@]}" download -J 4 -o "$XFS/dl" web01 "$S1"
cached=$(fincore --bytes --noheadings --output RES "$XFS/dl/root.img" "$XFS/dl/data.raw" |
    awk '{ s += $1 } END { print s + 0 }')
check "download left $cached bytes of its disks in the page cache" test "$cached" -lt 65536
check "root.img (XFS) equals the disk" cmp "$XFS/dl/root.img" "$WORK/root.at1"
check "data.raw (XFS) equals the disk" cmp "$XFS/dl/data.raw" "$WORK/data.at1"
rm -rf "$XFS/dl"
expect_exit 0 "downloading again over the files" "${R[@]}" download -o "$WORK/full4" web01 "$S1"
check "still identical" cmp "$WORK/full4/root.img" "$WORK/root.at1"

# --- change the VM: a write, a discard, growth; and data.raw rewritten in part ---
dd if=/dev/urandom of="$VMS/web01/root.img" bs=4K count=1 seek=2000 conv=notrunc,fsync status=none
fallocate --punch-hole -o $((6 << 20)) -l $((1 << 20)) "$VMS/web01/root.img"
truncate -s 80M "$VMS/web01/root.img"
dd if=/dev/urandom of="$VMS/web01/root.img" bs=64K count=2 seek=1200 conv=notrunc,fsync status=none
dd if=/dev/urandom of="$VMS/web01/data.raw" bs=4K count=3 seek=300 conv=notrunc,fsync status=none
sync
expect_exit 0 "second snapshot" "${R[@]}" snapshot create --json web01
S2=$(jq -r .id "$WORK/out")
cp --sparse=always "$VMS/web01/root.img" "$WORK/root.at2"
cp --sparse=always "$VMS/web01/data.raw" "$WORK/data.at2"

# --- incremental download ---
cp -a --sparse=always "$WORK/full1" "$WORK/inc1"
cp -a --sparse=always "$WORK/full1" "$WORK/inc4"
expect_exit 0 "download --diff-from (1 connection)" "${R[@]}" download --diff-from "$S1" --jobs 1 \
    --json --out-dir "$WORK/inc1" web01 "$S2"
check "root.img now equals snapshot 2 bit for bit" cmp "$WORK/inc1/root.img" "$WORK/root.at2"
check "data.raw now equals snapshot 2 bit for bit" cmp "$WORK/inc1/data.raw" "$WORK/data.at2"
check "only the changes were fetched, the discard zeroed" \
    jq -e --arg p "$S1" '.compared_to == $p and .bytes_fetched < 1048576 and .bytes_zeroed == 1048576' "$WORK/out"
expect_exit 0 "download --diff-from (4 connections)" "${R[@]}" download -d "$S1" -J 4 \
    -o "$WORK/inc4" web01 "$S2"
check "root.img (4 connections) equals snapshot 2" cmp "$WORK/inc4/root.img" "$WORK/root.at2"
check "data.raw (4 connections) equals snapshot 2" cmp "$WORK/inc4/data.raw" "$WORK/data.at2"
check "summary names the base" grep -qE "^applied snapshot $S2 of web01 into $WORK/inc4: .*changes since $S1, 1\.0 MiB zeroed" "$WORK/out"
mkdir -p "$WORK/empty"
expect_exit 1 "--diff-from into a directory without the base's files fails" \
    "${R[@]}" download --diff-from "$S1" -o "$WORK/empty" web01 "$S2"
check_err "naming the missing file" "$WORK/empty/(root\.img|data\.raw): No such file or directory \(--diff-from"
check "and nothing was created there" test -z "$(ls -A "$WORK/empty")"
expect_exit 1 "--diff-from a newer snapshot fails" "${R[@]}" download --diff-from "$S2" \
    -o "$WORK/inc1" web01 "$S1"
check_err "with the server's reason" "is not older than"
expect_exit 1 "download of an unknown snapshot fails" "${R[@]}" download -o "$WORK/x" web01 nope
check_err "with the server's reason" "snapshot 'nope' of VM 'web01' not found"
expect_exit 1 "download under a file (not a directory) fails" "${R[@]}" download \
    -o "$WORK/pw/sub" web01 "$S2"
check_err "naming the directory and the cause" "$WORK/pw/sub: Not a directory"

# --- purge ---
expect_exit 0 "snapshot purge" "${R[@]}" snapshot purge web01
check "says so" grep -q "deleted every snapshot of web01" "$WORK/out"
expect_exit 0 "snapshots after purge" "${R[@]}" snapshots --json web01
check "none left" jq -e '. == []' "$WORK/out"

# --- mutual TLS: a second daemon that requires client certificates ---
PORT2=$(free_port)
write_config "$WORK/mtls.conf" "$PORT2" "$WORK/state2" "[provider.local]" "type = dir" \
    "path = $VMS" "[server]" "ca_certificate = $CA" || not_ok "write mTLS config"
URL1=$URL
if start_daemon "$WORK/mtls.conf" "$PORT2"; then
    M=("$VMEXPORT" --server "$URL" --user admin --password-file "$WORK/pw" --cacert "$CA")
    expect_exit 1 "without a client certificate the server refuses" "${M[@]}" vms
    check_err "with its reason" "client certificate"
    expect_exit 0 "--cert and --key" "${M[@]}" --cert "$WORK/certs/client.crt" \
        --key "$WORK/certs/client.key" vms
    check "listing over mutual TLS" grep -q '^web01 ' "$WORK/out"
else
    not_ok "second daemon with client certificates starts"
fi
URL=$URL1

# --- a fake server that fails twice with 503 and then ignores Range (plain HTTP) ---
if command -v python3 >/dev/null; then
    cat >"$WORK/fake.py" <<'PY'
import base64, json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
DATA = bytes(range(256)) * 48  # 12 KiB
failures = {"left": 2}
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def snap(chunk):
    return {"id": "s", "disks": [{"name": "d.img", "size": len(DATA), "chunks": [chunk]}]}
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, code, body, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        tok = b64(b'{"alg":"HS256"}') + "." + b64(json.dumps({"exp": int(time.time()) + 3600}).encode()) + ".x"
        self.reply(200, json.dumps({"token": tok, "expires_in": 3600}).encode())
    def do_GET(self):
        p = self.path
        if p == "/api/v1/vms/m/snapshots/full":
            return self.reply(200, json.dumps(snap({"start": 0, "length": len(DATA)})).encode())
        if p == "/api/v1/vms/m/snapshots/head":
            return self.reply(200, json.dumps(snap({"start": 0, "length": 4096})).encode())
        if p == "/api/v1/vms/m/snapshots/part":
            return self.reply(200, json.dumps(snap({"start": 4096, "length": 4096})).encode())
        if p.endswith("/disks/d.img"):
            if failures["left"] > 0:
                failures["left"] -= 1
                return self.reply(503, b'{"error":"unavailable","details":"try later"}')
            return self.reply(200, DATA, "application/octet-stream")  # Range ignored
        self.reply(404, b'{"error":"not found","details":"no such API route"}')
srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
srv.serve_forever()
PY
    FPORT=$(free_port)
    python3 "$WORK/fake.py" "$FPORT" >"$WORK/fake.out" 2>&1 &
    at_exit "kill $!"
    for _ in $(seq 50); do grep -q ready "$WORK/fake.out" 2>/dev/null && break; sleep 0.1; done
    F=("$VMEXPORT" --server "http://127.0.0.1:$FPORT" --user u --password-file "$WORK/pw")
    expect_exit 0 "503 twice, then a 200 that ignores Range from offset 0 and fits" \
        "${F[@]}" -v download -o "$WORK/fake" m full
    check "the two 503s were retried" bash -c "[ \$(grep -c 'server error, retry' '$WORK/err') -eq 2 ]"
    check "the whole answer landed in the file" cmp "$WORK/fake/d.img" <(python3 -c \
        'import sys; sys.stdout.buffer.write(bytes(range(256)) * 48)')
    expect_exit 1 "a 200 that ignores Range at another offset is an error" \
        "${F[@]}" download -o "$WORK/fake2" m part
    check_err "saying the server answered another range" "answered another range than bytes 4096-"
    expect_exit 1 "a 200 that ignores Range and does not fit the buffer is an error" \
        "${F[@]}" download -o "$WORK/fake3" m head
    check_err "saying the server sent too much" "sent more than the 4096 bytes asked for"
else
    skip "python3 missing: no fake-server checks"
fi
