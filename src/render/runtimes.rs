//! Render step of the runtime object kind: resolve the runtimes host.yaml selects and build
//! their `runtime:<name>` resources.
//!
//! Material (docs/design.md section 4): name, version, artifact digests; the observed side
//! compares the same material digest (`observe::runtimes`), so the planner never looks at
//! unpacked trees.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::InputError;
use crate::model::normalize::{FileMeta, Kind};
use crate::model::yaml::{DriftPolicy, HostYaml};
use crate::runtime::Layout;
use crate::runtime::manifest::{self, ResolvedRuntime};
use crate::runtime::policy::{self, RuntimePolicy};
use crate::source::RepoFiles;

use super::{DesiredState, Layer, Resource};

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
    host_yaml: &HostYaml,
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
            drift: DriftPolicy::Repair,
            adopt: false,
            secret: None,
        });
        by_name.insert(name, rt);
    }
    Ok((DesiredRuntimes { policy, by_name }, resources))
}

/// The runtime name of a resource id `runtime:<name>`.
pub fn name_of(id: &str) -> Option<&str> {
    id.strip_prefix("runtime:")
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
