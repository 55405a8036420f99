//! The product path: a disposable VM per scenario run.
//!
//! Each run gets a fresh copy-on-write overlay over the image's `base.qcow2`, so runs never
//! share state; the guest is launched by one of two drivers from the same [`GuestSpec`], its
//! readiness record is awaited on the serial console, and commands go over the virtio-serial
//! control port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::control::Control;
use super::guest::{GUEST_SHARE, GuestSpec};
use super::image::Image;
use super::machine::{Machine, MachineInfo};
use super::readiness::{self, ReadinessEvidence, ReadinessState};

/// What launches and stops the guest process.
pub trait Driver {
    /// `qemu` or `libvirt`.
    fn name(&self) -> &'static str;
    /// libvirt URI, if any.
    fn uri(&self) -> Option<String> {
        None
    }
    /// Start the guest described by `spec`.
    fn launch(&mut self, spec: &GuestSpec) -> Result<()>;
    /// Whether the guest is still running.
    fn alive(&mut self) -> bool;
    /// Stop it now (the overlay is thrown away, so no clean power-off is needed).
    fn stop(&mut self) -> Result<()>;
    /// How to reach a kept guest.
    fn keep_hint(&self, spec: &GuestSpec) -> String;
}

/// A running VM.
pub struct Vm {
    spec: GuestSpec,
    driver: Box<dyn Driver>,
    control: Option<Control>,
    run_dir: PathBuf,
    stopped: bool,
    kept: bool,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.kept {
            let _ = self.teardown();
        }
    }
}

/// Settings of a VM launch.
pub struct VmOptions<'a> {
    /// The guest image.
    pub image: &'a Image,
    /// Directory for the overlay, sockets and logs.
    pub run_dir: &'a Path,
    /// Shared directory.
    pub share: &'a Path,
    /// Guest memory.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Readiness timeout.
    pub ready_timeout: Duration,
    /// `CORE_OPS_VERIFY_ALLOW_ARP_FALLBACK`.
    pub allow_arp_fallback: bool,
}

/// Launch a VM and wait for readiness. The evidence is returned whatever happened; the VM only
/// when it became ready (otherwise it has been stopped).
pub fn start(
    opts: &VmOptions<'_>,
    mut driver: Box<dyn Driver>,
) -> Result<(Option<Vm>, ReadinessEvidence)> {
    std::fs::create_dir_all(opts.run_dir)?;
    let run_dir = std::fs::canonicalize(opts.run_dir)?;
    let nonce = super::report::random_hex(8);
    let spec = GuestSpec {
        name: format!("core-ops-verify-{nonce}"),
        kernel: opts.image.vmlinux.clone(),
        initrd: opts.image.initrd.clone(),
        overlay: run_dir.join("disk.qcow2"),
        share: std::fs::canonicalize(opts.share)?,
        control_socket: run_dir.join("ctl.sock"),
        console_log: run_dir.join("console.log"),
        journal_log: run_dir.join("journal.log"),
        qmp_socket: run_dir.join("qmp.sock"),
        pidfile: run_dir.join("qemu.pid"),
        memory_mib: opts.memory_mib,
        vcpus: opts.vcpus,
        nonce: nonce.clone(),
        accel: super::guest::Accel::detect(),
    };
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&opts.image.base)
        .arg(&spec.overlay)
        .status()
        .context("running qemu-img (apt-get install qemu-utils)")?;
    if !status.success() {
        bail!("qemu-img create of the overlay failed: {status}");
    }
    driver.launch(&spec)?;
    let evidence = readiness::wait(
        &spec.console_log,
        &nonce,
        opts.ready_timeout,
        opts.allow_arp_fallback,
        || driver.alive(),
    );
    let mut vm = Vm {
        spec,
        driver,
        control: None,
        run_dir,
        stopped: false,
        kept: false,
    };
    if evidence.state != ReadinessState::Accepted {
        vm.teardown()?;
        return Ok((None, evidence));
    }
    vm.control = Some(Control::connect(
        &vm.spec.control_socket,
        Duration::from_secs(10),
    )?);
    Ok((Some(vm), evidence))
}

impl Vm {
    /// The console log (ttyS0).
    pub fn console_log(&self) -> &Path {
        &self.spec.console_log
    }
    /// The live journal (ttyS1).
    pub fn journal_log(&self) -> &Path {
        &self.spec.journal_log
    }
}

impl Machine for Vm {
    fn info(&self) -> MachineInfo {
        MachineInfo {
            backend: "vm".into(),
            driver: self.driver.name().into(),
            accel: Some(self.spec.accel),
            libvirt_uri: self.driver.uri(),
        }
    }

    fn host_share(&self) -> &Path {
        &self.spec.share
    }

    fn guest_share(&self) -> String {
        GUEST_SHARE.into()
    }

    fn run_script(
        &mut self,
        script: &str,
        stdout: &str,
        stderr: &str,
        timeout: Duration,
    ) -> Result<i32> {
        let Some(c) = self.control.as_mut() else {
            bail!("the VM is not running");
        };
        c.run_script(script, stdout, stderr, timeout)
    }

    fn keep_hint(&self) -> String {
        self.driver.keep_hint(&self.spec)
    }

    fn keep(&mut self) {
        self.kept = true;
    }

    fn teardown(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.control = None;
        self.driver.stop()?;
        let _ = std::fs::remove_file(&self.spec.overlay);
        let _ = std::fs::remove_file(self.run_dir.join("ctl.sock"));
        let _ = std::fs::remove_file(self.run_dir.join("qmp.sock"));
        Ok(())
    }
}

/// Pick the driver: libvirt when `CORE_OPS_VERIFY_LIBVIRT_URI` or `CORE_OPS_VERIFY_VM_HOST`
/// is set (an explicit choice: failing to connect is an error) or when `qemu:///system`
/// answers; otherwise qemu directly. `forced` (`--driver`) overrides the automatic choice.
pub fn choose_driver(forced: Option<&str>, log: &mut dyn FnMut(String)) -> Result<Box<dyn Driver>> {
    let explicit = super::libvirt::configured_uri();
    match (forced, explicit) {
        (Some("qemu"), _) => {
            log("driver: qemu (--driver qemu)".into());
            Ok(Box::new(super::qemu::QemuDriver::default()))
        }
        (Some("libvirt"), uri) => {
            let uri = uri.unwrap_or_else(|| super::libvirt::DEFAULT_URI.into());
            log(format!("driver: libvirt {uri} (--driver libvirt)"));
            super::libvirt::connect(&uri)
        }
        (Some(other), _) => bail!("unknown driver {other:?} (qemu, libvirt)"),
        (None, Some(uri)) => {
            log(format!("driver: libvirt {uri} (from the environment)"));
            super::libvirt::connect(&uri)
        }
        (None, None) => match super::libvirt::connect(super::libvirt::DEFAULT_URI) {
            Ok(d) => {
                log(format!(
                    "driver: libvirt {} (it answers)",
                    super::libvirt::DEFAULT_URI
                ));
                Ok(d)
            }
            Err(e) => {
                log(format!(
                    "driver: qemu directly ({} does not answer: {e:#})",
                    super::libvirt::DEFAULT_URI
                ));
                Ok(Box::new(super::qemu::QemuDriver::default()))
            }
        },
    }
}
