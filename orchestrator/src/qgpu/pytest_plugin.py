"""pytest plugin of the qgpu rig (registered through the ``pytest11`` entry point).

Options (``pytest --help`` lists them under "qgpu test rig"):

``--qgpu-qemu PATH``       the qemu-system-x86_64 with qgpu (default: build/bin/)
``--qgpu-image DIR``       the guest image (default: build/images)
``--qgpu-accel MODE``      auto (KVM only if a bounded probe boots a guest), tcg, kvm
``--qgpu-artifacts DIR``   where failed tests leave their bundle (default build/artifacts)
``--qgpu-keep-artifacts``  write the bundle for passing tests too

Fixtures:

``dma_mode``      parametrizes a test over direct / swiotlb / iommu (session-scoped,
                  so tests are grouped by mode and one VM per mode is booted)
``guest``         a booted :class:`~qgpu.machine.GuestMachine` for ``dma_mode`` with a
                  freshly loaded driver and an empty dmesg; shared between tests of
                  the same mode, replaced when a test leaves it dead or crashed
``qgpu_inspector`` the host-side :class:`~qgpu.inspector.DeviceInspector` of qgpu0
``make_guest``    factory for a dedicated VM with a custom configuration
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from qgpu import paths
from qgpu.config import DmaMode, MachineConfig, QgpuSpec
from qgpu.errors import GuestCrashError, QgpuError, SetupError
from qgpu.inspector import DeviceInspector
from qgpu.machine import GuestMachine, image_paths

# Lines in dmesg that mean the kernel is unhappy: any of them fails the test.
DMESG_BAD = re.compile(r"BUG:|WARNING:|Oops|Call Trace|general protection|"
                       r"Kernel panic|DMAR: DRHD: handling fault|DMAR: \[DMA (Read|Write)")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the qgpu command-line options."""
    group = parser.getgroup("qgpu", "qgpu test rig")
    group.addoption("--qgpu-qemu", metavar="PATH", default=None,
                    help="qemu-system-x86_64 with the qgpu device (default: build/bin/)")
    group.addoption("--qgpu-image", metavar="DIR", default=None,
                    help="guest image folder with vmlinux/vmlinuz, initramfs.img, ssh/ "
                         "(default: build/images)")
    group.addoption("--qgpu-accel", default="auto", choices=("auto", "tcg", "kvm"),
                    help="accelerator; auto uses KVM only if a bounded probe boots a guest")
    group.addoption("--qgpu-artifacts", metavar="DIR", default=None,
                    help="artifact bundles of failed tests (default: build/artifacts)")
    group.addoption("--qgpu-keep-artifacts", action="store_true",
                    help="write artifact bundles for passing tests too")


def pytest_configure(config: pytest.Config) -> None:
    """Apply the options."""
    qemu = config.getoption("--qgpu-qemu", default=None)
    if qemu:
        os.environ["QGPU_QEMU"] = str(qemu)
    image = config.getoption("--qgpu-image", default=None)
    if image:
        os.environ["QGPU_IMAGE_DIR"] = str(image)
    config.addinivalue_line("markers", "slow: long-running test")


def pytest_report_header(config: pytest.Config) -> str:
    """Name the QEMU under test in pytest's header."""
    try:
        return f"qgpu: QEMU {paths.qemu_binary()}"
    except SetupError as exc:
        return f"qgpu: {exc}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item, for artifact decisions."""
    report = yield
    setattr(item, f"qgpu_rep_{report.when}", report)
    return report


def _failed(node: pytest.Item) -> bool:
    return any(getattr(getattr(node, f"qgpu_rep_{when}", None), "failed", False)
               for when in ("setup", "call"))


def _artifact_dir(config: pytest.Config, node: pytest.Item) -> Path:
    base = config.getoption("--qgpu-artifacts") or paths.build_dir() / "artifacts"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", node.nodeid)[-150:]
    return Path(base) / worker / name


def _base_config(config: pytest.Config, mode: DmaMode, **kw: Any) -> MachineConfig:
    kernel, initrd, _ = image_paths()
    return MachineConfig(kernel=kernel, initrd=initrd, accel=config.getoption("--qgpu-accel"),
                         dma_mode=mode, name=f"{mode}", **kw)


class _Pool:
    """The session's booted guests, one per DMA mode."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.machines: dict[DmaMode, GuestMachine] = {}

    def get(self, mode: DmaMode) -> GuestMachine:
        # Tests are grouped by mode: stop other modes' guests to spare the CPUs.
        for other in [m for m in self.machines if m is not mode]:
            self.drop(other)
        machine = self.machines.get(mode)
        if machine is None or not machine.is_alive():
            if machine is not None:
                self.drop(mode)
            _, _, key = image_paths()
            machine = GuestMachine(_base_config(self.config, mode), ssh_key=key).start()
            self.machines[mode] = machine
        return machine

    def drop(self, mode: DmaMode) -> None:
        machine = self.machines.pop(mode, None)
        if machine is not None:
            machine.stop()

    def close(self) -> None:
        for mode in list(self.machines):
            self.drop(mode)


@pytest.fixture(scope="session")
def _qgpu_pool(pytestconfig: pytest.Config) -> Iterator[_Pool]:
    pool = _Pool(pytestconfig)
    yield pool
    pool.close()


@pytest.fixture(scope="session", params=list(DmaMode), ids=[str(m) for m in DmaMode])
def dma_mode(request: pytest.FixtureRequest) -> DmaMode:
    """Return the DMA mode a guest test runs in (each mode, by default)."""
    mode: DmaMode = request.param if isinstance(request.param, DmaMode) \
        else DmaMode(request.param)
    return mode


def check_guest_health(machine: GuestMachine) -> None:
    """Fail if the guest's console or dmesg shows a crash, BUG, WARN or IOMMU fault."""
    if machine.console is not None:
        machine.console.drain(0.1)
    dmesg = machine.run("dmesg", timeout=30).output
    bad = [line for line in dmesg.splitlines() if DMESG_BAD.search(line)]
    if bad:
        raise GuestCrashError("the guest kernel log shows trouble:\n" + "\n".join(bad[:20]),
                              dmesg)


@pytest.fixture
def guest(request: pytest.FixtureRequest, _qgpu_pool: _Pool, dma_mode: DmaMode
          ) -> Iterator[GuestMachine]:
    """Yield a booted guest in ``dma_mode`` with the qgpu driver freshly loaded."""
    machine = _qgpu_pool.get(dma_mode)
    # A fresh driver instance and an empty kernel log for every test.
    machine.run("dmesg -c >/dev/null; if grep -q '^qgpu ' /proc/modules; then rmmod qgpu; fi"
                " && insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0", timeout=60, check=True)
    yield machine
    failed = _failed(request.node)
    if machine.is_alive():
        try:
            check_guest_health(machine)
        except (GuestCrashError, QgpuError) as exc:
            failed = True
            with contextlib.suppress(QgpuError, OSError):
                machine.collect_artifacts(_artifact_dir(request.config, request.node))
            _qgpu_pool.drop(dma_mode)
            pytest.fail(f"guest unhealthy after the test: {exc}")
    if failed or request.config.getoption("--qgpu-keep-artifacts"):
        with contextlib.suppress(QgpuError, OSError):
            machine.collect_artifacts(_artifact_dir(request.config, request.node))
    if failed or not machine.is_alive():
        _qgpu_pool.drop(dma_mode)     # never hand a suspect guest to the next test


@pytest.fixture
def qgpu_inspector(guest: GuestMachine) -> DeviceInspector:
    """Return the host-side inspector of the guest's qgpu0."""
    return guest.inspector("qgpu0")


@pytest.fixture
def make_guest(request: pytest.FixtureRequest) -> Iterator[Callable[..., GuestMachine]]:
    """Boot dedicated guests: ``make_guest(dma_mode=..., qgpus=(QgpuSpec(...),), ...)``."""
    machines: list[GuestMachine] = []

    def _make(mode: DmaMode = DmaMode.DIRECT, **kw: Any) -> GuestMachine:
        _, _, key = image_paths()
        machine = GuestMachine(_base_config(request.config, mode, **kw), ssh_key=key)
        machines.append(machine)
        return machine.start()

    yield _make
    for machine in machines:
        if _failed(request.node) or request.config.getoption("--qgpu-keep-artifacts"):
            with contextlib.suppress(QgpuError, OSError):
                machine.collect_artifacts(_artifact_dir(request.config, request.node)
                                          / machine.config.name)
        machine.stop()


__all__ = ["QgpuSpec", "check_guest_health"]
