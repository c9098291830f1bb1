"""Fixtures of the end-to-end tests (the rig's own, qgpu_*, come from qgpu.pytest_rig)."""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator

import pytest

from qgpu.faults import FaultInjector
from qgpu.machine import GuestMachine


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """Return a random generator seeded from the test's id (reproducible per test).

    ``QGPU_E2E_SEED=N`` in the environment mixes N in, to explore other data.
    """
    extra = os.environ.get("QGPU_E2E_SEED", "")
    seed = zlib.crc32(f"{request.node.nodeid}{extra}".encode())
    request.node.user_properties.append(("seed", seed))
    return random.Random(seed)


@pytest.fixture
def faults(qgpu_guest: GuestMachine) -> Iterator[FaultInjector]:
    """The shared guest's injector; every knob disarmed afterwards."""
    inj = FaultInjector.for_machine(qgpu_guest)
    yield inj
    if qgpu_guest.is_alive():
        inj.clear()
