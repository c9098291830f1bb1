"""Guests restored from a saved template (qgpu.template, issue 12).

A restored guest must be as good as a booted one: DMA and MSI-X in every DMA
mode (vIOMMU state included), a device that starts clean, and no memory
shared with the template or with another guest restored from it.
"""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qgpu import pytest_rig, template
from qgpu.config import DmaMode, MachineConfig
from qgpu.data import fill_pattern
from qgpu.errors import QemuError, SetupError
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine

from .guestio import check_fill_with_interrupt, sh, tool

RestoreGuest = Callable[..., GuestMachine]
MiB = 1 << 20
CLOCK_LAG = 10.0                # seconds between a save and the restore checked


def _load_driver(guest: GuestMachine) -> None:
    sh(guest, "insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0")


def test_a_restored_guest_does_dma_with_interrupts(qgpu_restore_guest: RestoreGuest,
                                                   qgpu_dma_mode: DmaMode,
                                                   rng: random.Random) -> None:
    """Restore, load the driver, fill VRAM by DMA: the host sees the bytes, the
    device and the guest count the completion interrupt, the clock is set."""
    first = qgpu_restore_guest(qgpu_dma_mode)         # makes the template if there is none
    made = float(str(template.get(first.config).info["made"]))
    first.stop(graceful=False)
    # Long enough after the save that a clock left as it was would be seen.
    time.sleep(max(0.0, made + CLOCK_LAG - time.time()))
    before = time.time()
    guest = qgpu_restore_guest(qgpu_dma_mode)
    seen = float(sh(guest, "date +%s"))         # whole seconds
    after = time.time()
    # Set on restore, the clock reads between before and after. Left at the
    # template's time, it would read at most made + (after - before), which
    # is below before - 1 unless restoring and reading took CLOCK_LAG - 1 s.
    if made + (after - before) >= before - 1:
        pytest.skip(f"restoring and reading the clock took {after - before:.1f} s: too slow "
                    "to tell a set clock from the template's")
    assert before - 1 <= seen <= after + 1, \
        f"the guest's clock was not set on restore: it read {seen:.0f} between " \
        f"{before:.1f} and {after:.1f} (the template was saved at {made:.1f})"
    assert guest.console_log is not None
    assert "QGPU-GUEST-READY" not in guest.console_log.read_text(), \
        "the guest booted instead of being restored"
    insp = guest.inspector()
    stats = insp.stats()
    assert stats == dict.fromkeys(stats, 0), \
        "the device of a restored guest must start with clean statistics"
    assert insp.dma_trace() == []
    _load_driver(guest)
    check_fill_with_interrupt(guest, insp, rng, "restored")


def test_guests_restored_from_one_template_share_nothing(qgpu_restore_guest: RestoreGuest
                                                         ) -> None:
    """Two guests from one template at once: what one writes to its RAM and VRAM,
    the other does not see, and the template's RAM file does not change."""
    first = qgpu_restore_guest(DmaMode.DIRECT)
    second = qgpu_restore_guest(DmaMode.DIRECT)
    made = template.get(first.config)
    ram_before = made.ram.stat()
    # Writes all over the first guest's free memory (its page cache), each page
    # a copy-on-write fault of the private mapping of the template's RAM.
    sh(first, "dd if=/dev/urandom of=/tmp/fill bs=1M count=64 2>/dev/null && sync")
    for guest in (first, second):
        _load_driver(guest)
    tool(first, f"fill 0 {64 << 10} 0x11111111")
    assert first.inspector().vram_backend(0, 64 << 10) == fill_pattern(0x11111111, 64 << 10)
    assert second.inspector().vram_backend(0, 64 << 10) == bytes(64 << 10)
    after = made.ram.stat()
    assert (after.st_mtime_ns, after.st_blocks) == (ram_before.st_mtime_ns,
                                                    ram_before.st_blocks), \
        "a restored guest changed the template's RAM file"


def test_guests_restored_from_one_template_draw_different_random_numbers(
        qgpu_restore_guest: RestoreGuest) -> None:
    """Clones of one template start with its kernel's random-number state: unless the
    kernel learns it was forked (a VM generation ID that changes on restore, which it
    reseeds on), both draw the same "random" bytes -- the same SSH keys, TCP sequence
    numbers and UUIDs -- until its next timed reseed. (Here that comes soon: a template
    is saved in the kernel's first seconds, when it reseeds every second or so, with
    RDRAND; a template saved after two minutes would wait up to a minute.) Each clone's
    kernel says it reseeded for the fork, and their first bytes of /dev/urandom differ."""
    first = qgpu_restore_guest(DmaMode.DIRECT)
    second = qgpu_restore_guest(DmaMode.DIRECT)
    reseeded = "crng reseeded due to virtual machine fork"
    for guest in (first, second):
        # ACPI delivers the new ID's notification asynchronously: give it 5 s (scaled).
        polls = int(200 * guest.config.timeout_scale)
        found = guest.run(f"i=0; until dmesg | grep -q '{reseeded}' || [ $i -ge {polls} ]; do "
                          "usleep 25000; i=$((i+1)); done; dmesg | grep -q '{reseeded}'"
                          .replace("{reseeded}", reseeded), timeout=30)
        assert found.status == 0, \
            "the restored kernel did not reseed its RNG for the fork (no vmgenid?):\n" + \
            sh(guest, "dmesg | tail -20")
    draws = [sh(guest, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'").strip()
             for guest in (first, second)]
    assert len(draws[0]) == 64 and draws[0] != draws[1], \
        f"two guests restored from one template drew the same random bytes: {draws}"


def test_a_restored_guest_s_ssh_host_key_comes_with_its_template(
        qgpu_restore_guest: RestoreGuest) -> None:
    """dropbear makes a host key it lacks at its first connection, and a key made
    after the template was saved is made again by every guest restored or reverted
    from it (about 0.07 s of the guest's CPU under TCG, on each first SSH
    handshake): the image makes it at boot, so the template holds it."""
    guest = qgpu_restore_guest(DmaMode.DIRECT)
    assert sh(guest, "echo ok").strip() == "ok"          # over SSH
    log = guest.run("cat /run/dropbear.log", timeout=30, check=True).output
    assert "Pubkey auth succeeded" in log, log
    assert "Generated hostkey" not in log, \
        f"the restored guest made its SSH host key at its first connection:\n{log}"


def test_a_template_of_another_machine_is_refused(qgpu_restore_guest: RestoreGuest) -> None:
    """Restoring a template into a machine it was not made for is a SetupError
    that names both keys, not a guest that half works."""
    guest = qgpu_restore_guest(DmaMode.DIRECT)
    made = template.get(guest.config)
    other: MachineConfig = dataclasses.replace(guest.config, memory=guest.config.memory * 2)
    with pytest.raises(SetupError, match="made for another machine"):
        template.restore(other, template=made)


def test_a_state_that_does_not_load_quotes_qemu(qgpu_restore_guest: RestoreGuest,
                                               tmp_path: Path) -> None:
    """A damaged template fails the restore with QEMU's own reason, and QEMU is gone."""
    guest = qgpu_restore_guest(DmaMode.DIRECT)
    made = template.get(guest.config)
    bad = tmp_path / "state"
    bad.write_bytes(made.state.read_bytes()[:4096])
    machine = GuestMachine(guest.config)
    with pytest.raises(QemuError, match="migration failed while restoring the guest") as err:
        machine.restore(made.ram, bad, made.accel)
    assert "QEMU's last output" in str(err.value)
    assert not machine.is_alive()
    kept = machine.kept_files
    assert kept is not None and (kept / f"{machine.config.name}.log").is_file(), \
        "QEMU's log was not kept for the post-mortem"
    assert f"kept in {kept}/" in "\n".join(err.value.__notes__), err.value.__notes__
    shutil.rmtree(kept)


def test_a_restore_that_fails_boots_and_says_why(qgpu_kernel: GuestKernel, tmp_path: Path,
                                                 pytestconfig: pytest.Config) -> None:
    """A template whose state QEMU refuses (here: garbage) does not fail the test
    that wanted a guest: it gets a booted one, without the driver as a restored
    one would be, and the reason quotes QEMU's own error (the plugin warns with
    it and counts it in the run's summary)."""
    if qgpu_kernel.detectors.heavy:
        pytest.skip("the fallback does not depend on the kernel; a debug boot costs a minute")
    # As the plugin's guests are configured: the same template.
    cfg = pytest_rig._base_config(pytestconfig, DmaMode.DIRECT)
    real = template.get(cfg, ssh_key=qgpu_kernel.ssh_key)
    broken = tmp_path / real.folder.name           # the key names the folder
    broken.mkdir()
    (broken / "ram").symlink_to(real.ram)          # mapped privately: never written
    shutil.copy(real.folder / "info.json", broken / "info.json")
    (broken / "state").write_bytes(b"QEVM" + bytes(4096))
    started = template.restore_or_boot(cfg, ssh_key=qgpu_kernel.ssh_key,
                                       template=template.Template(broken))
    try:
        assert started.cold_boot_reason is not None, "a broken template was restored"
        assert str(broken) in started.cold_boot_reason and \
            "migration failed" in started.cold_boot_reason, started.cold_boot_reason
        # The failed restore's QEMU log is kept, and the reason says where.
        kept = re.search(r"kept in (\S+)/ ", started.cold_boot_reason)
        assert kept and Path(kept.group(1)).is_dir(), started.cold_boot_reason
        shutil.rmtree(kept.group(1))
        guest = started.machine
        assert guest.console_log is not None
        assert "QGPU-GUEST-READY" in guest.console_log.read_text(), "it did not boot"
        assert sh(guest, "grep -c '^qgpu ' /proc/modules || true").strip() == "0", \
            "a guest standing in for a restored one must not have the driver loaded"
        _load_driver(guest)
        assert sh(guest, "cat /sys/class/misc/qgpu0/dev").strip(), "no qgpu0 after insmod"
    finally:
        started.machine.stop(graceful=False)
