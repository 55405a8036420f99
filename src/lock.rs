//! The state-dir lock: one core-ops run at a time per host.
//!
//! Why `flock`: the kernel drops it when the process dies (even by SIGKILL), so a crashed run
//! never leaves a stale lock behind, and a second run can fail at once with a clear message.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::fsutil::private_dir;

/// Held for the life of a run; released on drop or process exit.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Take `<state dir>/lock` without waiting; `Error::Locked` if another run holds it.
    ///
    /// The state dir is created (or tightened) to 0700 here and the lock file is 0600,
    /// whatever the umask ([`private_dir`]).
    pub fn acquire(state_dir: &Path) -> Result<StateLock> {
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
            Ok(lock) => Ok(StateLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::Locked(format!(
                "another core-ops run holds {}; this run exits without changing anything",
                path.display()
            ))),
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
}
