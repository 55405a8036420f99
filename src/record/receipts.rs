//! Reconcile receipts: one JSON file per transition (applied A -> B, partial, failed, rolled
//! back) under `<state dir>/receipts/`, each carrying the sha256 of the previous receipt so the
//! log is tamper-evident.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::normalize::sha256_hex;
use crate::model::time::now_rfc3339;
use crate::provenance::Provenance;
use crate::record::status::ReceiptChainHealth;

/// Receipt schema version.
pub const RECEIPT_SCHEMA_VERSION: u32 = 1;

/// One reconcile transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReceipt {
    /// [`RECEIPT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsReconcileReceipt`.
    pub kind: String,
    /// `urn:srcos:receipt:reconcile:<host>:<sequence>`.
    pub id: String,
    /// 1-based position in the log.
    pub sequence: u64,
    /// `applied`, `partial`, `failed`, `rollback` (operator), `rolled_back` (automatic).
    pub transition: String,
    /// Host.
    pub host: String,
    /// `last_applied` before.
    pub from_revision: Option<String>,
    /// Desired revision of the run.
    pub to_revision: String,
    /// Requested ref.
    pub requested_ref: String,
    /// Verification outcome.
    pub outcome: String,
    /// Checksum of the plan executed.
    pub intent_checksum: String,
    /// sha256 of the results document.
    pub results_digest: String,
    /// Count of per-object problems.
    pub diagnostics: usize,
    /// Build.
    pub core_ops: Provenance,
    /// RFC 3339 time.
    pub recorded_at: String,
    /// sha256 of the previous receipt file (`null` for the first).
    pub previous_receipt_digest: Option<String>,
    /// Why (rollbacks: what failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `<state dir>/receipts`.
pub fn receipts_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("receipts")
}

/// The head anchor, `<state dir>/receipts-head.json` (beside `receipts/`, so readers of
/// `receipts/` see receipts only): the sequence and digest of the newest receipt, rewritten
/// after every append. Why: links only prove what lies *before* a receipt; without an anchor,
/// deleting the newest receipts would leave a shorter chain that still verifies.
pub const HEAD_FILE: &str = "receipts-head.json";

/// The sequence and kind of a receipt file name `<sequence>-<kind>.json` (sequence: decimal
/// digits, at least 1, any width; kind: lowercase letters, digits and `-`). `None` for any
/// other name.
///
/// Why parsed: chain order comes from the integer, never from sorting names (a 9-digit
/// sequence sorts before `99999999` as text; `7-x.json` and `00000007-x.json` are one number).
pub fn parse_name(name: &str) -> Option<(u64, &str)> {
    let stem = name.strip_suffix(".json")?;
    let (digits, kind) = stem.split_once('-')?;
    let digits_ok =
        !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit());
    let kind_ok = !kind.is_empty()
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !digits_ok || !kind_ok {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .map(|s| (s, kind))
}

/// The file name of receipt `sequence` of `kind` (8 digits, wider when the number is).
pub fn file_name(sequence: u64, kind: &str) -> String {
    format!("{sequence:08}-{kind}.json")
}

/// One live receipt file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveEntry {
    pub sequence: u64,
    pub path: PathBuf,
}

/// What `receipts/` holds: receipt files in sequence order (by integer, then name), and
/// `.json` files whose name is no receipt name or that are no regular file.
#[derive(Debug, Default)]
pub(crate) struct LiveDir {
    pub entries: Vec<LiveEntry>,
    pub strays: Vec<PathBuf>,
}

/// Read `receipts/`: temp files, directories (`archive/`) and names not ending in `.json`
/// (receipts moved aside as `*.json.broken`) are not part of the chain.
pub(crate) fn scan(state_dir: &Path) -> Result<LiveDir> {
    let dir = receipts_dir(state_dir);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LiveDir::default()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    let mut out = LiveDir::default();
    for e in rd {
        let e = e.map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if name.starts_with(fsutil::TEMP_PREFIX) || is_dir || !name.ends_with(".json") {
            continue;
        }
        let regular = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        match parse_name(&name) {
            Some((sequence, _)) if regular => out.entries.push(LiveEntry {
                sequence,
                path: e.path(),
            }),
            _ => out.strays.push(e.path()),
        }
    }
    out.entries
        .sort_by(|a, b| (a.sequence, &a.path).cmp(&(b.sequence, &b.path)));
    out.strays.sort();
    Ok(out)
}

/// Live receipt files (not yet archived) in sequence order.
pub fn list(state_dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(scan(state_dir)?
        .entries
        .into_iter()
        .map(|e| e.path)
        .collect())
}

/// `receipts-head.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadAnchor {
    /// 1.
    pub schema_version: u32,
    /// Sequence of the newest receipt.
    pub sequence: u64,
    /// Its sha256.
    pub digest: String,
    /// Its file name.
    pub file: String,
}

fn head_path(state_dir: &Path) -> PathBuf {
    state_dir.join(HEAD_FILE)
}

fn read_head(state_dir: &Path) -> std::result::Result<Option<HeadAnchor>, ChainBreak> {
    let p = head_path(state_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ChainBreak {
                kind: BreakKind::NotJson,
                file: p.display().to_string(),
                detail: format!("the head anchor is not valid: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ChainBreak {
            kind: BreakKind::Unreadable,
            file: p.display().to_string(),
            detail: e.to_string(),
        }),
    }
}

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// A file could not be read.
    Unreadable,
    /// A receipt (or archive line, manifest, anchor) is not JSON: cut short or overwritten.
    NotJson,
    /// A `.json` file in `receipts/` that is no receipt name (`<sequence>-<kind>.json`).
    BadName,
    /// A sequence number is missing: a receipt was deleted.
    Gap,
    /// Two receipts claim one sequence number.
    Fork,
    /// The sequence a receipt carries differs from its file name.
    SequenceMismatch,
    /// A receipt does not name the digest of the one before it: one of them was edited or
    /// replaced.
    WrongLink,
    /// The chain ends before the receipt `receipts-head.json` records: the newest were removed.
    Truncated,
    /// An archive differs from its manifest, or the manifests do not link.
    Archive,
}

/// Where and how a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// What is wrong.
    pub kind: BreakKind,
    /// The file (for an archived receipt: `<archive>:<line>`).
    pub file: String,
    /// In words.
    pub detail: String,
}

impl ChainBreak {
    /// How to repair it, in words (the operator reviews first: a break can be an attack).
    pub fn repair(&self, state_dir: &Path) -> String {
        let dir = receipts_dir(state_dir);
        let aside = state_dir.join("receipts.broken");
        match self.kind {
            BreakKind::BadName => format!(
                "review {}; it is no receipt (receipts are named <sequence>-<kind>.json): move it out of {}",
                self.file,
                dir.display()
            ),
            BreakKind::Truncated => format!(
                "the newest receipts were removed: restore them from a backup, or, after review, move {} aside to accept the shorter chain",
                head_path(state_dir).display()
            ),
            BreakKind::Archive => format!(
                "restore {} (and its manifest) from a backup: an archive cannot be moved aside without breaking every later link",
                self.file
            ),
            _ => format!(
                "review {}; then move it, every later receipt and {} into {} (mkdir it first), so the chain ends at the last intact receipt; the next run appends after it",
                self.file,
                head_path(state_dir).display(),
                aside.display()
            ),
        }
    }
}

/// How much `verify` re-reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Depth {
    /// Every archive re-hashed and every archived receipt's link walked
    /// (`core-ops receipts verify`).
    Full,
    /// Before a run appends: live receipts and the newest archive walked, older archives
    /// checked through their manifests' links (their bytes are re-hashed by `Full`).
    Run,
}

/// The chain as `verify` found it (`core-ops receipts verify --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// 1.
    pub schema_version: u32,
    /// `CoreOpsReceiptChain`.
    pub kind: String,
    /// `receipts/`.
    pub receipts_dir: String,
    /// What was re-read.
    pub depth: Depth,
    /// Whether the chain is intact.
    pub ok: bool,
    /// Receipts verified (archived and live) before any break.
    pub receipts: u64,
    /// Of those, in archives.
    pub archived: u64,
    /// Archives.
    pub archives: usize,
    /// Sequence of the newest receipt.
    pub head_sequence: Option<u64>,
    /// Its sha256: an operator who records it elsewhere can later prove nothing before it
    /// changed.
    pub head_digest: Option<String>,
    /// The break, if any.
    pub problem: Option<ChainBreak>,
    /// How to repair it.
    pub repair: Option<String>,
}

/// Walks receipts in sequence order, checking numbers and links.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// Sequence the next receipt must have.
    pub next: u64,
    /// Digest of the last receipt walked.
    pub prev: Option<String>,
    /// Receipts walked.
    pub count: u64,
}

impl Walk {
    pub(crate) fn new() -> Walk {
        Walk {
            next: 1,
            prev: None,
            count: 0,
        }
    }

    /// Check the receipt `sequence` read from `file`; returns its digest.
    pub(crate) fn step(
        &mut self,
        file: &str,
        sequence: u64,
        bytes: &[u8],
    ) -> std::result::Result<String, ChainBreak> {
        let brk = |kind, detail: String| ChainBreak {
            kind,
            file: file.to_string(),
            detail,
        };
        if sequence < self.next {
            return Err(brk(
                BreakKind::Fork,
                format!("a second receipt with sequence {sequence}"),
            ));
        }
        if sequence > self.next {
            let missing = if sequence - self.next == 1 {
                format!("receipt {} is missing", self.next)
            } else {
                format!("receipts {}..{} are missing", self.next, sequence - 1)
            };
            return Err(brk(
                BreakKind::Gap,
                format!("sequence {sequence} follows {}: {missing}", self.next - 1),
            ));
        }
        let v = chain_fields(bytes).map_err(|e| {
            brk(
                BreakKind::NotJson,
                format!("not JSON ({e}): cut short or overwritten"),
            )
        })?;
        let carried = v
            .get("sequence")
            .and_then(serde_json::Value::as_u64)
            .or_else(|| {
                v.get("id")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|id| id.rsplit(':').next())
                    .and_then(|n| n.parse::<u64>().ok())
            });
        if let Some(c) = carried
            && c != sequence
        {
            return Err(brk(
                BreakKind::SequenceMismatch,
                format!("the receipt says sequence {c}, its name says {sequence}"),
            ));
        }
        let recorded = chain_link(&v);
        if recorded != self.prev {
            return Err(brk(
                BreakKind::WrongLink,
                format!(
                    "names previous digest {}, but receipt {} has digest {}: one of them was edited or replaced",
                    recorded.as_deref().unwrap_or("none"),
                    sequence - 1,
                    self.prev
                        .as_deref()
                        .unwrap_or("none (no receipt before it)")
                ),
            ));
        }
        let digest = sha256_hex(bytes);
        self.prev = Some(digest.clone());
        self.next = sequence + 1;
        self.count += 1;
        Ok(digest)
    }
}

/// The fields of a receipt the chain walk reads - `sequence`, `id` and the link to the
/// previous receipt - as a JSON object; the rest of the document is checked to be JSON but
/// not kept.
///
/// Why: every run walks every live receipt (a few hundred on a busy host), and parsing each
/// into a whole `serde_json::Value` was tens of thousands of small allocations per run. A
/// document that is not an object with distinct keys is read whole, as before.
fn chain_fields(bytes: &[u8]) -> serde_json::Result<serde_json::Value> {
    /// Present (even as `null`) or absent: the walk tells the two apart.
    fn present<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<serde_json::Value>, D::Error> {
        serde::Deserialize::deserialize(d).map(Some)
    }
    #[derive(serde::Deserialize)]
    struct Fields {
        #[serde(default, deserialize_with = "present")]
        sequence: Option<serde_json::Value>,
        #[serde(default, deserialize_with = "present")]
        id: Option<serde_json::Value>,
        #[serde(default, deserialize_with = "present")]
        previous_receipt_digest: Option<serde_json::Value>,
        #[serde(default, deserialize_with = "present", rename = "causalRefs")]
        causal_refs: Option<serde_json::Value>,
    }
    let looks_like_object = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    match serde_json::from_slice::<Fields>(bytes) {
        Ok(f) if looks_like_object => {
            let fields = [
                ("sequence", f.sequence),
                ("id", f.id),
                ("previous_receipt_digest", f.previous_receipt_digest),
                ("causalRefs", f.causal_refs),
            ];
            Ok(serde_json::Value::Object(
                fields
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v?)))
                    .collect(),
            ))
        }
        _ => serde_json::from_slice(bytes),
    }
}

/// Verify the whole chain: archives (see [`Depth`]), then the live files, then the head
/// anchor. Never fails on a break (that is the report); fails only on an unreadable
/// directory.
pub fn verify(state_dir: &Path, depth: Depth) -> Result<ChainReport> {
    let mut walk = Walk::new();
    let mut report = ChainReport {
        schema_version: 1,
        kind: "CoreOpsReceiptChain".into(),
        receipts_dir: receipts_dir(state_dir).display().to_string(),
        depth,
        ok: true,
        receipts: 0,
        archived: 0,
        archives: 0,
        head_sequence: None,
        head_digest: None,
        problem: None,
        repair: None,
    };
    let problem = walk_all(state_dir, depth, &mut walk, &mut report)?.err();
    report.receipts = walk.count;
    report.head_sequence = (walk.next > 1).then(|| walk.next - 1);
    report.head_digest = walk.prev.clone();
    if let Some(p) = problem {
        report.ok = false;
        report.repair = Some(p.repair(state_dir));
        report.problem = Some(p);
    }
    Ok(report)
}

fn walk_all(
    state_dir: &Path,
    depth: Depth,
    walk: &mut Walk,
    report: &mut ChainReport,
) -> Result<std::result::Result<(), ChainBreak>> {
    let archived = match super::archive::walk(state_dir, depth, walk)? {
        Ok(a) => a,
        Err(b) => return Ok(Err(b)),
    };
    report.archived = walk.count;
    report.archives = archived.archives;
    let live = scan(state_dir)?;
    if let Some(p) = live.strays.first() {
        return Ok(Err(ChainBreak {
            kind: BreakKind::BadName,
            file: p.display().to_string(),
            detail: "a .json file in receipts/ that is no receipt (<sequence>-<kind>.json) or no regular file".into(),
        }));
    }
    for pair in live.entries.windows(2) {
        if pair[0].sequence == pair[1].sequence {
            return Ok(Err(ChainBreak {
                kind: BreakKind::Fork,
                file: pair[1].path.display().to_string(),
                detail: format!(
                    "sequence {} is claimed by {} too: the chain forked",
                    pair[1].sequence,
                    pair[0].path.display()
                ),
            }));
        }
    }
    let mut digests: std::collections::BTreeMap<u64, String> = archived.newest_digests;
    for e in &live.entries {
        let file = e.path.display().to_string();
        let bytes = match std::fs::read(&e.path) {
            Ok(b) => b,
            Err(err) => {
                return Ok(Err(ChainBreak {
                    kind: BreakKind::Unreadable,
                    file,
                    detail: err.to_string(),
                }));
            }
        };
        // a rotation interrupted after its manifest leaves archived receipts behind: the same
        // bytes are not a fork (the next rotation removes them)
        if e.sequence < walk.next && digests.get(&e.sequence) == Some(&sha256_hex(&bytes)) {
            continue;
        }
        match walk.step(&file, e.sequence, &bytes) {
            Ok(d) => {
                digests.insert(e.sequence, d);
            }
            Err(b) => return Ok(Err(b)),
        }
    }
    match read_head(state_dir) {
        Err(b) => return Ok(Err(b)),
        Ok(None) => {}
        Ok(Some(h)) => {
            let last = walk.next - 1;
            if h.sequence > last {
                return Ok(Err(ChainBreak {
                    kind: BreakKind::Truncated,
                    file: head_path(state_dir).display().to_string(),
                    detail: format!(
                        "records receipt {} ({}) as the newest, but the chain ends at {last}: the newest receipts were removed",
                        h.sequence, h.file
                    ),
                }));
            }
            if let Some(d) = digests.get(&h.sequence)
                && *d != h.digest
            {
                return Ok(Err(ChainBreak {
                    kind: BreakKind::WrongLink,
                    file: h.file.clone(),
                    detail: format!(
                        "receipt {} has digest {d}, but {} recorded {}: it was replaced",
                        h.sequence, HEAD_FILE, h.digest
                    ),
                }));
            }
        }
    }
    Ok(Ok(()))
}

/// Verify before an appending run changes anything ([`Depth::Run`]): `Ok` with the report
/// when intact, otherwise [`Error::ReceiptChain`] naming the file, what is wrong and the
/// repair. Why before the run: a run refused here has changed nothing on the host.
pub fn check_before_run(state_dir: &Path) -> Result<ChainReport> {
    require_intact(verify(state_dir, Depth::Run)?)
}

/// The report when the chain is intact, otherwise the [`Error::ReceiptChain`] refusing to
/// append to it.
pub fn require_intact(r: ChainReport) -> Result<ChainReport> {
    match &r.problem {
        None => Ok(r),
        Some(p) => Err(refusal(p, r.repair.as_deref().unwrap_or_default())),
    }
}

/// status.json's view of the chain after a run that verified it (`before`, from
/// [`check_before_run`]) and appended only through [`try_append_document`]: intact, with the
/// head the run leaves - `appending`, the receipt about to be anchored, when there is one,
/// else the head the run's appends so far left (`receipts-head.json`).
pub fn health_after_run(
    state_dir: &Path,
    before: &ChainReport,
    appending: Option<&PreparedReceipt>,
) -> ReceiptChainHealth {
    let mut h = ReceiptChainHealth::of(before, &now_rfc3339());
    let head = match appending {
        Some(r) => Some((r.sequence, r.digest.clone())),
        None => read_head(state_dir)
            .ok()
            .flatten()
            .map(|a| (a.sequence, a.digest)),
    };
    if let Some((sequence, digest)) = head
        && Some(sequence) > before.head_sequence
    {
        h.head_sequence = Some(sequence);
        h.head_digest = Some(digest);
    }
    h
}

fn refusal(p: &ChainBreak, repair: &str) -> Error {
    Error::ReceiptChain(format!(
        "broken at {}: {}; refusing to append to it, nothing was changed. Repair: {repair} (`core-ops receipts verify` re-checks)",
        p.file, p.detail
    ))
}

/// The cheap checks every append makes after the run's [`check_before_run`]: names (no
/// stray, no two receipts with one number, no gap) and the head anchor against the newest
/// file. Returns the newest receipt's sequence and digest (archive head when none is live).
fn append_point(state_dir: &Path) -> Result<(u64, Option<String>)> {
    let live = scan(state_dir)?;
    let brk = |file: &Path, kind, detail: String| {
        let b = ChainBreak {
            kind,
            file: file.display().to_string(),
            detail,
        };
        refusal(&b, &b.repair(state_dir))
    };
    if let Some(p) = live.strays.first() {
        return Err(brk(p, BreakKind::BadName, "no receipt name".into()));
    }
    for pair in live.entries.windows(2) {
        if pair[1].sequence == pair[0].sequence {
            return Err(brk(
                &pair[1].path,
                BreakKind::Fork,
                format!("sequence {} twice", pair[1].sequence),
            ));
        }
        if pair[1].sequence != pair[0].sequence + 1 {
            return Err(brk(
                &pair[1].path,
                BreakKind::Gap,
                format!("sequence {} follows {}", pair[1].sequence, pair[0].sequence),
            ));
        }
    }
    let (seq, digest) = match live.entries.last() {
        Some(e) => {
            let bytes = std::fs::read(&e.path)
                .map_err(|err| Error::io(format!("read {}", e.path.display()), err))?;
            (e.sequence, Some(sha256_hex(&bytes)))
        }
        None => match super::archive::head(state_dir)? {
            Some((s, d)) => (s, Some(d)),
            None => (0, None),
        },
    };
    if let Some(h) = read_head(state_dir).map_err(|b| refusal(&b, &b.repair(state_dir)))? {
        let newest = receipts_dir(state_dir).join(&h.file);
        if h.sequence > seq {
            return Err(brk(
                &newest,
                BreakKind::Truncated,
                format!(
                    "{HEAD_FILE} records receipt {}, the chain ends at {seq}",
                    h.sequence
                ),
            ));
        }
        if h.sequence == seq && Some(&h.digest) != digest.as_ref() {
            return Err(brk(
                &newest,
                BreakKind::WrongLink,
                format!("its digest differs from the one {HEAD_FILE} recorded"),
            ));
        }
    }
    Ok((seq, digest))
}

/// Append any receipt document to the chain. `build(sequence, previous_digest)` returns the
/// document; `kind` names the file (`00000007-<kind>.json`). The document must carry the
/// previous digest where [`chain_link`] finds it.
pub fn append_document(
    state_dir: &Path,
    kind: &str,
    build: impl FnOnce(u64, Option<String>) -> serde_json::Value,
) -> Result<(PathBuf, serde_json::Value)> {
    try_append_document(state_dir, kind, |sequence, prev| Ok(build(sequence, prev)))
}

/// [`append_document`] with a builder that may refuse (e.g. a document that fails schema
/// validation): nothing is written when it returns an error.
///
/// The file is created exclusively (a hard link that never replaces): of two writers of one
/// sequence number, one fails instead of forking the chain. A chain that fails the
/// [`append_point`] checks is never extended. `receipts-head.json` is rewritten afterwards.
pub fn try_append_document(
    state_dir: &Path,
    kind: &str,
    build: impl FnOnce(u64, Option<String>) -> Result<serde_json::Value>,
) -> Result<(PathBuf, serde_json::Value)> {
    try_prepare_document(state_dir, kind, build)?.commit(state_dir)
}

/// A receipt checked against the chain and serialized, not written yet: its sequence and
/// digest are known before it exists.
///
/// Why: a run writes status.json before its receipt (a failure then leaves no receipt) and
/// status.json names the chain head the run leaves; with the receipt prepared first, that
/// is one status.json write instead of a second one after the append.
#[derive(Debug)]
pub struct PreparedReceipt {
    path: PathBuf,
    name: String,
    bytes: Vec<u8>,
    doc: serde_json::Value,
    /// The sequence number the receipt takes.
    pub sequence: u64,
    /// Its digest, as `receipts-head.json` will record it.
    pub digest: String,
}

impl PreparedReceipt {
    /// Write the receipt (exclusively: see [`try_append_document`]), then
    /// `receipts-head.json`.
    pub fn commit(self, state_dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
        self.write()?;
        self.anchor(state_dir)
    }

    /// Write the receipt file, exclusively, not yet anchored as the chain's head: a chain
    /// whose newest receipt is beyond its head anchor is intact (a run stopped between the
    /// two), one whose anchor is beyond its newest receipt is not.
    pub fn write(&self) -> Result<()> {
        fsutil::write_new(&self.path, &self.bytes).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Error::ReceiptChain(format!(
                    "{} already exists: another writer appended receipt {} at the same time; nothing was appended",
                    self.path.display(),
                    self.sequence
                ))
            }
            other => other,
        })
    }

    /// Record the written receipt as the chain's head (`receipts-head.json`).
    pub fn anchor(self, state_dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
        fsutil::write_json(
            &head_path(state_dir),
            &HeadAnchor {
                schema_version: 1,
                sequence: self.sequence,
                digest: self.digest,
                file: self.name,
            },
        )?;
        Ok((self.path, self.doc))
    }

    /// Take back a receipt [`write`](Self::write) wrote but nothing anchored, because the
    /// records it goes with could not be written: a failed run leaves no receipt.
    pub fn withdraw(&self) -> Result<()> {
        fsutil::remove_synced(&self.path)
    }
}

/// The next receipt of the chain, built and checked like [`try_append_document`] does,
/// without writing anything.
pub fn try_prepare_document(
    state_dir: &Path,
    kind: &str,
    build: impl FnOnce(u64, Option<String>) -> Result<serde_json::Value>,
) -> Result<PreparedReceipt> {
    if parse_name(&file_name(1, kind)).is_none() {
        return Err(Error::Config(format!(
            "internal error: receipt kind {kind:?} makes no receipt name"
        )));
    }
    let (last, prev) = append_point(state_dir)?;
    let sequence = last + 1;
    let doc = build(sequence, prev)?;
    let name = file_name(sequence, kind);
    let path = receipts_dir(state_dir).join(&name);
    let bytes = fsutil::json_bytes(&doc);
    let digest = sha256_hex(&bytes);
    Ok(PreparedReceipt {
        path,
        name,
        bytes,
        doc,
        sequence,
        digest,
    })
}

/// Append a reconcile receipt: fills sequence, id and the previous digest.
pub fn append(state_dir: &Path, receipt: ReconcileReceipt) -> Result<(PathBuf, ReconcileReceipt)> {
    let (path, doc) = prepare(state_dir, receipt)?.commit(state_dir)?;
    Ok((path, serde_json::from_value(doc).expect("round trip")))
}

/// [`append`] in two steps: the reconcile receipt with its sequence, id and previous digest
/// filled, ready for [`PreparedReceipt::commit`].
pub fn prepare(state_dir: &Path, receipt: ReconcileReceipt) -> Result<PreparedReceipt> {
    try_prepare_document(state_dir, "reconcile", |sequence, prev| {
        let mut r = receipt;
        r.sequence = sequence;
        r.id = format!("urn:srcos:receipt:reconcile:{}:{sequence}", r.host);
        r.previous_receipt_digest = prev;
        Ok(serde_json::to_value(r).expect("receipt serializes"))
    })
}

/// Prefix of the chain link in documents whose schema has no field of ours (e.g. SourceOS
/// `RuntimeInstallReceipt`): the first `causalRefs` entry starting with it.
pub const CAUSAL_PREVIOUS_PREFIX: &str = "urn:srcos:receipt-digest:previous:";

/// The previous-receipt digest a document carries: `previous_receipt_digest`, or a
/// `causalRefs` entry `urn:srcos:receipt-digest:previous:sha256:<hex>`.
pub fn chain_link(doc: &serde_json::Value) -> Option<String> {
    if let Some(d) = doc.get("previous_receipt_digest") {
        return d.as_str().map(str::to_string);
    }
    doc.get("causalRefs")?
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str())
        .find_map(|s| s.strip_prefix(CAUSAL_PREVIOUS_PREFIX).map(str::to_string))
}

/// [`verify`] in full: the count of receipts (archived and live) when intact, otherwise an
/// [`Error::ReceiptChain`] naming the file and what is wrong.
pub fn verify_chain(state_dir: &Path) -> Result<usize> {
    let r = verify(state_dir, Depth::Full)?;
    match &r.problem {
        None => Ok(r.receipts as usize),
        Some(p) => Err(refusal(p, r.repair.as_deref().unwrap_or_default())),
    }
}

/// A converged `applied` receipt for tests (sequence, id and chain link are filled by
/// [`append`]).
#[cfg(test)]
pub(crate) fn sample_receipt(host: &str) -> ReconcileReceipt {
    ReconcileReceipt {
        schema_version: RECEIPT_SCHEMA_VERSION,
        kind: "CoreOpsReconcileReceipt".into(),
        id: String::new(),
        sequence: 0,
        transition: "applied".into(),
        host: host.into(),
        from_revision: None,
        to_revision: "b".repeat(40),
        requested_ref: "main".into(),
        outcome: "converged".into(),
        intent_checksum: "sha256:x".into(),
        results_digest: "sha256:y".into(),
        diagnostics: 0,
        core_ops: Provenance::current(),
        recorded_at: "2026-01-01T00:00:00Z".into(),
        previous_receipt_digest: None,
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_reads_the_same_fields_as_a_whole_parse() {
        let docs: [&[u8]; 9] = [
            br#"{"kind":"x","sequence":3,"id":"urn:a:3","previous_receipt_digest":"sha256:ab","more":{"deep":[1,2]}}"#,
            br#"{"id":"urn:srcos:receipt:runtime:h:7","causalRefs":["urn:other","urn:srcos:receipt-digest:previous:sha256:cd"]}"#,
            br#"{"sequence":"3","previous_receipt_digest":null,"causalRefs":["urn:srcos:receipt-digest:previous:sha256:ef"]}"#,
            br#"  {"sequence":1,"sequence":2}"#,
            br#"[{"sequence":1}]"#,
            br#""sequence""#,
            br#"{}"#,
            br#"{"sequence":1"#,
            b"",
        ];
        for d in docs {
            let whole: serde_json::Result<serde_json::Value> = serde_json::from_slice(d);
            let fields = chain_fields(d);
            let shown = String::from_utf8_lossy(d);
            match (whole, fields) {
                (Ok(w), Ok(f)) => {
                    for key in ["sequence", "id"] {
                        assert_eq!(w.get(key), f.get(key), "{key} of {shown}");
                    }
                    assert_eq!(chain_link(&w), chain_link(&f), "link of {shown}");
                }
                (Err(_), Err(_)) => {}
                (w, f) => panic!("{shown}: whole {w:?}, fields {f:?}"),
            }
        }
    }

    fn chain(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let d = tempfile::tempdir().unwrap();
        let paths = (0..n)
            .map(|_| append(d.path(), sample_receipt("h")).unwrap().0)
            .collect();
        (d, paths)
    }

    fn problem(state: &Path, depth: Depth) -> Option<(BreakKind, String)> {
        verify(state, depth)
            .unwrap()
            .problem
            .map(|p| (p.kind, p.file))
    }

    fn name_of(p: &Path) -> String {
        p.file_name().unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn receipts_chain_and_tampering_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let (p1, first) = append(d.path(), sample_receipt("h")).unwrap();
        assert_eq!(first.sequence, 1);
        assert_eq!(first.id, "urn:srcos:receipt:reconcile:h:1");
        assert!(first.previous_receipt_digest.is_none());
        let (_, second) = append(d.path(), sample_receipt("h")).unwrap();
        assert_eq!(
            second.previous_receipt_digest,
            Some(sha256_hex(&std::fs::read(&p1).unwrap()))
        );
        assert_eq!(verify_chain(d.path()).unwrap(), 2);
        let text = std::fs::read_to_string(&p1)
            .unwrap()
            .replace("converged", "failed");
        std::fs::write(&p1, text).unwrap();
        assert!(verify_chain(d.path()).is_err());
    }

    #[test]
    fn an_intact_chain_reports_count_and_head_digest() {
        let (d, files) = chain(3);
        let r = verify(d.path(), Depth::Full).unwrap();
        assert!(r.ok && r.problem.is_none() && r.repair.is_none());
        assert_eq!((r.receipts, r.head_sequence), (3, Some(3)));
        assert_eq!(
            r.head_digest,
            Some(sha256_hex(&std::fs::read(&files[2]).unwrap()))
        );
        let head: HeadAnchor =
            serde_json::from_slice(&std::fs::read(head_path(d.path())).unwrap()).unwrap();
        assert_eq!((head.sequence, Some(head.digest)), (3, r.head_digest));
    }

    /// Every way a chain breaks is found, named by kind and file, and refused by append.
    #[test]
    fn every_break_kind_is_named_and_never_extended() {
        type Breaker = fn(&Path, &[PathBuf]);
        let cases: Vec<(&str, Breaker, BreakKind, usize)> = vec![
            (
                "edited middle receipt",
                |_, f| {
                    let t = std::fs::read_to_string(&f[1])
                        .unwrap()
                        .replace("converged", "failed");
                    std::fs::write(&f[1], t).unwrap();
                },
                BreakKind::WrongLink,
                2,
            ),
            (
                "edited newest receipt (found through the head anchor)",
                |_, f| {
                    let t = std::fs::read_to_string(&f[3])
                        .unwrap()
                        .replace("converged", "failed");
                    std::fs::write(&f[3], t).unwrap();
                },
                BreakKind::WrongLink,
                3,
            ),
            (
                "deleted middle receipt",
                |_, f| std::fs::remove_file(&f[1]).unwrap(),
                BreakKind::Gap,
                2,
            ),
            (
                "truncated file",
                |_, f| {
                    let b = std::fs::read(&f[1]).unwrap();
                    std::fs::write(&f[1], &b[..b.len() / 2]).unwrap();
                },
                BreakKind::NotJson,
                1,
            ),
            (
                "newest receipts deleted (truncated chain)",
                |_, f| {
                    std::fs::remove_file(&f[3]).unwrap();
                    std::fs::remove_file(&f[2]).unwrap();
                },
                BreakKind::Truncated,
                usize::MAX,
            ),
            (
                "forked sequence under another width",
                |d, f| {
                    std::fs::copy(&f[1], receipts_dir(d).join("2-reconcile.json")).unwrap();
                },
                BreakKind::Fork,
                usize::MAX,
            ),
            (
                "forked sequence under another kind",
                |d, f| {
                    std::fs::copy(&f[2], receipts_dir(d).join("00000003-runtime-install.json"))
                        .unwrap();
                },
                BreakKind::Fork,
                usize::MAX,
            ),
            (
                "renamed receipt (sequence in the name differs from the document)",
                |d, f| {
                    std::fs::rename(&f[3], receipts_dir(d).join("00000005-reconcile.json"))
                        .unwrap();
                },
                BreakKind::Gap,
                usize::MAX,
            ),
            (
                "a replayed receipt under the next number",
                |d, f| {
                    std::fs::copy(&f[3], receipts_dir(d).join("00000005-reconcile.json")).unwrap();
                },
                BreakKind::SequenceMismatch,
                usize::MAX,
            ),
            (
                "a stray .json name",
                |d, _| std::fs::write(receipts_dir(d).join("notes.json"), b"{}").unwrap(),
                BreakKind::BadName,
                usize::MAX,
            ),
        ];
        for (what, breaker, kind, file) in cases {
            let (d, files) = chain(4);
            breaker(d.path(), &files);
            let (found, at) =
                problem(d.path(), Depth::Full).unwrap_or_else(|| panic!("{what}: not detected"));
            assert_eq!(found, kind, "{what}: {at}");
            if file != usize::MAX {
                assert!(at.ends_with(&name_of(&files[file])), "{what}: names {at}");
            }
            assert_eq!(
                problem(d.path(), Depth::Run).map(|p| p.0),
                Some(kind),
                "{what}"
            );
            let err = check_before_run(d.path()).unwrap_err().to_string();
            assert!(
                err.contains("refusing to append") && err.contains("Repair:"),
                "{what}: {err}"
            );
            // an append after the run's check never extends it either (its own checks or
            // the run's refusal)
            let before = scan(d.path()).unwrap().entries.len();
            if matches!(
                kind,
                BreakKind::Gap | BreakKind::Fork | BreakKind::BadName | BreakKind::Truncated
            ) || file == 3
            {
                assert!(append(d.path(), sample_receipt("h")).is_err(), "{what}");
                assert_eq!(scan(d.path()).unwrap().entries.len(), before, "{what}");
            }
        }
    }

    #[test]
    fn moving_the_broken_tail_aside_repairs_the_chain() {
        let (d, files) = chain(4);
        let t = std::fs::read_to_string(&files[2])
            .unwrap()
            .replace("converged", "failed");
        std::fs::write(&files[2], t).unwrap();
        let r = verify(d.path(), Depth::Full).unwrap();
        assert!(r.repair.as_deref().unwrap().contains("receipts.broken"));
        // the break is at receipt 4 (it no longer links to the edited 3): 3 is suspect too,
        // the operator moves 3, 4 and the head anchor aside
        for f in [&files[2], &files[3]] {
            std::fs::rename(f, d.path().join(name_of(f) + ".broken")).unwrap();
        }
        std::fs::remove_file(head_path(d.path())).unwrap();
        assert_eq!(verify_chain(d.path()).unwrap(), 2);
        let (p, r) = append(d.path(), sample_receipt("h")).unwrap();
        assert_eq!(r.sequence, 3);
        assert_eq!(
            r.previous_receipt_digest,
            Some(sha256_hex(&std::fs::read(&files[1]).unwrap()))
        );
        assert!(p.ends_with("00000003-reconcile.json"));
    }

    /// 100,000,000 sorts before 99,999,999 as text: the order comes from the integers.
    #[test]
    fn nine_digit_sequences_follow_eight_digit_ones() {
        let d = tempfile::tempdir().unwrap();
        let mut r = sample_receipt("h");
        r.sequence = 99_999_999;
        r.id = "urn:srcos:receipt:reconcile:h:99999999".into();
        std::fs::create_dir_all(receipts_dir(d.path())).unwrap();
        std::fs::write(
            receipts_dir(d.path()).join("99999999-reconcile.json"),
            fsutil::json_bytes(&r),
        )
        .unwrap();
        let (p1, a) = append(d.path(), sample_receipt("h")).unwrap();
        let (p2, b) = append(d.path(), sample_receipt("h")).unwrap();
        assert_eq!((a.sequence, b.sequence), (100_000_000, 100_000_001));
        assert!(p1.ends_with("100000000-reconcile.json"));
        assert_eq!(
            b.previous_receipt_digest,
            Some(sha256_hex(&std::fs::read(&p1).unwrap()))
        );
        let order: Vec<String> = list(d.path()).unwrap().iter().map(|p| name_of(p)).collect();
        assert_eq!(
            order,
            [
                "99999999-reconcile.json",
                "100000000-reconcile.json",
                "100000001-reconcile.json"
            ]
        );
        assert!(p2.exists());
    }

    #[test]
    fn names_are_parsed_strictly() {
        assert_eq!(
            parse_name("00000007-reconcile.json"),
            Some((7, "reconcile"))
        );
        assert_eq!(
            parse_name("123456789-runtime-install.json"),
            Some((123_456_789, "runtime-install"))
        );
        for bad in [
            "reconcile.json",
            "-reconcile.json",
            "00000000-reconcile.json",
            "0000000a-reconcile.json",
            "00000001-.json",
            "00000001-Reconcile.json",
            "00000001-reconcile.json.broken",
            "+1-reconcile.json",
            "99999999999999999999999-reconcile.json",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    /// Two writers of one sequence number: the file is created exclusively, the loser fails
    /// and the winner's receipt is untouched.
    #[test]
    fn a_racing_writer_of_the_same_sequence_loses_instead_of_forking() {
        let (d, _) = chain(1);
        let winner = receipts_dir(d.path()).join("00000002-reconcile.json");
        let err = append_document(d.path(), "reconcile", |_, _| {
            // another writer appends sequence 2 between our scan and our write
            std::fs::write(&winner, b"{\"winner\":true}").unwrap();
            serde_json::json!({"previous_receipt_digest": null})
        })
        .unwrap_err();
        assert!(matches!(err, Error::ReceiptChain(_)), "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&winner).unwrap(), b"{\"winner\":true}");
        let left: Vec<_> = std::fs::read_dir(receipts_dir(d.path()))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(fsutil::TEMP_PREFIX)
            })
            .collect();
        assert!(left.is_empty(), "no temp file left behind");
    }

    #[test]
    fn archives_and_live_receipts_verify_as_one_chain() {
        let (d, files) = chain(7);
        let head = verify(d.path(), Depth::Full).unwrap().head_digest;
        let sealed = crate::record::archive::rotate(d.path(), 3).unwrap();
        assert_eq!(sealed.len(), 2, "1-3 and 4-6 sealed, 7 live");
        assert_eq!((sealed[1].first_sequence, sealed[1].last_sequence), (4, 6));
        assert_eq!(
            sealed[1].previous_archive_digest,
            Some(sealed[0].archive_sha256.clone())
        );
        assert_eq!(list(d.path()).unwrap(), vec![files[6].clone()]);
        for depth in [Depth::Full, Depth::Run] {
            let r = verify(d.path(), depth).unwrap();
            assert!(r.ok, "{depth:?}: {r:?}");
            assert_eq!((r.receipts, r.archived, r.archives), (7, 6, 2));
            assert_eq!(r.head_digest, head);
        }
        // the chain continues across archives
        let (_, next) = append(d.path(), sample_receipt("h")).unwrap();
        assert_eq!(next.sequence, 8);
        assert_eq!(verify_chain(d.path()).unwrap(), 8);
        // an interrupted rotation leaves identical live copies: not a fork, removed next time
        let archived_6 =
            crate::record::archive::archive_dir(d.path()).join("00000004-00000006.jsonl");
        let line = std::fs::read_to_string(&archived_6).unwrap();
        let last: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
        let leftover = receipts_dir(d.path()).join("00000006-reconcile.json");
        std::fs::write(&leftover, last["content"].as_str().unwrap()).unwrap();
        assert!(verify(d.path(), Depth::Full).unwrap().ok);
        crate::record::archive::rotate(d.path(), 3).unwrap();
        assert!(!leftover.exists());
        // a different receipt 6 is a fork
        std::fs::write(&leftover, b"{}").unwrap();
        assert_eq!(problem(d.path(), Depth::Run).unwrap().0, BreakKind::Fork);
    }

    #[test]
    fn a_tampered_archive_is_found() {
        let (d, _) = chain(7);
        crate::record::archive::rotate(d.path(), 3).unwrap();
        let dir = crate::record::archive::archive_dir(d.path());
        let old = dir.join("00000001-00000003.jsonl");
        let t = std::fs::read_to_string(&old)
            .unwrap()
            .replace("converged", "failed");
        std::fs::write(&old, t).unwrap();
        let (kind, file) = problem(d.path(), Depth::Full).unwrap();
        assert_eq!(
            (kind, file),
            (BreakKind::Archive, old.display().to_string())
        );
        assert!(verify_chain(d.path()).is_err());
        // the run's check re-hashes only the newest archive; the old one's manifest still
        // links, so only the full verify sees it
        assert!(problem(d.path(), Depth::Run).is_none());
        // ...and a manifest rewritten to match is caught by the next manifest's link
        let mpath = dir.join("00000001-00000003.manifest.json");
        let mut m: crate::record::archive::Manifest =
            serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        m.archive_sha256 = sha256_hex(&std::fs::read(&old).unwrap());
        std::fs::write(&mpath, fsutil::json_bytes(&m)).unwrap();
        let (kind, file) = problem(d.path(), Depth::Run).unwrap();
        assert_eq!(kind, BreakKind::Archive);
        assert!(file.ends_with("00000004-00000006.manifest.json"), "{file}");
        // the newest archive is re-hashed by the run's check too
        let (d, _) = chain(7);
        crate::record::archive::rotate(d.path(), 3).unwrap();
        let newest = crate::record::archive::archive_dir(d.path()).join("00000004-00000006.jsonl");
        let t = std::fs::read_to_string(&newest)
            .unwrap()
            .replace("converged", "failed");
        std::fs::write(&newest, t).unwrap();
        assert_eq!(problem(d.path(), Depth::Run).unwrap().0, BreakKind::Archive);
        assert!(check_before_run(d.path()).is_err());
    }

    #[test]
    fn a_broken_chain_is_never_sealed() {
        let (d, files) = chain(5);
        std::fs::remove_file(&files[1]).unwrap();
        assert!(crate::record::archive::rotate(d.path(), 2).is_err());
        assert!(
            !crate::record::archive::archive_dir(d.path())
                .join("00000001-00000002.manifest.json")
                .exists()
        );
    }
}
