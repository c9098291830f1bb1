"""A qgpu driver in Python, over qtest: the device-level test and benchmark rig.

:func:`start_qgpu` boots a q35 machine under qtest with a qgpu behind a
pcie-root-port, programs bus numbers and BARs the way firmware would, and
returns a :class:`QgpuDevice` for register access, the DMA ring, MSI-X and
the device's QOM statistics. Guest RAM and (optionally) VRAM sit on shared
files, so tests can check what DMA wrote through a path that bypasses the
device.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qgpu.abi import ABI
from qgpu.errors import DeviceError, QgpuError
from qgpu.pci import (
    CAP_ID_MSIX,
    PciFunction,
    enable_ecam,
    setup_root_port,
)
from qgpu.qtest import QtestMachine
from qgpu.shm import SharedMemory

QOM_PATH = "/machine/peripheral/qgpu0"
ROOT_PORT_SLOT = 2
MMIO_WINDOW = (0xC000_0000, 0x0020_0000)     # BAR0 and BAR4
REGS_ADDR = 0xC000_0000
MSIX_ADDR = 0xC010_0000
VRAM_ADDR = 0x40_0000_0000                   # 256 GiB: 64-bit prefetchable window
GUEST_HEAP = 0x0010_0000                     # guest RAM handed out from 1 MiB up


class GuestMemory:
    """Bump allocator over guest RAM, with host-side access to the bytes."""

    def __init__(self, qt: QtestMachine, start: int, end: int) -> None:
        """Hand out guest-physical addresses in [start, end)."""
        self.qt, self.next, self.end = qt, start, end

    def alloc(self, size: int, align: int = 64) -> int:
        """Return the address of ``size`` fresh bytes aligned to ``align``."""
        addr = (self.next + align - 1) // align * align
        if addr + size > self.end:
            raise QgpuError(f"guest RAM exhausted allocating {size} bytes; start the "
                            "machine with more memory")
        self.next = addr + size
        return addr

    def write(self, addr: int, data: bytes) -> None:
        """Store ``data`` in guest RAM (directly through the shared file if any)."""
        if self.qt.ram is not None:
            self.qt.ram.write(addr, data)
        else:
            self.qt.write(addr, data)

    def read(self, addr: int, length: int) -> bytes:
        """Load ``length`` bytes of guest RAM."""
        if self.qt.ram is not None:
            return self.qt.ram.read(addr, length)
        return self.qt.read(addr, length)


@dataclass
class Ring:
    """The descriptor ring as the Python driver tracks it."""

    base: int
    entries: int
    tail: int = 0
    submitted: list[int] = field(default_factory=list)


class QgpuDevice:
    """Register, ring and interrupt access to one qgpu function."""

    def __init__(self, qt: QtestMachine, fn: PciFunction, *, vram: SharedMemory | None) -> None:
        """Wrap an already enumerated function (see :func:`start_qgpu`)."""
        self.qt = qt
        self.fn = fn
        self.vram_shm = vram
        self.mem = GuestMemory(qt, GUEST_HEAP, qt.memory)
        self.ring: Ring | None = None
        self.vram_size = self.reg(ABI.REG_VRAM_SIZE_LO) | self.reg(ABI.REG_VRAM_SIZE_HI) << 32

    # -- registers ----------------------------------------------------------

    def reg(self, offset: int) -> int:
        """Read the 32-bit register at BAR0 ``offset``."""
        return self.qt.readl(REGS_ADDR + offset)

    def set_reg(self, offset: int, value: int) -> None:
        """Write the 32-bit register at BAR0 ``offset``."""
        self.qt.writel(REGS_ADDR + offset, value)

    # -- VRAM ----------------------------------------------------------------

    def vram_read(self, offset: int, length: int) -> bytes:
        """Read VRAM through BAR2 (a guest-physical access via QEMU)."""
        return self.qt.read(VRAM_ADDR + offset, length)

    def vram_write(self, offset: int, data: bytes) -> None:
        """Write VRAM through BAR2."""
        self.qt.write(VRAM_ADDR + offset, data)

    def vram_host(self, offset: int, length: int) -> bytes:
        """Read VRAM through the host mapping of its memory backend."""
        if self.vram_shm is None:
            raise QgpuError("this qgpu has no shared VRAM backend; start it with shared_vram=True")
        return self.vram_shm.read(offset, length)

    # -- DMA ring ------------------------------------------------------------

    def setup_ring(self, entries: int = 64, *, enable: bool = True) -> Ring:
        """Allocate a ring in guest RAM, program it and enable the engine."""
        base = self.mem.alloc(entries * ABI.DESC_SIZE, align=4096)
        self.mem.write(base, bytes(entries * ABI.DESC_SIZE))
        self.ring_at(base, enable=False)
        self.set_reg(ABI.REG_RING_SIZE, entries)
        self.ring = Ring(base, entries)
        if enable:
            self.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)
        return self.ring

    def ring_at(self, bus_address: int, *, enable: bool = True) -> None:
        """Point the engine at the ring through ``bus_address``, and enable the engine.

        The bus address is the ring's guest address, or an IOVA that an IOMMU
        maps onto it.
        """
        self.set_reg(ABI.REG_RING_BASE_LO, bus_address & 0xFFFF_FFFF)
        self.set_reg(ABI.REG_RING_BASE_HI, bus_address >> 32)
        if enable:
            self.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)

    @staticmethod
    def desc(**fields: int) -> bytes:
        """Encode a descriptor; fields not given are zero."""
        return ABI.struct("qgpu_desc").pack(**fields)

    def sg_list(self, segments: Iterable[tuple[int, int]]) -> tuple[int, int]:
        """Write an SG list of (addr, len) to guest RAM; return (address, count)."""
        layout = ABI.struct("qgpu_sg_entry")
        data = b"".join(layout.pack(addr=a, len=n) for a, n in segments)
        addr = self.mem.alloc(max(len(data), 1), align=16)
        self.mem.write(addr, data)
        return addr, len(data) // ABI.SG_ENTRY_SIZE

    def submit(self, *descs: bytes, doorbell: bool = True) -> list[int]:
        """Write descriptors at the tail, then ring the doorbell; return their indices."""
        ring = self._ring()
        indices = []
        for d in descs:
            self.mem.write(ring.base + ring.tail * ABI.DESC_SIZE, d)
            indices.append(ring.tail)
            ring.tail = (ring.tail + 1) % ring.entries
        ring.submitted.extend(indices)
        if doorbell:
            self.set_reg(ABI.REG_DOORBELL, ring.tail)
        return indices

    def _ring(self) -> Ring:
        if self.ring is None:
            raise QgpuError("no ring: call setup_ring() first")
        return self.ring

    def status(self, index: int) -> int:
        """Return the status word the device wrote back into descriptor ``index``."""
        ring = self._ring()
        raw = self.mem.read(ring.base + index * ABI.DESC_SIZE + ABI.DESC_OFF_STATUS, 4)
        return int.from_bytes(raw, "little")

    def wait_idle(self, timeout: float = 30.0) -> int:
        """Poll until the engine is neither busy nor enabled-with-work; return ENGINE_STATUS."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.reg(ABI.REG_ENGINE_STATUS)
            if not st & ABI.ENGINE_STATUS_BUSY or st & ABI.ENGINE_STATUS_HALTED:
                return st
            if time.monotonic() > deadline:
                raise DeviceError(f"DMA engine still busy after {timeout:.0f} s "
                                  f"(ENGINE_STATUS=0x{st:x}, HEAD={self.reg(ABI.REG_RING_HEAD)})")

    def engine_reset(self, timeout: float = 30.0) -> None:
        """Write ENGINE_RESET and wait until ENGINE_STATUS drops BUSY.

        A driver must wait too: the aborted descriptor's status write is
        posted, and done only when BUSY clears.
        """
        self.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
        self.wait_idle(timeout)

    def run(self, *descs: bytes, timeout: float = 30.0) -> list[int]:
        """Submit, wait for the engine to go idle, return each descriptor's error code.

        Raises :class:`DeviceError` if a descriptor was not retired.
        """
        indices = self.submit(*descs)
        self.wait_idle(timeout)
        codes = []
        for i in indices:
            st = self.status(i)
            if not st & ABI.DESC_STATUS_DONE:
                raise DeviceError(f"descriptor {i} not retired (status 0x{st:x}, "
                                  f"ENGINE_STATUS 0x{self.reg(ABI.REG_ENGINE_STATUS):x})")
            codes.append(st & ABI.DESC_STATUS_ERR_MASK)
        return codes

    # -- MSI-X ---------------------------------------------------------------

    def msix_enable(self, vectors: Sequence[int] | None = None) -> dict[int, int]:
        """Enable MSI-X; point each vector at a guest RAM slot; return vector -> slot.

        A delivered message writes the vector's data (0x5147_0000 + vector)
        into its slot, which the test reads back and clears.
        """
        cap = self.fn.capabilities().get(CAP_ID_MSIX)
        if cap is None:
            raise DeviceError("qgpu has no MSI-X capability (started with msix=off?)")
        slots = {}
        table = MSIX_ADDR + (self.fn.read32(cap + 4) & ~7)
        for vec in vectors if vectors is not None else range(ABI.MSIX_VECTORS):
            slot = self.mem.alloc(4, align=16)
            self.mem.write(slot, bytes(4))
            entry = table + 16 * vec
            self.qt.writel(entry, slot & 0xFFFF_FFFF)
            self.qt.writel(entry + 4, slot >> 32)
            self.qt.writel(entry + 8, 0x5147_0000 + vec)
            self.qt.writel(entry + 12, 0)       # unmasked
            slots[vec] = slot
        ctrl = self.fn.read16(cap + 2)
        self.fn.write16(cap + 2, (ctrl | 0x8000) & ~0x4000)   # enable, no function mask
        return slots

    def msix_fired(self, slot: int, vector: int) -> bool:
        """Return whether ``vector``'s message landed in ``slot``; clear the slot."""
        raw = int.from_bytes(self.mem.read(slot, 4), "little")
        self.mem.write(slot, bytes(4))
        return raw == 0x5147_0000 + vector

    # -- QOM -----------------------------------------------------------------

    def qom(self, prop: str) -> Any:
        """Read a QOM property of the device (stat-*, dma-trace, ...)."""
        assert self.qt.qmp is not None
        return self.qt.qmp.qom_get(QOM_PATH, prop)

    def stat(self, name: str) -> int:
        """Read statistic ``stat-<name>``."""
        return int(self.qom(f"stat-{name}"))

    def dma_trace(self) -> list[dict[str, Any]]:
        """Return the device's DMA trace records, oldest first."""
        trace: list[dict[str, Any]] = self.qom("dma-trace")
        return trace


def qgpu_args(props: str = "", *, vram_path: str | None = None,
              vram_size: int | None = None) -> list[str]:
    """Return the QEMU arguments for a root port with qgpu (id qgpu0) behind it."""
    args = ["-device", f"pcie-root-port,id=qgpu-rp0,chassis=1,bus=pcie.0,addr={ROOT_PORT_SLOT}"]
    dev = "qgpu,id=qgpu0,bus=qgpu-rp0"
    if vram_path is not None:
        args += ["-object", f"memory-backend-file,id=qgpu-vram,size={vram_size},"
                 f"mem-path={vram_path},share=on"]
        dev += ",memdev=qgpu-vram"
    elif vram_size is not None:
        dev += f",vram-size={vram_size}"
    if props:
        dev += "," + props
    return [*args, "-device", dev]


def enumerate_qgpu(qt: QtestMachine, vram_size: int) -> PciFunction:
    """Do what firmware does: ECAM on, root port bus numbers and windows, qgpu BARs.

    Also needed again after a system reset, which clears all of it.
    """
    enable_ecam(qt)
    port = PciFunction(qt, 0, ROOT_PORT_SLOT)
    setup_root_port(port, 1, MMIO_WINDOW, (VRAM_ADDR, max(vram_size, 1 << 20)))
    fn = PciFunction(qt, 1, 0)
    if (fn.vendor_id, fn.device_id) != (ABI.PCI_VENDOR_ID, ABI.PCI_DEVICE_ID):
        raise DeviceError(f"no qgpu at 01:00.0 (found {fn.vendor_id:04x}:{fn.device_id:04x})")
    for index, addr in ((ABI.BAR_REGS, REGS_ADDR), (ABI.BAR_VRAM, VRAM_ADDR),
                        (ABI.BAR_MSIX, MSIX_ADDR)):
        bar = fn.bar(index)
        if bar is None:
            if index == ABI.BAR_MSIX:
                continue            # msix=off
            raise DeviceError(f"qgpu BAR{index} is not implemented")
        fn.set_bar(bar, addr)
    fn.enable(memory=True, master=True)
    return fn


def start_qgpu(props: str = "", *, vram_size: int = 64 << 20, shared_vram: bool = True,
               memory: int = 512 << 20, extra_args: Sequence[str] = (),
               timeout: float = 30.0) -> QgpuDevice:
    """Start a qtest machine with one enumerated qgpu; the caller stops ``dev.qt``."""
    qt = QtestMachine(extra_args, memory=memory, timeout=timeout)
    vram = None
    try:
        if shared_vram:
            vram = qt.shared_memory(vram_size, "vram")
            qt.extra_args[:0] = qgpu_args(props, vram_path=str(vram.path), vram_size=vram_size)
        else:
            qt.extra_args[:0] = qgpu_args(props, vram_size=vram_size)
        qt.start()
        fn = enumerate_qgpu(qt, vram_size)
        return QgpuDevice(qt, fn, vram=vram)
    except BaseException:
        qt.stop()
        raise
