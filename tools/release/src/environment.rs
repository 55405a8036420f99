//! The authoritative verification environment: the contract in
//! `tests/fixtures/distribution/release-gate-environment.json` against the identity the
//! protected runner provides in `CORE_OPS_ACTUAL_VERIFY_*` variables.
//!
//! Why: a release gate is only as good as the machine it ran on; comparing the runner's own
//! identity with the checked-in contract detects runner drift, not just repository drift.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Finding;

/// Where the contract lives, relative to the repository root.
pub const CONTRACT: &str = "tests/fixtures/distribution/release-gate-environment.json";

/// The contract file.
///
/// Why strict (unknown fields rejected): a misspelt field would silently stop being compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Always 1.
    pub schema_version: u32,
    /// `CoreOpsReleaseGateEnvironment`.
    pub kind: String,
    /// Environment name.
    pub name: String,
    /// Environment version marker.
    pub version: String,
    /// The runner the gate must run on.
    pub runner_ref: String,
    /// The class of system (architecture, execution boundary).
    pub system_class: String,
    /// Why these values, and when to change them (for humans).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The compared fields: contract field name and the variable carrying the actual value.
pub const FIELDS: [(&str, &str); 4] = [
    ("name", "CORE_OPS_ACTUAL_VERIFY_ENVIRONMENT_NAME"),
    ("version", "CORE_OPS_ACTUAL_VERIFY_ENVIRONMENT_VERSION"),
    ("runner_ref", "CORE_OPS_ACTUAL_VERIFY_RUNNER_REF"),
    ("system_class", "CORE_OPS_ACTUAL_VERIFY_SYSTEM_CLASS"),
];

impl Contract {
    fn field(&self, name: &str) -> &str {
        match name {
            "name" => &self.name,
            "version" => &self.version,
            "runner_ref" => &self.runner_ref,
            _ => &self.system_class,
        }
    }
}

/// Compare the contract at `root/rel` with the actual values `actual(VAR)` returns; one finding
/// per missing variable or drifted field.
///
/// Why `actual` is a function: the binary passes the process environment, tests a map.
pub fn check(
    root: &Path,
    rel: &str,
    actual: &dyn Fn(&str) -> Option<String>,
    out: &mut Vec<Finding>,
) {
    let text = match std::fs::read_to_string(root.join(rel)) {
        Ok(t) => t,
        Err(e) => {
            out.push(Finding::new(
                rel,
                1,
                "environment-contract",
                format!("cannot read the environment contract: {e}"),
            ));
            return;
        }
    };
    let contract: Contract = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::new(
                rel,
                e.line().max(1),
                "environment-contract",
                format!("invalid environment contract: {e}"),
            ));
            return;
        }
    };
    let line_of = |field: &str| {
        let needle = format!("\"{field}\"");
        text.lines()
            .position(|l| l.trim_start().starts_with(&needle))
            .map_or(1, |i| i + 1)
    };
    for (field, var) in FIELDS {
        let expected = contract.field(field);
        let line = line_of(field);
        if expected.trim().is_empty() {
            out.push(Finding::new(
                rel,
                line,
                "environment-contract",
                format!("{field} is empty in the contract"),
            ));
            continue;
        }
        match actual(var).filter(|v| !v.trim().is_empty()) {
            None => out.push(Finding::new(
                rel,
                line,
                "environment-missing",
                format!(
                    "{var} is not set: the runner must provide its actual {field} (expected \
                     \"{expected}\"); a missing identity is not a pass"
                ),
            )),
            Some(v) if v != expected => out.push(Finding::new(
                rel,
                line,
                "environment-drift",
                format!("{field} drifted: the contract says \"{expected}\", {var} is \"{v}\""),
            )),
            Some(_) => {}
        }
    }
}
