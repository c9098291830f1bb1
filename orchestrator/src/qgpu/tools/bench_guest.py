"""Guest-side benchmarks: boot-to-ready-shell time per kernel and WC-mapped VRAM bandwidth.

Run with ``make bench`` (its ``guest`` section, stock and qgpu kernels) or
``python -m qgpu.tools.bench_guest`` (all kernels, a table). Figures beside
baselines measured in the same run: each kernel's boot time beside the stock
kernel's (boots interleaved, so a busy spell of the machine hits every kernel
alike), and VRAM write bandwidth through the write-combined mapping beside
the same guest process writing its own RAM. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from qgpu.config import DmaMode, MachineConfig
from qgpu.data import last_json_object
from qgpu.errors import QgpuError, SetupError
from qgpu.kernels import KNOWN, GuestKernel, resolve
from qgpu.machine import GuestMachine

#: Goals (issue 9): the project's own small kernel boots to a ready shell in a second.
BOOT_GOAL_S = {"stock": 5.0, "qgpu": 1.0}


def _kernels(names: str) -> list[GuestKernel]:
    found = []
    for name in names.split(","):
        try:
            found.append(resolve(name).check())
        except SetupError as exc:
            print(f"qgpu-bench-guest: skipping kernel {name}: {exc}", file=sys.stderr)
    if not found:
        raise QgpuError(f"no guest kernel to benchmark among {names}: run 'make images'")
    return found


def measure_guest(boots: int = 5, kernel_names: str = ",".join(KNOWN), *,
                  mode: DmaMode = DmaMode.DIRECT, accel: str = "auto", mib: int = 16,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Boot each kernel ``boots`` times (interleaved), run qgpu-bench in the first's guest.

    Returns ``{"mode", "accel", "boots": {kernel: {"release", "seconds": [...]}},
    "baseline", "mappings": qgpu-bench's JSON}``.
    """
    kernels = _kernels(kernel_names)
    times: dict[str, list[float]] = {k.name: [] for k in kernels}
    result: dict[str, Any] = {}
    accel_used = ""
    for n in range(boots):
        for kernel in kernels:
            config = MachineConfig.for_kernel(kernel, accel=accel, dma_mode=mode,
                                              ssh=False, name=f"bench-{kernel.name}")
            start = time.monotonic()
            machine = GuestMachine(config, ssh_key=kernel.ssh_key).start()
            try:
                times[kernel.name].append(time.monotonic() - start)
                accel_used = machine.accel
                if progress:
                    progress(f"boot {n + 1}/{boots} {kernel.name}: ready (driver loaded) in "
                             f"{times[kernel.name][-1]:.2f} s")
                if n == boots - 1 and kernel is kernels[0]:
                    out = machine.run(f"qgpu-bench {mib} 5", timeout=600).output
                    result = last_json_object(out) or {}
            finally:
                machine.stop()
    if not result.get("ok"):
        raise QgpuError(f"qgpu-bench failed in the guest: {result}")
    return {"mode": str(mode), "accel": accel_used, "baseline": kernels[0].name,
            "boots": {k.name: {"release": k.release, "seconds": times[k.name],
                               "goal_s": BOOT_GOAL_S.get(k.name)} for k in kernels},
            "mappings": result}


def print_guest(res: dict[str, Any]) -> None:
    """Print the boot table and the mapping write bandwidths."""
    boots = res["boots"]
    base = statistics.median(boots[res["baseline"]]["seconds"])
    count = len(boots[res["baseline"]]["seconds"])
    print(f"\nguest boot, QEMU start to ready shell with the driver loaded ({res['mode']}, "
          f"{res['accel']}, {count} boots each, interleaved):")
    print(f"  {'kernel':8} {'release':22} {'median':>7} {'min':>6} {'max':>6}  "
          f"{'vs ' + res['baseline']:>9}  goal")
    for name, k in boots.items():
        t = k["seconds"]
        goal = k.get("goal_s")
        print(f"  {name:8} {k['release']:22} {statistics.median(t):6.2f}s "
              f"{min(t):5.2f}s {max(t):5.2f}s  {statistics.median(t) / base:9.2f}  "
              + (f"median <= {goal:.1f} s" if goal else "-"))
    m = res["mappings"]
    print(f"guest user-space writes ({res['baseline']} kernel), {int(m['bytes']) >> 20} MiB "
          f"per pass, best of {m['rounds']}:")
    print(f"  own RAM (baseline)           {m['ram_mb_s']:9.1f} MB/s   1.000")
    print(f"  VRAM, write-combined mmap    {m['vram_wc_mb_s']:9.1f} MB/s   "
          f"{m['vram_vs_ram']:.3f}")
    print(f"  VRAM, lazy mmap, first touch {m['lazy_first_touch_mb_s']:9.1f} MB/s   "
          f"{m['lazy_first_touch_mb_s'] / m['ram_mb_s']:.3f}  (a page fault per page)")
    print("  (under TCG both VRAM and RAM are host memory: the ratio shows the cost of the "
          "mapping path, not of a PCIe link)")


def main(argv: Sequence[str] | None = None) -> int:
    """Boot each kernel ``--boots`` times, then run qgpu-bench in the first kernel's guest."""
    parser = argparse.ArgumentParser(prog="qgpu-bench-guest", description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=5, help="boots per kernel (default 5)")
    parser.add_argument("--kernels", default=",".join(KNOWN),
                        help=f"kernels to boot, comma-separated (default {','.join(KNOWN)}; "
                             "the first is the baseline)")
    parser.add_argument("--mode", type=DmaMode, choices=list(DmaMode), default=DmaMode.DIRECT)
    parser.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    parser.add_argument("--mib", type=int, default=16, help="MiB written per pass (default 16)")
    args = parser.parse_args(argv)
    res = measure_guest(args.boots, args.kernels, mode=args.mode, accel=args.accel,
                        mib=args.mib, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print_guest(res)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QgpuError as exc:
        print(f"qgpu-bench-guest: error: {exc}", file=sys.stderr)
        sys.exit(1)
