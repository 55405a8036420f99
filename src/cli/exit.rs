//! Exit codes: every command returns one [`Outcome`] (or an [`Error`]), and [`exit_status`]
//! is the one table that turns either into the process's exit code.
//!
//! Why one table: exit codes are part of the operator contract (README.md, "Exit codes"); a
//! code decided here cannot drift between commands, and adding an error variant or an outcome
//! does not compile until it has a row.

use crate::error::Error;
use crate::reconcile::RunOutcome;

/// Exit codes (documented in README.md, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: success; for `plan --detailed-exitcode` and `agent`: nothing to change.
    Ok = 0,
    /// 1: error (bad input, unreachable repository, systemd error...). Nothing was changed
    /// unless the message says so.
    Error = 1,
    /// 2: `plan --detailed-exitcode`: changes present; `agent`: changed and converged.
    Changes = 2,
    /// 3: `apply`/`agent`: the host did not converge (failed, partially applied, rolled
    /// back); `last_applied` was not advanced. Also: the host was changed and the run could
    /// not be recorded.
    NotConverged = 3,
    /// 4: `apply`/`agent`: the desired revision is quarantined (non_converging or
    /// oscillating); nothing was done. A new desired revision or `core-ops resume` lifts it.
    Quarantined = 4,
    /// 5: fetch failed: a remote desired-state repository could not be fetched
    /// ([`Error::Fetch`]); nothing was changed.
    FetchFailed = 5,
    /// 75 (EX_TEMPFAIL): another core-ops run holds the lock; try again later.
    Locked = 75,
}

/// How a command that did not fail ended: what the exit code is decided from.
///
/// Why a type: each command returns what happened, not a number; [`exit_status`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command did what it was asked (init, status, explain, resume, ...).
    Done,
    /// `plan`: whether it has blocked actions, whether it changes anything, and whether
    /// `--detailed-exitcode` asks for the latter in the exit code.
    Planned {
        /// A blocked action: the plan cannot be applied as it stands.
        blocked: bool,
        /// Something would change.
        changes: bool,
        /// `--detailed-exitcode`.
        detailed_exitcode: bool,
    },
    /// `apply`: how the run ended.
    Applied(RunOutcome),
    /// `agent`: how the run ended (a converged change is reported, unlike `apply`).
    AgentRan(RunOutcome),
    /// `evidence verify`, `receipts verify`: whether what was checked holds.
    Verified {
        /// Every check passed.
        ok: bool,
    },
    /// `evidence publish-request`: whether a request was written (policy may disable it).
    PublicationRequest {
        /// The request was written.
        written: bool,
    },
}

/// The exit code of a command's result: the one table.
pub fn exit_status(result: &Result<Outcome, Error>) -> ExitStatus {
    use ExitStatus as X;
    use RunOutcome as R;
    match result {
        Ok(Outcome::Done) => X::Ok,
        // a blocked plan cannot be applied as it stands: that is an error, not "changes"
        Ok(Outcome::Planned { blocked: true, .. }) => X::Error,
        Ok(Outcome::Planned {
            changes: true,
            detailed_exitcode: true,
            ..
        }) => X::Changes,
        Ok(Outcome::Planned { .. }) => X::Ok,
        Ok(Outcome::Applied(R::PlanOnly | R::Converged | R::NoChanges)) => X::Ok,
        Ok(Outcome::AgentRan(R::PlanOnly | R::NoChanges)) => X::Ok,
        Ok(Outcome::AgentRan(R::Converged)) => X::Changes,
        Ok(Outcome::Applied(R::Quarantined) | Outcome::AgentRan(R::Quarantined)) => X::Quarantined,
        Ok(
            Outcome::Applied(R::NotConverged | R::RolledBack)
            | Outcome::AgentRan(R::NotConverged | R::RolledBack),
        ) => X::NotConverged,
        Ok(Outcome::Verified { ok: true } | Outcome::PublicationRequest { written: true }) => X::Ok,
        Ok(Outcome::Verified { ok: false } | Outcome::PublicationRequest { written: false }) => {
            X::Error
        }
        Err(e) => exit_for(e),
    }
}

/// The exit code of an error (the error half of [`exit_status`]).
pub fn exit_for(err: &Error) -> ExitStatus {
    match err {
        Error::Locked(_) => ExitStatus::Locked,
        // 1 means "nothing changed"; this run did change the host
        Error::HostChanged(_) => ExitStatus::NotConverged,
        Error::Fetch(_) => ExitStatus::FetchFailed,
        Error::Input(_)
        | Error::Source(_)
        | Error::Config(_)
        | Error::StalePlan(_)
        | Error::BlockedPlan(_)
        | Error::Trust(_)
        | Error::ReceiptChain(_)
        | Error::Systemd(_)
        | Error::Io { .. } => ExitStatus::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_documented_codes() {
        use ExitStatus as X;
        use RunOutcome as R;
        let plan = |blocked, changes, detailed_exitcode| Outcome::Planned {
            blocked,
            changes,
            detailed_exitcode,
        };
        let cases: Vec<(Result<Outcome, Error>, ExitStatus)> = vec![
            (Ok(Outcome::Done), X::Ok),
            (Ok(plan(false, false, true)), X::Ok),
            (Ok(plan(false, true, false)), X::Ok),
            (Ok(plan(false, true, true)), X::Changes),
            (Ok(plan(true, true, true)), X::Error),
            (Ok(plan(true, false, false)), X::Error),
            (Ok(Outcome::Applied(R::Converged)), X::Ok),
            (Ok(Outcome::Applied(R::NoChanges)), X::Ok),
            (Ok(Outcome::Applied(R::PlanOnly)), X::Ok),
            (Ok(Outcome::Applied(R::NotConverged)), X::NotConverged),
            (Ok(Outcome::Applied(R::RolledBack)), X::NotConverged),
            (Ok(Outcome::Applied(R::Quarantined)), X::Quarantined),
            (Ok(Outcome::AgentRan(R::NoChanges)), X::Ok),
            (Ok(Outcome::AgentRan(R::Converged)), X::Changes),
            (Ok(Outcome::AgentRan(R::RolledBack)), X::NotConverged),
            (Ok(Outcome::AgentRan(R::Quarantined)), X::Quarantined),
            (Ok(Outcome::Verified { ok: false }), X::Error),
            (Ok(Outcome::PublicationRequest { written: false }), X::Error),
            (Ok(Outcome::PublicationRequest { written: true }), X::Ok),
            (Err(Error::Locked("held".into())), X::Locked),
            (Err(Error::HostChanged("x".into())), X::NotConverged),
            (Err(Error::BlockedPlan("x".into())), X::Error),
            (Err(Error::StalePlan("x".into())), X::Error),
            (Err(Error::Trust("x".into())), X::Error),
            (Err(Error::Fetch("x".into())), X::FetchFailed),
        ];
        for (result, want) in cases {
            assert_eq!(exit_status(&result), want, "{result:?}");
        }
        assert_eq!(
            [
                X::Ok,
                X::Error,
                X::Changes,
                X::NotConverged,
                X::Quarantined,
                X::FetchFailed,
                X::Locked
            ]
            .map(|x| x as u8),
            [0, 1, 2, 3, 4, 5, 75]
        );
    }
}
