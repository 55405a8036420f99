//! The hidden synthetic backend: the namespace systemd test bed instead of a VM.
//!
//! Why it exists: the harness's own contract tests (bundles, failure files, the run document)
//! should not need a 20 s boot each. It is never the product path: the verification_run
//! document says `backend: synthetic`, and `--ci` refuses it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::machine::{Machine, MachineInfo};
use super::readiness::{self, ReadinessEvidence};

/// The project's test bed script: `CORE_OPS_VERIFY_TESTBED`, else
/// `scripts/systemd-testbed.sh` of the source tree [`super::resources::root`] finds.
pub fn testbed_script() -> Result<PathBuf> {
    match std::env::var_os("CORE_OPS_VERIFY_TESTBED") {
        Some(p) => Ok(PathBuf::from(p)),
        None => super::resources::path("scripts/systemd-testbed.sh"),
    }
}

/// A running bed.
pub struct Bed {
    script: PathBuf,
    dir: PathBuf,
    share: PathBuf,
    up: bool,
    kept: bool,
}

impl Drop for Bed {
    fn drop(&mut self) {
        if !self.kept {
            let _ = self.teardown();
        }
    }
}

/// Boot a bed in `dir` (its `share/` is the shared directory, at the same path inside) and
/// produce readiness evidence from a record the bed itself prints.
pub fn start(dir: &Path, console: &Path) -> Result<(Bed, ReadinessEvidence)> {
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let share = dir.join("share");
    std::fs::create_dir_all(&share)?;
    let script = testbed_script()?;
    let out = Command::new(&script)
        .arg("up")
        .arg(&dir)
        .output()
        .context("running scripts/systemd-testbed.sh")?;
    if !out.status.success() {
        bail!(
            "test bed did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let bed = Bed {
        script,
        dir,
        share,
        up: true,
        kept: false,
    };
    let nonce = super::report::random_hex(8);
    let script = format!(
        "systemctl is-system-running --wait >/dev/null 2>&1; echo \"{} run={nonce} boot_id=$(cat /proc/sys/kernel/random/boot_id) ip=none system=$(systemctl is-system-running)\"",
        readiness::READY_PREFIX
    );
    let out = bed.exec(&["bash", "-c", &script], Duration::from_secs(60))?;
    std::fs::write(console, &out.stdout)?;
    let ev = readiness::wait(console, &nonce, Duration::from_secs(1), false, || true);
    Ok((bed, ev))
}

impl Bed {
    fn exec(&self, args: &[&str], timeout: Duration) -> Result<std::process::Output> {
        Command::new("timeout")
            .arg(timeout.as_secs().max(1).to_string())
            .arg(&self.script)
            .arg("exec")
            .arg(&self.dir)
            .args(args)
            .output()
            .context("running scripts/systemd-testbed.sh exec")
    }
}

impl Machine for Bed {
    fn info(&self) -> MachineInfo {
        MachineInfo {
            backend: "synthetic".into(),
            driver: "testbed".into(),
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
        let cmd = format!("bash {script} </dev/null >{stdout} 2>{stderr}");
        let out = self.exec(&["bash", "-c", &cmd], timeout)?;
        match out.status.code() {
            Some(124) => bail!("no answer from the bed within {} s", timeout.as_secs()),
            Some(c) => Ok(c),
            None => bail!("bed exec killed: {}", out.status),
        }
    }

    fn keep_hint(&self) -> String {
        format!(
            "test bed kept: {} exec {} bash ; stop: {} down {}",
            self.script.display(),
            self.dir.display(),
            self.script.display(),
            self.dir.display()
        )
    }

    fn keep(&mut self) {
        self.kept = true;
    }

    fn teardown(&mut self) -> Result<()> {
        if !self.up {
            return Ok(());
        }
        self.up = false;
        let out = Command::new(&self.script)
            .arg("down")
            .arg(&self.dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "test bed did not stop: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}
