"""Synchronous QMP facade over :mod:`qemu.qmp`.

:class:`QmpClient` runs qemu.qmp's asyncio client on a private event loop in
a daemon thread, so callers (pytest tests, the CLI) get a plain blocking API
in which every call has a timeout, and every event QEMU sends is kept in an
in-memory history that tests can wait on and artifact bundles can dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from qemu.qmp import ExecuteError, QMPClient, QMPError

from qgpu.errors import QemuDiedError, QemuTimeoutError, QmpError


class CheckAlive(Protocol):
    """Raise if QEMU has exited (waiting up to ``grace`` s for an exit under way)."""

    def __call__(self, doing: str, *, grace: float = ...) -> None:
        """Raise :class:`QemuDiedError` if QEMU exited while ``doing``."""

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class QmpEvent:
    """One asynchronous QMP event, as QEMU sent it, with our arrival time."""

    name: str
    data: dict[str, Any]
    timestamp: float
    received: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form, for artifact bundles."""
        return {"event": self.name, "data": self.data, "timestamp": self.timestamp}


class QmpClient:
    """A blocking QMP connection with timeouts and an event history.

    Lifecycle: construct, :meth:`connect` (to a listening socket, or a socket
    QEMU connected to), use, :meth:`close`. Also a context manager.
    """

    def __init__(self, name: str = "qgpu", *, timeout: float = DEFAULT_TIMEOUT,
                 is_alive: Callable[[], bool] | None = None,
                 check_alive: CheckAlive | None = None) -> None:
        """Create an unconnected client.

        ``is_alive`` lets a timed-out call say whether QEMU died meanwhile;
        ``check_alive`` (:meth:`QemuProcess.check_alive`), called when the
        connection is lost, raises :class:`QemuDiedError` quoting QEMU's log.
        """
        self.name = name
        self.timeout = timeout
        self._is_alive = is_alive
        self._check_alive = check_alive
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"qmp-{name}", daemon=True)
        self._thread.start()
        self._client: QMPClient | None = None
        self._events: list[QmpEvent] = []
        self._cond = threading.Condition()
        self._reader: asyncio.Future[None] | None = None

    # -- plumbing ---------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        limit = self.timeout if timeout is None else timeout
        try:
            return future.result(limit)
        except TimeoutError:
            future.cancel()
            if self._is_alive is not None and not self._is_alive():
                raise QemuDiedError(f"QEMU died during QMP {what}") from None
            raise QemuTimeoutError(
                f"QMP {what} got no answer within {limit:.0f} s: QEMU is hung or "
                "overloaded; raise the timeout if the machine is just slow") from None

    async def _collect_events(self) -> None:
        assert self._client is not None
        async for message in self._client.events:
            event = cast(dict[str, Any], dict(message))
            ts = event.get("timestamp", {})
            stamp = float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
            with self._cond:
                self._events.append(QmpEvent(str(event["event"]),
                                             dict(event.get("data", {})), stamp))
                self._cond.notify_all()

    # -- lifecycle --------------------------------------------------------

    def connect(self, sock: socket.socket | str, timeout: float | None = None) -> None:
        """Open the session on ``sock`` (a connected socket or a UNIX socket path)."""
        async def _connect() -> None:
            self._client = QMPClient(self.name)
            await self._client.connect(sock)
            self._reader = asyncio.ensure_future(self._collect_events())

        try:
            self._run(_connect(), timeout, "connect")
        except QMPError as exc:
            raise QmpError(f"cannot open the QMP session: {exc}") from exc

    def close(self) -> None:
        """Disconnect (if connected) and stop the event-loop thread. Idempotent."""
        if self._loop.is_closed():
            return
        if self._client is not None:
            async def _disconnect() -> None:
                assert self._client is not None
                if self._reader is not None:
                    self._reader.cancel()
                await self._client.disconnect()

            with contextlib.suppress(QmpError, QemuTimeoutError, QemuDiedError, QMPError,
                                     OSError, EOFError):
                self._run(_disconnect(), 5.0, "disconnect")
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> QmpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands ---------------------------------------------------------

    def command(self, cmd: str, args: Mapping[str, object] | None = None, *,
                timeout: float | None = None) -> Any:
        """Run QMP ``cmd`` and return its ``return`` value.

        Raises :class:`QmpError` with QEMU's own message if the command fails.
        """
        if self._client is None:
            raise QmpError(f"QMP {cmd}: not connected; call connect() first")
        client = self._client
        try:
            return self._run(client.execute(cmd, args), timeout, cmd)
        except ExecuteError as exc:
            raise QmpError(f"QMP {cmd} {dict(args or {})} failed: {exc}") from exc
        except (QMPError, EOFError, OSError) as exc:
            if self._check_alive is not None:
                # QEMU may still be aborting: wait for it, then quote its last words.
                self._check_alive(f"running QMP {cmd}", grace=5.0)
            if self._is_alive is not None and not self._is_alive():
                raise QemuDiedError(f"QEMU died during QMP {cmd}") from exc
            raise QmpError(f"QMP {cmd}: connection failed: {exc!r}") from exc

    def hmp(self, command_line: str, *, timeout: float | None = None) -> str:
        """Run a human-monitor command and return its text output."""
        out = self.command("human-monitor-command", {"command-line": command_line},
                           timeout=timeout)
        return str(out)

    def qom_get(self, path: str, prop: str) -> Any:
        """Read QOM property ``prop`` of the object at ``path``."""
        return self.command("qom-get", {"path": path, "property": prop})

    def qom_set(self, path: str, prop: str, value: object) -> None:
        """Set QOM property ``prop`` of the object at ``path``."""
        self.command("qom-set", {"path": path, "property": prop, "value": value})

    # -- events -----------------------------------------------------------

    def events(self) -> list[QmpEvent]:
        """Return a copy of every event received so far, oldest first."""
        with self._cond:
            return list(self._events)

    def wait_event(self, name: str, timeout: float | None = None, *, after: int) -> QmpEvent:
        """Wait for event ``name`` among events number ``after`` onwards.

        ``after`` is required: take ``len(events())`` before the action that
        causes the event, so that an older event of the same name never matches
        and one that comes before this call does. An event QEMU sent just before
        it exited (SHUTDOWN, say) is still found.
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            dead_seen = False
            while True:
                dead = self._is_alive is not None and not self._is_alive()
                for event in self._events[after:]:
                    if event.name == name:
                        return event
                if dead and dead_seen:
                    raise QemuDiedError(f"QEMU died while waiting for QMP event {name}")
                if dead:
                    # The reader thread may not have stored QEMU's last words yet.
                    dead_seen = True
                    self._cond.wait(1.0)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QemuTimeoutError(f"no QMP event {name} within {limit:.0f} s")
                self._cond.wait(min(remaining, 0.5))
