//! What core-ops owns, as one apply changes it: objects claimed in the ledger before they are
//! written, their roles settled after the run, and what the run learnt about them (units
//! that run to completion).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::Paths;
use crate::model::normalize::Kind;
use crate::plan::{Action, PlannedAction};
use crate::record::ledger::{self, Ledger};
use crate::record::status;
use crate::render::{DesiredState, Resource};
use crate::systemd::{JobKind, JobResult, UnitStatus};

/// Instances of a still desired template that core-ops enabled or started before and that
/// the template no longer names.
pub(super) fn dropped_instances<'a>(
    desired: &'a DesiredState,
    owned: &'a BTreeMap<String, status::AppliedResource>,
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

/// Desired objects whose units this run started and that then ran to completion on their
/// own (inactive, `Result=success`): a run-to-completion container or script, judged like a
/// oneshot from now on.
pub(super) fn ran_to_completion(
    desired: &DesiredState,
    states: &BTreeMap<String, UnitStatus>,
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
/// the writes will create); an adopted object stays marked as adopted. Returns whether that
/// changes what core-ops owns - an object, its path, its adoption or a directory - rather
/// than only the digest and role of objects it already owned.
///
/// Why the answer: only a change of ownership must be on disk before the host changes (a
/// crash must not leave a file nobody owns); new digests of owned objects are covered by
/// the in-flight journal until the run's end writes the ledger.
pub(super) fn claim(
    ledger: &mut Ledger,
    to_write: &[&Resource],
    changed: &[&PlannedAction],
    desired: &DesiredState,
    paths: &Paths,
) -> bool {
    let deps = crate::plan::desired_dependencies(desired);
    // the configured directories themselves are never core-ops' to remove, even when it
    // had to create them
    let roots: Vec<&std::path::Path> = [paths.unit_dir.as_path(), paths.quadlet_dir.as_path()]
        .into_iter()
        .chain(paths.host_file_roots.iter().map(PathBuf::as_path))
        .collect();
    let mut ownership_changes = false;
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
        let owned_alike = ledger
            .objects
            .get(&r.id)
            .is_some_and(|o| o.path == rec.path && o.adopted == rec.adopted);
        ownership_changes |= !owned_alike || made.iter().any(|d| !ledger.dirs.contains(d));
        ledger.claim(&r.id, rec, &made);
    }
    ownership_changes
}

/// After the run: owned objects that are still desired get their current role (enabled,
/// started, instances, order) while keeping the digest core-ops last wrote; owned objects
/// that left the desired state and are gone from the host are forgotten.
pub(super) fn settle_ledger(
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
