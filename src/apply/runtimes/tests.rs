//! The install transaction through the real pipeline (render, plan, apply) against the
//! in-memory systemd: the happy path state by state, every non-happy ending, and recovery
//! from a stop right after each persisted state. The same cases run against a real systemd
//! in `tests/runtime_bed.rs`.

use crate::config::{Scratch, scratch};
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::transaction::{TxState, tests_stop_at};
use crate::apply::{ApplyOptions, ApplyResult, apply};
use crate::pipeline::{ResolvedTarget, plan_desired};
use crate::record::runtime_receipt::InstallState;
use crate::render::render;
use crate::runtime::schema::{Schema, validate};
use crate::runtime::{Layout, evidence};
use crate::source::{RepoEntry, Revision};
use crate::systemd::fake::FakeSystemd;
use core_ops_testkit::targz;

/// What one revision of the test repository selects.
struct Fx {
    version: &'static str,
    publisher: &'static str,
    policy: String,
    wrong_digest: bool,
    with_unit: bool,
}

impl Fx {
    fn new(version: &'static str) -> Fx {
        Fx {
            version,
            publisher: "example",
            policy: "  allowed_publishers: [example]\n".into(),
            wrong_digest: false,
            with_unit: true,
        }
    }
}

fn artifact(version: &str) -> Vec<u8> {
    targz(&[(
        "bin/hello",
        format!("#!/bin/sh\necho {version}\n").as_bytes(),
        0o755,
    )])
}

fn files(fx: &Fx) -> BTreeMap<String, RepoEntry> {
    let v = fx.version;
    let art = artifact(v);
    let digest = if fx.wrong_digest {
        crate::model::normalize::sha256_hex(b"something else")
    } else {
        crate::model::normalize::sha256_hex(&art)
    };
    let units = if fx.with_unit { "[app.service]" } else { "[]" };
    let services = if fx.with_unit { "[app]" } else { "[]" };
    let mut files: BTreeMap<String, RepoEntry> = [
        (
            "hosts/h/host.yaml".to_string(),
            format!(
                "services: {services}\nruntimes: {{ hello: \"{v}\" }}\npolicy:\n{}",
                fx.policy
            )
            .into_bytes(),
        ),
        (
            format!("runtimes/hello/{v}.yaml"),
            format!(
                "name: hello\nversion: \"{v}\"\npublisher: {}\nartifacts:\n  - name: hello-{v}.tar.gz\n    source: artifacts/hello-{v}.tar.gz\n    digest: {digest}\nunits: {units}\nhealth: {{ timeout: 1s }}\n",
                fx.publisher
            )
            .into_bytes(),
        ),
        (format!("artifacts/hello-{v}.tar.gz"), art),
    ]
    .into_iter()
    .map(|(p, c)| (p, RepoEntry::File { data: c, executable: false }))
    .collect();
    files.insert(
        "services/app/app.service".into(),
        RepoEntry::File {
            data:
                b"[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
                    .to_vec(),
            executable: false,
        },
    );
    files
}

/// The fixture's files committed to a real repository; the commit id.
fn commit_fx(repo: &mut core_ops_testkit::RepoBuilder, fx: &Fx) -> String {
    let owned: Vec<(String, Vec<u8>)> = files(fx)
        .into_iter()
        .map(|(p, e)| match e {
            RepoEntry::File { data, .. } => (p, data),
            RepoEntry::Symlink { .. } => unreachable!(),
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = owned
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    repo.commit_files(&refs, fx.version).unwrap()
}

/// One run of `reconcile` on `rev` of the repository at `repo_dir`.
fn reconcile_rev(
    s: &Scratch,
    sd: &FakeSystemd,
    repo_dir: &std::path::Path,
    rev: &str,
    pending_chain: Option<crate::reconcile::PendingChain<'_>>,
) -> crate::error::Result<crate::reconcile::RunReport> {
    let t = ResolvedTarget {
        repo: repo_dir.display().to_string(),
        requested_ref: rev.to_string(),
        host: "h".into(),
        adopt: Default::default(),
    };
    crate::reconcile::run(
        &s.paths,
        crate::reconcile::Request {
            target: &t,
            mode: crate::reconcile::Mode::Forward,
            opts: opts(),
            agent: false,
            plan_only: false,
            check: &|_| Ok(()),
            pending_chain,
        },
        sd,
    )
}

fn desired(s: &Scratch, fx: &Fx) -> crate::render::DesiredState {
    let v = fx.version;
    let files = files(fx);
    let rev = Revision {
        commit: format!("{:0>40}", v.replace('.', "")),
        requested_ref: "main".into(),
    };
    render(&files, &rev, "h", &s.paths).unwrap()
}

fn target() -> ResolvedTarget {
    ResolvedTarget {
        repo: "repo".into(),
        requested_ref: "main".into(),
        host: "h".into(),
        adopt: Default::default(),
    }
}

fn opts() -> ApplyOptions {
    ApplyOptions {
        settle: Duration::ZERO,
        ..ApplyOptions::default()
    }
}

fn run(s: &Scratch, sd: &FakeSystemd, fx: &Fx) -> crate::error::Result<ApplyResult> {
    let planned = plan_desired(&s.paths, &target(), "repo", desired(s, fx), sd).unwrap();
    apply(&planned, sd, &s.paths, &opts())
}

fn recover(s: &Scratch, sd: &FakeSystemd) -> Vec<super::transaction::Outcome> {
    super::recover(
        &s.paths.state_dir,
        sd,
        Duration::from_secs(5),
        Duration::ZERO,
    )
    .unwrap()
}

fn fake() -> FakeSystemd {
    let sd = FakeSystemd::new();
    sd.install_unit("app.service");
    sd
}

/// Runtime receipts in chain order (`installState`), every one schema-valid, the chain intact
/// and every evidence bundle re-hashing.
fn runtime_states(s: &Scratch) -> Vec<String> {
    let state = &s.paths.state_dir;
    crate::record::receipts::verify_chain(state).unwrap();
    crate::record::runtime_receipt::list(state)
        .unwrap()
        .into_iter()
        .map(|(p, v): (_, Value)| {
            validate(Schema::RuntimeInstallReceipt, &v)
                .unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
            let ev = v["evidenceRefs"][0].as_str().unwrap();
            assert!(evidence::verify(state, ev).unwrap().ok, "{ev}");
            v["installState"].as_str().unwrap().to_string()
        })
        .collect()
}

fn current(s: &Scratch) -> Option<String> {
    Layout::new(&s.paths.state_dir, "hello").current_version()
}

const HAPPY: [&str; 5] = [
    "requested",
    "manifest_resolved",
    "artifact_verified",
    "installing",
    "installed",
];

#[test]
fn install_walks_every_state_then_noop_then_switch() {
    let s = scratch();
    let sd = fake();
    let r = run(&s, &sd, &Fx::new("1.0")).unwrap();
    assert!(r.outcome.is_converged(), "{r:#?}");
    assert_eq!(runtime_states(&s), HAPPY);
    assert_eq!(current(&s).as_deref(), Some("1.0"));
    let tree = s.paths.state_dir.join("runtimes/hello/1.0/bin/hello");
    assert_eq!(std::fs::read(tree).unwrap(), b"#!/bin/sh\necho 1.0\n");
    assert!(r.phases.iter().any(|p| p.name == "runtimes"));
    // the runtime restarted its unit once; the start phase did not restart it again
    let restarts = sd
        .mutating_calls()
        .iter()
        .filter(|c| c.contains("app.service") && c.contains("restart"))
        .count();
    assert_eq!(restarts, 1, "{:?}", sd.mutating_calls());
    let snap = crate::record::status::load(&s.paths.state_file).unwrap();
    assert_eq!(snap.runtimes["hello"].current.as_deref(), Some("1.0"));
    assert_eq!(
        snap.runtimes["hello"]
            .last_receipt
            .as_ref()
            .unwrap()
            .install_state,
        "installed"
    );

    // again: nothing to do, no receipt
    let r = run(&s, &sd, &Fx::new("1.0")).unwrap();
    assert_eq!(r.changed_objects, 0);
    assert_eq!(runtime_states(&s).len(), 5);

    // a new version switches; previous is recorded
    let r = run(&s, &sd, &Fx::new("2.0")).unwrap();
    assert!(r.outcome.is_converged(), "{r:#?}");
    assert_eq!(current(&s).as_deref(), Some("2.0"));
    assert_eq!(
        Layout::new(&s.paths.state_dir, "hello")
            .load_record()
            .previous
            .as_deref(),
        Some("1.0")
    );
    assert_eq!(runtime_states(&s)[5..], HAPPY);
}

#[test]
fn old_versions_and_their_store_objects_are_collected() {
    let s = scratch();
    let sd = fake();
    for v in ["1.0", "2.0", "3.0", "4.0"] {
        assert!(run(&s, &sd, &Fx::new(v)).unwrap().outcome.is_converged());
    }
    let dir = s.paths.state_dir.join("runtimes/hello");
    assert!(!dir.join("1.0").exists());
    for v in ["2.0", "3.0", "4.0"] {
        assert!(dir.join(v).is_dir(), "{v}");
    }
    let objects = std::fs::read_dir(crate::runtime::store::objects_dir(&s.paths.state_dir))
        .unwrap()
        .count();
    assert_eq!(objects, crate::runtime::KEEP_VERSIONS);
}

#[test]
fn denied_deferred_and_failed_change_nothing() {
    let s = scratch();
    let sd = fake();
    let mut fx = Fx::new("1.0");
    fx.publisher = "stranger";
    let r = run(&s, &sd, &fx).unwrap();
    assert!(!r.outcome.is_converged());
    assert!(
        r.diagnostics.iter().any(|d| d.problem.contains("denied")),
        "{r:#?}"
    );
    assert_eq!(
        runtime_states(&s),
        ["requested", "manifest_resolved", "denied"]
    );

    let mut fx = Fx::new("1.0");
    fx.policy = "  allowed_publishers: [example]\n  min_free_disk: 1000000TiB\n".into();
    run(&s, &sd, &fx).unwrap();
    assert_eq!(
        runtime_states(&s)[3..],
        ["requested", "manifest_resolved", "deferred"]
    );

    let mut fx = Fx::new("1.0");
    fx.wrong_digest = true;
    run(&s, &sd, &fx).unwrap();
    let states = runtime_states(&s);
    assert_eq!(states[6..], ["requested", "manifest_resolved", "failed"]);
    let last = crate::record::runtime_receipt::list(&s.paths.state_dir)
        .unwrap()
        .pop()
        .unwrap()
        .1;
    assert_eq!(last["artifacts"][0]["verificationState"], "failed");
    assert!(
        last["failureReason"]
            .as_str()
            .unwrap()
            .contains("digest mismatch")
    );

    // nothing installed, nothing stored
    assert_eq!(current(&s), None);
    assert!(!s.paths.state_dir.join("runtimes/hello/1.0").exists());
    assert!(
        std::fs::read_dir(crate::runtime::store::objects_dir(&s.paths.state_dir))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
}

#[test]
fn unhealthy_after_switch_rolls_back_or_is_partial() {
    let s = scratch();
    let sd = fake();
    sd.fail_on_start("app.service");
    let r = run(&s, &sd, &Fx::new("1.0")).unwrap();
    assert!(!r.outcome.is_converged());
    assert_eq!(runtime_states(&s)[4], "partial");
    assert_eq!(
        current(&s).as_deref(),
        Some("1.0"),
        "partial stays switched"
    );

    let s = scratch();
    let sd = fake();
    run(&s, &sd, &Fx::new("1.0")).unwrap();
    sd.fail_on_start("app.service");
    let r = run(&s, &sd, &Fx::new("2.0")).unwrap();
    assert!(!r.outcome.is_converged());
    assert_eq!(
        runtime_states(&s)[5..],
        [
            "requested",
            "manifest_resolved",
            "artifact_verified",
            "installing",
            "rolled_back"
        ]
    );
    assert_eq!(current(&s).as_deref(), Some("1.0"));
    let last = crate::record::runtime_receipt::list(&s.paths.state_dir)
        .unwrap()
        .pop()
        .unwrap()
        .1;
    assert_eq!(last["rollbackRef"], "urn:srcos:runtime:hello@1.0");
    assert!(last["finishedAt"].is_string());
}

#[test]
fn a_stop_at_every_state_is_recovered_consistently() {
    let states = [
        TxState::Requested,
        TxState::ManifestResolved,
        TxState::ArtifactVerified,
        TxState::Installing,
        TxState::Unpacked,
        TxState::Switched,
        TxState::Restarted,
    ];
    for stop in states {
        let s = scratch();
        let sd = fake();
        run(&s, &sd, &Fx::new("1.0")).unwrap();
        tests_stop_at(Some(stop));
        let err = run(&s, &sd, &Fx::new("2.0")).unwrap_err();
        tests_stop_at(None);
        assert!(err.to_string().contains("test failpoint"), "{err}");
        let cur = current(&s).unwrap();
        assert!(cur == "1.0" || cur == "2.0", "{stop:?}: {cur}");
        assert!(super::recovery_pending(&s.paths.state_dir), "{stop:?}");
        let out = recover(&s, &sd);
        assert!(!super::recovery_pending(&s.paths.state_dir), "{stop:?}");
        assert_eq!(out.len(), 1, "{stop:?}");
        let switched = matches!(
            stop,
            TxState::Unpacked | TxState::Switched | TxState::Restarted
        ) && cur == "2.0";
        let expected = if switched {
            InstallState::Installed
        } else {
            InstallState::RolledBack
        };
        assert_eq!(out[0].state, expected, "{stop:?}: {out:?}");
        assert!(
            !Layout::new(&s.paths.state_dir, "hello")
                .transaction()
                .exists()
        );
        // the next apply converges on 2.0
        let r = run(&s, &sd, &Fx::new("2.0")).unwrap();
        assert!(r.outcome.is_converged(), "{stop:?}: {r:#?}");
        assert_eq!(current(&s).as_deref(), Some("2.0"));
        let st = runtime_states(&s);
        // no receipt was written twice: each transaction has each state at most once
        let tail: Vec<&str> = st[5..].iter().map(String::as_str).collect();
        if switched {
            assert_eq!(tail, HAPPY, "{stop:?}");
        } else {
            let stopped_at = tail.iter().position(|x| *x == "rolled_back").unwrap();
            assert_eq!(tail[stopped_at + 1..], HAPPY, "{stop:?}: {tail:?}");
        }
        let leftovers: Vec<String> = std::fs::read_dir(s.paths.state_dir.join("runtimes/hello"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(".staging") || n.contains("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn a_stop_while_rolling_back_finishes_the_rollback() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, &Fx::new("1.0")).unwrap();
    sd.fail_on_start("app.service");
    tests_stop_at(Some(TxState::RollingBack));
    assert!(run(&s, &sd, &Fx::new("2.0")).is_err());
    tests_stop_at(None);
    let out = recover(&s, &sd);
    assert_eq!(out[0].state, InstallState::RolledBack);
    assert!(out[0].recovered);
    assert_eq!(current(&s).as_deref(), Some("1.0"));
    let last = crate::record::runtime_receipt::list(&s.paths.state_dir)
        .unwrap()
        .pop()
        .unwrap()
        .1;
    assert!(
        last["causalRefs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == crate::record::runtime_receipt::RECOVERED_CAUSE)
    );
}

#[test]
fn plan_orders_runtime_before_its_units_and_says_what_policy_will_do() {
    let s = scratch();
    let sd = fake();
    let mut fx = Fx::new("1.0");
    fx.publisher = "stranger";
    let planned = plan_desired(&s.paths, &target(), "repo", desired(&s, &fx), &sd).unwrap();
    let ids: Vec<&str> = planned.plan.actions.iter().map(|a| a.id.as_str()).collect();
    let rt = ids.iter().position(|i| *i == "runtime:hello").unwrap();
    let unit = ids.iter().position(|i| *i == "unit:app.service").unwrap();
    assert!(rt < unit, "{ids:?}");
    let a = &planned.plan.actions[rt];
    assert_eq!(a.action, crate::plan::Action::Create);
    assert!(a.reason.contains("policy will deny it"), "{}", a.reason);
    assert!(a.reason.contains("restarts app.service"), "{}", a.reason);
}

#[test]
fn a_deferral_is_not_a_failure_and_is_recorded_once() {
    use crate::reconcile::RunOutcome;
    let s = scratch();
    let sd = fake();
    let repo_dir = s.dir.path().join("repo");
    let mut repo = core_ops_testkit::RepoBuilder::init(&repo_dir).unwrap();
    let mut commit = |fx: &Fx| commit_fx(&mut repo, fx);
    let run_rev = |rev: &str| reconcile_rev(&s, &sd, &repo_dir, rev, None).unwrap();
    let v1 = commit(&Fx::new("1.0"));
    assert_eq!(run_rev(&v1).outcome, RunOutcome::Converged);

    // a window two days from now (UTC): never now
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day = days[((now / 86_400 + 3 + 2) % 7) as usize];
    let mut fx = Fx::new("2.0");
    fx.policy = format!(
        "  allowed_publishers: [example]\n  maintenance_windows: [\"{day} 03:00-03:01\"]\n"
    );
    let v2 = commit(&fx);
    // more runs than max_attempts (3): never quarantined, never rolled back
    for i in 0..4 {
        let r = run_rev(&v2);
        assert_eq!(r.outcome, RunOutcome::NotConverged, "run {i}");
        assert!(r.quarantine.is_none(), "run {i}");
        let res = r.result.unwrap();
        assert!(res.rollback.is_none(), "run {i}");
        assert_eq!(res.deferred, vec!["runtime:hello".to_string()], "run {i}");
        if i > 0 {
            assert!(
                res.diagnostics[0].problem.contains("still deferred"),
                "{:?}",
                res.diagnostics
            );
        }
    }
    assert_eq!(current(&s).as_deref(), Some("1.0"));
    // one deferral, one set of receipts
    assert_eq!(
        runtime_states(&s)[5..],
        ["requested", "manifest_resolved", "deferred"]
    );
}

#[test]
fn a_runtime_whose_dependency_did_not_install_fails_without_changes() {
    let s = scratch();
    let sd = fake();
    let base = targz(&[("lib/base", b"base", 0o644)]);
    let app = artifact("1.0");
    let digest = |b: &[u8]| crate::model::normalize::sha256_hex(b);
    let files: BTreeMap<String, RepoEntry> = [
        (
            "hosts/h/host.yaml",
            "services: []\nruntimes: { app: \"1.0\", base: \"1\" }\npolicy:\n  allowed_publishers: [example]\n".as_bytes().to_vec(),
        ),
        (
            "runtimes/base/1.yaml",
            format!(
                "name: base\nversion: \"1\"\npublisher: stranger\nartifacts:\n  - name: base.tar.gz\n    source: artifacts/base.tar.gz\n    digest: {}\n",
                digest(&base)
            )
            .into_bytes(),
        ),
        (
            "runtimes/app/1.0.yaml",
            format!(
                "name: app\nversion: \"1.0\"\npublisher: example\nartifacts:\n  - name: app.tar.gz\n    source: artifacts/app.tar.gz\n    digest: {}\ndepends: [base]\n",
                digest(&app)
            )
            .into_bytes(),
        ),
        ("artifacts/base.tar.gz", base.clone()),
        ("artifacts/app.tar.gz", app.clone()),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_string(), RepoEntry::File { data: c, executable: false }))
    .collect();
    let rev = Revision {
        commit: "d".repeat(40),
        requested_ref: "main".into(),
    };
    let desired = render(&files, &rev, "h", &s.paths).unwrap();
    let planned = plan_desired(&s.paths, &target(), "repo", desired, &sd).unwrap();
    let ids: Vec<&str> = planned.plan.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["runtime:base", "runtime:app"], "dependencies first");
    let r = apply(&planned, &sd, &s.paths, &opts()).unwrap();
    assert!(!r.outcome.is_converged());
    let receipts = crate::record::runtime_receipt::list(&s.paths.state_dir).unwrap();
    let states: Vec<(String, String)> = receipts
        .iter()
        .map(|(_, v)| {
            (
                v["runtimeName"].as_str().unwrap().to_string(),
                v["installState"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("base", "requested"),
        ("base", "manifest_resolved"),
        ("base", "denied"),
        ("app", "requested"),
        ("app", "manifest_resolved"),
        ("app", "failed"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(states, want);
    let why = receipts[5].1["failureReason"].as_str().unwrap();
    assert!(
        why.contains("dependencies are not installed: base 1"),
        "{why}"
    );
    assert!(!s.paths.state_dir.join("runtimes/app/current").exists());
}

#[test]
fn a_chain_checked_beside_the_plan_decides_before_anything_is_applied() {
    use crate::reconcile::{self, RunOutcome};
    let s = scratch();
    let sd = fake();
    let repo_dir = s.dir.path().join("repo");
    let mut repo = core_ops_testkit::RepoBuilder::init(&repo_dir).unwrap();
    let v1 = commit_fx(&mut repo, &Fx::new("1.0"));
    let run_with = |pending: reconcile::PendingChain<'_>| {
        reconcile_rev(&s, &sd, &repo_dir, &v1, Some(pending))
    };
    // broken: refused with the chain's reason after the plan, nothing applied or recorded
    let err = run_with(Box::new(|| {
        Err(crate::error::Error::ReceiptChain(
            "broken at 00000002-reconcile.json".into(),
        ))
    }))
    .unwrap_err();
    assert!(err.to_string().contains("broken at"), "{err}");
    assert!(sd.mutating_calls().is_empty(), "{:?}", sd.mutating_calls());
    assert!(!s.paths.state_file.exists());
    assert_eq!(
        crate::record::receipts::verify_chain(&s.paths.state_dir).unwrap(),
        0
    );
    // intact: its report is the run's verified chain, and the run appends to it
    let state = s.paths.state_dir.clone();
    let r = run_with(Box::new(move || {
        crate::record::receipts::check_before_run(&state)
    }))
    .unwrap();
    assert_eq!(r.outcome, RunOutcome::Converged, "{:?}", r.outcome);
    // the runtime's install states and the reconcile receipt, one intact chain
    assert!(crate::record::receipts::verify_chain(&s.paths.state_dir).unwrap() > 1);
    let reconcile = std::fs::read_dir(s.paths.state_dir.join("receipts"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("-reconcile.json"))
        .count();
    assert_eq!(reconcile, 1);
}
