#!/bin/sh
# Configure (once) and build a build directory.  Usage: scripts/build.sh [DIR [MESON_OPTIONS...]]
set -eu
cd "$(dirname "$0")/.."
dir=${1:-build}
[ $# -gt 0 ] && shift
if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >/dev/null
fi
ninja -C "$dir" >/dev/null
