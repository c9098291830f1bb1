"""Statistics and the DMA trace, read back over QMP (qom-get)."""

from __future__ import annotations

from qgpu.abi import ABI
from qgpu.device import QgpuDevice

from .conftest import StartQgpu

UNASSIGNED = 0x20_0000_0000


def test_statistics_after_mixed_work(qgpu: QgpuDevice) -> None:
    slots = qgpu.msix_enable()
    qgpu.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
    src, dst, fence = qgpu.mem.alloc(5000), qgpu.mem.alloc(3000), qgpu.mem.alloc(8)
    codes = qgpu.run(
        qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0, length=5000),
        qgpu.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0, dst=dst, length=3000),
        qgpu.desc(opcode=ABI.OP_COPY_VRAM, src=0, dst=8192, length=1000),
        qgpu.desc(opcode=ABI.OP_FILL, dst=0, length=12, fill_pattern=3),
        qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=UNASSIGNED, dst=0, length=64),
        qgpu.desc(opcode=ABI.OP_NOP, flags=ABI.DESC_F_FENCE | ABI.DESC_F_IRQ,
                  fence_addr=fence, fence_value=99),
    )
    assert codes == [0, 0, 0, 0, ABI.ERR_DMA_READ, 0]
    expect = {"descriptors": 6, "transfers": 4, "bytes-to-vram": 5000,
              "bytes-from-vram": 3000, "bytes-vram-copy": 1000, "bytes-fill": 12,
              "errors": 1, "aborted": 0, "last-fence": 99, "doorbells": 1,
              "interrupts": 2, "access-errors": 0}
    assert {name: qgpu.stat(name) for name in expect} == expect
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_ERROR], ABI.MSIX_VEC_ERROR)
    assert qgpu.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA)


def test_dma_trace_records(qgpu: QgpuDevice) -> None:
    src, dst = qgpu.mem.alloc(4096), qgpu.mem.alloc(4096)
    qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0x3000, length=4096),
             qgpu.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0x3000, dst=dst, length=100),
             qgpu.desc(opcode=ABI.OP_FILL, dst=0x5000, length=8, fill_pattern=1),
             qgpu.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0, dst=UNASSIGNED, length=64))
    trace = qgpu.dma_trace()
    simplified = [(t["seq"], t["ring-index"], t["op"], t["bus-addr"], t["vram-offset"],
                   t["length"], t["error"], t["status"]) for t in trace]
    assert simplified == [
        (0, 0, "copy-to-vram", src, 0x3000, 4096, 0, "ok"),
        (1, 1, "copy-from-vram", dst, 0x3000, 100, 0, "ok"),
        (2, 2, "fill", 0, 0x5000, 8, 0, "ok"),
        (3, 3, "copy-from-vram", UNASSIGNED, 0, 64, ABI.ERR_DMA_WRITE, "dma-write"),
    ]


def test_trace_keeps_only_the_last_entries(start: StartQgpu) -> None:
    dev = start("trace-depth=4")
    dev.setup_ring(16)
    dev.run(*(dev.desc(opcode=ABI.OP_FILL, dst=64 * i, length=4) for i in range(10)))
    trace = dev.dma_trace()
    assert [t["seq"] for t in trace] == [6, 7, 8, 9]
    assert [t["vram-offset"] for t in trace] == [384, 448, 512, 576]


def test_trace_status_names_match_the_abi(qgpu: QgpuDevice) -> None:
    """The device's status strings are the ABI's QGPU_ERR_* names, in kebab case."""
    qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=UNASSIGNED, dst=0, length=64))
    [record] = qgpu.dma_trace()
    assert record["status"] == ABI.names("ERR_")[record["error"]].lower().replace("_", "-")
