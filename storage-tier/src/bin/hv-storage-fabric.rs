//! `hv-storage-fabric`: create, serve and inspect tiered volumes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hv_storage::engine::EngineKind;
use hv_storage::heat::policy_by_name;
use hv_storage::meta::TierSpec;
use hv_storage::mover::{Mover, MoverConfig};
use hv_storage::nbd::{self, Export};
use hv_storage::size::parse_size;
use hv_storage::volume::{read_stats, Volume, VolumeStats, DEFAULT_EXTENT_SIZE};

#[derive(Parser)]
#[command(
    name = "hv-storage-fabric",
    about = "Tiered block volumes with a heat map, served over NBD"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a volume: tiers fastest first, each NAME=PATH:CAPACITY.
    Create {
        #[arg(long)]
        volume: PathBuf,
        #[arg(long, value_parser = parse_size_arg)]
        size: u64,
        #[arg(long = "tier", required = true, value_parser = parse_tier)]
        tiers: Vec<TierSpec>,
        #[arg(long, value_parser = parse_size_arg, default_value_t = DEFAULT_EXTENT_SIZE)]
        extent_size: u64,
    },
    /// Serve a volume over NBD (one of --unix / --tcp).
    Serve {
        #[arg(long)]
        volume: PathBuf,
        #[arg(long, conflicts_with = "tcp", required_unless_present = "tcp")]
        unix: Option<PathBuf>,
        #[arg(long)]
        tcp: Option<String>,
        #[arg(long, default_value = "")]
        export: String,
        #[arg(long)]
        read_only: bool,
        /// Placement policy: decaying-counter (default) or lru.
        #[arg(long, default_value = "decaying-counter")]
        policy: String,
        #[arg(long, value_enum, default_value_t = EngineKind::Auto)]
        engine: EngineKind,
        /// Mover tick in milliseconds.
        #[arg(long, default_value_t = 250)]
        mover_tick_ms: u64,
        /// Heat half-life in seconds.
        #[arg(long, default_value_t = 30.0)]
        half_life_secs: f64,
        /// Mover copy budget in MiB/s (0 disables the mover).
        #[arg(long, default_value_t = 256)]
        move_budget_mib: u64,
        /// An extent that moved stays on its new tier at least this long (seconds).
        #[arg(long, default_value_t = 10.0)]
        min_residency_secs: f64,
        /// How often stats.json is rewritten, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        stats_interval_ms: u64,
    },
    /// Capacity, use and hit ratio per tier.
    Tiers {
        #[arg(long)]
        volume: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Heat and placement of every extent.
    Heatmap {
        #[arg(long)]
        volume: PathBuf,
        #[arg(long)]
        json: bool,
        /// Extents per terminal row.
        #[arg(long, default_value_t = 64)]
        width: usize,
    },
    /// Counters of the last serving process (JSON).
    Stats {
        #[arg(long)]
        volume: PathBuf,
    },
    /// Name a checkpoint for changed-block tracking (the volume must not be served).
    Checkpoint {
        #[arg(long)]
        volume: PathBuf,
        name: String,
    },
    /// Extents changed since a checkpoint.
    Changed {
        #[arg(long)]
        volume: PathBuf,
        #[arg(long)]
        since: String,
        #[arg(long)]
        json: bool,
    },
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn parse_tier(text: &str) -> Result<TierSpec, String> {
    let (name, rest) = text
        .split_once('=')
        .ok_or("tier must be NAME=PATH:CAPACITY")?;
    let (path, capacity) = rest
        .rsplit_once(':')
        .ok_or("tier must be NAME=PATH:CAPACITY")?;
    if name.is_empty() || path.is_empty() {
        return Err("tier must be NAME=PATH:CAPACITY".into());
    }
    let path = std::path::absolute(path).map_err(|e| format!("tier path {path}: {e}"))?;
    Ok(TierSpec {
        name: name.to_string(),
        path,
        capacity: parse_size(capacity).map_err(|e| e.to_string())?,
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hv-storage-fabric: {message}");
            ExitCode::FAILURE
        }
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    nbd::error_chain(error)
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Create {
            volume,
            size,
            tiers,
            extent_size,
        } => {
            Volume::create(&volume, size, extent_size, tiers).map_err(|e| chain(&e))?;
            println!("created volume {} ({} bytes)", volume.display(), size);
            Ok(())
        }
        Command::Serve {
            volume,
            unix,
            tcp,
            export,
            read_only,
            policy,
            engine,
            mover_tick_ms,
            half_life_secs,
            move_budget_mib,
            stats_interval_ms,
            min_residency_secs,
        } => {
            let policy = policy_by_name(&policy)
                .ok_or_else(|| format!("unknown policy {policy:?} (decaying-counter, lru)"))?;
            let opened = Volume::open(&volume, read_only).map_err(|e| chain(&e))?;
            if engine == EngineKind::Uring && !hv_storage::uring::available() {
                return Err("io_uring is not available on this host (use --engine sync)".into());
            }
            let config = MoverConfig {
                tick: Duration::from_millis(mover_tick_ms.max(1)),
                half_life: Duration::from_secs_f64(half_life_secs.max(0.001)),
                budget_bytes_per_sec: move_budget_mib << 20,
                stats_interval: Duration::from_millis(stats_interval_ms),
                min_residency: Duration::from_secs_f64(min_residency_secs.max(0.0)),
            };
            install_shutdown(opened.clone(), policy.name())?;
            let _mover = Mover::start(opened.clone(), policy, config)
                .map_err(|e| format!("cannot start the mover: {e}"))?;
            let export = Arc::new(Export {
                name: export,
                description: format!("hv-storage volume {}", volume.display()),
                volume: opened,
                read_only,
            });
            if let Some(path) = unix {
                let _ = std::fs::remove_file(&path);
                let listener = std::os::unix::net::UnixListener::bind(&path)
                    .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
                tracing::info!(socket = %path.display(), "serving");
                nbd::serve_unix(listener, export, engine).map_err(|e| e.to_string())
            } else if let Some(address) = tcp {
                let listener = std::net::TcpListener::bind(&address)
                    .map_err(|e| format!("cannot listen on {address}: {e}"))?;
                tracing::info!(%address, "serving");
                nbd::serve_tcp(listener, export, engine).map_err(|e| e.to_string())
            } else {
                Err("give --unix SOCK or --tcp ADDR:PORT".into())
            }
        }
        Command::Tiers { volume, json } => {
            let stats = current_stats(&volume)?;
            if json {
                return print_json(&stats.tiers);
            }
            println!(
                "{:<10} {:>12} {:>8} {:>8} {:>6} {:>10} {:>9}  path",
                "tier", "capacity", "slots", "used", "direct", "ios", "hit ratio"
            );
            for tier in &stats.tiers {
                println!(
                    "{:<10} {:>12} {:>8} {:>8} {:>6} {:>10} {:>8.1}%  {}",
                    tier.name,
                    tier.capacity,
                    tier.slots,
                    tier.used_extents,
                    if tier.direct_io { "yes" } else { "no" },
                    tier.ios,
                    tier.hit_ratio * 100.0,
                    tier.path.display()
                );
            }
            Ok(())
        }
        Command::Heatmap {
            volume,
            json,
            width,
        } => {
            let stats = current_stats(&volume)?;
            if json {
                let extents: Vec<_> = stats
                    .heat
                    .iter()
                    .zip(&stats.placement)
                    .enumerate()
                    .map(|(extent, (heat, tier))| serde_json::json!({"extent": extent, "heat": heat, "tier": tier}))
                    .collect();
                return print_json(
                    &serde_json::json!({"extent_size": stats.extent_size, "extents": extents}),
                );
            }
            print_heatmap(&stats, width.max(1));
            Ok(())
        }
        Command::Stats { volume } => {
            let mut stats = current_stats(&volume)?;
            stats.heat.clear();
            stats.placement.clear();
            print_json(&stats)
        }
        Command::Checkpoint { volume, name } => {
            let opened = Volume::open(&volume, false).map_err(|e| chain(&e))?;
            opened.checkpoint(&name).map_err(|e| chain(&e))?;
            println!("checkpoint {name} recorded");
            Ok(())
        }
        Command::Changed {
            volume,
            since,
            json,
        } => {
            let opened = Volume::open(&volume, true).map_err(|e| chain(&e))?;
            let changed = opened.changed_since(&since).map_err(|e| chain(&e))?;
            let extent_size = opened.extent_size();
            if json {
                let ranges: Vec<_> = changed
                    .iter()
                    .map(|&e| serde_json::json!({"extent": e, "offset": e * extent_size, "length": extent_size}))
                    .collect();
                return print_json(
                    &serde_json::json!({"since": since, "extent_size": extent_size, "changed": ranges}),
                );
            }
            for extent in changed {
                println!("{} {}", extent * extent_size, extent_size);
            }
            Ok(())
        }
    }
}

/// SIGTERM / SIGINT close the volume cleanly (refuse new writes, wait for in-flight ones, commit with the
/// clean mark) and exit 0. The signals are blocked in this thread before any other thread exists, so every
/// thread inherits the block and only the waiting thread receives them.
fn install_shutdown(volume: Volume, policy: &'static str) -> Result<(), String> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block termination signals: {e}"))?;
    std::thread::Builder::new()
        .name("shutdown".into())
        .spawn(move || {
            let Ok(signal) = signals.wait() else { return };
            tracing::info!(?signal, "closing the volume");
            hv_storage::mover::write_stats(&volume, policy);
            let code = match volume.close(Duration::from_secs(5)) {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("hv-storage-fabric: {}", chain(&error));
                    1
                }
            };
            std::process::exit(code);
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the shutdown thread: {e}"))
}

/// The latest `stats.json` if a server wrote one, else figures from the volume's map alone.
fn current_stats(volume: &std::path::Path) -> Result<VolumeStats, String> {
    let opened = Volume::open(volume, true).map_err(|e| chain(&e))?;
    let mut stats = opened.stats("none");
    if let Ok(saved) = read_stats(volume) {
        // Placement comes from the committed map (authoritative); heat and counters from the server.
        let placement = stats.placement.clone();
        let tiers_used: Vec<usize> = stats.tiers.iter().map(|t| t.used_extents).collect();
        stats = saved;
        stats.placement = placement;
        for (tier, used) in stats.tiers.iter_mut().zip(tiers_used) {
            tier.used_extents = used;
        }
    }
    Ok(stats)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

/// One character per extent, `width` extents per row: the tier's digit (`.` when unallocated). On a
/// terminal the background colour shows heat; otherwise a second row under each row shades heat with
/// ` .:-=+*#%@` (coldest to hottest, relative to the hottest extent).
fn print_heatmap(stats: &VolumeStats, width: usize) {
    use std::io::IsTerminal;
    let colour = std::io::stdout().is_terminal();
    let max_heat = stats.heat.iter().copied().fold(0.0f64, f64::max).max(1.0);
    const RAMP: [u8; 6] = [236, 24, 31, 178, 202, 196];
    const SHADES: &[u8] = b" .:-=+*#%@";
    println!(
        "heat map: {} extents of {} bytes, max heat {:.1}",
        stats.placement.len(),
        stats.extent_size,
        max_heat
    );
    for (row, chunk) in stats.placement.chunks(width).enumerate() {
        let mut tiers = format!("{:>8} ", row * width);
        let mut shades = format!("{:>8} ", "");
        for (column, tier) in chunk.iter().enumerate() {
            let heat = stats.heat.get(row * width + column).copied().unwrap_or(0.0);
            let level = (heat / max_heat).sqrt();
            let symbol = if *tier < 0 {
                '.'
            } else {
                char::from_digit(*tier as u32 % 10, 10).unwrap_or('?')
            };
            if colour {
                let index =
                    ((level * (RAMP.len() - 1) as f64).round() as usize).min(RAMP.len() - 1);
                tiers.push_str(&format!("\x1b[48;5;{}m{}\x1b[0m", RAMP[index], symbol));
            } else {
                tiers.push(symbol);
                let index =
                    ((level * (SHADES.len() - 1) as f64).round() as usize).min(SHADES.len() - 1);
                shades.push(SHADES[index] as char);
            }
        }
        println!("{tiers}");
        if !colour {
            println!("{}", shades.trim_end());
        }
    }
    let names: Vec<String> = stats
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{i}={}", t.name))
        .collect();
    println!("tiers: {}   . = unallocated", names.join(" "));
}
