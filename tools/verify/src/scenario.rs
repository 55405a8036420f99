//! Scenario definitions: the YAML a verification run executes.
//!
//! Why strict: a scenario is a permanent regression entry and the release gate. A misspelt key
//! that silently did nothing would turn a real check into a test that cannot fail, so unknown
//! fields, steps with no or two actions, and references to revisions the fixture does not have
//! are errors naming the file and line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use core_ops::error::{InputError, Location};
use core_ops::model::yaml;

/// One scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Stable id: the bundle directory name and what `--scenario-id` selects.
    pub id: String,
    /// One line for people.
    pub title: String,
    /// One sentence of public behaviour this scenario proves.
    pub claim: String,
    /// Behaviour classes covered (see [`CLASSES`]).
    pub classes: Vec<String>,
    /// Named environment profile (see [`EnvironmentProfile`]).
    #[serde(default = "default_profile")]
    pub environment: String,
    /// Named policy profile (see [`PolicyProfile`]).
    #[serde(default = "default_profile")]
    pub policy: String,
    /// Host name core-ops renders for inside the guest.
    #[serde(default = "default_host")]
    pub host: String,
    /// The desired-state repository the steps use.
    pub fixtures: Fixtures,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

fn default_profile() -> String {
    "default".into()
}

fn default_host() -> String {
    "core-ops-guest".into()
}

/// Every class a scenario may name; the accepted corpus must cover them all.
pub const CLASSES: &[&str] = &[
    "install",
    "upgrade",
    "drift",
    "prune",
    "mount",
    "quadlet",
    "rollback",
    "auto-rollback",
    "quarantine",
    "runtime",
    "crash-recovery",
    "timer-agent",
    "bad-input",
];

/// Where the desired-state repository comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    /// One revision: a directory under `repos/` (e.g. `basic/v1`), committed and tagged with
    /// its last path component.
    #[serde(default)]
    pub repository: Option<String>,
    /// An ordered history: each directory under `repos/` becomes the next commit on `main`,
    /// tagged with its last path component.
    #[serde(default)]
    pub repository_evolution: Option<Vec<String>>,
}

impl Fixtures {
    /// The revision directories in commit order.
    pub fn revisions(&self) -> Vec<String> {
        match (&self.repository, &self.repository_evolution) {
            (Some(one), None) => vec![one.clone()],
            (None, Some(many)) => many.clone(),
            _ => Vec::new(),
        }
    }
}

/// The tag a revision directory gets: its last path component.
pub fn revision_label(dir: &str) -> &str {
    dir.trim_end_matches('/').rsplit('/').next().unwrap_or(dir)
}

/// One step: exactly one action, optionally with the exit code core-ops must return.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// `core-ops apply --rev REV`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<String>,
    /// `core-ops plan --rev REV` (its JSON is what `plan_action` assertions read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// `core-ops explain OBJ` (deployed revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain: Option<String>,
    /// `core-ops apply --rollback-to REV`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    /// `core-ops agent --rev REV`: one timer-driven run, invoked directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_tick: Option<String>,
    /// `core-ops status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<bool>,
    /// `core-ops resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
    /// Install the shipped core-ops.service/.timer pointed at REV, start the timer and wait
    /// until the service it fires has run once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_run: Option<String>,
    /// Disturbance: replace a file's content on the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit_file: Option<EditFile>,
    /// Disturbance: delete a file on the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_file: Option<String>,
    /// Disturbance: `systemctl stop UNIT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_unit: Option<String>,
    /// Disturbance: SIGKILL the unit's processes (it fails or restarts per its policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_unit: Option<String>,
    /// Disturbance: start `core-ops apply --rev REV` and `kill -9` it once it has begun
    /// changing the host (its in-flight journal exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_apply: Option<String>,
    /// Disturbance: fill the root filesystem until only this many MiB are free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_disk: Option<u64>,
    /// Undo `fill_disk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_disk: Option<bool>,
    /// Scenario-local escape hatch: a shell command on the guest (prefer the actions above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Check the observable contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assert: Option<Vec<Assertion>>,
    /// The exit code the action must return (checked as an assertion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_exit: Option<i32>,
}

/// `edit_file:` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditFile {
    /// Absolute path on the guest.
    pub path: String,
    /// The new content.
    pub content: String,
}

/// One check of observable behaviour.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    /// A unit's state as systemd reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `ActiveState`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_state: Option<String>,
    /// `SubState`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_state: Option<String>,
    /// `LoadState`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_state: Option<String>,
    /// `UnitFileState` (`enabled`, `disabled`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<String>,
    /// A file on the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Whether the file exists (default: true when other file checks are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// Its sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Its exact content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A JSON pointer into status.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The value at the pointer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    /// The value is the commit id of this fixture revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The whole receipt log, in order: `transition` of reconcile receipts,
    /// `runtime:<installState>` of runtime install receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<Vec<String>>,
    /// An object's action in the last `plan` step's JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_action: Option<String>,
    /// The expected action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The expected cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Text the previous step's stdout or stderr contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_contains: Option<String>,
}

impl Assertion {
    /// What the assertion is about, for reports (`unit web.service`, `status /outcome`).
    pub fn subject(&self) -> String {
        if let Some(u) = &self.unit {
            format!("unit {u}")
        } else if let Some(f) = &self.file {
            format!("file {f}")
        } else if let Some(p) = &self.status {
            format!("status {p}")
        } else if self.receipts.is_some() {
            "receipts".into()
        } else if let Some(o) = &self.plan_action {
            format!("plan action of {o}")
        } else if self.output_contains.is_some() {
            "output of the previous step".into()
        } else {
            "nothing".into()
        }
    }
}

impl Step {
    /// The action's name and argument (`("apply", "v1")`); validation guarantees exactly one.
    pub fn action(&self) -> (&'static str, String) {
        self.actions()
            .into_iter()
            .next()
            .unwrap_or(("none", String::new()))
    }

    /// Every action the step names, with its argument, `assert` last. Validation requires
    /// exactly one; listing them all once is what makes "no action" and "two actions"
    /// checkable from the same table that names them.
    fn actions(&self) -> Vec<(&'static str, String)> {
        let b = |v: &Option<bool>| v.map(|x| x.to_string());
        let named: [(&'static str, Option<String>); 17] = [
            ("apply", self.apply.clone()),
            ("plan", self.plan.clone()),
            ("explain", self.explain.clone()),
            ("rollback_to", self.rollback_to.clone()),
            ("agent_tick", self.agent_tick.clone()),
            ("status", b(&self.status)),
            ("resume", b(&self.resume)),
            ("timer_run", self.timer_run.clone()),
            ("edit_file", self.edit_file.as_ref().map(|e| e.path.clone())),
            ("remove_file", self.remove_file.clone()),
            ("stop_unit", self.stop_unit.clone()),
            ("kill_unit", self.kill_unit.clone()),
            ("kill_apply", self.kill_apply.clone()),
            ("fill_disk", self.fill_disk.map(|m| format!("{m} MiB free"))),
            ("free_disk", b(&self.free_disk)),
            ("run", self.run.clone()),
            (
                "assert",
                self.assert.as_ref().map(|a| format!("{} checks", a.len())),
            ),
        ];
        named
            .into_iter()
            .filter_map(|(n, v)| v.map(|v| (n, v)))
            .collect()
    }

    /// The fixture revision the action names, if it names one.
    pub fn revision(&self) -> Option<&str> {
        [
            &self.apply,
            &self.plan,
            &self.rollback_to,
            &self.agent_tick,
            &self.timer_run,
            &self.kill_apply,
        ]
        .into_iter()
        .find_map(|v| v.as_deref())
    }

    /// Whether this step runs core-ops or a command whose exit code is the point (so
    /// `expect_exit` and `output_contains` make sense).
    pub fn runs_core_ops(&self) -> bool {
        matches!(
            self.action().0,
            "apply"
                | "plan"
                | "explain"
                | "rollback_to"
                | "agent_tick"
                | "status"
                | "resume"
                | "timer_run"
                | "run"
        )
    }
}

/// Named environment profiles: the machine a scenario needs.
///
/// Why named: scenarios stay short and the routine machine settings live in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnvironmentProfile {
    /// Profile name.
    pub name: &'static str,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Whether the scenario needs Quadlet containers (podman + the local image).
    pub containers: bool,
}

/// All environment profiles.
pub const ENVIRONMENTS: &[EnvironmentProfile] = &[
    EnvironmentProfile {
        name: "default",
        memory_mib: 768,
        vcpus: 2,
        containers: false,
    },
    EnvironmentProfile {
        name: "containers",
        memory_mib: 1024,
        vcpus: 2,
        containers: true,
    },
];

/// Named policy profiles: how the harness drives core-ops and how long it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PolicyProfile {
    /// Profile name.
    pub name: &'static str,
    /// `CORE_OPS_SETTLE_MS` for every core-ops step.
    pub settle_ms: u64,
    /// `CORE_OPS_JOB_TIMEOUT` (seconds).
    pub job_timeout_s: u64,
    /// Longest a single step may take before the scenario fails.
    pub step_timeout_s: u64,
}

/// All policy profiles.
pub const POLICIES: &[PolicyProfile] = &[
    PolicyProfile {
        name: "default",
        settle_ms: 1500,
        job_timeout_s: 90,
        step_timeout_s: 300,
    },
    PolicyProfile {
        name: "quick-settle",
        settle_ms: 400,
        job_timeout_s: 60,
        step_timeout_s: 300,
    },
];

impl Scenario {
    /// The environment profile (validated to exist).
    pub fn environment_profile(&self) -> EnvironmentProfile {
        *ENVIRONMENTS
            .iter()
            .find(|p| p.name == self.environment)
            .unwrap_or(&ENVIRONMENTS[0])
    }

    /// The policy profile (validated to exist).
    pub fn policy_profile(&self) -> PolicyProfile {
        *POLICIES
            .iter()
            .find(|p| p.name == self.policy)
            .unwrap_or(&POLICIES[0])
    }
}

/// A loaded scenario and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedScenario {
    /// The file.
    pub path: PathBuf,
    /// Its bytes (kept in the bundle as they were).
    pub text: String,
    /// The parsed definition.
    pub scenario: Scenario,
}

/// Read and validate one scenario. `repos` is the fixture root its revisions must exist in.
pub fn load(path: &Path, repos: &Path) -> Result<LoadedScenario, InputError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| InputError::new(Location::file(&name), format!("cannot read: {e}")))?;
    let scenario: Scenario = yaml::parse(&name, &bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    validate(&scenario, &name, &text, repos)?;
    Ok(LoadedScenario {
        path: path.to_path_buf(),
        text,
        scenario,
    })
}

/// Every `*.yaml` scenario of a directory, sorted by file name.
pub fn load_dir(dir: &Path, repos: &Path) -> Result<Vec<LoadedScenario>, InputError> {
    let name = dir.display().to_string();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| InputError::new(Location::file(&name), format!("cannot read: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let loaded = files
        .iter()
        .map(|p| load(p, repos))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = BTreeSet::new();
    for l in &loaded {
        if !seen.insert(l.scenario.id.clone()) {
            return Err(InputError::new(
                Location::line(l.path.display().to_string(), line_of(&l.text, "id:")),
                format!("duplicate scenario id {:?} in {name}", l.scenario.id),
            ));
        }
    }
    Ok(loaded)
}

/// The fixture repositories directory that belongs to a scenarios directory
/// (`.../verification/scenarios` -> `.../verification/repos`).
pub fn repos_dir_for(scenario_path: &Path) -> PathBuf {
    let dir = if scenario_path.is_dir() {
        scenario_path
    } else {
        scenario_path.parent().unwrap_or(Path::new("."))
    };
    dir.parent().unwrap_or(Path::new(".")).join("repos")
}

fn validate(s: &Scenario, file: &str, text: &str, repos: &Path) -> Result<(), InputError> {
    let at =
        |key: &str, msg: String| InputError::new(Location::line(file, line_of(text, key)), msg);
    let id_ok = !s.id.is_empty()
        && s.id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !id_ok {
        return Err(at(
            "id:",
            format!("id {:?}: use lower-case letters, digits and '-'", s.id),
        ));
    }
    if s.claim.trim().is_empty() || s.title.trim().is_empty() {
        return Err(at("claim:", "title and claim must not be empty".into()));
    }
    if s.classes.is_empty() {
        return Err(at("classes:", "at least one class is required".into()));
    }
    for c in &s.classes {
        if !CLASSES.contains(&c.as_str()) {
            return Err(at(
                "classes:",
                format!("unknown class {c:?} (known: {})", CLASSES.join(", ")),
            ));
        }
    }
    if !ENVIRONMENTS.iter().any(|p| p.name == s.environment) {
        let known: Vec<_> = ENVIRONMENTS.iter().map(|p| p.name).collect();
        return Err(at(
            "environment:",
            format!(
                "unknown environment profile {:?} (known: {})",
                s.environment,
                known.join(", ")
            ),
        ));
    }
    if !POLICIES.iter().any(|p| p.name == s.policy) {
        let known: Vec<_> = POLICIES.iter().map(|p| p.name).collect();
        return Err(at(
            "policy:",
            format!(
                "unknown policy profile {:?} (known: {})",
                s.policy,
                known.join(", ")
            ),
        ));
    }
    if s.fixtures.repository.is_some() == s.fixtures.repository_evolution.is_some() {
        return Err(at(
            "fixtures:",
            "fixtures: give exactly one of `repository` or `repository_evolution`".into(),
        ));
    }
    let revisions = s.fixtures.revisions();
    if revisions.is_empty() {
        return Err(at(
            "fixtures:",
            "repository_evolution lists no revisions".into(),
        ));
    }
    let mut labels = BTreeSet::new();
    for r in &revisions {
        let dir = repos.join(r);
        if r.contains("..") || !dir.is_dir() {
            return Err(at(
                r,
                format!("fixture revision {r:?}: no directory {}", dir.display()),
            ));
        }
        if !labels.insert(revision_label(r).to_string()) {
            return Err(at(
                r,
                format!(
                    "fixture revision {r:?}: the label {:?} is used twice",
                    revision_label(r)
                ),
            ));
        }
    }
    if s.steps.is_empty() {
        return Err(at("steps:", "a scenario needs at least one step".into()));
    }
    let step_lines = item_lines(text, "steps:");
    for (i, step) in s.steps.iter().enumerate() {
        let line = step_lines
            .get(i)
            .copied()
            .unwrap_or_else(|| line_of(text, "steps:"));
        let err =
            |msg: String| InputError::new(Location::line(file, line), format!("steps[{i}]: {msg}"));
        match step.actions().len() {
            1 => {}
            0 => return Err(err("no action (e.g. `apply: v1` or `assert: [...]`)".into())),
            n => return Err(err(format!("{n} actions in one step; use one per step"))),
        }
        if let Some(rev) = step.revision()
            && !labels.contains(rev)
        {
            return Err(err(format!(
                "revision {rev:?} is not a fixture revision (have: {})",
                labels.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if step.expect_exit.is_some() && !step.runs_core_ops() {
            return Err(err(format!(
                "expect_exit is only for steps that run a command, not `{}`",
                step.action().0
            )));
        }
        for a in step.assert.iter().flatten() {
            validate_assertion(a, &labels).map_err(err)?;
        }
    }
    Ok(())
}

fn validate_assertion(a: &Assertion, labels: &BTreeSet<String>) -> Result<(), String> {
    let subjects = [
        a.unit.is_some(),
        a.file.is_some(),
        a.status.is_some(),
        a.receipts.is_some(),
        a.plan_action.is_some(),
        a.output_contains.is_some(),
    ];
    if subjects.iter().filter(|x| **x).count() != 1 {
        return Err("an assertion names exactly one of unit, file, status, receipts, plan_action, output_contains".into());
    }
    let unit_checks = [&a.active_state, &a.sub_state, &a.load_state, &a.enabled];
    let has_unit_checks = unit_checks.iter().any(|c| c.is_some());
    let has_file_checks = a.exists.is_some() || a.sha256.is_some() || a.content.is_some();
    let has_status_checks = a.equals.is_some() || a.revision.is_some();
    let has_plan_checks = a.action.is_some() || a.cause.is_some();
    let (ok, what) = if a.unit.is_some() {
        (
            has_unit_checks && !has_file_checks && !has_status_checks && !has_plan_checks,
            "a unit assertion needs active_state, sub_state, load_state or enabled",
        )
    } else if a.file.is_some() {
        (
            has_file_checks && !has_unit_checks && !has_status_checks && !has_plan_checks,
            "a file assertion needs exists, sha256 or content",
        )
    } else if a.status.is_some() {
        (
            has_status_checks && !has_unit_checks && !has_file_checks && !has_plan_checks,
            "a status assertion needs equals or revision",
        )
    } else if a.plan_action.is_some() {
        (
            has_plan_checks && !has_unit_checks && !has_file_checks && !has_status_checks,
            "a plan_action assertion needs action or cause",
        )
    } else {
        (
            !has_unit_checks && !has_file_checks && !has_status_checks && !has_plan_checks,
            "receipts and output_contains take no other checks",
        )
    };
    if !ok {
        return Err(format!("{}: {what}", a.subject()));
    }
    if let Some(r) = &a.revision
        && !labels.contains(r)
    {
        return Err(format!("revision {r:?} is not a fixture revision"));
    }
    if a.exists == Some(false) && (a.sha256.is_some() || a.content.is_some()) {
        return Err(format!(
            "{}: exists: false with a content check can never pass",
            a.subject()
        ));
    }
    Ok(())
}

/// 1-based line of the first line containing `needle` (1 when absent).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// 1-based lines of the items of the top-level sequence under `key`.
fn item_lines(text: &str, key: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut inside = false;
    let mut indent = None;
    for (i, line) in text.lines().enumerate() {
        if !inside {
            inside = line.starts_with(key);
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let this = line.len() - trimmed.len();
        if this == 0 && !trimmed.starts_with('-') {
            break;
        }
        if trimmed.starts_with("- ") || trimmed == "-" {
            match indent {
                None => {
                    indent = Some(this);
                    out.push(i + 1);
                }
                Some(n) if n == this => out.push(i + 1),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
