#!/bin/bash
# Fuzzing of the parsers of untrusted input (tests/fuzz/fuzz_*.c, libFuzzer with ASan and
# UBSan): repository manifests and containers, disk image headers (qcow2 and the formats told
# apart from raw), HTTP Range and Accept headers, upload Content-Ranges and body lengths, sparse answers, the OVM vm.cfg reader,
# vmexportd's configuration file, vmexportd's whole request handling (fuzz_http: raw
# requests to a server in the fuzzer's process), the format 3 decoders (fuzz_format3), an S3 service's answers (fuzz_s3), and the archive importer (fuzz_archive: tar
# and OVA files into a repository on the in-memory store, for FUZZ_ARCHIVE_SECONDS, default 3:
# the suite's time budget).  tests/fuzz/README.md lists each target's
# property.  Each target starts
# from its seed corpus (tests/fuzz/corpus/TARGET, copied: new inputs are not kept) and runs
# FUZZ_RUNS inputs (default 500000) or FUZZ_SECONDS seconds (default 4), whichever ends first,
# with a printed seed (FUZZ_SEED to replay one).  A crash, a leak, undefined behaviour or a
# failed property (see each target) fails the check; the reproducer is kept in build/fuzz-crashes.
# Built with clang under build-variant-fuzz (-Dfuzz=true).  Runs once, in the normal pass: the
# targets are always sanitized, so the sanitizer pass skips them.
source "$(dirname "$0")/lib.sh"
at_exit rm -rf /tmp/vmexport-fuzz-ovm /tmp/vmexport-fuzz-http-* # made by fuzz_ovm_cfg, fuzz_http (if killed)

if [[ $BUILD == *-asan ]]; then
    skip "fuzz targets run in the normal pass (they are built with ASan and UBSan)"
    exit 0
fi
dir="$VMEXPORT_ROOT/build-variant-fuzz"
if ! command -v clang >/dev/null; then
    not_ok "clang not installed (scripts/install-deps.sh installs it)"
    exit 1
fi
if [ ! -f "$dir/build.ninja" ]; then
    rm -rf "$dir"
    CC=clang meson setup "$dir" -Dfuzz=true -Doptimization=1 >"$WORK/setup.log" 2>&1 ||
        { not_ok "meson setup -Dfuzz=true"; sed 's/^/# /' "$WORK/setup.log" | tail -20; exit 1; }
fi
# Only the fuzz targets (and what they link), at -O1 (what ASan advises; quicker to build than
# -O2): the rest of this variant would be built for nothing.
targets=()
for src in "$VMEXPORT_ROOT"/tests/fuzz/fuzz_*.c; do targets+=("tests/fuzz/$(basename "$src" .c)"); done
if ! ninja -C "$dir" "${targets[@]}" >"$WORK/build.log" 2>&1; then
    not_ok "build of the fuzz targets"
    grep -E 'error' "$WORK/build.log" | head -20 | sed 's/^/# /'
    exit 1
fi
ok "fuzz targets build (clang, libFuzzer, ASan, UBSan)"

RUNS=${FUZZ_RUNS:-500000}
SECONDS_MAX=${FUZZ_SECONDS:-4}
ARCHIVE_SECONDS=${FUZZ_ARCHIVE_SECONDS:-3}
SEED=${FUZZ_SEED:-$(( (RANDOM << 15 | RANDOM) + 1 ))}
diag "seed $SEED (FUZZ_SEED=$SEED to replay), $RUNS inputs or ${SECONDS_MAX}s per target"
crashes="$VMEXPORT_ROOT/build/fuzz-crashes"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for src in "$VMEXPORT_ROOT"/tests/fuzz/fuzz_*.c; do
    t=$(basename "$src" .c)
    name=${t#fuzz_}
    exe="$dir/tests/fuzz/$t"
    [ -x "$exe" ] || { not_ok "$name: no fuzz target $exe"; continue; }
    corpus="$WORK/corpus-$name"
    mkdir -p "$corpus" "$crashes"
    cp "$VMEXPORT_ROOT/tests/fuzz/corpus/$name"/* "$corpus"/ 2>/dev/null ||
        { not_ok "$name: no seed corpus in tests/fuzz/corpus/$name"; continue; }
    nseeds=$(find "$corpus" -type f | wc -l)
    # fuzz_http: OpenSSL's per-thread state is suppressed by function name, which needs full
    # stacks through libcrypto (built without frame pointers).
    lsan="" asan=$ASAN_OPTIONS secs=$SECONDS_MAX
    if [ "$name" = http ]; then
        lsan="suppressions=$VMEXPORT_ROOT/tests/fuzz/lsan-openssl-threads.supp"
        asan="$asan:fast_unwind_on_malloc=0"
    fi
    if [ "$name" = archive ] && [ "$ARCHIVE_SECONDS" -lt "$secs" ]; then
        secs=$ARCHIVE_SECONDS
    fi
    if LSAN_OPTIONS=$lsan ASAN_OPTIONS=$asan "$exe" -seed="$SEED" -runs="$RUNS" -max_total_time="$secs" -rss_limit_mb=2048 \
        -artifact_prefix="$crashes/$name-" "$corpus" >"$WORK/$name.log" 2>&1; then
        done_line=$(grep -E '^Done [0-9]+ runs' "$WORK/$name.log" | tail -n1)
        if [ -n "$done_line" ]; then
            ok "$name: $nseeds seeds, ${done_line#Done }, no crash, leak or failed property"
        else
            not_ok "$name: the fuzzer ended without its summary"
            tail -n 5 "$WORK/$name.log" | sed 's/^/# /'
        fi
    else
        not_ok "$name: the fuzzer found a failure (reproducer in $crashes)"
        grep -E 'ERROR|SUMMARY|Assertion|runtime error|Test unit written' "$WORK/$name.log" |
            head -n 10 | sed 's/^/# /'
    fi
done
