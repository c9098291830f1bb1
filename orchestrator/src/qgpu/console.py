"""The guest's serial console, driven with pexpect.

The guest image prints ``QGPU-GUEST-READY`` when it is up, then a shell
prompt ``qgpu# `` with echo off (``qgpu_console=plain``), so a command's
output comes back clean. The shell reads and runs one line at a time, so
:meth:`SerialConsole.run` sends each command as one line, ``command eval
$'TEXT'`` followed by a unique exit-code tag, and waits for the tag, watching
for kernel panics, oopses, BUGs and WARNs all the while. Quoted that way, any
shell text gets through unchanged: a trailing comment or ``&``, several lines,
a here-document; and a syntax error is an exit status (2), not the end of the
shell (``command`` keeps ``eval``'s error from ending it).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pexpect.fdpexpect

from qgpu.errors import (
    GuestCommandError,
    GuestCrashError,
    GuestError,
    GuestTimeoutError,
    QemuDiedError,
)

READY_MARKER = "QGPU-GUEST-READY"
#: Ctrl-]: leaves :meth:`SerialConsole.interact`, as in telnet.
ESCAPE = b"\x1d"
PROMPT = "qgpu# "
#: The longest line the rig sends: a terminal in canonical mode takes 4095
#: bytes a line and drops the rest.
MAX_LINE = 4000
# What a kernel prints when something went badly wrong.
CRASH_PATTERNS = (
    r"Kernel panic - not syncing",
    r"BUG: [^\r\n]+",
    r"Oops: [^\r\n]+",
    r"WARNING: CPU: \d+ PID: \d+[^\r\n]*",
    r"general protection fault[^\r\n]*",
    r"Unable to handle kernel [^\r\n]+",
    r"watchdog: BUG: soft lockup[^\r\n]*",
    r"INFO: task [^\r\n]+ blocked for more than",
)
CRASH_RE = re.compile("|".join(CRASH_PATTERNS))
_NEVER = re.compile(r"(?!)")


def shell_quote_line(text: str) -> str:
    """Return ``text`` as one line of shell: ``$'...'``, which ash, bash and zsh read back.

    Newlines and other control characters become escapes, so that a script of
    several lines fits the line the guest's read-eval loop reads.
    """
    escapes = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t"}
    out = [escapes.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or ord(ch) == 0x7f
                               else ch) for ch in text]
    return "$'" + "".join(out) + "'"


@dataclass(frozen=True)
class CommandResult:
    """Output and exit status of a guest command."""

    command: str
    status: int
    output: str

    def check(self) -> CommandResult:
        """Raise :class:`GuestCommandError` unless the command succeeded."""
        if self.status != 0:
            raise GuestCommandError(self.command, self.status, self.output)
        return self


class SerialConsole:
    """Drive the guest shell on a serial console socket."""

    def __init__(self, sock: socket.socket, transcript: Path, *, name: str = "guest",
                 is_alive: Callable[[], bool] | None = None) -> None:
        """Wrap a connected console socket; log everything read to ``transcript``."""
        self.name = name
        self._sock = sock
        self._log = open(transcript, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._child = pexpect.fdpexpect.fdspawn(sock.fileno(), encoding="utf-8",
                                                codec_errors="replace", timeout=30)
        self._child.logfile_read = self._log
        self._is_alive = is_alive
        self._seq = 0
        #: Whether the shell is at its prompt: False from a command's start until its
        #: end tag and the next prompt are read (after a timeout, it may still run).
        self.at_prompt = False

    def close(self) -> None:
        """Close the socket and the transcript. Idempotent."""
        if not self._log.closed:
            self._log.close()
        with contextlib.suppress(OSError):
            self._sock.close()

    def _expect(self, patterns: list[str | type], timeout: float, doing: str, *,
                watch_crashes: bool = True) -> int:
        """Wait for one of ``patterns``; turn crashes, EOF and timeouts into errors."""
        crash_index = len(patterns)
        crash = CRASH_RE if watch_crashes else _NEVER
        try:
            index: int = self._child.expect([*patterns, crash, pexpect.EOF, pexpect.TIMEOUT],
                                            timeout=timeout)
        except OSError as exc:          # socket closed under us
            raise QemuDiedError(f"{self.name}: console lost while {doing}: {exc}") from exc
        if index == crash_index:
            what = self._child.match.group(0)
            seen = (self._child.before or "") + what
            # Grab the rest of the report for the error message.
            with contextlib.suppress(OSError):
                self._child.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=2)
                seen += self._child.before or ""
            raise GuestCrashError(f"{self.name}: the guest kernel reported {what!r} while "
                                  f"{doing}", seen)
        if index == crash_index + 1:
            raise QemuDiedError(f"{self.name}: console closed (QEMU exited?) while {doing}")
        if index == crash_index + 2:
            if self._is_alive is not None and not self._is_alive():
                raise QemuDiedError(f"{self.name}: QEMU died while {doing}")
            raise GuestTimeoutError(f"{self.name}: no answer within {timeout:.0f} s while "
                                    f"{doing}; the guest is hung or too slow. Last output: "
                                    f"{(self._child.before or '')[-500:]!r}")
        return index

    def wait_ready(self, timeout: float) -> float:
        """Wait for the ready marker and the first prompt; return seconds waited."""
        start = time.monotonic()
        self._expect([re.escape(READY_MARKER)], timeout, "booting")
        self._expect([re.escape(PROMPT)], 30, "waiting for the first prompt")
        self.at_prompt = True
        return time.monotonic() - start

    def run(self, command: str, *, timeout: float = 60.0, check: bool = False,
            watch_crashes: bool = True) -> CommandResult:
        """Run ``command`` in the guest shell; return its status and output.

        A kernel crash report on the console raises :class:`GuestCrashError`, unless
        ``watch_crashes`` is False: for commands that print old reports themselves
        (``dmesg``), whose output would otherwise look like a new crash.
        """
        self._seq += 1
        tag = f"QGPU-RC-{self._seq}="
        line = f"command eval {shell_quote_line(command)}; echo \"{tag}$?\"\n"
        if len(line.encode()) > MAX_LINE:
            raise GuestError(f"{self.name}: {command[:60]!r}... is {len(line.encode())} bytes "
                             f"quoted, and the guest's terminal reads at most {MAX_LINE} "
                             "bytes a line: run it over SSH (ssh_run), or from a file")
        self.at_prompt = False
        try:
            self._child.send(line)
        except OSError as exc:
            raise QemuDiedError(f"{self.name}: console lost (QEMU exited?) before "
                                f"{command!r}: {exc}") from exc
        self._expect([re.escape(tag) + r"(\d+)"], timeout, f"running {command!r}",
                     watch_crashes=watch_crashes)
        status = int(self._child.match.group(1))
        output = (self._child.before or "").replace("\r\n", "\n")
        # Drop the prompt the shell printed before our command's output.
        output = output.removeprefix(PROMPT).lstrip("\n")
        self._expect([re.escape(PROMPT)], 30, f"waiting for the prompt after {command!r}",
                     watch_crashes=watch_crashes)
        self.at_prompt = True
        result = CommandResult(command, status, output.rstrip("\n"))
        return result.check() if check else result

    def interact(self, stdin: int = 0, stdout: int = 1) -> None:
        """Join the console and a terminal until the guest powers off or Ctrl-] is typed.

        The terminal (``stdin``, if it is one) is in raw mode meanwhile, so keys
        reach the guest's line editor as typed; what the guest prints goes to
        ``stdout`` and to the transcript.
        """
        self.at_prompt = False
        pending = self._child.buffer        # read by pexpect, not yet shown
        self._child.buffer = ""
        if pending:
            os.write(stdout, pending.encode())
        saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
        try:
            if saved is not None:
                tty.setraw(stdin)
            sock = self._sock.fileno()
            while True:
                ready, _, _ = select.select([sock, stdin], [], [])
                if sock in ready:
                    try:
                        data = self._sock.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        return              # the guest powered off: QEMU closed it
                    os.write(stdout, data)
                    self._log.write(data.decode("utf-8", "replace"))
                if stdin in ready:
                    keys = os.read(stdin, 1024)
                    if not keys or ESCAPE in keys:
                        keys = keys.split(ESCAPE)[0]
                        if keys:
                            self._sock.sendall(keys)
                        return              # end of input, or Ctrl-]: detach
                    self._sock.sendall(keys)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)

    def send_line(self, line: str) -> None:
        """Send raw input (e.g. ``exit`` to power the guest off)."""
        self.at_prompt = False
        try:
            self._child.send(line + "\n")
        except OSError as exc:
            raise QemuDiedError(f"{self.name}: console lost (QEMU exited?): {exc}") from exc

    def forget_output(self) -> None:
        """Drop what was read and not yet matched: the guest was reverted to its prompt.

        A guest reverted to a saved state (:meth:`GuestMachine.revert`) is
        back at the prompt it was saved at, and nothing it printed before
        belongs to it any more.
        """
        with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF, OSError):
            while self._child.read_nonblocking(1 << 20, timeout=0):
                pass
        self._child.buffer = ""
        self._child.before = ""
        self.at_prompt = True

    def drain(self, seconds: float = 0.2) -> str:
        """Read whatever arrives within ``seconds``; raise if it shows a crash."""
        try:
            index = self._child.expect([CRASH_RE, pexpect.TIMEOUT, pexpect.EOF],
                                       timeout=seconds)
        except OSError:
            return ""
        text: str = self._child.before or ""
        if index == 0:
            raise GuestCrashError(f"{self.name}: the guest kernel reported "
                                  f"{self._child.match.group(0)!r}", text)
        return text
