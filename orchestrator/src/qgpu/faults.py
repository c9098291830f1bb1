"""Fault injection into a running qgpu, through QMP.

:class:`FaultInjector` has one method per fault the device model offers
(the ``x-fault-*`` properties, spec 9.5, and ``x-dma-delay-ns``, 9.4), plus
PCIe AER errors injected with HMP ``pcie_aer_inject_error`` and the machine
level faults: hot removal (``device_del``), system reset and ``stop``/``cont``.

AER and this device model: the qgpu's PCI Express capability does not make
the Device Control error-reporting enables (CERE/NFERE/FERE) writable, so
QEMU masks every error message the qgpu itself sends (``x-fault-aer``, or
``pcie_aer_inject_error`` aimed at the qgpu): the error is only logged in the
qgpu's own AER registers. Errors injected at the root port above it do reach
the guest's AER driver, which runs the qgpu driver's error handlers for every
device below that port; :meth:`FaultInjector.aer_root_port` does that.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

from qgpu.errors import DeviceError, QemuTimeoutError, QmpError
from qgpu.inspector import DeviceInspector

if TYPE_CHECKING:
    from qgpu.machine import GuestMachine


class AerKind(enum.StrEnum):
    """The AER errors the device raises itself (``x-fault-aer``)."""

    CORRECTABLE = "correctable"     #: Bad TLP
    NONFATAL = "nonfatal"           #: Poisoned TLP
    FATAL = "fatal"                 #: Malformed TLP


#: ``pcie_aer_inject_error`` names for each kind, as QEMU's HMP spells them.
AER_HMP_NAMES = {AerKind.CORRECTABLE: "BAD_TLP", AerKind.NONFATAL: "POISON_TLP",
                 AerKind.FATAL: "MALF_TLP"}


class FaultInjector:
    """Inject faults into one qgpu (and its machine) through QMP."""

    def __init__(self, inspector: DeviceInspector, *, root_port: str | None = None,
                 timeout_scale: float = 1.0, device_arg: str | None = None) -> None:
        """Inject through ``inspector``'s QMP connection.

        ``root_port`` is the qdev id of the PCIe root port the device sits
        behind (needed for :meth:`aer_root_port` only); waits on the guest are
        multiplied by ``timeout_scale`` (slow debug kernels); ``device_arg`` (a
        ``-device`` string) is what :meth:`device_add` plugs the device back in with.
        """
        self.inspector = inspector
        self.qmp = inspector.qmp
        self.qdev_id = inspector.qdev_id
        self.root_port = root_port
        self.timeout_scale = timeout_scale
        self.device_arg = device_arg

    @classmethod
    def for_machine(cls, machine: GuestMachine, qdev_id: str = "qgpu0") -> FaultInjector:
        """Return an injector for device ``qdev_id`` of a rig machine."""
        spec = next((s for s in machine.config.qgpus if s.id == qdev_id), None)
        if spec is None:
            raise DeviceError(f"the machine has no qgpu {qdev_id!r}; it has "
                              f"{[s.id for s in machine.config.qgpus]}")
        return cls(machine.inspector(qdev_id), root_port=spec.root_port,
                   timeout_scale=machine.config.timeout_scale,
                   device_arg=spec.device_arg())

    # -- plumbing ------------------------------------------------------------

    def _set(self, prop: str, value: object) -> None:
        try:
            self.inspector.set(prop, value)
        except QmpError as exc:
            raise DeviceError(
                f"{self.qdev_id}: cannot set {prop}={value!r}: {exc}. Check that the QEMU "
                "under test has a qgpu with fault injection (make qemu), that the device "
                "is still plugged in, and that the value is in range (spec 9.5)") from exc

    def _get(self, prop: str) -> object:
        try:
            return self.qmp.qom_get(self.inspector.qom_path, prop)
        except QmpError as exc:
            raise DeviceError(f"{self.qdev_id}: cannot read {prop}: {exc}; is the device "
                              "still plugged in?") from exc

    def _hmp(self, command_line: str) -> str:
        out = self.qmp.hmp(command_line)
        if out.strip().lower().startswith("error") or "not found" in out.lower():
            raise DeviceError(f"HMP {command_line!r} failed: {out.strip()}. Check the "
                              "device id (query-pci lists them) and the error name "
                              "(QEMU's 'help pcie_aer_inject_error')")
        return out

    # -- descriptor faults -------------------------------------------------------

    def dma_error(self, nth: int = 1) -> None:
        """Fail the ``nth`` next guest-memory DMA descriptor half way.

        It moves ``length/2`` bytes, then retires with ``DMA_READ`` (copy to
        VRAM) or ``DMA_WRITE`` (copy from VRAM), raising ``INT_DMA_ERROR``.
        ``nth=0`` disarms. FILL and COPY_VRAM descriptors don't count.
        """
        self._set("x-fault-dma-error-nth", nth)

    def truncate(self, nth: int = 1) -> None:
        """Make the ``nth`` next guest-memory DMA descriptor lose half its bytes.

        It moves ``length/2`` bytes and reports success (silent data loss).
        ``nth=0`` disarms.
        """
        self._set("x-fault-truncate-nth", nth)

    def corrupt(self, nth: int = 1) -> None:
        """Make the ``nth`` next guest-memory DMA descriptor corrupt one byte.

        The destination byte at offset ``length/2`` is inverted (XOR 0xff)
        and the descriptor reports success. ``nth=0`` disarms.
        """
        self._set("x-fault-corrupt-nth", nth)

    def armed(self) -> dict[str, int]:
        """Return the descriptor countdowns still armed (0: disarmed or fired)."""
        return {name: int(str(self._get(f"x-fault-{name}-nth")))
                for name in ("dma-error", "truncate", "corrupt")}

    # -- engine and interrupts -----------------------------------------------------

    def hang(self, on: bool = True) -> None:
        """Hang the DMA engine (``on``) or let it resume (``on=False``).

        A hung engine stops at its next run with BUSY set and writes no
        status; the guest driver's watchdog must notice the lack of progress
        and reset the engine (ENGINE_RESET clears the hang).
        """
        self._set("x-fault-hang", on)

    def is_hung(self) -> bool:
        """Return whether the engine is still hung (an engine reset clears it)."""
        return bool(self._get("x-fault-hang"))

    def irq_drop(self, count: int = 1) -> None:
        """Drop the next ``count`` MSI-X/MSI messages.

        Their causes stay pending in INT_STATUS, so no new message comes for
        them until the driver acknowledges them (it must poll).
        """
        self._set("x-fault-irq-drop", count)

    def irq_dup(self, count: int = 1) -> None:
        """Send each of the next ``count`` MSI-X/MSI messages twice."""
        self._set("x-fault-irq-dup", count)

    def dma_delay(self, ns: int) -> None:
        """Delay each engine run (up to 1 MiB) by ``ns`` of virtual time.

        0 restores full speed; at most 1 s.
        """
        if not 0 <= ns <= 1_000_000_000:
            raise DeviceError(f"dma_delay({ns}): the delay must be 0..1e9 ns (spec 9.4)")
        self._set("x-dma-delay-ns", ns)

    def regs_all_ones(self, on: bool = True) -> None:
        """Make BAR0 read all ones and drop writes (``on=False``: undo).

        This is what a surprise-removed device looks like; the engine, VRAM
        and config space still work. Device reset does not clear it.
        """
        self._set("x-fault-regs-all-ones", on)

    def clear(self) -> None:
        """Disarm every fault knob and restore full engine speed."""
        for prop, value in (("x-fault-dma-error-nth", 0), ("x-fault-truncate-nth", 0),
                            ("x-fault-corrupt-nth", 0), ("x-fault-irq-drop", 0),
                            ("x-fault-irq-dup", 0), ("x-fault-hang", False),
                            ("x-fault-regs-all-ones", False), ("x-dma-delay-ns", 0)):
            self._set(prop, value)

    def faults_injected(self) -> int:
        """Return the device's ``stat-faults-injected``."""
        return int(str(self._get("stat-faults-injected")))

    # -- PCIe AER -------------------------------------------------------------------

    def aer(self, kind: AerKind | str) -> None:
        """Raise an AER error from the device itself (``x-fault-aer``).

        With this device model the message is masked before the root port
        (see the module docstring): only the qgpu's own AER status records it.
        """
        self._set("x-fault-aer", str(AerKind(kind)))

    def aer_inject(self, error: str, *, target: str | None = None) -> str:
        """Run HMP ``pcie_aer_inject_error`` on ``target`` (default: the qgpu).

        ``error`` is a QEMU error name (``POISON_TLP``, ``MALF_TLP``,
        ``BAD_TLP``, ...) or a number. Returns QEMU's answer.
        """
        return self._hmp(f"pcie_aer_inject_error {target or self.qdev_id} {error}")

    def aer_root_port(self, kind: AerKind | str) -> str:
        """Raise an AER error of ``kind`` at the root port above the qgpu.

        This reaches the guest's AER driver, which runs the qgpu driver's
        ``pci_error_handlers``: non-fatal errors go through ``mmio_enabled``,
        fatal ones through a link reset and ``slot_reset``, then ``resume``;
        correctable ones are only logged.
        """
        if self.root_port is None:
            raise DeviceError("aer_root_port(): this injector was made without the root "
                              "port's id; pass root_port= or use for_machine()")
        return self.aer_inject(AER_HMP_NAMES[AerKind(kind)], target=self.root_port)

    # -- machine-level faults ------------------------------------------------------

    def device_del(self, *, timeout: float = 30.0) -> None:
        """Hot-unplug the qgpu (QMP ``device_del``) and wait for ``DEVICE_DELETED``.

        On q35 this is an ACPI eject: the guest must cooperate (its driver's
        remove runs first). Raises :class:`DeviceError` if it never completes.
        """
        after = len(self.qmp.events())
        try:
            self.qmp.command("device_del", {"id": self.qdev_id})
        except QmpError as exc:
            raise DeviceError(f"device_del {self.qdev_id} refused: {exc}; was it already "
                              "removed?") from exc
        timeout *= self.timeout_scale
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.qmp.wait_event("DEVICE_DELETED",
                                            max(0.1, deadline - time.monotonic()),
                                            after=after)
            except QemuTimeoutError as exc:
                raise DeviceError(f"{self.qdev_id} was not removed within {timeout:.0f} s "
                                  "of device_del: the guest did not eject it (ACPI "
                                  "hotplug needs a live guest kernel)") from exc
            if event.data.get("device") == self.qdev_id:
                return
            after = self.qmp.events().index(event) + 1

    def device_add(self) -> None:
        """Plug the qgpu back in (QMP ``device_add``) as it was at boot, after :meth:`device_del`.

        Returns once QEMU has added it; the guest's hotplug driver then finds
        it and probes it, which the caller waits for as it needs.
        """
        if self.device_arg is None:
            raise DeviceError("device_add(): this injector does not know the device's "
                              "properties; pass device_arg= or use for_machine()")
        # HMP takes the -device string, where QMP's device_add wants JSON types
        # (a number for vram-size, a boolean for msi, ...).
        try:
            out = self.qmp.hmp(f"device_add {self.device_arg}").strip()
        except QmpError as exc:
            out = str(exc)
        if out:
            raise DeviceError(f"device_add {self.device_arg} failed: {out}; is it still "
                              "plugged in (device_del first)?")

    def system_reset(self) -> None:
        """Reset the whole machine (QMP ``system_reset``): the guest reboots.

        The rig starts QEMU with ``-no-reboot``, which turns a reset into an
        exit; the reboot action is switched to ``reset`` first (``set-action``).
        """
        try:
            self.qmp.command("set-action", {"reboot": "reset"})
            self.qmp.command("system_reset")
        except QmpError as exc:
            raise DeviceError(f"system_reset failed: {exc}; is the VM running?") from exc

    def stop(self) -> None:
        """Pause the VM (QMP ``stop``): vCPUs and virtual time stand still."""
        self.qmp.command("stop")

    def cont(self) -> None:
        """Resume a paused VM (QMP ``cont``)."""
        self.qmp.command("cont")
