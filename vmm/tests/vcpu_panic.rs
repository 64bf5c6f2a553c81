//! A panic on a vCPU thread (here: inside a device model) is caught, reported as a vCPU failure with
//! a register dump, and does not take the process down with a bare abort.

mod common;

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use common::*;
use hv_devices::BusDevice;
use hv_vmm::arch::boot::{write_pvh_start_info, BootProtocol};
use hv_vmm::arch::cpuid::Topology;
use hv_vmm::arch::memory_map::memory_map;
use hv_vmm::arch::regs::write_boot_descriptor_tables;
use hv_vmm::event::{IoBuses, VmmEvent};
use hv_vmm::loader::load_kernel;
use hv_vmm::vstate::kvm::open_kvm;
use hv_vmm::vstate::memory::create_guest_memory;
use hv_vmm::vstate::vcpu::{create_vcpu, supported_cpuid, RunControl, Vcpu};
use hv_vmm::vstate::vm::Vm;

/// A "serial port" whose model has a bug.
struct PanickingDevice;

impl BusDevice for PanickingDevice {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        panic!("device model bug");
    }
}

#[test]
fn test_vcpu_thread_panic_becomes_failure_with_register_dump() {
    if !kvm_or_skip("test_vcpu_thread_panic_becomes_failure_with_register_dump") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_file(dir.path(), "hello");
    let memory_bytes = 16 << 20;
    let kvm = open_kvm().unwrap();
    let vm = Vm::new(&kvm, create_guest_memory(memory_bytes).unwrap()).unwrap();
    let loaded = load_kernel(&vm.memory, memory_bytes, &kernel).unwrap();
    assert_eq!(loaded.protocol, BootProtocol::Pvh);
    write_pvh_start_info(&vm.memory, None, &memory_map(memory_bytes), 0).unwrap();
    write_boot_descriptor_tables(&vm.memory, BootProtocol::Pvh).unwrap();

    let mut buses = IoBuses::default();
    buses
        .pio
        .insert(Arc::new(Mutex::new(PanickingDevice)), 0x3f8, 8)
        .unwrap();
    let cpuid = supported_cpuid(&kvm).unwrap();
    let topology = Topology { vcpus: 1 };
    let fd = create_vcpu(
        &vm.fd,
        0,
        topology,
        &cpuid,
        Some((BootProtocol::Pvh, loaded.entry)),
    )
    .unwrap();
    let (events, received) = channel();
    let vcpu = Vcpu {
        fd,
        index: 0,
        buses: Arc::new(buses),
        events,
        control: Arc::new(RunControl::default()),
    };
    std::thread::spawn(move || vcpu.run()).join().unwrap();
    match received.recv().unwrap() {
        VmmEvent::VcpuFailed {
            index,
            reason,
            dump,
        } => {
            assert_eq!(index, 0);
            assert!(reason.contains("panicked: device model bug"), "{reason}");
            assert!(dump.contains("RIP="), "{dump}");
        }
        other => panic!("expected a vCPU failure, got {other:?}"),
    }
}
