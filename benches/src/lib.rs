//! Shared pieces of the side-by-side benchmarks: finding the binaries under test, timing a VMM
//! process from exec to a console marker and to exit, and measuring resident memory outside guest
//! RAM.
//!
//! Run with `scripts/bench.sh` (builds release binaries first) or `cargo bench -p hv-benches`.

pub mod process;
pub mod stats;
