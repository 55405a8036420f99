//! The base revision the version policy compares with: `--base REF`, or else the newest
//! `vX.Y.Z` tag reachable from `HEAD`, or none (nothing released yet). Read from the object
//! database with git2, never by checking anything out.
//!
//! Why: "added since the base" and "the version at the base" are the two facts the policy
//! needs from history; everything else is read from the working tree being validated.

use std::collections::BTreeSet;
use std::path::Path;

use git2::{Commit, Repository, Tree};

use super::fragments;
use super::version::Version;

/// What the policy needs from the base revision.
///
/// Why owned values: the repository handle stays in this module.
#[derive(Debug, Clone)]
pub struct Base {
    /// How the base was named (`v0.1.0`, or the `--base` argument).
    pub name: String,
    /// Its commit id.
    pub commit: String,
    /// `Cargo.toml` at the base, if it had one.
    pub cargo_toml: Option<String>,
    /// File names under `changes/` at the base.
    pub fragments: BTreeSet<String>,
    /// Paths that differ between the base and the working tree (tracked and untracked,
    /// ignored files excluded).
    pub changed_paths: Vec<String>,
}

/// Open the repository containing `dir`, if any, and its work tree root.
///
/// Why optional: `validate` also checks a plain directory (no history: no version policy).
pub fn discover(dir: &Path) -> Option<(Repository, std::path::PathBuf)> {
    let repo = Repository::discover(dir).ok()?;
    let root = repo.workdir()?.to_path_buf();
    Some((repo, root))
}

/// The newest `vX.Y.Z` tag whose commit is `HEAD` or one of its ancestors.
///
/// Why reachable only: a tag on another branch is not this line's last release.
pub fn newest_tag(repo: &Repository) -> Result<Option<String>, String> {
    let Ok(head) = repo.head().and_then(|h| h.peel_to_commit()) else {
        return Ok(None);
    };
    let names = repo
        .tag_names(Some("v*"))
        .map_err(|e| format!("cannot list tags: {}", e.message()))?;
    let mut best: Option<(Version, String)> = None;
    for name in names.iter().flatten().flatten() {
        let Some(v) = name.strip_prefix('v').and_then(Version::parse) else {
            continue;
        };
        let Ok(commit) = repo
            .revparse_single(&format!("refs/tags/{name}"))
            .and_then(|o| o.peel_to_commit())
        else {
            continue;
        };
        let reachable = commit.id() == head.id()
            || repo
                .graph_descendant_of(head.id(), commit.id())
                .unwrap_or(false);
        if reachable && best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, name.to_string()));
        }
    }
    Ok(best.map(|(_, n)| n))
}

fn blob_text(repo: &Repository, tree: &Tree, path: &str) -> Option<String> {
    let entry = tree.get_path(Path::new(path)).ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    Some(String::from_utf8_lossy(blob.content()).into_owned())
}

/// Load the base named `name` (a ref, tag or commit).
///
/// Why an error string: an unknown `--base` is a usage error, not a finding.
pub fn load(repo: &Repository, name: &str) -> Result<Base, String> {
    let commit: Commit = repo
        .revparse_single(name)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| {
            format!(
                "--base {name}: not a commit in this repository ({})",
                e.message()
            )
        })?;
    let tree = commit
        .tree()
        .map_err(|e| format!("--base {name}: {}", e.message()))?;
    let mut frags = BTreeSet::new();
    if let Ok(entry) = tree.get_path(Path::new(fragments::DIR))
        && let Ok(sub) = repo.find_tree(entry.id())
    {
        for e in sub.iter() {
            if let Ok(n) = e.name() {
                frags.insert(n.to_string());
            }
        }
    }
    let mut opts = git2::DiffOptions::new();
    opts.include_untracked(true).recurse_untracked_dirs(true);
    let diff = repo
        .diff_tree_to_workdir_with_index(Some(&tree), Some(&mut opts))
        .map_err(|e| {
            format!(
                "cannot compare {name} with the working tree: {}",
                e.message()
            )
        })?;
    let mut changed = BTreeSet::new();
    for d in diff.deltas() {
        for f in [d.old_file(), d.new_file()] {
            if let Some(p) = f.path() {
                changed.insert(p.to_string_lossy().into_owned());
            }
        }
    }
    Ok(Base {
        name: name.to_string(),
        commit: commit.id().to_string(),
        cargo_toml: blob_text(repo, &tree, "Cargo.toml"),
        fragments: frags,
        changed_paths: changed.into_iter().collect(),
    })
}

/// True when `path` is release metadata (what a metadata-only release preparation touches).
///
/// Why: a version move that changes nothing else must be declared `release_preparation`.
pub fn is_metadata(path: &str) -> bool {
    matches!(path, "Cargo.toml" | "Cargo.lock" | "CHANGELOG.md")
        || path.starts_with(&format!("{}/", fragments::DIR))
}
