"""qgpu test rig: drive the qgpu virtual PCIe GPU in QEMU from Python.

Modules, one concern each:

- :mod:`qgpu.errors`  -- the exception hierarchy (root: :class:`QgpuError`)
- :mod:`qgpu.abi`     -- device ABI constants and structs, read from the shared C header
- :mod:`qgpu.paths`   -- where the project's build outputs live
- :mod:`qgpu.qmp`     -- synchronous QMP facade with timeouts and event history
- :mod:`qgpu.qtest`   -- QEMU under the qtest accelerator: memory, I/O ports, clock, IRQs
- :mod:`qgpu.pci`     -- PCI config space, BAR and bridge programming over qtest
- :mod:`qgpu.device`  -- a qgpu driver in Python, for device-level tests and benchmarks
"""

__version__ = "0.1.0"
