#!/usr/bin/env bash
# Nix tools for the feature manager's checks (issue 3): `nix-instantiate --parse` on every
# generated file and on nixos/ + flake.nix, and `nix-instantiate --eval` of nixos/catalog.nix
# and nixos/rules.nix against the Rust catalog. Debian's nix-bin (2.8) needs no nixpkgs for that.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v nix-instantiate >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends nix-bin >/dev/null
fi
# Evaluation needs a store and state directory; as root the defaults under /nix are used.
mkdir -p /nix/var/nix
nix-instantiate --version
