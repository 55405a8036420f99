//! Nothing outlives the harness: when core-ops-verify is stopped (SIGTERM, SIGINT, SIGHUP, its
//! parent dying) or killed outright (SIGKILL), the guest it started is stopped and the machine
//! directory under [`super::runner::MACHINE_ROOT`] (overlay, sockets, share) is removed.
//!
//! How, without unsafe code (the workspace forbids it):
//! - every machine directory gets a `cleanup.sh` that stops what runs there (the qemu of its
//!   `qemu.pid`, the libvirt domain named in `libvirt-domain`, the synthetic test bed, then any
//!   process whose command line names the run's unique directory: a step's shell, a bed exec)
//!   and removes the directory, unless a `keep` marker (`--debug`) is there;
//! - [`install`] blocks the stop signals in the main thread before any other thread exists
//!   (so every thread inherits the mask) and waits for them in one thread with `sigwait`,
//!   which runs every registered `cleanup.sh` and exits 128+signal; it also asks the kernel
//!   for SIGTERM when the harness's parent dies (`PR_SET_PDEATHSIG`). Children started through
//!   `std::process::Command` get an empty mask back, so qemu and the guest tools see signals
//!   normally;
//! - for SIGKILL, which no process can handle, [`register`] starts a detached watchdog
//!   (`setsid -f sh -c 'while kill -0 HARNESS; do sleep 1; done; sh cleanup.sh'`) that runs the
//!   same script within a second of the harness's death.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};

/// Machine directories whose `cleanup.sh` a stop signal runs.
static ACTIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The stop signal being handled (0: none). The main thread, which sees its guest vanish and
/// would otherwise end the run with its own exit code first, defers to it ([`exit_code`]).
static STOPPING: AtomicI32 = AtomicI32::new(0);

/// The file name of the marker that keeps a machine (`--debug`).
pub const KEEP_MARKER: &str = "keep";

/// Block SIGTERM/SIGINT/SIGHUP in this (the main) thread, handle them in a waiter thread, and
/// turn the parent's death into SIGTERM. Call first thing in `main`, before any thread.
pub fn install() -> Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("blocking the stop signals")?;
    std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                STOPPING.store(sig as i32, Ordering::SeqCst);
                eprintln!(
                    "core-ops-verify: {sig}: stopping the guests and removing their overlays"
                );
                run_all();
                std::process::exit(128 + sig as i32);
            }
        })
        .context("starting the signal thread")?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).context("PR_SET_PDEATHSIG")?;
    Ok(())
}

/// Whether a stop signal is being handled: nothing may write into a machine directory any
/// more (it is being removed).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst) != 0
}

/// The process's exit code: `code`, unless a stop signal is being handled; then wait for the
/// signal thread to finish the clean-up and exit with 128+signal (a stopped run never reports
/// an ordinary failure).
pub fn exit_code(code: u8) -> u8 {
    if STOPPING.load(Ordering::SeqCst) == 0 {
        return code;
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Run every registered machine's `cleanup.sh` (the stop-signal path).
fn run_all() {
    let dirs = ACTIVE.lock().map(|v| v.clone()).unwrap_or_default();
    for d in dirs {
        let _ = Command::new("sh")
            .arg(d.join("cleanup.sh"))
            .stdin(Stdio::null())
            .status();
    }
}

/// The `cleanup.sh` of a machine directory: stop its guest (`extra`: more shell, e.g. the
/// test bed's `down`), remove the directory. A no-op once a `keep` marker exists.
pub fn script(dir: &Path, extra: &str) -> String {
    let d = super::machine::quote(&dir.display().to_string());
    format!(
        r#"d={d}
[ -e "$d/{KEEP_MARKER}" ] && exit 0
[ -d "$d" ] || exit 0
if [ -f "$d/qemu.pid" ]; then
    pid=$(cat "$d/qemu.pid")
    if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$d/"; then
        kill -9 "$pid" 2>/dev/null
        i=0; while [ -d "/proc/$pid" ] && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
    fi
fi
if [ -f "$d/libvirt-domain" ] && command -v virsh >/dev/null; then
    read -r uri name < "$d/libvirt-domain"
    virsh -c "$uri" destroy "$name" >/dev/null 2>&1
fi
{extra}
# whatever else still works in this directory (a step's shell, a bed exec): started by this
# run, named by its unique directory; not this script or its watchdog
for p in /proc/[0-9]*; do
    pid=${{p#/proc/}}
    [ "$pid" = $$ ] && continue
    cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in *cleanup.sh*) continue ;; *"$d/"*) kill -9 "$pid" 2>/dev/null ;; esac
done
rm -rf "$d"
"#
    )
}

/// Registered while a machine directory exists: deregisters on drop.
#[derive(Debug)]
pub struct Registration {
    dir: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut v) = ACTIVE.lock() {
            v.retain(|d| d != &self.dir);
        }
    }
}

/// Write `dir/cleanup.sh`, register it for the stop signals and start its SIGKILL watchdog.
pub fn register(dir: &Path, extra: &str) -> Result<Registration> {
    std::fs::create_dir_all(dir)?;
    let script_path = dir.join("cleanup.sh");
    std::fs::write(&script_path, script(dir, extra))
        .with_context(|| format!("writing {}", script_path.display()))?;
    if let Ok(mut v) = ACTIVE.lock() {
        v.push(dir.to_path_buf());
    }
    Command::new("setsid")
        .args([
            "-f",
            "sh",
            "-c",
            "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; [ -f \"$2\" ] && exec sh \"$2\"",
            "core-ops-verify-watchdog",
        ])
        .arg(std::process::id().to_string())
        .arg(&script_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("starting the clean-up watchdog (setsid, util-linux)")?;
    Ok(Registration {
        dir: dir.to_path_buf(),
    })
}

/// Keep a machine directory and what runs there (`--debug`): neither a stop signal nor the
/// watchdog touches it any more.
pub fn keep(dir: &Path) {
    let _ = std::fs::write(dir.join(KEEP_MARKER), b"kept by --debug\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script removes the directory, and does nothing once the keep marker is there.
    #[test]
    fn cleanup_script_removes_unless_kept() {
        let t = tempfile::tempdir().unwrap();
        for keep_it in [true, false] {
            let d = t.path().join(format!("m-{keep_it}"));
            std::fs::create_dir_all(d.join("share")).unwrap();
            std::fs::write(d.join("qemu.pid"), "999999999\n").unwrap();
            if keep_it {
                keep(&d);
            }
            std::fs::write(d.join("cleanup.sh"), script(&d, "")).unwrap();
            let st = Command::new("sh")
                .arg(d.join("cleanup.sh"))
                .status()
                .unwrap();
            assert!(st.success());
            assert_eq!(d.exists(), keep_it, "{}", d.display());
        }
    }
}
