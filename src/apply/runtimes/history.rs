//! The operator's view of one runtime: current and previous versions, an interrupted
//! transaction if any, and the transaction history read back from the receipt chain (the
//! receipts are the record; nothing here is a second copy of them).

use serde::Serialize;
use serde_json::Value;

use crate::error::Result;

use super::transaction::Transaction;
use crate::record::runtime_receipt as receipt;
use crate::runtime::Layout;

/// One transition of a transaction, as its receipt says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// `installState`.
    pub state: String,
    /// Receipt id.
    pub receipt: String,
    /// `capturedAt`.
    pub at: String,
    /// `evidenceRefs[0]`.
    pub evidence: String,
}

/// One transaction, from its receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransactionView {
    /// Session ref (one per transaction).
    pub session: String,
    /// Version it installed (or tried to).
    pub version: String,
    /// Its transitions in order.
    pub steps: Vec<Step>,
    /// Terminal state, if it ended.
    pub outcome: Option<String>,
    /// `failureReason` of the terminal receipt.
    pub failure_reason: Option<String>,
    /// `rollbackRef` of the last receipt.
    pub rollback_ref: Option<String>,
    /// Written (partly) by start-up recovery.
    pub recovered: bool,
}

/// `explain runtime:<name>`'s runtime section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeHistory {
    /// Runtime name.
    pub name: String,
    /// Version `current` points at.
    pub current: Option<String>,
    /// Version current before the last switch.
    pub previous: Option<String>,
    /// Versions on disk.
    pub installed: Vec<String>,
    /// A transaction a killed run left (`id` and state), resolved by the next apply.
    pub in_flight: Option<String>,
    /// Transactions, oldest first.
    pub transactions: Vec<TransactionView>,
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

/// Build the history of one runtime from the state dir.
pub fn of(state_dir: &std::path::Path, name: &str) -> Result<RuntimeHistory> {
    let layout = Layout::new(state_dir, name);
    let mut installed: Vec<String> = std::fs::read_dir(layout.dir.join(".meta"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")
                        .map(str::to_string)
                })
                .filter(|v| layout.version_dir(v).is_dir())
                .collect()
        })
        .unwrap_or_default();
    installed.sort();
    let in_flight = Transaction::load(&layout)
        .ok()
        .flatten()
        .map(|t| format!("{} ({})", t.id, t.state.name()));
    let mut transactions: Vec<TransactionView> = Vec::new();
    for (_, doc) in receipt::list(state_dir)? {
        if s(&doc, "runtimeName").as_deref() != Some(name) {
            continue;
        }
        let session = s(&doc, "sessionRef").unwrap_or_default();
        let state = s(&doc, "installState").unwrap_or_default();
        let step = Step {
            state: state.clone(),
            receipt: s(&doc, "id").unwrap_or_default(),
            at: s(&doc, "capturedAt").unwrap_or_default(),
            evidence: doc["evidenceRefs"][0]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        let recovered = doc["causalRefs"].as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c.as_str() == Some(receipt::RECOVERED_CAUSE))
        });
        if transactions.last().is_none_or(|t| t.session != session) {
            transactions.push(TransactionView {
                session: session.clone(),
                version: s(&doc, "runtimeVersion").unwrap_or_default(),
                steps: Vec::new(),
                outcome: None,
                failure_reason: None,
                rollback_ref: None,
                recovered: false,
            });
        }
        let t = transactions.last_mut().expect("pushed");
        t.recovered |= recovered;
        t.rollback_ref = s(&doc, "rollbackRef");
        if serde_json::from_value::<receipt::InstallState>(doc["installState"].clone())
            .is_ok_and(|st| st.is_terminal())
        {
            t.outcome = Some(state);
            t.failure_reason = s(&doc, "failureReason");
        }
        t.steps.push(step);
    }
    Ok(RuntimeHistory {
        name: name.to_string(),
        current: layout.current_version(),
        previous: layout.load_record().previous,
        installed,
        in_flight,
        transactions,
    })
}
