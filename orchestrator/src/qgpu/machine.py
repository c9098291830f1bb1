"""A booted guest with qgpu devices: lifecycle, console, SSH, QMP, inspection.

Lifecycle: :meth:`GuestMachine.start` boots and waits for the guest's ready
marker (detecting QEMU dying early and kernel crashes on the console; a QEMU
crash while booting that does not involve qgpu is reported as a
:class:`~qgpu.errors.QemuCrashWarning` and the boot is tried once more);
:meth:`GuestMachine.stop` powers the guest off, then QMP ``quit``, then
SIGTERM/SIGKILL, and always removes sockets and shared-memory files.
:meth:`GuestMachine.collect_artifacts` writes the bundle a failed test leaves.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import paramiko

from qgpu import accel, paths
from qgpu.config import MachineConfig, RamFile
from qgpu.console import CommandResult, SerialConsole
from qgpu.crash import BACKTRACE_FILE, crash_outside_qgpu
from qgpu.errors import QemuCrashWarning, QemuDiedError, QemuError, QgpuError
from qgpu.inspector import DeviceInspector
from qgpu.process import QemuProcess
from qgpu.qmp import QmpClient
from qgpu.shm import SharedMemory
from qgpu.ssh import GuestSsh

#: Migration capabilities of a saved guest and its restores: RAM on shared
#: files stays out of the stream (QEMU's VM templating).
IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}


#: A host forward in HMP's ``info usernet``: source address and port, then the guest's.
_HOSTFWD = re.compile(r"TCP\[HOST_FORWARD\]\s+\d+\s+\S+\s+(\d+)\s+\S+\s+22\b")


def forwarded_ssh_port(usernet: str) -> int:
    """Return the host port QEMU chose for the guest's SSH, read from ``info usernet``."""
    m = _HOSTFWD.search(usernet)
    if m is None:
        raise QemuError(f"QEMU lists no host forward to the guest's port 22: {usernet!r}")
    return int(m.group(1))


#: How a command reaches the guest: its serial console (there from boot, also with
#: the network down; one command at a time) or SSH (several at once, stdin).
Channel = Literal["console", "ssh"]


class GuestMachine:
    """One QEMU running the guest image."""

    def __init__(self, config: MachineConfig, *, ssh_key: Path | None = None,
                 ram: RamFile | None = None) -> None:
        """Describe the machine; nothing runs until :meth:`start` or :meth:`restore`.

        ``ram``: guest RAM on that file (a template being made) instead of
        anonymous memory.
        """
        self.config = config
        self.ssh_key = ssh_key
        self.ram = ram
        self.proc: QemuProcess | None = None
        self.qmp: QmpClient | None = None
        self.console: SerialConsole | None = None
        self.ssh: GuestSsh | None = None
        self.accel = ""
        self.boot_seconds = 0.0
        self.restore_seconds = 0.0          #: QEMU start to a console answer, restored
        #: QEMU start to the guest running again (state loaded, ``cont``), restored
        self.restore_running_seconds = 0.0
        #: The state this guest was restored from (what :meth:`revert` goes back to).
        self.restored_from: Path | None = None
        #: The host port forwarded to the restored guest's SSH (None: no SSH).
        self.restored_ssh_port: int | None = None
        #: How many times :meth:`revert` made this QEMU's guest its template again.
        self.reverts = 0
        #: What :func:`qgpu.template.host_settings` read after the restore.
        self.settings_at_restore: dict[str, object] | None = None
        #: Which RAM file (device, inode) :func:`qgpu.template.restore` mapped.
        self.template_ram_id: tuple[int, int] | None = None
        #: Where this guest's own console output and QMP events begin: a reverted
        #: guest's artifacts leave out those of the guests before it in this QEMU.
        self.console_log_from = 0
        self.qmp_events_from = 0
        #: The same for QEMU's own log (its size when the guest was last reverted).
        self.qemu_log_from = 0
        self.vram: dict[str, SharedMemory] = {}
        self.console_log: Path | None = None
        self.crash_report = ""              #: why QEMU crashed, once it has
        #: QEMU's work folder, kept after the guest failed to come up.
        self.kept_files: Path | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self, *, crash_retries: int = 1, connect_ssh: bool = True) -> GuestMachine:
        """Boot and wait for the guest's ready marker.

        Up to ``crash_retries`` more boots when QEMU crashes while booting and
        gdb read a backtrace that does not pass through qgpu's code (TCG crashes
        intermittently on some hosts): each such crash is reported as a
        :class:`~qgpu.errors.QemuCrashWarning` with its backtrace, never hidden.
        A crash in qgpu's code, one without a backtrace, or one more than
        allowed, raises. When QEMU cannot start, the error quotes QEMU's own
        message and names the folder where its log was kept.
        """
        crashes = 0
        while True:
            try:
                return self._start_once(connect_ssh=connect_ssh)
            except QemuDiedError as exc:
                if crash_outside_qgpu(exc.backtrace) and crashes < crash_retries:
                    crashes += 1
                    # The warning quotes the backtrace: the folder kept for this
                    # crash (with a core of up to 4 GiB) is not needed.
                    if self.kept_files is not None:
                        shutil.rmtree(self.kept_files, ignore_errors=True)
                        self.kept_files = None
                    warnings.warn(QemuCrashWarning(f"{exc}\n-> booting {self.config.name} "
                                                   "again"), stacklevel=2)
                    continue
                raise

    def _launch(self, *, ram: RamFile | None, incoming: bool) -> int | None:
        """Start QEMU and connect QMP and the serial console; return the SSH port."""
        cfg = self.config
        self.proc = QemuProcess(paths.qemu_binary(), [], name=cfg.name)
        listeners: list[socket.socket] = []
        try:
            for spec in cfg.qgpus:
                if spec.shared_vram:
                    self.vram[spec.id] = SharedMemory(spec.vram_size, f"{cfg.name}-{spec.id}")
            ser_l, ser_path = self.proc.listen("console.sock")
            listeners.append(ser_l)
            qmp_l, qmp_path = self.proc.listen("qmp.sock")
            listeners.append(qmp_l)
            self.console_log = self.proc.workdir / "console.log"
            # Port 0: QEMU binds a free port itself (read back below), so no other
            # process can take it between a check and QEMU's bind.
            self.proc.args = cfg.qemu_args(
                accel=self.accel, serial_socket=ser_path, qmp_socket=qmp_path,
                console_log=self.console_log, ssh_port=0 if cfg.ssh else None,
                vram_files={k: v.path for k, v in self.vram.items()},
                qmp_server=self.proc.workdir / "qmp-ext.sock", ram=ram)
            if incoming:
                self.proc.args += ["-incoming", "defer"]
            self.proc.start()
            ser: socket.socket | None = None
            try:
                ser = self.proc.accept(ser_l, "the serial console", 30)
                qmp_sock = self.proc.accept(qmp_l, "the QMP connection", 30)
                self.qmp = QmpClient(cfg.name, is_alive=self.proc.is_alive)
                self.qmp.connect(qmp_sock)
                self.console = SerialConsole(ser, self.proc.workdir / "console.transcript",
                                             name=cfg.name, is_alive=self.proc.is_alive)
                ser = None                      # the console owns it now
                ssh_port = forwarded_ssh_port(self.qmp.command(
                    "human-monitor-command", {"command-line": "info usernet"})) \
                    if cfg.ssh else None
            except QgpuError as exc:
                if ser is not None:
                    ser.close()
                # QEMU connects its sockets before it parses -device and friends:
                # a bad argument shows here as a lost connection. Its exit and
                # its own message are the real news.
                if self.proc.wait(2.0) is None:
                    raise
                raise self._died(QemuDiedError(str(exc)), "starting") from exc
        finally:
            for lsock in listeners:
                lsock.close()
        return ssh_port

    def _connect_ssh(self, port: int | None, *, now: bool = True, ahead: bool = True) -> None:
        """Set up SSH to the guest; connect at once, or (``now`` false) in the background.

        ``now`` false and not ``ahead``: not at all, until :meth:`ssh_run` needs it.
        """
        if port is not None and self.ssh_key is not None:
            self.ssh = GuestSsh(port, self.ssh_key)
            if now:
                self.ssh.connect(timeout=60 * self.config.timeout_scale)
            elif ahead:
                self.ssh.start_connecting(timeout=60 * self.config.timeout_scale)

    def _start_once(self, *, connect_ssh: bool) -> GuestMachine:
        cfg = self.config
        self.accel = accel.choose(cfg.accel, cfg.kernel, cfg.initrd)
        try:
            ssh_port = self._launch(ram=self.ram, incoming=False)
            assert self.console is not None
            try:
                self.boot_seconds = self.console.wait_ready(cfg.boot_timeout *
                                                            cfg.timeout_scale)
            except QemuDiedError as exc:
                raise self._died(exc, "booting") from exc
            if connect_ssh:
                self._connect_ssh(ssh_port)
        except QgpuError as exc:
            self._stop_keeping_files(exc)
            raise
        except BaseException:
            self.stop(graceful=False)
            raise
        return self

    def _stop_keeping_files(self, exc: QgpuError) -> None:
        """Stop a guest that did not come up; keep its files and add where to ``exc``."""
        workdir = self.proc.workdir if self.proc is not None else None
        self.stop(graceful=False, keep_files=True)
        if workdir is not None and workdir.exists():
            self.kept_files = workdir
            exc.add_note(f"QEMU's log, the guest console's and QEMU's core (if any) are "
                         f"kept in {workdir}/ (remove it when done).")

    def save(self, state: Path, *, timeout: float = 60.0) -> None:
        """Stop the guest and write its device state to ``state``, leaving shared RAM out.

        With guest RAM on a shared file (``ram=``), that file and ``state``
        together are the guest (:mod:`qgpu.template`). The guest stays stopped.
        """
        if self.qmp is None:
            raise QemuError(f"{self.config.name}: not running")
        if self.ram is None or self.ram.private:
            raise QemuError(f"{self.config.name}: only a guest whose RAM is on a shared "
                            "file (ram=RamFile(...)) can be saved without its RAM")
        try:
            self.qmp.command("stop")
            self.qmp.command("migrate-set-capabilities", IGNORE_SHARED)
            self.qmp.command("migrate", {"uri": f"file:{state}"})
            self._wait_migration("saving the guest", timeout)
        except QemuDiedError as exc:
            raise self._died(exc, "saving the guest") from exc

    def _wait_migration(self, doing: str, timeout: float) -> None:
        """Poll query-migrate until it completes; raise with QEMU's reason if it fails."""
        assert self.qmp is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            info = self.qmp.command("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status == "failed":
                raise QemuError(f"{self.config.name}: migration failed while {doing}: "
                                f"{info.get('error-desc', 'no reason given')}; QEMU's "
                                f"last output:\n{self.proc.log_tail()}")
            if time.monotonic() > deadline:
                raise QemuError(f"{self.config.name}: migration still {status!r} after "
                                f"{timeout:.0f} s while {doing}")
            time.sleep(0.002)

    def restore(self, ram: Path, state: Path, accel_name: str, *,
                timeout: float = 60.0, ssh_ahead: bool = True) -> GuestMachine:
        """Start the guest from a saved one instead of booting it.

        ``ram`` and ``state`` are what :meth:`save` left (a template,
        :mod:`qgpu.template`, which checks they belong to this configuration),
        ``accel_name`` the accelerator it ran under. QEMU starts with RAM
        mapped copy-on-write from ``ram`` (the file never changes) and
        ``-incoming defer``, loads the device state and runs; then the guest's
        clock is set to the host's (it stood still since the save); SSH
        connects in the background (:meth:`ssh_run` waits for it), or (not
        ``ssh_ahead``) when :meth:`ssh_run` first needs it: a handshake and a
        first command cost about 0.06 s under TCG, most of it the guest's CPU. Raises
        :class:`~qgpu.errors.QemuError` quoting QEMU if the state does not load.
        """
        self.accel = accel_name
        start = time.monotonic()
        try:
            try:
                ssh_port = self._launch(ram=RamFile(ram, private=True), incoming=True)
                assert self.qmp is not None and self.console is not None
                self.qmp.command("migrate-set-capabilities", IGNORE_SHARED)
                # A state that does not load leaves QEMU running to say why.
                self.qmp.command("migrate-incoming", {"uri": f"file:{state}",
                                                      "exit-on-error": False})
                self._wait_migration("restoring the guest", timeout)
                self._run_with_clock_set(start)
            except QemuDiedError as exc:
                raise self._died(exc, "restoring the guest") from exc
            self.restore_seconds = time.monotonic() - start
            self.restored_from, self.restored_ssh_port = state, ssh_port
            # SSH's handshake (about 0.06 s under TCG), if ahead, runs meanwhile, on the
            # guest's other CPU while its console loads a driver, say.
            self._connect_ssh(ssh_port, now=False, ahead=ssh_ahead)
        except QgpuError as exc:
            self._stop_keeping_files(exc)
            raise
        except BaseException:
            self.stop(graceful=False)
            raise
        return self

    def revert(self, *, timeout: float = 60.0, ssh_ahead: bool = True) -> GuestMachine:
        """Make this restored guest its template again, in the same QEMU.

        The template is the one :meth:`restore` started the guest from.
        QEMU's ``x-revert-to-template`` (a patch qgpu carries) drops the pages
        of guest RAM written since the restore, so they read the template's
        RAM file again, resets the machine and loads the template's state as
        the restore did, but keeps the code TCG translated from the pages
        nobody wrote: most of what a new QEMU costs under TCG is translating
        the guest's code again. Shared VRAM is zeroed, as a restored guest's
        is. Then the guest runs, its clock is set and SSH connects again (in
        the background, or on first use: ``ssh_ahead``), as after :meth:`restore`. Raises
        :class:`~qgpu.errors.QemuError` quoting QEMU if it cannot; the guest
        is then in no state to use (stop it). Host-side settings a test
        changed are not undone here: :func:`qgpu.template.revert` sets the
        qgpu devices' fault knobs back first, and refuses a guest whose
        other settings changed.
        """
        if self.qmp is None or self.console is None or self.proc is None:
            raise QemuError(f"{self.config.name}: not running")
        if self.restored_from is None:
            raise QemuError(f"{self.config.name}: not restored from a template: nothing "
                            "to revert to")
        state = self.restored_from
        start = time.monotonic()
        try:
            if self.ssh is not None:
                ssh, self.ssh = self.ssh, None
                ssh.close()
            self.qmp.command("stop")
            # What QEMU prints from here on (a device refusing the state) is this guest's.
            self.qemu_log_from = self.proc.log_size()
            for shm in self.vram.values():
                shm.zero()
            self.qmp.command("x-revert-to-template", {"filename": str(state)},
                             timeout=timeout)
            self.console.forget_output()
            if self.console_log is not None:
                self.console_log_from = self.console_log.stat().st_size
            self.qmp_events_from = len(self.qmp.events())
            self._run_with_clock_set(start)
        except QemuDiedError as exc:
            raise self._died(exc, "reverting the guest to its template") from exc
        except QemuError as exc:
            # QEMU's reason for a state it would not load (a device's) is on stderr.
            raise QemuError(f"{exc}\nQEMU's last output:\n"
                            f"{self.proc.log_tail(8, since=self.qemu_log_from)}") from exc
        self.restore_seconds = time.monotonic() - start
        self.reverts += 1
        # The same forwarded port: the host side of the user network outlives a revert.
        self._connect_ssh(self.restored_ssh_port, now=False, ahead=ssh_ahead)
        return self

    def _run_with_clock_set(self, start: float) -> None:
        """Run the stopped guest a state was loaded into; set its clock to the host's.

        ``restore_running_seconds`` is the time from ``start`` until it runs.
        """
        assert self.qmp is not None and self.console is not None
        self.qmp.command("cont")
        self.restore_running_seconds = time.monotonic() - start
        self.console.run(f"date -s @{time.time():.0f} >/dev/null",
                         timeout=30 * self.config.timeout_scale, check=True)

    def _died(self, exc: QemuDiedError, doing: str) -> QemuDiedError:
        """Return a QemuDiedError that explains how QEMU ended and where the guest was.

        It quotes the exit status, the backtrace of a crash (from QEMU's core),
        QEMU's last output and the guest console's last lines.
        """
        if self.proc is None:
            return exc
        self.proc.wait(2.0)
        status = self.proc.wait(0)
        report = self.proc.crash_report()
        parts = [f"{self.config.name}: QEMU exited (status {status}) while {doing}."]
        if report is not None:
            self.crash_report = report.text      # for the artifact bundle
            parts.append(report.text)
        parts.append(f"QEMU's last output:\n{self.proc.log_tail()}")
        if self.console_log is not None:
            with contextlib.suppress(OSError):
                tail = self.console_log.read_text(errors="replace").splitlines()[-15:]
                if any(line.strip() for line in tail):
                    parts.append("The guest console's last lines:\n" + "\n".join(tail))
        return QemuDiedError("\n".join(parts), signal=self.proc.exit_signal(),
                             crash_report=report.text if report else "",
                             backtrace=report.backtrace if report else ())

    def is_alive(self) -> bool:
        """Return whether QEMU is still running."""
        return self.proc is not None and self.proc.is_alive()

    def stop(self, *, graceful: bool = True, timeout: float = 15.0,
             keep_files: bool = False) -> int | None:
        """Power off (if ``graceful`` and the shell is at its prompt), then quit, then kill.

        Cleans up; idempotent.

        ``keep_files`` leaves QEMU's work folder (logs, a core) in place.
        """
        status = None
        try:
            if self.ssh is not None:
                ssh, self.ssh = self.ssh, None
                ssh.close()
            # A shell still busy with a command (one that timed out) would read "exit"
            # only when that ends: then QMP's quit, without waiting for it.
            if graceful and self.console is not None and self.console.at_prompt and \
                    self.is_alive():
                with contextlib.suppress(QgpuError, OSError):
                    self.console.send_line("exit")
                if self.proc is not None:
                    self.proc.wait(timeout)
            if self.qmp is not None and self.is_alive():
                with contextlib.suppress(QgpuError, OSError):
                    self.qmp.command("quit", timeout=5)
        finally:
            # Whatever failed above (or an interrupt), QMP is closed, QEMU is
            # ended and its files removed.
            if self.qmp is not None:
                qmp, self.qmp = self.qmp, None
                qmp.close()
            if self.console is not None:
                self.console.close()
                self.console = None
            if self.proc is not None:
                status = self.proc.stop(keep_files=keep_files)
            for shm in self.vram.values():
                shm.close()
            self.vram.clear()
        return status

    def __enter__(self) -> GuestMachine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- using it ------------------------------------------------------------------

    def run(self, command: str, *, timeout: float = 60.0, check: bool = False,
            watch_crashes: bool = True, over: Channel = "console") -> CommandResult:
        """Run a shell command on the serial console, or over SSH (``over="ssh"``).

        The result is the same either way. ``timeout`` is what the command may
        take on the stock kernel; it is multiplied by the machine's
        ``timeout_scale`` (slower debug kernels). ``watch_crashes=False`` for
        console commands that print old kernel reports (dmesg).
        """
        if over == "ssh":
            return self.ssh_run(command, timeout=timeout, check=check)
        if self.console is None:
            raise QemuError(f"{self.config.name}: not running")
        try:
            return self.console.run(command, timeout=timeout * self.config.timeout_scale,
                                    check=check, watch_crashes=watch_crashes)
        except QemuDiedError as exc:
            raise self._died(exc, f"running {command!r}") from exc

    def ssh_run(self, command: str, *, timeout: float = 60.0, check: bool = False,
                stdin: bytes | None = None) -> CommandResult:
        """Run a command over SSH (``timeout`` scaled like :meth:`run`'s)."""
        if self.ssh is None:
            raise QemuError(f"{self.config.name}: no SSH session (ssh disabled or no key)")
        try:
            if not self.ssh.connected:
                self.ssh.connect(timeout=60 * self.config.timeout_scale)
            result = self.ssh.run(command, timeout=timeout * self.config.timeout_scale,
                                  stdin=stdin)
        except (QgpuError, paramiko.SSHException, OSError, EOFError) as exc:
            self._raise_if_qemu_died(exc, f"running {command!r} over SSH")
            raise
        if result.status == -1:
            # The session ended without an exit status: the guest, or QEMU, went away.
            self._raise_if_qemu_died(None, f"running {command!r} over SSH")
        return result.check() if check else result

    def _raise_if_qemu_died(self, exc: BaseException | None, doing: str) -> None:
        """Raise :meth:`_died`'s explanation if QEMU has exited (or does within 2 s)."""
        if self.proc is not None and self.proc.wait(2.0) is not None:
            raise self._died(QemuDiedError(f"{self.config.name}: QEMU died while {doing}"
                                           + (f" ({exc})" if exc else "")), doing) from exc

    def inspector(self, qdev_id: str = "qgpu0") -> DeviceInspector:
        """Return the host-side inspector of device ``qdev_id``."""
        if self.qmp is None or self.proc is None:
            raise QemuError(f"{self.config.name}: not running")
        return DeviceInspector(self.qmp, qdev_id, vram=self.vram.get(qdev_id),
                               workdir=self.proc.workdir)

    # -- artifacts -----------------------------------------------------------------

    def collect_artifacts(self, dest: Path, *, files_only: bool = False) -> list[Path]:
        """Write console log, dmesg, QMP events, device statistics and trace to ``dest``.

        ``files_only``: only what is at hand without asking the guest or QEMU
        (console and QEMU logs, command line, QMP events received, crash
        report), for a guest that may still run a command or a QEMU that may
        not answer: an interrupted run's. ``summary.json`` says so.
        """
        dest.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []

        def save(name: str, text: str) -> None:
            (dest / name).write_text(text)
            written.append(dest / name)

        if self.console_log is not None and self.console_log.exists():
            with self.console_log.open("rb") as src, (dest / "console.log").open("wb") as out:
                if self.console_log_from:
                    out.write(f"[qgpu: this QEMU's guest was reverted to its template "
                              f"{self.reverts} time(s); the console output of the guests "
                              f"before this one ({self.console_log_from} bytes) is left "
                              "out]\n".encode())
                    src.seek(self.console_log_from)
                shutil.copyfileobj(src, out)
            written.append(dest / "console.log")
        if self.proc is not None:
            self.proc.keep_log(dest / "qemu.log", since=self.qemu_log_from, why=(
                f"this QEMU's guest was reverted to its template {self.reverts} time(s); "
                f"what QEMU printed for the guests before this one ({self.qemu_log_from} "
                "bytes) is left out"))
            written.append(dest / "qemu.log")
            save("qemu.cmdline", " ".join(self.proc.command_line) + "\n")
        if self.crash_report:
            save(BACKTRACE_FILE, self.crash_report + "\n")
        if self.is_alive() and not files_only:
            with contextlib.suppress(QgpuError, OSError):
                save("dmesg.txt", self.run("dmesg", timeout=20, watch_crashes=False).output)
        if self.qmp is not None:
            save("qmp-events.json", json.dumps(
                [e.as_dict() for e in self.qmp.events()[self.qmp_events_from:]], indent=1))
        if self.qmp is not None and not files_only:
            devices: dict[str, Any] = {}
            for spec in self.config.qgpus:
                with contextlib.suppress(QgpuError, OSError):
                    insp = self.inspector(spec.id)
                    devices[spec.id] = {"stats": insp.stats(), "dma-trace": insp.dma_trace()}
            save("devices.json", json.dumps(devices, indent=1))
        kernel = self.config.guest_kernel
        save("summary.json", json.dumps({
            "name": self.config.name, "accel": self.accel,
            "kernel": {"name": kernel.name, "release": kernel.release,
                       "detectors": kernel.detectors.names()} if kernel else
            {"file": str(self.config.kernel)},
            "dma_mode": str(self.config.dma_mode), "alive": self.is_alive(),
            "boot_seconds": self.boot_seconds, "time": time.time(),
            "files_only": files_only}, indent=1))
        return written
