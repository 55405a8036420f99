//! `<state dir>/fetch.json`: how fetching the repository went, across runs (last success,
//! last failure and its class, failure counters).
//!
//! Why a file of its own: a failed fetch changes nothing else (no plan, no receipt, the host
//! stays on its last applied revision), yet `status` and the metrics must show it and count
//! it; status.json describes applied state and is left to the apply path.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil;
use crate::model::time::now_rfc3339;

/// File name under the state dir.
pub const FETCH_STATE_FILE: &str = "fetch.json";

/// Schema version of [`FetchState`].
pub const FETCH_STATE_SCHEMA_VERSION: u32 = 1;

/// The persisted fetch record of the repository this host follows.
///
/// Why counters here: Prometheus wants `core_ops_fetch_failures_total` to only grow, and
/// each run is a new process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchState {
    /// Always [`FETCH_STATE_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsFetch`.
    pub kind: String,
    /// The repository URL, user-info removed.
    pub location: String,
    /// When a fetch last succeeded (RFC 3339).
    pub last_success_at: Option<String>,
    /// The same, as Unix seconds (metrics).
    pub last_success_unix: Option<u64>,
    /// Wall time of the last successful fetch, milliseconds.
    pub last_success_ms: Option<u64>,
    /// When a fetch last failed (RFC 3339).
    pub last_failure_at: Option<String>,
    /// Class of the last failure (`unreachable`, `dns`, `timeout`, `authentication`,
    /// `host_key`, `tls`, `not_found`, `other`).
    pub last_failure_kind: Option<String>,
    /// Message of the last failure (credentials never appear in it).
    pub last_error: Option<String>,
    /// Failed fetches since the state dir was created.
    pub failures_total: u64,
    /// Failed fetches since the last success.
    pub consecutive_failures: u64,
}

/// The record, if there is a readable one.
pub fn load(state_dir: &Path) -> Option<FetchState> {
    let bytes = std::fs::read(state_dir.join(FETCH_STATE_FILE)).ok()?;
    serde_json::from_slice::<FetchState>(&bytes)
        .ok()
        .filter(|s| s.schema_version == FETCH_STATE_SCHEMA_VERSION)
}

fn save(state_dir: &Path, s: &FetchState) -> Result<()> {
    fsutil::write_json(&state_dir.join(FETCH_STATE_FILE), s)
}

fn base(state_dir: &Path, location: &str) -> FetchState {
    let mut s = load(state_dir).unwrap_or_default();
    s.schema_version = FETCH_STATE_SCHEMA_VERSION;
    s.kind = "CoreOpsFetch".into();
    s.location = location.to_string();
    s
}

/// Record a successful fetch.
pub fn record_success(state_dir: &Path, location: &str, elapsed_ms: u64) {
    let mut s = base(state_dir, location);
    s.last_success_at = Some(now_rfc3339());
    s.last_success_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs());
    s.last_success_ms = Some(elapsed_ms);
    s.consecutive_failures = 0;
    if let Err(e) = save(state_dir, &s) {
        tracing::warn!("cannot record the fetch in {FETCH_STATE_FILE}: {e}");
    }
}

/// Record a failed fetch (the message must already be free of credentials).
pub fn record_failure(state_dir: &Path, location: &str, kind: &str, message: &str) {
    let mut s = base(state_dir, location);
    s.last_failure_at = Some(now_rfc3339());
    s.last_failure_kind = Some(kind.to_string());
    s.last_error = Some(message.to_string());
    s.failures_total += 1;
    s.consecutive_failures += 1;
    if let Err(e) = save(state_dir, &s) {
        tracing::warn!("cannot record the failed fetch in {FETCH_STATE_FILE}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_failures_and_resets_the_streak_on_success() {
        let t = tempfile::tempdir().unwrap();
        assert!(load(t.path()).is_none());
        record_failure(t.path(), "https://h/r", "unreachable", "x");
        record_failure(t.path(), "https://h/r", "timeout", "y");
        let s = load(t.path()).unwrap();
        assert_eq!((s.failures_total, s.consecutive_failures), (2, 2));
        assert_eq!(s.last_failure_kind.as_deref(), Some("timeout"));
        record_success(t.path(), "https://h/r", 12);
        let s = load(t.path()).unwrap();
        assert_eq!((s.failures_total, s.consecutive_failures), (2, 0));
        assert!(s.last_success_unix.is_some());
        assert_eq!(
            s.last_error.as_deref(),
            Some("y"),
            "the last failure stays visible"
        );
    }
}
