"""Boot-to-ready-shell time of a guest image: QEMU started, to the console's first prompt.

Run with ``make boot-bench [KERNEL=stock N=5 MODE=direct SMP=2]`` or
``python -m qgpu.tools.bench_boot --help``. Each boot is a fresh QEMU (no SSH,
which a boot does not wait for); the figures are wall-clock seconds of
:meth:`~qgpu.machine.GuestMachine.start`. Under TCG they depend on the host's
speed: compare kernels or settings within one run, not across machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from qgpu.config import DmaMode, MachineConfig
from qgpu.errors import QgpuError
from qgpu.kernels import KNOWN, resolve
from qgpu.machine import GuestMachine


def boot_times(config: MachineConfig, runs: int) -> list[float]:
    """Boot ``config`` ``runs`` times; return the seconds each took to its ready shell."""
    times = []
    for i in range(runs):
        start = time.monotonic()
        machine = GuestMachine(config)
        try:
            machine.start()
            times.append(time.monotonic() - start)
        finally:
            machine.stop(graceful=False)
        print(f"  boot {i + 1}/{runs}: {times[-1]:.2f} s", flush=True)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    """Print the median, minimum and maximum boot time of ``-n`` boots."""
    parser = argparse.ArgumentParser(prog="qgpu-bench-boot", description=__doc__.split("\n")[0])
    parser.add_argument("--kernel", default=None, metavar="|".join(KNOWN) + "|DIR",
                        help="guest kernel (default: stock)")
    parser.add_argument("-n", type=int, default=5, help="boots (default 5)")
    parser.add_argument("--mode", type=DmaMode, choices=list(DmaMode), default=DmaMode.DIRECT)
    parser.add_argument("--smp", type=int, default=2, help="vCPUs (default 2)")
    parser.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="tcg")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("-n must be at least 1")
    try:
        kernel = resolve(args.kernel)
        config = MachineConfig.for_kernel(kernel, accel=args.accel, dma_mode=args.mode,
                                          cpus=args.smp, ssh=False)
        print(f"boot to ready shell: kernel {kernel.name} ({kernel.release}), {args.mode} DMA, "
              f"{args.smp} vCPUs, {args.accel}, {args.n} boots")
        times = boot_times(config, args.n)
    except QgpuError as exc:
        print(f"qgpu-bench-boot: {exc}", file=sys.stderr)
        return 1
    print(f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
          f"max {max(times):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
