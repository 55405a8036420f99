#!/usr/bin/env bash
# scripts/quadlet-bed.sh - put the REAL Quadlet generator (and, by default, a podman that can run
# containers) into a running systemd test bed (scripts/systemd-testbed.sh up DIR).
#
#   scripts/quadlet-bed.sh DIR     DIR: a running bed; idempotent; prints KEY=VALUE lines (eval-able)
#   scripts/quadlet-bed.sh --fetch-only
#                                  only fill the package cache below (no bed needed) and print
#                                  CORE_OPS_QUADLET_CACHE=...; scripts/verify-image.sh stages the
#                                  same stack into the VM guest image from it
#
# What ends up in the bed (its overlay only; the host's /usr and /etc are never touched):
#   /usr/libexec/podman/quadlet                         quadlet 5.4.2 of Debian 13 (podman 5.4.2)
#   /usr/lib/systemd/system-generators/podman-system-generator
#                                                       a small wrapper around it (see below)
#   /etc/containers/systemd                             bind mount of DIR/quadlet, so core-ops on the
#                                                       host writes Quadlet files to DIR/quadlet
# and, unless CORE_OPS_TESTBED_CONTAINERS=0, Debian 13's podman/crun/conmon stack (with Debian 13's
# libc: these binaries need glibc >= 2.38, Debian 12 has 2.36), a vfs image store, a containers.conf
# that works without cgroup controllers, and the image localhost/core-ops-mini:1 (busybox-static
# of Debian 13, imported with `podman import`; no registry is reachable).
# Why each setting: docs/quadlet-in-testbed.md (verified steps, traps, timings).
#
# Packages come from Debian's mirror only: `apt-get download` from the trixie suite with its own
# sources list and apt state (the host's apt state is untouched), into a cache that survives runs:
#   ${CORE_OPS_TEST_CACHE:-/var/cache/core-ops-test}/quadlet/{apt,debs,root,mini.tar}
# A second run needs no network. Delete that directory to fetch again.
#
# Output (stdout, KEY=VALUE):
#   CORE_OPS_TESTBED_QUADLET_DIR        host path the bed sees as /etc/containers/systemd
#   CORE_OPS_TESTBED_QUADLET_GENERATOR  host path of the same quadlet binary (it links only libc and
#                                       runs on the host): core-ops' dry-run validation uses it
#   CORE_OPS_TESTBED_CONTAINERS         1 when podman can run containers in the bed, else 0
#   CORE_OPS_TESTBED_IMAGE              the local image (only with containers)
# Progress and timings go to stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TESTBED=$ROOT/scripts/systemd-testbed.sh
PROG=quadlet-bed

die() { echo "$PROG: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
. "$ROOT/scripts/lib/private-apt.sh"

[ "$(id -u)" = 0 ] || die "must run as root"
[ -n "${1:-}" ] || die "usage: $0 DIR | --fetch-only   (DIR: a running scripts/systemd-testbed.sh bed)"
FETCH_ONLY=0
[ "$1" = --fetch-only ] && FETCH_ONLY=1
CONTAINERS=${CORE_OPS_TESTBED_CONTAINERS:-1}
IMAGE=localhost/core-ops-mini:1
CACHE=${CORE_OPS_TEST_CACHE:-/var/cache/core-ops-test}/quadlet

if [ "$FETCH_ONLY" = 0 ]; then
    DIR=$(realpath -m -- "$1")
    bed_env=$("$TESTBED" status "$DIR") || die "no running test bed in $DIR (scripts/systemd-testbed.sh up $DIR)"
    PID=$(sed -n 's/^SYSTEMD_TESTBED_PID=//p' <<<"$bed_env")
    BROOT=/proc/$PID/root                 # the bed's / (its overlay) as seen from the host
fi
inbed() { "$TESTBED" exec "$DIR" "$@"; }

# ------------------------------------------------------------------ 1. packages (cached)
# The set that was verified to run podman in the bed (docs/quadlet-in-testbed.md), plus
# busybox-static for the image. Not minimised.
PKGS=(podman conmon crun golang-github-containers-common golang-github-containers-image netavark
      libc6 libgpgme11t64 libsubid5 libglib2.0-0t64 libsqlite3-0 libseccomp2 libyajl2 libcap2
      libsystemd0 libassuan9 libgpg-error0 libaudit1 libcap-ng0 libbsd0 busybox-static)
STAMP="$CACHE/root/.complete"
want_stamp=$(printf '%s\n' "${PKGS[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want_stamp" ]; then
    t0=$(date +%s%N)
    log "fetching ${#PKGS[@]} Debian 13 (trixie) packages into $CACHE (once)"
    rm -rf "$CACHE/debs" "$CACHE/root" "$CACHE/mini.tar"
    mkdir -p "$CACHE/apt" "$CACHE/debs"
    src=$(debian_sources)
    # the first stanza of the machine's sources (its mirror and keyring), suite set to trixie
    awk '/^[[:space:]]*$/ { if (seen) exit; next } { seen = 1 }
         $1 == "Suites:" { print "Suites: trixie"; next } { print }' "$src" > "$CACHE/apt/trixie.sources"
    private_apt "$CACHE/apt" "$CACHE/apt/trixie.sources" fetch
    "${APT[@]}" update >&2 || die "apt-get update (trixie) failed"
    (cd "$CACHE/debs" && "${APT[@]}" download "${PKGS[@]}" >&2) || die "apt-get download (trixie) failed"
    mkdir -p "$CACHE/root.tmp"
    for d in "$CACHE"/debs/*.deb; do
        case "$(basename "$d")" in busybox-static_*) continue;; esac
        dpkg -x "$d" "$CACHE/root.tmp"
    done
    # the tree may only contain /usr and /etc: it is copied onto the bed's root as it is
    extra=$(find "$CACHE/root.tmp" -mindepth 1 -maxdepth 1 ! -name usr ! -name etc)
    [ -z "$extra" ] || die "unexpected top-level paths in the extracted packages: $extra"
    # the image: busybox-static as /bin/busybox + /bin/sh, nothing else
    mini=$CACHE/mini.tmp
    rm -rf "$mini"; mkdir -p "$mini/x" "$mini/rootfs"/{bin,etc,tmp,proc,sys,dev}
    dpkg -x "$CACHE"/debs/busybox-static_*.deb "$mini/x"
    cp "$mini/x/usr/bin/busybox" "$mini/rootfs/bin/busybox"
    ln -s busybox "$mini/rootfs/bin/sh"
    tar -C "$mini/rootfs" --owner=0 --group=0 -cf "$CACHE/mini.tar" .
    rm -rf "$mini"
    mv "$CACHE/root.tmp" "$CACHE/root"
    echo "$want_stamp" > "$STAMP"
    log "fetched and unpacked in $(ms "$t0") ms ($(du -sh "$CACHE/debs" | cut -f1) of packages)"
else
    log "packages cached in $CACHE (no network needed)"
fi
QUADLET_HOST=$CACHE/root/usr/libexec/podman/quadlet
[ -x "$QUADLET_HOST" ] || die "$QUADLET_HOST missing: remove $CACHE and run again"
if [ "$FETCH_ONLY" = 1 ]; then
    echo "CORE_OPS_QUADLET_CACHE=$CACHE"
    exit 0
fi

# ------------------------------------------------------------------ 2. into the bed
MARK=$BROOT/run/core-ops-quadlet-bed     # in the bed's /run: gone at `down`, like the overlay
if [ -f "$MARK" ] && [ "$(cat "$MARK")" = "containers=$CONTAINERS" ]; then
    log "already set up in this bed ($(cat "$MARK"))"
else
    t0=$(date +%s%N)
    if [ "$CONTAINERS" = 1 ]; then
        # the whole stack, Debian 13 libc included: new processes in the bed use it; the bed's
        # systemd 252 tools keep working on it (verified)
        cp -a --remove-destination "$CACHE/root/usr" "$CACHE/root/etc" "$BROOT/"
        what="podman 5.4.2 stack (Debian 13, with its libc)"
    else
        mkdir -p "$BROOT/usr/libexec/podman"
        cp -a "$QUADLET_HOST" "$BROOT/usr/libexec/podman/quadlet"
        what="quadlet generator only"
    fi
    # the generator: scripts/quadlet-generator (a wrapper that keeps quadlet's messages; why: see it)
    gen=$BROOT/usr/lib/systemd/system-generators/podman-system-generator
    mkdir -p "$(dirname "$gen")"
    rm -f "$gen"
    install -m 0755 "$ROOT/scripts/quadlet-generator" "$gen"
    # the Quadlet dir: DIR/quadlet on the host, /etc/containers/systemd in the bed
    mkdir -p "$DIR/quadlet" "$BROOT/etc/containers/systemd"
    inbed sh -c 'mountpoint -q /etc/containers/systemd || mount --bind "$1" /etc/containers/systemd' _ "$DIR/quadlet"
    log "installed $what, generator wrapper and Quadlet dir in $(ms "$t0") ms"

    if [ "$CONTAINERS" = 1 ]; then
        t0=$(date +%s%N)
        # no cgroup controllers in the bed: no pids limit; /proc/sys is read-only: no default
        # sysctls; overlay-on-overlay is refused: vfs, in the bed's tmpfs (re-imported per boot)
        cat > "$BROOT/etc/containers/containers.conf" <<'EOC'
# core-ops test bed (scripts/quadlet-bed.sh): see docs/quadlet-in-testbed.md
[containers]
pids_limit = 0
default_sysctls = []
EOC
        cat > "$BROOT/etc/containers/storage.conf" <<'EOC'
# core-ops test bed (scripts/quadlet-bed.sh): overlay over the bed's overlayfs is refused
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOC
        inbed podman import -q - "$IMAGE" < "$CACHE/mini.tar" >/dev/null ||
            die "podman import of $IMAGE failed in the bed"
        log "imported $IMAGE in $(ms "$t0") ms"
    fi
    echo "containers=$CONTAINERS" > "$MARK"
fi

# ------------------------------------------------------------------ 3. check and report
t0=$(date +%s%N)
v=$(inbed /usr/libexec/podman/quadlet -version) || die "quadlet does not run in the bed"
inbed mountpoint -q /etc/containers/systemd || die "/etc/containers/systemd is not bound to $DIR/quadlet"
if [ "$CONTAINERS" = 1 ]; then
    inbed podman image exists "$IMAGE" || die "image $IMAGE missing in the bed"
fi
log "quadlet $v in the bed; checked in $(ms "$t0") ms"
echo "CORE_OPS_TESTBED_QUADLET_DIR=$DIR/quadlet"
echo "CORE_OPS_TESTBED_QUADLET_GENERATOR=$QUADLET_HOST"
echo "CORE_OPS_TESTBED_CONTAINERS=$CONTAINERS"
[ "$CONTAINERS" = 1 ] && echo "CORE_OPS_TESTBED_IMAGE=$IMAGE"
exit 0
