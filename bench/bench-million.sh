#!/bin/bash
# Benchmark (issue 19): peak RSS of backup, incremental, restore, verify, prune and gc on a
# format-3 repository of a million chunks (bound: 128 MiB each).  bench_million builds the
# repository (64 KiB chunks of one 4 KiB block each; VM "million": a backup of all of them and
# one of the even ones); then a new VM's 256 MiB disk served by vmexportd (TLS, 127.0.0.1) is
# backed up into it (every chunk looked up in the million-entry index), changed and backed up
# again; the even backup is restored; verify; the all-chunks backup pruned; gc repacks every
# pack (half of each is dead).  Too slow for the suite (the restore writes 500,000 chunks:
# about a minute): run by hand, e.g.
#   CHUNKS=1000000 bench/bench-million.sh
# Prints one line per step: seconds and peak RSS (KiB, /usr/bin/time %M).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(dirname "$here")
VMEXPORT=${VMEXPORT:-$root/build/vmexport}
VMEXPORTD=${VMEXPORTD:-$root/build/vmexportd}
BENCH_MILLION=${BENCH_MILLION:-$root/build/bench/bench_million}
CHUNKS=${CHUNKS:-1000000}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
die() { echo "bench-million: $*" >&2; exit 1; }
for t in openssl curl jq; do command -v "$t" >/dev/null || die "missing tool: $t"; done
[ -x /usr/bin/time ] || die "missing /usr/bin/time (apt-get install time)"
[ -x "$VMEXPORT" ] && [ -x "$VMEXPORTD" ] && [ -x "$BENCH_MILLION" ] || die "build first: ninja -C build"

work=$(mktemp -d "$BENCH_TMPDIR/vmexport-bench-million.XXXXXX")
bench_cleanup_at_exit

repo=$work/repo
step() { # step NAME CMD...: run under /usr/bin/time, print seconds and peak RSS
    local name=$1; shift
    /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err" ||
        die "$name failed: $(tail -3 "$work/$name.err")"
    read -r s kib <"$work/$name.time"
    printf '%-12s %8.2f s %8d KiB peak RSS\n' "$name" "$s" "$kib"
}
step build "$BENCH_MILLION" "$repo" "$CHUNKS"

# --- daemon (TLS) serving one VM with a 256 MiB disk (64 MiB of data in 4 KiB extents) ---
mkdir -p "$work/vms/fresh"
disk=$work/vms/fresh/disk.raw
python3 - "$disk" <<'PY'
import os, random, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
os.ftruncate(fd, 256 << 20)
rng = random.Random(7)
for k in range(0, 65536, 4):  # every 4th 4 KiB block: 64 MiB of data
    os.pwrite(fd, rng.randbytes(4096), k * 4096)
os.close(fd)
PY
bench_start_daemon "$work" "$work/vms"

step backup "$VMEXPORT" backup fresh --repo "$repo" --json
python3 - "$disk" <<'PY'
import os, random, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CLOEXEC)
rng = random.Random(8)
for k in range(0, 65536, 64):  # 1024 blocks changed
    os.pwrite(fd, rng.randbytes(4096), k * 4096)
os.close(fd)
PY
step incremental "$VMEXPORT" backup fresh --repo "$repo" --json
jq -e '.incremental == true' <(grep '"type":"summary"' "$work/incremental.out") >/dev/null ||
    die "the second backup was not incremental"
even=$("$VMEXPORT" backups --repo "$repo" million --json | jq -r '.[1].id')
step restore "$VMEXPORT" restore --repo "$repo" "$even" --to "$work/even.raw"
rm -f "$work/even.raw"
step verify "$VMEXPORT" verify --repo "$repo"
step prune "$VMEXPORT" prune --repo "$repo" million --keep-last 1
step gc "$VMEXPORT" gc --repo "$repo" --json
echo "gc: $(tail -1 "$work/gc.out")"
