//! Path escapes of issue 14, as real attacks through the real `core-ops` binary against the
//! shared test bed: a crafted tree with `..`, temp-file names planted by an unprivileged user
//! who owns a managed file's directory, and a symlinked parent directory.
//!
//! Host files go to the test's own roots (`<scratch>/etc`, `<scratch>/srv`), never the real
//! `/etc`. These tests need root (to plant as another user, to own files as root) and the
//! bed: not root is a failure, not a skip.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{stderr, stdout, tree};
use common::world::{World, action, world};

/// The world of one test, or a failure saying why there is none.
fn world_or_fail(test: &str) -> World {
    world(test).unwrap_or_else(|| {
        panic!(
            "escapes_bed needs root (it plants files as another user) and the systemd test \
             bed; run it as root: scripts/test.sh --test escapes_bed"
        )
    })
}

/// `<path>` relative to `/`, as repository path components under `services/<svc>/files/`.
fn files_path(svc: &str, target: &Path) -> String {
    format!(
        "services/{svc}/files/{}",
        target.strip_prefix("/").unwrap().display()
    )
}

/// `nobody`'s uid and gid (a user with no rights of its own on this machine).
fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    (u.uid.as_raw(), u.gid.as_raw())
}

#[test]
fn crafted_tree_with_dot_dot_is_refused_and_writes_nothing() {
    let w = world_or_fail("crafted");
    let mut repo = core_ops_testkit::RepoBuilder::init(&w.s.path("crafted-repo")).unwrap();
    let etc = w.s.path("etc");
    let victim = w.s.path("victim");
    // services/x/files/<scratch>/etc/../victim/authorized_keys
    let mut raw: Vec<Vec<u8>> = vec![b"services".to_vec(), b"x".to_vec(), b"files".to_vec()];
    raw.extend(
        etc.strip_prefix("/")
            .unwrap()
            .iter()
            .map(|c| c.as_encoded_bytes().to_vec()),
    );
    raw.extend([
        b"..".to_vec(),
        b"victim".to_vec(),
        b"authorized_keys".to_vec(),
    ]);
    let raw: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
    let sha = repo
        .commit_crafted(
            &[("hosts/h/host.yaml", b"services: [x]\n")],
            &raw,
            b"ssh-ed25519 AAAA attacker\n",
            "crafted",
        )
        .unwrap();
    let repo_arg = w.s.path("crafted-repo").display().to_string();
    let named = format!("{}/..: tree entry name is", files_path("x", &etc));

    let o =
        w.s.run(&["plan", "--rev", &sha, "--repo", &repo_arg, "--host", "h"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains(&named), "{}", stderr(&o));

    let o =
        w.s.run(&["apply", "--rev", &sha, "--repo", &repo_arg, "--host", "h"]);
    assert_ne!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains(&named), "{}", stderr(&o));
    assert!(!victim.exists(), "apply wrote {:?}", tree(&victim));
    assert!(tree(&etc).is_empty(), "apply wrote {:?}", tree(&etc));
}

#[test]
fn planted_temp_names_of_an_unprivileged_user_are_never_followed() {
    let mut w = world_or_fail("planted");
    let (uid, gid) = nobody();
    // nobody must reach the directory it owns
    std::fs::set_permissions(w.s.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = w.s.path("srv/app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(w.s.path("srv"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    // what root owns and the attacker wants overwritten and chmodded
    let victim = w.s.path("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();

    let target = dir.join("app.env");
    let files = [
        (
            "hosts/h/host.yaml".to_string(),
            "services: [app]\n".to_string(),
        ),
        (files_path("app", &target), "A=1\n".to_string()),
        (
            "services/app/service.yaml".to_string(),
            format!(
                "files:\n  {}:\n    mode: \"0640\"\n    owner: root\n    group: root\n",
                target.display()
            ),
        ),
    ];
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_bytes()))
        .collect();
    let v1 = w.repo.commit_files(&refs, "app").unwrap();

    // every name the pid-only scheme would use in the next 30000 pids, as nobody
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let script = r#"my ($victim, $dir, $lo, $hi) = @ARGV;
        for my $pid ($lo .. $hi) {
            symlink($victim, "$dir/.core-ops-tmp-app.env-$pid") or die "symlink: $!";
        }"#;
    let planted = std::os::unix::process::CommandExt::gid(
        std::os::unix::process::CommandExt::uid(Command::new("perl").arg("-e"), uid),
        gid,
    )
    .arg(script)
    .arg(&victim)
    .arg(&dir)
    .arg((last + 1).to_string())
    .arg((last + 30_000).to_string())
    .output()
    .expect("run perl as nobody");
    assert!(planted.status.success(), "{}", stderr(&planted));
    let link = dir.join(format!(".core-ops-tmp-app.env-{}", last + 100));
    assert_eq!(std::fs::symlink_metadata(&link).unwrap().uid(), uid);

    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&victim).unwrap()),
        "precious\n",
        "victim overwritten"
    );
    let vm = std::fs::metadata(&victim).unwrap();
    assert_eq!(vm.mode() & 0o7777, 0o600, "victim mode changed");
    assert_eq!((vm.uid(), vm.gid()), (0, 0));
    assert_eq!(code, 0, "{r:#}");
    let md = std::fs::symlink_metadata(&target).unwrap();
    assert!(
        md.file_type().is_file(),
        "{} is not a regular file",
        target.display()
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"A=1\n");
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!((md.uid(), md.gid()), (0, 0));
    // what core-ops leaves behind in the attacker's directory is the attacker's own symlinks
    let ours: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::symlink_metadata(p).unwrap().uid() != uid)
        .collect();
    assert_eq!(ours, vec![target.clone()]);
    w.teardown();
    assert!(!target.exists());
}

#[test]
fn symlinked_parent_directory_is_refused_and_the_victim_untouched() {
    let mut w = world_or_fail("symparent");
    let victim = w.s.path("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::create_dir_all(w.s.path("srv/app")).unwrap();
    std::os::unix::fs::symlink(&victim, w.s.path("srv/app/conf")).unwrap();
    let target = w.s.path("srv/app/conf/app.env");
    let id = format!("file:{}", target.display());
    let files = [
        (
            "hosts/h/host.yaml".to_string(),
            "services: [app]\n".to_string(),
        ),
        (files_path("app", &target), "A=1\n".to_string()),
    ];
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_bytes()))
        .collect();
    let v1 = w.repo.commit_files(&refs, "app").unwrap();
    let why = format!(
        "component {} is a symlink; core-ops does not follow symlinks beneath {}",
        w.s.path("srv/app/conf").display(),
        w.s.path("srv").display()
    );

    let plan = w.plan(&v1);
    let a = action(&plan, &id);
    assert_eq!(a["action"], "blocked", "{a:#}");
    assert!(a["reason"].as_str().unwrap().contains(&why), "{a:#}");

    let o = w.run(&["apply", "--rev", &v1]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(out.contains(&why), "{out}");
    assert!(tree(&victim).is_empty(), "wrote {:?}", tree(&victim));
    assert!(
        std::fs::symlink_metadata(w.s.path("srv/app/conf"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // once the link is gone, the same revision applies
    std::fs::remove_file(w.s.path("srv/app/conf")).unwrap();
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(std::fs::read(&target).unwrap(), b"A=1\n");
    w.teardown();
    assert!(tree(&victim).is_empty());
}
