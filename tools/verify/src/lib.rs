//! The verification harness behind `core-ops-verify`: scenarios (YAML) run end to end on a
//! disposable VM whose own systemd core-ops reconciles, with a bundle of evidence per run.
//!
//! Pipeline of one scenario: [`scenario`] (strict definition) -> [`fixture`] (revision
//! directories become a git history) -> [`vm`] ([`guest`] description, [`qemu`] or [`libvirt`]
//! driver, [`image`]) -> [`readiness`] -> [`control`] -> [`steps`] and [`assertions`] ->
//! [`bundle`] and [`report`]. [`synthetic`] is the hidden test-bed backend for the harness's
//! own fast tests. Why in the library: the rules are unit-tested as functions; the binary only
//! parses arguments.

pub mod assertions;
pub mod bundle;
pub mod cleanup;
pub mod cli;
pub mod control;
pub mod fixture;
pub mod guest;
pub mod image;
pub mod libvirt;
pub mod machine;
pub mod qemu;
pub mod readiness;
pub mod report;
pub mod resources;
pub mod runner;
pub mod scenario;
pub mod steps;
pub mod synthetic;
pub mod vm;
