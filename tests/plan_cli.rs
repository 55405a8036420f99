//! The plan contract through the real binary: golden JSON and text for the example repo,
//! byte-identical reruns, exit codes, one test per rejection message (error names file and
//! line, exit 1, nothing written), status absent reasons, init and explain.
//!
//! Golden files live in `tests/golden/`; regenerate them with
//! `UPDATE_GOLDEN=1 cargo test --test plan_cli` and review the diff.

mod common;

use std::path::Path;

use common::cli::{Scratch, repo_from_dirs, stderr, stdout, tree};
use core_ops_testkit::copy_dir;

fn example(s: &Scratch) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example");
    let repo = s.path("repo");
    repo_from_dirs(&repo, &[&src], &["v1"]);
    repo.display().to_string()
}

/// The example's host files name the default roots (`/etc`, `/srv`); they are observed
/// beneath a host root in the scratch dir, never on the machine running the test, and unit
/// state comes from a systemd that is not there (a socket in the scratch dir), never from the
/// machine's own.
fn scratch() -> Scratch {
    let mut s = Scratch::new();
    let host = s.path("host");
    let no_systemd = format!("unix:path={}", s.path("no-systemd").display());
    s.env.push(("CORE_OPS_SYSTEMD_ADDRESS".into(), no_systemd));
    for (k, v) in s.env.iter_mut() {
        if k == "CORE_OPS_HOST_FILE_ROOTS" {
            *v = "/etc:/srv".into();
        }
    }
    s.env
        .push(("CORE_OPS_HOST_ROOT".into(), host.display().to_string()));
    s
}

/// Replace what differs between machines and builds: the scratch root, the build revision,
/// the compiler, and the checksum (which covers the build revision; it is verified separately).
fn normalize(s: &Scratch, text: &str) -> String {
    let mut out = text.replace(&s.root().display().to_string(), "<ROOT>");
    let provenance = core_ops::provenance::Provenance::current();
    let build = provenance.build_revision;
    out = out.replace(
        &format!("\"build_revision\": \"{build}\""),
        "\"build_revision\": \"<BUILD>\"",
    );
    out = out.replace(
        &format!("\"rustc\": \"{}\"", provenance.rustc),
        "\"rustc\": \"<RUSTC>\"",
    );
    let version = env!("CARGO_PKG_VERSION");
    out = out.replace(
        &format!("\"version\": \"{version}\""),
        "\"version\": \"<VERSION>\"",
    );
    // checksum values
    let mut res = String::new();
    for line in out.lines() {
        if let Some(i) = line.find("checksum")
            && let Some(j) = line[i..].find("sha256:")
        {
            res.push_str(&line[..i + j]);
            res.push_str("<CHECKSUM>");
            res.push_str(&line[i + j + 7 + 64..]);
            res.push('\n');
            continue;
        }
        res.push_str(line);
        res.push('\n');
    }
    res
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run UPDATE_GOLDEN=1 cargo test --test plan_cli",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "golden {name} differs; if intended, UPDATE_GOLDEN=1"
    );
}

#[test]
fn plan_of_the_example_matches_golden_json_and_text() {
    let s = scratch();
    let repo = example(&s);
    for host in ["alpha", "beta"] {
        let o = s.run(&[
            "--json", "plan", "--repo", &repo, "--rev", "v1", "--host", host,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let json = stdout(&o);
        let plan = core_ops::plan::from_json_bytes(json.as_bytes(), "stdout").unwrap();
        assert_eq!(plan.checksum, core_ops::plan::checksum(&plan));
        golden(&format!("plan-{host}.json"), &normalize(&s, &json));
        let o = s.run(&["plan", "--repo", &repo, "--rev", "v1", "--host", host]);
        assert!(o.status.success());
        golden(&format!("plan-{host}.txt"), &normalize(&s, &stdout(&o)));
    }
}

#[test]
fn two_runs_give_identical_bytes_and_out_file_matches() {
    let s = scratch();
    let repo = example(&s);
    let out = s.path("plan.json");
    let args = [
        "--json", "plan", "--repo", &repo, "--rev", "v1", "--host", "alpha",
    ];
    let a = s.run(&args);
    let b = s.run(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(std::fs::read(&out).unwrap(), a.stdout);
}

#[test]
fn detailed_exitcode_is_0_without_changes_2_with_changes_1_on_error() {
    let s = scratch();
    let src = s.path("src");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example"),
        &src,
    )
    .unwrap();
    std::fs::create_dir_all(src.join("hosts/empty")).unwrap();
    std::fs::write(src.join("hosts/empty/host.yaml"), "services: []\n").unwrap();
    let repo = s.path("repo");
    repo_from_dirs(&repo, &[&src], &[]);
    let r = repo.to_str().unwrap();
    let code = |host: &str| {
        s.run(&["plan", "--repo", r, "--host", host, "--detailed-exitcode"])
            .status
            .code()
    };
    assert_eq!(code("empty"), Some(0));
    assert_eq!(code("alpha"), Some(2));
    assert_eq!(code("nosuchhost"), Some(1));
    // without the flag, changes are not an error
    assert_eq!(
        s.run(&["plan", "--repo", r, "--host", "alpha"])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn source_repo_alias_and_environment_variables_are_read() {
    let s = scratch();
    let repo = example(&s);
    let a = s.run(&[
        "--json",
        "plan",
        "--source-repo",
        &repo,
        "--rev",
        "v1",
        "--host",
        "beta",
    ]);
    let b = s.run_env(
        &["--json", "plan"],
        &[
            ("CORE_OPS_REPO", &repo),
            ("CORE_OPS_REV", "v1"),
            ("CORE_OPS_HOST", "beta"),
        ],
    );
    assert!(a.status.success() && b.status.success(), "{}", stderr(&b));
    assert_eq!(a.stdout, b.stdout);
    // the flag wins over the environment
    let c = s.run_env(
        &["--json", "plan", "--host", "beta"],
        &[
            ("CORE_OPS_REPO", &repo),
            ("CORE_OPS_REV", "v1"),
            ("CORE_OPS_HOST", "alpha"),
        ],
    );
    assert_eq!(a.stdout, c.stdout);
}

#[test]
fn unknown_ref_is_a_clear_error() {
    let s = scratch();
    let repo = example(&s);
    let o = s.run(&["plan", "--repo", &repo, "--rev", "nope", "--host", "alpha"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown ref 'nope'"), "{}", stderr(&o));
}

/// Build a one-commit repo from the example plus changes, plan it, and expect a rejection.
fn rejected(changes: &[(&str, Option<&str>)], host: &str) -> (String, Scratch) {
    let s = scratch();
    let src = s.path("src");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example"),
        &src,
    )
    .unwrap();
    for (p, c) in changes {
        let path = src.join(p);
        match c {
            Some(c) => {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, c).unwrap();
            }
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
    let repo = s.path("repo");
    repo_from_dirs(&repo, &[&src], &[]);
    let out = s.path("plan.json");
    let o = s.run(&[
        "plan",
        "--repo",
        repo.to_str().unwrap(),
        "--host",
        host,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a rejection: {}",
        stdout(&o)
    );
    assert!(!out.exists(), "a rejected plan must not be written");
    assert!(tree(&s.path("units")).is_empty());
    assert!(!s.path("state/status.json").exists());
    (stderr(&o), s)
}

#[test]
fn rejects_mount_name_that_does_not_match_where() {
    let (err, _s) = rejected(
        &[
            ("services/media/srv-media.mount", None),
            (
                "services/media/srv-other.mount",
                Some("[Mount]\nWhat=tmpfs\nWhere=/srv/media\nType=tmpfs\n"),
            ),
        ],
        "beta",
    );
    assert!(
        err.contains(
            "services/media/srv-other.mount:3: mount unit name does not match Mount Where"
        ),
        "{err}"
    );
}

#[test]
fn rejects_automount_name_that_does_not_match_where() {
    let (err, _s) = rejected(
        &[(
            "services/nas/srv-nas.automount",
            Some("[Automount]\nWhere=/srv/elsewhere\n"),
        )],
        "alpha",
    );
    assert!(
        err.contains(
            "services/nas/srv-nas.automount:2: automount unit name does not match Automount Where"
        ),
        "{err}"
    );
}

#[test]
fn rejects_unsupported_x_coreops_field() {
    let (err, _s) = rejected(
        &[(
            "services/media/srv-media.mount",
            Some(
                "[Mount]\nWhat=tmpfs\nWhere=/srv/media\n[X-CoreOps]\nCreateMountpoint=true\nAutomount=true\n",
            ),
        )],
        "beta",
    );
    assert!(
        err.contains("services/media/srv-media.mount:6: unsupported X-CoreOps field 'Automount'"),
        "{err}"
    );
}

#[test]
fn rejects_host_override_that_changes_where() {
    let (err, _s) = rejected(
        &[(
            "hosts/beta/overrides/media/srv-media.mount.d/60-move.conf",
            Some("[Mount]\nWhere=/srv/moved\n"),
        )],
        "beta",
    );
    assert!(
        err.contains("hosts/beta/overrides/media/srv-media.mount.d/60-move.conf:2: host override changes Mount Where="),
        "{err}"
    );
}

#[test]
fn rejects_host_file_outside_allowed_roots() {
    let (err, _s) = rejected(
        &[("services/web/files/usr/local/bin/tool", Some("#!/bin/sh\n"))],
        "beta",
    );
    assert!(
        err.contains("services/web/files/usr/local/bin/tool: host file target /usr/local/bin/tool is outside the allowed roots /etc:/srv"),
        "{err}"
    );
}

#[test]
fn rejects_symlinks_leaving_the_repository() {
    let s = scratch();
    let src = s.path("src");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example"),
        &src,
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/shadow", src.join("services/web/files/etc/web/secret"))
        .unwrap();
    let repo = s.path("repo");
    repo_from_dirs(&repo, &[&src], &[]);
    let o = s.run(&["plan", "--repo", repo.to_str().unwrap(), "--host", "beta"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(
            "services/web/files/etc/web/secret: absolute symlink to '/etc/shadow' is not allowed"
        ),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(src.join("services/web/files/etc/web/secret")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../../etc/passwd",
        src.join("services/web/files/etc/web/secret"),
    )
    .unwrap();
    let repo2 = s.path("repo2");
    repo_from_dirs(&repo2, &[&src], &[]);
    let o = s.run(&["plan", "--repo", repo2.to_str().unwrap(), "--host", "beta"]);
    assert!(
        stderr(&o).contains("leaves the repository"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn rejects_unknown_yaml_keys_with_line() {
    let (err, _s) = rejected(
        &[(
            "hosts/beta/host.yaml",
            Some("services: [web]\npolcy:\n  auto_rollback: false\n"),
        )],
        "beta",
    );
    assert!(
        err.contains("hosts/beta/host.yaml:2: unknown field `polcy`"),
        "{err}"
    );
}

#[test]
fn status_reports_absent_snapshots_with_their_reason() {
    let s = scratch();
    let state = s.path("state");
    std::fs::create_dir_all(&state).unwrap();
    let reason = |content: Option<&[u8]>| {
        let f = state.join("status.json");
        match content {
            Some(c) => std::fs::write(&f, c).unwrap(),
            None => {
                let _ = std::fs::remove_file(&f);
            }
        }
        let o = s.run(&["--json", "status"]);
        assert!(o.status.success());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["state"], "absent");
        v["absent"]["reason"].as_str().unwrap().to_string()
    };
    assert_eq!(reason(None), "missing");
    assert_eq!(
        reason(Some(b"{\"schema_version\": 1, \"kind\": \"CoreOpsSt")),
        "partial"
    );
    assert_eq!(reason(Some(b"not json")), "invalid");
    assert_eq!(
        reason(Some(b"{\"schema_version\": 7}")),
        "unsupported_version"
    );
    let o = s.run(&["status"]);
    assert!(
        stdout(&o).contains("status     absent (unsupported version:"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn init_persists_the_target_and_later_commands_need_no_repo() {
    let s = scratch();
    let repo = example(&s);
    let o = s.run(&["init", &repo, "v1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(v1)"), "{}", stdout(&o));
    let with = s.run(&[
        "--json", "plan", "--repo", &repo, "--rev", "v1", "--host", "beta",
    ]);
    let without = s.run(&["--json", "plan", "--host", "beta"]);
    assert_eq!(with.stdout, without.stdout);
    // a bad ref is refused and the old target stays
    let o = s.run(&["init", &repo, "nope"]);
    assert_eq!(o.status.code(), Some(1));
    let t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("state/target.json")).unwrap()).unwrap();
    assert_eq!(t["requested_ref"], "v1");
}

#[test]
fn explain_shows_layers_digest_action_and_edges() {
    let s = scratch();
    let repo = example(&s);
    let o = s.run(&[
        "--json",
        "explain",
        "web.service",
        "--repo",
        &repo,
        "--rev",
        "v1",
        "--host",
        "alpha",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["id"], "unit:web.service");
    let layers: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        vec![
            "services/web/web.service",
            "services/web/web.service.d/10-limits.conf",
            "hosts/alpha/overrides/web/web.service.d/50-alpha.conf"
        ]
    );
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(v["action"]["action"], "create");
    assert_eq!(
        v["depends_on"],
        serde_json::json!([
            "dropin:web.service.d/10-limits.conf",
            "dropin:web.service.d/50-alpha.conf",
            "file:/etc/web/app.env"
        ])
    );
    // the unit comes after its drop-ins (their change restarts it), not before them
    assert!(
        !v["required_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "dropin:web.service.d/50-alpha.conf")
    );
    assert!(v["normalized"].as_str().unwrap().contains("MemoryMax=512M"));
    let text = s.run(&[
        "explain",
        "unit:web.service",
        "--repo",
        &repo,
        "--rev",
        "v1",
        "--host",
        "alpha",
    ]);
    let t = stdout(&text);
    assert!(
        t.contains("hosts/alpha/overrides/web/web.service.d/50-alpha.conf @ "),
        "{t}"
    );
    let missing = s.run(&[
        "explain",
        "nope.service",
        "--repo",
        &repo,
        "--host",
        "alpha",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no object 'nope.service'"));
}

/// Units systemd would refuse or misread are blocked at plan with `file:line` (issue 13); what
/// systemd silently drops is a warning finding. Nothing is written.
#[test]
fn units_systemd_refuses_are_blocked_with_file_and_line() {
    let s = scratch();
    let src = s.path("src");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example"),
        &src,
    )
    .unwrap();
    for (p, c) in [
        // valid alone, refused once merged over backup.service (Type=oneshot)
        (
            "hosts/beta/overrides/backup/backup.service.d/60-restart.conf",
            "[Service]\nRestart=always\n",
        ),
        (
            "services/web/web.service.d/20-typo.conf",
            "[Service]\nExecStrat=/bin/true\n",
        ),
        ("services/web/empty.service", ""),
        (
            "services/media/media-indexer.service",
            "[Unit]\nWants=nothere.service\n[Service]\nExecStart=/bin/true\n",
        ),
    ] {
        let path = src.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, c).unwrap();
    }
    let repo = s.path("repo");
    repo_from_dirs(&repo, &[&src], &[]);
    let o = s.run(&[
        "--json",
        "plan",
        "--repo",
        repo.to_str().unwrap(),
        "--host",
        "beta",
    ]);
    let plan: serde_json::Value =
        serde_json::from_str(&stdout(&o)).unwrap_or_else(|_| panic!("{}", stderr(&o)));
    let action = |id: &str| {
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no action {id}"))
            .clone()
    };
    for (id, reason) in [
        (
            "unit:backup.service",
            "systemd rejects it: hosts/beta/overrides/backup/backup.service.d/60-restart.conf:2: backup.service: Service has Restart= set to either always or on-success, which isn't allowed for Type=oneshot services. Refusing.",
        ),
        (
            "dropin:web.service.d/20-typo.conf",
            "systemd rejects it: services/web/web.service.d/20-typo.conf:2: Unknown key 'ExecStrat' in section [Service], ignoring.",
        ),
        (
            "unit:empty.service",
            "systemd rejects it: services/web/empty.service: empty unit file: systemd treats it as masked",
        ),
    ] {
        let a = action(id);
        assert_eq!(a["action"], "blocked", "{id}: {a}");
        assert_eq!(a["cause"], "invalid_unit", "{id}: {a}");
        assert_eq!(a["reason"], reason, "{id}");
    }
    let warning = serde_json::json!({
        "kind": "warning",
        "id": "unit:media-indexer.service",
        "reason": "services/media/media-indexer.service:2: media-indexer.service: Wants=nothere.service names a unit this host neither selects nor has; systemd ignores it",
    });
    assert!(
        plan["findings"].as_array().unwrap().contains(&warning),
        "{:#}",
        plan["findings"]
    );
    assert!(
        plan["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| { !w.as_str().unwrap().starts_with("units not validated") })
    );
    // a plan with blocked actions changes nothing (docs/design.md section 10, "Exit codes":
    // exit 1 here; `plan` decides its exit code in src/cli)
    assert!(tree(&s.path("units")).is_empty());
    assert!(!s.path("state/status.json").exists());
}
