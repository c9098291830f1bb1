"""Races between user space and the driver: each test reproduces one
deterministically (``qgpu-race`` in the guest, with a driver test knob that
holds a call inside the racy window where timing alone would hit it rarely)
and checks what the driver guarantees.

On the debug kernel, the ``guest`` fixture also fails a test whose run made
KASAN, lockdep, DMA-API debugging or kmemleak report anything.
"""

from __future__ import annotations

from typing import Any

from qgpu.config import MiB
from qgpu.faults import FaultInjector
from qgpu.machine import GuestMachine

from .guestio import parse_json_line
from .test_faults import ALL_MODES, faults  # noqa: F401  (faults: a fixture)

RACE = "/opt/qgpu/bin/qgpu-race"
PARAMS = "/sys/module/qgpu/parameters"


def race(guest: GuestMachine, args: str, *, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``qgpu-race ARGS`` in the guest; return its JSON report (it must have completed)."""
    res = guest.ssh_run(f"{RACE} {args}", timeout=timeout * guest.config.timeout_scale)
    obj = parse_json_line(res.output, f"qgpu-race {args}")
    assert obj.get("ok") is True and res.status == 0, \
        f"qgpu-race {args} did not complete (status {res.status}): {res.output}"
    return obj


@ALL_MODES
def test_remove_zaps_a_mapping_made_while_it_ran(guest: GuestMachine) -> None:
    """Review item 1: an mmap(2) whose driver part ran before remove, but whose
    VMA the core linked only after remove zapped the device's mappings, kept
    PTEs to buffer-object pages remove then freed (a use-after-free from user
    space). The driver holds each mmap 300 ms after its part
    (``mmap_race_delay_us``) and the device is removed 100 ms into it: remove
    must wait for that mapping and zap it, so that reading it faults."""
    tries = 3
    guest.run(f"echo 300000 > {PARAMS}/mmap_race_delay_us", check=True)
    try:
        res = race(guest, f"remove-vs-mmap {tries} --remove-after-us 100000")
    finally:
        guest.run(f"echo 0 > {PARAMS}/mmap_race_delay_us")
    # Every try's mapping was made during remove (the window was hit) ...
    assert res["mmaps"] == tries, res
    # ... and none of them can still be read after remove returned.
    assert res["tries_with_stale_mapping"] == 0, \
        f"a buffer-object mapping survived remove (its memory is freed): {res}"


DELAY_PER_MIB_NS = 40_000_000           # the engine moves 1 MiB per 40 ms (virtual time)


@ALL_MODES
def test_signal_does_not_cut_a_copy_short(guest: GuestMachine,
                                          faults: FaultInjector) -> None:  # noqa: F811
    """Review item 2: SIGALRM 60 ms into a synchronous 16 MiB COPY_USER from
    VRAM made the ioctl return -EINTR without a fence while the device went
    on writing into the caller's buffer (under swiotlb, at the later unmap).
    A synchronous copy now returns only when the device is done with the
    buffer: 0, the fence, every byte copied, nothing written afterwards."""
    faults.dma_delay(DELAY_PER_MIB_NS)
    try:
        res = race(guest, f"signal-copy {16 * MiB} 60 300")
    finally:
        faults.dma_delay(0)
    assert res["alarms"] == 1 and res["call_ms"] > 60, \
        f"the signal did not arrive during the call: {res}"
    assert res["bytes_changed_after_return"] == 0, \
        f"the device wrote into the buffer after the ioctl returned: {res}"
    assert res["result"] == 0 and res["fence"] > 0 and res["copied_all"], res


@ALL_MODES
def test_signal_does_not_lose_a_fill_fence(guest: GuestMachine,
                                           faults: FaultInjector) -> None:  # noqa: F811
    """The same for a synchronous VRAM_OP: it completes and returns its fence."""
    faults.dma_delay(DELAY_PER_MIB_NS)
    try:
        res = race(guest, f"signal-fill {32 * MiB} 60")
    finally:
        faults.dma_delay(0)
    assert res["alarms"] == 1 and res["call_ms"] > 60, res
    assert res["result"] == 0 and res["fence"] > 0 and res["hw_status"] == 0, res

