//! Quadlet on a real generator: the test bed has quadlet 5.4.2 installed as
//! `podman-system-generator` and, unless `CORE_OPS_TESTBED_CONTAINERS=0`, Debian 13's podman
//! with a locally imported image (`scripts/quadlet-bed.sh`). The real `core-ops` binary runs on
//! the host, writes into the directory the bed sees as `/etc/containers/systemd`, and validates
//! with the same quadlet binary.
//!
//! - a `.container` and its drop-in: apply, reload, the generated unit is loaded (and its
//!   container runs), a drop-in change restarts it, removal prunes the generated unit;
//! - a file the generator rejects: apply exits 1 with the generator's own message, and nothing
//!   is written, reloaded or recorded.
//!
//! The tests of this binary take turns (one lock): the "no reload" witness below must not see
//! another test's reload.

mod common;

use std::ops::Deref;
use std::sync::Mutex;

use common::bed::QuadletBed;
use common::cli::{stderr, stdout, tree};
use common::world::{World, action, world};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// Repository files of one revision: (path, content).
type Files = Vec<(String, String)>;

/// The shared test world, pointed at the bed's Quadlet dir and validating with the bed's
/// quadlet binary.
struct Q {
    w: World,
    q: &'static QuadletBed,
}

impl Deref for Q {
    type Target = World;
    fn deref(&self) -> &World {
        &self.w
    }
}

fn qworld(test: &str) -> Option<Q> {
    let mut w = world(test)?;
    let q = w.bed.quadlet();
    for (k, v) in w.s.env.iter_mut() {
        match k.as_str() {
            "CORE_OPS_QUADLET_DIR" => *v = q.quadlet_dir.display().to_string(),
            "CORE_OPS_QUADLET_GENERATOR" => *v = q.generator.display().to_string(),
            _ => {}
        }
    }
    Some(Q { w, q })
}

impl Q {
    fn commit_files(&mut self, files: &[(String, String)]) -> String {
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_bytes()))
            .collect();
        self.w.repo.commit_files(&refs, "rev").expect("commit")
    }

    /// A container that exits on SIGTERM (busybox `sleep` as PID 1 would ignore it and
    /// make every stop take podman's 10 s timeout).
    fn container(&self, extra: &str) -> String {
        let image = self
            .q
            .image
            .as_deref()
            .unwrap_or("localhost/core-ops-mini:1");
        format!(
            "[Unit]\nDescription=core-ops Quadlet test\n\n[Container]\nImage={image}\nExec=/bin/busybox sh -c \"trap 'exit 0' TERM; sleep 1000 & wait\"\nNetwork=none\n{extra}\n[Install]\nWantedBy=multi-user.target\n"
        )
    }

    fn host(&self, services: &str) -> (String, String) {
        (
            "hosts/h/host.yaml".into(),
            format!("services: [{services}]\n"),
        )
    }

    /// Without podman in the bed the container cannot start: keep it stopped, test up to
    /// "generated unit loaded".
    fn service_yaml(&self, name: &str) -> Option<(String, String)> {
        (!self.q.containers).then(|| {
            (
                "services/app/service.yaml".into(),
                format!("units:\n  {name}: {{ start: false }}\n"),
            )
        })
    }
}

/// `name=ms` of each phase of a results document, for the test log (timings of the bed).
fn phases(r: &Value) -> String {
    r["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}={}ms",
                p["name"].as_str().unwrap_or("?"),
                p["duration_ms"]
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn container_with_drop_in_runs_restarts_on_change_and_is_pruned() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut w) = qworld("qweb") else { return };
    let p = w.p.clone();
    let file = format!("{p}.container");
    let unit = format!("{p}.service");
    let dropin = format!("{file}.d/10-env.conf");
    let v1_files = |w: &Q, level: &str| {
        let mut f = vec![
            w.host("app"),
            (format!("services/app/{file}"), w.container("")),
            (
                format!("services/app/{dropin}"),
                format!("[Container]\nEnvironment=CO_LEVEL={level}\n"),
            ),
        ];
        f.extend(w.service_yaml(&file));
        f
    };
    let f1 = v1_files(&w, "1");
    let v1 = w.commit_files(&f1);

    // plan: validated by the generator, no warning about it
    let plan = w.plan(&v1);
    assert!(
        !plan["warnings"].to_string().contains("Quadlet"),
        "{:#}",
        plan["warnings"]
    );
    assert_eq!(plan["summary"]["create"], 2, "{plan:#}");
    assert_eq!(
        action(&plan, &format!("quadlet:{file}"))["unit"],
        unit.as_str()
    );

    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["outcome"], "converged");
    assert_eq!(r["calls"]["reloads"], 1);
    eprintln!("quadlet_bed: first apply phases: {}", phases(&r));
    assert!(w.q.quadlet_dir.join(&file).is_file());
    assert!(w.q.quadlet_dir.join(&dropin).is_file());

    // systemd's own view: the generator made the unit from our file
    assert_eq!(w.show(&unit, "LoadState"), "loaded");
    assert_eq!(
        w.show(&unit, "FragmentPath"),
        format!("/run/systemd/generator/{unit}")
    );
    assert_eq!(
        w.show(&unit, "SourcePath"),
        format!("/etc/containers/systemd/{file}")
    );
    let generated = std::fs::read_to_string(w.bed.dir.join("run/systemd/generator").join(&unit))
        .expect("generated unit on disk");
    assert!(generated.contains("--env CO_LEVEL=1"), "{generated}");
    if w.q.containers {
        assert_eq!(w.show(&unit, "ActiveState"), "active");
        assert_eq!(w.show(&unit, "SubState"), "running");
        let ps = w.bed.exec_ok([
            "podman",
            "ps",
            "--format",
            "{{.Names}} {{.Image}}",
            "--filter",
            &format!("name=systemd-{p}"),
        ]);
        assert_eq!(
            ps.trim(),
            format!("systemd-{p} {}", w.q.image.as_deref().unwrap())
        );
    } else {
        eprintln!(
            "!!!!! no podman in the bed (CORE_OPS_TESTBED_CONTAINERS=0): tested up to 'generated unit loaded' !!!!!"
        );
    }

    // the same revision again: nothing to do
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["changed_objects"], 0);
    assert_eq!(r["calls"]["reloads"], 0);
    assert_eq!(r["calls"]["jobs"], 0);

    // a drop-in change: rewritten, one reload, the generated unit restarted with it
    let pid_before = w.show(&unit, "MainPID");
    let f2 = v1_files(&w, "2");
    let v2 = w.commit_files(&f2);
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["calls"]["reloads"], 1);
    let generated = std::fs::read_to_string(w.bed.dir.join("run/systemd/generator").join(&unit))
        .expect("generated unit on disk");
    assert!(generated.contains("--env CO_LEVEL=2"), "{generated}");
    if w.q.containers {
        let jobs: Vec<String> = r["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                format!(
                    "{} {}",
                    j["kind"].as_str().unwrap(),
                    j["unit"].as_str().unwrap()
                )
            })
            .collect();
        assert!(jobs.contains(&format!("restart {unit}")), "{jobs:?}");
        assert_eq!(w.show(&unit, "ActiveState"), "active");
        assert_ne!(w.show(&unit, "MainPID"), pid_before, "not restarted");
        eprintln!("quadlet_bed: drop-in change phases: {}", phases(&r));
    }

    // removed from the desired state: stopped, files gone, generated unit gone
    let v3 = w.commit_files(&[w.host("")]);
    let (code, r) = w.apply(&v3, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["outcome"], "converged");
    eprintln!("quadlet_bed: removal phases: {}", phases(&r));
    assert!(!w.q.quadlet_dir.join(&file).exists());
    assert!(!w.q.quadlet_dir.join(format!("{file}.d")).exists());
    assert_eq!(w.show(&unit, "LoadState"), "not-found");
    assert_eq!(w.show(&unit, "ActiveState"), "inactive");
    assert!(!w.bed.dir.join("run/systemd/generator").join(&unit).exists());
    if w.q.containers {
        let ps = w.bed.exec_ok([
            "podman",
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("name=systemd-{p}"),
        ]);
        assert_eq!(ps.trim(), "", "container left behind");
    }
}

#[test]
fn a_file_the_generator_rejects_changes_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut w) = qworld("qbad") else { return };
    let p = w.p.clone();
    let good = format!("{p}-good.container");
    let bad = format!("{p}-bad.container");

    // an independent witness of "no reload": a loaded unit whose file changed on disk after
    // the last reload makes systemd say NeedDaemonReload=yes until the next reload (it is kept
    // active so systemd does not unload it)
    let witness = format!("{p}-witness.service");
    let oneshot = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n";
    w.bed.write_unit(&witness, oneshot);
    w.bed.exec_ok(["systemctl", "daemon-reload"]);
    w.bed.exec_ok(["systemctl", "start", &witness]);
    w.bed
        .write_unit(&witness, &format!("{oneshot}Environment=CHANGED=1\n"));
    assert_eq!(w.show(&witness, "NeedDaemonReload"), "yes");

    let quadlet_before = tree(&w.q.quadlet_dir);
    let units_before = tree(&w.bed.unit_dir);

    let cases: Vec<(&str, Files, String, String)> = vec![
        (
            "missing Image=",
            vec![
                w.host("app"),
                (format!("services/app/{good}"), w.container("")),
                (
                    format!("services/app/{bad}"),
                    "[Container]\nExec=/bin/true\n".into(),
                ),
            ],
            format!("quadlet:{bad}"),
            format!("converting \"{bad}\": no Image or Rootfs key specified"),
        ),
        (
            "unknown key in a drop-in",
            vec![
                w.host("app"),
                (format!("services/app/{good}"), w.container("")),
                (
                    format!("services/app/{good}.d/10-x.conf"),
                    "[Container]\nBogus=1\n".into(),
                ),
            ],
            format!("quadlet:{good}"),
            format!("converting \"{good}\": unsupported key 'Bogus' in group 'Container'"),
        ),
    ];
    for (what, files, id, message) in cases {
        let rev = w.commit_files(&files);

        // plan names the file and carries the generator's message
        let plan = w.plan(&rev);
        assert_eq!(plan["summary"]["blocked"], 1, "{what}: {plan:#}");
        let a = action(&plan, &id);
        assert_eq!(a["action"], "blocked", "{what}: {a:#}");
        assert_eq!(a["cause"], "invalid_quadlet", "{what}");
        assert!(
            a["reason"].as_str().unwrap().contains(&message),
            "{what}: {a:#}"
        );
        let o = w.run(&["plan", "--rev", &rev]);
        assert!(stdout(&o).contains(&message), "{what}: {}", stdout(&o));

        // apply: exit 1, the same message, nothing written, no reload, nothing recorded
        let o = w.run(&["apply", "--rev", &rev]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stdout(&o));
        assert!(stderr(&o).contains(&message), "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains("nothing was changed"), "{what}");
        assert_eq!(tree(&w.q.quadlet_dir), quadlet_before, "{what}");
        assert_eq!(tree(&w.bed.unit_dir), units_before, "{what}");
        assert_eq!(
            w.show(&witness, "NeedDaemonReload"),
            "yes",
            "{what}: reloaded"
        );
        // the refusal is the host's last run (status says why), but no transition happened:
        // nothing applied, no receipt
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(w.s.path("state/status.json")).unwrap()).unwrap();
        assert_eq!(st["last_run"]["outcome"], "refused", "{what}: {st:#}");
        assert!(
            st["last_run"]["diagnostics"][0]
                .as_str()
                .unwrap()
                .contains(&message),
            "{what}: {st:#}"
        );
        assert!(st["last_applied"].is_null(), "{what}");
        assert!(tree(&w.s.path("state/receipts")).is_empty(), "{what}");
        assert_eq!(
            w.show(&format!("{p}-good.service"), "LoadState"),
            "not-found",
            "{what}"
        );
    }

    w.bed.exec_ok(["systemctl", "stop", &witness]);
    w.bed.remove_units(std::slice::from_ref(&witness));
    w.bed.exec_ok(["systemctl", "daemon-reload"]);
}
