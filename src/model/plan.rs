//! The plan document: an *intent manifest* (docs/design.md section 4). Its JSON is the operator
//! contract; human output renders the same struct.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::normalize::Kind;
use crate::provenance::Provenance;

/// Plan schema version.
pub const PLAN_SCHEMA_VERSION: u32 = 1;

/// What to do with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Write a new object (and enable/start it if it should run).
    Create,
    /// Rewrite a changed object (and restart it if it runs).
    Update,
    /// Stop, rewrite, start (mounts whose source changed; a symlink where a file belongs).
    Replace,
    /// Stop, disable and remove an object that left the desired state.
    Delete,
    /// Restart a unit because something it uses changed, or start a stopped one.
    Restart,
    /// Bring a failed, disabled or not-loaded unit back (enable, reload, reset-failed, start).
    Recover,
    /// Take over a file that existed before core-ops managed it (`adopt: true`,
    /// `--adopt`): record it as owned, and write the desired content if it differs.
    Adopt,
    /// Nothing to do.
    NoOp,
    /// Cannot proceed safely; the reason says what the operator must do.
    Blocked,
}

impl Action {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        crate::model::names::serde_name(&self)
    }
}

/// Why an action is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The repository changed it (or it is new / removed).
    DesiredChange,
    /// The host no longer matches what was applied (hand edit, stopped or failed unit).
    Drift,
    /// Something it uses changed (drop-in, host file).
    DependencyChange,
    /// Differences were seen but are not material (formatting, comments, key order).
    RuntimeVariance,
    /// Desired, applied and observed agree.
    Unchanged,
    /// A file core-ops does not manage is in the way.
    UnmanagedConflict,
    /// A previous run was killed while changing it; it is re-applied with its restarts.
    InterruptedApply,
    /// Something the object needs on the host is missing (e.g. a mountpoint with
    /// `CreateMountpoint=false`).
    MissingPrerequisite,
    /// The Quadlet generator rejects the file (dry run before anything is written); the
    /// reason carries the generator's own message. Always with `blocked`.
    InvalidQuadlet,
    /// The operator asked core-ops to take over a pre-existing file (`adopt: true` in
    /// service.yaml, or `--adopt PATH`).
    Adoption,
    /// systemd refuses the unit once its layers are merged, or would drop part of it
    /// (`systemd-analyze verify` and core-ops' own checks, see `unit_check`); the reason says
    /// `file:line`. Always with `blocked`.
    InvalidUnit,
}

/// Digests of the three sides for one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Sides {
    /// Desired material digest.
    pub desired: Option<String>,
    /// Digest recorded when last applied.
    pub last_applied: Option<String>,
    /// Digest on the host now (`absent`, or `other:<what>`).
    pub observed: Option<String>,
}

/// What plans, explanations and records show of a secret host file (an age-encrypted
/// `files/**/*.age`): where it comes from and the digest of its *ciphertext*, never anything
/// of the plaintext. Its `digests` are keyed (`hmac-sha256:`, see
/// [`crate::model::normalize::DigestKey`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    /// `sha256:<hex>` of the encrypted file as committed.
    pub ciphertext_digest: String,
    /// The encrypted file in the repository.
    pub source: String,
}

impl SecretView {
    /// `(secret) sha256:<ciphertext>`: how text output names the content.
    pub fn label(&self) -> String {
        format!("(secret) {}", self.ciphertext_digest)
    }
}

/// One ordered action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction {
    /// What to do.
    pub action: Action,
    /// Why.
    pub cause: Cause,
    /// Resource ids ordered before this one.
    pub depends_on: Vec<String>,
    /// Digests of the three sides.
    pub digests: Sides,
    /// Whether the unit should be enabled (unit-like objects).
    pub enable: Option<bool>,
    /// Resource id.
    pub id: String,
    /// For a template unit: the instances enabled and started in its place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Kind.
    pub kind: Kind,
    /// 1-based position in execution order.
    pub order: usize,
    /// Host path, when the object is a file.
    pub path: Option<String>,
    /// One sentence for humans.
    pub reason: String,
    /// Units restarted because of this change (explicit restart semantics).
    pub restarts: Vec<String>,
    /// For a secret host file: `(secret)` and its ciphertext digest instead of content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretView>,
    /// Whether the unit should be kept started (unit-like objects).
    pub start: Option<bool>,
    /// systemd unit it concerns (for Quadlet: the generated unit).
    pub unit: Option<String>,
}

/// A difference worth reporting that is not itself an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Resource id.
    pub id: String,
    /// `drift`, `runtime_variance` or `warning` (unit validation: what systemd ignores).
    pub kind: String,
    /// What was seen and why it is (or is not) acted on.
    pub reason: String,
}

/// The revisions and observation a plan is based on; `apply --plan` refuses a plan whose
/// base no longer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// Desired commit.
    pub desired_revision: String,
    /// Commit of `last_applied`, if any.
    pub last_applied_revision: Option<String>,
    /// Digest over everything observed that the plan depends on.
    pub observed_digest: String,
    /// Ref it was requested as.
    pub requested_ref: String,
}

/// The plan.
///
/// Its fields, and those of every type inside it, are declared in sorted order (a test holds
/// them to it), so serde_json writes the canonical form the checksum is taken over directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Ordered actions, one per object.
    pub actions: Vec<PlannedAction>,
    /// What it is based on.
    pub base: Base,
    /// `sha256:<hex>` over the canonical JSON of this document without this field (empty,
    /// and so left out, only while that checksum is being taken).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub checksum: String,
    /// Build that made it.
    #[serde(serialize_with = "provenance_sorted")]
    pub core_ops: Provenance,
    /// Drift and runtime variance seen.
    pub findings: Vec<Finding>,
    /// Host planned for.
    pub host: String,
    /// `CoreOpsPlan`.
    pub kind: String,
    /// Repository (credentials stripped).
    pub repo: String,
    /// [`PLAN_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Count of actions by action name.
    pub summary: BTreeMap<String, usize>,
    /// Things the operator should know (unit state unknown, ordering cycle...).
    pub warnings: Vec<String>,
}

/// [`Provenance`] with its keys in sorted order (its own declaration order is the one
/// status.json and receipts have always been written in).
fn provenance_sorted<S: serde::Serializer>(p: &Provenance, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Provenance", 3)?;
    st.serialize_field("build_revision", &p.build_revision)?;
    st.serialize_field("rustc", &p.rustc)?;
    st.serialize_field("version", &p.version)?;
    st.end()
}

impl PlannedAction {
    /// The units systemd runs for this object: its unit, or a template's instances.
    pub fn runtime_units(&self) -> Vec<String> {
        match &self.unit {
            Some(u) => crate::model::unit_file::runtime_units(u, &self.instances),
            None => Vec::new(),
        }
    }
}

impl Plan {
    /// Whether executing the plan would change anything.
    pub fn has_changes(&self) -> bool {
        self.actions.iter().any(|a| a.action != Action::NoOp)
    }

    /// Whether any action is blocked.
    pub fn is_blocked(&self) -> bool {
        self.actions.iter().any(|a| a.action == Action::Blocked)
    }

    /// Drift the plan reports but does not repair (`drift: report`, hand-made drop-ins), as
    /// lines for status.json.
    pub fn reported_drift(&self) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| f.kind == "drift")
            .filter(|f| {
                self.actions
                    .iter()
                    .find(|a| a.id == f.id)
                    .is_none_or(|a| a.action == Action::NoOp)
            })
            .map(|f| format!("drift reported, not repaired: {}: {}", f.id, f.reason))
            .collect()
    }
}
