#!/bin/bash
# Portable archives: a VM with a sparse disk and a random one is backed up through the real
# daemon, exported as tar and OVA, listed and extracted with GNU tar (sparse, checksums match the
# manifest and sha256sum, the OVF is well-formed XML), imported into fresh repositories of other
# chunk sizes and restored bit for bit; tampered, truncated, extended and reduced archives are
# refused without creating a backup; encrypted repositories, stdout-to-stdin pipes, --force and
# usage errors.
source "$(dirname "$0")/lib.sh"
require_root

MIB=$((1 << 20))

make_fs xfs 700 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/vm1"
# sparse.img: 64 MiB with data at 6.25 MiB (256 KiB), at 40 MiB (1 MiB) and in the last 4 KiB
truncate -s 64M "$VMS/vm1/sparse.img"
dd if=/dev/urandom of="$VMS/vm1/sparse.img" bs=64K count=4 seek=100 conv=notrunc status=none
dd if=/dev/urandom of="$VMS/vm1/sparse.img" bs=1M count=1 seek=40 conv=notrunc status=none
dd if=/dev/urandom of="$VMS/vm1/sparse.img" bs=4K count=1 seek=$((64 * 256 - 1)) conv=notrunc status=none
# random.raw: 12 MiB + 5000 bytes of random data (the last chunk is short)
head -c $((12 * MIB + 5000)) /dev/urandom >"$VMS/vm1/random.raw"
sync

PORT=$(free_port)
write_config "$WORK/vmexportd.conf" "$PORT" "$WORK/state" \
    "[provider.local]" "type = dir" "path = $VMS" || { not_ok "write config"; exit 1; }
start_daemon "$WORK/vmexportd.conf" "$PORT" || { not_ok "daemon starts"; exit 1; }
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt
export XDG_CACHE_HOME=$WORK/cache
unset VMEXPORT_REPO VMEXPORT_PASSPHRASE

A=$WORK/a   # archives and extractions
mkdir -p "$A"
REPO=$WORK/repo
check "repo init (1 MiB chunks)" "$VMEXPORT" repo init "$REPO" --chunk-size 1M
if "$VMEXPORT" backup vm1 --repo "$REPO" --json >"$WORK/backup.out" 2>"$WORK/backup.err"; then
    ID=$(grep '"type":"summary"' "$WORK/backup.out" | jq -r .backup)
    ok "backup vm1 ($ID)"
else
    not_ok "backup vm1: $(tail -2 "$WORK/backup.err")"; exit 1
fi
check "reference restore" "$VMEXPORT" restore --repo "$REPO" "$ID" --to "$WORK/ref"

# same_disks DIR: both disks in DIR equal the reference restore.
same_disks() {
    cmp -s "$1/sparse.img" "$WORK/ref/sparse.img" && cmp -s "$1/random.raw" "$WORK/ref/random.raw"
}
# backups_in REPO [ARGS]: number of backups listed.
backups_in() {
    local repo=$1; shift
    "$VMEXPORT" backups --repo "$repo" --json "$@" | jq length
}

# --- export: tar ---
check "export tar" "$VMEXPORT" export --repo "$REPO" "$ID" -o "$A/vm1.tar"
tar -tvf "$A/vm1.tar" >"$WORK/list.tar" 2>"$WORK/tar.err"

# libarchive is mapped only by export and import (dlopen, src/backup/archive_lib.c): other
# commands start without it and its dependencies.
LD_DEBUG=libs "$VMEXPORT" backups --repo "$REPO" >/dev/null 2>"$WORK/ld.backups"
LD_DEBUG=libs "$VMEXPORT" export --repo "$REPO" "$ID" -o "$A/ld.tar" >/dev/null 2>"$WORK/ld.export"
if ! grep -q 'calling init: .*libcrypto' "$WORK/ld.backups"; then
    not_ok "LD_DEBUG=libs shows the libraries a command loads: $(head -c 300 "$WORK/ld.backups")"
elif grep -q 'calling init: .*libarchive' "$WORK/ld.backups"; then
    not_ok "backups does not load libarchive"
else
    ok "backups does not load libarchive"
fi
if grep -q 'calling init: .*libarchive' "$WORK/ld.export" && cmp -s "$A/ld.tar" "$A/vm1.tar"; then
    ok "export loads libarchive on demand and writes the same archive"
else
    not_ok "export loads libarchive on demand and writes the same archive"
fi
rm -f "$A/ld.tar"
check "tar -tvf lists the tar archive" test -s "$WORK/list.tar"
members=$(tar -tf "$A/vm1.tar" | tr '\n' ' ')
disks=$("$VMEXPORT" backups --repo "$REPO" --json | jq -r '.[0].disks[].name' | tr '\n' ' ')
if [ "$members" = "vm.json ${disks}SHA256SUMS " ]; then
    ok "tar members in order: $members"
else
    not_ok "tar members: [$members]"
fi
check "tar -tv shows the real size of the sparse disk" grep -q " 67108864 .* sparse.img$" "$WORK/list.tar"
asize=$(stat -c %s "$A/vm1.tar")
check "the archive ($asize bytes) is much smaller than the disks (sparse members)" \
    test "$asize" -lt $((20 * MIB))
mkdir -p "$A/xt"
check "tar -xSf extracts the tar archive" tar -xSf "$A/vm1.tar" -C "$A/xt"
check "extracted disks equal vmexport restore" same_disks "$A/xt"
check "sha256sum -c SHA256SUMS passes" bash -c "cd '$A/xt' && sha256sum -c --quiet SHA256SUMS"
check "vm.json names the backup" jq -e --arg id "$ID" '.backup_id == $id and .vm_id == "vm1"' "$A/xt/vm.json"
check "vm.json lists both disks with sizes and change IDs" \
    jq -e '[.disks[] | select(.change_id != null)] | length == 2 and
           (map({(.name): .size}) | add) == {"sparse.img": 67108864, "random.raw": 12587912}' \
    "$A/xt/vm.json"
check "vm.json carries the VM metadata" jq -e '.vm.name == "vm1"' "$A/xt/vm.json"

# --- export: OVA ---
check "export ova (format from the extension)" "$VMEXPORT" export --repo "$REPO" "$ID" -o "$A/vm1.ova"
check "export --format ova to another name" \
    "$VMEXPORT" export --repo "$REPO" "$ID" -o "$A/other.bin" --format ova
check "the two OVAs are identical" cmp -s "$A/vm1.ova" "$A/other.bin"
first=$(tar -tf "$A/vm1.ova" | head -1)
last=$(tar -tf "$A/vm1.ova" | tail -1)
check "the OVF descriptor is the first member ($first)" test "$first" = vm1.ovf
check "the .mf manifest is the last member ($last)" test "$last" = vm1.mf
mkdir -p "$A/xo"
check "tar -xSf extracts the OVA" tar -xSf "$A/vm1.ova" -C "$A/xo"
check "OVA disks equal vmexport restore" same_disks "$A/xo"
# The .mf is checked with independent tools: every member's sha256sum is in it.
mf_ok=1
for f in vm1.ovf vm.json sparse.img random.raw; do
    want=$(sha256sum "$A/xo/$f" | cut -d' ' -f1)
    grep -qx "SHA256($f)= $want" "$A/xo/vm1.mf" || { mf_ok=0; diag "$f: $want not in vm1.mf"; }
done
[ $mf_ok = 1 ] && ok "vm1.mf holds the sha256sum of every member" || not_ok "vm1.mf checksums"
check "vm1.mf has exactly 4 lines" test "$(wc -l <"$A/xo/vm1.mf")" -eq 4
check "extracted sparse disk is sparse (du)" test "$(du -k "$A/xo/sparse.img" | cut -f1)" -lt 8192
check "the OVF gives the capacity in bytes" grep -q 'ovf:capacity="67108864"' "$A/xo/vm1.ovf"
check "the OVF names the raw format" grep -q 'ovf:format="http://en.wikipedia.org/wiki/Byte"' "$A/xo/vm1.ovf"
check "the OVF references both disk files" \
    bash -c "grep -q 'ovf:href=\"sparse.img\"' '$A/xo/vm1.ovf' &&
             grep -q 'ovf:href=\"random.raw\"' '$A/xo/vm1.ovf'"
if command -v xmllint >/dev/null; then
    check "xmllint: the OVF is well-formed" xmllint --noout "$A/xo/vm1.ovf"
    n=$(xmllint --xpath 'count(//*[local-name()="Item"])' "$A/xo/vm1.ovf" 2>/dev/null)
    check "the OVF has one disk Item per disk ($n)" test "$n" = 2
else
    skip "xmllint not installed (libxml2-utils)"
    skip "xmllint not installed (libxml2-utils)"
fi

# --- import round trips ---
check "repo init of a fresh repository (64 KiB chunks, format 2: counted as files)" \
    "$VMEXPORT" repo init "$WORK/r2" --chunk-size 64K --format-version 2
if "$VMEXPORT" import "$A/vm1.ova" --repo "$WORK/r2" --json >"$WORK/imp.out" 2>"$WORK/imp.err"; then
    ok "import the OVA into it"
else
    not_ok "import the OVA: $(tail -2 "$WORK/imp.err")"
fi
IID=$(grep '"type":"summary"' "$WORK/imp.out" | jq -r .backup)
check "the summary names the source backup" jq -e --arg id "$ID" '.source_backup == $id' \
    <(grep '"type":"summary"' "$WORK/imp.out")
check "one backup of vm1 is listed" test "$(backups_in "$WORK/r2" vm1)" -eq 1
check "the imported backup keeps the original time" \
    test "$("$VMEXPORT" backups --repo "$WORK/r2" --json | jq .[0].time)" = \
         "$("$VMEXPORT" backups --repo "$REPO" --json | jq .[0].time)"
check "restore of the imported backup" "$VMEXPORT" restore --repo "$WORK/r2" "$IID" --to "$A/r2"
check "restored disks equal the original restore (re-chunked at 64 KiB)" same_disks "$A/r2"
check "the imported backup verifies" "$VMEXPORT" verify --repo "$WORK/r2"
chunks=$(find "$WORK/r2/chunks" -type f | wc -l)
# data: 12 MiB + 5000 (random.raw), 256 KiB + 1 MiB + 4 KiB (sparse.img), in 64 KiB chunks
check "holes were not stored ($chunks chunks of 64 KiB)" \
    test "$chunks" -le $(((13 * MIB + 256 * 1024 + 2 * 4096 + 65536) / 65536 + 2))

# format 3: the ~215 chunks of 64 KiB go into one batch per disk, not a pack per chunk
check "repo init (64 KiB chunks, format 3: packs)" "$VMEXPORT" repo init "$WORK/r6" --chunk-size 64K
check "import the OVA into the format 3 repository" \
    "$VMEXPORT" import "$A/vm1.ova" --repo "$WORK/r6"
packs=$(find "$WORK/r6/packs" -type f | wc -l)
indexes=$(find "$WORK/r6/index" -type f | wc -l)
check "the import's chunks are in few packs ($packs) and index objects ($indexes): one per disk" \
    test "$packs" -ge 1 -a "$packs" -le 2 -a "$indexes" -ge 1 -a "$indexes" -le 2
IID6=$("$VMEXPORT" backups --repo "$WORK/r6" --json | jq -r '.[0].id')
check "restore from the format 3 import" "$VMEXPORT" restore --repo "$WORK/r6" "$IID6" --to "$A/r6"
check "its disks equal the original restore" same_disks "$A/r6"
check "the format 3 import verifies" "$VMEXPORT" verify --repo "$WORK/r6"

check "repo init (default 4 MiB chunks)" "$VMEXPORT" repo init "$WORK/r3"
check "import the tar with --vm" "$VMEXPORT" import "$A/vm1.tar" --repo "$WORK/r3" --vm copy-of-vm1
IID3=$("$VMEXPORT" backups --repo "$WORK/r3" --json | jq -r '.[0].id')
check "it is listed under the new VM name" test "$(backups_in "$WORK/r3" copy-of-vm1)" -eq 1
check "restore of the imported tar" "$VMEXPORT" restore --repo "$WORK/r3" "$IID3" --to "$A/r3"
check "restored disks equal the original restore (4 MiB chunks)" same_disks "$A/r3"
check "importing the same archive again adds a second backup" \
    "$VMEXPORT" import "$A/vm1.tar" --repo "$WORK/r3" --vm copy-of-vm1
check "and reuses every chunk" bash -c \
    "'$VMEXPORT' import '$A/vm1.tar' --repo '$WORK/r3' --vm copy-of-vm1 --json |
     grep summary | jq -e '.chunks_new == 0' >/dev/null"
check "a re-export of an imported backup extracts to the same disks" \
    "$VMEXPORT" export --repo "$WORK/r2" "$IID" -o "$A/again.tar"
mkdir -p "$A/xa"
tar -xf "$A/again.tar" -C "$A/xa" 2>/dev/null
check "(compared)" same_disks "$A/xa"

# --- tampering: nothing is committed ---
# flip_byte_of ARCHIVE SOURCE OFFSET: find 64 bytes of SOURCE at OFFSET inside ARCHIVE and flip
# the first of them.
flip_byte_of() {
    python3 - "$@" <<'EOF'
import sys
arc, src, off = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src, 'rb') as f:
    f.seek(off)
    needle = f.read(64)
data = bytearray(open(arc, 'rb').read())
pos = data.find(needle)
if pos < 0 or data.find(needle, pos + 1) >= 0:
    sys.exit("needle not found exactly once")
data[pos] ^= 0xff
open(arc, 'wb').write(data)
EOF
}
check "repo init (target of the bad imports)" "$VMEXPORT" repo init "$WORK/r4" --chunk-size 1M

cp "$A/vm1.ova" "$A/bad.ova"
check "flip a byte inside member random.raw" \
    flip_byte_of "$A/bad.ova" "$WORK/ref/random.raw" $((5 * MIB + 12345))
"$VMEXPORT" import "$A/bad.ova" --repo "$WORK/r4" >/dev/null 2>"$WORK/err"
rc=$?
check "import of the tampered OVA fails with exit 1 (got $rc)" test $rc -eq 1
check "the error names the member" grep -q "member random.raw does not match" "$WORK/err"
check "no backup was created" test "$(backups_in "$WORK/r4")" -eq 0
check "and no manifest of a partial backup is left" \
    bash -c "! find '$WORK/r4/backups' -name '*.manifest' 2>/dev/null | grep -q ."

cp "$A/vm1.tar" "$A/bad.tar"
check "flip a byte inside member sparse.img" \
    flip_byte_of "$A/bad.tar" "$WORK/ref/sparse.img" $((40 * MIB + 777))
"$VMEXPORT" import "$A/bad.tar" --repo "$WORK/r4" >/dev/null 2>"$WORK/err"
check "import of the tampered tar fails with exit 1, naming sparse.img" \
    bash -c "[ $? -eq 1 ] && grep -q 'member sparse.img does not match' '$WORK/err'"

cp "$A/xo/vm.json" "$WORK/vm.json.orig"
mkdir -p "$A/t1" && cp -a "$A/xo/." "$A/t1/"
jq '.time = 1000000000' "$WORK/vm.json.orig" >"$A/t1/vm.json"
(cd "$A/t1" && tar --format=pax -cSf "$A/badmeta.ova" vm1.ovf vm.json sparse.img random.raw vm1.mf)
"$VMEXPORT" import "$A/badmeta.ova" --repo "$WORK/r4" >/dev/null 2>"$WORK/err"
check "a rewritten archive with a modified vm.json fails with exit 1, naming vm.json" \
    bash -c "[ $? -eq 1 ] && grep -q 'member vm.json does not match' '$WORK/err'"

(cd "$A/xo" && tar --format=pax -cSf "$A/missing.ova" vm1.ovf vm.json sparse.img vm1.mf)
"$VMEXPORT" import "$A/missing.ova" --repo "$WORK/r4" >/dev/null 2>"$WORK/err"
check "an archive missing a disk member fails with exit 1, naming it" \
    bash -c "[ $? -eq 1 ] && grep -q 'random.raw' '$WORK/err'"

echo "extra" >"$A/xo/extra.txt"
(cd "$A/xo" && tar --format=pax -cSf "$A/extra.ova" vm1.ovf vm.json sparse.img extra.txt random.raw vm1.mf)
"$VMEXPORT" import "$A/extra.ova" --repo "$WORK/r4" >/dev/null 2>"$WORK/err"
check "an archive with an extra member fails with exit 1, naming it" \
    bash -c "[ $? -eq 1 ] && grep -q 'extra.txt' '$WORK/err'"

cp "$A/vm1.tar" "$A/appended.tar"
tar --append -f "$A/appended.tar" -C "$A/xo" extra.txt
"$VMEXPORT" import "$A/appended.tar" --repo "$WORK/r4" >/dev/null 2>"$WORK/err"
check "a member after the manifest fails with exit 1, naming it" \
    bash -c "[ $? -eq 1 ] && grep -q 'extra.txt follows the manifest' '$WORK/err'"

(cd "$A/xo" && tar --format=pax -cSf "$A/nomf.ova" vm1.ovf vm.json sparse.img random.raw)
"$VMEXPORT" import "$A/nomf.ova" --repo "$WORK/r4" >/dev/null 2>"$WORK/err"
check "an archive without a manifest fails with exit 1" \
    bash -c "[ $? -eq 1 ] && grep -qi 'no manifest' '$WORK/err'"

head -c $((asize / 2)) "$A/vm1.tar" >"$A/trunc.tar"
"$VMEXPORT" import "$A/trunc.tar" --repo "$WORK/r4" >/dev/null 2>"$WORK/err"
check "a truncated archive fails with exit 1" test $? -eq 1
check "after all bad imports the repository has no backup" test "$(backups_in "$WORK/r4")" -eq 0
check "gc cleans up what the bad imports stored" "$VMEXPORT" gc --repo "$WORK/r4"
check "and the repository verifies" "$VMEXPORT" verify --repo "$WORK/r4"

# --- encrypted source and destination ---
printf 'archive test passphrase\n' >"$WORK/pass"
check "repo init --encrypt" \
    "$VMEXPORT" repo init "$WORK/er" --encrypt --passphrase-file "$WORK/pass" --chunk-size 1M
check "encrypted backup" "$VMEXPORT" backup vm1 --repo "$WORK/er" --passphrase-file "$WORK/pass"
EID=$("$VMEXPORT" backups --repo "$WORK/er" --passphrase-file "$WORK/pass" --json | jq -r '.[0].id')
"$VMEXPORT" export --repo "$WORK/er" "$EID" -o "$A/enc.tar" </dev/null >/dev/null 2>"$WORK/err"
check "export from an encrypted repository without the passphrase fails (exit 1)" test $? -eq 1
check "and asks for the passphrase" grep -qi passphrase "$WORK/err"
check "export from the encrypted repository with the passphrase" \
    "$VMEXPORT" export --repo "$WORK/er" "$EID" -o "$A/enc.ova" --passphrase-file "$WORK/pass"
mkdir -p "$A/xe"
tar -xSf "$A/enc.ova" -C "$A/xe"
check "its disks equal the plain restore" same_disks "$A/xe"
check "its manifest checks with sha256sum" bash -c "cd '$A/xe' && sha256sum -c --quiet vm1.mf"
check "repo init --encrypt (import target)" \
    "$VMEXPORT" repo init "$WORK/er2" --encrypt --passphrase-file "$WORK/pass"
check "import into an encrypted repository" \
    env VMEXPORT_PASSPHRASE='archive test passphrase' "$VMEXPORT" import "$A/vm1.ova" --repo "$WORK/er2"
E2=$(VMEXPORT_PASSPHRASE='archive test passphrase' "$VMEXPORT" backups --repo "$WORK/er2" --json |
     jq -r '.[0].id')
check "restore from it" \
    "$VMEXPORT" restore --repo "$WORK/er2" --passphrase-file "$WORK/pass" "$E2" --to "$A/re2"
check "equals the original" same_disks "$A/re2"

# --- pipes ---
check "repo init (pipe target)" "$VMEXPORT" repo init "$WORK/r5" --chunk-size 256K
"$VMEXPORT" export --repo "$REPO" "$ID" -o - --format ova 2>"$WORK/exp.err" |
    "$VMEXPORT" import - --repo "$WORK/r5" --json >"$WORK/pipe.out" 2>"$WORK/pipe.err"
rcs=("${PIPESTATUS[@]}")
check "export -o - | import - succeeds (${rcs[*]})" test "${rcs[0]}" -eq 0 -a "${rcs[1]}" -eq 0
check "the export summary went to stderr" grep -q "exported backup $ID" "$WORK/exp.err"
PID5=$(grep '"type":"summary"' "$WORK/pipe.out" | jq -r .backup)
check "restore of the piped import" "$VMEXPORT" restore --repo "$WORK/r5" "$PID5" --to "$A/r5"
check "equals the original" same_disks "$A/r6"
check "a gzip-compressed tar imports too" bash -c \
    "gzip -c '$A/vm1.tar' | '$VMEXPORT' import - --repo '$WORK/r5' --vm gz >/dev/null"
"$VMEXPORT" export --repo "$REPO" "$ID" -o - 2>/dev/null | tar -tf - >"$WORK/stdout.list" 2>/dev/null
check "tar lists an archive read from export's stdout" grep -qx SHA256SUMS "$WORK/stdout.list"

# --- overwriting, failures, usage ---
before=$(sha256sum <"$A/vm1.tar")
"$VMEXPORT" export --repo "$REPO" "$ID" -o "$A/vm1.tar" >/dev/null 2>"$WORK/err"
check "export refuses to overwrite without --force (exit 1)" test $? -eq 1
check "with a message" grep -q "exists" "$WORK/err"
check "the file is unchanged" test "$(sha256sum <"$A/vm1.tar")" = "$before"
check "export --force overwrites" "$VMEXPORT" export --repo "$REPO" "$ID" -o "$A/vm1.tar" --force
check "export --json prints a summary" bash -c \
    "'$VMEXPORT' export --repo '$REPO' '$ID' -o '$A/j.tar' --json |
     grep summary | jq -e '.disks == 2 and .format == \"tar\"' >/dev/null"
"$VMEXPORT" export --repo "$REPO" nope -o "$A/nope.tar" >/dev/null 2>"$WORK/err"
check "export of an unknown backup fails (exit 1)" test $? -eq 1
check "and leaves no file" test ! -e "$A/nope.tar"
check "no temporary files are left" bash -c "! ls -a '$A' | grep -q '\.tmp\.'"
"$VMEXPORT" import "$A/nonexistent.tar" --repo "$WORK/r4" >/dev/null 2>"$WORK/err"
check "import of a missing file fails (exit 1)" test $? -eq 1
echo "not an archive" >"$A/junk.tar"
"$VMEXPORT" import "$A/junk.tar" --repo "$WORK/r4" >/dev/null 2>&1
check "import of a non-archive fails (exit 1)" test $? -eq 1

usage() { # usage DESCRIPTION ARGS...: the command must exit 2
    local what=$1; shift
    "$VMEXPORT" "$@" >/dev/null 2>&1
    local rc=$?
    if [ $rc -eq 2 ]; then ok "usage error exits 2: $what"; else not_ok "usage error: $what (exit $rc)"; fi
}
usage "export without -o" export --repo "$REPO" "$ID"
usage "export without a backup" export --repo "$REPO" -o "$A/x.tar"
usage "export --format zip" export --repo "$REPO" "$ID" -o "$A/x.zip" --format zip
usage "export with an unknown option" export --repo "$REPO" "$ID" -o "$A/x.tar" --bogus
usage "import without a file" import --repo "$WORK/r4"
usage "import with two files" import a b --repo "$WORK/r4"
usage "import --vm with a slash" import "$A/vm1.tar" --repo "$WORK/r4" --vm a/b
check "export --help" bash -c "'$VMEXPORT' export --help | grep -q 'Exit status'"
check "import --help" bash -c "'$VMEXPORT' import --help | grep -q 'Exit status'"
