"""The debug kernel's detectors fail a test, and its artifact bundle holds the report.

A detector that never fires proves nothing. The canary module (``tests/canary``)
commits one bug on request -- a use-after-free, a leak, a lock-order inversion, a
DMA-API misuse -- inside a test that a pytest of its own runs (``inner_pytest``) with this rig's
plugin, on the kernel under test. Each such test must fail with the detector's
report, and its bundle must hold the report; the same test without a bug must pass.
On a kernel without a detector, its case is skipped (the stock kernel has none of
these four).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qgpu.kernels import GuestKernel

from .inner_pytest import InnerRun, run_pytest

INNER_TEST = '''
import pytest

from qgpu.config import DmaMode


@pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)
def test_canary(qgpu_guest):
    qgpu_guest.run("insmod /opt/qgpu/test/qgpu_canary.ko bug={bug}", timeout=60, check=True)
'''

# bug -> (detector, what the report says, the bundle file that must hold it). KFENCE
# samples allocations: now and then it, not KASAN, owns the freed object and reports.
CASES = {
    "use-after-free": ("kasan", r"BUG: (KASAN: slab-use-after-free|KFENCE: use-after-free)",
                       "dmesg-report.txt"),
    "leak": ("kmemleak", r"unreferenced object", "kmemleak.txt"),
    "lock-inversion": ("lockdep", r"WARNING: possible circular locking dependency detected",
                       "dmesg-report.txt"),
    "dma-wrong-size": ("dma_api_debug", r"DMA-API: qgpu \S+: device driver frees DMA memory "
                       r"with different size", "dmesg-report.txt"),
}


def _run_inner(tmp_path: Path, kernel: GuestKernel, bug: str,
               config: pytest.Config) -> tuple[InnerRun, Path]:
    (tmp_path / "test_canary.py").write_text(INNER_TEST.format(bug=bug))
    result = run_pytest(tmp_path, config, kernel, str(tmp_path / "test_canary.py"),
                        timeout=600)
    return result, tmp_path / "artifacts"


@pytest.mark.parametrize("bug", list(CASES))
def test_detector_fails_the_test(tmp_path: Path, qgpu_kernel: GuestKernel,
                                 pytestconfig: pytest.Config, bug: str) -> None:
    detector, report, bundle_file = CASES[bug]
    if not getattr(qgpu_kernel.detectors, detector):
        pytest.skip(f"the {qgpu_kernel.name} kernel has no {detector}")
    result, artifacts = _run_inner(tmp_path, qgpu_kernel, bug, pytestconfig)
    output = result.output
    assert result.exit_code == pytest.ExitCode.TESTS_FAILED, \
        f"the canary's {bug} did not fail its test (exit {result.exit_code}):\n{output[-4000:]}"
    assert re.search(report, output), output[-4000:]
    if bug == "leak":       # found when the guest retires, and blamed on the test
        assert "during test_canary.py::test_canary[direct]" in output, output[-4000:]
    bundles = list(artifacts.glob(f"*/*test_canary*/{bundle_file}"))
    assert bundles, f"no {bundle_file} in the bundle: {sorted(artifacts.rglob('*'))}"
    assert re.search(report, bundles[0].read_text()), bundles[0].read_text()[-3000:]
    assert (bundles[0].parent / "health.txt").exists()


def test_no_bug_passes(tmp_path: Path, qgpu_kernel: GuestKernel,
                       pytestconfig: pytest.Config) -> None:
    """The control case: the canary loaded without a bug leaves nothing to report."""
    result, _ = _run_inner(tmp_path, qgpu_kernel, "none", pytestconfig)
    assert result.exit_code == pytest.ExitCode.OK, result.output[-4000:]
