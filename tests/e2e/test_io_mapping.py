"""Which kernel function maps VRAM write-combined, proven from outside the driver.

The driver maps VRAM with ``io_mapping_map_user()`` where the kernel has it
(``CONFIG_IO_MAPPING``: the project's ``qgpu`` and ``debug`` kernels) and with
``io_remap_pfn_range()`` in two pieces elsewhere (Debian's stock kernel, where
nothing selects IO_MAPPING). The test arms kprobe events on both kernel functions
and counts the calls the tool's own process makes while it maps VRAM, then checks
that either path gives the same result: VmFlags ``pf io de dd``, a write-combining
PAT memtype over the mapped pages, and the bytes in the host's VRAM backend.
(Neither path reserves a memtype per multi-page mapping: ``io_mapping_map_user()``
relies on the io_mapping's BAR-wide WC reservation and tracks nothing; the
stand-in's two partial remaps are only checked against that reservation.)
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager

from qgpu.data import fill_pattern
from qgpu.inspector import DeviceInspector
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine

from .guestio import PAGE, VM_DEVICE_FLAGS, first_diff, hold_tool, pat_entries, sh, tool

TRACING = "/sys/kernel/debug/tracing"
IOMAP, REMAP = "io_mapping_map_user", "remap_pfn_range"
MiB = 1 << 20


@contextmanager
def kernel_calls(guest: GuestMachine, functions: list[str]) -> Iterator[dict[str, int]]:
    """Count calls of kernel ``functions`` made by qgpu-tool processes within the block.

    The counts are filled in when the block ends (kprobe events in a clean trace
    buffer; each trace line names the calling task).
    """
    events = {f: f"qgpu_io_{i}" for i, f in enumerate(functions)}
    setup = [f"echo 0 > {TRACING}/tracing_on", f"echo > {TRACING}/trace"]
    setup += [f"echo 'p:qgpu_test/{ev} {fn}' >> {TRACING}/kprobe_events"
              for fn, ev in events.items()]
    setup += [f"echo 1 > {TRACING}/events/qgpu_test/enable", f"echo 1 > {TRACING}/tracing_on"]
    counts: dict[str, int] = {}
    try:
        sh(guest, " && ".join(setup))
        yield counts
        trace = sh(guest, f"echo 0 > {TRACING}/tracing_on && cat {TRACING}/trace")
        for fn, ev in events.items():
            counts[fn] = len(re.findall(rf"^\s*qgpu-tool-\d+ .*\b{ev}:", trace, re.M))
    finally:
        sh(guest, f"echo 0 > {TRACING}/events/qgpu_test/enable 2>/dev/null; "
                  f"echo > {TRACING}/kprobe_events; echo > {TRACING}/trace; "
                  f"echo 1 > {TRACING}/tracing_on")


def test_wc_vram_mapping_path(qgpu_guest: GuestMachine, qgpu_kernel: GuestKernel,
                              qgpu_inspector: DeviceInspector, rng: random.Random) -> None:
    """io_mapping_map_user() once per mapping where the kernel has it; else two remaps."""
    insp = qgpu_inspector
    kallsyms = sh(qgpu_guest, f"grep -wE '{IOMAP}|{REMAP}' /proc/kallsyms")
    has_iomap = bool(re.search(rf" [Tt] {IOMAP}$", kallsyms, re.M))
    assert has_iomap == qgpu_kernel.io_mapping, \
        f"kernel config says IO_MAPPING={qgpu_kernel.io_mapping}, kallsyms: {kallsyms!r}"
    assert re.search(rf" [Tt] {REMAP}$", kallsyms, re.M), kallsyms

    vram_bar = insp.bars()[2]
    # From the middle of a page: each mapping spans several pages, so the
    # stand-in's two-piece remap shows as two calls.
    write_off = rng.randrange(1, 16 * MiB // PAGE) * PAGE + PAGE // 2
    read_off = rng.randrange(16 * MiB // PAGE, 32 * MiB // PAGE) * PAGE + PAGE // 2
    pattern = rng.getrandbits(32)
    with kernel_calls(qgpu_guest, [IOMAP, REMAP] if has_iomap else [REMAP]) as calls:
        tool(qgpu_guest, f"mmap-write {write_off:#x} {2 * PAGE} {pattern:#x}")
        # A page of hex overflows stdio's buffer: the tool blocks while still mapped.
        with hold_tool(qgpu_guest, f"mmap-read {read_off:#x} {PAGE}") as held:
            maps = list(held.smaps_flags().values())
            assert len(maps) == 1, f"want one device mapping, got {maps}"
            mapping, flags = maps[0]
            assert mapping.end - mapping.start == 2 * PAGE, mapping
            assert flags >= VM_DEVICE_FLAGS, \
                f"VmFlags {sorted(flags)} lack {sorted(VM_DEVICE_FLAGS - flags)}"
            first = vram_bar.address + read_off // PAGE * PAGE
            pat = pat_entries(qgpu_guest)
            for page in (first, first + PAGE):
                assert any(lo <= page and page + PAGE <= hi and kind == "write-combining"
                           for lo, hi, kind in pat), \
                    f"VRAM page {page:#x} is not covered by a write-combining memtype: {pat}"
    got = bytes.fromhex(held.release()["hex"])
    assert got == insp.vram_backend(read_off, PAGE), "mmap-read disagrees with the backend"
    written = insp.vram_backend(write_off, 2 * PAGE)
    want = fill_pattern(pattern, 2 * PAGE)
    assert written == want, f"VRAM backend after mmap-write: {first_diff(written, want)}"

    if has_iomap:
        assert calls == {IOMAP: 2, REMAP: 0}, \
            f"two mappings should make one io_mapping_map_user() call each: {calls}"
    else:
        assert calls == {REMAP: 4}, \
            f"two mappings should make two io_remap_pfn_range() calls each: {calls}"
