"""``--qgpu-guest-scope`` (issue 12): which tests share a guest.

A pytest run of its own on two modules. In the first, one test leaves a file
in the guest and a pattern in VRAM, and the next looks for both; the second
module's test looks too. With a fresh guest per test (``test``) nothing is
found; with one guest per module (``module``) the first module's second test
finds both (the check can fail) and the other module's test, on a guest of its
own, finds neither. And a guest whose driver the fixture cannot reload is not
shared any further.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qgpu.kernels import GuestKernel

INNER = '''
import pytest
from qgpu.config import DmaMode

DIRECT = pytest.mark.parametrize("dma_mode", [DmaMode.DIRECT], indirect=True)
MARK = "/tmp/qgpu-scope-mark"


def look(guest, inspector):
    seen = []
    if guest.run(f"test -e {MARK}").status == 0:
        seen.append("guest RAM")
    if inspector.vram_backend(0, 4096) != bytes(4096):
        seen.append("VRAM")
    assert not seen, "left by an earlier test: " + " and ".join(seen)


@DIRECT
def test_1_leaves_a_mark(guest):
    guest.run(f"touch {MARK} && /opt/qgpu/bin/qgpu-tool fill 0 4096 0x5a5a5a5a", check=True)


@DIRECT
def test_2_finds_no_mark(guest, qgpu_inspector):
    look(guest, qgpu_inspector)
'''
OTHER_MODULE = '''
from test_inner import DIRECT, look


@DIRECT
def test_3_finds_no_mark(guest, qgpu_inspector):
    look(guest, qgpu_inspector)
'''


def _inner_run(tmp_path: Path, kernel: GuestKernel, scope: str, accel: str) -> str:
    folder = tmp_path / scope
    folder.mkdir()
    (folder / "test_inner.py").write_text(INNER)
    (folder / "test_inner_other.py").write_text(OTHER_MODULE)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
         "--qgpu-kernel", str(kernel.image_dir), "--qgpu-accel", accel,
         "--qgpu-guest-scope", scope, "--qgpu-artifacts", str(folder / "artifacts"),
         "--rootdir", str(folder), str(folder / "test_inner.py"),
         str(folder / "test_inner_other.py")],
        cwd=folder, capture_output=True, text=True, timeout=250, check=False)
    return res.stdout + res.stderr


def test_a_fresh_guest_per_test_sees_nothing_of_the_test_before(
        guest_kernel: GuestKernel, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    if guest_kernel.detectors.heavy:
        # The same plugin code on every kernel; here each retiring guest would add
        # kmemleak's 12 s settled scan to the longest CI lane.
        pytest.skip("the scopes are checked on the kernels without kmemleak")
    accel = pytestconfig.getoption("--qgpu-accel")
    isolated = _inner_run(tmp_path, guest_kernel, "test", accel)
    assert "3 passed" in isolated, isolated
    shared = _inner_run(tmp_path, guest_kernel, "module", accel)
    assert "FAILED test_inner.py::test_2_finds_no_mark[direct]" in shared and \
        "left by an earlier test: guest RAM and VRAM" in shared and \
        "2 passed" in shared, shared


BROKEN_RELOAD = '''
import pytest
from qgpu.config import DmaMode

DIRECT = pytest.mark.parametrize("dma_mode", [DmaMode.DIRECT], indirect=True)


@DIRECT
def test_1_takes_the_driver_away(guest):
    guest.run("mv /opt/qgpu/qgpu.ko /opt/qgpu/qgpu.ko.away", check=True)


@DIRECT
def test_2_cannot_have_the_driver(guest):
    pass


@DIRECT
def test_3_has_the_driver_again(guest):
    guest.run("test -c /dev/qgpu0 && test -e /opt/qgpu/qgpu.ko", check=True)
'''


def test_a_guest_whose_driver_does_not_load_is_not_handed_on(
        guest_kernel: GuestKernel, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """The guest fixture reloads the driver before each test; when that fails, the
    next test gets a new guest, not the same broken one."""
    if guest_kernel.detectors.heavy:
        pytest.skip("the fixture's code is the same on every kernel; a debug boot costs "
                    "a minute")
    (tmp_path / "test_reload.py").write_text(BROKEN_RELOAD)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
         "--qgpu-kernel", str(guest_kernel.image_dir),
         "--qgpu-accel", pytestconfig.getoption("--qgpu-accel"),
         "--qgpu-artifacts", str(tmp_path / "artifacts"), "--rootdir", str(tmp_path),
         str(tmp_path / "test_reload.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=250, check=False)
    out = res.stdout + res.stderr
    assert "ERROR at setup of test_2_cannot_have_the_driver" in out, out
    assert "PASSED test_reload.py::test_3_has_the_driver_again" in out, out
