//! Repository fixtures: plain revision directories turned into a git history at run time.
//!
//! Why at run time: fixture trees stay reviewable as files in this repository, and every run
//! gets a fresh history whose commit ids the assertions can name through revision labels.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use core_ops_testkit::RepoBuilder;

/// A built repository: where it is and the commit id of each revision label.
#[derive(Debug, Clone)]
pub struct BuiltRepo {
    /// Revision label (tag) -> 40-hex commit id, in commit order by construction.
    pub revisions: BTreeMap<String, String>,
}

/// Commit each revision directory (relative to `repos`) in order onto `main` of a new
/// repository at `dest`, tagging each with its label.
pub fn build(repos: &Path, revisions: &[String], dest: &Path) -> Result<BuiltRepo> {
    let mut repo = RepoBuilder::init(dest)
        .with_context(|| format!("creating the fixture repository {}", dest.display()))?;
    let mut out = BTreeMap::new();
    for r in revisions {
        let label = super::scenario::revision_label(r).to_string();
        let sha = repo
            .commit_dir(&repos.join(r), &format!("fixture {r}"))
            .with_context(|| format!("committing fixture revision {r}"))?;
        repo.tag(&label)
            .with_context(|| format!("tagging fixture revision {r}"))?;
        out.insert(label, sha);
    }
    Ok(BuiltRepo { revisions: out })
}
