//! The real-world corpus (issue 13): desired-state repositories assembled from public
//! projects (Fedora CoreOS units, afterburn, systemd's and util-linux' units, e2fsprogs,
//! logrotate, OpenZFS timers, podman's Quadlet examples and a Quadlet homelab), each with
//! several revisions and two hosts, replayed through the real `core-ops` binary against the
//! systemd test bed. `tests/fixtures/realworld/README.md` says where every file comes from and
//! what was changed; each repository's `expect.yaml` says what each revision must do on each
//! host.
//!
//! For every (repo, host) the revisions are applied in order: a converged revision must then
//! stay converged (`plan --detailed-exitcode` exits 0, an `agent` run and a second `apply`
//! change nothing) and pass its `systemctl show` checks; a rejected one must exit 1 with the
//! expected message and change nothing; a rolled-back one must exit 3 with outcome
//! `rolled_back` and leave the host at the previous revision. Finally an empty host selection
//! prunes everything, and pre-existing files survive. Each test prints its table to stderr.
//!
//! Needs root (the bed): without it these tests fail, they never pass silently.

mod common;
#[path = "common/corpus.rs"]
mod corpus;

#[test]
fn coreos_base() {
    corpus::report(&corpus::run_repo("coreos-base"));
}

#[test]
fn quadlet_homelab() {
    corpus::report(&corpus::run_repo("quadlet-homelab"));
}

#[test]
fn debian_server() {
    corpus::report(&corpus::run_repo("debian-server"));
}
