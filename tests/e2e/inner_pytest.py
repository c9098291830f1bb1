"""Run a pytest of its own on tests written by a test, as a user's project runs the rig.

Some tests check what the plugin does to a whole run -- which tests share a guest,
what a failed driver reload does to the next test, what the options bring. They
write a small test module and run pytest on it in a subprocess, in a folder of
their own without an ini file: the rig is switched on with ``-p qgpu``, as a
project that has installed the package would.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from qgpu.kernels import GuestKernel


@dataclass(frozen=True)
class InnerRun:
    """How the inner pytest ended and what it printed (stdout, then stderr)."""

    exit_code: int
    output: str


def _pytest_command(folder: Path, *args: str) -> list[str]:
    """Return the command of a plain pytest in ``folder`` (its own rootdir, no cache)."""
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            f"--rootdir={folder}", *args]


def pytest_in(folder: Path, *args: str, timeout: float = 120.0
              ) -> subprocess.CompletedProcess[str]:
    """Run a plain pytest in ``folder`` (its own rootdir, no cache) with ``args``."""
    return subprocess.run(_pytest_command(folder, *args), cwd=folder, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _rig_args(folder: Path, config: pytest.Config, kernel: GuestKernel) -> list[str]:
    """Switch the rig on, on this run's kernel and accelerator; bundles in ``folder``."""
    return ["-p", "qgpu", "-rA", f"--qgpu-kernel={kernel.image_dir}",
            f"--qgpu-accel={config.getoption('--qgpu-accel')}",
            f"--qgpu-artifacts={folder / 'artifacts'}"]


def run_pytest(folder: Path, config: pytest.Config, kernel: GuestKernel, *args: str,
               timeout: float = 250.0) -> InnerRun:
    """Run pytest in ``folder`` with ``args`` on this run's kernel and accelerator.

    The rig is switched on (``-p qgpu``); artifact bundles go to
    ``folder/artifacts``; ``timeout`` is scaled by the kernel's timeout scale.
    """
    res = pytest_in(folder, *_rig_args(folder, config, kernel), *args,
                    timeout=timeout * kernel.timeout_scale)
    return InnerRun(res.returncode, res.stdout + res.stderr)


def start_pytest(folder: Path, config: pytest.Config, kernel: GuestKernel, *args: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start what :func:`run_pytest` runs, without waiting: output (and stderr) on a pipe."""
    return subprocess.Popen(_pytest_command(folder, *_rig_args(folder, config, kernel), *args),
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
