"""Fixtures for device-level tests: qgpu on q35 under qtest, no guest kernel."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from qgpu.crash import SANITIZER_REPORTS
from qgpu.device import QgpuDevice, start_qgpu

StartQgpu = Callable[..., QgpuDevice]


@pytest.fixture
def start() -> Iterator[StartQgpu]:
    """Return a factory that starts qgpu machines; all are stopped after the test."""
    devices: list[QgpuDevice] = []

    def _start(props: str = "", **kwargs: object) -> QgpuDevice:
        dev = start_qgpu(props, **kwargs)  # type: ignore[arg-type]
        devices.append(dev)
        return dev

    yield _start
    for dev in devices:
        dev.qt.stop()


@pytest.fixture
def qgpu(start: StartQgpu) -> QgpuDevice:
    """A qgpu with 64 MiB of shared VRAM and a 64-entry ring, engine enabled."""
    dev = start()
    dev.setup_ring(64)
    return dev


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random generator seeded from the test name, so failures reproduce."""
    return random.Random(request.node.nodeid)


@pytest.fixture(autouse=True)
def no_sanitizer_reports() -> Iterator[None]:
    """Fail a test whose QEMU reported a bug through ASan, UBSan or LSan.

    Only a QEMU built with the sanitizers (make test-device QEMU_SANITIZE=1)
    reports; the reports are read from each QEMU's log when it stops, which
    the device fixtures (set up after this one) do before this check.
    """
    before = len(SANITIZER_REPORTS)
    yield
    new = SANITIZER_REPORTS[before:]
    if new:
        pytest.fail("QEMU's sanitizers reported:\n" + "\n".join(new), pytrace=False)
