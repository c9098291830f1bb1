#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build one of the project's guest kernels from Debian's linux-source package,
# out of tree, cached in $QGPU_CACHE, and put the pieces the image needs into
# OUT (the same files fetch-kernel.sh writes for the stock kernel):
#
#   build-kernel.sh FLAVOUR [OUT]        FLAVOUR: qgpu | debug
#
#   $OUT/kernel-abi      the kernel release (uname -r), e.g. 6.12.95-qgpu
#   $OUT/vmlinux         the kernel ELF (PVH entry: QEMU boots it with -kernel)
#   $OUT/vmlinuz         the bzImage
#   $OUT/kernel.config   the configuration it was built with
#   $OUT/kernel-cmdline  boot parameters the kernel wants (the fragments'
#                        "# qgpu-cmdline:" lines), added by every way of booting
#   $OUT/kernel-root     link to the installed tree: boot/config-REL,
#                        lib/modules/REL (modules.dep; everything is built in)
#   $OUT/kernel-kdir     link to the build directory: KDIR for external modules
#   $OUT/kernel-source   what it was built from (package, version, sha256, key)
#
# Source: linux-source-<major.minor> at the version of the stock guest kernel
# (scripts/guest-kernel-abi.sh) when the archive has it, else apt's candidate
# (logged). The .deb is checked against the sha256 in apt's signed index, and
# the hash is logged. images/kconfig/patches/*.patch are applied once to the
# unpacked tree.
#
# Configuration: `make allnoconfig` plus the flavour's fragments from
# images/kconfig/ (scripts/kconfig/merge_config.sh -n); then every value the
# fragments ask for is checked against the result, and any that did not stick
# fails the build. Flavours:
#   qgpu   base.config qgpu.config               (io_mapping_map_user built in)
#   debug  base.config qgpu.config debug.config  (KASAN, lockdep, kmemleak, ...)
#
# Cache ($QGPU_CACHE):
#   downloads/linux-source-*.deb                 the verified package
#   linux-src/VER-PATCHES/                       unpacked + patched, shared by flavours
#   kernel-build/VER-PATCHES/FLAVOUR/obj/        objects: a fragment change rebuilds
#                                                only what it affects
#   kernel-build/VER-PATCHES/FLAVOUR/root/       installed tree (see kernel-root),
#                                                with the vmlinux OUT gets
#   kernel-build/VER-PATCHES/FLAVOUR/key         the inputs of the last good build:
#                                                removed before obj/ changes and
#                                                written last, so a failed or
#                                                interrupted build never looks
#                                                finished
#   kernel-build.lock                            one kernel build at a time per cache
# Trees of other versions or patch sets are removed after a successful build.
#
# Env: QGPU_CACHE, JOBS (default: nproc), KERNEL_VERSION (a linux-source
# package version, instead of the stock kernel's).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
log() { echo "build-kernel: $*" >&2; }
die() { log "$*"; exit 1; }

flavour=${1:-}
case $flavour in
    qgpu)  fragments=(base.config qgpu.config) ;;
    debug) fragments=(base.config qgpu.config debug.config) ;;
    *) die "usage: build-kernel.sh qgpu|debug [OUT] (got '${flavour}')" ;;
esac
OUT=${2:-$top/build/images/$flavour}
QGPU_CACHE=${QGPU_CACHE:-$HOME/.cache/qgpu}
JOBS=${JOBS:-$(nproc)}
kconfig=$here/kconfig
frag_paths=("${fragments[@]/#/$kconfig/}")

# Host tools: compiler, flex, bison, bc, libelf/libssl headers, kmod (depmod).
"$top/scripts/install-host-deps.sh" >&2

# ---- which source ------------------------------------------------------------------
abi=$("$top/scripts/guest-kernel-abi.sh")
series=$(echo "$abi" | cut -d. -f1-2)                  # 6.12
pkg=linux-source-$series
stock_ver=$(apt-cache show "linux-image-$abi" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
ver=${KERNEL_VERSION:-$stock_ver}
if [[ -z $ver ]] || ! apt-cache show "$pkg=$ver" >/dev/null 2>&1; then
    cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n $cand && $cand != "(none)" ]] ||
        die "apt knows no $pkg (run scripts/install-host-deps.sh; bookworm-backports and bookworm-security carry it)"
    log "the archive has no $pkg ${ver:-?} (the stock kernel's version); using $cand"
    ver=$cand
fi
want_sha=$(apt-cache show "$pkg=$ver" | awk '/^SHA256:/ {print $2; exit}')
patches=("$kconfig"/patches/*.patch)
patch_key=$(cat "${patches[@]}" | sha256sum | cut -c1-12)
src_id=${ver//[~+:]/_}-$patch_key
src=$QGPU_CACHE/linux-src/$src_id
bdir=$QGPU_CACHE/kernel-build/$src_id/$flavour
obj=$bdir/obj root=$bdir/root

# ---- up to date? ------------------------------------------------------------------
key=$({
    echo "pkg=$pkg ver=$ver sha256=$want_sha flavour=$flavour"
    gcc --version | head -1
    for f in "$0" "${patches[@]}" "${frag_paths[@]}"; do
        echo "$(basename "$f") $(sha256sum <"$f")"
    done
} | sha256sum | cut -d' ' -f1)
rel=$(cat "$bdir/release" 2>/dev/null || true)
publish() {
    local o=$1
    mkdir -p "$o"
    if [[ $(cat "$o/kernel-source" 2>/dev/null | sed -n 's/^key=//p') == "$key" &&
          -e $o/vmlinux && -e $o/vmlinuz && -e $o/kernel.config && -e $o/kernel-cmdline ]]; then
        return 0
    fi
    cp "$root/boot/vmlinux-$rel" "$o/vmlinux.tmp" && mv "$o/vmlinux.tmp" "$o/vmlinux"
    cp "$root/boot/vmlinuz-$rel" "$o/vmlinuz.tmp" && mv "$o/vmlinuz.tmp" "$o/vmlinuz"
    cp "$root/boot/config-$rel" "$o/kernel.config"
    ln -sfn "$root" "$o/kernel-root"
    ln -sfn "$obj" "$o/kernel-kdir"
    { grep -h '^# qgpu-cmdline:' "${frag_paths[@]}" || true; } | sed 's/^# qgpu-cmdline: *//' |
        tr '\n' ' ' | sed -e 's/ *$//' -e '$a\\' >"$o/kernel-cmdline"
    echo "$rel" >"$o/kernel-abi"
    printf 'package=%s\nversion=%s\nsha256=%s\nflavour=%s\nfragments=%s\nkey=%s\n' \
        "$pkg" "$ver" "$want_sha" "$flavour" "${fragments[*]}" "$key" >"$o/kernel-source"
}
up_to_date() {
    [[ -n $rel && $(cat "$bdir/key" 2>/dev/null) == "$key" && -e $root/boot/vmlinuz-$rel &&
       -e $root/boot/vmlinux-$rel ]]
}
if up_to_date; then
    publish "$OUT"
    log "$flavour kernel $rel is up to date (cache $bdir)"
    exit 0
fi

# One build at a time in this cache (another checkout may share it).
mkdir -p "$QGPU_CACHE"
exec 9>"$QGPU_CACHE/kernel-build.lock"
if ! flock -n 9; then
    log "waiting for another kernel build in $QGPU_CACHE to finish"
    flock 9
fi
rel=$(cat "$bdir/release" 2>/dev/null || true)
if up_to_date; then             # the other build was this one
    publish "$OUT"
    log "$flavour kernel $rel is up to date (cache $bdir)"
    exit 0
fi

# ---- fetch and unpack the source ---------------------------------------------------
dl=$QGPU_CACHE/downloads
mkdir -p "$dl"
deb=$dl/${pkg}_${ver//:/%3a}_all.deb
if [[ ! -e $deb ]] || [[ $(sha256sum <"$deb" | cut -d' ' -f1) != "$want_sha" ]]; then
    rm -f "$dl/${pkg}_"*_all.deb
    log "downloading $pkg $ver (about 150 MB)"
    # apt-get download checks the file against the signed index.
    (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2)
    deb=$(ls "$dl/${pkg}_"*_all.deb | head -1)
fi
got_sha=$(sha256sum <"$deb" | cut -d' ' -f1)
[[ $got_sha == "$want_sha" ]] || die "sha256 mismatch for $deb: got $got_sha, apt's index says $want_sha"
log "source: $(basename "$deb") sha256=$got_sha"

if [[ ! -e $src/.done ]]; then
    log "unpacking $pkg $ver into $src (about 1.6 GB, 30 s)"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$pkg.tar.xz" |
        tar -xJ -C "$src.tmp" --strip-components=1
    for p in "${patches[@]}"; do
        log "applying $(basename "$p")"
        patch -d "$src.tmp" -p1 -s --forward <"$p" || die "patch $p does not apply to $pkg $ver"
    done
    mv "$src.tmp" "$src"
    echo "$pkg $ver $got_sha" >"$src/.done"
fi

# ---- configure ---------------------------------------------------------------------
# From here on obj/ no longer matches the last good build: it is not finished
# until the key is written again.
mkdir -p "$obj"
rm -f "$bdir/key" "$bdir/release"
log "configuring $flavour: allnoconfig + ${fragments[*]}"
(cd "$src" && scripts/kconfig/merge_config.sh -n -O "$obj" "${frag_paths[@]}") \
    >"$bdir/config.log" 2>&1 || { tail -20 "$bdir/config.log" >&2; die "configuration failed (log: $bdir/config.log)"; }
# Every value a fragment asks for (the last fragment that names a symbol wins)
# must be in the final .config; Kconfig drops values whose dependencies are
# missing without failing.
python3 - "$obj/.config" "${frag_paths[@]}" <<'PY' || die "the configuration lacks values the fragments ask for (see above)"
import re, sys
want = {}
for frag in sys.argv[2:]:
    for line in open(frag):
        line = line.strip()
        if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line):
            want[m[1]] = (m[2], frag)
        elif m := re.fullmatch(r"# (CONFIG_\w+) is not set", line):
            want[m[1]] = ("n", frag)
have = {}
for line in open(sys.argv[1]):
    if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line.strip()):
        have[m[1]] = m[2]
bad = [f"  {sym}: asked {val} ({frag.rsplit('/', 1)[-1]}), got {have.get(sym, 'n')}"
       for sym, (val, frag) in sorted(want.items()) if have.get(sym, "n") != val]
if bad:
    print("build-kernel: these options did not stick (a missing dependency?):", file=sys.stderr)
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
PY

# ---- build, with progress ------------------------------------------------------------
kmake=(make -C "$src" O="$obj" -j"$JOBS" KBUILD_BUILD_USER=qgpu KBUILD_BUILD_HOST=qgpu
       KBUILD_BUILD_TIMESTAMP="$(date -u -d @1700000000)")
est=$(cat "$bdir/steps" 2>/dev/null || true)
fresh=1
[[ -e $obj/vmlinux ]] && fresh=0
log "building $flavour with $JOBS jobs (log: $bdir/build.log)${est:+; a full build is about $est steps}"
start=$SECONDS
# Its own process group, killed with this script: a background job ignores the
# terminal's Ctrl-C, and the build must not outlive us.
setsid "${kmake[@]}" bzImage modules >"$bdir/build.log" 2>&1 &
pid=$!
trap 'kill -TERM -- -$pid 2>/dev/null || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null || break
    n=$(grep -c '^  [A-Z]' "$bdir/build.log" || true)
    log "$flavour: $n steps${est:+ of about $est} in $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s"
done
if ! wait "$pid"; then
    trap - EXIT
    grep -E 'error|Error' "$bdir/build.log" | head -20 >&2 || true
    tail -20 "$bdir/build.log" >&2
    die "$flavour build failed (log: $bdir/build.log)"
fi
trap - EXIT INT TERM
steps=$(grep -c '^  [A-Z]' "$bdir/build.log" || true)
# Remember the size of a full build for the next estimate.
if ((fresh)); then echo "$steps" >"$bdir/steps"; fi
rel=$("${kmake[@]}" -s kernelrelease)
log "$flavour kernel $rel built: $steps steps in $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s"

# ---- install into root/ (atomically), then publish into OUT ------------------------------
rm -rf "$root.tmp"
mkdir -p "$root.tmp/boot"
"${kmake[@]}" -s INSTALL_MOD_PATH="$root.tmp" modules_install >>"$bdir/build.log" 2>&1 ||
    die "modules_install failed (log: $bdir/build.log)"
rm -f "$root.tmp/lib/modules/$rel/build" "$root.tmp/lib/modules/$rel/source"
cp "$obj/arch/x86/boot/bzImage" "$root.tmp/boot/vmlinuz-$rel"
cp "$obj/vmlinux" "$root.tmp/boot/vmlinux-$rel"
cp "$obj/.config" "$root.tmp/boot/config-$rel"
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$rel" >"$bdir/release"
echo "$key" >"$bdir/key"
publish "$OUT"
# Trees of other versions or patch sets are stale (a new kernel version or
# patch rebuilds everything in a new tree anyway), and each is gigabytes.
for stale in "$QGPU_CACHE"/linux-src/* "$QGPU_CACHE"/kernel-build/*; do
    [[ -d $stale && ${stale##*/} != "$src_id" ]] || continue
    log "removing $stale (another kernel version or patch set)"
    rm -rf "$stale"
done
log "$flavour kernel $rel ready in $OUT"
