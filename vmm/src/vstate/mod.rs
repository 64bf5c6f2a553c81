//! KVM state: the `/dev/kvm` handle, the VM (memory slots, in-kernel irqchip and PIT) and the vCPUs.
//!
//! The only module of hv-vmm with `unsafe` code: memory-slot registration and the vCPU kick signal.

pub mod kvm;
pub mod memory;
pub mod teardown;
pub mod vcpu;
pub mod vm;
