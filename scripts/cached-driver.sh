#!/usr/bin/env bash
# cached-driver.sh KDIR OUT -- BUILD-COMMAND...
#
# The guest driver's build products (OUT/qgpu.ko, OUT/test/*.ko, OUT/bin/*)
# for one kernel, kept in $QGPU_CACHE/driver under a digest of every input:
# the sources of the driver, its tools and the test modules, the shared device
# header, the kernel they are built against (its release, configuration and
# exported symbols), the compilers, linker and static C libraries, the build
# command, and this script. A digest found
# there is copied into OUT; otherwise BUILD-COMMAND runs and its products are
# stored. A fresh checkout thus skips about a minute of compiling (three
# kernels) when nothing the driver is made of has changed. The builds are
# reproducible (paths mapped, no BTF), so a cached module is the one a build
# would make.
#
# An entry is complete only once renamed into place, so an interrupted store
# is never taken for one. The newest QGPU_DRIVER_CACHE_KEEP entries (default
# 12) are kept; reading an entry makes it the newest.
set -euo pipefail

[[ $# -ge 4 && $3 == -- ]] || { echo "usage: $0 KDIR OUT -- BUILD-COMMAND..." >&2; exit 2; }
kdir=$1 out=$2
shift 3
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${QGPU_CACHE:-$HOME/.cache/qgpu}/driver
keep=${QGPU_DRIVER_CACHE_KEEP:-12}
log() { echo "cached-driver: $*"; }

# Every input, one line each; a failure to read one fails the script, rather
# than leaving it out of the digest.
inputs() {
    local f
    local command="$*"
    # The command names the checkout's output folder: the same in every clone.
    echo "command=${command//$top/TOP} CC=${CC:-} KCFLAGS=${KCFLAGS:-} LLVM=${LLVM:-}"
    echo "kdir=$(readlink -f "$kdir")"
    for cc in "${CC:-cc}" gcc; do "$cc" --version | sed -n 1p; done
    ld --version | sed -n 1p
    # The tools are linked statically (64 and 32 bits): the C libraries are inputs.
    for f in /usr/lib/x86_64-linux-gnu/libc.a /usr/lib32/libc.a; do
        if [[ -e $f ]]; then sha256sum "$f"; else echo "no $f"; fi
    done
    (cd "$top" && find guest-driver tests/canary -type f \
        \( -name '*.[ch]' -o -name Kbuild -o -name Makefile \) \
        ! -path '*/.build/*' ! -name '*.mod.c' -print | LC_ALL=C sort | xargs sha256sum)
    (cd "$top" && sha256sum qemu-device/include/hw/misc/qgpu_hw.h scripts/cached-driver.sh)
    for f in include/config/kernel.release include/generated/autoconf.h Module.symvers .config; do
        if [[ -e $kdir/$f ]]; then sha256sum "$kdir/$f"; else echo "no $f"; fi
    done
}

mkdir -p "$cache"
list=$(mktemp "$cache/.inputs.XXXXXX")
trap 'rm -f "$list"' EXIT
inputs "$@" > "$list"
key=$(sha256sum < "$list" | cut -c1-24)
rm -f "$list"
entry=$cache/$key
products=(qgpu.ko test bin)

if [[ -e $entry/qgpu.ko ]] && touch "$entry" 2>/dev/null; then
    # Touched first: the newest entry is the last one pruning takes.
    mkdir -p "$out"
    for p in "${products[@]}"; do
        rm -rf "${out:?}/$p"
        cp -a "$entry/$p" "$out/$p"
    done
    log "$out: from the cache ($entry)"
    exit 0
fi

# Only what this build installs is stored, nothing left from an earlier one.
for p in "${products[@]}"; do
    rm -rf "${out:?}/$p"
done
"$@"

tmp=$(mktemp -d "$cache/.new.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for p in "${products[@]}"; do
    cp -a "$out/$p" "$tmp/$p"
done
# Another build of the same inputs may have stored it first: same bytes.
if mv -T "$tmp" "$entry" 2>/dev/null; then
    log "stored in $entry"
fi
# Oldest entries beyond the newest $keep go (never one being written: .new.*).
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%T@ %p\n' \
    | sort -rn | tail -n +$((keep + 1)) | cut -d' ' -f2- | xargs -r rm -rf
