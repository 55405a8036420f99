//! The install transaction: an explicit state machine, persisted atomically
//! (`runtimes/<name>/.transaction.json`) at every state, one receipt per lifecycle transition.
//!
//! ```text
//! requested -> manifest_resolved -+-> denied | deferred | failed (dependency)      [terminal]
//!                                 +-> artifact_verified -> installing -> unpacked
//!                                       | failed (fetch, digest)   | failed (unpack)
//!                                     -> switched -> restarted -> installed          [terminal]
//!                                                       +-> partial (no previous)     [terminal]
//!                                                       +-> rolling_back -> rolled_back
//! ```
//! `unpacked`, `switched`, `restarted` and `rolling_back` are persisted steps inside
//! `installing` (the schema has no receipt state for them). The switch (`current` replaced by
//! symlink + rename) is the commit point: a transaction found at start-up that had not
//! switched is rolled back (its partial tree removed; `current` never moved); one that had
//! switched is rolled forward (units restarted, health checked, then `installed`, `partial`
//! or `rolled_back`). Every step is idempotent, so resuming repeats at most the step that
//! was cut short; a receipt already in the chain is never written twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::time::now_rfc3339;
use crate::record::status::RuntimeReceiptRef;
use crate::systemd::Systemd;

use crate::record::runtime_receipt::{
    self as receipt, ArtifactFact, InstallState, ReceiptFacts, Verification,
};
use crate::runtime::evidence::{self, Subject};
use crate::runtime::health::{self, HealthReport};
use crate::runtime::manifest::{ArtifactSource, ResolvedRuntime};
use crate::runtime::policy::{self, Decision, RuntimePolicy};
use crate::runtime::store::{self, FetchError};
use crate::runtime::unpack;
use crate::runtime::{InstalledVersion, KEEP_VERSIONS, Layout, STAGING_PREFIX};

/// Transaction schema version.
pub const TX_SCHEMA_VERSION: u32 = 1;

pub use crate::runtime::state::TxState;

/// The persisted transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// [`TX_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsRuntimeTransaction`.
    pub kind: String,
    /// `<name>-<version>-<unix secs>.<nanos>-<pid>`.
    pub id: String,
    /// Host (receipts' target).
    pub host: String,
    /// Desired revision the install serves.
    pub revision: String,
    /// Runtime name.
    pub name: String,
    /// Version being installed.
    pub version: String,
    /// Publisher (policy input).
    pub publisher: String,
    /// Repository path of the manifest.
    pub manifest_file: String,
    /// Manifest text (evidence).
    pub manifest_text: String,
    /// sha256 of the manifest.
    pub manifest_digest: String,
    /// Material digest of the version.
    pub material_digest: String,
    /// When the manifest was resolved.
    pub resolved_at: String,
    /// Start time.
    pub started_at: String,
    /// Where it is.
    pub state: TxState,
    /// `current` when the transaction started (what a rollback returns to).
    pub from_version: Option<String>,
    /// The runtime record's `previous` when the transaction started (restored on rollback).
    pub prior_previous: Option<String>,
    /// Units restarted after the switch.
    pub units: Vec<String>,
    /// Those of them that are oneshots without `RemainAfterExit=` (healthy when they succeed).
    pub oneshot_units: Vec<String>,
    /// Health timeout.
    pub health_timeout_ms: u64,
    /// Artifacts as receipts report them.
    pub artifacts: Vec<ArtifactFact>,
    /// Artifact sources, as shown (credentials redacted).
    pub sources: Vec<String>,
    /// Store digests once verified, in manifest order.
    pub stored: Vec<String>,
    /// The version's tree existed (and was reused) before this transaction.
    pub version_dir_preexisted: bool,
    /// The policy decision and its inputs.
    pub policy: Option<serde_json::Value>,
    /// Health after the switch.
    pub health: Option<HealthReport>,
    /// Health of the previous version after a rollback.
    pub rollback_health: Option<HealthReport>,
    /// Why the switch is being undone.
    pub rollback_reason: Option<String>,
    /// Warnings (unverified artifacts).
    pub warnings: Vec<String>,
    /// Milliseconds per step (fetch, unpack, switch, restart, health, rollback).
    pub timings_ms: BTreeMap<String, u64>,
    /// Set while start-up recovery drives it (not persisted).
    #[serde(skip)]
    pub recovered: bool,
}

impl Transaction {
    /// The in-flight transaction of a runtime, if one was left.
    pub fn load(layout: &Layout) -> Result<Option<Transaction>> {
        let p = layout.transaction();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::Config(format!(
                    "{}: unreadable runtime transaction: {e}; inspect it and remove it by hand",
                    p.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
        }
    }

    fn save(&self, layout: &Layout) -> Result<()> {
        fsutil::write_json(&layout.transaction(), self)
    }

    /// Move to `next`, checking the transition is allowed, and persist.
    fn advance(&mut self, layout: &Layout, next: TxState) -> Result<()> {
        if !next.allowed_from().contains(&self.state) {
            return Err(Error::Config(format!(
                "internal error: runtime transaction {} cannot go from {} to {}",
                self.id,
                self.state.name(),
                next.name()
            )));
        }
        self.state = next;
        self.save(layout)
    }

    fn rollback_version(&self) -> Option<&str> {
        self.from_version
            .as_deref()
            .filter(|f| *f != self.version.as_str())
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Runtime.
    pub name: String,
    /// Version it tried to install.
    pub version: String,
    /// Terminal state.
    pub state: InstallState,
    /// Why, unless installed.
    pub reason: Option<String>,
    /// Id of the terminal receipt.
    pub receipt: String,
    /// Units restarted successfully (the start phase need not restart them again).
    pub restarted: Vec<String>,
    /// Whether start-up recovery finished it.
    pub recovered: bool,
}

/// Crash point for the crash tests ([`crate::failpoint::RUNTIME_STATE`]): a transaction stops
/// right after persisting that state (and writing its receipt), says so on stderr and waits to
/// be killed. It only delays; it never changes what is written. (Unit
/// tests stop there instead, with an error, through [`tests_stop_at`].)
fn failpoint(state: TxState) -> Result<()> {
    #[cfg(test)]
    if STOP_AT.with(|s| s.get()) == Some(state) {
        return Err(Error::Config(format!(
            "test failpoint: stopped at {}",
            state.name()
        )));
    }
    crate::failpoint::pause_at(crate::failpoint::RUNTIME_STATE, state.name());
    Ok(())
}

#[cfg(test)]
thread_local! {
    static STOP_AT: std::cell::Cell<Option<TxState>> = const { std::cell::Cell::new(None) };
}

/// Unit tests: make transactions on this thread stop (as if killed) right after `state`.
#[cfg(test)]
pub(crate) fn tests_stop_at(state: Option<TxState>) {
    STOP_AT.with(|s| s.set(state));
}

/// What an install needs besides the manifest.
#[derive(Debug, Clone)]
pub struct InstallRequest<'a> {
    /// Host.
    pub host: &'a str,
    /// Desired revision.
    pub revision: &'a str,
    /// The host's runtime policy.
    pub policy: &'a RuntimePolicy,
    /// Units of the runtime that are oneshots.
    pub oneshot_units: Vec<String>,
    /// `Err(why)` when a dependency is not installed at its desired version.
    pub dependencies: std::result::Result<(), String>,
}

/// Runs transactions against one state dir and one systemd.
pub struct Engine<'a> {
    /// State dir.
    pub state_dir: &'a Path,
    /// systemd.
    pub systemd: &'a dyn Systemd,
    /// Per-job timeout.
    pub job_timeout: Duration,
    /// Health settle window.
    pub settle: Duration,
}

impl Engine<'_> {
    /// Install (or switch to) a runtime version, from `requested` to a terminal state.
    pub fn install(&self, rt: &ResolvedRuntime, req: &InstallRequest<'_>) -> Result<Outcome> {
        let m = &rt.manifest;
        let layout = Layout::new(self.state_dir, &m.name);
        let mut tx = self.begin(&layout, rt, req)?;
        tracing::info!(runtime = %tx.name, version = %tx.version, transaction = %tx.id, "runtime install requested");
        tx.save(&layout)?;
        self.emit(&tx, InstallState::Requested, None)?;
        failpoint(TxState::Requested)?;

        tx.advance(&layout, TxState::ManifestResolved)?;
        self.emit(&tx, InstallState::ManifestResolved, None)?;
        failpoint(TxState::ManifestResolved)?;
        if let Err(why) = &req.dependencies {
            return self.finish(&layout, &mut tx, InstallState::Failed, Some(why.clone()));
        }
        if let Some((state, why)) = self.policy_refusal(&mut tx, req, m) {
            return self.finish(&layout, &mut tx, state, Some(why));
        }
        if let Err(why) = self.fetch_artifacts(&mut tx, m) {
            return self.finish(&layout, &mut tx, InstallState::Failed, Some(why));
        }
        tx.advance(&layout, TxState::ArtifactVerified)?;
        self.emit(&tx, InstallState::ArtifactVerified, None)?;
        failpoint(TxState::ArtifactVerified)?;

        let reuse = match reusable_version_dir(&layout, &tx)? {
            Ok(reuse) => reuse,
            Err(why) => return self.finish(&layout, &mut tx, InstallState::Failed, Some(why)),
        };
        tx.version_dir_preexisted = reuse;
        tx.advance(&layout, TxState::Installing)?;
        self.emit(&tx, InstallState::Installing, None)?;
        failpoint(TxState::Installing)?;
        if !reuse && let Err(why) = self.unpack_version(&layout, &mut tx)? {
            return self.finish(&layout, &mut tx, InstallState::Failed, Some(why));
        }
        tx.advance(&layout, TxState::Unpacked)?;
        failpoint(TxState::Unpacked)?;

        self.switch_to(&layout, &mut tx)?;
        self.after_switch(&layout, tx)
    }

    /// A new transaction for `rt`: refused while another is in flight (start-up recovery
    /// resolves that first) and on a platform no receipt could name; stale staging removed.
    fn begin(
        &self,
        layout: &Layout,
        rt: &ResolvedRuntime,
        req: &InstallRequest<'_>,
    ) -> Result<Transaction> {
        let m = &rt.manifest;
        // no receipt could be written on a platform the schema does not know: refuse before
        // anything (a transaction file included) exists
        receipt::platform()?;
        if let Some(tx) = Transaction::load(layout)? {
            return Err(Error::Config(format!(
                "runtime {}: transaction {} is still in flight; start-up recovery must resolve it first",
                m.name, tx.id
            )));
        }
        clean_staging(layout)?;
        let now = now_rfc3339();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Transaction {
            schema_version: TX_SCHEMA_VERSION,
            kind: "CoreOpsRuntimeTransaction".into(),
            id: format!(
                "{}-{}-{}.{:09}-{}",
                m.name,
                m.version,
                t.as_secs(),
                t.subsec_nanos(),
                std::process::id()
            ),
            host: req.host.to_string(),
            revision: req.revision.to_string(),
            name: m.name.clone(),
            version: m.version.clone(),
            publisher: m.publisher.clone(),
            manifest_file: rt.file.clone(),
            manifest_text: rt.text.clone(),
            manifest_digest: rt.manifest_digest.clone(),
            material_digest: rt.material_digest.clone(),
            resolved_at: now.clone(),
            started_at: now,
            state: TxState::Requested,
            from_version: layout.current_version(),
            prior_previous: layout.load_record().previous,
            units: m.units.clone(),
            oneshot_units: req.oneshot_units.clone(),
            health_timeout_ms: m.health_timeout.as_millis() as u64,
            artifacts: artifact_facts(m),
            sources: m.artifacts.iter().map(|a| a.source.display()).collect(),
            stored: Vec::new(),
            version_dir_preexisted: false,
            policy: None,
            health: None,
            rollback_health: None,
            rollback_reason: None,
            warnings: Vec::new(),
            timings_ms: BTreeMap::new(),
            recovered: false,
        })
    }

    /// The host's policy decides before anything changes: the final state and why when it
    /// denies or defers; its warnings are kept when it allows.
    fn policy_refusal(
        &self,
        tx: &mut Transaction,
        req: &InstallRequest<'_>,
        m: &crate::runtime::manifest::Manifest,
    ) -> Option<(InstallState, String)> {
        let inputs = policy::Inputs::now(self.state_dir, m);
        let decision = policy::decide(req.policy, m, &inputs);
        tx.policy = Some(json!({ "policy": req.policy, "inputs": inputs, "decision": decision }));
        match decision {
            Decision::Deny { reason } => Some((InstallState::Denied, reason)),
            Decision::Defer { reason } => Some((InstallState::Deferred, reason)),
            Decision::Allow { warnings } => {
                for w in &warnings {
                    tracing::warn!(runtime = %tx.name, transaction = %tx.id, "{w}");
                }
                tx.warnings = warnings;
                None
            }
        }
    }

    /// Fetch every artifact into the store, verifying while streaming; why when one fails.
    fn fetch_artifacts(
        &self,
        tx: &mut Transaction,
        m: &crate::runtime::manifest::Manifest,
    ) -> std::result::Result<(), String> {
        let t0 = Instant::now();
        let mut result = Ok(());
        for (i, a) in m.artifacts.iter().enumerate() {
            let fact = &mut tx.artifacts[i];
            match store::fetch(self.state_dir, a) {
                Ok(s) => {
                    fact.digest = Some(s.digest.clone());
                    fact.size = Some(s.size);
                    fact.verification = if a.digest.is_some() {
                        Verification::Verified
                    } else {
                        Verification::Skipped
                    };
                    tx.stored.push(s.digest);
                }
                Err(e) => {
                    if let FetchError::Mismatch { size, .. } = &e {
                        fact.size = Some(*size);
                    }
                    fact.verification = Verification::Failed;
                    result = Err(format!("artifact '{}': {e}", a.name));
                    break;
                }
            }
        }
        tx.timings_ms
            .insert("fetch".into(), t0.elapsed().as_millis() as u64);
        result
    }

    /// Unpack the stored artifacts into staging and rename it into place with its install
    /// record; why when an artifact cannot be unpacked (staging removed again).
    fn unpack_version(
        &self,
        layout: &Layout,
        tx: &mut Transaction,
    ) -> Result<std::result::Result<(), String>> {
        let t0 = Instant::now();
        let vdir = layout.version_dir(&tx.version);
        let staging = layout.staging(&tx.version);
        fsutil::remove_dir_all_synced(&staging)?;
        let unpacked = tx
            .stored
            .iter()
            .try_for_each(|d| {
                unpack::unpack(&store::object_path(self.state_dir, d), &staging).map(|_| ())
            })
            .and_then(|()| unpack::sync_tree(&staging));
        if let Err(why) = unpacked {
            fsutil::remove_dir_all_synced(&staging)?;
            return Ok(Err(why));
        }
        fsutil::rename_synced(&staging, &vdir)?;
        fsutil::write_json(
            &layout.meta(&tx.version),
            &InstalledVersion {
                schema_version: 1,
                name: tx.name.clone(),
                version: tx.version.clone(),
                material_digest: tx.material_digest.clone(),
                manifest_digest: tx.manifest_digest.clone(),
                artifacts: tx.stored.clone(),
                installed_at: now_rfc3339(),
                transaction: tx.id.clone(),
            },
        )?;
        tx.timings_ms
            .insert("unpack".into(), t0.elapsed().as_millis() as u64);
        Ok(Ok(()))
    }

    /// The commit point: `current` -> the new version, `previous` recorded.
    fn switch_to(&self, layout: &Layout, tx: &mut Transaction) -> Result<()> {
        let t0 = Instant::now();
        fsutil::symlink_atomic(Path::new(&tx.version), &layout.current())?;
        if let Some(from) = tx.rollback_version() {
            let mut rec = layout.load_record();
            rec.previous = Some(from.to_string());
            layout.save_record(&rec)?;
        }
        tx.timings_ms
            .insert("switch".into(), t0.elapsed().as_millis() as u64);
        tx.advance(layout, TxState::Switched)?;
        tracing::info!(runtime = %tx.name, version = %tx.version, transaction = %tx.id, "switched");
        failpoint(TxState::Switched)?;
        Ok(())
    }

    /// Restart (unless already done), judge health, then installed / partial / roll back.
    fn after_switch(&self, layout: &Layout, mut tx: Transaction) -> Result<Outcome> {
        let mut jobs = Vec::new();
        if tx.state == TxState::Switched {
            let t0 = Instant::now();
            jobs = health::restart(self.systemd, &tx.units, self.job_timeout)?;
            tx.timings_ms
                .insert("restart".into(), t0.elapsed().as_millis() as u64);
            tx.advance(layout, TxState::Restarted)?;
            failpoint(TxState::Restarted)?;
        }
        let (restarted, report) = self.judge(&tx, jobs)?;
        tx.timings_ms.insert("health".into(), report.waited_ms);
        let healthy = report.healthy;
        let problems = report.problems.join("; ");
        tx.health = Some(report);
        if healthy {
            let mut out = self.finish(layout, &mut tx, InstallState::Installed, None)?;
            out.restarted = restarted;
            gc(self.state_dir, layout)?;
            return Ok(out);
        }
        if tx.rollback_version().is_some() {
            tx.rollback_reason = Some(problems);
            tx.advance(layout, TxState::RollingBack)?;
            failpoint(TxState::RollingBack)?;
            return self.roll_back(layout, tx);
        }
        let why = format!(
            "{} {} is current but its units are not healthy ({problems}); there is no previous version to roll back to",
            tx.name, tx.version
        );
        let mut out = self.finish(layout, &mut tx, InstallState::Partial, Some(why))?;
        out.restarted = restarted;
        Ok(out)
    }

    /// The units whose restart succeeded, and the health of all of the transaction's units
    /// after those restart jobs (shared by the forward switch and the switch back).
    fn judge(
        &self,
        tx: &Transaction,
        jobs: Vec<crate::systemd::JobResult>,
    ) -> Result<(Vec<String>, health::HealthReport)> {
        let restarted: Vec<String> = jobs
            .iter()
            .filter(|j| j.outcome.is_success())
            .map(|j| j.unit.clone())
            .collect();
        let oneshot: BTreeSet<String> = tx.oneshot_units.iter().cloned().collect();
        let report = health::check(
            self.systemd,
            &tx.units,
            &oneshot,
            jobs,
            self.settle,
            Duration::from_millis(tx.health_timeout_ms),
        )?;
        Ok((restarted, report))
    }

    /// Switch back to the version current before the transaction, restart its units.
    fn roll_back(&self, layout: &Layout, mut tx: Transaction) -> Result<Outcome> {
        let t0 = Instant::now();
        let prev = tx
            .rollback_version()
            .expect("rolling back needs a previous version")
            .to_string();
        fsutil::symlink_atomic(Path::new(&prev), &layout.current())?;
        let mut rec = layout.load_record();
        rec.previous = tx.prior_previous.clone();
        layout.save_record(&rec)?;
        let jobs = health::restart(self.systemd, &tx.units, self.job_timeout)?;
        let (restarted, report) = self.judge(&tx, jobs)?;
        tx.timings_ms
            .insert("rollback".into(), t0.elapsed().as_millis() as u64);
        let mut why = format!(
            "{} {} was not healthy after the switch ({}); switched back to {prev}",
            tx.name,
            tx.version,
            tx.rollback_reason.clone().unwrap_or_default()
        );
        if !report.healthy {
            why.push_str(&format!(
                "; {prev} is not healthy either ({})",
                report.problems.join("; ")
            ));
        }
        tx.rollback_health = Some(report);
        let mut out = self.finish(layout, &mut tx, InstallState::RolledBack, Some(why))?;
        out.restarted = restarted;
        Ok(out)
    }

    /// Write the terminal receipt, drop the transaction file.
    fn finish(
        &self,
        layout: &Layout,
        tx: &mut Transaction,
        state: InstallState,
        reason: Option<String>,
    ) -> Result<Outcome> {
        let id = self.emit(tx, state, reason.as_deref())?;
        fsutil::remove_synced(&layout.transaction())?;
        match state {
            InstallState::Installed => {
                tracing::info!(runtime = %tx.name, version = %tx.version, receipt = %id, "runtime installed")
            }
            _ => tracing::warn!(
                runtime = %tx.name,
                version = %tx.version,
                receipt = %id,
                state = state.as_str(),
                "runtime not installed; see the receipt's evidence"
            ),
        }
        Ok(Outcome {
            name: tx.name.clone(),
            version: tx.version.clone(),
            state,
            reason,
            receipt: id,
            restarted: Vec::new(),
            recovered: tx.recovered,
        })
    }

    /// Write the evidence bundle and the receipt of one transition (once per transaction and
    /// state); update the runtime record's last receipt. Returns the receipt id.
    fn emit(&self, tx: &Transaction, state: InstallState, reason: Option<&str>) -> Result<String> {
        let recorded = receipt::recorded_states(self.state_dir, &tx.host, &tx.id)?;
        if let Some((_, id)) = recorded.iter().find(|(s, _)| *s == state) {
            return Ok(id.clone());
        }
        let files = evidence_files(tx, state, reason);
        let mut artifact_refs = vec![receipt::manifest_ref(&tx.name, &tx.version)];
        artifact_refs.extend(tx.artifacts.iter().map(|a| a.reference.clone()));
        let evidence_ref = evidence::write(
            self.state_dir,
            &Subject {
                id: format!(
                    "urn:srcos:evidence-bundle:core-ops:{}:{}",
                    tx.id,
                    state.as_str()
                ),
                subject_ref: receipt::session_ref(&tx.host, &tx.id),
                artifact_refs,
                receipt_refs: recorded.iter().map(|(_, id)| id.clone()).collect(),
                decision_refs: vec![receipt::decision_ref(&tx.id)],
            },
            &files,
        )?;
        let (_, doc) = receipt::append(
            self.state_dir,
            &ReceiptFacts {
                host: &tx.host,
                transaction: &tx.id,
                name: &tx.name,
                version: &tx.version,
                state,
                manifest_digest: &tx.manifest_digest,
                resolved_at: &tx.resolved_at,
                artifacts: &tx.artifacts,
                rollback_version: tx.rollback_version(),
                failure: reason,
                evidence_ref: &evidence_ref,
                started_at: &tx.started_at,
                revision: &tx.revision,
                recovered: tx.recovered,
            },
        )?;
        let id = doc["id"].as_str().unwrap_or_default().to_string();
        // compact log line: ids and refs only
        tracing::info!(
            runtime = %tx.name,
            version = %tx.version,
            state = state.as_str(),
            receipt = %id,
            evidence = %evidence_ref,
            "runtime receipt"
        );
        let layout = Layout::new(self.state_dir, &tx.name);
        let mut rec = layout.load_record();
        rec.last_receipt = Some(RuntimeReceiptRef {
            id: id.clone(),
            install_state: state.as_str().to_string(),
            version: tx.version.clone(),
            transaction: tx.id.clone(),
            recorded_at: doc["capturedAt"].as_str().unwrap_or_default().to_string(),
        });
        layout.save_record(&rec)?;
        Ok(id)
    }

    /// Resolve every transaction a killed run left: roll back what had not switched, roll
    /// forward what had. Runs at start-up, before planning.
    pub fn recover(&self) -> Result<Vec<Outcome>> {
        let mut out = Vec::new();
        for name in crate::runtime::known_runtimes(self.state_dir) {
            let layout = Layout::new(self.state_dir, &name);
            let Some(mut tx) = Transaction::load(&layout)? else {
                clean_staging(&layout)?;
                continue;
            };
            tx.recovered = true;
            tracing::warn!(runtime = %name, transaction = %tx.id, state = tx.state.name(), "recovering an interrupted runtime transaction");
            let recorded = receipt::recorded_states(self.state_dir, &tx.host, &tx.id)?;
            if let Some((s, id)) = recorded.iter().find(|(s, _)| s.is_terminal()) {
                // it ended; only the file removal was cut short
                fsutil::remove_synced(&layout.transaction())?;
                clean_staging(&layout)?;
                out.push(Outcome {
                    name: tx.name.clone(),
                    version: tx.version.clone(),
                    state: *s,
                    reason: None,
                    receipt: id.clone(),
                    restarted: Vec::new(),
                    recovered: true,
                });
                continue;
            }
            // a receipt of the persisted state the killed run did not get to write
            let pending = match tx.state {
                TxState::Requested => Some(InstallState::Requested),
                TxState::ManifestResolved => Some(InstallState::ManifestResolved),
                TxState::ArtifactVerified => Some(InstallState::ArtifactVerified),
                TxState::Installing => Some(InstallState::Installing),
                _ => None,
            };
            if let Some(s) = pending {
                self.emit(&tx, s, None)?;
            }
            let switched = match tx.state {
                TxState::Switched | TxState::Restarted | TxState::RollingBack => true,
                // killed between the symlink rename and persisting `switched`
                TxState::Unpacked => {
                    layout.current_version().as_deref() == Some(tx.version.as_str())
                }
                _ => false,
            };
            let outcome = if tx.state == TxState::RollingBack {
                self.roll_back(&layout, tx)?
            } else if switched {
                if tx.state == TxState::Unpacked {
                    tx.advance(&layout, TxState::Switched)?;
                }
                self.after_switch(&layout, tx)?
            } else {
                clean_staging(&layout)?;
                let vdir = layout.version_dir(&tx.version);
                if !tx.version_dir_preexisted
                    && layout.current_version().as_deref() != Some(tx.version.as_str())
                    && vdir.exists()
                {
                    fsutil::remove_synced(&layout.meta(&tx.version))?;
                    fsutil::remove_dir_all_synced(&vdir)?;
                }
                let (state, stays) = match tx.rollback_version() {
                    Some(v) => (InstallState::RolledBack, format!("{v} stays current")),
                    None => (
                        InstallState::Failed,
                        match &tx.from_version {
                            Some(v) => format!("{v} stays current"),
                            None => "no version is current".to_string(),
                        },
                    ),
                };
                let why = format!(
                    "interrupted in state '{}' before the switch (core-ops was stopped); nothing was switched and the partial install was removed; {stays}",
                    tx.state.name()
                );
                self.finish(&layout, &mut tx, state, Some(why))?
            };
            out.push(outcome);
        }
        Ok(out)
    }
}
/// What the receipts say of each artifact before it is fetched: its pinned digest and size
/// where known (an unpinned local file: what it hashes to now, never marked verified).
fn artifact_facts(m: &crate::runtime::manifest::Manifest) -> Vec<ArtifactFact> {
    m.artifacts
        .iter()
        .map(|a| {
            let (digest, size) = match (&a.digest, &a.source) {
                (Some(d), ArtifactSource::Repo { data, .. }) => {
                    (Some(d.clone()), Some(data.0.len() as u64))
                }
                (Some(d), ArtifactSource::Local { path }) => (
                    Some(d.clone()),
                    std::fs::metadata(path).ok().map(|md| md.len()),
                ),
                (Some(d), ArtifactSource::Https { .. }) => (Some(d.clone()), None),
                (None, ArtifactSource::Local { path }) => match store::hash_file(path) {
                    Ok((d, n)) => (Some(d), Some(n)),
                    Err(_) => (None, None),
                },
                (None, _) => (None, None),
            };
            ArtifactFact {
                reference: receipt::artifact_ref(&m.name, &m.version, &a.name),
                digest,
                size,
                verification: Verification::NotChecked,
            }
        })
        .collect()
}

/// Whether the version's directory can be reused (an identical tree is there); an unknown or
/// different tree is removed, but never the one in use (versions are immutable: why).
fn reusable_version_dir(
    layout: &Layout,
    tx: &Transaction,
) -> Result<std::result::Result<bool, String>> {
    let vdir = layout.version_dir(&tx.version);
    if !vdir.exists() {
        return Ok(Ok(false));
    }
    match layout.installed(&tx.version) {
        Some(iv) if iv.material_digest == tx.material_digest => Ok(Ok(true)),
        _ if tx.from_version.as_deref() == Some(tx.version.as_str()) => Ok(Err(format!(
            "version {} is installed and current with different artifacts; versions are immutable: publish a new version",
            tx.version
        ))),
        _ => {
            fsutil::remove_synced(&layout.meta(&tx.version))?;
            fsutil::remove_dir_all_synced(&vdir)?;
            Ok(Ok(false))
        }
    }
}

/// The files of a transition's evidence bundle: the manifest, the transaction as it stands,
/// the policy decision and the health judgements when there are any.
fn evidence_files(
    tx: &Transaction,
    state: InstallState,
    reason: Option<&str>,
) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert(
        "manifest.yaml".into(),
        tx.manifest_text.clone().into_bytes(),
    );
    let view = json!({
        "transaction": tx.id,
        "install_state": state,
        "transaction_state": tx.state,
        "runtime": tx.name,
        "version": tx.version,
        "from_version": tx.from_version,
        "desired_revision": tx.revision,
        "manifest": {
            "file": tx.manifest_file,
            "digest": tx.manifest_digest,
            "material_digest": tx.material_digest,
        },
        "artifacts": tx.artifacts.iter().zip(&tx.sources).map(|(a, s)| json!({
            "ref": a.reference,
            "source": s,
            "digest": a.digest,
            "size": a.size,
            "verification": a.verification,
        })).collect::<Vec<_>>(),
        "store": tx.stored,
        "failure_reason": reason,
        "warnings": tx.warnings,
        "timings_ms": tx.timings_ms,
        "recovered": tx.recovered,
    });
    files.insert("transaction.json".into(), fsutil::json_bytes(&view));
    if let Some(p) = &tx.policy {
        files.insert("policy.json".into(), fsutil::json_bytes(p));
    }
    if tx.health.is_some() || tx.rollback_health.is_some() {
        files.insert(
            "health.json".into(),
            fsutil::json_bytes(
                &json!({ "after_switch": tx.health, "after_rollback": tx.rollback_health }),
            ),
        );
    }
    files
}

/// Remove staging directories (unpacks a killed run left behind).
fn clean_staging(layout: &Layout) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(&layout.dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            fsutil::remove_dir_all_synced(&e.path())?;
        }
    }
    fsutil::clean_temp_files(&layout.dir)?;
    Ok(())
}

/// Whether [`clean_staging`] would find anything: a staging directory or a temp file.
pub(super) fn has_leftovers(layout: &Layout) -> bool {
    std::fs::read_dir(&layout.dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(STAGING_PREFIX) || name.starts_with(fsutil::TEMP_PREFIX)
        })
    })
}

/// Keep [`KEEP_VERSIONS`] versions (current and previous always among them), newest first;
/// then drop store objects no kept version of any runtime uses.
pub fn gc(state_dir: &Path, layout: &Layout) -> Result<()> {
    let current = layout.current_version();
    let previous = layout.load_record().previous;
    let mut versions: Vec<InstalledVersion> = std::fs::read_dir(&layout.dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| crate::runtime::manifest::valid_version(n))
                .filter_map(|v| layout.installed(&v))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by(|a, b| {
        b.installed_at
            .cmp(&a.installed_at)
            .then(b.version.cmp(&a.version))
    });
    let pinned = |v: &str| Some(v) == current.as_deref() || Some(v) == previous.as_deref();
    let mut kept = versions.iter().filter(|v| pinned(&v.version)).count();
    for v in &versions {
        if pinned(&v.version) {
            continue;
        }
        if kept < KEEP_VERSIONS {
            kept += 1;
            continue;
        }
        tracing::info!(runtime = %v.name, version = %v.version, "removing an old runtime version");
        fsutil::remove_synced(&layout.meta(&v.version))?;
        fsutil::remove_dir_all_synced(&layout.version_dir(&v.version))?;
    }
    gc_store(state_dir)
}

/// Drop store objects that no installed version of any runtime uses.
pub fn gc_store(state_dir: &Path) -> Result<()> {
    let mut keep: BTreeSet<String> = BTreeSet::new();
    for name in crate::runtime::known_runtimes(state_dir) {
        let l = Layout::new(state_dir, &name);
        if let Ok(rd) = std::fs::read_dir(l.dir.join(".meta")) {
            for e in rd.flatten() {
                if let Some(iv) = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<InstalledVersion>(&b).ok())
                {
                    keep.extend(iv.artifacts);
                }
            }
        }
    }
    store::gc(state_dir, &keep)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_guarded() {
        use TxState::*;
        assert!(ManifestResolved.allowed_from().contains(&Requested));
        assert!(!Switched.allowed_from().contains(&Requested));
        assert!(RollingBack.allowed_from().contains(&Restarted));
        assert!(Requested.allowed_from().is_empty());
    }
}
