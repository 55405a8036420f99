//! The libvirt driver: the same [`GuestSpec`] as a transient domain, through the `virt` crate.
//!
//! Why transient (`virDomainCreateXML`): the domain disappears when destroyed, so a crashed
//! harness leaves nothing defined. libvirt writes the serial logs itself and runs qemu under
//! its own cgroup and mount namespace; the guest cannot tell the difference.

use anyhow::Result;

#[cfg(feature = "libvirt")]
use anyhow::Context;

use super::guest::GuestSpec;
use super::vm::Driver;

/// seed 003's default when nothing is configured.
pub const DEFAULT_URI: &str = "qemu:///system";

/// `CORE_OPS_VERIFY_LIBVIRT_URI`, else `qemu+ssh://core@$CORE_OPS_VERIFY_VM_HOST/system`.
pub fn configured_uri() -> Option<String> {
    uri_from(
        std::env::var("CORE_OPS_VERIFY_LIBVIRT_URI").ok(),
        std::env::var("CORE_OPS_VERIFY_VM_HOST").ok(),
    )
}

fn uri_from(uri: Option<String>, host: Option<String>) -> Option<String> {
    match (
        uri.filter(|u| !u.is_empty()),
        host.filter(|h| !h.is_empty()),
    ) {
        (Some(u), _) => Some(u),
        (None, Some(h)) => Some(format!("qemu+ssh://core@{h}/system")),
        (None, None) => None,
    }
}

/// Connect, or say why not.
#[cfg(feature = "libvirt")]
pub fn connect(uri: &str) -> Result<Box<dyn Driver>> {
    // libvirt's default handler also prints every error to stderr; the harness reports them
    virt::error::clear_error_callback();
    let conn = virt::connect::Connect::open(Some(uri))
        .map_err(|e| anyhow::anyhow!("{}", e.message()))
        .with_context(|| format!("connecting to libvirt at {uri}"))?;
    Ok(Box::new(LibvirtDriver {
        uri: uri.to_string(),
        conn,
        domain: None,
    }))
}

/// Connect, or say why not.
#[cfg(not(feature = "libvirt"))]
pub fn connect(uri: &str) -> Result<Box<dyn Driver>> {
    anyhow::bail!("built without the `libvirt` feature: cannot use {uri}")
}

/// A transient domain on a libvirt connection.
#[cfg(feature = "libvirt")]
pub struct LibvirtDriver {
    uri: String,
    conn: virt::connect::Connect,
    domain: Option<virt::domain::Domain>,
}

#[cfg(feature = "libvirt")]
impl Driver for LibvirtDriver {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn uri(&self) -> Option<String> {
        Some(self.uri.clone())
    }

    fn launch(&mut self, spec: &GuestSpec) -> Result<()> {
        let xml = spec.libvirt_xml();
        std::fs::write(spec.console_log.with_file_name("domain.xml"), &xml)?;
        let dom = self
            .conn
            .create_domain_xml(&xml, 0)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .with_context(|| {
                format!(
                    "creating the transient domain {} on {}",
                    spec.name, self.uri
                )
            })?;
        self.domain = Some(dom);
        // the clean-up script destroys it if the harness is stopped or killed (cleanup.rs)
        std::fs::write(
            spec.console_log.with_file_name("libvirt-domain"),
            format!("{} {}\n", self.uri, spec.name),
        )?;
        Ok(())
    }

    fn alive(&mut self) -> bool {
        self.domain
            .as_ref()
            .and_then(|d| d.is_active().ok())
            .unwrap_or(false)
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(d) = self.domain.take()
            && d.is_active().unwrap_or(false)
        {
            d.destroy()
                .map_err(|e| anyhow::anyhow!("destroying the domain: {}", e.message()))?;
        }
        Ok(())
    }

    fn keep_hint(&self, spec: &GuestSpec) -> String {
        format!(
            "domain {} kept on {}; shell: socat - UNIX-CONNECT:{} ; stop: virsh -c {} destroy {}",
            spec.name,
            self.uri,
            spec.control_socket.display(),
            self.uri,
            spec.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_precedence_follows_seed_003() {
        assert_eq!(uri_from(None, None), None);
        assert_eq!(
            uri_from(None, Some("ulthar".into())).as_deref(),
            Some("qemu+ssh://core@ulthar/system")
        );
        assert_eq!(
            uri_from(Some("qemu:///session".into()), Some("ulthar".into())).as_deref(),
            Some("qemu:///session")
        );
        assert_eq!(uri_from(Some(String::new()), None), None);
    }
}
