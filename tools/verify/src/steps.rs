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

/// The shell for one step (not for `assert`, which the runner evaluates itself).
pub fn command(step: &Step, share: &str, host: &str, policy: &PolicyProfile) -> StepCommand {
    let env = core_ops_env(share, host, policy);
    let t = Duration::from_secs(policy.step_timeout_s);
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
        "plan" => core(format!("plan --rev {}", quote(&arg))),
        "explain" => core(format!("explain {}", quote(&arg))),
        "rollback_to" => core(format!("apply --rollback-to {}", quote(&arg))),
        "agent_tick" => core(format!("agent --rev {}", quote(&arg))),
        "status" => core("status".into()),
        "resume" => core("resume".into()),
        "timer_run" => shell(timer_run(share, host, policy, &arg)),
        "edit_file" => {
            let e = step.edit_file.as_ref().expect("validated");
            shell(format!(
                "mkdir -p \"$(dirname {p})\"\nprintf '%s' {c} > {p}",
                p = quote(&e.path),
                c = quote(&e.content)
            ))
        }
        "remove_file" => shell(format!("rm -v -- {}", quote(&arg))),
        "stop_unit" => shell(format!("systemctl stop {}", quote(&arg))),
        "kill_unit" => shell(format!(
            "systemctl kill --signal=SIGKILL {u}\nsleep 1\nsystemctl show {u} -p ActiveState -p SubState -p Result",
            u = quote(&arg)
        )),
        "kill_apply" => shell(format!(
            "{env}{}",
            kill_apply(&arg, super::assertions::STATE_DIR)
        )),
        "fill_disk" => shell(format!(
            "avail=$(df --output=avail -B1M / | tail -1 | tr -d ' ')\nsize=$((avail - {arg}))\nif [ \"$size\" -gt 0 ]; then fallocate -l \"${{size}}M\" {FILL_FILE}; fi\ndf -h /",
            arg = step.fill_disk.unwrap_or(0)
        )),
        "free_disk" => shell(format!("rm -f {FILL_FILE}\ndf -h /")),
        "run" => shell(arg),
        _ => shell("true".into()),
    }
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
