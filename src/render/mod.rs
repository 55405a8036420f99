//! Render: turn one commit of the desired-state repository into this host's *desired state*,
//! a sorted set of resources with stable ids and material digests (docs/design.md sections 2
//! and 4).
//!
//! Pure: it takes the commit's files as values and returns values, so every rule here is
//! tested without git, a filesystem or systemd.

pub mod mount;
pub mod quadlet;
pub mod runtimes;
pub mod secrets;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::config::Paths;
use crate::error::{InputError, Location};
use crate::model::normalize::{FileMeta, Kind, normalize, normalize_parsed};
use crate::model::unit_file::{Effective, UnitFile, instance_name, is_template, runtime_units};
use crate::model::yaml::{self, DriftPolicy, HostYaml, ServiceYaml};
use crate::source::{RepoEntry, RepoFiles, Revision};
use mount::MountInfo;

/// Plain unit suffixes core-ops manages.
pub const UNIT_SUFFIXES: &[&str] = &["service", "timer", "socket", "path", "target"];

/// One repository file that contributed to a resource, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// Repository path.
    pub file: String,
    /// Revision it was read from (short sha).
    pub revision: String,
    /// `base`, `base drop-in`, `host drop-in`, `host file`, `service.yaml`.
    pub role: String,
}

/// What a unit-like resource is to systemd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitRole {
    /// The unit systemd loads (for Quadlet: the generated one).
    pub name: String,
    /// Enable the unit file (`EnableUnitFiles`).
    pub enable: bool,
    /// Keep it started.
    pub start: bool,
    /// Units this one is ordered after or requires (`After=`, `Requires=`, `BindsTo=`,
    /// `Requisite=`), sorted.
    pub after: Vec<String>,
    /// Paths from `RequiresMountsFor=`, sorted.
    pub requires_mounts_for: Vec<String>,
    /// Mount facts for `.mount` / `.automount`.
    pub mount: Option<MountView>,
    /// Canonical effective content after all drop-ins (what systemd will see).
    pub effective: String,
    /// For a template (`foo@.service`): the instances enabled and started in its place
    /// (`foo@a.service`), from service.yaml `instances:` or `DefaultInstance=`. Empty for
    /// other units.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Settle window from its service's `service.yaml` (`None`: the host's, else the default).
    #[serde(skip)]
    pub settle: Option<std::time::Duration>,
}

impl UnitRole {
    /// The units systemd runs for this object: the unit itself, or a template's instances
    /// (a template itself is never started, enabled or judged by its runtime state).
    pub fn runtime_units(&self) -> Vec<String> {
        runtime_units(&self.name, &self.instances)
    }

    /// The effective value of `key` in `[section]` (the last assignment; an empty one resets).
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        let mut current = "";
        let mut found = None;
        for line in self.effective.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name;
            } else if current == section
                && let Some((k, v)) = line.split_once('=')
                && k == key
            {
                found = (!v.is_empty()).then_some(v);
            }
        }
        found
    }

    /// Whether the unit runs and exits (`Type=oneshot` without `RemainAfterExit=yes`): for
    /// such a unit, inactive after a successful run is its converged state, not a stop.
    pub fn exits_when_done(&self) -> bool {
        self.value("Service", "Type") == Some("oneshot")
            && !self
                .value("Service", "RemainAfterExit")
                .is_some_and(|v| matches!(v, "yes" | "true" | "on" | "1" | "y" | "t"))
    }
}

/// Serializable mount facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountView {
    /// Effective `Where=`.
    #[serde(rename = "where")]
    pub where_: String,
    /// `CreateMountpoint=`.
    pub create_mountpoint: bool,
}

impl From<MountInfo> for MountView {
    fn from(m: MountInfo) -> Self {
        MountView {
            where_: m.where_,
            create_mountpoint: m.create_mountpoint,
        }
    }
}

/// One object core-ops manages on the host.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// Stable id `<kind>:<name>`.
    pub id: String,
    /// Kind.
    pub kind: Kind,
    /// Service that declares it.
    pub service: String,
    /// Absolute host path it is written to.
    pub path: PathBuf,
    /// Bytes to write.
    #[serde(skip)]
    pub content: Vec<u8>,
    /// Mode and ownership.
    pub meta: FileMeta,
    /// Material digest (normalized).
    pub digest: String,
    /// Raw digest of `content`.
    pub raw_digest: String,
    /// Repository files that produced it.
    pub layers: Vec<Layer>,
    /// systemd role, for unit-like kinds.
    pub unit: Option<UnitRole>,
    /// Units restarted when this resource changes (drop-ins, host files).
    pub restarts: Vec<String>,
    /// Repair or only report drift (service.yaml `drift:`).
    pub drift: DriftPolicy,
    /// Adopt a pre-existing file on the host (service.yaml `adopt: true`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
    /// A secret host file (decrypted from `files/**/*.age`): `content` is its plaintext and
    /// its digests are keyed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<secrets::Secret>,
}

/// Content is never printed (a secret's plaintext lives in it): its length only.
impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("service", &self.service)
            .field("path", &self.path)
            .field("content_len", &self.content.len())
            .field("meta", &self.meta)
            .field("digest", &self.digest)
            .field("raw_digest", &self.raw_digest)
            .field("layers", &self.layers)
            .field("unit", &self.unit)
            .field("restarts", &self.restarts)
            .field("drift", &self.drift)
            .field("adopt", &self.adopt)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Everything this host should have at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// Host name.
    pub host: String,
    /// The revision rendered.
    pub revision: Revision,
    /// The host's selection and policy.
    pub host_yaml: HostYaml,
    /// Resources by id (sorted).
    pub resources: BTreeMap<String, Resource>,
    /// Selected runtimes (their resources are `runtime:<name>` in `resources`) and policy.
    pub runtimes: runtimes::DesiredRuntimes,
}

impl DesiredState {
    /// The resource whose unit role has this systemd name.
    pub fn unit_resource(&self, unit: &str) -> Option<&Resource> {
        self.resources
            .values()
            .find(|r| r.unit.as_ref().is_some_and(|u| u.name == unit))
    }

    /// The resource that runs as this unit: the unit itself, or the template one of whose
    /// instances it is.
    pub fn runtime_unit_resource(&self, unit: &str) -> Option<&Resource> {
        self.resources.values().find(|r| {
            r.unit
                .as_ref()
                .is_some_and(|u| u.runtime_units().iter().any(|n| n == unit))
        })
    }
}

/// Render the desired state of `host` from a commit's files.
///
/// `files` is asked only for what this host needs: its `host.yaml` and overrides, its
/// selected services and runtimes, and the files those point at (symlink targets, repository
/// artifacts), so a lazy reader never touches the rest of the commit.
pub fn render(
    files: &dyn RepoFiles,
    revision: &Revision,
    host: &str,
    paths: &Paths,
) -> Result<DesiredState, InputError> {
    render_selected(files, revision, host, paths, None)
}

/// [`render`] of only those services in `only` that the host selects; host.yaml and the
/// runtimes as the whole render has them.
///
/// Why: the plan-time validators can start on a service that changed before the whole
/// revision is rendered (`pipeline`); the whole render still decides, and its verdict is used
/// only when this part is exactly what it renders for those services.
pub fn render_only(
    files: &dyn RepoFiles,
    revision: &Revision,
    host: &str,
    paths: &Paths,
    only: &BTreeSet<String>,
) -> Result<DesiredState, InputError> {
    render_selected(files, revision, host, paths, Some(only))
}

fn render_selected(
    files: &dyn RepoFiles,
    revision: &Revision,
    host: &str,
    paths: &Paths,
    only: Option<&BTreeSet<String>>,
) -> Result<DesiredState, InputError> {
    let repo = RepoView {
        files,
        revision,
        keyring: secrets::Keyring::new(&paths.age_identity),
    };
    let host_file = format!("hosts/{host}/host.yaml");
    let host_text = read_host_yaml(&repo, host, &host_file)?;
    let host_yaml: HostYaml = yaml::parse(&host_file, &host_text)?;
    let host_text_str = String::from_utf8_lossy(&host_text).to_string();
    let selected: Vec<String> = host_yaml
        .services
        .iter()
        .filter(|s| only.is_none_or(|o| o.contains(*s)))
        .cloned()
        .collect();
    check_selected_services(files, &selected, &host_file, &host_text_str)?;
    let host_dropins = host_overrides(files, host, &host_yaml)?;

    let mut resources: BTreeMap<String, Resource> = BTreeMap::new();
    for svc in &selected {
        let empty = Vec::new();
        let rendered = render_service(&repo, svc, host_dropins.get(svc).unwrap_or(&empty), paths)?;
        for r in rendered {
            if let Some(prev) = resources.get(&r.id) {
                return Err(InputError::new(
                    Location::file(&r.layers[0].file),
                    format!(
                        "{} is declared by service '{}' and by service '{}'",
                        r.id, prev.service, r.service
                    ),
                ));
            }
            resources.insert(r.id.clone(), r);
        }
    }
    check_no_collisions(&resources)?;
    link_quadlet_restarts(&mut resources);

    // runtimes: manifests of this commit, in `depends:` order (docs/design.md section 5)
    let (runtimes, runtime_resources) = runtimes::render(
        &host_yaml,
        &host_file,
        &host_text_str,
        files,
        &|p: &str| repo.read(p),
        &paths.state_dir,
        &repo.short(),
    )?;
    for r in runtime_resources {
        resources.insert(r.id.clone(), r);
    }

    Ok(DesiredState {
        host: host.to_string(),
        revision: revision.clone(),
        host_yaml,
        resources,
        runtimes,
    })
}

/// Render text files given as (repository path, content) at commit `aaaa...`: the set-up of
/// tests outside render that need a desired state.
#[cfg(test)]
pub(crate) fn render_texts(files: &[(&str, &str)], host: &str, paths: &Paths) -> DesiredState {
    let files: BTreeMap<String, crate::source::RepoEntry> = files
        .iter()
        .map(|(p, c)| {
            let entry = crate::source::RepoEntry::File {
                data: c.as_bytes().to_vec(),
                executable: false,
            };
            (p.to_string(), entry)
        })
        .collect();
    let rev = Revision {
        commit: "a".repeat(40),
        requested_ref: "main".into(),
    };
    render(&files, &rev, host, paths).expect("test files render")
}

/// The host's `host.yaml`; a host the repository does not define is an input error naming
/// the hosts it does define.
fn read_host_yaml(repo: &RepoView<'_>, host: &str, host_file: &str) -> Result<Vec<u8>, InputError> {
    if repo.files.exists(host_file)? {
        return repo.read(host_file);
    }
    // only on this error path is the whole of hosts/ listed
    let known = crate::error::known_list(repo.files.paths_under("hosts").map(|paths| {
        paths
            .iter()
            .filter_map(|p| p.strip_prefix("hosts/")?.strip_suffix("/host.yaml"))
            .filter(|h| !h.contains('/'))
            .map(str::to_string)
            .collect()
    }));
    Err(InputError::new(
        Location::file(host_file),
        format!("host '{host}' is not defined in the repository (known hosts: {known})"),
    ))
}

/// Every selected service is named once, validly, and exists in the repository.
fn check_selected_services(
    files: &dyn RepoFiles,
    services: &[String],
    host_file: &str,
    host_text: &str,
) -> Result<(), InputError> {
    let line_of = |needle: &str| {
        host_text
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| Location::line(host_file, i + 1))
            .unwrap_or_else(|| Location::file(host_file))
    };
    let mut seen = BTreeSet::new();
    for svc in services {
        if !seen.insert(svc.as_str()) {
            return Err(InputError::new(
                line_of(svc),
                format!("service '{svc}' is selected twice"),
            ));
        }
        if !valid_name(svc) {
            return Err(InputError::new(
                line_of(svc),
                format!("invalid service name '{svc}'"),
            ));
        }
        if files.paths_under(&format!("services/{svc}"))?.is_empty() {
            return Err(InputError::new(
                line_of(svc),
                format!("service '{svc}' is selected but services/{svc}/ does not exist"),
            ));
        }
    }
    Ok(())
}

/// Host overrides `hosts/<host>/overrides/<service>/<unit>.d/<name>.conf`, by service:
/// `(<unit>.d/<name>.conf, repository path)`; only for services the host selects.
fn host_overrides(
    files: &dyn RepoFiles,
    host: &str,
    host_yaml: &HostYaml,
) -> Result<BTreeMap<String, Vec<(String, String)>>, InputError> {
    let mut host_dropins: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let override_prefix = format!("hosts/{host}/overrides/");
    for path in &files.paths_under(&override_prefix)? {
        let rel = &path[override_prefix.len()..];
        let parts: Vec<&str> = rel.split('/').collect();
        let ok = parts.len() == 3 && parts[1].ends_with(".d") && parts[2].ends_with(".conf");
        if !ok {
            return Err(InputError::new(
                Location::file(path),
                "host overrides must be <service>/<unit>.d/<name>.conf",
            ));
        }
        if !host_yaml.services.iter().any(|s| s == parts[0]) {
            return Err(InputError::new(
                Location::file(path),
                format!(
                    "override for service '{}' which host '{host}' does not select",
                    parts[0]
                ),
            ));
        }
        host_dropins
            .entry(parts[0].to_string())
            .or_default()
            .push((format!("{}/{}", parts[1], parts[2]), path.clone()));
    }
    Ok(host_dropins)
}

/// Two resources defining one unit (a Quadlet-generated name colliding with a plain unit) or
/// writing one host path (a host file aimed at a unit file) would overwrite each other on
/// every run.
fn check_no_collisions(resources: &BTreeMap<String, Resource>) -> Result<(), InputError> {
    let mut units: BTreeMap<String, &str> = BTreeMap::new();
    for r in resources.values() {
        if let Some(u) = &r.unit
            && let Some(prev) = units.insert(u.name.clone(), &r.id)
        {
            return Err(InputError::new(
                Location::file(&r.layers[0].file),
                format!("{} and {} both define unit {}", prev, r.id, u.name),
            ));
        }
    }
    let mut by_path: BTreeMap<&Path, &Resource> = BTreeMap::new();
    for r in resources.values() {
        if let Some(prev) = by_path.insert(r.path.as_path(), r) {
            return Err(InputError::new(
                Location::file(&r.layers[0].file),
                format!(
                    "{} and {} ({}) both write {}",
                    r.id,
                    prev.id,
                    prev.layers[0].file,
                    r.path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// A changed `.network`, `.volume`, `.pod`, `.image` or `.build` restarts the started Quadlet
/// units that name it (`Network=`, `Volume=`, ...): they only pick the change up when they
/// are re-created. Explicit in the plan like every other restart.
fn link_quadlet_restarts(resources: &mut BTreeMap<String, Resource>) {
    let mut links: Vec<(String, String)> = Vec::new(); // (linked id, unit to restart)
    for r in resources.values().filter(|r| r.kind == Kind::Quadlet) {
        let Some(u) = r.unit.as_ref().filter(|u| u.start) else {
            continue;
        };
        for f in quadlet::linked_files(&u.effective) {
            links.push((format!("quadlet:{f}"), u.name.clone()));
        }
    }
    for (id, unit) in links {
        if let Some(target) = resources.get_mut(&id)
            && !target.restarts.contains(&unit)
        {
            target.restarts.push(unit);
            target.restarts.sort();
        }
    }
}

/// Read access to the commit's files with the repository's symlink rules applied.
struct RepoView<'a> {
    files: &'a dyn RepoFiles,
    revision: &'a Revision,
    /// The host's age identity, read only if a selected service has a secret.
    keyring: secrets::Keyring,
}

impl RepoView<'_> {
    /// Content of a file; an in-repo relative symlink is followed, an absolute one or one
    /// leaving the repository is an input error.
    fn read(&self, path: &str) -> Result<Vec<u8>, InputError> {
        let mut current = path.to_string();
        for _ in 0..16 {
            match self.files.entry(&current)? {
                Some(RepoEntry::File { data, .. }) => return Ok(data),
                Some(RepoEntry::Symlink { target }) => {
                    if target.starts_with('/') {
                        return Err(InputError::new(
                            Location::file(path),
                            format!(
                                "absolute symlink to '{target}' is not allowed in the repository"
                            ),
                        ));
                    }
                    let parent = Path::new(&current).parent().unwrap_or(Path::new(""));
                    current = match join_inside(parent, &target) {
                        Some(p) => p,
                        None => {
                            return Err(InputError::new(
                                Location::file(path),
                                format!("symlink to '{target}' leaves the repository"),
                            ));
                        }
                    };
                }
                None => {
                    return Err(InputError::new(
                        Location::file(path),
                        format!("symlink target '{current}' does not exist in the repository"),
                    ));
                }
            }
        }
        Err(InputError::new(Location::file(path), "symlink loop"))
    }

    fn short(&self) -> String {
        self.revision.short().to_string()
    }
}

/// Join a relative path onto a repo-relative dir, refusing to climb above the root.
fn join_inside(dir: &Path, rel: &str) -> Option<String> {
    let mut parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_string_lossy().to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

fn suffix_of(name: &str) -> &str {
    name.rsplit_once('.').map(|(_, s)| s).unwrap_or("")
}

/// A unit-syntax file being assembled: its own file plus drop-ins.
struct UnitDraft {
    name: String,
    kind: Kind,
    repo_path: String,
    file: UnitFile,
    content: Vec<u8>,
}

struct DropinDraft {
    unit: String,
    name: String,
    repo_path: String,
    file: UnitFile,
    content: Vec<u8>,
    from_host: bool,
    replaced_base: Option<String>,
}

/// One service directory as read: its units, drop-ins (base and host), host files and
/// service.yaml.
struct ServiceDraft {
    name: String,
    units: BTreeMap<String, UnitDraft>,
    /// By `<unit>.d/<name>`.
    dropins: BTreeMap<String, DropinDraft>,
    /// Host path -> (repository path, content).
    host_files: BTreeMap<String, (String, Vec<u8>)>,
    yaml: ServiceYaml,
    yaml_path: String,
}

const UNEXPECTED_IN_SERVICE: &str =
    "(expected a unit, Quadlet file, .mount/.automount, <unit>.d/*.conf, files/ or service.yaml)";

/// Render one service: read its directory, check service.yaml against it, then build its
/// units, drop-ins and host files (in that order: host files restart the service's units).
fn render_service(
    repo: &RepoView<'_>,
    svc: &str,
    host_dropins: &[(String, String)],
    paths: &Paths,
) -> Result<Vec<Resource>, InputError> {
    let mut s = read_service_dir(repo, svc)?;
    add_host_dropins(repo, host_dropins, &mut s.dropins)?;
    check_service_yaml_names(&s)?;
    let rev = repo.short();
    let mut out = Vec::new();
    for draft in s.units.values() {
        out.push(unit_resource(&s, draft, &rev, paths)?);
    }
    let mut started_services: Vec<String> = out
        .iter()
        .filter_map(|r| r.unit.as_ref())
        .filter(|u| u.start && u.name.ends_with(".service"))
        .map(|u| u.name.clone())
        .collect();
    started_services.sort();
    for (rel, d) in &s.dropins {
        out.push(dropin_resource(&s, rel, d, &rev, paths));
    }
    for (target, (repo_path, content)) in &s.host_files {
        out.push(host_file_resource(
            &s,
            target,
            repo_path,
            content,
            &repo.keyring,
            &rev,
            paths,
            &started_services,
        )?);
    }
    Ok(out)
}

/// Read `services/<svc>/`: each path is a unit, a drop-in, a host file, service.yaml or
/// documentation (`*.md`); anything else is an input error.
fn read_service_dir(repo: &RepoView<'_>, svc: &str) -> Result<ServiceDraft, InputError> {
    let prefix = format!("services/{svc}/");
    let mut s = ServiceDraft {
        name: svc.to_string(),
        units: BTreeMap::new(),
        dropins: BTreeMap::new(),
        host_files: BTreeMap::new(),
        yaml: ServiceYaml::default(),
        yaml_path: format!("{prefix}service.yaml"),
    };
    for path in &repo.files.paths_under(&prefix)? {
        let rel = &path[prefix.len()..];
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            ["files", rest @ ..] if !rest.is_empty() => {
                let joined = format!("/{}", rest.join("/"));
                let target = match joined.strip_suffix(secrets::SECRET_SUFFIX) {
                    Some(t) if !t.ends_with('/') => t.to_string(),
                    _ => joined,
                };
                if let Some((other, _)) = s.host_files.get(&target) {
                    return Err(InputError::new(
                        Location::file(path),
                        format!(
                            "{path} and {other} both write host file {target}; keep the \
                             encrypted one or the plain one"
                        ),
                    ));
                }
                s.host_files
                    .insert(target, (path.clone(), repo.read(path)?));
            }
            ["service.yaml"] => s.yaml = yaml::parse(path, &repo.read(path)?)?,
            [name] if name.ends_with(".md") => {}
            [name] => {
                let draft = read_unit(repo, path, name)?;
                s.units.insert(name.to_string(), draft);
            }
            [dir, name] if dir.ends_with(".d") => {
                let draft = read_dropin(repo, path, dir, name)?;
                s.dropins.insert(rel.to_string(), draft);
            }
            _ => {
                return Err(InputError::new(
                    Location::file(path),
                    format!("unexpected path in a service directory {UNEXPECTED_IN_SERVICE}"),
                ));
            }
        }
    }
    Ok(s)
}

/// A unit-like file of a service: its kind from its suffix, its name checked, parsed.
fn read_unit(repo: &RepoView<'_>, path: &str, name: &str) -> Result<UnitDraft, InputError> {
    let sfx = suffix_of(name);
    let kind = if UNIT_SUFFIXES.contains(&sfx) {
        Kind::Unit
    } else if quadlet::is_quadlet(name) {
        Kind::Quadlet
    } else if sfx == "mount" {
        Kind::Mount
    } else if sfx == "automount" {
        Kind::Automount
    } else {
        return Err(InputError::new(
            Location::file(path),
            format!("unexpected file in a service directory {UNEXPECTED_IN_SERVICE}"),
        ));
    };
    if !valid_unit_name(name) {
        return Err(InputError::new(
            Location::file(path),
            format!("invalid unit file name '{name}'"),
        ));
    }
    let content = repo.read(path)?;
    let file = parse_unit(path, &content)?;
    Ok(UnitDraft {
        name: name.to_string(),
        kind,
        repo_path: path.to_string(),
        file,
        content,
    })
}

/// A base drop-in `<unit>.d/<name>.conf` of a service.
fn read_dropin(
    repo: &RepoView<'_>,
    path: &str,
    dir: &str,
    name: &str,
) -> Result<DropinDraft, InputError> {
    if !name.ends_with(".conf") {
        return Err(InputError::new(
            Location::file(path),
            "drop-ins must be named <name>.conf",
        ));
    }
    let unit = dir.trim_end_matches(".d").to_string();
    if !valid_unit_name(&unit) {
        return Err(InputError::new(
            Location::file(path),
            format!("drop-in directory '{dir}' does not name a unit"),
        ));
    }
    let content = repo.read(path)?;
    let file = parse_unit(path, &content)?;
    Ok(DropinDraft {
        unit,
        name: name.to_string(),
        repo_path: path.to_string(),
        file,
        content,
        from_host: false,
        replaced_base: None,
    })
}

/// The host's drop-ins for this service's units; one with a base drop-in's name replaces it.
fn add_host_dropins(
    repo: &RepoView<'_>,
    host_dropins: &[(String, String)],
    dropins: &mut BTreeMap<String, DropinDraft>,
) -> Result<(), InputError> {
    for (rel, path) in host_dropins {
        let (dir, name) = rel.split_once('/').expect("checked shape");
        let content = repo.read(path)?;
        let file = parse_unit(path, &content)?;
        let replaced = dropins.get(rel).map(|d| d.repo_path.clone());
        dropins.insert(
            rel.clone(),
            DropinDraft {
                unit: dir.trim_end_matches(".d").to_string(),
                name: name.to_string(),
                repo_path: path.clone(),
                file,
                content,
                from_host: true,
                replaced_base: replaced,
            },
        );
    }
    Ok(())
}

/// service.yaml must only speak of what exists.
fn check_service_yaml_names(s: &ServiceDraft) -> Result<(), InputError> {
    let svc = &s.name;
    for unit in s.yaml.units.keys() {
        if !s.units.contains_key(unit) {
            return Err(InputError::new(
                Location::file(&s.yaml_path),
                format!("units: '{unit}' is not a unit of service '{svc}'"),
            ));
        }
    }
    for target in s.yaml.files.keys() {
        if !s.host_files.contains_key(target) {
            return Err(InputError::new(
                Location::file(&s.yaml_path),
                format!("files: '{target}' has no services/{svc}/files{target}"),
            ));
        }
    }
    Ok(())
}

/// A unit, Quadlet file or mount with its drop-ins merged in the order systemd applies
/// them, its role (enable, start, instances, ordering) and its layers.
fn unit_resource(
    s: &ServiceDraft,
    draft: &UnitDraft,
    rev: &str,
    paths: &Paths,
) -> Result<Resource, InputError> {
    // layers in the order systemd applies them: the unit, then its drop-ins by file name
    let mut mine: Vec<&DropinDraft> = s
        .dropins
        .values()
        .filter(|d| d.unit == draft.name)
        .collect();
    mine.sort_by(|a, b| a.name.cmp(&b.name));
    let all_layers: Vec<&UnitFile> = std::iter::once(&draft.file)
        .chain(mine.iter().map(|d| &d.file))
        .collect();
    let effective = Effective::merge(all_layers.iter().copied());
    let mount_view = mount_view(draft, &mine, &effective, &all_layers)?;
    let systemd_name = match draft.kind {
        Kind::Quadlet => quadlet::generated_unit(&draft.name, &draft.file),
        _ => draft.name.clone(),
    };
    let spec = s.yaml.units.get(&draft.name).cloned().unwrap_or_default();
    let instances = template_instances(&systemd_name, &effective, &spec, draft, &s.name)?;
    let (enable, start) = enable_and_start(s, draft, &systemd_name, &effective, &spec, &instances)?;
    let mut after: BTreeSet<String> = BTreeSet::new();
    for key in ["After", "Requires", "BindsTo", "Requisite"] {
        after.extend(effective.words("Unit", key));
    }
    let mut rmf: BTreeSet<String> = BTreeSet::new();
    for section in ["Unit", "Service"] {
        rmf.extend(effective.words(section, "RequiresMountsFor"));
    }
    let meta = FileMeta::unit_default();
    let n = normalize_parsed(draft.kind, &draft.content, Some(&draft.file), &meta);
    let dir = if draft.kind == Kind::Quadlet {
        &paths.quadlet_dir
    } else {
        &paths.unit_dir
    };
    Ok(Resource {
        id: format!("{}:{}", draft.kind.as_str(), draft.name),
        kind: draft.kind,
        service: s.name.clone(),
        path: dir.join(&draft.name),
        content: draft.content.clone(),
        meta,
        digest: n.digest,
        raw_digest: n.raw_digest,
        layers: unit_layers(draft, &mine, rev),
        unit: Some(UnitRole {
            name: systemd_name,
            enable,
            start,
            after: after.into_iter().collect(),
            requires_mounts_for: rmf.into_iter().collect(),
            mount: mount_view,
            effective: effective.canonical_text(),
            instances,
            settle: s.yaml.settle.map(|s| s.0),
        }),
        restarts: Vec::new(),
        drift: spec.drift,
        adopt: spec.adopt,
        secret: None,
    })
}

/// The repository files that make a unit, for `explain`.
fn unit_layers(draft: &UnitDraft, mine: &[&DropinDraft], rev: &str) -> Vec<Layer> {
    let mut layers = vec![Layer {
        file: draft.repo_path.clone(),
        revision: rev.to_string(),
        role: "base".into(),
    }];
    for d in mine {
        layers.push(Layer {
            file: d.repo_path.clone(),
            revision: rev.to_string(),
            role: match (d.from_host, &d.replaced_base) {
                (true, Some(b)) => format!("host drop-in (replaces {b})"),
                (true, None) => "host drop-in".into(),
                (false, _) => "base drop-in".into(),
            },
        });
    }
    layers
}

/// Mount facts of a `.mount`/`.automount` (checked by the native mount rules); any other unit
/// must not carry `[X-CoreOps]`.
fn mount_view(
    draft: &UnitDraft,
    mine: &[&DropinDraft],
    effective: &Effective,
    all_layers: &[&UnitFile],
) -> Result<Option<MountView>, InputError> {
    if matches!(draft.kind, Kind::Mount | Kind::Automount) {
        let base_layers = std::iter::once(&draft.file)
            .chain(mine.iter().filter(|d| !d.from_host).map(|d| &d.file));
        let base_eff = Effective::merge(base_layers);
        return Ok(Some(
            mount::validate(&draft.name, &base_eff, effective, all_layers)?.into(),
        ));
    }
    for layer in all_layers {
        if let Some(s) = layer.sections.iter().find(|s| s.name == mount::X_COREOPS) {
            let line = s.entries.first().map(|e| e.line).unwrap_or(s.line);
            return Err(InputError::new(
                Location::line(&layer.file, line),
                "unsupported X-CoreOps field: [X-CoreOps] is only valid in .mount and .automount units",
            ));
        }
    }
    Ok(None)
}

/// Whether a unit is enabled and kept started: service.yaml, else what its kind and
/// `[Install]` imply. A template runs only as instances.
fn enable_and_start(
    s: &ServiceDraft,
    draft: &UnitDraft,
    systemd_name: &str,
    effective: &Effective,
    spec: &yaml::UnitSpec,
    instances: &[String],
) -> Result<(bool, bool), InputError> {
    let (mut enable_default, mut start_default) = install_defaults(s, draft, effective);
    if is_template(systemd_name) {
        let any = !instances.is_empty();
        enable_default &= any;
        start_default &= any;
    }
    let enable = spec.enable.unwrap_or(enable_default);
    let start = spec.start.unwrap_or(start_default);
    if is_template(systemd_name) && (enable || start) && instances.is_empty() {
        return Err(InputError::new(
            Location::file(&s.yaml_path),
            format!(
                "units: {}: a template is never enabled or started itself; name its instances (instances: [..]) or set DefaultInstance= in its [Install] section",
                draft.name
            ),
        ));
    }
    Ok((enable, start))
}

/// Enable and start defaults from the kind and the `[Install]` section.
fn install_defaults(s: &ServiceDraft, draft: &UnitDraft, effective: &Effective) -> (bool, bool) {
    let has_install = |keys: &[&str]| {
        effective
            .sections
            .get("Install")
            .is_some_and(|sec| keys.iter().any(|k| sec.contains_key(*k)))
    };
    let wanted = has_install(&["WantedBy", "RequiredBy", "UpheldBy"]);
    let behind_automount = draft
        .name
        .strip_suffix(".mount")
        .is_some_and(|stem| s.units.contains_key(&format!("{stem}.automount")));
    match draft.kind {
        // the generator turns [Install] into wants links itself
        Kind::Quadlet => (false, wanted),
        // a mount behind an automount is activated by its automount only: enabled or started
        // itself it would be mounted at boot directly (the hang the automount exists to avoid)
        Kind::Mount if behind_automount => (false, false),
        Kind::Mount => (
            has_install(&["WantedBy", "RequiredBy", "UpheldBy", "Alias", "Also"]),
            true,
        ),
        Kind::Automount => (
            has_install(&["WantedBy", "RequiredBy", "Alias", "Also"]),
            true,
        ),
        _ => (
            has_install(&["WantedBy", "RequiredBy", "UpheldBy", "Alias", "Also"]),
            wanted,
        ),
    }
}

/// A drop-in: beside its Quadlet file, or in the unit dir (for a Quadlet's generated unit
/// and any other unit); it restarts the unit it changes.
fn dropin_resource(
    s: &ServiceDraft,
    rel: &str,
    d: &DropinDraft,
    rev: &str,
    paths: &Paths,
) -> Resource {
    let dir = if quadlet::is_quadlet(&d.unit) {
        &paths.quadlet_dir
    } else {
        &paths.unit_dir
    };
    let target_unit = match s.units.get(&d.unit) {
        Some(u) if u.kind == Kind::Quadlet => quadlet::generated_unit(&u.name, &u.file),
        _ => d.unit.clone(),
    };
    let meta = FileMeta::unit_default();
    let n = normalize_parsed(Kind::Dropin, &d.content, Some(&d.file), &meta);
    let mut layers = Vec::new();
    if let Some(b) = &d.replaced_base {
        layers.push(Layer {
            file: b.clone(),
            revision: rev.to_string(),
            role: "base drop-in (replaced)".into(),
        });
    }
    layers.push(Layer {
        file: d.repo_path.clone(),
        revision: rev.to_string(),
        role: if d.from_host {
            "host drop-in"
        } else {
            "base drop-in"
        }
        .into(),
    });
    Resource {
        id: format!("dropin:{rel}"),
        kind: Kind::Dropin,
        service: s.name.clone(),
        path: dir.join(rel),
        content: d.content.clone(),
        meta,
        digest: n.digest,
        raw_digest: n.raw_digest,
        layers,
        unit: None,
        restarts: vec![target_unit],
        drift: DriftPolicy::Repair,
        adopt: false,
        secret: None,
    }
}

/// A host file beneath the allowed roots, with its mode and owner from service.yaml; by
/// default it restarts the service's started services. A secret (`*.age`) is decrypted with
/// the host's identity and written 0600 unless service.yaml says otherwise.
#[allow(clippy::too_many_arguments)]
fn host_file_resource(
    s: &ServiceDraft,
    target: &str,
    repo_path: &str,
    content: &[u8],
    keyring: &secrets::Keyring,
    rev: &str,
    paths: &Paths,
    started_services: &[String],
) -> Result<Resource, InputError> {
    let tpath = host_file_target(target, repo_path, paths)?;
    let spec = s.yaml.files.get(target).cloned().unwrap_or_default();
    let sealed = repo_path.ends_with(secrets::SECRET_SUFFIX);
    let default_mode = if sealed { 0o600 } else { 0o644 };
    let meta = host_file_meta(s, target, repo_path, &spec, default_mode)?;
    let (content, secret) = if sealed {
        let (plain, secret) = keyring.unseal(repo_path, content);
        (plain, Some(secret))
    } else {
        (content.to_vec(), None)
    };
    let n = match &secret {
        None => normalize(Kind::File, &content, &meta),
        Some(s) => s.digests(&content, &meta),
    };
    let mut layers = vec![Layer {
        file: repo_path.to_string(),
        revision: rev.to_string(),
        role: "host file".into(),
    }];
    if s.yaml.files.contains_key(target) {
        layers.push(Layer {
            file: s.yaml_path.clone(),
            revision: rev.to_string(),
            role: "service.yaml".into(),
        });
    }
    Ok(Resource {
        id: format!("file:{target}"),
        kind: Kind::File,
        service: s.name.clone(),
        path: tpath,
        content,
        meta,
        digest: n.digest,
        raw_digest: n.raw_digest,
        layers,
        unit: None,
        restarts: spec
            .restart
            .clone()
            .unwrap_or_else(|| started_services.to_vec()),
        drift: spec.drift,
        adopt: spec.adopt,
        secret,
    })
}

/// A host file's target: a plain absolute path beneath one of the allowed roots.
fn host_file_target(target: &str, repo_path: &str, paths: &Paths) -> Result<PathBuf, InputError> {
    let logical = PathBuf::from(target);
    if !crate::config::plain_absolute(&logical) {
        return Err(InputError::new(
            Location::file(repo_path),
            format!(
                "host file target {target} has an empty, '.' or '..' component; \
                 core-ops writes only plain paths beneath the allowed roots"
            ),
        ));
    }
    let tpath = paths.host_path(&logical);
    if !paths.host_file_allowed(&tpath) {
        // as the repository names them (beneath the host root when one is set)
        let roots: Vec<String> = paths
            .host_file_roots
            .iter()
            .map(|p| {
                let logical = p.strip_prefix(&paths.host_root).unwrap_or(p);
                Path::new("/").join(logical).display().to_string()
            })
            .collect();
        return Err(InputError::new(
            Location::file(repo_path),
            format!(
                "host file target {target} is outside the allowed roots {}",
                roots.join(":")
            ),
        ));
    }
    Ok(tpath)
}

/// Mode and ownership of a host file: `default_mode` (0644, a secret 0600) root:root unless
/// service.yaml says otherwise; setuid, setgid, sticky and world-writable modes only with
/// `allow_special_mode`.
fn host_file_meta(
    s: &ServiceDraft,
    target: &str,
    repo_path: &str,
    spec: &yaml::FileSpec,
    default_mode: u32,
) -> Result<FileMeta, InputError> {
    let mode = match &spec.mode {
        None => default_mode,
        Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                InputError::new(
                    Location::file(&s.yaml_path),
                    format!("files: {target}: mode '{m}' is not an octal mode like \"0644\""),
                )
            })?,
    };
    if mode & 0o7002 != 0 && !spec.allow_special_mode {
        return Err(InputError::new(
            Location::file(&s.yaml_path),
            format!(
                "files: {target} ({repo_path}): mode {mode:04o} is setuid, setgid, sticky or \
                 world-writable; set `allow_special_mode: true` for this file if that is \
                 intended"
            ),
        ));
    }
    Ok(FileMeta {
        mode,
        owner: spec.owner.clone().unwrap_or_else(|| "root".into()),
        group: spec.group.clone().unwrap_or_else(|| "root".into()),
    })
}

/// The instances of a template unit: service.yaml `instances:` wins, else the template's
/// `DefaultInstance=`; empty for a unit that is not a template (where `instances:` is an
/// error).
fn template_instances(
    systemd_name: &str,
    effective: &Effective,
    spec: &yaml::UnitSpec,
    draft: &UnitDraft,
    svc: &str,
) -> Result<Vec<String>, InputError> {
    let yaml_file = format!("services/{svc}/service.yaml");
    if !is_template(systemd_name) {
        if spec.instances.is_some() {
            return Err(InputError::new(
                Location::file(&yaml_file),
                format!(
                    "units: {}: instances: only a template unit (name@.suffix) has instances",
                    draft.name
                ),
            ));
        }
        return Ok(Vec::new());
    }
    let names: Vec<String> = match &spec.instances {
        Some(list) => list.clone(),
        None => effective
            .words("Install", "DefaultInstance")
            .last()
            .cloned()
            .into_iter()
            .collect(),
    };
    let mut out = Vec::new();
    for i in names {
        if i.is_empty()
            || !i
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":-_.\\".contains(c))
        {
            return Err(InputError::new(
                Location::file(&yaml_file),
                format!(
                    "units: {}: '{i}' is not a valid instance name (escape it as systemd-escape does)",
                    draft.name
                ),
            ));
        }
        out.push(instance_name(systemd_name, &i));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn valid_unit_name(name: &str) -> bool {
    name.contains('.')
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
}

fn parse_unit(path: &str, content: &[u8]) -> Result<UnitFile, InputError> {
    let text = std::str::from_utf8(content)
        .map_err(|_| InputError::new(Location::file(path), "not valid UTF-8"))?;
    UnitFile::parse(path, text)
}

#[cfg(test)]
mod tests;
