#!/usr/bin/env bash
# Provisions what `cargo test --workspace` needs, on Debian 12 or Ubuntu
# 22.04/24.04, as root (the README's test command runs it first; .ci/run too):
#  - Debian packages, through apt-get: debootstrap, gdisk, dosfstools,
#    e2fsprogs, qemu-utils (the fixture image and image tests), git, gpg and
#    gpg-agent (the tests make keys),
#    apt-utils (recipe tests), python3 with venv (for moto); tools are found
#    by command, so newer builds already installed (e.g. qemu-utils from
#    backports) are kept, and versions are checked where they matter;
#  - moto (the S3/EC2/EBS emulator of the publish tests), >= 5.2.5, in a
#    virtualenv under $PGIMG_TOOLS_DIR (default /var/tmp/pgimg-tools), so the
#    machine's own moto never matters (5.2.0-5.2.4 answer
#    CompleteMultipartUpload with an XML root the Rust SDK rejects);
#  - gcp-storage-emulator (the Cloud Storage emulator of the GCE publish
#    tests), >= $gcs_min, in the same virtualenv.
# Idempotent: a second run installs nothing. It always refreshes the apt
# lists, since the system tests `apt-get download` .debs on the host.
set -euo pipefail

say() { printf 'tests/setup.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

moto_min=5.2.5
gcs_min=2026.7.19
tools_dir=${PGIMG_TOOLS_DIR:-/var/tmp/pgimg-tools}
venv=$tools_dir/venv

[ "$(id -u)" = 0 ] || die "run it as root: it installs Debian packages (and the system tests need root)"
command -v apt-get >/dev/null ||
    die "needs apt-get (Debian 12, Ubuntu 22.04 or 24.04); elsewhere install the equivalents of the packages listed in $0"

# command:package — the same names on Debian 12 and Ubuntu 22.04/24.04.
need=(
    debootstrap:debootstrap
    gpgv:gpgv
    /usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring
    sgdisk:gdisk
    mkfs.vfat:dosfstools
    mke2fs:e2fsprogs
    e2fsck:e2fsprogs
    resize2fs:e2fsprogs
    dumpe2fs:e2fsprogs
    qemu-img:qemu-utils
    losetup:mount
    git:git
    gpg:gpg
    gpgconf:gpgconf
    gpg-agent:gpg-agent
    apt-ftparchive:apt-utils
    python3:python3
)

present() {
    case $1 in
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

missing=()
for entry in "${need[@]}"; do
    present "${entry%%:*}" || missing+=("${entry##*:}")
done
# The virtualenv module (Debian splits it out of python3).
if ! present python3 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q -o DPkg::Lock::Timeout=300
if [ "${#missing[@]}" -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    say "installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" ||
        die "apt-get install failed; run \`apt-get install -y --no-install-recommends ${missing[*]}\` and read its output"
fi
for entry in "${need[@]}"; do
    present "${entry%%:*}" || die "${entry%%:*} is still missing after installing ${entry##*:} (is /usr/sbin on PATH?)"
done

# "major.minor" >= "major.minor"
version_ge() {
    local IFS=.
    local -a a=($1) b=($2)
    ((a[0] > b[0] || (a[0] == b[0] && a[1] >= b[1])))
}
check_version() { # name found minimum why
    [ -n "$2" ] || die "cannot read the version of $1"
    version_ge "$2" "$3" || die "$1 $2 is too old: the tests need $3 or newer ($4)"
}
check_version qemu-img "$(qemu-img --version | sed -n 's/^qemu-img version \([0-9]*\.[0-9]*\).*/\1/p')" 4.0 \
    "older ones do not report a qcow2's external data file"
check_version mke2fs "$(mke2fs -V 2>&1 | sed -n 's/^mke2fs \([0-9]*\.[0-9]*\).*/\1/p')" 1.43 \
    "the fixture fills the file system with mke2fs -d"
check_version python3 "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" 3.9 \
    "moto $moto_min needs it"
[ -e /usr/share/debootstrap/scripts/bookworm ] ||
    die "debootstrap does not know Debian bookworm: install debootstrap 1.0.124 or newer (e.g. from backports)"

# moto and the Cloud Storage emulator in their own virtualenv. pip reads the
# machine's pip configuration (/etc/pip.conf, PIP_* variables: a mirror or CA
# bundle).
venv_has() { # distribution minimum executable
    [ -x "$venv/bin/$3" ] && "$venv/bin/python" - "$1" "$2" 2>/dev/null <<'PY'
import importlib.metadata as m, sys
have = tuple(int(x) for x in m.version(sys.argv[1]).split(".")[:3])
want = tuple(int(x) for x in sys.argv[2].split("."))
raise SystemExit(0 if have >= want else 1)
PY
}
venv_install() { # distribution minimum executable requirement
    venv_has "$1" "$2" "$3" && return 0
    say "installing $4 into $venv"
    mkdir -p "$tools_dir"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" ||
        die "python3 -m venv $venv failed (apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$4" ||
        die "pip could not install $4 into $venv (is PyPI or your pip mirror reachable?)"
    venv_has "$1" "$2" "$3" || die "$venv/bin/$3 is still missing or older than $2 after pip install"
}
venv_install moto "$moto_min" moto_server "moto[server]>=$moto_min"
# The oldest release these tests were run against.
venv_install gcp-storage-emulator "$gcs_min" gcp-storage-emulator "gcp-storage-emulator>=$gcs_min"
# QEMU, OVMF, GRUB's module sets and mtools for the boot tests (tests/boot.rs).
bash "$(dirname "$0")/setup-boot.sh"
# Space: a first `cargo test` writes its build (about 8 GB under the
# Cargo target folder) and the system tests' fixtures and images (about
# 9 GB at their peak under $PGIMG_FIXTURE_DIR). Say so now rather than
# let a test fail midway with ENOSPC.
free_gb() { # the nearest existing folder of $1: GB free on its file system
    local d=$1
    while [ ! -e "$d" ]; do d=$(dirname "$d"); done
    df -P -k "$d" | awk 'NR == 2 { print int($4 / 1000000) }'
}
fixtures=${PGIMG_FIXTURE_DIR:-/var/tmp/pgimg-fixtures}
[ "$(free_gb "$fixtures")" -ge 9 ] ||
    say "warning: $(free_gb "$fixtures") GB free for $fixtures; the system tests write up to 9 GB there at once (set PGIMG_FIXTURE_DIR to a roomier place)"
target=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}
[ "$(free_gb "$target")" -ge 8 ] ||
    say "warning: $(free_gb "$target") GB free for $target; a first test build writes about 8 GB there"
say "ready: $("$venv/bin/python" -c 'import importlib.metadata as m; print("moto", m.version("moto") + ", gcp-storage-emulator", m.version("gcp-storage-emulator"))'), $(qemu-img --version | head -n 1)"
