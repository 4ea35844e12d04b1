#!/bin/bash
# vmexportd against hostile and slow clients (issue 16, points 4, 16 and 17), over TLS:
#  1. 1,000 connections from 127.0.0.2 and 300 from 50 other addresses that never finish a
#     request (silent TCP, half a TLS ClientHello) do not shut others out: /healthz, a login
#     and a full download of a snapshot disk from 127.0.0.1 succeed while they stay open, and
#     one address keeps at most max_connections_per_address of them (default config: this
#     part fails on a thread-per-connection daemon with a global cap of 256);
#  2. header_timeout closes silent and half-open TLS connections; a connection whose request
#     has arrived may then idle longer (connection_timeout); a request beyond max_connections
#     is answered 503 with Retry-After and Connection: close, and the daemon serves again once
#     connections close; with one event-loop worker, a snapshot create stuck in its freeze hook
#     does not hold up /healthz or a ranged GET (slow routes run on the job pool);
#  3. TLS: 1.1, CBC suites and RSA key exchange are refused, ECDHE with AES-GCM works (an RSA
#     certificate, so that RSA key exchange would be possible); tls_priorities is checked;
#  4. the access log (-v): one line per request, transfer IDs and secret query values cut.
source "$(dirname "$0")/lib.sh"
require_root
for tool in curl jq openssl python3; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done
SLOW="python3 $(dirname "$0")/slow_clients.py"
CA=$WORK/certs/ca.crt

make_fs xfs 320 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/web01"
dd if=/dev/urandom of="$VMS/web01/root.img" bs=1M count=64 status=none
sync

# ====================================================== 1. floods of idle connections (defaults)
PORT=$(free_port)
write_config "$WORK/flood.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/flood.conf" "$PORT" && ok "daemon starts with the default limits" ||
    { not_ok "daemon starts"; exit 1; }
login admin secret && ok "login" || { not_ok "login"; exit 1; }
expect_status 201 "snapshot of web01" POST /api/v1/vms/web01/snapshots
SNAP=$(jq -r .id "$WORK/body")
SNAP_PATH=$(jq -r '.disks[0].path' "$WORK/body")

specs=(127.0.0.2:1000)
for i in $(seq 1 50); do specs+=("127.0.1.$i:6"); done
$SLOW flood "$PORT" "$WORK/flood.state" "${specs[@]}" &
flood_pid=$!
at_exit "kill $flood_pid"
for _ in $(seq 600); do [ -s "$WORK/flood.state" ] && break; sleep 0.1; done
diag "flood: $(cat "$WORK/flood.state" 2>/dev/null)"
check "1,300 flood connections are connected" grep -qx "opened 1300" "$WORK/flood.state"

got=$(curl -s --max-time 10 --cacert "$CA" -o "$WORK/hz" -w '%{http_code}' "$URL/healthz")
[ "$got" = 200 ] && ok "/healthz answers 200 during the flood" || not_ok "/healthz during the flood: $got"
TOKEN="" expect_status 200 "a login succeeds during the flood" POST /api/v1/auth/login \
    -d '{"username":"admin","password":"secret"}' --max-time 20
got=$(curl -s --max-time 30 --cacert "$CA" -H "Authorization: Bearer $TOKEN" -o "$WORK/full.dl" \
    -w '%{http_code}' "$URL/api/v1/vms/web01/snapshots/$SNAP/disks/root.img")
[ "$got" = 200 ] && ok "full download during the flood: 200" || not_ok "full download during the flood: $got"
check "the downloaded bytes equal the snapshot disk" cmp -s "$WORK/full.dl" "$SNAP_PATH"
rm -f "$WORK/full.dl"
kill -USR1 "$flood_pid"
for _ in $(seq 100); do grep -q reported "$WORK/flood.state" && break; sleep 0.1; done
from2=$(awk '$1 == "open" && $2 == "127.0.0.2" {print $3}' "$WORK/flood.state")
others=$(awk '$1 == "open" && $2 != "127.0.0.2" {n += $3} END {print n + 0}' "$WORK/flood.state")
diag "still open after the requests: ${from2:-?} from 127.0.0.2, $others from 50 other addresses"
check "127.0.0.2 holds some but at most 64 connections (${from2:-?})" \
    test "${from2:-0}" -ge 1 -a "${from2:-0}" -le 64
check "the 300 connections from 50 addresses were still open ($others)" test "$others" -ge 300
kill "$flood_pid"
wait "$flood_pid" 2>/dev/null
stop_daemon
check "the daemon stops cleanly after the flood" test $? -eq 0

# ================================================= 2. header timeout, keep-alive, 503 when full
PORT=$(free_port)
write_config "$WORK/limits.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
sed -i '/^\[server\]/a header_timeout = 2\nconnection_timeout = 60\nmax_connections = 20\nmax_connections_per_address = 8' \
    "$WORK/limits.conf"
start_daemon "$WORK/limits.conf" "$PORT" && ok "daemon starts with header_timeout = 2, max_connections = 20" ||
    { not_ok "daemon starts"; exit 1; }

$SLOW timeout "$PORT" 20 >"$WORK/timeout.out"
diag "$(tr '\n' ' ' <"$WORK/timeout.out")"
check "a silent connection is closed by header_timeout (long before connection_timeout)" \
    grep -q '^closed silent' "$WORK/timeout.out"
check "a half-open TLS handshake is closed by header_timeout" grep -q '^closed half-tls' "$WORK/timeout.out"

$SLOW keepalive "$PORT" "$CA" 4 >"$WORK/keepalive.out" 2>&1
check "keep-alive: the first request is answered" grep -qx 'first 200' "$WORK/keepalive.out"
check "keep-alive: after 4 s of silence (> header_timeout) the next request is answered" \
    grep -qx 'second 200' "$WORK/keepalive.out"

fill=()
for i in 1 2 3 4; do fill+=("127.0.2.$i"); done
$SLOW full "$PORT" "$CA" 20 "${fill[@]}" >"$WORK/full.out" 2>&1
diag "$(tr '\n' ' ' <"$WORK/full.out" | head -c 400)"
read -r _ status retry conn closed <<<"$(grep '^extra' "$WORK/full.out")"
check "a request beyond max_connections is answered 503 (not dropped)" test "${status:-}" = 503
check "the 503 has Retry-After" test -n "${retry:-}" -a "${retry:-}" != -
check "the 503 says Connection: close and the connection closes" \
    test "${conn:-}" = close -a "${closed:-}" = yes
check "the 503 body is a JSON error" grep -q '"error":"service unavailable"' "$WORK/full.out"
check "no filler connection was refused" bash -c "! grep -q '^filler' '$WORK/full.out'"
back=
for _ in $(seq 50); do
    [ "$(curl -s --max-time 5 --cacert "$CA" -o /dev/null -w '%{http_code}' "$URL/healthz")" = 200 ] &&
        { back=1; break; }
    sleep 0.1
done
check "the daemon answers 200 again once the connections are closed" test -n "$back"
stop_daemon
check "the daemon stops cleanly" test $? -eq 0

# A slow route runs on the job pool: with a single event-loop worker, /healthz and a ranged GET
# are answered while a snapshot create waits in its (sleeping) freeze hook.
printf '#!/bin/sh\ntouch "%s"\nsleep 4\ntouch "%s"\n' "$WORK/freeze.started" "$WORK/freeze.done" \
    >"$WORK/freeze.sh"
chmod +x "$WORK/freeze.sh"
sed -i '/^\[server\]/a worker_threads = 1' "$WORK/limits.conf"
printf '[snapshot]\nfreeze_command = %s\n' "$WORK/freeze.sh" >>"$WORK/limits.conf"
start_daemon "$WORK/limits.conf" "$PORT" && ok "daemon starts with one worker and a slow freeze hook" ||
    { not_ok "daemon starts"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }
api POST /api/v1/vms/web01/snapshots --max-time 30 >"$WORK/slow.code" &
slow_pid=$!
for _ in $(seq 100); do [ -e "$WORK/freeze.started" ] && break; sleep 0.1; done
check "the snapshot's freeze hook is running" test -e "$WORK/freeze.started"
got=$(curl -s --max-time 10 --cacert "$CA" -o /dev/null -w '%{http_code}' "$URL/healthz")
if [ "$got" = 200 ] && [ ! -e "$WORK/freeze.done" ]; then
    ok "/healthz answers while the snapshot create is in its hook"
else
    not_ok "/healthz during the snapshot create: $got (hook finished first: $(ls "$WORK/freeze.done" 2>/dev/null))"
fi
got=$(curl -s --max-time 10 --cacert "$CA" -H "Authorization: Bearer $TOKEN" -H "Range: bytes=4096-8191" \
    -o "$WORK/range.dl" -w '%{http_code}' "$URL/api/v1/vms/web01/snapshots/$SNAP/disks/root.img")
if [ "$got" = 206 ] && [ ! -e "$WORK/freeze.done" ]; then
    ok "a ranged GET is answered while the snapshot create is in its hook"
else
    not_ok "ranged GET during the snapshot create: $got (hook finished first: $(ls "$WORK/freeze.done" 2>/dev/null))"
fi
check "the ranged GET's bytes are the snapshot's" cmp -s "$WORK/range.dl" <(tail -c +4097 "$SNAP_PATH" | head -c 4096)
wait "$slow_pid"
check "the slow snapshot create completes with 201" grep -qx 201 "$WORK/slow.code"
stop_daemon
check "the daemon stops cleanly" test $? -eq 0

# ============================================================================ 3. TLS suites
# An RSA certificate: with it, a daemon that allowed RSA key exchange would accept it.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=rsa" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$WORK/rsa.key" -out "$WORK/rsa.crt" 2>/dev/null || { not_ok "RSA certificate"; exit 1; }
PORT=$(free_port)
write_config "$WORK/rsa.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
sed -i "s|^certificate = .*|certificate = $WORK/rsa.crt|; s|^key = .*|key = $WORK/rsa.key|" "$WORK/rsa.conf"
"$VMEXPORTD" --config "$WORK/rsa.conf" -v >>"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
at_exit "kill -9 $DAEMON_PID"
for _ in $(seq 100); do curl -s --cacert "$WORK/rsa.crt" -o /dev/null "https://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done
# tls_try NAME OPENSSL_ARGS...: 0 when a handshake with those client settings completes.
tls_try() {
    echo | timeout 10 openssl s_client -connect "127.0.0.1:$PORT" -CAfile "$WORK/rsa.crt" "$@" \
        >"$WORK/s_client.out" 2>&1 && grep -q '^New, TLSv1\.[0-3], Cipher is [A-Z]' "$WORK/s_client.out"
}
refused() { # WHAT OPENSSL_ARGS...
    local what=$1; shift
    if tls_try "$@"; then not_ok "$what is refused (negotiated: $(grep -m1 'Cipher is' "$WORK/s_client.out"))"
    else ok "$what is refused"; fi
}
works() {
    local what=$1; shift
    if tls_try "$@"; then ok "$what works ($(grep -m1 'Cipher is' "$WORK/s_client.out" | sed 's/.*Cipher is //'))"
    else not_ok "$what fails: $(tail -3 "$WORK/s_client.out" | tr '\n' ' ')"; fi
}
works "control: TLS 1.2 ECDHE-RSA-AES128-GCM-SHA256" -tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256
works "control: TLS 1.3" -tls1_3
refused "TLS 1.1" -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'
refused "TLS 1.2 RSA key exchange with AES-GCM (AES128-GCM-SHA256)" -tls1_2 -cipher AES128-GCM-SHA256
refused "TLS 1.2 RSA key exchange with CBC (AES256-SHA)" -tls1_2 -cipher AES256-SHA
refused "TLS 1.2 ECDHE with CBC (ECDHE-RSA-AES128-SHA)" -tls1_2 -cipher 'ECDHE-RSA-AES128-SHA:@SECLEVEL=0'
refused "TLS 1.2 ECDHE with CBC and SHA-256 (ECDHE-RSA-AES128-SHA256)" -tls1_2 -cipher ECDHE-RSA-AES128-SHA256
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID"

# tls_priorities: a narrower string is used; a malformed one is refused by --check and at start.
sed -i '/^\[server\]/a tls_priorities = NONE:+VERS-TLS1.2:+ECDHE-RSA:+AES-128-GCM:+AEAD:+SIGN-ALL:+GROUP-ALL:+COMP-NULL:+CTYPE-X509' \
    "$WORK/rsa.conf"
"$VMEXPORTD" --config "$WORK/rsa.conf" -v >>"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
at_exit "kill -9 $DAEMON_PID"
for _ in $(seq 100); do curl -s --cacert "$WORK/rsa.crt" -o /dev/null "https://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done
works "tls_priorities: the one suite allowed (ECDHE-RSA-AES128-GCM-SHA256)" -tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256
refused "tls_priorities: a suite it leaves out (ECDHE-RSA-AES256-GCM-SHA384)" -tls1_2 -cipher ECDHE-RSA-AES256-GCM-SHA384
refused "tls_priorities: TLS 1.3, left out" -tls1_3
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID"
sed -i 's|^tls_priorities = .*|tls_priorities = SECURE:+NO-SUCH-THING|' "$WORK/rsa.conf"
timeout 20 "$VMEXPORTD" --config "$WORK/rsa.conf" --check >"$WORK/check.out" 2>&1
rc=$?
check "--check refuses a malformed tls_priorities (exit $rc)" test "$rc" = 1
check "and names the key and the bad part" grep -q 'tls_priorities: .*NO-SUCH-THING' "$WORK/check.out"

# ========================================================================== 4. access log
PORT=$(free_port)
write_config "$WORK/log.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
: >"$WORK/daemon.log"
start_daemon "$WORK/log.conf" "$PORT" || { not_ok "daemon starts"; exit 1; }
login admin secret || { not_ok "login"; exit 1; }
api GET "/api/v1/vms/web01/snapshots/$SNAP/disks/root.img" -H "Range: bytes=0-4095" >/dev/null
expect_status 201 "upload transfer for the log test" POST /api/v1/vms/web01/uploads \
    -d '{"disk":"new.img","size":1048576}'
XID=$(jq -r .id "$WORK/body")
head -c 4096 /dev/urandom >"$WORK/part"
TOKEN="" expect_status 200 "PUT /images/ID with a secret query parameter" \
    PUT "/images/$XID?access_token=TOPSECRETVALUE&flush=n" -H "Content-Range: bytes 0-4095/*" -T "$WORK/part"
expect_status 200 "OPTIONS /api/v1/transfers/ID" OPTIONS "/api/v1/transfers/$XID"
stop_daemon
grep 'access:' "$WORK/daemon.log" >"$WORK/access.log"
diag "$(head -c 1200 "$WORK/access.log")"
check "access log: the login, with its user" grep -Eq 'access: 127\.0\.0\.1 "POST /api/v1/auth/login" 200 [0-9]+ [0-9.]+ ms admin$' "$WORK/access.log"
check "access log: the ranged GET with status, bytes and user" \
    grep -Eq "\"GET /api/v1/vms/web01/snapshots/$SNAP/disks/root.img\" 206 4096 [0-9.]+ ms admin\$" "$WORK/access.log"
check "access log: the PUT with the ID cut to 8 characters and the secret value cut" \
    grep -Fq "\"PUT /images/${XID:0:8}...?access_token=...&flush=n\" 200" "$WORK/access.log"
check "access log: the transfer route with the ID cut" \
    grep -Fq "\"OPTIONS /api/v1/transfers/${XID:0:8}...\" 200" "$WORK/access.log"
check "the full transfer ID is in no access line" bash -c "! grep -qF '$XID' '$WORK/access.log'"
check "the secret query value is nowhere in the log" bash -c "! grep -qF TOPSECRETVALUE '$WORK/daemon.log'"
check "the token is nowhere in the log" bash -c "! grep -qF '$TOKEN' '$WORK/daemon.log'"
