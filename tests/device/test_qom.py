"""Statistics, the DMA trace and the properties, read back over QMP."""

from __future__ import annotations

import re
import time

from qgpu.abi import ABI
from qgpu.device import QOM_PATH, QgpuDevice
from qgpu.paths import repo_root

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


# Properties qgpu inherits from QOM, qdev and the PCI core, documented by QEMU.
INHERITED = {"type", "parent_bus", "realized", "hotplugged", "hotpluggable", "addr", "romfile",
             "romsize", "rombar", "multifunction", "x-pcie-lnksta-dllla",
             "x-pcie-extcap-init", "failover_pair_id", "acpi-index", "busnr",
             "x-pcie-err-unc-mask", "x-pcie-ari-nextfn-1", "x-max-bounce-buffer-size",
             "sriov-pf", "x-pcie-ext-tag", "x-pci-class-code", "x-pci-vendor-id",
             "x-pci-device-id", "x-pci-sub-vendor-id", "x-pci-sub-device-id",
             "x-pcie-lnkcap-cap-rw", "x-pcie-flr-init", "x-romfile",
             "legacy-addr", "legacy-memdev"}   # qdev's string views of addr, memdev


def test_every_property_is_described_and_in_the_spec(qgpu: QgpuDevice) -> None:
    """``-device qgpu,help`` and ``qom-list`` describe each of qgpu's own
    properties, and the spec (docs/qgpu-spec.md) has each in a table."""
    assert qgpu.qt.qmp is not None
    spec = (repo_root() / "docs" / "qgpu-spec.md").read_text()
    props = {p["name"]: p for p in qgpu.qt.qmp.command("qom-list", {"path": QOM_PATH})}
    props.update({p["name"]: p for p in qgpu.qt.qmp.command(
        "device-list-properties", {"typename": "qgpu"})})
    own = sorted(n for n, p in props.items()
                 if n not in INHERITED and not str(p.get("type", "")).startswith("child<"))
    assert "vram-prefetchable" in own and "stat-dropped" in own
    # qdev's generic text for a bool ("on/off") describes nothing.
    undescribed = [n for n in own if props[n].get("description", "on/off") == "on/off"]
    assert not undescribed, f"no description: {undescribed}"
    undocumented = [n for n in own  # a table's first column, or a heading
                    if not re.search(rf"^(\| `{n}` \||#+ .*`{n}`)", spec, re.M)]
    assert not undocumented, f"not in the spec's tables: {undocumented}"


def test_engine_busy_time_counts_engine_runs_only(qgpu: QgpuDevice) -> None:
    """``stat-engine-busy-ns`` grows with the data the engine moves, by less than the
    wall time around the work (it counts the engine's runs, not the time qtest took to
    see them end), and not at all while the engine has nothing to do."""
    length = 8 << 20
    src = qgpu.mem.alloc(length, align=4096)
    busy = qgpu.stat("engine-busy-ns")      # enabling the engine ran it once, empty
    start = time.monotonic_ns()
    codes = qgpu.run(*(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0, length=length)
                       for _ in range(4)))
    wall = time.monotonic_ns() - start
    assert codes == [0] * 4
    grown = qgpu.stat("engine-busy-ns") - busy
    assert 0 < grown < wall, f"engine busy {grown} ns, wall time around it {wall} ns"
    after = qgpu.stat("engine-busy-ns")
    qgpu.reg(ABI.REG_ID)                    # a register read runs no engine
    assert qgpu.stat("engine-busy-ns") == after


def test_engine_busy_time_starts_at_zero(start: StartQgpu) -> None:
    dev = start()
    assert dev.stat("engine-busy-ns") == 0
    dev.setup_ring(4, enable=False)
    assert dev.stat("engine-busy-ns") == 0, "the engine ran before it was enabled"
