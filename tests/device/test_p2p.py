"""Peer-to-peer DMA between two qgpu devices (issue 14, item 4: the device's part).

Device 0 DMAs from and to device 1's VRAM BAR as it would to guest RAM: a
normal bus access, routed by the root complex like any other. Only its own
BARs are refused (test_errors.py). Both VRAM backends sit on files the test
reads directly, so what moved is checked without going through either device.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from qgpu.abi import ABI
from qgpu.device import QgpuDevice, start_qgpu
from qgpu.pci import PciFunction, setup_root_port
from qgpu.shm import SharedMemory

VRAM_SIZE = 16 << 20
#: The peer: a second root port (slot 3, bus 2) with qgpu1, windows beside qgpu0's.
PEER_SLOT = 3
PEER_REGS = 0xC040_0000
PEER_MSIX = 0xC050_0000
PEER_MMIO_WINDOW = (0xC040_0000, 0x0020_0000)
PEER_VRAM = 0x41_0000_0000


@dataclass
class Pair:
    """qgpu0 (a QgpuDevice, ring set up) and its peer qgpu1's function and VRAM file."""

    dev: QgpuDevice
    peer: PciFunction
    peer_vram: SharedMemory


@pytest.fixture
def pair() -> Iterator[Pair]:
    peer_vram = SharedMemory(VRAM_SIZE, "peer-vram")
    dev = None
    try:
        dev = start_qgpu(vram_size=VRAM_SIZE, extra_args=(
            "-device", f"pcie-root-port,id=qgpu-rp1,chassis=2,bus=pcie.0,addr={PEER_SLOT}",
            "-object", f"memory-backend-file,id=qgpu-vram1,size={VRAM_SIZE},"
                       f"mem-path={peer_vram.path},share=on",
            "-device", "qgpu,id=qgpu1,bus=qgpu-rp1,memdev=qgpu-vram1"))
        port = PciFunction(dev.qt, 0, PEER_SLOT)
        setup_root_port(port, 2, PEER_MMIO_WINDOW, (PEER_VRAM, VRAM_SIZE))
        peer = PciFunction(dev.qt, 2, 0)
        assert (peer.vendor_id, peer.device_id) == (ABI.PCI_VENDOR_ID, ABI.PCI_DEVICE_ID)
        for index, addr in ((ABI.BAR_REGS, PEER_REGS), (ABI.BAR_VRAM, PEER_VRAM),
                            (ABI.BAR_MSIX, PEER_MSIX)):
            bar = peer.bar(index)
            assert bar is not None, f"qgpu1 has no BAR{index}"
            peer.set_bar(bar, addr)
        peer.enable(memory=True, master=True)
        dev.setup_ring(16)
        yield Pair(dev, peer, peer_vram)
    finally:
        if dev is not None:
            dev.qt.stop()
        peer_vram.close()


def test_copy_from_a_peers_vram_bar_reads_the_peers_vram(pair: Pair,
                                                           rng: random.Random) -> None:
    data = rng.randbytes(256 << 10)
    pair.peer_vram.write(4096, data)
    dev = pair.dev
    assert dev.run(dev.desc(opcode=ABI.OP_COPY_TO_VRAM, src=PEER_VRAM + 4096, dst=8192,
                            length=len(data))) == [0]
    assert dev.vram_host(8192, len(data)) == data
    # The trace shows the bus address the device read: the peer's BAR.
    trace = dev.dma_trace()
    assert any(r["bus-addr"] == PEER_VRAM + 4096 for r in trace), trace[-4:]


def test_copy_into_a_peers_vram_bar_writes_the_peers_vram(pair: Pair,
                                                           rng: random.Random) -> None:
    data = rng.randbytes(64 << 10)
    dev = pair.dev
    dev.vram_write(0, data)
    assert dev.run(dev.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0, dst=PEER_VRAM + 12345,
                            length=len(data))) == [0]
    assert pair.peer_vram.read(12345, len(data)) == data
    assert pair.peer_vram.read(12345 + len(data), 64) == bytes(64)


def test_a_peer_whose_memory_decoding_is_off_fails_the_copy(pair: Pair) -> None:
    """With the peer's Memory Space Enable clear, its BAR decodes nothing: the
    read and the write fail, and the descriptors report it."""
    pair.peer_vram.write(0, b"\xa5" * 4096)
    pair.peer.enable(memory=False, master=True)
    dev = pair.dev
    dev.vram_write(0, b"\x11" * 4096)
    assert dev.run(dev.desc(opcode=ABI.OP_COPY_TO_VRAM, src=PEER_VRAM, dst=0,
                            length=4096)) == [ABI.ERR_DMA_READ]
    # The failing chunk's destination is undefined (spec 6.2), but it is not the peer's data.
    assert dev.vram_host(0, 4096) != b"\xa5" * 4096
    assert dev.run(dev.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0, dst=PEER_VRAM + 8192,
                            length=4096)) == [ABI.ERR_DMA_WRITE]
    assert pair.peer_vram.read(8192, 4096) == bytes(4096)
    assert [t["status"] for t in dev.dma_trace()[-2:]] == ["dma-read", "dma-write"]
