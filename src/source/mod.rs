//! Source: open (or mirror) the desired-state repository with git2, resolve the requested ref
//! to an immutable commit, and read every file straight from that commit's tree.
//!
//! Why no working tree: reading from the object database is atomic per commit, needs no
//! checkout on the host, and a half-updated clone can never be rendered.
//!
//! Two kinds of location:
//! - a local path (work tree or bare repository) is opened in place and only read;
//! - a URL (`file://`, `https://`, `ssh://` or scp-like `[user@]host:path`, `git://`) is
//!   fetched into a bare mirror `<state_dir>/mirrors/<sha256(url)[..16]>.git`, with the
//!   refspecs `+refs/heads/*:refs/heads/*` and `+refs/tags/*:refs/tags/*` (pruned), so names
//!   resolve in the mirror exactly as in the source. `file://` is fetched in process by
//!   libgit2; remote URLs by the `git` program ([`remote`]), so a run that talks to no remote
//!   pays no TLS or SSH set-up. Credentials come from the local credentials directory
//!   ([`credentials`]), never from the URL; how each fetch went is kept in
//!   `<state_dir>/fetch.json` ([`fetch_state`]).
//!
//! Callers hold the state-dir lock, so one process at a time touches a mirror.

pub mod credentials;
pub mod fetch_state;
pub mod remote;

pub use remote::RemoteOptions;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use git2::{
    AutotagOption, ErrorCode, FetchOptions, FetchPrune, ObjectType, Oid, Repository,
    RepositoryOpenFlags,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, InputError, Location, Result};

/// Refspecs fetched into a mirror: branches and tags under their own names.
const MIRROR_REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// An immutable commit together with the name the operator asked for.
///
/// Why both: everything persisted names the commit (immutable); the requested ref is kept only
/// so humans see `454ac5f1 (v1)` instead of a bare hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// Full commit id, 40 lowercase hex digits.
    pub commit: String,
    /// What the operator asked for (branch, tag, sha, ...), for display only.
    pub requested_ref: String,
}

impl Revision {
    /// First 8 hex digits of the commit.
    ///
    /// Why 8: short enough for a status line, long enough to stay unique in practice.
    pub fn short(&self) -> &str {
        self.commit.get(..8).unwrap_or(&self.commit)
    }

    /// Whether the requested ref is just (a prefix of) the commit id, so showing it adds nothing.
    fn requested_is_sha(&self) -> bool {
        let r = self.requested_ref.as_str();
        r.is_empty()
            || (r.len() >= 4
                && r.len() <= self.commit.len()
                && r.bytes().all(|b| b.is_ascii_hexdigit())
                && self.commit[..r.len()].eq_ignore_ascii_case(r))
    }
}

impl fmt::Display for Revision {
    /// `454ac5f1 (v1)`; the ref is omitted when it is the sha itself (full or abbreviated).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requested_is_sha() {
            write!(f, "{}", self.short())
        } else {
            write!(f, "{} ({})", self.short(), self.requested_ref)
        }
    }
}

/// One non-directory entry of a commit's tree.
///
/// Why only these two: git stores regular files (with or without the executable bit) and
/// symlinks; submodules are refused when the snapshot is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoEntry {
    /// A regular file (git mode 100644 or 100755).
    File {
        /// File content.
        data: Vec<u8>,
        /// True for git mode 100755.
        executable: bool,
    },
    /// A symbolic link (git mode 120000); the target is stored as git stores it.
    Symlink {
        /// Link target, not resolved.
        target: String,
    },
}

/// Every file and symlink of one commit, by repo-relative path (`/` separators).
///
/// Why a map in memory: later stages (render, plan) are pure functions of these values, and a
/// desired-state repo is small (about 40 kB for 200 services).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The commit the files were read from.
    pub revision: Revision,
    /// Repo-relative path -> entry, sorted.
    pub files: BTreeMap<String, RepoEntry>,
}

impl Snapshot {
    /// The entry at a repo-relative path (`services/web/web.service`).
    ///
    /// Why: the common lookup, without callers spelling out the map.
    pub fn get(&self, path: &str) -> Option<&RepoEntry> {
        self.files.get(path)
    }

    /// All entries below directory `dir` (`services/web` or `services/web/`), sorted by path;
    /// the empty string yields every entry.
    ///
    /// Why: a service, a host's overrides or a runtime are directories of the repo, read as a
    /// group; the map is sorted, so this is a range scan, not a filter over every file.
    pub fn under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a RepoEntry)> + 'a {
        let trimmed = dir.trim_end_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        self.files
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// How a repository location is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    /// A path on this host, opened in place.
    Local,
    /// `file://` URL, fetched by libgit2's in-process local transport.
    File,
    /// `https://`, fetched by the git program.
    Https,
    /// `ssh://` or scp-like `[user@]host:path`, fetched by the git program through OpenSSH.
    Ssh,
    /// `git://` (git daemon: no authentication, no encryption), fetched by the git program.
    Git,
    /// Any other scheme (`http://`, ...): refused.
    Unsupported(String),
}

fn transport(repo: &str) -> Transport {
    if let Some((scheme, _)) = repo.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "file" => Transport::File,
            "https" => Transport::Https,
            "ssh" | "git+ssh" | "ssh+git" => Transport::Ssh,
            "git" => Transport::Git,
            other => Transport::Unsupported(other.to_string()),
        };
    }
    // scp-like syntax, as git reads it: a ':' before any '/'.
    if !repo.starts_with('/')
        && !repo.starts_with('.')
        && let Some((host, _)) = repo.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
    {
        return Transport::Ssh;
    }
    Transport::Local
}

/// True when `repo` is a URL (`file://`, `https://`, `ssh://`, scp-like `host:path`) that is
/// fetched into a mirror; false for a path opened in place.
///
/// Why: configuration canonicalizes and checks local paths, but must leave URLs alone.
pub fn is_remote(repo: &str) -> bool {
    transport(repo) != Transport::Local
}

/// `text` with any `user[:password]@` removed from URLs, also inside longer text.
///
/// Why: credentials never appear in logs, errors, status or receipts.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => out.push_str(&authority[at + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// An opened desired-state repository (in place, or its mirror after a fetch).
///
/// Why a type: opening (and fetching) happens once per run; every later read goes to the same
/// object database.
pub struct Source {
    /// Shared with the [`RevisionTree`]s read from it.
    repo: Rc<Repository>,
    /// Operator's location, credentials removed.
    location: String,
    /// Mirror directory when the location is a URL.
    mirror: Option<PathBuf>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("location", &self.location)
            .field("mirror", &self.mirror)
            .finish()
    }
}

fn src_err(msg: impl Into<String>) -> Error {
    Error::Source(redact(&msg.into()))
}

/// Whether the URL's user-info carries a password (`user:secret@`).
fn has_password(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| {
            let authority = rest.split('/').next().unwrap_or("");
            authority
                .rsplit_once('@')
                .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        })
        .unwrap_or(false)
}

impl Source {
    /// Open `repo`: a local path (work tree or bare) in place and read-only, or a URL fetched
    /// into the bare mirror `<state_dir>/mirrors/<sha256(url without credentials)[..16]>.git`.
    ///
    /// Why fetch here: a run then works on one consistent set of refs; a failed fetch fails the
    /// run rather than silently using stale refs.
    pub fn open(repo: &str, state_dir: &Path) -> Result<Source> {
        Self::open_with(repo, state_dir, &RemoteOptions::default())
    }

    /// [`Source::open`] with explicit remote options (credentials directory, fetch timeout).
    ///
    /// Why: the CLI passes the operator's settings; a failed fetch of a remote is
    /// [`Error::Fetch`] (its own exit code) and is recorded in `<state_dir>/fetch.json`.
    pub fn open_with(repo: &str, state_dir: &Path, opts: &RemoteOptions) -> Result<Source> {
        if repo.is_empty() {
            return Err(src_err("no repository given"));
        }
        let location = redact(repo);
        match transport(repo) {
            Transport::Local => Self::open_local(repo, location),
            Transport::File => {
                let path = &repo["file://".len()..];
                if !Path::new(path).exists() {
                    return Err(src_err(format!(
                        "repository path '{path}' of {location} does not exist"
                    )));
                }
                Self::open_mirror(repo, location, state_dir, None)
            }
            Transport::Https | Transport::Ssh | Transport::Git => {
                if has_password(repo) {
                    return Err(Error::Config(format!(
                        "{location}: a password or token in the repository URL is refused (it \
                         would show in process lists and records); put it in a file named by \
                         an entry of the credentials directory {}",
                        opts.credentials_dir.display()
                    )));
                }
                Self::open_mirror(repo, location, state_dir, Some(opts))
            }
            Transport::Unsupported(scheme) => Err(src_err(format!(
                "unsupported URL scheme '{scheme}://' in {location}: use a local path, file://, \
                 https://, ssh:// or git://"
            ))),
        }
    }

    fn open_local(path: &str, location: String) -> Result<Source> {
        let p = Path::new(path);
        if !p.exists() {
            return Err(src_err(format!(
                "repository path '{location}' does not exist"
            )));
        }
        // NO_SEARCH: a directory that is not a repository must not silently open a parent one.
        let repo = Repository::open_ext(
            p,
            RepositoryOpenFlags::NO_SEARCH,
            std::iter::empty::<&str>(),
        )
        .map_err(|e| {
            if e.code() == ErrorCode::Owner {
                src_err(format!(
                    "repository '{location}' is owned by another user and git refuses it \
                     (safe.directory); change its owner or list it under safe.directory in \
                     /etc/gitconfig or the running user's ~/.gitconfig: {}",
                    e.message()
                ))
            } else {
                src_err(format!(
                    "'{location}' is not a git repository: {}",
                    e.message()
                ))
            }
        })?;
        Ok(Source {
            repo: Rc::new(repo),
            location,
            mirror: None,
        })
    }

    /// Open (creating on first use) the mirror of `url` and fetch into it: in process for
    /// `file://` (`remote` is `None`), with the git program otherwise (recorded in
    /// `fetch.json`, success or failure).
    fn open_mirror(
        url: &str,
        location: String,
        state_dir: &Path,
        remote: Option<&RemoteOptions>,
    ) -> Result<Source> {
        let started = std::time::Instant::now();
        let result = Self::open_mirror_inner(url, location.clone(), state_dir, remote);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if remote.is_none() {
            // file://: no network, nothing to track, and a no-op tick stays one write lighter
            return result;
        }
        match &result {
            Ok(_) => fetch_state::record_success(state_dir, &location, elapsed_ms),
            Err(e @ Error::Fetch(m)) => {
                let kind = remote::kind_of(m);
                tracing::warn!(
                    repo = %location,
                    kind = kind.as_str(),
                    "fetch failed; the host stays on its last applied revision"
                );
                fetch_state::record_failure(state_dir, &location, kind.as_str(), &e.to_string());
            }
            Err(_) => {}
        }
        result
    }

    fn open_mirror_inner(
        url: &str,
        location: String,
        state_dir: &Path,
        remote: Option<&RemoteOptions>,
    ) -> Result<Source> {
        let mirrors = state_dir.join("mirrors");
        // the state dir is private (0700) whoever creates it first
        crate::fsutil::private_dir(state_dir)?;
        crate::fsutil::create_dir_all_synced(&mirrors)?;
        let key = mirror_key(&location);
        let dir = mirrors.join(format!("{key}.git"));

        if dir.exists() {
            match Repository::open_bare(&dir) {
                Ok(repo) if repo.is_bare() => {
                    remove_stale_locks(&dir)?;
                    match remote {
                        None => fetch(&repo, url, &location)?,
                        // HEAD is followed when the mirror is made, and again only when it
                        // dangles (the default branch was deleted): one round trip per tick
                        Some(o) => remote::fetch(&dir, url, &location, o, repo.head().is_err())?,
                    }
                    return Ok(Source {
                        repo: Rc::new(repo),
                        location,
                        mirror: Some(dir),
                    });
                }
                _ => {
                    tracing::warn!(mirror = %dir.display(), "mirror is not a usable bare repository; re-creating it");
                    fs::remove_dir_all(&dir).map_err(|e| {
                        Error::io(format!("remove broken mirror {}", dir.display()), e)
                    })?;
                }
            }
        }

        // Build the mirror beside its final name and rename it into place once the first fetch
        // is complete: a run killed half-way leaves only a temp dir, removed here next time.
        let tmp_prefix = format!(".{key}.git.tmp-");
        let rd = fs::read_dir(&mirrors)
            .map_err(|e| Error::io(format!("read dir {}", mirrors.display()), e))?;
        for entry in rd.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                fs::remove_dir_all(entry.path()).map_err(|e| {
                    Error::io(format!("remove stale {}", entry.path().display()), e)
                })?;
            }
        }
        let tmp = mirrors.join(format!("{tmp_prefix}{}", std::process::id()));
        {
            let repo = Repository::init_bare(&tmp).map_err(|e| {
                src_err(format!("create mirror {}: {}", tmp.display(), e.message()))
            })?;
            match remote {
                None => fetch(&repo, url, &location)?,
                Some(o) => remote::fetch(&tmp, url, &location, o, true)?,
            }
        }
        fs::rename(&tmp, &dir)
            .map_err(|e| Error::io(format!("rename {} to {}", tmp.display(), dir.display()), e))?;
        fs::File::open(&mirrors)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("sync {}", mirrors.display()), e))?;
        let repo = Repository::open_bare(&dir)
            .map_err(|e| src_err(format!("open mirror {}: {}", dir.display(), e.message())))?;
        Ok(Source {
            repo: Rc::new(repo),
            location,
            mirror: Some(dir),
        })
    }

    /// The location the operator gave, with any URL credentials removed.
    ///
    /// Why redacted: this string ends up in status, receipts and logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The git directory actually read: the repository itself, or its mirror.
    ///
    /// Why: diagnostics and `status` show where the objects came from.
    pub fn git_dir(&self) -> &Path {
        self.repo.path()
    }

    /// The repository (or mirror) itself, for checks that read commits but never their tree
    /// (`trust`: signatures, ancestry).
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// True when the location is a URL read through a mirror.
    pub fn is_mirror(&self) -> bool {
        self.mirror.is_some()
    }

    /// Resolve `requested` (branch, tag, lightweight or annotated, short or full sha, any git
    /// revision expression; `origin/<branch>` in a mirror) to a commit.
    ///
    /// Ref names are tried before sha prefixes (libgit2's revparse order). A branch and a tag
    /// of the same name that point at different commits are refused as ambiguous.
    ///
    /// Why strict: the host is changed to whatever this returns; guessing is not acceptable.
    pub fn resolve(&self, requested: &str) -> Result<Revision> {
        let unknown = || {
            src_err(format!(
                "unknown ref '{requested}' in {}: not a branch, tag or commit",
                self.location
            ))
        };
        if requested.is_empty() || requested.chars().any(char::is_control) {
            return Err(unknown());
        }
        let obj = match self.repo.revparse_single(requested) {
            Ok(o) => o,
            Err(e) if e.code() == ErrorCode::Ambiguous => {
                return Err(src_err(format!(
                    "ambiguous short sha '{requested}' in {}: it matches more than one object; \
                     give more hex digits",
                    self.location
                )));
            }
            Err(e) if e.code() == ErrorCode::NotFound || e.code() == ErrorCode::InvalidSpec => {
                match requested.strip_prefix("origin/") {
                    Some(b) if self.mirror.is_some() => self
                        .repo
                        .revparse_single(&format!("refs/heads/{b}"))
                        .map_err(|_| unknown())?,
                    _ => return Err(unknown()),
                }
            }
            Err(e) => {
                return Err(src_err(format!(
                    "cannot resolve '{requested}' in {}: {}",
                    self.location,
                    e.message()
                )));
            }
        };
        let kind = obj.kind();
        let commit = obj.peel_to_commit().map_err(|_| {
            src_err(format!(
                "'{requested}' in {} names a {}, not a commit",
                self.location,
                kind.map_or("non-commit object", |k| k.str())
            ))
        })?;
        self.check_branch_tag_clash(requested)?;
        Ok(Revision {
            commit: commit.id().to_string(),
            requested_ref: requested.to_string(),
        })
    }

    fn check_branch_tag_clash(&self, name: &str) -> Result<()> {
        if name.starts_with("refs/") {
            return Ok(());
        }
        let peel = |r: &str| {
            self.repo
                .find_reference(r)
                .ok()
                .and_then(|r| r.peel_to_commit().ok())
                .map(|c| c.id())
        };
        if let (Some(b), Some(t)) = (
            peel(&format!("refs/heads/{name}")),
            peel(&format!("refs/tags/{name}")),
        ) && b != t
        {
            return Err(src_err(format!(
                "ambiguous ref '{name}' in {}: both a branch and a tag, at different commits; \
                 use refs/heads/{name} or refs/tags/{name}",
                self.location
            )));
        }
        Ok(())
    }

    /// Read every file and symlink of `rev`'s tree into memory, within the default
    /// [`ReadLimits`].
    ///
    /// Why still here: tools and tests that want the whole commit; a run reads only what the
    /// host needs through [`Source::tree`]. A submodule entry is an input error naming its
    /// path (its files are not in this repo).
    pub fn snapshot(&self, rev: &Revision) -> Result<Snapshot> {
        let tree = self.tree(rev, ReadLimits::default())?;
        let mut files = BTreeMap::new();
        for path in tree.paths_under("")? {
            if let Some(entry) = tree.entry(&path)? {
                files.insert(path, entry);
            }
        }
        Ok(Snapshot {
            revision: rev.clone(),
            files,
        })
    }

    /// The tree of `rev`, read lazily and within `limits`: nothing but the root tree is read
    /// until a path or directory is asked for.
    ///
    /// Why lazy: a host needs its own `host.yaml`, its selected services and runtimes; reading
    /// the rest would let any corner of the repository (a git bomb, a 40,000-deep tree, a huge
    /// blob) cost every host memory and time.
    pub fn tree(&self, rev: &Revision, limits: ReadLimits) -> Result<RevisionTree> {
        let oid = Oid::from_str(&rev.commit)
            .ok()
            .filter(|_| rev.commit.len() == 40)
            .ok_or_else(|| src_err(format!("'{}' is not a full commit id", rev.commit)))?;
        let commit = self.repo.find_commit(oid).map_err(|e| {
            src_err(format!(
                "commit {} not found in {}: {}",
                rev.commit,
                self.location,
                e.message()
            ))
        })?;
        let root = commit.tree_id();
        Ok(RevisionTree {
            objects: self.repo.path().join("objects"),
            repo: Rc::clone(&self.repo),
            location: self.location.clone(),
            root,
            limits,
            state: RefCell::new(ReadState::default()),
        })
    }
}

/// Read access to one commit's files by repo-relative path (`/` separators).
///
/// Why a trait: render stays a pure function of the files it asks for; a map of values
/// (tests, [`Snapshot`]) and the lazy, bounded reader of a commit ([`RevisionTree`]) both
/// answer it.
pub trait RepoFiles {
    /// The file or symlink at `path`; `None` when there is none (or it is a directory).
    fn entry(&self, path: &str) -> std::result::Result<Option<RepoEntry>, InputError>;

    /// Whether a file or symlink exists at `path`, without reading it.
    fn exists(&self, path: &str) -> std::result::Result<bool, InputError> {
        Ok(self.entry(path)?.is_some())
    }

    /// Paths of every file and symlink below directory `dir` (`""`: the whole commit),
    /// sorted.
    fn paths_under(&self, dir: &str) -> std::result::Result<Vec<String>, InputError>;
}

impl RepoFiles for BTreeMap<String, RepoEntry> {
    fn entry(&self, path: &str) -> std::result::Result<Option<RepoEntry>, InputError> {
        Ok(self.get(path).cloned())
    }

    fn exists(&self, path: &str) -> std::result::Result<bool, InputError> {
        Ok(self.contains_key(path))
    }

    fn paths_under(&self, dir: &str) -> std::result::Result<Vec<String>, InputError> {
        let prefix = dir_prefix(dir);
        Ok(self
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}

/// `dir` as a path prefix: `""` stays empty, anything else ends in exactly one `/`.
fn dir_prefix(dir: &str) -> String {
    let trimmed = dir.trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

pub use crate::config::{
    DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_TREE_BYTES, DEFAULT_MAX_TREE_DEPTH,
    DEFAULT_MAX_TREE_ENTRIES, ReadLimits,
};

/// The tree of one commit, read on demand and within [`ReadLimits`].
///
/// Traversal is iterative (an explicit stack), so depth costs heap, never call stack, and
/// the depth cap stops it early anyway. Reads are cached by path: a file render asks for
/// twice counts once. Git objects are read once per object id: a tree walked again (the
/// root and `services/` by every service's lookup) and a blob shared by many paths (200
/// services with the same unit text) cost one object read each, however often they are
/// asked for; the caps still count every path and every entry visited.
pub struct RevisionTree {
    repo: Rc<Repository>,
    /// The repository's own object directory (where its loose objects are).
    objects: PathBuf,
    /// Operator's location, credentials removed (for messages).
    location: String,
    root: Oid,
    limits: ReadLimits,
    state: RefCell<ReadState>,
}

impl fmt::Debug for RevisionTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevisionTree")
            .field("location", &self.location)
            .field("root", &self.root)
            .field("limits", &self.limits)
            .finish()
    }
}

/// What a [`RevisionTree`] has read so far.
#[derive(Debug, Default)]
struct ReadState {
    /// Tree entries visited (expanded).
    entries: u64,
    /// Content bytes read.
    bytes: u64,
    /// Object headers read (to learn a size before the content).
    headers: u64,
    /// Directories listed completely (`""` or `dir/`): lookups below them need no git access.
    listed: BTreeSet<String>,
    /// Files and symlinks seen: path -> (blob id, git file mode).
    index: BTreeMap<String, (Oid, i32)>,
    /// Contents read, by path.
    read: BTreeMap<String, RepoEntry>,
    /// Tree objects read (size checked, entries parsed), by object id.
    trees: HashMap<Oid, Rc<[TreeRow]>>,
    /// Blob contents read (size checked), by object id.
    blobs: HashMap<Oid, Rc<[u8]>>,
}

/// One entry of a tree object as read.
#[derive(Debug)]
struct TreeRow {
    name: Vec<u8>,
    id: Oid,
    mode: i32,
    kind: Option<ObjectType>,
}

/// Where a path leads in the commit.
enum Found {
    Absent,
    Tree(Oid),
    Leaf(Oid, i32),
}

impl RevisionTree {
    /// The limits this tree is read within.
    pub fn limits(&self) -> ReadLimits {
        self.limits
    }

    fn git_err(&self, path: &str, e: &git2::Error) -> InputError {
        InputError::new(
            Location::file(path),
            format!(
                "cannot read it from {}: {}",
                redact(&self.location),
                e.message()
            ),
        )
    }

    /// An object's size from its header, before its content is read; refused above the
    /// per-object cap.
    fn object_size(&self, oid: Oid, path: &str) -> std::result::Result<u64, InputError> {
        let odb = self.repo.odb().map_err(|e| self.git_err(path, &e))?;
        self.state.borrow_mut().headers += 1;
        let (size, _) = odb.read_header(oid).map_err(|e| self.git_err(path, &e))?;
        let size = size as u64;
        if size > self.limits.max_file_bytes {
            return Err(InputError::new(
                Location::file(path),
                format!(
                    "object is {size} bytes, more than the {} bytes one file or tree may have \
                     (CORE_OPS_MAX_FILE_BYTES)",
                    self.limits.max_file_bytes
                ),
            ));
        }
        Ok(size)
    }

    /// An upper bound of the object's size when it is a loose object of this repository so
    /// small compressed that its content cannot exceed the per-object cap: then its header
    /// need not be read first. `None` otherwise.
    ///
    /// Why: a loose object is one zlib stream in a file of its own; reading its header opens
    /// and inflates that file once more before the read does it again - twice for each of
    /// the ~1,000 objects of a 200-service revision. Deflate expands at most 1032:1, so a
    /// file of at most `max_file_bytes / 1032` bytes holds no more than the cap. A packed
    /// object (or one in an alternate) is not found here and has its header read.
    fn small_loose(&self, oid: Oid) -> Option<u64> {
        let hex = oid.to_string();
        let md = std::fs::metadata(self.objects.join(&hex[..2]).join(&hex[2..])).ok()?;
        let bound = md.len().saturating_mul(1032);
        (md.is_file() && bound <= self.limits.max_file_bytes).then_some(bound)
    }

    /// A tree object's entries, checked against the per-object cap before it is parsed;
    /// read from the object database once per object id.
    fn load_tree(&self, oid: Oid, path: &str) -> std::result::Result<Rc<[TreeRow]>, InputError> {
        if let Some(rows) = self.state.borrow().trees.get(&oid) {
            return Ok(Rc::clone(rows));
        }
        let shown = if path.is_empty() { "/" } else { path };
        if self.small_loose(oid).is_none() {
            self.object_size(oid, shown)?;
        }
        let tree = self
            .repo
            .find_tree(oid)
            .map_err(|e| self.git_err(shown, &e))?;
        let rows: Rc<[TreeRow]> = tree
            .iter()
            .map(|e| TreeRow {
                name: e.name_bytes().to_vec(),
                id: e.id(),
                mode: e.filemode(),
                kind: e.kind(),
            })
            .collect();
        self.state.borrow_mut().trees.insert(oid, Rc::clone(&rows));
        Ok(rows)
    }

    /// A blob's content (its size already checked), stored for every other path that
    /// shares its object id.
    fn load_blob(&self, oid: Oid, path: &str) -> std::result::Result<Rc<[u8]>, InputError> {
        let blob = self
            .repo
            .find_blob(oid)
            .map_err(|e| self.git_err(path, &e))?;
        let data: Rc<[u8]> = Rc::from(blob.content());
        self.state.borrow_mut().blobs.insert(oid, Rc::clone(&data));
        Ok(data)
    }

    fn depth_err(&self, path: &str) -> InputError {
        InputError::new(
            Location::file(path),
            format!(
                "path is deeper than {} levels (CORE_OPS_MAX_TREE_DEPTH)",
                self.limits.max_depth
            ),
        )
    }

    /// Follow `path` from the root, one component at a time (no listing, no content).
    fn lookup(&self, path: &str) -> std::result::Result<Found, InputError> {
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() {
            return Ok(Found::Tree(self.root));
        }
        let parts: Vec<&str> = trimmed.split('/').collect();
        if parts.len() > self.limits.max_depth {
            return Err(self.depth_err(trimmed));
        }
        {
            // answered by a listing already done
            let st = self.state.borrow();
            let covered = st.listed.contains("")
                || parts
                    .iter()
                    .scan(String::new(), |acc, p| {
                        acc.push_str(p);
                        acc.push('/');
                        Some(acc.clone())
                    })
                    .any(|dir| st.listed.contains(&dir));
            if covered {
                if let Some((oid, mode)) = st.index.get(trimmed) {
                    return Ok(Found::Leaf(*oid, *mode));
                }
                let prefix = format!("{trimmed}/");
                let is_dir = st
                    .index
                    .range::<str, _>((
                        std::ops::Bound::Included(prefix.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&prefix));
                if !is_dir {
                    return Ok(Found::Absent);
                }
            }
        }
        let mut current = self.root;
        let mut walked = String::new();
        for (i, part) in parts.iter().enumerate() {
            let tree = self.load_tree(current, walked.trim_end_matches('/'))?;
            check_entry_name(&walked, part.as_bytes())?;
            walked.push_str(part);
            let Some(entry) = tree.iter().find(|e| e.name == part.as_bytes()) else {
                return Ok(Found::Absent);
            };
            let last = i + 1 == parts.len();
            match entry.kind {
                Some(ObjectType::Tree) => current = entry.id,
                Some(ObjectType::Blob) if last => {
                    return Ok(Found::Leaf(entry.id, entry.mode));
                }
                Some(ObjectType::Commit) => return Err(submodule_err(walked)),
                _ => return Ok(Found::Absent),
            }
            walked.push('/');
        }
        Ok(Found::Tree(current))
    }

    /// List `dir` completely (iteratively), counting every entry against the caps.
    fn list(&self, dir: &str) -> std::result::Result<(), InputError> {
        let prefix = dir_prefix(dir);
        if self.state.borrow().listed.contains(&prefix) {
            return Ok(());
        }
        let oid = match self.lookup(&prefix)? {
            Found::Tree(oid) => oid,
            Found::Absent | Found::Leaf(..) => return Ok(()),
        };
        let depth = prefix.split('/').filter(|p| !p.is_empty()).count();
        let mut stack = vec![(oid, prefix.clone(), depth)];
        while let Some((oid, at, depth)) = stack.pop() {
            let tree = self.load_tree(oid, at.trim_end_matches('/'))?;
            for entry in tree.iter() {
                check_entry_name(&at, &entry.name)?;
                let path = match std::str::from_utf8(&entry.name) {
                    Ok(n) => format!("{at}{n}"),
                    Err(_) => {
                        let lossy = format!("{at}{}", String::from_utf8_lossy(&entry.name));
                        return Err(InputError::new(
                            Location::file(lossy),
                            "file name is not UTF-8",
                        ));
                    }
                };
                let mut st = self.state.borrow_mut();
                st.entries += 1;
                if st.entries > self.limits.max_entries {
                    return Err(InputError::new(
                        Location::file(path),
                        format!(
                            "more than {} tree entries read from the revision \
                             (CORE_OPS_MAX_TREE_ENTRIES; entries reached through shared \
                             subtrees count each time)",
                            self.limits.max_entries
                        ),
                    ));
                }
                if depth + 1 > self.limits.max_depth {
                    return Err(self.depth_err(&path));
                }
                match entry.kind {
                    Some(ObjectType::Tree) => stack.push((entry.id, format!("{path}/"), depth + 1)),
                    Some(ObjectType::Blob) => {
                        st.index.insert(path, (entry.id, entry.mode));
                    }
                    Some(ObjectType::Commit) => return Err(submodule_err(path)),
                    _ => {
                        return Err(InputError::new(
                            Location::file(path),
                            "unexpected tree entry type",
                        ));
                    }
                }
            }
        }
        self.state.borrow_mut().listed.insert(prefix);
        Ok(())
    }

    /// Read one file or symlink, checking its size from the header first.
    fn read_leaf(
        &self,
        path: &str,
        oid: Oid,
        mode: i32,
    ) -> std::result::Result<RepoEntry, InputError> {
        // a blob read for another path is not read again; its size is known (and so is a
        // small loose object's bound: it is read before it is counted)
        let mut cached = self.state.borrow().blobs.get(&oid).cloned();
        if cached.is_none()
            && let Some(bound) = self.small_loose(oid)
            && self.state.borrow().bytes + bound <= self.limits.max_bytes
        {
            cached = Some(self.load_blob(oid, path)?);
        }
        let size = match &cached {
            Some(data) => data.len() as u64,
            None => self.object_size(oid, path)?,
        };
        {
            let mut st = self.state.borrow_mut();
            if st.bytes + size > self.limits.max_bytes {
                return Err(InputError::new(
                    Location::file(path),
                    format!(
                        "reading its {size} bytes would exceed the {} bytes core-ops reads from \
                         one revision (CORE_OPS_MAX_TREE_BYTES)",
                        self.limits.max_bytes
                    ),
                ));
            }
            st.bytes += size;
        }
        let data = match cached {
            Some(data) => data,
            None => self.load_blob(oid, path)?,
        };
        Ok(if mode == 0o120000 {
            let target = String::from_utf8(data.to_vec()).map_err(|_| {
                InputError::new(Location::file(path), "symlink target is not UTF-8")
            })?;
            RepoEntry::Symlink { target }
        } else {
            RepoEntry::File {
                data: data.to_vec(),
                executable: mode == 0o100755,
            }
        })
    }
}

impl RevisionTree {
    /// The object id at `path` (`file <id>` for a file), `None` when there is nothing there.
    ///
    /// Why: two revisions with the same id at a directory hold the same files below it, known
    /// without reading them (see `pipeline`'s early validation).
    pub fn dir_id(&self, path: &str) -> std::result::Result<Option<String>, InputError> {
        Ok(match self.lookup(path)? {
            Found::Tree(oid) => Some(oid.to_string()),
            Found::Leaf(oid, _) => Some(format!("file {oid}")),
            Found::Absent => None,
        })
    }

    /// The entries of directory `dir` by name, with their object ids (empty when there is no
    /// such directory): one tree read.
    pub fn child_ids(
        &self,
        dir: &str,
    ) -> std::result::Result<BTreeMap<String, String>, InputError> {
        let Found::Tree(oid) = self.lookup(dir)? else {
            return Ok(BTreeMap::new());
        };
        Ok(self
            .load_tree(oid, dir)?
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.name).into_owned(),
                    e.id.to_string(),
                )
            })
            .collect())
    }
}

impl RepoFiles for RevisionTree {
    fn entry(&self, path: &str) -> std::result::Result<Option<RepoEntry>, InputError> {
        if let Some(e) = self.state.borrow().read.get(path) {
            return Ok(Some(e.clone()));
        }
        let Found::Leaf(oid, mode) = self.lookup(path)? else {
            return Ok(None);
        };
        let entry = self.read_leaf(path, oid, mode)?;
        self.state
            .borrow_mut()
            .read
            .insert(path.to_string(), entry.clone());
        Ok(Some(entry))
    }

    fn exists(&self, path: &str) -> std::result::Result<bool, InputError> {
        Ok(matches!(self.lookup(path)?, Found::Leaf(..)))
    }

    fn paths_under(&self, dir: &str) -> std::result::Result<Vec<String>, InputError> {
        self.list(dir)?;
        let prefix = dir_prefix(dir);
        let st = self.state.borrow();
        Ok(st
            .index
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}

fn submodule_err(path: String) -> InputError {
    InputError::new(
        Location::file(path),
        "submodules are not supported: the desired state must be plain files in this repository",
    )
}

/// Refuse a tree entry name no checkout could produce: empty, `.`, `..`, `.git` (any case),
/// or containing `/` or NUL.
///
/// Why: `git add` refuses these, but plumbing (`git mktree`, `hash-object --literally`) writes
/// them, and a name like `..` turns `services/x/files/etc/../../root/x` into a host path
/// outside every root. Checked where the tree is read, so nothing later ever sees such a path.
fn check_entry_name(prefix: &str, name: &[u8]) -> std::result::Result<(), InputError> {
    let bad = name.is_empty()
        || name == b"."
        || name == b".."
        || name.eq_ignore_ascii_case(b".git")
        || name.contains(&b'/')
        || name.contains(&0);
    if !bad {
        return Ok(());
    }
    let shown = format!("{prefix}{}", String::from_utf8_lossy(name).escape_debug());
    Err(InputError::new(
        Location::file(shown),
        "tree entry name is empty, '.', '..', '.git' or contains '/' or NUL: git plumbing can \
         write it, a checkout never would, and core-ops refuses it",
    ))
}

/// Mirror directory name: first 16 hex digits of the sha256 of the redacted URL.
///
/// Hashing the URL without credentials keeps the mirror when a token is rotated.
fn mirror_key(redacted_url: &str) -> String {
    let digest = Sha256::digest(redacted_url.as_bytes());
    let mut hex = String::with_capacity(16);
    crate::model::normalize::push_hex(&mut hex, &digest[..8]);
    hex
}

/// Remove `*.lock` files that a killed fetch left in the mirror (`HEAD.lock`, `packed-refs.lock`,
/// `refs/**/*.lock`); libgit2 would otherwise refuse to update those refs forever.
///
/// Safe because the caller holds the state-dir lock: no other process writes this mirror.
fn remove_stale_locks(mirror: &Path) -> Result<()> {
    fn walk(dir: &Path, recurse: bool) -> Result<()> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("read dir {}", dir.display()), e)),
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && recurse {
                walk(&path, true)?;
            } else if !is_dir && path.extension().is_some_and(|x| x == "lock") {
                tracing::warn!(lock = %path.display(), "removing stale lock file left by an interrupted fetch");
                fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("remove stale {}", path.display()), e))?;
            }
        }
        Ok(())
    }
    walk(mirror, false)?;
    walk(&mirror.join("refs"), true)?;
    // half-written packs of a killed `git fetch` (`objects/pack/tmp_pack_*`, `tmp_idx_*`):
    // never referenced, only space
    let packs = mirror.join("objects/pack");
    if let Ok(rd) = fs::read_dir(&packs) {
        for entry in rd.flatten() {
            if entry.file_name().to_string_lossy().starts_with("tmp_") {
                tracing::warn!(file = %entry.path().display(), "removing a partial pack left by an interrupted fetch");
                fs::remove_file(entry.path()).map_err(|e| {
                    Error::io(format!("remove stale {}", entry.path().display()), e)
                })?;
            }
        }
    }
    Ok(())
}

/// Fetch branches and tags of `url` into the bare mirror `repo`.
///
/// libgit2 writes the pack to a temp file and renames it, and updates each ref through a lock
/// file after the objects are in place, so a crash mid-fetch leaves the old refs usable.
/// The URL is never stored in the mirror (anonymous remote, no FETCH_HEAD).
fn fetch(repo: &Repository, url: &str, location: &str) -> Result<()> {
    let started = std::time::Instant::now();
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(|e| src_err(format!("fetch {location}: {}", e.message())))?;
    let mut opts = FetchOptions::new();
    opts.prune(FetchPrune::On)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false);
    remote
        .fetch(&MIRROR_REFSPECS, Some(&mut opts), Some("core-ops: fetch"))
        .map_err(|e| {
            src_err(format!(
                "fetch {location} into {}: {}",
                repo.path().display(),
                e.message()
            ))
        })?;
    let received = remote.stats().received_objects();
    // Follow the source's default branch so `HEAD` means the same in the mirror.
    if let Ok(buf) = remote.default_branch()
        && let Ok(name) = buf.as_str()
    {
        let current = repo
            .find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_string));
        if current.as_deref() != Some(name) && repo.find_reference(name).is_ok() {
            repo.set_head(name)
                .map_err(|e| src_err(format!("set HEAD of mirror: {}", e.message())))?;
        }
    }
    tracing::debug!(
        repo = location,
        received_objects = received,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "fetched"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_ops_testkit::RepoBuilder;
    use std::os::unix::fs::PermissionsExt;

    fn url(p: &Path) -> String {
        format!("file://{}", p.display())
    }

    /// Repo with main (2 commits), v1 (lightweight, first commit), va2 (annotated, second).
    fn fixture(root: &Path) -> (RepoBuilder, String, String) {
        let mut b = RepoBuilder::init(root).unwrap();
        let c1 = b
            .commit_files(&[("services/web/web.service", b"[Service]\n")], "one")
            .unwrap();
        b.tag("v1").unwrap();
        let c2 = b
            .commit_files(
                &[
                    (
                        "services/web/web.service",
                        b"[Service]\nExecStart=/bin/true\n",
                    ),
                    ("hosts/h1/host.yaml", b"services: [web]\n"),
                ],
                "two",
            )
            .unwrap();
        b.tag_annotated("va2", "annotated").unwrap();
        (b, c1, c2)
    }

    fn err(r: Result<Revision>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn resolves_branch_tags_and_shas() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let (_b, c1, c2) = fixture(&repo);
        let s = Source::open(repo.to_str().unwrap(), &t.path().join("state")).unwrap();
        assert!(!s.is_mirror());
        assert_eq!(s.resolve("main").unwrap().commit, c2);
        assert_eq!(s.resolve("HEAD").unwrap().commit, c2);
        assert_eq!(s.resolve("v1").unwrap().commit, c1);
        assert_eq!(s.resolve("va2").unwrap().commit, c2);
        assert_eq!(s.resolve(&c1[..7]).unwrap().commit, c1);
        assert_eq!(s.resolve(&c1).unwrap().commit, c1);
        assert_eq!(s.resolve("main~1").unwrap().commit, c1);
        assert_eq!(s.resolve("v1").unwrap().requested_ref, "v1");
    }

    #[test]
    fn unknown_and_bad_refs_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let (_b, _c1, _c2) = fixture(&repo);
        let loc = repo.to_str().unwrap();
        let s = Source::open(loc, t.path()).unwrap();
        assert_eq!(
            err(s.resolve("foo")),
            format!("source: unknown ref 'foo' in {loc}: not a branch, tag or commit")
        );
        // a full sha that is not in the repository
        let missing = "0123456789abcdef0123456789abcdef01234567";
        assert!(err(s.resolve(missing)).contains("unknown ref"));
        assert!(err(s.resolve("")).contains("unknown ref"));
        assert!(err(s.resolve("main:hosts")).contains("names a tree, not a commit"));
    }

    #[test]
    fn ambiguous_short_sha_says_so() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let mut b = RepoBuilder::init(&repo).unwrap();
        // enough objects that two share a 4-hex prefix (the shortest libgit2 accepts)
        let files: Vec<(String, Vec<u8>)> = (0..1000)
            .map(|i| (format!("f{i}"), format!("{i}\n").into_bytes()))
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        b.commit_files(&refs, "many").unwrap();
        let s = Source::open(repo.to_str().unwrap(), t.path()).unwrap();
        let git = Repository::open(&repo).unwrap();
        let mut seen = std::collections::HashMap::new();
        let mut clash = None;
        git.odb()
            .unwrap()
            .foreach(|oid| {
                let p = oid.to_string()[..4].to_string();
                if seen.insert(p.clone(), ()).is_some() {
                    clash = Some(p);
                    return false;
                }
                true
            })
            .ok();
        let prefix = clash.expect("1000 objects give a 4-hex collision");
        assert!(err(s.resolve(&prefix)).contains(&format!("ambiguous short sha '{prefix}'")));
    }

    #[test]
    fn ref_name_wins_over_sha_prefix_and_branch_tag_clash_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let (mut b, c1, c2) = fixture(&repo);
        // a branch named like the prefix of another commit
        let prefix = c1[..7].to_string();
        b.branch(&prefix).unwrap();
        let s = Source::open(repo.to_str().unwrap(), t.path()).unwrap();
        assert_eq!(s.resolve(&prefix).unwrap().commit, c2);
        drop(s);
        b.branch("v1").unwrap(); // branch v1 at c2, tag v1 at c1
        let s = Source::open(repo.to_str().unwrap(), t.path()).unwrap();
        assert!(err(s.resolve("v1")).contains("ambiguous ref 'v1'"));
        assert_eq!(s.resolve("refs/tags/v1").unwrap().commit, c1);
    }

    #[test]
    fn missing_path_and_non_repo_say_so() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        let e = Source::open(missing.to_str().unwrap(), t.path()).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // a plain dir inside a repository must not open the parent
        let repo = t.path().join("repo");
        fixture(&repo);
        let sub = repo.join("sub");
        fs::create_dir(&sub).unwrap();
        let e = Source::open(sub.to_str().unwrap(), t.path()).unwrap_err();
        assert!(e.to_string().contains("is not a git repository"), "{e}");
        let e = Source::open(&url(&missing), &t.path().join("state")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!t.path().join("state").exists());
    }

    #[test]
    fn remote_urls_refuse_passwords_and_unpinned_ssh_without_showing_credentials() {
        let t = tempfile::tempdir().unwrap();
        let opts = RemoteOptions {
            credentials_dir: t.path().join("credentials.d"),
            ..RemoteOptions::default()
        };
        for u in [
            "https://user:s3cret@example.invalid/repo.git",
            "ssh://git:s3cret@example.invalid/repo.git",
        ] {
            assert!(is_remote(u));
            let e = Source::open_with(u, t.path(), &opts).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{e}");
            let e = e.to_string();
            assert!(e.contains("password or token in the repository URL"), "{e}");
            assert!(!e.contains("s3cret") && !e.contains("user:"), "{e}");
        }
        // ssh without a pinned host key: refused before any connection, as a fetch failure
        for u in [
            "git@example.invalid:org/repo.git",
            "ssh://git@example.invalid/repo.git",
        ] {
            let e = Source::open_with(u, &t.path().join("state"), &opts).unwrap_err();
            assert!(matches!(e, Error::Fetch(_)), "{e}");
            assert!(e.to_string().contains("no pinned host key"), "{e}");
        }
        let st = fetch_state::load(&t.path().join("state")).unwrap();
        assert_eq!(st.failures_total, 2);
        assert_eq!(st.last_failure_kind.as_deref(), Some("host_key"));
        let e = Source::open("http://tok@example.invalid/r", t.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported URL scheme 'http://'") && !e.contains("tok@"),
            "{e}"
        );
        assert!(!is_remote("/srv/repo") && !is_remote("./a:b") && !is_remote("repo"));
        assert!(is_remote("file:///srv/repo") && is_remote("git://h/r.git"));
        assert_eq!(
            redact("failed 'https://u:p@h.invalid/x' and ssh://k@h/y"),
            "failed 'https://h.invalid/x' and ssh://h/y"
        );
    }

    #[test]
    fn file_mirror_fetches_and_picks_up_new_commits() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let state = t.path().join("state");
        let (mut b, c1, c2) = fixture(&repo);
        let s = Source::open(&url(&repo), &state).unwrap();
        assert!(s.is_mirror());
        assert!(s.git_dir().starts_with(state.join("mirrors")));
        assert_eq!(s.location(), url(&repo));
        assert_eq!(s.resolve("main").unwrap().commit, c2);
        assert_eq!(s.resolve("origin/main").unwrap().commit, c2);
        assert_eq!(s.resolve("HEAD").unwrap().commit, c2);
        assert_eq!(s.resolve("v1").unwrap().commit, c1);
        assert_eq!(s.resolve("va2").unwrap().commit, c2);
        assert_eq!(s.resolve(&c1[..8]).unwrap().commit, c1);
        let snap = s.snapshot(&s.resolve("main").unwrap()).unwrap();
        assert_eq!(snap.files.len(), 2);
        drop(s);

        let c3 = b.commit_files(&[("a", b"new\n")], "three").unwrap();
        b.tag("v3").unwrap();
        let s = Source::open(&url(&repo), &state).unwrap();
        assert_eq!(s.resolve("main").unwrap().commit, c3);
        assert_eq!(s.resolve("v3").unwrap().commit, c3);
        drop(s);

        // deleted upstream tags disappear from the mirror (pruned)
        Repository::open(&repo).unwrap().tag_delete("v3").unwrap();
        let s = Source::open(&url(&repo), &state).unwrap();
        assert!(err(s.resolve("v3")).contains("unknown ref 'v3'"));
        let mirrors: Vec<_> = fs::read_dir(state.join("mirrors")).unwrap().collect();
        assert_eq!(mirrors.len(), 1);
    }

    #[test]
    fn mirror_head_follows_the_source_default_branch() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let (mut b, c1, c2) = fixture(&repo);
        b.branch("trunk").unwrap();
        let git = Repository::open(&repo).unwrap();
        git.reference("refs/heads/trunk", Oid::from_str(&c1).unwrap(), true, "t")
            .unwrap();
        git.set_head("refs/heads/trunk").unwrap();
        let s = Source::open(&url(&repo), &t.path().join("state")).unwrap();
        assert_eq!(s.resolve("HEAD").unwrap().commit, c1);
        assert_eq!(s.resolve("main").unwrap().commit, c2);
    }

    #[test]
    fn stale_lock_files_of_a_killed_fetch_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let state = t.path().join("state");
        let (mut b, _c1, _c2) = fixture(&repo);
        let dir = Source::open(&url(&repo), &state)
            .unwrap()
            .git_dir()
            .to_path_buf();
        let c3 = b.commit_files(&[("a", b"3")], "three").unwrap();
        fs::write(dir.join("refs/heads/main.lock"), "").unwrap();
        fs::write(dir.join("packed-refs.lock"), "").unwrap();
        let s = Source::open(&url(&repo), &state).unwrap();
        assert_eq!(s.resolve("main").unwrap().commit, c3);
        assert!(!dir.join("refs/heads/main.lock").exists());
    }

    #[test]
    fn half_created_mirror_is_recreated() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let state = t.path().join("state");
        let (_b, _c1, c2) = fixture(&repo);
        let u = url(&repo);
        let dir = state
            .join("mirrors")
            .join(format!("{}.git", mirror_key(&u)));
        // what a killed init_bare leaves: a directory without HEAD/objects
        fs::create_dir_all(dir.join("refs")).unwrap();
        // and a stale temp dir of an interrupted first fetch
        let stale = state
            .join("mirrors")
            .join(format!(".{}.git.tmp-1", mirror_key(&u)));
        fs::create_dir_all(&stale).unwrap();
        let s = Source::open(&u, &state).unwrap();
        assert_eq!(s.resolve("main").unwrap().commit, c2);
        assert!(!stale.exists());
    }

    #[test]
    fn local_bare_repo_opens_in_place() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("bare.git");
        let mut b = RepoBuilder::init_bare(&repo).unwrap();
        let c = b.commit_files(&[("x", b"1")], "one").unwrap();
        let s = Source::open(repo.to_str().unwrap(), &t.path().join("state")).unwrap();
        assert!(!s.is_mirror());
        assert_eq!(s.resolve("main").unwrap().commit, c);
        assert!(
            !t.path().join("state").exists(),
            "local repos create no mirror"
        );
    }

    #[test]
    fn snapshot_reads_files_symlinks_and_exec_bit() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("tree");
        fs::create_dir_all(dir.join("services/web/web.service.d")).unwrap();
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("services/web/web.service"), "[Service]\n").unwrap();
        fs::write(dir.join("services/web/web.service.d/10-x.conf"), "[Unit]\n").unwrap();
        fs::write(dir.join("services/webx"), "x").unwrap();
        fs::write(dir.join("bin/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("../bin/run", dir.join("services/link")).unwrap();
        let repo = t.path().join("repo");
        let mut b = RepoBuilder::init(&repo).unwrap();
        b.commit_dir(&dir, "tree").unwrap();
        let s = Source::open(repo.to_str().unwrap(), t.path()).unwrap();
        let snap = s.snapshot(&s.resolve("main").unwrap()).unwrap();
        assert_eq!(
            snap.get("bin/run"),
            Some(&RepoEntry::File {
                data: b"#!/bin/sh\n".to_vec(),
                executable: true
            })
        );
        assert_eq!(
            snap.get("services/web/web.service"),
            Some(&RepoEntry::File {
                data: b"[Service]\n".to_vec(),
                executable: false
            })
        );
        assert_eq!(
            snap.get("services/link"),
            Some(&RepoEntry::Symlink {
                target: "../bin/run".into()
            })
        );
        let web: Vec<&str> = snap.under("services/web").map(|(p, _)| p).collect();
        assert_eq!(
            web,
            [
                "services/web/web.service",
                "services/web/web.service.d/10-x.conf"
            ]
        );
        assert_eq!(snap.under("services/web/").count(), 2);
        assert_eq!(snap.under("").count(), 5);
        assert_eq!(snap.under("nothing").count(), 0);
    }

    #[test]
    fn submodule_is_an_input_error_naming_the_path() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("repo");
        let mut b = RepoBuilder::init(&path).unwrap();
        let c = b.commit_files(&[("x", b"1")], "one").unwrap();
        let repo = Repository::open(&path).unwrap();
        let commit = repo.find_commit(Oid::from_str(&c).unwrap()).unwrap();
        let mut sub = repo.treebuilder(None).unwrap();
        sub.insert("lib", commit.id(), 0o160000).unwrap();
        let sub_id = sub.write().unwrap();
        let mut root = repo.treebuilder(Some(&commit.tree().unwrap())).unwrap();
        root.insert("vendor", sub_id, 0o040000).unwrap();
        let tree = repo.find_tree(root.write().unwrap()).unwrap();
        let sig = commit.author();
        let c2 = repo
            .commit(
                Some("refs/heads/main"),
                &sig,
                &sig,
                "sub",
                &tree,
                &[&commit],
            )
            .unwrap();
        let s = Source::open(path.to_str().unwrap(), t.path()).unwrap();
        let e = s
            .snapshot(&s.resolve(&c2.to_string()).unwrap())
            .unwrap_err();
        assert!(matches!(e, Error::Input(_)));
        assert!(
            e.to_string()
                .contains("vendor/lib: submodules are not supported"),
            "{e}"
        );
    }

    #[test]
    fn crafted_tree_entries_are_input_errors_naming_the_path() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("repo");
        let mut b = RepoBuilder::init(&path).unwrap();
        let base: &[(&str, &[u8])] = &[("hosts/h/host.yaml", b"services: [x]\n")];
        let files = |name: &'static [u8]| -> Vec<&'static [u8]> {
            vec![b"services", b"x", b"files", b"etc", name, b"f"]
        };
        let cases: Vec<(Vec<&[u8]>, &str)> = vec![
            (
                vec![
                    b"services",
                    b"x",
                    b"files",
                    b"etc",
                    b"..",
                    b"..",
                    b"root",
                    b".ssh",
                    b"authorized_keys",
                ],
                "services/x/files/etc/..",
            ),
            (files(b"."), "services/x/files/etc/."),
            (files(b".git"), "services/x/files/etc/.git"),
            (files(b".GIT"), "services/x/files/etc/.GIT"),
            (files(b"a/b"), "services/x/files/etc/a/b"),
            (vec![b".Git", b"config"], ".Git"),
        ];
        for (raw, named) in cases {
            let c = b
                .commit_crafted(base, &raw, b"ssh-ed25519 AAAA\n", "crafted")
                .unwrap();
            let s = Source::open(path.to_str().unwrap(), t.path()).unwrap();
            let e = s.snapshot(&s.resolve(&c).unwrap()).unwrap_err();
            assert!(matches!(e, Error::Input(_)), "{named}: {e}");
            assert!(
                e.to_string()
                    .contains(&format!("{named}: tree entry name is empty, '.', '..'")),
                "{named}: {e}"
            );
        }
        // a name libgit2 cannot even parse (empty) fails the snapshot too
        let c = b
            .commit_crafted(base, &[b"services", b"", b"f"], b"x", "crafted")
            .unwrap();
        let s = Source::open(path.to_str().unwrap(), t.path()).unwrap();
        assert!(s.snapshot(&s.resolve(&c).unwrap()).is_err());
        // and a plain tree still reads
        let c = b.commit_files(base, "plain").unwrap();
        assert!(s.snapshot(&s.resolve(&c).unwrap()).is_ok());
    }

    /// A repo with host h1 selecting web, an unselected service, a shared file reached by a
    /// symlink from web, and a runtime artifact outside `runtimes/`.
    fn lazy_fixture(root: &Path) -> (RepoBuilder, String) {
        let mut b = RepoBuilder::init(root).unwrap();
        let c = b
            .commit_files(
                &[
                    ("hosts/h1/host.yaml", b"services: [web]\n"),
                    ("hosts/h2/host.yaml", b"services: [other]\n"),
                    ("services/web/web.service", b"[Service]\n"),
                    ("services/web/files/etc/a", b"aaaa"),
                    ("services/other/other.service", b"[Service]\n"),
                    ("services/other/files/etc/big", &[b'x'; 4096]),
                    ("common/shared", b"shared"),
                ],
                "one",
            )
            .unwrap();
        (b, c)
    }

    #[test]
    fn revision_tree_reads_only_what_is_asked_and_counts_it_once() {
        let t = tempfile::tempdir().unwrap();
        let (_b, c) = lazy_fixture(&t.path().join("repo"));
        let s = Source::open(t.path().join("repo").to_str().unwrap(), t.path()).unwrap();
        let rev = s.resolve(&c).unwrap();
        let limits = ReadLimits {
            max_bytes: 100,
            max_file_bytes: 1000,
            ..ReadLimits::default()
        };
        let tree = s.tree(&rev, limits).unwrap();
        assert_eq!(
            tree.paths_under("services/web").unwrap(),
            ["services/web/files/etc/a", "services/web/web.service"]
        );
        // asked twice, read and counted once
        for _ in 0..3 {
            assert_eq!(
                tree.entry("services/web/files/etc/a").unwrap(),
                Some(RepoEntry::File {
                    data: b"aaaa".to_vec(),
                    executable: false
                })
            );
        }
        assert_eq!(tree.state.borrow().bytes, 4);
        // outside any listed directory: looked up by path
        assert!(tree.exists("common/shared").unwrap());
        assert!(!tree.exists("common/none").unwrap());
        assert!(!tree.exists("services/web/files").unwrap(), "a directory");
        assert!(tree.entry("services/web/nope").unwrap().is_none());
        assert!(tree.paths_under("nothing").unwrap().is_empty());
        // the unselected service was never listed or read
        let st = tree.state.borrow();
        assert!(!st.index.keys().any(|k| k.starts_with("services/other")));
        assert_eq!(st.entries, 4, "web's entries: files, etc, a, web.service");
        drop(st);
        // and is still refused when it is asked for: over the per-file cap of 1000 bytes
        let e = tree.entry("services/other/files/etc/big").unwrap_err();
        assert_eq!(e.location.file, "services/other/files/etc/big");
        assert!(
            e.message
                .contains("4096 bytes, more than the 1000 bytes one file or tree may have (CORE_OPS_MAX_FILE_BYTES)"),
            "{e}"
        );
    }

    #[test]
    fn revision_tree_reads_each_git_object_once_and_still_counts_every_path() {
        let t = tempfile::tempdir().unwrap();
        let mut b = RepoBuilder::init(&t.path().join("repo")).unwrap();
        let unit = b"[Service]\nExecStart=/bin/true\n";
        let files: Vec<(String, &[u8])> = (0..5)
            .flat_map(|i| {
                [
                    (format!("services/s{i}/s{i}.service"), &unit[..]),
                    (format!("services/s{i}/s{i}.service.d/10.conf"), b"[Unit]\n"),
                ]
            })
            .collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        let c = b.commit_files(&refs, "same blobs").unwrap();
        let s = Source::open(t.path().join("repo").to_str().unwrap(), t.path()).unwrap();
        let tree = s
            .tree(&s.resolve(&c).unwrap(), ReadLimits::default())
            .unwrap();
        for i in 0..5 {
            for p in tree.paths_under(&format!("services/s{i}")).unwrap() {
                assert!(tree.entry(&p).unwrap().is_some(), "{p}");
            }
        }
        let st = tree.state.borrow();
        // two distinct blobs; trees: root, services, five service dirs, one shared .d tree
        assert_eq!(st.blobs.len(), 2);
        assert_eq!(st.trees.len(), 2 + 5 + 1);
        // the caps count every path read and every entry visited, shared or not
        assert_eq!(st.bytes, 5 * (unit.len() as u64 + 7));
        assert_eq!(st.entries, 5 * 3);
    }

    #[test]
    fn small_loose_objects_are_read_without_their_header_and_others_with_it() {
        let t = tempfile::tempdir().unwrap();
        let (_b, c) = lazy_fixture(&t.path().join("repo"));
        let s = Source::open(t.path().join("repo").to_str().unwrap(), t.path()).unwrap();
        let rev = s.resolve(&c).unwrap();
        let read_all = |limits: ReadLimits| {
            let tree = s.tree(&rev, limits).unwrap();
            let files: Vec<(String, Option<RepoEntry>)> = tree
                .paths_under("services/web")
                .unwrap()
                .into_iter()
                .map(|p| {
                    let e = tree.entry(&p).unwrap();
                    (p, e)
                })
                .collect();
            let headers = tree.state.borrow().headers;
            (files, headers)
        };
        // loose objects of a few dozen bytes: bounded far below the default cap
        let (loose, headers) = read_all(ReadLimits::default());
        assert_eq!(headers, 0);
        assert_eq!(loose.len(), 2);
        // a cap the bound does not fit under: every object's header is read first
        let tight = ReadLimits {
            max_file_bytes: 1000,
            ..ReadLimits::default()
        };
        let (same, headers) = read_all(tight);
        assert_eq!(same, loose);
        assert!(headers >= 4, "root, services, web, files..., a: {headers}");
        // and an object over the cap is still refused by its header, unread
        let tree = s.tree(&rev, tight).unwrap();
        let e = tree.entry("services/other/files/etc/big").unwrap_err();
        assert!(
            e.message.contains("4096 bytes, more than the 1000 bytes"),
            "{e}"
        );
        assert!(!tree.state.borrow().blobs.values().any(|b| b.len() == 4096));
        // packed objects are not found loose: headers read
        let gc = std::process::Command::new("git")
            .args(["gc", "-q"])
            .current_dir(t.path().join("repo"))
            .status()
            .unwrap();
        assert!(gc.success());
        let s = Source::open(t.path().join("repo").to_str().unwrap(), t.path()).unwrap();
        let tree = s.tree(&rev, ReadLimits::default()).unwrap();
        for p in tree.paths_under("services/web").unwrap() {
            assert_eq!(
                loose.iter().find(|(q, _)| *q == p).unwrap().1,
                tree.entry(&p).unwrap()
            );
        }
        assert!(tree.state.borrow().headers >= 4);
    }

    #[test]
    fn revision_tree_caps_are_input_errors_naming_path_and_cap() {
        let t = tempfile::tempdir().unwrap();
        let (_b, c) = lazy_fixture(&t.path().join("repo"));
        let s = Source::open(t.path().join("repo").to_str().unwrap(), t.path()).unwrap();
        let rev = s.resolve(&c).unwrap();
        let tree = |limits: ReadLimits| s.tree(&rev, limits).unwrap();
        let d = ReadLimits::default();

        let e = tree(ReadLimits {
            max_entries: 3,
            ..d
        })
        .paths_under("services/web")
        .unwrap_err();
        assert!(e.message.contains("more than 3 tree entries"), "{e}");
        assert!(e.message.contains("CORE_OPS_MAX_TREE_ENTRIES"), "{e}");

        let e = tree(ReadLimits { max_depth: 3, ..d })
            .paths_under("services/web")
            .unwrap_err();
        assert_eq!(e.location.file, "services/web/files/etc");
        assert!(
            e.message
                .contains("deeper than 3 levels (CORE_OPS_MAX_TREE_DEPTH)"),
            "{e}"
        );
        let e = tree(ReadLimits { max_depth: 3, ..d })
            .entry("services/web/files/etc/a")
            .unwrap_err();
        assert!(e.message.contains("CORE_OPS_MAX_TREE_DEPTH"), "{e}");

        let small = tree(ReadLimits { max_bytes: 12, ..d });
        small.entry("services/web/web.service").unwrap();
        let e = small.entry("services/web/files/etc/a").unwrap_err();
        assert_eq!(e.location.file, "services/web/files/etc/a");
        assert!(
            e.message
                .contains("reading its 4 bytes would exceed the 12 bytes")
                && e.message.contains("CORE_OPS_MAX_TREE_BYTES"),
            "{e}"
        );

        // a tree object is itself held to the per-object cap before it is parsed
        let e = tree(ReadLimits {
            max_file_bytes: 40,
            ..d
        })
        .paths_under("")
        .unwrap_err();
        assert!(e.message.contains("CORE_OPS_MAX_FILE_BYTES"), "{e}");
    }

    #[test]
    fn revision_tree_refuses_crafted_names_on_lookup_too() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("repo");
        let mut b = RepoBuilder::init(&path).unwrap();
        let c = b
            .commit_crafted(
                &[("hosts/h/host.yaml", b"services: [x]\n")],
                &[b".git", b"config"],
                b"x",
                "crafted",
            )
            .unwrap();
        let s = Source::open(path.to_str().unwrap(), t.path()).unwrap();
        let tree = s
            .tree(&s.resolve(&c).unwrap(), ReadLimits::default())
            .unwrap();
        let e = tree.entry(".git/config").unwrap_err();
        assert!(e.message.contains("tree entry name"), "{e}");
        // the host's own directory is unaffected
        assert!(tree.exists("hosts/h/host.yaml").unwrap());
    }

    #[test]
    fn render_through_the_lazy_tree_follows_symlinks_outside_the_service() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("tree");
        fs::create_dir_all(dir.join("services/web/files/etc")).unwrap();
        fs::create_dir_all(dir.join("hosts/h1")).unwrap();
        fs::create_dir_all(dir.join("common")).unwrap();
        fs::write(dir.join("hosts/h1/host.yaml"), "services: [web]\n").unwrap();
        fs::write(
            dir.join("services/web/web.service"),
            "[Service]\nExecStart=/bin/true\n",
        )
        .unwrap();
        fs::write(dir.join("common/app.env"), "A=1\n").unwrap();
        std::os::unix::fs::symlink(
            "../../../../common/app.env",
            dir.join("services/web/files/etc/app.env"),
        )
        .unwrap();
        let repo = t.path().join("repo");
        let mut b = RepoBuilder::init(&repo).unwrap();
        b.commit_dir(&dir, "tree").unwrap();
        let s = Source::open(repo.to_str().unwrap(), t.path()).unwrap();
        let rev = s.resolve("main").unwrap();
        let tree = s.tree(&rev, ReadLimits::default()).unwrap();
        let scratch = crate::config::scratch();
        let mut paths = scratch.paths.clone();
        paths.host_file_roots = vec![PathBuf::from("/etc")];
        let desired = crate::render::render(&tree, &rev, "h1", &paths).unwrap();
        assert_eq!(desired.resources["file:/etc/app.env"].content, b"A=1\n");
        // the same as rendering the whole snapshot
        let full =
            crate::render::render(&s.snapshot(&rev).unwrap().files, &rev, "h1", &paths).unwrap();
        assert_eq!(desired, full);
        let e = crate::render::render(&tree, &rev, "nope", &paths).unwrap_err();
        assert!(e.message.contains("(known hosts: h1)"), "{e}");
    }

    #[test]
    fn revision_display_and_serde() {
        let commit = "454ac5f1e2d3c4b5a69788796a5b4c3d2e1f0a9b".to_string();
        let rev = |r: &str| Revision {
            commit: commit.clone(),
            requested_ref: r.into(),
        };
        assert_eq!(rev("v1").to_string(), "454ac5f1 (v1)");
        assert_eq!(rev("v1").short(), "454ac5f1");
        assert_eq!(rev(&commit).to_string(), "454ac5f1");
        assert_eq!(rev("454ac5f1").to_string(), "454ac5f1");
        assert_eq!(rev("454ac5f").to_string(), "454ac5f1");
        assert_eq!(rev("main").to_string(), "454ac5f1 (main)");
        let json = serde_json::to_string(&rev("v1")).unwrap();
        assert_eq!(
            json,
            format!("{{\"commit\":\"{commit}\",\"requested_ref\":\"v1\"}}")
        );
        assert_eq!(serde_json::from_str::<Revision>(&json).unwrap(), rev("v1"));
    }

    #[test]
    fn snapshot_of_unknown_commit_fails() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        fixture(&repo);
        let s = Source::open(repo.to_str().unwrap(), t.path()).unwrap();
        let rev = Revision {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            requested_ref: "x".into(),
        };
        assert!(
            s.snapshot(&rev)
                .unwrap_err()
                .to_string()
                .contains("not found")
        );
    }
}
