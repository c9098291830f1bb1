#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Write the seed corpus of the qgpu generic-fuzz configurations.

QEMU's generic fuzzer reads an input as commands separated by ``FUZZ``: the
first byte picks the operation, the rest is its packed C struct (see
``tests/qtest/fuzz/generic_fuzz.c``). Starting from nothing, it takes a long
while to guess a ring address, a ring size, an enable bit and a descriptor
that does work; these seeds start it off with programs that do: each sets up
the ring and the interrupts the way the driver does and submits descriptors
that the device fetches through the fuzzer's DMA patterns (the engine's
descriptor, SG-list and data reads are filled from them, in turn).

Every configuration (generic_fuzz_configs.qgpu) starts from the same seeds:
qgpu is PCI device 0 in each (the hotplug configuration adds the root port as
device 1), and its BARs are mapped first, at the lowest addresses, so BAR0 is
region 0 and the MSI-X table region 1.

Usage: make-seeds.py OUTDIR   (the checked-in corpus is qemu-device/tests/fuzz/seeds)
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from qgpu.abi import ABI

SEPARATOR = b"FUZZ"
OP_READ, OP_WRITE, OP_PCI_READ, OP_PCI_WRITE = 2, 3, 4, 5
OP_ADD_DMA_PATTERN, OP_CLEAR_DMA_PATTERNS, OP_CLOCK_STEP = 7, 8, 9
SIZE_WORD, SIZE_LONG, SIZE_QUAD = 1, 2, 3

REGS, MSIX_TABLE = 0, 1                 # fuzzable regions, in address order
QGPU, ROOT_PORT = 0, 1                  # fuzzable PCI devices (the root port: hotplug only)
ROOT_PORT_SLTCTL = 0x54 + 0x18          # pcie-root-port: PCIe capability + Slot Control
SLTCTL_POWER_OFF = 0x7C0                # Power Controller Control off, indicators off
MSIX_CAP, MSI_CAP = 0x40, 0x50          # qgpu.c: QGPU_CAP_OFF_*
RING = 0x0010_0000                      # guest RAM (512 MiB in every config)
FENCE = 0x0020_0000
SRC, DST, SG_LIST = 0x0030_0000, 0x0040_0000, 0x0050_0000
APIC_MSI = 0xFEE0_0000


def write(offset: int, value: int, size: int = SIZE_LONG, region: int = REGS) -> bytes:
    """MMIO write: struct { u8 size; u8 base; u32 offset; u64 value; } (padded to 16)."""
    return bytes([OP_WRITE]) + struct.pack("<BBxxIQ", size, region, offset, value)


def read(offset: int, size: int = SIZE_LONG, region: int = REGS) -> bytes:
    """MMIO read: struct { u8 size; u8 base; u32 offset; } (padded to 8)."""
    return bytes([OP_READ]) + struct.pack("<BBxxI", size, region, offset)


def pci_write(offset: int, value: int, size: int = SIZE_LONG, dev: int = QGPU) -> bytes:
    """Config write: struct { u8 size; u8 base; u8 offset; u32 value; } (padded to 8)."""
    return bytes([OP_PCI_WRITE]) + struct.pack("<BBBxI", size % 3, dev, offset, value)


def dma_pattern(data: bytes) -> bytes:
    """Fill the next DMA read from guest RAM with ``data`` (repeated)."""
    return bytes([OP_ADD_DMA_PATTERN]) + struct.pack("<BB", 0, 0) + data


def desc(**fields: int) -> bytes:
    return ABI.struct("qgpu_desc").pack(**fields)


def sg(*segments: tuple[int, int]) -> bytes:
    layout = ABI.struct("qgpu_sg_entry")
    return b"".join(layout.pack(addr=a, len=n) for a, n in segments)


def ring_setup(entries: int = 8) -> list[bytes]:
    return [write(ABI.REG_RING_BASE_LO, RING), write(ABI.REG_RING_BASE_HI, 0),
            write(ABI.REG_RING_SIZE, entries), write(ABI.REG_INT_MASK, ABI.INT_ALL),
            write(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)]


def msix_setup() -> list[bytes]:
    cmds = []
    for vec in range(ABI.MSIX_VECTORS):
        entry = vec * 16
        cmds += [write(entry, APIC_MSI, region=MSIX_TABLE),
                 write(entry + 4, 0, region=MSIX_TABLE),
                 write(entry + 8, 0x30 + vec, region=MSIX_TABLE),
                 write(entry + 12, 0, region=MSIX_TABLE)]          # unmasked
    return cmds + [pci_write(MSIX_CAP + 2, 0x8000, SIZE_WORD)]      # MSI-X enable


def msi_setup() -> list[bytes]:
    return [pci_write(MSI_CAP + 4, APIC_MSI), pci_write(MSI_CAP + 8, 0),
            pci_write(MSI_CAP + 12, 0x41, SIZE_WORD), pci_write(MSI_CAP + 2, 1, SIZE_WORD)]


FENCED = ABI.DESC_F_FENCE | ABI.DESC_F_IRQ


def seeds() -> dict[str, list[bytes]]:
    fill = desc(opcode=ABI.OP_FILL, flags=FENCED, dst=0x1000, length=4096,
                fill_pattern=0xA5A5A5A5, fence_addr=FENCE, fence_value=1)
    to_vram = desc(opcode=ABI.OP_COPY_TO_VRAM, flags=FENCED, src=SRC, dst=0,
                   length=8192, fence_addr=FENCE, fence_value=2)
    from_vram = desc(opcode=ABI.OP_COPY_FROM_VRAM, flags=FENCED, src=0, dst=DST,
                     length=8192, fence_addr=FENCE, fence_value=3)
    sg_to = desc(opcode=ABI.OP_COPY_TO_VRAM, flags=FENCED | ABI.DESC_F_SG, src=SG_LIST,
                 dst=0x4000, length=6144, sg_count=2, fence_addr=FENCE, fence_value=4)
    sg_from = desc(opcode=ABI.OP_COPY_FROM_VRAM, flags=FENCED | ABI.DESC_F_SG, src=0x4000,
                   dst=SG_LIST, length=6144, sg_count=2, fence_addr=FENCE, fence_value=5)
    vram_copy = desc(opcode=ABI.OP_COPY_VRAM, flags=FENCED, src=0, dst=0x10000,
                     length=65536, fence_addr=FENCE, fence_value=6)
    nop = desc(opcode=ABI.OP_NOP, flags=FENCED, fence_addr=FENCE, fence_value=7)
    segments = sg((SRC, 4096), (SRC + 0x3000, 2048))
    doorbell = write(ABI.REG_DOORBELL, 1)
    return {
        "registers": [read(ABI.REG_ID), write(ABI.REG_SCRATCH, 0x1234),
                      read(ABI.REG_CAPS), write(ABI.REG_INT_MASK, ABI.INT_ALL),
                      write(ABI.REG_INT_RAISE, ABI.INT_SOFT), read(ABI.REG_INT_STATUS),
                      write(ABI.REG_INT_STATUS, ABI.INT_ALL), read(ABI.REG_USER_ID)],
        "fill-msix": msix_setup() + ring_setup() + [dma_pattern(fill), doorbell,
                                                    read(ABI.REG_FENCE_LO)],
        "copy-to-vram": ring_setup() + [dma_pattern(to_vram), doorbell],
        "copy-from-vram-msix": msix_setup() + ring_setup() + [dma_pattern(from_vram), doorbell],
        "sg-to-vram": ring_setup() + [dma_pattern(sg_to), dma_pattern(segments), doorbell],
        "sg-from-vram": ring_setup() + [dma_pattern(sg_from), dma_pattern(segments), doorbell],
        "three-descriptors-msi": msi_setup() + ring_setup() + [
            dma_pattern(vram_copy), dma_pattern(fill), dma_pattern(nop),
            write(ABI.REG_DOORBELL, 3), read(ABI.REG_RING_HEAD), OP_CLOCK_STEP.to_bytes(1)],
        "engine-reset": ring_setup() + [
            dma_pattern(to_vram), doorbell,
            write(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC),
            OP_CLEAR_DMA_PATTERNS.to_bytes(1), dma_pattern(fill),
            write(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE), doorbell],
        # qgpu-native-hotplug: the guest powers the slot off under a running
        # engine (the root port is PCI device 1 there; elsewhere this is a
        # write to qgpu's own config space). The harness plugs qgpu in again
        # for the next input.
        "slot-power-off": ring_setup() + [
            dma_pattern(vram_copy), doorbell,
            pci_write(ROOT_PORT_SLTCTL, SLTCTL_POWER_OFF, SIZE_WORD, dev=ROOT_PORT),
            write(ABI.REG_DOORBELL, 2), read(ABI.REG_ID)],
        "quad-access": [write(ABI.REG_RING_BASE_LO, RING, SIZE_QUAD),
                        write(ABI.REG_RING_SIZE, 4), read(ABI.REG_FENCE_LO, SIZE_QUAD)],
    }


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, cmds in seeds().items():
        (out / name).write_bytes(SEPARATOR.join(cmds))
    print(f"make-seeds: {len(seeds())} seeds in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
