"""The qgpu pytest plugin's switch and options (the ``pytest11`` entry point ``qgpu``).

Installing the package adds only the ``--qgpu*`` options to pytest. The rig --
its fixtures and hooks, in :mod:`qgpu.pytest_rig` -- is switched on by any of:

- ``-p qgpu`` on the command line (or in ``addopts``, or ``PYTEST_ADDOPTS``);
- ``--qgpu``;
- ``qgpu = true`` in the ``[pytest]`` section of the ini file.

A run that passes a rig option such as ``--qgpu-kernel`` (or sets one of its ini
keys) without switching the rig on stops with a usage error that says how to
switch it on.

Options (``pytest --help`` lists them under "qgpu test rig"):

``--qgpu-qemu PATH``       the qemu-system-x86_64 with qgpu (default: build/bin/)
``--qgpu-kernel NAME|DIR`` the guest kernel: stock (default), qgpu, debug (see
                           :mod:`qgpu.kernels`), or an image folder
``--qgpu-image DIR``       the same as ``--qgpu-kernel DIR``
``--qgpu-timeout-scale F`` multiply guest timeouts by F (default: 4 on kernels with
                           KASAN, lockdep or kmemleak, else 1)
``--qgpu-kmemleak WHEN``  when kmemleak (kernels that have it) checks a shared guest:
                           ``retire`` (default) once, when the guest is shut down, naming
                           the test that allocated each leaked object; ``test`` after
                           every test (exact, about 9 s more per test)
``--qgpu-guest-scope S``   which tests share a ``qgpu_guest``: ``test`` a fresh one for
                           every test; ``module`` one per test module and mode;
                           ``session`` one per DMA mode; ``auto`` (default) ``test``,
                           but ``session`` on kernels with kmemleak, whose check as each
                           guest retires takes about 9 s. Every guest is restored
                           from its mode's saved template (:mod:`qgpu.template`, made by
                           one boot on first use and cached) in about 0.15 s under TCG
                           (a second on the debug kernel). A restore that fails boots
                           instead, with a warning, counted in the summary
``--qgpu-spare-guest on``  with a guest per test, the next test's is restored in the
                           background while a test runs (``off``: when asked for)
``--qgpu-revert on``       with a guest per test, a passed test's guest is reverted to
                           its template in the same QEMU for a later one (``off``: a
                           new QEMU restores every guest)
``--qgpu-accel MODE``      auto (KVM only if a bounded probe boots a guest), tcg, kvm
``--qgpu-modes M,M``       run the tests parametrized by ``qgpu_dma_mode`` only in these
                           DMA modes (default: all of direct, swiotlb, iommu,
                           virtio-iommu); the others are deselected. Tests that boot a
                           guest of their own (``qgpu_make_guest``) run whatever the
                           option says
``--qgpu-overlay DIR``     add DIR's contents to every guest's / (repeatable; ini key
                           ``qgpu_overlays``): the user's module, tools, scripts
``--qgpu-append WORD``     an extra kernel command-line word (repeatable; ``qgpu_append``)
``--qgpu-qemu-arg ARG``    an extra QEMU argument (repeatable; ``qgpu_qemu_args``)
``--qgpu-artifacts DIR``   where failed tests leave their bundle (default build/artifacts
                           in a qgpu checkout, else qgpu-artifacts/ in the rootdir)
``--qgpu-keep-artifacts``  write the bundle for passing tests too

The fixtures are listed in :mod:`qgpu.pytest_rig`.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
from typing import Any

import pytest

from qgpu.config import DmaMode

#: ``--qgpu-guest-scope`` values, widest first (and ``auto``, which picks one).
GUEST_SCOPES = ("session", "module", "test")

#: The rig's options (their ``dest``) and defaults: given without the rig, an error.
_RIG_OPTIONS: dict[str, Any] = {}

#: The rig's ini keys: set without the rig, an error too.
_RIG_INI_KEYS = ("qgpu_overlays", "qgpu_append", "qgpu_qemu_args")

#: The name the rig's fixtures and hooks are registered under.
RIG_PLUGIN = "qgpu-rig"


def _add(group: pytest.OptionGroup, name: str, **kw: Any) -> None:
    group.addoption(name, **kw)
    _RIG_OPTIONS[name.lstrip("-").replace("-", "_")] = kw.get("default")


def _seconds(text: str) -> float:
    """Return an option's value as seconds: a finite number, not negative."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the switch and the rig's command-line options and ini keys."""
    group = parser.getgroup("qgpu", "qgpu test rig")
    group.addoption("--qgpu", action="store_true", default=False,
                    help="switch the qgpu rig on (its fixtures and hooks); the same as "
                         "-p qgpu or 'qgpu = true' in the ini file")
    parser.addini("qgpu", "switch the qgpu rig on (the same as --qgpu)", type="bool",
                  default=False)
    _add(group, "--qgpu-qemu", metavar="PATH", default=None,
         help="qemu-system-x86_64 with the qgpu device (default: build/bin/)")
    _add(group, "--qgpu-kernel", metavar="NAME|DIR", default=None,
         help="guest kernel: stock (default), qgpu (io_mapping_map_user), debug "
              "(KASAN, lockdep, kmemleak, DMA-API debug, UBSAN), or an image "
              "folder with vmlinux/vmlinuz, initramfs.img, ssh/")
    _add(group, "--qgpu-image", metavar="DIR", default=None,
         help="guest image folder (the same as --qgpu-kernel DIR)")
    _add(group, "--qgpu-timeout-scale", metavar="F", type=float, default=None,
         help="multiply every guest timeout by F (default: 4 on kernels with "
              "KASAN, lockdep or kmemleak, else 1)")
    _add(group, "--qgpu-kmemleak", default="retire", choices=("retire", "test"),
         help="when kmemleak checks a shared guest: once when it is shut down, "
              "naming the test that allocated each leak (retire, default), or "
              "after every test (test: exact, about 9 s more per test)")
    _add(group, "--qgpu-guest-scope", default="auto", choices=("auto", *GUEST_SCOPES),
         help="which tests share a guest: test (a fresh guest per test), module "
              "(one per test module and mode) or session (one per DMA mode); auto "
              "(default) is test, or session on kernels with kmemleak (its check "
              "as a guest retires takes about 9 s); guests are restored from a "
              "saved template (made by one boot on first use, then cached)")
    _add(group, "--qgpu-spare-guest", default="on", choices=("on", "off"),
         help="with a guest per test: restore the next test's guest in the "
              "background while a test runs (on, default), or only when the test "
              "asks for it (off: one QEMU fewer at a time)")
    _add(group, "--qgpu-revert", default="on", choices=("on", "off"),
         help="with a guest per test: revert a passed test's guest to its template in "
              "the same QEMU for a later test (on, default: under TCG it keeps the "
              "guest's translated code), or always restore it in a new QEMU (off)")
    _add(group, "--qgpu-late-read", metavar="SECONDS", type=_seconds, default=None,
         help="how long after its last test's check a retired guest's kernel log is "
              "read a last time (scaled like the guest's timeouts), for reports that "
              "come later: a timer or work item firing after the driver was unloaded "
              "(default 1: the qgpu driver's watchdog period; set it to your driver's "
              "longest timer)")
    _add(group, "--qgpu-accel", default="auto", choices=("auto", "tcg", "kvm"),
         help="accelerator; auto uses KVM only if a bounded probe boots a guest")
    _add(group, "--qgpu-modes", metavar="M,M", default=None,
         help="run the tests parametrized by qgpu_dma_mode only in these DMA modes, "
              f"comma-separated (default: all of {', '.join(DmaMode)}); tests "
              "that boot a guest of their own (qgpu_make_guest) run regardless")
    _add(group, "--qgpu-overlay", metavar="DIR", action="append", default=[],
         help="add DIR's contents to every guest's / (its initramfs; repeatable, "
              "later ones on top): your module, tools, scripts")
    _add(group, "--qgpu-append", metavar="WORD", action="append", default=[],
         help="extra kernel command-line word for every guest (repeatable)")
    _add(group, "--qgpu-qemu-arg", metavar="ARG", action="append", default=[],
         help="extra QEMU argument for every guest (repeatable; e.g. "
              "--qgpu-qemu-arg=-device --qgpu-qemu-arg=edu)")
    _add(group, "--qgpu-artifacts", metavar="DIR", default=None,
         help="artifact bundles of failed tests (default: build/artifacts in a qgpu "
              "checkout, else qgpu-artifacts/ in the rootdir)")
    _add(group, "--qgpu-keep-artifacts", action="store_true", default=False,
         help="write artifact bundles for passing tests too")
    parser.addini("qgpu_overlays", "folders added to every guest's / (--qgpu-overlay)",
                  type="paths", default=[])
    parser.addini("qgpu_append", "extra kernel command-line words (--qgpu-append)",
                  type="args", default=[])
    parser.addini("qgpu_qemu_args", "extra QEMU arguments (--qgpu-qemu-arg)",
                  type="args", default=[])


def switched_on(config: pytest.Config) -> bool:
    """Whether this run asked for the rig: ``-p qgpu``, ``--qgpu`` or the ini key ``qgpu``."""
    asked = getattr(config.option, "plugins", None) or []
    return bool(config.getoption("--qgpu") or config.getini("qgpu") or "qgpu" in asked)


def pytest_configure(config: pytest.Config) -> None:
    """Switch the rig on if asked; refuse its options if not."""
    if not switched_on(config):
        given = [f"--{dest.replace('_', '-')}" for dest, default in _RIG_OPTIONS.items()
                 if config.getoption(dest) != default]
        given += [f"ini {key}" for key in _RIG_INI_KEYS if config.getini(key)]
        if given:
            raise pytest.UsageError(
                f"{', '.join(given)}: the qgpu rig is not switched on in this run; add "
                "-p qgpu (or --qgpu) to the command line, or 'qgpu = true' to the "
                "[pytest] section of your ini file")
        return
    qemu = config.getoption("--qgpu-qemu")
    if qemu:
        os.environ["QGPU_QEMU"] = str(qemu)
    kernel = config.getoption("--qgpu-kernel") or config.getoption("--qgpu-image")
    if kernel:
        os.environ["QGPU_KERNEL"] = str(kernel)
    config.addinivalue_line("markers", "slow: long-running test")
    if not config.pluginmanager.has_plugin(RIG_PLUGIN):
        config.pluginmanager.register(importlib.import_module("qgpu.pytest_rig"), RIG_PLUGIN)
