//! Test support shared by unit tests, integration tests and benchmarks: build real git
//! repositories from plain files with fixed dates, so fixtures never hold nested `.git` dirs
//! and every build of a fixture yields the same commit ids.
//!
//! Commits are written straight into the object database (blobs, trees, commit), never through
//! an index or a checkout: the work tree of the built repository stays empty. core-ops reads
//! only the object database, so that is all a fixture needs, and it keeps builds fast.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, RepositoryInitOptions, Signature, Time};

/// Why a fixture could not be built; tests unwrap it, the harness wraps it with context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A git or fixture-layout problem.
    #[error("{0}")]
    Source(String),
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The testkit's result.
pub type Result<T> = std::result::Result<T, Error>;

pub mod signing;

/// A test that needs root, the systemd test bed or the Quadlet generator and cannot have
/// it: fail with `why`, unless the contributor opted out with `CORE_OPS_SKIP_BED_TESTS=1`
/// (DEVELOPMENT.md, "Root-only tests"); then say so loudly and return `None`.
///
/// Why one function: a test that could not run must never report `ok` by accident, and the
/// opt-out must read the same in every crate's tests.
pub fn skip_or_fail<T>(why: &str) -> Option<T> {
    assert!(
        std::env::var_os("CORE_OPS_SKIP_BED_TESTS").is_some_and(|v| v == "1"),
        "{why}: run scripts/test.sh (or this test) as root, or set CORE_OPS_SKIP_BED_TESTS=1 \
         to skip the root-only tests on purpose (see DEVELOPMENT.md)"
    );
    eprintln!("\n!!!!! SKIPPING (CORE_OPS_SKIP_BED_TESTS=1): {why} !!!!!\n");
    None
}

/// Name used as author, committer and tagger of every fixture commit.
///
/// Why fixed: commit ids depend on the signature, and fixtures must hash the same everywhere.
pub const FIXTURE_NAME: &str = "core-ops fixtures";
/// E-mail used as author, committer and tagger of every fixture commit (see [`FIXTURE_NAME`]).
pub const FIXTURE_EMAIL: &str = "fixtures@core-ops.invalid";
/// Date of the first fixture commit, 2026-01-01T00:00:00Z in seconds since the epoch; each
/// further commit of one builder is one minute later.
///
/// Why fixed: the commit date is part of the commit id.
pub const FIXTURE_START: i64 = 1_767_225_600;
/// The branch every builder commits on.
pub const FIXTURE_BRANCH: &str = "main";

const MODE_FILE: i32 = 0o100644;
const MODE_EXEC: i32 = 0o100755;
const MODE_LINK: i32 = 0o120000;
const MODE_TREE: i32 = 0o040000;

/// One file-system-like node of a tree that is about to be written.
enum Node {
    Blob { data: Vec<u8>, mode: i32 },
    Dir(BTreeMap<String, Node>),
}

/// Builds a deterministic git repository, commit by commit, on branch `main`.
///
/// Why: tests and benchmarks need real repositories (refs, tags, packs) without checking
/// nested `.git` directories into this project, and with commit ids that do not change
/// between runs, machines or the clock.
pub struct RepoBuilder {
    repo: Repository,
    path: PathBuf,
    commits: i64,
}

impl std::fmt::Debug for RepoBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoBuilder")
            .field("path", &self.path)
            .field("commits", &self.commits)
            .finish()
    }
}

fn git(context: &str, e: git2::Error) -> Error {
    Error::Source(format!("testkit: {context}: {}", e.message()))
}

impl RepoBuilder {
    /// Create a new non-bare repository at `path` whose HEAD is `refs/heads/main`.
    ///
    /// Why non-bare: it is what an operator points `core-ops` at most often (a local clone).
    pub fn init(path: &Path) -> Result<RepoBuilder> {
        let mut opts = RepositoryInitOptions::new();
        opts.initial_head(FIXTURE_BRANCH).mkdir(true).mkpath(true);
        let repo = Repository::init_opts(path, &opts)
            .map_err(|e| git(&format!("init {}", path.display()), e))?;
        Ok(RepoBuilder {
            repo,
            path: path.to_path_buf(),
            commits: 0,
        })
    }

    /// Same as [`RepoBuilder::init`] but bare (no work tree at all).
    ///
    /// Why: a bare repository is what a mirror or a git server holds; the source must open both.
    pub fn init_bare(path: &Path) -> Result<RepoBuilder> {
        let mut opts = RepositoryInitOptions::new();
        opts.bare(true)
            .initial_head(FIXTURE_BRANCH)
            .mkdir(true)
            .mkpath(true);
        let repo = Repository::init_opts(path, &opts)
            .map_err(|e| git(&format!("init {}", path.display()), e))?;
        Ok(RepoBuilder {
            repo,
            path: path.to_path_buf(),
            commits: 0,
        })
    }

    /// The path the repository was created at (what to hand to `Source::open`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commit the contents of `dir` (recursively; symlinks kept as symlinks, the executable
    /// bit kept, empty directories and `.git` entries skipped) as the whole new tree of `main`.
    /// Returns the 40-hex commit id.
    ///
    /// Why the whole tree: a fixture directory is the desired state at that commit, so files
    /// missing from `dir` are deleted by the commit, exactly like a real edit would.
    pub fn commit_dir(&mut self, dir: &Path, message: &str) -> Result<String> {
        let root = read_dir_node(dir)?;
        self.commit_node(root, message)
    }

    /// Commit exactly `files` (repo-relative paths with `/`, regular non-executable files) as
    /// the whole new tree of `main`. Returns the 40-hex commit id.
    ///
    /// Why: most unit tests need three small files, not a fixture directory.
    pub fn commit_files(&mut self, files: &[(&str, &[u8])], message: &str) -> Result<String> {
        let mut root = BTreeMap::new();
        for (path, data) in files {
            insert_path(&mut root, path, data.to_vec(), MODE_FILE)?;
        }
        self.commit_node(Node::Dir(root), message)
    }

    /// [`RepoBuilder::commit_files`] of files built at run time (owned names and contents).
    pub fn commit_owned(&mut self, files: &[(String, Vec<u8>)], message: &str) -> Result<String> {
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_slice()))
            .collect();
        self.commit_files(&refs, message)
    }

    /// Point a lightweight tag `name` at the current `main` commit (replacing an existing tag).
    ///
    /// Why: operators pin hosts to tags; lightweight and annotated tags must both resolve.
    pub fn tag(&mut self, name: &str) -> Result<()> {
        let head = self.head_object()?;
        self.repo
            .tag_lightweight(name, &head, true)
            .map_err(|e| git(&format!("tag {name}"), e))?;
        Ok(())
    }

    /// Point an annotated tag `name` (fixed tagger and date, so its id is deterministic) at the
    /// current `main` commit, replacing an existing tag.
    ///
    /// Why: an annotated tag is a separate object that must be peeled to reach the commit.
    pub fn tag_annotated(&mut self, name: &str, message: &str) -> Result<()> {
        let head = self.head_object()?;
        let sig = self.signature(self.commits.saturating_sub(1))?;
        self.repo
            .tag(name, &head, &sig, message, true)
            .map_err(|e| git(&format!("tag {name}"), e))?;
        Ok(())
    }

    /// Create (or move) branch `name` to the current `main` commit.
    ///
    /// Why: resolution must find branches other than the default one.
    pub fn branch(&mut self, name: &str) -> Result<()> {
        let head = self.head_object()?;
        let commit = head.peel_to_commit().map_err(|e| git("peel HEAD", e))?;
        self.repo
            .branch(name, &commit, true)
            .map_err(|e| git(&format!("branch {name}"), e))?;
        Ok(())
    }

    /// The current `main` commit id (40 hex).
    pub fn head(&self) -> Result<String> {
        Ok(self.head_object()?.id().to_string())
    }

    fn head_object(&self) -> Result<git2::Object<'_>> {
        self.repo
            .revparse_single(&format!("refs/heads/{FIXTURE_BRANCH}"))
            .map_err(|e| git("no commit on main yet", e))
    }

    fn signature(&self, n: i64) -> Result<Signature<'static>> {
        Signature::new(
            FIXTURE_NAME,
            FIXTURE_EMAIL,
            &Time::new(FIXTURE_START + 60 * n, 0),
        )
        .map_err(|e| git("signature", e))
    }

    /// Commit `files` plus one file `data` at `raw_path` (path components as raw bytes, written
    /// without any name check: `..`, `.git`, `a/b`, an empty name) as the whole new tree of
    /// `main`. Returns the 40-hex commit id.
    ///
    /// Why: `git add` and libgit2's tree builder refuse such names, but git plumbing
    /// (`git mktree`, `hash-object --literally`) writes them; the source must refuse a tree an
    /// attacker crafted that way, and its tests need one.
    pub fn commit_crafted(
        &mut self,
        files: &[(&str, &[u8])],
        raw_path: &[&[u8]],
        data: &[u8],
        message: &str,
    ) -> Result<String> {
        let mut root = BTreeMap::new();
        for (path, content) in files {
            let parts: Vec<&[u8]> = path.split('/').map(str::as_bytes).collect();
            raw_insert(&mut root, &parts, content);
        }
        raw_insert(&mut root, raw_path, data);
        let tree_id = write_raw_dir(&self.repo, &root)?;
        self.commit_tree(tree_id, message)
    }

    fn commit_node(&mut self, root: Node, message: &str) -> Result<String> {
        let tree_id = write_node(&self.repo, &root)?;
        self.commit_tree(tree_id, message)
    }

    fn commit_tree(&mut self, tree_id: Oid, message: &str) -> Result<String> {
        let tree = self
            .repo
            .find_tree(tree_id)
            .map_err(|e| git("find tree", e))?;
        let sig = self.signature(self.commits)?;
        let parent = match self
            .repo
            .find_reference(&format!("refs/heads/{FIXTURE_BRANCH}"))
        {
            Ok(r) => Some(r.peel_to_commit().map_err(|e| git("peel main", e))?),
            Err(_) => None,
        };
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let id = self
            .repo
            .commit(
                Some(&format!("refs/heads/{FIXTURE_BRANCH}")),
                &sig,
                &sig,
                message,
                &tree,
                &parents,
            )
            .map_err(|e| git("commit", e))?;
        self.commits += 1;
        Ok(id.to_string())
    }
}

fn write_node(repo: &Repository, node: &Node) -> Result<Oid> {
    match node {
        Node::Blob { data, .. } => repo.blob(data).map_err(|e| git("write blob", e)),
        Node::Dir(children) => {
            let mut tb = repo.treebuilder(None).map_err(|e| git("treebuilder", e))?;
            for (name, child) in children {
                let (id, mode) = match child {
                    Node::Blob { mode, .. } => (write_node(repo, child)?, *mode),
                    Node::Dir(c) if c.is_empty() => continue,
                    Node::Dir(_) => (write_node(repo, child)?, MODE_TREE),
                };
                tb.insert(name.as_str(), id, mode)
                    .map_err(|e| git(&format!("insert {name}"), e))?;
            }
            tb.write().map_err(|e| git("write tree", e))
        }
    }
}

/// A tree with names as raw bytes.
enum Raw {
    File(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Raw>),
}

fn raw_insert(dir: &mut BTreeMap<Vec<u8>, Raw>, parts: &[&[u8]], data: &[u8]) {
    let Some((first, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        dir.insert(first.to_vec(), Raw::File(data.to_vec()));
        return;
    }
    let entry = dir
        .entry(first.to_vec())
        .or_insert_with(|| Raw::Dir(BTreeMap::new()));
    if let Raw::File(_) = entry {
        *entry = Raw::Dir(BTreeMap::new());
    }
    if let Raw::Dir(sub) = entry {
        raw_insert(sub, rest, data);
    }
}

/// Write a tree object byte for byte (`<mode> <name>\0<id>` per entry, in git's order), so no
/// name check of libgit2 applies.
fn write_raw_dir(repo: &Repository, dir: &BTreeMap<Vec<u8>, Raw>) -> Result<Oid> {
    // (sort key, serialized entry); git sorts a tree's names as if directories ended in '/'
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (name, node) in dir {
        let (mode, id, key): (&[u8], Oid, Vec<u8>) = match node {
            Raw::Dir(sub) => (
                b"40000",
                write_raw_dir(repo, sub)?,
                [name, &b"/"[..]].concat(),
            ),
            Raw::File(data) => (
                b"100644",
                repo.blob(data).map_err(|e| git("write blob", e))?,
                name.clone(),
            ),
        };
        let entry = [mode, b" ", name, b"\0", id.as_bytes()].concat();
        entries.push((key, entry));
    }
    entries.sort();
    let buf: Vec<u8> = entries.into_iter().flat_map(|(_, e)| e).collect();
    let odb = repo.odb().map_err(|e| git("open object database", e))?;
    odb.write(git2::ObjectType::Tree, &buf)
        .map_err(|e| git("write raw tree", e))
}

fn insert_path(
    root: &mut BTreeMap<String, Node>,
    path: &str,
    data: Vec<u8>,
    mode: i32,
) -> Result<()> {
    let bad = || Error::Source(format!("testkit: bad fixture path '{path}'"));
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || *p == ".git")
    {
        return Err(bad());
    }
    let (last, dirs) = parts.split_last().ok_or_else(bad)?;
    let mut cur = root;
    for d in dirs {
        let entry = cur
            .entry((*d).to_string())
            .or_insert_with(|| Node::Dir(BTreeMap::new()));
        cur = match entry {
            Node::Dir(c) => c,
            Node::Blob { .. } => return Err(bad()),
        };
    }
    if cur.contains_key(*last) {
        return Err(bad());
    }
    cur.insert((*last).to_string(), Node::Blob { data, mode });
    Ok(())
}

fn read_dir_node(dir: &Path) -> Result<Node> {
    let ctx = |what: &str, p: &Path| format!("testkit: {what} {}", p.display());
    let mut children = BTreeMap::new();
    let rd = fs::read_dir(dir).map_err(|e| Error::io(ctx("read dir", dir), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(ctx("read dir", dir), e))?;
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|n| {
            Error::Source(format!(
                "testkit: non-UTF-8 file name {n:?} in {}",
                dir.display()
            ))
        })?;
        if name == ".git" {
            continue;
        }
        let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(ctx("stat", &path), e))?;
        let ft = meta.file_type();
        let node = if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| Error::io(ctx("readlink", &path), e))?;
            Node::Blob {
                data: target.as_os_str().as_encoded_bytes().to_vec(),
                mode: MODE_LINK,
            }
        } else if ft.is_dir() {
            read_dir_node(&path)?
        } else if ft.is_file() {
            let data = fs::read(&path).map_err(|e| Error::io(ctx("read", &path), e))?;
            let exec = meta.permissions().mode() & 0o111 != 0;
            Node::Blob {
                data,
                mode: if exec { MODE_EXEC } else { MODE_FILE },
            }
        } else {
            return Err(Error::Source(format!(
                "testkit: {} is neither a file, a directory nor a symlink",
                path.display()
            )));
        };
        children.insert(name, node);
    }
    Ok(Node::Dir(children))
}

/// A `.tar.gz` of regular files `(path, content, mode)`, built in memory with a fixed mtime.
///
/// Why: runtime tests build their artifacts at test time (no binaries in the repository),
/// byte-identical on every run so their digests can be pinned.
pub fn targz(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(FIXTURE_START as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).expect("tar entry");
    }
    b.into_inner()
        .expect("tar finishes")
        .finish()
        .expect("gzip finishes")
}

/// Copy the directory tree `src` into `dst` (created if missing): files with their permission
/// bits, symlinks as symlinks (targets unchanged), directories recursively.
///
/// Why: tests start from a checked-in fixture directory, change a file in a scratch copy and
/// commit the copy, without ever touching the fixture.
pub fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst).map_err(|e| Error::io(format!("create {}", dst.display()), e))?;
    let rd = fs::read_dir(src).map_err(|e| Error::io(format!("read dir {}", src.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(format!("read dir {}", src.display()), e))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = fs::symlink_metadata(&from)
            .map_err(|e| Error::io(format!("stat {}", from.display()), e))?
            .file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&from)
                .map_err(|e| Error::io(format!("readlink {}", from.display()), e))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| Error::io(format!("symlink {}", to.display()), e))?;
        } else if ft.is_dir() {
            copy_dir(&from, &to)?;
        } else {
            fs::copy(&from, &to).map_err(|e| Error::io(format!("copy {}", from.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(root: &Path) -> (String, String) {
        let mut b = RepoBuilder::init(root).unwrap();
        let c1 = b
            .commit_files(&[("a.txt", b"a\n"), ("d/b.txt", b"b\n")], "one")
            .unwrap();
        b.tag("v1").unwrap();
        let c2 = b.commit_files(&[("a.txt", b"changed\n")], "two").unwrap();
        b.tag_annotated("va2", "second").unwrap();
        (c1, c2)
    }

    #[test]
    fn same_inputs_same_commit_ids() {
        let t = tempfile::tempdir().unwrap();
        let first = build(&t.path().join("one"));
        let second = build(&t.path().join("two"));
        assert_eq!(first, second);
        assert_eq!(first.0.len(), 40);
        assert_ne!(first.0, first.1);
    }

    #[test]
    fn commits_have_fixed_author_and_dates() {
        let t = tempfile::tempdir().unwrap();
        build(t.path());
        let repo = Repository::open(t.path()).unwrap();
        let head = repo
            .revparse_single("main")
            .unwrap()
            .peel_to_commit()
            .unwrap();
        assert_eq!(head.author().name().unwrap(), FIXTURE_NAME);
        assert_eq!(head.author().email().unwrap(), FIXTURE_EMAIL);
        assert_eq!(head.time().seconds(), FIXTURE_START + 60);
        assert_eq!(head.parent(0).unwrap().time().seconds(), FIXTURE_START);
        assert_eq!(repo.head().unwrap().name().unwrap(), "refs/heads/main");
        // commit_files replaces the whole tree
        assert!(head.tree().unwrap().get_path(Path::new("d/b.txt")).is_err());
    }

    #[test]
    fn commit_dir_keeps_symlinks_exec_bit_and_skips_dot_git() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::create_dir_all(src.join(".git")).unwrap();
        fs::create_dir_all(src.join("empty")).unwrap();
        fs::write(src.join(".git/HEAD"), "x").unwrap();
        fs::write(src.join("bin/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("bin/run", src.join("link")).unwrap();

        let copy = t.path().join("copy");
        copy_dir(&src, &copy).unwrap();
        let mut b = RepoBuilder::init(&t.path().join("repo")).unwrap();
        let id = b.commit_dir(&copy, "dir").unwrap();
        let repo = Repository::open(t.path().join("repo")).unwrap();
        let tree = repo
            .find_commit(Oid::from_str(&id).unwrap())
            .unwrap()
            .tree()
            .unwrap();
        let names: Vec<String> = tree.iter().map(|e| e.name().unwrap().to_string()).collect();
        assert_eq!(names, ["bin", "link"]);
        let run = tree.get_path(Path::new("bin/run")).unwrap();
        assert_eq!(run.filemode(), MODE_EXEC);
        let link = tree.get_name("link").unwrap();
        assert_eq!(link.filemode(), MODE_LINK);
        assert_eq!(repo.find_blob(link.id()).unwrap().content(), b"bin/run");
    }

    #[test]
    fn bad_paths_are_rejected() {
        let t = tempfile::tempdir().unwrap();
        let mut b = RepoBuilder::init(t.path()).unwrap();
        for p in ["/abs", "a/../b", "a//b", ".git/x", ""] {
            assert!(b.commit_files(&[(p, b"x")], "bad").is_err(), "{p}");
        }
        assert!(
            b.commit_files(&[("a", b"x"), ("a/b", b"y")], "clash")
                .is_err()
        );
    }
}
