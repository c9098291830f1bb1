"""Host-mapped files under /dev/shm, used as QEMU memory backends.

QEMU maps the file ``share=on``; the rig maps the same file, so it reads and
writes guest RAM or VRAM directly, without going through QEMU or the device.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import uuid
from pathlib import Path

SHM_DIR = Path("/dev/shm")


class SharedMemory:
    """A file under /dev/shm that QEMU uses as a memory backend, mapped here."""

    def __init__(self, size: int, tag: str) -> None:
        """Create (sparse) and map a ``size``-byte file."""
        self.size = size
        self.path = SHM_DIR / f"qgpu-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size, mmap.MAP_SHARED)
        finally:
            os.close(fd)

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset``."""
        return self.map[offset:offset + length]

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``."""
        self.map[offset:offset + len(data)] = data

    def close(self) -> None:
        """Unmap and delete the file. Idempotent."""
        if not self.map.closed:
            self.map.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


