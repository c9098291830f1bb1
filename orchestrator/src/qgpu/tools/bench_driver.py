"""DMA through the driver, in the guest, in every DMA mode: ``qgpu-bench dma`` per mode.

Run with ``make bench`` (all benchmarks, a report) or ``python -m
qgpu.tools.bench_driver`` (this one, a table). For each DMA mode a guest is
booted with the driver loaded and runs ``qgpu-bench dma``
(guest-driver/tools/qgpu-bench.c), which times, per transfer size from
4 KiB up: COPY_USER to VRAM (the single-page path at 4 KiB, the SG path
above unless the buffer maps to one segment: each cell records the segments
of its last call; forced SG at every size), COPY_USER from VRAM, COPY_BO both ways,
VRAM-to-VRAM and fill, each beside ``memcpy()`` of the same size by the same
guest process in the same run. Also: submission-to-fence latency of small
jobs, throughput against 1, 2 and 4 concurrent submitters, and the first
touch of the lazily faulted VRAM mapping against the pages touched.

Under TCG, the guest's CPU work (pinning, mapping, bouncing, memcpy) is
emulated while the device's engine copies at host speed: a ratio to the
guest's memcpy says how the driver's path compares with what the same guest
CPU does, not what real hardware would. Prints; asserts nothing about speed
(``qgpu-bench`` does check what each DMA moved).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from qgpu.config import DmaMode, MachineConfig
from qgpu.data import last_json_object
from qgpu.errors import QgpuError
from qgpu.kernels import resolve
from qgpu.machine import GuestMachine

KiB, MiB = 1 << 10, 1 << 20
#: What the guest tool measures, in the order the tables show them.
OPS = ("copy_user_to", "copy_user_to_sg", "copy_user_from", "copy_bo_to", "copy_bo_from",
       "copy_vram", "fill")


def run_mode(kernel_name: str, mode: DmaMode, *, accel: str = "auto", max_size: int = 64 * MiB,
             budget: int = 32 * MiB) -> dict[str, Any]:
    """Boot a guest in ``mode``, run ``qgpu-bench dma`` in it, return its JSON result.

    Adds ``mode``, ``kernel``, ``release``, ``accel`` and ``boot_s``. Raises
    :class:`QgpuError` if the guest tool fails or a DMA it checked moved the
    wrong bytes.
    """
    kernel = resolve(kernel_name).check()
    config = MachineConfig.for_kernel(kernel, accel=accel, dma_mode=mode, ssh=False,
                                      name=f"bench-driver-{mode}")
    start = time.monotonic()
    machine = GuestMachine(config, ssh_key=kernel.ssh_key).start()
    try:
        boot = time.monotonic() - start
        cmd = f"qgpu-bench dma --max-size {max_size} --budget {budget}"
        out = machine.run(cmd, timeout=900, check=False).output
        accel_used = machine.accel
    finally:
        machine.stop()
    try:
        result = last_json_object(out)
    except ValueError as exc:       # a line cut short, or mixed with kernel messages
        raise QgpuError(f"qgpu-bench dma printed a broken result in {mode} mode ({exc}): "
                        f"{out[-2000:]!r}") from exc
    if result is None:
        raise QgpuError(f"qgpu-bench dma printed no result in {mode} mode: {out[-2000:]!r}")
    if not result.get("ok"):
        raise QgpuError(f"qgpu-bench dma failed in {mode} mode: {result.get('error', result)}")
    result.update(mode=str(mode), kernel=kernel.name, release=kernel.release, accel=accel_used,
                  boot_s=boot)
    return result


def measure_driver(kernel: str = "stock", modes: Sequence[DmaMode] = tuple(DmaMode), *,
                   accel: str = "auto", max_size: int = 64 * MiB, budget: int = 32 * MiB,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run :func:`run_mode` for each mode; a mode that fails is reported, not fatal.

    Returns ``{"kernel", "modes": {mode: result}, "errors": {mode: message}}``.
    """
    results: dict[str, Any] = {"kernel": kernel, "modes": {}, "errors": {}}
    for mode in modes:
        if progress:
            progress(f"driver DMA: {mode} mode (boot, then qgpu-bench dma)")
        try:
            results["modes"][str(mode)] = run_mode(kernel, mode, accel=accel,
                                                   max_size=max_size, budget=budget)
        except QgpuError as exc:
            results["errors"][str(mode)] = str(exc)
            if progress:
                progress(f"driver DMA: {mode} mode failed: {exc}")
    return results


def cell_rate(cell: dict[str, Any]) -> float | None:
    """Return a cell's throughput (bytes/s of its median), or None if it did not run."""
    if "median_s" not in cell or cell["median_s"] <= 0:
        return None
    return float(cell["size"]) / float(cell["median_s"])


def _size(n: int) -> str:
    return f"{n // MiB}M" if n >= MiB else f"{n // KiB}K"


def print_driver(results: dict[str, Any]) -> None:
    """Print one table per mode: each op's MB/s and its ratio to the guest's memcpy."""
    for mode, res in results["modes"].items():
        print(f"\nDMA through the driver, {mode} mode ({res['kernel']} kernel, {res['accel']}): "
              "MB/s (median) and x guest memcpy of the same size, same run")
        print(f"{'op':>16} | " + " | ".join(f"{_size(s):>12}" for s in res["sizes"]))
        base = {c["size"]: cell_rate(c) for c in res["results"]["memcpy"]}
        print(f"{'memcpy':>16} | " + " | ".join(
            f"{(base[s] or 0) / 1e6:12.1f}" for s in res["sizes"]))
        for op in OPS:
            cells = []
            for cell in res["results"].get(op, []):
                rate, ref = cell_rate(cell), base.get(cell["size"])
                if rate is None:
                    cells.append(f"{'error' if 'errno' in cell else '-':>12}")
                else:
                    ratio = f"{rate / ref:5.2f}x" if ref else ""
                    cells.append(f"{rate / 1e6:6.1f} {ratio:>5}")
            print(f"{op:>16} | " + " | ".join(cells))
        for cell_op in OPS:
            for cell in res["results"].get(cell_op, []):
                if "errno" in cell:
                    print(f"  {cell_op} {_size(cell['size'])}: {cell['error']} "
                          f"(errno {cell['errno']})")
        lat = res.get("latency", {})
        for name, what in (("fill_4k_fence", "4 KiB fill, submit to fence"),
                           ("copy_user_4k", "4 KiB COPY_USER, whole ioctl")):
            if name in lat:
                v = lat[name]
                print(f"  latency {what}: median {v['median_s'] * 1e6:.0f} us, "
                      f"p99 {v['p99_s'] * 1e6:.0f} us (n={v['n']})")
        drv = res.get("driver_stats", {})
        if drv and min(drv.values()) >= 0:
            print(f"  driver: {drv['jobs']} jobs, {drv['irq_dma']} DMA interrupts, "
                  f"{drv['poll_completions']} completions found by polling, "
                  f"{drv['timeouts']} timeouts")
        subs = [s for s in res.get("submitters", []) if "seconds" in s]
        if subs:
            one = subs[0]["bytes"] / subs[0]["seconds"]
            print("  concurrent submitters (1 MiB COPY_USER each): " + ", ".join(
                f"{s['threads']}: {s['bytes'] / s['seconds'] / 1e6:.0f} MB/s "
                f"({s['bytes'] / s['seconds'] / one:.2f}x)" for s in subs))
    for mode, message in results["errors"].items():
        print(f"\n{mode} mode: no figures: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the driver benchmark in the chosen modes and print the tables."""
    parser = argparse.ArgumentParser(prog="qgpu-bench-driver",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="stock", help="guest kernel (default stock)")
    parser.add_argument("--modes", default=",".join(DmaMode),
                        help="DMA modes, comma-separated (default: all)")
    parser.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    parser.add_argument("--max-size", type=int, default=64 * MiB,
                        help="largest transfer, bytes (default 64 MiB)")
    args = parser.parse_args(argv)
    try:
        modes = [DmaMode(m) for m in args.modes.split(",")]
    except ValueError as exc:
        parser.error(f"--modes: {exc}; known: {', '.join(DmaMode)}")
    results = measure_driver(args.kernel, modes, accel=args.accel, max_size=args.max_size,
                             progress=lambda m: print(m, file=sys.stderr, flush=True))
    print_driver(results)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QgpuError as exc:
        print(f"qgpu-bench-driver: error: {exc}", file=sys.stderr)
        sys.exit(1)
