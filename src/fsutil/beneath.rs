//! Beneath: reach a directory beneath a root one component at a time, never following a
//! symlink, and hand back the open directory so every later step (create, rename, unlink,
//! fsync) happens relative to that descriptor.
//!
//! Why: core-ops writes host files as root into directories other users may own
//! (`/srv/app/conf`). A lexical "starts with /srv" check says nothing about where
//! `/srv/app/conf/x` resolves when `conf` is a symlink to `/root`; and checking the path first
//! and writing by path later leaves a window to swap a component. Resolving through open
//! descriptors and refusing every symlink keeps writes, removals, mode changes and created
//! directories beneath their root (docs/design.md section 10, "Paths and writes").
//!
//! How: `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` through `nix::fcntl::openat2`
//! (the crate forbids `unsafe`, so no raw `syscall`; `cap-std` would add a dozen crates for
//! the same few calls and still leave fchown to us). One component per call, so a refusal can
//! name the component and a missing directory can be made with `mkdirat` in the directory
//! just opened. A kernel without openat2 (before 5.6, or a seccomp filter answering ENOSYS)
//! gets `openat(O_NOFOLLOW | O_DIRECTORY)` per component, which is equivalent here: each step
//! is one plain name, never `..`. The root itself is the operator's configuration and is
//! opened by its path (it may be a symlink, e.g. `/srv -> /data/srv`).

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::error::{Error, Result};

/// An open directory and the path it stands for (for messages only).
///
/// Why a descriptor: nobody can swap a component of a path already opened, so what is created,
/// renamed or removed in it stays where it was checked.
#[derive(Debug)]
pub struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for DirFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl DirFd {
    /// Open a directory core-ops owns (unit dir, Quadlet dir, state dir) by its path,
    /// symlinks and all, creating it first (`mkdir -p`, fsynced when `sync`) if missing.
    ///
    /// Why by path: these directories are core-ops' own configuration, not something a
    /// repository or another user controls; only the temp files in them must be exclusive.
    pub fn open_owned(dir: &Path, sync: bool) -> Result<DirFd> {
        if !dir.is_dir() {
            if sync {
                super::create_dir_all_synced(dir)?;
            } else {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
            }
        }
        let fd = open(dir, dir_flags(), Mode::empty())
            .map_err(|e| Error::io(format!("open dir {}", dir.display()), e.into()))?;
        Ok(DirFd {
            fd,
            path: dir.to_path_buf(),
        })
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fsync the directory, so a rename or unlink in it is durable.
    pub fn sync(&self) -> Result<()> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io(format!("dup {}", self.path.display()), e))?;
        File::from(fd)
            .sync_all()
            .map_err(|e| Error::io(format!("fsync dir {}", self.path.display()), e))
    }
}

/// Whether and how missing directories are made while walking down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Never: a missing component is [`Refused::Missing`].
    No,
    /// `mkdirat` 0755, fsyncing the directory each one was made in.
    Synced,
    /// `mkdirat` 0755 without fsync (the caller makes everything durable with one `syncfs`).
    Unsynced,
}

/// Why a path could not be reached beneath its root.
#[derive(Debug)]
pub enum Refused {
    /// A component is a symlink.
    Symlink {
        /// The path asked for.
        path: PathBuf,
        /// The component that is a symlink (as a full path).
        component: PathBuf,
        /// The root.
        root: PathBuf,
    },
    /// A component is something other than a directory.
    NotDirectory {
        /// The path asked for.
        path: PathBuf,
        /// The component that is not a directory.
        component: PathBuf,
    },
    /// A component does not exist (only with [`Create::No`]).
    Missing {
        /// The path asked for.
        path: PathBuf,
    },
    /// The path is not a plain path strictly beneath the root.
    Outside {
        /// The path asked for.
        path: PathBuf,
        /// The root.
        root: PathBuf,
    },
    /// Any other I/O error.
    Io {
        /// The path asked for.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

impl Refused {
    /// The path the refusal is about.
    pub fn path(&self) -> &Path {
        match self {
            Refused::Symlink { path, .. }
            | Refused::NotDirectory { path, .. }
            | Refused::Missing { path }
            | Refused::Outside { path, .. }
            | Refused::Io { path, .. } => path,
        }
    }

    /// What is wrong, without the path (the path comes first in [`fmt::Display`]).
    pub fn reason(&self) -> String {
        match self {
            Refused::Symlink {
                component, root, ..
            } => format!(
                "component {} is a symlink; core-ops does not follow symlinks beneath {}",
                component.display(),
                root.display()
            ),
            Refused::NotDirectory { component, .. } => {
                format!("component {} is not a directory", component.display())
            }
            Refused::Missing { .. } => "a parent directory does not exist".to_string(),
            Refused::Outside { root, .. } => format!(
                "is not a plain path beneath {} (core-ops writes only there)",
                root.display()
            ),
            Refused::Io {
                context, source, ..
            } => format!("{context}: {source}"),
        }
    }

    fn io_kind(&self) -> io::ErrorKind {
        match self {
            Refused::Symlink { .. } | Refused::Outside { .. } => io::ErrorKind::PermissionDenied,
            Refused::NotDirectory { .. } => io::ErrorKind::NotADirectory,
            Refused::Missing { .. } => io::ErrorKind::NotFound,
            Refused::Io { source, .. } => source.kind(),
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path().display(), self.reason())
    }
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Error {
        let source = io::Error::new(r.io_kind(), r.reason());
        Error::io(r.path().display().to_string(), source)
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

/// Open the directory `name` in `dir`, refusing a symlink.
fn open_step(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = dir_flags() | OFlag::O_NOFOLLOW;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(dir, name, how) {
        Err(Errno::ENOSYS) => openat(dir, name, flags, Mode::empty()),
        r => r,
    }
}

/// Whether `name` in `dir` is a symlink (not followed).
fn is_symlink(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
}

/// The names of `dir` below `root`, or `None` when `dir` is not absolute, not `root` or
/// beneath it, or has a `..` component. (`Path` drops `.` and empty components, which resolve
/// to the same place; [`open_parent`] is stricter for host files.)
fn relative<'a>(root: &Path, dir: &'a Path) -> Option<Vec<&'a OsStr>> {
    if !dir.is_absolute() {
        return None;
    }
    let rel = dir.strip_prefix(root).ok()?;
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// Open `dir` beneath `root` without following any symlink below the root, creating missing
/// directories as `create` says. `path` is what the caller is after (the file in `dir`, or
/// `dir` itself) and is what refusals name.
///
/// Why: see the module docs; this is the one walk every host-file operation goes through.
pub fn open_dir(root: &Path, dir: &Path, create: Create, path: &Path) -> Result<DirFd, Refused> {
    let names = relative(root, dir).ok_or_else(|| Refused::Outside {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    })?;
    let io_err = |context: String, e: Errno| Refused::Io {
        path: path.to_path_buf(),
        context,
        source: e.into(),
    };
    if create != Create::No && !root.is_dir() {
        super::create_dir_all_synced(root).map_err(|e| Refused::Io {
            path: path.to_path_buf(),
            context: format!("create root {}", root.display()),
            source: io::Error::other(e.to_string()),
        })?;
    }
    let mut cur = match open(root, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            return Err(Refused::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(io_err(format!("open root {}", root.display()), e)),
    };
    let mut cur_path = root.to_path_buf();
    for name in names {
        let next_path = cur_path.join(name);
        let opened = match open_step(cur.as_fd(), name) {
            Err(Errno::ENOENT) if create != Create::No => {
                match mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err(format!("mkdir {}", next_path.display()), e)),
                }
                if create == Create::Synced {
                    let d = File::from(cur.try_clone().map_err(|e| Refused::Io {
                        path: path.to_path_buf(),
                        context: format!("dup {}", cur_path.display()),
                        source: e,
                    })?);
                    d.sync_all().map_err(|e| Refused::Io {
                        path: path.to_path_buf(),
                        context: format!("fsync dir {}", cur_path.display()),
                        source: e,
                    })?;
                }
                open_step(cur.as_fd(), name)
            }
            r => r,
        };
        cur = match opened {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => {
                return Err(Refused::Symlink {
                    path: path.to_path_buf(),
                    component: next_path,
                    root: root.to_path_buf(),
                });
            }
            // O_DIRECTORY answers ENOTDIR for a symlink before O_NOFOLLOW's ELOOP
            Err(Errno::ENOTDIR) if is_symlink(cur.as_fd(), name) => {
                return Err(Refused::Symlink {
                    path: path.to_path_buf(),
                    component: next_path,
                    root: root.to_path_buf(),
                });
            }
            Err(Errno::ENOTDIR) => {
                return Err(Refused::NotDirectory {
                    path: path.to_path_buf(),
                    component: next_path,
                });
            }
            Err(Errno::ENOENT) => {
                return Err(Refused::Missing {
                    path: path.to_path_buf(),
                });
            }
            Err(Errno::EXDEV) => {
                return Err(Refused::Outside {
                    path: path.to_path_buf(),
                    root: root.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err(format!("open {}", next_path.display()), e)),
        };
        cur_path = next_path;
    }
    Ok(DirFd {
        fd: cur,
        path: cur_path,
    })
}

/// The parent directory of `path` opened beneath `root` (see [`open_dir`]) and the file name
/// to use in it.
///
/// Why: writes, removals and observations of a host file all work on its name inside its
/// parent descriptor.
pub fn open_parent<'a>(
    root: &Path,
    path: &'a Path,
    create: Create,
) -> Result<(DirFd, &'a OsStr), Refused> {
    let outside = || Refused::Outside {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(outside());
    };
    if !crate::config::plain_absolute(path) {
        return Err(outside());
    }
    Ok((open_dir(root, dir, create, path)?, name))
}

/// `mkdir -p` of `dir` beneath `root`: every missing directory made with `mkdirat` (0755) in
/// its parent's descriptor and fsynced there; an existing symlink anywhere below `root`
/// refuses.
///
/// Why: mountpoints (`Where=`, beneath `/`) are created as root in paths other users may
/// control; a symlinked component would put the directory, and the mount, elsewhere.
pub fn create_dir_all(root: &Path, dir: &Path) -> Result<()> {
    open_dir(root, dir, Create::Synced, dir)?;
    Ok(())
}

/// Remove the file `path` beneath `root` and fsync its directory; a missing file (or missing
/// parent) is not an error, a symlinked parent is.
///
/// Why: a removal through a symlinked parent would unlink a file of the same name elsewhere.
pub fn remove_file(root: &Path, path: &Path) -> Result<()> {
    let (dir, name) = match open_parent(root, path, Create::No) {
        Ok(x) => x,
        Err(Refused::Missing { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    match unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => dir.sync(),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn refused(r: Result<DirFd, Refused>) -> Refused {
        r.expect_err("refused")
    }

    #[test]
    fn walks_plain_directories_and_creates_missing_ones() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("srv");
        let dir = root.join("app/conf");
        let got = open_dir(&root, &dir, Create::Synced, &dir.join("f")).unwrap();
        assert_eq!(got.path(), dir);
        assert!(dir.is_dir());
        // the root itself
        let got = open_dir(&root, &root, Create::No, &root.join("f")).unwrap();
        assert_eq!(got.path(), root);
    }

    #[test]
    fn a_symlinked_component_is_refused_and_named() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("srv");
        let victim = d.path().join("victim");
        fs::create_dir_all(root.join("app")).unwrap();
        fs::create_dir_all(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("app/conf")).unwrap();
        let target = root.join("app/conf/sub/x.env");
        for create in [Create::No, Create::Synced, Create::Unsynced] {
            let e = refused(open_dir(&root, target.parent().unwrap(), create, &target));
            assert_eq!(
                e.to_string(),
                format!(
                    "{}: component {} is a symlink; core-ops does not follow symlinks beneath {}",
                    target.display(),
                    root.join("app/conf").display(),
                    root.display()
                )
            );
        }
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0, "nothing made");
        // a relative symlink that stays beneath the root is refused too
        fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink("../real", root.join("app/rel")).unwrap();
        let e = refused(open_dir(&root, &root.join("app/rel"), Create::No, &root));
        assert!(matches!(e, Refused::Symlink { .. }), "{e}");
        // create_dir_all and remove_file say the same
        let e = create_dir_all(&root, &root.join("app/conf/mnt")).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        fs::write(victim.join("x.env"), b"keep").unwrap();
        let e = remove_file(&root, &root.join("app/conf/x.env")).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(fs::read(victim.join("x.env")).unwrap(), b"keep");
    }

    #[test]
    fn the_root_may_be_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("data/srv")).unwrap();
        std::os::unix::fs::symlink(d.path().join("data/srv"), d.path().join("srv")).unwrap();
        let root = d.path().join("srv");
        let dir = root.join("app");
        open_dir(&root, &dir, Create::Synced, &dir).unwrap();
        assert!(d.path().join("data/srv/app").is_dir());
    }

    #[test]
    fn paths_outside_or_not_plain_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("srv");
        fs::create_dir_all(&root).unwrap();
        for dir in [
            d.path().join("etc"),
            root.join("../etc"),
            root.join("a/../../etc"),
            PathBuf::from("srv/a"),
        ] {
            let e = refused(open_dir(&root, &dir, Create::Synced, &dir));
            assert!(
                matches!(e, Refused::Outside { .. }),
                "{}: {e}",
                dir.display()
            );
        }
        assert!(!d.path().join("etc").exists());
        assert!(!root.join("a").exists());
        // `.`, doubled and trailing slashes name the same place (a mountpoint `Where=/srv/a/`)
        for dir in [
            root.join("./a"),
            PathBuf::from(format!("{}//a/", root.display())),
        ] {
            let got = open_dir(&root, &dir, Create::Synced, &dir).unwrap();
            assert_eq!(got.path(), root.join("a"));
        }
        // a host file's path must be plain
        for path in [
            root.join("./a/f"),
            PathBuf::from(format!("{}//a/f", root.display())),
        ] {
            let e = open_parent(&root, &path, Create::No).expect_err("not plain");
            assert!(
                matches!(e, Refused::Outside { .. }),
                "{}: {e}",
                path.display()
            );
        }
    }

    #[test]
    fn missing_and_non_directory_components() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        let e = refused(open_dir(&root, &root.join("a/b"), Create::No, &root));
        assert!(matches!(e, Refused::Missing { .. }), "{e}");
        fs::write(root.join("f"), b"").unwrap();
        let e = refused(open_dir(&root, &root.join("f/b"), Create::Synced, &root));
        assert!(matches!(e, Refused::NotDirectory { .. }), "{e}");
        remove_file(&root, &root.join("a/b/c")).unwrap();
        remove_file(&root, &root.join("nothing")).unwrap();
        remove_file(&root, &root.join("f")).unwrap();
        assert!(!root.join("f").exists());
    }

    #[test]
    fn openat2_is_available_here() {
        // the fallback is for old kernels and seccomp filters; this host should have openat2
        let d = tempfile::tempdir().unwrap();
        let root = open(d.path(), dir_flags(), Mode::empty()).unwrap();
        let how = OpenHow::new()
            .flags(dir_flags())
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        match openat2(root.as_fd(), ".", how) {
            Ok(_) => {}
            Err(Errno::ENOSYS) => eprintln!("openat2 is not available: the fallback is in use"),
            Err(e) => panic!("openat2: {e}"),
        }
    }
}
