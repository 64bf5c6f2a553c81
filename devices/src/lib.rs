//! Device models for hv-vmm (see README.md).
