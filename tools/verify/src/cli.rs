//! `core-ops-verify`'s command line (seed 003's contract: binary name, flags, environment).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use super::image::{self, Image};
use super::report::{self, CoreOpsBinary, ScenarioResult, Summary, VerificationRun};
use super::runner::{self, Backend, RunOptions};
use super::scenario::{self, CLASSES, LoadedScenario};

/// core-ops-verify: prove on a whole machine that boots what core-ops claims.
///
/// Scenarios (YAML) run in a disposable VM each: a guest image built from Debian packages,
/// booted under libvirt (when CORE_OPS_VERIFY_LIBVIRT_URI / CORE_OPS_VERIFY_VM_HOST is set or
/// qemu:///system answers) or qemu directly, with core-ops running as root against the guest's
/// own systemd. Every run leaves a bundle under target/verify/<run-id>/<scenario-id>/.
///
/// Environment: CORE_OPS_VERIFY_CORE_OPS_BIN (binary under test; default: core-ops beside this
/// binary; `kill_apply: {rev, at}` steps need one built with `--features failpoints`, e.g.
/// `cargo build --profile vm --features failpoints --bin core-ops` -> target/vm/core-ops, and
/// fail saying so when the pause never comes), CORE_OPS_VERIFY_SOURCE_DIR (the core-ops source
/// tree holding scripts/verify-image.sh, units/ and scripts/systemd-testbed.sh; default: the
/// nearest ancestor of this binary's directory, else of the current directory, that has
/// them; --source-dir overrides), CORE_OPS_VERIFY_LIBVIRT_URI, CORE_OPS_VERIFY_VM_HOST (-> qemu+ssh://core@HOST/system),
/// CORE_OPS_VERIFY_ALLOW_ARP_FALLBACK (true/false), CORE_OPS_VERIFY_IMAGE (image directory),
/// CORE_OPS_VERIFY_ACCEL (kvm/tcg), CORE_OPS_VERIFY_QEMU (qemu binary).
///
/// Stopping it (SIGTERM, SIGINT, SIGHUP, its parent dying) or killing it stops the guests it
/// started and removes their directories under /var/tmp/core-ops-verify/ (`--debug` keeps
/// them).
///
/// Exit status: 0 every scenario passed (promote: promoted), 1 a scenario failed or could not
/// run (promote: not promoted), 2 bad input (invalid scenario, no image, usage).
#[derive(Debug, Parser)]
#[command(name = "core-ops-verify", version = core_ops::provenance::long_version())]
pub struct Cli {
    /// The core-ops source tree (scripts/verify-image.sh, units/, scripts/systemd-testbed.sh);
    /// default: CORE_OPS_VERIFY_SOURCE_DIR, else found above this binary or the current
    /// directory.
    #[arg(long, global = true, value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one scenario, or the accepted corpus.
    Run(RunArgs),
    /// Run a generated candidate; move it into the accepted scenarios only if it passes.
    Promote {
        /// The candidate (tests/fixtures/verification/generated_candidates/<id>.yaml).
        candidate: PathBuf,
        /// The accepted corpus (default: scenarios/ beside the candidate's directory).
        #[arg(long, value_name = "DIR")]
        accepted_dir: Option<PathBuf>,
        /// Machine settings.
        #[command(flatten)]
        machine: MachineArgs,
    },
    /// Check scenario files (schema, fixture revisions) without running them.
    Check {
        /// Scenario files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The guest image.
    Image {
        /// What to do.
        #[command(subcommand)]
        command: ImageCommand,
    },
}

/// `image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest image reproducibly from Debian packages (cached by recipe digest).
    Build {
        /// Output directory (default: CORE_OPS_VERIFY_IMAGE, else the cache entry of the
        /// current recipe under /var/cache/core-ops-test/verify-image/).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Rebuild even when a complete image is there.
        #[arg(long)]
        force: bool,
        /// Print the image manifest as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// One scenario file.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "accepted_dir",
        required_unless_present = "accepted_dir"
    )]
    pub scenario: Option<PathBuf>,
    /// The accepted corpus directory.
    #[arg(long, value_name = "DIR")]
    pub accepted_dir: Option<PathBuf>,
    /// With --accepted-dir: only these scenario ids (repeatable).
    #[arg(long = "scenario-id", value_name = "ID", requires = "accepted_dir")]
    pub scenario_ids: Vec<String>,
    /// Release gate: run the whole accepted corpus, require it to cover every class, exit
    /// non-zero if any scenario fails.
    #[arg(long, requires = "accepted_dir")]
    pub ci: bool,
    /// Keep the machine after artifact collection (prints how to reach it).
    #[arg(long)]
    pub debug: bool,
    /// Wait for Enter before teardown (single-scenario debugging).
    #[arg(long, requires = "scenario")]
    pub pause_before_teardown: bool,
    /// Machine settings.
    #[command(flatten)]
    pub machine: MachineArgs,
}

/// Settings of the machine and the bundles.
#[derive(Debug, Clone, clap::Args)]
pub struct MachineArgs {
    /// Print the verification_run document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where bundles go (default: target/verify/<run-id>).
    #[arg(long, value_name = "DIR")]
    pub bundle_dir: Option<PathBuf>,
    /// VM driver (default: libvirt when configured or reachable, else qemu).
    #[arg(long, value_name = "DRIVER", value_parser = ["qemu", "libvirt"])]
    pub driver: Option<String>,
    /// Guest image directory (default: see `image build --help`).
    #[arg(long, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
    /// Seconds to wait for the guest's readiness record.
    #[arg(long, value_name = "SECS", default_value_t = 240)]
    pub ready_timeout: u64,
    /// Internal: run on the namespace test bed instead of a VM (harness self-tests only;
    /// never for sign-off).
    #[arg(long, hide = true)]
    pub synthetic: bool,
}

/// Entry point; returns the process exit code (0 passed, 1 failed, 2 bad input or usage).
pub fn main() -> u8 {
    // first, before any thread: a stop signal must find every guest registered
    if let Err(e) = super::cleanup::install() {
        eprintln!("core-ops-verify: error: {e:#}");
        return 2;
    }
    let cli = Cli::parse();
    if let Some(d) = &cli.source_dir {
        super::resources::set_flag(d.clone());
    }
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("core-ops-verify: error: {e:#}");
            2
        }
    };
    super::cleanup::exit_code(code)
}

fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Promote {
            candidate,
            accepted_dir,
            machine,
        } => promote(&candidate, accepted_dir, &machine),
        Command::Check { paths } => check(&paths),
        Command::Image {
            command: ImageCommand::Build { out, force, json },
        } => {
            let dir = match out {
                Some(d) => d,
                None => image::default_dir()?,
            };
            let (img, secs) = image::build(&dir, force)?;
            if secs == 0.0 {
                eprintln!("core-ops-verify: image up to date in {}", img.dir.display());
            } else {
                eprintln!(
                    "core-ops-verify: image built in {secs:.1} s: {}",
                    img.dir.display()
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&img.manifest_json())?);
            } else {
                println!("{}", img.dir.display());
            }
            Ok(0)
        }
    }
}

fn check(paths: &[PathBuf]) -> Result<u8> {
    let mut n = 0;
    for p in paths {
        let repos = scenario::repos_dir_for(p);
        let loaded = if p.is_dir() {
            scenario::load_dir(p, &repos)?
        } else {
            vec![scenario::load(p, &repos)?]
        };
        for l in &loaded {
            println!("ok {} ({})", l.scenario.id, l.path.display());
        }
        n += loaded.len();
    }
    eprintln!("core-ops-verify: {n} scenario(s) valid");
    Ok(0)
}

fn run(args: RunArgs) -> Result<u8> {
    let (scenarios, repos, accepted_all, mode) = if let Some(dir) = &args.accepted_dir {
        let repos = scenario::repos_dir_for(dir);
        let mut all = scenario::load_dir(dir, &repos)?;
        if all.is_empty() {
            bail!("{}: no scenarios", dir.display());
        }
        if args.ci {
            if args.machine.synthetic {
                bail!("--ci is the release gate: it runs on the VM backend only");
            }
            require_coverage(&all, dir)?;
        }
        if !args.scenario_ids.is_empty() {
            for id in &args.scenario_ids {
                if !all.iter().any(|l| &l.scenario.id == id) {
                    bail!("no accepted scenario with id {id:?} in {}", dir.display());
                }
            }
            all.retain(|l| args.scenario_ids.contains(&l.scenario.id));
        }
        (all, repos, true, "accepted-corpus")
    } else {
        let path = args.scenario.as_ref().expect("clap: required");
        let repos = scenario::repos_dir_for(path);
        let loaded = scenario::load(path, &repos)?;
        let accepted = is_accepted_location(path);
        (vec![loaded], repos, accepted, "scenario")
    };
    let run = execute(
        &scenarios,
        &repos,
        accepted_all,
        mode,
        args.ci,
        &args.machine,
        args.debug,
        args.pause_before_teardown,
    )?;
    Ok(if run.outcome == "passed" { 0 } else { 1 })
}

/// A scenario file inside a `scenarios/` directory is an accepted corpus entry.
fn is_accepted_location(path: &Path) -> bool {
    std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(|d| d.ends_with("scenarios")))
        .unwrap_or(false)
}

/// The release gate's corpus covers every class.
fn require_coverage(all: &[LoadedScenario], dir: &Path) -> Result<()> {
    let missing: Vec<_> = CLASSES
        .iter()
        .filter(|c| {
            !all.iter()
                .any(|l| l.scenario.classes.iter().any(|x| x == *c))
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: the accepted corpus covers no scenario of class(es) {:?}",
            dir.display(),
            missing
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn execute(
    scenarios: &[LoadedScenario],
    repos: &Path,
    accepted: bool,
    mode: &str,
    ci: bool,
    m: &MachineArgs,
    debug: bool,
    pause: bool,
) -> Result<VerificationRun> {
    let started_at = core_ops::model::time::now_rfc3339();
    let t0 = Instant::now();
    let run_id = report::new_run_id();
    let bundle_root = m
        .bundle_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/verify"))
        .join(&run_id);
    std::fs::create_dir_all(&bundle_root)
        .with_context(|| format!("creating {}", bundle_root.display()))?;
    let bin = core_ops_binary()?;
    let (backend, image_manifest) = if m.synthetic {
        (Backend::Synthetic, None)
    } else {
        let dir = match &m.image_dir {
            Some(d) => d.clone(),
            None => image::default_dir()?,
        };
        let img = Image::open(&dir)?;
        let manifest = img.manifest_json();
        (
            Backend::Vm {
                image: img,
                driver: m.driver.clone(),
            },
            Some(manifest),
        )
    };
    let opts = RunOptions {
        backend,
        core_ops_bin: bin.clone(),
        bundle_root: bundle_root.clone(),
        debug,
        pause_before_teardown: pause,
        ready_timeout: Duration::from_secs(m.ready_timeout),
        allow_arp_fallback: std::env::var("CORE_OPS_VERIFY_ALLOW_ARP_FALLBACK")
            .map(|v| v == "true" || v == "1")
            .unwrap_or(false),
        progress: true,
    };
    eprintln!(
        "core-ops-verify: run {run_id}: {} scenario(s), {} backend, bundles in {}",
        scenarios.len(),
        if m.synthetic {
            "synthetic (test bed; not for sign-off)"
        } else {
            "vm"
        },
        bundle_root.display()
    );
    let mut results: Vec<ScenarioResult> = Vec::new();
    for l in scenarios {
        let r = runner::run_scenario(l, repos, accepted, &opts)?;
        eprintln!(
            "core-ops-verify: {:<48} {:<7} {:>6.1} s  (ready {:.1} s){}",
            r.id,
            r.outcome.to_uppercase(),
            r.duration_ms as f64 / 1000.0,
            r.ready_ms as f64 / 1000.0,
            r.failure
                .as_ref()
                .map(|f| format!("\n    {f}\n    bundle: {}", r.bundle))
                .unwrap_or_default()
        );
        results.push(r);
    }
    let summary = Summary {
        total: results.len(),
        passed: results.iter().filter(|r| r.outcome == "passed").count(),
        failed: results.iter().filter(|r| r.outcome == "failed").count(),
        errors: results.iter().filter(|r| r.outcome == "error").count(),
    };
    let outcome = if summary.passed == summary.total && summary.total > 0 {
        "passed"
    } else {
        "failed"
    };
    let doc = VerificationRun {
        schema_version: report::RUN_SCHEMA_VERSION,
        kind: "verification_run".into(),
        run_id,
        mode: mode.into(),
        ci,
        backend: if m.synthetic { "synthetic" } else { "vm" }.into(),
        started_at,
        finished_at: core_ops::model::time::now_rfc3339(),
        duration_ms: t0.elapsed().as_millis() as u64,
        core_ops: CoreOpsBinary {
            path: bin.display().to_string(),
            sha256: core_ops::model::normalize::sha256_hex(&std::fs::read(&bin)?),
            version: binary_version(&bin),
        },
        image: image_manifest,
        bundle_root: bundle_root.display().to_string(),
        scenarios: results,
        summary: summary.clone(),
        outcome: outcome.into(),
    };
    core_ops::fsutil::write_json(&bundle_root.join("verification-run.json"), &doc)?;
    eprintln!(
        "core-ops-verify: {outcome}: {} passed, {} failed, {} errors of {} in {:.1} s; {}",
        summary.passed,
        summary.failed,
        summary.errors,
        summary.total,
        doc.duration_ms as f64 / 1000.0,
        bundle_root.join("verification-run.json").display()
    );
    if m.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(doc)
}

fn promote(candidate: &Path, accepted_dir: Option<PathBuf>, m: &MachineArgs) -> Result<u8> {
    let repos = scenario::repos_dir_for(candidate);
    let loaded = scenario::load(candidate, &repos)?;
    let accepted_dir = match accepted_dir {
        Some(d) => d,
        None => candidate
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("scenarios"))
            .context("cannot tell the accepted directory; pass --accepted-dir")?,
    };
    let accepted = scenario::load_dir(&accepted_dir, &scenario::repos_dir_for(&accepted_dir))?;
    if accepted.iter().any(|a| a.scenario.id == loaded.scenario.id) {
        bail!(
            "{}: an accepted scenario with id {:?} exists already",
            candidate.display(),
            loaded.scenario.id
        );
    }
    let target = accepted_dir.join(format!("{}.yaml", loaded.scenario.id));
    let run = execute(
        std::slice::from_ref(&loaded),
        &repos,
        false,
        "promote",
        false,
        m,
        false,
        false,
    )?;
    let r = &run.scenarios[0];
    let promoted = run.outcome == "passed" && !m.synthetic;
    let status = if promoted {
        std::fs::rename(candidate, &target)
            .with_context(|| format!("moving {} to {}", candidate.display(), target.display()))?;
        format!(
            "scenario: {}\nstatus: promoted to {}\nrun: {} ({})\n",
            r.id,
            target.display(),
            run.run_id,
            r.outcome
        )
    } else {
        format!(
            "scenario: {}\nstatus: not promoted (stays in {})\nrun: {} ({}{})\n",
            r.id,
            candidate.display(),
            run.run_id,
            r.outcome,
            if m.synthetic {
                "; synthetic runs never promote"
            } else {
                ""
            }
        )
    };
    std::fs::write(Path::new(&r.bundle).join("promotion-status.txt"), &status)?;
    eprint!("core-ops-verify: {status}");
    Ok(if promoted { 0 } else { 1 })
}

/// `CORE_OPS_VERIFY_CORE_OPS_BIN`, else `core-ops` beside this binary (the one just built).
fn core_ops_binary() -> Result<PathBuf> {
    let p = match std::env::var_os("CORE_OPS_VERIFY_CORE_OPS_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of the current executable")?
            .join("core-ops"),
    };
    if !p.is_file() {
        bail!(
            "core-ops binary under test {} not found (build it, or set CORE_OPS_VERIFY_CORE_OPS_BIN)",
            p.display()
        );
    }
    Ok(std::fs::canonicalize(p)?)
}

fn binary_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
