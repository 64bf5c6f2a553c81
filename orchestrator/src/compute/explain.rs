//! `hv-compute explain UNIT`: every effective setting and where it came from.

use std::fmt::Write as _;

use super::resolve::{Effective, Resolution, COMPUTE_UNITS_PER_VCPU};

fn show(value: &toml::Value) -> String {
    match value {
        // Lists of tables get one line per item below the row (see `render`).
        toml::Value::Array(items) if items.iter().any(toml::Value::is_table) => match items.len() {
            1 => "1 item".to_owned(),
            n => format!("{n} items"),
        },
        toml::Value::String(s) if !s.contains('\n') => s.clone(),
        toml::Value::String(s) => format!("<{} lines>", s.lines().count()),
        other => other.to_string(),
    }
}

/// Renders the resolution as an aligned table; deterministic (sorted keys) for golden tests.
pub fn render(resolution: &Resolution) -> String {
    let mut out = String::new();
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let _ = writeln!(out, "unit {} ({})", resolution.unit, resolution.file);
    let _ = writeln!(out, "tags: {}", list(&resolution.tags));
    let _ = writeln!(out, "policies: {}", list(&resolution.policies));
    match &resolution.blueprint {
        Some(id) => {
            let _ = writeln!(
                out,
                "blueprint: {id} ({})",
                list(&resolution.blueprint_components)
            );
        }
        None => {
            let _ = writeln!(out, "blueprint: -");
        }
    }
    let _ = writeln!(
        out,
        "precedence: unit > policy > tag > blueprint > default; {COMPUTE_UNITS_PER_VCPU} compute units = 1 vCPU"
    );
    let _ = writeln!(out);
    let rows: Vec<(&String, &Effective)> = resolution.settings.iter().collect();
    let key_width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(7).max(7);
    let values: Vec<String> = rows.iter().map(|(_, e)| show(&e.value)).collect();
    let value_width = values
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(5)
        .clamp(5, 48);
    let _ = writeln!(
        out,
        "{:key_width$}  {:value_width$}  FROM",
        "SETTING", "VALUE"
    );
    for ((key, effective), value) in rows.iter().zip(values) {
        let _ = write!(
            out,
            "{key:key_width$}  {value:value_width$}  {}",
            effective.origin
        );
        if !effective.overrides.is_empty() {
            let overridden: Vec<String> = effective
                .overrides
                .iter()
                .map(|(origin, value)| format!("{origin}: {}", show(value)))
                .collect();
            let _ = write!(out, " (overrides {})", overridden.join("; "));
        }
        let _ = writeln!(out);
        if let toml::Value::Array(items) = &effective.value {
            for (index, item) in items.iter().filter(|i| i.is_table()).enumerate() {
                let _ = writeln!(out, "  [{index}] {item}");
            }
        }
    }
    out
}
