//! The pipeline runs one way: no cycle between the library's top-level modules, and the shared
//! `model` depends on nothing of the pipeline.
//!
//! Why a test: the module tree is the map a contributor reads first (`lib.rs`,
//! DEVELOPMENT.md); a back edge (`plan` importing `record`, a stage importing a later one
//! that imports it back) makes every stage depend on all the others. Edges are the
//! `crate::<module>` paths of each top-level module's non-test code, as written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Top-level modules: `src/<name>.rs` and `src/<name>/`.
fn modules() -> BTreeSet<String> {
    std::fs::read_dir(SRC)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let module = if e.path().is_dir() {
                name
            } else {
                name.strip_suffix(".rs")?.to_string()
            };
            (!matches!(module.as_str(), "lib" | "main")).then_some(module)
        })
        .collect()
}

/// Every `.rs` file of a top-level module, test files left out.
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let file = Path::new(SRC).join(format!("{module}.rs"));
    if file.is_file() {
        out.push(file);
    }
    let mut stack = vec![Path::new(SRC).join(module)];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                && p.file_name().is_some_and(|n| n != "tests.rs")
            {
                out.push(p);
            }
        }
    }
    out
}

/// The text before the first `#[cfg(test)]` (test modules sit at the end of a file), without
/// line comments.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `crate::X` and `use crate::{X, ...}` references to other top-level modules.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &mods {
        let deps = graph.entry(m.clone()).or_default();
        for f in files_of(m) {
            let code = code_of(&f);
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(|s| s.trim().split("::").next().unwrap_or_default())
                        .collect(),
                    None => vec![
                        rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or_default(),
                    ],
                };
                for n in names {
                    if n != m && mods.contains(n) {
                        deps.insert(n.to_string());
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one (depth-first search for a path back to it).
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_string());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_cycle_between_top_level_modules() {
    let graph = edges();
    assert!(
        graph.len() > 10,
        "found too few modules in {SRC}: {graph:?}"
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_through(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(
        cycles.is_empty(),
        "the pipeline must run one way; cycles between top-level modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_model_depends_on_nothing_of_the_pipeline() {
    let graph = edges();
    let allowed: BTreeSet<String> = ["error", "provenance"].map(String::from).into();
    let deps = &graph["model"];
    assert!(
        deps.is_subset(&allowed),
        "model may use only {allowed:?}, uses {deps:?}"
    );
}

#[test]
fn the_stages_depend_only_on_earlier_stages() {
    let graph = edges();
    let order = [
        "source", "render", "observe", "plan", "apply", "verify", "record",
    ];
    for (i, stage) in order.iter().enumerate() {
        for later in &order[i + 1..] {
            // apply runs the verify and record phases of its own transaction
            if *stage == "apply" {
                continue;
            }
            assert!(
                !graph[*stage].contains(*later),
                "{stage} depends on the later stage {later}"
            );
        }
    }
}

/// The checker itself: a planted back edge is a cycle, a line is not.
#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default();
    assert_eq!(cycle_through(&g, "a"), None);
    g.get_mut("c").unwrap().insert("a".into());
    assert_eq!(
        cycle_through(&g, "a"),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
