//! Plan: the three-way diff of desired state, `last_applied` and the observed host, turned into
//! ordered actions with causes, plus drift and `runtime_variance` findings (docs/design.md
//! section 4).
//!
//! Pure: same inputs, same bytes. Maps are sorted, no clock is read, and the checksum is taken
//! over canonical JSON.

pub mod runtimes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::model::applied::{AppliedResource, LastApplied};
use crate::model::normalize::{Kind, sha256_hex};
pub use crate::model::plan::*;
use crate::observe::{ObservedFile, UnitObservation};
use crate::provenance::Provenance;
use crate::render::{DesiredState, Resource};
use crate::systemd::UnitStatus;

/// Everything a plan depends on.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Rendered desired state.
    pub desired: &'a DesiredState,
    /// Repository as shown to the operator.
    pub repo: &'a str,
    /// What converged last, if anything (the base revision of the plan).
    pub last_applied: Option<&'a LastApplied>,
    /// What core-ops owns on the host (the ownership ledger): what it wrote, whatever the
    /// outcome of the run that wrote it, until it removes it.
    pub owned: &'a BTreeMap<String, AppliedResource>,
    /// Host paths the operator asked to adopt (`--adopt PATH`).
    pub adopt: &'a BTreeSet<PathBuf>,
    /// Observed managed files by id (see [`managed_paths`]).
    pub observed: &'a BTreeMap<String, ObservedFile>,
    /// Observed unit runtime state.
    pub units: &'a UnitObservation,
    /// Warnings gathered before planning (e.g. why there is no status snapshot).
    pub warnings: Vec<String>,
    /// Objects an interrupted run was changing (from the in-flight journal).
    pub interrupted: BTreeSet<String>,
    /// Objects the Quadlet generator rejects, with its message (see `quadlet_check`); each
    /// becomes a blocked action.
    pub invalid_quadlet: BTreeMap<String, String>,
    /// Drop-ins on the host that change a managed unit but are not in the desired state
    /// (see `observe::foreign_dropins`); each is a drift finding.
    pub foreign_dropins: BTreeMap<String, Vec<PathBuf>>,
    /// Objects systemd rejects once merged, with `file:line: message` (see `unit_check`);
    /// each becomes a blocked action.
    pub invalid_units: BTreeMap<String, String>,
    /// Findings made before planning (unit validation warnings).
    pub findings: Vec<Finding>,
}

/// The paths the planner needs observed: every desired resource and every resource
/// core-ops owns (so removals are seen).
pub fn managed_paths(
    desired: &DesiredState,
    owned: &BTreeMap<String, AppliedResource>,
) -> BTreeMap<String, (Kind, PathBuf)> {
    let mut m: BTreeMap<String, (Kind, PathBuf)> = BTreeMap::new();
    for (id, r) in owned {
        m.insert(id.clone(), (r.kind, r.path.clone()));
    }
    for (id, r) in &desired.resources {
        m.insert(id.clone(), (r.kind, r.path.clone()));
    }
    m
}

/// Unit names whose runtime state the plan looks at: desired units (a template's
/// instances), units restarted by a drop-in or file, and units of owned resources.
pub fn managed_units(
    desired: &DesiredState,
    owned: &BTreeMap<String, AppliedResource>,
) -> Vec<String> {
    let mut s: BTreeSet<String> = BTreeSet::new();
    for r in desired.resources.values() {
        if let Some(u) = &r.unit {
            s.extend(u.runtime_units());
        }
        s.extend(r.restarts.iter().cloned());
    }
    s.extend(owned_units(owned));
    s.into_iter().collect()
}

/// The units of what core-ops owns (a template's instances): on a converged host, exactly
/// the units [`managed_units`] names, known before the desired state is rendered.
pub fn owned_units(owned: &BTreeMap<String, AppliedResource>) -> BTreeSet<String> {
    owned
        .values()
        .filter_map(|r| {
            let u = r.unit.as_ref()?;
            Some(crate::model::unit_file::runtime_units(u, &r.instances))
        })
        .flatten()
        .collect()
}

fn observed_label(o: Option<&ObservedFile>) -> String {
    match o {
        None | Some(ObservedFile::Absent) => "absent".into(),
        Some(ObservedFile::File { digest, .. }) => digest.clone(),
        Some(ObservedFile::Other { what }) => format!("other:{what}"),
    }
}

/// [`observed_label`] of a secret core-ops no longer renders (and so cannot key): whether
/// it is there, never a digest of its content.
fn secret_observed_label(o: Option<&ObservedFile>) -> String {
    match o {
        Some(ObservedFile::File { .. }) => "(secret)".into(),
        other => observed_label(other),
    }
}

/// Resource-level dependency edges of the desired state: id -> ids that must come first.
pub fn desired_dependencies(desired: &DesiredState) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_unit: BTreeMap<&str, &str> = BTreeMap::new();
    let mut mounts: Vec<(&str, &Resource)> = Vec::new();
    for r in desired.resources.values() {
        if let Some(u) = &r.unit {
            by_unit.insert(&u.name, &r.id);
            if let Some(m) = &u.mount {
                mounts.push((&m.where_, r));
            }
        }
    }
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in desired.resources.values() {
        let mut d: BTreeSet<String> = BTreeSet::new();
        if let Some(u) = &r.unit {
            for a in &u.after {
                if let Some(id) = by_unit.get(a.as_str()) {
                    d.insert(id.to_string());
                }
            }
            for p in &u.requires_mounts_for {
                for (w, m) in &mounts {
                    if Path::new(p).starts_with(w) && m.id != r.id {
                        d.insert(m.id.clone());
                    }
                }
            }
            // the automount goes after the mount it activates
            if r.kind == Kind::Automount {
                let mount =
                    r.id.replacen("automount:", "mount:", 1)
                        .replace(".automount", ".mount");
                if desired.resources.contains_key(&mount) {
                    d.insert(mount);
                }
            }
        }
        // a Quadlet file goes after the Quadlet files it names (Network=, Pod=, Volume=,
        // Image=): the generator makes its unit require theirs
        if r.kind == Kind::Quadlet
            && let Some(u) = &r.unit
        {
            for f in crate::render::quadlet::linked_files(&u.effective) {
                let id = format!("quadlet:{f}");
                if desired.resources.contains_key(&id) && id != r.id {
                    d.insert(id);
                }
            }
        }
        deps.entry(r.id.clone()).or_default().extend(d);
        // drop-ins and host files go before the units they change, so the restart they cause
        // comes after them
        if matches!(r.kind, Kind::File | Kind::Dropin) {
            for u in &r.restarts {
                if let Some(id) = by_unit.get(u.as_str()) {
                    deps.entry(id.to_string()).or_default().insert(r.id.clone());
                }
            }
        }
    }
    // a runtime goes before the units that use it, after the runtimes it depends on
    for (id, first) in runtimes::dependency_edges(desired) {
        deps.entry(id).or_default().insert(first);
    }
    deps
}

/// Whether a unit (or one of a template's instances) is healthy enough that the plan need
/// not act, or what is wrong.
fn unit_drift(
    r: &Resource,
    states: &BTreeMap<String, UnitStatus>,
    runs_to_completion: bool,
) -> Option<(Action, String)> {
    let u = r.unit.as_ref()?;
    u.runtime_units()
        .iter()
        .filter_map(|name| states.get(name))
        .find_map(|st| runtime_unit_drift(u, st, runs_to_completion))
}

/// Drift of one runtime unit against its role.
fn runtime_unit_drift(
    u: &crate::render::UnitRole,
    st: &UnitStatus,
    runs_to_completion: bool,
) -> Option<(Action, String)> {
    if st.load_state == "not-found" || st.load_state.is_empty() {
        if u.start || u.enable {
            return Some((
                Action::Recover,
                "unit file is on disk but systemd has not loaded it (reload needed)".into(),
            ));
        }
        return None;
    }
    if st.load_state != "loaded" {
        let why = if st.load_error.is_empty() {
            String::new()
        } else {
            format!(": {}", st.load_error)
        };
        return Some((
            Action::Recover,
            format!("unit load state is '{}'{why}", st.load_state),
        ));
    }
    if u.start && st.active_state == "failed" {
        let why = if st.result.is_empty() {
            String::new()
        } else {
            format!(" (Result={})", st.result)
        };
        return Some((Action::Recover, format!("unit has failed{why}")));
    }
    if u.start
        && matches!(st.active_state.as_str(), "inactive" | "deactivating")
        && !st.finished_cleanly(u.exits_when_done() || runs_to_completion)
    {
        return Some((
            Action::Restart,
            format!("unit is stopped ({})", st.active_state),
        ));
    }
    let enabled = matches!(
        st.unit_file_state.as_str(),
        "enabled" | "enabled-runtime" | "static" | "generated" | "alias" | "indirect" | "linked"
    );
    // enablement is judged by wants/requires links; an Alias=-only unit cannot be told apart
    let linked_by_install = ["WantedBy=", "RequiredBy=", "UpheldBy="]
        .iter()
        .any(|k| u.effective.contains(k));
    if u.enable && linked_by_install && !enabled && !st.unit_file_state.is_empty() {
        return Some((
            Action::Recover,
            format!("unit is not enabled (UnitFileState={})", st.unit_file_state),
        ));
    }
    None
}

/// What to do with one desired file-backed object, judged from what is on the host and what
/// core-ops last wrote there (`last_digest`, from the ownership ledger): create it, update
/// it, repair drift, adopt it, leave it alone, or block on something core-ops does not own.
fn file_action(
    r: &Resource,
    observed: Option<&ObservedFile>,
    last_digest: &Option<String>,
    adopt: bool,
    findings: &mut Vec<Finding>,
) -> (Action, Cause, String) {
    match observed {
        None | Some(ObservedFile::Absent) => match &last_digest {
            None => (
                Action::Create,
                Cause::DesiredChange,
                "new in the desired state".to_string(),
            ),
            Some(_) => {
                findings.push(drift_finding(
                    &r.id,
                    "managed file was removed from the host".into(),
                ));
                (
                    Action::Create,
                    Cause::Drift,
                    "managed file was removed from the host; recreate it".into(),
                )
            }
        },
        Some(ObservedFile::Other { what }) => {
            if what == "symlink" && last_digest.is_some() {
                findings.push(drift_finding(
                    &r.id,
                    "managed file was replaced by a symlink".into(),
                ));
                (
                    Action::Replace,
                    Cause::Drift,
                    "managed file was replaced by a symlink; replace it with the desired file"
                        .into(),
                )
            } else {
                (
                    Action::Blocked,
                    Cause::UnmanagedConflict,
                    format!(
                        "{} is a {what}; remove it by hand, core-ops does not overwrite it",
                        r.path.display()
                    ),
                )
            }
        }
        Some(ObservedFile::File {
            digest, raw_digest, ..
        }) if *digest == r.digest => {
            matching_file_action(r, raw_digest, last_digest, adopt, findings)
        }
        Some(ObservedFile::File {
            digest,
            raw_digest,
            meta,
        }) => {
            let what = if r.kind == Kind::File && *raw_digest == r.raw_digest {
                format!(
                    "mode/owner differ (host {:04o} {}:{}, desired {:04o} {}:{})",
                    meta.mode, meta.owner, meta.group, r.meta.mode, r.meta.owner, r.meta.group
                )
            } else {
                "content differs".to_string()
            };
            differing_file_action(r, digest, &what, last_digest, adopt, findings)
        }
    }
}

/// The host's file has the desired material: adopt it when asked, leave a pre-existing one
/// alone, note formatting-only differences of a managed one.
fn matching_file_action(
    r: &Resource,
    raw_digest: &str,
    last_digest: &Option<String>,
    adopt: bool,
    findings: &mut Vec<Finding>,
) -> (Action, Cause, String) {
    match last_digest {
        None if adopt => (
            Action::Adopt,
            Cause::Adoption,
            format!(
                "{} exists and matches the desired state; core-ops takes it over",
                r.path.display()
            ),
        ),
        None => (
            Action::NoOp,
            Cause::Unchanged,
            format!(
                "{} matches the desired state but existed before core-ops (not adopted): core-ops will not remove it",
                r.path.display()
            ),
        ),
        Some(_) if raw_digest != r.raw_digest && r.kind.is_ini() => {
            findings.push(Finding {
                kind: "runtime_variance".into(),
                id: r.id.clone(),
                reason: "file on the host differs only in formatting, comments, whitespace or key order; normalized content is identical".into(),
            });
            (
                Action::NoOp,
                Cause::RuntimeVariance,
                "only non-material differences (formatting, comments, key order)".into(),
            )
        }
        Some(_) => (
            Action::NoOp,
            Cause::Unchanged,
            "desired, applied and observed agree".into(),
        ),
    }
}

/// The host's file differs from the desired state (`what` says how): a desired change, a
/// hand edit to repair, an unmanaged file to adopt or refuse.
fn differing_file_action(
    r: &Resource,
    digest: &str,
    what: &str,
    last_digest: &Option<String>,
    adopt: bool,
    findings: &mut Vec<Finding>,
) -> (Action, Cause, String) {
    match last_digest {
        None if adopt => (
            Action::Adopt,
            Cause::Adoption,
            format!(
                "{} exists and is not managed by core-ops ({what}); core-ops takes it over and writes the desired content",
                r.path.display()
            ),
        ),
        None => (
            Action::Blocked,
            Cause::UnmanagedConflict,
            format!(
                "{} exists, is not managed by core-ops and differs from the desired state ({what}); remove it, or adopt it (adopt: true in service.yaml, or --adopt {})",
                r.path.display(),
                r.path.display()
            ),
        ),
        Some(l) if l == digest => (
            Action::Update,
            Cause::DesiredChange,
            format!("changed in the desired state ({what})"),
        ),
        Some(l) => {
            findings.push(drift_finding(
                &r.id,
                format!("host no longer matches what was applied ({what})"),
            ));
            if *l == r.digest {
                (
                    Action::Update,
                    Cause::Drift,
                    format!("edited on the host ({what}); repair"),
                )
            } else {
                (
                    Action::Update,
                    Cause::DesiredChange,
                    format!("changed in the desired state and edited on the host ({what})"),
                )
            }
        }
    }
}

/// Compute the plan: each step below decides one thing, in this order, over one draft.
pub fn plan(input: PlanInput<'_>) -> Plan {
    let mut d = Draft {
        actions: BTreeMap::new(),
        findings: input.findings.clone(),
        warnings: input.warnings.clone(),
    };
    let unit_states = known_unit_states(&input, &mut d);
    for r in input.desired.resources.values() {
        let a = desired_action(&input, r, &mut d.findings);
        d.actions.insert(r.id.clone(), a);
    }
    template_instance_changes(&input, &mut d);
    if let Some(states) = unit_states {
        unit_drift_actions(&input, states, &mut d);
    }
    foreign_dropin_findings(&input, &mut d);
    drift_policy_and_mountpoints(&input, &mut d);
    restarts_of_changes(&input, unit_states, &mut d);
    let removed_deps = removals(&input, &mut d);
    let (ordered, summary) = ordered_actions(&input, &removed_deps, &mut d);
    let mut findings = d.findings;
    findings.sort_by(|a, b| (&a.id, &a.kind, &a.reason).cmp(&(&b.id, &b.kind, &b.reason)));
    let desired = input.desired;
    let mut plan = Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        kind: "CoreOpsPlan".into(),
        core_ops: Provenance::current(),
        host: desired.host.clone(),
        repo: input.repo.to_string(),
        base: Base {
            desired_revision: desired.revision.commit.clone(),
            requested_ref: desired.revision.requested_ref.clone(),
            last_applied_revision: input.last_applied.map(|l| l.revision.clone()),
            observed_digest: observed_digest(input.observed, unit_states),
        },
        summary,
        actions: ordered,
        findings,
        warnings: d.warnings,
        checksum: String::new(),
    };
    plan.checksum = checksum(&plan);
    plan
}

/// The plan being built: actions by id (ordered at the end), findings, warnings.
struct Draft {
    actions: BTreeMap<String, PlannedAction>,
    findings: Vec<Finding>,
    warnings: Vec<String>,
}

impl Draft {
    fn drift(&mut self, id: &str, reason: String) {
        self.findings.push(drift_finding(id, reason));
    }
}

fn drift_finding(id: &str, reason: String) -> Finding {
    Finding {
        kind: "drift".into(),
        id: id.to_string(),
        reason,
    }
}

/// Unit states when systemd could be asked; otherwise a warning that only files were compared.
fn known_unit_states<'a>(
    input: &PlanInput<'a>,
    d: &mut Draft,
) -> Option<&'a BTreeMap<String, UnitStatus>> {
    match input.units {
        UnitObservation::Known(m) => Some(m),
        UnitObservation::Unknown { reason } => {
            d.warnings.push(format!(
                "unit state unknown ({reason}); only files were compared"
            ));
            None
        }
    }
}

/// The action for one desired resource from its three sides, before unit state is looked at.
fn desired_action(
    input: &PlanInput<'_>,
    r: &Resource,
    findings: &mut Vec<Finding>,
) -> PlannedAction {
    let observed = input.observed.get(&r.id);
    let last_digest = input.owned.get(&r.id).map(|a| a.digest.clone());
    let sides = Sides {
        desired: Some(r.digest.clone()),
        last_applied: last_digest.clone(),
        observed: Some(observed_label(observed)),
    };
    if r.kind == Kind::Runtime {
        // a runtime has its own transaction and start-up recovery: no interrupted-apply
        // override, no unmanaged conflict (its directory is core-ops' own state)
        let desired = input.desired;
        let (action, cause, reason) = runtimes::plan_action(
            r,
            crate::render::runtimes::name_of(&r.id).and_then(|n| desired.runtimes.by_name.get(n)),
            &desired.runtimes.policy,
            observed,
            last_digest.as_deref(),
        );
        if cause == Cause::Drift {
            findings.push(drift_finding(&r.id, reason.clone()));
        }
        return planned(r, (action, cause, reason), sides);
    }
    let adopt = r.adopt || input.adopt.contains(&r.path);
    let decided = file_action(r, observed, &last_digest, adopt, findings);
    let decided = overridden_by_checks(input, r, decided);
    planned(r, mounts_are_replaced(r, decided), sides)
}

/// An interrupted run's object is re-applied; an object the Quadlet generator or systemd
/// rejects is blocked, whatever its files say.
fn overridden_by_checks(
    input: &PlanInput<'_>,
    r: &Resource,
    (action, cause, reason): (Action, Cause, String),
) -> (Action, Cause, String) {
    if let Some(problem) = r.secret.as_ref().and_then(|s| s.problem.as_ref()) {
        return (Action::Blocked, Cause::MissingPrerequisite, problem.clone());
    }
    if let Some(msg) = input.invalid_units.get(&r.id) {
        return (
            Action::Blocked,
            Cause::InvalidUnit,
            format!("systemd rejects it: {msg}"),
        );
    }
    if let Some(msg) = input.invalid_quadlet.get(&r.id) {
        return (
            Action::Blocked,
            Cause::InvalidQuadlet,
            format!("the Quadlet generator rejects it: {msg}"),
        );
    }
    if action == Action::NoOp && input.interrupted.contains(&r.id) {
        return (
            Action::Update,
            Cause::InterruptedApply,
            "a previous run was interrupted while changing it; re-apply".to_string(),
        );
    }
    (action, cause, reason)
}

/// A started mount or automount that changes is stopped, rewritten and started: `replace`.
fn mounts_are_replaced(
    r: &Resource,
    (action, cause, reason): (Action, Cause, String),
) -> (Action, Cause, String) {
    let mount = matches!(r.kind, Kind::Mount | Kind::Automount);
    let action = if action == Action::Update && mount && r.unit.as_ref().is_some_and(|u| u.start) {
        Action::Replace
    } else {
        action
    };
    if action == Action::Replace && mount {
        return (
            action,
            cause,
            format!("{reason}; mounts are stopped, rewritten and started"),
        );
    }
    (action, cause, reason)
}

/// The planned action of a desired resource (order and dependencies are set at the end).
fn planned(
    r: &Resource,
    (action, cause, reason): (Action, Cause, String),
    sides: Sides,
) -> PlannedAction {
    let unit = if r.kind == Kind::Runtime {
        None
    } else {
        r.unit.as_ref()
    };
    PlannedAction {
        order: 0,
        id: r.id.clone(),
        kind: r.kind,
        action,
        cause,
        reason,
        path: Some(r.path.display().to_string()),
        unit: unit.map(|u| u.name.clone()),
        enable: unit.map(|u| u.enable),
        start: unit.map(|u| u.start),
        instances: unit.map(|u| u.instances.clone()).unwrap_or_default(),
        restarts: if r.kind == Kind::Runtime {
            Vec::new()
        } else {
            r.restarts.clone()
        },
        depends_on: Vec::new(),
        digests: sides,
        secret: r.secret.as_ref().map(|s| s.view.clone()),
    }
}

/// A template whose instance set changed: the new instances are enabled and started, the
/// dropped ones stopped and disabled (apply compares with what it owns).
fn template_instance_changes(input: &PlanInput<'_>, d: &mut Draft) {
    for r in input.desired.resources.values() {
        let (Some(u), Some(o)) = (&r.unit, input.owned.get(&r.id)) else {
            continue;
        };
        let a = d.actions.get_mut(&r.id).expect("inserted above");
        if a.action == Action::NoOp
            && crate::model::unit_file::is_template(&u.name)
            && o.instances != u.instances
        {
            a.action = Action::Recover;
            a.cause = Cause::DesiredChange;
            a.reason = format!(
                "template instances changed: [{}] (were [{}])",
                u.instances.join(", "),
                o.instances.join(", ")
            );
        }
    }
}

/// Unit runtime drift on objects whose files are unchanged.
fn unit_drift_actions(input: &PlanInput<'_>, states: &BTreeMap<String, UnitStatus>, d: &mut Draft) {
    for r in input.desired.resources.values() {
        if r.unit.is_none() || d.actions[&r.id].action != Action::NoOp {
            continue;
        }
        let runs_to_completion = input
            .owned
            .get(&r.id)
            .is_some_and(|o| o.runs_to_completion && o.digest == r.digest);
        if let Some((action, why)) = unit_drift(r, states, runs_to_completion) {
            d.drift(&r.id, why.clone());
            let a = d.actions.get_mut(&r.id).expect("inserted above");
            a.action = action;
            a.cause = Cause::Drift;
            a.reason = why;
        }
    }
}

/// Hand-made drop-ins change managed units: drift core-ops reports (it never removes a file
/// it did not write).
fn foreign_dropin_findings(input: &PlanInput<'_>, d: &mut Draft) {
    for (id, paths) in &input.foreign_dropins {
        for p in paths {
            d.drift(
                id,
                format!(
                    "drop-in {} on the host is not in the desired state and changes this unit; remove it by hand or add it to the repository",
                    p.display()
                ),
            );
        }
    }
}

/// Objects marked `drift: report` are reported, not repaired; mountpoints that must exist
/// already are checked before anything is touched.
fn drift_policy_and_mountpoints(input: &PlanInput<'_>, d: &mut Draft) {
    for r in input.desired.resources.values() {
        let a = d.actions.get_mut(&r.id).expect("inserted above");
        if a.cause == Cause::Drift
            && r.drift == crate::model::yaml::DriftPolicy::Report
            && a.action != Action::NoOp
        {
            a.reason = format!(
                "drift reported only (drift: report): {} (would {})",
                a.reason,
                a.action.as_str()
            );
            a.action = Action::NoOp;
        }
        if let Some(m) = r.unit.as_ref().and_then(|u| u.mount.as_ref())
            && !m.create_mountpoint
            && matches!(a.action, Action::Create | Action::Update | Action::Replace)
            && !Path::new(&m.where_).is_dir()
        {
            a.action = Action::Blocked;
            a.cause = Cause::MissingPrerequisite;
            a.reason = format!(
                "mountpoint missing and CreateMountpoint=false: {}",
                m.where_
            );
        }
    }
}

/// Restarts caused by changed drop-ins and host files: of a managed unit that is kept
/// started, of a unit core-ops does not own, or none (with a warning) when systemd has no
/// such unit.
fn restarts_of_changes(
    input: &PlanInput<'_>,
    unit_states: Option<&BTreeMap<String, UnitStatus>>,
    d: &mut Draft,
) {
    let mut restart_causes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in d.actions.values() {
        if matches!(a.action, Action::Create | Action::Update | Action::Replace) {
            for u in &a.restarts {
                restart_causes
                    .entry(u.clone())
                    .or_default()
                    .insert(a.id.clone());
            }
        }
    }
    for (unit, causes) in &restart_causes {
        let list = causes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        match input.desired.unit_resource(unit) {
            Some(r) => restart_managed(r, &list, d),
            None => match unit_states.and_then(|m| m.get(unit)) {
                Some(st) if st.load_state != "loaded" => {
                    for cause in causes {
                        d.findings.push(Finding {
                            kind: "warning".into(),
                            id: cause.clone(),
                            reason: format!(
                                "{unit} is not restarted: systemd has no loaded unit of that name (LoadState={}); the change takes effect when it is installed",
                                st.load_state
                            ),
                        });
                    }
                }
                _ => restart_unmanaged(unit, causes, &list, d),
            },
        }
    }
}

/// A managed unit whose drop-in or file changed: restarted when it is kept started.
fn restart_managed(r: &Resource, list: &str, d: &mut Draft) {
    let a = d.actions.get_mut(&r.id).expect("inserted");
    let started = r.unit.as_ref().is_some_and(|u| u.start);
    if a.action == Action::NoOp && started {
        a.action = Action::Restart;
        a.cause = Cause::DependencyChange;
        a.reason = format!("restart: {list} changed");
    } else if a.action == Action::NoOp {
        a.reason = format!("{list} changed; not kept started, picked up at next activation");
    }
}

/// A drop-in for a unit core-ops does not own (e.g. a distro unit): restart that unit.
fn restart_unmanaged(unit: &str, causes: &BTreeSet<String>, list: &str, d: &mut Draft) {
    let id = format!("unit:{unit}");
    d.actions.insert(
        id.clone(),
        PlannedAction {
            order: 0,
            id,
            kind: Kind::Unit,
            action: Action::Restart,
            cause: Cause::DependencyChange,
            reason: format!("restart: {list} changed (unit not managed by core-ops)"),
            path: None,
            unit: Some(unit.to_string()),
            enable: None,
            start: None,
            instances: Vec::new(),
            restarts: Vec::new(),
            depends_on: causes.iter().cloned().collect(),
            digests: Sides::default(),
            secret: None,
        },
    );
}

/// Removals: owned by core-ops (written by any earlier run, converged or not), no longer
/// desired. Returns each removed object's dependencies (removed in reverse order).
fn removals(input: &PlanInput<'_>, d: &mut Draft) -> BTreeMap<String, BTreeSet<String>> {
    let mut removed_deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, rec) in input.owned {
        if input.desired.resources.contains_key(id) {
            continue;
        }
        let observed = input.observed.get(id);
        let (action, cause, reason) = removal_action(rec, observed);
        removed_deps.insert(id.clone(), rec.depends_on.iter().cloned().collect());
        d.actions.insert(
            id.clone(),
            PlannedAction {
                order: 0,
                id: id.clone(),
                kind: rec.kind,
                action,
                cause,
                reason,
                path: Some(rec.path.display().to_string()),
                unit: rec.unit.clone(),
                enable: rec.unit.as_ref().map(|_| false),
                start: rec.unit.as_ref().map(|_| false),
                instances: rec.instances.clone(),
                restarts: Vec::new(),
                depends_on: Vec::new(),
                digests: Sides {
                    desired: None,
                    last_applied: Some(rec.digest.clone()),
                    observed: Some(if rec.secret {
                        secret_observed_label(observed)
                    } else {
                        observed_label(observed)
                    }),
                },
                secret: None,
            },
        );
    }
    removed_deps
}

/// What to do with an owned object that left the desired state, from what the host has.
fn removal_action(
    rec: &AppliedResource,
    observed: Option<&ObservedFile>,
) -> (Action, Cause, String) {
    match observed {
        None | Some(ObservedFile::Absent) => (
            Action::NoOp,
            Cause::Drift,
            "left the desired state and is already gone from the host".to_string(),
        ),
        Some(ObservedFile::Other { what }) => (
            Action::Blocked,
            Cause::UnmanagedConflict,
            format!(
                "left the desired state but {} is now a {what}; core-ops will not remove it",
                rec.path.display()
            ),
        ),
        Some(ObservedFile::File { .. }) => (
            Action::Delete,
            Cause::DesiredChange,
            if rec.started {
                "left the desired state: stop, disable, remove".to_string()
            } else {
                "left the desired state: remove".to_string()
            },
        ),
    }
}

/// Order: forward actions by dependencies, removals after them in reverse order; numbers
/// the actions and counts them per action.
fn ordered_actions(
    input: &PlanInput<'_>,
    removed_deps: &BTreeMap<String, BTreeSet<String>>,
    d: &mut Draft,
) -> (Vec<PlannedAction>, BTreeMap<String, usize>) {
    let mut deps = desired_dependencies(input.desired);
    for a in d.actions.values() {
        if a.path.is_none() {
            deps.entry(a.id.clone())
                .or_default()
                .extend(a.depends_on.iter().cloned());
        }
    }
    let forward: BTreeSet<String> = d
        .actions
        .keys()
        .filter(|id| !removed_deps.contains_key(*id))
        .cloned()
        .collect();
    let (mut order, cycle) = crate::model::order::topo_order(&forward, &deps);
    if !cycle.is_empty() {
        d.warnings.push(format!(
            "dependency cycle among {}; they are ordered by id",
            cycle.join(", ")
        ));
    }
    let removed: BTreeSet<String> = removed_deps.keys().cloned().collect();
    let (mut rev_order, rcycle) = crate::model::order::topo_order(&removed, removed_deps);
    if !rcycle.is_empty() {
        d.warnings.push(format!(
            "dependency cycle among removed {}; they are ordered by id",
            rcycle.join(", ")
        ));
    }
    rev_order.reverse();
    order.extend(rev_order);

    let mut ordered = Vec::with_capacity(order.len());
    let mut summary: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in order.iter().enumerate() {
        let mut a = d.actions.remove(id).expect("every id ordered once");
        a.order = i + 1;
        a.depends_on = deps
            .get(id)
            .or_else(|| removed_deps.get(id))
            .map(|s| s.iter().filter(|x| *x != id).cloned().collect())
            .unwrap_or_default();
        a.depends_on.sort();
        *summary.entry(a.action.as_str().to_string()).or_default() += 1;
        ordered.push(a);
    }
    (ordered, summary)
}

/// Digest over the observed files and the unit facts the plan acted on.
pub fn observed_digest(
    observed: &BTreeMap<String, ObservedFile>,
    units: Option<&BTreeMap<String, UnitStatus>>,
) -> String {
    let files: BTreeMap<&str, String> = observed
        .iter()
        .map(|(id, o)| (id.as_str(), observed_label(Some(o))))
        .collect();
    let units: BTreeMap<&str, String> = units
        .map(|m| {
            m.iter()
                .map(|(n, s)| {
                    (
                        n.as_str(),
                        format!("{}/{}/{}", s.load_state, s.active_state, s.unit_file_state),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let doc = serde_json::json!({ "files": files, "units": units });
    sha256_hex(doc.to_string().as_bytes())
}

/// The canonical JSON of a plan without its checksum: keys sorted, no whitespace.
///
/// Why not through a `serde_json::Value` (which sorts any keys): that tree is ~6,000 nodes
/// for 200 services, built and dropped on every run. The plan's types declare their fields
/// in sorted order instead (see `canonical_form_is_sorted_json` in the tests).
fn canonical_without_checksum(plan: &Plan) -> Vec<u8> {
    if plan.checksum.is_empty() {
        return serde_json::to_vec(plan).expect("plan serializes");
    }
    let unchecked = Plan {
        checksum: String::new(),
        ..plan.clone()
    };
    serde_json::to_vec(&unchecked).expect("plan serializes")
}

/// `sha256:<hex>` over the canonical JSON without the `checksum` field.
pub fn checksum(plan: &Plan) -> String {
    sha256_hex(&canonical_without_checksum(plan))
}

/// The bytes of a plan as written by `plan --out` and `--json`: canonical (sorted keys),
/// pretty, newline-terminated.
pub fn to_json_bytes(plan: &Plan) -> Vec<u8> {
    // through a Value: its maps are sorted, whatever the struct's field order
    let v = serde_json::to_value(plan).expect("plan serializes");
    crate::fsutil::json_bytes(&v)
}

/// Read a saved plan and check its embedded checksum.
pub fn from_json_bytes(bytes: &[u8], file: &str) -> crate::error::Result<Plan> {
    let plan: Plan = serde_json::from_slice(bytes)
        .map_err(|e| crate::error::Error::Config(format!("{file}: not a core-ops plan: {e}")))?;
    if plan.schema_version != PLAN_SCHEMA_VERSION {
        return Err(crate::error::Error::Config(format!(
            "{file}: plan schema_version {} is not supported (this build: {PLAN_SCHEMA_VERSION})",
            plan.schema_version
        )));
    }
    let expected = checksum(&plan);
    if expected != plan.checksum {
        return Err(crate::error::Error::StalePlan(format!(
            "{file}: checksum mismatch (recorded {}, computed {expected}); the plan was modified",
            plan.checksum
        )));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests;
