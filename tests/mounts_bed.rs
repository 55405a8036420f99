//! Native mounts on the real systemd of the bed: tmpfs and bind mounts, mountpoint
//! preparation (`CreateMountpoint=`), a service with `RequiresMountsFor=` started after its
//! mount, removal in reverse order, and a busy mount failing explicitly.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bed::script;
use common::cli::{stderr, stdout};
use common::world::{World, action, world};
use core_ops::render::mount::escape_path;

struct Mounts {
    tmpfs_where: String,
    bind_where: String,
    bind_src: String,
}

impl Mounts {
    fn new(w: &World) -> Mounts {
        let m = Mounts {
            tmpfs_where: w.s.path("mnt/data").display().to_string(),
            bind_where: w.s.path("mnt/bind").display().to_string(),
            bind_src: w.s.path("bind-src").display().to_string(),
        };
        std::fs::create_dir_all(&m.bind_src).unwrap();
        std::fs::write(format!("{}/hello", m.bind_src), "from the bind source\n").unwrap();
        m
    }

    fn tmpfs_unit(&self) -> String {
        format!("{}.mount", escape_path(&self.tmpfs_where))
    }

    fn bind_unit(&self) -> String {
        format!("{}.mount", escape_path(&self.bind_where))
    }

    /// Files of a revision: the mounts service, and optionally a consumer service.
    fn files(&self, w: &World, consumer: bool, create_mountpoint: bool) -> Vec<(String, Vec<u8>)> {
        let mut v = vec![
            (
                format!("services/mounts/{}", self.tmpfs_unit()),
                format!(
                    "[Mount]\nWhat=tmpfs\nWhere={}\nType=tmpfs\nOptions=size=4m,mode=0755\n\n[X-CoreOps]\nCreateMountpoint={}\n",
                    self.tmpfs_where,
                    if create_mountpoint { "true" } else { "false" }
                )
                .into_bytes(),
            ),
            (
                format!("services/mounts/{}", self.bind_unit()),
                format!(
                    "[Mount]\nWhat={}\nWhere={}\nType=none\nOptions=bind\n",
                    self.bind_src, self.bind_where
                )
                .into_bytes(),
            ),
        ];
        let mut services = vec!["mounts"];
        if consumer {
            services.push("consumer");
            v.push((
                format!("services/consumer/{}", w.unit("consumer")),
                format!(
                    "[Unit]\nRequiresMountsFor={tmp} {bind}\n\n[Service]\nExecStart=/bin/sh -c 'echo written > {tmp}/by-consumer; cat {bind}/hello > {tmp}/seen; exec sleep infinity'\n\n[Install]\nWantedBy=multi-user.target\n",
                    tmp = self.tmpfs_where,
                    bind = self.bind_where
                )
                .into_bytes(),
            ));
        }
        v.push((
            "hosts/h/host.yaml".into(),
            format!(
                "services: [{}]\npolicy:\n  auto_rollback: false\n",
                services.join(", ")
            )
            .into_bytes(),
        ));
        v
    }
}

fn commit(w: &mut World, files: Vec<(String, Vec<u8>)>) -> String {
    w.repo.commit_owned(&files, "rev").unwrap()
}

/// A process inside the bed whose working directory is in the mount: umount gets EBUSY.
fn hold_busy(w: &World, dir: &str) -> Child {
    Command::new(script())
        .arg("exec")
        .arg(&w.bed.dir)
        .args([
            "bash",
            "-c",
            &format!("cd {dir} && exec -a busy-{} sleep 120", w.p),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn tmpfs_and_bind_mounts_come_up_before_their_consumer_and_go_away_after_it() {
    let Some(mut w) = world("mounts") else { return };
    let m = Mounts::new(&w);
    let files = m.files(&w, true, true);
    let v1 = commit(&mut w, files);
    assert!(!std::path::Path::new(&m.tmpfs_where).exists());

    let plan = w.plan(&v1);
    let order = |id: &str| action(&plan, id)["order"].as_u64().unwrap();
    let consumer_id = format!("unit:{}", w.unit("consumer"));
    assert!(order(&format!("mount:{}", m.tmpfs_unit())) < order(&consumer_id));
    assert!(order(&format!("mount:{}", m.bind_unit())) < order(&consumer_id));

    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    // mountpoints were prepared, the mounts are real inside the bed
    assert!(std::path::Path::new(&m.tmpfs_where).is_dir());
    assert_eq!(w.show(&m.tmpfs_unit(), "ActiveState"), "active");
    assert_eq!(w.show(&m.bind_unit(), "ActiveState"), "active");
    let fstype = w
        .bed
        .exec_ok(["findmnt", "-n", "-o", "FSTYPE", &m.tmpfs_where]);
    assert_eq!(fstype.trim(), "tmpfs");
    // the consumer ran after both mounts: it wrote into the tmpfs and read through the bind
    assert_eq!(w.show(&w.unit("consumer"), "ActiveState"), "active");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = w.bed.exec(["cat", &format!("{}/seen", m.tmpfs_where)]);
        if seen.status.success() {
            assert_eq!(
                String::from_utf8_lossy(&seen.stdout),
                "from the bind source\n"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumer did not write into the mount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // the tmpfs is only inside the bed: the host's directory stays empty
    assert!(std::fs::read_dir(&m.tmpfs_where).unwrap().next().is_none());

    // removing everything stops the consumer first, then unmounts
    let v2 = commit(
        &mut w,
        vec![("hosts/h/host.yaml".into(), b"services: []\n".to_vec())],
    );
    let plan = w.plan(&v2);
    let pos = |id: &str| {
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .position(|a| a["id"] == id)
            .unwrap()
    };
    assert!(pos(&consumer_id) < pos(&format!("mount:{}", m.tmpfs_unit())));
    let (code, r) = w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");
    let mounted = w.bed.exec(["findmnt", "-n", &m.tmpfs_where]);
    assert!(!mounted.status.success(), "tmpfs still mounted");
    assert!(!w.bed.unit_dir.join(m.tmpfs_unit()).exists());
}

#[test]
fn create_mountpoint_false_with_a_missing_directory_fails_and_changes_nothing() {
    let Some(mut w) = world("nomountpoint") else {
        return;
    };
    let m = Mounts::new(&w);
    let files = m.files(&w, false, false);
    let v1 = commit(&mut w, files);
    let o = w.run(&["apply", "--rev", &v1]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains(&format!(
            "mountpoint missing and CreateMountpoint=false: {}",
            m.tmpfs_where
        )),
        "{}",
        stderr(&o)
    );
    assert!(!w.bed.unit_dir.join(m.tmpfs_unit()).exists());
    assert!(!w.bed.unit_dir.join(m.bind_unit()).exists());
    // provisioned out of band, the same revision applies
    std::fs::create_dir_all(&m.tmpfs_where).unwrap();
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(w.show(&m.tmpfs_unit(), "ActiveState"), "active");
    w.teardown();
}

#[test]
fn removing_a_busy_mount_fails_explicitly_and_keeps_it() {
    let Some(mut w) = world("busymount") else {
        return;
    };
    let m = Mounts::new(&w);
    let files = m.files(&w, false, true);
    let v1 = commit(&mut w, files);
    assert_eq!(w.apply(&v1, &[]).0, 0);
    let mut busy = hold_busy(&w, &m.tmpfs_where);
    // wait until the holder sits in the mount
    std::thread::sleep(Duration::from_millis(300));
    let v2 = commit(
        &mut w,
        vec![(
            "hosts/h/host.yaml".into(),
            b"services: []\npolicy:\n  auto_rollback: false\n".to_vec(),
        )],
    );
    let (code, r) = w.apply(&v2, &[]);
    // the holder lives in the bed's PID namespace: end it there
    w.bed.exec(["pkill", "-f", &format!("busy-{}", w.p)]);
    let _ = busy.kill();
    let _ = busy.wait();
    assert_eq!(code, 3, "{r:#}");
    let diag = r["diagnostics"].as_array().unwrap();
    let tmpfs_id = format!("mount:{}", m.tmpfs_unit());
    assert!(
        diag.iter()
            .any(|d| d["id"] == tmpfs_id && d["problem"].as_str().unwrap().contains("busy")),
        "{r:#}"
    );
    // still mounted, unit file kept; the bind mount was removed
    assert!(w.bed.unit_dir.join(m.tmpfs_unit()).exists());
    assert!(
        w.bed
            .exec(["findmnt", "-n", &m.tmpfs_where])
            .status
            .success()
    );
    assert!(!w.bed.unit_dir.join(m.bind_unit()).exists(), "{r:#}");
    // once the holder is gone the same revision completes the removal
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, r) = loop {
        let (code, r) = w.apply(&v2, &[]);
        if code == 0 || Instant::now() > deadline {
            break (code, r);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 0, "{r:#}");
    assert!(!w.bed.unit_dir.join(m.tmpfs_unit()).exists());
}
