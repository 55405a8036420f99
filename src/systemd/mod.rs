//! The narrow interface core-ops needs from systemd, and nothing more.
//!
//! Why a trait: the planner and the apply engine never see D-Bus types, and unit tests can run
//! against [`fake::FakeSystemd`]. The product uses [`dbus::DbusSystemd`] (zbus + the
//! `zbus_systemd` proxies) against the system bus or `CORE_OPS_SYSTEMD_ADDRESS`.

pub mod dbus;
#[cfg(test)]
pub mod fake;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Runtime state of one unit as systemd reports it.
///
/// Why: health is readiness, not "not failed" (docs/design.md section 9); these are the
/// properties the verifier needs to judge it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UnitStatus {
    /// Unit name, e.g. `web.service`.
    pub name: String,
    /// `loaded`, `not-found`, `bad-setting`, `error`, `masked`.
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, `deactivating`, `reloading`.
    pub active_state: String,
    /// Unit-type specific sub state (`running`, `exited`, `dead`, `mounted`, `waiting`...).
    pub sub_state: String,
    /// `enabled`, `disabled`, `static`, `generated`, `transient`, `masked`, `` (unknown).
    pub unit_file_state: String,
    /// `success` or the failure reason of the last run (services, mounts, ...); empty if the
    /// unit type has no Result property.
    pub result: String,
    /// Restarts by `Restart=` since the unit was last started (services only).
    pub n_restarts: Option<u32>,
    /// Hex invocation id of the current/last run, empty if never run.
    pub invocation_id: String,
    /// The last start was skipped because a `Condition*=` did not hold
    /// (`ConditionResult=no` after a condition check): systemd did what the unit asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped_by_condition: bool,
    /// Why systemd could not load the unit (`LoadError`), when `load_state` is not `loaded`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub load_error: String,
}

impl UnitStatus {
    /// Whether the unit is inactive because it finished what it was asked to do, not
    /// because it was stopped: its last start was skipped by a condition, or it is a unit
    /// that exits when done (`exits_when_done`: a oneshot without `RemainAfterExit=`) whose
    /// last run ended successfully.
    ///
    /// A oneshot that is not referenced by anything is unloaded by systemd once it finished
    /// (and loaded again blank when asked about), so `Result=success` is all that is left of
    /// a successful run; a failed one stays loaded as `failed`.
    pub fn finished_cleanly(&self, exits_when_done: bool) -> bool {
        self.active_state == "inactive"
            && (self.skipped_by_condition || (exits_when_done && self.result == "success"))
    }
}

/// What a job should do to a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// `StartUnit(name, "replace")`.
    Start,
    /// `StopUnit(name, "replace")`.
    Stop,
    /// `StopUnit(name, "ignore-requirements")`: stop this unit only. Why: a unit that left
    /// the desired state may be `RequiredBy=` a unit core-ops does not remove (a target like
    /// `multi-user.target`); a plain stop would stop that one too.
    StopAlone,
    /// `RestartUnit(name, "replace")`.
    Restart,
}

/// How a job ended, from the `result` argument of `JobRemoved` (or our own timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// `done`: the job succeeded.
    Done,
    /// `canceled`: superseded or cancelled (not a failure of the unit itself).
    Canceled,
    /// `timeout`: systemd's own job timeout.
    Timeout,
    /// `failed`: the unit failed.
    Failed,
    /// `dependency`: a dependency failed.
    Dependency,
    /// `skipped`: a condition was not met.
    Skipped,
    /// core-ops gave up waiting for `JobRemoved`.
    WaitTimedOut,
    /// systemd refused the call (no such unit, bad setting...); the message says why.
    Refused(String),
    /// Any other result string systemd sent.
    Other(String),
}

impl JobOutcome {
    /// Map the `result` string of a `JobRemoved` signal.
    pub fn from_result(result: &str) -> Self {
        match result {
            "done" => JobOutcome::Done,
            "canceled" => JobOutcome::Canceled,
            "timeout" => JobOutcome::Timeout,
            "failed" => JobOutcome::Failed,
            "dependency" => JobOutcome::Dependency,
            "skipped" => JobOutcome::Skipped,
            other => JobOutcome::Other(other.to_string()),
        }
    }

    /// True when the job reached its goal.
    pub fn is_success(&self) -> bool {
        matches!(self, JobOutcome::Done)
    }
}

/// One job to run and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The unit.
    pub unit: String,
    /// What was asked.
    pub kind: JobKind,
    /// How it ended.
    pub outcome: JobOutcome,
}

/// Calls made so far, so tests and benchmarks can prove "one reload per phase" and
/// "a no-op apply starts zero jobs".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CallCounts {
    /// `Reload()` calls.
    pub reloads: u32,
    /// Jobs enqueued (start, stop, restart).
    pub jobs: u32,
    /// `EnableUnitFiles` + `DisableUnitFiles` calls.
    pub enablement_calls: u32,
}

/// A unit this run started, and its settle window if it turns out to need one.
///
/// Why: verification waits only where a unit can still fail (DESIGN 10); the window is per
/// service (`settle:` in service.yaml, host.yaml, or the `--settle-ms` default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleRequest {
    /// The unit whose start or restart job of this run ended `done`.
    pub unit: String,
    /// How long after it became active (`ActiveEnterTimestampMonotonic`) it is watched.
    pub window: Duration,
    /// Its `Type=notify` only says that its process started, not that it is ready: a Quadlet
    /// container without `Notify=true`/`healthy` (conmon sends `READY=1` when the container
    /// starts). Watched like `Type=simple`, so a crash - or a run-to-completion payload that
    /// exits - is seen.
    pub ready_means_started: bool,
}

/// What the settle step saw of one unit.
///
/// Why: the results document says, per unit, whether core-ops waited and why not, so a slow
/// or fast verification can be explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Settled {
    /// The unit.
    pub unit: String,
    /// A window was kept: a service with a running main process and no readiness protocol
    /// (`Type=simple`, `exec`, `forking`, `idle`). Everything else is decided by its job
    /// result and the state read right after.
    pub watched: bool,
    /// The service's `Type=` as systemd reports it (read only for running services).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_type: String,
    /// ms core-ops waited for this unit after the start phase.
    pub waited_ms: u64,
    /// What ended the window before its end, from a `PropertiesChanged` signal
    /// (`ActiveState=failed`, `NRestarts=1`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// `NRestarts` when the window began (a unit started by this run restarted since, if > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_restarts: Option<u32>,
    /// `InvocationID` when the window began.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub invocation_id: String,
}

/// Whether a service of this `Type=` can still fail after its start job succeeded: it has a
/// running main process and told systemd nothing about being ready.
///
/// Why: `oneshot` is decided when its job ends, `notify`/`notify-reload`/`dbus` only become
/// active once the service says it is ready; `simple`, `exec`, `forking` and `idle` are
/// active as soon as a process runs, which may crash a moment later.
pub fn needs_settle(service_type: &str) -> bool {
    matches!(service_type, "simple" | "exec" | "forking" | "idle")
}

/// Errors talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// No bus at the address, or authentication failed.
    #[error("cannot connect to systemd at {address}: {message}")]
    Connect {
        /// The D-Bus address tried.
        address: String,
        /// Why it failed.
        message: String,
    },
    /// A method call failed.
    #[error("{method}: {message}")]
    Call {
        /// The D-Bus method.
        method: String,
        /// The error systemd (or the bus) returned.
        message: String,
    },
}

/// Exactly the verbs core-ops uses. Every method is synchronous; the D-Bus implementation
/// runs its own single-threaded runtime.
pub trait Systemd: Sync {
    /// `Reload()` (daemon-reload). Apply calls it at most once per phase.
    fn reload(&self) -> Result<(), SystemdError>;
    /// Unit properties for each name, in the order given. Unknown units come back with
    /// `load_state = "not-found"`, never as an error.
    fn unit_statuses(&self, names: &[String]) -> Result<Vec<UnitStatus>, SystemdError>;
    /// Load, active and sub state of each unit, plus `Result` of the failed ones: what the
    /// planner reads on every run, in as few calls as possible (one `ListUnitsByNames` when
    /// nothing failed). `unit_file_state`, `n_restarts` and `invocation_id` may be empty.
    fn unit_states_brief(&self, names: &[String]) -> Result<Vec<UnitStatus>, SystemdError> {
        self.unit_statuses(names)
    }
    /// One `EnableUnitFiles(names, runtime=false, force=false)` call for all names.
    fn enable(&self, names: &[String]) -> Result<(), SystemdError>;
    /// One `DisableUnitFiles(names, runtime=false)` call for all names.
    fn disable(&self, names: &[String]) -> Result<(), SystemdError>;
    /// `ResetFailed` for each unit (so a failed unit can be started again cleanly).
    fn reset_failed(&self, names: &[String]) -> Result<(), SystemdError>;
    /// Enqueue every job (mode `replace`, bounded number in flight), wait for each one's
    /// `JobRemoved` up to `timeout` per job, and return one result per job in input order.
    /// A job systemd refuses is a `Refused` result, not an error of the whole batch.
    fn run_jobs(
        &self,
        jobs: &[(JobKind, String)],
        timeout: Duration,
    ) -> Result<Vec<JobResult>, SystemdError>;
    /// Watch the units this run started through their settle windows, all at once: only
    /// running services without a readiness protocol ([`needs_settle`]) are waited for, each
    /// until `window` after it became active, or until systemd signals that it failed or
    /// restarted. Returns one report per request, in order.
    ///
    /// The default reads the state once and waits for nothing (the fake; a manager without
    /// signals).
    fn settle(&self, requests: &[SettleRequest]) -> Result<Vec<Settled>, SystemdError> {
        let names: Vec<String> = requests.iter().map(|r| r.unit.clone()).collect();
        Ok(self
            .unit_statuses(&names)?
            .into_iter()
            .map(|s| Settled {
                unit: s.name,
                n_restarts: s.n_restarts,
                invocation_id: s.invocation_id,
                ..Settled::default()
            })
            .collect())
    }
    /// Calls made through this handle so far.
    fn counts(&self) -> CallCounts;
}
