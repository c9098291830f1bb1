"""The driver under load (issue 10): ``qgpu-stress`` in the guest, per DMA mode.

Two processes of two threads each run random COPY_USER, buffer-object,
fill, VRAM-copy, mmap and fork() operations for a bounded time, verifying
every result they can, while SIGALRM arrives every 300 us, workers are
stopped and continued, the function is reset, the device is unplugged and
plugged in again from the host (QMP ``device_del``/``device_add``) in the first
40 % of the run, and removed and rescanned through sysfs in the guest from 75 %
on. (Not both at once: Linux 6.12 frees the pci_dev of an ACPI eject under a
concurrent sysfs remove -- KASAN: use-after-free in pci_stop_bus_device --, a PCI
core race outside the driver.) The run is seeded (the seed is in the report; ``qgpu-stress
--seed`` repeats its choices). On the debug kernel it runs 30 s per mode
and the ``qgpu_guest`` fixture fails the test on any KASAN, lockdep, DMA-API,
kmemleak or UBSAN report; on the others it runs 10 s.
"""

from __future__ import annotations

import threading
import time

import pytest

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

    No cycle starts after ``until`` s: the guest's own sysfs removals come later,
    and the device the run ends with has served the workers for a while, so the
    leak check afterwards looks at a used instance.
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


@ALL_MODES
def test_stress(qgpu_guest: GuestMachine, qgpu_kernel: GuestKernel, qgpu_dma_mode: DmaMode,
                request: pytest.FixtureRequest) -> None:
    if qgpu_dma_mode is DmaMode.VIRTIO_IOMMU:
        # The same round trip went wrong here too, once (stock, CI of 2026-12-01:
        # "copy_user round trip differs (vram 0x38a11e1 len 183773)", 3 removals,
        # 6 resets): issue 11's open bug, not a flake of this test.
        request.applymarker(VIRTIO_IOMMU_RESET_ROUND_TRIP)
    # On the debug kernel: 2 or 3 host hotplug cycles in the first 12 s, 3 sysfs
    # removals from 22.5 s (10 s apart from the last eject, as with 60 s before).
    seconds = 30 if qgpu_kernel.detectors.heavy else 10
    args = (f"--seconds {seconds} --seed {SEED} --procs 2 --threads 2 --signals "
            f"--stop-cont --reset-every-ms 1500 --remove-every-ms {seconds * 1000 // 10} "
            f"--remove-from-ms {seconds * 750}")
    with HostHotplug(FaultInjector.for_machine(qgpu_guest), period=seconds / 8,
                     until=seconds * 0.4) as hotplug:
        res = qgpu_guest.ssh_run(f"/opt/qgpu/bin/qgpu-stress {args}",
                                 timeout=(seconds + 120) * qgpu_guest.config.timeout_scale)
    if hotplug.error is not None:
        raise hotplug.error
    # Plugged in at the end: wait for the guest to have probed it again.
    deadline = time.monotonic() + BOUND * qgpu_guest.config.timeout_scale
    while qgpu_guest.run("test -c /dev/qgpu0").status != 0:
        assert time.monotonic() < deadline, "qgpu0 did not come back after device_add"
        time.sleep(0.2)
    rep = parse_json_line(res.output, f"qgpu-stress {args}")
    print(f"qgpu-stress: {rep}; host hotplug cycles: {hotplug.cycles}")
    assert rep["integrity_failures"] == 0 and rep["late_writes"] == 0, \
        f"data went wrong (seed {SEED}): {rep['first_failure']}\n{rep}"
    assert rep["stuck_workers"] == 0 and rep["crashed_workers"] == 0, rep
    assert rep["ok"] is True and res.status == 0, res.output
    # Everything ran, and so did the disturbances.
    assert all(rep["ops"][op] > 0 for op in OPS), rep
    assert rep["resets"] > 0 and rep["removals"] > 0 and rep["stops"] > 0, rep
    assert hotplug.cycles > 0, "the host never unplugged the device"
    assert rep["alarms_in_workers"] > 0, f"no SIGALRM reached a worker thread: {rep}"
    # Nothing is left behind once the workers are gone.
    st = driver_stats(qgpu_guest)
    left = {k: st[k] for k in ("pinned_pages", "bos", "bo_bytes", "vma_vram",
                               "vma_vram_lazy", "vma_regs", "vma_bo")}
    assert not any(left.values()), f"left behind after the run: {left}"


#: A known failure, under investigation (issue 11): under virtio-iommu only,
#: with function resets, about one run in four ends with a copy_user round
#: trip whose bytes differ (the device as of the start of that session too;
#: direct and intel-iommu passed 5 of 5; without resets 8 of 8 passed).
VIRTIO_IOMMU_RESET_ROUND_TRIP = pytest.mark.xfail(
    reason="issue 11: under virtio-iommu, a copy_user round trip across function "
           "resets sometimes differs (about 1 run in 4); not yet explained", strict=False)


@ALL_MODES
def test_stress_statistics_agree_with_the_device(qgpu_guest: GuestMachine,
                                                 qgpu_kernel: GuestKernel,
                                                 qgpu_dma_mode: DmaMode,
                                                 request: pytest.FixtureRequest) -> None:
    """The driver counts every descriptor the device retired, aborted or dropped.

    A removal starts a new driver instance with new statistics while the
    device keeps its own, so this run has signals, stops and function resets
    but no removal, and compares the two between idle points.
    """
    if qgpu_dma_mode is DmaMode.VIRTIO_IOMMU:
        request.applymarker(VIRTIO_IOMMU_RESET_ROUND_TRIP)
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
