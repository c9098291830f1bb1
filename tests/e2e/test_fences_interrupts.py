"""Fences and interrupts, counted by the guest and by the device."""

from __future__ import annotations

import random
import time

from qgpu.abi import ABI
from qgpu.inspector import DeviceInspector
from qgpu.machine import GuestMachine

from .guestio import driver_stats, guest_irq_counts, put_file, tool

MiB = 1 << 20


def test_fences_agree_on_both_sides(qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
                                    rng: random.Random) -> None:
    """Each job's fence: returned by the ioctl, in the user page, the register, stat-last-fence."""
    insp = qgpu_inspector
    put_file(qgpu_guest, "/tmp/f.bin", rng.randbytes(70_000))
    ops = [f"fill {rng.randrange(0, 60 * MiB):#x} 8192 {rng.getrandbits(32):#x}",
           f"to-vram {rng.randrange(0, 60 * MiB):#x} /tmp/f.bin",
           f"from-vram {rng.randrange(0, 60 * MiB):#x} 70000 /tmp/g.bin",
           f"copy-vram {rng.randrange(0, 30 * MiB):#x} {rng.randrange(32 * MiB, 60 * MiB):#x} "
           f"100000",
           f"to-vram {rng.randrange(0, 60 * MiB):#x} /tmp/f.bin --sg"]
    # The driver numbers fences from 1 after each (re)load (the FENCE register keeps the
    # previous instance's last value until the first new fence lands).
    previous = 0
    for op in ops:
        fence = tool(qgpu_guest, op)["fence"]
        user_page = tool(qgpu_guest, "regs")["fence"]
        register = insp.register(ABI.REG_FENCE_LO) | insp.register(ABI.REG_FENCE_HI) << 32
        last = insp.stats()["last-fence"]
        assert fence > previous, f"{op}: fence {fence} does not advance past {previous}"
        assert fence == user_page == register == last, \
            f"{op}: ioctl fence {fence}, user page {user_page}, FENCE register {register}, " \
            f"stat-last-fence {last}"
        previous = fence


def test_interrupts_counted_on_both_sides(qgpu_guest: GuestMachine,
                                          qgpu_inspector: DeviceInspector,
                                          rng: random.Random) -> None:
    """Messages the device signalled == interrupts the guest took, per vector."""
    insp = qgpu_inspector
    irq0, host0, drv0 = (guest_irq_counts(qgpu_guest), insp.stats()["interrupts"],
                         driver_stats(qgpu_guest))
    assert set(irq0) == {"qgpu0-dma", "qgpu0-error", "qgpu0-misc"}, irq0
    jobs = 6
    for _ in range(jobs):
        tool(qgpu_guest, f"fill {rng.randrange(0, 60 * MiB):#x} 65536 {rng.getrandbits(32):#x}")
    soft = [tool(qgpu_guest, "raise-irq")["irq_count"] for _ in range(3)]
    assert soft == [soft[0], soft[0] + 1, soft[0] + 2], f"soft interrupt counts {soft}"
    # Every interrupt the device sent must arrive; give a late one a moment.
    deadline = time.monotonic() + 10 * qgpu_guest.config.timeout_scale
    while True:
        irq1, host1, drv1 = guest_irq_counts(qgpu_guest), insp.stats()["interrupts"], \
            driver_stats(qgpu_guest)
        guest_total = sum(irq1.values()) - sum(irq0.values())
        if guest_total == host1 - host0 or time.monotonic() > deadline:
            break
    assert guest_total == host1 - host0, \
        f"the device signalled {host1 - host0} interrupts, the guest took {guest_total}"
    assert irq1["qgpu0-misc"] - irq0["qgpu0-misc"] == 3 == drv1["irq_soft"] - drv0["irq_soft"]
    assert irq1["qgpu0-error"] == irq0["qgpu0-error"]
    assert irq1["qgpu0-dma"] - irq0["qgpu0-dma"] == drv1["irq_dma"] - drv0["irq_dma"]
    # Each job completed by interrupt or, if the interrupt was late, by polling.
    completions = (drv1["irq_dma"] - drv0["irq_dma"]) + \
        (drv1["poll_completions"] - drv0["poll_completions"])
    assert completions >= 1 and drv1["jobs"] - drv0["jobs"] == jobs
    assert drv1["timeouts"] == drv0["timeouts"]
