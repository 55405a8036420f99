//! Record: the status snapshot, receipts and evidence, each written atomically and each
//! carrying `schema_version` (DESIGN section 6).

pub mod status;
