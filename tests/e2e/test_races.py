"""Races between user space and the driver: each test reproduces one
deterministically (``qgpu-race`` in the guest, with a driver test knob that
holds a call inside the racy window where timing alone would hit it rarely)
and checks what the driver guarantees.

On the debug kernel, the ``qgpu_guest`` fixture also fails a test whose run made
KASAN, lockdep, DMA-API debugging or kmemleak report anything.
"""

from __future__ import annotations

from typing import Any

import pytest

from qgpu.config import DmaMode, MiB
from qgpu.faults import FaultInjector
from qgpu.inspector import DeviceInspector
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine

from .guestio import QGPU_BDF, parse_json_line
from .test_faults import (
    ALL_MODES,
    DIRECT,
    EAGAIN,
    ENODEV,
    stats,
    tool,
    verify_dma,
)

RACE = "/opt/qgpu/bin/qgpu-race"
PARAMS = "/sys/module/qgpu/parameters"


def race(guest: GuestMachine, args: str, *, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``qgpu-race ARGS`` in the guest; return its JSON report (it must have completed)."""
    res = guest.ssh_run(f"{RACE} {args}", timeout=timeout * guest.config.timeout_scale)
    obj = parse_json_line(res.output, f"qgpu-race {args} (exit status {res.status})")
    assert obj.get("ok") is True and res.status == 0, \
        f"qgpu-race {args} did not complete (status {res.status}): {res.output}"
    return obj


@ALL_MODES
def test_remove_zaps_a_mapping_made_while_it_ran(qgpu_guest: GuestMachine) -> None:
    """Review item 1: an mmap(2) whose driver part ran before remove, but whose
    VMA the core linked only after remove zapped the device's mappings, kept
    PTEs to buffer-object pages remove then freed (a use-after-free from user
    space). The driver holds each mmap 300 ms after its part
    (``mmap_race_delay_us``) and the device is removed 100 ms into it: remove
    must wait for that mapping and zap it, so that reading it faults."""
    tries = 3
    qgpu_guest.run(f"echo 300000 > {PARAMS}/mmap_race_delay_us", check=True)
    try:
        res = race(qgpu_guest, f"remove-vs-mmap {tries} --remove-after-us 100000")
    finally:
        qgpu_guest.run(f"echo 0 > {PARAMS}/mmap_race_delay_us")
    # Every try's mapping was made during remove (the window was hit) ...
    assert res["mmaps"] == tries, res
    # ... and none of them can still be read after remove returned.
    assert res["tries_with_stale_mapping"] == 0, \
        f"a buffer-object mapping survived remove (its memory is freed): {res}"


DELAY_PER_MIB_NS = 40_000_000           # the engine moves 1 MiB per 40 ms (virtual time)


@ALL_MODES
def test_signal_does_not_cut_a_copy_short(qgpu_guest: GuestMachine,
                                          faults: FaultInjector) -> None:
    """Review item 2: SIGALRM 60 ms into a synchronous 16 MiB COPY_USER from
    VRAM made the ioctl return -EINTR without a fence while the device went
    on writing into the caller's buffer (under swiotlb, at the later unmap).
    A synchronous copy now returns only when the device is done with the
    buffer: 0, the fence, every byte copied, nothing written afterwards."""
    faults.dma_delay(DELAY_PER_MIB_NS)
    try:
        res = race(qgpu_guest, f"signal-copy {16 * MiB} 60 300")
    finally:
        faults.dma_delay(0)
    assert res["alarms"] == 1 and res["call_ms"] > 60, \
        f"the signal did not arrive during the call: {res}"
    assert res["bytes_changed_after_return"] == 0, \
        f"the device wrote into the buffer after the ioctl returned: {res}"
    assert res["result"] == 0 and res["fence"] > 0 and res["copied_all"], res


@ALL_MODES
def test_signal_does_not_lose_a_fill_fence(qgpu_guest: GuestMachine,
                                           faults: FaultInjector) -> None:
    """The same for a synchronous VRAM_OP: it completes and returns its fence."""
    faults.dma_delay(DELAY_PER_MIB_NS)
    try:
        res = race(qgpu_guest, f"signal-fill {32 * MiB} 60")
    finally:
        faults.dma_delay(0)
    assert res["alarms"] == 1 and res["call_ms"] > 60, res
    assert res["result"] == 0 and res["fence"] > 0 and res["hw_status"] == 0, res


@DIRECT
def test_registers_lost_during_a_reset_mark_the_device_lost(
        qgpu_guest: GuestMachine, faults: FaultInjector,
        qgpu_inspector: DeviceInspector) -> None:
    """Review item 4: an engine reset that finds BAR0 reading all ones switches
    bus mastering off (the reset may not have reached the engine). It did so
    without marking the device lost: once the registers answered again, the
    device looked alive ("running") and every job timed out. Here the reset
    is a function reset through sysfs while the registers read all ones."""
    qgpu_guest.run(f"echo 2000 > {PARAMS}/job_timeout_ms", check=True)
    faults.regs_all_ones()
    qgpu_guest.run(f"echo 1 > /sys/bus/pci/devices/{QGPU_BDF}/reset", check=True)
    faults.regs_all_ones(False)
    state = qgpu_guest.run("cat /sys/class/misc/qgpu0/state").output.strip()
    res = tool(qgpu_guest, "fill 0 4096 1", timeout=60)
    st = stats(qgpu_guest)
    assert state == "failed" and st["device_lost"] == 1, (state, st)
    assert not res["ok"] and res["errno"] == ENODEV, res
    # Re-probing brings it back.
    qgpu_guest.run(f"echo 1 > /sys/bus/pci/devices/{QGPU_BDF}/remove; echo 1 > /sys/bus/pci/rescan",
                   check=True, timeout=60)
    verify_dma(qgpu_guest, qgpu_inspector)


EBADF = 9


@DIRECT
def test_read_only_file_cannot_change_the_device(
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector) -> None:
    """Review finding: a file opened O_RDONLY ran COPY_USER to VRAM, VRAM_OP
    fills, CPU_ACCESS fills, BO_CREATE and COPY_BO, changing VRAM. Now it may
    look but not change: those fail with -EBADF and VRAM stays as it was."""
    off, length = 2 * MiB, 64 * 1024
    assert tool(qgpu_guest, f"fill {off} {length} 0x5a5a5a5a")["ok"]
    before = qgpu_inspector.vram_backend(off, length)
    qgpu_guest.run("head -c 65536 /dev/urandom > /tmp/ro.bin", check=True)
    ro = "--read-only"
    for args in (f"to-vram {off} /tmp/ro.bin", f"fill {off} {length} 1",
                 f"fill {off} {length} 1 --cpu", f"copy-vram 0 {off} {length}",
                 f"bo-create 4096 --to-vram {off}"):
        res = tool(qgpu_guest, f"{ro} {args}")
        assert not res["ok"] and res["errno"] == EBADF, (args, res)
    assert qgpu_inspector.vram_backend(off, length) == before, "a read-only file changed VRAM"
    # What only looks still works.
    for args in ("info", f"checksum {off} {length} --via dma",
                 f"checksum {off} {length} --via cpu", f"checksum {off} {length} --via mmap",
                 "raise-irq"):
        res = tool(qgpu_guest, f"{ro} {args}")
        assert res["ok"], (args, res)


@ALL_MODES
def test_reset_zaps_device_mappings_and_faults_wait(qgpu_guest: GuestMachine) -> None:
    """Review item 3: a function reset (or a PCIe link reset) made the device's
    memory unreachable for a while, but user mappings of the BARs kept their
    PTEs through it (vfio zaps them and blocks faults until the device is
    back). Now the reset zaps the VRAM and register mappings (buffer objects
    are system memory: theirs stay), so that each of their 16 + 16 + 1 pages
    faults again when read after it; every mapping reads right; and accesses
    during five more resets wait instead of raising SIGBUS."""
    res = race(qgpu_guest, "reset-vs-mappings 5")
    assert res["faults_after_reset"] == {"lazy": 16, "bar_refaults": 16 + 1}, res
    assert res["reads_right_after_reset"] == {"vram": 1, "lazy": 1, "regs": 1, "bo": 1}, res
    assert res["reads_during_resets"] > 0 and res["sigbus_during_resets"] == 0, res


@ALL_MODES
def test_debugger_access_stops_at_the_mapping_end(qgpu_guest: GuestMachine) -> None:
    """Review of vm_ops->access: /proc/PID/mem hands ->access the whole rest of
    a read, and generic_access_phys() maps that much physical memory from the
    first page's PTE on -- past the end of the register page that is past the
    end of BAR0, past VRAM's last page beyond the BAR. An 8-byte read 4 bytes
    before the end of a one-page mapping followed by a hole must return 4."""
    res = race(qgpu_guest, "access-bounds")
    assert res["bytes_read"] == {"regs": 4, "vram": 4, "bo": 4}, res


def stuck_ioctl(guest: GuestMachine, action: str, where: str) -> dict[str, Any]:
    """Run ``qgpu-race stuck-ioctl``; skip where the kernel has no userfaultfd."""
    res = race(guest, f"stuck-ioctl {action} {where}")
    if not res["supported"]:
        pytest.skip(f"this guest kernel has no userfaultfd (errno {res['errno']})")
    return res


@DIRECT
def test_reset_does_not_wait_for_an_ioctl_blocked_on_user_memory(
        qgpu_guest: GuestMachine) -> None:
    """Review of the reset zap: it waited (synchronize_srcu) for every ioctl in
    progress, and an ioctl can block on user memory for as long as user space
    likes (userfaultfd, FUSE). Mappings have their own SRCU domain now: a
    reset finishes while an ioctl waits on its argument."""
    res = stuck_ioctl(qgpu_guest, "reset", "arg")
    assert res["done_while_blocked"], f"the reset waited for the ioctl: {res}"
    assert res["ioctl_result"] == 0, res


@DIRECT
@pytest.mark.parametrize("where", ["arg", "buffer"])
def test_remove_does_not_wait_for_an_ioctl_blocked_on_user_memory(
        qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector, where: str) -> None:
    """Review item 7: the ioctls' SRCU read sections spanned copy_from_user()
    of the argument and the pinning of user buffers, so remove, which waits
    for those sections, waited for as long as user space kept a userfaultfd
    (or FUSE) page unserved. Now user memory is touched outside them: remove
    finishes while the ioctl is blocked, and the ioctl then fails -ENODEV."""
    try:
        res = stuck_ioctl(qgpu_guest, "remove", where)
    finally:
        qgpu_guest.run("echo 1 > /sys/bus/pci/rescan", timeout=60)
    assert res["done_while_blocked"], f"remove waited for the ioctl: {res}"
    assert res["ioctl_result"] == -ENODEV, res
    verify_dma(qgpu_guest, qgpu_inspector)


@DIRECT
def test_work_during_a_reset_fails_with_eagain(qgpu_guest: GuestMachine,
                                               qgpu_inspector: DeviceInspector) -> None:
    """Review item 7: -EIO meant both "the device failed this job" and "the device
    is being reset or recovering, try again". A call made while the device
    recovers now fails -EAGAIN (nothing was done); -EIO is left to device
    errors. The reset is held open for 3 s by a driver test knob."""
    state = "/sys/class/misc/qgpu0/state"
    qgpu_guest.run(f"echo 3000 > {PARAMS}/reset_hold_ms; rm -f /tmp/reset.done", check=True)
    try:
        qgpu_guest.run(f"sh -c \"( echo 1 > /sys/bus/pci/devices/{QGPU_BDF}/reset; "
                       "touch /tmp/reset.done ) </dev/null >/dev/null 2>&1 &\"", check=True)
        qgpu_guest.run(f"for i in $(seq 100); do grep -q recovering {state} && break; "
                       "sleep 0.05; done", check=True)
        assert qgpu_guest.run(f"cat {state}").output.strip() == "recovering"
        results = {args: tool(qgpu_guest, args) for args in (
            "fill 0 4096 0x1", "fill 0 4096 0x1 --cpu", "checksum 0 4096 --via dma")}
        recovering = qgpu_guest.run(f"cat {state}").output.strip()
    finally:
        qgpu_guest.run(f"echo 0 > {PARAMS}/reset_hold_ms; "
                       "for i in $(seq 200); do [ -e /tmp/reset.done ] && break; sleep 0.05; done",
                       timeout=60)
    assert recovering == "recovering", "the reset ended before the calls were made"
    bad = {args: res for args, res in results.items()
           if res["ok"] or res["errno"] != EAGAIN}
    assert not bad, f"calls during a reset did not fail -EAGAIN: {bad}"
    assert qgpu_guest.run(f"cat {state}").output.strip() == "running"
    verify_dma(qgpu_guest, qgpu_inspector)


@DIRECT
def test_a_cpu_access_is_never_made_while_a_reset_hides_vram(
        qgpu_guest: GuestMachine) -> None:
    """The stress runs' rare "async fill ... differs" and "copy_vram ... differs"
    (about 1 run in 15 on a loaded host): a CPU access (QGPU_IOCTL_CPU_ACCESS,
    the tools' checksums and CPU fills) checked once per 64 KiB chunk that the
    device was usable, but nothing kept a function reset from starting between
    that check and the access. A reset turns memory decoding off from its start
    until it restores the config space: the chunk read all ones, or its writes
    were dropped, and the ioctl succeeded. The driver holds each chunk 60 ms
    between its check and its access (``cpu_access_delay_us``) and the function
    is reset 5 ms after it began, by the bus reset method (100 ms or more
    without decoding): every access must be right or fail with EAGAIN, and
    most must be right, i.e. held across the reset's start (an access that
    only ever met the reset at its check, EAGAIN, would prove nothing)."""
    tries = 6
    dev = f"/sys/bus/pci/devices/{QGPU_BDF}"
    try:
        qgpu_guest.run(f"echo bus > {dev}/reset_method && "
                       f"echo 60000 > {PARAMS}/cpu_access_delay_us", check=True)
        res = race(qgpu_guest, f"reset-vs-cpu-access {tries} --reset-after-us 5000")
    finally:
        qgpu_guest.run(f"echo 0 > {PARAMS}/cpu_access_delay_us; "
                       f"echo default > {dev}/reset_method")
    # Every reset began while its access was under way ...
    assert res["overlapped"] == tries, res
    # ... no access succeeded with what VRAM did not hold ...
    assert res["wrong"] == 0, \
        f"CPU accesses succeeded while a reset hid VRAM (reads of all ones, lost writes): {res}"
    assert res["right"] + res["eagain"] == tries and res["other_errors"] == 0, res
    # ... and the window was hit: most accesses were held across the reset's start.
    assert res["right"] * 2 >= tries, res


@DIRECT
def test_rescanned_device_keeps_its_name(qgpu_guest: GuestMachine) -> None:
    """A device removed while a process still holds it open kept its number
    until that process let go, so the rescanned device became qgpu1 and tools
    and tests looking for /dev/qgpu0 lost it. The number is free at remove."""
    pid = qgpu_guest.run("sleep 600 </dev/qgpu0 >/dev/null 2>&1 & echo $!", check=True).output
    try:
        qgpu_guest.run(f"echo 1 > /sys/bus/pci/devices/{QGPU_BDF}/remove; "
                       "echo 1 > /sys/bus/pci/rescan", check=True, timeout=60)
        names = qgpu_guest.run("ls /sys/class/misc | grep qgpu").output.split()
        assert names == ["qgpu0"], f"the rescanned device is {names}"
    finally:
        qgpu_guest.run(f"kill {pid.strip()}; "
                       f"while [ -e /proc/{pid.strip()} ]; do usleep 20000; done", timeout=60)


DMA_API_ERRORS = "/sys/kernel/debug/dma-api/error_count"


@ALL_MODES
def test_neighbouring_copies_from_vram_never_share_a_cache_line(
        qgpu_guest: GuestMachine) -> None:
    """Review item 8: two COPY_USER FROM_VRAM into neighbouring bytes of one
    cache line mapped that line for two device writes at once; DMA-API
    debugging reported "cacheline tracking EEXIST", and on a platform without
    coherent DMA each copy's cache invalidation could wipe the other's bytes.
    Partial lines at either end of a copy from VRAM now go through a bounce
    buffer; every byte still lands where it should, and none beside it."""
    has_debug = qgpu_guest.run(f"test -r {DMA_API_ERRORS}").status == 0
    before = int(qgpu_guest.run(f"cat {DMA_API_ERRORS}", check=True).output) if has_debug else 0
    s0 = stats(qgpu_guest)
    res = race(qgpu_guest, "shared-lines 200", timeout=300)
    assert res["first_errno"] == 0 and res["copies"] == res["expected"], res
    assert res["mismatches"] == 0 and res["canary_bytes_changed"] == 0, res
    if has_debug:
        after = int(qgpu_guest.run(f"cat {DMA_API_ERRORS}", check=True).output)
        report = qgpu_guest.run("dmesg | grep -m3 'DMA-API'").output
        assert after == before, f"DMA-API debugging counted {after - before} errors: {report}"
    # Every piece starts or ends inside a line: every copy bounces at least once.
    assert stats(qgpu_guest)["line_bounces"] - s0.get("line_bounces", 0) >= res["copies"], res



#: Tries per action. On the debug kernel a try costs about 2 s (a reset) and 10 s
#: (a removal): fewer, and in direct mode only (its buffer objects are remapped).
FORK_VS_ZAP_TRIES = {"reset": 60, "remove": 20}
FORK_VS_ZAP_TRIES_HEAVY = {"reset": 8, "remove": 3}


#: Direct and swiotlb: where buffer objects were remapped whole (the BAR mappings'
#: VM_PAT did not depend on the mode). Under intel-iommu one CI run of the removal
#: ended with no output from qgpu-race and no removal in the guest's log, not
#: reproduced in 3 runs (issue note): left out until explained.
REMAPPED_BO_MODES = pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT, DmaMode.SWIOTLB],
                                            indirect=True)


@REMAPPED_BO_MODES
@pytest.mark.parametrize("action", ["reset", "remove"])
def test_fork_during_a_zap(qgpu_guest: GuestMachine, qgpu_kernel: GuestKernel,
                          qgpu_dma_mode: DmaMode, action: str) -> None:
    """Stress CI (stock kernel, direct): "WARNING: ... untrack_pfn" in a sysfs
    removal. On x86 a mapping that one remap_pfn_range() made whole carries
    PAT's VM_PAT, which Linux 6.12 releases by reading the PTE at the VMA's
    start; a reset or a removal that zaps the device's mappings while fork()
    copies one -- after fork() set VM_PAT on the copy, before it copied the
    PTEs -- finds no PTE and warns. A process with 64 mappings each of the
    register page, of VRAM and of a buffer object forks in a loop while the
    device is reset or removed, 60 or 20 times (on the debug kernel 8 or 3, in
    direct mode only: the CI's longest lane).

    The driver now maps the register page on first access, as vfio-pci maps
    BARs; VRAM through io_mapping_map_user(), which does not track, or in two
    pieces, or on first access; and a buffer object without an IOMMU on first
    access, as udmabuf maps pages (dma_mmap_coherent() remapped it whole:
    removals warned 2 runs in 2 with buffer objects alone). No zap may warn."""
    heavy = qgpu_kernel.detectors.heavy
    if heavy and qgpu_dma_mode is not DmaMode.DIRECT:
        pytest.skip("on the debug kernel in direct mode only (each try costs seconds)")
    tries = (FORK_VS_ZAP_TRIES_HEAVY if heavy else FORK_VS_ZAP_TRIES)[action]
    res = race(qgpu_guest, f"fork-vs-zap {action} {tries}", timeout=300.0)
    assert res["tries"] == tries and res["forks"] >= tries, res
    assert res["fork_failures"] == 0, res
    log = qgpu_guest.run("dmesg", check=True).output
    assert "untrack_pfn" not in log, \
        f"a {action} zapped a device mapping that carries VM_PAT:\n{log}"
