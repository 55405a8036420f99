//! Credentials for remote repositories: root-only YAML files in a local directory
//! (`/etc/core-ops/credentials.d/*.yaml`, `--credentials-dir`, `CORE_OPS_CREDENTIALS_DIR`),
//! matched against the repository URL by prefix (the longest prefix wins).
//!
//! Why local files: the repository being judged must never carry the secrets that fetch it,
//! and a secret on the command line or in the URL ends up in `ps`, shell history, status and
//! logs. The entry names *files* (key, password, token, passphrase); their content is read
//! only when a fetch needs it and is never put into a message.
//!
//! ```yaml
//! # /etc/core-ops/credentials.d/fleet.yaml (root-only, like every file it names)
//! url: https://git.example.com/fleet/      # prefix of the repository URL (no user-info)
//! username: deploy                         # HTTPS basic auth, with password_file
//! password_file: /etc/core-ops/secrets/fleet-token
//! ```
//! Other keys: `bearer_token_file` (HTTPS `Authorization: Bearer`), `client_cert` /
//! `client_key` (TLS client certificate), `ca_file` (CA bundle for the server), `proxy`
//! (HTTP proxy for this remote); `ssh_key`, `ssh_passphrase_file`, `ssh_agent` (use
//! `SSH_AUTH_SOCK`), `known_hosts` (the pinned host keys; required for ssh); `timeout`
//! (seconds, overrides `--fetch-timeout` for this remote).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, InputError, Location, Result};

pub use crate::config::DEFAULT_CREDENTIALS_DIR;

/// One entry of the credentials directory, as written.
///
/// Why every secret is a path: a file can be root-only (checked), rotated without touching
/// core-ops' configuration, and its content never passes through a YAML parser error message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// URL prefix this entry applies to (`https://git.example.com/fleet/`,
    /// `ssh://git.example.com:2222/`); user-info is ignored when matching.
    pub url: String,
    /// HTTPS basic-auth user name (with `password_file`).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the HTTPS basic-auth password or access token (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// File holding an HTTPS bearer token (first line).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// TLS client certificate (PEM).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Private key of the client certificate (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// CA bundle the server certificate must chain to (instead of the system bundle).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// HTTP(S) proxy URL for this remote (otherwise `https_proxy`/`HTTPS_PROXY` apply).
    #[serde(default)]
    pub proxy: Option<String>,
    /// SSH deploy key (private key file).
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
    /// File holding the deploy key's passphrase.
    #[serde(default)]
    pub ssh_passphrase_file: Option<PathBuf>,
    /// Offer the keys of the ssh-agent at `SSH_AUTH_SOCK`.
    #[serde(default)]
    pub ssh_agent: bool,
    /// known_hosts file with the pinned host key(s) of the server; required for ssh.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Fetch timeout for this remote, in seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// The file the entry came from (set when loaded).
    #[serde(skip)]
    pub source_file: PathBuf,
}

impl Credential {
    /// Every secret *file* this entry names, for the root-only check.
    fn files(&self) -> Vec<&Path> {
        [
            &self.password_file,
            &self.bearer_token_file,
            &self.client_key,
            &self.client_cert,
            &self.ca_file,
            &self.ssh_key,
            &self.ssh_passphrase_file,
            &self.known_hosts,
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect()
    }

    /// Whether this entry applies to the (redacted) `url`: equal, or a prefix ending at a
    /// path boundary, so `https://git.example.com` never matches `https://git.example.com.evil/`.
    pub fn matches(&self, url: &str) -> bool {
        let prefix = match_key(&self.url);
        let url = match_key(url);
        url == prefix
            || (url.starts_with(&prefix)
                && (prefix.ends_with('/') || url[prefix.len()..].starts_with('/')))
    }
}

/// A URL as it is matched: user-info removed, scheme and host lower-cased, scp-like
/// `[user@]host:path` written as `ssh://host/path`.
pub fn match_key(url: &str) -> String {
    let url = crate::source::redact(url);
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r.to_string()),
        None => match url.split_once(':') {
            Some((host, path)) => (
                "ssh".to_string(),
                format!(
                    "{}/{}",
                    host.rsplit('@').next().unwrap_or(host),
                    path.trim_start_matches('/')
                ),
            ),
            None => return url,
        },
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest.as_str(), ""),
    };
    format!("{scheme}://{}{path}", host.to_ascii_lowercase())
}

/// Load every `*.yaml` entry of `dir` (sorted by name). A missing directory is no entries.
///
/// Each file, and every file an entry names, must be root-only (owned by root, or the running
/// user when not root, not writable by group or others, in directories likewise): a
/// credential anyone else could swap is refused with the path.
pub fn load_dir(dir: &Path) -> Result<Vec<Credential>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("read dir {}", dir.display()), e)),
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = read_private_file(&file)?;
        let shown = file.display().to_string();
        let mut c: Credential = crate::model::yaml::parse(&shown, text.as_bytes())?;
        c.source_file = file.clone();
        validate(&c, &shown)?;
        out.push(c);
    }
    Ok(out)
}

fn validate(c: &Credential, file: &str) -> std::result::Result<(), InputError> {
    let err = |m: String| InputError::new(Location::file(file), m);
    if c.url.trim().is_empty() || !crate::source::is_remote(&c.url) {
        return Err(err(format!(
            "url must be a repository URL prefix (https://, ssh://, git://), not '{}'",
            crate::source::redact(&c.url)
        )));
    }
    if crate::source::redact(&c.url) != c.url {
        return Err(err(
            "url must not carry user-info (user:password@); name the user with `username` and \
             the secret with `password_file`"
                .into(),
        ));
    }
    for p in c.files() {
        if !p.is_absolute() {
            return Err(err(format!("'{}' must be an absolute path", p.display())));
        }
    }
    if c.password_file.is_some() != c.username.is_some() {
        return Err(err(
            "username and password_file go together (HTTPS basic auth)".into(),
        ));
    }
    if c.password_file.is_some() && c.bearer_token_file.is_some() {
        return Err(err(
            "password_file and bearer_token_file exclude each other".into(),
        ));
    }
    if c.client_key.is_some() && c.client_cert.is_none() {
        return Err(err("client_key needs client_cert".into()));
    }
    if c.ssh_passphrase_file.is_some() && c.ssh_key.is_none() {
        return Err(err("ssh_passphrase_file needs ssh_key".into()));
    }
    if c.timeout == Some(0) {
        return Err(err("timeout must be at least 1 second".into()));
    }
    if let Some(p) = &c.proxy
        && crate::source::redact(p) != *p
    {
        return Err(err("proxy must not carry user-info (user:password@)".into()));
    }
    Ok(())
}

/// Read a root-only file (see [`load_dir`] for what root-only means).
fn read_private_file(path: &Path) -> Result<String> {
    crate::fsutil::check_private(path, &crate::fsutil::private_owners())?;
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))
}

/// The entry for `url`: the longest matching prefix; `None` when no entry matches.
///
/// Why longest: a fleet-wide entry for the host and a narrower one for one repository may
/// both exist; the narrower one is the more deliberate.
pub fn for_url<'a>(entries: &'a [Credential], url: &str) -> Option<&'a Credential> {
    entries
        .iter()
        .filter(|c| c.matches(url))
        .max_by_key(|c| match_key(&c.url).len())
}

/// Check that every file the entry names is root-only; the secret contents are read later,
/// by the fetch that needs them.
pub fn check_files(c: &Credential) -> Result<()> {
    for p in c.files() {
        crate::fsutil::check_private(p, &crate::fsutil::private_owners())?;
    }
    Ok(())
}

/// The first line of a secret file (trailing newline and whitespace removed), refused when
/// empty.
pub fn read_secret(path: &Path) -> Result<String> {
    let text = read_private_file(path)?;
    let line = text.lines().next().unwrap_or("").trim_end().to_string();
    if line.is_empty() {
        return Err(Error::Config(format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(url: &str) -> Credential {
        Credential {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn prefix_matching_respects_path_boundaries_and_longest_wins() {
        let host = cred("https://git.example.com");
        let fleet = cred("https://git.example.com/fleet/");
        assert!(host.matches("https://git.example.com/fleet/hosts.git"));
        assert!(host.matches("https://u:p@GIT.example.com/x"));
        assert!(!host.matches("https://git.example.com.evil.org/fleet"));
        assert!(!host.matches("ssh://git.example.com/fleet"));
        assert!(fleet.matches("https://git.example.com/fleet/hosts.git"));
        assert!(!fleet.matches("https://git.example.com/fleetx/hosts.git"));
        let all = vec![host.clone(), fleet.clone()];
        assert_eq!(
            for_url(&all, "https://git.example.com/fleet/a.git").map(|c| &c.url),
            Some(&fleet.url)
        );
        assert_eq!(
            for_url(&all, "https://git.example.com/other.git").map(|c| &c.url),
            Some(&host.url)
        );
        let scp = cred("ssh://git.example.com/fleet/");
        assert!(scp.matches("git@git.example.com:fleet/hosts.git"));
        assert!(cred("ssh://h:2222/").matches("ssh://git@h:2222/srv/r.git"));
        assert!(!cred("ssh://h:2222/").matches("ssh://git@h:22/srv/r.git"));
    }

    #[test]
    fn entries_are_validated_with_the_file_named() {
        fn check(yaml: &str) -> String {
            let c: Credential = match crate::model::yaml::parse("c.yaml", yaml.as_bytes()) {
                Ok(c) => c,
                Err(e) => return e.to_string(),
            };
            match validate(&c, "c.yaml") {
                Ok(()) => String::new(),
                Err(e) => e.to_string(),
            }
        }
        assert_eq!(
            check("url: https://h/\nusername: u\npassword_file: /p\n"),
            ""
        );
        assert!(check("url: https://h/\ncolour: red\n").contains("c.yaml:2"));
        assert!(check("url: https://u:p@h/\n").contains("user-info"));
        assert!(check("url: /srv/repo\n").contains("repository URL prefix"));
        assert!(check("url: https://h/\npassword_file: /p\n").contains("go together"));
        assert!(check("url: https://h/\nssh_key: key\n").contains("absolute"));
        assert!(check("url: ssh://h/\nssh_passphrase_file: /p\n").contains("needs ssh_key"));
    }
}
