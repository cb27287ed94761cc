#!/usr/bin/env bash
# fuzz/run.sh — builds every cargo-fuzz target in fuzz/ and runs each one for FUZZ_SECONDS
# (default 10) seconds, starting from the committed seeds in fuzz/corpus/<target>/ (what the
# fuzzer finds is added there too, and ignored by git). Exits non-zero if any target crashes:
# a panic (the oracles are assertions), an AddressSanitizer report, more than RSS_LIMIT_MB
# (default 1024) of memory, or one input running longer than 10 s. The crashing input is left in
# fuzz/artifacts/<target>/; `cargo fuzz run <target> <that file>` replays it.
#
# Installs cargo-fuzz from crates.io if it is missing. cargo-fuzz needs nightly flags
# (-Zsanitizer); the machine has only the stable toolchain, so RUSTC_BOOTSTRAP=1 unlocks them.
# FUZZ_TARGETS="a b" runs only those targets. FUZZ_BUILD=release (the default) builds optimized
# with AddressSanitizer; FUZZ_BUILD=quick builds unoptimized without a sanitizer (panics, debug
# assertions, overflow checks and the memory limit still apply): half the build time from clean,
# about a third of the executions per second, for CI's brief run.
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS=${FUZZ_SECONDS:-10}
RSS_LIMIT_MB=${RSS_LIMIT_MB:-1024}
FUZZ_BUILD=${FUZZ_BUILD:-release}
export RUSTC_BOOTSTRAP=1
# The same flags for build and run, so that run does not build again.
case $FUZZ_BUILD in
    release) build_flags=(--sanitizer address) ;;
    quick) build_flags=(--dev --sanitizer none) ;;
    *)
        echo "FUZZ_BUILD must be release or quick, not $FUZZ_BUILD" >&2
        exit 2
        ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz missing: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
start=$SECONDS
cargo fuzz build "${build_flags[@]}"
echo "fuzz: built ($FUZZ_BUILD) in $((SECONDS - start)) s"

mkdir -p target/logs
failed=()
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="target/logs/$t.log"
    status=ok
    if ! cargo fuzz run "${build_flags[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb="$RSS_LIMIT_MB" -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=CRASH
        failed+=("$t")
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "fuzz: $t: ${execs:-?} executions in ${FUZZ_SECONDS} s, corpus $(find "corpus/$t" -type f | wc -l) inputs: $status"
    if [[ $status != ok ]]; then
        # The panic message or sanitizer report, and where the input was saved.
        grep -E -A 12 "panicked at|ERROR: (AddressSanitizer|libFuzzer)|SUMMARY" "$log" | head -n 40 || true
        grep -E "Test unit written to|artifact_prefix" "$log" || true
    fi
done

echo "fuzz: total $((SECONDS - start)) s"
if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]} (logs in fuzz/target/logs/, inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: no crash in $(wc -w <<<"$targets") targets"
