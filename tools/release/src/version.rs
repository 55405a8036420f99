//! Version policy: the `X.Y.Z` of `Cargo.toml`, the three bump kinds, and the rule that ties
//! them to the release fragments and the changelog.
//!
//! Why its own file: the policy is the one place where fragments, changelog and the base
//! revision meet; everything it needs arrives as plain values, so it is tested without git.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Finding;
use super::changelog::Changelog;
use super::fragments::Fragment;

/// A release version `MAJOR.MINOR.PATCH` (SemVer 2.0.0 without pre-release or build parts).
///
/// Why not the `semver` crate: the policy only admits plain `X.Y.Z` (changelog headings and
/// tags carry nothing else), so a three-number type says exactly what is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible changes.
    pub major: u64,
    /// Compatible additions.
    pub minor: u64,
    /// Compatible fixes.
    pub patch: u64,
}

impl Version {
    /// Parse `X.Y.Z` (decimal, no leading zeros, nothing else).
    ///
    /// Why strict: `1.02.0` or `1.2` would sort or tag ambiguously.
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split('.');
        let mut next = || -> Option<u64> {
            let p = parts.next()?;
            if p.is_empty()
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                return None;
            }
            p.parse().ok()
        };
        let v = Version {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        parts.next().is_none().then_some(v)
    }

    /// The version after a bump of this kind.
    ///
    /// Why plain SemVer even below 1.0: the rule must be mechanical; `major` on `0.4.1` gives
    /// `1.0.0`.
    pub fn bumped(self, bump: Bump) -> Version {
        match bump {
            Bump::Patch => Version {
                patch: self.patch + 1,
                ..self
            },
            Bump::Minor => Version {
                minor: self.minor + 1,
                patch: 0,
                ..self
            },
            Bump::Major => Version {
                major: self.major + 1,
                minor: 0,
                patch: 0,
            },
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// How far a change moves the version; ordered so the highest bump wins.
///
/// Why an enum: a fragment's `bump` is one of exactly three words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bump {
    /// Fixes only.
    Patch,
    /// New, compatible behaviour.
    Minor,
    /// Incompatible change.
    Major,
}

impl Bump {
    /// Parse `patch`, `minor` or `major`.
    ///
    /// Why: fragments are read from YAML as strings and checked with a precise message.
    pub fn parse(s: &str) -> Option<Bump> {
        match s {
            "patch" => Some(Bump::Patch),
            "minor" => Some(Bump::Minor),
            "major" => Some(Bump::Major),
            _ => None,
        }
    }
}

impl fmt::Display for Bump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bump::Patch => "patch",
            Bump::Minor => "minor",
            Bump::Major => "major",
        })
    }
}

/// The `version = "..."` of the `[package]` table, with its 1-based line.
///
/// Why a line scan rather than a TOML parser: the finding must name the line, the manifest
/// keeps the version as a plain string in `[package]`, and no other table matters.
pub fn package_version(cargo_toml: &str) -> Result<(Version, usize), (usize, String)> {
    let mut in_package = false;
    for (i, raw) in cargo_toml.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        let Some(rest) = line.strip_prefix("version") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.split('#').next().unwrap_or("").trim();
        let Some(s) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
            return Err((
                i + 1,
                format!("package version must be a plain string \"X.Y.Z\" (found {value})"),
            ));
        };
        return match Version::parse(s) {
            Some(v) => Ok((v, i + 1)),
            None => Err((
                i + 1,
                format!("package version `{s}` is not a release version X.Y.Z"),
            )),
        };
    }
    Err((1, "no `version = \"X.Y.Z\"` in the [package] table".into()))
}

/// What the policy compares the working tree with.
///
/// Why: the same rule runs against the newest tag (release readiness) or any `--base REF`
/// (the change under review).
#[derive(Debug, Clone)]
pub struct BaseState {
    /// How the base was named (`v0.1.0`, `origin/main`).
    pub name: String,
    /// The package version at the base.
    pub version: Version,
    /// True when everything that changed since the base is release metadata (Cargo.toml,
    /// Cargo.lock, CHANGELOG.md, changes/).
    pub metadata_only: bool,
}

/// The current version with its line in `Cargo.toml`.
///
/// Why: every version-policy finding points at that line.
#[derive(Debug, Clone, Copy)]
pub struct Current {
    /// The package version in the working tree.
    pub version: Version,
    /// Its 1-based line in `Cargo.toml`.
    pub line: usize,
}

/// Check the version policy (see DEVELOPMENT.md, "Release flow").
///
/// `added` are the fragments added since the base; `base` is `None` when there is neither a
/// `--base` nor a `vX.Y.Z` tag (nothing was released yet).
pub fn check(
    current: Current,
    base: Option<&BaseState>,
    added: &[&Fragment],
    changelog: Option<&Changelog>,
    out: &mut Vec<Finding>,
) {
    let cargo = |message: String| Finding::new("Cargo.toml", current.line, "version", message);
    // whatever the base: the changelog may not be ahead of the manifest
    if let Some(newest) = changelog.and_then(|c| c.releases.first())
        && newest.version > current.version
    {
        out.push(Finding::new(
            "CHANGELOG.md",
            newest.line,
            "version-changelog",
            format!(
                "CHANGELOG.md releases {} but Cargo.toml is at {}",
                newest.version, current.version
            ),
        ));
    }
    let Some(base) = base else { return };
    let names = |fs: &[&Fragment]| {
        fs.iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let highest = added.iter().map(|f| f.bump).max();

    if current.version == base.version {
        for f in added.iter().filter(|f| f.release_preparation) {
            out.push(Finding::new(
                &f.path,
                f.release_preparation_line,
                "version",
                format!(
                    "release_preparation: true, but the version did not move since {} ({})",
                    base.name, base.version
                ),
            ));
        }
        if !added.is_empty()
            && let Some(c) = changelog
            && !c.unreleased_has_entries
        {
            out.push(Finding::new(
                "CHANGELOG.md",
                c.unreleased_line.unwrap_or(1),
                "version-changelog",
                format!(
                    "fragments were added since {} ({}) but `## [Unreleased]` has no entries",
                    base.name,
                    names(added)
                ),
            ));
        }
        return;
    }
    if current.version < base.version {
        out.push(cargo(format!(
            "version went back from {} ({}) to {}",
            base.version, base.name, current.version
        )));
        return;
    }
    let Some(highest) = highest else {
        out.push(cargo(format!(
            "version moved from {} ({}) to {} but no release fragment was added since {}: add \
             changes/<change-id>.md (with release_preparation: true for a metadata-only \
             release preparation)",
            base.version, base.name, current.version, base.name
        )));
        return;
    };
    let expected = base.version.bumped(highest);
    if current.version != expected {
        let by: Vec<&Fragment> = added
            .iter()
            .copied()
            .filter(|f| f.bump == highest)
            .collect();
        out.push(cargo(format!(
            "version moved from {} ({}) to {}, but the highest bump among the fragments added \
             since {} is {} ({}): expected {}",
            base.version,
            base.name,
            current.version,
            base.name,
            highest,
            names(&by),
            expected
        )));
    }
    if base.metadata_only && !added.iter().any(|f| f.release_preparation) {
        out.push(cargo(format!(
            "only release metadata changed since {} and the version moved to {}: declare this \
             metadata-only release preparation with release_preparation: true in its fragment",
            base.name, current.version
        )));
    }
    if let Some(c) = changelog {
        match c.releases.first() {
            Some(r) if r.version == current.version => {}
            Some(r) => out.push(Finding::new(
                "CHANGELOG.md",
                r.line,
                "version-changelog",
                format!(
                    "Cargo.toml moved to {} but the newest release section is [{}]: add `## [{}] - \
                     YYYY-MM-DD` below `## [Unreleased]`",
                    current.version, r.version, current.version
                ),
            )),
            None => out.push(Finding::new(
                "CHANGELOG.md",
                c.unreleased_line.unwrap_or(1),
                "version-changelog",
                format!(
                    "Cargo.toml moved to {} but CHANGELOG.md has no `## [{}] - YYYY-MM-DD` \
                     section",
                    current.version, current.version
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_plain_versions() {
        assert_eq!(
            Version::parse("1.20.3"),
            Some(Version {
                major: 1,
                minor: 20,
                patch: 3
            })
        );
        for bad in [
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.2.3-rc.1",
            "v1.2.3",
            "",
            "1..3",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bumps() {
        let v = Version::parse("0.4.1").unwrap();
        assert_eq!(v.bumped(Bump::Patch).to_string(), "0.4.2");
        assert_eq!(v.bumped(Bump::Minor).to_string(), "0.5.0");
        assert_eq!(v.bumped(Bump::Major).to_string(), "1.0.0");
        assert!(Bump::Major > Bump::Minor && Bump::Minor > Bump::Patch);
    }

    #[test]
    fn reads_the_package_version_and_its_line() {
        let toml = "[workspace]\nversion = \"9.9.9\"\n\n[package]\nname = \"x\"\nversion = \"0.3.0\" # here\n\n[dependencies]\nversion = \"1\"\n";
        let (v, line) = package_version(toml).unwrap();
        assert_eq!((v.to_string(), line), ("0.3.0".to_string(), 6));
        assert_eq!(
            package_version("[package]\nversion = \"1.0\"\n")
                .unwrap_err()
                .0,
            2
        );
        assert!(package_version("[package]\nname = \"x\"\n").is_err());
    }
}
