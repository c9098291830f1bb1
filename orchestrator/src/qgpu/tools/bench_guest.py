"""Guest-side benchmarks: boot-to-ready-shell time per kernel and WC-mapped VRAM bandwidth.

Run with ``make bench`` (after the device benchmark) or
``python -m qgpu.tools.bench_guest``. Figures printed beside baselines measured in
the same run: each kernel's boot time beside the stock kernel's (boots
interleaved, so a busy spell of the machine hits every kernel alike), and
VRAM write bandwidth through the write-combined mapping beside the same guest
process writing its own RAM. Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

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
    kernels = _kernels(args.kernels)
    times: dict[str, list[float]] = {k.name: [] for k in kernels}
    result: dict[str, float] = {}
    accel = ""
    for n in range(args.boots):
        for kernel in kernels:
            config = MachineConfig.for_kernel(kernel, accel=args.accel, dma_mode=args.mode,
                                              ssh=False, name=f"bench-{kernel.name}")
            start = time.monotonic()
            machine = GuestMachine(config, ssh_key=kernel.ssh_key).start()
            try:
                times[kernel.name].append(time.monotonic() - start)
                accel = machine.accel
                print(f"boot {n + 1}/{args.boots} {kernel.name}: ready (driver loaded) in "
                      f"{times[kernel.name][-1]:.2f} s", file=sys.stderr, flush=True)
                if n == args.boots - 1 and kernel is kernels[0]:
                    out = machine.run(f"qgpu-bench {args.mib} 5", timeout=600).output
                    result = last_json_object(out) or {}
            finally:
                machine.stop()
    if not result.get("ok"):
        raise QgpuError(f"qgpu-bench failed in the guest: {result}")
    base = statistics.median(times[kernels[0].name])
    print(f"\nguest boot, QEMU start to ready shell with the driver loaded ({args.mode}, {accel}, "
          f"{args.boots} boots each, interleaved):")
    print(f"  {'kernel':8} {'release':22} {'median':>7} {'min':>6} {'max':>6}  "
          f"{'vs ' + kernels[0].name:>9}  goal")
    for kernel in kernels:
        t = times[kernel.name]
        goal = BOOT_GOAL_S.get(kernel.name)
        print(f"  {kernel.name:8} {kernel.release:22} {statistics.median(t):6.2f}s "
              f"{min(t):5.2f}s {max(t):5.2f}s  {statistics.median(t) / base:9.2f}  "
              + (f"median <= {goal:.1f} s" if goal else "-"))
    print(f"guest user-space writes ({kernels[0].name} kernel), {int(result['bytes']) >> 20} MiB "
          f"per pass, best of {result['rounds']}:")
    print(f"  own RAM (baseline)           {result['ram_mb_s']:9.1f} MB/s   1.000")
    print(f"  VRAM, write-combined mmap    {result['vram_wc_mb_s']:9.1f} MB/s   "
          f"{result['vram_vs_ram']:.3f}")
    print(f"  VRAM, lazy mmap, first touch {result['lazy_first_touch_mb_s']:9.1f} MB/s   "
          f"{result['lazy_first_touch_mb_s'] / result['ram_mb_s']:.3f}  (a page fault per page)")
    print("  (under TCG both VRAM and RAM are host memory: the ratio shows the cost of the "
          "mapping path, not of a PCIe link)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QgpuError as exc:
        print(f"qgpu-bench-guest: error: {exc}", file=sys.stderr)
        sys.exit(1)
