"""QEMU under the qtest accelerator: no guest CPU runs, the test is the CPU.

:class:`QtestMachine` starts a q35 machine with ``-accel qtest`` and speaks
QEMU's qtest line protocol (memory and I/O port access, virtual clock, IRQ
interception) plus QMP. Guest RAM can live on a shared file so the host maps
it directly (:attr:`QtestMachine.ram`), which keeps multi-megabyte DMA tests
fast and gives an access path independent of the device.
"""

from __future__ import annotations

import base64
import contextlib
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from qgpu import paths
from qgpu.errors import QemuDiedError, QemuTimeoutError, QtestError
from qgpu.process import QemuProcess
from qgpu.qmp import QmpClient
from qgpu.shm import SharedMemory


class QtestMachine:
    """A q35 machine under qtest with QMP; start() ... stop(), or a context manager."""

    def __init__(self, args: Sequence[str] = (), *, memory: int = 512 << 20,
                 shared_ram: bool = True, timeout: float = 30.0, name: str = "qtest",
                 qemu: Path | None = None) -> None:
        """Describe the machine: extra QEMU ``args`` (devices), RAM size in bytes.

        With ``shared_ram`` guest RAM is a /dev/shm file mapped at :attr:`ram`.
        """
        self.extra_args = list(args)
        self.memory = memory
        self.timeout = timeout
        self.name = name
        self.qemu = qemu or paths.qemu_binary()
        self.ram: SharedMemory | None = None
        self._shared_ram = shared_ram
        self._shm: list[SharedMemory] = []
        self.proc: QemuProcess | None = None
        self.qmp: QmpClient | None = None
        self._sock: socket.socket | None = None
        self._rfile: BinaryIO | None = None
        self.irq_levels: dict[int, bool] = {}
        self.irq_history: list[tuple[int, bool]] = []

    # -- lifecycle ----------------------------------------------------------

    def shared_memory(self, size: int, tag: str) -> SharedMemory:
        """Create a host-mapped /dev/shm file for a memory backend (before start)."""
        shm = SharedMemory(size, tag)
        self._shm.append(shm)
        return shm

    def start(self) -> QtestMachine:
        """Start QEMU and connect qtest and QMP; raise with QEMU's log if it fails."""
        args = ["-machine", "q35", "-accel", "qtest", "-nodefaults", "-display", "none",
                "-m", f"{self.memory >> 20}M"]
        if self._shared_ram:
            self.ram = self.shared_memory(self.memory, "ram")
            args += ["-object", f"memory-backend-file,id=qgpu-ram,size={self.memory},"
                     f"mem-path={self.ram.path},share=on",
                     "-machine", "memory-backend=qgpu-ram"]
        self.proc = QemuProcess(self.qemu, [], name=self.name)
        listeners: list[socket.socket] = []
        try:
            qtest_l, qtest_path = self.proc.listen("qtest.sock")
            listeners.append(qtest_l)
            qmp_l, qmp_path = self.proc.listen("qmp.sock")
            listeners.append(qmp_l)
            self.proc.args = [*args, "-qtest", f"unix:{qtest_path}",
                              "-chardev", f"socket,id=qgpu-qmp,path={qmp_path}",
                              "-mon", "chardev=qgpu-qmp,mode=control", *self.extra_args]
            self.proc.start()
            self._sock = self.proc.accept(qtest_l, "the qtest connection", self.timeout)
            qmp_sock = self.proc.accept(qmp_l, "the QMP connection", self.timeout)
            self._sock.settimeout(self.timeout)
            self._rfile = self._sock.makefile("rb")
            self.qmp = QmpClient(self.name, timeout=self.timeout, is_alive=self.proc.is_alive,
                                 check_alive=self.proc.check_alive)
            self.qmp.connect(qmp_sock)
        except BaseException:
            self.stop()
            raise
        finally:
            for lsock in listeners:
                lsock.close()
        return self

    def stop(self) -> int | None:
        """Quit QEMU (QMP quit, then signals), close sockets, delete files."""
        status = None
        if self.qmp is not None:
            if self.proc is not None and self.proc.is_alive():
                with contextlib.suppress(Exception):
                    self.qmp.command("quit", timeout=5.0)
            self.qmp.close()
            self.qmp = None
        if self._rfile is not None:
            self._rfile.close()
            self._rfile = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.proc is not None:
            status = self.proc.stop()
        for shm in self._shm:
            shm.close()
        self._shm.clear()
        return status

    def __enter__(self) -> QtestMachine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- protocol -------------------------------------------------------------

    def command(self, line: str) -> str:
        """Send one qtest command; return the text after ``OK``.

        Interleaved ``IRQ raise/lower N`` notifications are recorded in
        :attr:`irq_levels` and :attr:`irq_history`.
        """
        if self._sock is None or self._rfile is None or self.proc is None:
            raise QtestError("qtest: machine not started")
        try:
            self._sock.sendall(line.encode() + b"\n")
            while True:
                reply = self._rfile.readline()
                if not reply:
                    self.proc.check_alive(f"running qtest command {line!r}", grace=5.0)
                    raise QemuDiedError(f"qtest connection closed during {line!r}")
                text = reply.decode().strip()
                if text.startswith("IRQ "):
                    _, what, num = text.split()
                    self.irq_levels[int(num)] = what == "raise"
                    self.irq_history.append((int(num), what == "raise"))
                    continue
                break
        except TimeoutError:
            self.proc.check_alive(f"running qtest command {line!r}")
            raise QemuTimeoutError(f"qtest command {line!r} got no reply in "
                                   f"{self.timeout:.0f} s: QEMU is hung") from None
        except OSError as exc:
            self.proc.check_alive(f"running qtest command {line!r}", grace=5.0)
            raise QtestError(f"qtest command {line!r}: {exc}") from exc
        if text == "OK" or text.startswith("OK "):
            return text[3:]
        raise QtestError(f"qtest command {line!r} failed: {text}")

    def readb(self, addr: int) -> int:
        """Read 1 byte of guest-physical memory (or MMIO)."""
        return int(self.command(f"readb 0x{addr:x}"), 16)

    def readw(self, addr: int) -> int:
        """Read 2 bytes."""
        return int(self.command(f"readw 0x{addr:x}"), 16)

    def readl(self, addr: int) -> int:
        """Read 4 bytes."""
        return int(self.command(f"readl 0x{addr:x}"), 16)

    def readq(self, addr: int) -> int:
        """Read 8 bytes."""
        return int(self.command(f"readq 0x{addr:x}"), 16)

    def writeb(self, addr: int, value: int) -> None:
        """Write 1 byte."""
        self.command(f"writeb 0x{addr:x} 0x{value:x}")

    def writew(self, addr: int, value: int) -> None:
        """Write 2 bytes."""
        self.command(f"writew 0x{addr:x} 0x{value:x}")

    def writel(self, addr: int, value: int) -> None:
        """Write 4 bytes."""
        self.command(f"writel 0x{addr:x} 0x{value:x}")

    def writeq(self, addr: int, value: int) -> None:
        """Write 8 bytes."""
        self.command(f"writeq 0x{addr:x} 0x{value:x}")

    def read(self, addr: int, length: int) -> bytes:
        """Read ``length`` bytes of guest-physical memory through QEMU."""
        if length == 0:
            return b""
        return base64.b64decode(self.command(f"b64read 0x{addr:x} 0x{length:x}"))

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` to guest-physical memory through QEMU."""
        if data:
            encoded = base64.b64encode(data).decode()
            self.command(f"b64write 0x{addr:x} 0x{len(data):x} {encoded}")

    def memset(self, addr: int, length: int, value: int) -> None:
        """Fill ``length`` bytes with ``value``."""
        if length:
            self.command(f"memset 0x{addr:x} 0x{length:x} 0x{value:x}")

    def outl(self, port: int, value: int) -> None:
        """Write a 32-bit I/O port."""
        self.command(f"outl 0x{port:x} 0x{value:x}")

    def inl(self, port: int) -> int:
        """Read a 32-bit I/O port."""
        return int(self.command(f"inl 0x{port:x}"), 16)

    def clock_step(self, ns: int) -> int:
        """Advance the virtual clock by ``ns``; return the new clock value."""
        return int(self.command(f"clock_step {ns}"))

    def irq_intercept_in(self, qom_path: str) -> None:
        """Report the input IRQ lines of ``qom_path`` as ``IRQ`` notifications."""
        self.command(f"irq_intercept_in {qom_path}")

    def poll(self) -> None:
        """Let QEMU's main loop run once (bottom halves, timers due)."""
        self.command("endianness")
