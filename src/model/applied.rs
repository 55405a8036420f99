//! What converged last (`last_applied` in status.json), with enough per-resource detail to
//! plan deletions and detect drift.
//!
//! Why in the model: the planner reads it (the third side of its three-way diff) and the
//! record stage writes it; neither should depend on the other for the type.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::normalize::Kind;

/// What converged last, with enough per-resource detail to plan deletions and detect drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastApplied {
    /// Commit.
    pub revision: String,
    /// Ref it was requested as (display only).
    pub requested_ref: String,
    /// RFC 3339 UTC time of convergence.
    pub applied_at: String,
    /// Managed resources by id.
    pub resources: BTreeMap<String, AppliedResource>,
}

/// One managed resource as last applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedResource {
    /// Kind.
    pub kind: Kind,
    /// Host path.
    pub path: PathBuf,
    /// Material digest.
    pub digest: String,
    /// systemd unit name for unit-like kinds.
    #[serde(default)]
    pub unit: Option<String>,
    /// Whether the unit was enabled.
    #[serde(default)]
    pub enabled: bool,
    /// Whether the unit was kept started.
    #[serde(default)]
    pub started: bool,
    /// Resource ids it was ordered after (for reverse-order removal).
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Mount `Where=`, for mounts.
    #[serde(default)]
    pub mount_where: Option<String>,
    /// Instances of a template unit that were enabled/started (`foo@a.service`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// The file existed before core-ops and was adopted explicitly (`adopt: true`,
    /// `--adopt`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// Its units were seen to run to completion on their own after core-ops started them
    /// (inactive, `Result=success`): like a oneshot, inactive is then its converged state,
    /// not "stopped" drift. Learned per written content; a rewrite learns it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub runs_to_completion: bool,
    /// A secret host file: its digest is keyed, and nothing shows its content.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}
