//! `DbusSystemd` against a real systemd 252 in the test bed (no mocks).
//!
//! Why: the D-Bus layer is where the measured traps live (missed `JobRemoved`, the 128
//! pending-replies limit, per-type `Result`); only a real manager proves they are handled.

mod common;

use std::time::Duration;

use common::bed::{Bed, bed, prefix};
use core_ops::systemd::dbus::DbusSystemd;
use core_ops::systemd::{CallCounts, JobKind, JobOutcome, Systemd, UnitStatus};

const JOB_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(bed: &Bed) -> DbusSystemd {
    DbusSystemd::connect(Some(&bed.address)).expect("connect to the test bed's bus")
}

fn oneshot(exec: &str) -> String {
    format!(
        "[Unit]\nDescription=core-ops test unit\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={exec}\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

fn jobs(kind: JobKind, units: &[String]) -> Vec<(JobKind, String)> {
    units.iter().map(|u| (kind, u.clone())).collect()
}

fn outcomes(sd: &DbusSystemd, kind: JobKind, units: &[String]) -> Vec<JobOutcome> {
    let res = sd
        .run_jobs(&jobs(kind, units), JOB_TIMEOUT)
        .expect("run_jobs");
    assert_eq!(res.len(), units.len());
    for (r, u) in res.iter().zip(units) {
        assert_eq!(
            (&r.unit, r.kind),
            (u, kind),
            "results must be in input order"
        );
    }
    res.into_iter().map(|r| r.outcome).collect()
}

fn states(s: &UnitStatus) -> (&str, &str, &str, &str) {
    (
        s.load_state.as_str(),
        s.active_state.as_str(),
        s.sub_state.as_str(),
        s.unit_file_state.as_str(),
    )
}

/// Stop, disable and delete a test's units (best effort: the bed outlives the test).
fn cleanup(bed: &Bed, sd: &DbusSystemd, units: &[String]) {
    let _ = sd.run_jobs(&jobs(JobKind::Stop, units), JOB_TIMEOUT);
    let _ = sd.disable(units);
    let _ = sd.reset_failed(units);
    bed.remove_units(units);
}

#[test]
fn lifecycle_of_three_units_with_one_reload() {
    let Some(bed) = bed() else { return };
    let p = prefix("lifecycle");
    let units: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("{p}-{n}.service"))
        .collect();
    for u in &units {
        bed.write_unit(u, &oneshot("/bin/true"));
    }
    bed.write_unit(
        &format!("{}.d/10-core-ops-test.conf", units[0]),
        "[Unit]\nDescription=changed by a drop-in\n",
    );
    let sd = connect(bed);

    sd.reload().expect("reload");
    sd.enable(&units).expect("enable");
    assert_eq!(
        outcomes(&sd, JobKind::Start, &units),
        vec![JobOutcome::Done; 3]
    );

    let st = sd.unit_statuses(&units).expect("statuses");
    assert_eq!(st.len(), 3);
    for (s, u) in st.iter().zip(&units) {
        assert_eq!(&s.name, u);
        assert_eq!(
            states(s),
            ("loaded", "active", "exited", "enabled"),
            "{s:?}"
        );
        assert_eq!(s.result, "success");
        assert_eq!(s.n_restarts, Some(0));
        assert_eq!(s.invocation_id.len(), 32, "{s:?}");
        assert!(s.invocation_id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    // the drop-in was applied, as seen by systemctl inside the bed
    let desc = bed.exec_ok([
        "systemctl",
        "show",
        "-p",
        "Description",
        "--value",
        &units[0],
    ]);
    assert_eq!(desc.trim(), "changed by a drop-in");
    // and the enablement is where systemd puts it
    let wants = bed.unit_dir.join("multi-user.target.wants");
    for u in &units {
        assert!(wants.join(u).is_symlink(), "{u} not in {}", wants.display());
    }
    assert_eq!(
        sd.counts(),
        CallCounts {
            reloads: 1,
            jobs: 3,
            enablement_calls: 1
        }
    );

    // restart: a new invocation
    let before = st[1].invocation_id.clone();
    assert_eq!(
        outcomes(&sd, JobKind::Restart, &units[1..2]),
        vec![JobOutcome::Done]
    );
    let after = sd.unit_statuses(&units[1..2]).unwrap().remove(0);
    assert_eq!(states(&after), ("loaded", "active", "exited", "enabled"));
    assert_ne!(after.invocation_id, before);
    assert!(!after.invocation_id.is_empty());

    // disable while still active (so still loaded): systemd's cached UnitFileState property
    // says "enabled" until the next Reload; the status must say what is on disk
    sd.disable(&units).expect("disable");
    for s in sd.unit_statuses(&units).unwrap() {
        assert_eq!(
            states(&s),
            ("loaded", "active", "exited", "disabled"),
            "{s:?}"
        );
    }
    for u in &units {
        assert!(!wants.join(u).exists(), "{u} still enabled");
    }
    assert_eq!(
        outcomes(&sd, JobKind::Stop, &units),
        vec![JobOutcome::Done; 3]
    );
    for s in sd.unit_statuses(&units).unwrap() {
        assert_eq!(
            states(&s),
            ("loaded", "inactive", "dead", "disabled"),
            "{s:?}"
        );
    }
    assert_eq!(
        sd.counts(),
        CallCounts {
            reloads: 1,
            jobs: 7,
            enablement_calls: 2
        }
    );
    cleanup(bed, &sd, &units);
}

#[test]
fn a_failing_unit_fails_and_can_be_reset() {
    let Some(bed) = bed() else { return };
    let unit = format!("{}.service", prefix("failing"));
    bed.write_unit(&unit, &oneshot("/bin/false"));
    let sd = connect(bed);
    sd.reload().expect("reload");
    let units = vec![unit.clone()];

    assert_eq!(
        outcomes(&sd, JobKind::Start, &units),
        vec![JobOutcome::Failed]
    );
    let s = sd.unit_statuses(&units).unwrap().remove(0);
    assert_eq!(
        (
            s.load_state.as_str(),
            s.active_state.as_str(),
            s.sub_state.as_str()
        ),
        ("loaded", "failed", "failed")
    );
    assert_eq!(s.result, "exit-code");
    assert_eq!(s.unit_file_state, "disabled");
    assert!(!s.invocation_id.is_empty());

    sd.reset_failed(&units).expect("reset-failed");
    let s = sd.unit_statuses(&units).unwrap().remove(0);
    assert_eq!(
        (s.active_state.as_str(), s.result.as_str()),
        ("inactive", "success")
    );
    cleanup(bed, &sd, &units);
}

#[test]
fn unknown_units_are_not_found_and_their_jobs_refused() {
    let Some(bed) = bed() else { return };
    let p = prefix("unknown");
    let missing = format!("{p}-missing.service");
    let good = format!("{p}-good.service");
    bed.write_unit(&good, &oneshot("/bin/true"));
    let sd = connect(bed);

    let names = vec![
        missing.clone(),
        "multi-user.target".to_string(),
        "not a valid unit name".to_string(),
    ];
    let st = sd
        .unit_statuses(&names)
        .expect("statuses never fail for unknown units");
    assert_eq!(st.len(), 3);
    assert_eq!(st[0].name, missing);
    assert_eq!(
        (st[0].load_state.as_str(), st[0].active_state.as_str()),
        ("not-found", "inactive")
    );
    assert_eq!(
        (st[0].unit_file_state.as_str(), st[0].n_restarts),
        ("", None)
    );
    // a target has no Result and no NRestarts, but is loaded and active in a booted bed
    assert_eq!(states(&st[1]), ("loaded", "active", "active", "static"));
    assert_eq!((st[1].result.as_str(), st[1].n_restarts), ("", None));
    assert_eq!(
        (st[2].name.as_str(), st[2].load_state.as_str()),
        (names[2].as_str(), "not-found")
    );

    // a refused job does not spoil the batch; results stay in input order
    let batch = vec![
        (JobKind::Start, missing.clone()),
        (JobKind::Start, good.clone()),
        (JobKind::Restart, "not a valid unit name".to_string()),
    ];
    let res = sd.run_jobs(&batch, JOB_TIMEOUT).expect("run_jobs");
    assert!(
        matches!(&res[0].outcome, JobOutcome::Refused(m) if m.contains("not found")),
        "{:?}",
        res[0]
    );
    assert_eq!(res[1].outcome, JobOutcome::Done);
    assert!(
        matches!(res[2].outcome, JobOutcome::Refused(_)),
        "{:?}",
        res[2]
    );
    assert_eq!(sd.counts().jobs, 3);

    // enabling a file that does not exist is an error of the call
    assert!(sd.enable(std::slice::from_ref(&missing)).is_err());
    // empty lists make no call
    sd.enable(&[]).unwrap();
    sd.disable(&[]).unwrap();
    assert!(sd.run_jobs(&[], JOB_TIMEOUT).unwrap().is_empty());
    assert!(sd.unit_statuses(&[]).unwrap().is_empty());
    assert_eq!(
        sd.counts(),
        CallCounts {
            reloads: 0,
            jobs: 3,
            enablement_calls: 1
        }
    );
    cleanup(bed, &sd, &[good]);
}

#[test]
fn a_job_that_outlives_its_timeout_is_reported() {
    let Some(bed) = bed() else { return };
    let unit = format!("{}.service", prefix("slow"));
    bed.write_unit(&unit, &oneshot("/bin/sleep 30"));
    let sd = connect(bed);
    let units = vec![unit];
    let t0 = std::time::Instant::now();
    let res = sd
        .run_jobs(&jobs(JobKind::Start, &units), Duration::from_millis(300))
        .unwrap();
    assert_eq!(res[0].outcome, JobOutcome::WaitTimedOut);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let s = sd.unit_statuses(&units).unwrap().remove(0);
    assert_eq!(
        (s.active_state.as_str(), s.sub_state.as_str()),
        ("activating", "start")
    );
    // stopping cancels the start job and kills the process
    assert_eq!(outcomes(&sd, JobKind::Stop, &units), vec![JobOutcome::Done]);
    cleanup(bed, &sd, &units);
}

/// More jobs and property reads than the bus's 128 pending replies: all must succeed.
#[test]
fn many_units_stay_within_the_pending_reply_limit() {
    let Some(bed) = bed() else { return };
    let p = prefix("many");
    let units: Vec<String> = (0..150).map(|i| format!("{p}-{i:03}.service")).collect();
    for u in &units {
        bed.write_unit(u, &oneshot("/bin/true"));
    }
    let sd = connect(bed);
    sd.reload().unwrap();
    sd.enable(&units).unwrap();
    let out = outcomes(&sd, JobKind::Start, &units);
    assert!(out.iter().all(JobOutcome::is_success), "{out:?}");
    let st = sd.unit_statuses(&units).unwrap();
    for s in &st {
        assert_eq!(
            states(s),
            ("loaded", "active", "exited", "enabled"),
            "{s:?}"
        );
        assert_eq!(s.invocation_id.len(), 32);
    }
    assert_eq!(
        sd.counts(),
        CallCounts {
            reloads: 1,
            jobs: 150,
            enablement_calls: 1
        }
    );
    cleanup(bed, &sd, &units);
}

#[test]
fn manager_version_is_reported() {
    let Some(bed) = bed() else { return };
    let v = connect(bed).manager_version().expect("Version");
    assert!(v.starts_with(|c: char| c.is_ascii_digit()), "{v:?}");
}

/// A removed unit is stopped alone: what requires it (a target core-ops does not remove,
/// like `multi-user.target` for a unit `RequiredBy=` it) keeps running. A plain stop takes
/// the requiring unit down with it.
#[test]
fn stop_alone_leaves_what_requires_the_unit_running() {
    let Some(bed) = bed() else { return };
    let p = prefix("stopalone");
    let dep = format!("{p}-dep.service");
    let holder = format!("{p}-holder.target");
    bed.write_unit(&dep, &oneshot("/bin/true"));
    bed.write_unit(&holder, &format!("[Unit]\nRequires={dep}\nAfter={dep}\n"));
    let sd = connect(bed);
    sd.reload().unwrap();
    let units = vec![holder.clone(), dep.clone()];
    let active = |sd: &DbusSystemd| -> Vec<String> {
        sd.unit_statuses(&units)
            .unwrap()
            .into_iter()
            .map(|s| s.active_state)
            .collect()
    };
    assert_eq!(
        outcomes(&sd, JobKind::Start, std::slice::from_ref(&holder)),
        vec![JobOutcome::Done]
    );
    assert_eq!(active(&sd), vec!["active", "active"]);
    assert_eq!(
        outcomes(&sd, JobKind::StopAlone, std::slice::from_ref(&dep)),
        vec![JobOutcome::Done]
    );
    assert_eq!(active(&sd), vec!["active", "inactive"]);
    // the plain stop propagates to the unit that requires it
    assert_eq!(
        outcomes(&sd, JobKind::Start, std::slice::from_ref(&dep)),
        vec![JobOutcome::Done]
    );
    assert_eq!(
        outcomes(&sd, JobKind::Stop, std::slice::from_ref(&dep)),
        vec![JobOutcome::Done]
    );
    assert_eq!(active(&sd), vec!["inactive", "inactive"]);
    cleanup(bed, &sd, &units);
}
