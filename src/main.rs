//! The `core-ops` binary: parse, log, run one command, exit. All work is in the library; the
//! exit code is decided by `cli::exit_status` (one table) only.

use std::process::ExitCode;

use clap::Parser;
use core_ops::cli::{self, args::Cli};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("CORE_OPS_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    // under systemd (stdout/stderr connected to the journal) log structured to journald
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter)
            .with(journald.with_syslog_identifier("core-ops".into()))
            .init();
        return;
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // colour only for a person at a terminal: piped logs and files stay plain
                .with_ansi(
                    std::io::IsTerminal::is_terminal(&std::io::stderr())
                        && std::env::var_os("NO_COLOR").is_none(),
                )
                .with_target(false),
        )
        .init();
}

fn main() -> ExitCode {
    // ssh runs core-ops as SSH_ASKPASS for a deploy key with a passphrase (set only by the
    // fetch, for its own ssh child): answer the one prompt from the root-only passphrase file
    if let Some(code) = core_ops::source::remote::askpass() {
        return code;
    }
    #[cfg(feature = "failpoints")]
    let _failpoints = core_ops::failpoint::setup();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = cli::run(&cli);
    let status = cli::exit_status(&result);
    if let Err(err) = &result {
        cli::report_error(&cli, err, status);
    }
    ExitCode::from(status as u8)
}
