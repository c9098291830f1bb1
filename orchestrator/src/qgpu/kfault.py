"""Kernel fault injection into the qgpu driver: its allocations and kernel calls fail in turn.

This uses the kernel's own fault-injection framework, on kernels built with it (the
``debug`` kernel: ``FAILSLAB``, ``FAIL_PAGE_ALLOC``, ``FAIL_FUNCTION``,
``FAULT_INJECTION_STACKTRACE_FILTER``):

- **the driver's allocations**: slab and page allocations (``failslab``,
  ``fail_page_alloc``, whatever their GFP flags) fail only when qgpu.ko's code is
  among the innermost :data:`STACK_DEPTH` frames of their call stack: the driver's
  own allocations and those of the helpers it calls directly (devres, sg tables,
  kvmalloc, SRCU). Deeper down is the kernel's own machinery, whose error paths are
  not the driver's to test -- failing them here found three kernel bugs: a
  use-after-free in the ACPI interpreter below ``pci_enable_device()``, a warning
  when the IRQ core removes ``/proc/irq`` entries it failed to create, and a double
  unmap in the PCI MSI-X setup (the last is fixed in the rig's kernels:
  ``images/kconfig/patches``);
- **the driver's kernel calls**: pinning and DMA-mapping user pages, DMA-coherent
  allocations and interrupt setup go through small wrappers the driver marks with
  ``ALLOW_ERROR_INJECTION`` (``guest-driver/qgpu_inject.c``); ``fail_function``
  fails them as if the kernel had run out (:data:`DRIVER_POINTS`);
- **systematically**: ``fail-nth`` fails the N-th of all those points one process
  reaches. ``qgpu-tool`` arms it from ``QGPU_FAIL_NTH=N`` and reports whether the
  kernel got that far; :meth:`KernelFaultInjector.sweep` runs an operation with
  N = 1, 2, ... until a run reaches fewer than N points, so each point fails once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qgpu.errors import GuestError, SetupError
from qgpu.machine import GuestMachine

DEBUGFS = "/sys/kernel/debug"
FAULT_TYPES = ("failslab", "fail_page_alloc", "fail_function")
#: The driver's injectable wrappers, by the kind of value that means failure
#: (ALLOW_ERROR_INJECTION's ERRNO: -ENOMEM is returned; NULL: NULL).
DRIVER_POINTS = {"qgpu_pin_user_pages": "ERRNO", "qgpu_dma_map_user_sgt": "ERRNO",
                 "qgpu_dma_map_user_page": "ERRNO", "qgpu_dma_alloc": "NULL",
                 "qgpu_alloc_irq_vectors": "ERRNO", "qgpu_request_irq": "ERRNO"}
#: The errno each ERRNO point returns when it fails, as the kernel call it wraps does
#: when it runs out: ENOMEM, but dma_map_sgtable() says EIO when it cannot map (swiotlb
#: full, IOVA space exhausted), which the driver must not pass on as a device error.
DRIVER_POINT_ERRNOS = {"qgpu_dma_map_user_sgt": 5}
TOOL = "/opt/qgpu/bin/qgpu-tool"
ENOMEM = 12
_RUN_MARK = "=====qgpu-kfault-run "
#: A sweep stops here: an operation with more fault points than this is a finding.
MAX_POINTS = 400
#: How many innermost frames of an allocation's stack are searched for qgpu.ko: a
#: driver kmalloc is 4 frames deep, a devres or sg-table allocation 5 to 7; the
#: IRQ core's /proc entries 9, MSI descriptors 10, the ACPI interpreter 20 and more.
STACK_DEPTH = 8


@dataclass(frozen=True)
class FaultRun:
    """One run of an operation with its N-th fault point failed."""

    nth: int
    status: int                 #: qgpu-tool's exit status
    result: dict[str, Any]      #: its JSON result ({"ok": ..., "errno": ...})
    injected: bool              #: whether the kernel reached the N-th point
    output: str

    @property
    def errno(self) -> int | None:
        """Return the errno the operation failed with (None if it succeeded)."""
        value = self.result.get("errno")
        return int(value) if value is not None else None


def _json_lines(output: str) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


class KernelFaultInjector:
    """Fail the qgpu driver's kernel fault points in a running guest, one at a time."""

    def __init__(self, machine: GuestMachine) -> None:
        """Wrap ``machine``; nothing changes in the guest until :meth:`armed`."""
        self.machine = machine

    def _sh(self, command: str, *, timeout: float = 60.0) -> str:
        res = self.machine.run(command, timeout=timeout)
        if res.status != 0:
            raise GuestError(f"kernel fault injection: {command!r} failed "
                             f"(status {res.status}): {res.output}")
        return res.output

    def module_text(self) -> tuple[int, int]:
        """Return [start, end) of qgpu.ko's memory, from its text section on.

        ``/proc/modules`` gives the module's total size (text, data, read-only data,
        allocated apart); counting it from the start of the text may cover more than
        the text, but in the guest's module area nothing else runs code: every
        other driver is built into the kernel.
        """
        text = self._sh("cat /sys/module/qgpu/sections/.text").strip()
        line = self._sh("grep '^qgpu ' /proc/modules").split()
        start, size = int(text, 16), int(line[1])
        if not start:
            raise SetupError("the guest hides module addresses (kptr_restrict); run as root")
        return start, start + size

    @contextmanager
    def armed(self) -> Iterator[KernelFaultInjector]:
        """Scope every fault type to qgpu.ko, add the driver's points; undo on exit."""
        missing = self._sh(f"for t in {' '.join(FAULT_TYPES)}; do "
                           f"[ -d {DEBUGFS}/$t ] || echo $t; done").split()
        if missing:
            raise SetupError(f"the guest kernel lacks fault injection ({', '.join(missing)} "
                             "missing in debugfs): use the debug kernel (--qgpu-kernel debug)")
        start, end = self.module_text()
        setup = []
        for t in FAULT_TYPES:
            d = f"{DEBUGFS}/{t}"
            # fail-nth alone decides; probability 0 keeps random failures off.
            setup += [f"echo 0 > {d}/probability", f"echo -1 > {d}/times",
                      f"echo 1 > {d}/verbose", f"echo {start} > {d}/require-start",
                      f"echo {end} > {d}/require-end",
                      f"echo {STACK_DEPTH} > {d}/stacktrace-depth"]
        setup += [f"echo N > {DEBUGFS}/failslab/ignore-gfp-wait",
                  f"echo N > {DEBUGFS}/fail_page_alloc/ignore-gfp-wait",
                  f"echo N > {DEBUGFS}/fail_page_alloc/ignore-gfp-highmem",
                  f"echo 0 > {DEBUGFS}/fail_page_alloc/min-order",
                  f"echo > {DEBUGFS}/fail_function/inject"]
        for fn, kind in DRIVER_POINTS.items():
            setup.append(f"echo {fn} > {DEBUGFS}/fail_function/inject")
            if kind == "ERRNO":     # as running out would (the default: -EINVAL)
                err = DRIVER_POINT_ERRNOS.get(fn, ENOMEM)
                setup.append(f"echo {(1 << 64) - err} > "
                             f"{DEBUGFS}/fail_function/{fn}/retval")
        try:
            self._sh(" && ".join(setup))
            yield self
        finally:
            self.disarm()

    def disarm(self) -> None:
        """Remove the driver's points and the scoping (idempotent)."""
        if not self.machine.is_alive():
            return
        undo = [f"echo > {DEBUGFS}/fail_function/inject"]
        for t in FAULT_TYPES:
            undo += [f"echo 0 > {DEBUGFS}/{t}/require-start",
                     f"echo {(1 << 64) - 1} > {DEBUGFS}/{t}/require-end"]
        self.machine.run("; ".join(undo), timeout=30)

    def fail_once(self, function: str, err: int, tool_args: str, *,
                  timeout: float = 60.0) -> FaultRun:
        """Run ``qgpu-tool TOOL_ARGS`` with the driver's ``function`` failing once with ``-err``.

        ``function`` is one of the :data:`DRIVER_POINTS` that return an errno. fail-nth 1
        counts that point only: the slab and page-allocation types are scoped to an
        address range that holds no code, and fail_function injects nothing else.
        """
        if DRIVER_POINTS.get(function) != "ERRNO":
            raise ValueError(f"{function!r} is not one of the driver's errno fault points")
        with self.armed():
            only = [f"echo 1 > {DEBUGFS}/{t}/require-start && echo 2 > {DEBUGFS}/{t}/require-end"
                    for t in FAULT_TYPES if t != "fail_function"]
            d = f"{DEBUGFS}/fail_function"
            self._sh(" && ".join([*only, f"echo > {d}/inject", f"echo {function} > {d}/inject",
                                  f"echo {(1 << 64) - err} > {d}/{function}/retval"]))
            return self.run(tool_args, 1, timeout=timeout)

    def injectable(self) -> list[str]:
        """Return the driver's functions that fail_function can fail."""
        out = self._sh(f"cat {DEBUGFS}/fail_function/injectable")
        return [m[1] for m in re.finditer(r"^(\S+)\s+\[qgpu\]", out, re.M)]

    def run(self, tool_args: str, nth: int, *, timeout: float = 60.0) -> FaultRun:
        """Run ``qgpu-tool TOOL_ARGS`` once, with its ``nth`` fault point failed."""
        res = self.machine.run(f"QGPU_FAIL_NTH={nth} {TOOL} {tool_args}", timeout=timeout)
        return self._parse(tool_args, nth, res.status, res.output)

    def sweep(self, tool_args: str, *, before: str = "", timeout: float = 600.0
              ) -> list[FaultRun]:
        """Fail each fault point of ``qgpu-tool TOOL_ARGS`` in turn; return every run.

        The loop runs in the guest (one console round trip, not one per point);
        ``before`` is a shell command run before each attempt, without fault
        injection (e.g. unbinding the device before a bind). The last run reached
        fewer points than its N: it ran without a failure.
        """
        loop = (f"n=1; while [ $n -le {MAX_POINTS} ]; do {before}{'; ' if before else ''}"
                f"out=$(QGPU_FAIL_NTH=$n {TOOL} {tool_args} 2>&1); rc=$?; "
                f"echo \"{_RUN_MARK}$n $rc\"; echo \"$out\"; "
                "case $out in *'\"fail_nth_injected\":true'*) ;; *) break ;; esac; "
                "n=$((n + 1)); done")
        res = self.machine.run(loop, timeout=timeout)
        runs = []
        for chunk in res.output.split(_RUN_MARK)[1:]:
            head, _, body = chunk.partition("\n")
            nth, status = (int(x) for x in head.split())
            runs.append(self._parse(tool_args, nth, status, body))
        if not runs:
            raise GuestError(f"qgpu-tool {tool_args}: the fault sweep printed nothing: "
                             f"{res.output[-2000:]}")
        if runs[-1].injected:
            raise GuestError(f"qgpu-tool {tool_args}: more than {MAX_POINTS} fault points; "
                             "the sweep stopped")
        return runs

    def stack_of(self, tool_args: str, nth: int) -> str:
        """Run ``qgpu-tool TOOL_ARGS`` with its ``nth`` point failed; return that point's stack.

        The kernel prints the stack of the failed point (``verbose`` 2) into its log,
        where it stays: a caller that goes on must clear the log (``dmesg -c``) once it
        has checked it.
        """
        types = " ".join(FAULT_TYPES)
        mark = f"qgpu-kfault-stack-{nth}"
        self._sh(f"for t in {types}; do echo 2 > {DEBUGFS}/$t/verbose; done; "
                 f"echo {mark} > /dev/kmsg")
        try:
            self.run(tool_args, nth)
        finally:
            self._sh(f"for t in {types}; do echo 1 > {DEBUGFS}/$t/verbose; done")
        log = self.machine.run("dmesg", timeout=30, watch_crashes=False).output
        return log.split(mark, 1)[-1]

    def _parse(self, tool_args: str, nth: int, status: int, output: str) -> FaultRun:
        lines = _json_lines(output)
        report = [o for o in lines if "fail_nth_injected" in o]
        results = [o for o in lines if "ok" in o]
        if not report or report[-1]["fail_nth_injected"] is None or not results:
            raise GuestError(f"qgpu-tool {tool_args} with fault point {nth} failed: status "
                             f"{status}, no result or fail-nth report (killed by a "
                             f"signal?):\n{output[-2000:]}")
        return FaultRun(nth=nth, status=status, result=results[-1],
                        injected=bool(report[-1]["fail_nth_injected"]), output=output)
