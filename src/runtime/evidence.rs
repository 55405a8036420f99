//! Evidence bundles: content-addressed directories `evidence/sha256-<hex>/` holding what
//! receipts and logs must not (manifest, digests, policy inputs, unit health), referenced from
//! a receipt's `evidenceRefs` as `evidence:sha256-<hex>`.
//!
//! A bundle is its files plus `index.json`, which maps every other file name to its sha256;
//! `<hex>` is the sha256 of `index.json`'s bytes. `bundle.json` is a SourceOS `EvidenceBundle`
//! (validated against the vendored schema). [`verify`] re-hashes everything, so a changed,
//! missing or added file is detected.
//!
//! Why content-addressed: identical evidence is stored once, and a ref can be checked without
//! trusting the directory it was found in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::normalize::sha256_hex;
use crate::model::time::now_rfc3339;
use crate::provenance::Provenance;

use super::schema::{self, Schema};

/// Prefix of evidence refs in receipts.
pub const REF_PREFIX: &str = "evidence:";

/// `<state dir>/evidence`.
pub fn evidence_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("evidence")
}

/// The index of a bundle: file name -> `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// Schema version (1).
    pub schema_version: u32,
    /// `CoreOpsEvidenceIndex`.
    pub kind: String,
    /// Every file of the bundle except `index.json`.
    pub files: BTreeMap<String, String>,
}

/// What a bundle is about, for its `bundle.json`.
#[derive(Debug, Clone)]
pub struct Subject {
    /// `urn:srcos:evidence-bundle:...` id.
    pub id: String,
    /// Ref of the object the bundle supports (a transaction session).
    pub subject_ref: String,
    /// Manifest and artifact refs.
    pub artifact_refs: Vec<String>,
    /// Receipts already written for the subject.
    pub receipt_refs: Vec<String>,
    /// Policy decision refs.
    pub decision_refs: Vec<String>,
}

/// Write a bundle of `files` (name -> bytes; names are plain file names) and its
/// `bundle.json`; returns the ref `evidence:sha256-<hex>`. Idempotent: an identical bundle
/// already on disk is reused.
pub fn write(
    state_dir: &Path,
    subject: &Subject,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<String> {
    let mut all = files.clone();
    let log_refs: Vec<String> = files.keys().map(|n| format!("file:{n}")).collect();
    let bundle = json!({
        "id": subject.id,
        "type": "EvidenceBundle",
        "specVersion": "2.0.0",
        "subjectRef": subject.subject_ref,
        "artifactRefs": subject.artifact_refs,
        "receiptRefs": subject.receipt_refs,
        "logRefs": log_refs,
        "decisionRefs": subject.decision_refs,
        "generatedBy": format!("core-ops {} (build {})", Provenance::current().version, Provenance::current().build_revision),
        "generatedAt": now_rfc3339(),
    });
    schema::validate(Schema::EvidenceBundle, &bundle).map_err(|errs| {
        Error::Config(format!(
            "internal error: EvidenceBundle does not validate against the vendored schema: {}",
            errs.join("; ")
        ))
    })?;
    all.insert("bundle.json".into(), fsutil::json_bytes(&bundle));
    for name in all.keys() {
        if !plain_name(name) || name == "index.json" {
            return Err(Error::Config(format!(
                "internal error: evidence file name '{name}'"
            )));
        }
    }
    let index = Index {
        schema_version: 1,
        kind: "CoreOpsEvidenceIndex".into(),
        files: all
            .iter()
            .map(|(n, b)| (n.clone(), sha256_hex(b)))
            .collect(),
    };
    let index_bytes = fsutil::json_bytes(&index);
    let hex = sha256_hex(&index_bytes)
        .trim_start_matches("sha256:")
        .to_string();
    let dir = evidence_dir(state_dir);
    let target = dir.join(format!("sha256-{hex}"));
    if !target.is_dir() {
        let staging = dir.join(format!(
            "{}evidence-{}",
            fsutil::TEMP_PREFIX,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        for (name, bytes) in &all {
            fsutil::write_atomic(&staging.join(name), bytes, None)?;
        }
        fsutil::write_atomic(&staging.join("index.json"), &index_bytes, None)?;
        fsutil::rename_synced(&staging, &target)?;
    }
    Ok(format!("{REF_PREFIX}sha256-{hex}"))
}

fn plain_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Accept `evidence:sha256-<hex>`, `sha256-<hex>`, `sha256:<hex>` or a bare 64-hex id.
pub fn parse_id(id: &str) -> Option<String> {
    let s = id.strip_prefix(REF_PREFIX).unwrap_or(id);
    let hex = s
        .strip_prefix("sha256-")
        .or_else(|| s.strip_prefix("sha256:"))
        .unwrap_or(s);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// The result of re-hashing a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// `CoreOpsEvidenceVerification`.
    pub kind: String,
    /// `evidence:sha256-<hex>`.
    pub id: String,
    /// Directory checked.
    pub path: String,
    /// True when every check passed.
    pub ok: bool,
    /// Per file: recorded digest and whether the content still has it.
    pub files: Vec<FileCheck>,
    /// What is wrong (empty when ok).
    pub problems: Vec<String>,
}

/// One file of a bundle, re-hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileCheck {
    /// File name.
    pub name: String,
    /// Digest recorded in the index.
    pub recorded: String,
    /// Digest of the content now (`missing` when gone).
    pub actual: String,
    /// Whether they agree.
    pub ok: bool,
}

/// Re-hash a bundle: the index against the directory name, every file against the index,
/// no file unaccounted for, and `bundle.json` against the vendored `EvidenceBundle` schema.
pub fn verify(state_dir: &Path, id: &str) -> Result<Verification> {
    let hex = parse_id(id).ok_or_else(|| {
        Error::Config(format!(
            "'{id}' is not an evidence id (expected evidence:sha256-<64 hex>)"
        ))
    })?;
    let dir = evidence_dir(state_dir).join(format!("sha256-{hex}"));
    let mut v = Verification {
        kind: "CoreOpsEvidenceVerification".into(),
        id: format!("{REF_PREFIX}sha256-{hex}"),
        path: dir.display().to_string(),
        ok: false,
        files: Vec::new(),
        problems: Vec::new(),
    };
    if !dir.is_dir() {
        return Err(Error::Config(format!(
            "no evidence bundle {} (looked in {})",
            v.id,
            dir.display()
        )));
    }
    let index_bytes = std::fs::read(dir.join("index.json"))
        .map_err(|e| Error::io(format!("read {}/index.json", dir.display()), e))?;
    let index_digest = sha256_hex(&index_bytes);
    if index_digest != format!("sha256:{hex}") {
        v.problems.push(format!(
            "index.json hashes to {index_digest}, not the bundle id sha256:{hex}"
        ));
    }
    let index: Index = match serde_json::from_slice(&index_bytes) {
        Ok(i) => i,
        Err(e) => {
            v.problems
                .push(format!("index.json is not an evidence index: {e}"));
            return Ok(v);
        }
    };
    for (name, recorded) in &index.files {
        let actual = if plain_name(name) {
            std::fs::read(dir.join(name))
                .map(|b| sha256_hex(&b))
                .unwrap_or_else(|_| "missing".into())
        } else {
            "invalid name".into()
        };
        let ok = &actual == recorded;
        if !ok {
            v.problems
                .push(format!("{name}: recorded {recorded}, found {actual}"));
        }
        v.files.push(FileCheck {
            name: name.clone(),
            recorded: recorded.clone(),
            actual,
            ok,
        });
    }
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut extra: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n != "index.json" && !index.files.contains_key(n))
            .collect();
        extra.sort();
        for n in extra {
            v.problems.push(format!("{n}: not listed in index.json"));
        }
    }
    match std::fs::read(dir.join("bundle.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    {
        Some(b) => {
            if let Err(errs) = schema::validate(Schema::EvidenceBundle, &b) {
                v.problems.push(format!(
                    "bundle.json is not a valid EvidenceBundle: {}",
                    errs.join("; ")
                ));
            }
        }
        None => v.problems.push("bundle.json is missing or not JSON".into()),
    }
    v.ok = v.problems.is_empty();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            id: "urn:srcos:evidence-bundle:core-ops:t1:requested".into(),
            subject_ref: "urn:srcos:session:core-ops:h:t1".into(),
            artifact_refs: vec!["urn:srcos:artifact:hello@1:a".into()],
            receipt_refs: vec![],
            decision_refs: vec!["urn:srcos:decision:core-ops:t1:policy".into()],
        }
    }

    #[test]
    fn bundle_verifies_and_tampering_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::new();
        files.insert("manifest.yaml".to_string(), b"name: hello\n".to_vec());
        let r = write(d.path(), &subject(), &files).unwrap();
        let v = verify(d.path(), &r).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.files.len(), 2);
        let hex = parse_id(&r).unwrap();
        let dir = evidence_dir(d.path()).join(format!("sha256-{hex}"));
        // every spelling of the id names the same bundle
        assert_eq!(verify(d.path(), &format!("sha256:{hex}")).unwrap().id, r);
        std::fs::write(dir.join("manifest.yaml"), b"name: evil\n").unwrap();
        let v = verify(d.path(), &r).unwrap();
        assert!(!v.ok);
        assert!(
            v.problems[0].starts_with("manifest.yaml: recorded"),
            "{v:?}"
        );
        std::fs::write(dir.join("manifest.yaml"), b"name: hello\n").unwrap();
        std::fs::write(dir.join("extra"), b"x").unwrap();
        assert!(!verify(d.path(), &r).unwrap().ok);
        assert!(verify(d.path(), "nope").is_err());
    }
}
