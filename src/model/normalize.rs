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
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    push_hex(&mut s, &Sha256::digest(bytes));
    s
}

/// Append the lowercase hex of `bytes` to `out`.
///
/// Why not `format!("{b:02x}")` per byte: that is an allocation per byte, and a run takes
/// thousands of digests (two per object on each side).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Normalize content of a kind. Unit-syntax kinds are parsed and rendered canonically;
/// content that does not parse is compared byte for byte (so a corrupted file on disk is
/// always a difference, never an error that stops the plan).
pub fn normalize(kind: Kind, content: &[u8], meta: &FileMeta) -> Normalized {
    let parsed = if kind.is_ini() {
        std::str::from_utf8(content)
            .ok()
            .and_then(|t| UnitFile::parse("", t).ok())
    } else {
        None
    };
    normalize_parsed(kind, content, parsed.as_ref(), meta)
}

/// [`normalize`] of content whose unit-file parse is at hand (`parsed`, for a unit-syntax
/// kind; `None`: not a unit-syntax kind, or content that does not parse).
///
/// Why: the render parses every unit and drop-in it reads; parsing each again only to
/// digest it was a third of a run's allocations.
pub fn normalize_parsed(
    kind: Kind,
    content: &[u8],
    parsed: Option<&UnitFile>,
    meta: &FileMeta,
) -> Normalized {
    let raw_digest = sha256_hex(content);
    let mut material = Sha256::new();
    material.update(format!(
        "core-ops/normalize/v1\nkind={}\nmode={:04o}\nowner={}\ngroup={}\n",
        kind.as_str(),
        meta.mode,
        meta.owner,
        meta.group,
    ));
    match parsed.filter(|_| kind.is_ini()) {
        Some(f) => {
            material.update(b"ini\n");
            material.update(canonical_layer_text(f));
        }
        None => {
            material.update(b"raw\n");
            material.update(&raw_digest);
        }
    }
    let mut digest = String::with_capacity(71);
    digest.push_str("sha256:");
    push_hex(&mut digest, &material.finalize());
    Normalized { digest, raw_digest }
}

/// The key of the digests of secret host files, derived from the host's age identity.
///
/// Why keyed: a plain sha256 of a decrypted secret in a plan, a receipt or the ledger would let
/// anyone who reads them test guesses of a short password offline; an HMAC under a key only
/// the identity's holder can derive compares the same on both sides and reveals nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestKey([u8; 32]);

impl DigestKey {
    /// The key for an identity's secret material (its text, `AGE-SECRET-KEY-1...`).
    pub fn derive(identity_secret: &[u8]) -> DigestKey {
        let mut h = Sha256::new();
        h.update(b"core-ops/secret-digest/v1\n");
        h.update(identity_secret);
        DigestKey(h.finalize().into())
    }

    /// `hmac-sha256:<hex>` of bytes under this key.
    pub fn hmac_hex(&self, bytes: &[u8]) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(bytes);
        let mut s = String::with_capacity(77);
        s.push_str("hmac-sha256:");
        push_hex(&mut s, &mac.finalize().into_bytes());
        s
    }
}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(redacted)")
    }
}

/// [`normalize`] for a decrypted secret host file: the same material (kind, mode, owner,
/// group, content), each digest an HMAC under `key` instead of a plain sha256.
pub fn normalize_secret(content: &[u8], meta: &FileMeta, key: &DigestKey) -> Normalized {
    let raw_digest = key.hmac_hex(content);
    let material = format!(
        "core-ops/normalize/v1\nkind=file\nmode={:04o}\nowner={}\ngroup={}\nsecret\n{}",
        meta.mode, meta.owner, meta.group, raw_digest
    );
    Normalized {
        digest: key.hmac_hex(material.as_bytes()),
        raw_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest's material spelled out as one string, the way it is defined.
    fn by_definition(kind: Kind, content: &[u8], meta: &FileMeta) -> String {
        let body = match std::str::from_utf8(content)
            .ok()
            .filter(|_| kind.is_ini())
            .and_then(|t| UnitFile::parse("", t).ok())
        {
            Some(f) => format!("ini\n{}", canonical_layer_text(&f)),
            None => format!("raw\n{}", sha256_hex(content)),
        };
        sha256_hex(
            format!(
                "core-ops/normalize/v1\nkind={}\nmode={:04o}\nowner={}\ngroup={}\n{body}",
                kind.as_str(),
                meta.mode,
                meta.owner,
                meta.group
            )
            .as_bytes(),
        )
    }

    #[test]
    fn digests_follow_their_definition_whether_parsed_here_or_by_the_render() {
        let meta = FileMeta::unit_default();
        let cases: [(Kind, &[u8]); 5] = [
            (
                Kind::Unit,
                b"[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\n",
            ),
            (
                Kind::Dropin,
                b"# c\n[Service]\nEnvironment=A=1\nEnvironment=\n",
            ),
            (Kind::Unit, b"not a unit file"),
            (Kind::Unit, b"\xff\xfe"),
            (Kind::File, b"[Unit]\nplain file\n"),
        ];
        for (kind, content) in cases {
            let n = normalize(kind, content, &meta);
            assert_eq!(
                n.digest,
                by_definition(kind, content, &meta),
                "{kind:?} {content:?}"
            );
            assert_eq!(n.raw_digest, sha256_hex(content));
            let parsed = std::str::from_utf8(content)
                .ok()
                .and_then(|t| UnitFile::parse("services/a/a.service", t).ok());
            if kind.is_ini() {
                assert_eq!(normalize_parsed(kind, content, parsed.as_ref(), &meta), n);
            }
        }
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        let mut s = String::from("x:");
        push_hex(&mut s, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(s, "x:000fa5ff");
        assert_eq!(
            sha256_hex(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn secret_digests_are_keyed_and_material() {
        let meta = FileMeta::unit_default();
        let k1 = DigestKey::derive(b"one");
        let k2 = DigestKey::derive(b"two");
        let a = normalize_secret(b"hunter2", &meta, &k1);
        assert!(a.digest.starts_with("hmac-sha256:"));
        assert_eq!(a, normalize_secret(b"hunter2", &meta, &k1));
        assert_ne!(a.digest, normalize_secret(b"hunter2", &meta, &k2).digest);
        assert_ne!(a.digest, normalize_secret(b"hunter3", &meta, &k1).digest);
        let mut m600 = meta.clone();
        m600.mode = 0o600;
        assert_ne!(a.digest, normalize_secret(b"hunter2", &m600, &k1).digest);
        // nothing of the plain digests
        let plain = normalize(Kind::File, b"hunter2", &meta);
        assert_ne!(a.raw_digest, plain.raw_digest);
        assert!(!a.digest.contains(&sha256_hex(b"hunter2")[7..]));
        assert_eq!(format!("{k1:?}"), "DigestKey(redacted)");
    }

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
