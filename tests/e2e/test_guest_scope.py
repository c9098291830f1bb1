"""``--qgpu-guest-scope`` (issue 12): which tests share a guest.

A pytest run of its own on two modules. In the first, one test leaves a file
in the guest and a pattern in VRAM, and the next looks for both; the second
module's test looks too. With a fresh guest per test (the default on kernels
without kmemleak, ``test``) nothing is found; with one guest per module
(``module``) the first module's second test finds both (the check can fail)
and the other module's test, on a guest of its own, finds neither; with one
guest for the session (``session``, the default on kernels with kmemleak) the
second test finds both too, and the third runs on a new guest because the
failed test's is not handed on. Every one of those guests is restored from a
template, or is an earlier test's guest reverted to it in place (with a guest
per test, ``--qgpu-revert``; test_revert.py checks those). And a guest whose
driver the fixture cannot reload is not shared any further.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qgpu.kernels import GuestKernel

from .inner_pytest import run_pytest

INNER = '''
import pytest
from qgpu.config import DmaMode

DIRECT = pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)
MARK = "/tmp/qgpu-scope-mark"


def look(guest, inspector):
    seen = []
    if guest.run(f"test -e {MARK}").status == 0:
        seen.append("guest RAM")
    if inspector.vram_backend(0, 4096) != bytes(4096):
        seen.append("VRAM")
    assert not seen, "left by an earlier test: " + " and ".join(seen)


@DIRECT
def test_1_leaves_a_mark(qgpu_guest):
    qgpu_guest.run(f"touch {MARK} && /opt/qgpu/bin/qgpu-tool fill 0 4096 0x5a5a5a5a", check=True)


@DIRECT
def test_2_finds_no_mark(qgpu_guest, qgpu_inspector):
    look(qgpu_guest, qgpu_inspector)
'''
OTHER_MODULE = '''
from test_inner import DIRECT, look


@DIRECT
def test_3_finds_no_mark(qgpu_guest, qgpu_inspector):
    look(qgpu_guest, qgpu_inspector)
'''


def _inner_run(tmp_path: Path, config: pytest.Config, kernel: GuestKernel,
               scope: str | None, *options: str) -> str:
    """Run the two modules with ``--qgpu-guest-scope=scope`` (None: the default)."""
    folder = tmp_path / "-".join([scope or "default", *(o.strip("-") for o in options)])
    folder.mkdir()
    (folder / "test_inner.py").write_text(INNER)
    (folder / "test_inner_other.py").write_text(OTHER_MODULE)
    option = [f"--qgpu-guest-scope={scope}"] if scope else []
    return run_pytest(folder, config, kernel, *option, *options,
                      str(folder / "test_inner.py"),
                      str(folder / "test_inner_other.py")).output


def _run_file(tmp_path: Path, config: pytest.Config, kernel: GuestKernel, name: str,
              source: str, *options: str) -> str:
    """Run the tests of ``source``, written to ``tmp_path/name``, in an inner pytest."""
    (tmp_path / name).write_text(source)
    return run_pytest(tmp_path, config, kernel, *options, str(tmp_path / name)).output


def test_a_fresh_guest_per_test_sees_nothing_of_the_test_before(
        qgpu_kernel: GuestKernel, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    if qgpu_kernel.detectors.heavy:
        # The same plugin code on every kernel; here each retiring guest would add
        # kmemleak's 12 s settled scan to the longest CI lane.
        pytest.skip("the scopes are checked on the kernels without kmemleak")
    # The default on this kernel: a guest per test.
    # Each test after the first gets the guest restored (and checked) while the
    # test before it ran; without spares, each is restored when asked for.
    # Whether test_1's guest has retired, and can be reverted for test_3, when
    # test_3's guest is made is a matter of timing (test_revert.py sees to it).
    maybe_reverted = r"(, 1 of them an earlier test's QEMU reverted in place)?;"
    isolated = _inner_run(tmp_path, pytestconfig, qgpu_kernel, None)
    assert "guest scope: test (auto: a fresh guest per test)" in isolated, isolated
    assert "3 passed" in isolated, isolated
    assert re.search(r"3 guest\(s\) restored from templates \(2 ahead, while the test before "
                     r"ran\)" + maybe_reverted, isolated), isolated
    on_demand = _inner_run(tmp_path, pytestconfig, qgpu_kernel, None, "--qgpu-spare-guest=off")
    assert "3 passed" in on_demand, on_demand
    assert re.search(r"3 guest\(s\) restored from templates" + maybe_reverted, on_demand), \
        on_demand
    shared = _inner_run(tmp_path, pytestconfig, qgpu_kernel, "module")
    assert "FAILED test_inner.py::test_2_finds_no_mark[direct]" in shared and \
        "left by an earlier test: guest RAM and VRAM" in shared and \
        "2 passed" in shared, shared
    assert "2 guest(s) restored from templates" in shared, shared
    # One guest for the session's tests of a mode, restored too. A failed test's
    # guest is not handed on: test_3 gets a second one.
    session = _inner_run(tmp_path, pytestconfig, qgpu_kernel, "session")
    assert "FAILED test_inner.py::test_2_finds_no_mark[direct]" in session and \
        "left by an earlier test: guest RAM and VRAM" in session and \
        "2 passed" in session, session
    assert "2 guest(s) restored from templates" in session, session


BROKEN_RELOAD = '''
import pytest
from qgpu.config import DmaMode

DIRECT = pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)


@DIRECT
def test_1_takes_the_driver_away(qgpu_guest):
    qgpu_guest.run("mv /opt/qgpu/qgpu.ko /opt/qgpu/qgpu.ko.away", check=True)


@DIRECT
def test_2_cannot_have_the_driver(qgpu_guest):
    pass


@DIRECT
def test_3_has_the_driver_again(qgpu_guest):
    qgpu_guest.run("test -c /dev/qgpu0 && test -e /opt/qgpu/qgpu.ko", check=True)
'''


def test_a_guest_whose_driver_does_not_load_is_not_handed_on(
        qgpu_kernel: GuestKernel, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """On a shared guest, the qgpu_guest fixture reloads the driver before each test;
    when that fails, the next test gets a new guest, not the same broken one."""
    if qgpu_kernel.detectors.heavy:
        pytest.skip("the fixture's code is the same on every kernel; a debug boot costs "
                    "a minute")
    out = _run_file(tmp_path, pytestconfig, qgpu_kernel, "test_reload.py", BROKEN_RELOAD,
                    "--qgpu-guest-scope=session")
    assert "ERROR at setup of test_2_cannot_have_the_driver" in out, out
    assert "PASSED test_reload.py::test_3_has_the_driver_again" in out, out


TROUBLE_SINCE_START = '''
import pytest
from qgpu.config import DmaMode

DIRECT = pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)


@DIRECT
def test_1_meets_a_report_from_before_it(request, _qgpu_pool, qgpu_dma_mode):
    # As if the kernel had reported it while the guest booted, or right after
    # its restore: before the fixture's first look at the guest.
    machine = _qgpu_pool.get(qgpu_dma_mode, request.node.nodeid)
    machine.run("touch /tmp/qgpu-start-mark; echo 'BUG: qgpu start' canary > /dev/kmsg",
                check=True)
    request.getfixturevalue("qgpu_guest")


@DIRECT
def test_2_has_a_guest_without_it(qgpu_guest):
    assert qgpu_guest.run("test -e /tmp/qgpu-start-mark").status != 0, "the same guest"
'''


def test_a_report_from_before_the_first_test_fails_it_and_the_guest_goes(
        qgpu_kernel: GuestKernel, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """What the kernel logged between a guest's start and its first test's check fails
    that test (which did not cause it: the message says so), and the guest is not
    handed on, even where guests are shared."""
    if qgpu_kernel.detectors.heavy:
        pytest.skip("the fixture's code is the same on every kernel; a debug boot costs "
                    "a minute")
    out = _run_file(tmp_path, pytestconfig, qgpu_kernel, "test_start.py", TROUBLE_SINCE_START,
                    "--qgpu-guest-scope=session")
    assert "ERROR at setup of test_1_meets_a_report_from_before_it" not in out, out
    assert "FAILED test_start.py::test_1_meets_a_report_from_before_it" in out, out
    assert "reported trouble since the guest started" in out, out
    assert "BUG: qgpu start canary" in out, out      # (the source says it in two words)
    assert "PASSED test_start.py::test_2_has_a_guest_without_it" in out, out
    assert "2 guest(s) restored from templates" in out, out


LATE_REPORT = '''
import pytest
from qgpu.config import DmaMode

DIRECT = pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)


@DIRECT
def test_1_leaves_a_late_report(qgpu_guest):
    # Logged 0.3 s after the check that follows the test unloaded the driver (and
    # read the log, just after), as a timer firing after the unload would.
    qgpu_guest.run("(while [ -e /sys/module/qgpu ]; do sleep 0.05; done; sleep 0.3; "
                   "echo 'BUG: qgpu late canary' > /dev/kmsg) >/dev/null 2>&1 &", check=True)


@DIRECT
def test_2_is_quick(qgpu_guest):
    pass
'''


def test_a_report_after_the_last_check_fails_the_run_and_names_its_test(
        qgpu_kernel: GuestKernel, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """A guest of its own is discarded after its test's check, but only after its
    kernel log is read once more, a second later, in the background: a report
    that came after the check still fails the run, and names the test."""
    if qgpu_kernel.detectors.heavy:
        pytest.skip("on kernels with kmemleak the default scope is session")
    (tmp_path / "test_late.py").write_text(LATE_REPORT)
    res = run_pytest(tmp_path, pytestconfig, qgpu_kernel, str(tmp_path / "test_late.py"))
    assert res.exit_code != 0, res.output
    assert "BUG: qgpu late canary" in res.output, res.output
    assert "after its last test (test_late.py::test_1_leaves_a_late_report[direct])" \
        in res.output, res.output
    assert "PASSED test_late.py::test_1_leaves_a_late_report" in res.output, res.output
    bundles = list((tmp_path / "artifacts").glob("*/*test_1_leaves_a_late_report*/health.txt"))
    assert bundles and "BUG: qgpu late canary" in bundles[0].read_text(), res.output
