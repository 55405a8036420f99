//! Plan step of the runtime object kind: the action for one desired runtime, and the ordering
//! edges runtimes add (before the units that use them, after the runtimes they depend on).

use std::collections::BTreeMap;

use crate::model::plan::{Action, Cause};
use crate::observe::ObservedFile;
use crate::render::runtimes::name_of;
use crate::render::{DesiredState, Resource};
use crate::runtime::manifest::ResolvedRuntime;
use crate::runtime::policy::{self, RuntimePolicy};

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
