#!/usr/bin/env bash
# scripts/demo.sh - the main job on the embedded example, for real: boots a real systemd (the
# project's test bed), turns fixtures/example into a git repository, and inside the bed runs
#   core-ops init REPO v1 ; core-ops apply --host beta ; core-ops status
# then shows the example's units active, and applies again (a no-op: 0 jobs, 0 reloads).
# core-ops runs inside the bed exactly as on a host: default paths, the system bus.
#
#   scripts/demo.sh           run the demo, then stop the bed
#   scripts/demo.sh --keep    leave the bed running to explore:
#                             scripts/systemd-testbed.sh exec /tmp/core-ops-demo bash
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
KEEP=${1:-}
BED=/tmp/core-ops-demo
HOST=beta

scripts/prereqs.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
echo "==> cargo build --release" >&2
cargo build --release --quiet
BIN=$ROOT/target/release/core-ops

if [ "$KEEP" != "--keep" ]; then
    trap 'scripts/systemd-testbed.sh down "$BED" >/dev/null' EXIT
fi
echo "==> booting a real systemd in $BED" >&2
scripts/systemd-testbed.sh down "$BED" >/dev/null 2>&1 || true
rm -rf "$BED"
eval "$(scripts/systemd-testbed.sh up "$BED")"

echo "==> fixtures/example -> git repository $BED/example (tag v1)" >&2
work=$BED/example
mkdir -p "$work"
cp -a fixtures/example/. "$work/"
(
    cd "$work"
    export GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z
    git init -q -b main
    git add -A
    git -c user.name="core-ops demo" -c user.email=demo@core-ops.invalid commit -q -m "example v1"
    git tag v1
)

inbed() { scripts/systemd-testbed.sh exec "$BED" "$@"; }
# through the bed's shared dir: the bed has a private /tmp, so a checkout under /tmp is
# invisible inside it
cp "$BIN" "$BED/core-ops"
inbed install -m 0755 "$BED/core-ops" /usr/local/bin/core-ops

run() { printf '\n$ %s\n' "$*"; inbed "$@"; }
run core-ops init "$work" v1
set +e
run core-ops apply --host "$HOST"
rc=$?
set -e
run core-ops status
run systemctl list-units --no-pager --all web.service media-indexer.service srv-media.mount backup.timer
run cat /etc/web/app.env
run core-ops apply --host "$HOST"
if [ "$rc" != 0 ]; then
    echo "demo: the first apply did not converge (exit $rc)" >&2
    exit "$rc"
fi
inbed systemctl is-active --quiet web.service media-indexer.service srv-media.mount backup.timer
printf '\ndemo: host %s converged to the example repository; units active in the bed.\n' "$HOST"
[ "$KEEP" = "--keep" ] && printf 'bed left running: scripts/systemd-testbed.sh exec %s bash; stop: scripts/systemd-testbed.sh down %s\n' "$BED" "$BED"
exit 0
