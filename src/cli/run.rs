//! `apply` and `agent`: what the CLI does around a reconcile run (the lock, the receipt chain,
//! start-up recovery, a saved plan, metrics) and the view it prints.
//!
//! Why apart from the other commands: these two change the host; everything they share is
//! here, and the reconcile policy itself stays in [`crate::reconcile`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::args::{ApplyTuning, Cli, TargetArgs};
use super::exit::Outcome;
use super::views::{AppliedView, PlanView, RunView, SCHEMA_VERSION};
use super::{emit, target_opts};
use crate::apply::{ApplyKind, ApplyOptions};
use crate::config::Paths;
use crate::error::Error;
use crate::lock::StateLock;
use crate::pipeline::{self, ResolvedTarget};
use crate::plan;
use crate::reconcile::{self, RunOutcome, RunReport};
use crate::record::{control, metrics, receipts, status};
use crate::systemd::dbus::DbusSystemd;

/// The flags of `apply`.
///
/// Why a struct: the command function takes what was parsed as one value.
#[derive(Debug, Clone, Copy)]
pub struct ApplyArgs<'a> {
    /// Where desired state comes from.
    pub target: &'a TargetArgs,
    /// `--plan FILE`: execute a saved plan while its base still holds.
    pub plan_file: Option<&'a Path>,
    /// `--force-no-state`: apply without reading or writing `status.json`.
    pub force_no_state: bool,
    /// `--rollback-to REV`.
    pub rollback_to: Option<&'a str>,
    /// `--rollback-plan-only`.
    pub rollback_plan_only: bool,
    /// `--adopt FILE`s.
    pub adopt: &'a [PathBuf],
    /// Timeouts and retention.
    pub tuning: &'a ApplyTuning,
}

/// `core-ops apply`.
pub fn apply(cli: &Cli, paths: &Paths, a: ApplyArgs<'_>) -> Result<Outcome, Error> {
    let _lock = StateLock::acquire(&paths.state_dir)?;
    let t0 = Instant::now();
    let report = apply_run(cli, paths, a);
    emit_metrics(cli, paths, t0, report.as_ref());
    let report = report?;
    emit_run(cli, &report)?;
    let outcome = report.outcome;
    left_for_exit(report);
    Ok(Outcome::Applied(outcome))
}

/// `core-ops agent`: one timer-driven run.
pub fn agent(
    cli: &Cli,
    paths: &Paths,
    target: &TargetArgs,
    tuning: &ApplyTuning,
) -> Result<Outcome, Error> {
    let _lock = StateLock::acquire(&paths.state_dir)?;
    let t0 = Instant::now();
    let report = (|| {
        let connecting = connect_systemd(cli);
        let checking = chain_beside_plan(paths, true);
        let systemd = connected(connecting);
        let (chain, mut pending_chain) = chain_before_recovery(paths, checking, &systemd)?;
        let systemd = systemd?;
        chain_first(
            recover_runtimes(paths, &systemd, tuning),
            &mut pending_chain,
        )?;
        let t = chain_first(
            pipeline::resolve_target(paths, &target_opts(target)),
            &mut pending_chain,
        )?;
        let report = reconcile::run(
            paths,
            reconcile::Request {
                target: &t,
                mode: reconcile::Mode::Forward,
                opts: ApplyOptions {
                    verified_chain: chain,
                    ..apply_options(tuning, true, &t)
                },
                agent: true,
                plan_only: false,
                check: &|_| Ok(()),
                pending_chain,
            },
            &systemd,
        );
        left_for_exit(systemd);
        report
    })();
    emit_metrics(cli, paths, t0, report.as_ref());
    let report = report?;
    emit_run(cli, &report)?;
    let outcome = report.outcome;
    left_for_exit(report);
    Ok(Outcome::AgentRan(outcome))
}

/// What a run built (the desired state, observations, plan, the D-Bus connection) is left
/// to the end of the process instead of being freed piece by piece: `apply` and `agent` end
/// the process right after, and freeing tens of thousands of small allocations and shutting
/// the connection down is ~0.5 ms of a ~15 ms no-op run. The kernel reclaims it all at once.
fn left_for_exit<T>(value: T) {
    std::mem::forget(value);
}

/// The run of `apply`, under the lock: everything from the receipt chain to the report.
fn apply_run(cli: &Cli, paths: &Paths, a: ApplyArgs<'_>) -> Result<RunReport, Error> {
    let connecting = connect_systemd(cli);
    let checking = chain_beside_plan(paths, !a.force_no_state);
    let systemd = connected(connecting);
    let (chain, mut pending_chain) = chain_before_recovery(paths, checking, &systemd)?;
    let systemd = systemd?;
    chain_first(
        recover_runtimes(paths, &systemd, a.tuning),
        &mut pending_chain,
    )?;
    let mut opts = target_opts(a.target);
    opts.adopt = a.adopt.to_vec();
    let saved = chain_first(
        a.plan_file.map(read_saved_plan).transpose(),
        &mut pending_chain,
    )?;
    if let Some(saved) = &saved {
        opts.rev = Some(saved.base.desired_revision.clone());
    }
    let mut paths = paths.clone();
    if a.force_no_state {
        // plan as if nothing was applied and never write the snapshot
        paths.state_file = paths.state_dir.join(".force-no-state-unused.json");
    }
    let t = chain_first(pipeline::resolve_target(&paths, &opts), &mut pending_chain)?;
    let mode = match a.rollback_to {
        Some(rev) => reconcile::Mode::RollbackTo(rev.to_string()),
        None => reconcile::Mode::Forward,
    };
    let file = a
        .plan_file
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let check = |fresh: &plan::Plan| match &saved {
        Some(saved) => check_not_stale(saved, fresh, &file),
        None => Ok(()),
    };
    let mut report = reconcile::run(
        &paths,
        reconcile::Request {
            target: &t,
            mode,
            opts: ApplyOptions {
                verified_chain: chain,
                ..apply_options(a.tuning, !a.force_no_state, &t)
            },
            agent: false,
            plan_only: a.rollback_plan_only,
            check: &check,
            pending_chain,
        },
        &systemd,
    )?;
    left_for_exit(systemd);
    if let Some(saved) = &saved {
        report.planned.desired.revision.requested_ref = saved.base.requested_ref.clone();
    }
    Ok(report)
}

/// `apply --plan FILE`: the saved plan, its checksum verified.
fn read_saved_plan(f: &Path) -> Result<plan::Plan, Error> {
    let bytes = std::fs::read(f).map_err(|e| Error::io(format!("read {}", f.display()), e))?;
    plan::from_json_bytes(&bytes, &f.display().to_string())
}

/// Print a run: the apply result when an apply ran, otherwise what happened instead.
fn emit_run(cli: &Cli, report: &RunReport) -> Result<(), Error> {
    let plan = &report.planned.plan;
    let rev = &report.planned.desired.revision;
    match (&report.result, report.outcome) {
        (Some(result), _) => emit(
            cli,
            &AppliedView {
                result,
                quarantine_lifted: &report.lifted,
                run_outcome: report.outcome,
                plan,
            },
        ),
        (None, RunOutcome::PlanOnly) => emit(cli, &PlanView { plan }),
        (None, outcome) => emit(
            cli,
            &RunView {
                schema_version: SCHEMA_VERSION,
                kind: "CoreOpsRun",
                outcome,
                desired_revision: &rev.commit,
                requested_ref: &rev.requested_ref,
                intent_checksum: &plan.checksum,
                quarantine: &report.quarantine,
                quarantine_lifted: &report.lifted,
                host: &report.planned.desired.host,
            },
        ),
    }
}

/// Connect to systemd on a second thread while the receipt chain is checked (the connection
/// mostly waits for the bus); [`connected`] takes the result.
fn connect_systemd(cli: &Cli) -> std::thread::JoinHandle<Result<DbusSystemd, Error>> {
    let address = cli.systemd_address.clone();
    std::thread::spawn(move || {
        DbusSystemd::connect(address.as_deref()).map_err(|e| {
            Error::Systemd(format!(
                "{e}; apply needs a running systemd (set CORE_OPS_SYSTEMD_ADDRESS for a non-default bus)"
            ))
        })
    })
}

/// The connection [`connect_systemd`] made; apply and agent need systemd, and say so clearly
/// when it does not answer.
fn connected(
    connecting: std::thread::JoinHandle<Result<DbusSystemd, Error>>,
) -> Result<DbusSystemd, Error> {
    connecting
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Start-up recovery of runtime transactions a killed run left, before anything is planned
/// (the plan must see the host as recovery left it).
fn recover_runtimes(
    paths: &Paths,
    systemd: &DbusSystemd,
    tuning: &ApplyTuning,
) -> Result<(), Error> {
    for o in crate::apply::runtimes::recover(
        &paths.state_dir,
        systemd,
        Duration::from_secs(tuning.job_timeout),
        Duration::from_millis(tuning.settle_ms),
    )? {
        tracing::warn!(
            runtime = %o.name,
            version = %o.version,
            state = o.state.as_str(),
            receipt = %o.receipt,
            "recovered an interrupted runtime transaction"
        );
    }
    Ok(())
}

/// The receipt chain checked on a thread, to be awaited once the plan is made
/// ([`reconcile::Request::pending_chain`]) or earlier ([`chain_before_recovery`]).
fn chain_beside_plan(paths: &Paths, record_status: bool) -> reconcile::PendingChain<'static> {
    let paths = paths.clone();
    let checking = std::thread::spawn(move || check_receipt_chain(&paths, record_status));
    Box::new(move || {
        checking
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The chain's verdict awaited now when something is about to happen before the plan: an
/// interrupted runtime transaction to recover (recovery changes the host, and a broken
/// chain refuses the run before anything), or no systemd to talk to (the chain's refusal
/// is the error to report first). Either the verdict, or the check still pending.
fn chain_before_recovery<T>(
    paths: &Paths,
    pending: reconcile::PendingChain<'static>,
    systemd: &Result<T, Error>,
) -> Result<
    (
        Option<receipts::ChainReport>,
        Option<reconcile::PendingChain<'static>>,
    ),
    Error,
> {
    if systemd.is_ok() && !crate::apply::runtimes::recovery_pending(&paths.state_dir) {
        return Ok((None, Some(pending)));
    }
    Ok((Some(pending()?), None))
}

/// `result`, unless it is an error and the receipt chain checked beside the run is broken:
/// the chain's refusal is the error a run reports first (as when it was checked before
/// anything else), and a failed run does not leave the check running.
fn chain_first<T>(
    result: Result<T, Error>,
    pending: &mut Option<reconcile::PendingChain<'static>>,
) -> Result<T, Error> {
    if result.is_err()
        && let Some(wait) = pending.take()
    {
        wait()?;
    }
    result
}

/// The receipt chain, checked before an appending run (apply, agent, rollback) does
/// anything, recovery included: a broken chain refuses the run (exit 1, nothing changed).
/// status.json's `receipts` says so whenever the verdict changes (a quiet host is not
/// rewritten every tick; never with `--force-no-state`). The report is the run's one
/// verification: apply is handed it instead of verifying again.
fn check_receipt_chain(paths: &Paths, record_status: bool) -> Result<receipts::ChainReport, Error> {
    let r = receipts::verify(&paths.state_dir, receipts::Depth::Run)?;
    let now = crate::model::time::now_rfc3339();
    let health = status::ReceiptChainHealth::of(&r, &now);
    // the recorded health alone is read first: the whole snapshot only when it must change
    let changed = record_status
        && status::load_receipt_health(&paths.state_file).is_some_and(|recorded| {
            recorded
                .as_ref()
                .is_none_or(|h| (h.ok, &h.problem) != (health.ok, &health.problem))
        });
    if changed && let Ok(mut snap) = status::load(&paths.state_file) {
        if !r.ok {
            snap.last_run = Some(status::RunRecord {
                started_at: now.clone(),
                finished_at: now,
                outcome: "refused".into(),
                desired_revision: String::new(),
                requested_ref: String::new(),
                intent_checksum: String::new(),
                diagnostics: vec![format!(
                    "receipt chain broken at {}",
                    health.problem.as_deref().unwrap_or_default()
                )],
            });
        }
        snap.receipts = Some(health);
        if let Err(e) = status::save(&paths.state_file, &snap) {
            tracing::warn!("cannot record the receipt chain's health in status.json: {e}");
        }
    }
    receipts::require_intact(r)
}

/// A saved plan may only be executed while its base still holds.
fn check_not_stale(saved: &plan::Plan, fresh: &plan::Plan, file: &str) -> Result<(), Error> {
    let (s, f) = (&saved.base, &fresh.base);
    let mut why = Vec::new();
    if s.desired_revision != f.desired_revision {
        why.push(format!(
            "desired revision {} is now {}",
            s.desired_revision, f.desired_revision
        ));
    }
    if s.last_applied_revision != f.last_applied_revision {
        why.push(format!(
            "last_applied moved from {} to {}",
            s.last_applied_revision.as_deref().unwrap_or("none"),
            f.last_applied_revision.as_deref().unwrap_or("none")
        ));
    }
    if s.observed_digest != f.observed_digest {
        why.push(format!(
            "the host changed since the plan was made (observed digest {} is now {})",
            s.observed_digest, f.observed_digest
        ));
    }
    if why.is_empty() && s.desired_revision == f.desired_revision && saved.actions != fresh.actions
    {
        why.push("the actions differ (plan made by another core-ops build?)".into());
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(Error::StalePlan(format!(
            "{file}: {}; run core-ops plan again. Nothing was changed.",
            why.join("; ")
        )))
    }
}

fn apply_options(tuning: &ApplyTuning, record_status: bool, t: &ResolvedTarget) -> ApplyOptions {
    ApplyOptions {
        job_timeout: Duration::from_secs(tuning.job_timeout),
        settle: Duration::from_millis(tuning.settle_ms),
        record_status,
        repo: t.repo.clone(),
        kind: ApplyKind::Forward,
        retention: crate::record::retention::Retention {
            keep: tuning.keep_results,
            ..Default::default()
        },
        verified_chain: None,
    }
}

/// Write the run's metrics file (when configured or node-exporter's directory exists);
/// a failure to write metrics is logged, never fatal.
fn emit_metrics(cli: &Cli, paths: &Paths, t0: Instant, report: Result<&RunReport, &Error>) {
    let Some(path) = metrics::target(cli.metrics_file.as_deref()) else {
        return;
    };
    let outcome = match report.map(|r| r.outcome) {
        Err(Error::Fetch(_)) => "fetch_failed",
        Err(_) => "error",
        Ok(o) => crate::model::names::serde_name(&o),
    };
    let finished_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let snapshot = status::load(&paths.state_file).ok();
    let receipt_chain_ok = match report {
        Err(Error::ReceiptChain(_)) => Some(false),
        _ => snapshot
            .as_ref()
            .and_then(|s| s.receipts.as_ref())
            .map(|h| h.ok),
    };
    let mut m = metrics::RunMetrics {
        finished_unix,
        duration_seconds: t0.elapsed().as_secs_f64(),
        outcome: outcome.to_string(),
        last_applied: snapshot
            .as_ref()
            .and_then(|s| s.last_applied.as_ref())
            .map(|l| (l.revision.clone(), l.requested_ref.clone())),
        runtimes: snapshot
            .as_ref()
            .map(|s| {
                s.runtimes
                    .iter()
                    .filter_map(|(n, r)| r.current.clone().map(|v| (n.clone(), v)))
                    .collect()
            })
            .unwrap_or_default(),
        receipt_chain_ok,
        quarantined: control::load(&paths.state_dir)
            .map(|c| c.quarantine.is_some())
            .unwrap_or(false),
        fetch: crate::source::fetch_state::load(&paths.state_dir),
        ..Default::default()
    };
    if let Ok(r) = report {
        m = m.with_plan(&r.planned.plan);
    }
    if let Err(e) = metrics::write(&path, &m) {
        tracing::warn!("cannot write metrics to {}: {e}", path.display());
    }
}
