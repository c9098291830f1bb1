"""Interrupt causes and their delivery over MSI-X, MSI and INTx."""

from __future__ import annotations

from qgpu.abi import ABI
from qgpu.device import QgpuDevice
from qgpu.pci import CAP_ID_MSI, PCI_COMMAND, PCI_COMMAND_INTX_DISABLE

from .conftest import StartQgpu

UNASSIGNED = 0x20_0000_0000


def _nop(dev: QgpuDevice, flags: int = ABI.DESC_F_IRQ) -> bytes:
    return dev.desc(opcode=ABI.OP_NOP, flags=flags)


def test_msix_vector_per_cause(qgpu: QgpuDevice) -> None:
    slots = qgpu.msix_enable()
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    qgpu.run(_nop(qgpu))
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)
    assert not qgpu.msix_fired(slots[ABI.MSIX_VEC_ERROR], ABI.MSIX_VEC_ERROR)
    assert qgpu.reg(ABI.REG_INT_STATUS) == ABI.INT_DMA_DONE

    qgpu.set_reg(ABI.REG_INT_STATUS, ABI.INT_ALL)
    qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=UNASSIGNED, length=8))
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_ERROR], ABI.MSIX_VEC_ERROR)
    assert not qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)   # no F_IRQ

    qgpu.set_reg(ABI.REG_INT_RAISE, ABI.INT_SOFT)
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_MISC], ABI.MSIX_VEC_MISC)
    assert qgpu.stat("interrupts") == 3


def test_error_with_irq_flag_signals_both(qgpu: QgpuDevice) -> None:
    slots = qgpu.msix_enable()
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, flags=ABI.DESC_F_IRQ, src=UNASSIGNED,
                       length=8))
    assert qgpu.reg(ABI.REG_INT_STATUS) == ABI.INT_DMA_DONE | ABI.INT_DMA_ERROR
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_ERROR], ABI.MSIX_VEC_ERROR)


def test_no_irq_flag_no_message(qgpu: QgpuDevice) -> None:
    slots = qgpu.msix_enable()
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    qgpu.run(_nop(qgpu, flags=0))
    assert qgpu.reg(ABI.REG_INT_STATUS) == 0
    assert not qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)


def test_masked_cause_is_delivered_on_unmask(qgpu: QgpuDevice) -> None:
    slots = qgpu.msix_enable()
    qgpu.run(_nop(qgpu))                                  # INT_MASK is 0
    assert qgpu.reg(ABI.REG_INT_STATUS) == ABI.INT_DMA_DONE
    assert not qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_DMA_DONE)
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)
    # Still pending (not acknowledged): a second completion sends no new edge.
    qgpu.run(_nop(qgpu))
    assert not qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)
    qgpu.set_reg(ABI.REG_INT_STATUS, ABI.INT_DMA_DONE)
    qgpu.run(_nop(qgpu))
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)


def test_msix_vector_mask_sets_pending_bit(qgpu: QgpuDevice) -> None:
    from qgpu.device import MSIX_ADDR
    slots = qgpu.msix_enable()
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    entry = MSIX_ADDR + 16 * ABI.MSIX_VEC_DMA
    qgpu.qt.writel(entry + 12, 1)                         # mask vector 0
    qgpu.run(_nop(qgpu))
    assert not qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)
    qgpu.qt.writel(entry + 12, 0)                         # unmask: pending bit fires
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)


def test_msi_single_vector(start: StartQgpu) -> None:
    dev = start("msix=off")
    dev.setup_ring(8)
    cap = dev.fn.capabilities()[CAP_ID_MSI]
    slot = dev.mem.alloc(4, align=16)
    dev.mem.write(slot, bytes(4))
    ctrl = dev.fn.read16(cap + 2)
    assert ctrl & 0x80, "MSI capability should be 64-bit"
    dev.fn.write32(cap + 4, slot & 0xFFFF_FFFF)
    dev.fn.write32(cap + 8, slot >> 32)
    dev.fn.write16(cap + 12, 0x4D51)
    dev.fn.write16(cap + 2, ctrl | 1)
    dev.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    dev.run(_nop(dev))
    assert dev.mem.read(slot, 2) == (0x4D51).to_bytes(2, "little")
    dev.mem.write(slot, bytes(4))
    dev.set_reg(ABI.REG_INT_RAISE, ABI.INT_SOFT)          # every cause shares vector 0
    assert dev.mem.read(slot, 2) == (0x4D51).to_bytes(2, "little")
    assert dev.stat("interrupts") == 2


def test_intx_is_a_level(start: StartQgpu) -> None:
    dev = start("msi=off,msix=off")
    dev.setup_ring(8)
    dev.qt.irq_intercept_in("ioapic")
    dev.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    dev.run(_nop(dev))
    dev.qt.poll()
    raised = [n for n, up in dev.qt.irq_levels.items() if up]
    assert len(raised) == 1, f"expected one INTx line up, got {dev.qt.irq_levels}"
    line = raised[0]
    dev.set_reg(ABI.REG_INT_RAISE, ABI.INT_SOFT)          # still one level
    dev.set_reg(ABI.REG_INT_STATUS, ABI.INT_DMA_DONE)
    dev.qt.poll()
    assert dev.qt.irq_levels[line]
    dev.set_reg(ABI.REG_INT_STATUS, ABI.INT_SOFT)
    dev.qt.poll()
    assert not dev.qt.irq_levels[line]
    assert dev.stat("interrupts") == 1
    # The command register's INTx disable bit silences the line.
    dev.fn.write16(PCI_COMMAND, dev.fn.read16(PCI_COMMAND) | PCI_COMMAND_INTX_DISABLE)
    dev.set_reg(ABI.REG_INT_RAISE, ABI.INT_SOFT)
    dev.qt.poll()
    assert not dev.qt.irq_levels[line]


def test_pending_cause_moves_to_intx_when_msix_is_disabled(qgpu: QgpuDevice) -> None:
    from qgpu.pci import CAP_ID_MSIX
    qgpu.qt.irq_intercept_in("ioapic")
    slots = qgpu.msix_enable()
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    qgpu.set_reg(ABI.REG_INT_RAISE, ABI.INT_SOFT)
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_MISC], ABI.MSIX_VEC_MISC)
    qgpu.qt.poll()
    assert not any(qgpu.qt.irq_levels.values())
    cap = qgpu.fn.capabilities()[CAP_ID_MSIX]
    qgpu.fn.write16(cap + 2, qgpu.fn.read16(cap + 2) & ~0x8000)    # MSI-X off
    qgpu.qt.poll()
    assert any(qgpu.qt.irq_levels.values()), "the pending cause must show on INTx"
    qgpu.set_reg(ABI.REG_INT_STATUS, ABI.INT_SOFT)
    qgpu.qt.poll()
    assert not any(qgpu.qt.irq_levels.values())
