//! hv-vmm library (see README.md).
