//! Source: open (or mirror) the desired-state repository with git2, resolve the requested ref
//! to an immutable commit, and read every file straight from that commit's tree.
//!
//! Why no working tree: reading from the object database is atomic per commit, needs no
//! checkout on the host, and a half-updated clone can never be rendered.

// CONTRACT (implemented by the source helper):
//
// pub struct Revision { pub commit: String /* 40 hex */, pub requested_ref: String }
// impl Revision { pub fn short(&self) -> &str /* first 8 */; }
// impl Display for Revision -> "454ac5f1 (v1)" (ref omitted when it equals the full or short sha)
//
// pub enum RepoEntry { File { data: Vec<u8>, executable: bool }, Symlink { target: String } }
// pub struct Snapshot { pub revision: Revision, pub files: BTreeMap<String, RepoEntry> }
//   (repo-relative paths with '/' separators, every blob and symlink of the commit's tree)
//
// pub struct Source { .. }
// impl Source {
//   pub fn open(repo: &str, state_dir: &Path) -> Result<Source, Error>;
//       local path (work tree or bare): opened in place, read-only.
//       file:// or any URL: fetched into a bare mirror <state_dir>/mirrors/<sha256(url)[..16]>.git
//   pub fn resolve(&self, requested: &str) -> Result<Revision, Error>;
//       branch, tag (lightweight or annotated), short or full sha, origin/<branch> for mirrors
//   pub fn snapshot(&self, rev: &Revision) -> Result<Snapshot, Error>;
//   pub fn location(&self) -> &str;  // what the operator gave
// }

// --- temporary stub until the source module lands (same public shapes as the contract) ---
use std::collections::BTreeMap;

/// An immutable revision and the ref the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revision {
    /// Full commit sha.
    pub commit: String,
    /// What was requested.
    pub requested_ref: String,
}

impl Revision {
    /// First 8 hex digits.
    pub fn short(&self) -> &str {
        &self.commit[..8.min(self.commit.len())]
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.short(), self.requested_ref)
    }
}

/// A tree entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoEntry {
    /// A blob.
    File {
        /// Content.
        data: Vec<u8>,
        /// Executable bit.
        executable: bool,
    },
    /// A symlink.
    Symlink {
        /// Target.
        target: String,
    },
}

/// Files of one commit.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The revision.
    pub revision: Revision,
    /// Files by path.
    pub files: BTreeMap<String, RepoEntry>,
}
