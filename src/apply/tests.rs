//! Apply engine against the in-memory fake: phase order, one reload, outcomes. The same
//! behaviours run against the real systemd in `tests/apply_bed.rs`.

use crate::config::{Scratch, scratch};
use std::collections::BTreeMap;

use super::*;
use crate::pipeline::{ResolvedTarget, plan_desired};
use crate::render::render;
use crate::source::{RepoEntry, Revision};
use crate::systemd::fake::FakeSystemd;

fn desired(s: &Scratch, web_level: &str) -> crate::render::DesiredState {
    let etc = s.paths.host_file_roots[0].display().to_string();
    let files: BTreeMap<String, RepoEntry> = [
        ("hosts/h/host.yaml".to_string(), "services: [web, db]\n".to_string()),
        (
            "services/web/web.service".into(),
            "[Unit]\nAfter=db.service\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n".into(),
        ),
        (
            "services/web/web.service.d/10-level.conf".into(),
            format!("[Service]\nEnvironment=LEVEL={web_level}\n"),
        ),
        (format!("services/web/files{etc}/web.env"), "A=1\n".into()),
        (
            "services/db/db.service".into(),
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n".into(),
        ),
    ]
    .into_iter()
    .map(|(p, c)| (p, RepoEntry::File { data: c.into_bytes(), executable: false }))
    .collect();
    let rev = Revision {
        commit: web_level.repeat(40),
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

fn run(s: &Scratch, sd: &FakeSystemd, level: &str) -> ApplyResult {
    let planned = plan_desired(&s.paths, &target(), "repo", desired(s, level), sd).unwrap();
    apply(&planned, sd, &s.paths, &opts()).unwrap()
}

fn fake() -> FakeSystemd {
    let sd = FakeSystemd::new();
    sd.install_unit("web.service");
    sd.install_unit("db.service");
    sd
}

#[test]
fn fresh_apply_enables_then_reloads_once_then_starts_in_dependency_order() {
    let s = scratch();
    let sd = fake();
    let r = run(&s, &sd, "1");
    assert_eq!(r.outcome, Outcome::Converged, "{r:#?}");
    assert!(r.last_applied_advanced);
    assert_eq!(
        sd.mutating_calls(),
        vec![
            "enable db.service web.service",
            "reload",
            "start db.service",
            "start web.service"
        ]
    );
    assert_eq!(r.calls.reloads, 1);
    assert_eq!(r.calls.jobs, 2);
    let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["prepare", "write", "enable", "reload", "start", "verify"]
    );
    let st = status::load(&s.paths.state_file).unwrap();
    assert_eq!(st.last_applied.unwrap().revision, "1".repeat(40));
    assert_eq!(receipts::verify_chain(&s.paths.state_dir).unwrap(), 1);
    assert!(!journal::path(&s.paths.state_dir).exists());
}

#[test]
fn noop_apply_makes_no_mutating_call_and_no_receipt() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, "1");
    let before = sd.mutating_calls().len();
    let r = run(&s, &sd, "1");
    assert_eq!(r.outcome, Outcome::Converged);
    assert_eq!(r.changed_objects, 0);
    assert_eq!(sd.mutating_calls().len(), before);
    assert_eq!((r.calls.reloads, r.calls.jobs), (0, 0));
    assert!(r.receipt.is_none());
    assert!(!r.last_applied_advanced);
}

/// A new revision whose objects already match moves `last_applied`: that is a transition,
/// so it gets a receipt (one receipt per transition), though nothing on the host changes.
#[test]
fn new_revision_with_identical_content_is_a_receipted_transition() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, "1");
    let before = sd.mutating_calls().len();
    let mut same = desired(&s, "1");
    same.revision.commit = "3".repeat(40);
    let planned = plan_desired(&s.paths, &target(), "repo", same, &sd).unwrap();
    let r = apply(&planned, &sd, &s.paths, &opts()).unwrap();
    assert_eq!(r.changed_objects, 0);
    assert_eq!(sd.mutating_calls().len(), before);
    assert!(r.last_applied_advanced);
    assert!(r.receipt.is_some(), "a receipt for the transition");
    let file = s.paths.state_dir.join("receipts/00000002-reconcile.json");
    let receipt: receipts::ReconcileReceipt =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(receipt.transition, "applied");
    assert_eq!(
        receipt.from_revision.as_deref(),
        Some("1".repeat(40).as_str())
    );
    assert_eq!(receipt.to_revision, "3".repeat(40));
    assert_eq!(receipts::verify_chain(&s.paths.state_dir).unwrap(), 2);
}

#[test]
fn dropin_change_restarts_only_its_unit() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, "1");
    let before = sd.mutating_calls().len();
    let r = run(&s, &sd, "2");
    assert_eq!(r.outcome, Outcome::Converged, "{r:#?}");
    assert_eq!(
        sd.mutating_calls()[before..],
        ["reload", "restart web.service"]
    );
}

#[test]
fn formatting_drift_converges_with_tolerated_variance() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, "1");
    let p = s.paths.unit_dir.join("db.service");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        format!("# reformatted by hand\n\n{}", text.replace('=', " = ")),
    )
    .unwrap();
    let r = run(&s, &sd, "1");
    assert_eq!(r.outcome, Outcome::ConvergedWithToleratedVariance);
    assert_eq!(r.calls.jobs, 0);
}

#[test]
fn one_failing_unit_is_partially_applied_and_last_applied_stays() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, "1");
    sd.fail_on_start("web.service");
    // a new db revision would be fine; web's restart fails
    let r = run(&s, &sd, "2");
    // the drop-in was written (it converged), the restart of its unit failed
    assert_eq!(r.outcome, Outcome::PartiallyApplied, "{r:#?}");
    assert!(
        r.diagnostics
            .iter()
            .any(|d| d.unit.as_deref() == Some("web.service"))
    );
    assert!(!r.last_applied_advanced);
    let st = status::load(&s.paths.state_file).unwrap();
    assert_eq!(st.last_applied.unwrap().revision, "1".repeat(40));
    assert_eq!(st.last_run.unwrap().outcome, "partially_applied");
}

#[test]
fn blocked_plan_changes_nothing() {
    let s = scratch();
    let sd = fake();
    std::fs::create_dir_all(&s.paths.unit_dir).unwrap();
    std::fs::write(
        s.paths.unit_dir.join("db.service"),
        "[Service]\nExecStart=/bin/other\n",
    )
    .unwrap();
    let planned = plan_desired(&s.paths, &target(), "repo", desired(&s, "1"), &sd).unwrap();
    let err = apply(&planned, &sd, &s.paths, &opts()).unwrap_err();
    assert!(err.to_string().contains("blocked"), "{err}");
    assert!(sd.mutating_calls().is_empty());
    assert!(!s.paths.unit_dir.join("web.service").exists());
}

#[test]
fn automount_backed_mount_is_activated_through_its_automount() {
    let s = scratch();
    let sd = FakeSystemd::new();
    sd.install_unit("srv-nas.mount");
    sd.install_unit("srv-nas.automount");
    let files: BTreeMap<String, RepoEntry> = [
        ("hosts/h/host.yaml", "services: [nas]\n"),
        (
            "services/nas/srv-nas.mount",
            "[Mount]\nWhat=nas:/x\nWhere=/srv/nas\nType=nfs\n[X-CoreOps]\nCreateMountpoint=false\n",
        ),
        (
            "services/nas/srv-nas.automount",
            "[Automount]\nWhere=/srv/nas\n",
        ),
    ]
    .into_iter()
    .map(|(p, c)| {
        (
            p.to_string(),
            RepoEntry::File {
                data: c.as_bytes().to_vec(),
                executable: false,
            },
        )
    })
    .collect();
    let rev = Revision {
        commit: "a".repeat(40),
        requested_ref: "main".into(),
    };
    // /srv/nas does not exist here and CreateMountpoint=false: the plan is blocked
    let d = render(&files, &rev, "h", &s.paths).unwrap();
    let planned = plan_desired(&s.paths, &target(), "repo", d.clone(), &sd).unwrap();
    assert!(planned.plan.is_blocked());
    // with a mountpoint that exists, only the automount is started
    let mut files = files;
    let mp = s.paths.state_dir.parent().unwrap().join("nas");
    std::fs::create_dir_all(&mp).unwrap();
    let mount = format!("[Mount]\nWhat=nas:/x\nWhere={}\nType=nfs\n", mp.display());
    let stem = crate::render::mount::escape_path(&mp.display().to_string());
    files.retain(|p, _| !p.starts_with("services/nas/"));
    for (name, text) in [
        (format!("{stem}.mount"), mount),
        (
            format!("{stem}.automount"),
            format!("[Automount]\nWhere={}\n", mp.display()),
        ),
    ] {
        files.insert(
            format!("services/nas/{name}"),
            RepoEntry::File {
                data: text.into_bytes(),
                executable: false,
            },
        );
    }
    sd.install_unit(&format!("{stem}.mount"));
    sd.install_unit(&format!("{stem}.automount"));
    let d = render(&files, &rev, "h", &s.paths).unwrap();
    let planned = plan_desired(&s.paths, &target(), "repo", d, &sd).unwrap();
    let r = apply(&planned, &sd, &s.paths, &opts()).unwrap();
    let starts: Vec<String> = sd
        .mutating_calls()
        .into_iter()
        .filter(|c| c.starts_with("start "))
        .collect();
    assert_eq!(starts, vec![format!("start {stem}.automount")], "{r:#?}");
}

/// The desired state of `desired(s, "1")` plus extra repository files, at `commit`.
fn desired_plus(s: &Scratch, extra: &[(&str, &str)], commit: char) -> crate::render::DesiredState {
    let mut d = desired(s, "1");
    let mut files: BTreeMap<String, RepoEntry> = BTreeMap::new();
    for r in d.resources.values() {
        files.insert(
            r.layers[0].file.clone(),
            RepoEntry::File {
                data: r.content.clone(),
                executable: false,
            },
        );
    }
    files.insert(
        "hosts/h/host.yaml".into(),
        RepoEntry::File {
            data: b"services: [web, db]\n".to_vec(),
            executable: false,
        },
    );
    for (p, c) in extra {
        files.insert(
            p.to_string(),
            RepoEntry::File {
                data: c.as_bytes().to_vec(),
                executable: false,
            },
        );
    }
    d.revision.commit = commit.to_string().repeat(40);
    render(&files, &d.revision, "h", &s.paths).unwrap()
}

#[test]
fn what_a_failed_run_wrote_stays_owned_and_the_next_revision_removes_it() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, "1");
    sd.install_unit("bad.service");
    sd.fail_on_start("bad.service");
    let bad = "[Service]\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n";
    let etc = s.paths.host_file_roots[0].display().to_string();
    let conf = format!("services/db/files{etc}/bad.d/new/x.conf");
    let d2 = desired_plus(&s, &[("services/db/bad.service", bad), (&conf, "x\n")], 'b');
    let planned = plan_desired(&s.paths, &target(), "repo", d2, &sd).unwrap();
    let r = apply(&planned, &sd, &s.paths, &opts()).unwrap();
    assert!(!r.outcome.is_converged(), "{r:#?}");
    let unit_path = s.paths.unit_dir.join("bad.service");
    let conf_path = std::path::PathBuf::from(format!("{etc}/bad.d/new/x.conf"));
    assert!(unit_path.exists() && conf_path.exists());
    let (ledger, _) = ledger::load(&s.paths.state_dir, None);
    assert!(ledger.objects.contains_key("unit:bad.service"));
    assert!(
        ledger
            .dirs
            .contains(&std::path::PathBuf::from(format!("{etc}/bad.d")))
    );

    // revision 1 again (what an automatic rollback plans): the failed revision's objects go,
    // with the directories core-ops created for them, and nothing else
    let planned = plan_desired(&s.paths, &target(), "repo", desired(&s, "1"), &sd).unwrap();
    let a = planned
        .plan
        .actions
        .iter()
        .find(|a| a.id == "unit:bad.service")
        .unwrap();
    assert_eq!(a.action, Action::Delete);
    let r = apply(&planned, &sd, &s.paths, &opts()).unwrap();
    assert!(r.outcome.is_converged(), "{r:#?}");
    assert!(!unit_path.exists() && !conf_path.exists());
    assert!(!std::path::Path::new(&format!("{etc}/bad.d")).exists());
    assert!(std::path::Path::new(&etc).is_dir());
    let (ledger, _) = ledger::load(&s.paths.state_dir, None);
    assert!(!ledger.objects.contains_key("unit:bad.service"));
    // only what core-ops created beneath the configured roots is its to remove
    assert_eq!(
        ledger.dirs,
        [s.paths.unit_dir.join("web.service.d")].into(),
        "{:?}",
        ledger.dirs
    );
}

#[test]
fn a_template_is_written_but_only_its_instances_are_enabled_and_started() {
    let s = scratch();
    let sd = fake();
    sd.install_unit("worker@a.service");
    sd.install_unit("worker@b.service");
    let tpl = "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n";
    let d = desired_plus(
        &s,
        &[
            ("services/db/worker@.service", tpl),
            (
                "services/db/service.yaml",
                "units:\n  worker@.service:\n    instances: [a, b]\n",
            ),
        ],
        'c',
    );
    let planned = plan_desired(&s.paths, &target(), "repo", d, &sd).unwrap();
    let r = apply(&planned, &sd, &s.paths, &opts()).unwrap();
    assert_eq!(r.outcome, Outcome::Converged, "{r:#?}");
    assert!(s.paths.unit_dir.join("worker@.service").exists());
    let calls = sd.mutating_calls();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("enable") && c.contains("worker@a.service worker@b.service")),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"start worker@a.service".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("worker@.service")),
        "{calls:?}"
    );
}

/// Every file and directory under `dir` with its permission bits, relative.
fn modes_under(dir: &std::path::Path) -> Vec<(String, u32, bool)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if md.is_dir() {
                stack.push(e.path());
            }
            if !md.file_type().is_symlink() {
                out.push((rel, md.mode() & 0o7777, md.is_dir()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn state_dir_is_0700_and_its_files_0600_even_with_umask_0() {
    use nix::sys::stat::{Mode, umask};
    use std::os::unix::fs::PermissionsExt;
    let s = scratch();
    // an existing state dir with loose modes is tightened at lock time
    std::fs::create_dir_all(&s.paths.state_dir).unwrap();
    std::fs::set_permissions(&s.paths.state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let old = umask(Mode::empty());
    let result = std::panic::catch_unwind(|| {
        let _lock = crate::lock::StateLock::acquire(&s.paths.state_dir).unwrap();
        let sd = fake();
        assert_eq!(run(&s, &sd, "1").outcome, Outcome::Converged);
        assert_eq!(run(&s, &sd, "2").outcome, Outcome::Converged);
        crate::record::target::save(&s.paths.target_file(), "repo", "main").unwrap();
    });
    umask(old);
    result.unwrap();
    let md = std::fs::metadata(&s.paths.state_dir).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o700);
    let modes = modes_under(&s.paths.state_dir);
    for want in [
        "lock",
        "status.json",
        "ledger.json",
        "target.json",
        "receipts",
    ] {
        assert!(
            modes
                .iter()
                .any(|(p, _, _)| p == want || p.starts_with(&format!("{want}/"))),
            "{want} not written: {modes:?}"
        );
    }
    for (path, mode, dir) in &modes {
        let expected = if *dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, expected, "{path} is {mode:04o}: {modes:?}");
    }
}
