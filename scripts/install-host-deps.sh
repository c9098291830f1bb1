#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Install the Debian packages qgpu needs on the host (Debian 12 x86_64).
#
# Idempotent: a stamp file records the package list that was installed, so a
# second run with nothing new to install returns in well under a second.
# Runs apt as root directly, or through sudo when invoked as a normal user.
set -euo pipefail

# The stamps describe this host's packages, so they live with the host, not in
# $QGPU_CACHE: a cache restored onto a fresh machine or mounted into a container
# must not make its packages look installed.
STAMP_DIR=${XDG_STATE_HOME:-$HOME/.local/state}/qgpu/host-deps
mkdir -p "$STAMP_DIR"

# Packages, grouped by why we need them.
# valgrind: QEMU's configure looks for valgrind/valgrind.h whatever its options
# say; installed everywhere, a cached QEMU build is the same on every host.
QEMU_BUILD=(build-essential ninja-build pkg-config flex bison python3 python3-venv
            libglib2.0-dev libpixman-1-dev libslirp-dev zlib1g-dev xz-utils
            dpkg-dev ca-certificates valgrind)
# gdb: a backtrace from the core of a QEMU that crashed, for the error and artifacts.
QEMU_RUNTIME=(seabios qemu-system-data ipxe-qemu gdb)
# gcc-multilib: a 32-bit build of qgpu-tool, to test the driver's compat_ioctl and mmap2.
IMAGE_BUILD=(busybox-static cpio dropbear-bin zstd kmod xz-utils binutils openssh-client
             gcc-multilib)
# The project's own guest kernels (images/build-kernel.sh): objtool needs libelf.
KERNEL_BUILD=(bc libelf-dev libssl-dev patch)
# --only PKG...: just those (e.g. a container engine), not the build set.
if [[ ${1:-} == --only ]]; then
    shift
    PACKAGES=("$@")
else
    PACKAGES=("${QEMU_BUILD[@]}" "${QEMU_RUNTIME[@]}" "${IMAGE_BUILD[@]}" "${KERNEL_BUILD[@]}" "$@")
fi

stamp="$STAMP_DIR/host-deps.$(printf '%s\n' "${PACKAGES[@]}" | sort | sha256sum | cut -c1-16)"
if [[ -e $stamp ]]; then
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null; then
    SUDO=(sudo)
else
    echo "install-host-deps: need root or sudo to install Debian packages: ${PACKAGES[*]}" >&2
    exit 1
fi

# bookworm-backports carries QEMU 10.0.2 (source) and Linux 6.12; plain bookworm
# sources are enabled for deb-src. Same mirror and keyring as the system's own
# debian.sources, so nothing new is trusted.
SRC_LIST=/etc/apt/sources.list.d/qgpu-backports.sources
if [[ ! -e $SRC_LIST ]]; then
    uri=http://deb.debian.org/debian
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        found=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
        uri=${found:-$uri}
    fi
    echo "install-host-deps: adding $SRC_LIST (bookworm-backports deb+deb-src, bookworm deb-src)"
    "${SUDO[@]}" tee "$SRC_LIST" >/dev/null <<SRC
# Added by qgpu (scripts/install-host-deps.sh)
Types: deb deb-src
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: $keyring

Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: $keyring
SRC
    rm -f "$STAMP_DIR"/apt-updated
fi

# Also when the package lists are gone (container images remove them).
if [[ ! -e $STAMP_DIR/apt-updated ]] || ! compgen -G "/var/lib/apt/lists/*backports*Packages*" >/dev/null; then
    echo "install-host-deps: apt-get update"
    # Unrelated third-party sources that cannot be reached must not stop us.
    "${SUDO[@]}" apt-get update -q || echo "install-host-deps: apt-get update reported errors; continuing" >&2
    touch "$STAMP_DIR/apt-updated"
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-host-deps: installing Debian packages: ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
touch "$stamp"
