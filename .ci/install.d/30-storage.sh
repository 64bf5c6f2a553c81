#!/usr/bin/env bash
# storage-tier tests drive the NBD server with Debian's real clients (qemu-io, qemu-img) and fio's nbd engine;
# the benchmark compares with qemu-nbd and nbdkit. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v fio >/dev/null || need+=(fio)
command -v nbdkit >/dev/null || need+=(nbdkit)
if [ "${#need[@]}" -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
