#!/usr/bin/env bash
# Side-by-side benchmarks (docs/benchmarks.md): builds hv-vmm twice (the default release build,
# and a static one with glibc linked in, which loads faster and keeps less resident), then runs
# `cargo bench`. QEMU (Debian's qemu-system-x86) is the peer: apt-get install qemu-system-x86
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hv-vmm
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p hv-vmm --target x86_64-unknown-linux-gnu
cargo bench -p hv-benches --bench vmm_boot "$@"
