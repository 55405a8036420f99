//! Run one scenario end to end and leave its bundle:
//! fixture repo -> machine -> readiness -> core-ops into the guest -> steps and assertions ->
//! diagnostics on failure -> teardown (unless `--debug`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::assertions::{self, AssertionResult, STATE_DIR};
use super::bundle;
use super::image::Image;
use super::machine::{Machine, MachineInfo, Output, Shell};
use super::readiness::{ReadinessEvidence, ReadinessState};
use super::report::{ScenarioResult, StepRecord, Summary};
use super::scenario::LoadedScenario;
use super::{fixture, steps, synthetic, vm};

/// Where machines keep their overlay, sockets, serial logs and share while they run (removed
/// after the run unless `--debug`).
pub const MACHINE_ROOT: &str = "/var/tmp/core-ops-verify";

/// Which backend runs scenarios.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The product path.
    Vm {
        /// Guest image.
        image: Image,
        /// `--driver` (`qemu`/`libvirt`), else automatic.
        driver: Option<String>,
    },
    /// Hidden: the namespace test bed.
    Synthetic,
}

/// Settings shared by every scenario of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Backend.
    pub backend: Backend,
    /// The core-ops binary that goes into the guest.
    pub core_ops_bin: PathBuf,
    /// `target/verify/<run-id>`.
    pub bundle_root: PathBuf,
    /// Keep the machine after artifact collection.
    pub debug: bool,
    /// Wait for Enter before teardown.
    pub pause_before_teardown: bool,
    /// Readiness timeout.
    pub ready_timeout: Duration,
    /// `CORE_OPS_VERIFY_ALLOW_ARP_FALLBACK`.
    pub allow_arp_fallback: bool,
    /// Print progress on stderr.
    pub progress: bool,
}

/// The harness log of one scenario (`harness.log`), echoed to stderr when asked.
pub struct Log {
    file: std::fs::File,
    started: Instant,
    echo: bool,
    id: String,
}

impl Log {
    fn new(path: &Path, id: &str, echo: bool) -> Result<Log> {
        Ok(Log {
            file: std::fs::File::create(path)?,
            started: Instant::now(),
            echo,
            id: id.to_string(),
        })
    }

    /// Add a line.
    pub fn line(&mut self, msg: impl AsRef<str>) {
        let t = self.started.elapsed().as_secs_f64();
        let _ = writeln!(self.file, "[{t:8.3}] {}", msg.as_ref());
        if self.echo {
            eprintln!("[{}] {t:7.1}s {}", self.id, msg.as_ref());
        }
    }
}

/// Run one scenario; the result says passed, failed or error. `Err` only when the bundle
/// itself cannot be written.
pub fn run_scenario(
    loaded: &LoadedScenario,
    repos: &Path,
    accepted: bool,
    opts: &RunOptions,
) -> Result<ScenarioResult> {
    let s = &loaded.scenario;
    let started = Instant::now();
    let dir = opts.bundle_root.join(&s.id);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("scenario.yaml"), &loaded.text)?;
    let mut log = Log::new(&dir.join("harness.log"), &s.id, opts.progress)?;
    log.line(format!(
        "scenario {} ({}) from {}",
        s.id,
        s.classes.join(", "),
        loaded.path.display()
    ));
    let mut result = ScenarioResult {
        id: s.id.clone(),
        title: s.title.clone(),
        claim: s.claim.clone(),
        classes: s.classes.clone(),
        source: loaded.path.display().to_string(),
        accepted,
        outcome: "error".into(),
        failure: None,
        machine: None,
        readiness: ReadinessState::TimedOut,
        ready_ms: 0,
        duration_ms: 0,
        revisions: BTreeMap::new(),
        steps: Vec::new(),
        assertions: Summary::default(),
        bundle: dir.display().to_string(),
    };
    let mut checks: Vec<AssertionResult> = Vec::new();
    let outcome = execute(
        loaded,
        repos,
        opts,
        &dir,
        &mut log,
        &mut result,
        &mut checks,
    );
    if let Err(e) = &outcome {
        log.line(format!("harness error: {e:#}"));
        result.outcome = "error".into();
        result.failure = Some(format!("{e:#}"));
    }
    result.assertions = Summary {
        total: checks.len(),
        passed: checks.iter().filter(|c| c.passed).count(),
        failed: checks.iter().filter(|c| !c.passed).count(),
        errors: 0,
    };
    result.duration_ms = started.elapsed().as_millis() as u64;
    log.line(format!(
        "outcome {} in {:.1} s ({} of {} checks passed)",
        result.outcome,
        result.duration_ms as f64 / 1000.0,
        result.assertions.passed,
        result.assertions.total
    ));
    bundle::write_assertions(&dir, &s.id, &checks)?;
    if result.outcome != "passed" {
        bundle::write_failure_files(&dir, loaded, &result, &checks, opts)?;
    }
    core_ops::fsutil::write_json(&dir.join("result.json"), &result)?;
    Ok(result)
}

fn execute(
    loaded: &LoadedScenario,
    repos: &Path,
    opts: &RunOptions,
    dir: &Path,
    log: &mut Log,
    result: &mut ScenarioResult,
    checks: &mut Vec<AssertionResult>,
) -> Result<()> {
    let s = &loaded.scenario;
    let env = s.environment_profile();
    let policy = s.policy_profile();
    // sockets live here: a short path whatever the bundle path (sun_path holds 107 bytes)
    let machine_dir = Path::new(MACHINE_ROOT).join(super::report::random_hex(4));
    log.line(format!("machine directory {}", machine_dir.display()));
    let _cleanup = RemoveOnDrop {
        path: machine_dir.clone(),
        keep: opts.debug,
    };
    // a stop signal or the harness's death stops the guest and removes this directory too
    let extra = match &opts.backend {
        Backend::Synthetic => format!(
            "[ -d \"$d/run\" ] && {} down \"$d\" >/dev/null 2>&1",
            super::machine::quote(&synthetic::testbed_script()?.display().to_string())
        ),
        Backend::Vm { .. } => String::new(),
    };
    let _registered = super::cleanup::register(&machine_dir, &extra)?;
    let share = machine_dir.join("share");
    std::fs::create_dir_all(share.join("bin"))?;
    std::fs::create_dir_all(share.join("units"))?;

    let t = Instant::now();
    let mut built = fixture::build(repos, &s.fixtures.revisions(), &share.join("repo"))?;
    result.revisions = built.revisions.clone();
    log.line(format!(
        "fixture repository: {} revision(s) in {} ms: {}",
        built.revisions.len(),
        t.elapsed().as_millis(),
        built
            .revisions
            .iter()
            .map(|(l, sha)| format!("{l}={}", &sha[..12]))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    std::fs::copy(&opts.core_ops_bin, share.join("bin/core-ops")).with_context(|| {
        format!(
            "copying the core-ops binary under test {}",
            opts.core_ops_bin.display()
        )
    })?;
    let root = super::resources::path("units")?;
    for u in ["core-ops.service", "core-ops.timer"] {
        std::fs::copy(root.join(u), share.join("units").join(u))?;
    }

    // ---- machine + readiness
    let t = Instant::now();
    let console = dir.join("console-log.txt");
    let (mut machine, evidence): (Option<Box<dyn Machine>>, ReadinessEvidence) = match &opts.backend
    {
        Backend::Vm { image, driver } => {
            if env.containers {
                log.line("environment profile needs containers: podman from the image");
            }
            let drv = vm::choose_driver(driver.as_deref(), &mut |m| log.line(m))?;
            let (m, ev) = vm::start(
                &vm::VmOptions {
                    image,
                    run_dir: &machine_dir,
                    share: &share,
                    memory_mib: env.memory_mib,
                    vcpus: env.vcpus,
                    ready_timeout: opts.ready_timeout,
                    allow_arp_fallback: opts.allow_arp_fallback,
                },
                drv,
            )?;
            (m.map(|m| Box::new(m) as Box<dyn Machine>), ev)
        }
        Backend::Synthetic => {
            if env.containers {
                bail!("the synthetic backend has no containers profile; use the VM backend");
            }
            let (m, ev) = synthetic::start(&machine_dir, &machine_dir.join("console.log"))?;
            (Some(Box::new(m) as Box<dyn Machine>), ev)
        }
    };
    result.readiness = evidence.state;
    result.ready_ms = evidence.waited_ms;
    core_ops::fsutil::write_json(&dir.join("readiness-evidence.json"), &evidence)?;
    copy_logs(&machine_dir, dir);
    if evidence.state != ReadinessState::Accepted {
        log.line(format!(
            "readiness {:?} after {} ms (timeout {} ms); console kept as console-log.txt",
            evidence.state, evidence.waited_ms, evidence.timeout_ms
        ));
        if !console.exists() {
            std::fs::write(&console, b"")?;
        }
        bail!(
            "guest readiness {}: no CORE_OPS_VERIFY_READY record for this run within {} s",
            serde_json::to_value(evidence.state)?
                .as_str()
                .unwrap_or("?"),
            evidence.timeout_ms / 1000
        );
    }
    let Some(machine) = machine.as_mut() else {
        bail!("no machine");
    };
    let info: MachineInfo = machine.info();
    log.line(format!(
        "ready in {} ms ({} via {}, {}): {}",
        t.elapsed().as_millis(),
        info.backend,
        info.driver,
        info.accel
            .map(|a| format!("{a:?}").to_lowercase())
            .unwrap_or_else(|| "no accel".into()),
        evidence.accepted_record.clone().unwrap_or_default()
    ));
    result.machine = Some(info);

    let body = run_steps(
        &mut StepContext {
            loaded,
            repos,
            built: &mut built,
            dir,
            log,
            result,
            checks,
            policy: &policy,
        },
        machine.as_mut(),
    );
    if let Err(e) = &body {
        log.line(format!("step error: {e:#}"));
    }
    let failed = body.is_err() || checks.iter().any(|c| !c.passed);
    if failed {
        collect_diagnostics(machine.as_mut(), dir, log);
    }
    // before finish: a run paused before teardown already has its logs in the bundle; after:
    // the final console and journal
    copy_logs(&machine_dir, dir);
    finish(machine.as_mut(), opts, log, &machine_dir)?;
    copy_logs(&machine_dir, dir);
    body?;
    result.outcome = if failed { "failed" } else { "passed" }.into();
    if failed {
        result.failure = failure_text(checks);
    }
    Ok(())
}

/// Every failed check, one per line (`steps[N] subject check: expected X, got Y`), headed by
/// how many failed: the report names all failures, not only the first.
pub fn failure_text(checks: &[AssertionResult]) -> Option<String> {
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    if failed.is_empty() {
        return None;
    }
    let lines: Vec<String> = failed
        .iter()
        .map(|c| {
            format!(
                "steps[{}] {} {}: expected {}, got {}",
                c.step, c.subject, c.check, c.expected, c.actual
            )
        })
        .collect();
    Some(if lines.len() == 1 {
        lines[0].clone()
    } else {
        format!("{} checks failed:\n{}", lines.len(), lines.join("\n"))
    })
}

/// What the steps of one scenario share.
struct StepContext<'a> {
    loaded: &'a LoadedScenario,
    repos: &'a Path,
    built: &'a mut fixture::BuiltRepo,
    dir: &'a Path,
    log: &'a mut Log,
    result: &'a mut ScenarioResult,
    checks: &'a mut Vec<AssertionResult>,
    policy: &'a super::scenario::PolicyProfile,
}

/// Run the steps in order. Every assertion of every assert step is evaluated and recorded,
/// failing or not; the run stops early only when an action's exit code is not the expected
/// one (what later steps would act on is then unknown) or the machine stops answering.
fn run_steps(cx: &mut StepContext<'_>, machine: &mut dyn Machine) -> Result<()> {
    let s = &cx.loaded.scenario;
    let mut sh = Shell::new(machine);
    let g = sh.guest_share();
    let setup = format!(
        "install -m 0755 {g}/bin/core-ops /usr/bin/core-ops\ncore-ops --version\n{}",
        if s.environment_profile().containers {
            "podman image exists localhost/core-ops-mini:1 || podman import /usr/share/core-ops-verify/mini.tar localhost/core-ops-mini:1 >/dev/null\npodman image exists localhost/core-ops-mini:1"
        } else {
            ""
        }
    );
    let o = sh.exec("setup", &setup, Duration::from_secs(300))?;
    if o.code != 0 {
        bail!(
            "guest setup failed (exit {}): {}",
            o.code,
            o.stderr_text().trim()
        );
    }
    cx.log
        .line(format!("core-ops in the guest: {}", o.stdout_text().trim()));

    let mut last_plan: Option<Value> = None;
    let mut last_output: Option<Output> = None;
    let mut outputs: BTreeMap<usize, Value> = BTreeMap::new();
    let mut last_core_ops: Option<usize> = None;
    let mut remembered: BTreeMap<String, assertions::UnitMark> = BTreeMap::new();
    for (i, step) in s.steps.iter().enumerate() {
        let (name, arg) = step.action();
        let t = Instant::now();
        let record = |exit_code: Option<i32>, output: Option<String>| StepRecord {
            index: i,
            action: name.into(),
            argument: arg.clone(),
            exit_code,
            duration_ms: t.elapsed().as_millis() as u64,
            output,
        };
        if let Some(list) = &step.assert {
            let before = cx.checks.len();
            for a in list {
                let inputs = assertions::Inputs {
                    revisions: &cx.built.revisions,
                    last_plan: last_plan.as_ref(),
                    last_output: last_output.as_ref(),
                    outputs: &outputs,
                    last_core_ops,
                    remembered: &remembered,
                    state_dir: STATE_DIR,
                };
                cx.checks
                    .extend(assertions::evaluate(&mut sh, i, a, &inputs));
            }
            let failed: Vec<_> = cx.checks[before..].iter().filter(|c| !c.passed).collect();
            cx.log.line(format!(
                "steps[{i}] assert: {} checks, {} failed",
                cx.checks.len() - before,
                failed.len()
            ));
            for c in &failed {
                cx.log.line(format!(
                    "  FAILED {} {}: expected {}, got {}",
                    c.subject, c.check, c.expected, c.actual
                ));
            }
            cx.result.steps.push(record(None, None));
            continue;
        }
        if let Some(op) = &step.git {
            cx.log.line(format!("steps[{i}] git {arg}"));
            let done = cx.built.apply(cx.repos, op);
            let c = AssertionResult {
                step: i,
                subject: format!("git {arg}"),
                check: "done".into(),
                expected: Value::Bool(true),
                actual: match &done {
                    Ok(_) => Value::Bool(true),
                    Err(e) => Value::String(format!("{e:#}")),
                },
                passed: done.is_ok(),
            };
            match &done {
                Ok(line) => cx.log.line(format!("  {line}")),
                Err(e) => cx.log.line(format!("  FAILED git: {e:#}")),
            }
            cx.checks.push(c);
            cx.result.steps.push(record(None, None));
            cx.result.revisions = cx.built.revisions.clone();
            if done.is_err() {
                cx.log
                    .line("stopping: the repository is not what later steps expect");
                return Ok(());
            }
            continue;
        }
        let cmd = if let Some(unit) = &step.remember_unit {
            steps::StepCommand {
                script: format!(
                    "systemctl show {} -p InvocationID -p NRestarts",
                    super::machine::quote(unit)
                ),
                timeout: steps::timeout(step, cx.policy),
                json: false,
            }
        } else {
            steps::command(step, &g, &s.host, cx.policy)
        };
        cx.log.line(format!("steps[{i}] {name} {arg}"));
        let out = sh.exec(&format!("step-{i}-{name}"), &cmd.script, cmd.timeout)?;
        let rel = format!("steps/{i:02}-{name}");
        bundle::write_step(&cx.dir.join(&rel), &cmd.script, &out, cmd.json)?;
        cx.log.line(format!(
            "steps[{i}] {name} exit {} in {} ms",
            out.code,
            t.elapsed().as_millis()
        ));
        if cmd.json {
            let doc: Option<Value> = serde_json::from_slice(&out.stdout).ok();
            if name == "plan" {
                last_plan = doc.clone();
            }
            if let Some(d) = doc {
                outputs.insert(i, d);
            }
            last_core_ops = Some(i);
        }
        if let Some(unit) = &step.remember_unit {
            let props = assertions::parse_properties(&out.stdout_text());
            let mark = assertions::UnitMark {
                invocation_id: props.get("InvocationID").cloned().unwrap_or_default(),
                n_restarts: props
                    .get("NRestarts")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            };
            cx.log.line(format!(
                "  {unit}: InvocationID={} NRestarts={}",
                mark.invocation_id, mark.n_restarts
            ));
            remembered.insert(unit.clone(), mark);
        }
        cx.result.steps.push(record(Some(out.code), Some(rel)));
        let mut stop = false;
        if let Some(want) = &step.expect_exits {
            let mut got = steps::concurrent_exits(&out.stdout_text());
            got.sort();
            let mut want = want.clone();
            want.sort();
            let c = AssertionResult {
                step: i,
                subject: format!("{name} {arg}"),
                check: "exit_codes".into(),
                expected: Value::from(want.clone()),
                actual: Value::from(got.clone()),
                passed: want == got,
            };
            if !c.passed {
                cx.log.line(format!(
                    "  FAILED exit codes: expected {want:?}, got {got:?}"
                ));
                stop = true;
            }
            cx.checks.push(c);
        }
        let expected = match (step.expect_exit, step.runs_core_ops()) {
            (Some(e), _) => Some(e),
            // a disturbance that did not happen would make the rest meaningless
            (None, false) => Some(0),
            (None, true) => None,
        };
        if let Some(e) = expected {
            let c = AssertionResult {
                step: i,
                subject: format!("{name} {arg}"),
                check: "exit_code".into(),
                expected: Value::from(e),
                actual: Value::from(out.code),
                passed: e == out.code,
            };
            if !c.passed {
                cx.log.line(format!(
                    "  FAILED exit code: expected {e}, got {} (stderr: {})",
                    out.code,
                    last_line(&out.stderr_text())
                ));
                stop = true;
            }
            cx.checks.push(c);
        }
        if stop {
            cx.log
                .line("stopping: later steps would act on a machine in an unknown state");
            return Ok(());
        }
        last_output = Some(out);
    }
    Ok(())
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").chars().take(300).collect()
}

/// Guest journal, status.json, receipts, failed units: what a failure needs explained.
fn collect_diagnostics(machine: &mut dyn Machine, dir: &Path, log: &mut Log) {
    let diag = dir.join("diagnostics");
    let _ = std::fs::create_dir_all(&diag);
    let mut sh = Shell::new(machine);
    let items: [(&str, String); 5] = [
        (
            "journal.txt",
            "journalctl -b --no-pager -o short-monotonic".into(),
        ),
        ("status.json", format!("cat {STATE_DIR}/status.json")),
        (
            "receipts.txt",
            format!(
                "cd {STATE_DIR}/receipts 2>/dev/null && for f in $(ls | grep -E '^[0-9]+-[a-z-]+\\.json$' | sort -n); do echo \"== $f\"; cat \"$f\"; echo; done"
            ),
        ),
        (
            "units.txt",
            "systemctl list-units --all --no-pager --plain; echo; systemctl list-units --failed --no-pager".into(),
        ),
        (
            "core-ops-status.json",
            "core-ops status --json".into(),
        ),
    ];
    for (file, script) in items {
        match sh.exec(&format!("diag-{file}"), &script, Duration::from_secs(60)) {
            Ok(o) => {
                let _ = std::fs::write(diag.join(file), &o.stdout);
            }
            Err(e) => {
                log.line(format!("diagnostics {file}: {e:#}"));
                break;
            }
        }
    }
    log.line("diagnostics collected under diagnostics/");
}

fn finish(
    machine: &mut dyn Machine,
    opts: &RunOptions,
    log: &mut Log,
    machine_dir: &Path,
) -> Result<()> {
    if opts.pause_before_teardown {
        eprintln!(
            "core-ops-verify: paused before teardown; {}\npress Enter to continue",
            machine.keep_hint()
        );
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    if opts.debug {
        super::cleanup::keep(machine_dir);
        machine.keep();
        log.line(format!("--debug: machine kept: {}", machine.keep_hint()));
        eprintln!("core-ops-verify: {}", machine.keep_hint());
        return Ok(());
    }
    let t = Instant::now();
    machine.teardown()?;
    log.line(format!("torn down in {} ms", t.elapsed().as_millis()));
    Ok(())
}

/// Copy the machine's serial logs into the bundle under their contract names.
fn copy_logs(machine_dir: &Path, dir: &Path) {
    for (from, to) in [
        ("console.log", "console-log.txt"),
        ("journal.log", "journal-live.txt"),
        ("qemu.stderr", "qemu-stderr.txt"),
        ("domain.xml", "domain.xml"),
    ] {
        let src = machine_dir.join(from);
        if src.exists() {
            let _ = std::fs::copy(&src, dir.join(to));
        }
    }
}

/// Removes the machine directory when the scenario is done, however it ended (declared before
/// the machine, so it drops after the machine has stopped).
struct RemoveOnDrop {
    path: PathBuf,
    keep: bool,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
