//! Verify: after apply, re-observe the host and judge convergence. Health means readiness
//! (docs/design.md section 9): a started unit must be loaded and active (a oneshot without
//! `RemainAfterExit=` must have succeeded), and must not be restarting during its settle
//! window (NRestarts and InvocationID stable), not merely "not failed".
//!
//! Verification waits only where a unit can still fail (docs/design.md section 10): a service with a running
//! main process and no readiness protocol (`simple`, `exec`, `forking`, `idle`) is watched
//! from its own `ActiveEnterTimestampMonotonic` for its window (`settle:` of its service,
//! else of the host, else `--settle-ms`); a oneshot, a notify/dbus service that reached
//! active, timers, sockets, paths, mounts and automounts are decided by their job result and
//! one read of their state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::normalize::Kind;
use crate::observe::{ObservedFile, observe_file, observe_resource};
use crate::render::DesiredState;
use crate::systemd::{SettleRequest, Settled, Systemd, UnitStatus};

/// How an apply ended. Distinct terminal states: a rollback is never reported as success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Everything matches the desired state.
    Converged,
    /// Everything matches; non-material differences were seen and tolerated.
    ConvergedWithToleratedVariance,
    /// Some objects converged, others did not.
    PartiallyApplied,
    /// Nothing of the change took, or a phase failed before objects could be judged.
    Failed,
}

impl Outcome {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        crate::model::names::serde_name(&self)
    }

    /// Whether `last_applied` may advance.
    pub fn is_converged(self) -> bool {
        matches!(
            self,
            Outcome::Converged | Outcome::ConvergedWithToleratedVariance
        )
    }
}

/// What is wrong with one object after apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Resource id.
    pub id: String,
    /// Unit concerned.
    pub unit: Option<String>,
    /// What was found.
    pub problem: String,
}

/// An object that was removed and must stay gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Resource id.
    pub id: String,
    /// Path that must not exist.
    pub path: PathBuf,
    /// Unit that must not be active.
    pub unit: Option<String>,
}

/// Result of verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Per-object problems (empty when converged).
    pub diagnostics: Vec<Diagnostic>,
    /// Unit states as last read.
    pub units: BTreeMap<String, UnitStatus>,
    /// What the settle step saw of each unit this run started.
    pub settled: Vec<Settled>,
}

/// What is wrong with one runtime unit of a desired unit role, as (unit, problem): it must be
/// loaded whatever its role (with systemd's reason when not), running, or finished what it was asked to do (a
/// oneshot that exited successfully, a start skipped by its conditions), and enabled when
/// it should be.
fn unit_problems(
    u: &crate::render::UnitRole,
    st: &UnitStatus,
    started_ok: bool,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    // every managed unit must load, also one that is neither started nor enabled (pulled in
    // by others, or a timer's service): systemd refusing it is a failed object, not converged
    if st.load_state != "loaded" {
        let why = if st.load_error.is_empty() {
            String::new()
        } else {
            format!(": {}", st.load_error)
        };
        problems.push(format!(
            "unit is not loaded (LoadState={}){why}",
            st.load_state
        ));
    } else if u.start {
        let healthy = (st.active_state == "active" && st.sub_state != "auto-restart")
            || st.finished_cleanly(u.exits_when_done())
            || (started_ok && st.active_state == "inactive" && st.result == "success");
        if !healthy {
            let result = if st.result.is_empty() || st.result == "success" {
                String::new()
            } else {
                format!(", Result={}", st.result)
            };
            problems.push(format!(
                "unit is {}/{}{result}",
                st.active_state, st.sub_state
            ));
        }
    }
    if u.enable
        && !matches!(
            st.unit_file_state.as_str(),
            "enabled"
                | "enabled-runtime"
                | "static"
                | "generated"
                | "alias"
                | "indirect"
                | "linked"
        )
    {
        problems.push(format!(
            "unit is not enabled (UnitFileState={})",
            st.unit_file_state
        ));
    }
    problems.into_iter().map(|p| (st.name.clone(), p)).collect()
}

/// How long a unit this run started may stay in a transition (finishing a run-to-completion
/// container, say) before it is judged as it is.
const TRANSITION_WAIT: Duration = Duration::from_secs(60);

/// Units this run started that are still on their way (`deactivating` after running to
/// completion, `activating`) are read again until they arrive, so they are judged by where
/// they end, not by a moment in between. Bounded by [`TRANSITION_WAIT`].
fn until_settled(
    systemd: &dyn Systemd,
    mut states: BTreeMap<String, UnitStatus>,
    started_ok: &BTreeSet<String>,
) -> Result<BTreeMap<String, UnitStatus>, crate::systemd::SystemdError> {
    let deadline = std::time::Instant::now() + TRANSITION_WAIT;
    loop {
        let moving: Vec<String> = states
            .values()
            .filter(|s| started_ok.contains(&s.name))
            // a restart loop (activating/auto-restart) is judged as it is, not waited for
            .filter(|s| {
                s.active_state == "deactivating"
                    || (s.active_state == "activating" && s.sub_state != "auto-restart")
            })
            .map(|s| s.name.clone())
            .collect();
        if moving.is_empty() || std::time::Instant::now() >= deadline {
            return Ok(states);
        }
        std::thread::sleep(Duration::from_millis(200));
        for s in systemd.unit_statuses(&moving)? {
            states.insert(s.name.clone(), s);
        }
    }
}

/// What verification judges, and what it may reuse.
#[derive(Debug, Clone, Copy)]
pub struct VerifyInput<'a> {
    /// The desired state.
    pub desired: &'a DesiredState,
    /// Objects removed by this run (they must stay gone).
    pub removed: &'a [Removed],
    /// Objects whose drift policy is `report` and that the plan left alone: not judged
    /// (their drift is a finding, not a failure).
    pub reported_only: &'a BTreeSet<String>,
    /// Units whose start or restart job of this run ended `done`, and units known to run to
    /// completion (see `AppliedResource::runs_to_completion`): such a unit found inactive
    /// with `Result=success` finished what it was asked (it ran and exited, or its conditions
    /// skipped it) even when systemd has since unloaded it and forgot how.
    pub started_ok: &'a BTreeSet<String>,
    /// Units this run started, each with its settle window (empty: nothing is waited for).
    pub settle: &'a [SettleRequest],
    /// When nothing was changed: the plan's own observation of files and units, which then
    /// is the verification (no second read).
    pub preread: Option<Preread<'a>>,
    /// The plan's observation of the files and the objects this run changed: a file of an
    /// object the run left alone (its plan action a no-op) is judged by that observation,
    /// made under the same lock moments before; only what the run changed is read again.
    pub files_before: Option<FilesBefore<'a>>,
    /// The unit dir, where enablement links are read (one directory walk, no D-Bus call per
    /// unit).
    pub unit_dir: &'a Path,
}

/// The plan's observation, reused when a run changed nothing.
#[derive(Debug, Clone, Copy)]
pub struct Preread<'a> {
    /// Files by resource id.
    pub files: &'a BTreeMap<String, ObservedFile>,
    /// Unit state by unit name.
    pub units: &'a BTreeMap<String, UnitStatus>,
}

/// The plan's observation of the files, and which objects the run changed since.
///
/// Why: a change of one object of 200 need not read the other 399 files again to prove
/// they still hold what the plan found them holding (the desired content: their action was
/// a no-op); the objects the run wrote are read back.
#[derive(Debug, Clone, Copy)]
pub struct FilesBefore<'a> {
    /// Files by resource id, as the plan observed them.
    pub observed: &'a BTreeMap<String, ObservedFile>,
    /// Resource ids with an action other than a no-op.
    pub changed: &'a BTreeSet<String>,
}

/// Re-observe files and units and judge them. Units this run started are first watched
/// through their settle windows ([`Systemd::settle`]: only services with a running main
/// process and no readiness protocol are waited for), then read once; a unit that restarted
/// or failed meanwhile is flagged.
pub fn verify(
    input: &VerifyInput<'_>,
    systemd: &dyn Systemd,
) -> Result<Verification, crate::systemd::SystemdError> {
    let mut diagnostics = file_problems(input);
    let (states, settled) = match input.preread {
        // nothing was changed: the plan's own observation is the verification
        Some(pre) => (pre.units.clone(), Vec::new()),
        None => {
            let settled = systemd.settle(input.settle)?;
            let states = read_states(input, systemd, &settled)?;
            (until_settled(systemd, states, input.started_ok)?, settled)
        }
    };
    diagnostics.extend(restart_problems(input, &settled, &states));
    diagnostics.extend(unit_state_problems(input, &states));
    diagnostics.sort_by(|a, b| (&a.id, &a.problem).cmp(&(&b.id, &b.problem)));
    diagnostics.dedup();
    Ok(Verification {
        diagnostics,
        units: states,
        settled,
    })
}

/// Every desired file must hold the desired content; every removed one must be gone.
fn file_problems(input: &VerifyInput<'_>) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for r in input
        .desired
        .resources
        .values()
        .filter(|r| !input.reported_only.contains(&r.id))
    {
        if r.kind == Kind::Runtime {
            if let Some(problem) = runtime_problem(r) {
                diagnostics.push(Diagnostic {
                    id: r.id.clone(),
                    unit: None,
                    problem,
                });
            }
            continue;
        }
        let before = input
            .files_before
            .filter(|b| !b.changed.contains(&r.id))
            .and_then(|b| b.observed.get(&r.id));
        let seen = match input.preread.and_then(|p| p.files.get(&r.id)).or(before) {
            Some(o) => o.clone(),
            None => observe_resource(r),
        };
        match seen {
            ObservedFile::File { digest, .. } if digest == r.digest => {}
            other => diagnostics.push(Diagnostic {
                id: r.id.clone(),
                unit: None,
                problem: format!(
                    "{} does not hold the desired content ({})",
                    r.path.display(),
                    match other {
                        ObservedFile::Absent => "missing".to_string(),
                        ObservedFile::File { .. } => "content, mode or owner differ".to_string(),
                        ObservedFile::Other { what } => format!("a {what}"),
                    }
                ),
            }),
        }
    }
    for r in input.removed {
        if !matches!(observe_file(Kind::File, &r.path), ObservedFile::Absent) {
            diagnostics.push(Diagnostic {
                id: r.id.clone(),
                unit: None,
                problem: format!("{} still exists after removal", r.path.display()),
            });
        }
    }
    diagnostics
}

/// Unit state after the settle step, in as few calls as possible: one `ListUnitsByNames`
/// for all units, enablement from the unit dir's links; the full read (`UnitFileState` from
/// systemd, `NRestarts`, `InvocationID`) only for watched units and for units that should be
/// enabled but have no link in the unit dir (generated, linked elsewhere, or really not
/// enabled: systemd says which).
fn read_states(
    input: &VerifyInput<'_>,
    systemd: &dyn Systemd,
    settled: &[Settled],
) -> Result<BTreeMap<String, UnitStatus>, crate::systemd::SystemdError> {
    let mut names: Vec<String> = input
        .desired
        .resources
        .values()
        .filter_map(|r| r.unit.as_ref())
        .flat_map(|u| u.runtime_units())
        .collect();
    names.extend(input.removed.iter().filter_map(|r| r.unit.clone()));
    names.sort();
    names.dedup();
    let mut states: BTreeMap<String, UnitStatus> = systemd
        .unit_states_brief(&names)?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    crate::observe::enablement_from_disk(input.unit_dir, &mut states);
    let mut full: BTreeSet<String> = settled
        .iter()
        .filter(|s| s.watched || s.ended_by.is_some())
        .map(|s| s.unit.clone())
        .collect();
    for u in input
        .desired
        .resources
        .values()
        .filter_map(|r| r.unit.as_ref())
    {
        if u.enable {
            full.extend(u.runtime_units().into_iter().filter(|n| {
                states
                    .get(n)
                    .is_some_and(|s| s.load_state == "loaded" && s.unit_file_state != "enabled")
            }));
        }
    }
    let full: Vec<String> = full.into_iter().collect();
    for s in systemd.unit_statuses(&full)? {
        states.insert(s.name.clone(), s);
    }
    Ok(states)
}

/// Units watched through their settle window that restarted or failed during it: a restart
/// counter or invocation that moved, a restart before the window began, or a signal that
/// ended the window early (a unit that is `failed` now is reported by its state instead).
fn restart_problems(
    input: &VerifyInput<'_>,
    settled: &[Settled],
    states: &BTreeMap<String, UnitStatus>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let windows: BTreeMap<&str, Duration> = input
        .settle
        .iter()
        .map(|r| (r.unit.as_str(), r.window))
        .collect();
    for s in settled.iter().filter(|s| s.watched || s.ended_by.is_some()) {
        let Some(r) = input.desired.runtime_unit_resource(&s.unit) else {
            continue;
        };
        if input.reported_only.contains(&r.id) || !r.unit.as_ref().is_some_and(|u| u.start) {
            continue;
        }
        let Some(now) = states.get(&s.unit) else {
            continue;
        };
        let before = s.n_restarts.unwrap_or(0);
        let after = now.n_restarts.unwrap_or(before);
        let restarted = before > 0
            || after != before
            || (!s.invocation_id.is_empty()
                && !now.invocation_id.is_empty()
                && now.invocation_id != s.invocation_id);
        let failed_now = now.active_state != "active" || now.sub_state == "auto-restart";
        if !restarted && (s.ended_by.is_none() || failed_now) {
            continue;
        }
        let window = windows.get(s.unit.as_str()).copied().unwrap_or_default();
        let seen = s
            .ended_by
            .as_deref()
            .map(|w| format!(", {w} after {} ms", s.waited_ms))
            .unwrap_or_default();
        out.push(Diagnostic {
            id: r.id.clone(),
            unit: Some(s.unit.clone()),
            problem: format!(
                "unit is restarting (NRestarts {before} -> {after}{seen}) during its {} ms settle window",
                window.as_millis()
            ),
        });
    }
    out
}

/// Each desired unit judged by its state; each removed unit must not be running.
fn unit_state_problems(
    input: &VerifyInput<'_>,
    states: &BTreeMap<String, UnitStatus>,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for r in input
        .desired
        .resources
        .values()
        .filter(|r| !input.reported_only.contains(&r.id))
    {
        let Some(u) = &r.unit else { continue };
        for st in u.runtime_units().iter().filter_map(|n| states.get(n)) {
            for (unit, problem) in unit_problems(u, st, input.started_ok.contains(&st.name)) {
                diagnostics.push(Diagnostic {
                    id: r.id.clone(),
                    unit: Some(unit),
                    problem,
                });
            }
        }
    }
    for r in input.removed {
        let Some(u) = &r.unit else { continue };
        if let Some(st) = states.get(u)
            && matches!(
                st.active_state.as_str(),
                "active" | "activating" | "reloading"
            )
        {
            diagnostics.push(Diagnostic {
                id: r.id.clone(),
                unit: Some(u.clone()),
                problem: format!("removed unit is still {}", st.active_state),
            });
        }
    }
    diagnostics
}

/// Verify step: `None` when the runtime's `current` holds the desired version, else what is
/// wrong.
fn runtime_problem(r: &crate::render::Resource) -> Option<String> {
    match crate::observe::runtimes::observe(&r.path) {
        crate::observe::ObservedFile::File { digest, .. } if digest == r.digest => None,
        _ => {
            let layout = crate::runtime::Layout {
                dir: r
                    .path
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn role(start: bool, enable: bool) -> crate::render::UnitRole {
        crate::render::UnitRole {
            name: "helper.service".into(),
            enable,
            start,
            after: Vec::new(),
            requires_mounts_for: Vec::new(),
            mount: None,
            effective: "[Service]\nExecStart=/bin/true\n".into(),
            instances: Vec::new(),
            settle: None,
        }
    }

    /// The files of objects the run changed are read back; the others are judged by the
    /// plan's observation (a no-op there means the plan found the desired content).
    #[test]
    fn only_what_the_run_changed_is_read_again() {
        let s = crate::config::scratch();
        let desired = crate::render::render_texts(
            &[
                ("hosts/h/host.yaml", "services: [web]\n"),
                ("services/web/a.service", "[Service]\nExecStart=/bin/true\n"),
                ("services/web/b.service", "[Service]\nExecStart=/bin/true\n"),
            ],
            "h",
            &s.paths,
        );
        // as the plan found them: both as desired
        let observed: BTreeMap<String, ObservedFile> = desired
            .resources
            .values()
            .map(|r| {
                let o = ObservedFile::File {
                    digest: r.digest.clone(),
                    raw_digest: r.raw_digest.clone(),
                    meta: r.meta.clone(),
                };
                (r.id.clone(), o)
            })
            .collect();
        // on disk now: neither (a was to be written by the run, b left alone)
        let changed: BTreeSet<String> = ["unit:a.service".to_string()].into();
        let none = BTreeSet::new();
        let input = VerifyInput {
            desired: &desired,
            removed: &[],
            reported_only: &none,
            started_ok: &none,
            settle: &[],
            preread: None,
            files_before: Some(FilesBefore {
                observed: &observed,
                changed: &changed,
            }),
            unit_dir: &s.paths.unit_dir,
        };
        let ids: Vec<String> = file_problems(&input).into_iter().map(|d| d.id).collect();
        assert_eq!(ids, vec!["unit:a.service".to_string()]);
        let without = VerifyInput {
            files_before: None,
            ..input
        };
        let ids: Vec<String> = file_problems(&without).into_iter().map(|d| d.id).collect();
        assert_eq!(ids, vec!["unit:a.service", "unit:b.service"]);
    }

    #[test]
    fn a_unit_systemd_cannot_load_fails_whatever_its_role() {
        let bad = UnitStatus {
            name: "helper.service".into(),
            load_state: "bad-setting".into(),
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            load_error: "org.freedesktop.systemd1.BadUnitSetting: Unit helper.service has a bad unit file setting.".into(),
            ..UnitStatus::default()
        };
        // neither started nor enabled (pulled in by others): still a failed object
        for (start, enable) in [(false, false), (true, false), (false, true), (true, true)] {
            let p = unit_problems(&role(start, enable), &bad, false);
            assert!(
                p.iter().any(|(u, m)| u == "helper.service"
                    && m.contains("unit is not loaded (LoadState=bad-setting)")
                    && m.contains("has a bad unit file setting")),
                "start={start} enable={enable}: {p:?}"
            );
        }
        let loaded = UnitStatus {
            load_state: "loaded".into(),
            load_error: String::new(),
            unit_file_state: "static".into(),
            ..bad
        };
        assert!(unit_problems(&role(false, false), &loaded, false).is_empty());
    }
}
