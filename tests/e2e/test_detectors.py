"""The debug kernel's detectors fail a test, and its artifact bundle holds the report.

A detector that never fires proves nothing. The canary module (``tests/canary``)
commits one bug on request -- a use-after-free, a leak, a lock-order inversion, a
DMA-API misuse -- inside tests that a pytest of its own runs (``inner_pytest``) with
this rig's plugin, on the kernel under test, each case on a fresh guest. Each such
test must fail with the detector's report, and its bundle must hold the report; the
same test without a bug must pass.
On a kernel without a detector, its case is skipped (the stock kernel has none of
these four).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest

from qgpu.kernels import GuestKernel

from .inner_pytest import run_pytest

INNER_TEST = '''
import pytest

from qgpu.config import DmaMode


@pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)
@pytest.mark.parametrize("bug", {bugs!r})
def test_canary(qgpu_guest, bug):
    qgpu_guest.run(f"insmod /opt/qgpu/test/qgpu_canary.ko bug={{bug}}", timeout=60, check=True)
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


@dataclass(frozen=True)
class CanaryRun:
    """The inner run of every canary case the kernel can detect, plus the control case."""

    exit_code: int
    output: str
    #: Each case's outcome (passed, failed, skipped) and what its test reported
    #: (failures and errors), from the JUnit XML; None if the case did not run.
    reports: dict[str, tuple[str, str] | None]
    artifacts: Path

    def bundles(self, bug: str, name: str) -> list[Path]:
        return sorted(self.artifacts.glob(f"*/*test_canary_{bug}-direct_/{name}"))


@pytest.fixture(scope="module")
def canaries(qgpu_kernel: GuestKernel, tmp_path_factory: pytest.TempPathFactory,
             pytestconfig: pytest.Config) -> CanaryRun:
    """Run every case in one inner session, each on a fresh guest restored from a template.

    One boot (the template) instead of one per case; the cases cannot see each
    other (``--qgpu-guest-scope=test``; kmemleak's settled scan still runs as
    each guest retires, after its test).
    """
    bugs = [bug for bug, (detector, _, _) in CASES.items()
            if getattr(qgpu_kernel.detectors, detector)] + ["none"]
    folder = tmp_path_factory.mktemp("canaries")
    (folder / "test_canary.py").write_text(INNER_TEST.format(bugs=bugs))
    junit = folder / "inner.xml"
    result = run_pytest(folder, pytestconfig, qgpu_kernel, "--qgpu-guest-scope=test",
                        f"--junitxml={junit}", str(folder / "test_canary.py"),
                        timeout=300 + 120 * len(bugs))
    reports: dict[str, tuple[str, str] | None] = dict.fromkeys(bugs)
    try:
        cases = list(ElementTree.parse(junit).getroot().iter("testcase"))
    except (OSError, ElementTree.ParseError):
        cases = []              # no report: each case says it did not run, with the output
    for case in cases:
        m = re.fullmatch(r"test_canary\[(.+)-direct\]", case.get("name", ""))
        if m and m.group(1) in reports:
            tags = {el.tag for el in case}
            outcome = "failed" if tags & {"failure", "error"} else \
                "skipped" if "skipped" in tags else "passed"
            reports[m.group(1)] = (outcome, "\n".join(
                f"{el.get('message', '')}\n{el.text or ''}"
                for el in case if el.tag in ("failure", "error")))
    return CanaryRun(result.exit_code, result.output, reports, folder / "artifacts")


@pytest.mark.parametrize("bug", list(CASES))
def test_detector_fails_the_test(canaries: CanaryRun, qgpu_kernel: GuestKernel,
                                 bug: str) -> None:
    detector, report, bundle_file = CASES[bug]
    if not getattr(qgpu_kernel.detectors, detector):
        pytest.skip(f"the {qgpu_kernel.name} kernel has no {detector}")
    case = canaries.reports[bug]
    assert case is not None, f"the {bug} case did not run:\n{canaries.output[-4000:]}"
    outcome, found = case
    assert outcome == "failed", \
        f"the canary's {bug} did not fail its test ({outcome}):\n{canaries.output[-4000:]}"
    assert re.search(report, found), found[-4000:]
    if bug == "leak":       # found when the guest retires, and blamed on the test
        assert f"during test_canary.py::test_canary[{bug}-direct]" in found, found[-4000:]
    bundles = canaries.bundles(bug, bundle_file)
    assert bundles, f"no {bundle_file} in the bundle: {sorted(canaries.artifacts.rglob('*'))}"
    assert re.search(report, bundles[0].read_text()), bundles[0].read_text()[-3000:]
    assert (bundles[0].parent / "health.txt").exists()


def test_no_bug_passes(canaries: CanaryRun) -> None:
    """The control case: the canary loaded without a bug leaves nothing to report."""
    assert canaries.reports["none"] == ("passed", ""), \
        f"the control case: {canaries.reports['none']!r}\n{canaries.output[-4000:]}"
    if len(canaries.reports) == 1:      # no detector: the inner run has only this case
        assert canaries.exit_code == pytest.ExitCode.OK, canaries.output[-4000:]
