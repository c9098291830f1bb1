"""Guest kernels: which one a guest boots, and what it can detect.

One word chooses the kernel everywhere (pytest ``--qgpu-kernel``, ``qgpu boot|run|demo
--kernel``, ``make ... KERNEL=``):

``stock``   Debian's bookworm-backports kernel (``build/images/stock``)
``qgpu``    built from Debian's linux-source with ``CONFIG_IO_MAPPING``, so the driver's
            write-combined VRAM mapping goes through ``io_mapping_map_user()``
``debug``   ``qgpu`` plus KASAN, KFENCE, lockdep, kmemleak, DMA-API debugging, UBSAN,
            debug objects and fault injection
a folder    an image folder of the same layout (``vmlinux`` or ``vmlinuz``,
            ``initramfs.img``, ``ssh/id_ed25519``, ``kernel.config``), e.g. one built with
            ``make image KERNEL=...`` elsewhere

What a kernel can detect is read from its configuration (``kernel.config`` beside it),
not from its name, so any kernel built with the same options gets the same checks; the
boot parameters it wants are in ``kernel-cmdline`` beside it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from qgpu import paths
from qgpu.errors import SetupError

#: The kernels the project builds or fetches, by name.
KNOWN = ("stock", "qgpu", "debug")

#: Extra time a test may take on a kernel with the heavy detectors (KASAN, lockdep,
#: kmemleak), as measured under TCG: the debug kernel boots 4.2x slower than stock
#: and runs a test's guest commands about 3x slower; the bounds being scaled are
#: already generous, so 4 leaves room for a busy machine.
DEBUG_TIMEOUT_SCALE = 4.0


@dataclass(frozen=True)
class Detectors:
    """The bug detectors a kernel has built in (from its configuration)."""

    kasan: bool = False
    kfence: bool = False
    lockdep: bool = False
    kmemleak: bool = False
    dma_api_debug: bool = False
    ubsan: bool = False
    debug_objects: bool = False
    fault_injection: bool = False     #: failslab, fail_page_alloc, fail_function, fail-nth

    @property
    def heavy(self) -> bool:
        """Whether they slow the kernel down enough to scale test timeouts."""
        return self.kasan or self.lockdep or self.kmemleak

    def names(self) -> list[str]:
        """Return the names of the detectors that are present."""
        return [name for name, on in vars(self).items() if on]


@dataclass(frozen=True)
class GuestKernel:
    """A guest image: a kernel, its initramfs (with qgpu.ko built for it), its facts."""

    name: str                   #: "stock", "qgpu", "debug", or the folder's path
    image_dir: Path
    release: str                #: what ``uname -r`` prints in the guest
    config: dict[str, str]      #: CONFIG_* values of the kernel

    @property
    def kernel(self) -> Path:
        """Return the file QEMU boots: ``vmlinux`` (PVH entry, faster) or ``vmlinuz``."""
        vmlinux = self.image_dir / "vmlinux"
        return vmlinux if vmlinux.exists() else self.image_dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        """Return the initramfs."""
        return self.image_dir / "initramfs.img"

    @property
    def ssh_key(self) -> Path:
        """Return the private half of the image's test SSH key."""
        return self.image_dir / "ssh" / "id_ed25519"

    @property
    def module_build_dir(self) -> Path | None:
        """Return the kernel build tree out-of-tree modules are built against, if known.

        ``make -C <it> M=<your module> modules`` builds a module this guest loads.
        The image's ``kernel-kdir`` link names it (headers for Debian's kernel, the
        build folder for the project's own).
        """
        kdir = self.image_dir / "kernel-kdir"
        return kdir.resolve() if (kdir / "Makefile").exists() else None

    def has(self, option: str) -> bool:
        """Whether ``CONFIG_<option>`` is built in (=y)."""
        return self.config.get(f"CONFIG_{option}") == "y"

    @property
    def detectors(self) -> Detectors:
        """Return the bug detectors this kernel has."""
        return Detectors(
            kasan=self.has("KASAN"),
            # Debian builds KFENCE in but samples nothing unless booted to.
            kfence=self.has("KFENCE") and
            self.config.get("CONFIG_KFENCE_SAMPLE_INTERVAL", "0") != "0",
            lockdep=self.has("PROVE_LOCKING"), kmemleak=self.has("DEBUG_KMEMLEAK"),
            dma_api_debug=self.has("DMA_API_DEBUG"),
            ubsan=self.has("UBSAN"), debug_objects=self.has("DEBUG_OBJECTS"),
            fault_injection=self.has("FAULT_INJECTION_DEBUG_FS") and
            self.has("FAULT_INJECTION_STACKTRACE_FILTER"))

    @property
    def io_mapping(self) -> bool:
        """Whether ``io_mapping_map_user()`` exists (the driver then maps VRAM with it)."""
        return self.has("IO_MAPPING")

    @property
    def timeout_scale(self) -> float:
        """Return how much longer than on the stock kernel guest operations may take."""
        return DEBUG_TIMEOUT_SCALE if self.detectors.heavy else 1.0

    def boot_args(self) -> tuple[str, ...]:
        """Return the boot parameters this kernel wants (``kernel-cmdline`` beside it).

        Written when the kernel was fetched or built: ``mitigations=off`` for Debian's
        kernel, DMA-API debugging's driver filter and KASAN's multi-shot reports for the
        debug kernel (the ``# qgpu-cmdline:`` lines of its configuration fragments).
        """
        path = self.image_dir / "kernel-cmdline"
        return tuple(path.read_text().split()) if path.exists() else ()

    def check(self) -> GuestKernel:
        """Raise :class:`SetupError` naming the missing file and the make command."""
        for path in (self.kernel, self.initrd, self.ssh_key):
            if not path.exists():
                word = self.name if self.name in KNOWN else "<name>"
                raise SetupError(f"{path} is missing: run 'make image KERNEL={word}' to build "
                                 f"the {self.name} guest image")
        return self


def read_config(path: Path) -> dict[str, str]:
    """Parse a kernel ``.config`` into ``{"CONFIG_X": "y", ...}`` (empty if absent)."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            m = re.fullmatch(r"(CONFIG_\w+)=(.*)", line.strip())
            if m:
                values[m[1]] = m[2].strip('"')
    return values


def resolve(word: str | None = None) -> GuestKernel:
    """Return the guest kernel named by ``word``: a name in :data:`KNOWN` or an image folder.

    Without ``word``: ``QGPU_KERNEL``, else ``QGPU_IMAGE_DIR`` (an image folder), else stock.
    """
    word = word or os.environ.get("QGPU_KERNEL") or os.environ.get("QGPU_IMAGE_DIR") or "stock"
    if word in KNOWN:
        folder = paths.build_dir() / "images" / word
    else:
        folder = Path(word)
        if folder.is_file():
            raise SetupError(
                f"kernel {word!r}: give an image folder (vmlinux or vmlinuz, initramfs.img, "
                "ssh/), not a kernel file; build one with 'make image KERNEL=...', or use "
                f"one of {', '.join(KNOWN)}")
        if not folder.is_dir():
            raise SetupError(f"kernel {word!r} is neither one of {', '.join(KNOWN)} nor an "
                             "image folder")
    release_file = folder / "kernel-abi"
    release = release_file.read_text().strip() if release_file.exists() else "unknown"
    return GuestKernel(name=word, image_dir=folder, release=release,
                       config=read_config(folder / "kernel.config"))
