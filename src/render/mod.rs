//! Render: turn one commit of the desired-state repository into this host's *desired state*,
//! a sorted set of resources with stable ids and material digests (DESIGN section 2).
//!
//! Pure: it takes the commit's files as values and returns values, so every rule here is
//! tested without git, a filesystem or systemd.

pub mod mount;
pub mod quadlet;
pub mod unit_file;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::config::Paths;
use crate::error::{InputError, Location};
use crate::normalize::{FileMeta, Kind, normalize};
use crate::source::{RepoEntry, RepoFiles, Revision};
use mount::MountInfo;
use unit_file::{Effective, UnitFile};
use yaml::{DriftPolicy, HostYaml, ServiceYaml};

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

/// Whether a unit name is a template (`foo@.service`), which systemd can load but never run.
pub fn is_template(unit: &str) -> bool {
    unit.split_once('@')
        .is_some_and(|(_, rest)| rest.starts_with('.'))
}

/// The units systemd runs for `unit`: itself, or for a template the given instances.
pub fn runtime_units(unit: &str, instances: &[String]) -> Vec<String> {
    if is_template(unit) {
        instances.to_vec()
    } else {
        vec![unit.to_string()]
    }
}

/// `foo@.service` + `a` -> `foo@a.service`.
pub fn instance_name(template: &str, instance: &str) -> String {
    match template.split_once("@.") {
        Some((stem, suffix)) => format!("{stem}@{instance}.{suffix}"),
        None => template.to_string(),
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    pub runtimes: crate::runtime::resource::DesiredRuntimes,
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
    let repo = RepoView { files, revision };
    let host_file = format!("hosts/{host}/host.yaml");
    let host_text = if files.exists(&host_file)? {
        repo.read(&host_file)?
    } else {
        // only on this error path is the whole of hosts/ listed
        let known = known_list(files.paths_under("hosts").map(|paths| {
            paths
                .iter()
                .filter_map(|p| p.strip_prefix("hosts/")?.strip_suffix("/host.yaml"))
                .filter(|h| !h.contains('/'))
                .map(str::to_string)
                .collect()
        }));
        return Err(InputError::new(
            Location::file(&host_file),
            format!("host '{host}' is not defined in the repository (known hosts: {known})"),
        ));
    };
    let host_yaml: HostYaml = yaml::parse(&host_file, &host_text)?;
    let host_text_str = String::from_utf8_lossy(&host_text).to_string();
    let line_of = |needle: &str| {
        host_text_str
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| Location::line(&host_file, i + 1))
            .unwrap_or_else(|| Location::file(&host_file))
    };

    let mut seen = BTreeSet::new();
    for svc in &host_yaml.services {
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

    // host overrides: hosts/<host>/overrides/<service>/<unit>.d/<name>.conf
    let mut host_dropins: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new(); // svc -> (unit.d/name, path)
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

    let mut resources: BTreeMap<String, Resource> = BTreeMap::new();
    for svc in &host_yaml.services {
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
    // two resources writing the same host path (e.g. a Quadlet-generated name colliding with
    // a plain unit) would fight each other
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

    // two objects writing one host path (a host file aimed at a unit file, say) would
    // overwrite each other on every run
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
    link_quadlet_restarts(&mut resources);

    // runtimes: manifests of this commit, in `depends:` order (DESIGN section 5)
    let (runtimes, runtime_resources) = crate::runtime::resource::render(
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

/// `a, b` for a listing, `none` for an empty one, and why when it could not be listed (a
/// read cap): for the "known ..." part of an error message.
pub(crate) fn known_list(listed: Result<Vec<String>, InputError>) -> String {
    match listed {
        Ok(v) if v.is_empty() => "none".to_string(),
        Ok(v) => v.join(", "),
        Err(e) => format!("not listed: {e}"),
    }
}

/// Read access to the commit's files with the repository's symlink rules applied.
struct RepoView<'a> {
    files: &'a dyn RepoFiles,
    revision: &'a Revision,
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

fn render_service(
    repo: &RepoView<'_>,
    svc: &str,
    host_dropins: &[(String, String)],
    paths: &Paths,
) -> Result<Vec<Resource>, InputError> {
    let prefix = format!("services/{svc}/");
    let rev = repo.short();
    let mut units: BTreeMap<String, UnitDraft> = BTreeMap::new();
    let mut dropins: BTreeMap<String, DropinDraft> = BTreeMap::new(); // "unit.d/name"
    let mut host_files: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new(); // target -> (repo path, content)
    let mut service_yaml = ServiceYaml::default();
    let service_yaml_path = format!("{prefix}service.yaml");

    for path in &repo.files.paths_under(&prefix)? {
        let rel = &path[prefix.len()..];
        let parts: Vec<&str> = rel.split('/').collect();
        if parts[0] == "files" && parts.len() > 1 {
            let target = format!("/{}", parts[1..].join("/"));
            host_files.insert(target, (path.clone(), repo.read(path)?));
            continue;
        }
        if parts.len() == 1 {
            let name = parts[0];
            if name == "service.yaml" {
                service_yaml = yaml::parse(path, &repo.read(path)?)?;
                continue;
            }
            if name.ends_with(".md") {
                continue;
            }
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
                    "unexpected file in a service directory (expected a unit, Quadlet file, .mount/.automount, <unit>.d/*.conf, files/ or service.yaml)",
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
            units.insert(
                name.to_string(),
                UnitDraft {
                    name: name.to_string(),
                    kind,
                    repo_path: path.clone(),
                    file,
                    content,
                },
            );
            continue;
        }
        if parts.len() == 2 && parts[0].ends_with(".d") {
            if !parts[1].ends_with(".conf") {
                return Err(InputError::new(
                    Location::file(path),
                    "drop-ins must be named <name>.conf",
                ));
            }
            let unit = parts[0].trim_end_matches(".d").to_string();
            if !valid_unit_name(&unit) {
                return Err(InputError::new(
                    Location::file(path),
                    format!("drop-in directory '{}' does not name a unit", parts[0]),
                ));
            }
            let content = repo.read(path)?;
            let file = parse_unit(path, &content)?;
            dropins.insert(
                rel.to_string(),
                DropinDraft {
                    unit,
                    name: parts[1].to_string(),
                    repo_path: path.clone(),
                    file,
                    content,
                    from_host: false,
                    replaced_base: None,
                },
            );
            continue;
        }
        return Err(InputError::new(
            Location::file(path),
            "unexpected path in a service directory (expected a unit, Quadlet file, .mount/.automount, <unit>.d/*.conf, files/ or service.yaml)",
        ));
    }
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

    // service.yaml must only speak of what exists
    for unit in service_yaml.units.keys() {
        if !units.contains_key(unit) {
            return Err(InputError::new(
                Location::file(&service_yaml_path),
                format!("units: '{unit}' is not a unit of service '{svc}'"),
            ));
        }
    }
    for target in service_yaml.files.keys() {
        if !host_files.contains_key(target) {
            return Err(InputError::new(
                Location::file(&service_yaml_path),
                format!("files: '{target}' has no services/{svc}/files{target}"),
            ));
        }
    }

    let mut out = Vec::new();
    let mut started_services: Vec<String> = Vec::new();
    let automount_stems: BTreeSet<String> = units
        .keys()
        .filter_map(|n| n.strip_suffix(".automount").map(str::to_string))
        .collect();

    for draft in units.values() {
        // layers in the order systemd applies them: the unit, then its drop-ins by file name
        let mut mine: Vec<&DropinDraft> =
            dropins.values().filter(|d| d.unit == draft.name).collect();
        mine.sort_by(|a, b| a.name.cmp(&b.name));
        let base_layers: Vec<&UnitFile> = std::iter::once(&draft.file)
            .chain(mine.iter().filter(|d| !d.from_host).map(|d| &d.file))
            .collect();
        let all_layers: Vec<&UnitFile> = std::iter::once(&draft.file)
            .chain(mine.iter().map(|d| &d.file))
            .collect();
        let effective = Effective::merge(all_layers.iter().copied());
        let mut layers = vec![Layer {
            file: draft.repo_path.clone(),
            revision: rev.clone(),
            role: "base".into(),
        }];
        for d in &mine {
            layers.push(Layer {
                file: d.repo_path.clone(),
                revision: rev.clone(),
                role: if d.from_host {
                    match &d.replaced_base {
                        Some(b) => format!("host drop-in (replaces {b})"),
                        None => "host drop-in".into(),
                    }
                } else {
                    "base drop-in".into()
                },
            });
        }
        let mut mount_view = None;
        if matches!(draft.kind, Kind::Mount | Kind::Automount) {
            let base_eff = Effective::merge(base_layers.iter().copied());
            mount_view =
                Some(mount::validate(&draft.name, &base_eff, &effective, &all_layers)?.into());
        } else {
            for layer in &all_layers {
                if let Some(s) = layer.sections.iter().find(|s| s.name == mount::X_COREOPS) {
                    let line = s.entries.first().map(|e| e.line).unwrap_or(s.line);
                    return Err(InputError::new(
                        Location::line(&layer.file, line),
                        "unsupported X-CoreOps field: [X-CoreOps] is only valid in .mount and .automount units",
                    ));
                }
            }
        }
        let systemd_name = match draft.kind {
            Kind::Quadlet => quadlet::generated_unit(&draft.name, &draft.file),
            _ => draft.name.clone(),
        };
        let has_install = |keys: &[&str]| {
            effective
                .sections
                .get("Install")
                .is_some_and(|s| keys.iter().any(|k| s.contains_key(*k)))
        };
        let wanted = has_install(&["WantedBy", "RequiredBy", "UpheldBy"]);
        let spec = service_yaml
            .units
            .get(&draft.name)
            .cloned()
            .unwrap_or_default();
        let (enable_default, start_default) = match draft.kind {
            // the generator turns [Install] into wants links itself
            Kind::Quadlet => (false, wanted),
            // a mount behind an automount is activated by its automount only: enabled or
            // started itself it would be mounted at boot directly (the hang the automount
            // exists to avoid)
            Kind::Mount if automount_stems.contains(draft.name.trim_end_matches(".mount")) => {
                (false, false)
            }
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
        };
        let instances = template_instances(&systemd_name, &effective, &spec, draft, svc)?;
        let (enable_default, start_default) = if is_template(&systemd_name) {
            // a template runs only as instances
            let any = !instances.is_empty();
            (enable_default && any, start_default && any)
        } else {
            (enable_default, start_default)
        };
        let enable = spec.enable.unwrap_or(enable_default);
        let start = spec.start.unwrap_or(start_default);
        if is_template(&systemd_name) && (enable || start) && instances.is_empty() {
            return Err(InputError::new(
                Location::file(&service_yaml_path),
                format!(
                    "units: {}: a template is never enabled or started itself; name its instances (instances: [..]) or set DefaultInstance= in its [Install] section",
                    draft.name
                ),
            ));
        }
        if start && systemd_name.ends_with(".service") {
            started_services.push(systemd_name.clone());
        }
        let mut after: BTreeSet<String> = BTreeSet::new();
        for key in ["After", "Requires", "BindsTo", "Requisite"] {
            after.extend(effective.words("Unit", key));
        }
        let mut rmf: BTreeSet<String> = BTreeSet::new();
        for section in ["Unit", "Service"] {
            rmf.extend(effective.words(section, "RequiresMountsFor"));
        }
        let meta = FileMeta::unit_default();
        let n = normalize(draft.kind, &draft.content, &meta);
        let dir = if draft.kind == Kind::Quadlet {
            &paths.quadlet_dir
        } else {
            &paths.unit_dir
        };
        out.push(Resource {
            id: format!("{}:{}", draft.kind.as_str(), draft.name),
            kind: draft.kind,
            service: svc.to_string(),
            path: dir.join(&draft.name),
            content: draft.content.clone(),
            meta,
            digest: n.digest,
            raw_digest: n.raw_digest,
            layers,
            unit: Some(UnitRole {
                name: systemd_name,
                enable,
                start,
                after: after.into_iter().collect(),
                requires_mounts_for: rmf.into_iter().collect(),
                mount: mount_view,
                effective: effective.canonical_text(),
                instances,
                settle: service_yaml.settle.map(|s| s.0),
            }),
            restarts: Vec::new(),
            drift: spec.drift,
            adopt: spec.adopt,
        });
    }

    for (rel, d) in &dropins {
        // a drop-in for a Quadlet file lives beside it; drop-ins of a Quadlet's generated unit
        // or of any other unit go to the unit dir
        let dir = if quadlet::is_quadlet(&d.unit) {
            &paths.quadlet_dir
        } else {
            &paths.unit_dir
        };
        let target_unit = match units.get(&d.unit) {
            Some(u) if u.kind == Kind::Quadlet => quadlet::generated_unit(&u.name, &u.file),
            _ => d.unit.clone(),
        };
        let meta = FileMeta::unit_default();
        let n = normalize(Kind::Dropin, &d.content, &meta);
        let mut layers = Vec::new();
        if let Some(b) = &d.replaced_base {
            layers.push(Layer {
                file: b.clone(),
                revision: rev.clone(),
                role: "base drop-in (replaced)".into(),
            });
        }
        layers.push(Layer {
            file: d.repo_path.clone(),
            revision: rev.clone(),
            role: if d.from_host {
                "host drop-in".into()
            } else {
                "base drop-in".into()
            },
        });
        out.push(Resource {
            id: format!("dropin:{rel}"),
            kind: Kind::Dropin,
            service: svc.to_string(),
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
        });
    }

    started_services.sort();
    for (target, (repo_path, content)) in host_files {
        let tpath = PathBuf::from(&target);
        if !crate::config::plain_absolute(&tpath) {
            return Err(InputError::new(
                Location::file(&repo_path),
                format!(
                    "host file target {target} has an empty, '.' or '..' component; \
                     core-ops writes only plain paths beneath the allowed roots"
                ),
            ));
        }
        if !paths.host_file_allowed(&tpath) {
            let roots: Vec<String> = paths
                .host_file_roots
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(InputError::new(
                Location::file(&repo_path),
                format!(
                    "host file target {target} is outside the allowed roots {}",
                    roots.join(":")
                ),
            ));
        }
        let spec = service_yaml.files.get(&target).cloned().unwrap_or_default();
        let mode = match &spec.mode {
            None => 0o644,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    InputError::new(
                        Location::file(&service_yaml_path),
                        format!("files: {target}: mode '{m}' is not an octal mode like \"0644\""),
                    )
                })?,
        };
        if mode & 0o7002 != 0 && !spec.allow_special_mode {
            return Err(InputError::new(
                Location::file(&service_yaml_path),
                format!(
                    "files: {target} ({repo_path}): mode {mode:04o} is setuid, setgid, sticky or \
                     world-writable; set `allow_special_mode: true` for this file if that is \
                     intended"
                ),
            ));
        }
        let meta = FileMeta {
            mode,
            owner: spec.owner.clone().unwrap_or_else(|| "root".into()),
            group: spec.group.clone().unwrap_or_else(|| "root".into()),
        };
        let n = normalize(Kind::File, &content, &meta);
        let mut layers = vec![Layer {
            file: repo_path.clone(),
            revision: rev.clone(),
            role: "host file".into(),
        }];
        if service_yaml.files.contains_key(&target) {
            layers.push(Layer {
                file: service_yaml_path.clone(),
                revision: rev.clone(),
                role: "service.yaml".into(),
            });
        }
        out.push(Resource {
            id: format!("file:{target}"),
            kind: Kind::File,
            service: svc.to_string(),
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
                .unwrap_or_else(|| started_services.clone()),
            drift: spec.drift,
            adopt: spec.adopt,
        });
    }
    Ok(out)
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
