use super::*;

/// A scratch verification tree: `verification/{scenarios,repos/basic/v1,repos/basic/v2}`.
fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let scen = t.path().join("verification/scenarios");
    let repos = t.path().join("verification/repos");
    std::fs::create_dir_all(&scen).unwrap();
    for r in ["basic/v1", "basic/v2"] {
        std::fs::create_dir_all(repos.join(r)).unwrap();
    }
    (t, scen, repos)
}

const GOOD: &str = "id: good-one
title: Good
claim: An apply converges.
classes: [install]
fixtures:
  repository_evolution: [basic/v1, basic/v2]
steps:
  - apply: v1
    expect_exit: 2
  - assert:
      - unit: a.service
        active_state: active
      - status: /last_applied/revision
        revision: v1
";

fn load_text(text: &str) -> Result<LoadedScenario, InputError> {
    let (_t, scen, repos) = tree();
    let p = scen.join("s.yaml");
    std::fs::write(&p, text).unwrap();
    load(&p, &repos)
}

#[test]
fn a_valid_scenario_loads_with_defaults() {
    let l = load_text(GOOD).unwrap();
    assert_eq!(l.scenario.environment, "default");
    assert_eq!(l.scenario.host, "core-ops-guest");
    assert_eq!(l.scenario.steps[0].action(), ("apply", "v1".to_string()));
    assert_eq!(
        repos_dir_for(&l.path),
        l.path.parent().unwrap().parent().unwrap().join("repos")
    );
}

/// Each rule names the file and the line of the offending part.
#[test]
fn schema_errors_name_file_and_line() {
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "title: Good\n",
            "title: Good\ncolour: red\n",
            3,
            "unknown field `colour`",
        ),
        (
            "  - apply: v1\n",
            "  - apply: v1\n    plan: v1\n",
            8,
            "2 actions in one step",
        ),
        (
            "  - apply: v1\n",
            "  - apply: v9\n",
            8,
            "revision \"v9\" is not a fixture revision",
        ),
        (
            "classes: [install]",
            "classes: [instal]",
            4,
            "unknown class \"instal\"",
        ),
        ("basic/v2]", "basic/v3]", 6, "no directory"),
        (
            "        active_state: active\n",
            "        sha256: abc\n",
            10,
            "`sha256` does not apply to a unit assertion",
        ),
        (
            "    expect_exit: 2\n",
            "    expect_exit: 2\n  - stop_unit: a.service\n    expect_exit: 0\n",
            10,
            "expect_exit is only for",
        ),
    ];
    for (from, to, line, msg) in cases.iter().chain(NEW_RULES) {
        assert!(GOOD.contains(from), "{from}");
        let err = load_text(&GOOD.replacen(from, to, 1)).unwrap_err();
        assert!(err.to_string().contains(msg), "{to}: {err}");
        assert_eq!(err.location.line, Some(*line), "{to}: {err}");
        assert!(err.location.file.ends_with("s.yaml"));
    }
}

/// The rules of the newer vocabulary, each with the line it names.
const NEW_RULES: &[(&str, &str, usize, &str)] = &[
    // a `run:` whose exit code nobody checks can never fail
    (
        "  - apply: v1\n    expect_exit: 2\n",
        "  - run: \"true\"\n",
        8,
        "`run:` needs expect_exit",
    ),
    (
        "    expect_exit: 2\n",
        "    expect_exit: 2\n    timeout: 99999\n",
        8,
        "timeout 99999: use 1 to 7200",
    ),
    (
        "  - apply: v1\n    expect_exit: 2\n",
        "  - kill_apply: {rev: v1, at: somewhere}\n",
        8,
        "kill_apply at \"somewhere\"",
    ),
    (
        "  - apply: v1\n    expect_exit: 2\n",
        "  - concurrent: {runs: 3, apply: v1}\n    expect_exits: [0, 75]\n",
        8,
        "expect_exits lists 2 exit codes for 3 runs",
    ),
    (
        "  - apply: v1\n    expect_exit: 2\n",
        "  - concurrent: {runs: 3, apply: v1}\n",
        8,
        "concurrent needs expect_exits",
    ),
    (
        "  - apply: v1\n    expect_exit: 2\n",
        "  - stop_unit: a.service\n    host: other\n",
        8,
        "host is only for steps that run core-ops",
    ),
    (
        "  - apply: v1\n    expect_exit: 2\n",
        "  - apply: v1\n    detailed_exitcode: true\n",
        8,
        "detailed_exitcode is only for `plan`",
    ),
    (
        "  - apply: v1\n    expect_exit: 2\n",
        "  - git: {force_ref: main, to: v7}\n",
        8,
        "revision \"v7\" is not a fixture revision",
    ),
    (
        "  - apply: v1\n    expect_exit: 2\n",
        "  - git: {commit: basic/v2, force_ref: main, to: v1}\n",
        8,
        "git: give exactly one of",
    ),
    (
        "  - apply: v1\n    expect_exit: 2\n",
        "  - git: {commit: basic/v2}\n",
        8,
        "the label \"v2\" is used twice",
    ),
    (
        "        active_state: active\n",
        "        active_state: active\n        mounted: true\n",
        10,
        "`mounted` does not apply to a unit assertion",
    ),
    (
        "      - status: /last_applied/revision\n",
        "      - output_json: /x\n        step: 1\n        equals: 1\n      - status: /last_applied/revision\n",
        10,
        "steps[1] is not an earlier core-ops step",
    ),
    (
        "      - status: /last_applied/revision\n",
        "      - receipt: -1\n        pointer: /transition\n      - status: /last_applied/revision\n",
        10,
        "a receipt assertion needs equals",
    ),
    (
        "      - status: /last_applied/revision\n",
        "      - file: /etc/x\n        mode: \"0999\"\n      - status: /last_applied/revision\n",
        10,
        "is not octal",
    ),
];

/// The new steps and assertions load: labels from `git:` steps count from that step on, any
/// string goes to rollback_to, a `run:` with expect_exit is fine.
#[test]
fn the_new_vocabulary_loads() {
    let text = GOOD.replace(
        "  - assert:\n",
        r#"  - git: {tag: rel-1, at: v1, annotated: true}
  - git: {force_ref: main, to: v1}
  - apply: rel-1
    expect_exit: 0
    host: other-host
  - rollback_to: no-such-revision
    expect_exit: 1
  - rollback_plan_only: v1
    expect_exit: 0
  - kill_apply: {rev: v2, at: after-write:1}
  - kill_apply: v2
  - concurrent: {runs: 2, apply: v2}
    expect_exits: [0, 75]
  - remember_unit: a.service
  - hold_busy: /srv/x
  - set_clock: 2030-01-01T00:00:00Z
  - chmod: {path: /etc/x, mode: "0600"}
  - chown: {path: /etc/x, owner: "root:root"}
  - make_dir: /etc/d
  - run: "true"
    expect_exit: 0
    timeout: 1200
  - assert:
      - {unit: a.service, restarted: false, n_restarts: 0}
      - {mount: /srv/x, mounted: true, fstype: tmpfs}
      - {receipt: -1, pointer: /transition, equals: applied}
      - {receipts_tail: [applied]}
      - {receipts_count: 1}
      - {receipt_chain: true}
      - {output_json: /actions, step: 3, contains: {id: x}}
      - {file: /etc/d, entries: [], mode: "0755", owner: root}
      - {no_temp_files: /etc}
      - {status: /last_applied/revision, revision: rel-1}
  - assert:
"#,
    );
    let l = load_text(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.scenario.steps[15].timeout, Some(1200));
    assert_eq!(
        l.scenario.steps[6].action(),
        ("kill_apply", "v2 at after-write:1".to_string())
    );
    let k = l.scenario.steps[6].kill_apply.clone().unwrap();
    assert_eq!(
        k.failpoint(),
        Some((
            "apply::after-write=return(1)".to_string(),
            "apply::after-write(1)".to_string()
        ))
    );
    // a tag the scenario makes is a label only after the step that makes it
    let early =
        GOOD.replace("  - apply: v1\n", "  - apply: rel-1\n") + "  - git: {tag: rel-1, at: v1}\n";
    let err = load_text(&early).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"rel-1\" is not a fixture revision"),
        "{err}"
    );
}

#[test]
fn duplicate_ids_in_a_directory_are_refused() {
    let (_t, scen, repos) = tree();
    std::fs::write(scen.join("a.yaml"), GOOD).unwrap();
    std::fs::write(scen.join("b.yaml"), GOOD).unwrap();
    let err = load_dir(&scen, &repos).unwrap_err();
    assert!(err.to_string().contains("duplicate scenario id"), "{err}");
}

/// The corpus that ships is valid and covers every class (the release gate's precondition).
#[test]
fn the_shipped_corpus_is_valid_and_covers_every_class() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/fixtures/verification/scenarios");
    let loaded = load_dir(&dir, &repos_dir_for(&dir)).unwrap();
    assert!(
        loaded.len() >= 12,
        "only {} accepted scenarios",
        loaded.len()
    );
    for c in CLASSES {
        assert!(
            loaded
                .iter()
                .any(|l| l.scenario.classes.iter().any(|x| x == c)),
            "no accepted scenario of class {c}"
        );
    }
    let cand = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/fixtures/verification/generated_candidates");
    load_dir(&cand, &repos_dir_for(&cand)).unwrap();
}
