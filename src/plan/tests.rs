//! Planner behaviour on a scratch root: each cause, ordering, determinism.

use super::*;
use crate::config::{Scratch, scratch};
use crate::observe::observe_files;
use crate::record::status::last_applied_from;
use crate::render::render;
use crate::source::{RepoEntry, Revision};
use proptest::prelude::*;

fn rev(c: char) -> Revision {
    Revision {
        commit: std::iter::repeat_n(c, 40).collect(),
        requested_ref: "main".into(),
    }
}

const WEB: &str = "[Unit]\nDescription=web\nAfter=db.service\nRequiresMountsFor=/srv/data\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n";
const DB: &str =
    "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n";
const MOUNT: &str = "[Mount]\nWhat=tmpfs\nWhere=/srv/data\nType=tmpfs\n";

fn files(s: &Scratch, extra: &[(&str, &str)]) -> BTreeMap<String, RepoEntry> {
    let etc = s.paths.host_file_roots[0].display().to_string();
    let mut v: Vec<(String, String)> = vec![
        (
            "hosts/h/host.yaml".into(),
            "services: [web, db, data]\n".into(),
        ),
        ("services/web/web.service".into(), WEB.into()),
        (
            "services/web/web.service.d/10-env.conf".into(),
            "[Service]\nEnvironment=A=1\n".into(),
        ),
        (
            format!("services/web/files{etc}/web/app.env"),
            "A=1\n".into(),
        ),
        ("services/db/db.service".into(), DB.into()),
        ("services/data/srv-data.mount".into(), MOUNT.into()),
    ];
    for (p, c) in extra {
        let p = p.replace("{etc}", &etc);
        v.retain(|(q, _)| *q != p);
        v.push((p, c.to_string()));
    }
    v.into_iter()
        .map(|(p, c)| {
            (
                p,
                RepoEntry::File {
                    data: c.into_bytes(),
                    executable: false,
                },
            )
        })
        .collect()
}

fn desired(s: &Scratch, f: &BTreeMap<String, RepoEntry>, c: char) -> DesiredState {
    render(f, &rev(c), "h", &s.paths).unwrap()
}

fn do_plan(s: &Scratch, d: &DesiredState, last: Option<&LastApplied>) -> Plan {
    let owned = crate::record::ledger::Ledger::seeded(last).objects;
    plan_owned(s, d, last, &owned, &BTreeSet::new())
}

/// Write the desired state to the scratch root as apply would, and return last_applied.
fn converge(d: &DesiredState) -> LastApplied {
    for r in d.resources.values() {
        crate::fsutil::write_atomic(&r.path, &r.content, Some(&r.meta)).unwrap();
    }
    last_applied_from(d, "2026-01-01T00:00:00Z")
}

fn action<'a>(p: &'a Plan, id: &str) -> &'a PlannedAction {
    p.actions
        .iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("no action for {id}"))
}

fn pos(p: &Plan, id: &str) -> usize {
    action(p, id).order
}

#[test]
fn fresh_host_creates_everything_in_dependency_order() {
    let s = scratch();
    let d = desired(&s, &files(&s, &[]), 'a');
    let p = do_plan(&s, &d, None);
    assert!(
        p.actions.iter().all(|a| a.action == Action::Create),
        "{p:#?}"
    );
    assert!(pos(&p, "unit:db.service") < pos(&p, "unit:web.service"));
    assert!(pos(&p, "mount:srv-data.mount") < pos(&p, "unit:web.service"));
    assert!(pos(&p, "dropin:web.service.d/10-env.conf") < pos(&p, "unit:web.service"));
    let file_id = format!("file:{}/web/app.env", s.paths.host_file_roots[0].display());
    assert!(pos(&p, &file_id) < pos(&p, "unit:web.service"));
    assert_eq!(
        action(&p, "unit:web.service").depends_on,
        vec![
            "dropin:web.service.d/10-env.conf".to_string(),
            file_id,
            "mount:srv-data.mount".to_string(),
            "unit:db.service".to_string()
        ]
    );
    assert_eq!(p.summary.get("create"), Some(&5));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.starts_with("unit state unknown"))
    );
    assert_eq!(p.checksum, checksum(&p));
}

#[test]
fn converged_host_is_all_no_op() {
    let s = scratch();
    let d = desired(&s, &files(&s, &[]), 'a');
    let last = converge(&d);
    let p = do_plan(&s, &d, Some(&last));
    assert!(!p.has_changes(), "{p:#?}");
    assert!(p.findings.is_empty());
    assert_eq!(
        p.base.last_applied_revision.as_deref(),
        Some(&*"a".repeat(40))
    );
}

#[test]
fn formatting_only_difference_is_runtime_variance_not_a_change() {
    let s = scratch();
    let d = desired(&s, &files(&s, &[]), 'a');
    let last = converge(&d);
    let web = &d.resources["unit:web.service"].path;
    let reformatted = format!(
        "# edited by hand, same meaning\n{}",
        WEB.replace("=", " = ")
    );
    std::fs::write(web, reformatted).unwrap();
    let p = do_plan(&s, &d, Some(&last));
    let a = action(&p, "unit:web.service");
    assert_eq!((a.action, a.cause), (Action::NoOp, Cause::RuntimeVariance));
    assert_eq!(p.findings.len(), 1);
    assert_eq!(p.findings[0].kind, "runtime_variance");
    assert!(!p.has_changes());
}

#[test]
fn hand_edit_is_drift_and_repaired() {
    let s = scratch();
    let d = desired(&s, &files(&s, &[]), 'a');
    let last = converge(&d);
    std::fs::write(
        &d.resources["unit:db.service"].path,
        "[Service]\nExecStart=/bin/false\n",
    )
    .unwrap();
    let p = do_plan(&s, &d, Some(&last));
    let a = action(&p, "unit:db.service");
    assert_eq!((a.action, a.cause), (Action::Update, Cause::Drift));
    assert!(
        p.findings
            .iter()
            .any(|f| f.kind == "drift" && f.id == "unit:db.service")
    );
}

/// A secret (`files/...age`) and the plan of it after a converge: its digests are keyed.
fn secret_world(s: &Scratch) -> (BTreeMap<String, RepoEntry>, String) {
    let (text, public) = crate::render::secrets::generate_identity();
    std::fs::write(&s.paths.age_identity, text).unwrap();
    std::fs::set_permissions(
        &s.paths.age_identity,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let sealed = crate::render::secrets::encrypt(&[public], b"pw=1\n").unwrap();
    let mut f = files(s, &[]);
    let etc = s.paths.host_file_roots[0].display().to_string();
    f.insert(
        format!("services/web/files{etc}/web/db.pw.age"),
        RepoEntry::File {
            data: sealed,
            executable: false,
        },
    );
    (f, format!("file:{etc}/web/db.pw"))
}

fn plan_expecting(s: &Scratch, d: &DesiredState, last: Option<&LastApplied>) -> Plan {
    let owned = crate::record::ledger::Ledger::seeded(last).objects;
    let observed =
        crate::observe::observe_files_expecting(&managed_paths(d, &owned), &s.paths, Some(d), None);
    plan_observed(d, last, &owned, &BTreeSet::new(), &observed)
}

#[test]
fn a_secret_is_compared_by_keyed_digests_and_shown_by_its_ciphertext() {
    let s = scratch();
    let (f, id) = secret_world(&s);
    let d = desired(&s, &f, 'a');
    let r = &d.resources[&id];
    assert_eq!(r.content, b"pw=1\n");
    assert_eq!(r.meta.mode, 0o600);
    assert!(!format!("{r:?}").contains("pw=1"));
    let last = converge(&d);
    assert!(last.resources[&id].secret);
    let p = plan_expecting(&s, &d, Some(&last));
    let a = action(&p, &id);
    assert_eq!((a.action, a.cause), (Action::NoOp, Cause::Unchanged));
    assert!(
        a.digests
            .desired
            .as_deref()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    assert_eq!(a.digests.desired, a.digests.observed);
    let shown = a.secret.as_ref().unwrap();
    assert!(shown.source.ends_with("db.pw.age"));
    assert!(shown.ciphertext_digest.starts_with("sha256:"));
    // a hand edit is drift, compared through the decrypted bytes
    std::fs::write(&r.path, "pw=2\n").unwrap();
    let p = plan_expecting(&s, &d, Some(&last));
    assert_eq!(
        (action(&p, &id).action, action(&p, &id).cause),
        (Action::Update, Cause::Drift)
    );
    // removed from the desired state: deleted, and the observed side is not a digest
    let mut f2 = f.clone();
    f2.retain(|p, _| !p.ends_with(".age"));
    let p = plan_expecting(&s, &desired(&s, &f2, 'b'), Some(&last));
    let a = action(&p, &id);
    assert_eq!(a.action, Action::Delete);
    assert_eq!(a.digests.observed.as_deref(), Some("(secret)"));
    let json = String::from_utf8(to_json_bytes(&p)).unwrap();
    assert!(!json.contains(&crate::model::normalize::sha256_hex(b"pw=2\n")[7..]));
}

#[test]
fn a_secret_this_host_cannot_decrypt_is_blocked_with_the_reason() {
    let s = scratch();
    let (f, id) = secret_world(&s);
    std::fs::remove_file(&s.paths.age_identity).unwrap();
    let d = desired(&s, &f, 'a');
    let p = plan_expecting(&s, &d, None);
    let a = action(&p, &id);
    assert_eq!(
        (a.action, a.cause),
        (Action::Blocked, Cause::MissingPrerequisite)
    );
    assert!(a.reason.contains("no age identity"), "{}", a.reason);
    // the rest of the host is planned as usual
    assert_eq!(action(&p, "unit:db.service").action, Action::Create);
    // a plain file and an encrypted one for the same path is an input error
    let etc = s.paths.host_file_roots[0].display().to_string();
    let mut both = f.clone();
    both.insert(
        format!("services/web/files{etc}/web/db.pw"),
        RepoEntry::File {
            data: b"plain".to_vec(),
            executable: false,
        },
    );
    let e = render(&both, &rev('a'), "h", &s.paths).unwrap_err();
    assert!(e.to_string().contains("both write host file"), "{e}");
}

#[test]
fn host_file_behind_a_symlinked_parent_is_blocked_not_read_through() {
    let s = scratch();
    let etc = &s.paths.host_file_roots[0];
    let victim = s.dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::create_dir_all(etc).unwrap();
    // the victim holds exactly the desired content: read through the link it would look
    // converged
    std::fs::write(victim.join("app.env"), "A=1\n").unwrap();
    std::os::unix::fs::symlink(&victim, etc.join("web")).unwrap();
    let d = desired(&s, &files(&s, &[]), 'a');
    let p = do_plan(&s, &d, None);
    let a = action(&p, &format!("file:{}/web/app.env", etc.display()));
    assert_eq!(a.action, Action::Blocked, "{a:#?}");
    assert!(
        a.reason.contains(&format!(
            "component {}/web is a symlink; core-ops does not follow symlinks beneath {}",
            etc.display(),
            etc.display()
        )),
        "{}",
        a.reason
    );
}

#[test]
fn mode_change_on_host_file_is_drift() {
    use std::os::unix::fs::PermissionsExt;
    let s = scratch();
    let d = desired(&s, &files(&s, &[]), 'a');
    let last = converge(&d);
    let id = format!("file:{}/web/app.env", s.paths.host_file_roots[0].display());
    std::fs::set_permissions(
        &d.resources[&id].path,
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let p = do_plan(&s, &d, Some(&last));
    let a = action(&p, &id);
    assert_eq!((a.action, a.cause), (Action::Update, Cause::Drift));
    assert!(a.reason.contains("mode/owner differ"), "{}", a.reason);
    // the file restarts web.service
    let w = action(&p, "unit:web.service");
    assert_eq!(
        (w.action, w.cause),
        (Action::Restart, Cause::DependencyChange)
    );
}

#[test]
fn changed_dropin_updates_it_and_restarts_its_unit() {
    let s = scratch();
    let d1 = desired(&s, &files(&s, &[]), 'a');
    let last = converge(&d1);
    let d2 = desired(
        &s,
        &files(
            &s,
            &[(
                "services/web/web.service.d/10-env.conf",
                "[Service]\nEnvironment=A=2\n",
            )],
        ),
        'b',
    );
    let p = do_plan(&s, &d2, Some(&last));
    let dropin = action(&p, "dropin:web.service.d/10-env.conf");
    assert_eq!(
        (dropin.action, dropin.cause),
        (Action::Update, Cause::DesiredChange)
    );
    let web = action(&p, "unit:web.service");
    assert_eq!(
        (web.action, web.cause),
        (Action::Restart, Cause::DependencyChange)
    );
    assert_eq!(action(&p, "unit:db.service").action, Action::NoOp);
    // the restart comes after the change that causes it
    assert!(pos(&p, "dropin:web.service.d/10-env.conf") < pos(&p, "unit:web.service"));
}

#[test]
fn removed_objects_are_deleted_in_reverse_dependency_order() {
    let s = scratch();
    let d1 = desired(&s, &files(&s, &[]), 'a');
    let last = converge(&d1);
    let mut f2 = files(&s, &[("hosts/h/host.yaml", "services: [db]\n")]);
    f2.retain(|p, _| !p.starts_with("services/web/") && !p.starts_with("services/data/"));
    let d2 = desired(&s, &f2, 'b');
    let p = do_plan(&s, &d2, Some(&last));
    for id in [
        "unit:web.service",
        "mount:srv-data.mount",
        "dropin:web.service.d/10-env.conf",
    ] {
        assert_eq!(action(&p, id).action, Action::Delete, "{id}");
    }
    // the service that needs the mount goes first, its drop-in after it, the mount last
    assert!(pos(&p, "unit:web.service") < pos(&p, "dropin:web.service.d/10-env.conf"));
    assert!(pos(&p, "unit:web.service") < pos(&p, "mount:srv-data.mount"));
    assert_eq!(action(&p, "unit:db.service").action, Action::NoOp);
    assert!(pos(&p, "unit:db.service") < pos(&p, "unit:web.service"));
}

#[test]
fn unmanaged_file_in_the_way_blocks() {
    let s = scratch();
    let d = desired(&s, &files(&s, &[]), 'a');
    let path = &d.resources["unit:db.service"].path;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "[Service]\nExecStart=/bin/other\n").unwrap();
    let p = do_plan(&s, &d, None);
    let a = action(&p, "unit:db.service");
    assert_eq!(
        (a.action, a.cause),
        (Action::Blocked, Cause::UnmanagedConflict)
    );
    assert!(p.is_blocked());
}

#[test]
fn a_quadlet_file_the_generator_rejects_blocks_even_when_unchanged() {
    let s = scratch();
    let f = files(
        &s,
        &[
            ("hosts/h/host.yaml", "services: [web, db, data, app]\n"),
            (
                "services/app/app.container",
                "[Container]\nExec=/bin/true\n",
            ),
        ],
    );
    let d = desired(&s, &f, 'a');
    let last = converge(&d);
    let owned = crate::record::ledger::Ledger::seeded(Some(&last)).objects;
    let observed = observe_files(&managed_paths(&d, &owned), &s.paths);
    let msg = "converting \"app.container\": no Image or Rootfs key specified";
    let p = plan(PlanInput {
        desired: &d,
        repo: "repo",
        last_applied: Some(&last),
        owned: &owned,
        adopt: &BTreeSet::new(),
        observed: &observed,
        units: &UnitObservation::Unknown {
            reason: "test".into(),
        },
        warnings: vec![],
        interrupted: BTreeSet::new(),
        invalid_quadlet: BTreeMap::from([("quadlet:app.container".to_string(), msg.to_string())]),
        foreign_dropins: BTreeMap::new(),
        invalid_units: BTreeMap::new(),
        findings: Vec::new(),
    });
    let a = action(&p, "quadlet:app.container");
    assert_eq!(
        (a.action, a.cause),
        (Action::Blocked, Cause::InvalidQuadlet)
    );
    assert!(a.reason.ends_with(msg), "{}", a.reason);
    assert_eq!(a.unit.as_deref(), Some("app.service"));
    assert!(p.is_blocked());
    assert_eq!(p.summary.get("blocked"), Some(&1));
}

#[test]
fn plan_json_is_byte_identical_and_checksum_verifies() {
    let s = scratch();
    let d = desired(&s, &files(&s, &[]), 'a');
    let a = to_json_bytes(&do_plan(&s, &d, None));
    let b = to_json_bytes(&do_plan(&s, &d, None));
    assert_eq!(a, b);
    let parsed = from_json_bytes(&a, "plan.json").unwrap();
    assert_eq!(to_json_bytes(&parsed), a);
    let tampered = String::from_utf8(a)
        .unwrap()
        .replacen("\"create\"", "\"delete\"", 1);
    let err = from_json_bytes(tampered.as_bytes(), "plan.json").unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn drift_report_policy_reports_without_repairing() {
    let s = scratch();
    let f = files(
        &s,
        &[(
            "services/db/service.yaml",
            "units:\n  db.service:\n    drift: report\n",
        )],
    );
    let d = desired(&s, &f, 'a');
    let last = converge(&d);
    std::fs::write(
        &d.resources["unit:db.service"].path,
        "[Service]\nExecStart=/bin/x\n",
    )
    .unwrap();
    let p = do_plan(&s, &d, Some(&last));
    let a = action(&p, "unit:db.service");
    assert_eq!((a.action, a.cause), (Action::NoOp, Cause::Drift));
    assert!(a.reason.starts_with("drift reported only"), "{}", a.reason);
    assert!(
        p.findings
            .iter()
            .any(|f| f.kind == "drift" && f.id == "unit:db.service")
    );
    assert!(!p.has_changes());
}

#[test]
fn missing_mountpoint_with_create_mountpoint_false_blocks() {
    let s = scratch();
    let f = files(
        &s,
        &[(
            "services/data/srv-data.mount",
            "[Mount]\nWhat=tmpfs\nWhere=/srv/data\nType=tmpfs\n[X-CoreOps]\nCreateMountpoint=false\n",
        )],
    );
    let d = desired(&s, &f, 'a');
    let p = do_plan(&s, &d, None);
    let a = action(&p, "mount:srv-data.mount");
    assert_eq!(
        (a.action, a.cause),
        (Action::Blocked, Cause::MissingPrerequisite)
    );
    assert_eq!(
        a.reason,
        "mountpoint missing and CreateMountpoint=false: /srv/data"
    );
}

fn plan_owned(
    s: &Scratch,
    d: &DesiredState,
    last: Option<&LastApplied>,
    owned: &BTreeMap<String, AppliedResource>,
    adopt: &BTreeSet<PathBuf>,
) -> Plan {
    let observed = observe_files(&managed_paths(d, owned), &s.paths);
    plan_observed(d, last, owned, adopt, &observed)
}

fn plan_observed(
    d: &DesiredState,
    last: Option<&LastApplied>,
    owned: &BTreeMap<String, AppliedResource>,
    adopt: &BTreeSet<PathBuf>,
    observed: &BTreeMap<String, crate::observe::ObservedFile>,
) -> Plan {
    plan(PlanInput {
        desired: d,
        repo: "repo",
        last_applied: last,
        owned,
        adopt,
        observed,
        units: &UnitObservation::Unknown {
            reason: "test".into(),
        },
        warnings: vec![],
        interrupted: BTreeSet::new(),
        invalid_quadlet: BTreeMap::new(),
        foreign_dropins: BTreeMap::new(),
        invalid_units: BTreeMap::new(),
        findings: Vec::new(),
    })
}

#[test]
fn objects_of_a_failed_run_stay_owned_so_the_fix_updates_and_a_rollback_removes_them() {
    let s = scratch();
    let d1 = desired(&s, &files(&s, &[]), 'a');
    let last = converge(&d1);
    // revision b adds a unit; its run writes it (claimed in the ledger) and fails to converge
    let broken = "[Service]\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n";
    let d2 = desired(&s, &files(&s, &[("services/db/new.service", broken)]), 'b');
    let mut ledger = crate::record::ledger::Ledger::seeded(Some(&last));
    let new = &d2.resources["unit:new.service"];
    crate::fsutil::write_atomic(&new.path, &new.content, Some(&new.meta)).unwrap();
    ledger.claim(
        "unit:new.service",
        crate::record::status::applied_record(new, &BTreeMap::new()),
        &[],
    );
    // the fix commit c changes it: an update, not an unmanaged conflict
    let fixed = "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n";
    let d3 = desired(&s, &files(&s, &[("services/db/new.service", fixed)]), 'c');
    let p = plan_owned(&s, &d3, Some(&last), &ledger.objects, &BTreeSet::new());
    let a = action(&p, "unit:new.service");
    assert_eq!(
        (a.action, a.cause),
        (Action::Update, Cause::DesiredChange),
        "{a:?}"
    );
    assert!(!p.is_blocked());
    // a rollback to revision a removes it
    let p = plan_owned(&s, &d1, Some(&last), &ledger.objects, &BTreeSet::new());
    let a = action(&p, "unit:new.service");
    assert_eq!(a.action, Action::Delete, "{a:?}");
    // without the ledger (ownership decided by convergence) it would be a conflict
    let p = do_plan(&s, &d3, Some(&last));
    assert_eq!(action(&p, "unit:new.service").action, Action::Blocked);
}

#[test]
fn pre_existing_files_are_adopted_only_when_asked() {
    let s = scratch();
    let d = desired(&s, &files(&s, &[]), 'a');
    let db = &d.resources["unit:db.service"];
    // an identical file that core-ops did not write: left alone, never owned
    crate::fsutil::write_atomic(&db.path, &db.content, Some(&db.meta)).unwrap();
    let web = &d.resources["unit:web.service"];
    crate::fsutil::write_atomic(&web.path, b"[Service]\nExecStart=/bin/old\n", None).unwrap();
    let none = BTreeMap::new();
    let p = plan_owned(&s, &d, None, &none, &BTreeSet::new());
    let a = action(&p, "unit:db.service");
    assert_eq!(a.action, Action::NoOp);
    assert!(a.reason.contains("will not remove it"), "{}", a.reason);
    let a = action(&p, "unit:web.service");
    assert_eq!(
        (a.action, a.cause),
        (Action::Blocked, Cause::UnmanagedConflict)
    );
    assert!(a.reason.contains("--adopt"), "{}", a.reason);
    // --adopt PATH takes both over
    let adopt = BTreeSet::from([db.path.clone(), web.path.clone()]);
    let p = plan_owned(&s, &d, None, &none, &adopt);
    for id in ["unit:db.service", "unit:web.service"] {
        let a = action(&p, id);
        assert_eq!(
            (a.action, a.cause),
            (Action::Adopt, Cause::Adoption),
            "{id}"
        );
    }
    assert!(!p.is_blocked());
    // so does adopt: true in service.yaml
    let d = desired(
        &s,
        &files(
            &s,
            &[(
                "services/web/service.yaml",
                "units:\n  web.service:\n    adopt: true\n",
            )],
        ),
        'a',
    );
    let p = plan_owned(&s, &d, None, &none, &BTreeSet::new());
    assert_eq!(action(&p, "unit:web.service").action, Action::Adopt);
}

#[test]
fn a_unit_systemd_rejects_is_blocked_and_validation_findings_are_kept() {
    let s = scratch();
    let f = files(&s, &[]);
    let d = desired(&s, &f, 'a');
    let id = d
        .resources
        .keys()
        .find(|id| id.starts_with("unit:"))
        .expect("a unit")
        .clone();
    let observed = observe_files(&managed_paths(&d, &BTreeMap::new()), &s.paths);
    let msg = "services/web/web.service:7: Unknown key 'ExecStrat' in section [Service], ignoring.";
    let warning = Finding {
        kind: "warning".into(),
        id: id.clone(),
        reason: "services/web/web.service:3: web.service: Wants=nothere.service names a unit this host neither selects nor has; systemd ignores it".into(),
    };
    let p = plan(PlanInput {
        desired: &d,
        repo: "repo",
        last_applied: None,
        owned: &BTreeMap::new(),
        adopt: &BTreeSet::new(),
        observed: &observed,
        units: &UnitObservation::Unknown {
            reason: "test".into(),
        },
        warnings: vec![],
        interrupted: BTreeSet::new(),
        invalid_quadlet: BTreeMap::new(),
        foreign_dropins: BTreeMap::new(),
        invalid_units: BTreeMap::from([(id.clone(), msg.to_string())]),
        findings: vec![warning.clone()],
    });
    let a = action(&p, &id);
    assert_eq!((a.action, a.cause), (Action::Blocked, Cause::InvalidUnit));
    assert_eq!(a.reason, format!("systemd rejects it: {msg}"));
    assert!(p.is_blocked());
    assert!(p.findings.contains(&warning), "{:#?}", p.findings);
    let json = String::from_utf8(to_json_bytes(&p)).unwrap();
    assert!(json.contains("\"invalid_unit\""), "{json}");
}

// ------------------------------------------------------------------ model-based property

/// What the host did to one object between the last apply and this plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostChange {
    Untouched,
    Edited,
    Deleted,
}

/// A small xorshift generator: one proptest seed drives every choice of a world.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A random revision: services `s<i>` with a unit each (ordered after random earlier units),
/// optional drop-ins and host files, contents drawn from `gen` (so a second revision from the
/// same generator changes some of them).
fn random_revision(s: &Scratch, g: &mut Gen, services: &[usize]) -> BTreeMap<String, RepoEntry> {
    let etc = s.paths.host_file_roots[0].display().to_string();
    let mut v: Vec<(String, String)> = vec![(
        "hosts/h/host.yaml".into(),
        format!(
            "services: [{}]\n",
            services
                .iter()
                .map(|i| format!("s{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )];
    for &i in services {
        let after: Vec<String> = services
            .iter()
            .filter(|&&j| j < i && g.chance(40))
            .map(|j| format!("u{j}.service"))
            .collect();
        let version = g.below(3);
        v.push((
            format!("services/s{i}/u{i}.service"),
            format!(
                "[Unit]\nAfter={}\n[Service]\nExecStart=/bin/sleep {version}\n[Install]\nWantedBy=multi-user.target\n",
                after.join(" ")
            ),
        ));
        if g.chance(50) {
            v.push((
                format!("services/s{i}/u{i}.service.d/10-env.conf"),
                format!("[Service]\nEnvironment=V={}\n", g.below(3)),
            ));
        }
        if g.chance(50) {
            v.push((
                format!("services/s{i}/files{etc}/s{i}/conf"),
                format!("v={}\n", g.below(3)),
            ));
        }
    }
    v.into_iter()
        .map(|(p, c)| {
            let data = c.into_bytes();
            (
                p,
                RepoEntry::File {
                    data,
                    executable: false,
                },
            )
        })
        .collect()
}

/// The services of a revision: a random non-empty subset of 0..6.
fn random_services(g: &mut Gen) -> Vec<usize> {
    let mut v: Vec<usize> = (0..6).filter(|_| g.chance(60)).collect();
    if v.is_empty() {
        v.push(g.below(6) as usize);
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Random worlds - a converged revision, host edits and deletions, a next revision that
    /// adds, changes and drops services - planned against a model of what each object needs:
    /// new -> create, dropped -> delete (or nothing when already gone), changed -> update,
    /// edited on the host -> drift repair, deleted on the host -> recreate, otherwise nothing
    /// (or a restart caused by a changed drop-in or file). Every plan is ordered by its
    /// dependencies with removals last, numbered 1..n, checksummed and byte-identical when
    /// planned again or with host.yaml listing the services in another order.
    #[test]
    fn plans_of_random_worlds_match_the_model(seed in any::<u64>()) {
        let s = scratch();
        let mut g = Gen(seed | 1);
        let first_services = random_services(&mut g);
        let first = desired(&s, &random_revision(&s, &mut g, &first_services), 'a');
        let last = converge(&first);
        let mut host: BTreeMap<String, HostChange> = BTreeMap::new();
        for r in first.resources.values() {
            let change = match g.below(6) {
                0 => { std::fs::write(&r.path, b"edited by hand\n").unwrap(); HostChange::Edited }
                1 => { std::fs::remove_file(&r.path).unwrap(); HostChange::Deleted }
                _ => HostChange::Untouched,
            };
            host.insert(r.id.clone(), change);
        }
        let services = random_services(&mut g);
        let files = random_revision(&s, &mut g, &services);
        let second = desired(&s, &files, 'b');
        let p = do_plan(&s, &second, Some(&last));

        // one action per desired or previously applied object, numbered 1..n
        let ids: BTreeSet<&String> = second.resources.keys().chain(first.resources.keys()).collect();
        prop_assert_eq!(p.actions.len(), ids.len());
        for (i, a) in p.actions.iter().enumerate() {
            prop_assert_eq!(a.order, i + 1);
        }
        // the model
        for a in &p.actions {
            let was = first.resources.get(&a.id);
            let now = second.resources.get(&a.id);
            let change = host.get(&a.id).copied();
            let expected: &[Action] = match (was, now, change) {
                (None, Some(_), _) => &[Action::Create],
                (Some(_), None, Some(HostChange::Deleted)) => &[Action::NoOp],
                (Some(_), None, _) => &[Action::Delete],
                (Some(_), Some(_), Some(HostChange::Deleted)) => &[Action::Create],
                (Some(w), Some(n), Some(HostChange::Edited)) => {
                    prop_assert_eq!(a.cause, if w.digest == n.digest { Cause::Drift } else { Cause::DesiredChange });
                    &[Action::Update]
                }
                (Some(w), Some(n), _) if w.digest != n.digest => &[Action::Update],
                (Some(_), Some(_), _) => &[Action::NoOp, Action::Restart],
                (None, None, _) => unreachable!("ids come from the two revisions"),
            };
            prop_assert!(expected.contains(&a.action), "{}: {:?} ({:?}), expected {:?}", a.id, a.action, a.reason, expected);
        }
        // dependencies come first; removals after every forward action
        let pos: BTreeMap<&str, usize> = p.actions.iter().map(|a| (a.id.as_str(), a.order)).collect();
        let first_removal = p.actions.iter().filter(|a| !second.resources.contains_key(&a.id)).map(|a| a.order).min();
        for a in p.actions.iter().filter(|a| second.resources.contains_key(&a.id)) {
            prop_assert!(first_removal.is_none_or(|r| a.order < r), "{} after a removal", a.id);
            for d in &a.depends_on {
                if second.resources.contains_key(d) {
                    prop_assert!(pos[d.as_str()] < a.order, "{} before its dependency {}", a.id, d);
                }
            }
        }
        prop_assert_eq!(&p.checksum, &checksum(&p));
        // deterministic, and independent of the order host.yaml lists the services in
        let again = to_json_bytes(&do_plan(&s, &second, Some(&last)));
        prop_assert_eq!(&again, &to_json_bytes(&p));
        let mut reordered = files.clone();
        let reversed: Vec<String> = services.iter().rev().map(|i| format!("s{i}")).collect();
        reordered.insert(
            "hosts/h/host.yaml".into(),
            RepoEntry::File { data: format!("services: [{}]\n", reversed.join(", ")).into_bytes(), executable: false },
        );
        let second_reordered = desired(&s, &reordered, 'b');
        prop_assert_eq!(to_json_bytes(&do_plan(&s, &second_reordered, Some(&last))), again);
    }
}

/// The checksum's canonical form is serde_json's own output of the plan, which is sorted JSON
/// only while every type in a plan declares its fields in sorted order: a plan with every
/// field present (optional ones included) must serialize exactly as the sorted value tree.
#[test]
fn canonical_form_is_sorted_json() {
    let action = PlannedAction {
        action: Action::Update,
        cause: Cause::DesiredChange,
        depends_on: vec!["mount:srv-data.mount".into()],
        digests: Sides {
            desired: Some("hmac-sha256:d".into()),
            last_applied: Some("hmac-sha256:l".into()),
            observed: Some("hmac-sha256:o".into()),
        },
        enable: Some(true),
        id: "file:/etc/web/token".into(),
        instances: vec!["web@a.service".into()],
        kind: Kind::File,
        order: 1,
        path: Some("/etc/web/token".into()),
        reason: "changed \"quoted\"\n".into(),
        restarts: vec!["web.service".into()],
        secret: Some(crate::model::plan::SecretView {
            ciphertext_digest: "sha256:c".into(),
            source: "services/web/files/etc/web/token.age".into(),
        }),
        start: Some(false),
        unit: Some("web.service".into()),
    };
    let plan = Plan {
        actions: vec![action],
        base: Base {
            desired_revision: "a".repeat(40),
            last_applied_revision: Some("b".repeat(40)),
            observed_digest: "sha256:o".into(),
            requested_ref: "main".into(),
        },
        checksum: "sha256:ignored".into(),
        core_ops: crate::provenance::Provenance::current(),
        findings: vec![Finding {
            id: "unit:web.service".into(),
            kind: "drift".into(),
            reason: "stopped".into(),
        }],
        host: "h".into(),
        kind: "CoreOpsPlan".into(),
        repo: "/srv/repo".into(),
        schema_version: PLAN_SCHEMA_VERSION,
        summary: [("update".to_string(), 1)].into(),
        warnings: vec!["w".into()],
    };
    let mut sorted = serde_json::to_value(&plan).unwrap();
    sorted.as_object_mut().unwrap().remove("checksum");
    let direct = String::from_utf8(canonical_without_checksum(&plan)).unwrap();
    assert_eq!(direct, sorted.to_string());
    // every field was present: a new field left out of the sort shows up here
    assert!(direct.contains("\"instances\"") && direct.contains("\"secret\""));
    assert_eq!(
        checksum(&plan),
        sha256_hex(sorted.to_string().as_bytes()),
        "the checksum is the digest of the sorted form"
    );
}
