"""The rig itself: failures in the guest or QEMU end a test quickly and clearly."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from qgpu.config import DmaMode
from qgpu.errors import GuestCrashError, GuestTimeoutError, QemuDiedError
from qgpu.machine import GuestMachine

MakeGuest = Callable[..., GuestMachine]


def test_killed_qemu_is_reported_at_once(make_guest: MakeGuest) -> None:
    machine = make_guest(DmaMode.DIRECT, ssh=False)
    assert machine.proc is not None and machine.proc.pid is not None
    os.kill(machine.proc.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(QemuDiedError):
        machine.run("echo still there?", timeout=60)
    assert time.monotonic() - start < 10


def test_guest_panic_is_reported_with_its_console(make_guest: MakeGuest) -> None:
    machine = make_guest(DmaMode.DIRECT, ssh=False)
    with pytest.raises(GuestCrashError) as info:
        machine.run("echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger", timeout=60)
    assert "sysrq" in info.value.console_tail.lower() or "panic" in str(info.value).lower()


def test_hung_command_times_out(make_guest: MakeGuest) -> None:
    machine = make_guest(DmaMode.DIRECT, ssh=False)
    start = time.monotonic()
    with pytest.raises(GuestTimeoutError, match="hung or too slow"):
        machine.run("sleep 600", timeout=3)
    assert time.monotonic() - start < 10


def test_artifact_bundle(make_guest: MakeGuest, tmp_path: object) -> None:
    import pathlib
    assert isinstance(tmp_path, pathlib.Path)
    machine = make_guest(DmaMode.DIRECT, ssh=False)
    machine.run("echo marker-for-the-console-log", check=True)
    written = {p.name for p in machine.collect_artifacts(tmp_path)}
    assert {"console.log", "dmesg.txt", "qmp-events.json", "devices.json", "qemu.log",
            "summary.json"} <= written
    assert "marker-for-the-console-log" in (tmp_path / "console.log").read_text()
    assert '"stats"' in (tmp_path / "devices.json").read_text()


def test_background_jobs_do_not_end_the_console(make_guest: MakeGuest) -> None:
    """A finished background job must not end the console shell (and the guest)."""
    machine = make_guest(DmaMode.DIRECT, ssh=False)
    machine.run("(sleep 1; echo done >/tmp/bg) & sleep 0.1", check=True)
    deadline = time.monotonic() + 20
    while machine.run("cat /tmp/bg 2>/dev/null").output.strip() != "done":
        assert time.monotonic() < deadline, "the background job never finished"
        time.sleep(0.5)
    assert machine.run("echo still-here", check=True).output == "still-here"
