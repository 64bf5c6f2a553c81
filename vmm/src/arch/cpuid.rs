//! CPUID for each vCPU: KVM's supported list, made consistent with the VM's topology.
//!
//! KVM reports what the host can virtualise; a guest also reads its topology from CPUID (APIC id,
//! logical processor count, leaf 0xB/0x1F levels, cores sharing caches), which KVM leaves to the
//! VMM. The guest's performance-monitoring leaf is cleared: the VMM does not expose a PMU.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;

const FEATURES_ECX_HYPERVISOR: u32 = 1 << 31;
const FEATURES_EDX_HTT: u32 = 1 << 28;

const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Topology of the VM: `vcpus` single-threaded cores in one socket. APIC id = vCPU index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub vcpus: u8,
}

impl Topology {
    /// Bits of the APIC id that number cores within the package (x2APIC shift of the core level).
    fn core_shift(self) -> u32 {
        u32::from(self.vcpus).next_power_of_two().trailing_zeros()
    }
}

/// Rewrites `entries` (KVM's supported CPUID) for the vCPU with APIC id `apic_id`.
pub fn filter_for_vcpu(entries: &mut [kvm_cpuid_entry2], apic_id: u8, topology: Topology) {
    let vcpus = u32::from(topology.vcpus);
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                entry.ebx = (entry.ebx & 0x0000_ffff) | (u32::from(apic_id) << 24) | (vcpus << 16);
                entry.ecx |= FEATURES_ECX_HYPERVISOR;
                if vcpus > 1 {
                    entry.edx |= FEATURES_EDX_HTT;
                } else {
                    entry.edx &= !FEATURES_EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26] cores per package - 1; EAX[25:14] logical processors sharing this
                // cache - 1: the L3 (level 3) is shared by all vCPUs, L1/L2 are per core.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { vcpus - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | ((vcpus - 1) << 26) | (sharing << 14);
            }
            LEAF_PMU => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                fill_topology_level(entry, apic_id, topology);
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[7:0] number of cores - 1, ECX[15:12] APIC id size.
                entry.ecx = (entry.ecx & !0xf0ff) | (vcpus - 1) | (topology.core_shift() << 12);
            }
            _ => {}
        }
    }
}

fn fill_topology_level(entry: &mut kvm_cpuid_entry2, apic_id: u8, topology: Topology) {
    entry.edx = u32::from(apic_id);
    match entry.index {
        0 => {
            // SMT level: one thread per core, so no APIC id bits.
            entry.eax = 0;
            entry.ebx = 1;
            entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
        }
        1 => {
            entry.eax = topology.core_shift();
            entry.ebx = u32::from(topology.vcpus);
            entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
        }
        _ => {
            // Invalid level terminates the enumeration.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = entry.index;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn test_cpuid_leaf1_carries_apic_id_and_count() {
        let mut entries = [entry(1, 0)];
        filter_for_vcpu(&mut entries, 3, Topology { vcpus: 4 });
        assert_eq!(entries[0].ebx >> 24, 3);
        assert_eq!((entries[0].ebx >> 16) & 0xff, 4);
        assert_eq!(
            entries[0].ebx & 0xffff,
            0xffff,
            "CLFLUSH size and brand kept"
        );
        assert_ne!(entries[0].ecx & FEATURES_ECX_HYPERVISOR, 0);
        assert_ne!(entries[0].edx & FEATURES_EDX_HTT, 0);
        let mut single = [entry(1, 0)];
        filter_for_vcpu(&mut single, 0, Topology { vcpus: 1 });
        assert_eq!(single[0].edx & FEATURES_EDX_HTT, 0);
    }

    #[test]
    fn test_cpuid_topology_leaf_describes_cores() {
        let mut entries = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        filter_for_vcpu(&mut entries, 5, Topology { vcpus: 6 });
        assert_eq!(
            (entries[0].eax, entries[0].ebx, entries[0].ecx),
            (0, 1, 0x100)
        );
        assert_eq!(
            (entries[1].eax, entries[1].ebx, entries[1].ecx),
            (3, 6, 0x201)
        );
        assert_eq!((entries[2].ebx, entries[2].ecx >> 8), (0, 0));
        assert!(entries.iter().all(|e| e.edx == 5));
    }

    #[test]
    fn test_cpuid_cache_sharing_and_pmu_cleared() {
        let mut l1 = entry(4, 0);
        l1.eax = 1 << 5; // level 1
        let mut l3 = entry(4, 3);
        l3.eax = 3 << 5; // level 3
        let mut entries = [l1, l3, entry(0xa, 0)];
        filter_for_vcpu(&mut entries, 0, Topology { vcpus: 2 });
        assert_eq!(entries[0].eax >> 26, 1);
        assert_eq!((entries[0].eax >> 14) & 0xfff, 0);
        assert_eq!((entries[1].eax >> 14) & 0xfff, 1);
        assert_eq!(
            entries[2].eax | entries[2].ebx | entries[2].ecx | entries[2].edx,
            0
        );
    }

    #[test]
    fn test_cpuid_leaves_not_about_topology_untouched() {
        let mut entries = [entry(0x7, 0), entry(0x4000_0000, 0)];
        let before = entries;
        filter_for_vcpu(&mut entries, 1, Topology { vcpus: 2 });
        assert_eq!(entries[0].ebx, before[0].ebx);
        assert_eq!(entries[1].eax, before[1].eax);
    }
}
