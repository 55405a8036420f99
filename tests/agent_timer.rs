//! `units/core-ops.service` and `units/core-ops.timer` installed into the real systemd of the
//! test bed: the timer fires, `core-ops agent` runs under systemd against a fixture repository,
//! the fixture's units come up, status.json records the revision, the exit code 2 ("changed
//! and converged") counts as success, and the logs are in the journal.

mod common;

use std::time::{Duration, Instant};

use common::bed::{bed, prefix};
use core_ops_testkit::RepoBuilder;

#[test]
fn timer_runs_the_agent_under_systemd() {
    let Some(bed) = bed() else { return };
    let p = prefix("timer");
    let work = tempfile::Builder::new()
        .prefix("timer-")
        .tempdir_in(&bed.dir)
        .unwrap();
    let repo_path = work.path().join("repo");
    let mut repo = RepoBuilder::init(&repo_path).unwrap();
    let unit = format!("{p}-svc.service");
    let sha = repo
        .commit_files(
            &[
                ("hosts/t/host.yaml", b"services: [svc]\n".as_slice()),
                (
                    &format!("services/svc/{unit}"),
                    b"[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n",
                ),
            ],
            "v1",
        )
        .unwrap();

    // the binary under test, where the unit expects it. It goes through the bed's shared
    // dir: the bed has a private /tmp, so a checkout under /tmp is invisible inside.
    let staged = work.path().join("core-ops");
    std::fs::copy(env!("CARGO_BIN_EXE_core-ops"), &staged).unwrap();
    bed.exec_ok([
        "install",
        "-m",
        "0755",
        staged.to_str().unwrap(),
        "/usr/bin/core-ops",
    ]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for u in ["core-ops.service", "core-ops.timer"] {
        bed.write_unit(
            u,
            &std::fs::read_to_string(root.join("units").join(u)).unwrap(),
        );
    }
    let state = format!("/var/lib/{p}");
    // a state dir of its own: under the unit's ProtectSystem=strict it must be made writable,
    // the way the unit documents it (StateDirectory= adds to the unit's list)
    bed.write_unit(
        "core-ops.service.d/50-test.conf",
        &format!(
            "[Service]\nStateDirectory={p}\nEnvironment=CORE_OPS_REPO={}\nEnvironment=CORE_OPS_REV=main\nEnvironment=CORE_OPS_HOST=t\nEnvironment=CORE_OPS_STATE_DIR={state}\nEnvironment=CORE_OPS_SETTLE_MS=200\nEnvironment=CORE_OPS_LOG=info\n",
            repo_path.display()
        ),
    );
    // fire one second after the timer starts instead of two minutes after boot
    bed.write_unit(
        "core-ops.timer.d/50-test.conf",
        "[Timer]\nOnActiveSec=1s\nRandomizedDelaySec=0\n",
    );
    bed.exec_ok(["systemctl", "daemon-reload"]);
    let verify = bed.exec([
        "systemd-analyze",
        "verify",
        "core-ops.service",
        "core-ops.timer",
    ]);
    let verify_err = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(
        !verify_err.contains("core-ops.service:") && !verify_err.contains("core-ops.timer:"),
        "systemd-analyze verify complains about our units:\n{verify_err}"
    );
    bed.exec_ok(["systemctl", "enable", "--now", "core-ops.timer"]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = bed.exec(["cat", &format!("{state}/status.json")]);
        let ran = bed.exec_ok([
            "systemctl",
            "show",
            "--value",
            "-p",
            "ExecMainExitTimestampMonotonic",
            "core-ops.service",
        ]);
        if out.status.success() && ran.trim() != "0" {
            break String::from_utf8_lossy(&out.stdout).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the timer did not run core-ops within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["last_applied"]["revision"], sha.as_str());
    assert_eq!(v["last_run"]["outcome"], "converged");
    let show = |prop: &str, u: &str| {
        bed.exec_ok(["systemctl", "show", "--value", "-p", prop, u])
            .trim()
            .to_string()
    };
    assert_eq!(show("ActiveState", &unit), "active");
    assert_eq!(show("ExecMainStatus", "core-ops.service"), "2");
    assert_eq!(show("Result", "core-ops.service"), "success");
    let journal = bed.exec_ok(["journalctl", "--no-pager", "-t", "core-ops", "-o", "cat"]);
    assert!(
        journal.contains("written") || journal.contains("1 Reload()"),
        "{journal}"
    );

    // leave the shared bed as found
    bed.exec_ok(["systemctl", "disable", "--now", "core-ops.timer"]);
    let _ = bed.exec(["systemctl", "disable", "--now", &unit]);
    bed.remove_units(&[
        "core-ops.service".to_string(),
        "core-ops.timer".to_string(),
        unit,
    ]);
    bed.exec_ok(["systemctl", "daemon-reload"]);
}
