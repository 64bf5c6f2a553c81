//! Opening `/dev/kvm`, with errors that tell an operator what to do.

use kvm_ioctls::Kvm;

/// The KVM API version every supported kernel reports.
const KVM_API_VERSION: i32 = 12;

/// Errors opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("/dev/kvm does not exist: enable virtualization (VT-x/AMD-V) in the firmware and load the module (modprobe kvm_intel or kvm_amd)")]
    Missing,
    #[error("permission denied opening /dev/kvm: add the user to the group that owns it (usually `kvm`: sudo usermod -aG kvm $USER, then log in again) or run as root")]
    PermissionDenied,
    #[error("cannot open /dev/kvm")]
    Open(#[source] std::io::Error),
    #[error("/dev/kvm reports API version {0}, expected {KVM_API_VERSION}")]
    ApiVersion(i32),
}

/// Opens `/dev/kvm` and checks its API version.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        _ => KvmError::Open(std::io::Error::from_raw_os_error(e.errno())),
    })?;
    match kvm.get_api_version() {
        KVM_API_VERSION => Ok(kvm),
        other => Err(KvmError::ApiVersion(other)),
    }
}
