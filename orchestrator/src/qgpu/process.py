"""A QEMU process with an explicit lifecycle.

start -> (running; :meth:`QemuProcess.check_alive` detects early death) ->
stop: ask politely (the caller's quit), wait, then SIGTERM, then SIGKILL, and
always remove the temporary folder. QEMU's stderr goes to a log file whose
tail is quoted in every error. A QEMU that crashes leaves a core in its work
folder (where the kernel's core_pattern allows), which :meth:`crash_report`
has :mod:`qgpu.crash` explain.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from qgpu import crash
from qgpu.crash import CrashReport
from qgpu.errors import QemuDiedError, QemuError, QemuTimeoutError

#: Largest core a crashed QEMU may leave (guest RAM is excluded by the config).
CORE_LIMIT = 4 << 30
@functools.cache
def _setpriv_pdeathsig() -> str | None:
    """Return util-linux's setpriv if it has ``--pdeathsig`` (2.33 and later), else None."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([setpriv, "--help"], capture_output=True, text=True,
                             timeout=10).stdout
        if "--pdeathsig" in out:
            return setpriv
    return None


def _dies_with_its_parent(command: list[str]) -> list[str]:
    """Return ``command`` run so that the kernel kills it when its parent thread ends.

    A rig killed outright (a CI job's timeout, SIGKILL) must not leave QEMUs
    running: ``setpriv --pdeathsig`` sets the death signal and then executes
    the command, keeping its process id. The signal comes when the thread that
    started it ends, so only a start from the main thread (which lives as long
    as the rig), or from a thread that says it outlives every QEMU it starts
    (an attribute ``outlives_its_qemus`` that is true), gets it; elsewhere, and
    without setpriv, the command as it is.
    """
    setpriv = _setpriv_pdeathsig()
    thread = threading.current_thread()
    if setpriv is None or (thread is not threading.main_thread() and
                           not getattr(thread, "outlives_its_qemus", False)):
        return command
    return [setpriv, "--pdeathsig", "KILL", "--", *command]


class QemuProcess:
    """Run one QEMU; own its temporary folder and log."""

    def __init__(self, binary: Path, args: Sequence[str], *, name: str = "qemu",
                 workdir: Path | None = None) -> None:
        """Prepare (not start) QEMU ``binary`` with ``args``.

        ``workdir`` holds sockets and logs; by default a fresh temporary folder
        that :meth:`stop` removes.
        """
        self.binary = binary
        self.args = list(args)
        self.name = name
        self._own_workdir = workdir is None
        # Short paths: UNIX socket paths are limited to 107 bytes.
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"qgpu-{name}-", dir="/tmp"))
        self.log_path = self.workdir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._sanitizer_checked = False

    @property
    def pid(self) -> int | None:
        """Return the QEMU process id, or None if not started."""
        return self._proc.pid if self._proc else None

    @property
    def command_line(self) -> list[str]:
        """Return the full command line."""
        return [str(self.binary), *self.args]

    def start(self) -> None:
        """Start QEMU; stdout and stderr go to :attr:`log_path`."""
        if self._proc is not None:
            raise QemuError(f"{self.name}: already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            log.write((" ".join(self.command_line) + "\n").encode())
            log.flush()
            self._proc = subprocess.Popen(_dies_with_its_parent(self.command_line),
                                          stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.workdir, start_new_session=True)
        # Allow a core, so that a crash can be explained (set from outside: no
        # preexec_fn in a process with threads). Best effort.
        with contextlib.suppress(OSError, ValueError):
            hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
            soft = CORE_LIMIT if hard == resource.RLIM_INFINITY else min(CORE_LIMIT, hard)
            resource.prlimit(self._proc.pid, resource.RLIMIT_CORE, (soft, hard))

    def is_alive(self) -> bool:
        """Return True while QEMU runs."""
        return self._proc is not None and self._proc.poll() is None

    def log_size(self) -> int:
        """Return how many bytes QEMU's log holds so far (0 if there is none)."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, lines: int = 20, *, since: int = 0) -> str:
        """Return the last ``lines`` lines of QEMU's output (not the command line).

        The log's first line is the command line the rig wrote: long, and
        never QEMU's own words. ``since``: only what QEMU printed after the
        log held that many bytes (:meth:`log_size`).
        """
        try:
            raw = self.log_path.read_bytes()
        except OSError:
            return "(no QEMU log)"
        output = raw[since:].decode(errors="replace").splitlines() if since else \
            raw.decode(errors="replace").splitlines()[1:]
        return "\n".join(output[-lines:]) if output else "(QEMU printed nothing)"

    def exit_signal(self) -> int | None:
        """Return the signal that ended QEMU, or None (running, or a plain exit)."""
        if self._proc is None or self._proc.poll() is None or self._proc.returncode >= 0:
            return None
        return -self._proc.returncode

    def crash_report(self, gdb_timeout: float = 120.0) -> CrashReport | None:
        """Explain a crash: the crashing thread's backtrace, read from QEMU's core.

        None unless QEMU died from a crash signal; see :func:`qgpu.crash.explain`.
        """
        sig = self.exit_signal()
        if sig is None:
            return None
        return crash.explain(sig, self.binary, self.workdir, gdb_timeout=gdb_timeout)

    def check_alive(self, doing: str, *, grace: float = 0.0) -> None:
        """Raise :class:`QemuDiedError` (quoting QEMU's log) if QEMU has exited.

        ``grace``: how long to wait for an exit that is under way -- after a
        lost connection, QEMU may still be aborting (writing its core).
        """
        if grace and self._proc is not None:
            self.wait(grace)
        if self._proc is not None and self._proc.poll() is not None:
            raise QemuDiedError(
                f"{self.name}: QEMU exited with status {self._proc.returncode} while {doing}. "
                f"Its last output:\n{self.log_tail()}")

    def listen(self, name: str) -> tuple[socket.socket, Path]:
        """Create a listening UNIX socket in the work folder for QEMU to connect to."""
        path = self.workdir / name
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(str(path))
        lsock.listen(1)
        return lsock, path

    def accept(self, lsock: socket.socket, what: str, timeout: float) -> socket.socket:
        """Accept QEMU's connection on ``lsock``; fail fast if QEMU dies first."""
        deadline = time.monotonic() + timeout
        lsock.settimeout(0.1)
        while True:
            self.check_alive(f"waiting for {what}")
            try:
                conn, _ = lsock.accept()
                conn.settimeout(None)
                return conn
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise QemuTimeoutError(
                        f"QEMU did not open {what} within {timeout:.0f} s; "
                        f"its output:\n{self.log_tail()}") from None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for exit; return the status or None."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Send QEMU SIGKILL if it was not reaped yet; from any thread (no clean-up here).

        :class:`subprocess.Popen` checks that its process was not reaped, so a
        process ID reused since is never signalled.
        """
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGKILL)

    def stop(self, grace: float = 5.0, *, keep_files: bool = False) -> int | None:
        """Terminate QEMU if still running (SIGTERM, then SIGKILL); clean up.

        Callers that can ask QEMU to quit (QMP ``quit``) should do so first.
        ``keep_files`` leaves the work folder (its log, a core) for a post-mortem.
        Returns QEMU's exit status. Idempotent.
        """
        status: int | None = None
        if self._proc is not None:
            status = self.wait(grace if self.is_alive() else 0)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if status is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, sig)
                status = self.wait(grace)
            self._collect_sanitizer_report()
        if self._own_workdir and not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return status

    def _collect_sanitizer_report(self) -> None:
        """Keep what QEMU's sanitizers reported (at exit, for leaks) before the log goes."""
        if self._sanitizer_checked or self.is_alive():
            return
        self._sanitizer_checked = True
        with contextlib.suppress(OSError):
            report = crash.sanitizer_report(self.log_path.read_text(errors="replace"))
            if report is not None:
                crash.SANITIZER_REPORTS.append(f"{self.name} ({self.binary}):\n{report}")

    def keep_log(self, dest: Path, *, since: int = 0, why: str = "") -> None:
        """Copy QEMU's log to ``dest`` (for artifact bundles).

        ``since``: its command line, a line saying ``why`` the rest is left
        out, then only what QEMU printed after the log held that many bytes.
        """
        if not self.log_path.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not since:
            shutil.copyfile(self.log_path, dest)
            return
        with self.log_path.open("rb") as src, dest.open("wb") as out:
            out.write(src.readline())
            out.write(f"[qgpu: {why}]\n".encode())
            src.seek(max(since, src.tell()))
            shutil.copyfileobj(src, out)
