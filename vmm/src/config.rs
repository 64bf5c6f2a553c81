//! What a VM is made of: the settings of `hv-vmm run`, from flags and/or a JSON file.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Guest memory when none is given.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
/// Most vCPUs a VM can have (8-bit APIC ids, one kept for the IOAPIC, 0xff is broadcast).
pub const MAX_VCPUS: u32 = 254;
/// Command line when none is given: the serial console, and reboot through the i8042 so that a
/// guest `reboot` ends the VM cleanly.
/// Most virtio disks: one ISA IRQ line each, 5 to 15.
pub const MAX_DISKS: usize = 11;
/// Command line when none is given: the serial console, and reboot through the i8042 so that a
/// guest `reboot` ends the VM cleanly.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Errors in VM settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A size string that is not a number with an optional K/M/G suffix.
    #[error("invalid size {input:?}: expected a number with an optional K, M or G suffix (e.g. 512M, 2G)")]
    InvalidSize { input: String },
    /// A size that does not fit in 64 bits.
    #[error("size {input:?} is too large")]
    SizeOverflow { input: String },
    /// `--disk` value not understood.
    #[error("invalid disk {input:?}: expected PATH or PATH,ro")]
    InvalidDisk { input: String },
    /// More disks than free legacy IRQ lines.
    #[error("{count} disks requested; hv-vmm supports at most {MAX_DISKS}")]
    TooManyDisks { count: usize },
    /// `--serial` value not understood.
    #[error("invalid serial setting {input:?}: expected stdio, none or file:PATH")]
    InvalidSerial { input: String },
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    ReadConfigFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON for a VM.
    #[error("invalid config file {path}")]
    ParseConfigFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// No kernel was given.
    #[error("no kernel given: pass --kernel PATH (or \"kernel\" in the config file)")]
    MissingKernel,
    /// vCPU count of zero.
    #[error("the VM needs at least one vCPU")]
    ZeroVcpus,
    /// More vCPUs than the machine model can describe (APIC ids 0-253, the IOAPIC takes the next).
    #[error("{requested} vCPUs requested; hv-vmm supports at most {MAX_VCPUS}")]
    TooManyVcpus { requested: u32 },
}

/// A memory size in bytes, written in JSON and on the command line as `128M`, `2G`, `65536K` or a
/// plain byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "String")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for ByteSize {
    type Error = ConfigError;
    fn try_from(repr: SizeRepr) -> Result<Self, ConfigError> {
        match repr {
            SizeRepr::Number(n) => Ok(ByteSize(n)),
            SizeRepr::Text(s) => s.parse(),
        }
    }
}

impl From<ByteSize> for String {
    fn from(size: ByteSize) -> String {
        size.to_string()
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
        for (unit, suffix) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = ConfigError;

    /// Binary units: K = KiB, M = MiB, G = GiB; an optional trailing `B`/`iB` is accepted
    /// (`512MiB`, `2GB`), case-insensitive.
    fn from_str(input: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::InvalidSize {
            input: input.to_string(),
        };
        let upper = input.trim().to_ascii_uppercase();
        let binary_suffix = upper.strip_suffix("IB");
        let body = binary_suffix
            .or_else(|| upper.strip_suffix('B'))
            .unwrap_or(&upper);
        let (digits, shift) = match body.as_bytes().last() {
            Some(b'K') => (&body[..body.len() - 1], 10),
            Some(b'M') => (&body[..body.len() - 1], 20),
            Some(b'G') => (&body[..body.len() - 1], 30),
            Some(b'T') => (&body[..body.len() - 1], 40),
            // "iB" only follows a unit letter.
            _ if binary_suffix.is_some() => return Err(invalid()),
            _ => (body, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let value: u64 = digits.parse().map_err(|_| ConfigError::SizeOverflow {
            input: input.to_string(),
        })?;
        value
            .checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or(ConfigError::SizeOverflow {
                input: input.to_string(),
            })
    }
}

/// Where COM1's output goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum SerialMode {
    /// hv-vmm's own stdout (and stdin as the guest's input when it is a terminal or pipe).
    #[default]
    Stdio,
    /// Discarded.
    None,
    /// Appended to a file.
    File(PathBuf),
}

impl FromStr for SerialMode {
    type Err = ConfigError;
    fn from_str(input: &str) -> Result<Self, ConfigError> {
        match input {
            "stdio" => Ok(SerialMode::Stdio),
            "none" => Ok(SerialMode::None),
            _ => match input.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialMode::File(PathBuf::from(path))),
                _ => Err(ConfigError::InvalidSerial {
                    input: input.to_string(),
                }),
            },
        }
    }
}

impl TryFrom<String> for SerialMode {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<SerialMode> for String {
    fn from(mode: SerialMode) -> String {
        match mode {
            SerialMode::Stdio => "stdio".into(),
            SerialMode::None => "none".into(),
            SerialMode::File(path) => format!("file:{}", path.display()),
        }
    }
}

/// A disk: a raw image file served to the guest as a virtio-blk device over virtio-mmio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    /// `PATH` or `PATH,ro` (also `PATH,readonly`).
    fn from_str(input: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::InvalidDisk {
            input: input.to_string(),
        };
        let (path, read_only) = match input.rsplit_once(',') {
            Some((path, "ro" | "readonly")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some(_) => return Err(invalid()),
            None => (input, false),
        };
        if path.is_empty() {
            return Err(invalid());
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// The settings as they may appear in `--config FILE.json`: every field optional, names as the flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct VmConfigFile {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: Option<u32>,
    pub memory: Option<ByteSize>,
    pub serial: Option<SerialMode>,
    pub api_socket: Option<PathBuf>,
    pub disks: Option<Vec<DiskConfig>>,
}

impl VmConfigFile {
    /// Reads and parses a JSON config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadConfigFile {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::ParseConfigFile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Settings in `overrides` win over ours (flags override the file).
    pub fn overridden_by(self, overrides: VmConfigFile) -> VmConfigFile {
        VmConfigFile {
            kernel: overrides.kernel.or(self.kernel),
            initrd: overrides.initrd.or(self.initrd),
            cmdline: overrides.cmdline.or(self.cmdline),
            vcpus: overrides.vcpus.or(self.vcpus),
            memory: overrides.memory.or(self.memory),
            serial: overrides.serial.or(self.serial),
            api_socket: overrides.api_socket.or(self.api_socket),
            disks: overrides.disks.or(self.disks),
        }
    }

    /// Fills defaults and checks what can be checked without the host.
    pub fn into_vm_config(self) -> Result<VmConfig, ConfigError> {
        let requested = self.vcpus.unwrap_or(1);
        if requested == 0 {
            return Err(ConfigError::ZeroVcpus);
        }
        let vcpus = u8::try_from(requested)
            .ok()
            .filter(|n| u32::from(*n) <= MAX_VCPUS)
            .ok_or(ConfigError::TooManyVcpus { requested })?;
        let disks = self.disks.unwrap_or_default();
        if disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks { count: disks.len() });
        }
        Ok(VmConfig {
            disks,
            kernel: self.kernel.ok_or(ConfigError::MissingKernel)?,
            initrd: self.initrd,
            cmdline: self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            vcpus,
            memory_bytes: self.memory.map_or(DEFAULT_MEMORY_BYTES, |m| m.0),
            serial: self.serial.unwrap_or_default(),
            api_socket: self.api_socket,
        })
    }
}

/// A complete, validated description of the VM to run.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_bytes: u64,
    pub serial: SerialMode,
    pub api_socket: Option<PathBuf>,
    pub disks: Vec<DiskConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_byte_size_parses_suffixes() {
        let cases = [
            ("128M", 128 << 20),
            ("128m", 128 << 20),
            ("2G", 2 << 30),
            ("65536K", 64 << 20),
            ("512MiB", 512 << 20),
            ("1GB", 1 << 30),
            ("4096", 4096),
            (" 1T ", 1 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>().unwrap(), ByteSize(bytes), "{text}");
        }
    }

    #[test]
    fn test_byte_size_rejects_garbage() {
        for text in ["", "M", "12X", "-1M", "1.5G", "G1", "1 M", "0x10"] {
            assert!(
                matches!(
                    text.parse::<ByteSize>(),
                    Err(ConfigError::InvalidSize { .. })
                ),
                "{text:?} accepted"
            );
        }
        assert!(matches!(
            "99999999999999G".parse::<ByteSize>(),
            Err(ConfigError::SizeOverflow { .. })
        ));
    }

    #[test]
    fn test_byte_size_display_round_trips() {
        for bytes in [128 << 20, 1 << 30, 3 << 10, 1000] {
            let shown = ByteSize(bytes).to_string();
            assert_eq!(shown.parse::<ByteSize>().unwrap().0, bytes);
        }
    }

    #[test]
    fn test_disk_config_parses_path_and_mode() {
        let rw: DiskConfig = "/img/root.raw".parse().unwrap();
        assert_eq!(
            (rw.path.to_str().unwrap(), rw.read_only),
            ("/img/root.raw", false)
        );
        let ro: DiskConfig = "/a,b/data.raw,ro".parse().unwrap();
        assert_eq!(
            (ro.path.to_str().unwrap(), ro.read_only),
            ("/a,b/data.raw", true)
        );
        assert!("".parse::<DiskConfig>().is_err());
        assert!(",ro".parse::<DiskConfig>().is_err());
        assert!("/x,fast".parse::<DiskConfig>().is_err());
        let json: DiskConfig = serde_json::from_str(r#"{"path":"/d","read_only":true}"#).unwrap();
        assert!(json.read_only);
    }

    #[test]
    fn test_serial_mode_parses() {
        assert_eq!("stdio".parse::<SerialMode>().unwrap(), SerialMode::Stdio);
        assert_eq!("none".parse::<SerialMode>().unwrap(), SerialMode::None);
        assert_eq!(
            "file:/tmp/x.log".parse::<SerialMode>().unwrap(),
            SerialMode::File("/tmp/x.log".into())
        );
        assert!("file:".parse::<SerialMode>().is_err());
        assert!("tty".parse::<SerialMode>().is_err());
    }

    #[test]
    fn test_config_file_flags_override_and_defaults_fill() {
        let file: VmConfigFile = serde_json::from_str(
            r#"{"kernel":"/k","memory":"256M","vcpus":2,"serial":"none","cmdline":"a"}"#,
        )
        .unwrap();
        let flags = VmConfigFile {
            vcpus: Some(4),
            ..Default::default()
        };
        let config = file.overridden_by(flags).into_vm_config().unwrap();
        assert_eq!(config.vcpus, 4);
        assert_eq!(config.memory_bytes, 256 << 20);
        assert_eq!(config.serial, SerialMode::None);
        assert_eq!(config.cmdline, "a");
        let defaults = VmConfigFile {
            kernel: Some("/k".into()),
            ..Default::default()
        }
        .into_vm_config()
        .unwrap();
        assert_eq!(defaults.memory_bytes, DEFAULT_MEMORY_BYTES);
        assert_eq!(defaults.vcpus, 1);
        assert_eq!(defaults.serial, SerialMode::Stdio);
    }

    #[test]
    fn test_config_file_rejects_unknown_fields_and_missing_kernel() {
        assert!(serde_json::from_str::<VmConfigFile>(r#"{"kernal":"/k"}"#).is_err());
        assert!(matches!(
            VmConfigFile::default().into_vm_config(),
            Err(ConfigError::MissingKernel)
        ));
        assert!(matches!(
            VmConfigFile {
                kernel: Some("/k".into()),
                vcpus: Some(0),
                ..Default::default()
            }
            .into_vm_config(),
            Err(ConfigError::ZeroVcpus)
        ));
        assert!(matches!(
            VmConfigFile {
                kernel: Some("/k".into()),
                vcpus: Some(255),
                ..Default::default()
            }
            .into_vm_config(),
            Err(ConfigError::TooManyVcpus { requested: 255 })
        ));
    }
}
