#!/usr/bin/env bash
# Launch benchmark: hv-compute vs bare hv-vmm vs QEMU microvm, N tiny guests at once, plus per-launch
# orchestrator overhead. Usage: examples/units/bench/launch.sh [N=50] [REPS=20]
set -euo pipefail
cd "$(dirname "$0")/../../.."
N=${1:-50}
REPS=${2:-20}
cargo build -q --release -p hv-orchestrator -p hv-vmm
[ -f target/guests/marker.elf ] || cargo run -q -p hv-test-guests -- --out target/guests
exec python3 examples/units/bench/launch_bench.py "$PWD/target/release/hv-compute" "$PWD/target/release/hv-vmm" \
    "$PWD/target/guests/marker.elf" "$N" "$REPS"
