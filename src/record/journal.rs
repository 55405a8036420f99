//! The in-flight journal (`<state dir>/inflight.json`): written before apply touches the host,
//! removed after the run is recorded.
//!
//! Why: a run killed after writing a file but before restarting its unit leaves a host whose
//! files already match the desired state, so a plain diff would call it converged. The journal
//! tells the next plan which objects were mid-change, and they are re-applied (writes are
//! idempotent) with their restarts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;

/// What an interrupted run was doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inflight {
    /// Schema version (1).
    pub schema_version: u32,
    /// Checksum of the plan being executed.
    pub intent_checksum: String,
    /// Desired revision being applied.
    pub desired_revision: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// Ids of objects the run was going to change.
    pub objects: Vec<String>,
    /// `last_applied` when the run started: the run that completes an interrupted one
    /// records the transition from here, so it is receipted once and from where it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<String>,
}

/// Path of the journal.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("inflight.json")
}

/// Read the journal if a previous run left one; an unreadable journal counts as "every
/// object might be mid-change" only if it parses, otherwise it is ignored with the caller
/// warned through `Err`.
pub fn load(state_dir: &Path) -> Result<Option<Inflight>> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::Config(format!(
                "{}: unreadable in-flight journal: {e}",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

/// Write the journal atomically. A journal there that cannot be read is kept beside it
/// (`inflight.json.unreadable-<pid>`, named in a warning), never silently overwritten.
pub fn save(state_dir: &Path, j: &Inflight) -> Result<()> {
    let p = path(state_dir);
    if let Err(e) = load(state_dir) {
        let aside = state_dir.join(format!("inflight.json.unreadable-{}", std::process::id()));
        fsutil::rename_synced(&p, &aside)?;
        tracing::warn!("{e}; kept as {}", aside.display());
    }
    fsutil::write_json(&p, j)
}

/// Remove the journal once the run has been recorded.
pub fn clear(state_dir: &Path) -> Result<()> {
    fsutil::remove_synced(&path(state_dir))
}
