"""The driver under load (issue 10): ``qgpu-stress`` in the guest, per DMA mode.

Two processes of two threads each run random COPY_USER, buffer-object,
fill, VRAM-copy, mmap and fork() operations for a bounded time, verifying
every result they can, while SIGALRM arrives every 300 us, workers are
stopped and continued and the function is reset. The run has two halves: in the
first the device is unplugged and plugged in again from the host (QMP
``device_del``/``device_add``), in the second it is removed and rescanned
through sysfs in the guest. The second half starts only after the host's last
cycle has finished and the guest has probed the device again: Linux 6.12 frees
the pci_dev of an ACPI eject under a concurrent sysfs remove (KASAN:
use-after-free in pci_stop_bus_device), a PCI core race outside the driver.
Keeping them apart by time alone was not enough: on a loaded debug guest an
eject asked for in the first 40 % of the run was still being handled when the
sysfs removals began (CI of 2026-12-02). The run is seeded (the seed is in the
report; ``qgpu-stress --seed`` repeats its choices). On the debug kernel it runs
2 x 15 s per mode and the ``qgpu_guest`` fixture fails the test on any KASAN,
lockdep, DMA-API, kmemleak or UBSAN report; on the others 2 x 5 s.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from qgpu.config import DmaMode
from qgpu.faults import FaultInjector
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine

from .guestio import check_descriptors_accounted, driver_stats, idle_stats, parse_json_line
from .test_faults import ALL_MODES, BOUND

SEED = 20261130
OPS = ("copy_user", "bo", "fill_async", "copy_vram", "mmap", "fork")


class HostHotplug:
    """Unplug and plug the qgpu back in from the host, every ``period`` s, in a thread.

    No cycle starts after ``until`` s, so the device the run ends with has served
    the workers for a while and the leak check afterwards looks at a used instance.
    """

    def __init__(self, faults: FaultInjector, period: float, until: float) -> None:
        self.faults, self.period, self.until = faults, period, until
        self.cycles = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qmp-hotplug", daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self.until
        try:
            while not self._stop.wait(self.period) and time.monotonic() < end:
                self.faults.device_del()
                time.sleep(0.2)
                self.faults.device_add()
                self.cycles += 1
        except BaseException as exc:    # re-raised in the test's thread
            self.error = exc

    def __enter__(self) -> HostHotplug:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        # device_del waits up to 30 s (times the kernel's timeout scale).
        self._thread.join(timeout=60 * self.faults.timeout_scale)
        if exc_type is None:
            assert not self._thread.is_alive(), "the hotplug thread did not stop"


def _stress(guest: GuestMachine, seconds: int, options: str) -> dict[str, Any]:
    """Run ``qgpu-stress`` for SECONDS in the guest; check what its report says of the data."""
    args = f"--seconds {seconds} {options}"
    res = guest.ssh_run(f"/opt/qgpu/bin/qgpu-stress {args}",
                        timeout=(seconds + 120) * guest.config.timeout_scale)
    rep = parse_json_line(res.output, f"qgpu-stress {args}")
    print(f"qgpu-stress {args}: {rep}")
    assert rep["integrity_failures"] == 0 and rep["late_writes"] == 0, \
        f"data went wrong ({args}): {rep['first_failure']}\n{rep}"
    assert rep["stuck_workers"] == 0 and rep["crashed_workers"] == 0, rep
    assert rep["ok"] is True and res.status == 0, res.output
    assert rep["alarms_in_workers"] > 0, f"no SIGALRM reached a worker thread: {rep}"
    return rep


def _wait_for_qgpu0(guest: GuestMachine) -> None:
    deadline = time.monotonic() + BOUND * guest.config.timeout_scale
    while guest.run("test -c /dev/qgpu0").status != 0:
        assert time.monotonic() < deadline, "qgpu0 did not come back after device_add"
        time.sleep(0.2)


@ALL_MODES
def test_stress(qgpu_guest: GuestMachine, qgpu_kernel: GuestKernel,
                qgpu_dma_mode: DmaMode) -> None:
    # On the debug kernel: 2 or 3 host hotplug cycles in the first half's 12 s,
    # then 4 sysfs removals, 3 s apart, from 3.75 s into the second half.
    half = 15 if qgpu_kernel.detectors.heavy else 5
    common = "--procs 2 --threads 2 --signals --stop-cont --reset-every-ms 1500"
    with HostHotplug(FaultInjector.for_machine(qgpu_guest), period=half / 4,
                     until=half * 0.8) as hotplug:
        unplugged = _stress(qgpu_guest, half, f"{common} --seed {SEED}")
    # Leaving the block waited for the host's last cycle; the guest may still be
    # probing the device it plugged back in.
    if hotplug.error is not None:
        raise hotplug.error
    assert hotplug.cycles > 0, "the host never unplugged the device"
    _wait_for_qgpu0(qgpu_guest)
    removals = f"--remove-every-ms {half * 200} --remove-from-ms {half * 250}"
    removed = _stress(qgpu_guest, half, f"{common} --seed {SEED + 2} {removals}")
    _wait_for_qgpu0(qgpu_guest)
    print(f"host hotplug cycles: {hotplug.cycles}")
    assert removed["removals"] > 0, removed
    # Everything ran, and so did the disturbances, over the two halves.
    assert all(unplugged["ops"][op] + removed["ops"][op] > 0 for op in OPS), (unplugged, removed)
    assert unplugged["resets"] + removed["resets"] > 0, (unplugged, removed)
    assert unplugged["stops"] + removed["stops"] > 0, (unplugged, removed)
    # Nothing is left behind once the workers are gone.
    st = driver_stats(qgpu_guest)
    left = {k: st[k] for k in ("pinned_pages", "bos", "bo_bytes", "vma_vram",
                               "vma_vram_lazy", "vma_regs", "vma_bo")}
    assert not any(left.values()), f"left behind after the run: {left}"


@ALL_MODES
def test_stress_statistics_agree_with_the_device(qgpu_guest: GuestMachine,
                                                 qgpu_kernel: GuestKernel,
                                                 qgpu_dma_mode: DmaMode) -> None:
    """The driver counts every descriptor the device retired, aborted or dropped.

    A removal starts a new driver instance with new statistics while the
    device keeps its own, so this run has signals, stops and function resets
    but no removal, and compares the two between idle points.
    """
    seconds = 8 if qgpu_kernel.detectors.heavy else 5
    args = (f"--seconds {seconds} --seed {SEED + 1} --procs 2 --threads 2 --signals "
            "--stop-cont --reset-every-ms 700")
    insp = qgpu_guest.inspector()
    before = idle_stats(qgpu_guest, insp)
    res = qgpu_guest.ssh_run(f"/opt/qgpu/bin/qgpu-stress {args}",
                             timeout=(seconds + 120) * qgpu_guest.config.timeout_scale)
    rep = parse_json_line(res.output, f"qgpu-stress {args}")
    assert rep["ok"] is True and res.status == 0 and rep["resets"] > 0, res.output
    deltas = check_descriptors_accounted(before, idle_stats(qgpu_guest, insp))
    print(f"qgpu-stress: {rep}; descriptors: {deltas}")
    assert deltas["driver_descriptors"] > 0, deltas
