//! Command line of `core-ops-release` (the maintainer's release helper): `validate` and
//! `check-environment`. Exit 0: no findings; 1: findings; 2: usage or tool error.
//!
//! Why here and not in the binary: the binary stays a two-line shim and the integration tests
//! drive the same code through it.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::{Finding, environment};

/// core-ops-release: check release fragments, the changelog and the version policy.
#[derive(Debug, Parser)]
#[command(
    name = "core-ops-release",
    version = core_ops::provenance::long_version(),
    about,
    long_about = None
)]
pub struct ReleaseCli {
    /// What to check.
    #[command(subcommand)]
    pub command: ReleaseCommand,
}

/// Subcommands of `core-ops-release`.
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Check changes/*.md, CHANGELOG.md and the version in Cargo.toml against a base.
    Validate {
        /// Compare with this ref (default: the newest vX.Y.Z tag reachable from HEAD, or none).
        #[arg(long, value_name = "REF")]
        base: Option<String>,
        /// Print the findings as a JSON list.
        #[arg(long)]
        json: bool,
    },
    /// Compare the authoritative verification environment contract with the runner's
    /// CORE_OPS_ACTUAL_VERIFY_* variables.
    CheckEnvironment {
        /// The contract (default: tests/fixtures/distribution/release-gate-environment.json
        /// under the repository root).
        #[arg(long, value_name = "FILE")]
        contract: Option<PathBuf>,
        /// Print the findings as a JSON list.
        #[arg(long)]
        json: bool,
    },
}

fn print(findings: &[Finding], json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = serde_json::to_writer_pretty(&mut out, findings);
        let _ = writeln!(out);
    } else {
        for f in findings {
            let _ = writeln!(out, "{f}");
        }
    }
}

/// Run `core-ops-release` with the process arguments; returns the exit code.
///
/// Why a code, not `Result`: findings (1) and tool errors (2) must stay distinguishable.
pub fn main() -> u8 {
    let cli = ReleaseCli::parse();
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("core-ops-release: error: current directory: {e}");
            return 2;
        }
    };
    let (findings, json, what) = match &cli.command {
        ReleaseCommand::Validate { base, json } => match super::validate(&cwd, base.as_deref()) {
            Ok(r) => (
                r.findings,
                *json,
                format!("validated against base {}", r.base),
            ),
            Err(e) => {
                eprintln!("core-ops-release: error: {e}");
                return 2;
            }
        },
        ReleaseCommand::CheckEnvironment { contract, json } => {
            let root = super::base::discover(&cwd).map_or(cwd.clone(), |(_, r)| r);
            let (root, rel) = match contract {
                Some(c) => (cwd.clone(), c.display().to_string()),
                None => (root, environment::CONTRACT.to_string()),
            };
            let mut out = Vec::new();
            environment::check(&root, &rel, &|v| std::env::var(v).ok(), &mut out);
            (out, *json, format!("checked {rel}"))
        }
    };
    print(&findings, json);
    if findings.is_empty() {
        eprintln!("core-ops-release: {what}: no findings");
        0
    } else {
        eprintln!("core-ops-release: {what}: {} finding(s)", findings.len());
        1
    }
}
