//! One real systemd test bed per test binary (`scripts/systemd-testbed.sh`).
//!
//! Why: integration tests must talk to a real manager, and booting one costs ~0.4 s, so a
//! binary boots at most one, lazily, and every test in it shares it with its own unit-name
//! [`prefix`].
//!
//! Which bed:
//! - `CORE_OPS_TESTBED_DIR` set (what `scripts/test.sh` does): reuse that running bed; it
//!   belongs to the runner, which stops it. A bed that is not running there is a test-runner
//!   bug and panics.
//! - otherwise: boot one in `/tmp/cob-<binary>-<pid>`. Rust runs no destructor for statics and
//!   unsafe (`atexit`) is forbidden, so the helper starts a small detached watchdog
//!   (`setsid -f sh -c 'while kill -0 PID; do sleep 1; done; systemd-testbed.sh down DIR'`)
//!   that stops the bed by its dir once this test process has exited. If that watchdog was
//!   killed, stop a leftover bed with `scripts/systemd-testbed.sh down /tmp/cob-...`.
//!
//! Not root: the test fails with a clear message (a test that could not run never reports
//! `ok`), unless the contributor opted out with `CORE_OPS_SKIP_BED_TESTS=1` (DEVELOPMENT.md):
//! then [`bed`] returns `None` with a loud message and the test returns early. Root and the
//! bed fails to boot: panic with the script's output.

#![allow(dead_code)] // each test binary uses a different part of this helper

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// A running test bed.
#[derive(Debug)]
pub struct Bed {
    /// The bed's directory (short, `[A-Za-z0-9._/+@-]`); visible at the same path inside.
    pub dir: PathBuf,
    /// D-Bus address of the bed's system bus, for `DbusSystemd::connect`.
    pub address: String,
    /// Host path of the directory systemd sees as `/etc/systemd/system`.
    pub unit_dir: PathBuf,
    /// True when this process booted the bed (its watchdog stops it).
    pub owned: bool,
}

impl Bed {
    /// Run a command inside the bed (`systemd-testbed.sh exec DIR ARGS...`), e.g.
    /// `["systemctl", "show", "-p", "DropInPaths", "x.service"]`.
    ///
    /// Why: the host's own `systemctl` refuses to run (PID 1 is not systemd), and tests need
    /// an independent second opinion on what the code under test did.
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Command::new(script())
            .arg("exec")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()))
    }

    /// Like [`Bed::exec`], but panic unless the command succeeds; returns its stdout.
    ///
    /// Why: most checks want the output and treat any failure as a test failure.
    pub fn exec_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.exec(&args);
        assert!(
            out.status.success(),
            "in bed: {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Write a unit file (or drop-in, e.g. `x.service.d/10-a.conf`) into the bed's unit dir.
    ///
    /// Why: tests install units the way core-ops will, by writing files, then reloading.
    pub fn write_unit(&self, rel: &str, text: &str) {
        let path = self.unit_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Remove unit files and drop-in dirs written by a test (missing ones are fine).
    ///
    /// Why: the bed is shared by every test binary of a run; leave it as found.
    pub fn remove_units(&self, names: &[String]) {
        for n in names {
            let _ = std::fs::remove_file(self.unit_dir.join(n));
            let _ = std::fs::remove_dir_all(self.unit_dir.join(format!("{n}.d")));
        }
    }
}

/// The real Quadlet generator (and, unless `CORE_OPS_TESTBED_CONTAINERS=0`, podman) in a bed,
/// as `scripts/quadlet-bed.sh` reports it.
#[derive(Debug)]
pub struct QuadletBed {
    /// Host path the bed sees as `/etc/containers/systemd` (core-ops' Quadlet dir in tests).
    pub quadlet_dir: PathBuf,
    /// Host path of the same quadlet binary, for core-ops' dry-run validation on the host.
    pub generator: PathBuf,
    /// Whether podman can run containers in the bed.
    pub containers: bool,
    /// The locally imported image (`localhost/core-ops-mini:1`), when containers run.
    pub image: Option<String>,
}

impl Bed {
    /// Set the bed up for Quadlet (idempotent: under `scripts/test.sh` it was done already and
    /// this only checks) and say where things are.
    ///
    /// Why: a test binary run on its own (`cargo test --test quadlet_bed`) boots its own bed,
    /// which has no generator until this runs; and the script is the one place that knows how.
    pub fn quadlet(&self) -> &QuadletBed {
        static Q: OnceLock<QuadletBed> = OnceLock::new();
        Q.get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/quadlet-bed.sh");
            let out = Command::new(&script)
                .arg(&self.dir)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "scripts/quadlet-bed.sh {} failed:\n{}",
                self.dir.display(),
                text(&out)
            );
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let kv: HashMap<&str, &str> =
                stdout.lines().filter_map(|l| l.split_once('=')).collect();
            let get = |k: &str| {
                kv.get(k)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| panic!("quadlet-bed.sh printed no {k}:\n{}", text(&out)))
            };
            QuadletBed {
                quadlet_dir: PathBuf::from(get("CORE_OPS_TESTBED_QUADLET_DIR")),
                generator: PathBuf::from(get("CORE_OPS_TESTBED_QUADLET_GENERATOR")),
                containers: get("CORE_OPS_TESTBED_CONTAINERS") == "1",
                image: kv.get("CORE_OPS_TESTBED_IMAGE").map(|v| v.to_string()),
            }
        })
    }
}

/// The project's test bed script (`scripts/systemd-testbed.sh`), found from the crate root so
/// tests work from any working directory.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/systemd-testbed.sh")
}

/// A unit-name prefix unique to one test in one process, e.g. `co-lifecycle-4242`.
///
/// Why: all tests of a run share one bed; unique names keep their units and jobs apart.
pub fn prefix(test: &str) -> String {
    let clean: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("co-{}-{}", clean.trim_matches('-'), std::process::id())
}

/// The bed of this test binary, booted on first use; `None` only when not running as root and
/// the contributor opted out of root tests (`CORE_OPS_SKIP_BED_TESTS=1`).
///
/// Why: see the module docs.
pub fn bed() -> Option<&'static Bed> {
    static BED: OnceLock<Option<Bed>> = OnceLock::new();
    BED.get_or_init(init).as_ref()
}

fn init() -> Option<Bed> {
    if !nix::unistd::Uid::effective().is_root() {
        return skip_or_fail("the systemd test bed needs root (namespaces and mounts)");
    }
    if let Some(dir) = std::env::var_os("CORE_OPS_TESTBED_DIR").filter(|d| !d.is_empty()) {
        let out = run_script("status", Path::new(&dir));
        assert!(
            out.status.success(),
            "CORE_OPS_TESTBED_DIR={} is not a running test bed:\n{}",
            Path::new(&dir).display(),
            text(&out)
        );
        return Some(from_output(&out, false));
    }

    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("test");
    // cargo names test binaries `<name>-<hash>`
    let name = stem.rsplit_once('-').map_or(stem, |(n, _)| n);
    let dir = PathBuf::from(format!("/tmp/cob-{name}-{}", std::process::id()));
    let out = run_script("up", &dir);
    if !out.status.success() {
        // `up` cleans up after a failed boot.
        panic!(
            "cannot boot the systemd test bed in {}:\n{}",
            dir.display(),
            text(&out)
        );
    }
    start_watchdog(&dir);
    eprintln!(
        "booted systemd test bed {} (stopped when this test process exits)",
        dir.display()
    );
    Some(from_output(&out, true))
}

pub use core_ops_testkit::skip_or_fail;

/// Crash tests stop the agent at a named failpoint, which only a `--features failpoints` build
/// has: without it they would wait for a pause that never comes, so they fail at once instead.
pub fn require_failpoints() {
    #[cfg(not(feature = "failpoints"))]
    panic!(
        "crash tests stop core-ops at a failpoint: build with `--features failpoints` \
         (scripts/test.sh does)"
    );
}

fn run_script(cmd: &str, dir: &Path) -> Output {
    Command::new(script())
        .arg(cmd)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()))
}

fn text(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn from_output(out: &Output, owned: bool) -> Bed {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kv: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| {
        kv.get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| panic!("test bed script printed no {k}:\n{}", text(out)))
    };
    Bed {
        dir: PathBuf::from(get("SYSTEMD_TESTBED_DIR")),
        address: get("SYSTEMD_TESTBED_ADDRESS"),
        unit_dir: PathBuf::from(get("SYSTEMD_TESTBED_UNIT_DIR")),
        owned,
    }
}

/// Stop the bed once this process is gone, from a detached shell (no unsafe, no atexit).
fn start_watchdog(dir: &Path) {
    let status = Command::new("setsid")
        .arg("-f")
        .arg("sh")
        .arg("-c")
        .arg(r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" down "$3""#)
        .arg("core-ops-bed-watchdog")
        .arg(std::process::id().to_string())
        .arg(script())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => eprintln!(
            "!!!!! could not start the watchdog that stops {} ({other:?}); \
             stop it with: scripts/systemd-testbed.sh down {} !!!!!",
            dir.display(),
            dir.display()
        ),
    }
}
