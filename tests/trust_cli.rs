//! Repository trust through the real binary (issue 14, items 4 and 5): signed commits made by
//! `git commit -S` with `gpg.format=ssh` and keys from `ssh-keygen`, judged by `plan` (no
//! systemd needed); rewinds refused by `plan`, `apply` and `agent`, the last two against the
//! systemd test bed (root only: those tests fail, never pass, when not run as root).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::cli::{Scratch, stderr, stdout};
use common::world::world;
use core_ops::record::status::{self, LastApplied, StatusSnapshot};
use core_ops_testkit::signing::{GitWork, SshKey};
use serde_json::Value;

const HOST: &[u8] = b"services: []\n";

fn write_private(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct Fx {
    s: Scratch,
    alice: SshKey,
    mallory: SshKey,
    work: GitWork,
}

impl Fx {
    fn new() -> Fx {
        let s = Scratch::new();
        let keys = s.path("keys");
        std::fs::create_dir(&keys).unwrap();
        let alice = SshKey::generate(&keys, "alice");
        let mallory = SshKey::generate(&keys, "mallory");
        let work = GitWork::init(&s.path("repo"));
        write_private(
            &s.path("allowed_signers"),
            &alice.allowed_line("alice@example.org"),
        );
        Fx {
            s,
            alice,
            mallory,
            work,
        }
    }

    fn signers(&self) -> String {
        self.s.path("allowed_signers").display().to_string()
    }

    /// The local trust file (`CORE_OPS_TRUST_FILE` of the scratch root).
    fn local(&self, text: &str) {
        write_private(&self.s.path("trust.yaml"), text);
    }

    fn require_signed(&self) {
        self.local(&format!(
            "require_signed: true\nallowed_signers: {}\n",
            self.signers()
        ));
    }

    fn plan(&self, rev: &str) -> std::process::Output {
        let repo = self.work.path.display().to_string();
        self.s
            .run(&["plan", "--repo", &repo, "--rev", rev, "--host", "h"])
    }
}

fn refused(o: &std::process::Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a refusal (exit 1):\n{}\n{}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

#[test]
fn plan_accepts_only_commits_signed_by_an_allowed_signer() {
    let mut fx = Fx::new();
    fx.require_signed();
    let alice = fx.alice.clone();
    let good = fx
        .work
        .commit(&[("hosts/h/host.yaml", HOST)], Some(&alice), "a");
    let o = fx.plan(&good);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let unsigned = fx.work.commit(&[("hosts/h/host.yaml", HOST)], None, "u");
    let e = refused(&fx.plan(&unsigned));
    assert!(e.contains("trust:") && e.contains("is not signed"), "{e}");
    assert!(e.contains(&unsigned[..8]), "{e}");
    assert!(e.contains(&fx.signers()), "{e}");

    let mallory = fx.mallory.clone();
    let other = fx
        .work
        .commit(&[("hosts/h/host.yaml", HOST)], Some(&mallory), "m");
    let e = refused(&fx.plan(&other));
    assert!(e.contains(&fx.mallory.fingerprint), "{e}");
    assert!(e.contains("not an allowed signer"), "{e}");

    // the same commits without any policy: nothing is required
    std::fs::remove_file(fx.s.path("trust.yaml")).unwrap();
    assert_eq!(fx.plan(&unsigned).status.code(), Some(0));
}

#[test]
fn host_yaml_policy_applies_only_when_there_is_no_local_file() {
    let mut fx = Fx::new();
    let host = format!(
        "services: []\ntrust:\n  require_signed: true\n  allowed_signers: {}\n",
        fx.signers()
    );
    let unsigned = fx
        .work
        .commit(&[("hosts/h/host.yaml", host.as_bytes())], None, "u");
    let e = refused(&fx.plan(&unsigned));
    assert!(e.contains("is not signed"), "{e}");
    assert!(e.contains("hosts/h/host.yaml of commit"), "{e}");
    let alice = fx.alice.clone();
    let signed = fx
        .work
        .commit(&[("hosts/h/host.yaml", host.as_bytes())], Some(&alice), "s");
    assert_eq!(fx.plan(&signed).status.code(), Some(0));

    // the local file wins over the repository, in both directions
    fx.local("require_signed: false\n");
    assert_eq!(fx.plan(&unsigned).status.code(), Some(0));
    let plain = fx.work.commit(&[("hosts/h/host.yaml", HOST)], None, "p");
    fx.require_signed();
    let e = refused(&fx.plan(&plain));
    assert!(e.contains("local trust file"), "{e}");
}

#[test]
fn an_unsafe_local_trust_file_is_refused() {
    let mut fx = Fx::new();
    let c = fx.work.commit(&[("hosts/h/host.yaml", HOST)], None, "u");
    fx.local("require_signed: false\n");
    std::fs::set_permissions(
        fx.s.path("trust.yaml"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let e = refused(&fx.plan(&c));
    assert!(e.contains("writable by group or others"), "{e}");
}

#[test]
fn plan_refuses_a_revision_that_does_not_descend_from_last_applied() {
    let mut fx = Fx::new();
    let a = fx.work.commit(&[("hosts/h/host.yaml", HOST)], None, "a");
    let b = fx
        .work
        .commit(&[("hosts/h/host.yaml", b"services: []\n# b\n")], None, "b");
    let mut snap = StatusSnapshot::new("h");
    snap.last_applied = Some(LastApplied {
        revision: b.clone(),
        requested_ref: "main".into(),
        applied_at: "2026-01-01T00:00:00Z".into(),
        resources: Default::default(),
    });
    status::save(&fx.s.path("state/status.json"), &snap).unwrap();
    assert_eq!(fx.plan(&b).status.code(), Some(0));
    let e = refused(&fx.plan(&a));
    assert!(e.contains("does not descend"), "{e}");
    assert!(e.contains(&a) && e.contains(&b), "{e}");
    let c = fx
        .work
        .commit(&[("hosts/h/host.yaml", b"services: []\n# c\n")], None, "c");
    assert_eq!(fx.plan(&c).status.code(), Some(0));
    // the operator's local policy may allow it
    fx.local("allow_rewind: true\n");
    assert_eq!(fx.plan(&a).status.code(), Some(0));
}

/// A commit on top of `parent` that no branch points at (what a force push leaves).
fn sibling(repo: &Path, parent: &str, message: &str) -> String {
    let repo = git2::Repository::open(repo).unwrap();
    let p = repo
        .find_commit(git2::Oid::from_str(parent).unwrap())
        .unwrap();
    let sig = git2::Signature::new("t", "t@example.invalid", &git2::Time::new(1, 0)).unwrap();
    repo.commit(None, &sig, &sig, message, &p.tree().unwrap(), &[&p])
        .unwrap()
        .to_string()
}

#[test]
fn apply_and_agent_refuse_a_rewind_unless_rollback_or_allowed() {
    let Some(mut w) = world("rewind") else {
        panic!(
            "this test needs root: it boots the systemd test bed (namespaces, mounts); run it \
             as root (scripts/test.sh)"
        );
    };
    let v1 = w.commit(w.fx());
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    let mut fx2 = w.fx();
    fx2.level = "2";
    let v2 = w.commit(fx2);
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");

    // an older revision, through apply and through the agent
    for cmd in ["apply", "agent"] {
        let e = refused(&w.run(&[cmd, "--rev", &v1]));
        assert!(e.contains("refusing to rewind"), "{cmd}: {e}");
        assert!(e.contains(&v1) && e.contains(&v2), "{cmd}: {e}");
        let st = w.status();
        assert_eq!(st["last_applied"]["revision"], v2.as_str());
        assert_eq!(st["last_run"]["outcome"], "refused", "{st:#}");
        let why = st["last_run"]["diagnostics"][0].as_str().unwrap();
        assert!(why.contains(&v1) && why.contains(&v2), "{why}");
    }
    // a force-pushed sibling of v2
    let forced = sibling(&w.s.path("repo"), &v1, "forced");
    let e = refused(&w.run(&["agent", "--rev", &forced]));
    assert!(e.contains(&forced) && e.contains(&v2), "{e}");

    // an explicit rollback goes back; moving forward from there is no rewind
    let o = w.run(&["--json", "apply", "--rollback-to", &v1]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(w.status()["last_applied"]["revision"], v1.as_str());
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");

    // the operator's local policy allows it
    write_private(&w.s.path("trust.yaml"), "allow_rewind: true\n");
    let (code, r) = w.apply(&forced, &[]);
    assert_eq!(code, 0, "{r:#}");
    let st: Value = w.status();
    assert_eq!(st["last_applied"]["revision"], forced.as_str());
    w.teardown();
}
