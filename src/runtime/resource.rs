//! The runtime as a pipeline resource `runtime:<name>`: how render adds it to the desired
//! state, how observe reads the installed version, how plan decides its action, which
//! ordering edges it adds, and how verify judges it.
//!
//! Material (DESIGN section 4): name, version, artifact digests. The observed side reads
//! `current` and the install record of the version it points at, and compares the same
//! material digest; the planner never looks at the unpacked tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::InputError;
use crate::normalize::{FileMeta, Kind};
use crate::observe::ObservedFile;
use crate::plan::{Action, Cause};
use crate::render::{DesiredState, Layer, Resource};
use crate::source::RepoFiles;

use super::Layout;
use super::manifest::{self, ResolvedRuntime};
use super::policy::{self, RuntimePolicy};

/// The runtimes part of a host's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredRuntimes {
    /// The host's policy, checked.
    pub policy: RuntimePolicy,
    /// Selected runtimes by name.
    pub by_name: BTreeMap<String, ResolvedRuntime>,
}

/// Render step: resolve the runtimes host.yaml selects and build their resources.
pub fn render(
    host_yaml: &crate::render::yaml::HostYaml,
    host_file: &str,
    host_text: &str,
    files: &dyn RepoFiles,
    read: &dyn Fn(&str) -> Result<Vec<u8>, InputError>,
    state_dir: &Path,
    revision_short: &str,
) -> Result<(DesiredRuntimes, Vec<Resource>), InputError> {
    let policy = policy::check(&host_yaml.policy, host_file, host_text)?;
    let resolved = manifest::resolve(&host_yaml.runtimes, host_file, host_text, files, read)?;
    let mut resources = Vec::new();
    let mut by_name = BTreeMap::new();
    for rt in resolved {
        let name = rt.manifest.name.clone();
        resources.push(Resource {
            id: format!("runtime:{name}"),
            kind: Kind::Runtime,
            service: String::new(),
            path: Layout::new(state_dir, &name).current(),
            content: rt.material.clone().into_bytes(),
            meta: FileMeta::unit_default(),
            digest: rt.material_digest.clone(),
            raw_digest: rt.manifest_digest.clone(),
            layers: vec![
                Layer {
                    file: rt.file.clone(),
                    revision: revision_short.to_string(),
                    role: "runtime manifest".into(),
                },
                Layer {
                    file: host_file.to_string(),
                    revision: revision_short.to_string(),
                    role: "host selection".into(),
                },
            ],
            unit: None,
            restarts: Vec::new(),
            // a runtime that is not what was installed is always put back
            drift: crate::render::yaml::DriftPolicy::Repair,
            adopt: false,
        });
        by_name.insert(name, rt);
    }
    Ok((DesiredRuntimes { policy, by_name }, resources))
}

/// The runtime name of a resource id `runtime:<name>`.
pub fn name_of(id: &str) -> Option<&str> {
    id.strip_prefix("runtime:")
}

/// Observe step: what `<state dir>/runtimes/<name>/current` points at, as the material
/// digest of that version's install record.
pub fn observe(current: &Path) -> ObservedFile {
    let md = match std::fs::symlink_metadata(current) {
        Ok(m) => m,
        Err(_) => return ObservedFile::Absent,
    };
    if !md.file_type().is_symlink() {
        return ObservedFile::Other {
            what: if md.is_dir() { "directory" } else { "file" }.into(),
        };
    }
    let dir = current.parent().unwrap_or(Path::new("/"));
    let layout = Layout {
        dir: dir.to_path_buf(),
    };
    let Some(version) = layout.current_version() else {
        return ObservedFile::Other {
            what: "symlink to something that is not a runtime version".into(),
        };
    };
    if !layout.version_dir(&version).is_dir() {
        return ObservedFile::Other {
            what: format!("dangling symlink to {version}"),
        };
    }
    match layout.installed(&version) {
        Some(iv) => ObservedFile::File {
            digest: iv.material_digest,
            raw_digest: iv.manifest_digest,
            meta: FileMeta::unit_default(),
        },
        None => ObservedFile::Other {
            what: format!("symlink to {version}, which has no install record"),
        },
    }
}

/// Plan step: the action for one desired runtime.
pub fn plan_action(
    r: &Resource,
    rt: Option<&ResolvedRuntime>,
    policy: &RuntimePolicy,
    observed: Option<&ObservedFile>,
    last_applied: Option<&str>,
) -> (Action, Cause, String) {
    let (name, version) = match rt {
        Some(rt) => (rt.manifest.name.as_str(), rt.manifest.version.as_str()),
        None => (name_of(&r.id).unwrap_or(&r.id), "?"),
    };
    let mut notes = String::new();
    if let Some(rt) = rt {
        if !rt.manifest.units.is_empty() {
            notes.push_str(&format!(
                "; restarts {} after the switch",
                rt.manifest.units.join(", ")
            ));
        }
        let (deny, _) = policy::denials(policy, &rt.manifest);
        if !deny.is_empty() {
            notes.push_str(&format!("; policy will deny it: {}", deny.join("; ")));
        }
    }
    let (action, cause, reason) = match observed {
        None | Some(ObservedFile::Absent) => match last_applied {
            None => (
                Action::Create,
                Cause::DesiredChange,
                format!("install {name} {version}"),
            ),
            Some(_) => (
                Action::Create,
                Cause::Drift,
                format!("{name} is no longer installed on the host; install {version} again"),
            ),
        },
        Some(ObservedFile::File { digest, .. }) if *digest == r.digest => {
            return (
                Action::NoOp,
                Cause::Unchanged,
                format!("{name} {version} is installed and current"),
            );
        }
        Some(ObservedFile::File { digest, .. }) => match last_applied {
            Some(l) if l != digest && l == r.digest => (
                Action::Update,
                Cause::Drift,
                format!("current no longer points at the applied {name} {version}; switch back"),
            ),
            _ => (
                Action::Update,
                Cause::DesiredChange,
                format!("switch {name} to {version} (the installed version differs)"),
            ),
        },
        Some(ObservedFile::Other { what }) => (
            Action::Update,
            Cause::Drift,
            format!("{name} on the host is not what core-ops recorded ({what}); install {version}"),
        ),
    };
    (action, cause, format!("{reason}{notes}"))
}

/// Ordering edges `(id, must come first)`: a runtime before the units that list it in
/// `units:`, and after the runtimes it `depends:` on.
pub fn dependency_edges(desired: &DesiredState) -> Vec<(String, String)> {
    let mut by_unit: BTreeMap<&str, &str> = BTreeMap::new();
    for r in desired.resources.values() {
        if let Some(u) = &r.unit {
            by_unit.insert(&u.name, &r.id);
        }
    }
    let mut edges = Vec::new();
    for (name, rt) in &desired.runtimes.by_name {
        let id = format!("runtime:{name}");
        for u in &rt.manifest.units {
            if let Some(unit_id) = by_unit.get(u.as_str()) {
                edges.push((unit_id.to_string(), id.clone()));
            }
        }
        for d in &rt.manifest.depends {
            edges.push((id.clone(), format!("runtime:{d}")));
        }
    }
    edges
}

/// Units of a runtime that are oneshots without `RemainAfterExit=` (healthy once they
/// succeeded), from the desired units' effective content.
pub fn oneshot_units(desired: &DesiredState, rt: &ResolvedRuntime) -> Vec<String> {
    rt.manifest
        .units
        .iter()
        .filter(|u| {
            desired
                .unit_resource(u)
                .and_then(|r| r.unit.as_ref())
                .is_some_and(|ur| ur.exits_when_done())
        })
        .cloned()
        .collect()
}

/// Verify step: `None` when the runtime's `current` holds the desired version, else what is
/// wrong.
pub fn verify_problem(r: &Resource) -> Option<String> {
    match observe(&r.path) {
        ObservedFile::File { digest, .. } if digest == r.digest => None,
        _ => {
            let layout = Layout {
                dir: r.path.parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            let desired = String::from_utf8_lossy(&r.content)
                .lines()
                .find_map(|l| l.strip_prefix("version=").map(str::to_string))
                .unwrap_or_default();
            Some(format!(
                "{}: current is {}, desired {desired}",
                r.id,
                layout
                    .current_version()
                    .unwrap_or_else(|| "not installed".into())
            ))
        }
    }
}

/// The directory a runtime resource's `current` lives in (what removal deletes).
pub fn runtime_dir(current: &Path) -> PathBuf {
    current.parent().map(Path::to_path_buf).unwrap_or_default()
}
