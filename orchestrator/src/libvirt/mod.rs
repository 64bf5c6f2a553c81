//! libvirt domain XML import and export.
//!
//! Import turns what real libvirt and virt-install write into a unit spec ([`UnitDoc`]). Everything hv
//! cannot represent is reported as a warning naming the element (never dropped silently); malformed XML
//! is an error with line and column. Export writes a unit back as domain XML; import(export(u)) == u for
//! everything a unit can hold (round-trip tests in `tests/compute_libvirt.rs`).

mod export;
mod import;

pub use export::export;
pub use import::{import_file, import_str, Imported};

use std::path::PathBuf;

/// Errors from libvirt import/export.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: malformed XML", path.display())]
    Xml {
        path: PathBuf,
        line: u32,
        column: u32,
        #[source]
        source: roxmltree::Error,
    },
    #[error("{}: the root element is <{found}>, expected <domain>", path.display())]
    NotADomain { path: PathBuf, found: String },
    #[error("{}: <domain> has no <name> and no --name was given", path.display())]
    NoName { path: PathBuf },
    #[error("{}: invalid <{element}>: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        element: String,
        reason: String,
    },
    #[error("qemu-img convert of {} failed: {stderr}", path.display())]
    Convert { path: PathBuf, stderr: String },
    #[error("cannot run qemu-img (install qemu-utils) to convert {}", path.display())]
    QemuImg {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Converts every qcow2 disk of an imported unit to raw with `qemu-img convert`, next to the original.
pub fn convert_qcow2_disks(imported: &mut Imported) -> Result<(), LibvirtError> {
    let Some(disks) = imported.unit.settings.disks.as_mut() else {
        return Ok(());
    };
    for disk in disks.iter_mut().filter(|d| d.format == "qcow2") {
        let source = PathBuf::from(&disk.path);
        let target = source.with_extension("raw");
        let output = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&source)
            .arg(&target)
            .output()
            .map_err(|e| LibvirtError::QemuImg {
                path: source.clone(),
                source: e,
            })?;
        if !output.status.success() {
            return Err(LibvirtError::Convert {
                path: source,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        imported.warnings.push(format!(
            "disk {} converted to raw: {}",
            source.display(),
            target.display()
        ));
        disk.path = target.display().to_string();
        disk.format = "raw".into();
    }
    Ok(())
}
