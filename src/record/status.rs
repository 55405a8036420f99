//! The status snapshot (`status.json`): what was last applied and how the last run went.
//!
//! Why versioned and strict: it is persisted control state that outlives binary upgrades; a
//! snapshot that is missing, cut short, corrupt or from an unknown schema is reported as
//! absent *with the reason*, never half-trusted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil;
use crate::provenance::Provenance;

/// Current status schema version.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

/// The persisted snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSnapshot {
    /// Always [`STATUS_SCHEMA_VERSION`] when written by this build.
    pub schema_version: u32,
    /// `CoreOpsStatus`.
    pub kind: String,
    /// Build that wrote it.
    pub core_ops: Provenance,
    /// Host name the snapshot is about.
    pub host: String,
    /// Repository location and the most recent desired revision seen.
    pub source: Option<SourceRecord>,
    /// The last revision that verifiably converged.
    pub last_applied: Option<LastApplied>,
    /// The most recent run (any outcome).
    pub last_run: Option<RunRecord>,
    /// Revisions that converged, oldest first (for rollback).
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// Installed runtimes by name (absent in snapshots written before runtimes existed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtimes: BTreeMap<String, RuntimeStatus>,
    /// Health of the receipt chain as the last run found it (absent in snapshots written
    /// before it was checked). `ok: false` means runs are refused until it is repaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<ReceiptChainHealth>,
}

/// The receipt chain as a run found it (`core-ops receipts verify` says more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptChainHealth {
    /// Whether the chain verified.
    pub ok: bool,
    /// When it was checked.
    pub checked_at: String,
    /// Sequence of the newest receipt.
    pub head_sequence: Option<u64>,
    /// Its sha256.
    pub head_digest: Option<String>,
    /// Where and how it breaks (`<file>: <what>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// How to repair it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<String>,
}

impl ReceiptChainHealth {
    /// From a verification report.
    pub fn of(r: &crate::record::receipts::ChainReport, now: &str) -> ReceiptChainHealth {
        ReceiptChainHealth {
            ok: r.ok,
            checked_at: now.to_string(),
            head_sequence: r.head_sequence,
            head_digest: r.head_digest.clone(),
            problem: r
                .problem
                .as_ref()
                .map(|p| format!("{}: {}", p.file, p.detail)),
            repair: r.repair.clone(),
        }
    }
}

pub use crate::runtime::{RuntimeReceiptRef, RuntimeStatus};

/// Where desired state came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    /// Repository as the operator gave it (credentials stripped).
    pub repo: String,
    /// Requested ref.
    pub requested_ref: String,
    /// Resolved commit.
    pub revision: String,
}

pub use crate::model::applied::{AppliedResource, LastApplied};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: String,
    /// Outcome name (`converged`, `failed`, ...).
    pub outcome: String,
    /// Desired revision of the run.
    pub desired_revision: String,
    /// Requested ref of the run.
    pub requested_ref: String,
    /// Checksum of the plan it executed.
    pub intent_checksum: String,
    /// Per-object diagnostics.
    #[serde(default)]
    pub diagnostics: Vec<String>,
}

/// One converged revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    /// Commit.
    pub revision: String,
    /// Requested ref.
    pub requested_ref: String,
    /// When it converged.
    pub applied_at: String,
}

/// Why there is no usable snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Absent {
    /// No file.
    Missing {
        /// Path looked at.
        path: String,
    },
    /// The file ends early (a writer was killed, or it was truncated).
    Partial {
        /// Path.
        path: String,
        /// Parser message.
        detail: String,
    },
    /// Not a status snapshot (bad JSON or wrong fields).
    Invalid {
        /// Path.
        path: String,
        /// Parser message.
        detail: String,
    },
    /// Written by a schema this build does not know.
    UnsupportedVersion {
        /// Path.
        path: String,
        /// The version found.
        found: u64,
    },
}

impl std::fmt::Display for Absent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Absent::Missing { path } => write!(f, "missing: {path} does not exist"),
            Absent::Partial { path, detail } => {
                write!(f, "partial: {path} is cut short ({detail})")
            }
            Absent::Invalid { path, detail } => {
                write!(f, "invalid: {path} is not a status snapshot ({detail})")
            }
            Absent::UnsupportedVersion { path, found } => write!(
                f,
                "unsupported version: {path} has schema_version {found}, this build reads {STATUS_SCHEMA_VERSION}"
            ),
        }
    }
}

/// Load the snapshot, or say why there is none. I/O errors other than "not found" are
/// reported as invalid (the content cannot be trusted).
pub fn load(path: &Path) -> std::result::Result<StatusSnapshot, Absent> {
    let p = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Absent::Missing { path: p });
        }
        Err(e) => {
            return Err(Absent::Invalid {
                path: p,
                detail: e.to_string(),
            });
        }
    };
    // the version first (nothing else of the document is built), then the snapshot
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        schema_version: Option<serde_json::Value>,
    }
    let version: Version = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) if e.classify() == serde_json::error::Category::Eof => {
            return Err(Absent::Partial {
                path: p,
                detail: e.to_string(),
            });
        }
        Err(e) => {
            return Err(Absent::Invalid {
                path: p,
                detail: e.to_string(),
            });
        }
    };
    match version.schema_version.as_ref().and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(STATUS_SCHEMA_VERSION) => {}
        Some(found) => return Err(Absent::UnsupportedVersion { path: p, found }),
        None => {
            return Err(Absent::Invalid {
                path: p,
                detail: "no schema_version".into(),
            });
        }
    }
    let mut snap: StatusSnapshot = serde_json::from_slice(&bytes).map_err(|e| Absent::Invalid {
        path: p,
        detail: e.to_string(),
    })?;
    // a later run that changed nothing recorded only its `last_run`, beside the snapshot
    if let Some(newer) = load_last_run(path).filter(|r| {
        snap.last_run
            .as_ref()
            .is_none_or(|old| r.finished_at > old.finished_at)
    }) {
        snap.last_run = Some(newer);
    }
    Ok(snap)
}

/// The few fields of status.json a run needs before it reads the whole snapshot, the rest of
/// the document (the digests of every applied object) skipped, not built.
#[derive(Deserialize)]
struct Glance {
    schema_version: u32,
    #[serde(default)]
    last_applied: Option<GlancedRevision>,
    #[serde(default)]
    receipts: Option<ReceiptChainHealth>,
}

#[derive(Deserialize)]
struct GlancedRevision {
    revision: String,
}

/// [`Glance`] of `path`; `None` when it is missing, unreadable or of another schema.
fn glance(path: &Path) -> Option<Glance> {
    let bytes = std::fs::read(path).ok()?;
    let doc: Glance = serde_json::from_slice(&bytes).ok()?;
    (doc.schema_version == STATUS_SCHEMA_VERSION).then_some(doc)
}

/// Only the revision of `last_applied` as status.json records it (`None` when the file is
/// missing, unreadable, or records none).
///
/// Why: knowing it before the revision is rendered lets the plan-time validators start on
/// what changed since (`pipeline`), while the whole snapshot is read on another thread.
pub fn load_last_applied_revision(path: &Path) -> Option<String> {
    glance(path)?.last_applied.map(|l| l.revision)
}

/// Only the receipt chain's health as status.json records it (`None` when the file is
/// missing or unreadable, `Some(None)` when it records none).
///
/// Why: every run compares the chain it verified with what status says, before the run
/// reads the whole snapshot to plan.
pub fn load_receipt_health(path: &Path) -> Option<Option<ReceiptChainHealth>> {
    glance(path).map(|g| g.receipts)
}

/// `status.json`'s sibling that holds only the `last_run` of a run that changed nothing:
/// `<stem>.last-run.json`.
///
/// Why: a no-change run (an agent tick, a re-run of apply) must still say when it ran and
/// how it ended, in one small write instead of rewriting the whole snapshot (which holds the
/// digests of every applied object).
pub fn last_run_path(state_file: &Path) -> PathBuf {
    let stem = state_file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "status".into());
    state_file.with_file_name(format!("{stem}.last-run.json"))
}

/// The small `last_run` record of [`last_run_path`], versioned like the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LastRunFile {
    schema_version: u32,
    kind: String,
    last_run: RunRecord,
}

fn load_last_run(state_file: &Path) -> Option<RunRecord> {
    let bytes = std::fs::read(last_run_path(state_file)).ok()?;
    let f: LastRunFile = serde_json::from_slice(&bytes).ok()?;
    (f.schema_version == STATUS_SCHEMA_VERSION).then_some(f.last_run)
}

/// Record the `last_run` of a run that changed nothing in one small atomic write; `load`
/// shows it when it is newer than the snapshot's own.
///
/// Why: see [`last_run_path`].
pub fn save_last_run(state_file: &Path, run: &RunRecord) -> Result<()> {
    fsutil::write_json(
        &last_run_path(state_file),
        &LastRunFile {
            schema_version: STATUS_SCHEMA_VERSION,
            kind: "CoreOpsLastRun".into(),
            last_run: run.clone(),
        },
    )
}

/// Write the snapshot atomically.
pub fn save(path: &Path, snapshot: &StatusSnapshot) -> Result<()> {
    set_aside_unreadable(path)?;
    fsutil::write_json(path, snapshot)
}

/// Write the snapshot atomically over one this run read (or wrote) under the state lock.
///
/// Why apart from [`save`]: that file was readable a moment ago and nobody else writes it
/// while the lock is held, so there is nothing to set aside and no reason to parse its
/// ~160 KB (200 services) again before every write.
pub fn save_over_read(path: &Path, snapshot: &StatusSnapshot) -> Result<()> {
    fsutil::write_json(path, snapshot)
}

/// Before a snapshot is written over `path`: a file there that cannot be read as a snapshot
/// (cut short, corrupt, from an unknown schema) is kept beside it as
/// `<name>.unreadable-<unix time>` and named in a warning, never silently overwritten; it
/// may be the only record of what was applied.
pub fn set_aside_unreadable(path: &Path) -> Result<Option<PathBuf>> {
    match load(path) {
        Ok(_) | Err(Absent::Missing { .. }) => Ok(None),
        Err(why) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let aside = path.with_file_name(format!("{name}.unreadable-{secs}"));
            fsutil::rename_synced(path, &aside)?;
            tracing::warn!(
                "{why}; kept as {} and replaced by a new snapshot",
                aside.display()
            );
            Ok(Some(aside))
        }
    }
}

impl StatusSnapshot {
    /// A fresh snapshot for a host.
    pub fn new(host: &str) -> StatusSnapshot {
        StatusSnapshot {
            schema_version: STATUS_SCHEMA_VERSION,
            kind: "CoreOpsStatus".into(),
            core_ops: Provenance::current(),
            host: host.to_string(),
            source: None,
            last_applied: None,
            last_run: None,
            history: Vec::new(),
            runtimes: BTreeMap::new(),
            receipts: None,
        }
    }
}

/// The `last_applied` record of a desired state that has just verifiably converged.
pub fn last_applied_from(desired: &crate::render::DesiredState, applied_at: &str) -> LastApplied {
    let deps = crate::plan::desired_dependencies(desired);
    let resources = desired
        .resources
        .values()
        .map(|r| (r.id.clone(), applied_record(r, &deps)))
        .collect();
    LastApplied {
        revision: desired.revision.commit.clone(),
        requested_ref: desired.revision.requested_ref.clone(),
        applied_at: applied_at.to_string(),
        resources,
    }
}

/// What is recorded of one desired resource once it is on the host (in `last_applied` and
/// in the ownership ledger): enough to judge drift and to remove it in reverse order later.
pub fn applied_record(
    r: &crate::render::Resource,
    deps: &BTreeMap<String, std::collections::BTreeSet<String>>,
) -> AppliedResource {
    AppliedResource {
        kind: r.kind,
        path: r.path.clone(),
        digest: r.digest.clone(),
        unit: r.unit.as_ref().map(|u| u.name.clone()),
        enabled: r.unit.as_ref().is_some_and(|u| u.enable),
        started: r.unit.as_ref().is_some_and(|u| u.start),
        depends_on: deps
            .get(&r.id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default(),
        mount_where: r
            .unit
            .as_ref()
            .and_then(|u| u.mount.as_ref())
            .map(|m| m.where_.clone()),
        instances: r
            .unit
            .as_ref()
            .map(|u| u.instances.clone())
            .unwrap_or_default(),
        adopted: false,
        runs_to_completion: false,
        secret: r.secret.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_reasons_are_distinguished() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("status.json");
        assert!(matches!(load(&p), Err(Absent::Missing { .. })));
        let snap = StatusSnapshot::new("h");
        save(&p, &snap).unwrap();
        assert_eq!(load(&p).unwrap(), snap);
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() / 2]).unwrap();
        assert!(
            matches!(load(&p), Err(Absent::Partial { .. })),
            "{:?}",
            load(&p)
        );
        std::fs::write(&p, b"{\"schema_version\": 1, \"bogus\": true}").unwrap();
        assert!(matches!(load(&p), Err(Absent::Invalid { .. })));
        std::fs::write(&p, b"[1,2]").unwrap();
        assert!(matches!(load(&p), Err(Absent::Invalid { .. })));
        // a snapshot written before runtimes existed still loads
        std::fs::write(
            &p,
            serde_json::to_vec(&serde_json::json!({
                "schema_version": 1, "kind": "CoreOpsStatus",
                "core_ops": {"version": "0.1.0", "build_revision": "x"},
                "host": "h", "source": null, "last_applied": null, "last_run": null,
                "history": []
            }))
            .unwrap(),
        )
        .unwrap();
        assert!(load(&p).unwrap().runtimes.is_empty());
        // an unreadable snapshot is kept aside, never overwritten
        std::fs::write(&p, b"{ half").unwrap();
        save(&p, &snap).unwrap();
        let kept: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("status.json.unreadable-")
            })
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(std::fs::read(kept[0].path()).unwrap(), b"{ half");
        assert_eq!(load(&p).unwrap(), snap);
        std::fs::write(&p, b"{\"schema_version\": 99}").unwrap();
        let e = load(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "unsupported version: {} has schema_version 99, this build reads 1",
                p.display()
            )
        );
    }
}
