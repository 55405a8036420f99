//! The state-dir lock: one core-ops run at a time per host.
//!
//! Why `flock`: the kernel drops it when the process dies (even by SIGKILL), so a crashed run
//! never leaves a stale lock behind, and a second run can fail at once with a clear message.
//!
//! Why also an abstract Unix socket named after the state dir: a lock *file* can be deleted
//! (with the whole state dir) under a running apply, and a second run would then lock a new
//! file and run beside the first. An abstract socket name has no file; only the kernel holds
//! it, and it goes away with the process, SIGKILL included.

use std::fs::{File, OpenOptions};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::fsutil::private_dir;

/// Held for the life of a run; released on drop or process exit.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
    _name: UnixListener,
}

/// The abstract socket name that stands for a state dir: its path within this file-system
/// root (the root's device and inode, and the mount namespace), hashed, since names are
/// limited to 107 bytes. Abstract names are per network namespace, which containers or
/// chroots with their own root may share: the same path in another root is another host.
fn lock_name(state_dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let abs = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let root = std::fs::metadata("/").map_or((0, 0), |m| (m.dev(), m.ino()));
    let mnt_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap_or_default();
    let mut key = format!("{}:{}:{}:", root.0, root.1, mnt_ns.display()).into_bytes();
    key.extend_from_slice(abs.as_os_str().as_encoded_bytes());
    let digest = crate::model::normalize::sha256_hex(&key);
    let hex = digest.trim_start_matches("sha256:");
    format!("core-ops-state-lock-{}", &hex[..32])
}

fn locked(what: &Path) -> Error {
    Error::Locked(format!(
        "another core-ops run holds {}; this run exits without changing anything",
        what.display()
    ))
}

impl StateLock {
    /// Take `<state dir>/lock` without waiting; `Error::Locked` if another run holds it.
    ///
    /// The state dir is created (or tightened) to 0700 here and the lock file is 0600,
    /// whatever the umask ([`private_dir`]).
    pub fn acquire(state_dir: &Path) -> Result<StateLock> {
        // the name first: it holds even when the state dir (and its lock file) is deleted
        let addr = SocketAddr::from_abstract_name(lock_name(state_dir).as_bytes())
            .map_err(|e| Error::io("abstract lock name", e))?;
        let name = match UnixListener::bind_addr(&addr) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(locked(&state_dir.join("lock")));
            }
            Err(e) => return Err(Error::io("bind the abstract lock socket", e)),
        };
        private_dir(state_dir)?;
        let path = state_dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(StateLock {
                _lock: lock,
                _name: name,
            }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(locked(&path)),
            Err((_, e)) => Err(Error::io(format!("flock {}", path.display()), e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_until_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(d.path()).unwrap();
        let err = StateLock::acquire(d.path()).unwrap_err();
        assert!(matches!(err, Error::Locked(_)), "{err}");
        drop(first);
        StateLock::acquire(d.path()).unwrap();
    }

    #[test]
    fn deleting_the_state_dir_under_a_holder_does_not_let_a_second_run_in() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let first = StateLock::acquire(&state).unwrap();
        std::fs::remove_dir_all(&state).unwrap();
        let err = StateLock::acquire(&state).unwrap_err();
        assert!(matches!(err, Error::Locked(_)), "{err}");
        drop(first);
        StateLock::acquire(&state).unwrap();
        // another state dir is another lock
        let _other = StateLock::acquire(&d.path().join("other")).unwrap();
    }
}
