//! Typed errors of the library. Errors are built once, at the boundary where the bad value was
//! read, and carry the file (and line where there is one) so the operator can fix the input
//! without guessing. The binary maps them to exit codes in exactly one place.

use std::fmt;

/// Where in the desired-state repository an input error was found.
///
/// Why: every input error must name the file, and the line when the format has lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Repository-relative path (or host path for state files).
    pub file: String,
    /// 1-based line number, when known.
    pub line: Option<usize>,
}

impl Location {
    /// A location naming only a file.
    pub fn file(file: impl Into<String>) -> Self {
        Location {
            file: file.into(),
            line: None,
        }
    }

    /// A location naming a file and a 1-based line.
    pub fn line(file: impl Into<String>, line: usize) -> Self {
        Location {
            file: file.into(),
            line: Some(line),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}", self.file, l),
            None => write!(f, "{}", self.file),
        }
    }
}

/// A problem with the desired state itself (bad YAML, a unit file that breaks a rule).
///
/// Why: input errors are the operator's to fix and must never change the host; keeping them
/// one type lets every command report them the same way (`file:line: message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct InputError {
    /// Where the problem is.
    pub location: Location,
    /// What is wrong, in the words of the troubleshooting guide.
    pub message: String,
}

impl InputError {
    /// Build an input error at a location.
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        InputError {
            location,
            message: message.into(),
        }
    }
}

/// Every error the library returns, by the stage that raised it.
///
/// Why: the binary decides exit codes from the variant, in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The desired-state repository is invalid.
    #[error("invalid desired state: {0}")]
    Input(#[from] InputError),
    /// The repository could not be opened, or the ref did not resolve.
    #[error("source: {0}")]
    Source(String),
    /// Fetching the remote repository failed (unreachable, DNS, timeout, authentication,
    /// host key, TLS): nothing was planned or changed, the host stays on its last applied
    /// revision, and the next run retries. Its own exit code, so a fleet tells a network
    /// or credential problem from a bad desired state.
    #[error("fetch: {0}")]
    Fetch(String),
    /// Configuration (flags, environment, persisted target) is incomplete or contradictory.
    #[error("configuration: {0}")]
    Config(String),
    /// Another core-ops run holds the state-dir lock.
    #[error("{0}")]
    Locked(String),
    /// The trust policy refuses the desired revision (unsigned, not an allowed signer, a
    /// rewind) or a trust anchor is unsafe.
    #[error("trust: {0}")]
    Trust(String),
    /// A saved plan no longer matches the host or the repository.
    #[error("stale plan: {0}")]
    StalePlan(String),
    /// The plan has blocked actions (a file in the way, a unit the generator or
    /// `systemd-analyze` rejects): it cannot be applied as it stands; nothing was changed.
    #[error("{0}")]
    BlockedPlan(String),
    /// The receipt chain is broken, truncated or forked: nothing is appended to it (and an
    /// appending run is refused before it changes the host).
    #[error("receipt chain: {0}")]
    ReceiptChain(String),
    /// systemd could not be reached or refused a call.
    #[error("systemd: {0}")]
    Systemd(String),
    /// The run changed the host and then could not record what it did (status, receipt,
    /// ledger): the in-flight journal stays, so the next run re-applies and records it.
    #[error("the host was changed, but the run could not be recorded: {0}")]
    HostChanged(String),
    /// Reading or writing the host failed.
    #[error("{context}: {source}{}", read_only_hint(.source))]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The kind of an [`Error`], as `--json` failures name it (`error.kind`).
///
/// Why a type: callers and the JSON contract see one name per variant, spelled by serde.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// [`Error::Input`].
    Input,
    /// [`Error::Source`].
    Source,
    /// [`Error::Fetch`].
    Fetch,
    /// [`Error::Config`].
    Configuration,
    /// [`Error::Locked`].
    Locked,
    /// [`Error::StalePlan`].
    StalePlan,
    /// [`Error::BlockedPlan`].
    BlockedPlan,
    /// [`Error::Trust`].
    Trust,
    /// [`Error::ReceiptChain`].
    ReceiptChain,
    /// [`Error::Systemd`].
    Systemd,
    /// [`Error::HostChanged`].
    HostChangedUnrecorded,
    /// [`Error::Io`].
    Io,
}

impl Error {
    /// What kind of error this is (the `error.kind` of a `--json` failure).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Input(_) => ErrorKind::Input,
            Error::Source(_) => ErrorKind::Source,
            Error::Fetch(_) => ErrorKind::Fetch,
            Error::Config(_) => ErrorKind::Configuration,
            Error::Locked(_) => ErrorKind::Locked,
            Error::StalePlan(_) => ErrorKind::StalePlan,
            Error::BlockedPlan(_) => ErrorKind::BlockedPlan,
            Error::Trust(_) => ErrorKind::Trust,
            Error::ReceiptChain(_) => ErrorKind::ReceiptChain,
            Error::Systemd(_) => ErrorKind::Systemd,
            Error::HostChanged(_) => ErrorKind::HostChangedUnrecorded,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// The file and line an input error names (both `None` for other errors).
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::Input(e) => Some(&e.location),
            _ => None,
        }
    }

    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why a write hit a read-only file system, when that is likely the unit's sandbox: under
/// core-ops.service's `ProtectSystem=strict` only `ReadWritePaths=` (and the state dir) are
/// writable, and the plain "Read-only file system" would send the operator to `mount`.
fn read_only_hint(source: &std::io::Error) -> &'static str {
    if source.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
        " (under core-ops.service, ProtectSystem=strict leaves only ReadWritePaths= writable: \
         add the path, or an existing directory above it, with a drop-in: \
         `systemctl edit core-ops.service`)"
    } else {
        ""
    }
}

/// Library result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::systemd::SystemdError> for Error {
    fn from(e: crate::systemd::SystemdError) -> Self {
        Error::Systemd(e.to_string())
    }
}

/// `a, b` for a listing, `none` for an empty one, and why when it could not be listed (a
/// read cap): for the "known ..." part of an error message.
pub fn known_list(listed: Result<Vec<String>, InputError>) -> String {
    match listed {
        Ok(v) if v.is_empty() => "none".to_string(),
        Ok(v) => v.join(", "),
        Err(e) => format!("not listed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_keep_their_json_names() {
        let cases = [
            (Error::Config("x".into()), "configuration"),
            (Error::BlockedPlan("x".into()), "blocked_plan"),
            (Error::Fetch("x".into()), "fetch"),
            (Error::HostChanged("x".into()), "host_changed_unrecorded"),
            (Error::StalePlan("x".into()), "stale_plan"),
            (Error::io("x", std::io::ErrorKind::NotFound.into()), "io"),
        ];
        for (e, name) in cases {
            assert_eq!(crate::model::names::serde_name(&e.kind()), name, "{e}");
        }
    }

    #[test]
    fn read_only_file_system_names_the_unit_sandbox() {
        let ro = Error::io(
            "mkdir /data/x",
            std::io::Error::from_raw_os_error(nix::errno::Errno::EROFS as i32),
        )
        .to_string();
        assert!(
            ro.starts_with("mkdir /data/x: Read-only file system"),
            "{ro}"
        );
        assert!(ro.contains("ReadWritePaths="), "{ro}");
        let other = Error::io("mkdir /data/x", std::io::ErrorKind::NotFound.into()).to_string();
        assert!(!other.contains("ReadWritePaths"), "{other}");
    }
}
