"""DMA between user buffers and VRAM, in every DMA mode, proven from the host.

Each transfer is checked three ways: the bytes (VRAM through its memory backend,
user pages through QEMU's guest-physical view), the device's accounting (stat-*,
the DMA trace), and the path the device's bus addresses prove (see
:func:`guestio.check_dma_path`: physical in direct mode, bounce slots under
swiotlb, IOVAs outside RAM under the IOMMU).
"""

from __future__ import annotations

import hashlib
import random

import pytest

from qgpu.config import DmaMode
from qgpu.data import fill_pattern as pattern_bytes
from qgpu.data import fnv1a64
from qgpu.inspector import DeviceInspector
from qgpu.machine import GuestMachine

from .guestio import (
    DmaPlatform,
    check_contiguous,
    check_dma_path,
    dma_platform,
    driver_stats,
    first_diff,
    guest_sha256,
    hold_tool,
    put_file,
    sh,
    split_line_bounces,
    tool,
    trace_mark,
    trace_since,
    user_buffer,
)

MiB = 1 << 20


def _delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return after[key] - before[key]


def test_dma_user_buffer_to_vram(qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
                                 qgpu_dma_mode: DmaMode, rng: random.Random) -> None:
    insp = qgpu_inspector
    data = rng.randbytes(rng.randrange(150_000, 200_000))
    off = rng.randrange(0, 32 * MiB) | 1
    put_file(qgpu_guest, "/tmp/up.bin", data)
    platform = dma_platform(qgpu_guest)
    host0, drv0, mark = insp.stats(), driver_stats(qgpu_guest), trace_mark(insp)
    with hold_tool(qgpu_guest, f"to-vram {off:#x} /tmp/up.bin") as held:
        records = trace_since(insp, mark)
        check_contiguous(records, "copy-to-vram", off, len(data))
        vram = insp.vram_backend(off, len(data))
        assert vram == data, f"VRAM backend after the upload: {first_diff(vram, data)}"
        buf = user_buffer(held, len(data))
        check_dma_path(qgpu_dma_mode, insp, records, off, buf, data, platform)
        # The proof tells the modes apart: the other modes' checks must fail. (The
        # two IOMMUs look alike from the bus: both give IOVAs outside RAM.)
        for other in DmaMode:
            if other is not qgpu_dma_mode and not (other.translated and qgpu_dma_mode.translated):
                with pytest.raises(AssertionError):
                    check_dma_path(other, insp, records, off, buf, data, platform)
        print(f"{qgpu_dma_mode}: user frames {[hex(p) for p in buf.pfns[:4]]}..., bus "
              f"{[hex(r['bus-addr']) for r in records[:4]]}... ({len(records)} segments)")
    res = held.release()
    assert res["ok"] and res["length"] == len(data)
    assert int(res["checksum"], 16) == fnv1a64(data)
    assert res["segments"] == len(records), \
        f"driver mapped {res['segments']} segments, the device traced {len(records)}"
    host1, drv1 = insp.stats(), driver_stats(qgpu_guest)
    assert _delta(host1, host0, "bytes-to-vram") == len(data)
    assert _delta(host1, host0, "errors") == 0
    assert _delta(drv1, drv0, "bytes_to_vram") == len(data)
    assert drv1["pinned_pages"] == 0, "pages left pinned after the copy"


def test_dma_vram_to_user_buffer(qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
                                 qgpu_dma_mode: DmaMode, rng: random.Random) -> None:
    insp = qgpu_inspector
    data = rng.randbytes(rng.randrange(150_000, 200_000))
    off = rng.randrange(0, 32 * MiB) | 2
    assert insp.vram is not None
    insp.vram.write(off, data)                  # the host writes VRAM directly
    platform = dma_platform(qgpu_guest)
    host0, mark = insp.stats(), trace_mark(insp)
    with hold_tool(qgpu_guest, f"from-vram {off:#x} {len(data)} /tmp/down.bin") as held:
        records = trace_since(insp, mark)
        check_contiguous(records, "copy-from-vram", off, len(data))
        check_dma_path(qgpu_dma_mode, insp, records, off, user_buffer(held, len(data)), data,
                       platform)
    res = held.release()
    assert res["ok"] and int(res["checksum"], 16) == fnv1a64(data)
    assert res["segments"] == len(records)
    assert guest_sha256(qgpu_guest, "/tmp/down.bin") == hashlib.sha256(data).hexdigest(), \
        "the file the guest wrote differs from what the host put in VRAM"
    host1 = insp.stats()
    assert _delta(host1, host0, "bytes-from-vram") == len(data)
    assert _delta(host1, host0, "errors") == 0


def test_dma_roundtrip_between_two_user_buffers(qgpu_guest: GuestMachine,
                                                qgpu_inspector: DeviceInspector,
                                                rng: random.Random) -> None:
    """A multi-MiB buffer → VRAM → another buffer; checked in the guest and on the host."""
    insp = qgpu_inspector
    data = rng.randbytes(rng.randrange(2 * MiB, 3 * MiB))
    off = rng.randrange(0, 48 * MiB) | 3
    put_file(qgpu_guest, "/tmp/a.bin", data)
    host0, drv0 = insp.stats(), driver_stats(qgpu_guest)
    up = tool(qgpu_guest, f"to-vram {off:#x} /tmp/a.bin")
    vram = insp.vram_backend(off, len(data))
    assert vram == data, f"VRAM backend after the upload: {first_diff(vram, data)}"
    down = tool(qgpu_guest, f"from-vram {off:#x} {len(data)} /tmp/b.bin")
    sh(qgpu_guest, "cmp /tmp/a.bin /tmp/b.bin")
    assert guest_sha256(qgpu_guest, "/tmp/b.bin") == hashlib.sha256(data).hexdigest()
    assert int(up["checksum"], 16) == int(down["checksum"], 16) == fnv1a64(data)
    assert down["fence"] > up["fence"] > 0
    host1, drv1 = insp.stats(), driver_stats(qgpu_guest)
    assert _delta(host1, host0, "bytes-to-vram") == len(data)
    assert _delta(host1, host0, "bytes-from-vram") == len(data)
    assert _delta(host1, host0, "errors") == 0
    assert host1["last-fence"] == down["fence"], "device's last fence != the download's"
    assert _delta(drv1, drv0, "bytes_to_vram") == len(data)
    assert _delta(drv1, drv0, "bytes_from_vram") == len(data)
    # Every descriptor the driver wrote was retired by the device.
    assert _delta(host1, host0, "descriptors") == _delta(drv1, drv0, "descriptors")


def _sg_transfer(guest: GuestMachine, insp: DeviceInspector, mode: DmaMode, cmd: str,
                 op: str, off: int, data: bytes, platform: DmaPlatform) -> bool:
    """Run one forced-SG copy held for inspection; False if its buffer was not fragmented.

    From VRAM, a partial cache line at either end is a plain descriptor of its own
    into a bounce buffer (:func:`split_line_bounces`); the SG list maps the rest.
    """
    host0, drv0, mark = insp.stats(), driver_stats(guest), trace_mark(insp)
    with hold_tool(guest, cmd) as held:
        records = trace_since(insp, mark)
        check_contiguous(records, op, off, len(data))
        buf = user_buffer(held, len(data))
        bounced, mapped = split_line_bounces(records, buf, off)
        head = sum(int(r["length"]) for r in bounced if int(r["vram-offset"]) == off)
        runs = buf.runs(head, len(data) - sum(int(r["length"]) for r in bounced))
        if len(runs) < 2:
            return False
        if mode.translated:
            # The IOMMU may merge the runs into fewer bus segments, never split them.
            assert len(mapped) <= len(runs)
        else:
            assert len(mapped) == len(runs), \
                f"{len(runs)} physical runs but {len(mapped)} device segments"
        check_dma_path(mode, insp, records, off, buf, data, platform)
    res = held.release()
    host1, drv1 = insp.stats(), driver_stats(guest)
    assert res["segments"] == len(records)
    assert _delta(host1, host0, "descriptors") == 1 + len(bounced), \
        "one SG descriptor, and one per bounced partial line, expected"
    assert _delta(drv1, drv0, "sg_descriptors") == 1
    assert _delta(drv1, drv0, "sg_entries") == len(mapped)
    assert _delta(drv1, drv0, "single_page_maps") == 0
    assert _delta(drv1, drv0, "line_bounces") == len(bounced)
    return True


def test_dma_scatter_gather_fragmented_buffers(qgpu_guest: GuestMachine,
                                               qgpu_inspector: DeviceInspector,
                                               qgpu_dma_mode: DmaMode, rng: random.Random) -> None:
    """Forced SG on physically fragmented buffers: one descriptor, one segment per run."""
    insp = qgpu_inspector
    assert insp.vram is not None
    n = rng.randrange(160_000, 220_000)
    off = rng.randrange(0, 32 * MiB) | 1
    platform = dma_platform(qgpu_guest)
    for direction in ("to", "from"):
        # The allocator decides how fragmented a fresh process's buffer is: retry a
        # (rare) physically contiguous one.
        for _ in range(5):
            data = rng.randbytes(n)
            if direction == "to":
                put_file(qgpu_guest, "/tmp/sg.bin", data)
                cmd, op = f"to-vram {off:#x} /tmp/sg.bin --sg", "copy-to-vram"
            else:
                insp.vram.write(off, data)
                cmd, op = f"from-vram {off:#x} {n} /tmp/sg-back.bin --sg", "copy-from-vram"
            if _sg_transfer(qgpu_guest, insp, qgpu_dma_mode, cmd, op, off, data, platform):
                break
        else:
            pytest.fail(f"5 {n}-byte buffers in a row were physically contiguous")
        if direction == "to":
            vram = insp.vram_backend(off, n)
            assert vram == data, f"VRAM after the SG upload: {first_diff(vram, data)}"
        else:
            assert guest_sha256(qgpu_guest, "/tmp/sg-back.bin") == hashlib.sha256(data).hexdigest()


def test_dma_single_page_path(qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
                              qgpu_dma_mode: DmaMode, rng: random.Random) -> None:
    """A buffer inside one page: dma_map_page without --sg, a 1-entry SG list with it."""
    insp = qgpu_inspector
    platform = dma_platform(qgpu_guest)
    for force_sg in (False, True):
        data = rng.randbytes(rng.randrange(1, 4000))
        off = rng.randrange(0, 64 * MiB - len(data))
        put_file(qgpu_guest, "/tmp/small.bin", data)
        host0, drv0, mark = insp.stats(), driver_stats(qgpu_guest), trace_mark(insp)
        with hold_tool(qgpu_guest, f"to-vram {off:#x} /tmp/small.bin"
                              f"{' --sg' if force_sg else ''}") as held:
            records = trace_since(insp, mark)
            check_contiguous(records, "copy-to-vram", off, len(data))
            assert len(records) == 1
            check_dma_path(qgpu_dma_mode, insp, records, off, user_buffer(held, len(data)), data,
                           platform)
        held.release()
        host1, drv1 = insp.stats(), driver_stats(qgpu_guest)
        assert insp.vram_backend(off, len(data)) == data
        assert _delta(host1, host0, "descriptors") == 1
        assert _delta(drv1, drv0, "single_page_maps") == (0 if force_sg else 1)
        assert _delta(drv1, drv0, "sg_descriptors") == (1 if force_sg else 0)


def test_device_side_fill_copy_and_cpu_access(qgpu_guest: GuestMachine,
                                              qgpu_inspector: DeviceInspector,
                                              rng: random.Random) -> None:
    """DMA fill and VRAM-to-VRAM copy (traced, bus address 0) and the kernel's CPU fill."""
    insp = qgpu_inspector
    assert insp.vram is not None
    base = rng.randrange(0, 32 * MiB)
    size = 300_000
    insp.vram.write(base, rng.randbytes(size))
    model = bytearray(insp.vram_backend(base, size))
    mark, host0 = trace_mark(insp), insp.stats()

    fill_off, fill_len, pat = rng.randrange(0, 50_000) | 1, rng.randrange(10_000, 60_000), \
        rng.getrandbits(32)
    fence1 = tool(qgpu_guest, f"fill {base + fill_off:#x} {fill_len} {pat:#x}")["fence"]
    model[fill_off:fill_off + fill_len] = pattern_bytes(pat, fill_len)

    src, dst, n = 1000, rng.randrange(1001, 40_000), rng.randrange(100_000, 200_000)
    fence2 = tool(qgpu_guest, f"copy-vram {base + src:#x} {base + dst:#x} {n}")["fence"]
    model[dst:dst + n] = model[src:src + n]     # memmove semantics (overlapping)

    mark2 = trace_mark(insp)
    cpu_off, cpu_len, cpat = rng.randrange(200_000, 250_000) | 3, rng.randrange(100, 40_000), \
        rng.getrandbits(32)
    tool(qgpu_guest, f"fill {base + cpu_off:#x} {cpu_len} {cpat:#x} --cpu")
    model[cpu_off:cpu_off + cpu_len] = pattern_bytes(cpat, cpu_len)

    got = insp.vram_backend(base, size)
    assert got == bytes(model), f"VRAM after fill/copy/cpu-fill: {first_diff(got, bytes(model))}"
    assert insp.vram_via_bar(base, size) == bytes(model), "the BAR view differs from the backend"
    records = trace_since(insp, mark)
    assert [(r["op"], r["bus-addr"], r["vram-offset"], r["length"], r["status"])
            for r in records] == [
        ("fill", 0, base + fill_off, fill_len, "ok"),
        ("copy-vram", 0, base + dst, n, "ok")], "trace of the device-side operations"
    assert trace_mark(insp) == mark2, "the CPU fill must not reach the DMA engine"
    host1 = insp.stats()
    assert 0 < fence1 < fence2 == host1["last-fence"]
    assert _delta(host1, host0, "bytes-fill") == fill_len
    assert _delta(host1, host0, "bytes-vram-copy") == n
    assert _delta(host1, host0, "descriptors") == 2


