//! Apply: execute a plan through systemd in phases, verify convergence, record the outcome.
//!
//! Phases (each visible in the results document with its duration):
//! `stop` (removed units, mounts being replaced) -> `disable` -> `prepare` (mountpoints) ->
//! `write` (atomic writes and removals; ownership is recorded in the ledger first) ->
//! `enable` (links only) -> `reload` (ONE `Reload()`, only if unit files changed; it loads the
//! units together with the wants that reference them) -> `runtimes` (one install transaction
//! per runtime action, see `crate::runtime`) -> `start` (jobs, each waited for through
//! `JobRemoved`; a unit systemd could not load is never started) -> `verify`.
//! `last_applied` advances only when verification says converged.

pub mod runtimes;

mod ownership;
mod phases;
mod record;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Paths;
use crate::error::{Error, Result};
use crate::pipeline::Planned;
use crate::plan::Action;
use crate::provenance::Provenance;
use crate::record::receipts;
use crate::systemd::{CallCounts, JobResult, Systemd};
use crate::verify::{Diagnostic, Outcome};

/// Why an apply runs; it names the receipt transition and the recorded outcome.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ApplyKind {
    /// Towards the desired revision (or repairing drift).
    #[default]
    Forward,
    /// Operator-requested `--rollback-to`.
    Rollback,
    /// Health-gated automatic rollback to the last converged revision; the reason says
    /// what failed.
    AutoRollback {
        /// What failed in the forward apply.
        reason: String,
    },
}

/// Knobs of one apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How long to wait for each job's `JobRemoved`.
    pub job_timeout: Duration,
    /// Settle window for health (restart loops) after jobs ran.
    pub settle: Duration,
    /// `false` with `--force-no-state`: status.json is not touched.
    pub record_status: bool,
    /// Repository as shown (for status.json).
    pub repo: String,
    /// Forward, rollback or automatic rollback.
    pub kind: ApplyKind,
    /// What the state dir keeps (results, history, live receipts).
    pub retention: crate::record::retention::Retention,
    /// The receipt chain as the caller verified it under this run's lock (the CLI does,
    /// before anything else); `None`: [`apply`] verifies it itself.
    ///
    /// Why: verifying re-hashes every live receipt; once per run is enough, and appends
    /// since (a recovered runtime's receipt) go through the checked append path.
    pub verified_chain: Option<receipts::ChainReport>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            job_timeout: Duration::from_secs(90),
            settle: Duration::from_millis(1500),
            record_status: true,
            repo: String::new(),
            kind: ApplyKind::Forward,
            retention: Default::default(),
            verified_chain: None,
        }
    }
}

/// Timing and detail of one phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Phase name.
    pub name: String,
    /// Wall time in ms.
    pub duration_ms: u64,
    /// What it did (counts).
    pub detail: String,
}

/// The results document: outcome of executing one plan, tied to it by `intent_checksum`.
/// Intent (the plan) and outcome are never mixed in one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// Schema version (1).
    pub schema_version: u32,
    /// `CoreOpsApplyResult`.
    pub kind: String,
    /// Checksum of the plan executed.
    pub intent_checksum: String,
    /// Build.
    pub core_ops: Provenance,
    /// Host.
    pub host: String,
    /// Desired revision.
    pub desired_revision: String,
    /// Requested ref.
    pub requested_ref: String,
    /// `last_applied` before this run.
    pub from_revision: Option<String>,
    /// Outcome.
    pub outcome: Outcome,
    /// Whether `last_applied` advanced.
    pub last_applied_advanced: bool,
    /// Start time.
    pub started_at: String,
    /// End time.
    pub finished_at: String,
    /// Phases in order.
    pub phases: Vec<PhaseReport>,
    /// Every job and how it ended.
    pub jobs: Vec<JobResult>,
    /// What verification's settle step saw of each unit this run started: watched through a
    /// window (and what ended it), or decided by its job result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settled: Vec<crate::systemd::Settled>,
    /// Per-object problems.
    pub diagnostics: Vec<Diagnostic>,
    /// systemd calls made (reloads, jobs, enablement).
    pub calls: CallCounts,
    /// Count of objects changed.
    pub changed_objects: usize,
    /// Id of the receipt written (none for a no-op run).
    pub receipt: Option<String>,
    /// Path of this document.
    pub results_path: Option<String>,
    /// The automatic rollback that followed a failed apply (set by the reconcile run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackSummary>,
    /// The quarantine this run caused or ran into (set by the reconcile run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<crate::record::control::Quarantine>,
    /// Runtimes whose install policy deferred (outside the maintenance windows, free disk
    /// short): "not now", so the reconcile run counts no failed attempt and does not roll
    /// back for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<String>,
    /// The earlier run this one completes: it was killed mid-apply (its in-flight journal
    /// was found), so its transition is recorded by this run's receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completes_interrupted: Option<String>,
}

/// What an automatic rollback did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackSummary {
    /// Revision rolled back to (the last converged one).
    pub to_revision: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// Why it ran.
    pub reason: String,
    /// ms from the failed verification to the old revision verified again.
    pub duration_ms: u64,
    /// Its receipt.
    pub receipt: Option<String>,
    /// Its results document.
    pub results_path: Option<String>,
}

/// Execute the plan of `planned` against systemd, verify and record: the phases in order,
/// each deciding one thing (see the module documentation).
pub fn apply(
    planned: &Planned,
    systemd: &dyn Systemd,
    paths: &Paths,
    opts: &ApplyOptions,
) -> Result<ApplyResult> {
    refuse_blocked(planned)?;
    // a broken, truncated or forked receipt chain is never extended: refused before the
    // host is touched
    let chain = match &opts.verified_chain {
        Some(chain) => receipts::require_intact(chain.clone())?,
        None => receipts::check_before_run(&paths.state_dir)?,
    };
    let mut run = phases::Run::begin(planned, systemd, paths, opts)?;
    run.stop()?;
    run.disable()?;
    run.prepare();
    run.write()?;
    run.enable()?;
    run.reload()?;
    run.runtimes()?;
    run.start()?;
    let verification = run.verify()?;
    record::finish(run, verification, chain)
}

/// A plan with a blocked action is never applied, not even in part.
fn refuse_blocked(planned: &Planned) -> Result<()> {
    let plan = &planned.plan;
    if !plan.is_blocked() {
        return Ok(());
    }
    let blocked: Vec<String> = plan
        .actions
        .iter()
        .filter(|a| a.action == Action::Blocked)
        .map(|a| format!("{}: {}", a.id, a.reason))
        .collect();
    Err(Error::BlockedPlan(format!(
        "the plan has blocked actions; nothing was changed:\n  {}",
        blocked.join("\n  ")
    )))
}

#[cfg(test)]
mod tests;
