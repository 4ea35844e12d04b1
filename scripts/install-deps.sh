#!/bin/sh
# Installs every build, test and benchmark dependency of vmexport from Debian's archive.
# Called by both README commands; safe to run again (apt-get skips what is installed).
set -eu

PACKAGES="
  build-essential clang meson ninja-build pkg-config
  libcmocka-dev libjansson-dev libssl-dev libzstd-dev libxxhash-dev
  libmicrohttpd-dev libcurl4-openssl-dev libjwt-dev libsqlite3-dev libinih-dev
  libcrypt-dev libpam0g-dev libgnutls28-dev libarchive-dev
  xfsprogs btrfs-progs e2fsprogs util-linux
  qemu-utils qemu-block-extra libnbd-bin curl openssl sqlite3 jq python3 python3-xxhash iproute2 libxml2-utils
  nginx-light wrk time zstd
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
