"""pytest plugin of the qgpu rig (registered through the ``pytest11`` entry point).

Options:

``--qgpu-qemu PATH``
    the qemu-system-x86_64 with qgpu to test (default: build/bin of the checkout,
    or ``$QGPU_QEMU``).
"""

from __future__ import annotations

import os

import pytest

from qgpu import paths
from qgpu.errors import SetupError


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the qgpu command-line options."""
    group = parser.getgroup("qgpu", "qgpu test rig")
    group.addoption("--qgpu-qemu", metavar="PATH", default=None,
                    help="qemu-system-x86_64 with the qgpu device (default: build/bin/)")


def pytest_configure(config: pytest.Config) -> None:
    """Apply the options and check the QEMU binary exists before any test runs."""
    qemu = config.getoption("--qgpu-qemu", default=None)
    if qemu:
        os.environ["QGPU_QEMU"] = str(qemu)
    config.addinivalue_line("markers", "slow: long-running test")


def pytest_report_header(config: pytest.Config) -> str:
    """Name the QEMU under test in pytest's header."""
    try:
        return f"qgpu: QEMU {paths.qemu_binary()}"
    except SetupError as exc:
        return f"qgpu: {exc}"
