//! The `hv-compute` command line (also reached as `hv compute ...` and, for `blueprint`, as
//! `hv-compose blueprint NAME` when the binary is invoked under that name).
//!
//! Global flags (`--state-dir`, `--spec-dir`, `--json`, `--vmm`) are accepted before or after the
//! subcommand. Every command prints a human table by default and one JSON document with `--json`.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use super::blueprint::{self, BlueprintError};
use super::catalog::{Catalog, CatalogError};
use super::resolve::{self, ResolveError};
use super::{explain, launch, state};
use crate::libvirt;
use crate::store::{Store, StoreError};

/// Errors reported by the command line (printed once, with their causes, by [`run`]).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot load the spec directory {}", dir.display())]
    Catalog {
        dir: PathBuf,
        #[source]
        source: Box<CatalogError>,
    },
    #[error("cannot resolve unit {unit}")]
    Resolve {
        unit: String,
        #[source]
        source: Box<ResolveError>,
    },
    #[error("cannot resolve blueprint {name}")]
    Blueprint {
        name: String,
        #[source]
        source: Box<BlueprintError>,
    },
    #[error("state directory problem")]
    State(#[source] Box<state::StateError>),
    #[error("state store problem")]
    Store(#[source] Box<StoreError>),
    #[error("launch failed")]
    Launch(#[source] Box<launch::LaunchError>),
    #[error("libvirt import/export failed")]
    Libvirt(#[source] Box<libvirt::LibvirtError>),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; pass --force to replace it")]
    Exists { path: String },
    #[error("no instance or unit named {target:?} (see `hv-compute list`)")]
    NoSuchTarget { target: String },
}

#[derive(Debug, Parser)]
#[command(
    name = "hv-compute",
    about = "Describe VMs as tagged compute units; import from libvirt; launch on hv-vmm"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags accepted anywhere on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// State directory (store, instance sockets and logs) [default: /var/lib/hypervisor]
    #[arg(long, global = true, env = "HV_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Spec directory holding units/, tags/, policies/, blueprints/, components/
    #[arg(
        long,
        global = true,
        env = "HV_SPEC_DIR",
        value_name = "DIR",
        default_value = "."
    )]
    pub spec_dir: PathBuf,
    /// Print one JSON document instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// hv-vmm binary [default: next to this executable, else PATH]
    #[arg(long, global = true, env = "HV_VMM_BIN", value_name = "PATH")]
    pub vmm: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every effective setting of a unit and where it came from
    Explain { unit: String },
    /// List the units in the spec directory
    Units,
    /// Show a blueprint resolved from its components (`hv-compose blueprint NAME`)
    Blueprint {
        /// NAME or NAME@VERSION
        name: String,
    },
    /// Stored revisions of a unit
    History { unit: String },
    /// Convert a libvirt domain XML into a unit spec under <spec-dir>/units/
    Import {
        file: PathBuf,
        /// Unit name [default: the domain's <name>]
        #[arg(long)]
        name: Option<String>,
        /// Print the unit instead of writing it
        #[arg(long)]
        stdout: bool,
        /// Replace an existing unit file
        #[arg(long)]
        force: bool,
        /// Convert qcow2 disks to raw with `qemu-img convert` (next to the original, `.raw`)
        #[arg(long)]
        convert_qcow2: bool,
    },
    /// Write a unit as libvirt domain XML
    Export {
        unit: String,
        /// Output file [default: stdout]
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Start instances of units on hv-vmm and wait until their guests are ready
    Launch {
        #[arg(required = true)]
        units: Vec<String>,
        /// Instances per unit [default: the unit's replicas]
        #[arg(long)]
        count: Option<u32>,
        /// Seconds to wait for each guest's boot marker
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// List instances
    List,
    /// Show one instance (and ask its hv-vmm for live state)
    Status { instance: String },
    /// Stop instances (by instance id, or every active instance of a unit)
    Stop {
        #[arg(required = true)]
        targets: Vec<String>,
        /// Seconds to wait for a clean shutdown before killing hv-vmm
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Print an instance's serial output (or hv-vmm's own log with --vmm-log)
    Logs {
        instance: String,
        #[arg(long)]
        vmm_log: bool,
    },
    /// Forget stopped instances (records and logs)
    Prune,
    /// Internal: supervise one instance (started by `launch`)
    #[command(name = "__supervise", hide = true)]
    Supervise { instance: String },
}

/// Entry point shared by `hv-compute` and `hv compute`.
pub fn run(args: Vec<OsString>) -> ExitCode {
    let started = std::time::Instant::now();
    // Errors carry the name we were called by: `hv-compute`, `hv-compose`, or `hv` for `hv compute`.
    let program = args
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .map_or_else(
            || "hv-compute".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match dispatch(cli, started) {
        Ok(code) => code,
        Err(error) => {
            report(&program, &error);
            ExitCode::FAILURE
        }
    }
}

/// Prints the error and its causes on one line: `hv-compute: a: b: c`.
fn report(program: &str, error: &dyn std::error::Error) {
    let mut line = format!("{program}: {error}");
    let mut cause = error.source();
    while let Some(inner) = cause {
        line.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    eprintln!("{line}");
}

pub(crate) fn print_json<T: Serialize>(value: &T) {
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut stdout, value);
    let _ = writeln!(stdout);
}

fn load_catalog(global: &Global) -> Result<Catalog, CliError> {
    Catalog::load(&global.spec_dir).map_err(|source| CliError::Catalog {
        dir: global.spec_dir.clone(),
        source: Box::new(source),
    })
}

/// The stored record of instance `id` (one lookup shared by `status` and `logs`).
fn find_instance(global: &Global, id: String) -> Result<crate::store::InstanceRecord, CliError> {
    let state =
        state::open(global.state_dir.as_deref()).map_err(|e| CliError::State(Box::new(e)))?;
    state
        .store
        .instance(&id)
        .map_err(|e| CliError::Store(Box::new(e)))?
        .ok_or(CliError::NoSuchTarget { target: id })
}

fn resolve_unit(catalog: &Catalog, unit: &str) -> Result<resolve::Resolution, CliError> {
    resolve::resolve_unit(catalog, unit).map_err(|source| CliError::Resolve {
        unit: unit.to_owned(),
        source: Box::new(source),
    })
}

fn dispatch(cli: Cli, started: std::time::Instant) -> Result<ExitCode, CliError> {
    let global = cli.global;
    match cli.command {
        Command::Explain { unit } => {
            let resolution = resolve_unit(&load_catalog(&global)?, &unit)?;
            if global.json {
                print_json(&resolution);
            } else {
                print!("{}", explain::render(&resolution));
            }
        }
        Command::Units => units(&global)?,
        Command::Blueprint { name } => {
            let catalog = load_catalog(&global)?;
            let resolved =
                blueprint::resolve(&catalog, &name).map_err(|source| CliError::Blueprint {
                    name: name.clone(),
                    source: Box::new(source),
                })?;
            if global.json {
                print_json(&resolved);
            } else {
                println!(
                    "blueprint {} ({})",
                    resolved.id(),
                    resolved.components.join(", ")
                );
                for (key, (value, from)) in &resolved.settings {
                    println!("  {key} = {value}  # {from}");
                }
            }
        }
        Command::History { unit } => {
            let store = state::open(global.state_dir.as_deref())
                .map_err(|e| CliError::State(Box::new(e)))?;
            let revisions = store
                .store
                .unit_revisions(&unit)
                .map_err(|e| CliError::Store(Box::new(e)))?;
            if global.json {
                print_json(&revisions);
            } else {
                for revision in revisions {
                    println!(
                        "--- {} revision {} ({} ms since epoch)",
                        unit, revision.revision, revision.created_unix_ms
                    );
                    print!("{}", revision.spec);
                }
            }
        }
        Command::Import {
            file,
            name,
            stdout,
            force,
            convert_qcow2,
        } => import(&global, &file, name, stdout, force, convert_qcow2)?,
        Command::Export { unit, output } => {
            let catalog = load_catalog(&global)?;
            let resolution = resolve_unit(&catalog, &unit)?;
            let xml = libvirt::export(&resolution.resolved);
            match output {
                Some(path) => {
                    std::fs::write(&path, xml).map_err(|source| CliError::Write { path, source })?
                }
                None => print!("{xml}"),
            }
        }
        Command::Launch {
            units,
            count,
            timeout,
        } => {
            launch::phase(started, "arguments parsed");
            launch::group_shared_umask();
            let state_dir = global
                .state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(state::DEFAULT_STATE_DIR));
            let wanted = units.len() * count.unwrap_or(1).max(1) as usize;
            let mut pool =
                launch::SupervisorPool::prestart(&state_dir, global.vmm.as_deref(), wanted)
                    .map_err(|e| CliError::Launch(Box::new(e)))?;
            launch::phase(started, "supervisors started");
            let catalog = load_catalog(&global)?;
            launch::phase(started, "catalog loaded");
            let state = state::open(global.state_dir.as_deref())
                .map_err(|e| CliError::State(Box::new(e)))?;
            launch::phase(started, "state opened");
            let mut plans = Vec::new();
            for unit in &units {
                let resolution = resolve_unit(&catalog, unit)?;
                // The exact file text is what the store keeps as the unit's revision.
                let path = PathBuf::from(&resolution.file);
                let spec_text = std::fs::read_to_string(&path)
                    .map_err(|source| CliError::Read { path, source })?;
                plans.push((resolution.resolved, spec_text));
            }
            launch::phase(started, "units resolved");
            let options = launch::LaunchOptions {
                vmm: global.vmm.clone(),
                spec_root: catalog.root.clone(),
                count,
                timeout: std::time::Duration::from_secs(timeout),
                started,
            };
            let outcomes = launch::launch(&state, &plans, &options, &mut pool)
                .map_err(|e| CliError::Launch(Box::new(e)))?;
            let failed = outcomes.iter().any(|o| o.ready_us.is_none());
            if global.json {
                print_json(&outcomes);
            } else {
                for outcome in &outcomes {
                    println!("{}", outcome.describe());
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::List => {
            let state = state::open(global.state_dir.as_deref())
                .map_err(|e| CliError::State(Box::new(e)))?;
            let instances = state
                .store
                .instances()
                .map_err(|e| CliError::Store(Box::new(e)))?;
            if global.json {
                print_json(&instances);
            } else {
                println!(
                    "{:<24} {:<16} {:<10} {:>8} {:>12}",
                    "INSTANCE", "UNIT", "STATE", "RESTARTS", "BOOT"
                );
                for i in instances {
                    let boot = i
                        .boot_time_us
                        .map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0));
                    let state = format!("{:?}", i.state).to_lowercase();
                    println!(
                        "{:<24} {:<16} {:<10} {:>8} {:>12}",
                        i.id, i.unit, state, i.restarts, boot
                    );
                }
            }
        }
        Command::Status { instance } => {
            let record = find_instance(&global, instance)?;
            let live = launch::query_vm(Path::new(&record.api_socket));
            if global.json {
                print_json(&serde_json::json!({ "instance": record, "vm": live }));
            } else {
                print_status(&record, live.as_ref());
            }
        }
        Command::Stop { targets, timeout } => {
            let state = state::open(global.state_dir.as_deref())
                .map_err(|e| CliError::State(Box::new(e)))?;
            let all = state
                .store
                .instances()
                .map_err(|e| CliError::Store(Box::new(e)))?;
            let mut ids = Vec::new();
            for target in &targets {
                let matching: Vec<String> = all
                    .iter()
                    .filter(|i| i.id == *target || (i.unit == *target && i.state.is_active()))
                    .map(|i| i.id.clone())
                    .collect();
                if matching.is_empty() && !all.iter().any(|i| i.unit == *target) {
                    return Err(CliError::NoSuchTarget {
                        target: target.clone(),
                    });
                }
                ids.extend(matching);
            }
            let results = launch::stop(&state, &ids, std::time::Duration::from_secs(timeout))
                .map_err(|e| CliError::Launch(Box::new(e)))?;
            if global.json {
                print_json(&results);
            } else {
                for (id, how) in &results {
                    println!("stopped {id} ({how})");
                }
            }
        }
        Command::Logs { instance, vmm_log } => {
            let record = find_instance(&global, instance)?;
            let path = if vmm_log {
                &record.vmm_log
            } else {
                &record.serial_log
            };
            let text = std::fs::read(path).unwrap_or_default();
            if global.json {
                print_json(
                    &serde_json::json!({ "instance": record.id, "path": path, "log": String::from_utf8_lossy(&text) }),
                );
            } else {
                let _ = std::io::stdout().write_all(&text);
            }
        }
        Command::Prune => {
            let state = state::open(global.state_dir.as_deref())
                .map_err(|e| CliError::State(Box::new(e)))?;
            let pruned = launch::prune(&state).map_err(|e| CliError::Launch(Box::new(e)))?;
            if global.json {
                print_json(&pruned);
            } else {
                for id in pruned {
                    println!("forgot {id}");
                }
            }
        }
        Command::Supervise { instance } => {
            launch::group_shared_umask();
            let dir = global
                .state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(state::DEFAULT_STATE_DIR));
            let supervised = if instance == "-" {
                // Pre-started by `launch`: waits for the instance, then logs to its folder.
                launch::supervise_assigned(&dir, global.vmm.as_deref())
            } else {
                launch::supervise(&dir, &instance, global.vmm.as_deref(), started)
            };
            supervised.map_err(|e| CliError::Launch(Box::new(e)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(record: &crate::store::InstanceRecord, live: Option<&serde_json::Value>) {
    let ms =
        |us: Option<u64>| us.map_or("-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1000.0));
    let pid = |pid: Option<u32>| pid.map_or("-".to_owned(), |p| p.to_string());
    let stop = if record.stop_requested {
        " (stop requested)"
    } else {
        ""
    };
    println!(
        "instance    {} (unit {}, revision {})",
        record.id, record.unit, record.unit_revision
    );
    println!(
        "state       {}{stop}",
        format!("{:?}", record.state).to_lowercase()
    );
    println!("boot time   {}", ms(record.boot_time_us));
    println!("restarts    {}", record.restarts);
    println!(
        "exit code   {}",
        record
            .last_exit_code
            .map_or("-".to_owned(), |c| c.to_string())
    );
    println!(
        "last error  {}",
        record.last_error.as_deref().unwrap_or("-")
    );
    println!(
        "pids        supervisor {}, hv-vmm {}",
        pid(record.supervisor_pid),
        pid(record.vmm_pid)
    );
    println!("api socket  {}", record.api_socket);
    println!("serial log  {}", record.serial_log);
    match live {
        Some(vm) => println!("hv-vmm      {vm}"),
        None => println!("hv-vmm      API not reachable"),
    }
}

fn units(global: &Global) -> Result<(), CliError> {
    let catalog = load_catalog(global)?;
    #[derive(Serialize)]
    struct Row<'a> {
        name: &'a str,
        file: String,
        tags: &'a [String],
        policies: &'a [String],
        blueprint: Option<&'a str>,
    }
    let rows: Vec<Row> = catalog
        .units
        .iter()
        .map(|(name, unit)| Row {
            name,
            file: unit.path.display().to_string(),
            tags: &unit.doc.tags,
            policies: &unit.doc.policies,
            blueprint: unit.doc.blueprint.as_deref(),
        })
        .collect();
    if global.json {
        print_json(&rows);
    } else {
        println!("{:<20} {:<32} {:<20} BLUEPRINT", "UNIT", "TAGS", "POLICIES");
        for row in rows {
            println!(
                "{:<20} {:<32} {:<20} {}",
                row.name,
                row.tags.join(","),
                row.policies.join(","),
                row.blueprint.unwrap_or("-")
            );
        }
    }
    Ok(())
}

fn import(
    global: &Global,
    file: &Path,
    name: Option<String>,
    to_stdout: bool,
    force: bool,
    convert_qcow2: bool,
) -> Result<(), CliError> {
    let mut imported =
        libvirt::import_file(file, name.as_deref()).map_err(|e| CliError::Libvirt(Box::new(e)))?;
    if convert_qcow2 {
        libvirt::convert_qcow2_disks(&mut imported).map_err(|e| CliError::Libvirt(Box::new(e)))?;
    }
    let text = imported.unit_toml();
    let path = global
        .spec_dir
        .join("units")
        .join(format!("{}.toml", imported.name));
    if !to_stdout {
        if path.exists() && !force {
            return Err(CliError::Exists {
                path: path.display().to_string(),
            });
        }
        let write_error = |source| CliError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error)?;
        }
        std::fs::write(&path, &text).map_err(write_error)?;
    }
    if global.json {
        print_json(&serde_json::json!({
            "unit": imported.name,
            "path": (!to_stdout).then(|| path.display().to_string()),
            "warnings": imported.warnings,
            "spec": text,
        }));
    } else {
        for warning in &imported.warnings {
            eprintln!("warning: {warning}");
        }
        if to_stdout {
            print!("{text}");
        } else {
            println!(
                "imported {} -> {} ({} warnings)",
                imported.name,
                path.display(),
                imported.warnings.len()
            );
        }
    }
    Ok(())
}

/// hv's global options that take a value (they may stand before `compute` in `hv ... compute`).
const HV_VALUE_OPTIONS: [&str; 4] = [
    "--state-dir",
    "--config-dir",
    "--host-root",
    "--nix-instantiate",
];

/// For `hv [globals] compute <args>`: the argument list for [`run`], with the globals the compute
/// CLI shares (`--state-dir`, `--json`) carried over; `None` when the command is not `compute`.
pub fn args_from_hv(raw: &[OsString]) -> Option<Vec<OsString>> {
    let mut carried = Vec::new();
    let mut i = 1;
    while i < raw.len() {
        let arg = raw[i].to_string_lossy();
        if arg == "compute" {
            let mut args = vec![raw.first().cloned().unwrap_or_else(|| "hv".into())];
            args.extend(carried);
            args.extend(raw[i + 1..].iter().cloned());
            return Some(args);
        }
        if !arg.starts_with('-') {
            return None; // another subcommand
        }
        let shared = arg == "--json" || arg.starts_with("--state-dir");
        let takes_value = HV_VALUE_OPTIONS.contains(&arg.as_ref());
        if shared {
            carried.push(raw[i].clone());
        }
        if takes_value {
            if let Some(value) = raw.get(i + 1) {
                if shared {
                    carried.push(value.clone());
                }
            }
            i += 1;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod hv_dispatch_tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn test_args_from_hv_carries_shared_globals_and_drops_others() {
        let raw = os(&[
            "hv",
            "--state-dir",
            "/s",
            "--config-dir",
            "/c",
            "--json",
            "compute",
            "list",
        ]);
        assert_eq!(
            args_from_hv(&raw).unwrap(),
            os(&["hv", "--state-dir", "/s", "--json", "list"])
        );
        let raw = os(&["hv", "--state-dir=/s", "compute", "launch", "u", "--json"]);
        assert_eq!(
            args_from_hv(&raw).unwrap(),
            os(&["hv", "--state-dir=/s", "launch", "u", "--json"])
        );
    }

    #[test]
    fn test_args_from_hv_ignores_other_subcommands() {
        assert!(args_from_hv(&os(&["hv", "features", "compute"])).is_none());
        assert!(args_from_hv(&os(&["hv", "--json", "detect"])).is_none());
        assert!(args_from_hv(&os(&["hv"])).is_none());
    }
}
