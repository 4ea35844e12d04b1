#!/bin/bash
# The main job, for now a demo of the core engine: make a small disk image on a reflink
# filesystem, snapshot it, write to it, and print what changed (block-precise, no data read).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
VMEXPORT=$(pwd)/build/vmexport

work=$(mktemp -d /tmp/vmexport-demo.XXXXXX)
dev=""
cleanup() {
    if mountpoint -q "$work/fs" 2>/dev/null; then umount "$work/fs"; fi
    if [ -n "$dev" ]; then losetup -d "$dev"; fi
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/fs"
dir=$work/fs
if [ "$(id -u)" = 0 ] && truncate -s 512M "$work/xfs.img" && dev=$(losetup -f --show "$work/xfs.img") &&
    mkfs.xfs -q -m reflink=1 "$dev" && mount "$dev" "$work/fs"; then
    echo "== demo on a fresh XFS (reflink=1) at $dir"
else
    echo "== demo in $dir (no loop XFS: not root); diffs will use block hashes"
fi

set -x
truncate -s 256M "$dir/disk.img"
dd if=/dev/urandom of="$dir/disk.img" bs=1M count=32 conv=notrunc,fsync status=none
"$VMEXPORT" map "$dir/disk.img"
"$VMEXPORT" clone "$dir/disk.img" "$dir/snap-1.img"
dd if=/dev/urandom of="$dir/disk.img" bs=4K count=1 seek=1000 conv=notrunc,fsync status=none
fallocate --punch-hole -o $((8 << 20)) -l $((1 << 20)) "$dir/disk.img"
dd if=/dev/urandom of="$dir/disk.img" bs=1M count=1 seek=200 conv=notrunc,fsync status=none
"$VMEXPORT" diff "$dir/snap-1.img" "$dir/disk.img"
"$VMEXPORT" diff --json "$dir/snap-1.img" "$dir/disk.img"
