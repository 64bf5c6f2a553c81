//! Orchestrator (see README.md).
#![forbid(unsafe_code)]

pub mod features;
pub mod host;
