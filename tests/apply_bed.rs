//! `core-ops apply` against a real systemd in the test bed, through the real binary: create,
//! update (drop-in -> restart), prune, drift repair, failing unit, stale plan, lock,
//! `--force-no-state`, no-op re-run (zero jobs, zero reloads) and crash recovery after
//! SIGKILL in the middle of the write phase.
//!
//! Each test has its own unit-name prefix, state dir and host-file root under the bed's
//! shared directory (seen at the same path inside the bed).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{stderr, stdout, tree};
use common::world::{action, world};
use serde_json::Value;

#[test]
fn create_then_noop_then_update_restarts_only_what_changed() {
    let Some(mut w) = world("lifecycle") else {
        return;
    };
    let fx = w.fx();
    let v1 = w.commit(fx);

    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["outcome"], "converged");
    assert_eq!(r["calls"]["reloads"], 1);
    assert_eq!(r["last_applied_advanced"], true);
    let web = w.unit("web");
    let db = w.unit("db");
    assert_eq!(w.show(&web, "ActiveState"), "active");
    assert_eq!(w.show(&db, "ActiveState"), "active");
    assert_eq!(w.show(&web, "UnitFileState"), "enabled");
    assert!(w.show(&web, "DropInPaths").contains("10-level.conf"));
    // the host file was written with its declared mode
    let env = w.s.path(&format!("etc/{}/app.env", w.p));
    assert_eq!(std::fs::read(&env).unwrap(), b"A=1\n");
    // records: status, results tied to the plan, one receipt
    let st = w.status();
    assert_eq!(st["last_applied"]["revision"], v1.as_str());
    assert_eq!(st["last_run"]["outcome"], "converged");
    assert_eq!(st["core_ops"]["version"], env!("CARGO_PKG_VERSION"));
    let plan = w.run(&["--json", "plan", "--rev", &v1]);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["summary"]["no_op"], 4, "{plan:#}");
    let receipts = w.receipts();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["transition"], "applied");
    assert_eq!(receipts[0]["to_revision"], v1.as_str());
    let results: Value =
        serde_json::from_slice(&std::fs::read(r["results_path"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(results["intent_checksum"], r["intent_checksum"]);

    // second apply of the same revision: no jobs, no reloads, no receipt
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0);
    assert_eq!(r["calls"]["jobs"], 0, "{r:#}");
    assert_eq!(r["calls"]["reloads"], 0);
    assert_eq!(r["changed_objects"], 0);
    assert_eq!(w.receipts().len(), 1);

    // a changed drop-in restarts its unit and nothing else
    let web_inv = w.show(&web, "InvocationID");
    let db_inv = w.show(&db, "InvocationID");
    let mut fx2 = w.fx();
    fx2.level = "2";
    let v2 = w.commit(fx2);
    let plan = w.run(&["--json", "plan", "--rev", &v2]);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let web_action = action(&plan, &format!("unit:{web}"));
    assert_eq!(web_action["action"], "restart");
    assert_eq!(web_action["cause"], "dependency_change");
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["calls"]["reloads"], 1);
    assert_eq!(r["calls"]["jobs"], 1);
    assert_ne!(w.show(&web, "InvocationID"), web_inv);
    assert_eq!(w.show(&db, "InvocationID"), db_inv);
    assert!(w.show(&web, "Environment").contains("LEVEL=2"));
    let receipts = w.receipts();
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[1]["from_revision"], v1.as_str());
    assert_eq!(receipts[1]["to_revision"], v2.as_str());
    assert_eq!(
        core_ops::record::receipts::verify_chain(&w.s.path("state")).unwrap(),
        2
    );
    w.teardown();
}

#[test]
fn prune_removes_only_managed_objects() {
    let Some(mut w) = world("prune") else { return };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    // an unmanaged unit file beside ours must survive
    let unmanaged = w.bed.unit_dir.join(format!("{}-unmanaged.service", w.p));
    std::fs::write(&unmanaged, "[Service]\nExecStart=/bin/true\n").unwrap();
    let mut fx2 = w.fx();
    fx2.with_db = false;
    let v2 = w.commit(fx2);
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");
    let db = w.unit("db");
    assert!(!w.bed.unit_dir.join(&db).exists());
    assert_ne!(w.show(&db, "ActiveState"), "active");
    assert_eq!(w.show(&w.unit("web"), "ActiveState"), "active");
    assert_eq!(
        std::fs::read(&unmanaged).unwrap(),
        b"[Service]\nExecStart=/bin/true\n"
    );
    assert!(
        !w.status()["last_applied"]["resources"]
            .as_object()
            .unwrap()
            .contains_key(&format!("unit:{db}"))
    );
    w.teardown();
    assert!(unmanaged.exists(), "teardown prunes only managed objects");
    assert!(!w.bed.unit_dir.join(w.unit("web")).exists());
    std::fs::remove_file(unmanaged).unwrap();
}

#[test]
fn hand_edit_is_reported_as_drift_and_repaired() {
    let Some(mut w) = world("drift") else { return };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let path = w.bed.unit_dir.join(w.unit("db"));
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, "[Service]\nType=oneshot\nExecStart=/bin/false\n").unwrap();
    let plan = w.plan(&v1);
    let finding = plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "drift")
        .expect("drift finding");
    assert_eq!(finding["id"], format!("unit:{}", w.unit("db")));
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(std::fs::read(&path).unwrap(), original);
    assert_eq!(w.receipts().len(), 2, "a repair is a transition");
    w.teardown();
}

#[test]
fn stopped_unit_is_drift_and_restarted() {
    let Some(mut w) = world("stopped") else {
        return;
    };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let web = w.unit("web");
    w.bed.exec_ok(["systemctl", "stop", &web]);
    let plan = w.plan(&v1);
    let a = action(&plan, &format!("unit:{web}"));
    assert_eq!(
        (a["action"].as_str(), a["cause"].as_str()),
        (Some("restart"), Some("drift"))
    );
    assert_eq!(w.apply(&v1, &[]).0, 0);
    assert_eq!(w.show(&web, "ActiveState"), "active");
    w.teardown();
}

#[test]
fn failing_unit_fails_and_last_applied_does_not_move() {
    let Some(mut w) = world("failing") else {
        return;
    };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let mut bad = w.fx();
    bad.web_exec = "/bin/false";
    // no automatic rollback here: this test is about the failed apply itself
    bad.host_extra = "policy:\n  auto_rollback: false\n";
    let v2 = w.commit(bad);
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 3, "{r:#}");
    assert!(
        r["outcome"] == "failed" || r["outcome"] == "partially_applied",
        "{r:#}"
    );
    assert_eq!(r["last_applied_advanced"], false);
    let diag = r["diagnostics"].as_array().unwrap();
    assert!(
        diag.iter().any(|d| d["unit"] == w.unit("web").as_str()),
        "{r:#}"
    );
    let st = w.status();
    assert_eq!(st["last_applied"]["revision"], v1.as_str());
    assert_eq!(st["last_run"]["desired_revision"], v2.as_str());
    assert_ne!(st["last_run"]["outcome"], "converged");
    let last = w.receipts().pop().unwrap();
    assert!(last["transition"] == "failed" || last["transition"] == "partial");
    w.teardown();
}

#[test]
fn stale_plan_is_refused_and_changes_nothing() {
    let Some(mut w) = world("stale") else { return };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let mut fx2 = w.fx();
    fx2.level = "3";
    let v2 = w.commit(fx2);
    let plan_file = w.s.path("plan.json");
    let o = w.run(&["plan", "--rev", &v2, "--out", plan_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // the host changes after the plan was made
    let db = w.bed.unit_dir.join(w.unit("db"));
    std::fs::write(&db, "[Service]\nExecStart=/bin/true\n").unwrap();
    let dropin = w
        .bed
        .unit_dir
        .join(format!("{}.d/10-level.conf", w.unit("web")));
    let before = std::fs::read(&dropin).unwrap();
    let o = w.run(&["apply", "--plan", plan_file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("stale plan"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the host changed since the plan was made"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&dropin).unwrap(), before);
    // a tampered plan is refused by its checksum
    let text = std::fs::read_to_string(&plan_file)
        .unwrap()
        .replacen("\"restart\"", "\"no_op\"", 1);
    std::fs::write(&plan_file, text).unwrap();
    let o = w.run(&["apply", "--plan", plan_file.to_str().unwrap()]);
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    // a fresh plan applies
    let o = w.run(&["plan", "--rev", &v2, "--out", plan_file.to_str().unwrap()]);
    assert!(o.status.success());
    let o = w.run(&["apply", "--plan", plan_file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_ne!(std::fs::read(&dropin).unwrap(), before);
    w.teardown();
}

#[test]
fn concurrent_run_is_locked_out() {
    let Some(mut w) = world("lock") else { return };
    let v1 = w.commit(w.fx());
    std::fs::create_dir_all(w.s.path("state")).unwrap();
    // hold the state-dir lock like a running core-ops would
    // -o: the lock is held by flock(1) itself, so killing it releases the lock
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(w.s.path("state/lock"))
        .args(["sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .expect("flock(1)");
    let deadline = Instant::now() + Duration::from_secs(5);
    let o = loop {
        let o = w.run(&["apply", "--rev", &v1]);
        if o.status.code() == Some(75) || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    holder.kill().unwrap();
    let _ = holder.wait();
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("another core-ops run holds"),
        "{}",
        stderr(&o)
    );
    assert!(
        !w.bed.unit_dir.join(w.unit("web")).exists(),
        "a locked-out run changes nothing"
    );
    let o = w.run(&["agent", "--rev", &v1]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "agent: changed and converged\n{}",
        stderr(&o)
    );
    let o = w.run(&["agent", "--rev", &v1]);
    assert_eq!(o.status.code(), Some(0), "agent: no change\n{}", stderr(&o));
    w.teardown();
}

#[test]
fn force_no_state_applies_without_touching_status() {
    let Some(mut w) = world("nostate") else {
        return;
    };
    let v1 = w.commit(w.fx());
    let (code, r) = w.apply(&v1, &["--force-no-state"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["last_applied_advanced"], false);
    assert!(!w.s.path("state/status.json").exists());
    assert_eq!(w.show(&w.unit("web"), "ActiveState"), "active");
    // a normal apply afterwards adopts the identical objects without changes
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["changed_objects"], 0);
    assert_eq!(w.status()["last_applied"]["revision"], v1.as_str());
    w.teardown();
}

#[test]
fn sigkill_in_the_write_phase_is_recovered_by_the_next_run() {
    common::bed::require_failpoints();
    let Some(mut w) = world("crash") else { return };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let mut fx2 = w.fx();
    fx2.level = "9";
    let v2 = w.commit(fx2);

    let repo = w.repo_arg();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_core-ops"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CORE_OPS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in &w.s.env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("FAILPOINTS", "apply::after-write=return(1)")
        .args(["apply", "--repo", &repo, "--host", "h", "--rev", &v2])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait until the first file is written, then kill -9
    let mut err = child.stderr.take().unwrap();
    let mut buf = Vec::new();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut chunk = [0u8; 256];
        loop {
            let n = err.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return buf;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains("failpoint: paused") {
                return buf;
            }
        }
    });
    let seen = reader.join().unwrap();
    assert!(String::from_utf8_lossy(&seen).contains("failpoint: paused"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    assert!(
        w.s.path("state/inflight.json").exists(),
        "journal left behind"
    );
    assert_eq!(w.status()["last_applied"]["revision"], v1.as_str());

    // the next run finishes the job: the drop-in is rewritten and web restarted
    let plan = w.plan(&v2);
    assert!(
        plan["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().contains("interrupted")),
        "{plan:#}"
    );
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert!(w.show(&w.unit("web"), "Environment").contains("LEVEL=9"));
    assert!(!w.s.path("state/inflight.json").exists());
    assert_eq!(w.status()["last_applied"]["revision"], v2.as_str());
    // nothing half-written: no temp files, every managed file whole
    let leftovers: Vec<String> = tree(&w.bed.unit_dir)
        .into_iter()
        .filter(|f| f.contains(".core-ops-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    w.teardown();
}

#[test]
fn changed_host_file_restarts_the_service_that_uses_it() {
    let Some(mut w) = world("hostfile") else {
        return;
    };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let (web, db) = (w.unit("web"), w.unit("db"));
    let (web_inv, db_inv) = (w.show(&web, "InvocationID"), w.show(&db, "InvocationID"));
    let mut fx2 = w.fx();
    fx2.env = "A=2\n";
    let v2 = w.commit(fx2);
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");
    // a host file is not a unit file: no reload, one restart
    assert_eq!(r["calls"]["reloads"], 0, "{r:#}");
    assert_eq!(r["calls"]["jobs"], 1, "{r:#}");
    assert_ne!(w.show(&web, "InvocationID"), web_inv);
    assert_eq!(w.show(&db, "InvocationID"), db_inv);
    assert_eq!(
        std::fs::read(w.s.path(&format!("etc/{}/app.env", w.p))).unwrap(),
        b"A=2\n"
    );
    w.teardown();
}

#[test]
fn failed_unit_is_drift_and_recovered() {
    let Some(mut w) = world("recover") else {
        return;
    };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let web = w.unit("web");
    w.bed.exec_ok(["systemctl", "kill", "--signal=KILL", &web]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.show(&web, "ActiveState") != "failed" {
        assert!(Instant::now() < deadline, "unit did not fail");
        std::thread::sleep(Duration::from_millis(50));
    }
    let plan = w.plan(&v1);
    let a = action(&plan, &format!("unit:{web}"));
    assert_eq!(
        (a["action"].as_str(), a["cause"].as_str()),
        (Some("recover"), Some("drift"))
    );
    assert!(
        a["reason"].as_str().unwrap().contains("Result=signal"),
        "{a}"
    );
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(w.show(&web, "ActiveState"), "active");
    assert_eq!(w.show(&web, "Result"), "success");
    w.teardown();
}

#[test]
fn every_run_writes_prometheus_metrics_that_promtool_accepts() {
    let Some(mut w) = world("metrics") else {
        return;
    };
    let v1 = w.commit(w.fx());
    let o = w.run(&["apply", "--rev", &v1]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let file = w.s.path("metrics/core-ops.prom");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("metrics file {}: {e}\n{}", file.display(), stderr(&o)));
    assert!(
        text.contains("core_ops_last_run_outcome{outcome=\"converged\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "core_ops_last_applied_info{{revision=\"{v1}\",requested_ref=\"{v1}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("core_ops_plan_actions{action=\"create\",cause=\"desired_change\"} 4"),
        "{text}"
    );
    let promtool = std::env::var("CORE_OPS_PROMTOOL")
        .unwrap_or_else(|_| "/var/cache/core-ops-test/prometheus/usr/bin/promtool".into());
    let out = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("{promtool} (installed by scripts/prereqs.sh): {e}"));
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // an error run says so too
    let o = w.run(&["apply", "--rev", "no-such-ref"]);
    assert_eq!(o.status.code(), Some(1));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("core_ops_last_run_outcome{outcome=\"error\"} 1"),
        "{text}"
    );
    // empty setting: off
    std::fs::remove_file(&file).unwrap();
    let o = w.s.run_env(
        &[
            "apply",
            "--repo",
            &w.repo_arg(),
            "--host",
            "h",
            "--rev",
            &v1,
        ],
        &[("CORE_OPS_METRICS_FILE", "")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!file.exists());
    w.teardown();
}

#[test]
fn publication_requests_are_disabled_by_default_and_go_to_the_outbox_when_enabled() {
    let Some(mut w) = world("publication") else {
        return;
    };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let id = w.receipts()[0]["id"].as_str().unwrap().to_string();
    let o = w.run(&["evidence", "publish-request", &id]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("publication:\n      enabled: true"),
        "{}",
        stdout(&o)
    );
    assert!(
        !w.s.path("state/outbox").exists(),
        "disabled writes nothing"
    );

    let mut fx = w.fx();
    fx.host_extra =
        "policy:\n  publication:\n    enabled: true\n    authority: urn:srcos:authority:test\n";
    let v2 = w.commit(fx);
    assert_eq!(w.apply(&v2, &[]).0, 0);
    let id = w.receipts().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = w.run(&["--json", "evidence", "publish-request", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let path = out["path"].as_str().unwrap();
    assert!(path.starts_with(&w.s.path("state/outbox").display().to_string()));
    let request: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(request["subject"]["id"], id.as_str());
    assert_eq!(request["authorityRef"], "urn:srcos:authority:test");
    // the draft entry validates against the vendored schema file itself
    let schema_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/runtime/sourceos/schemas/CatalogEntry.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(schema_path).unwrap()).unwrap();
    let validator =
        core_ops::runtime::schema::build_validator(&schema, std::slice::from_ref(&schema)).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&request["catalogEntry"])
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    w.teardown();
}

/// A file that exists before core-ops blocks the plan (exit 1, nothing written) until it is
/// adopted with `--adopt PATH`; the adoption is a recorded, receipted transition, the file is
/// then core-ops' own (a later revision without it removes it).
#[test]
fn a_pre_existing_file_is_adopted_only_when_asked_and_then_owned() {
    let Some(mut w) = world("adopt") else {
        return;
    };
    let fx = w.fx();
    let env = w.s.path(&format!("etc/{}/app.env", w.p));
    std::fs::create_dir_all(env.parent().unwrap()).unwrap();
    std::fs::write(&env, b"HAND=made\n").unwrap();
    let v1 = w.commit(fx);

    let o = w.run(&["--json", "plan", "--rev", &v1]);
    assert_eq!(o.status.code(), Some(1), "a blocked plan exits 1");
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = format!("file:{}", env.display());
    let a = action(&plan, &id);
    assert_eq!(
        (a["action"].as_str(), a["cause"].as_str()),
        (Some("blocked"), Some("unmanaged_conflict")),
        "{a:#}"
    );
    let o = w.run(&["--json", "apply", "--rev", &v1]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&env).unwrap(),
        b"HAND=made\n",
        "nothing written"
    );
    // the refusal is a typed error, not a configuration problem
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            err["kind"].as_str(),
            err["error"]["kind"].as_str(),
            err["exit_code"].as_u64()
        ),
        (Some("CoreOpsError"), Some("blocked_plan"), Some(1)),
        "{err:#}"
    );

    let path = env.display().to_string();
    let o = w.run(&["--json", "plan", "--rev", &v1, "--adopt", &path]);
    assert_eq!(o.status.code(), Some(0));
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(action(&plan, &id)["action"], "adopt");
    let (code, r) = w.apply(&v1, &["--adopt", &path]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(std::fs::read(&env).unwrap(), b"A=1\n");
    let ledger: Value =
        serde_json::from_slice(&std::fs::read(w.s.path("state/ledger.json")).unwrap()).unwrap();
    assert_eq!(ledger["objects"][&id]["adopted"], true, "{ledger:#}");
    assert_eq!(w.receipts().len(), 1);

    // owned now: a revision without the web service removes it
    let mut fx = w.fx();
    fx.with_db = true;
    let files: Vec<(String, Vec<u8>)> = fx
        .files()
        .into_iter()
        .filter(|(p, _)| !p.starts_with("services/web/"))
        .map(|(p, c)| {
            if p == "hosts/h/host.yaml" {
                (p, b"services: [db]\n".to_vec())
            } else {
                (p, c)
            }
        })
        .collect();
    let v2 = w.repo.commit_owned(&files, "drop web").unwrap();
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert!(
        !env.exists(),
        "the adopted file is removed with its service"
    );
}

#[test]
fn a_no_change_run_records_last_run_in_one_small_write() {
    let Some(mut w) = world("quiet") else { return };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let status_file = w.s.path("state/status.json");
    let last_run_file = w.s.path("state/status.last-run.json");
    let control_file = w.s.path("state/control.json");
    let before = std::fs::read(&status_file).unwrap();
    let control_before = std::fs::read(&control_file).ok();
    // the timestamps have second resolution: the tick must be visibly later
    std::thread::sleep(Duration::from_millis(1100));

    // an agent tick with nothing to do: status.json and control.json untouched, last_run
    // recorded beside them, and `status` shows it
    let o = w.run(&["agent", "--rev", &v1]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&status_file).unwrap(), before);
    assert_eq!(std::fs::read(&control_file).ok(), control_before);
    let small: Value = serde_json::from_slice(&std::fs::read(&last_run_file).unwrap()).unwrap();
    assert_eq!(small["last_run"]["outcome"], "no_changes", "{small:#}");
    assert_eq!(small["last_run"]["desired_revision"], v1.as_str());
    let st = w.s.run(&["--json", "status"]);
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(
        st["snapshot"]["last_run"]["outcome"], "no_changes",
        "{st:#}"
    );

    // a no-op re-run of apply: the same one small write, with its own outcome
    std::thread::sleep(Duration::from_millis(1100));
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(std::fs::read(&status_file).unwrap(), before);
    let small: Value = serde_json::from_slice(&std::fs::read(&last_run_file).unwrap()).unwrap();
    assert_eq!(small["last_run"]["outcome"], "converged", "{small:#}");

    // the next transition writes status.json again, whose last_run is then the newest
    let mut fx = w.fx();
    fx.level = "2";
    let v2 = w.commit(fx);
    assert_eq!(w.apply(&v2, &[]).0, 0);
    assert_eq!(w.status()["last_run"]["desired_revision"], v2.as_str());
    w.teardown();
}

/// A change of one service is validated before the whole revision is rendered (the services
/// whose directory differs from the last applied commit's are rendered on their own first),
/// and that early verdict is the plan's: a typo in the changed drop-in blocks the plan with
/// systemd's reason, a valid change goes through. A revision that also changes host.yaml is
/// validated after the render, as before, with the same verdict.
#[test]
fn a_changed_service_is_validated_early_with_the_plans_verdict() {
    let Some(mut w) = world("early") else {
        return;
    };
    let v1 = w.commit(w.fx());
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    let debug = [("CORE_OPS_LOG", "core_ops=debug")];
    let dropin = format!("dropin:{}-web.service.d/10-level.conf", w.p);
    let plan_of = |w: &common::world::World, rev: &str| {
        let o = w.s.run_env(
            &[
                "--json",
                "plan",
                "--rev",
                rev,
                "--repo",
                &w.repo_arg(),
                "--host",
                "h",
            ],
            &debug,
        );
        let plan: Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stderr(&o)));
        (plan, stderr(&o))
    };

    let mut typo = w.fx();
    typo.level = "2\nExecStrat=/bin/true";
    let v2 = w.commit(typo);
    let (plan, log) = plan_of(&w, &v2);
    assert!(
        log.contains("the guess of what changed") && log.contains("holds=true"),
        "{log}"
    );
    let a = action(&plan, &dropin);
    assert_eq!(a["action"], "blocked", "{a:#}");
    assert_eq!(a["cause"], "invalid_unit", "{a:#}");
    assert!(
        a["reason"]
            .as_str()
            .unwrap()
            .contains("Unknown key 'ExecStrat'"),
        "{a:#}"
    );

    // the same typo with a host.yaml change: no early start, the same verdict after render
    let mut typo_and_host = w.fx();
    typo_and_host.level = "2\nExecStrat=/bin/true";
    typo_and_host.host_extra = "variables: {a: b}\n";
    let v3 = w.commit(typo_and_host);
    let (plan, log) = plan_of(&w, &v3);
    assert!(!log.contains("the guess of what changed"), "{log}");
    let a = action(&plan, &dropin);
    assert_eq!(a["action"], "blocked", "{a:#}");
    assert_eq!(a["cause"], "invalid_unit", "{a:#}");

    // a valid change of the service: validated early, applied, exactly its unit restarted
    let mut valid = w.fx();
    valid.level = "3";
    let v4 = w.commit(valid);
    let (_, log) = plan_of(&w, &v4);
    assert!(log.contains("holds=true"), "{log}");
    let (code, r) = w.apply(&v4, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["calls"]["jobs"], 1, "{r:#}");
}

#[test]
fn a_broken_chain_is_the_reason_a_run_is_refused_with_systemd_reachable() {
    // the chain is checked beside the plan when systemd answers: its refusal still comes
    // first, whether the plan succeeds or another step fails before it
    let Some(mut w) = world("chainbeside") else {
        return;
    };
    let v1 = w.commit(w.fx());
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let mut fx2 = w.fx();
    fx2.env = "A=2\n";
    let v2 = w.commit(fx2);
    assert_eq!(w.apply(&v2, &[]).0, 0);
    let first = w.s.path("state/receipts/00000001-reconcile.json");
    let first_bytes = std::fs::read(&first).unwrap();
    std::fs::remove_file(&first).unwrap();
    let receipts = w.s.path("state/receipts");
    let before = tree(&receipts);
    let env_before = std::fs::read(w.s.path(&format!("etc/{}/app.env", w.p))).unwrap();
    let mut fx3 = w.fx();
    fx3.env = "A=3\n";
    let v3 = w.commit(fx3);
    for extra in [&[][..], &["--plan", "/nonexistent/plan.json"][..]] {
        let mut args = vec!["apply", "--rev", v3.as_str()];
        args.extend(extra);
        let o = w.run(&args);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("receipt chain: broken at"), "{extra:?}: {err}");
        assert!(err.contains("nothing was changed"), "{err}");
        // nothing applied, nothing appended
        assert_eq!(
            std::fs::read(w.s.path(&format!("etc/{}/app.env", w.p))).unwrap(),
            env_before
        );
        assert_eq!(tree(&receipts), before);
    }
    // the chain repaired, the same revision applies
    std::fs::write(&first, first_bytes).unwrap();
    assert_eq!(w.apply(&v3, &[]).0, 0);
    w.teardown();
}
