//! Remote repositories for the integration tests: the loopback git servers of
//! `scripts/git-servers.sh` (git daemon, git http-backend behind lighttpd with TLS and basic
//! auth, OpenSSH sshd), booted once per test binary and stopped when the process exits, and a
//! [`Remote`]: a world of the shared systemd bed whose repository is published to one of them.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use super::cli::{stderr, stdout};
use super::world::{Fx, World, world};

/// The servers of this test binary.
pub struct Servers {
    pub dir: PathBuf,
    env: BTreeMap<String, String>,
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/git-servers.sh")
}

/// Boot `which` (git, https, ssh) once per process; `None` only when not root (loudly).
pub fn servers(which: &[&str]) -> Option<&'static Servers> {
    static S: OnceLock<Option<Servers>> = OnceLock::new();
    S.get_or_init(|| {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!(
                "\n!!!!! SKIPPING remote-repository tests: not running as root (the git servers \
                 and the test bed need root); run scripts/test.sh as root. !!!!!\n"
            );
            return None;
        }
        let dir = PathBuf::from(format!("/tmp/cob-gitsrv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(script())
            .arg("up")
            .arg(&dir)
            .args(which)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/git-servers.sh");
        assert!(
            out.status.success(),
            "scripts/git-servers.sh up {} failed (run scripts/prereqs.sh first):\n{}\n{}",
            dir.display(),
            stdout(&out),
            stderr(&out)
        );
        // stop them when this process exits, whatever happens to it
        let _ = Command::new("setsid")
            .arg("-f")
            .arg("sh")
            .arg("-c")
            .arg(r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"; rm -rf "$3""#)
            .arg("core-ops-gitsrv-watchdog")
            .arg(std::process::id().to_string())
            .arg(script())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let env = stdout(&out)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Servers { dir, env })
    })
    .as_ref()
}

impl Servers {
    pub fn get(&self, k: &str) -> String {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("scripts/git-servers.sh printed no {k}"))
            .clone()
    }

    fn ctl(&self, cmd: &str, server: &str) {
        let out = Command::new(script())
            .args([cmd, self.dir.to_str().unwrap(), server])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git-servers.sh {cmd} {server}: {}",
            stderr(&out)
        );
    }

    pub fn stop(&self, server: &str) {
        self.ctl("stop", server)
    }

    pub fn start(&self, server: &str) {
        self.ctl("start", server)
    }
}

/// One test's world, its repository published as a bare repository the servers serve.
pub struct Remote {
    pub w: World,
    /// The bare repository under the servers' repository root.
    pub bare: PathBuf,
    /// Its URL over the transport under test.
    pub url: String,
    /// Secrets that must never appear in any record or output.
    pub secrets: Vec<String>,
    /// stdout and stderr of every core-ops run, for the leak check.
    pub outputs: RefCell<Vec<String>>,
}

fn git(args: &[&str]) {
    let out = Command::new("git").args(args).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
}

impl Remote {
    /// A world named after `test`, with a bare repository `<prefix>.git` under the servers'
    /// root; `url_of(name)` is the URL of `<root>/<name>` over the transport under test.
    pub fn new(test: &str, srv: &Servers, url_of: impl Fn(&str) -> String) -> Option<Remote> {
        let mut w = world(test)?;
        let name = format!("{}.git", w.p);
        let bare = PathBuf::from(srv.get("CORE_OPS_GITSRV_REPOS")).join(&name);
        git(&["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]);
        let creds = w.s.path("credentials.d");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o700)).unwrap();
        w.s.env.push((
            "CORE_OPS_CREDENTIALS_DIR".into(),
            creds.display().to_string(),
        ));
        Some(Remote {
            w,
            bare,
            url: url_of(&name),
            secrets: Vec::new(),
            outputs: RefCell::new(Vec::new()),
        })
    }

    /// Commit `fx` and push it to the served repository; returns the commit.
    pub fn publish(&mut self, fx: Fx) -> String {
        let sha = self.w.commit(fx);
        self.push();
        sha
    }

    pub fn push(&self) {
        git(&[
            "-C",
            self.w.s.path("repo").to_str().unwrap(),
            "push",
            "-q",
            "--force",
            self.bare.to_str().unwrap(),
            "HEAD:refs/heads/main",
        ]);
    }

    /// Replace the credential entries with one file holding `yaml`.
    pub fn credential(&self, yaml: &str) {
        let dir = self.w.s.path("credentials.d");
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        let f = dir.join("remote.yaml");
        std::fs::write(&f, yaml).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A root-only file under the scratch root (a wrong password, a passphrase ...).
    pub fn private_file(&self, name: &str, text: &str) -> PathBuf {
        let f = self.w.s.path(name);
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        f
    }

    /// Publish the first revision and apply it with the agent (exit 2: changes applied).
    pub fn apply_first(&mut self) -> String {
        let fx = self.w.fx();
        let v1 = self.publish(fx);
        let (code, _, err) = self.agent();
        assert_eq!(code, 2, "first apply: {err}");
        assert_eq!(self.last_applied(), v1);
        v1
    }

    /// Publish a change of the web drop-in (`LEVEL=<level>`) and apply it with the agent;
    /// `what` names the case in failure messages.
    pub fn apply_pushed_change(&mut self, level: &'static str, what: &str) -> String {
        let mut fx = self.w.fx();
        fx.level = level;
        let v = self.publish(fx);
        let (code, _, err) = self.agent();
        assert_eq!(code, 2, "{what}: {err}");
        assert_eq!(self.last_applied(), v);
        v
    }

    /// A tick with nothing new: exit 0; prints its wall time and the fetch's share.
    pub fn no_change_tick(&self, transport: &str) {
        let t0 = std::time::Instant::now();
        let (code, _, err) = self.agent();
        let tick = t0.elapsed();
        assert_eq!(code, 0, "no-change tick: {err}");
        let fetch_ms = self.status_json()["fetch"]["last_success_ms"]
            .as_u64()
            .unwrap();
        eprintln!(
            "{transport} no-change tick: {} ms wall (fetch {fetch_ms} ms)",
            tick.as_millis()
        );
    }

    /// `core-ops -vv agent` against the remote; (exit code, stdout, stderr).
    pub fn agent(&self) -> (i32, String, String) {
        let o = self.w.s.run(&[
            "-vv", "agent", "--repo", &self.url, "--rev", "main", "--host", "h",
        ]);
        let (out, err) = (stdout(&o), stderr(&o));
        self.outputs.borrow_mut().push(format!("{out}\n{err}"));
        (o.status.code().unwrap_or(-1), out, err)
    }

    /// `core-ops --json status`.
    pub fn status_json(&self) -> Value {
        let o = self.w.s.run(&["--json", "status"]);
        self.outputs
            .borrow_mut()
            .push(format!("{}\n{}", stdout(&o), stderr(&o)));
        serde_json::from_slice(&o.stdout).expect("status JSON")
    }

    /// `core-ops status` (text).
    pub fn status_text(&self) -> String {
        let o = self.w.s.run(&["status"]);
        let t = stdout(&o);
        self.outputs.borrow_mut().push(t.clone());
        t
    }

    pub fn metrics(&self) -> String {
        std::fs::read_to_string(self.w.s.path("metrics/core-ops.prom")).unwrap_or_default()
    }

    pub fn last_applied(&self) -> String {
        self.w.status()["last_applied"]["revision"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A metric's value (first sample of that name).
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// No secret in any file under the scratch root's records (state dir, metrics) or in any
    /// output of core-ops so far.
    pub fn assert_no_leak(&self) {
        assert!(!self.secrets.is_empty(), "the leak check needs the secrets");
        let mut files = Vec::new();
        collect(&self.w.s.path("state"), &mut files);
        collect(&self.w.s.path("metrics"), &mut files);
        assert!(
            files.iter().any(|f| f.ends_with("status.json")),
            "the leak check found no records to search"
        );
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            for s in &self.secrets {
                assert!(
                    !contains(&bytes, s.as_bytes()),
                    "secret found in {}",
                    f.display()
                );
            }
        }
        let outputs = self.outputs.borrow();
        assert!(!outputs.is_empty());
        for (i, o) in outputs.iter().enumerate() {
            for s in &self.secrets {
                assert!(
                    !o.contains(s.as_str()),
                    "secret in the output of run {i}:\n{o}"
                );
            }
        }
        eprintln!(
            "leak check: {} secret(s), {} record file(s), {} outputs: clean",
            self.secrets.len(),
            files.len(),
            outputs.len()
        );
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Standard base64, for the basic-auth header the leak check also looks for.
pub fn base64(data: &[u8]) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}
