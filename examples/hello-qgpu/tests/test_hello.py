"""qgpu_hello's one fill, checked from the host: the rig's public fixtures only.

Each test boots a guest of its own (``qgpu_make_guest``) with the module added to
its / (``overlays``) and the image's own qgpu driver left out (``load_driver``),
loads the module, and reads VRAM through the host's mapping of the device's
memory backend -- not through the guest, whose driver is under test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qgpu.abi import ABI
from qgpu.config import DmaMode
from qgpu.machine import GuestMachine

MakeGuest = Callable[..., GuestMachine]
BDF = "0000:01:00.0"
INSMOD = "insmod /opt/hello/qgpu_hello.ko"


def test_a_fill_lands_in_vram(qgpu_make_guest: MakeGuest, qgpu_dma_mode: DmaMode,
                              hello_overlay: Path) -> None:
    """In each DMA mode (``--qgpu-modes``): the bytes, and only those, and one descriptor."""
    guest = qgpu_make_guest(qgpu_dma_mode, overlays=[hello_overlay], load_driver=False)
    vram = guest.inspector("qgpu0")
    before = vram.stats()
    offset, length, pattern = 0x3001, 5003, 0x44332211     # unaligned on purpose
    guest.run(f"{INSMOD} offset={offset:#x} length={length} pattern={pattern:#x}",
              check=True)
    log = guest.run("dmesg", check=True).output
    assert f"qgpu_hello {BDF}: fill of {length} bytes at VRAM {offset:#x} with " \
           f"{pattern:#x}: done, fence" in log, log
    around = vram.vram_backend(offset - 16, length + 32)
    # Byte k of the fill is byte k mod 4 of the little-endian pattern (spec 4.2).
    expected = (pattern.to_bytes(4, "little") * (length // 4 + 1))[:length]
    assert around[16:-16] == expected
    assert around[:16] == bytes(16) and around[-16:] == bytes(16), "bytes outside the fill"
    after = vram.stats()
    assert after["descriptors"] - before["descriptors"] == 1
    assert after["bytes-fill"] - before["bytes-fill"] == length
    assert after["errors"] == before["errors"]


def test_a_fill_past_the_end_of_vram_is_the_devices_error(qgpu_make_guest: MakeGuest,
                                                          hello_overlay: Path) -> None:
    """The device checks the bounds; the driver reports its error code and fails probe."""
    guest = qgpu_make_guest(DmaMode.DIRECT, overlays=[hello_overlay], load_driver=False)
    vram = guest.inspector("qgpu0")
    size = guest.config.qgpus[0].vram_size
    guest.run(f"{INSMOD} offset={size - 4096:#x} length=8192", check=True)
    log = guest.run("dmesg", check=True).output
    assert f"device error {ABI.ERR_VRAM_RANGE} " in log, log
    assert f"qgpu_hello {BDF}: probe with driver qgpu_hello failed with error -5" in log, log
    assert vram.stats()["errors"] == 1
    assert vram.vram_backend(size - 4096, 4096) == bytes(4096), "a refused fill wrote VRAM"
