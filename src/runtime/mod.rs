//! Runtimes (docs/design.md section 5): versioned artifact sets installed side by side under
//! `<state dir>/runtimes/<name>/<version>/` and switched atomically through a `current`
//! symlink, with a persisted install transaction and a SourceOS `RuntimeInstallReceipt` per
//! lifecycle transition.
//!
//! One concept per file:
//! - [`manifest`]: `runtimes/<name>/<version>.yaml`, read strictly, `depends:` ordered;
//! - [`policy`]: the host's policy (publishers, unverified local artifacts, windows, disk);
//! - [`store`]: the content-addressed artifact store, sha256 verified while streaming;
//! - [`unpack`]: tar.gz into a staging directory, path traversal refused;
//! - [`health`]: restart a runtime's units over D-Bus and judge their health;
//! - [`evidence`], [`schema`]: evidence bundles and the vendored SourceOS schemas receipts
//!   are checked against.
//!
//! A runtime is one more object kind of the pipeline: each stage handles it in its own module
//! (`render::runtimes`, `observe::runtimes`, `plan::runtimes`, `verify`), the install
//! transaction is the `runtimes` phase of apply (`apply::runtimes`: the state machine, its
//! recovery and the operator's history view), and its receipts are written by
//! `record::runtime_receipt`. This module is the runtime's own domain below them all; it
//! depends on no stage.
//!
//! On-disk layout under the state dir:
//! ```text
//! store/sha256/<hex>                       artifacts by content
//! runtimes/<name>/<version>/               unpacked trees
//! runtimes/<name>/current -> <version>     the switch (relative symlink)
//! runtimes/<name>/.meta/<version>.json     what each installed version is (material digest)
//! runtimes/<name>/.runtime.json            previous version, last receipt
//! runtimes/<name>/.transaction.json        the in-flight install (only while one runs)
//! runtimes/<name>/.staging-*               unpack in progress (removed on recovery)
//! evidence/sha256-<hex>/                   evidence bundles
//! ```

pub mod evidence;
pub mod health;
pub mod manifest;
pub mod policy;
pub mod schema;
pub mod state;
pub mod store;
pub mod unpack;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil;

/// How many versions of a runtime stay on disk (the current one included).
///
/// Why 3: current, the one to roll back to, and one more for an operator's manual switch;
/// older trees and their store objects are removed after a successful install.
pub const KEEP_VERSIONS: usize = 3;

/// How the name of a staging directory ([`Layout::staging`]) begins: what a killed unpack
/// leaves behind is found again by it.
pub const STAGING_PREFIX: &str = ".staging-";

/// Paths of one runtime under the state dir.
///
/// Why one type: every step of the transaction and every reader (observe, status, explain)
/// must agree on where things are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `<state dir>/runtimes/<name>`.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of runtime `name` under `state_dir`.
    pub fn new(state_dir: &Path, name: &str) -> Layout {
        Layout {
            dir: runtimes_dir(state_dir).join(name),
        }
    }

    /// The `current` symlink.
    pub fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// The tree of one version.
    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.dir.join(version)
    }

    /// The install record of one version.
    pub fn meta(&self, version: &str) -> PathBuf {
        self.dir.join(".meta").join(format!("{version}.json"))
    }

    /// The per-runtime record (previous version, last receipt).
    pub fn record(&self) -> PathBuf {
        self.dir.join(".runtime.json")
    }

    /// The in-flight transaction.
    pub fn transaction(&self) -> PathBuf {
        self.dir.join(".transaction.json")
    }

    /// A staging directory for one unpack.
    pub fn staging(&self, version: &str) -> PathBuf {
        self.dir
            .join(format!("{STAGING_PREFIX}{version}-{}", std::process::id()))
    }

    /// The version `current` points at, if it is a symlink to a plain name.
    pub fn current_version(&self) -> Option<String> {
        let target = std::fs::read_link(self.current()).ok()?;
        let s = target.to_str()?;
        (manifest::valid_version(s)).then(|| s.to_string())
    }

    /// The install record of a version, if present and readable.
    pub fn installed(&self, version: &str) -> Option<InstalledVersion> {
        let bytes = std::fs::read(self.meta(version)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The per-runtime record (default when missing or unreadable).
    pub fn load_record(&self) -> RuntimeRecord {
        std::fs::read(self.record())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Write the per-runtime record atomically.
    pub fn save_record(&self, r: &RuntimeRecord) -> Result<()> {
        fsutil::write_json(&self.record(), r)
    }
}

/// `<state dir>/runtimes`.
pub fn runtimes_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runtimes")
}

/// What one installed version is, written after its tree was renamed into place.
///
/// Why beside the tree, not in it: the runtime's files stay exactly what the artifact held;
/// observation compares this record's material digest with the desired one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledVersion {
    /// Schema version (1).
    pub schema_version: u32,
    /// Runtime name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Material digest (name, version, artifact digests), as the desired side computes it.
    pub material_digest: String,
    /// sha256 of the manifest it was installed from.
    pub manifest_digest: String,
    /// Store digests of the artifacts unpacked (`sha256:<hex>`), in manifest order.
    pub artifacts: Vec<String>,
    /// RFC 3339 install time.
    pub installed_at: String,
    /// Transaction that installed it.
    pub transaction: String,
}

/// Per-runtime record: what `status` shows besides `current`.
///
/// Why persisted: "previous" is history (the version current before the last switch), which
/// the directory tree alone cannot tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RuntimeRecord {
    /// Version current before the last switch.
    #[serde(default)]
    pub previous: Option<String>,
    /// The last receipt written for this runtime.
    #[serde(default)]
    pub last_receipt: Option<RuntimeReceiptRef>,
}

/// Names of runtimes with a directory under the state dir, sorted.
pub fn known_runtimes(state_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(runtimes_dir(state_dir)) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| manifest::valid_name(n))
        .collect();
    v.sort();
    v
}

/// Status entries of every runtime on disk, for `status.json`.
pub fn status_entries(state_dir: &Path) -> std::collections::BTreeMap<String, RuntimeStatus> {
    known_runtimes(state_dir)
        .into_iter()
        .map(|name| {
            let l = Layout::new(state_dir, &name);
            let rec = l.load_record();
            (
                name,
                RuntimeStatus {
                    current: l.current_version(),
                    previous: rec.previous,
                    last_receipt: rec.last_receipt,
                },
            )
        })
        .collect()
}

/// One runtime as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuntimeStatus {
    /// Version `current` points at.
    pub current: Option<String>,
    /// Version current before the last switch.
    pub previous: Option<String>,
    /// The last `RuntimeInstallReceipt` written for it.
    pub last_receipt: Option<RuntimeReceiptRef>,
}

/// A `RuntimeInstallReceipt` by id, with what an operator wants at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeReceiptRef {
    /// Receipt id (`urn:srcos:receipt:runtime-install:<host>:<sequence>`).
    pub id: String,
    /// `installState`.
    pub install_state: String,
    /// Version of the transaction.
    pub version: String,
    /// Transaction id.
    pub transaction: String,
    /// `capturedAt`.
    pub recorded_at: String,
}

/// The directory a runtime resource's `current` lives in (what removal deletes).
pub fn runtime_dir(current: &Path) -> PathBuf {
    current.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// What `plan` needs of a transaction a killed run left behind: its id and state.
#[derive(Deserialize)]
struct InterruptedTransaction {
    id: String,
    state: state::TxState,
}

/// Warnings for `plan`: transactions a killed run left behind (the next apply resolves them).
/// An unreadable transaction file is the apply's to report; it is not a plan warning.
pub fn inflight_warnings(state_dir: &Path) -> Vec<String> {
    known_runtimes(state_dir)
        .into_iter()
        .filter_map(|name| {
            let bytes = std::fs::read(Layout::new(state_dir, &name).transaction()).ok()?;
            let t: InterruptedTransaction = serde_json::from_slice(&bytes).ok()?;
            Some(format!(
                "runtime {name}: transaction {} was interrupted in state '{}'; the next apply resumes or rolls it back",
                t.id,
                t.state.name()
            ))
        })
        .collect()
}
