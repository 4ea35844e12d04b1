#!/bin/bash
# qcow2 snapshot chains (vmexport chain): chains of 1, 2 and 5 qcow2 layers (and one on a raw
# base) made with qemu-img and written with qemu-io (patterns, discards, zero writes, a version 2
# layer, a layer larger than its backing file, absolute and relative backing names).  flatten must
# give exactly the bytes of 'qemu-img convert -O raw' of the top, as a sparse file, atomically;
# info --json must list the chain in the order and with the sizes of 'qemu-img info
# --backing-chain'.  A chain moved elsewhere (stale absolute backing names) still works.  Broken
# chains (missing base, loop, two chains, garbage files) fail with 1 and name the files; usage
# errors give 2; interrupting flatten leaves nothing behind.  The upload checks run only when
# vmexportd answers POST /api/v1/vms/X/uploads with 201.  No root needed.
source "$(dirname "$0")/lib.sh"
for tool in qemu-img qemu-io jq cmp; do
    command -v "$tool" >/dev/null || { skip "$TEST_NAME needs $tool"; exit 0; }
done

MIB=$((1 << 20))

# expect_exit CODE DESCRIPTION COMMAND...: exit status must be CODE; output in $WORK/out and
# $WORK/err.
expect_exit() {
    local want=$1 what=$2; shift 2
    "$@" >"$WORK/out" 2>"$WORK/err"
    local rc=$?
    if [ "$rc" -eq "$want" ]; then ok "$what"; else not_ok "$what (exit $rc, want $want): $(head -3 "$WORK/err")"; fi
}

# err_has TEXT: the last command's stderr contains TEXT (fixed string).
err_has() {
    if grep -qF -- "$1" "$WORK/err"; then ok "message: $1"; else not_ok "message should contain '$1': $(head -3 "$WORK/err")"; fi
}

# qio IMAGE COMMAND...: qemu-io commands on a qcow2 image.
qio() {
    local img=$1; shift
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null
}

allocated() { echo $(($(stat -c %b "$1") * $(stat -c %B "$1"))); }

# matches_qemu DIR TOP: chain info --json of DIR lists, reversed, the files and virtual sizes of
# 'qemu-img info --backing-chain' of TOP.
matches_qemu() {
    local dir=$1 top=$2
    "$VMEXPORT" chain info --json "$dir" >"$WORK/ours.json" || return 1
    qemu-img info --backing-chain --output=json "$top" >"$WORK/qemu.json" || return 1
    local ours theirs
    ours=$(jq -c '[.layers | reverse | .[] | {name, format, virtual_size}]' "$WORK/ours.json")
    theirs=$(jq -c '[.[] | {name: (.filename | split("/") | last), format,
                            virtual_size: ."virtual-size"}]' "$WORK/qemu.json")
    if [ "$ours" != "$theirs" ]; then
        diag "ours:   $ours"
        diag "qemu's: $theirs"
        return 1
    fi
}

# flatten_matches DIR TOP NAME: flatten DIR into $WORK/NAME.raw, compare it with qemu-img
# convert of TOP, check it is sparse and that nothing temporary is left.
flatten_matches() {
    local dir=$1 top=$2 name=$3
    local out=$WORK/$name.raw ref=$WORK/$name.ref
    qemu-img convert -f qcow2 -O raw "$top" "$ref"
    expect_exit 0 "$name: flatten" "$VMEXPORT" chain flatten "$dir" -o "$out"
    check "$name: flattened bytes equal qemu-img convert of the top" cmp "$ref" "$out"
    local vsize
    vsize=$(qemu-img info --output=json "$top" | jq '."virtual-size"')
    check "$name: size is the virtual size ($vsize)" test "$(stat -c %s "$out")" = "$vsize"
    local alloc
    alloc=$(allocated "$out")
    check "$name: output is sparse ($alloc of $vsize bytes allocated)" test "$alloc" -lt $((vsize / 2))
    check "$name: no temporary file left" test -z "$(find "$WORK" -maxdepth 1 -name "$name.raw.vxtmp.*")"
    check "$name: summary line names the top" grep -q "into $out" "$WORK/out"
}

# ---- usage ----
expect_exit 0 "chain --help exits 0" "$VMEXPORT" chain --help
check "help documents the exit status" grep -q "Exit status" "$WORK/out"
check "help documents the basename fallback" grep -q "same basename" "$WORK/out"
expect_exit 0 "vmexport help chain" "$VMEXPORT" help chain
expect_exit 0 "chain upload --help" "$VMEXPORT" chain upload --help
expect_exit 2 "chain without a subcommand" "$VMEXPORT" chain
expect_exit 2 "unknown subcommand" "$VMEXPORT" chain frob "$WORK"
err_has "unknown subcommand 'frob'"
expect_exit 2 "info without DIR" "$VMEXPORT" chain info
expect_exit 2 "info with two DIRs" "$VMEXPORT" chain info "$WORK" "$WORK"
expect_exit 2 "info --force" "$VMEXPORT" chain info --force "$WORK"
err_has "--force does not go with chain info"
expect_exit 2 "flatten without -o" "$VMEXPORT" chain flatten "$WORK"
expect_exit 2 "flatten --json" "$VMEXPORT" chain flatten "$WORK" -o "$WORK/x" --json
expect_exit 2 "upload without --disk" "$VMEXPORT" chain upload "$WORK" --to vm
expect_exit 2 "upload --jobs 0" "$VMEXPORT" chain upload "$WORK" --to vm --disk d --jobs 0
expect_exit 2 "upload --jobs 65" "$VMEXPORT" chain upload "$WORK" --to vm --disk d --jobs 65
expect_exit 2 "unknown option" "$VMEXPORT" chain info --frob "$WORK"

# ---- a chain of 1 ----
C1=$WORK/c1
mkdir "$C1"
qemu-img create -q -f qcow2 "$C1/disk.qcow2" 64M
qio "$C1/disk.qcow2" "write -P 0x11 0 64k" "write -P 0x12 12345 1000" "write -P 0x13 40M 1M" \
    "write -z 40M 256k"
expect_exit 0 "1 layer: info" "$VMEXPORT" chain info "$C1"
check "1 layer: text names the top and the size" grep -q "chain of 1 image, top disk.qcow2, virtual size 64.0 MiB" "$WORK/out"
check "1 layer: info --json matches qemu-img info --backing-chain" matches_qemu "$C1" "$C1/disk.qcow2"
flatten_matches "$C1" "$C1/disk.qcow2" c1
check "1 layer: at most the data written is allocated" test "$(allocated "$WORK/c1.raw")" -le $((2 * MIB))

# ---- a chain of 2 ----
C2=$WORK/c2
mkdir "$C2"
qemu-img create -q -f qcow2 "$C2/base.qcow2" 32M
qio "$C2/base.qcow2" "write -P 0xa1 0 4M" "write -P 0xa2 20M 2M"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$C2/top.qcow2"
qio "$C2/top.qcow2" "write -P 0xb1 1M 512k" "discard 2M 1M" "write -z 20M 64k" "write -P 0xb2 31M 4k"
expect_exit 0 "2 layers: info" "$VMEXPORT" chain info "$C2"
check "2 layers: info --json matches qemu-img info --backing-chain" matches_qemu "$C2" "$C2/top.qcow2"
check "2 layers: json shape" jq -e '.top == "top.qcow2" and .virtual_size == 33554432 and
    (.layers | length == 2) and .layers[0].backing == null and .layers[1].backing == "base.qcow2"
    and .layers[1].backing_file == "base.qcow2" and .layers[1].backing_format == "qcow2"
    and .layers[1].backing_found_by_name == false and .layers[1].version == 3' "$WORK/ours.json"
flatten_matches "$C2" "$C2/top.qcow2" c2

# ---- a chain of 5: a v2 layer, an absolute backing name, a layer larger than its base ----
C5=$WORK/c5
mkdir "$C5"
qemu-img create -q -f qcow2 "$C5/l1-base.qcow2" 64M
qio "$C5/l1-base.qcow2" "write -P 0x11 0 8M" "write -P 0x12 32M 1M" "write -P 0x13 50M 3M"
qemu-img create -q -f qcow2 -b l1-base.qcow2 -F qcow2 "$C5/l2.qcow2"
qio "$C5/l2.qcow2" "write -P 0x21 4M 2M" "discard 32M 512k" "write -z 50M 1M"
qemu-img create -q -f qcow2 -o compat=0.10 -b "$C5/l2.qcow2" -F qcow2 "$C5/l3-v2.qcow2"
qio "$C5/l3-v2.qcow2" "write -P 0x31 5M 1M" "write -z 6M 64k" "write -P 0x32 60M 4M"
qemu-img create -q -f qcow2 -b l3-v2.qcow2 -F qcow2 "$C5/l4.qcow2" 80M
qio "$C5/l4.qcow2" "write -P 0x41 70M 1M" "write -P 0x42 7777 3333" "discard 60M 1M"
qemu-img create -q -f qcow2 -b l4.qcow2 -F qcow2 "$C5/l5-top.qcow2"
qio "$C5/l5-top.qcow2" "write -P 0x51 1M 4k" "discard 0 1M" "write -z 70M 512k" "write -P 0x52 79M 1M"
expect_exit 0 "5 layers: info" "$VMEXPORT" chain info "$C5"
check "5 layers: info lists them base first" bash -c "grep -o 'l[1-5][-a-z0-9]*\.qcow2  ' '$WORK/out' | tr -d ' ' | paste -sd, | grep -qx 'l1-base.qcow2,l2.qcow2,l3-v2.qcow2,l4.qcow2,l5-top.qcow2'"
check "5 layers: info --json matches qemu-img info --backing-chain" matches_qemu "$C5" "$C5/l5-top.qcow2"
check "5 layers: versions and sizes" jq -e '[.layers[].version] == [3,3,2,3,3] and
    [.layers[].virtual_size] == [67108864,67108864,67108864,83886080,83886080]' "$WORK/ours.json"
flatten_matches "$C5" "$C5/l5-top.qcow2" c5

# ---- a qcow2 layer on a raw base ----
CR=$WORK/craw
mkdir "$CR"
truncate -s 16M "$CR/base.raw"
dd if=/dev/urandom of="$CR/base.raw" bs=64K count=8 seek=10 conv=notrunc status=none
qemu-img create -q -f qcow2 -b base.raw -F raw "$CR/top.qcow2"
qio "$CR/top.qcow2" "write -P 0xcc 655360 64k" "write -z 700000 10000"
check "raw base: info --json matches qemu-img info --backing-chain" matches_qemu "$CR" "$CR/top.qcow2"
check "raw base: the base is raw" jq -e '.layers[0].format == "raw" and .layers[1].backing_format == "raw"' "$WORK/ours.json"
flatten_matches "$CR" "$CR/top.qcow2" craw

# ---- the output file ----
echo "precious" >"$WORK/keep.raw"
expect_exit 1 "flatten refuses an existing FILE" "$VMEXPORT" chain flatten "$C2" -o "$WORK/keep.raw"
err_has "$WORK/keep.raw exists (use --force to replace it)"
check "the existing FILE is untouched" grep -qx precious "$WORK/keep.raw"
expect_exit 0 "flatten --force replaces it" "$VMEXPORT" chain flatten "$C2" -o "$WORK/keep.raw" --force
check "the replaced FILE holds the disk" cmp "$WORK/keep.raw" "$WORK/c2.ref"
check "the output is readable by its owner only" test "$(stat -c %a "$WORK/keep.raw")" = 600
expect_exit 1 "flatten --force refuses to overwrite an image of the chain" \
    "$VMEXPORT" chain flatten "$C2" -o "$C2/base.qcow2" --force
err_has "$C2/base.qcow2 is an image of the chain"
check "the chain's base is untouched" qemu-img check -q "$C2/base.qcow2"
expect_exit 1 "flatten into a directory" "$VMEXPORT" chain flatten "$C2" -o "$WORK" --force
err_has "is a directory"
expect_exit 1 "flatten into a missing directory" "$VMEXPORT" chain flatten "$C2" -o "$WORK/no/such/file"
err_has "$WORK/no/such/file: creating a temporary file next to it"

# qemu-img failing or missing: no output, no temporary file.
VMEXPORT_QEMU_IMG=false expect_exit 1 "a failing qemu-img fails the flatten" \
    "$VMEXPORT" chain flatten "$C2" -o "$WORK/fail.raw"
err_has "convert of $C2/top.qcow2 failed (exit status 1)"
check "nothing at FILE after a failure" test ! -e "$WORK/fail.raw"
check "no temporary file after a failure" test -z "$(find "$WORK" -maxdepth 1 -name 'fail.raw.vxtmp.*')"
VMEXPORT_QEMU_IMG=/nonexistent/qemu-img expect_exit 1 "a missing qemu-img" \
    "$VMEXPORT" chain flatten "$C2" -o "$WORK/fail.raw"
err_has "cannot run /nonexistent/qemu-img"

# Interrupted (SIGTERM, SIGINT) while qemu-img runs: the temporary file goes, FILE never appears.
cat >"$WORK/slow-qemu-img" <<EOF
#!/bin/bash
sleep 20 &
echo \$! >"$WORK/slow.pid"
wait
EOF
chmod +x "$WORK/slow-qemu-img"
for sig in TERM INT; do
    rm -f "$WORK/slow.pid"
    VMEXPORT_QEMU_IMG=$WORK/slow-qemu-img "$VMEXPORT" chain flatten "$C2" -o "$WORK/int.raw" 2>/dev/null &
    pid=$!
    for _ in $(seq 50); do [ -s "$WORK/slow.pid" ] && break; sleep 0.1; done
    check "SIG$sig: the temporary file exists while qemu-img runs" \
        test -n "$(find "$WORK" -maxdepth 1 -name 'int.raw.vxtmp.*')"
    kill -"$sig" "$pid"
    wait "$pid"
    rc=$?
    kill "$(cat "$WORK/slow.pid" 2>/dev/null)" 2>/dev/null
    check "SIG$sig: vmexport dies of the signal (status $rc)" test "$rc" -gt 128
    check "SIG$sig: the temporary file is removed" test -z "$(find "$WORK" -maxdepth 1 -name 'int.raw.vxtmp.*')"
    check "SIG$sig: nothing at FILE" test ! -e "$WORK/int.raw"
done

# ---- a chain moved elsewhere: stale absolute backing names ----
mv "$C5" "$WORK/c5-moved"
M5=$WORK/c5-moved
expect_exit 0 "moved chain: info" "$VMEXPORT" chain info --json "$M5"
check "moved chain: l3's stale absolute name resolved by basename" \
    jq -e --arg old "$C5/l2.qcow2" '.layers[2].backing_file == $old and .layers[2].backing == "l2.qcow2"
        and .layers[2].backing_found_by_name and ([.layers[].backing_found_by_name] | map(select(.)) | length == 1)' "$WORK/out"
expect_exit 0 "moved chain: info text says so" "$VMEXPORT" chain info "$M5"
check "moved chain: 'found by name' shown" grep -q "= l2.qcow2, found by name" "$WORK/out"
expect_exit 0 "moved chain: flatten" "$VMEXPORT" chain flatten "$M5" -o "$WORK/moved.raw"
check "moved chain: same bytes as before the move" cmp "$WORK/moved.raw" "$WORK/c5.ref"
if qemu-img info --backing-chain "$M5/l5-top.qcow2" >/dev/null 2>&1; then
    diag "qemu-img follows the moved chain by itself"
else
    ok "moved chain: qemu-img alone cannot open it (the old path is gone), vmexport can"
fi

# ---- broken chains ----
# copy_chain SRC DST: a copy of a chain directory.
copy_chain() { rm -rf "$2" && cp -a "$1" "$2"; }

B=$WORK/broken
copy_chain "$C2" "$B"
rm "$B/base.qcow2"
expect_exit 1 "missing base: info fails" "$VMEXPORT" chain info "$B"
err_has "$B: top.qcow2: backing file base.qcow2 not found"
expect_exit 1 "missing base: flatten fails" "$VMEXPORT" chain flatten "$B" -o "$WORK/b.raw"
err_has "top.qcow2: backing file base.qcow2 not found"
check "missing base: no output" test ! -e "$WORK/b.raw"

copy_chain "$C2" "$B"
qemu-img rebase -u -b top.qcow2 -F qcow2 "$B/base.qcow2"
expect_exit 1 "loop: info fails" "$VMEXPORT" chain info "$B"
err_has "base.qcow2 -> top.qcow2 -> base.qcow2: backing chain loops"
expect_exit 1 "loop: flatten fails" "$VMEXPORT" chain flatten "$B" -o "$WORK/b.raw"
err_has "backing chain loops"

copy_chain "$C2" "$B"
cp "$C1/disk.qcow2" "$B/other.qcow2"
expect_exit 1 "two unrelated chains: info fails" "$VMEXPORT" chain info "$B"
err_has "the files do not form one chain: 2 bases (base.qcow2, other.qcow2) and 2 tops (other.qcow2, top.qcow2)"
err_has "chains: other.qcow2; top.qcow2 -> base.qcow2"
expect_exit 1 "two unrelated chains: flatten fails" "$VMEXPORT" chain flatten "$B" -o "$WORK/b.raw"

copy_chain "$C2" "$B"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$B/second-top.qcow2"
expect_exit 1 "two tops on one base: info fails" "$VMEXPORT" chain info "$B"
err_has "1 base (base.qcow2) and 2 tops (second-top.qcow2, top.qcow2)"

copy_chain "$C2" "$B"
head -c 1000 /dev/urandom >"$B/garbage.bin"
expect_exit 1 "garbage file: info fails" "$VMEXPORT" chain info "$B"
err_has "garbage.bin: not a disk image: 1000 bytes is not a multiple of 512"
rm "$B/garbage.bin"
{ printf 'QFI\373\0\0\0\3'; head -c 4096 /dev/urandom; } >"$B/corrupt.qcow2"
expect_exit 1 "garbage with the qcow2 magic: info fails" "$VMEXPORT" chain info "$B"
err_has "corrupt.qcow2: "
rm "$B/corrupt.qcow2"
head -c 4096 /dev/urandom >"$B/random.img"
expect_exit 1 "a 4 KiB random file (raw by its size) makes a second chain" "$VMEXPORT" chain info "$B"
err_has "random.img"
rm "$B/random.img"
echo "notes" >"$B/README"
expect_exit 1 "a text file: info fails" "$VMEXPORT" chain info "$B"
err_has "README: not a disk image"
rm "$B/README"
qemu-img create -q -f vmdk "$B/disk.vmdk" 1M
expect_exit 1 "a vmdk file: info fails" "$VMEXPORT" chain info "$B"
err_has "disk.vmdk: a vmdk image; only raw and qcow2 images are supported"
rm "$B/disk.vmdk"
mkdir "$B/subdir"
expect_exit 0 "a subdirectory is ignored" "$VMEXPORT" chain info "$B"

copy_chain "$C2" "$B"
qemu-img rebase -u -b base.qcow2 -F raw "$B/top.qcow2"
expect_exit 1 "declared backing format differs: info fails" "$VMEXPORT" chain info "$B"
err_has "top.qcow2: backing file base.qcow2 is a qcow2 image, but top.qcow2 declares raw"

rm -rf "$B" && mkdir "$B"
expect_exit 1 "empty directory" "$VMEXPORT" chain info "$B"
err_has "$B: no image files in the directory"
expect_exit 1 "missing directory" "$VMEXPORT" chain info "$WORK/nowhere"
err_has "$WORK/nowhere: No such file or directory"

# qemu-img times its LUKS key derivation and fails at once in 15-40% of the runs on a virtual
# machine ("Unable to get accurate CPU usage"): many tries (a try that works takes ~2 s).
for _ in $(seq 40); do
    qemu-img create -q --object secret,id=s0,data=pw -f qcow2 \
        -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 "$B/enc.qcow2" 1M 2>/dev/null && break
done
expect_exit 0 "encrypted image: info works" "$VMEXPORT" chain info --json "$B"
check "encrypted image: info says luks" jq -e '.layers[0].encrypted == "luks"' "$WORK/out"
expect_exit 1 "encrypted image: flatten refuses" "$VMEXPORT" chain flatten "$B" -o "$WORK/b.raw"
err_has "enc.qcow2: encrypted (luks)"

rm -rf "$B" && mkdir "$B"
(cd "$B" && qemu-img create -q -f qcow2 -o data_file=disk.data disk.qcow2 1M && mv disk.data ..)
expect_exit 1 "external data file: refused" "$VMEXPORT" chain info "$B"
err_has "disk.qcow2: guest data is in an external data file (disk.data), which is not supported"

# ---- upload (needs the daemon's upload API) ----
upload_api_ready() {
    [ -x "$VMEXPORTD" ] && command -v openssl >/dev/null && command -v curl >/dev/null || return 1
    "$VMEXPORT" chain upload --help >/dev/null 2>&1 || return 1
    VMS=$WORK/vms
    mkdir -p "$VMS/existing"
    truncate -s 1M "$VMS/existing/disk.img"
    PORT=$(free_port)
    write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
        "[provider.local]" "type = dir" "path = $VMS" || return 1
    start_daemon "$WORK/vmexportd.conf" "$PORT" || return 1
    login admin secret || return 1
    local got id
    got=$(api POST /api/v1/vms/chainprobe/uploads -d '{"disk":"probe.img","size":1048576,"format":"raw"}')
    [ "$got" = 201 ] || return 1
    id=$(jq -r '.id // empty' "$WORK/body")
    [ -n "$id" ] && api DELETE "/api/v1/transfers/$id" >/dev/null
    return 0
}

if upload_api_ready; then
    export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
    export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache
    mkdir -p "$WORK/tmp"
    TMPDIR=$WORK/tmp expect_exit 0 "upload the 5-layer chain (temporary file in \$TMPDIR)" \
        "$VMEXPORT" chain upload "$M5" --to chainvm --disk restored.img --jobs 3
    check "the uploaded disk holds the top's bytes" cmp "$VMS/chainvm/restored.img" "$WORK/c5.ref"
    check "no temporary file left in \$TMPDIR" test -z "$(ls -A "$WORK/tmp")"
    env -u TMPDIR "$VMEXPORT" chain upload "$C2" --to chainvm --disk second.img \
        >"$WORK/out" 2>"$WORK/err" && ok "upload with the temporary file next to DIR" ||
        not_ok "upload next to DIR: $(head -3 "$WORK/err")"
    check "the second disk holds the top's bytes" cmp "$VMS/chainvm/second.img" "$WORK/c2.ref"
    check "no temporary file left next to DIR" test -z "$(find "$WORK" -maxdepth 1 -name 'vmexport-chain-upload.*')"
    copy_chain "$C2" "$B" && rm "$B/base.qcow2"
    expect_exit 1 "upload of a broken chain fails before uploading" \
        "$VMEXPORT" chain upload "$B" --to chainvm --disk broken.img
    err_has "top.qcow2: backing file base.qcow2 not found"
    check "no disk made for the broken chain" test ! -e "$VMS/chainvm/broken.img"
else
    skip "chain upload: vmexportd's upload API (POST /api/v1/vms/X/uploads -> 201) is not available"
fi
