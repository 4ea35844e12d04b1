#!/bin/bash
# Build everything and run every test: unit tests (cmocka) and integration tests (scripts on
# real loop filesystems), first on the normal build, then under ASan+UBSan.
#
# Every test speaks TAP; this script counts "ok" and "not ok" lines and ends with
# "N passed, N failed".  Logs of each test are kept in build/test-logs/.
#
# Environment: VMEXPORT_SEED (property tests), VMEXPORT_ROUNDS (rounds per filesystem, 200),
# VMEXPORT_NO_ASAN=1 (skip the sanitizer pass), VMEXPORT_TESTS="pattern" (run matching only).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

scripts/install-deps.sh
scripts/build.sh build || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
if [ "${VMEXPORT_NO_ASAN:-0}" != 1 ]; then
    scripts/build.sh build-asan -Dsanitize=true ||
        { echo "sanitizer build failed"; echo "0 passed, 1 failed"; exit 1; }
fi

LOGS=$ROOT/build/test-logs
rm -rf "$LOGS"
mkdir -p "$LOGS"
passed=0
failed=0
skipped=0

# run_tap NAME COMMAND...: run a TAP-speaking test, count its results.
run_tap() {
    local name=$1; shift
    local log="$LOGS/${name//\//-}.log" start=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    local p f s
    # A skipped check is "ok N # SKIP" (the scripts) or "not ok N # SKIP" (cmocka's TAP).
    p=$(grep -cE '^ok [0-9]+' "$log")
    s=$(grep -cE '^ok [0-9]+ .*# SKIP' "$log")
    local s_cmocka
    s_cmocka=$(grep -cE '^not ok [0-9]+ .*# SKIP' "$log")
    f=$(grep -cE '^not ok [0-9]+' "$log")
    p=$((p - s))
    f=$((f - s_cmocka))
    s=$((s + s_cmocka))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1 # crashed or failed outside a check
        echo "not ok - $name exited with status $rc" >>"$log"
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + s))
    printf '%-40s %4d passed %3d failed %3d skipped  %4ds\n' "$name" "$p" "$f" "$s" $((SECONDS - start))
    if [ "$f" -gt 0 ]; then
        grep -E '^(not ok|#)' "$log" | head -20 | sed 's/^/    /'
    fi
}

selected() {
    [ -z "${VMEXPORT_TESTS:-}" ] || [[ $1 == *${VMEXPORT_TESTS}* ]]
}

# The slow live-VM tiers (they boot guests under TCG and start libvirtd) run once: in the
# sanitizer pass when it runs, where the daemon's memory errors would show, else in the normal
# pass.
ONCE_TESTS=" test-guest-agent test-qemu-vm test-libvirt test-qemu-complaints test-store-rados test-store-s3 "
# The property test of live VMs must keep its hundred rounds: it runs in the normal pass only
# (the sanitizer pass runs an eighth of the rounds of the others); test-build builds its own
# variants, whichever pass runs it.
NORMAL_ONLY_TESTS=" test-qemu-property test-build test-rbd test-ceph-repo "
ASAN_PASS=1
[ "${VMEXPORT_NO_ASAN:-0}" != 1 ] || ASAN_PASS=0

run_suite() {
    local build=$1 tag=$2
    for t in "$build"/tests/unit/test_*; do
        [ -f "$t" ] && [ -x "$t" ] || continue
        local n="$tag$(basename "$t")"
        selected "$n" && run_tap "$n" env CMOCKA_MESSAGE_OUTPUT=TAP "$t"
    done
    for t in tests/integration/test-*.sh; do
        local base
        base=$(basename "$t" .sh)
        local n="$tag$base"
        if [[ $ONCE_TESTS == *" $base "* ]] && { [ -z "$tag" ] && [ "$ASAN_PASS" = 1 ]; }; then
            continue # runs in the sanitizer pass
        fi
        [[ -n $tag && $NORMAL_ONLY_TESTS == *" $base "* ]] && continue
        selected "$n" && run_tap "$n" env BUILD="$ROOT/$build" bash "$t"
    done
}

run_suite build ""
if [ "$ASAN_PASS" = 1 ]; then
    # Under the sanitizers the property tests run an eighth of the rounds and the backup test
    # fewer generations (VMEXPORT_QUICK): the point there is memory errors, not more random
    # cases, and the suite must stay within 15 minutes on 2 cores.
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    VMEXPORT_QUICK=1 VMEXPORT_ROUNDS=$(( ${VMEXPORT_ROUNDS:-200} / 8 )) run_suite build-asan "asan/"
fi

[ "$skipped" -eq 0 ] || echo "$skipped skipped"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
