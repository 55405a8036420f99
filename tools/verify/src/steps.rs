//! Steps: semantic core-ops actions and disturbances, turned into shell on the machine.
//!
//! Why semantic actions: scenarios say `apply: v2`, not a command line, so the way core-ops is
//! invoked (environment, `--json`, state paths) is decided once, here, exactly as an operator
//! or the shipped units would invoke it.

use std::time::Duration;

use super::machine::quote;
use super::scenario::{PolicyProfile, Step};

/// What the guest runs for a step.
pub struct StepCommand {
    /// The shell snippet.
    pub script: String,
    /// Longest it may take.
    pub timeout: Duration,
    /// Whether its stdout is a core-ops `--json` document.
    pub json: bool,
}

/// Where the fill file of `fill_disk` goes.
pub const FILL_FILE: &str = "/var/core-ops-verify-fill";

/// The environment every core-ops step runs with.
pub fn core_ops_env(share: &str, host: &str, policy: &PolicyProfile) -> String {
    format!(
        "export CORE_OPS_REPO={share}/repo CORE_OPS_HOST={h} CORE_OPS_SETTLE_MS={} CORE_OPS_JOB_TIMEOUT={} CORE_OPS_LOG=info\n",
        policy.settle_ms,
        policy.job_timeout_s,
        h = quote(host)
    )
}

/// The timeout of a step: its own `timeout:`, else the policy's.
pub fn timeout(step: &Step, policy: &PolicyProfile) -> Duration {
    Duration::from_secs(step.timeout.unwrap_or(policy.step_timeout_s))
}

/// The transient unit `hold_busy: PATH` runs as (one per path, so `release_busy` finds it).
pub fn busy_unit(path: &str) -> String {
    format!(
        "core-ops-verify-busy-{}.service",
        &core_ops::model::normalize::sha256_hex(path.as_bytes())[7..19]
    )
}

/// The shell for one step (not for `assert`, `git` and `remember_unit`, which the runner
/// does itself).
pub fn command(step: &Step, share: &str, host: &str, policy: &PolicyProfile) -> StepCommand {
    let host = step.host.as_deref().unwrap_or(host);
    let env = core_ops_env(share, host, policy);
    let t = timeout(step, policy);
    let core = |args: String| StepCommand {
        script: format!("{env}exec core-ops {args} --json"),
        timeout: t,
        json: true,
    };
    let shell = |script: String| StepCommand {
        script,
        timeout: t,
        json: false,
    };
    let (name, arg) = step.action();
    match name {
        "apply" => core(format!("apply --rev {}", quote(&arg))),
        "plan" => core(format!(
            "plan --rev {}{}",
            quote(&arg),
            if step.detailed_exitcode == Some(true) {
                " --detailed-exitcode"
            } else {
                ""
            }
        )),
        "explain" => core(format!("explain {}", quote(&arg))),
        "rollback_to" => core(format!("apply --rollback-to {}", quote(&arg))),
        "rollback_plan_only" => core(format!(
            "apply --rollback-to {} --rollback-plan-only",
            quote(&arg)
        )),
        "agent_tick" => core(format!("agent --rev {}", quote(&arg))),
        "status" => core("status".into()),
        "resume" => core("resume".into()),
        "timer_run" => shell(timer_run(share, host, policy, &arg)),
        "concurrent" => {
            let (runs, rev) = step
                .concurrent
                .as_ref()
                .map_or((0, String::new()), |c| (c.runs, c.apply.clone()));
            shell(format!("{env}{}", concurrent(runs, &rev)))
        }
        "edit_file" => {
            let (path, content) = step
                .edit_file
                .as_ref()
                .map_or((String::new(), String::new()), |e| {
                    (e.path.clone(), e.content.clone())
                });
            shell(format!(
                "mkdir -p \"$(dirname {p})\"\nprintf '%s' {c} > {p}",
                p = quote(&path),
                c = quote(&content)
            ))
        }
        "remove_file" => shell(format!("rm -v -- {}", quote(&arg))),
        "stop_unit" => shell(format!("systemctl stop {}", quote(&arg))),
        "kill_unit" => shell(format!(
            "systemctl kill --signal=SIGKILL {u}\nsleep 1\nsystemctl show {u} -p ActiveState -p SubState -p Result",
            u = quote(&arg)
        )),
        "kill_apply" => {
            let script = match step.kill_apply.as_ref() {
                Some(k) => match k.failpoint() {
                    Some((setting, point)) => kill_apply_at(k.rev(), &setting, &point, t),
                    None => kill_apply(k.rev(), super::assertions::STATE_DIR),
                },
                None => "exit 1".into(),
            };
            shell(format!("{env}{script}"))
        }
        "fill_disk" => shell(format!(
            "avail=$(df --output=avail -B1M / | tail -1 | tr -d ' ')\nsize=$((avail - {arg}))\nif [ \"$size\" -gt 0 ]; then fallocate -l \"${{size}}M\" {FILL_FILE}; fi\ndf -h /",
            arg = step.fill_disk.unwrap_or(0)
        )),
        "free_disk" => shell(format!("rm -f {FILL_FILE}\ndf -h /")),
        "set_clock" => shell(format!(
            "timedatectl set-ntp false 2>/dev/null || true\ndate -s {}",
            quote(&arg)
        )),
        "chmod" => {
            let (path, mode) = step
                .chmod
                .as_ref()
                .map_or((String::new(), String::new()), |c| {
                    (c.path.clone(), c.mode.clone())
                });
            shell(format!("chmod {} -- {}", quote(&mode), quote(&path)))
        }
        "chown" => {
            let (path, owner) = step
                .chown
                .as_ref()
                .map_or((String::new(), String::new()), |c| {
                    (c.path.clone(), c.owner.clone())
                });
            shell(format!("chown {} -- {}", quote(&owner), quote(&path)))
        }
        "make_dir" => shell(format!("mkdir -p -m 0755 -- {}", quote(&arg))),
        // the process is not a dependency of the mount (no WorkingDirectory=, which would
        // add RequiresMountsFor= and let systemd stop it first): only its cwd holds the mount
        "hold_busy" => shell(format!(
            "systemd-run --unit={u} --collect /bin/sh -c {inner}\n\
             i=0; until [ \"$(systemctl show -P SubState {u})\" = running ] || [ $i -ge 100 ]; do i=$((i + 1)); sleep 0.1; done\n\
             systemctl show -P SubState {u} | grep -qx running",
            u = busy_unit(&arg),
            inner = quote(&format!(
                "cd -- {} && exec /bin/sleep infinity",
                quote(&arg)
            ))
        )),
        "release_busy" => shell(format!("systemctl stop {}", busy_unit(&arg))),
        "run" => shell(arg),
        _ => shell("true".into()),
    }
}

/// `runs` applies of `rev` started together; prints `exit N` per run (in run order) and exits
/// 0. Each run's output goes to the step's stderr, labelled.
fn concurrent(runs: u32, rev: &str) -> String {
    format!(
        r#"pids=""
for n in $(seq 1 {runs}); do
    core-ops apply --rev {rev} --json >/tmp/core-ops-verify-concurrent.$n.out 2>/tmp/core-ops-verify-concurrent.$n.err &
    pids="$pids $!"
done
n=0
for pid in $pids; do
    n=$((n + 1))
    wait "$pid"; rc=$?
    echo "exit $rc"
    {{ echo "== run $n (exit $rc) stderr"; cat /tmp/core-ops-verify-concurrent.$n.err; }} >&2
done
exit 0
"#,
        rev = quote(rev)
    )
}

/// The exit codes a `concurrent` step printed, in run order.
pub fn concurrent_exits(stdout: &str) -> Vec<i32> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("exit "))
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

/// What a `kill_apply` at a failpoint prints when the binary never paused there.
pub const NO_PAUSE: &str = "never paused at";

/// Start `core-ops apply --rev REV` with the failpoint set, wait for its pause message on
/// stderr, `kill -9` it. Fails, saying why, when the apply ends without pausing (a binary
/// without `--features failpoints`, or a point this apply never reaches).
fn kill_apply_at(rev: &str, setting: &str, point: &str, timeout: Duration) -> String {
    // give up (and say why) well before the step's own timeout ends the step without a word
    let tenths = timeout
        .as_secs()
        .saturating_sub(5)
        .saturating_mul(10)
        .max(10);
    format!(
        r#"err=/tmp/core-ops-verify-kill-apply.err
rm -f "$err"
FAILPOINTS={setting} core-ops apply --rev {rev} --json 2>"$err" &
pid=$!
i=0
while ! grep -qF {msg} "$err" && kill -0 "$pid" 2>/dev/null && [ $i -lt {tenths} ]; do
    i=$((i + 1)); sleep 0.1
done
if grep -qF {msg} "$err" && kill -9 "$pid" 2>/dev/null; then
    wait "$pid"; rc=$?
    cat "$err" >&2
    echo "core-ops-verify: killed core-ops apply (pid $pid) with SIGKILL while paused at {point_plain} (exit $rc)" >&2
    exit 0
fi
kill -9 "$pid" 2>/dev/null
wait "$pid"; rc=$?
cat "$err" >&2
echo "core-ops-verify: core-ops apply {NO_PAUSE} {point_plain} (exit $rc): kill_apply at a point needs a core-ops built with --features failpoints (CORE_OPS_VERIFY_CORE_OPS_BIN), and an apply that reaches that point" >&2
exit 1
"#,
        setting = quote(setting),
        rev = quote(rev),
        msg = quote(&format!("core-ops: failpoint: paused at {point}")),
        point_plain = point,
    )
}

/// `kill -9` core-ops once its in-flight journal exists (it has begun changing the host).
fn kill_apply(rev: &str, state: &str) -> String {
    format!(
        r#"rm -f {state}/inflight.json.verify-seen
core-ops apply --rev {rev} --json &
pid=$!
i=0
while [ ! -e {state}/inflight.json ] && kill -0 "$pid" 2>/dev/null && [ $i -lt 6000 ]; do
    i=$((i + 1)); sleep 0.01
done
if [ -e {state}/inflight.json ] && kill -9 "$pid" 2>/dev/null; then
    wait "$pid"; rc=$?
    echo "core-ops-verify: killed core-ops apply (pid $pid) with SIGKILL mid-apply after ~$((i * 10)) ms (exit $rc)" >&2
    ls -l {state}/inflight.json >&2
    exit 0
fi
wait "$pid"; rc=$?
echo "core-ops-verify: core-ops apply finished (exit $rc) before it could be killed mid-apply" >&2
exit 1
"#,
        rev = quote(rev)
    )
}

/// Install the shipped units pointed at `rev`, fire the timer now, wait for one service run;
/// exit with the service's main exit status and print its journal.
fn timer_run(share: &str, host: &str, policy: &PolicyProfile, rev: &str) -> String {
    format!(
        r#"set -e
install -m 0644 {share}/units/core-ops.service {share}/units/core-ops.timer /etc/systemd/system/
mkdir -p /etc/systemd/system/core-ops.service.d /etc/systemd/system/core-ops.timer.d
cat > /etc/systemd/system/core-ops.service.d/50-verify.conf <<'UNIT'
[Service]
Environment=CORE_OPS_REPO={share}/repo
Environment=CORE_OPS_REV={rev}
Environment=CORE_OPS_HOST={host}
Environment=CORE_OPS_SETTLE_MS={settle}
UNIT
cat > /etc/systemd/system/core-ops.timer.d/50-verify.conf <<'UNIT'
[Timer]
OnBootSec=
OnUnitActiveSec=
OnActiveSec=1s
RandomizedDelaySec=0
UNIT
systemctl daemon-reload
systemctl start core-ops.timer
set +e
i=0
while [ "$(systemctl show core-ops.service -p ExecMainExitTimestampMonotonic --value)" = 0 ] && [ $i -lt 2400 ]; do
    i=$((i + 1)); sleep 0.1
done
while [ "$(systemctl show core-ops.service -p ActiveState --value)" = activating ] && [ $i -lt 2400 ]; do
    i=$((i + 1)); sleep 0.1
done
systemctl show core-ops.service -p Result -p ExecMainStatus -p ActiveState >&2
journalctl -u core-ops.service --no-pager -o cat
code=$(systemctl show core-ops.service -p ExecMainStatus --value)
[ "$(systemctl show core-ops.service -p ExecMainExitTimestampMonotonic --value)" != 0 ] || {{ echo "core-ops.service did not run within 240 s" >&2; exit 124; }}
exit "$code"
"#,
        settle = policy.settle_ms
    )
}

#[cfg(test)]
mod tests {
    use super::super::machine::local::Local;
    use super::super::machine::{Output, Shell};
    use super::super::scenario::POLICIES;
    use super::*;

    fn run_step(m: &mut Local, yaml: &str) -> Output {
        let step: Step = serde_yaml::from_str(yaml).unwrap();
        let share = m.share.display().to_string();
        let cmd = command(&step, &share, "h", &POLICIES[1]);
        Shell::new(m).exec("t", &cmd.script, cmd.timeout).unwrap()
    }

    /// kill_apply at a point: killed once the pause message appears; a binary that never
    /// pauses (no failpoints build) fails the step and says why.
    #[test]
    fn kill_apply_at_a_failpoint() {
        let t = tempfile::tempdir().unwrap();
        let mut m = Local::new(t.path());
        m.fake(
            "core-ops",
            "echo \"FAILPOINTS=$FAILPOINTS $*\" >&2\necho 'core-ops: failpoint: paused at apply::phase(write)' >&2\nsleep 60",
        );
        let o = run_step(&mut m, "kill_apply: {rev: v2, at: write}");
        assert_eq!(o.code, 0, "{}", o.stderr_text());
        assert!(
            o.stderr_text()
                .contains("FAILPOINTS=apply::phase=return(write) apply --rev v2"),
            "{}",
            o.stderr_text()
        );
        assert!(o.stderr_text().contains("killed core-ops apply"));
        // paused at another point than asked: not this one, so never killed there
        let o = run_step(&mut m, "{kill_apply: {rev: v2, at: start}, timeout: 3}");
        assert_eq!(o.code, 1, "{}", o.stderr_text());
        m.fake("core-ops", "echo applied; exit 0");
        let o = run_step(
            &mut m,
            "{kill_apply: {rev: v2, at: after-write:2}, timeout: 5}",
        );
        assert_eq!(o.code, 1);
        assert!(o.stderr_text().contains(NO_PAUSE), "{}", o.stderr_text());
        assert!(o.stderr_text().contains("--features failpoints"));
    }

    /// concurrent: every run's exit code, in run order.
    #[test]
    fn concurrent_runs_report_each_exit() {
        let t = tempfile::tempdir().unwrap();
        let mut m = Local::new(t.path());
        let lock = t.path().join("lock");
        m.fake(
            "core-ops",
            &format!(
                "exec 9>{}\nflock -n 9 || exit 75\nsleep 1\nexit 0",
                lock.display()
            ),
        );
        let o = run_step(
            &mut m,
            "{concurrent: {runs: 3, apply: v1}, expect_exits: [0, 75, 75]}",
        );
        assert_eq!(o.code, 0);
        let mut got = concurrent_exits(&o.stdout_text());
        got.sort();
        assert_eq!(got, vec![0, 75, 75], "{}", o.stdout_text());
    }

    #[test]
    fn chmod_and_host_override_and_timeout() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let mut m = Local::new(t.path());
        let f = t.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let o = run_step(
            &mut m,
            &format!("chmod: {{path: {}, mode: \"0600\"}}", f.display()),
        );
        assert_eq!(o.code, 0, "{}", o.stderr_text());
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        let step: Step = serde_yaml::from_str("{apply: v1, host: other, timeout: 900}").unwrap();
        let cmd = command(&step, "/s", "core-ops-guest", &POLICIES[1]);
        assert!(
            cmd.script.contains("CORE_OPS_HOST='other'"),
            "{}",
            cmd.script
        );
        assert_eq!(cmd.timeout, Duration::from_secs(900));
        let step: Step = serde_yaml::from_str("{plan: v1, detailed_exitcode: true}").unwrap();
        let cmd = command(&step, "/s", "h", &POLICIES[1]);
        assert!(
            cmd.script.contains("plan --rev 'v1' --detailed-exitcode"),
            "{}",
            cmd.script
        );
        let step: Step = serde_yaml::from_str("rollback_plan_only: no-such-rev").unwrap();
        let cmd = command(&step, "/s", "h", &POLICIES[1]);
        assert!(
            cmd.script
                .contains("apply --rollback-to 'no-such-rev' --rollback-plan-only"),
            "{}",
            cmd.script
        );
    }

    /// make_dir, chown, set_clock, hold_busy/release_busy: each does what it says (true case)
    /// and fails the step when it cannot (false case).
    #[test]
    fn host_set_up_and_disturbance_steps() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let mut m = Local::new(t.path());
        let d = t.path().join("a/b");
        let o = run_step(&mut m, &format!("make_dir: {}", d.display()));
        assert_eq!(o.code, 0, "{}", o.stderr_text());
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        std::fs::write(t.path().join("file"), "x").unwrap();
        let o = run_step(
            &mut m,
            &format!("make_dir: {}/file/sub", t.path().display()),
        );
        assert_ne!(o.code, 0, "a directory under a file cannot be made");

        let me = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let o = run_step(
            &mut m,
            &format!("chown: {{path: {}, owner: {}}}", d.display(), me.trim()),
        );
        assert_eq!(o.code, 0, "{}", o.stderr_text());
        let o = run_step(
            &mut m,
            &format!("chown: {{path: {}, owner: no-such-user-xyz}}", d.display()),
        );
        assert_ne!(o.code, 0);

        // the clock: stand-ins record what the guest would run
        let log = t.path().join("date.log");
        m.fake("timedatectl", "exit 1");
        m.fake("date", &format!("echo \"$*\" >> {}", log.display()));
        let o = run_step(&mut m, "set_clock: \"2030-01-01 00:00:00 UTC\"");
        assert_eq!(o.code, 0, "{}", o.stderr_text());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-s 2030-01-01 00:00:00 UTC\n"
        );
        m.fake("date", "echo 'date: cannot set date' >&2; exit 1");
        assert_ne!(run_step(&mut m, "set_clock: \"2030-01-01\"").code, 0);

        // hold_busy: a transient unit whose state decides the step
        let state = t.path().join("substate");
        m.fake(
            "systemd-run",
            &format!("echo \"$*\" > {}.args", state.display()),
        );
        m.fake(
            "systemctl",
            &format!(
                "case \"$1\" in show) cat {s} ;; stop) echo \"$2\" > {s}.stopped ;; esac",
                s = state.display()
            ),
        );
        std::fs::write(&state, "running\n").unwrap();
        let o = run_step(&mut m, "hold_busy: /srv/x y");
        assert_eq!(o.code, 0, "{}", o.stderr_text());
        let args = std::fs::read_to_string(format!("{}.args", state.display())).unwrap();
        assert!(
            args.contains(&busy_unit("/srv/x y"))
                && args.contains("cd -- '/srv/x y' && exec /bin/sleep infinity"),
            "{args}"
        );
        assert_eq!(run_step(&mut m, "release_busy: /srv/x y").code, 0);
        assert_eq!(
            std::fs::read_to_string(format!("{}.stopped", state.display()))
                .unwrap()
                .trim(),
            busy_unit("/srv/x y")
        );
        std::fs::write(&state, "failed\n").unwrap();
        let o = run_step(&mut m, "{hold_busy: /srv/x, timeout: 20}");
        assert_ne!(o.code, 0, "a process that is not running holds nothing");
    }
}
