//! Trust checks with real keys (`ssh-keygen -t ed25519`) and real signed commits
//! (`git commit -S`, `gpg.format=ssh`), made in a temp dir at test time.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use git2::Repository;

use super::*;
use core_ops_testkit::signing::{GitWork, SshKey};

const HOST_YAML: &[u8] = b"services: []\n";

struct Fx {
    dir: tempfile::TempDir,
    alice: SshKey,
    mallory: SshKey,
    work: GitWork,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let alice = SshKey::generate(&keys, "alice");
        let mallory = SshKey::generate(&keys, "mallory");
        let work = GitWork::init(&dir.path().join("repo"));
        Fx {
            dir,
            alice,
            mallory,
            work,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// An allowed-signers file holding alice, mode 0600.
    fn signers(&self) -> PathBuf {
        let p = self.path("allowed_signers");
        write_private(&p, &self.alice.allowed_line("alice@example.org"));
        p
    }

    /// A local trust file requiring signatures by `signers()`.
    fn local_policy(&self) -> PathBuf {
        let p = self.path("trust.yaml");
        write_private(
            &p,
            &format!(
                "require_signed: true\nallowed_signers: {}\n",
                self.signers().display()
            ),
        );
        p
    }

    fn repo(&self) -> Repository {
        Repository::open(&self.work.path).unwrap()
    }
}

fn write_private(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn rev(commit: &str) -> Revision {
    Revision {
        commit: commit.to_string(),
        requested_ref: "main".into(),
    }
}

fn local_trust(fx: &Fx) -> Trust {
    let file = fx.local_policy();
    policy_for(
        &file,
        &fx.repo(),
        &rev(&fx.work.git(&["rev-parse", "HEAD"])),
        "h",
    )
    .unwrap()
}

fn refusal(r: Result<Option<Verified>>) -> String {
    match r {
        Err(Error::Trust(m)) => m,
        other => panic!("expected a trust refusal, got {other:?}"),
    }
}

#[test]
fn allowed_signers_lines_options_and_errors() {
    let fx = Fx::new();
    let key = &fx.alice.public;
    let text = format!(
        "# comment\n\n  alice@example.org,a2@example.org {key}\n\
         \"bob smith\" namespaces=\"git,file\",valid-after=\"20250101Z\" {key}\n\
         ca@example.org cert-authority {key}\n"
    );
    let s = AllowedSigners::parse("signers", &text).unwrap();
    assert_eq!(s.entries.len(), 3);
    assert_eq!(s.entries[0].line, 3);
    assert_eq!(
        s.entries[0].principals,
        ["alice@example.org", "a2@example.org"]
    );
    assert_eq!(s.entries[1].principals, ["bob smith"]);
    assert_eq!(s.entries[1].namespaces.as_deref().unwrap(), ["git", "file"]);
    assert_eq!(s.entries[1].valid_after, Some(1_735_689_600));
    assert!(s.entries[2].cert_authority);
    let k = s.entries[0].key.clone();
    // a cert-authority line never verifies a plain signature; a window is honoured
    assert_eq!(s.matching(&k, "git", 0).count(), 1);
    assert_eq!(s.matching(&k, "git", 1_735_689_600).count(), 2);
    assert_eq!(s.matching(&k, "ssh", 1_735_689_600).count(), 1);

    for (bad, why) in [
        (
            format!("alice {key} trailing\nbob no-such-key AAAA\n"),
            "signers:2",
        ),
        (
            format!("alice restrict {key}\n"),
            "unsupported option 'restrict'",
        ),
        (
            format!("alice valid-after=\"20250101\" {key}\n"),
            "no trailing Z",
        ),
        (format!("alice namespaces=git {key}\n"), "double quotes"),
        ("alice\n".to_string(), "no key"),
    ] {
        let e = AllowedSigners::parse("signers", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn signed_by_an_allowed_key_verifies() {
    let mut fx = Fx::new();
    let c = fx.work.commit(
        &[("hosts/h/host.yaml", HOST_YAML)],
        Some(&fx.alice.clone()),
        "signed",
    );
    let trust = local_trust(&fx);
    let v = verify_commit(&fx.repo(), &rev(&c), &trust)
        .unwrap()
        .unwrap();
    assert_eq!(v.principals, ["alice@example.org"]);
    assert_eq!(v.fingerprint, fx.alice.fingerprint);
}

#[test]
fn unsigned_is_refused_naming_commit_and_signers_file() {
    let mut fx = Fx::new();
    let c = fx
        .work
        .commit(&[("hosts/h/host.yaml", HOST_YAML)], None, "unsigned");
    let trust = local_trust(&fx);
    let m = refusal(verify_commit(&fx.repo(), &rev(&c), &trust));
    assert!(m.contains("is not signed"), "{m}");
    assert!(m.contains(&c[..8]), "{m}");
    assert!(m.contains(&fx.signers().display().to_string()), "{m}");
    // no policy: nothing required
    let none = Trust {
        policy: TrustPolicy::default(),
        origin: PolicyOrigin::Default,
        local_file: fx.path("absent.yaml"),
    };
    assert_eq!(verify_commit(&fx.repo(), &rev(&c), &none).unwrap(), None);
}

#[test]
fn another_key_is_refused_naming_its_fingerprint() {
    let mut fx = Fx::new();
    let c = fx.work.commit(
        &[("hosts/h/host.yaml", HOST_YAML)],
        Some(&fx.mallory.clone()),
        "m",
    );
    let trust = local_trust(&fx);
    let m = refusal(verify_commit(&fx.repo(), &rev(&c), &trust));
    assert!(m.contains(&fx.mallory.fingerprint), "{m}");
    assert!(m.contains("not an allowed signer"), "{m}");
    assert!(!m.contains(&fx.alice.fingerprint), "{m}");
}

/// A signed commit object rewritten: `edit` changes its raw text (header kept or broken).
fn rewrite(fx: &Fx, commit: &str, edit: impl Fn(&str) -> String) -> String {
    let repo = fx.repo();
    let odb = repo.odb().unwrap();
    let obj = odb.read(git2::Oid::from_str(commit).unwrap()).unwrap();
    let text = String::from_utf8(obj.data().to_vec()).unwrap();
    let new = edit(&text);
    assert_ne!(new, text, "the edit changed nothing");
    odb.write(git2::ObjectType::Commit, new.as_bytes())
        .unwrap()
        .to_string()
}

#[test]
fn tampered_or_malformed_signatures_are_refused() {
    let mut fx = Fx::new();
    let c = fx.work.commit(
        &[("hosts/h/host.yaml", HOST_YAML)],
        Some(&fx.alice.clone()),
        "good",
    );
    let trust = local_trust(&fx);
    // the message changed, the signature kept: the payload no longer matches
    let tampered = rewrite(&fx, &c, |t| t.replace("\n\ngood\n", "\n\nevil\n"));
    let m = refusal(verify_commit(&fx.repo(), &rev(&tampered), &trust));
    assert!(m.contains("does not verify"), "{m}");
    assert!(m.contains(&fx.alice.fingerprint), "{m}");
    // the signature's base64 damaged
    let malformed = rewrite(&fx, &c, |t| {
        let i = t.find("-----BEGIN SSH SIGNATURE-----").unwrap() + 40;
        let mut s = t.to_string();
        s.replace_range(i..i + 8, "!!!!!!!!");
        s
    });
    let m = refusal(verify_commit(&fx.repo(), &rev(&malformed), &trust));
    assert!(m.contains("malformed SSH signature"), "{m}");
    // an OpenPGP armour is named as such
    let pgp = rewrite(&fx, &c, |t| {
        t.replace("BEGIN SSH SIGNATURE", "BEGIN PGP SIGNATURE")
            .replace("END SSH SIGNATURE", "END PGP SIGNATURE")
    });
    let m = refusal(verify_commit(&fx.repo(), &rev(&pgp), &trust));
    assert!(m.contains("OpenPGP"), "{m}");
}

#[test]
fn a_signature_in_another_namespace_is_refused() {
    let mut fx = Fx::new();
    let c = fx
        .work
        .commit(&[("hosts/h/host.yaml", HOST_YAML)], None, "x");
    let repo = fx.repo();
    let oid = git2::Oid::from_str(&c).unwrap();
    let payload = repo.odb().unwrap().read(oid).unwrap().data().to_vec();
    let msg = fx.path("payload");
    std::fs::write(&msg, &payload).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "file", "-f"])
        .arg(&fx.alice.private)
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let sig = std::fs::read_to_string(fx.path("payload.sig")).unwrap();
    let signed = repo
        .commit_signed(std::str::from_utf8(&payload).unwrap(), &sig, None)
        .unwrap();
    let trust = local_trust(&fx);
    let m = refusal(verify_commit(&fx.repo(), &rev(&signed.to_string()), &trust));
    assert!(m.contains("namespace 'file'"), "{m}");
}

#[test]
fn validity_window_is_judged_at_the_commit_time() {
    let mut fx = Fx::new();
    // fixture commits are dated 2026-01-01
    let c = fx.work.commit(
        &[("hosts/h/host.yaml", HOST_YAML)],
        Some(&fx.alice.clone()),
        "s",
    );
    let trust = local_trust(&fx);
    write_private(
        &fx.path("allowed_signers"),
        &format!("alice valid-before=\"20251231Z\" {}\n", fx.alice.public),
    );
    let m = refusal(verify_commit(&fx.repo(), &rev(&c), &trust));
    assert!(m.contains("not an allowed signer"), "{m}");
    write_private(
        &fx.path("allowed_signers"),
        &format!("alice valid-after=\"20251231Z\" {}\n", fx.alice.public),
    );
    assert!(
        verify_commit(&fx.repo(), &rev(&c), &trust)
            .unwrap()
            .is_some()
    );
}

#[test]
fn host_yaml_policy_applies_only_without_a_local_file() {
    let mut fx = Fx::new();
    let signers = fx.signers();
    let host = format!(
        "services: []\ntrust:\n  require_signed: true\n  allowed_signers: {}\n",
        signers.display()
    );
    let c = fx
        .work
        .commit(&[("hosts/h/host.yaml", host.as_bytes())], None, "u");
    let absent = fx.path("no-trust.yaml");
    let t = policy_for(&absent, &fx.repo(), &rev(&c), "h").unwrap();
    assert!(
        matches!(&t.origin, PolicyOrigin::Repository { file, .. } if file == "hosts/h/host.yaml")
    );
    let m = refusal(verify_commit(&fx.repo(), &rev(&c), &t));
    assert!(m.contains("hosts/h/host.yaml of commit"), "{m}");
    // another host's policy is not this host's
    let other = policy_for(&absent, &fx.repo(), &rev(&c), "g").unwrap();
    assert_eq!(other.origin, PolicyOrigin::Default);

    // the local file wins, even when it requires less
    let local = fx.path("trust.yaml");
    write_private(&local, "require_signed: false\n");
    let t = policy_for(&local, &fx.repo(), &rev(&c), "h").unwrap();
    assert_eq!(t.origin, PolicyOrigin::Local(local.clone()));
    assert_eq!(verify_commit(&fx.repo(), &rev(&c), &t).unwrap(), None);

    // a repository cannot relax its own checks
    let host = "services: []\ntrust:\n  allow_rewind: true\n";
    let c = fx
        .work
        .commit(&[("hosts/h/host.yaml", host.as_bytes())], None, "r");
    let e = policy_for(&absent, &fx.repo(), &rev(&c), "h")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("allow_rewind cannot be set by the repository"),
        "{e}"
    );
}

#[test]
fn policy_files_are_validated() {
    let fx = Fx::new();
    let f = fx.path("trust.yaml");
    for (text, why) in [
        ("require_signed: true\n", "needs allowed_signers"),
        (
            "require_signed: true\nallowed_signers: rel/path\n",
            "absolute host path",
        ),
        ("openpgp_keys: [x]\n", "unknown field `openpgp_keys`"),
    ] {
        write_private(&f, text);
        let e = load_local(&f).unwrap_err().to_string();
        assert!(e.contains(why), "{text}: {e}");
    }
    assert_eq!(load_local(&fx.path("absent")).unwrap(), None);
}

#[test]
fn unsafe_trust_anchors_are_refused() {
    let fx = Fx::new();
    let f = fx.path("trust.yaml");
    write_private(&f, "require_signed: false\n");
    let me = std::fs::metadata(&f).unwrap().uid();
    assert!(crate::fsutil::check_private(&f, &[me]).is_ok());
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o620)).unwrap();
    let e = load_local(&f).unwrap_err().to_string();
    assert!(e.contains("writable by group or others"), "{e}");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    // owned by someone not trusted (as root: not owned by root)
    let e = crate::fsutil::check_private(&f, &[me + 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("owned by uid {me}")), "{e}");
    // a directory others can write above it
    let open = fx.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let g = open.join("trust.yaml");
    write_private(&g, "require_signed: false\n");
    let e = load_local(&g).unwrap_err().to_string();
    assert!(e.contains("every directory above"), "{e}");
}

#[test]
fn rewinds_are_refused_unless_allowed() {
    let mut fx = Fx::new();
    let a = fx.work.commit(&[("f", b"1")], None, "a");
    let b = fx.work.commit(&[("f", b"2")], None, "b");
    let repo = fx.repo();
    let mut trust = Trust {
        policy: TrustPolicy::default(),
        origin: PolicyOrigin::Default,
        local_file: fx.path("trust.yaml"),
    };
    assert_eq!(check_descent(&repo, &a, &rev(&b), &trust).unwrap(), None);
    assert_eq!(check_descent(&repo, &b, &rev(&b), &trust).unwrap(), None);
    let back = check_descent(&repo, &b, &rev(&a), &trust)
        .unwrap_err()
        .to_string();
    assert!(back.contains("does not descend"), "{back}");
    assert!(back.contains(&a) && back.contains(&b), "{back}");
    assert!(back.contains("--rollback-to"), "{back}");
    // a force push: a sibling of b
    fx.work.git(&["reset", "-q", "--hard", &a]);
    let c = fx.work.commit(&[("f", b"3")], None, "c");
    let e = check_descent(&repo, &b, &rev(&c), &trust)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&c) && e.contains(&b), "{e}");
    // last_applied no longer in the repository
    let gone = "0123456789abcdef0123456789abcdef01234567";
    let e = check_descent(&repo, gone, &rev(&c), &trust)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no longer in the repository") && e.contains(gone),
        "{e}"
    );

    trust.policy.allow_rewind = true;
    let w = check_descent(&repo, &b, &rev(&c), &trust).unwrap().unwrap();
    assert!(w.contains("allow_rewind"), "{w}");
    assert!(
        check_descent(&repo, gone, &rev(&c), &trust)
            .unwrap()
            .is_some()
    );
}

/// A chain of commits made with git2 (an empty tree each): the ids, oldest first.
fn chain(repo: &Repository, parents: &[git2::Oid], n: usize) -> Vec<git2::Oid> {
    let sig =
        git2::Signature::new("t", "t@example.org", &git2::Time::new(1_700_000_000, 0)).unwrap();
    let tree = repo
        .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
        .unwrap();
    let mut ids = Vec::new();
    let mut parents: Vec<git2::Oid> = parents.to_vec();
    for i in 0..n {
        let ps: Vec<git2::Commit> = parents
            .iter()
            .map(|p| repo.find_commit(*p).unwrap())
            .collect();
        let refs: Vec<&git2::Commit> = ps.iter().collect();
        let id = repo
            .commit(None, &sig, &sig, &format!("c{i}"), &tree, &refs)
            .unwrap();
        ids.push(id);
        parents = vec![id];
    }
    ids
}

#[test]
fn descent_is_found_near_and_far_and_across_merges() {
    let d = tempfile::tempdir().unwrap();
    let repo = Repository::init(d.path()).unwrap();
    let trust = Trust {
        policy: TrustPolicy::default(),
        origin: PolicyOrigin::Default,
        local_file: d.path().join("trust.yaml"),
    };
    let main = chain(&repo, &[], 3);
    // a side branch merged back: the last applied commit is reached through the merge's
    // second parent
    let side = chain(&repo, &[main[0]], 2);
    let merge = chain(&repo, &[main[2], side[1]], 1)[0];
    assert!(near_descendant(&repo, main[2], main[0]));
    assert!(near_descendant(&repo, merge, side[0]));
    assert!(!near_descendant(&repo, main[2], side[0]));
    // far ahead: not found nearby, still a descendant by the full test
    let far = chain(&repo, &[merge], 100);
    let tip = *far.last().unwrap();
    assert!(!near_descendant(&repo, tip, main[0]));
    let tip_rev = rev(&tip.to_string());
    for last in [main[0], side[0], merge, far[98]] {
        assert_eq!(
            check_descent(&repo, &last.to_string(), &tip_rev, &trust).unwrap(),
            None,
            "{last} is an ancestor of the tip"
        );
    }
    // a sibling is refused whether or not it is near
    let sibling = chain(&repo, &[main[1]], 1)[0];
    let e = check_descent(&repo, &sibling.to_string(), &tip_rev, &trust).unwrap_err();
    assert!(e.to_string().contains("does not descend"), "{e}");
}
