"""Every descriptor error code, its side effects, and that the engine goes on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qgpu.abi import ABI
from qgpu.device import MSIX_ADDR, REGS_ADDR, VRAM_ADDR, QgpuDevice

from .amd_vi import (
    AMDVI_DEV_MODE_1_LEVEL,
    AMDVI_DEV_MODE_3_LEVEL,
    AMDVI_DEV_TRANSLATION_VALID,
    AMDVI_DEV_VALID,
    AMDVI_EVENT_IO_PAGE_FAULT,
    AMDVI_RW,
    EVENT_SIZE,
    enable_amd_vi,
    identity_page_table,
)
from .conftest import StartQgpu

UNASSIGNED = 0x20_0000_0000          # 128 GiB: nothing decodes there
TOP = 1 << 64

Case = Callable[[QgpuDevice], bytes]


def _d(**kw: int) -> Case:
    return lambda dev: dev.desc(**kw)


def _buf(dev: QgpuDevice, n: int = 4096) -> int:
    return dev.mem.alloc(n)


def _sg(dev: QgpuDevice, segs: list[tuple[int, int]], length: int, *, to_vram: bool = True,
        reserved: bool = False) -> bytes:
    addr, count = dev.sg_list(segs)
    if reserved:        # set the reserved word of the first entry
        dev.mem.write(addr + 12, b"\x01\x00\x00\x00")
    side = {"src": addr, "dst": 0} if to_vram else {"src": 0, "dst": addr}
    op = ABI.OP_COPY_TO_VRAM if to_vram else ABI.OP_COPY_FROM_VRAM
    return dev.desc(opcode=op, flags=ABI.DESC_F_SG, sg_count=count, length=length, **side)


CASES: dict[str, tuple[int, Case]] = {
    "bad opcode": (ABI.ERR_BAD_OPCODE, _d(opcode=ABI.OP_MAX + 1)),
    "huge opcode": (ABI.ERR_BAD_OPCODE, _d(opcode=0xFFFF_FFFF)),
    "unknown flag": (ABI.ERR_BAD_FLAGS, _d(opcode=ABI.OP_NOP, flags=1 << 7)),
    "sg on fill": (ABI.ERR_BAD_FLAGS, _d(opcode=ABI.OP_FILL, flags=ABI.DESC_F_SG, length=4,
                                         sg_count=1)),
    "sg on vram copy": (ABI.ERR_BAD_FLAGS, _d(opcode=ABI.OP_COPY_VRAM, flags=ABI.DESC_F_SG,
                                              length=4, sg_count=1)),
    "reserved word": (ABI.ERR_RESERVED, _d(opcode=ABI.OP_NOP, reserved=1)),
    "sg_count without sg": (ABI.ERR_RESERVED, lambda d: d.desc(
        opcode=ABI.OP_COPY_TO_VRAM, src=_buf(d), length=16, sg_count=1)),
    "pattern on copy": (ABI.ERR_RESERVED, lambda d: d.desc(
        opcode=ABI.OP_COPY_TO_VRAM, src=_buf(d), length=16, fill_pattern=1)),
    "nop with length": (ABI.ERR_RESERVED, _d(opcode=ABI.OP_NOP, length=1)),
    "fence address without flag": (ABI.ERR_RESERVED, _d(opcode=ABI.OP_NOP, fence_addr=0x1000)),
    "fence value without flag": (ABI.ERR_RESERVED, _d(opcode=ABI.OP_NOP, fence_value=1)),
    "fill with src": (ABI.ERR_RESERVED, _d(opcode=ABI.OP_FILL, src=1, length=4)),
    "zero-length copy": (ABI.ERR_LENGTH, lambda d: d.desc(
        opcode=ABI.OP_COPY_TO_VRAM, src=_buf(d), length=0)),
    "zero-length fill": (ABI.ERR_LENGTH, _d(opcode=ABI.OP_FILL, length=0)),
    "vram end": (ABI.ERR_VRAM_RANGE, lambda d: d.desc(
        opcode=ABI.OP_COPY_TO_VRAM, src=_buf(d), dst=d.vram_size - 4, length=8)),
    "vram offset wraps": (ABI.ERR_VRAM_RANGE, lambda d: d.desc(
        opcode=ABI.OP_COPY_TO_VRAM, src=_buf(d), dst=TOP - 8, length=16)),
    "vram length wraps": (ABI.ERR_VRAM_RANGE, lambda d: d.desc(
        opcode=ABI.OP_COPY_FROM_VRAM, src=16, dst=_buf(d), length=TOP - 8)),
    "vram copy src beyond": (ABI.ERR_VRAM_RANGE, lambda d: d.desc(
        opcode=ABI.OP_COPY_VRAM, src=d.vram_size, dst=0, length=1)),
    "fill beyond": (ABI.ERR_VRAM_RANGE, lambda d: d.desc(
        opcode=ABI.OP_FILL, dst=d.vram_size - 1, length=2)),
    "guest address wraps": (ABI.ERR_ADDR_OVERFLOW, _d(
        opcode=ABI.OP_COPY_TO_VRAM, src=TOP - 16, length=32)),
    "fence address wraps": (ABI.ERR_ADDR_OVERFLOW, _d(
        opcode=ABI.OP_NOP, flags=ABI.DESC_F_FENCE, fence_addr=TOP - 4)),
    "dma from our registers": (ABI.ERR_SELF_DMA, _d(
        opcode=ABI.OP_COPY_TO_VRAM, src=REGS_ADDR, length=64)),
    "dma into our registers": (ABI.ERR_SELF_DMA, _d(
        opcode=ABI.OP_COPY_FROM_VRAM, dst=REGS_ADDR + 0x30, length=64)),
    "dma overlapping our registers": (ABI.ERR_SELF_DMA, _d(
        opcode=ABI.OP_COPY_FROM_VRAM, dst=REGS_ADDR - 8, length=16)),
    "dma from our vram bar": (ABI.ERR_SELF_DMA, _d(
        opcode=ABI.OP_COPY_TO_VRAM, src=VRAM_ADDR + 4096, length=64)),
    "dma into our msix table": (ABI.ERR_SELF_DMA, _d(
        opcode=ABI.OP_COPY_FROM_VRAM, dst=MSIX_ADDR, length=16)),
    "fence into our registers": (ABI.ERR_SELF_DMA, _d(
        opcode=ABI.OP_NOP, flags=ABI.DESC_F_FENCE, fence_addr=REGS_ADDR + ABI.REG_DOORBELL)),
    "read from nowhere": (ABI.ERR_DMA_READ, _d(
        opcode=ABI.OP_COPY_TO_VRAM, src=UNASSIGNED, length=4096)),
    "write to nowhere": (ABI.ERR_DMA_WRITE, _d(
        opcode=ABI.OP_COPY_FROM_VRAM, dst=UNASSIGNED, length=4096)),
    "sg list unreadable": (ABI.ERR_DMA_READ, _d(
        opcode=ABI.OP_COPY_TO_VRAM, flags=ABI.DESC_F_SG, src=UNASSIGNED, sg_count=4,
        length=64)),
    "sg segment unreadable": (ABI.ERR_DMA_READ, lambda d: _sg(
        d, [(_buf(d, 64), 64), (UNASSIGNED, 64)], 128)),
    "sg segment unwritable": (ABI.ERR_DMA_WRITE, lambda d: _sg(
        d, [(_buf(d, 64), 64), (UNASSIGNED, 64)], 128, to_vram=False)),
    "sg segment in our bar": (ABI.ERR_SELF_DMA, lambda d: _sg(
        d, [(_buf(d, 64), 64), (REGS_ADDR, 64)], 128)),
    "sg segment wraps": (ABI.ERR_ADDR_OVERFLOW, lambda d: _sg(
        d, [(TOP - 32, 64)], 64)),
    "sg count zero": (ABI.ERR_SG_COUNT, _d(
        opcode=ABI.OP_COPY_TO_VRAM, flags=ABI.DESC_F_SG, src=0x10000, length=64)),
    "sg count too big": (ABI.ERR_SG_COUNT, _d(
        opcode=ABI.OP_COPY_TO_VRAM, flags=ABI.DESC_F_SG, src=0x10000, length=64,
        sg_count=ABI.SG_MAX_ENTRIES + 1)),
    "sg zero-length entry": (ABI.ERR_SG_ENTRY, lambda d: _sg(
        d, [(_buf(d, 64), 64), (_buf(d, 64), 0)], 64)),
    "sg reserved entry": (ABI.ERR_SG_ENTRY, lambda d: _sg(
        d, [(_buf(d, 64), 64)], 64, reserved=True)),
    "sg lengths short": (ABI.ERR_SG_LENGTH, lambda d: _sg(
        d, [(_buf(d, 64), 64), (_buf(d, 64), 64)], 129)),
    "sg lengths long": (ABI.ERR_SG_LENGTH, lambda d: _sg(
        d, [(_buf(d, 64), 64), (_buf(d, 64), 64)], 127)),
    "fence unwritable": (ABI.ERR_FENCE_WRITE, _d(
        opcode=ABI.OP_NOP, flags=ABI.DESC_F_FENCE, fence_addr=UNASSIGNED)),
}


@pytest.mark.parametrize("case", CASES)
def test_error_code(qgpu: QgpuDevice, case: str) -> None:
    code, make = CASES[case]
    desc = make(qgpu)
    # The device ignores the status word's input value.
    desc = desc[:ABI.DESC_OFF_STATUS] + b"\xff\xff\xff\x7f" + desc[ABI.DESC_OFF_STATUS + 4:]
    # A good descriptor after the bad one still runs: errors do not stop the engine.
    src = qgpu.mem.alloc(64)
    qgpu.mem.write(src, b"after" * 12 + b"!!!!")
    good = qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0x10_0000, length=64)
    [bad_index, _] = qgpu.submit(desc, good)
    qgpu.wait_idle()
    assert qgpu.status(bad_index) == ABI.DESC_STATUS_DONE | code
    assert qgpu.status(bad_index + 1) == ABI.DESC_STATUS_DONE
    assert qgpu.vram_host(0x10_0000, 64) == b"after" * 12 + b"!!!!"
    assert qgpu.reg(ABI.REG_DMA_ERROR) == code
    assert qgpu.reg(ABI.REG_DMA_ERROR_INDEX) == bad_index
    assert qgpu.reg(ABI.REG_INT_STATUS) & ABI.INT_DMA_ERROR
    assert qgpu.stat("errors") == 1
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) == ABI.ENGINE_STATUS_ENABLED
    # The trace names the failure too.
    assert [t["error"] for t in qgpu.dma_trace()].count(code) >= 1
    # Writing DMA_ERROR clears it and its index.
    qgpu.set_reg(ABI.REG_DMA_ERROR, 0)
    assert (qgpu.reg(ABI.REG_DMA_ERROR), qgpu.reg(ABI.REG_DMA_ERROR_INDEX)) == (0, 0)


def test_a_lower_sg_limit_is_advertised_and_enforced(start: StartQgpu) -> None:
    """``x-sg-max-entries`` lowers the SG limit (the fuzzer's configurations use it).

    The register the driver reads says so, a list of that many entries runs, and
    one entry more fails with SG_COUNT, as a list over 4,096 entries does by default.
    """
    dev = start("x-sg-max-entries=16")
    dev.setup_ring(8)
    assert dev.reg(ABI.REG_SG_MAX_ENTRIES) == 16
    data = bytes(range(1, 69))
    segs = []
    for i in range(17):
        addr = _buf(dev, 4)
        dev.mem.write(addr, data[4 * i:4 * i + 4])
        segs.append((addr, 4))
    fits, too_long = _sg(dev, segs[:16], 64), _sg(dev, segs, 68)
    [first, second] = dev.submit(fits, too_long)
    dev.wait_idle()
    assert dev.status(first) == ABI.DESC_STATUS_DONE
    assert dev.vram_host(0, 64) == data[:64]
    assert dev.status(second) == ABI.DESC_STATUS_DONE | ABI.ERR_SG_COUNT
    assert dev.vram_host(64, 4) == bytes(4), "the refused list moved data"
    assert dev.reg(ABI.REG_DMA_ERROR) == ABI.ERR_SG_COUNT


def test_error_cases_cover_every_code() -> None:
    covered = {code for code, _ in CASES.values()}
    # ABORTED and DESC_FETCH need engine state; see test_reset.py and below.
    special = {ABI.ERR_ABORTED, ABI.ERR_DESC_FETCH}
    every = set(ABI.names("ERR_")) - {ABI.ERR_NONE}
    assert every - special == covered


def test_failed_fence_write_leaves_fence_register(qgpu: QgpuDevice) -> None:
    ok = qgpu.mem.alloc(8)
    qgpu.run(qgpu.desc(opcode=ABI.OP_NOP, flags=ABI.DESC_F_FENCE, fence_addr=ok, fence_value=7))
    [index] = qgpu.submit(qgpu.desc(opcode=ABI.OP_NOP, flags=ABI.DESC_F_FENCE,
                                    fence_addr=UNASSIGNED, fence_value=42))
    qgpu.wait_idle()
    assert qgpu.status(index) == ABI.DESC_STATUS_DONE | ABI.ERR_FENCE_WRITE
    assert qgpu.reg(ABI.REG_FENCE_LO) == 7
    assert qgpu.stat("last-fence") == 7


def test_failed_descriptor_still_signals_its_fence(qgpu: QgpuDevice) -> None:
    fence = qgpu.mem.alloc(8)
    [code] = qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=UNASSIGNED, length=64,
                                flags=ABI.DESC_F_FENCE, fence_addr=fence, fence_value=5))
    assert code == ABI.ERR_DMA_READ
    assert qgpu.mem.read(fence, 8) == (5).to_bytes(8, "little")


def test_unreadable_ring_halts_until_engine_reset(qgpu: QgpuDevice) -> None:
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    qgpu.set_reg(ABI.REG_ENGINE_CTRL, 0)
    qgpu.set_reg(ABI.REG_RING_BASE_LO, 0)
    qgpu.set_reg(ABI.REG_RING_BASE_HI, UNASSIGNED >> 32)
    qgpu.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)
    qgpu.set_reg(ABI.REG_DOORBELL, 1)
    status = qgpu.wait_idle()
    assert status & ABI.ENGINE_STATUS_HALTED
    assert qgpu.reg(ABI.REG_DMA_ERROR) == ABI.ERR_DESC_FETCH
    assert qgpu.reg(ABI.REG_INT_STATUS) & ABI.INT_ENGINE_HALT
    # Doorbells do nothing while halted.
    qgpu.set_reg(ABI.REG_DOORBELL, 2)
    qgpu.qt.poll()
    assert qgpu.reg(ABI.REG_RING_HEAD) == 0
    # ENGINE_RESET clears the halt; with a good ring the engine works again.
    qgpu.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) == 0
    qgpu.setup_ring(8)
    assert qgpu.run(qgpu.desc(opcode=ABI.OP_NOP)) == [0]


def test_random_garbage_never_breaks_qemu(qgpu: QgpuDevice) -> None:
    """Seeded garbage descriptors and register writes: QEMU survives and still works."""
    import random
    rng = random.Random(1234)
    interesting = [0, 1, 4096, qgpu.vram_size - 1, qgpu.vram_size, REGS_ADDR, VRAM_ADDR,
                   UNASSIGNED, TOP - 1, TOP - 4096, 0x10_0000]
    def pick() -> int:
        return rng.choice(interesting) if rng.random() < 0.6 else rng.getrandbits(64)
    for _ in range(8):
        descs = [qgpu.desc(opcode=rng.randrange(0, 7), flags=rng.randrange(0, 16),
                           src=pick(), dst=pick(), length=rng.choice([0, 1, 64, 1 << 20, pick()]),
                           fence_addr=pick(), fence_value=rng.getrandbits(64),
                           sg_count=rng.choice([0, 1, 5, 5000]))
                 for _ in range(30)]
        qgpu.submit(*descs)
        qgpu.wait_idle(60)
        for _ in range(20):
            off = rng.randrange(0, ABI.REGS_SIZE, 4)
            if off not in (ABI.REG_ENGINE_CTRL, ABI.REG_ENGINE_RESET, ABI.REG_RING_BASE_LO,
                           ABI.REG_RING_BASE_HI, ABI.REG_RING_SIZE, ABI.REG_DOORBELL):
                qgpu.set_reg(off, rng.getrandbits(32))
    assert qgpu.reg(ABI.REG_ID) == ABI.ID_MAGIC
    qgpu.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    qgpu.setup_ring(8)
    src = qgpu.mem.alloc(64)
    qgpu.mem.write(src, b"z" * 64)
    assert qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0, length=64)) == [0]
    assert qgpu.vram_host(0, 64) == b"z" * 64


VTD_REGS = 0xFED9_0000                   # intel-iommu's register window on q35
DMAR_FECTL_REG = 0x38                   # 32-bit: fault event control
DMAR_FEDATA_REG = 0x3C


def test_dma_into_the_vt_d_registers_does_not_abort_qemu(start: StartQgpu) -> None:
    """Issue 11: an 8-byte COPY_FROM_VRAM aimed at a 32-bit VT-d register
    aborted QEMU (``vtd_mem_write: Assertion `size == 4' failed``): the memory
    core writes DMA in the largest size the region accepts. A guest must not
    be able to abort QEMU through the device; qgpu carries a fix of
    intel_iommu.c (qemu-device/patches/0002): the write is split in two."""
    dev = start(extra_args=["-device", "intel-iommu"])
    dev.setup_ring(8)
    assert dev.vram_shm is not None
    dev.vram_shm.write(0, (0x4321 << 32 | 0x8000_0000).to_bytes(8, "little"))
    codes = dev.run(dev.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0, dst=VTD_REGS + DMAR_FECTL_REG,
                             length=8))
    assert codes == [0]
    # Both halves landed, in their own registers (FECTL keeps only its mask bit).
    assert dev.qt.readl(VTD_REGS + DMAR_FECTL_REG) == 0x8000_0000
    assert dev.qt.readl(VTD_REGS + DMAR_FEDATA_REG) == 0x4321


def test_a_dma_fault_behind_amd_vi_is_reported_cleanly(start: StartQgpu) -> None:
    """Issue 11: any DMA that faults in AMD-Vi's page walk ran QEMU into
    undefined behaviour (UBSan, amd_iommu.c: "shift exponent 64 is too large")
    while it built the fault event. qgpu carries a fix
    (qemu-device/patches/0004); the sanitizer suite fails without it. Here
    the device's descriptor fetch faults, the engine halts with DESC_FETCH,
    and QEMU lives on."""
    # pt=off: with QEMU's default pt=on, AMD-Vi leaves every device in
    # passthrough (its translating region stays disabled for good).
    dev = start(extra_args=["-device", "amd-iommu,pt=off"])
    dev.setup_ring(8)
    # A device table entry with no read or write permission: every access
    # of the device faults.
    enable_amd_vi(dev, AMDVI_DEV_VALID | AMDVI_DEV_TRANSLATION_VALID | AMDVI_DEV_MODE_1_LEVEL)
    # The descriptor fetch goes through AMD-Vi too: it is the access that
    # faults, and the engine halts.
    dev.submit(dev.desc(opcode=ABI.OP_NOP))
    st = dev.wait_idle()
    assert st & ABI.ENGINE_STATUS_HALTED, f"ENGINE_STATUS 0x{st:x}"
    assert dev.reg(ABI.REG_DMA_ERROR) == ABI.ERR_DESC_FETCH
    assert dev.qt.proc is not None and dev.qt.proc.is_alive()


def test_amd_vi_logs_a_page_fault_in_its_event_log(start: StartQgpu) -> None:
    """QEMU 10.0.2's AMD-Vi never wrote its event log: it tested the
    overflow bit with OR (always set), so every event was dropped. qgpu
    carries the fix (qemu-device/patches/0005), which the device's own
    tests need: an IOMMU that reports faults is one whose reports can land
    anywhere the guest aims them (test_reentrancy.py)."""
    dev = start(extra_args=["-device", "amd-iommu,pt=off"])
    dev.setup_ring(8)
    fault = 5 << 30 | 0x1230
    root = identity_page_table(dev, mapped=4 << 20, faulting_iova=fault)
    log = dev.mem.alloc(4096, align=4096)
    dev.mem.write(log, bytes(4096))
    enable_amd_vi(dev, AMDVI_DEV_VALID | AMDVI_DEV_TRANSLATION_VALID | AMDVI_DEV_MODE_3_LEVEL
                  | AMDVI_RW | root, event_log=log)
    assert dev.run(dev.desc(opcode=ABI.OP_COPY_TO_VRAM, src=fault, dst=0, length=64)) \
        == [ABI.ERR_DMA_READ]
    event = dev.mem.read(log, EVENT_SIZE)
    assert event[8:16] == fault.to_bytes(8, "little"), event.hex()
    assert event[7] >> 4 == AMDVI_EVENT_IO_PAGE_FAULT, event.hex()
