"""PCI configuration, BARs and bridges, programmed by hand over qtest.

Under qtest no firmware runs, so nothing has assigned bus numbers or BARs:
:class:`PciBus` enables q35's ECAM window, and the helpers here program root
ports and device BARs the way firmware would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qgpu.errors import QgpuError
from qgpu.qtest import QtestMachine

ECAM_BASE = 0xB000_0000          # q35's customary MMCONFIG base
Q35_PCIEXBAR = 0x60              # MCH register enabling ECAM
PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_CAPABILITY_LIST = 0x34
PCI_BAR0 = 0x10
PCI_BAR_MEM_TYPE_64 = 0x4
PCI_BAR_MEM_PREFETCH = 0x8
PCI_INTERRUPT_PIN = 0x3D

CAP_ID_PM = 0x01
CAP_ID_MSI = 0x05
CAP_ID_EXP = 0x10
CAP_ID_MSIX = 0x11
EXT_CAP_ID_ERR = 0x0001


def standard_capabilities(read8: Callable[[int], int],
                          read16: Callable[[int], int]) -> dict[int, int]:
    """Map capability ID -> config offset, walking the list through ``read8``/``read16``.

    The one walker for a function read over qtest (:class:`PciFunction`) and for
    a config space read whole (:class:`~qgpu.inspector.DeviceInspector`). The
    first of a repeated ID wins; a malformed list (a loop) ends after 48 entries.
    """
    caps: dict[int, int] = {}
    if not read16(PCI_STATUS) & PCI_STATUS_CAP_LIST:
        return caps
    pos = read8(PCI_CAPABILITY_LIST) & ~3
    for _ in range(48):
        if not pos:
            break
        caps.setdefault(read8(pos), pos)
        pos = read8(pos + 1) & ~3
    return caps


def extended_capabilities(read32: Callable[[int], int]) -> dict[int, int]:
    """Map extended capability ID -> config offset (from 0x100), bounded as above."""
    caps: dict[int, int] = {}
    pos = 0x100
    for _ in range(480):
        header = read32(pos)
        if header in (0, 0xFFFF_FFFF):
            break
        caps.setdefault(header & 0xFFFF, pos)
        pos = header >> 20
        if pos < 0x100:
            break
    return caps


@dataclass(frozen=True)
class Bar:
    """A decoded base address register."""

    index: int
    size: int
    is_64bit: bool
    prefetchable: bool


class PciFunction:
    """One function's configuration space, through ECAM."""

    def __init__(self, qt: QtestMachine, bus: int, dev: int, fn: int = 0) -> None:
        """Address bus:dev.fn."""
        self.qt, self.bus, self.dev, self.fn = qt, bus, dev, fn

    def __repr__(self) -> str:
        return f"PciFunction({self.bus:02x}:{self.dev:02x}.{self.fn})"

    def _addr(self, offset: int) -> int:
        return ECAM_BASE | self.bus << 20 | self.dev << 15 | self.fn << 12 | offset

    def read8(self, offset: int) -> int:
        """Read a config byte."""
        return self.qt.readb(self._addr(offset))

    def read16(self, offset: int) -> int:
        """Read a config word."""
        return self.qt.readw(self._addr(offset))

    def read32(self, offset: int) -> int:
        """Read a config dword."""
        return self.qt.readl(self._addr(offset))

    def write8(self, offset: int, value: int) -> None:
        """Write a config byte."""
        self.qt.writeb(self._addr(offset), value)

    def write16(self, offset: int, value: int) -> None:
        """Write a config word."""
        self.qt.writew(self._addr(offset), value)

    def write32(self, offset: int, value: int) -> None:
        """Write a config dword."""
        self.qt.writel(self._addr(offset), value)

    @property
    def vendor_id(self) -> int:
        """Return the vendor ID (0xffff: no function here)."""
        return self.read16(0)

    @property
    def device_id(self) -> int:
        """Return the device ID."""
        return self.read16(2)

    def capabilities(self) -> dict[int, int]:
        """Map capability ID -> config offset for the standard capability list."""
        return standard_capabilities(self.read8, self.read16)

    def ext_capabilities(self) -> dict[int, int]:
        """Map extended capability ID -> config offset (from 0x100)."""
        return extended_capabilities(self.read32)

    def bar(self, index: int) -> Bar | None:
        """Size BAR ``index`` (the all-ones probe); None if unimplemented."""
        off = PCI_BAR0 + 4 * index
        orig_lo = self.read32(off)
        self.write32(off, 0xFFFFFFFF)
        lo = self.read32(off)
        self.write32(off, orig_lo)
        if lo == 0:
            return None
        is_64 = bool(lo & 0x6 == PCI_BAR_MEM_TYPE_64)
        mask = lo & ~0xF
        if is_64:
            orig_hi = self.read32(off + 4)
            self.write32(off + 4, 0xFFFFFFFF)
            hi = self.read32(off + 4)
            self.write32(off + 4, orig_hi)
            mask |= hi << 32
            size = (~mask & 0xFFFF_FFFF_FFFF_FFFF) + 1
        else:
            size = (~mask & 0xFFFF_FFFF) + 1
        return Bar(index, size, is_64, bool(lo & PCI_BAR_MEM_PREFETCH))

    def set_bar(self, bar: Bar, address: int) -> None:
        """Place ``bar`` at ``address`` (must be size-aligned)."""
        if address % bar.size:
            raise QgpuError(f"BAR{bar.index} address 0x{address:x} is not "
                            f"{bar.size}-byte aligned")
        off = PCI_BAR0 + 4 * bar.index
        self.write32(off, address & 0xFFFF_FFFF)
        if bar.is_64bit:
            self.write32(off + 4, address >> 32)

    def bar_address(self, index: int) -> int:
        """Return the address BAR ``index`` is programmed with."""
        off = PCI_BAR0 + 4 * index
        lo = self.read32(off)
        addr = lo & ~0xF
        if lo & 0x6 == PCI_BAR_MEM_TYPE_64:
            addr |= self.read32(off + 4) << 32
        return addr

    def enable(self, *, memory: bool = True, master: bool = True) -> None:
        """Set the memory-decode and bus-master bits."""
        cmd = self.read16(PCI_COMMAND) & ~(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        if memory:
            cmd |= PCI_COMMAND_MEMORY
        if master:
            cmd |= PCI_COMMAND_MASTER
        self.write16(PCI_COMMAND, cmd)


def enable_ecam(qt: QtestMachine) -> None:
    """Turn on q35's ECAM window at :data:`ECAM_BASE` through the MCH (port 0xcf8)."""
    for reg, value in ((Q35_PCIEXBAR + 4, 0), (Q35_PCIEXBAR, ECAM_BASE | 1)):
        qt.outl(0xCF8, 0x8000_0000 | reg)
        qt.outl(0xCFC, value)


def setup_root_port(port: PciFunction, secondary: int, mem: tuple[int, int],
                    pref: tuple[int, int]) -> None:
    """Program a PCIe root port: bus numbers and memory windows.

    ``mem`` and ``pref`` are (base, size) of the non-prefetchable (32-bit,
    1 MiB granular) and prefetchable (64-bit) windows.
    """
    port.write8(0x18, port.bus)
    port.write8(0x19, secondary)
    port.write8(0x1A, secondary)
    port.write8(0x1C, 0xF0)             # I/O window disabled (base > limit)
    port.write8(0x1D, 0x00)
    mem_base, mem_size = mem
    port.write16(0x20, (mem_base >> 16) & 0xFFF0)
    port.write16(0x22, ((mem_base + mem_size - 1) >> 16) & 0xFFF0)
    pref_base, pref_size = pref
    pref_limit = pref_base + pref_size - 1
    port.write16(0x24, ((pref_base >> 16) & 0xFFF0) | 1)
    port.write16(0x26, ((pref_limit >> 16) & 0xFFF0) | 1)
    port.write32(0x28, pref_base >> 32)
    port.write32(0x2C, pref_limit >> 32)
    port.enable(memory=True, master=True)
