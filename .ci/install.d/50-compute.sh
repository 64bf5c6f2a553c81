#!/usr/bin/env bash
# hv-compute tests: libvirt's schema validator (virt-xml-validate needs xmllint) checks exported XML,
# and qemu-img converts qcow2 disks on import.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends libvirt-clients libxml2-utils qemu-utils >/dev/null
