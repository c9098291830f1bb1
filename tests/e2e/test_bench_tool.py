"""``qgpu-bench dma``, the guest half of ``make bench``, run small.

Its figures are only worth reading if every operation it times really went
through the driver to the device and moved what it says: the device's own
byte counters must grow by exactly what the tool reports it ran, in every
DMA mode, and its check of the moved bytes must catch a device that
corrupts a transfer while reporting success.
"""

from __future__ import annotations

from typing import Any

import pytest

from qgpu.config import DmaMode
from qgpu.faults import FaultInjector
from qgpu.inspector import DeviceInspector
from qgpu.kernels import GuestKernel
from qgpu.machine import GuestMachine
from qgpu.tools.bench_driver import OPS

from .guestio import parse_json_line

BENCH = "/opt/qgpu/bin/qgpu-bench"
MiB = 1 << 20
DIRECT = pytest.mark.parametrize("qgpu_dma_mode", [DmaMode.DIRECT], indirect=True)


def bench_dma(guest: GuestMachine, args: str) -> tuple[int, dict[str, Any]]:
    """Run ``qgpu-bench dma ARGS``; return its exit status and JSON result."""
    res = guest.run(f"{BENCH} dma {args}", timeout=300)
    return res.status, parse_json_line(res.output, f"qgpu-bench dma {args}")


def ran_bytes(res: dict[str, Any], ops: tuple[str, ...]) -> int:
    """Bytes the tool moved with ``ops``: each cell's runs (warm-up, samples, checked run)."""
    return sum(c["size"] * c["runs"] for op in ops for c in res["results"][op])


@pytest.fixture(scope="module", autouse=True)
def _not_on_heavy_kernels(qgpu_kernel: GuestKernel) -> None:
    """Before the module's guests boot: the tool's checks do not depend on the kernel,
    and every driver path it takes runs under the debug kernel's detectors in other
    tests. Spares a debug boot per DMA mode (75 s of CI)."""
    if qgpu_kernel.detectors.heavy:
        pytest.skip(f"the bench tool's own checks: not on the {qgpu_kernel.name} kernel")


def test_bench_dma_runs_every_op_through_the_device(qgpu_guest: GuestMachine,
                                                    qgpu_inspector: DeviceInspector) -> None:
    before = qgpu_inspector.stats()
    status, res = bench_dma(qgpu_guest, "--max-size 64K --budget 256K")
    after = qgpu_inspector.stats()
    assert status == 0 and res["ok"] is True, res
    assert res["sizes"] == [4096, 16384, 65536]
    for op in ("memcpy", *OPS):
        cells = res["results"][op]
        assert [c["size"] for c in cells] == res["sizes"], op
        for c in cells:
            assert "errno" not in c and "skipped" not in c, (op, c)
            assert 3 <= c["n"] <= 31 and c["runs"] == 2 + c["n"] * c["inner"], (op, c)
            assert 0 < c["min_s"] <= c["median_s"] <= c["max_s"], (op, c)
    lat = res["latency"]
    for name in ("fill_4k_fence", "copy_user_4k"):
        samples = lat[name]["samples_us"]
        assert len(samples) == lat[name]["n"] == 200 and samples == sorted(samples), name
        assert lat[name]["min_s"] <= lat[name]["median_s"] <= lat[name]["p99_s"], name
    for op in ("copy_user_to", "copy_user_from"):     # 4 KiB, page-aligned: one page
        assert res["results"][op][0]["segments"] == 1, res["results"][op][0]
    subs = res["submitters"]
    assert [s["threads"] for s in subs] == [1, 2, 4] and all("seconds" in s for s in subs), subs
    assert [x["pages"] for x in res["lazy_touch"]] == [1, 16], res["lazy_touch"]
    assert all("median_s" in x for x in res["lazy_touch"]), res["lazy_touch"]
    drv = res["driver_stats"]
    assert drv["jobs"] > 0 and drv["timeouts"] == 0 and min(drv.values()) >= 0, drv

    # What the device counted is exactly what the tool says it ran.
    n_lat = lat["copy_user_4k"]["n"]
    to_vram = (ran_bytes(res, ("copy_user_to", "copy_user_to_sg", "copy_bo_to"))
               + n_lat * 4096 + sum(s["bytes"] for s in subs))
    from_vram = ran_bytes(res, ("copy_user_from", "copy_bo_from"))
    assert after["bytes-to-vram"] - before["bytes-to-vram"] == to_vram
    assert after["bytes-from-vram"] - before["bytes-from-vram"] == from_vram
    # ... and what the driver counted (it counts COPY_USER and COPY_BO bytes).
    assert (drv["bytes_to_vram"], drv["bytes_from_vram"]) == (to_vram, from_vram), drv
    assert (after["bytes-vram-copy"] - before["bytes-vram-copy"]
            == ran_bytes(res, ("copy_vram",)))
    assert (after["bytes-fill"] - before["bytes-fill"]
            == ran_bytes(res, ("fill",)) + lat["fill_4k_fence"]["n"] * 4096)
    assert after["errors"] == before["errors"]


@DIRECT
@pytest.mark.parametrize("kind", ["corrupt", "truncate"])
def test_bench_dma_catches_a_transfer_gone_wrong(qgpu_guest: GuestMachine,
                                                  faults: FaultInjector, kind: str) -> None:
    """The device damages the checked 4 KiB COPY_USER to VRAM and reports success:
    its middle byte inverted, or only its first half moved. That is the tool's 5th
    guest-memory descriptor (one page each: a warm-up run, 3 samples, the checked run)."""
    faults.corrupt(5) if kind == "corrupt" else faults.truncate(5)
    status, res = bench_dma(qgpu_guest, "--max-size 4K --budget 12K")
    assert faults.armed()[kind] == 0, "the fault did not fire"
    assert status == 1 and res["ok"] is False, res
    assert res["integrity_errors"] >= 1, res
    assert res["error"].startswith("copy_user_to 4096 bytes: byte 2048 is "), res["error"]
