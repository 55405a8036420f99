# scripts/lib/private-apt.sh - sourced by prereqs.sh, quadlet-bed.sh and verify-image.sh: apt
# against a sources file and state of the project's own, so fetching packages from another suite
# (trixie, bookworm-backports) never touches /etc/apt or the host's package lists.
# The sourcing script defines die().

# The machine's deb822 sources: which mirror and keyring to use.
DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources

# debian_sources: print $DEBIAN_SOURCES, or die when the machine has none.
debian_sources() {
    [ -f "$DEBIAN_SOURCES" ] || die "$DEBIAN_SOURCES not found: cannot tell which Debian mirror to use"
    echo "$DEBIAN_SOURCES"
}

# private_apt STATE SOURCES [fetch]: set the array APT to an apt-get that reads only SOURCES,
# keeps its lists in STATE/lists and skips the indexes apt-get would fetch for desktops
# (translations, DEP-11, command-not-found). With `fetch` it also keeps its download cache in
# STATE/cache and sees an empty dpkg status: it can download packages, never install them.
private_apt() {
    local state=$1 sources=$2 mode=${3:-}
    mkdir -p "$state/lists/partial"
    APT=(apt-get -q -o "Dir::Etc::sourcelist=$sources" -o Dir::Etc::sourceparts=/nonexistent
         -o "Dir::State::Lists=$state/lists" -o Acquire::Languages=none
         -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
         -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
         -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
         -o Acquire::IndexTargets::deb::CNF::DefaultEnabled=false)
    if [ "$mode" = fetch ]; then
        mkdir -p "$state/cache/archives/partial"
        APT+=(-o "Dir::Cache=$state/cache" -o Dir::State::status=/dev/null -o APT::Sandbox::User=root)
    fi
}
