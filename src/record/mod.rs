//! Record: the status snapshot, the persisted target, receipts and results documents, each
//! written atomically and each carrying `schema_version` (docs/design.md section 6).

pub mod archive;
pub mod control;
pub mod journal;
pub mod ledger;
pub mod metrics;
pub mod publication;
pub mod receipts;
pub mod retention;
pub mod runtime_receipt;
pub mod status;
pub mod target;
