//! Shared helpers of the integration tests.

pub mod bed;
pub mod cli;
pub mod remote;
pub mod world;
