//! A systemd unit-file (INI) reader that keeps line numbers, plus the layering rules systemd
//! applies when a unit and its drop-ins are merged.
//!
//! Why our own: we need systemd's exact semantics (comments, continuation lines, empty
//! assignments resetting lists) and `file:line` errors, and nothing else.

use std::collections::BTreeMap;

use crate::error::{InputError, Location};

/// One `Key=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Key as written (systemd keys are case-sensitive).
    pub key: String,
    /// Value with surrounding whitespace trimmed and continuation lines joined.
    pub value: String,
    /// 1-based line of the key.
    pub line: usize,
}

/// One `[Section]` and its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Section name without brackets.
    pub name: String,
    /// 1-based line of the header.
    pub line: usize,
    /// Entries in the order written.
    pub entries: Vec<Entry>,
}

/// A parsed unit file (or drop-in, or Quadlet file: same syntax).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitFile {
    /// Repository path, for errors.
    pub file: String,
    /// Sections in file order (a section may appear twice; systemd merges them).
    pub sections: Vec<Section>,
}

impl UnitFile {
    /// Parse unit-file text. `file` names the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<UnitFile, InputError> {
        // systemd skips a leading UTF-8 byte order mark (editors on other systems write one)
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut sections: Vec<Section> = Vec::new();
        let mut lines = text.lines().enumerate().peekable();
        while let Some((idx, raw)) = lines.next() {
            let lineno = idx + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                if !line.ends_with(']') || line.len() < 3 {
                    return Err(InputError::new(
                        Location::line(file, lineno),
                        format!("malformed section header '{line}'"),
                    ));
                }
                sections.push(Section {
                    name: line[1..line.len() - 1].to_string(),
                    line: lineno,
                    entries: Vec::new(),
                });
                continue;
            }
            let Some(section) = sections.last_mut() else {
                return Err(InputError::new(
                    Location::line(file, lineno),
                    "assignment outside of any [Section]",
                ));
            };
            let Some((key, value)) = line.split_once('=') else {
                return Err(InputError::new(
                    Location::line(file, lineno),
                    format!("expected Key=value, found '{line}'"),
                ));
            };
            let key = key.trim();
            if key.is_empty() || key.chars().any(char::is_whitespace) {
                return Err(InputError::new(
                    Location::line(file, lineno),
                    format!("invalid key '{key}'"),
                ));
            }
            let mut value = value.trim().to_string();
            // Continuation: a trailing backslash joins the next line with a space; comment
            // lines inside a continuation are skipped, as systemd does.
            while value.ends_with('\\') {
                value.pop();
                let Some((_, next)) = lines.next() else { break };
                let next = next.trim();
                if next.starts_with('#') || next.starts_with(';') {
                    value.push('\\');
                    continue;
                }
                let joined = format!("{} {}", value.trim_end(), next);
                value = joined.trim().to_string();
            }
            section.entries.push(Entry {
                key: key.to_string(),
                value,
                line: lineno,
            });
        }
        Ok(UnitFile {
            file: file.to_string(),
            sections,
        })
    }

    /// Entries of every section with this name, in order.
    pub fn entries<'a>(&'a self, section: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.sections
            .iter()
            .filter(move |s| s.name == section)
            .flat_map(|s| s.entries.iter())
    }

    /// Whether a section with this name exists.
    pub fn has_section(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s.name == section)
    }
}

/// Values of one key after layering: an empty assignment clears what came before.
pub type Values = Vec<String>;

/// The effective content of a unit after base file and drop-ins were merged, with systemd's
/// list-reset semantics applied. Sorted maps make its rendering canonical.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effective {
    /// section -> key -> values (in assignment order, after resets).
    pub sections: BTreeMap<String, BTreeMap<String, Values>>,
}

impl Effective {
    /// Merge layers in order (base first). Later layers append; an empty value resets.
    pub fn merge<'a>(layers: impl IntoIterator<Item = &'a UnitFile>) -> Effective {
        let mut eff = Effective::default();
        for layer in layers {
            eff.apply(layer);
        }
        eff
    }

    /// Apply one more layer.
    pub fn apply(&mut self, layer: &UnitFile) {
        for section in &layer.sections {
            let sec = self.sections.entry(section.name.clone()).or_default();
            for e in &section.entries {
                let values = sec.entry(e.key.clone()).or_default();
                if e.value.is_empty() {
                    values.clear();
                } else {
                    values.push(e.value.clone());
                }
            }
        }
        // keys whose list was reset to nothing carry no meaning any more
        for sec in self.sections.values_mut() {
            sec.retain(|_, v| !v.is_empty());
        }
        self.sections.retain(|_, s| !s.is_empty());
    }

    /// The last value of a key (what systemd uses for single-valued settings).
    pub fn last(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// All whitespace-separated words of a list-valued key (`After=a b`, `After=c`).
    pub fn words(&self, section: &str, key: &str) -> Vec<String> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .map(|vals| {
                vals.iter()
                    .flat_map(|v| v.split_whitespace().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Canonical text: sections and keys sorted, values in assignment order.
    pub fn canonical_text(&self) -> String {
        let mut out = String::new();
        for (name, keys) in &self.sections {
            if !out.is_empty() {
                out.push('\n');
            }
            push_section(
                &mut out,
                name,
                keys.iter()
                    .flat_map(|(k, vs)| vs.iter().map(move |v| (k, v))),
            );
        }
        out
    }
}

/// Canonical text of ONE layer (a unit file or a drop-in on its own): comments, blank lines,
/// whitespace and key order are gone; within a key, assignment order stays; values that an
/// empty assignment later in the same file discards are dropped, but the reset itself is
/// kept, because in a drop-in it still clears what earlier layers set.
pub fn canonical_layer_text(file: &UnitFile) -> String {
    let mut sections: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for section in &file.sections {
        let sec = sections.entry(section.name.as_str()).or_default();
        for e in &section.entries {
            let values = sec.entry(e.key.as_str()).or_default();
            if e.value.is_empty() {
                values.clear();
            }
            values.push(e.value.as_str());
        }
    }
    let mut out = String::new();
    for (name, keys) in &sections {
        if !out.is_empty() {
            out.push('\n');
        }
        push_section(
            &mut out,
            name,
            keys.iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k, v))),
        );
    }
    out
}

/// Append `[name]` and its `key=value` lines to canonical text (no allocation per line:
/// a run renders a canonical text for every unit file on both sides).
fn push_section<K: AsRef<str>, V: AsRef<str>>(
    out: &mut String,
    name: &str,
    lines: impl Iterator<Item = (K, V)>,
) {
    out.push('[');
    out.push_str(name);
    out.push_str("]\n");
    for (key, value) in lines {
        out.push_str(key.as_ref());
        out.push('=');
        out.push_str(value.as_ref());
        out.push('\n');
    }
}

// ------------------------------------------------------------------ unit names

/// Whether a unit name is a template (`foo@.service`), which systemd can load but never run.
pub fn is_template(unit: &str) -> bool {
    unit.split_once('@')
        .is_some_and(|(_, rest)| rest.starts_with('.'))
}

/// The units systemd runs for `unit`: itself, or for a template the given instances.
pub fn runtime_units(unit: &str, instances: &[String]) -> Vec<String> {
    if is_template(unit) {
        instances.to_vec()
    } else {
        vec![unit.to_string()]
    }
}

/// `foo@.service` + `a` -> `foo@a.service`.
pub fn instance_name(template: &str, instance: &str) -> String {
    match template.split_once("@.") {
        Some((stem, suffix)) => format!("{stem}@{instance}.{suffix}"),
        None => template.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_comments_and_continuations() {
        let text = "# top\n[Unit]\nDescription = Web  \n; c\n[Service]\nExecStart=/bin/sh -c \\\n  'exec sleep 1'\n";
        let f = UnitFile::parse("x.service", text).unwrap();
        assert_eq!(f.sections.len(), 2);
        assert_eq!(f.sections[0].entries[0].value, "Web");
        assert_eq!(f.sections[1].entries[0].value, "/bin/sh -c 'exec sleep 1'");
        assert_eq!(f.sections[1].entries[0].line, 6);
    }

    #[test]
    fn a_leading_byte_order_mark_is_accepted_as_systemd_does() {
        let f = UnitFile::parse("x.service", "\u{feff}[Unit]\nDescription=bom\n").unwrap();
        assert_eq!(f.sections[0].name, "Unit");
        assert_eq!(f.sections[0].entries[0].line, 2);
    }

    #[test]
    fn errors_name_file_and_line() {
        let err =
            UnitFile::parse("services/a/a.service", "[Unit]\nnot an assignment\n").unwrap_err();
        assert_eq!(err.location, Location::line("services/a/a.service", 2));
        let err = UnitFile::parse("f", "Key=1\n").unwrap_err();
        assert!(err.to_string().starts_with("f:1: assignment outside"));
    }

    #[test]
    fn layering_resets_lists_with_empty_assignment() {
        let base = UnitFile::parse(
            "b",
            "[Unit]\nAfter=a.service b.service\n[Service]\nExecStart=/x\n",
        )
        .unwrap();
        let d1 = UnitFile::parse("d1", "[Unit]\nAfter=\nAfter=c.service\n").unwrap();
        let d2 = UnitFile::parse("d2", "[Service]\nExecStart=\nExecStart=/y\n").unwrap();
        let eff = Effective::merge([&base, &d1, &d2]);
        assert_eq!(eff.words("Unit", "After"), vec!["c.service"]);
        assert_eq!(eff.last("Service", "ExecStart"), Some("/y"));
    }

    #[test]
    fn canonical_layer_ignores_format_but_keeps_value_order_and_resets() {
        let a = UnitFile::parse(
            "a",
            "[Service]\nExecStart=\nExecStart=/a\nExecStart=/b\n[Unit]\nDescription=x\n",
        )
        .unwrap();
        let b = UnitFile::parse("b", "# comment\n[Unit]\n Description = x\n\n[Service]\nExecStart=/old\nExecStart=\nExecStart=/a\nExecStart=/b\n").unwrap();
        assert_eq!(canonical_layer_text(&a), canonical_layer_text(&b));
        let c = UnitFile::parse(
            "c",
            "[Service]\nExecStart=\nExecStart=/b\nExecStart=/a\n[Unit]\nDescription=x\n",
        )
        .unwrap();
        assert_ne!(canonical_layer_text(&a), canonical_layer_text(&c));
    }
}
