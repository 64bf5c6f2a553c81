//! Guest RAM: anonymous `MAP_NORESERVE` mappings (nothing is allocated until the guest touches a
//! page), registered with KVM as memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::ram_ranges;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {mib} MiB of guest memory")]
    Map {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("guest memory of {bytes} bytes is too small: at least {min_mib} MiB is needed for the boot tables")]
    TooSmall { bytes: u64, min_mib: u64 },
    #[error("guest memory region at {guest_addr:#x} has no host mapping")]
    NoHostMapping { guest_addr: u64 },
    #[error("KVM refused memory slot {slot} at {guest_addr:#x}")]
    SetSlot {
        slot: u32,
        guest_addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Smallest guest we build: the boot tables live below 1 MiB and the kernel starts at 1 MiB.
pub const MIN_MEMORY_BYTES: u64 = 2 << 20;

/// Maps guest RAM of `memory_bytes` (lazily: MAP_NORESERVE, untouched pages cost nothing).
pub fn create_guest_memory(memory_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if memory_bytes < MIN_MEMORY_BYTES {
        return Err(MemoryError::TooSmall {
            bytes: memory_bytes,
            min_mib: MIN_MEMORY_BYTES >> 20,
        });
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(memory_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        mib: memory_bytes >> 20,
        source,
    })
}

/// Registers every region of `mem` with the VM, one slot each.
pub fn register_memory_slots(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let guest_addr = region.start_addr().raw_value();
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| MemoryError::NoHostMapping { guest_addr })?;
        let slot_info = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: `host_addr..host_addr + len` is a live mapping owned by `mem`, which the caller
        // keeps alive for as long as the VM exists (the `Vm` struct owns both and drops the VM fd
        // first); slots do not overlap because the regions of a `GuestMemoryMmap` do not.
        unsafe { vm.set_user_memory_region(slot_info) }.map_err(|source| MemoryError::SetSlot {
            slot,
            guest_addr,
            source,
        })?;
    }
    Ok(())
}
