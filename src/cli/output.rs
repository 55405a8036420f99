//! Human renderings of the JSON view models. Deterministic (no clock, no colours, sorted
//! input), so they can be golden-tested like the JSON.

use std::fmt::Write;

use super::views::{
    AppliedView, ControlView, ErrorView, InitView, ManpagesView, PublicationView, ResumeView,
    RunView, SealedView, SecretKeyView, SnapshotView, StatusView,
};
use crate::explain::Explanation;
use crate::plan::{Action, Plan};
use crate::record::control::Quarantine;
use crate::record::publication;
use crate::record::status::{Absent, StatusSnapshot};
use crate::record::target::Target;

fn short(sha: &str) -> &str {
    &sha[..8.min(sha.len())]
}

/// `454ac5f1 (v1)`: immutable revision first, requested ref second (omitted when it is the
/// sha itself).
pub fn revision_label(sha: &str, requested: &str) -> String {
    if requested.is_empty() || sha.starts_with(requested) {
        short(sha).to_string()
    } else {
        format!("{} ({requested})", short(sha))
    }
}

/// `3 create, 1 update` (or `no changes`): the plan's summary without no-ops.
fn change_counts(plan: &Plan) -> String {
    let counts: Vec<String> = plan
        .summary
        .iter()
        .filter(|(k, _)| k.as_str() != "no_op")
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    if counts.is_empty() {
        "no changes".to_string()
    } else {
        counts.join(", ")
    }
}

/// The `fetch` lines of `status`: the last successful fetch and, while fetches fail, the
/// failure streak and the last error (credentials never appear in it).
pub fn fetch_text(f: &crate::source::fetch_state::FetchState) -> String {
    let mut t = format!(
        "fetch      last success {}{}\n",
        f.last_success_at.as_deref().unwrap_or("never"),
        f.last_success_ms
            .map(|ms| format!(" ({ms} ms)"))
            .unwrap_or_default()
    );
    if f.consecutive_failures > 0 {
        t.push_str(&format!(
            "           FAILING: {} failed fetch(es) in a row since then ({} in all), last at {} ({}): the host stays on its last applied revision; the next run retries\n           {}\n",
            f.consecutive_failures,
            f.failures_total,
            f.last_failure_at.as_deref().unwrap_or("?"),
            f.last_failure_kind.as_deref().unwrap_or("other"),
            f.last_error.as_deref().unwrap_or("")
        ));
    }
    t
}

/// `454ac5f1 (v2) quarantined since T (non_converging after 3 attempts: ids)`.
pub fn quarantine_text(q: &crate::record::control::Quarantine) -> String {
    format!(
        "{} quarantined since {} ({} after {} attempts: {})",
        revision_label(&q.revision, &q.requested_ref),
        q.since,
        q.reason,
        q.attempts,
        q.objects.join(", ")
    )
}

/// Text of a plan: changed objects in order, unchanged ones collapsed into a count.
pub fn plan_text(plan: &Plan, verbose: bool) -> String {
    let mut o = String::new();
    let b = &plan.base;
    let _ = writeln!(o, "core-ops plan for host {}", plan.host);
    let _ = writeln!(o, "  repo     {}", plan.repo);
    let _ = writeln!(
        o,
        "  desired  {}",
        revision_label(&b.desired_revision, &b.requested_ref)
    );
    let _ = writeln!(
        o,
        "  applied  {}",
        b.last_applied_revision
            .as_deref()
            .map(short)
            .unwrap_or("none")
    );
    let _ = writeln!(o);
    let width = plan.actions.iter().map(|a| a.id.len()).max().unwrap_or(0);
    let mut unchanged = 0;
    for a in &plan.actions {
        if a.action == Action::NoOp && !verbose {
            unchanged += 1;
            continue;
        }
        let _ = writeln!(
            o,
            "  {:>3}. {:<8} {:<width$}  [{}] {}",
            a.order,
            a.action.as_str(),
            a.id,
            crate::model::names::serde_name(&a.cause),
            a.reason,
        );
        if let Some(s) = &a.secret {
            let _ = writeln!(o, "       {:<8} content  {}", "", s.label());
        }
        if !a.restarts.is_empty() && a.action != Action::NoOp {
            let _ = writeln!(o, "       {:<8} restarts {}", "", a.restarts.join(", "));
        }
    }
    if unchanged > 0 {
        let _ = writeln!(
            o,
            "  ({unchanged} unchanged objects not shown; -v shows them)"
        );
    }
    if !plan.findings.is_empty() {
        let _ = writeln!(o, "\nfindings:");
        for f in &plan.findings {
            let _ = writeln!(o, "  {:<16} {}: {}", f.kind, f.id, f.reason);
        }
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(o, "\nwarnings:");
        for w in &plan.warnings {
            let _ = writeln!(o, "  {w}");
        }
    }
    let _ = writeln!(
        o,
        "\nPlan: {}. checksum {}",
        change_counts(plan),
        plan.checksum
    );
    o
}

/// Text of [`InitView`].
pub fn init_text(v: &InitView) -> String {
    format!(
        "core-ops will follow {} at {}\n  saved to {}\n",
        v.repo,
        revision_label(&v.resolved_revision, &v.requested_ref),
        v.target_file
    )
}

/// The line a run adds when it lifted a quarantine (empty when it did not).
fn lifted_text(lifted: Option<&Quarantine>) -> String {
    lifted
        .map(|l| {
            format!(
                "quarantine of {} lifted: the desired revision moved on\n",
                revision_label(&l.revision, &l.requested_ref)
            )
        })
        .unwrap_or_default()
}

/// Text of [`AppliedView`]: the apply, then a lifted quarantine.
pub fn applied_text(v: &AppliedView<'_>, verbose: bool) -> String {
    apply_text(v.plan, v.result, verbose) + &lifted_text(v.quarantine_lifted.as_ref())
}

/// Text of [`RunView`]: why nothing was applied, then a lifted quarantine.
pub fn run_text(v: &RunView<'_>) -> String {
    let head = match v.quarantine {
        Some(q) => format!(
            "not applied: {}; review, then run core-ops resume\n",
            quarantine_text(q)
        ),
        None => format!(
            "no changes: host {} matches {}\n",
            v.host,
            revision_label(v.desired_revision, v.requested_ref)
        ),
    };
    head + &lifted_text(v.quarantine_lifted.as_ref())
}

/// Text of [`ResumeView`].
pub fn resume_text(v: &ResumeView) -> String {
    match &v.lifted {
        Some(q) => format!(
            "quarantine of {} lifted on {} ({} after {} attempts: {}); the next run applies it again\n",
            revision_label(&q.revision, &q.requested_ref),
            v.host,
            q.reason,
            q.attempts,
            q.objects.join(", ")
        ),
        None => format!("no quarantine on {}; nothing to resume\n", v.host),
    }
}

/// Text of [`StatusView`]: the snapshot, then the quarantine or an unreadable control file.
pub fn status_view_text(v: &StatusView) -> String {
    let snapshot = match &v.snapshot {
        SnapshotView::Present { snapshot } => Ok(snapshot.as_ref()),
        SnapshotView::Absent { absent, .. } => Err(absent),
    };
    let mut text = status_text(&v.state_file, snapshot, v.target.as_ref());
    match &v.control {
        ControlView::Read(c) => {
            if let Some(q) = &c.quarantine {
                let _ = writeln!(
                    text,
                    "state      non_converging: {}\n  the agent will not apply it again until a new desired revision or `core-ops resume`",
                    quarantine_text(q)
                );
            }
        }
        ControlView::Unreadable { error } => {
            let _ = writeln!(text, "control    unreadable: {error}");
        }
    }
    if let Some(f) = &v.fetch {
        text.push_str(&fetch_text(f));
    }
    text
}

/// Text of [`PublicationView`].
pub fn publication_text(v: &PublicationView) -> String {
    match &v.outcome {
        publication::Outcome::Disabled { how_to_enable } => {
            format!("nothing written: {how_to_enable}\n")
        }
        publication::Outcome::Written { path, .. } => {
            format!("publication request written for review: {path}\n(core-ops never sends it)\n")
        }
    }
}

/// Text of [`ManpagesView`]: one path a line.
pub fn manpages_text(v: &ManpagesView) -> String {
    v.pages.iter().map(|p| format!("{p}\n")).collect()
}

/// Text of [`SecretKeyView`]: a comment line naming the identity, then the public keys one
/// per line, so the output is itself a recipients file (`> hosts/<host>/age.recipients`).
pub fn secret_key_text(v: &SecretKeyView) -> String {
    let created = if v.created {
        ", created, mode 0600"
    } else {
        ""
    };
    let mut o = format!("# age identity {}{created}\n", v.identity);
    for r in &v.recipients {
        let _ = writeln!(o, "{r}");
    }
    o
}

/// Text of [`SealedView`].
pub fn sealed_text(v: &SealedView) -> String {
    format!(
        "wrote {} ({}) for {} recipient(s)\n",
        v.output,
        v.ciphertext_digest,
        v.recipients.len()
    )
}

/// Text of [`ErrorView`] (printed on stderr).
pub fn error_text(v: &ErrorView) -> String {
    format!("core-ops: error: {}\n", v.error.message)
}

/// Text of `apply`: counts and outcome; `-v` adds phases and every diagnostic.
pub fn apply_text(plan: &Plan, r: &crate::apply::ApplyResult, verbose: bool) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "apply {} on {}: {}",
        revision_label(&r.desired_revision, &r.requested_ref),
        r.host,
        change_counts(plan)
    );
    let _ = writeln!(
        o,
        "outcome: {} ({} jobs, {} reloads){}",
        r.outcome.as_str(),
        r.calls.jobs,
        r.calls.reloads,
        if r.last_applied_advanced {
            "; last_applied advanced"
        } else {
            "; last_applied unchanged"
        }
    );
    if verbose {
        for p in &r.phases {
            let _ = writeln!(
                o,
                "  phase {:<8} {:>6} ms  {}",
                p.name, p.duration_ms, p.detail
            );
        }
    }
    let shown = if verbose { r.diagnostics.len() } else { 10 };
    for d in r.diagnostics.iter().take(shown) {
        let _ = writeln!(o, "  - {}: {}", d.id, d.problem);
    }
    if r.diagnostics.len() > shown {
        let _ = writeln!(
            o,
            "  ... {} more (-v or --json)",
            r.diagnostics.len() - shown
        );
    }
    if let Some(id) = &r.receipt {
        let _ = writeln!(o, "receipt {id}");
    }
    if let Some(rb) = &r.rollback {
        let _ = writeln!(
            o,
            "{} to {} ({}, {} ms){}",
            if rb.outcome.is_converged() {
                "rolled back"
            } else {
                "automatic rollback FAILED going back"
            },
            &rb.to_revision[..8.min(rb.to_revision.len())],
            rb.outcome.as_str(),
            rb.duration_ms,
            rb.receipt
                .as_ref()
                .map(|id| format!("; receipt {id}"))
                .unwrap_or_default()
        );
    }
    if let Some(q) = &r.quarantine {
        let _ = writeln!(
            o,
            "revision {} quarantined ({}); run core-ops resume after review",
            &q.revision[..8.min(q.revision.len())],
            q.reason
        );
    }
    o
}

/// Text of `status`.
pub fn status_text(
    state_file: &str,
    snapshot: Result<&StatusSnapshot, &Absent>,
    target: Option<&Target>,
) -> String {
    let mut o = String::new();
    if let Some(t) = target {
        let _ = writeln!(o, "target     {} @ {}", t.repo, t.requested_ref);
    }
    match snapshot {
        Err(absent) => {
            let _ = writeln!(o, "status     absent ({absent})");
        }
        Ok(s) => {
            let _ = writeln!(o, "status     {state_file}");
            let _ = writeln!(o, "host       {}", s.host);
            let _ = writeln!(
                o,
                "written by core-ops {} (build {})",
                s.core_ops.version, s.core_ops.build_revision
            );
            match &s.last_applied {
                Some(l) => {
                    let _ = writeln!(
                        o,
                        "applied    {} at {} ({} objects)",
                        revision_label(&l.revision, &l.requested_ref),
                        l.applied_at,
                        l.resources.len()
                    );
                }
                None => {
                    let _ = writeln!(o, "applied    nothing yet");
                }
            }
            if let Some(r) = &s.last_run {
                let _ = writeln!(
                    o,
                    "last run   {} for {} at {}",
                    r.outcome,
                    revision_label(&r.desired_revision, &r.requested_ref),
                    r.finished_at
                );
                for d in &r.diagnostics {
                    let _ = writeln!(o, "  - {d}");
                }
            }
            if let Some(h) = s.receipts.as_ref().filter(|h| !h.ok) {
                let _ = writeln!(
                    o,
                    "receipts   BROKEN: {}; runs are refused until it is repaired (core-ops receipts verify)",
                    h.problem.as_deref().unwrap_or("unknown")
                );
            }
            for (name, rt) in &s.runtimes {
                let _ = writeln!(
                    o,
                    "runtime    {name}: current {}, previous {}",
                    rt.current.as_deref().unwrap_or("none"),
                    rt.previous.as_deref().unwrap_or("none")
                );
                if let Some(r) = &rt.last_receipt {
                    let _ = writeln!(
                        o,
                        "             last receipt {} ({} {}, {})",
                        r.id, r.install_state, r.version, r.recorded_at
                    );
                }
            }
        }
    }
    o
}

/// Text of `evidence verify`.
pub fn evidence_text(v: &crate::runtime::evidence::Verification) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} {}",
        v.id,
        if v.ok { "verifies" } else { "DOES NOT VERIFY" }
    );
    let _ = writeln!(o, "  path  {}", v.path);
    for f in &v.files {
        let _ = writeln!(
            o,
            "  {} {}  {}",
            if f.ok { "ok " } else { "BAD" },
            f.name,
            f.recorded
        );
    }
    for p in &v.problems {
        let _ = writeln!(o, "  - {p}");
    }
    o
}

/// Text of `receipts verify`.
pub fn receipts_text(r: &crate::record::receipts::ChainReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "receipt chain {}: {} receipts verified ({} in {} archives), {}",
        if r.ok { "intact" } else { "BROKEN" },
        r.receipts,
        r.archived,
        r.archives,
        r.receipts_dir
    );
    if let (Some(s), Some(d)) = (r.head_sequence, &r.head_digest) {
        let _ = writeln!(o, "  {} {s} {d}", if r.ok { "head" } else { "last intact" });
    }
    if let Some(p) = &r.problem {
        let kind = crate::model::names::serde_name(&p.kind);
        let _ = writeln!(o, "  broken at {} ({kind}): {}", p.file, p.detail);
        let _ = writeln!(
            o,
            "  apply and agent refuse to run (nothing is appended to a broken chain)"
        );
    }
    if let Some(r) = &r.repair {
        let _ = writeln!(o, "  repair: {r}");
    }
    o
}

/// Text of `explain`.
pub fn explain_text(e: &Explanation) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}", e.id);
    let _ = writeln!(
        o,
        "  revision  {} on host {}",
        revision_label(&e.revision, &e.requested_ref),
        e.host
    );
    if let Some(s) = &e.service {
        let _ = writeln!(o, "  service   {s}");
    }
    if let Some(p) = &e.path {
        let _ = writeln!(o, "  path      {p}");
    }
    if let Some(u) = &e.unit {
        let _ = writeln!(o, "  unit      {u}");
    }
    if let Some(d) = &e.digest {
        let _ = writeln!(o, "  digest    {d}");
    }
    if let Some(s) = &e.action.secret {
        let _ = writeln!(o, "  secret    {} from {}", s.label(), s.source);
    }
    let _ = writeln!(
        o,
        "  action    {} [{}] {}",
        e.action.action.as_str(),
        crate::model::names::serde_name(&e.action.cause),
        e.action.reason
    );
    if !e.layers.is_empty() {
        let _ = writeln!(o, "  layers");
        for l in &e.layers {
            let _ = writeln!(o, "    {} @ {} ({})", l.file, l.revision, l.role);
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(o, "  after     {}", list(&e.depends_on));
    let _ = writeln!(o, "  before    {}", list(&e.required_by));
    if !e.restarts.is_empty() {
        let _ = writeln!(o, "  restarts  {}", e.restarts.join(", "));
    }
    if let Some(n) = &e.normalized {
        let _ = writeln!(o, "  normalized content:");
        for line in n.lines() {
            let _ = writeln!(o, "    {line}");
        }
    }
    if let Some(h) = &e.runtime {
        runtime_history_text(&mut o, h);
    }
    o
}

/// The runtime part of `explain runtime:NAME`: versions on disk and every transaction.
fn runtime_history_text(o: &mut String, h: &crate::apply::runtimes::history::RuntimeHistory) {
    let _ = writeln!(
        o,
        "  runtime   current {}, previous {}, on disk: {}",
        h.current.as_deref().unwrap_or("none"),
        h.previous.as_deref().unwrap_or("none"),
        if h.installed.is_empty() {
            "-".to_string()
        } else {
            h.installed.join(", ")
        }
    );
    if let Some(t) = &h.in_flight {
        let _ = writeln!(o, "  in flight {t} (the next apply resolves it)");
    }
    let _ = writeln!(o, "  transactions ({}):", h.transactions.len());
    for t in &h.transactions {
        let states: Vec<&str> = t.steps.iter().map(|s| s.state.as_str()).collect();
        let _ = writeln!(
            o,
            "    {} {}: {}{}",
            t.steps.first().map(|s| s.at.as_str()).unwrap_or(""),
            t.version,
            states.join(" -> "),
            if t.recovered { " (recovered)" } else { "" }
        );
        if let Some(r) = &t.failure_reason {
            let _ = writeln!(o, "      reason: {r}");
        }
        if let Some(last) = t.steps.last() {
            let _ = writeln!(o, "      receipt {}  {}", last.receipt, last.evidence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_first_ref_second() {
        let sha = "454ac5f1c0ffee00000000000000000000000000";
        assert_eq!(revision_label(sha, "v1"), "454ac5f1 (v1)");
        assert_eq!(revision_label(sha, "454ac5f"), "454ac5f1");
        assert_eq!(revision_label(sha, sha), "454ac5f1");
    }
}
