//! The real-world corpus (`tests/fixtures/realworld/<repo>/rev*/` + `expect.yaml`): desired-state
//! repositories assembled from public projects' units, drop-ins and Quadlet files, replayed
//! revision by revision through the real `core-ops` binary against the shared test bed.
//!
//! Placeholders, substituted in file names and contents when a revision is committed (so every
//! (repo, host) run has its own unit names and paths in the shared bed):
//! - `@P@`        the run's unit-name prefix (`co-<repo>-<host>-<pid>`);
//! - `@ROOT@`     the run's scratch root (visible at the same path inside the bed);
//! - `@ROOTESC@`  `@ROOT@` escaped as systemd escapes paths (`@ROOTESC@-mnt-tmp.mount` is the
//!   mount unit of `@ROOT@/mnt/tmp`);
//! - `@IMAGE@`    the bed's local container image.
//!
//! Host files are written in the fixtures at their real place (`services/x/files/etc/...`,
//! `files/srv/...`) and moved under the scratch root at commit time, whose `etc/` and `srv/`
//! are the run's host-file roots.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use core_ops::render::mount::escape_path;
use core_ops_testkit::RepoBuilder;
use serde_json::Value;
use serde_yaml::Value as Yaml;

use crate::common::bed::{Bed, prefix};
use crate::common::cli::{Scratch, stderr, stdout};
use crate::common::world::bed_scratch;

/// The corpus directory.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/realworld")
}

/// Expected result of one revision on one host.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Converged,
    RejectedAtPlan(String),
    RolledBack,
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Converged => write!(f, "converged"),
            Expect::RejectedAtPlan(m) => write!(f, "rejected_at_plan {m:?}"),
            Expect::RolledBack => write!(f, "rolled_back"),
        }
    }
}

/// One revision of `expect.yaml`.
#[derive(Debug, Clone)]
pub struct Revision {
    pub rev: String,
    pub expect: BTreeMap<String, Expect>,
    /// host -> [(unit, property, value)]
    pub checks: BTreeMap<String, Vec<[String; 3]>>,
}

/// A parsed `expect.yaml`.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub hosts: Vec<String>,
    pub quadlet: bool,
    /// Files (relative to the scratch root) that exist before the first revision.
    pub preexisting: BTreeMap<String, String>,
    pub revisions: Vec<Revision>,
}

fn s(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap().trim().to_string(),
    }
}

pub fn load_expectations(repo: &str) -> Expectations {
    let path = corpus_dir().join(repo).join("expect.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let y: Yaml =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let hosts: Vec<String> = y["hosts"]
        .as_sequence()
        .expect("expect.yaml: hosts")
        .iter()
        .map(s)
        .collect();
    let preexisting = y["preexisting"]
        .as_mapping()
        .map(|m| m.iter().map(|(k, v)| (s(k), s(v))).collect())
        .unwrap_or_default();
    let revisions = y["revisions"]
        .as_sequence()
        .expect("expect.yaml: revisions")
        .iter()
        .map(|r| {
            let rev = s(&r["rev"]);
            let expect = hosts
                .iter()
                .map(|h| {
                    let e = &r["expect"][h.as_str()];
                    let parsed = match e {
                        Yaml::String(x) if x == "converged" => Expect::Converged,
                        Yaml::String(x) if x == "rolled_back" => Expect::RolledBack,
                        Yaml::Mapping(m) if m.contains_key("rejected_at_plan") => {
                            Expect::RejectedAtPlan(s(&e["rejected_at_plan"]))
                        }
                        other => panic!("{}: {rev}/{h}: bad expectation {other:?}", path.display()),
                    };
                    (h.clone(), parsed)
                })
                .collect();
            let checks = r["checks"]
                .as_mapping()
                .map(|m| {
                    m.iter()
                        .map(|(h, list)| {
                            let v = list
                                .as_sequence()
                                .expect("checks: a list per host")
                                .iter()
                                .map(|c| {
                                    let c = c.as_sequence().expect("check: [unit, prop, value]");
                                    [s(&c[0]), s(&c[1]), s(&c[2])]
                                })
                                .collect();
                            (s(h), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            Revision {
                rev,
                expect,
                checks,
            }
        })
        .collect();
    Expectations {
        hosts,
        quadlet: y["quadlet"].as_bool().unwrap_or(false),
        preexisting,
        revisions,
    }
}

/// Placeholder substitutions of one run.
pub struct Subst(pub Vec<(String, String)>);

impl Subst {
    pub fn new(p: &str, root: &Path, image: &str) -> Subst {
        let root_s = root.display().to_string();
        Subst(vec![
            ("@ROOTESC@".into(), escape_path(&root_s)),
            ("@ROOT@".into(), root_s),
            ("@P@".into(), p.to_string()),
            ("@IMAGE@".into(), image.to_string()),
        ])
    }

    pub fn apply(&self, text: &str) -> String {
        self.0
            .iter()
            .fold(text.to_string(), |t, (k, v)| t.replace(k.as_str(), v))
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Copy one revision directory to `dst` with the placeholders substituted and the host files
/// moved under the scratch root.
pub fn materialize(src: &Path, dst: &Path, subst: &Subst, root: &Path) {
    let mut files = Vec::new();
    walk(src, &mut files);
    let root_rel = root.strip_prefix("/").expect("absolute scratch root");
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let mut parts: Vec<String> = rel
            .iter()
            .map(|c| subst.apply(&c.to_string_lossy()))
            .collect();
        // services/<svc>/files/<abs path> -> services/<svc>/files/<root>/<abs path>
        if parts.len() > 3 && parts[0] == "services" && parts[2] == "files" {
            let rest = parts.split_off(3);
            parts.push(root_rel.display().to_string());
            parts.extend(rest);
        }
        let target = dst.join(parts.join("/"));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let bytes = std::fs::read(&f).unwrap();
        match String::from_utf8(bytes) {
            Ok(text) => std::fs::write(&target, subst.apply(&text)).unwrap(),
            Err(e) => std::fs::write(&target, e.into_bytes()).unwrap(),
        }
    }
}

/// One (repo, host) run: its scratch root in the bed, environment and repository.
pub struct Run {
    pub bed: &'static Bed,
    pub s: Scratch,
    pub p: String,
    pub host: String,
    pub repo_path: PathBuf,
    /// revision label -> commit id
    pub shas: BTreeMap<String, String>,
    pub builder: RepoBuilder,
}

/// A row of the table printed at the end.
pub struct Row {
    pub repo: String,
    pub host: String,
    pub rev: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
    pub detail: String,
}

impl Run {
    pub fn call(&self, args: &[&str]) -> Output {
        let repo = self.repo_path.display().to_string();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--repo", &repo, "--host", &self.host]);
        self.s.run(&full)
    }

    /// systemd's own reading (`systemctl show -p PROP --value UNIT` in the bed).
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let o = self
            .bed
            .exec(["systemctl", "show", "--value", "-p", prop, unit]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

/// The bed, booted on first use; a clear failure (never a silent pass) when not root.
pub fn require_bed() -> &'static Bed {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the real-world corpus runs core-ops against the systemd test bed, which needs root: \
         run `sudo cargo test --test realworld_bed` or scripts/test.sh as root"
    );
    crate::common::bed::bed().expect("test bed (root)")
}

/// Build the run of one host: scratch root, Quadlet set-up, pre-existing files, git history.
pub fn prepare(repo: &str, host: &str, ex: &Expectations) -> Run {
    require_bed();
    let (bed, mut s) = bed_scratch("rw-").expect("test bed");
    let mut image = "localhost/core-ops-mini:1".to_string();
    if ex.quadlet {
        let q = bed.quadlet();
        assert!(
            q.containers,
            "{repo} runs Quadlet containers, but the bed has no podman \
             (CORE_OPS_TESTBED_CONTAINERS=0?)"
        );
        if let Some(i) = &q.image {
            image = i.clone();
        }
        for (k, v) in s.env.iter_mut() {
            match k.as_str() {
                "CORE_OPS_QUADLET_DIR" => *v = q.quadlet_dir.display().to_string(),
                "CORE_OPS_QUADLET_GENERATOR" => *v = q.generator.display().to_string(),
                _ => {}
            }
        }
    }
    s.env.push(("CORE_OPS_JOB_TIMEOUT".into(), "60".into()));
    let root = s.root().to_path_buf();
    for d in ["etc", "srv"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (rel, content) in &ex.preexisting {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
    }
    let p = prefix(&format!("{repo}-{host}"));
    let subst = Subst::new(&p, &root, &image);
    let repo_path = s.path("repo");
    let mut builder = RepoBuilder::init(&repo_path).expect("init repo");
    let mut shas = BTreeMap::new();
    for r in &ex.revisions {
        let dst = s.path(&format!("src/{}", r.rev));
        materialize(&corpus_dir().join(repo).join(&r.rev), &dst, &subst, &root);
        let sha = builder
            .commit_dir(&dst, &format!("{repo} {}", r.rev))
            .expect("commit");
        builder.tag(&r.rev).expect("tag");
        shas.insert(r.rev.clone(), sha);
    }
    Run {
        bed,
        s,
        p,
        host: host.to_string(),
        repo_path,
        shas,
        builder,
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// Exit code, outcome and the first diagnostics of an apply or agent run, for the report.
fn summary(o: &Output) -> String {
    let v = json(o);
    let mut out = format!("exit {}", code(o));
    if let Some(outcome) = v["outcome"].as_str() {
        let _ = write!(out, ", outcome {outcome}");
    }
    if let Some(run) = v["run_outcome"]
        .as_str()
        .filter(|r| Some(*r) != v["outcome"].as_str())
    {
        let _ = write!(out, ", run {run}");
    }
    let diags: Vec<String> = v["diagnostics"]
        .as_array()
        .into_iter()
        .flatten()
        .take(6)
        .map(|d| format!("{}: {}", d["id"].as_str().unwrap_or("?"), d["problem"]))
        .collect();
    if !diags.is_empty() {
        let _ = write!(out, "; diagnostics: {}", diags.join(" | "));
    }
    if v.is_null() || diags.is_empty() {
        let err = stderr(o);
        let err = err.trim();
        if !err.is_empty() {
            let tail: String = err.chars().take(1200).collect();
            let _ = write!(out, "; stderr: {tail}");
        }
        if v.is_null() {
            let so: String = stdout(o).trim().chars().take(400).collect();
            if !so.is_empty() {
                let _ = write!(out, "; stdout: {so}");
            }
        }
    }
    out
}

/// After a converged revision: a second plan has nothing to do, an agent run changes nothing,
/// and apply again is a no-op. Returns the problems found.
fn stays_converged(run: &Run, sha: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let o = run.call(&["plan", "--rev", sha, "--detailed-exitcode"]);
    if code(&o) != 0 {
        let j = run.call(&["--json", "plan", "--rev", sha]);
        let acts: Vec<String> = json(&j)["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["action"] != "no_op")
            .map(|a| format!("{} {} ({})", a["action"], a["id"], a["cause"]))
            .collect();
        problems.push(format!(
            "second `plan --detailed-exitcode` exited {} (want 0); actions: {}; stderr: {}",
            code(&o),
            acts.join(", "),
            stderr(&o).trim()
        ));
    }
    let o = run.call(&["--json", "agent", "--rev", sha]);
    if code(&o) != 0 {
        problems.push(format!("agent re-run: {} (want exit 0)", summary(&o)));
    }
    let o = run.call(&["--json", "apply", "--rev", sha]);
    let v = json(&o);
    if code(&o) != 0 || v["changed_objects"] != 0 || v["calls"]["jobs"] != 0 {
        problems.push(format!(
            "apply again: {}, changed_objects {}, jobs {} (want exit 0, 0, 0)",
            summary(&o),
            v["changed_objects"],
            v["calls"]["jobs"]
        ));
    }
    problems
}

/// The host is still at `sha` (nothing changed): `plan --detailed-exitcode` exits 0.
fn still_at(run: &Run, label: &str, sha: &str) -> Option<String> {
    let o = run.call(&["plan", "--rev", sha, "--detailed-exitcode"]);
    (code(&o) != 0).then(|| {
        format!(
            "the host is no longer at {label}: `plan --rev {label} --detailed-exitcode` exited {}",
            code(&o)
        )
    })
}

fn checks(run: &Run, subst: &Subst, list: &[[String; 3]]) -> Vec<String> {
    list.iter()
        .filter_map(|[unit, prop, want]| {
            let unit = subst.apply(unit);
            let got = run.show(&unit, prop);
            let ok = match want.strip_prefix('~') {
                Some(part) => got.contains(part),
                None => &got == want,
            };
            (!ok).then(|| format!("{unit} {prop}={got:?} (want {want:?})"))
        })
        .collect()
}

/// Apply every revision of `repo` on every host in order; returns the rows of the table.
pub fn run_repo(repo: &str) -> Vec<Row> {
    let ex = load_expectations(repo);
    let mut rows = Vec::new();
    for host in &ex.hosts {
        let mut run = prepare(repo, host, &ex);
        let subst = Subst::new(&run.p, run.s.root(), "");
        // the last revision this host converged to (what a rejected or rolled-back one keeps)
        let mut at: Option<(String, String)> = None;
        for r in &ex.revisions {
            let sha = run.shas[&r.rev].clone();
            let want = r.expect[host].clone();
            let o = run.call(&["--json", "apply", "--rev", &sha]);
            let v = json(&o);
            let observed = summary(&o);
            let mut problems = Vec::new();
            match &want {
                Expect::Converged => {
                    if code(&o) != 0 || v["outcome"] != "converged" {
                        problems.push("did not converge".to_string());
                        // later steps cannot check "the host stayed at the previous revision"
                        at = None;
                    } else {
                        problems.extend(stays_converged(&run, &sha));
                        at = Some((r.rev.clone(), sha.clone()));
                    }
                    problems.extend(checks(
                        &run,
                        &subst,
                        r.checks.get(host).map(Vec::as_slice).unwrap_or(&[]),
                    ));
                }
                Expect::RejectedAtPlan(msg) => {
                    let text = format!("{}{}", stdout(&o), stderr(&o));
                    if code(&o) != 1 || !text.contains(msg.as_str()) {
                        problems.push(format!("want exit 1 with {msg:?} in the output"));
                    }
                    if let Some((label, prev)) = &at {
                        problems.extend(still_at(&run, label, prev));
                    }
                }
                Expect::RolledBack => {
                    if code(&o) != 3 || v["run_outcome"] != "rolled_back" {
                        problems.push("want exit 3, outcome rolled_back".to_string());
                    }
                    if let Some((label, prev)) = &at {
                        problems.extend(still_at(&run, label, prev));
                    }
                }
            }
            rows.push(Row {
                repo: repo.to_string(),
                host: host.clone(),
                rev: r.rev.clone(),
                expected: want.to_string(),
                observed,
                ok: problems.is_empty(),
                detail: problems.join("\n      "),
            });
        }
        // Prune everything through core-ops itself; what was there before must survive.
        let host_yaml = format!("hosts/{host}/host.yaml");
        let sha = run
            .builder
            .commit_files(
                &[(host_yaml.as_str(), b"services: []\n".as_slice())],
                "teardown",
            )
            .expect("commit");
        let o = run.call(&["--json", "apply", "--rev", &sha]);
        let mut problems = Vec::new();
        if code(&o) != 0 {
            problems.push("teardown did not converge".to_string());
        }
        for (rel, content) in &ex.preexisting {
            let got = std::fs::read_to_string(run.s.root().join(rel)).unwrap_or_default();
            if &got != content {
                problems.push(format!("pre-existing {rel} was changed or removed"));
            }
        }
        rows.push(Row {
            repo: repo.to_string(),
            host: host.clone(),
            rev: "teardown".into(),
            expected: "converged".into(),
            observed: summary(&o),
            ok: problems.is_empty(),
            detail: problems.join("\n      "),
        });
    }
    rows
}

/// The table of a test, to stderr; then fail with every mismatch.
pub fn report(rows: &[Row]) {
    let mut t = String::from("\nreal-world corpus:\n");
    let _ = writeln!(
        t,
        "{:<16} {:<7} {:<9} {:<38} {:<4} observed",
        "repo", "host", "revision", "expected", "ok"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<16} {:<7} {:<9} {:<38} {:<4} {}",
            r.repo,
            r.host,
            r.rev,
            r.expected,
            if r.ok { "ok" } else { "FAIL" },
            r.observed
        );
        if !r.ok {
            let _ = writeln!(t, "      {}", r.detail);
        }
    }
    eprintln!("{t}");
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{}/{}/{}", r.repo, r.host, r.rev))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} corpus steps did not behave as expected: {}",
        failed.len(),
        rows.len(),
        failed.join(", ")
    );
}
