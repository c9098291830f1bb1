"""The device's own DMA and interrupt messages reaching PCI config space.

A guest can aim a descriptor, or an MSI-X vector's address, at q35's
MMCONFIG window and so write the root port's registers: a secondary bus reset
resets qgpu, a slot power-off unplugs it, in the middle of qgpu's own access.
QEMU must survive both, and the device must come back usable after a reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from qgpu.abi import ABI
from qgpu.device import MSIX_ADDR, REGS_ADDR, ROOT_PORT_SLOT, QgpuDevice, enumerate_qgpu
from qgpu.errors import QmpError
from qgpu.pci import CAP_ID_EXP, CAP_ID_MSIX, ECAM_BASE, PciFunction

from .amd_vi import (
    AMDVI_DEV_MODE_3_LEVEL,
    AMDVI_DEV_TRANSLATION_VALID,
    AMDVI_DEV_VALID,
    AMDVI_RW,
    EVENT_ADDRESS_OFFSET,
    EVENT_SIZE,
    enable_amd_vi,
    identity_page_table,
)
from .conftest import StartQgpu
from .virtio_iommu import FAULT_ADDRESS_OFFSET, VirtioIommu

PCI_BRIDGE_CONTROL = 0x3E
PCI_BRIDGE_CTL_BUS_RESET = 0x40
PCI_EXP_SLTCTL = 0x18
# Power controller off, power and attention indicators off: "unplug".
PCI_EXP_SLTCTL_POWER_OFF = 0x0400 | 0x0300 | 0x00C0
VRAM = 64 << 20


def root_port_config(offset: int) -> int:
    """Bus address of the root port's config register ``offset`` (MMCONFIG)."""
    return ECAM_BASE | ROOT_PORT_SLOT << 15 | offset


def aim_dma_vector(qgpu: QgpuDevice, address: int, data: int) -> None:
    """Point MSI-X vector QGPU_MSIX_VEC_DMA's message at ``address`` with ``data``."""
    table = qgpu.fn.read32(qgpu.fn.capabilities()[CAP_ID_MSIX] + 4) & ~7
    entry = MSIX_ADDR + table + 16 * ABI.MSIX_VEC_DMA
    qgpu.qt.writel(entry, address)
    qgpu.qt.writel(entry + 4, 0)
    qgpu.qt.writel(entry + 8, data)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` until it holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def submit_and_expect_unplug(qgpu: QgpuDevice, desc: bytes) -> None:
    """Submit ``desc``, whose work unplugs qgpu; QEMU must live on without it."""
    assert qgpu.qt.qmp is not None
    events = len(qgpu.qt.qmp.events())
    qgpu.submit(desc)
    qgpu.qt.qmp.wait_event("DEVICE_DELETED", 10, after=events)
    assert qgpu.qt.qmp.command("query-status")["status"] == "running"
    assert PciFunction(qgpu.qt, 1, 0).vendor_id == 0xFFFF


def end_bus_reset_and_reenumerate(dev: QgpuDevice) -> None:
    """Clear the root port's bus reset bit, then assign BARs as firmware would."""
    port = PciFunction(dev.qt, 0, ROOT_PORT_SLOT)
    port.write16(PCI_BRIDGE_CONTROL, port.read16(PCI_BRIDGE_CONTROL) & ~PCI_BRIDGE_CTL_BUS_RESET)
    enumerate_qgpu(dev.qt, VRAM)


def assert_reset_and_usable(dev: QgpuDevice) -> None:
    """Registers at reset values; a fresh ring runs a fill that verifies."""
    assert dev.reg(ABI.REG_ID) == ABI.ID_MAGIC
    assert dev.reg(ABI.REG_ENGINE_CTRL) == 0
    assert dev.reg(ABI.REG_RING_SIZE) == 0
    dev.ring = None
    dev.setup_ring(16)
    assert dev.run(dev.desc(opcode=ABI.OP_FILL, dst=4096, length=4096,
                            fill_pattern=0x5A5A5A5A)) == [ABI.ERR_NONE]
    assert dev.vram_read(4096, 4096) == b"\x5a" * 4096


def test_dma_that_resets_its_own_device(qgpu: QgpuDevice) -> None:
    """COPY_FROM_VRAM into Bridge Control: a bus reset in the middle of the DMA."""
    qgpu.vram_write(0, PCI_BRIDGE_CTL_BUS_RESET.to_bytes(2, "little"))
    fence = qgpu.mem.alloc(8)
    qgpu.mem.write(fence, bytes(8))
    aborted = qgpu.stat("aborted")
    [index] = qgpu.submit(qgpu.desc(
        opcode=ABI.OP_COPY_FROM_VRAM, flags=ABI.DESC_F_FENCE | ABI.DESC_F_IRQ, src=0,
        dst=root_port_config(PCI_BRIDGE_CONTROL), length=2, fence_addr=fence,
        fence_value=0x77))
    wait_for("the reset to abort the descriptor", lambda: qgpu.stat("aborted") == aborted + 1)
    # The reset dropped the descriptor: no status, no fence written after it.
    assert qgpu.status(index) == 0
    assert qgpu.mem.read(fence, 8) == bytes(8)
    end_bus_reset_and_reenumerate(qgpu)
    assert_reset_and_usable(qgpu)


def test_interrupt_message_that_resets_its_own_device(qgpu: QgpuDevice) -> None:
    """An MSI-X vector aimed at Bridge Control: the completion interrupt resets qgpu."""
    qgpu.msix_enable()
    # The dword at 0x3c; the data's high half lands in Bridge Control (0x3e).
    aim_dma_vector(qgpu, root_port_config(PCI_BRIDGE_CONTROL & ~3), PCI_BRIDGE_CTL_BUS_RESET << 16)
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    sent = qgpu.stat("interrupts")
    [index] = qgpu.submit(qgpu.desc(opcode=ABI.OP_FILL, flags=ABI.DESC_F_IRQ, dst=0,
                                    length=4096, fill_pattern=1))
    wait_for("the completion interrupt", lambda: qgpu.stat("interrupts") > sent)
    # Retired before the message went out; the bus reset then cleared the registers.
    assert qgpu.status(index) == ABI.DESC_STATUS_DONE
    port = PciFunction(qgpu.qt, 0, ROOT_PORT_SLOT)
    assert port.read16(PCI_BRIDGE_CONTROL) & PCI_BRIDGE_CTL_BUS_RESET
    end_bus_reset_and_reenumerate(qgpu)
    assert_reset_and_usable(qgpu)


def test_a_register_pair_write_stops_at_a_reset_its_first_half_caused(
        qgpu: QgpuDevice) -> None:
    """Issue 11 (S4): an 8-byte write is two register writes; if the first
    (INT_RAISE, whose MSI-X message resets the device) disturbs the device,
    the second must not land in the device that came back from the reset."""
    qgpu.msix_enable()
    aim_dma_vector(qgpu, root_port_config(PCI_BRIDGE_CONTROL & ~3), PCI_BRIDGE_CTL_BUS_RESET << 16)
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    assert qgpu.reg(ABI.REG_ACCESS_ERROR) == 0
    # Low half: INT_RAISE(DMA_DONE). High half: 0x054, no register there (an
    # OFFSET access error if it reaches the device).
    qgpu.qt.writeq(REGS_ADDR + ABI.REG_INT_RAISE, 0x1234_5678 << 32 | ABI.INT_DMA_DONE)
    port = PciFunction(qgpu.qt, 0, ROOT_PORT_SLOT)
    assert port.read16(PCI_BRIDGE_CONTROL) & PCI_BRIDGE_CTL_BUS_RESET
    end_bus_reset_and_reenumerate(qgpu)
    assert (qgpu.reg(ABI.REG_ACCESS_ERROR), qgpu.reg(ABI.REG_ACCESS_ERROR_ADDR)) == (0, 0), \
        "the second half of the write reached the device after its reset"
    assert_reset_and_usable(qgpu)


def test_dma_that_unplugs_its_own_device(start: StartQgpu) -> None:
    """COPY_FROM_VRAM into the root port's Slot Control: power off, the device goes.

    q35 hot-plugs through ACPI by default; native PCIe hotplug (what Slot
    Control drives) must be asked for.
    """
    qgpu = start(extra_args=["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"])
    qgpu.setup_ring(16)
    port = PciFunction(qgpu.qt, 0, ROOT_PORT_SLOT)
    slot_control = port.capabilities()[CAP_ID_EXP] + PCI_EXP_SLTCTL
    qgpu.vram_write(0, PCI_EXP_SLTCTL_POWER_OFF.to_bytes(2, "little"))
    submit_and_expect_unplug(qgpu, qgpu.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0,
                                             dst=root_port_config(slot_control), length=2))
    try:
        qgpu.stat("descriptors")
    except QmpError as exc:
        assert "qgpu0" in str(exc) or "not found" in str(exc).lower()
    else:
        raise AssertionError("qgpu0 still answers qom-get after its unplug")


def test_interrupt_message_that_unplugs_its_own_device(start: StartQgpu) -> None:
    """A retirement raising two MSI-X vectors, the first of which powers the slot
    off: the device must not send the second from freed state."""
    qgpu = start(extra_args=["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"])
    qgpu.setup_ring(16)
    port = PciFunction(qgpu.qt, 0, ROOT_PORT_SLOT)
    slot_control = port.capabilities()[CAP_ID_EXP] + PCI_EXP_SLTCTL   # dword aligned
    qgpu.msix_enable()
    aim_dma_vector(qgpu, root_port_config(slot_control),
                   PCI_EXP_SLTCTL_POWER_OFF)            # Slot Status (high half): 0
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    # Refused (zero length) with F_IRQ: DMA_ERROR and DMA_DONE, two vectors.
    submit_and_expect_unplug(qgpu, qgpu.desc(opcode=ABI.OP_FILL, flags=ABI.DESC_F_IRQ,
                                             dst=0, length=0))


def start_behind_amd_vi_logging_into(start: StartQgpu, register: Callable[[PciFunction], int],
                                     value: int, *, spare: int = 0) -> tuple[QgpuDevice, int]:
    """qgpu behind AMD-Vi, guest RAM identity-mapped, and the IOMMU's event
    log aimed so that its next fault record writes ``value`` (16 bits) into
    the root port's config register ``register(port)``.

    A record's bytes 8..15 are the faulting IOVA, so that is where ``value``
    goes; ``spare`` sets IOVA bits that land on read-only registers, to make
    the IOVA one that faults. Returns the device and that IOVA.
    """
    qgpu = start(extra_args=["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
                             "-device", "amd-iommu,pt=off"])
    qgpu.setup_ring(16)
    assert qgpu.ring is not None and qgpu.ring.base < 4 << 20
    offset = register(PciFunction(qgpu.qt, 0, ROOT_PORT_SLOT))
    in_record = offset % EVENT_SIZE
    assert in_record >= EVENT_ADDRESS_OFFSET and in_record % 2 == 0
    iova = value << 8 * (in_record - EVENT_ADDRESS_OFFSET) | spare
    root = identity_page_table(qgpu, mapped=4 << 20, faulting_iova=iova)
    enable_amd_vi(qgpu, AMDVI_DEV_VALID | AMDVI_DEV_TRANSLATION_VALID | AMDVI_DEV_MODE_3_LEVEL
                  | AMDVI_RW | root, event_log=root_port_config(offset - in_record))
    return qgpu, iova


def fill_fenced_at(qgpu: QgpuDevice, fence_iova: int) -> bytes:
    """A small FILL whose fence goes to ``fence_iova``."""
    return qgpu.desc(opcode=ABI.OP_FILL, flags=ABI.DESC_F_FENCE, dst=0, length=64,
                     fill_pattern=0x11111111, fence_addr=fence_iova, fence_value=1)


def test_an_iommu_fault_record_that_unplugs_the_device(start: StartQgpu) -> None:
    """Issue 11, S1: the device checks its fence address with dma_memory_valid();
    behind an IOMMU the check is a translation, and a failed one makes the
    IOMMU write a fault record to a bus address the guest chose. Aimed at the
    root port's Slot Control, the record powers the slot off: qgpu is
    unplugged inside its own check, and must not touch its freed state after
    it (QEMU died with SIGSEGV writing the DMA trace through NULL)."""
    qgpu, fence = start_behind_amd_vi_logging_into(
        start, lambda port: port.capabilities()[CAP_ID_EXP] + PCI_EXP_SLTCTL,
        PCI_EXP_SLTCTL_POWER_OFF)
    submit_and_expect_unplug(qgpu, fill_fenced_at(qgpu, fence))


def test_an_iommu_fault_record_that_resets_the_device(start: StartQgpu) -> None:
    """The same fault record, aimed at the root port's Bridge Control: a
    secondary bus reset inside the fence check. The reset drops the
    descriptor (spec 8): nothing about it may be written or traced after it,
    and it is counted once, as aborted."""
    qgpu, fence = start_behind_amd_vi_logging_into(
        start, lambda port: PCI_BRIDGE_CONTROL, PCI_BRIDGE_CTL_BUS_RESET,
        spare=1 << 31)      # byte 11: the expansion ROM base, read-only here
    port = PciFunction(qgpu.qt, 0, ROOT_PORT_SLOT)
    before = {name: qgpu.stat(name) for name in ("descriptors", "aborted", "dropped")}
    [index] = qgpu.submit(fill_fenced_at(qgpu, fence))
    wait_for("the bus reset", lambda: bool(port.read16(PCI_BRIDGE_CONTROL)
                                           & PCI_BRIDGE_CTL_BUS_RESET))
    after = {name: qgpu.stat(name) - before[name] for name in before}
    assert after == {"descriptors": 0, "aborted": 1, "dropped": 0}
    assert qgpu.status(index) == 0
    traced = [(e["ring-index"], e["status"]) for e in qgpu.dma_trace()]
    assert traced == [(index, "ok")], "traced after the reset dropped the descriptor"
    end_bus_reset_and_reenumerate(qgpu)
    assert qgpu.reg(ABI.REG_DMA_ERROR) == 0
    assert_reset_and_usable(qgpu)


def test_a_virtio_iommu_fault_record_that_unplugs_the_device(start: StartQgpu) -> None:
    """Issue 11, S1 as found: virtio-iommu-pci and native PCIe hotplug. The
    fence address is an IOVA the domain does not map; the device's check of
    it is a translation, the IOMMU reports the fault in the event buffer the
    guest posted -- on the root port's config space, so that the IOVA lands
    on Slot Control and powers the slot off inside qgpu's check."""
    qgpu = start(extra_args=["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
                             "-device", "virtio-iommu-pci,addr=0x3"])
    qgpu.setup_ring(16, enable=False)
    viommu = VirtioIommu(qgpu, PciFunction(qgpu.qt, 0, 3), 0xC080_0000)
    viommu.attach(domain=1, endpoint=0x100)                 # qgpu: 01:00.0
    viommu.put_ring_at(1, 0x10_0000_0000)
    port = PciFunction(qgpu.qt, 0, ROOT_PORT_SLOT)
    slot_control = port.capabilities()[CAP_ID_EXP] + PCI_EXP_SLTCTL
    viommu.post_event_buffer(root_port_config(slot_control - FAULT_ADDRESS_OFFSET))
    # Bits 0..15 on Slot Control, 16..31 (zero) on Slot Status, 32.. on Root Control.
    fence = 0x20_0000_0000 | PCI_EXP_SLTCTL_POWER_OFF
    submit_and_expect_unplug(qgpu, fill_fenced_at(qgpu, fence))
