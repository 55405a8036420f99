//! Render rules, one test per rule and per rejection message.

use super::*;

fn rev() -> Revision {
    Revision {
        commit: "454ac5f1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
        requested_ref: "v1".into(),
    }
}

fn paths() -> Paths {
    Paths::new(
        Some("/u".into()),
        Some("/q".into()),
        Some("/s".into()),
        None,
        Some("/etc:/srv"),
    )
}

fn repo(files: &[(&str, &str)]) -> BTreeMap<String, RepoEntry> {
    files
        .iter()
        .map(|(p, c)| {
            (
                p.to_string(),
                RepoEntry::File {
                    data: c.as_bytes().to_vec(),
                    executable: false,
                },
            )
        })
        .collect()
}

fn err(files: &[(&str, &str)]) -> InputError {
    render(&repo(files), &rev(), "h", &paths()).unwrap_err()
}

const WEB: &str = "[Unit]\nDescription=web\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n";

#[test]
fn layers_base_unit_then_dropins_with_host_replacing_same_name() {
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [web]\n"),
            ("services/web/web.service", WEB),
            (
                "services/web/web.service.d/10-a.conf",
                "[Service]\nEnvironment=A=base\n",
            ),
            (
                "services/web/web.service.d/20-b.conf",
                "[Service]\nEnvironment=B=base\n",
            ),
            (
                "hosts/h/overrides/web/web.service.d/20-b.conf",
                "[Service]\nEnvironment=B=host\n",
            ),
            (
                "hosts/h/overrides/web/web.service.d/50-c.conf",
                "[Service]\nExecStart=\nExecStart=/bin/true\n",
            ),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    let ids: Vec<&str> = d.resources.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        vec![
            "dropin:web.service.d/10-a.conf",
            "dropin:web.service.d/20-b.conf",
            "dropin:web.service.d/50-c.conf",
            "unit:web.service"
        ]
    );
    let web = &d.resources["unit:web.service"];
    let u = web.unit.as_ref().unwrap();
    assert!(u.enable && u.start);
    assert!(u.effective.contains("Environment=B=host"));
    assert!(!u.effective.contains("B=base"));
    assert!(u.effective.contains("ExecStart=/bin/true"));
    assert!(!u.effective.contains("sleep"));
    assert_eq!(web.layers.len(), 4);
    assert_eq!(
        web.layers[2].role,
        "host drop-in (replaces services/web/web.service.d/20-b.conf)"
    );
    assert_eq!(web.path, PathBuf::from("/u/web.service"));
    assert_eq!(
        d.resources["dropin:web.service.d/20-b.conf"].restarts,
        vec!["web.service"]
    );
}

#[test]
fn quadlet_has_generated_identity_and_lives_in_quadlet_dir() {
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [app]\n"),
            (
                "services/app/app.container",
                "[Container]\nImage=localhost/app:1\n[Install]\nWantedBy=multi-user.target\n",
            ),
            (
                "services/app/app.container.d/10-env.conf",
                "[Container]\nEnvironment=X=1\n",
            ),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    let app = &d.resources["quadlet:app.container"];
    assert_eq!(app.path, PathBuf::from("/q/app.container"));
    let u = app.unit.as_ref().unwrap();
    assert_eq!(u.name, "app.service");
    assert!(u.start && !u.enable);
    let dropin = &d.resources["dropin:app.container.d/10-env.conf"];
    assert_eq!(dropin.path, PathBuf::from("/q/app.container.d/10-env.conf"));
    assert_eq!(dropin.restarts, vec!["app.service"]);
}

#[test]
fn host_must_be_defined_and_select_existing_services() {
    let e = err(&[("hosts/other/host.yaml", "services: []\n")]);
    assert_eq!(e.location.file, "hosts/h/host.yaml");
    assert!(e.message.contains("known hosts: other"), "{e}");
    let e = err(&[
        ("hosts/h/host.yaml", "services:\n  - web\n  - nope\n"),
        ("services/web/web.service", WEB),
    ]);
    assert_eq!(e.location, Location::line("hosts/h/host.yaml", 3));
    assert!(e.message.contains("services/nope/ does not exist"), "{e}");
}

#[test]
fn unknown_yaml_keys_are_errors() {
    let e = err(&[(
        "hosts/h/host.yaml",
        "services: []\npolicy:\n  auto_rollbak: true\n",
    )]);
    assert_eq!(e.location, Location::line("hosts/h/host.yaml", 3));
    assert!(e.message.contains("unknown field `auto_rollbak`"), "{e}");
    let e = err(&[
        ("hosts/h/host.yaml", "services: [web]\n"),
        ("services/web/web.service", WEB),
        (
            "services/web/service.yaml",
            "units:\n  web.service:\n    enabled: true\n",
        ),
    ]);
    assert_eq!(e.location, Location::line("services/web/service.yaml", 3));
}

#[test]
fn mount_rules_use_the_troubleshooting_messages() {
    let e = err(&[
        ("hosts/h/host.yaml", "services: [m]\n"),
        (
            "services/m/srv-data.mount",
            "[Mount]\nWhat=tmpfs\nWhere=/srv/elsewhere\nType=tmpfs\n",
        ),
    ]);
    assert!(
        e.message
            .starts_with("mount unit name does not match Mount Where"),
        "{e}"
    );
    assert_eq!(e.location, Location::line("services/m/srv-data.mount", 3));
    let e = err(&[
        ("hosts/h/host.yaml", "services: [m]\n"),
        (
            "services/m/srv-data.automount",
            "[Automount]\nWhere=/srv/x\n",
        ),
    ]);
    assert!(
        e.message
            .starts_with("automount unit name does not match Automount Where"),
        "{e}"
    );
    let e = err(&[
        ("hosts/h/host.yaml", "services: [m]\n"),
        (
            "services/m/srv-data.mount",
            "[Mount]\nWhat=tmpfs\nWhere=/srv/data\n[X-CoreOps]\nOwner=root\n",
        ),
    ]);
    assert!(e.message.starts_with("unsupported X-CoreOps field"), "{e}");
    assert_eq!(e.location, Location::line("services/m/srv-data.mount", 5));
    let e = err(&[
        ("hosts/h/host.yaml", "services: [m]\n"),
        (
            "services/m/srv-data.mount",
            "[Mount]\nWhat=tmpfs\nWhere=/srv/data\n",
        ),
        (
            "hosts/h/overrides/m/srv-data.mount.d/50-move.conf",
            "[Mount]\nWhere=/srv/moved\n",
        ),
    ]);
    assert!(
        e.message.starts_with("host override changes Mount Where="),
        "{e}"
    );
    assert_eq!(
        e.location,
        Location::line("hosts/h/overrides/m/srv-data.mount.d/50-move.conf", 2)
    );
}

#[test]
fn automount_backed_mount_is_not_started_directly() {
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [m]\n"),
            (
                "services/m/srv-data.mount",
                "[Mount]\nWhat=tmpfs\nWhere=/srv/data\nType=tmpfs\n",
            ),
            (
                "services/m/srv-data.automount",
                "[Automount]\nWhere=/srv/data\n",
            ),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    assert!(
        !d.resources["mount:srv-data.mount"]
            .unit
            .as_ref()
            .unwrap()
            .start
    );
    assert!(
        d.resources["automount:srv-data.automount"]
            .unit
            .as_ref()
            .unwrap()
            .start
    );
}

#[test]
fn host_file_targets_with_dot_dot_never_pass_the_roots_check() {
    // the source refuses such tree entries; render refuses them again (defence in depth)
    for path in [
        "services/web/files/etc/../../root/.ssh/authorized_keys",
        "services/web/files/etc/./web/app.env",
        "services/web/files/etc//web/app.env",
    ] {
        let e = err(&[("hosts/h/host.yaml", "services: [web]\n"), (path, "x")]);
        assert!(
            e.message.contains("has an empty, '.' or '..' component"),
            "{path}: {e}"
        );
        assert_eq!(e.location.file, path);
    }
}

#[test]
fn host_files_stay_under_roots_and_inside_the_repo() {
    let e = err(&[
        ("hosts/h/host.yaml", "services: [web]\n"),
        ("services/web/files/usr/bin/evil", "x"),
    ]);
    assert!(
        e.message.contains("outside the allowed roots /etc:/srv"),
        "{e}"
    );
    assert_eq!(e.location.file, "services/web/files/usr/bin/evil");

    let mut files = repo(&[("hosts/h/host.yaml", "services: [web]\n")]);
    files.insert(
        "services/web/files/etc/web/link".into(),
        RepoEntry::Symlink {
            target: "/etc/shadow".into(),
        },
    );
    let e = render(&files, &rev(), "h", &paths()).unwrap_err();
    assert!(e.message.contains("absolute symlink"), "{e}");

    files.insert(
        "services/web/files/etc/web/link".into(),
        RepoEntry::Symlink {
            target: "../../../../../../outside".into(),
        },
    );
    let e = render(&files, &rev(), "h", &paths()).unwrap_err();
    assert!(e.message.contains("leaves the repository"), "{e}");

    // an in-repo relative symlink is followed
    files.insert(
        "services/web/shared.env".into(),
        RepoEntry::File {
            data: b"A=1\n".to_vec(),
            executable: false,
        },
    );
    files.insert(
        "services/web/files/etc/web/link".into(),
        RepoEntry::Symlink {
            target: "../../../shared.env".into(),
        },
    );
    // shared.env is itself an unexpected file in the service dir
    let e = render(&files, &rev(), "h", &paths()).unwrap_err();
    assert!(e.message.starts_with("unexpected file"), "{e}");
    files.remove("services/web/shared.env");
    files.insert(
        "services/web/files/etc/web/shared.env".into(),
        RepoEntry::File {
            data: b"A=1\n".to_vec(),
            executable: false,
        },
    );
    files.insert(
        "services/web/files/etc/web/link".into(),
        RepoEntry::Symlink {
            target: "shared.env".into(),
        },
    );
    let d = render(&files, &rev(), "h", &paths()).unwrap();
    assert_eq!(d.resources["file:/etc/web/link"].content, b"A=1\n");
}

#[test]
fn file_modes_owner_and_restarts_come_from_service_yaml() {
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [web]\n"),
            ("services/web/web.service", WEB),
            ("services/web/files/etc/web/app.env", "A=1\n"),
            ("services/web/files/etc/web/other.env", "B=1\n"),
            ("services/web/service.yaml", "files:\n  /etc/web/app.env:\n    mode: \"0640\"\n    group: adm\n    restart: []\n"),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    let f = &d.resources["file:/etc/web/app.env"];
    assert_eq!(f.meta.mode, 0o640);
    assert_eq!(f.meta.group, "adm");
    assert!(f.restarts.is_empty());
    assert_eq!(
        d.resources["file:/etc/web/other.env"].restarts,
        vec!["web.service"]
    );
    let e = err(&[
        ("hosts/h/host.yaml", "services: [web]\n"),
        ("services/web/files/etc/a", "x"),
        (
            "services/web/service.yaml",
            "files:\n  /etc/a:\n    mode: rw\n",
        ),
    ]);
    assert!(e.message.contains("not an octal mode"), "{e}");
}

#[test]
fn special_and_world_writable_modes_need_an_explicit_declaration() {
    let files = |mode: &str, allow: bool| {
        let yaml = format!(
            "files:\n  /etc/x:\n    mode: \"{mode}\"\n{}",
            if allow {
                "    allow_special_mode: true\n"
            } else {
                ""
            }
        );
        repo(&[
            ("hosts/h/host.yaml", "services: [web]\n"),
            ("services/web/files/etc/x", "x"),
            ("services/web/service.yaml", &yaml),
        ])
    };
    for mode in ["4755", "2755", "1755", "0666", "0777", "6711", "0o4755"] {
        let e = render(&files(mode, false), &rev(), "h", &paths()).unwrap_err();
        assert_eq!(e.location.file, "services/web/service.yaml", "{mode}");
        assert!(
            e.message
                .contains("files: /etc/x (services/web/files/etc/x): mode")
                && e.message
                    .contains("setuid, setgid, sticky or world-writable")
                && e.message.contains("allow_special_mode: true"),
            "{mode}: {e}"
        );
        let d = render(&files(mode, true), &rev(), "h", &paths()).unwrap();
        assert_eq!(
            d.resources["file:/etc/x"].meta.mode,
            u32::from_str_radix(mode.trim_start_matches("0o"), 8).unwrap()
        );
    }
    for mode in ["0644", "0755", "0600", "0775", "0640"] {
        render(&files(mode, false), &rev(), "h", &paths()).unwrap();
    }
}

#[test]
fn unit_syntax_errors_name_file_and_line() {
    let e = err(&[
        ("hosts/h/host.yaml", "services: [web]\n"),
        (
            "services/web/web.service",
            "[Unit]\nDescription=x\nbroken line\n",
        ),
    ]);
    assert_eq!(
        e.to_string(),
        "services/web/web.service:3: expected Key=value, found 'broken line'"
    );
}

#[test]
fn overrides_for_unselected_services_and_duplicates_are_rejected() {
    let e = err(&[
        ("hosts/h/host.yaml", "services: [web]\n"),
        ("services/web/web.service", WEB),
        ("hosts/h/overrides/db/db.service.d/x.conf", "[Service]\n"),
    ]);
    assert!(e.message.contains("does not select"), "{e}");
    let e = err(&[
        ("hosts/h/host.yaml", "services: [a, b]\n"),
        ("services/a/web.service", WEB),
        ("services/b/web.service", WEB),
    ]);
    assert!(
        e.message
            .contains("declared by service 'a' and by service 'b'"),
        "{e}"
    );
}

#[test]
fn dependencies_are_collected_from_effective_content() {
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [web]\n"),
            ("services/web/web.service", "[Unit]\nAfter=network.target db.service\nRequires=db.service\nRequiresMountsFor=/srv/data\n[Service]\nExecStart=/bin/true\n"),
            ("hosts/h/overrides/web/web.service.d/50.conf", "[Unit]\nAfter=\nAfter=cache.service\n"),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    let u = d.resources["unit:web.service"].unit.clone().unwrap();
    assert_eq!(u.after, vec!["cache.service", "db.service"]);
    assert_eq!(u.requires_mounts_for, vec!["/srv/data"]);
    assert!(!u.start && !u.enable);
}

#[test]
fn automount_backed_mount_is_not_enabled_even_with_an_install_section() {
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [m]\n"),
            (
                "services/m/srv-nfs.mount",
                "[Mount]\nWhat=server:/x\nWhere=/srv/nfs\nType=nfs\n[Install]\nWantedBy=multi-user.target\n",
            ),
            (
                "services/m/srv-nfs.automount",
                "[Automount]\nWhere=/srv/nfs\n[Install]\nWantedBy=multi-user.target\n",
            ),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    let mount = d.resources["mount:srv-nfs.mount"].unit.as_ref().unwrap();
    assert!(!mount.enable && !mount.start, "{mount:?}");
    let auto = d.resources["automount:srv-nfs.automount"]
        .unit
        .as_ref()
        .unwrap();
    assert!(auto.enable && auto.start);
}

const TEMPLATE: &str = "[Unit]\nDescription=worker %i\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n";

#[test]
fn templates_are_installed_and_their_instances_run() {
    // no instance: installed only
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [w]\n"),
            ("services/w/worker@.service", TEMPLATE),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    let u = d.resources["unit:worker@.service"].unit.as_ref().unwrap();
    assert!(
        !u.enable && !u.start && u.runtime_units().is_empty(),
        "{u:?}"
    );

    // DefaultInstance= names the instance
    let with_default = format!("{TEMPLATE}DefaultInstance=main\n");
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [w]\n"),
            ("services/w/worker@.service", &with_default),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    let u = d.resources["unit:worker@.service"].unit.as_ref().unwrap();
    assert!(u.enable && u.start);
    assert_eq!(u.runtime_units(), vec!["worker@main.service"]);

    // service.yaml instances win
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [w]\n"),
            ("services/w/worker@.service", &with_default),
            (
                "services/w/service.yaml",
                "units:\n  worker@.service:\n    instances: [b, a]\n",
            ),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    let u = d.resources["unit:worker@.service"].unit.as_ref().unwrap();
    assert_eq!(
        u.runtime_units(),
        vec!["worker@a.service", "worker@b.service"]
    );
    assert!(
        d.runtime_unit_resource("worker@b.service").is_some()
            && d.runtime_unit_resource("worker@.service").is_none()
    );

    // asking to start a template without instances is an input error naming service.yaml
    let e = err(&[
        ("hosts/h/host.yaml", "services: [w]\n"),
        ("services/w/worker@.service", TEMPLATE),
        (
            "services/w/service.yaml",
            "units:\n  worker@.service:\n    start: true\n",
        ),
    ]);
    assert_eq!(e.location.file, "services/w/service.yaml");
    assert!(e.message.contains("never enabled or started itself"), "{e}");
    let e = err(&[
        ("hosts/h/host.yaml", "services: [w]\n"),
        ("services/w/w.service", WEB),
        (
            "services/w/service.yaml",
            "units:\n  w.service:\n    instances: [a]\n",
        ),
    ]);
    assert!(e.message.contains("only a template unit"), "{e}");
}

#[test]
fn oneshot_without_remain_after_exit_exits_when_done() {
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [o]\n"),
            (
                "services/o/a.service",
                "[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
            ),
            (
                "services/o/b.service",
                "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
            ),
            (
                "services/o/b.service.d/10-no.conf",
                "[Service]\nRemainAfterExit=no\n",
            ),
            (
                "services/o/c.service",
                "[Service]\nType=oneshot\nRemainAfterExit=true\nExecStart=/bin/true\n",
            ),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    let exits = |id: &str| d.resources[id].unit.as_ref().unwrap().exits_when_done();
    assert!(exits("unit:a.service"));
    // the drop-in's later assignment wins
    assert!(exits("unit:b.service"));
    assert!(!exits("unit:c.service"));
}

#[test]
fn a_changed_network_restarts_the_containers_that_name_it() {
    let d = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [app]\n"),
            (
                "services/app/web.container",
                "[Container]\nImage=localhost/x:1\nNetwork=app.network\nVolume=data.volume:/d\n[Install]\nWantedBy=multi-user.target\n",
            ),
            ("services/app/app.network", "[Network]\n"),
            ("services/app/data.volume", "[Volume]\n"),
        ]),
        &rev(),
        "h",
        &paths(),
    )
    .unwrap();
    assert_eq!(
        d.resources["quadlet:app.network"].restarts,
        vec!["web.service"]
    );
    assert_eq!(
        d.resources["quadlet:data.volume"].restarts,
        vec!["web.service"]
    );
    let deps = crate::plan::desired_dependencies(&d);
    assert_eq!(
        deps["quadlet:web.container"],
        BTreeSet::from([
            "quadlet:app.network".to_string(),
            "quadlet:data.volume".to_string()
        ])
    );
}

#[test]
fn two_objects_at_one_host_path_are_rejected() {
    let p = Paths::new(
        Some("/etc/systemd/system".into()),
        Some("/q".into()),
        Some("/s".into()),
        None,
        Some("/etc:/srv"),
    );
    let e = render(
        &repo(&[
            ("hosts/h/host.yaml", "services: [web, evil]\n"),
            ("services/web/web.service", WEB),
            (
                "services/evil/files/etc/systemd/system/web.service",
                "[Service]\nExecStart=/bin/sh -c 'id'\n",
            ),
        ]),
        &rev(),
        "h",
        &p,
    )
    .unwrap_err();
    assert!(
        e.message
            .contains("both write /etc/systemd/system/web.service"),
        "{e}"
    );
}
