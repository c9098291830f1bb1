"""Register access rules: sizes, read-only registers, W1C, ring configuration."""

from __future__ import annotations

import pytest

from qgpu.abi import ABI
from qgpu.device import REGS_ADDR, QgpuDevice

from .conftest import StartQgpu

READ_ONLY = ["ID", "VERSION", "CAPS", "VRAM_SIZE_LO", "VRAM_SIZE_HI", "RING_MAX_ENTRIES",
             "SG_MAX_ENTRIES", "RING_HEAD", "RING_TAIL", "ENGINE_STATUS", "FENCE_LO",
             "FENCE_HI", "DMA_ERROR_INDEX", "ACCESS_ERROR_ADDR", "USER_ID",
             "USER_ENGINE_STATUS", "USER_FENCE_LO", "USER_FENCE_HI", "USER_RING_HEAD"]


def reg(name: str) -> int:
    return int(getattr(ABI, "REG_" + name))


def access_error(dev: QgpuDevice) -> tuple[int, int]:
    """Return (ACCESS_ERROR, ACCESS_ERROR_ADDR) and clear ACCESS_ERROR."""
    err, addr = dev.reg(ABI.REG_ACCESS_ERROR), dev.reg(ABI.REG_ACCESS_ERROR_ADDR)
    dev.set_reg(ABI.REG_ACCESS_ERROR, err)
    return err, addr


@pytest.fixture
def dev(start: StartQgpu) -> QgpuDevice:
    return start()


@pytest.mark.parametrize("name", READ_ONLY)
def test_read_only_register_ignores_writes(dev: QgpuDevice, name: str) -> None:
    before = dev.reg(reg(name))
    dev.set_reg(reg(name), before ^ 0xFFFF_FFFF)
    # ACCESS_ERROR_ADDR does change: to its own offset, recording this misuse.
    expect = reg(name) if name == "ACCESS_ERROR_ADDR" else before
    assert dev.reg(reg(name)) == expect
    assert access_error(dev) == (ABI.ACCESS_ERR_READ_ONLY, reg(name))


@pytest.mark.parametrize("name", ["SCRATCH", "USER_SCRATCH"])
def test_scratch_registers(dev: QgpuDevice, name: str) -> None:
    for value in (0, 0xFFFF_FFFF, 0xDEAD_BEEF):
        dev.set_reg(reg(name), value)
        assert dev.reg(reg(name)) == value
    assert access_error(dev) == (0, 0)


def test_reset_values(dev: QgpuDevice) -> None:
    for name in ("SCRATCH", "USER_SCRATCH", "RING_BASE_LO", "RING_BASE_HI", "RING_SIZE",
                 "RING_HEAD", "RING_TAIL", "ENGINE_CTRL", "ENGINE_STATUS", "INT_STATUS",
                 "INT_MASK", "FENCE_LO", "FENCE_HI", "DMA_ERROR", "DMA_ERROR_INDEX",
                 "ACCESS_ERROR"):
        assert dev.reg(reg(name)) == 0, name


@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("offset", [0x0, 0xC, 0x1014])
def test_sub_word_access_is_refused(dev: QgpuDevice, size: int, offset: int) -> None:
    read = dev.qt.readb if size == 1 else dev.qt.readw
    write = dev.qt.writeb if size == 1 else dev.qt.writew
    assert read(REGS_ADDR + offset) == 0
    assert access_error(dev) == (ABI.ACCESS_ERR_SIZE, offset)
    write(REGS_ADDR + offset, 0x5A)
    assert access_error(dev) == (ABI.ACCESS_ERR_SIZE, offset)
    assert dev.reg(ABI.REG_SCRATCH) == 0


def test_misaligned_access_is_refused(dev: QgpuDevice) -> None:
    # QEMU's memory core splits a misaligned 4-byte access at offset 2 mod 4
    # into two 2-byte accesses; the device refuses both.
    assert dev.qt.readl(REGS_ADDR + ABI.REG_SCRATCH + 2) == 0
    assert access_error(dev) == (ABI.ACCESS_ERR_SIZE, ABI.REG_SCRATCH + 4)
    assert dev.stat("access-errors") == 2
    dev.qt.writel(REGS_ADDR + ABI.REG_SCRATCH + 2, 0xFFFF_FFFF)
    assert dev.reg(ABI.REG_SCRATCH) == 0


def test_misaligned_eight_byte_access_is_split(dev: QgpuDevice) -> None:
    # An 8-byte access at 4 mod 8 reaches the device as two aligned 4-byte ones.
    assert dev.qt.readq(REGS_ADDR + ABI.REG_VERSION) == ABI.VERSION | dev.reg(ABI.REG_CAPS) << 32
    assert access_error(dev) == (0, 0)


def test_eight_byte_access_reads_register_pairs(start: StartQgpu) -> None:
    dev = start(vram_size=256 << 20)
    assert dev.qt.readq(REGS_ADDR + ABI.REG_VRAM_SIZE_LO) == 256 << 20
    assert dev.qt.readq(REGS_ADDR + ABI.REG_ID) == ABI.ID_MAGIC | ABI.VERSION << 32
    dev.qt.writeq(REGS_ADDR + ABI.REG_RING_BASE_LO, 0x1_2345_6000)
    assert dev.reg(ABI.REG_RING_BASE_LO) == 0x2345_6000
    assert dev.reg(ABI.REG_RING_BASE_HI) == 1
    assert access_error(dev) == (0, 0)


@pytest.mark.parametrize("offset", [0x044, 0x070, 0x0FC, 0x800, 0xFFC, 0x1018, 0x1FFC])
def test_unknown_offsets(dev: QgpuDevice, offset: int) -> None:
    assert dev.reg(offset) == 0
    assert access_error(dev) == (ABI.ACCESS_ERR_OFFSET, offset)
    dev.set_reg(offset, 1)
    assert access_error(dev) == (ABI.ACCESS_ERR_OFFSET, offset)


@pytest.mark.parametrize("name", ["DOORBELL", "ENGINE_RESET", "INT_RAISE"])
def test_write_only_registers_read_as_zero_with_error(dev: QgpuDevice, name: str) -> None:
    assert dev.reg(reg(name)) == 0
    assert access_error(dev) == (ABI.ACCESS_ERR_OFFSET, reg(name))


def test_access_error_is_write_one_to_clear(dev: QgpuDevice) -> None:
    dev.set_reg(ABI.REG_ID, 0)                      # READ_ONLY
    dev.reg(0x070)                                  # OFFSET
    both = ABI.ACCESS_ERR_READ_ONLY | ABI.ACCESS_ERR_OFFSET
    assert dev.reg(ABI.REG_ACCESS_ERROR) == both
    dev.set_reg(ABI.REG_ACCESS_ERROR, ABI.ACCESS_ERR_OFFSET)
    assert dev.reg(ABI.REG_ACCESS_ERROR) == ABI.ACCESS_ERR_READ_ONLY
    assert dev.stat("access-errors") == 2


@pytest.mark.parametrize("size", [0, 1, 3, 6, ABI.RING_MAX_ENTRIES * 2, 0xFFFF_FFFF])
def test_ring_size_must_be_a_power_of_two_in_range(dev: QgpuDevice, size: int) -> None:
    dev.set_reg(ABI.REG_RING_SIZE, 8)
    dev.set_reg(ABI.REG_RING_SIZE, size)
    assert dev.reg(ABI.REG_RING_SIZE) == 8
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_RING_SIZE)


def test_ring_config_is_locked_while_enabled(dev: QgpuDevice) -> None:
    ring = dev.setup_ring(8)
    for name in ("RING_BASE_LO", "RING_BASE_HI", "RING_SIZE"):
        before = dev.reg(reg(name))
        dev.set_reg(reg(name), 0x40)
        assert dev.reg(reg(name)) == before
        assert access_error(dev) == (ABI.ACCESS_ERR_BUSY, reg(name))
    dev.set_reg(ABI.REG_ENGINE_CTRL, 0)
    dev.set_reg(ABI.REG_RING_SIZE, 16)
    assert dev.reg(ABI.REG_RING_SIZE) == 16
    assert ring.base == dev.reg(ABI.REG_RING_BASE_LO)


def test_enable_refuses_bad_ring(dev: QgpuDevice) -> None:
    dev.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)       # no ring size yet
    assert dev.reg(ABI.REG_ENGINE_CTRL) == 0
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_ENGINE_CTRL)
    dev.set_reg(ABI.REG_RING_SIZE, 8)
    dev.set_reg(ABI.REG_RING_BASE_LO, 0x10020)                      # not 64-byte aligned
    dev.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)
    assert dev.reg(ABI.REG_ENGINE_CTRL) == 0
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_ENGINE_CTRL)
    dev.set_reg(ABI.REG_RING_BASE_LO, REGS_ADDR)                    # ring in our own BAR0
    dev.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)
    assert dev.reg(ABI.REG_ENGINE_CTRL) == 0
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_ENGINE_CTRL)
    dev.set_reg(ABI.REG_RING_BASE_LO, 0xFFFF_FF00)                  # ring wraps 2^64
    dev.set_reg(ABI.REG_RING_BASE_HI, 0xFFFF_FFFF)
    dev.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)
    assert dev.reg(ABI.REG_ENGINE_CTRL) == 0
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_ENGINE_CTRL)
    dev.set_reg(ABI.REG_RING_BASE_LO, 0xFFFF_FE00)                  # ends exactly at 2^64
    dev.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE)
    assert dev.reg(ABI.REG_ENGINE_CTRL) == ABI.ENGINE_CTRL_ENABLE


def test_control_values_are_checked(dev: QgpuDevice) -> None:
    dev.setup_ring(8)
    dev.set_reg(ABI.REG_DOORBELL, 8)                                # tail outside ring
    assert dev.reg(ABI.REG_RING_TAIL) == 0
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_DOORBELL)
    dev.set_reg(ABI.REG_ENGINE_RESET, 2)                            # wrong magic
    assert dev.reg(ABI.REG_ENGINE_CTRL) == ABI.ENGINE_CTRL_ENABLE
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_ENGINE_RESET)
    dev.set_reg(ABI.REG_INT_MASK, 0xF0 | ABI.INT_SOFT)
    assert dev.reg(ABI.REG_INT_MASK) == ABI.INT_SOFT
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_INT_MASK)
    dev.set_reg(ABI.REG_ENGINE_CTRL, ABI.ENGINE_CTRL_ENABLE | 0x10)
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_ENGINE_CTRL)


def test_user_page_mirrors_status(qgpu: QgpuDevice) -> None:
    fence = qgpu.mem.alloc(8)
    qgpu.run(qgpu.desc(opcode=ABI.OP_NOP, flags=ABI.DESC_F_FENCE, fence_addr=fence,
                       fence_value=0x1_0000_0002))
    assert qgpu.reg(ABI.REG_USER_FENCE_LO) == qgpu.reg(ABI.REG_FENCE_LO) == 2
    assert qgpu.reg(ABI.REG_USER_FENCE_HI) == qgpu.reg(ABI.REG_FENCE_HI) == 1
    assert qgpu.reg(ABI.REG_USER_RING_HEAD) == qgpu.reg(ABI.REG_RING_HEAD) == 1
    assert qgpu.reg(ABI.REG_USER_ENGINE_STATUS) == qgpu.reg(ABI.REG_ENGINE_STATUS) \
        == ABI.ENGINE_STATUS_ENABLED


def test_int_status_is_write_one_to_clear(dev: QgpuDevice) -> None:
    dev.set_reg(ABI.REG_INT_RAISE, ABI.INT_SOFT | ABI.INT_DMA_DONE)
    assert dev.reg(ABI.REG_INT_STATUS) == ABI.INT_SOFT | ABI.INT_DMA_DONE
    dev.set_reg(ABI.REG_INT_STATUS, ABI.INT_SOFT)
    assert dev.reg(ABI.REG_INT_STATUS) == ABI.INT_DMA_DONE
    dev.set_reg(ABI.REG_INT_STATUS, 0xFFFF_FFFF)
    assert dev.reg(ABI.REG_INT_STATUS) == 0


def test_ring_config_locked_while_a_descriptor_is_in_flight(qgpu: QgpuDevice) -> None:
    assert qgpu.qt.qmp is not None
    qgpu.qt.qmp.qom_set("/machine/peripheral/qgpu0", "x-dma-delay-ns", 1_000_000)
    src = qgpu.mem.alloc(4 << 20)
    qgpu.submit(qgpu.desc(opcode=ABI.OP_COPY_TO_VRAM, src=src, length=4 << 20))
    qgpu.qt.clock_step(1_500_000)
    qgpu.set_reg(ABI.REG_ENGINE_CTRL, 0)              # paused mid-descriptor
    qgpu.set_reg(ABI.REG_RING_SIZE, 8)
    assert qgpu.reg(ABI.REG_RING_SIZE) == 64
    assert access_error(qgpu) == (ABI.ACCESS_ERR_BUSY, ABI.REG_RING_SIZE)


def test_doorbell_cannot_move_the_tail_backwards(dev: QgpuDevice) -> None:
    dev.setup_ring(8, enable=False)
    dev.set_reg(ABI.REG_DOORBELL, 3)                  # 3 outstanding
    dev.set_reg(ABI.REG_DOORBELL, 1)                  # would drop two of them
    assert dev.reg(ABI.REG_RING_TAIL) == 3
    assert access_error(dev) == (ABI.ACCESS_ERR_VALUE, ABI.REG_DOORBELL)
    dev.set_reg(ABI.REG_DOORBELL, 5)
    assert dev.reg(ABI.REG_RING_TAIL) == 5
    assert dev.reg(ABI.REG_ACCESS_ERROR) == 0
    dev.set_reg(ABI.REG_RING_SIZE, 8)                 # a RING_SIZE write empties the ring
    assert (dev.reg(ABI.REG_RING_HEAD), dev.reg(ABI.REG_RING_TAIL)) == (0, 0)


def test_an_8_byte_engine_reset_keeps_its_second_half(dev: QgpuDevice) -> None:
    """ENGINE_RESET is no device reset: the high half of an 8-byte write to it
    (0x044, no register) still lands and is refused on its own (spec 2.1)."""
    dev.setup_ring(8)
    dev.qt.writeq(REGS_ADDR + ABI.REG_ENGINE_RESET, ABI.ENGINE_RESET_MAGIC)
    assert dev.stat("engine-resets") == 1
    assert access_error(dev) == (ABI.ACCESS_ERR_OFFSET, ABI.REG_ENGINE_RESET + 4)
