"""dma-bufs (issue 14, items 1 and 2), seen from the host.

A buffer object exported as a dma-buf, or a memfd's pages as a udmabuf, is the
source or destination of a DMA (``QGPU_IOCTL_COPY_DMABUF``): the host checks the
bytes in the VRAM backend and the device's own account of the DMA (its trace of
the SG entries, its byte counters). A BO of one device is DMAed by another, and
an exporter removed under a held dma-buf fails the importer cleanly. The
in-guest suite (``qgpu-test dmabuf_*``) covers arguments, lifetime, mappings and
the dma-buf's fences; the removal tests of ``test_faults`` check that a removed
or lost device's dma-buf mappings raise SIGBUS with its other mappings.
"""

from __future__ import annotations

import time
from errno import EBUSY, ENODEV, ETIME

import pytest

from qgpu import health
from qgpu.abi import ABI
from qgpu.config import DmaMode, QgpuSpec
from qgpu.data import fill_pattern, fnv1a64
from qgpu.faults import FaultInjector
from qgpu.inspector import DeviceInspector
from qgpu.machine import GuestMachine

from .guestio import (
    TOOL,
    check_contiguous,
    driver_stats,
    parse_json_line,
    tool,
    trace_mark,
    trace_since,
    wait_guest_file,
)
from .test_faults import ALL_MODES, BOUND, MakeGuest
from .test_fence_export import job_timeout, poller

PATTERN = 0xD1AB_0F00
LENGTH = 3 * 65536 + 123            # not a whole number of pages
#: By source: a BO (one contiguous allocation) longer than swiotlb bounces at once
#: (256 KiB), so that the exporter must split it into segments; a udmabuf's pages
#: (a segment each without an IOMMU) fewer than the device's trace holds.
LENGTHS = {"bo": 5 * 65536 + 123, "udmabuf": LENGTH}
SOURCES = pytest.mark.parametrize("source", list(LENGTHS))


@ALL_MODES
@SOURCES
def test_a_dma_buf_is_dmaed_to_and_from_vram(qgpu_guest: GuestMachine,
                                             qgpu_inspector: DeviceInspector,
                                             source: str) -> None:
    insp, off, length = qgpu_inspector, 0x10_0000, LENGTHS[source]
    host0, drv0, mark = insp.stats(), driver_stats(qgpu_guest), trace_mark(insp)
    res = tool(qgpu_guest, f"dmabuf-copy to-vram {source} {off:#x} {length} {PATTERN:#x}")
    want = fill_pattern(PATTERN, length)
    assert insp.vram_backend(off, length) == want, "VRAM backend after the dma-buf's DMA"
    assert int(res["checksum"], 16) == fnv1a64(want)
    records = trace_since(insp, mark)
    check_contiguous(records, "copy-to-vram", off, length)
    assert res["segments"] == len(records), \
        f"the driver built {res['segments']} SG entries, the device traced {len(records)}"
    host1, drv1 = insp.stats(), driver_stats(qgpu_guest)
    assert host1["bytes-to-vram"] - host0["bytes-to-vram"] == length
    assert drv1["dmabuf_copies"] - drv0["dmabuf_copies"] == 1
    # Back: what the device fills in VRAM arrives in the dma-buf's pages.
    back = off + 0x40_0000
    assert tool(qgpu_guest, f"fill {back:#x} {length} 0x600DF00D")["ok"]
    vram = insp.vram_backend(back, length)
    assert vram == fill_pattern(0x600DF00D, length), "VRAM backend after the fill"
    mark = trace_mark(insp)
    res = tool(qgpu_guest, f"dmabuf-copy from-vram {source} {back:#x} {length}")
    assert int(res["checksum"], 16) == fnv1a64(vram), "the dma-buf after the DMA"
    check_contiguous(trace_since(insp, mark), "copy-from-vram", back, length)
    # Nothing is left behind by the tool that exported, mapped and closed.
    drv2 = driver_stats(qgpu_guest)
    assert drv2["dmabufs"] == 0 and drv2["dmabuf_maps"] == 0 and drv2["bos"] == 0, drv2
    print(f"{source}: {res['segments']} segment(s) back, {len(records)} there")


@pytest.mark.parametrize("mode", [DmaMode.DIRECT, DmaMode.IOMMU], ids=str)
def test_a_bo_of_one_device_is_dmaed_by_another(qgpu_restore_guest: MakeGuest,
                                                mode: DmaMode) -> None:
    """qgpu1 copies qgpu0's BO into its VRAM through the dma-buf: the bytes arrive in
    qgpu1's backend, qgpu1 traced the DMA and qgpu0's engine did nothing."""
    g = qgpu_restore_guest(mode, ssh=False, check_leaks=True,
                           qgpus=(QgpuSpec(id="qgpu0"), QgpuSpec(id="qgpu1")))
    health.check_boot(g)
    g.run("insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0 && test -c /dev/qgpu1", check=True)
    exporter, importer = g.inspector("qgpu0"), g.inspector("qgpu1")
    e0, mark = exporter.stats(), trace_mark(importer)
    off = 0x20_0000
    res = tool(g, f"-d /dev/qgpu0 dmabuf-copy to-vram bo {off:#x} {LENGTH} {PATTERN:#x} "
                  "--importer /dev/qgpu1", over="console")
    want = fill_pattern(PATTERN, LENGTH)
    assert importer.vram_backend(off, LENGTH) == want, "qgpu1's VRAM after the copy"
    check_contiguous(trace_since(importer, mark), "copy-to-vram", off, LENGTH)
    e1 = exporter.stats()
    assert e1["descriptors"] == e0["descriptors"], \
        f"the exporter's engine ran: {e0['descriptors']} -> {e1['descriptors']} descriptors"
    print(f"{mode}: {res['segments']} segment(s)")


def test_an_importer_of_a_removed_exporter_gets_enodev(qgpu_restore_guest: MakeGuest) -> None:
    """A process holds a dma-buf of qgpu0's BO (its handle and file closed); the host
    unplugs qgpu0; qgpu1's copy from the dma-buf then fails with -ENODEV (no mapping
    of freed memory), and everything is released when the process exits."""
    g = qgpu_restore_guest(DmaMode.DIRECT, ssh=False, check_leaks=True,
                           qgpus=(QgpuSpec(id="qgpu0"), QgpuSpec(id="qgpu1")))
    health.check_boot(g)
    g.run("insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0 && test -c /dev/qgpu1", check=True)
    tag = "/tmp/qgpu-dmabuf-held"
    g.run(f"rm -f {tag}.*; ( {TOOL} -d /dev/qgpu0 dmabuf-copy to-vram bo 0 65536 0x1234 "
          f"--importer /dev/qgpu1 --ready {tag}.ready --go {tag}.go > {tag}.out 2>&1; "
          f"touch {tag}.done ) </dev/null >/dev/null 2>&1 &", check=True)
    wait_guest_file(g, f"{tag}.ready")
    # The dma-buf holds the BO, which holds qgpu0's driver instance: removal waits
    # for none of it, and frees the memory.
    FaultInjector.for_machine(g, "qgpu0").device_del()
    assert g.run("test -e /dev/qgpu0").status != 0
    g.run(f"touch {tag}.go", check=True)
    wait_guest_file(g, f"{tag}.done")
    out = g.run(f"cat {tag}.out", check=True).output
    assert '"ok":false' in out and f'"errno":{ENODEV}' in out, out
    st = {k: int(v) for k, v in tool(g, "-d /dev/qgpu1 stats", over="console").items()
          if k != "ok"}
    assert st["dmabuf_copies"] == 0, f"qgpu1 ran a job on the removed exporter's buffer: {st}"
    log = g.run("dmesg", check=True).output
    assert "never freed" not in log and "did not unmap" not in log, log
    # The module unloads once the process is gone: no dma-buf holds it.
    g.run("rmmod qgpu", check=True, timeout=BOUND)


def test_removal_waits_for_an_importer_to_finish_its_dma(
        qgpu_restore_guest: MakeGuest) -> None:
    """qgpu1's job reads qgpu0's BO through the dma-buf while the host holds qgpu1's
    engine; qgpu0 is unplugged meanwhile. Its removal must not free the BO under that
    DMA: it waits for the importer to unmap (DEVICE_DELETED does not come while the
    job is held), then completes; the bytes arrive whole and nothing is leaked."""
    g = qgpu_restore_guest(DmaMode.DIRECT, ssh=False, check_leaks=True,
                           qgpus=(QgpuSpec(id="qgpu0"), QgpuSpec(id="qgpu1")))
    health.check_boot(g)
    g.run("insmod /opt/qgpu/qgpu.ko job_timeout_ms=600000 && test -c /dev/qgpu0 && "
          "test -c /dev/qgpu1", check=True)
    importer = FaultInjector.for_machine(g, "qgpu1")
    tag = "/tmp/qgpu-dmabuf-slow"
    importer.hang()
    g.run(f"rm -f {tag}.*; ( {TOOL} -d /dev/qgpu0 dmabuf-copy to-vram bo 0 65536 "
          f"{PATTERN:#x} --importer /dev/qgpu1 > {tag}.out 2>&1; touch {tag}.done ) "
          "</dev/null >/dev/null 2>&1 &", check=True)
    out = g.run("i=0; while [ \"$(cat /sys/class/misc/qgpu1/stats/dmabuf_copies)\" != 1 ] "
                "&& [ $i -lt 400 ]; do usleep 25000; i=$((i+1)); done; "
                "cat /sys/class/misc/qgpu1/stats/dmabuf_copies", timeout=30).output
    assert out.strip() == "1", f"the importer's job was not submitted: {out}"
    qmp = importer.qmp             # the machine's QMP connection
    after = len(qmp.events())
    qmp.command("device_del", {"id": "qgpu0"})
    time.sleep(2)
    deleted = [e for e in qmp.events()[after:] if e.name == "DEVICE_DELETED"
               and e.data.get("device") == "qgpu0"]
    assert not deleted, "qgpu0 was removed while qgpu1's DMA still read its buffer"
    importer.hang(False)
    qmp.wait_event("DEVICE_DELETED", 30 * g.config.timeout_scale, after=after)
    wait_guest_file(g, f"{tag}.done")
    res = parse_json_line(g.run(f"cat {tag}.out", check=True).output, "dmabuf-copy")
    assert res["ok"], res
    assert g.inspector("qgpu1").vram_backend(0, 65536) == fill_pattern(PATTERN, 65536)
    log = g.run("dmesg", check=True).output
    assert "never freed" not in log and "did not unmap" not in log, log
    g.run("rmmod qgpu", check=True, timeout=BOUND)


@pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)
def test_a_copy_waits_for_the_fences_of_its_dma_buf(qgpu_guest: GuestMachine,
                                                    qgpu_inspector: DeviceInspector,
                                                    faults: FaultInjector) -> None:
    """A pending fence of the device, put in the dma-buf's dma_resv as a writer
    (DMA_BUF_IOCTL_IMPORT_SYNC_FILE), keeps a copy from the dma-buf off the ring: no
    wait is -EBUSY, a short one -ETIME, a long one submits only once the host lets
    the fence's job finish (the ring's tail does not move before)."""
    g, insp = qgpu_guest, qgpu_inspector
    job_timeout(g, 600_000)         # only the host ends the hang
    faults.hang()
    fence = tool(g, "fill 0 4096 0x1 --async")["fence"]
    copy = f"dmabuf-copy to-vram bo {0x30_0000:#x} 4096 {PATTERN:#x} --after-fence {fence}"
    res = tool(g, f"{copy} --timeout-ns 0", ok=False)
    assert res["errno"] == EBUSY, res
    res = tool(g, f"{copy} --timeout-ns 1000000", ok=False)
    assert res["errno"] == ETIME, res
    tail = insp.register(ABI.REG_RING_TAIL)
    tag = "/tmp/qgpu-dmabuf-fenced"
    g.run(f"rm -f {tag}.*; ( {TOOL} {copy} --timeout-ns 60000000000 > {tag}.out 2>&1; "
          f"touch {tag}.done ) </dev/null >/dev/null 2>&1 &", check=True)
    time.sleep(1)
    assert insp.register(ABI.REG_RING_TAIL) == tail, "the copy was queued before its fence"
    assert g.run(f"test -e {tag}.done").status != 0, g.run(f"cat {tag}.out").output
    faults.hang(False)
    wait_guest_file(g, f"{tag}.done")
    res = parse_json_line(g.run(f"cat {tag}.out", check=True).output, "dmabuf-copy")
    assert res["ok"] and res["fence"] > fence, res
    assert insp.vram_backend(0x30_0000, 4096) == fill_pattern(PATTERN, 4096)


@pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)
def test_a_job_on_an_exported_bo_puts_its_fence_in_the_dma_buf(
        qgpu_guest: GuestMachine, faults: FaultInjector) -> None:
    """Implicit synchronisation: while the host holds the engine, an asynchronous
    COPY_BO into a BO exported as a dma-buf leaves its fence in the dma-buf's
    dma_resv as a writer -- a reader's sync_file holds qgpu's pending fence, a
    COPY_DMABUF out of it that does not wait gets EBUSY, poll(2) of the dma-buf
    sleeps -- until the host lets the engine go; then the BO holds VRAM's bytes."""
    g, off, length = qgpu_guest, 0x60_0000, 65536
    job_timeout(g, 600_000)
    assert tool(g, f"fill {off:#x} {length} {PATTERN:#x}")["ok"]
    faults.hang()
    with poller(g, f"{off:#x} {length} --poll 60000", command="dmabuf-job") as p:
        faults.hang(False)
        res = p.wait(30)
    assert (res["resv_fences"], res["resv_driver"], res["resv_status"]) == (1, "qgpu", 0), res
    assert res["copy_now_errno"] == EBUSY, res
    assert res["readable"], res
    assert int(res["checksum"], 16) == fnv1a64(fill_pattern(PATTERN, length)), res


def test_a_job_on_an_exported_bo_waits_for_another_drivers_fence(
        qgpu_restore_guest: MakeGuest) -> None:
    """Implicit synchronisation the other way: qgpu1's pending fence is put in the
    dma_resv of qgpu0's BO as a writer (DMA_BUF_IOCTL_IMPORT_SYNC_FILE). A COPY_BO
    that writes the BO waits for it in the ioctl -- nothing reaches qgpu0's engine --
    until the host lets qgpu1's engine go; then the job runs and the BO holds VRAM's
    bytes."""
    g = qgpu_restore_guest(DmaMode.DIRECT, ssh=False, check_leaks=True,
                           qgpus=(QgpuSpec(id="qgpu0"), QgpuSpec(id="qgpu1")))
    health.check_boot(g)
    g.run("insmod /opt/qgpu/qgpu.ko job_timeout_ms=600000 && test -c /dev/qgpu0 && "
          "test -c /dev/qgpu1", check=True)
    off, length = 0x60_0000, 65536
    writer, insp = FaultInjector.for_machine(g, "qgpu1"), g.inspector("qgpu0")
    assert tool(g, f"-d /dev/qgpu0 fill {off:#x} {length} {PATTERN:#x}", over="console")["ok"]
    writer.hang()
    fence = tool(g, "-d /dev/qgpu1 fill 0 4096 0x1 --async", over="console")["fence"]
    before = insp.stats()["bytes-from-vram"]
    with poller(g, f"{off:#x} {length} --writer-fence /dev/qgpu1:{fence} --poll 60000",
                name="writer", command="dmabuf-job", device="/dev/qgpu0",
                waits_in="fence") as p:
        time.sleep(0.5)
        assert insp.stats()["bytes-from-vram"] == before, "the job ran before the fence signalled"
        writer.hang(False)
        res = p.wait(30)
    assert res["ok"] and res["readable"], res
    assert res["copy_bo_ms"] >= 500, res
    assert int(res["checksum"], 16) == fnv1a64(fill_pattern(PATTERN, length)), res
    assert insp.stats()["bytes-from-vram"] == before + length
