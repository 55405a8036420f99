//! Readiness: the guest's `CORE_OPS_VERIFY_READY ...` record on its serial console.
//!
//! Why a per-run nonce: a console log can hold records of an earlier boot (a reused overlay,
//! a retained debug VM); only a record carrying this run's nonce is accepted, others are
//! kept as rejected evidence. The outcome is written as `readiness-evidence.json` whatever it
//! is, so a timed-out boot can be told from a rejected record without guessing.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The record prefix the guest's readiness unit prints.
pub const READY_PREFIX: &str = "CORE_OPS_VERIFY_READY";

/// How readiness ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessState {
    /// A record with this run's nonce arrived.
    Accepted,
    /// Only records without this run's nonce arrived before the timeout.
    Rejected,
    /// No record arrived before the timeout.
    TimedOut,
    /// The machine stopped before it was ready.
    MachineExited,
    /// Readiness was established without the console record (ARP fallback).
    FallbackUsed,
}

/// `readiness-evidence.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadinessEvidence {
    /// How it ended.
    pub state: ReadinessState,
    /// The nonce the guest was booted with.
    pub expected_run: String,
    /// The accepted record, verbatim.
    pub accepted_record: Option<String>,
    /// Fields of the accepted record (`run`, `boot_id`, `ip`, `system`).
    pub fields: std::collections::BTreeMap<String, String>,
    /// Records seen that did not carry the nonce (or did not parse).
    pub rejected_records: Vec<String>,
    /// Milliseconds from launch until the outcome.
    pub waited_ms: u64,
    /// The limit.
    pub timeout_ms: u64,
    /// `CORE_OPS_VERIFY_ALLOW_ARP_FALLBACK`.
    pub arp_fallback_allowed: bool,
    /// Why the fallback was or was not used.
    pub fallback_note: Option<String>,
    /// Where the console log is (bundle-relative).
    pub console_log: String,
}

/// The fields of a readiness line (`key=value` words after the prefix).
pub fn parse_record(line: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let rest = line.trim().strip_prefix(READY_PREFIX)?;
    let mut out = std::collections::BTreeMap::new();
    for word in rest.split_whitespace() {
        let (k, v) = word.split_once('=')?;
        out.insert(k.to_string(), v.to_string());
    }
    Some(out)
}

/// Poll `console` until a record with `nonce` appears, `alive()` turns false, or `timeout`.
pub fn wait(
    console: &Path,
    nonce: &str,
    timeout: Duration,
    arp_fallback_allowed: bool,
    mut alive: impl FnMut() -> bool,
) -> ReadinessEvidence {
    let started = Instant::now();
    let mut ev = ReadinessEvidence {
        state: ReadinessState::TimedOut,
        expected_run: nonce.to_string(),
        accepted_record: None,
        fields: Default::default(),
        rejected_records: Vec::new(),
        waited_ms: 0,
        timeout_ms: timeout.as_millis() as u64,
        arp_fallback_allowed,
        fallback_note: None,
        console_log: "console-log.txt".into(),
    };
    loop {
        let text = std::fs::read(console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        ev.rejected_records.clear();
        // only whole lines: the last one may still be arriving
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        for line in complete.lines() {
            let Some(at) = line.find(READY_PREFIX) else {
                continue;
            };
            let record = line[at..].trim_end_matches('\r').to_string();
            match parse_record(&record) {
                Some(f) if f.get("run").map(String::as_str) == Some(nonce) => {
                    ev.state = ReadinessState::Accepted;
                    ev.accepted_record = Some(record);
                    ev.fields = f;
                    ev.waited_ms = started.elapsed().as_millis() as u64;
                    return ev;
                }
                _ => ev.rejected_records.push(record),
            }
        }
        if !alive() {
            ev.state = ReadinessState::MachineExited;
            break;
        }
        if started.elapsed() >= timeout {
            ev.state = if ev.rejected_records.is_empty() {
                ReadinessState::TimedOut
            } else {
                ReadinessState::Rejected
            };
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ev.waited_ms = started.elapsed().as_millis() as u64;
    if arp_fallback_allowed {
        // the guest has no network interface: control runs over virtio-serial, so there is
        // no neighbour-cache entry that could stand in for the console record
        ev.fallback_note = Some(
            "not applicable: the guest has no NIC (control runs over virtio-serial), so there \
             is no ARP entry to fall back to"
                .into(),
        );
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fields_parse() {
        let f = parse_record("CORE_OPS_VERIFY_READY run=abc boot_id=1-2 ip=none system=running")
            .unwrap();
        assert_eq!(f["run"], "abc");
        assert_eq!(f["system"], "running");
        assert!(parse_record("CORE_OPS_VERIFY_READY garbage").is_none());
        assert!(parse_record("something else").is_none());
    }

    #[test]
    fn only_this_runs_record_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(
            &log,
            "boot noise\nCORE_OPS_VERIFY_READY run=old ip=none\n[  1.0] x CORE_OPS_VERIFY_READY run=new ip=none system=running\n",
        )
        .unwrap();
        let ev = wait(&log, "new", Duration::from_secs(1), false, || true);
        assert_eq!(ev.state, ReadinessState::Accepted);
        assert_eq!(ev.fields["system"], "running");
        assert_eq!(
            ev.rejected_records,
            vec!["CORE_OPS_VERIFY_READY run=old ip=none"]
        );
    }

    #[test]
    fn stale_records_alone_are_rejected_and_silence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "CORE_OPS_VERIFY_READY run=old ip=none\n").unwrap();
        let ev = wait(&log, "new", Duration::from_millis(200), true, || true);
        assert_eq!(ev.state, ReadinessState::Rejected);
        assert!(ev.fallback_note.is_some());
        std::fs::write(&log, "booting\n").unwrap();
        let ev = wait(&log, "new", Duration::from_millis(200), false, || true);
        assert_eq!(ev.state, ReadinessState::TimedOut);
        let ev = wait(&log, "new", Duration::from_secs(5), false, || false);
        assert_eq!(ev.state, ReadinessState::MachineExited);
    }
}
