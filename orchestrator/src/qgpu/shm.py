"""Host-mapped files under /dev/shm, used as QEMU memory backends.

QEMU maps the file ``share=on``; the rig maps the same file, so it reads and
writes guest RAM or VRAM directly, without going through QEMU or the device.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
import uuid
from pathlib import Path

from qgpu.errors import SetupError

SHM_DIR = Path("/dev/shm")
#: The rig's files: qgpu-TAG-PID-RANDOM.
_OURS = re.compile(r"^qgpu-.+-(\d+)-[0-9a-f]{8}$")
_swept = False
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def sweep_stale(folder: Path = SHM_DIR) -> list[Path]:
    """Remove this user's rig files whose process is gone (a rig killed outright).

    Return what was removed. Other users' files are left alone, and so is a file
    that cannot be removed. (A rig in another PID namespace sharing this
    /dev/shm would look dead from here: give such rigs a /dev/shm each.)
    """
    removed = []
    uid = os.getuid()
    for path in folder.glob("qgpu-*"):
        m = _OURS.match(path.name)
        try:
            if m is None or path.lstat().st_uid != uid:
                continue
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
        except OSError:
            pass                        # gone meanwhile, or another user's live process
    return removed


def check_space(size: int, folder: Path = SHM_DIR) -> None:
    """Raise :class:`SetupError` unless ``folder`` can hold ``size`` more bytes.

    One backend at a time: the files are sparse, so several guests may each
    pass and together still outgrow a small /dev/shm.
    """
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free < size:
        raise SetupError(
            f"{folder} has {free >> 20} MiB free and a memory backend needs {size >> 20} MiB "
            f"(a guest's VRAM): give it more room (a container: 'docker run --shm-size=2g' "
            f"or 'podman run --shm-size=2g'; a host: 'mount -o remount,size=4G {folder}'), "
            "or ask for less VRAM")


class SharedMemory:
    """A file under /dev/shm that QEMU uses as a memory backend, mapped here.

    The file keeps its name while the rig runs: a re-plugged device, a live
    migration's destination and a restored guest open it by path. Files left
    by a rig that was killed are swept when the next one starts.
    """

    def __init__(self, size: int, tag: str) -> None:
        """Create (sparse) and map a ``size``-byte file; say so if /dev/shm is too small."""
        global _swept
        if not _swept:
            try:
                sweep_stale()
            finally:
                _swept = True
        check_space(size)
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

    def zero(self) -> None:
        """Make the whole file read as zeros, and free its pages (also in QEMU's mapping)."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                               ctypes.c_long(0), ctypes.c_long(self.size)) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot zero {self.path}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def close(self) -> None:
        """Unmap and delete the file. Idempotent."""
        if not self.map.closed:
            self.map.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


