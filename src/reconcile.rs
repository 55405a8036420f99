//! One reconcile run, as `apply` and `agent` perform it: plan, refuse a quarantined
//! revision, apply, and on a failed verification roll back to the last converged revision
//! (host policy `auto_rollback`, default on), then count the attempt so a revision that keeps
//! failing (or keeps drifting back) is quarantined instead of re-applied on every tick.
//!
//! Why a module of its own: apply executes one plan; deciding *which* plan to execute next
//! (forward, rollback, nothing) is policy, and it must be the same for the CLI and the timer.

use std::collections::BTreeSet;
use std::time::Instant;

use serde::Serialize;

use crate::apply::{self, ApplyKind, ApplyOptions, ApplyResult, RollbackSummary};
use crate::config::Paths;
use crate::error::{Error, Result};
use crate::model::applied::LastApplied;
use crate::model::time::now_rfc3339;
use crate::pipeline::{self, Planned, ResolvedTarget};
use crate::plan::{Action, Cause, Plan};
use crate::record::control::{self, Quarantine};
use crate::record::status::HistoryEntry;
use crate::systemd::Systemd;

/// Which revision to go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The target's requested ref.
    Forward,
    /// A revision from the applied history (sha, sha prefix, the ref it was applied as, or
    /// any ref of the repository that names an applied commit).
    RollbackTo(String),
}

/// How a run ended (exit codes are derived from this in `cli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Nothing to change (agent only skips the apply; apply still verifies).
    NoChanges,
    /// Applied and converged.
    Converged,
    /// Applied, did not converge, nothing rolled back.
    NotConverged,
    /// Applied, did not converge, the last converged revision was re-applied.
    RolledBack,
    /// The desired revision is quarantined; nothing was done.
    Quarantined,
    /// `--rollback-plan-only`: the plan was printed, nothing changed.
    PlanOnly,
}

/// What the run did.
#[derive(Debug)]
pub struct RunReport {
    /// How it ended.
    pub outcome: RunOutcome,
    /// The plan of the (forward or rollback) revision.
    pub planned: Planned,
    /// The apply result, if an apply ran (with rollback and quarantine filled in).
    pub result: Option<ApplyResult>,
    /// Active quarantine (new or pre-existing), if any.
    pub quarantine: Option<Quarantine>,
    /// A quarantine this run lifted because the desired revision moved on.
    pub lifted: Option<Quarantine>,
}

/// Find a revision in the applied history: full sha, sha prefix (4+ hex) or the ref it was
/// applied as (most recent first).
pub fn find_in_history<'a>(history: &'a [HistoryEntry], rev: &str) -> Option<&'a HistoryEntry> {
    history.iter().rev().find(|h| {
        h.revision == rev
            || (rev.len() >= 4
                && rev.chars().all(|c| c.is_ascii_hexdigit())
                && h.revision.starts_with(rev))
            || h.requested_ref == rev
    })
}

/// Objects a result says failed, for attempt counting.
fn failing_objects(r: &ApplyResult) -> BTreeSet<String> {
    r.diagnostics.iter().map(|d| d.id.clone()).collect()
}

/// Objects a plan repairs as drift.
fn drift_repairs(plan: &Plan) -> BTreeSet<String> {
    plan.actions
        .iter()
        .filter(|a| a.cause == Cause::Drift && a.action != Action::NoOp)
        .map(|a| a.id.clone())
        .collect()
}

/// What to run.
pub struct Request<'a> {
    /// Repository, ref and host.
    pub target: &'a ResolvedTarget,
    /// Forward or rollback.
    pub mode: Mode,
    /// Apply knobs.
    pub opts: ApplyOptions,
    /// The timer's run: skip the apply when nothing changed.
    pub agent: bool,
    /// `--rollback-plan-only`: stop after the plan.
    pub plan_only: bool,
    /// May refuse the plan before anything is touched (a stale saved plan).
    pub check: &'a dyn Fn(&Plan) -> Result<()>,
    /// The receipt chain's verdict while it is still being checked beside the plan: awaited
    /// once the plan is made, before anything else, and then the run's
    /// `opts.verified_chain` (a broken chain refuses the run, whatever the plan said).
    pub pending_chain: Option<PendingChain<'a>>,
}

/// A receipt chain check running on another thread, awaited by [`run`].
///
/// Why: every live receipt is read and hashed (up to 1,000 before they are sealed into an
/// archive); the plan reads and changes nothing the chain check does, so the two need not
/// wait for each other.
pub type PendingChain<'a> = Box<dyn FnOnce() -> Result<crate::record::receipts::ChainReport> + 'a>;

/// Run once: plan the revision the mode asks for, then decide what to do with it, in this
/// order: refuse a stale or blocked plan, stop at the plan (`--rollback-plan-only`), refuse a
/// quarantined revision, skip an agent run with nothing to change, else apply (and judge it).
pub fn run(paths: &Paths, mut req: Request<'_>, systemd: &dyn Systemd) -> Result<RunReport> {
    let planned = control::load(&paths.state_dir).and_then(|ctl| {
        let planned = match &req.mode {
            Mode::Forward => plan_forward(paths, &req, systemd)?,
            Mode::RollbackTo(rev) => plan_rollback(paths, req.target, rev, systemd)?,
        };
        Ok((ctl, planned))
    });
    // the chain's verdict first: a broken chain is the reason a run is refused
    if let Some(pending) = req.pending_chain.take() {
        req.opts.verified_chain = Some(pending()?);
    }
    let (mut ctl, planned) = planned?;
    (req.check)(&planned.plan)?;
    if planned.plan.is_blocked() && !req.plan_only && req.opts.record_status {
        record_blocked_run(paths, req.target, &planned);
    }
    if req.plan_only {
        return Ok(RunReport {
            outcome: RunOutcome::PlanOnly,
            planned,
            result: None,
            quarantine: ctl.quarantine.clone(),
            lifted: None,
        });
    }
    let forward = req.mode == Mode::Forward;
    let desired = planned.desired.revision.commit.clone();
    let lifted = if forward {
        ctl.lift_if_superseded(&desired)
    } else {
        None
    };
    if forward && let Some(q) = ctl.quarantined(&desired).cloned() {
        return refuse_quarantined(paths, planned, q, lifted);
    }
    if lifted.is_some() {
        control::save(&paths.state_dir, &ctl)?;
    }
    if req.agent && nothing_to_apply(&planned) {
        return skip_unchanged(paths, &req, &mut ctl, planned, lifted);
    }
    apply_and_judge(paths, &req, systemd, &mut ctl, planned, lifted)
}

/// Forward: the plan of the target's requested ref. A revision refused before anything was
/// touched is still the host's last run: status says so (nothing else changes, no receipt:
/// no transition).
fn plan_forward(paths: &Paths, req: &Request<'_>, systemd: &dyn Systemd) -> Result<Planned> {
    pipeline::plan_revision(paths, req.target, &systemd).inspect_err(|e| {
        if req.opts.record_status && !req.plan_only {
            let outcome = match e {
                Error::Fetch(_) => "fetch_failed",
                _ => "refused",
            };
            record_refused_run(paths, req.target, outcome, &e.to_string(), None);
        }
    })
}

/// Rollback: the plan of a revision from the applied history, which must still be in the
/// repository.
fn plan_rollback(
    paths: &Paths,
    target: &ResolvedTarget,
    rev: &str,
    systemd: &dyn Systemd,
) -> Result<Planned> {
    let (status, why) = pipeline::load_status(paths);
    let history = status.map(|s| s.history).unwrap_or_default();
    let entry = find_in_history(&history, rev).or_else(|| {
        // any other name of the repository for an applied commit (a tag made after the
        // fact, annotated or not; another branch)
        let commit = pipeline::resolve_commit(paths, &target.repo, rev)?;
        find_in_history(&history, &commit)
    });
    let Some(entry) = entry else {
        let known: Vec<String> = history
            .iter()
            .map(|h| {
                format!(
                    "{} ({})",
                    &h.revision[..8.min(h.revision.len())],
                    h.requested_ref
                )
            })
            .collect();
        return Err(Error::Config(format!(
            "'{rev}' is not an applied revision of this host; applied history: {}{}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            },
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        )));
    };
    pipeline::plan_pinned(
        paths,
        target,
        &entry.revision,
        &entry.requested_ref,
        &systemd,
    )
    .map_err(|e| match e {
        Error::Source(m) => Error::Source(format!(
            "applied revision {} is no longer in the repository: {m}",
            entry.revision
        )),
        other => other,
    })
}

/// A plan with blocked actions is refused (apply says why); status records the refusal.
fn record_blocked_run(paths: &Paths, target: &ResolvedTarget, planned: &Planned) {
    let blocked: Vec<String> = planned
        .plan
        .actions
        .iter()
        .filter(|a| a.action == Action::Blocked)
        .map(|a| format!("{}: {}", a.id, a.reason))
        .collect();
    record_refused_run(
        paths,
        target,
        "refused",
        &format!("the plan has blocked actions: {}", blocked.join("; ")),
        Some(planned),
    );
}

/// Quarantine: the desired revision kept failing (or drifting back); nothing is done.
fn refuse_quarantined(
    paths: &Paths,
    planned: Planned,
    q: Quarantine,
    lifted: Option<Quarantine>,
) -> Result<RunReport> {
    tracing::warn!(revision = %q.revision, reason = %q.reason, "desired revision is quarantined; not applying");
    record_quarantined_run(&planned, paths, &q)?;
    Ok(RunReport {
        outcome: RunOutcome::Quarantined,
        planned,
        result: None,
        quarantine: Some(q),
        lifted,
    })
}

/// Whether an agent run may skip the apply: nothing changes and the revision is the one
/// already applied. A new desired revision whose objects already match is still a
/// transition: apply records it and advances last_applied, so only the same revision is
/// skipped.
fn nothing_to_apply(planned: &Planned) -> bool {
    let same_revision = planned
        .status
        .as_ref()
        .and_then(|s| s.last_applied.as_ref())
        .is_some_and(|l| l.revision == planned.desired.revision.commit);
    !planned.plan.has_changes() && same_revision
}

/// The agent's quiet tick: a clean attempt, and drift it only reports shown in status.
fn skip_unchanged(
    paths: &Paths,
    req: &Request<'_>,
    ctl: &mut control::Control,
    planned: Planned,
    lifted: Option<Quarantine>,
) -> Result<RunReport> {
    // a quiet host is not rewritten on every tick: control state only when it changes
    if !ctl.attempts.is_empty() {
        ctl.record_clean();
        control::save(&paths.state_dir, ctl)?;
    }
    if req.opts.record_status {
        record_no_change_run(&planned, paths)?;
    }
    Ok(RunReport {
        outcome: RunOutcome::NoChanges,
        planned,
        result: None,
        quarantine: None,
        lifted,
    })
}

/// Apply the plan (forward or the requested rollback), count the attempt, and roll back
/// automatically when a forward apply did not converge.
fn apply_and_judge(
    paths: &Paths,
    req: &Request<'_>,
    systemd: &dyn Systemd,
    ctl: &mut control::Control,
    planned: Planned,
    lifted: Option<Quarantine>,
) -> Result<RunReport> {
    let kind = match req.mode {
        Mode::Forward => ApplyKind::Forward,
        Mode::RollbackTo(_) => ApplyKind::Rollback,
    };
    let before = planned.status.as_ref().and_then(|s| s.last_applied.clone());
    let opts = ApplyOptions {
        kind,
        ..req.opts.clone()
    };
    let mut result = apply::apply(&planned, systemd, paths, &opts)?;
    let failed_at = Instant::now();
    let now = now_rfc3339();
    let mut outcome = if result.outcome.is_converged() {
        RunOutcome::Converged
    } else {
        RunOutcome::NotConverged
    };
    let deferred = only_deferred(&result);
    let forward = req.mode == Mode::Forward;
    let mut new_quarantine = None;
    if forward && !deferred {
        let ctl_before = ctl.clone();
        new_quarantine = count_attempt(ctl, &planned, &result, &now);
        // written only when it changed: a quiet host is not rewritten by every run
        if *ctl != ctl_before {
            control::save(&paths.state_dir, ctl)?;
        }
    }
    let rollback_to = before
        .as_ref()
        .filter(|p| p.revision != planned.desired.revision.commit);
    if !result.outcome.is_converged()
        && !deferred
        && forward
        && planned.desired.host_yaml.policy.auto_rollback
        && req.opts.record_status
        && let Some(prev) = rollback_to
    {
        let rb = auto_rollback(paths, req, systemd, &planned, &result, prev, failed_at)?;
        if rb.outcome.is_converged() {
            outcome = RunOutcome::RolledBack;
        }
        result.rollback = Some(rb);
    }
    result.quarantine = new_quarantine.clone();
    Ok(RunReport {
        outcome,
        planned,
        result: Some(result),
        quarantine: new_quarantine,
        lifted,
    })
}

/// What failed is only runtimes deferred by policy (maintenance window, free disk): "not
/// now" is no failed attempt and no reason to roll back; the next run asks again.
fn only_deferred(result: &ApplyResult) -> bool {
    !result.outcome.is_converged()
        && !result.deferred.is_empty()
        && result
            .diagnostics
            .iter()
            .all(|d| result.deferred.contains(&d.id))
}

/// Count the forward attempt: a failure, or drift that had to be repaired (oscillation),
/// counts towards quarantine; a clean converged run resets the count. Returns a quarantine
/// this attempt started.
fn count_attempt(
    ctl: &mut control::Control,
    planned: &Planned,
    result: &ApplyResult,
    now: &str,
) -> Option<Quarantine> {
    let rev = &planned.desired.revision;
    let max_attempts = planned.desired.host_yaml.policy.max_attempts;
    if !result.outcome.is_converged() {
        return ctl.record(
            &rev.commit,
            &rev.requested_ref,
            result.outcome.as_str(),
            failing_objects(result),
            now,
            max_attempts,
        );
    }
    let repaired = drift_repairs(&planned.plan);
    if repaired.is_empty() {
        ctl.record_clean();
        return None;
    }
    ctl.record(
        &rev.commit,
        &rev.requested_ref,
        "repaired_drift",
        repaired,
        now,
        max_attempts,
    )
}

/// Auto-rollback: health-gated return to the last converged revision after a forward apply
/// that did not converge.
fn auto_rollback(
    paths: &Paths,
    req: &Request<'_>,
    systemd: &dyn Systemd,
    planned: &Planned,
    result: &ApplyResult,
    prev: &LastApplied,
    failed_at: Instant,
) -> Result<RollbackSummary> {
    let desired = &planned.desired.revision.commit;
    let reason = format!(
        "verification of {} failed: {}",
        &desired[..8.min(desired.len())],
        result
            .diagnostics
            .iter()
            .map(|d| format!("{}: {}", d.id, d.problem))
            .collect::<Vec<_>>()
            .join("; ")
    );
    tracing::warn!(to = %prev.revision, "{reason}; rolling back");
    let back = pipeline::plan_pinned(
        paths,
        req.target,
        &prev.revision,
        &prev.requested_ref,
        &systemd,
    )?;
    let opts = ApplyOptions {
        kind: ApplyKind::AutoRollback {
            reason: reason.clone(),
        },
        ..req.opts.clone()
    };
    let rb = apply::apply(&back, systemd, paths, &opts)?;
    Ok(RollbackSummary {
        to_revision: prev.revision.clone(),
        outcome: rb.outcome,
        reason,
        duration_ms: failed_at.elapsed().as_millis() as u64,
        receipt: rb.receipt.clone(),
        results_path: rb.results_path.clone(),
    })
}

/// A tick with nothing to change is still the host's last run: `last_run` says `no_changes`,
/// with the drift it only reports, in one small write beside status.json
/// (`status::save_last_run`). The whole snapshot is rewritten only when what is reported
/// changed (status.json's own `last_run` then shows it too).
fn record_no_change_run(planned: &Planned, paths: &Paths) -> Result<()> {
    use crate::record::status::{self, RunRecord};
    let Some(mut snap) = planned.status.clone() else {
        return Ok(());
    };
    let drift = planned.plan.reported_drift();
    let shown: Vec<String> = snap
        .last_run
        .as_ref()
        .map(|r| {
            r.diagnostics
                .iter()
                .filter(|d| d.starts_with("drift reported"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let now = now_rfc3339();
    let run = RunRecord {
        started_at: now.clone(),
        finished_at: now,
        outcome: crate::model::names::serde_name(&RunOutcome::NoChanges).into(),
        desired_revision: planned.desired.revision.commit.clone(),
        requested_ref: planned.desired.revision.requested_ref.clone(),
        intent_checksum: planned.plan.checksum.clone(),
        diagnostics: drift.clone(),
    };
    if drift == shown {
        return status::save_last_run(&paths.state_file, &run);
    }
    snap.last_run = Some(run);
    status::save(&paths.state_file, &snap)
}

/// A run refused at plan (an input error, a blocked action; `fetch_failed`: the remote could
/// not be fetched) is still the host's last run: status.json's `last_run` says so and why, so
/// `status` never keeps showing an older run's outcome. Best effort: failing to record it
/// must not hide the refusal itself.
fn record_refused_run(
    paths: &Paths,
    target: &ResolvedTarget,
    outcome: &str,
    why: &str,
    planned: Option<&Planned>,
) {
    use crate::record::status::{self, RunRecord, StatusSnapshot};
    let mut snap = match status::load(&paths.state_file) {
        Ok(s) => s,
        Err(status::Absent::Missing { .. }) => StatusSnapshot::new(&target.host),
        // a snapshot that cannot be read is not overwritten here
        Err(_) => return,
    };
    let now = now_rfc3339();
    snap.last_run = Some(RunRecord {
        started_at: now.clone(),
        finished_at: now,
        outcome: outcome.into(),
        desired_revision: planned
            .map(|p| p.desired.revision.commit.clone())
            .unwrap_or_default(),
        requested_ref: target.requested_ref.clone(),
        intent_checksum: planned.map(|p| p.plan.checksum.clone()).unwrap_or_default(),
        diagnostics: vec![why.to_string()],
    });
    if let Err(e) = status::save(&paths.state_file, &snap) {
        tracing::warn!(
            "cannot record the refused run in {}: {e}",
            paths.state_file.display()
        );
    }
}

/// A run refused by the quarantine is still the host's last run: status.json says so (outcome
/// `quarantined`, the reason as diagnostic), so `status` and metrics readers do not keep
/// showing the previous run's outcome. Nothing else changes; there is no receipt (no
/// transition happened).
fn record_quarantined_run(planned: &Planned, paths: &Paths, q: &Quarantine) -> Result<()> {
    use crate::record::status::{self, RunRecord};
    let Some(mut snap) = planned.status.clone() else {
        return Ok(());
    };
    let now = now_rfc3339();
    snap.last_run = Some(RunRecord {
        started_at: now.clone(),
        finished_at: now,
        outcome: crate::model::names::serde_name(&RunOutcome::Quarantined).into(),
        desired_revision: planned.desired.revision.commit.clone(),
        requested_ref: planned.desired.revision.requested_ref.clone(),
        intent_checksum: planned.plan.checksum.clone(),
        diagnostics: vec![format!(
            "quarantined since {} ({} after {} attempts; objects: {}); run core-ops resume after review",
            q.since,
            q.reason,
            q.attempts,
            q.objects.join(", ")
        )],
    });
    status::save(&paths.state_file, &snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(rev: &str, r: &str) -> HistoryEntry {
        HistoryEntry {
            revision: rev.into(),
            requested_ref: r.into(),
            applied_at: "t".into(),
        }
    }

    #[test]
    fn history_lookup_by_sha_prefix_and_ref() {
        let hist = vec![
            h("aaaa1111", "v1"),
            h("bbbb2222", "v2"),
            h("cccc3333", "v1"),
        ];
        assert_eq!(find_in_history(&hist, "bbbb").unwrap().revision, "bbbb2222");
        assert_eq!(find_in_history(&hist, "v1").unwrap().revision, "cccc3333");
        assert_eq!(
            find_in_history(&hist, "aaaa1111").unwrap().revision,
            "aaaa1111"
        );
        assert!(find_in_history(&hist, "v3").is_none());
        assert!(find_in_history(&hist, "aa").is_none());
    }

    #[test]
    fn recorded_run_outcomes_are_the_json_names() {
        // status.json's last_run.outcome uses the same words as the run's JSON
        assert_eq!(
            crate::model::names::serde_name(&RunOutcome::NoChanges),
            "no_changes"
        );
        assert_eq!(
            crate::model::names::serde_name(&RunOutcome::Quarantined),
            "quarantined"
        );
    }
}
