//! `core-ops-release validate` and `check-environment` through the real binary, each rule on a
//! fixture repository built at test time with the git CLI (fixed names and dates), passing and
//! failing.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_core-ops-release");

/// A scratch git repository with a valid baseline: Cargo.toml at 0.1.0, a Keep a Changelog
/// file with one entry under [Unreleased], no fragments.
struct Repo {
    dir: tempfile::TempDir,
    commits: u32,
}

const CHANGELOG_010: &str = "# Changelog\n\nAll notable changes.\n\n## [Unreleased]\n\n### Added\n- first feature\n\n[Unreleased]: https://example.invalid/x/commits/main\n";

fn cargo_toml(version: &str) -> String {
    format!(
        "[package]\nname = \"x\"\nversion = \"{version}\"\nedition = \"2024\"\n\n[dependencies]\nserde = {{ version = \"1\" }}\n"
    )
}

fn fragment(id: &str, bump: &str, extra: &str) -> String {
    format!("---\nchange_id: {id}\nbump: {bump}\nsummary: \"{id} change\"\n{extra}---\nBody.\n")
}

impl Repo {
    fn new() -> Repo {
        let r = Repo {
            dir: tempfile::tempdir().unwrap(),
            commits: 0,
        };
        r.git(&["init", "-q", "-b", "main"]);
        r.write("Cargo.toml", &cargo_toml("0.1.0"));
        r.write("CHANGELOG.md", CHANGELOG_010);
        r.write("src/lib.rs", "// code\n");
        r
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) -> String {
        let date = format!("2026-01-01T00:{:02}:00Z", self.commits);
        let out = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .env("GIT_AUTHOR_NAME", "core-ops fixtures")
            .env("GIT_AUTHOR_EMAIL", "fixtures@core-ops.invalid")
            .env("GIT_COMMITTER_NAME", "core-ops fixtures")
            .env("GIT_COMMITTER_EMAIL", "fixtures@core-ops.invalid")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path().join(rel)).unwrap();
    }

    fn commit(&mut self, msg: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.commits += 1;
    }

    /// The released baseline: 0.1.0 with its changelog section, tagged v0.1.0.
    fn released_010() -> Repo {
        let mut r = Repo::new();
        r.write("changes/first.md", &fragment("first", "minor", ""));
        r.write(
            "CHANGELOG.md",
            "# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2026-01-01\n\n### Added\n- first feature\n\n[Unreleased]: https://example.invalid/x/compare/v0.1.0...HEAD\n[0.1.0]: https://example.invalid/x/releases/tag/v0.1.0\n",
        );
        r.commit("0.1.0");
        r.git(&["tag", "v0.1.0"]);
        r
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("CORE_OPS_ACTUAL_VERIFY_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied())
            .args(args)
            .current_dir(self.path())
            .output()
            .unwrap()
    }

    /// `validate` must pass: exit 0, nothing on stdout.
    fn passes(&self, args: &[&str]) {
        let o = self.run(&[&["validate"], args].concat());
        assert_eq!(
            o.status.code(),
            Some(0),
            "expected no findings:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if !args.contains(&"--json") {
            assert!(o.stdout.is_empty());
        }
    }

    /// `validate` must fail with exactly these `file:line: message` lines (prefix match per
    /// line, so messages can say more).
    fn fails(&self, args: &[&str], expected: &[&str]) {
        let o = self.run(&[&["validate"], args].concat());
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(
            o.status.code(),
            Some(1),
            "expected findings:\n{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), expected.len(), "findings:\n{out}");
        for (l, e) in lines.iter().zip(expected) {
            assert!(
                l.starts_with(e),
                "`{l}` does not start with `{e}`\nall:\n{out}"
            );
        }
    }
}

// ------------------------------------------------------------------ fragments

#[test]
fn fragment_front_matter_is_required_and_closed() {
    let mut r = Repo::new();
    r.write("changes/good-one.md", &fragment("good-one", "patch", ""));
    r.commit("fragment");
    r.passes(&[]);
    r.write("changes/plain.md", "Just text.\n");
    r.write("changes/open.md", "---\nchange_id: open\nbump: patch\n");
    r.write("changes/notes.txt", "x\n");
    r.fails(
        &[],
        &[
            "changes/notes.txt:1: not a release fragment",
            "changes/open.md:1: front matter is not closed",
            "changes/plain.md:1: no front matter",
        ],
    );
}

#[test]
fn fragment_keys_values_and_yaml() {
    let r = Repo::new();
    r.write(
        "changes/a.md",
        "---\nchange_id: a\nbump: minor\nsummary: s\nticket: 12\n---\n",
    );
    r.write(
        "changes/b.md",
        "---\nchange_id: a\nbump: big\nsummary: \"\"\n---\n",
    );
    r.write(
        "changes/c.md",
        "---\nchange_id: c\nbump: [minor\nsummary: s\n---\n",
    );
    r.write(
        "changes/d.md",
        "---\nchange_id: d\nbump: patch\nsummary: >-\n  one\n\n  two\nrelease_preparation: maybe\n---\n",
    );
    r.write("changes/e.md", "---\nchange_id: e\nsummary: s\n---\n");
    r.write("changes/Bad_Name.md", &fragment("Bad_Name", "patch", ""));
    r.fails(
        &[],
        &[
            "changes/Bad_Name.md:1: file name `Bad_Name` is not a valid change id",
            "changes/a.md:5: unknown key `ticket`",
            "changes/b.md:2: change_id `a` does not match the file name (expected `b`)",
            "changes/b.md:3: bump must be patch, minor or major, found `big`",
            "changes/b.md:4: summary is empty",
            "changes/c.md:4: malformed YAML front matter",
            "changes/d.md:4: summary must be one line",
            "changes/d.md:8: release_preparation must be true or false, found `maybe`",
            "changes/e.md:1: missing `bump: patch | minor | major`",
        ],
    );
    for f in ["a", "b", "c", "d", "e", "Bad_Name"] {
        r.remove(&format!("changes/{f}.md"));
    }
    r.write(
        "changes/d.md",
        &fragment("d", "patch", "release_preparation: false\n"),
    );
    r.passes(&[]);
}

// ------------------------------------------------------------------ changelog

#[test]
fn changelog_unreleased_comes_first() {
    let r = Repo::released_010();
    r.passes(&[]);
    r.write(
        "CHANGELOG.md",
        "# Changelog\n\n## [0.1.0] - 2026-01-01\n\n### Added\n- first feature\n\n## [Unreleased]\n\n[Unreleased]: https://example.invalid/x/compare/v0.1.0...HEAD\n[0.1.0]: https://example.invalid/x/releases/tag/v0.1.0\n",
    );
    r.fails(
        &[],
        &[
            "CHANGELOG.md:3: the first section must be `## [Unreleased]`",
            "CHANGELOG.md:8: `## [Unreleased]` must be the first section",
            "CHANGELOG.md:10: link references must be in the order of the headings",
        ],
    );
}

#[test]
fn changelog_releases_in_descending_semver_with_valid_dates() {
    let r = Repo::released_010();
    let log = |a: &str, b: &str| {
        format!(
            "# Changelog\n\n## [Unreleased]\n\n## [{a}] - 2026-01-01\n\n### Fixed\n- f\n\n## [{b}]\n\n### Added\n- first feature\n\n[Unreleased]: https://example.invalid/x/compare/v{a}...HEAD\n[{a}]: https://example.invalid/x/compare/v{b}...v{a}\n[{b}]: https://example.invalid/x/releases/tag/v{b}\n"
        )
    };
    // 0.1.0 and 0.0.9 (the latter's heading lacks a date)
    r.write("CHANGELOG.md", &log("0.1.0", "0.0.9"));
    r.fails(&[], &["CHANGELOG.md:10: `## [0.0.9]` is neither"]);
    r.write(
        "CHANGELOG.md",
        &log("0.1.0", "0.0.9").replace("## [0.0.9]", "## [0.0.9] - 2025-12-24"),
    );
    r.passes(&[]);
    r.write(
        "CHANGELOG.md",
        &log("0.0.9", "0.1.0").replace("## [0.1.0]\n", "## [0.1.0] - 2025-13-01\n"),
    );
    r.fails(
        &[],
        &[
            "CHANGELOG.md:10: `## [0.1.0] - 2025-13-01` is neither",
            // the newest release section must be the manifest's version
        ],
    );
    r.write(
        "CHANGELOG.md",
        &log("0.0.9", "0.1.0").replace("## [0.1.0]\n", "## [0.1.0] - 2025-12-01\n"),
    );
    r.fails(
        &[],
        &["CHANGELOG.md:10: [0.1.0] must come before [0.0.9] (line 5)"],
    );
}

#[test]
fn changelog_only_the_six_subsections() {
    let r = Repo::new();
    for (i, s) in [
        "Added",
        "Changed",
        "Deprecated",
        "Removed",
        "Fixed",
        "Security",
    ]
    .iter()
    .enumerate()
    {
        let text = CHANGELOG_010.replace("### Added", &format!("### {s}"));
        r.write("CHANGELOG.md", &text);
        r.passes(&[]);
        assert!(i < 6);
    }
    r.write(
        "CHANGELOG.md",
        &CHANGELOG_010.replace(
            "- first feature\n",
            "- first feature\n\n### Improvements\n- x\n\n### Added\n- again\n\n### Fixed\n\n",
        ),
    );
    r.fails(
        &[],
        &[
            "CHANGELOG.md:10: `### Improvements` is not a Keep a Changelog subsection",
            "CHANGELOG.md:13: a second `### Added` in [Unreleased]",
            "CHANGELOG.md:16: empty subsection `### Fixed`",
        ],
    );
    r.write(
        "CHANGELOG.md",
        &CHANGELOG_010.replace("### Added\n", "- loose entry\n\n### Added\n"),
    );
    r.fails(
        &[],
        &["CHANGELOG.md:7: entry outside a subsection in [Unreleased]"],
    );
}

#[test]
fn changelog_link_references_at_the_bottom_matching_the_headings() {
    let r = Repo::released_010();
    r.write(
        "CHANGELOG.md",
        "# Changelog\n\n## [Unreleased]\n\n[Unreleased]: https://example.invalid/x/compare/v0.1.0...HEAD\n\n## [0.1.0] - 2026-01-01\n\n### Added\n- first feature\n\n[0.1.0]: https://example.invalid/x/releases/tag/v0.0.1\n[0.0.1]: https://example.invalid/x/releases/tag/v0.0.1\n",
    );
    r.fails(
        &[],
        &[
            "CHANGELOG.md:5: link references must be at the bottom (content follows on line 7)",
            "CHANGELOG.md:13: link reference [0.0.1] matches no heading",
            "CHANGELOG.md:12: the link of [0.1.0] does not name its tag v0.1.0",
        ],
    );
    r.write(
        "CHANGELOG.md",
        "# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2026-01-01\n\n### Added\n- first feature\n\n[Unreleased]: https://example.invalid/x/commits/main\n",
    );
    r.fails(
        &[],
        &[
            "CHANGELOG.md:5: [0.1.0] has no link reference at the bottom",
            "CHANGELOG.md:10: the [Unreleased] link must compare from the newest tag v0.1.0",
        ],
    );
}

// ------------------------------------------------------------------ version policy

#[test]
fn the_version_moves_by_exactly_the_highest_bump_since_the_newest_tag() {
    let mut r = Repo::released_010();
    r.write("src/lib.rs", "// code v2\n");
    r.write("changes/fix-a.md", &fragment("fix-a", "patch", ""));
    r.write("changes/feature-b.md", &fragment("feature-b", "minor", ""));
    r.write(
        "CHANGELOG.md",
        "# Changelog\n\n## [Unreleased]\n\n### Added\n- b\n\n### Fixed\n- a\n\n## [0.1.0] - 2026-01-01\n\n### Added\n- first feature\n\n[Unreleased]: https://example.invalid/x/compare/v0.1.0...HEAD\n[0.1.0]: https://example.invalid/x/releases/tag/v0.1.0\n",
    );
    // between releases: the version stays, entries wait under [Unreleased]
    r.passes(&[]);
    r.commit("work");
    r.passes(&[]);
    // the release: 0.1.0 + minor = 0.2.0, entries moved under [0.2.0]
    let released = "# Changelog\n\n## [Unreleased]\n\n## [0.2.0] - 2026-02-01\n\n### Added\n- b\n\n### Fixed\n- a\n\n## [0.1.0] - 2026-01-01\n\n### Added\n- first feature\n\n[Unreleased]: https://example.invalid/x/compare/v0.2.0...HEAD\n[0.2.0]: https://example.invalid/x/compare/v0.1.0...v0.2.0\n[0.1.0]: https://example.invalid/x/releases/tag/v0.1.0\n";
    r.write("CHANGELOG.md", released);
    r.write("Cargo.toml", &cargo_toml("0.2.0"));
    r.passes(&[]);
    for wrong in ["0.1.1", "1.0.0", "0.3.0"] {
        r.write("Cargo.toml", &cargo_toml(wrong));
        r.write("CHANGELOG.md", &released.replace("0.2.0", wrong));
        r.fails(
            &[],
            &[&format!(
                "Cargo.toml:3: version moved from 0.1.0 (v0.1.0) to {wrong}, but the highest bump among the fragments added since v0.1.0 is minor (changes/feature-b.md): expected 0.2.0"
            )],
        );
    }
    r.write("Cargo.toml", &cargo_toml("0.0.9"));
    r.write("CHANGELOG.md", CHANGELOG_010);
    r.fails(
        &[],
        &["Cargo.toml:3: version went back from 0.1.0 (v0.1.0) to 0.0.9"],
    );
}

#[test]
fn a_version_change_needs_a_fragment_or_a_declared_release_preparation() {
    let mut r = Repo::released_010();
    let released = "# Changelog\n\n## [Unreleased]\n\n## [0.1.1] - 2026-02-01\n\n### Changed\n- metadata only\n\n## [0.1.0] - 2026-01-01\n\n### Added\n- first feature\n\n[Unreleased]: https://example.invalid/x/compare/v0.1.1...HEAD\n[0.1.1]: https://example.invalid/x/compare/v0.1.0...v0.1.1\n[0.1.0]: https://example.invalid/x/releases/tag/v0.1.0\n";
    r.write("Cargo.toml", &cargo_toml("0.1.1"));
    r.write("CHANGELOG.md", released);
    r.fails(
        &[],
        &["Cargo.toml:3: version moved from 0.1.0 (v0.1.0) to 0.1.1 but no release fragment was added since v0.1.0"],
    );
    // a plain fragment is not enough when only metadata changed
    r.write("changes/prep.md", &fragment("prep", "patch", ""));
    r.fails(
        &[],
        &["Cargo.toml:3: only release metadata changed since v0.1.0 and the version moved to 0.1.1: declare"],
    );
    r.write(
        "changes/prep.md",
        &fragment("prep", "patch", "release_preparation: true\n"),
    );
    r.passes(&[]);
    r.commit("release prep");
    r.passes(&[]);
    // declaring release_preparation without moving the version is an error
    r.git(&["tag", "v0.1.1"]);
    r.write(
        "changes/again.md",
        &fragment("again", "patch", "release_preparation: true\n"),
    );
    r.write(
        "CHANGELOG.md",
        &released.replace(
            "## [Unreleased]\n",
            "## [Unreleased]\n\n### Changed\n- again\n",
        ),
    );
    r.fails(
        &[],
        &["changes/again.md:5: release_preparation: true, but the version did not move since v0.1.1 (0.1.1)"],
    );
}

#[test]
fn the_released_section_names_the_new_version() {
    let r = Repo::released_010();
    r.write("src/lib.rs", "// fixed\n");
    r.write("changes/fix.md", &fragment("fix", "patch", ""));
    r.write("Cargo.toml", &cargo_toml("0.1.1"));
    // entries still under [Unreleased]: the release section is missing
    r.write(
        "CHANGELOG.md",
        "# Changelog\n\n## [Unreleased]\n\n### Fixed\n- fix\n\n## [0.1.0] - 2026-01-01\n\n### Added\n- first feature\n\n[Unreleased]: https://example.invalid/x/compare/v0.1.0...HEAD\n[0.1.0]: https://example.invalid/x/releases/tag/v0.1.0\n",
    );
    r.fails(
        &[],
        &["CHANGELOG.md:8: Cargo.toml moved to 0.1.1 but the newest release section is [0.1.0]"],
    );
    // a changelog ahead of the manifest is wrong whatever the base
    r.write("Cargo.toml", &cargo_toml("0.1.0"));
    r.write(
        "CHANGELOG.md",
        "# Changelog\n\n## [Unreleased]\n\n## [0.1.1] - 2026-02-01\n\n### Fixed\n- fix\n\n## [0.1.0] - 2026-01-01\n\n### Added\n- first feature\n\n[Unreleased]: https://example.invalid/x/compare/v0.1.1...HEAD\n[0.1.1]: https://example.invalid/x/compare/v0.1.0...v0.1.1\n[0.1.0]: https://example.invalid/x/releases/tag/v0.1.0\n",
    );
    r.fails(
        &[],
        &[
            "CHANGELOG.md:5: CHANGELOG.md releases 0.1.1 but Cargo.toml is at 0.1.0",
            "CHANGELOG.md:3: fragments were added since v0.1.0 (changes/fix.md) but `## [Unreleased]` has no entries",
        ],
    );
}

#[test]
fn explicit_base_and_no_base() {
    // no tag: nothing released yet, only the file rules apply
    let mut r = Repo::new();
    r.commit("start");
    r.write("Cargo.toml", &cargo_toml("0.5.0"));
    r.passes(&[]);
    // against the previous commit, the same move is a version change without a fragment
    r.fails(
        &["--base", "HEAD"],
        &["Cargo.toml:3: version moved from 0.1.0 (HEAD) to 0.5.0 but no release fragment"],
    );
    r.write("changes/big.md", &fragment("big", "major", ""));
    r.write("src/lib.rs", "// breaking\n");
    r.fails(
        &["--base", "HEAD"],
        &[
            "Cargo.toml:3: version moved from 0.1.0 (HEAD) to 0.5.0, but the highest bump among the fragments added since HEAD is major (changes/big.md): expected 1.0.0",
            "CHANGELOG.md:5: Cargo.toml moved to 0.5.0 but CHANGELOG.md has no `## [0.5.0] - YYYY-MM-DD` section",
        ],
    );
    // an unknown base is a usage error (2), not a finding
    let o = r.run(&["validate", "--base", "no-such-ref"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--base no-such-ref"));
}

#[test]
fn json_gives_the_findings_as_a_list() {
    let r = Repo::new();
    r.passes(&["--json"]);
    let o = r.run(&["validate", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!([]));
    r.write(
        "changes/x.md",
        "---\nchange_id: x\nbump: tiny\nsummary: s\n---\n",
    );
    let o = r.run(&["validate", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{
            "file": "changes/x.md",
            "line": 3,
            "rule": "fragment-bump",
            "message": "bump must be patch, minor or major, found `tiny`"
        }])
    );
}

#[test]
fn this_repository_passes() {
    let o = Command::new(BIN)
        .arg("validate")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

// ------------------------------------------------------------------ verification environment

const CONTRACT: &str = "{\n  \"schema_version\": 1,\n  \"kind\": \"CoreOpsReleaseGateEnvironment\",\n  \"name\": \"env-a\",\n  \"version\": \"7\",\n  \"runner_ref\": \"runners/a\",\n  \"system_class\": \"x86_64-vm\"\n}\n";

fn actual(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    pairs.to_vec()
}

#[test]
fn check_environment_compares_every_field() {
    let r = Repo::new();
    r.write(
        "tests/fixtures/distribution/release-gate-environment.json",
        CONTRACT,
    );
    let all = actual(&[
        ("CORE_OPS_ACTUAL_VERIFY_ENVIRONMENT_NAME", "env-a"),
        ("CORE_OPS_ACTUAL_VERIFY_ENVIRONMENT_VERSION", "7"),
        ("CORE_OPS_ACTUAL_VERIFY_RUNNER_REF", "runners/a"),
        ("CORE_OPS_ACTUAL_VERIFY_SYSTEM_CLASS", "x86_64-vm"),
    ]);
    let o = r.run_env(&["check-environment"], &all);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // two drifted fields: one finding each, naming the field and both values
    let mut drifted = all.clone();
    drifted[1].1 = "8";
    drifted[3].1 = "aarch64-vm";
    let o = r.run_env(&["check-environment"], &drifted);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "tests/fixtures/distribution/release-gate-environment.json:5: version drifted: the contract says \"7\", CORE_OPS_ACTUAL_VERIFY_ENVIRONMENT_VERSION is \"8\"",
            "tests/fixtures/distribution/release-gate-environment.json:7: system_class drifted: the contract says \"x86_64-vm\", CORE_OPS_ACTUAL_VERIFY_SYSTEM_CLASS is \"aarch64-vm\"",
        ]
    );

    // missing (or empty) variables are an error, not a pass
    let o = r.run_env(
        &["check-environment", "--json"],
        &[("CORE_OPS_ACTUAL_VERIFY_RUNNER_REF", "")],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rules: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["environment-missing"; 4]);
    assert!(
        v[2]["message"]
            .as_str()
            .unwrap()
            .starts_with("CORE_OPS_ACTUAL_VERIFY_RUNNER_REF is not set")
    );

    // a malformed contract is a finding too
    r.write(
        "tests/fixtures/distribution/release-gate-environment.json",
        &CONTRACT.replace("\"name\"", "\"nmae\""),
    );
    let o = r.run_env(&["check-environment"], &all);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("invalid environment contract"));
}

#[test]
fn the_shipped_contract_is_complete() {
    let text = std::fs::read_to_string(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .join("tests/fixtures/distribution/release-gate-environment.json"),
    )
    .unwrap();
    let c: core_ops_release::environment::Contract = serde_json::from_str(&text).unwrap();
    assert_eq!(c.schema_version, 1);
    assert_eq!(c.kind, "CoreOpsReleaseGateEnvironment");
    for v in [&c.name, &c.version, &c.runner_ref, &c.system_class] {
        assert!(!v.trim().is_empty());
    }
}

/// `core-ops-release --version` is the agent library's provenance: the tool and the agent of
/// one workspace build agree on version, revision and rustc.
#[test]
fn version_is_the_agent_build_provenance() {
    let out = Command::new(env!("CARGO_BIN_EXE_core-ops-release"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim_end(),
        format!(
            "core-ops-release {}",
            core_ops::provenance::Provenance::current().long_version()
        )
    );
}
