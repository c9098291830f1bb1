"""Benchmark: a guest restored from its template beside a cold boot, same run.

Run with ``make bench`` or ``python -m qgpu.tools.bench_restore``. Cold boots and
restores are interleaved (a busy spell of the machine hits both alike); each
is timed from QEMU's start to the guest's first answer on the console (the
ready prompt for a boot, a ``date -s`` for a restore), SSH off for both.
Also printed: how much of a restore is QEMU's (until the guest runs
again) and how much the guest's first answer, the template's size (device
state, RAM the guest used) and the memory each restored guest adds (its
QEMU's private pages). And a third figure, measured in the same rounds: a
guest that wrote 8 MiB of files reverted to its template in its own QEMU
(:func:`qgpu.template.revert`), timed from the revert's start to the same
first answer. Prints, asserts nothing. Goal (issue 12): restore ≤ 0.15 s
median, ≥ 14x faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qgpu import template
from qgpu.config import DmaMode, MachineConfig
from qgpu.kernels import resolve
from qgpu.machine import GuestMachine
from qgpu.tools.bench import p90

GOAL_S = 0.15
GOAL_RATIO = 14.0
MiB = 1 << 20


def _private_bytes(pid: int) -> int:
    """Return the private (not shared with any other process) bytes of ``pid``."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def measure_restore(runs: int = 20, kernel_name: str = "stock", *,
                    mode: DmaMode = DmaMode.DIRECT, accel: str = "auto",
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time ``runs`` cold boots and as many restores, interleaved; return the figures."""
    kernel = resolve(kernel_name).check()
    config = template.template_config(MachineConfig.for_kernel(
        kernel, accel=accel, dma_mode=mode, ssh=False, name="bench-restore"))
    made = template.get(config)
    boots: list[float] = []
    restores: list[float] = []
    running: list[float] = []           # of each restore: until the guest runs again
    private: list[int] = []
    reverts: list[float] = []
    kept: GuestMachine | None = None    # the guest reverted in place, round after round
    try:
        for n in range(runs):
            if kept is None or kept.reverts >= template.MAX_REVERTS:
                if kept is not None:
                    kept.stop(graceful=False)
                kept = template.restore(config, template=made)
            # A test's worth of writes to undo: files in the guest's RAM.
            kept.run("dd if=/dev/zero of=/tmp/dirt bs=1M count=8 2>/dev/null", check=True,
                     timeout=60 * config.timeout_scale)
            start = time.monotonic()
            template.revert(kept)
            reverts.append(time.monotonic() - start)
            _boot_and_restore(config, made, boots, restores, running, private)
            if progress:
                progress(f"run {n + 1}/{runs}: boot {boots[-1]:.2f} s, restore "
                         f"{restores[-1]:.3f} s, revert {reverts[-1]:.3f} s")
    finally:
        if kept is not None:
            kept.stop(graceful=False)
    info = made.info
    return {"kernel": kernel_name, "mode": str(mode), "accel": made.accel,
            "boot_s": boots, "restore_s": restores, "restore_running_s": running,
            "revert_s": reverts, "private_bytes": private,
            "template": made.folder.name, "state_bytes": int(str(info["state_bytes"])),
            "ram_bytes_used": int(str(info["ram_bytes_used"])), "memory": config.memory,
            "goal_s": GOAL_S, "goal_ratio": GOAL_RATIO}


def _boot_and_restore(config: MachineConfig, made: template.Template, boots: list[float],
                      restores: list[float], running: list[float], private: list[int]
                      ) -> None:
    """Time one cold boot and one restore; append their figures."""
    start = time.monotonic()
    booted = GuestMachine(config)
    try:
        booted.start(connect_ssh=False)
        boots.append(time.monotonic() - start)
    finally:
        booted.stop(graceful=False)
    start = time.monotonic()
    restored = template.restore(config, template=made)
    try:
        restores.append(time.monotonic() - start)
        running.append(restored.restore_running_seconds)
        assert restored.proc is not None and restored.proc.pid is not None
        private.append(_private_bytes(restored.proc.pid))
    finally:
        restored.stop(graceful=False)


def print_restore(res: dict[str, Any]) -> None:
    """Print the boot-vs-restore table."""
    boots, restores = res["boot_s"], res["restore_s"]
    boot_med, rest_med = statistics.median(boots), statistics.median(restores)
    print(f"\nguest start, QEMU start to the first console answer ({res['kernel']}, "
          f"{res['mode']}, {res['accel']}, {len(boots)} of each, interleaved; the boot loads "
          "no driver):")
    print(f"  {'':18} {'median':>8} {'p90':>8} {'min':>8} {'max':>8}")
    reverts = res.get("revert_s") or []         # not in results made before reverts
    rows = [("cold boot", boots), ("restore", restores)]
    if reverts:
        rows.append(("revert in place", reverts))
    for what, values in rows:
        print(f"  {what:18} {statistics.median(values):7.3f}s {p90(values):7.3f}s "
              f"{min(values):7.3f}s {max(values):7.3f}s")
    running = res.get("restore_running_s") or []
    if running:
        run_med = statistics.median(running)
        # What holds a restore above its goal, if anything: QEMU is quick; the
        # guest's first command runs on a TCG whose translation cache is empty.
        print(f"  of the restore: {run_med:.3f} s until the guest runs again (QEMU start, "
              f"state loaded, cont), {rest_med - run_med:.3f} s for its first console "
              "answer (medians)")
    if reverts:
        rev_med = statistics.median(reverts)
        print(f"  revert in place (the guest had written 8 MiB of files; from the revert's "
              f"start): {rest_med / rev_med:.1f}x faster than a restore, "
              f"{boot_med / rev_med:.1f}x than a cold boot (medians)")
    print(f"  restore is {boot_med / rest_med:.1f}x faster than a cold boot (goal "
          f"≥ {GOAL_RATIO:.0f}x; restore goal ≤ {GOAL_S} s: "
          f"{'met' if rest_med <= GOAL_S else 'not met'})")
    print(f"  template {res['template']}: device state {res['state_bytes'] / 1024:.0f}"
          f" KiB, guest RAM used {res['ram_bytes_used'] / MiB:.0f} MiB of "
          f"{res['memory'] // MiB} MiB; each restored guest's QEMU: "
          f"{statistics.median(res['private_bytes']) / MiB:.0f} MiB private (median)")


def main(argv: Sequence[str] | None = None) -> int:
    """Time ``--runs`` cold boots and as many restores, interleaved; print the table."""
    parser = argparse.ArgumentParser(prog="qgpu-bench-restore",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="boots and restores (default 20)")
    parser.add_argument("--kernel", default="stock", help="guest kernel (default stock)")
    parser.add_argument("--mode", type=DmaMode, choices=list(DmaMode), default=DmaMode.DIRECT)
    parser.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    args = parser.parse_args(argv)
    print_restore(measure_restore(args.runs, args.kernel, mode=args.mode, accel=args.accel,
                                  progress=lambda m: print(m, file=sys.stderr, flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
