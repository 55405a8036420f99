//! Where a scenario runs: a machine the harness can run shell scripts on and share files with.
//!
//! Why a trait: the product path is a disposable VM ([`super::vm`]); the hidden synthetic mode
//! backs the same runner with the namespace test bed ([`super::synthetic`]) so the harness's
//! own contract tests are fast. Steps and assertions never know which one they run on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::guest::Accel;

/// Which backend and driver ran (recorded in the verification_run document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// `vm` (product path) or `synthetic` (harness self-tests only).
    pub backend: String,
    /// `qemu`, `libvirt` or `testbed`.
    pub driver: String,
    /// VM acceleration.
    pub accel: Option<Accel>,
    /// libvirt connection URI, when libvirt ran the guest.
    pub libvirt_uri: Option<String>,
}

/// A running machine.
pub trait Machine {
    /// Backend, driver, acceleration.
    fn info(&self) -> MachineInfo;
    /// The shared directory on the host.
    fn host_share(&self) -> &Path;
    /// The same directory as the machine sees it.
    fn guest_share(&self) -> String;
    /// Run `bash <script>` (a machine path) with stdout/stderr into machine paths.
    fn run_script(
        &mut self,
        script: &str,
        stdout: &str,
        stderr: &str,
        timeout: Duration,
    ) -> Result<i32>;
    /// How to reach it when it is kept (`--debug`).
    fn keep_hint(&self) -> String;
    /// Stop it and remove what it used (idempotent).
    fn teardown(&mut self) -> Result<()>;
    /// Leave it running when dropped (`--debug`); otherwise dropping tears it down, so an
    /// error anywhere in a run never leaks a machine.
    fn keep(&mut self);
}

/// What a command printed and returned.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit status.
    pub code: i32,
    /// stdout bytes.
    pub stdout: Vec<u8>,
    /// stderr bytes.
    pub stderr: Vec<u8>,
}

impl Output {
    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs shell snippets on a machine through script files on the share.
///
/// Why files: the control port is one byte stream; scripts and outputs on the share keep
/// stdout, stderr and binary output apart and unmangled.
pub struct Shell<'m> {
    machine: &'m mut dyn Machine,
    counter: u32,
}

impl<'m> Shell<'m> {
    /// Wrap a machine.
    pub fn new(machine: &'m mut dyn Machine) -> Shell<'m> {
        Shell {
            machine,
            counter: 0,
        }
    }

    /// The machine.
    pub fn machine(&mut self) -> &mut dyn Machine {
        self.machine
    }

    /// Where the share is on the machine.
    pub fn guest_share(&self) -> String {
        self.machine.guest_share()
    }

    /// Host path of a share-relative path.
    pub fn host_path(&self, rel: &str) -> PathBuf {
        self.machine.host_share().join(rel)
    }

    /// Run a shell snippet; `tag` names its files under the share's `cmd/`.
    pub fn exec(&mut self, tag: &str, script: &str, timeout: Duration) -> Result<Output> {
        // a stopping harness has removed (or is removing) the machine directory: never
        // recreate it by writing another command into its share
        if super::cleanup::stopping() {
            anyhow::bail!("the harness is stopping; {tag} not run");
        }
        self.counter += 1;
        let base = format!("cmd/{:04}-{}", self.counter, sanitize(tag));
        let host_dir = self.machine.host_share().join("cmd");
        // `create_dir`, not `create_dir_all`: the share must still exist
        match std::fs::create_dir(&host_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", host_dir.display()));
            }
        }
        let host_script = self.machine.host_share().join(format!("{base}.sh"));
        // nothing of the harness's own environment reaches core-ops (the synthetic backend's
        // exec inherits it): every step states what it sets
        std::fs::write(
            &host_script,
            format!("for v in $(compgen -e | grep '^CORE_OPS_'); do unset \"$v\"; done\nset -u\n{script}\n"),
        )
            .with_context(|| format!("writing {}", host_script.display()))?;
        let g = self.machine.guest_share();
        let code = self.machine.run_script(
            &format!("{g}/{base}.sh"),
            &format!("{g}/{base}.out"),
            &format!("{g}/{base}.err"),
            timeout,
        )?;
        let read = |ext: &str| {
            std::fs::read(self.machine.host_share().join(format!("{base}.{ext}")))
                .unwrap_or_default()
        };
        Ok(Output {
            code,
            stdout: read("out"),
            stderr: read("err"),
        })
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect()
}

/// Single-quote a string for the shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A test double: "the machine" is this host, scripts run under `bash` with `share/fakebin`
/// first on `PATH` (so a test can stand in a `systemctl` or a `core-ops`), the share is a
/// temporary directory seen at the same path.
#[cfg(test)]
pub mod local {
    use super::*;

    /// See the module.
    pub struct Local {
        /// The share (and the machine's view of it).
        pub share: PathBuf,
    }

    impl Local {
        /// A machine on `dir` (created) with an empty `fakebin/`.
        pub fn new(dir: &Path) -> Local {
            std::fs::create_dir_all(dir.join("fakebin")).unwrap();
            Local {
                share: dir.to_path_buf(),
            }
        }

        /// Put an executable `name` with this shell body into `fakebin/`.
        pub fn fake(&self, name: &str, body: &str) {
            use std::os::unix::fs::PermissionsExt;
            let p = self.share.join("fakebin").join(name);
            std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    impl Machine for Local {
        fn info(&self) -> MachineInfo {
            MachineInfo {
                backend: "local".into(),
                driver: "test".into(),
                accel: None,
                libvirt_uri: None,
            }
        }
        fn host_share(&self) -> &Path {
            &self.share
        }
        fn guest_share(&self) -> String {
            self.share.display().to_string()
        }
        fn run_script(
            &mut self,
            script: &str,
            stdout: &str,
            stderr: &str,
            timeout: Duration,
        ) -> Result<i32> {
            let path = format!(
                "{}:{}",
                self.share.join("fakebin").display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let st = std::process::Command::new("timeout")
                .arg(timeout.as_secs().max(1).to_string())
                .args(["bash", script])
                .env("PATH", path)
                .stdin(std::process::Stdio::null())
                .stdout(std::fs::File::create(stdout)?)
                .stderr(std::fs::File::create(stderr)?)
                .status()?;
            Ok(st.code().unwrap_or(-1))
        }
        fn keep_hint(&self) -> String {
            String::new()
        }
        fn teardown(&mut self) -> Result<()> {
            Ok(())
        }
        fn keep(&mut self) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
        assert_eq!(sanitize("apply v1/x"), "apply-v1-x");
    }
}
