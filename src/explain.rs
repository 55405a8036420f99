//! `explain OBJECT`: for one object, the layers that produced it, its normalized digest and
//! content, its planned action and why, and its dependency edges both ways.
//!
//! Why a view model: JSON and text render this same struct, so they cannot disagree.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::pipeline::Planned;
use crate::plan::PlannedAction;
use crate::render::{Layer, Resource};

/// Everything `explain` says about one object.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Resource id.
    pub id: String,
    /// Host it was rendered for.
    pub host: String,
    /// Desired revision (`454ac5f1 (v1)` in text).
    pub revision: String,
    /// Requested ref.
    pub requested_ref: String,
    /// Service that declares it (absent for objects only in last_applied).
    pub service: Option<String>,
    /// Host path.
    pub path: Option<String>,
    /// systemd unit.
    pub unit: Option<String>,
    /// Files that produced it, in the order systemd applies them.
    pub layers: Vec<Layer>,
    /// Material digest.
    pub digest: Option<String>,
    /// Effective normalized content (units: after drop-ins).
    pub normalized: Option<String>,
    /// The planned action for it.
    pub action: PlannedAction,
    /// Ids it depends on.
    pub depends_on: Vec<String>,
    /// Ids that depend on it.
    pub required_by: Vec<String>,
    /// Units it restarts when it changes.
    pub restarts: Vec<String>,
    /// For `runtime:<name>`: versions on the host and the transaction history (filled by
    /// the caller, which knows the state dir).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::apply::runtimes::history::RuntimeHistory>,
}

/// Find an object by id, unit name, file name or host path.
pub fn find<'a>(planned: &'a Planned, object: &str) -> Result<&'a PlannedAction> {
    let actions = &planned.plan.actions;
    if let Some(a) = actions.iter().find(|a| a.id == object) {
        return Ok(a);
    }
    let matches: Vec<&PlannedAction> = actions
        .iter()
        .filter(|a| {
            a.unit.as_deref() == Some(object)
                || a.path.as_deref() == Some(object)
                || a.id.split_once(':').map(|(_, n)| n) == Some(object)
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => {
            let known: Vec<&str> = actions.iter().map(|a| a.id.as_str()).collect();
            Err(Error::Config(format!(
                "no object '{object}' on host {}; known objects: {}",
                planned.target.host,
                known.join(", ")
            )))
        }
        many => Err(Error::Config(format!(
            "'{object}' is ambiguous: {}",
            many.iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Build the explanation of one object.
pub fn explain(planned: &Planned, object: &str) -> Result<Explanation> {
    let action = find(planned, object)?.clone();
    let resource: Option<&Resource> = planned.desired.resources.get(&action.id);
    let required_by: Vec<String> = planned
        .plan
        .actions
        .iter()
        .filter(|a| a.depends_on.contains(&action.id))
        .map(|a| a.id.clone())
        .collect();
    Ok(Explanation {
        id: action.id.clone(),
        host: planned.target.host.clone(),
        revision: planned.desired.revision.commit.clone(),
        requested_ref: planned.desired.revision.requested_ref.clone(),
        service: resource
            .map(|r| r.service.clone())
            .filter(|s| !s.is_empty()),
        path: action.path.clone(),
        unit: action.unit.clone(),
        layers: resource.map(|r| r.layers.clone()).unwrap_or_default(),
        digest: resource.map(|r| r.digest.clone()),
        normalized: resource.map(|r| match (&r.secret, &r.unit) {
            (Some(s), _) => s.view.label(),
            (None, Some(u)) => u.effective.clone(),
            (None, None) if r.kind == crate::model::normalize::Kind::Runtime => {
                String::from_utf8_lossy(&r.content).into_owned()
            }
            (None, None) if r.kind.is_ini() => crate::model::unit_file::UnitFile::parse(
                &r.id,
                &String::from_utf8_lossy(&r.content),
            )
            .map(|f| crate::model::unit_file::canonical_layer_text(&f))
            .unwrap_or_default(),
            (None, None) => format!("{} bytes, raw sha {}", r.content.len(), r.raw_digest),
        }),
        depends_on: action.depends_on.clone(),
        required_by,
        restarts: action.restarts.clone(),
        runtime: None,
        action,
    })
}
