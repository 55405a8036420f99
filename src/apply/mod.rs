//! Apply: execute a plan through systemd in phases, verify convergence, record the outcome.
//!
//! Phases (each visible in the results document with its duration):
//! `stop` (removed units, mounts being replaced) -> `disable` -> `prepare` (mountpoints) ->
//! `write` (atomic writes and removals) -> `reload` (ONE `Reload()`, only if unit files
//! changed) -> `enable` -> `runtimes` (one install transaction per runtime action, see
//! `crate::runtime`) -> `start` (jobs, each waited for through `JobRemoved`) -> `verify`.
//! `last_applied` advances only when verification says converged.

pub mod journal;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Paths;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::normalize::{Kind, sha256_hex};
use crate::pipeline::Planned;
use crate::plan::{Action, PlannedAction};
use crate::provenance::Provenance;
use crate::record::receipts::{self, RECEIPT_SCHEMA_VERSION, ReconcileReceipt};
use crate::record::status::{self, HistoryEntry, RunRecord, SourceRecord, StatusSnapshot};
use crate::record::time::now_rfc3339;
use crate::systemd::{CallCounts, JobKind, JobResult, Systemd};
use crate::verify::{self, Diagnostic, Outcome, Removed};

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
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            job_timeout: Duration::from_secs(90),
            settle: Duration::from_millis(1500),
            record_status: true,
            repo: String::new(),
            kind: ApplyKind::Forward,
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

struct Phases {
    list: Vec<PhaseReport>,
}

impl Phases {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> (T, String)) -> T {
        let t0 = Instant::now();
        let _span = tracing::info_span!("phase", phase = name).entered();
        let (v, detail) = f();
        let ms = t0.elapsed().as_millis() as u64;
        tracing::info!(phase = name, duration_ms = ms, "{detail}");
        self.list.push(PhaseReport {
            name: name.to_string(),
            duration_ms: ms,
            detail,
        });
        v
    }
}

fn diag(id: &str, unit: Option<&str>, problem: String) -> Diagnostic {
    Diagnostic {
        id: id.to_string(),
        unit: unit.map(str::to_string),
        problem,
    }
}

/// Remove `<unit>.d` when the last managed drop-in left it empty.
fn remove_empty_dropin_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && dir.extension().is_some_and(|e| e == "d")
        && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
    {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Test hook for crash-safety tests: with `CORE_OPS_FAILPOINT_PAUSE_AFTER_WRITES=N`, the
/// write phase stops after its Nth file, says so on stderr and waits to be killed (SIGKILL).
/// Never set in production; it only ever delays, it cannot change what is written.
fn failpoint_pause_after_writes(written: usize) {
    if let Ok(v) = std::env::var("CORE_OPS_FAILPOINT_PAUSE_AFTER_WRITES")
        && v.parse::<usize>().ok() == Some(written)
    {
        eprintln!("core-ops: failpoint: paused after {written} writes");
        std::thread::sleep(Duration::from_secs(600));
    }
}

/// Execute the plan of `planned` against systemd, verify and record.
pub fn apply(
    planned: &Planned,
    systemd: &dyn Systemd,
    paths: &Paths,
    opts: &ApplyOptions,
) -> Result<ApplyResult> {
    let plan = &planned.plan;
    if plan.is_blocked() {
        let blocked: Vec<String> = plan
            .actions
            .iter()
            .filter(|a| a.action == Action::Blocked)
            .map(|a| format!("{}: {}", a.id, a.reason))
            .collect();
        return Err(Error::Config(format!(
            "the plan has blocked actions; nothing was changed:\n  {}",
            blocked.join("\n  ")
        )));
    }
    let started_at = now_rfc3339();
    let desired = &planned.desired;
    let last = planned
        .status
        .as_ref()
        .and_then(|s| s.last_applied.as_ref());
    let counts_before = systemd.counts();
    let mut phases = Phases { list: Vec::new() };
    let mut diagnostics: Vec<Diagnostic> = Vec::new();
    let mut jobs_done: Vec<JobResult> = Vec::new();
    let changed: Vec<&PlannedAction> = plan
        .actions
        .iter()
        .filter(|a| a.action != Action::NoOp)
        .collect();

    // temp files a killed run left beside any object this plan touches
    let mut dirs: BTreeSet<PathBuf> = [paths.unit_dir.clone(), paths.quadlet_dir.clone()].into();
    dirs.extend(
        plan.actions
            .iter()
            .filter(|a| a.action != Action::NoOp)
            .filter_map(|a| a.path.as_ref())
            .filter_map(|p| std::path::Path::new(p).parent().map(PathBuf::from)),
    );
    for dir in &dirs {
        fsutil::clean_temp_files(dir)?;
    }

    if !changed.is_empty() {
        journal::save(
            &paths.state_dir,
            &journal::Inflight {
                schema_version: 1,
                intent_checksum: plan.checksum.clone(),
                desired_revision: plan.base.desired_revision.clone(),
                started_at: started_at.clone(),
                objects: changed.iter().map(|a| a.id.clone()).collect(),
            },
        )?;
    }

    let deletes: Vec<&PlannedAction> = changed
        .iter()
        .copied()
        .filter(|a| a.action == Action::Delete)
        .collect();

    // stop: removed units (already in reverse dependency order) and mounts being replaced
    let mut stop_failed: BTreeSet<String> = BTreeSet::new();
    let stop_jobs: Vec<(JobKind, String)> = changed
        .iter()
        .filter(|a| {
            (a.action == Action::Delete
                && last
                    .and_then(|l| l.resources.get(&a.id))
                    .is_some_and(|r| r.started || r.kind == Kind::Mount))
                || (a.action == Action::Replace && matches!(a.kind, Kind::Mount | Kind::Automount))
        })
        .filter_map(|a| a.unit.clone().map(|u| (JobKind::Stop, u)))
        .collect();
    if !stop_jobs.is_empty() {
        let results = phases.run("stop", || {
            let r = systemd.run_jobs(&stop_jobs, opts.job_timeout);
            let n = stop_jobs.len();
            (r, format!("{n} stop jobs"))
        })?;
        for (job, res) in stop_jobs.iter().zip(&results) {
            if !res.outcome.is_success() {
                let id = changed
                    .iter()
                    .find(|a| a.unit.as_deref() == Some(&job.1))
                    .map(|a| a.id.clone())
                    .unwrap_or_default();
                let what = if job.1.ends_with(".mount") {
                    "the mount is busy or cannot be unmounted cleanly; it is left mounted and its unit file kept"
                } else {
                    "it is left in place"
                };
                diagnostics.push(diag(
                    &id,
                    Some(&job.1),
                    format!("stop failed ({:?}): {what}", res.outcome),
                ));
                stop_failed.insert(id);
            }
        }
        jobs_done.extend(results);
    }
    let to_disable: Vec<String> = deletes
        .iter()
        .filter(|a| !stop_failed.contains(&a.id))
        .filter(|a| {
            last.and_then(|l| l.resources.get(&a.id))
                .is_some_and(|r| r.enabled)
        })
        .filter_map(|a| a.unit.clone())
        .chain(
            // units still desired but no longer to be enabled
            desired
                .resources
                .values()
                .filter(|r| {
                    r.unit.as_ref().is_some_and(|u| !u.enable)
                        && last
                            .and_then(|l| l.resources.get(&r.id))
                            .is_some_and(|a| a.enabled)
                })
                .filter_map(|r| r.unit.as_ref().map(|u| u.name.clone())),
        )
        .collect();
    if !to_disable.is_empty() {
        phases.run("disable", || {
            let r = systemd.disable(&to_disable);
            (r, format!("{} units", to_disable.len()))
        })?;
    }

    // prepare mountpoints
    let mut skip_start: BTreeSet<String> = BTreeSet::new();
    phases.run("prepare", || {
        let mut n = 0;
        for a in &changed {
            let Some(r) = desired.resources.get(&a.id) else {
                continue;
            };
            let Some(m) = r.unit.as_ref().and_then(|u| u.mount.as_ref()) else {
                continue;
            };
            if !matches!(
                a.action,
                Action::Create | Action::Update | Action::Replace | Action::Recover
            ) {
                continue;
            }
            let p = PathBuf::from(&m.where_);
            if p.is_dir() {
                continue;
            }
            if m.create_mountpoint {
                if let Err(e) = fsutil::beneath::create_dir_all(std::path::Path::new("/"), &p) {
                    diagnostics.push(diag(
                        &a.id,
                        a.unit.as_deref(),
                        format!("cannot create mountpoint: {e}"),
                    ));
                    skip_start.insert(a.id.clone());
                } else {
                    n += 1;
                }
            } else {
                diagnostics.push(diag(
                    &a.id,
                    a.unit.as_deref(),
                    format!(
                        "mountpoint missing and CreateMountpoint=false: {}",
                        m.where_
                    ),
                ));
                skip_start.insert(a.id.clone());
            }
        }
        ((), format!("{n} mountpoints created"))
    });

    // write and remove files in plan order
    let mut unit_files_changed = false;
    let write_result: Result<()> = phases.run("write", || {
        let mut removed = 0;
        let to_write: Vec<&crate::render::Resource> = changed
            .iter()
            // runtimes are not files: the runtimes phase owns them
            .filter(|a| a.kind != Kind::Runtime)
            .filter(|a| matches!(a.action, Action::Create | Action::Update | Action::Replace))
            .map(|a| desired.resources.get(&a.id).expect("desired object"))
            .collect();
        let r = (|| -> Result<()> {
            let items: Vec<fsutil::BatchItem<'_>> = to_write
                .iter()
                .map(|r| fsutil::BatchItem {
                    path: &r.path,
                    data: &r.content,
                    meta: Some(&r.meta),
                    beneath: (r.kind == Kind::File).then(|| paths.host_file_root(&r.path)),
                })
                .collect();
            fsutil::write_batch(&items, failpoint_pause_after_writes)?;
            unit_files_changed |= to_write.iter().any(|r| r.kind.is_ini());
            for a in changed.iter().filter(|a| a.action == Action::Delete) {
                if stop_failed.contains(&a.id) || a.kind == Kind::Runtime {
                    continue;
                }
                let path = PathBuf::from(a.path.as_deref().unwrap_or_default());
                let beneath = (a.kind == Kind::File).then(|| paths.host_file_root(&path));
                fsutil::remove_synced_beneath(beneath, &path)?;
                remove_empty_dropin_dir(&path);
                removed += 1;
                unit_files_changed |= a.kind.is_ini();
            }
            Ok(())
        })();
        (r, format!("{} written, {removed} removed", to_write.len()))
    });
    write_result?;

    let needs_reload = unit_files_changed || changed.iter().any(|a| a.action == Action::Recover);
    if needs_reload {
        phases.run("reload", || (systemd.reload(), "1 Reload()".to_string()))?;
    }

    // enable what should be enabled and is being (re)applied
    let to_enable: Vec<String> = changed
        .iter()
        .filter(|a| {
            a.enable == Some(true)
                && matches!(
                    a.action,
                    Action::Create | Action::Update | Action::Replace | Action::Recover
                )
        })
        .filter_map(|a| a.unit.clone())
        .collect();
    if !to_enable.is_empty() {
        phases.run("enable", || {
            let r = systemd.enable(&to_enable);
            (r, format!("{} units", to_enable.len()))
        })?;
    }

    // runtimes: install / switch / remove, each a persisted transaction with receipts
    let mut runtime_restarted: BTreeSet<String> = BTreeSet::new();
    let mut runtime_deferred: Vec<String> = Vec::new();
    if changed.iter().any(|a| a.kind == Kind::Runtime) {
        let res = phases.run("runtimes", || {
            let r = crate::runtime::phase::run(
                &changed,
                desired,
                systemd,
                &paths.state_dir,
                opts.job_timeout,
                opts.settle,
            );
            let detail = r.as_ref().map(|r| r.detail()).unwrap_or_default();
            (r, detail)
        })?;
        diagnostics.extend(res.diagnostics);
        runtime_restarted = res.restarted;
        runtime_deferred = res.deferred;
    }

    // start / restart jobs in plan order
    let mut start_jobs: Vec<(JobKind, String, String)> = Vec::new();
    let mut recover_units: Vec<String> = Vec::new();
    for a in &changed {
        if skip_start.contains(&a.id) {
            continue;
        }
        let Some(unit) = a.unit.clone() else { continue };
        let started = a
            .start
            .unwrap_or(a.kind == Kind::Unit && a.action == Action::Restart);
        let kind = match a.action {
            Action::Create | Action::Replace if started => JobKind::Start,
            Action::Update if started => JobKind::Restart,
            Action::Restart => JobKind::Restart,
            Action::Recover if started => {
                recover_units.push(unit.clone());
                JobKind::Restart
            }
            _ => continue,
        };
        if kind == JobKind::Restart && runtime_restarted.contains(&unit) {
            continue; // restarted by its runtime's transaction, after the reload
        }
        start_jobs.push((kind, unit, a.id.clone()));
    }
    // generated (Quadlet) units must be loaded before they are started
    let quadlet_units: Vec<String> = start_jobs
        .iter()
        .filter(|(_, _, id)| id.starts_with("quadlet:"))
        .map(|(_, u, _)| u.clone())
        .collect();
    if !quadlet_units.is_empty() {
        let statuses = systemd.unit_statuses(&quadlet_units)?;
        for st in statuses.iter().filter(|s| s.load_state != "loaded") {
            let id = start_jobs
                .iter()
                .find(|(_, u, _)| *u == st.name)
                .map(|(_, _, id)| id.clone())
                .unwrap_or_default();
            diagnostics.push(diag(
                &id,
                Some(&st.name),
                format!(
                    "generated unit is not loaded after reload (LoadState={}); is the Quadlet generator installed?",
                    st.load_state
                ),
            ));
            start_jobs.retain(|(_, u, _)| *u != st.name);
        }
    }
    if !recover_units.is_empty() {
        systemd.reset_failed(&recover_units)?;
    }
    if !start_jobs.is_empty() {
        let jobs: Vec<(JobKind, String)> =
            start_jobs.iter().map(|(k, u, _)| (*k, u.clone())).collect();
        let results = phases.run("start", || {
            let r = systemd.run_jobs(&jobs, opts.job_timeout);
            (r, format!("{} jobs", jobs.len()))
        })?;
        for ((_, unit, id), res) in start_jobs.iter().zip(&results) {
            if !res.outcome.is_success() {
                diagnostics.push(diag(
                    id,
                    Some(unit),
                    format!("{:?} job ended: {:?}", res.kind, res.outcome),
                ));
            }
        }
        jobs_done.extend(results);
    }

    // verify
    let removed: Vec<Removed> = deletes
        .iter()
        .map(|a| Removed {
            id: a.id.clone(),
            path: PathBuf::from(a.path.as_deref().unwrap_or_default()),
            unit: a.unit.clone(),
        })
        .collect();
    let settle = if jobs_done.iter().any(|j| j.kind != JobKind::Stop) {
        opts.settle
    } else {
        Duration::ZERO
    };
    let reported_only: BTreeSet<String> = plan
        .actions
        .iter()
        .filter(|a| a.action == Action::NoOp && a.cause == crate::plan::Cause::Drift)
        .map(|a| a.id.clone())
        .collect();
    let verification = phases.run("verify", || {
        let preread = match (&planned.units, changed.is_empty()) {
            (crate::observe::UnitObservation::Known(m), true) => Some(m),
            _ => None,
        };
        let r = verify::verify(desired, &removed, systemd, settle, &reported_only, preread);
        (r, format!("settle {} ms", settle.as_millis()))
    })?;
    diagnostics.extend(verification.diagnostics);
    diagnostics.sort_by(|a, b| (&a.id, &a.problem).cmp(&(&b.id, &b.problem)));
    diagnostics.dedup();

    let outcome = if diagnostics.is_empty() {
        if plan.findings.iter().any(|f| f.kind == "runtime_variance") {
            Outcome::ConvergedWithToleratedVariance
        } else {
            Outcome::Converged
        }
    } else {
        let bad: BTreeSet<&str> = diagnostics.iter().map(|d| d.id.as_str()).collect();
        let changed_ids: BTreeSet<&str> = changed.iter().map(|a| a.id.as_str()).collect();
        if !changed_ids.is_empty() && changed_ids.iter().any(|id| !bad.contains(id)) {
            Outcome::PartiallyApplied
        } else {
            Outcome::Failed
        }
    };
    let counts_after = systemd.counts();
    let calls = CallCounts {
        reloads: counts_after.reloads - counts_before.reloads,
        jobs: counts_after.jobs - counts_before.jobs,
        enablement_calls: counts_after.enablement_calls - counts_before.enablement_calls,
    };

    // record
    let finished_at = now_rfc3339();
    let mut result = ApplyResult {
        schema_version: 1,
        kind: "CoreOpsApplyResult".into(),
        intent_checksum: plan.checksum.clone(),
        core_ops: Provenance::current(),
        host: desired.host.clone(),
        desired_revision: desired.revision.commit.clone(),
        requested_ref: desired.revision.requested_ref.clone(),
        from_revision: last.map(|l| l.revision.clone()),
        outcome,
        last_applied_advanced: outcome.is_converged()
            && opts.record_status
            && (!changed.is_empty() || last.is_none_or(|l| l.revision != desired.revision.commit)),
        started_at: started_at.clone(),
        finished_at: finished_at.clone(),
        phases: phases.list,
        jobs: jobs_done,
        diagnostics,
        calls,
        changed_objects: changed.len(),
        receipt: None,
        results_path: None,
        rollback: None,
        quarantine: None,
        deferred: runtime_deferred,
    };
    record(planned, paths, opts, &mut result)?;
    Ok(result)
}

/// Write the results document, the receipt (for a transition) and status.json, then drop
/// the in-flight journal. A transition is a run that changed objects or moved `last_applied`
/// to another revision (a new revision whose objects already match is still a transition).
fn record(
    planned: &Planned,
    paths: &Paths,
    opts: &ApplyOptions,
    result: &mut ApplyResult,
) -> Result<()> {
    let desired = &planned.desired;
    if result.changed_objects > 0 || result.last_applied_advanced {
        let hex = result.intent_checksum.trim_start_matches("sha256:");
        let stamp = result.finished_at.replace([':', '-'], "");
        let path = paths
            .state_dir
            .join("results")
            .join(format!("{stamp}-{}.json", &hex[..12.min(hex.len())]));
        result.results_path = Some(path.display().to_string());
        let bytes = fsutil::json_bytes(result);
        let results_digest = sha256_hex(&bytes);
        fsutil::write_atomic(&path, &bytes, None)?;
        let transition = match (&opts.kind, result.outcome.is_converged()) {
            (ApplyKind::Forward, true) => "applied",
            (ApplyKind::Rollback, true) => "rollback",
            (ApplyKind::AutoRollback { .. }, true) => "rolled_back",
            (_, false) if result.outcome == Outcome::PartiallyApplied => "partial",
            (_, false) => "failed",
        };
        let reason = match &opts.kind {
            ApplyKind::AutoRollback { reason } => Some(reason.clone()),
            _ => None,
        };
        let (_, receipt) = receipts::append(
            &paths.state_dir,
            ReconcileReceipt {
                schema_version: RECEIPT_SCHEMA_VERSION,
                kind: "CoreOpsReconcileReceipt".into(),
                id: String::new(),
                sequence: 0,
                transition: transition.into(),
                host: desired.host.clone(),
                from_revision: result.from_revision.clone(),
                to_revision: result.desired_revision.clone(),
                requested_ref: result.requested_ref.clone(),
                outcome: result.outcome.as_str().into(),
                intent_checksum: result.intent_checksum.clone(),
                results_digest,
                diagnostics: result.diagnostics.len(),
                core_ops: Provenance::current(),
                recorded_at: result.finished_at.clone(),
                previous_receipt_digest: None,
                reason,
            },
        )?;
        result.receipt = Some(receipt.id);
    }
    if opts.record_status {
        let mut snap = planned
            .status
            .clone()
            .unwrap_or_else(|| StatusSnapshot::new(&desired.host));
        snap.schema_version = status::STATUS_SCHEMA_VERSION;
        snap.core_ops = Provenance::current();
        snap.host = desired.host.clone();
        snap.source = Some(SourceRecord {
            repo: opts.repo.clone(),
            requested_ref: desired.revision.requested_ref.clone(),
            revision: desired.revision.commit.clone(),
        });
        let (outcome, mut diagnostics) = match (&opts.kind, result.outcome.is_converged()) {
            (ApplyKind::AutoRollback { reason }, true) => {
                ("rolled_back".to_string(), vec![reason.clone()])
            }
            _ => (result.outcome.as_str().to_string(), Vec::new()),
        };
        diagnostics.extend(
            result
                .diagnostics
                .iter()
                .map(|d| format!("{}: {}", d.id, d.problem)),
        );
        snap.last_run = Some(RunRecord {
            started_at: result.started_at.clone(),
            finished_at: result.finished_at.clone(),
            outcome,
            desired_revision: result.desired_revision.clone(),
            requested_ref: result.requested_ref.clone(),
            intent_checksum: result.intent_checksum.clone(),
            diagnostics,
        });
        snap.runtimes = crate::runtime::status_entries(&paths.state_dir);
        if result.last_applied_advanced {
            snap.last_applied = Some(status::last_applied_from(desired, &result.finished_at));
            if snap.history.last().map(|h| &h.revision) != Some(&desired.revision.commit) {
                snap.history.push(HistoryEntry {
                    revision: desired.revision.commit.clone(),
                    requested_ref: desired.revision.requested_ref.clone(),
                    applied_at: result.finished_at.clone(),
                });
            }
        }
        status::save(&paths.state_file, &snap)?;
    }
    journal::clear(&paths.state_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests;
