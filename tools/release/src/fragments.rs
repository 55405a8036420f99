//! Release fragments: `changes/<change-id>.md`, each opening with YAML front matter that states
//! the change's SemVer bump.
//!
//! Why: the fragment is the machine-checkable release intent of one change; the version policy
//! adds up the bumps of the fragments added since a base.

use std::path::Path;

use serde_yaml::Value;

use super::Finding;
use super::version::Bump;

/// The directory of the fragments, relative to the repository root.
pub const DIR: &str = "changes";

/// The keys a fragment's front matter may have.
pub const KEYS: [&str; 4] = ["change_id", "bump", "summary", "release_preparation"];

/// One valid fragment.
///
/// Why: the version policy needs the bump and the flag; findings need the path and lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Repository-relative path, `changes/<change-id>.md`.
    pub path: String,
    /// The change id (= the file stem).
    pub change_id: String,
    /// How far the change moves the version.
    pub bump: Bump,
    /// One line for humans.
    pub summary: String,
    /// Declares a metadata-only release preparation.
    pub release_preparation: bool,
    /// Line of `release_preparation:` (1 when absent), for findings about it.
    pub release_preparation_line: usize,
}

/// Read and check every fragment under `root/changes/`. Returns the valid ones (sorted by
/// path) and appends a finding for each problem.
///
/// Why both: one run reports every problem, and the version policy still works on the
/// fragments that are fine.
pub fn check_dir(root: &Path, out: &mut Vec<Finding>) -> Vec<Fragment> {
    let dir = root.join(DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut valid = Vec::new();
    for name in names {
        let rel = format!("{DIR}/{name}");
        let path = dir.join(&name);
        let Some(stem) = name.strip_suffix(".md").filter(|_| path.is_file()) else {
            out.push(Finding::new(
                &rel,
                1,
                "fragment-name",
                "not a release fragment: changes/ holds only <change-id>.md files",
            ));
            continue;
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse(&rel, stem, &text) {
                Ok(f) => valid.push(f),
                Err(mut fs) => out.append(&mut fs),
            },
            Err(e) => out.push(Finding::new(
                &rel,
                1,
                "fragment-read",
                format!("cannot read: {e}"),
            )),
        }
    }
    valid
}

/// A change id: lowercase ASCII letters and digits in hyphen-separated words.
///
/// Why: it is a file name, a tag in reviews and part of URLs; one spelling avoids duplicates
/// that differ only in case or separators.
pub fn valid_change_id(s: &str) -> bool {
    !s.is_empty()
        && s.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Parse one fragment (`rel` is its repository-relative path, `stem` its file stem).
///
/// Why separate from the directory walk: unit tests feed it text directly.
pub fn parse(rel: &str, stem: &str, text: &str) -> Result<Fragment, Vec<Finding>> {
    let at = |line: usize, rule: &str, message: String| Finding::new(rel, line, rule, message);
    let lines: Vec<&str> = text.lines().collect();
    if lines.first().map(|l| l.trim_end()) != Some("---") {
        return Err(vec![at(
            1,
            "fragment-front-matter",
            "no front matter: the first line must be `---`, followed by change_id, bump and \
             summary and a closing `---`"
                .into(),
        )]);
    }
    let Some(close) = lines
        .iter()
        .skip(1)
        .position(|l| matches!(l.trim_end(), "---" | "..."))
        .map(|p| p + 1)
    else {
        return Err(vec![at(
            1,
            "fragment-front-matter",
            "front matter is not closed: no second `---` line".into(),
        )]);
    };
    let yaml_lines = &lines[1..close];
    let yaml = yaml_lines.join("\n");
    // front matter line i (0-based) is file line i + 2
    let key_line = |key: &str| {
        yaml_lines
            .iter()
            .position(|l| {
                l.strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            })
            .map_or(1, |i| i + 2)
    };
    let value: Value = match serde_yaml::from_str(&yaml) {
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map_or(1, |l| l.line() + 1);
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            return Err(vec![at(
                line,
                "fragment-yaml",
                format!("malformed YAML front matter: {msg}"),
            )]);
        }
    };
    let Value::Mapping(map) = value else {
        return Err(vec![at(
            2,
            "fragment-yaml",
            "front matter must be a YAML mapping of change_id, bump, summary".into(),
        )]);
    };

    let mut errs = Vec::new();
    if !valid_change_id(stem) {
        errs.push(at(
            1,
            "fragment-change-id",
            format!(
                "file name `{stem}` is not a valid change id (lowercase letters and digits in \
                 hyphen-separated words)"
            ),
        ));
    }
    for k in map.keys() {
        match k.as_str() {
            Some(k) if KEYS.contains(&k) => {}
            Some(k) => errs.push(at(
                key_line(k),
                "fragment-unknown-key",
                format!(
                    "unknown key `{k}` (allowed: change_id, bump, summary, release_preparation)"
                ),
            )),
            None => errs.push(at(
                2,
                "fragment-unknown-key",
                format!("keys must be strings, found {}", yaml_inline(k)),
            )),
        }
    }
    let get = |k: &str| map.get(k);

    let change_id = match get("change_id") {
        None => {
            errs.push(at(
                1,
                "fragment-change-id",
                format!("missing `change_id: {stem}`"),
            ));
            None
        }
        Some(Value::String(id)) if id == stem => Some(id.clone()),
        Some(Value::String(id)) => {
            errs.push(at(
                key_line("change_id"),
                "fragment-change-id",
                format!("change_id `{id}` does not match the file name (expected `{stem}`)"),
            ));
            None
        }
        Some(v) => {
            errs.push(at(
                key_line("change_id"),
                "fragment-change-id",
                format!("change_id must be a string, found {}", yaml_inline(v)),
            ));
            None
        }
    };
    let bump = match get("bump") {
        None => {
            errs.push(at(
                1,
                "fragment-bump",
                "missing `bump: patch | minor | major`".into(),
            ));
            None
        }
        Some(v) => match v.as_str().and_then(Bump::parse) {
            Some(b) => Some(b),
            None => {
                errs.push(at(
                    key_line("bump"),
                    "fragment-bump",
                    format!(
                        "bump must be patch, minor or major, found {}",
                        yaml_inline(v)
                    ),
                ));
                None
            }
        },
    };
    let summary = match get("summary") {
        None => {
            errs.push(at(
                1,
                "fragment-summary",
                "missing `summary: \"one line\"`".into(),
            ));
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            errs.push(at(
                key_line("summary"),
                "fragment-summary",
                "summary is empty".into(),
            ));
            None
        }
        Some(Value::String(s)) if s.trim_end().contains('\n') => {
            errs.push(at(
                key_line("summary"),
                "fragment-summary",
                "summary must be one line".into(),
            ));
            None
        }
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(v) => {
            errs.push(at(
                key_line("summary"),
                "fragment-summary",
                format!("summary must be a string, found {}", yaml_inline(v)),
            ));
            None
        }
    };
    let release_preparation = match get("release_preparation") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            errs.push(at(
                key_line("release_preparation"),
                "fragment-release-preparation",
                format!(
                    "release_preparation must be true or false, found {}",
                    yaml_inline(v)
                ),
            ));
            false
        }
    };
    match (change_id, bump, summary) {
        (Some(change_id), Some(bump), Some(summary)) if errs.is_empty() => Ok(Fragment {
            path: rel.to_string(),
            change_id,
            bump,
            summary,
            release_preparation,
            release_preparation_line: key_line("release_preparation"),
        }),
        _ => Err(errs),
    }
}

/// A YAML value on one line, for messages.
fn yaml_inline(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Null => "nothing".into(),
        other => serde_yaml::to_string(other)
            .map(|s| format!("`{}`", s.trim().replace('\n', " ")))
            .unwrap_or_else(|_| "a value of another type".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Fragment {
        parse("changes/x-y.md", "x-y", text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn err(text: &str) -> Vec<String> {
        parse("changes/x-y.md", "x-y", text)
            .unwrap_err()
            .iter()
            .map(|f| f.to_string())
            .collect()
    }

    #[test]
    fn a_valid_fragment() {
        let f = ok("---\nchange_id: x-y\nbump: minor\nsummary: \"Adds x\"\n---\nbody\n");
        assert_eq!(f.bump, Bump::Minor);
        assert_eq!(f.summary, "Adds x");
        assert!(!f.release_preparation);
        let f =
            ok("---\nchange_id: x-y\nbump: patch\nsummary: s\nrelease_preparation: true\n---\n");
        assert!(f.release_preparation);
        assert_eq!(f.release_preparation_line, 5);
    }

    #[test]
    fn every_problem_names_its_line() {
        assert_eq!(
            err("---\nchange_id: x-y\nbump: huge\nsummary: s\nextra: 1\n---\n"),
            vec![
                "changes/x-y.md:5: unknown key `extra` (allowed: change_id, bump, summary, release_preparation)",
                "changes/x-y.md:3: bump must be patch, minor or major, found `huge`",
            ]
        );
        assert_eq!(
            err("---\nchange_id: other\nbump: patch\nsummary: s\n---\n"),
            vec![
                "changes/x-y.md:2: change_id `other` does not match the file name (expected `x-y`)"
            ]
        );
        assert_eq!(
            err("---\nchange_id: x-y\nbump: patch\nsummary: |\n  two\n  lines\n---\n"),
            vec!["changes/x-y.md:4: summary must be one line"]
        );
        assert_eq!(
            err("---\nchange_id: x-y\nbump: patch\nsummary: s\nrelease_preparation: yes\n---\n"),
            vec!["changes/x-y.md:5: release_preparation must be true or false, found `yes`"]
        );
        assert_eq!(
            err("---\nchange_id: x-y\nsummary: s\n---\n"),
            vec!["changes/x-y.md:1: missing `bump: patch | minor | major`"]
        );
    }

    #[test]
    fn malformed_yaml_and_missing_front_matter() {
        let e = err("---\nchange_id: x-y\nbump: [minor\nsummary: s\n---\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("malformed YAML"), "{e:?}");
        let e = err("---\nchange_id: x-y\nbump: minor\nbump: major\nsummary: s\n---\n");
        assert!(
            e[0].contains("malformed YAML") && e[0].contains("duplicate"),
            "{e:?}"
        );
        assert!(err("no front matter\n")[0].starts_with("changes/x-y.md:1: no front matter"));
        assert!(err("---\nchange_id: x-y\n")[0].contains("not closed"));
    }

    #[test]
    fn change_ids() {
        assert!(valid_change_id("core-ops-plan"));
        assert!(valid_change_id("v2"));
        for bad in ["", "Core", "a--b", "-a", "a_b", "a.b"] {
            assert!(!valid_change_id(bad), "{bad}");
        }
    }
}
