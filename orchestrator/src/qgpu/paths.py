"""Where the project's build outputs are.

The Makefile puts stable links under ``build/`` at the top of the checkout;
``QGPU_BUILD_DIR`` overrides that location and ``QGPU_QEMU`` the QEMU binary.
Guest images (``build/images/KERNEL``) are found by :mod:`qgpu.kernels`.
"""

from __future__ import annotations

import os
from pathlib import Path

from qgpu.errors import SetupError

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path:
    """Return the top of the qgpu checkout this package was installed from."""
    for parent in _PACKAGE_DIR.parents:
        if (parent / "qemu-device").is_dir() and (parent / "Makefile").is_file():
            return parent
    raise SetupError(
        f"cannot find the qgpu checkout above {_PACKAGE_DIR} (an installed wheel): set "
        "QGPU_BUILD_DIR to a checkout's build/ folder, or name QEMU and the guest image "
        "yourself (QGPU_QEMU / --qgpu-qemu, --qgpu-kernel DIR)"
    )


def build_dir() -> Path:
    """Return the build output folder (``build/`` unless ``QGPU_BUILD_DIR`` is set)."""
    env = os.environ.get("QGPU_BUILD_DIR")
    return Path(env) if env else repo_root() / "build"


def cache_dir() -> Path:
    """Return the cache of expensive artifacts (``$QGPU_CACHE``, as the Makefile has it)."""
    env = os.environ.get("QGPU_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qgpu"


def abi_header() -> Path:
    """Return the shared device ABI header.

    The package's ``qgpu_hw.h``: in a checkout, a link to the header the device
    and driver build with; in an installed wheel, its copy.
    """
    packaged = _PACKAGE_DIR / "qgpu_hw.h"
    if packaged.is_file():
        return packaged
    return repo_root() / "qemu-device" / "include" / "hw" / "misc" / "qgpu_hw.h"


def qemu_binary() -> Path:
    """Return the qemu-system-x86_64 that has the qgpu device built in."""
    env = os.environ.get("QGPU_QEMU")
    path = Path(env) if env else build_dir() / "bin" / "qemu-system-x86_64"
    if not path.exists():
        raise SetupError(f"{path} does not exist: run 'make qemu' to build QEMU with qgpu")
    return path
