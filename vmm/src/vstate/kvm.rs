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
    #[error("/dev/kvm reports API version {0}, expected {KVM_API_VERSION} (is it really the KVM device?)")]
    ApiVersion(i32),
}

/// Opens `/dev/kvm` and checks its API version.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    open_kvm_at("/dev/kvm")
}

/// Opens the KVM device at `path` (tests use other paths) and checks its API version.
pub fn open_kvm_at(path: &str) -> Result<Kvm, KvmError> {
    let path = std::ffi::CString::new(path).map_err(|_| KvmError::Missing)?;
    let kvm = Kvm::new_with_path(&path).map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        _ => KvmError::Open(std::io::Error::from_raw_os_error(e.errno())),
    })?;
    match kvm.get_api_version() {
        KVM_API_VERSION => Ok(kvm),
        other => Err(KvmError::ApiVersion(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_open_kvm_missing_device_says_how_to_fix() {
        let err = open_kvm_at("/nonexistent/kvm").unwrap_err();
        assert!(matches!(err, KvmError::Missing));
        assert!(err.to_string().contains("modprobe"));
    }

    #[test]
    fn test_open_kvm_on_a_regular_file_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = open_kvm_at(file.path().to_str().unwrap()).unwrap_err();
        assert!(matches!(err, KvmError::ApiVersion(_)), "{err:?}");
    }
}
