"""Driving QEMU's amd-iommu from qtest: device table, page tables, event log.

Just enough of AMD-Vi (AMD I/O Virtualization Technology spec, rev. 3) to put
qgpu's bus addresses behind a page table, and to aim the IOMMU's own DMA (its
event log) where a test wants it.
"""

from __future__ import annotations

from qgpu.device import QgpuDevice

AMDVI_MMIO = 0xFED8_0000                  # amd-iommu's register window on q35
AMDVI_MMIO_DEVICE_TABLE = 0x00            # base | (size in 4 KiB pages - 1)
AMDVI_MMIO_EVENT_BASE = 0x10              # base | log2(entries) << 56
AMDVI_MMIO_CONTROL = 0x18
AMDVI_MMIO_EVENT_TAIL = 0x2018
AMDVI_CONTROL_ENABLE = 1 << 0
AMDVI_CONTROL_EVENT_LOG = 1 << 2
AMDVI_DEV_VALID = 1 << 0
AMDVI_DEV_TRANSLATION_VALID = 1 << 1
AMDVI_DEV_MODE_1_LEVEL = 1 << 9           # a one-level page table (2 MiB of IOVA)
AMDVI_DEV_MODE_3_LEVEL = 3 << 9           # three levels (512 GiB of IOVA)
AMDVI_PTE_PRESENT = 1 << 0
AMDVI_PERM_READ = 1 << 61
AMDVI_PERM_WRITE = 1 << 62
AMDVI_RW = AMDVI_PERM_READ | AMDVI_PERM_WRITE
DTE_SIZE = 32
EVENT_SIZE = 16
EVENT_ADDRESS_OFFSET = 8                  # bytes 8..15: the faulting IOVA
AMDVI_EVENT_IO_PAGE_FAULT = 0x2           # event code, bits 60..63
PAGE = 4096
GiB = 1 << 30


def enable_amd_vi(dev: QgpuDevice, dte: int, *, event_log: int | None = None) -> None:
    """Give qgpu the device table entry ``dte`` and turn AMD-Vi on.

    QEMU's AMD-Vi names a device by the bus number it had when its address
    space was made (0, before enumeration), so the entry is written for
    both 00:00.0 and qgpu's 01:00.0.

    ``event_log``: if given, the bus address the IOMMU writes its next
    16-byte event (a page fault record) to; the log is turned on.
    """
    table = dev.mem.alloc(3 * PAGE, align=PAGE)
    dev.mem.write(table, bytes(3 * PAGE))
    for devid in (0x000, 0x100):
        dev.mem.write(table + devid * DTE_SIZE, dte.to_bytes(8, "little"))
    dev.qt.writeq(AMDVI_MMIO + AMDVI_MMIO_DEVICE_TABLE, table | 2)   # 3 pages
    control = AMDVI_CONTROL_ENABLE
    if event_log is not None:
        assert event_log % EVENT_SIZE == 0, "events are 16-byte aligned in the log"
        # A log of 2^15 entries starting at the page, written from the tail.
        dev.qt.writeq(AMDVI_MMIO + AMDVI_MMIO_EVENT_BASE, (event_log & ~(PAGE - 1)) | 15 << 56)
        dev.qt.writeq(AMDVI_MMIO + AMDVI_MMIO_EVENT_TAIL, event_log & (PAGE - 1))
        control |= AMDVI_CONTROL_EVENT_LOG
    dev.qt.writeq(AMDVI_MMIO + AMDVI_MMIO_CONTROL, control)


def identity_page_table(dev: QgpuDevice, *, mapped: int, faulting_iova: int) -> int:
    """Build a three-level page table; return its root for the device table entry.

    IOVA = bus address for guest RAM below ``mapped`` (a multiple of 2 MiB),
    read and write. The GiB of IOVA holding ``faulting_iova`` gets an entry
    that is not present: an access there is a page fault that AMD-Vi logs as
    an event (an all-zero entry fails the access without one).
    """
    faulting_gib = faulting_iova >> 30 & 0x1FF
    assert mapped % (2 << 20) == 0 and mapped <= GiB and faulting_gib > 0
    l3, l2 = dev.mem.alloc(PAGE, align=PAGE), dev.mem.alloc(PAGE, align=PAGE)
    l3_entries = bytearray(PAGE)
    l3_entries[0:8] = (l2 | 2 << 9 | AMDVI_RW | AMDVI_PTE_PRESENT).to_bytes(8, "little")
    # Next level 2 but not present: the walk goes on to it and faults there.
    l3_entries[faulting_gib * 8:faulting_gib * 8 + 8] = (2 << 9).to_bytes(8, "little")
    l2_entries = bytearray(PAGE)
    for region in range(mapped >> 21):
        l1 = dev.mem.alloc(PAGE, align=PAGE)
        ptes = b"".join(((region << 21 | page << 12) | AMDVI_RW | AMDVI_PTE_PRESENT)
                        .to_bytes(8, "little") for page in range(512))
        dev.mem.write(l1, ptes)
        l2_entries[region * 8:region * 8 + 8] = \
            (l1 | 1 << 9 | AMDVI_RW | AMDVI_PTE_PRESENT).to_bytes(8, "little")
    dev.mem.write(l3, bytes(l3_entries))
    dev.mem.write(l2, bytes(l2_entries))
    return l3
