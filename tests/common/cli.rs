//! Run the real `core-ops` binary in a scratch root: its own state dir, unit dir, Quadlet dir
//! and host-file roots, and a desired-state repository built from plain files with fixed
//! dates (so commit ids are the same on every machine).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use core_ops_testkit::{RepoBuilder, copy_dir};

/// A scratch root for one test.
pub struct Scratch {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// Extra environment for every call.
    pub env: Vec<(String, String)>,
}

impl Scratch {
    /// A new root with `units/`, `quadlet/`, `state/` and the host-file roots `etc/`, `srv/`.
    pub fn new() -> Scratch {
        Self::in_dir(tempfile::tempdir().expect("tempdir"))
    }

    /// A root inside a given temp dir (e.g. under the test bed's shared directory).
    pub fn in_dir(dir: tempfile::TempDir) -> Scratch {
        let root = dir.path().to_path_buf();
        let env = vec![
            (
                "CORE_OPS_STATE_DIR".into(),
                root.join("state").display().to_string(),
            ),
            (
                "CORE_OPS_SYSTEMD_UNIT_DIR".into(),
                root.join("units").display().to_string(),
            ),
            (
                "CORE_OPS_QUADLET_DIR".into(),
                root.join("quadlet").display().to_string(),
            ),
            // the same plan on every machine, with or without podman installed; tests of the
            // validation itself set a generator
            ("CORE_OPS_QUADLET_GENERATOR".into(), "none".into()),
            (
                "CORE_OPS_HOST_FILE_ROOTS".into(),
                format!(
                    "{}:{}",
                    root.join("etc").display(),
                    root.join("srv").display()
                ),
            ),
            (
                "CORE_OPS_METRICS_FILE".into(),
                root.join("metrics/core-ops.prom").display().to_string(),
            ),
            // never the machine's own /etc/core-ops/trust.yaml; absent unless a test writes it
            (
                "CORE_OPS_TRUST_FILE".into(),
                root.join("trust.yaml").display().to_string(),
            ),
        ];
        Scratch { dir, env }
    }

    /// Root path.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Path under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Run core-ops with the scratch environment (and no CORE_OPS_* from the caller).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// Run with extra environment.
    pub fn run_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_core-ops"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CORE_OPS_") || k == "JOURNAL_STREAM" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.args(args).output().expect("run core-ops")
    }
}

/// Build a git repository at `dest` whose commits are the given fixture directories in order
/// (each replaces the whole tree); returns the commit ids. `tags[i]` tags commit i.
pub fn repo_from_dirs(dest: &Path, dirs: &[&Path], tags: &[&str]) -> Vec<String> {
    let mut b = RepoBuilder::init(dest).expect("init repo");
    let mut shas = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        shas.push(
            b.commit_dir(d, &format!("revision {}", i + 1))
                .expect("commit"),
        );
        if let Some(t) = tags.get(i) {
            b.tag(t).expect("tag");
        }
    }
    shas
}

/// The example repository of `fixtures/example` as a one-commit repo tagged `v1`, with the
/// host-file targets moved under the scratch root's `etc/` (so tests never write /etc).
pub fn example_repo(s: &Scratch) -> (PathBuf, String) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example");
    let work = s.path("example-src");
    copy_dir(&src, &work).expect("copy fixture");
    relocate_host_files(&work, &s.path("etc"));
    let repo = s.path("repo");
    let shas = repo_from_dirs(&repo, &[&work], &["v1"]);
    (repo, shas[0].clone())
}

/// Move every `services/*/files/etc/...` to `services/*/files/<etc_root>/...` and rewrite
/// the absolute paths that mention `/etc/` in units and service.yaml accordingly.
pub fn relocate_host_files(tree: &Path, etc_root: &Path) {
    let services = tree.join("services");
    let Ok(rd) = std::fs::read_dir(&services) else {
        return;
    };
    for svc in rd.flatten() {
        let files_etc = svc.path().join("files/etc");
        if files_etc.is_dir() {
            let target = svc
                .path()
                .join("files")
                .join(etc_root.strip_prefix("/").unwrap());
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::rename(&files_etc, &target).unwrap();
        }
        for entry in walk(&svc.path()) {
            let name = entry.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".service") || name == "service.yaml" || name.ends_with(".conf") {
                let text = std::fs::read_to_string(&entry).unwrap();
                let new = text.replace("/etc/web/", &format!("{}/web/", etc_root.display()));
                std::fs::write(&entry, new).unwrap();
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Every file under a directory, relative and sorted (to prove "nothing changed").
pub fn tree(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}
