#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Configure (when needed) and build QEMU with qgpu, in one of four flavours:
#   plain     qemu-system-x86_64 (gcc): what the rig runs
#   fuzz      qemu-fuzz-x86_64 (clang, libFuzzer, ASan, UBSan): QEMU's generic
#             fuzzer with the qgpu configurations (tests/qtest/fuzz/)
#   sanitize  qemu-system-x86_64 (gcc, ASan, UBSan): the device suite under
#             the sanitizers
#   coverage  qemu-system-x86_64 (gcc --coverage): line and branch coverage
#             of the device's sources (make coverage)
# Each flavour needs its own BUILD_DIR.
#
# Usage: build-qemu.sh QEMU_SOURCE_DIR BUILD_DIR TOOLS_PYTHON [FLAVOUR]
#   TOOLS_PYTHON: a python3 that has meson and pycotap installed (the
#   Debian +ds source has no bundled wheels for configure to fall back on).
#   NINJA_JOBS in the environment limits ninja's parallel jobs.
#
# Configure runs again only when its arguments or the device set change, so
# an edit to the device source is an incremental ninja build.
set -euo pipefail

src=$1
build=$2
python=$3
flavour=${4:-plain}
here=$(cd "$(dirname "$0")/.." && pwd)

# Firmware comes from Debian packages (seabios, qemu-system-data, ipxe-qemu);
# baking the paths in lets build/bin/qemu-system-x86_64 run without -L.
# --without-default-features: only what is asked for below, not whatever
# optional libraries the host happens to have (bzip2, gnutls, libpng, ...).
# So a build in $QGPU_CACHE links the same on any Debian 12 host with the
# project's packages, and in the container: a cache moved between them works.
CONFIGURE_ARGS=(
    --without-default-features
    --target-list=x86_64-softmmu
    --without-default-devices --with-devices-x86_64=qgpu
    --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
    --disable-docs --disable-user --disable-werror --enable-slirp --enable-kvm
    --disable-gtk --disable-sdl --disable-vnc --disable-spice --disable-opengl
    --disable-xen --disable-tools --disable-guest-agent --disable-capstone
    --disable-fdt --disable-install-blobs --disable-download
    --python="$python"
)
case $flavour in
plain)
    target=qemu-system-x86_64 ;;
fuzz)
    # clang-16: the newest clang in Debian 12; libFuzzer is in libclang-rt-16-dev.
    CONFIGURE_ARGS+=(--cc=clang-16 --cxx=clang++-16 --objcc=clang-16
                     --enable-fuzzing --enable-asan --enable-ubsan)
    target=qemu-fuzz-x86_64 ;;
sanitize)
    CONFIGURE_ARGS+=(--enable-asan --enable-ubsan)
    target=qemu-system-x86_64 ;;
coverage)
    CONFIGURE_ARGS+=(--enable-gcov)
    target=qemu-system-x86_64 ;;
*)
    echo "build-qemu: unknown flavour '$flavour' (plain, fuzz, sanitize or coverage)" >&2
    exit 2 ;;
esac

# The key names the interpreter the tools venv really runs: configure makes the
# build's own pyvenv from it, and a build whose interpreter went away (or moved,
# as from one machine's cache to another's) must be configured again.
interpreter=$(readlink -f "$python")
want=$( { printf '%s\n' "${CONFIGURE_ARGS[@]}" "$interpreter"
          cat "$here/configs/devices/x86_64-softmmu/qgpu.mak"; } | sha256sum | cut -c1-16)
if [[ ! -f $build/build.ninja ]] || [[ $(cat "$build/.qgpu-configure" 2>/dev/null) != "$want" ]] ||
   { [[ -L $build/pyvenv/bin/python3 ]] && [[ ! -e $build/pyvenv/bin/python3 ]]; }; then
    echo "build-qemu: configuring QEMU ($flavour) in $build"
    mkdir -p "$build"
    (cd "$build" && "$src/configure" "${CONFIGURE_ARGS[@]}") > "$build/configure.log" 2>&1 || {
        tail -40 "$build/configure.log" >&2
        echo "build-qemu: configure failed; full log in $build/configure.log" >&2
        exit 1
    }
    echo "$want" > "$build/.qgpu-configure"
fi

# Run from the build tree, QEMU looks for firmware under qemu-bundle/ + the
# configured path: point those at Debian's firmware packages.
link_firmware() {
    local d
    for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
        mkdir -p "$build/qemu-bundle$(dirname "$d")"
        ln -sfn "$d" "$build/qemu-bundle$d"
    done
}
link_firmware

# ninja prints one status line per step: show progress without flooding logs.
jobs=()
[[ -n ${NINJA_JOBS:-} ]] && jobs=(-j "$NINJA_JOBS")
echo "build-qemu: ninja $target ($flavour; a cold build takes 3 to 5 minutes on 2 cores," \
     "twice that for the sanitizer flavours)"
if [[ -t 1 ]]; then
    ninja -C "$build" "${jobs[@]}" "$target"
else
    NINJA_STATUS="[%f/%t %es] " ninja -C "$build" "${jobs[@]}" "$target" |
        awk '/^\[[0-9]+\/[0-9]+ / { n++; if (n % 100 == 1) { print; fflush() } next } { print; fflush() }'
fi                              # (pipefail: a failed ninja ends the script here)

# QEMU builds with --disable-werror; the device's own files must not warn.
"$python" "$here/scripts/check-werror.py" "$build"
