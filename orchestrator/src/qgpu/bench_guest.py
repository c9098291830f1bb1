"""Guest-side benchmarks: boot-to-ready-shell time and WC-mapped VRAM bandwidth.

Run with ``make bench`` (after the device benchmark) or
``python -m qgpu.bench_guest``. Figures printed beside baselines measured in
the same run: VRAM write bandwidth through the write-combined mapping beside
the same guest process writing its own RAM. Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from qgpu.config import DmaMode, MachineConfig
from qgpu.data import last_json_object
from qgpu.errors import QgpuError
from qgpu.machine import GuestMachine, image_paths

BOOT_GOAL_S = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    """Boot the guest ``--boots`` times, then run qgpu-bench in the last one."""
    parser = argparse.ArgumentParser(prog="qgpu-bench-guest", description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=5, help="boots to time (default 5)")
    parser.add_argument("--mode", type=DmaMode, choices=list(DmaMode), default=DmaMode.DIRECT)
    parser.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    parser.add_argument("--mib", type=int, default=16, help="MiB written per pass (default 16)")
    args = parser.parse_args(argv)
    kernel, initrd, key = image_paths()
    config = MachineConfig(kernel=kernel, initrd=initrd, accel=args.accel, dma_mode=args.mode,
                           ssh=False, name="bench")
    times: list[float] = []
    result: dict[str, float] = {}
    for n in range(args.boots):
        start = time.monotonic()
        machine = GuestMachine(config, ssh_key=key).start()
        try:
            times.append(time.monotonic() - start)
            print(f"boot {n + 1}/{args.boots}: ready (driver loaded) in {times[-1]:.2f} s",
                  file=sys.stderr, flush=True)
            if n == args.boots - 1:
                out = machine.run(f"qgpu-bench {args.mib} 5", timeout=600).output
                result = last_json_object(out) or {}
        finally:
            machine.stop()
    if not result.get("ok"):
        raise QgpuError(f"qgpu-bench failed in the guest: {result}")
    print(f"\nguest boot to ready shell with the driver loaded ({args.mode}, {machine.accel}, "
          f"{args.boots} boots): median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
          f"max {max(times):.2f} s (goal: under {BOOT_GOAL_S:.0f} s)")
    print(f"guest user-space writes, {int(result['bytes']) >> 20} MiB per pass, best of "
          f"{result['rounds']}:")
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
