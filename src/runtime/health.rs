//! Restart a runtime's units over D-Bus and judge their health, with the same rule as
//! `verify`: a unit is healthy when it is loaded and active (not `auto-restart`), or a oneshot
//! without `RemainAfterExit=` that succeeded, and it stays so (same `InvocationID`, same
//! `NRestarts`) through the settle window.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::systemd::{JobKind, JobResult, Systemd, UnitStatus};

/// The outcome of a health check, kept in the evidence bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// All units healthy.
    pub healthy: bool,
    /// Restart jobs and how they ended.
    pub jobs: Vec<JobResult>,
    /// Unit states as last read.
    pub units: Vec<UnitStatus>,
    /// What is wrong (empty when healthy).
    pub problems: Vec<String>,
    /// Time spent waiting for health.
    pub waited_ms: u64,
}

/// `RestartUnit` every unit (one batch, each job waited for through `JobRemoved`).
pub fn restart(
    systemd: &dyn Systemd,
    units: &[String],
    job_timeout: Duration,
) -> Result<Vec<JobResult>> {
    if units.is_empty() {
        return Ok(Vec::new());
    }
    let jobs: Vec<(JobKind, String)> = units
        .iter()
        .map(|u| (JobKind::Restart, u.clone()))
        .collect();
    Ok(systemd.run_jobs(&jobs, job_timeout)?)
}

enum Judgement {
    Healthy,
    Pending(String),
    Dead(String),
}

fn judge(st: &UnitStatus, oneshot: bool) -> Judgement {
    if st.load_state != "loaded" {
        return Judgement::Dead(format!(
            "{} is not loaded (LoadState={})",
            st.name, st.load_state
        ));
    }
    let result = if st.result.is_empty() || st.result == "success" {
        String::new()
    } else {
        format!(", Result={}", st.result)
    };
    let what = format!(
        "{} is {}/{}{result}",
        st.name, st.active_state, st.sub_state
    );
    match st.active_state.as_str() {
        "active" if st.sub_state != "auto-restart" => Judgement::Healthy,
        "inactive" if oneshot && st.result == "success" => Judgement::Healthy,
        "failed" | "inactive" => Judgement::Dead(what),
        _ => Judgement::Pending(what),
    }
}

/// Wait until every unit is healthy and stays so through `settle`, one is dead, or
/// `timeout` passes. `jobs` are the restart jobs' results (a failed job is unhealthy at once).
pub fn check(
    systemd: &dyn Systemd,
    units: &[String],
    oneshot: &BTreeSet<String>,
    jobs: Vec<JobResult>,
    settle: Duration,
    timeout: Duration,
) -> Result<HealthReport> {
    let t0 = Instant::now();
    let mut report = HealthReport {
        healthy: false,
        jobs,
        units: Vec::new(),
        problems: Vec::new(),
        waited_ms: 0,
    };
    if units.is_empty() {
        report.healthy = true;
        return Ok(report);
    }
    for j in &report.jobs {
        if !j.outcome.is_success() {
            report
                .problems
                .push(format!("restart of {} ended: {:?}", j.unit, j.outcome));
        }
    }
    let deadline = t0 + timeout;
    loop {
        let first = systemd.unit_statuses(units)?;
        let mut dead = Vec::new();
        let mut pending = Vec::new();
        for st in &first {
            match judge(st, oneshot.contains(&st.name)) {
                Judgement::Healthy => {}
                Judgement::Pending(w) => pending.push(w),
                Judgement::Dead(w) => dead.push(w),
            }
        }
        report.units = first.clone();
        if !dead.is_empty() || !report.problems.is_empty() {
            report.problems.extend(dead);
            break;
        }
        if pending.is_empty() {
            if settle.is_zero() {
                report.healthy = true;
                break;
            }
            std::thread::sleep(settle);
            let second = systemd.unit_statuses(units)?;
            let mut unstable = Vec::new();
            for (a, b) in first.iter().zip(&second) {
                let restarted = a.n_restarts != b.n_restarts || a.invocation_id != b.invocation_id;
                match judge(b, oneshot.contains(&b.name)) {
                    Judgement::Healthy if restarted && b.active_state == "active" => {
                        unstable.push(format!(
                            "{} restarted during the {} ms settle window (NRestarts {} -> {})",
                            b.name,
                            settle.as_millis(),
                            a.n_restarts.unwrap_or(0),
                            b.n_restarts.unwrap_or(0)
                        ))
                    }
                    Judgement::Healthy => {}
                    Judgement::Pending(w) | Judgement::Dead(w) => unstable.push(w),
                }
            }
            report.units = second;
            if unstable.is_empty() {
                report.healthy = true;
                break;
            }
            if Instant::now() >= deadline {
                report.problems.extend(unstable);
                break;
            }
            continue;
        }
        if Instant::now() >= deadline {
            report.problems.push(format!(
                "not healthy within {} ms: {}",
                timeout.as_millis(),
                pending.join("; ")
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    report.waited_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(name: &str, active: &str, sub: &str, result: &str) -> UnitStatus {
        UnitStatus {
            name: name.into(),
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: sub.into(),
            result: result.into(),
            ..Default::default()
        }
    }

    #[test]
    fn judgement_follows_verify() {
        assert!(matches!(
            judge(&st("a", "active", "running", "success"), false),
            Judgement::Healthy
        ));
        assert!(matches!(
            judge(&st("a", "activating", "auto-restart", ""), false),
            Judgement::Pending(_)
        ));
        assert!(matches!(
            judge(&st("a", "active", "auto-restart", ""), false),
            Judgement::Pending(_)
        ));
        assert!(matches!(
            judge(&st("a", "failed", "failed", "exit-code"), false),
            Judgement::Dead(_)
        ));
        assert!(matches!(
            judge(&st("a", "inactive", "dead", "success"), true),
            Judgement::Healthy
        ));
        assert!(matches!(
            judge(&st("a", "inactive", "dead", "success"), false),
            Judgement::Dead(_)
        ));
        let mut nf = st("a", "inactive", "dead", "");
        nf.load_state = "not-found".into();
        assert!(matches!(judge(&nf, false), Judgement::Dead(_)));
    }
}
