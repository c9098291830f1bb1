"""Why QEMU died: crash signals, backtraces from cores, sanitizer reports.

One place for everything the rig reads after a QEMU is gone: whether a signal
was a crash, the crashing thread's stack (gdb on the core QEMU left in its work
folder), whether that stack passes through qgpu's code (a crash elsewhere, as
TCG has now and then on some hosts, may be retried), and the reports of a
sanitizer build in QEMU's log.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Signals that mean QEMU crashed (as opposed to being killed or told to quit).
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                           signal.SIGABRT})


#: Lines that start a report of QEMU's sanitizers (a build with --enable-asan/ubsan).
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error: ",
                     "WARNING: ThreadSanitizer")
#: Reports found in the logs of every QemuProcess stopped so far, oldest first:
#: a test harness compares the length before and after a test.
SANITIZER_REPORTS: list[str] = []


def backtrace_frames(gdb_output: str) -> tuple[str, ...]:
    """Return the frames ("#N ...") of the last stack in ``gdb_output``.

    gdb prints the frame a core stopped in when it loads the core, then the
    whole stack again for ``bt``: the stack starts at the last ``#0``.
    """
    lines = [ln for ln in gdb_output.splitlines() if ln.startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.split(maxsplit=1)[0] == "#0"]
    return tuple(lines[starts[-1]:]) if starts else tuple(lines)


def sanitizer_report(log: str) -> str | None:
    """Return the sanitizer report in a QEMU log (from its first line), or None."""
    starts = [i for i in (log.find(m) for m in SANITIZER_MARKERS) if i >= 0]
    if not starts:
        return None
    begin = log.rfind("\n", 0, min(starts)) + 1
    return log[begin:begin + 6000]


@dataclass(frozen=True)
class CrashReport:
    """Why QEMU died from a crash signal: readable text, and the frames gdb read."""

    text: str
    backtrace: tuple[str, ...] = ()


#: A backtrace frame in the qgpu device model (functions qgpu_*, files hw/misc/qgpu/*.c).
QGPU_FRAME = re.compile(r"\bqgpu_\w+ \(|/qgpu/[\w-]+\.c:|\bqgpu\.c:")
#: A gdb frame that names its function ("#3  0x55d0 in main_loop_wait (..." or,
#: inlined, "#4  qemu_poll_ns (..."), as opposed to "#0  0x7f10 in ?? ()".
NAMED_FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?[A-Za-z_][\w:.~<>]* \(")
#: The file of an artifact bundle that holds a crashed QEMU's report.
BACKTRACE_FILE = "qemu-backtrace.txt"


def crash_outside_qgpu(backtrace: tuple[str, ...]) -> bool:
    """Whether a crash is known not to be qgpu's: gdb named frames, none of them qgpu's.

    Without a readable backtrace nothing is known, and the answer is False.
    """
    return (any(NAMED_FRAME.search(f) for f in backtrace)
            and not any(QGPU_FRAME.search(f) for f in backtrace))


def explain(sig: int, binary: Path, workdir: Path, *, gdb_timeout: float = 120.0
            ) -> CrashReport | None:
    """Explain QEMU's death by signal ``sig``: the crashing thread's backtrace.

    Returns None unless ``sig`` is a crash signal (SIGSEGV, SIGBUS, SIGILL,
    SIGFPE, SIGABRT). The backtrace comes from the newest core in ``workdir``,
    read by gdb against ``binary``; without a core (``kernel.core_pattern``
    sends it elsewhere) or without gdb, the text says so and ``backtrace`` is
    empty.
    """
    if sig not in CRASH_SIGNALS:
        return None
    head = f"QEMU was killed by {signal.Signals(sig).name}"
    cores = sorted(workdir.glob("core*"), key=lambda p: p.stat().st_mtime)
    if not cores:
        try:
            pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
        except OSError:
            pattern = "?"
        return CrashReport(f"{head}; it left no core in {workdir} "
                           f"(kernel.core_pattern is {pattern!r}), so there is no "
                           "backtrace.")
    gdb = shutil.which("gdb")
    if gdb is None:
        return CrashReport(f"{head}; install gdb for a backtrace from its core "
                           f"{cores[-1]}.")
    try:
        out = subprocess.run(
            [gdb, "-batch", "-nx", "-q", "-ex", "bt 40", str(binary), str(cores[-1])],
            capture_output=True, text=True, timeout=gdb_timeout, errors="replace",
            check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CrashReport(f"{head}; gdb could not read its core {cores[-1]}: {exc}")
    frames = backtrace_frames(out)
    if not frames:
        return CrashReport(f"{head}; gdb found no backtrace in its core:\n"
                           + "\n".join(out.splitlines()[-20:]))
    return CrashReport(f"{head}; backtrace of the crashing thread:\n" + "\n".join(frames),
                       frames)
