//! Prometheus text-format metrics of the last run, written atomically to a node-exporter
//! textfile-collector file (default `/var/lib/prometheus/node-exporter/core-ops.prom`).
//!
//! Why a file: fleets already scrape node-exporter; a textfile needs no listener, no port
//! and no credentials on the host, and an atomic rename means a scrape never sees half a file.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::fsutil;
use crate::plan::Plan;

/// Debian's node-exporter textfile directory.
pub const DEFAULT_METRICS_FILE: &str = "/var/lib/prometheus/node-exporter/core-ops.prom";

/// Every outcome a run can end with (one-hot gauge).
pub const OUTCOMES: &[&str] = &[
    "no_changes",
    "converged",
    "not_converged",
    "rolled_back",
    "quarantined",
    "plan_only",
    "fetch_failed",
    "error",
];

/// What the metrics describe.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    /// Unix seconds at the end of the run.
    pub finished_unix: f64,
    /// Wall time of the run.
    pub duration_seconds: f64,
    /// One of [`OUTCOMES`].
    pub outcome: String,
    /// Actions by (action, cause), from the plan.
    pub actions: BTreeMap<(String, String), usize>,
    /// Drift findings.
    pub drift: usize,
    /// `last_applied` revision and ref.
    pub last_applied: Option<(String, String)>,
    /// Whether a desired revision is quarantined.
    pub quarantined: bool,
    /// Installed runtimes (name -> current version).
    pub runtimes: BTreeMap<String, String>,
    /// Whether the receipt chain verified (`None`: not known, no gauge).
    pub receipt_chain_ok: Option<bool>,
    /// Fetches of the remote repository (`None`: the repository was never fetched, e.g. a
    /// local path: no fetch metrics).
    pub fetch: Option<crate::source::fetch_state::FetchState>,
}

impl RunMetrics {
    /// Fill the plan-derived parts.
    pub fn with_plan(mut self, plan: &Plan) -> Self {
        for a in &plan.actions {
            let cause = serde_json::to_value(a.cause)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            *self
                .actions
                .entry((a.action.as_str().to_string(), cause))
                .or_default() += 1;
        }
        self.drift = plan.findings.iter().filter(|f| f.kind == "drift").count();
        self
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition of the metrics: the run, the plan, the state, the remote fetch.
pub fn render(m: &RunMetrics) -> String {
    let mut o = String::new();
    run_metrics(&mut o, m);
    plan_metrics(&mut o, m);
    state_metrics(&mut o, m);
    if let Some(f) = &m.fetch {
        fetch_metrics(&mut o, f);
    }
    o
}

/// One metric family: `# HELP`, `# TYPE` and its rows (`labels`, value).
fn family(o: &mut String, kind: &str, name: &str, help: &str, rows: &[(String, String)]) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    for (labels, value) in rows {
        let _ = writeln!(o, "{name}{labels} {value}");
    }
}

fn gauge(o: &mut String, name: &str, help: &str, rows: &[(String, String)]) {
    family(o, "gauge", name, help, rows);
}

/// One unlabelled value.
fn value(v: impl std::fmt::Display) -> [(String, String); 1] {
    [(String::new(), v.to_string())]
}

fn run_metrics(o: &mut String, m: &RunMetrics) {
    gauge(
        o,
        "core_ops_last_run_timestamp_seconds",
        "Unix time the last core-ops run finished.",
        &value(format!("{:.3}", m.finished_unix)),
    );
    gauge(
        o,
        "core_ops_last_run_duration_seconds",
        "Wall time of the last core-ops run.",
        &value(format!("{:.3}", m.duration_seconds)),
    );
    let outcomes: Vec<(String, String)> = OUTCOMES
        .iter()
        .map(|out| {
            let on = if *out == m.outcome { "1" } else { "0" };
            (format!("{{outcome=\"{out}\"}}"), on.to_string())
        })
        .collect();
    gauge(
        o,
        "core_ops_last_run_outcome",
        "Outcome of the last run (1 for the outcome it had).",
        &outcomes,
    );
}

fn plan_metrics(o: &mut String, m: &RunMetrics) {
    let actions: Vec<(String, String)> = m
        .actions
        .iter()
        .map(|((a, c), n)| {
            (
                format!("{{action=\"{}\",cause=\"{}\"}}", label(a), label(c)),
                n.to_string(),
            )
        })
        .collect();
    gauge(
        o,
        "core_ops_plan_actions",
        "Actions of the last plan by action and cause.",
        &actions,
    );
    gauge(
        o,
        "core_ops_drift_objects",
        "Objects found drifted in the last plan.",
        &value(m.drift),
    );
}

fn state_metrics(o: &mut String, m: &RunMetrics) {
    if let Some((rev, r)) = &m.last_applied {
        gauge(
            o,
            "core_ops_last_applied_info",
            "The last revision that verifiably converged.",
            &[(
                format!(
                    "{{revision=\"{}\",requested_ref=\"{}\"}}",
                    label(rev),
                    label(r)
                ),
                "1".into(),
            )],
        );
    }
    gauge(
        o,
        "core_ops_quarantined",
        "1 when a desired revision is quarantined (non_converging or oscillating).",
        &value(u8::from(m.quarantined)),
    );
    if let Some(ok) = m.receipt_chain_ok {
        gauge(
            o,
            "core_ops_receipt_chain_ok",
            "1 when the receipt chain verified at the last run; 0 when it is broken, truncated or forked (runs are refused; see core-ops receipts verify).",
            &value(u8::from(ok)),
        );
    }
    if !m.runtimes.is_empty() {
        let rows: Vec<(String, String)> = m
            .runtimes
            .iter()
            .map(|(n, v)| {
                (
                    format!("{{runtime=\"{}\",version=\"{}\"}}", label(n), label(v)),
                    "1".into(),
                )
            })
            .collect();
        gauge(
            o,
            "core_ops_runtime_info",
            "Current version of each installed runtime.",
            &rows,
        );
    }
}

fn fetch_metrics(o: &mut String, f: &crate::source::fetch_state::FetchState) {
    family(
        o,
        "counter",
        "core_ops_fetch_failures_total",
        "Failed fetches of the remote repository (the host stayed on its last applied revision).",
        &value(f.failures_total),
    );
    gauge(
        o,
        "core_ops_fetch_consecutive_failures",
        "Failed fetches since the last successful one.",
        &value(f.consecutive_failures),
    );
    if let Some(t) = f.last_success_unix {
        gauge(
            o,
            "core_ops_last_successful_fetch_timestamp_seconds",
            "Unix time of the last successful fetch of the remote repository.",
            &value(t),
        );
    }
}

/// Where to write: `None` when metrics are off (empty setting). The default location is only
/// used when its directory exists (node-exporter installed); a configured path gets its
/// directory created.
pub fn target(setting: Option<&str>) -> Option<PathBuf> {
    match setting {
        Some("") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => {
            let p = Path::new(DEFAULT_METRICS_FILE);
            p.parent()
                .is_some_and(Path::is_dir)
                .then(|| p.to_path_buf())
        }
    }
}

/// Write the metrics atomically (0644, readable by node-exporter).
pub fn write(path: &Path, m: &RunMetrics) -> Result<()> {
    fsutil::write_atomic(path, render(m).as_bytes(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_hot_outcome_actions_and_info() {
        let mut m = RunMetrics {
            finished_unix: 1.5,
            duration_seconds: 0.25,
            outcome: "converged".into(),
            drift: 2,
            last_applied: Some(("abc".into(), "v\"1".into())),
            ..Default::default()
        };
        m.actions
            .insert(("create".into(), "desired_change".into()), 3);
        let t = render(&m);
        assert!(t.contains("core_ops_last_run_outcome{outcome=\"converged\"} 1\n"));
        assert!(t.contains("core_ops_last_run_outcome{outcome=\"error\"} 0\n"));
        assert!(
            t.contains("core_ops_plan_actions{action=\"create\",cause=\"desired_change\"} 3\n")
        );
        assert!(
            t.contains("core_ops_last_applied_info{revision=\"abc\",requested_ref=\"v\\\"1\"} 1\n")
        );
        assert!(t.contains("core_ops_drift_objects 2\n"));
        assert!(t.ends_with("core_ops_quarantined 0\n"));
        m.runtimes.insert("hello".into(), "1.2.0".into());
        assert!(
            render(&m).ends_with("core_ops_runtime_info{runtime=\"hello\",version=\"1.2.0\"} 1\n")
        );
    }

    #[test]
    fn fetch_counters_only_for_fetched_repositories() {
        let mut m = RunMetrics::default();
        assert!(!render(&m).contains("core_ops_fetch"));
        m.fetch = Some(crate::source::fetch_state::FetchState {
            failures_total: 3,
            consecutive_failures: 1,
            last_success_unix: Some(1700000000),
            ..Default::default()
        });
        let t = render(&m);
        assert!(t.contains(
            "# TYPE core_ops_fetch_failures_total counter\ncore_ops_fetch_failures_total 3\n"
        ));
        assert!(t.contains("core_ops_fetch_consecutive_failures 1\n"));
        assert!(t.ends_with("core_ops_last_successful_fetch_timestamp_seconds 1700000000\n"));
    }

    #[test]
    fn empty_setting_turns_metrics_off() {
        assert_eq!(target(Some("")), None);
        assert_eq!(target(Some("/x/y.prom")), Some(PathBuf::from("/x/y.prom")));
    }
}
