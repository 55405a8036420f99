//! Apply engine against the in-memory fake: phase order, one reload, outcomes. The same
//! behaviours run against the real systemd in `tests/apply_bed.rs`.

use crate::config::{Scratch, scratch};
use std::collections::BTreeMap;

use super::*;
use crate::pipeline::{ResolvedTarget, plan_desired};
use crate::record::{journal, ledger, status};
use crate::render::render;
use crate::source::{RepoEntry, Revision};
use crate::systemd::fake::FakeSystemd;
use std::path::PathBuf;
use std::time::Instant;

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

#[test]
fn a_run_that_changed_the_host_but_could_not_record_exits_3_and_the_next_run_receipts_it_once() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, "1");
    // the results directory is in the way: status is written, then recording fails
    let receipts_dir = s.paths.state_dir.join("receipts");
    let results_dir = s.paths.state_dir.join("results");
    let kept = s.paths.state_dir.join("results-kept");
    std::fs::rename(&results_dir, &kept).unwrap();
    std::fs::write(&results_dir, b"in the way").unwrap();
    let planned = plan_desired(&s.paths, &target(), "repo", desired(&s, "2"), &sd).unwrap();
    let err = apply(&planned, &sd, &s.paths, &opts()).unwrap_err();
    assert!(matches!(err, Error::HostChanged(_)), "{err}");
    assert_eq!(
        crate::cli::exit_for(&err),
        crate::cli::ExitStatus::NotConverged
    );
    let j = journal::load(&s.paths.state_dir)
        .unwrap()
        .expect("journal kept");
    assert_eq!(j.from_revision.as_deref(), Some("1".repeat(40).as_str()));

    std::fs::remove_file(&results_dir).unwrap();
    std::fs::rename(&kept, &results_dir).unwrap();
    let r = run(&s, &sd, "2");
    assert!(r.outcome.is_converged(), "{r:#?}");
    assert_eq!(receipts::verify_chain(&s.paths.state_dir).unwrap(), 2);
    let receipt: receipts::ReconcileReceipt = serde_json::from_slice(
        &std::fs::read(receipts_dir.join("00000002-reconcile.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        receipt.from_revision.as_deref(),
        Some("1".repeat(40).as_str())
    );
    assert_eq!(receipt.to_revision, "2".repeat(40));
    assert!(
        receipt
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("completes the run of plan")),
        "{receipt:?}"
    );
    assert!(!journal::path(&s.paths.state_dir).exists());
}

/// Every file under the scratch root with its bytes: "nothing changed" means this is equal.
fn tree(root: &std::path::Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// A broken receipt chain refuses the appending run before the host is touched: no systemd
/// call, no file written (units, host files, ledger, status, receipts, results).
#[test]
fn a_broken_receipt_chain_refuses_the_run_and_changes_nothing() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, "1");
    run(&s, &sd, "2");
    let first = s.paths.state_dir.join("receipts/00000001-reconcile.json");
    let edited = std::fs::read_to_string(&first)
        .unwrap()
        .replace("converged", "failed");
    std::fs::write(&first, edited).unwrap();
    let before = tree(s.dir.path());
    let calls = sd.mutating_calls();
    let planned = plan_desired(&s.paths, &target(), "repo", desired(&s, "3"), &sd).unwrap();
    assert!(planned.plan.has_changes());
    let err = apply(&planned, &sd, &s.paths, &opts()).unwrap_err();
    assert!(matches!(err, Error::ReceiptChain(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("00000002-reconcile.json"), "{msg}");
    assert!(msg.contains("nothing was changed"), "{msg}");
    assert_eq!(sd.mutating_calls(), calls, "no systemd call");
    assert_eq!(tree(s.dir.path()), before, "no file changed");
}

/// Retention: results documents and history keep the newest N; receipts are sealed into
/// archives and the whole chain still verifies.
#[test]
fn retention_keeps_the_newest_results_and_history_and_seals_receipts() {
    let s = scratch();
    let sd = fake();
    let keep = ApplyOptions {
        retention: crate::record::retention::Retention {
            keep: 2,
            receipts_per_archive: 2,
        },
        ..opts()
    };
    for level in ["1", "2", "3", "4", "5"] {
        let planned = plan_desired(&s.paths, &target(), "repo", desired(&s, level), &sd).unwrap();
        let r = apply(&planned, &sd, &s.paths, &keep).unwrap();
        assert!(r.outcome.is_converged());
    }
    let results: Vec<_> = std::fs::read_dir(s.paths.state_dir.join("results"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(results.len(), 2);
    let st = status::load(&s.paths.state_file).unwrap();
    let hist: Vec<&str> = st.history.iter().map(|h| &h.revision[..1]).collect();
    assert_eq!(hist, ["4", "5"]);
    let health = st.receipts.unwrap();
    assert!(health.ok);
    assert_eq!(health.head_sequence, Some(5));
    assert_eq!(receipts::list(&s.paths.state_dir).unwrap().len(), 1);
    assert_eq!(receipts::verify_chain(&s.paths.state_dir).unwrap(), 5);
}

/// State-dir growth per transition, measured (run with
/// `cargo test --lib measure_state_dir_growth -- --ignored --nocapture`): bytes of one
/// reconcile receipt, one results document, status.json, and the time to verify a chain of
/// 1000 archived + 1000 live receipts.
#[test]
#[ignore]
fn measure_state_dir_growth_per_transition() {
    let s = scratch();
    let sd = fake();
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut status_sizes = Vec::new();
    let mut receipt_sizes = Vec::new();
    let mut result_sizes = Vec::new();
    for i in 0..20 {
        let level = if i % 2 == 0 { "1" } else { "2" };
        let mut d = desired(&s, level);
        d.revision.commit = format!("{:040x}", i + 1);
        let planned = plan_desired(&s.paths, &target(), "repo", d, &sd).unwrap();
        let r = apply(&planned, &sd, &s.paths, &opts()).unwrap();
        result_sizes.push(size(std::path::Path::new(
            r.results_path.as_deref().unwrap(),
        )));
        receipt_sizes.push(size(
            receipts::list(&s.paths.state_dir).unwrap().last().unwrap(),
        ));
        status_sizes.push(size(&s.paths.state_file));
    }
    let status_growth = (status_sizes[19] - status_sizes[9]) as f64 / 10.0;
    println!(
        "per transition: receipt {} bytes, results document {}-{} bytes, status.json {} -> {} bytes (+{status_growth:.0} bytes per transition until history reaches its limit)",
        receipt_sizes[19],
        result_sizes.iter().min().unwrap(),
        result_sizes.iter().max().unwrap(),
        status_sizes[0],
        status_sizes[19],
    );
    // a long chain: 2000 receipts, 1000 sealed
    let d = tempfile::tempdir().unwrap();
    for _ in 0..2001 {
        receipts::append(d.path(), receipts::sample_receipt("h")).unwrap();
    }
    let t = Instant::now();
    let r = receipts::verify(d.path(), receipts::Depth::Run).unwrap();
    println!("verify (run) of 2001 live receipts: {:?}", t.elapsed());
    assert!(r.ok);
    let t = Instant::now();
    crate::record::archive::rotate(d.path(), 1000).unwrap();
    println!("sealing 2 archives of 1000: {:?}", t.elapsed());
    let dir = crate::record::archive::archive_dir(d.path());
    let a = size(&dir.join("00000001-00001000.jsonl"));
    let m = size(&dir.join("00000001-00001000.manifest.json"));
    let live: u64 = receipts::list(d.path())
        .unwrap()
        .iter()
        .map(|p| size(p))
        .sum();
    println!(
        "archive of 1000: {a} bytes ({} per receipt) + manifest {m} bytes; live receipt {live} bytes",
        a / 1000
    );
    for depth in [receipts::Depth::Run, receipts::Depth::Full] {
        let t = Instant::now();
        let r = receipts::verify(d.path(), depth).unwrap();
        assert!(r.ok && r.receipts == 2001);
        println!(
            "verify ({depth:?}) of 2000 archived + 1 live: {:?}",
            t.elapsed()
        );
    }
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

#[test]
fn only_a_change_of_ownership_must_be_claimed_before_the_write() {
    let s = scratch();
    let sd = fake();
    run(&s, &sd, "1");
    let (mut owned, _) = ledger::load(&s.paths.state_dir, None);
    let was = owned.clone();
    // a new value of an owned drop-in: its digest moves, what core-ops owns does not
    let d2 = desired(&s, "2");
    let dropin = d2
        .resources
        .values()
        .find(|r| r.kind == crate::model::normalize::Kind::Dropin)
        .unwrap();
    assert!(!ownership::claim(&mut owned, &[dropin], &[], &d2, &s.paths));
    assert_eq!(owned.objects[&dropin.id].digest, dropin.digest);
    assert_ne!(
        owned.objects[&dropin.id].digest,
        was.objects[&dropin.id].digest
    );
    assert_eq!(owned.dirs, was.dirs);
    // an object core-ops does not own yet must be on disk before it is written
    let d3 = desired_plus(
        &s,
        &[(
            "services/web/extra.service",
            "[Service]\nExecStart=/bin/true\n",
        )],
        '3',
    );
    let extra = &d3.resources["unit:extra.service"];
    assert!(ownership::claim(&mut owned, &[extra], &[], &d3, &s.paths));
    // and the run writes it there: after a change of the owned drop-in alone the ledger on
    // disk has the new digest all the same (written at the end)
    run(&s, &sd, "2");
    let (after, _) = ledger::load(&s.paths.state_dir, None);
    assert_eq!(after.objects[&dropin.id].digest, dropin.digest);
}
