#!/bin/bash
# vmexportd against slowloris clients (issue 16, point 4), over TLS: a client that trickles its
# TLS ClientHello or its request headers one byte a second is never silent for long, so
# libmicrohttpd's timeout (which counts silence) alone would keep it for ever.  With
# header_timeout = 2 and connection_timeout = 6, such connections are closed once their total
# time runs out: the handshake and the first request's headers within header_timeout of the
# accept, a keep-alive request's headers within connection_timeout + header_timeout of the
# previous answer (bounds asserted generously).  Meanwhile /healthz answers, and a normal
# keep-alive client that pauses longer than header_timeout between its requests is served.
source "$(dirname "$0")/lib.sh"
require_root
for tool in curl python3; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done
TRICKLE="python3 $(dirname "$0")/trickle_clients.py"
CA=$WORK/certs/ca.crt
mkdir -p "$WORK/vms/web01"

PORT=$(free_port)
write_config "$WORK/slow.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $WORK/vms" || { not_ok "write config"; exit 1; }
sed -i '/^\[server\]/a header_timeout = 2\nconnection_timeout = 6' "$WORK/slow.conf"
start_daemon "$WORK/slow.conf" "$PORT" && ok "daemon starts with header_timeout = 2" ||
    { not_ok "daemon starts"; exit 1; }

$TRICKLE trickle "$PORT" "$CA" 20 >"$WORK/trickle.out" 2>&1 &
trickle_pid=$!
at_exit "kill $trickle_pid"
$TRICKLE keepalive "$PORT" "$CA" 4 >"$WORK/keepalive.out" 2>&1
got=$(curl -s --max-time 10 --cacert "$CA" -o "$WORK/hz" -w '%{http_code}' "$URL/healthz")
check "/healthz answers 200 while the slowloris clients trickle ($got)" test "$got" = 200 -a -s "$WORK/hz"
check "keep-alive: the first request is answered" grep -qx 'first 200' "$WORK/keepalive.out"
check "keep-alive: after 4 s of silence (> header_timeout) the next request is answered" \
    grep -qx 'second 200' "$WORK/keepalive.out"
wait "$trickle_pid"
diag "$(tr '\n' ' ' <"$WORK/trickle.out")"

# closed_within KIND LIMIT: whether the trickling connection KIND was closed within LIMIT s.
closed_within() {
    local secs
    secs=$(awk -v k="$1" '$1 == "closed" && $2 == k {print $3}' "$WORK/trickle.out")
    [ -n "$secs" ] && awk -v s="$secs" -v l="$2" 'BEGIN {exit !(s < l)}'
}
check "a TLS ClientHello trickled a byte a second is cut off (closed within 8 s)" \
    closed_within hello 8
check "request headers trickled a byte a second are cut off (closed within 8 s)" \
    closed_within headers 8
check "a keep-alive request's headers trickled a byte a second are cut off (closed within 14 s)" \
    closed_within keepalive 14
check "the daemon logs why it closed them" \
    grep -q 'request headers were not complete in time' "$WORK/daemon.log"
got=$(curl -s --max-time 10 --cacert "$CA" -o "$WORK/hz" -w '%{http_code}' "$URL/healthz")
check "/healthz answers 200 afterwards ($got)" test "$got" = 200
stop_daemon
check "the daemon stops cleanly" test $? -eq 0
