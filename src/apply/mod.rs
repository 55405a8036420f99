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

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Paths;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::normalize::{Kind, sha256_hex};
use crate::model::time::now_rfc3339;
use crate::model::unit_file::runtime_units;
use crate::pipeline::Planned;
use crate::plan::{Action, PlannedAction};
use crate::provenance::Provenance;
use crate::record::journal;
use crate::record::ledger::{self, Ledger};
use crate::record::receipts::{self, RECEIPT_SCHEMA_VERSION, ReconcileReceipt};
use crate::record::status::{self, HistoryEntry, RunRecord, SourceRecord, StatusSnapshot};
use crate::render::{DesiredState, Resource};
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
    /// What the state dir keeps (results, history, live receipts).
    pub retention: crate::record::retention::Retention,
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

struct Phases {
    list: Vec<PhaseReport>,
}

impl Phases {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> (T, String)) -> T {
        crate::failpoint::pause_at(crate::failpoint::APPLY_PHASE, name);
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

/// Instances of a still desired template that core-ops enabled or started before and that
/// the template no longer names.
fn dropped_instances<'a>(
    desired: &'a DesiredState,
    owned: &'a std::collections::BTreeMap<String, status::AppliedResource>,
) -> impl Iterator<Item = String> + 'a {
    desired.resources.values().flat_map(move |r| {
        let now: Vec<String> = r
            .unit
            .as_ref()
            .map(|u| u.instances.clone())
            .unwrap_or_default();
        owned
            .get(&r.id)
            .map(|o| o.instances.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(move |i| !now.contains(i))
    })
}

/// Whether the plan saw `unit` running: a removed unit that runs is stopped even when
/// core-ops never started it itself (a Quadlet `.volume` pulled in by its container).
fn observed_running(planned: &Planned, unit: &str) -> bool {
    match &planned.units {
        crate::observe::UnitObservation::Known(m) => m.get(unit).is_some_and(|st| {
            matches!(
                st.active_state.as_str(),
                "active" | "activating" | "reloading"
            )
        }),
        crate::observe::UnitObservation::Unknown { .. } => false,
    }
}

/// Desired objects whose units this run started and that then ran to completion on their
/// own (inactive, `Result=success`): a run-to-completion container or script, judged like a
/// oneshot from now on.
fn ran_to_completion(
    desired: &DesiredState,
    states: &std::collections::BTreeMap<String, crate::systemd::UnitStatus>,
    jobs: &[JobResult],
) -> BTreeSet<String> {
    let started: BTreeSet<&str> = jobs
        .iter()
        .filter(|j| matches!(j.kind, JobKind::Start | JobKind::Restart) && j.outcome.is_success())
        .map(|j| j.unit.as_str())
        .collect();
    desired
        .resources
        .values()
        .filter(|r| {
            let units = r
                .unit
                .as_ref()
                .map(|u| u.runtime_units())
                .unwrap_or_default();
            !units.is_empty()
                && units.iter().all(|u| {
                    started.contains(u.as_str())
                        && states.get(u).is_some_and(|st| {
                            st.active_state == "inactive"
                                && st.result == "success"
                                && !st.skipped_by_condition
                        })
                })
        })
        .map(|r| r.id.clone())
        .collect()
}

/// Record in the ledger that core-ops is about to write these objects (and the directories
/// the writes will create); an adopted object stays marked as adopted.
fn claim(
    ledger: &mut Ledger,
    to_write: &[&Resource],
    changed: &[&PlannedAction],
    desired: &DesiredState,
    paths: &Paths,
) {
    let deps = crate::plan::desired_dependencies(desired);
    // the configured directories themselves are never core-ops' to remove, even when it
    // had to create them
    let roots: Vec<&std::path::Path> = [paths.unit_dir.as_path(), paths.quadlet_dir.as_path()]
        .into_iter()
        .chain(paths.host_file_roots.iter().map(PathBuf::as_path))
        .collect();
    for r in to_write {
        let mut rec = status::applied_record(r, &deps);
        rec.adopted = ledger.objects.get(&r.id).is_some_and(|o| o.adopted)
            || changed
                .iter()
                .any(|a| a.id == r.id && a.action == Action::Adopt);
        let made: Vec<PathBuf> = ledger::missing_parents(&r.path)
            .into_iter()
            .filter(|d| !roots.iter().any(|root| root.starts_with(d)))
            .collect();
        ledger.claim(&r.id, rec, &made);
    }
}

/// After the run: owned objects that are still desired get their current role (enabled,
/// started, instances, order) while keeping the digest core-ops last wrote; owned objects
/// that left the desired state and are gone from the host are forgotten.
fn settle_ledger(
    ledger: &mut Ledger,
    desired: &DesiredState,
    converged: bool,
    completed: &BTreeSet<String>,
) {
    let deps = crate::plan::desired_dependencies(desired);
    // runtimes are installed by their own transaction, not the write phase: owned once there
    for r in desired.resources.values() {
        if r.kind == Kind::Runtime
            && !ledger.objects.contains_key(&r.id)
            && std::fs::symlink_metadata(&r.path).is_ok()
        {
            ledger.claim(&r.id, status::applied_record(r, &deps), &[]);
        }
    }
    let ids: Vec<String> = ledger.objects.keys().cloned().collect();
    for id in ids {
        match desired.resources.get(&id) {
            Some(r) => {
                let old = &ledger.objects[&id];
                let mut rec = status::applied_record(r, &deps);
                rec.runs_to_completion =
                    completed.contains(&id) || (old.runs_to_completion && old.digest == rec.digest);
                rec.digest = old.digest.clone();
                rec.adopted = old.adopted;
                ledger.objects.insert(id, rec);
            }
            None => {
                // converged: verification proved every removal; otherwise only what is gone
                let gone = converged
                    || (ledger.objects[&id].kind != Kind::Runtime
                        && std::fs::symlink_metadata(&ledger.objects[&id].path).is_err());
                if gone {
                    let path = ledger.objects[&id].path.clone();
                    ledger.release(&id);
                    ledger.prune_dirs_above(&path);
                }
            }
        }
    }
}

/// Why a unit is not loaded after the reload, in systemd's words (`LoadError`), and for a
/// Quadlet file the generator's own message from a dry run of the written set.
fn not_loaded_reason<'a>(
    id: &str,
    st: &crate::systemd::UnitStatus,
    quadlet_verdict: impl FnOnce() -> &'a crate::quadlet_check::QuadletCheck,
) -> String {
    let systemd_says = if st.load_error.is_empty() {
        String::new()
    } else {
        format!(": {}", st.load_error)
    };
    let mut reason = format!(
        "unit is not loaded after reload (LoadState={}){systemd_says}",
        st.load_state
    );
    if id.starts_with("quadlet:") {
        let check = quadlet_verdict();
        match (check.rejected.get(id), &check.generator) {
            (Some(msg), _) => reason.push_str(&format!("; the Quadlet generator says: {msg}")),
            (None, None) => reason.push_str(&format!(
                "; no Quadlet generator could be run to say why ({})",
                check.warnings.join("; ")
            )),
            (None, Some(g)) => reason.push_str(&format!(
                "; {} accepts the file, so systemd's generator run differs (see journalctl -b for podman-system-generator)",
                g.display()
            )),
        }
    }
    reason
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
        return Err(Error::BlockedPlan(format!(
            "the plan has blocked actions; nothing was changed:\n  {}",
            blocked.join("\n  ")
        )));
    }
    // a broken, truncated or forked receipt chain is never extended: refused before the
    // host is touched
    let chain = receipts::check_before_run(&paths.state_dir)?;
    let started_at = now_rfc3339();
    let desired = &planned.desired;
    let last = planned
        .status
        .as_ref()
        .and_then(|s| s.last_applied.as_ref());
    let mut ledger = planned.ledger.clone();
    let owned = &planned.ledger.objects;
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

    let interrupted = journal::load(&paths.state_dir).ok().flatten();
    let completes_interrupted = interrupted.as_ref().map(|j| {
        format!(
            "completes the run of plan {} (revision {}) interrupted after {}",
            j.intent_checksum, j.desired_revision, j.started_at
        )
    });
    // the transition an interrupted run began is recorded from where it began
    let from_revision = match &interrupted {
        Some(j) => j.from_revision.clone(),
        None => last.map(|l| l.revision.clone()),
    };
    if !changed.is_empty() {
        journal::save(
            &paths.state_dir,
            &journal::Inflight {
                schema_version: 1,
                intent_checksum: plan.checksum.clone(),
                desired_revision: plan.base.desired_revision.clone(),
                started_at: started_at.clone(),
                objects: changed.iter().map(|a| a.id.clone()).collect(),
                from_revision: from_revision.clone(),
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
                && (owned
                    .get(&a.id)
                    .is_some_and(|r| r.started || r.kind == Kind::Mount)
                    || a.runtime_units()
                        .iter()
                        .any(|u| observed_running(planned, u))))
                || (a.action == Action::Replace && matches!(a.kind, Kind::Mount | Kind::Automount))
        })
        .flat_map(|a| {
            // a removed unit is stopped alone; a mount being replaced stops what needs it
            let kind = if a.action == Action::Delete {
                JobKind::StopAlone
            } else {
                JobKind::Stop
            };
            a.runtime_units().into_iter().map(move |u| (kind, u))
        })
        // instances a template no longer has
        .chain(dropped_instances(desired, owned).map(|u| (JobKind::StopAlone, u)))
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
                    .find(|a| a.runtime_units().contains(&job.1))
                    .map(|a| a.id.clone())
                    .unwrap_or_default();
                // what the kernel shows (through systemd's mount unit, which mirrors PID 1's
                // mount table), not what the failed job suggests
                let still_mounted = || {
                    systemd
                        .unit_states_brief(std::slice::from_ref(&job.1))
                        .ok()
                        .and_then(|v| v.into_iter().next())
                        .map(|st| st.active_state)
                };
                let what = if job.1.ends_with(".mount") {
                    match still_mounted().as_deref() {
                        Some("inactive") | Some("failed") => "it is no longer in the mount table although the stop job failed; the unit file is kept".to_string(),
                        Some(state) => format!("the mount is busy or cannot be unmounted cleanly; it is still mounted (ActiveState={state}) and its unit file is kept"),
                        None => "the mount is busy or cannot be unmounted cleanly; its unit file is kept".to_string(),
                    }
                } else {
                    "it is left in place".to_string()
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
        .filter(|a| owned.get(&a.id).is_some_and(|r| r.enabled))
        .flat_map(|a| a.runtime_units())
        .chain(
            // units (or template instances) still desired but no longer to be enabled
            desired.resources.values().flat_map(|r| {
                let was = owned
                    .get(&r.id)
                    .filter(|a| a.enabled)
                    .and_then(|a| a.unit.as_ref().map(|u| runtime_units(u, &a.instances)))
                    .unwrap_or_default();
                let now: Vec<String> = r
                    .unit
                    .as_ref()
                    .filter(|u| u.enable)
                    .map(|u| u.runtime_units())
                    .unwrap_or_default();
                was.into_iter().filter(move |u| !now.contains(u))
            }),
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
            .filter(|a| {
                matches!(
                    a.action,
                    Action::Create | Action::Update | Action::Replace | Action::Adopt
                )
            })
            .map(|a| desired.resources.get(&a.id).expect("desired object"))
            .collect();
        let r = (|| -> Result<()> {
            // ownership first: recorded before the host changes, kept whatever happens next
            claim(&mut ledger, &to_write, &changed, desired, paths);
            ledger::save(&paths.state_dir, &ledger)?;
            let items: Vec<fsutil::BatchItem<'_>> = to_write
                .iter()
                .map(|r| fsutil::BatchItem {
                    path: &r.path,
                    data: &r.content,
                    meta: Some(&r.meta),
                    beneath: (r.kind == Kind::File).then(|| paths.host_file_root(&r.path)),
                })
                .collect();
            fsutil::write_batch(&items, |n| {
                crate::failpoint::pause_at(crate::failpoint::APPLY_AFTER_WRITE, &n.to_string())
            })?;
            unit_files_changed |= to_write.iter().any(|r| r.kind.is_ini());
            for a in changed.iter().filter(|a| a.action == Action::Delete) {
                if stop_failed.contains(&a.id) || a.kind == Kind::Runtime {
                    continue;
                }
                let path = PathBuf::from(a.path.as_deref().unwrap_or_default());
                // one object that cannot be removed fails that object, not the run
                let beneath = (a.kind == Kind::File).then(|| paths.host_file_root(&path));
                if let Err(e) = fsutil::remove_synced_beneath(beneath, &path) {
                    diagnostics.push(diag(
                        &a.id,
                        a.unit.as_deref(),
                        format!("cannot remove: {e}"),
                    ));
                    continue;
                }
                ledger.release(&a.id);
                ledger.prune_dirs_above(&path);
                removed += 1;
                unit_files_changed |= a.kind.is_ini();
            }
            Ok(())
        })();
        (r, format!("{} written, {removed} removed", to_write.len()))
    });
    write_result?;

    // enable what should be enabled and is being (re)applied, *before* the reload: enabling
    // only writes links, and the one reload then loads the units together with the wants
    // that reference them (an unreferenced unit that finished - a oneshot, a start skipped
    // by its conditions - would otherwise be unloaded and forget how it ended)
    let to_enable: Vec<String> = changed
        .iter()
        .filter(|a| {
            a.enable == Some(true)
                && matches!(
                    a.action,
                    Action::Create
                        | Action::Update
                        | Action::Replace
                        | Action::Recover
                        | Action::Adopt
                )
        })
        .flat_map(|a| a.runtime_units())
        .collect();
    if !to_enable.is_empty() {
        phases.run("enable", || {
            let r = systemd.enable(&to_enable);
            (r, format!("{} units", to_enable.len()))
        })?;
    }

    let needs_reload = unit_files_changed || changed.iter().any(|a| a.action == Action::Recover);
    if needs_reload {
        phases.run("reload", || (systemd.reload(), "1 Reload()".to_string()))?;
    }

    // runtimes: install / switch / remove, each a persisted transaction with receipts
    let mut runtime_restarted: BTreeSet<String> = BTreeSet::new();
    let mut runtime_deferred: Vec<String> = Vec::new();
    if changed.iter().any(|a| a.kind == Kind::Runtime) {
        let res = phases.run("runtimes", || {
            let r = runtimes::run(
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

    // start / restart jobs in plan order (a template's instances in its place)
    let mut start_jobs: Vec<(JobKind, String, String)> = Vec::new();
    let mut recover_units: Vec<String> = Vec::new();
    for a in &changed {
        if skip_start.contains(&a.id) {
            continue;
        }
        let started = a
            .start
            .unwrap_or(a.kind == Kind::Unit && a.action == Action::Restart);
        let content_changed = a.digests.observed != a.digests.desired;
        let kind = match a.action {
            Action::Create | Action::Replace if started => JobKind::Start,
            Action::Adopt if started && !content_changed => JobKind::Start,
            Action::Update | Action::Adopt if started => JobKind::Restart,
            Action::Restart => JobKind::Restart,
            Action::Recover if started => JobKind::Restart,
            _ => continue,
        };
        for unit in a.runtime_units() {
            if kind == JobKind::Restart && runtime_restarted.contains(&unit) {
                continue; // restarted by its runtime's transaction, after the reload
            }
            if a.action == Action::Recover {
                recover_units.push(unit.clone());
            }
            start_jobs.push((kind, unit, a.id.clone()));
        }
    }
    // a unit systemd could not load is never started: it fails with systemd's own reason
    // (generated units: the Quadlet generator's); a unit core-ops does not manage that
    // systemd does not have is simply not restarted
    if !start_jobs.is_empty() {
        let names: Vec<String> = start_jobs.iter().map(|(_, u, _)| u.clone()).collect();
        let statuses = systemd.unit_states_brief(&names)?;
        // the generator's verdict on the written set, asked once for all generated units
        let quadlet_verdict = std::cell::OnceCell::new();
        for st in statuses.iter().filter(|s| s.load_state != "loaded") {
            let id = start_jobs
                .iter()
                .find(|(_, u, _)| *u == st.name)
                .map(|(_, _, id)| id.clone())
                .unwrap_or_default();
            start_jobs.retain(|(_, u, _)| *u != st.name);
            if desired.resources.contains_key(&id) {
                diagnostics.push(diag(
                    &id,
                    Some(&st.name),
                    not_loaded_reason(&id, st, || {
                        quadlet_verdict.get_or_init(|| crate::quadlet_check::check(desired, paths))
                    }),
                ));
            } else {
                tracing::warn!(unit = %st.name, load_state = %st.load_state, "not restarted: systemd has no loaded unit of that name");
            }
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
    let settle = if jobs_done
        .iter()
        .any(|j| !matches!(j.kind, JobKind::Stop | JobKind::StopAlone))
    {
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
        let mut started_ok: BTreeSet<String> = jobs_done
            .iter()
            .filter(|j| {
                !matches!(j.kind, JobKind::Stop | JobKind::StopAlone) && j.outcome.is_success()
            })
            .map(|j| j.unit.clone())
            .collect();
        // units already seen to run to completion count as finished when they are
        started_ok.extend(
            desired
                .resources
                .values()
                .filter(|r| {
                    owned
                        .get(&r.id)
                        .is_some_and(|o| o.runs_to_completion && o.digest == r.digest)
                })
                .filter_map(|r| r.unit.as_ref())
                .flat_map(|u| u.runtime_units()),
        );
        let r = verify::verify(
            desired,
            &removed,
            systemd,
            settle,
            &reported_only,
            preread,
            &started_ok,
        );
        (r, format!("settle {} ms", settle.as_millis()))
    })?;
    let completed = ran_to_completion(desired, &verification.units, &jobs_done);
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
        from_revision,
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
        completes_interrupted,
    };
    settle_ledger(&mut ledger, desired, outcome.is_converged(), &completed);
    let recorded = ledger::save(&paths.state_dir, &ledger)
        .and_then(|_| record(planned, paths, opts, &mut result, chain));
    match recorded {
        Ok(()) => Ok(result),
        // exit 3, not 1: the host changed; the journal stays for the next run to finish
        Err(e) if result.changed_objects > 0 => Err(Error::HostChanged(format!(
            "{e}; the in-flight journal is kept, so the next run re-applies and records this transition"
        ))),
        Err(e) => Err(e),
    }
}

/// Write status.json, then the results document and the receipt (for a transition), then
/// drop the in-flight journal. A transition is a run that changed objects or moved
/// `last_applied` to another revision (a new revision whose objects already match is still
/// a transition). The receipt comes last so a failure anywhere leaves no receipt and keeps
/// the journal: the next run re-applies and receipts the transition once, from where the
/// interrupted run began.
fn record(
    planned: &Planned,
    paths: &Paths,
    opts: &ApplyOptions,
    result: &mut ApplyResult,
    chain: receipts::ChainReport,
) -> Result<()> {
    let desired = &planned.desired;
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
        diagnostics.extend(planned.plan.reported_drift());
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
        crate::record::retention::trim_history(&mut snap.history, opts.retention.keep);
        snap.receipts = Some(receipts::health_after_run(&paths.state_dir, &chain));
        status::save(&paths.state_file, &snap)?;
    }
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
        let reason = match (&opts.kind, &result.completes_interrupted) {
            (ApplyKind::AutoRollback { reason }, _) => Some(reason.clone()),
            (_, Some(resumed)) => Some(resumed.clone()),
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
        // status was written before the receipt (so a failure leaves no receipt); its view of
        // the chain now takes the new head
        if opts.record_status
            && let Ok(mut snap) = status::load(&paths.state_file)
        {
            snap.receipts = Some(receipts::health_after_run(&paths.state_dir, &chain));
            status::save(&paths.state_file, &snap)?;
        }
    }
    journal::clear(&paths.state_dir)?;
    // retention never fails a run that recorded its outcome; it is retried by the next one
    if let Err(e) = crate::record::retention::enforce(&paths.state_dir, &opts.retention) {
        tracing::warn!("retention of the state dir: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
