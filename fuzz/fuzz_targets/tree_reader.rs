//! The bounded tree reader and the renderer on fuzzer-built git trees.
//!
//! Input: records `@<mode> <path>\n<content>`, each up to the next line starting with `@`.
//! A path's components become nested trees (`a//b`, `..`, `.` and duplicates are written as
//! given: the trees are serialised by hand, not through git's checks). Mode `40000` (or
//! `040000`) makes the entry a tree: the content names another directory of the input, whose
//! tree is reused (shared and repeated subtrees); any other mode makes a blob with that mode
//! string (`100644`, `100755`, `120000` symlink, `160000`, garbage...). A first line
//! `!unsorted` keeps entries in input order instead of git's sorted order.
//!
//! Objects go into one bare repository per process under $TMPDIR (recreated every few
//! thousand runs);
//! each run opens it with `Source::open`, reads the commit with small `ReadLimits` and
//! renders host `h`. Errors are fine; a panic is a finding.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use core_ops::config::{Paths, ReadLimits};
use core_ops::source::{Revision, Source};
use git2::{ObjectType, Oid, Repository};
use libfuzzer_sys::fuzz_target;

struct State {
    dir: tempfile::TempDir,
    repo: Repository,
    runs: u32,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn fresh() -> State {
    // under $TMPDIR: scripts/fuzz.sh points it at a scratch dir (in /dev/shm when there is
    // one) and removes it after the run, since a libFuzzer process exits without dropping this
    let dir = tempfile::Builder::new()
        .prefix("core-ops-fuzz-")
        .tempdir()
        .expect("tempdir");
    let repo = Repository::init_bare(dir.path().join("repo.git")).expect("init");
    State { dir, repo, runs: 0 }
}

enum Kind {
    Blob(Oid),
    Dir(Vec<u8>),
    Link(Vec<u8>),
}

struct Entry {
    mode: Vec<u8>,
    name: Vec<u8>,
    kind: Kind,
}

fn tree_bytes(
    repo: &Repository,
    dirs: &BTreeMap<Vec<u8>, Vec<Entry>>,
    dir: &[u8],
    first: &HashMap<Vec<u8>, Oid>,
    sorted: bool,
) -> Oid {
    let mut entries: Vec<(&[u8], &[u8], Oid)> = Vec::new();
    for e in dirs.get(dir).map(Vec::as_slice).unwrap_or(&[]) {
        let oid = match &e.kind {
            Kind::Blob(o) => *o,
            Kind::Dir(child) => tree_bytes(repo, dirs, child, first, sorted),
            Kind::Link(target) => match first.get(target) {
                Some(o) => *o,
                None => empty_tree(repo),
            },
        };
        entries.push((&e.mode, &e.name, oid));
    }
    if sorted {
        entries.sort_by(|a, b| a.1.cmp(b.1));
    }
    let mut raw = Vec::new();
    for (mode, name, oid) in entries {
        raw.extend_from_slice(mode);
        raw.push(b' ');
        raw.extend_from_slice(name);
        raw.push(0);
        raw.extend_from_slice(oid.as_bytes());
    }
    repo.odb()
        .expect("odb")
        .write(ObjectType::Tree, &raw)
        .expect("write tree")
}

fn empty_tree(repo: &Repository) -> Oid {
    repo.odb()
        .expect("odb")
        .write(ObjectType::Tree, b"")
        .expect("write tree")
}

/// Write the input's trees and a commit of them; returns the commit id.
fn build(repo: &Repository, data: &[u8]) -> Oid {
    let (sorted, data) = match data.strip_prefix(b"!unsorted\n") {
        Some(rest) => (false, rest),
        None => (true, data),
    };
    let odb = repo.odb().expect("odb");
    let mut dirs: BTreeMap<Vec<u8>, Vec<Entry>> = BTreeMap::new();
    dirs.insert(Vec::new(), Vec::new());
    // records: split at "\n@" (and a leading "@")
    let mut records: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for i in 0..data.len() {
        if data[i] == b'@' && (i == 0 || data[i - 1] == b'\n') {
            if i > start {
                records.push(&data[start..i]);
            }
            start = i;
        }
    }
    records.push(&data[start..]);
    for rec in records.into_iter().take(64) {
        let Some(rec) = rec.strip_prefix(b"@") else {
            continue;
        };
        let (header, content) = match rec.iter().position(|b| *b == b'\n') {
            Some(n) => (&rec[..n], &rec[n + 1..]),
            None => (rec, &b""[..]),
        };
        let (mode, path) = match header.iter().position(|b| *b == b' ') {
            Some(n) => (&header[..n], &header[n + 1..]),
            None => (&b"100644"[..], header),
        };
        let comps: Vec<&[u8]> = path.split(|b| *b == b'/').take(16).collect();
        let mut dir: Vec<u8> = Vec::new();
        for (i, comp) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            // keys: "" is the root, every level adds "/<component>" (so an empty component
            // is a new, deeper directory, never its own parent)
            let mut child = dir.clone();
            child.push(b'/');
            child.extend_from_slice(comp);
            if last {
                let kind = if mode == b"40000" || mode == b"040000" {
                    let target = content.strip_suffix(b"\n").unwrap_or(content);
                    let mut key = Vec::new();
                    if !target.is_empty() {
                        key.push(b'/');
                        key.extend_from_slice(target);
                    }
                    Kind::Link(key)
                } else {
                    Kind::Blob(odb.write(ObjectType::Blob, content).expect("write blob"))
                };
                dirs.entry(dir.clone()).or_default().push(Entry {
                    mode: mode.to_vec(),
                    name: comp.to_vec(),
                    kind,
                });
            } else {
                let entries = dirs.entry(dir.clone()).or_default();
                let known = entries
                    .iter()
                    .any(|e| e.name == *comp && matches!(e.kind, Kind::Dir(_)));
                if !known {
                    entries.push(Entry {
                        mode: b"40000".to_vec(),
                        name: comp.to_vec(),
                        kind: Kind::Dir(child.clone()),
                    });
                }
                dirs.entry(child.clone()).or_default();
            }
            dir = child;
        }
    }
    // pass 1: every directory without its links; pass 2: links point at pass-1 trees
    let none = HashMap::new();
    let first: HashMap<Vec<u8>, Oid> = dirs
        .keys()
        .map(|d| (d.clone(), tree_bytes(repo, &dirs, d, &none, sorted)))
        .collect();
    let root = tree_bytes(repo, &dirs, b"", &first, sorted);
    let commit =
        format!("tree {root}\nauthor f <f@x> 0 +0000\ncommitter f <f@x> 0 +0000\n\nfuzz\n");
    odb.write(ObjectType::Commit, commit.as_bytes())
        .expect("write commit")
}

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().is_none_or(|s| s.runs >= 5000) {
        *guard = None; // drop (and delete) the old repository first
        *guard = Some(fresh());
    }
    let state = guard.as_mut().expect("state");
    state.runs += 1;
    let commit = build(&state.repo, data);
    let repo_dir = state.dir.path().join("repo.git");
    let Ok(source) = Source::open(repo_dir.to_str().expect("utf-8 path"), state.dir.path()) else {
        return;
    };
    let rev = Revision {
        commit: commit.to_string(),
        requested_ref: "main".to_string(),
    };
    let limits = ReadLimits {
        max_entries: 200,
        max_bytes: 64 * 1024,
        max_file_bytes: 16 * 1024,
        max_depth: 8,
    };
    let Ok(tree) = source.tree(&rev, limits) else {
        return;
    };
    let root = state.dir.path();
    let mut paths = Paths::new(
        Some(root.join("unit")),
        Some(root.join("quadlet")),
        Some(root.join("state")),
        None,
        Some("/etc:/srv"),
    );
    paths.read_limits = limits;
    let _ = core_ops::render::render(&tree, &rev, "h", &paths);
});
