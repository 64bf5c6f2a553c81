#!/usr/bin/env bash
# Debian packages every part of the workspace needs to build and test.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends build-essential pkg-config ca-certificates >/dev/null
