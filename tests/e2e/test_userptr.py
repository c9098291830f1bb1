"""User-pointer buffers (issue 14, item 5), seen from the host.

A user buffer is registered once (pinned long-term, DMA-mapped once) and then
copied to and from VRAM any number of times (``QGPU_IOCTL_COPY_USERPTR``); each
copy hands just its byte range to the device and back with ``dma_sync_*``. The
host checks the bytes in the VRAM backend and the device's trace of the DMA;
under ``swiotlb=force`` the driver's debugfs knob ``userptr_skip_sync`` leaves
the syncs out, and the stale bytes that appear show that the syncs are what
move the data. Removal with a buffer registered unpins it and fails the next
copy with ``-ENODEV``. The in-guest suite (``qgpu-test userptr_*``) covers the
arguments, RLIMIT_MEMLOCK accounting and release at process exit.
"""

from __future__ import annotations

from errno import ENODEV

import pytest

from qgpu import health
from qgpu.config import DmaMode
from qgpu.data import fill_pattern, fnv1a64
from qgpu.faults import FaultInjector
from qgpu.inspector import DeviceInspector
from qgpu.machine import GuestMachine

from .guestio import (
    TOOL,
    check_contiguous,
    driver_stats,
    tool,
    trace_mark,
    trace_since,
    wait_guest_file,
)
from .test_faults import ALL_MODES, BOUND, MakeGuest

PATTERN, BEFORE = 0x05E4_0001, 0xBEF0_4E00
LENGTH = 3 * 65536 + 123            # not a whole number of pages
PAGE = 4096


def _buffer(pattern: int, offset: int, length: int) -> tuple[bytes, bytes]:
    """The tool's buffer filled with ``pattern``: (the copy's range, the rest)."""
    size = (offset + length + PAGE - 1) // PAGE * PAGE
    data = fill_pattern(pattern, size)
    return data[offset:offset + length], data[:offset] + data[offset + length:]


def _skip_sync(guest: GuestMachine, on: bool) -> None:
    guest.run(f"for k in /sys/kernel/debug/qgpu/*/userptr_skip_sync; do echo {int(on)} > $k; "
              "done", check=True)


@ALL_MODES
def test_a_user_buffer_is_dmaed_to_and_from_vram(qgpu_guest: GuestMachine,
                                                qgpu_inspector: DeviceInspector) -> None:
    """Written by the CPU after registration, the bytes at an unaligned offset arrive
    in the VRAM backend, in as many DMA segments as the driver said; back from VRAM,
    the range holds what the device wrote and the rest of the buffer what the CPU
    wrote there (no sync beyond the copy's range)."""
    insp, off, offset = qgpu_inspector, 0x20_0000, 100
    host0, drv0, mark = insp.stats(), driver_stats(qgpu_guest), trace_mark(insp)
    res = tool(qgpu_guest, f"userptr-copy to-vram {off:#x} {LENGTH} {PATTERN:#x} "
                           f"--before {BEFORE:#x} --offset {offset}")
    want, _ = _buffer(PATTERN, offset, LENGTH)
    assert insp.vram_backend(off, LENGTH) == want, "VRAM backend after the user buffer's DMA"
    records = trace_since(insp, mark)
    check_contiguous(records, "copy-to-vram", off, LENGTH)
    assert res["segments"] == len(records), \
        f"the driver built {res['segments']} SG entries, the device traced {len(records)}"
    host1, drv1 = insp.stats(), driver_stats(qgpu_guest)
    assert host1["bytes-to-vram"] - host0["bytes-to-vram"] == LENGTH
    assert drv1["userptr_copies"] - drv0["userptr_copies"] == 1

    back, offset = off + 0x40_0000, PAGE + 7
    assert tool(qgpu_guest, f"fill {back:#x} {LENGTH} 0x600DF00D")["ok"]
    vram = insp.vram_backend(back, LENGTH)
    mark = trace_mark(insp)
    res = tool(qgpu_guest, f"userptr-copy from-vram {back:#x} {LENGTH} {PATTERN:#x} "
                           f"--before {BEFORE:#x} --offset {offset}")
    _, rest = _buffer(PATTERN, offset, LENGTH)
    assert int(res["checksum"], 16) == fnv1a64(vram), "the user buffer after the DMA"
    assert int(res["rest_checksum"], 16) == fnv1a64(rest), \
        "the bytes around the copy lost what the CPU wrote there"
    check_contiguous(trace_since(insp, mark), "copy-from-vram", back, LENGTH)
    drv2 = driver_stats(qgpu_guest)
    assert drv2["userptrs"] == 0 and drv2["userptr_pages"] == 0, drv2
    print(f"{res['buffer_segments']} segment(s) for the buffer, {res['segments']} copied")


@pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.SWIOTLB, DmaMode.DIRECT], indirect=True,
                         ids=str)
def test_the_syncs_are_what_move_the_bytes(qgpu_guest: GuestMachine,
                                           qgpu_inspector: DeviceInspector,
                                           qgpu_dma_mode: DmaMode) -> None:
    """Issue 14's proof: without the copy's syncs (userptr_skip_sync), a bounced DMA
    (swiotlb=force) reads the buffer as it was at registration and the CPU never sees
    what the device wrote; with them, both are right. Without bouncing (direct) the
    syncs move nothing: the same copies are right either way."""
    insp, off, length = qgpu_inspector, 0x30_0000, 2 * PAGE + 300
    bounced = qgpu_dma_mode is DmaMode.SWIOTLB
    assert tool(qgpu_guest, f"fill {off + 0x10_0000:#x} {length} 0x600DF00D")["ok"]
    vram = insp.vram_backend(off + 0x10_0000, length)
    results = {}
    for skip in (True, False):
        _skip_sync(qgpu_guest, skip)
        tool(qgpu_guest, f"userptr-copy to-vram {off:#x} {length} {PATTERN:#x} "
                         f"--before {BEFORE:#x}")
        back = tool(qgpu_guest, f"userptr-copy from-vram {off + 0x10_0000:#x} {length} "
                                f"{PATTERN:#x} --before {BEFORE:#x}")
        results[skip] = (insp.vram_backend(off, length), int(back["checksum"], 16))
    _skip_sync(qgpu_guest, False)
    fresh, _ = _buffer(PATTERN, 0, length)          # what the CPU wrote last
    stale, _ = _buffer(BEFORE, 0, length)           # the buffer at registration
    assert results[False] == (fresh, fnv1a64(vram)), "with the syncs"
    if bounced:
        assert results[True][0] == stale, \
            "without the sync for the device, the device should read the stale bounce buffer"
        assert results[True][1] == fnv1a64(fresh), \
            "without the sync for the CPU, the CPU should still see its own bytes"
    else:
        assert results[True] == results[False], "without bouncing, syncs move nothing"


@pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.SWIOTLB, DmaMode.DIRECT], indirect=True,
                         ids=str)
def test_a_short_dma_into_a_user_buffer_leaves_the_rest_to_the_cpu(
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
        faults: FaultInjector) -> None:
    """Review finding: a copy into a registered buffer handed its range to the device
    for reading only, so under swiotlb the bytes the device did not write (a job that
    ends early) came back as the bounce buffer's, from registration. The host
    truncates the DMA (x-fault-truncate-nth: half the bytes, success reported): the
    first half holds VRAM's bytes, the second what the CPU wrote, bounced or not."""
    insp, back, length = qgpu_inspector, 0x50_0000, 2 * PAGE + 300
    assert tool(qgpu_guest, f"fill {back:#x} {length} 0x600DF00D")["ok"]
    vram = insp.vram_backend(back, length)
    injected = faults.faults_injected()
    faults.truncate()
    res = tool(qgpu_guest, f"userptr-copy from-vram {back:#x} {length} {PATTERN:#x} "
                           f"--before {BEFORE:#x}")
    assert faults.faults_injected() == injected + 1, "the truncation did not fire"
    mine, _ = _buffer(PATTERN, 0, length)
    half = length // 2
    assert int(res["checksum"], 16) == fnv1a64(vram[:half] + mine[half:]), \
        "the bytes the device did not write are not the CPU's"


def test_removal_unpins_a_registered_buffer(qgpu_restore_guest: MakeGuest) -> None:
    """A process holds a registered buffer (1 MiB, VmPin 1024 kB) when the host
    unplugs the device: removal unmaps and unpins it (VmPin 0 while the process
    lives), its next copy fails with -ENODEV, and nothing leaks."""
    g = qgpu_restore_guest(DmaMode.DIRECT, ssh=False, check_leaks=True)
    health.check_boot(g)
    g.run("insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0", check=True)
    tag, length = "/tmp/qgpu-userptr-held", 1 << 20
    g.run(f"rm -f {tag}.*; ( {TOOL} userptr-copy from-vram 0 {length} 0x1234 "
          f"--ready {tag}.ready --go {tag}.go > {tag}.out 2>&1; touch {tag}.done ) "
          "</dev/null >/dev/null 2>&1 &", check=True)

    def vm_pinned_kb() -> int:
        out = g.run("grep VmPin /proc/$(pidof qgpu-tool)/status", check=True).output
        return int(out.split()[1])

    wait_guest_file(g, f"{tag}.ready")
    assert vm_pinned_kb() == length // 1024
    assert int(tool(g, "stats", over="console")["userptr_pages"]) == length // PAGE
    FaultInjector.for_machine(g).device_del()
    assert g.run("test -e /dev/qgpu0").status != 0
    assert vm_pinned_kb() == 0, "removal left the buffer pinned"
    g.run(f"touch {tag}.go", check=True)
    wait_guest_file(g, f"{tag}.done")
    out = g.run(f"cat {tag}.out", check=True).output
    assert '"ok":false' in out and f'"errno":{ENODEV}' in out, out
    # The module unloads once the process is gone: nothing holds it.
    g.run("rmmod qgpu", check=True, timeout=BOUND)
