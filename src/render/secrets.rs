//! Secret host files: `services/<svc>/files/<path>.age` is an age-encrypted host file for
//! `<path>`, decrypted in memory with the host's root-only identity (docs/design.md
//! section 2, "Secrets").
//!
//! Why here, in render: the plan compares the decrypted bytes with the host's file (drift is
//! found as for any host file) and apply writes them, so the plaintext must exist in memory
//! from render on; it never reaches disk except as the host file itself, and nothing that is
//! printed or recorded carries more than the ciphertext's digest and keyed digests
//! ([`DigestKey`]). A host that cannot decrypt a secret gets that object blocked with the
//! reason, not a failed render: the rest of the host still converges.

use std::cell::OnceCell;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::normalize::{DigestKey, FileMeta, Normalized, normalize_secret, sha256_hex};
use crate::model::plan::SecretView;

/// The file-name suffix that marks a secret host file in `files/`.
pub const SECRET_SUFFIX: &str = ".age";

/// A rendered secret host file: what may be shown of it, and what is needed to compare it.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Secret {
    /// Source and ciphertext digest (all that plans and records show).
    #[serde(flatten)]
    pub view: SecretView,
    /// The digest key of the identity that decrypted it (`None` when it could not be).
    #[serde(skip)]
    pub key: Option<DigestKey>,
    /// Why this host cannot decrypt it; the plan blocks the object with this reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("view", &self.view)
            .field("problem", &self.problem)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// The digests of `content` (the decrypted desired bytes, or the host's file) with
    /// `meta`: keyed, so desired and observed compare as any digests; without a key (this
    /// host cannot decrypt it, and the plan blocks it) a fixed placeholder, never a digest
    /// of the content.
    pub fn digests(&self, content: &[u8], meta: &FileMeta) -> Normalized {
        match &self.key {
            Some(key) => normalize_secret(content, meta, key),
            None => Normalized {
                digest: UNAVAILABLE.into(),
                raw_digest: UNAVAILABLE.into(),
            },
        }
    }
}

/// The digest of a secret this host cannot decrypt.
const UNAVAILABLE: &str = "secret:unavailable";

/// The host's age identity, read at most once per run and only when a selected service has
/// a secret.
pub struct Keyring {
    path: PathBuf,
    loaded: OnceCell<Result<Identities, String>>,
}

struct Identities {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// Public keys (`age1...`), for the message when a file was not encrypted to them.
    recipients: Vec<String>,
    key: DigestKey,
}

impl Keyring {
    /// The identity at `path` (`--age-identity`, default `/etc/core-ops/age.key`).
    pub fn new(path: &Path) -> Keyring {
        Keyring {
            path: path.to_path_buf(),
            loaded: OnceCell::new(),
        }
    }

    fn identities(&self) -> Result<&Identities, &str> {
        self.loaded
            .get_or_init(|| load_identities(&self.path))
            .as_ref()
            .map_err(String::as_str)
    }

    /// Decrypt `ciphertext` (binary or ASCII-armored age) of the repository file
    /// `source`: the plaintext (empty when it cannot be decrypted) and the secret's record.
    pub fn unseal(&self, source: &str, ciphertext: &[u8]) -> (Vec<u8>, Secret) {
        let view = SecretView {
            source: source.to_string(),
            ciphertext_digest: sha256_hex(ciphertext),
        };
        let blocked = |problem: String| {
            let secret = Secret {
                view: view.clone(),
                key: None,
                problem: Some(format!("secret {source} cannot be decrypted{problem}")),
            };
            (Vec::new(), secret)
        };
        let ids = match self.identities() {
            Ok(ids) => ids,
            Err(e) => return blocked(format!(": {e}")),
        };
        match decrypt(&ids.identities, ciphertext) {
            Ok(plain) => {
                let key = Some(ids.key.clone());
                (
                    plain,
                    Secret {
                        view,
                        key,
                        problem: None,
                    },
                )
            }
            Err(e) => blocked(format!(
                " with {} ({}): {}",
                self.path.display(),
                ids.recipients.join(", "),
                decrypt_reason(&e)
            )),
        }
    }
}

/// The identity file: root-owned, readable by nobody else, every line an age identity (or a
/// comment); its first identity keys the digests.
fn load_identities(path: &Path) -> Result<Identities, String> {
    let missing = |what: &str| {
        format!(
            "{what} {}; create one with `core-ops secret keygen` (as root) and encrypt the \
             file to the public key it prints",
            path.display()
        )
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(missing("this host has no age identity at"));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    crate::fsutil::check_private(path, &crate::fsutil::private_owners())
        .map_err(|e| e.to_string())?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {:o}): an age identity must be root-only \
             (chmod 600)",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_identities(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse an identity file's text (what `age-keygen` and `core-ops secret keygen` write).
fn parse_identities(text: &[u8]) -> Result<Identities, String> {
    let lines: Vec<&str> = std::str::from_utf8(text)
        .map_err(|_| "not valid UTF-8".to_string())?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let Some(first) = lines.first() else {
        return Err("holds no age identity".into());
    };
    let mut identities = Vec::new();
    let mut recipients = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let (identity, public) = parse_identity(line).ok_or_else(|| {
            format!(
                "identity {} is not an age X25519 or post-quantum secret key \
                 (AGE-SECRET-KEY-1...)",
                i + 1
            )
        })?;
        identities.push(identity);
        recipients.push(public);
    }
    Ok(Identities {
        identities,
        recipients,
        key: DigestKey::derive(first.as_bytes()),
    })
}

/// One secret key line: the identity and its public key.
fn parse_identity(line: &str) -> Option<(Box<dyn age::Identity + Send + Sync>, String)> {
    if let Ok(i) = line.parse::<age::x25519::Identity>() {
        let public = i.to_public().to_string();
        return Some((Box::new(i), public));
    }
    let i = line.parse::<age::pq::Identity>().ok()?;
    let public = i.to_public().to_string();
    Some((Box::new(i), public))
}

fn decrypt(
    identities: &[Box<dyn age::Identity + Send + Sync>],
    ciphertext: &[u8],
) -> Result<Vec<u8>, age::DecryptError> {
    let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext))?;
    let mut reader =
        decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))?;
    let mut plain = Vec::new();
    reader.read_to_end(&mut plain)?;
    Ok(plain)
}

fn decrypt_reason(e: &age::DecryptError) -> String {
    match e {
        age::DecryptError::NoMatchingKeys => "it is not encrypted to this host's key; \
            re-encrypt it to the recipients in the repository (core-ops secret encrypt)"
            .into(),
        other => format!("not a valid age file ({other})"),
    }
}

/// A new X25519 identity file's text and its public key.
///
/// Why X25519 rather than the post-quantum keys age also offers: Debian's `age` (1.1)
/// encrypts only to X25519 recipients, and operators encrypt with whatever they have.
#[allow(deprecated)] // X25519 on purpose, see above
pub fn generate_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let text = format!(
        "# core-ops age identity (root-only; never commit it)\n# public key: {public}\n{}\n",
        id.to_string().expose_secret()
    );
    (text, public)
}

/// The public keys of the identity file at `path` (checked as the agent checks it).
pub fn identity_recipients(path: &Path) -> Result<Vec<String>, String> {
    load_identities(path).map(|i| i.recipients)
}

/// Encrypt `plaintext` to `recipients` (age public keys, `age1...`), ASCII-armored so it
/// diffs and reviews as text.
#[allow(deprecated)] // X25519 recipients: what `core-ops secret keygen` and Debian's age make
pub fn encrypt(recipients: &[String], plaintext: &[u8]) -> Result<Vec<u8>, String> {
    let mut parsed: Vec<Box<dyn age::Recipient + Send>> = Vec::new();
    for r in recipients {
        if let Ok(x) = r.parse::<age::x25519::Recipient>() {
            parsed.push(Box::new(x));
        } else if let Ok(p) = r.parse::<age::pq::Recipient>() {
            parsed.push(Box::new(p));
        } else {
            return Err(format!("'{r}' is not an age public key (age1...)"));
        }
    }
    let encryptor = age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref() as _))
        .map_err(|e| format!("cannot encrypt to these recipients: {e}"))?;
    let mut out = Vec::new();
    let armored = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| e.to_string())?;
    let mut w = encryptor.wrap_output(armored).map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut w, plaintext).map_err(|e| e.to_string())?;
    w.finish()
        .and_then(|a| a.finish())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity_file(dir: &Path) -> (PathBuf, String) {
        let (text, public) = generate_identity();
        let p = dir.join("age.key");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        (p, public)
    }

    #[test]
    fn round_trip_through_the_keyring() {
        let d = tempfile::tempdir().unwrap();
        let (p, public) = identity_file(d.path());
        let sealed = encrypt(&[public], b"s3cret\n").unwrap();
        assert!(sealed.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
        let (plain, secret) = Keyring::new(&p).unseal("services/a/files/etc/x.age", &sealed);
        assert_eq!(plain, b"s3cret\n");
        assert!(secret.problem.is_none() && secret.key.is_some());
        assert_eq!(secret.view.ciphertext_digest, sha256_hex(&sealed));
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn a_missing_identity_or_a_foreign_key_is_a_problem_not_an_error() {
        let d = tempfile::tempdir().unwrap();
        let (_, other) = generate_identity();
        let sealed = encrypt(&[other], b"x").unwrap();
        let (plain, s) = Keyring::new(&d.path().join("none")).unseal("f.age", &sealed);
        assert!(plain.is_empty());
        let why = s.problem.unwrap();
        assert!(
            why.contains("no age identity") && why.contains("core-ops secret keygen"),
            "{why}"
        );
        let (p, mine) = identity_file(d.path());
        let (plain, s) = Keyring::new(&p).unseal("f.age", &sealed);
        assert!(plain.is_empty() && s.key.is_none());
        let why = s.problem.unwrap();
        assert!(
            why.contains("not encrypted to this host's key") && why.contains(&mine),
            "{why}"
        );
        let (_, s) = Keyring::new(&p).unseal("f.age", b"plain text, not age");
        assert!(s.problem.unwrap().contains("not a valid age file"));
    }

    #[test]
    fn an_identity_others_can_read_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (p, public) = identity_file(d.path());
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let sealed = encrypt(&[public], b"x").unwrap();
        let why = Keyring::new(&p).unseal("f.age", &sealed).1.problem.unwrap();
        assert!(why.contains("readable by group or others"), "{why}");
    }

    #[test]
    fn the_digest_key_follows_the_first_identity_not_comments() {
        let (text, _) = generate_identity();
        let a = parse_identities(text.as_bytes()).unwrap();
        let b = parse_identities(format!("# another comment\n\n{text}").as_bytes()).unwrap();
        assert!(a.key == b.key);
        let (other, _) = generate_identity();
        assert!(parse_identities(other.as_bytes()).unwrap().key != a.key);
        assert!(parse_identities(b"# nothing\n").is_err());
        assert!(parse_identities(b"AGE-SECRET-KEY-1BOGUS\n").is_err());
    }
}
