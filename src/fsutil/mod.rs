//! All host writes go through here: temp file in the same directory, write, fsync, set mode
//! and owner, rename over the target, fsync the directory.
//!
//! Why one module: "nothing half-written" is only true if every writer does all five steps;
//! a crash at any point leaves either the old file or the new one, never a mix.
//!
//! Temp files are created exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`) under an unpredictable
//! name, and owner and mode are set on the open descriptor: whoever else can write the
//! directory cannot make core-ops write, chown or chmod anything but the file it created.
//! Host files are reached beneath their root without following symlinks ([`beneath`]).

pub mod beneath;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::error::{Error, Result};
use crate::model::normalize::FileMeta;
use beneath::{Create, DirFd};

/// Prefix of temp files, so a crash leftover is recognisable and cleaned up. The full name is
/// `<prefix><label>-<16 random hex digits>-<pid of the writer>`.
pub const TEMP_PREFIX: &str = ".core-ops-tmp-";

/// Write `data` to `path` atomically with mode and owner; creates parent dirs (0755).
/// One file through [`write_batch`]: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, data: &[u8], meta: Option<&FileMeta>) -> Result<()> {
    write_batch(
        &[BatchItem {
            path,
            data,
            meta,
            beneath: None,
        }],
        |_| {},
    )
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

/// The directory and file name of `path`.
fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Config(format!("{} has no parent directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Config(format!("{} has no file name", path.display())))?;
    Ok((dir, name))
}

/// A fresh temp name for `label` (`.core-ops-tmp-<label>-<random>-<pid>`): recognisable by
/// its prefix, tied to its writer's pid for [`clean_temp_files`], and unpredictable, so no one
/// can plant it in advance.
fn temp_name(label: &OsStr) -> Result<OsString> {
    let random = getrandom::u64().map_err(|e| {
        Error::io(
            "getrandom for a temp name".to_string(),
            std::io::Error::other(e.to_string()),
        )
    })?;
    // keep the name well under NAME_MAX whatever the label
    let label: String = label.to_string_lossy().chars().take(64).collect();
    Ok(OsString::from(format!(
        "{TEMP_PREFIX}{label}-{random:016x}-{}",
        std::process::id()
    )))
}

/// Create a new temp file (mode 0600) for `label` in `dir`: `O_CREAT | O_EXCL | O_NOFOLLOW`,
/// so an existing name (a planted symlink or file) is never opened, only skipped.
fn create_temp(dir: &DirFd, label: &OsStr) -> Result<(OsString, File)> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut last = Errno::EEXIST;
    for _ in 0..8 {
        let name = temp_name(label)?;
        match openat(
            dir,
            name.as_os_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(Errno::EEXIST) => last = Errno::EEXIST,
            Err(e) => {
                return Err(Error::io(
                    format!("create {}", dir.path().join(&name).display()),
                    e.into(),
                ));
            }
        }
    }
    Err(Error::io(
        format!("create a temp file in {}", dir.path().display()),
        last.into(),
    ))
}

/// Remove a temp file this process created (best effort: used on error paths and drop).
fn unlink_temp(dir: &DirFd, name: &OsStr) {
    let _ = unlinkat(dir, name, UnlinkatFlags::NoRemoveDir);
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
    dir: DirFd,
    name: OsString,
    tmp: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Create a temp file (mode 0644, 0600 in a private directory) in `dir`, creating the
    /// directory if needed; created exclusively under an unpredictable name (see
    /// [`TEMP_PREFIX`]).
    pub fn create(dir: &Path, label: &str) -> Result<AtomicFile> {
        let dir = DirFd::open_owned(dir, true)?;
        let (name, file) = create_temp(&dir, OsStr::new(label))?;
        let tmp = dir.path().join(&name);
        file.set_permissions(fs::Permissions::from_mode(default_file_mode(&dir)))
            .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
        Ok(AtomicFile {
            file,
            dir,
            name,
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

    /// fsync, then give the file its final name only if no file of that name exists (a hard
    /// link, which never replaces: `EEXIST` is returned as an error of kind `AlreadyExists`),
    /// drop the temp name and fsync the directory.
    ///
    /// Why: of two writers racing for one name (a receipt sequence number) exactly one wins;
    /// the other learns it lost instead of silently replacing the winner's file.
    pub fn commit_new(mut self, path: &Path) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("fsync {}", self.tmp.display()), e))?;
        fs::hard_link(&self.tmp, path).map_err(|e| {
            Error::io(
                format!("link {} -> {}", self.tmp.display(), path.display()),
                e,
            )
        })?;
        // the temp name is removed by drop (uncommitted); the content lives on under `path`
        unlink_temp(&self.dir, &self.name);
        self.committed = true;
        match path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }
}

/// Write `data` to the new file `path` (see [`AtomicFile::commit_new`]): fails with an
/// `AlreadyExists` I/O error, writing nothing, if `path` exists.
pub fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    write_new_mode(path, data, None)
}

/// [`write_new`] with `mode` set before a byte is written (a private key: 0600 from the
/// first moment it exists, whatever the directory).
pub fn write_new_mode(path: &Path, data: &[u8], mode: Option<u32>) -> Result<()> {
    let (dir, _) = split(path)?;
    create_dir_all_synced(dir)?;
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut f = AtomicFile::create(dir, &label)?;
    if let Some(m) = mode {
        f.file()
            .set_permissions(fs::Permissions::from_mode(m))
            .map_err(|e| Error::io(format!("chmod {}", f.tmp.display()), e))?;
    }
    f.file()
        .write_all(data)
        .map_err(|e| Error::io(format!("write {}", f.tmp.display()), e))?;
    f.commit_new(path)
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            unlink_temp(&self.dir, &self.name);
        }
    }
}

/// [`remove_synced`], or with `beneath: Some(root)` [`beneath::remove_file`] (the path is
/// resolved beneath the root without following symlinks: host files).
///
/// Why one entry point: callers hold an optional root per object and need not branch.
pub fn remove_synced_beneath(beneath: Option<&Path>, path: &Path) -> Result<()> {
    match beneath {
        Some(root) => beneath::remove_file(root, path),
        None => remove_synced(path),
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
    let (dir, name) = split(link)?;
    let tmp = dir.join(temp_name(name)?);
    create_dir_all_synced(dir)?;
    // symlink(2) never replaces an existing name: creation is exclusive by itself
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

/// Whether a directory mode gives group or others no access at all (the state dir, 0700).
fn is_private(mode: u32) -> bool {
    mode & 0o077 == 0
}

/// The mode of a file written without an explicit one: 0600 in a private directory (the
/// state dir and everything below it), else 0644. Set with fchmod, so the umask core-ops was
/// started with never matters.
fn default_file_mode(dir: &DirFd) -> u32 {
    match nix::sys::stat::fstat(dir) {
        Ok(st) if is_private(st.st_mode) => 0o600,
        _ => 0o644,
    }
}

/// Make `dir` a private directory (0700), creating it (and missing parents) if needed, and
/// tightening it, with a warning, when it exists with group or other access.
///
/// Why: the state dir holds the status, receipts, ledger, evidence and mirrors of a root
/// agent; whatever umask core-ops was started with (0 included), nobody else reads or
/// plants anything there. Files and directories created below a private directory are
/// private too ([`create_dir_all_synced`], [`write_atomic`]).
pub fn private_dir(dir: &Path) -> Result<()> {
    let existed = dir.exists();
    create_dir_all_synced(dir)?;
    let md =
        fs::symlink_metadata(dir).map_err(|e| Error::io(format!("stat {}", dir.display()), e))?;
    if !md.is_dir() {
        return Err(Error::Config(format!(
            "{} is not a directory (a symlink?); core-ops keeps its state in a plain directory",
            dir.display()
        )));
    }
    let mode = md.mode() & 0o7777;
    if mode != 0o700 {
        if existed {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:04o}"),
                "state directory was not 0700; tightening it to 0700"
            );
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod 0700 {}", dir.display()), e))?;
    }
    Ok(())
}

/// `mkdir -p` that fsyncs each parent it created. A directory created inside a private
/// directory is 0700, any other 0755, whatever the umask.
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
            Ok(()) => {
                let private = d
                    .parent()
                    .and_then(|p| fs::metadata(p).ok())
                    .is_some_and(|m| is_private(m.mode()));
                let mode = if private { 0o700 } else { 0o755 };
                fs::set_permissions(d, fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io(format!("chmod {}", d.display()), e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("mkdir {}", d.display()), e)),
        }
        if let Some(p) = d.parent() {
            sync_dir(p)?;
        }
    }
    Ok(())
}

/// Remove temp files a killed run left in a directory: only ours (by prefix), only regular
/// files (never a symlink, directory or device someone else put there under our prefix), and
/// only those whose writer (the pid at the end of the name) is gone, so a concurrent writer
/// sharing the directory is never disturbed. A directory that is itself a symlink is skipped.
pub fn clean_temp_files(dir: &Path) -> Result<usize> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(mut d) = nix::dir::Dir::open(dir, flags, Mode::empty()) else {
        return Ok(0);
    };
    let names: Vec<OsString> = d
        .iter()
        .flatten()
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
        .filter(|n| n.as_bytes().starts_with(TEMP_PREFIX.as_bytes()))
        .collect();
    let mut n = 0;
    for name in names {
        let text = name.to_string_lossy();
        let writer_alive = text
            .rsplit_once('-')
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if writer_alive {
            continue;
        }
        let regular = fstatat(&d, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
        });
        if !regular {
            continue;
        }
        match unlinkat(&d, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => n += 1,
            Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(Error::io(
                    format!("remove {}", dir.join(&name).display()),
                    e.into(),
                ));
            }
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

/// Give the open file `f` (written to `path`) this owner and group, by name or number.
///
/// Why on the descriptor: a chown by path follows whatever the path names at that moment.
fn fchown_by_name(f: &File, path: &Path, owner: &str, group: &str) -> Result<()> {
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
    let current = f
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if current.uid() == uid && current.gid() == gid {
        return Ok(());
    }
    std::os::unix::fs::fchown(f, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("chown {}", path.display()), e))
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
    /// The root `path` is resolved beneath without following symlinks (host files: see
    /// [`beneath`]); `None`: the directory is opened by its path (directories core-ops owns:
    /// unit dir, Quadlet dir, state dir).
    pub beneath: Option<&'a Path>,
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
///
/// Every temp file is created exclusively and gets its owner and mode on the descriptor;
/// every directory is opened once (beneath its root for host files) and all work in it is
/// relative to that descriptor. Any refusal (a symlinked parent) or error happens before the
/// first rename, so a failed batch changes no target.
pub fn write_batch(items: &[BatchItem<'_>], mut after_rename: impl FnMut(usize)) -> Result<()> {
    let mut b = Batch {
        large: items.len() >= SYNCFS_THRESHOLD,
        dirs: Vec::new(),
        temps: Vec::with_capacity(items.len()),
        renamed: 0,
    };
    let result = (|| -> Result<()> {
        let mut by_dir: HashMap<(Option<&Path>, &Path), usize> = HashMap::new();
        let mut files: Vec<File> = Vec::with_capacity(items.len());
        for it in items {
            let di = b.dir_for(&mut by_dir, it)?;
            files.push(b.write_temp(di, it)?);
        }
        let devices = b.sync_temps(files, items)?;
        b.rename_all(items, &mut after_rename)?;
        b.sync_dirs(&devices)
    })();
    if result.is_err() {
        for (di, tmp) in b.temps.iter().skip(b.renamed) {
            unlink_temp(&b.dirs[*di], tmp);
        }
    }
    result
}

/// One batch of writes in progress: the directories opened, the temp files written (dir
/// index, temp name) and how many were renamed into place.
struct Batch {
    /// Made durable by `syncfs` per file system instead of one fsync per file and directory.
    large: bool,
    dirs: Vec<DirFd>,
    temps: Vec<(usize, OsString)>,
    renamed: usize,
}

impl Batch {
    /// The directory of `it`, opened once per (root, directory).
    fn dir_for<'i>(
        &mut self,
        by_dir: &mut HashMap<(Option<&'i Path>, &'i Path), usize>,
        it: &'i BatchItem<'i>,
    ) -> Result<usize> {
        let (dir, _) = split(it.path)?;
        if let Some(i) = by_dir.get(&(it.beneath, dir)) {
            return Ok(*i);
        }
        let d = match it.beneath {
            Some(root) => {
                // made durable by the final syncfs when large
                let create = if self.large {
                    Create::Unsynced
                } else {
                    Create::Synced
                };
                beneath::open_dir(root, dir, create, it.path)?
            }
            None => DirFd::open_owned(dir, !self.large)?,
        };
        self.dirs.push(d);
        by_dir.insert((it.beneath, dir), self.dirs.len() - 1);
        Ok(self.dirs.len() - 1)
    }

    /// The content of `it` in an exclusive temp file beside its target, owner and mode set
    /// (the mode after the chown, which clears set-id bits).
    fn write_temp(&mut self, di: usize, it: &BatchItem<'_>) -> Result<File> {
        let (_, name) = split(it.path)?;
        let (tmp, mut f) = create_temp(&self.dirs[di], name)?;
        let shown = self.dirs[di].path().join(&tmp);
        self.temps.push((di, tmp));
        f.write_all(it.data)
            .map_err(|e| Error::io(format!("write {}", shown.display()), e))?;
        if let Some(m) = it.meta {
            fchown_by_name(&f, it.path, &m.owner, &m.group)?;
        }
        let mode = match it.meta {
            Some(m) => m.mode,
            None => default_file_mode(&self.dirs[di]),
        };
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("chmod {}", shown.display()), e))?;
        Ok(f)
    }

    /// Every temp file durable before any rename: one fsync each, or when large one syncfs
    /// per file system (returns one open file per file system for the final syncfs).
    fn sync_temps(&self, files: Vec<File>, items: &[BatchItem<'_>]) -> Result<HashMap<u64, File>> {
        let mut devices: HashMap<u64, File> = HashMap::new();
        if !self.large {
            for (f, it) in files.iter().zip(items) {
                f.sync_all()
                    .map_err(|e| Error::io(format!("fsync temp of {}", it.path.display()), e))?;
            }
            return Ok(devices);
        }
        for (f, it) in files.iter().zip(items) {
            let dev = f
                .metadata()
                .map_err(|e| Error::io(format!("stat temp of {}", it.path.display()), e))?
                .dev();
            if let std::collections::hash_map::Entry::Vacant(v) = devices.entry(dev) {
                v.insert(
                    f.try_clone()
                        .map_err(|e| Error::io(format!("dup temp of {}", it.path.display()), e))?,
                );
            }
        }
        for f in devices.values() {
            nix::unistd::syncfs(f).map_err(|e| Error::io("syncfs".to_string(), e.into()))?;
        }
        Ok(devices)
    }

    /// Rename every temp file over its target, in order.
    fn rename_all(
        &mut self,
        items: &[BatchItem<'_>],
        after_rename: &mut impl FnMut(usize),
    ) -> Result<()> {
        for (i, (it, (di, tmp))) in items.iter().zip(&self.temps).enumerate() {
            let d = &self.dirs[*di];
            let name = it.path.file_name().expect("checked above");
            renameat(d, tmp.as_os_str(), d, name).map_err(|e| {
                Error::io(
                    format!(
                        "rename {} -> {}",
                        d.path().join(tmp).display(),
                        it.path.display()
                    ),
                    e.into(),
                )
            })?;
            self.renamed = i + 1;
            after_rename(i + 1);
        }
        Ok(())
    }

    /// The renames durable: each directory fsynced, or one syncfs per file system.
    fn sync_dirs(&self, devices: &HashMap<u64, File>) -> Result<()> {
        if self.large {
            for f in devices.values() {
                nix::unistd::syncfs(f).map_err(|e| Error::io("syncfs".to_string(), e.into()))?;
            }
        } else {
            for d in &self.dirs {
                d.sync()?;
            }
        }
        Ok(())
    }
}

/// A private scratch directory for a check that runs a tool on files of the desired state
/// (the Quadlet generator, systemd-analyze), removed when dropped. Why here: both checks
/// need the same unique name, mode and cleanup (`tempfile` is a dev-dependency only).
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Create `<base>/core-ops-<label>-<pid>-<n>-<nanos>` with `mode` (never reused: the
    /// creation fails if the name exists).
    pub fn new_in(base: &Path, label: &str, mode: u32) -> std::io::Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = base.join(format!(
            "core-ops-{label}-{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        fs::DirBuilder::new().mode(mode).create(&p)?;
        Ok(ScratchDir(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Who may own a root-only file core-ops reads (a credential, the age identity): root, and
/// the user running core-ops when that is not root (tests, a staged root).
pub fn private_owners() -> Vec<u32> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 { vec![0] } else { vec![0, euid] }
}

/// A root-only file (a trust anchor, a credential): refuse `path` unless it (after symlinks) and each directory above it is owned by one of
/// `trusted` and is not writable by group or others (a sticky directory may be).
pub fn check_private(path: &Path, trusted: &[u32]) -> Result<()> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let real = std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("resolve {}", path.display()), e))?;
    let shown = if real == path {
        path.display().to_string()
    } else {
        format!("{} ({})", path.display(), real.display())
    };
    if !meta.is_file() {
        return Err(Error::Trust(format!("{shown} is not a regular file")));
    }
    let owners = trusted
        .iter()
        .map(|u| {
            if *u == 0 {
                "root".to_string()
            } else {
                format!("uid {u}")
            }
        })
        .collect::<Vec<_>>()
        .join(" or ");
    if !trusted.contains(&meta.uid()) {
        return Err(Error::Trust(format!(
            "{shown} is owned by uid {}, not {owners}: a trust anchor must be root-only",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Error::Trust(format!(
            "{shown} is writable by group or others (mode {:o}): a trust anchor must be root-only",
            meta.mode() & 0o7777
        )));
    }
    for dir in real.ancestors().skip(1) {
        let m =
            std::fs::metadata(dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
        let sticky = m.mode() & 0o1000 != 0;
        if !trusted.contains(&m.uid()) || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(Error::Trust(format!(
                "{shown} lies in {}, which is owned by uid {} with mode {:o}: every directory \
                 above a trust anchor must be owned by {owners} and not writable by others",
                dir.display(),
                m.uid(),
                m.mode() & 0o7777
            )));
        }
    }
    Ok(())
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
                    beneath: None,
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
        // a dead writer's leftover (pid 0 is never a process) goes, old and new name forms,
        // a live writer's stays
        fs::write(d.path().join(format!("{TEMP_PREFIX}x-0")), b"half").unwrap();
        fs::write(
            d.path().join(format!("{TEMP_PREFIX}x-0123456789abcdef-0")),
            b"half",
        )
        .unwrap();
        let live = d
            .path()
            .join(format!("{TEMP_PREFIX}y-{}", std::process::id()));
        fs::write(&live, b"being written").unwrap();
        fs::write(d.path().join("keep"), b"mine").unwrap();
        assert_eq!(clean_temp_files(d.path()).unwrap(), 2);
        assert!(d.path().join("keep").exists());
        assert!(live.exists());
    }

    #[test]
    fn cleaning_never_follows_or_removes_what_it_could_not_have_made() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("secret"), b"keep").unwrap();
        let dir = d.path().join("dir");
        fs::create_dir(&dir).unwrap();
        let link = dir.join(format!("{TEMP_PREFIX}a-0"));
        std::os::unix::fs::symlink(victim.join("secret"), &link).unwrap();
        let sub = dir.join(format!("{TEMP_PREFIX}b-0"));
        fs::create_dir(&sub).unwrap();
        assert_eq!(clean_temp_files(&dir).unwrap(), 0);
        assert!(fs::symlink_metadata(&link).is_ok());
        assert!(sub.is_dir());
        assert_eq!(fs::read(victim.join("secret")).unwrap(), b"keep");
        // a directory that is itself a symlink is not entered
        fs::write(victim.join(format!("{TEMP_PREFIX}c-0")), b"x").unwrap();
        let via = d.path().join("via");
        std::os::unix::fs::symlink(&victim, &via).unwrap();
        assert_eq!(clean_temp_files(&via).unwrap(), 0);
        assert!(victim.join(format!("{TEMP_PREFIX}c-0")).exists());
    }

    /// Every name the old scheme (`<prefix><name>-<pid>`) would have used, planted as a
    /// symlink to a file outside: the write must neither follow nor chmod it.
    #[test]
    fn planted_temp_names_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let dir = d.path().join("srv/app");
        fs::create_dir_all(&dir).unwrap();
        let pid = std::process::id();
        for name in ["app.env", "unit.service"] {
            let planted = dir.join(format!("{TEMP_PREFIX}{name}-{pid}"));
            std::os::unix::fs::symlink(&victim, &planted).unwrap();
        }
        let me = FileMeta {
            mode: 0o640,
            owner: nix::unistd::getuid().to_string(),
            group: nix::unistd::getgid().to_string(),
        };
        let root = d.path().join("srv");
        write_batch(
            &[
                BatchItem {
                    path: &dir.join("app.env"),
                    data: b"A=1\n",
                    meta: Some(&me),
                    beneath: Some(&root),
                },
                BatchItem {
                    path: &dir.join("unit.service"),
                    data: b"[Unit]\n",
                    meta: Some(&me),
                    beneath: None,
                },
            ],
            |_| {},
        )
        .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o7777, 0o600);
        for (name, data) in [("app.env", &b"A=1\n"[..]), ("unit.service", b"[Unit]\n")] {
            let p = dir.join(name);
            let md = fs::symlink_metadata(&p).unwrap();
            assert!(md.file_type().is_file(), "{name} is a regular file");
            assert_eq!(md.mode() & 0o7777, 0o640);
            assert_eq!(fs::read(&p).unwrap(), data);
        }
        // the same for a streamed file
        let planted = dir.join(format!("{TEMP_PREFIX}blob-{pid}"));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let mut f = AtomicFile::create(&dir, "blob").unwrap();
        f.file().write_all(b"streamed").unwrap();
        f.commit(&dir.join("blob")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(dir.join("blob")).unwrap(), b"streamed");
    }

    #[test]
    fn temp_names_are_unpredictable_and_recognisable() {
        let a = temp_name(OsStr::new("app.env")).unwrap();
        let b = temp_name(OsStr::new("app.env")).unwrap();
        assert_ne!(a, b);
        let a = a.to_string_lossy();
        assert!(a.starts_with(&format!("{TEMP_PREFIX}app.env-")), "{a}");
        assert!(a.ends_with(&format!("-{}", std::process::id())), "{a}");
        let long = temp_name(OsStr::new(&"x".repeat(250))).unwrap();
        assert!(long.len() < 120, "{}", long.len());
    }

    #[test]
    fn a_batch_with_a_symlinked_parent_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("srv");
        let victim = d.path().join("victim");
        fs::create_dir_all(root.join("app")).unwrap();
        fs::create_dir_all(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("app/conf")).unwrap();
        for n in [2usize, 10] {
            let good: Vec<PathBuf> = (0..n - 1)
                .map(|i| root.join(format!("ok{n}/f{i}")))
                .collect();
            let bad = root.join("app/conf/app.env");
            let mut items: Vec<BatchItem<'_>> = good
                .iter()
                .map(|p| BatchItem {
                    path: p,
                    data: b"x",
                    meta: None,
                    beneath: Some(&root),
                })
                .collect();
            items.push(BatchItem {
                path: &bad,
                data: b"evil",
                meta: None,
                beneath: Some(&root),
            });
            let e = write_batch(&items, |_| {}).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "{}: component {} is a symlink; core-ops does not follow symlinks beneath {}",
                    bad.display(),
                    root.join("app/conf").display(),
                    root.display()
                )
            );
            assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
            for p in &good {
                assert!(!p.exists(), "{} written", p.display());
            }
            assert_eq!(
                fs::read_dir(root.join(format!("ok{n}"))).unwrap().count(),
                0,
                "temp files left"
            );
        }
    }
}
