#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build docker/Dockerfile with podman and run a command in it (default: make
# test), as an unprivileged container: no --privileged, no devices, default
# capabilities. What a Debian 12 host needs for it, and only that, is installed
# here (podman, runc, debootstrap; root or sudo).
#
#   docker/run-in-container.sh [COMMAND...]
#
# - The base image debian:bookworm is made locally (debootstrap, podman import)
#   when podman has none: no container registry is assumed reachable.
# - The host's extra CA certificates (/usr/local/share/ca-certificates, e.g. a
#   TLS-inspecting proxy's) are mounted while the image is built, so apt's and
#   pip's TLS inside trust what the host trusts.
# - $QGPU_CACHE is mounted at the container's cache, while the image is built
#   and while it runs: downloads and builds (QEMU, kernels) are shared with the
#   host, keyed by their inputs as always; the container's own build/ stays in it.
# - /dev/shm is 64 MiB in a container by default; guests' VRAM and RAM files
#   live there, so the run gets QGPU_SHM_SIZE (default 4g).
# - QGPU_CONTAINER_OUT=DIR: make test's logs, JUnit reports and artifact bundles
#   land in DIR on the host (else they stay in the container, removed with it).
# - podman runs with runc and without default ulimits (CONTAINERS_CONF points at
#   docker/containers.conf): crun refuses hosts with hybrid cgroups.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cache=${QGPU_CACHE:-$HOME/.cache/qgpu}
image=${QGPU_IMAGE_TAG:-qgpu}
shm=${QGPU_SHM_SIZE:-4g}
export CONTAINERS_CONF=$top/docker/containers.conf
say() { echo "run-in-container: $*"; }

"$top/scripts/install-host-deps.sh" --only podman runc debootstrap
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)     # debootstrap makes a root file system

if ! podman image exists debian:bookworm; then
    say "no debian:bookworm image: making one with debootstrap (a few minutes, once)"
    root=$(mktemp -d "${TMPDIR:-/tmp}/qgpu-bookworm.XXXXXX")
    trap '"${sudo[@]}" rm -rf "$root"' EXIT
    "${sudo[@]}" debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian \
        >/dev/null
    "${sudo[@]}" rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    "${sudo[@]}" tar -C "$root" -c . | podman import - debian:bookworm >/dev/null
    "${sudo[@]}" rm -rf "$root"
    trap - EXIT
fi

mkdir -p "$cache"
say "building the image $image from docker/Dockerfile"
build_mounts=(--volume "$cache:/root/.cache/qgpu")
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    build_mounts+=(--volume /usr/local/share/ca-certificates:/usr/local/share/ca-certificates:ro)
fi
podman build --runtime runc "${build_mounts[@]}" -t "$image" -f "$top/docker/Dockerfile" "$top"

run_mounts=(--volume "$cache:/root/.cache/qgpu")
if [[ -n ${QGPU_CONTAINER_OUT:-} ]]; then
    # make test's lane logs, JUnit reports and artifact bundles, on the host
    mkdir -p "$QGPU_CONTAINER_OUT"/{logs,reports,artifacts}
    for d in logs reports artifacts; do
        run_mounts+=(--volume "$QGPU_CONTAINER_OUT/$d:/qgpu/build/$d")
    done
fi
say "running ${*:-make test} in it (unprivileged; cache $cache; /dev/shm $shm)"
exec podman run --rm --runtime runc --shm-size="$shm" "${run_mounts[@]}" "$image" "$@"
