#!/usr/bin/env bash
# The project's test command (README). Guest-level tests need /dev/kvm; they skip with a
# reason without it unless HV_REQUIRE_KVM=1, which makes a missing /dev/kvm a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace "$@"
