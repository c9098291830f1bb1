#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Run the example project (examples/hello-qgpu) as its users would: the qgpu
# package built into a wheel, installed into a fresh virtual environment
# outside the checkout, the project copied out too, its tests run with the
# plugin's options against this checkout's QEMU and guest images.
#
#   scripts/test-example.sh PYTHON QEMU IMAGES ARTIFACTS REPORTS KERNEL... [-- PYTEST_ARGS]
#
# PYTHON builds the wheel (a venv with setuptools); each KERNEL names a folder
# in IMAGES. Bundles of failed tests go to ARTIFACTS/KERNEL, JUnit XML to
# REPORTS/example-KERNEL.xml. The temporary folder is removed at the end.
set -euo pipefail

[ $# -ge 6 ] || { echo "usage: $0 PYTHON QEMU IMAGES ARTIFACTS REPORTS KERNEL... [-- PYTEST_ARGS]" >&2; exit 2; }
python=$1 qemu=$2 images=$3 artifacts=$4 reports=$5
shift 5
kernels=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do kernels+=("$1"); shift; done
[ $# -gt 0 ] && shift
top=$(cd "$(dirname "$0")/.." && pwd)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qgpu-example.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "test-example: building the wheel"
# setuptools builds in place and packs whatever orchestrator/build/lib holds,
# modules since moved or removed included: start from nothing.
rm -rf "$top/orchestrator/build"
"$python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$tmp/wheel" "$top/orchestrator"
"$python" - "$top/orchestrator/src" "$tmp"/wheel/qgpu-*.whl <<'PY'
import pathlib, sys, zipfile
src, wheel = pathlib.Path(sys.argv[1]), sys.argv[2]
want = {str(p.relative_to(src)) for p in src.glob("qgpu/**/*.py")}
got = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
if want != got:
    sys.exit(f"test-example: the wheel's modules differ from the source's: "
             f"missing {sorted(want - got)}, extra {sorted(got - want)}")
PY
echo "test-example: a fresh venv in $tmp with only $(cd "$tmp/wheel" && ls qgpu-*.whl)"
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check "$tmp/wheel"/qgpu-*.whl
cp -r "$top/examples/hello-qgpu" "$tmp/project"

status=0
for kernel in "${kernels[@]}"; do
    echo "test-example: examples/hello-qgpu on the $kernel kernel"
    (cd "$tmp/project" && "$tmp/venv/bin/python" -m pytest -p no:cacheprovider -ra \
        --qgpu-qemu="$qemu" --qgpu-kernel="$images/$kernel" \
        --qgpu-artifacts="$artifacts/$kernel" --junitxml="$reports/example-$kernel.xml" \
        "$@") || status=1
done
exit $status
