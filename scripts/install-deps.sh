#!/bin/sh
# Installs every build, test and benchmark dependency of vmexport from Debian's archive.
# Called by both README commands; safe to run again (apt-get skips what is installed).
#
# After a run that succeeded it leaves a stamp, build/.install-deps.stamp: while the stamp is
# newer than this script (whose package list it vouches for) and a quick look finds the main
# tools and libraries, later runs stop there, without dpkg or apt.
set -eu

STAMP="$(cd "$(dirname "$0")/.." && pwd)/build/.install-deps.stamp"
QUICK_TOOLS="cc clang meson ninja pkg-config openssl curl jq python3 sqlite3 mkfs.xfs losetup qemu-img"
QUICK_LIBS="cmocka jansson libmicrohttpd libcurl libjwt sqlite3 inih gnutls libarchive libzstd libnbd"
quick_check() {
    [ -f "$STAMP" ] && [ "$STAMP" -nt "$0" ] || return 1
    for t in $QUICK_TOOLS; do
        command -v "$t" >/dev/null 2>&1 || return 1
    done
    # shellcheck disable=SC2086
    pkg-config --exists $QUICK_LIBS
}
if quick_check; then
    exit 0
fi

PACKAGES="
  build-essential clang meson ninja-build pkg-config
  libcmocka-dev libjansson-dev libssl-dev libzstd-dev libxxhash-dev
  libmicrohttpd-dev libcurl4-openssl-dev libjwt-dev libsqlite3-dev libinih-dev
  libcrypt-dev libpam0g-dev libgnutls28-dev libarchive-dev libnbd-dev
  xfsprogs btrfs-progs e2fsprogs util-linux
  qemu-utils qemu-block-extra libnbd-bin curl openssl sqlite3 jq python3 python3-xxhash iproute2 libxml2-utils
  nginx-light wrk time zstd systemd
  qemu-system-x86 qemu-system-common
  libvirt-dev libxml2-dev libvirt-daemon-system libvirt-clients
  ceph-mon ceph-osd ceph-common radosgw librados-dev librbd-dev
"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi
mkdir -p "$(dirname "$STAMP")"
touch "$STAMP"
