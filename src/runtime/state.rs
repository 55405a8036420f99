//! The persisted states of a runtime install transaction (`.transaction.json`'s `state`).
//!
//! Why in the runtime's domain, not beside the engine (`apply::runtimes::transaction`): status,
//! plan warnings and the operator's history read a transaction a killed run left behind
//! without running it.

use serde::{Deserialize, Serialize};

/// The persisted states of a transaction in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxState {
    /// Created; receipt `requested`.
    Requested,
    /// Manifest and dependencies resolved; receipt `manifest_resolved`.
    ManifestResolved,
    /// Artifacts in the store, digests checked; receipt `artifact_verified`.
    ArtifactVerified,
    /// About to unpack; receipt `installing`.
    Installing,
    /// The version's tree and install record are in place (not yet current).
    Unpacked,
    /// `current` points at the new version (the commit point).
    Switched,
    /// The units were restarted; health not yet judged.
    Restarted,
    /// Unhealthy after the switch: switching back to the previous version.
    RollingBack,
}

impl TxState {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            TxState::Requested => "requested",
            TxState::ManifestResolved => "manifest_resolved",
            TxState::ArtifactVerified => "artifact_verified",
            TxState::Installing => "installing",
            TxState::Unpacked => "unpacked",
            TxState::Switched => "switched",
            TxState::Restarted => "restarted",
            TxState::RollingBack => "rolling_back",
        }
    }

    /// Which states a transition into `self` may start from (zincati-style guard).
    pub fn allowed_from(self) -> &'static [TxState] {
        use TxState::*;
        match self {
            Requested => &[],
            ManifestResolved => &[Requested],
            ArtifactVerified => &[ManifestResolved],
            Installing => &[ArtifactVerified],
            Unpacked => &[Installing],
            Switched => &[Unpacked],
            Restarted => &[Switched],
            RollingBack => &[Switched, Restarted],
        }
    }
}
