//! `CHANGELOG.md` in the Keep a Changelog 1.1.0 shape: `# Changelog`, `## [Unreleased]` first,
//! then `## [X.Y.Z] - YYYY-MM-DD` newest first, only the six standard `###` subsections, and
//! link references at the bottom matching the headings.
//!
//! Why a checker: the changelog is release history operators read; a mis-sorted heading or a
//! dangling link is easy to miss in review and wrong forever after the tag.

use super::Finding;
use super::version::Version;

/// The file, relative to the repository root.
pub const FILE: &str = "CHANGELOG.md";

/// The subsections Keep a Changelog 1.1.0 defines.
pub const SUBSECTIONS: [&str; 6] = [
    "Added",
    "Changed",
    "Deprecated",
    "Removed",
    "Fixed",
    "Security",
];

/// One `## [X.Y.Z] - YYYY-MM-DD` section.
///
/// Why: the version policy compares the newest one with `Cargo.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Its version.
    pub version: Version,
    /// Its date as written (`YYYY-MM-DD`).
    pub date: String,
    /// 1-based line of the heading.
    pub line: usize,
}

/// What the version policy needs to know about the changelog.
///
/// Why a summary, not a document model: the rules are checked while reading; only these facts
/// cross over into the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changelog {
    /// Line of `## [Unreleased]`, if present.
    pub unreleased_line: Option<usize>,
    /// True when `## [Unreleased]` has at least one entry.
    pub unreleased_has_entries: bool,
    /// Release sections in file order (newest first when the file is valid).
    pub releases: Vec<Release>,
}

#[derive(Debug)]
struct Section {
    /// `Unreleased` or the version text.
    label: String,
    line: usize,
    has_entries: bool,
    subsections: Vec<String>,
    /// The open `###` and whether it has content yet.
    open_sub: Option<(String, usize, bool)>,
}

#[derive(Debug)]
struct LinkRef {
    label: String,
    url: String,
    line: usize,
}

/// `[label]: url` at the start of a line.
fn link_ref(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (label, rest) = rest.split_once("]:")?;
    if label.is_empty() || label.contains('[') {
        return None;
    }
    Some((label, rest.trim()))
}

fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let p = &s[r];
        p.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| p.parse().ok())
            .flatten()
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// `## [X.Y.Z] - YYYY-MM-DD` (optionally followed by ` [YANKED]`).
fn release_heading(h: &str) -> Option<(Version, String)> {
    let rest = h.strip_prefix('[')?;
    let (v, rest) = rest.split_once(']')?;
    let date = rest.strip_prefix(" - ")?;
    let date = date.strip_suffix(" [YANKED]").unwrap_or(date);
    let version = Version::parse(v)?;
    valid_date(date).then(|| (version, date.to_string()))
}

/// Check the text of `CHANGELOG.md`; append a finding per problem and return the facts the
/// version policy uses.
///
/// Why one pass: every rule is about order or position, which a single walk sees directly.
pub fn check(text: &str, out: &mut Vec<Finding>) -> Changelog {
    let at = |line: usize, rule: &str, message: String| Finding::new(FILE, line, rule, message);
    let mut log = Changelog::default();
    let mut sections: Vec<Section> = Vec::new();
    let mut refs: Vec<LinkRef> = Vec::new();
    let mut title_seen = false;
    let mut in_fence = false;
    let mut content_after_refs: Option<usize> = None;

    fn close_sub(s: &mut Section, out: &mut Vec<Finding>) {
        if let Some((name, line, has)) = s.open_sub.take()
            && !has
        {
            out.push(Finding::new(
                FILE,
                line,
                "changelog-subsection",
                format!("empty subsection `### {name}`"),
            ));
        }
    }

    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end();
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if line.trim().is_empty() {
            continue;
        }
        if !in_fence && let Some((label, url)) = link_ref(line) {
            refs.push(LinkRef {
                label: label.to_string(),
                url: url.to_string(),
                line: n,
            });
            continue;
        }
        if !refs.is_empty() && content_after_refs.is_none() {
            content_after_refs = Some(n);
        }
        if !title_seen {
            title_seen = true;
            if line != "# Changelog" {
                out.push(at(
                    n,
                    "changelog-title",
                    "the changelog must open with `# Changelog`".into(),
                ));
            }
            if line.starts_with("# ") {
                continue;
            }
        }
        if in_fence && !line.trim_start().starts_with("```") {
            if let Some(s) = sections.last_mut() {
                mark_content(s, &mut log);
            }
            continue;
        }
        if let Some(h) = line.strip_prefix("## ") {
            if let Some(s) = sections.last_mut() {
                close_sub(s, out);
            }
            let h = h.trim();
            if h == "[Unreleased]" {
                if log.unreleased_line.is_some() {
                    out.push(at(
                        n,
                        "changelog-unreleased",
                        "a second `## [Unreleased]` section".into(),
                    ));
                } else if !sections.is_empty() {
                    out.push(at(
                        n,
                        "changelog-unreleased",
                        "`## [Unreleased]` must be the first section".into(),
                    ));
                }
                log.unreleased_line.get_or_insert(n);
            } else if let Some((version, date)) = release_heading(h) {
                if sections.is_empty() {
                    out.push(at(
                        n,
                        "changelog-unreleased",
                        "the first section must be `## [Unreleased]`".into(),
                    ));
                }
                if let Some(prev) = log.releases.last() {
                    if version == prev.version {
                        out.push(at(
                            n,
                            "changelog-order",
                            format!("duplicate release [{version}] (also on line {})", prev.line),
                        ));
                    } else if version > prev.version {
                        out.push(at(
                            n,
                            "changelog-order",
                            format!(
                                "[{version}] must come before [{}] (line {}): releases are listed \
                                 newest first, in descending SemVer order",
                                prev.version, prev.line
                            ),
                        ));
                    }
                }
                log.releases.push(Release {
                    version,
                    date,
                    line: n,
                });
            } else {
                out.push(at(
                    n,
                    "changelog-heading",
                    format!(
                        "`## {h}` is neither `## [Unreleased]` nor a release heading \
                         `## [X.Y.Z] - YYYY-MM-DD`"
                    ),
                ));
            }
            let label = h
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .map_or(h.to_string(), |(l, _)| l.to_string());
            sections.push(Section {
                label,
                line: n,
                has_entries: false,
                subsections: Vec::new(),
                open_sub: None,
            });
            continue;
        }
        if let Some(h) = line.strip_prefix("### ") {
            let h = h.trim();
            let Some(s) = sections.last_mut() else {
                out.push(at(
                    n,
                    "changelog-subsection",
                    format!("`### {h}` outside a `##` section"),
                ));
                continue;
            };
            close_sub(s, out);
            if !SUBSECTIONS.contains(&h) {
                out.push(at(
                    n,
                    "changelog-subsection",
                    format!(
                        "`### {h}` is not a Keep a Changelog subsection (Added, Changed, \
                         Deprecated, Removed, Fixed, Security)"
                    ),
                ));
            } else if s.subsections.iter().any(|x| x == h) {
                out.push(at(
                    n,
                    "changelog-subsection",
                    format!("a second `### {h}` in [{}]", s.label),
                ));
            }
            s.subsections.push(h.to_string());
            s.open_sub = Some((h.to_string(), n, false));
            continue;
        }
        if line.starts_with("# ") {
            out.push(at(
                n,
                "changelog-heading",
                "only one `#` title; sections are `##`, subsections `###`".into(),
            ));
            continue;
        }
        // content
        if let Some(s) = sections.last_mut() {
            if s.open_sub.is_none() {
                out.push(at(
                    n,
                    "changelog-subsection",
                    format!(
                        "entry outside a subsection in [{}]: put it under `### Added`, \
                         `### Changed`, `### Deprecated`, `### Removed`, `### Fixed` or \
                         `### Security`",
                        s.label
                    ),
                ));
            }
            mark_content(s, &mut log);
        }
    }
    if let Some(s) = sections.last_mut() {
        close_sub(s, out);
    }
    if !title_seen {
        out.push(at(1, "changelog-title", "the changelog is empty".into()));
        return log;
    }
    if log.unreleased_line.is_none() {
        out.push(at(
            sections.first().map_or(1, |s| s.line),
            "changelog-unreleased",
            "no `## [Unreleased]` section".into(),
        ));
    }
    check_refs(&sections, &refs, content_after_refs, &log, out);
    log
}

fn mark_content(s: &mut Section, log: &mut Changelog) {
    s.has_entries = true;
    if let Some(sub) = s.open_sub.as_mut() {
        sub.2 = true;
    }
    if s.label == "Unreleased" {
        log.unreleased_has_entries = true;
    }
}

fn check_refs(
    sections: &[Section],
    refs: &[LinkRef],
    content_after_refs: Option<usize>,
    log: &Changelog,
    out: &mut Vec<Finding>,
) {
    let at = |line: usize, rule: &str, message: String| Finding::new(FILE, line, rule, message);
    if let (Some(first), Some(content)) = (refs.first(), content_after_refs) {
        out.push(at(
            first.line,
            "changelog-links",
            format!("link references must be at the bottom (content follows on line {content})"),
        ));
    }
    let key = |s: &str| s.to_ascii_lowercase();
    let mut matched = Vec::new();
    for r in refs {
        if refs
            .iter()
            .any(|o| o.line < r.line && key(&o.label) == key(&r.label))
        {
            out.push(at(
                r.line,
                "changelog-links",
                format!("a second link reference for [{}]", r.label),
            ));
            continue;
        }
        match sections.iter().position(|s| key(&s.label) == key(&r.label)) {
            Some(i) => matched.push((i, r)),
            None => out.push(at(
                r.line,
                "changelog-links",
                format!("link reference [{}] matches no heading", r.label),
            )),
        }
    }
    for s in sections {
        if !refs.iter().any(|r| key(&r.label) == key(&s.label)) {
            out.push(at(
                s.line,
                "changelog-links",
                format!(
                    "[{}] has no link reference at the bottom (`[{}]: URL`)",
                    s.label, s.label
                ),
            ));
        }
    }
    if matched.windows(2).any(|w| w[0].0 > w[1].0)
        && let Some(first) = matched.first()
    {
        out.push(at(
            first.1.line,
            "changelog-links",
            "link references must be in the order of the headings".into(),
        ));
    }
    let newest = log.releases.first().map(|r| r.version);
    for (i, r) in &matched {
        let s = &sections[*i];
        if r.url.is_empty() || r.url.contains(char::is_whitespace) {
            out.push(at(
                r.line,
                "changelog-links",
                format!("link reference [{}] has no URL", r.label),
            ));
        } else if s.label == "Unreleased" {
            if let Some(v) = newest
                && !r.url.contains(&format!("v{v}"))
            {
                out.push(at(
                    r.line,
                    "changelog-links",
                    format!("the [Unreleased] link must compare from the newest tag v{v}"),
                ));
            }
        } else if !r.url.contains(&format!("v{}", s.label)) {
            out.push(at(
                r.line,
                "changelog-links",
                format!(
                    "the link of [{}] does not name its tag v{}",
                    s.label, s.label
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> (Changelog, Vec<String>) {
        let mut out = Vec::new();
        let c = check(text, &mut out);
        (c, out.iter().map(|f| f.to_string()).collect())
    }

    const GOOD: &str = "# Changelog\n\nIntro text.\n\n## [Unreleased]\n\n### Added\n- x\n\n## [1.2.0] - 2026-02-28\n\n### Fixed\n- y\n  continued\n\n### Security\n- z\n\n## [1.1.10] - 2024-02-29 [YANKED]\n\n### Changed\n- w\n\n[Unreleased]: https://e.invalid/compare/v1.2.0...HEAD\n[1.2.0]: https://e.invalid/compare/v1.1.10...v1.2.0\n[1.1.10]: https://e.invalid/releases/tag/v1.1.10\n";

    #[test]
    fn a_valid_changelog() {
        let (c, e) = run(GOOD);
        assert_eq!(e, Vec::<String>::new());
        assert_eq!(c.unreleased_line, Some(5));
        assert!(c.unreleased_has_entries);
        let v: Vec<String> = c.releases.iter().map(|r| r.version.to_string()).collect();
        assert_eq!(v, ["1.2.0", "1.1.10"]);
    }

    #[test]
    fn order_dates_and_subsections() {
        let (_, e) = run(&GOOD.replace("1.1.10", "1.3.0"));
        assert_eq!(
            e,
            [
                "CHANGELOG.md:19: [1.3.0] must come before [1.2.0] (line 10): releases are listed newest first, in descending SemVer order"
            ]
        );
        let (_, e) = run(&GOOD.replace("2026-02-28", "2026-02-30"));
        assert!(
            e.iter()
                .any(|e| e.starts_with("CHANGELOG.md:10: `## [1.2.0] - 2026-02-30` is neither")),
            "{e:?}"
        );
        let (_, e) = run(&GOOD.replace("### Security", "### Notes"));
        assert!(
            e.iter().any(|e| e
                .starts_with("CHANGELOG.md:16: `### Notes` is not a Keep a Changelog subsection")),
            "{e:?}"
        );
        let (_, e) = run(&GOOD.replace("### Fixed\n- y\n  continued\n", "### Fixed\n"));
        assert!(
            e.contains(&"CHANGELOG.md:12: empty subsection `### Fixed`".to_string()),
            "{e:?}"
        );
    }

    #[test]
    fn unreleased_first() {
        let t = GOOD.replace("## [Unreleased]\n\n### Added\n- x\n\n", "");
        let (_, e) = run(&t);
        assert!(
            e.iter()
                .any(|e| e.contains("the first section must be `## [Unreleased]`")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("link reference [Unreleased] matches no heading")),
            "{e:?}"
        );
    }

    #[test]
    fn link_references() {
        let (_, e) = run(&GOOD.replace("[1.1.10]: https://e.invalid/releases/tag/v1.1.10\n", ""));
        assert_eq!(
            e,
            ["CHANGELOG.md:19: [1.1.10] has no link reference at the bottom (`[1.1.10]: URL`)"]
        );
        let (_, e) = run(&format!("{GOOD}\nMore text.\n"));
        assert_eq!(
            e,
            ["CHANGELOG.md:24: link references must be at the bottom (content follows on line 28)"]
        );
        let (_, e) = run(&GOOD.replace("compare/v1.1.10...v1.2.0", "compare/v1.1.9...v1.2.1"));
        assert_eq!(
            e,
            ["CHANGELOG.md:25: the link of [1.2.0] does not name its tag v1.2.0"]
        );
        let (_, e) = run(&format!("{GOOD}[0.9.0]: https://e.invalid/v0.9.0\n"));
        assert_eq!(
            e,
            ["CHANGELOG.md:27: link reference [0.9.0] matches no heading"]
        );
    }
}
