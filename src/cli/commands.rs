//! The commands that do not change the host's units: one function each, taking what was
//! parsed, printing one view, returning one [`Outcome`].
//!
//! Why small functions: each command reads top to bottom; the exit code is not theirs to
//! decide (see [`super::exit`]).

use std::io::Write;
use std::path::Path;

use super::args::{Cli, TargetArgs};
use super::exit::Outcome;
use super::views::{
    ControlView, EvidenceView, ExplainView, InitView, ManpagesView, PlanView, PublicationView,
    ReceiptsView, ResumeView, SCHEMA_VERSION, SnapshotView, StatusView, StoreHashView,
};
use super::{emit, surface, target_opts, unit_source};
use crate::config::Paths;
use crate::error::Error;
use crate::explain;
use crate::fsutil;
use crate::lock::StateLock;
use crate::pipeline::{self, TargetOptions};
use crate::plan;
use crate::record::{control, publication, receipts, status, target};
use crate::source::Source;

/// `core-ops init REPO [REF]`: prove the target works, then persist it.
pub fn init(cli: &Cli, paths: &Paths, repo: &str, rev: &str) -> Result<Outcome, Error> {
    let source = Source::open_with(repo, &paths.state_dir, &paths.remote)?;
    let revision = source.resolve(rev)?;
    fsutil::private_dir(&paths.state_dir)?;
    let t = target::save(&paths.target_file(), repo, rev)?;
    emit(
        cli,
        &InitView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsInit",
            repo: t.repo,
            requested_ref: t.requested_ref,
            resolved_revision: revision.commit,
            target_file: paths.target_file().display().to_string(),
        },
    )?;
    Ok(Outcome::Done)
}

/// `core-ops plan`: print the plan (and write it with `--out`).
pub fn plan(
    cli: &Cli,
    paths: &Paths,
    target: &TargetArgs,
    out: Option<&Path>,
    detailed_exitcode: bool,
    adopt: &[std::path::PathBuf],
) -> Result<Outcome, Error> {
    let mut opts = target_opts(target);
    opts.adopt = adopt.to_vec();
    let t = pipeline::resolve_target(paths, &opts)?;
    let units = unit_source(cli);
    let planned = pipeline::plan_revision(paths, &t, units.as_ref())?;
    if let Some(out) = out {
        fsutil::write_atomic(out, &plan::to_json_bytes(&planned.plan), None)?;
    }
    emit(
        cli,
        &PlanView {
            plan: &planned.plan,
        },
    )?;
    Ok(Outcome::Planned {
        blocked: planned.plan.is_blocked(),
        changes: planned.plan.has_changes(),
        detailed_exitcode,
    })
}

/// `core-ops resume`: lift the quarantine.
pub fn resume(cli: &Cli, paths: &Paths, host: Option<&str>) -> Result<Outcome, Error> {
    let _lock = StateLock::acquire(&paths.state_dir)?;
    let mut ctl = control::load(&paths.state_dir)?;
    let lifted = ctl.resume();
    control::save(&paths.state_dir, &ctl)?;
    let host = match host {
        Some(h) => h.to_string(),
        None => pipeline::default_host()?,
    };
    emit(
        cli,
        &ResumeView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsResume",
            host,
            lifted,
        },
    )?;
    Ok(Outcome::Done)
}

/// `core-ops status`: status.json, the saved target and control.json, each as it was found.
pub fn status(cli: &Cli, paths: &Paths) -> Result<Outcome, Error> {
    let snapshot = match status::load(&paths.state_file) {
        Ok(snapshot) => SnapshotView::Present {
            snapshot: Box::new(snapshot),
        },
        Err(absent) => SnapshotView::Absent {
            message: absent.to_string(),
            absent,
        },
    };
    let (convergence, control) = match control::load(&paths.state_dir) {
        Ok(c) if c.quarantine.is_some() => ("non_converging", ControlView::Read(c)),
        Ok(c) => ("ok", ControlView::Read(c)),
        Err(e) => (
            "unknown",
            ControlView::Unreadable {
                error: e.to_string(),
            },
        ),
    };
    emit(
        cli,
        &StatusView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsStatusReport",
            state_file: paths.state_file.display().to_string(),
            target: target::load(&paths.target_file()).ok().flatten(),
            snapshot,
            convergence,
            control,
            fetch: crate::source::fetch_state::load(&paths.state_dir),
        },
    )?;
    Ok(Outcome::Done)
}

/// With no `--repo`/`--rev`: the deployed revision (immutable) and where it came from;
/// with `host_too` and no `--host`: the host this machine last applied, not only
/// /etc/hostname.
fn deployed_target(paths: &Paths, target: &TargetArgs, host_too: bool) -> TargetOptions {
    let mut opts = target_opts(target);
    let (snap, _) = pipeline::load_status(paths);
    let applied = snap.as_ref().filter(|s| s.last_applied.is_some());
    if host_too
        && opts.host.is_none()
        && let Some(s) = applied
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
    opts
}

/// `core-ops explain OBJECT`.
pub fn explain(
    cli: &Cli,
    paths: &Paths,
    object: &str,
    target: &TargetArgs,
) -> Result<Outcome, Error> {
    let opts = deployed_target(paths, target, true);
    let t = pipeline::resolve_target(paths, &opts)?;
    let units = unit_source(cli);
    let planned = pipeline::plan_revision(paths, &t, units.as_ref())?;
    let mut e = explain::explain(&planned, object)?;
    if let Some(name) = crate::render::runtimes::name_of(&e.id) {
        e.runtime = Some(crate::apply::runtimes::history::of(&paths.state_dir, name)?);
    }
    emit(
        cli,
        &ExplainView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsExplanation",
            explanation: e,
        },
    )?;
    Ok(Outcome::Done)
}

/// `core-ops completions SHELL`: the script on stdout (no view: it is the shell's input).
pub fn completions(shell: surface::Shell) -> Result<Outcome, Error> {
    let script = surface::completions(shell);
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("write the completion script to stdout", e))
        }
        _ => Ok(Outcome::Done),
    }
}

/// `core-ops manpages DIR`.
pub fn manpages(cli: &Cli, dir: &Path) -> Result<Outcome, Error> {
    let pages = surface::manpages(dir)?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    emit(
        cli,
        &ManpagesView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsManpages",
            pages,
        },
    )?;
    Ok(Outcome::Done)
}

/// `core-ops evidence verify ID`.
pub fn evidence_verify(cli: &Cli, paths: &Paths, id: &str) -> Result<Outcome, Error> {
    let verification = crate::runtime::evidence::verify(&paths.state_dir, id)?;
    let ok = verification.ok;
    emit(
        cli,
        &EvidenceView {
            schema_version: SCHEMA_VERSION,
            verification,
        },
    )?;
    Ok(Outcome::Verified { ok })
}

/// `core-ops evidence publish-request ID`: under the host policy of the deployed revision
/// (or of the target when none is).
pub fn publish_request(
    cli: &Cli,
    paths: &Paths,
    id: &str,
    target: &TargetArgs,
) -> Result<Outcome, Error> {
    let opts = deployed_target(paths, target, false);
    let t = pipeline::resolve_target(paths, &opts)?;
    let (_, revision, snapshot) =
        pipeline::read_revision(paths, &t.repo, &t.requested_ref, &t.host)?;
    let desired = crate::render::render(&snapshot, &revision, &t.host, paths)?;
    let outcome = publication::publish_request(
        &paths.state_dir,
        &t.host,
        &desired.host_yaml.policy.publication,
        id,
    )?;
    let written = matches!(outcome, publication::Outcome::Written { .. });
    emit(
        cli,
        &PublicationView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsPublicationRequestOutcome",
            outcome,
        },
    )?;
    Ok(Outcome::PublicationRequest { written })
}

/// `core-ops receipts verify`: re-hash the whole chain.
pub fn receipts_verify(cli: &Cli, paths: &Paths) -> Result<Outcome, Error> {
    let report = receipts::verify(&paths.state_dir, receipts::Depth::Full)?;
    let ok = report.ok;
    emit(cli, &ReceiptsView { report })?;
    Ok(Outcome::Verified { ok })
}

/// `core-ops store-hash FILE` (hidden).
pub fn store_hash(cli: &Cli, file: &Path) -> Result<Outcome, Error> {
    let t0 = std::time::Instant::now();
    let (digest, bytes) = crate::runtime::store::hash_file(file)
        .map_err(|e| Error::io(format!("read {}", file.display()), e))?;
    emit(
        cli,
        &StoreHashView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsStoreHash",
            file: file.display().to_string(),
            digest,
            bytes,
            ms: t0.elapsed().as_secs_f64() * 1000.0,
        },
    )?;
    Ok(Outcome::Done)
}
