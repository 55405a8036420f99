//! All host writes go through here: temp file in the same directory, write, fsync, set mode
//! and owner, rename over the target, fsync the directory.
//!
//! Why one module: "nothing half-written" is only true if every writer does all five steps;
//! a crash at any point leaves either the old file or the new one, never a mix.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::error::{Error, Result};
use crate::normalize::FileMeta;

/// Prefix of temp files, so a crash leftover is recognisable and cleaned up.
pub const TEMP_PREFIX: &str = ".core-ops-tmp-";

/// Write `data` to `path` atomically with mode and owner; creates parent dirs (0755).
/// One file through [`write_batch`]: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, data: &[u8], meta: Option<&FileMeta>) -> Result<()> {
    write_batch(&[BatchItem { path, data, meta }], |_| {})
}

/// Pretty JSON, newline-terminated: the one byte form of every JSON document core-ops writes
/// (state, receipts, plans, evidence, bundles), so digests taken of those bytes agree.
///
/// Panics only if `v` cannot be represented as JSON (a map with non-string keys), which no
/// record type has.
pub fn json_bytes<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("records serialize to JSON");
    b.push(b'\n');
    b
}

/// [`json_bytes`] of `v`, written with [`write_atomic`] (no mode or owner change).
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, v: &T) -> Result<()> {
    write_atomic(path, &json_bytes(v), None)
}

/// The directory of `path` and the temp name beside it that this process writes first
/// (`.core-ops-tmp-<name>-<pid>`: recognisable, and tied to its writer for
/// [`clean_temp_files`]).
fn temp_beside(path: &Path) -> Result<(&Path, PathBuf)> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Config(format!("{} has no parent directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Config(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    Ok((dir, tmp))
}

/// A file written in place of a temp name and renamed to its final path only when
/// [`AtomicFile::commit`] is called (after fsync); dropped uncommitted, the temp file is
/// removed.
///
/// Why: streamed content (a 100 MB artifact) cannot go through [`write_atomic`], which takes
/// the bytes in memory, and its final name may only be known at the end (a content digest).
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    tmp: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Create a temp file (mode 0644) in `dir`, creating the directory if needed.
    pub fn create(dir: &Path, label: &str) -> Result<AtomicFile> {
        create_dir_all_synced(dir)?;
        let tmp = dir.join(format!("{TEMP_PREFIX}{label}-{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        Ok(AtomicFile {
            file,
            tmp,
            committed: false,
        })
    }

    /// The open temp file, to write into.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// fsync, rename onto `path` (same filesystem), fsync the directory.
    pub fn commit(mut self, path: &Path) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("fsync {}", self.tmp.display()), e))?;
        fs::rename(&self.tmp, path).map_err(|e| {
            Error::io(
                format!("rename {} -> {}", self.tmp.display(), path.display()),
                e,
            )
        })?;
        self.committed = true;
        match path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Remove a file and fsync its directory; a missing file is not an error.
pub fn remove_synced(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("remove {}", path.display()), e)),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Rename a file or directory (same filesystem) and fsync the directories involved, so a
/// tree built in a staging directory appears whole or not at all.
pub fn rename_synced(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        create_dir_all_synced(dir)?;
    }
    fs::rename(from, to)
        .map_err(|e| Error::io(format!("rename {} -> {}", from.display(), to.display()), e))?;
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    if let Some(dir) = from.parent()
        && Some(dir) != to.parent()
    {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Point the symlink `link` at `target` atomically: a new symlink beside it, renamed over
/// it, directory fsynced. Readers see the old target or the new one, never no link.
pub fn symlink_atomic(target: &Path, link: &Path) -> Result<()> {
    let (dir, tmp) = temp_beside(link)?;
    create_dir_all_synced(dir)?;
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| Error::io(format!("symlink {}", tmp.display()), e))?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(
            format!("rename {} -> {}", tmp.display(), link.display()),
            e,
        ));
    }
    sync_dir(dir)
}

/// Remove a directory tree and fsync its parent; a missing tree is not an error.
pub fn remove_dir_all_synced(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("remove {}", dir.display()), e)),
    }
    if let Some(p) = dir.parent() {
        sync_dir(p)?;
    }
    Ok(())
}

/// fsync a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync dir {}", dir.display()), e))
}

/// `mkdir -p` that fsyncs each parent it created.
pub fn create_dir_all_synced(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("mkdir {}", d.display()), e)),
        }
        if let Some(p) = d.parent() {
            sync_dir(p)?;
        }
    }
    Ok(())
}

/// Remove temp files a killed run left in a directory: only ours (by prefix) and only those
/// whose writer (the pid at the end of the name) is gone, so a concurrent writer sharing the
/// directory is never disturbed.
pub fn clean_temp_files(dir: &Path) -> Result<usize> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let writer_alive = name
            .rsplit_once('-')
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if name.starts_with(TEMP_PREFIX) && !writer_alive {
            fs::remove_file(e.path())
                .map_err(|err| Error::io(format!("remove {}", e.path().display()), err))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Id <-> name lookups, cached for the life of the process: every lookup reads
/// /etc/passwd or /etc/group, and a plan of 400 objects would read them 800 times.
#[derive(Default)]
struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    uids: HashMap<String, Option<u32>>,
    gids: HashMap<String, Option<u32>>,
}

fn names() -> MutexGuard<'static, Names> {
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Owner and group names of a file (numeric when the id has no name).
pub fn owner_names(meta: &fs::Metadata) -> (String, String) {
    let mut n = names();
    let user = n
        .users
        .entry(meta.uid())
        .or_insert_with(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| meta.uid().to_string())
        })
        .clone();
    let group = n
        .groups
        .entry(meta.gid())
        .or_insert_with(|| {
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(meta.gid()))
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_else(|| meta.gid().to_string())
        })
        .clone();
    (user, group)
}

fn chown_by_name(path: &Path, owner: &str, group: &str) -> Result<()> {
    let (uid, gid) = {
        let mut n = names();
        let uid = *n.uids.entry(owner.to_string()).or_insert_with(|| {
            owner.parse::<u32>().ok().or_else(|| {
                nix::unistd::User::from_name(owner)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            })
        });
        let gid = *n.gids.entry(group.to_string()).or_insert_with(|| {
            group.parse::<u32>().ok().or_else(|| {
                nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
            })
        });
        (uid, gid)
    };
    let uid =
        uid.ok_or_else(|| Error::Config(format!("unknown user '{owner}' for {}", path.display())))?;
    let gid = gid
        .ok_or_else(|| Error::Config(format!("unknown group '{group}' for {}", path.display())))?;
    let current =
        fs::metadata(path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if current.uid() == uid && current.gid() == gid {
        return Ok(());
    }
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| Error::io(format!("chown {}", path.display()), e.into()))
}

/// One file of a batch write.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// Target path.
    pub path: &'a Path,
    /// Content.
    pub data: &'a [u8],
    /// Mode and owner (default 0644, current owner).
    pub meta: Option<&'a FileMeta>,
}

/// Batches at least this large flush with one `syncfs` per file system instead of one
/// `fsync` per file.
const SYNCFS_THRESHOLD: usize = 8;

/// Write many files atomically with the durability of [`write_atomic`] but far fewer
/// flushes. Small batches: each temp file is fsynced, renamed, and each directory fsynced
/// once. Large batches (8+ files): all temp files are written, one `syncfs` per file system
/// makes their data durable, all are renamed, and a second `syncfs` makes the renames (and
/// any directories created) durable: two flushes instead of two per file and one per new
/// directory. `after_rename(n)` is called after the n-th rename. A crash leaves each target
/// either old or new; leftover temp files carry the dead writer's pid and are removed by
/// [`clean_temp_files`].
pub fn write_batch(items: &[BatchItem<'_>], mut after_rename: impl FnMut(usize)) -> Result<()> {
    let mut temps: Vec<PathBuf> = Vec::with_capacity(items.len());
    let large = items.len() >= SYNCFS_THRESHOLD;
    let result = (|| -> Result<()> {
        let mut files: Vec<File> = Vec::with_capacity(items.len());
        for it in items {
            let (dir, tmp) = temp_beside(it.path)?;
            if large {
                // made durable by the final syncfs
                fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
            } else {
                create_dir_all_synced(dir)?;
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
            temps.push(tmp.clone());
            f.write_all(it.data)
                .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
            if let Some(m) = it.meta {
                chown_by_name(&tmp, &m.owner, &m.group)?;
            }
            fs::set_permissions(
                &tmp,
                fs::Permissions::from_mode(it.meta.map(|m| m.mode).unwrap_or(0o644)),
            )
            .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
            files.push(f);
        }
        // one open file per file system, for syncfs
        let mut devices: HashMap<u64, File> = HashMap::new();
        if large {
            for (f, tmp) in files.iter().zip(&temps) {
                let dev = f
                    .metadata()
                    .map_err(|e| Error::io(format!("stat {}", tmp.display()), e))?
                    .dev();
                if let std::collections::hash_map::Entry::Vacant(v) = devices.entry(dev) {
                    v.insert(
                        f.try_clone()
                            .map_err(|e| Error::io(format!("dup {}", tmp.display()), e))?,
                    );
                }
            }
            for f in devices.values() {
                nix::unistd::syncfs(f).map_err(|e| Error::io("syncfs".to_string(), e.into()))?;
            }
        } else {
            for (f, tmp) in files.iter().zip(&temps) {
                f.sync_all()
                    .map_err(|e| Error::io(format!("fsync {}", tmp.display()), e))?;
            }
        }
        drop(files);
        let mut dirs: Vec<&Path> = Vec::new();
        for (i, (it, tmp)) in items.iter().zip(&temps).enumerate() {
            fs::rename(tmp, it.path).map_err(|e| {
                Error::io(
                    format!("rename {} -> {}", tmp.display(), it.path.display()),
                    e,
                )
            })?;
            let dir = it.path.parent().expect("checked above");
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
            after_rename(i + 1);
        }
        if large {
            for f in devices.values() {
                nix::unistd::syncfs(f).map_err(|e| Error::io("syncfs".to_string(), e.into()))?;
            }
        } else {
            for d in dirs {
                sync_dir(d)?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for t in &temps {
            let _ = fs::remove_file(t);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_writes_small_and_large_batches_whole_with_modes() {
        let d = tempfile::tempdir().unwrap();
        for n in [3usize, 20] {
            let paths: Vec<PathBuf> = (0..n)
                .map(|i| d.path().join(format!("b{n}/f{i}")))
                .collect();
            let datas: Vec<Vec<u8>> = (0..n)
                .map(|i| format!("content {i}").into_bytes())
                .collect();
            let items: Vec<BatchItem<'_>> = paths
                .iter()
                .zip(&datas)
                .map(|(p, c)| BatchItem {
                    path: p,
                    data: c,
                    meta: None,
                })
                .collect();
            let mut renamed = Vec::new();
            write_batch(&items, |k| renamed.push(k)).unwrap();
            assert_eq!(renamed, (1..=n).collect::<Vec<_>>());
            for (p, c) in paths.iter().zip(&datas) {
                assert_eq!(&fs::read(p).unwrap(), c);
                assert_eq!(fs::metadata(p).unwrap().mode() & 0o7777, 0o644);
            }
            let leftovers = fs::read_dir(d.path().join(format!("b{n}")))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with(TEMP_PREFIX)
                })
                .count();
            assert_eq!(leftovers, 0);
        }
    }

    #[test]
    fn writes_atomically_with_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c.txt");
        write_atomic(&p, b"one", None).unwrap();
        write_atomic(
            &p,
            b"two",
            Some(&FileMeta {
                mode: 0o600,
                owner: nix::unistd::User::from_uid(nix::unistd::getuid())
                    .unwrap()
                    .unwrap()
                    .name,
                group: nix::unistd::Group::from_gid(nix::unistd::getgid())
                    .unwrap()
                    .unwrap()
                    .name,
            }),
        )
        .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c.txt")]);
    }

    #[test]
    fn symlink_is_replaced_atomically() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("current");
        symlink_atomic(Path::new("1.0"), &link).unwrap();
        symlink_atomic(Path::new("2.0"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("2.0"));
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn cleans_only_its_own_temp_files() {
        let d = tempfile::tempdir().unwrap();
        // a dead writer's leftover (pid 0 is never a process) goes, a live writer's stays
        fs::write(d.path().join(format!("{TEMP_PREFIX}x-0")), b"half").unwrap();
        let live = d
            .path()
            .join(format!("{TEMP_PREFIX}y-{}", std::process::id()));
        fs::write(&live, b"being written").unwrap();
        fs::write(d.path().join("keep"), b"mine").unwrap();
        assert_eq!(clean_temp_files(d.path()).unwrap(), 1);
        assert!(d.path().join("keep").exists());
        assert!(live.exists());
    }
}
