//! Validation against the vendored SourceOS schemas (`src/runtime/sourceos/`, pinned commit
//! and sha256 of every file in its UPSTREAM.md).
//!
//! Why embedded with `include_str!`: a receipt is validated before it is written, on hosts
//! that have no source tree; the binary carries exactly the vendored bytes (a test re-hashes
//! them against UPSTREAM.md). Validation is offline (`default-features = false` and
//! `.offline()`), draft 2020-12, formats asserted: an unresolvable `$ref` fails, never fetches.

use std::sync::OnceLock;

use jsonschema::{Draft, Registry, Validator};
use serde_json::Value;

/// `$id` of `RuntimeInstallReceipt.json`.
pub const RUNTIME_INSTALL_RECEIPT_ID: &str =
    "https://schemas.srcos.ai/v2/RuntimeInstallReceipt.json";
/// `$id` of `EvidenceBundle.json`.
pub const EVIDENCE_BUNDLE_ID: &str = "https://schemas.srcos.ai/v2/EvidenceBundle.json";
/// `$id` of `CatalogEntry.json`.
pub const CATALOG_ENTRY_ID: &str = "https://schemas.srcos.ai/v2/CatalogEntry.json";

const RUNTIME_INSTALL_RECEIPT: &str = include_str!("sourceos/schemas/RuntimeInstallReceipt.json");
const EVIDENCE_BUNDLE: &str = include_str!("sourceos/schemas/EvidenceBundle.json");
const CATALOG_ENTRY: &str = include_str!("sourceos/schemas/CatalogEntry.json");

/// A vendored schema core-ops validates its documents against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// `schemas/RuntimeInstallReceipt.json`.
    RuntimeInstallReceipt,
    /// `schemas/EvidenceBundle.json`.
    EvidenceBundle,
    /// `schemas/CatalogEntry.json` (publication requests carry a draft entry).
    CatalogEntry,
}

impl Schema {
    /// The schema's `$id`.
    pub fn id(self) -> &'static str {
        match self {
            Schema::RuntimeInstallReceipt => RUNTIME_INSTALL_RECEIPT_ID,
            Schema::EvidenceBundle => EVIDENCE_BUNDLE_ID,
            Schema::CatalogEntry => CATALOG_ENTRY_ID,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Schema::RuntimeInstallReceipt => RUNTIME_INSTALL_RECEIPT,
            Schema::EvidenceBundle => EVIDENCE_BUNDLE,
            Schema::CatalogEntry => CATALOG_ENTRY,
        }
    }
}

/// Build an offline validator for a schema document, with every given schema registered by
/// its `$id` (so `$ref`s resolve locally or fail).
///
/// Why public: tests build their validators from the vendored *files* on disk with exactly
/// these options, so the product and the tests cannot validate differently.
pub fn build_validator(schema: &Value, registry_docs: &[Value]) -> Result<Validator, String> {
    let mut pairs: Vec<(String, &Value)> = Vec::new();
    for d in registry_docs {
        let id = d
            .get("$id")
            .and_then(Value::as_str)
            .ok_or_else(|| "schema without $id".to_string())?;
        pairs.push((id.to_string(), d));
    }
    let registry = Registry::new()
        .extend(pairs.iter().map(|(k, v)| (k.as_str(), *v)))
        .and_then(|b| b.prepare())
        .map_err(|e| format!("schema registry: {e}"))?;
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .with_registry(&registry)
        .offline()
        .build(schema)
        .map_err(|e| format!("schema: {e}"))
}

fn compiled(which: Schema) -> &'static Result<Validator, String> {
    static RECEIPT: OnceLock<Result<Validator, String>> = OnceLock::new();
    static BUNDLE: OnceLock<Result<Validator, String>> = OnceLock::new();
    static CATALOG: OnceLock<Result<Validator, String>> = OnceLock::new();
    let cell = match which {
        Schema::RuntimeInstallReceipt => &RECEIPT,
        Schema::EvidenceBundle => &BUNDLE,
        Schema::CatalogEntry => &CATALOG,
    };
    cell.get_or_init(|| {
        let doc: Value = serde_json::from_str(which.text())
            .map_err(|e| format!("vendored {} is not JSON: {e}", which.id()))?;
        build_validator(&doc, std::slice::from_ref(&doc))
    })
}

/// Validate a document; on failure, every error as `instance_path: message`.
pub fn validate(which: Schema, doc: &Value) -> Result<(), Vec<String>> {
    let v = compiled(which).as_ref().map_err(|e| vec![e.clone()])?;
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| {
            let at = e.instance_path().as_str().to_string();
            format!("{}: {e}", if at.is_empty() { "/" } else { &at })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/runtime/sourceos/examples")
            .join(name);
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    #[test]
    fn canonical_examples_are_valid_and_mutations_are_not() {
        let ok = example("runtimeinstallreceipt.json");
        validate(Schema::RuntimeInstallReceipt, &ok).unwrap();
        validate(Schema::EvidenceBundle, &example("evidence_bundle.json")).unwrap();

        let mut bad = ok.clone();
        bad["installState"] = "exploded".into();
        let errs = validate(Schema::RuntimeInstallReceipt, &bad).unwrap_err();
        assert!(errs[0].starts_with("/installState:"), "{errs:?}");
        let mut bad = ok.clone();
        bad["startedAt"] = "2026-13-45 25:61".into();
        assert!(
            validate(Schema::RuntimeInstallReceipt, &bad).is_err(),
            "formats on"
        );
        let mut bad = ok;
        bad["extra"] = 1.into();
        assert!(validate(Schema::RuntimeInstallReceipt, &bad).is_err());
    }

    /// The vendored copy cannot drift silently: every file's sha256 is the one UPSTREAM.md
    /// recorded at the pinned commit, and no file is there that the table does not list.
    #[test]
    fn vendored_files_match_the_upstream_sha256_table() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/runtime/sourceos");
        let upstream = std::fs::read_to_string(root.join("UPSTREAM.md")).unwrap();
        assert!(upstream.contains("5e3ba19d54ba479c03088a6d504948f48f8dcb52"));
        let mut table = std::collections::BTreeMap::new();
        for line in upstream.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() == 4
                && let (Some(path), Some(sha)) = (
                    cells[1].strip_prefix('`').and_then(|c| c.strip_suffix('`')),
                    cells[2].strip_prefix('`').and_then(|c| c.strip_suffix('`')),
                )
                && sha.len() == 64
            {
                table.insert(path.to_string(), sha.to_string());
            }
        }
        assert_eq!(table.len(), 34, "rows in the UPSTREAM.md table");
        for (path, sha) in &table {
            let bytes = std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(
                crate::model::normalize::sha256_hex(&bytes),
                format!("sha256:{sha}"),
                "{path} differs from upstream"
            );
        }
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), root, out);
                } else {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.retain(|p| p != "UPSTREAM.md");
        on_disk.sort();
        assert_eq!(on_disk, table.keys().cloned().collect::<Vec<_>>());
        // and the binary embeds exactly these bytes
        assert_eq!(
            RUNTIME_INSTALL_RECEIPT.as_bytes(),
            std::fs::read(root.join("schemas/RuntimeInstallReceipt.json")).unwrap()
        );
        assert_eq!(
            EVIDENCE_BUNDLE.as_bytes(),
            std::fs::read(root.join("schemas/EvidenceBundle.json")).unwrap()
        );
    }

    #[test]
    fn unresolvable_ref_fails_offline() {
        let schema = serde_json::json!({"$ref": "https://schemas.srcos.ai/v2/Nope.json"});
        assert!(build_validator(&schema, &[]).is_err());
    }
}
