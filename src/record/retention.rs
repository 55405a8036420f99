//! Retention of the state dir's records, enforced at the end of every run that recorded
//! something: results documents (`<state dir>/results/*.json`) and status.json `history`
//! keep the newest `keep` (`--keep-results` / `CORE_OPS_KEEP_RESULTS`, default 100; 0 keeps
//! all); receipts are never deleted but sealed into archives (see [`super::archive`]) once
//! more than `receipts_per_archive` (1000) are live.
//!
//! Why bounded: the agent runs every few minutes for years; a state dir that grows by every
//! transition forever fills `/var` eventually. Receipts are the audit trail and stay; results
//! are detail a receipt names by digest, and history only serves `--rollback-to`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::record::archive;
use crate::record::status::HistoryEntry;

/// Default of `--keep-results`.
pub const DEFAULT_KEEP: usize = 100;

/// Receipts per sealed archive.
pub const DEFAULT_RECEIPTS_PER_ARCHIVE: usize = 1000;

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Results documents and history entries kept (newest); 0 keeps all.
    pub keep: usize,
    /// Live receipts beyond which the oldest are sealed into an archive; 0 never archives.
    pub receipts_per_archive: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: DEFAULT_KEEP,
            receipts_per_archive: DEFAULT_RECEIPTS_PER_ARCHIVE,
        }
    }
}

/// What one enforcement did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Enforced {
    /// Results documents removed.
    pub results_removed: usize,
    /// Archives sealed.
    pub archives_sealed: usize,
}

/// Drop all but the newest `keep` history entries (0: keep all).
pub fn trim_history(history: &mut Vec<HistoryEntry>, keep: usize) {
    if keep > 0 && history.len() > keep {
        history.drain(..history.len() - keep);
    }
}

/// Remove all but the newest `keep` results documents (0: keep all). Their names start with
/// the run's finish time (`20261126T134605Z-<plan>.json`), so name order is time order.
pub fn prune_results(state_dir: &Path, keep: usize) -> Result<usize> {
    let dir = state_dir.join("results");
    if keep == 0 {
        return Ok(0);
    }
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    let mut files: Vec<std::path::PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(fsutil::TEMP_PREFIX))
        })
        .collect();
    if files.len() <= keep {
        return Ok(0);
    }
    files.sort();
    let n = files.len() - keep;
    for p in &files[..n] {
        fsutil::remove_synced(p)?;
    }
    Ok(n)
}

/// Prune results and seal receipt archives.
pub fn enforce(state_dir: &Path, r: &Retention) -> Result<Enforced> {
    Ok(Enforced {
        results_removed: prune_results(state_dir, r.keep)?,
        archives_sealed: archive::rotate(state_dir, r.receipts_per_archive)?.len(),
    })
}
