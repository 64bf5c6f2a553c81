//! `hv-test-guests`: writes the built-in test guests out as ELF files, or lists them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use hv_test_guests::elf::ElfSummary;
use hv_test_guests::Guest;

/// Write hv-vmm's tiny test guests as `<DIR>/<name>.elf`, or list them.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// List the guests (name, vCPUs, entry, description) and exit.
    #[arg(long, conflicts_with = "out")]
    list: bool,
    /// Directory to write `<name>.elf` files into (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "list")]
    out: Option<PathBuf>,
    /// Guests to write; all of them when none is given.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("no test guest is called {name:?} (try --list)")]
    UnknownGuest { name: String },
    #[error("cannot create the output directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.list {
        list()
    } else {
        write_guests(args.out.as_deref(), &args.names)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("hv-test-guests: {error}");
            let mut cause = std::error::Error::source(&error);
            while let Some(inner) = cause {
                message.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn list() -> Result<(), CliError> {
    for guest in hv_test_guests::all() {
        let boot = match ElfSummary::parse(guest.elf) {
            Ok(ElfSummary {
                pvh_entry: Some(entry),
                ..
            }) => format!("pvh@{entry:#x}"),
            Ok(summary) => format!("elf64@{:#x}", summary.entry),
            Err(error) => format!("bad ELF: {error}"),
        };
        println!(
            "{:<11} vcpus={} {:<15} {}",
            guest.name, guest.vcpus, boot, guest.description
        );
    }
    Ok(())
}

fn write_guests(out: Option<&Path>, names: &[String]) -> Result<(), CliError> {
    // clap guarantees --out unless --list.
    let Some(out) = out else { return Ok(()) };
    let guests: Vec<&Guest> = if names.is_empty() {
        hv_test_guests::all().iter().collect()
    } else {
        names
            .iter()
            .map(|name| {
                hv_test_guests::by_name(name)
                    .ok_or_else(|| CliError::UnknownGuest { name: name.clone() })
            })
            .collect::<Result<_, _>>()?
    };
    std::fs::create_dir_all(out).map_err(|source| CliError::CreateDir {
        path: out.to_path_buf(),
        source,
    })?;
    for guest in guests {
        let path = out.join(format!("{}.elf", guest.name));
        std::fs::write(&path, guest.elf).map_err(|source| CliError::Write {
            path: path.clone(),
            source,
        })?;
        println!("{}", path.display());
    }
    Ok(())
}
