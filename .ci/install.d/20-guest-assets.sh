#!/usr/bin/env bash
# Tiny test guests and Debian's cloud kernel (docs/guests.md).
# - binutils, lz4: scripts/fetch-debian-kernel.sh extracts and checks the ELF vmlinux;
# - qemu-system-x86: hv-test-guests' tests boot every PVH test guest under QEMU -M microvm,
#   a VMM other than ours, so a broken guest is never mistaken for a VMM bug.
# Then fetches the kernel into .guest-assets/debian/ (skipped when already there).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
missing=()
for tool_package in readelf:binutils lz4:lz4 qemu-system-x86_64:qemu-system-x86 apt-get:apt; do
    command -v "${tool_package%%:*}" >/dev/null 2>&1 || missing+=("${tool_package#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# fetch-debian-kernel needs apt's package lists; a fresh machine may have none yet.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    apt-get update -qq
fi
scripts/fetch-debian-kernel.sh
