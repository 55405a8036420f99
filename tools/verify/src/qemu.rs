//! The qemu driver: `qemu-system-x86_64 -daemonize` with a pid file, stopped through QMP.
//!
//! Why it exists beside libvirt: it needs no daemons and is the fallback when no libvirt
//! answers; the guest is the same [`GuestSpec`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::guest::GuestSpec;
use super::vm::Driver;

/// The qemu binary (`CORE_OPS_VERIFY_QEMU` overrides).
pub fn qemu_binary() -> String {
    std::env::var("CORE_OPS_VERIFY_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// A qemu process started by this harness.
#[derive(Default)]
pub struct QemuDriver {
    pid: Option<i32>,
    qmp: Option<PathBuf>,
}

impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn launch(&mut self, spec: &GuestSpec) -> Result<()> {
        let stderr_path = spec.console_log.with_file_name("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path)?;
        let bin = qemu_binary();
        let status = Command::new(&bin)
            .args(spec.qemu_argv())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .with_context(|| format!("starting {bin} (scripts/prereqs.sh installs it)"))?;
        if !status.success() {
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            bail!("{bin} failed to start ({status}): {}", err.trim());
        }
        let pid: i32 = std::fs::read_to_string(&spec.pidfile)
            .with_context(|| format!("reading {}", spec.pidfile.display()))?
            .trim()
            .parse()
            .context("qemu pid file")?;
        self.pid = Some(pid);
        self.qmp = Some(spec.qmp_socket.clone());
        Ok(())
    }

    fn alive(&mut self) -> bool {
        match self.pid {
            Some(p) => kill(Pid::from_raw(p), None).is_ok() && !is_zombie(p),
            None => false,
        }
    }

    fn stop(&mut self) -> Result<()> {
        let Some(pid) = self.pid.take() else {
            return Ok(());
        };
        if let Some(q) = &self.qmp
            && let Err(e) = qmp_quit(q)
        {
            tracing::debug!("qmp quit: {e:#}");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while kill(Pid::from_raw(pid), None).is_ok() && !is_zombie(pid) {
            if Instant::now() > deadline {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn keep_hint(&self, spec: &GuestSpec) -> String {
        format!(
            "qemu pid {} kept; shell: socat - UNIX-CONNECT:{} ; console: {} ; stop: kill {}",
            self.pid.unwrap_or(0),
            spec.control_socket.display(),
            spec.console_log.display(),
            self.pid.unwrap_or(0)
        )
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}

/// `qmp_capabilities` then `quit`.
fn qmp_quit(socket: &std::path::Path) -> Result<()> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?; // greeting
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    line.clear();
    r.read_line(&mut line)?;
    s.write_all(b"{\"execute\":\"quit\"}\n")?;
    Ok(())
}
