//! core-ops: GitOps for the host itself.
//!
//! The pipeline is visible in the module tree and data flows one way:
//! `source -> render -> observe -> plan -> apply -> verify -> record`.
//! Every stage takes values and returns values where it can, so the planner can be tested
//! without git, a filesystem or systemd.

// the pipeline, in order
pub mod apply;
pub mod normalize;
pub mod observe;
pub mod plan;
pub mod quadlet_check;
pub mod reconcile;
pub mod record;
pub mod render;
pub mod runtime;
pub mod source;
pub mod unit_check;
pub mod verify;

// what the stages share
pub mod config;
pub mod error;
pub mod fsutil;
pub mod lock;
pub mod names;
pub mod pipeline;
pub mod provenance;
pub mod systemd;
pub mod trust;

// operator surface
pub mod cli;
pub mod explain;

// crash points for the crash-safety tests (no-ops unless built with `failpoints`)
pub mod failpoint;
