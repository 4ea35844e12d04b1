#!/bin/bash
# Old-format repositories keep working: the fixture tests/fixtures/repo-v2/ (written by an
# earlier vmexport, see its MADE-BY and make.sh) holds a format 2 repository, plain and
# encrypted, and a format 1 one, each with two VMs and a full and an incremental backup of each.
# On a copy of each, with the binaries under test: `backups` lists them, every backup restores
# bit for bit against the recorded disk images, verify passes; a new backup (through the real
# daemon) goes into the repository in its own format (config version, chunks/xx/<64 hex> files
# with the repository's container version byte), reuses the old chunks and restores; prune + gc
# keep the rest restorable.  A damaged chunk is reported by verify (exit 1) and makes the
# restores that need it fail with an error naming it, leaving nothing behind: never wrong data.
source "$(dirname "$0")/lib.sh"
for tool in jq xz sha256sum python3; do command -v "$tool" >/dev/null || { skip "needs $tool"; exit 0; }; done

FIX=$VMEXPORT_ROOT/tests/fixtures/repo-v2
CHUNK=65536
TRUTH=$WORK/truth
mkdir -p "$TRUTH"
tar -C "$TRUTH" -xJf "$FIX/truth.tar.xz" || { not_ok "unpack the fixture's disk images"; exit 1; }
diag "fixture: $(head -1 "$FIX/MADE-BY")"
PASSFILE=$WORK/encrypted.pass
install -m 600 "$FIX/encrypted.pass" "$PASSFILE"

# copy_repo NAME DEST: a copy of the fixture's repository NAME, with the modes a repository has.
copy_repo() {
    rm -rf "$2"
    cp -r "$FIX/$1" "$2" && chmod -R u=rwX,go= "$2"
}

# pf NAME: the passphrase option of repository NAME (none when it is plain).
pf() { [ "$1" = encrypted ] && printf '%s\n' --passphrase-file "$PASSFILE"; }

# backups_of NAME: "ID VM GEN" lines of the fixture's backups in repository NAME.
backups_of() { awk -F'\t' -v r="$1" '$1 == r { print $2, $3, $4 }' "$FIX/backups.tsv"; }

# same_disks DIR EXPECTED_DIR: DIR holds exactly the disks of EXPECTED_DIR, bit for bit.
same_disks() {
    [ "$(ls "$1")" = "$(ls "$2")" ] || { echo "disks $(ls "$1" | tr '\n' ' ')" >&2; return 1; }
    local d
    for d in "$2"/*; do cmp "$1/${d##*/}" "$d" >&2 || return 1; done
}

# restore_exact REPO NAME ID EXPECTED_DIR: restore backup ID of REPO, compare with EXPECTED_DIR.
restore_exact() {
    local out=$WORK/restored
    rm -rf "$out"
    mkdir "$out"
    "$VMEXPORT" restore --repo "$1" $(pf "$2") "$3" --to "$out" </dev/null >/dev/null 2>"$WORK/restore.err" ||
        { cat "$WORK/restore.err" >&2; return 1; }
    same_disks "$out" "$4"
}

# layout_ok REPO VERSION: the config says VERSION; the repository has no storage of another
# format (packs/, index/); every chunk is a file chunks/xx/<64 hex digits, starting xx> whose
# container starts with the magic VXCK and the version byte VERSION (offset 4).
layout_ok() {
    python3 - "$1" "$2" <<'PY'
import json, os, re, sys
repo, version = sys.argv[1], int(sys.argv[2])
got = json.load(open(os.path.join(repo, "config")))["version"]
if got != version:
    sys.exit(f"config version {got}")
for other in ("packs", "index"):
    if os.path.exists(os.path.join(repo, other)):
        sys.exit(f"{other}/ in {repo}")
n = 0
for top, dirs, files in os.walk(os.path.join(repo, "chunks")):
    for f in files:
        rel = os.path.relpath(os.path.join(top, f), repo)
        m = re.fullmatch(r"chunks/([0-9a-f]{2})/([0-9a-f]{64})", rel)
        if not m or m[2][:2] != m[1]:
            sys.exit(f"not a chunk file: {rel}")
        with open(os.path.join(repo, rel), "rb") as fh:
            head = fh.read(5)
        if head[:4] != b"VXCK" or head[4] != version:
            sys.exit(f"{rel}: not a version {version} container: {head!r}")
        n += 1
sys.exit(0 if n else "no chunk files")
PY
}

# flip_byte FILE: invert the byte in the middle of FILE.
flip_byte() {
    local off=$(($(stat -c %s "$1") / 2)) b
    b=$(od -An -tu1 -j"$off" -N1 "$1" | tr -d ' ')
    printf "\\$(printf %03o $((b ^ 255)))" | dd of="$1" bs=1 seek="$off" conv=notrunc status=none
}

# The daemon serving VM alpha at a third generation, for the new backups.
VMS=$WORK/vms
mkdir -p "$VMS"
cp -r --sparse=always "$TRUTH/gen2/alpha" "$VMS/alpha"
head -c 4096 /dev/urandom | dd of="$VMS/alpha/boot.img" bs=4096 seek=20 conv=notrunc status=none
head -c 100 /dev/urandom | dd of="$VMS/alpha/zeros.img" bs=1 seek=$((2 * CHUNK + 7)) conv=notrunc status=none
mkdir -p "$WORK/gen3"
cp -r --sparse=always "$VMS/alpha" "$WORK/gen3/alpha"
start_dir_daemon local "$VMS"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

for name in plain encrypted v1-plain; do
    version=2
    [ $name = v1-plain ] && version=1
    R=$WORK/$name
    copy_repo "$name" "$R" || { not_ok "$name: copy the fixture"; continue; }
    diag "--- $name (format $version)"

    # backups: every recorded backup, with its VM, disks and sizes.
    "$VMEXPORT" backups --repo "$R" $(pf $name) --json >"$WORK/list.json" 2>"$WORK/list.err"
    ok_list=1
    [ "$(jq length "$WORK/list.json" 2>/dev/null)" = 4 ] || ok_list=0
    while read -r id vm gen; do
        want=$(cd "$TRUTH/$gen/$vm" && for d in *; do printf '%s %s\n' "$d" "$(stat -c %s "$d")"; done)
        got=$(jq -r --arg id "$id" --arg vm "$vm" \
            '.[] | select(.id == $id and .vm == $vm) | .disks[] | "\(.name) \(.size)"' "$WORK/list.json" 2>/dev/null | sort)
        [ "$got" = "$want" ] || { ok_list=0; diag "$id: disks '$got', want '$want'"; }
    done < <(backups_of $name)
    if [ $ok_list = 1 ]; then ok "$name: backups lists the 4 backups with their VMs, disks and sizes"
    else not_ok "$name: backups: $(head -c 300 "$WORK/list.json") $(head -2 "$WORK/list.err")"; fi

    # every backup restores bit for bit.
    while read -r id vm gen; do
        check "$name: restore $vm $gen ($id) is bit-exact" restore_exact "$R" $name "$id" "$TRUTH/$gen/$vm"
    done < <(backups_of $name)
    check "$name: verify passes" "$VMEXPORT" verify --repo "$R" $(pf $name)
    check "$name: the config says version $version, chunks are version $version containers" layout_ok "$R" $version
    nchunks=$(find "$R/chunks" -type f | wc -l)

    # a new backup into the old-format repository.
    if "$VMEXPORT" backup alpha --repo "$R" $(pf $name) --json >"$WORK/b.out" 2>"$WORK/b.err" &&
        jq -s -e '[.[] | select(.type == "summary")] | length == 1' "$WORK/b.out" >/dev/null; then
        NEW=$(jq -r 'select(.type == "summary") | .backup' "$WORK/b.out")
        ok "$name: a new backup of alpha ($(jq -c 'select(.type == "summary") | {chunks_new, chunks_reused}' "$WORK/b.out"))"
    else
        not_ok "$name: a new backup of alpha: $(tail -2 "$WORK/b.err")"; NEW=none
    fi
    check "$name:   it dedups against the old chunks" \
        jq -e 'select(.type == "summary") | .chunks_reused > 0' "$WORK/b.out"
    check "$name:   and restores bit-exact" restore_exact "$R" $name "$NEW" "$WORK/gen3/alpha"
    check "$name:   the repository stays format $version (config, chunk files, containers)" layout_ok "$R" $version
    check "$name:   with more chunks than before" test "$(find "$R/chunks" -type f | wc -l)" -gt "$nchunks"

    # prune + gc: the newest backup of each VM stays, restorable.
    check "$name: prune --keep-last 1" "$VMEXPORT" prune --repo "$R" $(pf $name) --keep-last 1
    beta2=$(backups_of $name | awk '$2 == "beta" && $3 == "gen2" { print $1 }')
    check "$name:   leaves the new backup of alpha and beta's gen2" \
        jq -e --arg a "$NEW" --arg b "$beta2" '(map(.id) | sort) == ([$a, $b] | sort)' \
        <("$VMEXPORT" backups --repo "$R" $(pf $name) --json)
    nchunks=$(find "$R/chunks" -type f | wc -l)
    check "$name: gc" "$VMEXPORT" gc --repo "$R" $(pf $name)
    check "$name:   deleted the chunks only the pruned backups used" \
        test "$(find "$R/chunks" -type f | wc -l)" -lt "$nchunks"
    check "$name:   the new backup restores bit-exact" restore_exact "$R" $name "$NEW" "$WORK/gen3/alpha"
    check "$name:   beta gen2 restores bit-exact" restore_exact "$R" $name "$beta2" "$TRUTH/gen2/beta"
    check "$name:   verify passes" "$VMEXPORT" verify --repo "$R" $(pf $name)
    check "$name:   the repository stays format $version" layout_ok "$R" $version

    # a damaged chunk: reported, and never restored as wrong data.  In a plain repository the
    # chunk ID is the SHA-256 of the data: damage the first chunk of alpha's gen1 boot.img, which
    # gen2 changed (only gen1 needs it); in the encrypted one the IDs are keyed: the largest chunk.
    copy_repo "$name" "$R" || { not_ok "$name: copy the fixture"; continue; }
    if [ $name = encrypted ]; then
        victim=$(cd "$R" && find chunks -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2)
    else
        id=$(head -c $CHUNK "$TRUTH/gen1/alpha/boot.img" | sha256sum | cut -c1-64)
        victim=chunks/${id:0:2}/$id
    fi
    check "$name: the chunk to damage exists ($victim)" test -f "$R/$victim"
    flip_byte "$R/$victim"
    "$VMEXPORT" verify --repo "$R" $(pf $name) >"$WORK/verify.out" 2>&1
    rc=$?
    if [ $rc = 1 ] && grep -q "${victim##*/}" "$WORK/verify.out"; then ok "$name: verify finds the damaged chunk (exit 1)"
    else not_ok "$name: verify with a damaged chunk: exit $rc: $(head -c 400 "$WORK/verify.out")"; fi
    failed=0 wrong=0
    while read -r id vm gen; do
        rm -rf "$WORK/restored"
        mkdir "$WORK/restored"
        if "$VMEXPORT" restore --repo "$R" $(pf $name) "$id" --to "$WORK/restored" </dev/null >/dev/null 2>"$WORK/restore.err"; then
            same_disks "$WORK/restored" "$TRUTH/$gen/$vm" 2>/dev/null || { wrong=$((wrong + 1)); diag "$id restored wrong data"; }
        else
            failed=$((failed + 1))
            if grep -qiE 'damaged|checksum|corrupt|authenticat' "$WORK/restore.err" &&
                grep -q "${victim##*/}" "$WORK/restore.err" && [ -z "$(ls -A "$WORK/restored")" ]; then
                ok "$name:   restore of $vm $gen fails naming the chunk, leaving nothing: $(head -1 "$WORK/restore.err")"
            else
                not_ok "$name:   restore of $vm $gen fails, but: $(head -2 "$WORK/restore.err") / left: $(ls -A "$WORK/restored")"
            fi
            if [ $name != encrypted ] && [ "$vm $gen" != "alpha gen1" ]; then not_ok "$name:   $vm $gen does not need that chunk"; fi
        fi
    done < <(backups_of $name)
    check "$name:   no restore gave wrong data, at least one failed ($failed)" test $wrong = 0 -a $failed -gt 0
    if [ $name != encrypted ]; then
        check "$name:   exactly the backup that needs it failed" test $failed = 1
    fi
done
