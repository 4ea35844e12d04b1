#!/bin/bash
# `vmexport repo upgrade PATH --format-version 3` on copies of the old-format fixture
# tests/fixtures/repo-v2 (format 2 plain and encrypted, format 1 plain; two VMs, a full and an
# incremental backup each): afterwards the config says 3 and the storage is packs and index
# objects, the same backups are listed (same IDs), every one restores bit for bit against the
# recorded disk images, verify passes, the old repository is kept as PATH.format<N>-<time>, and
# a new backup through the real daemon stays incremental against the upgraded backups.  Crash
# safety: the process killed (SIGKILL) before and after the directory exchange leaves PATH a
# whole repository (the old, then the new one), and a rerun finishes.  A repository without the
# free space for its copy is refused with nothing changed.
source "$(dirname "$0")/lib.sh"
for tool in jq xz python3; do command -v "$tool" >/dev/null || { skip "needs $tool"; exit 0; }; done

FIX=$VMEXPORT_ROOT/tests/fixtures/repo-v2
TRUTH=$WORK/truth
mkdir -p "$TRUTH"
tar -C "$TRUTH" -xJf "$FIX/truth.tar.xz" || { not_ok "unpack the fixture's disk images"; exit 1; }
PASSFILE=$WORK/encrypted.pass
install -m 600 "$FIX/encrypted.pass" "$PASSFILE"

copy_repo() { rm -rf "$2" && cp -r "$FIX/$1" "$2" && chmod -R u=rwX,go= "$2"; }
pf() { [ "$1" = encrypted ] && printf '%s\n' --passphrase-file "$PASSFILE"; }
backups_of() { awk -F'\t' -v r="$1" '$1 == r { print $2, $3, $4 }' "$FIX/backups.tsv"; }
same_disks() {
    [ "$(ls "$1")" = "$(ls "$2")" ] || { echo "disks $(ls "$1" | tr '\n' ' ')" >&2; return 1; }
    local d
    for d in "$2"/*; do cmp "$1/${d##*/}" "$d" >&2 || return 1; done
}
restore_exact() { # REPO NAME ID EXPECTED_DIR
    local out=$WORK/restored
    rm -rf "$out" && mkdir "$out"
    "$VMEXPORT" restore --repo "$1" $(pf "$2") "$3" --to "$out" </dev/null >/dev/null 2>"$WORK/restore.err" ||
        { cat "$WORK/restore.err" >&2; return 1; }
    same_disks "$out" "$4"
}
# format3_ok REPO: config version 3, packs and index objects, no chunk files.
format3_ok() {
    [ "$(jq .version "$1/config")" = 3 ] && [ -n "$(find "$1/packs" -type f)" ] &&
        [ -n "$(find "$1/index" -type f)" ] && [ -z "$(find "$1/chunks" -type f 2>/dev/null)" ]
}
ids() { "$VMEXPORT" backups --repo "$1" $(pf "$2") --json | jq -r '.[].id' | sort; }

VMS=$WORK/vms
mkdir -p "$VMS"
cp -r --sparse=always "$TRUTH/gen2/alpha" "$VMS/alpha"
head -c 4096 /dev/urandom | dd of="$VMS/alpha/boot.img" bs=4096 seek=20 conv=notrunc status=none
start_dir_daemon local "$VMS"
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt XDG_CACHE_HOME=$WORK/cache

for name in plain encrypted v1-plain; do
    version=2
    [ $name = v1-plain ] && version=1
    R=$WORK/$name
    copy_repo "$name" "$R" || { not_ok "$name: copy the fixture"; continue; }
    before=$(ids "$R" $name)
    if "$VMEXPORT" repo upgrade "$R" --format-version 3 $(pf $name) >"$WORK/up.out" 2>"$WORK/up.err"; then
        ok "$name: repo upgrade --format-version 3: $(cat "$WORK/up.out")"
    else
        not_ok "$name: repo upgrade: $(tail -2 "$WORK/up.err")"; continue
    fi
    check "$name:   the config says 3; packs and index objects, no chunk files" format3_ok "$R"
    old=$(ls -d "$R.format$version-"* 2>/dev/null)
    check "$name:   the old repository is kept as $(basename "$old")" \
        test "$(jq .version "$old/config" 2>/dev/null)" = $version
    check "$name:   no temporary copy is left" test ! -e "$R.upgrade-tmp"
    check "$name:   the same backups (IDs)" test "$(ids "$R" $name)" = "$before"
    while read -r id vm gen; do
        check "$name:   restore $vm $gen ($id) is bit-exact" restore_exact "$R" $name "$id" "$TRUTH/$gen/$vm"
    done < <(backups_of $name)
    check "$name:   verify passes" "$VMEXPORT" verify --repo "$R" $(pf $name)
    if "$VMEXPORT" backup alpha --repo "$R" $(pf $name) --json >"$WORK/b.out" 2>"$WORK/b.err"; then
        ok "$name:   a new backup of alpha ($(jq -c 'select(.type == "summary") | {incremental, bytes_read}' "$WORK/b.out"))"
        check "$name:   is incremental against the upgraded backup" \
            jq -e 'select(.type == "summary") | .incremental == true' "$WORK/b.out"
        NEW=$(jq -r 'select(.type == "summary") | .backup' "$WORK/b.out")
        check "$name:   and restores bit-exact" restore_exact "$R" $name "$NEW" "$VMS/alpha"
    else
        not_ok "$name:   a new backup of alpha: $(tail -2 "$WORK/b.err")"
    fi
    check "$name:   a second upgrade has nothing to do" "$VMEXPORT" repo upgrade "$R" --format-version 3 $(pf $name)
done

# --- killed at each point, then run again ---
R=$WORK/crash
for point in copied exchanged; do
    copy_repo plain "$R" && rm -rf "$R".format*
    VMEXPORT_TEST_UPGRADE_KILL=$point "$VMEXPORT" repo upgrade "$R" --format-version 3 >/dev/null 2>&1
    rc=$?
    check "kill -9 $point: the upgrade died (exit $rc)" test $rc = 137
    want=2
    [ $point = exchanged ] && want=3
    check "  PATH is the format $want repository" test "$(jq .version "$R/config")" = $want
    id=$(backups_of plain | awk '$2 == "alpha" && $3 == "gen2" { print $1 }')
    check "  and restores alpha gen2 bit-exact" restore_exact "$R" plain "$id" "$TRUTH/gen2/alpha"
    check "  a rerun completes" "$VMEXPORT" repo upgrade "$R" --format-version 3
    check "  PATH is format 3, the old one kept, no temporary copy" \
        eval 'format3_ok "$R" && test "$(jq .version "$R".format2-*/config)" = 2 && test ! -e "$R.upgrade-tmp"'
    check "  verify passes" "$VMEXPORT" verify --repo "$R"
done

# --- no room for the copy: refused, nothing changed ---
if [ "$(id -u)" = 0 ] && make_fs ext4 16 SMALL; then
    copy_repo plain "$SMALL/r"
    dd if=/dev/zero of="$SMALL/filler" bs=64K status=none 2>/dev/null # until the filesystem is full
    avail=$(df -B1 --output=avail "$SMALL" | tail -1)
    used=$(du -sB1 "$SMALL/r" | cut -f1)
    if [ "$avail" -lt "$used" ]; then
        "$VMEXPORT" repo upgrade "$SMALL/r" --format-version 3 >/dev/null 2>"$WORK/full.err"
        rc=$?
        check "no free space for the copy: refused (exit $rc: $(head -1 "$WORK/full.err"))" \
            eval 'test $rc = 1 && grep -q "MiB are available" "$WORK/full.err"'
        check "  nothing changed" eval 'test "$(jq .version "$SMALL/r/config")" = 2 && test ! -e "$SMALL/r.upgrade-tmp"'
    else
        skip "no free space: the filler left $avail bytes for a $used-byte repository"
    fi
else
    skip "no free space: needs root for a small filesystem"
fi
