#!/bin/bash
# core/nbdio.c against QEMU's real NBD servers (qemu-nbd and qemu-storage-daemon): reads from
# several threads over a small connection pool match the image bit for bit; block status of
# holes, zeros and data and of a dirty bitmap is exact, also where a run spans the walk's 1 GiB
# requests; a server that takes one client at a time caps the pool instead of hanging it; a
# missing export or meta context is named in the error.
. "$(dirname "$0")/lib.sh"

PROBE=$BUILD/nbdio_probe
for t in qemu-img qemu-io qemu-nbd qemu-storage-daemon; do
    if ! command -v "$t" >/dev/null; then
        skip "$TEST_NAME needs $t (Debian qemu-utils, qemu-system-common)"
        exit 0
    fi
done
K=1024
M=$((1024 * 1024))
G=$((1024 * M))

# d.qcow2: data, holes, allocated and unallocated zeros; bitmap b0 records two later writes.
D=$WORK/d.qcow2
qemu-img create -q -f qcow2 "$D" 64M
qemu-io -f qcow2 -c 'write -P 0xaa 0 1M' -c 'write -z 4M 1M' -c 'write -z -u 8M 1M' \
    -c 'write -P 0x55 9M 64k' "$D" >/dev/null
qemu-img bitmap --add "$D" b0
qemu-io -f qcow2 -c 'write -P 0x11 20M 4k' -c 'write -P 0x12 30M 200k' "$D" >/dev/null
qemu-img convert -O raw "$D" "$WORK/d.raw"

# big.qcow2 (3 GiB, sparse): writes around the 1 GiB and 2 GiB marks, recorded by bitmap b1.
B=$WORK/big.qcow2
qemu-img create -q -f qcow2 "$B" 3G
qemu-img bitmap --add "$B" b1
qemu-io -f qcow2 -c "write -P 0x21 $((G - 64 * K)) 128k" -c "write -P 0x22 $((2 * G - 4 * K)) 8k" \
    -c "write -P 0x23 $((3 * G - 64 * K)) 64k" "$B" >/dev/null

# serve_nbd NAME IMAGE BITMAP: qemu-nbd on $WORK/NAME.sock (read-only, 8 clients at once).
serve_nbd() {
    local name=$1 image=$2 bitmap=$3
    qemu-nbd -t -e 8 -r -f qcow2 -x disk -B "$bitmap" -k "$WORK/$name.sock" --fork \
        --pid-file="$WORK/$name.pid" "$image" || return 1
    at_exit "kill \$(cat $WORK/$name.pid)"
}
serve_nbd d "$D" b0 || { not_ok "qemu-nbd serves d.qcow2"; exit 1; }
serve_nbd big "$B" b1 || { not_ok "qemu-nbd serves big.qcow2"; exit 1; }
qemu-storage-daemon --blockdev driver=file,filename="$D",node-name=f,read-only=on \
    --blockdev driver=qcow2,file=f,node-name=d,read-only=on \
    --nbd-server addr.type=unix,addr.path="$WORK/qsd.sock" \
    --export type=nbd,id=e,node-name=d,name=disk,bitmaps.0=b0 \
    --pidfile "$WORK/qsd.pid" --daemonize || { not_ok "qemu-storage-daemon serves d.qcow2"; exit 1; }
at_exit "kill \$(cat $WORK/qsd.pid)"

# Reads: 8 threads over at most 3 connections, uneven pieces; then one thread, one connection.
for srv in d qsd; do
    rm -f "$WORK/out"
    if "$PROBE" "$WORK/$srv.sock" disk read "$WORK/out" 8 3 && cmp -s "$WORK/out" "$WORK/d.raw"; then
        ok "$srv: parallel reads over a pool of 3 connections match the image bit for bit"
    else
        not_ok "$srv: parallel reads over a pool of 3 connections match the image bit for bit"
    fi
done
rm -f "$WORK/out"
check "one connection: reads match the image" \
    bash -c "'$PROBE' '$WORK/d.sock' disk read '$WORK/out' 1 1 && cmp '$WORK/out' '$WORK/d.raw'"

# A server that takes one client at a time (qemu-nbd without -e holds the next one in its
# handshake): the pool goes on with the one connection it has.
qemu-nbd -t -r -f qcow2 -x disk -k "$WORK/one.sock" --fork --pid-file="$WORK/one.pid" "$D" &&
    at_exit "kill \$(cat $WORK/one.pid)"
rm -f "$WORK/out"
check "one client at a time: 4 threads asking for 3 connections read the image" \
    bash -c "'$PROBE' '$WORK/one.sock' disk read '$WORK/out' 4 3 && cmp '$WORK/out' '$WORK/d.raw'"

# base:allocation: runs of equal flags, merged (1M-9M is one hole though two writes made it).
cat >"$WORK/alloc.want" <<EOT
0 $M 0
$M $((8 * M)) 3
$((9 * M)) $((64 * K)) 0
$((9 * M + 64 * K)) $((11 * M - 64 * K)) 3
$((20 * M)) $((4 * K)) 0
$((20 * M + 4 * K)) $((60 * K)) 2
$((20 * M + 64 * K)) $((10 * M - 64 * K)) 3
$((30 * M)) $((200 * K)) 0
$((30 * M + 200 * K)) $((56 * K)) 2
$((30 * M + 256 * K)) $((34 * M - 256 * K)) 3
EOT
for srv in d qsd; do
    "$PROBE" "$WORK/$srv.sock" disk map base:allocation >"$WORK/alloc.got" 2>&1
    if cmp -s "$WORK/alloc.got" "$WORK/alloc.want"; then
        ok "$srv: base:allocation runs of data, holes and zeros are exact"
    else
        not_ok "$srv: base:allocation runs of data, holes and zeros are exact"
        diff "$WORK/alloc.want" "$WORK/alloc.got" | sed 's/^/# /'
    fi
done

# The dirty bitmap: the two writes after the bitmap was added, in 64 KiB granules.
cat >"$WORK/dirty.want" <<EOT
0 $((20 * M)) 0
$((20 * M)) $((64 * K)) 1
$((20 * M + 64 * K)) $((10 * M - 64 * K)) 0
$((30 * M)) $((256 * K)) 1
$((30 * M + 256 * K)) $((34 * M - 256 * K)) 0
EOT
for srv in d qsd; do
    "$PROBE" "$WORK/$srv.sock" disk map qemu:dirty-bitmap:b0 base:allocation >"$WORK/dirty.got" 2>&1
    if cmp -s "$WORK/dirty.got" "$WORK/dirty.want"; then
        ok "$srv: qemu:dirty-bitmap:b0 runs are exact"
    else
        not_ok "$srv: qemu:dirty-bitmap:b0 runs are exact"
        diff "$WORK/dirty.want" "$WORK/dirty.got" | sed 's/^/# /'
    fi
done

# 3 GiB: the walk asks 1 GiB per request; a dirty run across the 1 GiB mark comes out whole.
cat >"$WORK/big.want" <<EOT
0 $((G - 64 * K)) 0
$((G - 64 * K)) $((128 * K)) 1
$((G + 64 * K)) $((G - 128 * K)) 0
$((2 * G - 64 * K)) $((128 * K)) 1
$((2 * G + 64 * K)) $((G - 128 * K)) 0
$((3 * G - 64 * K)) $((64 * K)) 1
EOT
"$PROBE" "$WORK/big.sock" disk map qemu:dirty-bitmap:b1 >"$WORK/big.got" 2>&1
if cmp -s "$WORK/big.got" "$WORK/big.want"; then
    ok "3 GiB bitmap: runs across the 1 GiB requests are merged and exact"
else
    not_ok "3 GiB bitmap: runs across the 1 GiB requests are merged and exact"
    diff "$WORK/big.want" "$WORK/big.got" | sed 's/^/# /'
fi
"$PROBE" "$WORK/big.sock" disk map base:allocation >"$WORK/bigalloc.got" 2>&1
if grep -qx "$((G - 64 * K)) $((128 * K)) 0" "$WORK/bigalloc.got" &&
    grep -qx "0 $((G - 64 * K)) 3" "$WORK/bigalloc.got" &&
    [ "$(awk '{ s += $2 } END { printf "%.0f", s }' "$WORK/bigalloc.got")" = $((3 * G)) ]; then
    ok "3 GiB base:allocation: data across the 1 GiB mark is one run, the runs cover the disk"
else
    not_ok "3 GiB base:allocation: data across the 1 GiB mark is one run, the runs cover the disk"
    sed 's/^/# /' "$WORK/bigalloc.got"
fi

# Errors name what is missing.
out=$("$PROBE" "$WORK/d.sock" disk open base:allocation qemu:dirty-bitmap:nope)
if [ $? -ne 0 ] && grep -q 'no meta context "qemu:dirty-bitmap:nope"' <<<"$out"; then
    ok "a missing meta context is named"
else
    not_ok "a missing meta context is named ($out)"
fi
out=$("$PROBE" "$WORK/qsd.sock" nodisk open base:allocation)
if [ $? -ne 0 ] && grep -q 'export "nodisk"' <<<"$out"; then
    ok "a missing export is named"
else
    not_ok "a missing export is named ($out)"
fi
out=$("$PROBE" "$WORK/none.sock" disk open base:allocation)
if [ $? -ne 0 ] && grep -q "none.sock" <<<"$out"; then
    ok "a missing socket is named"
else
    not_ok "a missing socket is named ($out)"
fi
