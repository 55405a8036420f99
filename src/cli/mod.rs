//! The binary's edge: parse options, run one command, print its view model as JSON or text,
//! and decide the exit code in exactly one place ([`ExitStatus`]).

pub mod args;
pub mod output;
pub mod surface;

use std::io::Write;
use std::path::Path;

use args::{ApplyTuning, Cli, Command, EvidenceCommand, ReceiptsCommand, TargetArgs};

use std::time::Duration;

use crate::apply::{ApplyKind, ApplyOptions};
use crate::config::{Paths, QuadletGenerator};
use crate::error::Error;
use crate::explain;
use crate::fsutil;
use crate::lock::StateLock;
use crate::observe::{NoSystemd, UnitStateSource};
use crate::pipeline::{self, ResolvedTarget, TargetOptions};
use crate::plan;
use crate::reconcile;
use crate::record::{control, metrics, receipts};
use crate::record::{status, target};
use crate::source::Source;
use crate::systemd::dbus::DbusSystemd;

/// Exit codes (documented in README.md, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: success; for `plan --detailed-exitcode` and `agent`: nothing to change.
    Ok = 0,
    /// 1: error (bad input, unreachable repository, systemd error...). Nothing was changed
    /// unless the message says so.
    Error = 1,
    /// 2: `plan --detailed-exitcode`: changes present; `agent`: changed and converged.
    Changes = 2,
    /// 3: `apply`/`agent`: the host did not converge (failed, partially applied, rolled
    /// back); `last_applied` was not advanced.
    NotConverged = 3,
    /// 4: `apply`/`agent`: the desired revision is quarantined (non_converging or
    /// oscillating); nothing was done. A new desired revision or `core-ops resume` lifts it.
    Quarantined = 4,
    /// 5: the remote repository could not be fetched (unreachable, DNS, timeout,
    /// authentication, host key, TLS); nothing was planned or changed, the host stays on its
    /// last applied revision, and the next run retries.
    FetchFailed = 5,
    /// 75 (EX_TEMPFAIL): another core-ops run holds the lock; try again later.
    Locked = 75,
}

/// Map a library error to an exit status.
pub fn exit_for(err: &Error) -> ExitStatus {
    match err {
        Error::Locked(_) => ExitStatus::Locked,
        Error::Fetch(_) => ExitStatus::FetchFailed,
        // 1 means "nothing changed"; this run did change the host
        Error::HostChanged(_) => ExitStatus::NotConverged,
        _ => ExitStatus::Error,
    }
}

fn paths_of(cli: &Cli) -> Paths {
    let mut paths = Paths::new(
        cli.unit_dir.clone(),
        cli.quadlet_dir.clone(),
        cli.state_dir.clone(),
        cli.state_file.clone(),
        cli.host_file_roots.as_deref(),
    );
    if let Some(root) = &cli.host_root {
        paths = paths.with_host_root(root);
    }
    if let Some(g) = &cli.quadlet_generator {
        paths.quadlet_generator = QuadletGenerator::parse(g);
    }
    if let Some(t) = &cli.trust_file {
        paths.trust_file = t.clone();
    }
    if let Some(d) = &cli.credentials_dir {
        paths.remote.credentials_dir = d.clone();
    }
    if let Some(t) = cli.fetch_timeout {
        paths.remote.timeout = Duration::from_secs(t);
    }
    if let Some(g) = std::env::var_os("CORE_OPS_GIT").filter(|g| !g.is_empty()) {
        paths.remote.git = g.into();
    }
    let limits = &mut paths.read_limits;
    limits.max_entries = cli.max_tree_entries.unwrap_or(limits.max_entries);
    limits.max_bytes = cli.max_tree_bytes.unwrap_or(limits.max_bytes);
    limits.max_file_bytes = cli.max_file_bytes.unwrap_or(limits.max_file_bytes);
    if let Some(d) = cli.max_tree_depth {
        limits.max_depth = d as usize;
    }
    paths
}

fn target_opts(t: &TargetArgs) -> TargetOptions {
    TargetOptions {
        repo: t.repo.clone(),
        rev: t.rev.clone(),
        host: t.host.clone(),
        adopt: Vec::new(),
    }
}

/// How the plan reads unit state: systemd when it answers, otherwise "unknown" with the
/// reason (plan works on a laptop or in the repository's CI).
fn unit_source(cli: &Cli) -> Box<dyn UnitStateSource> {
    let address = cli.systemd_address.as_deref();
    if address.is_none() && !Path::new("/run/systemd/system").exists() {
        return Box::new(NoSystemd {
            reason: "systemd is not running on this machine".into(),
        });
    }
    match DbusSystemd::connect(address) {
        Ok(s) => Box::new(s),
        Err(e) => Box::new(NoSystemd {
            reason: e.to_string(),
        }),
    }
}

/// apply and agent need systemd; say so clearly when it does not answer.
fn connect_systemd(cli: &Cli) -> Result<DbusSystemd, Error> {
    DbusSystemd::connect(cli.systemd_address.as_deref()).map_err(|e| {
        Error::Systemd(format!(
            "{e}; apply needs a running systemd (set CORE_OPS_SYSTEMD_ADDRESS for a non-default bus)"
        ))
    })
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

/// The receipt chain, checked before an appending run (apply, agent, rollback) does
/// anything, recovery included: a broken chain refuses the run (exit 1, nothing changed).
/// status.json's `receipts` says so whenever the verdict changes (a quiet host is not
/// rewritten every tick; never with `--force-no-state`).
fn check_receipt_chain(paths: &Paths, record_status: bool) -> Result<(), Error> {
    let r = receipts::verify(&paths.state_dir, receipts::Depth::Run)?;
    if let Some(mut snap) = status::load(&paths.state_file)
        .ok()
        .filter(|_| record_status)
    {
        let now = crate::model::time::now_rfc3339();
        let health = status::ReceiptChainHealth::of(&r, &now);
        let changed = snap
            .receipts
            .as_ref()
            .is_none_or(|h| (h.ok, &h.problem) != (health.ok, &health.problem));
        if changed {
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
    }
    receipts::require_intact(r).map(|_| ())
}

fn f_display(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
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
    }
}

/// Write the run's metrics file (when configured or node-exporter's directory exists);
/// a failure to write metrics is logged, never fatal.
fn emit_metrics(
    cli: &Cli,
    paths: &Paths,
    t0: std::time::Instant,
    report: Result<&reconcile::RunReport, &Error>,
) {
    let Some(path) = metrics::target(cli.metrics_file.as_deref()) else {
        return;
    };
    let outcome = match report.map(|r| r.outcome) {
        Err(Error::Fetch(_)) => "fetch_failed".to_string(),
        Err(_) => "error".to_string(),
        Ok(o) => serde_json::to_value(o)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
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
        outcome,
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

/// Print a run: the apply result when an apply ran, otherwise what happened instead.
fn print_run(cli: &Cli, report: &reconcile::RunReport) {
    let plan = &report.planned.plan;
    let rev = &report.planned.desired.revision;
    match (&report.result, report.outcome) {
        (Some(result), _) => {
            if cli.json {
                let mut v = serde_json::to_value(result).expect("results serialize");
                v["quarantine_lifted"] = serde_json::to_value(&report.lifted).expect("serializes");
                // how the whole run ended (`rolled_back` after an automatic rollback), beside
                // the outcome of the forward apply
                v["run_outcome"] = serde_json::to_value(report.outcome).expect("serializes");
                print_json(&v);
            } else {
                print_text(&output::apply_text(plan, result, cli.verbose > 0));
            }
        }
        (None, reconcile::RunOutcome::PlanOnly) => {
            if cli.json {
                print_text(&String::from_utf8_lossy(&plan::to_json_bytes(plan)));
            } else {
                print_text(&output::plan_text(plan, cli.verbose > 0));
            }
        }
        (None, outcome) => {
            if cli.json {
                print_json(&serde_json::json!({
                    "kind": "CoreOpsRun",
                    "outcome": outcome,
                    "desired_revision": rev.commit,
                    "requested_ref": rev.requested_ref,
                    "intent_checksum": plan.checksum,
                    "quarantine": report.quarantine,
                    "quarantine_lifted": report.lifted,
                }));
            } else if let Some(q) = &report.quarantine {
                print_text(&format!(
                    "not applied: {}; review, then run core-ops resume\n",
                    output::quarantine_text(q)
                ));
            } else {
                print_text(&format!(
                    "no changes: host {} matches {}\n",
                    report.planned.desired.host,
                    output::revision_label(&rev.commit, &rev.requested_ref)
                ));
            }
        }
    }
    if let Some(l) = &report.lifted
        && !cli.json
    {
        print_text(&format!(
            "quarantine of {} lifted: the desired revision moved on\n",
            output::revision_label(&l.revision, &l.requested_ref)
        ));
    }
}

/// `--json` on a failed command: the error as one JSON document on stdout (the text stays on
/// stderr), so a caller that parses stdout never has to parse prose.
pub fn print_error_json(err: &Error, exit_code: u8) {
    let kind = match err {
        Error::Input(_) => "input",
        Error::Source(_) => "source",
        Error::Fetch(_) => "fetch",
        Error::Config(_) => "configuration",
        Error::Locked(_) => "locked",
        Error::StalePlan(_) => "stale_plan",
        Error::Trust(_) => "trust",
        Error::ReceiptChain(_) => "receipt_chain",
        Error::Systemd(_) => "systemd",
        Error::HostChanged(_) => "host_changed_unrecorded",
        Error::Io { .. } => "io",
    };
    let (file, line) = match err {
        Error::Input(e) => (Some(e.location.file.clone()), e.location.line),
        _ => (None, None),
    };
    print_json(&serde_json::json!({
        "schema_version": 1,
        "kind": "CoreOpsError",
        "core_ops": crate::provenance::Provenance::current(),
        "error": {
            "kind": kind,
            "message": err.to_string(),
            "file": file,
            "line": line,
        },
        "exit_code": exit_code,
    }));
}

fn print_json<T: serde::Serialize>(v: &T) {
    let value = serde_json::to_value(v).expect("view model serializes");
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, &value);
    let _ = writeln!(out);
}

fn print_text(s: &str) {
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

/// Run one command. Errors are returned to `main`, which prints them and exits with
/// [`exit_for`].
pub fn run(cli: &Cli) -> Result<ExitStatus, Error> {
    let paths = paths_of(cli);
    match &cli.command {
        Command::Init { repo, rev } => {
            // prove the target works before persisting it
            let source = Source::open_with(repo, &paths.state_dir, &paths.remote)?;
            let revision = source.resolve(rev)?;
            fsutil::private_dir(&paths.state_dir)?;
            let t = target::save(&paths.target_file(), repo, rev)?;
            let view = serde_json::json!({
                "schema_version": 1,
                "kind": "CoreOpsInit",
                "repo": t.repo,
                "requested_ref": t.requested_ref,
                "resolved_revision": revision.commit,
                "target_file": paths.target_file().display().to_string(),
            });
            if cli.json {
                print_json(&view);
            } else {
                print_text(&format!(
                    "core-ops will follow {} at {}\n  saved to {}\n",
                    t.repo,
                    output::revision_label(&revision.commit, rev),
                    paths.target_file().display()
                ));
            }
            Ok(ExitStatus::Ok)
        }
        Command::Plan {
            target,
            out,
            detailed_exitcode,
            adopt,
        } => {
            let mut opts = target_opts(target);
            opts.adopt = adopt.clone();
            let t = pipeline::resolve_target(&paths, &opts)?;
            let units = unit_source(cli);
            let planned = pipeline::plan_revision(&paths, &t, units.as_ref())?;
            let bytes = plan::to_json_bytes(&planned.plan);
            if let Some(out) = out {
                fsutil::write_atomic(out, &bytes, None)?;
            }
            if cli.json {
                print_text(&String::from_utf8_lossy(&bytes));
            } else {
                print_text(&output::plan_text(&planned.plan, cli.verbose > 0));
            }
            // a blocked plan cannot be applied as it stands: that is an error, not "changes"
            Ok(if planned.plan.is_blocked() {
                ExitStatus::Error
            } else if *detailed_exitcode && planned.plan.has_changes() {
                ExitStatus::Changes
            } else {
                ExitStatus::Ok
            })
        }
        Command::Apply {
            target,
            plan: plan_file,
            force_no_state,
            rollback_to,
            rollback_plan_only,
            adopt,
            tuning,
        } => {
            let _lock = StateLock::acquire(&paths.state_dir)?;
            let t0 = std::time::Instant::now();
            let report = (|| {
                check_receipt_chain(&paths, !*force_no_state)?;
                let systemd = connect_systemd(cli)?;
                recover_runtimes(&paths, &systemd, tuning)?;
                let mut opts = target_opts(target);
                opts.adopt = adopt.clone();
                let saved = match plan_file {
                    Some(f) => {
                        let bytes = std::fs::read(f)
                            .map_err(|e| Error::io(format!("read {}", f.display()), e))?;
                        let saved = plan::from_json_bytes(&bytes, &f.display().to_string())?;
                        opts.rev = Some(saved.base.desired_revision.clone());
                        Some(saved)
                    }
                    None => None,
                };
                let mut paths = paths.clone();
                if *force_no_state {
                    // plan as if nothing was applied and never write the snapshot
                    paths.state_file = paths.state_dir.join(".force-no-state-unused.json");
                }
                let t = pipeline::resolve_target(&paths, &opts)?;
                let mode = match rollback_to {
                    Some(rev) => reconcile::Mode::RollbackTo(rev.clone()),
                    None => reconcile::Mode::Forward,
                };
                let file = f_display(plan_file);
                let check = |fresh: &plan::Plan| match &saved {
                    Some(saved) => check_not_stale(saved, fresh, &file),
                    None => Ok(()),
                };
                let mut report = reconcile::run(
                    &paths,
                    reconcile::Request {
                        target: &t,
                        mode,
                        opts: apply_options(tuning, !force_no_state, &t),
                        agent: false,
                        plan_only: *rollback_plan_only,
                        check: &check,
                    },
                    &systemd,
                )?;
                if let Some(saved) = &saved {
                    report.planned.desired.revision.requested_ref =
                        saved.base.requested_ref.clone();
                }
                Ok::<_, Error>(report)
            })();
            emit_metrics(cli, &paths, t0, report.as_ref());
            let report = report?;
            print_run(cli, &report);
            Ok(match report.outcome {
                reconcile::RunOutcome::PlanOnly
                | reconcile::RunOutcome::Converged
                | reconcile::RunOutcome::NoChanges => ExitStatus::Ok,
                reconcile::RunOutcome::Quarantined => ExitStatus::Quarantined,
                _ => ExitStatus::NotConverged,
            })
        }
        Command::Agent { target, tuning } => {
            let _lock = StateLock::acquire(&paths.state_dir)?;
            let t0 = std::time::Instant::now();
            let report = (|| {
                check_receipt_chain(&paths, true)?;
                let systemd = connect_systemd(cli)?;
                recover_runtimes(&paths, &systemd, tuning)?;
                let t = pipeline::resolve_target(&paths, &target_opts(target))?;
                reconcile::run(
                    &paths,
                    reconcile::Request {
                        target: &t,
                        mode: reconcile::Mode::Forward,
                        opts: apply_options(tuning, true, &t),
                        agent: true,
                        plan_only: false,
                        check: &|_| Ok(()),
                    },
                    &systemd,
                )
            })();
            emit_metrics(cli, &paths, t0, report.as_ref());
            let report = report?;
            print_run(cli, &report);
            Ok(match report.outcome {
                reconcile::RunOutcome::NoChanges | reconcile::RunOutcome::PlanOnly => {
                    ExitStatus::Ok
                }
                reconcile::RunOutcome::Converged => ExitStatus::Changes,
                reconcile::RunOutcome::Quarantined => ExitStatus::Quarantined,
                _ => ExitStatus::NotConverged,
            })
        }
        Command::Resume { host } => {
            let _lock = StateLock::acquire(&paths.state_dir)?;
            let mut ctl = control::load(&paths.state_dir)?;
            let lifted = ctl.resume();
            control::save(&paths.state_dir, &ctl)?;
            let host = match host {
                Some(h) => h.clone(),
                None => pipeline::default_host()?,
            };
            if cli.json {
                print_json(&serde_json::json!({
                    "kind": "CoreOpsResume",
                    "host": host,
                    "lifted": lifted,
                }));
            } else {
                match &lifted {
                    Some(q) => print_text(&format!(
                        "quarantine of {} lifted on {host} ({} after {} attempts: {}); the next run applies it again\n",
                        output::revision_label(&q.revision, &q.requested_ref),
                        q.reason,
                        q.attempts,
                        q.objects.join(", ")
                    )),
                    None => print_text(&format!("no quarantine on {host}; nothing to resume\n")),
                }
            }
            Ok(ExitStatus::Ok)
        }
        Command::Status => {
            let snap = status::load(&paths.state_file);
            let fetch = crate::source::fetch_state::load(&paths.state_dir);
            let t = target::load(&paths.target_file()).ok().flatten();
            let ctl = control::load(&paths.state_dir);
            let convergence = match &ctl {
                Ok(c) if c.quarantine.is_some() => "non_converging",
                Ok(_) => "ok",
                Err(_) => "unknown",
            };
            if cli.json {
                let mut view = match &snap {
                    Ok(s) => serde_json::json!({
                        "state": "present",
                        "state_file": paths.state_file.display().to_string(),
                        "target": t,
                        "snapshot": s,
                    }),
                    Err(a) => serde_json::json!({
                        "state": "absent",
                        "state_file": paths.state_file.display().to_string(),
                        "target": t,
                        "absent": a,
                        "message": a.to_string(),
                    }),
                };
                view["convergence"] = serde_json::json!(convergence);
                view["control"] = match &ctl {
                    Ok(c) => serde_json::to_value(c).expect("control serializes"),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                };
                view["fetch"] = serde_json::to_value(fetch).expect("fetch state serializes");
                print_json(&view);
            } else {
                let mut text = output::status_text(
                    &paths.state_file.display().to_string(),
                    snap.as_ref(),
                    t.as_ref(),
                );
                match &ctl {
                    Ok(c) => {
                        if let Some(q) = &c.quarantine {
                            text.push_str(&format!(
                                "state      non_converging: {}\n  the agent will not apply it again until a new desired revision or `core-ops resume`\n",
                                output::quarantine_text(q)
                            ));
                        }
                    }
                    Err(e) => text.push_str(&format!("control    unreadable: {e}\n")),
                }
                if let Some(f) = &fetch {
                    text.push_str(&output::fetch_text(f));
                }
                print_text(&text);
            }
            Ok(ExitStatus::Ok)
        }
        Command::Explain { object, target } => {
            let mut opts = target_opts(target);
            // with no --repo/--rev: the deployed revision (immutable), else the init target
            let (snap, _) = pipeline::load_status(&paths);
            // with no --host: the host this machine last applied (status.json), not only
            // /etc/hostname
            if opts.host.is_none()
                && let Some(s) = snap.as_ref().filter(|s| s.last_applied.is_some())
            {
                opts.host = Some(s.host.clone());
            }
            if opts.repo.is_none()
                && opts.rev.is_none()
                && let Some(l) = snap.as_ref().and_then(|s| s.last_applied.as_ref())
            {
                opts.rev = Some(l.revision.clone());
                if let Some(src) = snap.as_ref().and_then(|s| s.source.as_ref()) {
                    opts.repo = Some(src.repo.clone());
                }
            }
            let t = pipeline::resolve_target(&paths, &opts)?;
            let units = unit_source(cli);
            let planned = pipeline::plan_revision(&paths, &t, units.as_ref())?;
            let mut e = explain::explain(&planned, object)?;
            if let Some(name) = crate::render::runtimes::name_of(&e.id) {
                e.runtime = Some(crate::apply::runtimes::history::of(&paths.state_dir, name)?);
            }
            if cli.json {
                print_json(&e);
            } else {
                print_text(&output::explain_text(&e));
            }
            Ok(ExitStatus::Ok)
        }
        Command::Completions { shell } => {
            let script = surface::completions(*shell);
            match std::io::stdout().lock().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(Error::io("write the completion script to stdout", e))
                }
                _ => Ok(ExitStatus::Ok),
            }
        }
        Command::Manpages { dir } => {
            for page in surface::manpages(dir)? {
                print_text(&format!("{}\n", page.display()));
            }
            Ok(ExitStatus::Ok)
        }
        Command::Evidence {
            command: EvidenceCommand::Verify { id },
        } => {
            let v = crate::runtime::evidence::verify(&paths.state_dir, id)?;
            if cli.json {
                print_json(&v);
            } else {
                print_text(&output::evidence_text(&v));
            }
            Ok(if v.ok {
                ExitStatus::Ok
            } else {
                ExitStatus::Error
            })
        }
        Command::Evidence {
            command: EvidenceCommand::PublishRequest { id, target },
        } => {
            // the host policy of the deployed revision (or of the target when none is)
            let mut opts = target_opts(target);
            if opts.repo.is_none() && opts.rev.is_none() {
                let (snap, _) = pipeline::load_status(&paths);
                if let Some(l) = snap.as_ref().and_then(|s| s.last_applied.as_ref()) {
                    opts.rev = Some(l.revision.clone());
                    if let Some(src) = snap.as_ref().and_then(|s| s.source.as_ref()) {
                        opts.repo = Some(src.repo.clone());
                    }
                }
            }
            let t = pipeline::resolve_target(&paths, &opts)?;
            let (_, revision, snapshot) =
                pipeline::read_revision(&paths, &t.repo, &t.requested_ref, &t.host)?;
            let desired = crate::render::render(&snapshot, &revision, &t.host, &paths)?;
            let out = crate::record::publication::publish_request(
                &paths.state_dir,
                &t.host,
                &desired.host_yaml.policy.publication,
                id,
            )?;
            if cli.json {
                print_json(&out);
            }
            match out {
                crate::record::publication::Outcome::Disabled { how_to_enable } => {
                    if !cli.json {
                        print_text(&format!("nothing written: {how_to_enable}\n"));
                    }
                    Ok(ExitStatus::Error)
                }
                crate::record::publication::Outcome::Written { path, .. } => {
                    if !cli.json {
                        print_text(&format!(
                            "publication request written for review: {path}\n(core-ops never sends it)\n"
                        ));
                    }
                    Ok(ExitStatus::Ok)
                }
            }
        }
        Command::Receipts {
            command: ReceiptsCommand::Verify,
        } => {
            let r = receipts::verify(&paths.state_dir, receipts::Depth::Full)?;
            if cli.json {
                print_json(&r);
            } else {
                print_text(&output::receipts_text(&r));
            }
            Ok(if r.ok {
                ExitStatus::Ok
            } else {
                ExitStatus::Error
            })
        }
        Command::StoreHash { file } => {
            let t0 = std::time::Instant::now();
            let (digest, bytes) = crate::runtime::store::hash_file(file)
                .map_err(|e| Error::io(format!("read {}", file.display()), e))?;
            print_json(&serde_json::json!({
                "file": file.display().to_string(),
                "digest": digest,
                "bytes": bytes,
                "ms": t0.elapsed().as_secs_f64() * 1000.0,
            }));
            Ok(ExitStatus::Ok)
        }
    }
}
