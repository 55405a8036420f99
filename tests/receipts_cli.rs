//! `core-ops receipts verify` and the refusal of an appending run on a broken chain, through
//! the real binary (no systemd needed: the chain is checked before systemd is asked).

mod common;

use std::path::Path;

use common::cli::{Scratch, stderr, stdout, tree};
use core_ops::record::receipts;
use core_ops::record::status;

fn append(state: &Path, n: usize) {
    for _ in 0..n {
        receipts::append_document(state, "reconcile", |sequence, prev| {
            serde_json::json!({
                "kind": "CoreOpsReconcileReceipt",
                "sequence": sequence,
                "previous_receipt_digest": prev,
            })
        })
        .unwrap();
    }
}

fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[test]
fn verify_exits_0_with_count_and_head_digest_and_1_naming_the_broken_receipt() {
    let s = Scratch::new();
    let state = s.path("state");
    let o = s.run(&["receipts", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("intact: 0 receipts"), "{}", stdout(&o));

    append(&state, 3);
    let head = receipts::verify(&state, receipts::Depth::Full)
        .unwrap()
        .head_digest
        .unwrap();
    let o = s.run(&["receipts", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("intact: 3 receipts"), "{text}");
    assert!(text.contains(&format!("head 3 {head}")), "{text}");
    let v = json(&s.run(&["receipts", "verify", "--json"]));
    assert_eq!(v["ok"], true);
    assert_eq!(v["receipts"], 3);
    assert_eq!(v["head_digest"], head.as_str());

    let first = state.join("receipts/00000001-reconcile.json");
    let edited = std::fs::read_to_string(&first)
        .unwrap()
        .replace("CoreOps", "Forged");
    std::fs::write(&first, edited).unwrap();
    let o = s.run(&["receipts", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text.contains("BROKEN"), "{text}");
    assert!(
        text.contains("00000002-reconcile.json (wrong_link)"),
        "{text}"
    );
    assert!(text.contains("repair: review"), "{text}");
    let o = s.run(&["receipts", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["ok"], false);
    assert_eq!(v["problem"]["kind"], "wrong_link");
    assert!(
        v["problem"]["file"]
            .as_str()
            .unwrap()
            .ends_with("00000002-reconcile.json")
    );
    assert!(v["repair"].as_str().unwrap().contains("receipts.broken"));
}

#[test]
fn apply_and_agent_refuse_a_broken_chain_before_anything_changes() {
    let s = Scratch::new();
    let state = s.path("state");
    append(&state, 3);
    status::save(
        &state.join("status.json"),
        &status::StatusSnapshot::new("h"),
    )
    .unwrap();
    std::fs::remove_file(state.join("receipts/00000002-reconcile.json")).unwrap();
    let receipts_before = read_all(&state.join("receipts"));
    for cmd in [
        &["apply", "--repo", "/nonexistent"][..],
        &["agent", "--repo", "/nonexistent"],
    ] {
        let before = tree(s.root());
        let o = s.run(cmd);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("receipt chain: broken at"), "{err}");
        assert!(err.contains("00000003-reconcile.json"), "{err}");
        assert!(err.contains("nothing was changed"), "{err}");
        // the only writes: the lock, status.json (when the verdict changed), the metrics file
        let keep = |p: &String| !p.starts_with("metrics") && p != "state/lock";
        let mut after = tree(s.root());
        after.retain(keep);
        let mut expected = before.clone();
        expected.retain(keep);
        assert_eq!(after, expected, "{cmd:?}");
        assert_eq!(
            read_all(&state.join("receipts")),
            receipts_before,
            "{cmd:?}"
        );
        let metrics = std::fs::read_to_string(s.path("metrics/core-ops.prom")).unwrap();
        assert!(
            metrics.contains("core_ops_receipt_chain_ok 0\n"),
            "{metrics}"
        );
        assert!(metrics.contains("core_ops_last_run_outcome{outcome=\"error\"} 1"));
    }
    let o = s.run(&["status", "--json"]);
    let v = json(&o);
    assert_eq!(v["snapshot"]["receipts"]["ok"], false, "{v}");
    assert_eq!(v["snapshot"]["last_run"]["outcome"], "refused");
    let text = stdout(&s.run(&["status"]));
    assert!(text.contains("receipts   BROKEN"), "{text}");
    assert_eq!(
        std::fs::read_dir(state.join("receipts")).unwrap().count(),
        2,
        "receipts 1 and 3: nothing appended"
    );
}
