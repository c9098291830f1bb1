"""Regression tests for driver review fixes: BO size cap, fence status after
mass aborts, long VRAM operations on a slow engine, and DMA stopped at reboot.

The ``guest`` fixture fails a test whose dmesg shows a WARNING or BUG, which
is what an oversized BO_CREATE used to produce.
"""

from __future__ import annotations

import json
import time
from typing import Any

from qgpu.abi import ABI
from qgpu.config import DmaMode, MiB
from qgpu.faults import FaultInjector
from qgpu.inspector import DeviceInspector
from qgpu.machine import GuestMachine

from .guestio import MMAP_REGS, parse_json_line
from .test_faults import (  # noqa: F401  (faults: a fixture)
    ALL_MODES,
    DIRECT,
    EIO,
    ERR_ABORTED,
    IDLE_MID,
    MakeGuest,
    faults,
    fnv1a64,
    hold_dma,
    pattern,
    start_hold,
    stats,
    tool,
)

E2BIG = 7
PCI_COMMAND_MASTER = 0x4
BO_CAP = 4 * MiB                 # PAGE_SIZE << MAX_PAGE_ORDER on x86-64
NJOBS = 100                      # more than the old 64-entry error log


def json_lines(out: str) -> list[dict[str, Any]]:
    """Every JSON object line of ``out``, in order."""
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


@ALL_MODES
def test_bo_size_cap(guest: GuestMachine) -> None:
    info = tool(guest, "info")
    assert info["bo_max_size"] == BO_CAP, info
    res = tool(guest, f"bo-create {8 * MiB}")
    assert not res["ok"] and res["errno"] == E2BIG, res
    res = tool(guest, f"bo-create {BO_CAP + 1}")
    assert not res["ok"] and res["errno"] == E2BIG, res
    # The largest BO works, its DMA address too.
    res = tool(guest, f"bo-create {BO_CAP} --to-vram 0")
    assert res["ok"] and res["size"] == BO_CAP, res
    back = tool(guest, f"checksum 0 {BO_CAP} --via cpu")
    assert back["ok"] and back["checksum"] == res["checksum"], (res, back)


@DIRECT
def test_engine_reset_fails_every_async_job(guest: GuestMachine,
                                            faults: FaultInjector) -> None:  # noqa: F811
    guest.run("echo 5000 > /sys/module/qgpu/parameters/job_timeout_ms", check=True)
    faults.hang()
    out = guest.run(f"for i in $(seq {NJOBS}); do qgpu-tool fill $((i * 4096)) 4096 0x77 "
                    "--async; done", timeout=120).output
    subs = json_lines(out)
    assert len(subs) == NJOBS and all(s["ok"] for s in subs), out
    fences = [int(s["fence"]) for s in subs]
    # The watchdog resets the hung engine and fails every queued job.
    last = tool(guest, f"wait-fence {fences[-1]} 0", timeout=60)
    assert not last["ok"] and last["errno"] == EIO, last
    assert not faults.is_hung()
    out = guest.run("for f in " + " ".join(map(str, fences)) +
                    "; do qgpu-tool wait-fence $f 1000; done", timeout=120).output
    waits = json_lines(out)
    assert len(waits) == NJOBS, out
    bad = [w for w in waits
           if w["ok"] or w["errno"] != EIO or w["hw_status"] != ERR_ABORTED]
    assert not bad, f"{len(bad)} aborted jobs not reported as failed: {bad[:5]}"
    st = stats(guest)
    assert st["watchdog_resets"] == 1, st
    # The engine works again.
    assert tool(guest, f"fill 0 {MiB} 0x12345678")["ok"]


@DIRECT
def test_long_vram_op_on_slow_engine(guest: GuestMachine, faults: FaultInjector,  # noqa: F811
                                     qgpu_inspector: DeviceInspector) -> None:
    length, pat = 32 * MiB, 0x600DF111
    guest.run("echo 1500 > /sys/module/qgpu/parameters/job_timeout_ms", check=True)
    # 100 ms per engine run of 1 MiB: about 3.2 s for the fill, twice the timeout.
    faults.dma_delay(100_000_000)
    try:
        res = tool(guest, f"fill 0 {length} {pat:#x}", timeout=60)
    finally:
        faults.dma_delay(0)
    assert res["ok"], res
    st = stats(guest)
    assert st["timeouts"] == 0 and st["watchdog_resets"] == 0, st
    assert qgpu_inspector.vram_backend(0, length) == pattern(pat, length)


@DIRECT
def test_split_copy_vram_keeps_memmove(guest: GuestMachine,
                                       qgpu_inspector: DeviceInspector) -> None:
    """COPY_VRAM split into chunks, overlapping both ways."""
    insp = qgpu_inspector
    length = 9 * MiB + 12
    guest.run(f"head -c {length} /dev/urandom > /tmp/r.bin", check=True)
    assert tool(guest, f"to-vram {MiB} /tmp/r.bin", timeout=60)["ok"]
    data = insp.vram_backend(MiB, length)
    assert tool(guest, f"copy-vram {MiB} {3 * MiB} {length}", timeout=60)["ok"]
    assert insp.vram_backend(3 * MiB, length) == data, "upward overlapping copy"
    assert tool(guest, f"copy-vram {3 * MiB} {2 * MiB} {length}", timeout=60)["ok"]
    got = insp.vram_backend(2 * MiB, length)
    assert fnv1a64(got) == fnv1a64(data), "downward overlapping copy"


ENOSPC = 28


@DIRECT
def test_bo_memory_is_capped_per_device(guest: GuestMachine) -> None:
    """bo_limit_mb caps coherent BO memory; freed BOs give their memory back."""
    guest.run("rmmod qgpu && insmod /opt/qgpu/qgpu.ko bo_limit_mb=1 && test -c /dev/qgpu0",
              check=True)
    try:
        over = tool(guest, "bo-create 0x200000")
        assert not over["ok"] and over["errno"] == ENOSPC, over
        for _ in range(3):      # 3 x 768 KiB one after another: only fits if freed
            assert tool(guest, "bo-create 0xc0000")["ok"]
        assert stats(guest)["bo_bytes"] == 0
    finally:
        guest.run("rmmod qgpu && insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0", check=True)


@IDLE_MID
def test_reboot_stops_dma_first(make_guest: MakeGuest, mid_dma: bool) -> None:
    """At reboot (and kexec) the driver's .shutdown stops the engine and bus
    mastering before the next kernel or the firmware owns memory.

    QEMU pauses instead of resetting (``-action shutdown=pause``; -no-reboot
    turns the guest's reboot into a shutdown), so the host looks at the device
    as the guest kernel left it.
    """
    g = make_guest(DmaMode.DIRECT, ssh=False, extra_args=("-action", "shutdown=pause"),
                   check_health=False)     # paused after its shutdown: cannot answer
    assert g.qmp is not None and g.console is not None
    insp = g.inspector()
    assert insp.register(ABI.REG_ENGINE_STATUS) & ABI.ENGINE_STATUS_ENABLED
    assert insp.config_space()[4] & PCI_COMMAND_MASTER
    if mid_dma:
        hold_dma(g, seconds=120)
    before = insp.stats()
    events = len(g.qmp.events())
    g.console.send_line("reboot -f")
    g.qmp.wait_event("STOP", 60, after=events)
    stopped = insp.stats()
    assert stopped["engine-resets"] > before["engine-resets"], "no ENGINE_RESET at shutdown"
    status = insp.register(ABI.REG_ENGINE_STATUS)
    assert not status & (ABI.ENGINE_STATUS_ENABLED | ABI.ENGINE_STATUS_BUSY), \
        f"engine left running across the reboot: ENGINE_STATUS={status:#x}"
    assert not insp.config_space()[4] & PCI_COMMAND_MASTER, "bus mastering left on"
    if mid_dma:
        assert stopped["descriptors"] > before["descriptors"], "no DMA was in flight"
    # QEMU's main loop (and a running engine) carries on while the vCPUs are stopped.
    time.sleep(1)
    assert insp.stats()["descriptors"] == stopped["descriptors"], "DMA went on after shutdown"


@DIRECT
def test_fences_keep_rising_across_driver_reload(guest: GuestMachine,
                                                 qgpu_inspector: DeviceInspector) -> None:
    """A reloaded driver continues from the device's FENCE register, so a fence
    polled through the user page never looks done before its job ran."""
    insp = qgpu_inspector
    res = tool(guest, "fill 0 4096 0x11")
    assert res["ok"], res
    first = res["fence"]
    guest.run("rmmod qgpu && insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0",
              timeout=60, check=True)
    assert tool(guest, "regs")["fence"] == first, "FENCE register changed by the reload"
    second = tool(guest, "fill 0 4096 0x22")["fence"]
    assert second == first + 1, f"fence after reload: {second}, before: {first}"
    hw = insp.register(ABI.REG_FENCE_LO) | insp.register(ABI.REG_FENCE_HI) << 32
    assert hw == second == insp.stats()["last-fence"]


@DIRECT
def test_32bit_process_reaches_every_ioctl_and_mapping(
        guest: GuestMachine, qgpu_inspector: DeviceInspector) -> None:
    """Review item 6: a 32-bit process created buffer objects through
    compat_ioctl but could never map them: their mmap offsets lay at 2^44 and
    above, beyond what mmap2(2) expresses (32 bits of 4 KiB pages). Every
    region's offset is now below 2^44. ``qgpu-tool32`` is qgpu-tool built -m32."""
    def tool32(args: str) -> dict[str, Any]:
        res = guest.run(f"qgpu-tool32 {args}", timeout=60)
        obj = parse_json_line(res.output, f"qgpu-tool32 {args}")
        assert obj.get("ok") is True and res.status == 0, (args, res.output)
        return obj

    off, size = 4 * MiB, 64 * 1024
    bo = tool32(f"bo-create {size} --to-vram {off}")
    assert f"0x{fnv1a64(qgpu_inspector.vram_backend(off, size)):016x}" == bo["checksum"]
    assert tool32("regs")["id"] == ABI.ID_MAGIC
    for via in ("dma", "cpu", "mmap", "lazy"):
        assert tool32(f"checksum {off} {size} --via {via}")["checksum"] == bo["checksum"], via


def proc_mem_read(guest: GuestMachine, pid: int, addr: int, length: int,
                  unit: int = 1) -> bytes:
    """``length`` bytes at ``addr`` of process ``pid``, read through /proc/PID/mem
    in reads of ``unit`` bytes (registers take only 32-bit accesses, spec 2.1)."""
    out = guest.run(f"dd if=/proc/{pid}/mem bs={unit} skip={addr // unit} "
                    f"count={length // unit} 2>/dev/null | od -An -v -tx1").output
    return bytes(int(x, 16) for x in out.split())


@ALL_MODES
def test_debugger_reads_and_writes_device_mappings(
        guest: GuestMachine, qgpu_inspector: DeviceInspector) -> None:
    """Review item 7 (vm_ops->access): gdb and /proc/PID/mem could not read a
    process's VRAM, register or buffer-object mappings (get_user_pages cannot
    reach VM_PFNMAP memory). Now they read what the device holds, and write a
    buffer object the process mapped writable."""
    guest.run("qgpu-tool fill 0 65536 0x1234abcd", check=True)
    start_hold(guest, "dbg", "120")
    pid = int(guest.run("pidof qgpu-tool", check=True).output.split()[0])
    try:
        maps = [ln.split() for ln in guest.run(f"cat /proc/{pid}/maps").output.splitlines()
                if ln.endswith("/dev/qgpu0")]
        by_offset = {int(m[2], 16): int(m[0].split("-")[0], 16) for m in maps}
        vram, regs = by_offset[0], by_offset[MMAP_REGS]
        bo = next(va for off, va in by_offset.items() if off > MMAP_REGS)
        assert proc_mem_read(guest, pid, vram, 64) == qgpu_inspector.vram_backend(0, 64)
        assert proc_mem_read(guest, pid, regs, 4, unit=4) == ABI.ID_MAGIC.to_bytes(4, "little")
        guest.run(f"printf 'qgpu\\001\\002' | dd of=/proc/{pid}/mem bs=1 seek={bo + 100} "
                  "conv=notrunc 2>/dev/null", check=True)
        assert proc_mem_read(guest, pid, bo + 98, 8) == b"\0\0qgpu\x01\x02"
    finally:
        guest.run(f"kill {pid}; while [ -e /proc/{pid} ]; do usleep 20000; done", timeout=60)
