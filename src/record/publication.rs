//! Catalog publication requests (`core-ops evidence publish-request ID`): a reviewed hand-off of
//! a receipt and its evidence to a SourceOS catalog authority, written into
//! `<state dir>/outbox/` and never sent.
//!
//! Why an outbox: publication authority does not live on the host (seed 001). core-ops
//! assembles what a catalog needs (a draft SourceOS `CatalogEntry`, the receipt's digest, the
//! verified evidence bundles) and a human forwards it. Disabled by default (host policy
//! `publication: { enabled: false }`); no credentials are read or written.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::normalize::sha256_hex;
use crate::model::time::now_rfc3339;
use crate::model::yaml::Publication;
use crate::provenance::Provenance;
use crate::record::receipts;
use crate::runtime::evidence;
use crate::runtime::schema::{self, Schema};

/// `<state dir>/outbox`.
pub fn outbox_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("outbox")
}

/// What `publish-request` did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Publication is disabled by host policy; nothing was written.
    Disabled {
        /// How to enable it.
        how_to_enable: String,
    },
    /// The request was written for review.
    Written {
        /// Path of the request.
        path: String,
        /// The request document.
        request: Value,
    },
}

/// The text that tells an operator how to enable publication requests.
pub fn how_to_enable(host: &str) -> String {
    format!(
        "catalog publication is disabled by host policy (the default). To allow publication \
         requests, set in hosts/{host}/host.yaml:\n  policy:\n    publication:\n      enabled: true\n      \
         authority: urn:srcos:authority:<your catalog>   # optional, recorded only\nand apply it. \
         Requests are written to the state dir's outbox/ for human review; core-ops never sends \
         them and never holds credentials."
    )
}

/// Find a receipt by its `id` (e.g. `urn:srcos:receipt:reconcile:web1:7`).
fn find_receipt(state_dir: &Path, id: &str) -> Result<Option<(Value, String)>> {
    for p in receipts::list(state_dir)? {
        let bytes = std::fs::read(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if v.get("id").and_then(Value::as_str) == Some(id) {
            return Ok(Some((v, sha256_hex(&bytes))));
        }
    }
    Ok(None)
}

/// Build and write a publication request for a receipt id or an evidence bundle id.
pub fn publish_request(
    state_dir: &Path,
    host: &str,
    policy: &Publication,
    id: &str,
) -> Result<Outcome> {
    if !policy.enabled {
        return Ok(Outcome::Disabled {
            how_to_enable: how_to_enable(host),
        });
    }
    let (subject, receipt_digest, evidence_refs) = subject_of(state_dir, id)?;
    let subject_id = subject
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or(id)
        .to_string();
    let bundles = verified_bundles(state_dir, &evidence_refs)?;
    let now = now_rfc3339();
    let local = sha256_hex(
        format!(
            "{subject_id}\n{}",
            receipt_digest.clone().unwrap_or_default()
        )
        .as_bytes(),
    );
    let local = &local["sha256:".len().."sha256:".len() + 16];
    let draft = Draft {
        host,
        subject: &subject,
        subject_id: &subject_id,
        local,
        now: &now,
    };
    let entry = catalog_entry(&draft, &bundles, policy)?;
    let request = json!({
        "schema_version": 1,
        "kind": "CoreOpsPublicationRequest",
        "id": format!("urn:srcos:publication-request:core-ops:{host}:{local}"),
        "requestedAt": now,
        "host": host,
        "subject": { "id": subject_id, "receiptDigest": receipt_digest },
        "evidence": bundles,
        "catalogEntry": entry,
        "authorityRef": policy.authority,
        "delivery": "manual: core-ops never sends publication requests; review this file and forward it to the catalog authority",
        "core_ops": Provenance::current(),
    });
    let path = outbox_dir(state_dir).join(format!("publication-request-{local}.json"));
    fsutil::write_json(&path, &request)?;
    Ok(Outcome::Written {
        path: path.display().to_string(),
        request,
    })
}

/// The subject of a request: a receipt (its digest and evidence refs), or one evidence
/// bundle by id.
fn subject_of(state_dir: &Path, id: &str) -> Result<(Value, Option<String>, Vec<String>)> {
    match find_receipt(state_dir, id)? {
        Some((r, digest)) => {
            let refs = r
                .get("evidenceRefs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Ok((r, Some(digest), refs))
        }
        None if evidence::parse_id(id).is_some() => {
            Ok((json!({ "id": id }), None, vec![id.to_string()]))
        }
        None => Err(Error::Config(format!(
            "no receipt or evidence bundle '{id}' in {}",
            state_dir.display()
        ))),
    }
}

/// Every evidence bundle the subject names, each verified intact (else no request at all).
fn verified_bundles(state_dir: &Path, evidence_refs: &[String]) -> Result<Vec<Value>> {
    let mut bundles = Vec::new();
    for r in evidence_refs {
        let v = evidence::verify(state_dir, r)?;
        if !v.ok {
            return Err(Error::Config(format!(
                "evidence bundle {r} does not verify (run core-ops evidence verify {r}); no request written"
            )));
        }
        let hex = evidence::parse_id(r).unwrap_or_default();
        let bundle_json = evidence::evidence_dir(state_dir)
            .join(format!("sha256-{hex}"))
            .join("bundle.json");
        let bundle: Value = std::fs::read(&bundle_json)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        bundles.push(json!({
            "ref": r,
            "evidenceBundleId": bundle.get("id").cloned().unwrap_or(Value::Null),
            "verified": true,
        }));
    }
    Ok(bundles)
}

/// What a request's catalog entry is about.
struct Draft<'a> {
    host: &'a str,
    subject: &'a Value,
    subject_id: &'a str,
    /// Short id shared by the request and its entry.
    local: &'a str,
    now: &'a str,
}

/// The draft SourceOS `CatalogEntry`, validated against the vendored schema.
fn catalog_entry(d: &Draft<'_>, bundles: &[Value], policy: &Publication) -> Result<Value> {
    let first_bundle = bundles
        .first()
        .and_then(|b| b.get("evidenceBundleId"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut labels = serde_json::Map::new();
    labels.insert("host".into(), json!(d.host));
    for k in [
        "transition",
        "installState",
        "to_revision",
        "runtimeName",
        "runtimeVersion",
    ] {
        if let Some(v) = d.subject.get(k).and_then(Value::as_str) {
            labels.insert(k.into(), json!(v));
        }
    }
    let object_type = if first_bundle.is_some() {
        "EvidenceBundle"
    } else {
        d.subject
            .get("type")
            .or_else(|| d.subject.get("kind"))
            .and_then(Value::as_str)
            .unwrap_or("Receipt")
    };
    let entry = json!({
        "id": format!("urn:srcos:catalog-entry:core-ops:{}:{}", d.host, d.local),
        "type": "CatalogEntry",
        "specVersion": "2.0.0",
        "objectRef": first_bundle.clone().unwrap_or_else(|| d.subject_id.to_string()),
        "objectType": object_type,
        "title": format!("core-ops evidence of {} on {}", d.subject_id, d.host),
        "labels": labels,
        "status": "draft",
        "evidenceBundleRef": first_bundle,
        "authorityRef": policy.authority,
        "updatedAt": d.now,
    });
    schema::validate(Schema::CatalogEntry, &entry).map_err(|errs| {
        Error::Config(format!(
            "internal error: the draft CatalogEntry does not validate against the vendored schema: {}",
            errs.join("; ")
        ))
    })?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(state: &Path) -> String {
        let (_, r) = receipts::append(state, receipts::sample_receipt("h")).unwrap();
        r.id
    }

    #[test]
    fn disabled_by_default_writes_nothing_and_says_how_to_enable() {
        let d = tempfile::tempdir().unwrap();
        let id = receipt(d.path());
        let out = publish_request(d.path(), "h", &Publication::default(), &id).unwrap();
        match out {
            Outcome::Disabled { how_to_enable } => {
                assert!(how_to_enable.contains("publication:\n      enabled: true"))
            }
            other => panic!("{other:?}"),
        }
        assert!(!outbox_dir(d.path()).exists());
    }

    #[test]
    fn enabled_writes_a_request_with_a_valid_draft_catalog_entry() {
        let d = tempfile::tempdir().unwrap();
        let id = receipt(d.path());
        let policy = Publication {
            enabled: true,
            authority: Some("urn:srcos:authority:example".into()),
        };
        let Outcome::Written { path, request } =
            publish_request(d.path(), "h", &policy, &id).unwrap()
        else {
            panic!("not written")
        };
        assert!(Path::new(&path).starts_with(outbox_dir(d.path())));
        assert_eq!(request["subject"]["id"], id.as_str());
        assert_eq!(request["catalogEntry"]["status"], "draft");
        assert_eq!(request["catalogEntry"]["labels"]["transition"], "applied");
        schema::validate(Schema::CatalogEntry, &request["catalogEntry"]).unwrap();
        // unknown ids are errors
        assert!(publish_request(d.path(), "h", &policy, "urn:nope").is_err());
    }
}
