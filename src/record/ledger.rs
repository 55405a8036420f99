//! The ownership ledger (`<state dir>/ledger.json`): every object core-ops wrote (or was told
//! to adopt) and every directory it created, recorded *before* it writes, not when a run
//! converges.
//!
//! Why: ownership decided by convergence forgets the files of a run that failed or was
//! rolled back; the next plan then sees them as someone else's files and refuses to touch
//! them, and a rollback leaves them behind. An object stays in the ledger until core-ops
//! removes it, whatever the outcome of the run that wrote it. A directory is removed only if
//! it is in the ledger (core-ops created it) and it is empty.
//!
//! A state dir from before the ledger existed is seeded from `last_applied` (what was
//! managed then), without directories: core-ops never removes a directory it cannot prove
//! it created.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::record::status::{AppliedResource, LastApplied};

/// Ledger schema version.
pub const LEDGER_SCHEMA_VERSION: u32 = 1;

/// What core-ops owns on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// [`LEDGER_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsLedger`.
    pub kind: String,
    /// Owned objects by resource id, as last written.
    pub objects: BTreeMap<String, AppliedResource>,
    /// Directories core-ops created (so it may remove them once empty).
    pub dirs: BTreeSet<PathBuf>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            schema_version: LEDGER_SCHEMA_VERSION,
            kind: "CoreOpsLedger".into(),
            objects: BTreeMap::new(),
            dirs: BTreeSet::new(),
        }
    }
}

/// Path of the ledger.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger.json")
}

impl Ledger {
    /// The ledger of a state dir written before ledgers existed: what `last_applied` managed.
    pub fn seeded(last: Option<&LastApplied>) -> Ledger {
        Ledger {
            objects: last.map(|l| l.resources.clone()).unwrap_or_default(),
            ..Ledger::default()
        }
    }

    /// Record that core-ops is about to write `id` (or adopts it), and the directories it is
    /// about to create for it.
    pub fn claim(&mut self, id: &str, record: AppliedResource, created_dirs: &[PathBuf]) {
        self.objects.insert(id.to_string(), record);
        self.dirs.extend(created_dirs.iter().cloned());
    }

    /// Forget an object core-ops removed from the host.
    pub fn release(&mut self, id: &str) {
        self.objects.remove(id);
    }

    /// Whether core-ops created `dir` and no owned object lives beneath it any more.
    fn may_remove_dir(&self, dir: &Path) -> bool {
        self.dirs.contains(dir) && !self.objects.values().any(|o| o.path.starts_with(dir))
    }

    /// Remove the directories above `removed` that core-ops created and that are now empty,
    /// innermost first; returns the directories removed. A directory core-ops did not create
    /// is never touched, and the walk stops there.
    pub fn prune_dirs_above(&mut self, removed: &Path) -> Vec<PathBuf> {
        let mut gone = Vec::new();
        let mut cur = removed.parent();
        while let Some(dir) = cur {
            if !self.may_remove_dir(dir) {
                break;
            }
            let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
            if !empty || std::fs::remove_dir(dir).is_err() {
                break;
            }
            if let Some(p) = dir.parent() {
                let _ = fsutil::sync_dir(p);
            }
            self.dirs.remove(dir);
            gone.push(dir.to_path_buf());
            cur = dir.parent();
        }
        gone
    }
}

/// The directories that writing a file at `path` will create: its missing ancestors,
/// outermost first.
pub fn missing_parents(path: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut cur = path.parent();
    while let Some(d) = cur {
        if std::fs::symlink_metadata(d).is_ok() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    missing
}

/// The ledger, or the one seeded from `last_applied` when there is none yet. A ledger that
/// cannot be read is moved aside (kept, named in the warning) and re-seeded: ownership is
/// then what last converged, the safe side (nothing unknown is removed).
pub fn load(state_dir: &Path, last: Option<&LastApplied>) -> (Ledger, Option<String>) {
    let p = path(state_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (Ledger::seeded(last), None);
        }
        Err(e) => {
            return (
                Ledger::seeded(last),
                Some(format!(
                    "cannot read {}: {e}; ownership taken from last_applied",
                    p.display()
                )),
            );
        }
    };
    match serde_json::from_slice::<Ledger>(&bytes) {
        Ok(l) if l.schema_version == LEDGER_SCHEMA_VERSION => (l, None),
        Ok(l) => (
            Ledger::seeded(last),
            Some(format!(
                "{} has schema_version {}, this build reads {LEDGER_SCHEMA_VERSION}; ownership taken from last_applied",
                p.display(),
                l.schema_version
            )),
        ),
        Err(e) => {
            let aside = state_dir.join(format!("ledger.json.corrupt-{}", std::process::id()));
            let moved = fsutil::rename_synced(&p, &aside).is_ok();
            (
                Ledger::seeded(last),
                Some(format!(
                    "{} is not a valid ledger ({e}){}; ownership taken from last_applied",
                    p.display(),
                    if moved {
                        format!(", moved aside to {}", aside.display())
                    } else {
                        String::new()
                    }
                )),
            )
        }
    }
}

/// Write the ledger atomically.
pub fn save(state_dir: &Path, ledger: &Ledger) -> Result<()> {
    fsutil::write_json(&path(state_dir), ledger)
        .map_err(|e| Error::Config(format!("cannot record ownership: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::normalize::Kind;

    fn rec(path: &Path) -> AppliedResource {
        AppliedResource {
            kind: Kind::File,
            path: path.to_path_buf(),
            digest: "sha256:x".into(),
            unit: None,
            enabled: false,
            started: false,
            depends_on: Vec::new(),
            mount_where: None,
            instances: Vec::new(),
            adopted: false,
            runs_to_completion: false,
            secret: false,
        }
    }

    #[test]
    fn only_created_empty_directories_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let pre = t.path().join("etc/pre.d");
        std::fs::create_dir_all(&pre).unwrap();
        let ours = t.path().join("etc/ours.d/sub");
        let f1 = pre.join("a.conf");
        let f2 = ours.join("b.conf");
        let mut l = Ledger::default();
        assert!(missing_parents(&f1).is_empty());
        let made = missing_parents(&f2);
        assert_eq!(made, vec![t.path().join("etc/ours.d"), ours.clone()]);
        l.claim("file:a", rec(&f1), &[]);
        l.claim("file:b", rec(&f2), &made);
        fsutil::write_atomic(&f1, b"1", None).unwrap();
        fsutil::write_atomic(&f2, b"2", None).unwrap();

        // the pre-existing directory stays although it is empty
        std::fs::remove_file(&f1).unwrap();
        l.release("file:a");
        assert!(l.prune_dirs_above(&f1).is_empty());
        assert!(pre.is_dir());

        // a created directory with someone else's file in it stays
        std::fs::write(ours.join("theirs"), b"x").unwrap();
        std::fs::remove_file(&f2).unwrap();
        l.release("file:b");
        assert!(l.prune_dirs_above(&f2).is_empty());
        assert!(ours.is_dir());
        std::fs::remove_file(ours.join("theirs")).unwrap();
        assert_eq!(
            l.prune_dirs_above(&f2),
            vec![ours.clone(), t.path().join("etc/ours.d")]
        );
        assert!(!t.path().join("etc/ours.d").exists());
        assert!(t.path().join("etc").is_dir());
        assert!(l.dirs.is_empty());
    }

    #[test]
    fn a_directory_with_an_owned_object_is_kept() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("x.d");
        let (a, b) = (d.join("a"), d.join("b"));
        let mut l = Ledger::default();
        l.claim("a", rec(&a), &missing_parents(&a));
        l.claim("b", rec(&b), &[]);
        fsutil::write_atomic(&a, b"1", None).unwrap();
        std::fs::remove_file(&a).unwrap();
        l.release("a");
        // b is owned and (for the ledger) lives there: the directory stays
        assert!(l.prune_dirs_above(&a).is_empty());
        assert!(d.is_dir());
    }

    #[test]
    fn missing_ledger_is_seeded_and_corrupt_one_moved_aside() {
        let t = tempfile::tempdir().unwrap();
        let mut resources = BTreeMap::new();
        resources.insert("file:x".to_string(), rec(Path::new("/etc/x")));
        let last = LastApplied {
            revision: "r".into(),
            requested_ref: "main".into(),
            applied_at: "t".into(),
            resources,
        };
        let (l, w) = load(t.path(), Some(&last));
        assert!(w.is_none());
        assert!(l.objects.contains_key("file:x"));
        std::fs::write(path(t.path()), b"{ nope").unwrap();
        let (l, w) = load(t.path(), Some(&last));
        let w = w.unwrap();
        assert!(w.contains("moved aside"), "{w}");
        assert!(l.objects.contains_key("file:x"));
        assert!(!path(t.path()).exists());
        save(t.path(), &l).unwrap();
        assert_eq!(load(t.path(), None).0, l);
    }
}
