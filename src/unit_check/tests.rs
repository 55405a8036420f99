//! Unit validation: systemd-analyze's words classified and mapped back to repository lines,
//! core-ops' own checks, and the real systemd-analyze on real bad inputs when it is installed.

use super::*;
use crate::config::Scratch;
use crate::render::render;
use crate::source::{RepoEntry, Revision};

fn desired_for(s: &Scratch, host_yaml: &str, files: &[(&str, &str)]) -> DesiredState {
    let mut m: BTreeMap<String, RepoEntry> = BTreeMap::new();
    m.insert(
        "hosts/h/host.yaml".into(),
        RepoEntry::File {
            data: host_yaml.as_bytes().to_vec(),
            executable: false,
        },
    );
    for (p, c) in files {
        let path = if p.starts_with("hosts/") {
            p.to_string()
        } else {
            format!("services/app/{p}")
        };
        m.insert(
            path,
            RepoEntry::File {
                data: c.as_bytes().to_vec(),
                executable: false,
            },
        );
    }
    let rev = Revision {
        commit: "a".repeat(40),
        requested_ref: "main".into(),
    };
    render(&m, &rev, "h", &s.paths).unwrap()
}

fn desired(s: &Scratch, files: &[(&str, &str)]) -> DesiredState {
    desired_for(s, "services: [app]\n", files)
}

/// The units a Debian host has, for checks that must not depend on this machine.
fn debian_host(name: &str) -> bool {
    matches!(
        name,
        "network-online.target" | "network.target" | "multi-user.target" | "timers.target"
    )
}

/// Own checks only (systemd-analyze "absent").
fn own(s: &Scratch, d: &DesiredState) -> UnitCheck {
    check_with(
        d,
        &s.paths,
        &QuadletCheck::default(),
        Err("test".into()),
        &debian_host,
    )
}

/// The real systemd-analyze, if this machine has one.
fn real_analyzer() -> Option<PathBuf> {
    resolve_analyzer(None).ok()
}

/// Own checks and the real systemd-analyze; `None` (and a note) where it is not installed.
fn real(s: &Scratch, d: &DesiredState) -> Option<UnitCheck> {
    let Some(a) = real_analyzer() else {
        eprintln!("systemd-analyze not installed: real verify not exercised");
        return None;
    };
    let c = check_with(d, &s.paths, &QuadletCheck::default(), Ok(a), &debian_host);
    assert!(c.warnings.is_empty(), "{c:#?}");
    Some(c)
}

const OK: &str = "[Unit]\nDescription=ok\nAfter=network-online.target\nWants=network-online.target\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n";

// ---------------------------------------------------------------------------------------
// systemd-analyze's output

#[test]
fn output_lines_are_classified_by_shape() {
    assert_eq!(
        said("/tmp/d/units/web.service:8: Unknown key 'ExecStrat' in section [Service], ignoring."),
        Said::AtLine {
            path: "/tmp/d/units/web.service",
            line: 8,
            msg: "Unknown key 'ExecStrat' in section [Service], ignoring."
        }
    );
    assert_eq!(
        said(
            "web.service: Service has Restart= set to either always or on-success, which isn't allowed for Type=oneshot services. Refusing."
        ),
        Said::Unit {
            unit: "web.service",
            msg: "Service has Restart= set to either always or on-success, which isn't allowed for Type=oneshot services. Refusing."
        }
    );
    assert_eq!(
        said("Unit web.service has a bad unit file setting."),
        Said::LoadFailed {
            unit: "web.service",
            msg: "Unit web.service has a bad unit file setting."
        }
    );
    assert_eq!(
        said("Unit z.target is masked."),
        Said::LoadFailed {
            unit: "z.target",
            msg: "Unit z.target is masked."
        }
    );
    assert_eq!(
        said("Unit ssh.service not found."),
        Said::NotFound {
            unit: "ssh.service"
        }
    );
    assert_eq!(
        said("srv-x.mount: What= setting is missing. Refusing."),
        Said::Unit {
            unit: "srv-x.mount",
            msg: "What= setting is missing. Refusing."
        }
    );
    assert_eq!(
        said("Failed to prepare filename x: Invalid argument"),
        Said::Other("Failed to prepare filename x: Invalid argument")
    );
}

#[test]
fn what_systemd_refuses_or_drops_is_rejected_what_it_warns_about_is_a_finding() {
    for (msg, v) in [
        (
            "Unknown key 'ExecStrat' in section [Service], ignoring.",
            Verdict::Reject,
        ),
        ("Unknown section 'Servce'. Ignoring.", Verdict::Reject),
        (
            "Failed to parse TimeoutSec= parameter, ignoring: abc",
            Verdict::Reject,
        ),
        (
            "Failed to add dependency on foo, ignoring: Invalid argument",
            Verdict::Reject,
        ),
        // the own check says which generated unit to use instead
        (
            "Failed to add dependency on x.pod, ignoring: Invalid argument",
            Verdict::Skip,
        ),
        (
            "Standard output type syslog is obsolete, automatically updating to journal. Please update your unit file, and consider removing the setting altogether.",
            Verdict::Finding,
        ),
    ] {
        assert_eq!(judge_line(msg), v, "{msg}");
    }
    let ours = |n: &str| n == "db.service";
    for (msg, v) in [
        (
            "Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing.",
            Verdict::Reject,
        ),
        ("Timer unit lacks value setting. Refusing.", Verdict::Reject),
        (
            "Command /opt/app/bin/web is not executable: No such file or directory",
            Verdict::Skip,
        ),
        (
            "Failed to create web.service/start: Unit nothere.service not found.",
            Verdict::Skip,
        ),
        (
            "Failed to create web.service/start: Unit db.service has a bad unit file setting.",
            Verdict::Skip,
        ),
        (
            "Failed to create web.service/start: Unit ssh.service has a bad unit file setting.",
            Verdict::Finding,
        ),
        (
            "service s.service not loaded, socket cannot be started.",
            Verdict::Skip,
        ),
        ("Found ordering cycle on a.service/start", Verdict::Finding),
    ] {
        assert_eq!(judge_unit(msg, &ours), v, "{msg}");
    }
}

#[test]
fn keys_named_in_a_message_are_found_in_order() {
    assert_eq!(
        keys_named(
            "Service has Restart= set to either always or on-success, which isn't allowed for Type=oneshot services."
        ),
        vec!["Restart", "Type"]
    );
    assert_eq!(
        keys_named("Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing."),
        vec!["ExecStart", "ExecStop", "SuccessAction"]
    );
    assert!(keys_named("no keys here, a=b").is_empty());
}

#[test]
fn messages_are_mapped_back_to_resources_files_and_lines() {
    let s = crate::config::scratch();
    let d = desired_for(
        &s,
        "services: [app]\n",
        &[
            (
                "web.service",
                "[Unit]\nDescription=w\n[Service]\nType=oneshot\nExecStart=/opt/web\n",
            ),
            (
                "web.service.d/10-restart.conf",
                "[Service]\nRestart=always\nExecStrat=/x\n",
            ),
            ("tpl@.service", "[Service]\nExecStart=/bin/echo %i\n"),
            (
                "hosts/h/overrides/app/ssh.service.d/50-h.conf",
                "[Service]\nNice=x\n",
            ),
        ],
    );
    let q = QuadletCheck::default();
    let set = unit_set(&d, &s.paths.unit_dir, &q);
    assert_eq!(
        set.keys().collect::<Vec<_>>(),
        ["ssh.service", "tpl@.service", "web.service"]
    );
    let out = "\
/tmp/t/units/web.service.d/10-restart.conf:3: Unknown key 'ExecStrat' in section [Service], ignoring.
/lib/systemd/system/other.service:4: Unknown key 'Foo' in section [Service], ignoring.
web.service: Service has Restart= set to either always or on-success, which isn't allowed for Type=oneshot services. Refusing.
Unit web.service has a bad unit file setting.
web.service: Command /opt/web is not executable: No such file or directory
/tmp/t/units/ssh.service.d/50-h.conf:2: Failed to parse nice priority 'x', ignoring: Invalid argument
tpl@i.service: Failed to create tpl@i.service/start: Unit sysinit.target not found.
Unit tpl@i.service has a bad unit file setting.
other.service: Something about a unit core-ops does not manage.
Failed to load something nobody can place
";
    let v = interpret(&set, out, Path::new("/tmp/t")).unwrap();
    let texts = |id: &str| -> Vec<String> {
        v.rejected
            .get(id)
            .map(|m| m.iter().map(|m| m.text.clone()).collect())
            .unwrap_or_default()
    };
    let restart = "services/app/web.service.d/10-restart.conf:2: web.service: Service has Restart= set to either always or on-success, which isn't allowed for Type=oneshot services. Refusing.";
    assert_eq!(texts("unit:web.service"), vec![restart.to_string()]);
    assert_eq!(
        texts("dropin:web.service.d/10-restart.conf"),
        vec![
            "services/app/web.service.d/10-restart.conf:3: Unknown key 'ExecStrat' in section [Service], ignoring.".to_string(),
            restart.to_string(),
        ]
    );
    assert_eq!(
        texts("dropin:ssh.service.d/50-h.conf"),
        vec![
            "hosts/h/overrides/app/ssh.service.d/50-h.conf:2: Failed to parse nice priority 'x', ignoring: Invalid argument"
                .to_string()
        ]
    );
    // an instance of a managed template is the template's; only the generic message was said
    assert_eq!(
        texts("unit:tpl@.service"),
        vec![
            "services/app/tpl@.service: Unit tpl@i.service has a bad unit file setting."
                .to_string()
        ]
    );
    assert!(v.findings.is_empty(), "{v:#?}");
    assert_eq!(
        v.warnings,
        vec!["systemd-analyze: Failed to load something nobody can place".to_string()]
    );
}

#[test]
fn a_verify_that_cannot_read_the_set_validates_nothing() {
    let s = crate::config::scratch();
    let d = desired(&s, &[("web.service", OK)]);
    let q = QuadletCheck::default();
    let set = unit_set(&d, &s.paths.unit_dir, &q);
    let out = "Failed to prepare filename /tmp/t/units/web.service: Permission denied\n";
    let err = interpret(&set, out, Path::new("/tmp/t")).unwrap_err();
    assert!(err.contains("could not read"), "{err}");
}

// ---------------------------------------------------------------------------------------
// core-ops' own checks (no systemd-analyze)

#[test]
fn no_analyzer_is_one_warning_and_own_checks_still_run() {
    let s = crate::config::scratch();
    let d = desired(&s, &[("web.service", OK), ("empty.service", "")]);
    let c = own(&s, &d);
    assert_eq!(
        c.warnings,
        vec![
            "units not validated by systemd-analyze: test; only core-ops' own checks ran"
                .to_string()
        ]
    );
    assert_eq!(
        c.rejected,
        BTreeMap::from([(
            "unit:empty.service".to_string(),
            "services/app/empty.service: empty unit file: systemd treats it as masked".to_string()
        )])
    );
    assert!(c.findings.is_empty(), "{c:#?}");
    assert_eq!(c.analyzer, None);
}

#[test]
fn nothing_systemd_loads_no_process_no_warning() {
    let s = crate::config::scratch();
    let file = format!("files{}/x", s.paths.host_file_roots[0].display());
    let d = desired(&s, &[(&file, "x\n")]);
    let c = check_with(
        &d,
        &s.paths,
        &QuadletCheck::default(),
        Ok("/nonexistent/systemd-analyze".into()),
        &debian_host,
    );
    assert_eq!(c, UnitCheck::default());
}

#[test]
fn analyzer_setting_none_path_and_auto() {
    assert_eq!(
        resolve_analyzer(Some("none")).unwrap_err(),
        format!("validation is off: {ANALYZE_ENV}=none")
    );
    assert!(
        resolve_analyzer(Some("/nonexistent/sa"))
            .unwrap_err()
            .starts_with("/nonexistent/sa does not exist")
    );
    assert_eq!(
        resolve_analyzer(Some("/bin/sh")).unwrap(),
        PathBuf::from("/bin/sh")
    );
}

#[test]
fn a_failing_analyzer_is_a_warning_not_a_rejection() {
    let s = crate::config::scratch();
    let d = desired(&s, &[("web.service", OK)]);
    let c = check_with(
        &d,
        &s.paths,
        &QuadletCheck::default(),
        Ok("/nonexistent/systemd-analyze".into()),
        &debian_host,
    );
    assert!(c.rejected.is_empty());
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0]
            .starts_with("units not validated: running /nonexistent/systemd-analyze failed"),
        "{c:#?}"
    );
}

#[test]
fn a_mount_without_what_after_merging_is_rejected_at_the_line_that_cleared_it() {
    let s = crate::config::scratch();
    let mount = "[Mount]\nWhat=tmpfs\nWhere=/srv/data\nType=tmpfs\n";
    let d = desired(
        &s,
        &[
            ("srv-data.mount", mount),
            ("srv-data.mount.d/10-x.conf", "[Mount]\nWhat=\n"),
            ("srv-other.mount", "[Mount]\nWhere=/srv/other\n"),
        ],
    );
    let c = own(&s, &d);
    assert_eq!(
        c.rejected,
        BTreeMap::from([
            (
                "mount:srv-data.mount".to_string(),
                "services/app/srv-data.mount.d/10-x.conf:2: srv-data.mount: no What= in [Mount] once the layers are merged; systemd refuses a mount without a source".to_string()
            ),
            (
                "mount:srv-other.mount".to_string(),
                "services/app/srv-other.mount: srv-other.mount: no What= in [Mount] once the layers are merged; systemd refuses a mount without a source".to_string()
            ),
        ])
    );
}

#[test]
fn a_dependency_nothing_provides_is_a_warning_finding_with_file_and_line() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            (
                "web.service",
                "[Unit]\nWants=nothere.service db.service\nAfter=network-online.target getty@tty1.service\nRequires=gone.service\nBefore=%i.service\nPartOf=dev-sda.device srv-x.mount\n[Service]\nExecStart=/bin/true\n",
            ),
            ("db.service", "[Service]\nExecStart=/bin/true\n"),
            ("getty@.service", "[Service]\nExecStart=/bin/true\n"),
            (
                "web.service.d/10-more.conf",
                "[Unit]\nAfter=also-missing.target\n",
            ),
        ],
    );
    let c = own(&s, &d);
    assert!(c.rejected.is_empty(), "{c:#?}");
    assert_eq!(
        c.findings,
        vec![
            (
                "dropin:web.service.d/10-more.conf".to_string(),
                "services/app/web.service.d/10-more.conf:2: web.service: After=also-missing.target names a unit this host neither selects nor has; systemd ignores it".to_string()
            ),
            (
                "unit:web.service".to_string(),
                "services/app/web.service:2: web.service: Wants=nothere.service names a unit this host neither selects nor has; systemd ignores it".to_string()
            ),
            (
                "unit:web.service".to_string(),
                "services/app/web.service:4: web.service: Requires=gone.service names a unit this host neither selects nor has; systemd will refuse to start web.service while it is missing".to_string()
            ),
        ]
    );
}

#[test]
fn a_drop_in_for_a_unit_nothing_provides_is_a_finding() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            ("web.service", OK),
            (
                "hosts/h/overrides/app/gone.service.d/50-h.conf",
                "[Service]\nNice=1\n",
            ),
            (
                "hosts/h/overrides/app/network-online.target.d/50-h.conf",
                "[Unit]\nDescription=x\n",
            ),
        ],
    );
    let c = own(&s, &d);
    assert_eq!(
        c.findings,
        vec![(
            "dropin:gone.service.d/50-h.conf".to_string(),
            "hosts/h/overrides/app/gone.service.d/50-h.conf: drop-in for gone.service, which this host neither selects nor has; systemd ignores it".to_string()
        )]
    );
}

#[test]
fn an_empty_assignment_in_a_drop_in_clears_the_dependency_it_would_report() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            (
                "web.service",
                "[Unit]\nWants=nothere.service\n[Service]\nExecStart=/bin/true\n",
            ),
            ("web.service.d/10-x.conf", "[Unit]\nWants=\n"),
        ],
    );
    assert!(own(&s, &d).findings.is_empty());
}

#[test]
fn a_quadlet_file_name_where_a_unit_belongs_names_the_generated_unit() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            (
                "web.service",
                "[Unit]\nRequires=db.pod\nAfter=db.pod data.volume\n[Service]\nExecStart=/bin/true\n",
            ),
            (
                "app.container",
                "[Container]\nImage=x\nServiceName=custom\n",
            ),
            ("web.service.d/10-c.conf", "[Unit]\nWants=app.container\n"),
        ],
    );
    let c = own(&s, &d);
    assert_eq!(
        c.rejected,
        BTreeMap::from([(
            "unit:web.service".to_string(),
            "services/app/web.service:2: web.service: Requires=db.pod names a Quadlet file, not a unit; systemd ignores it (use Requires=db-pod.service)".to_string()
        )])
    );
    assert_eq!(
        c.findings,
        vec![
            (
                "dropin:web.service.d/10-c.conf".to_string(),
                "services/app/web.service.d/10-c.conf:2: web.service: Wants=app.container names a Quadlet file, not a unit; systemd ignores it (use Wants=custom.service)".to_string()
            ),
            (
                "unit:web.service".to_string(),
                "services/app/web.service:3: web.service: After=data.volume names a Quadlet file, not a unit; systemd ignores it (use After=data-volume.service)".to_string()
            ),
            (
                "unit:web.service".to_string(),
                "services/app/web.service:3: web.service: After=db.pod names a Quadlet file, not a unit; systemd ignores it (use After=db-pod.service)".to_string()
            ),
        ]
    );
}

#[test]
fn a_dependency_on_a_generated_unit_or_an_alias_is_satisfied() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            (
                "web.service",
                "[Unit]\nRequires=app.service db-alias.service\n[Service]\nExecStart=/bin/true\n",
            ),
            ("app.container", "[Container]\nImage=x\n"),
            (
                "db.service",
                "[Service]\nExecStart=/bin/true\n[Install]\nAlias=db-alias.service\n",
            ),
        ],
    );
    let c = own(&s, &d);
    assert!(c.findings.is_empty() && c.rejected.is_empty(), "{c:#?}");
}

#[test]
fn a_timer_socket_or_path_whose_unit_nothing_provides_is_a_finding() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            ("backup.timer", "[Timer]\nOnCalendar=daily\n"),
            ("run.timer", "[Timer]\nOnCalendar=daily\nUnit=job.service\n"),
            ("job.service", "[Service]\nExecStart=/bin/true\n"),
            ("echo.socket", "[Socket]\nListenStream=1234\nAccept=yes\n"),
            ("echo@.service", "[Service]\nExecStart=/bin/cat\n"),
            ("watch.path", "[Path]\nPathExists=/x\nUnit=gone.service\n"),
        ],
    );
    let c = own(&s, &d);
    assert_eq!(
        c.findings,
        vec![
            (
                "unit:backup.timer".to_string(),
                "services/app/backup.timer: backup.timer triggers backup.service, which this host neither selects nor has; it cannot start it".to_string()
            ),
            (
                "unit:watch.path".to_string(),
                "services/app/watch.path:3: watch.path triggers gone.service, which this host neither selects nor has; it cannot start it".to_string()
            ),
        ]
    );
}

#[test]
fn without_systemd_analyze_its_common_refusals_are_mirrored() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            ("a.service", "[Service]\nExecStart=/bin/true\n"),
            ("a.service.d/10-x.conf", "[Service]\nExecStart=\n"),
            (
                "b.service",
                "[Service]\nType=oneshot\nExecStart=/bin/true\n",
            ),
            ("b.service.d/10-x.conf", "[Service]\nRestart=always\n"),
            (
                "c.service",
                "[Service]\nExecStart=/bin/true\nExecStart=/bin/false\n",
            ),
            ("t.timer", "[Timer]\nPersistent=true\nUnit=a.service\n"),
            ("s.socket", "[Socket]\nAccept=no\nService=a.service\n"),
            ("p.path", "[Path]\nUnit=a.service\n"),
            ("ok.target", "# nothing but a comment\n"),
        ],
    );
    let c = own(&s, &d);
    let ids: Vec<&str> = c.rejected.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "unit:a.service",
            "unit:b.service",
            "unit:c.service",
            "unit:p.path",
            "unit:s.socket",
            "unit:t.timer"
        ]
    );
    assert_eq!(
        c.rejected["unit:a.service"],
        "services/app/a.service.d/10-x.conf:2: a.service: no ExecStart=, ExecStop= or SuccessAction= once the layers are merged (systemd refuses the unit)"
    );
    assert_eq!(
        c.rejected["unit:b.service"],
        "services/app/b.service.d/10-x.conf:2: b.service: Restart=always or on-success is not allowed for Type=oneshot (systemd refuses the unit)"
    );
    assert!(c.rejected["unit:c.service"].starts_with("services/app/c.service:3: "));
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let s = crate::config::scratch();
    let d = desired(&s, &[("bom.service", &format!("\u{feff}{OK}"))]);
    let c = own(&s, &d);
    assert!(c.rejected.is_empty() && c.findings.is_empty(), "{c:#?}");
}

// ---------------------------------------------------------------------------------------
// the real systemd-analyze

#[test]
fn real_verify_accepts_a_clean_set_with_host_units_and_a_bom() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            ("web.service", OK),
            ("bom.service", &format!("\u{feff}{OK}")),
            (
                "web.service.d/10-x.conf",
                "[Service]\nRestart=on-failure\nExecStart=\nExecStart=/opt/runtime/bin/web\n",
            ),
            ("tpl@.service", "[Service]\nExecStart=/bin/echo %i\n"),
            ("backup.timer", "[Timer]\nOnCalendar=daily\n"),
            (
                "backup.service",
                "[Service]\nType=oneshot\nExecStart=/bin/true\n",
            ),
            (
                "srv-data.mount",
                "[Mount]\nWhat=tmpfs\nWhere=/srv/data\nType=tmpfs\n[X-CoreOps]\nCreateMountpoint=true\n",
            ),
        ],
    );
    let Some(c) = real(&s, &d) else { return };
    assert!(c.rejected.is_empty(), "{c:#?}");
    assert!(c.findings.is_empty(), "{c:#?}");
    assert!(c.analyzer.is_some());
}

#[test]
fn real_verify_rejects_real_bad_inputs_with_file_and_line() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            ("empty.service", ""),
            (
                "merged.service",
                "[Unit]\nDescription=valid alone\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
            ),
            (
                "merged.service.d/20-restart.conf",
                "[Service]\nRestart=always\n",
            ),
            ("noexec.service", "[Service]\nExecStart=/bin/true\n"),
            ("noexec.service.d/10-reset.conf", "[Service]\nExecStart=\n"),
            ("srv-x.mount", "[Mount]\nWhere=/srv/x\nType=tmpfs\n"),
            (
                "typo.service",
                "[Unit]\nDescription=typo\n[Service]\nExecStrat=/bin/true\nExecStart=/bin/true\n",
            ),
            (
                "section.service",
                "[Servce]\nExecStart=/bin/true\n[Service]\nExecStart=/bin/true\n",
            ),
            (
                "x.service",
                "[Unit]\nX-Note=fine\n[X-Tool]\nAnything=1\n[Service]\nExecStart=/bin/true\n",
            ),
            ("bad.timer", "[Timer]\nOnCalendar=dailyy\nUnit=x.service\n"),
        ],
    );
    let Some(c) = real(&s, &d) else { return };
    let r = |id: &str| c.rejected.get(id).cloned().unwrap_or_default();
    assert_eq!(
        r("unit:empty.service"),
        "services/app/empty.service: empty unit file: systemd treats it as masked"
    );
    // each layer valid, the merge refused: pinned on the drop-in that made it so
    assert!(
        r("unit:merged.service").starts_with(
            "services/app/merged.service.d/20-restart.conf:2: merged.service: Service has Restart= set to either always or on-success"
        ),
        "{c:#?}"
    );
    assert_eq!(
        r("dropin:merged.service.d/20-restart.conf"),
        r("unit:merged.service")
    );
    assert!(
        r("unit:noexec.service").starts_with(
            "services/app/noexec.service.d/10-reset.conf:2: noexec.service: Service has no ExecStart="
        ),
        "{c:#?}"
    );
    assert!(
        r("mount:srv-x.mount")
            .starts_with("services/app/srv-x.mount: srv-x.mount: no What= in [Mount]"),
        "{c:#?}"
    );
    assert_eq!(
        r("unit:typo.service"),
        "services/app/typo.service:4: Unknown key 'ExecStrat' in section [Service], ignoring."
    );
    assert!(
        r("unit:section.service")
            .starts_with("services/app/section.service:1: Unknown section 'Servce'"),
        "{c:#?}"
    );
    assert!(
        r("unit:bad.timer").starts_with(
            "services/app/bad.timer:2: Failed to parse calendar specification, ignoring: dailyy"
        ),
        "{c:#?}"
    );
    // X- keys and sections are systemd's documented extension points
    assert_eq!(r("unit:x.service"), "");
    assert_eq!(c.rejected.len(), 9, "{c:#?}");
}

#[test]
fn real_verify_findings_for_dependencies_and_quadlet_names() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            (
                "web.service",
                "[Unit]\nWants=nothere.service\nAfter=network-online.target x.pod\n[Service]\nExecStart=/bin/true\n",
            ),
            (
                "dep.service",
                "[Unit]\nRequires=x.pod\n[Service]\nExecStart=/bin/true\n",
            ),
        ],
    );
    let Some(c) = real(&s, &d) else { return };
    assert_eq!(
        c.rejected,
        BTreeMap::from([(
            "unit:dep.service".to_string(),
            "services/app/dep.service:2: dep.service: Requires=x.pod names a Quadlet file, not a unit; systemd ignores it (use Requires=x-pod.service)".to_string()
        )])
    );
    assert_eq!(
        c.findings,
        vec![
            (
                "unit:web.service".to_string(),
                "services/app/web.service:2: web.service: Wants=nothere.service names a unit this host neither selects nor has; systemd ignores it".to_string()
            ),
            (
                "unit:web.service".to_string(),
                "services/app/web.service:3: web.service: After=x.pod names a Quadlet file, not a unit; systemd ignores it (use After=x-pod.service)".to_string()
            ),
        ]
    );
}

#[test]
fn real_verify_merges_a_drop_in_over_a_generated_quadlet_unit() {
    let s = crate::config::scratch();
    let d = desired(
        &s,
        &[
            ("app.container", "[Container]\nImage=x\n"),
            ("app.service.d/10-x.conf", "[Service]\nRestart=sometimes\n"),
        ],
    );
    // what the generator would have said (it is not needed for this)
    let q = QuadletCheck {
        generated: BTreeMap::from([(
            "app.service".to_string(),
            "[Unit]\nSourcePath=/etc/containers/systemd/app.container\n[X-Container]\nImage=x\n[Service]\nExecStart=/usr/bin/podman run --name app x\nType=notify\nNotifyAccess=all\n".to_string(),
        )]),
        ..QuadletCheck::default()
    };
    let Some(a) = real_analyzer() else { return };
    let c = check_with(&d, &s.paths, &q, Ok(a), &debian_host);
    assert_eq!(
        c.rejected.keys().collect::<Vec<_>>(),
        ["dropin:app.service.d/10-x.conf"],
        "{c:#?}"
    );
    assert!(
        c.rejected["dropin:app.service.d/10-x.conf"]
            .starts_with("services/app/app.service.d/10-x.conf:2: Failed to parse service restart specifier, ignoring: sometimes"),
        "{c:#?}"
    );
}

#[test]
fn real_verify_never_touches_the_units_load_marker() {
    let marker = Path::new("/run/systemd/systemd-units-load");
    let before = marker.metadata().ok().and_then(|m| m.modified().ok());
    let s = crate::config::scratch();
    let d = desired(&s, &[("web.service", OK)]);
    let Some(_) = real(&s, &d) else { return };
    let after = marker.metadata().ok().and_then(|m| m.modified().ok());
    assert_eq!(before, after);
}
