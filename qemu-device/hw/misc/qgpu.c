/*
 * qgpu: a small GPU-like PCIe device for driver testing
 *
 * BAR0 holds registers, BAR2 is RAM-backed VRAM (optionally on a host memory
 * backend), BAR4 the MSI-X table. A DMA engine executes 64-byte descriptors
 * from a ring in guest memory: copies between guest memory and VRAM (with
 * optional scatter-gather lists), VRAM to VRAM, and fills. Completion writes
 * a status word and optionally a fence and raises an interrupt.
 *
 * The ABI lives in include/hw/misc/qgpu_hw.h and is documented in the qgpu
 * project's docs/qgpu-spec.md.
 *
 * Copyright (c) 2026 The qgpu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/log.h"
#include "qemu/units.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "hw/pci/pci_device.h"
#include "hw/pci/pcie.h"
#include "hw/pci/pcie_aer.h"
#include "hw/pci/msi.h"
#include "hw/pci/msix.h"
#include "hw/qdev-properties.h"
#include "hw/registerfields.h"
#include "migration/vmstate.h"
#include "system/hostmem.h"
#include "system/dma.h"
#include "system/runstate.h"
#include "qom/object.h"
#include "hw/misc/qgpu_hw.h"
#include "trace.h"

#define TYPE_QGPU "qgpu"
OBJECT_DECLARE_SIMPLE_TYPE(QGPUState, QGPU)

/* Bytes the engine moves before yielding to the main loop. */
#define QGPU_DMA_SLICE_BYTES    (1 * MiB)
/* Descriptors retired per engine run before yielding, whatever their size. */
#define QGPU_DMA_SLICE_DESCS    64
#define QGPU_TRACE_DEPTH_MAX    4096

/* Config-space capability offsets. */
#define QGPU_CAP_OFF_MSIX       0x40
#define QGPU_CAP_OFF_MSI        0x50
#define QGPU_CAP_OFF_PM         0x60
#define QGPU_CAP_OFF_PCIE       0x80
#define QGPU_EXT_CAP_OFF_AER    0x100

#define QGPU_MSIX_BAR_SIZE      0x1000
#define QGPU_MSIX_PBA_OFFSET    0x800

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

QEMU_BUILD_BUG_ON(sizeof(struct qgpu_desc) != QGPU_DESC_SIZE);
QEMU_BUILD_BUG_ON(offsetof(struct qgpu_desc, status) != QGPU_DESC_OFF_STATUS);
QEMU_BUILD_BUG_ON(sizeof(struct qgpu_sg_entry) != QGPU_SG_ENTRY_SIZE);

/* A guest-memory segment of the descriptor in flight. */
typedef struct QGPUSegment {
    uint64_t addr;
    uint64_t len;
} QGPUSegment;

/* One record of the DMA trace, read back with qom-get dma-trace. */
typedef struct QGPUTraceEntry {
    uint64_t seq;
    uint64_t bus_addr;
    uint64_t vram_offset;
    uint64_t length;
    uint32_t ring_index;
    uint32_t opcode;
    uint32_t error;
} QGPUTraceEntry;

typedef struct QGPUStats {
    uint64_t descriptors;       /* retired, successfully or not */
    uint64_t transfers;         /* data descriptors retired without error */
    uint64_t bytes_to_vram;
    uint64_t bytes_from_vram;
    uint64_t bytes_vram_copy;
    uint64_t bytes_fill;
    uint64_t errors;            /* descriptors retired with an error */
    uint64_t aborted;           /* in flight at a reset */
    uint64_t dropped;           /* pending, discarded unstarted by a reset */
    uint64_t last_fence;
    uint64_t interrupts;        /* MSI-X/MSI messages sent, INTx assertions */
    uint64_t doorbells;
    uint64_t access_errors;
    uint64_t engine_resets;
    uint64_t faults_injected;
} QGPUStats;

/* What fault injection does to the descriptor in flight. */
typedef enum QGPUFault {
    QGPU_FAULT_NONE,
    QGPU_FAULT_DMA_ERROR,       /* fail half way with a transaction error */
    QGPU_FAULT_TRUNCATE,        /* move half, report success */
    QGPU_FAULT_CORRUPT,         /* move all, flip one byte, report success */
} QGPUFault;

struct QGPUState {
    PCIDevice parent_obj;

    /* properties */
    uint64_t vram_size;
    HostMemoryBackend *hostmem;
    bool msi;
    bool msix;
    bool vram_prefetchable;     /* BAR2's prefetchable bit (drivers pick WC by it) */
    uint32_t trace_depth;
    uint64_t dma_delay_ns;

    MemoryRegion mmio;
    MemoryRegion msix_bar;
    MemoryRegion vram_ram;      /* used when there is no memdev */
    MemoryRegion *vram;
    uint8_t *vram_ptr;

    /* registers */
    uint32_t scratch;
    uint32_t user_scratch;
    uint64_t ring_base;
    uint32_t ring_size;
    uint32_t ring_head;
    uint32_t ring_tail;
    uint32_t engine_ctrl;
    bool halted;
    uint32_t int_status;
    uint32_t int_mask;
    uint64_t fence;
    uint32_t dma_error;
    uint32_t dma_error_index;
    uint32_t access_error;
    uint32_t access_error_addr;

    /* descriptor in flight */
    bool active;
    uint32_t cur_index;
    uint32_t cur_opcode;
    uint32_t cur_flags;
    uint64_t cur_src;
    uint64_t cur_dst;
    uint64_t cur_length;
    uint64_t cur_fence_addr;
    uint64_t cur_fence_value;
    uint32_t cur_pattern;
    uint32_t cur_sg_count;
    uint64_t cur_done;          /* bytes moved so far */
    QGPUSegment *segs;          /* guest side; rebuilt after migration */
    uint32_t nsegs;
    bool segs_stale;            /* set by post_load: rebuild before use */

    /*
     * The status write of a descriptor ENGINE_RESET aborted: posted by the
     * register write, done by @abort_bh (or the engine's next run) outside
     * any register access, once the VM runs. ENGINE_STATUS is BUSY until then.
     */
    bool abort_pending;
    uint32_t abort_index;
    uint64_t abort_status_addr;

    QEMUBH *bh;
    QEMUBH *abort_bh;
    QEMUTimer *delay_timer;
    VMChangeStateEntry *vm_state;   /* the engine runs only with the VM */
    /*
     * Moved by every device reset and by unrealize. Guest-programmed DMA
     * (and MSI/MSI-X messages, whose address the guest picks) can reach
     * other devices' registers, e.g. a root port's Bridge Control or Slot
     * Control through the MMCONFIG window, and so reset or unplug this
     * device in the middle of its own access. After each such access the
     * engine compares @epoch with @run_epoch and, if it moved, touches
     * nothing more: the reset already dropped the work.
     */
    uint32_t epoch;
    uint32_t run_epoch;
    bool in_run;                /* qgpu_run_disturbable() is running */
    /*
     * Moved only by device reset and unrealize (not by ENGINE_RESET, which
     * also moves @epoch): an 8-byte register write drops its second half
     * when the first half changed it.
     */
    uint32_t incarnation;

    QGPUStats stats;
    QGPUTraceEntry *trace;
    uint64_t trace_seq;

    /* Fault injection (x-fault-* properties, set at run time; not migrated). */
    uint64_t fault_dma_error_nth;   /* countdowns over guest-memory DMAs */
    uint64_t fault_truncate_nth;
    uint64_t fault_corrupt_nth;
    uint64_t fault_irq_drop;        /* interrupt messages to swallow */
    uint64_t fault_irq_dup;         /* interrupt messages to send twice */
    bool fault_hang;
    bool fault_regs_all_ones;
    char *fault_aer;                /* last AER error raised */
    QGPUFault cur_fault;
};

static const char *const qgpu_err_names[QGPU_ERR_MAX + 1] = {
    [QGPU_ERR_NONE] = "ok",
    [QGPU_ERR_BAD_OPCODE] = "bad-opcode",
    [QGPU_ERR_BAD_FLAGS] = "bad-flags",
    [QGPU_ERR_RESERVED] = "reserved",
    [QGPU_ERR_LENGTH] = "length",
    [QGPU_ERR_VRAM_RANGE] = "vram-range",
    [QGPU_ERR_ADDR_OVERFLOW] = "addr-overflow",
    [QGPU_ERR_SELF_DMA] = "self-dma",
    [QGPU_ERR_DMA_READ] = "dma-read",
    [QGPU_ERR_DMA_WRITE] = "dma-write",
    [QGPU_ERR_SG_COUNT] = "sg-count",
    [QGPU_ERR_SG_ENTRY] = "sg-entry",
    [QGPU_ERR_SG_LENGTH] = "sg-length",
    [QGPU_ERR_FENCE_WRITE] = "fence-write",
    [QGPU_ERR_ABORTED] = "aborted",
    [QGPU_ERR_DESC_FETCH] = "desc-fetch",
};

static const char *const qgpu_op_names[QGPU_OP_MAX + 1] = {
    [QGPU_OP_NOP] = "nop",
    [QGPU_OP_COPY_TO_VRAM] = "copy-to-vram",
    [QGPU_OP_COPY_FROM_VRAM] = "copy-from-vram",
    [QGPU_OP_COPY_VRAM] = "copy-vram",
    [QGPU_OP_FILL] = "fill",
};

static const char *qgpu_err_name(uint32_t err)
{
    return err <= QGPU_ERR_MAX ? qgpu_err_names[err] : "unknown";
}

static const char *qgpu_op_name(uint32_t op)
{
    return op <= QGPU_OP_MAX ? qgpu_op_names[op] : "invalid";
}

/* Reset or unplugged by its own DMA since the engine run began? */
static bool qgpu_disturbed(QGPUState *s)
{
    return s->epoch != s->run_epoch;
}

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
    uint32_t st = 0;

    if (s->active || (s->ring_head != s->ring_tail && !s->halted) ||
        s->abort_pending) {
        st |= QGPU_ENGINE_STATUS_BUSY;
    }
    if (s->halted) {
        st |= QGPU_ENGINE_STATUS_HALTED;
    }
    if (s->engine_ctrl & QGPU_ENGINE_CTRL_ENABLE) {
        st |= QGPU_ENGINE_STATUS_ENABLED;
    }
    return st;
}

/* Enabled, not halted, and a descriptor in flight or queued: it should run. */
static bool qgpu_engine_has_work(QGPUState *s)
{
    return (s->engine_ctrl & QGPU_ENGINE_CTRL_ENABLE) && !s->halted &&
           (s->active || s->ring_head != s->ring_tail);
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
static void qgpu_update_irq(QGPUState *s, uint32_t fresh)
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

static void qgpu_raise(QGPUState *s, uint32_t causes)
{
    uint32_t fresh = causes & ~s->int_status;

    s->int_status |= causes;
    qgpu_update_irq(s, fresh);
}

/* ---- DMA helpers ---------------------------------------------------------- */

static bool qgpu_vram_range_ok(QGPUState *s, uint64_t off, uint64_t len)
{
    return off <= s->vram_size && len <= s->vram_size - off;
}

/*
 * Refuse guest ranges that wrap or that hit one of our own BARs: the device
 * must never DMA into itself (peer-to-peer to its own registers or VRAM).
 */
static uint32_t qgpu_check_guest_range(QGPUState *s, uint64_t addr,
                                       uint64_t len)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    static const int bars[] = { QGPU_BAR_REGS, QGPU_BAR_VRAM, QGPU_BAR_MSIX };

    if (len && addr + len - 1 < addr) {
        return QGPU_ERR_ADDR_OVERFLOW;
    }
    for (int i = 0; i < ARRAY_SIZE(bars); i++) {
        pcibus_t base = pci_get_bar_addr(pdev, bars[i]);
        uint64_t size = pdev->io_regions[bars[i]].size;

        if (base == PCI_BAR_UNMAPPED || !size) {
            continue;
        }
        if (addr <= base + size - 1 && base <= addr + len - 1) {
            return QGPU_ERR_SELF_DMA;
        }
    }
    return QGPU_ERR_NONE;
}

static void qgpu_trace_record(QGPUState *s, uint64_t bus_addr,
                              uint64_t vram_offset, uint64_t length,
                              uint32_t error)
{
    QGPUTraceEntry *e = &s->trace[s->trace_seq % s->trace_depth];

    e->seq = s->trace_seq++;
    e->bus_addr = bus_addr;
    e->vram_offset = vram_offset;
    e->length = length;
    e->ring_index = s->cur_index;
    e->opcode = s->cur_opcode;
    e->error = error;
    trace_qgpu_dma_transfer(s->cur_index, qgpu_op_name(s->cur_opcode),
                            bus_addr, vram_offset, length,
                            qgpu_err_name(error));
}

static uint64_t qgpu_guest_side(QGPUState *s)
{
    return s->cur_opcode == QGPU_OP_COPY_TO_VRAM ? s->cur_src : s->cur_dst;
}

/*
 * Build s->segs for the descriptor in flight: the SG list read from guest
 * memory and validated entry by entry, or the single contiguous range.
 */
static uint32_t qgpu_load_segments(QGPUState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint64_t base = qgpu_guest_side(s);
    g_autofree struct qgpu_sg_entry *ents = NULL;
    uint64_t list_len, total = 0;
    uint32_t err;

    g_free(s->segs);
    s->segs = NULL;
    s->nsegs = 0;

    if (!(s->cur_flags & QGPU_DESC_F_SG)) {
        err = qgpu_check_guest_range(s, base, s->cur_length);
        if (err) {
            return err;
        }
        s->segs = g_new(QGPUSegment, 1);
        s->segs[0] = (QGPUSegment) { .addr = base, .len = s->cur_length };
        s->nsegs = 1;
        return QGPU_ERR_NONE;
    }

    if (s->cur_sg_count == 0 || s->cur_sg_count > QGPU_SG_MAX_ENTRIES) {
        return QGPU_ERR_SG_COUNT;
    }
    list_len = (uint64_t)s->cur_sg_count * QGPU_SG_ENTRY_SIZE;
    err = qgpu_check_guest_range(s, base, list_len);
    if (err) {
        return err;
    }
    ents = g_new(struct qgpu_sg_entry, s->cur_sg_count);
    if (pci_dma_read(pdev, base, ents, list_len) != MEMTX_OK &&
        !qgpu_disturbed(s)) {
        qemu_log_mask(LOG_GUEST_ERROR,
                      "qgpu: desc %u: SG list at 0x%" PRIx64 " unreadable\n",
                      s->cur_index, base);
        return QGPU_ERR_DMA_READ;
    }
    if (qgpu_disturbed(s)) {
        return QGPU_ERR_NONE;   /* the caller checks too */
    }
    s->segs = g_new(QGPUSegment, s->cur_sg_count);
    for (uint32_t i = 0; i < s->cur_sg_count; i++) {
        uint64_t addr = le64_to_cpu(ents[i].addr);
        uint32_t len = le32_to_cpu(ents[i].len);

        trace_qgpu_sg_entry(s->cur_index, i, addr, len);
        if (len == 0 || ents[i].reserved) {
            qemu_log_mask(LOG_GUEST_ERROR,
                          "qgpu: desc %u: SG entry %u has %s\n", s->cur_index,
                          i, len ? "reserved bits set" : "zero length");
            return QGPU_ERR_SG_ENTRY;
        }
        err = qgpu_check_guest_range(s, addr, len);
        if (err) {
            return err;
        }
        s->segs[i] = (QGPUSegment) { .addr = addr, .len = len };
        total += len;   /* <= 4096 * 4 GiB: cannot overflow */
    }
    s->nsegs = s->cur_sg_count;
    if (total != s->cur_length) {
        qemu_log_mask(LOG_GUEST_ERROR,
                      "qgpu: desc %u: SG lengths add up to %" PRIu64
                      ", descriptor length is %" PRIu64 "\n",
                      s->cur_index, total, s->cur_length);
        return QGPU_ERR_SG_LENGTH;
    }
    return QGPU_ERR_NONE;
}

/*
 * Check the descriptor in flight (s->cur_*); QGPU_ERR_NONE if it may run.
 * @d: the descriptor as fetched, whose guest ranges are then checked and
 * whose SG list is loaded; or NULL to check only what the fields say, for
 * one a migration stream says is in flight (the engine reloads its SG list).
 */
static uint32_t qgpu_validate_desc(QGPUState *s, const struct qgpu_desc *d)
{
    uint32_t op = s->cur_opcode, flags = s->cur_flags;
    bool guest_side = op == QGPU_OP_COPY_TO_VRAM ||
                      op == QGPU_OP_COPY_FROM_VRAM;
    uint32_t err;

    if (op > QGPU_OP_MAX) {
        return QGPU_ERR_BAD_OPCODE;
    }
    if ((flags & ~QGPU_DESC_F_ALL) || ((flags & QGPU_DESC_F_SG) && !guest_side)) {
        return QGPU_ERR_BAD_FLAGS;
    }
    if ((d && d->reserved) || (!(flags & QGPU_DESC_F_SG) && s->cur_sg_count) ||
        (op != QGPU_OP_FILL && s->cur_pattern)) {
        return QGPU_ERR_RESERVED;
    }
    if ((flags & QGPU_DESC_F_SG) &&
        (!s->cur_sg_count || s->cur_sg_count > QGPU_SG_MAX_ENTRIES) && !d) {
        return QGPU_ERR_SG_COUNT;   /* at fetch: qgpu_load_segments() says so */
    }
    if (flags & QGPU_DESC_F_FENCE) {
        err = d ? qgpu_check_guest_range(s, s->cur_fence_addr,
                                         sizeof(uint64_t)) : QGPU_ERR_NONE;
        if (err) {
            return err;
        }
    } else if (s->cur_fence_addr || s->cur_fence_value) {
        return QGPU_ERR_RESERVED;
    }

    switch (op) {
    case QGPU_OP_NOP:
        if (s->cur_src || s->cur_dst || s->cur_length) {
            return QGPU_ERR_RESERVED;
        }
        return QGPU_ERR_NONE;
    case QGPU_OP_COPY_TO_VRAM:
        if (!s->cur_length) {
            return QGPU_ERR_LENGTH;
        }
        if (!qgpu_vram_range_ok(s, s->cur_dst, s->cur_length)) {
            return QGPU_ERR_VRAM_RANGE;
        }
        return d ? qgpu_load_segments(s) : QGPU_ERR_NONE;
    case QGPU_OP_COPY_FROM_VRAM:
        if (!s->cur_length) {
            return QGPU_ERR_LENGTH;
        }
        if (!qgpu_vram_range_ok(s, s->cur_src, s->cur_length)) {
            return QGPU_ERR_VRAM_RANGE;
        }
        return d ? qgpu_load_segments(s) : QGPU_ERR_NONE;
    case QGPU_OP_COPY_VRAM:
        if (!s->cur_length) {
            return QGPU_ERR_LENGTH;
        }
        if (!qgpu_vram_range_ok(s, s->cur_src, s->cur_length) ||
            !qgpu_vram_range_ok(s, s->cur_dst, s->cur_length)) {
            return QGPU_ERR_VRAM_RANGE;
        }
        return QGPU_ERR_NONE;
    case QGPU_OP_FILL:
        if (s->cur_src) {
            return QGPU_ERR_RESERVED;
        }
        if (!s->cur_length) {
            return QGPU_ERR_LENGTH;
        }
        if (!qgpu_vram_range_ok(s, s->cur_dst, s->cur_length)) {
            return QGPU_ERR_VRAM_RANGE;
        }
        return QGPU_ERR_NONE;
    }
    g_assert_not_reached();
}

static dma_addr_t qgpu_desc_addr(QGPUState *s, uint32_t index)
{
    return s->ring_base + (uint64_t)index * QGPU_DESC_SIZE;
}

/*
 * Write a descriptor's status word to @addr in the ring, checked again
 * against the device's own BARs: they may have moved since the fetch.
 */
static bool qgpu_write_status_at(QGPUState *s, uint32_t index, dma_addr_t addr,
                                 uint32_t status)
{
    uint32_t err = qgpu_check_guest_range(s, addr, sizeof(uint32_t));

    if (!err && stl_le_pci_dma(PCI_DEVICE(s), addr, status,
                               MEMTXATTRS_UNSPECIFIED) != MEMTX_OK) {
        err = QGPU_ERR_DMA_WRITE;
    }
    if (err) {
        qemu_log_mask(LOG_GUEST_ERROR,
                      "qgpu: desc %u: status write-back to 0x%" PRIx64
                      " failed (%s)\n", index, addr, qgpu_err_name(err));
        return false;
    }
    return true;
}

/* Write the status word of the descriptor in flight back to the ring. */
static bool qgpu_write_status(QGPUState *s, uint32_t status)
{
    return qgpu_write_status_at(s, s->cur_index,
                                qgpu_desc_addr(s, s->cur_index) +
                                QGPU_DESC_OFF_STATUS, status);
}

static void qgpu_drop_inflight(QGPUState *s)
{
    s->active = false;
    s->cur_fault = QGPU_FAULT_NONE;
    s->segs_stale = false;
    s->cur_done = 0;
    g_free(s->segs);
    s->segs = NULL;
    s->nsegs = 0;
}

/* Retire the descriptor in flight with @err and advance HEAD. */
static void qgpu_retire(QGPUState *s, uint32_t err)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    bool fence = s->cur_flags & QGPU_DESC_F_FENCE;
    uint32_t causes = 0;

    if (fence) {
        /* Checked again: the BARs or an IOMMU mapping may have changed. */
        uint32_t ferr = qgpu_check_guest_range(s, s->cur_fence_addr,
                                               sizeof(uint64_t));

        if (!ferr && !dma_memory_valid(pci_get_address_space(pdev),
                                       s->cur_fence_addr, sizeof(uint64_t),
                                       DMA_DIRECTION_FROM_DEVICE,
                                       MEMTXATTRS_UNSPECIFIED)) {
            ferr = QGPU_ERR_FENCE_WRITE;
        }
        if (ferr) {
            qemu_log_mask(LOG_GUEST_ERROR, "qgpu: desc %u: fence address 0x%"
                          PRIx64 " not writable (%s)\n", s->cur_index,
                          s->cur_fence_addr, qgpu_err_name(ferr));
            qgpu_trace_record(s, s->cur_fence_addr, 0, sizeof(uint64_t), ferr);
            fence = false;
            err = err ? err : ferr;
        }
    }

    /* Status first, then the fence: a driver that sees the fence sees both. */
    if (!qgpu_write_status(s, QGPU_DESC_STATUS_DONE | err) && !err) {
        err = QGPU_ERR_DMA_WRITE;
    }
    if (qgpu_disturbed(s)) {
        return;
    }
    if (fence) {
        MemTxResult r;

        trace_qgpu_fence(s->cur_index, s->cur_fence_addr, s->cur_fence_value);
        r = stq_le_pci_dma(pdev, s->cur_fence_addr, s->cur_fence_value,
                           MEMTXATTRS_UNSPECIFIED);
        if (qgpu_disturbed(s)) {
            return;
        }
        if (r == MEMTX_OK) {
            s->fence = s->cur_fence_value;
            s->stats.last_fence = s->fence;
        } else {
            /* Lost a race with an IOMMU unmap: correct the status. */
            qemu_log_mask(LOG_GUEST_ERROR,
                          "qgpu: desc %u: fence write to 0x%" PRIx64
                          " failed\n", s->cur_index, s->cur_fence_addr);
            if (!err) {
                err = QGPU_ERR_FENCE_WRITE;
                qgpu_write_status(s, QGPU_DESC_STATUS_DONE | err);
                if (qgpu_disturbed(s)) {
                    return;
                }
            }
        }
    }

    trace_qgpu_desc_retire(s->cur_index, qgpu_err_name(err));
    s->stats.descriptors++;
    if (err) {
        s->stats.errors++;
        s->dma_error = err;
        s->dma_error_index = s->cur_index;
        causes |= QGPU_INT_DMA_ERROR;
    } else if (s->cur_opcode != QGPU_OP_NOP) {
        s->stats.transfers++;
    }
    if (s->cur_flags & QGPU_DESC_F_IRQ) {
        causes |= QGPU_INT_DMA_DONE;
    }
    qgpu_drop_inflight(s);
    s->ring_head = (s->ring_head + 1) & (s->ring_size - 1);
    if (causes) {
        qgpu_raise(s, causes);
    }
}

/* Stop the engine on a ring it cannot read; only ENGINE_RESET restarts it. */
static void qgpu_halt(QGPUState *s, uint32_t index, uint32_t err)
{
    qemu_log_mask(LOG_GUEST_ERROR,
                  "qgpu: ring entry %u at 0x%" PRIx64 " unreadable (%s); "
                  "engine halted\n", index, qgpu_desc_addr(s, index),
                  qgpu_err_name(err));
    trace_qgpu_engine_halt(index, qgpu_err_name(err));
    s->halted = true;
    s->dma_error = err;
    s->dma_error_index = index;
    s->stats.errors++;
    qgpu_raise(s, QGPU_INT_ENGINE_HALT);
}

/* Count down an armed x-fault-*-nth knob; true when it fires. */
static bool qgpu_countdown(uint64_t *nth)
{
    return *nth && --*nth == 0;
}

/*
 * Fetch and validate the descriptor at HEAD. Returns false if the engine
 * halted; an invalid descriptor is retired with its error and true returned.
 */
static bool qgpu_fetch(QGPUState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint32_t index = s->ring_head;
    dma_addr_t addr = qgpu_desc_addr(s, index);
    struct qgpu_desc d;
    uint32_t err;

    err = qgpu_check_guest_range(s, addr, QGPU_DESC_SIZE);
    if (!err && pci_dma_read(pdev, addr, &d, sizeof(d)) != MEMTX_OK) {
        err = QGPU_ERR_DESC_FETCH;
    }
    if (qgpu_disturbed(s)) {
        return false;
    }
    if (err) {
        qgpu_halt(s, index, err);
        return false;
    }

    s->active = true;
    s->cur_index = index;
    s->cur_opcode = le32_to_cpu(d.opcode);
    s->cur_flags = le32_to_cpu(d.flags);
    s->cur_src = le64_to_cpu(d.src);
    s->cur_dst = le64_to_cpu(d.dst);
    s->cur_length = le64_to_cpu(d.length);
    s->cur_fence_addr = le64_to_cpu(d.fence_addr);
    s->cur_fence_value = le64_to_cpu(d.fence_value);
    s->cur_pattern = le32_to_cpu(d.fill_pattern);
    s->cur_sg_count = le32_to_cpu(d.sg_count);
    s->cur_done = 0;
    trace_qgpu_desc_fetch(index, qgpu_op_name(s->cur_opcode), s->cur_flags,
                          s->cur_src, s->cur_dst, s->cur_length);

    err = qgpu_validate_desc(s, &d);    /* reads an SG list from the guest */
    if (qgpu_disturbed(s)) {
        return false;
    }
    if (!err && (s->cur_opcode == QGPU_OP_COPY_TO_VRAM ||
                 s->cur_opcode == QGPU_OP_COPY_FROM_VRAM)) {
        bool fail = qgpu_countdown(&s->fault_dma_error_nth);
        bool truncate = qgpu_countdown(&s->fault_truncate_nth);
        bool corrupt = qgpu_countdown(&s->fault_corrupt_nth);

        s->cur_fault = fail ? QGPU_FAULT_DMA_ERROR :
                       truncate ? QGPU_FAULT_TRUNCATE :
                       corrupt ? QGPU_FAULT_CORRUPT : QGPU_FAULT_NONE;
    }
    if (err) {
        qemu_log_mask(LOG_GUEST_ERROR, "qgpu: desc %u (%s) refused: %s\n",
                      index, qgpu_op_name(s->cur_opcode), qgpu_err_name(err));
        qgpu_trace_record(s, qgpu_guest_side(s),
                          s->cur_opcode == QGPU_OP_COPY_FROM_VRAM ? s->cur_src
                                                                  : s->cur_dst,
                          s->cur_length, err);
        qgpu_retire(s, err);
    }
    return true;
}

/* Fill @len bytes at @p with @pattern, whose byte 0 lands at @phase. */
static void qgpu_fill_bytes(uint8_t *p, uint64_t len, uint32_t pattern,
                            uint64_t phase)
{
    uint8_t pat[4];
    uint64_t filled;

    stl_le_p(pat, pattern);
    for (filled = 0; filled < len && filled < 4; filled++) {
        p[filled] = pat[(phase + filled) % 4];
    }
    /* Doubling copies keep the 4-byte period. */
    while (filled < len) {
        uint64_t n = MIN(filled, len - filled);

        memcpy(p + filled, p, n);
        filled += n;
    }
}

/*
 * Move up to @budget bytes of the descriptor in flight. Returns the bytes
 * moved; sets *err on a failed guest access.
 */
static uint64_t qgpu_run_slice(QGPUState *s, uint64_t budget, uint32_t *err)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint64_t todo = MIN(budget, s->cur_length - s->cur_done);
    uint64_t moved = 0;

    *err = QGPU_ERR_NONE;
    switch (s->cur_opcode) {
    case QGPU_OP_COPY_VRAM: {
        /* memmove semantics across slices: walk backwards when dst > src. */
        bool backwards = s->cur_dst > s->cur_src;
        uint64_t off = backwards ? s->cur_length - s->cur_done - todo
                                 : s->cur_done;

        memmove(s->vram_ptr + s->cur_dst + off, s->vram_ptr + s->cur_src + off,
                todo);
        memory_region_set_dirty(s->vram, s->cur_dst + off, todo);
        s->stats.bytes_vram_copy += todo;
        return todo;
    }
    case QGPU_OP_FILL:
        qgpu_fill_bytes(s->vram_ptr + s->cur_dst + s->cur_done, todo,
                        s->cur_pattern, s->cur_done);
        memory_region_set_dirty(s->vram, s->cur_dst + s->cur_done, todo);
        s->stats.bytes_fill += todo;
        return todo;
    case QGPU_OP_COPY_TO_VRAM:
    case QGPU_OP_COPY_FROM_VRAM:
        break;
    default:
        g_assert_not_reached();
    }

    /* Guest <-> VRAM: find the segment holding cur_done and walk on. */
    {
        bool to_vram = s->cur_opcode == QGPU_OP_COPY_TO_VRAM;
        uint64_t vram_base = to_vram ? s->cur_dst : s->cur_src;
        uint64_t seg_start = 0;
        uint32_t i = 0;

        while (i < s->nsegs && seg_start + s->segs[i].len <= s->cur_done) {
            seg_start += s->segs[i].len;
            i++;
        }
        while (moved < todo && i < s->nsegs) {
            uint64_t seg_off = s->cur_done + moved - seg_start;
            uint64_t n = MIN(todo - moved, s->segs[i].len - seg_off);
            uint64_t voff = vram_base + s->cur_done + moved;
            uint8_t *vp = s->vram_ptr + voff;
            dma_addr_t ga = s->segs[i].addr + seg_off;
            MemTxResult r;

            if (to_vram) {
                r = pci_dma_read(pdev, ga, vp, n);
            } else {
                r = pci_dma_write(pdev, ga, vp, n);
            }
            if (to_vram && s->vram) {
                /*
                 * Before the check below: a read that reset us still wrote
                 * @vp, and VRAM survives a reset, so a migration must resend
                 * it. After an unplug (s->vram gone) nothing migrates it.
                 */
                memory_region_set_dirty(s->vram, voff, n);
            }
            if (qgpu_disturbed(s)) {
                return moved;   /* s->segs may be gone */
            }
            if (r != MEMTX_OK) {
                *err = to_vram ? QGPU_ERR_DMA_READ : QGPU_ERR_DMA_WRITE;
                qemu_log_mask(LOG_GUEST_ERROR,
                              "qgpu: desc %u: DMA %s guest 0x%" PRIx64
                              "+0x%" PRIx64 " failed\n", s->cur_index,
                              to_vram ? "read from" : "write to", ga, n);
                qgpu_trace_record(s, ga, voff, n, *err);
                return moved;
            }
            if (to_vram) {
                s->stats.bytes_to_vram += n;
            } else {
                s->stats.bytes_from_vram += n;
            }
            moved += n;
            if (seg_off + n == s->segs[i].len) {
                /* One trace record per finished segment. */
                qgpu_trace_record(s, s->segs[i].addr, voff + n - s->segs[i].len,
                                  s->segs[i].len, QGPU_ERR_NONE);
                seg_start += s->segs[i].len;
                i++;
            }
        }
    }
    return moved;
}

/* Guest bus address of the next byte the descriptor in flight would move. */
static uint64_t qgpu_abort_point(QGPUState *s)
{
    uint64_t start = 0;

    for (uint32_t i = 0; i < s->nsegs; i++) {
        if (s->cur_done < start + s->segs[i].len) {
            return s->segs[i].addr + (s->cur_done - start);
        }
        start += s->segs[i].len;
    }
    return 0;
}

/*
 * VRAM offset where the undone part of the descriptor in flight starts. A
 * backwards COPY_VRAM (dst > src) works from the top, so its undone part is
 * the bottom of the destination.
 */
static uint64_t qgpu_vram_point(QGPUState *s)
{
    if (s->cur_opcode == QGPU_OP_COPY_VRAM && s->cur_dst > s->cur_src) {
        return s->cur_dst;
    }
    return (s->cur_opcode == QGPU_OP_COPY_FROM_VRAM ? s->cur_src : s->cur_dst) +
           s->cur_done;
}

static void qgpu_engine_kick(QGPUState *s);

/* Flip the byte at @off of the destination of the descriptor in flight. */
static void qgpu_corrupt_byte(QGPUState *s, uint64_t off)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint64_t start = 0;
    uint8_t byte;

    if (s->cur_opcode == QGPU_OP_COPY_TO_VRAM) {
        s->vram_ptr[s->cur_dst + off] ^= 0xff;
        memory_region_set_dirty(s->vram, s->cur_dst + off, 1);
        return;
    }
    for (uint32_t i = 0; i < s->nsegs; i++) {
        if (off < start + s->segs[i].len) {
            dma_addr_t ga = s->segs[i].addr + (off - start);

            if (pci_dma_read(pdev, ga, &byte, 1) == MEMTX_OK &&
                !qgpu_disturbed(s)) {
                byte ^= 0xff;
                pci_dma_write(pdev, ga, &byte, 1);
            }
            return;
        }
        start += s->segs[i].len;
    }
}

/* All the data the descriptor in flight will move has moved: retire it. */
static void qgpu_finish(QGPUState *s)
{
    bool to_vram = s->cur_opcode == QGPU_OP_COPY_TO_VRAM;

    switch (s->cur_fault) {
    case QGPU_FAULT_DMA_ERROR:
        s->stats.faults_injected++;
        trace_qgpu_fault("dma-error", s->cur_index);
        qgpu_trace_record(s, qgpu_abort_point(s), qgpu_vram_point(s),
                          s->cur_length - s->cur_done,
                          to_vram ? QGPU_ERR_DMA_READ : QGPU_ERR_DMA_WRITE);
        qgpu_retire(s, to_vram ? QGPU_ERR_DMA_READ : QGPU_ERR_DMA_WRITE);
        return;
    case QGPU_FAULT_TRUNCATE:
        s->stats.faults_injected++;
        trace_qgpu_fault("truncate", s->cur_index);
        break;
    case QGPU_FAULT_CORRUPT:
        s->stats.faults_injected++;
        trace_qgpu_fault("corrupt", s->cur_index);
        qgpu_corrupt_byte(s, s->cur_length / 2);
        if (qgpu_disturbed(s)) {
            return;
        }
        break;
    case QGPU_FAULT_NONE:
        break;
    }
    if (s->cur_opcode == QGPU_OP_COPY_VRAM || s->cur_opcode == QGPU_OP_FILL) {
        qgpu_trace_record(s, 0, s->cur_dst, s->cur_length, QGPU_ERR_NONE);
    }
    qgpu_retire(s, QGPU_ERR_NONE);
}

static void qgpu_engine_run(void *opaque);

/* The power state in PMCSR: 0 (D0) .. 3 (D3hot). */
static uint8_t qgpu_power_state(PCIDevice *pdev)
{
    return pci_get_word(pdev->config + QGPU_CAP_OFF_PM + PCI_PM_CTRL) &
           PCI_PM_CTRL_STATE_MASK;
}

/*
 * The status write ENGINE_RESET posted (3.5): DONE | ABORTED into the entry
 * it aborted. Only while the VM runs and the function is in D0; a device
 * reset drops it, as it drops the descriptor in flight.
 */
static void qgpu_write_abort_status(QGPUState *s)
{
    if (!s->abort_pending || !runstate_is_running() ||
        qgpu_power_state(PCI_DEVICE(s)) != 0) {
        return;
    }
    s->abort_pending = false;
    qemu_bh_cancel(s->abort_bh);    /* when the engine's run wrote it */
    trace_qgpu_engine_reset_status(s->abort_index, s->abort_status_addr);
    qgpu_write_status_at(s, s->abort_index, s->abort_status_addr,
                         QGPU_DESC_STATUS_DONE | QGPU_ERR_ABORTED);
}

/*
 * The delay timer runs the engine under the device's re-entrancy guard, as
 * the bottom half does (see aio_bh_call()): DMA that reaches our own MMIO
 * is then refused by the memory core instead of recursing into the device.
 */
static void qgpu_delay_expired(void *opaque)
{
    QGPUState *s = opaque;
    MemReentrancyGuard *guard = &DEVICE(s)->mem_reentrancy_guard;
    bool was_engaged = guard->engaged_in_io;

    guard->engaged_in_io = true;
    qgpu_engine_run(s);
    guard->engaged_in_io = was_engaged;
}

/*
 * The engine: runs from a bottom half (or the delay timer), never inside an
 * MMIO access. Each run moves at most one slice of bytes and retires at most
 * QGPU_DMA_SLICE_DESCS descriptors, then yields to the main loop. After
 * anything that reaches guest-chosen addresses it checks qgpu_disturbed().
 */
static void qgpu_engine_work(QGPUState *s)
{
    uint64_t budget = QGPU_DMA_SLICE_BYTES;
    unsigned descs = 0;

    if (s->fault_hang) {
        return;     /* until x-fault-hang is cleared or the engine reset */
    }
    if (!runstate_is_running()) {
        /*
         * Paused, migrating in, or past a migration's switchover: no DMA
         * (guest memory must not change under a stopped VM or behind the
         * migration's back). qgpu_vm_state_change() resumes on cont.
         */
        trace_qgpu_engine_vm_stopped(s->ring_head, s->ring_tail);
        return;
    }
    if (qgpu_power_state(PCI_DEVICE(s)) != 0) {
        /* Powered down: no DMA, and the way back to D0 resets the engine. */
        trace_qgpu_engine_powered_down(s->ring_head, s->ring_tail);
        return;
    }
    if (s->abort_pending) {
        /* An ENGINE_RESET's status write comes before any new work. */
        qgpu_write_abort_status(s);
        if (qgpu_disturbed(s)) {
            return;
        }
    }
    while ((s->engine_ctrl & QGPU_ENGINE_CTRL_ENABLE) && !s->halted) {
        uint64_t moved, limit;
        uint32_t err = QGPU_ERR_NONE;

        if (!s->active) {
            if (s->ring_head == s->ring_tail) {
                trace_qgpu_engine_idle(s->ring_head);
                return;
            }
            if (descs++ == QGPU_DMA_SLICE_DESCS) {
                break;
            }
            if (!qgpu_fetch(s) || qgpu_disturbed(s)) {
                return;
            }
            continue;
        }
        if (s->cur_opcode == QGPU_OP_NOP) {
            qgpu_retire(s, QGPU_ERR_NONE);
            if (qgpu_disturbed(s)) {
                return;
            }
            continue;
        }
        if (s->segs_stale) {
            s->segs_stale = false;
            if (s->cur_opcode == QGPU_OP_COPY_TO_VRAM ||
                s->cur_opcode == QGPU_OP_COPY_FROM_VRAM) {
                err = qgpu_load_segments(s);
                if (qgpu_disturbed(s)) {
                    return;
                }
                if (err) {
                    qgpu_retire(s, err);
                    if (qgpu_disturbed(s)) {
                        return;
                    }
                    continue;
                }
            }
        }
        if (!budget) {
            break;
        }
        /* A failing or truncating fault stops the data half way. */
        limit = s->cur_fault == QGPU_FAULT_DMA_ERROR ||
                s->cur_fault == QGPU_FAULT_TRUNCATE ? s->cur_length / 2
                                                    : s->cur_length;
        moved = s->cur_done < limit ?
                qgpu_run_slice(s, MIN(budget, limit - s->cur_done), &err) : 0;
        if (qgpu_disturbed(s)) {
            return;
        }
        budget -= moved;
        s->cur_done += moved;
        if (err) {
            qgpu_retire(s, err);
        } else if (s->cur_done == limit) {
            qgpu_finish(s);
        }
        if (qgpu_disturbed(s)) {
            return;
        }
    }
    if ((s->engine_ctrl & QGPU_ENGINE_CTRL_ENABLE) && !s->halted) {
        qgpu_engine_kick(s);    /* more to do: continue in the next run */
    }
}

static void qgpu_engine_unref(void *opaque)
{
    object_unref(opaque);
}

/*
 * Run @work, which reaches guest-chosen addresses. Our own DMA may unplug
 * us (see @epoch): hold a reference for the run, and after an unplug drop
 * it only once our caller (aio_bh_call() or qgpu_delay_expired()) has
 * restored the re-entrancy guard inside us.
 *
 * One run at a time: a DMA access can reach a device whose handler polls
 * the main loop (aio_poll()), which runs our other bottom half. Nested,
 * it would reset @run_epoch and hide a reset or unplug from the outer run;
 * instead it is left to @retry, after the outer run.
 */
static void qgpu_run_disturbable(QGPUState *s, void (*work)(QGPUState *s),
                                 void (*retry)(QGPUState *s))
{
    if (s->in_run) {
        retry(s);
        return;
    }
    object_ref(OBJECT(s));
    s->in_run = true;
    s->run_epoch = s->epoch;
    work(s);
    s->in_run = false;
    if (qgpu_disturbed(s)) {
        aio_bh_schedule_oneshot(qemu_get_aio_context(), qgpu_engine_unref, s);
    } else {
        object_unref(OBJECT(s));
    }
}

static void qgpu_abort_status_retry(QGPUState *s)
{
    if (s->abort_bh) {      /* not unplugged meanwhile */
        qemu_bh_schedule(s->abort_bh);
    }
}

static void qgpu_engine_retry(QGPUState *s)
{
    if (s->bh) {
        qgpu_engine_kick(s);
    }
}

static void qgpu_engine_run(void *opaque)
{
    qgpu_run_disturbable(opaque, qgpu_engine_work, qgpu_engine_retry);
}

static void qgpu_abort_status_run(void *opaque)
{
    qgpu_run_disturbable(opaque, qgpu_write_abort_status,
                         qgpu_abort_status_retry);
}

static void qgpu_engine_kick(QGPUState *s)
{
    if (s->dma_delay_ns) {
        if (!timer_pending(s->delay_timer)) {
            timer_mod(s->delay_timer,
                      qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) + s->dma_delay_ns);
        }
    } else {
        qemu_bh_schedule(s->bh);
    }
}

/* The VM runs again (cont, the end of an incoming migration): so does the engine. */
static void qgpu_vm_state_change(void *opaque, bool running, RunState state)
{
    QGPUState *s = opaque;

    trace_qgpu_vm_state(running, qgpu_engine_has_work(s));
    if (running && s->abort_pending) {
        qemu_bh_schedule(s->abort_bh);
    }
    if (running && qgpu_engine_has_work(s)) {
        qgpu_engine_kick(s);
    }
}

static void qgpu_engine_stop(QGPUState *s)
{
    qemu_bh_cancel(s->bh);
    timer_del(s->delay_timer);
}

/*
 * Count the descriptors a reset discards without starting them: HEAD..TAIL-1,
 * less the one in flight (at HEAD). With aborted and retired descriptors,
 * this lets a driver account for every descriptor it wrote.
 */
static void qgpu_count_dropped(QGPUState *s)
{
    uint32_t pending;

    if (!s->ring_size) {
        return;
    }
    pending = (s->ring_tail + s->ring_size - s->ring_head) % s->ring_size;
    if (s->active && pending) {
        pending--;
    }
    s->stats.dropped += pending;
}

/*
 * ENGINE_RESET: abort the descriptor in flight (its status will say ABORTED,
 * no fence is written), empty the ring, clear the halt and disable the
 * engine. Ring base and size, and DMA_ERROR (for diagnosis), are kept.
 * No DMA here, inside the register write: the aborted status is posted
 * (@abort_pending) and written by abort_bh or the engine's next run.
 */
static void qgpu_engine_reset(QGPUState *s)
{
    trace_qgpu_engine_reset(s->active, s->ring_head, s->ring_tail);
    s->epoch++;
    qgpu_engine_stop(s);
    qgpu_count_dropped(s);
    if (s->active) {
        /* Record where it stopped and how much was left undone. */
        qgpu_trace_record(s, qgpu_abort_point(s), qgpu_vram_point(s),
                          s->cur_length - s->cur_done, QGPU_ERR_ABORTED);
        /* Not pending already: the engine writes that before any fetch. */
        s->abort_pending = true;
        s->abort_index = s->cur_index;
        s->abort_status_addr = qgpu_desc_addr(s, s->cur_index) +
                               QGPU_DESC_OFF_STATUS;
        qemu_bh_schedule(s->abort_bh);
        s->stats.aborted++;
        qgpu_drop_inflight(s);
    }
    s->ring_head = s->ring_tail = 0;
    s->engine_ctrl = 0;
    s->halted = false;
    s->fault_hang = false;      /* resetting a hung engine is the cure */
    s->stats.engine_resets++;
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
        *val = QGPU_SG_MAX_ENTRIES;
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
        if (val & ~QGPU_ENGINE_CTRL_ENABLE) {
            qgpu_access_error(s, addr, QGPU_ACCESS_ERR_VALUE,
                              "reserved ENGINE_CTRL bits set");
        }
        qgpu_set_enable(s, addr, val & QGPU_ENGINE_CTRL_ENABLE);
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

static const MemoryRegionOps qgpu_mmio_ops = {
    .read = qgpu_mmio_read,
    .write = qgpu_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    /* Accept every size so misuse reaches us and is reported as such. */
    .valid = { .min_access_size = 1, .max_access_size = 8 },
    .impl = { .min_access_size = 1, .max_access_size = 8 },
};

/* ---- QOM: statistics and the DMA trace ----------------------------------- */

static void qgpu_get_dma_trace(Object *obj, Visitor *v, const char *name,
                               void *opaque, Error **errp)
{
    QGPUState *s = QGPU(obj);
    /* Not realized (or unplugged): no trace buffer, an empty list. */
    uint64_t n = s->trace ? MIN(s->trace_seq, s->trace_depth) : 0;
    bool ok = false;

    if (!visit_start_list(v, name, NULL, 0, errp)) {
        return;
    }
    for (uint64_t seq = s->trace_seq - n; seq < s->trace_seq; seq++) {
        QGPUTraceEntry *e = &s->trace[seq % s->trace_depth];
        char *op = (char *)qgpu_op_name(e->opcode);
        char *status = (char *)qgpu_err_name(e->error);
        uint64_t index = e->ring_index;
        uint64_t error = e->error;

        if (!visit_start_struct(v, NULL, NULL, 0, errp)) {
            goto out;
        }
        ok = visit_type_uint64(v, "seq", &e->seq, errp) &&
             visit_type_uint64(v, "ring-index", &index, errp) &&
             visit_type_str(v, "op", &op, errp) &&
             visit_type_uint64(v, "bus-addr", &e->bus_addr, errp) &&
             visit_type_uint64(v, "vram-offset", &e->vram_offset, errp) &&
             visit_type_uint64(v, "length", &e->length, errp) &&
             visit_type_uint64(v, "error", &error, errp) &&
             visit_type_str(v, "status", &status, errp) &&
             visit_check_struct(v, errp);
        visit_end_struct(v, NULL);
        if (!ok) {
            goto out;
        }
    }
    visit_check_list(v, errp);
out:
    visit_end_list(v, NULL);
}

static void qgpu_get_dma_delay(Object *obj, Visitor *v, const char *name,
                               void *opaque, Error **errp)
{
    visit_type_uint64(v, name, &QGPU(obj)->dma_delay_ns, errp);
}

/* Settable at run time: the engine paces its slices on the virtual clock. */
static void qgpu_set_dma_delay(Object *obj, Visitor *v, const char *name,
                               void *opaque, Error **errp)
{
    QGPUState *s = QGPU(obj);
    uint64_t val;

    if (!visit_type_uint64(v, name, &val, errp)) {
        return;
    }
    if (val > NANOSECONDS_PER_SECOND) {
        error_setg(errp, "x-dma-delay-ns must be at most 1000000000 (1 s), "
                   "not %" PRIu64, val);
        return;
    }
    s->dma_delay_ns = val;
    /* Re-arm pending work on the new pacing (not before realize). */
    if (s->bh && qgpu_engine_has_work(s)) {
        qgpu_engine_stop(s);
        qgpu_engine_kick(s);
    }
}

static bool qgpu_get_fault_hang(Object *obj, Error **errp)
{
    return QGPU(obj)->fault_hang;
}

static void qgpu_set_fault_hang(Object *obj, bool value, Error **errp)
{
    QGPUState *s = QGPU(obj);

    if (value && !s->fault_hang) {
        s->stats.faults_injected++;
        trace_qgpu_fault("hang", s->ring_head);
    }
    s->fault_hang = value;
    if (!value && s->bh && qgpu_engine_has_work(s)) {
        qgpu_engine_kick(s);    /* the engine wakes up where it stopped */
    }
}

static bool qgpu_get_fault_regs(Object *obj, Error **errp)
{
    return QGPU(obj)->fault_regs_all_ones;
}

static void qgpu_set_fault_regs(Object *obj, bool value, Error **errp)
{
    QGPUState *s = QGPU(obj);

    if (value && !s->fault_regs_all_ones) {
        s->stats.faults_injected++;
        trace_qgpu_fault("regs-all-ones", 0);
    }
    s->fault_regs_all_ones = value;
}

static char *qgpu_get_fault_aer(Object *obj, Error **errp)
{
    return g_strdup(QGPU(obj)->fault_aer ? QGPU(obj)->fault_aer : "");
}

/* Report a PCIe error from the device itself, as hardware would. */
static void qgpu_set_fault_aer(Object *obj, const char *value, Error **errp)
{
    QGPUState *s = QGPU(obj);
    PCIDevice *pdev = PCI_DEVICE(s);
    PCIEAERErr err = { 0 };
    int ret;

    if (!strcmp(value, "correctable")) {
        err.status = PCI_ERR_COR_BAD_TLP;
        err.flags = PCIE_AER_ERR_IS_CORRECTABLE;
    } else if (!strcmp(value, "nonfatal")) {
        err.status = PCI_ERR_UNC_POISON_TLP;    /* non-fatal by default */
    } else if (!strcmp(value, "fatal")) {
        err.status = PCI_ERR_UNC_MALF_TLP;      /* fatal by default */
    } else {
        error_setg(errp, "x-fault-aer takes 'correctable', 'nonfatal' or "
                   "'fatal', not '%s'", value);
        return;
    }
    if (!DEVICE(s)->realized) {
        /* Also: the requester ID below is only known once plugged in. */
        error_setg(errp, "x-fault-aer: the device is not realized yet");
        return;
    }
    err.source_id = pci_requester_id(pdev);
    /* The AER message's MSI may reach config space and unplug us. */
    object_ref(obj);
    ret = pcie_aer_inject_error(pdev, &err);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "x-fault-aer: cannot raise a %s error",
                         value);
        object_unref(obj);
        return;
    }
    trace_qgpu_fault(value, err.status);
    s->stats.faults_injected++;
    if (DEVICE(s)->realized) {
        g_free(s->fault_aer);
        s->fault_aer = g_strdup(value);
    }
    object_unref(obj);
}

static void qgpu_instance_init(Object *obj)
{
    QGPUState *s = QGPU(obj);
    static const struct {
        const char *name;
        size_t offset;
        const char *desc;
    } stats[] = {
#define QGPU_STAT(n, f, d) { "stat-" n, offsetof(QGPUStats, f), d }
        QGPU_STAT("descriptors", descriptors,
                  "descriptors retired, with or without error (not aborts, "
                  "not halts)"),
        QGPU_STAT("transfers", transfers,
                  "non-NOP descriptors retired without error"),
        QGPU_STAT("bytes-to-vram", bytes_to_vram,
                  "bytes DMA-read from guest memory into VRAM"),
        QGPU_STAT("bytes-from-vram", bytes_from_vram,
                  "bytes DMA-written from VRAM to guest memory"),
        QGPU_STAT("bytes-vram-copy", bytes_vram_copy,
                  "bytes copied by COPY_VRAM"),
        QGPU_STAT("bytes-fill", bytes_fill, "bytes written by FILL"),
        QGPU_STAT("errors", errors,
                  "descriptors retired with an error, plus halts"),
        QGPU_STAT("aborted", aborted,
                  "descriptors in flight at ENGINE_RESET or device reset"),
        QGPU_STAT("dropped", dropped,
                  "pending descriptors that ENGINE_RESET, a device reset or "
                  "a RING_SIZE write discarded unstarted"),
        QGPU_STAT("last-fence", last_fence,
                  "last fence value written (survives device reset, unlike "
                  "FENCE)"),
        QGPU_STAT("interrupts", interrupts,
                  "MSI-X/MSI messages signalled, and INTx rising edges"),
        QGPU_STAT("doorbells", doorbells,
                  "DOORBELL writes, refused ones included"),
        QGPU_STAT("access-errors", access_errors, "register misuses"),
        QGPU_STAT("engine-resets", engine_resets,
                  "accepted ENGINE_RESET writes"),
        QGPU_STAT("faults-injected", faults_injected,
                  "faults injected through x-fault-* properties"),
#undef QGPU_STAT
    };

    for (int i = 0; i < ARRAY_SIZE(stats); i++) {
        object_property_add_uint64_ptr(obj, stats[i].name,
                                       (uint64_t *)((char *)&s->stats +
                                                    stats[i].offset),
                                       OBJ_PROP_FLAG_READ);
        object_property_set_description(obj, stats[i].name, stats[i].desc);
    }
    object_property_add(obj, "dma-trace", "QgpuDmaTrace", qgpu_get_dma_trace,
                        NULL, NULL, NULL);
    object_property_set_description(obj, "dma-trace",
                                    "last trace-depth DMA transfers, oldest "
                                    "first (read-only)");
    static const struct {
        const char *name;
        size_t offset;
        const char *desc;
    } countdowns[] = {
        { "x-fault-dma-error-nth", offsetof(QGPUState, fault_dma_error_nth),
          "fail the Nth next guest-memory DMA half way with a transaction "
          "error (1: the next one; 0: off)" },
        { "x-fault-truncate-nth", offsetof(QGPUState, fault_truncate_nth),
          "move only the first half of the Nth next guest-memory DMA and "
          "report success" },
        { "x-fault-corrupt-nth", offsetof(QGPUState, fault_corrupt_nth),
          "flip the middle byte of the Nth next guest-memory DMA's "
          "destination and report success" },
        { "x-fault-irq-drop", offsetof(QGPUState, fault_irq_drop),
          "swallow the next N MSI-X/MSI messages (causes stay pending)" },
        { "x-fault-irq-dup", offsetof(QGPUState, fault_irq_dup),
          "send each of the next N MSI-X/MSI messages twice" },
    };

    for (int i = 0; i < ARRAY_SIZE(countdowns); i++) {
        object_property_add_uint64_ptr(obj, countdowns[i].name,
                                       (uint64_t *)((char *)s +
                                                    countdowns[i].offset),
                                       OBJ_PROP_FLAG_READWRITE);
        object_property_set_description(obj, countdowns[i].name,
                                        countdowns[i].desc);
    }
    object_property_add_bool(obj, "x-fault-hang", qgpu_get_fault_hang,
                             qgpu_set_fault_hang);
    object_property_set_description(obj, "x-fault-hang",
                                    "stop the DMA engine where it is (a hung "
                                    "engine); ENGINE_RESET or clearing it "
                                    "recovers");
    object_property_add_bool(obj, "x-fault-regs-all-ones", qgpu_get_fault_regs,
                             qgpu_set_fault_regs);
    object_property_set_description(obj, "x-fault-regs-all-ones",
                                    "register reads return all ones and "
                                    "writes are dropped, as after a "
                                    "surprise removal");
    object_property_add_str(obj, "x-fault-aer", qgpu_get_fault_aer,
                            qgpu_set_fault_aer);
    object_property_set_description(obj, "x-fault-aer",
                                    "raise a PCIe AER error from the device: "
                                    "correctable, nonfatal or fatal");
    object_property_add(obj, "x-dma-delay-ns", "uint64", qgpu_get_dma_delay,
                        qgpu_set_dma_delay, NULL, NULL);
    object_property_set_description(obj, "x-dma-delay-ns",
                                    "virtual-clock delay before each run of "
                                    "the DMA engine (a run moves up to 1 MiB "
                                    "and fetches up to 64 descriptors; 0: no "
                                    "delay); settable at run time");
}

/* ---- lifecycle ----------------------------------------------------------- */

static bool qgpu_init_vram(QGPUState *s, Error **errp)
{
    ERRP_GUARD();

    if (s->hostmem) {
        uint64_t backend_size;

        if (host_memory_backend_is_mapped(s->hostmem)) {
            error_setg(errp, "memdev '%s' is already in use by another device",
                       object_get_canonical_path_component(OBJECT(s->hostmem)));
            return false;
        }
        s->vram = host_memory_backend_get_memory(s->hostmem);
        if (memory_region_is_rom(s->vram)) {
            /* The device writes VRAM through its host mapping. */
            error_setg(errp, "memdev '%s' is read-only (rom=on or readonly=on); "
                       "VRAM must be writable",
                       object_get_canonical_path_component(OBJECT(s->hostmem)));
            s->vram = NULL;
            return false;
        }
        backend_size = memory_region_size(s->vram);
        if (s->vram_size && s->vram_size != backend_size) {
            error_setg(errp, "vram-size (%" PRIu64 " bytes) conflicts with the "
                       "size of memdev '%s' (%" PRIu64 " bytes)",
                       s->vram_size,
                       object_get_canonical_path_component(OBJECT(s->hostmem)),
                       backend_size);
            error_append_hint(errp, "Leave vram-size unset with memdev: VRAM "
                              "takes the backend's size.\n");
            return false;
        }
        s->vram_size = backend_size;
    } else if (!s->vram_size) {
        s->vram_size = QGPU_VRAM_SIZE_DEFAULT;
    }

    if (!is_power_of_2(s->vram_size) || s->vram_size < QGPU_VRAM_SIZE_MIN ||
        s->vram_size > QGPU_VRAM_SIZE_MAX) {
        error_setg(errp, "VRAM size %" PRIu64 " is not a power of two "
                   "between 1 MiB and 16 GiB", s->vram_size);
        if (s->hostmem) {
            error_append_hint(errp, "Resize memdev '%s'.\n",
                              object_get_canonical_path_component(
                                  OBJECT(s->hostmem)));
        }
        return false;
    }

    if (s->hostmem) {
        host_memory_backend_set_mapped(s->hostmem, true);
    } else if (!memory_region_init_ram(&s->vram_ram, OBJECT(s), "qgpu.vram",
                                       s->vram_size, errp)) {
        error_prepend(errp, "cannot allocate %" PRIu64 " bytes of VRAM: ",
                      s->vram_size);
        return false;
    } else {
        s->vram = &s->vram_ram;
    }
    if (s->hostmem) {
        vmstate_register_ram(s->vram, DEVICE(s));
    }
    s->vram_ptr = memory_region_get_ram_ptr(s->vram);
    return true;
}

/*
 * Give up VRAM's migration name now, for our own RAM too: the old object is
 * finalized an RCU grace period after unplug, and a device_add into the same
 * slot before then would find the name taken (QEMU aborts on that).
 */
static void qgpu_fini_vram(QGPUState *s)
{
    if (s->vram) {
        vmstate_unregister_ram(s->vram, DEVICE(s));
    }
    if (s->hostmem && s->vram) {
        host_memory_backend_set_mapped(s->hostmem, false);
    }
    s->vram = NULL;
    s->vram_ptr = NULL;
}

static void qgpu_config_write(PCIDevice *pdev, uint32_t addr, uint32_t val,
                              int len)
{
    QGPUState *s = QGPU(pdev);
    uint8_t old_state = qgpu_power_state(pdev), new_state;

    pci_default_write_config(pdev, addr, val, len);
    pcie_aer_write_config(pdev, addr, val, len);
    new_state = qgpu_power_state(pdev);
    if (new_state != old_state) {
        trace_qgpu_power_state(old_state, new_state);
        if (old_state == 3 && new_state == 0) {
            /*
             * No_Soft_Reset is clear: like a GPU whose power was cut, the
             * function comes back from D3hot in its reset state (registers
             * and config space; VRAM survives, see qgpu_reset_hold()). The
             * OS restores config space, the driver its ring. This is what
             * FLR does too, from the same place.
             */
            pci_device_reset(pdev);
            return;
        }
    }
    /* Switching MSI/MSI-X off hands pending causes back to INTx. */
    qgpu_update_irq(s, 0);
}

static void qgpu_realize(PCIDevice *pdev, Error **errp)
{
    ERRP_GUARD();
    QGPUState *s = QGPU(pdev);
    uint8_t *conf = pdev->config;

    if (!pci_bus_is_express(pci_get_bus(pdev))) {
        error_setg(errp, "qgpu is a PCI Express device: plug it into a PCIe "
                   "bus (a pcie-root-port, or pcie.0 on q35)");
        return;
    }
    if (!s->trace_depth || s->trace_depth > QGPU_TRACE_DEPTH_MAX) {
        error_setg(errp, "trace-depth must be between 1 and %d, not %u",
                   QGPU_TRACE_DEPTH_MAX, s->trace_depth);
        return;
    }
    if (!qgpu_init_vram(s, errp)) {
        return;
    }

    pci_config_set_interrupt_pin(conf, 1);
    memory_region_init_io(&s->mmio, OBJECT(s), &qgpu_mmio_ops, s,
                          "qgpu.regs", QGPU_REGS_SIZE);
    pci_register_bar(pdev, QGPU_BAR_REGS, PCI_BASE_ADDRESS_SPACE_MEMORY,
                     &s->mmio);
    /*
     * VRAM is plain memory, so it is prefetchable; vram-prefetchable=off
     * shows drivers a BAR they must not map write-combining.
     */
    pci_register_bar(pdev, QGPU_BAR_VRAM, PCI_BASE_ADDRESS_SPACE_MEMORY |
                     PCI_BASE_ADDRESS_MEM_TYPE_64 |
                     (s->vram_prefetchable ? PCI_BASE_ADDRESS_MEM_PREFETCH : 0),
                     s->vram);

    if (pcie_endpoint_cap_init(pdev, QGPU_CAP_OFF_PCIE) < 0) {
        error_setg(errp, "cannot add the PCI Express capability");
        goto err_vram;
    }
    /* Let the OS enable error reporting, or AER messages never leave us. */
    pcie_cap_deverr_init(pdev);
    /*
     * Power management: D0 and D3hot, and no No_Soft_Reset, so that D3hot
     * loses the device's state as a powered-down GPU does (see
     * qgpu_config_write()): a driver must save and restore what it needs.
     */
    if (pci_pm_init(pdev, QGPU_CAP_OFF_PM, errp) < 0) {
        goto err_pcie;
    }
    pci_set_word(pdev->config + QGPU_CAP_OFF_PM + PCI_PM_PMC,
                 PCI_PM_CAP_VER_1_2);
    pci_set_word(pdev->wmask + QGPU_CAP_OFF_PM + PCI_PM_CTRL,
                 PCI_PM_CTRL_STATE_MASK);
    if (s->msi && msi_init(pdev, QGPU_CAP_OFF_MSI, 1, true, false, errp)) {
        error_append_hint(errp, "Set msi=off to run without MSI.\n");
        goto err_pcie;
    }
    if (s->msix) {
        memory_region_init(&s->msix_bar, OBJECT(s), "qgpu.msix",
                           QGPU_MSIX_BAR_SIZE);
        if (msix_init(pdev, QGPU_MSIX_VECTORS, &s->msix_bar, QGPU_BAR_MSIX, 0,
                      &s->msix_bar, QGPU_BAR_MSIX, QGPU_MSIX_PBA_OFFSET,
                      QGPU_CAP_OFF_MSIX, errp)) {
            error_append_hint(errp, "Set msix=off to run without MSI-X.\n");
            goto err_msi;
        }
        pci_register_bar(pdev, QGPU_BAR_MSIX, PCI_BASE_ADDRESS_SPACE_MEMORY,
                         &s->msix_bar);
        for (unsigned v = 0; v < QGPU_MSIX_VECTORS; v++) {
            msix_vector_use(pdev, v);
        }
    }
    if (pcie_aer_init(pdev, PCI_ERR_VER, QGPU_EXT_CAP_OFF_AER, PCI_ERR_SIZEOF,
                      errp) < 0) {
        goto err_msix;
    }

    s->trace = g_new0(QGPUTraceEntry, s->trace_depth);
    s->bh = qemu_bh_new_guarded(qgpu_engine_run, s,
                                &DEVICE(s)->mem_reentrancy_guard);
    s->abort_bh = qemu_bh_new_guarded(qgpu_abort_status_run, s,
                                      &DEVICE(s)->mem_reentrancy_guard);
    s->delay_timer = timer_new_ns(QEMU_CLOCK_VIRTUAL, qgpu_delay_expired, s);
    s->vm_state = qemu_add_vm_change_state_handler(qgpu_vm_state_change, s);
    trace_qgpu_realize(s->vram_size, !!s->hostmem, s->msi, s->msix,
                       s->vram_prefetchable);
    return;

err_msix:
    if (s->msix) {
        msix_uninit(pdev, &s->msix_bar, &s->msix_bar);
    }
err_msi:
    msi_uninit(pdev);
err_pcie:
    pcie_cap_exit(pdev);
err_vram:
    qgpu_fini_vram(s);
}

static void qgpu_exit(PCIDevice *pdev)
{
    QGPUState *s = QGPU(pdev);

    s->epoch++;
    s->incarnation++;
    qemu_del_vm_change_state_handler(s->vm_state);
    s->vm_state = NULL;
    qgpu_engine_stop(s);
    qemu_bh_delete(s->bh);
    s->bh = NULL;
    qemu_bh_delete(s->abort_bh);
    s->abort_bh = NULL;
    s->abort_pending = false;
    timer_free(s->delay_timer);
    s->delay_timer = NULL;
    qgpu_drop_inflight(s);
    g_free(s->trace);
    s->trace = NULL;
    g_free(s->fault_aer);
    s->fault_aer = NULL;
    pcie_aer_exit(pdev);
    if (s->msix) {
        msix_uninit(pdev, &s->msix_bar, &s->msix_bar);
    }
    msi_uninit(pdev);
    pcie_cap_exit(pdev);
    qgpu_fini_vram(s);
}

/*
 * Device reset: the engine stops at once (no write-back to guest memory
 * while the system resets) and every register returns to its reset value.
 * VRAM contents and statistics survive, as on real hardware and for tests.
 */
static void qgpu_reset_hold(Object *obj, ResetType type)
{
    QGPUState *s = QGPU(obj);

    pcie_cap_deverr_reset(PCI_DEVICE(s));

    trace_qgpu_reset(s->active);
    s->epoch++;
    s->incarnation++;
    if (s->bh) {                /* not realized: nothing runs */
        qgpu_engine_stop(s);
        qemu_bh_cancel(s->abort_bh);
    }
    s->abort_pending = false;   /* no write-back while the device resets */
    qgpu_count_dropped(s);
    if (s->active) {
        s->stats.aborted++;
    }
    qgpu_drop_inflight(s);
    s->scratch = 0;
    s->user_scratch = 0;
    s->ring_base = 0;
    s->ring_size = 0;
    s->ring_head = 0;
    s->ring_tail = 0;
    s->engine_ctrl = 0;
    s->halted = false;
    s->fault_hang = false;
    s->int_status = 0;
    s->int_mask = 0;
    s->fence = 0;
    s->dma_error = 0;
    s->dma_error_index = 0;
    s->access_error = 0;
    s->access_error_addr = 0;
}

/* What a stream without the optional subsections leaves as it is. */
static int qgpu_pre_load(void *opaque)
{
    QGPUState *s = opaque;

    s->abort_pending = false;
    s->stats.dropped = 0;
    return 0;
}

/*
 * Accept only a state the device could have produced (the registers' and
 * the engine's own rules): the stream is input like any other, and
 * everything in it that indexes memory or the ring must be checked.
 */
static int qgpu_post_load(void *opaque, int version_id)
{
    QGPUState *s = opaque;
    bool enabled = s->engine_ctrl & QGPU_ENGINE_CTRL_ENABLE;
    uint64_t ring_bytes = (uint64_t)s->ring_size * QGPU_DESC_SIZE;
    const char *why = NULL;

    if (s->ring_size && (!is_power_of_2(s->ring_size) ||
                         s->ring_size < QGPU_RING_MIN_ENTRIES ||
                         s->ring_size > QGPU_RING_MAX_ENTRIES)) {
        why = "RING_SIZE";
    } else if (s->ring_head >= MAX(s->ring_size, 1) ||
               s->ring_tail >= MAX(s->ring_size, 1)) {
        why = "RING_HEAD or RING_TAIL outside the ring";
    } else if ((s->engine_ctrl & ~QGPU_ENGINE_CTRL_ENABLE) ||
               (s->int_status & ~QGPU_INT_ALL) ||
               (s->int_mask & ~QGPU_INT_ALL) ||
               (s->access_error & ~QGPU_ACCESS_ERR_ALL) ||
               s->dma_error > QGPU_ERR_MAX) {
        why = "reserved register bits";
    } else if ((enabled || s->active) &&
               (!s->ring_size || s->ring_base % QGPU_DESC_SIZE ||
                s->ring_base + ring_bytes - 1 < s->ring_base)) {
        /* Enabling checks all three; the ring cannot change until idle. */
        why = "engine enabled or busy on a ring it cannot have accepted";
    } else if (s->active && (s->halted || s->abort_pending)) {
        /* A halt comes only from a fetch; a posted abort goes before one. */
        why = "descriptor in flight on a halted or resetting engine";
    } else if (s->active && (s->cur_index != s->ring_head ||
                             s->ring_head == s->ring_tail ||
                             s->cur_done > s->cur_length)) {
        why = "descriptor in flight outside HEAD..TAIL";
    } else if (s->active && qgpu_validate_desc(s, NULL)) {
        why = "descriptor in flight the engine would have refused";
    } else if (s->abort_pending &&
               (s->abort_index >= QGPU_RING_MAX_ENTRIES ||
                s->abort_status_addr % QGPU_DESC_SIZE != QGPU_DESC_OFF_STATUS)) {
        why = "posted ENGINE_RESET status write outside a ring entry";
    }
    if (why) {
        error_report("qgpu: migration stream refused: %s", why);
        return -EINVAL;
    }
    if (s->active) {
        /* The engine rebuilds the guest segment list from guest memory. */
        s->segs_stale = true;
    }
    if (s->abort_pending) {
        qemu_bh_schedule(s->abort_bh);  /* once the VM runs */
    }
    if (qgpu_engine_has_work(s)) {
        qgpu_engine_kick(s);
    }
    return 0;
}

/* Sent only while pending: streams without it load as before. */
static bool qgpu_abort_needed(void *opaque)
{
    QGPUState *s = opaque;

    return s->abort_pending;
}

static const VMStateDescription vmstate_qgpu_abort = {
    .name = "qgpu/abort-status",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = qgpu_abort_needed,
    .fields = (const VMStateField[]) {
        VMSTATE_BOOL(abort_pending, QGPUState),
        VMSTATE_UINT32(abort_index, QGPUState),
        VMSTATE_UINT64(abort_status_addr, QGPUState),
        VMSTATE_END_OF_LIST()
    },
};

/* Sent only when set, so that a stream from a build without it still loads. */
static bool qgpu_dropped_needed(void *opaque)
{
    QGPUState *s = opaque;

    return s->stats.dropped != 0;
}

static const VMStateDescription vmstate_qgpu_dropped = {
    .name = "qgpu/stats-dropped",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = qgpu_dropped_needed,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT64(stats.dropped, QGPUState),
        VMSTATE_END_OF_LIST()
    },
};

static const VMStateDescription vmstate_qgpu = {
    .name = "qgpu",
    .version_id = 1,
    .minimum_version_id = 1,
    .pre_load = qgpu_pre_load,
    .post_load = qgpu_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_PCI_DEVICE(parent_obj, QGPUState),
        VMSTATE_MSIX(parent_obj, QGPUState),
        VMSTATE_STRUCT(parent_obj.exp.aer_log, QGPUState, 0,
                       vmstate_pcie_aer_log, PCIEAERLog),
        VMSTATE_UINT32(scratch, QGPUState),
        VMSTATE_UINT32(user_scratch, QGPUState),
        VMSTATE_UINT64(ring_base, QGPUState),
        VMSTATE_UINT32(ring_size, QGPUState),
        VMSTATE_UINT32(ring_head, QGPUState),
        VMSTATE_UINT32(ring_tail, QGPUState),
        VMSTATE_UINT32(engine_ctrl, QGPUState),
        VMSTATE_BOOL(halted, QGPUState),
        VMSTATE_UINT32(int_status, QGPUState),
        VMSTATE_UINT32(int_mask, QGPUState),
        VMSTATE_UINT64(fence, QGPUState),
        VMSTATE_UINT32(dma_error, QGPUState),
        VMSTATE_UINT32(dma_error_index, QGPUState),
        VMSTATE_UINT32(access_error, QGPUState),
        VMSTATE_UINT32(access_error_addr, QGPUState),
        VMSTATE_BOOL(active, QGPUState),
        VMSTATE_UINT32(cur_index, QGPUState),
        VMSTATE_UINT32(cur_opcode, QGPUState),
        VMSTATE_UINT32(cur_flags, QGPUState),
        VMSTATE_UINT64(cur_src, QGPUState),
        VMSTATE_UINT64(cur_dst, QGPUState),
        VMSTATE_UINT64(cur_length, QGPUState),
        VMSTATE_UINT64(cur_fence_addr, QGPUState),
        VMSTATE_UINT64(cur_fence_value, QGPUState),
        VMSTATE_UINT32(cur_pattern, QGPUState),
        VMSTATE_UINT32(cur_sg_count, QGPUState),
        VMSTATE_UINT64(cur_done, QGPUState),
        VMSTATE_UINT64(stats.descriptors, QGPUState),
        VMSTATE_UINT64(stats.transfers, QGPUState),
        VMSTATE_UINT64(stats.bytes_to_vram, QGPUState),
        VMSTATE_UINT64(stats.bytes_from_vram, QGPUState),
        VMSTATE_UINT64(stats.bytes_vram_copy, QGPUState),
        VMSTATE_UINT64(stats.bytes_fill, QGPUState),
        VMSTATE_UINT64(stats.errors, QGPUState),
        VMSTATE_UINT64(stats.aborted, QGPUState),
        VMSTATE_UINT64(stats.last_fence, QGPUState),
        VMSTATE_UINT64(stats.interrupts, QGPUState),
        VMSTATE_UINT64(stats.doorbells, QGPUState),
        VMSTATE_UINT64(stats.access_errors, QGPUState),
        VMSTATE_UINT64(stats.engine_resets, QGPUState),
        VMSTATE_UINT64(stats.faults_injected, QGPUState),
        VMSTATE_END_OF_LIST()
    },
    .subsections = (const VMStateDescription * const []) {
        &vmstate_qgpu_dropped,
        &vmstate_qgpu_abort,
        NULL
    },
};

static const Property qgpu_properties[] = {
    DEFINE_PROP_SIZE("vram-size", QGPUState, vram_size, 0),
    DEFINE_PROP_LINK("memdev", QGPUState, hostmem, TYPE_MEMORY_BACKEND,
                     HostMemoryBackend *),
    DEFINE_PROP_BOOL("msi", QGPUState, msi, true),
    DEFINE_PROP_BOOL("msix", QGPUState, msix, true),
    DEFINE_PROP_BOOL("vram-prefetchable", QGPUState, vram_prefetchable, true),
    DEFINE_PROP_UINT32("trace-depth", QGPUState, trace_depth, 64),
};

static void qgpu_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);
    ResettableClass *rc = RESETTABLE_CLASS(klass);

    k->realize = qgpu_realize;
    k->exit = qgpu_exit;
    k->config_write = qgpu_config_write;
    k->vendor_id = QGPU_PCI_VENDOR_ID;
    k->device_id = QGPU_PCI_DEVICE_ID;
    k->revision = QGPU_PCI_REVISION;
    k->class_id = QGPU_PCI_CLASS;
    rc->phases.hold = qgpu_reset_hold;
    dc->desc = "qgpu GPU-like test device (VRAM BAR, DMA ring, MSI-X, AER)";
    dc->vmsd = &vmstate_qgpu;
    device_class_set_props(dc, qgpu_properties);
    object_class_property_set_description(klass, "vram-size",
        "VRAM (BAR2) size: a power of two from 1 MiB to 16 GiB; "
        "default 64 MiB, or the memdev's size");
    object_class_property_set_description(klass, "memdev",
        "memory backend holding VRAM, e.g. memory-backend-file,share=on "
        "to see VRAM from the host");
    object_class_property_set_description(klass, "msi",
        "offer an MSI capability");
    object_class_property_set_description(klass, "msix",
        "offer an MSI-X capability (BAR4)");
    object_class_property_set_description(klass, "vram-prefetchable",
        "mark BAR2 (VRAM) prefetchable; off: a driver must map it "
        "uncached, never write-combining");
    object_class_property_set_description(klass, "trace-depth",
        "entries kept in the dma-trace property (1-4096)");
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
}

static InterfaceInfo qgpu_interfaces[] = {
    { INTERFACE_PCIE_DEVICE },
    { }
};

static const TypeInfo qgpu_info = {
    .name = TYPE_QGPU,
    .parent = TYPE_PCI_DEVICE,
    .instance_size = sizeof(QGPUState),
    .instance_init = qgpu_instance_init,
    .class_init = qgpu_class_init,
    .interfaces = qgpu_interfaces,
};

static void qgpu_register_types(void)
{
    type_register_static(&qgpu_info);
}

type_init(qgpu_register_types)
