//! `hv-compute`: the compute-unit command line (the same code as `hv compute ...`).

fn main() -> std::process::ExitCode {
    hv_orchestrator::compute::cli::run(std::env::args_os().collect())
}
