"""Fault injection through the x-fault-* QOM properties (set with qom-set at run time)."""

from __future__ import annotations

import random

import pytest

from qgpu.abi import ABI
from qgpu.device import QOM_PATH, QgpuDevice
from qgpu.errors import QmpError
from qgpu.pci import CAP_ID_EXP, EXT_CAP_ID_ERR, PciFunction, enable_ecam
from qgpu.qtest import QtestMachine

KiB = 1 << 10
PCI_ERR_UNCOR_STATUS = 0x04
PCI_ERR_COR_STATUS = 0x10
PCI_ERR_COR_BAD_TLP = 0x40
PCI_ERR_UNC_POISON_TLP = 0x1000
PCI_ERR_UNC_MALF_TLP = 0x40000
PCI_EXP_TYPE_RC_END = 0x9      # PCIe capability's device/port type


def fault(dev: QgpuDevice, name: str, value: object) -> None:
    assert dev.qt.qmp is not None
    dev.qt.qmp.qom_set(QOM_PATH, f"x-fault-{name}", value)


def _to_vram(dev: QgpuDevice, rng: random.Random, n: int, dst: int) -> tuple[bytes, bytes]:
    data = rng.randbytes(n)
    src = dev.mem.alloc(n)
    dev.mem.write(src, data)
    return dev.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=dst, length=n), data


def test_nth_dma_fails_half_way(qgpu: QgpuDevice, rng: random.Random) -> None:
    fault(qgpu, "dma-error-nth", 2)
    d1, data1 = _to_vram(qgpu, rng, 64 * KiB, 0)
    d2, data2 = _to_vram(qgpu, rng, 64 * KiB, 64 * KiB)
    d3, data3 = _to_vram(qgpu, rng, 64 * KiB, 128 * KiB)
    fill = qgpu.desc(opcode=ABI.OP_FILL, dst=256 * KiB, length=64, fill_pattern=1)
    assert qgpu.run(d1, fill, d2, d3) == [0, 0, ABI.ERR_DMA_READ, 0]   # fills do not count
    assert qgpu.vram_host(0, 64 * KiB) == data1
    assert qgpu.vram_host(64 * KiB, 32 * KiB) == data2[:32 * KiB]
    assert qgpu.vram_host(96 * KiB, 32 * KiB) == bytes(32 * KiB)
    assert qgpu.vram_host(128 * KiB, 64 * KiB) == data3
    assert qgpu.stat("faults-injected") == 1
    assert qgpu.qom("x-fault-dma-error-nth") == 0, "a fired fault disarms itself"
    assert qgpu.dma_trace()[-2]["status"] == "dma-read"


def test_nth_dma_from_vram_fails_with_write_error(qgpu: QgpuDevice) -> None:
    fault(qgpu, "dma-error-nth", 1)
    dst = qgpu.mem.alloc(8 * KiB)
    assert qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0, dst=dst,
                              length=8 * KiB)) == [ABI.ERR_DMA_WRITE]


def test_truncated_transfer_reports_success(qgpu: QgpuDevice, rng: random.Random) -> None:
    assert qgpu.vram_shm is not None
    data = rng.randbytes(10 * KiB)
    qgpu.vram_shm.write(0, data)
    dst = qgpu.mem.alloc(10 * KiB)
    fault(qgpu, "truncate-nth", 1)
    assert qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0, dst=dst,
                              length=10 * KiB)) == [0]
    assert qgpu.mem.read(dst, 5 * KiB) == data[:5 * KiB]
    assert qgpu.mem.read(dst + 5 * KiB, 5 * KiB) == bytes(5 * KiB)
    assert qgpu.stat("faults-injected") == 1


@pytest.mark.parametrize("to_vram", [True, False])
def test_corrupted_transfer_flips_one_byte(qgpu: QgpuDevice, rng: random.Random,
                                           to_vram: bool) -> None:
    assert qgpu.vram_shm is not None
    n = 3 * KiB + 3
    data = rng.randbytes(n)
    fault(qgpu, "corrupt-nth", 1)
    if to_vram:
        desc, data = _to_vram(qgpu, rng, n, 0)
        assert qgpu.run(desc) == [0]
        got = qgpu.vram_host(0, n)
    else:
        qgpu.vram_shm.write(0, data)
        segs = [(qgpu.mem.alloc(1000), 1000), (qgpu.mem.alloc(n - 1000), n - 1000)]
        sg, count = qgpu.sg_list(segs)
        assert qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0, dst=sg, length=n,
                                  flags=ABI.DESC_F_SG, sg_count=count)) == [0]
        got = b"".join(qgpu.mem.read(a, length) for a, length in segs)
    diff = [i for i in range(n) if got[i] != data[i]]
    assert diff == [n // 2]
    assert got[n // 2] == data[n // 2] ^ 0xFF


def test_hung_engine_recovers_by_engine_reset(qgpu: QgpuDevice, rng: random.Random) -> None:
    fault(qgpu, "hang", True)
    desc, _ = _to_vram(qgpu, rng, 4 * KiB, 0)
    [index] = qgpu.submit(desc)
    for _ in range(20):
        qgpu.qt.poll()
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) & ABI.ENGINE_STATUS_BUSY
    assert qgpu.status(index) == 0 and qgpu.reg(ABI.REG_RING_HEAD) == 0
    qgpu.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    assert qgpu.qom("x-fault-hang") is False
    qgpu.setup_ring(8)
    desc, data = _to_vram(qgpu, rng, 4 * KiB, 0)
    assert qgpu.run(desc) == [0]
    assert qgpu.vram_host(0, 4 * KiB) == data


def test_hung_engine_resumes_when_the_fault_clears(qgpu: QgpuDevice,
                                                   rng: random.Random) -> None:
    desc, data = _to_vram(qgpu, rng, 3 << 20, 0)   # several engine runs
    fault(qgpu, "hang", True)
    [index] = qgpu.submit(desc)
    qgpu.qt.poll()
    assert qgpu.status(index) == 0
    fault(qgpu, "hang", False)
    qgpu.wait_idle()
    assert qgpu.status(index) == ABI.DESC_STATUS_DONE
    assert qgpu.vram_host(0, 3 << 20) == data


def test_dropped_interrupt_leaves_cause_pending(qgpu: QgpuDevice) -> None:
    slots = qgpu.msix_enable()
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    fault(qgpu, "irq-drop", 1)
    qgpu.run(qgpu.desc(opcode=ABI.OP_NOP, flags=ABI.DESC_F_IRQ))
    assert not qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)
    assert qgpu.reg(ABI.REG_INT_STATUS) == ABI.INT_DMA_DONE   # a driver can poll for it
    qgpu.set_reg(ABI.REG_INT_STATUS, ABI.INT_DMA_DONE)
    qgpu.run(qgpu.desc(opcode=ABI.OP_NOP, flags=ABI.DESC_F_IRQ))
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)
    assert (qgpu.stat("interrupts"), qgpu.stat("faults-injected")) == (1, 1)


def test_duplicated_interrupt(qgpu: QgpuDevice) -> None:
    slots = qgpu.msix_enable()
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    fault(qgpu, "irq-dup", 1)
    qgpu.run(qgpu.desc(opcode=ABI.OP_NOP, flags=ABI.DESC_F_IRQ))
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)
    assert qgpu.stat("interrupts") == 2


def test_registers_read_all_ones_after_surprise_removal(qgpu: QgpuDevice) -> None:
    qgpu.set_reg(ABI.REG_SCRATCH, 5)
    fault(qgpu, "regs-all-ones", True)
    assert qgpu.reg(ABI.REG_ID) == 0xFFFF_FFFF
    assert qgpu.qt.readb(0xC000_0000 + ABI.REG_SCRATCH) == 0xFF
    qgpu.set_reg(ABI.REG_SCRATCH, 9)                    # dropped
    fault(qgpu, "regs-all-ones", False)
    assert qgpu.reg(ABI.REG_SCRATCH) == 5
    assert qgpu.reg(ABI.REG_ID) == ABI.ID_MAGIC


@pytest.mark.parametrize(("kind", "reg", "bit"), [
    ("correctable", PCI_ERR_COR_STATUS, PCI_ERR_COR_BAD_TLP),
    ("nonfatal", PCI_ERR_UNCOR_STATUS, PCI_ERR_UNC_POISON_TLP),
    ("fatal", PCI_ERR_UNCOR_STATUS, PCI_ERR_UNC_MALF_TLP),
])
def test_device_raises_aer_errors(qgpu: QgpuDevice, kind: str, reg: int, bit: int) -> None:
    aer = qgpu.fn.ext_capabilities()[EXT_CAP_ID_ERR]
    assert qgpu.fn.read32(aer + reg) & bit == 0
    fault(qgpu, "aer", kind)
    assert qgpu.fn.read32(aer + reg) & bit
    assert qgpu.qom("x-fault-aer") == kind
    assert qgpu.stat("faults-injected") == 1


def test_a_reset_forgets_the_aer_error_raised(qgpu: QgpuDevice) -> None:
    """x-fault-aer records the last error raised since the device's reset (the AER
    status bits are sticky; a revert's state load rewrites them): a guest reverted
    to its template (a reset, then its state) must not read the error of the test
    before it."""
    fault(qgpu, "aer", "correctable")
    assert qgpu.qt.qmp is not None
    events = len(qgpu.qt.qmp.events())
    qgpu.qt.qmp.command("system_reset")
    qgpu.qt.qmp.wait_event("RESET", after=events)
    assert qgpu.qom("x-fault-aer") == ""


PCI_EXP_DEVSTA = 0x0A
PCI_EXP_LNKCAP = 0x0C


@pytest.mark.parametrize("kind", ["correctable", "nonfatal", "fatal"])
def test_an_aer_error_changes_device_status_and_nothing_else(qgpu: QgpuDevice,
                                                             kind: str) -> None:
    """Issue 11: after x-fault-aer=nonfatal|fatal every later migration failed
    ("Bad config data: i=0x8c"): QEMU's pcie_aer.c wrote the 16-bit Device
    Status with a 32-bit store and zeroed half of the read-only Link
    Capabilities. qgpu carries a fix (qemu-device/patches/0003)."""
    exp = qgpu.fn.capabilities()[CAP_ID_EXP]
    lnkcap = qgpu.fn.read32(exp + PCI_EXP_LNKCAP)
    assert lnkcap != 0
    fault(qgpu, "aer", kind)
    assert qgpu.fn.read16(exp + PCI_EXP_DEVSTA) & 0xF, "no error bit in Device Status"
    assert qgpu.fn.read32(exp + PCI_EXP_LNKCAP) == lnkcap, "Link Capabilities changed"


def test_an_aer_error_on_the_root_bus_is_only_recorded() -> None:
    """On ``pcie.0`` qgpu is a Root Complex Integrated Endpoint: q35 has no
    root port or event collector above it, so x-fault-aer records the error
    in the function's own AER capability and Device Status, and no message
    goes anywhere (spec 9.5)."""
    qt = QtestMachine(["-device", "qgpu,id=qgpu0,bus=pcie.0,addr=3"], name="rciep")
    with qt:
        enable_ecam(qt)
        fn = PciFunction(qt, 0, 3)
        assert fn.vendor_id == ABI.PCI_VENDOR_ID
        exp = fn.capabilities()[CAP_ID_EXP]
        assert fn.read16(exp + 2) >> 4 & 0xF == PCI_EXP_TYPE_RC_END
        aer = fn.ext_capabilities()[EXT_CAP_ID_ERR]
        assert qt.qmp is not None
        qt.qmp.qom_set(QOM_PATH, "x-fault-aer", "fatal")
        assert fn.read32(aer + PCI_ERR_UNCOR_STATUS) & PCI_ERR_UNC_MALF_TLP
        assert fn.read16(exp + PCI_EXP_DEVSTA) & 0x4        # Fatal Error Detected
        assert qt.qmp.qom_get(QOM_PATH, "x-fault-aer") == "fatal"


def test_hmp_pcie_aer_inject_error_reaches_the_device(qgpu: QgpuDevice) -> None:
    assert qgpu.qt.qmp is not None
    aer = qgpu.fn.ext_capabilities()[EXT_CAP_ID_ERR]
    out = qgpu.qt.qmp.hmp("pcie_aer_inject_error qgpu0 POISON_TLP")
    assert "error" not in out.lower(), out
    assert qgpu.fn.read32(aer + PCI_ERR_UNCOR_STATUS) & PCI_ERR_UNC_POISON_TLP


def test_bad_fault_values_are_refused(qgpu: QgpuDevice) -> None:
    with pytest.raises(QmpError, match="'correctable', 'nonfatal' or 'fatal'"):
        fault(qgpu, "aer", "meltdown")
    with pytest.raises(QmpError):
        fault(qgpu, "dma-error-nth", "two")


@pytest.mark.parametrize("knob", ["dma-error-nth", "truncate-nth", "corrupt-nth"])
def test_faults_on_one_byte_transfers(qgpu: QgpuDevice, knob: str) -> None:
    """Half of one byte is nothing: the fault still fires, nothing is left undefined."""
    fault(qgpu, knob, 1)
    src = qgpu.mem.alloc(1)
    qgpu.mem.write(src, b"\x5a")
    [code] = qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0, length=1))
    expect = {"dma-error-nth": (ABI.ERR_DMA_READ, b"\x00"), "truncate-nth": (0, b"\x00"),
              "corrupt-nth": (0, b"\xa5")}[knob]
    assert (code, qgpu.vram_host(0, 1)) == expect
    assert qgpu.stat("faults-injected") == 1


def test_fault_counters_count_transitions(qgpu: QgpuDevice) -> None:
    fault(qgpu, "hang", True)
    fault(qgpu, "hang", True)
    fault(qgpu, "regs-all-ones", True)
    fault(qgpu, "regs-all-ones", True)
    fault(qgpu, "regs-all-ones", False)
    assert qgpu.stat("faults-injected") == 2


def test_aer_message_reaches_the_root_port_once_enabled(qgpu: QgpuDevice) -> None:
    """DEVCTL's error-reporting enables are writable, and gate the device's AER messages."""
    from qgpu.device import ROOT_PORT_SLOT
    from qgpu.pci import CAP_ID_EXP, PciFunction
    port = PciFunction(qgpu.qt, 0, ROOT_PORT_SLOT)
    port_aer = port.ext_capabilities()[EXT_CAP_ID_ERR]
    root_status = port_aer + 0x30                    # PCI_ERR_ROOT_STATUS
    devctl = qgpu.fn.capabilities()[CAP_ID_EXP] + 8  # PCI_EXP_DEVCTL
    # What the OS does on the root port: SERR forwarding and error reporting on.
    port.write16(0x3E, port.read16(0x3E) | 0x2)                  # PCI_BRIDGE_CTL_SERR
    port_devctl = port.capabilities()[CAP_ID_EXP] + 8
    port.write16(port_devctl, port.read16(port_devctl) | 0xF)
    fault(qgpu, "aer", "correctable")
    assert port.read32(root_status) & 1 == 0, "masked by DEVCTL: nothing reaches the port"
    qgpu.fn.write16(devctl, qgpu.fn.read16(devctl) | 0xF)
    assert qgpu.fn.read16(devctl) & 0xF == 0xF
    fault(qgpu, "aer", "correctable")
    assert port.read32(root_status) & 1, "ERR_COR received by the root port"
