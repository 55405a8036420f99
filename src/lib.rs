//! core-ops: GitOps for the host itself.
//!
//! The pipeline is visible in the module tree and data flows one way:
//! `source -> render -> observe -> plan -> apply -> verify -> record`.
//! Every stage takes values and returns values where it can, so the planner can be tested
//! without git, a filesystem or systemd.

pub mod config;
pub mod error;
pub mod fsutil;
pub mod normalize;
pub mod observe;
pub mod plan;
pub mod provenance;
pub mod record;
pub mod render;
pub mod source;
pub mod systemd;
