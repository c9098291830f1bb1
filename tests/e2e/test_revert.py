"""Guests reverted to their template in the same QEMU (qgpu.template.revert, issue 12).

A restored guest that served a test can be made its template again without a new
QEMU (``x-revert-to-template``, qemu-device/patches/0008): under TCG the code
translated from the template's RAM is kept. A reverted guest must be as fresh as a
restored one -- nothing the test before it wrote, in guest RAM, VRAM or the device;
a new VM generation ID (the kernel reseeds its RNG); its clock set -- and work as
one in every DMA mode, MSI-X included. What cannot be reverted is refused with a
reason, and a failed revert leaves the rig a restored guest instead.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from qgpu import accel, pytest_rig, template
from qgpu.config import DmaMode
from qgpu.errors import QemuError, SetupError
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine

from .guestio import check_fill_with_interrupt, sh, tool
from .inner_pytest import run_pytest

RestoreGuest = Callable[..., GuestMachine]
MiB = 1 << 20
RESEEDED = "crng reseeded due to virtual machine fork"


def _restored(restore: RestoreGuest, mode: DmaMode) -> GuestMachine:
    guest = restore(mode)
    if guest.restored_from is None:
        pytest.fail(f"the {mode} guest was booted, not restored: nothing to revert to")
    if guest.accel != "tcg":
        pytest.skip(f"reverts are made under TCG only; this guest runs on {guest.accel}")
    return guest


def _reseeded(guest: GuestMachine) -> bool:
    """Whether the guest's kernel says it reseeded for a fork (waits up to 5 s, scaled)."""
    polls = int(200 * guest.config.timeout_scale)
    return guest.run(f"i=0; until dmesg | grep -q '{RESEEDED}' || [ $i -ge {polls} ]; do "
                     f"usleep 25000; i=$((i+1)); done; dmesg | grep -q '{RESEEDED}'",
                     timeout=30).status == 0


def _jit(guest: GuestMachine) -> dict[str, int]:
    """TCG's counters: translated blocks, flushes of them all, invalidations."""
    assert guest.qmp is not None
    text = guest.qmp.command("human-monitor-command", {"command-line": "info jit"})
    return {name: int(count) for name, count in
            re.findall(r"^(TB count|TB flush count|TB invalidate count)\s+(\d+)", text, re.M)}


def test_a_reverted_guest_is_its_template_again(qgpu_restore_guest: RestoreGuest,
                                                qgpu_dma_mode: DmaMode, rng: random.Random,
                                                tmp_path: Path) -> None:
    """After a test's worth of changes -- a file, the driver, DMA into VRAM, device
    statistics, console output -- a revert leaves none of them, gives the guest a
    new generation ID its kernel reseeds on, and the guest does DMA with
    interrupts again."""
    guest = _restored(qgpu_restore_guest, qgpu_dma_mode)
    assert guest.qmp is not None and guest.console_log is not None
    sh(guest, "dd if=/dev/urandom of=/tmp/qgpu-before-revert bs=1M count=8 2>/dev/null")
    sh(guest, "insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0")
    guest.qmp.hmp("trace-event qgpu_doorbell on")      # QEMU's log: a line of this test
    tool(guest, f"fill 0 {1 * MiB} 0x5a5a5a5a")
    guest.qmp.hmp("trace-event qgpu_doorbell off")
    guest.run("echo QGPU-BEFORE-THE-REVERT", over="console", check=True)
    insp = guest.inspector()
    assert insp.stats()["bytes-fill"] == MiB
    generation = guest.qmp.command("query-vm-generation-id")["guid"]

    template.revert(guest)

    assert guest.reverts == 1
    assert guest.qmp.command("query-vm-generation-id")["guid"] != generation, \
        "a reverted guest kept its generation ID: its kernel would not know it was forked"
    assert _reseeded(guest), "the reverted kernel did not reseed its RNG for the fork:\n" + \
        sh(guest, "dmesg | tail -20")
    assert sh(guest, "test -e /tmp/qgpu-before-revert && echo kept || echo gone").strip() \
        == "gone", "a file written before the revert survived it"
    assert sh(guest, "grep -c '^qgpu ' /proc/modules || true").strip() == "0", \
        "the driver loaded before the revert is still loaded"
    assert insp.vram_backend(0, MiB) == bytes(MiB), "VRAM was not zeroed by the revert"
    stats = insp.stats()
    assert stats == dict.fromkeys(stats, 0), f"the device's statistics survived: {stats}"
    assert insp.dma_trace() == []
    # The test's artifacts are this guest's, not those of the guest before it.
    bundle = guest.collect_artifacts(tmp_path / "artifacts")
    console = (tmp_path / "artifacts" / "console.log").read_text(errors="replace")
    assert tmp_path / "artifacts" / "console.log" in bundle
    assert "QGPU-BEFORE-THE-REVERT" in guest.console_log.read_text(errors="replace")
    assert "QGPU-BEFORE-THE-REVERT" not in console and \
        console.startswith("[qgpu: this QEMU's guest was reverted"), console[:400]
    assert guest.proc is not None and "qgpu_doorbell" in guest.proc.log_tail(1000)
    qemu_log = (tmp_path / "artifacts" / "qemu.log").read_text(errors="replace").splitlines()
    assert qemu_log[0] == " ".join(guest.proc.command_line), qemu_log[0]
    assert qemu_log[1].startswith("[qgpu: this QEMU's guest was reverted") and \
        not any("qgpu_doorbell" in line for line in qemu_log), "\n".join(qemu_log[1:20])

    sh(guest, "insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0")
    check_fill_with_interrupt(guest, insp, rng, "reverted")


def _uptime(guest: GuestMachine) -> float:
    """The guest kernel's monotonic clock, seconds since its boot."""
    return float(guest.run("cat /proc/uptime", over="console", check=True)
                 .output.split()[0])


def test_a_reverted_guest_runs_on_from_the_template_s_time(
        qgpu_restore_guest: RestoreGuest) -> None:
    """The guest's clocks (its TSC, so its monotonic time and jiffies) go back to the
    template's with the rest of it, as in a new QEMU. Carried on from the guest
    before, they would jump forward by however long this QEMU's guests ran: RCU
    stall reports, timers that fire all at once."""
    guest = _restored(qgpu_restore_guest, DmaMode.DIRECT)
    first = _uptime(guest)
    sh(guest, "sleep 3")
    before = _uptime(guest)
    assert before >= first + 3
    template.revert(guest)
    after = _uptime(guest)
    assert after < first + 2, \
        f"the reverted guest's monotonic clock reads {after:.2f} s: its template's was " \
        f"{first:.2f} s (after the restore), the guest's before the revert {before:.2f} s"


def _config_word(guest: GuestMachine, bdf: str, offset: int) -> int:
    """A 16-bit word of a PCI function's config space, as the guest reads it."""
    out = sh(guest, f"od -An -tx2 -j{offset} -N2 /sys/bus/pci/devices/{bdf}/config")
    return int(out.split()[0], 16)


def test_a_guest_whose_root_port_took_an_aer_error_reverts(
        qgpu_restore_guest: RestoreGuest) -> None:
    """An AER error message received by the qgpu's root port sets its sticky error
    source registers, which a machine reset leaves as they are (as hardware keeps
    them over a hot reset). A state load checks such read-only bytes against the
    device's, and would refuse the template's: a revert loads them instead, so the
    root port reads as in a new QEMU."""
    guest = _restored(qgpu_restore_guest, DmaMode.DIRECT)
    assert guest.qmp is not None
    root_port = sh(guest, "for d in /sys/bus/pci/devices/*; do "
                          "[ \"$(cat $d/vendor):$(cat $d/device)\" = 0x1b36:0x000c ] && "
                          "basename $d; done; true").split()
    assert len(root_port) == 1, f"the qgpu's root port (1b36:000c): {root_port}"
    aer = 0x100                             # QEMU's pcie-root-port: AER first
    source = aer + 0x36                     # PCI_ERR_ROOT_ERR_SRC
    assert _config_word(guest, root_port[0], source) == 0
    guest.qmp.command("human-monitor-command",
                      {"command-line": "pcie_aer_inject_error qgpu0-rp POISON_TLP"})
    assert _config_word(guest, root_port[0], source) != 0, \
        "the injected error did not set the root port's error source"
    template.revert(guest)
    assert guest.reverts == 1
    assert _config_word(guest, root_port[0], source) == 0


def test_a_revert_keeps_the_translated_code(qgpu_restore_guest: RestoreGuest) -> None:
    """What a revert is for: under TCG, the code translated from pages the test did not
    write survives it. (Loading a state normally flushes every translation, and
    the machine reset used to write the -kernel image over the guest's code.)"""
    guest = _restored(qgpu_restore_guest, DmaMode.DIRECT)
    sh(guest, "insmod /opt/qgpu/qgpu.ko && tool=/opt/qgpu/bin/qgpu-tool && "
              "$tool fill 0 4096 1 >/dev/null && rmmod qgpu")
    before = _jit(guest)
    template.revert(guest)
    sh(guest, "true")
    after = _jit(guest)
    assert after["TB flush count"] == before["TB flush count"], \
        f"the revert flushed every translation: {before} -> {after}"
    # The TB count alone cannot tell: invalidated blocks stay counted until a flush.
    # Only those of the pages the test wrote are invalidated (552 of 52,648 here;
    # rewriting the kernel image during the reset invalidated 42,667).
    invalidated = after["TB invalidate count"] - before["TB invalidate count"]
    assert invalidated < before["TB count"] // 10, \
        f"the revert invalidated {invalidated} translations: {before} -> {after}"


def test_a_guest_reverted_without_ssh_ahead_connects_on_first_use(
        qgpu_restore_guest: RestoreGuest) -> None:
    """The pool reverts a guest for a test whose function ran no SSH command without
    connecting SSH ahead (a handshake is about 0.15 s under TCG): nothing
    connects until a command needs it, and then it does."""
    guest = _restored(qgpu_restore_guest, DmaMode.DIRECT)
    sh(guest, "true")
    template.revert(guest, ssh_ahead=False)
    assert guest.ssh is not None
    assert not guest.ssh.connecting and not guest.ssh.connected, \
        "SSH began to connect without being asked"
    boot_id = sh(guest, "cat /proc/sys/kernel/random/boot_id", over="console")
    assert sh(guest, "cat /proc/sys/kernel/random/boot_id").strip() == boot_id.strip()
    assert guest.ssh.connected and guest.ssh.commands_run == 1
    template.revert(guest)                              # the default: ahead
    assert guest.ssh is not None and (guest.ssh.connecting or guest.ssh.connected)


def test_what_cannot_be_reverted_is_refused_with_a_reason(qgpu_restore_guest: RestoreGuest
                                                         ) -> None:
    """A running VM, a missing state file, a VM without x-ignore-shared: QEMU refuses
    before it changes anything, and the guest runs on."""
    guest = _restored(qgpu_restore_guest, DmaMode.DIRECT)
    assert guest.qmp is not None and guest.restored_from is not None
    sh(guest, "touch /tmp/qgpu-still-here")
    state = {"filename": str(guest.restored_from)}
    with pytest.raises(QemuError, match="the VM is running: stop it first"):
        guest.qmp.command("x-revert-to-template", state)
    guest.qmp.command("stop")
    try:
        with pytest.raises(QemuError, match="/nonexistent/state"):
            guest.qmp.command("x-revert-to-template", {"filename": "/nonexistent/state"})
        guest.qmp.command("migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": False}]})
        with pytest.raises(QemuError, match="set the x-ignore-shared capability first"):
            guest.qmp.command("x-revert-to-template", state)
        guest.qmp.command("migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": True}]})
    finally:
        guest.qmp.command("cont")
    sh(guest, "test -e /tmp/qgpu-still-here")


def test_a_guest_whose_fault_knobs_a_test_set_is_reverted_with_them_set_back(
        qgpu_restore_guest: RestoreGuest, rng: random.Random) -> None:
    """A test that injects faults sets the device's x- properties from the host,
    which a reset and the template's state would not undo: the revert sets them
    back to what they were at the restore, and the device's interrupts arrive
    again. (Refusing such a guest cost a new QEMU for every fault test.)"""
    guest = _restored(qgpu_restore_guest, DmaMode.DIRECT)
    assert guest.qmp is not None
    qgpu0 = "/machine/peripheral/qgpu0"
    sh(guest, "insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0")
    guest.qmp.qom_set(qgpu0, "x-fault-irq-drop", 1000)
    guest.qmp.qom_set(qgpu0, "x-dma-delay-ns", 2000)
    tool(guest, "fill 0 4096 0x5a5a5a5a")         # (completed by polling)
    assert guest.inspector().stats()["faults-injected"] >= 1, "no interrupt was dropped"
    guest.qmp.qom_set(qgpu0, "x-fault-aer", "correctable")    # an action: reset clears it
    assert template.why_not_revertible(guest) is None

    template.revert(guest)

    assert guest.reverts == 1
    assert guest.qmp.qom_get(qgpu0, "x-fault-irq-drop") == 0
    assert guest.qmp.qom_get(qgpu0, "x-dma-delay-ns") == 0
    assert guest.qmp.qom_get(qgpu0, "x-fault-aer") == ""
    assert guest.settings_at_restore == template.host_settings(guest)
    sh(guest, "insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0")
    check_fill_with_interrupt(guest, guest.inspector(), rng, "reverted")


def test_a_guest_whose_template_or_migration_settings_changed_is_not_reverted(
        qgpu_kernel: GuestKernel, pytestconfig: pytest.Config, tmp_path: Path) -> None:
    """A template made again at the same place has new files, while the guest's QEMU
    still maps the old RAM file: loading the new state onto it would corrupt the
    guest, so the revert is refused and QEMU not asked. A migration capability set
    from the host would outlive the revert: refused too, naming it."""
    cfg = pytest_rig._base_config(pytestconfig, DmaMode.DIRECT)
    real = template.get(cfg, ssh_key=qgpu_kernel.ssh_key)
    if real.accel != "tcg":
        pytest.skip(f"reverts are made under TCG only; this template runs on {real.accel}")
    copy = tmp_path / real.folder.name              # the key names the folder
    copy.mkdir()
    (copy / "ram").symlink_to(real.ram)             # mapped privately: never written
    for name in ("info.json", "state"):
        shutil.copy(real.folder / name, copy / name)
    guest = template.restore(cfg, ssh_key=qgpu_kernel.ssh_key,
                             template=template.Template(copy))
    try:
        assert guest.qmp is not None
        assert template.why_not_revertible(guest) is None
        guest.qmp.command("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True}]})
        with pytest.raises(SetupError, match="changed from the host: migration capabilities"):
            template.revert(guest)
        guest.qmp.command("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": False}]})
        sh(guest, "touch /tmp/qgpu-still-here")
        other = tmp_path / "another-ram"                # "made again": another file
        with other.open("wb") as f:
            f.truncate(real.ram.stat().st_size)
        (copy / "ram").unlink()
        (copy / "ram").symlink_to(other)
        assert template.Template(copy).complete()
        with pytest.raises(SetupError, match="was made again since the guest was restored"):
            template.revert(guest)
        assert guest.reverts == 0
        sh(guest, "test -e /tmp/qgpu-still-here")
        (copy / "ram").unlink()
        (copy / "ram").symlink_to(real.ram)             # the same file again: reverts
        template.revert(guest)
        assert guest.reverts == 1
        assert sh(guest, "test -e /tmp/qgpu-still-here || echo gone").strip() == "gone"
    finally:
        guest.stop(graceful=False)


REVERTED = '''
import time

import pytest
from qgpu.config import DmaMode

DIRECT = pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)
MARK = "/tmp/qgpu-revert-mark"
GUESTS = {}


def kept(pool, name):
    # Whether the guest of test NAME waits to be reverted (its last read done).
    with pool.idle_lock:
        return GUESTS[name] in pool.idle.get(DmaMode.DIRECT, [])


def wait_until_kept(pool, name):
    deadline = time.monotonic() + 60
    while not kept(pool, name):
        assert time.monotonic() < deadline, f"{name}'s guest was not kept for a revert"
        time.sleep(0.05)


@DIRECT
def test_1_leaves_a_mark(qgpu_guest):
    GUESTS["test_1"] = qgpu_guest
    qgpu_guest.run(f"touch {MARK} && /opt/qgpu/bin/qgpu-tool fill 0 4096 0x5a5a5a5a",
                   check=True)


@DIRECT
def test_2_sets_a_fault_knob(qgpu_guest, _qgpu_pool):
    GUESTS["test_2"] = qgpu_guest
    qgpu_guest.qmp.qom_set("/machine/peripheral/qgpu0", "x-fault-irq-drop", 5)
    wait_until_kept(_qgpu_pool, "test_1")


@DIRECT
def test_3_has_test_1s_guest_without_its_mark(qgpu_guest, qgpu_inspector, _qgpu_pool):
    GUESTS["test_3"] = qgpu_guest
    assert qgpu_guest is GUESTS["test_1"] and qgpu_guest.reverts == 1
    assert qgpu_guest.run(f"test -e {MARK}").status != 0, "test_1's file is here"
    assert qgpu_inspector.vram_backend(0, 4096) == bytes(4096), "test_1's VRAM is here"
    # A fault knob set from the host does not keep a guest from a revert.
    wait_until_kept(_qgpu_pool, "test_2")
    # Unseen by the check before a revert, which x-revert-to-template then refuses.
    qgpu_guest.qmp.command("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-ignore-shared", "state": False}]})


@DIRECT
def test_4_has_test_2s_guest_with_its_knob_set_back(qgpu_guest, _qgpu_pool):
    assert qgpu_guest is GUESTS["test_2"] and qgpu_guest.reverts == 1
    assert qgpu_guest.qmp.qom_get("/machine/peripheral/qgpu0", "x-fault-irq-drop") == 0
    wait_until_kept(_qgpu_pool, "test_3")


@DIRECT
def test_5_has_a_new_guest(qgpu_guest):
    assert qgpu_guest is not GUESTS["test_3"] and qgpu_guest.reverts == 0
    assert not GUESTS["test_3"].is_alive()
'''


def test_a_guest_that_cannot_be_reverted_is_restored_and_the_run_says_so(
        qgpu_kernel: GuestKernel, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """Without spare guests, each test's guest is made as it starts: an earlier test's,
    reverted, if one waits (the last one kept). test_3 gets test_1's guest, reverted
    -- it finds none of test_1's marks -- and spoils its own revert, which QEMU then
    refuses: test_5 gets a restored guest instead, with a warning that quotes QEMU,
    and the run's summary names it. test_2 set a fault knob: its guest is kept,
    and test_4 gets it with the knob set back."""
    if qgpu_kernel.detectors.heavy:
        pytest.skip("the plugin's reverts are checked on the kernels without kmemleak")
    if accel.choose(pytestconfig.getoption("--qgpu-accel"), qgpu_kernel.kernel,
                    qgpu_kernel.initrd) != "tcg":
        pytest.skip("reverts are made under TCG only")
    (tmp_path / "test_inner.py").write_text(REVERTED)
    out = run_pytest(tmp_path, pytestconfig, qgpu_kernel, "--qgpu-guest-scope=test",
                     "--qgpu-spare-guest=off", str(tmp_path / "test_inner.py")).output
    assert "5 passed" in out, out
    assert "5 guest(s) restored from templates, 2 of them an earlier test's QEMU " \
        "reverted in place;" in out, out
    assert "qgpu: guests restored because a revert failed" in out, out
    assert re.search(r"test_5_has_a_new_guest\[direct\]: .*set the x-ignore-shared "
                     r"capability first", out), out
    assert "RestoreFallbackWarning: an earlier test's direct guest could not be reverted" \
        in out, out
