//! Observe step of the runtime object kind: what `<state dir>/runtimes/<name>/current` points
//! at, as the material digest of that version's install record.

use std::path::Path;

use crate::model::normalize::FileMeta;
use crate::runtime::Layout;

use super::ObservedFile;

/// Observe step: what `<state dir>/runtimes/<name>/current` points at, as the material
/// digest of that version's install record.
pub fn observe(current: &Path) -> ObservedFile {
    let md = match std::fs::symlink_metadata(current) {
        Ok(m) => m,
        Err(_) => return ObservedFile::Absent,
    };
    if !md.file_type().is_symlink() {
        return ObservedFile::Other {
            what: if md.is_dir() { "directory" } else { "file" }.into(),
        };
    }
    let dir = current.parent().unwrap_or(Path::new("/"));
    let layout = Layout {
        dir: dir.to_path_buf(),
    };
    let Some(version) = layout.current_version() else {
        return ObservedFile::Other {
            what: "symlink to something that is not a runtime version".into(),
        };
    };
    if !layout.version_dir(&version).is_dir() {
        return ObservedFile::Other {
            what: format!("dangling symlink to {version}"),
        };
    }
    match layout.installed(&version) {
        Some(iv) => ObservedFile::File {
            digest: iv.material_digest,
            raw_digest: iv.manifest_digest,
            meta: FileMeta::unit_default(),
        },
        None => ObservedFile::Other {
            what: format!("symlink to {version}, which has no install record"),
        },
    }
}
