"""Guest-side operations of the end-to-end tests, and host-side facts to check them against.

Everything the guest does goes through the image's own tools (``qgpu-tool``,
``qgpu-test``) and busybox, over SSH (binary-safe stdin; the serial console
stays free for the rig's health checks).

:func:`hold_tool` runs a ``qgpu-tool`` command and keeps the process alive
after its work is done but before it exits: its stdout is a pipe pre-filled
to capacity, so the tool blocks writing its one JSON line (at exit, with its
buffers and mappings still in place). Meanwhile the test reads the process's
``/proc/PID/maps``, ``smaps`` and ``pagemap`` (the guest-physical frames of its
DMA buffer) and the PAT memtype list, and the host compares them with what
QEMU saw. :meth:`HeldTool.release` lets it finish and returns its JSON result.
"""

from __future__ import annotations

import itertools
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qgpu.data import fill_pattern, last_json_object
from qgpu.inspector import DeviceInspector
from qgpu.machine import Channel, GuestMachine

TOOL = "/opt/qgpu/bin/qgpu-tool"
SUITE = "/opt/qgpu/bin/qgpu-test"
PAGE = 4096
MiB = 1 << 20
QGPU_BDF = "0000:01:00.0"                 # qgpu0 behind its root port
PIPE_CAPACITY = 65536                   # Linux default: 16 pages
GLIBC_MMAP_CHUNK_HEADER = 16            # malloc() >= 128 KiB: mmap'ed chunk, data at +16
PFN_MASK = (1 << 55) - 1
VM_DEVICE_FLAGS = {"sh", "pf", "io", "de", "dd"}   # VM_SHARED|PFNMAP|IO|DONTEXPAND|DONTDUMP
PAGE_PRESENT = 1 << 63
#: What a TCG guest's kernel logs, at warning level, once per boot, when a timer
#: interrupt took long: the host was busy (another QEMU, a build), not the driver.
HOST_WAS_SLOW = "hrtimer: interrupt took"
CACHE_LINE = 64                         # x86 L1 line: the driver's qgpu_dma_line()
MMAP_VRAM_LAZY = 1 << 40                # mmap offsets of the uapi header (include/uapi/qgpu.h)
MMAP_REGS = 2 << 40

Record = dict[str, Any]

_tags = itertools.count()


def sh(guest: GuestMachine, command: str, *, timeout: float = 60.0,
       over: Channel = "ssh") -> str:
    """Run ``command`` in the guest (over SSH by default); fail the test unless it exits 0."""
    res = guest.run(command, timeout=timeout, over=over)
    assert res.status == 0, f"guest command failed (status {res.status}): {command}\n" \
        f"{res.output}"
    return res.output


def parse_json_line(output: str, what: str) -> dict[str, Any]:
    """Return the last line of ``output`` that is a JSON object."""
    obj = last_json_object(output)
    if obj is None:
        raise AssertionError(f"{what}: no JSON line in the output:\n{output}")
    return obj


def tool(guest: GuestMachine, args: str, *, ok: bool = True, timeout: float = 60.0,
         over: Channel = "ssh") -> dict[str, Any]:
    """Run ``qgpu-tool ARGS`` (over SSH by default); return its JSON result.

    With ``ok``, assert that it succeeded (``"ok": true`` and exit status 0).
    """
    res = guest.run(f"{TOOL} {args}", timeout=timeout, over=over)
    obj = parse_json_line(res.output, f"qgpu-tool {args}")
    if ok:
        assert obj.get("ok") is True and res.status == 0, \
            f"qgpu-tool {args} failed (status {res.status}): {res.output}"
    return obj


def wait_guest_file(guest: GuestMachine, path: str, seconds: float = 30.0) -> None:
    """Wait (``seconds`` on the stock kernel, scaled for slower ones; in the guest: one
    console round trip) for ``path`` to exist: the handshake files of background
    ``qgpu-tool`` runs (``--ready``, ``.done``)."""
    polls = int(seconds * guest.config.timeout_scale * 40)
    out = guest.run(f"i=0; while [ ! -e {path} ] && [ $i -lt {polls} ]; do usleep 25000; "
                    f"i=$((i+1)); done; test -e {path}", timeout=seconds + 30)
    assert out.status == 0, f"{path} never appeared"


def put_file(guest: GuestMachine, path: str, data: bytes) -> None:
    """Write ``data`` to the guest file ``path``; check it arrived intact."""
    res = guest.ssh_run(f"cat > {path} && wc -c < {path}", stdin=data, timeout=60)
    assert res.status == 0 and res.output.strip() == str(len(data)), \
        f"uploading {len(data)} bytes to {path} failed: {res.output}"


def pat_entries(guest: GuestMachine) -> list[tuple[int, int, str]]:
    """Return the PAT memtype list: (start, end, memory type) of each reservation."""
    out = sh(guest, "cat /sys/kernel/debug/x86/pat_memtype_list")
    return [(int(m[1], 16), int(m[2], 16), m[3].strip()) for m in
            re.finditer(r"\[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] (.+)", out)]


def guest_sha256(guest: GuestMachine, path: str) -> str:
    """Return the SHA-256 of a guest file."""
    return sh(guest, f"sha256sum {path}").split()[0]


def driver_stats(guest: GuestMachine) -> dict[str, int]:
    """Return the driver's statistics (sysfs, via ``qgpu-tool stats``)."""
    obj = tool(guest, "stats")
    return {k: int(v) for k, v in obj.items() if k != "ok"}


@dataclass(frozen=True)
class StatsMark:
    """The device's statistics (QMP) and the driver's (sysfs), read with the engine idle."""

    host: dict[str, int]
    driver: dict[str, int]


def idle_stats(guest: GuestMachine, insp: DeviceInspector, *, timeout: float = 30.0
               ) -> StatsMark:
    """Wait until every job is retired and the ring is empty, then read both statistics.

    Only between idle points do the driver's and the device's counts of
    descriptors have to agree (:func:`check_descriptors_accounted`).
    """
    path = f"/sys/kernel/debug/qgpu/{QGPU_BDF}/state"
    deadline = time.monotonic() + timeout * guest.config.timeout_scale
    while True:
        state = dict(line.split(": ", 1) for line in sh(guest, f"cat {path}").splitlines())
        if (int(state["retired_seq"]) + 1 == int(state["next_seq"])
                and state["ring_head"] == state["ring_tail"] == hex(int(state["sw_tail"]))):
            break
        assert time.monotonic() < deadline, f"the engine did not go idle: {state}"
        time.sleep(0.1)
    return StatsMark(insp.stats(), driver_stats(guest))


def check_descriptors_accounted(before: StatsMark, after: StatsMark) -> dict[str, int]:
    """Every descriptor the driver wrote ended on the device as retired, aborted or dropped.

    Between two :func:`idle_stats` points of one driver instance: the
    driver's ``descriptors`` (written to the ring, replays included) equals
    the device's ``descriptors + aborted + dropped``, and the driver counts
    no more bytes or failed jobs than the device saw. Returns the deltas.
    """
    def host(name: str) -> int:
        return after.host[name] - before.host[name]

    def drv(name: str) -> int:
        return after.driver[name] - before.driver[name]

    deltas = {"driver_descriptors": drv("descriptors"), "retired": host("descriptors"),
              "aborted": host("aborted"), "dropped": host("dropped")}
    assert deltas["driver_descriptors"] == \
        deltas["retired"] + deltas["aborted"] + deltas["dropped"], \
        f"the driver wrote descriptors the device did not end, or the reverse: {deltas}"
    assert drv("bytes_to_vram") <= host("bytes-to-vram"), (before, after)
    assert drv("bytes_from_vram") <= host("bytes-from-vram"), (before, after)
    assert drv("hw_errors") <= host("errors") + host("aborted") + host("dropped"), \
        (before, after)
    return deltas


def guest_irq_counts(guest: GuestMachine) -> dict[str, int]:
    """Return the guest's /proc/interrupts totals (all CPUs) of each qgpu0 vector."""
    counts: dict[str, int] = {}
    for line in sh(guest, "grep qgpu0 /proc/interrupts").splitlines():
        fields = line.split()
        ncpu = sum(1 for f in fields[1:] if f.isdigit())
        counts[fields[-1]] = sum(int(f) for f in fields[1:1 + ncpu])
    return counts


def check_fill_with_interrupt(guest: GuestMachine, insp: DeviceInspector, rng: random.Random,
                              which: str) -> None:
    """Fill 256 KiB of VRAM at a random offset by DMA (driver loaded): the host sees the
    bytes, the device counts the fill, its fence and an interrupt, and the guest the
    interrupt. ``which`` names the guest in the message (restored, reverted)."""
    offset, length, pattern = rng.randrange(0, 32 * MiB) & ~0xFFF, 256 << 10, \
        rng.getrandbits(32)
    fence = tool(guest, f"fill {offset:#x} {length} {pattern:#x}")["fence"]
    assert insp.vram_backend(offset, length) == fill_pattern(pattern, length)
    stats = insp.stats()
    assert stats["last-fence"] == fence and stats["bytes-fill"] == length
    assert stats["interrupts"] > 0
    assert sum(guest_irq_counts(guest).values()) > 0, \
        f"no qgpu interrupt reached the {which} guest"


def system_ram(guest: GuestMachine) -> list[tuple[int, int]]:
    """Return the guest's System RAM ranges ([start, end) pairs) from /proc/iomem."""
    ranges = []
    for line in sh(guest, "grep 'System RAM' /proc/iomem").splitlines():
        lo, hi = line.split(":")[0].strip().split("-")
        ranges.append((int(lo, 16), int(hi, 16) + 1))
    assert ranges, "the guest reports no System RAM"
    return ranges


def in_ranges(addr: int, length: int, ranges: list[tuple[int, int]]) -> bool:
    """Return whether [addr, addr + length) lies inside one of ``ranges``."""
    return any(lo <= addr and addr + length <= hi for lo, hi in ranges)


# -- the device's DMA trace -----------------------------------------------------------

def trace_mark(insp: DeviceInspector) -> int:
    """Return the ``seq`` of the newest trace record (-1 if none)."""
    trace = insp.dma_trace()
    return int(trace[-1]["seq"]) if trace else -1


def trace_since(insp: DeviceInspector, mark: int) -> list[Record]:
    """Return the trace records after ``mark``; fail if the trace dropped some."""
    new = [r for r in insp.dma_trace() if int(r["seq"]) > mark]
    if new:
        assert int(new[0]["seq"]) == mark + 1, \
            f"the DMA trace overflowed: records {mark + 1}..{new[0]['seq'] - 1} are lost " \
            "(too many segments for trace-depth)"
    return new


def check_contiguous(records: list[Record], op: str, vram_offset: int, length: int) -> None:
    """Assert ``records`` are ok ``op`` segments covering VRAM [offset, +length) in order."""
    assert records, f"the device traced no {op} segment"
    pos = vram_offset
    for r in records:
        assert r["op"] == op and r["status"] == "ok" and r["error"] == 0, \
            f"unexpected trace record {r} (want ok {op})"
        assert r["vram-offset"] == pos, \
            f"segment {r} does not continue at VRAM offset {pos:#x}"
        pos += int(r["length"])
    assert pos == vram_offset + length, \
        f"the traced segments cover {pos - vram_offset} bytes, not {length}"


# -- a tool held alive after its work --------------------------------------------------

@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    path: str


class HeldTool:
    """A ``qgpu-tool`` process that finished its work and waits to exit."""

    def __init__(self, guest: GuestMachine, tag: str, pid: int) -> None:
        self.guest, self.tag, self.pid = guest, tag, pid
        self.result: dict[str, Any] | None = None

    def maps(self) -> list[Mapping]:
        out = sh(self.guest, f"cat /proc/{self.pid}/maps")
        maps = []
        for line in out.splitlines():
            parts = line.split(None, 5)
            lo, hi = parts[0].split("-")
            maps.append(Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                                parts[5].strip() if len(parts) > 5 else ""))
        return maps

    def smaps_flags(self) -> dict[int, tuple[Mapping, set[str]]]:
        """Return VmFlags of each mapping of the device, by start address."""
        out = sh(self.guest, f"cat /proc/{self.pid}/smaps")
        found: dict[int, tuple[Mapping, set[str]]] = {}
        current: Mapping | None = None
        for line in out.splitlines():
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ \d+\s*(.*)$", line)
            if m:
                current = Mapping(int(m[1], 16), int(m[2], 16), m[3], int(m[4], 16),
                                  m[5].strip())
            elif line.startswith("VmFlags:") and current is not None \
                    and current.path.startswith("/dev/qgpu"):
                found[current.start] = (current, set(line.split()[1:]))
        return found

    def dma_buffer_va(self, length: int) -> int:
        """Return the address of the tool's malloc()ed DMA buffer of ``length`` bytes.

        glibc serves allocations of 128 KiB and more with their own mmap; the
        largest anonymous read-write mapping is that buffer, its data 16 bytes in.
        The callers verify the guess against guest-physical memory.
        """
        anon = [m for m in self.maps() if m.path == "" and m.perms.startswith("rw")]
        assert anon, "the tool has no anonymous mappings"
        big = max(anon, key=lambda m: m.end - m.start)
        assert big.end - big.start >= length + GLIBC_MMAP_CHUNK_HEADER, \
            f"no anonymous mapping can hold the {length}-byte buffer: {anon}"
        return big.start + GLIBC_MMAP_CHUNK_HEADER

    def pfns(self, va: int, length: int) -> list[int]:
        """Return the guest page frames backing [va, va + length) of the process."""
        first, last = va // PAGE, (va + length - 1) // PAGE
        out = sh(self.guest, f"dd if=/proc/{self.pid}/pagemap bs=8 skip={first} "
                             f"count={last - first + 1} 2>/dev/null | od -An -v -tx8")
        entries = [int(x, 16) for x in out.split()]
        assert len(entries) == last - first + 1, f"short pagemap read: {out!r}"
        assert all(e & PAGE_PRESENT for e in entries), "buffer pages not present"
        pfns = [e & PFN_MASK for e in entries]
        assert all(pfns), "pagemap hides PFNs (not root?)"
        return pfns

    def release(self) -> dict[str, Any]:
        """Let the tool finish; return its JSON result."""
        if self.result is None:
            out = sh(self.guest,
                     f"echo > {self.tag}.gate; i=0; while [ ! -e {self.tag}.done ] && "
                     f"[ $i -lt 1200 ]; do usleep 25000; i=$((i+1)); done; "
                     f"cat {self.tag}.out; rm -f {self.tag}.*")
            self.result = parse_json_line(out, f"held qgpu-tool (pid {self.pid})")
        return self.result


@contextmanager
def hold_tool(guest: GuestMachine, args: str) -> Iterator[HeldTool]:
    """Run ``qgpu-tool ARGS`` and hold it at exit (see the module docstring)."""
    tag = f"/tmp/qgpu-held{next(_tags)}"
    out = sh(guest,
             f"rm -f {tag}.*; mkfifo {tag}.gate; "
             f"sh -c 'echo $$ > {tag}.pid; head -c {PIPE_CAPACITY} /dev/zero; "
             f"exec {TOOL} {args}' </dev/null 2>&1 | {{ cat {tag}.gate >/dev/null; "
             f"tail -c +{PIPE_CAPACITY + 1} > {tag}.out; touch {tag}.done; }} "
             f">/dev/null 2>&1 & "
             # Wait until it blocks writing its result (or is gone).
             f"i=0; p=; while [ $i -lt 1200 ]; do p=$(cat {tag}.pid 2>/dev/null); "
             f"if [ -n \"$p\" ]; then [ -e /proc/$p ] || break; "
             f"[ \"$(cat /proc/$p/wchan 2>/dev/null)\" = pipe_write ] && break; fi; "
             f"usleep 25000; i=$((i+1)); done; echo \"$p $(cat /proc/$p/wchan 2>/dev/null)\"",
             timeout=90)
    fields = out.split()
    held = HeldTool(guest, tag, int(fields[0]) if fields else -1)
    try:
        if fields[1:] != ["pipe_write"]:
            result = held.release()
            raise AssertionError(f"qgpu-tool {args} did not stay to be inspected "
                                 f"(state {fields}); its result: {result}")
        yield held
    finally:
        if held.result is None:
            held.release()


# -- where a user buffer lives, and what the device's bus addresses say about it --------

@dataclass(frozen=True)
class UserBuffer:
    """A user buffer of a held process: its address and the guest frames behind it."""

    va: int
    length: int
    pfns: tuple[int, ...]

    def phys(self, offset: int) -> int:
        """Return the guest-physical address of byte ``offset`` of the buffer."""
        uva = self.va + offset
        return (self.pfns[uva // PAGE - self.va // PAGE] << 12) | (uva % PAGE)

    def frames(self) -> set[int]:
        """Return the page frames of the buffer."""
        return set(self.pfns)

    def runs(self, offset: int = 0, length: int | None = None) -> list[tuple[int, int]]:
        """Return [offset, +length) as physically contiguous (address, length) runs."""
        end = self.length if length is None else offset + length
        runs: list[tuple[int, int]] = []
        pos = offset
        while pos < end:
            n = min(end - pos, PAGE - (self.va + pos) % PAGE)
            addr = self.phys(pos)
            if runs and runs[-1][0] + runs[-1][1] == addr:
                runs[-1] = (runs[-1][0], runs[-1][1] + n)
            else:
                runs.append((addr, n))
            pos += n
        return runs


def user_buffer(held: HeldTool, length: int) -> UserBuffer:
    """Return the held tool's DMA buffer of ``length`` bytes with its page frames."""
    va = held.dma_buffer_va(length)
    return UserBuffer(va, length, tuple(held.pfns(va, length)))


def read_user(insp: DeviceInspector, buf: UserBuffer, offset: int, length: int) -> bytes:
    """Read [offset, +length) of a user buffer from guest-physical memory on the host."""
    return b"".join(insp.physical(addr, n) for addr, n in buf.runs(offset, length))


def first_diff(got: bytes, want: bytes) -> str:
    """Describe where two byte strings first differ (for assertion messages)."""
    if len(got) != len(want):
        return f"length {len(got)} != {len(want)}"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if a != b:
            return f"first difference at byte {i}: {a:#04x} != {b:#04x}"
    return "equal"


@dataclass(frozen=True)
class DmaPlatform:
    """What the guest's platform says about DMA addresses (read once per test)."""

    ram: tuple[tuple[int, int], ...]    #: System RAM ranges
    swiotlb_bytes: int                  #: bounce pool size (0 if no pool)


def dma_platform(guest: GuestMachine) -> DmaPlatform:
    """Collect the guest facts :func:`check_dma_path` needs."""
    slabs = sh(guest, "cat /sys/kernel/debug/swiotlb/io_tlb_nslabs 2>/dev/null || echo 0")
    return DmaPlatform(tuple(system_ram(guest)), int(slabs.split()[0]) * 2048)


def split_line_bounces(records: list[Record], buf: UserBuffer, vram_offset: int
                       ) -> tuple[list[Record], list[Record]]:
    """Split a copy's trace into the segments bounced through the driver, and the rest.

    From VRAM, the driver copies a partial cache line at either end of the user
    buffer through a bounce buffer of its own (the device must never write a line
    the CPU or another copy shares): a segment inside one line, shorter than it.
    Every other segment covers whole lines of the user buffer.
    """
    bounced: list[Record] = []
    mapped: list[Record] = []
    for r in records:
        first = buf.va + int(r["vram-offset"]) - vram_offset
        last = first + int(r["length"]) - 1
        partial = first // CACHE_LINE == last // CACHE_LINE and int(r["length"]) < CACHE_LINE
        (bounced if r["op"] == "copy-from-vram" and partial else mapped).append(r)
    return bounced, mapped


def check_dma_path(mode: str, insp: DeviceInspector, records: list[Record],
                   vram_offset: int, buf: UserBuffer, data: bytes,
                   platform: DmaPlatform) -> None:
    """Assert the traced segments of a user copy took ``mode``'s path, from the host's view.

    Always: the user's own pages hold ``data`` (read by QEMU at their guest-physical
    addresses). Segments bounced for a partial cache line (:func:`split_line_bounces`)
    are in none of the user's pages, in any mode. Then, per other segment:

    - direct: the bus address is the guest-physical address of the user bytes, the
      segment's pages are physically contiguous, and QEMU finds the data there;
    - swiotlb: the bus address lies in System RAM but in none of the user's pages, all
      segments fit in one bounce pool, and the bounce slot holds a copy of the data;
    - iommu, virtio-iommu: the bus address is no guest-physical address of the user
      bytes and lies outside System RAM altogether (an IOVA the IOMMU translates).
    """
    ram = list(platform.ram)
    frames = buf.frames()
    got = read_user(insp, buf, 0, buf.length)
    assert got == data, f"the user buffer in guest RAM does not hold the data " \
        f"({first_diff(got, data)}): wrong buffer address or failed DMA"
    bounced, records = split_line_bounces(records, buf, vram_offset)
    for r in bounced:
        bus, n = int(r["bus-addr"]), int(r["length"])
        assert not {p for p in range(bus >> 12, ((bus + n - 1) >> 12) + 1)} & frames, \
            f"partial cache line {r} was written into the user's own pages, not bounced"
    for r in records:
        off, n, bus = int(r["vram-offset"]) - vram_offset, int(r["length"]), int(r["bus-addr"])
        want = data[off:off + n]
        where = f"segment seq {r['seq']} (buffer bytes {off}..{off + n}, bus {bus:#x})"
        if mode == "direct":
            assert bus == buf.phys(off), \
                f"direct mode: {where} is not at the user's physical address " \
                f"{buf.phys(off):#x}"
            assert buf.runs(off, n) == [(bus, n)], \
                f"direct mode: {where} spans physically discontiguous pages"
            assert insp.physical(bus, n) == want, f"direct mode: QEMU reads other data at {where}"
        elif mode == "swiotlb":
            assert in_ranges(bus, n, ram), f"swiotlb: {where} is outside System RAM"
            touched = {p for p in range(bus >> 12, ((bus + n - 1) >> 12) + 1)}
            assert not touched & frames, f"swiotlb: {where} overlaps the user's own pages " \
                "(not bounced)"
            bounce = insp.physical(bus, n)
            assert bounce == want, f"swiotlb: the bounce slot of {where} does not hold a " \
                f"copy of the data ({first_diff(bounce, want)})"
        elif mode in ("iommu", "virtio-iommu"):
            assert bus != buf.phys(off), f"{mode}: {where} is the untranslated address"
            assert not any(lo <= bus < hi for lo, hi in ram), \
                f"{mode}: {where} lies in System RAM {ram}: not an IOVA"
        else:
            raise AssertionError(f"unknown DMA mode {mode}")
    if mode == "swiotlb" and records:
        lo = min(int(r["bus-addr"]) for r in records)
        hi = max(int(r["bus-addr"]) + int(r["length"]) for r in records)
        assert 0 < hi - lo <= platform.swiotlb_bytes, \
            f"swiotlb: segments span {lo:#x}..{hi:#x}, more than the " \
            f"{platform.swiotlb_bytes}-byte bounce pool"
