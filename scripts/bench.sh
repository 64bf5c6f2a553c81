#!/usr/bin/env bash
# Side-by-side benchmarks (docs/benchmarks.md): builds release binaries, then runs `cargo bench`.
# QEMU (Debian's qemu-system-x86) is the peer; install it with: apt-get install qemu-system-x86
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hv-vmm
cargo bench -p hv-benches --bench vmm_boot "$@"
