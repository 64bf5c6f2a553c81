//! Orchestrator (see README.md).
#![forbid(unsafe_code)]
