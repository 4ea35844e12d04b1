#!/bin/bash
# The client's side of sparse answers (docs/api.md, "Sparse answers") against an independent
# encoder: tests/tools/sparse_server.py, a stand-in server in Python that answers ranges
# correctly (plain, sparse, sparse cut into odd segments, in 7-byte chunks) and wrongly
# (segments out of order, overlapping, empty, past the range, a body cut short, another range).
# `vmexport download` must produce the exact disk from every correct answer and refuse every
# wrong one with a clear error, never write wrong bytes silently.
source "$(dirname "$0")/lib.sh"

make_cert "$WORK/certs" || { not_ok "certificates"; exit 1; }
# The disk: data and zeros at odd places, a size that is no multiple of 4 KiB.
/usr/bin/python3 - "$WORK/disk.img" <<'PY'
import os, sys
d = bytearray(3 * 1048576 + 5000)
for off, n in [(0, 100), (4096, 8192), (20480, 10), (1048576 - 10, 20), (1500000, 300000), (3 * 1048576, 5000)]:
    d[off:off + n] = os.urandom(n).replace(b"\0", b"\1")
open(sys.argv[1], "wb").write(d)
PY
echo good >"$WORK/mode"
PORT=$(free_port)
/usr/bin/python3 "$VMEXPORT_ROOT/tests/tools/sparse_server.py" "$PORT" "$WORK/certs/server.crt" \
    "$WORK/certs/server.key" "$WORK/disk.img" "$WORK/mode" 2>"$WORK/server.log" &
SERVER_PID=$!
at_exit "kill $SERVER_PID"
for _ in $(seq 50); do
    curl -s --cacert "$WORK/certs/ca.crt" -o /dev/null "https://127.0.0.1:$PORT/" && break
    sleep 0.1
done
export VMEXPORT_SERVER=https://127.0.0.1:$PORT VMEXPORT_USER=admin VMEXPORT_PASSWORD=x
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

download() { # download MODE JOBS: into $WORK/out-MODE; the exit status
    echo "$1" >"$WORK/mode"
    rm -rf "$WORK/out-$1"
    "$VMEXPORT" download vm1 s1 --out-dir "$WORK/out-$1" --jobs "$2" >"$WORK/$1.out" 2>"$WORK/$1.err"
}

for mode in plain good split; do
    for jobs in 1 3; do
        if download "$mode" "$jobs" && cmp -s "$WORK/out-$mode/d.img" "$WORK/disk.img"; then
            ok "$mode answers, --jobs $jobs: the downloaded disk is identical"
        else
            not_ok "$mode answers, --jobs $jobs: $(tail -2 "$WORK/$mode.err")"
        fi
    done
done
# 100 + 8192 + 10 + 20 + 300000 + 5000 bytes of data in 4 KiB blocks: about 330 KiB allocated
check "the downloaded disk keeps its 4 KiB blocks of zeros as holes ($(du -k "$WORK/out-good/d.img" | cut -f1) KiB allocated)" \
    test "$(du -k "$WORK/out-good/d.img" | cut -f1)" -lt 400

# The summary tells the bytes of the disk from the bytes on the wire.
for mode in good plain; do
    echo "$mode" >"$WORK/mode"
    rm -rf "$WORK/json-$mode"
    "$VMEXPORT" download vm1 s1 --out-dir "$WORK/json-$mode" --json >"$WORK/$mode.json" 2>"$WORK/json.err" ||
        not_ok "$mode: download --json: $(tail -1 "$WORK/json.err")"
done
size=$(stat -c %s "$WORK/disk.img")
check "download --json, sparse answers: the whole disk fetched, less than half of it transferred" \
    jq -e ".bytes_fetched == $size and .bytes_transferred < $size / 2" "$WORK/good.json"
check "download --json, plain answers: every byte transferred" \
    jq -e ".bytes_fetched == $size and .bytes_transferred == $size" "$WORK/plain.json"

# Over old data (a download with a base): every block of zeros of the new answer must end up
# zero, whether punched out (long runs) or written (short gaps between data).
for mode in good plain; do
    echo "$mode" >"$WORK/mode"
    rm -rf "$WORK/base-$mode" && mkdir -p "$WORK/base-$mode"
    head -c "$(stat -c %s "$WORK/disk.img")" /dev/urandom >"$WORK/base-$mode/d.img"
    if "$VMEXPORT" download vm1 s1 --diff-from s0 --out-dir "$WORK/base-$mode" --jobs 2 \
        >/dev/null 2>"$WORK/base.err" && cmp -s "$WORK/base-$mode/d.img" "$WORK/disk.img"; then
        ok "$mode answers over old random data (--diff-from): the disk is identical"
    else
        not_ok "$mode answers over old random data (--diff-from): $(tail -2 "$WORK/base.err")"
    fi
done

for mode in disorder overlap past empty truncated otherrange; do
    download "$mode" 2
    rc=$?
    if [ "$rc" = 1 ] && grep -qE "malformed sparse answer|answered another range" "$WORK/$mode.err"; then
        ok "$mode: refused with exit 1 and '$(grep -oE '(malformed sparse answer|answered another range)[^:]*' "$WORK/$mode.err" | head -1)'"
    else
        not_ok "$mode: exit $rc, want 1 naming the bad answer: $(tail -2 "$WORK/$mode.err")"
    fi
done
