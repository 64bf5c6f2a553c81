//! Asynchronous teardown: the kernel's work of destroying a VM (vCPUs, irqchip, PIT worker thread,
//! memory-slot bookkeeping, SRCU grace periods) can take several milliseconds, and a process that
//! owns the VM cannot finish exiting before it is done. Like QEMU's `-run-with async-teardown=on`,
//! hv-vmm hands its last references to the VM to a short-lived child process just before it exits:
//! hv-vmm's own exit (what a supervisor waits for) no longer includes the VM's destruction, which
//! then happens in the child. Guest memory is marked `MADV_DONTFORK` first, so the fork copies no
//! guest page tables and the memory is released by hv-vmm's own exit as before.

use std::os::fd::{AsRawFd, RawFd};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::vm::Vm;

/// Forks a child that keeps only `vm`'s file descriptor and `vcpu_fds` open, waits for this
/// process to exit (end of file on a pipe whose write end only this process holds) and then
/// exits, so the VM is destroyed in the child. The wait matters: a child that closed its copies
/// first would leave the last references, and the teardown, to this process after all.
/// Best effort: on any failure the VM is simply destroyed by this process's exit.
pub fn detach_vm_teardown(vm: &Vm, vcpu_fds: &[RawFd]) {
    for region in vm.memory.iter() {
        if let Ok(addr) = region.get_host_address(MemoryRegionAddress(0)) {
            // SAFETY: the range is a live mapping owned by `vm.memory`; MADV_DONTFORK only
            // changes whether a child inherits it and cannot invalidate it for this process.
            unsafe { libc::madvise(addr.cast(), region.len() as usize, libc::MADV_DONTFORK) };
        }
    }
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let [parent_gone, _held_until_exit] = pipe;
    let mut keep: Vec<RawFd> = vcpu_fds.to_vec();
    keep.push(vm.fd.as_raw_fd());
    keep.push(parent_gone);
    keep.sort_unstable();

    // SAFETY: fork in a multi-threaded process; the child only calls the async-signal-safe
    // functions close_range(2) and _exit(2) before it ends, and touches no locks or heap memory
    // (`keep` was built before the fork and is only read).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut first = 0;
        for &fd in &keep {
            if fd > first {
                // SAFETY: closing descriptors the child does not need; none of them is used by
                // the child afterwards.
                unsafe { libc::close_range(first as libc::c_uint, (fd - 1) as libc::c_uint, 0) };
            }
            first = fd + 1;
        }
        // SAFETY: as above, for every descriptor above the last one kept.
        unsafe { libc::close_range(first as libc::c_uint, libc::c_uint::MAX, 0) };
        let mut byte = 0u8;
        // SAFETY: read(2) into a local byte; it returns (end of file) once the parent, the only
        // holder of the write end, has exited. Retried on EINTR.
        while unsafe { libc::read(parent_gone, (&mut byte as *mut u8).cast(), 1) } < 0 {}
        // SAFETY: _exit ends the child without running the parent's atexit handlers or
        // destructors; closing the kept descriptors is what destroys the VM.
        unsafe { libc::_exit(0) };
    }
}
