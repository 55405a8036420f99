//! Runtimes against a real systemd in the test bed, through the real binary.
//!
//! Seed 000's six cases (success, failed artifact verification, policy-denied, partial
//! install, rollback, deferred), each asserting the exact receipt sequence of the whole chain
//! (runtime receipts by `installState`, reconcile receipts by `transition`), and every
//! `RuntimeInstallReceipt` validated with the `jsonschema` crate against the vendored schema
//! file itself. Then one crash test per state boundary of an install: core-ops is paused
//! right after persisting the state (failpoint `runtime::state`), SIGKILLed, and the
//! next run must end consistent (old or new version fully current, units running) with
//! receipts that say what happened.
//!
//! Artifacts are built at test time (small tar.gz with a shell script); nothing binary is
//! committed. Each test has its own unit-name prefix and state dir under the bed's directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::bed::{Bed, prefix};
use common::cli::{Scratch, stderr, stdout};
use common::world::bed_scratch;
use core_ops_testkit::{RepoBuilder, targz};
use serde_json::Value;

struct World {
    bed: &'static Bed,
    s: Scratch,
    p: String,
    repo: RepoBuilder,
}

fn world(test: &str) -> Option<World> {
    let (bed, s) = bed_scratch("rt-")?;
    let repo = RepoBuilder::init(&s.path("repo")).expect("repo");
    Some(World {
        bed,
        s,
        p: prefix(test),
        repo,
    })
}

/// How the artifact reaches core-ops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Src {
    /// Committed in the repository (`artifacts/...`).
    Repo,
    /// An absolute path outside the repository.
    Abs,
}

/// One revision of the test repository: runtime `hello` at `version`, optionally the unit
/// `<p>-hello.service` that runs `current/bin/hello`.
struct Fx {
    version: &'static str,
    good: bool,
    src: Src,
    publisher: &'static str,
    policy: String,
    wrong_digest: bool,
    with_unit: bool,
}

impl World {
    fn fx(&self, version: &'static str) -> Fx {
        Fx {
            version,
            good: true,
            src: Src::Abs,
            publisher: "example",
            policy: "  allowed_publishers: [example]\n".into(),
            wrong_digest: false,
            with_unit: true,
        }
    }

    fn unit(&self) -> String {
        format!("{}-hello.service", self.p)
    }

    fn marker(&self) -> PathBuf {
        self.s.path("hello.ran")
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.s.path("state/runtimes/hello/current"))
            .ok()
            .map(|p| p.display().to_string())
    }

    /// The artifact of a version: `bin/hello` records the version it is, then runs (good) or
    /// exits 3 at once (bad).
    fn artifact(&self, fx: &Fx) -> Vec<u8> {
        let script = if fx.good {
            format!(
                "#!/bin/sh\necho {} > {}\nexec sleep infinity\n",
                fx.version,
                self.marker().display()
            )
        } else {
            "#!/bin/sh\nexit 3\n".to_string()
        };
        targz(&[("bin/hello", script.as_bytes(), 0o755)])
    }

    fn commit(&mut self, fx: &Fx) -> String {
        let v = fx.version;
        let art = self.artifact(fx);
        let digest = if fx.wrong_digest {
            core_ops::model::normalize::sha256_hex(b"not the artifact")
        } else {
            core_ops::model::normalize::sha256_hex(&art)
        };
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let source = match fx.src {
            Src::Repo => {
                files.push((format!("artifacts/hello-{v}.tar.gz"), art));
                format!("artifacts/hello-{v}.tar.gz")
            }
            Src::Abs => {
                let path = self.s.path(&format!("dist/hello-{v}-{}.tar.gz", fx.good));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, art).unwrap();
                path.display().to_string()
            }
        };
        let unit = self.unit();
        let units = if fx.with_unit {
            format!("[{unit}]")
        } else {
            "[]".into()
        };
        files.push((
            format!("runtimes/hello/{v}.yaml"),
            format!(
                "name: hello\nversion: \"{v}\"\npublisher: {}\nartifacts:\n  - name: hello-{v}.tar.gz\n    source: {source}\n    digest: {digest}\nunits: {units}\nhealth: {{ timeout: 10s }}\n",
                fx.publisher
            )
            .into_bytes(),
        ));
        let services = if fx.with_unit {
            files.push((
                format!("services/hello/{unit}"),
                format!(
                    "[Unit]\nDescription=core-ops runtime test\n\n[Service]\nExecStart={}/bin/hello\n\n[Install]\nWantedBy=multi-user.target\n",
                    self.s.path("state/runtimes/hello/current").display()
                )
                .into_bytes(),
            ));
            "[hello]"
        } else {
            "[]"
        };
        files.push((
            "hosts/h/host.yaml".into(),
            format!(
                "services: {services}\nruntimes: {{ hello: \"{v}\" }}\npolicy:\n{}",
                fx.policy
            )
            .into_bytes(),
        ));
        self.repo.commit_owned(&files, v).expect("commit")
    }

    fn repo_arg(&self) -> String {
        self.s.path("repo").display().to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        let repo = self.repo_arg();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--repo", &repo, "--host", "h"]);
        self.s.run(&full)
    }

    fn apply(&self, rev: &str) -> (i32, Value) {
        let o = self.run(&["--json", "apply", "--rev", rev]);
        let code = o.status.code().unwrap_or(-1);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            panic!(
                "apply printed no JSON (exit {code}):\n{}\n{}",
                stdout(&o),
                stderr(&o)
            )
        });
        (code, v)
    }

    fn show(&self, prop: &str) -> String {
        self.bed
            .exec_ok(["systemctl", "show", "--value", "-p", prop, &self.unit()])
            .trim()
            .to_string()
    }

    /// Wait until the unit has written the marker of `version` (it does so when it starts).
    fn wait_marker(&self, version: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = std::fs::read_to_string(self.marker()).unwrap_or_default();
            if got.trim() == version {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the unit never ran {version} (marker: {got:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every receipt, in chain order; runtime receipts are schema-validated on the way.
    fn receipts(&self) -> Vec<Value> {
        let dir = self.s.path("state/receipts");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let validator = receipt_validator();
        names
            .iter()
            .map(|n| {
                let v: Value =
                    serde_json::from_slice(&std::fs::read(dir.join(n)).unwrap()).unwrap();
                if v["type"] == "RuntimeInstallReceipt" {
                    let errors: Vec<String> =
                        validator.iter_errors(&v).map(|e| e.to_string()).collect();
                    assert!(
                        errors.is_empty(),
                        "{n} is not schema-valid: {errors:?}\n{v:#}"
                    );
                    assert_eq!(v["logMode"], "compact_receipt_ref");
                }
                v
            })
            .collect()
    }

    /// The chain as a list: `installState` of runtime receipts, `reconcile:<transition>` of
    /// reconcile receipts. Also checks the hash chain and every evidence bundle.
    fn chain(&self) -> Vec<String> {
        let list = self.receipts();
        core_ops::record::receipts::verify_chain(&self.s.path("state")).expect("intact chain");
        for r in &list {
            if let Some(ev) = r["evidenceRefs"][0].as_str() {
                let o = self.s.run(&["evidence", "verify", ev]);
                assert!(o.status.success(), "evidence {ev}: {}", stdout(&o));
            }
        }
        list.iter()
            .map(|r| match r["installState"].as_str() {
                Some(s) => s.to_string(),
                None => format!("reconcile:{}", r["transition"].as_str().unwrap_or("?")),
            })
            .collect()
    }

    fn last_runtime_receipt(&self) -> Value {
        self.receipts()
            .into_iter()
            .rfind(|r| r["type"] == "RuntimeInstallReceipt")
            .expect("a runtime receipt")
    }

    fn store_objects(&self) -> usize {
        std::fs::read_dir(self.s.path("state/store/sha256"))
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Remove what this test made: through core-ops, then by hand for what never converged.
    fn teardown(&mut self) {
        let files = [("hosts/h/host.yaml", b"services: []\n".as_slice())];
        let sha = self.repo.commit_files(&files, "empty").unwrap();
        let _ = self.apply(&sha);
        let unit = self.unit();
        let _ = self.bed.exec(["systemctl", "stop", &unit]);
        let _ = self.bed.exec(["systemctl", "disable", &unit]);
        self.bed.remove_units(std::slice::from_ref(&unit));
        let _ = self.bed.exec(["systemctl", "daemon-reload"]);
    }
}

/// A validator built with the `jsonschema` crate from the vendored file on disk (not from the
/// copy the binary embeds), offline, draft 2020-12, formats asserted.
fn receipt_validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/runtime/sourceos/schemas/RuntimeInstallReceipt.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let id = schema["$id"].as_str().unwrap().to_string();
    let registry = jsonschema::Registry::new()
        .add(id.as_str(), &schema)
        .unwrap()
        .prepare()
        .unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_registry(&registry)
        .offline()
        .build(&schema)
        .unwrap()
}

const HAPPY: [&str; 5] = [
    "requested",
    "manifest_resolved",
    "artifact_verified",
    "installing",
    "installed",
];

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ------------------------------------------------------------------ seed 000's six cases

#[test]
fn success_installs_switches_restarts_and_records() {
    let Some(mut w) = world("rt-success") else {
        return;
    };
    let mut fx = w.fx("1.0.0");
    fx.src = Src::Repo;
    let v1 = w.commit(&fx);
    let plan: Value =
        serde_json::from_slice(&w.run(&["--json", "plan", "--rev", &v1]).stdout).unwrap();
    let ids: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    let unit_id = format!("unit:{}", w.unit());
    assert!(
        ids.iter().position(|i| *i == "runtime:hello") < ids.iter().position(|i| *i == unit_id),
        "runtime before the unit that uses it: {ids:?}"
    );

    let (code, r) = w.apply(&v1);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["outcome"], "converged");
    let mut want = strs(&HAPPY);
    want.push("reconcile:applied".into());
    assert_eq!(w.chain(), want);
    assert_eq!(w.current().as_deref(), Some("1.0.0"));
    w.wait_marker("1.0.0");
    assert_eq!(w.show("ActiveState"), "active");
    let last = w.last_runtime_receipt();
    assert_eq!(last["artifacts"][0]["verificationState"], "verified");
    assert_eq!(last["runtimeRef"], "urn:srcos:runtime:hello@1.0.0");
    assert!(last["failureReason"].is_null());
    assert!(
        last["id"]
            .as_str()
            .unwrap()
            .starts_with("urn:srcos:receipt:runtime-install:h:")
    );

    // status lists it; explain shows the transaction history
    let st: Value = serde_json::from_slice(&w.s.run(&["--json", "status"]).stdout).unwrap();
    let rt = &st["snapshot"]["runtimes"]["hello"];
    assert_eq!(rt["current"], "1.0.0", "{st:#}");
    assert_eq!(rt["last_receipt"]["install_state"], "installed");
    let ex: Value = serde_json::from_slice(
        &w.run(&["--json", "explain", "runtime:hello", "--rev", &v1])
            .stdout,
    )
    .unwrap();
    let txs = ex["runtime"]["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 1, "{ex:#}");
    assert_eq!(txs[0]["outcome"], "installed");
    assert_eq!(txs[0]["steps"].as_array().unwrap().len(), 5);
    let text = stdout(&w.run(&["explain", "runtime:hello", "--rev", &v1]));
    assert!(
        text.contains(
            "requested -> manifest_resolved -> artifact_verified -> installing -> installed"
        ),
        "{text}"
    );
    // a tampered evidence bundle is detected
    let ev = last["evidenceRefs"][0].as_str().unwrap().to_string();
    let dir =
        w.s.path("state/evidence")
            .join(ev.trim_start_matches("evidence:"));
    std::fs::write(dir.join("manifest.yaml"), b"name: evil\n").unwrap();
    let o = w.s.run(&["evidence", "verify", &ev]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("DOES NOT VERIFY"));

    // the runtime leaves with the desired state: removed from the host
    w.teardown();
    assert!(!w.s.path("state/runtimes/hello").exists());
    assert_eq!(w.store_objects(), 0);
}

#[test]
fn failed_artifact_verification_installs_nothing() {
    let Some(mut w) = world("rt-badsum") else {
        return;
    };
    let mut fx = w.fx("1.0.0");
    fx.wrong_digest = true;
    fx.with_unit = false;
    let v1 = w.commit(&fx);
    let (code, r) = w.apply(&v1);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(
        w.chain(),
        strs(&[
            "requested",
            "manifest_resolved",
            "failed",
            "reconcile:failed"
        ])
    );
    let last = w.last_runtime_receipt();
    assert_eq!(last["artifacts"][0]["verificationState"], "failed");
    let why = last["failureReason"].as_str().unwrap();
    assert!(why.contains("digest mismatch"), "{why}");
    assert!(last["evidenceRefs"].as_array().unwrap().len() == 1);
    assert_eq!(w.current(), None);
    assert!(!w.s.path("state/runtimes/hello/1.0.0").exists());
    assert_eq!(w.store_objects(), 0, "nothing unverified is kept");
    w.teardown();
}

#[test]
fn policy_denied_changes_nothing() {
    let Some(mut w) = world("rt-denied") else {
        return;
    };
    let mut fx = w.fx("1.0.0");
    fx.publisher = "stranger";
    fx.with_unit = false;
    let v1 = w.commit(&fx);
    let plan = stdout(&w.run(&["plan", "--rev", &v1]));
    assert!(plan.contains("policy will deny it"), "{plan}");
    let (code, r) = w.apply(&v1);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(
        w.chain(),
        strs(&[
            "requested",
            "manifest_resolved",
            "denied",
            "reconcile:failed"
        ])
    );
    let last = w.last_runtime_receipt();
    assert!(
        last["failureReason"]
            .as_str()
            .unwrap()
            .contains("publisher 'stranger'"),
        "{last:#}"
    );
    assert_eq!(last["artifacts"][0]["verificationState"], "not_checked");
    assert_eq!(w.current(), None);
    assert_eq!(w.store_objects(), 0, "denied before anything was fetched");
    w.teardown();
}

#[test]
fn partial_install_without_a_previous_version() {
    let Some(mut w) = world("rt-partial") else {
        return;
    };
    let mut fx = w.fx("1.0.0");
    fx.good = false;
    let v1 = w.commit(&fx);
    let (code, r) = w.apply(&v1);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(
        w.chain(),
        strs(&[
            "requested",
            "manifest_resolved",
            "artifact_verified",
            "installing",
            "partial",
            "reconcile:failed"
        ])
    );
    let last = w.last_runtime_receipt();
    assert!(last["rollbackRef"].is_null());
    assert!(
        last["failureReason"]
            .as_str()
            .unwrap()
            .contains("no previous version"),
        "{last:#}"
    );
    // switched whole, never half: current is the complete new tree
    assert_eq!(w.current().as_deref(), Some("1.0.0"));
    assert!(w.s.path("state/runtimes/hello/1.0.0/bin/hello").is_file());
    assert_ne!(w.show("ActiveState"), "active");
    w.teardown();
}

#[test]
fn unhealthy_update_rolls_back_to_the_previous_version() {
    let Some(mut w) = world("rt-rollback") else {
        return;
    };
    let v1 = w.commit(&w.fx("1.0.0"));
    assert_eq!(w.apply(&v1).0, 0);
    w.wait_marker("1.0.0");
    let before = w.show("InvocationID");
    let mut fx2 = w.fx("2.0.0");
    fx2.good = false;
    let v2 = w.commit(&fx2);
    let (code, r) = w.apply(&v2);
    assert_eq!(code, 3, "{r:#}");
    let mut want = strs(&HAPPY);
    want.push("reconcile:applied".into());
    want.extend(strs(&[
        "requested",
        "manifest_resolved",
        "artifact_verified",
        "installing",
        "rolled_back",
        "reconcile:failed",
    ]));
    assert_eq!(w.chain(), want);
    let last = w.last_runtime_receipt();
    assert_eq!(last["rollbackRef"], "urn:srcos:runtime:hello@1.0.0");
    assert!(
        last["failureReason"]
            .as_str()
            .unwrap()
            .contains("switched back to 1.0.0"),
        "{last:#}"
    );
    assert_eq!(w.current().as_deref(), Some("1.0.0"));
    // 1.0.0 runs again, restarted after the switch back
    w.wait_marker("1.0.0");
    assert_eq!(w.show("ActiveState"), "active");
    assert_ne!(w.show("InvocationID"), before);
    let st: Value = serde_json::from_slice(&w.s.run(&["--json", "status"]).stdout).unwrap();
    assert_eq!(st["snapshot"]["runtimes"]["hello"]["current"], "1.0.0");
    assert_eq!(
        st["snapshot"]["runtimes"]["hello"]["last_receipt"]["install_state"],
        "rolled_back"
    );
    w.teardown();
}

#[test]
fn outside_the_maintenance_window_is_deferred() {
    let Some(mut w) = world("rt-deferred") else {
        return;
    };
    // a one-minute window two days from now (UTC): never now
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day = days[((now / 86_400 + 3 + 2) % 7) as usize];
    let mut fx = w.fx("1.0.0");
    fx.with_unit = false;
    fx.policy = format!(
        "  allowed_publishers: [example]\n  maintenance_windows: [\"{day} 03:00-03:01\"]\n"
    );
    let v1 = w.commit(&fx);
    let (code, r) = w.apply(&v1);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(
        w.chain(),
        strs(&[
            "requested",
            "manifest_resolved",
            "deferred",
            "reconcile:failed"
        ])
    );
    let last = w.last_runtime_receipt();
    assert!(
        last["failureReason"]
            .as_str()
            .unwrap()
            .contains("outside the maintenance windows"),
        "{last:#}"
    );
    assert_eq!(w.current(), None);
    assert_eq!(w.store_objects(), 0);
    w.teardown();
}

// ------------------------------------------------------------------ crash tests

/// Install 1.0.0, start applying 2.0.0 with the failpoint at `state`, SIGKILL it there, check
/// the host is never half-switched, run apply again and check it ended consistent. Returns
/// the receipt chain after 1.0.0's (`requested` .. `reconcile:applied`).
fn crash_at(test: &str, state: &str, good: bool) -> Option<(World, Vec<String>, i32)> {
    common::bed::require_failpoints();
    let mut w = world(test)?;
    let v1 = w.commit(&w.fx("1.0.0"));
    assert_eq!(w.apply(&v1).0, 0);
    w.wait_marker("1.0.0");
    let mut fx2 = w.fx("2.0.0");
    fx2.good = good;
    let v2 = w.commit(&fx2);

    let repo = w.repo_arg();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_core-ops"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CORE_OPS_") || k == "JOURNAL_STREAM" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in &w.s.env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("FAILPOINTS", format!("runtime::state=return({state})"))
        .args(["apply", "--repo", &repo, "--host", "h", "--rev", &v2])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let needle = format!("failpoint: paused at runtime::state({state})");
    let wanted = needle.clone();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let needle = wanted;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            let n = err.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return buf;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains(&needle) {
                return buf;
            }
        }
    });
    let seen = reader.join().unwrap();
    assert!(
        String::from_utf8_lossy(&seen).contains(&needle),
        "never paused at {state}:\n{}",
        String::from_utf8_lossy(&seen)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();

    // killed: never half-switched, the transaction is on disk for the next run
    let cur = w.current().expect("current survives");
    assert!(cur == "1.0.0" || cur == "2.0.0", "{state}: {cur}");
    assert!(
        w.s.path(&format!("state/runtimes/hello/{cur}/bin/hello"))
            .is_file(),
        "{state}: current points at a whole tree"
    );
    assert!(
        w.s.path("state/runtimes/hello/.transaction.json").exists(),
        "{state}: transaction left for recovery"
    );
    let plan = stdout(&w.run(&["plan", "--rev", &v2]));
    assert!(plan.contains("was interrupted in state"), "{plan}");

    // the next run recovers, then converges (or, for a bad version, rolls back again)
    let (code, r) = w.apply(&v2);
    assert!(
        !w.s.path("state/runtimes/hello/.transaction.json").exists(),
        "{r:#}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(w.s.path("state/runtimes/hello"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".staging") || n.starts_with(".core-ops-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let chain = w.chain();
    assert_eq!(chain[..6], {
        let mut v = strs(&HAPPY);
        v.push("reconcile:applied".into());
        v
    });
    let tail = chain[6..].to_vec();
    Some((w, tail, code))
}

/// Before the switch: the interrupted install is rolled back at start-up (receipt
/// `rolled_back`, recovered), then installed afresh in the same run.
fn assert_rolled_back_then_installed(w: &mut World, tail: &[String], code: i32, before: &[&str]) {
    assert_eq!(code, 0);
    let mut want = strs(before);
    want.push("rolled_back".into());
    want.extend(strs(&HAPPY));
    want.push("reconcile:applied".into());
    assert_eq!(tail, want);
    let recovered = w
        .receipts()
        .into_iter()
        .rfind(|r| r["installState"] == "rolled_back")
        .unwrap();
    assert!(
        recovered["causalRefs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "urn:srcos:event:core-ops:recovered-after-interruption"),
        "{recovered:#}"
    );
    assert!(
        recovered["failureReason"]
            .as_str()
            .unwrap()
            .contains("before the switch"),
        "{recovered:#}"
    );
    assert_eq!(w.current().as_deref(), Some("2.0.0"));
    w.wait_marker("2.0.0");
    assert_eq!(w.show("ActiveState"), "active");
    w.teardown();
}

/// After the switch: the transaction is rolled forward at start-up (restart, health,
/// `installed`); the plan that follows has nothing left to change on the host, but
/// `last_applied` moves to the new revision, which is a transition with its receipt.
fn assert_rolled_forward(w: &mut World, tail: &[String], code: i32) {
    assert_eq!(code, 0);
    let mut want = strs(&HAPPY);
    want.push("reconcile:applied".into());
    assert_eq!(tail, want);
    let last = w.last_runtime_receipt();
    assert!(
        last["causalRefs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "urn:srcos:event:core-ops:recovered-after-interruption")
    );
    assert_eq!(w.current().as_deref(), Some("2.0.0"));
    w.wait_marker("2.0.0");
    assert_eq!(w.show("ActiveState"), "active");
    w.teardown();
}

#[test]
fn crash_after_requested() {
    let Some((mut w, tail, code)) = crash_at("rt-crash-req", "requested", true) else {
        return;
    };
    assert_rolled_back_then_installed(&mut w, &tail, code, &["requested"]);
}

#[test]
fn crash_after_manifest_resolved() {
    let Some((mut w, tail, code)) = crash_at("rt-crash-mr", "manifest_resolved", true) else {
        return;
    };
    assert_rolled_back_then_installed(&mut w, &tail, code, &["requested", "manifest_resolved"]);
}

#[test]
fn crash_after_artifact_verified() {
    let Some((mut w, tail, code)) = crash_at("rt-crash-av", "artifact_verified", true) else {
        return;
    };
    assert_rolled_back_then_installed(
        &mut w,
        &tail,
        code,
        &["requested", "manifest_resolved", "artifact_verified"],
    );
}

#[test]
fn crash_after_installing() {
    let Some((mut w, tail, code)) = crash_at("rt-crash-inst", "installing", true) else {
        return;
    };
    assert_rolled_back_then_installed(
        &mut w,
        &tail,
        code,
        &[
            "requested",
            "manifest_resolved",
            "artifact_verified",
            "installing",
        ],
    );
}

#[test]
fn crash_after_unpacked() {
    let Some((mut w, tail, code)) = crash_at("rt-crash-unp", "unpacked", true) else {
        return;
    };
    assert_rolled_back_then_installed(
        &mut w,
        &tail,
        code,
        &[
            "requested",
            "manifest_resolved",
            "artifact_verified",
            "installing",
        ],
    );
}

#[test]
fn crash_after_switched() {
    let Some((mut w, tail, code)) = crash_at("rt-crash-sw", "switched", true) else {
        return;
    };
    assert_rolled_forward(&mut w, &tail, code);
}

#[test]
fn crash_after_restarted() {
    let Some((mut w, tail, code)) = crash_at("rt-crash-rs", "restarted", true) else {
        return;
    };
    assert_rolled_forward(&mut w, &tail, code);
}

#[test]
fn crash_while_rolling_back() {
    let Some((mut w, tail, code)) = crash_at("rt-crash-rb", "rolling_back", false) else {
        return;
    };
    // recovery finishes the rollback; the same run tries 2.0.0 again and rolls back again
    assert_eq!(code, 3);
    let attempt = [
        "requested",
        "manifest_resolved",
        "artifact_verified",
        "installing",
        "rolled_back",
    ];
    let mut want = strs(&attempt);
    want.extend(strs(&attempt));
    want.push("reconcile:failed".into());
    assert_eq!(tail, want);
    assert_eq!(w.current().as_deref(), Some("1.0.0"));
    w.wait_marker("1.0.0");
    assert_eq!(w.show("ActiveState"), "active");
    w.teardown();
}
