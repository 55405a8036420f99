//! Validation of the rendered Quadlet set by the real Quadlet generator, before the host is
//! touched.
//!
//! Why: systemd runs the Quadlet generator at every reload. A file it rejects becomes no unit
//! at all, the reload still succeeds, and all systemd says afterwards is `not-found`; the
//! generator's own message goes to the kernel log (or nowhere). So `plan` writes the managed
//! Quadlet files and their drop-ins into a private temp dir, runs the generator there in dry-run
//! mode (`QUADLET_UNIT_DIRS=<tmp> <generator> -dryrun -no-kmsg-log`), and turns each rejection
//! into a blocked action carrying the generator's message. `apply` refuses a blocked plan, so a
//! rejected set changes nothing.
//!
//! Only files core-ops manages are validated (it never reads files it did not declare). A
//! reference to a Quadlet unit outside that set (`Network=other.network` with an unmanaged
//! `other.network`) therefore cannot be checked here: it is reported as a warning, not as a
//! rejection.
//!
//! This is the one place outside `apply` that starts a process; it is not systemd and changes
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{DEFAULT_QUADLET_GENERATORS, Paths, QuadletGenerator};
use crate::model::normalize::Kind;
use crate::render::DesiredState;

/// How long the generator may take before the set is reported as not validated.
const GENERATOR_TIMEOUT: Duration = Duration::from_secs(30);

/// What the generator said about the managed Quadlet set.
///
/// Why: the planner stays pure; it receives this value like any other input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuadletCheck {
    /// Rejected objects: resource id (`quadlet:web.container`, or a drop-in the generator
    /// could not load) -> the generator's messages, with the temp dir shown as the Quadlet dir.
    pub rejected: BTreeMap<String, String>,
    /// Plan warnings: not validated (and why), generator warnings, references outside the
    /// managed set, generated names that differ from what core-ops expects.
    pub warnings: Vec<String>,
    /// The generator that ran, if one did.
    pub generator: Option<PathBuf>,
    /// The units it generated (name -> text, the temp dir shown as the Quadlet dir), for
    /// `unit_check` to verify together with the plain units.
    pub generated: BTreeMap<String, String>,
}

/// The generator to run, or why there is none.
///
/// Why: "no generator" is a normal state (a host without podman, a laptop running `plan`) and
/// must be said once, in the plan, not be an error.
pub fn resolve_generator(setting: &QuadletGenerator) -> Result<PathBuf, String> {
    match setting {
        QuadletGenerator::Disabled => {
            Err("validation is off: CORE_OPS_QUADLET_GENERATOR=none".to_string())
        }
        QuadletGenerator::Path(p) if p.is_file() => Ok(p.clone()),
        QuadletGenerator::Path(p) => Err(format!(
            "{} does not exist (CORE_OPS_QUADLET_GENERATOR)",
            p.display()
        )),
        QuadletGenerator::Auto => DEFAULT_QUADLET_GENERATORS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "none of {} exists; set CORE_OPS_QUADLET_GENERATOR",
                    DEFAULT_QUADLET_GENERATORS.join(", ")
                )
            }),
    }
}

/// The managed files the generator reads: Quadlet files and drop-ins under the Quadlet dir,
/// as (resource id, path relative to the Quadlet dir, content).
fn quadlet_set<'a>(
    desired: &'a DesiredState,
    quadlet_dir: &Path,
) -> Vec<(&'a str, PathBuf, &'a [u8])> {
    desired
        .resources
        .values()
        .filter(|r| matches!(r.kind, Kind::Quadlet | Kind::Dropin))
        .filter_map(|r| {
            let rel = r.path.strip_prefix(quadlet_dir).ok()?;
            Some((r.id.as_str(), rel.to_path_buf(), r.content.as_slice()))
        })
        .collect()
}

/// Validate the managed Quadlet set of `desired` with the configured generator.
///
/// Why: see the module docs. Returns an empty check when the desired state has no Quadlet
/// files (no process is started then).
pub fn check(desired: &DesiredState, paths: &Paths) -> QuadletCheck {
    let set = quadlet_set(desired, &paths.quadlet_dir);
    if !set.iter().any(|(id, _, _)| id.starts_with("quadlet:")) {
        return QuadletCheck::default();
    }
    let generator = match resolve_generator(&paths.quadlet_generator) {
        Ok(g) => g,
        Err(why) => {
            return QuadletCheck {
                warnings: vec![format!(
                    "Quadlet files not validated: no generator ({why}); a file the generator rejects shows up only as a unit that is not loaded after the reload"
                )],
                ..QuadletCheck::default()
            };
        }
    };
    let t0 = Instant::now();
    let result = run_in_temp_dir(&generator, &set);
    let ms = t0.elapsed().as_millis() as u64;
    match result {
        Ok(run) => {
            tracing::info!(
                generator = %generator.display(),
                files = set.len(),
                duration_ms = ms,
                exit = run.success,
                "Quadlet set validated by the generator"
            );
            let mut c = interpret(desired, &set, &run, &paths.quadlet_dir);
            c.generator = Some(generator);
            c
        }
        Err(e) => QuadletCheck {
            warnings: vec![format!(
                "Quadlet files not validated: running {} failed: {e}",
                generator.display()
            )],
            generator: Some(generator),
            ..QuadletCheck::default()
        },
    }
}

/// The captured run of the generator.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    /// Exit status 0.
    success: bool,
    /// stdout: the generated units, each after a `---name---` line.
    stdout: String,
    /// stderr: quadlet's log lines.
    stderr: String,
    /// The temp dir the files were in (to show messages with the real Quadlet dir).
    dir: PathBuf,
}

fn run_in_temp_dir(generator: &Path, set: &[(&str, PathBuf, &[u8])]) -> std::io::Result<Run> {
    let tmp = crate::fsutil::ScratchDir::new_in(&std::env::temp_dir(), "quadlet", 0o700)?;
    for (_, rel, content) in set {
        let p = tmp.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, content)?;
    }
    let mut cmd = Command::new(generator);
    cmd.arg("-dryrun")
        .arg("-no-kmsg-log")
        .env("QUADLET_UNIT_DIRS", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // ETXTBSY: the binary is being replaced right now (a package upgrade); try again shortly
    let child = {
        let mut attempt = 0;
        loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other?,
            }
        }
    };
    let (status, stdout, stderr) = output_within(child, GENERATOR_TIMEOUT)?;
    Ok(Run {
        success: status.success(),
        stdout,
        stderr,
        dir: tmp.path().to_path_buf(),
    })
}

/// Wait for a child whose stdout and stderr are piped, collecting both, for at most
/// `timeout`; a child still running then is killed and the run is a `TimedOut` error. Shared
/// by the two checks that run a tool on the desired state (Quadlet generator, systemd-analyze).
pub(crate) fn output_within(
    mut child: std::process::Child,
    timeout: Duration,
) -> std::io::Result<(std::process::ExitStatus, String, String)> {
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", timeout.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ok((
        status,
        out_t.join().unwrap_or_default(),
        err_t.join().unwrap_or_default(),
    ))
}

/// quadlet prefixes the first line of each log record with `quadlet-generator[PID]: `; the
/// continuation lines of a multi-error record have no prefix.
fn strip_prefix(line: &str) -> &str {
    if let Some(rest) = line.strip_prefix("quadlet-generator[")
        && let Some((pid, msg)) = rest.split_once("]: ")
        && pid.chars().all(|c| c.is_ascii_digit())
    {
        return msg;
    }
    line
}

/// The first `"..."` in a message: quadlet quotes the file it talks about
/// (`converting "web.container": ...`, `error loading "/dir/web.container", ...`).
fn first_quoted(msg: &str) -> Option<&str> {
    let start = msg.find('"')? + 1;
    let len = msg[start..].find('"')?;
    Some(&msg[start..start + len])
}

/// Turn the generator's output into rejections and warnings.
fn interpret(
    desired: &DesiredState,
    set: &[(&str, PathBuf, &[u8])],
    run: &Run,
    quadlet_dir: &Path,
) -> QuadletCheck {
    let tmp = run.dir.display().to_string();
    let shown = |s: &str| s.replace(&tmp, &quadlet_dir.display().to_string());
    let mut said = read_stderr(set, run, &shown);
    if !run.success && said.rejected.is_empty() {
        if said.unattributed.is_empty() && !said.outside_refs {
            said.unattributed
                .push("the generator failed without saying why".into());
        }
        // a failure core-ops cannot pin on one file blocks every Quadlet file, unless every
        // error was a reference outside the managed set (already a warning)
        if !said.unattributed.is_empty() {
            let all = said.unattributed.join("; ");
            for (id, _, _) in set.iter().filter(|(id, _, _)| id.starts_with("quadlet:")) {
                said.rejected.insert(id.to_string(), vec![all.clone()]);
            }
        }
    } else {
        for u in said.unattributed {
            said.warnings.push(format!("Quadlet generator: {u}"));
        }
    }
    if run.success {
        said.warnings
            .extend(unexpected_unit_names(desired, set, run, &said.rejected));
    }
    QuadletCheck {
        rejected: said
            .rejected
            .into_iter()
            .map(|(id, msgs)| (id, msgs.join("; ")))
            .collect(),
        warnings: said.warnings,
        generator: None,
        generated: generated_units(&shown(&run.stdout)),
    }
}

/// What the generator said on stderr, pinned on the managed files it names.
#[derive(Default)]
struct Stderr {
    rejected: BTreeMap<String, Vec<String>>,
    warnings: Vec<String>,
    /// Errors that name no managed file.
    unattributed: Vec<String>,
    /// An error was only a reference to a Quadlet unit core-ops does not manage.
    outside_refs: bool,
}

fn read_stderr(
    set: &[(&str, PathBuf, &[u8])],
    run: &Run,
    shown: &dyn Fn(&str) -> String,
) -> Stderr {
    let tmp = run.dir.display().to_string();
    let by_rel: BTreeMap<String, &str> = set
        .iter()
        .map(|(id, rel, _)| (rel.display().to_string(), *id))
        .collect();
    let managed_units: BTreeSet<&str> = set
        .iter()
        .filter(|(id, _, _)| id.starts_with("quadlet:"))
        .map(|(_, rel, _)| rel.to_str().unwrap_or_default())
        .collect();
    let mut out = Stderr::default();
    for raw in run.stderr.lines() {
        let msg = strip_prefix(raw).trim();
        if msg.is_empty()
            || msg.starts_with("Loading source ")
            || msg.starts_with("No files parsed")
        {
            continue;
        }
        if let Some(w) = msg.strip_prefix("Warning: ") {
            out.warnings
                .push(format!("Quadlet generator: {}", shown(w)));
            continue;
        }
        let file = first_quoted(msg).map(|q| {
            q.strip_prefix(&tmp)
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(q)
                .to_string()
        });
        let Some(id) = file.as_deref().and_then(|f| by_rel.get(f)) else {
            out.unattributed.push(shown(msg));
            continue;
        };
        // a reference to a Quadlet unit core-ops does not manage cannot be validated here
        if let Some(rest) = msg.split("requested Quadlet unit ").nth(1)
            && let Some(unit) = rest.strip_suffix(" was not found")
            && !managed_units.contains(unit)
        {
            out.warnings.push(format!(
                "{id} not fully validated: it refers to {unit}, which core-ops does not manage; the generator on the host needs it ({})",
                shown(msg)
            ));
            out.outside_refs = true;
            continue;
        }
        out.rejected
            .entry(id.to_string())
            .or_default()
            .push(shown(msg));
    }
    out
}

/// The generated unit names are what core-ops starts and verifies: a warning for each
/// accepted Quadlet file whose generated unit is not the one core-ops expects.
fn unexpected_unit_names(
    desired: &DesiredState,
    set: &[(&str, PathBuf, &[u8])],
    run: &Run,
    rejected: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let generated: BTreeSet<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("---")?.strip_suffix("---"))
        .collect();
    let made = if generated.is_empty() {
        "none".to_string()
    } else {
        generated.iter().copied().collect::<Vec<_>>().join(", ")
    };
    desired
        .resources
        .values()
        .filter(|r| r.kind == Kind::Quadlet && !rejected.contains_key(&r.id) && set_has(set, &r.id))
        .filter_map(|r| {
            let u = r.unit.as_ref()?;
            (!generated.contains(u.name.as_str())).then(|| {
                format!(
                    "{}: core-ops expects the generated unit {}, but the generator made {made}",
                    r.id, u.name
                )
            })
        })
        .collect()
}

/// The dry run's stdout split into units: each starts after a `---name---` line.
fn generated_units(stdout: &str) -> BTreeMap<String, String> {
    let mut units: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<&mut String> = None;
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("---").and_then(|l| l.strip_suffix("---"))
            && !name.is_empty()
        {
            current = Some(units.entry(name.to_string()).or_default());
            continue;
        }
        if let Some(text) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    units
}

fn set_has(set: &[(&str, PathBuf, &[u8])], id: &str) -> bool {
    set.iter().any(|(i, _, _)| *i == id)
}

#[cfg(test)]
mod tests;
