//! `RuntimeInstallReceipt` (SourceOS, vendored schema): one per lifecycle transition of an
//! install transaction, validated against the vendored schema *before* it is written, and
//! appended to the same hash chain as the reconcile receipts (the link is the first
//! `causalRefs` entry, [`CAUSAL_PREVIOUS_PREFIX`]).
//!
//! Why compact: `logMode` is `compact_receipt_ref`; a receipt carries ids, digests and refs,
//! and full detail (manifest, digests, unit health) lives in the evidence bundle named in
//! `evidenceRefs`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::time::now_rfc3339;
use crate::record::receipts::{self, CAUSAL_PREVIOUS_PREFIX};

use crate::runtime::schema::{self, Schema};

/// `specVersion` written, as in the canonical example of the pinned SourceOS commit.
pub const SPEC_VERSION: &str = "0.1.0";

/// File-name kind of runtime receipts in `receipts/` (`00000007-runtime-install.json`).
pub const RECEIPT_KIND: &str = "runtime-install";

/// Digest written when an artifact's content could not be read (the schema requires a
/// digest): 64 zeros, never with `verificationState: verified`.
pub const UNKNOWN_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Marks a receipt written by start-up recovery of an interrupted transaction.
pub const RECOVERED_CAUSE: &str = "urn:srcos:event:core-ops:recovered-after-interruption";

/// The ten lifecycle states of the schema (docs/design.md section 5), exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallState {
    /// A transaction was created for a desired runtime version.
    Requested,
    /// The manifest was read, its digest taken and its dependencies resolved.
    ManifestResolved,
    /// Every artifact is in the store and matched its pinned digest (or, where policy allows
    /// unverified local artifacts, was stored without one: `skipped`).
    ArtifactVerified,
    /// About to unpack and switch.
    Installing,
    /// Switched, units restarted and healthy.
    Installed,
    /// Ended before the switch without installing (fetch, verification, unpack, a
    /// dependency), or could not be returned to a healthy previous version.
    Failed,
    /// Switched back to the previous version (unhealthy after the switch, or an interrupted
    /// install undone at start-up).
    RolledBack,
    /// Switched with no previous version to return to, but not every unit is healthy.
    Partial,
    /// Policy refused it (publisher, unverified local artifact); nothing changed.
    Denied,
    /// Policy postponed it (outside maintenance windows, free disk below minimum); nothing
    /// changed.
    Deferred,
}

impl InstallState {
    /// The schema's name.
    pub fn as_str(self) -> &'static str {
        crate::model::names::serde_name(&self)
    }

    /// Whether the transaction ends in this state.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            InstallState::Requested
                | InstallState::ManifestResolved
                | InstallState::ArtifactVerified
                | InstallState::Installing
        )
    }

    /// Whether the schema expects a `failureReason` in this state.
    pub fn needs_reason(self) -> bool {
        matches!(
            self,
            InstallState::Failed
                | InstallState::Partial
                | InstallState::Denied
                | InstallState::Deferred
                | InstallState::RolledBack
        )
    }
}

/// `verificationState` of one artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// Not fetched yet.
    NotChecked,
    /// Its sha256, computed while streaming into the store, matched the pinned digest.
    Verified,
    /// Its sha256 did not match (or it could not be read).
    Failed,
    /// Stored without a pinned digest (an unverified local artifact policy allowed).
    Skipped,
}

/// One artifact as a receipt reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFact {
    /// `urn:srcos:artifact:<runtime>@<version>:<artifact name>`.
    pub reference: String,
    /// `sha256:<hex>`: pinned, or computed when nothing was pinned; `None` when unknown.
    pub digest: Option<String>,
    /// Size in bytes, once known.
    pub size: Option<u64>,
    /// Verification state.
    pub verification: Verification,
}

/// Everything one receipt says.
#[derive(Debug, Clone)]
pub struct ReceiptFacts<'a> {
    /// Host (target).
    pub host: &'a str,
    /// Transaction id (session).
    pub transaction: &'a str,
    /// Runtime name.
    pub name: &'a str,
    /// Version being installed.
    pub version: &'a str,
    /// The transition.
    pub state: InstallState,
    /// sha256 of the manifest bytes.
    pub manifest_digest: &'a str,
    /// When the manifest was resolved.
    pub resolved_at: &'a str,
    /// Artifacts.
    pub artifacts: &'a [ArtifactFact],
    /// Version a rollback returns (or returned) to.
    pub rollback_version: Option<&'a str>,
    /// Why, for failed / partial / denied / deferred / rolled_back.
    pub failure: Option<&'a str>,
    /// `evidence:sha256-<hex>` of the bundle with the full detail.
    pub evidence_ref: &'a str,
    /// When the transaction started.
    pub started_at: &'a str,
    /// Desired revision it serves.
    pub revision: &'a str,
    /// Written by start-up recovery.
    pub recovered: bool,
}

/// `urn:srcos:runtime:<name>@<version>`.
pub fn runtime_ref(name: &str, version: &str) -> String {
    format!("urn:srcos:runtime:{name}@{version}")
}

/// `urn:srcos:session:core-ops:<host>:<transaction>`: one session per transaction.
pub fn session_ref(host: &str, transaction: &str) -> String {
    format!("urn:srcos:session:core-ops:{host}:{transaction}")
}

/// `urn:srcos:decision:core-ops:<transaction>:policy`: the policy decision of a transaction
/// (its inputs and outcome are in the evidence bundle, `policy.json`).
pub fn decision_ref(transaction: &str) -> String {
    format!("urn:srcos:decision:core-ops:{transaction}:policy")
}

/// `urn:srcos:artifact:runtime-manifest:<name>@<version>`.
pub fn manifest_ref(name: &str, version: &str) -> String {
    format!("urn:srcos:artifact:runtime-manifest:{name}@{version}")
}

/// `urn:srcos:artifact:<name>@<version>:<artifact>`.
pub fn artifact_ref(name: &str, version: &str, artifact: &str) -> String {
    format!("urn:srcos:artifact:{name}@{version}:{artifact}")
}

/// The schema's platform name of this machine.
pub fn platform() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("linux-x64"),
        "aarch64" => Ok("linux-arm64"),
        other => Err(Error::Config(format!(
            "RuntimeInstallReceipt has no platform for linux-{other}; runtimes are not supported on this machine"
        ))),
    }
}

/// Build the receipt document for a chain position.
pub fn build(
    f: &ReceiptFacts<'_>,
    sequence: u64,
    previous: Option<&str>,
    now: &str,
) -> Result<Value> {
    let mut causal: Vec<String> = Vec::new();
    if let Some(p) = previous {
        causal.push(format!("{CAUSAL_PREVIOUS_PREFIX}{p}"));
    }
    causal.push(format!(
        "urn:srcos:event:core-ops:desired-revision:{}",
        f.revision
    ));
    if f.recovered {
        causal.push(RECOVERED_CAUSE.to_string());
    }
    let artifacts: Vec<Value> = f
        .artifacts
        .iter()
        .map(|a| {
            json!({
                "artifactRef": a.reference,
                "digest": a.digest.as_deref().unwrap_or(UNKNOWN_DIGEST),
                "sizeBytes": a.size,
                "verificationState": a.verification,
            })
        })
        .collect();
    Ok(json!({
        "id": format!("urn:srcos:receipt:runtime-install:{}:{sequence}", f.host),
        "type": "RuntimeInstallReceipt",
        "specVersion": SPEC_VERSION,
        "sessionRef": session_ref(f.host, f.transaction),
        "capabilityLedgerRef": format!("urn:srcos:capability-ledger:core-ops:{}", f.host),
        "agentMachineReceiptRef": Value::Null,
        "runtimeRef": runtime_ref(f.name, f.version),
        "runtimeName": f.name,
        "runtimeVersion": f.version,
        "targetRef": format!("urn:srcos:target:{}", f.host),
        "platform": platform()?,
        "installState": f.state,
        "manifest": {
            "manifestRef": manifest_ref(f.name, f.version),
            "manifestDigest": f.manifest_digest,
            "bundleFormatVersion": Value::Null,
            "resolvedAt": f.resolved_at,
        },
        "artifacts": artifacts,
        "rollbackRef": f.rollback_version.map(|v| runtime_ref(f.name, v)),
        "failureReason": if f.state.needs_reason() { f.failure } else { None },
        "logMode": "compact_receipt_ref",
        "causalRefs": causal,
        "policyDecisionRef": decision_ref(f.transaction),
        "evidenceRefs": [f.evidence_ref],
        "startedAt": f.started_at,
        "finishedAt": if f.state.is_terminal() { Some(now) } else { None },
        "capturedAt": now,
    }))
}

/// Build, validate against the vendored schema, and append to the receipt chain. Nothing is
/// written if validation fails (that is a bug, reported as an error).
pub fn append(state_dir: &Path, f: &ReceiptFacts<'_>) -> Result<(PathBuf, Value)> {
    let now = now_rfc3339();
    receipts::try_append_document(state_dir, RECEIPT_KIND, |sequence, prev| {
        let doc = build(f, sequence, prev.as_deref(), &now)?;
        schema::validate(Schema::RuntimeInstallReceipt, &doc).map_err(|errs| {
            Error::Config(format!(
                "internal error: RuntimeInstallReceipt for {} {} ({}) does not validate against the vendored schema: {}",
                f.name,
                f.version,
                f.state.as_str(),
                errs.join("; ")
            ))
        })?;
        Ok(doc)
    })
}

/// Every runtime receipt in the chain, in order (reading each file once).
pub fn list(state_dir: &Path) -> Result<Vec<(PathBuf, Value)>> {
    let mut out = Vec::new();
    for p in receipts::list(state_dir)? {
        if !p.file_name().is_some_and(|n| {
            n.to_string_lossy()
                .ends_with(&format!("-{RECEIPT_KIND}.json"))
        }) {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Config(format!("{}: not JSON: {e}", p.display())))?;
        out.push((p, v));
    }
    Ok(out)
}

/// Receipts already written for a transaction, `(state, receipt id)` in order, read from the
/// tail of the chain (a transaction's receipts are contiguous: runs hold the state-dir lock,
/// transactions run one at a time).
///
/// Why: a run killed between writing a receipt and persisting the next state must not write
/// that receipt twice when the transaction is resumed.
pub fn recorded_states(
    state_dir: &Path,
    host: &str,
    transaction: &str,
) -> Result<Vec<(InstallState, String)>> {
    let session = session_ref(host, transaction);
    let mut states = Vec::new();
    for p in receipts::list(state_dir)?.iter().rev() {
        let bytes = std::fs::read(p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            break;
        };
        if v.get("sessionRef").and_then(Value::as_str) != Some(session.as_str()) {
            break;
        }
        if let Some(s) = v
            .get("installState")
            .and_then(|s| serde_json::from_value::<InstallState>(s.clone()).ok())
        {
            let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
            states.push((s, id.to_string()));
        }
    }
    states.reverse();
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(state: InstallState) -> ReceiptFacts<'static> {
        static ARTS: std::sync::OnceLock<Vec<ArtifactFact>> = std::sync::OnceLock::new();
        let arts = ARTS.get_or_init(|| {
            vec![ArtifactFact {
                reference: artifact_ref("hello", "1.0.0", "hello.tar.gz"),
                digest: None,
                size: None,
                verification: Verification::NotChecked,
            }]
        });
        ReceiptFacts {
            host: "h1",
            transaction: "hello-1.0.0-1-2",
            name: "hello",
            version: "1.0.0",
            state,
            manifest_digest: "sha256:1111111111111111111111111111111111111111111111111111111111111111",
            resolved_at: "2026-11-26T13:46:05Z",
            artifacts: arts,
            rollback_version: None,
            failure: Some("why"),
            evidence_ref: "evidence:sha256-22",
            started_at: "2026-11-26T13:46:05Z",
            revision: "abc",
            recovered: false,
        }
    }

    #[test]
    fn every_state_builds_a_schema_valid_receipt() {
        use InstallState::*;
        for s in [
            Requested,
            ManifestResolved,
            ArtifactVerified,
            Installing,
            Installed,
            Failed,
            RolledBack,
            Partial,
            Denied,
            Deferred,
        ] {
            let doc = build(&facts(s), 3, Some("sha256:ab"), "2026-11-26T13:46:06Z").unwrap();
            schema::validate(Schema::RuntimeInstallReceipt, &doc)
                .unwrap_or_else(|e| panic!("{s:?}: {e:?}"));
            assert_eq!(doc["installState"], s.as_str());
            assert_eq!(doc["logMode"], "compact_receipt_ref");
            assert_eq!(doc["failureReason"].is_string(), s.needs_reason());
            assert_eq!(doc["finishedAt"].is_string(), s.is_terminal());
        }
    }

    #[test]
    fn chain_link_is_found_in_causal_refs() {
        let d = tempfile::tempdir().unwrap();
        let (p1, first) = append(d.path(), &facts(InstallState::Requested)).unwrap();
        assert!(crate::record::receipts::chain_link(&first).is_none());
        let (_, second) = append(d.path(), &facts(InstallState::ManifestResolved)).unwrap();
        assert_eq!(
            crate::record::receipts::chain_link(&second),
            Some(crate::model::normalize::sha256_hex(
                &std::fs::read(p1).unwrap()
            ))
        );
        assert_eq!(crate::record::receipts::verify_chain(d.path()).unwrap(), 2);
        let states: Vec<InstallState> = recorded_states(d.path(), "h1", "hello-1.0.0-1-2")
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            states,
            vec![InstallState::Requested, InstallState::ManifestResolved]
        );
        assert!(recorded_states(d.path(), "h1", "other").unwrap().is_empty());
    }
}
