//! [`FakeSystemd`]: an in-memory [`Systemd`] for unit tests of the planner and apply engine.
//!
//! Why: those tests must run without root, a bus or a test bed, yet see the same verbs,
//! the same counts and the same shapes of answers as [`super::dbus::DbusSystemd`]. It models
//! only what core-ops relies on: unit files known or not, enabled or not, active or not, a
//! start that fails, and the order of the calls made.
//!
//! Call log format (one string per call, in order): `reload`, `status A B`, `enable A B`,
//! `disable A B`, `reset-failed A`, `start A`, `stop A`, `restart A`. Batched calls
//! (`enable`, `disable`, `status`) are one entry; jobs are one entry each, as they are one
//! D-Bus call each.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::dbus::result_interface;
use super::{CallCounts, JobKind, JobOutcome, JobResult, Systemd, SystemdError, UnitStatus};

/// One unit as the fake knows it.
#[derive(Debug, Clone, Default)]
struct FakeUnit {
    /// A unit file exists (`install_unit`); false after `remove_unit`.
    file: bool,
    /// The file has an `[Install]` section (false: `static`, enable is a no-op).
    installable: bool,
    enabled: bool,
    active_state: String,
    sub_state: String,
    result: String,
    n_restarts: u32,
    invocation_id: String,
}

#[derive(Debug, Default)]
struct State {
    units: BTreeMap<String, FakeUnit>,
    fail_on_start: BTreeSet<String>,
    calls: Vec<String>,
    counts: CallCounts,
    invocations: u64,
}

/// In-memory systemd: a test sets up unit files and failures, runs the code under test, then
/// asserts on [`FakeSystemd::calls`], [`Systemd::counts`] and [`Systemd::unit_statuses`].
///
/// Why a `Mutex` inside: `&self` methods (the trait's) must mutate, and tests may share one
/// fake across threads.
#[derive(Debug, Default)]
pub struct FakeSystemd {
    state: Mutex<State>,
}

impl FakeSystemd {
    /// An empty manager: no unit files, nothing active, no calls.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide the real failure.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make a unit file with an `[Install]` section known (disabled, inactive), as if written
    /// to `/etc/systemd/system`. Installing an existing unit keeps its runtime state.
    ///
    /// Why: most units core-ops manages are enableable.
    pub fn install_unit(&self, name: &str) {
        self.install(name, true);
    }

    /// Make a unit file without an `[Install]` section known: `static`, and `enable` leaves it
    /// alone (systemd answers "no install info", not an error).
    ///
    /// Why: the planner must not expect enablement of static units.
    pub fn install_static_unit(&self, name: &str) {
        self.install(name, false);
    }

    fn install(&self, name: &str, installable: bool) {
        let mut st = self.state();
        let u = st
            .units
            .entry(name.to_string())
            .or_insert_with(|| FakeUnit {
                active_state: "inactive".into(),
                sub_state: "dead".into(),
                ..FakeUnit::default()
            });
        u.file = true;
        u.installable = installable;
        if !installable {
            u.enabled = false;
        }
    }

    /// Forget a unit file: the unit reads `not-found` (and `disabled` is moot); a running unit
    /// stays active until stopped, as in systemd after the file is deleted.
    ///
    /// Why: prune tests remove units that are still running.
    pub fn remove_unit(&self, name: &str) {
        if let Some(u) = self.state().units.get_mut(name) {
            u.file = false;
            u.enabled = false;
        }
    }

    /// Make every later start/restart of `name` fail (`JobOutcome::Failed`, state `failed`).
    ///
    /// Why: the apply engine's failure and rollback paths need a unit that fails on demand.
    pub fn fail_on_start(&self, name: &str) {
        self.state().fail_on_start.insert(name.to_string());
    }

    /// Undo [`FakeSystemd::fail_on_start`].
    ///
    /// Why: rollback tests fail one apply and then succeed with the previous revision.
    pub fn succeed_on_start(&self, name: &str) {
        self.state().fail_on_start.remove(name);
    }

    /// Set a unit's active and sub state directly (the unit need not have a file), e.g.
    /// `("active", "running")` for a unit that was running before the test.
    ///
    /// Why: observation tests start from a host that is already in some state.
    pub fn set_state(&self, name: &str, active_state: &str, sub_state: &str) {
        let mut st = self.state();
        st.invocations += 1;
        let invocation = format!("{:032x}", st.invocations);
        let u = st.units.entry(name.to_string()).or_default();
        u.active_state = active_state.to_string();
        u.sub_state = sub_state.to_string();
        if active_state != "inactive" && u.invocation_id.is_empty() {
            u.invocation_id = invocation;
        }
    }

    /// Mark an installed unit enabled or disabled without recording a call.
    ///
    /// Why: set-up should not show up in the call log the test asserts on.
    pub fn set_enabled(&self, name: &str, enabled: bool) {
        if let Some(u) = self.state().units.get_mut(name) {
            u.enabled = enabled && u.file && u.installable;
        }
    }

    /// Every call made so far, in order (format in the module docs).
    ///
    /// Why: tests assert "reload once, before the starts" and "a no-op apply makes no job".
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// The calls that change something (everything but `status`).
    ///
    /// Why: most tests care about effects, not about how often state was read.
    pub fn mutating_calls(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| !c.starts_with("status"))
            .collect()
    }

    fn status_of(name: &str, u: Option<&FakeUnit>) -> UnitStatus {
        let Some(u) = u else {
            return UnitStatus {
                name: name.to_string(),
                load_state: "not-found".into(),
                active_state: "inactive".into(),
                sub_state: "dead".into(),
                ..UnitStatus::default()
            };
        };
        let unit_file_state = match (u.file, u.installable, u.enabled) {
            (false, _, _) => "",
            (true, false, _) => "static",
            (true, true, true) => "enabled",
            (true, true, false) => "disabled",
        };
        let result = if result_interface(name).is_some() {
            if u.result.is_empty() {
                "success".to_string()
            } else {
                u.result.clone()
            }
        } else {
            String::new()
        };
        UnitStatus {
            name: name.to_string(),
            load_state: if u.file { "loaded" } else { "not-found" }.into(),
            active_state: u.active_state.clone(),
            sub_state: u.sub_state.clone(),
            unit_file_state: unit_file_state.into(),
            result,
            n_restarts: name.ends_with(".service").then_some(u.n_restarts),
            invocation_id: u.invocation_id.clone(),
            skipped_by_condition: false,
            load_error: if u.file {
                String::new()
            } else {
                format!("Unit {name} not found.")
            },
        }
    }

    fn job(st: &mut State, kind: JobKind, name: &str) -> JobOutcome {
        let fails = st.fail_on_start.contains(name);
        st.invocations += 1;
        let invocation = format!("{:032x}", st.invocations);
        let Some(u) = st.units.get_mut(name) else {
            let what = if matches!(kind, JobKind::Stop | JobKind::StopAlone) {
                "not loaded"
            } else {
                "not found"
            };
            return JobOutcome::Refused(format!(
                "org.freedesktop.systemd1.NoSuchUnit: Unit {name} {what}."
            ));
        };
        if !u.file
            && !matches!(kind, JobKind::Stop | JobKind::StopAlone)
            && u.active_state == "inactive"
        {
            return JobOutcome::Refused(format!(
                "org.freedesktop.systemd1.NoSuchUnit: Unit {name} not found."
            ));
        }
        let already_active = u.active_state == "active";
        match kind {
            JobKind::Stop | JobKind::StopAlone => {
                u.active_state = "inactive".into();
                u.sub_state = "dead".into();
                JobOutcome::Done
            }
            JobKind::Start if already_active => JobOutcome::Done,
            JobKind::Start | JobKind::Restart => {
                u.invocation_id = invocation;
                if fails {
                    u.active_state = "failed".into();
                    u.sub_state = "failed".into();
                    u.result = "exit-code".into();
                    JobOutcome::Failed
                } else {
                    u.active_state = "active".into();
                    u.sub_state = "running".into();
                    u.result = "success".into();
                    JobOutcome::Done
                }
            }
        }
    }
}

impl Systemd for FakeSystemd {
    fn reload(&self) -> Result<(), SystemdError> {
        let mut st = self.state();
        st.counts.reloads += 1;
        st.calls.push("reload".into());
        Ok(())
    }

    fn unit_statuses(&self, names: &[String]) -> Result<Vec<UnitStatus>, SystemdError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut st = self.state();
        st.calls.push(format!("status {}", names.join(" ")));
        Ok(names
            .iter()
            .map(|n| Self::status_of(n, st.units.get(n)))
            .collect())
    }

    fn enable(&self, names: &[String]) -> Result<(), SystemdError> {
        if names.is_empty() {
            return Ok(());
        }
        let mut st = self.state();
        st.counts.enablement_calls += 1;
        st.calls.push(format!("enable {}", names.join(" ")));
        // Like systemd: one missing file fails the whole call and changes nothing.
        if let Some(missing) = names
            .iter()
            .find(|n| !st.units.get(*n).is_some_and(|u| u.file))
        {
            return Err(SystemdError::Call {
                method: "EnableUnitFiles".into(),
                message: format!(
                    "org.freedesktop.DBus.Error.FileNotFound: Unit file {missing} does not exist."
                ),
            });
        }
        for n in names {
            if let Some(u) = st.units.get_mut(n) {
                u.enabled = u.installable;
            }
        }
        Ok(())
    }

    fn disable(&self, names: &[String]) -> Result<(), SystemdError> {
        if names.is_empty() {
            return Ok(());
        }
        let mut st = self.state();
        st.counts.enablement_calls += 1;
        st.calls.push(format!("disable {}", names.join(" ")));
        for n in names {
            if let Some(u) = st.units.get_mut(n) {
                u.enabled = false;
            }
        }
        Ok(())
    }

    fn reset_failed(&self, names: &[String]) -> Result<(), SystemdError> {
        let mut st = self.state();
        for n in names {
            st.calls.push(format!("reset-failed {n}"));
            if let Some(u) = st.units.get_mut(n)
                && u.active_state == "failed"
            {
                u.active_state = "inactive".into();
                u.sub_state = "dead".into();
                u.result = "success".into();
            }
        }
        Ok(())
    }

    fn run_jobs(
        &self,
        jobs: &[(JobKind, String)],
        _timeout: Duration,
    ) -> Result<Vec<JobResult>, SystemdError> {
        let mut st = self.state();
        Ok(jobs
            .iter()
            .map(|(kind, unit)| {
                st.counts.jobs += 1;
                let verb = match kind {
                    JobKind::Start => "start",
                    JobKind::Stop | JobKind::StopAlone => "stop",
                    JobKind::Restart => "restart",
                };
                st.calls.push(format!("{verb} {unit}"));
                JobResult {
                    unit: unit.clone(),
                    kind: *kind,
                    outcome: Self::job(&mut st, *kind, unit),
                }
            })
            .collect())
    }

    fn counts(&self) -> CallCounts {
        self.state().counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn lifecycle_of_an_installed_unit() {
        let sd = FakeSystemd::new();
        sd.install_unit("a.service");
        let a = names(&["a.service"]);

        let s = &sd.unit_statuses(&a).unwrap()[0];
        assert_eq!(
            (s.load_state.as_str(), s.active_state.as_str()),
            ("loaded", "inactive")
        );
        assert_eq!(s.unit_file_state, "disabled");
        assert_eq!(s.invocation_id, "");

        sd.reload().unwrap();
        sd.enable(&a).unwrap();
        let r = sd
            .run_jobs(&[(JobKind::Start, "a.service".into())], T)
            .unwrap();
        assert_eq!(r[0].outcome, JobOutcome::Done);
        let s = sd.unit_statuses(&a).unwrap().remove(0);
        assert_eq!(s.active_state, "active");
        assert_eq!(s.unit_file_state, "enabled");
        assert_eq!(s.result, "success");
        assert_eq!(s.n_restarts, Some(0));
        assert_eq!(s.invocation_id.len(), 32);

        // start of an active unit: no new run; restart: a new one
        sd.run_jobs(&[(JobKind::Start, "a.service".into())], T)
            .unwrap();
        assert_eq!(
            sd.unit_statuses(&a).unwrap()[0].invocation_id,
            s.invocation_id
        );
        sd.run_jobs(&[(JobKind::Restart, "a.service".into())], T)
            .unwrap();
        assert_ne!(
            sd.unit_statuses(&a).unwrap()[0].invocation_id,
            s.invocation_id
        );

        sd.run_jobs(&[(JobKind::Stop, "a.service".into())], T)
            .unwrap();
        sd.disable(&a).unwrap();
        let s = sd.unit_statuses(&a).unwrap().remove(0);
        assert_eq!(
            (s.active_state.as_str(), s.sub_state.as_str()),
            ("inactive", "dead")
        );
        assert_eq!(s.unit_file_state, "disabled");

        assert_eq!(
            sd.mutating_calls(),
            names(&[
                "reload",
                "enable a.service",
                "start a.service",
                "start a.service",
                "restart a.service",
                "stop a.service",
                "disable a.service",
            ])
        );
        assert_eq!(
            sd.counts(),
            CallCounts {
                reloads: 1,
                jobs: 4,
                enablement_calls: 2
            }
        );
    }

    #[test]
    fn failures_refusals_and_results_in_input_order() {
        let sd = FakeSystemd::new();
        sd.install_unit("ok.service");
        sd.install_unit("bad.service");
        sd.fail_on_start("bad.service");
        let jobs = vec![
            (JobKind::Start, "bad.service".to_string()),
            (JobKind::Start, "missing.service".to_string()),
            (JobKind::Start, "ok.service".to_string()),
        ];
        let r = sd.run_jobs(&jobs, T).unwrap();
        let units: Vec<&str> = r.iter().map(|j| j.unit.as_str()).collect();
        assert_eq!(units, ["bad.service", "missing.service", "ok.service"]);
        assert_eq!(r[0].outcome, JobOutcome::Failed);
        assert!(
            matches!(&r[1].outcome, JobOutcome::Refused(m) if m.contains("not found")),
            "{:?}",
            r[1]
        );
        assert_eq!(r[2].outcome, JobOutcome::Done);

        let s = sd
            .unit_statuses(&names(&["bad.service", "missing.service"]))
            .unwrap();
        assert_eq!(
            (s[0].active_state.as_str(), s[0].result.as_str()),
            ("failed", "exit-code")
        );
        assert_eq!(s[1].load_state, "not-found");
        assert_eq!(s[1].n_restarts, None);

        sd.reset_failed(&names(&["bad.service"])).unwrap();
        assert_eq!(
            sd.unit_statuses(&names(&["bad.service"])).unwrap()[0].active_state,
            "inactive"
        );
        sd.succeed_on_start("bad.service");
        let r = sd
            .run_jobs(&[(JobKind::Start, "bad.service".into())], T)
            .unwrap();
        assert_eq!(r[0].outcome, JobOutcome::Done);
    }

    #[test]
    fn enablement_is_one_call_and_all_or_nothing() {
        let sd = FakeSystemd::new();
        sd.install_unit("a.service");
        sd.install_static_unit("s.service");
        sd.enable(&[]).unwrap();
        sd.disable(&[]).unwrap();
        assert_eq!(sd.counts(), CallCounts::default());
        assert!(sd.calls().is_empty());

        let err = sd
            .enable(&names(&["a.service", "nope.service"]))
            .unwrap_err();
        assert!(err.to_string().contains("nope.service"), "{err}");
        assert_eq!(
            sd.unit_statuses(&names(&["a.service"])).unwrap()[0].unit_file_state,
            "disabled"
        );

        sd.enable(&names(&["a.service", "s.service"])).unwrap();
        let s = sd
            .unit_statuses(&names(&["a.service", "s.service"]))
            .unwrap();
        assert_eq!(s[0].unit_file_state, "enabled");
        assert_eq!(s[1].unit_file_state, "static");
        assert_eq!(sd.counts().enablement_calls, 2);
    }

    #[test]
    fn removed_running_unit_is_not_found_but_still_active() {
        let sd = FakeSystemd::new();
        sd.install_unit("t.timer");
        sd.run_jobs(&[(JobKind::Start, "t.timer".into())], T)
            .unwrap();
        sd.remove_unit("t.timer");
        let s = sd.unit_statuses(&names(&["t.timer"])).unwrap().remove(0);
        assert_eq!(
            (s.load_state.as_str(), s.active_state.as_str()),
            ("not-found", "active")
        );
        let r = sd
            .run_jobs(&[(JobKind::Stop, "t.timer".into())], T)
            .unwrap();
        assert_eq!(r[0].outcome, JobOutcome::Done);
    }
}
