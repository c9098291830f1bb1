"""Device-level demonstration: qgpu on q35, driven over qtest, no guest kernel.

``make demo-device`` runs it. It prints, for a newcomer, what the device is,
then moves data with its DMA engine and shows the same bytes through three
independent views: guest RAM, the device's VRAM BAR, and the host's mapping of
the VRAM memory backend.
"""

from __future__ import annotations

import sys

from qgpu.abi import ABI
from qgpu.device import MSIX_ADDR, REGS_ADDR, VRAM_ADDR, start_qgpu
from qgpu.pci import CAP_ID_EXP, CAP_ID_MSI, CAP_ID_MSIX, EXT_CAP_ID_ERR


def main() -> int:
    """Run the demonstration; exit status 0 if every check held."""
    failures = 0

    def check(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")

    print("Starting QEMU (q35, qtest accelerator) with a qgpu behind a pcie-root-port ...")
    dev = start_qgpu(vram_size=64 << 20)
    try:
        fn = dev.fn
        print(f"\n1. The device at PCI 01:00.0: {fn.vendor_id:04x}:{fn.device_id:04x}, "
              f"class {fn.read16(0x0A):04x} (3D controller)")
        caps, ext = fn.capabilities(), fn.ext_capabilities()
        names = {CAP_ID_MSIX: "MSI-X", CAP_ID_MSI: "MSI", CAP_ID_EXP: "PCI Express"}
        print("   capabilities: " + ", ".join(f"{names.get(c, hex(c))}@0x{o:x}"
                                              for c, o in sorted(caps.items(), key=lambda x: x[1]))
              + (", AER@0x100" if EXT_CAP_ID_ERR in ext else ""))
        print(f"   BAR0 registers  8 KiB at 0x{REGS_ADDR:x}\n"
              f"   BAR2 VRAM      64 MiB at 0x{VRAM_ADDR:x} (64-bit, prefetchable, RAM-backed,"
              " shared with the host)\n"
              f"   BAR4 MSI-X            at 0x{MSIX_ADDR:x}")
        check(dev.reg(ABI.REG_ID) == ABI.ID_MAGIC, "ID register reads 'QGPU'")

        print("\n2. DMA: 1 MiB from guest RAM into VRAM, then back into another buffer")
        data = bytes((i * 7 + 3) & 0xFF for i in range(1 << 20))
        src, dst, fence = dev.mem.alloc(1 << 20), dev.mem.alloc(1 << 20), dev.mem.alloc(8)
        dev.mem.write(src, data)
        dev.setup_ring(16)
        slots = dev.msix_enable()
        dev.set_reg(ABI.REG_INT_MASK, ABI.INT_ALL)
        codes = dev.run(
            dev.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0x10000, length=len(data)),
            dev.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0x10000, dst=dst, length=len(data),
                     flags=ABI.DESC_F_FENCE | ABI.DESC_F_IRQ, fence_addr=fence,
                     fence_value=2026))
        check(codes == [0, 0], f"both descriptors retired without error (codes {codes})")
        check(dev.vram_host(0x10000, len(data)) == data,
              "host sees the bytes in VRAM through the memory backend file")
        check(dev.vram_read(0x10000, 4096) == data[:4096],
              "the VRAM BAR shows the same bytes (first 4 KiB)")
        check(dev.mem.read(dst, len(data)) == data, "the copy back into guest RAM matches")
        check(int.from_bytes(dev.mem.read(fence, 8), "little") == 2026,
              "fence 2026 written to guest memory")
        check(dev.msix_fired(slots[ABI.MSIX_VEC_DMA], ABI.MSIX_VEC_DMA),
              "MSI-X vector 0 (DMA done) delivered")

        print("\n3. A bad descriptor: DMA aimed at the device's own register BAR")
        [code] = dev.run(dev.desc(opcode=ABI.OP_COPY_FROM_VRAM, src=0, dst=REGS_ADDR,
                                  length=64))
        check(code == ABI.ERR_SELF_DMA,
              f"refused with error {code} ({ABI.names('ERR_').get(code)}); QEMU still running")

        print("\n4. What the device says about itself over QMP (qom-get):")
        for name in ("descriptors", "transfers", "bytes-to-vram", "bytes-from-vram", "errors",
                     "last-fence", "interrupts"):
            print(f"   stat-{name:<16} {dev.stat(name)}")
        print("   dma-trace (bus address, length, result):")
        for t in dev.dma_trace():
            print(f"     #{t['seq']} {t['op']:<15} bus 0x{t['bus-addr']:x} "
                  f"vram 0x{t['vram-offset']:x} len {t['length']} -> {t['status']}")
    finally:
        dev.qt.stop()
    print(f"\n{'All checks passed.' if not failures else f'{failures} check(s) FAILED.'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
