#!/usr/bin/env bash
# Fetch Debian's cloud kernel for the real-Linux boot tests (issue 2, docs/guests.md):
#   .guest-assets/debian/vmlinuz   the bzImage, as Debian ships it
#   .guest-assets/debian/vmlinux   the ELF kernel inside it (carries the Xen PVH entry note)
#   .guest-assets/debian/package   the Debian package and version they came from
#
# How: `apt-get download` the linux-image-6.1.0-*-cloud-amd64 package that linux-image-cloud-amd64
# depends on, `dpkg -x` it, take boot/vmlinuz-*, then find the LZ4 (legacy frame) payload in the
# bzImage and decompress it with `lz4`, the way the kernel's scripts/extract-vmlinux does. The result
# must be an x86-64 ELF with a Xen note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY), checked with readelf.
#
# Idempotent: does nothing when both files are present and the vmlinux passes the check.
# Usage: scripts/fetch-debian-kernel.sh [--force]
# Needs: apt-get, apt-cache, dpkg (Debian), lz4, readelf (binutils); apt lists (apt-get update).
set -euo pipefail

readonly META_PACKAGE=linux-image-cloud-amd64
readonly LZ4_LEGACY_MAGIC='\x02\x21\x4c\x18' # 0x184c2102 little-endian: what `lz4 -l` writes
readonly ASSETS_DIR="$(cd "$(dirname "$0")/.." && pwd)/.guest-assets/debian"

die() {
    echo "fetch-debian-kernel: $*" >&2
    exit 1
}

need_tool() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is missing; install it with: apt-get install -y $2"
}

# True when $1 is an x86-64 ELF whose notes include Xen's PHYS32_ENTRY (type 0x12).
has_pvh_note() {
    local elf=$1
    readelf -h "$elf" 2>/dev/null | grep -q 'Machine:.*X86-64' || return 1
    readelf -n "$elf" 2>/dev/null | awk '$1 == "Xen" && /0x00000012/ { found = 1 } END { exit !found }'
}

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (usage: $0 [--force])" ;;
esac

if [ "$force" = 0 ] && [ -s "$ASSETS_DIR/vmlinuz" ] && [ -s "$ASSETS_DIR/vmlinux" ] && has_pvh_note "$ASSETS_DIR/vmlinux"; then
    echo "fetch-debian-kernel: already present: $ASSETS_DIR/{vmlinuz,vmlinux} ($(cat "$ASSETS_DIR/package" 2>/dev/null || echo unknown))"
    exit 0
fi

need_tool apt-get apt
need_tool apt-cache apt
need_tool dpkg dpkg
need_tool lz4 lz4
need_tool readelf binutils
need_tool grep grep

# The versioned image package, e.g. linux-image-6.1.0-56-cloud-amd64.
package=$(apt-cache depends "$META_PACKAGE" 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ { print $2; exit }') || true
[ -n "$package" ] || die "apt does not know $META_PACKAGE or its linux-image-*-cloud-amd64 dependency; run 'apt-get update' (Debian 12 main)"

work=$(mktemp -d "${TMPDIR:-/tmp}/fetch-debian-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt-get download drops privileges to _apt when run as root; let it write into the work directory.
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
    chown _apt "$work"
fi

echo "fetch-debian-kernel: downloading $package"
(cd "$work" && apt-get download -qq "$package") || die "apt-get download $package failed (network or apt sources?)"
deb=$(find "$work" -maxdepth 1 -name "${package}_*.deb" | head -n 1)
[ -n "$deb" ] || die "apt-get download $package produced no .deb in $work"
version=$(dpkg-deb -f "$deb" Version) || die "cannot read the version of $deb"

dpkg -x "$deb" "$work/root" || die "dpkg -x $deb failed"
vmlinuz=$(find "$work/root/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
[ -n "$vmlinuz" ] || die "$deb has no boot/vmlinuz-*"
[ "$(head -c 2 "$vmlinuz" | od -An -tx1 | tr -d ' ')" = 4d5a ] || die "$vmlinuz does not look like a bzImage (no MZ header)"

# Every offset of the LZ4 legacy magic; the kernel payload is the first one that decompresses to an ELF.
# lz4 complains about the size trailer the kernel appends after the frame, so its status is not used:
# the ELF and note checks below decide.
vmlinux="$work/vmlinux"
found=0
for offset in $(LC_ALL=C grep -obUaP "$LZ4_LEGACY_MAGIC" "$vmlinuz" | cut -d: -f1); do
    tail -c "+$((offset + 1))" "$vmlinuz" | lz4 -dc >"$vmlinux" 2>/dev/null || true
    if [ "$(head -c 4 "$vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
        found=1
        break
    fi
done
[ "$found" = 1 ] || die "no LZ4 payload that decompresses to an ELF in $vmlinuz (not an LZ4-compressed kernel?)"
has_pvh_note "$vmlinux" || die "the vmlinux extracted from $vmlinuz has no Xen PVH note (type 18); CONFIG_PVH=y is needed"

mkdir -p "$ASSETS_DIR"
install -m 644 "$vmlinuz" "$ASSETS_DIR/vmlinuz.tmp"
install -m 644 "$vmlinux" "$ASSETS_DIR/vmlinux.tmp"
mv -f "$ASSETS_DIR/vmlinuz.tmp" "$ASSETS_DIR/vmlinuz"
mv -f "$ASSETS_DIR/vmlinux.tmp" "$ASSETS_DIR/vmlinux"
echo "$package $version" >"$ASSETS_DIR/package"
# The note's descriptor is a little-endian address; print its low 32 bits.
pvh_entry=$(readelf -n "$ASSETS_DIR/vmlinux" |
    awk '$1 == "Xen" && /0x00000012/ { getline; sub(/.*: /, ""); split($0, b, " "); print "0x" b[4] b[3] b[2] b[1]; exit }')
echo "fetch-debian-kernel: $package $version -> $ASSETS_DIR/vmlinuz (bzImage), $ASSETS_DIR/vmlinux (ELF, PVH entry $pvh_entry)"
