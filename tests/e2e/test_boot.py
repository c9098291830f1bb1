"""The guest boots in every DMA mode, and guest and host agree on the device."""

from __future__ import annotations

import pytest

from qgpu.abi import ABI
from qgpu.config import DmaMode
from qgpu.inspector import DeviceInspector
from qgpu.machine import GuestMachine

FIND_QGPU = ("for d in /sys/bus/pci/devices/*; do "
             f"[ $(cat $d/vendor) = 0x{ABI.PCI_VENDOR_ID:04x} ] && "
             f"[ $(cat $d/device) = 0x{ABI.PCI_DEVICE_ID:04x} ] && echo $d; done")


def test_bars_seen_by_guest_match_qemu(guest: GuestMachine,
                                       qgpu_inspector: DeviceInspector) -> None:
    sysfs = guest.run(FIND_QGPU, check=True).output.strip()
    assert sysfs, "the guest does not see the qgpu"
    resources = guest.run(f"cat {sysfs}/resource", check=True).output.split("\n")
    bars = qgpu_inspector.bars()
    for index in (ABI.BAR_REGS, ABI.BAR_VRAM, ABI.BAR_MSIX):
        start, end, _flags = (int(x, 16) for x in resources[index].split())
        assert (start, end - start + 1) == (bars[index].address, bars[index].size)
    assert bars[ABI.BAR_VRAM].is_64bit and bars[ABI.BAR_VRAM].prefetchable


def test_driver_bound_and_dmesg_clean(guest: GuestMachine) -> None:
    assert guest.run("test -c /dev/qgpu0 && ls /sys/bus/pci/drivers/qgpu | grep -c :").output \
        .strip() == "1"
    dmesg = guest.run("dmesg", check=True).output
    assert "qgpu" in dmesg


def test_dma_mode_is_what_was_asked(guest: GuestMachine, dma_mode: DmaMode) -> None:
    cmdline = guest.run("cat /proc/cmdline", check=True).output
    groups = guest.run("ls /sys/kernel/iommu_groups | wc -l", check=True).output.strip()
    iommus = guest.run("ls /sys/class/iommu", check=True).output.split()
    qgpu_group = guest.run("ls -d /sys/bus/pci/drivers/qgpu/*/iommu_group 2>/dev/null | wc -l",
                           check=True).output.strip()
    if dma_mode is DmaMode.IOMMU:
        assert "intel_iommu=on" in cmdline and int(groups) > 0
        assert [i for i in iommus if i.startswith("dmar")], iommus
    elif dma_mode is DmaMode.VIRTIO_IOMMU:
        bound = guest.run("ls /sys/bus/virtio/drivers/virtio_iommu | grep -c '^virtio'",
                          check=True).output.strip()
        assert int(groups) > 0 and iommus and int(bound) == 1, iommus
    else:
        assert int(groups) == 0 and not iommus
    assert int(qgpu_group) == (1 if dma_mode.translated else 0), \
        "qgpu is behind an IOMMU exactly in the IOMMU modes"
    assert ("swiotlb=force" in cmdline) == (dma_mode is DmaMode.SWIOTLB)


def test_ssh_and_console_see_the_same_guest(guest: GuestMachine) -> None:
    boot_id = guest.run("cat /proc/sys/kernel/random/boot_id", check=True).output.strip()
    assert guest.ssh_run("cat /proc/sys/kernel/random/boot_id", check=True).output.strip() \
        == boot_id


@pytest.mark.parametrize("dma_mode", [DmaMode.DIRECT], indirect=True)
def test_stats_start_clean_after_boot(guest: GuestMachine,
                                      qgpu_inspector: DeviceInspector) -> None:
    stats = qgpu_inspector.stats()
    assert stats["errors"] == 0 and stats["access-errors"] == 0


def test_host_sees_the_drivers_interrupt_setup(guest: GuestMachine,
                                               qgpu_inspector: DeviceInspector) -> None:
    caps = qgpu_inspector.capabilities()
    assert {"msix", "msi", "pcie", "aer"} <= caps.keys()
    assert qgpu_inspector.msix_enabled(), "the driver should have chosen MSI-X"
    irq_mode = guest.run("cat /sys/class/misc/qgpu0/device/msi_irqs/* >/dev/null 2>&1 && "
                         "ls /sys/class/misc/qgpu0/device/msi_irqs | wc -l").output.strip()
    assert int(irq_mode or 0) >= 1
