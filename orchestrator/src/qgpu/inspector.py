"""Look inside a qgpu from the host, independently of the guest.

Three independent views of device memory:

- the VRAM memory backend file, mapped by the host (no QEMU involved);
- guest-physical memory read by QEMU itself (QMP ``pmemsave``), which reaches
  VRAM through its BAR and guest RAM wherever DMA wrote it;
- the device's own account: ``query-pci`` for BARs, ``qom-get`` for
  statistics and the DMA trace (which bus addresses it used).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgpu import pci
from qgpu.abi import ABI
from qgpu.errors import DeviceError
from qgpu.qmp import QmpClient
from qgpu.shm import SharedMemory

STAT_NAMES = ("descriptors", "transfers", "bytes-to-vram", "bytes-from-vram",
              "bytes-vram-copy", "bytes-fill", "errors", "aborted", "dropped", "last-fence",
              "interrupts", "doorbells", "access-errors", "engine-resets", "faults-injected",
              "engine-busy-ns")


@dataclass(frozen=True)
class BarInfo:
    """A BAR as QEMU reports it."""

    index: int
    address: int
    size: int
    prefetchable: bool
    is_64bit: bool


class DeviceInspector:
    """Host-side view of one qgpu device."""

    def __init__(self, qmp: QmpClient, qdev_id: str, *, vram: SharedMemory | None,
                 workdir: Path) -> None:
        """Inspect device ``qdev_id`` through ``qmp`` (and its VRAM backend, if shared)."""
        self.qmp = qmp
        self.qdev_id = qdev_id
        self.qom_path = f"/machine/peripheral/{qdev_id}"
        self.vram = vram
        self._workdir = workdir

    def pci_device(self) -> dict[str, Any]:
        """Return the device's entry in ``query-pci``."""
        def walk(devices: list[dict[str, Any]]) -> dict[str, Any] | None:
            for dev in devices:
                if dev.get("qdev_id") == self.qdev_id:
                    return dev
                found = walk(dev.get("pci_bridge", {}).get("devices", []))
                if found:
                    return found
            return None

        for bus in self.qmp.command("query-pci"):
            found = walk(bus["devices"])
            if found:
                return found
        raise DeviceError(f"{self.qdev_id} is not in query-pci (unplugged?)")

    def bars(self) -> dict[int, BarInfo]:
        """Return the BARs with the addresses the guest programmed."""
        return {r["bar"]: BarInfo(r["bar"], r["address"], r["size"], bool(r.get("prefetch")),
                                  bool(r.get("mem_type_64")))
                for r in self.pci_device()["regions"] if r.get("type") == "memory"}

    def stats(self) -> dict[str, int]:
        """Return every ``stat-*`` property."""
        return {name: int(self.qmp.qom_get(self.qom_path, f"stat-{name}"))
                for name in STAT_NAMES}

    def dma_trace(self) -> list[dict[str, Any]]:
        """Return the device's DMA trace, oldest first."""
        trace: list[dict[str, Any]] = self.qmp.qom_get(self.qom_path, "dma-trace")
        return trace

    def vram_backend(self, offset: int, length: int) -> bytes:
        """Read VRAM through the host's mapping of its memory backend."""
        if self.vram is None:
            raise DeviceError(f"{self.qdev_id} has no shared VRAM backend "
                              "(QgpuSpec.shared_vram=False)")
        return self.vram.read(offset, length)

    def physical(self, address: int, length: int) -> bytes:
        """Read guest-physical memory as QEMU sees it (QMP ``pmemsave``)."""
        with tempfile.NamedTemporaryFile(dir=self._workdir, prefix="pmem-") as tmp:
            self.qmp.command("pmemsave", {"val": address, "size": length,
                                          "filename": tmp.name})
            return Path(tmp.name).read_bytes()

    def vram_via_bar(self, offset: int, length: int) -> bytes:
        """Read VRAM through its BAR with QMP (independent of the backend file)."""
        bar = self.bars().get(ABI.BAR_VRAM)
        if bar is None or bar.address in (0, 0xFFFF_FFFF_FFFF_FFFF):
            raise DeviceError(f"{self.qdev_id}: the VRAM BAR is not mapped")
        return self.physical(bar.address + offset, length)

    def register(self, offset: int) -> int:
        """Read the 32-bit register at ``offset`` in BAR0, as the guest would.

        Register reads have no side effects on qgpu, so this is safe at any
        time, also while the guest is stopped.
        """
        if offset % 4 or not 0 <= offset < ABI.REGS_SIZE:
            raise DeviceError(f"register offset {offset:#x} is not a 32-bit register "
                              f"in the {ABI.REGS_SIZE:#x}-byte register BAR")
        bar = self.bars().get(ABI.BAR_REGS)
        if bar is None or bar.address in (0, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF):
            raise DeviceError(f"{self.qdev_id}: the register BAR is not mapped")
        return int.from_bytes(self.physical(bar.address + offset, 4), "little")

    def config_space(self) -> bytes:
        """Read the device's 4 KiB PCIe config space through q35's ECAM window.

        The base is the q35 host bridge's ``MCFG`` property (programmed by the
        firmware); QEMU's own read of that window returns what the guest sees.
        """
        base = int(self.qmp.qom_get("/machine/q35", "MCFG"))
        if base in (0, 0xFFFF_FFFF_FFFF_FFFF):
            raise DeviceError("ECAM (MMCONFIG) is not enabled yet: has the guest booted?")
        dev = self.pci_device()
        bdf = dev["bus"] << 8 | dev["slot"] << 3 | dev["function"]
        return self.physical(base + (bdf << 12), 4096)

    def capabilities(self) -> dict[str, int]:
        """Return the device's capabilities (name -> config offset), from its config space."""
        cfg = self.config_space()

        def read(size: int) -> Callable[[int], int]:
            return lambda off: int.from_bytes(cfg[off:off + size], "little")

        names = {pci.CAP_ID_MSI: "msi", pci.CAP_ID_EXP: "pcie", pci.CAP_ID_MSIX: "msix",
                 pci.CAP_ID_PM: "pm"}
        caps = {names.get(cap, f"cap-{cap:#x}"): pos
                for cap, pos in pci.standard_capabilities(read(1), read(2)).items()}
        caps.update({"aer" if cap == pci.EXT_CAP_ID_ERR else f"ext-{cap:#x}": pos
                     for cap, pos in pci.extended_capabilities(read(4)).items()})
        return caps

    def msix_enabled(self) -> bool:
        """Return whether the guest driver has enabled MSI-X (config space, host view)."""
        cfg = self.config_space()
        pos = self.capabilities().get("msix")
        return pos is not None and bool(int.from_bytes(cfg[pos + 2:pos + 4], "little") & 0x8000)

    def set(self, prop: str, value: object) -> None:
        """Set a runtime property (e.g. ``x-fault-hang``)."""
        self.qmp.qom_set(self.qom_path, prop, value)
