"""DMA engine throughput benchmark: qgpu vs host memcpy vs QEMU's edu device.

Run with ``make bench`` (or ``python -m qgpu.tools.bench --help``). Every figure is
measured in this run and printed beside the host-memcpy baseline measured in
the same run, as a ratio: these machines are noisy, ratios travel better than
absolute numbers. This is a benchmark, not a test: it asserts nothing.

What is timed: for qgpu, from the DOORBELL write to the engine reporting idle,
observed over qtest (so each batch includes a few qtest round trips of
latency, which dominates the small sizes). For edu: its DMA moves at most
4 KiB per command into a device-internal buffer and completes on a 100 ms
virtual-clock timer, which qtest steps instantly; what remains is edu's real
per-command cost plus the same qtest round trips.

A second table shows how long one engine run holds QEMU's main loop (issue
11, S2): the longest latency of three register reads sent right after a
DOORBELL, beside the same with the engine idle, measured in this run. The
doorbell queues 64 descriptors of 4 KiB each, as 4,096 one-byte SG segments
or as one plain range: the engine runs them in one bottom half (they stay
under its 1 MiB and 64-descriptor budgets), so the read waits for all of it.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from qgpu.abi import ABI
from qgpu.device import QgpuDevice, start_qgpu

KiB, MiB = 1 << 10, 1 << 20
DEFAULT_SIZES = [4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB]
EDU_BAR0 = 0xD000_0000
EDU_SLOT = 3


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds if seconds > 0 else float("inf")


def _fmt_rate(rate: float) -> str:
    return f"{rate / 1e9:7.2f} GB/s" if rate >= 1e9 else f"{rate / 1e6:7.1f} MB/s"


def _best(fn: Callable[[], float], repeat: int) -> float:
    """Return the best (shortest) of ``repeat`` timings."""
    return min(fn() for _ in range(repeat))


def host_memcpy(size: int, count: int) -> float:
    """Time ``count`` copies of ``size`` bytes with the host's memcpy."""
    src = bytearray(b"\x5a" * size)
    dst = bytearray(size)
    view = memoryview(dst)
    start = time.perf_counter()
    for _ in range(count):
        view[:] = src
    return time.perf_counter() - start


def qgpu_batch(dev: QgpuDevice, op: int, size: int, count: int, guest: int) -> float:
    """Time ``count`` descriptors of ``size`` bytes submitted with one doorbell."""
    if op == ABI.OP_COPY_TO_VRAM:
        desc = dev.desc(opcode=op, src=guest, dst=0, length=size)
    elif op == ABI.OP_COPY_FROM_VRAM:
        desc = dev.desc(opcode=op, src=0, dst=guest, length=size)
    else:
        desc = dev.desc(opcode=op, src=0, dst=dev.vram_size // 2, length=size)
    dev.submit(*([desc] * count), doorbell=False)
    assert dev.ring is not None
    start = time.perf_counter()
    dev.set_reg(ABI.REG_DOORBELL, dev.ring.tail)
    dev.wait_idle(600)
    return time.perf_counter() - start


def edu_copy(dev: QgpuDevice, size: int, guest: int) -> float:
    """Time moving ``size`` bytes from guest RAM into edu, 4 KiB per command."""
    qt = dev.qt
    start = time.perf_counter()
    for off in range(0, size, 4096):
        qt.writeq(EDU_BAR0 + 0x80, guest + off % (64 * KiB))   # src: guest RAM
        qt.writeq(EDU_BAR0 + 0x88, 0x40000)                    # dst: edu's buffer
        qt.writeq(EDU_BAR0 + 0x90, min(4096, size - off))
        qt.writeq(EDU_BAR0 + 0x98, 1)                          # run, from PCI
        qt.clock_step(100_000_000)                             # edu's 100 ms timer
        if qt.readq(EDU_BAR0 + 0x98) & 1:
            raise RuntimeError("edu DMA did not complete")
    return time.perf_counter() - start


HOLD_DESCS = 64
HOLD_LENGTH = 4 * KiB                   # per descriptor
HOLD_SEGMENTS = 4096                    # one-byte segments


def p90(values: Sequence[float]) -> float:
    """Return the 90th percentile of ``values``: the sample nearest 90 % of the sorted run.

    Rounded, not truncated: of 3 samples that is the largest (truncated, it
    was the middle one, the median again).
    """
    ordered = sorted(values)
    return ordered[round(0.9 * (len(ordered) - 1))]


def _read_latency(dev: QgpuDevice) -> float:
    start = time.perf_counter()
    dev.reg(ABI.REG_ID)
    return time.perf_counter() - start


def main_loop_hold(dev: QgpuDevice, segments: int, guest: int, repeat: int) -> list[float]:
    """Time the longest of three register reads right after a doorbell.

    The doorbell queues HOLD_DESCS 4 KiB descriptors of ``segments`` SG
    segments each (1: a plain range). QEMU may answer the first read before
    its main loop runs the engine's bottom half; a later read waits for it.
    """
    length = HOLD_LENGTH
    if segments > 1:
        src, count = dev.sg_list((guest + i, length // segments) for i in range(segments))
        flags = ABI.DESC_F_SG
    else:
        src, count, flags = guest, 0, 0
    descs = [dev.desc(opcode=ABI.OP_COPY_TO_VRAM, flags=flags, src=src, sg_count=count,
                      dst=i * length, length=length) for i in range(HOLD_DESCS)]
    samples = []
    for _ in range(repeat):
        dev.submit(*descs, doorbell=False)
        assert dev.ring is not None
        dev.set_reg(ABI.REG_DOORBELL, dev.ring.tail)
        samples.append(max(_read_latency(dev) for _ in range(3)))
        dev.wait_idle(60)
        last = dev.status((dev.ring.tail - 1) % dev.ring.entries)
        if last != ABI.DESC_STATUS_DONE:
            raise RuntimeError(f"main-loop hold: the last descriptor ended with status "
                               f"{last:#x}, not DONE: the figure would be meaningless")
    return samples


def print_main_loop_hold(dev: QgpuDevice, repeat: int) -> None:
    """Print the S2 table: main-loop hold of one engine run, beside an idle read."""
    guest = dev.mem.alloc(HOLD_LENGTH, align=4096)
    dev.mem.write(guest, bytes(range(256)) * (HOLD_LENGTH // 256))
    dev.set_reg(ABI.REG_ENGINE_CTRL, 0)     # the ring is programmed while disabled
    dev.setup_ring(2 * HOLD_DESCS)
    idle = [max(_read_latency(dev) for _ in range(3)) for _ in range(repeat)]
    print(f"\nmain-loop hold of one engine run: a register read right after a doorbell of "
          f"{HOLD_DESCS} x 4 KiB descriptors, median of {repeat} (idle read: "
          f"{statistics.median(idle) * 1e3:.3f} ms in this run)")
    print(f"{'descriptors':>28} | {'read latency':>12} | {'p90':>9} | {'x idle':>7}")
    for segments in (1, HOLD_SEGMENTS):
        lat = main_loop_hold(dev, segments, guest, repeat)
        med = statistics.median(lat)
        what = "one range each" if segments == 1 else f"{segments} one-byte SG segments"
        print(f"{what:>28} | {med * 1e3:9.2f} ms | {p90(lat) * 1e3:6.2f} ms | "
              f"{med / statistics.median(idle):7.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="qgpu-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) * KiB for x in s.split(",")],
                        default=DEFAULT_SIZES, help="transfer sizes in KiB, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="timings per figure (best kept)")
    parser.add_argument("--edu-max", type=int, default=16 * MiB,
                        help="largest size also run on edu (bytes; 0 to skip edu)")
    args = parser.parse_args(argv)

    largest = max(args.sizes)
    vram = max(2 * largest, 64 * MiB)
    dev = start_qgpu(vram_size=vram, memory=max(512 * MiB, 2 * largest + 64 * MiB),
                     extra_args=["-device", f"edu,bus=pcie.0,addr={EDU_SLOT}"])
    try:
        dev.setup_ring(64)
        guest = dev.mem.alloc(largest, align=4096)
        dev.mem.write(guest, b"\xa5" * largest)
        from qgpu.pci import PciFunction
        edu = PciFunction(dev.qt, 0, EDU_SLOT)
        bar = edu.bar(0)
        assert bar is not None
        edu.set_bar(bar, EDU_BAR0)
        edu.enable(memory=True, master=True)

        print(f"qgpu DMA throughput, best of {args.repeat}; ratio = engine / host memcpy "
              "of the same size, measured in this run", flush=True)
        header = (f"{'size':>8} | {'host memcpy':>12} | {'to VRAM':>12} {'ratio':>6} | "
                  f"{'from VRAM':>12} {'ratio':>6} | {'VRAM->VRAM':>12} {'ratio':>6} | "
                  f"{'edu (4K cmds)':>13} {'ratio':>6}")
        print(header)
        print("-" * len(header))
        for size in args.sizes:
            # Enough descriptors per batch that a batch moves >= 16 MiB (max ring-1).
            count = max(1, min(63, (16 * MiB) // size))
            total = size * count
            host = _rate(total, _best(functools.partial(host_memcpy, size, count), args.repeat))
            cells = [f"{size // KiB:>6}K" if size < MiB else f"{size // MiB:>6}M",
                     f"{_fmt_rate(host):>12}"]
            for op in (ABI.OP_COPY_TO_VRAM, ABI.OP_COPY_FROM_VRAM, ABI.OP_COPY_VRAM):
                batch = functools.partial(qgpu_batch, dev, op, size, count, guest)
                rate = _rate(total, _best(batch, args.repeat))
                cells.append(f"{_fmt_rate(rate):>12} {rate / host:6.3f}")
            if size <= args.edu_max:
                rate = _rate(size, _best(functools.partial(edu_copy, dev, size, guest),
                                         args.repeat))
                host_one = _rate(size, _best(functools.partial(host_memcpy, size, 1),
                                             args.repeat))
                cells.append(f"{_fmt_rate(rate):>13} {rate / host_one:6.3f}")
            else:
                cells.append(f"{'(skipped)':>13} {'':>6}")
            print(" | ".join(cells), flush=True)
        print_main_loop_hold(dev, max(args.repeat, 9))
        errors = dev.stat("errors")
        if errors:
            print(f"warning: the device reported {errors} DMA errors during the run",
                  file=sys.stderr)
            return 1
    finally:
        dev.qt.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
