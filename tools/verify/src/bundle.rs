//! Bundle files: everything a reviewer needs to judge a run without re-running it.
//!
//! Every run keeps the scenario, `harness.log`, `console-log.txt`, `readiness-evidence.json`,
//! the output of every step and `assertions.json`; a failed run adds `diagnostics/` and
//! `failure-summary.txt`; a failed accepted (regression) scenario adds
//! `regression-summary.txt` and `promotion-status.txt`.

use std::path::Path;

use anyhow::Result;

use super::assertions::AssertionResult;
use super::machine::Output;
use super::report::{AssertionsDoc, ScenarioResult};
use super::runner::RunOptions;
use super::scenario::LoadedScenario;
use core_ops::fsutil;

/// `assertions.json`.
pub fn write_assertions(dir: &Path, id: &str, checks: &[AssertionResult]) -> Result<()> {
    fsutil::write_json(
        &dir.join("assertions.json"),
        &AssertionsDoc {
            scenario: id,
            passed: !checks.is_empty() && checks.iter().all(|c| c.passed),
            results: checks,
        },
    )?;
    Ok(())
}

/// One step's directory: `command.sh`, `stdout.txt`, `stderr.txt`, `exit-code.txt`, and
/// `output.json` when stdout is a core-ops `--json` document.
pub fn write_step(dir: &Path, script: &str, out: &Output, json: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("command.sh"), script)?;
    std::fs::write(dir.join("stdout.txt"), &out.stdout)?;
    std::fs::write(dir.join("stderr.txt"), &out.stderr)?;
    std::fs::write(dir.join("exit-code.txt"), format!("{}\n", out.code))?;
    if json && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        fsutil::write_json(&dir.join("output.json"), &v)?;
    }
    Ok(())
}

/// The failure files.
pub fn write_failure_files(
    dir: &Path,
    loaded: &LoadedScenario,
    result: &ScenarioResult,
    checks: &[AssertionResult],
    opts: &RunOptions,
) -> Result<()> {
    let s = &loaded.scenario;
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    let mut summary = format!(
        "scenario:  {id}\ntitle:     {title}\nclaim:     {claim}\nclasses:   {classes}\noutcome:   {outcome}\nreadiness: {readiness}\n",
        id = s.id,
        title = s.title,
        claim = s.claim,
        classes = s.classes.join(", "),
        outcome = result.outcome,
        readiness = serde_json::to_value(result.readiness)?
            .as_str()
            .unwrap_or("?"),
    );
    if let Some(f) = &result.failure {
        summary.push_str(&format!("failure:   {f}\n"));
    }
    if !failed.is_empty() {
        summary.push_str("\nfailed checks:\n");
        for c in &failed {
            summary.push_str(&format!(
                "  steps[{}] {} {}\n    expected: {}\n    actual:   {}\n",
                c.step, c.subject, c.check, c.expected, c.actual
            ));
        }
    }
    summary.push_str(
        "\nlook at: harness.log, steps/*/stderr.txt, diagnostics/journal.txt, diagnostics/status.json, console-log.txt\n",
    );
    std::fs::write(dir.join("failure-summary.txt"), summary)?;
    if !result.accepted {
        return Ok(());
    }
    let revisions = result
        .revisions
        .iter()
        .map(|(l, sha)| format!("  {l} = {sha}"))
        .collect::<Vec<_>>()
        .join("\n");
    let accepted_dir = loaded
        .path
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let regression = format!(
        "REGRESSION: accepted scenario {id} no longer holds.\n\nclaim: {claim}\nclasses: {classes}\n\
         core-ops under test: {bin}\nfixture history ({n} revision(s), from {fixtures}):\n{revisions}\n\n\
         This scenario is a permanent regression entry: the claim held when it was accepted.\n\
         Reproduce: core-ops-verify run --accepted-dir {accepted_dir} --scenario-id {id} --debug\n",
        id = s.id,
        claim = s.claim,
        classes = s.classes.join(", "),
        bin = opts.core_ops_bin.display(),
        n = result.revisions.len(),
        fixtures = s.fixtures.revisions().join(", "),
    );
    std::fs::write(dir.join("regression-summary.txt"), regression)?;
    let promotion = format!(
        "scenario: {id}\nstatus: accepted (tests/fixtures/verification/scenarios)\n\
         this run: {outcome}\nrelease gate: BLOCKED until this scenario passes again\n\
         action: fix core-ops (or, if the claim itself changed, update the scenario in review); \
         an accepted scenario is never demoted because it fails\n",
        id = s.id,
        outcome = result.outcome
    );
    std::fs::write(dir.join("promotion-status.txt"), promotion)?;
    Ok(())
}
