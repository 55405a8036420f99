//! `core-ops secret ...`: the operator side of secret host files (docs/design.md section 2,
//! "Secrets"): make the host's identity, show its public key, encrypt a file for the
//! repository.
//!
//! Why in core-ops: the identity must be written exactly as the agent checks it (root-only,
//! 0600 from its first byte) and a host may have no `age` program; encrypting needs only
//! public keys, so it works on any operator's machine.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::args::{Cli, SecretCommand};
use super::emit;
use super::exit::Outcome;
use super::views::{SCHEMA_VERSION, SealedView, SecretKeyView};
use crate::config::Paths;
use crate::error::Error;
use crate::fsutil;
use crate::render::secrets;

/// Dispatch `core-ops secret ...`.
pub fn secret(cli: &Cli, paths: &Paths, command: &SecretCommand) -> Result<Outcome, Error> {
    match command {
        SecretCommand::Keygen => keygen(cli, &paths.age_identity),
        SecretCommand::Recipient => recipient(cli, &paths.age_identity),
        SecretCommand::Encrypt {
            recipients,
            recipients_files,
            for_service,
            repo_dir,
            output,
            input,
        } => {
            let mut files = recipients_files.clone();
            if let (Some(svc), Some(dir)) = (for_service, repo_dir) {
                files.extend(service_recipient_files(dir, svc)?);
            }
            encrypt(cli, recipients, &files, output.as_deref(), input.as_deref())
        }
    }
}

/// `secret keygen`: a new X25519 identity, never over an existing one (that would make every
/// secret encrypted to the old key unreadable).
fn keygen(cli: &Cli, identity: &Path) -> Result<Outcome, Error> {
    if identity.exists() {
        return Err(Error::Config(format!(
            "{} exists; core-ops never replaces an identity (secrets encrypted to it would \
             become unreadable): `core-ops secret recipient` prints its public key",
            identity.display()
        )));
    }
    let (text, public) = secrets::generate_identity();
    fsutil::write_new_mode(identity, text.as_bytes(), Some(0o600))?;
    emit_keys(cli, identity, true, vec![public])
}

/// `secret recipient`: the public keys of the identity, checked as the agent checks it.
fn recipient(cli: &Cli, identity: &Path) -> Result<Outcome, Error> {
    let recipients = secrets::identity_recipients(identity).map_err(Error::Config)?;
    emit_keys(cli, identity, false, recipients)
}

fn emit_keys(
    cli: &Cli,
    identity: &Path,
    created: bool,
    recipients: Vec<String>,
) -> Result<Outcome, Error> {
    emit(
        cli,
        &SecretKeyView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsAgeIdentity",
            identity: identity.display().to_string(),
            created,
            recipients,
        },
    )?;
    Ok(Outcome::Done)
}

/// `secret encrypt`: armored age to every recipient given, to a new file or stdout.
fn encrypt(
    cli: &Cli,
    keys: &[String],
    files: &[PathBuf],
    output: Option<&Path>,
    input: Option<&Path>,
) -> Result<Outcome, Error> {
    let mut recipients: Vec<String> = keys.to_vec();
    for f in files {
        recipients.extend(recipients_file(f)?);
    }
    if recipients.is_empty() {
        return Err(Error::Config(
            "no recipients: give -r age1... or -R FILE (e.g. hosts/<host>/age.recipients)".into(),
        ));
    }
    let plain = read_input(input)?;
    let sealed = secrets::encrypt(&recipients, &plain).map_err(Error::Config)?;
    let Some(out) = output else {
        let _ = std::io::stdout().lock().write_all(&sealed);
        return Ok(Outcome::Done);
    };
    fsutil::write_new(out, &sealed).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            Error::Config(format!("{} exists; not overwritten", out.display()))
        }
        other => other,
    })?;
    emit(
        cli,
        &SealedView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsSealedFile",
            output: out.display().to_string(),
            ciphertext_digest: crate::model::normalize::sha256_hex(&sealed),
            recipients,
        },
    )?;
    Ok(Outcome::Done)
}

/// The recipients files of every host in the work tree `dir` that selects `service` (and
/// the repository's own `age.recipients`, when there is one); a selecting host without one is
/// an error naming it, so no host is silently left unable to decrypt.
fn service_recipient_files(dir: &Path, service: &str) -> Result<Vec<PathBuf>, Error> {
    let hosts = dir.join("hosts");
    let entries =
        std::fs::read_dir(&hosts).map_err(|e| Error::io(format!("read {}", hosts.display()), e))?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut files = Vec::new();
    for host in names {
        let yaml_path = hosts.join(&host).join("host.yaml");
        let Ok(text) = std::fs::read(&yaml_path) else {
            continue;
        };
        let shown = format!("hosts/{host}/host.yaml");
        let doc: crate::model::yaml::HostYaml = crate::model::yaml::parse(&shown, &text)?;
        if !doc.services.iter().any(|s| s == service) {
            continue;
        }
        let r = hosts.join(&host).join("age.recipients");
        if !r.is_file() {
            return Err(Error::Config(format!(
                "host {host} selects service {service} but has no hosts/{host}/age.recipients \
                 (`core-ops secret keygen` on that host prints it)"
            )));
        }
        files.push(r);
    }
    if files.is_empty() {
        return Err(Error::Config(format!(
            "no host in {} selects service {service}",
            hosts.display()
        )));
    }
    let team = dir.join("age.recipients");
    if team.is_file() {
        files.push(team);
    }
    Ok(files)
}

/// Recipients from a file: one public key per line, blank lines and `#` comments skipped;
/// a line that is not a key is an input error naming file and line.
fn recipients_file(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with("age1") || line.contains(char::is_whitespace) {
            return Err(Error::Input(crate::error::InputError::new(
                crate::error::Location::line(path.display().to_string(), i + 1),
                "not an age public key (age1...)",
            )));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

fn read_input(input: Option<&Path>) -> Result<Vec<u8>, Error> {
    match input {
        Some(p) if p != Path::new("-") => {
            std::fs::read(p).map_err(|e| Error::io(format!("read {}", p.display()), e))
        }
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Error::io("read standard input", e))?;
            Ok(buf)
        }
    }
}
