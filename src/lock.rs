//! The state-dir lock: one core-ops run at a time per host.
//!
//! Why `flock`: the kernel drops it when the process dies (even by SIGKILL), so a crashed run
//! never leaves a stale lock behind, and a second run can fail at once with a clear message.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::fsutil::create_dir_all_synced;

/// Held for the life of a run; released on drop or process exit.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Take `<state dir>/lock` without waiting; `Error::Locked` if another run holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock> {
        create_dir_all_synced(state_dir)?;
        let path = state_dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
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
