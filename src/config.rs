//! Host paths core-ops manages, resolved once from flags, environment and defaults
//! (docs/design.md section 3). Every path the agent touches comes from here, so tests can point the
//! whole agent at a scratch root.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where things live on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// systemd unit dir (`/etc/systemd/system`).
    pub unit_dir: PathBuf,
    /// Quadlet dir (`/etc/containers/systemd`).
    pub quadlet_dir: PathBuf,
    /// State dir (`/var/lib/core-ops`).
    pub state_dir: PathBuf,
    /// Status snapshot (`<state dir>/status.json`).
    pub state_file: PathBuf,
    /// Roots host files may be written under, beneath [`Paths::host_root`].
    pub host_file_roots: Vec<PathBuf>,
    /// The file system host files are written to (`/`; `--host-root` stages another one).
    pub host_root: PathBuf,
    /// Which Quadlet generator validates the rendered Quadlet set before anything is written.
    pub quadlet_generator: QuadletGenerator,
    /// The local root-only trust policy (`/etc/core-ops/trust.yaml`; `crate::trust`).
    pub trust_file: PathBuf,
    /// The host's root-only age identity, which decrypts secret host files
    /// (`/etc/core-ops/age.key`; `crate::render::secrets`).
    pub age_identity: PathBuf,
    /// Caps on reading one revision of the desired-state repository
    /// (`CORE_OPS_MAX_TREE_ENTRIES`, `_TREE_BYTES`, `_FILE_BYTES`, `_TREE_DEPTH`).
    pub read_limits: ReadLimits,
    /// How remote repositories are fetched: credentials directory, fetch timeout, git program
    /// (`--credentials-dir`, `--fetch-timeout`, `CORE_OPS_GIT`).
    pub remote: RemoteOptions,
}

/// Which Quadlet generator `plan` runs in dry-run mode (`CORE_OPS_QUADLET_GENERATOR`).
///
/// Why: a Quadlet file the generator rejects becomes no unit at all after the reload, and
/// systemd only says "not found"; running the real generator first gives the operator its own
/// message before the host is touched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QuadletGenerator {
    /// The first of [`DEFAULT_QUADLET_GENERATORS`] that exists.
    #[default]
    Auto,
    /// `none`: do not validate (the plan says so in a warning).
    Disabled,
    /// This executable.
    Path(PathBuf),
}

impl QuadletGenerator {
    /// Parse the flag/env value: `none` disables, an empty value means auto, anything else is
    /// a path.
    pub fn parse(s: &str) -> QuadletGenerator {
        match s.trim() {
            "" => QuadletGenerator::Auto,
            "none" => QuadletGenerator::Disabled,
            p => QuadletGenerator::Path(PathBuf::from(p)),
        }
    }
}

/// Where the Quadlet generator is looked for, in order: the systemd generator link podman
/// installs, then the binary itself.
pub const DEFAULT_QUADLET_GENERATORS: &[&str] = &[
    "/usr/lib/systemd/system-generators/podman-system-generator",
    "/usr/libexec/podman/quadlet",
];

/// Default systemd unit dir.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// Default Quadlet dir.
pub const DEFAULT_QUADLET_DIR: &str = "/etc/containers/systemd";
/// Default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/core-ops";
/// Default host-file roots.
pub const DEFAULT_HOST_FILE_ROOTS: &str = "/etc:/srv";

impl Paths {
    /// Paths rooted at the defaults, for a state dir and optional overrides.
    pub fn new(
        unit_dir: Option<PathBuf>,
        quadlet_dir: Option<PathBuf>,
        state_dir: Option<PathBuf>,
        state_file: Option<PathBuf>,
        host_file_roots: Option<&str>,
    ) -> Paths {
        let state_dir = state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let state_file = state_file.unwrap_or_else(|| state_dir.join("status.json"));
        Paths {
            unit_dir: unit_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_UNIT_DIR)),
            quadlet_dir: quadlet_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_QUADLET_DIR)),
            state_dir,
            state_file,
            host_file_roots: parse_roots(host_file_roots.unwrap_or(DEFAULT_HOST_FILE_ROOTS)),
            host_root: PathBuf::from("/"),
            quadlet_generator: QuadletGenerator::Auto,
            trust_file: PathBuf::from(DEFAULT_TRUST_FILE),
            age_identity: PathBuf::from(DEFAULT_AGE_IDENTITY),
            read_limits: ReadLimits::default(),
            remote: RemoteOptions::default(),
        }
    }

    /// Write host files beneath `root` instead of `/`: a host file for `/etc/x` goes to
    /// `<root>/etc/x`, and the allowed roots move with it.
    ///
    /// Why: staging the host files of a root file system that is not the running one (an
    /// image being built), and tests that must never observe the machine's own `/etc`.
    pub fn with_host_root(mut self, root: &Path) -> Paths {
        self.host_file_roots = self
            .host_file_roots
            .iter()
            .map(|r| rebase(root, r))
            .collect();
        self.host_root = root.to_path_buf();
        self
    }

    /// Where the host file for `target` (as named in the repository, `/etc/x`) is written.
    pub fn host_path(&self, target: &Path) -> PathBuf {
        rebase(&self.host_root, target)
    }

    /// Whether an absolute host path lies under one of the allowed host-file roots and names
    /// each directory plainly (no `.`, `..` or empty component).
    ///
    /// Why the component rule: `Path::starts_with` compares components lexically, so
    /// `/etc/../root/x` "starts with" `/etc`; the tree reader already refuses such names, and
    /// this refuses them again where the roots are judged.
    pub fn host_file_allowed(&self, target: &Path) -> bool {
        plain_absolute(target)
            && self
                .host_file_roots
                .iter()
                .any(|root| target.starts_with(root) && target != root)
    }

    /// The allowed root a host file is written beneath: the longest root that holds `target`,
    /// else `/` (a file recorded under a root that is no longer configured).
    ///
    /// Why: writes, removals and mode changes resolve the path beneath this root without
    /// following symlinks (`fsutil::beneath`); the root itself is the operator's choice and
    /// may be a symlink.
    pub fn host_file_root(&self, target: &Path) -> &Path {
        self.host_file_roots
            .iter()
            .filter(|root| target.starts_with(root) && target != *root)
            .max_by_key(|root| root.as_os_str().len())
            .map_or(Path::new("/"), PathBuf::as_path)
    }

    /// The persisted target written by `core-ops init`.
    pub fn target_file(&self) -> PathBuf {
        self.state_dir.join("target.json")
    }
}

/// `path` (absolute) beneath `root`.
fn rebase(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Whether `path` is absolute and every component after the leading `/` is a plain name:
/// not empty (`a//b`, a trailing `/`), not `.`, not `..`.
///
/// Why on the bytes: `Path::components` silently drops `.` and empty components, which is
/// exactly what must be seen here.
pub fn plain_absolute(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    match path.as_os_str().as_bytes().strip_prefix(b"/") {
        Some(rest) => rest
            .split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b".."),
        None => false,
    }
}

/// Split a colon-separated list of absolute roots, ignoring empty parts.
pub fn parse_roots(s: &str) -> Vec<PathBuf> {
    s.split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

// ------------------------------------------------------------------ remote repositories

/// Default directory of credential entries.
pub const DEFAULT_CREDENTIALS_DIR: &str = "/etc/core-ops/credentials.d";

/// Default fetch timeout (`--fetch-timeout`, `CORE_OPS_FETCH_TIMEOUT`).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How remote repositories are fetched: where the credential entries are, how long a fetch
/// may take, which `git` to run.
///
/// Why a value: the CLI fills it from flags and environment; tests point it at their own
/// credentials directory and servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOptions {
    /// Directory of credential entries (`/etc/core-ops/credentials.d`).
    pub credentials_dir: PathBuf,
    /// Longest a fetch may take (connect, negotiate, transfer) before it is killed.
    pub timeout: Duration,
    /// The git program (`CORE_OPS_GIT`, default `git` from `PATH`).
    pub git: PathBuf,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            credentials_dir: PathBuf::from(DEFAULT_CREDENTIALS_DIR),
            timeout: DEFAULT_FETCH_TIMEOUT,
            git: PathBuf::from("git"),
        }
    }
}

/// A scratch root for unit tests: unit dir, Quadlet dir, state dir and the host-file roots
/// `etc/` and `srv/` under one temp dir, removed when dropped.
#[cfg(test)]
pub(crate) struct Scratch {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// Paths rooted in it.
    pub paths: Paths,
}

/// A fresh [`Scratch`].
#[cfg(test)]
pub(crate) fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let roots = format!("{}/etc:{}/srv", root.display(), root.display());
    let paths = Paths::new(
        Some(root.join("units")),
        Some(root.join("quadlet")),
        Some(root.join("state")),
        None,
        Some(&roots),
    );
    // never the machine's own identity
    let paths = Paths {
        age_identity: root.join("age.key"),
        ..paths
    };
    Scratch { dir, paths }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_file_roots_are_prefixes_not_strings() {
        let p = Paths::new(None, None, None, None, Some("/etc:/srv"));
        assert!(p.host_file_allowed(Path::new("/etc/web/app.env")));
        assert!(!p.host_file_allowed(Path::new("/etcetera/x")));
        assert!(!p.host_file_allowed(Path::new("/etc")));
        assert!(!p.host_file_allowed(Path::new("/usr/bin/x")));
        assert_eq!(p.state_file, PathBuf::from("/var/lib/core-ops/status.json"));
    }

    #[test]
    fn a_host_root_moves_host_files_and_their_allowed_roots() {
        let p = Paths::new(None, None, None, None, Some("/etc:/srv"))
            .with_host_root(Path::new("/stage"));
        let web = p.host_path(Path::new("/etc/web/app.env"));
        assert_eq!(web, PathBuf::from("/stage/etc/web/app.env"));
        assert!(p.host_file_allowed(&web));
        assert!(!p.host_file_allowed(Path::new("/etc/web/app.env")));
        assert_eq!(p.host_file_root(&web), Path::new("/stage/etc"));
        // units and state are not host files: they stay where they are configured
        assert_eq!(p.unit_dir, PathBuf::from(DEFAULT_UNIT_DIR));
    }

    #[test]
    fn host_file_targets_with_dot_dot_or_empty_components_are_refused() {
        let p = Paths::new(None, None, None, None, Some("/etc:/srv"));
        for bad in [
            "/etc/../root/.ssh/authorized_keys",
            "/etc/web/../../root/x",
            "/etc/./web/app.env",
            "/etc//web/app.env",
            "/etc/web/",
            "/srv/..",
            "etc/web/app.env",
        ] {
            assert!(!p.host_file_allowed(Path::new(bad)), "{bad}");
        }
        assert!(p.host_file_allowed(Path::new("/etc/web/..env")));
    }

    #[test]
    fn host_file_root_is_the_longest_root_holding_the_target() {
        let p = Paths::new(None, None, None, None, Some("/srv:/srv/app:/etc"));
        assert_eq!(
            p.host_file_root(Path::new("/srv/app/x")),
            Path::new("/srv/app")
        );
        assert_eq!(
            p.host_file_root(Path::new("/srv/appx/y")),
            Path::new("/srv")
        );
        assert_eq!(p.host_file_root(Path::new("/etc/a")), Path::new("/etc"));
        assert_eq!(p.host_file_root(Path::new("/usr/a")), Path::new("/"));
    }

    #[test]
    fn quadlet_generator_setting() {
        assert_eq!(QuadletGenerator::parse(""), QuadletGenerator::Auto);
        assert_eq!(QuadletGenerator::parse("none"), QuadletGenerator::Disabled);
        assert_eq!(
            QuadletGenerator::parse("/x/quadlet"),
            QuadletGenerator::Path(PathBuf::from("/x/quadlet"))
        );
    }
}

/// The local root-only trust policy file (`crate::trust`), unless `--trust-file` says
/// otherwise.
pub const DEFAULT_TRUST_FILE: &str = "/etc/core-ops/trust.yaml";

/// Default of [`ReadLimits::max_entries`] (`CORE_OPS_MAX_TREE_ENTRIES`).
pub const DEFAULT_MAX_TREE_ENTRIES: u64 = 100_000;
/// Default of [`ReadLimits::max_bytes`] (`CORE_OPS_MAX_TREE_BYTES`): 256 MiB.
pub const DEFAULT_MAX_TREE_BYTES: u64 = 256 << 20;
/// Default of [`ReadLimits::max_file_bytes`] (`CORE_OPS_MAX_FILE_BYTES`): 64 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;
/// Default of [`ReadLimits::max_depth`] (`CORE_OPS_MAX_TREE_DEPTH`).
pub const DEFAULT_MAX_TREE_DEPTH: usize = 64;

/// What reading one revision may cost at most; exceeding a cap is an input error naming the
/// path and the cap.
///
/// Why: git objects are shared by reference, so 11 small objects can describe 10^11 files
/// (a git bomb) and one tree can nest 40,000 deep; the reader must stop long before memory,
/// time or stack run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Tree entries visited, counted as expanded (an entry reached twice through a shared
    /// subtree counts twice).
    pub max_entries: u64,
    /// Bytes of file and symlink content read, in total.
    pub max_bytes: u64,
    /// Size of one object (a file, a symlink, or a tree object itself).
    pub max_file_bytes: u64,
    /// Path components of any path read (`services/web/web.service` is 3).
    pub max_depth: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_entries: DEFAULT_MAX_TREE_ENTRIES,
            max_bytes: DEFAULT_MAX_TREE_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_depth: DEFAULT_MAX_TREE_DEPTH,
        }
    }
}

/// The host's age identity (`crate::render::secrets`), unless `--age-identity` says
/// otherwise.
pub const DEFAULT_AGE_IDENTITY: &str = "/etc/core-ops/age.key";
