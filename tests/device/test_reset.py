"""Engine reset, device reset, pause and migration with DMA in flight.

``x-dma-delay-ns`` paces the engine on the virtual clock, which only moves
when the test steps it (qtest): a transfer stays in flight deterministically.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qgpu.abi import ABI
from qgpu.device import (
    QOM_PATH,
    ROOT_PORT_SLOT,
    VRAM_ADDR,
    QgpuDevice,
    enumerate_qgpu,
    qgpu_args,
)
from qgpu.errors import DeviceError, QmpError
from qgpu.inspector import STAT_NAMES, DeviceInspector
from qgpu.pci import CAP_ID_EXP, CAP_ID_PM, PciFunction
from qgpu.qtest import QtestMachine
from qgpu.shm import SharedMemory

from .conftest import StartQgpu
from .test_reentrancy import wait_for

MiB = 1 << 20
SLICE_NS = 1_000_000
PCI_PM_PMC = 2
PCI_PM_CTRL = 4
PCI_PM_CTRL_NO_SOFT_RESET = 0x8


def _slow(dev: QgpuDevice) -> None:
    assert dev.qt.qmp is not None
    dev.qt.qmp.qom_set(QOM_PATH, "x-dma-delay-ns", SLICE_NS)


def _start_copy(dev: QgpuDevice, rng: random.Random, size: int = 8 * MiB
                ) -> tuple[int, int, bytes]:
    """Submit a fenced copy of ``size`` random bytes to VRAM 0; return (index, fence, data)."""
    data = rng.randbytes(size)
    src = dev.mem.alloc(size)
    dev.mem.write(src, data)
    fence = dev.mem.alloc(8)
    [index] = dev.submit(dev.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0, length=size,
                                  flags=ABI.DESC_F_FENCE | ABI.DESC_F_IRQ, fence_addr=fence,
                                  fence_value=7))
    return index, fence, data


def test_transfer_progresses_with_the_virtual_clock(qgpu: QgpuDevice,
                                                    rng: random.Random) -> None:
    _slow(qgpu)
    index, fence, data = _start_copy(qgpu, rng)
    qgpu.qt.clock_step(SLICE_NS * 3 + SLICE_NS // 2)
    assert qgpu.stat("bytes-to-vram") == 3 * MiB
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) & ABI.ENGINE_STATUS_BUSY
    assert qgpu.status(index) == 0
    qgpu.qt.clock_step(SLICE_NS * 6)
    assert qgpu.status(index) == ABI.DESC_STATUS_DONE
    assert qgpu.vram_host(0, len(data)) == data
    assert qgpu.mem.read(fence, 8) == (7).to_bytes(8, "little")


def test_a_smaller_slice_moves_less_per_engine_run(start: StartQgpu,
                                                   rng: random.Random) -> None:
    slice_bytes = 64 << 10
    dev = start(f"x-dma-slice={slice_bytes}")
    dev.setup_ring(64)
    assert dev.qt.qmp is not None
    assert dev.qt.qmp.qom_get(QOM_PATH, "x-dma-slice") == slice_bytes
    _slow(dev)
    index, _, data = _start_copy(dev, rng, size=MiB)
    dev.qt.clock_step(SLICE_NS * 3 + SLICE_NS // 2)
    assert dev.stat("bytes-to-vram") == 3 * slice_bytes
    dev.qt.clock_step(SLICE_NS * (MiB // slice_bytes))
    assert dev.status(index) == ABI.DESC_STATUS_DONE
    assert dev.vram_host(0, len(data)) == data


def test_engine_reset_aborts_transfer_in_flight(qgpu: QgpuDevice, rng: random.Random) -> None:
    _slow(qgpu)
    index, fence, _ = _start_copy(qgpu, rng)
    qgpu.qt.clock_step(SLICE_NS * 2 + 1)
    qgpu.engine_reset()
    assert qgpu.status(index) == ABI.DESC_STATUS_DONE | ABI.ERR_ABORTED
    assert qgpu.mem.read(fence, 8) == bytes(8), "an aborted descriptor writes no fence"
    assert (qgpu.reg(ABI.REG_RING_HEAD), qgpu.reg(ABI.REG_RING_TAIL)) == (0, 0)
    assert qgpu.reg(ABI.REG_ENGINE_CTRL) == 0
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) == 0
    assert qgpu.stat("aborted") == 1 and qgpu.stat("engine-resets") == 1
    last = qgpu.dma_trace()[-1]
    assert (last["status"], last["vram-offset"], last["length"]) == ("aborted", 2 * MiB, 6 * MiB)
    # Nothing more happens however long we wait.
    qgpu.qt.clock_step(SLICE_NS * 20)
    assert qgpu.stat("bytes-to-vram") == 2 * MiB
    # Ring base and size survive: re-enable and carry on.
    assert qgpu.reg(ABI.REG_RING_SIZE) == 64
    assert qgpu.ring is not None
    qgpu.ring.tail = 0
    qgpu.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)
    assert qgpu.qt.qmp is not None
    qgpu.qt.qmp.qom_set(QOM_PATH, "x-dma-delay-ns", 0)
    assert qgpu.run(qgpu.desc(opcode=ABI.OP_FILL, dst=0, length=4096, fill_pattern=1)) == [0]


def test_engine_reset_keeps_dma_error(qgpu: QgpuDevice) -> None:
    qgpu.run(qgpu.desc(opcode=ABI.OP_MAX + 1))
    qgpu.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    assert qgpu.reg(ABI.REG_DMA_ERROR) == ABI.ERR_BAD_OPCODE


def test_pause_and_resume(qgpu: QgpuDevice, rng: random.Random) -> None:
    _slow(qgpu)
    index, _, data = _start_copy(qgpu, rng)
    qgpu.qt.clock_step(SLICE_NS * 2 + 1)
    qgpu.set_reg(ABI.REG_ENGINE_CTRL, 0)
    qgpu.qt.clock_step(SLICE_NS * 20)
    assert qgpu.stat("bytes-to-vram") == 2 * MiB
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) == ABI.ENGINE_STATUS_BUSY
    qgpu.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)
    qgpu.qt.clock_step(SLICE_NS * 20)
    assert qgpu.status(index) == ABI.DESC_STATUS_DONE
    assert qgpu.vram_host(0, len(data)) == data


def test_system_reset_mid_transfer(qgpu: QgpuDevice, rng: random.Random) -> None:
    assert qgpu.qt.qmp is not None
    assert qgpu.vram_shm is not None
    qgpu.vram_shm.write(32 * MiB, b"survives reset")
    _slow(qgpu)
    qgpu.set_reg(ABI.REG_SCRATCH, 0x1234)
    qgpu.set_reg(ABI.REG_INT_RAISE, ABI.INT_SOFT)
    index, _, _ = _start_copy(qgpu, rng)
    qgpu.qt.clock_step(SLICE_NS * 2 + 1)
    events = len(qgpu.qt.qmp.events())
    qgpu.qt.qmp.command("system_reset")
    qgpu.qt.qmp.wait_event("RESET", after=events)
    qgpu.qt.clock_step(SLICE_NS * 20)           # the aborted transfer must not resume
    fn = enumerate_qgpu(qgpu.qt, qgpu.vram_size)
    assert fn.read16(0x04) & 0x6 == 0x6
    for name in ("SCRATCH", "RING_SIZE", "RING_HEAD", "ENGINE_CTRL", "ENGINE_STATUS",
                 "INT_STATUS", "INT_MASK", "FENCE_LO", "DMA_ERROR"):
        assert qgpu.reg(getattr(ABI, "REG_" + name)) == 0, name
    assert qgpu.stat("bytes-to-vram") == 2 * MiB
    assert qgpu.stat("aborted") == 1
    assert qgpu.vram_host(32 * MiB, 14) == b"survives reset"
    assert qgpu.status(index) == 0, "no write-back to guest memory during reset"
    # Usable again after re-programming.
    qgpu.qt.qmp.qom_set(QOM_PATH, "x-dma-delay-ns", 0)
    qgpu.setup_ring(8)
    assert qgpu.run(qgpu.desc(opcode=ABI.OP_FILL, dst=0, length=64, fill_pattern=5)) == [0]


def test_dma_delay_knob_is_validated(qgpu: QgpuDevice) -> None:
    assert qgpu.qt.qmp is not None
    with pytest.raises(QmpError, match="at most 1000000000"):
        qgpu.qt.qmp.qom_set(QOM_PATH, "x-dma-delay-ns", 2_000_000_000)
    with pytest.raises(QmpError):
        qgpu.qt.qmp.qom_set(QOM_PATH, "stat-errors", 5)     # statistics are read-only


def migration_status(qt: QtestMachine, timeout: float = 60.0) -> str:
    """Wait until the migration in ``qt`` completes or fails; return its status."""
    assert qt.qmp is not None
    deadline = time.monotonic() + timeout
    while True:
        status = str(qt.qmp.command("query-migrate").get("status"))
        if status in ("completed", "failed") or time.monotonic() > deadline:
            return status
        qt.poll()
        time.sleep(0.01)


def _save_state(dev: QgpuDevice, state: Path) -> None:
    """Migrate ``dev``'s machine into the file ``state`` (the source stops)."""
    assert dev.qt.qmp is not None
    dev.qt.qmp.command("migrate", {"uri": f"file:{state}"})
    assert migration_status(dev.qt) == "completed"


def _load_state(dest: QtestMachine, state: Path) -> str:
    """Load ``state`` into the started ``dest`` (``-incoming defer``); return the
    migration's final status. A failed load leaves QEMU running."""
    assert dest.qmp is not None
    dest.qmp.command("migrate-incoming", {"uri": f"file:{state}", "exit-on-error": False})
    return migration_status(dest)


def _incoming_machine(dev: QgpuDevice, props: str = "") -> tuple[QtestMachine, SharedMemory]:
    """A machine like ``dev``'s, waiting for an incoming migration."""
    dest = QtestMachine(name="dest")
    vram = dest.shared_memory(dev.vram_size, "vram")
    dest.extra_args = [*qgpu_args(props, vram_path=str(vram.path), vram_size=dev.vram_size),
                       "-incoming", "defer"]
    return dest, vram


def test_migration_with_transfer_in_flight(qgpu: QgpuDevice, rng: random.Random,
                                           tmp_path: Path) -> None:
    """Save the machine mid-transfer, load it in a new QEMU, and finish there."""
    _slow(qgpu)
    index, fence, data = _start_copy(qgpu, rng, size=6 * MiB)
    qgpu.qt.clock_step(SLICE_NS * 2 + 1)
    state = tmp_path / "state"
    _save_state(qgpu, state)
    dest, vram = _incoming_machine(qgpu, f"x-dma-delay-ns={SLICE_NS}")
    with dest:
        assert _load_state(dest, state) == "completed"
        after = QgpuDevice(dest, qgpu.fn.__class__(dest, 1, 0), vram=vram)
        after.ring = qgpu.ring
        assert after.stat("bytes-to-vram") == 2 * MiB
        dest.clock_step(SLICE_NS * 10)
        assert after.status(index) == ABI.DESC_STATUS_DONE
        assert after.vram_host(0, len(data)) == data
        assert after.mem.read(fence, 8) == (7).to_bytes(8, "little")
        assert after.stat("bytes-to-vram") == 6 * MiB


@pytest.mark.parametrize("dest_limit", [32, 16])
def test_an_sg_list_in_flight_is_checked_against_the_destinations_limit(
        qgpu: QgpuDevice, rng: random.Random, tmp_path: Path, dest_limit: int) -> None:
    """``x-sg-max-entries`` is the destination's own (spec 10.2): the engine reads
    the list of the descriptor in flight again there; a stream whose list is over
    the destination's limit is refused, as one the engine would not have run."""
    _slow(qgpu)
    data = rng.randbytes(8 * MiB)
    segs = []
    for i in range(32):
        addr = qgpu.mem.alloc(256 * 1024)
        qgpu.mem.write(addr, data[i * 256 * 1024:(i + 1) * 256 * 1024])
        segs.append((addr, 256 * 1024))
    addr, count = qgpu.sg_list(segs)
    [index] = qgpu.submit(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, flags=ABI.DESC_F_SG,
                                    src=addr, dst=0, length=len(data), sg_count=count))
    qgpu.qt.clock_step(SLICE_NS * 2 + 1)
    assert qgpu.stat("bytes-to-vram") == 2 * MiB
    state = tmp_path / "state"
    _save_state(qgpu, state)
    dest, vram = _incoming_machine(qgpu, f"x-dma-delay-ns={SLICE_NS},"
                                         f"x-sg-max-entries={dest_limit}")
    with dest:
        status = _load_state(dest, state)
        assert dest.proc is not None
        if dest_limit < count:
            assert status == "failed"
            assert "descriptor in flight the engine would have refused" in \
                dest.proc.log_tail(), dest.proc.log_tail()
            return
        assert status == "completed", dest.proc.log_tail()
        after = QgpuDevice(dest, qgpu.fn.__class__(dest, 1, 0), vram=vram)
        after.ring = qgpu.ring
        dest.clock_step(SLICE_NS * 10)
        assert after.status(index) == ABI.DESC_STATUS_DONE
        assert after.vram_host(0, len(data)) == data


def test_a_migration_that_leaves_shared_vram_out_loads(qgpu: QgpuDevice, rng: random.Random,
                                                       tmp_path: Path) -> None:
    """VM templating (issue 12): with x-ignore-shared, RAM on shared files stays
    out of the stream and the destination maps the same files. QEMU checks that
    each such RAM block sits at the source's address; VRAM is a BAR, unmapped
    while the destination waits, so its address must not be the BAR's."""
    data = rng.randbytes(qgpu.vram_size)       # not zero pages: a stream with it is big
    assert qgpu.vram_shm is not None and qgpu.qt.qmp is not None
    qgpu.vram_shm.write(0, data)
    ignore_shared = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
    qgpu.qt.qmp.command("stop")
    qgpu.qt.qmp.command("migrate-set-capabilities", ignore_shared)
    state = tmp_path / "state"
    _save_state(qgpu, state)
    assert state.stat().st_size < 1 << 20, "VRAM or guest RAM went into the stream"
    dest = QtestMachine(name="dest")      # RAM on a file of its own: ignored too
    dest.extra_args = [*qgpu_args(vram_path=str(qgpu.vram_shm.path), vram_size=qgpu.vram_size),
                       "-incoming", "defer"]
    with dest:
        assert dest.qmp is not None
        dest.qmp.command("migrate-set-capabilities", ignore_shared)
        status = _load_state(dest, state)
        assert dest.proc is not None
        assert status == "completed", dest.proc.log_tail()
        assert dest.read(VRAM_ADDR, 4096) == data[:4096]


def test_a_device_reset_drops_a_posted_abort_status(qgpu: QgpuDevice,
                                                   rng: random.Random) -> None:
    """Spec 8: the status write ENGINE_RESET posted is dropped by a device
    reset, like the descriptor in flight it stood for."""
    _slow(qgpu)
    index, _, _ = _start_copy(qgpu, rng)
    qgpu.qt.clock_step(SLICE_NS + 1)
    assert qgpu.qt.qmp is not None
    qgpu.qt.qmp.command("stop")
    qgpu.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) == ABI.ENGINE_STATUS_BUSY
    events = len(qgpu.qt.qmp.events())
    qgpu.qt.qmp.command("system_reset")
    qgpu.qt.qmp.wait_event("RESET", after=events)
    qgpu.qt.qmp.command("cont")
    enumerate_qgpu(qgpu.qt, qgpu.vram_size)
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) == 0
    time.sleep(0.2)
    qgpu.qt.poll()
    assert qgpu.status(index) == 0, "a device reset must drop the posted status write"


def test_a_pending_abort_status_migrates(qgpu: QgpuDevice, rng: random.Random,
                                        tmp_path: Path) -> None:
    """ENGINE_RESET on a stopped VM posts the aborted status; a migration
    carries it (subsection qgpu/abort-status) and the destination writes it
    once its VM runs."""
    _slow(qgpu)
    index, fence, _ = _start_copy(qgpu, rng, size=4 * MiB)
    qgpu.qt.clock_step(SLICE_NS + 1)
    assert qgpu.qt.qmp is not None
    qgpu.qt.qmp.command("stop")
    qgpu.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    state = tmp_path / "state"
    _save_state(qgpu, state)
    assert qgpu.status(index) == 0
    dest, vram = _incoming_machine(qgpu)
    with dest:
        assert _load_state(dest, state) == "completed"
        after = QgpuDevice(dest, qgpu.fn.__class__(dest, 1, 0), vram=vram)
        after.ring = qgpu.ring
        assert dest.qmp is not None
        assert dest.qmp.command("query-status")["status"] == "paused"
        assert after.reg(ABI.REG_ENGINE_STATUS) == ABI.ENGINE_STATUS_BUSY
        assert after.status(index) == 0
        dest.qmp.command("cont")
        after.wait_idle()
        assert after.status(index) == ABI.DESC_STATUS_DONE | ABI.ERR_ABORTED
        assert after.mem.read(fence, 8) == bytes(8)


# SCRATCH and USER_SCRATCH, set before saving, find qgpu's registers in the
# stream; the others follow in vmstate_qgpu's order, big-endian.
STREAM_MARK = (0x5CA1AB1E).to_bytes(4, "big") + (0x0DDBA11).to_bytes(4, "big")
OFF_RING_BASE, OFF_RING_HEAD, OFF_RING_TAIL, OFF_HALTED, OFF_INT_MASK = 8, 20, 24, 32, 37
OFF_CUR_FLAGS, OFF_CUR_SG_COUNT = 74, 122


def _put(stream: bytearray, at: int, value: int, size: int) -> None:
    stream[at:at + size] = value.to_bytes(size, "big")


def _get(stream: bytearray, at: int, size: int) -> int:
    return int.from_bytes(stream[at:at + size], "big")


def _sg_count(count: int) -> Callable[[bytearray, int], None]:
    """Make the copy in flight an SG copy (its other flags kept) of ``count`` entries."""
    def corrupt(stream: bytearray, at: int) -> None:
        flags = _get(stream, at + OFF_CUR_FLAGS, 4)
        _put(stream, at + OFF_CUR_FLAGS, flags | ABI.DESC_F_SG, 4)
        _put(stream, at + OFF_CUR_SG_COUNT, count, 4)
    return corrupt


# name: (how to corrupt the state at the mark's offset, what QEMU must say)
CORRUPTIONS: dict[str, tuple[Callable[[bytearray, int], None], str]] = {
    "reserved INT_MASK bits": (
        lambda b, o: _put(b, o + OFF_INT_MASK, 0x10 | ABI.INT_ALL, 4), "reserved register bits"),
    "TAIL at HEAD with a descriptor in flight": (
        lambda b, o: _put(b, o + OFF_RING_TAIL, _get(b, o + OFF_RING_HEAD, 4), 4),
        "descriptor in flight outside HEAD..TAIL"),
    "halted with a descriptor in flight": (
        lambda b, o: _put(b, o + OFF_HALTED, 1, 1),
        "descriptor in flight on a halted or resetting engine"),
    "misaligned ring while busy": (
        lambda b, o: _put(b, o + OFF_RING_BASE, _get(b, o + OFF_RING_BASE, 8) + 8, 8),
        "engine enabled or busy on a ring it cannot have accepted"),
    "too many SG entries in flight": (
        _sg_count(ABI.SG_MAX_ENTRIES + 1), "descriptor in flight the engine would have refused"),
}


# The same edits within the rules load: the checks refuse no state the
# device can produce.
ACCEPTED: dict[str, Callable[[bytearray, int], None]] = {
    "as saved": lambda b, o: None,
    "the most SG entries in flight": _sg_count(ABI.SG_MAX_ENTRIES),
    "every INT_MASK bit": lambda b, o: _put(b, o + OFF_INT_MASK, ABI.INT_ALL, 4),
}


def _saved_in_flight(qgpu: QgpuDevice, rng: random.Random, state: Path) -> tuple[bytearray, int]:
    """Save a machine with a copy in flight; return the stream and where qgpu's registers are."""
    qgpu.set_reg(ABI.REG_SCRATCH, 0x5CA1AB1E)
    qgpu.set_reg(ABI.REG_USER_SCRATCH, 0x0DDBA11)
    _slow(qgpu)
    _start_copy(qgpu, rng, size=4 * MiB)
    qgpu.qt.clock_step(SLICE_NS + 1)
    _save_state(qgpu, state)
    stream = bytearray(state.read_bytes())
    assert stream.count(STREAM_MARK) == 1
    return stream, stream.index(STREAM_MARK)


@pytest.mark.parametrize("edit", sorted(ACCEPTED))
def test_a_migration_stream_with_a_state_the_device_can_produce_loads(
        qgpu: QgpuDevice, rng: random.Random, tmp_path: Path, edit: str) -> None:
    state = tmp_path / "state"
    stream, at = _saved_in_flight(qgpu, rng, state)
    ACCEPTED[edit](stream, at)
    state.write_bytes(stream)
    dest, _ = _incoming_machine(qgpu, f"x-dma-delay-ns={SLICE_NS}")
    with dest:
        assert dest.proc is not None
        assert _load_state(dest, state) == "completed", dest.proc.log_tail(20)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_migration_stream_with_a_state_the_device_cannot_produce_is_refused(
        qgpu: QgpuDevice, rng: random.Random, tmp_path: Path, corruption: str) -> None:
    """Issue 11 (S5): post_load accepted states that the registers cannot
    produce. The stream is input: the destination refuses it, says why, and
    lives on."""
    state = tmp_path / "state"
    stream, at = _saved_in_flight(qgpu, rng, state)
    corrupt, reason = CORRUPTIONS[corruption]
    corrupt(stream, at)
    state.write_bytes(stream)
    dest, _ = _incoming_machine(qgpu, f"x-dma-delay-ns={SLICE_NS}")
    with dest:
        assert _load_state(dest, state) == "failed"
        assert dest.proc is not None and dest.proc.is_alive()
        log = dest.proc.log_tail(50)
        assert f"qgpu: migration stream refused: {reason}" in log, log


def test_d3hot_stops_the_engine_and_d0_resets_the_function(qgpu: QgpuDevice,
                                                          rng: random.Random) -> None:
    """PCI PM: D3hot stops DMA; back to D0 the function is reset (No_Soft_Reset is
    clear, as for a GPU whose power was cut), VRAM survives."""
    pm = qgpu.fn.capabilities()[CAP_ID_PM]
    assert qgpu.fn.read16(pm + PCI_PM_PMC) & 0x7 == 3, "PM version 1.2"
    assert qgpu.fn.read16(pm + PCI_PM_CTRL) & PCI_PM_CTRL_NO_SOFT_RESET == 0
    assert qgpu.vram_shm is not None
    qgpu.vram_shm.write(32 * MiB, b"survives D3hot")
    _slow(qgpu)
    qgpu.set_reg(ABI.REG_SCRATCH, 0x1234)
    index, _, _ = _start_copy(qgpu, rng)
    qgpu.qt.clock_step(SLICE_NS * 2 + 1)
    moved = qgpu.stat("bytes-to-vram")
    assert 0 < moved < 8 * MiB
    qgpu.fn.write16(pm + PCI_PM_CTRL, 3)                 # D3hot
    assert qgpu.fn.read16(pm + PCI_PM_CTRL) & 3 == 3
    qgpu.qt.clock_step(SLICE_NS * 20)
    assert qgpu.stat("bytes-to-vram") == moved, "DMA went on in D3hot"
    qgpu.fn.write16(pm + PCI_PM_CTRL, 1)                 # D1: not offered, refused
    assert qgpu.fn.read16(pm + PCI_PM_CTRL) & 3 == 3
    qgpu.fn.write16(pm + PCI_PM_CTRL, 0)                 # D0: the function resets
    qgpu.qt.clock_step(SLICE_NS * 20)
    assert qgpu.stat("bytes-to-vram") == moved, "the aborted copy resumed"
    fn = enumerate_qgpu(qgpu.qt, qgpu.vram_size)        # config space was reset too
    assert fn.read16(pm + PCI_PM_CTRL) & 3 == 0
    for name in ("SCRATCH", "RING_SIZE", "RING_HEAD", "ENGINE_CTRL", "INT_MASK", "FENCE_LO"):
        assert qgpu.reg(getattr(ABI, "REG_" + name)) == 0, name
    assert qgpu.stat("aborted") == 1
    assert qgpu.status(index) == 0, "no write-back after the power cycle"
    assert qgpu.vram_host(32 * MiB, 14) == b"survives D3hot"
    assert qgpu.qt.qmp is not None
    qgpu.qt.qmp.qom_set(QOM_PATH, "x-dma-delay-ns", 0)
    qgpu.setup_ring(8)
    assert qgpu.run(qgpu.desc(opcode=ABI.OP_FILL, dst=0, length=64, fill_pattern=5)) == [0]


def test_every_descriptor_submitted_is_retired_aborted_or_dropped(
        qgpu: QgpuDevice, rng: random.Random) -> None:
    """The statistics account for each descriptor a driver wrote, however it ended.

    A driver checks its own count of descriptors written against
    ``descriptors + aborted + dropped``; the pending ones an engine reset or
    a device reset discards unstarted are ``dropped``.
    """
    _slow(qgpu)
    _start_copy(qgpu, rng, 4 * MiB)
    qgpu.submit(*(qgpu.desc(opcode=ABI.OP_FILL, dst=4096 * i, length=64) for i in range(3)))
    qgpu.qt.clock_step(SLICE_NS + 1)
    qgpu.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    assert {n: qgpu.stat(n) for n in ("descriptors", "aborted", "dropped")} == \
        {"descriptors": 0, "aborted": 1, "dropped": 3}
    # Disabled, the engine starts nothing: a reset drops all that is pending.
    assert qgpu.ring is not None
    qgpu.ring.tail = 0
    qgpu.submit(*(qgpu.desc(opcode=ABI.OP_FILL, dst=4096 * i, length=64) for i in range(2)))
    qgpu.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    assert (qgpu.stat("aborted"), qgpu.stat("dropped")) == (1, 5)
    # So does a RING_SIZE write, which empties the ring (the engine is disabled).
    qgpu.ring.tail = 0
    qgpu.submit(qgpu.desc(opcode=ABI.OP_NOP))
    qgpu.set_reg(ABI.REG_RING_SIZE, 64)
    assert (qgpu.stat("aborted"), qgpu.stat("dropped")) == (1, 6)
    # And a device reset, with one in flight and one behind it.
    qgpu.ring.tail = 0
    qgpu.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)
    _start_copy(qgpu, rng, 4 * MiB)
    qgpu.submit(qgpu.desc(opcode=ABI.OP_FILL, dst=0, length=64))
    qgpu.qt.clock_step(SLICE_NS + 1)
    assert qgpu.qt.qmp is not None
    events = len(qgpu.qt.qmp.events())
    qgpu.qt.qmp.command("system_reset")
    qgpu.qt.qmp.wait_event("RESET", after=events)
    assert {n: qgpu.stat(n) for n in ("descriptors", "aborted", "dropped")} == \
        {"descriptors": 0, "aborted": 2, "dropped": 7}


def test_the_engine_does_no_dma_while_the_vm_is_stopped(qgpu: QgpuDevice,
                                                       rng: random.Random) -> None:
    """Issue 11 (S3): the bottom-half engine kept copying while the VM was
    paused, and a doorbell written while paused started work. A stopped VM
    (``stop``, or a migration's switchover) must see no DMA; ``cont`` resumes."""
    assert qgpu.qt.qmp is not None
    qgpu.qt.qmp.command("stop")
    index, fence, data = _start_copy(qgpu, rng, 32 * MiB)   # doorbell while stopped
    time.sleep(0.5)
    qgpu.qt.poll()
    assert qgpu.stat("bytes-to-vram") == 0, "the engine ran while the VM was stopped"
    assert qgpu.status(index) == 0 and qgpu.mem.read(fence, 8) == bytes(8)
    qgpu.qt.qmp.command("cont")
    wait_for("the copy to finish after cont", lambda: qgpu.status(index) == ABI.DESC_STATUS_DONE)
    assert qgpu.vram_host(0, len(data)) == data


def test_engine_reset_writes_no_memory_while_the_vm_is_stopped(qgpu: QgpuDevice,
                                                               rng: random.Random) -> None:
    """Issue 11 (S3, S8): ENGINE_RESET wrote the aborted descriptor's status
    by DMA inside the register write, even with the VM stopped. The write is
    the engine's, after the register access, and waits for the VM to run;
    ENGINE_STATUS says BUSY until it is done."""
    _slow(qgpu)
    index, fence, _ = _start_copy(qgpu, rng)
    qgpu.qt.clock_step(SLICE_NS * 2 + 1)
    assert qgpu.qt.qmp is not None
    qgpu.qt.qmp.command("stop")
    qgpu.set_reg(ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    time.sleep(0.2)
    qgpu.qt.poll()
    assert qgpu.status(index) == 0, "ENGINE_RESET wrote guest memory while the VM was stopped"
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) == ABI.ENGINE_STATUS_BUSY
    assert qgpu.stat("aborted") == 1
    qgpu.qt.qmp.command("cont")
    wait_for("the aborted status", lambda: qgpu.status(index) != 0)
    assert qgpu.status(index) == ABI.DESC_STATUS_DONE | ABI.ERR_ABORTED
    assert qgpu.reg(ABI.REG_ENGINE_STATUS) == 0
    assert qgpu.mem.read(fence, 8) == bytes(8)
    assert qgpu.stat("aborted") == 1


PCI_EXP_SLTCTL = 0x18
PCI_EXP_SLTCTL_PCC = 0x400          # Power Controller Control: 1 = power off
PCI_EXP_SLTCTL_PWR_IND_OFF = 0x300


@pytest.mark.parametrize("memdev", [False, True], ids=["own-vram", "memdev"])
def test_device_add_right_after_the_guest_powered_the_slot_off(start: StartQgpu,
                                                               memdev: bool) -> None:
    """Issue 11: the guest powers the slot off (native PCIe hotplug), QMP
    ``device_add`` at once: QEMU aborted with "RAMBlock .../qgpu.vram already
    registered" -- the device's own VRAM (no memdev) kept its migration name
    until the old object was finalized, an RCU grace period later. With a
    memdev, the new device takes the same backend, whose region the old one
    must have taken out of its BAR container (QEMU asserts a region is in
    one container at most)."""
    dev = start(shared_vram=memdev,
                extra_args=["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"])
    vram = {"memdev": "qgpu-vram"} if memdev else {"vram-size": 64 << 20}
    port = PciFunction(dev.qt, 0, ROOT_PORT_SLOT)
    sltctl = port.capabilities()[CAP_ID_EXP] + PCI_EXP_SLTCTL
    assert dev.qt.qmp is not None
    for _ in range(3):
        port.write16(sltctl, port.read16(sltctl) | PCI_EXP_SLTCTL_PCC | PCI_EXP_SLTCTL_PWR_IND_OFF)
        wait_for("the slot to be empty", lambda: not qgpu0_plugged(dev))
        dev.qt.qmp.command("device_add", {"driver": "qgpu", "id": "qgpu0",
                                          "bus": "qgpu-rp0", **vram})
        port.write16(sltctl, port.read16(sltctl) & ~PCI_EXP_SLTCTL_PCC)
        assert dev.qt.proc is not None and dev.qt.proc.is_alive()
    assert qgpu0_plugged(dev)



def qgpu0_plugged(dev: QgpuDevice) -> bool:
    """Whether qgpu0 is in QMP query-pci (the inspector's own lookup)."""
    assert dev.qt.qmp is not None and dev.qt.proc is not None
    try:
        DeviceInspector(dev.qt.qmp, "qgpu0", vram=None, workdir=dev.qt.proc.workdir).pci_device()
    except DeviceError:
        return False
    return True


def test_a_bar_moved_onto_a_transfer_in_flight_stops_it(qgpu: QgpuDevice,
                                                         rng: random.Random) -> None:
    """The device never DMAs into its own BARs (SELF_DMA). A transfer's guest
    ranges were checked only at fetch: a guest that moved BAR2 onto the source
    half-way through made the engine go on as if nothing had changed. Each
    slice is checked again; the descriptor fails with SELF_DMA where the BAR
    now is."""
    _slow(qgpu)
    qgpu.mem.alloc(64 * MiB)        # the source above 64 MiB, below 128
    index, fence, _ = _start_copy(qgpu, rng)
    qgpu.qt.clock_step(SLICE_NS * 2 + SLICE_NS // 2)
    assert qgpu.stat("bytes-to-vram") == 2 * MiB
    # BAR2 (VRAM, 64 MiB, 64-bit) moves to bus address 64 MiB, over the
    # source (guest RAM still answers there: it has priority over PCI).
    bar2 = 0x10 + 4 * ABI.BAR_VRAM
    qgpu.fn.write32(bar2 + 4, 0)
    qgpu.fn.write32(bar2, 64 * MiB)
    assert qgpu.fn.bar_address(ABI.BAR_VRAM) == 64 * MiB
    qgpu.qt.clock_step(SLICE_NS * 10)
    assert qgpu.status(index) == ABI.DESC_STATUS_DONE | ABI.ERR_SELF_DMA
    assert qgpu.stat("bytes-to-vram") == 2 * MiB
    assert qgpu.mem.read(fence, 8) == bytes(8)


def test_a_state_loaded_in_place_brings_back_the_saved_statistics(
        qgpu: QgpuDevice, tmp_path: Path) -> None:
    """``x-revert-to-template`` (qemu-device/patches/0008) resets the machine and
    loads a saved state in the same QEMU: the device's statistics are the saved
    ones again, except ``stat-engine-busy-ns``, host time that is not migrated,
    which starts at 0 as on a migration's destination (spec 9.2) -- not at what
    this QEMU's engine ran since the save; and the DMA trace, not migrated
    either, starts empty as there (9.3), not with this QEMU's records."""
    assert qgpu.qt.qmp is not None
    qmp = qgpu.qt.qmp
    src = qgpu.mem.alloc(MiB, align=4096)
    assert qgpu.run(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0, length=MiB)) == [0]
    saved = {name: qgpu.stat(name) for name in STAT_NAMES}
    qmp.command("stop")
    qmp.command("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-ignore-shared", "state": True}]})
    state = tmp_path / "state"
    _save_state(qgpu, state)
    qmp.command("cont")
    assert qgpu.run(*(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, dst=0, length=MiB)
                      for _ in range(3))) == [0] * 3
    assert qgpu.stat("bytes-to-vram") == 4 * MiB and qgpu.stat("engine-busy-ns") > 0
    qmp.command("stop")
    qmp.command("x-revert-to-template", {"filename": str(state)})
    qmp.command("cont")
    now = {name: qgpu.stat(name) for name in STAT_NAMES}
    assert now == {**saved, "engine-busy-ns": 0}, \
        f"statistics after loading the state: {now}; saved: {saved}"
    trace = qgpu.dma_trace()
    assert trace == [], f"the DMA trace after loading the state: {trace}"
