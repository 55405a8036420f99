//! Quadlet validation: output parsing on the real generator's words, process plumbing on a
//! stand-in script, and the real generator when one is at hand.

use super::*;
use crate::config::Scratch;
use crate::render::render;
use crate::source::{RepoEntry, Revision};
use std::os::unix::fs::PermissionsExt;

fn scratch(generator: QuadletGenerator) -> Scratch {
    let mut s = crate::config::scratch();
    s.paths.quadlet_generator = generator;
    s
}

const WEB: &str = "[Container]\nImage=localhost/mini:1\nExec=/bin/sh\nNetwork=none\n[Install]\nWantedBy=multi-user.target\n";

fn desired(s: &Scratch, files: &[(&str, &str)]) -> DesiredState {
    let mut m: BTreeMap<String, RepoEntry> = BTreeMap::new();
    m.insert(
        "hosts/h/host.yaml".into(),
        RepoEntry::File {
            data: b"services: [app]\n".to_vec(),
            executable: false,
        },
    );
    for (p, c) in files {
        m.insert(
            format!("services/app/{p}"),
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

/// A stand-in generator: a shell script with a fixed answer, for the process plumbing.
fn fake_generator(s: &Scratch, body: &str) -> PathBuf {
    let p = s.dir.path().join("fake-quadlet");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The real generator if this machine has one (scripts/test.sh exports the bed's).
fn real_generator() -> Option<PathBuf> {
    std::env::var_os("CORE_OPS_TESTBED_QUADLET_GENERATOR")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| resolve_generator(&QuadletGenerator::Auto).ok())
}

#[test]
fn no_quadlet_files_no_process_no_warning() {
    let s = scratch(QuadletGenerator::Path("/nonexistent/quadlet".into()));
    let d = desired(&s, &[("a.service", "[Service]\nExecStart=/bin/true\n")]);
    assert_eq!(check(&d, &s.paths), QuadletCheck::default());
}

#[test]
fn no_generator_is_a_warning_not_an_error() {
    for (setting, why) in [
        (
            QuadletGenerator::Disabled,
            "validation is off: CORE_OPS_QUADLET_GENERATOR=none",
        ),
        (
            QuadletGenerator::Path("/nonexistent/quadlet".into()),
            "/nonexistent/quadlet does not exist",
        ),
    ] {
        let s = scratch(setting);
        let d = desired(&s, &[("web.container", WEB)]);
        let c = check(&d, &s.paths);
        assert!(c.rejected.is_empty());
        assert_eq!(c.warnings.len(), 1, "{c:?}");
        assert!(
            c.warnings[0].starts_with("Quadlet files not validated: no generator"),
            "{c:?}"
        );
        assert!(c.warnings[0].contains(why), "{c:?}");
    }
}

#[test]
fn the_generator_sees_the_managed_set_in_its_own_dir_in_dry_run_mode() {
    let mut s = scratch(QuadletGenerator::Auto);
    // the stand-in records its arguments and the files it was shown, then succeeds
    let log = s.dir.path().join("seen");
    let g = fake_generator(
        &s,
        &format!(
            "echo \"$*\" > {log}; (cd \"$QUADLET_UNIT_DIRS\" && find . -type f | sort) >> {log}; echo ---web.service---",
            log = log.display()
        ),
    );
    s.paths.quadlet_generator = QuadletGenerator::Path(g);
    let d = desired(
        &s,
        &[
            ("web.container", WEB),
            (
                "web.container.d/10-env.conf",
                "[Container]\nEnvironment=A=1\n",
            ),
            // a drop-in of the generated unit goes to the unit dir: not the generator's business
            ("web.service.d/20-x.conf", "[Service]\nEnvironment=B=1\n"),
        ],
    );
    let c = check(&d, &s.paths);
    assert_eq!(c.rejected, BTreeMap::new());
    assert_eq!(c.warnings, Vec::<String>::new());
    let seen = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        seen,
        "-dryrun -no-kmsg-log\n./web.container\n./web.container.d/10-env.conf\n"
    );
    // nothing was written to the real Quadlet dir, and the temp dir is gone
    assert!(!s.paths.quadlet_dir.exists());
}

#[test]
fn a_generator_that_fails_silently_blocks_every_quadlet_file() {
    let mut s = scratch(QuadletGenerator::Auto);
    s.paths.quadlet_generator = QuadletGenerator::Path(fake_generator(&s, "exit 1"));
    let d = desired(&s, &[("web.container", WEB), ("db.container", WEB)]);
    let c = check(&d, &s.paths);
    assert_eq!(
        c.rejected.keys().collect::<Vec<_>>(),
        ["quadlet:db.container", "quadlet:web.container"]
    );
    assert!(c.rejected["quadlet:web.container"].contains("without saying why"));
}

#[test]
fn a_generator_that_cannot_start_is_a_warning() {
    let mut s = scratch(QuadletGenerator::Auto);
    let g = s.dir.path().join("not-executable");
    std::fs::write(&g, "").unwrap();
    s.paths.quadlet_generator = QuadletGenerator::Path(g);
    let d = desired(&s, &[("web.container", WEB)]);
    let c = check(&d, &s.paths);
    assert!(c.rejected.is_empty());
    assert!(
        c.warnings[0].starts_with("Quadlet files not validated: running"),
        "{c:?}"
    );
}

/// stderr of quadlet 5.4.2 (Debian 13) `-dryrun` on this very set, captured verbatim with the
/// temp dir `/tmp/qt/d` (see docs/quadlet-in-testbed.md for the binary).
const REAL_STDERR: &str = "\
quadlet-generator[17532]: Loading source unit file /tmp/qt/d/bogus.container
quadlet-generator[17532]: Loading source unit file /tmp/qt/d/data.volume
quadlet-generator[17532]: Loading source unit file /tmp/qt/d/net.container
quadlet-generator[17532]: Loading source unit file /tmp/qt/d/noimage.container
quadlet-generator[17532]: Loading source unit file /tmp/qt/d/web.container
quadlet-generator[17532]: Loading source drop-in file /tmp/qt/d/web.container.d/10-a.conf
quadlet-generator[17532]: Warning: bogus.container specifies the image \"x\" which not a fully qualified image name. This is not ideal for performance and security reasons. See the podman-pull manpage discussion of short-name-aliases.conf for details.
quadlet-generator[17532]: Warning: net.container specifies the image \"x\" which not a fully qualified image name. This is not ideal for performance and security reasons. See the podman-pull manpage discussion of short-name-aliases.conf for details.
quadlet-generator[17532]: converting \"bogus.container\": unsupported key 'Bogus' in group 'Container' in /tmp/qt/d/bogus.container
converting \"net.container\": requested Quadlet unit missing.network was not found
converting \"noimage.container\": no Image or Rootfs key specified
";

#[test]
fn real_generator_output_is_attributed_to_files() {
    let s = scratch(QuadletGenerator::Disabled);
    let d = desired(
        &s,
        &[
            ("web.container", WEB),
            (
                "web.container.d/10-a.conf",
                "[Container]\nEnvironment=A=1\n",
            ),
            ("bogus.container", "[Container]\nImage=x\nBogus=1\n"),
            (
                "net.container",
                "[Container]\nImage=x\nNetwork=missing.network\n",
            ),
            ("noimage.container", "[Container]\nExec=/bin/true\n"),
            ("data.volume", "[Volume]\n"),
        ],
    );
    let set = quadlet_set(&d, &s.paths.quadlet_dir);
    let run = Run {
        success: false,
        stdout: "---data-volume.service---\n[Unit]\n---web.service---\n[Unit]\n".into(),
        stderr: REAL_STDERR.into(),
        dir: PathBuf::from("/tmp/qt/d"),
    };
    let c = interpret(&d, &set, &run, &s.paths.quadlet_dir);
    let q = s.paths.quadlet_dir.display();
    assert_eq!(
        c.rejected,
        BTreeMap::from([
            (
                "quadlet:bogus.container".to_string(),
                format!(
                    "converting \"bogus.container\": unsupported key 'Bogus' in group 'Container' in {q}/bogus.container"
                )
            ),
            (
                "quadlet:noimage.container".to_string(),
                "converting \"noimage.container\": no Image or Rootfs key specified".to_string()
            ),
        ])
    );
    // missing.network is not managed: a warning (it may exist on the host), not a rejection
    assert_eq!(c.warnings.len(), 3, "{c:#?}");
    assert!(c.warnings[0].starts_with("Quadlet generator: bogus.container specifies the image"));
    assert!(c.warnings[1].starts_with("Quadlet generator: net.container specifies the image"));
    assert!(
        c.warnings[2]
            .starts_with("quadlet:net.container not fully validated: it refers to missing.network"),
        "{c:#?}"
    );
}

#[test]
fn a_reference_inside_the_managed_set_that_fails_is_a_rejection() {
    let s = scratch(QuadletGenerator::Disabled);
    let d = desired(
        &s,
        &[
            ("web.container", "[Container]\nImage=x\nNetwork=n.network\n"),
            ("n.network", "[Network]\n"),
        ],
    );
    let set = quadlet_set(&d, &s.paths.quadlet_dir);
    let run = Run {
        success: false,
        stdout: String::new(),
        stderr: "quadlet-generator[1]: converting \"web.container\": requested Quadlet unit n.network was not found\n".into(),
        dir: PathBuf::from("/tmp/x"),
    };
    let c = interpret(&d, &set, &run, &s.paths.quadlet_dir);
    assert_eq!(
        c.rejected.keys().collect::<Vec<_>>(),
        ["quadlet:web.container"]
    );
}

#[test]
fn generated_names_are_cross_checked() {
    let s = scratch(QuadletGenerator::Disabled);
    let d = desired(&s, &[("web.container", WEB)]);
    let set = quadlet_set(&d, &s.paths.quadlet_dir);
    let run = Run {
        success: true,
        stdout: "---other.service---\n".into(),
        stderr: String::new(),
        dir: PathBuf::from("/tmp/x"),
    };
    let c = interpret(&d, &set, &run, &s.paths.quadlet_dir);
    assert_eq!(
        c.warnings,
        [
            "quadlet:web.container: core-ops expects the generated unit web.service, but the generator made other.service"
        ]
    );
}

#[test]
fn with_the_real_generator() {
    let Some(g) = real_generator() else {
        core_ops_testkit::skip_or_fail::<()>(
            "no Quadlet generator on this machine: scripts/test.sh provides one through \
             CORE_OPS_TESTBED_QUADLET_GENERATOR",
        );
        return;
    };
    let s = scratch(QuadletGenerator::Path(g));
    // every kind core-ops knows, with its drop-in: accepted, and named as core-ops predicts
    let good = desired(
        &s,
        &[
            ("web.container", WEB),
            (
                "web.container.d/10-env.conf",
                "[Container]\nEnvironment=A=1\n",
            ),
            ("data.volume", "[Volume]\n"),
            ("net.network", "[Network]\n"),
            ("p.pod", "[Pod]\n"),
            (
                "named.container",
                "[Container]\nImage=localhost/mini:1\nServiceName=custom\n",
            ),
        ],
    );
    let c = check(&good, &s.paths);
    assert_eq!(c.rejected, BTreeMap::new(), "{c:#?}");
    assert_eq!(c.warnings, Vec::<String>::new(), "{c:#?}");

    // missing Image=, and an unknown key that only a drop-in brings in
    let bad = desired(
        &s,
        &[
            ("web.container", WEB),
            ("web.container.d/10-env.conf", "[Container]\nBogus=1\n"),
            ("noimage.container", "[Container]\nExec=/bin/true\n"),
        ],
    );
    let c = check(&bad, &s.paths);
    let q = s.paths.quadlet_dir.display();
    assert_eq!(
        c.rejected,
        BTreeMap::from([
            (
                "quadlet:noimage.container".to_string(),
                "converting \"noimage.container\": no Image or Rootfs key specified".to_string()
            ),
            (
                "quadlet:web.container".to_string(),
                format!(
                    "converting \"web.container\": unsupported key 'Bogus' in group 'Container' in {q}/web.container"
                )
            ),
        ]),
        "{c:#?}"
    );
}

#[test]
fn only_references_outside_the_managed_set_block_nothing() {
    let s = scratch(QuadletGenerator::Disabled);
    let d = desired(
        &s,
        &[(
            "net.container",
            "[Container]\nImage=x\nNetwork=other.network\n",
        )],
    );
    let set = quadlet_set(&d, &s.paths.quadlet_dir);
    let run = Run {
        success: false,
        stdout: String::new(),
        stderr: "quadlet-generator[1]: converting \"net.container\": requested Quadlet unit other.network was not found\n".into(),
        dir: PathBuf::from("/tmp/x"),
    };
    let c = interpret(&d, &set, &run, &s.paths.quadlet_dir);
    assert_eq!(c.rejected, BTreeMap::new());
    assert_eq!(c.warnings.len(), 1, "{c:#?}");
    assert!(c.warnings[0].contains("it refers to other.network"));
}

#[test]
fn generated_units_are_split_by_their_marker_lines() {
    let out =
        "---data-volume.service---\n[Unit]\nA=1\n\n---web.service---\n[Service]\nExecStart=/x\n";
    assert_eq!(
        generated_units(out),
        BTreeMap::from([
            (
                "data-volume.service".to_string(),
                "[Unit]\nA=1\n\n".to_string()
            ),
            (
                "web.service".to_string(),
                "[Service]\nExecStart=/x\n".to_string()
            ),
        ])
    );
    assert!(generated_units("").is_empty());
}
