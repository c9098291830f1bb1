/*
 * qgpu: the register file (BAR0) and interrupt delivery
 *
 * Every register access is checked (size, offset, value) and misuse is
 * reported to the guest in ACCESS_ERROR and logged (LOG_GUEST_ERROR).
 *
 * Copyright (c) 2026 The qgpu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/log.h"
#include "hw/pci/msi.h"
#include "hw/pci/msix.h"
#include "hw/registerfields.h"
#include "qgpu.h"
#include "trace.h"

/* Registers; offsets come from the shared ABI header. */
REG32(ID, QGPU_REG_ID)
REG32(VERSION, QGPU_REG_VERSION)
REG32(CAPS, QGPU_REG_CAPS)
REG32(SCRATCH, QGPU_REG_SCRATCH)
REG32(VRAM_SIZE_LO, QGPU_REG_VRAM_SIZE_LO)
REG32(VRAM_SIZE_HI, QGPU_REG_VRAM_SIZE_HI)
REG32(RING_MAX_ENTRIES, QGPU_REG_RING_MAX_ENTRIES)
REG32(SG_MAX_ENTRIES, QGPU_REG_SG_MAX_ENTRIES)
REG32(RING_BASE_LO, QGPU_REG_RING_BASE_LO)
REG32(RING_BASE_HI, QGPU_REG_RING_BASE_HI)
REG32(RING_SIZE, QGPU_REG_RING_SIZE)
REG32(RING_HEAD, QGPU_REG_RING_HEAD)
REG32(RING_TAIL, QGPU_REG_RING_TAIL)
REG32(DOORBELL, QGPU_REG_DOORBELL)
REG32(ENGINE_CTRL, QGPU_REG_ENGINE_CTRL)
REG32(ENGINE_STATUS, QGPU_REG_ENGINE_STATUS)
REG32(ENGINE_RESET, QGPU_REG_ENGINE_RESET)
REG32(INT_STATUS, QGPU_REG_INT_STATUS)
REG32(INT_MASK, QGPU_REG_INT_MASK)
REG32(INT_RAISE, QGPU_REG_INT_RAISE)
REG32(FENCE_LO, QGPU_REG_FENCE_LO)
REG32(FENCE_HI, QGPU_REG_FENCE_HI)
REG32(DMA_ERROR, QGPU_REG_DMA_ERROR)
REG32(DMA_ERROR_INDEX, QGPU_REG_DMA_ERROR_INDEX)
REG32(ACCESS_ERROR, QGPU_REG_ACCESS_ERROR)
REG32(ACCESS_ERROR_ADDR, QGPU_REG_ACCESS_ERROR_ADDR)
REG32(USER_ID, QGPU_REG_USER_ID)
REG32(USER_ENGINE_STATUS, QGPU_REG_USER_ENGINE_STATUS)
REG32(USER_FENCE_LO, QGPU_REG_USER_FENCE_LO)
REG32(USER_FENCE_HI, QGPU_REG_USER_FENCE_HI)
REG32(USER_RING_HEAD, QGPU_REG_USER_RING_HEAD)
REG32(USER_SCRATCH, QGPU_REG_USER_SCRATCH)

/*
 * Bit fields. ENGINE_CTRL and ENGINE_STATUS are read and built with
 * FIELD_EX32()/FIELD_DP32(); all of them are checked here against the ABI
 * header, which defines the same bits as masks for drivers and tests.
 */
FIELD(ENGINE_CTRL, ENABLE, 0, 1)
FIELD(ENGINE_STATUS, BUSY, 0, 1)
FIELD(ENGINE_STATUS, HALTED, 1, 1)
FIELD(ENGINE_STATUS, ENABLED, 2, 1)
FIELD(INT_STATUS, DMA_DONE, 0, 1)
FIELD(INT_STATUS, DMA_ERROR, 1, 1)
FIELD(INT_STATUS, ENGINE_HALT, 2, 1)
FIELD(INT_STATUS, SOFT, 3, 1)
FIELD(ACCESS_ERROR, SIZE, 0, 1)
FIELD(ACCESS_ERROR, OFFSET, 1, 1)
FIELD(ACCESS_ERROR, READ_ONLY, 2, 1)
FIELD(ACCESS_ERROR, VALUE, 3, 1)
FIELD(ACCESS_ERROR, BUSY, 4, 1)

QEMU_BUILD_BUG_ON(R_ENGINE_CTRL_ENABLE_MASK != QGPU_ENGINE_CTRL_ENABLE);
QEMU_BUILD_BUG_ON(R_ENGINE_STATUS_BUSY_MASK != QGPU_ENGINE_STATUS_BUSY);
QEMU_BUILD_BUG_ON(R_ENGINE_STATUS_HALTED_MASK != QGPU_ENGINE_STATUS_HALTED);
QEMU_BUILD_BUG_ON(R_ENGINE_STATUS_ENABLED_MASK != QGPU_ENGINE_STATUS_ENABLED);
QEMU_BUILD_BUG_ON((R_INT_STATUS_DMA_DONE_MASK | R_INT_STATUS_DMA_ERROR_MASK |
                   R_INT_STATUS_ENGINE_HALT_MASK | R_INT_STATUS_SOFT_MASK) !=
                  QGPU_INT_ALL);
QEMU_BUILD_BUG_ON(R_INT_STATUS_DMA_DONE_MASK != QGPU_INT_DMA_DONE);
QEMU_BUILD_BUG_ON(R_INT_STATUS_DMA_ERROR_MASK != QGPU_INT_DMA_ERROR);
QEMU_BUILD_BUG_ON(R_INT_STATUS_ENGINE_HALT_MASK != QGPU_INT_ENGINE_HALT);
QEMU_BUILD_BUG_ON(R_INT_STATUS_SOFT_MASK != QGPU_INT_SOFT);
QEMU_BUILD_BUG_ON(R_ACCESS_ERROR_SIZE_MASK != QGPU_ACCESS_ERR_SIZE);
QEMU_BUILD_BUG_ON(R_ACCESS_ERROR_OFFSET_MASK != QGPU_ACCESS_ERR_OFFSET);
QEMU_BUILD_BUG_ON(R_ACCESS_ERROR_READ_ONLY_MASK != QGPU_ACCESS_ERR_READ_ONLY);
QEMU_BUILD_BUG_ON(R_ACCESS_ERROR_VALUE_MASK != QGPU_ACCESS_ERR_VALUE);
QEMU_BUILD_BUG_ON(R_ACCESS_ERROR_BUSY_MASK != QGPU_ACCESS_ERR_BUSY);
QEMU_BUILD_BUG_ON((R_ACCESS_ERROR_SIZE_MASK | R_ACCESS_ERROR_OFFSET_MASK |
                   R_ACCESS_ERROR_READ_ONLY_MASK | R_ACCESS_ERROR_VALUE_MASK |
                   R_ACCESS_ERROR_BUSY_MASK) != QGPU_ACCESS_ERR_ALL);

static uint32_t qgpu_caps(QGPUState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint32_t caps = QGPU_CAP_DMA_COPY | QGPU_CAP_DMA_FILL | QGPU_CAP_SG |
                    QGPU_CAP_FENCE | QGPU_CAP_USER_PAGE;

    if (msix_present(pdev)) {
        caps |= QGPU_CAP_MSIX;
    }
    if (msi_present(pdev)) {
        caps |= QGPU_CAP_MSI;
    }
    if (s->hostmem) {
        caps |= QGPU_CAP_VRAM_SHARED;
    }
    return caps;
}

static uint32_t qgpu_engine_status(QGPUState *s)
{
    bool busy = s->active || (s->ring_head != s->ring_tail && !s->halted) ||
                s->abort_pending;
    uint32_t st = 0;

    st = FIELD_DP32(st, ENGINE_STATUS, BUSY, busy);
    st = FIELD_DP32(st, ENGINE_STATUS, HALTED, s->halted);
    st = FIELD_DP32(st, ENGINE_STATUS, ENABLED,
                    FIELD_EX32(s->engine_ctrl, ENGINE_CTRL, ENABLE));
    return st;
}

/* ---- interrupts --------------------------------------------------------- */

static unsigned qgpu_cause_vector(uint32_t cause)
{
    switch (cause) {
    case QGPU_INT_DMA_DONE:
        return QGPU_MSIX_VEC_DMA;
    case QGPU_INT_DMA_ERROR:
    case QGPU_INT_ENGINE_HALT:
        return QGPU_MSIX_VEC_ERROR;
    default:
        return QGPU_MSIX_VEC_MISC;
    }
}

/* Send one MSI-X (or, with @msix false, MSI) message, minding the faults. */
static void qgpu_signal(QGPUState *s, unsigned vec, bool msix)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    int copies = 1;

    if (s->fault_irq_drop) {
        s->fault_irq_drop--;
        s->stats.faults_injected++;
        trace_qgpu_fault("irq-drop", vec);
        return;
    }
    if (s->fault_irq_dup) {
        s->fault_irq_dup--;
        s->stats.faults_injected++;
        trace_qgpu_fault("irq-dup", vec);
        copies = 2;
    }
    for (uint32_t epoch = s->epoch; copies-- && s->epoch == epoch;) {
        if (msix) {
            msix_notify(pdev, vec);
        } else {
            msi_notify(pdev, vec);
        }
        s->stats.interrupts++;
    }
}

/*
 * Deliver interrupts. @fresh holds causes that just became pending and
 * enabled: MSI-X and MSI are edge-triggered messages, one per fresh cause
 * (MSI has a single vector); INTx is a level that follows STATUS & MASK.
 */
void qgpu_update_irq(QGPUState *s, uint32_t fresh)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint32_t pending = s->int_status & s->int_mask;
    uint32_t epoch = s->epoch;
    bool level = false;

    fresh &= pending;
    if (msix_enabled(pdev)) {
        unsigned long sent = 0;

        for (uint32_t c = 1; c <= QGPU_INT_ALL; c <<= 1) {
            unsigned vec = qgpu_cause_vector(c);

            if ((fresh & c) && !(sent & BIT(vec))) {
                sent |= BIT(vec);
                trace_qgpu_irq_msix(c, vec);
                qgpu_signal(s, vec, true);
                if (s->epoch != epoch) {
                    return;     /* the message reset or unplugged us */
                }
            }
        }
    } else if (msi_enabled(pdev)) {
        if (fresh) {
            trace_qgpu_irq_msi(fresh);
            qgpu_signal(s, 0, false);
            if (s->epoch != epoch) {
                return;
            }
        }
    } else {
        level = pending != 0;
    }
    /* The PCI core tracks the line; MSI/MSI-X enables deassert it there. */
    if (level != (pdev->irq_state & 1)) {
        trace_qgpu_irq_intx(level);
        if (level) {
            s->stats.interrupts++;
        }
        pci_set_irq(pdev, level);
    }
}

void qgpu_raise(QGPUState *s, uint32_t causes)
{
    uint32_t fresh = causes & ~s->int_status;

    s->int_status |= causes;
    qgpu_update_irq(s, fresh);
}

/* ---- registers ------------------------------------------------------------ */

static void qgpu_access_error(QGPUState *s, hwaddr addr, uint32_t why,
                              const char *what)
{
    qemu_log_mask(LOG_GUEST_ERROR, "qgpu: BAR0 offset 0x%03" HWADDR_PRIx
                  ": %s\n", addr, what);
    trace_qgpu_mmio_bad_access(addr, what);
    s->access_error |= why;
    s->access_error_addr = addr;
    s->stats.access_errors++;
}

static bool qgpu_reg_read(QGPUState *s, hwaddr addr, uint32_t *val)
{
    switch (addr) {
    case A_ID:
    case A_USER_ID:
        *val = QGPU_ID_MAGIC;
        break;
    case A_VERSION:
        *val = QGPU_VERSION;
        break;
    case A_CAPS:
        *val = qgpu_caps(s);
        break;
    case A_SCRATCH:
        *val = s->scratch;
        break;
    case A_VRAM_SIZE_LO:
        *val = extract64(s->vram_size, 0, 32);
        break;
    case A_VRAM_SIZE_HI:
        *val = extract64(s->vram_size, 32, 32);
        break;
    case A_RING_MAX_ENTRIES:
        *val = QGPU_RING_MAX_ENTRIES;
        break;
    case A_SG_MAX_ENTRIES:
        *val = s->sg_max_entries;
        break;
    case A_RING_BASE_LO:
        *val = extract64(s->ring_base, 0, 32);
        break;
    case A_RING_BASE_HI:
        *val = extract64(s->ring_base, 32, 32);
        break;
    case A_RING_SIZE:
        *val = s->ring_size;
        break;
    case A_RING_HEAD:
    case A_USER_RING_HEAD:
        *val = s->ring_head;
        break;
    case A_RING_TAIL:
        *val = s->ring_tail;
        break;
    case A_ENGINE_CTRL:
        *val = s->engine_ctrl;
        break;
    case A_ENGINE_STATUS:
    case A_USER_ENGINE_STATUS:
        *val = qgpu_engine_status(s);
        break;
    case A_INT_STATUS:
        *val = s->int_status;
        break;
    case A_INT_MASK:
        *val = s->int_mask;
        break;
    case A_FENCE_LO:
    case A_USER_FENCE_LO:
        *val = extract64(s->fence, 0, 32);
        break;
    case A_FENCE_HI:
    case A_USER_FENCE_HI:
        *val = extract64(s->fence, 32, 32);
        break;
    case A_DMA_ERROR:
        *val = s->dma_error;
        break;
    case A_DMA_ERROR_INDEX:
        *val = s->dma_error_index;
        break;
    case A_ACCESS_ERROR:
        *val = s->access_error;
        break;
    case A_ACCESS_ERROR_ADDR:
        *val = s->access_error_addr;
        break;
    case A_USER_SCRATCH:
        *val = s->user_scratch;
        break;
    case A_DOORBELL:
    case A_ENGINE_RESET:
    case A_INT_RAISE:
        qgpu_access_error(s, addr, QGPU_ACCESS_ERR_OFFSET,
                          "read of a write-only register");
        *val = 0;
        return false;
    default:
        qgpu_access_error(s, addr, QGPU_ACCESS_ERR_OFFSET,
                          "read of an unknown register");
        *val = 0;
        return false;
    }
    return true;
}

/*
 * Ring registers may only change while the engine is disabled and no
 * descriptor is in flight (a paused one would retire into the new ring).
 */
static bool qgpu_ring_config_writable(QGPUState *s, hwaddr addr)
{
    if ((s->engine_ctrl & QGPU_ENGINE_CTRL_ENABLE) || s->active) {
        qgpu_access_error(s, addr, QGPU_ACCESS_ERR_BUSY,
                          "ring configuration written while the engine is "
                          "enabled or a descriptor is in flight");
        return false;
    }
    return true;
}

static void qgpu_set_enable(QGPUState *s, hwaddr addr, bool enable)
{
    if (!enable) {
        /* Pause: the descriptor in flight resumes when re-enabled. */
        s->engine_ctrl &= ~QGPU_ENGINE_CTRL_ENABLE;
        qgpu_engine_stop(s);
        return;
    }
    if (s->engine_ctrl & QGPU_ENGINE_CTRL_ENABLE) {
        return;
    }
    if (!is_power_of_2(s->ring_size) || s->ring_size < QGPU_RING_MIN_ENTRIES ||
        s->ring_size > QGPU_RING_MAX_ENTRIES) {
        qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                          "engine enabled with an invalid RING_SIZE");
        return;
    }
    if (s->ring_base % QGPU_DESC_SIZE) {
        qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                          "engine enabled with a misaligned RING_BASE");
        return;
    }
    if (qgpu_check_guest_range(s, s->ring_base,
                               (uint64_t)s->ring_size * QGPU_DESC_SIZE)) {
        qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                          "engine enabled with a ring that wraps or lies in "
                          "the device's own BARs");
        return;
    }
    s->engine_ctrl |= QGPU_ENGINE_CTRL_ENABLE;
    qgpu_engine_kick(s);
}

static void qgpu_reg_write(QGPUState *s, hwaddr addr, uint32_t val)
{
    switch (addr) {
    case A_SCRATCH:
        s->scratch = val;
        break;
    case A_USER_SCRATCH:
        s->user_scratch = val;
        break;
    case A_RING_BASE_LO:
        if (qgpu_ring_config_writable(s, addr)) {
            s->ring_base = deposit64(s->ring_base, 0, 32, val);
        }
        break;
    case A_RING_BASE_HI:
        if (qgpu_ring_config_writable(s, addr)) {
            s->ring_base = deposit64(s->ring_base, 32, 32, val);
        }
        break;
    case A_RING_SIZE:
        if (!qgpu_ring_config_writable(s, addr)) {
            break;
        }
        if (!is_power_of_2(val) || val < QGPU_RING_MIN_ENTRIES ||
            val > QGPU_RING_MAX_ENTRIES) {
            qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                              "RING_SIZE must be a power of two in "
                              "[2, RING_MAX_ENTRIES]");
            break;
        }
        qgpu_count_dropped(s);  /* RING_SIZE empties the ring */
        s->ring_size = val;
        s->ring_head = s->ring_tail = 0;
        break;
    case A_DOORBELL:
        s->stats.doorbells++;
        if (!s->ring_size || val >= s->ring_size) {
            qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                              "DOORBELL tail index outside the ring");
            break;
        }
        if (((val - s->ring_head) & (s->ring_size - 1)) <
            ((s->ring_tail - s->ring_head) & (s->ring_size - 1))) {
            qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                              "DOORBELL moves the tail back over outstanding "
                              "descriptors");
            break;
        }
        trace_qgpu_doorbell(val, s->ring_head);
        s->ring_tail = val;
        if ((s->engine_ctrl & QGPU_ENGINE_CTRL_ENABLE) && !s->halted) {
            qgpu_engine_kick(s);
        }
        break;
    case A_ENGINE_CTRL:
        if (val & ~R_ENGINE_CTRL_ENABLE_MASK) {
            qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                              "reserved ENGINE_CTRL bits set");
        }
        qgpu_set_enable(s, addr, FIELD_EX32(val, ENGINE_CTRL, ENABLE));
        break;
    case A_ENGINE_RESET:
        if (val != QGPU_ENGINE_RESET_MAGIC) {
            qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                              "ENGINE_RESET needs QGPU_ENGINE_RESET_MAGIC");
            break;
        }
        qgpu_engine_reset(s);
        break;
    case A_INT_STATUS:
        s->int_status &= ~val;
        qgpu_update_irq(s, 0);
        break;
    case A_INT_MASK: {
        uint32_t newly = val & ~s->int_mask;

        if (val & ~QGPU_INT_ALL) {
            qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                              "reserved INT_MASK bits set");
        }
        s->int_mask = val & QGPU_INT_ALL;
        /* Unmasking a pending cause delivers it now. */
        qgpu_update_irq(s, newly & s->int_status);
        break;
    }
    case A_INT_RAISE:
        if (val & ~QGPU_INT_ALL) {
            qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                              "reserved INT_RAISE bits set");
        }
        qgpu_raise(s, val & QGPU_INT_ALL);
        break;
    case A_DMA_ERROR:
        s->dma_error = 0;
        s->dma_error_index = 0;
        break;
    case A_ACCESS_ERROR:
        s->access_error &= ~val;
        break;
    case A_ID: case A_VERSION: case A_CAPS: case A_VRAM_SIZE_LO:
    case A_VRAM_SIZE_HI: case A_RING_MAX_ENTRIES: case A_SG_MAX_ENTRIES:
    case A_RING_HEAD: case A_RING_TAIL: case A_ENGINE_STATUS:
    case A_FENCE_LO: case A_FENCE_HI: case A_DMA_ERROR_INDEX:
    case A_ACCESS_ERROR_ADDR: case A_USER_ID: case A_USER_ENGINE_STATUS:
    case A_USER_FENCE_LO: case A_USER_FENCE_HI: case A_USER_RING_HEAD:
        qgpu_access_error(s, addr, QGPU_ACCESS_ERR_READ_ONLY,
                          "write to a read-only register");
        break;
    default:
        qgpu_access_error(s, addr, QGPU_ACCESS_ERR_OFFSET,
                          "write to an unknown register");
        break;
    }
}

/* 4-byte accesses, and 8-byte accesses to an aligned register pair. */
static bool qgpu_access_ok(QGPUState *s, hwaddr addr, unsigned size)
{
    if ((size == 4 || size == 8) && !(addr % size)) {
        return true;
    }
    qgpu_access_error(s, addr, QGPU_ACCESS_ERR_SIZE,
                      "access size or alignment not allowed");
    return false;
}

static uint64_t qgpu_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    QGPUState *s = opaque;
    uint32_t lo = 0, hi = 0;

    if (s->fault_regs_all_ones) {
        trace_qgpu_mmio_read(addr, size, MAKE_64BIT_MASK(0, size * 8));
        return MAKE_64BIT_MASK(0, size * 8);
    }
    if (qgpu_access_ok(s, addr, size)) {
        qgpu_reg_read(s, addr, &lo);
        if (size == 8) {
            qgpu_reg_read(s, addr + 4, &hi);
        }
    }
    trace_qgpu_mmio_read(addr, size, deposit64(lo, 32, 32, hi));
    return deposit64(lo, 32, 32, hi);
}

static void qgpu_mmio_write(void *opaque, hwaddr addr, uint64_t val,
                            unsigned size)
{
    QGPUState *s = opaque;
    uint32_t incarnation;

    trace_qgpu_mmio_write(addr, size, val);
    if (s->fault_regs_all_ones || !qgpu_access_ok(s, addr, size)) {
        return;
    }
    incarnation = s->incarnation;
    qgpu_reg_write(s, addr, extract64(val, 0, 32));
    /*
     * The first half may have reset or unplugged the device (an interrupt
     * message the guest aimed at a root port): the second half was written
     * to the device as it was before, and is dropped with the rest.
     */
    if (size == 8 && s->incarnation == incarnation) {
        qgpu_reg_write(s, addr + 4, extract64(val, 32, 32));
    }
}

const MemoryRegionOps qgpu_mmio_ops = {
    .read = qgpu_mmio_read,
    .write = qgpu_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    /* Accept every size so misuse reaches us and is reported as such. */
    .valid = { .min_access_size = 1, .max_access_size = 8 },
    .impl = { .min_access_size = 1, .max_access_size = 8 },
};
