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

/// The fixture repository's branch: steps may name it like a revision (`apply: main`), to
/// follow it through `git:` steps that move it.
pub const FIXTURE_BRANCH: &str = "main";

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
    /// `core-ops apply --rollback-to REV`. Any string: a fixture label is passed as the
    /// commit id it names, anything else verbatim (so a refusal of an unknown revision can be
    /// asserted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    /// `core-ops apply --rollback-to REV --rollback-plan-only` (REV as for `rollback_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_plan_only: Option<String>,
    /// `core-ops apply --rev REV` started this many times at once (`concurrent: {runs, apply}`);
    /// their exit codes are checked, as a multiset, against `expect_exits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<Concurrent>,
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
    /// changing the host (its in-flight journal exists), or, with `{rev, at}`, once it paused
    /// at the named failpoint (needs a core-ops built with `--features failpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_apply: Option<KillApply>,
    /// Disturbance: fill the root filesystem until only this many MiB are free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_disk: Option<u64>,
    /// Undo `fill_disk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_disk: Option<bool>,
    /// Change the fixture repository on the host (commit, tag, force-move a ref).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitOp>,
    /// Disturbance: set the guest's wall clock (`date -s`; RFC 3339 or anything `date -d`
    /// reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_clock: Option<String>,
    /// Disturbance: `chmod MODE PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chmod: Option<Chmod>,
    /// Disturbance: `chown OWNER PATH` (`user`, `user:group` or numeric ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chown: Option<Chown>,
    /// Host set-up: `mkdir -p PATH` (mode 0755), a directory the host had before core-ops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make_dir: Option<String>,
    /// Disturbance: keep a process whose working directory is PATH running (a transient
    /// unit), so a mount there is busy until `release_busy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_busy: Option<String>,
    /// Stop the process `hold_busy: PATH` started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_busy: Option<String>,
    /// Record a unit's `InvocationID` and `NRestarts` now; a later `restarted:` assertion on
    /// the unit compares against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remember_unit: Option<String>,
    /// Scenario-local escape hatch: a shell command on the guest (prefer the actions above).
    /// Needs `expect_exit`: a command whose exit code is not checked cannot fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Check the observable contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assert: Option<Vec<Assertion>>,
    /// The exit code the action must return (checked as an assertion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_exit: Option<i32>,
    /// `concurrent` only: every run's exit code, in any order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_exits: Option<Vec<i32>>,
    /// Core-ops steps: `CORE_OPS_HOST` for this step instead of the scenario's `host` (several
    /// hosts of one repository in one scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `plan` only: add `--detailed-exitcode` (0 nothing to change, 2 changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detailed_exitcode: Option<bool>,
    /// Seconds this step may take (default: the policy profile's step timeout), up to
    /// [`MAX_STEP_TIMEOUT_S`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// The longest per-step timeout a scenario may ask for (2 h): long enough for any real
/// apply under TCG, short enough that a hung step still ends a CI job.
pub const MAX_STEP_TIMEOUT_S: u64 = 7200;

/// `kill_apply:` argument: a revision (kill once the in-flight journal exists) or
/// `{rev, at}` (kill once paused at a named failpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KillApply {
    /// `kill_apply: v2`.
    Rev(String),
    /// `kill_apply: {rev: v2, at: write}`.
    At(KillAt),
}

/// `kill_apply: {rev, at}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillAt {
    /// The revision the apply goes to.
    pub rev: String,
    /// Where: an apply phase (see [`APPLY_PHASES`]), `after-write:N` (after the write
    /// phase's Nth file) or `runtime:STATE` (a runtime transaction persisted STATE).
    pub at: String,
}

/// The apply phases core-ops can be paused before (`apply::phase` failpoint), in order.
pub const APPLY_PHASES: &[&str] = &[
    "stop", "disable", "prepare", "write", "enable", "reload", "runtimes", "start", "verify",
];

impl KillApply {
    /// The revision.
    pub fn rev(&self) -> &str {
        match self {
            KillApply::Rev(r) => r,
            KillApply::At(k) => &k.rev,
        }
    }

    /// The failpoint setting (`FAILPOINTS` value) and the point's name as core-ops prints it
    /// when paused; `None` for the plain form.
    pub fn failpoint(&self) -> Option<(String, String)> {
        let KillApply::At(k) = self else { return None };
        let (name, arg) = if let Some(n) = k.at.strip_prefix("after-write:") {
            ("apply::after-write", n)
        } else if let Some(s) = k.at.strip_prefix("runtime:") {
            ("runtime::state", s)
        } else {
            ("apply::phase", k.at.as_str())
        };
        Some((format!("{name}=return({arg})"), format!("{name}({arg})")))
    }

    fn check(&self) -> Result<(), String> {
        let KillApply::At(k) = self else {
            return Ok(());
        };
        let ok = APPLY_PHASES.contains(&k.at.as_str())
            || k.at
                .strip_prefix("after-write:")
                .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0))
            || k.at.strip_prefix("runtime:").is_some_and(|s| {
                !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "kill_apply at {:?}: use a phase ({}), after-write:N or runtime:STATE",
                k.at,
                APPLY_PHASES.join(", ")
            ))
        }
    }
}

/// `concurrent:` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrent {
    /// How many runs start together (2..=16).
    pub runs: u32,
    /// The revision each applies.
    pub apply: String,
}

/// `git:` arguments: exactly one of `commit` (optionally with `tag`), `tag` with `at`, or
/// `force_ref` with `to`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitOp {
    /// A revision directory under `repos/` committed as the next commit on `main` (its whole
    /// tree), labelled with `tag` (default: its last path component) like a fixture revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// With `commit`: the label/tag of the new commit. With `at`: a new tag on that revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The revision (label) a new `tag` points at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The tag is annotated (a tag object with a message) rather than lightweight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated: Option<bool>,
    /// A ref to move, even backwards (`main`, `v2` or a full `refs/...` name; a short name is
    /// a branch when `refs/heads/NAME` exists, else a tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_ref: Option<String>,
    /// The revision (label) `force_ref` is moved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl GitOp {
    /// Human summary for logs and step records.
    pub fn describe(&self) -> String {
        if let Some(c) = &self.commit {
            format!("commit {c} as {}", self.commit_label().unwrap_or_default())
        } else if let Some(r) = &self.force_ref {
            format!("force {r} to {}", self.to.as_deref().unwrap_or("?"))
        } else {
            format!(
                "{} tag {} at {}",
                if self.annotated == Some(true) {
                    "annotated"
                } else {
                    "lightweight"
                },
                self.tag.as_deref().unwrap_or("?"),
                self.at.as_deref().unwrap_or("?")
            )
        }
    }

    /// The label a `commit` gets.
    pub fn commit_label(&self) -> Option<String> {
        let c = self.commit.as_ref()?;
        Some(
            self.tag
                .clone()
                .unwrap_or_else(|| revision_label(c).to_string()),
        )
    }
}

/// `chmod:` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chmod {
    /// Absolute path on the guest.
    pub path: String,
    /// Octal mode (`"0600"`).
    pub mode: String,
}

/// `chown:` arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chown {
    /// Absolute path on the guest.
    pub path: String,
    /// `user`, `user:group`, or numeric ids.
    pub owner: String,
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
    /// Unit: whether it was (re)started since `remember_unit` (its `InvocationID` changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted: Option<bool>,
    /// Unit: systemd's `NRestarts` (automatic restarts by `Restart=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_restarts: Option<u64>,
    /// File: its permission bits, octal (`"0644"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// File: its owner's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// File: its group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// File: it is a directory with exactly these entries (names, any order; `[]` = empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<String>>,
    /// One receipt of the log by position (0 first, -1 newest); read with `pointer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<i64>,
    /// The newest receipts' labels (as in `receipts`), oldest of them first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts_tail: Option<Vec<String>>,
    /// How many receipts the log holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts_count: Option<usize>,
    /// Whether the receipt hash chain verifies (each receipt names its predecessor's digest;
    /// the head anchor names the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_chain: Option<bool>,
    /// Whether the runtime install receipt at this position (as `receipt`) validates against
    /// the vendored RuntimeInstallReceipt schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_schema: Option<i64>,
    /// A JSON pointer into a core-ops step's `--json` output (`step`, default the latest
    /// core-ops step before this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_json: Option<String>,
    /// `output_json`: which step's output (its index in `steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// With `receipt` or `output_json`: where in the document (default: the whole document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// The value at the pointer is an array holding this value, or a string containing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<serde_json::Value>,
    /// The kernel's mount table (`/proc/self/mountinfo` in the guest) at this mount point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// `mount`: whether something is mounted there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounted: Option<bool>,
    /// `mount`: the file-system type of the top mount there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    /// No core-ops temporary file (`.core-ops-tmp-*`) anywhere under this directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_temp_files: Option<String>,
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
        } else if let Some(i) = self.receipt {
            format!("receipt {i}")
        } else if self.receipts_tail.is_some() {
            "newest receipts".into()
        } else if self.receipts_count.is_some() {
            "receipt count".into()
        } else if self.receipt_chain.is_some() {
            "receipt chain".into()
        } else if let Some(i) = self.receipt_schema {
            format!("runtime receipt {i}")
        } else if let Some(p) = &self.output_json {
            match self.step {
                Some(n) => format!("output of steps[{n}] {p}"),
                None => format!("output {p}"),
            }
        } else if let Some(m) = &self.mount {
            format!("mount {m}")
        } else if let Some(d) = &self.no_temp_files {
            format!("temp files under {d}")
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
        let named: [(&'static str, Option<String>); 28] = [
            ("apply", self.apply.clone()),
            ("plan", self.plan.clone()),
            ("explain", self.explain.clone()),
            ("rollback_to", self.rollback_to.clone()),
            ("rollback_plan_only", self.rollback_plan_only.clone()),
            (
                "concurrent",
                self.concurrent
                    .as_ref()
                    .map(|c| format!("{} x apply {}", c.runs, c.apply)),
            ),
            ("agent_tick", self.agent_tick.clone()),
            ("status", b(&self.status)),
            ("resume", b(&self.resume)),
            ("timer_run", self.timer_run.clone()),
            ("edit_file", self.edit_file.as_ref().map(|e| e.path.clone())),
            ("remove_file", self.remove_file.clone()),
            ("stop_unit", self.stop_unit.clone()),
            ("kill_unit", self.kill_unit.clone()),
            (
                "kill_apply",
                self.kill_apply.as_ref().map(|k| match k {
                    KillApply::Rev(r) => r.clone(),
                    KillApply::At(a) => format!("{} at {}", a.rev, a.at),
                }),
            ),
            ("fill_disk", self.fill_disk.map(|m| format!("{m} MiB free"))),
            ("free_disk", b(&self.free_disk)),
            ("git", self.git.as_ref().map(GitOp::describe)),
            ("set_clock", self.set_clock.clone()),
            (
                "chmod",
                self.chmod
                    .as_ref()
                    .map(|c| format!("{} {}", c.mode, c.path)),
            ),
            (
                "chown",
                self.chown
                    .as_ref()
                    .map(|c| format!("{} {}", c.owner, c.path)),
            ),
            ("make_dir", self.make_dir.clone()),
            ("hold_busy", self.hold_busy.clone()),
            ("release_busy", self.release_busy.clone()),
            ("remember_unit", self.remember_unit.clone()),
            ("run", self.run.clone()),
            (
                "assert",
                self.assert.as_ref().map(|a| format!("{} checks", a.len())),
            ),
            ("none", None),
        ];
        named
            .into_iter()
            .filter_map(|(n, v)| v.map(|v| (n, v)))
            .collect()
    }

    /// The fixture revisions the action names and that must be labels (`rollback_to` and
    /// `rollback_plan_only` take any string).
    pub fn revisions(&self) -> Vec<&str> {
        let mut out: Vec<&str> = [&self.apply, &self.plan, &self.agent_tick, &self.timer_run]
            .into_iter()
            .filter_map(|v| v.as_deref())
            .collect();
        if let Some(k) = &self.kill_apply {
            out.push(k.rev());
        }
        if let Some(c) = &self.concurrent {
            out.push(&c.apply);
        }
        if let Some(g) = &self.git {
            out.extend(g.at.as_deref());
            out.extend(g.to.as_deref());
        }
        out
    }

    /// Whether this step runs core-ops in the guest with `--json` (its output is a document
    /// `output_json` can read, and `host` applies).
    pub fn is_core_ops(&self) -> bool {
        matches!(
            self.action().0,
            "apply"
                | "plan"
                | "explain"
                | "rollback_to"
                | "rollback_plan_only"
                | "agent_tick"
                | "status"
                | "resume"
        )
    }

    /// Whether this step runs core-ops or a command whose exit code is the point (so
    /// `expect_exit` and `output_contains` make sense).
    pub fn runs_core_ops(&self) -> bool {
        self.is_core_ops() || matches!(self.action().0, "timer_run" | "run")
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
        let name = step.action().0;
        for rev in step.revisions() {
            if !labels.contains(rev) && rev != FIXTURE_BRANCH {
                return Err(err(format!(
                    "revision {rev:?} is not a fixture revision (have: {}, and the branch {FIXTURE_BRANCH})",
                    labels.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        if step.expect_exit.is_some() && !step.runs_core_ops() {
            return Err(err(format!(
                "expect_exit is only for steps that run a command, not `{name}`"
            )));
        }
        if name == "run" && step.expect_exit.is_none() {
            return Err(err(
                "`run:` needs expect_exit: a command whose exit code is not checked cannot fail"
                    .into(),
            ));
        }
        match (name, &step.expect_exits) {
            ("concurrent", None) => {
                return Err(err(
                    "concurrent needs expect_exits (one exit code per run, any order)".into(),
                ));
            }
            ("concurrent", Some(codes)) => {
                let runs = step.concurrent.as_ref().map_or(0, |c| c.runs);
                if !(2..=16).contains(&runs) {
                    return Err(err(format!("concurrent runs: {runs}: use 2 to 16")));
                }
                if codes.len() != runs as usize {
                    return Err(err(format!(
                        "expect_exits lists {} exit codes for {runs} runs",
                        codes.len()
                    )));
                }
            }
            (_, Some(_)) => {
                return Err(err("expect_exits is only for `concurrent`".into()));
            }
            _ => {}
        }
        if step.host.is_some() && !(step.is_core_ops() || name == "concurrent") {
            return Err(err(format!(
                "host is only for steps that run core-ops, not `{name}`"
            )));
        }
        if step.detailed_exitcode.is_some() && name != "plan" {
            return Err(err("detailed_exitcode is only for `plan`".into()));
        }
        if let Some(t) = step.timeout
            && !(1..=MAX_STEP_TIMEOUT_S).contains(&t)
        {
            return Err(err(format!(
                "timeout {t}: use 1 to {MAX_STEP_TIMEOUT_S} seconds"
            )));
        }
        if let Some(k) = &step.kill_apply {
            k.check().map_err(&err)?;
        }
        if let Some(c) = &step.chmod
            && parse_mode(&c.mode).is_none()
        {
            return Err(err(format!("chmod mode {:?} is not octal", c.mode)));
        }
        for p in [
            step.make_dir.as_ref(),
            step.hold_busy.as_ref(),
            step.release_busy.as_ref(),
            step.chmod.as_ref().map(|c| &c.path),
            step.chown.as_ref().map(|c| &c.path),
        ]
        .into_iter()
        .flatten()
        {
            if !p.starts_with('/') {
                return Err(err(format!("{name}: {p:?} is not an absolute path")));
            }
        }
        if let Some(g) = &step.git {
            validate_git(g, repos, &mut labels).map_err(&err)?;
        }
        for a in step.assert.iter().flatten() {
            validate_assertion(a, &labels).map_err(&err)?;
            if let Some(n) = a.step {
                let target = s.steps.get(n);
                if n >= i || !target.is_some_and(Step::is_core_ops) {
                    return Err(err(format!(
                        "{}: steps[{n}] is not an earlier core-ops step",
                        a.subject()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Which checks each assertion subject takes: (subject key, allowed checks, what to say when
/// none is given). One table, so the error for a misplaced check and the list in the README
/// come from the same place.
const ASSERTION_KINDS: &[(&str, &[&str], &str)] = &[
    (
        "unit",
        &[
            "active_state",
            "sub_state",
            "load_state",
            "enabled",
            "restarted",
            "n_restarts",
        ],
        "a unit assertion needs active_state, sub_state, load_state, enabled, restarted or n_restarts",
    ),
    (
        "file",
        &[
            "exists", "sha256", "content", "mode", "owner", "group", "entries",
        ],
        "a file assertion needs exists, sha256, content, mode, owner, group or entries",
    ),
    (
        "status",
        &["equals", "revision"],
        "a status assertion needs equals or revision",
    ),
    ("receipts", &[], ""),
    (
        "plan_action",
        &["action", "cause"],
        "a plan_action assertion needs action or cause",
    ),
    ("output_contains", &[], ""),
    (
        "receipt",
        &["pointer", "equals", "revision", "contains"],
        "a receipt assertion needs equals, revision or contains",
    ),
    ("receipts_tail", &[], ""),
    ("receipts_count", &[], ""),
    ("receipt_chain", &[], ""),
    ("receipt_schema", &[], ""),
    (
        "output_json",
        &["step", "equals", "revision", "contains"],
        "an output_json assertion needs equals, revision or contains",
    ),
    (
        "mount",
        &["mounted", "fstype"],
        "a mount assertion needs mounted or fstype",
    ),
    ("no_temp_files", &[], ""),
];

/// The keys an assertion sets, by name.
fn assertion_keys(a: &Assertion) -> Vec<&'static str> {
    let set = [
        ("unit", a.unit.is_some()),
        ("active_state", a.active_state.is_some()),
        ("sub_state", a.sub_state.is_some()),
        ("load_state", a.load_state.is_some()),
        ("enabled", a.enabled.is_some()),
        ("restarted", a.restarted.is_some()),
        ("n_restarts", a.n_restarts.is_some()),
        ("file", a.file.is_some()),
        ("exists", a.exists.is_some()),
        ("sha256", a.sha256.is_some()),
        ("content", a.content.is_some()),
        ("mode", a.mode.is_some()),
        ("owner", a.owner.is_some()),
        ("group", a.group.is_some()),
        ("entries", a.entries.is_some()),
        ("status", a.status.is_some()),
        ("equals", a.equals.is_some()),
        ("revision", a.revision.is_some()),
        ("receipts", a.receipts.is_some()),
        ("plan_action", a.plan_action.is_some()),
        ("action", a.action.is_some()),
        ("cause", a.cause.is_some()),
        ("output_contains", a.output_contains.is_some()),
        ("receipt", a.receipt.is_some()),
        ("receipts_tail", a.receipts_tail.is_some()),
        ("receipts_count", a.receipts_count.is_some()),
        ("receipt_chain", a.receipt_chain.is_some()),
        ("receipt_schema", a.receipt_schema.is_some()),
        ("output_json", a.output_json.is_some()),
        ("step", a.step.is_some()),
        ("pointer", a.pointer.is_some()),
        ("contains", a.contains.is_some()),
        ("mount", a.mount.is_some()),
        ("mounted", a.mounted.is_some()),
        ("fstype", a.fstype.is_some()),
        ("no_temp_files", a.no_temp_files.is_some()),
    ];
    set.into_iter()
        .filter(|(_, on)| *on)
        .map(|(k, _)| k)
        .collect()
}

fn validate_git(g: &GitOp, repos: &Path, labels: &mut BTreeSet<String>) -> Result<(), String> {
    let forms = [
        g.commit.is_some(),
        g.commit.is_none() && g.tag.is_some(),
        g.force_ref.is_some(),
    ];
    if forms.iter().filter(|x| **x).count() != 1 {
        return Err(
            "git: give exactly one of `commit` (with optional `tag`), `tag` with `at`, or `force_ref` with `to`"
                .into(),
        );
    }
    if let Some(c) = &g.commit {
        if g.at.is_some() || g.to.is_some() || g.annotated.is_some() {
            return Err("git commit takes only `tag`".into());
        }
        if c.contains("..") || !repos.join(c).is_dir() {
            return Err(format!(
                "git commit {c:?}: no directory {}",
                repos.join(c).display()
            ));
        }
        let label = g.commit_label().unwrap_or_default();
        if !labels.insert(label.clone()) {
            return Err(format!("git commit: the label {label:?} is used twice"));
        }
    } else if g.force_ref.is_some() {
        if g.to.is_none() || g.tag.is_some() || g.at.is_some() || g.annotated.is_some() {
            return Err("git force_ref takes exactly `to`".into());
        }
    } else {
        if g.at.is_none() || g.to.is_some() {
            return Err("git tag needs `at` (and takes `annotated`)".into());
        }
        let tag = g.tag.clone().unwrap_or_default();
        if tag.is_empty() || tag.contains(|c: char| c.is_whitespace() || c == ':' || c == '~') {
            return Err(format!("git tag {tag:?} is not a usable tag name"));
        }
        if !labels.insert(tag.clone()) {
            return Err(format!("git tag: the label {tag:?} is used twice"));
        }
    }
    Ok(())
}

fn validate_assertion(a: &Assertion, labels: &BTreeSet<String>) -> Result<(), String> {
    let keys = assertion_keys(a);
    let subjects: Vec<_> = ASSERTION_KINDS
        .iter()
        .filter(|(s, _, _)| keys.contains(s))
        .collect();
    let [(subject, allowed, needs)] = subjects.as_slice() else {
        let names: Vec<_> = ASSERTION_KINDS.iter().map(|(s, _, _)| *s).collect();
        return Err(format!(
            "an assertion names exactly one of {}",
            names.join(", ")
        ));
    };
    let checks: Vec<_> = keys.iter().filter(|k| *k != subject).collect();
    if let Some(bad) = checks.iter().find(|k| !allowed.contains(k)) {
        return Err(format!(
            "{}: `{bad}` does not apply to a {subject} assertion (it takes: {})",
            a.subject(),
            if allowed.is_empty() {
                "nothing else".to_string()
            } else {
                allowed.join(", ")
            }
        ));
    }
    let needs_check = !allowed.is_empty();
    let only_modifiers = checks.iter().all(|k| **k == "pointer" || **k == "step");
    if needs_check && (checks.is_empty() || only_modifiers) {
        return Err(format!("{}: {needs}", a.subject()));
    }
    if let Some(r) = &a.revision
        && !labels.contains(r)
    {
        return Err(format!("revision {r:?} is not a fixture revision"));
    }
    if a.exists == Some(false) && checks.len() > 1 {
        return Err(format!(
            "{}: exists: false with another file check can never pass",
            a.subject()
        ));
    }
    if a.mounted == Some(false) && a.fstype.is_some() {
        return Err(format!(
            "{}: mounted: false with fstype can never pass",
            a.subject()
        ));
    }
    for p in [&a.status, &a.pointer, &a.output_json]
        .into_iter()
        .flatten()
    {
        if !p.is_empty() && !p.starts_with('/') {
            return Err(format!(
                "{}: JSON pointer {p:?} must be empty or start with '/'",
                a.subject()
            ));
        }
    }
    if let Some(m) = &a.mode
        && parse_mode(m).is_none()
    {
        return Err(format!(
            "{}: mode {m:?} is not octal (e.g. \"0644\")",
            a.subject()
        ));
    }
    Ok(())
}

/// An octal mode string (`"0644"`, `"644"`) as its permission bits (at most `07777`).
pub fn parse_mode(m: &str) -> Option<u32> {
    u32::from_str_radix(m, 8).ok().filter(|v| *v <= 0o7777)
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
