"""Peer-to-peer DMA between two qgpus (issue 14, item 4): the topology it needs.

Linux lets one device's DMA reach another's BAR directly only through a PCIe switch
both sit below, with no ACS redirection on its ports, or through a host bridge it knows
forwards peer-to-peer traffic (Q35's is not one); and only on kernels with
``CONFIG_PCI_P2PDMA`` (the qgpu and debug kernels; Debian's has it off). The driver
reports ``pci_p2pdma_distance()`` for every other qgpu in debugfs
(``qgpu/<PCI name>/p2p``); these tests check it against the machine's topology
(``MachineConfig.pcie_switch``): peers behind a switch, refused behind two root ports,
and refused on a kernel without peer-to-peer support, the case the fallback is for.
(The device model's side -- a DMA to another qgpu's VRAM BAR is an ordinary bus access --
is ``tests/device/test_p2p.py``.)
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from qgpu import health
from qgpu.config import DmaMode, QgpuSpec
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine

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


def pair_guest(restore: MakeGuest, *, switch: bool) -> GuestMachine:
    g = restore(DmaMode.DIRECT, ssh=False, qgpus=PAIR, pcie_switch=switch)
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


def test_two_qgpus_on_root_ports_are_not_peers(qgpu_restore_guest: MakeGuest,
                                               qgpu_kernel: GuestKernel) -> None:
    """Each on a root port of its own, the path goes through Q35's host bridge, which
    the kernel does not trust with peer-to-peer traffic: refused, and it says why."""
    g = pair_guest(qgpu_restore_guest, switch=False)
    cpu = g.run("grep -m2 -E '^(vendor_id|cpu family)' /proc/cpuinfo", check=True).output
    if "AuthenticAMD" in cpu and int(cpu.split("cpu family")[1].split(":")[1]) >= 0x17:
        pytest.skip("Linux trusts the host bridges of AMD Zen CPUs with P2P: " + cpu)
    view = p2p_view(g)
    assert len(view) == 2, view
    for dev, (supported, peers) in view.items():
        assert supported == qgpu_kernel.has("PCI_P2PDMA"), (dev, view)
        assert set(peers) == set(view) - {dev} and set(peers.values()) == {None}, view
    if qgpu_kernel.has("PCI_P2PDMA"):
        log = g.run("dmesg", check=True).output
        assert "do not share an upstream bridge or whitelisted host bridge" in log, log[-2000:]
