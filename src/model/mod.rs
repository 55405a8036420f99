//! The shared model every stage speaks: object kinds and their material digests
//! ([`normalize`]), the unit-file (INI) model ([`unit_file`]), the desired-state documents
//! ([`yaml`]: host.yaml, service.yaml), deterministic dependency order ([`order`]), the plan's
//! vocabulary ([`plan`]: actions, causes, the plan document), what was last applied
//! ([`applied`]), time ([`time`]) and the serde names of unit enum variants ([`names`]).
//!
//! Why a module of its own: the pipeline `source -> render -> observe -> plan -> apply ->
//! verify -> record` runs one way only if the types two stages share live below all of them.
//! `model` depends on nothing of the pipeline (only `error` and `provenance`), and a test
//! (`tests/module_graph.rs`) fails on any cycle between top-level modules.

pub mod applied;
pub mod names;
pub mod normalize;
pub mod order;
pub mod plan;
pub mod time;
pub mod unit_file;
pub mod yaml;
