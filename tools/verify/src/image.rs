//! The guest image: kernel, initramfs and a base disk built from Debian packages by
//! `scripts/verify-image.sh`, cached under a key derived from that recipe.
//!
//! Why keyed by the recipe: a changed recipe must never boot a stale image, and an unchanged
//! one must not be rebuilt on every run (CI builds it once per run, developers once).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its directory.
    pub dir: PathBuf,
    /// PVH-bootable kernel.
    pub vmlinux: PathBuf,
    /// initramfs.
    pub initrd: PathBuf,
    /// Base disk (never written: each run boots an overlay).
    pub base: PathBuf,
    /// `manifest.json`: packages, digests, build time.
    pub manifest: PathBuf,
}

impl Image {
    /// The image in `dir`, if complete.
    pub fn open(dir: &Path) -> Result<Image> {
        let img = Image {
            dir: dir.to_path_buf(),
            vmlinux: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
            base: dir.join("base.qcow2"),
            manifest: dir.join("manifest.json"),
        };
        for p in [&img.vmlinux, &img.initrd, &img.base, &img.manifest] {
            if !p.is_file() {
                bail!(
                    "guest image incomplete: {} is missing (run `core-ops-verify image build`)",
                    p.display()
                );
            }
        }
        Ok(img)
    }

    /// The manifest as JSON, with the image directory added (for the run document).
    pub fn manifest_json(&self) -> serde_json::Value {
        let mut v = std::fs::read(&self.manifest)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        if let Some(o) = v.as_object_mut() {
            o.insert("dir".into(), self.dir.display().to_string().into());
        }
        v
    }
}

/// The recipe script, in the source tree [`super::resources::root`] finds.
pub fn recipe() -> Result<PathBuf> {
    super::resources::path("scripts/verify-image.sh")
}

/// Where images are cached (`CORE_OPS_TEST_CACHE`, default `/var/cache/core-ops-test`).
fn cache_root() -> PathBuf {
    std::env::var_os("CORE_OPS_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/core-ops-test"))
        .join("verify-image")
}

/// The scripts whose content defines the image: the recipe, the podman stack it stages
/// (`quadlet-bed.sh --fetch-only`), the generator wrapper it installs and the apt set-up both
/// fetch with.
const INPUTS: &[&str] = &[
    "scripts/verify-image.sh",
    "scripts/quadlet-bed.sh",
    "scripts/quadlet-generator",
    "scripts/lib/private-apt.sh",
];

/// The default image directory: `CORE_OPS_VERIFY_IMAGE`, else the cache entry of the current
/// inputs (`<cache>/verify-image/<first 16 hex of sha256 over the INPUTS files>`).
pub fn default_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CORE_OPS_VERIFY_IMAGE") {
        return Ok(PathBuf::from(d));
    }
    let root = super::resources::root()?;
    let mut all = Vec::new();
    for rel in INPUTS {
        let p = root.join(rel);
        let bytes = std::fs::read(&p)
            .with_context(|| format!("reading the image input {}", p.display()))?;
        all.extend_from_slice(core_ops::model::normalize::sha256_hex(&bytes).as_bytes());
    }
    let key = core_ops::model::normalize::sha256_hex(&all)[7..23].to_string();
    Ok(cache_root().join(key))
}

/// Build the image into `dir` unless it is complete already (or `force`). Returns the image
/// and the build time in seconds (0 when it was cached).
pub fn build(dir: &Path, force: bool) -> Result<(Image, f64)> {
    if !force && let Ok(img) = Image::open(dir) {
        return Ok((img, 0.0));
    }
    let started = Instant::now();
    let recipe = recipe()?;
    let status = Command::new("bash")
        .arg(&recipe)
        .arg(dir)
        // its KEY=VALUE lines and progress are for people; stdout stays the image path
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running {}", recipe.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", recipe.display());
    }
    Ok((Image::open(dir)?, started.elapsed().as_secs_f64()))
}
