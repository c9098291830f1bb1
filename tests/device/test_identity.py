"""Identity, capabilities, BARs and realize-time configuration checks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qgpu import paths
from qgpu.abi import ABI
from qgpu.device import QOM_PATH, qgpu_args
from qgpu.pci import CAP_ID_EXP, CAP_ID_MSI, CAP_ID_MSIX, EXT_CAP_ID_ERR, PCI_INTERRUPT_PIN
from qgpu.qtest import QtestMachine

from .conftest import StartQgpu


def test_identity_registers(start: StartQgpu) -> None:
    dev = start(vram_size=128 << 20)
    assert dev.reg(ABI.REG_ID) == ABI.ID_MAGIC
    assert dev.reg(ABI.REG_USER_ID) == ABI.ID_MAGIC
    assert dev.reg(ABI.REG_VERSION) == ABI.VERSION
    assert dev.reg(ABI.REG_VRAM_SIZE_LO) == 128 << 20
    assert dev.reg(ABI.REG_VRAM_SIZE_HI) == 0
    assert dev.reg(ABI.REG_RING_MAX_ENTRIES) == ABI.RING_MAX_ENTRIES
    assert dev.reg(ABI.REG_SG_MAX_ENTRIES) == ABI.SG_MAX_ENTRIES


def test_caps_follow_configuration(start: StartQgpu) -> None:
    full = start()
    always = (ABI.CAP_DMA_COPY | ABI.CAP_DMA_FILL | ABI.CAP_SG | ABI.CAP_FENCE
              | ABI.CAP_USER_PAGE)
    assert full.reg(ABI.REG_CAPS) == always | ABI.CAP_MSIX | ABI.CAP_MSI | ABI.CAP_VRAM_SHARED
    bare = start("msi=off,msix=off", shared_vram=False)
    assert bare.reg(ABI.REG_CAPS) == always


def test_pci_identity_and_capabilities(start: StartQgpu) -> None:
    dev = start()
    fn = dev.fn
    assert (fn.vendor_id, fn.device_id) == (ABI.PCI_VENDOR_ID, ABI.PCI_DEVICE_ID)
    assert fn.read8(0x08) == ABI.PCI_REVISION
    assert fn.read16(0x0A) == ABI.PCI_CLASS
    assert fn.read8(PCI_INTERRUPT_PIN) == 1
    caps = fn.capabilities()
    assert {CAP_ID_MSIX, CAP_ID_MSI, CAP_ID_EXP} <= caps.keys()
    # PCIe capability: an endpoint behind the root port (type 0).
    assert (fn.read16(caps[CAP_ID_EXP] + 2) >> 4) & 0xF == 0
    assert fn.read16(caps[CAP_ID_MSIX] + 2) & 0x7FF == ABI.MSIX_VECTORS - 1
    assert EXT_CAP_ID_ERR in fn.ext_capabilities()


def test_msi_msix_can_be_switched_off(start: StartQgpu) -> None:
    caps = start("msix=off").fn.capabilities()
    assert CAP_ID_MSIX not in caps and CAP_ID_MSI in caps
    caps = start("msi=off,msix=off").fn.capabilities()
    assert CAP_ID_MSIX not in caps and CAP_ID_MSI not in caps
    assert start("msi=off,msix=off").fn.bar(ABI.BAR_MSIX) is None


@pytest.mark.parametrize("vram_size", [1 << 20, 256 << 20, 1 << 30])
def test_bar_layout(start: StartQgpu, vram_size: int) -> None:
    dev = start(vram_size=vram_size, shared_vram=False)
    regs, vram = dev.fn.bar(ABI.BAR_REGS), dev.fn.bar(ABI.BAR_VRAM)
    assert regs is not None and vram is not None
    assert (regs.size, regs.is_64bit, regs.prefetchable) == (ABI.REGS_SIZE, False, False)
    assert (vram.size, vram.is_64bit, vram.prefetchable) == (vram_size, True, True)
    assert dev.fn.bar(ABI.BAR_MSIX) is not None
    # The last VRAM byte is reachable through the BAR.
    dev.vram_write(vram_size - 1, b"\xa5")
    assert dev.vram_read(vram_size - 1, 1) == b"\xa5"


def test_vram_bar_can_be_non_prefetchable(start: StartQgpu) -> None:
    """vram-prefetchable=off clears BAR2's prefetchable bit (drivers must map it UC)."""
    dev = start("vram-prefetchable=off", shared_vram=False)
    vram = dev.fn.bar(ABI.BAR_VRAM)
    assert vram is not None
    assert (vram.size, vram.is_64bit, vram.prefetchable) == (64 << 20, True, False)
    dev.vram_write(4096, b"uc")
    assert dev.vram_read(4096, 2) == b"uc"


def test_query_pci_shows_64bit_prefetchable_vram(start: StartQgpu) -> None:
    dev = start()
    assert dev.qt.qmp is not None
    found = []
    for bus in dev.qt.qmp.command("query-pci"):
        for d in bus["devices"]:
            for sub in d.get("pci_bridge", {}).get("devices", []):
                if sub.get("qdev_id") == "qgpu0":
                    found.append(sub)
    assert len(found) == 1, "qgpu0 not behind the root port in query-pci"
    regions = {r["bar"]: r for r in found[0]["regions"]}
    assert regions[ABI.BAR_VRAM]["mem_type_64"] and regions[ABI.BAR_VRAM]["prefetch"]
    assert regions[ABI.BAR_VRAM]["size"] == 64 << 20
    assert not regions[ABI.BAR_REGS]["prefetch"]
    assert found[0]["class_info"]["class"] == ABI.PCI_CLASS


def test_device_help_lists_properties() -> None:
    out = subprocess.run([str(paths.qemu_binary()), "-device", "qgpu,help"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    for prop in ("vram-size", "memdev", "msi", "msix", "trace-depth", "dma-trace",
                 "stat-transfers", "stat-bytes-to-vram", "stat-errors", "stat-interrupts",
                 "stat-last-fence", "x-dma-delay-ns", "vram-prefetchable", "x-dma-slice",
                 "x-sg-max-entries"):
        assert f"{prop}=" in out, f"{prop} missing from -device qgpu,help"


def _realize_error(args: list[str]) -> str:
    cmd = [str(paths.qemu_binary()), "-machine", "q35", "-accel", "qtest", "-nodefaults",
           "-display", "none", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, f"QEMU accepted {args}"
    return proc.stderr


@pytest.mark.parametrize(("props", "message"), [
    ("vram-size=3M", "is not a power of two between 1 MiB and 16 GiB"),
    ("vram-size=512K", "is not a power of two between 1 MiB and 16 GiB"),
    ("vram-size=32G", "is not a power of two between 1 MiB and 16 GiB"),
    ("trace-depth=0", "trace-depth must be between 1 and 4096"),
    ("trace-depth=5000", "trace-depth must be between 1 and 4096"),
    ("x-dma-slice=4095", "x-dma-slice must be between 4096 and 67108864 bytes, not 4095"),
    ("x-dma-slice=65M", "x-dma-slice must be between 4096 and 67108864 bytes"),
    ("x-sg-max-entries=0", "x-sg-max-entries must be between 1 and 4096, not 0"),
    ("x-sg-max-entries=4097", "x-sg-max-entries must be between 1 and 4096, not 4097"),
    ("memdev=nosuch", "nosuch"),
])
def test_bad_configuration_is_refused(props: str, message: str) -> None:
    assert message in _realize_error(qgpu_args(props))


def test_memdev_conflicts_are_refused() -> None:
    backend = ["-object", "memory-backend-ram,id=m,size=32M"]
    err = _realize_error([*backend, *qgpu_args("memdev=m,vram-size=64M")])
    assert "conflicts with the size of memdev 'm'" in err
    err = _realize_error(["-object", "memory-backend-ram,id=m,size=3M",
                          *qgpu_args("memdev=m")])
    assert "not a power of two" in err and "Resize memdev 'm'" in err
    err = _realize_error([*backend, "-device", "qgpu,memdev=m", "-device", "qgpu,memdev=m"])
    assert "memdev 'm' is already in use" in err


def test_read_only_memdev_is_refused(tmp_path: Path) -> None:
    """The device writes VRAM through its mapping: a read-only backend would crash it."""
    backing = tmp_path / "vram.img"
    backing.write_bytes(bytes(32 << 20))
    err = _realize_error(["-object", f"memory-backend-file,id=m,size=32M,mem-path={backing},"
                          "share=on,readonly=on,rom=on", *qgpu_args("memdev=m")])
    assert "memdev 'm' is read-only" in err


def test_aer_fault_before_realize_is_an_error_not_an_exit() -> None:
    """x-fault-aer needs a plugged-in device; set too early it fails realize cleanly."""
    err = _realize_error(qgpu_args("x-fault-aer=fatal"))
    assert "x-fault-aer: the device is not realized yet" in err
    assert "requester ID" not in err


def test_conventional_pci_bus_is_refused() -> None:
    err = _realize_error(["-device", "pcie-root-port,id=rp,chassis=1",
                          "-device", "pcie-pci-bridge,id=br,bus=rp",
                          "-device", "qgpu,bus=br"])
    assert "qgpu is a PCI Express device" in err


def test_memdev_gives_vram_its_size(start: StartQgpu) -> None:
    dev = start(vram_size=32 << 20)
    assert dev.vram_size == 32 << 20
    assert dev.qom("vram-size") == 32 << 20


def test_vram_shared_with_host_both_ways(start: StartQgpu) -> None:
    dev = start()
    dev.vram_write(0x1000, b"from the guest side")
    assert dev.vram_host(0x1000, 19) == b"from the guest side"
    assert dev.vram_shm is not None
    dev.vram_shm.write(0x2000, b"from the host side")
    assert dev.vram_read(0x2000, 18) == b"from the host side"


def test_hotplug_and_unplug_leave_qemu_healthy() -> None:
    with QtestMachine(["-device", "pcie-root-port,id=rp0,chassis=1"]) as qt:
        assert qt.qmp is not None
        qt.qmp.command("device_add", {"driver": "qgpu", "id": "hp0", "bus": "rp0"})
        assert qt.qmp.qom_get("/machine/peripheral/hp0", "stat-errors") == 0
        assert QOM_PATH != "/machine/peripheral/hp0"
