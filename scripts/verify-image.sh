#!/usr/bin/env bash
# scripts/verify-image.sh - build the guest image of the VM verification harness (core-ops-verify)
# from Debian packages only.
#
#   scripts/verify-image.sh OUT_DIR
#
# OUT_DIR receives (built in OUT_DIR.tmp.PID, then swapped in with one rename):
#   vmlinux        Debian 12's current linux-image-6.1.*-amd64 (resolved through the
#                  linux-image-amd64 metapackage), unpacked from vmlinuz: QEMU boots it as PVH
#                  and skips firmware and decompressor (-kernel vmlinux, ~2.4 s less under TCG)
#   initrd.img     busybox-static + the virtio/ext4/9p modules; /init mounts /dev/vda, switch_root
#   base.qcow2     ext4 root (mkfs.ext4 -d of an mmdebstrap minbase bookworm tree, no loop mount)
#                  with systemd, dbus, udev, socat, ... and Debian 13's podman stack staged as
#                  scripts/quadlet-bed.sh stages it into the namespace bed (quadlet generator,
#                  image localhost/core-ops-mini:1 pre-imported, vfs store)
#   manifest.json  suite, kernel, installed and staged packages with versions, sha256 of the
#                  files above and of the raw ext4, sha256 of this script, build seconds
# See docs/vm-testbed.md for the recipe, timings and traps; `core-ops-verify run
# --scenario PATH --debug` boots the result and keeps it for exploring.
#
# Guest contract (what the harness relies on):
#   - kernel command line: console=ttyS0 root=/dev/vda rw panic=-1 core_ops_verify.run=NONCE
#   - when multi-user.target is reached, core-ops-verify-ready.service writes ONE line to
#     /dev/ttyS0 (and to its stdout, so to the journal):
#       CORE_OPS_VERIFY_READY run=NONCE boot_id=UUID ip=IPV4|none system=running|degraded|...
#   - journal forwarded live to /dev/ttyS1 (second -serial), persistent in /var/log/journal
#   - virtio-serial port named core-ops.ctl: udev starts core-ops-verify-ctl.service, a root bash
#     on that port (socat ... EXEC:/bin/bash,stderr); one byte stream, frame each command
#   - 9p tag host0 mounted at /mnt/host (nofail); no NIC needed, networkd off
#   - podman 5.4.2 (Debian 13) with quadlet as system generator; /etc/containers/systemd exists;
#     image localhost/core-ops-mini:1 (busybox) in the store, its tar at
#     /usr/share/core-ops-verify/mini.tar (`podman import` it again if the store is reset)
#
# Reproducibility: fixed SOURCE_DATE_EPOCH (mmdebstrap, maintainer scripts, mtimes clamped),
# fixed ext4 UUID and hash seed, E2FSPROGS_FAKE_TIME, inode ctime/atime reset after mkfs (mkfs -d
# copies the source's ctime, which cannot be set), a python-written cpio (busybox cpio stores
# host inode numbers), gzip without timestamp. With the same mirror content and a warm cache
# two builds give the same base.qcow2, raw ext4, vmlinux and initrd.img. Not reproducible: a
# moving mirror (recorded in manifest.json), and the container store, which `podman import`
# stamps with the import time: it is imported once and cached (key: podman stack + mini.tar).
#
# Cache (downloads and derived inputs; delete it to start over):
#   ${CORE_OPS_TEST_CACHE:-/var/cache/core-ops-test}/verify-image/
#     apt/            own apt state for bookworm (host's apt state untouched)
#     debs/PKG/VER/   kernel and busybox-static debs
#     kernel/KV_VER/  vmlinux + the module subset
#     mm-debs/ mm-lists/  mmdebstrap's downloaded debs and package lists
#     store/KEY/      pre-imported container store
# plus scripts/quadlet-bed.sh's cache (.../quadlet) for the podman stack and mini.tar.
#
# Output: VERIFY_IMAGE_DIR=OUT_DIR on stdout; progress and timings on stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SELF=$ROOT/scripts/verify-image.sh
PROG=verify-image

die() { echo "$PROG: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }
now_ns() { date +%s%N; }
ms() { echo $(( ($(now_ns) - $1) / 1000000 )); }
. "$ROOT/scripts/lib/private-apt.sh"

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, chroot)"
[ $# = 1 ] && [ -n "$1" ] || die "usage: $0 OUT_DIR"
OUT=$(realpath -m -- "$1")

# ------------------------------------------------------------------ fixed inputs
SUITE=bookworm
# 2026-07-11 00:00:00 UTC: Debian 12.15. Fixed on purpose: a build is reproducible from the same
# mirror content; bump it when moving to a newer point release.
SOURCE_DATE_EPOCH=1783728000
export SOURCE_DATE_EPOCH
FS_UUID=c0e05e7a-0b5e-4d1a-9c2b-5e8f0d1a2b3c
FS_HASH_SEED=6a1f0c3e-2d4b-4f5a-8e7c-9b0d1c2e3f40
FS_LABEL=core-ops-root
FS_SIZE=2G
HOSTNAME_GUEST=core-ops-guest
IMAGE=localhost/core-ops-mini:1
GUEST_PKGS=(systemd systemd-sysv dbus udev kmod iproute2 socat ca-certificates procps psmisc
            util-linux e2fsprogs
            libatomic1)     # conmon (Debian 13) links it; the bed has it from the host
INITRD_MODULES=(virtio_pci virtio_blk ext4 9pnet_virtio 9p virtio_console)
# module subset copied into the guest (of ~390 MB): filesystems, network stack, crypto, virtio,
# plus ACPI button + evdev (without them QMP system_powerdown is ignored)
MOD_DIRS=(kernel/fs kernel/net kernel/lib kernel/crypto kernel/arch kernel/drivers/virtio
          kernel/drivers/block kernel/drivers/vhost kernel/drivers/char/hw_random)
MOD_FILES=(kernel/drivers/char/virtio_console.ko kernel/drivers/net/virtio_net.ko
           kernel/drivers/net/net_failover.ko kernel/drivers/acpi/button.ko
           kernel/drivers/input/evdev.ko)
# udev in the guest loads kvm (unknown symbols under TCG) and cfg80211 (regulatory.db) otherwise
MOD_DROP=(kernel/arch/x86/kvm kernel/net/wireless kernel/net/mac80211 kernel/net/bluetooth)

CACHE_ROOT=${CORE_OPS_TEST_CACHE:-/var/cache/core-ops-test}
VCACHE=$CACHE_ROOT/verify-image
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3

for c in mmdebstrap mkfs.ext4 debugfs dumpe2fs e2fsck qemu-img dpkg-deb unshare chroot flock sha256sum "$PY"; do
    command -v "$c" >/dev/null || die "$c not found: run scripts/prereqs.sh"
done
case "$OUT" in /|/usr|/var|/etc|/tmp|"$ROOT") die "refusing OUT_DIR $OUT";; esac

T_ALL=$(now_ns)
declare -A TIMES=()
step_start() { T_STEP=$(now_ns); log "$1"; }
step_end() { TIMES[$1]=$(ms "$T_STEP"); }

TMP=$OUT.tmp.$$
TREE=$TMP/tree
RAW=$TMP/root.ext4
cleanup() {
    local rc=$?
    if [ -d "$TMP" ]; then
        # never let rm walk into a leftover bind mount (mmdebstrap mounts /dev, /proc, /sys)
        local m
        while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
            awk -v p="$TMP/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r)
        rm -rf --one-file-system "$TMP"
    fi
    [ $rc = 0 ] || log "failed (exit $rc); nothing changed in $OUT"
}
trap cleanup EXIT
mkdir -p "$VCACHE"
# one build at a time per cache (the cache directories are replaced wholesale)
exec 9>"$VCACHE/.lock"
flock -n 9 || { log "waiting for another build using $VCACHE"; flock 9; }
rm -rf --one-file-system "$TMP"
mkdir -p "$TMP"

# in the tree, with a clean environment; the tree's own tools
inchroot() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" \
        chroot "$TREE" "$@"
}

# ------------------------------------------------------------------ 1. apt state (bookworm)
step_start "apt: package lists for $SUITE (own state in $VCACHE/apt)"
src=$(debian_sources)
# the machine's stanzas (mirror, keyring); suites set to bookworm + updates, resp. -security
mkdir -p "$VCACHE/apt"
awk -v s="$SUITE" '$1 == "Suites:" { print ($0 ~ /-security/) ? "Suites: " s "-security" : "Suites: " s " " s "-updates"; next }
     { print }' "$src" > "$VCACHE/apt/$SUITE.sources"
MIRROR=$(awk '$1 == "URIs:" && !done { print $2; done = 1 }' "$src")
SEC_MIRROR=$(awk '$1 == "URIs:" { u = $2 } $1 == "Suites:" && /-security/ { print u; exit }' "$src")
[ -n "$MIRROR" ] || die "no URIs: in $src"
[ -n "$SEC_MIRROR" ] || SEC_MIRROR=${MIRROR%/debian}/debian-security
private_apt "$VCACHE/apt" "$VCACHE/apt/$SUITE.sources" fetch
APTC=(apt-cache "${APT[@]:1}")
if ! "${APT[@]}" update >"$TMP/apt-update.log" 2>&1; then
    compgen -G "$VCACHE/apt/lists/*_Packages" >/dev/null ||
        { cat "$TMP/apt-update.log" >&2; die "apt-get update ($SUITE) failed"; }
    log "apt-get update failed; using the cached lists"
fi
step_end apt

# ------------------------------------------------------------------ 2. kernel + busybox (cached)
step_start "kernel: resolving linux-image-amd64 ($SUITE)"
KPKG=$("${APTC[@]}" depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
# candidate versions of the metapackage, the kernel it points to, and busybox-static
declare -A CAND=()
while read -r p v; do CAND[$p]=$v; done < <("${APTC[@]}" policy linux-image-amd64 "$KPKG" busybox-static |
    awk '/^[^ ].*:$/ { p = substr($1, 1, length($1) - 1) } $1 == "Candidate:" { print p, $2 }')
META_VER=${CAND[linux-image-amd64]:-}
[[ "$KPKG" =~ ^linux-image-(6\.1\.[0-9]+-[0-9]+-amd64)$ ]] ||
    die "linux-image-amd64 $META_VER depends on '$KPKG', expected linux-image-6.1.*-amd64"
KV=${BASH_REMATCH[1]}
KVER=${CAND[$KPKG]:-}
BBVER=${CAND[busybox-static]:-}
[ -n "$KVER" ] && [ "$KVER" != "(none)" ] && [ -n "$BBVER" ] || die "cannot resolve $KPKG / busybox-static"
# fetch PKG VERSION -> prints the cached .deb path
fetch() {
    local d="$VCACHE/debs/$1/${2//:/%3a}" f
    f=$(compgen -G "$d/*.deb" | head -n1 || true)
    if [ -z "$f" ]; then
        mkdir -p "$d.part" && rm -f "$d.part"/*.deb
        (cd "$d.part" && "${APT[@]}" download "$1=$2" >&2) || die "apt-get download $1=$2 failed"
        rm -rf "$d" && mv "$d.part" "$d"
        f=$(compgen -G "$d/*.deb" | head -n1)
    fi
    echo "$f"
}
KDEB=$(fetch "$KPKG" "$KVER")
BBDEB=$(fetch busybox-static "$BBVER")
KCACHE=$VCACHE/kernel/${KV}_${KVER//:/%3a}
if [ ! -f "$KCACHE/.complete" ]; then
    log "kernel: unpacking $(basename "$KDEB") (vmlinux + module subset, once)"
    rm -rf "$KCACHE" "$KCACHE.part"
    mkdir -p "$KCACHE.part/x"
    dpkg-deb -x "$KDEB" "$KCACHE.part/x"
    # vmlinuz is a bzImage with an xz payload: decompress from the xz magic on (gives the ELF)
    "$PY" - "$KCACHE.part/x/boot/vmlinuz-$KV" "$KCACHE.part/vmlinux" <<'PY'
import lzma, sys
data = open(sys.argv[1], "rb").read()
pos = data.find(b"\xfd7zXZ\x00")
while pos >= 0:
    try:
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[pos:])
    except lzma.LZMAError:
        out = b""
    if out[:4] == b"\x7fELF":
        open(sys.argv[2], "wb").write(out)
        sys.exit(0)
    pos = data.find(b"\xfd7zXZ\x00", pos + 1)
sys.exit("no xz-compressed ELF found in " + sys.argv[1])
PY
    msrc=$KCACHE.part/x/lib/modules/$KV
    [ -d "$msrc" ] || msrc=$KCACHE.part/x/usr/lib/modules/$KV
    [ -d "$msrc" ] || die "no modules for $KV in $KDEB"
    mdst=$KCACHE.part/modules/$KV
    mkdir -p "$mdst"
    for p in "${MOD_DIRS[@]}" "${MOD_FILES[@]}"; do
        [ -e "$msrc/$p" ] || die "module path $p missing in $KDEB"
        mkdir -p "$mdst/$(dirname "$p")"
        cp -a "$msrc/$p" "$mdst/$(dirname "$p")/"
    done
    for p in "${MOD_DROP[@]}"; do rm -rf "${mdst:?}/$p"; done
    cp -a "$msrc"/modules.order "$msrc"/modules.builtin "$msrc"/modules.builtin.modinfo "$mdst/"
    cp -a "$KCACHE.part/x/boot/config-$KV" "$KCACHE.part/config"
    rm -rf "$KCACHE.part/x"
    touch "$KCACHE.part/.complete"
    mv "$KCACHE.part" "$KCACHE"
fi
log "kernel: $KPKG $KVER (linux-image-amd64 $META_VER), busybox-static $BBVER"
step_end kernel

# ------------------------------------------------------------------ 3. podman stack (cached)
step_start "podman: Debian 13 stack from scripts/quadlet-bed.sh's cache"
QCACHE=$("$ROOT/scripts/quadlet-bed.sh" --fetch-only | sed -n 's/^CORE_OPS_QUADLET_CACHE=//p')
[ -d "$QCACHE/root/usr" ] && [ -f "$QCACHE/mini.tar" ] || die "quadlet cache incomplete: $QCACHE"
step_end podman_fetch

# ------------------------------------------------------------------ 4. root tree (mmdebstrap)
step_start "rootfs: mmdebstrap --variant=minbase $SUITE (${GUEST_PKGS[*]})"
MM_DEBS=$VCACHE/mm-debs MM_LISTS=$VCACHE/mm-lists
mkdir -p "$MM_DEBS" "$MM_LISTS"
export MM_DEBS MM_LISTS
# hooks run on the host with $1 = the tree: seed apt's archive and lists from the cache (so a
# second build downloads next to nothing), and save both back before mmdebstrap's cleanup
mmdebstrap --mode=root --variant=minbase --format=directory \
    --include="$(IFS=,; echo "${GUEST_PKGS[*]}")" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --skip=essential/unlink \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives" "$1/var/lib/apt/lists" &&
        cp -a "$MM_LISTS/." "$1/var/lib/apt/lists/" &&
        { find "$MM_DEBS" -maxdepth 1 -name "*.deb" -exec cp -l -t "$1/var/cache/apt/archives/" {} + 2>/dev/null ||
          find "$MM_DEBS" -maxdepth 1 -name "*.deb" -exec cp -t "$1/var/cache/apt/archives/" {} +; }' \
    --customize-hook='rm -rf "$MM_DEBS.new" "$MM_LISTS.new" && mkdir "$MM_DEBS.new" "$MM_LISTS.new" &&
        find "$1/var/cache/apt/archives" -maxdepth 1 -name "*.deb" -exec cp -t "$MM_DEBS.new/" {} + &&
        find "$1/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -exec cp -t "$MM_LISTS.new/" {} + &&
        rm -rf "$MM_DEBS" "$MM_LISTS" && mv "$MM_DEBS.new" "$MM_DEBS" && mv "$MM_LISTS.new" "$MM_LISTS"' \
    --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
    "$SUITE" "$TREE" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SEC_MIRROR $SUITE-security main" \
    >"$TMP/mmdebstrap.log" 2>&1 || { tail -n 40 "$TMP/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
step_end mmdebstrap

# ------------------------------------------------------------------ 5. guest configuration
step_start "configure: users, units, journal, readiness, control channel"
inchroot passwd -q -d root
# password ages: days since the epoch of "now" -> of SOURCE_DATE_EPOCH
awk -F: -v OFS=: -v d=$((SOURCE_DATE_EPOCH / 86400)) '$3 != "" { $3 = d } { print }' \
    "$TREE/etc/shadow" > "$TMP/shadow" && cat "$TMP/shadow" > "$TREE/etc/shadow"
rm -f "$TREE"/etc/{passwd,shadow,group,gshadow}-
rm -f "$TREE/etc/systemd/system/getty.target.wants/getty@tty1.service"
rm -f "$TREE"/etc/systemd/system/timers.target.wants/*
# e2scrub_reap (LVM snapshot reaper): 1-6 s of boot under TCG, nothing to reap in a guest
rm -f "$TREE/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service"
# no network by default: networkd stays off (it is not enabled in Debian; make sure)
rm -f "$TREE"/etc/systemd/system/*.wants/systemd-networkd* "$TREE"/etc/systemd/system/*.wants/systemd-resolved*
echo "$HOSTNAME_GUEST" > "$TREE/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    "$HOSTNAME_GUEST" > "$TREE/etc/hosts"
cat > "$TREE/etc/fstab" <<'EOF'
# core-ops-verify guest (scripts/verify-image.sh)
/dev/vda / ext4 rw,errors=remount-ro 0 1
host0 /mnt/host 9p trans=virtio,version=9p2000.L,msize=524288,nofail 0 0
EOF
mkdir -p "$TREE/mnt/host" "$TREE/var/log/journal" "$TREE/etc/systemd/journald.conf.d"
cat > "$TREE/etc/systemd/journald.conf.d/core-ops-verify.conf" <<'EOF'
# core-ops-verify: the journal lives on in the overlay (read after shutdown) and is mirrored live
# to the second serial port, so a hung guest still leaves its log on the host
[Journal]
Storage=persistent
ForwardToConsole=yes
TTYPath=/dev/ttyS1
MaxLevelConsole=info
EOF

mkdir -p "$TREE/usr/libexec/core-ops-verify"
cat > "$TREE/usr/libexec/core-ops-verify/ready" <<'EOF'
#!/bin/bash
# core-ops-verify readiness line (core-ops-verify-ready.service): one line to /dev/ttyS0 and stdout
#   CORE_OPS_VERIFY_READY run=<nonce> boot_id=<uuid> ip=<ipv4|none> system=<is-system-running>
run=none
for w in $(cat /proc/cmdline); do
    case "$w" in core_ops_verify.run=?*) run=${w#core_ops_verify.run=};; esac
done
boot_id=$(cat /proc/sys/kernel/random/boot_id)
ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '{ sub("/.*", "", $4); print $4; exit }')
# this unit's own start job has completed (Type=simple), so the state settles: running/degraded
system=$(timeout 30 systemctl is-system-running --wait 2>/dev/null | tail -n1)
line="CORE_OPS_VERIFY_READY run=$run boot_id=$boot_id ip=${ip:-none} system=${system:-unknown}"
echo "$line" > /dev/ttyS0
echo "$line"
EOF
chmod 0755 "$TREE/usr/libexec/core-ops-verify/ready"
cat > "$TREE/etc/systemd/system/core-ops-verify-ready.service" <<'EOF'
# core-ops-verify: tell the host (serial console) that the guest is up
# Type=simple, not oneshot: a oneshot's own start job stays queued while it runs, so
# `systemctl is-system-running` would say "starting" forever; the script waits for the end of
# boot itself (is-system-running --wait) and reports running or degraded.
[Unit]
Description=core-ops-verify readiness line on ttyS0
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/libexec/core-ops-verify/ready

[Install]
WantedBy=multi-user.target
EOF
cat > "$TREE/etc/systemd/system/core-ops-verify-ctl.service" <<'EOF'
# core-ops-verify: a root shell on the virtio-serial port core-ops.ctl (started by udev).
# One byte stream; the host frames each command, see tools/verify/src/control.rs. ignoreeof: the port
# reads EOF while no host client is connected. No `rawer`: the port is not a tty.
[Unit]
Description=core-ops-verify control shell on /dev/virtio-ports/core-ops.ctl
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/bin/socat OPEN:/dev/virtio-ports/core-ops.ctl,ignoreeof EXEC:/bin/bash,stderr
Restart=always
RestartSec=0.2
SuccessExitStatus=143
WorkingDirectory=/root
Environment=HOME=/root TERM=dumb
EOF
cat > "$TREE/etc/udev/rules.d/90-core-ops-verify.rules" <<'EOF'
# core-ops-verify: the control channel starts when its virtio-serial port appears
SUBSYSTEM=="virtio-ports", ATTR{name}=="core-ops.ctl", TAG+="systemd", ENV{SYSTEMD_WANTS}+="core-ops-verify-ctl.service"
EOF
mkdir -p "$TREE/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/core-ops-verify-ready.service \
    "$TREE/etc/systemd/system/multi-user.target.wants/core-ops-verify-ready.service"
step_end configure

# ------------------------------------------------------------------ 6. kernel modules
step_start "modules: $KV subset + depmod"
mkdir -p "$TREE/usr/lib/modules"
cp -a "$KCACHE/modules/$KV" "$TREE/usr/lib/modules/"
inchroot depmod "$KV"
step_end modules

# ------------------------------------------------------------------ 7. podman stack into the tree
step_start "podman: staging Debian 13's podman stack, quadlet generator, $IMAGE"
# the whole stack, Debian 13 libc included (as scripts/quadlet-bed.sh does for the bed; systemd
# 252's tools keep working on it)
cp -a --remove-destination "$QCACHE/root/usr" "$QCACHE/root/etc" "$TREE/"
# the generator: scripts/quadlet-generator (a wrapper that keeps quadlet's messages; why: see it)
gen=$TREE/usr/lib/systemd/system-generators/podman-system-generator
mkdir -p "$(dirname "$gen")"
rm -f "$gen"
install -m 0755 "$ROOT/scripts/quadlet-generator" "$gen"
mkdir -p "$TREE/etc/containers/systemd" "$TREE/usr/share/core-ops-verify"
cat > "$TREE/etc/containers/storage.conf" <<'EOF'
# core-ops-verify guest (scripts/verify-image.sh): vfs, like the namespace bed; the store holds
# localhost/core-ops-mini:1, imported at image build time
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF
cp "$QCACHE/mini.tar" "$TREE/usr/share/core-ops-verify/mini.tar"
inchroot ldconfig
# chroot with proc, sys, dev, run and tmp, in a private mount namespace: the mounts vanish with it
inchroot_mounted() {
    unshare -m --propagation private sh -euc '
        T=$1; shift
        mount --bind "$T" "$T"          # / must be a mount point (c/storage remounts it private)
        mount -t proc proc "$T/proc"; mount --bind /dev "$T/dev"; mount -t sysfs sysfs "$T/sys"
        mount -t tmpfs tmpfs "$T/run"; mount -t tmpfs tmpfs "$T/tmp"; mount -t tmpfs tmpfs "$T/var/tmp"
        exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C \
            PODMAN_IGNORE_CGROUPSV1_WARNING=1 chroot "$T" "$@"' _ "$TREE" "$@"
}
export PODMAN_IGNORE_CGROUPSV1_WARNING=1     # the host's cgroups, irrelevant for an import
PODMAN_VERSION=$(inchroot_mounted podman --version) || die "podman does not run in the tree"
# every ELF of the stack must find its libraries in the tree (the bed borrows the host's, the
# guest has only minbase + GUEST_PKGS: conmon needs libatomic1, for one)
missing=$(inchroot_mounted sh -c 'for f in /usr/bin/podman /usr/bin/conmon /usr/bin/crun /usr/lib/podman/netavark \
        /usr/libexec/podman/quadlet /usr/bin/systemctl /usr/bin/socat /usr/bin/dbus-daemon; do
        ldd "$f" 2>&1 | sed -n "s|^[[:space:]]*\([^ ]*\) => not found|$f: \1|p"; done') ||
    die "ldd in the tree failed"
[ -z "$missing" ] || die "libraries missing in the tree (add their bookworm packages to GUEST_PKGS): $missing"
# the pre-imported store, cached: podman import stamps the image with the import time, so a new
# import would change the image (and its ID) on every build
STORE_KEY=$(cat "$QCACHE/root/.complete" "$QCACHE/mini.tar" "$TREE/etc/containers/storage.conf" |
    sha256sum | cut -c1-16)
STORE=$VCACHE/store/$STORE_KEY
if [ ! -f "$STORE/.complete" ]; then
    log "podman: importing $IMAGE into the tree's store (chroot; cached as $STORE)"
    rm -rf "$STORE.part" && mkdir -p "$STORE.part"
    inchroot_mounted podman --cgroup-manager=cgroupfs --events-backend=none import -q \
        /usr/share/core-ops-verify/mini.tar "$IMAGE" >"$TMP/podman-import.log" 2>&1 ||
        { cat "$TMP/podman-import.log" >&2; die "podman import in the tree failed"; }
    inchroot_mounted podman --cgroup-manager=cgroupfs --events-backend=none image exists "$IMAGE" ||
        die "$IMAGE missing after podman import"
    cp -a "$TREE/var/lib/containers/." "$STORE.part/"
    touch "$STORE.part/.complete"
    rm -rf "$STORE" && mv "$STORE.part" "$STORE"
else
    log "podman: $IMAGE store from the cache ($STORE)"
fi
rm -rf "$TREE/var/lib/containers"
mkdir -p "$TREE/var/lib/containers"
cp -a "$STORE/." "$TREE/var/lib/containers/"
rm -f "$TREE/var/lib/containers/.complete"
step_end podman

# ------------------------------------------------------------------ 8. initramfs
step_start "initrd: busybox-static $BBVER + modules for ${INITRD_MODULES[*]}"
IRD=$TMP/initrd
mkdir -p "$IRD/bin" "$IRD/dev" "$IRD/proc" "$IRD/sys" "$IRD/newroot"
dpkg-deb -x "$BBDEB" "$TMP/bb"
cp "$TMP/bb/bin/busybox" "$IRD/bin/busybox" 2>/dev/null || cp "$TMP/bb/usr/bin/busybox" "$IRD/bin/busybox"
for a in sh mount umount insmod switch_root sleep cat mkdir echo; do ln -s busybox "$IRD/bin/$a"; done
inchroot modprobe -S "$KV" --show-depends -a "${INITRD_MODULES[@]}" > "$TMP/show-depends"
: > "$IRD/modules"
while read -r kind path _; do
    [ "$kind" = insmod ] || continue
    grep -qxF "$path" "$IRD/modules" && continue
    mkdir -p "$IRD/$(dirname "$path")"
    cp "$TREE/$path" "$IRD/$path"
    echo "$path" >> "$IRD/modules"
done < "$TMP/show-depends"
NMODS=$(wc -l < "$IRD/modules")
[ "$NMODS" -ge 6 ] || die "modprobe --show-depends gave only $NMODS modules"
cat > "$IRD/init" <<'EOF'
#!/bin/sh
# core-ops-verify initramfs (scripts/verify-image.sh): load the modules, mount the root, hand over
export PATH=/bin
fail() { echo "initrd: $*"; exit 1; }     # PID 1 exits -> panic -> qemu exits (-no-reboot)
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
root=/dev/vda
init=/sbin/init
for w in $(cat /proc/cmdline); do
    case "$w" in root=/dev/*) root=${w#root=};; init=/*) init=${w#init=};; esac
done
while read -r m; do insmod "$m" || fail "insmod $m failed"; done < /modules
i=0
while [ ! -b "$root" ]; do
    i=$((i + 1)); [ $i -le 1000 ] || fail "$root did not appear"; sleep 0.01
done
mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
EOF
chmod 0755 "$IRD/init"
cp "$IRD/modules" "$TMP/initrd-modules"
# cpio newc written here: sorted, inodes numbered 1.., uid/gid 0, mtime SOURCE_DATE_EPOCH, plus
# /dev/console (busybox cpio would record the host's inode numbers)
"$PY" - "$IRD" "$TMP/initrd.img" "$SOURCE_DATE_EPOCH" <<'PY'
import gzip, os, stat, sys
root, out, epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])
entries = []
for d, dirs, files in os.walk(root):
    dirs.sort()
    for n in sorted(dirs + files):
        entries.append(os.path.relpath(os.path.join(d, n), root))
entries.sort()
buf = bytearray()
ino = 0
def add(name, mode, data=b"", rdev=(0, 0), nlink=1):
    global ino
    ino += 1
    nm = name.encode() + b"\0"
    hdr = "070701" + "".join("%08X" % v for v in (
        ino, mode, 0, 0, nlink, epoch, len(data), 0, 0, rdev[0], rdev[1], len(nm), 0))
    buf.extend(hdr.encode() + nm)
    buf.extend(b"\0" * (-len(buf) % 4))
    buf.extend(data)
    buf.extend(b"\0" * (-len(buf) % 4))
for e in entries:
    p = os.path.join(root, e)
    st = os.lstat(p)
    if stat.S_ISDIR(st.st_mode):
        add(e, st.st_mode, nlink=2)
    elif stat.S_ISLNK(st.st_mode):
        add(e, st.st_mode, os.readlink(p).encode())
    else:
        add(e, st.st_mode, open(p, "rb").read())
add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
add("TRAILER!!!", 0)
with open(out, "wb") as f:
    f.write(gzip.compress(bytes(buf), compresslevel=6, mtime=0))
PY
step_end initrd

# ------------------------------------------------------------------ 9. clean + clamp the tree
step_start "tree: removing non-reproducible files, clamping mtimes"
: > "$TREE/etc/machine-id"                       # empty: systemd makes one per boot
rm -f "$TREE/var/lib/dbus/machine-id" "$TREE/var/cache/ldconfig/aux-cache" \
      "$TREE"/etc/ssh/ssh_host_* "$TREE"/var/cache/debconf/*-old "$TREE"/var/lib/dpkg/*-old \
      "$TREE/var/lib/systemd/random-seed"
find "$TREE/var/log" -mindepth 1 ! -type d -delete
find "$TREE/run" "$TREE/tmp" "$TREE/var/tmp" -mindepth 1 -delete
# dpkg status for the manifest (read before the tree goes away)
cp "$TREE/var/lib/dpkg/status" "$TMP/dpkg-status"
find "$TREE" -xdev -newermt "@$SOURCE_DATE_EPOCH" -print0 |
    xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
[ -z "${CORE_OPS_VERIFY_IMAGE_TREE_LIST:-}" ] || (cd "$TREE" && find . -xdev -printf '%M %U:%G %s %T@ %p %l\n' |
    LC_ALL=C sort -k5 > "$CORE_OPS_VERIFY_IMAGE_TREE_LIST")
step_end clean

# ------------------------------------------------------------------ 10. ext4 + qcow2
step_start "image: mkfs.ext4 -d ($FS_SIZE), inode times, qcow2"
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
mkfs.ext4 -q -F -L "$FS_LABEL" -U "$FS_UUID" -E "hash_seed=$FS_HASH_SEED,root_owner=0:0" \
    -d "$TREE" "$RAW" "$FS_SIZE" >&2 || die "mkfs.ext4 -d failed"
# mkfs -d copies each source file's ctime (and atime): set both to SOURCE_DATE_EPOCH on every
# inode in use (from the inode bitmaps; reserved inodes below 11 except the root are left)
dumpe2fs "$RAW" 2>/dev/null | "$PY" -c '
import re, sys
text = sys.stdin.read()
per = int(re.search(r"^Inodes per group:\s+(\d+)", text, re.M).group(1))
count = int(re.search(r"^Inode count:\s+(\d+)", text, re.M).group(1))
free = set()
for m in re.finditer(r"^[ \t]+Free inodes: ?(.*)$", text, re.M):
    for part in filter(None, (p.strip() for p in m.group(1).split(","))):
        a, _, b = part.partition("-")
        free.update(range(int(a), int(b or a) + 1))
epoch = sys.argv[1]
for ino in range(1, count + 1):
    if ino in free or (ino < 11 and ino != 2):
        continue
    for field in ("ctime", "atime"):
        print("sif <%d> %s @%s" % (ino, field, epoch))
' "$SOURCE_DATE_EPOCH" > "$TMP/inode-times.cmd"
debugfs -w -f "$TMP/inode-times.cmd" "$RAW" >/dev/null 2>"$TMP/debugfs.log" ||
    { tail -n 5 "$TMP/debugfs.log" >&2; die "debugfs (inode times) failed"; }
! grep -v '^debugfs ' "$TMP/debugfs.log" | grep -q . ||
    { head -n 5 "$TMP/debugfs.log" >&2; die "debugfs reported errors setting inode times"; }
e2fsck -fn "$RAW" >"$TMP/e2fsck.log" 2>&1 || { cat "$TMP/e2fsck.log" >&2; die "e2fsck found errors in $RAW"; }
qemu-img convert -O qcow2 "$RAW" "$TMP/base.qcow2"
step_end image

# ------------------------------------------------------------------ 11. outputs + manifest
step_start "manifest"
cp "$KCACHE/vmlinux" "$TMP/vmlinux"
STAGED=$(for d in "$QCACHE"/debs/*.deb; do dpkg-deb -f "$d" Package Version | paste -sd' '; done |
    sed 's/^Package: \([^ ]*\) Version: /\1 /')
rm -rf --one-file-system "$TREE" "$IRD" "$TMP/bb"
TIMES[manifest]=$(ms "$T_STEP")                 # the hashing below is added to it
TIMES[total]=$(ms "$T_ALL")
TIMINGS=$(for k in apt kernel podman_fetch mmdebstrap configure modules podman initrd clean image manifest total; do
    printf '%s=%s ' "$k" "${TIMES[$k]}"; done)
export SUITE SOURCE_DATE_EPOCH KPKG KVER KV META_VER BBVER MIRROR SEC_MIRROR FS_UUID FS_HASH_SEED FS_SIZE \
    FS_LABEL IMAGE STAGED TIMINGS STORE_KEY PODMAN_VERSION T_ALL
# hashlib (OpenSSL) hashes the 2 GiB raw image ~5x faster than sha256sum here
DIGESTS=$("$PY" - "$TMP/dpkg-status" "$TMP/initrd-modules" "$TMP/manifest.json" "$QCACHE/mini.tar" \
    "$TMP" "$RAW" "$SELF" <<'PY'
import hashlib, json, os, sys, time
status, _, out, mini, tmp, raw, recipe = sys.argv[1:8]
E = os.environ
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                return h.hexdigest()
            h.update(b)
digests = {n: sha(os.path.join(tmp, n)) for n in ("vmlinux", "initrd.img", "base.qcow2")}
digests["root.ext4"] = sha(raw)
pkgs, cur = [], {}
for line in open(status, encoding="utf-8").read().split("\n") + [""]:
    if not line:
        if cur.get("Status", "").endswith(" installed"):
            pkgs.append({"name": cur["Package"], "version": cur["Version"], "arch": cur.get("Architecture", "")})
        cur = {}
    elif not line[0].isspace() and ":" in line:
        k, v = line.split(":", 1)
        cur[k] = v.strip()
pkgs.sort(key=lambda p: (p["name"], p["arch"]))
staged = sorted(({"name": l.split()[0], "version": l.split()[1]} for l in E["STAGED"].splitlines() if l.strip()),
                key=lambda p: p["name"])
image_busybox = [p["version"] for p in staged if p["name"] == "busybox-static"]
staged = [p for p in staged if p["name"] != "busybox-static"]
timings = {k: int(v) for k, v in (kv.split("=") for kv in E["TIMINGS"].split())}
elapsed = (time.time_ns() - int(E["T_ALL"])) // 1000000
timings["manifest"] += elapsed - timings["total"]
timings["total"] = elapsed
doc = {
    "format": 1,
    "suite": E["SUITE"],
    "mirror": [E["MIRROR"], E["SEC_MIRROR"]],
    "source_date_epoch": int(E["SOURCE_DATE_EPOCH"]),
    "kernel": {"version": E["KV"], "package": E["KPKG"], "package_version": E["KVER"],
               "metapackage": "linux-image-amd64", "metapackage_version": E["META_VER"],
               "cmdline": "console=ttyS0 root=/dev/vda rw panic=-1 core_ops_verify.run=NONCE"},
    "initrd": {"busybox_static": E["BBVER"],
               "modules": [l.strip() for l in open(sys.argv[2]) if l.strip()]},
    "rootfs": {"fs": "ext4", "size": E["FS_SIZE"], "label": E["FS_LABEL"], "uuid": E["FS_UUID"],
               "hash_seed": E["FS_HASH_SEED"]},
    "packages": pkgs,
    "staged": {"suite": "trixie", "from": "scripts/quadlet-bed.sh --fetch-only", "packages": staged,
               "image": E["IMAGE"], "image_tar": "/usr/share/core-ops-verify/mini.tar",
               "image_busybox_static": image_busybox[0] if image_busybox else None,
               "image_tar_sha256": hashlib.sha256(open(mini, "rb").read()).hexdigest(),
               "podman": E["PODMAN_VERSION"], "store_cache_key": E["STORE_KEY"]},
    "sha256": digests,
    "recipe_sha256": sha(recipe),
    "build_seconds": round(timings["total"] / 1000, 1),
    "timings_ms": timings,
}
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print(" ".join("%s=%s" % kv for kv in digests.items()))
print(" ".join("%s=%s" % kv for kv in timings.items()))
print(timings["total"])
PY
) || die "writing manifest.json failed"
rm -f "$RAW"
{ read -r DIGESTS_LINE; read -r TIMINGS; read -r TOTAL_MS; } <<<"$DIGESTS"
rm -f "$TMP"/*.log "$TMP/dpkg-status" "$TMP/show-depends" "$TMP/shadow" "$TMP/inode-times.cmd" \
      "$TMP/initrd-modules"

# ------------------------------------------------------------------ 12. swap into place
# rename(2) with RENAME_EXCHANGE when OUT_DIR exists: readers never see a half-built directory
if [ -e "$OUT" ]; then
    "$PY" - "$TMP" "$OUT" <<'PY' || { mv "$OUT" "$TMP.old" && mv "$TMP" "$OUT" && mv "$TMP.old" "$TMP"; }
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
if libc.renameat2(AT_FDCWD, sys.argv[1].encode(), AT_FDCWD, sys.argv[2].encode(), RENAME_EXCHANGE) != 0:
    sys.exit(os.strerror(ctypes.get_errno()))
PY
    rm -rf --one-file-system "$TMP"                  # now the previous OUT_DIR
else
    mv "$TMP" "$OUT"
fi
log "built $OUT in $((TOTAL_MS / 1000)).$(( (TOTAL_MS % 1000) / 100 )) s: kernel $KV, $(du -m "$OUT/base.qcow2" | cut -f1) MB base.qcow2"
log "timings (ms): $TIMINGS"
log "sha256: $DIGESTS_LINE"
echo "VERIFY_IMAGE_DIR=$OUT"
