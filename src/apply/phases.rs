//! The phases of one apply, in the order they run, each a small method of [`Run`] named after
//! what it decides. `super::apply` calls them in sequence; the state they share (what changed,
//! what failed, the jobs run, the ledger) lives in [`Run`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use super::{ApplyOptions, PhaseReport, ownership, runtimes};
use crate::config::Paths;
use crate::error::Result;
use crate::fsutil;
use crate::model::normalize::Kind;
use crate::model::time::now_rfc3339;
use crate::model::unit_file::runtime_units;
use crate::pipeline::Planned;
use crate::plan::{Action, PlannedAction};
use crate::record::journal;
use crate::record::ledger::{self, Ledger};
use crate::record::status::AppliedResource;
use crate::render::{DesiredState, Resource};
use crate::systemd::{CallCounts, JobKind, JobResult, SettleRequest, Systemd};
use crate::verify::{self, Diagnostic, Removed, Verification};

/// The phases run so far, with their durations (the results document's `phases`).
pub(super) struct Phases {
    pub(super) list: Vec<PhaseReport>,
}

impl Phases {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> (T, String)) -> T {
        let (t0, _span) = Self::begin(name);
        let (v, detail) = f();
        self.done(name, t0, detail);
        v
    }

    /// A phase begins: its crash point (`apply::phase`), its start time and its log span.
    fn begin(name: &str) -> (Instant, tracing::span::EnteredSpan) {
        crate::failpoint::pause_at(crate::failpoint::APPLY_PHASE, name);
        let span = tracing::info_span!("phase", phase = name).entered();
        (Instant::now(), span)
    }

    /// Record a phase that began at `t0` and just ended.
    fn done(&mut self, name: &str, t0: Instant, detail: String) {
        let ms = t0.elapsed().as_millis() as u64;
        tracing::info!(phase = name, duration_ms = ms, "{detail}");
        self.list.push(PhaseReport {
            name: name.to_string(),
            duration_ms: ms,
            detail,
        });
    }
}

pub(super) fn diag(id: &str, unit: Option<&str>, problem: String) -> Diagnostic {
    Diagnostic {
        id: id.to_string(),
        unit: unit.map(str::to_string),
        problem,
    }
}

/// One apply in progress: its inputs and what the phases found so far.
pub(super) struct Run<'a> {
    pub(super) planned: &'a Planned,
    pub(super) desired: &'a DesiredState,
    pub(super) systemd: &'a dyn Systemd,
    pub(super) paths: &'a Paths,
    pub(super) opts: &'a ApplyOptions,
    /// What core-ops owned when the plan was made.
    pub(super) owned: &'a std::collections::BTreeMap<String, AppliedResource>,
    /// The ledger as this run changes it.
    pub(super) ledger: Ledger,
    /// The ledger as this run last saved it (the write phase saves its claims); `None`
    /// while the one on disk is still the planned one.
    pub(super) ledger_saved: Option<Ledger>,
    /// Every action that is not a no-op, in plan order.
    pub(super) changed: Vec<&'a PlannedAction>,
    pub(super) started_at: String,
    pub(super) from_revision: Option<String>,
    pub(super) completes_interrupted: Option<String>,
    pub(super) counts_before: CallCounts,
    pub(super) phases: Phases,
    pub(super) diagnostics: Vec<Diagnostic>,
    pub(super) jobs_done: Vec<JobResult>,
    /// Removed objects whose unit could not be stopped: their files are kept.
    stop_failed: BTreeSet<String>,
    /// Objects whose mountpoint could not be prepared: never started.
    skip_start: BTreeSet<String>,
    unit_files_changed: bool,
    /// Units the runtimes phase already restarted (after the reload).
    runtime_restarted: BTreeSet<String>,
    pub(super) runtime_deferred: Vec<String>,
}

impl<'a> Run<'a> {
    /// Begin: remove temp files a killed run left beside the objects this plan touches, and
    /// persist the in-flight journal before the host changes.
    pub(super) fn begin(
        planned: &'a Planned,
        systemd: &'a dyn Systemd,
        paths: &'a Paths,
        opts: &'a ApplyOptions,
    ) -> Result<Self> {
        let plan = &planned.plan;
        let last = planned
            .status
            .as_ref()
            .and_then(|s| s.last_applied.as_ref());
        let changed: Vec<&PlannedAction> = plan
            .actions
            .iter()
            .filter(|a| a.action != Action::NoOp)
            .collect();
        let started_at = now_rfc3339();
        // (a plan that changes nothing touches no object: nothing to clean beside them)
        if !changed.is_empty() {
            clean_temp_files(paths, &changed)?;
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
        Ok(Run {
            planned,
            desired: &planned.desired,
            systemd,
            paths,
            opts,
            owned: &planned.ledger.objects,
            ledger: planned.ledger.clone(),
            ledger_saved: None,
            changed,
            started_at,
            from_revision,
            completes_interrupted,
            counts_before: systemd.counts(),
            phases: Phases { list: Vec::new() },
            diagnostics: Vec::new(),
            jobs_done: Vec::new(),
            stop_failed: BTreeSet::new(),
            skip_start: BTreeSet::new(),
            unit_files_changed: false,
            runtime_restarted: BTreeSet::new(),
            runtime_deferred: Vec::new(),
        })
    }

    fn deletes(&self) -> impl Iterator<Item = &'a PlannedAction> + '_ {
        self.changed
            .iter()
            .copied()
            .filter(|a| a.action == Action::Delete)
    }

    /// Stop: removed units (already in reverse dependency order) that core-ops started or
    /// that run, mounts being replaced, and instances a template no longer names.
    pub(super) fn stop(&mut self) -> Result<()> {
        let stop_jobs: Vec<(JobKind, String)> = self
            .changed
            .iter()
            .filter(|a| {
                (a.action == Action::Delete
                    && (self
                        .owned
                        .get(&a.id)
                        .is_some_and(|r| r.started || r.kind == Kind::Mount)
                        || a.runtime_units()
                            .iter()
                            .any(|u| observed_running(self.planned, u))))
                    || (a.action == Action::Replace
                        && matches!(a.kind, Kind::Mount | Kind::Automount))
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
            .chain(
                ownership::dropped_instances(self.desired, self.owned)
                    .map(|u| (JobKind::StopAlone, u)),
            )
            .collect();
        if stop_jobs.is_empty() {
            return Ok(());
        }
        let (systemd, timeout) = (self.systemd, self.opts.job_timeout);
        let results = self.phases.run("stop", || {
            let r = systemd.run_jobs(&stop_jobs, timeout);
            (r, format!("{} stop jobs", stop_jobs.len()))
        })?;
        for (job, res) in stop_jobs.iter().zip(&results) {
            if !res.outcome.is_success() {
                let id = self
                    .changed
                    .iter()
                    .find(|a| a.runtime_units().contains(&job.1))
                    .map(|a| a.id.clone())
                    .unwrap_or_default();
                let what = self.why_stop_failed(&job.1);
                self.diagnostics.push(diag(
                    &id,
                    Some(&job.1),
                    format!("stop failed ({:?}): {what}", res.outcome),
                ));
                self.stop_failed.insert(id);
            }
        }
        self.jobs_done.extend(results);
        Ok(())
    }

    /// What a failed stop leaves: for a mount, what the kernel shows (through systemd's mount
    /// unit, which mirrors PID 1's mount table), not what the failed job suggests.
    fn why_stop_failed(&self, unit: &str) -> String {
        if !unit.ends_with(".mount") {
            return "it is left in place".to_string();
        }
        let state = self
            .systemd
            .unit_states_brief(&[unit.to_string()])
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|st| st.active_state);
        match state.as_deref() {
            Some("inactive") | Some("failed") => "it is no longer in the mount table although the stop job failed; the unit file is kept".to_string(),
            Some(state) => format!("the mount is busy or cannot be unmounted cleanly; it is still mounted (ActiveState={state}) and its unit file is kept"),
            None => "the mount is busy or cannot be unmounted cleanly; its unit file is kept".to_string(),
        }
    }

    /// Disable: removed units core-ops enabled, and units (or template instances) still
    /// desired but no longer to be enabled.
    pub(super) fn disable(&mut self) -> Result<()> {
        let to_disable: Vec<String> = self
            .deletes()
            .filter(|a| !self.stop_failed.contains(&a.id))
            .filter(|a| self.owned.get(&a.id).is_some_and(|r| r.enabled))
            .flat_map(|a| a.runtime_units())
            .chain(self.desired.resources.values().flat_map(|r| {
                let was = self
                    .owned
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
            }))
            .collect();
        if to_disable.is_empty() {
            return Ok(());
        }
        let systemd = self.systemd;
        self.phases.run("disable", || {
            let r = systemd.disable(&to_disable);
            (r, format!("{} units", to_disable.len()))
        })?;
        Ok(())
    }

    /// Prepare: create the mountpoints of mounts being (re)applied; a mount whose mountpoint
    /// cannot be there fails and is never started.
    pub(super) fn prepare(&mut self) {
        let (desired, changed) = (self.desired, &self.changed);
        let (diagnostics, skip_start) = (&mut self.diagnostics, &mut self.skip_start);
        self.phases.run("prepare", || {
            let mut n = 0;
            for a in changed {
                let Some(m) = desired
                    .resources
                    .get(&a.id)
                    .and_then(|r| r.unit.as_ref())
                    .and_then(|u| u.mount.as_ref())
                else {
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
                let problem = if !m.create_mountpoint {
                    format!(
                        "mountpoint missing and CreateMountpoint=false: {}",
                        m.where_
                    )
                } else if let Err(e) =
                    fsutil::beneath::create_dir_all(std::path::Path::new("/"), &p)
                {
                    format!("cannot create mountpoint: {e}")
                } else {
                    n += 1;
                    continue;
                };
                diagnostics.push(diag(&a.id, a.unit.as_deref(), problem));
                skip_start.insert(a.id.clone());
            }
            ((), format!("{n} mountpoints created"))
        });
    }

    /// Write: record ownership in the ledger first, then write every changed file (one
    /// durable batch) and remove the deleted ones, in plan order.
    pub(super) fn write(&mut self) -> Result<()> {
        let to_write: Vec<&Resource> = self
            .changed
            .iter()
            // runtimes are not files: the runtimes phase owns them
            .filter(|a| a.kind != Kind::Runtime)
            .filter(|a| {
                matches!(
                    a.action,
                    Action::Create | Action::Update | Action::Replace | Action::Adopt
                )
            })
            .filter_map(|a| self.desired.resources.get(&a.id))
            .collect();
        if to_write.is_empty() && self.deletes().next().is_none() {
            return Ok(()); // nothing to claim, write or remove: no phase, no ledger write
        }
        let (t0, _span) = Phases::begin("write");
        let r = self.write_and_remove(&to_write);
        let detail = format!(
            "{} written, {} removed",
            to_write.len(),
            r.as_ref().copied().unwrap_or(0)
        );
        self.phases.done("write", t0, detail);
        r.map(|_| ())
    }

    fn write_and_remove(&mut self, to_write: &[&Resource]) -> Result<usize> {
        let paths = self.paths;
        // ownership first: recorded before the host changes, kept whatever happens next (new
        // digests of objects already owned wait for the end of the run: the journal has them)
        let owns_more = ownership::claim(
            &mut self.ledger,
            to_write,
            &self.changed,
            self.desired,
            paths,
        );
        if owns_more || !ledger::path(&paths.state_dir).exists() {
            ledger::save(&paths.state_dir, &self.ledger)?;
            self.ledger_saved = Some(self.ledger.clone());
        }
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
        self.unit_files_changed |= to_write.iter().any(|r| r.kind.is_ini());
        let mut removed = 0;
        let deletes: Vec<&PlannedAction> = self.deletes().collect();
        for a in deletes {
            if self.stop_failed.contains(&a.id) || a.kind == Kind::Runtime {
                continue;
            }
            let path = PathBuf::from(a.path.as_deref().unwrap_or_default());
            // one object that cannot be removed fails that object, not the run
            let beneath = (a.kind == Kind::File).then(|| paths.host_file_root(&path));
            if let Err(e) = fsutil::remove_synced_beneath(beneath, &path) {
                self.diagnostics.push(diag(
                    &a.id,
                    a.unit.as_deref(),
                    format!("cannot remove: {e}"),
                ));
                continue;
            }
            self.ledger.release(&a.id);
            self.ledger.prune_dirs_above(&path);
            removed += 1;
            self.unit_files_changed |= a.kind.is_ini();
        }
        Ok(removed)
    }

    /// Enable what should be enabled and is being (re)applied, *before* the reload: enabling
    /// only writes links, and the one reload then loads the units together with the wants
    /// that reference them (an unreferenced unit that finished - a oneshot, a start skipped
    /// by its conditions - would otherwise be unloaded and forget how it ended).
    pub(super) fn enable(&mut self) -> Result<()> {
        let to_enable: Vec<String> = self
            .changed
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
        if to_enable.is_empty() {
            return Ok(());
        }
        let systemd = self.systemd;
        self.phases.run("enable", || {
            let r = systemd.enable(&to_enable);
            (r, format!("{} units", to_enable.len()))
        })?;
        Ok(())
    }

    /// Reload: ONE `Reload()`, only when unit files changed (or a unit is recovered).
    pub(super) fn reload(&mut self) -> Result<()> {
        let needs_reload =
            self.unit_files_changed || self.changed.iter().any(|a| a.action == Action::Recover);
        if needs_reload {
            let systemd = self.systemd;
            self.phases
                .run("reload", || (systemd.reload(), "1 Reload()".to_string()))?;
        }
        Ok(())
    }

    /// Runtimes: install / switch / remove, each a persisted transaction with receipts.
    pub(super) fn runtimes(&mut self) -> Result<()> {
        if !self.changed.iter().any(|a| a.kind == Kind::Runtime) {
            return Ok(());
        }
        let (changed, desired, systemd, paths, opts) = (
            &self.changed,
            self.desired,
            self.systemd,
            self.paths,
            self.opts,
        );
        let res = self.phases.run("runtimes", || {
            let r = runtimes::run(
                changed,
                desired,
                systemd,
                &paths.state_dir,
                opts.job_timeout,
                opts.settle,
            );
            let detail = r.as_ref().map(|r| r.detail()).unwrap_or_default();
            (r, detail)
        })?;
        self.diagnostics.extend(res.diagnostics);
        self.runtime_restarted = res.restarted;
        self.runtime_deferred = res.deferred;
        Ok(())
    }

    /// The start and restart jobs of this run, in plan order (a template's instances in its
    /// place): (job, unit, resource id), and the units to reset first (recovered ones).
    fn start_jobs(&self) -> (Vec<(JobKind, String, String)>, Vec<String>) {
        let mut start_jobs = Vec::new();
        let mut recover_units = Vec::new();
        for a in &self.changed {
            if self.skip_start.contains(&a.id) {
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
                if kind == JobKind::Restart && self.runtime_restarted.contains(&unit) {
                    continue; // restarted by its runtime's transaction, after the reload
                }
                if a.action == Action::Recover {
                    recover_units.push(unit.clone());
                }
                start_jobs.push((kind, unit, a.id.clone()));
            }
        }
        (start_jobs, recover_units)
    }

    /// A unit systemd could not load is never started: it fails with systemd's own reason
    /// (generated units: the Quadlet generator's); a unit core-ops does not manage that
    /// systemd does not have is simply not restarted. Returns the jobs that may run.
    fn drop_unloaded(
        &mut self,
        mut start_jobs: Vec<(JobKind, String, String)>,
    ) -> Result<Vec<(JobKind, String, String)>> {
        if start_jobs.is_empty() {
            return Ok(start_jobs);
        }
        let names: Vec<String> = start_jobs.iter().map(|(_, u, _)| u.clone()).collect();
        let statuses = self.systemd.unit_states_brief(&names)?;
        // the generator's verdict on the written set, asked once for all generated units
        let quadlet_verdict = std::cell::OnceCell::new();
        let (desired, paths) = (self.desired, self.paths);
        for st in statuses.iter().filter(|s| s.load_state != "loaded") {
            let id = start_jobs
                .iter()
                .find(|(_, u, _)| *u == st.name)
                .map(|(_, _, id)| id.clone())
                .unwrap_or_default();
            start_jobs.retain(|(_, u, _)| *u != st.name);
            if desired.resources.contains_key(&id) {
                let reason = not_loaded_reason(&id, st, || {
                    quadlet_verdict.get_or_init(|| crate::quadlet_check::check(desired, paths))
                });
                self.diagnostics.push(diag(&id, Some(&st.name), reason));
            } else {
                tracing::warn!(unit = %st.name, load_state = %st.load_state, "not restarted: systemd has no loaded unit of that name");
            }
        }
        Ok(start_jobs)
    }

    /// Start: the start and restart jobs, each waited for through `JobRemoved`.
    pub(super) fn start(&mut self) -> Result<()> {
        let (start_jobs, recover_units) = self.start_jobs();
        let start_jobs = self.drop_unloaded(start_jobs)?;
        if !recover_units.is_empty() {
            self.systemd.reset_failed(&recover_units)?;
        }
        if start_jobs.is_empty() {
            return Ok(());
        }
        let jobs: Vec<(JobKind, String)> =
            start_jobs.iter().map(|(k, u, _)| (*k, u.clone())).collect();
        let (systemd, timeout) = (self.systemd, self.opts.job_timeout);
        let results = self.phases.run("start", || {
            let r = systemd.run_jobs(&jobs, timeout);
            (r, format!("{} jobs", jobs.len()))
        })?;
        for ((_, unit, id), res) in start_jobs.iter().zip(&results) {
            if !res.outcome.is_success() {
                self.diagnostics.push(diag(
                    id,
                    Some(unit),
                    format!("{:?} job ended: {:?}", res.kind, res.outcome),
                ));
            }
        }
        self.jobs_done.extend(results);
        Ok(())
    }

    /// Verify: judge every desired and removed object - the files this run changed read
    /// again, the others as the plan found them - waiting only where a unit this run started
    /// can still fail (its settle window).
    pub(super) fn verify(&mut self) -> Result<Verification> {
        let removed: Vec<Removed> = self
            .deletes()
            .map(|a| Removed {
                id: a.id.clone(),
                path: PathBuf::from(a.path.as_deref().unwrap_or_default()),
                unit: a.unit.clone(),
            })
            .collect();
        let reported_only: BTreeSet<String> = self
            .planned
            .plan
            .actions
            .iter()
            .filter(|a| a.action == Action::NoOp && a.cause == crate::plan::Cause::Drift)
            .map(|a| a.id.clone())
            .collect();
        let started_ok = self.started_ok();
        let settle = self.settle_requests();
        let preread = match (&self.planned.units, self.changed.is_empty()) {
            (crate::observe::UnitObservation::Known(units), true) => Some(verify::Preread {
                files: &self.planned.observed,
                units,
            }),
            _ => None,
        };
        let changed: BTreeSet<String> = self.changed.iter().map(|a| a.id.clone()).collect();
        let input = verify::VerifyInput {
            desired: self.desired,
            removed: &removed,
            reported_only: &reported_only,
            started_ok: &started_ok,
            settle: &settle,
            preread,
            files_before: Some(verify::FilesBefore {
                observed: &self.planned.observed,
                changed: &changed,
            }),
            unit_dir: &self.paths.unit_dir,
        };
        let systemd = self.systemd;
        let verification = self.phases.run("verify", || {
            let r = verify::verify(&input, systemd);
            let detail = match &r {
                Ok(v) => settle_detail(v),
                Err(_) => String::new(),
            };
            (r, detail)
        })?;
        Ok(verification)
    }

    /// The units this run started (start or restart job `done`) that keep a started role,
    /// each with its settle window: `settle:` of its service, else of the host, else the
    /// `--settle-ms` default. A zero window asks for none.
    fn settle_requests(&self) -> Vec<SettleRequest> {
        let host = self.desired.host_yaml.settle.map(|s| s.0);
        let mut out: Vec<SettleRequest> = Vec::new();
        for j in self.jobs_done.iter().filter(|j| {
            matches!(j.kind, JobKind::Start | JobKind::Restart) && j.outcome.is_success()
        }) {
            let Some(r) = self.desired.runtime_unit_resource(&j.unit) else {
                continue;
            };
            let Some(role) = r.unit.as_ref().filter(|u| u.start) else {
                continue;
            };
            let window = role.settle.or(host).unwrap_or(self.opts.settle);
            // a Quadlet container's READY=1 comes from conmon when the container starts,
            // unless the payload itself notifies (Notify=true) or a health check does
            let container =
                r.kind == Kind::Quadlet && r.path.extension().is_some_and(|e| e == "container");
            let ready_means_started = container
                && !matches!(
                    role.value("Container", "Notify"),
                    Some("true" | "yes" | "1" | "on" | "healthy")
                );
            if !window.is_zero() && !out.iter().any(|r| r.unit == j.unit) {
                out.push(SettleRequest {
                    unit: j.unit.clone(),
                    window,
                    ready_means_started,
                });
            }
        }
        out
    }

    /// Units whose start or restart job of this run ended `done`, and units already seen to
    /// run to completion (they count as finished when they are).
    fn started_ok(&self) -> BTreeSet<String> {
        let mut started_ok: BTreeSet<String> = self
            .jobs_done
            .iter()
            .filter(|j| {
                !matches!(j.kind, JobKind::Stop | JobKind::StopAlone) && j.outcome.is_success()
            })
            .map(|j| j.unit.clone())
            .collect();
        started_ok.extend(
            self.desired
                .resources
                .values()
                .filter(|r| {
                    self.owned
                        .get(&r.id)
                        .is_some_and(|o| o.runs_to_completion && o.digest == r.digest)
                })
                .filter_map(|r| r.unit.as_ref())
                .flat_map(|u| u.runtime_units()),
        );
        started_ok
    }
}

/// The verify phase's detail: how many started units were watched, how long, and how many
/// were decided by their job result.
fn settle_detail(v: &Verification) -> String {
    let watched = v.settled.iter().filter(|s| s.watched).count();
    let waited = v.settled.iter().map(|s| s.waited_ms).max().unwrap_or(0);
    let early = v.settled.iter().filter(|s| s.ended_by.is_some()).count();
    format!(
        "{} started units: {watched} watched (longest wait {waited} ms, {early} ended early by a signal), {} decided by their job",
        v.settled.len(),
        v.settled.len() - watched
    )
}

/// Temp files a killed run left beside any object this plan touches.
fn clean_temp_files(paths: &Paths, changed: &[&PlannedAction]) -> Result<()> {
    let mut dirs: BTreeSet<PathBuf> = [paths.unit_dir.clone(), paths.quadlet_dir.clone()].into();
    dirs.extend(
        changed
            .iter()
            .filter_map(|a| a.path.as_ref())
            .filter_map(|p| std::path::Path::new(p).parent().map(PathBuf::from)),
    );
    for dir in &dirs {
        fsutil::clean_temp_files(dir)?;
    }
    Ok(())
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
