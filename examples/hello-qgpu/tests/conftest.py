"""Build the example module for the kernel under test, into a folder for the guest's /."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qgpu import paths
from qgpu.kernels import GuestKernel

MODULE_SOURCE = Path(__file__).resolve().parent.parent / "module"


@pytest.fixture(scope="session")
def hello_overlay(qgpu_kernel: GuestKernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return an overlay holding ``/opt/hello/qgpu_hello.ko``, built for ``qgpu_kernel``."""
    kdir = qgpu_kernel.module_build_dir
    if kdir is None:
        pytest.fail(f"the {qgpu_kernel.name} image names no kernel build tree "
                    f"({qgpu_kernel.image_dir}/kernel-kdir): cannot build the module")
    build = tmp_path_factory.mktemp("hello-build")
    for name in ("Kbuild", "qgpu_hello.c"):
        shutil.copy(MODULE_SOURCE / name, build / name)
    res = subprocess.run(["make", "-C", str(kdir), f"M={build}",
                          f"QGPU_ABI_DIR={paths.abi_header().parent}", "modules"],
                         capture_output=True, text=True, timeout=300, check=False)
    if res.returncode != 0:
        pytest.fail(f"building qgpu_hello.ko against {kdir} failed:\n{res.stdout}{res.stderr}")
    overlay = tmp_path_factory.mktemp("hello-overlay")
    (overlay / "opt" / "hello").mkdir(parents=True)
    shutil.copy(build / "qgpu_hello.ko", overlay / "opt" / "hello" / "qgpu_hello.ko")
    return overlay
