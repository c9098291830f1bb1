/*
 * qgpu: a small GPU-like PCIe device for driver testing -- internal header
 *
 * The device is split the way larger devices are (hw/nvme):
 *   qgpu.c         PCI device, QOM type and properties, realize/unrealize,
 *                  reset, power states, migration
 *   qgpu-regs.c    the register file (BAR0) and interrupt delivery
 *   qgpu-engine.c  the DMA engine: descriptor ring, guest DMA, completion
 *   qgpu-debug.c   statistics, the DMA trace and fault injection (x-*)
 * This header holds the state they share. The guest-visible ABI is
 * include/hw/misc/qgpu_hw.h, documented in the project's docs/qgpu-spec.md.
 *
 * Copyright (c) 2026 The qgpu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_QGPU_H
#define HW_MISC_QGPU_H

#include "qemu/units.h"
#include "qemu/timer.h"
#include "hw/pci/pci_device.h"
#include "system/hostmem.h"
#include "system/runstate.h"
#include "qom/object.h"
#include "hw/misc/qgpu_hw.h"

#define TYPE_QGPU "qgpu"
OBJECT_DECLARE_SIMPLE_TYPE(QGPUState, QGPU)

/*
 * Bytes the engine moves before yielding to the main loop: the default of
 * x-dma-slice, and its bounds.
 */
#define QGPU_DMA_SLICE_BYTES    (1 * MiB)
#define QGPU_DMA_SLICE_MIN      (4 * KiB)
#define QGPU_DMA_SLICE_MAX      (64 * MiB)
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
    uint64_t engine_busy_ns;    /* host time in engine runs; not migrated */
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
    uint64_t dma_slice;         /* x-dma-slice: bytes per engine run */
    uint32_t sg_max_entries;    /* x-sg-max-entries: SG list limit (SG_MAX_ENTRIES) */
    uint64_t dma_delay_ns;

    MemoryRegion mmio;
    MemoryRegion msix_bar;
    MemoryRegion vram_ram;      /* used when there is no memdev */
    MemoryRegion *vram;
    MemoryRegion vram_bar;      /* BAR2: a container holding *vram at 0 */
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
    char *fault_aer;                /* last AER error raised since reset */
    QGPUFault cur_fault;
};

/* qgpu.c */
uint8_t qgpu_power_state(PCIDevice *pdev);

/* qgpu-regs.c */
extern const MemoryRegionOps qgpu_mmio_ops;
void qgpu_raise(QGPUState *s, uint32_t causes);
void qgpu_update_irq(QGPUState *s, uint32_t fresh);

/* qgpu-engine.c */
void qgpu_abort_status_run(void *opaque);
uint32_t qgpu_check_guest_range(QGPUState *s, uint64_t addr, uint64_t len);
void qgpu_count_dropped(QGPUState *s);
void qgpu_delay_expired(void *opaque);
void qgpu_drop_inflight(QGPUState *s);
bool qgpu_engine_has_work(QGPUState *s);
void qgpu_engine_kick(QGPUState *s);
void qgpu_engine_reset(QGPUState *s);
void qgpu_engine_run(void *opaque);
void qgpu_engine_stop(QGPUState *s);
const char *qgpu_err_name(uint32_t err);
const char *qgpu_op_name(uint32_t op);
uint32_t qgpu_validate_desc(QGPUState *s, const struct qgpu_desc *d);
void qgpu_vm_state_change(void *opaque, bool running, RunState state);

/* qgpu-debug.c */
void qgpu_add_debug_properties(Object *obj);

#endif /* HW_MISC_QGPU_H */
