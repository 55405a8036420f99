#!/usr/bin/env bash
# systemd-testbed.sh - boot a REAL systemd system manager for integration tests,
# on a host whose PID 1 is not systemd (Debian 12, root, cgroup v1/hybrid host).
#
# This is core-ops' own copy (scripts/systemd-testbed.sh), used by scripts/test.sh, .ci/run and
# tests/common/bed.rs; it started from the reference script of the project's first test-bed
# study (what it found: docs/testbed.md) and is maintained here. Changes from the reference:
#   - `up` no longer leaves the launcher running when it times out waiting for it.
#
#   systemd-testbed.sh up     DIR   start (idempotent); prints KEY=VALUE lines (eval-able)
#   systemd-testbed.sh down   DIR   stop everything it started (by PID) and clean up
#   systemd-testbed.sh status DIR   print state; exit 0 if running, 3 if not
#   systemd-testbed.sh exec   DIR CMD...   run CMD inside the testbed (e.g. systemctl, journalctl)
#
# How it works: /lib/systemd/systemd runs as PID 1 of new PID+mount+UTS+IPC+cgroup
# namespaces (container=other), on a copy-on-write overlay of the host root (upper layer
# on a tmpfs that exists only in that mount namespace), with
#   DIR/units  bind-mounted at /etc/systemd/system  (write unit files here, then Reload)
#   DIR/run    bind-mounted at /run                 (so the host reaches its sockets)
#   DIR        bind-mounted at the same path        (fixtures under DIR look the same inside)
#   /tmp       a fresh tmpfs; /proc/sys and /sys read-only; CAP_SYS_MODULE/TIME dropped
#   cgroups    its own cgroup2 subtree (systemd-testbed-<id>) seen through a cgroup
#              namespace, so it never touches the host's v1 hierarchies or other processes.
# Every mount lives in the private mount namespace and disappears with it.
#
# Output of `up`/`status` (KEY=VALUE, eval-able):
#   SYSTEMD_TESTBED_ADDRESS      unix:path=DIR/run/dbus/system_bus_socket - the testbed's system
#                                bus (dbus-daemon inside); connect as a normal *bus* client.
#                                zbus 5: zbus::connection::Builder::address(addr)?.build()
#   SYSTEMD_TESTBED_P2P_ADDRESS  unix:path=DIR/run/systemd-testbed/private - peer-to-peer to
#                                systemd's private socket through an in-bed proxy (sd-bus style
#                                clients; NOT usable with zbus <= 6.2.1, which rejects systemd's
#                                sender "org.freedesktop.systemd1", zbus issue #1497)
#   SYSTEMD_TESTBED_UNIT_DIR     DIR/units, which systemd sees as /etc/systemd/system
#                                (FragmentPath and enablement symlinks use the inside path)
#   SYSTEMD_TESTBED_JOURNAL_DIR  journalctl -D <this> from the host; `down` keeps it as DIR/journal
#   SYSTEMD_TESTBED_PID          host PID of the testbed's systemd (PID 1 inside)
# DIR/units persists across up/down (units enabled there start at boot); DIR/run is recreated.
# Paths that units reference must be visible inside: DIR is shared at the same path; other host
# paths are visible read-only-ish through the overlay (writes stay in the testbed); /tmp is private.
# Caveats: no cgroup controllers inside (the host binds them to cgroup v1), so MemoryMax=,
# CPUQuota=, TasksMax= are accepted but not enforced; the network namespace is the host's.
#
# Env: TESTBED_TARGET (default multi-user.target), TESTBED_TIMEOUT (boot wait, default 30 s),
#      TESTBED_KEEP_ON_FAIL=1 (debug: leave a testbed that failed to boot running).
set -euo pipefail

PROG=systemd-testbed
SYSTEMD=/lib/systemd/systemd

die() { echo "$PROG: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root"

ensure_prereqs() {
    local missing=()
    [ -x "$SYSTEMD" ] || missing+=(systemd)
    command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus)
    for c in unshare nsenter setpriv pivot_root; do
        command -v "$c" >/dev/null 2>&1 || { missing+=(util-linux); break; }
    done
    command -v mount >/dev/null 2>&1 || missing+=(mount)
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

# ---------------------------------------------------------------- paths / identity
setup_paths() {
    [ -n "${1:-}" ] || die "usage: $0 up|down|status|exec DIR"
    DIR=$(realpath -m -- "$1")
    case "$DIR" in /) die "DIR must not be /";; esac
    # the path ends up in mount options (overlay) and unit files: keep it plain
    [[ "$DIR" =~ ^[A-Za-z0-9._/+@-]+$ ]] || die "DIR may only contain [A-Za-z0-9._/+@-]: $DIR"
    ST=$DIR/.testbed                      # private state of this script
    ID=$(printf '%s' "$DIR" | sha256sum | cut -c1-12)
    CGNAME=systemd-testbed-$ID
    BUS_PATH=$DIR/run/dbus/system_bus_socket       # dbus-daemon --system inside the testbed
    P2P_PATH=$DIR/run/systemd-testbed/private      # p2p to systemd (via in-bed proxy)
    PRIVATE_PATH=$DIR/run/systemd/private          # systemd's own; only usable inside its PID ns
    LOGFILE=$DIR/testbed.log
    # libmount would otherwise keep its utab (+ lock) in the host's /run/mount
    export LIBMOUNT_UTAB=$ST/utab
    [ ${#BUS_PATH} -lt 108 ] || die "DIR too long: unix socket path $BUS_PATH exceeds 107 bytes"
}

proc_starttime() { # $1=pid -> field 22 of /proc/pid/stat; fails for dead/zombie processes
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    set -- $s
    case "$1" in Z|X|x) return 1;; esac
    echo "${20}"
}

# prints the host PID of our systemd if (and only if) it is alive and still the same process
running_pid() {
    local pid st
    [ -f "$ST/init.pid" ] || return 1
    read -r pid st < "$ST/init.pid" || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(proc_starttime "$pid" || echo dead)" = "$st" ] || return 1
    echo "$pid"
}

in_bed() { # run a command inside the testbed namespaces
    local pid=$1; shift
    nsenter --target "$pid" --mount --uts --ipc --pid --cgroup -- "$@"
}

print_info() {
    local pid=$1
    cat <<EOF
SYSTEMD_TESTBED_DIR=$DIR
SYSTEMD_TESTBED_PID=$pid
SYSTEMD_TESTBED_ADDRESS=unix:path=$BUS_PATH
SYSTEMD_TESTBED_BUS_SOCKET=$BUS_PATH
SYSTEMD_TESTBED_P2P_ADDRESS=unix:path=$P2P_PATH
SYSTEMD_TESTBED_UNIT_DIR=$DIR/units
SYSTEMD_TESTBED_UNIT_DIR_INSIDE=/etc/systemd/system
SYSTEMD_TESTBED_JOURNAL_DIR=$DIR/run/log/journal
SYSTEMD_TESTBED_ROOT=/proc/$pid/root
EOF
}

# ---------------------------------------------------------------- stage scripts (run inside namespaces)
write_stages() {
    mkdir -p "$ST"
    # stage1: PID 1 of the new pid namespace, still seeing the host /proc.
    cat > "$ST/stage1.sh" <<'EOS'
set -euo pipefail
DIR=$1 ST=$2 CGNAME=$3
# our PID as seen by the host (the host /proc is still mounted here)
read -r line < /proc/self/stat          # bash itself opens it: our own host PID
set -- ${line##*) }                      # fields 3.. ; starttime is field 22
echo "${line%% *} ${20}" > "$ST/init.pid.tmp"
mount --make-rprivate /
NS=$ST/ns
mkdir -p "$NS"
mount -t tmpfs -o mode=0755,size=2g testbed-ns "$NS"
mkdir -p "$NS/upper" "$NS/work" "$NS/root" "$NS/cg"
# own cgroup2 subtree; the cgroup namespace created below is rooted at it
mount -t cgroup2 cgroup2 "$NS/cg"
mkdir -p "$NS/cg/$CGNAME"
echo 0 > "$NS/cg/$CGNAME/cgroup.procs"
umount "$NS/cg"
mount -t overlay testbed-root -o "lowerdir=/,upperdir=$NS/upper,workdir=$NS/work" "$NS/root"
exec unshare --cgroup -- /bin/bash "$ST/stage2.sh" "$DIR" "$ST"
EOS
    # stage2: inside the cgroup namespace; build the root and exec systemd as PID 1.
    cat > "$ST/stage2.sh" <<'EOS'
set -euo pipefail
DIR=$1 ST=$2
R=$ST/ns/root
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
# minimal /dev
mount -t tmpfs -o mode=0755,nosuid,size=4m testbed-dev "$R/dev"
for n in null zero full random urandom tty; do cp -a "/dev/$n" "$R/dev/$n"; done
[ -e /dev/net/tun ] && { mkdir -p "$R/dev/net"; cp -a /dev/net/tun "$R/dev/net/tun"; }
mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev testbed-shm "$R/dev/shm"
mount -t mqueue -o nosuid,nodev,noexec mqueue "$R/dev/mqueue"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
: > "$ST/console"; touch "$R/dev/console"; mount --bind "$ST/console" "$R/dev/console"
# /proc hardening (nspawn-like): no sysctl writes leak to the host kernel
for p in sys sysrq-trigger; do
    [ -e "$R/proc/$p" ] || continue
    mount --bind "$R/proc/$p" "$R/proc/$p"; mount -o remount,bind,ro "$R/proc/$p"
done
# fresh /tmp, shared DIR at the same path, unit dir, /run
mount -t tmpfs -o mode=1777,nosuid,nodev testbed-tmp "$R/tmp"
mkdir -p "$R$DIR"; mount --bind "$DIR" "$R$DIR"
mkdir -p "$R/etc/systemd/system"; mount --bind "$DIR/units" "$R/etc/systemd/system"
mount --bind "$DIR/run" "$R/run"
cd "$R"
mkdir -p .testbed-oldroot
pivot_root . .testbed-oldroot
cd /
umount -l /.testbed-oldroot
rmdir /.testbed-oldroot
exec env -i container=other TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    setpriv --bounding-set -sys_module,-sys_time,-syslog,-wake_alarm,-block_suspend \
    /lib/systemd/systemd --unit="${TESTBED_TARGET:-multi-user.target}" --show-status=no
EOS
}

# Units placed in the testbed's /run/systemd/system (runtime dir, never in DIR/units):
#  - systemd-testbed-proxy.socket/.service: systemd refuses connections to
#    /run/systemd/private whose peer PID is not visible in its PID namespace (host processes
#    are not), so a socket-activated systemd-socket-proxyd inside forwards
#    /run/systemd-testbed/private -> /run/systemd/private (peer-to-peer, no dbus-daemon).
#  - console-getty.service masked (the testbed has no real console).
write_runtime_units() {
    local u=$DIR/run/systemd/system
    mkdir -p "$u/sockets.target.wants"
    cat > "$u/systemd-testbed-proxy.socket" <<'EOU'
[Unit]
Description=systemd-testbed: host access to the manager's private bus socket
DefaultDependencies=no
Before=sockets.target
[Socket]
ListenStream=/run/systemd-testbed/private
SocketMode=0600
DirectoryMode=0755
EOU
    cat > "$u/systemd-testbed-proxy.service" <<'EOU'
[Unit]
Description=systemd-testbed: forward to /run/systemd/private
DefaultDependencies=no
Requires=systemd-testbed-proxy.socket
After=systemd-testbed-proxy.socket
[Service]
ExecStart=/lib/systemd/systemd-socket-proxyd --connections-max=4096 /run/systemd/private
EOU
    ln -sf ../systemd-testbed-proxy.socket "$u/sockets.target.wants/systemd-testbed-proxy.socket"
    ln -sf /dev/null "$u/console-getty.service"
    # the host's audit netlink is shared (same network namespace): don't read it
    ln -sf /dev/null "$u/systemd-journald-audit.socket"
    # keep the journal under /run (= DIR/run/log/journal) so the host can read it
    mkdir -p "$DIR/run/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=64M\n' > "$DIR/run/systemd/journald.conf.d/systemd-testbed.conf"
}

# ---------------------------------------------------------------- commands
cleanup_cgroup() {
    # remove our cgroup2 subtree (depth first), using a private mount of cgroup2
    mkdir -p "$ST/cgm"
    unshare --mount --propagation private -- /bin/bash -c '
        mount -t cgroup2 cgroup2 "$1" || exit 0
        if [ -d "$1/$2" ]; then
            for i in 1 2 3 4 5 6 7 8 9 10; do
                find "$1/$2" -depth -type d -exec rmdir {} + 2>/dev/null || true
                [ -d "$1/$2" ] || break
                sleep 0.2
            done
            [ -d "$1/$2" ] && echo "systemd-testbed: warning: could not remove cgroup $2" >&2
        fi
        umount "$1"' _ "$ST/cgm" "$CGNAME" || true
    rmdir "$ST/cgm" 2>/dev/null || true
}

cmd_up() {
    local pid
    if pid=$(running_pid); then print_info "$pid"; return 0; fi
    ensure_prereqs
    # stale leftovers of a previous (crashed) run
    rm -rf "$DIR/run" "$ST"
    cleanup_cgroup
    mkdir -p "$DIR/units" "$DIR/run" "$ST"
    write_stages
    write_runtime_units
    : > "$LOGFILE"
    local t0 t1
    t0=$(date +%s%N)
    (
        # do not leak our fds (flock, callers' pipes) into the long-running testbed
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
        done
        export TESTBED_TARGET=${TESTBED_TARGET:-multi-user.target}
        exec setsid unshare --mount --propagation private --uts --ipc --pid --fork --kill-child -- \
            /bin/bash "$ST/stage1.sh" "$DIR" "$ST" "$CGNAME"
    ) < /dev/null >> "$LOGFILE" 2>&1 &
    echo "$!" > "$ST/unshare.pid"
    local deadline=$(( $(date +%s) + ${TESTBED_TIMEOUT:-30} ))
    while [ ! -f "$ST/init.pid.tmp" ]; do
        kill -0 "$(cat "$ST/unshare.pid")" 2>/dev/null || { cat "$LOGFILE" >&2; cmd_down > /dev/null; die "launcher exited early"; }
        [ "$(date +%s)" -lt "$deadline" ] || { cat "$LOGFILE" >&2; cmd_down > /dev/null; die "timeout waiting for launcher"; }
        sleep 0.01
    done
    mv "$ST/init.pid.tmp" "$ST/init.pid"
    pid=$(running_pid) || { cat "$LOGFILE" >&2; cmd_down > /dev/null; die "systemd died"; }
    while [ ! -S "$PRIVATE_PATH" ]; do
        running_pid > /dev/null || { tail -n 50 "$LOGFILE" "$ST/console" >&2 || true; cmd_down > /dev/null; die "systemd exited during boot"; }
        [ "$(date +%s)" -lt "$deadline" ] || { tail -n 50 "$LOGFILE" "$ST/console" >&2 || true; cmd_down >/dev/null; die "timeout waiting for $PRIVATE_PATH"; }
        sleep 0.01
    done
    # wait until the boot transaction has finished (running or degraded)
    local state
    state=$(timeout "${TESTBED_TIMEOUT:-30}" nsenter --target "$pid" --mount --uts --ipc --pid --cgroup -- systemctl is-system-running --wait 2>/dev/null) || true
    t1=$(date +%s%N)
    log "systemd up in $(( (t1 - t0) / 1000000 )) ms, state=${state:-unknown}, pid=$pid"
    [ -S "$BUS_PATH" ] || state="no-bus-socket"
    case "$state" in
        running|degraded) ;;
        *) tail -n 50 "$LOGFILE" "$ST/console" >&2 || true; [ -n "${TESTBED_KEEP_ON_FAIL:-}" ] || cmd_down > /dev/null; die "boot did not finish (state=$state)";;
    esac
    print_info "$pid"
}

cmd_down() {
    local pid upid
    if pid=$(running_pid); then
        kill -s RTMIN+4 "$pid" 2>/dev/null || true          # systemd: start poweroff.target
        for _ in $(seq 1 150); do running_pid > /dev/null || break; sleep 0.1; done
        if running_pid > /dev/null; then
            log "systemd did not power off in 15 s, killing its PID namespace"
            kill -KILL "$pid" 2>/dev/null || true             # kills every process in the namespace
            for _ in $(seq 1 50); do running_pid > /dev/null || break; sleep 0.1; done
        fi
    fi
    if [ -f "$ST/unshare.pid" ]; then
        upid=$(cat "$ST/unshare.pid")
        # only our unshare: its cmdline mentions our stage1 script
        if [ -r "/proc/$upid/cmdline" ] && tr '\0' ' ' < "/proc/$upid/cmdline" | grep -qF "$ST/stage1.sh"; then
            for _ in $(seq 1 50); do kill -0 "$upid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$upid" 2>/dev/null || true
        fi
    fi
    cleanup_cgroup
    [ -s "$ST/console" ] && { echo "----- console -----"; cat "$ST/console"; } >> "$LOGFILE" 2>/dev/null || true
    # keep the journal of the last run for post-mortems: journalctl -D DIR/journal
    if [ -d "$DIR/run/log/journal" ]; then
        rm -rf "$DIR/journal"
        mv "$DIR/run/log/journal" "$DIR/journal"
    fi
    rm -rf "$DIR/run" "$ST"
    echo "SYSTEMD_TESTBED_STATE=down"
    [ -d "$DIR/journal" ] && echo "SYSTEMD_TESTBED_LAST_JOURNAL_DIR=$DIR/journal"
    return 0
}

cmd_status() {
    local pid state
    if pid=$(running_pid); then
        state=$(in_bed "$pid" systemctl is-system-running 2>/dev/null) || true
        echo "SYSTEMD_TESTBED_STATE=${state:-unknown}"
        print_info "$pid"
        return 0
    fi
    echo "SYSTEMD_TESTBED_STATE=down"
    return 3
}

cmd_exec() {
    local pid
    pid=$(running_pid) || die "testbed at $DIR is not running"
    in_bed "$pid" "$@"
}

main() {
    local cmd=${1:-}
    shift || true
    case "$cmd" in
        up|down|status|exec) ;;
        *) die "usage: $0 up|down|status DIR | exec DIR CMD..." ;;
    esac
    setup_paths "${1:-}"
    shift
    if [ "$cmd" = down ] && [ ! -d "$DIR" ]; then
        echo "SYSTEMD_TESTBED_STATE=down"; return 0
    fi
    if [ "$cmd" = up ] || [ "$cmd" = down ]; then
        mkdir -p "$DIR"
        exec 9> "$DIR/.testbed.lock"
        flock 9
    fi
    "cmd_$cmd" "$@"
}

main "$@"
