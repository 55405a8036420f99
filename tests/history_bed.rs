//! Rollback, health-gated automatic rollback, bounded retry (quarantine), oscillation and the
//! per-object drift policy, through the real binary against the real systemd of the bed.

mod common;

use common::cli::{stderr, stdout};
use common::world::{action, world};
use serde_json::Value;

fn agent(w: &common::world::World) -> (i32, String) {
    let o = w.run(&["agent"]);
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&o), stderr(&o)),
    )
}

fn control(w: &common::world::World) -> Value {
    serde_json::from_slice(&w.s.run(&["--json", "status"]).stdout).unwrap()
}

#[test]
fn history_v1_v2_broken_v3_auto_rollback_then_rollback_to_v1() {
    let Some(mut w) = world("history") else {
        return;
    };
    let web = w.unit("web");

    // v1
    let v1 = w.commit(w.fx());
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert!(w.show(&web, "Environment").contains("LEVEL=1"));
    // v2
    let mut fx = w.fx();
    fx.level = "2";
    let v2 = w.commit(fx);
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert!(w.show(&web, "Environment").contains("LEVEL=2"));
    let hist: Vec<String> = w.status()["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["revision"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hist, vec![v1.clone(), v2.clone()]);

    // v3 is broken: the web service exits at once; verification fails and v2 comes back
    let mut fx = w.fx();
    fx.level = "3";
    fx.web_exec = "/bin/false";
    let v3 = w.commit(fx);
    let (code, r) = w.apply(&v3, &[]);
    assert_eq!(code, 3, "{r:#}");
    assert!(
        !r["outcome"].as_str().unwrap().starts_with("converged"),
        "{r:#}"
    );
    let rb = &r["rollback"];
    assert_eq!(rb["to_revision"], v2.as_str(), "{r:#}");
    assert_eq!(rb["outcome"], "converged", "{r:#}");
    assert!(rb["duration_ms"].as_u64().is_some());
    assert_eq!(w.show(&web, "ActiveState"), "active");
    assert!(w.show(&web, "Environment").contains("LEVEL=2"));
    assert!(w.show(&web, "ExecStart").contains("sleep"));
    let st = w.status();
    assert_eq!(st["last_applied"]["revision"], v2.as_str());
    assert_eq!(st["last_run"]["outcome"], "rolled_back");
    assert_eq!(st["last_run"]["desired_revision"], v2.as_str());
    assert!(
        st["last_run"]["diagnostics"][0]
            .as_str()
            .unwrap()
            .starts_with("verification of ")
    );
    let transitions: Vec<String> = w
        .receipts()
        .iter()
        .map(|r| r["transition"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(transitions[..2], ["applied", "applied"]);
    assert!(
        transitions[2] == "failed" || transitions[2] == "partial",
        "{transitions:?}"
    );
    assert_eq!(transitions[3], "rolled_back");
    let last = w.receipts().pop().unwrap();
    assert!(last["reason"].as_str().unwrap().contains(&web), "{last:#}");
    assert_eq!(last["from_revision"], v2.as_str());
    assert_eq!(last["to_revision"], v2.as_str());

    // rollback to v1: plan only changes nothing
    let o = w.run(&[
        "--json",
        "apply",
        "--rollback-to",
        &v1[..10],
        "--rollback-plan-only",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["base"]["desired_revision"], v1.as_str());
    assert!(w.show(&web, "Environment").contains("LEVEL=2"));
    let receipts_before = w.receipts().len();
    // and executes with the same planner
    let o = w.run(&["--json", "apply", "--rollback-to", &v1[..10]]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(w.show(&web, "Environment").contains("LEVEL=1"));
    let st = w.status();
    assert_eq!(st["last_applied"]["revision"], v1.as_str());
    let hist: Vec<&str> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["revision"].as_str().unwrap())
        .collect();
    assert_eq!(hist, vec![v1.as_str(), v2.as_str(), v1.as_str()]);
    let receipts = w.receipts();
    assert_eq!(receipts.len(), receipts_before + 1);
    assert_eq!(receipts.last().unwrap()["transition"], "rollback");
    assert_eq!(
        core_ops::record::receipts::verify_chain(&w.s.path("state")).unwrap(),
        receipts.len()
    );

    // any name of the repository for an applied commit: an annotated tag made afterwards
    let tag = |name: &str, commit: &str| {
        let o = std::process::Command::new("git")
            .arg("-C")
            .arg(w.s.path("repo"))
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(["tag", "-a", name, "-m", name, commit])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    tag("known-good", &v2);
    let o = w.run(&[
        "--json",
        "apply",
        "--rollback-to",
        "known-good",
        "--rollback-plan-only",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["base"]["desired_revision"], v2.as_str());
    tag("never-applied", &v3);
    let o = w.run(&["apply", "--rollback-to", "never-applied"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not an applied revision"),
        "{}",
        stderr(&o)
    );

    // a revision that was never applied is refused
    let o = w.run(&["apply", "--rollback-to", &v3]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not an applied revision"),
        "{}",
        stderr(&o)
    );
    w.teardown();
}

#[test]
fn same_failure_quarantines_the_revision_until_resume_or_a_new_revision() {
    let Some(mut w) = world("quarantine") else {
        return;
    };
    let mut fx = w.fx();
    fx.host_extra = "policy:\n  max_attempts: 2\n";
    let v1 = w.commit(fx);
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let mut bad = w.fx();
    bad.web_exec = "/bin/false";
    bad.host_extra = "policy:\n  max_attempts: 2\n";
    let v2 = w.commit(bad);

    assert_eq!(agent(&w).0, 3, "first failure, rolled back");
    assert_eq!(control(&w)["convergence"], "ok");
    let (code, out) = agent(&w);
    assert_eq!(code, 3, "{out}");
    let c = control(&w);
    assert_eq!(c["convergence"], "non_converging", "{c:#}");
    assert_eq!(c["control"]["quarantine"]["revision"], v2.as_str());
    assert_eq!(c["control"]["quarantine"]["reason"], "non_converging");
    let n = w.receipts().len();
    // the timer keeps firing, the agent stops re-applying
    let (code, out) = agent(&w);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("quarantined"), "{out}");
    assert_eq!(w.receipts().len(), n, "a quarantined run changes nothing");
    // ... but it is the host's last run, and status.json says so
    let st = w.status();
    assert_eq!(st["last_run"]["outcome"], "quarantined", "{st:#}");
    assert_eq!(st["last_run"]["desired_revision"], v2.as_str());
    let text = stdout(&w.s.run(&["status"]));
    assert!(text.contains("non_converging"), "{text}");

    // resume after review: the agent tries again (and fails again)
    let o = w.s.run(&["resume", "--host", "h"]);
    assert!(stdout(&o).contains("lifted"), "{}", stdout(&o));
    assert_eq!(control(&w)["convergence"], "ok");
    assert_eq!(agent(&w).0, 3);
    assert_eq!(agent(&w).0, 3);
    assert_eq!(control(&w)["convergence"], "non_converging");

    // a new desired revision lifts the quarantine and converges
    let mut good = w.fx();
    good.level = "4";
    good.host_extra = "policy:\n  max_attempts: 2\n";
    w.commit(good);
    let o = w.run(&["--json", "agent"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["quarantine_lifted"]["revision"], v2.as_str(), "{doc:#}");
    assert_eq!(doc["quarantine_lifted"]["reason"], "non_converging");
    assert_eq!(control(&w)["convergence"], "ok");
    w.teardown();
}

#[test]
fn drift_repaired_run_after_run_is_oscillation() {
    let Some(mut w) = world("oscillate") else {
        return;
    };
    let mut fx = w.fx();
    fx.host_extra = "policy:\n  max_attempts: 2\n";
    let v1 = w.commit(fx);
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let path = w.bed.unit_dir.join(w.unit("db"));
    let tamper = || std::fs::write(&path, "[Service]\nExecStart=/bin/true\n").unwrap();
    tamper();
    assert_eq!(agent(&w).0, 2, "repaired once");
    tamper();
    assert_eq!(agent(&w).0, 2, "repaired twice");
    let c = control(&w);
    assert_eq!(c["control"]["quarantine"]["reason"], "oscillating", "{c:#}");
    assert_eq!(
        c["control"]["quarantine"]["objects"],
        serde_json::json!([format!("unit:{}", w.unit("db"))])
    );
    tamper();
    assert_eq!(agent(&w).0, 4, "stops flapping");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "[Service]\nExecStart=/bin/true\n"
    );
    w.s.run(&["resume", "--host", "h"]);
    w.teardown();
}

#[test]
fn drift_report_policy_reports_and_leaves_the_object_alone() {
    let Some(mut w) = world("driftreport") else {
        return;
    };
    let mut fx = w.fx();
    fx.db_service_yaml = format!("units:\n  {}:\n    drift: report\n", w.unit("db"));
    let v1 = w.commit(fx);
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let path = w.bed.unit_dir.join(w.unit("db"));
    let edited = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/echo hand\n";
    std::fs::write(&path, edited).unwrap();
    let plan = w.plan(&v1);
    let id = format!("unit:{}", w.unit("db"));
    let a = action(&plan, &id);
    assert_eq!(
        (a["action"].as_str(), a["cause"].as_str()),
        (Some("no_op"), Some("drift"))
    );
    assert!(
        plan["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == id)
    );
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
    w.teardown();
}
