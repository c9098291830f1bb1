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
first answer. And SSH on a reverted guest, as a test's first SSH commands
meet it: connecting plus a first command, then one more command, with
Nagle's algorithm off (what the rig does, :func:`qgpu.ssh._open_socket`)
beside on (paramiko's default), alternating, each after a revert of its
own. Prints, asserts nothing. Goal (issue 12): restore ≤ 0.15 s median,
≥ 14x faster.
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
from qgpu.ssh import GuestSsh
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
            "ssh": measure_ssh(runs, kernel_name, mode=mode, accel=accel, progress=progress),
            "template": made.folder.name, "state_bytes": int(str(info["state_bytes"])),
            "ram_bytes_used": int(str(info["ram_bytes_used"])), "memory": config.memory,
            "goal_s": GOAL_S, "goal_ratio": GOAL_RATIO}


def measure_ssh(runs: int = 20, kernel_name: str = "stock", *,
                mode: DmaMode = DmaMode.DIRECT, accel: str = "auto",
                progress: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Time SSH on a reverted guest, ``runs`` rounds of Nagle's algorithm off and on.

    Each try reverts the guest first (a test's guest), then times a new
    connection and its first command (``connect_s``), then a second command
    (``command_s``). The order of the two alternates from round to round.
    """
    kernel = resolve(kernel_name).check()
    config = template.template_config(MachineConfig.for_kernel(
        kernel, accel=accel, dma_mode=mode, name="bench-ssh"))
    out: dict[str, list[float]] = {f"{how}_{what}_s": [] for how in ("nodelay", "nagle")
                                   for what in ("connect", "command")}
    guest: GuestMachine | None = None
    try:
        for n in range(runs):
            for nodelay in ((True, False) if n % 2 == 0 else (False, True)):
                if guest is None or guest.reverts >= template.MAX_REVERTS:
                    if guest is not None:
                        guest.stop(graceful=False)
                    guest = template.restore(config, ssh_key=kernel.ssh_key, ssh_ahead=False)
                template.revert(guest, ssh_ahead=False)
                guest.run("true", check=True)       # as a test's check: the console first
                assert guest.ssh is not None
                ssh = GuestSsh(guest.ssh.port, kernel.ssh_key, nodelay=nodelay)
                how = "nodelay" if nodelay else "nagle"
                try:
                    start = time.monotonic()
                    ssh.connect(timeout=60 * config.timeout_scale)
                    ssh.run("true", check=True)
                    middle = time.monotonic()
                    ssh.run("true", check=True)
                    out[f"{how}_connect_s"].append(middle - start)
                    out[f"{how}_command_s"].append(time.monotonic() - middle)
                finally:
                    ssh.close()
            if progress:
                progress(f"ssh round {n + 1}/{runs}: connect + command "
                         f"{out['nodelay_connect_s'][-1]:.3f} s (Nagle on "
                         f"{out['nagle_connect_s'][-1]:.3f} s), a command "
                         f"{out['nodelay_command_s'][-1]:.3f} s (Nagle on "
                         f"{out['nagle_command_s'][-1]:.3f} s)")
    finally:
        if guest is not None:
            guest.stop(graceful=False)
    return out


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
    ssh = res.get("ssh")                        # not in results made before it
    if ssh:
        print(f"  SSH on a reverted guest, medians of {len(ssh['nodelay_connect_s'])}, Nagle's "
              "algorithm off (the rig) beside on (paramiko's default):")
        for what, key in (("connect + first command", "connect"),
                          ("a later command", "command")):
            off = statistics.median(ssh[f"nodelay_{key}_s"])
            on = statistics.median(ssh[f"nagle_{key}_s"])
            print(f"    {what:24} {off:7.3f}s  (on: {on:.3f}s, {on / off:.1f}x)")
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
