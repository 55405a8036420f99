//! Deterministic dependency order: Kahn's algorithm with ties broken by id, so the same graph
//! always gives the same order whatever order its nodes were found in.

use std::collections::{BTreeMap, BTreeSet};

/// Order `nodes` so every node comes after the nodes in its `deps` that are also in `nodes`.
/// Returns the order and the nodes that were part of a cycle (appended in id order).
pub fn topo_order(
    nodes: &BTreeSet<String>,
    deps: &BTreeMap<String, BTreeSet<String>>,
) -> (Vec<String>, Vec<String>) {
    let mut indegree: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    let mut dependents: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for n in nodes {
        for d in deps.get(n).into_iter().flatten() {
            if d != n && nodes.contains(d) {
                *indegree.get_mut(n.as_str()).expect("node") += 1;
                dependents.entry(d.as_str()).or_default().insert(n.as_str());
            }
        }
    }
    let mut ready: BTreeSet<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut out = Vec::with_capacity(nodes.len());
    while let Some(n) = ready.pop_first() {
        out.push(n.to_string());
        for m in dependents.get(n).into_iter().flatten() {
            let d = indegree.get_mut(m).expect("node");
            *d -= 1;
            if *d == 0 {
                ready.insert(m);
            }
        }
    }
    let placed: BTreeSet<&str> = out.iter().map(String::as_str).collect();
    let cycle: Vec<String> = nodes
        .iter()
        .filter(|n| !placed.contains(n.as_str()))
        .cloned()
        .collect();
    out.extend(cycle.iter().cloned());
    (out, cycle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dependencies_first_ties_by_id() {
        let nodes = set(&["a", "b", "c", "d"]);
        let mut deps = BTreeMap::new();
        deps.insert("a".to_string(), set(&["d"]));
        deps.insert("b".to_string(), set(&["x-not-a-node"]));
        let (order, cycle) = topo_order(&nodes, &deps);
        assert_eq!(order, vec!["b", "c", "d", "a"]);
        assert!(cycle.is_empty());
    }

    #[test]
    fn cycles_are_reported_and_still_ordered() {
        let nodes = set(&["a", "b", "c"]);
        let mut deps = BTreeMap::new();
        deps.insert("a".to_string(), set(&["b"]));
        deps.insert("b".to_string(), set(&["a"]));
        let (order, cycle) = topo_order(&nodes, &deps);
        assert_eq!(order, vec!["c", "a", "b"]);
        assert_eq!(cycle, vec!["a", "b"]);
    }
}
