#!/usr/bin/env bash
# Installs what the boot tests (tests/boot.rs), `pgimg boot`/`pgimg verify`
# and the bootable fixture need: QEMU (x86 system emulator), OVMF (UEFI
# firmware), GRUB's BIOS and EFI module sets (for grub-mkimage; not the
# grub-pc/grub-efi packages, which would take over the host's boot loader),
# and mtools (writes FAT images without mounting: this kernel cannot mount vfat).
#
# Idempotent; run as root. Debian bookworm's qemu-system-x86 (7.2) cannot be
# installed beside a qemu-utils from bookworm-backports (10.x, as on this
# project's CI image): their qemu-system-common/qemu-utils versions conflict.
# So when the installed qemu-utils came from backports, bookworm-backports
# (deb.debian.org) is added to the apt sources and QEMU is taken from there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
    echo "setup-boot.sh: needs root (apt-get)" >&2
    exit 1
fi

pkgs=(qemu-system-x86 ovmf grub-pc-bin grub-efi-amd64-bin grub-common mtools dosfstools)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
utils_version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
target=()
if [[ "$utils_version" == *bpo* ]]; then
    list=/etc/apt/sources.list.d/pgimg-backports.sources
    if ! grep -rqs -- "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat >"$list" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: ${codename}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    # Keep the system QEMU in step with the backported qemu-utils.
    target=(-t "${codename}-backports")
fi

apt-get update -q
apt-get install -y -q --no-install-recommends "${target[@]}" "${missing[@]}"
