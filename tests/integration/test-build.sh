#!/bin/bash
# The sources build warning-free (-Werror) in the configurations a user or packager may pick,
# not only in the suite's own debugoptimized GCC build: GCC at -O3 (buildtype=release) warns
# about paths that lower levels do not analyse (-Wmaybe-uninitialized), and clang rejects what
# GCC lets through (a goto past a cleanup-attributed variable, a non-literal format).
# Each variant is configured once under the source tree (build-variant-*) and rebuilt by ninja.
# In the sanitizer pass (BUILD ends in -asan) the variant is clang with ASan and UBSan.
source "$(dirname "$0")/lib.sh"

variant() { # variant NAME CC MESON_OPTIONS...
    local name=$1 cc=$2; shift 2
    local dir="$VMEXPORT_ROOT/build-variant-$name"
    if ! command -v "$cc" >/dev/null; then
        not_ok "$name: compiler $cc not installed (scripts/install-deps.sh installs it)"
        return
    fi
    if [ ! -f "$dir/build.ninja" ]; then
        rm -rf "$dir"
        if ! CC=$cc meson setup "$dir" "$@" >"$WORK/$name.setup" 2>&1; then
            not_ok "$name: meson setup"; sed 's/^/# /' "$WORK/$name.setup" | tail -20
            return
        fi
    fi
    if ninja -C "$dir" >"$WORK/$name.log" 2>&1; then
        ok "$name: builds with -Wall -Wextra -Werror"
    else
        not_ok "$name: build failed"
        grep -E 'error|warning' "$WORK/$name.log" | head -20 | sed 's/^/# /'
        return
    fi
    local v
    v=$("$dir/vmexport" --version 2>&1) && [[ $v == vmexport* ]] &&
        ok "$name: the binary runs ($v)" || not_ok "$name: vmexport --version: $v"
}

if [[ $BUILD == *-asan ]]; then
    variant clang-sanitize clang -Dsanitize=true
else
    variant gcc-release gcc -Dbuildtype=release
    variant clang-release clang -Dbuildtype=release
fi
