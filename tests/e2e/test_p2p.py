"""Peer-to-peer DMA between two qgpus (issue 14, item 4): the topology it needs.

Linux lets one device's DMA reach another's BAR directly only through a PCIe switch
both sit below, with no ACS redirection on its ports, or through a host bridge it knows
forwards peer-to-peer traffic (Q35's is not one); and only on kernels with
``CONFIG_PCI_P2PDMA`` (the qgpu and debug kernels; Debian's has it off). The driver
reports ``pci_p2pdma_distance()`` for every other qgpu in debugfs
(``qgpu/<PCI name>/p2p``); these tests check it against the machine's topology
(``MachineConfig.pcie_switch``): peers behind a switch, refused behind two root ports,
and refused on a kernel without peer-to-peer support, the case the fallback is for.
Then the data path: qgpu0 exports a VRAM range as a dma-buf (``QGPU_IOCTL_VRAM_EXPORT``)
and qgpu1 DMAs from or into it (``QGPU_IOCTL_COPY_DMABUF``), its SG list holding qgpu0's
BAR addresses; where the kernel refuses the path, ``qgpu-tool p2p-copy`` bounces through
a buffer object in system memory and says so. The host checks the bytes in both VRAM
backends and each device's trace: which engine ran, and at which bus addresses.
(The device model's side -- a DMA to another qgpu's VRAM BAR is an ordinary bus access --
is ``tests/device/test_p2p.py``.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from errno import ENODEV, EOPNOTSUPP

import pytest

from qgpu import health
from qgpu.abi import ABI
from qgpu.config import DmaMode, QgpuSpec
from qgpu.data import fill_pattern
from qgpu.faults import FaultInjector
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine
from qgpu.pytest_rig import selected_modes

from .guestio import TOOL, check_contiguous, tool, trace_mark, trace_since, wait_guest_file

MakeGuest = Callable[..., GuestMachine]
PAIR = (QgpuSpec(id="qgpu0"), QgpuSpec(id="qgpu1"))


def p2p_view(g: GuestMachine) -> dict[str, tuple[bool, dict[str, int | None]]]:
    """For each qgpu: whether its kernel has P2PDMA, and each peer's distance (None:
    unreachable), as the driver's debugfs ``p2p`` files say."""
    out = g.run("for f in /sys/kernel/debug/qgpu/*/p2p; do echo \"== $f\"; cat $f; done",
                check=True).output
    view: dict[str, tuple[bool, dict[str, int | None]]] = {}
    for block in out.split("== ")[1:]:
        lines = block.strip().splitlines()
        dev = lines[0].split("/")[-2]
        assert lines[1] in ("p2pdma: yes", "p2pdma: no"), block
        peers: dict[str, int | None] = {}
        for line in lines[2:]:
            m = re.fullmatch(r"(\S+) (?:distance (\d+)|unreachable)", line)
            assert m, f"{dev}: unexpected line {line!r}"
            peers[m[1]] = int(m[2]) if m[2] is not None else None
        view[dev] = (lines[1] == "p2pdma: yes", peers)
    return view


def pair_guest(restore: MakeGuest, *, switch: bool, mode: DmaMode = DmaMode.DIRECT,
               check_leaks: bool = False) -> GuestMachine:
    g = restore(mode, ssh=False, check_leaks=check_leaks, qgpus=PAIR, pcie_switch=switch)
    health.check_boot(g)
    g.run("insmod /opt/qgpu/qgpu.ko && test -c /dev/qgpu0 && test -c /dev/qgpu1", check=True)
    return g


def test_two_qgpus_behind_a_switch_are_peers(qgpu_restore_guest: MakeGuest,
                                             qgpu_kernel: GuestKernel) -> None:
    """Behind one switch, each qgpu's VRAM is reachable from the other -- on a kernel
    with P2PDMA; without it, each says so and refuses the other."""
    g = pair_guest(qgpu_restore_guest, switch=True)
    view = p2p_view(g)
    assert len(view) == 2, view
    has_p2pdma = qgpu_kernel.has("PCI_P2PDMA")
    for dev, (supported, peers) in view.items():
        assert supported == has_p2pdma, (dev, view)
        others = set(view) - {dev}
        assert set(peers) == others, (dev, view)
        for peer, distance in peers.items():
            if has_p2pdma:
                assert distance is not None and distance > 0, \
                    f"{dev} refuses {peer} behind a switch: " + g.run("dmesg | tail -5").output
            else:
                assert distance is None, (dev, view)
    # Both sit below the switch's downstream ports, on one upstream port.
    buses = {dev: g.run(f"readlink -f /sys/bus/pci/devices/{dev}", check=True).output
             for dev in view}
    for path in buses.values():
        assert path.count("/0000:") >= 4, f"not behind a switch: {buses}"


def skip_on_amd_zen(g: GuestMachine) -> None:
    """The guest sees the host's CPU: Linux trusts the host bridges of AMD Zen with P2P."""
    cpu = g.run("grep -m2 -E '^(vendor_id|cpu family)' /proc/cpuinfo", check=True).output
    if "AuthenticAMD" in cpu and int(cpu.split("cpu family")[1].split(":")[1]) >= 0x17:
        pytest.skip("Linux trusts the host bridges of AMD Zen CPUs with P2P: " + cpu)


def test_two_qgpus_on_root_ports_are_not_peers(qgpu_restore_guest: MakeGuest,
                                               qgpu_kernel: GuestKernel) -> None:
    """Each on a root port of its own, the path goes through Q35's host bridge, which
    the kernel does not trust with peer-to-peer traffic: refused, and it says why."""
    g = pair_guest(qgpu_restore_guest, switch=False)
    skip_on_amd_zen(g)
    view = p2p_view(g)
    assert len(view) == 2, view
    for dev, (supported, peers) in view.items():
        assert supported == qgpu_kernel.has("PCI_P2PDMA"), (dev, view)
        assert set(peers) == set(view) - {dev} and set(peers.values()) == {None}, view
    if qgpu_kernel.has("PCI_P2PDMA"):
        log = g.run("dmesg", check=True).output
        assert "do not share an upstream bridge or whitelisted host bridge" in log, log[-2000:]


#: VRAM ranges of the copies: not page-aligned (the dma-buf covers the pages around
#: them), several SG segments' worth on neither side.
OFF, PEER_OFF, LENGTH = 0x10_0000 + 0x123, 0x30_0000 + 0x77, 3 * 65536 + 1001


def p2p_copy(g: GuestMachine, direction: str, extra: str = "") -> dict[str, object]:
    """qgpu1 pulls qgpu0's VRAM [OFF, +LENGTH) to its PEER_OFF, or pushes its own there."""
    return tool(g, f"-d /dev/qgpu0 p2p-copy {direction} {OFF:#x} {LENGTH} {PEER_OFF:#x} "
                   f"--peer /dev/qgpu1 {extra}", over="console")


def dev_stats(g: GuestMachine, dev: str) -> dict[str, int]:
    return {k: int(v) for k, v in tool(g, f"-d {dev} stats", over="console").items()
            if k != "ok"}


@pytest.mark.parametrize("direction", ["pull", "push"])
@pytest.mark.parametrize("mode", list(DmaMode), ids=str)
def test_vram_moves_between_two_qgpus(qgpu_restore_guest: MakeGuest,
                                      qgpu_kernel: GuestKernel, request: pytest.FixtureRequest,
                                      mode: DmaMode, direction: str) -> None:
    """Behind a switch, qgpu1 DMAs straight from (pull) or into (push) qgpu0's VRAM on a
    kernel with P2PDMA: the bytes arrive in the other backend, only qgpu1's engine ran,
    and without an IOMMU its bus addresses are qgpu0's VRAM BAR (with one, IOVAs the
    IOMMU translates there). On a kernel without P2PDMA the attach is refused
    (-EOPNOTSUPP) and the copy bounces through system memory: both engines run, and no
    bus address is in a BAR. The dma-bufs and their mappings are gone afterwards."""
    if mode not in selected_modes(request.config):
        pytest.skip(f"--qgpu-modes leaves {mode} out")
    g = pair_guest(qgpu_restore_guest, switch=True, mode=mode)
    q0, q1 = g.inspector("qgpu0"), g.inspector("qgpu1")
    src, src_off, dst, dst_off = ((q0, OFF, q1, PEER_OFF) if direction == "pull" else
                                  (q1, PEER_OFF, q0, OFF))
    pattern = 0x9E3779B9 if direction == "pull" else 0x7F4A7C15
    tool(g, f"-d /dev/{src.qdev_id} fill {src_off:#x} {LENGTH} {pattern:#x}", over="console")
    want = fill_pattern(pattern, LENGTH)
    assert src.vram_backend(src_off, LENGTH) == want, "the source VRAM after the fill"
    assert dst.vram_backend(dst_off, LENGTH) != want
    s0 = q0.stats()
    mark0, mark1 = trace_mark(q0), trace_mark(q1)

    res = p2p_copy(g, direction)

    assert dst.vram_backend(dst_off, LENGTH) == want, \
        f"{dst.qdev_id}'s VRAM backend after the {res['path']} {direction}"
    peer_op = "copy-to-vram" if direction == "pull" else "copy-from-vram"
    records = trace_since(q1, mark1)
    check_contiguous(records, peer_op, PEER_OFF, LENGTH)
    bar = q0.bars()[ABI.BAR_VRAM]
    in_bar = [r for r in records
              if bar.address <= int(r["bus-addr"]) < bar.address + bar.size]
    if qgpu_kernel.has("PCI_P2PDMA"):
        assert res["path"] == "p2p", \
            f"{res}: " + g.run("dmesg | tail -5", over="console").output
        assert q0.stats()["descriptors"] == s0["descriptors"], "qgpu0's engine ran"
        assert trace_since(q0, mark0) == [], "qgpu0 traced DMA of its own"
        if not mode.translated:
            # The peer's SG entries are the VRAM range's bus addresses, in order.
            pos = bar.address + OFF
            for r in records:
                assert int(r["bus-addr"]) == pos, \
                    f"{r}: want bus address {pos:#x} in qgpu0's VRAM BAR"
                pos += int(r["length"])
        else:
            assert not in_bar, f"IOVAs expected behind {mode}: {records}"
    else:
        assert res["path"] == "bounce" and res["p2p_errno"] == EOPNOTSUPP, res
        assert not in_bar, f"a bounce reached qgpu0's BAR: {records}"
        own_op = "copy-from-vram" if direction == "pull" else "copy-to-vram"
        check_contiguous(trace_since(q0, mark0), own_op, OFF, LENGTH)
    for dev in ("/dev/qgpu0", "/dev/qgpu1"):
        st = dev_stats(g, dev)
        assert st["dmabufs"] == 0 and st["dmabuf_maps"] == 0 and st["bos"] == 0, (dev, st)
    print(f"{mode} {direction}: {res['path']}, {res['segments']} segment(s)")


@pytest.mark.parametrize("switch", [False, True], ids=["root-ports", "switch"])
def test_bounce_is_what_p2p_copy_falls_back_to(qgpu_restore_guest: MakeGuest,
                                               switch: bool) -> None:
    """On two root ports (a path the kernel refuses, or no P2PDMA at all), p2p-copy
    reports why it could not go peer-to-peer and moves the bytes through system memory;
    --bounce forces that path behind a switch too."""
    g = pair_guest(qgpu_restore_guest, switch=switch)
    if not switch:
        skip_on_amd_zen(g)
    q0, q1 = g.inspector("qgpu0"), g.inspector("qgpu1")
    tool(g, f"-d /dev/qgpu0 fill {OFF:#x} {LENGTH} 0x5A5A0F0F", over="console")
    mark = trace_mark(q1)
    res = p2p_copy(g, "pull", "--bounce" if switch else "")
    assert res["path"] == "bounce", res
    if switch:
        assert res["p2p_errno"] == 0 and res["why"] == "--bounce", res
    else:
        assert res["p2p_errno"] == EOPNOTSUPP, res
    assert q1.vram_backend(PEER_OFF, LENGTH) == fill_pattern(0x5A5A0F0F, LENGTH)
    bar = q0.bars()[ABI.BAR_VRAM]
    records = trace_since(q1, mark)
    check_contiguous(records, "copy-to-vram", PEER_OFF, LENGTH)
    assert all(not bar.address <= int(r["bus-addr"]) < bar.address + bar.size
               for r in records), records


def test_a_removed_exporter_fails_its_peer_cleanly(qgpu_restore_guest: MakeGuest) -> None:
    """A process holds a dma-buf of qgpu0's VRAM (its device file closed); the host unplugs
    qgpu0; qgpu1's copy from the dma-buf then fails with -ENODEV and runs no job, nothing
    is left behind, and the module unloads once the process is gone."""
    g = pair_guest(qgpu_restore_guest, switch=True, check_leaks=True)
    tag = "/tmp/qgpu-p2p-held"
    g.run(f"rm -f {tag}.*; ( {TOOL} -d /dev/qgpu0 p2p-copy pull 0 65536 0 --peer /dev/qgpu1 "
          f"--hold-ready {tag}.ready --hold-go {tag}.go > {tag}.out 2>&1; "
          f"touch {tag}.done ) </dev/null >/dev/null 2>&1 &", check=True, over="console")
    wait_guest_file(g, f"{tag}.ready")
    FaultInjector.for_machine(g, "qgpu0").device_del()
    assert g.run("test -e /dev/qgpu0", over="console").status != 0
    g.run(f"touch {tag}.go", check=True, over="console")
    wait_guest_file(g, f"{tag}.done")
    out = g.run(f"cat {tag}.out", check=True, over="console").output
    assert '"ok":false' in out and f'"errno":{ENODEV}' in out, out
    st = dev_stats(g, "/dev/qgpu1")
    assert st["dmabuf_copies"] == 0, f"qgpu1 ran a job on the removed exporter's VRAM: {st}"
    log = g.run("dmesg", check=True, over="console").output
    assert "did not unmap" not in log, log
    g.run("rmmod qgpu", check=True, timeout=60, over="console")

