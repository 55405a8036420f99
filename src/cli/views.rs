//! The documents the commands print: one versioned struct per view (`schema_version`,
//! `kind`), serialised for `--json` and rendered to text by one function per view in
//! [`super::output`]. Human output is a rendering of the same value, never a second model.
//!
//! JSON is printed through a `serde_json::Value`, whose maps are sorted: a view's field order
//! does not change the bytes, and a view that wraps a library document with
//! `#[serde(flatten)]` prints exactly that document plus its own fields.

use serde::Serialize;

use super::output;
use crate::apply::ApplyResult;
use crate::error::{Error, ErrorKind};
use crate::explain::Explanation;
use crate::plan::Plan;
use crate::provenance::Provenance;
use crate::reconcile::RunOutcome;
use crate::record::control::{Control, Quarantine};
use crate::record::publication;
use crate::record::receipts::ChainReport;
use crate::record::status::{Absent, StatusSnapshot};
use crate::record::target::Target;
use crate::runtime::evidence::Verification;

/// The `schema_version` of every view the CLI itself defines.
///
/// Why one constant: a view that changes incompatibly bumps it, and they change together.
pub const SCHEMA_VERSION: u32 = 1;

/// A printable document: its JSON (the contract) and its text rendering.
///
/// Why a trait: `emit` prints any view the same way, so `--json` cannot be forgotten by one
/// command.
pub trait View: Serialize {
    /// The JSON document, pretty, keys sorted, with a final newline.
    fn json(&self) -> Result<Vec<u8>, Error> {
        let value = serde_json::to_value(self)
            .map_err(|e| Error::io("serialize the JSON document", e.into()))?;
        Ok(crate::fsutil::json_bytes(&value))
    }

    /// The human rendering (`verbose`: `-v` was given).
    fn text(&self, verbose: bool) -> String;
}

/// `core-ops init`: the target that was saved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InitView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsInit`.
    pub kind: &'static str,
    /// Repository followed.
    pub repo: String,
    /// Ref followed.
    pub requested_ref: String,
    /// What the ref resolved to when it was saved.
    pub resolved_revision: String,
    /// Where the target was saved.
    pub target_file: String,
}

impl View for InitView {
    fn text(&self, _verbose: bool) -> String {
        output::init_text(self)
    }
}

/// `core-ops plan` and `apply --rollback-plan-only`: the plan document itself.
///
/// Why a wrapper: the plan's JSON is the canonical intent manifest (`plan::to_json_bytes`),
/// byte-identical for the same inputs, and `--out` writes the same bytes.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(transparent)]
pub struct PlanView<'a> {
    /// The plan (carries its own `schema_version` and `kind`).
    pub plan: &'a Plan,
}

impl View for PlanView<'_> {
    fn json(&self) -> Result<Vec<u8>, Error> {
        Ok(crate::plan::to_json_bytes(self.plan))
    }

    fn text(&self, verbose: bool) -> String {
        output::plan_text(self.plan, verbose)
    }
}

/// `apply` / `agent` after an apply ran: the results document, plus how the whole run ended.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedView<'a> {
    /// The results document (`CoreOpsApplyResult`, with its `schema_version`).
    #[serde(flatten)]
    pub result: &'a ApplyResult,
    /// A quarantine this run lifted because the desired revision moved on.
    pub quarantine_lifted: &'a Option<Quarantine>,
    /// How the whole run ended (`rolled_back` after an automatic rollback), beside the
    /// outcome of the forward apply.
    pub run_outcome: RunOutcome,
    /// The plan that was executed (text only).
    #[serde(skip)]
    pub plan: &'a Plan,
}

impl View for AppliedView<'_> {
    fn text(&self, verbose: bool) -> String {
        output::applied_text(self, verbose)
    }
}

/// `apply` / `agent` when no apply ran: nothing to change, or the revision is quarantined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView<'a> {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsRun`.
    pub kind: &'static str,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// Desired revision.
    pub desired_revision: &'a str,
    /// The ref it was requested as.
    pub requested_ref: &'a str,
    /// Checksum of its plan.
    pub intent_checksum: &'a str,
    /// The quarantine that refused it, if any.
    pub quarantine: &'a Option<Quarantine>,
    /// A quarantine this run lifted.
    pub quarantine_lifted: &'a Option<Quarantine>,
    /// Host (text only).
    #[serde(skip)]
    pub host: &'a str,
}

impl View for RunView<'_> {
    fn text(&self, _verbose: bool) -> String {
        output::run_text(self)
    }
}

/// `core-ops resume`: the quarantine lifted, if there was one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResumeView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsResume`.
    pub kind: &'static str,
    /// Host.
    pub host: String,
    /// What was lifted.
    pub lifted: Option<Quarantine>,
}

impl View for ResumeView {
    fn text(&self, _verbose: bool) -> String {
        output::resume_text(self)
    }
}

/// `status.json` as `status` shows it: the snapshot, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SnapshotView {
    /// It was read.
    Present {
        /// The snapshot.
        snapshot: Box<StatusSnapshot>,
    },
    /// Missing, partial, invalid or of an unsupported version.
    Absent {
        /// Why, as a document.
        absent: Absent,
        /// The same, in words.
        message: String,
    },
}

/// `control.json` as `status` shows it: the state, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ControlView {
    /// Attempts and quarantine.
    Read(Control),
    /// It could not be read.
    Unreadable {
        /// The reason.
        error: String,
    },
}

/// `core-ops status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsStatusReport` (the snapshot inside is a `CoreOpsStatus`).
    pub kind: &'static str,
    /// Path of `status.json`.
    pub state_file: String,
    /// The saved target of `init`.
    pub target: Option<Target>,
    /// `state: present` with the snapshot, or `state: absent` with the reason.
    #[serde(flatten)]
    pub snapshot: SnapshotView,
    /// `ok`, `non_converging` (quarantined) or `unknown` (control unreadable).
    pub convergence: &'static str,
    /// Attempts and quarantine.
    pub control: ControlView,
    /// The last successful fetch of a remote repository and the failure streak (`null` for a
    /// local repository or before the first fetch).
    pub fetch: Option<crate::source::fetch_state::FetchState>,
}

impl View for StatusView {
    fn text(&self, _verbose: bool) -> String {
        output::status_view_text(self)
    }
}

/// `core-ops explain OBJECT`.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsExplanation`.
    pub kind: &'static str,
    /// What explain found.
    #[serde(flatten)]
    pub explanation: Explanation,
}

impl View for ExplainView {
    fn text(&self, _verbose: bool) -> String {
        output::explain_text(&self.explanation)
    }
}

/// `core-ops evidence verify ID`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvidenceView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The verification (`kind: CoreOpsEvidenceVerification`).
    #[serde(flatten)]
    pub verification: Verification,
}

impl View for EvidenceView {
    fn text(&self, _verbose: bool) -> String {
        output::evidence_text(&self.verification)
    }
}

/// `core-ops evidence publish-request ID`.
#[derive(Debug, Clone, Serialize)]
pub struct PublicationView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsPublicationRequestOutcome`.
    pub kind: &'static str,
    /// Written or disabled (`result`).
    #[serde(flatten)]
    pub outcome: publication::Outcome,
}

impl View for PublicationView {
    fn text(&self, _verbose: bool) -> String {
        output::publication_text(self)
    }
}

/// `core-ops receipts verify`: the chain report (already versioned, `CoreOpsReceiptChain`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ReceiptsView {
    /// The report.
    pub report: ChainReport,
}

impl View for ReceiptsView {
    fn text(&self, _verbose: bool) -> String {
        output::receipts_text(&self.report)
    }
}

/// `core-ops store-hash FILE` (hidden, for `scripts/bench-runtime.py`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreHashView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsStoreHash`.
    pub kind: &'static str,
    /// The file hashed.
    pub file: String,
    /// Its digest.
    pub digest: String,
    /// Its size.
    pub bytes: u64,
    /// How long hashing took.
    pub ms: f64,
}

impl View for StoreHashView {
    /// A script reads it: JSON with or without `--json`.
    fn text(&self, _verbose: bool) -> String {
        self.json()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// `core-ops secret keygen` / `secret recipient`: the host's age identity and its public
/// keys (text: the keys alone, one per line, ready for `hosts/<host>/age.recipients`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretKeyView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsAgeIdentity`.
    pub kind: &'static str,
    /// The identity file.
    pub identity: String,
    /// Whether this command created it.
    pub created: bool,
    /// Its public keys (`age1...`).
    pub recipients: Vec<String>,
}

impl View for SecretKeyView {
    fn text(&self, _verbose: bool) -> String {
        output::secret_key_text(self)
    }
}

/// `core-ops secret encrypt -o FILE`: what was written (never the plaintext).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SealedView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsSealedFile`.
    pub kind: &'static str,
    /// The encrypted file.
    pub output: String,
    /// `sha256:<hex>` of the encrypted file: what plans show for it as `(secret)`.
    pub ciphertext_digest: String,
    /// Who can decrypt it.
    pub recipients: Vec<String>,
}

impl View for SealedView {
    fn text(&self, _verbose: bool) -> String {
        output::sealed_text(self)
    }
}

/// `core-ops manpages DIR`: the pages written (text only; `--json` lists them as JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManpagesView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsManpages`.
    pub kind: &'static str,
    /// Paths written.
    pub pages: Vec<String>,
}

impl View for ManpagesView {
    fn text(&self, _verbose: bool) -> String {
        output::manpages_text(self)
    }
}

/// What failed, in a `CoreOpsError` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorDetail {
    /// The error's kind.
    pub kind: ErrorKind,
    /// The message (also on stderr).
    pub message: String,
    /// The file an input error names.
    pub file: Option<String>,
    /// Its line.
    pub line: Option<usize>,
}

/// A failed command: `--json` prints this on stdout, the text goes to stderr.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorView {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `CoreOpsError`.
    pub kind: &'static str,
    /// The build that failed.
    pub core_ops: Provenance,
    /// What failed.
    pub error: ErrorDetail,
    /// The process's exit code.
    pub exit_code: u8,
}

impl ErrorView {
    /// The view of `err`, exiting with `exit_code`.
    pub fn of(err: &Error, exit_code: u8) -> ErrorView {
        let location = err.location();
        ErrorView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsError",
            core_ops: Provenance::current(),
            error: ErrorDetail {
                kind: err.kind(),
                message: err.to_string(),
                file: location.map(|l| l.file.clone()),
                line: location.and_then(|l| l.line),
            },
            exit_code,
        }
    }
}

impl View for ErrorView {
    fn text(&self, _verbose: bool) -> String {
        output::error_text(self)
    }
}
