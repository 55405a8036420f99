#!/usr/bin/env bash
# scripts/libvirt.sh - libvirt (qemu:///system) for the VM verification harness, on a host whose
# PID 1 is not systemd (Debian 12, root; /dev/kvm unusable, so guests run under TCG).
#
#   scripts/libvirt.sh install   install libvirt 9.0 (daemon, qemu driver, virsh) from Debian 12;
#                                idempotent, no network when already installed; never changes the
#                                installed qemu packages (dies if apt would or did)
#   scripts/libvirt.sh up        configure qemu.conf (marked block), start virtlogd and the
#                                monolithic libvirtd as plain daemons with pid files; idempotent;
#                                prints KEY=VALUE lines (eval-able) once qemu:///system answers
#   scripts/libvirt.sh down      destroy running domains named core-ops-verify-*, then stop
#                                libvirtd and virtlogd by pid (waits for them to exit); idempotent
#   scripts/libvirt.sh status    print the KEY=VALUE lines; exit 0 if qemu:///system answers, 3 if not
#
# Why each setting (summarised in docs/vm-testbed.md, "libvirt without systemd"):
#   - Only libvirt-daemon, libvirt-daemon-driver-qemu and libvirt-clients (--no-install-recommends,
#     9.0.0-4+deb12u2). NOT libvirt-daemon-system: it pulls libvirt-daemon-system-systemd (upgrades
#     the host's systemd packages); it ships the units, /etc/libvirt/{libvirtd,qemu}.conf and the
#     postinst that creates the libvirt-qemu user. The machine image carries qemu 10.0.2 from
#     bookworm-backports; apt must not touch it (bookworm's qemu 7.2 clashes with qemu-utils 10).
#   - libvirt-qemu user and group (uid/gid 64055, as Debian's postinst makes them): the qemu driver
#     resolves its built-in default user/group at start-up whatever qemu.conf says; without them
#     libvirtd exits: "Failed to parse user 'libvirt-qemu'". Nothing runs as that user.
#   - /etc/libvirt/qemu.conf: one block between the markers below. Without libvirt-daemon-system
#     there is no such file and it holds just the block; a distro file is kept as it is (copy in
#     qemu.conf.core-ops-orig) with the block appended. The block:
#       user = "root", group = "root"   qemu runs as root: (1) libvirt's cached QEMU capabilities stay
#                                       valid (as an unprivileged user qemu cannot open /dev/kvm,
#                                       crw------- root, and each start re-probes QEMU for ~88 s:
#                                       "KVM was enabled when probing ..., but it is not available
#                                       now"); (2) a 9p share (accessmode='passthrough') is writable
#                                       from the guest, files appear as root on the host. libvirt
#                                       logs "tainted: high-privileges" per domain: harmless.
#       dynamic_ownership = 0           libvirt chowns nothing (overlay, kernel, initrd, share, logs);
#       remember_owner = 0              and sets no trusted.libvirt.security.{dac,ref_dac,
#                                       timestamp_dac} xattrs (with the defaults it sets them on the
#                                       overlay, vmlinux and initrd.img while a domain runs).
#   - Daemons: virtlogd first (libvirtd hands it qemu's stdout/stderr), then libvirtd; each with
#     --daemon --pid-file under /run/core-ops-libvirt and its log file set through
#     LIBVIRT_LOG_OUTPUTS (no journald here). virtlockd is not needed (lock_manager is off).
#     libvirtd.conf is not needed (built-in defaults: root-only rw socket /run/libvirt/libvirt-sock).
#     Harmless errors in its log at start: no dnsmasq, no system bus, no DMI (udev, dmidecode).
#   - Files of a domain, for the harness: libvirtd itself opens the <serial type='file'> paths
#     (created 0600 root, passed to qemu as append=on: a reused path keeps its old content) and
#     binds the <channel> unix socket (srwxrwxr-x root; removed at destroy), so both work in a
#     root-only 0700 directory. Per-domain qemu command line and stderr: LIBVIRT_QEMU_LOG_DIR/NAME.log.
#
# Output of `up` / `status` (stdout, KEY=VALUE):
#   LIBVIRT_URI=qemu:///system
#   LIBVIRT_LIBVIRTD_PID, LIBVIRT_VIRTLOGD_PID
#   LIBVIRT_LOG             libvirtd's log (/var/log/libvirt/libvirtd.log)
#   LIBVIRT_QEMU_LOG_DIR    per-domain logs with the full qemu command line (NAME.log)
# Progress and timings go to stderr.
set -euo pipefail

PROG=libvirt
URI=qemu:///system
PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
RUN_DIR=/run/core-ops-libvirt
LIBVIRTD_PIDFILE=$RUN_DIR/libvirtd.pid
VIRTLOGD_PIDFILE=$RUN_DIR/virtlogd.pid
LOG_DIR=/var/log/libvirt
LIBVIRTD_LOG=$LOG_DIR/libvirtd.log
VIRTLOGD_LOG=$LOG_DIR/virtlogd.log
QEMU_CONF=/etc/libvirt/qemu.conf
MARK_BEGIN="# >>> core-ops scripts/libvirt.sh >>> (managed block, edit the script instead)"
MARK_END="# <<< core-ops scripts/libvirt.sh <<<"
DOMAIN_PREFIX=core-ops-verify-
UP_TIMEOUT=${CORE_OPS_LIBVIRT_TIMEOUT:-30}

die() { echo "$PROG: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

[ "$(id -u)" = 0 ] || die "must run as root"

# ------------------------------------------------------------------ helpers
# installed qemu packages with versions, one "name=version" a line (the set must not change)
qemu_state() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Package}=${Version}\n' 'qemu*' 2>/dev/null |
        awk '$1 == "ii" { print $2 }' | sort
}

pkgs_missing() {
    local p
    for p in "${PKGS[@]}"; do
        [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" = "ii " ] || echo "$p"
    done
}

virsh_ok() { timeout 10 virsh -c "$URI" list --name >/dev/null 2>&1; }

# pid from FILE if that process is alive and runs EXE
pid_of() {
    local file=$1 exe=$2 pid
    pid=$(cat "$file" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] || return 1
    echo "$pid"
}

# pids running EXE that are not PID (started by someone else)
foreign_pids() {
    local exe=$1 own=${2:-} p out=()
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$exe" ] || continue
        [ "${p#/proc/}" = "$own" ] || out+=("${p#/proc/}")
    done
    echo "${out[*]:-}"
}

wait_exit() {   # PID SECONDS
    local pid=$1 i
    for ((i = 0; i < $2 * 10; i++)); do
        [ -d "/proc/$pid" ] || return 0
        # a zombie with no parent reaping it yet counts as gone
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && return 0
        sleep 0.1
    done
    return 1
}

print_env() {
    echo "LIBVIRT_URI=$URI"
    echo "LIBVIRT_LIBVIRTD_PID=$(pid_of "$LIBVIRTD_PIDFILE" /usr/sbin/libvirtd || true)"
    echo "LIBVIRT_VIRTLOGD_PID=$(pid_of "$VIRTLOGD_PIDFILE" /usr/sbin/virtlogd || true)"
    echo "LIBVIRT_LOG=$LIBVIRTD_LOG"
    echo "LIBVIRT_QEMU_LOG_DIR=$LOG_DIR/qemu"
}

# ------------------------------------------------------------------ install
do_install() {
    local missing before after out t0
    mapfile -t missing < <(pkgs_missing)
    if [ ${#missing[@]} = 0 ]; then
        log "installed: ${PKGS[*]} ($(dpkg-query -W -f='${Version}' libvirt-daemon))"
        return 0
    fi
    t0=$(date +%s%N)
    before=$(qemu_state)
    export DEBIAN_FRONTEND=noninteractive
    local APT=(apt-get -q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends)
    # refuse before anything happens if apt would touch a qemu package (the backports qemu of the
    # machine image must stay); a simulation needs no lock
    sim() { apt-get -q -s install --no-install-recommends "${missing[@]}" 2>&1; }
    if ! out=$(sim) && grep -qE 'Unable to locate package|has no installation candidate' <<<"$out"; then
        log "package lists missing or stale: apt-get update"
        apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || die "apt-get update failed"
        out=$(sim) || { echo "$out" >&2; die "apt-get install (simulated) of ${missing[*]} failed"; }
    elif ! grep -q '^Inst ' <<<"$out"; then
        echo "$out" >&2; die "apt-get install (simulated) of ${missing[*]} failed"
    fi
    if grep -E '^(Inst|Remv|Purg) qemu' <<<"$out" >&2; then
        die "apt would change the qemu packages above: refusing (install libvirt by hand)"
    fi
    log "installing ${missing[*]}"
    if ! out=$("${APT[@]}" "${missing[@]}" 2>&1); then
        echo "$out" >&2
        if grep -qE 'Unable to locate package|has no installation candidate|Failed to fetch|404 +Not Found' <<<"$out"; then
            log "package lists missing or stale: apt-get update, then again"
            apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || die "apt-get update failed"
            "${APT[@]}" "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
        else
            die "apt-get install ${missing[*]} failed"
        fi
    else
        grep -E '^(Setting up|Unpacking|E:|W:)' <<<"$out" >&2 || true
    fi
    after=$(qemu_state)
    if [ "$before" != "$after" ]; then
        diff <(echo "$before") <(echo "$after") >&2 || true
        die "the installed qemu packages CHANGED during the install (see diff above)"
    fi
    mapfile -t missing < <(pkgs_missing)
    [ ${#missing[@]} = 0 ] || die "still not installed: ${missing[*]}"
    log "installed ${PKGS[*]} ($(dpkg-query -W -f='${Version}' libvirt-daemon)) in $(ms "$t0") ms; qemu packages unchanged"
}

# ------------------------------------------------------------------ qemu.conf
# prints "changed" when the file was rewritten
configure_qemu_conf() {
    local block new old=""
    block=$(cat <<EOF
$MARK_BEGIN
# qemu runs as root: no 88 s capability re-probe per start (/dev/kvm is root-only) and a
# writable 9p share. (The user libvirt-qemu must still exist: libvirtd resolves its built-in
# default at start-up, "Failed to parse user 'libvirt-qemu'" otherwise; the script creates it.)
user = "root"
group = "root"
# leave the harness' files (overlay, kernel, share, logs) as they are: no chown, no xattrs
dynamic_ownership = 0
remember_owner = 0
$MARK_END
EOF
)
    if [ -f "$QEMU_CONF" ]; then
        old=$(cat "$QEMU_CONF")
        # the file without our block (if any), then the block at the end
        new=$(awk -v b="$MARK_BEGIN" -v e="$MARK_END" '
            $0 == b { skip = 1; next }
            $0 == e { skip = 0; next }
            !skip { print }' "$QEMU_CONF")
        # our keys must not be set (uncommented) outside the block as well
        if grep -nE '^[[:space:]]*(user|group|dynamic_ownership|remember_owner)[[:space:]]*=' <<<"$new" >&2; then
            die "$QEMU_CONF sets the keys above outside the managed block: remove them"
        fi
        new=$(printf '%s\n\n%s' "$new" "$block")    # $(...) dropped the trailing blank lines
    else
        # Debian 12 ships /etc/libvirt/qemu.conf in libvirt-daemon-system only (not installed
        # here): libvirtd then runs on built-in defaults, so the file is just our block
        new=$(printf '%s\n%s\n\n%s' "# /etc/libvirt/qemu.conf - created by core-ops scripts/libvirt.sh" \
            "# (Debian's commented template comes with libvirt-daemon-system, not installed here)" "$block")
    fi
    [ "$new" != "$old" ] || return 0
    mkdir -p "$(dirname "$QEMU_CONF")"
    # keep a copy of a file that is not ours (the distro's, from libvirt-daemon-system) once
    if [ -f "$QEMU_CONF" ] && ! grep -qxF "$MARK_BEGIN" "$QEMU_CONF" && [ ! -f "$QEMU_CONF.core-ops-orig" ]; then
        cp -p "$QEMU_CONF" "$QEMU_CONF.core-ops-orig"
        log "original $QEMU_CONF kept as $QEMU_CONF.core-ops-orig"
    fi
    printf '%s\n' "$new" > "$QEMU_CONF.tmp.$$"
    # Debian's postinst keeps qemu.conf at 0600 (it can hold passwords): keep the mode, or use that
    if [ -f "$QEMU_CONF" ]; then chmod --reference="$QEMU_CONF" "$QEMU_CONF.tmp.$$"; else chmod 600 "$QEMU_CONF.tmp.$$"; fi
    mv "$QEMU_CONF.tmp.$$" "$QEMU_CONF"
    log "wrote the managed block into $QEMU_CONF"
    echo changed
}

# libvirtd's qemu driver resolves its BUILT-IN default user and group (Debian: libvirt-qemu /
# libvirt-qemu) at start-up, before and regardless of qemu.conf; if they do not exist the driver
# fails and libvirtd exits: "Failed to parse user 'libvirt-qemu'". Only libvirt-daemon-system's
# postinst creates them (uid/gid 64055, plus groups kvm and libvirt). Create the same user and group
# (nothing runs as them: qemu.conf says root); no kvm group, as /dev/kvm is not used.
ensure_qemu_user() {
    if ! getent group libvirt-qemu >/dev/null; then
        local gid=()
        getent group 64055 >/dev/null || gid=(--gid 64055)
        addgroup --quiet --system "${gid[@]}" libvirt-qemu || die "addgroup libvirt-qemu failed"
        log "created system group libvirt-qemu (gid $(getent group libvirt-qemu | cut -d: -f3))"
    fi
    if ! getent passwd libvirt-qemu >/dev/null; then
        local uid=()
        getent passwd 64055 >/dev/null || uid=(--uid 64055)
        adduser --quiet --system --ingroup libvirt-qemu --disabled-login --disabled-password \
            --home /var/lib/libvirt --no-create-home --gecos "Libvirt Qemu" "${uid[@]}" libvirt-qemu \
            2> >(grep -v 'greater than SYS_UID_MAX' >&2) || die "adduser libvirt-qemu failed"
        log "created system user libvirt-qemu (uid $(id -u libvirt-qemu)); qemu runs as root anyway"
    fi
}

# ------------------------------------------------------------------ up / down
start_daemon() {   # NAME EXE PIDFILE LOGFILE
    local name=$1 exe=$2 pidfile=$3 logfile=$4 pid others
    if pid=$(pid_of "$pidfile" "$exe"); then
        log "$name running (pid $pid)"
        return 0
    fi
    others=$(foreign_pids "$exe")
    [ -z "$others" ] || die "$name already running as pid $others, not started by this script (stop it first)"
    rm -f "$pidfile"
    # log level 3 (warnings and errors) to a file: there is no journald on this host
    LIBVIRT_LOG_OUTPUTS="3:file:$logfile" "$exe" --daemon --pid-file "$pidfile" \
        || die "$name failed to start (see $logfile)"
    local i
    for ((i = 0; i < 50; i++)); do
        pid=$(pid_of "$pidfile" "$exe") && break
        sleep 0.1
    done
    [ -n "${pid:-}" ] || die "$name did not write $pidfile (see $logfile)"
    log "$name started (pid $pid, log $logfile)"
}

stop_daemon() {   # NAME EXE PIDFILE
    local name=$1 exe=$2 pidfile=$3 pid
    if ! pid=$(pid_of "$pidfile" "$exe"); then
        rm -f "$pidfile"
        log "$name not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_exit "$pid" 15; then
        log "$name (pid $pid) still there after 15 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_exit "$pid" 5 || die "$name (pid $pid) does not exit"
    fi
    rm -f "$pidfile"
    log "$name stopped (pid $pid)"
}

do_up() {
    local t0 changed pid i
    t0=$(date +%s%N)
    local exe
    for exe in /usr/sbin/libvirtd /usr/sbin/virtlogd /usr/bin/virsh; do
        [ -x "$exe" ] || die "$exe missing: run '$0 install' first"
    done
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    ensure_qemu_user
    changed=$(configure_qemu_conf)
    if [ "$changed" = changed ] && pid=$(pid_of "$LIBVIRTD_PIDFILE" /usr/sbin/libvirtd); then
        log "qemu.conf changed: restarting libvirtd (pid $pid)"
        stop_daemon libvirtd /usr/sbin/libvirtd "$LIBVIRTD_PIDFILE"
    fi
    start_daemon virtlogd /usr/sbin/virtlogd "$VIRTLOGD_PIDFILE" "$VIRTLOGD_LOG"
    start_daemon libvirtd /usr/sbin/libvirtd "$LIBVIRTD_PIDFILE" "$LIBVIRTD_LOG"
    for ((i = 0; i < UP_TIMEOUT * 5; i++)); do
        virsh_ok && break
        pid_of "$LIBVIRTD_PIDFILE" /usr/sbin/libvirtd >/dev/null || die "libvirtd exited (see $LIBVIRTD_LOG)"
        sleep 0.2
    done
    virsh_ok || die "$URI does not answer after ${UP_TIMEOUT} s (see $LIBVIRTD_LOG)"
    # qemu:///system only answers with the qemu driver loaded (if its state initialisation fails,
    # e.g. a bad qemu.conf or a missing libvirt-qemu user, libvirtd exits: caught in the loop)
    log "$URI answers ($(ms "$t0") ms); libvirtd log: $LIBVIRTD_LOG, per-domain qemu logs: $LOG_DIR/qemu/NAME.log"
    print_env
}

do_down() {
    local pid doms d
    if pid=$(pid_of "$LIBVIRTD_PIDFILE" /usr/sbin/libvirtd) && virsh_ok; then
        doms=$(timeout 10 virsh -c "$URI" list --all --name 2>/dev/null | grep "^$DOMAIN_PREFIX" || true)
        for d in $doms; do
            if timeout 60 virsh -c "$URI" destroy "$d" >/dev/null 2>&1; then
                log "destroyed domain $d"
            fi
            # a persistent (defined) one would outlive the run: undefine it too
            if timeout 10 virsh -c "$URI" undefine "$d" >/dev/null 2>&1; then
                log "undefined domain $d"
            fi
        done
        doms=$(timeout 10 virsh -c "$URI" list --name 2>/dev/null | sed '/^$/d' || true)
        [ -z "$doms" ] || log "WARNING: other domains keep running (their qemu outlives libvirtd): $doms"
    fi
    stop_daemon libvirtd /usr/sbin/libvirtd "$LIBVIRTD_PIDFILE"
    stop_daemon virtlogd /usr/sbin/virtlogd "$VIRTLOGD_PIDFILE"
}

do_status() {
    if virsh_ok; then
        print_env
        return 0
    fi
    log "$URI does not answer"
    return 3
}

case "${1:-}" in
    install) do_install ;;
    up) do_up ;;
    down) do_down ;;
    status) do_status ;;
    *) die "usage: $0 install|up|down|status" ;;
esac
