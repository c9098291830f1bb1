#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Fetch upstream QEMU 10.0.2 through Debian's bookworm-backports source package
# (its +ds orig tarball is the upstream release minus bundled blobs), verify it
# against a pinned sha256 and unpack it into $1 (the pristine source folder).
#
# Usage: fetch-qemu-source.sh DOWNLOAD_DIR SOURCE_DIR
set -euo pipefail

QEMU_VERSION=10.0.2
TARBALL=qemu_${QEMU_VERSION}+ds.orig.tar.xz
SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1

dl_dir=$1
src_dir=$2
mkdir -p "$dl_dir"

verify() { echo "$SHA256  $dl_dir/$TARBALL" | sha256sum --check --status; }

if [[ -f $dl_dir/$TARBALL ]] && ! verify; then
    echo "fetch-qemu-source: $dl_dir/$TARBALL has the wrong sha256; removing it and fetching again" >&2
    rm -f "$dl_dir/$TARBALL"
fi
if [[ ! -f $dl_dir/$TARBALL ]]; then
    echo "fetch-qemu-source: downloading QEMU $QEMU_VERSION source (39 MB) via apt-get source -t bookworm-backports"
    # Ask apt where the orig tarball lives (mirror from the system's sources)
    # and fetch just that file with apt's own downloader, which checks the
    # hash. Fetching the whole source package fails on this version's .dsc.
    uri=$(apt-get source --print-uris -t bookworm-backports qemu 2>/dev/null |
          awk -v f="$TARBALL" '$2 == f {gsub("\047", "", $1); print $1}')
    if [[ -z $uri ]]; then
        echo "fetch-qemu-source: apt knows no source package with $TARBALL." >&2
        echo "  Is bookworm-backports deb-src enabled? Run 'make deps' (scripts/install-host-deps.sh)." >&2
        exit 1
    fi
    /usr/lib/apt/apt-helper download-file "$uri" "$dl_dir/$TARBALL.part" "SHA256:$SHA256"
    mv "$dl_dir/$TARBALL.part" "$dl_dir/$TARBALL"
fi
if ! verify; then
    echo "fetch-qemu-source: $TARBALL does not match the pinned sha256 $SHA256; refusing to build from it" >&2
    exit 1
fi

if [[ ! -f $src_dir/VERSION ]] || [[ $(cat "$src_dir/VERSION") != "$QEMU_VERSION" ]]; then
    echo "fetch-qemu-source: unpacking into $src_dir"
    rm -rf "$src_dir.tmp" && mkdir -p "$src_dir.tmp"
    tar -xJf "$dl_dir/$TARBALL" -C "$src_dir.tmp" --strip-components=1
    rm -rf "$src_dir" && mv "$src_dir.tmp" "$src_dir"
fi
