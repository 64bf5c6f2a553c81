//! `hv`: the hyper-nixos command line. Parses arguments and dispatches; the work lives in the
//! library (`hv_orchestrator::features`, `hv_orchestrator::host`). Errors are printed here,
//! once, with their whole cause chain, and turn into a non-zero exit.

use std::error::Error;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hv_orchestrator::features::cli::{
    rewrite_removals, run_detect, run_features, CliError, FeaturesCommand, Globals,
};

#[derive(Debug, Parser)]
#[command(
    name = "hv",
    version,
    about = "hyper-nixos: features, host detection, compute units"
)]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Detect CPU, KVM, RAM, hugepages, IOMMU groups, GPUs/PCI devices and disks.
    Detect,
    /// Manage the feature set: list, show, plan, apply, rollback, status.
    Features {
        #[command(subcommand)]
        command: FeaturesCommand,
    },
    /// Compute units (`hv compute <args...>` is handed to the compute CLI unparsed).
    #[command(disable_help_flag = true)]
    Compute {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    // `hv compute ...` is exactly `hv-compute ...`: hand it over before parsing anything.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(args) = hv_orchestrator::compute::cli::args_from_hv(&raw) {
        return hv_orchestrator::compute::cli::run(args);
    }
    let cli = Cli::parse_from(rewrite_removals(raw));
    let result = match &cli.command {
        Command::Detect => run_detect(&cli.globals),
        Command::Features { command } => run_features(command, &cli.globals),
        // Handled above by `args_from_hv`; reaching this arm means the words could not be
        // separated (e.g. an option value that looks like `compute`).
        Command::Compute { args } => {
            let mut forwarded = vec![std::ffi::OsString::from("hv")];
            forwarded.extend(args.iter().map(std::ffi::OsString::from));
            return hv_orchestrator::compute::cli::run(forwarded);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// `error: outer: cause: root cause` on one line.
fn report(err: &CliError) {
    let mut line = format!("error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{line}");
}
