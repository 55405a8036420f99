//! Trust: which commits this host accepts, decided before a commit's tree is read
//! (docs/design.md section 10, "Trust").
//!
//! Two checks, one policy:
//! - **signed commits**: with `require_signed: true` the commit to apply must carry an SSH
//!   signature (git `gpg.format=ssh`, namespace `git`) by a key of the allowed-signers file,
//!   verified in process against the commit object without its `gpgsig` header;
//! - **no silent rewind**: a desired revision that does not descend from `last_applied` is
//!   refused unless it is an explicit `--rollback-to` or the policy says `allow_rewind: true`.
//!
//! Where the policy comes from: the local root-only file (`/etc/core-ops/trust.yaml`,
//! `--trust-file`, `CORE_OPS_TRUST_FILE`) decides whenever it exists, and the repository is
//! then not asked at all. Without it, `trust:` in `hosts/<host>/host.yaml` of the commit
//! being judged applies (only that blob is read before the verdict). A repository-carried
//! policy can only make checks stricter: it may require signatures, never allow a rewind,
//! and whoever controls the repository can drop it again. That is why the local file exists
//! and wins.

mod allowed_signers;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use git2::{ErrorCode, ObjectType, Oid, Repository};
use serde::Deserialize;
use ssh_key::{HashAlg, SshSig};

pub use allowed_signers::{AllowedSigners, Entry};

use crate::error::{Error, InputError, Location, Result};
use crate::model::yaml;
use crate::source::Revision;

/// The local trust file when neither `--trust-file` nor `CORE_OPS_TRUST_FILE` names one.
pub use crate::config::DEFAULT_TRUST_FILE;

/// The SSHSIG namespace git signs commits in.
pub const GIT_NAMESPACE: &str = "git";

pub use crate::model::yaml::TrustPolicy;

/// Where the policy in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOrigin {
    /// The local root-only trust file.
    Local(PathBuf),
    /// `trust:` in `hosts/<host>/host.yaml` of the commit being judged.
    Repository {
        /// Repository-relative path of the host.yaml.
        file: String,
        /// The commit it was read from.
        commit: String,
    },
    /// Neither exists: nothing is required beyond the default (no rewind).
    Default,
}

impl fmt::Display for PolicyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyOrigin::Local(p) => write!(f, "local trust file {}", p.display()),
            PolicyOrigin::Repository { file, commit } => {
                write!(f, "{file} of commit {}", commit.get(..8).unwrap_or(commit))
            }
            PolicyOrigin::Default => write!(f, "no trust policy"),
        }
    }
}

/// The policy in force for one run and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// The policy.
    pub policy: TrustPolicy,
    /// Its origin.
    pub origin: PolicyOrigin,
    /// The local trust file that was looked for (named in refusals).
    pub local_file: PathBuf,
}

/// A commit whose signature was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Principals of the allowed-signers line that matched.
    pub principals: Vec<String>,
    /// `SHA256:...` fingerprint of the signing key.
    pub fingerprint: String,
}

fn refuse(msg: impl Into<String>) -> Error {
    Error::Trust(msg.into())
}

/// The policy for `host` and commit `rev`: the local file if it exists, else `trust:` from
/// `hosts/<host>/host.yaml` of that commit (that one blob only), else the default.
pub fn policy_for(
    local_file: &Path,
    repo: &Repository,
    rev: &Revision,
    host: &str,
) -> Result<Trust> {
    let (policy, origin) = match load_local(local_file)? {
        Some(p) => (p, PolicyOrigin::Local(local_file.to_path_buf())),
        None => match repo_policy(repo, rev, host)? {
            Some((p, file)) => (
                p,
                PolicyOrigin::Repository {
                    file,
                    commit: rev.commit.clone(),
                },
            ),
            None => (TrustPolicy::default(), PolicyOrigin::Default),
        },
    };
    Ok(Trust {
        policy,
        origin,
        local_file: local_file.to_path_buf(),
    })
}

/// Read the local trust file; `None` when it does not exist. It must be a regular file owned
/// by root (or, when not running as root, by the running user) and not writable by group or
/// others, like every directory above it (sticky directories such as `/tmp` excepted).
pub fn load_local(path: &Path) -> Result<Option<TrustPolicy>> {
    let text = match read_private(path) {
        Ok(t) => t,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let shown = path.display().to_string();
    let policy: TrustPolicy = yaml::parse(&shown, text.as_bytes())?;
    validate(&policy, &shown, true)?;
    Ok(Some(policy))
}

/// `trust:` of `hosts/<host>/host.yaml` in `rev`, reading only that blob.
fn repo_policy(
    repo: &Repository,
    rev: &Revision,
    host: &str,
) -> Result<Option<(TrustPolicy, String)>> {
    #[derive(Deserialize)]
    struct TrustOnly {
        #[serde(default)]
        trust: Option<TrustPolicy>,
    }
    let file = format!("hosts/{host}/host.yaml");
    let commit = find_commit(repo, rev)?;
    let tree = commit
        .tree()
        .map_err(|e| Error::Source(format!("read tree of {}: {}", rev.commit, e.message())))?;
    let entry = match tree.get_path(Path::new(&file)) {
        Ok(e) => e,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(Error::Source(format!("read {file}: {}", e.message()))),
    };
    if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == 0o120000 {
        return Err(
            InputError::new(Location::file(&file), "host.yaml is not a regular file").into(),
        );
    }
    let blob = repo
        .find_blob(entry.id())
        .map_err(|e| Error::Source(format!("read {file}: {}", e.message())))?;
    let doc: TrustOnly = yaml::parse(&file, blob.content())?;
    match doc.trust {
        Some(p) => {
            validate(&p, &file, false)?;
            Ok(Some((p, file)))
        }
        None => Ok(None),
    }
}

fn validate(p: &TrustPolicy, file: &str, local: bool) -> Result<(), InputError> {
    let at = || Location::file(file);
    if p.require_signed && p.allowed_signers.is_none() {
        return Err(InputError::new(
            at(),
            "trust: require_signed needs allowed_signers (an OpenSSH allowed-signers file)",
        ));
    }
    if let Some(s) = &p.allowed_signers
        && !s.is_absolute()
    {
        return Err(InputError::new(
            at(),
            format!(
                "trust: allowed_signers must be an absolute host path, not '{}'",
                s.display()
            ),
        ));
    }
    if !local && p.allow_rewind {
        return Err(InputError::new(
            at(),
            format!(
                "trust: allow_rewind cannot be set by the repository it would relax; set it in \
                 the local trust file ({DEFAULT_TRUST_FILE} or CORE_OPS_TRUST_FILE)"
            ),
        ));
    }
    Ok(())
}

/// Read a trust anchor (trust file, allowed signers) that only root may change.
fn read_private(path: &Path) -> Result<String> {
    let euid = nix::unistd::geteuid().as_raw();
    let trusted: &[u32] = if euid == 0 { &[0] } else { &[0, euid] };
    crate::fsutil::check_private(path, trusted)?;
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))
}

fn find_commit<'r>(repo: &'r Repository, rev: &Revision) -> Result<git2::Commit<'r>> {
    let oid = Oid::from_str(&rev.commit)
        .map_err(|_| Error::Source(format!("'{}' is not a commit id", rev.commit)))?;
    repo.find_commit(oid)
        .map_err(|e| Error::Source(format!("commit {} not found: {}", rev.commit, e.message())))
}

/// Verify `rev` against the policy: `Ok(None)` when no signature is required, the signer when
/// one is and it verifies, a refusal naming the commit, the key seen and the allowed-signers
/// file otherwise.
pub fn verify_commit(repo: &Repository, rev: &Revision, trust: &Trust) -> Result<Option<Verified>> {
    if !trust.policy.require_signed {
        return Ok(None);
    }
    let Some(signers_path) = trust.policy.allowed_signers.as_deref() else {
        return Err(refuse(format!(
            "{} requires signed commits but names no allowed_signers file",
            trust.origin
        )));
    };
    let what = format!("commit {rev}");
    let file = signers_path.display().to_string();
    let tail = format!("allowed signers: {file} (policy: {})", trust.origin);
    let oid = Oid::from_str(&rev.commit)
        .map_err(|_| Error::Source(format!("'{}' is not a commit id", rev.commit)))?;
    let (sig, signed) = match repo.extract_signature(&oid, None) {
        Ok(pair) => pair,
        Err(e) if e.code() == ErrorCode::NotFound => {
            return Err(refuse(format!(
                "{what} is not signed; signed commits are required ({tail})"
            )));
        }
        Err(e) => {
            return Err(Error::Source(format!(
                "read the signature of {}: {}",
                rev.commit,
                e.message()
            )));
        }
    };
    let sig_text = String::from_utf8_lossy(&sig);
    let sig_text = sig_text.trim();
    if sig_text.starts_with("-----BEGIN PGP SIGNATURE-----") {
        return Err(refuse(format!(
            "{what} carries an OpenPGP signature; core-ops verifies SSH signatures only \
             (git -c gpg.format=ssh) ({tail})"
        )));
    }
    if !sig_text.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return Err(refuse(format!(
            "{what} carries a signature core-ops cannot read (not an SSH signature) ({tail})"
        )));
    }
    let sshsig = SshSig::from_pem(sig_text.as_bytes()).map_err(|e| {
        refuse(format!(
            "{what} carries a malformed SSH signature ({e}) ({tail})"
        ))
    })?;
    let fingerprint = sshsig.public_key().fingerprint(HashAlg::Sha256).to_string();
    let seen = format!("key {fingerprint} ({})", sshsig.algorithm());
    if sshsig.namespace() != GIT_NAMESPACE {
        return Err(refuse(format!(
            "{what} is signed by {seen} in namespace '{}', not '{GIT_NAMESPACE}' ({tail})",
            sshsig.namespace()
        )));
    }
    let text = read_private(signers_path)?;
    let signers = AllowedSigners::parse(&file, &text)?;
    let time = find_commit(repo, rev)?.committer().when().seconds();
    let Some(entry) = signers
        .matching(sshsig.public_key(), GIT_NAMESPACE, time)
        .next()
    else {
        return Err(refuse(format!(
            "{what} is signed by {seen}, which is not an allowed signer for namespace \
             '{GIT_NAMESPACE}' at the commit's time ({tail})"
        )));
    };
    let key = ssh_key::PublicKey::from(entry.key.clone());
    key.verify(GIT_NAMESPACE, &signed, &sshsig).map_err(|e| {
        refuse(format!(
            "{what}: the signature by {seen} ({}) does not verify ({e}); the commit or its \
             signature was altered ({tail})",
            entry.principals.join(",")
        ))
    })?;
    tracing::info!(
        commit = %rev.commit,
        signer = %entry.principals.join(","),
        key = %fingerprint,
        "commit signature verified"
    );
    Ok(Some(Verified {
        principals: entry.principals.clone(),
        fingerprint,
    }))
}

/// Whether `last` is among the first few ancestors of `desired` (its parents, theirs, ...).
///
/// Why: a new revision is almost always a few commits after the last applied one, and
/// reading those commits costs a few object reads; libgit2's `graph_descendant_of` looks
/// for merge bases and reads the whole history each time. `false` only means "not found
/// nearby": the full test decides then.
fn near_descendant(repo: &Repository, desired: Oid, last: Oid) -> bool {
    const AT_MOST: usize = 64;
    let mut queue = std::collections::VecDeque::from([desired]);
    let mut seen = std::collections::HashSet::from([desired]);
    while let Some(id) = queue.pop_front() {
        if seen.len() > AT_MOST {
            return false;
        }
        let Ok(commit) = repo.find_commit(id) else {
            return false;
        };
        for parent in commit.parent_ids() {
            if parent == last {
                return true;
            }
            if seen.insert(parent) {
                queue.push_back(parent);
            }
        }
    }
    false
}

/// Refuse `desired` unless it is `last_applied` or descends from it, or the policy allows a
/// rewind (then a warning is logged and returned).
pub fn check_descent(
    repo: &Repository,
    last_applied: &str,
    desired: &Revision,
    trust: &Trust,
) -> Result<Option<String>> {
    if last_applied == desired.commit {
        return Ok(None);
    }
    let desired_oid = Oid::from_str(&desired.commit)
        .map_err(|_| Error::Source(format!("'{}' is not a commit id", desired.commit)))?;
    let problem = match Oid::from_str(last_applied)
        .ok()
        .filter(|o| repo.find_commit(*o).is_ok())
    {
        None => format!(
            "the last applied revision {last_applied} is no longer in the repository (history \
             rewritten?), so desired revision {} ({}) cannot be shown to descend from it",
            desired.commit, desired.requested_ref
        ),
        Some(last) if near_descendant(repo, desired_oid, last) => return Ok(None),
        Some(last) => match repo.graph_descendant_of(desired_oid, last) {
            Ok(true) => return Ok(None),
            Ok(false) => format!(
                "desired revision {} ({}) does not descend from the last applied revision \
                 {last_applied} (a force push or an older ref?)",
                desired.commit, desired.requested_ref
            ),
            Err(e) => {
                return Err(Error::Source(format!(
                    "compare {} with {last_applied}: {}",
                    desired.commit,
                    e.message()
                )));
            }
        },
    };
    if trust.policy.allow_rewind {
        let w = format!(
            "{problem}; applying it anyway: allow_rewind in {}",
            trust.origin
        );
        tracing::warn!("{w}");
        return Ok(Some(w));
    }
    Err(refuse(format!(
        "refusing to rewind: {problem}; go back explicitly with `core-ops apply --rollback-to \
         REV` (a revision of the applied history), or set allow_rewind: true in the local \
         trust file {}",
        trust.local_file.display()
    )))
}
