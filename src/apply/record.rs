//! Record: judge the outcome of a run from its diagnostics, settle the ledger, and write
//! status.json, the results document and the receipt.

use std::collections::BTreeSet;

use super::phases::Run;
use super::{ApplyKind, ApplyOptions, ApplyResult, ownership};
use crate::config::Paths;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::normalize::sha256_hex;
use crate::model::time::now_rfc3339;
use crate::pipeline::{Planned, joined};
use crate::provenance::Provenance;
use crate::record::journal;
use crate::record::ledger;
use crate::record::receipts::{self, RECEIPT_SCHEMA_VERSION, ReconcileReceipt};
use crate::record::status::{self, HistoryEntry, RunRecord, SourceRecord, StatusSnapshot};
use crate::systemd::CallCounts;
use crate::verify::{Diagnostic, Outcome, Verification};

/// How the run ended: converged (with or without tolerated variance) when nothing is wrong;
/// partially applied when some changed object is fine; failed otherwise.
fn outcome(run: &Run<'_>, diagnostics: &[Diagnostic]) -> Outcome {
    if diagnostics.is_empty() {
        return if run
            .planned
            .plan
            .findings
            .iter()
            .any(|f| f.kind == "runtime_variance")
        {
            Outcome::ConvergedWithToleratedVariance
        } else {
            Outcome::Converged
        };
    }
    let bad: BTreeSet<&str> = diagnostics.iter().map(|d| d.id.as_str()).collect();
    let changed_ids: BTreeSet<&str> = run.changed.iter().map(|a| a.id.as_str()).collect();
    if !changed_ids.is_empty() && changed_ids.iter().any(|id| !bad.contains(id)) {
        Outcome::PartiallyApplied
    } else {
        Outcome::Failed
    }
}

/// Finish a run: outcome, results document, ledger, status and receipt. A failure to record
/// after the host changed is exit 3 (`HostChanged`), and the journal stays for the next run.
pub(super) fn finish(
    run: Run<'_>,
    verification: Verification,
    chain: receipts::ChainReport,
) -> Result<ApplyResult> {
    let completed = ownership::ran_to_completion(run.desired, &verification.units, &run.jobs_done);
    let mut diagnostics = run.diagnostics.clone();
    diagnostics.extend(verification.diagnostics.iter().cloned());
    diagnostics.sort_by(|a, b| (&a.id, &a.problem).cmp(&(&b.id, &b.problem)));
    diagnostics.dedup();
    let outcome = outcome(&run, &diagnostics);
    let (before, after) = (run.counts_before, run.systemd.counts());
    let calls = CallCounts {
        reloads: after.reloads - before.reloads,
        jobs: after.jobs - before.jobs,
        enablement_calls: after.enablement_calls - before.enablement_calls,
    };
    let (planned, paths, opts, desired) = (run.planned, run.paths, run.opts, run.desired);
    let last = planned
        .status
        .as_ref()
        .and_then(|s| s.last_applied.as_ref());
    let mut result = ApplyResult {
        schema_version: 1,
        kind: "CoreOpsApplyResult".into(),
        intent_checksum: planned.plan.checksum.clone(),
        core_ops: Provenance::current(),
        host: desired.host.clone(),
        desired_revision: desired.revision.commit.clone(),
        requested_ref: desired.revision.requested_ref.clone(),
        from_revision: run.from_revision,
        outcome,
        last_applied_advanced: outcome.is_converged()
            && opts.record_status
            && (!run.changed.is_empty()
                || last.is_none_or(|l| l.revision != desired.revision.commit)),
        started_at: run.started_at,
        finished_at: now_rfc3339(),
        phases: run.phases.list,
        jobs: run.jobs_done,
        settled: verification.settled,
        diagnostics,
        calls,
        changed_objects: run.changed.len(),
        receipt: None,
        results_path: None,
        rollback: None,
        quarantine: None,
        deferred: run.runtime_deferred,
        completes_interrupted: run.completes_interrupted,
    };
    let mut ledger = run.ledger;
    ownership::settle_ledger(&mut ledger, desired, outcome.is_converged(), &completed);
    let t0 = std::time::Instant::now();
    // written when it differs from the one on disk (the planned one, or the write phase's
    // claims), or was only seeded from status.json so far
    let on_disk = run.ledger_saved.as_ref().unwrap_or(&planned.ledger);
    let save_ledger = ledger != *on_disk || !ledger::path(&paths.state_dir).exists();
    let recorded = record(
        planned,
        paths,
        opts,
        &mut result,
        chain,
        save_ledger.then_some(&ledger),
    );
    tracing::debug!(
        record_ms = t0.elapsed().as_secs_f64() * 1000.0,
        ledger_written = save_ledger,
        "recorded"
    );
    match recorded {
        Ok(()) => Ok(result),
        // exit 3, not 1: the host changed; the journal stays for the next run to finish
        Err(e) if result.changed_objects > 0 => Err(Error::HostChanged(format!(
            "{e}; the in-flight journal is kept, so the next run re-applies and records this transition"
        ))),
        Err(e) => Err(e),
    }
}

/// Write the ledger (when it changed), status.json, the results document and the receipt
/// (for a transition) at once, then anchor the receipt as the chain's head and drop the
/// in-flight journal. A transition is a run that changed objects or moved `last_applied` to
/// another revision (a new revision whose objects already match is still a transition).
/// The receipt is prepared first (so status.json names the head it makes) and anchored
/// last; when any of the records fails, a receipt already written is taken back, so a
/// failure leaves no receipt and keeps the journal: the next run re-applies and receipts the
/// transition once, from where the interrupted run began.
fn record(
    planned: &Planned,
    paths: &Paths,
    opts: &ApplyOptions,
    result: &mut ApplyResult,
    chain: receipts::ChainReport,
    ledger: Option<&ledger::Ledger>,
) -> Result<()> {
    let transition = result.changed_objects > 0 || result.last_applied_advanced;
    let prepared = if transition {
        Some(prepare_transition(planned, paths, opts, result)?)
    } else {
        None
    };
    let snap = opts.record_status.then(|| {
        let head = prepared.as_ref().map(|t| &t.receipt);
        next_status(planned, paths, opts, result, &chain, head)
    });
    // none of these depends on another; the anchor waits for all of them
    let (written, receipt) = std::thread::scope(|scope| {
        let ledger = ledger.map(|l| scope.spawn(|| ledger::save(&paths.state_dir, l)));
        let results = prepared
            .as_ref()
            .map(|t| scope.spawn(|| fsutil::write_atomic(&t.results_path, &t.results, None)));
        let receipt = prepared.as_ref().map(|t| scope.spawn(|| t.receipt.write()));
        let status = match &snap {
            Some(snap) => save_status(planned, paths, snap, transition),
            None => Ok(()),
        };
        let others = [ledger, results]
            .into_iter()
            .flatten()
            .map(joined)
            .fold(status, |acc, r| acc.and(r));
        (others, receipt.map(joined))
    });
    if let Some(t) = prepared {
        match (written, receipt.expect("a transition writes its receipt")) {
            (Ok(()), Ok(())) => {
                let (_, doc) = t.receipt.anchor(&paths.state_dir)?;
                result.receipt = doc.get("id").and_then(|v| v.as_str()).map(str::to_string);
            }
            (Err(e), Ok(())) => {
                if let Err(w) = t.receipt.withdraw() {
                    tracing::warn!("take back the receipt of a run that could not record: {w}");
                }
                return Err(e);
            }
            (w, Err(e)) => return w.and(Err(e)),
        }
    } else {
        written?;
    }
    journal::clear(&paths.state_dir)?;
    // retention never fails a run that recorded its outcome; it is retried by the next one
    if let Err(e) = crate::record::retention::enforce(&paths.state_dir, &opts.retention) {
        tracing::warn!("retention of the state dir: {e}");
    }
    Ok(())
}

/// Write status.json: only `last_run` when nothing else in it moved, else the whole
/// snapshot.
fn save_status(
    planned: &Planned,
    paths: &Paths,
    snap: &StatusSnapshot,
    transition: bool,
) -> Result<()> {
    match (&snap.last_run, &planned.status) {
        // nothing else in the snapshot moved: one small write
        (Some(run), Some(old)) if !transition && same_but_last_run(old, snap) => {
            status::save_last_run(&paths.state_file, run)
        }
        // read under this lock when the run was planned: nothing to set aside
        _ if planned.status.is_some() => status::save_over_read(&paths.state_file, snap),
        _ => status::save(&paths.state_file, snap),
    }
}

/// The run as status.json's `last_run` shows it (an automatic rollback that converged is
/// `rolled_back`, with the reason first).
fn run_record(planned: &Planned, opts: &ApplyOptions, result: &ApplyResult) -> RunRecord {
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
    RunRecord {
        started_at: result.started_at.clone(),
        finished_at: result.finished_at.clone(),
        outcome,
        desired_revision: result.desired_revision.clone(),
        requested_ref: result.requested_ref.clone(),
        intent_checksum: result.intent_checksum.clone(),
        diagnostics,
    }
}

/// Whether two snapshots differ in nothing but `last_run` and when the receipt chain was
/// last checked.
fn same_but_last_run(old: &StatusSnapshot, new: &StatusSnapshot) -> bool {
    let strip = |s: &StatusSnapshot| {
        let mut s = s.clone();
        s.last_run = None;
        if let Some(r) = s.receipts.as_mut() {
            r.checked_at.clear();
        }
        s
    };
    strip(old) == strip(new)
}

/// status.json as this run leaves it: source, `last_run`, runtimes, `last_applied` +
/// history when it advanced, and the receipt chain with the head `appending` makes.
fn next_status(
    planned: &Planned,
    paths: &Paths,
    opts: &ApplyOptions,
    result: &ApplyResult,
    chain: &receipts::ChainReport,
    appending: Option<&receipts::PreparedReceipt>,
) -> StatusSnapshot {
    let desired = &planned.desired;
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
    snap.last_run = Some(run_record(planned, opts, result));
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
    snap.receipts = Some(receipts::health_after_run(
        &paths.state_dir,
        chain,
        appending,
    ));
    snap
}

/// A transition's records, not written yet: the results document and the reconcile
/// receipt that names its digest.
struct Transition {
    results_path: std::path::PathBuf,
    results: Vec<u8>,
    receipt: receipts::PreparedReceipt,
}

/// The results document and the receipt of a transition, built and checked against the
/// chain; [`record`] writes them.
fn prepare_transition(
    planned: &Planned,
    paths: &Paths,
    opts: &ApplyOptions,
    result: &mut ApplyResult,
) -> Result<Transition> {
    let hex = result.intent_checksum.trim_start_matches("sha256:");
    let stamp = result.finished_at.replace([':', '-'], "");
    let path = paths
        .state_dir
        .join("results")
        .join(format!("{stamp}-{}.json", &hex[..12.min(hex.len())]));
    result.results_path = Some(path.display().to_string());
    let bytes = fsutil::json_bytes(result);
    let results_digest = sha256_hex(&bytes);
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
    let receipt = receipts::prepare(
        &paths.state_dir,
        ReconcileReceipt {
            schema_version: RECEIPT_SCHEMA_VERSION,
            kind: "CoreOpsReconcileReceipt".into(),
            id: String::new(),
            sequence: 0,
            transition: transition.into(),
            host: planned.desired.host.clone(),
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
    Ok(Transition {
        results_path: path,
        results: bytes,
        receipt,
    })
}
