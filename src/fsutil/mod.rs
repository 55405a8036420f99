//! All host writes go through here: temp file in the same directory, write, fsync, set mode
//! and owner, rename over the target, fsync the directory.
//!
//! Why one module: "nothing half-written" is only true if every writer does all five steps;
//! a crash at any point leaves either the old file or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::normalize::FileMeta;

/// Prefix of temp files, so a crash leftover is recognisable and cleaned up.
pub const TEMP_PREFIX: &str = ".core-ops-tmp-";

/// Write `data` to `path` atomically with mode and owner; creates parent dirs (0755).
pub fn write_atomic(path: &Path, data: &[u8], meta: Option<&FileMeta>) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Config(format!("{} has no parent directory", path.display())))?;
    create_dir_all_synced(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Config(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mode = meta.map(|m| m.mode).unwrap_or(0o644);
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        f.write_all(data)
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        if let Some(m) = meta {
            chown_by_name(&tmp, &m.owner, &m.group)?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
        f.sync_all()
            .map_err(|e| Error::io(format!("fsync {}", tmp.display()), e))?;
        fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("rename {} -> {}", tmp.display(), path.display()), e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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

/// Owner and group names of a file (numeric when the id has no name).
pub fn owner_names(meta: &fs::Metadata) -> (String, String) {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| meta.uid().to_string());
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(meta.gid()))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| meta.gid().to_string());
    (user, group)
}

fn chown_by_name(path: &Path, owner: &str, group: &str) -> Result<()> {
    let uid = match owner.parse::<u32>() {
        Ok(n) => nix::unistd::Uid::from_raw(n),
        Err(_) => nix::unistd::User::from_name(owner)
            .ok()
            .flatten()
            .map(|u| u.uid)
            .ok_or_else(|| {
                Error::Config(format!("unknown user '{owner}' for {}", path.display()))
            })?,
    };
    let gid = match group.parse::<u32>() {
        Ok(n) => nix::unistd::Gid::from_raw(n),
        Err(_) => nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .map(|g| g.gid)
            .ok_or_else(|| {
                Error::Config(format!("unknown group '{group}' for {}", path.display()))
            })?,
    };
    let current =
        fs::metadata(path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if current.uid() == uid.as_raw() && current.gid() == gid.as_raw() {
        return Ok(());
    }
    nix::unistd::chown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("chown {}", path.display()), e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
