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
            "a unit assertion needs",
        ),
        (
            "    expect_exit: 2\n",
            "    expect_exit: 2\n  - stop_unit: a.service\n    expect_exit: 0\n",
            10,
            "expect_exit is only for",
        ),
    ];
    for (from, to, line, msg) in cases {
        assert!(GOOD.contains(from), "{from}");
        let err = load_text(&GOOD.replacen(from, to, 1)).unwrap_err();
        assert!(err.to_string().contains(msg), "{to}: {err}");
        assert_eq!(err.location.line, Some(*line), "{to}: {err}");
        assert!(err.location.file.ends_with("s.yaml"));
    }
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
