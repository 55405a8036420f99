//! The content-addressed artifact store, `<state dir>/store/sha256/<hex>`.
//!
//! An artifact is streamed from its source into a temp file in the store, hashed with sha256
//! while it streams, fsynced, and renamed to its digest only when the digest matches the pin
//! (or, for an unpinned local artifact policy allowed, to whatever it hashed to). A store hit
//! is re-hashed before it is trusted. Nothing half-written is ever visible under a digest.
//!
//! Progress: on a terminal, one redrawn line; otherwise (journald, pipes) plain lines at
//! 25 % steps. Only for artifacts of at least [`PROGRESS_MIN_BYTES`].

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil::{self, AtomicFile};

use super::manifest::{ArtifactSource, ArtifactSpec};
use super::policy::human;

/// Read/hash/write chunk size.
const CHUNK: usize = 1 << 20;

/// Artifacts smaller than this fetch without progress output.
pub const PROGRESS_MIN_BYTES: u64 = 8 << 20;

/// `<state dir>/store/sha256`.
pub fn objects_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("store").join("sha256")
}

/// Path of the object with digest `sha256:<hex>`.
pub fn object_path(state_dir: &Path, digest: &str) -> PathBuf {
    objects_dir(state_dir).join(digest.trim_start_matches("sha256:"))
}

/// An artifact in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// `sha256:<hex>` it hashed to.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Object path.
    pub path: PathBuf,
    /// Already in the store (re-hashed and intact).
    pub hit: bool,
    /// Milliseconds spent (read, hash, write, fsync).
    pub millis: u64,
}

/// Why an artifact did not make it into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// It streamed fine but hashed to something else than its pin.
    Mismatch {
        /// Pinned digest.
        expected: String,
        /// What it hashed to.
        actual: String,
        /// Bytes read.
        size: u64,
    },
    /// The source cannot be read by this build (https).
    Unsupported(String),
    /// Reading the source or writing the store failed.
    Io(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Mismatch {
                expected, actual, ..
            } => write!(f, "digest mismatch: expected {expected}, got {actual}"),
            FetchError::Unsupported(m) | FetchError::Io(m) => write!(f, "{m}"),
        }
    }
}

/// sha256 of a reader, streamed; returns `(sha256:<hex>, bytes)`.
pub fn hash_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n_total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((hex_digest(h), n_total))
}

/// sha256 of a file, streamed (what a store hit and `store-hash` use).
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    hash_reader(std::fs::File::open(path)?)
}

fn hex_digest(h: Sha256) -> String {
    let d = h.finalize();
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    crate::model::normalize::push_hex(&mut s, &d);
    s
}

/// Fetch one artifact into the store, verifying its pin while streaming.
pub fn fetch(state_dir: &Path, a: &ArtifactSpec) -> std::result::Result<Stored, FetchError> {
    let t0 = Instant::now();
    let dir = objects_dir(state_dir);
    if let Some(pin) = &a.digest {
        let p = object_path(state_dir, pin);
        if p.is_file() {
            match hash_file(&p) {
                Ok((d, size)) if &d == pin => {
                    return Ok(Stored {
                        digest: d,
                        size,
                        path: p,
                        hit: true,
                        millis: t0.elapsed().as_millis() as u64,
                    });
                }
                _ => {
                    tracing::warn!(object = %p.display(), "store object is corrupt; fetching again");
                    let _ = fsutil::remove_synced(&p);
                }
            }
        }
    }
    let io = |e: Error| FetchError::Io(e.to_string());
    let (reader, total): (Box<dyn Read + '_>, Option<u64>) = match &a.source {
        ArtifactSource::Repo { data, .. } => {
            (Box::new(data.0.as_slice()), Some(data.0.len() as u64))
        }
        ArtifactSource::Local { path } => {
            let f = std::fs::File::open(path)
                .map_err(|e| FetchError::Io(format!("open {}: {e}", path.display())))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
        ArtifactSource::Https { url } => {
            return Err(FetchError::Unsupported(format!(
                "{}: https:// artifact sources need an HTTP client, which this build does not have; put the artifact in the repository or at a local path (with its digest)",
                crate::source::redact(url)
            )));
        }
    };
    let mut out = AtomicFile::create(&dir, "fetch").map_err(io)?;
    let mut progress = Progress::new(&a.name, total);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    let mut reader = reader;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FetchError::Io(format!("read {}: {e}", a.source.display()))),
        };
        h.update(&buf[..n]);
        out.file()
            .write_all(&buf[..n])
            .map_err(|e| FetchError::Io(format!("write to the store {}: {e}", dir.display())))?;
        size += n as u64;
        progress.advance(size);
    }
    progress.finish(size);
    let digest = hex_digest(h);
    if let Some(pin) = &a.digest
        && pin != &digest
    {
        return Err(FetchError::Mismatch {
            expected: pin.clone(),
            actual: digest,
            size,
        });
    }
    let path = object_path(state_dir, &digest);
    out.commit(&path).map_err(io)?;
    Ok(Stored {
        digest,
        size,
        path,
        hit: false,
        millis: t0.elapsed().as_millis() as u64,
    })
}

/// Remove store objects no kept install references, and temp files of killed runs.
pub fn gc(state_dir: &Path, keep: &BTreeSet<String>) -> Result<usize> {
    let dir = objects_dir(state_dir);
    fsutil::clean_temp_files(&dir)?;
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !keep.contains(&format!("sha256:{name}")) {
            fsutil::remove_synced(&e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Download progress: redrawn on a terminal, plain lines otherwise.
struct Progress {
    label: String,
    total: Option<u64>,
    tty: bool,
    enabled: bool,
    started: Instant,
    last: Instant,
    next_step: u64,
}

impl Progress {
    fn new(label: &str, total: Option<u64>) -> Progress {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("JOURNAL_STREAM").is_none();
        Progress {
            label: label.to_string(),
            total,
            tty,
            enabled: total.is_none_or(|t| t >= PROGRESS_MIN_BYTES),
            started: Instant::now(),
            last: Instant::now(),
            next_step: 25,
        }
    }

    fn rate(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!("{}/s", human((done as f64 / secs) as u64))
    }

    fn advance(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        if self.tty {
            if self.last.elapsed() < Duration::from_millis(200) {
                return;
            }
            self.last = Instant::now();
            let line = match self.total {
                Some(t) => format!(
                    "\rcore-ops: fetching {}  {} / {} ({}%)  {}   ",
                    self.label,
                    human(done),
                    human(t),
                    done * 100 / t.max(1),
                    self.rate(done)
                ),
                None => format!(
                    "\rcore-ops: fetching {}  {}  {}   ",
                    self.label,
                    human(done),
                    self.rate(done)
                ),
            };
            let _ = std::io::stderr().write_all(line.as_bytes());
        } else if let Some(t) = self.total {
            let pct = done * 100 / t.max(1);
            while self.next_step < 100 && pct >= self.next_step {
                eprintln!(
                    "core-ops: fetching {}: {}% ({} of {})",
                    self.label,
                    self.next_step,
                    human(done),
                    human(t)
                );
                self.next_step += 25;
            }
        }
    }

    fn finish(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        if self.tty {
            eprintln!(
                "\rcore-ops: fetched {}  {}  {}            ",
                self.label,
                human(done),
                self.rate(done)
            );
        } else {
            eprintln!(
                "core-ops: fetched {}: {} in {} ms",
                self.label,
                human(done),
                self.started.elapsed().as_millis()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::manifest::Blob;
    use std::sync::Arc;

    fn spec(source: ArtifactSource, digest: Option<String>) -> ArtifactSpec {
        ArtifactSpec {
            name: "a.tar.gz".into(),
            source,
            digest,
        }
    }

    #[test]
    fn fetch_verifies_while_streaming_and_hits_are_rehashed() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a.tar.gz");
        std::fs::write(&src, b"artifact bytes").unwrap();
        let want = crate::model::normalize::sha256_hex(b"artifact bytes");
        let s = fetch(
            d.path(),
            &spec(
                ArtifactSource::Local { path: src.clone() },
                Some(want.clone()),
            ),
        )
        .unwrap();
        assert_eq!(
            (s.digest.as_str(), s.size, s.hit),
            (want.as_str(), 14, false)
        );
        assert_eq!(std::fs::read(&s.path).unwrap(), b"artifact bytes");
        let again = fetch(
            d.path(),
            &spec(
                ArtifactSource::Local { path: src.clone() },
                Some(want.clone()),
            ),
        )
        .unwrap();
        assert!(again.hit);
        // a corrupt object is fetched again, not trusted
        std::fs::write(&s.path, b"rotten").unwrap();
        let fixed = fetch(
            d.path(),
            &spec(
                ArtifactSource::Local { path: src.clone() },
                Some(want.clone()),
            ),
        )
        .unwrap();
        assert!(!fixed.hit);
        assert_eq!(std::fs::read(&s.path).unwrap(), b"artifact bytes");

        let wrong = format!("sha256:{}", "0".repeat(64));
        let e = fetch(
            d.path(),
            &spec(ArtifactSource::Local { path: src }, Some(wrong)),
        )
        .unwrap_err();
        assert!(matches!(e, FetchError::Mismatch { size: 14, .. }), "{e:?}");
        // nothing half-written is left: only the good object
        let names: Vec<_> = std::fs::read_dir(objects_dir(d.path()))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(names.len(), 1);

        let repo = spec(
            ArtifactSource::Repo {
                path: "x".into(),
                data: Blob(Arc::new(b"repo".to_vec())),
            },
            Some(crate::model::normalize::sha256_hex(b"repo")),
        );
        assert!(fetch(d.path(), &repo).is_ok());
        // a pinned object already in the store needs no source at all
        let https = spec(
            ArtifactSource::Https {
                url: "https://u:p@example.invalid/a".into(),
            },
            Some(want.clone()),
        );
        assert!(fetch(d.path(), &https).unwrap().hit);
        let https = spec(
            ArtifactSource::Https {
                url: "https://u:p@example.invalid/a".into(),
            },
            Some(crate::model::normalize::sha256_hex(b"elsewhere")),
        );
        match fetch(d.path(), &https).unwrap_err() {
            FetchError::Unsupported(m) => assert!(!m.contains("u:p"), "{m}"),
            other => panic!("{other:?}"),
        }
        let keep: BTreeSet<String> = [crate::model::normalize::sha256_hex(b"repo")].into();
        assert_eq!(gc(d.path(), &keep).unwrap(), 1);
        assert!(!object_path(d.path(), &want).exists());
    }

    #[test]
    fn hash_matches_sha256_hex() {
        let data = vec![7u8; 3 * CHUNK + 5];
        let (d, n) = hash_reader(std::io::Cursor::new(&data)).unwrap();
        assert_eq!(d, crate::model::normalize::sha256_hex(&data));
        assert_eq!(n, data.len() as u64);
    }
}
