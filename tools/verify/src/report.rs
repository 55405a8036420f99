//! The `verification_run` document: what `--json` prints and every run writes as
//! `verification-run.json` at the root of its bundles. `verification_run.schema.json` beside
//! this file is its JSON Schema; tests validate real output against it.

use serde::{Deserialize, Serialize};

use super::assertions::AssertionResult;
use super::machine::MachineInfo;
use super::readiness::ReadinessState;

/// Version of the document.
pub const RUN_SCHEMA_VERSION: u32 = 1;

/// The JSON Schema of [`VerificationRun`].
pub const RUN_SCHEMA: &str = include_str!("verification_run.schema.json");

/// One harness invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerificationRun {
    /// [`RUN_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `verification_run`.
    pub kind: String,
    /// `<UTC time>-<random>`: the bundle directory name.
    pub run_id: String,
    /// `scenario`, `accepted-corpus` or `promote`.
    pub mode: String,
    /// `--ci`.
    pub ci: bool,
    /// `vm` (product path) or `synthetic` (harness self-tests only).
    pub backend: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// Wall time.
    pub duration_ms: u64,
    /// The core-ops binary under test.
    pub core_ops: CoreOpsBinary,
    /// The guest image's manifest (VM backend).
    pub image: Option<serde_json::Value>,
    /// Where the bundles are.
    pub bundle_root: String,
    /// One entry per scenario, in run order.
    pub scenarios: Vec<ScenarioResult>,
    /// Counts.
    pub summary: Summary,
    /// `passed` when every scenario passed.
    pub outcome: String,
}

/// The binary that went into the guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoreOpsBinary {
    /// Host path.
    pub path: String,
    /// `sha256:<hex>`.
    pub sha256: String,
    /// Its `--version` line.
    pub version: String,
}

/// Counts of outcomes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Scenarios run.
    pub total: usize,
    /// Passed.
    pub passed: usize,
    /// An assertion was false.
    pub failed: usize,
    /// The harness could not finish (readiness, machine, I/O).
    pub errors: usize,
}

/// One scenario's result (also the bundle's `result.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Scenario id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Claim.
    pub claim: String,
    /// Classes.
    pub classes: Vec<String>,
    /// Scenario file.
    pub source: String,
    /// Whether it is an accepted corpus entry (a regression entry).
    pub accepted: bool,
    /// `passed`, `failed` or `error`.
    pub outcome: String,
    /// First failure, in one line.
    pub failure: Option<String>,
    /// Machine that ran it.
    pub machine: Option<MachineInfo>,
    /// Readiness outcome.
    pub readiness: ReadinessState,
    /// Launch to readiness.
    pub ready_ms: u64,
    /// Wall time of the whole scenario.
    pub duration_ms: u64,
    /// Fixture label -> commit id.
    pub revisions: std::collections::BTreeMap<String, String>,
    /// Steps run.
    pub steps: Vec<StepRecord>,
    /// Assertion counts.
    pub assertions: Summary,
    /// Bundle directory.
    pub bundle: String,
}

/// One executed step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// 0-based index in the scenario.
    pub index: usize,
    /// Action name.
    pub action: String,
    /// Its argument.
    pub argument: String,
    /// Exit status (command steps).
    pub exit_code: Option<i32>,
    /// Wall time.
    pub duration_ms: u64,
    /// Bundle-relative directory of its output.
    pub output: Option<String>,
}

/// `assertions.json`.
#[derive(Debug, Clone, Serialize)]
pub struct AssertionsDoc<'a> {
    /// Scenario id.
    pub scenario: &'a str,
    /// Whether all passed.
    pub passed: bool,
    /// Every check in order.
    pub results: &'a [AssertionResult],
}

/// Random lower-case hex from the kernel.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new run id: `YYYYMMDDTHHMMSSZ-<6 hex>` (sorts by time).
pub fn new_run_id() -> String {
    let now = core_ops::model::time::now_rfc3339();
    let compact: String = now
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .take(15)
        .collect();
    format!("{compact}Z-{}", random_hex(3))
}
