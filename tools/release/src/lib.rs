//! Release governance for maintainers, behind the `core-ops-release` binary: release fragments,
//! the changelog, the version policy that ties them to `Cargo.toml`, and the check of the
//! authoritative verification environment.
//!
//! Why in the library: the rules are tested as functions and through the binary; the binary
//! itself only parses arguments and prints.

pub mod base;
pub mod changelog;
pub mod cli;
pub mod environment;
pub mod fragments;
pub mod version;

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One problem, reported as `file:line: message`.
///
/// Why a rule id too: `--json` consumers and tests match on it rather than on wording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Repository-relative path.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// Stable rule id, e.g. `fragment-bump`, `changelog-order`, `version`.
    pub rule: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Finding {
    /// A finding at `file:line`.
    pub fn new(
        file: impl Into<String>,
        line: usize,
        rule: impl Into<String>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            file: file.into(),
            line,
            rule: rule.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// The result of `validate`.
///
/// Why the base too: the text output says what the version policy compared with.
#[derive(Debug, Clone)]
pub struct Report {
    /// `v0.1.0 (abc123...)`, or `none` when nothing was released yet.
    pub base: String,
    /// Every problem found.
    pub findings: Vec<Finding>,
}

/// Validate the release metadata of the working tree containing `dir` against `base` (default:
/// the newest `vX.Y.Z` tag reachable from `HEAD`, or none).
///
/// Why `Err` is separate from findings: an unknown `--base` is a usage error of the tool, not a
/// problem of the repository.
pub fn validate(dir: &Path, base: Option<&str>) -> Result<Report, String> {
    let discovered = base::discover(dir);
    let root = discovered
        .as_ref()
        .map_or_else(|| dir.to_path_buf(), |(_, r)| r.clone());
    let mut out = Vec::new();

    let frags = fragments::check_dir(&root, &mut out);

    let log = match std::fs::read_to_string(root.join(changelog::FILE)) {
        Ok(text) => Some(changelog::check(&text, &mut out)),
        Err(e) => {
            out.push(Finding::new(
                changelog::FILE,
                1,
                "changelog-missing",
                format!("cannot read {}: {e}", changelog::FILE),
            ));
            None
        }
    };

    let current = match std::fs::read_to_string(root.join("Cargo.toml")) {
        Ok(text) => match version::package_version(&text) {
            Ok((v, line)) => Some(version::Current { version: v, line }),
            Err((line, msg)) => {
                out.push(Finding::new("Cargo.toml", line, "version", msg));
                None
            }
        },
        Err(e) => {
            out.push(Finding::new(
                "Cargo.toml",
                1,
                "version",
                format!("cannot read Cargo.toml: {e}"),
            ));
            None
        }
    };

    let base_name = match (base, &discovered) {
        (Some(b), Some(_)) => Some(b.to_string()),
        (Some(b), None) => {
            return Err(format!(
                "--base {b}: {} is not inside a git repository",
                dir.display()
            ));
        }
        (None, Some((repo, _))) => base::newest_tag(repo)?,
        (None, None) => None,
    };
    let loaded = match (&base_name, &discovered) {
        (Some(name), Some((repo, _))) => Some(base::load(repo, name)?),
        _ => None,
    };
    let mut base_label = "none (no --base and no vX.Y.Z tag)".to_string();
    let mut state = None;
    let mut added: Vec<&fragments::Fragment> = frags.iter().collect();
    if let Some(b) = &loaded {
        base_label = format!("{} ({})", b.name, &b.commit[..12.min(b.commit.len())]);
        added.retain(|f| {
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            !b.fragments.contains(name)
        });
        match b.cargo_toml.as_deref().map(version::package_version) {
            Some(Ok((v, _))) => {
                state = Some(version::BaseState {
                    name: b.name.clone(),
                    version: v,
                    metadata_only: !b.changed_paths.is_empty()
                        && b.changed_paths.iter().all(|p| base::is_metadata(p)),
                })
            }
            Some(Err((_, msg))) => out.push(Finding::new(
                "Cargo.toml",
                current.map_or(1, |c| c.line),
                "version",
                format!("at the base {}: {msg}", b.name),
            )),
            None => out.push(Finding::new(
                "Cargo.toml",
                1,
                "version",
                format!("the base {} has no Cargo.toml", b.name),
            )),
        }
    }
    if let Some(current) = current {
        version::check(current, state.as_ref(), &added, log.as_ref(), &mut out);
    }
    Ok(Report {
        base: base_label,
        findings: out,
    })
}
