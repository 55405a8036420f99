//! Where core-ops-verify finds the files it is not built from but runs: the guest image recipe
//! and its inputs (`scripts/`), the shipped units put into the guest (`units/`) and the test
//! bed script of the synthetic backend.
//!
//! Why not the build machine's path: a binary copied to another machine (or a CI runner with
//! another checkout) must not read a directory that only existed where it was compiled. The
//! source tree is, in order: `--source-dir DIR`, `CORE_OPS_VERIFY_SOURCE_DIR`, the nearest
//! ancestor of the binary's own directory that holds `scripts/verify-image.sh` (a
//! `target/<profile>/core-ops-verify` finds its checkout), then the same search from the
//! current directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Result, bail};

/// `--source-dir`, set once by the command line.
static FLAG: OnceLock<PathBuf> = OnceLock::new();

/// The file that marks a core-ops source tree.
const MARKER: &str = "scripts/verify-image.sh";

/// Record `--source-dir` (first call wins).
pub fn set_flag(dir: PathBuf) {
    let _ = FLAG.set(dir);
}

/// The source tree (see the module documentation for the order), or an error naming the
/// ways to give it.
pub fn root() -> Result<PathBuf> {
    let env = std::env::var_os("CORE_OPS_VERIFY_SOURCE_DIR").map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    find(FLAG.get().cloned(), env, exe.as_deref(), cwd.as_deref())
}

/// [`root`] with its inputs explicit (unit-tested).
pub fn find(
    flag: Option<PathBuf>,
    env: Option<PathBuf>,
    exe: Option<&Path>,
    cwd: Option<&Path>,
) -> Result<PathBuf> {
    for (what, dir) in [("--source-dir", flag), ("CORE_OPS_VERIFY_SOURCE_DIR", env)] {
        if let Some(d) = dir {
            if d.join(MARKER).is_file() {
                return Ok(d);
            }
            bail!("{what} {}: no {MARKER} there", d.display());
        }
    }
    let searched: Vec<&Path> = [exe.and_then(Path::parent), cwd]
        .into_iter()
        .flatten()
        .collect();
    for start in &searched {
        if let Some(d) = start.ancestors().find(|d| d.join(MARKER).is_file()) {
            return Ok(d.to_path_buf());
        }
    }
    bail!(
        "cannot find the core-ops source tree ({MARKER}) above {}: pass --source-dir DIR or set CORE_OPS_VERIFY_SOURCE_DIR",
        searched
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

/// A path inside the source tree.
pub fn path(rel: &str) -> Result<PathBuf> {
    Ok(root()?.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_by_flag_env_binary_or_cwd_in_that_order() {
        let t = tempfile::tempdir().unwrap();
        let tree = |n: &str| {
            let d = t.path().join(n);
            std::fs::create_dir_all(d.join("scripts")).unwrap();
            std::fs::create_dir_all(d.join("target/debug")).unwrap();
            std::fs::write(d.join(MARKER), "").unwrap();
            d
        };
        let (a, b, c, e) = (tree("a"), tree("b"), tree("c"), tree("e"));
        let exe = c.join("target/debug/core-ops-verify");
        let cwd = e.join("target");
        assert_eq!(
            find(Some(a.clone()), Some(b.clone()), Some(&exe), Some(&cwd)).unwrap(),
            a
        );
        assert_eq!(
            find(None, Some(b.clone()), Some(&exe), Some(&cwd)).unwrap(),
            b
        );
        assert_eq!(find(None, None, Some(&exe), Some(&cwd)).unwrap(), c);
        assert_eq!(find(None, None, None, Some(&cwd)).unwrap(), e);
        // a flag that names no source tree is an error, not a silent fall-through
        let err = find(Some(t.path().into()), None, Some(&exe), None).unwrap_err();
        assert!(format!("{err}").contains("--source-dir"), "{err}");
        let err = find(None, None, Some(Path::new("/nonexistent/x")), None).unwrap_err();
        assert!(
            format!("{err}").contains("CORE_OPS_VERIFY_SOURCE_DIR"),
            "{err}"
        );
    }
}
