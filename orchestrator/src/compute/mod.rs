//! Compute units: specs, tags, policies, blueprints, resolution with provenance, launching and the
//! `hv-compute` command line. See docs/compute.md for the user-facing description.

pub mod blueprint;
pub mod catalog;
pub mod cli;
pub mod explain;
pub mod launch;
pub mod resolve;
pub mod spec;
pub mod state;
