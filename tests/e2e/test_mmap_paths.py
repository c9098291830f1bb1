"""User space maps VRAM (eagerly and lazily faulted), the register page and buffer objects.

The host checks every byte written through a mapping in the VRAM memory backend
(and through the BAR with QMP), writes VRAM itself for the guest to read back,
and compares the register page with the device's registers. While mappings are
live, ``/proc/PID/smaps`` and the PAT memtype list must show what the driver
promises, at the BAR addresses QEMU reports.
"""

from __future__ import annotations

import random

import pytest

from qgpu.abi import ABI
from qgpu.config import DmaMode
from qgpu.data import fill_pattern as pattern_bytes
from qgpu.data import fnv1a64
from qgpu.inspector import DeviceInspector
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine

from .guestio import (
    MMAP_REGS,
    MMAP_VRAM_LAZY,
    PAGE,
    SUITE,
    VM_DEVICE_FLAGS,
    DmaPlatform,
    dma_platform,
    driver_stats,
    first_diff,
    hold_tool,
    parse_json_line,
    pat_entries,
    tool,
    trace_mark,
    trace_since,
)

MiB = 1 << 20


def _pages(offset: int, length: int) -> int:
    return (offset + length - 1) // PAGE - offset // PAGE + 1


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_mmap_writes_reach_vram(qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
                                rng: random.Random, lazy: bool) -> None:
    """Seeded random patterns written through a VRAM mapping, compared byte for byte."""
    insp = qgpu_inspector
    region = 96 * 1024
    base = rng.randrange(0, 60 * MiB)
    model = bytearray(insp.vram_backend(base, region))
    drv0, host0, mark = driver_stats(qgpu_guest), insp.stats(), trace_mark(insp)
    faults = 0
    for _ in range(6):
        off = rng.randrange(0, region - 1)
        n = rng.randrange(1, min(24_000, region - off) + 1)
        pat = rng.getrandbits(32)
        tool(qgpu_guest, f"mmap-write {base + off:#x} {n} {pat:#x}{' --lazy' if lazy else ''}")
        model[off:off + n] = pattern_bytes(pat, n)
        faults += _pages(base + off, n)
    got = insp.vram_backend(base, region)
    assert got == bytes(model), f"VRAM backend after mmap writes: {first_diff(got, bytes(model))}"
    assert insp.vram_via_bar(base, region) == bytes(model), "BAR view != backend"
    drv1, host1 = driver_stats(qgpu_guest), insp.stats()
    assert drv1["lazy_faults"] - drv0["lazy_faults"] == (faults if lazy else 0), \
        "one fault per touched page of a lazy mapping, none for an eager one"
    assert drv1["vma_vram"] == drv1["vma_vram_lazy"] == 0, "mappings left behind"
    assert host1["descriptors"] == host0["descriptors"] and trace_mark(insp) == mark, \
        "CPU writes through a mapping must not involve the DMA engine"


def test_host_vram_writes_seen_through_every_read_path(qgpu_guest: GuestMachine,
                                                       qgpu_inspector: DeviceInspector,
                                                       rng: random.Random) -> None:
    """The host writes VRAM; the guest reads it by eager/lazy mmap, kernel CPU and DMA."""
    insp = qgpu_inspector
    assert insp.vram is not None
    for _ in range(3):
        n = rng.randrange(1, 4097)
        off = rng.randrange(0, 64 * MiB - n)
        data = rng.randbytes(n)
        insp.vram.write(off, data)
        for opt in ("", " --lazy"):
            hexed = tool(qgpu_guest, f"mmap-read {off:#x} {n}{opt}")["hex"]
            assert bytes.fromhex(hexed) == data, \
                f"mmap-read{opt} at {off:#x}+{n}: {first_diff(bytes.fromhex(hexed), data)}"
    n = rng.randrange(200_000, 400_000)
    off = rng.randrange(0, 64 * MiB - n)
    data = rng.randbytes(n)
    insp.vram.write(off, data)
    want = fnv1a64(data)
    for via in ("mmap", "lazy", "cpu", "dma"):
        got = int(tool(qgpu_guest, f"checksum {off:#x} {n} --via {via}")["checksum"], 16)
        assert got == want, f"checksum via {via} of host-written VRAM: {got:#x} != {want:#x}"


def test_register_page_mirrors_the_device(qgpu_guest: GuestMachine,
                                          qgpu_inspector: DeviceInspector,
                                          rng: random.Random) -> None:
    insp = qgpu_inspector
    access0 = insp.stats()["access-errors"]
    fence = tool(qgpu_guest, f"fill {rng.randrange(0, 60 * MiB):#x} 4096 {rng.getrandbits(32):#x}"
                 )["fence"]
    regs = tool(qgpu_guest, "regs")          # read through the mmap of the user page
    host_fence = insp.register(ABI.REG_FENCE_LO) | insp.register(ABI.REG_FENCE_HI) << 32
    assert regs["id"] == ABI.ID_MAGIC == insp.register(ABI.REG_USER_ID) \
        == insp.register(ABI.REG_ID)
    assert regs["fence"] == fence == host_fence == insp.stats()["last-fence"], \
        f"fence: user page {regs['fence']}, ioctl {fence}, register {host_fence}"
    assert regs["ring_head"] == insp.register(ABI.REG_RING_HEAD) \
        == insp.register(ABI.REG_USER_RING_HEAD)
    assert regs["engine_status"] == insp.register(ABI.REG_ENGINE_STATUS)
    assert regs["engine_status"] & ABI.ENGINE_STATUS_ENABLED
    assert regs["scratch"] == insp.register(ABI.REG_USER_SCRATCH)
    assert insp.stats()["access-errors"] == access0, "a register access was refused"


def test_mappings_vmflags_and_pat_memtypes(qgpu_guest: GuestMachine,
                                           qgpu_inspector: DeviceInspector,
                                           qgpu_kernel: GuestKernel,
                                           rng: random.Random) -> None:
    """While mapped: VM_PFNMAP|VM_IO|VM_DONTEXPAND|VM_DONTDUMP, WC VRAM, UC- registers.

    No mapping reserves a memtype of its own (x86 PAT's VM_PAT, which Linux 6.12
    can warn about when a reset's zap meets fork(): test_fork_during_a_zap): each
    page takes the BAR-wide reservation's, WC for VRAM (the driver's io_mapping),
    UC- for the registers (their ioremap). io_mapping_map_user() (kernels with
    CONFIG_IO_MAPPING) does not track; without it, a one-page eager VRAM mapping is
    mapped on first access, as the register page always is (bar_refaults).
    """
    insp = qgpu_inspector
    bars = insp.bars()
    vram_bar, regs_bar = bars[ABI.BAR_VRAM], bars[ABI.BAR_REGS]
    eager_page, lazy_page = rng.randrange(0, 16384) * PAGE, rng.randrange(0, 16384) * PAGE
    user_page = regs_bar.address + ABI.REGS_USER_PAGE
    wc_page = (vram_bar.address + eager_page, vram_bar.address + eager_page + PAGE,
               "write-combining")
    uc_page = (user_page, user_page + PAGE, "uncached-minus")
    before = pat_entries(qgpu_guest)
    assert (vram_bar.address, vram_bar.address + vram_bar.size, "write-combining") in before, \
        f"the driver's WC io_mapping of the VRAM BAR is not in the PAT list: {before}"
    drv0 = driver_stats(qgpu_guest)
    # A page of hex overflows stdio's buffer: each mmap-read blocks while still mapped.
    with hold_tool(qgpu_guest, "regs") as regs, \
            hold_tool(qgpu_guest, f"mmap-read {eager_page:#x} {PAGE}") as eager, \
            hold_tool(qgpu_guest, f"mmap-read {lazy_page:#x} {PAGE} --lazy") as lazy:
        # /proc/PID/maps shows each mapping's mmap offset (uapi QGPU_MMAP_*).
        for held, offset, what in ((regs, MMAP_REGS, "registers"), (eager, eager_page, "VRAM"),
                                   (lazy, MMAP_VRAM_LAZY + lazy_page, "lazy VRAM")):
            maps = list(held.smaps_flags().values())
            assert len(maps) == 1, f"{what}: want one device mapping, got {maps}"
            mapping, flags = maps[0]
            assert mapping.end - mapping.start == PAGE and mapping.offset == offset, mapping
            assert flags >= VM_DEVICE_FLAGS, f"{what}: VmFlags {sorted(flags)} lack " \
                f"{sorted(VM_DEVICE_FLAGS - flags)}"
            assert not flags & {"ex", "me"}, f"{what}: executable mapping allowed: {flags}"
        during = pat_entries(qgpu_guest)
        assert wc_page not in during and uc_page not in during, \
            f"a mapping reserved a PAT memtype of its own: {during}"
        regs_wide = (regs_bar.address, regs_bar.address + regs_bar.size, "uncached-minus")
        assert regs_wide in during, \
            f"the driver's UC- ioremap of the register BAR is not in the PAT list: {during}"
        drv1 = driver_stats(qgpu_guest)
        assert (drv1["vma_regs"], drv1["vma_vram"], drv1["vma_vram_lazy"]) == (1, 1, 1)
        assert drv1["lazy_faults"] - drv0["lazy_faults"] == 1
        assert drv1["bar_refaults"] - drv0["bar_refaults"] == \
            1 + (0 if qgpu_kernel.io_mapping else 1), "register page, one-page eager VRAM"
    assert regs.release()["id"] == ABI.ID_MAGIC
    assert bytes.fromhex(eager.release()["hex"]) == insp.vram_backend(eager_page, PAGE)
    assert bytes.fromhex(lazy.release()["hex"]) == insp.vram_backend(lazy_page, PAGE)
    after = pat_entries(qgpu_guest)
    assert wc_page not in after and uc_page not in after, "PAT entries outlive the mappings"
    drv2 = driver_stats(qgpu_guest)
    assert (drv2["vma_regs"], drv2["vma_vram"], drv2["vma_vram_lazy"]) == (0, 0, 0)


def _xorshift_bytes(n: int, state: int = 0x9E3779B97F4A7C15) -> bytes:
    """qgpu-test's rnd_fill() from its initial state (each in-guest test starts there)."""
    out = bytearray(n)
    mask = (1 << 64) - 1
    for i in range(n):
        state ^= (state << 13) & mask
        state ^= state >> 7
        state ^= (state << 17) & mask
        out[i] = state & 0xFF
    return bytes(out)


def _check_bo_bus(mode: DmaMode, bus: int, length: int, platform: DmaPlatform) -> None:
    in_ram = any(lo <= bus and bus + length <= hi for lo, hi in platform.ram)
    if mode.translated:
        assert not any(lo <= bus < hi for lo, hi in platform.ram), \
            f"{mode}: the buffer object's bus address {bus:#x} is in System RAM, not an IOVA"
    else:
        # Coherent memory is never bounced, even with swiotlb=force.
        assert in_ram, f"{mode}: the buffer object's bus address {bus:#x} is not in RAM"


def test_buffer_object_mmap_path(qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
                                 qgpu_dma_mode: DmaMode) -> None:
    """qgpu-test bo_basic writes a BO through its mapping and DMAs it; the host checks it.

    bo_basic fills a 3-page BO with rnd_fill() through mmap, copies it to VRAM at 1 MiB,
    DMA-fills 5000 bytes at 2 MiB and copies them back into the BO at offset 777.
    """
    insp = qgpu_inspector
    platform = dma_platform(qgpu_guest)
    mark = trace_mark(insp)
    res = qgpu_guest.ssh_run(f"{SUITE} bo_basic", timeout=60)
    result = parse_json_line(res.output.splitlines()[0], "qgpu-test bo_basic")
    assert result["result"] == "pass" and res.status == 0, f"bo_basic: {res.output}"
    size = 3 * PAGE
    want = _xorshift_bytes(size)
    got = insp.vram_backend(1 * MiB, size)
    assert got == want, f"VRAM after the BO upload: {first_diff(got, want)}"
    assert insp.vram_backend(2 * MiB, 5000) == pattern_bytes(0x01020304, 5000)
    records = trace_since(insp, mark)
    summary = [(r["op"], r["vram-offset"], r["length"], r["status"]) for r in records]
    assert summary == [("copy-to-vram", 1 * MiB, size, "ok"), ("fill", 2 * MiB, 5000, "ok"),
                       ("copy-from-vram", 2 * MiB, 5000, "ok")], summary
    up, down = records[0]["bus-addr"], records[2]["bus-addr"]
    assert down == up + 777, f"the download ({down:#x}) is not at BO offset 777 of the " \
        f"upload's buffer ({up:#x})"
    _check_bo_bus(qgpu_dma_mode, up, size, platform)
    drv = driver_stats(qgpu_guest)
    assert drv["bos"] == drv["vma_bo"] == 0, "buffer objects left behind"
