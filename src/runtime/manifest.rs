//! Runtime manifests, `runtimes/<name>/<version>.yaml`, read strictly (unknown keys are
//! errors), validated into types that cannot be wrong, and resolved for a host in `depends:`
//! order. Every error names the file and, where it can, the line.
//!
//! ```yaml
//! name: hello
//! version: 1.2.0
//! publisher: example
//! artifacts:
//!   - name: hello-1.2.0.tar.gz
//!     source: artifacts/hello-1.2.0.tar.gz   # repo-relative, file://, /abs/path or https://
//!     digest: sha256:<64 hex>                # required unless the source is local
//! depends: [base-tools]                      # other runtimes installed first
//! units: [hello.service]                     # restarted on switch; health-checked
//! health: { timeout: 30s }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{InputError, Location};
use crate::model::normalize::sha256_hex;
use crate::model::yaml;
use crate::source::RepoFiles;

/// Default health timeout of a runtime's units after the switch.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    publisher: String,
    artifacts: Vec<RawArtifact>,
    #[serde(default)]
    depends: Vec<String>,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    health: Option<RawHealth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    name: String,
    source: String,
    #[serde(default)]
    digest: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    timeout: Option<String>,
}

/// Bytes of a repository file, shared rather than copied again.
///
/// Why a newtype: `Debug` must not print an artifact's bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob(pub Arc<Vec<u8>>);

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// Where an artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// A file of the same commit (path relative to the repository root).
    Repo {
        /// Repository path.
        path: String,
        /// Its content at the commit.
        data: Blob,
    },
    /// A local file (`/abs/path` or `file:///abs/path`).
    Local {
        /// Absolute path.
        path: PathBuf,
    },
    /// An `https://` URL (this build has no HTTP client; installing one fails with a clear
    /// reason).
    Https {
        /// The URL as written.
        url: String,
    },
}

impl ArtifactSource {
    /// Whether the source is a local file (the case policy may allow without a digest).
    pub fn is_local(&self) -> bool {
        matches!(self, ArtifactSource::Local { .. })
    }

    /// The source as shown in records (credentials redacted).
    pub fn display(&self) -> String {
        match self {
            ArtifactSource::Repo { path, .. } => format!("repo:{path}"),
            ArtifactSource::Local { path } => path.display().to_string(),
            ArtifactSource::Https { url } => crate::source::redact(url),
        }
    }
}

/// One artifact of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSpec {
    /// File name (also its ref: `urn:srcos:artifact:<runtime>@<version>:<name>`).
    pub name: String,
    /// Where it comes from.
    pub source: ArtifactSource,
    /// Pinned `sha256:<hex>` (lowercase); `None` only for local sources.
    pub digest: Option<String>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Runtime name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Publisher (checked against `policy.allowed_publishers`).
    pub publisher: String,
    /// Artifacts, unpacked in this order into one tree.
    pub artifacts: Vec<ArtifactSpec>,
    /// Runtimes installed before this one.
    pub depends: Vec<String>,
    /// Units restarted after the switch and health-checked.
    pub units: Vec<String>,
    /// How long units may take to become healthy.
    pub health_timeout: Duration,
}

/// A manifest selected by a host, with what the pipeline needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRuntime {
    /// The manifest.
    pub manifest: Manifest,
    /// Repository path of the manifest.
    pub file: String,
    /// The manifest's text (evidence).
    pub text: String,
    /// `sha256:<hex>` of the manifest bytes.
    pub manifest_digest: String,
    /// Material text: name, version, artifact digests (docs/design.md section 4).
    pub material: String,
    /// `sha256:<hex>` of the material text.
    pub material_digest: String,
}

/// Whether a runtime name is acceptable (also a directory name under the state dir).
pub fn valid_name(s: &str) -> bool {
    valid_version(s)
}

/// Whether a version is acceptable (a directory name beside `current`).
pub fn valid_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "current"
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
}

/// The material text of a runtime: what makes two installs the same (name, version and
/// artifact digests; an unpinned local artifact by its source).
pub fn material(m: &Manifest) -> String {
    let mut s = format!(
        "core-ops/runtime/v1\nname={}\nversion={}\n",
        m.name, m.version
    );
    for a in &m.artifacts {
        let pin = match &a.digest {
            Some(d) => d.clone(),
            None => format!("unpinned:{}", a.source.display()),
        };
        s.push_str(&format!("artifact={} {pin}\n", a.name));
    }
    s
}

fn line_of(text: &str, needle: &str, file: &str) -> Location {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| Location::line(file, i + 1))
        .unwrap_or_else(|| Location::file(file))
}

/// Parse `sha256:<64 hex>` into lowercase.
pub fn parse_digest(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// `30s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (!d.is_zero() && d <= Duration::from_secs(3600)).then_some(d)
}

fn repo_relative(p: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Parse and validate one manifest. `read` returns repository files (symlink rules applied).
pub fn parse(
    file: &str,
    bytes: &[u8],
    files: &dyn RepoFiles,
    read: &dyn Fn(&str) -> Result<Vec<u8>, InputError>,
) -> Result<(Manifest, String), InputError> {
    let raw: RawManifest = yaml::parse(file, bytes)?;
    let text = String::from_utf8_lossy(bytes).to_string();
    let at = |needle: &str| line_of(&text, needle, file);
    check_identity(&raw, file, &at)?;
    let mut names = BTreeSet::new();
    let mut artifacts = Vec::new();
    for a in raw.artifacts {
        if !names.insert(a.name.clone()) {
            return Err(InputError::new(
                at(&format!("name: {}", a.name)),
                format!(
                    "artifact name '{}' is empty, hidden, a path or a duplicate",
                    a.name
                ),
            ));
        }
        artifacts.push(artifact(a, &at, files, read)?);
    }
    check_depends_and_units(&raw.name, &raw.depends, &raw.units, &at)?;
    let health_timeout = match raw.health.and_then(|h| h.timeout) {
        None => DEFAULT_HEALTH_TIMEOUT,
        Some(t) => parse_duration(&t).ok_or_else(|| {
            InputError::new(
                at("timeout"),
                format!(
                    "health.timeout '{t}' is not a duration like 30s, 500ms or 2m (at most 1 h)"
                ),
            )
        })?,
    };
    Ok((
        Manifest {
            name: raw.name,
            version: raw.version,
            publisher: raw.publisher,
            artifacts,
            depends: raw.depends,
            units: raw.units,
            health_timeout,
        },
        text,
    ))
}

/// Name, version and the file they live in agree; a publisher and at least one artifact.
fn check_identity(
    raw: &RawManifest,
    file: &str,
    at: &dyn Fn(&str) -> Location,
) -> Result<(), InputError> {
    if !valid_name(&raw.name) {
        return Err(InputError::new(
            at("name:"),
            format!("invalid runtime name '{}'", raw.name),
        ));
    }
    if !valid_version(&raw.version) {
        return Err(InputError::new(
            at("version:"),
            format!("invalid runtime version '{}'", raw.version),
        ));
    }
    let expected = format!("runtimes/{}/{}.yaml", raw.name, raw.version);
    if file != expected {
        return Err(InputError::new(
            at("name:"),
            format!(
                "manifest says {} {} but lives at {file} (expected {expected})",
                raw.name, raw.version
            ),
        ));
    }
    if raw.publisher.trim().is_empty() {
        return Err(InputError::new(at("publisher:"), "publisher is empty"));
    }
    if raw.artifacts.is_empty() {
        return Err(InputError::new(
            at("artifacts:"),
            "a runtime needs at least one artifact",
        ));
    }
    Ok(())
}

/// One artifact: a plain `.tar.gz`/`.tgz` name, a well-formed digest, a known source; pinned
/// unless it is a local file.
fn artifact(
    a: RawArtifact,
    at: &dyn Fn(&str) -> Location,
    files: &dyn RepoFiles,
    read: &dyn Fn(&str) -> Result<Vec<u8>, InputError>,
) -> Result<ArtifactSpec, InputError> {
    let named = at(&format!("name: {}", a.name));
    if a.name.is_empty() || a.name.starts_with('.') || a.name.contains('/') {
        return Err(InputError::new(
            named,
            format!(
                "artifact name '{}' is empty, hidden, a path or a duplicate",
                a.name
            ),
        ));
    }
    if !(a.name.ends_with(".tar.gz") || a.name.ends_with(".tgz")) {
        return Err(InputError::new(
            named,
            format!(
                "artifact '{}': only .tar.gz / .tgz artifacts are supported",
                a.name
            ),
        ));
    }
    let digest = match &a.digest {
        None => None,
        Some(d) => Some(parse_digest(d).ok_or_else(|| {
            InputError::new(
                at(d),
                format!(
                    "artifact '{}': digest must be sha256:<64 hex digits>",
                    a.name
                ),
            )
        })?),
    };
    let source = artifact_source(&a, at(&a.source), files, read)?;
    if digest.is_none() && !source.is_local() {
        return Err(InputError::new(
            named,
            format!(
                "artifact '{}': a digest is required for repository and https:// sources (only local files may be unpinned, where policy allows)",
                a.name
            ),
        ));
    }
    Ok(ArtifactSpec {
        name: a.name,
        source,
        digest,
    })
}

/// Where an artifact comes from: `file://` or an absolute path (local), `https://`, or a
/// path in the repository that must exist there.
fn artifact_source(
    a: &RawArtifact,
    loc: Location,
    files: &dyn RepoFiles,
    read: &dyn Fn(&str) -> Result<Vec<u8>, InputError>,
) -> Result<ArtifactSource, InputError> {
    if let Some(rest) = a.source.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(InputError::new(
                loc,
                format!(
                    "artifact '{}': file:// needs an absolute path (file:///...)",
                    a.name
                ),
            ));
        }
        return Ok(ArtifactSource::Local {
            path: PathBuf::from(rest),
        });
    }
    if a.source.starts_with('/') {
        return Ok(ArtifactSource::Local {
            path: PathBuf::from(&a.source),
        });
    }
    if a.source.starts_with("https://") {
        return Ok(ArtifactSource::Https {
            url: a.source.clone(),
        });
    }
    if a.source.contains("://") {
        return Err(InputError::new(
            loc,
            format!(
                "artifact '{}': unsupported source scheme (use a repository path, file://, /abs/path or https://)",
                a.name
            ),
        ));
    }
    let path = repo_relative(&a.source).ok_or_else(|| {
        InputError::new(
            loc.clone(),
            format!(
                "artifact '{}': repository path '{}' leaves the repository",
                a.name, a.source
            ),
        )
    })?;
    if !files.exists(&path)? {
        return Err(InputError::new(
            loc,
            format!(
                "artifact '{}': {path} does not exist in the repository",
                a.name
            ),
        ));
    }
    Ok(ArtifactSource::Repo {
        data: Blob(Arc::new(read(&path)?)),
        path,
    })
}

/// `depends:` names other runtimes, each once; `units:` names units, each once.
fn check_depends_and_units(
    name: &str,
    depends: &[String],
    units: &[String],
    at: &dyn Fn(&str) -> Location,
) -> Result<(), InputError> {
    let mut seen = BTreeSet::new();
    for d in depends {
        if !valid_name(d) || d == name || !seen.insert(d) {
            return Err(InputError::new(
                at("depends"),
                format!("depends: '{d}' is not a valid, distinct other runtime"),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for u in units {
        let ok = u.contains('.')
            && !u.starts_with('.')
            && u.chars()
                .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
        if !ok || !seen.insert(u) {
            return Err(InputError::new(
                at(u),
                format!("units: '{u}' is not a valid, distinct unit name"),
            ));
        }
    }
    Ok(())
}

/// Read the manifests a host selects (`runtimes:` in host.yaml), check `depends:` (selected,
/// acyclic) and return them in install order (dependencies first, ties by name).
pub fn resolve(
    selected: &BTreeMap<String, String>,
    host_file: &str,
    host_text: &str,
    files: &dyn RepoFiles,
    read: &dyn Fn(&str) -> Result<Vec<u8>, InputError>,
) -> Result<Vec<ResolvedRuntime>, InputError> {
    let mut by_name: BTreeMap<String, ResolvedRuntime> = BTreeMap::new();
    for (name, version) in selected {
        let loc = line_of(host_text, name, host_file);
        if !valid_name(name) || !valid_version(version) {
            return Err(InputError::new(
                loc,
                format!("runtimes: '{name}: {version}' is not a valid runtime name and version"),
            ));
        }
        let file = format!("runtimes/{name}/{version}.yaml");
        if !files.exists(&file)? {
            let prefix = format!("runtimes/{name}/");
            let known = crate::error::known_list(files.paths_under(&prefix).map(|paths| {
                paths
                    .iter()
                    .filter_map(|p| p.strip_prefix(&prefix)?.strip_suffix(".yaml"))
                    .filter(|v| !v.contains('/'))
                    .map(str::to_string)
                    .collect()
            }));
            return Err(InputError::new(
                loc,
                format!(
                    "runtime '{name}' version '{version}' is selected but {file} does not exist (known versions: {known})"
                ),
            ));
        }
        let bytes = read(&file)?;
        let (manifest, text) = parse(&file, &bytes, files, read)?;
        let material = material(&manifest);
        by_name.insert(
            name.clone(),
            ResolvedRuntime {
                material_digest: sha256_hex(material.as_bytes()),
                material,
                manifest_digest: sha256_hex(&bytes),
                text,
                file,
                manifest,
            },
        );
    }
    for r in by_name.values() {
        for d in &r.manifest.depends {
            if !by_name.contains_key(d) {
                return Err(InputError::new(
                    line_of(&r.text, d, &r.file),
                    format!(
                        "depends: runtime '{d}' is not selected by {host_file} (add it to runtimes:)"
                    ),
                ));
            }
        }
    }
    let nodes: BTreeSet<String> = by_name.keys().cloned().collect();
    let deps: BTreeMap<String, BTreeSet<String>> = by_name
        .iter()
        .map(|(n, r)| (n.clone(), r.manifest.depends.iter().cloned().collect()))
        .collect();
    let (order, cycle) = crate::model::order::topo_order(&nodes, &deps);
    if let Some(first) = cycle.first() {
        let r = &by_name[first];
        return Err(InputError::new(
            line_of(&r.text, "depends", &r.file),
            format!("runtime dependency cycle among {}", cycle.join(", ")),
        ));
    }
    Ok(order
        .into_iter()
        .map(|n| by_name.remove(&n).expect("ordered name"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::RepoEntry;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, RepoEntry> {
        list.iter()
            .map(|(p, c)| {
                (
                    p.to_string(),
                    RepoEntry::File {
                        data: c.as_bytes().to_vec(),
                        executable: false,
                    },
                )
            })
            .collect()
    }

    fn reader(
        f: &BTreeMap<String, RepoEntry>,
    ) -> impl Fn(&str) -> Result<Vec<u8>, InputError> + '_ {
        move |p: &str| match f.get(p) {
            Some(RepoEntry::File { data, .. }) => Ok(data.clone()),
            _ => Err(InputError::new(Location::file(p), "missing")),
        }
    }

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn manifest(name: &str, version: &str, depends: &str) -> String {
        format!(
            "name: {name}\nversion: {version}\npublisher: example\nartifacts:\n  - name: {name}.tar.gz\n    source: artifacts/{name}.tar.gz\n    digest: {D}\ndepends: [{depends}]\n"
        )
    }

    fn sel(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn resolves_in_dependency_order() {
        let a = manifest("app", "2.0", "base");
        let b = manifest("base", "1.0", "");
        let f = files(&[
            ("runtimes/app/2.0.yaml", &a),
            ("runtimes/base/1.0.yaml", &b),
            ("artifacts/app.tar.gz", "x"),
            ("artifacts/base.tar.gz", "y"),
        ]);
        let r = resolve(
            &sel(&[("app", "2.0"), ("base", "1.0")]),
            "h",
            "",
            &f,
            &reader(&f),
        )
        .unwrap();
        let names: Vec<&str> = r.iter().map(|r| r.manifest.name.as_str()).collect();
        assert_eq!(names, vec!["base", "app"]);
        assert!(r[1].material.contains(&format!("artifact=app.tar.gz {D}")));
        match &r[0].manifest.artifacts[0].source {
            ArtifactSource::Repo { data, .. } => assert_eq!(data.0.as_slice(), b"y"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cycle_is_an_input_error_naming_the_file() {
        let a = manifest("a", "1", "b");
        let b = manifest("b", "1", "a");
        let f = files(&[
            ("runtimes/a/1.yaml", &a),
            ("runtimes/b/1.yaml", &b),
            ("artifacts/a.tar.gz", "x"),
            ("artifacts/b.tar.gz", "y"),
        ]);
        let e = resolve(&sel(&[("a", "1"), ("b", "1")]), "h", "", &f, &reader(&f)).unwrap_err();
        assert_eq!(e.location, Location::line("runtimes/a/1.yaml", 8));
        assert!(e.message.contains("cycle among a, b"), "{e}");
    }

    #[test]
    fn strict_fields_and_rules() {
        let f = files(&[("artifacts/x.tar.gz", "x")]);
        let read = reader(&f);
        let bad = |text: &str| parse("runtimes/x/1.yaml", text.as_bytes(), &f, &read).unwrap_err();
        let e = bad("name: x\nversion: '1'\npublisher: p\nartifacts: []\ncolour: red\n");
        assert_eq!(e.location.line, Some(5), "{e}");
        let e = bad(&format!(
            "name: x\nversion: '1'\npublisher: p\nartifacts:\n  - name: x.tar.gz\n    source: ../x.tar.gz\n    digest: {D}\n"
        ));
        assert!(e.message.contains("leaves the repository"), "{e}");
        let e = bad(
            "name: x\nversion: '1'\npublisher: p\nartifacts:\n  - name: x.tar.gz\n    source: artifacts/x.tar.gz\n",
        );
        assert!(e.message.contains("digest is required"), "{e}");
        let e = bad(
            "name: y\nversion: '1'\npublisher: p\nartifacts:\n  - name: x.tar.gz\n    source: /x.tar.gz\n",
        );
        assert!(e.message.contains("expected runtimes/y/1.yaml"), "{e}");
        let ok = parse(
            "runtimes/x/1.yaml",
            b"name: x\nversion: '1'\npublisher: p\nartifacts:\n  - name: x.tar.gz\n    source: file:///srv/x.tar.gz\nhealth: { timeout: 5s }\n",
            &f,
            &read,
        )
        .unwrap()
        .0;
        assert_eq!(
            ok.artifacts[0].source,
            ArtifactSource::Local {
                path: "/srv/x.tar.gz".into()
            }
        );
        assert_eq!(ok.health_timeout, Duration::from_secs(5));
        assert!(material(&ok).contains("unpinned:/srv/x.tar.gz"));
    }

    #[test]
    fn durations_and_names() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("10"), None);
        assert!(valid_version("1.2.0+build-1"));
        assert!(!valid_version("current"));
        assert!(!valid_version(".hidden"));
        assert!(!valid_version("a/b"));
    }
}
