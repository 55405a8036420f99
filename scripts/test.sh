#!/usr/bin/env bash
# scripts/test.sh - THE test command of core-ops (CI runs it through .ci/run).
#
# On a fresh Debian 12 machine, as root, it:
#   1. installs the apt packages the build and the systemd test bed need (only missing ones),
#   2. checks the Rust toolchain (rust-version of Cargo.toml, with clippy + rustfmt),
#   3. runs cargo fmt --check, cargo clippy -D warnings (the agent alone with default features,
#      then the whole workspace with the `failpoints` feature the crash tests need), cargo build
#      --workspace --all-targets --features core-ops/failpoints, core-ops-release validate (release fragments, changelog, version policy), and builds
#      the Debian package (scripts/build-deb.sh, exported as CORE_OPS_DEB),
#   4. boots ONE systemd test bed (scripts/systemd-testbed.sh) that every test binary shares
#      (CORE_OPS_TESTBED_DIR, CORE_OPS_SYSTEMD_ADDRESS, CORE_OPS_SYSTEMD_UNIT_DIR), and puts the
#      real Quadlet generator and podman into it (scripts/quadlet-bed.sh: CORE_OPS_TESTBED_QUADLET_*;
#      the packages are fetched from Debian's mirror once and cached in /var/cache/core-ops-test),
#   5. builds the guest image of the VM verification harness (core-ops-verify image build: from
#      Debian packages, cached by recipe digest; exported as CORE_OPS_VERIFY_IMAGE),
#   6. installs and starts libvirt's daemons (scripts/libvirt.sh; stopped again at the end),
#      so qemu:///system answers and the VM harness uses its default driver, libvirt,
#   7. runs cargo test --workspace --features core-ops/failpoints (the harness's own tests force
#      the qemu driver),
#   7b. runs the fuzz targets briefly (scripts/fuzz.sh: cargo-fuzz/libFuzzer on stable,
#      CORE_OPS_FUZZ_SECONDS each, default 20; only when no extra arguments are given),
#   8. runs the whole accepted verification corpus on the VM backend, one disposable VM per
#      scenario (core-ops-verify run --accepted-dir tests/fixtures/verification/scenarios --ci;
#      bundles and the verification_run document under target/verify/),
#   and always stops the bed (trap), whatever happened.
# Exits non-zero on any failure. Not root is a failure, not a skip: the integration tests need
# the bed, and the bed needs root (namespaces, mounts).
#
# Env: CORE_OPS_RELEASE_BASE (default: the newest vX.Y.Z tag) the base of the version policy.
#      CORE_OPS_TEST_THREADS (default: nproc) threads per test binary; tests that share the bed
#      use their own unit-name prefixes, so they may run in parallel.
#      CORE_OPS_BUILD_DEB=auto|1|0 (default auto: when all tests or deb_package are selected).
#      CORE_OPS_KEEP_BED=1 keeps the bed's directory (journal, unit files) even on success.
#      CORE_OPS_TESTBED_CONTAINERS=0 installs only the Quadlet generator (no podman stack).
#      CORE_OPS_FUZZ_SECONDS (default 20) seconds per fuzz target after cargo test; 0 skips.
#      CORE_OPS_VERIFY_CORPUS=auto|1|0 (default auto: when no extra arguments are given) runs the
#      accepted verification corpus after cargo test.
# Extra arguments are passed to `cargo test` (e.g. `scripts/test.sh --test systemd_dbus`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "scripts/test.sh: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (the systemd test bed needs namespaces and mounts); try: sudo $0"

# ------------------------------------------------------------------ 1+2. packages, toolchain
scripts/prereqs.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# ------------------------------------------------------------------ 3. static checks + build
step "cargo fmt --check"
cargo fmt --all --check
# the agent alone as users build it (no libvirt, no failpoints), then the whole workspace (the
# VM harness, the release tool, test support) with the crash tests' failpoints compiled in
step "cargo clippy --all-targets -- -D warnings (the agent, default features)"
cargo clippy --all-targets -- -D warnings
step "cargo clippy --workspace --all-targets --features core-ops/failpoints -- -D warnings"
cargo clippy --workspace --all-targets --features core-ops/failpoints -- -D warnings
step "cargo build --workspace --all-targets --features core-ops/failpoints"
cargo build --workspace --all-targets --features core-ops/failpoints
# release governance (DEVELOPMENT.md, "Release flow"): fragments, changelog, version policy
# against the newest vX.Y.Z tag, or against CORE_OPS_RELEASE_BASE (e.g. the target branch of
# the change under review) when set
step "core-ops-release validate${CORE_OPS_RELEASE_BASE:+ --base $CORE_OPS_RELEASE_BASE}"
cargo run --quiet -p core-ops-release -- validate ${CORE_OPS_RELEASE_BASE:+--base "$CORE_OPS_RELEASE_BASE"}

# the Debian package, built once for tests/deb_package.rs (contents, lintian, install in the
# bed); skipped when the selected tests cannot include it
if [ "${CORE_OPS_BUILD_DEB:-auto}" = 1 ] ||
    { [ "${CORE_OPS_BUILD_DEB:-auto}" = auto ] && { [ $# -eq 0 ] || [[ " $* " == *deb_package* ]]; }; }; then
    step "scripts/build-deb.sh"
    CORE_OPS_DEB=$(scripts/build-deb.sh) || die "building the Debian package failed (see above)"
    export CORE_OPS_DEB
fi

# ------------------------------------------------------------------ 4. test bed
BED=/tmp/core-ops-bed-$$
status=1
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ "$status" = 0 ] || status=$rc
    if [ -n "${LIBVIRT_STARTED:-}" ]; then
        step "stopping libvirt (scripts/libvirt.sh down)"
        scripts/libvirt.sh down >/dev/null || echo "scripts/test.sh: warning: could not stop libvirt" >&2
    fi
    if [ -d "$BED" ]; then
        step "stopping the test bed $BED"
        scripts/systemd-testbed.sh down "$BED" >/dev/null || echo "scripts/test.sh: warning: could not stop the bed in $BED" >&2
        if [ "$status" = 0 ] && [ -z "${CORE_OPS_KEEP_BED:-}" ]; then
            rm -rf "$BED"
        else
            echo "test bed kept for post-mortem: $BED (journal: journalctl -D $BED/journal; log: $BED/testbed.log)" >&2
        fi
    fi
    [ "$status" = 0 ] && step "all checks passed" || echo "scripts/test.sh: FAILED (exit $status)" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "booting the systemd test bed in $BED"
bed_env=$(scripts/systemd-testbed.sh up "$BED") || die "the systemd test bed did not boot (see above)"
eval "$bed_env"
export CORE_OPS_TESTBED_DIR=$BED
export CORE_OPS_SYSTEMD_ADDRESS=$SYSTEMD_TESTBED_ADDRESS
export CORE_OPS_SYSTEMD_UNIT_DIR=$SYSTEMD_TESTBED_UNIT_DIR

step "the real Quadlet generator (and podman) into the bed: scripts/quadlet-bed.sh"
quadlet_env=$(scripts/quadlet-bed.sh "$BED") || die "scripts/quadlet-bed.sh failed (see above)"
eval "$quadlet_env"
export CORE_OPS_TESTBED_QUADLET_DIR CORE_OPS_TESTBED_QUADLET_GENERATOR CORE_OPS_TESTBED_CONTAINERS
[ -z "${CORE_OPS_TESTBED_IMAGE:-}" ] || export CORE_OPS_TESTBED_IMAGE

# ------------------------------------------------------------------ 5. tests
# the binary under test in the VMs: release code (15 MB stripped; the debug build is ~190 MB,
# and unoptimised code under TCG emulation is several times slower) with the failpoints that
# `kill_apply: {rev, at: PHASE}` stops it at, built with its own profile into target/vm/ so it
# never replaces the plain target/release/core-ops the .deb ships
step "cargo build --profile vm --features failpoints --bin core-ops (the binary the VM scenarios run)"
cargo build --profile vm --features failpoints --bin core-ops
export CORE_OPS_VERIFY_CORE_OPS_BIN=$ROOT/target/vm/core-ops

step "the guest image of the VM verification harness: core-ops-verify image build"
CORE_OPS_VERIFY_IMAGE=$(target/debug/core-ops-verify image build) || die "building the guest image failed (see above)"
export CORE_OPS_VERIFY_IMAGE

step "libvirt daemons for the VM harness (plain daemons, no systemd): scripts/libvirt.sh up"
scripts/libvirt.sh install || die "installing libvirt failed (see above)"
LIBVIRT_STARTED=1
libvirt_env=$(scripts/libvirt.sh up) || die "libvirtd did not start (see above)"
eval "$libvirt_env"

step "cargo test --workspace --features core-ops/failpoints"
cargo test --workspace --features core-ops/failpoints --no-fail-fast "$@" -- --test-threads="${CORE_OPS_TEST_THREADS:-$(nproc)}"

# a short run of the fuzz targets (scripts/fuzz.sh; 0 skips); only with the whole test suite
if [ "${CORE_OPS_FUZZ_SECONDS:-20}" != 0 ] && [ $# -eq 0 ]; then
    step "the fuzz targets, ${CORE_OPS_FUZZ_SECONDS:-20} s each: scripts/fuzz.sh"
    scripts/fuzz.sh "${CORE_OPS_FUZZ_SECONDS:-20}" || die "a fuzz target failed (see above)"
fi

if [ "${CORE_OPS_VERIFY_CORPUS:-auto}" = 1 ] || { [ "${CORE_OPS_VERIFY_CORPUS:-auto}" = auto ] && [ $# -eq 0 ]; }; then
    step "the accepted verification corpus on the VM backend: core-ops-verify run --ci"
    mkdir -p target/verify
    target/debug/core-ops-verify run --accepted-dir tests/fixtures/verification/scenarios --ci --json \
        > target/verify/ci-run.json || die "the accepted verification corpus failed: see target/verify/ci-run.json and the bundles it names"
fi
status=0
