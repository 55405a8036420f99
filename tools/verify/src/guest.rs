//! One guest description, rendered for either driver.
//!
//! Why one description: the qemu argv and the libvirt domain XML must describe the same
//! machine (kernel, initrd, copy-on-write overlay, 9p share, virtio-serial control port, two
//! serial logs), so a scenario behaves the same under both; only the launcher differs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The 9p mount tag the guest's fstab mounts at [`GUEST_SHARE`].
pub const SHARE_TAG: &str = "host0";
/// Where the share appears in the guest.
pub const GUEST_SHARE: &str = "/mnt/host";
/// The virtio-serial port name the guest's control service listens on.
pub const CONTROL_PORT: &str = "core-ops.ctl";

/// Software emulation or hardware virtualization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// KVM only when `/dev/kvm` opens and the CPU advertises vmx/svm; `CORE_OPS_VERIFY_ACCEL`
    /// (`kvm`/`tcg`) overrides.
    ///
    /// Why the CPU flag: on these machines `/dev/kvm` exists (kvm_pvm) but cannot run a stock
    /// kernel (`docs/vm-testbed.md`), and trying costs minutes.
    pub fn detect() -> Accel {
        match std::env::var("CORE_OPS_VERIFY_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if hw && kvm { Accel::Kvm } else { Accel::Tcg }
    }
}

/// Everything that defines one disposable guest.
#[derive(Debug, Clone, Serialize)]
pub struct GuestSpec {
    /// Domain / process name.
    pub name: String,
    /// Uncompressed kernel (PVH boot).
    pub kernel: PathBuf,
    /// initramfs.
    pub initrd: PathBuf,
    /// The copy-on-write overlay over the image's base.qcow2 (created per run).
    pub overlay: PathBuf,
    /// Host directory shared as [`SHARE_TAG`].
    pub share: PathBuf,
    /// Host end of the control port.
    pub control_socket: PathBuf,
    /// ttyS0: kernel, systemd and the readiness record.
    pub console_log: PathBuf,
    /// ttyS1: the guest journal, live.
    pub journal_log: PathBuf,
    /// QMP socket (qemu driver: power-off and quit).
    pub qmp_socket: PathBuf,
    /// qemu's pid file (qemu driver).
    pub pidfile: PathBuf,
    /// MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// This run's readiness nonce, on the kernel command line.
    pub nonce: String,
    /// Acceleration.
    pub accel: Accel,
}

impl GuestSpec {
    /// The kernel command line.
    pub fn cmdline(&self) -> String {
        format!(
            "console=ttyS0 root=/dev/vda rw panic=-1 core_ops_verify.run={}",
            self.nonce
        )
    }

    /// The qemu argv (without the program), daemonizing with a pid file.
    pub fn qemu_argv(&self) -> Vec<String> {
        let p = |x: &PathBuf| x.display().to_string();
        let accel = match self.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        };
        let cpu = match self.accel {
            Accel::Tcg => "max",
            Accel::Kvm => "host",
        };
        [
            "-name",
            &self.name,
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-machine",
            "q35",
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.vcpus.to_string(),
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nodefaults",
            "-kernel",
            &p(&self.kernel),
            "-initrd",
            &p(&self.initrd),
            "-append",
            &self.cmdline(),
            "-drive",
            &format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                p(&self.overlay)
            ),
            "-device",
            "virtio-rng-pci",
            "-device",
            "virtio-serial-pci",
            "-chardev",
            &format!(
                "socket,id=ctl,path={},server=on,wait=off",
                p(&self.control_socket)
            ),
            "-device",
            &format!("virtserialport,chardev=ctl,name={CONTROL_PORT}"),
            "-virtfs",
            &format!(
                "local,path={},mount_tag={SHARE_TAG},security_model=none,id={SHARE_TAG}",
                p(&self.share)
            ),
            "-serial",
            &format!("file:{}", p(&self.console_log)),
            "-serial",
            &format!("file:{}", p(&self.journal_log)),
            "-qmp",
            &format!("unix:{},server=on,wait=off", p(&self.qmp_socket)),
            "-pidfile",
            &p(&self.pidfile),
            "-daemonize",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The same machine as a transient libvirt domain.
    ///
    /// Why no NIC: control and files go over virtio-serial and 9p, which libvirt 9.0 expresses
    /// natively (it cannot express host port forwarding: `docs/vm-testbed.md`).
    pub fn libvirt_xml(&self) -> String {
        let e = |p: &PathBuf| xml_escape(&p.display().to_string());
        let (domain_type, cpu) = match self.accel {
            Accel::Tcg => ("qemu", "<cpu mode='maximum'/>"),
            Accel::Kvm => ("kvm", "<cpu mode='host-passthrough'/>"),
        };
        format!(
            "<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  {cpu}
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file='{overlay}'/><target dev='vda' bus='virtio'/>
    </disk>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='{share}'/><target dir='{SHARE_TAG}'/>
    </filesystem>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <serial type='file'><source path='{journal}'/><target port='1'/></serial>
    <channel type='unix'><source mode='bind' path='{ctl}'/>
      <target type='virtio' name='{CONTROL_PORT}'/></channel>
    <controller type='usb' model='none'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
",
            name = xml_escape(&self.name),
            mem = self.memory_mib,
            vcpus = self.vcpus,
            kernel = e(&self.kernel),
            initrd = e(&self.initrd),
            cmdline = xml_escape(&self.cmdline()),
            overlay = e(&self.overlay),
            share = e(&self.share),
            console = e(&self.console_log),
            journal = e(&self.journal_log),
            ctl = e(&self.control_socket),
        )
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GuestSpec {
        let r = PathBuf::from("/run/x");
        GuestSpec {
            name: "cov-1".into(),
            kernel: "/img/vmlinux".into(),
            initrd: "/img/initrd.img".into(),
            overlay: r.join("disk.qcow2"),
            share: r.join("share"),
            control_socket: r.join("ctl.sock"),
            console_log: r.join("console.log"),
            journal_log: r.join("journal.log"),
            qmp_socket: r.join("qmp.sock"),
            pidfile: r.join("qemu.pid"),
            memory_mib: 768,
            vcpus: 2,
            nonce: "n0nce".into(),
            accel: Accel::Tcg,
        }
    }

    /// Both renderings carry the same machine: the same files, port, tag and command line.
    #[test]
    fn qemu_and_libvirt_describe_the_same_guest() {
        let s = spec();
        let argv = s.qemu_argv().join(" ");
        let xml = s.libvirt_xml();
        for needle in [
            "/img/vmlinux",
            "/img/initrd.img",
            "/run/x/disk.qcow2",
            "/run/x/share",
            "/run/x/ctl.sock",
            "/run/x/console.log",
            "/run/x/journal.log",
            "core_ops_verify.run=n0nce",
            CONTROL_PORT,
            SHARE_TAG,
            "768",
        ] {
            assert!(argv.contains(needle), "argv lacks {needle}: {argv}");
            assert!(xml.contains(needle), "xml lacks {needle}: {xml}");
        }
        assert!(argv.contains("-accel tcg"));
        assert!(xml.contains("<domain type='qemu'>"));
    }

    #[test]
    fn xml_escapes_paths() {
        let mut s = spec();
        s.share = "/tmp/a&b".into();
        assert!(s.libvirt_xml().contains("/tmp/a&amp;b"));
    }
}
