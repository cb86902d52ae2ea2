#!/usr/bin/env bash
# Coverage-guided fuzzing of fhirgate's readers and parsers on the stable toolchain.
#
#   fuzz/run.sh build                 build the five targets (instrumented, release)
#   fuzz/run.sh run TARGET [SECONDS]  seed TARGET's corpus from ../shared when it is
#                                     empty, then fuzz it for SECONDS (default 300)
#   fuzz/run.sh all [SECONDS]         every target, one after the other
#   fuzz/run.sh repro TARGET FILE     run one input (a crash artifact) through TARGET
#
# Targets: json_reader xml_reader fhirpath_parser search_params bundle_plan.
#
# The targets are libFuzzer programs (libfuzzer-sys) built with the SanitizerCoverage
# flags that `cargo fuzz build --sanitizer none` passes; stable rustc accepts them all
# (no -Z flag, no RUSTC_BOOTSTRAP), so no nightly toolchain and no cargo-fuzz are
# needed. Without a sanitizer, what is found is a panic (overflow checks and debug
# assertions are on), an abort, a timeout or running out of memory; there is no
# unsafe code of fhirgate's own for AddressSanitizer to watch.
#
# FUZZ_KEEP_GOING=1 runs libFuzzer in fork mode with -ignore_crashes (and timeouts and
# out-of-memory): the run lasts its whole time, every finding lands in
# fuzz/artifacts/TARGET. Without it a run stops at its first finding.
#
# Corpora live in fuzz/corpus/TARGET (not committed: regenerated from ../shared),
# crashes in fuzz/artifacts/TARGET; each run's libFuzzer log is
# fuzz/logs/TARGET-<date>.log and its last lines give the figures docs/testing.md
# records (execs, cov, ft, corpus).
set -euo pipefail
cd "$(dirname "$0")"
FUZZ="$(pwd)"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
TARGETS=(json_reader xml_reader fhirpath_parser search_params bundle_plan)
MAX_LEN=16384 # fhirgate_fuzz::MAX_SEED

export RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export FHIRGATE_FUZZ_SHARED="${FHIRGATE_FUZZ_SHARED:-$FUZZ/../../shared}"

build() {
    # --target keeps RUSTFLAGS off build scripts and proc macros (they are not fuzzed
    # and could not link the coverage callbacks).
    cargo build --release --target "$TRIPLE" --bins
}

bin() { echo "$FUZZ/target/$TRIPLE/release/$1"; }

known() {
    local t
    for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done
    echo "unknown target '$1'; targets: ${TARGETS[*]}" >&2
    exit 2
}

run() {
    local target="$1" seconds="${2:-300}"
    known "$target"
    [ -x "$(bin "$target")" ] || build
    mkdir -p "corpus/$target" "artifacts/$target" logs
    if [ -z "$(ls -A "corpus/$target")" ]; then
        FHIRGATE_FUZZ_SEEDS="$FUZZ/corpus/$target" "$(bin "$target")"
    fi
    local log
    log="logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log"
    echo "fuzzing $target for ${seconds}s; log: fuzz/$log"
    # One job: the machine's two cores are shared with builds. -timeout makes an
    # input that takes more than 10 s a finding; -rss_limit_mb one that needs 2 GB.
    local keep_going=()
    if [ -n "${FUZZ_KEEP_GOING:-}" ]; then
        keep_going=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    set +e
    "$(bin "$target")" "corpus/$target" "${keep_going[@]}" \
        -artifact_prefix="artifacts/$target/" \
        -max_total_time="$seconds" -max_len="$MAX_LEN" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1
    local status=$?
    set -e
    grep -E '^#[0-9]+' "$log" | tail -1 || true
    grep -E '^(stat::|Done )' "$log" || true
    echo "corpus: $(ls "corpus/$target" | wc -l) inputs; artifacts: $(ls "artifacts/$target" | wc -l); exit $status"
    return "$status"
}

case "${1:-}" in
    build) build ;;
    run) run "${2:?target}" "${3:-300}" ;;
    all)
        build
        failed=0
        for t in "${TARGETS[@]}"; do run "$t" "${2:-300}" || failed=1; done
        exit "$failed"
        ;;
    repro)
        known "${2:?target}"
        [ -x "$(bin "$2")" ] || build
        "$(bin "$2")" "${3:?file}"
        ;;
    *)
        sed -n '2,12p' "$0"
        exit 2
        ;;
esac
