//! Host policy for runtimes (`policy:` in host.yaml, parsed by `render::yaml::Policy`):
//! checked once into typed values at render time (bad syntax is an input error naming
//! host.yaml and the line), then applied by [`decide`] before a transaction changes anything.
//!
//! Rules, in order: a publisher not in `allowed_publishers` is **denied** (an empty list
//! allows none: publishers are opt-in); a local artifact without a pinned digest is **denied**
//! unless `allow_unverified_local` (then installed with a warning and recorded as `skipped`);
//! outside every `maintenance_windows` entry the install is **deferred**; free disk on the
//! state dir below `min_free_disk` plus the artifacts' known size is **deferred**.
//!
//! Why pure: the clock and the free space are inputs, so every rule is tested with fixed
//! values.

use serde::Serialize;

use crate::error::{InputError, Location};
use crate::model::yaml::Policy;

use super::manifest::Manifest;

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A maintenance window: days of the week and a time span, in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// As written.
    pub text: String,
    /// Monday first.
    days: [bool; 7],
    /// Minutes after midnight.
    start: u32,
    /// Minutes after midnight (smaller than `start`: the window ends the next day).
    end: u32,
}

impl Window {
    /// Parse `Sat 02:00-04:00`, `Mon-Fri 22:00-02:00`, `Sat,Sun 00:00-24:00`, `* 03:00-04:00`.
    pub fn parse(s: &str) -> Option<Window> {
        let (days_s, span) = s.trim().split_once(' ')?;
        let mut days = [false; 7];
        if days_s == "*" || days_s.eq_ignore_ascii_case("daily") {
            days = [true; 7];
        } else {
            for part in days_s.split(',') {
                let idx = |d: &str| DAYS.iter().position(|x| x.eq_ignore_ascii_case(d));
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (idx(a)?, idx(b)?);
                        let mut i = a;
                        loop {
                            days[i] = true;
                            if i == b {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => days[idx(part)?] = true,
                }
            }
        }
        let (a, b) = span.trim().split_once('-')?;
        let (start, end) = (minutes(a)?, minutes(b)?);
        (start != end && start < 24 * 60).then(|| Window {
            text: s.trim().to_string(),
            days,
            start,
            end,
        })
    }

    /// Whether a unix time (UTC) falls inside the window.
    pub fn contains(&self, unix_secs: u64) -> bool {
        let day = ((unix_secs / 86_400 + 3) % 7) as usize; // 1970-01-01 was a Thursday
        let minute = ((unix_secs % 86_400) / 60) as u32;
        if self.start < self.end {
            self.days[day] && minute >= self.start && minute < self.end
        } else {
            (self.days[day] && minute >= self.start)
                || (self.days[(day + 6) % 7] && minute < self.end)
        }
    }
}

fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    ((h < 24 && m < 60) || (h == 24 && m == 0)).then_some(h * 60 + m)
}

/// `1GiB`, `512MiB`, `10G` (SI), `2048` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "T" | "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The policy, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RuntimePolicy {
    /// Publishers allowed to install (empty: none).
    pub allowed_publishers: Vec<String>,
    /// Whether local artifacts without a digest may install.
    pub allow_unverified_local: bool,
    /// Maintenance windows (empty: any time).
    pub maintenance_windows: Vec<Window>,
    /// Minimum free bytes on the state dir's filesystem after fetching.
    pub min_free_disk: Option<u64>,
}

/// Check host.yaml's policy; errors name host.yaml and the line of the bad value.
pub fn check(p: &Policy, host_file: &str, host_text: &str) -> Result<RuntimePolicy, InputError> {
    let at = |needle: &str| {
        host_text
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| Location::line(host_file, i + 1))
            .unwrap_or_else(|| Location::file(host_file))
    };
    let mut windows = Vec::new();
    for w in &p.maintenance_windows {
        windows.push(Window::parse(w).ok_or_else(|| {
            InputError::new(
                at(w),
                format!(
                    "policy.maintenance_windows: '{w}' is not like \"Sat 02:00-04:00\" (days: Mon..Sun, Mon-Fri, Sat,Sun or *; times UTC)"
                ),
            )
        })?);
    }
    let min_free_disk = match &p.min_free_disk {
        None => None,
        Some(s) => Some(parse_size(s).ok_or_else(|| {
            InputError::new(
                at("min_free_disk"),
                format!("policy.min_free_disk: '{s}' is not a size like 1GiB, 500MiB or 10G"),
            )
        })?),
    };
    Ok(RuntimePolicy {
        allowed_publishers: p.allowed_publishers.clone(),
        allow_unverified_local: p.allow_unverified_local,
        maintenance_windows: windows,
        min_free_disk,
    })
}

/// What the host looks like when policy is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inputs {
    /// Now, seconds since the epoch (UTC).
    pub now_unix: u64,
    /// Free bytes on the state dir's filesystem (`None`: unknown).
    pub free_bytes: Option<u64>,
    /// Bytes the artifacts will take in the store, where known.
    pub artifact_bytes: u64,
}

impl Inputs {
    /// The host now: the clock, free space on the state dir, and the artifacts' sizes where
    /// they can be known without fetching (repository blobs, local files).
    pub fn now(state_dir: &std::path::Path, m: &Manifest) -> Inputs {
        use super::manifest::ArtifactSource;
        Inputs {
            now_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            free_bytes: free_bytes(state_dir),
            artifact_bytes: m
                .artifacts
                .iter()
                .filter_map(|a| match &a.source {
                    ArtifactSource::Repo { data, .. } => Some(data.0.len() as u64),
                    ArtifactSource::Local { path } => std::fs::metadata(path).ok().map(|m| m.len()),
                    ArtifactSource::Https { .. } => None,
                })
                .sum(),
        }
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Go ahead (with warnings to log and record).
    Allow {
        /// E.g. unverified local artifacts.
        warnings: Vec<String>,
    },
    /// Refused; nothing changes.
    Deny {
        /// Why.
        reason: String,
    },
    /// Not now; nothing changes.
    Defer {
        /// Why.
        reason: String,
    },
}

/// The static part of the policy (publisher, unverified local artifacts): reasons to deny,
/// and warnings for what is allowed but unverified. Pure in the manifest, so `plan` can say
/// what apply will deny.
pub fn denials(p: &RuntimePolicy, m: &Manifest) -> (Vec<String>, Vec<String>) {
    let mut deny = Vec::new();
    if !p.allowed_publishers.iter().any(|x| x == &m.publisher) {
        deny.push(if p.allowed_publishers.is_empty() {
            format!(
                "publisher '{}' is not allowed: policy.allowed_publishers is empty (publishers are opt-in)",
                m.publisher
            )
        } else {
            format!(
                "publisher '{}' is not in policy.allowed_publishers ({})",
                m.publisher,
                p.allowed_publishers.join(", ")
            )
        });
    }
    let mut warnings = Vec::new();
    for a in m.artifacts.iter().filter(|a| a.digest.is_none()) {
        if p.allow_unverified_local {
            warnings.push(format!(
                "artifact '{}' ({}) has no pinned digest; installed unverified because policy.allow_unverified_local is true",
                a.name,
                a.source.display()
            ));
        } else {
            deny.push(format!(
                "artifact '{}' ({}) has no pinned digest and policy.allow_unverified_local is false",
                a.name,
                a.source.display()
            ));
        }
    }
    (deny, warnings)
}

/// Decide whether a manifest may be installed now.
pub fn decide(p: &RuntimePolicy, m: &Manifest, inputs: &Inputs) -> Decision {
    let (deny, warnings) = denials(p, m);
    if !deny.is_empty() {
        return Decision::Deny {
            reason: deny.join("; "),
        };
    }
    if !p.maintenance_windows.is_empty()
        && !p
            .maintenance_windows
            .iter()
            .any(|w| w.contains(inputs.now_unix))
    {
        let list: Vec<&str> = p
            .maintenance_windows
            .iter()
            .map(|w| w.text.as_str())
            .collect();
        return Decision::Defer {
            reason: format!(
                "outside the maintenance windows ({}; UTC) at {}",
                list.join(", "),
                crate::model::time::format_unix(inputs.now_unix)
            ),
        };
    }
    if let (Some(min), Some(free)) = (p.min_free_disk, inputs.free_bytes) {
        let needed = min.saturating_add(inputs.artifact_bytes);
        if free < needed {
            return Decision::Defer {
                reason: format!(
                    "free disk {} is below policy.min_free_disk {} plus {} for the artifacts",
                    human(free),
                    human(min),
                    human(inputs.artifact_bytes)
                ),
            };
        }
    }
    Decision::Allow { warnings }
}

/// `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// Free bytes on the filesystem holding `path` (its nearest existing ancestor).
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let mut p = Some(path);
    while let Some(cur) = p {
        if let Ok(s) = nix::sys::statvfs::statvfs(cur) {
            // fsblkcnt_t and c_ulong are 32 bits on some targets
            #[allow(clippy::unnecessary_cast)]
            let (blocks, size) = (s.blocks_available() as u64, s.fragment_size() as u64);
            return Some(blocks.saturating_mul(size));
        }
        p = cur.parent();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::manifest::{ArtifactSource, ArtifactSpec};
    use std::time::Duration;

    fn m(publisher: &str, digest: bool) -> Manifest {
        Manifest {
            name: "hello".into(),
            version: "1".into(),
            publisher: publisher.into(),
            artifacts: vec![ArtifactSpec {
                name: "a.tar.gz".into(),
                source: ArtifactSource::Local {
                    path: "/srv/a.tar.gz".into(),
                },
                digest: digest.then(|| format!("sha256:{}", "a".repeat(64))),
            }],
            depends: vec![],
            units: vec![],
            health_timeout: Duration::from_secs(1),
        }
    }

    fn pol(text: &str) -> RuntimePolicy {
        let h: crate::model::yaml::HostYaml =
            crate::model::yaml::parse("h", format!("services: []\npolicy:\n{text}").as_bytes())
                .unwrap();
        check(&h.policy, "h", text).unwrap()
    }

    // 2026-11-28 is a Saturday
    const SAT_0300: u64 = 1_795_834_800;

    #[test]
    fn windows_parse_and_contain() {
        let w = Window::parse("Sat 02:00-04:00").unwrap();
        assert!(w.contains(SAT_0300));
        assert!(!w.contains(SAT_0300 + 3600));
        assert!(!w.contains(SAT_0300 - 86_400));
        let night = Window::parse("Fri 22:00-04:00").unwrap();
        assert!(night.contains(SAT_0300), "crosses midnight into Saturday");
        assert!(Window::parse("Mon-Fri 09:00-17:00").is_some());
        assert!(
            Window::parse("Sat,Sun 00:00-24:00")
                .unwrap()
                .contains(SAT_0300)
        );
        assert!(Window::parse("* 03:00-03:01").unwrap().contains(SAT_0300));
        for bad in [
            "Sat",
            "Sat 2:00-4:00",
            "Xyz 02:00-04:00",
            "Sat 02:00-02:00",
            "Sat 25:00-26:00",
        ] {
            assert!(Window::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("10G"), Some(10_000_000_000));
        assert_eq!(parse_size("2048"), Some(2048));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn bad_policy_is_an_input_error_with_line() {
        let text = "services: []\npolicy:\n  maintenance_windows: [\"Someday\"]\n";
        let h: crate::model::yaml::HostYaml =
            crate::model::yaml::parse("h", text.as_bytes()).unwrap();
        let e = check(&h.policy, "hosts/a/host.yaml", text).unwrap_err();
        assert_eq!(e.location, Location::line("hosts/a/host.yaml", 3));
    }

    #[test]
    fn decisions_in_order() {
        let now = Inputs {
            now_unix: SAT_0300,
            free_bytes: Some(10 << 30),
            artifact_bytes: 1 << 20,
        };
        let open = pol("  allowed_publishers: [example]\n");
        assert_eq!(
            decide(&open, &m("example", true), &now),
            Decision::Allow { warnings: vec![] }
        );
        assert!(matches!(
            decide(&open, &m("evil", true), &now),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            decide(&pol(""), &m("example", true), &now),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            decide(&open, &m("example", false), &now),
            Decision::Deny { .. }
        ));
        let lax = pol("  allowed_publishers: [example]\n  allow_unverified_local: true\n");
        match decide(&lax, &m("example", false), &now) {
            Decision::Allow { warnings } => assert_eq!(warnings.len(), 1),
            other => panic!("{other:?}"),
        }
        let win =
            pol("  allowed_publishers: [example]\n  maintenance_windows: [\"Sun 02:00-04:00\"]\n");
        match decide(&win, &m("example", true), &now) {
            Decision::Defer { reason } => assert!(
                reason.contains("outside the maintenance windows"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        let disk = pol("  allowed_publishers: [example]\n  min_free_disk: 10GiB\n");
        assert!(matches!(
            decide(&disk, &m("example", true), &now),
            Decision::Defer { .. }
        ));
        // denial wins over deferral: nothing to wait for
        let both = pol("  maintenance_windows: [\"Sun 02:00-04:00\"]\n");
        assert!(matches!(
            decide(&both, &m("x", true), &now),
            Decision::Deny { .. }
        ));
    }
}
