//! How devices signal the VMM without knowing about it.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// An eventfd the VMM registers with KVM as an irqfd: writing it raises the guest interrupt
/// without leaving the kernel.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Runs a callback: used for events the VMM handles in user space (guest reset).
#[derive(Clone)]
pub struct CallbackTrigger(Arc<dyn Fn() + Send + Sync>);

impl CallbackTrigger {
    /// Wraps `callback`.
    pub fn new(callback: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(callback))
    }
}

impl std::fmt::Debug for CallbackTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackTrigger")
    }
}

impl vm_superio::Trigger for CallbackTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)();
        Ok(())
    }
}
