"""The driver under load (issue 10): ``qgpu-stress`` in the guest, per DMA mode.

Two processes of two threads each run random COPY_USER, buffer-object,
fill, VRAM-copy, mmap and fork() operations for a bounded time, verifying
every result they can, while SIGALRM arrives every 300 us, workers are
stopped and continued, the function is reset and the device removed and
rescanned. The run is seeded (the seed is in the report; ``qgpu-stress
--seed`` repeats its choices). On the debug kernel it runs 60 s per mode
and the ``guest`` fixture fails the test on any KASAN, lockdep, DMA-API,
kmemleak or UBSAN report; on the others it runs 10 s.
"""

from __future__ import annotations

from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine

from .guestio import driver_stats, parse_json_line
from .test_faults import ALL_MODES

SEED = 20261130
OPS = ("copy_user", "bo", "fill_async", "copy_vram", "mmap", "fork")


@ALL_MODES
def test_stress(guest: GuestMachine, guest_kernel: GuestKernel) -> None:
    seconds = 60 if guest_kernel.detectors.heavy else 10
    args = (f"--seconds {seconds} --seed {SEED} --procs 2 --threads 2 --signals "
            "--stop-cont --reset-every-ms 1500 --remove-every-ms 6000")
    res = guest.ssh_run(f"/opt/qgpu/bin/qgpu-stress {args}",
                        timeout=(seconds + 120) * guest.config.timeout_scale)
    rep = parse_json_line(res.output, f"qgpu-stress {args}")
    assert rep["integrity_failures"] == 0 and rep["late_writes"] == 0, \
        f"data went wrong (seed {SEED}): {rep['first_failure']}\n{rep}"
    assert rep["stuck_workers"] == 0 and rep["crashed_workers"] == 0, rep
    assert rep["ok"] is True and res.status == 0, res.output
    # Everything ran, and so did the disturbances.
    assert all(rep["ops"][op] > 0 for op in OPS), rep
    assert rep["resets"] > 0 and rep["removals"] > 0 and rep["stops"] > 0, rep
    assert rep["alarms_in_workers"] > 0, f"no SIGALRM reached a worker thread: {rep}"
    # Nothing is left behind once the workers are gone.
    st = driver_stats(guest)
    left = {k: st[k] for k in ("pinned_pages", "bos", "bo_bytes", "vma_vram",
                               "vma_vram_lazy", "vma_regs", "vma_bo")}
    assert not any(left.values()), f"left behind after the run: {left}"
