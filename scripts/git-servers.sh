#!/usr/bin/env bash
# scripts/git-servers.sh - real git servers on loopback for the remote-repository tests
# (tests/remote_*.rs, tests/deb_package.rs), as root:
#   git://    git daemon (--export-all) over DIR/repos
#   https://  git http-backend (CGI) behind lighttpd with TLS (a CA and a server certificate
#             for 127.0.0.1 made here) and HTTP basic auth (user "deploy", password in
#             DIR/https/password); a second port also demands a client certificate (made here)
#   ssh://    OpenSSH sshd with a pinned ed25519 host key; deploy keys DIR/ssh/deploy (no
#             passphrase) and DIR/ssh/deploy-pass (passphrase in DIR/ssh/passphrase); login as
#             root, repositories by absolute path
# lighttpd and sshd come from Debian packages unpacked into /var/cache/core-ops-test/gitservers
# by scripts/prereqs.sh (nothing is installed into the host: no service starts, no host keys
# are generated in /etc/ssh). sshd runs in a private mount namespace where /etc/passwd has its
# privilege-separation user and /run is a tmpfs: the host's files are never changed.
#
# Usage:
#   scripts/git-servers.sh up DIR [git] [https] [ssh]   start (default: all three); prints
#                                                        eval-able KEY=VALUE lines
#   scripts/git-servers.sh stop DIR git|https|ssh        stop one server (outage tests)
#   scripts/git-servers.sh start DIR git|https|ssh       start it again on the same port
#   scripts/git-servers.sh down DIR                      stop everything started in DIR
# Repositories: bare repositories under DIR/repos (tests create them and push there through
# the file system). Every process started is recorded in DIR/<server>.pid and ended by PID.
set -euo pipefail

die() { echo "scripts/git-servers.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
CACHE=${CORE_OPS_TEST_CACHE:-/var/cache/core-ops-test}/gitservers
LIGHTTPD=$CACHE/usr/sbin/lighttpd
SSHD=$CACHE/usr/sbin/sshd
BACKEND=$(git --exec-path)/git-http-backend

cmd=${1:-}; DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || die "usage: $0 up|down|stop|start DIR [git] [https] [ssh]"
shift 2

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port name
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    die "$2 did not listen on 127.0.0.1:$1 (log: $DIR/$2.log)"
}

stop_one() { # name
    local f=$DIR/$1.pid
    [ -f "$f" ] || return 0
    local pid; pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

setup_git() {
    echo "$(free_port)" >"$DIR/git.port"
}
start_git() {
    local port; port=$(cat "$DIR/git.port")
    git daemon --listen=127.0.0.1 --port="$port" --export-all --base-path="$DIR/repos" \
        --reuseaddr --pid-file="$DIR/git.pid" --detach --log-destination=stderr "$DIR/repos" \
        2>>"$DIR/git.log"
    wait_port "$port" git
}

setup_https() {
    [ -x "$LIGHTTPD" ] || die "lighttpd is not unpacked in $CACHE (run scripts/prereqs.sh)"
    local d=$DIR/https; mkdir -p "$d"
    echo "$(free_port)" >"$DIR/https.port"
    echo "$(free_port)" >"$DIR/https-mtls.port"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=core-ops test CA" \
        -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$d/server.key" \
        -out "$d/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext" -out "$d/server.crt" 2>/dev/null
    cat "$d/server.crt" "$d/server.key" >"$d/server.pem"
    # a client certificate by the same CA (the second port demands one)
    openssl req -newkey rsa:2048 -nodes -subj "/CN=core-ops test host" -keyout "$d/client.key" \
        -out "$d/client.csr" 2>/dev/null
    openssl x509 -req -in "$d/client.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -out "$d/client.crt" 2>/dev/null
    # a second CA nobody trusts (the unknown-CA test)
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=other CA" \
        -keyout "$d/other-ca.key" -out "$d/other-ca.pem" 2>/dev/null
    head -c 18 /dev/urandom | base64 | tr -d '+/=' >"$d/password"
    chmod 600 "$d/password" "$d"/*.key
    printf 'deploy:%s\n' "$(cat "$d/password")" >"$d/htpasswd"
    cat >"$d/lighttpd.conf" <<EOF
server.modules = ("mod_alias", "mod_auth", "mod_authn_file", "mod_cgi", "mod_setenv", "mod_openssl", "mod_accesslog")
server.document-root = "$DIR/repos"
server.bind = "127.0.0.1"
server.port = $(cat "$DIR/https.port")
server.pid-file = "$DIR/https.pid"
server.errorlog = "$DIR/https.log"
accesslog.filename = "$DIR/https-access.log"
ssl.engine = "enable"
ssl.pemfile = "$d/server.pem"
\$SERVER["socket"] == "127.0.0.1:$(cat "$DIR/https-mtls.port")" {
    ssl.engine = "enable"
    ssl.pemfile = "$d/server.pem"
    ssl.ca-file = "$d/ca.pem"
    ssl.verifyclient.activate = "enable"
    ssl.verifyclient.enforce = "enable"
}
auth.backend = "plain"
auth.backend.plain.userfile = "$d/htpasswd"
auth.require = ( "/git/" => ( "method" => "basic", "realm" => "core-ops test", "require" => "valid-user" ) )
alias.url = ( "/git" => "$BACKEND" )
\$HTTP["url"] =~ "^/git" {
    cgi.assign = ( "" => "" )
    setenv.set-environment = ( "GIT_PROJECT_ROOT" => "$DIR/repos", "GIT_HTTP_EXPORT_ALL" => "1" )
}
EOF
}
start_https() {
    "$LIGHTTPD" -m "$CACHE/usr/lib/lighttpd" -f "$DIR/https/lighttpd.conf" 2>>"$DIR/https.log" || die "lighttpd failed (log: $DIR/https.log)"
    wait_port "$(cat "$DIR/https.port")" https
}

setup_ssh() {
    [ -x "$SSHD" ] || die "sshd is not unpacked in $CACHE (run scripts/prereqs.sh)"
    local d=$DIR/ssh; mkdir -p "$d"
    echo "$(free_port)" >"$DIR/ssh.port"
    local port; port=$(cat "$DIR/ssh.port")
    ssh-keygen -q -t ed25519 -N '' -C core-ops-test-host -f "$d/host_key"
    ssh-keygen -q -t ed25519 -N '' -C other-host -f "$d/other_host_key"
    ssh-keygen -q -t ed25519 -N '' -C core-ops-deploy -f "$d/deploy"
    head -c 12 /dev/urandom | base64 | tr -d '+/=' >"$d/passphrase"
    chmod 600 "$d/passphrase"
    ssh-keygen -q -t ed25519 -N "$(cat "$d/passphrase")" -C core-ops-deploy-pass -f "$d/deploy-pass"
    ssh-keygen -q -t ed25519 -N '' -C not-authorized -f "$d/stranger"
    cat "$d/deploy.pub" "$d/deploy-pass.pub" >"$d/authorized_keys"
    chmod 600 "$d/authorized_keys"
    echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$d/host_key.pub")" >"$d/known_hosts"
    echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$d/other_host_key.pub")" >"$d/wrong_known_hosts"
    : >"$d/empty_known_hosts"
    chmod 644 "$d"/*known_hosts
    { grep -v '^sshd:' /etc/passwd; echo 'sshd:x:65534:65534:privsep:/run/sshd:/usr/sbin/nologin'; } >"$d/passwd"
    cat >"$d/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile none
AuthorizedKeysFile $d/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
EOF
}
start_ssh() {
    local d=$DIR/ssh
    setsid unshare --mount --propagation private sh -c '
        mount --bind "$1/passwd" /etc/passwd &&
        mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd &&
        exec "$2" -D -f "$1/sshd_config" -E "$3"' sshd-bed "$d" "$SSHD" "$DIR/ssh.log" \
        </dev/null >/dev/null 2>>"$DIR/ssh.log" &
    echo $! >"$DIR/ssh.pid"
    wait_port "$(cat "$DIR/ssh.port")" ssh
}

env_lines() {
    echo "CORE_OPS_GITSRV_DIR=$DIR"
    echo "CORE_OPS_GITSRV_REPOS=$DIR/repos"
    if [ -f "$DIR/git.port" ]; then
        echo "CORE_OPS_GITSRV_GIT_URL=git://127.0.0.1:$(cat "$DIR/git.port")"
    fi
    if [ -f "$DIR/https.port" ]; then
        echo "CORE_OPS_GITSRV_HTTPS_URL=https://127.0.0.1:$(cat "$DIR/https.port")/git"
        echo "CORE_OPS_GITSRV_HTTPS_CA=$DIR/https/ca.pem"
        echo "CORE_OPS_GITSRV_HTTPS_OTHER_CA=$DIR/https/other-ca.pem"
        echo "CORE_OPS_GITSRV_HTTPS_USER=deploy"
        echo "CORE_OPS_GITSRV_HTTPS_PASSWORD_FILE=$DIR/https/password"
        echo "CORE_OPS_GITSRV_HTTPS_MTLS_URL=https://127.0.0.1:$(cat "$DIR/https-mtls.port")/git"
        echo "CORE_OPS_GITSRV_HTTPS_CLIENT_CERT=$DIR/https/client.crt"
        echo "CORE_OPS_GITSRV_HTTPS_CLIENT_KEY=$DIR/https/client.key"
    fi
    if [ -f "$DIR/ssh.port" ]; then
        echo "CORE_OPS_GITSRV_SSH_URL=ssh://root@127.0.0.1:$(cat "$DIR/ssh.port")"
        echo "CORE_OPS_GITSRV_SSH_KEY=$DIR/ssh/deploy"
        echo "CORE_OPS_GITSRV_SSH_PASS_KEY=$DIR/ssh/deploy-pass"
        echo "CORE_OPS_GITSRV_SSH_PASSPHRASE_FILE=$DIR/ssh/passphrase"
        echo "CORE_OPS_GITSRV_SSH_STRANGER_KEY=$DIR/ssh/stranger"
        echo "CORE_OPS_GITSRV_SSH_KNOWN_HOSTS=$DIR/ssh/known_hosts"
        echo "CORE_OPS_GITSRV_SSH_WRONG_KNOWN_HOSTS=$DIR/ssh/wrong_known_hosts"
        echo "CORE_OPS_GITSRV_SSH_EMPTY_KNOWN_HOSTS=$DIR/ssh/empty_known_hosts"
        echo "CORE_OPS_GITSRV_SSH_HOST_FINGERPRINT=$(ssh-keygen -lf "$DIR/ssh/host_key.pub" | cut -d' ' -f2)"
    fi
}

case "$cmd" in
up)
    servers=("$@"); [ ${#servers[@]} -gt 0 ] || servers=(git https ssh)
    mkdir -p "$DIR/repos"; chmod 700 "$DIR"
    for s in "${servers[@]}"; do
        case "$s" in git|https|ssh) ;; *) die "unknown server '$s' (git, https, ssh)";; esac
        "setup_$s"; "start_$s"
    done
    env_lines
    ;;
stop) stop_one "${1:?server}" ;;
start) "start_${1:?server}" >/dev/null ;;
down) for s in git https ssh; do stop_one "$s"; done ;;
env) env_lines ;;
*) die "unknown command '$cmd'" ;;
esac
