//! CPU facts from `/proc/cpuinfo`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{read_required, HostError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model: String,
    pub logical_cpus: u32,
    /// Physical cores (x86 `physical id`/`core id` pairs); equals logical CPUs where unknown.
    pub cores: u32,
    /// `vmx` (Intel VT-x) or `svm` (AMD-V) on x86; `None` when absent or not x86.
    pub virtualization: Option<String>,
    /// The cpuinfo has ARM `Features` lines instead of x86 `flags`.
    pub arm_features: bool,
}

pub(super) fn detect(root: &Path) -> Result<CpuInfo, HostError> {
    let path = root.join("proc/cpuinfo");
    let text = read_required(&path)?;
    let info = parse(&text);
    if info.logical_cpus == 0 {
        return Err(HostError::Missing {
            path,
            field: "processor",
        });
    }
    Ok(info)
}

fn parse(text: &str) -> CpuInfo {
    let mut logical_cpus = 0;
    let mut model = None;
    let mut arm_implementer = None;
    let mut arm_part = None;
    let mut virtualization = None;
    let mut arm_features = false;
    let mut physical = None;
    let mut cores = BTreeSet::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => logical_cpus += 1,
            "model name" | "Hardware" if model.is_none() => model = Some(value.to_string()),
            "CPU implementer" => arm_implementer = Some(value.to_string()),
            "CPU part" => arm_part = Some(value.to_string()),
            "Features" => arm_features = true,
            "flags" if virtualization.is_none() => {
                let flags: Vec<&str> = value.split_whitespace().collect();
                virtualization = ["vmx", "svm"]
                    .into_iter()
                    .find(|v| flags.contains(v))
                    .map(str::to_string);
            }
            "physical id" => physical = Some(value.to_string()),
            "core id" => {
                cores.insert((physical.clone(), value.to_string()));
            }
            _ => {}
        }
    }
    let model = model.unwrap_or_else(|| match (arm_implementer, arm_part) {
        (Some(implementer), Some(part)) => arm_model_name(&implementer, &part),
        _ => "unknown".to_string(),
    });
    let cores = if cores.is_empty() {
        logical_cpus
    } else {
        cores.len() as u32
    };
    CpuInfo {
        model,
        logical_cpus,
        cores,
        virtualization,
        arm_features,
    }
}

/// ARM64 cpuinfo names no model; translate the common server/SoC cores.
fn arm_model_name(implementer: &str, part: &str) -> String {
    let name = match (implementer, part) {
        ("0x41", "0xd0c") => "ARM Neoverse-N1",
        ("0x41", "0xd40") => "ARM Neoverse-V1",
        ("0x41", "0xd49") => "ARM Neoverse-N2",
        ("0x41", "0xd08") => "ARM Cortex-A72",
        ("0x41", "0xd0b") => "ARM Cortex-A76",
        ("0x61", _) => "Apple",
        _ => return format!("ARM implementer {implementer} part {part}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_counts_hyperthreads_and_cores() {
        let mut text = String::new();
        for (cpu, core) in [(0, 0), (1, 1), (2, 0), (3, 1)] {
            text.push_str(&format!(
                "processor\t: {cpu}\nmodel name\t: Intel(R) Core(TM) i7\nflags\t\t: fpu vmx sse\nphysical id\t: 0\ncore id\t\t: {core}\n\n"
            ));
        }
        let info = parse(&text);
        assert_eq!((info.logical_cpus, info.cores), (4, 2));
        assert_eq!(info.virtualization.as_deref(), Some("vmx"));
        assert!(!info.arm_features);
    }

    #[test]
    fn test_parse_arm_names_the_core() {
        let text =
            "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n";
        let info = parse(text);
        assert_eq!(info.model, "ARM Neoverse-N1");
        assert!(info.arm_features);
        assert_eq!(info.virtualization, None);
    }
}
