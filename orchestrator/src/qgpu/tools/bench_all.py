"""``make bench``: every benchmark, then results.json, report.html and a short summary.

Sections, in order (``--only`` picks some):
- ``engine``: the DMA engine alone over qtest, full rings, beside host memcpy
  (:mod:`qgpu.tools.bench`);
- ``driver``: DMA through the driver in a guest, per DMA mode, beside the
  guest's memcpy (:mod:`qgpu.tools.bench_driver`);
- ``guest``: boot time per kernel, and writes through the VRAM mappings
  (:mod:`qgpu.tools.bench_guest`);
- ``restore``: restore from a template beside a cold boot
  (:mod:`qgpu.tools.bench_restore`).
Each section's figures are written to results.json as soon as it ends; a
section that fails is recorded with its error and the others still run (the
exit status is then 1). ``make bench-compare OLD=... NEW=...`` compares two
results files.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qgpu.config import DmaMode
from qgpu.errors import QgpuError
from qgpu.paths import build_dir, qemu_binary
from qgpu.tools import bench, bench_driver, bench_guest, bench_report, bench_restore

KiB, MiB = 1 << 10, 1 << 20


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _sections(args: argparse.Namespace,
              progress: Callable[[str], None]) -> dict[str, Callable[[], dict[str, Any]]]:
    quick = args.quick
    return {
        "engine": lambda: bench.measure_engine(
            [64 * KiB, MiB] if quick else bench.DEFAULT_SIZES, 2 if quick else args.repeat,
            0 if quick else 4 * MiB, progress=progress),
        "driver": lambda: bench_driver.measure_driver(
            args.kernel, [DmaMode(m) for m in args.modes.split(",")], accel=args.accel,
            max_size=MiB if quick else 64 * MiB, budget=2 * MiB if quick else 32 * MiB,
            progress=progress),
        "guest": lambda: bench_guest.measure_guest(
            1 if quick else args.boots, args.kernels, accel=args.accel,
            mib=1 if quick else 16, progress=progress),
        "restore": lambda: bench_restore.measure_restore(
            2 if quick else args.runs, args.kernel, accel=args.accel, progress=progress),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections, write the results and the report, print the summary."""
    parser = argparse.ArgumentParser(prog="qgpu-bench-all", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results.json and report.html (default build/bench)")
    parser.add_argument("--only", default=",".join(bench_report.SECTIONS),
                        help=f"sections, comma-separated (default: all of "
                             f"{','.join(bench_report.SECTIONS)})")
    parser.add_argument("--kernel", default="stock",
                        help="guest kernel of the driver and restore sections (default stock)")
    parser.add_argument("--kernels", default="stock,qgpu",
                        help="kernels whose boot is timed, the first the baseline "
                             "(default stock,qgpu)")
    parser.add_argument("--modes", default=",".join(DmaMode),
                        help="DMA modes of the driver section (default: all)")
    parser.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    parser.add_argument("--repeat", type=_positive, default=5, help="engine repeats (default 5)")
    parser.add_argument("--boots", type=_positive, default=3, help="boots per kernel (default 3)")
    parser.add_argument("--runs", type=_positive, default=20,
                        help="boots and restores of the restore section (default 20)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: few sizes, 1 MiB at most, one boot (seconds, "
                             "not figures to read)")
    args = parser.parse_args(argv)
    wanted = [s for s in args.only.split(",") if s]
    unknown = sorted(set(wanted) - set(bench_report.SECTIONS))
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; known: "
                     f"{', '.join(bench_report.SECTIONS)}")
    try:
        [DmaMode(m) for m in args.modes.split(",")]
    except ValueError as exc:
        parser.error(f"--modes: {exc}; known: {', '.join(DmaMode)}")
    out = args.out or build_dir() / "bench"
    begin = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - begin:6.0f} s] {message}", file=sys.stderr, flush=True)

    results = bench_report.Results(out / "results.json",
                                   bench_report.machine_description(str(qemu_binary())))
    runs = _sections(args, progress)
    for name in wanted:
        progress(f"{name}: {bench_report.SECTIONS[name]}")
        start = time.monotonic()
        try:
            data = runs[name]()
            bench_report.figures({name: data})      # a result it cannot read is a failure
        except Exception as exc:    # recorded; the other sections still run
            message = str(exc) if isinstance(exc, QgpuError) else f"{type(exc).__name__}: {exc}"
            results.fail(name, message, time.monotonic() - start)
            progress(f"{name}: FAILED: {message}")
            continue
        results.add(name, data, time.monotonic() - start)
        if name == "driver" and data["errors"]:
            for mode, message in data["errors"].items():
                results.data["errors"][f"driver/{mode}"] = message
            results.save()
    bench_report.write_report(results.data, out / "report.html")
    print(f"\nqgpu benchmarks ({time.monotonic() - begin:.0f} s):")
    for line in bench_report.summary(results.data):
        print(f"  {line}")
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}")
    return 1 if results.data["errors"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QgpuError as exc:
        print(f"qgpu-bench-all: error: {exc}", file=sys.stderr)
        sys.exit(1)
