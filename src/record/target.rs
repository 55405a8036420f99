//! The persisted target (`<state dir>/target.json`) written by `core-ops init`: which
//! repository and ref this host follows, so later commands need neither.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;

/// Target schema version.
pub const TARGET_SCHEMA_VERSION: u32 = 1;

/// Repository and requested ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// [`TARGET_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Repository (path or URL).
    pub repo: String,
    /// Requested ref.
    pub requested_ref: String,
}

/// Read the target; `Ok(None)` when `init` was never run.
pub fn load(path: &Path) -> Result<Option<Target>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    let t: Target = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Config(format!(
            "{}: not a core-ops target ({e}); run core-ops init again",
            path.display()
        ))
    })?;
    if t.schema_version != TARGET_SCHEMA_VERSION {
        return Err(Error::Config(format!(
            "{}: unsupported schema_version {}",
            path.display(),
            t.schema_version
        )));
    }
    Ok(Some(t))
}

/// Persist the target atomically.
pub fn save(path: &Path, repo: &str, requested_ref: &str) -> Result<Target> {
    let t = Target {
        schema_version: TARGET_SCHEMA_VERSION,
        repo: repo.to_string(),
        requested_ref: requested_ref.to_string(),
    };
    fsutil::write_json(path, &t)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("target.json");
        assert_eq!(load(&p).unwrap(), None);
        let t = save(&p, "/srv/repo", "v1").unwrap();
        assert_eq!(load(&p).unwrap(), Some(t));
        std::fs::write(&p, b"{}").unwrap();
        assert!(load(&p).is_err());
    }
}
