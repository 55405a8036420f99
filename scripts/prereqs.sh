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
# checks; groff-base: the man page test renders every page; g++: libFuzzer, built by the fuzz
# targets' libfuzzer-sys (scripts/fuzz.sh); age: the secrets test encrypts with Debian's own
# age program too (interoperability with what operators use).
PKGS=(systemd dbus util-linux mount pkg-config zlib1g-dev gcc g++ libc6-dev make git time
    dpkg-dev lintian groff-base age)
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

# The loopback git servers of the remote-repository tests (scripts/git-servers.sh): lighttpd
# (+ its TLS module) in front of git http-backend, and OpenSSH's sshd. Only unpacked into a
# project cache, like promtool: installing openssh-server would generate host keys in /etc/ssh
# and register a service on the host. openssl (test CA), openssh-client (ssh, ssh-keygen) and
# python3 (free ports) come from the base system; git daemon and git http-backend from git.
GITSRV=${CORE_OPS_TEST_CACHE:-/var/cache/core-ops-test}/gitservers
if [ ! -x "$GITSRV/usr/sbin/lighttpd" ] || [ ! -x "$GITSRV/usr/sbin/sshd" ] ||
    [ ! -f "$GITSRV/usr/lib/lighttpd/mod_openssl.so" ]; then
    echo "==> unpacking lighttpd and sshd (Debian packages) into $GITSRV" >&2
    for p in openssl openssh-client python3; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >&2; }
    done
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download lighttpd lighttpd-mod-openssl openssh-server >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get download lighttpd lighttpd-mod-openssl openssh-server >/dev/null; }; })
    mkdir -p "$GITSRV"
    for d in "$tmp"/*.deb; do dpkg -x "$d" "$GITSRV"; done
    rm -rf "$tmp"
fi

# ------------------------------------------------------------------ VM verification harness
# What scripts/verify-image.sh (guest image) and core-ops-verify (guests
# under QEMU TCG) need; see docs/vm-testbed.md. qemu-system-x86 must come from
# bookworm-backports, matching the machine's qemu-utils 1:10.0.2 (bookworm's 7.2 would remove
# it). That suite is read through a private sources file and apt state under the project cache;
# /etc/apt is left as it is. The other packages come from plain bookworm: mmdebstrap (guest
# tree), socat (control channel, also in the guest), busybox-static (initramfs), e2fsprogs
# (mkfs.ext4 -d, debugfs), libvirt-dev + pkg-config (client library and headers for the Rust
# `virt` crate only: no libvirt daemon, and it leaves qemu-utils alone; checked with apt-get -s).
VM_APT=${CORE_OPS_TEST_CACHE:-/var/cache/core-ops-test}/vm-apt
VM_PKGS=(mmdebstrap socat busybox-static e2fsprogs libvirt-dev pkg-config)
vm_missing=()
vm_ready() {
    vm_missing=()
    local p
    for p in "${VM_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || vm_missing+=("$p")
    done
    ((${#vm_missing[@]} == 0)) && command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null &&
        [ "$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null)" = \
          "$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null)" ]
}
if ! vm_ready; then
    . scripts/lib/private-apt.sh
    src=$(debian_sources)
    echo "==> installing the VM harness packages (qemu-system-x86 from bookworm-backports)" >&2
    mkdir -p "$VM_APT"
    # the machine's own stanzas (mirror, keyring); bookworm-backports added next to bookworm
    awk '$1 == "Suites:" && / bookworm( |$)/ && !/bookworm-backports/ { print $0 " bookworm-backports"; next }
         { print }' "$src" > "$VM_APT/bookworm+bpo.sources"
    grep -q bookworm-backports "$VM_APT/bookworm+bpo.sources" || die "no bookworm stanza in $src"
    private_apt "$VM_APT" "$VM_APT/bookworm+bpo.sources"
    VM_APTGET=("${APT[@]}")
    export DEBIAN_FRONTEND=noninteractive
    "${VM_APTGET[@]}" update >&2 || die "apt-get update (bookworm + backports) failed"
    # qemu-utils in the same transaction: if backports has moved past the preinstalled 10.0.2,
    # both move together and stay matched
    "${VM_APTGET[@]}" install -y -qq --no-install-recommends -t bookworm-backports \
        qemu-system-x86 qemu-utils >&2 || die "installing qemu-system-x86 from bookworm-backports failed"
    # only what is missing, without -t: bookworm's own versions (with -t, apt would take
    # backports' mmdebstrap, socat, e2fsprogs and libvirt 11 too)
    if ((${#vm_missing[@]})); then
        "${VM_APTGET[@]}" install -y -qq --no-install-recommends "${vm_missing[@]}" >&2 ||
            die "installing ${vm_missing[*]} failed"
    fi
    vm_ready || die "VM harness packages still incomplete (qemu-system-x86 and qemu-utils must have the same version)"
fi
