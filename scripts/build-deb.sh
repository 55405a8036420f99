#!/usr/bin/env bash
# scripts/build-deb.sh - build the Debian package of core-ops (target/debian/*.deb) with
# cargo-deb, from the metadata in Cargo.toml ([package.metadata.deb]) and the maintainer
# scripts in scripts/deb/.
#
#   scripts/build-deb.sh            build; prints the path of the .deb as the last stdout line
#   scripts/build-deb.sh --lintian  ...and run lintian on it (fails on errors, lists warnings)
#
# Steps: install cargo-deb (pinned, from crates.io, compiled from source with its own lock
# file: `cargo install --locked`; never a prebuilt binary) unless that version is already in
# ~/.cargo/bin; `cargo build --release`; generate the man pages and shell completions from
# that binary into target/deb-assets/; `cargo deb --no-build`. Everything it creates lives in
# target/ or ~/.cargo/bin and is rebuilt from source when missing.
# Needs dpkg-dev (dpkg-shlibdeps for the automatic Depends); scripts/prereqs.sh installs it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

CARGO_DEB_VERSION=3.8.0
LINTIAN=
case "${1:-}" in
    "") ;;
    --lintian) LINTIAN=1 ;;
    *) echo "usage: $0 [--lintian]" >&2; exit 2 ;;
esac

step() { printf '==> %s\n' "$*" >&2; }
now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }

t=$(now)
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    step "cargo install cargo-deb --locked --version $CARGO_DEB_VERSION (from source)"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" >&2
    step "cargo-deb installed in $(ms "$t") ms"
fi

t=$(now)
step "cargo build --release --locked --bin core-ops"
cargo build --release --locked --bin core-ops >&2
step "release build: $(ms "$t") ms"

# the target dir cargo used (CARGO_TARGET_DIR or a config may move it)
TARGET=$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN=$TARGET/release/core-ops
ASSETS=$ROOT/target/deb-assets
rm -rf "$ASSETS"
mkdir -p "$ASSETS/man" "$ASSETS/completions"
"$BIN" manpages "$ASSETS/man" >/dev/null
"$BIN" completions bash > "$ASSETS/completions/core-ops"
"$BIN" completions zsh > "$ASSETS/completions/_core-ops"
"$BIN" completions fish > "$ASSETS/completions/core-ops.fish"
# the Debian changelog of this build (the upstream one is CHANGELOG.md); its date is the
# commit's (or SOURCE_DATE_EPOCH), so the same commit packages the same way
VERSION=$(sed -n 's/^version = "\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
MAINTAINER=$(sed -n 's/^maintainer = "\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
REV=$("$BIN" --version | sed -n 's/.*(build \([^,]*\),.*/\1/p')
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
cat > "$ASSETS/changelog.Debian" <<EOF
core-ops ($VERSION-1) unstable; urgency=medium

  * Upstream release $VERSION, build $REV.
    Packaged with cargo-deb; the upstream changes are in
    /usr/share/doc/core-ops/changelog.gz.

 -- $MAINTAINER  $(LC_ALL=C date -u -R -d "@$EPOCH")
EOF

t=$(now)
step "cargo deb --no-build"
out=$(cargo deb --no-build --locked)
DEB=$(printf '%s\n' "$out" | tail -n1)
[ -f "$DEB" ] || { echo "scripts/build-deb.sh: cargo deb printed no package path: $out" >&2; exit 1; }
step "packaged in $(ms "$t") ms: $DEB ($(stat -c %s "$DEB") bytes)"

if [ -n "$LINTIAN" ]; then
    step "lintian $DEB"
    # exit status non-zero on errors; warnings and info are listed, each with its tag
    lintian --display-info --tag-display-limit 0 "$DEB" >&2
fi
echo "$DEB"
