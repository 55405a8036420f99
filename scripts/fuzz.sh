#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS_PER_TARGET] - build and run the coverage-guided fuzz targets in fuzz/
# (unit_file, yaml_docs, tree_reader), one after the other, each for SECONDS_PER_TARGET
# (default 20: the short CI run). Fails on any crash, panic, timeout or out-of-memory.
#
# Engine: cargo-fuzz + libFuzzer on STABLE Rust. `-s none` (no sanitizer) is what makes it
# stable: the sanitizers need nightly's -Zsanitizer, while the coverage instrumentation cargo-fuzz
# uses (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*) is stable. core-ops forbids
# unsafe code, so ASan would add little; debug assertions (overflow checks) stay on.
#
# Installs cargo-fuzz (pinned, from crates.io) when missing; libfuzzer-sys needs a C++ compiler
# (g++; scripts/prereqs.sh installs it). New corpus entries go to target/fuzz-corpus/<target>
# (not the checked-in seeds in fuzz/corpus/<target>); crashes to fuzz/artifacts/<target>/.
# Runs under `nice -n 19`.
#
# Env: CORE_OPS_FUZZ_TARGETS (default: all three) space-separated subset.
#      CORE_OPS_FUZZ_JOBS is not supported on purpose: one fuzzing process at a time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECONDS_PER_TARGET=${1:-20}
TARGETS=${CORE_OPS_FUZZ_TARGETS:-unit_file yaml_docs tree_reader}
CARGO_FUZZ_VERSION=0.13.1

die() { echo "scripts/fuzz.sh: FAILED: $*" >&2; exit 1; }
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "==> cargo install cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    nice -n 19 cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" >&2
fi

echo "==> cargo fuzz build -s none (stable; release + debug assertions)" >&2
(cd fuzz && cargo fmt --check) || die "fuzz/ is not formatted (cd fuzz && cargo fmt)"
nice -n 19 cargo fuzz build -s none --release --debug-assertions >&2

BIN=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
# scratch for tree_reader's repository (memory-backed when /dev/shm exists), removed at exit
shm=/dev/shm; [ -d "$shm" ] && [ -w "$shm" ] || shm=${TMPDIR:-/tmp}
SCRATCH=$(mktemp -d "$shm/core-ops-fuzz.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
for t in $TARGETS; do
    [ -x "$BIN/$t" ] || die "no fuzz target $t in $BIN"
    work=target/fuzz-corpus/$t
    mkdir -p "$work" "fuzz/artifacts/$t"
    echo "==> fuzzing $t for ${SECONDS_PER_TARGET}s" >&2
    # -timeout: one input running longer than 10 s is a finding (a hang), as is a crash
    TMPDIR=$SCRATCH nice -n 19 "$BIN/$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" "$work" "fuzz/corpus/$t" \
        > "target/fuzz-$t.log" 2>&1 || {
        tail -n 60 "target/fuzz-$t.log" >&2
        die "fuzz target $t found a crash (input in fuzz/artifacts/$t/; log target/fuzz-$t.log)"
    }
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+.*DONE' \
        "target/fuzz-$t.log" | sed "s/^/    $t: /" >&2 || true
done
echo "==> fuzzing passed: $TARGETS" >&2
