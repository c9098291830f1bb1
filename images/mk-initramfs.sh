#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build the qgpu guest initramfs, reproducibly: same inputs -> same bytes.
#
#   $OUT/initramfs.cpio.gz   the image (newc cpio; gzip -n, or see COMPRESS)
#   $OUT/ssh/id_ed25519      test SSH key pair (made once in $QGPU_CACHE/ssh, for
#                            every image; its public half is root's authorized
#                            key in the guest). Test use only.
#   $OUT/initramfs.manifest  what went in (one line per file, with sha256)
#
# Contents: busybox (static), dropbear + its shared libraries, the kernel
# modules virtio-net needs (and any qgpu.ko depends on), decompressed, and
# $GUEST/qgpu.ko + $GUEST/bin/* (from guest-driver) when present.
#
# Usage: mk-initramfs.sh    (env: OUT, GUEST, QGPU_CACHE, SOURCE_DATE_EPOCH,
#                            COMPRESS=gzip|zstd|none, STRIP_DEBUG=1|0)
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
OUT=${OUT:-$top/build/images/stock}
GUEST=${GUEST:-$top/build/guest/stock}
QGPU_CACHE=${QGPU_CACHE:-$HOME/.cache/qgpu}
COMPRESS=${COMPRESS:-gzip}
# Fixed timestamp for every file (reproducibility). A constant rather than
# the last commit time, so unrelated commits do not change the image.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export SOURCE_DATE_EPOCH
log() { echo "mk-initramfs: $*" >&2; }

ABI=$(cat "$OUT/kernel-abi" 2>/dev/null || true)
[[ -n $ABI ]] || { log "$OUT/kernel-abi missing: run fetch-kernel.sh or build-kernel.sh (make kernel) first"; exit 1; }
# The kernel's installed tree (fetch-kernel.sh / build-kernel.sh link it).
KROOT=$(readlink -f "$OUT/kernel-root" 2>/dev/null || true)
MODROOT=$KROOT/lib/modules/$ABI
KCONFIG=$KROOT/boot/config-$ABI
[[ -n $KROOT && -e $MODROOT/modules.dep && -e $KCONFIG ]] ||
    { log "$OUT/kernel-root/lib/modules/$ABI/modules.dep missing: run make kernel first"; exit 1; }

# Host tools (busybox-static, cpio, dropbear-bin, openssh-client, kmod,
# xz-utils, binutils): the project's one installer, idempotent and quick.
"$top/scripts/install-host-deps.sh" >&2

# ---- test SSH key (generated once, never committed) ----------------------------
# One key for every image and checkout, kept in the cache: a new clone then
# builds the same image bytes, and the guest templates keyed by them stay valid.
# Under a lock (images of other kernels and checkouts share it); a pair that
# does not match, or half of one, is made again.
keys=$QGPU_CACHE/ssh
mkdir -p "$keys" "$OUT/ssh"
chmod 700 "$keys"
exec 8>"$keys/.lock"
flock 8
key_pair_ok() {
    [[ -s $keys/id_ed25519 && -s $keys/id_ed25519.pub ]] &&
        [[ $(ssh-keygen -y -f "$keys/id_ed25519" 2>/dev/null | cut -d' ' -f1,2) == \
           "$(cut -d' ' -f1,2 "$keys/id_ed25519.pub")" ]]
}
if ! key_pair_ok; then
    new=$(mktemp -d "$keys/.new.XXXXXX")
    ssh-keygen -q -t ed25519 -N '' -C qgpu-guest-test-key -f "$new/id_ed25519"
    # Public half first: a run cut short leaves no private key without it.
    mv "$new/id_ed25519.pub" "$keys/id_ed25519.pub"
    mv "$new/id_ed25519" "$keys/id_ed25519"
    rmdir "$new"
    log "generated test SSH key $keys/id_ed25519"
fi
for f in id_ed25519 id_ed25519.pub; do
    cmp -s "$keys/$f" "$OUT/ssh/$f" || install -m 600 "$keys/$f" "$OUT/ssh/$f"
done
chmod 600 "$OUT/ssh/id_ed25519"
exec 8>&-

# ---- up to date? (digest of every input) ---------------------------------------
inputs_digest() {
    {
        echo "abi=$ABI compress=$COMPRESS epoch=$SOURCE_DATE_EPOCH strip=${STRIP_DEBUG:-1}"
        sha256sum "$0" "$here/rootfs/init" "$here/rootfs/qgpu-boot-check" \
            "$OUT/ssh/id_ed25519.pub" /bin/busybox /usr/sbin/dropbear /usr/bin/dropbearkey \
            "$MODROOT/modules.dep"
        find "$here/rootfs" -type f -printf '%P %m\n' | LC_ALL=C sort
        (cd "$here/rootfs/etc" && find . -type f | LC_ALL=C sort | xargs sha256sum)
        if [[ -d $GUEST ]]; then
            (cd "$GUEST" && find . -path ./.kbuild -prune -o -type f ! -name '*.o' ! -name '*.cmd' \
                -print | LC_ALL=C sort | xargs -r sha256sum)
        fi
    } | sha256sum | cut -d' ' -f1
}
digest=$(inputs_digest)
case $COMPRESS in gzip) img=$OUT/initramfs.cpio.gz ;; zstd) img=$OUT/initramfs.cpio.zst ;; *) img=$OUT/initramfs.cpio ;; esac
if [[ -e $img && -e $OUT/initramfs.img && $(cat "$OUT/initramfs.inputs" 2>/dev/null) == "$digest" ]]; then
    log "up to date: $img"
    exit 0
fi

# ---- staging tree ------------------------------------------------------------
ROOT=$OUT/initramfs.root
rm -rf "$ROOT"
mkdir -p "$ROOT"
cd "$ROOT"
mkdir -p bin sbin usr/bin usr/sbin usr/local/bin lib/x86_64-linux-gnu lib64 \
         etc/qgpu etc/dropbear proc sys dev run tmp root/.ssh var/log \
         "lib/modules/$ABI" opt/qgpu/bin mnt
ln -s ../run var/run

# busybox and its applet links
cp /bin/busybox bin/busybox
while read -r applet; do
    [[ -e $applet || -L $applet ]] && continue
    case $applet in
        bin/*)            ln -s busybox "$applet" ;;
        sbin/*|usr/bin/*) ln -s ../bin/busybox "$applet" ;;
        usr/sbin/*)       ln -s ../../bin/busybox "$applet" ;;
    esac
done < <(bin/busybox --list-full | sort)

# copy_elf FILE DEST: copy a binary and the shared libraries it needs.
copy_elf() {
    local src=$1 dst=$2 lib real
    install -D -m 0755 "$src" "$ROOT/$dst"
    while read -r lib; do
        [[ -n $lib ]] || continue
        real=$(readlink -f "$lib")
        if [[ $lib == */ld-linux-x86-64.so.2 ]]; then
            install -D -m 0755 "$real" "$ROOT/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
            ln -sf ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ROOT/lib64/ld-linux-x86-64.so.2"
        else
            install -D -m 0755 "$real" "$ROOT/lib/x86_64-linux-gnu/$(basename "$lib")"
        fi
    done < <(ldd "$src" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]*ld-linux/ {print $1}' | sort -u)
}
copy_elf /usr/sbin/dropbear usr/sbin/dropbear
copy_elf /usr/bin/dropbearkey usr/bin/dropbearkey

# static files and /init
cp -r "$here/rootfs/etc/." etc/
find etc -type f -exec chmod 0644 {} +
install -m 0755 "$here/rootfs/init" init
install -m 0755 "$here/rootfs/qgpu-boot-check" usr/sbin/qgpu-boot-check
install -m 0600 "$OUT/ssh/id_ed25519.pub" root/.ssh/authorized_keys
chmod 0700 root root/.ssh
chmod 0640 etc/shadow
chmod 1777 tmp
echo "$ABI" >etc/qgpu/kernel-abi

# ---- kernel modules ------------------------------------------------------------
# Resolve dependencies with modules.dep; emit a load order (dependencies first).
declare -A seen=()
order=()
dep_of() { awk -v m="$1" -F': *' '$1 == m {print $2; exit}' "$MODROOT/modules.dep"; }
path_of() { # module name (- or _) -> path relative to MODROOT
    local n=${1//-/_}
    awk -F: -v n="$n" '{p=$1; b=p; sub(/.*\//, "", b); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", b);
                         gsub(/-/, "_", b); if (b == n) {print p; exit}}' "$MODROOT/modules.dep"
}
visit() {
    local m=$1 d
    [[ -n ${seen[$m]:-} ]] && return 0
    seen[$m]=1
    for d in $(dep_of "$m"); do visit "$d"; done
    order+=("$m")
}
# What the kernel config lacks as built-in: virtio-iommu first (the
# virtio-iommu DMA mode: every PCI device then sits behind it, so it must be
# up before any driver maps DMA; without the device it just stays idle),
# then virtio-net-pci.
want_mods=()
grep -q '^CONFIG_VIRTIO_IOMMU=y' "$KCONFIG" || want_mods+=(virtio_iommu)
grep -q '^CONFIG_VIRTIO_NET=y' "$KCONFIG" || want_mods+=(virtio_net)
grep -q '^CONFIG_VIRTIO_PCI=y' "$KCONFIG" || want_mods+=(virtio_pci)

driver_note="no driver packed"
if [[ -e $GUEST/qgpu.ko ]]; then
    if ! vm=$(modinfo -F vermagic "$GUEST/qgpu.ko" 2>/dev/null | awk '{print $1}') || [[ -z $vm ]]; then
        log "$GUEST/qgpu.ko is not a valid kernel module (modinfo fails)"
        exit 1
    fi
    [[ $vm == "$ABI" ]] || log "WARNING: $GUEST/qgpu.ko vermagic '$vm' != guest kernel $ABI"
    for d in $(modinfo -F depends "$GUEST/qgpu.ko" 2>/dev/null | tr ',' ' '); do
        want_mods+=("$d")
    done
    driver_note="driver packed: qgpu.ko sha256=$(sha256sum <"$GUEST/qgpu.ko" | cut -c1-16)"
fi
for m in "${want_mods[@]}"; do
    p=$(path_of "$m")
    [[ -n $p ]] || { log "module $m not found in $MODROOT"; exit 1; }
    visit "$p"
done
: >etc/qgpu/modules.load
for p in "${order[@]}"; do
    base=$(basename "$p"); base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
    case $p in
        *.xz)  xz -dc "$MODROOT/$p" ;;
        *.zst) zstd -dcq "$MODROOT/$p" ;;
        *.gz)  gzip -dc "$MODROOT/$p" ;;
        *)     cat "$MODROOT/$p" ;;
    esac >"lib/modules/$ABI/$base"
    echo "$base" >>etc/qgpu/modules.load
done
log "kernel modules: $(tr '\n' ' ' <etc/qgpu/modules.load)"

# ---- the driver and its tools from guest-driver ------------------------------------
# Debug info is dropped from the copies (STRIP_DEBUG=0 keeps it): qgpu.ko
# shrinks ~10x and loads faster; kallsyms (oops symbols) are unaffected.
STRIP_DEBUG=${STRIP_DEBUG:-1}
if [[ -e $GUEST/qgpu.ko ]]; then
    install -m 0644 "$GUEST/qgpu.ko" opt/qgpu/qgpu.ko
    if [[ $STRIP_DEBUG == 1 ]]; then strip --strip-debug opt/qgpu/qgpu.ko; fi
fi
if [[ -d $GUEST/bin ]]; then
    while read -r f; do
        if ldd "$f" >/dev/null 2>&1; then
            log "note: $f is dynamically linked; copying its libraries too"
            copy_elf "$f" "opt/qgpu/bin/$(basename "$f")"
        else
            install -m 0755 "$f" "opt/qgpu/bin/$(basename "$f")"
        fi
        if [[ $STRIP_DEBUG == 1 ]] && [[ $(head -c 4 "$f" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then
            strip --strip-debug "opt/qgpu/bin/$(basename "$f")"
        fi
    done < <(find "$GUEST/bin" -maxdepth 1 \( -type f -o -type l \) | sort)
fi
# Anything else guest-driver put in $GUEST (not kbuild intermediates) goes to /opt/qgpu.
while read -r f; do
    rel=${f#"$GUEST"/}
    install -D -m "$(stat -c %a "$f")" "$f" "opt/qgpu/$rel"
done < <(cd "$GUEST" 2>/dev/null && find "$GUEST" -path "$GUEST/.kbuild" -prune -o -type f \
            ! -path "$GUEST/bin/*" ! -name qgpu.ko ! -name '*.o' ! -name '*.cmd' \
            ! -name '*.mod' ! -name '*.mod.c' ! -name 'modules.order' \
            ! -name 'Module.symvers' ! -path '*/.tmp*' ! -name '.*' -print | sort)
if [[ -e opt/qgpu/qgpu.ko ]]; then
    nbin=$(find opt/qgpu/bin -type f | wc -l)
    log "$driver_note; $nbin tool(s) in /opt/qgpu/bin"
else
    log "NOTE: no driver packed ($GUEST/qgpu.ko absent); the image boots without it"
fi

# /dev/console must exist in the initramfs for the kernel to give /init a console.
# The nodes are written into the archive (dev_nodes_archive, below), not made
# with mknod: containers may not create device nodes, even as root.

# newc_entry NAME MODE RDEVMAJOR RDEVMINOR INO: the header and name of one
# member of a newc cpio archive without data (as the kernel's gen_init_cpio
# writes it), padded to 4 bytes.
newc_entry() {
    local name=$1 mode=$2 rmaj=$3 rmin=$4 ino=$5 namesize=$(( ${#1} + 1 ))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
        "$ino" "$mode" 0 0 1 "$SOURCE_DATE_EPOCH" 0 0 0 "$rmaj" "$rmin" "$namesize" 0 "$name"
    head -c $(( (4 - (110 + namesize) % 4) % 4 )) /dev/zero
}

# A second archive, after the tree's: the kernel unpacks one after the other.
dev_nodes_archive() {
    newc_entry dev/console $(( 0020000 | 0600 )) 5 1 900001
    newc_entry dev/null    $(( 0020000 | 0666 )) 1 3 900002
    newc_entry 'TRAILER!!!' 0 0 0 0
}

# ---- archive -------------------------------------------------------------------------
find . -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
case $COMPRESS in
    gzip) ext=.gz;  comp=(gzip -n -9) ;;
    zstd) ext=.zst; comp=(zstd -q -19 -T1) ;;
    none) ext=;     comp=(cat) ;;
    *) log "COMPRESS must be gzip, zstd or none"; exit 1 ;;
esac
img=$OUT/initramfs.cpio$ext
rm -f "$OUT/initramfs.inputs" "$OUT/initramfs.cpio" "$OUT/initramfs.cpio.gz" "$OUT/initramfs.cpio.zst"
{ find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
      cpio --quiet --reproducible -o -H newc -R 0:0
  dev_nodes_archive; } | "${comp[@]}" >"$img.tmp"
mv "$img.tmp" "$img"
ln -sfn "$(basename "$img")" "$OUT/initramfs.img"
find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | while read -r f; do
    if [[ -f $f && ! -L $f ]]; then
        echo "$f $(sha256sum <"$f" | cut -c1-16)"
    else
        echo "$f"
    fi
done >"$OUT/initramfs.manifest"
echo "$digest" >"$OUT/initramfs.inputs"
log "$img: $(stat -c %s "$img") bytes, sha256=$(sha256sum <"$img" | cut -d' ' -f1)"
