"""The qgpu demonstration: what the guest did, and what the host saw.

For each DMA mode (direct, swiotlb, intel-iommu, virtio-iommu) it boots the guest with the qgpu
driver and shows, side by side:

1. guest user space writing VRAM through its write-combined mmap, and the
   host reading those bytes from the VRAM memory-backend file;
2. the host writing VRAM, and the guest reading it through the lazily
   faulted mapping;
3. a DMA of a user buffer into VRAM and back, checked by checksum in the
   guest and byte for byte on the host, with the bus addresses the device
   used -- guest RAM in direct mode, the swiotlb bounce pool under
   ``swiotlb=force``, IOVAs outside guest RAM behind either IOMMU.

Then, with two qgpus behind an emulated PCIe switch, a VRAM range of one moves
to the other through a dma-buf (``qgpu-tool p2p-copy``): peer-to-peer on a kernel
with ``CONFIG_PCI_P2PDMA``, the importer's bus addresses inside the exporter's
VRAM BAR; through system memory, and saying why, on one without.
"""

from __future__ import annotations

import random
import re
import sys
import time
from typing import Any

from qgpu.config import DmaMode, MachineConfig, QgpuSpec
from qgpu.data import fnv1a64, last_json_object
from qgpu.errors import QgpuError
from qgpu.kernels import GuestKernel, resolve
from qgpu.machine import GuestMachine

MiB = 1 << 20


def _tool(machine: GuestMachine, args: str) -> dict[str, Any]:
    out = machine.run(f"qgpu-tool {args}", timeout=120).output
    result = last_json_object(out)
    if result is None or not result.get("ok"):
        raise QgpuError(f"qgpu-tool {args} failed in the guest: {out}")
    return result


def _ranges(text: str, pattern: str) -> list[tuple[int, int]]:
    return [(int(a, 16), int(b, 16)) for a, b in re.findall(pattern, text)]


class Report:
    """Collects checks and prints them readably."""

    def __init__(self) -> None:
        """Start with no failures."""
        self.failures = 0

    def line(self, text: str = "") -> None:
        """Print a line of the report."""
        print(text, flush=True)

    def check(self, ok: bool, text: str) -> None:
        """Print a check and count it if it failed."""
        self.failures += not ok
        self.line(f"    [{'ok' if ok else 'FAIL'}] {text}")


def demo_mode(report: Report, mode: DmaMode, accel: str, kernel: GuestKernel) -> None:
    """Run the three demonstrations in one guest."""
    started = time.monotonic()
    report.line(f"\n=== DMA mode: {mode} " + "=" * 50)
    config = MachineConfig.for_kernel(kernel, accel=accel, dma_mode=mode, name=f"demo-{mode}")
    with GuestMachine(config, ssh_key=kernel.ssh_key) as guest:
        insp = guest.inspector()
        info = _tool(guest, "info")
        vram_bar = insp.bars()[2]
        report.line(f"guest booted in {time.monotonic() - started:.1f} s ({guest.accel}); "
                    f"driver sees {info['vram_size'] // MiB} MiB VRAM, interrupts via "
                    f"{info['irq_mode']}, at PCI {info['pci']}; host: VRAM BAR at "
                    f"0x{vram_bar.address:x}")

        report.line("\n1. Guest writes VRAM through its write-combined mmap "
                    "(pattern 0xc0ffee42, 64 KiB at offset 0)")
        _tool(guest, "mmap-write 0 0x10000 0xc0ffee42")
        expect = bytes.fromhex("42eeffc0") * 0x4000
        host = insp.vram_backend(0, 0x10000)
        report.line(f"    guest wrote:  {expect[:16].hex(' ')} ...")
        report.line(f"    host read:    {host[:16].hex(' ')} ...  (from the memory-backend file)")
        report.check(host == expect, "all 64 KiB identical on the host")
        report.check(insp.vram_via_bar(0, 4096) == expect[:4096],
                     "QEMU's own read of the BAR (QMP pmemsave) agrees")

        report.line("\n2. Host writes VRAM (4 KiB of random bytes at 1 MiB); the guest reads "
                    "it through the lazily faulted mapping")
        data = random.Random(str(mode)).randbytes(4096)
        assert insp.vram is not None
        insp.vram.write(MiB, data)
        seen = bytes.fromhex(_tool(guest, f"mmap-read {MiB} 4096 --lazy")["hex"])
        report.line(f"    host wrote:   {data[:16].hex(' ')} ...")
        report.line(f"    guest read:   {seen[:16].hex(' ')} ...  (mmap, page fault handler)")
        report.check(seen == data, "the guest sees exactly what the host wrote")

        report.line("\n3. DMA: 1 MiB user buffer -> VRAM at 2 MiB -> another user buffer")
        before = len(insp.dma_trace())
        tlb = "/sys/kernel/debug/swiotlb"
        hiwater_before = guest.run(f"cat {tlb}/io_tlb_used_hiwater 2>/dev/null || echo 0"
                                   ).output.strip()
        guest.run("dd if=/dev/urandom of=/tmp/in bs=64k count=16 2>/dev/null", check=True)
        sent = _tool(guest, f"to-vram {2 * MiB} /tmp/in")
        back = _tool(guest, f"from-vram {2 * MiB} {MiB} /tmp/out")
        same = guest.run("cmp /tmp/in /tmp/out").status == 0
        host_sum = f"0x{fnv1a64(insp.vram_backend(2 * MiB, MiB)):016x}"
        report.line(f"    guest: sent checksum {sent['checksum']} in {sent['segments']} "
                    f"segment(s), got back {back['checksum']}")
        report.line(f"    host:  VRAM [2 MiB, 3 MiB) checksum {host_sum}")
        report.check(sent["checksum"] == back["checksum"] == host_sum and same,
                     "guest buffer, VRAM on the host and the copy back all match")

        trace = insp.dma_trace()[before:] if before < 64 else insp.dma_trace()
        buses = [(t["bus-addr"], t["length"]) for t in trace
                 if t["op"] in ("copy-to-vram", "copy-from-vram") and t["status"] == "ok"]
        report.line(f"    the device's DMA trace: {len(buses)} segment(s); first bus addresses: "
                    + ", ".join(f"0x{a:x}+{n}" for a, n in buses[:4]))
        iomem = guest.run("cat /proc/iomem", check=True).output
        ram = _ranges(iomem, r"(?m)^\s*([0-9a-f]+)-([0-9a-f]+) : System RAM")
        in_ram = all(any(lo <= a and a + n - 1 <= hi for lo, hi in ram) for a, n in buses)
        if mode is DmaMode.DIRECT:
            report.check(bool(buses) and in_ram,
                         "direct mapping: every bus address is guest RAM (bus = physical)")
        elif mode is DmaMode.SWIOTLB:
            slabs = int(guest.run(f"cat {tlb}/io_tlb_nslabs", check=True).output)
            hiwater = int(guest.run(f"cat {tlb}/io_tlb_used_hiwater", check=True).output)
            span = max(a + n for a, n in buses) - min(a for a, _ in buses) if buses else 0
            report.line(f"    swiotlb: bounce slots in use peaked at {hiwater} (was "
                        f"{hiwater_before}); pool {slabs * 2048 // MiB} MiB; bus addresses "
                        f"span {span // 1024} KiB")
            report.check(bool(buses) and hiwater > int(hiwater_before or 0) and in_ram
                         and span <= slabs * 2048,
                         "swiotlb=force: the data bounced through the swiotlb pool")
        else:
            iommus = guest.run("ls /sys/class/iommu", check=True).output.split()
            report.line(f"    the guest's IOMMU: {', '.join(iommus) or 'none'}")
            report.check(bool(buses) and bool(iommus) and not any(
                any(lo <= a <= hi for lo, hi in ram) for a, _ in buses),
                f"{mode}: bus addresses are IOVAs, none of them a guest-RAM address")

        stats = insp.stats()
        drv = _tool(guest, "stats")
        report.line(f"    device counted {stats['bytes-to-vram']} bytes to VRAM, "
                    f"{stats['bytes-from-vram']} back, {stats['interrupts']} interrupts; "
                    f"driver counted {drv['bytes_to_vram']} / {drv['bytes_from_vram']}")
        report.check(stats["bytes-to-vram"] == drv["bytes_to_vram"] and
                     stats["bytes-from-vram"] == drv["bytes_from_vram"] and stats["errors"] == 0,
                     "device and driver agree on the bytes moved; no device errors")


def demo_p2p(report: Report, mode: DmaMode, accel: str, kernel: GuestKernel) -> None:
    """Show a VRAM dma-buf of qgpu0 copied by qgpu1, checked in both VRAM backends."""
    started = time.monotonic()
    report.line(f"\n=== Peer-to-peer: two qgpus behind a PCIe switch ({mode}) " + "=" * 30)
    config = MachineConfig.for_kernel(kernel, accel=accel, dma_mode=mode, name=f"demo-p2p-{mode}",
                                      qgpus=(QgpuSpec(id="qgpu0"), QgpuSpec(id="qgpu1")),
                                      pcie_switch=True)
    with GuestMachine(config, ssh_key=kernel.ssh_key) as guest:
        q0, q1 = guest.inspector("qgpu0"), guest.inspector("qgpu1")
        bar0 = q0.bars()[2]
        report.line(f"guest booted in {time.monotonic() - started:.1f} s; qgpu0's VRAM BAR "
                    f"at 0x{bar0.address:x}")
        report.line("\n4. The host writes 1 MiB of random bytes into qgpu0's VRAM at 4 MiB; "
                    "qgpu1 copies it into its own VRAM at 6 MiB through a dma-buf of "
                    "qgpu0's VRAM")
        data = random.Random("p2p").randbytes(MiB)
        assert q0.vram is not None
        q0.vram.write(4 * MiB, data)
        before = q1.dma_trace()
        mark = int(before[-1]["seq"]) if before else -1
        res = _tool(guest, f"-d /dev/qgpu0 p2p-copy pull {4 * MiB} {MiB} {6 * MiB} "
                           "--peer /dev/qgpu1")
        why = f" (peer-to-peer refused: {res['why']})" if res["p2p_errno"] else ""
        report.line(f"    guest: path {res['path']}{why}, qgpu1 used {res['segments']} "
                    "SG segment(s)")
        got = q1.vram_backend(6 * MiB, MiB)
        report.line(f"    host wrote qgpu0: {data[:12].hex(' ')} ...")
        report.line(f"    host read qgpu1:  {got[:12].hex(' ')} ...  (its memory-backend file)")
        report.check(got == data, "qgpu1's VRAM holds exactly what the host put in qgpu0's")
        buses = [(int(t["bus-addr"]), int(t["length"])) for t in q1.dma_trace()
                 if int(t["seq"]) > mark and t["op"] == "copy-to-vram"]
        in_bar = [a for a, _ in buses if bar0.address <= a < bar0.address + bar0.size]
        report.line("    qgpu1's DMA trace: first bus addresses "
                    + ", ".join(f"0x{a:x}+{n}" for a, n in buses[:4]))
        if kernel.has("PCI_P2PDMA") and not mode.translated:
            report.check(res["path"] == "p2p" and len(in_bar) == len(buses) > 0,
                         "peer-to-peer: qgpu1 read qgpu0's VRAM BAR directly")
        elif kernel.has("PCI_P2PDMA"):
            report.check(res["path"] == "p2p" and not in_bar,
                         f"peer-to-peer through {mode}: IOVAs it translates to qgpu0's BAR")
        else:
            report.check(res["path"] == "bounce" and not in_bar,
                         "no CONFIG_PCI_P2PDMA in this kernel: bounced through system "
                         "memory (make demo KERNEL=qgpu for the direct path)")


def main(mode: DmaMode | None = None, accel: str = "auto", kernel: str | None = None) -> int:
    """Run the demonstration in ``mode`` (default: every mode); 0 if every check held.

    ``kernel``: stock (default), qgpu, debug or an image folder (see qgpu.kernels).
    """
    report = Report()
    report.line("qgpu demonstration: a virtual PCIe GPU in QEMU, its Linux driver, and the "
                "host looking over its shoulder.")
    guest_kernel = resolve(kernel).check()
    report.line(f"guest kernel: {guest_kernel.name} (Linux {guest_kernel.release}); "
                "VRAM mapped with " + ("io_mapping_map_user()" if guest_kernel.io_mapping
                                       else "io_remap_pfn_range() (no CONFIG_IO_MAPPING)"))
    for m in [mode] if mode else list(DmaMode):
        try:
            demo_mode(report, m, accel, guest_kernel)
        except QgpuError as exc:
            report.failures += 1
            report.line(f"    [FAIL] {m}: {exc}")
    try:
        demo_p2p(report, mode or DmaMode.DIRECT, accel, guest_kernel)
    except QgpuError as exc:
        report.failures += 1
        report.line(f"    [FAIL] peer-to-peer: {exc}")
    report.line("\n" + ("All checks passed." if not report.failures
                        else f"{report.failures} check(s) FAILED."))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
