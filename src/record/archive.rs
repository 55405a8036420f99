//! Sealed receipt archives: when more than `per_archive` receipt files are live, the oldest
//! `per_archive` are packed into `receipts/archive/<first>-<last>.jsonl` (one line per
//! receipt: its file name and its exact bytes, so every digest and link still holds) with a
//! manifest `<first>-<last>.manifest.json` carrying the archive's sha256, the first and last
//! sequence, the digest of the last receipt it holds and of the receipt before its first, and
//! the previous archive's sha256. Archives and live files verify as one chain.
//!
//! Why: receipts are never deleted, but a directory of 100,000 files is slow to list and to
//! verify; an archive is one file, re-hashed in full only by `core-ops receipts verify`.
//!
//! Crash safety: the archive is written atomically first (an archive without a manifest is
//! not part of the chain and is replaced by the next rotation), the manifest is created
//! exclusively (the commit point), then the live files are removed; live files left behind
//! by an interrupted removal are identical to archived ones and removed by the next rotation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::normalize::sha256_hex;
use crate::model::time::now_rfc3339;
use crate::record::receipts::{self, BreakKind, ChainBreak, Depth, Walk};

/// `receipts/archive`.
pub fn archive_dir(state_dir: &Path) -> PathBuf {
    receipts::receipts_dir(state_dir).join("archive")
}

/// The manifest of one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// 1.
    pub schema_version: u32,
    /// `CoreOpsReceiptArchive`.
    pub kind: String,
    /// The archive's file name (`<first>-<last>.jsonl`).
    pub archive: String,
    /// sha256 of the archive file.
    pub archive_sha256: String,
    /// Sequence of its first receipt.
    pub first_sequence: u64,
    /// Sequence of its last receipt.
    pub last_sequence: u64,
    /// Receipts it holds.
    pub count: u64,
    /// Digest of the receipt before its first (`null` when it starts the chain).
    pub previous_receipt_digest: Option<String>,
    /// Digest of its last receipt (the first live receipt, or the next archive, links to it).
    pub last_receipt_digest: String,
    /// sha256 of the previous archive (`null` for the first).
    pub previous_archive_digest: Option<String>,
    /// When it was sealed.
    pub created_at: String,
}

/// One archived receipt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    file: String,
    content: String,
}

fn range_name(first: u64, last: u64) -> String {
    format!("{first:08}-{last:08}")
}

fn parse_manifest_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.strip_suffix(".manifest.json")?.split_once('-')?;
    let num = |s: &str| {
        (!s.is_empty() && s.len() <= 20 && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    Some((num(a)?, num(b)?))
}

type Manifests = Vec<(PathBuf, Manifest)>;

/// The manifests in sequence order (by integer), each checked against its own name.
fn manifests(state_dir: &Path) -> Result<std::result::Result<Manifests, ChainBreak>> {
    let dir = archive_dir(state_dir);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(Vec::new())),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(fsutil::TEMP_PREFIX) || !name.ends_with(".manifest.json") {
            continue;
        }
        let path = e.path();
        let brk = |kind, detail: String| ChainBreak {
            kind,
            file: path.display().to_string(),
            detail,
        };
        let Some((first, last)) = parse_manifest_name(&name) else {
            return Ok(Err(brk(
                BreakKind::BadName,
                "no archive manifest name (<first>-<last>.manifest.json)".into(),
            )));
        };
        let m: Manifest = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => return Ok(Err(brk(BreakKind::NotJson, format!("not a manifest: {e}")))),
        };
        if (m.first_sequence, m.last_sequence) != (first, last)
            || m.archive != format!("{}.jsonl", range_name(first, last))
            || last < first
            || m.count != last - first + 1
        {
            return Ok(Err(brk(
                BreakKind::Archive,
                format!(
                    "the manifest says {} receipts {}..{} in {}, which its name or counts contradict",
                    m.count, m.first_sequence, m.last_sequence, m.archive
                ),
            )));
        }
        out.push((path, m));
    }
    out.sort_by_key(|(_, m)| m.first_sequence);
    Ok(Ok(out))
}

/// What the archives held.
#[derive(Debug, Default)]
pub(crate) struct Archived {
    /// Archives walked.
    pub archives: usize,
    /// Digests of the newest archive's receipts by sequence (to recognise live leftovers of
    /// an interrupted rotation).
    pub newest_digests: BTreeMap<u64, String>,
}

/// Walk the archives in order: manifests must link (first sequence, previous receipt digest,
/// previous archive digest); archives are re-hashed and their receipts walked in full with
/// [`Depth::Full`], only the newest with [`Depth::Run`].
pub(crate) fn walk(
    state_dir: &Path,
    depth: Depth,
    walk: &mut Walk,
) -> Result<std::result::Result<Archived, ChainBreak>> {
    let ms = match manifests(state_dir)? {
        Ok(ms) => ms,
        Err(b) => return Ok(Err(b)),
    };
    let mut out = Archived {
        archives: ms.len(),
        ..Default::default()
    };
    let mut prev_archive: Option<String> = None;
    for (i, (mpath, m)) in ms.iter().enumerate() {
        if let Err(b) = links(mpath, m, prev_archive.as_deref(), walk) {
            return Ok(Err(b));
        }
        let newest = i + 1 == ms.len();
        if depth == Depth::Full || newest {
            let apath = archive_dir(state_dir).join(&m.archive);
            let digests = match walk_archive(&apath, mpath, m, walk)? {
                Ok(d) => d,
                Err(b) => return Ok(Err(b)),
            };
            if newest {
                out.newest_digests = digests;
            }
        } else {
            walk.next = m.last_sequence + 1;
            walk.prev = Some(m.last_receipt_digest.clone());
            walk.count += m.count;
        }
        prev_archive = Some(m.archive_sha256.clone());
    }
    Ok(Ok(out))
}

fn archive_break(file: &Path, detail: String) -> ChainBreak {
    ChainBreak {
        kind: BreakKind::Archive,
        file: file.display().to_string(),
        detail,
    }
}

/// A manifest links to the archive and the receipt before it.
fn links(
    mpath: &Path,
    m: &Manifest,
    prev_archive: Option<&str>,
    walk: &Walk,
) -> std::result::Result<(), ChainBreak> {
    if m.previous_archive_digest.as_deref() != prev_archive {
        return Err(archive_break(
            mpath,
            format!(
                "names previous archive digest {}, but the archive before it has {}",
                m.previous_archive_digest.as_deref().unwrap_or("none"),
                prev_archive.unwrap_or("none (no archive before it)")
            ),
        ));
    }
    if m.first_sequence != walk.next || m.previous_receipt_digest != walk.prev {
        return Err(archive_break(
            mpath,
            format!(
                "starts at receipt {} after digest {}, but the chain before it ends at {} with digest {}",
                m.first_sequence,
                m.previous_receipt_digest.as_deref().unwrap_or("none"),
                walk.next - 1,
                walk.prev.as_deref().unwrap_or("none")
            ),
        ));
    }
    Ok(())
}

/// Re-hash one archive and walk its receipts; it must end where its manifest says. Returns
/// the digests of its receipts by sequence.
fn walk_archive(
    apath: &Path,
    mpath: &Path,
    m: &Manifest,
    walk: &mut Walk,
) -> Result<std::result::Result<BTreeMap<u64, String>, ChainBreak>> {
    let bytes = match std::fs::read(apath) {
        Ok(b) => b,
        Err(e) => {
            return Ok(Err(archive_break(
                apath,
                format!("cannot read the archive: {e}"),
            )));
        }
    };
    let actual = sha256_hex(&bytes);
    if actual != m.archive_sha256 {
        return Ok(Err(archive_break(
            apath,
            format!(
                "its digest {actual} differs from its manifest's {}: the archive was edited",
                m.archive_sha256
            ),
        )));
    }
    let mut digests = BTreeMap::new();
    for (n, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if raw.is_empty() {
            continue;
        }
        let at = format!("{}:{}", apath.display(), n + 1);
        match archive_line(&at, raw, walk) {
            Ok((seq, d)) => digests.insert(seq, d),
            Err(b) => return Ok(Err(b)),
        };
    }
    if walk.next - 1 != m.last_sequence
        || walk.prev.as_deref() != Some(m.last_receipt_digest.as_str())
    {
        return Ok(Err(archive_break(
            mpath,
            format!(
                "the archive ends at receipt {}, the manifest says {} with digest {}",
                walk.next - 1,
                m.last_sequence,
                m.last_receipt_digest
            ),
        )));
    }
    Ok(Ok(digests))
}

/// One archived receipt (`at` is `file:line`): its sequence and digest, walked in order.
fn archive_line(
    at: &str,
    raw: &[u8],
    walk: &mut Walk,
) -> std::result::Result<(u64, String), ChainBreak> {
    let line: Line = serde_json::from_slice(raw).map_err(|e| ChainBreak {
        kind: BreakKind::NotJson,
        file: at.to_string(),
        detail: format!("not an archive line: {e}"),
    })?;
    let Some((seq, _)) = receipts::parse_name(&line.file) else {
        return Err(ChainBreak {
            kind: BreakKind::BadName,
            file: at.to_string(),
            detail: format!("{} is no receipt name", line.file),
        });
    };
    let d = walk.step(
        &format!("{at} ({})", line.file),
        seq,
        line.content.as_bytes(),
    )?;
    Ok((seq, d))
}

/// The newest archived receipt's sequence and digest (an append continues from it when no
/// receipt is live).
pub(crate) fn head(state_dir: &Path) -> Result<Option<(u64, String)>> {
    match manifests(state_dir)? {
        Ok(ms) => Ok(ms
            .last()
            .map(|(_, m)| (m.last_sequence, m.last_receipt_digest.clone()))),
        Err(b) => Err(Error::ReceiptChain(format!(
            "broken at {}: {}; nothing was appended",
            b.file, b.detail
        ))),
    }
}

/// Remove sealed live files, then fsync their directory once (not once per file: a
/// thousand directory fsyncs take seconds).
fn remove_all<'a>(dir: &Path, files: impl Iterator<Item = &'a PathBuf>) -> Result<()> {
    let mut any = false;
    for p in files {
        match std::fs::remove_file(p) {
            Ok(()) => any = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", p.display()), e)),
        }
    }
    if any {
        fsutil::sync_dir(dir)?;
    }
    Ok(())
}

/// Whether [`rotate`] has anything to do: more live receipts past the newest archive than
/// one archive takes, or what an interrupted rotation left (live receipts an archive already
/// holds, temp files in the archive dir). A name that cannot be read says yes: the full
/// path reports it.
///
/// Why: every run ends with retention; on a quiet host there is nothing to seal, and the
/// chain was verified when the run began, so this is two directory listings, not a third
/// verification of every live receipt.
fn rotation_due(state_dir: &Path, per_archive: usize) -> Result<bool> {
    let archived_to = match manifests(state_dir)? {
        Ok(ms) => ms.last().map_or(0, |(_, m)| m.last_sequence),
        Err(_) => return Ok(true),
    };
    let live = receipts::scan(state_dir)?;
    let beyond = live
        .entries
        .iter()
        .filter(|e| e.sequence > archived_to)
        .count();
    if beyond > per_archive || beyond < live.entries.len() {
        return Ok(true);
    }
    let temps = match std::fs::read_dir(archive_dir(state_dir)) {
        Ok(rd) => rd.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(fsutil::TEMP_PREFIX)
        }),
        Err(_) => false,
    };
    Ok(temps)
}

/// Seal the oldest `per_archive` live receipts into archives while more than `per_archive`
/// are live (0: never). When there is something to seal (see `rotation_due`) the chain is
/// verified first ([`Depth::Run`]): a broken chain is never sealed. Returns the manifests
/// written.
pub fn rotate(state_dir: &Path, per_archive: usize) -> Result<Vec<Manifest>> {
    if per_archive == 0 || !rotation_due(state_dir, per_archive)? {
        return Ok(Vec::new());
    }
    receipts::check_before_run(state_dir)?;
    fsutil::create_dir_all_synced(&archive_dir(state_dir))?;
    fsutil::clean_temp_files(&archive_dir(state_dir))?;
    let mut written = Vec::new();
    loop {
        let prev = match manifests(state_dir)? {
            Ok(ms) => ms.last().map(|(_, m)| m.clone()),
            Err(b) => return Err(Error::ReceiptChain(format!("{}: {}", b.file, b.detail))),
        };
        let archived_to = prev.as_ref().map_or(0, |m| m.last_sequence);
        let live = receipts::scan(state_dir)?;
        // finish an interrupted rotation (verified identical above)
        remove_all(
            &receipts::receipts_dir(state_dir),
            live.entries
                .iter()
                .filter(|e| e.sequence <= archived_to)
                .map(|e| &e.path),
        )?;
        let live: Vec<_> = live
            .entries
            .into_iter()
            .filter(|e| e.sequence > archived_to)
            .collect();
        if live.len() <= per_archive {
            return Ok(written);
        }
        let batch = &live[..per_archive];
        let mut bytes = Vec::new();
        let mut first_link = None;
        let mut last_digest = String::new();
        for (i, e) in batch.iter().enumerate() {
            let content = std::fs::read(&e.path)
                .map_err(|err| Error::io(format!("read {}", e.path.display()), err))?;
            if i == 0 {
                first_link = serde_json::from_slice(&content)
                    .ok()
                    .and_then(|v| receipts::chain_link(&v));
            }
            last_digest = sha256_hex(&content);
            let content = String::from_utf8(content)
                .map_err(|_| Error::ReceiptChain(format!("{} is not UTF-8", e.path.display())))?;
            let file = e
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            bytes.extend(serde_json::to_vec(&Line { file, content }).expect("line serializes"));
            bytes.push(b'\n');
        }
        let (first, last) = (batch[0].sequence, batch[per_archive - 1].sequence);
        let name = range_name(first, last);
        let m = Manifest {
            schema_version: 1,
            kind: "CoreOpsReceiptArchive".into(),
            archive: format!("{name}.jsonl"),
            archive_sha256: sha256_hex(&bytes),
            first_sequence: first,
            last_sequence: last,
            count: per_archive as u64,
            previous_receipt_digest: first_link,
            last_receipt_digest: last_digest,
            previous_archive_digest: prev.map(|p| p.archive_sha256),
            created_at: now_rfc3339(),
        };
        let dir = archive_dir(state_dir);
        fsutil::write_atomic(&dir.join(&m.archive), &bytes, None)?;
        fsutil::write_new(
            &dir.join(format!("{name}.manifest.json")),
            &fsutil::json_bytes(&m),
        )?;
        remove_all(
            &receipts::receipts_dir(state_dir),
            batch.iter().map(|e| &e.path),
        )?;
        tracing::info!(first, last, archive = %m.archive, "sealed receipts into an archive");
        written.push(m);
    }
}
