//! The stages chained up to the plan: resolve the target, read the commit, render, observe,
//! plan. `plan`, `explain`, `apply` and `agent` all start here, so they can never disagree
//! about what the desired state or the host looks like.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::Paths;
use crate::error::{Error, Result};
use crate::observe::{ObservedFile, UnitObservation, UnitStateSource};
use crate::plan::{self, Plan, PlanInput};
use crate::quadlet_check;
use crate::record::ledger::{self, Ledger};
use crate::record::status::{self, StatusSnapshot};
use crate::record::target;
use crate::render::{self, DesiredState};
use crate::source::{Revision, Source};
use crate::trust;
use crate::unit_check;

/// Where desired state should come from, after flags, environment and `init` were consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// Repository.
    pub repo: String,
    /// Requested ref.
    pub requested_ref: String,
    /// Host name.
    pub host: String,
    /// Pre-existing host paths the operator asked core-ops to take over (`--adopt`).
    pub adopt: BTreeSet<PathBuf>,
}

/// Options as the operator gave them (all optional).
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    /// `--repo`.
    pub repo: Option<String>,
    /// `--rev`.
    pub rev: Option<String>,
    /// `--host`.
    pub host: Option<String>,
    /// `--adopt PATH` (repeatable).
    pub adopt: Vec<PathBuf>,
}

/// Host name from `/etc/hostname` (or the kernel's), trimmed.
///
/// Why gethostname(2) and not `/proc/sys/kernel/hostname`: core-ops.service has
/// `ProcSubset=pid`, which hides `/proc/sys`.
pub fn default_host() -> Result<String> {
    let kernel = || {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
    };
    let etc = std::fs::read_to_string("/etc/hostname").ok();
    for s in [etc, kernel()].into_iter().flatten() {
        let h = s.trim();
        if !h.is_empty() {
            return Ok(h.to_string());
        }
    }
    Err(Error::Config(
        "cannot tell the host name: pass --host or set CORE_OPS_HOST".into(),
    ))
}

/// Flag/env first, then the persisted target of `core-ops init`, then defaults.
pub fn resolve_target(paths: &Paths, opts: &TargetOptions) -> Result<ResolvedTarget> {
    let persisted = target::load(&paths.target_file())?;
    let repo = match (&opts.repo, &persisted) {
        (Some(r), _) => r.clone(),
        (None, Some(t)) => t.repo.clone(),
        (None, None) => {
            return Err(Error::Config(
                "no desired-state repository: pass --repo, set CORE_OPS_REPO, or run `core-ops init REPO [REF]`"
                    .into(),
            ));
        }
    };
    let requested_ref = match (&opts.rev, &persisted) {
        (Some(r), _) => r.clone(),
        (None, Some(t)) if opts.repo.is_none() || opts.repo.as_deref() == Some(&t.repo) => {
            t.requested_ref.clone()
        }
        _ => "main".to_string(),
    };
    let host = match &opts.host {
        Some(h) => h.clone(),
        None => default_host()?,
    };
    Ok(ResolvedTarget {
        repo,
        requested_ref,
        host,
        adopt: opts.adopt.iter().cloned().collect(),
    })
}

/// The status snapshot, or why there is none (as a warning for the plan).
pub fn load_status(paths: &Paths) -> (Option<StatusSnapshot>, Option<String>) {
    match status::load(&paths.state_file) {
        Ok(s) => (Some(s), None),
        Err(absent) => (
            None,
            Some(format!(
                "no usable status snapshot ({absent}); planning as if nothing was applied"
            )),
        ),
    }
}

/// Everything computed up to and including the plan.
#[derive(Debug)]
pub struct Planned {
    /// The target used.
    pub target: ResolvedTarget,
    /// Desired state.
    pub desired: DesiredState,
    /// The snapshot the plan was based on.
    pub status: Option<StatusSnapshot>,
    /// Observed files.
    pub observed: BTreeMap<String, ObservedFile>,
    /// Observed units.
    pub units: UnitObservation,
    /// What core-ops owns on the host (the ownership ledger the plan was based on).
    pub ledger: Ledger,
    /// The plan.
    pub plan: Plan,
}

/// Open the repository and read one revision of it for `host`, once the trust policy
/// accepted the commit (its signature is checked before the tree is read); the tree is read
/// lazily, only where render asks, within `paths.read_limits`.
pub fn read_revision(
    paths: &Paths,
    repo: &str,
    requested_ref: &str,
    host: &str,
) -> Result<(Source, Revision, crate::source::RevisionTree)> {
    read_trusted(paths, repo, requested_ref, host).map(|(s, r, snap, _)| (s, r, snap))
}

/// The commit `rev` names in the repository (annotated tags peeled), or `None` when it names
/// none (or the repository cannot be read).
pub fn resolve_commit(paths: &Paths, repo: &str, rev: &str) -> Option<String> {
    let source = Source::open_with(repo, &paths.state_dir, &paths.remote).ok()?;
    source.resolve(rev).ok().map(|r| r.commit)
}

fn read_trusted(
    paths: &Paths,
    repo: &str,
    requested_ref: &str,
    host: &str,
) -> Result<(Source, Revision, crate::source::RevisionTree, trust::Trust)> {
    let source = Source::open_with(repo, &paths.state_dir, &paths.remote)?;
    let revision = source.resolve(requested_ref)?;
    let policy = trust::policy_for(&paths.trust_file, source.repository(), &revision, host)?;
    trust::verify_commit(source.repository(), &revision, &policy)?;
    let snapshot = source.tree(&revision, paths.read_limits)?;
    Ok((source, revision, snapshot, policy))
}

/// Render, observe and plan one revision for the target host. A revision that does not
/// descend from `last_applied` is refused here (a rollback goes through `plan_pinned`).
///
/// The records (status.json and the ledger, ~160 KB each with 200 services) are read on a
/// second thread while the revision is rendered; the files the ledger says core-ops owns are
/// read there next ([`crate::observe::preview`]) and systemd is asked about their units on a
/// third ([`UnitsAhead`]): none of it needs the render, and the plan-time validators start
/// as soon as the render and the records are there, before that look ahead is awaited.
pub fn plan_revision(
    paths: &Paths,
    target: &ResolvedTarget,
    units_source: &dyn UnitStateSource,
) -> Result<Planned> {
    let t0 = std::time::Instant::now();
    let (source, revision, snapshot, policy) =
        read_trusted(paths, &target.repo, &target.requested_ref, &target.host)?;
    let t1 = std::time::Instant::now();
    std::thread::scope(|scope| {
        // the guessed validation first: systemd-analyze is the longest step of a change
        let guess = guess_changed(paths, &source, &snapshot, &revision, &target.host);
        let guessed = guess
            .clone()
            .map(|g| scope.spawn(move || validate(&g.partial, &g.services, paths)));
        let (records_tx, records_rx) = std::sync::mpsc::channel();
        let ahead = scope.spawn(move || {
            let records = Records::load(paths);
            let owned = records.ledger.objects.clone();
            // the render waits for the records only; the look ahead goes on beside the plan
            let _ = records_tx.send(records);
            let names = plan::owned_units(&owned);
            let units = scope.spawn(move || UnitsAhead::observe(paths, units_source, names));
            let preview = crate::observe::preview::preview(&owned, paths);
            Ahead {
                preview,
                units: joined(units),
            }
        });
        let desired = render::render(&snapshot, &revision, &target.host, paths);
        let Ok(records) = records_rx.recv() else {
            // the records thread ended without sending: it panicked
            match ahead.join() {
                Err(p) => std::panic::resume_unwind(p),
                Ok(_) => unreachable!("the records thread sends before it looks ahead"),
            }
        };
        if let Some(last) = records.last_applied() {
            trust::check_descent(source.repository(), &last.revision, &revision, &policy)?;
        }
        let desired = desired?;
        tracing::debug!(
            source_ms = (t1 - t0).as_secs_f64() * 1000.0,
            render_ms = t1.elapsed().as_secs_f64() * 1000.0,
            "revision read and rendered"
        );
        plan_observed(
            paths,
            target,
            source.location(),
            desired,
            units_source,
            records,
            Some(LookedAhead {
                host: ahead,
                guessed: guess.zip(guessed),
            }),
        )
    })
}

/// What [`plan_revision`] started before the render was done: the look at the host, and
/// validation of a guess of what changed.
struct LookedAhead<'s> {
    host: std::thread::ScopedJoinHandle<'s, Ahead>,
    guessed: Option<(Guess, std::thread::ScopedJoinHandle<'s, Checks>)>,
}

/// The verdict of both validators.
type Checks = (quadlet_check::QuadletCheck, unit_check::UnitCheck);

/// Services rendered on their own before the whole revision, so that plan-time validation
/// can start on them early: those whose `services/<name>/` tree differs from the last
/// applied commit's.
///
/// Why: systemd-analyze takes ~14 ms; started after the whole render (~6 ms for 200
/// services) the plan of a one-service change waits for it. A guess is used only when it is
/// exactly what the whole render says changed, with the same objects (see `guess_holds`).
#[derive(Debug, Clone)]
struct Guess {
    services: BTreeSet<String>,
    partial: DesiredState,
}

/// The services whose directory differs from the last applied commit's, rendered on their
/// own, when nothing else this host reads changed (`hosts/<host>/` and `runtimes/` are the
/// same trees), at most a few did, and none of them has a Quadlet file (the Quadlet
/// generator judges the whole Quadlet set); `None` otherwise. A new revision of a converged
/// host costs the few tree reads of the last applied commit this needs.
fn guess_changed(
    paths: &Paths,
    source: &Source,
    snapshot: &crate::source::RevisionTree,
    revision: &Revision,
    host: &str,
) -> Option<Guess> {
    const AT_MOST: usize = 8;
    let last = status::load_last_applied_revision(&paths.state_file)?;
    if last == revision.commit {
        return None;
    }
    let before = Revision {
        commit: last,
        requested_ref: String::new(),
    };
    let old = source.tree(&before, paths.read_limits).ok()?;
    for dir in [format!("hosts/{host}"), "runtimes".to_string()] {
        if old.dir_id(&dir).ok()? != snapshot.dir_id(&dir).ok()? {
            return None;
        }
    }
    let was = old.child_ids("services").ok()?;
    let differing: BTreeSet<String> = snapshot
        .child_ids("services")
        .ok()?
        .into_iter()
        .filter(|(name, id)| was.get(name) != Some(id))
        .map(|(name, _)| name)
        .collect();
    if differing.is_empty() || differing.len() > AT_MOST {
        return None;
    }
    let partial = render::render_only(snapshot, revision, host, paths, &differing).ok()?;
    let services: BTreeSet<String> = partial
        .resources
        .values()
        .map(|r| r.service.clone())
        .collect();
    (!services.is_empty() && !has_quadlet(&partial)).then_some(Guess { services, partial })
}

/// Whether any Quadlet file is desired: the generator judges the whole Quadlet set, so a
/// verdict on part of the desired state is not the verdict on all of it.
fn has_quadlet(desired: &DesiredState) -> bool {
    desired
        .resources
        .values()
        .any(|r| r.kind == crate::model::normalize::Kind::Quadlet)
}

/// Whether the validators' verdict on a guess is the verdict on what the plan validates: the
/// same services, rendered the same, and no Quadlet file anywhere in the desired state.
fn guess_holds(guess: &Guess, desired: &DesiredState, changed: &BTreeSet<String>) -> bool {
    guess.services == *changed
        && !has_quadlet(desired)
        && services_subset(desired, changed) == services_subset(&guess.partial, changed)
}

/// Render, observe and plan one fixed commit (rollback), showing `requested_ref` as the ref
/// it was once applied as.
pub fn plan_pinned(
    paths: &Paths,
    target: &ResolvedTarget,
    commit: &str,
    requested_ref: &str,
    units_source: &dyn UnitStateSource,
) -> Result<Planned> {
    let (source, mut revision, snapshot) =
        read_revision(paths, &target.repo, commit, &target.host)?;
    revision.requested_ref = requested_ref.to_string();
    let desired = render::render(&snapshot, &revision, &target.host, paths)?;
    plan_desired(paths, target, source.location(), desired, units_source)
}

/// Observe and plan an already rendered desired state.
///
/// The Quadlet generator and systemd-analyze judge what is about to be written, before it
/// is. A plan that writes nothing (every object already matches what was applied, nothing
/// interrupted) has nothing for them to judge: systemd loaded these very files, and its
/// verdict (LoadState) is what the plan and verification read. That is the no-op path of
/// every agent tick: no child process, no temp files. When the desired state differs from
/// what core-ops last wrote, the validators start on the services concerned while the host
/// is observed and the plan is made; their verdict is used when the plan touches exactly
/// those services (else they run again on the services it does touch).
pub fn plan_desired(
    paths: &Paths,
    target: &ResolvedTarget,
    repo_display: &str,
    desired: DesiredState,
    units_source: &dyn UnitStateSource,
) -> Result<Planned> {
    let records = Records::load(paths);
    plan_observed(
        paths,
        target,
        repo_display,
        desired,
        units_source,
        records,
        None,
    )
}

/// The result of a scoped thread (its panic goes on in this one).
pub(crate) fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// What core-ops recorded of the host: the status snapshot and the ownership ledger, each
/// with why it could not be used (a warning for the plan).
struct Records {
    status: Option<StatusSnapshot>,
    status_warning: Option<String>,
    ledger: Ledger,
    ledger_warning: Option<String>,
}

/// The state of `names` as systemd reports it, with enablement read from the unit dir where
/// systemd did not say (one directory walk instead of a D-Bus call per unit).
fn units_with_enablement(
    paths: &Paths,
    source: &dyn UnitStateSource,
    names: &[String],
) -> UnitObservation {
    let mut units = source.observe_units(names);
    if let UnitObservation::Known(map) = &mut units {
        crate::observe::enablement_from_disk(&paths.unit_dir, map);
    }
    units
}

/// What was observed of the host while the revision was rendered: the owned files and the
/// state of the owned units.
struct Ahead {
    preview: crate::observe::preview::Preview,
    units: UnitsAhead,
}

/// The state of the units core-ops owns, asked for while the revision is rendered, with
/// their enablement read from disk.
///
/// Why: on a converged host these are exactly the units the plan needs; asking systemd is
/// one call that mostly waits for its answer.
struct UnitsAhead {
    names: BTreeSet<String>,
    units: UnitObservation,
}

impl UnitsAhead {
    fn observe(paths: &Paths, source: &dyn UnitStateSource, names: BTreeSet<String>) -> Self {
        let list: Vec<String> = names.iter().cloned().collect();
        let units = units_with_enablement(paths, source, &list);
        UnitsAhead { names, units }
    }

    /// The observation of `wanted`, when every one of them was asked for (only those kept:
    /// the plan's observed digest covers exactly the units it needs).
    fn of(&self, wanted: &[String]) -> Option<UnitObservation> {
        if !wanted.iter().all(|n| self.names.contains(n)) {
            return None;
        }
        Some(match &self.units {
            UnitObservation::Known(map) => UnitObservation::Known(
                wanted
                    .iter()
                    .filter_map(|n| map.get_key_value(n))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            unknown => unknown.clone(),
        })
    }
}

impl Records {
    /// Read status.json, then the ledger (seeded from its `last_applied` when there is none).
    fn load(paths: &Paths) -> Records {
        let t0 = std::time::Instant::now();
        let (status, status_warning) = load_status(paths);
        let last = status.as_ref().and_then(|s| s.last_applied.as_ref());
        let (ledger, ledger_warning) = ledger::load(&paths.state_dir, last);
        tracing::debug!(
            records_ms = t0.elapsed().as_secs_f64() * 1000.0,
            "records read"
        );
        Records {
            status,
            status_warning,
            ledger,
            ledger_warning,
        }
    }

    fn last_applied(&self) -> Option<&crate::model::applied::LastApplied> {
        self.status.as_ref().and_then(|s| s.last_applied.as_ref())
    }
}

/// [`plan_desired`] with the records already read (by [`plan_revision`], beside the render,
/// which also looks ahead at the host - joined once the validators are started - and may
/// have started validation of a guess of what changed: used when the guess holds).
fn plan_observed(
    paths: &Paths,
    target: &ResolvedTarget,
    repo_display: &str,
    desired: DesiredState,
    units_source: &dyn UnitStateSource,
    records: Records,
    looked_ahead: Option<LookedAhead<'_>>,
) -> Result<Planned> {
    let last = records.last_applied();
    let ledger = &records.ledger;
    let changed = services_changed_since_written(&desired, &ledger.objects);
    let (ahead, guessed) = match looked_ahead {
        Some(l) => (Some(l.host), l.guessed),
        None => (None, None),
    };
    let (observed, units, plan) = std::thread::scope(|scope| {
        let holds = guessed
            .as_ref()
            .map(|(g, _)| guess_holds(g, &desired, &changed));
        if let Some(holds) = holds {
            tracing::debug!(
                holds,
                services = ?changed,
                "validation started before the render: the guess of what changed"
            );
        }
        let early: Option<Box<dyn FnOnce() -> Checks + '_>> = match guessed {
            Some((_, h)) if holds == Some(true) => Some(Box::new(move || joined(h))),
            _ => (!changed.is_empty()).then(|| {
                let h = scope.spawn(|| validate(&desired, &changed, paths));
                Box::new(move || joined(h)) as Box<dyn FnOnce() -> Checks + '_>
            }),
        };
        let ahead = ahead.map(joined);
        let Observed {
            files: observed,
            units,
            foreign_dropins,
        } = observe_host(paths, &desired, ledger, ahead.as_ref(), units_source);
        let mut warnings: Vec<String> = records
            .status_warning
            .iter()
            .chain(&records.ledger_warning)
            .cloned()
            .collect();
        warnings.extend(crate::runtime::inflight_warnings(&paths.state_dir));
        let inputs = Inputs {
            desired: &desired,
            repo: repo_display,
            last,
            ledger,
            adopt: &target.adopt,
            observed: &observed,
            units: &units,
            interrupted: interrupted_objects(paths, &mut warnings),
            foreign_dropins,
        };
        let t3 = std::time::Instant::now();
        let unchecked = plan::plan(inputs.plan_input(warnings.clone(), None));
        tracing::debug!(plan_ms = t3.elapsed().as_secs_f64() * 1000.0, "planned");
        let plan = if unchecked
            .actions
            .iter()
            .all(|a| a.action == plan::Action::NoOp)
        {
            unchecked
        } else {
            let touched = services_touched(&desired, &unchecked);
            let checks = match early {
                Some(early) if touched == changed => early(),
                _ => validate(&desired, &touched, paths),
            };
            checked_plan(&inputs, unchecked, warnings, checks)
        };
        (observed, units, plan)
    });
    Ok(Planned {
        target: target.clone(),
        desired,
        status: records.status,
        observed,
        units,
        ledger: records.ledger,
        plan,
    })
}

/// The plan with the validators' verdict: the plan already made when they found nothing
/// (the same input makes the same plan), else made again with their rejections, findings
/// and warnings.
fn checked_plan(
    inputs: &Inputs<'_>,
    unchecked: Plan,
    mut warnings: Vec<String>,
    (quadlet, units): Checks,
) -> Plan {
    let found_nothing = quadlet.rejected.is_empty()
        && quadlet.warnings.is_empty()
        && units.rejected.is_empty()
        && units.findings.is_empty()
        && units.warnings.is_empty();
    if found_nothing {
        return unchecked;
    }
    warnings.extend(quadlet.warnings.iter().cloned());
    warnings.extend(units.warnings.iter().cloned());
    plan::plan(inputs.plan_input(warnings, Some((&quadlet, units))))
}

/// What the host has of what core-ops manages: the files (a file byte-identical to the
/// desired one is not parsed again), the units with enablement read from disk, and the
/// drop-ins core-ops did not write. The files are read on a second thread while systemd is
/// asked about the units (they depend on nothing of each other).
fn observe_host(
    paths: &Paths,
    desired: &DesiredState,
    ledger: &Ledger,
    ahead: Option<&Ahead>,
    units_source: &dyn UnitStateSource,
) -> Observed {
    let preview = ahead.map(|a| &a.preview);
    let t0 = std::time::Instant::now();
    std::thread::scope(|scope| {
        let files = scope.spawn(|| {
            let observed = crate::observe::observe_files_expecting(
                &plan::managed_paths(desired, &ledger.objects),
                paths,
                Some(desired),
                preview,
            );
            (observed, t0.elapsed())
        });
        let wanted = plan::managed_units(desired, &ledger.objects);
        let units = ahead
            .and_then(|a| a.units.of(&wanted))
            .unwrap_or_else(|| units_with_enablement(paths, units_source, &wanted));
        let units_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let foreign_dropins = crate::observe::foreign_dropins(desired, &paths.unit_dir, preview);
        let (files, files_took) = joined(files);
        tracing::debug!(
            files_ms = files_took.as_secs_f64() * 1000.0,
            units_ms,
            all_ms = t0.elapsed().as_secs_f64() * 1000.0,
            "observed"
        );
        Observed {
            files,
            units,
            foreign_dropins,
        }
    })
}

/// The host as [`observe_host`] found it.
struct Observed {
    files: BTreeMap<String, ObservedFile>,
    units: UnitObservation,
    foreign_dropins: BTreeMap<String, Vec<PathBuf>>,
}

/// What the plan is made from, besides its warnings and the validators' verdicts.
struct Inputs<'a> {
    desired: &'a DesiredState,
    repo: &'a str,
    last: Option<&'a crate::model::applied::LastApplied>,
    ledger: &'a Ledger,
    adopt: &'a BTreeSet<PathBuf>,
    observed: &'a BTreeMap<String, ObservedFile>,
    units: &'a UnitObservation,
    interrupted: BTreeSet<String>,
    foreign_dropins: BTreeMap<String, Vec<PathBuf>>,
}

impl Inputs<'_> {
    fn plan_input(
        &self,
        warnings: Vec<String>,
        checks: Option<(&quadlet_check::QuadletCheck, unit_check::UnitCheck)>,
    ) -> PlanInput<'_> {
        let (invalid_quadlet, invalid_units, findings) = match checks {
            Some((q, u)) => (
                q.rejected.clone(),
                u.rejected,
                u.findings
                    .into_iter()
                    .map(|(id, reason)| plan::Finding {
                        kind: "warning".into(),
                        id,
                        reason,
                    })
                    .collect(),
            ),
            None => Default::default(),
        };
        PlanInput {
            desired: self.desired,
            repo: self.repo,
            last_applied: self.last,
            owned: &self.ledger.objects,
            adopt: self.adopt,
            observed: self.observed,
            units: self.units,
            warnings,
            interrupted: self.interrupted.clone(),
            invalid_quadlet,
            foreign_dropins: self.foreign_dropins.clone(),
            invalid_units,
            findings,
        }
    }
}

/// The real generator on the Quadlet set, then systemd's own parser on the merged units of
/// `services`, the generator's output included (the other services are on the host as
/// desired, where the verify finds them through the host's unit path; a change of one
/// service of 200 does not re-verify 400 files).
fn validate(desired: &DesiredState, services: &BTreeSet<String>, paths: &Paths) -> Checks {
    let quadlet = quadlet_check::check(desired, paths);
    let units = unit_check::check(&services_subset(desired, services), paths, &quadlet);
    (quadlet, units)
}

/// The objects an interrupted run was changing (from the in-flight journal), re-applied by
/// this plan; a warning says so (or why the journal could not be read).
fn interrupted_objects(paths: &Paths, warnings: &mut Vec<String>) -> BTreeSet<String> {
    match crate::record::journal::load(&paths.state_dir) {
        Ok(Some(j)) => {
            warnings.push(format!(
                "a previous run (plan {}) was interrupted at {}; its objects are re-applied",
                j.intent_checksum, j.started_at
            ));
            j.objects.into_iter().collect()
        }
        Ok(None) => BTreeSet::new(),
        Err(e) => {
            warnings.push(e.to_string());
            BTreeSet::new()
        }
    }
}

/// The services with an object to write or restart in `plan` (what plan-time validation
/// judges).
fn services_touched(desired: &DesiredState, plan: &Plan) -> BTreeSet<String> {
    plan.actions
        .iter()
        .filter(|a| a.action != plan::Action::NoOp)
        .filter_map(|a| desired.resources.get(&a.id))
        .map(|r| r.service.clone())
        .collect()
}

/// The services with an object that differs from what core-ops last wrote (or that it never
/// wrote and the host does not have): what a plan most likely writes, known from the ledger
/// before the host is observed. A file core-ops does not own but the host already has is
/// left to the plan (kept as it is, adopted or refused), so a converged host guesses nothing.
fn services_changed_since_written(
    desired: &DesiredState,
    owned: &BTreeMap<String, crate::model::applied::AppliedResource>,
) -> BTreeSet<String> {
    desired
        .resources
        .values()
        .filter(|r| match owned.get(&r.id) {
            Some(o) => o.digest != r.digest,
            None => std::fs::symlink_metadata(&r.path).is_err(),
        })
        .map(|r| r.service.clone())
        .collect()
}

/// The part of the desired state that belongs to `services`.
fn services_subset(desired: &DesiredState, services: &BTreeSet<String>) -> DesiredState {
    DesiredState {
        resources: desired
            .resources
            .iter()
            .filter(|(_, r)| services.contains(&r.service))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect(),
        host: desired.host.clone(),
        revision: desired.revision.clone(),
        host_yaml: desired.host_yaml.clone(),
        runtimes: desired.runtimes.clone(),
    }
}
