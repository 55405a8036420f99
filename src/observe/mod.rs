//! Observe: the actual state of exactly the resources core-ops manages: the files it would
//! write or has written (by material digest, normalized like the desired side), and the
//! runtime state of their units as systemd reports it.
//!
//! Why only managed resources: core-ops never reads, judges or touches a file it did not
//! declare, even in the same directory.

pub mod preview;
pub mod runtimes;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use serde::Serialize;

use crate::config::Paths;
use crate::fsutil::beneath::{self, Create, Refused};
use crate::fsutil::owner_names;
use crate::model::normalize::{FileMeta, Kind, normalize};
use crate::render::Resource;
use crate::render::secrets::Secret;
use crate::systemd::{Systemd, UnitStatus};

/// What a managed path holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ObservedFile {
    /// Nothing there.
    Absent,
    /// A regular file.
    File {
        /// Material digest (normalized as the kind says).
        digest: String,
        /// Digest of the raw bytes.
        raw_digest: String,
        /// Mode and ownership found.
        meta: FileMeta,
    },
    /// Something core-ops would not overwrite blindly (directory, symlink, device...).
    Other {
        /// What it is.
        what: String,
    },
}

impl ObservedFile {
    /// The material digest, if a regular file is there.
    pub fn digest(&self) -> Option<&str> {
        match self {
            ObservedFile::File { digest, .. } => Some(digest),
            _ => None,
        }
    }
}

/// Read one managed path.
pub fn observe_file(kind: Kind, path: &Path) -> ObservedFile {
    if kind == Kind::Runtime {
        // `current` and the install record of the version it points at
        return runtimes::observe(path);
    }
    observe_plain_expecting(kind, path, None)
}

/// [`observe_file`] of a desired resource's path, knowing what should be there: a file that
/// holds exactly the desired bytes, mode and owner is not parsed again (see
/// `file_observation`); the observation is the same either way. A secret is digested with
/// its key, as the desired side is.
pub fn observe_resource(r: &Resource) -> ObservedFile {
    if r.kind == Kind::Runtime {
        return runtimes::observe(&r.path);
    }
    observe_plain_expecting(r.kind, &r.path, Some(r))
}

fn observe_plain_expecting(kind: Kind, path: &Path, expect: Option<&Resource>) -> ObservedFile {
    read_plain(path).observe(kind, expect)
}

/// What reading a managed path found, before it is digested.
#[derive(Debug)]
pub(crate) enum FileRead {
    /// Nothing to digest: absent, or something that is not a regular file.
    Seen(ObservedFile),
    /// A regular file: its bytes and metadata.
    Bytes(Vec<u8>, fs::Metadata),
}

impl FileRead {
    /// The observation: what was seen, or the file digested as `kind` (see
    /// `file_observation` for what `expect` saves).
    fn observe(&self, kind: Kind, expect: Option<&Resource>) -> ObservedFile {
        match self {
            FileRead::Seen(o) => o.clone(),
            FileRead::Bytes(content, md) => file_observation(kind, content, md, expect),
        }
    }
}

fn read_plain(path: &Path) -> FileRead {
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return FileRead::Seen(ObservedFile::Absent),
    };
    let ft = md.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "directory"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "special file"
        };
        return FileRead::Seen(ObservedFile::Other { what: what.into() });
    }
    match fs::read(path) {
        Ok(content) => FileRead::Bytes(content, md),
        Err(_) => FileRead::Seen(ObservedFile::Other {
            what: "unreadable file".into(),
        }),
    }
}

/// Read one host file beneath its root without following a symlink anywhere below the root:
/// a symlinked parent is reported as [`ObservedFile::Other`] (which blocks the plan), never
/// read through.
///
/// Why: what the plan reads must be what apply would write; apply refuses to write through a
/// symlinked parent, so the plan must neither judge the file behind it as the managed one.
pub fn observe_file_beneath(kind: Kind, path: &Path, root: &Path) -> ObservedFile {
    read_beneath(path, root).observe(kind, None)
}

fn read_beneath(path: &Path, root: &Path) -> FileRead {
    let other = |what: String| FileRead::Seen(ObservedFile::Other { what });
    let (dir, name) = match beneath::open_parent(root, path, Create::No) {
        Ok(x) => x,
        Err(r @ Refused::Symlink { .. }) => {
            return other(format!("path whose parent is a symlink ({})", r.reason()));
        }
        Err(r @ Refused::Outside { .. }) => {
            return other(format!("path outside its root ({})", r.reason()));
        }
        Err(_) => return FileRead::Seen(ObservedFile::Absent),
    };
    let Ok(st) = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return FileRead::Seen(ObservedFile::Absent);
    };
    let what = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => None,
        SFlag::S_IFDIR => Some("directory"),
        SFlag::S_IFLNK => Some("symlink"),
        _ => Some("special file"),
    };
    if let Some(what) = what {
        return other(what.into());
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let read = openat(&dir, name, flags, Mode::empty())
        .map(fs::File::from)
        .map_err(std::io::Error::from)
        .and_then(|mut f| {
            let md = f.metadata()?;
            let mut content = Vec::new();
            f.read_to_end(&mut content)?;
            Ok((md, content))
        });
    let Ok((md, content)) = read else {
        return other("unreadable file".into());
    };
    if !md.file_type().is_file() {
        // swapped between the stat and the open
        return other("special file".into());
    }
    FileRead::Bytes(content, md)
}

/// The observation of one regular file. When `expect` (the desired resource at that path)
/// has the same kind, raw bytes and mode/ownership, its material digest is the desired one
/// (the digest is a function of exactly those), so the file is not parsed again: a converged
/// host is observed with one sha256 per file.
fn file_observation(
    kind: Kind,
    content: &[u8],
    md: &fs::Metadata,
    expect: Option<&Resource>,
) -> ObservedFile {
    let (owner, group) = owner_names(md);
    let meta = FileMeta {
        mode: md.mode() & 0o7777,
        owner,
        group,
    };
    if let Some(secret) = expect
        .filter(|r| r.kind == kind)
        .and_then(|r| r.secret.as_ref())
    {
        return secret_observation(secret, content, meta);
    }
    if let Some(r) = expect.filter(|r| r.kind == kind && r.meta == meta) {
        let raw_digest = crate::model::normalize::sha256_hex(content);
        if raw_digest == r.raw_digest {
            return ObservedFile::File {
                digest: r.digest.clone(),
                raw_digest,
                meta,
            };
        }
    }
    let n = normalize(kind, content, &meta);
    ObservedFile::File {
        digest: n.digest,
        raw_digest: n.raw_digest,
        meta,
    }
}

/// The observation of the host file of a secret: digested as the desired side is (keyed;
/// no plain digest of its content is ever made).
fn secret_observation(secret: &Secret, content: &[u8], meta: FileMeta) -> ObservedFile {
    let n = secret.digests(content, &meta);
    ObservedFile::File {
        digest: n.digest,
        raw_digest: n.raw_digest,
        meta,
    }
}

/// Observe a set of managed paths (id -> (kind, path)); host files beneath their root
/// ([`Paths::host_file_root`], [`observe_file_beneath`]).
pub fn observe_files(
    managed: &BTreeMap<String, (Kind, PathBuf)>,
    paths: &Paths,
) -> BTreeMap<String, ObservedFile> {
    observe_files_expecting(managed, paths, None, None)
}

/// [`observe_files`], knowing the desired state: a file that holds exactly the desired bytes
/// with the desired mode and owner is not parsed again (see `file_observation`).
///
/// Why: on a converged host every run reads every managed file; parsing and canonicalizing
/// 400 unit files that are byte-identical to what was rendered is most of that cost.
///
/// What `preview` already read of the same path as the same kind is digested from its
/// bytes instead of reading the path again.
pub fn observe_files_expecting(
    managed: &BTreeMap<String, (Kind, PathBuf)>,
    paths: &Paths,
    desired: Option<&crate::render::DesiredState>,
    preview: Option<&preview::Preview>,
) -> BTreeMap<String, ObservedFile> {
    managed
        .iter()
        .map(|(id, (kind, path))| {
            let expect = desired
                .and_then(|d| d.resources.get(id))
                .filter(|r| r.path == *path);
            let o = match preview.and_then(|p| p.file(id, *kind, path)) {
                Some(read) => read.observe(*kind, expect),
                None => observe_one(*kind, path, paths, expect),
            };
            (id.clone(), o)
        })
        .collect()
}

/// Observe one managed path the way its kind is read: a host file beneath its root, a
/// runtime through its `current` link, anything else as a plain file.
fn observe_one(kind: Kind, path: &Path, paths: &Paths, expect: Option<&Resource>) -> ObservedFile {
    match kind {
        Kind::Runtime => observe_file(kind, path),
        _ => read_one(kind, path, paths).observe(kind, expect),
    }
}

/// Read one managed path that is a file (not a runtime): a host file beneath its root,
/// anything else as a plain file.
fn read_one(kind: Kind, path: &Path, paths: &Paths) -> FileRead {
    match kind {
        Kind::File => read_beneath(path, paths.host_file_root(path)),
        _ => read_plain(path),
    }
}

/// Unit runtime state, or why it is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitObservation {
    /// systemd answered.
    Known(BTreeMap<String, UnitStatus>),
    /// No systemd to ask (a laptop, a CI job validating the repo); the plan still works
    /// for files and says unit state is unknown.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// Source of unit runtime state; the planner asks through this and never sees D-Bus.
pub trait UnitStateSource: Sync {
    /// State of these units.
    fn observe_units(&self, names: &[String]) -> UnitObservation;
}

/// Drop-ins on the host that change a managed unit but are not in the desired state:
/// `<unit dir>/<unit>.d/*.conf` files core-ops did not declare, by resource id (sorted).
///
/// Why: systemd merges every drop-in it finds, so a hand-made one changes the unit as surely
/// as an edit of the unit file; the plan reports it as drift (core-ops never removes a file it
/// did not write).
///
/// A unit whose directory `preview` already listed is not listed again.
pub fn foreign_dropins(
    desired: &crate::render::DesiredState,
    unit_dir: &Path,
    preview: Option<&preview::Preview>,
) -> BTreeMap<String, Vec<PathBuf>> {
    let declared: std::collections::BTreeSet<&Path> = desired
        .resources
        .values()
        .map(|r| r.path.as_path())
        .collect();
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for r in desired.resources.values() {
        let Some(u) = &r.unit else { continue };
        let listed = preview.and_then(|p| p.dropin_dirs.get(&u.name));
        let found: Vec<PathBuf> = match listed {
            Some(files) => files.clone(),
            None => dropin_files(unit_dir, &u.name),
        }
        .into_iter()
        .filter(|p| !declared.contains(p.as_path()))
        .collect();
        if !found.is_empty() {
            out.insert(r.id.clone(), found);
        }
    }
    out
}

/// `<unit dir>/<unit>.d/*.conf`, sorted (none when there is no such directory).
fn dropin_files(unit_dir: &Path, unit: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(unit_dir.join(format!("{unit}.d")))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    found.sort();
    found
}

/// Enablement read from the unit dir, the way `systemctl is-enabled` finds it: a unit is
/// enabled when a symlink with its name sits in some `*.wants/`, `*.requires/` or
/// `*.upholds/` directory. Fills `unit_file_state` (`enabled`/`disabled`) of loaded units
/// that systemd did not report one for; one directory scan instead of a D-Bus call per unit.
pub fn enablement_from_disk(unit_dir: &Path, units: &mut BTreeMap<String, UnitStatus>) {
    let mut linked: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    if let Ok(rd) = fs::read_dir(unit_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if [".wants", ".requires", ".upholds"]
                .iter()
                .any(|s| name.ends_with(s))
                && let Ok(inner) = fs::read_dir(e.path())
            {
                linked.extend(
                    inner
                        .flatten()
                        .map(|l| l.file_name().to_string_lossy().to_string()),
                );
            }
        }
    }
    for (name, st) in units.iter_mut() {
        if st.unit_file_state.is_empty() && st.load_state == "loaded" {
            st.unit_file_state = if linked.contains(name) {
                "enabled".into()
            } else {
                "disabled".into()
            };
        }
    }
}

/// Used when no systemd answers: everything unknown, with the reason.
#[derive(Debug, Clone)]
pub struct NoSystemd {
    /// Why systemd could not be asked.
    pub reason: String,
}

impl UnitStateSource for NoSystemd {
    fn observe_units(&self, _names: &[String]) -> UnitObservation {
        UnitObservation::Unknown {
            reason: self.reason.clone(),
        }
    }
}

impl<T: Systemd + ?Sized> UnitStateSource for T {
    fn observe_units(&self, names: &[String]) -> UnitObservation {
        if names.is_empty() {
            return UnitObservation::Known(BTreeMap::new());
        }
        match self.unit_states_brief(names) {
            Ok(list) => {
                UnitObservation::Known(list.into_iter().map(|s| (s.name.clone(), s)).collect())
            }
            Err(e) => UnitObservation::Unknown {
                reason: e.to_string(),
            },
        }
    }
}

/// A `&dyn Systemd` observes units too (what `apply` and `agent` hold).
impl UnitStateSource for &dyn Systemd {
    fn observe_units(&self, names: &[String]) -> UnitObservation {
        (**self).observe_units(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn observes_absent_file_and_other() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            observe_file(Kind::Unit, &d.path().join("x")),
            ObservedFile::Absent
        );
        assert!(matches!(
            observe_file(Kind::File, d.path()),
            ObservedFile::Other { .. }
        ));
        let p = d.path().join("f");
        fs::write(&p, b"A=1\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        match observe_file(Kind::File, &p) {
            ObservedFile::File { meta, .. } => assert_eq!(meta.mode, 0o640),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn knowing_the_desired_state_never_changes_an_observation() {
        use crate::source::{RepoEntry, Revision};
        let s = crate::config::scratch();
        let etc = s.paths.host_file_roots[0].display().to_string();
        let files: BTreeMap<String, RepoEntry> = [
            ("hosts/h/host.yaml", "services: [web]\n".to_string()),
            (
                "services/web/web.service",
                "[Service]\nExecStart=/bin/true\n".to_string(),
            ),
            (&*format!("services/web/files{etc}/web.env"), "A=1\n".into()),
        ]
        .into_iter()
        .map(|(p, c)| {
            let data = c.into_bytes();
            (
                p.to_string(),
                RepoEntry::File {
                    data,
                    executable: false,
                },
            )
        })
        .collect();
        let rev = Revision {
            commit: "a".repeat(40),
            requested_ref: "main".into(),
        };
        let d = crate::render::render(&files, &rev, "h", &s.paths).unwrap();
        let managed: BTreeMap<String, (Kind, PathBuf)> = d
            .resources
            .values()
            .map(|r| (r.id.clone(), (r.kind, r.path.clone())))
            .collect();
        let both = || {
            // one resource at a time (verification's read) agrees with the plain read too
            for r in d.resources.values() {
                assert_eq!(
                    observe_resource(r),
                    observe_file(r.kind, &r.path),
                    "{}",
                    r.id
                );
            }
            // read ahead of the render from what the ledger owns, digested once it is known
            let owned = crate::record::status::last_applied_from(&d, "t").resources;
            let ahead = preview::preview(&owned, &s.paths);
            assert_eq!(
                observe_files_expecting(&managed, &s.paths, Some(&d), Some(&ahead)),
                observe_files_expecting(&managed, &s.paths, Some(&d), None),
            );
            (
                observe_files(&managed, &s.paths),
                observe_files_expecting(&managed, &s.paths, Some(&d), None),
            )
        };
        // absent, then exactly as desired, then reformatted, then with another mode
        let (plain, known) = both();
        assert_eq!(plain, known);
        for r in d.resources.values() {
            fs::create_dir_all(r.path.parent().unwrap()).unwrap();
            fs::write(&r.path, &r.content).unwrap();
            fs::set_permissions(&r.path, fs::Permissions::from_mode(r.meta.mode)).unwrap();
        }
        let (plain, known) = both();
        assert_eq!(plain, known);
        assert!(
            d.resources
                .values()
                .all(|r| known[&r.id].digest() == Some(r.digest.as_str()))
        );
        let unit = &d.resources["unit:web.service"];
        fs::write(&unit.path, "# comment\n[Service]\nExecStart=/bin/true\n").unwrap();
        let env = &d.resources[&format!("file:{etc}/web.env")];
        fs::set_permissions(&env.path, fs::Permissions::from_mode(0o600)).unwrap();
        let (plain, known) = both();
        assert_eq!(plain, known);
        assert_ne!(known[&env.id].digest(), Some(env.digest.as_str()));
    }

    /// A drop-in on the host that the desired state does not declare is found (it changes the
    /// unit as surely as an edit), whether its directory was listed ahead of the render from
    /// what the ledger owns or afterwards; a declared one, and anything not `*.conf`, is not.
    #[test]
    fn hand_made_dropins_are_found_with_and_without_a_preview() {
        let s = crate::config::scratch();
        let d = crate::render::render_texts(
            &[
                ("hosts/h/host.yaml", "services: [web]\n"),
                (
                    "services/web/web.service",
                    "[Service]\nExecStart=/bin/true\n",
                ),
                (
                    "services/web/web.service.d/10-env.conf",
                    "[Service]\nEnvironment=A=1\n",
                ),
                (
                    "services/web/db.service",
                    "[Service]\nExecStart=/bin/true\n",
                ),
            ],
            "h",
            &s.paths,
        );
        let web_d = s.paths.unit_dir.join("web.service.d");
        fs::create_dir_all(&web_d).unwrap();
        fs::write(web_d.join("10-env.conf"), "[Service]\nEnvironment=A=1\n").unwrap();
        fs::write(web_d.join("50-hand.conf"), "[Service]\nNice=5\n").unwrap();
        fs::write(web_d.join("notes.txt"), "not a drop-in\n").unwrap();
        let expected: BTreeMap<String, Vec<PathBuf>> = [(
            "unit:web.service".to_string(),
            vec![web_d.join("50-hand.conf")],
        )]
        .into();
        assert_eq!(foreign_dropins(&d, &s.paths.unit_dir, None), expected);
        // listed ahead from the ledger (web and its drop-in owned), db listed afterwards
        let mut owned = crate::record::status::last_applied_from(&d, "t").resources;
        owned.remove("unit:db.service");
        let ahead = preview::preview(&owned, &s.paths);
        assert_eq!(
            foreign_dropins(&d, &s.paths.unit_dir, Some(&ahead)),
            expected
        );
        let db_d = s.paths.unit_dir.join("db.service.d");
        fs::create_dir_all(&db_d).unwrap();
        fs::write(db_d.join("hand.conf"), "[Service]\nNice=5\n").unwrap();
        assert_eq!(
            foreign_dropins(&d, &s.paths.unit_dir, Some(&ahead))["unit:db.service"],
            vec![db_d.join("hand.conf")]
        );
    }

    #[test]
    fn host_files_are_observed_beneath_their_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("srv");
        let victim = d.path().join("victim");
        fs::create_dir_all(root.join("app")).unwrap();
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("app.env"), b"A=1\n").unwrap();
        fs::write(root.join("app/app.env"), b"A=1\n").unwrap();
        std::os::unix::fs::symlink(&victim, root.join("app/conf")).unwrap();
        std::os::unix::fs::symlink(victim.join("app.env"), root.join("app/link")).unwrap();
        let o = |rel: &str| observe_file_beneath(Kind::File, &root.join(rel), &root);
        assert_eq!(
            o("app/app.env"),
            observe_file(Kind::File, &root.join("app/app.env"))
        );
        assert!(o("app/app.env").digest().is_some());
        match o("app/conf/app.env") {
            ObservedFile::Other { what } => assert_eq!(
                what,
                format!(
                    "path whose parent is a symlink (component {} is a symlink; core-ops does \
                     not follow symlinks beneath {})",
                    root.join("app/conf").display(),
                    root.display()
                )
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            o("app/link"),
            ObservedFile::Other {
                what: "symlink".into()
            }
        );
        assert_eq!(
            o("app"),
            ObservedFile::Other {
                what: "directory".into()
            }
        );
        assert_eq!(o("app/missing"), ObservedFile::Absent);
        assert_eq!(o("nothing/here"), ObservedFile::Absent);
    }
}
