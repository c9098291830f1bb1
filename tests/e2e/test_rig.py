"""The rig itself: failures in the guest or QEMU end a test quickly and clearly.

These test the orchestrator, not the driver: on a kernel with heavy bug
detectors (the debug kernel) they would only take longer (about 2.5 minutes
of boots, kmemleak scans and scaled timeouts) and find nothing more, so they
run on the other kernels only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import pytest

from qgpu import cli
from qgpu.config import DmaMode, MachineConfig, QgpuSpec
from qgpu.crash import BACKTRACE_FILE, crash_outside_qgpu
from qgpu.errors import (
    GuestCrashError,
    GuestError,
    GuestTimeoutError,
    QemuCrashWarning,
    QemuDiedError,
    QemuError,
)
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine, forwarded_ssh_port

from .inner_pytest import pytest_in, run_pytest, start_pytest

MakeGuest = Callable[..., GuestMachine]


@pytest.fixture(autouse=True)
def _not_on_a_debug_kernel(request: pytest.FixtureRequest) -> None:
    if "qgpu_make_guest" not in request.fixturenames:
        return                              # no guest: nothing to slow down
    kernel: GuestKernel = request.getfixturevalue("qgpu_kernel")
    if kernel.detectors.heavy:
        pytest.skip(f"tests the rig, not the driver: not on the {kernel.name} kernel")


def test_killed_qemu_is_reported_at_once(qgpu_make_guest: MakeGuest) -> None:
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False)
    assert machine.proc is not None and machine.proc.pid is not None
    os.kill(machine.proc.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(QemuDiedError):
        machine.run("echo still there?", timeout=60)
    assert time.monotonic() - start < 10


def test_guest_panic_is_reported_with_its_console(qgpu_make_guest: MakeGuest) -> None:
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False, check_health=False)  # panics on purpose
    with pytest.raises(GuestCrashError) as info:
        machine.run("echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger", timeout=60)
    assert "sysrq" in info.value.console_tail.lower() or "panic" in str(info.value).lower()


def test_hung_command_times_out(qgpu_make_guest: MakeGuest) -> None:
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False, check_health=False)   # console stays busy
    start = time.monotonic()
    with pytest.raises(GuestTimeoutError, match="hung or too slow"):
        machine.run("sleep 600", timeout=3)
    assert time.monotonic() - start < 3 * machine.config.timeout_scale + 7
    # The shell would read a power-off request only after the command: stop does not wait.
    start = time.monotonic()
    machine.stop()
    assert time.monotonic() - start < 5, "stop waited for a shell busy with a command"


def test_stop_ends_qemu_whatever_fails_on_the_way(qgpu_make_guest: MakeGuest,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while stopping (here: QMP's quit) still ends QEMU and cleans up."""
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False, check_health=False)
    proc, qmp = machine.proc, machine.qmp
    assert proc is not None and qmp is not None

    def broken(*args: object, **kw: object) -> object:
        raise RuntimeError("QMP broke (test)")
    monkeypatch.setattr(qmp, "command", broken)
    with pytest.raises(RuntimeError, match="QMP broke"):
        machine.stop(graceful=False)
    assert proc.wait(5) is not None, "QEMU still runs after a stop that failed"
    assert machine.console is None and not machine.vram


def test_artifact_bundle(qgpu_make_guest: MakeGuest, tmp_path: object) -> None:
    import pathlib
    assert isinstance(tmp_path, pathlib.Path)
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False)
    machine.run("echo marker-for-the-console-log", check=True)
    written = {p.name for p in machine.collect_artifacts(tmp_path)}
    assert {"console.log", "dmesg.txt", "qmp-events.json", "devices.json", "qemu.log",
            "summary.json"} <= written
    assert "marker-for-the-console-log" in (tmp_path / "console.log").read_text()
    assert '"stats"' in (tmp_path / "devices.json").read_text()


def test_background_jobs_do_not_end_the_console(qgpu_make_guest: MakeGuest) -> None:
    """A finished background job must not end the console shell (and the guest)."""
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False)
    machine.run("(sleep 1; echo done >/tmp/bg) & sleep 0.1", check=True)
    deadline = time.monotonic() + 20 * machine.config.timeout_scale
    while machine.run("cat /tmp/bg 2>/dev/null").output.strip() != "done":
        assert time.monotonic() < deadline, "the background job never finished"
        time.sleep(0.5)
    assert machine.run("echo still-here", check=True).output == "still-here"


def core_lands_in_workdir() -> bool:
    """Whether this host's core_pattern writes cores into QEMU's working folder."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    return not pattern.startswith(("|", "/"))


def backtraces_readable() -> bool:
    """Whether a crashed QEMU's backtrace can be read here (core in its folder, gdb)."""
    return core_lands_in_workdir() and shutil.which("gdb") is not None


def test_qemu_crash_is_explained(qgpu_make_guest: MakeGuest, tmp_path: Path) -> None:
    """A crashed QEMU's error names the signal, shows a backtrace and the console."""
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False)
    assert machine.proc is not None and machine.proc.pid is not None
    os.kill(machine.proc.pid, signal.SIGSEGV)
    with pytest.raises(QemuDiedError) as info:
        machine.run("echo still there?", timeout=60)
    err = info.value
    assert err.signal == signal.SIGSEGV, str(err)
    assert "killed by SIGSEGV" in str(err) and "guest console's last lines" in str(err)
    machine.collect_artifacts(tmp_path)
    assert (tmp_path / BACKTRACE_FILE).read_text().strip() == err.crash_report.strip()
    if backtraces_readable():
        # The main loop thread got the signal: its frames have names. Frame 0
        # is "#0  0x... in fn (...)", or "#0  fn (...)" when fn was inlined.
        assert re.search(r"^#0 +(0x[0-9a-f]+ in )?[A-Za-z_]\w* \(", err.crash_report, re.M), \
            err.crash_report
        assert len(re.findall(r"^#0 ", err.crash_report, re.M)) == 1, err.crash_report
        assert err.backtrace and crash_outside_qgpu(err.backtrace), err.backtrace
    elif core_lands_in_workdir():
        assert "install gdb" in err.crash_report, err.crash_report
    else:
        assert "left no core" in err.crash_report, err.crash_report


def test_qemu_crash_during_an_ssh_command_is_explained(qgpu_make_guest: MakeGuest) -> None:
    """QEMU dying under an SSH command is a QemuDiedError with the crash's report, not
    an exit status of -1 or a lost connection."""
    machine = qgpu_make_guest(DmaMode.DIRECT)
    assert machine.ssh_run("true").status == 0
    assert machine.proc is not None and machine.proc.pid is not None
    pid = machine.proc.pid
    killer = threading.Timer(1.0, os.kill, (pid, signal.SIGSEGV))
    killer.start()
    start = time.monotonic()
    try:
        with pytest.raises(QemuDiedError, match="killed by SIGSEGV") as info:
            machine.ssh_run("sleep 30", timeout=60)
    finally:
        killer.cancel()
    assert "over SSH" in str(info.value)
    assert time.monotonic() - start < 25, "the death was not noticed before the command's end"


def test_qemu_crash_while_booting_is_warned_and_booted_again(
        request: pytest.FixtureRequest, qgpu_kernel: GuestKernel) -> None:
    """A crash at boot outside qgpu (as TCG does now and then on some hosts) is
    reported as a warning with its backtrace, and the guest boots again; without
    a backtrace nobody knows whose crash it was, and it fails."""
    if qgpu_kernel.detectors.heavy:
        pytest.skip(f"tests the rig, not the driver: not on the {qgpu_kernel.name} kernel")
    machine = GuestMachine(MachineConfig.for_kernel(
        qgpu_kernel, name="crash-boot", accel=request.config.getoption("--qgpu-accel"),
        ssh=False))
    crashed: list[int] = []

    def crash_first_boot() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc = machine.proc
            if machine.console is not None and proc is not None and proc.pid is not None:
                os.kill(proc.pid, signal.SIGSEGV)
                crashed.append(proc.pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=crash_first_boot)
    killer.start()
    try:
        if not backtraces_readable():
            with pytest.raises(QemuDiedError, match="killed by SIGSEGV"):
                machine.start()
            return
        with pytest.warns(QemuCrashWarning, match="killed by SIGSEGV"):
            machine.start()
        killer.join()
        assert crashed and machine.proc is not None and machine.proc.pid != crashed[0]
        assert machine.run("echo alive", check=True).output.strip() == "alive"
    finally:
        killer.join()
        machine.stop()


def test_crash_outside_qgpu_needs_named_frames_none_of_them_qgpu() -> None:
    """Only a readable backtrace that avoids the device model clears qgpu."""
    jit = "#0  0x00007f10deadbeef in ?? ()"
    tcg = ("#1  0x000055d0 in cpu_tb_exec (cpu=0x5600, itb=<optimized out>) at "
           "../accel/tcg/cpu-exec.c:458")
    inlined = "#2  qemu_poll_ns (fds=<optimized out>) at ../qemu-src/util/qemu-timer.c:341"
    ours = "#3  0x000055d1 in qgpu_engine_run (opaque=0x55e1) at ../hw/misc/qgpu.c:1012"
    assert crash_outside_qgpu((jit, tcg)) and crash_outside_qgpu((inlined,))
    assert not crash_outside_qgpu((jit,)), "no named frame: unknown, not cleared"
    assert not crash_outside_qgpu(())
    assert not crash_outside_qgpu((jit, tcg, ours))


# ---- start-up errors and the console's command protocol (issue 13, item 4) ----------

def _kernel_arg(kernel: GuestKernel) -> str:
    """The ``--kernel`` value that boots ``kernel`` (an image folder works for any)."""
    return str(kernel.image_dir)


def _forget_kept_files(err: BaseException) -> Path:
    """Return the folder a failed start kept (named in the error's note), removed."""
    notes = "\n".join(getattr(err, "__notes__", ()))
    m = re.search(r"kept in (\S+)/ ", notes)
    assert m, f"the error does not say where QEMU's log was kept: {err}\n{notes}"
    kept = Path(m.group(1))
    assert kept.is_dir(), kept
    shutil.rmtree(kept, ignore_errors=True)
    return kept


@pytest.mark.parametrize(("props", "qemu_says"), [
    ((("nosuch", "1"),), "Property 'qgpu.nosuch' not found"),
    ((("msix", "maybe"),), "'msix'"),
])
def test_a_bad_device_property_fails_at_once_with_qemus_message(
        request: pytest.FixtureRequest, qgpu_kernel: GuestKernel,
        props: tuple[tuple[str, str], ...], qemu_says: str) -> None:
    """QEMU opens its sockets before it parses -device: the rig reads EOF on QMP,
    and must say what QEMU said (not "cannot open the QMP session"), and keep the log."""
    machine = GuestMachine(MachineConfig.for_kernel(
        qgpu_kernel, name="bad-prop", accel=request.config.getoption("--qgpu-accel"),
        ssh=False, qgpus=(QgpuSpec(props=props),)))
    start = time.monotonic()
    with pytest.raises(QemuDiedError) as info:
        machine.start()
    assert time.monotonic() - start < 10
    assert qemu_says in str(info.value) and "while starting" in str(info.value), info.value
    assert "QMP" not in str(info.value).split("QEMU's last output")[0], info.value
    kept = _forget_kept_files(info.value)
    assert kept.name.startswith("qgpu-bad-prop-")


def test_a_vram_size_qemu_refuses_is_explained_by_the_cli(
        qgpu_kernel: GuestKernel, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["run", "--kernel", _kernel_arg(qgpu_kernel), "--vram-size", "3M",
                       "--", "true"])
    err = capsys.readouterr().err
    assert status == 1, err
    assert "is not a power of two between 1 MiB and 16 GiB" in err, err
    m = re.search(r"kept in (\S+)/ ", err)
    assert m and (Path(m.group(1)) / "guest.log").is_file(), err
    shutil.rmtree(m.group(1), ignore_errors=True)


def test_a_missing_kernel_file_is_named(request: pytest.FixtureRequest,
                                        qgpu_kernel: GuestKernel, tmp_path: Path) -> None:
    cfg = MachineConfig.for_kernel(qgpu_kernel, name="no-kernel", ssh=False,
                                   accel=request.config.getoption("--qgpu-accel"))
    missing = tmp_path / "bzImage"
    machine = GuestMachine(dataclasses.replace(cfg, kernel=missing))
    with pytest.raises(QemuDiedError, match=re.escape(str(missing))) as info:
        machine.start()
    _forget_kept_files(info.value)


def test_the_console_takes_any_shell_text(qgpu_make_guest: MakeGuest) -> None:
    """A trailing comment, a trailing "&", a here-document and several lines each
    run as a shell script would, and the status is the last command's."""
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False)
    res = machine.run('echo "a  b"; echo $((1+2)) # a comment')
    assert (res.status, res.output) == (0, "a  b\n3")
    res = machine.run("(sleep 0.2; echo bg > /tmp/bg-done) &")
    assert res.status == 0 and res.output == ""
    deadline = time.monotonic() + 20 * machine.config.timeout_scale
    while machine.run("cat /tmp/bg-done 2>/dev/null").output != "bg":
        assert time.monotonic() < deadline, "the background job never ran"
        time.sleep(0.2)
    res = machine.run("cat <<'EOF'\nline one $HOME\n  line two\nEOF")
    assert (res.status, res.output) == (0, "line one $HOME\n  line two")
    res = machine.run("x=4\nif [ $x = 4 ]; then\n  echo four\nfi\nfalse")
    assert (res.status, res.output) == (1, "four")
    # The shell is still in step: the next command's output is its own.
    assert machine.run("echo next", check=True).output == "next"


def test_a_console_line_too_long_for_the_terminal_is_refused(qgpu_make_guest: MakeGuest) -> None:
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False)
    with pytest.raises(GuestError, match="at most 4000 bytes a line"):
        machine.run("echo " + "x" * 5000)
    assert machine.run("echo " + "y" * 3000, check=True).output == "y" * 3000


def test_qgpu_run_keeps_the_quoting_and_exits_with_the_commands_status(
        qgpu_make_guest: MakeGuest, qgpu_kernel: GuestKernel,
        capsys: pytest.CaptureFixture[str]) -> None:
    del qgpu_make_guest                     # for the autouse skip on heavy kernels
    status = cli.main(["run", "--kernel", _kernel_arg(qgpu_kernel), "--",
                       "sh", "-c", 'printf "[%s]" "$1"; exit 3', "-", "a  b # c"])
    out = capsys.readouterr().out
    assert (status, out.strip()) == (3, "[a  b # c]")


def test_the_words_of_qgpu_run() -> None:
    assert cli.guest_command(["echo a | tr a b # c"]) == "echo a | tr a b # c"
    assert cli.guest_command(["ls", "a b", "$HOME"]) == "ls 'a b' '$HOME'"


def test_the_ssh_port_is_read_back_from_qemu() -> None:
    usernet = ("Hub -1 (n0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address"
               "  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   9       127.0.0.1 33767       "
               "10.0.2.15    22     0     0\r\n")
    assert forwarded_ssh_port(usernet) == 33767
    with pytest.raises(QemuError, match="no host forward"):
        forwarded_ssh_port("Hub -1 (n0):\r\n")


# ---- bring your own: overlays, kernel words, QEMU arguments (issue 13, item 1) ------

def _overlay(tmp_path: Path) -> Path:
    """A folder for the guest's /: a script of the user's, a link to it, a replaced file."""
    tree = tmp_path / "overlay"
    (tree / "opt" / "mine").mkdir(parents=True)
    script = tree / "opt" / "mine" / "hello.sh"
    script.write_text("#!/bin/sh\necho \"hello from the overlay: $1\"\n")
    script.chmod(0o755)
    (tree / "usr" / "local" / "bin").mkdir(parents=True)
    (tree / "usr" / "local" / "bin" / "hello").symlink_to("/opt/mine/hello.sh")
    (tree / "etc").mkdir()
    (tree / "etc" / "hosts").write_text("127.0.0.1 localhost overlaid\n")
    return tree


def test_an_overlay_adds_the_users_files_to_the_guest(qgpu_make_guest: MakeGuest,
                                                      tmp_path: Path) -> None:
    machine = qgpu_make_guest(DmaMode.DIRECT, ssh=False, overlays=[_overlay(tmp_path)])
    assert machine.run("hello world", check=True).output == "hello from the overlay: world"
    assert machine.run("cat /etc/hosts", check=True).output == "127.0.0.1 localhost overlaid"
    # The image's own files are still there, and the driver loaded as always.
    assert machine.run("test -x /opt/qgpu/bin/qgpu-tool && test -c /dev/qgpu0").status == 0


def test_the_plugin_options_bring_overlays_kernel_words_and_qemu_arguments(
        qgpu_make_guest: MakeGuest, qgpu_kernel: GuestKernel, tmp_path: Path,
        pytestconfig: pytest.Config) -> None:
    """--qgpu-overlay, --qgpu-append and --qgpu-qemu-arg reach every guest of a run."""
    del qgpu_make_guest                     # for the autouse skip on heavy kernels
    overlay = _overlay(tmp_path)
    (tmp_path / "test_byo.py").write_text(
        "import pytest\n"
        "from qgpu.config import DmaMode\n\n"
        "@pytest.mark.parametrize('qgpu_dma_mode', [DmaMode.DIRECT], indirect=True)\n"
        "def test_byo(qgpu_guest):\n"
        "    assert qgpu_guest.run('hello x', check=True).output.endswith(': x')\n"
        "    assert 'qgpu_byo=1' in qgpu_guest.run('cat /proc/cmdline', check=True).output\n"
        "    serial = qgpu_guest.run('cat /sys/class/dmi/id/product_serial',\n"
        "                            check=True).output\n"
        "    assert serial == 'qgpu-byo-serial'\n")
    out = run_pytest(tmp_path, pytestconfig, qgpu_kernel,
                     "--qgpu-overlay", str(overlay), "--qgpu-append", "qgpu_byo=1",
                     "--qgpu-qemu-arg=-smbios", "--qgpu-qemu-arg=type=1,serial=qgpu-byo-serial",
                     str(tmp_path / "test_byo.py")).output
    assert "1 passed" in out, out


def test_qgpu_run_takes_an_overlay(qgpu_make_guest: MakeGuest, qgpu_kernel: GuestKernel,
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    del qgpu_make_guest                     # for the autouse skip on heavy kernels
    status = cli.main(["run", "--kernel", _kernel_arg(qgpu_kernel),
                       "--overlay", str(_overlay(tmp_path)), "--", "hello", "a  b"])
    assert (status, capsys.readouterr().out.strip()) == (0, "hello from the overlay: a  b")


@pytest.mark.parametrize("load", [True, False], ids=["driver", "no-driver"])
def test_qgpu_run_leaves_the_device_unbound_with_no_driver(
        qgpu_make_guest: MakeGuest, qgpu_kernel: GuestKernel, load: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--no-driver (MachineConfig.load_driver=False): the device is there, nothing bound."""
    del qgpu_make_guest                     # for the autouse skip on heavy kernels
    status = cli.main(["run", "--kernel", _kernel_arg(qgpu_kernel),
                       *([] if load else ["--no-driver"]), "--",
                       "cat /sys/bus/pci/devices/0000:01:00.0/device; "
                       "basename $(readlink /sys/bus/pci/devices/0000:01:00.0/driver) "
                       "2>/dev/null || echo unbound"])
    assert (status, capsys.readouterr().out.split()) == \
        (0, ["0x5147", "qgpu" if load else "unbound"])


@pytest.mark.parametrize("switch", ["none", "-p qgpu", "--qgpu", "ini"])
def test_the_plugin_is_on_only_when_asked(tmp_path: Path, switch: str) -> None:
    """Installed, the plugin adds only options; its fixtures need -p qgpu, --qgpu or the ini key."""
    (tmp_path / "test_user.py").write_text("def test_user(qgpu_dma_mode):\n    pass\n")
    args = {"none": [], "-p qgpu": ["-p", "qgpu"], "--qgpu": ["--qgpu"], "ini": []}[switch]
    if switch == "ini":
        (tmp_path / "pytest.ini").write_text("[pytest]\nqgpu = true\n")
    res = pytest_in(tmp_path, *(["--collect-only"] if args or switch == "ini" else []), *args)
    if switch == "none":
        assert "fixture 'qgpu_dma_mode' not found" in res.stdout, res.stdout + res.stderr
    else:       # the rig's parametrization: one test per DMA mode
        assert f"{len(DmaMode)} tests collected" in res.stdout, res.stdout + res.stderr


def test_a_rig_option_without_the_rig_says_how_to_switch_it_on(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text("def test_user():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nqgpu_append = quiet\n")
    res = pytest_in(tmp_path, "--qgpu-kernel", "stock", "--qgpu-modes=direct")
    assert res.returncode == pytest.ExitCode.USAGE_ERROR, res.stdout + res.stderr
    assert "--qgpu-kernel, --qgpu-modes, ini qgpu_append: the qgpu rig is not switched on " \
        "in this run; add -p qgpu" in res.stderr, res.stderr


@pytest.mark.parametrize("scope", ["session", "module"])
def test_tests_of_a_dma_mode_on_a_shared_guest_are_one_xdist_group(tmp_path: Path,
                                                                   scope: str) -> None:
    """With pytest-xdist and shared guests, -n N --dist loadgroup keeps each mode's
    tests on one worker."""
    pytest.importorskip("xdist")
    (tmp_path / "test_user.py").write_text(
        "def test_user(qgpu_dma_mode, request):\n"
        "    group = request.node.get_closest_marker('xdist_group')\n"
        "    assert group.kwargs == {'name': f'qgpu-{qgpu_dma_mode}'}\n")
    res = pytest_in(tmp_path, "-p", "qgpu", f"--qgpu-guest-scope={scope}", "-n", "2",
                    "--dist", "loadgroup")
    assert f"{len(DmaMode)} passed" in res.stdout, res.stdout + res.stderr


def test_tests_with_a_guest_each_are_not_grouped_for_xdist(tmp_path: Path) -> None:
    """With a guest per test (the default on kernels without kmemleak) any worker
    may run any test: no xdist groups."""
    pytest.importorskip("xdist")
    (tmp_path / "test_user.py").write_text(
        "def test_user(qgpu_dma_mode, request):\n"
        "    assert request.node.get_closest_marker('xdist_group') is None\n")
    res = pytest_in(tmp_path, "-p", "qgpu", "--qgpu-kernel=stock", "-n", "2",
                    "--dist", "loadgroup")
    assert f"{len(DmaMode)} passed" in res.stdout, res.stdout + res.stderr


# ---- a run stopped from outside ------------------------------------------------------

SIGTERM_INNER = '''
import os
import threading
import time
from pathlib import Path

import pytest
from qgpu.config import DmaMode


def qemus_of_this_run():
    """'PID work-folder' of each QEMU this pytest started."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and "qemu" in os.readlink(proc / "exe"):
                found.append(f"{proc.name} {os.readlink(proc / 'cwd')}")
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)
@pytest.mark.parametrize("n", [1, 2])
def test_runs_until_stopped(qgpu_guest, n):
    # Its own guest, and the next test's, restored meanwhile.
    deadline = time.monotonic() + 120
    while len(qemus := qemus_of_this_run()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    started = os.environ["QGPU_TEST_STARTED"]

    def tell():
        Path(started + ".new").write_text("\\n".join(qemus))
        os.rename(started + ".new", started)

    threading.Timer(1.0, tell).start()      # by then in the command below
    qgpu_guest.run("echo sleeping-until-stopped; sleep 600", timeout=900)
'''


def stop_with_sigterm(folder: Path, config: pytest.Config, kernel: GuestKernel,
                      inner: str) -> tuple[str, str, float, int]:
    """Run the test file ``inner`` with a guest per test until its test writes the file
    ``$QGPU_TEST_STARTED``, then SIGTERM the run; return what the test wrote, the
    run's output, how long it took to stop and its exit status (JUnit XML in
    ``folder/report.xml``)."""
    (folder / "test_inner.py").write_text(inner)
    started = folder / "started"
    scale = kernel.timeout_scale
    proc = start_pytest(folder, config, kernel, "--qgpu-guest-scope=test",
                        f"--junitxml={folder / 'report.xml'}",
                        env={**os.environ, "QGPU_TEST_STARTED": str(started)})
    try:
        deadline = time.monotonic() + min(120 * scale, 360)
        while not started.exists():
            assert proc.poll() is None, f"the run ended before its test began:\n" \
                f"{proc.communicate()[0]}"
            assert time.monotonic() < deadline, "the inner test did not begin"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, _ = proc.communicate(timeout=min(60 * scale, 150))
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return started.read_text(), out, took, proc.returncode


def test_a_run_stopped_by_sigterm_stops_its_guests_unread_and_reports_the_test(
        tmp_path: Path, pytestconfig: pytest.Config, qgpu_kernel: GuestKernel) -> None:
    """CI systems stop a job that overran, or was cancelled, with SIGTERM, which ends
    a Python process where it stands: no teardown (QEMU's work folders, their sockets
    and logs, stayed in /tmp), no summary, no JUnit XML. The rig ends the run as Ctrl-C
    does, and quickly: its guests -- the test's, still running the test's command,
    and the next test's, restored ahead -- are stopped without being read (a check
    would wait behind the command) and their files removed; the test is reported
    failed, by name, in the summary and the JUnit XML, and its bundle keeps what was
    at hand (its guest's console and QEMU's log)."""
    started, out, took, status = stop_with_sigterm(tmp_path, pytestconfig, qgpu_kernel,
                                                   SIGTERM_INNER)
    qemus = [line.split(" ", 1) for line in started.splitlines()]
    scale = qgpu_kernel.timeout_scale
    report = tmp_path / "report.xml"
    assert status == pytest.ExitCode.INTERRUPTED, out
    assert len(qemus) == 2, f"expected the test's guest and the next one's: {qemus}\n{out}"
    assert took < 30 * scale, f"the run took {took:.0f} s to stop:\n{out}"
    assert "SIGTERM: the run was asked to stop" in out, out
    assert "\ninterrupted in its call: SIGTERM: the run was asked to stop\n" in out, out
    assert re.search(r"FAILED test_inner\.py::test_runs_until_stopped\[\S+\] - interrupted",
                     out), out
    for pid, workdir in qemus:
        exe = Path(f"/proc/{pid}/exe")
        with contextlib.suppress(OSError):
            assert "qemu" not in os.readlink(exe), f"QEMU {pid} still runs:\n{out}"
        assert not Path(workdir).exists(), f"QEMU's work folder {workdir} was left:\n{out}"
    cases = [c for c in ElementTree.parse(report).iter("testcase")
             if c.get("name", "").startswith("test_runs_until_stopped[")]
    failures = [f.get("message", "") for c in cases for f in c.iter("failure")]
    assert len(cases) == 1 and failures and "interrupted in its call: SIGTERM" in failures[0], \
        ElementTree.tostring(ElementTree.parse(report).getroot(), encoding="unicode")
    # The interrupted test's bundle holds what was at hand: its guest's console
    # (the command it ran) and QEMU's log; the run's summary names it.
    bundles = list((tmp_path / "artifacts").glob("*/test_inner.py_test_runs_until_stopped*"))
    assert len(bundles) == 1, f"no bundle of the interrupted test: {bundles}\n{out}"
    console = (bundles[0] / "console.log").read_text(errors="replace")
    assert "sleeping-until-stopped" in console, console[-2000:]
    assert (bundles[0] / "qemu.log").exists() and (bundles[0] / "qemu.cmdline").exists()
    assert json.loads((bundles[0] / "summary.json").read_text())["files_only"] is True
    assert str(bundles[0]) in out, out


SIGTERM_OWN_INNER = '''
import os
import threading
from pathlib import Path

from qgpu.config import DmaMode


def test_own_guest_until_stopped(qgpu_restore_guest):
    guest = qgpu_restore_guest(DmaMode.DIRECT)
    started = os.environ["QGPU_TEST_STARTED"]
    threading.Timer(1.0, Path(started).touch).start()      # by then in the command below
    guest.run("echo own-guest-until-stopped; sleep 600", timeout=900)
'''


def test_a_run_stopped_by_sigterm_keeps_what_its_own_guests_printed(
        tmp_path: Path, pytestconfig: pytest.Config, qgpu_kernel: GuestKernel) -> None:
    """The same for a guest a test started itself (``qgpu_restore_guest``): stopped
    unread, its console and QEMU's log kept in the test's bundle."""
    _, out, took, status = stop_with_sigterm(tmp_path, pytestconfig, qgpu_kernel,
                                             SIGTERM_OWN_INNER)
    assert status == pytest.ExitCode.INTERRUPTED, out
    assert took < 30 * qgpu_kernel.timeout_scale, f"the run took {took:.0f} s to stop:\n{out}"
    consoles = list((tmp_path / "artifacts").glob(
        "*/test_inner.py_test_own_guest_until_stopped/*/console.log"))
    assert len(consoles) == 1, f"no bundle of the interrupted test's guest:\n{out}"
    assert "own-guest-until-stopped" in consoles[0].read_text(errors="replace"), out
    assert (consoles[0].parent / "qemu.log").exists(), out
