#!/bin/bash
# Builds the tiny guest of the guest tier: a Debian kernel and an initramfs with busybox and
# qemu-guest-agent, from Debian packages that are downloaded and unpacked, never installed.
#
# usage: build-guest.sh CACHE_DIR   (prints the directory holding vmlinuz and initrd.img)
#
# The result is cached under CACHE_DIR/tiny-guest-KEY, KEY naming the package versions, so a
# test suite builds it once.  /init loads the virtio and ext4 modules, mounts /dev/vda (ext4) on
# /mnt, starts qemu-ga on the port named org.qemu.guest_agent.0 (with a freeze hook that can
# be told to hang, for timeout tests) and runs the lines it reads on the port vmexport.cmd as
# shell commands (the tests' way to write in the guest without going through the agent),
# answering with their output and a line "__rc=N".
set -euo pipefail
cache=${1:?usage: build-guest.sh CACHE_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
# The running kernel is seldom a Debian one (here: a microVM kernel): take Debian's default.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
[ -n "$kpkg" ] || { echo "build-guest: no Debian kernel package (apt-cache depends linux-image-amd64)" >&2; exit 1; }
pkgs=("$kpkg" busybox-static qemu-guest-agent)
key=""
for p in "${pkgs[@]}"; do
    v=$(candidate "$p")
    [ -n "$v" ] && [ "$v" != "(none)" ] || { echo "build-guest: package $p not available" >&2; exit 1; }
    key+="$p=$v;"
done
key+=$(sha256sum "$0" "$here/mkinitramfs.py" | sha256sum | cut -c1-8)
out="$cache/tiny-guest-$(printf '%s' "$key" | sha256sum | cut -c1-16)"
if [ -s "$out/initrd.img" ] && [ -s "$out/vmlinuz" ]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/tiny-guest-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "${pkgs[@]}" >/dev/null 2>&1) || {
    echo "build-guest: apt-get download ${pkgs[*]} failed" >&2; exit 1; }
mkdir "$tmp/x"
for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/x"; done

kver=$(basename "$(ls -d "$tmp"/x/lib/modules/*)")
root="$tmp/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,mnt,tmp,run,lib/modules,lib64,usr/sbin}
ln -s /run "$root/var/run" 2>/dev/null || { mkdir -p "$root/var"; ln -s /run "$root/var/run"; }
cp "$tmp/x/bin/busybox" "$root/bin/busybox"
cp "$tmp/x/usr/sbin/qemu-ga" "$root/usr/sbin/qemu-ga"
# qemu-ga's libraries, as the host resolves them (same Debian release as the package).
ldd "$tmp/x/usr/sbin/qemu-ga" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
python3 "$here/mkinitramfs.py" modules "$tmp/x/lib/modules/$kver" "$root/lib/modules" \
    virtio_pci virtio_blk virtio_console ext4 crc32c_generic libcrc32c > "$root/lib/modules/order"

cat > "$root/etc/fsfreeze-hook" <<'HOOK'
#!/bin/sh
# Tests make the freeze hang by writing seconds into /run/hang-freeze.
if [ "$1" = freeze ] && [ -s /run/hang-freeze ]; then sleep "$(cat /run/hang-freeze)"; fi
exit 0
HOOK
chmod 755 "$root/etc/fsfreeze-hook"

cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m"; done
port() {
    for i in $(seq 100); do
        for p in /sys/class/virtio-ports/*; do
            [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${p##*/}"; return 0; }
        done
        sleep 0.1
    done
    return 1
}
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 /dev/vda /mnt || echo "init: cannot mount /dev/vda"
qga=$(port org.qemu.guest_agent.0) && \
    qemu-ga -m virtio-serial -p "$qga" -f /run/qemu-ga.pid -t /run --fsfreeze-hook=/etc/fsfreeze-hook \
        -l /run/qemu-ga.log &
cmd=$(port vmexport.cmd)
echo "init: ready"
while :; do
    if [ -n "$cmd" ] && exec 3<>"$cmd"; then
        while IFS= read -r line <&3; do
            sh -c "$line" >&3 2>&1 </dev/null
            echo "__rc=$?" >&3
        done
        exec 3>&-
    fi
    sleep 0.2
done
INIT
chmod 755 "$root/init"

mkdir -p "$tmp/out"
python3 "$here/mkinitramfs.py" cpio "$root" "$tmp/out/initrd.img"
cp "$tmp/x/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
# atomic: a test building the same guest at the same time keeps its own or ours, never half
mv -T "$tmp/out" "$out" 2>/dev/null || [ -s "$out/initrd.img" ]
echo "$out"
