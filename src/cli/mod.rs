//! The binary's edge: parse options, run one command, print its view as JSON or text, and
//! decide the exit code in exactly one place ([`exit::exit_status`]).
//!
//! Layout: `args` (clap), `commands` (one function per read-mostly command), `run` (`apply`
//! and `agent`), `views` (the versioned `--json` documents), `output` (one text rendering per
//! view), `exit` (outcomes and errors -> exit codes), `surface` (completions, man pages).

pub mod args;
pub mod commands;
pub mod exit;
pub mod output;
pub mod run;
pub mod secret;
pub mod surface;
pub mod views;

#[cfg(test)]
mod view_fixtures;

use std::io::Write;
use std::path::Path;

use args::{Cli, Command, EvidenceCommand, ReceiptsCommand, TargetArgs};

use crate::config::{Paths, QuadletGenerator};
use crate::error::Error;
use crate::observe::{NoSystemd, UnitStateSource};
use crate::pipeline::TargetOptions;
use crate::systemd::dbus::DbusSystemd;

pub use exit::{ExitStatus, Outcome, exit_for, exit_status};
use views::View;

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
    if let Some(a) = &cli.age_identity {
        paths.age_identity = a.clone();
    }
    if let Some(d) = &cli.credentials_dir {
        paths.remote.credentials_dir = d.clone();
    }
    if let Some(t) = cli.fetch_timeout {
        paths.remote.timeout = std::time::Duration::from_secs(t);
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

/// Print a view on stdout: its JSON with `--json`, its text otherwise. A closed stdout is
/// not an error (`core-ops status | head`).
pub fn emit<V: View>(cli: &Cli, view: &V) -> Result<(), Error> {
    let bytes = if cli.json {
        view.json()?
    } else {
        view.text(cli.verbose > 0).into_bytes()
    };
    let _ = std::io::stdout().lock().write_all(&bytes);
    Ok(())
}

/// Report a failed command: the text on stderr and, with `--json`, a `CoreOpsError`
/// document on stdout, so a caller that parses stdout never has to parse prose.
pub fn report_error(cli: &Cli, err: &Error, status: ExitStatus) {
    let view = views::ErrorView::of(err, status as u8);
    let _ = std::io::stderr()
        .lock()
        .write_all(view.text(cli.verbose > 0).as_bytes());
    if cli.json {
        // the JSON contract holds for failures too: one document on stdout
        if let Ok(bytes) = view.json() {
            let _ = std::io::stdout().lock().write_all(&bytes);
        }
    }
}

/// Run one command: dispatch to its function. Errors are returned to `main`, which reports
/// them; [`exit_status`] turns either into the exit code.
pub fn run(cli: &Cli) -> Result<Outcome, Error> {
    let paths = &paths_of(cli);
    match &cli.command {
        Command::Init { repo, rev } => commands::init(cli, paths, repo, rev),
        Command::Plan {
            target,
            out,
            detailed_exitcode,
            adopt,
        } => commands::plan(
            cli,
            paths,
            target,
            out.as_deref(),
            *detailed_exitcode,
            adopt,
        ),
        Command::Apply {
            target,
            plan,
            force_no_state,
            rollback_to,
            rollback_plan_only,
            adopt,
            tuning,
        } => run::apply(
            cli,
            paths,
            run::ApplyArgs {
                target,
                plan_file: plan.as_deref(),
                force_no_state: *force_no_state,
                rollback_to: rollback_to.as_deref(),
                rollback_plan_only: *rollback_plan_only,
                adopt,
                tuning,
            },
        ),
        Command::Agent { target, tuning } => run::agent(cli, paths, target, tuning),
        Command::Resume { host } => commands::resume(cli, paths, host.as_deref()),
        Command::Status => commands::status(cli, paths),
        Command::Explain { object, target } => commands::explain(cli, paths, object, target),
        Command::Completions { shell } => commands::completions(*shell),
        Command::Manpages { dir } => commands::manpages(cli, dir),
        Command::Evidence {
            command: EvidenceCommand::Verify { id },
        } => commands::evidence_verify(cli, paths, id),
        Command::Evidence {
            command: EvidenceCommand::PublishRequest { id, target },
        } => commands::publish_request(cli, paths, id, target),
        Command::Receipts {
            command: ReceiptsCommand::Verify,
        } => commands::receipts_verify(cli, paths),
        Command::Secret { command } => secret::secret(cli, paths, command),
        Command::StoreHash { file } => commands::store_hash(cli, file),
    }
}
