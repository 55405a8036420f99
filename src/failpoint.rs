//! Named crash points for the crash-safety tests: a test (or the VM harness) stops core-ops at
//! an exact point, kills it with SIGKILL and checks that the next run recovers.
//!
//! Why a cargo feature: the points are the `fail` crate's (as zincati uses them), compiled in
//! only with `--features failpoints`, which `scripts/test.sh` builds and the `.deb` never does;
//! the shipped binary carries no hook an environment variable can reach. Configured through
//! `FAILPOINTS` (the `fail` crate's syntax), e.g. `FAILPOINTS='apply::phase=return(write)'`.
//! A point only ever delays: it cannot change what is written.

/// The apply phase about to begin (`stop`, `disable`, `prepare`, `write`, `enable`, `reload`,
/// `runtimes`, `start`, `verify`): pauses there when configured with that phase as argument.
pub const APPLY_PHASE: &str = "apply::phase";
/// After the write phase's Nth file (argument `N`).
pub const APPLY_AFTER_WRITE: &str = "apply::after-write";
/// Right after a runtime transaction persisted a state (argument: the state's name).
pub const RUNTIME_STATE: &str = "runtime::state";

/// Pause (until killed) at point `name` when it is configured with argument `at` (or with no
/// argument). Says so on stderr first, so a test knows when to kill.
#[cfg(feature = "failpoints")]
pub fn pause_at(name: &str, at: &str) {
    fail::fail_point!(name, |arg: Option<String>| {
        if arg.as_deref().is_none_or(|a| a == at) {
            eprintln!("core-ops: failpoint: paused at {name}({at})");
            std::thread::sleep(std::time::Duration::from_secs(600));
        }
    });
}

/// Without the `failpoints` feature there are no points.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn pause_at(_name: &str, _at: &str) {}

/// Read `FAILPOINTS` once at start-up (the binary's `main`); the returned guard keeps the
/// configuration for the process's life.
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
