"""Job fences as dma_fences, exported as sync_files (issue 14, item 3), seen from the host.

The host holds the DMA engine (``x-fault-hang``) so that a job stays pending
exactly as long as a test needs: a guest process exports its fence, polls the
sync_file, and the host decides when, and how, the job ends -- by letting the
engine go on, by the driver's watchdog resetting it, or by removing the device.
The in-guest suite (``qgpu-test fence_export*``) covers the rest: arguments,
retired fences, fence 0, read-only files, merging.
"""

from __future__ import annotations

import errno
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from qgpu.config import DmaMode
from qgpu.faults import FaultInjector
from qgpu.inspector import DeviceInspector
from qgpu.machine import GuestMachine

from .guestio import TOOL, driver_stats, parse_json_line, tool

DIRECT = pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)
FILL = 0x5A17_C0DE
LENGTH = 65536
#: Where background pollers keep their pid, output and end marker (plus a name).
TAG = "/tmp/qgpu-fence-poller"


class Poller:
    """A guest ``qgpu-tool COMMAND ... --poll MS ...`` running in the background."""

    def __init__(self, guest: GuestMachine, tag: str, command: str) -> None:
        self.guest, self.tag, self.command = guest, tag, command
        self.result: dict[str, Any] | None = None

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for the tool to finish; return its JSON result."""
        deadline = time.monotonic() + timeout * self.guest.config.timeout_scale
        while self.guest.run(f"test -e {self.tag}.done").status != 0:
            assert time.monotonic() < deadline, \
                f"the poller did not finish in {timeout} s: " + self.guest.run(
                    f"cat {self.tag}.out; cat /proc/$(cat {self.tag}.pid)/wchan").output
            time.sleep(0.1)
        self.result = parse_json_line(self.guest.run(f"cat {self.tag}.out").output,
                                      f"qgpu-tool {self.command}")
        return self.result


@contextmanager
def poller(guest: GuestMachine, args: str, name: str = "p", command: str = "fence-export",
           device: str | None = None, waits_in: str = "poll") -> Iterator[Poller]:
    """Start ``qgpu-tool [-d DEVICE] COMMAND ARGS`` and return once it sleeps in a
    kernel function whose name contains WAITS_IN (its ``/proc/PID/wchan``).

    The pid is read apart from the wchan, each with its errors discarded: until the
    background shell has written the pid file, ``cat /proc/$(cat PID)/wchan
    2>/dev/null`` still prints the inner cat's complaint on the console, ahead of
    the wchan this returns on its first line (a CI run failed on exactly that)."""
    tag = f"{TAG}-{name}"
    device_arg = f"-d {device} " if device else ""
    guest.run(f"rm -f {tag}.*; ( sh -c 'echo $$ > {tag}.pid; exec {TOOL} {device_arg}{command} "
              f"{args} > {tag}.out 2>&1'; touch {tag}.done ) </dev/null >/dev/null 2>&1 &",
              check=True)
    out = guest.run(f"i=0; while [ $i -lt 400 ]; do p=$(cat {tag}.pid 2>/dev/null); "
                    f"w=$(cat /proc/$p/wchan 2>/dev/null); case \"$w\" in *{waits_in}*) break;; "
                    f"esac; [ -e {tag}.done ] && break; usleep 25000; i=$((i+1)); done; "
                    f"echo \"$w\"; cat {tag}.out 2>/dev/null", timeout=30).output
    assert waits_in in out.split("\n")[0], \
        f"{command} is not waiting in a {waits_in} function: {out}"
    p = Poller(guest, tag, command)
    try:
        yield p
    finally:
        if p.result is None:
            guest.run(f"kill $(cat {tag}.pid) 2>/dev/null; i=0; while [ ! -e {tag}.done ] "
                      f"&& [ $i -lt 200 ]; do usleep 25000; i=$((i+1)); done")


def job_timeout(guest: GuestMachine, ms: int) -> None:
    """Set the driver's watchdog timeout (the next reload restores the default)."""
    guest.run(f"echo {ms} > /sys/module/qgpu/parameters/job_timeout_ms", check=True)


def pattern(value: int, length: int) -> bytes:
    return value.to_bytes(4, "little") * (length // 4)


@DIRECT
def test_a_pending_sync_file_signals_when_its_job_retires(
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
        faults: FaultInjector) -> None:
    g = qgpu_guest
    job_timeout(g, 600_000)         # only the host ends the hang
    tool(g, f"fill 0 {LENGTH} 0x0")
    faults.hang()
    earlier = tool(g, f"fill {LENGTH} 4096 0x1 --async")["fence"]
    fence = tool(g, f"fill 0 {LENGTH} {FILL:#x} --async")["fence"]
    now = tool(g, f"fence-export {fence} --poll 200")
    assert not now["ready"] and now["status"] == 0 == now["fence_status"], now
    assert (now["driver"], now["timeline"], now["fences"]) == ("qgpu", "qgpu0", 1), now
    # Both pending, on one context: a merge keeps the later one only.
    merged = tool(g, f"fence-export {earlier} --merge {fence}")
    assert (merged["status"], merged["fences"], merged["driver"]) == (0, 1, "qgpu"), merged
    with poller(g, f"{fence} --poll 60000") as p:
        assert qgpu_inspector.vram_backend(0, LENGTH) == bytes(LENGTH)
        faults.hang(False)
        res = p.wait(30)
    assert res["ok"] and res["ready"] and res["status"] == 1 == res["fence_status"], res
    assert qgpu_inspector.vram_backend(0, LENGTH) == pattern(FILL, LENGTH)


@DIRECT
def test_a_watchdog_reset_fails_the_stuck_jobs_sync_file_not_the_next(
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
        faults: FaultInjector) -> None:
    """The engine hangs in job A with job B queued behind it. The watchdog fails
    A (-ETIMEDOUT) and runs B again, whose sync_file then signals success;
    exported again afterwards, the retired fences carry the same results."""
    g = qgpu_guest
    job_timeout(g, 600_000)
    resets = driver_stats(g)["watchdog_resets"]
    faults.hang()
    first = tool(g, f"fill 0 {LENGTH} 0x1111 --async")["fence"]
    second = tool(g, f"fill {LENGTH} {LENGTH} {FILL:#x} --async")["fence"]
    with poller(g, f"{first} --poll 60000", "a") as pa, \
            poller(g, f"{second} --poll 60000", "b") as pb:
        job_timeout(g, 1500)
        a, b = pa.wait(30), pb.wait(30)
    assert a["ok"] and a["ready"] and a["status"] == -errno.ETIMEDOUT, a
    assert b["ok"] and b["ready"] and b["status"] == 1, b
    assert driver_stats(g)["watchdog_resets"] == resets + 1
    assert qgpu_inspector.vram_backend(LENGTH, LENGTH) == pattern(FILL, LENGTH)
    assert tool(g, f"fence-export {first}")["status"] == -errno.ETIMEDOUT
    assert tool(g, f"fence-export {second}")["status"] == 1


@DIRECT
def test_removal_signals_a_pending_sync_file_that_keeps_the_module(
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
        faults: FaultInjector) -> None:
    """The device file is closed, the device removed: the sync_file still works,
    its fence signals with -ECANCELED, and while it is open qgpu.ko cannot be
    unloaded (its fence ops are in it); once it is closed, it can."""
    g = qgpu_guest
    bdf = g.run("basename $(readlink /sys/class/misc/qgpu0/device)", check=True).output.strip()
    job_timeout(g, 600_000)
    resets = qgpu_inspector.stats()["engine-resets"]
    hold_ms = int(4000 * g.config.timeout_scale)
    faults.hang()
    fence = tool(g, f"fill 0 {LENGTH} {FILL:#x} --async")["fence"]
    try:
        with poller(g, f"{fence} --close-device --poll 60000 --hold {hold_ms}") as p:
            assert qgpu_inspector.stats()["engine-resets"] == resets   # still pending
            g.run(f"echo 1 > /sys/bus/pci/devices/{bdf}/remove", check=True)
            # Signalled: the tool prints, then holds the sync_file a while.
            out = g.run(f"i=0; while [ ! -s {p.tag}.out ] && [ $i -lt 400 ]; do usleep 25000; "
                        f"i=$((i+1)); done; cat {p.tag}.out; rmmod qgpu; echo rmmod=$?; "
                        "test -d /sys/module/qgpu && echo loaded", timeout=30).output
            res = parse_json_line(out, "qgpu-tool fence-export")
            assert res["ready"] and res["status"] == -errno.ECANCELED, res
            assert "rmmod=0" not in out and "loaded" in out, out
            p.wait(30)
        # The fence lets the module go an RCU grace period after its last reference.
        assert g.run("i=0; until rmmod qgpu; do i=$((i+1)); [ $i -lt 20 ] || exit 1; "
                     "usleep 100000; done").status == 0, \
            "qgpu.ko still in use 2 s after the sync_file was closed"
    finally:
        g.run("echo 1 > /sys/bus/pci/rescan")


@DIRECT
def test_poll_on_the_device_file_waits_for_its_jobs(
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector,
        faults: FaultInjector) -> None:
    """poll(2) on the device file that submitted a job asynchronously sleeps while the
    host holds the engine, and wakes readable when the job is over (its fence done,
    its bytes in VRAM); a file with nothing in flight is readable all along."""
    g = qgpu_guest
    job_timeout(g, 600_000)
    tool(g, f"fill 0 {LENGTH} 0x0")
    faults.hang()
    with poller(g, f"0 {LENGTH} {FILL:#x} --async --poll 60000", command="fill") as p:
        other = tool(g, "poll 0")
        assert other["readable"] and not other["hangup"], other
        assert qgpu_inspector.vram_backend(0, LENGTH) == bytes(LENGTH)
        faults.hang(False)
        res = p.wait(30)
    assert res["readable"] and res["fence_done"] and not res["hangup"], res
    assert qgpu_inspector.vram_backend(0, LENGTH) == pattern(FILL, LENGTH)


@DIRECT
def test_removal_hangs_up_a_polling_device_file(
        qgpu_guest: GuestMachine, faults: FaultInjector) -> None:
    """The device is removed while a process polls its file for a held job: poll
    wakes with an error and a hang-up (POLLERR | POLLHUP), not readable."""
    g = qgpu_guest
    bdf = g.run("basename $(readlink /sys/class/misc/qgpu0/device)", check=True).output.strip()
    job_timeout(g, 600_000)
    faults.hang()
    try:
        with poller(g, f"0 {LENGTH} {FILL:#x} --async --poll 60000", command="fill") as p:
            g.run(f"echo 1 > /sys/bus/pci/devices/{bdf}/remove", check=True)
            res = p.wait(30)
        assert res["hangup"] and not res["readable"], res
        assert res["revents"] & (select.POLLERR | select.POLLHUP) == \
            select.POLLERR | select.POLLHUP, res
    finally:
        g.run("echo 1 > /sys/bus/pci/rescan")
