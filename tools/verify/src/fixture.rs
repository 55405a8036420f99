//! Repository fixtures: plain revision directories turned into a git history at run time, and
//! the `git:` steps that change that history mid-scenario (a new commit, annotated and
//! lightweight tags, a ref forced backwards).
//!
//! Why at run time: fixture trees stay reviewable as files in this repository, and every run
//! gets a fresh history whose commit ids the assertions can name through revision labels.
//! Why on the host: the repository lives on the share; the guest has no git.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use core_ops_testkit::RepoBuilder;

use super::scenario::GitOp;

/// A built repository: the builder (for later `git:` commits) and the commit id of each
/// revision label.
#[derive(Debug)]
pub struct BuiltRepo {
    /// Revision label (tag) -> 40-hex commit id.
    pub revisions: BTreeMap<String, String>,
    /// The repository's directory.
    pub path: PathBuf,
    builder: RepoBuilder,
}

/// Commit each revision directory (relative to `repos`) in order onto `main` of a new
/// repository at `dest`, tagging each with its label.
pub fn build(repos: &Path, revisions: &[String], dest: &Path) -> Result<BuiltRepo> {
    let builder = RepoBuilder::init(dest)
        .with_context(|| format!("creating the fixture repository {}", dest.display()))?;
    let mut built = BuiltRepo {
        revisions: BTreeMap::new(),
        path: dest.to_path_buf(),
        builder,
    };
    for r in revisions {
        let label = super::scenario::revision_label(r).to_string();
        built.commit(repos, r, &label)?;
    }
    Ok(built)
}

impl BuiltRepo {
    /// Commit `repos/dir` as the whole next tree of `main`, tag it `label` (lightweight).
    pub fn commit(&mut self, repos: &Path, dir: &str, label: &str) -> Result<String> {
        let sha = self
            .builder
            .commit_dir(&repos.join(dir), &format!("fixture {dir}"))
            .with_context(|| format!("committing fixture revision {dir}"))?;
        self.builder
            .tag(label)
            .with_context(|| format!("tagging fixture revision {dir}"))?;
        self.revisions.insert(label.to_string(), sha.clone());
        Ok(sha)
    }

    fn sha(&self, label: &str) -> Result<git2::Oid> {
        let sha = self
            .revisions
            .get(label)
            .ok_or_else(|| anyhow!("{label:?} is not a revision label"))?;
        git2::Oid::from_str(sha).map_err(|e| anyhow!("{sha}: {}", e.message()))
    }

    /// Apply one `git:` step; returns a line for the harness log.
    pub fn apply(&mut self, repos: &Path, op: &GitOp) -> Result<String> {
        if let (Some(dir), Some(label)) = (&op.commit, op.commit_label()) {
            let sha = self.commit(repos, dir, &label)?;
            return Ok(format!("committed {dir} on main as {label} = {sha}"));
        }
        let repo = git2::Repository::open(&self.path)
            .map_err(|e| anyhow!("opening {}: {}", self.path.display(), e.message()))?;
        let git = |what: &str, e: git2::Error| anyhow!("{what}: {}", e.message());
        if let (Some(name), Some(to)) = (&op.force_ref, &op.to) {
            let oid = self.sha(to)?;
            let full = if name.starts_with("refs/") {
                name.clone()
            } else if repo.find_reference(&format!("refs/heads/{name}")).is_ok() {
                format!("refs/heads/{name}")
            } else {
                format!("refs/tags/{name}")
            };
            let old = repo
                .refname_to_id(&full)
                .map(|o| o.to_string())
                .unwrap_or_else(|_| "(none)".into());
            repo.reference(&full, oid, true, "core-ops-verify: forced")
                .map_err(|e| git(&format!("moving {full}"), e))?;
            return Ok(format!("forced {full} from {old} to {to} = {oid}"));
        }
        let (Some(tag), Some(at)) = (&op.tag, &op.at) else {
            bail!("git step names no operation");
        };
        let oid = self.sha(at)?;
        let obj = repo
            .find_object(oid, None)
            .map_err(|e| git("finding the commit", e))?;
        if op.annotated == Some(true) {
            let sig = git2::Signature::new(
                "core-ops-verify",
                "core-ops-verify@example.invalid",
                &git2::Time::new(1_767_225_600, 0),
            )
            .map_err(|e| git("signature", e))?;
            repo.tag(
                tag,
                &obj,
                &sig,
                &format!("core-ops-verify tag {tag}\n"),
                false,
            )
            .map_err(|e| git(&format!("annotated tag {tag}"), e))?;
        } else {
            repo.tag_lightweight(tag, &obj, false)
                .map_err(|e| git(&format!("tag {tag}"), e))?;
        }
        // a tag is a label too: assertions can say `revision: <tag>`
        self.revisions.insert(tag.clone(), oid.to_string());
        Ok(format!(
            "{} tag {tag} at {at} = {oid}",
            if op.annotated == Some(true) {
                "annotated"
            } else {
                "lightweight"
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repos() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("repos");
        for (rev, body) in [("one/v1", "a"), ("one/v2", "b"), ("one/v3", "c")] {
            std::fs::create_dir_all(r.join(rev)).unwrap();
            std::fs::write(r.join(rev).join("f"), body).unwrap();
        }
        (t, r)
    }

    fn resolve(path: &Path, name: &str) -> String {
        let repo = git2::Repository::open(path).unwrap();
        let obj = repo.revparse_single(name).unwrap();
        obj.peel_to_commit().unwrap().id().to_string()
    }

    /// Commit, both tag kinds and a forced ref each change the repository as said, and a
    /// missing label is an error.
    #[test]
    fn git_steps_change_the_history() {
        let (t, r) = repos();
        let dest = t.path().join("repo");
        let mut b = build(&r, &["one/v1".into(), "one/v2".into()], &dest).unwrap();
        let v1 = b.revisions["v1"].clone();
        let v2 = b.revisions["v2"].clone();
        assert_eq!(resolve(&dest, "refs/heads/main"), v2);

        let op = |y: &str| -> GitOp { serde_yaml::from_str(y).unwrap() };
        b.apply(&r, &op("commit: one/v3")).unwrap();
        let v3 = b.revisions["v3"].clone();
        assert_eq!(resolve(&dest, "refs/heads/main"), v3);
        assert_eq!(resolve(&dest, "v3"), v3);

        b.apply(&r, &op("{tag: rel-1, at: v1, annotated: true}"))
            .unwrap();
        b.apply(&r, &op("{tag: light, at: v2}")).unwrap();
        let repo = git2::Repository::open(&dest).unwrap();
        let annotated = repo.revparse_single("refs/tags/rel-1").unwrap();
        assert_eq!(annotated.kind(), Some(git2::ObjectType::Tag));
        assert_eq!(resolve(&dest, "rel-1"), v1);
        let light = repo.revparse_single("refs/tags/light").unwrap();
        assert_eq!(light.kind(), Some(git2::ObjectType::Commit));
        assert_eq!(b.revisions["rel-1"], v1);

        b.apply(&r, &op("{force_ref: main, to: v1}")).unwrap();
        assert_eq!(resolve(&dest, "refs/heads/main"), v1);
        b.apply(&r, &op("{force_ref: v2, to: v1}")).unwrap();
        assert_eq!(resolve(&dest, "refs/tags/v2"), v1);

        assert!(b.apply(&r, &op("{tag: x, at: nope}")).is_err());
        // a tag name that exists is refused (no silent move)
        assert!(b.apply(&r, &op("{tag: light, at: v1}")).is_err());
    }
}
