//! The two YAML documents of a desired-state repository, `host.yaml` and `service.yaml`, read
//! strictly: unknown keys are errors, and every error names the file and line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{InputError, Location};

/// `hosts/<host>/host.yaml`: the explicit selection for one host.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct HostYaml {
    /// Services this host runs; nothing is implied.
    pub services: Vec<String>,
    /// Runtime name -> version.
    #[serde(default)]
    pub runtimes: BTreeMap<String, String>,
    /// Host policy.
    #[serde(default)]
    pub policy: Policy,
    /// Free-form variables (reserved for templating; recorded, not yet substituted).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Trust policy carried by the repository (`crate::trust`; read before render, and only
    /// when there is no local trust file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustPolicy>,
    /// Settle window of this host's services that can still fail after their start (a
    /// running main process, no readiness protocol), e.g. `1500ms`, `2s`; `0s` waits for
    /// none. Default: `--settle-ms` / `CORE_OPS_SETTLE_MS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<Settle>,
}

/// A settle window as written in YAML: `<n>ms`, `<n>s` or `<n>m`, at most 10 minutes.
///
/// Why a type: the text is checked once, where the file is read, and the error names the
/// file and line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(into = "String")]
pub struct Settle(pub std::time::Duration);

impl From<Settle> for String {
    fn from(s: Settle) -> String {
        format!("{}ms", s.0.as_millis())
    }
}

impl TryFrom<String> for Settle {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let bad =
            || format!("settle: '{text}' is not a duration like 1500ms, 2s or 1m (at most 10m)");
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = t[..split].parse().map_err(|_| bad())?;
        let d = match &t[split..] {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
            _ => return Err(bad()),
        };
        if d > std::time::Duration::from_secs(600) {
            return Err(bad());
        }
        Ok(Settle(d))
    }
}

impl<'de> Deserialize<'de> for Settle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Settle;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration like 1500ms, 2s or 1m")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Settle, E> {
                Settle::try_from(v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A trust policy, as written in the local trust file or under `trust:` in `host.yaml`.
///
/// OpenPGP keys are not part of it: core-ops verifies SSH signatures only, and refuses an
/// OpenPGP- or X.509-signed commit under `require_signed` with a message saying so.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustPolicy {
    /// Refuse commits without a valid signature by an allowed signer.
    #[serde(default)]
    pub require_signed: bool,
    /// Absolute host path of an OpenSSH allowed-signers file (git's
    /// `gpg.ssh.allowedSignersFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_signers: Option<std::path::PathBuf>,
    /// Accept a desired revision that does not descend from `last_applied` (local file only).
    #[serde(default)]
    pub allow_rewind: bool,
}

/// Host policy (docs/design.md sections 2 and 11).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Runtime publishers allowed to install.
    #[serde(default)]
    pub allowed_publishers: Vec<String>,
    /// Whether local artifacts without a digest may install.
    #[serde(default)]
    pub allow_unverified_local: bool,
    /// Windows like `Sat 02:00-04:00`.
    #[serde(default)]
    pub maintenance_windows: Vec<String>,
    /// Minimum free disk, e.g. `1GiB`.
    #[serde(default)]
    pub min_free_disk: Option<String>,
    /// Re-apply the last converged revision when verification fails.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// Same failure this many times -> quarantine.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Catalog publication requests (disabled by default).
    #[serde(default)]
    pub publication: Publication,
}

/// Host policy for evidence publication requests. core-ops never sends anything: an enabled
/// policy only lets `core-ops evidence publish-request` write a request into an outbox for
/// human review. No credentials belong here.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Publication {
    /// Whether publication requests may be written at all (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Ref of the catalog authority the request is addressed to (e.g.
    /// `urn:srcos:authority:example`); recorded in the request, never contacted.
    #[serde(default)]
    pub authority: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_publishers: Vec::new(),
            allow_unverified_local: false,
            maintenance_windows: Vec::new(),
            min_free_disk: None,
            auto_rollback: true,
            max_attempts: 3,
            publication: Publication::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_attempts() -> u32 {
    3
}

/// `services/<service>/service.yaml`: what unit files cannot say.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceYaml {
    /// Host files of this service by absolute target path.
    #[serde(default)]
    pub files: BTreeMap<String, FileSpec>,
    /// Per-unit settings by unit name.
    #[serde(default)]
    pub units: BTreeMap<String, UnitSpec>,
    /// Settle window of this service's units that can still fail after their start (see
    /// [`HostYaml::settle`]); wins over the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<Settle>,
}

/// Mode, ownership and restart semantics of one host file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Octal mode as a string, e.g. `"0640"` (default `0644`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Owner user name (default `root`).
    #[serde(default)]
    pub owner: Option<String>,
    /// Owner group name (default `root`).
    #[serde(default)]
    pub group: Option<String>,
    /// Units restarted when this file changes (default: the service's `.service` units).
    #[serde(default)]
    pub restart: Option<Vec<String>>,
    /// What to do when the file drifts on the host (default `repair`).
    #[serde(default)]
    pub drift: DriftPolicy,
    /// Take over a file that exists on the host before core-ops manages it (default false:
    /// a pre-existing file that differs blocks the plan).
    #[serde(default)]
    pub adopt: bool,
    /// Allow a setuid, setgid, sticky or world-writable `mode` (default false: such a mode
    /// is refused at plan, so it is never written by accident).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_special_mode: bool,
}

/// What core-ops does when an object no longer matches what it applied.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriftPolicy {
    /// Put it back (the default).
    #[default]
    Repair,
    /// Only report it (a finding; the action stays `no_op`).
    Report,
}

/// Per-unit lifecycle overrides.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// Enable the unit file (default: it has an `[Install]` section).
    #[serde(default)]
    pub enable: Option<bool>,
    /// Keep the unit started (default: it has `WantedBy=`/`RequiredBy=`, or it is a mount or
    /// automount).
    #[serde(default)]
    pub start: Option<bool>,
    /// What to do when the unit file or its runtime state drifts (default `repair`).
    #[serde(default)]
    pub drift: DriftPolicy,
    /// Instances of a template unit (`foo@.service`) to enable and start, e.g. `[a, b]` for
    /// `foo@a.service` and `foo@b.service` (default: its `DefaultInstance=`, else none: a
    /// template is installed, never started itself).
    #[serde(default)]
    pub instances: Option<Vec<String>>,
    /// Take over a unit file that exists on the host before core-ops manages it.
    #[serde(default)]
    pub adopt: bool,
}

/// Parse a YAML document strictly, turning serde's error into `file:line: message`.
pub fn parse<T: for<'de> Deserialize<'de>>(file: &str, text: &[u8]) -> Result<T, InputError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| InputError::new(Location::file(file), "not valid UTF-8"))?;
    serde_yaml::from_str(text).map_err(|e| {
        let location = match e.location() {
            Some(l) => Location::line(file, l.line()),
            None => Location::file(file),
        };
        // serde_yaml appends " at line L column C"; the location already says it
        let msg = e.to_string();
        let msg = match msg.find(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        InputError::new(location, msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_with_line() {
        let err =
            parse::<HostYaml>("hosts/a/host.yaml", b"services: [web]\nservice: [x]\n").unwrap_err();
        assert_eq!(err.location, Location::line("hosts/a/host.yaml", 2));
        assert!(err.message.contains("unknown field `service`"), "{err}");
        let err = parse::<ServiceYaml>(
            "services/web/service.yaml",
            b"files:\n  /etc/x:\n    mode: \"0644\"\n    colour: red\n",
        )
        .unwrap_err();
        assert_eq!(err.location.line, Some(4));
    }

    #[test]
    fn policy_defaults() {
        let h: HostYaml = parse("h", b"services: []\n").unwrap();
        assert!(h.policy.auto_rollback);
        assert_eq!(h.policy.max_attempts, 3);
    }
}
