//! Orchestrator (see README.md).
#![forbid(unsafe_code)]

pub mod compute;
pub mod features;
pub mod host;
pub mod libvirt;
pub mod store;
