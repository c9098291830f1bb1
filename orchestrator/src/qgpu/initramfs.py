"""Initramfs overlays: the user's files added to a guest image without rebuilding it.

Linux unpacks every cpio archive it finds one after another in the initramfs,
later files replacing earlier ones; so a guest image gains a module, tools or
scripts when an archive of them is appended to its ``initramfs.img``.
:func:`with_overlays` writes that archive in the "newc" format the kernel
reads (as its ``usr/gen_init_cpio`` does: no device nodes to create, so it
works unprivileged and in containers) and returns the combined image, kept in
``$QGPU_CACHE/initramfs`` under a name that is a hash of everything in it --
the same overlay gives the same file, so guest templates stay valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from qgpu import paths
from qgpu.errors import SetupError

#: The end of a newc archive.
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One member of an archive: its path in the guest, mode and contents."""

    name: str                   #: relative, "/"-separated ("opt/mine/mine.ko")
    mode: int                   #: file type and permissions (stat.S_IFREG | 0o644, ...)
    data: bytes = b""           #: a file's bytes, a symbolic link's target


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def newc(entries: Sequence[Entry]) -> bytes:
    """Return ``entries`` as a newc cpio archive (owner root, time 0), with its trailer."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = os.fsencode(e.name) + b"\0"
        fields = (ino if e.name != TRAILER else 0, e.mode, 0, 0,
                  2 if stat.S_ISDIR(e.mode) else 1, 0, len(e.data), 0, 0, 0, 0, len(name), 0)
        header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
        out += _padded(header + name) + _padded(e.data)
    return bytes(out)


def entries_of(folder: Path) -> Iterator[Entry]:
    """Yield the entries of everything under ``folder``, parents before children.

    The folder's own path is the guest's ``/``: ``DIR/opt/mine/mine.ko`` becomes
    ``/opt/mine/mine.ko``. Regular files keep their permissions; symbolic links
    are archived as links. Folders are 0755 (1777 with the sticky bit): the
    kernel applies an archive's mode to a folder the image already has, and an
    overlay's ``etc/`` made under umask 077 must not close the guest's.
    Anything else (a device node, a socket) is refused.
    """
    if not folder.is_dir():
        raise SetupError(f"initramfs overlay {folder}: not a folder (give a folder whose "
                         "contents go to the guest's /)")
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(root)
        for name in [*sorted(dirs), *sorted(files)]:
            path = base / name
            rel = PurePosixPath(path.relative_to(folder).as_posix())
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                yield Entry(str(rel), stat.S_IFLNK | 0o777, os.readlink(path).encode())
            elif stat.S_ISDIR(st.st_mode):
                yield Entry(str(rel), stat.S_IFDIR |
                            (0o1777 if st.st_mode & stat.S_ISVTX else 0o755))
            elif stat.S_ISREG(st.st_mode):
                yield Entry(str(rel), stat.S_IFREG | stat.S_IMODE(st.st_mode),
                            path.read_bytes())
            else:
                raise SetupError(f"initramfs overlay {folder}: {rel} is neither a file, a "
                                 "folder nor a symbolic link")


def with_overlays(initrd: Path, overlays: Sequence[Path]) -> Path:
    """Return ``initrd`` followed by an archive of each of ``overlays``, in that order.

    Later overlays replace files of earlier ones and of the image. The result is
    cached by content; ``initrd`` itself is returned when there are no overlays.
    """
    if not overlays:
        return initrd
    archives = [newc(list(entries_of(Path(o)))) for o in overlays]
    h = hashlib.sha256()
    with open(initrd, "rb") as f:
        h.update(hashlib.file_digest(f, "sha256").digest())
    for a in archives:
        h.update(hashlib.sha256(a).digest())
    folder = paths.cache_dir() / "initramfs"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{h.hexdigest()[:24]}.img"
    if dest.exists():
        os.utime(dest)                      # recently used: kept by _prune
        return dest
    # Written aside and renamed: a reader never sees half an image.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out, open(initrd, "rb") as base:
            data = base.read()
            out.write(_padded(data))        # archives start on a 4-byte boundary
            for a in archives:
                out.write(a)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _prune(folder, keep=dest)
    return dest


#: Images with overlays kept in the cache: the most recently used ones, and any
#: used within the last day (another run may be about to boot it).
KEEP_IMAGES = 16
KEEP_SECONDS = 24 * 3600


def _prune(folder: Path, keep: Path) -> None:
    """Remove cached images beyond the newest KEEP_IMAGES that nobody used for a day."""
    images = []
    for p in folder.glob("*.img"):
        with contextlib.suppress(OSError):
            images.append((p.stat().st_mtime, p))
    images.sort(reverse=True)
    now = time.time()
    for mtime, p in images[KEEP_IMAGES:]:
        if p != keep and now - mtime > KEEP_SECONDS:
            with contextlib.suppress(OSError):
                p.unlink()
