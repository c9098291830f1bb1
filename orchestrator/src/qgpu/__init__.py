"""qgpu test rig: drive the qgpu virtual PCIe GPU in QEMU from Python.

Modules, one concern each:

- :mod:`qgpu.errors`     -- the exception hierarchy (root: :class:`~qgpu.errors.QgpuError`)
- :mod:`qgpu.abi`        -- device ABI constants and structs, read from the shared C header
- :mod:`qgpu.paths`      -- where the build outputs (QEMU, guest image) live
- :mod:`qgpu.process`    -- one QEMU process: start, early death, quit/kill, clean up
- :mod:`qgpu.crash`      -- why QEMU died: crash signals, backtraces from cores, sanitizer reports
- :mod:`qgpu.qmp`        -- synchronous QMP facade over qemu.qmp: timeouts, event history
- :mod:`qgpu.shm`        -- /dev/shm memory backends the host maps (guest RAM, VRAM)
- :mod:`qgpu.qtest`      -- QEMU under the qtest accelerator: memory, I/O ports, clock, IRQs
- :mod:`qgpu.pci`        -- PCI config space, BARs and bridges, programmed over qtest
- :mod:`qgpu.device`     -- a qgpu driver in Python, for device-level tests and benchmarks
- :mod:`qgpu.kernels`    -- guest kernels (stock, qgpu, debug, an image folder) and their detectors
- :mod:`qgpu.config`     -- typed guest machine configuration -> QEMU command line
- :mod:`qgpu.accel`      -- TCG, or KVM where a bounded probe shows it works
- :mod:`qgpu.console`    -- the guest's serial console (pexpect), crash detection
- :mod:`qgpu.ssh`        -- SSH into the guest (paramiko)
- :mod:`qgpu.machine`    -- a booted guest: lifecycle, console, SSH, QMP, artifacts
- :mod:`qgpu.inspector`  -- the device seen from the host: BARs, capabilities, stats, trace, memory
- :mod:`qgpu.health`     -- the guest kernel's bug reports (KASAN, lockdep, kmemleak, DMA-API, ...)
- :mod:`qgpu.faults`     -- fault injection (x-fault-* knobs, AER, removal, reset, stop/cont)
- :mod:`qgpu.kfault`     -- kernel fault injection into the driver (fail-nth, failslab, ...)
- :mod:`qgpu.data`       -- the guest tools' checksum and fill pattern, for host-side checks
- :mod:`qgpu.pytest_plugin` -- the pytest plugin's switch (``-p qgpu``) and options
- :mod:`qgpu.pytest_rig` -- its fixtures (``qgpu_*``), DMA-mode parametrization, artifact bundles
- :mod:`qgpu.cli` -- the ``qgpu`` command
- :mod:`qgpu.tools` -- programs built on the library: demonstrations and benchmarks
"""

__version__ = "0.1.0"
