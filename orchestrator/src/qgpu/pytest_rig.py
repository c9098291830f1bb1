"""The qgpu rig's fixtures and hooks, active once a run switches the plugin on.

:mod:`qgpu.pytest_plugin` (the ``pytest11`` entry point) adds the options and
registers this module when a run asks for it (``-p qgpu``, ``--qgpu`` or
``qgpu = true`` in the ini file).

Fixtures (all namespaced ``qgpu_``):

``qgpu_dma_mode``     parametrizes a test over direct / swiotlb / iommu / virtio-iommu
                      (session-scoped, so tests are grouped by mode); ``@pytest.mark.
                      parametrize("qgpu_dma_mode", [...], indirect=True)`` picks modes
``qgpu_guest``        a running :class:`~qgpu.machine.GuestMachine` for ``qgpu_dma_mode``
                      with this repository's driver freshly loaded and an empty dmesg:
                      by default a guest of the test's own, restored from the mode's
                      template (``--qgpu-guest-scope``: or shared by the tests of a
                      module or of the session, and replaced when a test leaves it
                      dead or crashed). After the test the driver is unloaded and the
                      kernel's detectors are read (:mod:`qgpu.health`): any report
                      fails the test
``qgpu_kernel``       the :class:`~qgpu.kernels.GuestKernel` under test (out-of-tree
                      modules build against ``qgpu_kernel.module_build_dir``)
``qgpu_inspector``    the host-side :class:`~qgpu.inspector.DeviceInspector` of the
                      ``qgpu_guest``'s qgpu0
``qgpu_make_guest``   factory for a dedicated VM with a custom configuration
                      (:class:`~qgpu.config.MachineConfig` fields), booted with the
                      image's qgpu.ko loaded (``load_driver=False``: the devices stay
                      unbound, for a driver of one's own, e.g. from ``overlays``); its
                      detectors are read after a passing test too
                      (``qgpu_make_guest(..., check_health=False)`` for a guest the test
                      leaves unable to answer)
``qgpu_restore_guest`` factory like ``qgpu_make_guest``, whose guests start from a saved
                      template (:mod:`qgpu.template`, made on first use) in well under a
                      second instead of booting; the driver is not loaded. The kernel's
                      reports are read after the test (kmemleak's with
                      ``check_leaks=True``)

With ``--junitxml``, the report's properties name QEMU, the kernel and the
initramfs (with its overlays) by SHA-256, and the options.

A run interrupted in a test (Ctrl-C; or SIGTERM, how CI systems stop a job
that overran or was cancelled, unless something else handles it already or
``--pdb`` is given) stops every guest without reading it -- a guest may still
be running the interrupted test's command, and a check would wait behind it --
and removes their files: a guest still looked at in the background is waited
for INTERRUPTED_WAIT at most, then its QEMU is killed (one still being made is
not waited for: it dies with the rig, its files left in /tmp). The
test is reported failed (or, interrupted in its setup or teardown, in error) in
the summary and the JUnit XML. Once the run is interrupted, a SIGTERM is only
noted (raised in the cleanup, it would cut it short); SIGKILL ends it at once.
With pytest-xdist, signal the workers too (the process group): a controller
interrupted stops reading their reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import queue
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from _pytest import junitxml

from qgpu import health, initramfs, kernels, paths, template
from qgpu.config import DmaMode, MachineConfig, QgpuSpec
from qgpu.errors import GuestCrashError, QgpuError, RestoreFallbackWarning, SetupError
from qgpu.inspector import DeviceInspector
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine


def selected_modes(config: pytest.Config) -> set[DmaMode]:
    """Return the DMA modes ``--qgpu-modes`` selects (all by default).

    Tests parametrized by ``qgpu_dma_mode`` are deselected for the others; a test
    that starts its own guests in several modes (``qgpu_restore_guest``) skips them.
    """
    raw = config.getoption("--qgpu-modes", default=None)
    if not raw:
        return set(DmaMode)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in set(DmaMode)]
    if unknown or not names:
        raise pytest.UsageError(f"--qgpu-modes {raw!r}: unknown DMA mode "
                                f"{', '.join(map(repr, unknown)) or '(none given)'}; "
                                f"choose from {', '.join(DmaMode)}")
    return {DmaMode(n) for n in names}


@pytest.hookimpl(tryfirst=True)     # before pytest-xdist's loadgroup reads the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the guest tests of the DMA modes ``--qgpu-modes`` leaves out; group the rest.

    With pytest-xdist, where guests are shared (``--qgpu-guest-scope`` module or
    session), each test parametrized by ``qgpu_dma_mode`` is in the
    ``xdist_group`` of its mode, so ``-n N --dist loadgroup`` keeps a mode's tests
    on one worker, which restores that mode's guest once. A guest per test needs
    no grouping: any worker runs any test.
    """
    if config.pluginmanager.has_plugin("xdist") and guest_scope(config)[0] != "test":
        for item in items:
            mode = _mode_of(item)
            if mode is not None and item.get_closest_marker("xdist_group") is None:
                item.add_marker(pytest.mark.xdist_group(name=f"qgpu-{mode}"))
    modes = selected_modes(config)
    if modes == set(DmaMode):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        mode = _mode_of(item)
        (drop if mode is not None and mode not in modes else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


#: guest_scope()'s answer, worked out once per run.
_GUEST_SCOPE = pytest.StashKey[tuple[str, str]]()


def guest_scope(config: pytest.Config) -> tuple[str, str]:
    """Return the ``qgpu_guest`` scope this run uses (``--qgpu-guest-scope``), and why.

    ``auto`` is ``test``, but ``session`` on a kernel with kmemleak: its check,
    two scans 5.5 s apart as a guest retires, would add about 9 s to every test.
    """
    chosen = config.stash.get(_GUEST_SCOPE, None)
    if chosen is None:
        chosen = config.stash[_GUEST_SCOPE] = _choose_guest_scope(config)
    return chosen


def _choose_guest_scope(config: pytest.Config) -> tuple[str, str]:
    asked = str(config.getoption("--qgpu-guest-scope", default="auto"))
    if asked != "auto":
        return asked, "--qgpu-guest-scope"
    try:
        kmemleak = kernels.resolve().detectors.kmemleak
    except SetupError:
        kmemleak = False                # no kernel: the fixtures will say so
    if kmemleak:
        return "session", ("auto: the kernel has kmemleak, whose check as each guest "
                           "retires takes about 9 s; --qgpu-guest-scope=test for a guest "
                           "per test anyway")
    return "test", "auto: a fresh guest per test"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Name the QEMU and the guest kernel under test, and the guest scope, in pytest's header."""
    lines = []
    try:
        lines.append(f"qgpu: QEMU {paths.qemu_binary()}")
    except SetupError as exc:
        lines.append(f"qgpu: {exc}")
    try:
        k = kernels.resolve()
        lines.append(f"qgpu: guest kernel {k.name} ({k.release}, {k.image_dir}); detectors: "
                     f"{', '.join(k.detectors.names()) or 'none'}")
    except SetupError as exc:
        lines.append(f"qgpu: {exc}")
    scope, why = guest_scope(config)
    lines.append(f"qgpu: guest scope {scope} ({why})")
    return lines


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
    return _artifact_dir_for(config, node.nodeid)


def _artifact_base(config: pytest.Config) -> Path:
    """Return ``--qgpu-artifacts``, else build/artifacts, else <rootdir>/qgpu-artifacts."""
    given = config.getoption("--qgpu-artifacts")
    if given:
        return Path(given)
    try:
        return paths.build_dir() / "artifacts"
    except SetupError:          # an installed package, outside a qgpu checkout
        return config.rootpath / "qgpu-artifacts"


def _artifact_dir_for(config: pytest.Config, nodeid: str) -> Path:
    base = _artifact_base(config)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", nodeid)[-150:]
    return Path(base) / worker / name


@dataclass(frozen=True)
class _Brought:
    """What the user brought for every guest: the ini file's, then the command line's."""

    overlays: tuple[Path, ...]
    append: tuple[str, ...]
    qemu_args: tuple[str, ...]


def _brought(config: pytest.Config) -> _Brought:
    return _Brought(
        overlays=(*config.getini("qgpu_overlays"),
                  *map(Path, config.getoption("--qgpu-overlay"))),
        append=(*config.getini("qgpu_append"), *config.getoption("--qgpu-append")),
        qemu_args=(*config.getini("qgpu_qemu_args"), *config.getoption("--qgpu-qemu-arg")))


def _base_config(config: pytest.Config, mode: DmaMode, **kw: Any) -> MachineConfig:
    """Return the configuration of a guest in ``mode``, as the options ask.

    Kernel, accelerator, timeouts, overlays and extra arguments: the ini file's
    first, then the command line's, then ``kw``'s.
    """
    user = _brought(config)
    overlays = [*user.overlays, *kw.pop("overlays", ())]
    append = (*user.append, *kw.pop("append", ()))
    extra = (*user.qemu_args, *kw.pop("extra_args", ()))
    return MachineConfig.for_kernel(kernels.resolve(), accel=config.getoption("--qgpu-accel"),
                                    dma_mode=mode, name=f"{mode}",
                                    timeout_scale=config.getoption("--qgpu-timeout-scale"),
                                    overlays=overlays, append=append, extra_args=extra, **kw)


@dataclass
class _Window:
    """A test's span on a shared guest, in the guest's jiffies (for kmemleak's reports)."""

    nodeid: str
    start: int | None
    end: int | None = None

    def holds(self, jiffies: int) -> bool:
        return (self.start is not None and self.start <= jiffies and
                (self.end is None or jiffies <= self.end))


def _attribute(found: health.Health, windows: list[_Window]) -> list[str]:
    """Name the test during which each leaked object was allocated."""
    lines = []
    for leak in found.leaks:
        owner = next((w.nodeid for w in windows if w.holds(leak.jiffies)), None)
        lines.append(f"  object allocated at jiffies {leak.jiffies}: " +
                     (f"during {owner}" if owner else "outside any test (at boot, or "
                      "between tests)"))
    return lines


#: How long a guest without kmemleak lives on after its last test's check before
#: its kernel log is read a last time (and it is stopped), in the background: a
#: report that comes later than the check -- a timer or work item firing after the
#: driver was unloaded -- fails that test too (at the next test's teardown or the
#: session's end), as the next test on a shared guest would have found it. The
#: default covers the qgpu driver's watchdog (its period is at most 1 s);
#: ``--qgpu-late-read`` sets it for a driver with longer timers.
LATE_READ_SECONDS = 1.0
#: With reverts (``--qgpu-revert``), at most this many retired guests of a DMA
#: mode wait to be reverted for a later test, and this many in all: each is an
#: idle QEMU (tens of MiB of its own). A run's tests are grouped by mode and
#: module, and the next module's come back to the same modes (so the cap in all
#: holds every mode's). Four per mode: in
#: a run of short tests each guest is reverted for a test four or five tests
#: after its own, its last read (LATE_READ_SECONDS after its test) long done.
MAX_IDLE_PER_MODE = 4
MAX_IDLE = MAX_IDLE_PER_MODE * len(DmaMode)
#: How long after its last read was due a guest is waited for, to be reverted
#: rather than a new QEMU restored (:meth:`_Pool._wait_for_keeper`): the read takes
#: about 0.05 s under TCG; a guest that does not answer by then is not waited for.
KEEPER_WAIT_SECONDS = 1.0
#: A guest made ahead waits for a retired one's last read only if it is due within
#: this (:meth:`_Pool._wait_for_keeper`; not scaled: on slower kernels, whose read
#: comes later, that is rarer); otherwise a new QEMU restores it, and the
#: guests kept grow in number (MAX_IDLE_PER_MODE). Waiting for reads due later
#: held the test after every test shorter than about a second: on the 221
#: stock-kernel tests that use ``qgpu_guest``, 93 follow one shorter than 0.5 s, and
#: the run took 434 to 438 s against 369 to 379 s this way (``session``: 348 to 356 s).
KEEPER_DUE_SOON_SECONDS = 0.3
#: In an interrupted run, how long in all the guests still being made or looked at
#: in the background are waited for before their QEMUs are killed: CI systems kill
#: a job outright some seconds after their SIGTERM.
INTERRUPTED_WAIT = 3.0
#: On kernels with kmemleak, at most this many retired shared guests do their
#: settled leak check (about 10 s under TCG, half of it waiting) at a time, beside
#: the tests: each scan keeps a CPU busy for seconds.
MAX_LEAK_CHECKS = 1


class _Retiree(threading.Thread):
    """A retired guest's last look, in the background, while the next test runs.

    Its kernel log read a last time ``late_read`` seconds (default
    LATE_READ_SECONDS) after its last test or, for
    a shared guest on a kernel with kmemleak (``leaks``), kmemleak's settled
    check: the driver unloaded and two scans 5.5 s apart, mostly a wait that no
    test should sit through.
    """

    def __init__(self, mode: DmaMode, machine: GuestMachine, windows: list[_Window], *,
                 keep: Callable[[_Retiree], bool] | None = None,
                 leaks: bool = False, late_read: float | None = None) -> None:
        """``keep``: offered the guest after its last read (``found``); True if it kept it."""
        super().__init__(name=f"qgpu-retire-{mode}", daemon=True)
        self.mode, self.machine, self.windows = mode, machine, windows
        self.found: health.Health | None = None
        self.leaks = leaks
        #: The wait before the read (None: the leak check, at once), scaled like the
        #: guest's timeouts (slower kernels).
        late = LATE_READ_SECONDS if late_read is None else late_read
        self.delay = None if leaks else late * machine.config.timeout_scale
        self.keep = keep
        #: When its last read is due (time.monotonic(); it is started at once).
        self.read_due = None if self.delay is None else time.monotonic() + self.delay
        #: Set when the run was interrupted: the read still to come is not made.
        self.cancelled = threading.Event()

    def run(self) -> None:
        kept = False
        try:
            if self.delay is None:
                try:
                    self.found = _health_after(self.machine, unload=True, settle_leaks=True)
                except Exception as exc:    # reported, not lost with the thread
                    self.found = health.Health(problems=[f"the leak check failed: {exc!r}"])
            elif not self.cancelled.wait(self.delay):
                self.found = _late_health(self.machine)
                kept = self.keep is not None and self.keep(self)
        finally:
            if not kept:
                self.machine.stop(graceful=False)


class _Spare:
    """A guest restored (a new QEMU's also checked) in the background, while a test runs.

    The pool's :class:`_SpareMaker` thread does it; :meth:`take` hands over what
    :func:`template.restore_or_boot` returned, and what it or
    :func:`health.check_boot` raised, in the test's own thread: a restore that
    failed (and booted instead) is counted and warned about there, as a restore
    in the foreground is. The check is done here because its console commands
    are the guest's first: they run on a TCG whose translation cache is empty,
    and are slow (0.1 s each; the test's own reload of the driver, after them,
    is quicker). What the kernel logs between the check and the test is read by
    the test's :func:`health.prepare_command`. A reverted guest's translations
    are warm: its check is left to the test's first command, with the driver's
    load (:meth:`_Pool.begin_test`), rather than be one console command more on
    the CPUs the test before runs on.
    """

    def __init__(self, mode: DmaMode, start: Callable[[], template.Started]) -> None:
        self.mode, self.start = mode, start
        self.started: template.Started | None = None
        #: What starting the guest raised (``started`` is None), or its check.
        self.error: BaseException | None = None
        self.done = threading.Event()

    def make(self) -> None:
        """Restore (and check) the guest (in the :class:`_SpareMaker` thread); never raises."""
        try:
            self.started = self.start()
            if not self.started.reverted:
                health.check_boot(self.started.machine)
        except BaseException as exc:    # handed over by take()
            self.error = exc
        finally:
            self.done.set()

    def take(self) -> template.Started:
        """Wait for the guest; return it (and :attr:`error`, its check's), or raise.

        Raises what starting the guest raised. A guest whose check found trouble
        is returned running, for the test to fail on it with the guest's state.
        """
        self.done.wait()
        if self.started is None:
            assert self.error is not None
            raise self.error
        return self.started

    def discard(self, timeout: float | None = None) -> str:
        """Wait for the guest and stop it (no test came for it); return what it found.

        ``timeout``: how long to wait for a guest still being made (an
        interrupted run); one not made by then dies with the rig.
        """
        if not self.done.wait(timeout):
            return ""
        if self.started is not None:
            self.started.machine.stop(graceful=False)
        return f"a guest restored ahead for a test that did not use it: {self.error}" \
            if isinstance(self.error, GuestCrashError) else ""


class _SpareMaker(threading.Thread):
    """The one thread that makes a pool's spare guests, for as long as the pool lives.

    One thread, not one per guest: the kernel kills a QEMU when the thread that
    started it ends (:func:`qgpu.process._dies_with_its_parent`), which is how no
    QEMU outlives a rig killed outright, and this thread ends only after the pool
    stopped every guest.
    """

    outlives_its_qemus = True

    def __init__(self) -> None:
        super().__init__(name="qgpu-spare-maker", daemon=True)
        self.jobs: queue.SimpleQueue[_Spare | None] = queue.SimpleQueue()

    def run(self) -> None:
        while (spare := self.jobs.get()) is not None:
            spare.make()

    def close(self, timeout: float | None = None) -> None:
        """End the thread once the jobs given are done (``timeout``: or give up waiting)."""
        self.jobs.put(None)
        self.join(timeout)


class _Pool:
    """The guests tests share, one per DMA mode at a time, and the tests each one ran.

    How widely a guest is shared is :func:`guest_scope`: a single test has one,
    or the tests of a module, or those of the session (per mode). Each is
    restored from the mode's template (made on first use, then cached).
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.scope: str = guest_scope(config)[0]
        self.machines: dict[DmaMode, GuestMachine] = {}
        self.windows: dict[DmaMode, list[_Window]] = {}
        #: The module whose tests a module-scoped guest serves.
        self.owners: dict[DmaMode, str] = {}
        #: Retired guests whose kernel log is still to be read a last time, or
        #: (shared guests on a kernel with kmemleak) whose leak check runs.
        self.retirees: list[_Retiree] = []
        #: Modes whose guest started and is not checked yet (:meth:`begin_test`).
        self.unchecked: set[DmaMode] = set()
        #: The next test's guest, being restored (:meth:`prepare_next`), and the thread
        #: that does it (started with the first).
        self.spare: _Spare | None = None
        self.spare_maker: _SpareMaker | None = None
        self.use_spares = self.scope == "test" and \
            config.getoption("--qgpu-spare-guest", default="on") == "on"
        #: What spare guests no test used found (reported like late reports).
        self.spare_problems: list[str] = []
        #: What the check of a guest restored ahead raised, for its test to fail on.
        self.failed_checks: dict[DmaMode, BaseException] = {}
        #: With a guest per test, a test's guest that passed is reverted to its
        #: template in place for a later test (:func:`template.revert`), instead of
        #: a new QEMU restoring it: under TCG, the new one would translate the
        #: guest's code again. These wait for that, per mode.
        self.use_reverts = self.scope == "test" and \
            config.getoption("--qgpu-revert", default="on") == "on"
        self.idle: dict[DmaMode, list[GuestMachine]] = {}
        #: The same guests, the longest kept first (the first to go over MAX_IDLE).
        self.idle_order: list[GuestMachine] = []
        #: Guards ``idle``, ``idle_order`` and ``idle_closed`` (retirees add, the spare
        #: maker takes, close() empties and closes).
        self.idle_lock = threading.Lock()
        self.idle_closed = False
        #: The DMA modes later tests' guests are in (None: not known yet): guests of
        #: the others are not kept (:meth:`keep_only`).
        self.modes_ahead: set[DmaMode] | None = None
        #: With a guest per test: whether a test function's guest ran commands over
        #: SSH, in this run so far (:meth:`ssh_ahead`).
        self.ssh_users: dict[str, bool] = {}
        #: Set when an interrupted run stops its guests: no more are made.
        self.stopping = threading.Event()
        #: How long after its test's check a retired guest's kernel log is read a
        #: last time (``--qgpu-late-read``), before scaling.
        late = config.getoption("--qgpu-late-read", default=None)
        self.late_read: float = LATE_READ_SECONDS if late is None else float(late)

    def get(self, mode: DmaMode, nodeid: str) -> GuestMachine:
        # Tests are grouped by mode (and module), and each group's guest retires
        # after its last test (pytest_runtest_teardown); this only catches an
        # unusual order (e.g. a pytest-xdist worker's share of the tests).
        module = nodeid.split("::")[0]
        stale = [m for m in self.machines if m is not mode or
                 (self.scope == "module" and self.owners.get(m) != module)]
        for other in stale:
            problem = self.retire(other)
            if problem:
                raise GuestCrashError(problem)
        self.owners[mode] = module
        machine = self.machines.get(mode)
        if machine is None or not machine.is_alive():
            if machine is not None:
                self.drop(mode)
            machine, checked = self._start(mode, nodeid)
            self.machines[mode] = machine
            self.windows[mode] = []
            if not checked:
                self.unchecked.add(mode)
        return machine

    def _start(self, mode: DmaMode, nodeid: str) -> tuple[GuestMachine, bool]:
        """Return a guest for ``mode``, and whether it was checked since it started."""
        # Every scope restores: the template is made once (one boot) and kept in
        # the cache, so a run whose template exists starts each guest in about a
        # second instead of a boot (30 s on the debug kernel under TCG).
        # (The pool holds a spare until it is taken or stopped: close() stops one
        # that an interrupt left behind.)
        spare = self.spare
        if spare is not None and spare.mode is mode:
            try:
                started = spare.take()
            finally:
                self.spare = None if spare.done.is_set() else spare
            try:
                _count_start(self.config, started, nodeid, ahead=True)
            except BaseException:       # (warnings as errors)
                started.machine.stop(graceful=False)
                raise
            if spare.error is not None:
                self.failed_checks[mode] = spare.error
            # A guest that died waiting is handed over too: its test's first command
            # says how it died (QEMU's status, a crash's backtrace, its console).
            return started.machine, not started.reverted
        if spare is not None:
            self._discard_spare()
        started = self._fresh(mode, ssh_ahead=self.ssh_ahead(nodeid))
        try:
            _count_start(self.config, started, nodeid)
        except BaseException:           # (warnings as errors)
            started.machine.stop(graceful=False)
            raise
        return started.machine, False

    def _fresh(self, mode: DmaMode, *, ssh_ahead: bool = True,
               ahead: bool = False) -> template.Started:
        """Return a guest in ``mode`` as its template left it: reverted, or restored.

        Its SSH connects in the background if ``ssh_ahead``, else on first use.

        An earlier test's guest waiting to be reverted is reverted, or, for a
        guest made ``ahead`` (a spare, while a test runs) if none waits yet,
        the guest of a test before, once its last read of the kernel log is
        done, if it is due soon (:meth:`_wait_for_keeper`). Otherwise (none of
        this mode was retired, none is due soon or was kept within the wait,
        or a test waits for this guest: the read comes :attr:`late_read` after
        a guest's test), or if
        the revert fails (said in the :class:`template.Started` returned), a
        new QEMU restores the template.
        """
        self._refuse_if_stopping()
        failures = []
        while (machine := self._take_idle(mode) or
               (self._wait_for_keeper(mode) if ahead else None)) is not None:
            try:
                return template.Started(template.revert(machine, ssh_ahead=ssh_ahead),
                                        reverted=True)
            except BaseException as exc:    # (out of the idle pool: stop it here)
                machine.stop(graceful=False)
                if not isinstance(exc, QgpuError):
                    raise
                failures.append(str(exc))
        self._refuse_if_stopping()      # (it may have waited for a retired guest)
        cfg = _base_config(self.config, mode)
        assert cfg.guest_kernel is not None
        started = template.restore_or_boot(cfg, ssh_key=cfg.guest_kernel.ssh_key,
                                           ssh_ahead=ssh_ahead)
        if failures:
            started = dataclasses.replace(started, revert_failure="\n".join(failures))
        return started

    def _refuse_if_stopping(self) -> None:
        """Raise :class:`SetupError` once an interrupted run stops its guests."""
        if self.stopping.is_set():
            raise SetupError("the run was interrupted: no more guests are made")

    def _take_idle(self, mode: DmaMode) -> GuestMachine | None:
        """Take the guest of ``mode`` kept last for a revert, if there is one."""
        with self.idle_lock:
            waiting = self.idle.get(mode)
            if not waiting:
                return None
            machine = waiting.pop()
            self.idle_order.remove(machine)
            return machine

    def _wait_for_keeper(self, mode: DmaMode) -> GuestMachine | None:
        """Wait for a retired guest of ``mode`` in its last read to be kept; take it.

        Only one whose read is due within KEEPER_DUE_SOON_SECONDS. None if
        there is none, or none was kept (its read found trouble) by
        KEEPER_WAIT_SECONDS after its read was due. A revert and its check
        then cost a quarter of what a new QEMU and its check do on the
        machine's CPUs (whose first commands translate the guest's code
        again), and the wait is short; a longer one would hold up the test
        after a short one, where a new QEMU adds a guest to those kept, and
        a run of short tests then finds one whose read is done.
        """
        soon = time.monotonic() + KEEPER_DUE_SOON_SECONDS
        pending = [(r.read_due, r) for r in list(self.retirees)
                   if r.mode is mode and r.keep is not None and r.read_due is not None
                   and r.read_due <= soon and r.is_alive()]
        for due, retiree in sorted(pending, key=lambda p: p[0]):
            retiree.join(max(0.0, due - time.monotonic()) +
                         KEEPER_WAIT_SECONDS * retiree.machine.config.timeout_scale)
            if (machine := self._take_idle(mode)) is not None:
                return machine
        return None

    def _keep(self, retiree: _Retiree) -> bool:
        """Keep a retired guest for a revert (:attr:`use_reverts`); False if it is not kept.

        Not if its last read found a report, or it cannot be reverted
        (:func:`template.why_not_revertible`). Each kept guest is an idle QEMU:
        beyond MAX_IDLE_PER_MODE of a mode, or MAX_IDLE in all, the one kept
        longest is stopped.
        """
        machine = retiree.machine
        if retiree.found is None or not retiree.found.ok or \
                template.why_not_revertible(machine) is not None:
            return False
        # Not paused while it waits (QMP stop): 48 tests took 3 % longer that way
        # (3 paired runs, 58.5 s against 56.4 s).
        with self.idle_lock:
            if self.idle_closed or (self.modes_ahead is not None and
                                    retiree.mode not in self.modes_ahead):
                return False
            waiting = self.idle.setdefault(retiree.mode, [])
            waiting.append(machine)
            self.idle_order.append(machine)
            evicted = waiting[:-MAX_IDLE_PER_MODE]
            for old in evicted:
                waiting.remove(old)
                self.idle_order.remove(old)
            for old in self.idle_order[:-MAX_IDLE]:
                evicted.append(old)
                self.idle_order.remove(old)
                for kept in self.idle.values():
                    if old in kept:
                        kept.remove(old)
            kept_it = machine not in evicted
        for old in evicted:
            with contextlib.suppress(QgpuError, OSError):
                old.stop(graceful=False)
        return kept_it

    def keep_only(self, modes: set[DmaMode]) -> None:
        """Stop the guests kept for a revert in DMA modes other than ``modes``; keep none.

        ``modes``: those of the tests still to run. A run's tests come grouped
        by mode, and each kept guest is an idle QEMU that takes CPU time from
        the tests that run (its guest's timer ticks) and memory.
        """
        with self.idle_lock:
            self.modes_ahead = set(modes)
            gone = [machine for mode in list(self.idle) if mode not in modes
                    for machine in self.idle.pop(mode)]
            for machine in gone:
                self.idle_order.remove(machine)
        for machine in gone:
            with contextlib.suppress(QgpuError, OSError):
                machine.stop(graceful=False)

    def _discard_spare(self) -> None:
        assert self.spare is not None
        spare = self.spare
        problem = spare.discard()
        self.spare = None
        if spare.started is not None:
            _count_start(self.config, spare.started, "(a guest restored ahead, not used)")
        if problem:
            self.spare_problems.append(problem)

    def prepare_next(self, item: pytest.Item | None) -> None:
        """Start restoring the guest of ``item``, the next test, if it has one of its own.

        With a guest per test, that hides the restore and the check of what the
        kernel logged since (a quarter of a second: QEMU, and the guest's first
        console answers on a cold TCG) behind the test that runs meanwhile, on
        another CPU if there is one. A reverted guest is checked by its test
        instead (:class:`_Spare`).
        """
        mode = _mode_of(item)
        # (No item has no mode: ``item is None`` is for mypy.)
        if not self.use_spares or self.spare is not None or mode is None or item is None or \
                "qgpu_guest" not in getattr(item, "fixturenames", ()):
            return
        if self.spare_maker is None:
            self.spare_maker = _SpareMaker()
            self.spare_maker.start()
        ssh_first = self.ssh_ahead(item.nodeid)
        self.spare = _Spare(mode, lambda: self._fresh(mode, ssh_ahead=ssh_first, ahead=True))
        self.spare_maker.jobs.put(self.spare)

    def ssh_ahead(self, nodeid: str) -> bool:
        """Whether the guest of the test ``nodeid`` connects SSH before the test needs it.

        Yes, unless tests of its function (other parameters) that passed
        before ran no command over SSH on guests of their own (noted by
        :meth:`note_ssh_use` as each ended, so a guest restored ahead, during
        the test before, knows of those that ended before that one began).
        The handshake costs about 0.06 s under TCG, most of it the guest's CPU:
        a test that uses SSH finds it done; one that does not would pay for it
        beside its commands (or the test before it, for a guest restored
        ahead). A test that uses SSH unlike those before still gets it, on
        first use.
        """
        return self.ssh_users.get(_function_of(nodeid), True)

    def note_ssh_use(self, item: pytest.Item, machine: GuestMachine) -> None:
        """Remember whether ``item``, a test that passed, ran commands over its guest's SSH.

        A test skipped or failed part way, or whose guest stopped, says nothing.
        """
        call = getattr(item, "qgpu_rep_call", None)
        if self.scope == "test" and call is not None and call.passed and \
                machine.ssh is not None:
            function = _function_of(item.nodeid)
            self.ssh_users[function] = self.ssh_users.get(function, False) or \
                machine.ssh.commands_run > 0

    def begin_test(self, mode: DmaMode, then: str) -> str:
        """Give the guest of ``mode`` a clean slate for a test, run ``then``; return the output.

        On a guest that just started, that is :func:`health.check_boot` (what the
        kernel logged since its restore, or boot), with ``then`` in the same
        console command: a guest of its own for every test pays each round trip
        through a console whose TCG code is still cold. Otherwise it is
        :func:`health.prepare_command`, whose output holds the kernel log since
        the last test's check (:func:`health.late_reports` reads it). Raises
        :class:`GuestCrashError` if the kernel reported trouble since it
        started, :class:`~qgpu.errors.GuestCommandError` if ``then`` failed.
        """
        machine = self.machines[mode]
        failed = self.failed_checks.pop(mode, None)
        if failed is not None:
            raise failed                # its check, in the background, found trouble
        if mode not in self.unchecked:
            return machine.run(health.prepare_command(health.detectors(machine)) + "; " + then,
                               timeout=60, check=True, watch_crashes=False).output
        out = health.check_boot(machine, then=then)
        self.unchecked.discard(mode)
        return out

    def shares(self, item: pytest.Item, other: pytest.Item | None) -> bool:
        """Whether ``other`` runs on the guest ``item`` used, under this scope."""
        if other is None or _mode_of(other) is not _mode_of(item) or self.scope == "test":
            return False
        return self.scope == "session" or \
            getattr(other, "module", None) is getattr(item, "module", None)

    def drop(self, mode: DmaMode) -> None:
        """Stop the guest of ``mode`` without looking at it.

        No power-off: nothing reads what a guest would print while it shuts down.
        """
        machine = self.machines.pop(mode, None)
        self.windows.pop(mode, None)
        self.unchecked.discard(mode)
        self.failed_checks.pop(mode, None)
        if machine is not None:
            machine.stop(graceful=False)

    def retire(self, mode: DmaMode, *, reusable: bool = False) -> str | None:
        """Retire the guest of ``mode``; return what this and earlier retirements found.

        ``reusable``: its test passed, and the guest may be reverted to its
        template for another (:attr:`use_reverts`) once its last read found
        nothing.

        On a kernel with kmemleak, a last, thorough leak check: kmemleak reports
        an object only after two scans 5 s apart, so the leaks of the guest's
        last tests show up only here. For the guest of one test, now: what it
        finds is that test's and fails it. For a guest that served several
        (a shared one), in the background (:class:`_Retiree`, at most
        :data:`MAX_LEAK_CHECKS` at a time): each leak is blamed on the test
        that allocated it, whichever test's teardown reports it. Without
        kmemleak, the guest lives on for :attr:`late_read` seconds
        (``--qgpu-late-read``, scaled) in the background, and then its kernel
        log is read a last time. What a
        background look found is returned by a later call (or :meth:`close`).
        Each report is saved in the bundle of the test it belongs to, and the
        returned text names that test.
        """
        machine = self.machines.get(mode)
        windows = self.windows.get(mode, [])
        found = None
        if machine is not None and machine.is_alive() and machine.console is not None and \
                machine.console.at_prompt:   # (a shell still busy would not answer)
            leaks = health.detectors(machine).kmemleak
            if leaks and len(windows) <= 1:
                found = _health_after(machine, unload=True, settle_leaks=True)
            else:
                if leaks:
                    self._wait_for_leak_checks(MAX_LEAK_CHECKS - 1)
                self.machines.pop(mode)
                self.windows.pop(mode, None)
                keep = self._keep if reusable and self.use_reverts and not leaks else None
                retiree = _Retiree(mode, machine, windows, keep=keep, leaks=leaks,
                                   late_read=self.late_read)
                retiree.start()
                self.retirees.append(retiree)
        self.drop(mode)
        problems = [self._report(mode, found, windows)] if found is not None else []
        problems += self._late_reports(wait=False)
        return "\n".join(p for p in problems if p) or None

    def _wait_for_leak_checks(self, at_most: int) -> None:
        """Wait until at most ``at_most`` retired guests are still in their leak check."""
        checking = [r for r in self.retirees if r.leaks and r.is_alive()]
        for retiree in checking[:max(0, len(checking) - at_most)]:
            retiree.join()

    def _late_reports(self, *, wait: bool) -> list[str]:
        """Collect what retired guests (``wait``: all) and unused spare guests found."""
        problems, self.spare_problems = self.spare_problems, []
        for retiree in list(self.retirees):
            if wait:
                retiree.join()
            if retiree.is_alive():
                continue
            self.retirees.remove(retiree)
            problems.append(self._report(retiree.mode, retiree.found, retiree.windows,
                                         retiree.delay))
        return problems

    def _report(self, mode: DmaMode, found: health.Health | None, windows: list[_Window],
                late: float | None = None) -> str:
        """Save ``found`` in the bundles of the tests it concerns; return its text ("" if ok)."""
        if found is None or found.ok:
            return ""
        found.problems += _attribute(found, windows)
        owners = [w for w in windows if any(w.holds(lk.jiffies) for lk in found.leaks)]
        for w in owners or windows[-1:]:
            with contextlib.suppress(OSError):
                _save_health(found, _artifact_dir_for(self.config, w.nodeid))
        last = windows[-1].nodeid if windows else "no test"
        when = (f"its kernel log read {late:g} s after its last test ({last})"
                if late is not None else
                f"checked once more before it was shut down, after {last}")
        return (f"the {mode} guest, {when}:\n" + "\n".join(found.problems) + "\n"
                + found.summary())

    def close(self, *, interrupted: bool = False) -> None:
        """Stop every guest; raise :class:`GuestCrashError` with what their last looks found.

        ``interrupted``: the run was, and the guests are stopped without a look.
        """
        if interrupted:
            self._stop_unread()
            return
        try:
            self._close_and_read()
        except KeyboardInterrupt:       # (SIGTERM too): the rest without waiting
            self._stop_unread()
            raise

    def _close_and_read(self) -> None:
        problems = []
        with contextlib.ExitStack() as stop_all:
            if self.spare_maker is not None:
                # Last: its thread's end is what kills the QEMUs it started.
                stop_all.callback(self.spare_maker.close)
            if self.spare is not None:
                stop_all.callback(self._discard_spare)
            # After the retirees are joined (below), which may add to it.
            stop_all.callback(self._stop_idle)
            for mode in list(self.machines):
                # Every guest stops, whatever the retiring of another raises.
                stop_all.callback(self.drop, mode)
            for mode in list(self.machines):
                # One guest that cannot be looked at (QEMU gone, its console
                # stuck) costs neither the others' reports nor the late ones.
                try:
                    problem = self.retire(mode)
                except (QgpuError, OSError) as exc:
                    problem = f"the {mode} guest, as the run ended: {type(exc).__name__}: {exc}"
                if problem:
                    problems.append(problem)
            problems += [p for p in self._late_reports(wait=True) if p]
        if problems:
            raise GuestCrashError("\n".join(problems))

    def _stop_unread(self) -> None:
        """Stop every guest without reading it (an interrupted run), whatever one raises.

        Nothing is waited for much longer than INTERRUPTED_WAIT in all: a guest
        still looked at in the background then has its QEMU killed (its thread
        then removes its files); one still being made (a template's boot, say)
        is left to die with the rig, its files in /tmp.
        """
        self.stopping.set()             # no more guests made: _fresh() refuses
        deadline = time.monotonic() + INTERRUPTED_WAIT

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        with contextlib.ExitStack() as stop_all:
            maker, spare = self.spare_maker, self.spare
            if maker is not None:
                stop_all.callback(lambda: maker.close(left()))
            if spare is not None:
                stop_all.callback(lambda: spare.discard(left()))
            stop_all.callback(self._stop_idle)
            for mode in list(self.machines):
                stop_all.callback(self.drop, mode)
            for retiree in self.retirees:
                retiree.cancelled.set()
            for retiree in self.retirees:
                retiree.join(left())
            stuck = [r for r in self.retirees if r.is_alive()]
            for retiree in stuck:
                # In its read or its leak check still: its QEMU is killed (a
                # signal, safe from this thread), and its own stop() then
                # removes its files.
                _kill_outright(retiree.machine)
            deadline = time.monotonic() + 1.0
            for retiree in stuck:
                retiree.join(left())

    def _stop_idle(self) -> None:
        with self.idle_lock:
            self.idle_closed = True     # a retiree still in its last read keeps nothing
            machines = list(self.idle_order)
            self.idle.clear()
            self.idle_order.clear()
        for machine in machines:
            machine.stop(graceful=False)


_POOL = pytest.StashKey[_Pool]()
#: When the session started (time.time()): bundles newer than this are this run's.
_STARTED = pytest.StashKey[float]()
#: (test, why) of every guest booted because its restore failed.
_COLD_BOOTS = pytest.StashKey[list[tuple[str, str]]]()
#: How many guests were restored, and how many templates made for them (a boot each).
_RESTORES = pytest.StashKey[dict[str, int]]()
#: (test, why) of every guest that could not be reverted (restored instead).
_REVERT_FAILURES = pytest.StashKey[list[tuple[str, str]]]()


def _kill_outright(machine: GuestMachine) -> None:
    """Send the guest's QEMU SIGKILL (from any thread: the thread using it sees it die)."""
    proc = getattr(machine, "proc", None)
    if proc is not None:
        proc.kill()


def _restore_or_boot(config: pytest.Config, cfg: MachineConfig, nodeid: str) -> GuestMachine:
    """Restore a guest of ``cfg`` from its template; boot it, warn and count, if that fails."""
    assert cfg.guest_kernel is not None
    started = template.restore_or_boot(cfg, ssh_key=cfg.guest_kernel.ssh_key)
    _count_start(config, started, nodeid)
    return started.machine


def _count_start(config: pytest.Config, started: template.Started, nodeid: str, *,
                 ahead: bool = False) -> None:
    """Count a guest restored (``ahead``: as a spare) and a template made; warn of a boot."""
    counts = config.stash.setdefault(_RESTORES, {"guests": 0, "templates made": 0,
                                                 "ahead": 0, "reverted": 0})
    counts["guests"] += started.cold_boot_reason is None
    counts["ahead"] += ahead and started.cold_boot_reason is None
    counts["reverted"] += started.reverted
    counts["templates made"] += started.template_made
    if started.revert_failure is not None:
        config.stash.setdefault(_REVERT_FAILURES, []).append((nodeid, started.revert_failure))
        warnings.warn(RestoreFallbackWarning(
            f"an earlier test's {started.machine.config.name} guest could not be reverted "
            f"to its template; a new QEMU restored it: {started.revert_failure}"),
            stacklevel=3)
    if started.cold_boot_reason is not None:
        config.stash.setdefault(_COLD_BOOTS, []).append((nodeid, started.cold_boot_reason))
        warnings.warn(RestoreFallbackWarning(
            f"the {started.machine.config.name} guest was booted, not restored: "
            f"{started.cold_boot_reason}"), stacklevel=3)


def _function_of(nodeid: str) -> str:
    """Return the test function of ``nodeid``: without its parameters."""
    return nodeid.split("[", 1)[0]


def _mode_of(item: pytest.Item | None) -> DmaMode | None:
    callspec = getattr(item, "callspec", None)
    mode = callspec.params.get("qgpu_dma_mode") if callspec is not None else None
    return DmaMode(mode) if mode is not None else None


#: The test that runs after this one (on this pytest-xdist worker), if known.
_NEXT_ITEM = pytest.StashKey["pytest.Item | None"]()


#: Set once a test was interrupted (Ctrl-C, SIGTERM): the teardowns that follow,
#: at the session's end, stop guests without reading them.
_INTERRUPTED = pytest.StashKey[bool]()


def interrupted(config: pytest.Config) -> bool:
    """Whether the run was interrupted in a test (its guests are then stopped unread)."""
    return config.stash.get(_INTERRUPTED, False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, object, object]:
    """Let the ``qgpu_guest`` fixture know the next test; report a test interrupted.

    pytest reports nothing of a test interrupted (Ctrl-C, SIGTERM) in its setup
    or call, and runs its teardown only at the session's end, after the JUnit
    XML was written: it is reported failed here, and its guests are then
    stopped without being read (:func:`interrupted`).
    """
    item.stash[_NEXT_ITEM] = nextitem
    try:
        return (yield)
    except KeyboardInterrupt as exc:
        item.config.stash[_INTERRUPTED] = True
        _report_interrupted(item, exc)
        raise


def _report_interrupted(item: pytest.Item, exc: KeyboardInterrupt) -> None:
    """Report ``item`` failed in the phase ``exc`` interrupted (terminal, JUnit XML)."""
    setup = getattr(item, "qgpu_rep_setup", None)
    when: Literal["setup", "call", "teardown"] = \
        "setup" if setup is None else "call" if setup.passed and \
        not hasattr(item, "qgpu_rep_call") else "teardown"
    why = str(exc) or "KeyboardInterrupt (Ctrl-C)"
    report = pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1),
                               "failed", f"interrupted in its {when}: {why}", when,
                               user_properties=item.user_properties)
    item.ihook.pytest_runtest_logreport(report=report)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, None, None]:
    """Retire a mode's guest after the last test that uses it; report what retired guests found.

    With reverts, the guests kept for one in DMA modes no later test uses are stopped.
    """
    yield
    pool = item.config.stash.get(_POOL, None)
    if pool is None or nextitem is None:
        return                          # at the end, the session fixture retires them
    items = item.session.items
    later = [i for i in items[items.index(nextitem):]
             if "qgpu_guest" in getattr(i, "fixturenames", ())]
    if pool.use_reverts:
        pool.keep_only({m for i in later if (m := _mode_of(i)) is not None})
    mode = _mode_of(item)
    if mode is None or mode not in pool.machines:
        return
    if pool.shares(item, later[0] if later else None):
        return                          # the next test on a shared guest uses this one
    problem = pool.retire(mode)
    if problem:
        raise GuestCrashError(problem)


@pytest.fixture(scope="session")
def _qgpu_pool(pytestconfig: pytest.Config) -> Iterator[_Pool]:
    pool = _Pool(pytestconfig)
    pytestconfig.stash[_POOL] = pool
    yield pool
    pool.close(interrupted=interrupted(pytestconfig))


def _file_digest(path: Path) -> str:
    """Return the first 16 hex digits of ``path``'s SHA-256, or why there is none."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def run_properties(config: pytest.Config) -> dict[str, str]:
    """Return what a run's results depend on: QEMU, guest kernel and image, accelerator."""
    user = _brought(config)
    props = {"qgpu.accel": str(config.getoption("--qgpu-accel")),
             "qgpu.guest_scope": guest_scope(config)[0],
             "qgpu.modes": ",".join(sorted(selected_modes(config))),
             "qgpu.overlays": " ".join(map(str, user.overlays)),
             "qgpu.extra": " ".join([*user.append, *user.qemu_args])}
    try:
        qemu = paths.qemu_binary()
        props["qgpu.qemu"] = f"{qemu} sha256:{_file_digest(qemu)}"
    except SetupError as exc:
        props["qgpu.qemu"] = str(exc)
    try:
        k = kernels.resolve()
        props["qgpu.kernel"] = f"{k.name} {k.release} sha256:{_file_digest(k.kernel)}"
        initrd = initramfs.with_overlays(k.initrd, user.overlays)
        props["qgpu.image"] = f"{initrd} sha256:{_file_digest(initrd)}"
        props["qgpu.detectors"] = ",".join(k.detectors.names()) or "none"
    except SetupError as exc:
        props["qgpu.kernel"] = props["qgpu.image"] = str(exc)
    return props


#: The SIGTERM handler the rig replaced for the run, and the rig's: the first is
#: put back at the run's end if the second is still in place.
_SIGTERM_HANDLERS = pytest.StashKey[tuple[Any, Callable[[int, object], None]]]()


def _interrupter(config: pytest.Config) -> Callable[[int, object], None]:
    """Return a SIGTERM handler that ends the run as Ctrl-C does.

    Python's default for SIGTERM ends it where it stands: no teardown (QEMU's
    work folders left in /tmp), no summary, no JUnit XML. Once the run is
    interrupted (by this, or Ctrl-C in a test), a SIGTERM is only noted: raised
    in the cleanup, it would cut it short (pytest runs no finalizer after one
    that raised it); SIGKILL ends the run at once.
    """
    def interrupt(signum: int, frame: object) -> None:
        del frame
        if interrupted(config):
            return
        config.stash[_INTERRUPTED] = True
        raise KeyboardInterrupt(f"{signal.Signals(signum).name}: the run was asked to stop")
    return interrupt


def pytest_sessionstart(session: pytest.Session) -> None:
    """Handle SIGTERM as Ctrl-C; put :func:`run_properties` into the JUnit XML report.

    Not with ``--pdb`` (pytest then stops in the debugger on an interrupt), nor
    where something else handles SIGTERM already.
    """
    session.config.stash[_STARTED] = time.time()
    config = session.config
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and \
            not config.getoption("usepdb", False):
        ours = _interrupter(config)
        config.stash[_SIGTERM_HANDLERS] = (signal.signal(signal.SIGTERM, ours), ours)
    xml = session.config.stash.get(junitxml.xml_key, None)
    if xml is not None:
        for name, value in run_properties(session.config).items():
            xml.add_global_property(name, value)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put back the SIGTERM handler the run started with."""
    handlers = config.stash.get(_SIGTERM_HANDLERS, None)
    if handlers is not None and signal.getsignal(signal.SIGTERM) is handlers[1]:
        signal.signal(signal.SIGTERM, handlers[0])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    """Say where this run's artifact bundles are, and count restores that booted instead.

    A guest whose restore fails is booted instead (and counted here).
    """
    base = _artifact_base(config)
    started = config.stash.get(_STARTED, time.time())
    with contextlib.suppress(OSError):
        bundles = [d for d in base.glob("*/*") if d.is_dir() and d.stat().st_mtime >= started]
        if bundles:
            terminalreporter.section("qgpu: artifact bundles")
            terminalreporter.line(f"{len(bundles)} bundle(s) from this run in {base}/ (QEMU "
                                  "and console logs, dmesg, QMP events, device state):")
            for d in sorted(bundles)[:20]:
                terminalreporter.line(f"  {d}")
    counts = config.stash.get(_RESTORES, None)
    if counts:
        terminalreporter.section("qgpu: guests")
        ahead = f" ({counts['ahead']} ahead, while the test before ran)" \
            if counts.get("ahead") else ""
        reverted = f", {counts['reverted']} of them an earlier test's QEMU reverted in " \
            "place" if counts.get("reverted") else ""
        terminalreporter.line(
            f"{counts['guests']} guest(s) restored from templates{ahead}{reverted}; "
            f"{counts['templates made']} template(s) made in this run (a boot each), "
            f"the others found in {template.cache_dir()}")
        scope, why = guest_scope(config)
        terminalreporter.line(f"guest scope: {scope} ({why})")
    failures = config.stash.get(_REVERT_FAILURES, [])
    if failures:
        terminalreporter.section("qgpu: guests restored because a revert failed")
        for nodeid, why in failures:
            terminalreporter.line(f"{nodeid}: {why}")
    cold_boots = config.stash.get(_COLD_BOOTS, [])
    if not cold_boots:
        return
    terminalreporter.section("qgpu: guests booted because their restore failed")
    for nodeid, why in cold_boots:
        terminalreporter.line(f"{nodeid}: {why}")
    terminalreporter.line(f"{len(cold_boots)} cold boot(s) instead of a restore")


@pytest.fixture(scope="session", params=list(DmaMode), ids=[str(m) for m in DmaMode])
def qgpu_dma_mode(request: pytest.FixtureRequest) -> DmaMode:
    """Return the DMA mode a guest test runs in (each mode, by default)."""
    mode: DmaMode = request.param if isinstance(request.param, DmaMode) \
        else DmaMode(request.param)
    return mode


@pytest.fixture(scope="session")
def qgpu_kernel() -> GuestKernel:
    """Return the guest kernel under test (``--qgpu-kernel``)."""
    return kernels.resolve().check()


def check_guest_health(machine: GuestMachine) -> None:
    """Raise :class:`GuestCrashError` if the guest's kernel reported anything (qgpu.health)."""
    found = health.check(machine)
    if not found.ok:
        raise GuestCrashError("the guest kernel reported trouble:\n" + found.summary(),
                              found.reports.get("dmesg-report.txt", ""))


def _health_after(machine: GuestMachine, *, unload: bool, scan_leaks: bool = True,
                  settle_leaks: bool = False, clear_log: bool = False) -> health.Health:
    """Read the detectors after a test; a guest that cannot answer is a finding too."""
    try:
        return health.check(machine, unload=unload, scan_leaks=scan_leaks,
                            settle_leaks=settle_leaks, clear_log=clear_log)
    except (GuestCrashError, QgpuError, OSError) as exc:
        return health.Health(problems=[f"the health check failed: {exc}"])


def _late_health(machine: GuestMachine) -> health.Health:
    """Read what the kernel logged since the last check; a bad line is a finding."""
    try:
        out = machine.run(health.prepare_command(health.detectors(machine)), timeout=30,
                          watch_crashes=False).output
    except (GuestCrashError, QgpuError, OSError) as exc:
        return health.Health(problems=[f"reading the kernel log failed: {exc}"])
    late = health.late_reports(out)
    return health.Health(problems=["the kernel reported trouble after the last test's "
                                   "check (e.g. from a timer after the driver was "
                                   "unloaded):", *late[:20]] if late else [])


def _save_health(found: health.Health, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "health.txt").write_text("\n".join(found.problems) + "\n")
    for name, text in found.reports.items():
        (dest / name).write_text(text + "\n")


@pytest.fixture
def qgpu_guest(request: pytest.FixtureRequest, _qgpu_pool: _Pool, qgpu_dma_mode: DmaMode
               ) -> Iterator[GuestMachine]:
    """Yield a running guest in ``qgpu_dma_mode`` with the qgpu driver freshly loaded."""
    dma_mode = qgpu_dma_mode
    machine = _qgpu_pool.get(dma_mode, request.node.nodeid)
    windows = _qgpu_pool.windows.setdefault(dma_mode, [])
    # A fresh driver instance and an empty kernel log for every test.
    try:
        out = _qgpu_pool.begin_test(dma_mode, f"if {health.QGPU_LOADED}; then rmmod qgpu; fi"
                                       " && insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0")
    except QgpuError:
        # A kernel that reported trouble since the guest started, or whatever
        # broke the reload, would do it to every later test too. Its state goes
        # into the test's bundle first.
        with contextlib.suppress(QgpuError, OSError):
            machine.collect_artifacts(_artifact_dir(request.config, request.node))
        _qgpu_pool.drop(dma_mode)
        raise
    late = health.late_reports(out)
    if late:
        why = (f"after the check of {windows[-1].nodeid} (it arrived later, e.g. from a "
               "timer after the driver was unloaded)" if windows else
               "after the check of the guest's start, before this test")
        _qgpu_pool.drop(dma_mode)
        pytest.fail(f"the guest kernel reported trouble {why}:\n" + "\n".join(late[:20]))
    window = _Window(request.node.nodeid, health.parse_jiffies(out))
    windows.append(window)
    _qgpu_pool.prepare_next(request.node.stash.get(_NEXT_ITEM, None))
    yield machine
    if interrupted(request.config):
        # It may still run the test's command: no check, and a bundle of only what is
        # at hand (its logs go with its work folder).
        try:
            with contextlib.suppress(QgpuError, OSError):
                machine.collect_artifacts(_artifact_dir(request.config, request.node),
                                          files_only=True)
        finally:                        # (a second Ctrl-C, say)
            _qgpu_pool.drop(dma_mode)
        return
    _qgpu_pool.note_ssh_use(request.node, machine)
    failed = _failed(request.node)
    dest = _artifact_dir(request.config, request.node)
    if failed or request.config.getoption("--qgpu-keep-artifacts"):
        # Before the check below unloads the driver: the state the test left.
        with contextlib.suppress(QgpuError, OSError):
            machine.collect_artifacts(dest)
    problems: list[str] = []
    if machine.is_alive():
        # Unload: remove and exit paths run, DMA-API debugging counts what was left.
        # kmemleak needs two scans 5 s apart to report an object: after every test
        # only if asked, else once when the guest retires.
        per_test = request.config.getoption("--qgpu-kmemleak") == "test"
        found = _health_after(machine, unload=True, scan_leaks=per_test,
                              settle_leaks=per_test, clear_log=True)
        window.end = found.jiffies
        found.problems += _attribute(found, windows)
        if not found.ok:
            with contextlib.suppress(QgpuError, OSError):
                _save_health(found, dest)
                if not failed:
                    machine.collect_artifacts(dest)
            problems.append(f"guest unhealthy after the test: {found.summary()}")
        elif found.reports:     # a known kernel bug's report: kept, not failed
            with contextlib.suppress(QgpuError, OSError):
                _save_health(found, dest)
    if problems or failed or not machine.is_alive() or _qgpu_pool.scope == "test":
        # Never hand a suspect guest to the next test; a live one is checked for the
        # leaks of the tests before this one first. One that served a test that
        # passed may be reverted to its template for another.
        retired = _qgpu_pool.retire(dma_mode, reusable=not (problems or failed))
        if retired:
            problems.append(retired)
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def qgpu_inspector(qgpu_guest: GuestMachine) -> DeviceInspector:
    """Return the host-side inspector of the guest's qgpu0."""
    return qgpu_guest.inspector("qgpu0")


@pytest.fixture
def qgpu_make_guest(request: pytest.FixtureRequest) -> Iterator[Callable[..., GuestMachine]]:
    """Boot dedicated guests: ``qgpu_make_guest(DmaMode.IOMMU, qgpus=(QgpuSpec(...),), ...)``."""
    machines: list[GuestMachine] = []

    checked: set[int] = set()

    def _make(mode: DmaMode = DmaMode.DIRECT, *, check_health: bool = True,
              **kw: Any) -> GuestMachine:
        cfg = _base_config(request.config, mode, **kw)
        assert cfg.guest_kernel is not None
        machine = GuestMachine(cfg, ssh_key=cfg.guest_kernel.ssh_key)
        machines.append(machine)
        machine.start()
        if check_health:
            checked.add(id(machine))
            health.check_boot(machine)
        return machine

    yield _make
    _retire_own_guests(request, machines, checked=checked, leaks=True, graceful=True)


@pytest.fixture
def qgpu_restore_guest(request: pytest.FixtureRequest) -> Iterator[Callable[..., GuestMachine]]:
    """Start guests from saved templates (:mod:`qgpu.template`) instead of booting them.

    ``qgpu_restore_guest(mode, check_leaks=False, **MachineConfig fields)``; a
    template is made (one boot) the first time a configuration asks for it. The
    driver is not loaded. A restore that fails boots the guest instead, with a
    warning. kmemleak's settled scan (9 s) runs after the test only for guests
    restored with ``check_leaks``.
    """
    machines: list[GuestMachine] = []
    leak_checked: set[int] = set()

    def _restore(mode: DmaMode = DmaMode.DIRECT, *, check_leaks: bool = False,
                 **kw: Any) -> GuestMachine:
        cfg = _base_config(request.config, mode, **kw)
        machine = _restore_or_boot(request.config, cfg, request.node.nodeid)
        machines.append(machine)
        if check_leaks:
            leak_checked.add(id(machine))
        return machine

    yield _restore
    _retire_own_guests(request, machines, checked=None, leaks=leak_checked, graceful=False)


def _retire_own_guests(request: pytest.FixtureRequest, machines: list[GuestMachine], *,
                       checked: set[int] | None, leaks: bool | set[int],
                       graceful: bool) -> None:
    """Read the detectors of a test's own guests, keep their bundles, stop them.

    Guests in ``checked`` (all, if None) that are alive after a passing test are
    asked for the kernel's reports, and those in ``leaks`` (all, if True) for
    kmemleak's after a settled scan; any report fails the test.
    """
    unhealthy = []
    stop_only = interrupted(request.config)    # (a guest may still run the test's command)
    with contextlib.ExitStack() as stop_all:
        for machine in machines:
            # Every guest stops, whatever reading another raises (or an interrupt).
            stop_all.callback(machine.stop, graceful=graceful and not stop_only)
        for machine in machines if stop_only else ():
            with contextlib.suppress(QgpuError, OSError):
                machine.collect_artifacts(_artifact_dir(request.config, request.node) /
                                          machine.config.name, files_only=True)
        for machine in machines if not stop_only else ():
            dest = _artifact_dir(request.config, request.node) / machine.config.name
            failed = _failed(request.node)
            if not failed and (checked is None or id(machine) in checked) and \
                    machine.is_alive():
                # A test's own guest gets no later scan: let its reports show now.
                scan = leaks if isinstance(leaks, bool) else id(machine) in leaks
                found = _health_after(machine, unload=False, scan_leaks=scan,
                                      settle_leaks=scan)
                if not found.ok:
                    failed = True
                    unhealthy.append(f"{machine.config.name}: {found.summary()}")
                    with contextlib.suppress(QgpuError, OSError):
                        _save_health(found, dest)
            if failed or request.config.getoption("--qgpu-keep-artifacts"):
                with contextlib.suppress(QgpuError, OSError):
                    machine.collect_artifacts(dest)
    if unhealthy:
        pytest.fail("guest unhealthy after the test: " + "\n".join(unhealthy))


__all__ = ["GuestKernel", "QgpuSpec", "check_guest_health"]
