"""SSH into the guest with paramiko (key-only login as root)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko

from qgpu.console import CommandResult
from qgpu.errors import GuestError, GuestTimeoutError

#: How many connects are under way (any thread): paramiko's logger is quiet
#: while there is one, and back at its level after the last.
_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_saved_level = logging.NOTSET


@contextlib.contextmanager
def _paramiko_quiet() -> Iterator[None]:
    """Quiet paramiko's logger while any thread connects.

    It logs every refused early attempt at ERROR level: not news here. The level
    is back as it was after the last connect, whichever thread ends last (the
    program's logging is the program's).
    """
    global _quiet_users, _quiet_saved_level
    logger = logging.getLogger("paramiko")
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet_saved_level = logger.level
            logger.setLevel(logging.CRITICAL)
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                logger.setLevel(_quiet_saved_level)


def _open_socket(host: str, port: int, *, nodelay: bool = True) -> socket.socket:
    """Connect a TCP socket for SSH, with Nagle's algorithm off (``nodelay``).

    SSH sends small packets, several in a row before an answer (a channel's
    open, its request, its data). With Nagle on, a small packet sent while
    the one before is not yet acknowledged waits for that ACK, and the other
    end (QEMU's socket of the user-mode network, in the host's kernel)
    delays its ACKs, by up to 40 ms on Linux, when no answer of its own goes
    out at once: measured on a reverted guest under TCG, 0.057 s against
    0.011 s per command, 0.14 s against 0.05 s for the handshake. paramiko
    leaves the option as the system sets it (on).
    """
    sock = socket.create_connection((host, port), timeout=10)
    try:
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


class GuestSsh:
    """One SSH session to the guest; :meth:`connect`, :meth:`run`, :meth:`close`.

    :meth:`start_connecting` opens it in a thread of its own meanwhile (the
    handshake takes about 0.06 s under TCG, most of it the guest's CPU), and
    :meth:`connect` then waits for that attempt instead of making another.
    """

    def __init__(self, port: int, key: Path, *, host: str = "127.0.0.1",
                 user: str = "root", nodelay: bool = True) -> None:
        """Describe the connection (nothing is opened yet).

        ``nodelay=False`` leaves Nagle's algorithm on, as paramiko does: only
        the benchmark's baseline wants that (:func:`_open_socket` says why).
        """
        self.host, self.port, self.key, self.user = host, port, key, user
        self.nodelay = nodelay
        self._client: paramiko.SSHClient | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        #: Set by close(): the attempt under way gives up (each attempt has its
        #: own, so that one close() cannot be undone by a later connect()).
        self._closing = threading.Event()
        #: Orders a background attempt's keeping its client against close().
        self._lock = threading.Lock()
        #: How many commands :meth:`run` started: whether anyone used the session.
        self.commands_run = 0
        #: One connect at a time: two threads' first commands make one session.
        self._connect_lock = threading.Lock()

    def start_connecting(self, timeout: float = 60.0) -> None:
        """Start :meth:`connect` in the background; the next :meth:`connect` waits for it."""
        if self._client is not None or self._thread is not None:
            return
        closing = self._closing = threading.Event()
        self._thread_error = None

        def attempt() -> None:
            try:
                self._connect(timeout, closing)
            except BaseException as exc:  # kept for connect() to raise in the caller
                self._thread_error = exc

        self._thread = threading.Thread(target=attempt, name=f"ssh-connect-{self.port}",
                                        daemon=True)
        self._thread.start()

    def _join_background(self) -> BaseException | None:
        """Wait for a background attempt; return its error (None: none, or it connected)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return None
        thread.join()
        error, self._thread_error = self._thread_error, None
        return error

    def connect(self, timeout: float = 60.0) -> None:
        """Connect, retrying until ``timeout`` while the guest's sshd comes up.

        If :meth:`start_connecting` began an attempt, wait for it and raise
        what it raised (it had a timeout of its own).
        """
        with self._connect_lock:
            error = self._join_background()
            if error is not None:
                raise error
            if self._client is None:
                self._closing = threading.Event()
                self._connect(timeout, self._closing)

    def _connect(self, timeout: float, closing: threading.Event) -> None:
        with _paramiko_quiet():
            self._connect_quietly(timeout, closing)

    def _connect_quietly(self, timeout: float, closing: threading.Event) -> None:
        deadline = time.monotonic() + timeout
        pkey = paramiko.Ed25519Key.from_private_key_file(str(self.key))
        last: Exception | None = None
        pause = 0.05                    # a restored guest answers within a few tries
        while time.monotonic() < deadline and not closing.is_set():
            client = paramiko.SSHClient()
            # A throw-away test guest with fresh host keys every boot.
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            sock: socket.socket | None = None
            try:
                sock = _open_socket(self.host, self.port, nodelay=self.nodelay)
                client.connect(self.host, self.port, username=self.user, pkey=pkey,
                               sock=sock, banner_timeout=20, auth_timeout=20,
                               look_for_keys=False, allow_agent=False)
            except BaseException as exc:
                client.close()
                if sock is not None:
                    sock.close()        # ours: client.close() reaches it only via a transport
                if not isinstance(exc, (paramiko.SSHException, OSError, EOFError)):
                    raise               # a Ctrl-C, say: not a guest still starting
                last = exc
                closing.wait(pause)
                pause = min(pause * 2, 0.5)
                continue
            with self._lock:
                if not closing.is_set():
                    self._client = client
                    return
            client.close()              # closed meanwhile: not kept open
            break
        if closing.is_set():
            raise GuestError(f"SSH to {self.user}@{self.host}:{self.port}: closed while "
                             "connecting")
        raise GuestTimeoutError(f"cannot SSH to {self.user}@{self.host}:{self.port} within "
                                f"{timeout:.0f} s: {last!r}")

    @property
    def connecting(self) -> bool:
        """Whether an attempt :meth:`start_connecting` began is still to be waited for."""
        return self._thread is not None

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` succeeded (and :meth:`close` has not run since)."""
        return self._client is not None

    def run(self, command: str, *, timeout: float = 60.0, check: bool = False,
            stdin: bytes | None = None) -> CommandResult:
        """Run ``command``; return exit status and combined output."""
        if self._client is None:
            raise GuestError("SSH: not connected; call connect() first")
        self.commands_run += 1
        chan = self._client.get_transport().open_session()  # type: ignore[union-attr]
        chan.settimeout(timeout)
        chan.set_combine_stderr(True)
        chan.exec_command(command)
        if stdin is not None:
            chan.sendall(stdin)
            chan.shutdown_write()
        chunks = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if time.monotonic() > deadline:
                    raise TimeoutError
        except TimeoutError:
            chan.close()
            raise GuestTimeoutError(f"SSH command {command!r} did not finish within "
                                    f"{timeout:.0f} s") from None
        status = chan.recv_exit_status()
        chan.close()
        result = CommandResult(command, status, b"".join(chunks).decode(errors="replace"))
        return result.check() if check else result

    def close(self) -> None:
        """Close the session, and end a background attempt to open it. Idempotent.

        A background attempt in the middle of a handshake is not waited for: it
        closes what it opened when it ends.
        """
        with self._lock:
            self._closing.set()
            client, self._client = self._client, None
        self._thread = None
        if client is not None:
            client.close()
