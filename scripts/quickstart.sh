#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running VM: installs what the build needs,
# builds hv-vmm, hv-compute and the tiny test guests (release), then launches the `hello` compute
# unit of examples/units: hv-compute resolves it (blueprint tiny@1.0 -> the built-in `marker`
# guest), starts hv-vmm, waits for the guest's boot marker and prints the boot time. The guest
# prints RDY on its serial console and resets. State goes to target/hv-state (no root needed).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "quickstart: cargo is missing: install Rust (https://rustup.rs) and run this again" >&2
    exit 1
fi
if ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential
    else
        echo "quickstart: a C compiler is missing: sudo apt-get install build-essential" >&2
        exit 1
    fi
fi
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "quickstart: /dev/kvm is missing or not accessible; hv-vmm will say how to fix it" >&2
fi

cargo build --release -q -p hv-vmm -p hv-test-guests -p hv-orchestrator
./target/release/hv-test-guests --out target/guests >/dev/null
state=target/hv-state
run() { echo "+ $*"; "$@"; }
run ./target/release/hv-compute --spec-dir examples/units --state-dir "$state" launch hello
# The guest resets right after its marker; give the supervisor a moment to record the exit.
sleep 0.2
run ./target/release/hv-compute --state-dir "$state" list
run ./target/release/hv-compute --state-dir "$state" logs "$(./target/release/hv-compute --state-dir "$state" --json list | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])' 2>/dev/null || echo hello.0)"
echo "quickstart: done. The VMM alone: ./target/release/hv-vmm run --kernel target/guests/marker.elf"
