#!/bin/bash
# Repository hardening (issue 16) against the real daemon over TLS:
#  - a failed restore leaves nothing in the destination and never clobbers an existing file
#    (a damaged chunk in the second disk; a destination filesystem that fills up);
#  - an encrypted repository cannot be downgraded or have its config changed without the key;
#  - snapshots left on the server by killed backups are removed by the next backup of the VM
#    into the same repository, while the user's own and other repositories' snapshots stay.
source "$(dirname "$0")/lib.sh"
require_root

MIB=$((1 << 20))
make_fs xfs 800 XFS || { not_ok "create xfs"; exit 1; }
VMS=$XFS/vms
mkdir -p "$VMS/vm1"
# Two disks; the second restores after the first (disks are listed by name).
dd if=/dev/urandom of="$VMS/vm1/a.img" bs=1M count=4 status=none
dd if=/dev/urandom of="$VMS/vm1/b.img" bs=1M count=12 status=none
sync

# The daemon starts on a catalog made before snapshots had labels (it adds the column).
mkdir -p "$WORK/state"
if command -v sqlite3 >/dev/null; then
    sqlite3 "$WORK/state/catalog.db" "CREATE TABLE snapshots (seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE, vm_id TEXT NOT NULL, provider TEXT NOT NULL,
        created_at TEXT NOT NULL, parent_id TEXT, status TEXT NOT NULL);
        PRAGMA user_version=1;" && chmod 600 "$WORK/state/catalog.db"
fi
start_dir_daemon local "$VMS"
if command -v sqlite3 >/dev/null; then
    check "an older catalog gets the label column" \
        grep -qx label <(sqlite3 "$WORK/state/catalog.db" "SELECT name FROM pragma_table_info('snapshots')")
else
    skip "an older catalog gets the label column: no sqlite3"
fi
export VMEXPORT_SERVER=$URL VMEXPORT_USER=admin VMEXPORT_PASSWORD=secret
export VMEXPORT_CACERT=$WORK/certs/ca.crt
export XDG_CACHE_HOME=$WORK/cache
unset VMEXPORT_PASSPHRASE

# ---------------------------------------------------------------------------------------------
# A failed restore leaves nothing in the destination.
REPO=$WORK/repo
# Format 2: one file per chunk, named by its SHA-256 (damaged below by that name).
check "repo init" "$VMEXPORT" repo init "$REPO" --format-version 2
"$VMEXPORT" backup vm1 --repo "$REPO" --json >"$WORK/b.out" 2>"$WORK/b.err" &&
    ok "backup of vm1 (a.img, b.img)" || not_ok "backup of vm1: $(tail -2 "$WORK/b.err")"
BID=$(grep '"type":"summary"' "$WORK/b.out" | jq -r .backup)
"$VMEXPORT" backups --repo "$REPO" --json >"$WORK/list.json"
check "the backup lists a.img before b.img" \
    jq -e '.[0].disks | map(.name) == ["a.img", "b.img"]' "$WORK/list.json"

# Damage b.img's third chunk: chunks of an unencrypted repository are named by their SHA-256.
cid=$(dd if="$VMS/vm1/b.img" bs=1M skip=2 count=1 status=none | sha256sum | cut -c1-64)
chunk=$REPO/chunks/${cid:0:2}/$cid
check "b.img's third chunk is in the repository" test -f "$chunk"
cp "$chunk" "$WORK/chunk.good"
size=$(stat -c %s "$chunk")
printf '\xff' | dd of="$chunk" bs=1 seek=$((size / 2)) conv=notrunc status=none
cmp -s "$chunk" "$WORK/chunk.good" && printf '\x00' | dd of="$chunk" bs=1 seek=$((size / 2)) conv=notrunc status=none

# listing DIR: its entries, hidden ones too, one a line.
listing() { (cd "$1" && ls -A | sort); }

mkdir -p "$WORK/dest"
echo "the user's own file" >"$WORK/dest/notes.txt"
listing "$WORK/dest" >"$WORK/before"
check_fails "restore with a damaged chunk in the second disk fails" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/dest"
listing "$WORK/dest" >"$WORK/after"
if cmp -s "$WORK/before" "$WORK/after"; then ok "  the destination directory holds nothing new"
else not_ok "  the destination directory holds: $(tr '\n' ' ' <"$WORK/after")"; fi

check_fails "restore into a new directory with a damaged chunk fails" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/newdest"
check "  and does not leave the directory it created" test ! -e "$WORK/newdest"

echo "precious a.img" >"$WORK/dest/a.img"
listing "$WORK/dest" >"$WORK/before"
check_fails "restore --force over an existing a.img, b.img damaged, fails" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/dest" --force
check "  the existing a.img is not clobbered" grep -qx "precious a.img" "$WORK/dest/a.img"
listing "$WORK/dest" >"$WORK/after"
check "  and nothing else appeared" cmp -s "$WORK/before" "$WORK/after"
check_fails "restore without --force refuses the existing a.img" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/dest"
check "  before writing anything" cmp -s "$WORK/before" <(listing "$WORK/dest")

# A destination filesystem that fills up half-way (a.img fits, b.img does not).
make_fs ext4 12 SMALL || { not_ok "create a small ext4"; exit 1; }
cp "$WORK/chunk.good" "$chunk"
listing "$SMALL" >"$WORK/before"
"$VMEXPORT" restore --repo "$REPO" "$BID" --to "$SMALL" >/dev/null 2>"$WORK/r.err"
rc=$?
if [ $rc != 0 ] && grep -q "no space left" "$WORK/r.err"; then ok "restore onto a filesystem that fills up fails (no space)"
else not_ok "restore onto a filesystem that fills up: exit $rc: $(tail -2 "$WORK/r.err")"; fi
check "  the filesystem holds nothing new" cmp -s "$WORK/before" <(listing "$SMALL")
check "  and its space is free again" test "$(df --output=used -k "$SMALL" | tail -1)" -lt 2048

# And with the chunk repaired, a restore over the existing file works.
check "restore --force with every chunk intact succeeds" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --to "$WORK/dest" --force
check "  a.img is the backup's" cmp -s "$WORK/dest/a.img" "$VMS/vm1/a.img"
check "  b.img is the backup's" cmp -s "$WORK/dest/b.img" "$VMS/vm1/b.img"
check "  no temporary file is left" test -z "$(ls -A "$WORK/dest" | grep vxrestore)"
check "  restored files are 0600" test "$(stat -c %a "$WORK/dest/b.img")" = 600
check "restore of one disk to a file" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --disk a.img --to "$WORK/one.img"
check "  is that disk" cmp -s "$WORK/one.img" "$VMS/vm1/a.img"
check_fails "  again without --force is refused" \
    "$VMEXPORT" restore --repo "$REPO" "$BID" --disk a.img --to "$WORK/one.img"

# ---------------------------------------------------------------------------------------------
# An encrypted repository cannot be downgraded, nor its config changed without the key.
printf 'hardening test passphrase\n' >"$WORK/pass"
EREPO=$WORK/erepo
check "repo init --encrypt" "$VMEXPORT" repo init "$EREPO" --encrypt --passphrase-file "$WORK/pass"
check "  its config carries a MAC" jq -e '.mac | type == "string"' "$EREPO/config"
check "encrypted backup" "$VMEXPORT" backup vm1 --repo "$EREPO" --passphrase-file "$WORK/pass"
cp "$EREPO/config" "$WORK/config.good"

# state DIR: every file of a repository with its size and modification time.
state() { (cd "$1" && find . -printf '%p %s %T@\n' | sort); }
# snapshots: the number of vm1's snapshots on the server.
snapshots() { api GET /api/v1/vms/vm1/snapshots >/dev/null && jq length "$WORK/body"; }

# tampered WHAT JQ-FILTER: write the filtered good config, back up with the passphrase, which
# must fail with a message saying why, writing nothing in the repository or on the server.
tampered() {
    local what=$1 filter=$2
    jq "$filter" "$WORK/config.good" >"$EREPO/config"
    state "$EREPO" >"$WORK/state.before"
    local n0; n0=$(snapshots)
    if "$VMEXPORT" backup vm1 --repo "$EREPO" --passphrase-file "$WORK/pass" >/dev/null 2>"$WORK/t.err"; then
        not_ok "config with $what: the backup was not refused"
    elif grep -qE "changed by someone without the repository key|key-derivation settings were changed|settings: they were removed|says it is not encrypted" "$WORK/t.err"; then
        ok "config with $what: backup refused"
        diag "$(head -1 "$WORK/t.err")"
    else
        not_ok "config with $what: unclear message: $(head -2 "$WORK/t.err")"
    fi
    check "  nothing was written to the repository" cmp -s "$WORK/state.before" <(state "$EREPO")
    check "  no snapshot was taken" test "$(snapshots)" = "$n0"
}
tampered "another chunk size" '.chunk_size = 4194304'
tampered "another compression level" '.compression_level = 19'
tampered "format version 1" '.version = 1'
tampered "weaker scrypt parameters" '.encryption.N = 1024'
tampered "the encryption section removed" '.encryption = null'
tampered "encryption section and MAC removed" '.encryption = null | del(.mac)'
cp "$WORK/config.good" "$EREPO/config"
check "the untouched config works again" \
    "$VMEXPORT" backups --repo "$EREPO" --passphrase-file "$WORK/pass"

# A passphrase given for an unencrypted repository: refused, from a file or the environment.
n0=$(jq length <("$VMEXPORT" backups --repo "$REPO" --json))
state "$REPO" >"$WORK/state.before"
"$VMEXPORT" backup vm1 --repo "$REPO" --passphrase-file "$WORK/pass" >/dev/null 2>"$WORK/t.err"
rc=$?
if [ $rc != 0 ] && grep -q "a passphrase was given, but the repository's config says it is not encrypted" "$WORK/t.err"
then ok "backup with --passphrase-file into an unencrypted repository is refused"
else not_ok "backup with --passphrase-file into an unencrypted repository: exit $rc: $(head -2 "$WORK/t.err")"; fi
check_fails "  and with VMEXPORT_PASSPHRASE" env VMEXPORT_PASSPHRASE=x "$VMEXPORT" backup vm1 --repo "$REPO"
check "  nothing was written" cmp -s "$WORK/state.before" <(state "$REPO")
check "  no backup was added" test "$(jq length <("$VMEXPORT" backups --repo "$REPO" --json))" = "$n0"

# An encrypted repository of an older vmexport (no MAC): read with a warning, not written to
# until 'repo upgrade' seals its config.
jq 'del(.mac)' "$WORK/config.good" >"$EREPO/config"
"$VMEXPORT" backups --repo "$EREPO" --passphrase-file "$WORK/pass" --json >"$WORK/l.json" 2>"$WORK/l.err"
check "a config without MAC (older vmexport) is read" jq -e 'length == 1' "$WORK/l.json"
check "  with a warning naming 'repo upgrade'" grep -q "vmexport repo upgrade" "$WORK/l.err"
state "$EREPO" >"$WORK/state.before"
"$VMEXPORT" backup vm1 --repo "$EREPO" --passphrase-file "$WORK/pass" >/dev/null 2>"$WORK/t.err"
rc=$?
if [ $rc != 0 ] && grep -q "carries no MAC" "$WORK/t.err"; then ok "  a backup into it is refused until upgraded"
else not_ok "  a backup into it: exit $rc: $(head -2 "$WORK/t.err")"; fi
check "  nothing was written" cmp -s "$WORK/state.before" <(state "$EREPO")
check "repo upgrade seals the config" "$VMEXPORT" repo upgrade "$EREPO" --passphrase-file "$WORK/pass"
check "  the config carries a MAC again" jq -e '.mac | type == "string"' "$EREPO/config"
check "  and backups work" "$VMEXPORT" backup vm1 --repo "$EREPO" --passphrase-file "$WORK/pass"
check_fails "repo upgrade with a wrong passphrase fails" \
    env VMEXPORT_PASSPHRASE=wrong "$VMEXPORT" repo upgrade "$EREPO"

# ---------------------------------------------------------------------------------------------
# Snapshots left on the server by killed backups are removed by the next backup of the VM
# into the same repository; the user's own snapshots and other repositories' stay.
mkdir -p "$VMS/big"
# Big enough that a full backup over https with one connection is still running when its first
# progress line appears (about 0.2 s in); compressible, so the repositories stay small.
yes "vmexport stale snapshot test line" | head -c $((384 * MIB)) >"$VMS/big/big.img"
sync
KREPO=$WORK/krepo ORIG=$WORK/orepo
check "repo init (this repository)" "$VMEXPORT" repo init "$KREPO"
check "repo init (another repository)" "$VMEXPORT" repo init "$ORIG"
LABEL="vmexport-backup:$(jq -r .id "$KREPO/config")"

# snap_ids [LABEL]: IDs of the VM's snapshots (with that label; "-": without one), sorted.
snap_ids() {
    api GET "/api/v1/vms/big/snapshots?chunks=false" >/dev/null
    case ${1:-} in
        "") jq -r '.[].id' "$WORK/body" ;;
        -) jq -r '.[] | select(.label == null) | .id' "$WORK/body" ;;
        *) jq -r --arg l "$1" '.[] | select(.label == $l) | .id' "$WORK/body" ;;
    esac | sort
}
# backup_snaps REPO: the snapshot IDs its backups of the VM were taken from.
backup_snaps() { "$VMEXPORT" backups --repo "$1" big --json | jq -r '.[].snapshot' | sort -u; }

expect_status 201 "a snapshot of the user's own (no label)" POST "/api/v1/vms/big/snapshots?chunks=false"
USER_SNAP=$(jq -r .id "$WORK/body")
check "  has label null" jq -e '.label == null' "$WORK/body"
expect_status 400 "a label with a space is refused" POST "/api/v1/vms/big/snapshots?chunks=false&label=a%20b"
check "  and no snapshot is taken" test "$(snap_ids | wc -l)" = 1

check "backup into this repository" "$VMEXPORT" backup big --repo "$KREPO"
check "backup into another repository" "$VMEXPORT" backup big --repo "$ORIG"
S1=$(backup_snaps "$KREPO")
OTHER_SNAP=$(backup_snaps "$ORIG")
api GET "/api/v1/vms/big/snapshots/$S1?chunks=false" >/dev/null
check "the backup's snapshot carries the repository's label" jq -e --arg l "$LABEL" '.label == $l' "$WORK/body"

# Kill -9 a full backup once it is reading (its snapshot exists by then).
snap_ids >"$WORK/snaps.before"
"$VMEXPORT" backup big --repo "$KREPO" --full --jobs 1 --transport https --json >"$WORK/k.out" 2>"$WORK/k.err" &
kpid=$!
for _ in $(seq 1200); do
    grep -q '"type":"progress"' "$WORK/k.out" 2>/dev/null && break
    kill -0 $kpid 2>/dev/null || break
    sleep 0.05
done
kill -9 $kpid 2>/dev/null
wait $kpid 2>/dev/null
killed_rc=$?
check "the backup was killed while reading (exit 137)" test "$killed_rc" = 137
comm -13 "$WORK/snaps.before" <(snap_ids) >"$WORK/stale"
check "  it left a snapshot on the server" test "$(wc -l <"$WORK/stale")" = 1
STALE=$(cat "$WORK/stale")
check "  which carries this repository's label" grep -qx "$STALE" <(snap_ids "$LABEL")
check "  and which no backup uses (only the completed one is listed)" \
    test "$(backup_snaps "$KREPO")" = "$S1"

check "the next backup (--keep-snapshots 2)" "$VMEXPORT" backup big --repo "$KREPO" --keep-snapshots 2
ids=$(snap_ids)
if ! grep -qx "$STALE" <<<"$ids"; then ok "  removed the stale snapshot"; else not_ok "  the stale snapshot $STALE is still there"; fi
check "  kept the user's own snapshot" grep -qx "$USER_SNAP" <<<"$ids"
check "  kept the other repository's snapshot" grep -qx "$OTHER_SNAP" <<<"$ids"
check "  kept the previous backup's snapshot (within --keep-snapshots 2)" grep -qx "$S1" <<<"$ids"
check "  and its own: 4 snapshots in all" test "$(wc -l <<<"$ids")" = 4
check "a backup with --keep-snapshots 1" "$VMEXPORT" backup big --repo "$KREPO"
ids=$(snap_ids)
check "  keeps only its own of this repository's snapshots" test "$(snap_ids "$LABEL" | wc -l)" = 1
check "  and the user's and the other repository's" \
    test "$(grep -cxE "$USER_SNAP|$OTHER_SNAP" <<<"$ids")" = 2

# An interrupted restore (SIGTERM while a disk is written) leaves nothing either.
BIG_BID=$("$VMEXPORT" backups --repo "$KREPO" big --json | jq -r '.[-1].id')
mkdir "$WORK/sigdest"
"$VMEXPORT" restore --repo "$KREPO" "$BIG_BID" --to "$WORK/sigdest" --jobs 1 >/dev/null 2>&1 &
rpid=$!
for _ in $(seq 1200); do
    compgen -G "$WORK/sigdest/*.vxrestore.tmp.*" >/dev/null && break
    kill -0 $rpid 2>/dev/null || break
    sleep 0.05
done
kill -TERM $rpid 2>/dev/null
wait $rpid
rc=$?
check "a restore stopped with SIGTERM while writing dies of it (exit 143)" test $rc = 143
check "  and leaves nothing in the destination directory" test -z "$(ls -A "$WORK/sigdest")"
