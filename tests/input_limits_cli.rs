//! Bounded reading of the desired-state repository through the real binary (issue 14,
//! item 6): a git bomb, a 40,000-deep tree and oversized files are input errors that name the
//! path and the cap, exit 1 quickly and change nothing; what the host does not select is never
//! read, so it cannot count against the caps.
//!
//! The crafted repositories are built with git plumbing (`git hash-object -w`, `git mktree`,
//! `git commit-tree`), as an attacker would; the 40,000-deep chain is written with git2's tree
//! builder in-process, because 40,000 `git mktree` processes take minutes.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cli::{Scratch, stderr, stdout};

/// The unit of the selected service `web`.
const UNIT: &[u8] = b"[Unit]\nDescription=web\n\n[Service]\nExecStart=/bin/true\n";

/// Run git in `repo`, feeding `input`; its trimmed stdout.
fn git(repo: &Path, args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run git");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to git");
    let out = child.wait_with_output().expect("wait for git");
    assert!(out.status.success(), "git {args:?} failed");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// An empty repository under the scratch root.
fn init(s: &Scratch) -> std::path::PathBuf {
    let repo = s.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"], b"");
    repo
}

fn blob(repo: &Path, data: &[u8]) -> String {
    git(repo, &["hash-object", "-w", "--stdin"], data)
}

/// `git mktree` of (mode, name, id) entries.
fn mktree(repo: &Path, entries: &[(&str, &str, &str)]) -> String {
    let mut text = String::new();
    for (mode, name, id) in entries {
        let kind = if *mode == "040000" { "tree" } else { "blob" };
        text.push_str(&format!("{mode} {kind} {id}\t{name}\n"));
    }
    git(repo, &["mktree"], text.as_bytes())
}

/// A tree of `levels` levels, each with `fanout` entries all naming the same subtree, over
/// one file: `levels + 2` objects that expand to `fanout^levels` files.
fn git_bomb(repo: &Path, levels: usize, fanout: usize) -> String {
    let leaf = blob(repo, b"x\n");
    let mut t = mktree(repo, &[("100644", "f", &leaf)]);
    for _ in 0..levels {
        let names: Vec<String> = (0..fanout).map(|i| format!("d{i}")).collect();
        let entries: Vec<(&str, &str, &str)> = names
            .iter()
            .map(|n| ("040000", n.as_str(), t.as_str()))
            .collect();
        t = mktree(repo, &entries);
    }
    t
}

/// Commit (branch `main`) a tree that selects service `web` for host `h1`.
/// `web_files` is the tree put at `services/web/files` (if any), `extra_services` are more
/// service directories by name, `extra_root` more root entries (mode, name, id).
fn crafted_repo(
    repo: &Path,
    web_files: Option<&str>,
    extra_services: &[(&str, &str)],
    extra_root: &[(&str, &str, &str)],
) {
    let unit = blob(repo, UNIT);
    let host = blob(repo, b"services: [web]\n");
    let mut web: Vec<(&str, &str, &str)> = vec![("100644", "web.service", &unit)];
    if let Some(f) = web_files {
        web.push(("040000", "files", f));
    }
    let web = mktree(repo, &web);
    let mut services: Vec<(&str, &str, &str)> = vec![("040000", "web", &web)];
    for (name, id) in extra_services {
        services.push(("040000", name, id));
    }
    let services = mktree(repo, &services);
    let h1 = mktree(repo, &[("100644", "host.yaml", &host)]);
    let hosts = mktree(repo, &[("040000", "h1", &h1)]);
    let mut root: Vec<(&str, &str, &str)> = vec![
        ("040000", "hosts", &hosts),
        ("040000", "services", &services),
    ];
    root.extend_from_slice(extra_root);
    let root = mktree(repo, &root);
    let commit = git(repo, &["commit-tree", &root, "-m", "crafted"], b"");
    git(repo, &["update-ref", "refs/heads/main", &commit], b"");
}

/// The tree of a service's `files/` holding the host file `<etc>/<file>` with `data`, where
/// `<etc>` is the scratch root's `etc/` (so the target is inside the allowed roots).
fn files_tree(s: &Scratch, repo: &Path, file: &str, data: &[u8]) -> String {
    let content = blob(repo, data);
    let mut t = mktree(repo, &[("100644", file, &content)]);
    let etc = s.path("etc");
    let parts: Vec<&str> = etc
        .strip_prefix("/")
        .unwrap()
        .to_str()
        .unwrap()
        .split('/')
        .collect();
    for p in parts.iter().rev() {
        t = mktree(repo, &[("040000", p, &t)]);
    }
    t
}

/// The repository path of host file `<etc>/<file>` of service `svc`.
fn files_path(s: &Scratch, svc: &str, file: &str) -> String {
    format!(
        "services/{svc}/files/{}/{file}",
        s.path("etc").strip_prefix("/").unwrap().display()
    )
}

/// Run `core-ops` like `Scratch::run_env`, but kill it after `deadline`: before bounded
/// reading, a git bomb ran for minutes and took gigabytes.
fn run_within(s: &Scratch, args: &[&str], extra: &[(&str, &str)], deadline: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_core-ops"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CORE_OPS_") || k == "JOURNAL_STREAM" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run core-ops");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > deadline {
            child.kill().ok();
            let out = child.wait_with_output().expect("output");
            panic!(
                "core-ops {args:?} still running after {deadline:?}; stderr: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn plan(s: &Scratch, repo: &Path, extra: &[(&str, &str)]) -> Output {
    let repo = repo.display().to_string();
    run_within(
        s,
        &["plan", "--repo", &repo, "--rev", "main", "--host", "h1"],
        extra,
        Duration::from_secs(60),
    )
}

/// An input error: exit 1 (not a signal: no stack overflow), the message names `path` and
/// `cap`, and nothing was written to the host.
fn assert_refused(s: &Scratch, out: &Output, path: &str, cap: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid desired state: "), "{err}");
    assert!(err.contains(path), "names {path}: {err}");
    assert!(err.contains(cap), "names {cap}: {err}");
    assert!(stdout(out).is_empty(), "{}", stdout(out));
    for dir in ["units", "quadlet", "etc", "srv"] {
        assert!(!s.path(dir).exists(), "{dir} was written");
    }
}

#[test]
fn git_bomb_under_a_selected_service_stops_at_the_entry_cap() {
    let s = Scratch::new();
    let repo = init(&s);
    // 13 objects, 10^11 files
    let bomb = git_bomb(&repo, 11, 10);
    crafted_repo(&repo, Some(&bomb), &[], &[]);
    let started = Instant::now();
    let out = plan(&s, &repo, &[]);
    let took = started.elapsed();
    assert_refused(
        &s,
        &out,
        "services/web/files/d",
        "more than 100000 tree entries read from the revision (CORE_OPS_MAX_TREE_ENTRIES",
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");

    // the cap is configurable, by flag and environment, and names the configured value
    let out = plan(&s, &repo, &[("CORE_OPS_MAX_TREE_ENTRIES", "500")]);
    assert_refused(
        &s,
        &out,
        "services/web/files/d",
        "more than 500 tree entries",
    );
}

#[test]
fn deep_tree_is_an_input_error_not_a_stack_overflow() {
    let s = Scratch::new();
    let repo = init(&s);
    let chain = {
        let g = git2::Repository::open(&repo).unwrap();
        let leaf = g.blob(b"x\n").unwrap();
        let mut b = g.treebuilder(None).unwrap();
        b.insert("f", leaf, 0o100644).unwrap();
        let mut t = b.write().unwrap();
        for _ in 0..40_000 {
            let mut b = g.treebuilder(None).unwrap();
            b.insert("d", t, 0o040000).unwrap();
            t = b.write().unwrap();
        }
        t.to_string()
    };
    crafted_repo(&repo, Some(&chain), &[], &[]);
    let out = plan(&s, &repo, &[]);
    assert_refused(
        &s,
        &out,
        "services/web/files/d/d/d/",
        "path is deeper than 64 levels (CORE_OPS_MAX_TREE_DEPTH)",
    );
    // with the deepest cap allowed, the walk is still iterative and still refuses
    let out = plan(&s, &repo, &[("CORE_OPS_MAX_TREE_DEPTH", "4096")]);
    assert_refused(
        &s,
        &out,
        "services/web/files/d/d/d/",
        "deeper than 4096 levels",
    );
}

#[test]
fn file_over_the_size_cap_is_refused_by_name_before_it_is_read() {
    let s = Scratch::new();
    let repo = init(&s);
    let big = vec![b'a'; 2 << 20];
    let files = files_tree(&s, &repo, "big.conf", &big);
    crafted_repo(&repo, Some(&files), &[], &[]);
    let path = files_path(&s, "web", "big.conf");

    let out = plan(&s, &repo, &[("CORE_OPS_MAX_FILE_BYTES", "1048576")]);
    assert_refused(
        &s,
        &out,
        &path,
        "object is 2097152 bytes, more than the 1048576 bytes one file or tree may have \
         (CORE_OPS_MAX_FILE_BYTES)",
    );
    // the total cap counts content read
    let out = plan(&s, &repo, &[("CORE_OPS_MAX_TREE_BYTES", "1048576")]);
    assert_refused(&s, &out, &path, "(CORE_OPS_MAX_TREE_BYTES)");
    // the flag does the same as the environment
    let r = repo.display().to_string();
    let out = run_within(
        &s,
        &[
            "plan",
            "--repo",
            &r,
            "--rev",
            "main",
            "--host",
            "h1",
            "--max-file-bytes",
            "1048576",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_refused(&s, &out, &path, "(CORE_OPS_MAX_FILE_BYTES)");
    // within the default caps the same file plans
    let out = plan(&s, &repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn what_the_host_does_not_select_is_never_read() {
    let s = Scratch::new();
    let repo = init(&s);
    // an unselected service with a huge file, another that is a git bomb, a bomb at the root,
    // and a deep chain: none of it is the host's
    let huge = vec![b'z'; 3 << 20];
    let other_files = files_tree(&s, &repo, "huge", &huge);
    let other_unit = blob(&repo, UNIT);
    let other = mktree(
        &repo,
        &[
            ("100644", "other.service", &other_unit),
            ("040000", "files", &other_files),
        ],
    );
    let bomb = git_bomb(&repo, 11, 10);
    let deep = {
        let g = git2::Repository::open(&repo).unwrap();
        let leaf = g.blob(b"x\n").unwrap();
        let mut b = g.treebuilder(None).unwrap();
        b.insert("f", leaf, 0o100644).unwrap();
        let mut t = b.write().unwrap();
        for _ in 0..200 {
            let mut b = g.treebuilder(None).unwrap();
            b.insert("d", t, 0o040000).unwrap();
            t = b.write().unwrap();
        }
        t.to_string()
    };
    crafted_repo(
        &repo,
        None,
        &[("other", &other), ("bombed", &bomb)],
        &[("040000", "junk", &bomb), ("040000", "deep", &deep)],
    );
    let started = Instant::now();
    let out = plan(
        &s,
        &repo,
        &[
            ("CORE_OPS_MAX_FILE_BYTES", "1048576"),
            ("CORE_OPS_MAX_TREE_BYTES", "1048576"),
            ("CORE_OPS_MAX_TREE_ENTRIES", "100"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("web.service"), "{}", stdout(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
