"""Every allocation, pin, DMA mapping and IRQ setup of the driver fails once: a clean errno.

On kernels with fault injection (the debug kernel), :mod:`qgpu.kfault` fails each
fault point an operation reaches, one run per point -- the driver's slab and page
allocations, and its pin, DMA-map, DMA-alloc and IRQ-setup calls -- for the probe (a
bind through sysfs) and for the ioctls behind each qgpu-tool command. For each: the
operation ends with a clean errno, or succeeds where the driver has a fallback
(MSI-X -> MSI -> INTx); once the faults are removed the device works; and the
kernel reports nothing: KASAN, lockdep and DMA-API debugging after each test, and
kmemleak when the guest retires, naming the test that leaked (qgpu.health).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from qgpu.config import DmaMode, QgpuSpec
from qgpu.health import check as check_health
from qgpu.health import check_boot
from qgpu.kernels import GuestKernel
from qgpu.kfault import DRIVER_POINTS, FaultRun, KernelFaultInjector
from qgpu.machine import GuestMachine

from .guestio import put_file, sh, tool

MiB = 1 << 20
#: What a failed allocation, pin or mapping may turn into, and nothing else.
CLEAN_ERRNOS = {errno.ENOMEM, errno.EFAULT}
#: mmap() also passes on remap_pfn_range()'s EINVAL: that is how the kernel reports
#: a failed PAT memtype reservation (an allocation) for the mapped range. Each such
#: point's stack must show it (PAT_FRAMES).
MMAP_ERRNOS = CLEAN_ERRNOS | {errno.EINVAL}
PAT_FRAMES = ("track_pfn_remap", "reserve_pfn_range", "memtype_reserve")

# qgpu-tool commands, together every ioctl and every mmap region; each exercises
# open, its own path, and release.
OPS = {
    "info": "info",                                                   # INFO
    "fill": "fill 0x10000 65536 0x5a5a5a5a",                          # VRAM_OP fill
    "copy-vram": "copy-vram 0 0x100000 65536",                        # VRAM_OP copy
    "wait-fence": "fill 0x10000 4096 0x1 --async --wait 5000",        # WAIT_FENCE
    "fence-export": "fence-export 0 --poll 1000",                     # FENCE_EXPORT
    "cpu-write": "fill 0x20000 65536 0x77 --cpu",                     # CPU_ACCESS fill
    "cpu-read": "checksum 0 65536 --via cpu",                         # CPU_ACCESS read
    "to-vram-page": "to-vram 0x200000 /tmp/kf-page",                  # COPY_USER, 1 page
    "to-vram-sg": "to-vram 0x200000 /tmp/kf-big --sg",                # COPY_USER, SG list
    "from-vram-sg": f"from-vram 0x200000 {200 * 1024} /tmp/kf-out --sg",
    "bo-create": "bo-create 65536 --to-vram 0x300000",                # BO_CREATE, COPY_BO,
                                                                      # BO mmap, BO_DESTROY
    "raise-irq": "raise-irq",                                         # RAISE_IRQ
    "dmabuf-bo": "dmabuf-copy to-vram bo 0x100000 65536 0x1234",    # DMABUF_EXPORT, its
                                                                      # mapping, COPY_DMABUF
    "dmabuf-udmabuf": "dmabuf-copy from-vram udmabuf 0x100000 65536",  # COPY_DMABUF, another
                                                                      # exporter's mapping
    "userptr": f"userptr-copy from-vram 0x200000 {200 * 1024} 0x5a --offset 100",
                                                                      # USERPTR_REGISTER,
                                                                      # COPY_USERPTR, _UNREGISTER
    "mmap-vram": "mmap-write 0x1000 8192 0x12345678",                 # VRAM, eager
    "mmap-lazy": "mmap-read 0x3000 4096 --lazy",                      # VRAM, fault handler
    "mmap-regs": "regs",                                              # register page
}


#: The operations whose paths map memory for DMA (streaming mappings, coherent
#: allocations, dma-buf attachments). The IOMMU mode changes what the DMA API does
#: there, and how a failure unwinds, so their sweeps run in it too; the other
#: operations take the same driver paths in every mode, and run in direct mode only.
DMA_MAPPING_OPS = {"to-vram-page", "to-vram-sg", "from-vram-sg", "bo-create", "dmabuf-bo",
                   "dmabuf-udmabuf", "userptr"}
SWEEPS = [pytest.param(mode, op, id=f"{mode}-{op}")
          for mode in (DmaMode.DIRECT, DmaMode.IOMMU) for op in OPS
          if mode is DmaMode.DIRECT or op in DMA_MAPPING_OPS]


@pytest.fixture
def kfaults(qgpu_guest: GuestMachine, qgpu_kernel: GuestKernel) -> KernelFaultInjector:
    if not qgpu_kernel.detectors.fault_injection:
        pytest.skip(f"the {qgpu_kernel.name} kernel has no fault injection (use debug)")
    put_file(qgpu_guest, "/tmp/kf-page", bytes(range(256)) * 12)          # 3 KiB: one page
    put_file(qgpu_guest, "/tmp/kf-big", bytes(range(256)) * 800)          # 200 KiB: SG list
    return KernelFaultInjector(qgpu_guest)


def _check_runs(runs: list[FaultRun], allowed: set[int] | None, what: str) -> None:
    """Each failed point: success (a fallback) or a clean errno (in ``allowed``, if given)."""
    injected = [r for r in runs if r.injected]
    assert injected, f"{what}: no fault point reached -- is the scoping to qgpu.ko wrong?"
    bad = [f"point {r.nth}: status {r.status}, {r.result}" for r in injected
           if not (r.status == 0 and r.result.get("ok")) and
           not (r.status == 1 and r.result.get("ok") is False and r.errno is not None and
                r.errno > 0 and (allowed is None or r.errno in allowed))]
    want = "an errno" if allowed is None else \
        f"one of {sorted(errno.errorcode[e] for e in allowed)}"
    assert not bad, f"{what}: a failed fault point gave no clean errno (want {want}):\n  " + \
        "\n  ".join(bad)
    last = runs[-1]
    assert not last.injected and last.result.get("ok") is True, \
        f"{what}: without a fault the operation failed: {last.result}"


@pytest.mark.parametrize(("qgpu_dma_mode", "op"), SWEEPS, indirect=["qgpu_dma_mode"])
def test_ioctl_fault_points(qgpu_guest: GuestMachine, kfaults: KernelFaultInjector,
                            op: str) -> None:
    with kfaults.armed():
        assert set(DRIVER_POINTS) == set(kfaults.injectable()), kfaults.injectable()
        runs = kfaults.sweep(OPS[op])
        _check_runs(runs, MMAP_ERRNOS if op.startswith("mmap") else CLEAN_ERRNOS,
                    f"qgpu-tool {OPS[op]}")
        einval = [r for r in runs if r.injected and r.errno == errno.EINVAL]
        if einval:
            found = check_health(qgpu_guest, scan_leaks=False)   # before the stacks fill the log
            assert found.ok, found.summary()
            for r in einval:
                stack = kfaults.stack_of(OPS[op], r.nth)
                assert any(f in stack for f in PAT_FRAMES), \
                    f"qgpu-tool {OPS[op]}: point {r.nth} gave EINVAL, but its stack shows " \
                    f"no PAT reservation:\n{stack[-3000:]}"
            sh(qgpu_guest, "dmesg -c >/dev/null")   # the stacks, read and explained
    # The faults are gone: the device works, for this operation and for DMA.
    assert tool(qgpu_guest, OPS[op])["ok"]
    assert tool(qgpu_guest, "fill 0 4096 0x11")["ok"]


@pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT, DmaMode.IOMMU], indirect=True)
def test_probe_fault_points(qgpu_guest: GuestMachine, kfaults: KernelFaultInjector) -> None:
    """Bind the driver with each fault point of its probe failed in turn.

    A probe may fail with whatever errno the kernel API that failed gave it
    (devm_memremap() says ENXIO, a region request EBUSY); what must hold is
    that it fails cleanly and the next bind works.
    """
    bdf = sh(qgpu_guest, "basename $(readlink /sys/class/misc/qgpu0/device)").strip()
    drv = "/sys/bus/pci/drivers/qgpu"
    with kfaults.armed():
        runs = kfaults.sweep(f"write-file {drv}/bind {bdf}",
                             before=f"if [ -e {drv}/{bdf} ]; then echo {bdf} > {drv}/unbind; fi")
    _check_runs(runs, None, f"probe of {bdf}")
    sh(qgpu_guest, f"test -e {drv}/{bdf} && test -c /dev/qgpu0")
    assert tool(qgpu_guest, "fill 0 4096 0x22")["ok"]


@pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)
@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EPERM], ids=["ENOMEM", "EPERM"])
def test_a_failed_pin_passes_its_errno_on(qgpu_guest: GuestMachine, kfaults: KernelFaultInjector,
                                          err: int) -> None:
    """Review item 7: COPY_USER turned every failure to pin the user buffer into
    -EFAULT, also when the kernel said why (out of memory, not allowed). The
    errno the pin returned reaches the caller now. (Also proof that the driver's
    own fault points fail at all: fail_function's kprobes must run in task
    context, where fail-nth counts them -- see images/kconfig/debug.config.)"""
    for op in ("to-vram-page", "to-vram-sg"):
        run = kfaults.fail_once("qgpu_pin_user_pages", err, OPS[op])
        assert run.injected, f"{op}: the pin was not failed: {run.output}"
        assert run.status == 1 and run.errno == err, (op, run.result)
    assert tool(qgpu_guest, OPS["to-vram-sg"])["ok"]


def test_p2p_fault_points(qgpu_restore_guest: Callable[..., GuestMachine],
                          qgpu_kernel: GuestKernel) -> None:
    """The peer-to-peer path: qgpu0's VRAM exported as a dma-buf, qgpu1's dynamic,
    pinned attachment and its segments' mapping, and the copy, with each fault point
    failed in turn -- behind a switch, so that the path is taken."""
    if not qgpu_kernel.detectors.fault_injection:
        pytest.skip(f"the {qgpu_kernel.name} kernel has no fault injection (use debug)")
    g = qgpu_restore_guest(DmaMode.DIRECT, ssh=False, check_leaks=True, pcie_switch=True,
                           qgpus=(QgpuSpec(id="qgpu0"), QgpuSpec(id="qgpu1")))
    check_boot(g)
    g.run("insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0 && test -c /dev/qgpu1", check=True)
    args = "-d /dev/qgpu0 p2p-copy pull 0x100000 65536 0x200000 --peer /dev/qgpu1"
    kfaults = KernelFaultInjector(g)
    with kfaults.armed():
        runs = kfaults.sweep(args)
    _check_runs(runs, CLEAN_ERRNOS, f"qgpu-tool {args}")
    assert runs[-1].result.get("path") == "p2p", runs[-1].result
    print(f"{len(runs) - 1} fault points, each failed cleanly: "
          f"{sorted({r.errno for r in runs if r.injected and r.errno})}")
    # The faults are gone: the path works again, and nothing is left mapped or open.
    assert tool(g, args, over="console")["path"] == "p2p"
    for dev in ("/dev/qgpu0", "/dev/qgpu1"):
        st = tool(g, f"-d {dev} stats", over="console")
        assert int(st["dmabufs"]) == 0 and int(st["dmabuf_maps"]) == 0, (dev, st)
