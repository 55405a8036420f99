//! core-ops-verify's own contract: bad scenarios are refused with file:line; a false assertion
//! fails the run with a bundle holding the failure files; a guest that never announces
//! readiness is reported as timed out; the verification_run document matches its schema; and
//! a real scenario passes on the VM backend.
//!
//! The synthetic (test-bed) cases run where the project's test bed runs (scripts/test.sh sets
//! CORE_OPS_TESTBED_DIR); the VM cases need the guest image (scripts/test.sh builds it and sets
//! CORE_OPS_VERIFY_IMAGE). Without them these tests fail, saying what is missing, unless
//! CORE_OPS_SKIP_BED_TESTS=1 (the project's explicit opt-out, DEVELOPMENT.md): a test that
//! could not run never reports ok.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use core_ops_testkit::skip_or_fail;

/// The synthetic backend needs a running test bed (`CORE_OPS_TESTBED_DIR`).
fn bed() -> Option<()> {
    if std::env::var_os("CORE_OPS_TESTBED_DIR").is_some_and(|d| !d.is_empty()) {
        Some(())
    } else {
        skip_or_fail(
            "needs the project's test bed (CORE_OPS_TESTBED_DIR of a running scripts/systemd-testbed.sh bed)",
        )
    }
}

fn verify_bin() -> &'static str {
    env!("CARGO_BIN_EXE_core-ops-verify")
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn run(args: &[&str]) -> Output {
    Command::new(verify_bin())
        .args(args)
        // scripts/test.sh points it at the release build (smaller, faster under TCG)
        .env(
            "CORE_OPS_VERIFY_CORE_OPS_BIN",
            std::env::var("CORE_OPS_VERIFY_CORE_OPS_BIN").unwrap_or_else(|_| {
                // the agent, built by the same `cargo test --workspace`, beside the harness
                Path::new(verify_bin())
                    .with_file_name("core-ops")
                    .to_string_lossy()
                    .into_owned()
            }),
        )
        .output()
        .expect("core-ops-verify runs")
}

/// A scratch `verification/` tree with one fixture repository (two revisions).
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let v = t.path().join("verification");
    for (path, body) in [
        (
            "repos/one/v1/hosts/core-ops-guest/host.yaml",
            "services: [hello]\n",
        ),
        (
            "repos/one/v1/services/hello/verify-hello.service",
            "[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n",
        ),
    ] {
        let p = v.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    std::fs::create_dir_all(v.join("scenarios")).unwrap();
    (t, v)
}

const SCENARIO: &str = "id: harness-self-test
title: The harness reports what it sees
claim: A first apply starts the service.
classes: [install]
policy: quick-settle
fixtures:
  repository: one/v1
steps:
  - apply: v1
    expect_exit: 0
  - assert:
      - unit: verify-hello.service
        active_state: active
      - status: /last_applied/revision
        revision: v1
      - receipts: [applied]
";

fn validate_run(doc: &Value) {
    let schema: Value = serde_json::from_str(core_ops_verify::report::RUN_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "schema errors: {errors:#?}\n{doc:#}");
}

fn json_stdout(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Write `text` as an accepted scenario of a scratch tree and `run` it with `backend` flags,
/// `--json` and a scratch bundle dir. Returns the scratch dir (keep it alive), the exit code,
/// the run document (already validated against the schema) and stderr.
fn run_scenario(text: &str, backend: &[&str]) -> (tempfile::TempDir, Option<i32>, Value, String) {
    let (t, v) = scratch();
    let p = v.join("scenarios/harness-self-test.yaml");
    std::fs::write(&p, text).unwrap();
    let bundles = t.path().join("bundles");
    let mut args = vec!["run", "--scenario", p.to_str().unwrap()];
    args.extend_from_slice(backend);
    args.extend(["--json", "--bundle-dir", bundles.to_str().unwrap()]);
    let out = run(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc = json_stdout(&out);
    validate_run(&doc);
    (t, out.status.code(), doc, err)
}

/// The machine directory named in harness.log is gone: no overlay, sockets, share or binary
/// copy left behind.
fn assert_machine_gone(bundle: &Path) {
    let log = std::fs::read_to_string(bundle.join("harness.log")).unwrap();
    let machine_dir = log
        .lines()
        .find_map(|l| l.split("machine directory ").nth(1))
        .expect("harness.log names the machine directory");
    assert!(
        !Path::new(machine_dir.trim()).exists(),
        "{machine_dir} left behind"
    );
}

#[test]
fn scenario_schema_errors_name_file_and_line_and_run_nothing() {
    let (_t, v) = scratch();
    let p = v.join("scenarios/bad.yaml");
    std::fs::write(
        &p,
        SCENARIO.replace("    expect_exit: 0\n", "    expect_exit: 0\n    wait: 5\n"),
    )
    .unwrap();
    for args in [
        vec!["check", p.to_str().unwrap()],
        vec!["run", "--scenario", p.to_str().unwrap(), "--synthetic"],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("{}:11: ", p.display())) && err.contains("unknown field `wait`"),
            "{args:?}: {err}"
        );
    }
    // nothing ran, so no bundle was started
    assert!(!v.join("target").exists());
}

#[test]
fn the_shipped_corpus_passes_the_check() {
    let out = run(&[
        "check",
        root()
            .join("tests/fixtures/verification/scenarios")
            .to_str()
            .unwrap(),
        root()
            .join("tests/fixtures/verification/generated_candidates")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A false assertion in an accepted scenario: exit 1, outcome failed, and the bundle holds
/// the failure files, the diagnostics and a schema-valid run document.
#[test]
fn a_false_assertion_fails_with_the_failure_files() {
    let Some(()) = bed() else { return };
    let text = SCENARIO.replace(
        "[applied]",
        "[applied]\n      - unit: verify-hello.service\n        active_state: failed",
    );
    let (_t, code, doc, err) = run_scenario(&text, &["--synthetic"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(doc["backend"], "synthetic");
    assert_eq!(doc["outcome"], "failed");
    let s = &doc["scenarios"][0];
    assert_eq!(s["outcome"], "failed");
    assert_eq!(s["accepted"], true);
    assert_eq!(s["assertions"]["failed"], 1, "{s:#}");
    // the true checks before it passed: the failure is the false one, not a broken harness
    assert_eq!(s["assertions"]["passed"], 4, "{s:#}");
    let bundle = PathBuf::from(s["bundle"].as_str().unwrap());
    for f in [
        "scenario.yaml",
        "harness.log",
        "console-log.txt",
        "readiness-evidence.json",
        "assertions.json",
        "steps/00-apply/stdout.txt",
        "steps/00-apply/output.json",
        "failure-summary.txt",
        "regression-summary.txt",
        "promotion-status.txt",
        "diagnostics/journal.txt",
        "diagnostics/status.json",
        "diagnostics/receipts.txt",
    ] {
        assert!(
            bundle.join(f).is_file(),
            "{f} missing in {}",
            bundle.display()
        );
    }
    let summary = std::fs::read_to_string(bundle.join("failure-summary.txt")).unwrap();
    assert!(
        summary.contains("unit verify-hello.service active_state")
            && summary.contains("expected: \"failed\"")
            && summary.contains("actual:   \"active\""),
        "{summary}"
    );
    let assertions: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("assertions.json")).unwrap()).unwrap();
    assert_eq!(assertions["passed"], false);
    let promotion = std::fs::read_to_string(bundle.join("promotion-status.txt")).unwrap();
    assert!(promotion.contains("BLOCKED"), "{promotion}");
    assert_machine_gone(&bundle);
}

/// The same scenario, true this time, on the synthetic backend: passes, no failure files.
#[test]
fn a_true_scenario_passes_without_failure_files() {
    let Some(()) = bed() else { return };
    let (_t, code, doc, err) = run_scenario(SCENARIO, &["--synthetic"]);
    assert_eq!(code, Some(0), "{err}");
    let bundle = PathBuf::from(doc["scenarios"][0]["bundle"].as_str().unwrap());
    assert!(bundle.join("assertions.json").is_file());
    assert!(!bundle.join("failure-summary.txt").exists());
}

fn image() -> Option<String> {
    match std::env::var("CORE_OPS_VERIFY_IMAGE") {
        Ok(img) if !img.is_empty() => Some(img),
        _ => skip_or_fail(
            "needs the guest image (scripts/test.sh builds it and sets CORE_OPS_VERIFY_IMAGE)",
        ),
    }
}

/// A guest that cannot announce readiness in time: the run says `timed_out`, keeps the
/// console and the evidence, and tears the VM down.
#[test]
fn readiness_timeout_is_reported_as_such() {
    let Some(_) = image() else { return };
    let (_t, code, doc, err) =
        run_scenario(SCENARIO, &["--driver", "qemu", "--ready-timeout", "3"]);
    assert_eq!(code, Some(1), "{err}");
    let s = &doc["scenarios"][0];
    assert_eq!(s["outcome"], "error", "{s:#}");
    assert_eq!(s["readiness"], "timed_out", "{s:#}");
    assert!(
        s["failure"]
            .as_str()
            .unwrap()
            .contains("readiness timed_out"),
        "{s:#}"
    );
    let bundle = PathBuf::from(s["bundle"].as_str().unwrap());
    let ev: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("readiness-evidence.json")).unwrap())
            .unwrap();
    assert_eq!(ev["state"], "timed_out");
    assert_eq!(ev["timeout_ms"], 3000);
    assert!(ev["waited_ms"].as_u64().unwrap() >= 3000);
    // the kernel had started printing: the console is kept, and it has no READY record
    let console = std::fs::read_to_string(bundle.join("console-log.txt")).unwrap();
    assert!(!console.contains("CORE_OPS_VERIFY_READY"), "{console}");
    assert!(bundle.join("failure-summary.txt").is_file());
    assert_machine_gone(&bundle);
}

/// One real scenario on the VM backend through the qemu driver: the product path, end to end.
#[test]
fn a_scenario_passes_in_a_vm_via_qemu() {
    let Some(_) = image() else { return };
    let (_t, code, doc, err) = run_scenario(SCENARIO, &["--driver", "qemu"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(doc["backend"], "vm");
    let s = &doc["scenarios"][0];
    assert_eq!(s["machine"]["driver"], "qemu");
    assert_eq!(s["readiness"], "accepted");
    assert!(
        doc["image"]["kernel"].is_string() || doc["image"].is_object(),
        "{doc:#}"
    );
    let bundle = PathBuf::from(s["bundle"].as_str().unwrap());
    let console = std::fs::read_to_string(bundle.join("console-log.txt")).unwrap();
    assert!(console.contains("CORE_OPS_VERIFY_READY run="), "{console}");
    // core-ops ran in the guest against the guest's systemd: its status names the guest host
    let status: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("steps/00-apply/output.json")).unwrap())
            .unwrap();
    assert_eq!(status["host"], "core-ops-guest", "{status:#}");
}

/// `promote` runs a candidate in a VM and moves it into the accepted scenarios only after it
/// passed; a failing candidate stays where it was.
#[test]
fn promote_moves_only_a_passing_candidate() {
    let Some(_) = image() else { return };
    let (t, v) = scratch();
    std::fs::create_dir_all(v.join("generated_candidates")).unwrap();
    let good = v.join("generated_candidates/harness-self-test.yaml");
    std::fs::write(&good, SCENARIO).unwrap();
    let bad = v.join("generated_candidates/harness-false-claim.yaml");
    std::fs::write(
        &bad,
        SCENARIO
            .replace("id: harness-self-test", "id: harness-false-claim")
            .replace("[applied]", "[applied, applied]"),
    )
    .unwrap();
    let bundles = t.path().join("bundles");
    for (candidate, code) in [(&bad, 1), (&good, 0)] {
        let out = run(&[
            "promote",
            candidate.to_str().unwrap(),
            "--driver",
            "qemu",
            "--bundle-dir",
            bundles.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: {err}",
            candidate.display()
        );
    }
    assert!(bad.exists(), "a failing candidate stays a candidate");
    assert!(!v.join("scenarios/harness-false-claim.yaml").exists());
    assert!(
        !good.exists(),
        "the passing candidate left generated_candidates/"
    );
    assert_eq!(
        std::fs::read_to_string(v.join("scenarios/harness-self-test.yaml")).unwrap(),
        SCENARIO
    );
}

/// Every failing check is reported, not only the first: two false assertions in two assert
/// steps and the steps between them all run; the failure names both.
#[test]
fn every_failure_is_collected_and_reported() {
    let Some(()) = bed() else { return };
    let text = SCENARIO.replace(
        "      - receipts: [applied]\n",
        "      - receipts: [applied]
      - unit: verify-hello.service
        active_state: failed
  - status: true
    expect_exit: 0
  - assert:
      - receipts_count: 7
      - output_json: /snapshot/host
        equals: core-ops-guest
      - receipt_chain: true
",
    );
    let (_t, code, doc, err) = run_scenario(&text, &["--synthetic"]);
    assert_eq!(code, Some(1), "{err}");
    let s = &doc["scenarios"][0];
    assert_eq!(s["outcome"], "failed", "{s:#}");
    assert_eq!(s["assertions"]["failed"], 2, "{s:#}");
    // exit code 0 of apply, the three true checks, exit code 0 of status, two true checks
    assert_eq!(s["assertions"]["passed"], 7, "{s:#}");
    assert_eq!(s["steps"].as_array().unwrap().len(), 4, "{s:#}");
    let failure = s["failure"].as_str().unwrap();
    assert!(failure.starts_with("2 checks failed"), "{failure}");
    assert!(
        failure.contains("steps[1] unit verify-hello.service active_state")
            && failure.contains("steps[3] receipt count count: expected 7, got 1"),
        "{failure}"
    );
    let bundle = PathBuf::from(s["bundle"].as_str().unwrap());
    let summary = std::fs::read_to_string(bundle.join("failure-summary.txt")).unwrap();
    assert!(
        summary.contains("active_state") && summary.contains("receipt count"),
        "{summary}"
    );
}

/// A `run:` step whose exit code nobody checks is refused before anything runs.
#[test]
fn a_run_step_without_expect_exit_is_refused_by_check() {
    let (_t, v) = scratch();
    let p = v.join("scenarios/harness-self-test.yaml");
    std::fs::write(
        &p,
        SCENARIO.replace("  - apply: v1\n    expect_exit: 0\n", "  - run: \"true\"\n"),
    )
    .unwrap();
    let out = run(&["check", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:9: ", p.display())) && err.contains("`run:` needs expect_exit"),
        "{err}"
    );
}

/// Start `run` on a scenario whose second step sleeps, wait until that step runs, signal the
/// harness, and return (bundle dir, machine dir, exit status).
fn interrupt_mid_scenario(
    backend: &[&str],
    signal: &str,
) -> (tempfile::TempDir, PathBuf, Option<i32>) {
    let (t, v) = scratch();
    let p = v.join("scenarios/harness-self-test.yaml");
    std::fs::write(
        &p,
        SCENARIO.replace(
            "  - assert:\n",
            "  - run: sleep 600\n    expect_exit: 0\n    timeout: 900\n  - assert:\n",
        ),
    )
    .unwrap();
    let bundles = t.path().join("bundles");
    let mut child = Command::new(verify_bin())
        .args(["run", "--scenario", p.to_str().unwrap()])
        .args(backend)
        .args(["--bundle-dir", bundles.to_str().unwrap()])
        .env(
            "CORE_OPS_VERIFY_CORE_OPS_BIN",
            std::env::var("CORE_OPS_VERIFY_CORE_OPS_BIN").unwrap_or_else(|_| {
                Path::new(verify_bin())
                    .with_file_name("core-ops")
                    .to_string_lossy()
                    .into_owned()
            }),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // bundles/<run-id>/harness-self-test/harness.log
    let log = || {
        std::fs::read_dir(&bundles)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("harness-self-test/harness.log"))
            .find(|p| p.is_file())
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let machine_dir = loop {
        let text = log()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        if text.contains("steps[1] run sleep 600") {
            let dir = text
                .lines()
                .find_map(|l| l.split("machine directory ").nth(1))
                .expect("harness.log names the machine directory");
            break PathBuf::from(dir.trim());
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the harness ended before the sleep step ({st}):\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "the sleep step never started:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(machine_dir.exists());
    let st = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    (t, machine_dir, status.code())
}

/// Within `secs`, the machine directory is gone and no process names it (qemu, the bed).
fn assert_cleaned_up(machine_dir: &Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .chars()
                    .all(|c| c.is_ascii_digit())
            })
            .filter_map(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                (cmd.contains(&machine_dir.display().to_string())
                    && !cmd.contains("core-ops-verify-watchdog"))
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
            })
            .collect();
        if left.is_empty() && !machine_dir.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} left behind (exists: {}); processes: {left:#?}",
            machine_dir.display(),
            machine_dir.exists()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGTERM and SIGKILL of the harness mid-scenario on the synthetic backend: the bed is
/// stopped and its directory removed (by the signal thread, or by the watchdog).
#[test]
fn killing_the_harness_leaves_no_bed_behind() {
    let Some(()) = bed() else { return };
    let (_t, dir, code) = interrupt_mid_scenario(&["--synthetic"], "-TERM");
    assert_eq!(code, Some(128 + 15));
    assert_cleaned_up(&dir, 30);
    let (_t, dir, code) = interrupt_mid_scenario(&["--synthetic"], "-KILL");
    assert_eq!(code, None, "killed by a signal");
    assert_cleaned_up(&dir, 30);
}

/// The same with a VM: no qemu process and no overlay left after SIGINT or SIGKILL.
#[test]
fn killing_the_harness_leaves_no_qemu_behind() {
    let Some(_) = image() else { return };
    let (_t, dir, code) = interrupt_mid_scenario(&["--driver", "qemu"], "-INT");
    assert_eq!(code, Some(128 + 2));
    assert_cleaned_up(&dir, 30);
    let (_t, dir, code) = interrupt_mid_scenario(&["--driver", "qemu"], "-KILL");
    assert_eq!(code, None, "killed by a signal");
    assert_cleaned_up(&dir, 30);
}
