# SPDX-License-Identifier: GPL-2.0-or-later
"""Live migration while the engine works: what the device writes into VRAM
behind the memory API must reach the destination (issue 11, S6).

VRAM is RAM the engine writes through a host pointer, so the device marks
what it wrote dirty itself; a page it forgets is sent once, in the first
pass, and the destination keeps that old copy.
"""

from __future__ import annotations

import random
from pathlib import Path

from qgpu.abi import ABI
from qgpu.device import ROOT_PORT_SLOT, qgpu_args
from qgpu.pci import PciFunction
from qgpu.qtest import QtestMachine

from .conftest import StartQgpu
from .test_reentrancy import (
    PCI_BRIDGE_CONTROL,
    PCI_BRIDGE_CTL_BUS_RESET,
    root_port_config,
    wait_for,
)
from .test_reset import migration_status
from .virtio_iommu import FAULT_ADDRESS_OFFSET, MAP_F_READ, VirtioIommu

MiB = 1 << 20
PCI_ROM_ADDRESS1 = 0x38             # a bridge's expansion ROM base; 0x3c: line, pin, control
VIRTIO_IOMMU = ["-device", "virtio-iommu-pci,addr=0x3"]
# Guest RAM smaller than VRAM: RAM blocks migrate biggest first, so VRAM's
# first pages are the first data sent.
GUEST_RAM = 32 * MiB


def _transferred(qt: QtestMachine) -> int:
    assert qt.qmp is not None
    info = qt.qmp.command("query-migrate")
    return int(info.get("ram", {}).get("transferred", 0))


def test_vram_a_disturbed_read_wrote_is_migrated(start: StartQgpu, rng: random.Random,
                                                 tmp_path: Path) -> None:
    """A COPY_TO_VRAM whose source is one mapped page and then an unmapped
    one, behind virtio-iommu, during a live migration. The first page lands
    in VRAM; the second faults, and the fault record, aimed at the root
    port's Bridge Control, resets the device inside its own read. The page
    it did write must be sent again, although the device returns at once."""
    qgpu = start(extra_args=VIRTIO_IOMMU, memory=GUEST_RAM)
    qgpu.setup_ring(16, enable=False)
    viommu = VirtioIommu(qgpu, PciFunction(qgpu.qt, 0, 3), 0xC080_0000)
    viommu.attach(domain=1, endpoint=0x100)                 # qgpu: 01:00.0
    viommu.put_ring_at(1, 0x10_0000_0000)
    new = rng.randbytes(4096)
    page = qgpu.mem.alloc(4096, align=4096)
    qgpu.mem.write(page, new)
    # The fault is at the unmapped page's IOVA; its bits 48..63 land on
    # Bridge Control (the record's address field on 0x38..0x3f).
    faulting = PCI_BRIDGE_CTL_BUS_RESET << 48
    viommu.map(1, faulting - 4096, page, 4096, MAP_F_READ)
    viommu.post_event_buffer(root_port_config(PCI_ROM_ADDRESS1 - FAULT_ADDRESS_OFFSET))
    # Data, not zero pages, so that the first pass takes its time at the
    # bandwidth limit below.
    old = rng.randbytes(8 * MiB)
    assert qgpu.vram_shm is not None
    qgpu.vram_shm.write(0, old)

    dest = QtestMachine(name="dest", memory=GUEST_RAM)
    dest_vram = dest.shared_memory(qgpu.vram_size, "vram")
    dest.extra_args = [*qgpu_args(vram_path=str(dest_vram.path), vram_size=qgpu.vram_size),
                       *VIRTIO_IOMMU, "-incoming", "defer"]
    sock = tmp_path / "migration.sock"
    assert qgpu.qt.qmp is not None
    with dest:
        assert dest.qmp is not None
        dest.qmp.command("migrate-incoming", {"uri": f"unix:{sock}"})
        qgpu.qt.qmp.command("migrate-set-parameters", {"max-bandwidth": MiB})
        qgpu.qt.qmp.command("migrate", {"uri": f"unix:{sock}"})
        wait_for("VRAM's first pages to be sent", lambda: _transferred(qgpu.qt) >= 256 << 10)
        assert qgpu.qt.qmp.command("query-migrate")["status"] == "active"

        port = PciFunction(qgpu.qt, 0, ROOT_PORT_SLOT)
        [index] = qgpu.submit(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=faulting - 4096,
                                        dst=0, length=8192))
        wait_for("the bus reset", lambda: bool(port.read16(PCI_BRIDGE_CONTROL)
                                               & PCI_BRIDGE_CTL_BUS_RESET))
        assert qgpu.status(index) == 0, "the reset dropped the descriptor"
        assert qgpu.vram_host(0, 4096) == new
        assert qgpu.qt.qmp.command("query-migrate")["status"] == "active", \
            "the migration ended before the copy: nothing tested"

        qgpu.qt.qmp.command("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        assert migration_status(qgpu.qt) == "completed"
        assert migration_status(dest) == "completed"
        assert dest_vram.read(0, 4096) == new, \
            "VRAM the device wrote before a reset was not sent again"
        assert dest_vram.read(0, len(old)) == qgpu.vram_host(0, len(old))
