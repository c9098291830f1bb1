"""DMA engine throughput benchmark: qgpu vs host memcpy vs QEMU's edu device.

Run with ``make bench`` (all benchmarks, a report) or ``python -m
qgpu.tools.bench --help`` (this one, a table). Every figure is measured in
this run and printed beside the host-memcpy baseline measured in the same
run, as a ratio: these machines are noisy, ratios travel better than
absolute numbers. Figures are medians of ``--repeat`` runs, with their
spread (min..max) in the results. This is a benchmark, not a test: it
asserts nothing.

What is timed, for qgpu: a full batch (as many descriptors of one size as
move >= 16 MiB, up to 63: a ring's worth) behind one DOORBELL, two ways:
- *wall*: from the DOORBELL write to the engine reporting idle, observed over
  qtest, so each batch includes a few qtest round trips of latency (it
  dominates the small sizes);
- *engine*: the growth of the device's ``stat-engine-busy-ns`` over the
  batch, the host time the engine's runs took: the engine without the
  harness.
For edu: its DMA moves at most 4 KiB per command into a device-internal
buffer and completes on a 100 ms virtual-clock timer, which qtest steps
instantly; what remains is edu's real per-command cost plus the same qtest
round trips.

Also measured: how the engine's time grows with the number of SG segments
of a 1 MiB copy (the cost of segment handling), and how long one engine run
holds QEMU's main loop (issue 11, S2): the longest latency of three register
reads sent right after a DOORBELL, beside the same with the engine idle. The
doorbell queues 64 descriptors of 4 KiB each, as 4,096 one-byte SG segments
or as one plain range: the engine runs them in one bottom half (they stay
under its 1 MiB and 64-descriptor budgets), so the read waits for all of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

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


def spread(values: Sequence[float]) -> dict[str, float]:
    """Return the median, min and max of ``values`` (seconds, or any unit)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def host_memcpy(size: int, count: int) -> float:
    """Time ``count`` copies of ``size`` bytes with the host's memcpy.

    Python's loop and slice assignment cost about 0.1 µs a copy, a large part
    of a 4 KiB memcpy: the same loop copying nothing is timed and subtracted,
    so that the baseline is not flattered at small sizes.
    """
    src = bytearray(b"\x5a" * size)
    dst = bytearray(size)
    view, nothing = memoryview(dst), memoryview(bytearray())
    start = time.perf_counter()
    for _ in range(count):
        view[:] = src
    copying = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(count):
        view[:0] = nothing
    overhead = time.perf_counter() - start
    return max(copying - overhead, copying / 20)


def qgpu_batch(dev: QgpuDevice, op: int, size: int, count: int,
               guest: int) -> tuple[float, float]:
    """Time ``count`` descriptors of ``size`` bytes submitted with one doorbell.

    Returns (wall seconds, engine seconds): doorbell to idle seen over qtest,
    and the growth of ``stat-engine-busy-ns``.
    """
    if op == ABI.OP_COPY_TO_VRAM:
        desc = dev.desc(opcode=op, src=guest, dst=0, length=size)
    elif op == ABI.OP_COPY_FROM_VRAM:
        desc = dev.desc(opcode=op, src=0, dst=guest, length=size)
    else:
        desc = dev.desc(opcode=op, src=0, dst=dev.vram_size // 2, length=size)
    dev.submit(*([desc] * count), doorbell=False)
    assert dev.ring is not None
    busy = dev.stat("engine-busy-ns")
    start = time.perf_counter()
    dev.set_reg(ABI.REG_DOORBELL, dev.ring.tail)
    dev.wait_idle(600)
    wall = time.perf_counter() - start
    return wall, (dev.stat("engine-busy-ns") - busy) / 1e9


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


def measure_main_loop_hold(dev: QgpuDevice, repeat: int) -> dict[str, Any]:
    """Measure the S2 figures: main-loop hold of one engine run, beside an idle read."""
    guest = dev.mem.alloc(HOLD_LENGTH, align=4096)
    dev.mem.write(guest, bytes(range(256)) * (HOLD_LENGTH // 256))
    dev.set_reg(ABI.REG_ENGINE_CTRL, 0)     # the ring is programmed while disabled
    dev.setup_ring(2 * HOLD_DESCS)
    idle = [max(_read_latency(dev) for _ in range(3)) for _ in range(repeat)]
    rows = []
    for segments in (1, HOLD_SEGMENTS):
        lat = main_loop_hold(dev, segments, guest, repeat)
        rows.append({"segments": segments, "read_s": spread(lat), "read_p90_s": p90(lat)})
    return {"descs": HOLD_DESCS, "length": HOLD_LENGTH, "repeat": repeat,
            "idle_read_s": spread(idle), "rows": rows}


def print_main_loop_hold(hold: dict[str, Any]) -> None:
    """Print the S2 table."""
    idle = hold["idle_read_s"]["median"]
    print(f"\nmain-loop hold of one engine run: a register read right after a doorbell of "
          f"{hold['descs']} x 4 KiB descriptors, median of {hold['repeat']} (idle read: "
          f"{idle * 1e3:.3f} ms in this run)")
    print(f"{'descriptors':>28} | {'read latency':>12} | {'p90':>9} | {'x idle':>7}")
    for row in hold["rows"]:
        med = row["read_s"]["median"]
        what = ("one range each" if row["segments"] == 1
                else f"{row['segments']} one-byte SG segments")
        print(f"{what:>28} | {med * 1e3:9.2f} ms | {row['read_p90_s'] * 1e3:6.2f} ms | "
              f"{med / idle:7.1f}")


SG_LENGTH = MiB
SG_SEGMENTS = (1, 16, 256, 4096)


def measure_sg_growth(dev: QgpuDevice, guest: int, repeat: int) -> list[dict[str, Any]]:
    """Time one 1 MiB copy to VRAM as 1 ... 4,096 SG segments: the engine's time.

    Segments are contiguous in guest memory, so only their number changes.
    """
    rows = []
    for segments in SG_SEGMENTS:
        seg = SG_LENGTH // segments
        src, count = dev.sg_list((guest + i * seg, seg) for i in range(segments))
        desc = dev.desc(opcode=ABI.OP_COPY_TO_VRAM, flags=ABI.DESC_F_SG, src=src,
                        sg_count=count, dst=0, length=SG_LENGTH)
        if dev.run(desc, timeout=600) != [0]:       # warm-up: the first run pays for caches
            raise RuntimeError(f"SG copy of {segments} segments failed")
        engine = []
        for _ in range(repeat):
            busy = dev.stat("engine-busy-ns")
            if dev.run(desc, timeout=600) != [0]:
                raise RuntimeError(f"SG copy of {segments} segments failed")
            engine.append((dev.stat("engine-busy-ns") - busy) / 1e9)
        rows.append({"segments": segments, "length": SG_LENGTH, "engine_s": spread(engine)})
    return rows


OPS = {"to_vram": ABI.OP_COPY_TO_VRAM, "from_vram": ABI.OP_COPY_FROM_VRAM,
       "vram_copy": ABI.OP_COPY_VRAM}


def measure_engine(sizes: Sequence[int] = DEFAULT_SIZES, repeat: int = 5,
                   edu_max: int = 16 * MiB,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the engine benchmark on a qtest machine; return every figure (see the module doc).

    Rates are bytes per second of the median timing; ``*_s`` entries hold
    the median, min and max seconds of ``repeat`` runs.
    """
    largest = max(sizes)
    vram = max(2 * largest, 64 * MiB)
    dev = start_qgpu(vram_size=vram, memory=max(512 * MiB, 2 * largest + 64 * MiB),
                     extra_args=["-device", f"edu,bus=pcie.0,addr={EDU_SLOT}"])
    try:
        dev.setup_ring(64)
        buffer = max(largest, SG_LENGTH)        # the SG copies read 1 MiB of it
        guest = dev.mem.alloc(buffer, align=4096)
        dev.mem.write(guest, b"\xa5" * buffer)
        from qgpu.pci import PciFunction
        edu = PciFunction(dev.qt, 0, EDU_SLOT)
        bar = edu.bar(0)
        assert bar is not None
        edu.set_bar(bar, EDU_BAR0)
        edu.enable(memory=True, master=True)
        rows = []
        for size in sizes:
            # Enough descriptors per batch that a batch moves >= 16 MiB (max ring-1).
            count = max(1, min(63, (16 * MiB) // size))
            total = size * count
            host = [host_memcpy(size, count) for _ in range(repeat)]
            row: dict[str, Any] = {"size": size, "descs": count, "bytes": total,
                                   "host_memcpy_s": spread(host)}
            for name, op in OPS.items():
                runs = [qgpu_batch(dev, op, size, count, guest) for _ in range(repeat)]
                row[name] = {"wall_s": spread([w for w, _ in runs]),
                             "engine_s": spread([e for _, e in runs])}
            if size <= edu_max:
                row["edu_s"] = spread([edu_copy(dev, size, guest) for _ in range(repeat)])
                row["host_memcpy_one_s"] = spread([host_memcpy(size, 1) for _ in range(repeat)])
            rows.append(row)
            if progress:
                progress(f"engine: {size // KiB} KiB done")
        sg = measure_sg_growth(dev, guest, repeat)
        hold = measure_main_loop_hold(dev, max(repeat, 9))
        errors = dev.stat("errors")
    finally:
        dev.qt.stop()
    if errors:
        raise RuntimeError(f"the device reported {errors} DMA errors during the engine "
                           "benchmark: its figures would be meaningless")
    return {"repeat": repeat, "rows": rows, "sg_growth": sg, "main_loop_hold": hold}


def print_engine(result: dict[str, Any]) -> None:
    """Print the engine tables."""
    print(f"qgpu DMA throughput, median of {result['repeat']}; ratio = rate / host memcpy "
          "of the same size, measured in this run; wall = doorbell to idle seen over qtest, "
          "engine = stat-engine-busy-ns")
    header = (f"{'size':>8} | {'host memcpy':>12} | {'to VRAM':>12} {'ratio':>6} "
              f"{'engine':>6} | {'from VRAM':>12} {'ratio':>6} {'engine':>6} | "
              f"{'VRAM->VRAM':>12} {'ratio':>6} {'engine':>6} | {'edu (4K cmds)':>13} "
              f"{'ratio':>6}")
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        size, total = row["size"], row["bytes"]
        host = _rate(total, row["host_memcpy_s"]["median"])
        cells = [f"{size // KiB:>6}K" if size < MiB else f"{size // MiB:>6}M",
                 f"{_fmt_rate(host):>12}"]
        for name in OPS:
            wall = _rate(total, row[name]["wall_s"]["median"])
            engine = _rate(total, row[name]["engine_s"]["median"])
            cells.append(f"{_fmt_rate(wall):>12} {wall / host:6.3f} {engine / host:6.3f}")
        if "edu_s" in row:
            rate = _rate(size, row["edu_s"]["median"])
            host_one = _rate(size, row["host_memcpy_one_s"]["median"])
            cells.append(f"{_fmt_rate(rate):>13} {rate / host_one:6.3f}")
        else:
            cells.append(f"{'(skipped)':>13} {'':>6}")
        print(" | ".join(cells), flush=True)
    base = result["sg_growth"][0]["engine_s"]["median"]
    print("\nengine time of one 1 MiB copy against its SG segments (median; x 1 segment):")
    for row in result["sg_growth"]:
        t = row["engine_s"]["median"]
        print(f"  {row['segments']:>5} segments  {t * 1e3:8.3f} ms  {t / base:7.1f}x  "
              f"{t / row['segments'] * 1e9:8.0f} ns per segment")
    print_main_loop_hold(result["main_loop_hold"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(prog="qgpu-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) * KiB for x in s.split(",")],
                        default=DEFAULT_SIZES, help="transfer sizes in KiB, comma separated")
    parser.add_argument("--repeat", type=int, default=5, help="timings per figure (median kept)")
    parser.add_argument("--edu-max", type=int, default=16 * MiB,
                        help="largest size also run on edu (bytes; 0 to skip edu)")
    args = parser.parse_args(argv)
    try:
        result = measure_engine(args.sizes, args.repeat, args.edu_max)
    except RuntimeError as exc:
        print(f"qgpu-bench: {exc}", file=sys.stderr)
        return 1
    print_engine(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
