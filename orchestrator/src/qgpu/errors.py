"""Exception hierarchy of the qgpu rig.

Every exception the package raises derives from :class:`QgpuError`, and its
message says what went wrong and what to do about it.
"""

from __future__ import annotations


class QgpuError(Exception):
    """Root of all qgpu rig errors."""


class SetupError(QgpuError):
    """The rig is not set up: a build output or host tool is missing."""


class AbiError(QgpuError):
    """The device ABI header could not be read or parsed."""


class QemuError(QgpuError):
    """QEMU failed to start, died, or misbehaved."""


class QemuDiedError(QemuError):
    """QEMU exited while the rig still needed it.

    ``signal`` is the signal that ended QEMU (None for a plain exit or when not
    known), ``crash_report`` the explanation of a crash and ``backtrace`` the
    crashing thread's frames as gdb printed them (empty when none was read).
    """

    def __init__(self, message: str, *, signal: int | None = None,
                 crash_report: str = "", backtrace: tuple[str, ...] = ()) -> None:
        """Record how QEMU ended, beside the message."""
        super().__init__(message)
        self.signal = signal
        self.crash_report = crash_report
        self.backtrace = backtrace


class QemuCrashWarning(UserWarning):
    """QEMU crashed while booting, outside qgpu's code, and the rig booted again.

    The message carries the crash report (backtrace when a core could be read).
    """


class RestoreFallbackWarning(UserWarning):
    """A guest could not be restored from its template and was booted instead.

    The message quotes the restore's error; the run's summary counts them.
    """


class QemuTimeoutError(QemuError):
    """QEMU did not answer or reach a state within the allotted time."""


class QmpError(QemuError):
    """A QMP command failed; the message carries QEMU's error text."""


class QtestError(QemuError):
    """A qtest protocol command failed or got an unexpected reply."""


class DeviceError(QgpuError):
    """The qgpu device reported an error or is in an unexpected state."""


class GuestError(QgpuError):
    """The guest misbehaved."""


class GuestCrashError(GuestError):
    """The guest kernel panicked, oopsed, hit a BUG or a WARN."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        """Keep the console output that led up to the crash."""
        super().__init__(f"{message}\n--- console before it ---\n{console_tail[-3000:]}")
        self.console_tail = console_tail


class GuestTimeoutError(GuestError):
    """The guest did not answer in time (hung, or far too slow)."""


class GuestCommandError(GuestError):
    """A guest command exited with a non-zero status."""

    def __init__(self, command: str, status: int, output: str) -> None:
        """Record the command, its status and output."""
        super().__init__(f"guest command {command!r} exited with status {status}; "
                         f"output:\n{output[-3000:]}")
        self.command, self.status, self.output = command, status, output
