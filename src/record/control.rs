//! Persisted control state (`<state dir>/control.json`): recent attempts and the quarantine
//! of a desired revision that does not converge.
//!
//! Why: an agent on a timer must stop itself instead of flapping. The same failing object set
//! across `max_attempts` runs, or the same objects repaired as drift run after run
//! (oscillation), quarantines that desired revision: the agent stops re-applying it until a
//! new desired revision arrives or an operator runs `core-ops resume`. Versioned like
//! status.json, so it survives restarts and binary upgrades.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;

/// Control schema version.
pub const CONTROL_SCHEMA_VERSION: u32 = 1;

/// Attempts kept (enough for any sensible `max_attempts`).
const KEEP_ATTEMPTS: usize = 32;

/// One run that changed (or tried to change) the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// Desired revision.
    pub revision: String,
    /// `failed`, `partially_applied`, `repaired_drift`.
    pub kind: String,
    /// Objects that failed (or were repaired as drift), sorted.
    pub objects: Vec<String>,
    /// RFC 3339 time.
    pub at: String,
}

/// A desired revision the agent will not apply again until lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quarantine {
    /// The quarantined desired revision.
    pub revision: String,
    /// Requested ref it came from.
    pub requested_ref: String,
    /// `non_converging` or `oscillating`.
    pub reason: String,
    /// The objects involved, sorted.
    pub objects: Vec<String>,
    /// How many runs it took.
    pub attempts: usize,
    /// RFC 3339 time.
    pub since: String,
}

/// The control document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// [`CONTROL_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsControl`.
    pub kind: String,
    /// Recent attempts, oldest first.
    pub attempts: Vec<Attempt>,
    /// Active quarantine.
    pub quarantine: Option<Quarantine>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            schema_version: CONTROL_SCHEMA_VERSION,
            kind: "CoreOpsControl".into(),
            attempts: Vec::new(),
            quarantine: None,
        }
    }
}

/// Path of the control document.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.json")
}

/// Load; a missing file is the default. A corrupt or unknown-version file is an error: the
/// agent must not silently forget a quarantine.
pub fn load(state_dir: &Path) -> Result<Control> {
    let p = path(state_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Control::default()),
        Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Config(format!(
            "{}: unreadable control state ({e}); inspect it, then remove it or run core-ops resume",
            p.display()
        ))
    })?;
    if v.get("schema_version").and_then(|x| x.as_u64()) != Some(u64::from(CONTROL_SCHEMA_VERSION)) {
        return Err(Error::Config(format!(
            "{}: unsupported control schema_version (this build reads {CONTROL_SCHEMA_VERSION})",
            p.display()
        )));
    }
    serde_json::from_value(v)
        .map_err(|e| Error::Config(format!("{}: invalid control state: {e}", p.display())))
}

/// Save atomically.
pub fn save(state_dir: &Path, c: &Control) -> Result<()> {
    fsutil::write_json(&path(state_dir), c)
}

impl Control {
    /// Whether this desired revision is quarantined.
    pub fn quarantined(&self, revision: &str) -> Option<&Quarantine> {
        self.quarantine.as_ref().filter(|q| q.revision == revision)
    }

    /// A new desired revision lifts a quarantine of another one; returns the lifted one.
    pub fn lift_if_superseded(&mut self, revision: &str) -> Option<Quarantine> {
        if self
            .quarantine
            .as_ref()
            .is_some_and(|q| q.revision != revision)
        {
            self.attempts.clear();
            return self.quarantine.take();
        }
        None
    }

    /// Operator `resume`: clear quarantine and attempts.
    pub fn resume(&mut self) -> Option<Quarantine> {
        self.attempts.clear();
        self.quarantine.take()
    }

    /// A run converged with nothing repaired: the streak is over.
    pub fn record_clean(&mut self) {
        self.attempts.clear();
    }

    /// Record a failing run or a drift repair; quarantine the revision when the last
    /// `max_attempts` attempts are the same kind of trouble with the same objects.
    /// Returns the new quarantine, if this attempt caused one.
    pub fn record(
        &mut self,
        revision: &str,
        requested_ref: &str,
        kind: &str,
        objects: BTreeSet<String>,
        at: &str,
        max_attempts: u32,
    ) -> Option<Quarantine> {
        let objects: Vec<String> = objects.into_iter().collect();
        self.attempts.push(Attempt {
            revision: revision.to_string(),
            kind: kind.to_string(),
            objects: objects.clone(),
            at: at.to_string(),
        });
        if self.attempts.len() > KEEP_ATTEMPTS {
            let drop = self.attempts.len() - KEEP_ATTEMPTS;
            self.attempts.drain(..drop);
        }
        let n = max_attempts.max(1) as usize;
        if self.attempts.len() < n {
            return None;
        }
        let tail = &self.attempts[self.attempts.len() - n..];
        let repeating = tail.iter().all(|a| {
            a.revision == revision
                && a.objects == objects
                && (a.kind == "repaired_drift") == (kind == "repaired_drift")
        });
        if !repeating {
            return None;
        }
        let q = Quarantine {
            revision: revision.to_string(),
            requested_ref: requested_ref.to_string(),
            reason: if kind == "repaired_drift" {
                "oscillating".into()
            } else {
                "non_converging".into()
            },
            objects,
            attempts: n,
            since: at.to_string(),
        };
        self.quarantine = Some(q.clone());
        Some(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn same_failure_n_times_quarantines_and_new_revision_lifts() {
        let mut c = Control::default();
        assert!(
            c.record("b", "v2", "failed", set(&["unit:x"]), "t1", 3)
                .is_none()
        );
        assert!(
            c.record("b", "v2", "failed", set(&["unit:x"]), "t2", 3)
                .is_none()
        );
        let q = c
            .record("b", "v2", "failed", set(&["unit:x"]), "t3", 3)
            .unwrap();
        assert_eq!(q.reason, "non_converging");
        assert!(c.quarantined("b").is_some());
        assert!(c.lift_if_superseded("b").is_none());
        assert!(c.lift_if_superseded("c").is_some());
        assert!(c.quarantine.is_none() && c.attempts.is_empty());
    }

    #[test]
    fn a_different_failing_set_restarts_the_count() {
        let mut c = Control::default();
        c.record("b", "v2", "failed", set(&["unit:x"]), "t1", 2);
        assert!(
            c.record("b", "v2", "failed", set(&["unit:y"]), "t2", 2)
                .is_none()
        );
        assert!(
            c.record("b", "v2", "failed", set(&["unit:y"]), "t3", 2)
                .is_some()
        );
    }

    #[test]
    fn repeated_drift_repair_is_oscillation() {
        let mut c = Control::default();
        c.record("a", "v1", "repaired_drift", set(&["file:/etc/x"]), "t1", 2);
        let q = c
            .record("a", "v1", "repaired_drift", set(&["file:/etc/x"]), "t2", 2)
            .unwrap();
        assert_eq!(q.reason, "oscillating");
        assert!(c.resume().is_some());
        assert!(c.quarantine.is_none());
    }

    #[test]
    fn persisted_and_corrupt_state_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Control::default();
        c.record("b", "v2", "failed", set(&["unit:x"]), "t1", 1);
        save(d.path(), &c).unwrap();
        assert_eq!(load(d.path()).unwrap(), c);
        std::fs::write(path(d.path()), b"{").unwrap();
        assert!(load(d.path()).is_err());
    }
}
