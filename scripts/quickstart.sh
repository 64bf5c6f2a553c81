#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running VM: installs what the build needs,
# builds hv-vmm (release) and the tiny test guests, then boots the `marker` guest, which writes the
# boot marker, prints RDY on its serial console and resets (hv-vmm exits 0).
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

cargo build --release -q -p hv-vmm -p hv-test-guests
./target/release/hv-test-guests --out target/guests >/dev/null
echo "+ hv-vmm run --kernel target/guests/marker.elf"
./target/release/hv-vmm run --kernel target/guests/marker.elf
echo "quickstart: the guest booted, printed RDY and reset; hv-vmm exited 0"
