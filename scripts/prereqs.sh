#!/usr/bin/env bash
# scripts/prereqs.sh - install what building core-ops and its systemd test bed need on a fresh
# Debian 12 machine (root), and check the Rust toolchain. Used by scripts/test.sh and
# scripts/demo.sh; installs only missing packages, never downloads a toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "scripts/prereqs.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (apt, namespaces and mounts for the test bed)"

# systemd + dbus + util-linux + mount: the test bed; pkg-config, zlib1g-dev, gcc, libc6-dev,
# make: building git2's vendored libgit2; git: scripts and tests that make repositories;
# util-linux also provides flock(1), used by the lock test; time: max RSS in the benches;
# dpkg-dev (dpkg-shlibdeps) and lintian: the Debian package (scripts/build-deb.sh) and its
# checks; groff-base: the man page test renders every page.
PKGS=(systemd dbus util-linux mount pkg-config zlib1g-dev gcc libc6-dev make git time
    dpkg-dev lintian groff-base)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "==> installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

RUST_VERSION=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$RUST_VERSION" ] || die "no rust-version in Cargo.toml"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
have=$(rustc --version 2>/dev/null | awk '{print $2}') || have=
if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$RUST_VERSION" "$have" | sort -V | head -n1)" != "$RUST_VERSION" ] ||
    ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
    die "Rust >= $RUST_VERSION with clippy and rustfmt is required (found '${have:-none}'): rustup toolchain install $RUST_VERSION -c clippy -c rustfmt"
fi

# promtool (Debian package `prometheus`) checks the metrics file in the tests. Only the
# binary is unpacked into a project cache: installing the package would start a Prometheus
# server on the host.
PROMTOOL=/var/cache/core-ops-test/prometheus/usr/bin/promtool
if [ ! -x "$PROMTOOL" ]; then
    echo "==> unpacking promtool from Debian's prometheus package into /var/cache/core-ops-test" >&2
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null; }; })
    mkdir -p /var/cache/core-ops-test/prometheus
    dpkg -x "$tmp"/prometheus_*.deb /var/cache/core-ops-test/prometheus
    rm -rf "$tmp"
fi
