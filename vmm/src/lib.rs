//! hv-vmm: one KVM virtual machine per process, built on the rust-vmm crates.
//!
//! Owns: VM lifecycle, guest memory, vCPUs, CPUID/MSRs, kernel loading, device wiring and the
//! per-VM API socket. Must not: know about tags, catalogs or other VMs (that is the orchestrator).
//!
//! Flow: [`config`] → [`builder::build_and_start`] (KVM VM via [`vstate`], kernel via [`loader`],
//! boot tables via [`arch`], devices from `hv-devices`) → [`runtime::run`] until the guest resets,
//! fails, or is stopped by a signal or the [`api`].

pub mod api;
pub mod arch;
pub mod builder;
pub mod clock;
pub mod config;
pub mod console;
pub mod event;
pub mod loader;
pub mod runtime;
pub mod vstate;
