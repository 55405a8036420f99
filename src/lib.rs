//! core-ops: GitOps for the host itself.
//!
//! The pipeline is visible in the module tree and data flows one way:
//! `source -> render -> observe -> plan -> apply -> verify -> record`, over a shared [`model`]
//! that depends on none of them; `tests/module_graph.rs` fails on any cycle between
//! top-level modules.
//! Every stage takes values and returns values where it can, so the planner can be tested
//! without git, a filesystem or systemd.

// the shared model (depends on no stage)
pub mod model;

// the pipeline stages (their order: the crate docs above and DEVELOPMENT.md)
pub mod apply;
pub mod observe;
pub mod pipeline;
pub mod plan;
pub mod quadlet_check;
pub mod reconcile;
pub mod record;
pub mod render;
pub mod source;
pub mod trust;
pub mod unit_check;
pub mod verify;

// a runtime's own domain, below every stage that handles runtimes
pub mod runtime;

// what the stages build on
pub mod config;
pub mod error;
pub mod fsutil;
pub mod lock;
pub mod provenance;
pub mod systemd;

// operator surface
pub mod cli;
pub mod explain;

// crash points for the crash-safety tests (no-ops unless built with `failpoints`)
pub mod failpoint;
