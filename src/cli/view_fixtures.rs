//! Fixture tests of both renderings of every view: each fixture value's JSON and text are
//! compared with `tests/fixtures/views/<name>.json` and `<name>.txt`.
//!
//! After an intended change of a view:
//! ```text
//! UPDATE_VIEWS=1 cargo test --lib cli::view_fixtures
//! git diff tests/fixtures/views/
//! ```

use std::path::PathBuf;

use serde_json::json;

use super::output::revision_label;
use super::views::*;
use crate::apply::{ApplyResult, PhaseReport, RollbackSummary};
use crate::error::{Error, InputError, Location};
use crate::explain::Explanation;
use crate::plan::Plan;
use crate::provenance::Provenance;
use crate::reconcile::RunOutcome;
use crate::record::control::{Control, Quarantine};
use crate::record::publication;
use crate::record::receipts::{BreakKind, ChainBreak, ChainReport, Depth};
use crate::record::status::{Absent, HistoryEntry, RunRecord, StatusSnapshot};
use crate::record::target::Target;
use crate::render::Layer;
use crate::runtime::evidence::{FileCheck, Verification};
use crate::systemd::CallCounts;
use crate::verify::{Diagnostic, Outcome};

const REV1: &str = "454ac5f1c0ffee0000000000000000000000aaaa";
const REV2: &str = "9b2e77d0c0ffee0000000000000000000000bbbb";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/views")
}

/// Compare (or with `UPDATE_VIEWS=1` rewrite) one fixture file.
fn check(file: &str, actual: &str) {
    let path = dir().join(file);
    if std::env::var_os("UPDATE_VIEWS").is_some() {
        std::fs::create_dir_all(dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_VIEWS=1 writes it)", path.display()));
    assert_eq!(
        actual,
        want,
        "{} differs (UPDATE_VIEWS=1 rewrites it)",
        path.display()
    );
}

/// Both renderings of `view` against `<name>.json` and `<name>.txt`.
fn check_view<V: View>(name: &str, view: &V, verbose: bool) {
    let json = String::from_utf8(view.json().unwrap()).unwrap();
    // every document is versioned and says what it is
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["schema_version"], 1, "{name}: {json}");
    assert!(
        v["kind"].as_str().is_some_and(|k| k.starts_with("CoreOps")),
        "{name}: {json}"
    );
    check(&format!("{name}.json"), &json);
    check(&format!("{name}.txt"), &view.text(verbose));
}

fn provenance() -> Provenance {
    Provenance {
        version: "0.0.0-fixture".into(),
        build_revision: "fixture".into(),
        rustc: "rustc fixture".into(),
    }
}

fn quarantine() -> Quarantine {
    Quarantine {
        revision: REV2.into(),
        requested_ref: "v2".into(),
        reason: "non_converging".into(),
        objects: vec!["unit:web.service".into()],
        attempts: 3,
        since: "2026-12-01T10:00:00Z".into(),
    }
}

/// The golden plan of the example repository.
fn plan() -> Plan {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/plan-alpha.json");
    serde_json::from_slice(&std::fs::read(golden).unwrap()).unwrap()
}

fn apply_result() -> ApplyResult {
    ApplyResult {
        schema_version: 1,
        kind: "CoreOpsApplyResult".into(),
        intent_checksum: "sha256:1111".into(),
        core_ops: provenance(),
        host: "web1".into(),
        desired_revision: REV2.into(),
        requested_ref: "v2".into(),
        from_revision: Some(REV1.into()),
        outcome: Outcome::Failed,
        last_applied_advanced: false,
        started_at: "2026-12-01T10:00:00Z".into(),
        finished_at: "2026-12-01T10:00:04Z".into(),
        phases: vec![PhaseReport {
            name: "start".into(),
            duration_ms: 1200,
            detail: "2 jobs".into(),
        }],
        jobs: Vec::new(),
        diagnostics: vec![Diagnostic {
            id: "unit:web.service".into(),
            unit: Some("web.service".into()),
            problem: "failed (exit-code)".into(),
        }],
        settled: Vec::new(),
        calls: CallCounts {
            reloads: 1,
            jobs: 2,
            enablement_calls: 1,
        },
        changed_objects: 2,
        receipt: Some("urn:srcos:receipt:reconcile:web1:7".into()),
        results_path: Some("/var/lib/core-ops/results/7.json".into()),
        rollback: Some(RollbackSummary {
            to_revision: REV1.into(),
            outcome: Outcome::Converged,
            reason: "verification of 9b2e77d0 failed: unit:web.service: failed (exit-code)".into(),
            duration_ms: 900,
            receipt: Some("urn:srcos:receipt:reconcile:web1:8".into()),
            results_path: Some("/var/lib/core-ops/results/8.json".into()),
        }),
        quarantine: Some(quarantine()),
        deferred: Vec::new(),
        completes_interrupted: None,
    }
}

#[test]
fn init() {
    check_view(
        "init",
        &InitView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsInit",
            repo: "/srv/desired".into(),
            requested_ref: "v1".into(),
            resolved_revision: REV1.into(),
            target_file: "/var/lib/core-ops/target.json".into(),
        },
        false,
    );
}

#[test]
fn plan_document_is_the_golden_plan() {
    let plan = plan();
    let view = PlanView { plan: &plan };
    check_view("plan", &view, false);
    check("plan-verbose.txt", &view.text(true));
}

#[test]
fn applied_with_rollback_quarantine_and_lifted() {
    let plan = plan();
    let result = apply_result();
    let lifted = Some(Quarantine {
        revision: REV1.into(),
        requested_ref: "v1".into(),
        ..quarantine()
    });
    let view = AppliedView {
        result: &result,
        quarantine_lifted: &lifted,
        run_outcome: RunOutcome::RolledBack,
        plan: &plan,
    };
    check_view("applied", &view, false);
    check("applied-verbose.txt", &view.text(true));
}

fn run_view<'a>(quarantine: &'a Option<Quarantine>, lifted: &'a Option<Quarantine>) -> RunView<'a> {
    RunView {
        schema_version: SCHEMA_VERSION,
        kind: "CoreOpsRun",
        outcome: if quarantine.is_some() {
            RunOutcome::Quarantined
        } else {
            RunOutcome::NoChanges
        },
        desired_revision: REV2,
        requested_ref: "v2",
        intent_checksum: "sha256:2222",
        quarantine,
        quarantine_lifted: lifted,
        host: "web1",
    }
}

#[test]
fn run_quarantined_and_unchanged() {
    check_view(
        "run-quarantined",
        &run_view(&Some(quarantine()), &None),
        false,
    );
    let lifted = Some(Quarantine {
        revision: REV1.into(),
        ..quarantine()
    });
    check_view("run-no-changes", &run_view(&None, &lifted), false);
}

#[test]
fn resume_lifted_and_nothing_to_lift() {
    let view = |lifted| ResumeView {
        schema_version: SCHEMA_VERSION,
        kind: "CoreOpsResume",
        host: "web1".into(),
        lifted,
    };
    check_view("resume-lifted", &view(Some(quarantine())), false);
    check_view("resume-none", &view(None), false);
}

fn snapshot() -> StatusSnapshot {
    let mut s = StatusSnapshot::new("web1");
    s.core_ops = provenance();
    s.last_run = Some(RunRecord {
        started_at: "2026-12-01T10:00:00Z".into(),
        finished_at: "2026-12-01T10:00:04Z".into(),
        outcome: "refused".into(),
        desired_revision: REV2.into(),
        requested_ref: "v2".into(),
        intent_checksum: String::new(),
        diagnostics: vec!["the plan has blocked actions: file:/etc/web/app.env: in the way".into()],
    });
    s.history = vec![HistoryEntry {
        revision: REV1.into(),
        requested_ref: "v1".into(),
        applied_at: "2026-11-30T09:00:00Z".into(),
    }];
    s
}

#[test]
fn status_present_quarantined_and_absent_unreadable() {
    let present = StatusView {
        schema_version: SCHEMA_VERSION,
        kind: "CoreOpsStatusReport",
        state_file: "/var/lib/core-ops/status.json".into(),
        target: Some(Target {
            schema_version: 1,
            repo: "/srv/desired".into(),
            requested_ref: "main".into(),
        }),
        snapshot: SnapshotView::Present {
            snapshot: Box::new(snapshot()),
        },
        convergence: "non_converging",
        control: ControlView::Read(Control {
            schema_version: 1,
            kind: "CoreOpsControl".into(),
            attempts: Vec::new(),
            quarantine: Some(quarantine()),
        }),
        fetch: Some(crate::source::fetch_state::FetchState {
            schema_version: 1,
            kind: "CoreOpsFetch".into(),
            location: "https://git.example.invalid/fleet/desired.git".into(),
            last_success_at: Some("2026-11-30T08:55:00Z".into()),
            last_success_unix: Some(1_796_028_900),
            last_success_ms: Some(57),
            last_failure_at: Some("2026-11-30T09:05:00Z".into()),
            last_failure_kind: Some("unreachable".into()),
            last_error: Some(
                "fetch https://git.example.invalid/fleet/desired.git: connection refused".into(),
            ),
            failures_total: 3,
            consecutive_failures: 2,
        }),
    };
    check_view("status-present", &present, false);
    let absent = Absent::Missing {
        path: "/var/lib/core-ops/status.json".into(),
    };
    let absent = StatusView {
        target: None,
        snapshot: SnapshotView::Absent {
            message: absent.to_string(),
            absent,
        },
        convergence: "unknown",
        control: ControlView::Unreadable {
            error: "/var/lib/core-ops/control.json: invalid control state".into(),
        },
        fetch: None,
        ..present
    };
    check_view("status-absent", &absent, false);
}

#[test]
fn explain() {
    let plan = plan();
    let action = plan.actions[0].clone();
    check_view(
        "explain",
        &ExplainView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsExplanation",
            explanation: Explanation {
                id: action.id.clone(),
                host: "alpha".into(),
                revision: REV1.into(),
                requested_ref: "v1".into(),
                service: Some("web".into()),
                path: action.path.clone(),
                unit: action.unit.clone(),
                layers: vec![Layer {
                    file: "services/web/units/web.service.d/10-limits.conf".into(),
                    revision: REV1.into(),
                    role: "drop-in".into(),
                }],
                digest: action.digests.desired.clone(),
                normalized: Some("[Service]\nLimitNOFILE=4096\n".into()),
                depends_on: action.depends_on.clone(),
                required_by: vec!["unit:web.service".into()],
                restarts: action.restarts.clone(),
                action,
                runtime: None,
            },
        },
        false,
    );
}

#[test]
fn explain_a_secret_shows_only_its_ciphertext_digest() {
    let mut action = plan().actions[0].clone();
    action.id = "file:/etc/db/db.env".into();
    action.kind = crate::model::normalize::Kind::File;
    action.path = Some("/etc/db/db.env".into());
    action.unit = None;
    action.digests.desired = Some("hmac-sha256:5b1f".into());
    let secret = crate::model::plan::SecretView {
        source: "services/db/files/etc/db/db.env.age".into(),
        ciphertext_digest: "sha256:845e".into(),
    };
    action.secret = Some(secret.clone());
    check_view(
        "explain-secret",
        &ExplainView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsExplanation",
            explanation: Explanation {
                id: action.id.clone(),
                host: "alpha".into(),
                revision: REV1.into(),
                requested_ref: "v1".into(),
                service: Some("db".into()),
                path: action.path.clone(),
                unit: None,
                layers: vec![Layer {
                    file: secret.source.clone(),
                    revision: REV1.into(),
                    role: "host file".into(),
                }],
                digest: action.digests.desired.clone(),
                normalized: Some(secret.label()),
                depends_on: Vec::new(),
                required_by: Vec::new(),
                restarts: vec!["db.service".into()],
                action,
                runtime: None,
            },
        },
        false,
    );
}

#[test]
fn secret_keys_print_as_a_recipients_file() {
    let view = SecretKeyView {
        schema_version: SCHEMA_VERSION,
        kind: "CoreOpsAgeIdentity",
        identity: "/etc/core-ops/age.key".into(),
        created: true,
        recipients: vec!["age1qqqq".into()],
    };
    check_view("secret-keygen", &view, false);
    check_view(
        "secret-sealed",
        &SealedView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsSealedFile",
            output: "services/db/files/etc/db/db.env.age".into(),
            ciphertext_digest: "sha256:845e".into(),
            recipients: vec!["age1qqqq".into(), "age1rrrr".into()],
        },
        false,
    );
}

#[test]
fn evidence_verifies_and_does_not() {
    let file = |ok| FileCheck {
        name: "bundle.json".into(),
        recorded: "sha256:aaaa".into(),
        actual: if ok { "sha256:aaaa" } else { "sha256:bbbb" }.into(),
        ok,
    };
    let view = |ok: bool| EvidenceView {
        schema_version: SCHEMA_VERSION,
        verification: Verification {
            kind: "CoreOpsEvidenceVerification".into(),
            id: "evidence:sha256-aaaa".into(),
            path: "/var/lib/core-ops/evidence/sha256-aaaa".into(),
            ok,
            files: vec![file(ok)],
            problems: if ok {
                Vec::new()
            } else {
                vec!["bundle.json: content changed".into()]
            },
        },
    };
    check_view("evidence-ok", &view(true), false);
    check_view("evidence-bad", &view(false), false);
}

#[test]
fn publication_disabled_and_written() {
    let view = |outcome| PublicationView {
        schema_version: SCHEMA_VERSION,
        kind: "CoreOpsPublicationRequestOutcome",
        outcome,
    };
    check_view(
        "publication-disabled",
        &view(publication::Outcome::Disabled {
            how_to_enable: publication::how_to_enable("web1"),
        }),
        false,
    );
    check_view(
        "publication-written",
        &view(publication::Outcome::Written {
            path: "/var/lib/core-ops/outbox/publication-request-1.json".into(),
            request: json!({"kind": "PublicationRequest", "receipt": "urn:srcos:receipt:runtime:web1:3"}),
        }),
        false,
    );
}

#[test]
fn receipts_intact_and_broken() {
    let intact = ChainReport {
        schema_version: 1,
        kind: "CoreOpsReceiptChain".into(),
        receipts_dir: "/var/lib/core-ops/receipts".into(),
        depth: Depth::Full,
        ok: true,
        receipts: 12,
        archived: 10,
        archives: 1,
        head_sequence: Some(12),
        head_digest: Some("sha256:cccc".into()),
        problem: None,
        repair: None,
    };
    check_view(
        "receipts-intact",
        &ReceiptsView {
            report: intact.clone(),
        },
        false,
    );
    let broken = ChainReport {
        ok: false,
        receipts: 4,
        problem: Some(ChainBreak {
            kind: BreakKind::NotJson,
            file: "00000005-reconcile.json".into(),
            detail: "EOF while parsing".into(),
        }),
        repair: Some("move receipts/ aside and run core-ops apply".into()),
        ..intact
    };
    check_view("receipts-broken", &ReceiptsView { report: broken }, false);
}

#[test]
fn store_hash_is_json_either_way() {
    let view = StoreHashView {
        schema_version: SCHEMA_VERSION,
        kind: "CoreOpsStoreHash",
        file: "/tmp/artifact.tar".into(),
        digest: "sha256:dddd".into(),
        bytes: 4096,
        ms: 1.5,
    };
    check_view("store-hash", &view, false);
    assert_eq!(view.text(false).into_bytes(), view.json().unwrap());
}

#[test]
fn manpages() {
    check_view(
        "manpages",
        &ManpagesView {
            schema_version: SCHEMA_VERSION,
            kind: "CoreOpsManpages",
            pages: vec![
                "/tmp/man/core-ops.1".into(),
                "/tmp/man/core-ops-plan.1".into(),
            ],
        },
        false,
    );
}

#[test]
fn errors_name_kind_file_and_line() {
    let fixed = |mut v: ErrorView| {
        v.core_ops = provenance();
        v
    };
    let input = Error::Input(InputError::new(
        Location::line("hosts/web1/host.yaml", 7),
        "unknown field `servces`",
    ));
    check_view("error-input", &fixed(ErrorView::of(&input, 1)), false);
    let blocked = Error::BlockedPlan(
        "the plan has blocked actions; nothing was changed:\n  file:/etc/web/app.env: in the way"
            .into(),
    );
    check_view(
        "error-blocked-plan",
        &fixed(ErrorView::of(&blocked, 1)),
        false,
    );
}

#[test]
fn revision_labels_in_fixtures_are_short() {
    // the fixtures above rely on the label rule: sha first, the ref in parentheses
    assert_eq!(revision_label(REV2, "v2"), "9b2e77d0 (v2)");
}
