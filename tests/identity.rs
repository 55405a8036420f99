//! Identity of a build: `core-ops --version` prints the package
//! version, the build's git revision and the rustc version, and the provenance recorded in
//! status.json, every receipt, the results document and the plan is that same build.

mod common;

use std::process::Command;

use common::world::world;
use serde_json::Value;

/// `--version` of a binary, without the leading binary name.
fn version_of(bin: &str, name: &str) -> String {
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(out.status.success(), "{bin} --version failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let text = text.trim_end();
    text.strip_prefix(&format!("{name} "))
        .unwrap_or_else(|| panic!("`{text}` does not start with `{name} `"))
        .to_string()
}

#[test]
fn version_prints_package_version_revision_and_rustc() {
    let ops = version_of(env!("CARGO_BIN_EXE_core-ops"), "core-ops");
    let p = core_ops::provenance::Provenance::current();
    assert_eq!(ops, p.long_version());
    assert!(
        ops.starts_with(&format!("{} (build ", env!("CARGO_PKG_VERSION"))),
        "{ops}"
    );
    assert!(p.rustc.starts_with("rustc 1."), "{}", p.rustc);
    // the revision is the checkout's HEAD (when built from a git checkout)
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(head) = head {
        let rev = p.build_revision.trim_end_matches("-dirty");
        assert_eq!(rev, head, "build revision {} is not HEAD", p.build_revision);
    }
}

#[test]
fn records_carry_the_provenance_that_version_prints() {
    let Some(mut w) = world("identity") else {
        return;
    };
    let printed = version_of(env!("CARGO_BIN_EXE_core-ops"), "core-ops");
    let v1 = w.commit(w.fx());
    let (code, r) = w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    let long = |v: &Value, what: &str| {
        let p: core_ops::provenance::Provenance = serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{what}: core_ops is not a provenance: {e}: {v}"));
        assert!(!p.rustc.is_empty(), "{what}: no rustc in {v}");
        p.long_version()
    };
    assert_eq!(long(&w.status()["core_ops"], "status.json"), printed);
    let receipts = w.receipts();
    assert!(!receipts.is_empty());
    for (i, receipt) in receipts.iter().enumerate() {
        assert_eq!(long(&receipt["core_ops"], &format!("receipt {i}")), printed);
    }
    let results: Value =
        serde_json::from_slice(&std::fs::read(r["results_path"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(long(&results["core_ops"], "results"), printed);
    let plan = w.run(&["--json", "plan", "--rev", &v1]);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(long(&plan["core_ops"], "plan"), printed);
    w.teardown();
}
