"""Regression tests for driver review fixes: BO size cap, fence status after
mass aborts, long VRAM operations on a slow engine, and DMA stopped at reboot.

The ``qgpu_guest`` fixture fails a test whose dmesg shows a WARNING or BUG, which
is what an oversized BO_CREATE used to produce.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from qgpu import health
from qgpu.abi import ABI
from qgpu.config import DmaMode, MiB, QgpuSpec
from qgpu.faults import FaultInjector
from qgpu.inspector import DeviceInspector
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine

from .guestio import (
    MMAP_REGS,
    QGPU_BDF,
    check_descriptors_accounted,
    idle_stats,
    parse_json_line,
)
from .test_faults import (
    ALL_MODES,
    DIRECT,
    EIO,
    ERR_ABORTED,
    IDLE_MID,
    MakeGuest,
    fnv1a64,
    hold_dma,
    pattern,
    start_hold,
    stats,
    tool,
    verify_dma,
    wait_dmesg,
)

E2BIG = 7
PCI_COMMAND_MASTER = 0x4
BO_CAP = 4 * MiB                 # PAGE_SIZE << MAX_PAGE_ORDER on x86-64
NJOBS = 100                      # more than the old 64-entry error log


def json_lines(out: str) -> list[dict[str, Any]]:
    """Every JSON object line of ``out``, in order."""
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


@ALL_MODES
def test_bo_size_cap(qgpu_guest: GuestMachine) -> None:
    info = tool(qgpu_guest, "info")
    assert info["bo_max_size"] == BO_CAP, info
    res = tool(qgpu_guest, f"bo-create {8 * MiB}")
    assert not res["ok"] and res["errno"] == E2BIG, res
    res = tool(qgpu_guest, f"bo-create {BO_CAP + 1}")
    assert not res["ok"] and res["errno"] == E2BIG, res
    # The largest BO works, its DMA address too.
    res = tool(qgpu_guest, f"bo-create {BO_CAP} --to-vram 0")
    assert res["ok"] and res["size"] == BO_CAP, res
    back = tool(qgpu_guest, f"checksum 0 {BO_CAP} --via cpu")
    assert back["ok"] and back["checksum"] == res["checksum"], (res, back)


@DIRECT
def test_a_hang_fails_only_the_job_the_engine_ran(qgpu_guest: GuestMachine, faults: FaultInjector,
                                               qgpu_inspector: DeviceInspector) -> None:
    """Review item 7: the watchdog failed every queued job as timed out when the
    engine hung on the first. Now only that one fails; the jobs behind it, which
    the engine had not started, run again after the reset with their fences."""
    qgpu_guest.run("echo 5000 > /sys/module/qgpu/parameters/job_timeout_ms", check=True)
    page = 4096
    assert tool(qgpu_guest, f"fill 0 {(NJOBS + 2) * page} 0x11111111")["ok"]
    before = idle_stats(qgpu_guest, qgpu_inspector)
    faults.hang()
    out = qgpu_guest.run(f"for i in $(seq {NJOBS}); do qgpu-tool fill $((i * {page})) {page} "
                         "0x77 --async; done", timeout=120).output
    subs = json_lines(out)
    assert len(subs) == NJOBS and all(s["ok"] for s in subs), out
    fences = [int(s["fence"]) for s in subs]
    last = tool(qgpu_guest, f"wait-fence {fences[-1]} 0", timeout=60)
    assert last["ok"], f"a job queued behind the hung one failed: {last}"
    assert not faults.is_hung()
    out = qgpu_guest.run("for f in " + " ".join(map(str, fences)) +
                         "; do qgpu-tool wait-fence $f 1000; done", timeout=120).output
    waits = json_lines(out)
    assert len(waits) == NJOBS, out
    first, rest = waits[0], waits[1:]
    assert not first["ok"] and first["errno"] == EIO and first["hw_status"] == ERR_ABORTED, first
    failed = [w for w in rest if not w["ok"]]
    assert not failed, f"{len(failed)} innocent jobs failed: {failed[:5]}"
    st = stats(qgpu_guest)
    assert st["watchdog_resets"] == 1 and st["timeouts"] == 1, st
    vram = qgpu_inspector.vram_backend(page, NJOBS * page)
    assert vram[:page] == pattern(0x11111111, page), "the failed fill wrote VRAM"
    assert vram[page:] == pattern(0x77, (NJOBS - 1) * page), "a replayed fill missed VRAM"
    assert tool(qgpu_guest, f"fill 0 {MiB} 0x12345678")["ok"]
    # x-fault-hang stalls the engine before it starts a descriptor: the
    # reset dropped what was queued (all 100, unless the watchdog fired while
    # the loop was still submitting: a slow kernel), and the replay wrote all
    # but the first again. The driver's count must include those to match
    # the device's.
    deltas = check_descriptors_accounted(before, idle_stats(qgpu_guest, qgpu_inspector))
    assert deltas["aborted"] == 0 and 1 <= deltas["dropped"] <= NJOBS, deltas


@DIRECT
def test_an_engine_that_stays_stuck_fails_every_job(qgpu_guest: GuestMachine,
                                                    faults: FaultInjector) -> None:
    """The replay after a hang has a limit: if the engine retires nothing after
    it either, the next timeout fails every queued job instead of blaming them
    one by one. Here the jobs queue behind a hang, then every engine run takes
    a second and the timeout drops to 300 ms: two resets, and all jobs fail."""
    params = "/sys/module/qgpu/parameters"
    qgpu_guest.run(f"echo 60000 > {params}/job_timeout_ms", check=True)
    faults.hang()
    try:
        out = qgpu_guest.run(f"for i in $(seq {NJOBS}); do qgpu-tool fill $((i * 4096)) 4096 0x77 "
                             "--async; done", timeout=120).output
        subs = json_lines(out)
        assert len(subs) == NJOBS and all(s["ok"] for s in subs), out
        fences = [int(s["fence"]) for s in subs]
        faults.dma_delay(1_000_000_000)
        qgpu_guest.run(f"echo 300 > {params}/job_timeout_ms", check=True)
        res = tool(qgpu_guest, f"wait-fence {fences[-1]} 0", timeout=60)
    finally:
        faults.dma_delay(0)
    assert not res["ok"] and res["errno"] == EIO and res["hw_status"] == ERR_ABORTED, res
    st = stats(qgpu_guest)
    assert st["watchdog_resets"] == 2 and st["timeouts"] == 2, st
    out = qgpu_guest.run("for f in " + " ".join(map(str, fences)) +
                         "; do qgpu-tool wait-fence $f 1000; done", timeout=120).output
    waits = json_lines(out)
    bad = [w for w in waits if w["ok"] or w["errno"] != EIO or w["hw_status"] != ERR_ABORTED]
    assert len(waits) == NJOBS and not bad, \
        f"{len(bad)} aborted jobs not reported as failed: {bad[:5]}"
    assert tool(qgpu_guest, f"fill 0 {MiB} 0x12345678")["ok"]


@DIRECT
def test_a_halt_is_logged_with_its_error_and_ring_index(
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector) -> None:
    """Review item 7: the reset work's message always read "engine halted (error 0
    at index 0)": the interrupt handler's write to DMA_ERROR had already cleared
    the error and its index. Here the engine cannot fetch its ring (bus mastering
    off, so the interrupt is lost too and the watchdog's resync finds the halt):
    the message names DESC_FETCH."""
    config = f"/sys/bus/pci/devices/{QGPU_BDF}/config"
    qgpu_guest.run("dmesg -c >/dev/null; echo 1000 > /sys/module/qgpu/parameters/job_timeout_ms",
                   check=True)
    command = int(qgpu_guest.run(f"od -An -tu1 -j4 -N1 {config}", check=True).output.split()[0])
    assert command & PCI_COMMAND_MASTER, command

    def write_command(value: int) -> None:
        qgpu_guest.run(f"printf '\\{value:03o}' | dd of={config} bs=1 seek=4 count=1 "
                       "conv=notrunc 2>/dev/null", check=True)

    write_command(command & ~PCI_COMMAND_MASTER)
    try:
        res = tool(qgpu_guest, "fill 0 4096 0x1", timeout=60)
    finally:
        write_command(command)
    assert not res["ok"] and res["errno"] == EIO, res
    log = wait_dmesg(qgpu_guest, r"engine halted")
    m = re.search(r"engine halted \(error (\d+) at (?:ring )?index (\d+)\)", log)
    assert m, log
    assert int(m[1]) == ABI.ERR_DESC_FETCH, f"the halt was logged as error {m[1]}: {m[0]}"
    verify_dma(qgpu_guest, qgpu_inspector)


@DIRECT
def test_info_names_the_device_with_its_whole_pci_domain(qgpu_guest: GuestMachine) -> None:
    """Review item 7: INFO packed the domain into the top 16 bits of pci_bdf, cut
    off above 0xffff. It has its own 32-bit field now (q35 has one domain, 0, so
    this shows the field is filled and agrees with sysfs, not a big domain)."""
    info = tool(qgpu_guest, "info")
    real = qgpu_guest.run("basename $(readlink /sys/class/misc/qgpu0/device)",
                          check=True).output.strip()
    assert info["pci"] == real, (info, real)


@DIRECT
def test_long_vram_op_on_slow_engine(qgpu_guest: GuestMachine, faults: FaultInjector,
                                     qgpu_inspector: DeviceInspector) -> None:
    length, pat = 32 * MiB, 0x600DF111
    qgpu_guest.run("echo 1500 > /sys/module/qgpu/parameters/job_timeout_ms", check=True)
    # 100 ms per engine run of 1 MiB: about 3.2 s for the fill, twice the timeout.
    faults.dma_delay(100_000_000)
    try:
        res = tool(qgpu_guest, f"fill 0 {length} {pat:#x}", timeout=60)
    finally:
        faults.dma_delay(0)
    assert res["ok"], res
    st = stats(qgpu_guest)
    assert st["timeouts"] == 0 and st["watchdog_resets"] == 0, st
    assert qgpu_inspector.vram_backend(0, length) == pattern(pat, length)


@DIRECT
def test_a_large_vram_op_is_not_starved_by_small_jobs(
        qgpu_guest: GuestMachine, faults: FaultInjector,
        qgpu_inspector: DeviceInspector, qgpu_kernel: GuestKernel) -> None:
    """Review item 7 (VRAM_OP starvation): a job of many descriptors waited for
    that much room in the ring, while jobs of one descriptor took every slot
    that came free: with others submitting without pause it never ran. Now
    submitters queue in order. A 4-entry ring (3 descriptors in flight), two
    processes submitting 1 MiB fills for 20 s, each engine run (at most
    1 MiB) slowed to 100 ms: a 6 MiB fill (3 descriptors of 2 MiB, which need
    an empty ring) must finish while they are still at it. (Order, not memory
    safety: not run on kernels with heavy detectors, where it took 25 s and
    every other submission takes the same lock under lockdep anyway.)"""
    if qgpu_kernel.detectors.heavy:
        pytest.skip(f"a scheduling-order test: not on the {qgpu_kernel.name} kernel")
    length, pat = 6 * MiB, 0x0FA11FA1
    qgpu_guest.run("rmmod qgpu && insmod /opt/qgpu/qgpu.ko ring_entries=4 && test -c /dev/qgpu0",
                   check=True, timeout=60)
    faults.dma_delay(100_000_000)
    try:
        for i in (1, 2):
            off = 40 * MiB + i * MiB
            qgpu_guest.run(f"rm -f /tmp/loop{i}.done; sh -c \"( end=\\$((\\$(date +%s) + 20)); "
                           f"while [ \\$(date +%s) -lt \\$end ]; do qgpu-tool fill {off} "
                           f"{MiB} {i} --async >/dev/null 2>&1; done; touch /tmp/loop{i}.done ) "
                           "</dev/null >/dev/null 2>&1 &\"", check=True)
        time.sleep(1.0)       # the ring is full of small jobs
        res = tool(qgpu_guest, f"fill 0 {length} {pat:#x}", timeout=120)
        loops_done = qgpu_guest.run("ls /tmp/loop*.done 2>/dev/null").output.split()
    finally:
        faults.dma_delay(0)
        qgpu_guest.run("while [ ! -e /tmp/loop1.done ] || [ ! -e /tmp/loop2.done ]; do sleep 0.2; "
                       "done", timeout=60)
    assert res["ok"], res
    assert not loops_done, "the large fill ran only once the small jobs stopped coming"
    assert qgpu_inspector.vram_backend(0, length) == pattern(pat, length)


@DIRECT
def test_split_copy_vram_keeps_memmove(qgpu_guest: GuestMachine,
                                       qgpu_inspector: DeviceInspector) -> None:
    """COPY_VRAM split into chunks, overlapping both ways."""
    insp = qgpu_inspector
    length = 9 * MiB + 12
    qgpu_guest.run(f"head -c {length} /dev/urandom > /tmp/r.bin", check=True)
    assert tool(qgpu_guest, f"to-vram {MiB} /tmp/r.bin", timeout=60)["ok"]
    data = insp.vram_backend(MiB, length)
    assert tool(qgpu_guest, f"copy-vram {MiB} {3 * MiB} {length}", timeout=60)["ok"]
    assert insp.vram_backend(3 * MiB, length) == data, "upward overlapping copy"
    assert tool(qgpu_guest, f"copy-vram {3 * MiB} {2 * MiB} {length}", timeout=60)["ok"]
    got = insp.vram_backend(2 * MiB, length)
    assert fnv1a64(got) == fnv1a64(data), "downward overlapping copy"


ENOSPC = 28


@DIRECT
def test_bo_memory_is_capped_per_device(qgpu_guest: GuestMachine) -> None:
    """bo_limit_mb caps coherent BO memory; freed BOs give their memory back."""
    qgpu_guest.run("rmmod qgpu && insmod /opt/qgpu/qgpu.ko bo_limit_mb=1 && test -c /dev/qgpu0",
                   check=True)
    try:
        over = tool(qgpu_guest, "bo-create 0x200000")
        assert not over["ok"] and over["errno"] == ENOSPC, over
        for _ in range(3):      # 3 x 768 KiB one after another: only fits if freed
            assert tool(qgpu_guest, "bo-create 0xc0000")["ok"]
        assert stats(qgpu_guest)["bo_bytes"] == 0
    finally:
        qgpu_guest.run("rmmod qgpu && insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0", check=True)


@IDLE_MID
def test_reboot_stops_dma_first(qgpu_make_guest: MakeGuest, mid_dma: bool) -> None:
    """At reboot (and kexec) the driver's .shutdown stops the engine and bus
    mastering before the next kernel or the firmware owns memory.

    QEMU pauses instead of resetting (``-action shutdown=pause``; -no-reboot
    turns the guest's reboot into a shutdown), so the host looks at the device
    as the guest kernel left it.
    """
    g = qgpu_make_guest(DmaMode.DIRECT, ssh=False, extra_args=("-action", "shutdown=pause"),
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
def test_fences_keep_rising_across_driver_reload(qgpu_guest: GuestMachine,
                                                 qgpu_inspector: DeviceInspector) -> None:
    """A reloaded driver continues from the device's FENCE register, so a fence
    polled through the user page never looks done before its job ran."""
    insp = qgpu_inspector
    res = tool(qgpu_guest, "fill 0 4096 0x11")
    assert res["ok"], res
    first = res["fence"]
    qgpu_guest.run("rmmod qgpu && insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0",
                   timeout=60, check=True)
    assert tool(qgpu_guest, "regs")["fence"] == first, "FENCE register changed by the reload"
    second = tool(qgpu_guest, "fill 0 4096 0x22")["fence"]
    assert second == first + 1, f"fence after reload: {second}, before: {first}"
    hw = insp.register(ABI.REG_FENCE_LO) | insp.register(ABI.REG_FENCE_HI) << 32
    assert hw == second == insp.stats()["last-fence"]


@DIRECT
def test_32bit_process_reaches_every_ioctl_and_mapping(
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector) -> None:
    """Review item 6: a 32-bit process created buffer objects through
    compat_ioctl but could never map them: their mmap offsets lay at 2^44 and
    above, beyond what mmap2(2) expresses (32 bits of 4 KiB pages). Every
    region's offset is now below 2^44. ``qgpu-tool32`` is qgpu-tool built -m32."""
    def tool32(args: str) -> dict[str, Any]:
        res = qgpu_guest.run(f"qgpu-tool32 {args}", timeout=60)
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
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector) -> None:
    """Review item 7 (vm_ops->access): gdb and /proc/PID/mem could not read a
    process's VRAM, register or buffer-object mappings (get_user_pages cannot
    reach VM_PFNMAP memory). Now they read what the device holds, and write a
    buffer object the process mapped writable."""
    qgpu_guest.run("qgpu-tool fill 0 65536 0x1234abcd", check=True)
    start_hold(qgpu_guest, "dbg", "120")
    pid = int(qgpu_guest.run("pidof qgpu-tool", check=True).output.split()[0])
    try:
        maps = [ln.split() for ln in qgpu_guest.run(f"cat /proc/{pid}/maps").output.splitlines()
                if ln.endswith("/dev/qgpu0")]
        by_offset = {int(m[2], 16): int(m[0].split("-")[0], 16) for m in maps}
        vram, regs = by_offset[0], by_offset[MMAP_REGS]
        bo = next(va for off, va in by_offset.items() if off > MMAP_REGS)
        assert proc_mem_read(qgpu_guest, pid, vram, 64) == qgpu_inspector.vram_backend(0, 64)
        assert proc_mem_read(qgpu_guest, pid, regs, 4, unit=4) == ABI.ID_MAGIC.to_bytes(4, "little")
        qgpu_guest.run(f"printf 'qgpu\\001\\002' | dd of=/proc/{pid}/mem bs=1 seek={bo + 100} "
                       "conv=notrunc 2>/dev/null", check=True)
        assert proc_mem_read(qgpu_guest, pid, bo + 98, 8) == b"\0\0qgpu\x01\x02"
    finally:
        qgpu_guest.run(f"kill {pid}; while [ -e /proc/{pid} ]; do usleep 20000; done", timeout=60)


IORESOURCE_PREFETCH = 0x2000


def pat_memtype(guest: GuestMachine, start: int, end: int) -> list[str]:
    """The memory types PAT holds for exactly ``[start, end)`` (kernel and user reservations)."""
    want = f"[mem 0x{start:016x}-0x{end:016x}]"
    out = guest.run("cat /sys/kernel/debug/x86/pat_memtype_list", check=True).output
    return [ln.split("]", 1)[1].strip() for ln in out.splitlines() if want in ln]


def test_vram_is_write_combined_only_if_its_bar_is_prefetchable(
        qgpu_restore_guest: MakeGuest) -> None:
    """Review item 7 (WC without IORESOURCE_PREFETCH): the driver mapped VRAM
    write-combining whatever the BAR said. A non-prefetchable BAR (device
    property vram-prefetchable=off) is now mapped uncached by the kernel, by
    user mappings (eager and lazy) and by CPU_ACCESS, and all of them still
    reach VRAM."""
    g = qgpu_restore_guest(DmaMode.DIRECT, check_leaks=True, qgpus=(
        QgpuSpec(id="qgpu0"),
        QgpuSpec(id="qgpu1", props=(("vram-prefetchable", "off"),))))
    health.check_boot(g)
    g.run("insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0 && test -c /dev/qgpu1", check=True)
    for qdev_id, prefetchable in (("qgpu0", True), ("qgpu1", False)):
        bdf = g.run(f"basename $(readlink /sys/class/misc/{qdev_id}/device)",
                    check=True).output.strip()
        start, end, flags = (int(x, 16) for x in g.run(
            f"sed -n 3p /sys/bus/pci/devices/{bdf}/resource", check=True).output.split())
        assert bool(flags & IORESOURCE_PREFETCH) == prefetchable, (qdev_id, hex(flags))
        types = pat_memtype(g, start, end + 1)
        want = "write-combining" if prefetchable else "uncached-minus"
        assert types and set(types) == {want}, (qdev_id, types)
        caching = g.run(f"cat /sys/class/misc/{qdev_id}/vram_caching",
                        check=True).output.strip()
        assert caching == ("write-combining" if prefetchable else "uncached"), caching
        # Every CPU path still reaches VRAM, as the host sees it.
        dev, insp = f"-d /dev/{qdev_id}", g.inspector(qdev_id)
        assert tool(g, f"{dev} fill 0 8192 0x11223344 --cpu")["ok"]
        assert tool(g, f"{dev} mmap-write 8192 4096 0x55667788")["ok"]
        assert tool(g, f"{dev} mmap-write 12288 4096 0x99aabbcc --lazy")["ok"]
        want_bytes = (bytes.fromhex("44332211") * 2048 + bytes.fromhex("88776655") * 1024
                      + bytes.fromhex("ccbbaa99") * 1024)
        assert insp.vram_backend(0, 16384) == want_bytes, qdev_id
        sums = {via: tool(g, f"{dev} checksum 0 16384 --via {via}")["checksum"]
                for via in ("dma", "cpu", "mmap", "lazy")}
        assert set(sums.values()) == {f"0x{fnv1a64(want_bytes):016x}"}, (qdev_id, sums)
