//! Reconcile receipts: one JSON file per transition (applied A -> B, partial, failed, rolled
//! back) under `<state dir>/receipts/`, each carrying the sha256 of the previous receipt so the
//! log is tamper-evident.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::normalize::sha256_hex;
use crate::provenance::Provenance;

/// Receipt schema version.
pub const RECEIPT_SCHEMA_VERSION: u32 = 1;

/// One reconcile transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReceipt {
    /// [`RECEIPT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsReconcileReceipt`.
    pub kind: String,
    /// `urn:srcos:receipt:reconcile:<host>:<sequence>`.
    pub id: String,
    /// 1-based position in the log.
    pub sequence: u64,
    /// `applied`, `partial`, `failed`, `rollback` (operator), `rolled_back` (automatic).
    pub transition: String,
    /// Host.
    pub host: String,
    /// `last_applied` before.
    pub from_revision: Option<String>,
    /// Desired revision of the run.
    pub to_revision: String,
    /// Requested ref.
    pub requested_ref: String,
    /// Verification outcome.
    pub outcome: String,
    /// Checksum of the plan executed.
    pub intent_checksum: String,
    /// sha256 of the results document.
    pub results_digest: String,
    /// Count of per-object problems.
    pub diagnostics: usize,
    /// Build.
    pub core_ops: Provenance,
    /// RFC 3339 time.
    pub recorded_at: String,
    /// sha256 of the previous receipt file (`null` for the first).
    pub previous_receipt_digest: Option<String>,
    /// Why (rollbacks: what failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn receipts_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("receipts")
}

/// Receipt files in sequence order.
pub fn list(state_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = receipts_dir(state_dir);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(fsutil::TEMP_PREFIX))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The previous receipt's sequence number and sha256, if any.
fn last_link(state_dir: &Path) -> Result<(u64, Option<String>)> {
    let existing = list(state_dir)?;
    match existing.last() {
        Some(p) => {
            let bytes =
                std::fs::read(p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
            let seq = p
                .file_stem()
                .and_then(|s| s.to_string_lossy().split('-').next().map(str::to_string))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(existing.len() as u64);
            Ok((seq, Some(sha256_hex(&bytes))))
        }
        None => Ok((0, None)),
    }
}

/// Append any receipt document to the chain. `build(sequence, previous_digest)` returns the
/// document; `kind` names the file (`00000007-<kind>.json`). The document must carry the
/// previous digest where [`chain_link`] finds it. Written atomically.
pub fn append_document(
    state_dir: &Path,
    kind: &str,
    build: impl FnOnce(u64, Option<String>) -> serde_json::Value,
) -> Result<(PathBuf, serde_json::Value)> {
    try_append_document(state_dir, kind, |sequence, prev| Ok(build(sequence, prev)))
}

/// [`append_document`] with a builder that may refuse (e.g. a document that fails schema
/// validation): nothing is written when it returns an error.
pub fn try_append_document(
    state_dir: &Path,
    kind: &str,
    build: impl FnOnce(u64, Option<String>) -> Result<serde_json::Value>,
) -> Result<(PathBuf, serde_json::Value)> {
    let (last, prev) = last_link(state_dir)?;
    let sequence = last + 1;
    let doc = build(sequence, prev)?;
    let path = receipts_dir(state_dir).join(format!("{sequence:08}-{kind}.json"));
    fsutil::write_json(&path, &doc)?;
    Ok((path, doc))
}

/// Append a reconcile receipt: fills sequence, id and the previous digest.
pub fn append(state_dir: &Path, receipt: ReconcileReceipt) -> Result<(PathBuf, ReconcileReceipt)> {
    let (path, doc) = append_document(state_dir, "reconcile", |sequence, prev| {
        let mut r = receipt;
        r.sequence = sequence;
        r.id = format!("urn:srcos:receipt:reconcile:{}:{sequence}", r.host);
        r.previous_receipt_digest = prev;
        serde_json::to_value(r).expect("receipt serializes")
    })?;
    Ok((path, serde_json::from_value(doc).expect("round trip")))
}

/// Prefix of the chain link in documents whose schema has no field of ours (e.g. SourceOS
/// `RuntimeInstallReceipt`): the first `causalRefs` entry starting with it.
pub const CAUSAL_PREVIOUS_PREFIX: &str = "urn:srcos:receipt-digest:previous:";

/// The previous-receipt digest a document carries: `previous_receipt_digest`, or a
/// `causalRefs` entry `urn:srcos:receipt-digest:previous:sha256:<hex>`.
pub fn chain_link(doc: &serde_json::Value) -> Option<String> {
    if let Some(d) = doc.get("previous_receipt_digest") {
        return d.as_str().map(str::to_string);
    }
    doc.get("causalRefs")?
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str())
        .find_map(|s| s.strip_prefix(CAUSAL_PREVIOUS_PREFIX).map(str::to_string))
}

/// Check that every receipt names the digest of the one before it; returns the count.
pub fn verify_chain(state_dir: &Path) -> Result<usize> {
    let files = list(state_dir)?;
    let mut prev: Option<String> = None;
    for p in &files {
        let bytes = std::fs::read(p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Config(format!("{}: not JSON: {e}", p.display())))?;
        let recorded = chain_link(&v);
        if recorded != prev {
            return Err(Error::Config(format!(
                "{}: chain broken (expects previous digest {:?}, found {:?})",
                p.display(),
                prev,
                recorded
            )));
        }
        prev = Some(sha256_hex(&bytes));
    }
    Ok(files.len())
}

/// A converged `applied` receipt for tests (sequence, id and chain link are filled by
/// [`append`]).
#[cfg(test)]
pub(crate) fn sample_receipt(host: &str) -> ReconcileReceipt {
    ReconcileReceipt {
        schema_version: RECEIPT_SCHEMA_VERSION,
        kind: "CoreOpsReconcileReceipt".into(),
        id: String::new(),
        sequence: 0,
        transition: "applied".into(),
        host: host.into(),
        from_revision: None,
        to_revision: "b".repeat(40),
        requested_ref: "main".into(),
        outcome: "converged".into(),
        intent_checksum: "sha256:x".into(),
        results_digest: "sha256:y".into(),
        diagnostics: 0,
        core_ops: Provenance::current(),
        recorded_at: "2026-01-01T00:00:00Z".into(),
        previous_receipt_digest: None,
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_chain_and_tampering_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let (p1, first) = append(d.path(), sample_receipt("h")).unwrap();
        assert_eq!(first.sequence, 1);
        assert_eq!(first.id, "urn:srcos:receipt:reconcile:h:1");
        assert!(first.previous_receipt_digest.is_none());
        let (_, second) = append(d.path(), sample_receipt("h")).unwrap();
        assert_eq!(
            second.previous_receipt_digest,
            Some(sha256_hex(&std::fs::read(&p1).unwrap()))
        );
        assert_eq!(verify_chain(d.path()).unwrap(), 2);
        let text = std::fs::read_to_string(&p1)
            .unwrap()
            .replace("converged", "failed");
        std::fs::write(&p1, text).unwrap();
        assert!(verify_chain(d.path()).is_err());
    }
}
