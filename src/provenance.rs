//! Which build of core-ops produced an output. Every plan, status snapshot and receipt carries
//! it, so evidence can always be traced to a binary.

use serde::{Deserialize, Serialize};

/// core-ops version and build revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Package version from Cargo.toml.
    pub version: String,
    /// Git revision of the build (`-dirty` when built from a modified tree).
    pub build_revision: String,
}

impl Provenance {
    /// The provenance of this binary.
    pub fn current() -> Provenance {
        Provenance {
            version: env!("CARGO_PKG_VERSION").to_string(),
            build_revision: env!("CORE_OPS_BUILD_REVISION").to_string(),
        }
    }
}

/// `core-ops 0.1.0 (build 1ab5f48aa0c1, rustc 1.95.0 ...)`, for `--version`.
pub fn long_version() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (build ",
        env!("CORE_OPS_BUILD_REVISION"),
        ", ",
        env!("CORE_OPS_RUSTC_VERSION"),
        ")"
    )
}
