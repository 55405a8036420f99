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
use crate::pipeline::{self, Planned, ResolvedTarget};
use crate::plan::{Action, Cause, Plan};
use crate::record::control::{self, Quarantine};
use crate::record::status::HistoryEntry;
use crate::record::time::now_rfc3339;
use crate::systemd::Systemd;

/// Which revision to go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The target's requested ref.
    Forward,
    /// A revision from the applied history (sha, sha prefix or the ref it was applied as).
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
}

/// Run once.
pub fn run(paths: &Paths, req: Request<'_>, systemd: &dyn Systemd) -> Result<RunReport> {
    let Request {
        target,
        mode,
        opts,
        agent,
        plan_only,
        check,
    } = req;
    let mode = &mode;
    let opts = &opts;
    let mut ctl = control::load(&paths.state_dir)?;
    let planned = match mode {
        Mode::Forward => match pipeline::plan_revision(paths, target, &systemd) {
            Ok(p) => p,
            Err(e) => {
                // a revision refused before anything was touched is still the host's last
                // run: status says so (nothing else changes, no receipt: no transition)
                if opts.record_status && !plan_only {
                    record_refused_run(paths, target, &e.to_string(), None);
                }
                return Err(e);
            }
        },
        Mode::RollbackTo(rev) => {
            let (status, why) = pipeline::load_status(paths);
            let history = status.map(|s| s.history).unwrap_or_default();
            let Some(entry) = find_in_history(&history, rev) else {
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
            })?
        }
    };
    check(&planned.plan)?;
    let desired_rev = planned.desired.revision.clone();
    if planned.plan.is_blocked() && !plan_only && opts.record_status {
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
            &format!("the plan has blocked actions: {}", blocked.join("; ")),
            Some(&planned),
        );
    }
    if plan_only {
        return Ok(RunReport {
            outcome: RunOutcome::PlanOnly,
            planned,
            result: None,
            quarantine: ctl.quarantine.clone(),
            lifted: None,
        });
    }

    let lifted = if *mode == Mode::Forward {
        ctl.lift_if_superseded(&desired_rev.commit)
    } else {
        None
    };
    if *mode == Mode::Forward
        && let Some(q) = ctl.quarantined(&desired_rev.commit)
    {
        let q = q.clone();
        tracing::warn!(revision = %q.revision, reason = %q.reason, "desired revision is quarantined; not applying");
        record_quarantined_run(&planned, paths, &q)?;
        return Ok(RunReport {
            outcome: RunOutcome::Quarantined,
            planned,
            result: None,
            quarantine: Some(q),
            lifted,
        });
    }
    if lifted.is_some() {
        control::save(&paths.state_dir, &ctl)?;
    }
    // a new desired revision whose objects already match is still a transition: apply
    // records it and advances last_applied, so only the same revision is skipped
    let same_revision = planned
        .status
        .as_ref()
        .and_then(|s| s.last_applied.as_ref())
        .is_some_and(|l| l.revision == desired_rev.commit);
    if agent && !planned.plan.has_changes() && same_revision {
        // a quiet host is not rewritten on every tick: control state only when it changes
        if !ctl.attempts.is_empty() {
            ctl.record_clean();
            control::save(&paths.state_dir, &ctl)?;
        }
        if opts.record_status {
            record_no_change_run(&planned, paths)?;
        }
        return Ok(RunReport {
            outcome: RunOutcome::NoChanges,
            planned,
            result: None,
            quarantine: None,
            lifted,
        });
    }

    let kind = match mode {
        Mode::Forward => ApplyKind::Forward,
        Mode::RollbackTo(_) => ApplyKind::Rollback,
    };
    let before = planned.status.as_ref().and_then(|s| s.last_applied.clone());
    let policy = planned.desired.host_yaml.policy.clone();
    let mut result = apply::apply(
        &planned,
        systemd,
        paths,
        &ApplyOptions {
            kind,
            ..opts.clone()
        },
    )?;
    let failed_at = Instant::now();
    let now = now_rfc3339();
    let mut outcome = if result.outcome.is_converged() {
        RunOutcome::Converged
    } else {
        RunOutcome::NotConverged
    };
    // what failed is only runtimes deferred by policy (maintenance window, free disk): "not
    // now" is no failed attempt and no reason to roll back; the next run asks again
    let only_deferred = !result.outcome.is_converged()
        && !result.deferred.is_empty()
        && result
            .diagnostics
            .iter()
            .all(|d| result.deferred.contains(&d.id));

    // count the attempt: failures, and drift that had to be repaired (oscillation)
    let mut new_quarantine = None;
    let ctl_before = ctl.clone();
    if *mode == Mode::Forward && !only_deferred {
        if !result.outcome.is_converged() {
            new_quarantine = ctl.record(
                &desired_rev.commit,
                &desired_rev.requested_ref,
                result.outcome.as_str(),
                failing_objects(&result),
                &now,
                policy.max_attempts,
            );
        } else {
            let repaired = drift_repairs(&planned.plan);
            if repaired.is_empty() {
                ctl.record_clean();
            } else {
                new_quarantine = ctl.record(
                    &desired_rev.commit,
                    &desired_rev.requested_ref,
                    "repaired_drift",
                    repaired,
                    &now,
                    policy.max_attempts,
                );
            }
        }
        // written only when it changed: a quiet host is not rewritten by every run
        if ctl != ctl_before {
            control::save(&paths.state_dir, &ctl)?;
        }
    }

    // health-gated automatic rollback to the last converged revision
    if !result.outcome.is_converged()
        && !only_deferred
        && *mode == Mode::Forward
        && policy.auto_rollback
        && opts.record_status
        && let Some(prev) = before.as_ref().filter(|p| p.revision != desired_rev.commit)
    {
        let reason = format!(
            "verification of {} failed: {}",
            &desired_rev.commit[..8.min(desired_rev.commit.len())],
            result
                .diagnostics
                .iter()
                .map(|d| format!("{}: {}", d.id, d.problem))
                .collect::<Vec<_>>()
                .join("; ")
        );
        tracing::warn!(to = %prev.revision, "{reason}; rolling back");
        let back =
            pipeline::plan_pinned(paths, target, &prev.revision, &prev.requested_ref, &systemd)?;
        let rb = apply::apply(
            &back,
            systemd,
            paths,
            &ApplyOptions {
                kind: ApplyKind::AutoRollback {
                    reason: reason.clone(),
                },
                ..opts.clone()
            },
        )?;
        let duration_ms = failed_at.elapsed().as_millis() as u64;
        if rb.outcome.is_converged() {
            outcome = RunOutcome::RolledBack;
        }
        result.rollback = Some(RollbackSummary {
            to_revision: prev.revision.clone(),
            outcome: rb.outcome,
            reason,
            duration_ms,
            receipt: rb.receipt.clone(),
            results_path: rb.results_path.clone(),
        });
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
        outcome: "no_changes".into(),
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

/// A run refused at plan (an input error, a blocked action) is still the host's last run:
/// status.json's `last_run` says `refused` and why, so `status` never keeps showing an older
/// run's outcome. Best effort: failing to record it must not hide the refusal itself.
fn record_refused_run(
    paths: &Paths,
    target: &ResolvedTarget,
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
        outcome: "refused".into(),
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
        outcome: "quarantined".into(),
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
}
