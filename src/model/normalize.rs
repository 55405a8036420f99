//! Normalization per kind (docs/design.md section 4): the *material* digest of a resource, computed
//! the same way for what the repository wants and for what is on disk.
//!
//! Why one function for both sides: desired and observed can only be compared if they went
//! through exactly the same normalization; a second copy would drift.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::unit_file::{UnitFile, canonical_layer_text};

/// What kind of object a resource is. Its JSON name is part of every resource id
/// (`unit:web.service`, `file:/etc/web/app.env`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A plain systemd unit file (`.service`, `.timer`, `.socket`, `.path`, `.target`).
    Unit,
    /// A drop-in (`<unit>.d/<name>.conf`).
    Dropin,
    /// A Quadlet file (`.container`, `.volume`, ...).
    Quadlet,
    /// A native `.mount` unit.
    Mount,
    /// A native `.automount` unit.
    Automount,
    /// A rendered host file.
    File,
    /// A runtime (`runtime:<name>`): material is name, version and artifact digests.
    Runtime,
}

impl Kind {
    /// The id prefix (`unit`, `dropin`, ...).
    pub fn as_str(self) -> &'static str {
        crate::model::names::serde_name(&self)
    }

    /// Parse an id prefix.
    pub fn from_prefix(s: &str) -> Option<Kind> {
        Some(match s {
            "unit" => Kind::Unit,
            "dropin" => Kind::Dropin,
            "quadlet" => Kind::Quadlet,
            "mount" => Kind::Mount,
            "automount" => Kind::Automount,
            "file" => Kind::File,
            "runtime" => Kind::Runtime,
            _ => return None,
        })
    }

    /// Split a resource id into kind and name.
    pub fn split_id(id: &str) -> Option<(Kind, &str)> {
        let (k, name) = id.split_once(':')?;
        Some((Kind::from_prefix(k)?, name))
    }

    /// Whether content is unit-file syntax and normalized as such.
    pub fn is_ini(self) -> bool {
        !matches!(self, Kind::File | Kind::Runtime)
    }
}

/// Ownership and mode: material for host files, fixed for units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Permission bits (e.g. 0o644).
    pub mode: u32,
    /// Owner user name.
    pub owner: String,
    /// Owner group name.
    pub group: String,
}

impl FileMeta {
    /// `0644 root:root`, what units are written with.
    pub fn unit_default() -> FileMeta {
        FileMeta {
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
        }
    }
}

/// The comparable form of one resource's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// `sha256:<hex>` over kind, canonical content and material metadata.
    pub digest: String,
    /// `sha256:<hex>` of the raw bytes: differs from another side's while `digest` matches
    /// exactly when a difference was ignored (reported as `runtime_variance`).
    pub raw_digest: String,
}

/// `sha256:<hex>` of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Normalize content of a kind. Unit-syntax kinds are parsed and rendered canonically;
/// content that does not parse is compared byte for byte (so a corrupted file on disk is
/// always a difference, never an error that stops the plan).
pub fn normalize(kind: Kind, content: &[u8], meta: &FileMeta) -> Normalized {
    let raw_digest = sha256_hex(content);
    let canonical = if kind.is_ini() {
        std::str::from_utf8(content)
            .ok()
            .and_then(|t| UnitFile::parse("", t).ok())
            .map(|f| format!("ini\n{}", canonical_layer_text(&f)))
    } else {
        None
    };
    let body = canonical.unwrap_or_else(|| format!("raw\n{raw_digest}"));
    let material = format!(
        "core-ops/normalize/v1\nkind={}\nmode={:04o}\nowner={}\ngroup={}\n{}",
        kind.as_str(),
        meta.mode,
        meta.owner,
        meta.group,
        body
    );
    Normalized {
        digest: sha256_hex(material.as_bytes()),
        raw_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_is_ignored_for_units_but_not_for_files() {
        let m = FileMeta::unit_default();
        let a = normalize(Kind::Unit, b"[Unit]\nDescription=x\n", &m);
        let b = normalize(Kind::Unit, b"# hi\n[Unit]\n  Description = x\n\n", &m);
        assert_eq!(a.digest, b.digest);
        assert_ne!(a.raw_digest, b.raw_digest);
        let fa = normalize(Kind::File, b"a=1\n", &m);
        let fb = normalize(Kind::File, b"a=1 \n", &m);
        assert_ne!(fa.digest, fb.digest);
    }

    #[test]
    fn mode_and_owner_are_material() {
        let a = normalize(Kind::File, b"x", &FileMeta::unit_default());
        let mut meta = FileMeta::unit_default();
        meta.mode = 0o600;
        assert_ne!(a.digest, normalize(Kind::File, b"x", &meta).digest);
    }

    #[test]
    fn unparsable_unit_content_compares_raw() {
        let m = FileMeta::unit_default();
        let a = normalize(Kind::Unit, b"garbage without section\n", &m);
        let b = normalize(Kind::Unit, b"garbage without section \n", &m);
        assert_ne!(a.digest, b.digest);
    }
}
