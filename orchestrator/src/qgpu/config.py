"""Typed description of a guest machine, and the QEMU command line built from it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgpu import initramfs
from qgpu.kernels import GuestKernel

MiB = 1 << 20

# Boot-time trims for a throw-away test guest under TCG (see images/README.md).
BOOT_TUNING = (
    "cryptomgr.notests",
    "initcall_blacklist=jent_mod_init,crypto_kdf108_init,bpf_tcp_ca_kfunc_init,"
    "bpf_dummy_struct_ops_init,bpf_sockmap_iter_init,init_encrypted,"
    "load_system_certificate_list,i8042_init",
    "tsc=reliable", "nowatchdog", "audit=0", "ipv6.disable=1",
)


class DmaMode(enum.StrEnum):
    """How the guest kernel maps DMA for the device."""

    DIRECT = "direct"       #: bus address = guest-physical address
    SWIOTLB = "swiotlb"     #: every mapping bounces through swiotlb (swiotlb=force)
    IOMMU = "iommu"         #: intel-iommu translates bus addresses (IOVAs)
    VIRTIO_IOMMU = "virtio-iommu"   #: virtio-iommu-pci translates them (a paravirtual IOMMU)

    @property
    def translated(self) -> bool:
        """Whether an IOMMU translates the device's bus addresses (IOVAs)."""
        return self in (DmaMode.IOMMU, DmaMode.VIRTIO_IOMMU)


@dataclass(frozen=True)
class QgpuSpec:
    """One qgpu device of the machine."""

    id: str = "qgpu0"
    vram_size: int = 64 * MiB
    shared_vram: bool = True            #: VRAM on a /dev/shm file the host maps
    props: tuple[tuple[str, str], ...] = ()

    @property
    def qom_path(self) -> str:
        """Return the device's QOM path (for qom-get/qom-set)."""
        return f"/machine/peripheral/{self.id}"

    @property
    def root_port(self) -> str:
        """Return the id of the PCIe port the device sits on.

        That is its root port, or its switch downstream port
        (``MachineConfig.pcie_switch``).
        """
        return f"{self.id}-rp"

    @property
    def vram_backend(self) -> str:
        """Return the id of the memory backend of shared VRAM."""
        return f"{self.id}-vram"

    def device_props(self) -> dict[str, str]:
        """Return the device's properties: for ``-device``, and QMP ``device_add``."""
        props = {"driver": "qgpu", "id": self.id, "bus": self.root_port}
        if self.shared_vram:
            props["memdev"] = self.vram_backend
        else:
            props["vram-size"] = str(self.vram_size)
        props.update(self.props)
        return props

    def device_arg(self) -> str:
        """Return the ``-device`` argument (also what HMP ``device_add`` takes)."""
        props = self.device_props()
        return ",".join([props.pop("driver")] + [f"{k}={v}" for k, v in props.items()])


#: The qdev ids of the PCIe switch's root port and upstream port
#: (``MachineConfig.pcie_switch``).
SWITCH_ROOT_PORT = "qgpu-switch-rp"
SWITCH_UPSTREAM = "qgpu-switch-up"


@dataclass(frozen=True)
class RamFile:
    """Guest RAM on a file instead of anonymous memory.

    Shared, QEMU writes the guest's memory into the file (a template being
    made, :mod:`qgpu.template`); private, QEMU maps the file copy-on-write
    and never changes it (a guest restored from that template: many can
    share one file).
    """

    path: Path
    private: bool = False

    def backend_arg(self, size: int) -> str:
        """Return the ``-object`` argument of the backend (id ``qgpu-ram``)."""
        sharing = "share=off,readonly=on,rom=off" if self.private else "share=on"
        return f"memory-backend-file,id=qgpu-ram,size={size},mem-path={self.path},{sharing}"


@dataclass(frozen=True)
class MachineConfig:
    """Everything needed to boot a guest with qgpu devices."""

    kernel: Path
    initrd: Path
    name: str = "guest"
    memory: int = 1024 * MiB
    cpus: int = 2
    accel: str = "auto"                 #: "auto" (KVM only if a probe passes), "tcg", "kvm"
    dma_mode: DmaMode = DmaMode.DIRECT
    qgpus: tuple[QgpuSpec, ...] = (QgpuSpec(),)
    #: Put the qgpus behind one PCIe switch (an ``x3130-upstream`` on a root port,
    #: an ``xio3130-downstream`` port each, with the ids root ports would have)
    #: instead of a root port each: the topology peer-to-peer DMA between them
    #: needs, since Q35's host bridge is not one Linux lets forward it.
    pcie_switch: bool = False
    append: tuple[str, ...] = ()        #: extra kernel command-line words
    #: Load the image's qgpu.ko at boot. False leaves the devices unbound, for a
    #: driver of one's own (the kernel argument ``qgpu_noload=1``).
    load_driver: bool = True
    #: The console shell: "plain" for the rig (no echo, a read-eval loop), "edit"
    #: for a person at a terminal (echo, line editing; ``qgpu boot``).
    console: str = "plain"
    boot_tuning: bool = True
    ssh: bool = True
    boot_timeout: float = 180.0
    extra_args: tuple[str, ...] = field(default=())
    #: What the kernel is (release, detectors), when it came from an image folder.
    guest_kernel: GuestKernel | None = None
    #: Every guest timeout (boot, commands) is multiplied by this: slow kernels
    #: (KASAN, lockdep) get more time without raising timeouts everywhere.
    timeout_scale: float = 1.0

    @classmethod
    def for_kernel(cls, kernel: GuestKernel, *, append: tuple[str, ...] = (),
                   timeout_scale: float | None = None, overlays: Sequence[Path] = (),
                   **kw: Any) -> MachineConfig:
        """Describe a machine booting ``kernel``, with the boot words and time it needs.

        ``overlays``: folders whose contents are added to the guest's ``/`` (the
        user's module, tools, scripts; :mod:`qgpu.initramfs`), later ones on top.
        """
        kernel.check()
        initrd = initramfs.with_overlays(kernel.initrd, overlays)
        return cls(kernel=kernel.kernel, initrd=initrd, guest_kernel=kernel,
                   append=kernel.boot_args() + tuple(append),
                   timeout_scale=kernel.timeout_scale if timeout_scale is None
                   else timeout_scale, **kw)

    def kernel_cmdline(self) -> str:
        """Return the kernel command line."""
        words = ["console=ttyS0,115200", "quiet", "panic=-1",
                 "8250.nr_uarts=1", f"qgpu_console={self.console}",
                 # Under TCG on a busy host the boot's check that the timer interrupt
                 # comes through the IO-APIC can miss its window and panic ("timer
                 # doesn't work through Interrupt-remapped IO-APIC": intel-iommu, four
                 # guests on 2 cores); VMs' usual way out.
                 "no_timer_check"]
        if self.boot_tuning:
            words += BOOT_TUNING
        if self.dma_mode is DmaMode.SWIOTLB:
            words.append("swiotlb=force")
        elif self.dma_mode is DmaMode.IOMMU:
            words += ["intel_iommu=on", "iommu=nopt"]
        elif self.dma_mode is DmaMode.VIRTIO_IOMMU:
            # Found through ACPI's VIOT table; translated DMA domains, not identity.
            words += ["iommu.passthrough=0"]
        if not self.ssh:
            words.append("qgpu_nossh=1")
        if not self.load_driver:
            words.append("qgpu_noload=1")
        words += self.append
        return " ".join(words)

    def qemu_args(self, *, accel: str, serial_socket: Path, qmp_socket: Path,
                  console_log: Path, ssh_port: int | None,
                  vram_files: dict[str, Path], qmp_server: Path | None = None,
                  ram: RamFile | None = None) -> list[str]:
        """Return QEMU's arguments (without the binary); guest RAM on ``ram`` if given."""
        # Guest RAM stays out of core dumps: a crashed QEMU's core is then small
        # enough to keep and read a backtrace from (see QemuProcess.crash_report).
        machine = "q35,dump-guest-core=off"
        if self.dma_mode is DmaMode.IOMMU:
            machine += ",kernel-irqchip=split"
        if ram is not None:
            machine += ",memory-backend=qgpu-ram"
        args = ["-accel", accel, "-machine", machine, "-cpu", "qemu64,+rdrand" if
                accel == "tcg" else "host", "-smp", str(self.cpus),
                "-m", f"{self.memory // MiB}M", "-nodefaults", "-display", "none",
                "-no-reboot", "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", self.kernel_cmdline(),
                "-chardev", f"socket,id=ser0,path={serial_socket},logfile={console_log}",
                "-serial", "chardev:ser0",
                "-chardev", f"socket,id=qmp0,path={qmp_socket}",
                "-mon", "chardev=qmp0,mode=control"]
        if ram is not None:
            args += ["-object", ram.backend_arg(self.memory)]
        if qmp_server is not None:      # a second monitor for other tools (qgpu inspect)
            args += ["-qmp", f"unix:{qmp_server},server=on,wait=off"]
        # A VM generation ID, new in every QEMU process (guid=auto) and announced to
        # the guest when a state is loaded: the kernel of each guest restored from a
        # template reseeds its random-number generator instead of drawing the same
        # bytes as every other clone (Linux's vmgenid driver). QEMU takes one: a
        # user's own (extra_args, e.g. a fixed GUID) replaces it.
        if not any("vmgenid" in a for a in self.extra_args):
            args += ["-device", "vmgenid,guid=auto"]
        if self.dma_mode is DmaMode.IOMMU:
            # Before any device that does DMA, so they all sit behind it.
            args += ["-device", "intel-iommu,intremap=on,caching-mode=on"]
        elif self.dma_mode is DmaMode.VIRTIO_IOMMU:
            # On pcie.0; QEMU's VIOT table puts every other PCI device behind it.
            args += ["-device", "virtio-iommu-pci"]
        if self.pcie_switch:
            args += ["-device", f"pcie-root-port,id={SWITCH_ROOT_PORT},chassis=1,x-speed=5",
                     "-device", f"x3130-upstream,id={SWITCH_UPSTREAM},bus={SWITCH_ROOT_PORT}"]
        for slot, spec in enumerate(self.qgpus):
            if self.pcie_switch:
                args += ["-device", f"xio3130-downstream,id={spec.root_port},"
                         f"bus={SWITCH_UPSTREAM},chassis={slot + 2},slot={slot}"]
            else:
                # A 5 GT/s port: after a secondary bus reset (AER recovery) Linux
                # then polls the device instead of waiting for the port's Data Link
                # Layer Link Active bit, which QEMU's root ports never set for a
                # device plugged at boot while ACPI does hotplug (q35's default),
                # and the reset would fail for any device with a PM capability (a
                # d3cold_delay to wait).
                args += ["-device", f"pcie-root-port,id={spec.root_port},"
                         f"chassis={slot + 1},x-speed=5"]
            if spec.shared_vram:
                args += ["-object", f"memory-backend-file,id={spec.vram_backend},"
                         f"size={spec.vram_size},mem-path={vram_files[spec.id]},share=on"]
            args += ["-device", spec.device_arg()]
        if ssh_port is not None:
            args += ["-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
                     "-device", "virtio-net-pci,netdev=n0,romfile="]
        return args + list(self.extra_args)
