//! The `runtimes` phase of apply (after `enable`, before `start`): every planned runtime
//! action in plan order (dependencies first) as one transaction each; and the start-up
//! recovery that runs before planning.

pub mod history;
pub mod transaction;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::error::Result;
use crate::fsutil;
use crate::model::normalize::Kind;
use crate::plan::{Action, PlannedAction};
use crate::render::DesiredState;
use crate::systemd::Systemd;
use crate::verify::Diagnostic;

use crate::record::runtime_receipt::InstallState;
use crate::runtime::Layout;
use transaction::{Engine, InstallRequest, Outcome};

/// What the phase did.
#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    /// One per runtime that did not end installed (or removed).
    pub diagnostics: Vec<Diagnostic>,
    /// Units restarted successfully by transactions (the start phase skips restarting them
    /// again).
    pub restarted: BTreeSet<String>,
    /// Transactions that ran, in order.
    pub outcomes: Vec<Outcome>,
    /// Runtime ids deferred by policy (this run, or still deferred since the last receipt).
    pub deferred: Vec<String>,
    /// Runtimes removed.
    pub removed: Vec<String>,
}

impl PhaseResult {
    /// One line for the phase report.
    pub fn detail(&self) -> String {
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for o in &self.outcomes {
            *counts.entry(o.state.as_str()).or_default() += 1;
        }
        let mut parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        if !self.removed.is_empty() {
            parts.push(format!("{} removed", self.removed.len()));
        }
        if parts.is_empty() {
            "nothing to do".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Run the runtime actions among `changed` (plan order).
pub fn run(
    changed: &[&PlannedAction],
    desired: &DesiredState,
    systemd: &dyn Systemd,
    state_dir: &Path,
    job_timeout: Duration,
    settle: Duration,
) -> Result<PhaseResult> {
    let engine = Engine {
        state_dir,
        systemd,
        job_timeout,
        settle,
    };
    let mut res = PhaseResult::default();
    for a in changed.iter().filter(|a| a.kind == Kind::Runtime) {
        let Some(name) = crate::render::runtimes::name_of(&a.id) else {
            continue;
        };
        match a.action {
            Action::Create | Action::Update | Action::Replace | Action::Recover => {
                let Some(rt) = desired.runtimes.by_name.get(name) else {
                    continue;
                };
                if let Some(still) = still_deferred(state_dir, desired, rt) {
                    res.deferred.push(a.id.clone());
                    res.diagnostics.push(Diagnostic {
                        id: a.id.clone(),
                        unit: None,
                        problem: still,
                    });
                    continue;
                }
                let dependencies = check_dependencies(state_dir, desired, &rt.manifest.depends);
                let out = engine.install(
                    rt,
                    &InstallRequest {
                        host: &desired.host,
                        revision: &desired.revision.commit,
                        policy: &desired.runtimes.policy,
                        oneshot_units: crate::render::runtimes::oneshot_units(desired, rt),
                        dependencies,
                    },
                )?;
                res.restarted.extend(out.restarted.iter().cloned());
                if out.state == InstallState::Deferred {
                    res.deferred.push(a.id.clone());
                }
                if out.state != InstallState::Installed {
                    res.diagnostics.push(Diagnostic {
                        id: a.id.clone(),
                        unit: None,
                        problem: format!(
                            "runtime {} {}: {}: {} (receipt {})",
                            out.name,
                            out.version,
                            out.state.as_str(),
                            out.reason.clone().unwrap_or_default(),
                            out.receipt
                        ),
                    });
                }
                res.outcomes.push(out);
            }
            Action::Delete => {
                let dir =
                    crate::runtime::runtime_dir(Path::new(a.path.as_deref().unwrap_or_default()));
                if dir.starts_with(crate::runtime::runtimes_dir(state_dir)) {
                    tracing::info!(
                        runtime = name,
                        "removing a runtime that left the desired state"
                    );
                    fsutil::remove_dir_all_synced(&dir)?;
                    transaction::gc_store(state_dir)?;
                    res.removed.push(name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(res)
}

/// A runtime whose last receipt already deferred this version, and which policy defers
/// again now: the state has not changed, so no new transaction (and no receipts) is made;
/// the diagnostic names the receipt that recorded the deferral.
fn still_deferred(
    state_dir: &Path,
    desired: &DesiredState,
    rt: &crate::runtime::manifest::ResolvedRuntime,
) -> Option<String> {
    let m = &rt.manifest;
    let last = Layout::new(state_dir, &m.name).load_record().last_receipt?;
    if last.version != m.version || last.install_state != InstallState::Deferred.as_str() {
        return None;
    }
    let inputs = crate::runtime::policy::Inputs::now(state_dir, m);
    match crate::runtime::policy::decide(&desired.runtimes.policy, m, &inputs) {
        crate::runtime::policy::Decision::Defer { reason } => Some(format!(
            "runtime {} {}: still deferred: {reason} (recorded in receipt {})",
            m.name, m.version, last.id
        )),
        _ => None,
    }
}

/// `Err(why)` unless every dependency is current at its desired version.
fn check_dependencies(
    state_dir: &Path,
    desired: &DesiredState,
    depends: &[String],
) -> std::result::Result<(), String> {
    let mut missing = Vec::new();
    for d in depends {
        let want = desired
            .runtimes
            .by_name
            .get(d)
            .map(|r| r.manifest.version.clone())
            .unwrap_or_default();
        let have = Layout::new(state_dir, d).current_version();
        if have.as_deref() != Some(want.as_str()) {
            missing.push(format!(
                "{d} {want} (current: {})",
                have.unwrap_or_else(|| "none".into())
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "dependencies are not installed: {}",
            missing.join(", ")
        ))
    }
}

/// Whether [`recover`] has anything to do: a runtime with an interrupted transaction or a
/// staging directory left behind.
///
/// Why: recovery changes the host and must wait for the receipt chain's verdict; a run with
/// nothing to recover need not wait for it before planning.
pub fn recovery_pending(state_dir: &Path) -> bool {
    crate::runtime::known_runtimes(state_dir)
        .iter()
        .any(|name| {
            let layout = Layout::new(state_dir, name);
            layout.transaction().exists() || transaction::has_leftovers(&layout)
        })
}

/// Start-up recovery of transactions a killed run left (before planning).
pub fn recover(
    state_dir: &Path,
    systemd: &dyn Systemd,
    job_timeout: Duration,
    settle: Duration,
) -> Result<Vec<Outcome>> {
    Engine {
        state_dir,
        systemd,
        job_timeout,
        settle,
    }
    .recover()
}

#[cfg(test)]
mod tests;
