//! Verify: after apply, re-observe the host and judge convergence. Health means readiness
//! (docs/design.md section 9): a started unit must be loaded and active (a oneshot without
//! `RemainAfterExit=` must have succeeded), and must not be restarting during the settle
//! window (NRestarts and InvocationID stable), not merely "not failed".

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::normalize::Kind;
use crate::observe::{ObservedFile, observe_file};
use crate::render::DesiredState;
use crate::systemd::{Systemd, UnitStatus};

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

/// Re-observe files and units. `settle` > 0 reads unit state twice, that far apart, and
/// flags units whose restart counter or invocation changed in between.
///
/// `preread` is unit state already read (by the plan) when nothing was changed.
/// `started_ok` are units whose start or restart job of this run ended `done`, and units
/// known to run to completion (see `AppliedResource::runs_to_completion`): such a unit found
/// inactive with `Result=success` finished what it was asked (it ran and exited, or its
/// conditions skipped it) even when systemd has since unloaded it and forgot how.
/// `reported_only` are objects whose drift policy is `report` and that the plan left alone:
/// they are not judged (their drift is a finding, not a failure).
pub fn verify(
    desired: &DesiredState,
    removed: &[Removed],
    systemd: &dyn Systemd,
    settle: Duration,
    reported_only: &BTreeSet<String>,
    preread: Option<&BTreeMap<String, UnitStatus>>,
    started_ok: &BTreeSet<String>,
) -> Result<Verification, crate::systemd::SystemdError> {
    let mut diagnostics = Vec::new();
    for r in desired
        .resources
        .values()
        .filter(|r| !reported_only.contains(&r.id))
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
        match observe_file(r.kind, &r.path) {
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
    for r in removed {
        if !matches!(observe_file(Kind::File, &r.path), ObservedFile::Absent) {
            diagnostics.push(Diagnostic {
                id: r.id.clone(),
                unit: None,
                problem: format!("{} still exists after removal", r.path.display()),
            });
        }
    }

    let mut names: Vec<String> = desired
        .resources
        .values()
        .filter_map(|r| r.unit.as_ref())
        .flat_map(|u| u.runtime_units())
        .collect();
    names.extend(removed.iter().filter_map(|r| r.unit.clone()));
    names.sort();
    names.dedup();
    let states: BTreeMap<String, UnitStatus> = if let Some(pre) = preread {
        // nothing was changed: the plan's own observation is the verification
        names
            .iter()
            .filter_map(|n| pre.get(n).map(|s| (n.clone(), s.clone())))
            .collect()
    } else if settle.is_zero() {
        let first = systemd.unit_statuses(&names)?;
        first.into_iter().map(|s| (s.name.clone(), s)).collect()
    } else {
        let first = systemd.unit_statuses(&names)?;
        std::thread::sleep(settle);
        let second = systemd.unit_statuses(&names)?;
        for (a, b) in first.iter().zip(&second) {
            let Some(r) = desired.runtime_unit_resource(&a.name) else {
                continue;
            };
            let started = r.unit.as_ref().is_some_and(|u| u.start);
            if a.active_state == "active"
                && started
                && !reported_only.contains(&r.id)
                && (a.n_restarts != b.n_restarts || a.invocation_id != b.invocation_id)
            {
                diagnostics.push(Diagnostic {
                    id: r.id.clone(),
                    unit: Some(a.name.clone()),
                    problem: format!(
                        "unit is restarting (NRestarts {} -> {}) during the {} ms settle window",
                        a.n_restarts.unwrap_or(0),
                        b.n_restarts.unwrap_or(0),
                        settle.as_millis()
                    ),
                });
            }
        }
        second.into_iter().map(|s| (s.name.clone(), s)).collect()
    };
    let states = if preread.is_some() {
        states
    } else {
        until_settled(systemd, states, started_ok)?
    };

    for r in desired
        .resources
        .values()
        .filter(|r| !reported_only.contains(&r.id))
    {
        let Some(u) = &r.unit else { continue };
        let mut problems = Vec::new();
        for st in u.runtime_units().iter().filter_map(|n| states.get(n)) {
            problems.extend(unit_problems(u, st, started_ok.contains(&st.name)));
        }
        for (unit, p) in problems {
            diagnostics.push(Diagnostic {
                id: r.id.clone(),
                unit: Some(unit),
                problem: p,
            });
        }
    }
    for r in removed {
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
    diagnostics.sort_by(|a, b| (&a.id, &a.problem).cmp(&(&b.id, &b.problem)));
    diagnostics.dedup();
    Ok(Verification {
        diagnostics,
        units: states,
    })
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
        }
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
