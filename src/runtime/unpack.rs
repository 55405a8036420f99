//! Unpack `.tar.gz` artifacts into a staging directory, refusing anything that could write
//! outside it: absolute paths, `..`, symlinks or hard links pointing out of the tree, device
//! files and FIFOs, and dropping setuid/setgid/sticky bits. The caller renames the finished
//! staging directory into place, so a runtime tree appears whole or not at all.

use std::path::{Component, Path};

use flate2::read::GzDecoder;
use tar::{Archive, EntryType};

/// What one unpack wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unpacked {
    /// Entries written (files, dirs, links).
    pub entries: u64,
    /// Bytes of regular files.
    pub bytes: u64,
}

/// Depth of a relative path inside the tree, or `None` if it is absolute or uses `..` at
/// all (entry paths must be plain).
fn plain_relative(p: &Path) -> Option<usize> {
    let mut depth = 0;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(depth)
}

/// Whether a symlink at `entry` (relative path) with `target` stays inside the tree.
fn link_stays_inside(entry: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = entry.parent().and_then(plain_relative).unwrap_or(0) as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// Unpack one `.tar.gz` into `dest` (created if missing). Errors are the reason, for the
/// transaction's failure record.
pub fn unpack(archive: &Path, dest: &Path) -> Result<Unpacked, String> {
    std::fs::create_dir_all(dest).map_err(|e| format!("mkdir {}: {e}", dest.display()))?;
    let f = std::fs::File::open(archive).map_err(|e| format!("open {}: {e}", archive.display()))?;
    let mut ar = Archive::new(GzDecoder::new(std::io::BufReader::with_capacity(
        1 << 20,
        f,
    )));
    // rwx bits as archived; setuid, setgid and sticky bits are dropped (core-ops unpacks as
    // root, and a runtime has no business shipping setuid binaries)
    ar.set_preserve_permissions(false);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    let mut stats = Unpacked::default();
    let entries = ar
        .entries()
        .map_err(|e| format!("{}: not a tar.gz archive: {e}", archive.display()))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| format!("{}: corrupt archive: {e}", archive.display()))?;
        let kind = entry.header().entry_type();
        let path = entry
            .path()
            .map_err(|e| format!("{}: bad entry name: {e}", archive.display()))?
            .into_owned();
        let shown = path.display().to_string();
        match kind {
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("{shown}: bad link target: {e}"))?
                    .ok_or_else(|| format!("{shown}: link without a target"))?
                    .into_owned();
                let inside = if kind == EntryType::Link {
                    plain_relative(&target).is_some_and(|d| d > 0)
                } else {
                    link_stays_inside(&path, &target)
                };
                if !inside {
                    return Err(format!(
                        "{}: entry '{shown}' links to '{}' outside the runtime tree (refused)",
                        archive.display(),
                        target.display()
                    ));
                }
            }
            other => {
                return Err(format!(
                    "{}: entry '{shown}' is a {other:?}, which runtimes may not contain (refused)",
                    archive.display()
                ));
            }
        }
        // `./` itself is fine as a directory entry; anything else must name a path inside
        let inside = match plain_relative(&path) {
            None => false,
            Some(0) => kind == EntryType::Directory,
            Some(_) => true,
        };
        if !inside {
            return Err(format!(
                "{}: entry '{shown}' is absolute or leaves the runtime tree (refused)",
                archive.display()
            ));
        }
        if kind == EntryType::Regular || kind == EntryType::Continuous {
            stats.bytes += entry.size();
        }
        let written = entry
            .unpack_in(dest)
            .map_err(|e| format!("{}: unpack '{shown}': {e}", archive.display()))?;
        if !written {
            return Err(format!(
                "{}: entry '{shown}' leaves the runtime tree (refused)",
                archive.display()
            ));
        }
        stats.entries += 1;
    }
    Ok(stats)
}

/// Flush everything written under `dir` to disk (one `syncfs`), before it is renamed into
/// place.
pub fn sync_tree(dir: &Path) -> Result<(), String> {
    let f = std::fs::File::open(dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
    nix::unistd::syncfs(&f).map_err(|e| format!("syncfs {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn targz(build: impl FnOnce(&mut tar::Builder<GzEncoder<Vec<u8>>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        build(&mut b);
        b.into_inner().unwrap().finish().unwrap()
    }

    fn file(b: &mut tar::Builder<GzEncoder<Vec<u8>>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(EntryType::Regular);
        // set_path refuses `..`; write the raw name to build hostile archives
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<GzEncoder<Vec<u8>>>, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(EntryType::Symlink);
        h.set_mode(0o777);
        b.append_link(&mut h, path, target).unwrap();
    }

    fn run(bytes: Vec<u8>) -> (tempfile::TempDir, Result<Unpacked, String>) {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.tar.gz");
        std::fs::write(&a, bytes).unwrap();
        let r = unpack(&a, &d.path().join("out"));
        (d, r)
    }

    #[test]
    fn unpacks_files_with_modes_and_inner_links() {
        let (d, r) = run(targz(|b| {
            file(b, "bin/hello", b"#!/bin/sh\necho hi\n", 0o755);
            file(b, "bin/suid", b"x", 0o4755);
            link(b, "bin/hi", "hello");
            link(b, "lib/up", "../bin/hello");
        }));
        let st = r.unwrap();
        assert_eq!(st.entries, 4);
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(d.path().join("out/bin/hello")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o755);
        let suid = std::fs::metadata(d.path().join("out/bin/suid")).unwrap();
        assert_eq!(suid.permissions().mode() & 0o7777, 0o755, "setuid dropped");
        assert_eq!(
            std::fs::read(d.path().join("out/bin/hi")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        sync_tree(&d.path().join("out")).unwrap();
    }

    #[test]
    fn traversal_is_refused() {
        for hostile in [
            targz(|b| file(b, "../evil", b"x", 0o644)),
            targz(|b| file(b, "/abs/evil", b"x", 0o644)),
            targz(|b| link(b, "escape", "../../etc")),
            targz(|b| link(b, "abs", "/etc/passwd")),
        ] {
            let (d, r) = run(hostile);
            let e = r.unwrap_err();
            assert!(e.contains("refused"), "{e}");
            assert!(!d.path().join("evil").exists());
        }
        let (_, r) = run(b"not gzip".to_vec());
        assert!(r.is_err());
    }
}
