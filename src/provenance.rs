//! Which build of core-ops produced an output. Every plan, status snapshot and receipt carries
//! it, so evidence can always be traced to a binary.

use serde::{Deserialize, Serialize};

/// core-ops version, build revision and compiler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Package version from Cargo.toml.
    pub version: String,
    /// Git revision of the build (`-dirty` when built from a modified tree).
    pub build_revision: String,
    /// `rustc --version` of the compiler that built it. Empty when read from a record written
    /// before this field existed (older status.json and receipts stay readable).
    #[serde(default)]
    pub rustc: String,
}

impl Provenance {
    /// The provenance of this binary.
    pub fn current() -> Provenance {
        Provenance {
            version: env!("CARGO_PKG_VERSION").to_string(),
            build_revision: env!("CORE_OPS_BUILD_REVISION").to_string(),
            rustc: env!("CORE_OPS_RUSTC_VERSION").to_string(),
        }
    }

    /// The `--version` text of this provenance: `0.1.0 (build 1ab5f48aa0c1, rustc 1.95.0 ...)`.
    ///
    /// Why a method: tests compare a record's provenance with what `--version` printed.
    pub fn long_version(&self) -> String {
        format!(
            "{} (build {}, {})",
            self.version, self.build_revision, self.rustc
        )
    }
}

/// `0.1.0 (build 1ab5f48aa0c1, rustc 1.95.0 ...)`, for `--version` of both binaries (clap
/// prefixes the binary name).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_version_is_the_current_provenance() {
        assert_eq!(Provenance::current().long_version(), long_version());
    }

    #[test]
    fn records_without_rustc_still_load() {
        let p: Provenance =
            serde_json::from_str(r#"{"version":"0.1.0","build_revision":"abc"}"#).unwrap();
        assert_eq!(p.rustc, "");
    }
}
