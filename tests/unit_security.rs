//! `units/core-ops.service` keeps its sandbox: `systemd-analyze security --offline=yes` rates
//! it at most 4.5 ("OK" or better), and `ProtectSystem=strict` still leaves writable every
//! place the agent writes by default.
//!
//! Needs no test bed: the offline review reads the unit file (systemd ≥ 250). A missing
//! `systemd-analyze` fails the test with a clear message; it never skips (CI installs systemd).

use std::path::{Path, PathBuf};
use std::process::Command;

use core_ops::config::{
    DEFAULT_HOST_FILE_ROOTS, DEFAULT_QUADLET_DIR, DEFAULT_STATE_DIR, DEFAULT_UNIT_DIR,
};
use core_ops::record::metrics::DEFAULT_METRICS_FILE;

/// The highest overall exposure the shipped unit may have (issue 14 item 11).
const MAX_EXPOSURE: f64 = 4.5;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("units/core-ops.service")
}

fn analyzer() -> PathBuf {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze is not installed (looked in /usr/bin and /bin): this test \
                 needs it to rate units/core-ops.service; install the `systemd` package \
                 (scripts/prereqs.sh does)"
            )
        })
}

#[test]
fn unit_exposure_stays_at_most_4_5() {
    let unit = unit_path();
    // --threshold is the exposure times ten: the command itself fails above 4.5
    let out = Command::new(analyzer())
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={}", (MAX_EXPOSURE * 10.0) as u32))
        .arg(&unit)
        .env("SYSTEMD_COLORS", "0")
        .env("LC_ALL", "C")
        .output()
        .expect("run systemd-analyze security");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let overall = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for core-ops.service:"))
        .map(|(_, rest)| rest.trim().to_string())
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in `systemd-analyze security --offline=yes {}` \
                 (exit {:?}):\n{stdout}\n{stderr}",
                unit.display(),
                out.status.code()
            )
        });
    let exposure: f64 = overall
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {overall:?}"));
    // the directives that still cost exposure ('-' under LC_ALL=C, '✗' in UTF-8)
    let open: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with('✗'))
        .collect();
    assert!(
        exposure <= MAX_EXPOSURE && out.status.success(),
        "units/core-ops.service: exposure {overall}, more than {MAX_EXPOSURE} (exit {:?}); \
         a sandboxing directive was dropped or loosened. Still open:\n{}\n{stderr}",
        out.status.code(),
        open.join("\n")
    );
}

/// `Key=` values of the unit's `[Service]` section, every occurrence, split on whitespace.
fn service_values(text: &str, key: &str) -> Vec<String> {
    let mut in_service = false;
    let mut v = Vec::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('[') {
            in_service = l == "[Service]";
        } else if in_service && let Some(rest) = l.strip_prefix(&format!("{key}=")) {
            v.extend(rest.split_whitespace().map(str::to_string));
        }
    }
    v
}

#[test]
fn unit_leaves_every_default_write_path_writable() {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    assert_eq!(
        service_values(&text, "ProtectSystem"),
        ["strict"],
        "core-ops.service should keep ProtectSystem=strict"
    );
    // '-' only says the path may be missing
    let mut writable: Vec<PathBuf> = service_values(&text, "ReadWritePaths")
        .iter()
        .map(|p| PathBuf::from(p.trim_start_matches('-')))
        .collect();
    writable.extend(
        service_values(&text, "StateDirectory")
            .iter()
            .map(|d| Path::new("/var/lib").join(d)),
    );
    let metrics_dir = Path::new(DEFAULT_METRICS_FILE).parent().unwrap();
    let mut needed: Vec<&Path> = vec![
        Path::new(DEFAULT_UNIT_DIR),
        Path::new(DEFAULT_QUADLET_DIR),
        Path::new(DEFAULT_STATE_DIR),
        metrics_dir,
    ];
    needed.extend(DEFAULT_HOST_FILE_ROOTS.split(':').map(Path::new));
    for p in needed {
        assert!(
            writable.iter().any(|w| p.starts_with(w)),
            "core-ops writes under {} by default, but core-ops.service's ProtectSystem=strict \
             leaves it read-only (writable: {writable:?}); add it to ReadWritePaths=",
            p.display()
        );
    }
}
