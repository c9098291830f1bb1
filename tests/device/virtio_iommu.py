"""A minimal driver for QEMU's virtio-iommu-pci, over qtest.

Just enough of virtio 1.x (modern PCI transport, one split virtqueue, polled)
and of the virtio-iommu device (virtio spec 5.13: ATTACH and MAP requests) to
put qgpu's bus addresses behind a virtio-iommu domain from a device test.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from qgpu.abi import ABI
from qgpu.device import QgpuDevice
from qgpu.pci import PCI_CAPABILITY_LIST, PciFunction

VIRTIO_VENDOR = 0x1AF4
VIRTIO_IOMMU_DEVICE = 0x1057            # 0x1040 + device type 23
CAP_ID_VENDOR = 0x09
CFG_COMMON, CFG_NOTIFY, CFG_PCI = 1, 2, 5  # virtio_pci_cap.cfg_type (5: no BAR)
STATUS_ACK, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK = 1, 2, 4, 8
VIRTIO_F_VERSION_1 = 32
VIRTIO_IOMMU_F_MAP_UNMAP = 2
REQ_ATTACH, REQ_MAP = 1, 3
MAP_F_READ, MAP_F_WRITE = 1, 2
VRING_DESC_F_NEXT, VRING_DESC_F_WRITE = 1, 2
QUEUE_SIZE = 8
FAULT_SIZE = 24                         # struct virtio_iommu_fault
FAULT_ADDRESS_OFFSET = 16               # its le64 address: the faulting IOVA
# struct virtio_pci_common_cfg
DEVICE_FEATURE_SELECT, DEVICE_FEATURE = 0x00, 0x04
DRIVER_FEATURE_SELECT, DRIVER_FEATURE = 0x08, 0x0C
DEVICE_STATUS, QUEUE_SELECT, QUEUE_SIZE_REG = 0x14, 0x16, 0x18
QUEUE_ENABLE, QUEUE_NOTIFY_OFF = 0x1C, 0x1E
QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE = 0x20, 0x28, 0x30


class VirtioIommuError(AssertionError):
    """The device refused a request, or did not answer it."""


@dataclass
class _Queue:
    index: int
    desc: int
    avail: int
    used: int
    notify: int
    next_avail: int = 0


class VirtioIommu:
    """virtio-iommu-pci at ``fn``, driven through the guest memory of ``dev``."""

    def __init__(self, dev: QgpuDevice, fn: PciFunction, bar_address: int) -> None:
        """Enumerate the function (its BAR at ``bar_address``), negotiate, set up queue 0."""
        self.dev, self.qt, self.fn = dev, dev.qt, fn
        assert (fn.vendor_id, fn.device_id) == (VIRTIO_VENDOR, VIRTIO_IOMMU_DEVICE), \
            f"no virtio-iommu-pci at {fn}"
        caps = self._vendor_caps()
        bars = {bar for kind, (bar, _, _) in caps.items() if kind != CFG_PCI}
        assert len(bars) == 1, f"virtio capabilities in several BARs: {caps}"
        bar = fn.bar(bars.pop())
        assert bar is not None
        fn.set_bar(bar, bar_address)
        fn.enable(memory=True, master=True)
        self.common = bar_address + caps[CFG_COMMON][1]
        notify_base, multiplier = bar_address + caps[CFG_NOTIFY][1], caps[CFG_NOTIFY][2]
        self._negotiate()
        self.queue = self._setup_queue(0, notify_base, multiplier)
        self.events = self._setup_queue(1, notify_base, multiplier)
        self._status(self._read8(DEVICE_STATUS) | STATUS_DRIVER_OK)

    def attach(self, domain: int, endpoint: int) -> None:
        """Attach ``endpoint`` (a PCI requester ID) to ``domain``."""
        self._request(struct.pack("<B3xIII4x", REQ_ATTACH, domain, endpoint, 0))

    def map(self, domain: int, iova: int, phys: int, length: int, flags: int) -> None:
        """Map ``[iova, iova + length)`` of ``domain`` onto ``phys``."""
        self._request(struct.pack("<B3xIQQQI", REQ_MAP, domain, iova, iova + length - 1,
                                  phys, flags))

    def put_ring_at(self, domain: int, iova: int) -> None:
        """Map qgpu's ring (set up with ``enable=False``) at ``iova`` (page
        aligned) of ``domain``, point the device at it there, and enable the engine."""
        ring = self.dev.ring
        assert ring is not None and iova % 4096 == 0
        offset = ring.base & 0xFFF
        assert offset + ring.entries * ABI.DESC_SIZE <= 4096, "the ring crosses a page"
        self.map(domain, iova, ring.base - offset, 4096, MAP_F_READ | MAP_F_WRITE)
        self.dev.ring_at(iova | offset)

    def post_event_buffer(self, address: int, length: int = FAULT_SIZE) -> None:
        """Give the device a buffer at bus address ``address`` for its next fault record.

        A driver posts guest RAM; nothing but the driver stops it from posting
        any address, and the device writes its record there. One buffer at a
        time: a second call before the device used the first replaces it.
        """
        q = self.events
        self.dev.mem.write(q.desc, struct.pack("<QIHH", address, length, VRING_DESC_F_WRITE, 0))
        self._make_available(q, 0)

    # -- transport ------------------------------------------------------------

    def _vendor_caps(self) -> dict[int, tuple[int, int, int]]:
        """cfg_type -> (BAR, offset in it, notify multiplier) of the first of each type."""
        caps: dict[int, tuple[int, int, int]] = {}
        pos = self.fn.read8(PCI_CAPABILITY_LIST) & ~3
        for _ in range(48):
            if not pos:
                break
            if self.fn.read8(pos) == CAP_ID_VENDOR:
                kind = self.fn.read8(pos + 3)
                extra = self.fn.read32(pos + 16) if kind == CFG_NOTIFY else 0
                caps.setdefault(kind, (self.fn.read8(pos + 4), self.fn.read32(pos + 8), extra))
            pos = self.fn.read8(pos + 1) & ~3
        assert CFG_COMMON in caps and CFG_NOTIFY in caps, f"virtio capabilities: {caps}"
        return caps

    def _read8(self, off: int) -> int:
        return self.qt.readb(self.common + off)

    def _status(self, value: int) -> None:
        self.qt.writeb(self.common + DEVICE_STATUS, value)

    def _negotiate(self) -> None:
        self._status(0)
        self._status(STATUS_ACK | STATUS_DRIVER)
        offered = 0
        for word in (0, 1):
            self.qt.writel(self.common + DEVICE_FEATURE_SELECT, word)
            offered |= self.qt.readl(self.common + DEVICE_FEATURE) << (32 * word)
        wanted = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_IOMMU_F_MAP_UNMAP
        assert offered & wanted == wanted, f"virtio-iommu offers features {offered:#x}"
        for word in (0, 1):
            self.qt.writel(self.common + DRIVER_FEATURE_SELECT, word)
            self.qt.writel(self.common + DRIVER_FEATURE, (wanted >> (32 * word)) & 0xFFFF_FFFF)
        self._status(STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK)
        assert self._read8(DEVICE_STATUS) & STATUS_FEATURES_OK, "features refused"

    def _setup_queue(self, index: int, notify_base: int, multiplier: int) -> _Queue:
        self.qt.writew(self.common + QUEUE_SELECT, index)
        assert self.qt.readw(self.common + QUEUE_SIZE_REG) >= QUEUE_SIZE
        self.qt.writew(self.common + QUEUE_SIZE_REG, QUEUE_SIZE)
        mem = self.dev.mem
        desc = mem.alloc(16 * QUEUE_SIZE, align=16)
        avail = mem.alloc(6 + 2 * QUEUE_SIZE, align=2)
        used = mem.alloc(6 + 8 * QUEUE_SIZE, align=4)
        for addr, size in ((desc, 16 * QUEUE_SIZE), (avail, 6 + 2 * QUEUE_SIZE),
                           (used, 6 + 8 * QUEUE_SIZE)):
            mem.write(addr, bytes(size))
        for reg, addr in ((QUEUE_DESC, desc), (QUEUE_DRIVER, avail), (QUEUE_DEVICE, used)):
            self.qt.writeq(self.common + reg, addr)
        notify = notify_base + self.qt.readw(self.common + QUEUE_NOTIFY_OFF) * multiplier
        self.qt.writew(self.common + QUEUE_ENABLE, 1)
        return _Queue(index, desc, avail, used, notify)

    def _make_available(self, q: _Queue, head: int) -> None:
        """Offer the descriptor chain at ``head`` to the device, and notify it."""
        mem = self.dev.mem
        mem.write(q.avail + 4 + 2 * (q.next_avail % QUEUE_SIZE), struct.pack("<H", head))
        q.next_avail += 1
        mem.write(q.avail + 2, struct.pack("<H", q.next_avail & 0xFFFF))
        self.qt.writew(q.notify, q.index)

    def _request(self, body: bytes, timeout: float = 5.0) -> None:
        """Send ``body`` with a 4-byte tail for the device's status; fail unless it is OK."""
        q, mem = self.queue, self.dev.mem
        req = mem.alloc(len(body), align=8)
        tail = mem.alloc(4, align=4)
        mem.write(req, body)
        mem.write(tail, b"\xff" * 4)
        mem.write(q.desc, struct.pack("<QIHHQIHH", req, len(body), VRING_DESC_F_NEXT, 1,
                                      tail, 4, VRING_DESC_F_WRITE, 0))
        self._make_available(q, 0)
        deadline = time.monotonic() + timeout
        while struct.unpack("<H", mem.read(q.used + 2, 2))[0] != q.next_avail & 0xFFFF:
            if time.monotonic() > deadline:
                raise VirtioIommuError(f"virtio-iommu: no answer to request {body[0]}")
            time.sleep(0.001)
        status = mem.read(tail, 1)[0]
        if status != 0:
            raise VirtioIommuError(f"virtio-iommu: request {body[0]} failed with "
                                   f"status {status}")
