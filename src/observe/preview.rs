//! The host as far as it can be observed before the desired state is rendered: the files
//! core-ops owns (the ledger names them) and the drop-in directories of their units.
//!
//! Why: rendering a revision keeps one core busy for most of a no-op run while the other
//! has nothing to do; the owned files are, on a converged host, exactly the files the plan
//! needs observed. What the preview read is used where the rendered state asks for the same
//! path as the same kind; anything else is observed afterwards as before.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{FileRead, read_one};
use crate::config::Paths;
use crate::model::applied::AppliedResource;
use crate::model::normalize::Kind;

/// What [`preview`] found.
#[derive(Debug, Default)]
pub struct Preview {
    /// Owned files by resource id: the kind and path they were read as, and what was there
    /// (bytes, not digests: those are taken once the desired state is known, the way
    /// `file_observation` takes them, keyed for a secret).
    pub(super) files: BTreeMap<String, (Kind, PathBuf, FileRead)>,
    /// `<unit dir>/<unit>.d/*.conf` by unit name, sorted (empty: none, or no directory).
    pub(super) dropin_dirs: BTreeMap<String, Vec<PathBuf>>,
}

/// Read what the ledger says core-ops owns (runtimes are left to the observation proper).
pub fn preview(owned: &BTreeMap<String, AppliedResource>, paths: &Paths) -> Preview {
    let mut p = Preview::default();
    for (id, r) in owned.iter().filter(|(_, r)| r.kind != Kind::Runtime) {
        let read = read_one(r.kind, &r.path, paths);
        p.files.insert(id.clone(), (r.kind, r.path.clone(), read));
        if let Some(unit) = &r.unit
            && !p.dropin_dirs.contains_key(unit)
        {
            p.dropin_dirs
                .insert(unit.clone(), super::dropin_files(&paths.unit_dir, unit));
        }
    }
    p
}

impl Preview {
    /// What the preview read at `path` as `kind` under `id`, if it looked there.
    pub(super) fn file(&self, id: &str, kind: Kind, path: &std::path::Path) -> Option<&FileRead> {
        self.files
            .get(id)
            .filter(|(k, p, _)| *k == kind && p == path)
            .map(|(_, _, o)| o)
    }
}
