//! Assertions: observable contract only (unit states from systemd, file bytes, status.json,
//! the receipt log, plan actions, command output), each evaluated on the machine and recorded
//! with what was expected and what was seen.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use super::machine::{Output, Shell, quote};
use super::scenario::Assertion;

/// core-ops' default state directory in the guest.
pub const STATE_DIR: &str = "/var/lib/core-ops";

/// One evaluated check.
#[derive(Debug, Clone, Serialize)]
pub struct AssertionResult {
    /// Index of the step it belongs to.
    pub step: usize,
    /// What it is about (`unit web.service`).
    pub subject: String,
    /// Which property (`active_state`, `sha256`, `exit_code`, ...).
    pub check: String,
    /// Expected value.
    pub expected: Value,
    /// Observed value.
    pub actual: Value,
    /// Whether they matched.
    pub passed: bool,
}

/// What assertions can read besides the machine.
pub struct Inputs<'a> {
    /// Fixture label -> commit id.
    pub revisions: &'a BTreeMap<String, String>,
    /// The most recent `plan` step's JSON.
    pub last_plan: Option<&'a Value>,
    /// The most recent command step's output.
    pub last_output: Option<&'a Output>,
}

const T: Duration = Duration::from_secs(60);

/// Evaluate one assertion into one or more results.
pub fn evaluate(
    sh: &mut Shell<'_>,
    step: usize,
    a: &Assertion,
    cx: &Inputs<'_>,
) -> Result<Vec<AssertionResult>> {
    let subject = a.subject();
    let mut out = Vec::new();
    let mut push = |check: &str, expected: Value, actual: Value| {
        let passed = expected == actual;
        out.push(AssertionResult {
            step,
            subject: subject.clone(),
            check: check.into(),
            expected,
            actual,
            passed,
        });
    };
    if let Some(unit) = &a.unit {
        let o = sh.exec(
            "assert-unit",
            &format!(
                "systemctl show {} -p ActiveState -p SubState -p LoadState -p UnitFileState",
                quote(unit)
            ),
            T,
        )?;
        let props: BTreeMap<String, String> = o
            .stdout_text()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| Value::String(props.get(k).cloned().unwrap_or_default());
        for (check, prop, want) in [
            ("active_state", "ActiveState", &a.active_state),
            ("sub_state", "SubState", &a.sub_state),
            ("load_state", "LoadState", &a.load_state),
            ("enabled", "UnitFileState", &a.enabled),
        ] {
            if let Some(w) = want {
                push(check, Value::String(w.clone()), get(prop));
            }
        }
    } else if let Some(path) = &a.file {
        let rel = format!("out/file-{step}-{}", path_tag(path));
        let g = sh.guest_share();
        let o = sh.exec(
            "assert-file",
            &format!(
                "mkdir -p {g}/out; if [ -e {p} ]; then cp {p} {g}/{rel} && echo present; else echo absent; fi",
                p = quote(path)
            ),
            T,
        )?;
        let present = o.stdout_text().trim() == "present";
        let bytes = if present {
            std::fs::read(sh.host_path(&rel)).ok()
        } else {
            None
        };
        let _ = std::fs::remove_file(sh.host_path(&rel));
        let wants_exist = a.exists.unwrap_or(true);
        push("exists", Value::Bool(wants_exist), Value::Bool(present));
        if let Some(want) = &a.sha256 {
            let got = bytes
                .as_deref()
                .map(|b| core_ops::model::normalize::sha256_hex(b)[7..].to_string())
                .unwrap_or_default();
            push(
                "sha256",
                Value::String(want.trim_start_matches("sha256:").to_string()),
                Value::String(got),
            );
        }
        if let Some(want) = &a.content {
            let got = bytes
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            push("content", Value::String(want.clone()), Value::String(got));
        }
    } else if let Some(pointer) = &a.status {
        let o = sh.exec("assert-status", &format!("cat {STATE_DIR}/status.json"), T)?;
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let actual = doc.pointer(pointer).cloned().unwrap_or(Value::Null);
        if let Some(want) = &a.equals {
            push("equals", want.clone(), actual.clone());
        }
        if let Some(label) = &a.revision {
            let sha = cx.revisions.get(label).cloned().unwrap_or_default();
            push("revision", Value::String(sha), actual);
        }
    } else if let Some(want) = &a.receipts {
        let got = receipt_log(sh)?;
        push("sequence", Value::from(want.clone()), Value::from(got));
    } else if let Some(object) = &a.plan_action {
        let action = cx.last_plan.and_then(|p| {
            p["actions"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["id"] == object.as_str()))
        });
        let field = |f: &str| action.map(|a| a[f].clone()).unwrap_or(Value::Null);
        if let Some(w) = &a.action {
            push("action", Value::String(w.clone()), field("action"));
        }
        if let Some(w) = &a.cause {
            push("cause", Value::String(w.clone()), field("cause"));
        }
    } else if let Some(text) = &a.output_contains {
        let (hay, found) = match cx.last_output {
            Some(o) => {
                let hay = format!("{}{}", o.stdout_text(), o.stderr_text());
                let found = hay.contains(text.as_str());
                (hay, found)
            }
            None => (String::new(), false),
        };
        let actual = if found {
            Value::String(text.clone())
        } else {
            Value::String(excerpt(&hay))
        };
        push("contains", Value::String(text.clone()), actual);
    }
    Ok(out)
}

/// The receipt log as labels: a reconcile receipt's `transition`, a runtime install
/// receipt's `runtime:<installState>`, anything else its file kind.
pub fn receipt_log(sh: &mut Shell<'_>) -> Result<Vec<String>> {
    let o = sh.exec(
        "receipts",
        &format!(
            "cd {STATE_DIR}/receipts 2>/dev/null || exit 0\nfor f in $(ls | grep -E '^[0-9]+-[a-z-]+\\.json$' | sort -n); do printf '%s ' \"$f\"; tr -d '\\n' < \"$f\"; echo; done"
        ),
        T,
    )?;
    let mut out = Vec::new();
    for line in o.stdout_text().lines() {
        let Some((file, json)) = line.split_once(' ') else {
            continue;
        };
        let doc: Value =
            serde_json::from_str(json).with_context(|| format!("receipt {file} is not JSON"))?;
        out.push(receipt_label(file, &doc));
    }
    Ok(out)
}

fn receipt_label(file: &str, doc: &Value) -> String {
    let kind = file
        .trim_end_matches(".json")
        .split_once('-')
        .map(|(_, k)| k)
        .unwrap_or(file);
    match kind {
        "reconcile" => doc["transition"].as_str().unwrap_or("?").to_string(),
        "runtime-install" => format!("runtime:{}", doc["installState"].as_str().unwrap_or("?")),
        other => other.to_string(),
    }
}

/// A short, file-name-safe tag of a guest path (its copy on the share is named by it).
fn path_tag(path: &str) -> String {
    core_ops::model::normalize::sha256_hex(path.as_bytes())[7..19].to_string()
}

/// The last 400 characters of a text (what a failed `contains` shows).
fn excerpt(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let start = chars.len().saturating_sub(400);
    chars[start..].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_labels() {
        let r: Value = serde_json::json!({"transition": "rolled_back"});
        assert_eq!(receipt_label("00000003-reconcile.json", &r), "rolled_back");
        let r: Value = serde_json::json!({"installState": "installed"});
        assert_eq!(
            receipt_label("00000004-runtime-install.json", &r),
            "runtime:installed"
        );
        assert_eq!(receipt_label("00000005-other.json", &r), "other");
    }
}
