#!/bin/bash
# Authentication attacks against vmexportd over TLS (issue 16, points 7, 8, 9 and 11):
# - a users file that others can read is refused at start, by --check and at SIGHUP;
# - every route for every role (admin, operator, reader) is allowed or 403, and 401 without a
#   token, with the outcome checked (snapshots made or not, bytes written or not);
# - spraying one user's password from 300 addresses of 127.0.0.0/8 gets no more password checks
#   than the per-user limit, then 429 with Retry-After, and the log says so;
# - tokens of a removed user and of a user whose password changed stop working after SIGHUP;
# - POST /api/v1/auth/logout revokes a token, also across a restart.
source "$(dirname "$0")/lib.sh"
require_root
for tool in curl jq openssl sqlite3 xargs; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done

CA=$WORK/certs/ca.crt
PER_USER=10 # login_failures_per_user default
WINDOW=600  # login_failure_window: long enough that the spray below fits in one window
SPRAY=300   # more addresses than the old 256-entry table held

make_fs xfs 400 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/web01" "$VMS/purge01"
truncate -s 8M "$VMS/web01/root.img" "$VMS/purge01/root.img"
head -c 3M /dev/urandom | dd of="$VMS/web01/root.img" bs=1M seek=1 conv=notrunc status=none

STATE=$WORK/state
mkdir -p "$STATE"
hash() { openssl passwd -6 "$1"; }
write_users() { # write_users EXTRA_LINES...: the users of this test, mode 0600
    {
        echo "# no role: admin, as before roles existed"
        echo "admin:$(hash secret)"
        echo "op:$(hash op-pw):operator"
        echo "rd:$(hash rd-pw):reader"
        echo "alice:$(hash alice-pw):admin"
        local l
        for l in "$@"; do echo "$l"; done
    } >"$STATE/users.new"
    chmod 600 "$STATE/users.new"
    mv "$STATE/users.new" "$STATE/users"
}
write_users "gone:$(hash gone-pw):reader" "pwchg:$(hash old-pw):operator"
PORT=$(free_port)
CONF=$WORK/vmexportd.conf
write_config "$CONF" "$PORT" "$STATE" "[auth]" "login_failure_window = $WINDOW" \
    "[provider.local]" "type = dir" "path = $VMS" ||
    { not_ok "write config"; exit 1; }

# ============================================================ 1. users file permissions
chmod 644 "$STATE/users"
out=$("$VMEXPORTD" --config "$CONF" --check 2>&1)
rc=$?
[ $rc = 1 ] && ok "--check refuses a users file readable by others" ||
    not_ok "--check with a 0644 users file: exit $rc: $out"
check "the message names the file and the cause" grep -q "$STATE/users: users file is accessible by others" <<<"$out"
out=$(timeout 20 "$VMEXPORTD" --config "$CONF" 2>&1)
rc=$?
[ $rc = 1 ] && ok "the daemon does not start with it" || not_ok "start with a 0644 users file: exit $rc"
check "saying why" grep -q "users file is accessible by others" <<<"$out"
chmod 620 "$STATE/users"
check_fails "a group-writable users file is refused too" "$VMEXPORTD" --config "$CONF" --check
chmod 640 "$STATE/users"
check "a 0640 users file is accepted" "$VMEXPORTD" --config "$CONF" --check
chmod 600 "$STATE/users"

start_daemon "$CONF" "$PORT" && ok "daemon starts" || { not_ok "daemon starts"; exit 1; }

# token USER PASSWORD: prints a fresh token (empty on failure).
token() {
    curl -s --cacert "$CA" -d "{\"username\":\"$1\",\"password\":\"$2\"}" "$URL/api/v1/auth/login" |
        jq -r '.token // empty'
}
T_admin=$(token admin secret)
T_op=$(token op op-pw)
T_rd=$(token rd rd-pw)
check "every role logs in" test -n "$T_admin" -a -n "$T_op" -a -n "$T_rd"
ADMIN=$T_admin

# as WHO METHOD PATH [CURL ARGS...]: the status of a request with WHO's token (none: no token);
# body in $WORK/body.
as() {
    local who=$1; shift
    local t=""
    [ "$who" != none ] && t=$(eval echo "\$T_$who")
    TOKEN=$t api "$@"
}
# snap_new VM: a new snapshot made by admin; prints its ID.
snap_new() {
    TOKEN=$ADMIN api POST "/api/v1/vms/$1/snapshots" >/dev/null
    jq -r '.id // empty' "$WORK/body"
}
# upload_new DISK: a new 1 MiB upload into web01 made by admin; prints the transfer ID.
upload_new() {
    TOKEN=$ADMIN api POST /api/v1/vms/web01/uploads -d "{\"disk\":\"$1\",\"size\":1048576}" >/dev/null
    jq -r '.id // empty' "$WORK/body"
}
rank() { case $1 in admin) echo 0 ;; op|operator) echo 1 ;; rd|reader) echo 2 ;; esac; }
# allowed WHO MINROLE: whether WHO's role may use a route for MINROLE.
allowed() { [ "$(rank "$1")" -le "$(rank "$2")" ]; }
# expect WHO MINROLE WANT WHAT METHOD PATH [ARGS...]: WANT when allowed, else 403.
expect() {
    local who=$1 min=$2 want=$3 what=$4; shift 4
    local got
    got=$(as "$who" "$@")
    if allowed "$who" "$min"; then
        [ "$got" = "$want" ] && ok "$who: $what is $want" ||
            not_ok "$who: $what: HTTP $got, want $want: $(head -c 200 "$WORK/body")"
    else
        [ "$got" = 403 ] && jq -e '.error == "forbidden"' "$WORK/body" >/dev/null &&
            ok "$who: $what is 403" ||
            not_ok "$who: $what: HTTP $got, want 403: $(head -c 200 "$WORK/body")"
    fi
    [ "$got" = "$want" ]
}

# ============================================================ 2. the route x role matrix
S0=$(snap_new web01)
check "a snapshot to read" test -n "$S0"
DISK=/api/v1/vms/web01/snapshots/$S0/disks/root.img
n=0
for who in admin op rd; do
    # --- lists and downloads: every role ---
    expect $who reader 200 "GET /vms" GET /api/v1/vms &&
        check "$who: the VMs are listed" jq -e 'map(.name) | sort == ["purge01","web01"]' "$WORK/body"
    expect $who reader 200 "GET /vms/web01" GET /api/v1/vms/web01
    expect $who reader 200 "GET /vms/web01/snapshots" GET /api/v1/vms/web01/snapshots
    expect $who reader 200 "GET a snapshot" GET "/api/v1/vms/web01/snapshots/$S0"
    expect $who reader 200 "GET /snapshots" GET /api/v1/snapshots
    expect $who reader 200 "GET disk data" GET "$DISK" &&
        check "$who: the disk's bytes are served" cmp -s "$WORK/body" "$VMS/web01/root.img"
    expect $who reader 206 "GET disk data with Range" GET "$DISK" -H "Range: bytes=1048576-1114111" &&
        check "$who: the range's bytes" cmp -s "$WORK/body" <(tail -c +1048577 "$VMS/web01/root.img" | head -c 65536)
    expect $who reader 200 "HEAD disk data" HEAD "$DISK" -I
    expect $who reader 200 "GET changes" GET "$DISK/changes?changeId=*"
    expect $who admin 200 "GET /metrics" GET /metrics &&
        check "$who: metrics served" grep -q '^vmexport_' "$WORK/body"
    expect $who admin 200 "GET /api/v1/metrics" GET /api/v1/metrics

    # --- snapshots: operator and admin ---
    before=$(TOKEN=$ADMIN api GET /api/v1/vms/web01/snapshots >/dev/null; jq length "$WORK/body")
    if expect $who operator 201 "POST a snapshot" POST /api/v1/vms/web01/snapshots; then
        id=$(jq -r .id "$WORK/body")
        TOKEN=$ADMIN api GET /api/v1/vms/web01/snapshots >/dev/null
        check "$who: the snapshot exists" jq -e --arg id "$id" 'map(.id) | index($id) != null' "$WORK/body"
    else
        TOKEN=$ADMIN api GET /api/v1/vms/web01/snapshots >/dev/null
        check "$who: no snapshot was made" test "$(jq length "$WORK/body")" = "$before"
    fi
    s=$(snap_new web01)
    expect $who operator 204 "DELETE a snapshot" DELETE "/api/v1/vms/web01/snapshots/$s"
    want=200; allowed $who operator && want=404
    check "$who: the snapshot is $([ $want = 404 ] && echo gone || echo still there)" \
        test "$(TOKEN=$ADMIN api GET "/api/v1/vms/web01/snapshots/$s")" = $want
    s=$(snap_new purge01)
    expect $who operator 204 "DELETE all snapshots of a VM" DELETE /api/v1/vms/purge01/snapshots
    TOKEN=$ADMIN api GET /api/v1/vms/purge01/snapshots >/dev/null
    want=1; allowed $who operator && want=0
    check "$who: purge01 has $want snapshots" test "$(jq length "$WORK/body")" = $want
    TOKEN=$ADMIN api DELETE /api/v1/vms/purge01/snapshots >/dev/null

    # --- uploads: operator and admin ---
    n=$((n + 1))
    disk=new-$who-$n.img
    if expect $who operator 201 "POST an upload" POST /api/v1/vms/web01/uploads -d "{\"disk\":\"$disk\",\"size\":1048576}"; then
        TOKEN=$ADMIN api DELETE "/api/v1/transfers/$(jq -r .id "$WORK/body")" >/dev/null
    else
        # Nothing was started: admin can start that very upload (no 409 "in progress").
        id=$(upload_new "$disk")
        check "$who: no upload was started" test -n "$id"
        TOKEN=$ADMIN api DELETE "/api/v1/transfers/$id" >/dev/null
    fi
    id=$(upload_new "data-$who.img")
    T=/api/v1/transfers/$id
    head -c 65536 /dev/urandom >"$WORK/chunk"
    expect $who operator 200 "PUT transfer data" PUT "$T" -H "Content-Range: bytes 0-65535/*" --data-binary @"$WORK/chunk"
    expect $who operator 200 "PATCH a transfer" PATCH "$T" -d '{"op":"flush"}'
    expect $who operator 200 "OPTIONS of a transfer" OPTIONS "$T"
    expect $who operator 200 "GET transfer extents" GET "$T/extents"
    expect $who operator 200 "finalize a transfer" POST "$T/finalize"
    if ! allowed $who operator; then
        check "$who: the transfer is still there" test "$(TOKEN=$ADMIN api OPTIONS "$T")" = 200
        check "admin finalizes it" test "$(TOKEN=$ADMIN api POST "$T/finalize")" = 200
        check "$who: none of its bytes were written" cmp -s <(head -c 65536 "$VMS/web01/data-$who.img") <(head -c 65536 /dev/zero)
    else
        check "$who: its bytes were written" cmp -s <(head -c 65536 "$VMS/web01/data-$who.img") "$WORK/chunk"
    fi
    id=$(upload_new "cancel-$who.img")
    expect $who operator 204 "DELETE a transfer" DELETE "/api/v1/transfers/$id"
    want=200; allowed $who operator && want=404
    check "$who: the transfer is $([ $want = 404 ] && echo gone || echo still there)" \
        test "$(TOKEN=$ADMIN api OPTIONS "/api/v1/transfers/$id")" = $want
    [ $want = 200 ] && TOKEN=$ADMIN api DELETE "/api/v1/transfers/$id" >/dev/null
done

# --- without a token: 401 everywhere but the public routes ---
id=$(upload_new unauth.img)
for route in "GET /api/v1/vms" "GET /api/v1/vms/web01" "GET /api/v1/vms/web01/snapshots" \
    "POST /api/v1/vms/web01/snapshots" "DELETE /api/v1/vms/purge01/snapshots" \
    "GET /api/v1/vms/web01/snapshots/$S0" "DELETE /api/v1/vms/web01/snapshots/$S0" \
    "GET $DISK" "HEAD $DISK" "GET $DISK/changes?changeId=*" "GET /api/v1/snapshots" \
    "GET /metrics" "GET /api/v1/metrics" "POST /api/v1/vms/web01/uploads" \
    "PUT /api/v1/transfers/$id" "PATCH /api/v1/transfers/$id" "OPTIONS /api/v1/transfers/$id" \
    "DELETE /api/v1/transfers/$id" "GET /api/v1/transfers/$id/extents" \
    "POST /api/v1/transfers/$id/finalize" "POST /api/v1/auth/logout"; do
    read -r method path <<<"$route"
    head=()
    [ "$method" = HEAD ] && head=(-I) # else curl waits for a body that HEAD never has
    got=$(as none "$method" "$path" "${head[@]}")
    [ "$got" = 401 ] && ok "no token: $method ${path//$id/ID} is 401" ||
        not_ok "no token: $method ${path//$id/ID}: HTTP $got"
done
check "the snapshot is still there" test "$(TOKEN=$ADMIN api GET "/api/v1/vms/web01/snapshots/$S0")" = 200
expect_status 200 "the /images/{id} routes need no token (the ID is the credential)" OPTIONS "/images/$id"
expect_status 200 "nor /healthz" GET /healthz
TOKEN=$ADMIN api DELETE "/api/v1/transfers/$id" >/dev/null

# ============================================================ 3. password spraying
log_from=$(wc -l <"$WORK/daemon.log")
# One wrong password for alice from each of 300 addresses 127.0.{1,2}.x, 8 at a time (one
# Python process: 300 curl processes take most of a minute on a loaded machine).
python3 - "$CA" "$PORT" "$SPRAY" >"$WORK/spray" <<'PY' || not_ok "spray script failed"
import concurrent.futures, http.client, json, ssl, sys
ca, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
def guess(i):
    ip = "127.0.%d.%d" % (1 + i // 150, 1 + i % 150)
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, source_address=(ip, 0), timeout=60)
    c.request("POST", "/api/v1/auth/login", json.dumps({"username": "alice", "password": "guess-" + ip}))
    r = c.getresponse()
    r.read()
    c.close()
    return "%d %s" % (r.status, ip)
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for line in pool.map(guess, range(n)):
        print(line)
PY
check "$SPRAY answers from $SPRAY addresses" test "$(awk '{print $2}' "$WORK/spray" | sort -u | wc -l)" = $SPRAY
checked=$(grep -c '^401 ' "$WORK/spray")
limited=$(grep -c '^429 ' "$WORK/spray")
diag "spraying alice from $SPRAY addresses: $checked password checks (401), $limited refused (429)"
[ "$checked" -le $PER_USER ] && [ "$checked" -ge 1 ] &&
    ok "at most $PER_USER of $SPRAY guesses were checked ($checked)" ||
    not_ok "$checked of $SPRAY guesses were checked (limit $PER_USER per user)"
check "the rest were refused with 429" test $((checked + limited)) = $SPRAY
code=$(curl -s --cacert "$CA" --interface 127.0.3.1 -D "$WORK/headers" -o "$WORK/body" -w '%{http_code}' \
    -d '{"username":"alice","password":"alice-pw"}' "$URL/api/v1/auth/login")
check "then alice's right password from a fresh address is refused too (429, got $code)" test "$code" = 429
retry=$(tr -d '\r' <"$WORK/headers" | awk -F': ' 'tolower($1) == "retry-after" { print $2 }')
check "with Retry-After of 1 to $WINDOW s (got '$retry')" test "${retry:-0}" -ge 1 -a "${retry:-0}" -le $WINDOW
check "and a JSON body that says so" jq -e '.error == "too many requests" and (.details | test("retry in"))' "$WORK/body"
check "no token in it" bash -c "! grep -q token '$WORK/body'"
code=$(curl -s --cacert "$CA" --interface 127.0.3.2 -o /dev/null -w '%{http_code}' \
    -d '{"username":"admin","password":"secret"}' "$URL/api/v1/auth/login")
check "other users still log in from fresh addresses (got $code)" test "$code" = 200
tail -n +"$((log_from + 1))" "$WORK/daemon.log" >"$WORK/spray.log"
check "the log says the user's limit triggered" \
    grep -q "login limit: $PER_USER failed logins for user 'alice' within $WINDOW s" "$WORK/spray.log"
check "the log never holds a password" bash -c "! grep -q 'guess-\|alice-pw' '$WORK/spray.log'"
# The address limit: five failures from one address block it for every user.
for i in 1 2 3 4 5; do
    curl -s --cacert "$CA" --interface 127.0.4.1 -o /dev/null \
        -d "{\"username\":\"nobody-$i\",\"password\":\"x\"}" "$URL/api/v1/auth/login"
done
code=$(curl -s --cacert "$CA" --interface 127.0.4.1 -o /dev/null -w '%{http_code}' \
    -d '{"username":"admin","password":"secret"}' "$URL/api/v1/auth/login")
check "5 failures from one address refuse its next login, of anyone (got $code)" test "$code" = 429
check "the log says the address's limit triggered" \
    grep -q "login limit: 5 failed logins from 127.0.4.1 within $WINDOW s" "$WORK/daemon.log"

# ============================================================ 4. tokens after SIGHUP
T_gone=$(token gone gone-pw)
T_pwchg=$(token pwchg old-pw)
check "gone and pwchg have tokens" test -n "$T_gone" -a -n "$T_pwchg"
expect_status 200 "gone's token works before the reload" GET /api/v1/vms -H "Authorization: Bearer $T_gone"
expect_status 200 "pwchg's token works before the reload" GET /api/v1/vms -H "Authorization: Bearer $T_pwchg"
# gone is removed, pwchg gets a new password, rd becomes an operator.
reload() {
    local from
    from=$(wc -l <"$WORK/daemon.log")
    kill -HUP "$DAEMON_PID"
    for _ in $(seq 50); do
        tail -n +"$((from + 1))" "$WORK/daemon.log" | grep -q "SIGHUP" && return 0
        sleep 0.1
    done
    return 1
}
{
    grep -v '^gone:\|^pwchg:\|^rd:' "$STATE/users"
    echo "pwchg:$(hash new-pw):operator"
    echo "rd:$(grep '^rd:' "$STATE/users" | cut -d: -f2):operator" # same hash, new role
} >"$WORK/users.next"
chmod 600 "$WORK/users.next"
mv "$WORK/users.next" "$STATE/users"
check "SIGHUP reloads the users file" reload
TOKEN="" expect_status 401 "the removed user's token is refused" GET /api/v1/vms -H "Authorization: Bearer $T_gone"
TOKEN="" expect_status 401 "the token from before the password change is refused" GET /api/v1/vms -H "Authorization: Bearer $T_pwchg"
check "a new login with the old password fails" test -z "$(token pwchg old-pw)"
T_pwchg=$(token pwchg new-pw)
check "the new password works" test -n "$T_pwchg"
expect_status 200 "and its token" GET /api/v1/vms -H "Authorization: Bearer $T_pwchg"
expect_status 200 "tokens of unchanged users keep working" GET /api/v1/vms -H "Authorization: Bearer $T_op"
got=$(as rd POST /api/v1/vms/web01/snapshots)
check "a role changed by the reload applies to the token already issued (HTTP $got)" test "$got" = 201

# The users file made readable by others: the reload is refused, the old users stay.
echo "late:$(hash late-pw):reader" >>"$STATE/users"
chmod 644 "$STATE/users"
log_from=$(wc -l <"$WORK/daemon.log")
check "SIGHUP with a users file readable by others" reload
check "is refused, naming the file" bash -c "tail -n +$((log_from + 1)) '$WORK/daemon.log' | grep -q '$STATE/users: users file is accessible by others'"
check "the user added to that file cannot log in" test -z "$(token late late-pw)"
check "the previous users still can" test -n "$(token op op-pw)"
chmod 600 "$STATE/users"
check "SIGHUP after chmod 600" reload
check "now the new user can log in" test -n "$(token late late-pw)"

# ============================================================ 5. logout
A1=$(token admin secret)
A2=$(token admin secret)
check "two tokens of admin differ" test -n "$A1" -a -n "$A2" -a "$A1" != "$A2"
TOKEN=$A1 expect_status 200 "the first works" GET /api/v1/vms
TOKEN=$A1 expect_status 204 "POST /api/v1/auth/logout is 204" POST /api/v1/auth/logout
TOKEN=$A1 expect_status 401 "the logged-out token is refused" GET /api/v1/vms
TOKEN=$A1 expect_status 401 "and cannot log out again" POST /api/v1/auth/logout
TOKEN=$A2 expect_status 200 "the other token of the same user still works" GET /api/v1/vms
for who in op rd; do
    t=$(token $who $who-pw)
    TOKEN=$t expect_status 204 "$who may log out" POST /api/v1/auth/logout/
    TOKEN=$t expect_status 401 "$who's logged-out token is refused" GET /api/v1/vms
done
check "the catalog keeps a digest of revoked tokens, not the tokens" \
    test "$(sqlite3 "$STATE/catalog.db" 'SELECT count(*) FROM revoked_tokens')" -ge 3
check "no token text in the catalog" bash -c "! grep -qaF '${A1##*.}' '$STATE/catalog.db' '$STATE/catalog.db-wal' 2>/dev/null"
stop_daemon
check "daemon stops cleanly" test $? -eq 0
start_daemon "$CONF" "$PORT" && ok "daemon restarts" || { not_ok "daemon restarts"; exit 1; }
TOKEN=$A1 expect_status 401 "the logged-out token is still refused after a restart" GET /api/v1/vms
TOKEN=$A2 expect_status 200 "the other token still works after a restart" GET /api/v1/vms
stop_daemon
check "daemon stops cleanly again" test $? -eq 0
