//! A world for integration tests of the real binary against the shared test bed: its own
//! unit-name prefix, state dir and host-file root under the bed's shared directory, and a
//! small two-service repository whose revisions tests commit as they go.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;

use core_ops_testkit::RepoBuilder;
use serde_json::Value;

use super::bed::{Bed, bed, prefix};
use super::cli::{Scratch, stderr, stdout, tree};

pub struct World {
    pub bed: &'static Bed,
    pub s: Scratch,
    pub p: String,
    pub repo: RepoBuilder,
}

/// The shared bed and a scratch root under its directory (`<dir_prefix>XXXX`), with the
/// environment that points the binary at that bed: its unit dir, its bus, a short settle
/// window and job timeout.
pub fn bed_scratch(dir_prefix: &str) -> Option<(&'static Bed, Scratch)> {
    let bed = bed()?;
    let dir = tempfile::Builder::new()
        .prefix(dir_prefix)
        .tempdir_in(&bed.dir)
        .expect("scratch under the bed dir");
    let mut s = Scratch::in_dir(dir);
    for (k, v) in s.env.iter_mut() {
        if k == "CORE_OPS_SYSTEMD_UNIT_DIR" {
            *v = bed.unit_dir.display().to_string();
        }
    }
    s.env
        .push(("CORE_OPS_SYSTEMD_ADDRESS".into(), bed.address.clone()));
    s.env.push(("CORE_OPS_SETTLE_MS".into(), "300".into()));
    s.env.push(("CORE_OPS_JOB_TIMEOUT".into(), "30".into()));
    Some((bed, s))
}

pub fn world(test: &str) -> Option<World> {
    let (bed, s) = bed_scratch("t-")?;
    let repo = RepoBuilder::init(&s.path("repo")).expect("repo");
    Some(World {
        bed,
        s,
        p: prefix(test),
        repo,
    })
}

/// The files of one revision of a small two-service repository.
pub struct Fx {
    pub p: String,
    pub etc: PathBuf,
    pub level: &'static str,
    pub with_db: bool,
    pub web_exec: &'static str,
    pub env: &'static str,
    /// Extra host.yaml text (e.g. a policy block).
    pub host_extra: &'static str,
    /// services/db/service.yaml, when not empty.
    pub db_service_yaml: String,
}

impl Fx {
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let p = &self.p;
        let etc = self.etc.display();
        let mut services = vec!["web"];
        let mut v: Vec<(String, Vec<u8>)> = vec![
            (
                format!("services/web/{p}-web.service"),
                format!(
                    "[Unit]\nDescription=core-ops test web\nAfter={p}-db.service\n\n[Service]\nEnvironmentFile={etc}/{p}/app.env\nExecStart={}\n\n[Install]\nWantedBy=multi-user.target\n",
                    self.web_exec
                )
                .into_bytes(),
            ),
            (
                format!("services/web/{p}-web.service.d/10-level.conf"),
                format!("[Service]\nEnvironment=LEVEL={}\n", self.level).into_bytes(),
            ),
            (
                format!("services/web/files{etc}/{p}/app.env"),
                self.env.as_bytes().to_vec(),
            ),
        ];
        if self.with_db && !self.db_service_yaml.is_empty() {
            v.push((
                "services/db/service.yaml".into(),
                self.db_service_yaml.as_bytes().to_vec(),
            ));
        }
        if self.with_db {
            services.push("db");
            v.push((
                format!("services/db/{p}-db.service"),
                b"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n".to_vec(),
            ));
        }
        v.push((
            "hosts/h/host.yaml".into(),
            format!("services: [{}]\n{}", services.join(", "), self.host_extra).into_bytes(),
        ));
        v
    }
}

impl World {
    pub fn fx(&self) -> Fx {
        Fx {
            p: self.p.clone(),
            etc: self.s.path("etc"),
            level: "1",
            with_db: true,
            web_exec: "/bin/sleep infinity",
            env: "A=1\n",
            host_extra: "",
            db_service_yaml: String::new(),
        }
    }

    pub fn commit(&mut self, fx: Fx) -> String {
        let files = fx.files();
        self.repo.commit_owned(&files, "rev").expect("commit")
    }

    pub fn repo_arg(&self) -> String {
        self.s.path("repo").display().to_string()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let repo = self.repo_arg();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--repo", &repo, "--host", "h"]);
        self.s.run(&full)
    }

    /// `apply --json` at a revision; returns the exit code and the results document.
    pub fn apply(&self, rev: &str, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["--json", "apply", "--rev", rev];
        args.extend(extra);
        let o = self.run(&args);
        let code = o.status.code().unwrap_or(-1);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            panic!(
                "apply printed no JSON (exit {code}):\n{}\n{}",
                stdout(&o),
                stderr(&o)
            )
        });
        (code, v)
    }

    pub fn unit(&self, name: &str) -> String {
        format!("{}-{name}.service", self.p)
    }

    /// `plan --json` at a revision.
    pub fn plan(&self, rev: &str) -> Value {
        let o = self.run(&["--json", "plan", "--rev", rev]);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("plan printed no JSON:\n{}", stderr(&o)))
    }

    /// `systemctl show` inside the bed: an independent reading of what core-ops did.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        self.bed
            .exec_ok(["systemctl", "show", "--value", "-p", prop, unit])
            .trim()
            .to_string()
    }

    pub fn status(&self) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.s.path("state/status.json")).expect("status.json"),
        )
        .expect("status JSON")
    }

    pub fn receipts(&self) -> Vec<Value> {
        tree(&self.s.path("state/receipts"))
            .iter()
            .map(|f| {
                serde_json::from_slice(
                    &std::fs::read(self.s.path("state/receipts").join(f)).unwrap(),
                )
                .unwrap()
            })
            .collect()
    }

    /// Prune everything this test created (through core-ops itself).
    pub fn teardown(&mut self) {
        let files = [("hosts/h/host.yaml", b"services: []\n".as_slice())];
        let sha = self.repo.commit_files(&files, "empty").unwrap();
        let (code, v) = self.apply(&sha, &[]);
        assert_eq!(code, 0, "teardown apply: {v}");
    }
}

/// The action of one object in a plan document.
pub fn action<'a>(plan: &'a Value, id: &str) -> &'a Value {
    plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("no action for {id} in {plan:#}"))
}
