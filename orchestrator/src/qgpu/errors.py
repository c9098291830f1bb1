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
    """QEMU exited while the rig still needed it."""


class QemuTimeoutError(QemuError):
    """QEMU did not answer or reach a state within the allotted time."""


class QmpError(QemuError):
    """A QMP command failed; the message carries QEMU's error text."""


class QtestError(QemuError):
    """A qtest protocol command failed or got an unexpected reply."""


class DeviceError(QgpuError):
    """The qgpu device reported an error or is in an unexpected state."""
