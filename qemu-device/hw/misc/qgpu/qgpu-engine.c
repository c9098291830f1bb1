/*
 * qgpu: the DMA engine
 *
 * Fetches descriptors from the ring in guest memory, moves data between
 * guest memory and VRAM in slices from a bottom half (never inside a
 * register access), and retires each descriptor with a status, a fence and
 * an interrupt. Everything that reaches a guest-chosen address may reset or
 * unplug the device: see QGPUState.epoch.
 *
 * Copyright (c) 2026 The qgpu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/log.h"
#include "qemu/main-loop.h"
#include "system/dma.h"
#include "qgpu.h"
#include "trace.h"

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

const char *qgpu_err_name(uint32_t err)
{
    return err <= QGPU_ERR_MAX ? qgpu_err_names[err] : "unknown";
}

const char *qgpu_op_name(uint32_t op)
{
    return op <= QGPU_OP_MAX ? qgpu_op_names[op] : "invalid";
}

/* Reset or unplugged by its own DMA since the engine run began? */
static bool qgpu_disturbed(QGPUState *s)
{
    return s->epoch != s->run_epoch;
}

/* Enabled, not halted, and a descriptor in flight or queued: it should run. */
bool qgpu_engine_has_work(QGPUState *s)
{
    return (s->engine_ctrl & QGPU_ENGINE_CTRL_ENABLE) && !s->halted &&
           (s->active || s->ring_head != s->ring_tail);
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
uint32_t qgpu_check_guest_range(QGPUState *s, uint64_t addr,
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

/*
 * What became of an access to a guest-chosen address. Every such access goes
 * through qgpu_guest_rw() or qgpu_guest_probe(): it may reach a device that
 * resets or unplugs us (DMA into config space, an IOMMU whose fault record
 * the guest aimed there), and the caller must then return at once, touching
 * nothing. The result must be used, so no call site can forget to look.
 */
typedef enum QGPUAccess {
    QGPU_ACCESS_OK,
    QGPU_ACCESS_FAILED,     /* *err says why; the device is as it was */
    QGPU_ACCESS_DISTURBED,  /* the access reset or unplugged us */
} QGPUAccess;

/*
 * Move @len bytes between @buf and guest address @addr (@dir as for DMA), or
 * with @buf NULL only ask whether the access would succeed. The range is
 * checked again each time: a BAR may have moved onto it since the fetch.
 */
static QGPUAccess G_GNUC_WARN_UNUSED_RESULT
qgpu_guest_access(QGPUState *s, dma_addr_t addr, void *buf, dma_addr_t len,
                  DMADirection dir, uint32_t *err)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint32_t range_err = qgpu_check_guest_range(s, addr, len);
    bool ok;

    if (range_err) {
        *err = range_err;
        return QGPU_ACCESS_FAILED;
    }
    if (buf) {
        ok = pci_dma_rw(pdev, addr, buf, len, dir,
                        MEMTXATTRS_UNSPECIFIED) == MEMTX_OK;
    } else {
        /* A translation: behind an IOMMU it may record a fault. */
        ok = dma_memory_valid(pci_get_address_space(pdev), addr, len, dir,
                              MEMTXATTRS_UNSPECIFIED);
    }
    if (qgpu_disturbed(s)) {
        return QGPU_ACCESS_DISTURBED;
    }
    if (!ok) {
        *err = dir == DMA_DIRECTION_TO_DEVICE ? QGPU_ERR_DMA_READ
                                              : QGPU_ERR_DMA_WRITE;
        return QGPU_ACCESS_FAILED;
    }
    return QGPU_ACCESS_OK;
}

static QGPUAccess G_GNUC_WARN_UNUSED_RESULT
qgpu_guest_rw(QGPUState *s, dma_addr_t addr, void *buf, dma_addr_t len,
              DMADirection dir, uint32_t *err)
{
    return qgpu_guest_access(s, addr, buf, len, dir, err);
}

static QGPUAccess G_GNUC_WARN_UNUSED_RESULT
qgpu_guest_probe(QGPUState *s, dma_addr_t addr, dma_addr_t len,
                 DMADirection dir, uint32_t *err)
{
    return qgpu_guest_access(s, addr, NULL, len, dir, err);
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

    if (s->cur_sg_count == 0 || s->cur_sg_count > s->sg_max_entries) {
        return QGPU_ERR_SG_COUNT;
    }
    list_len = (uint64_t)s->cur_sg_count * QGPU_SG_ENTRY_SIZE;
    ents = g_new(struct qgpu_sg_entry, s->cur_sg_count);
    switch (qgpu_guest_rw(s, base, ents, list_len, DMA_DIRECTION_TO_DEVICE,
                          &err)) {
    case QGPU_ACCESS_DISTURBED:
        return QGPU_ERR_NONE;   /* the caller checks qgpu_disturbed() */
    case QGPU_ACCESS_FAILED:
        qemu_log_mask(LOG_GUEST_ERROR,
                      "qgpu: desc %u: SG list at 0x%" PRIx64 " unreadable"
                      " (%s)\n", s->cur_index, base, qgpu_err_name(err));
        return err;
    case QGPU_ACCESS_OK:
        break;
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
uint32_t qgpu_validate_desc(QGPUState *s, const struct qgpu_desc *d)
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
        (!s->cur_sg_count || s->cur_sg_count > s->sg_max_entries) && !d) {
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
static QGPUAccess qgpu_write_status_at(QGPUState *s, uint32_t index,
                                       dma_addr_t addr, uint32_t status)
{
    uint8_t le[sizeof(uint32_t)];
    uint32_t err;
    QGPUAccess done;

    stl_le_p(le, status);
    done = qgpu_guest_rw(s, addr, le, sizeof(le), DMA_DIRECTION_FROM_DEVICE,
                         &err);
    if (done == QGPU_ACCESS_FAILED) {
        qemu_log_mask(LOG_GUEST_ERROR,
                      "qgpu: desc %u: status write-back to 0x%" PRIx64
                      " failed (%s)\n", index, addr, qgpu_err_name(err));
    }
    return done;
}

/* Write the status word of the descriptor in flight back to the ring. */
static QGPUAccess G_GNUC_WARN_UNUSED_RESULT
qgpu_write_status(QGPUState *s, uint32_t status)
{
    return qgpu_write_status_at(s, s->cur_index,
                                qgpu_desc_addr(s, s->cur_index) +
                                QGPU_DESC_OFF_STATUS, status);
}

void qgpu_drop_inflight(QGPUState *s)
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
    bool fence = s->cur_flags & QGPU_DESC_F_FENCE;
    uint32_t causes = 0, ferr = QGPU_ERR_NONE;
    QGPUAccess done;

    if (fence) {
        /* Checked again: the BARs or an IOMMU mapping may have changed. */
        done = qgpu_guest_probe(s, s->cur_fence_addr, sizeof(uint64_t),
                                DMA_DIRECTION_FROM_DEVICE, &ferr);
        if (done == QGPU_ACCESS_DISTURBED) {
            return;
        }
        if (done == QGPU_ACCESS_FAILED) {
            ferr = ferr == QGPU_ERR_DMA_WRITE ? QGPU_ERR_FENCE_WRITE : ferr;
            qemu_log_mask(LOG_GUEST_ERROR, "qgpu: desc %u: fence address 0x%"
                          PRIx64 " not writable (%s)\n", s->cur_index,
                          s->cur_fence_addr, qgpu_err_name(ferr));
            qgpu_trace_record(s, s->cur_fence_addr, 0, sizeof(uint64_t), ferr);
            fence = false;
            err = err ? err : ferr;
        }
    }

    /* Status first, then the fence: a driver that sees the fence sees both. */
    done = qgpu_write_status(s, QGPU_DESC_STATUS_DONE | err);
    if (done == QGPU_ACCESS_DISTURBED) {
        return;
    }
    if (done == QGPU_ACCESS_FAILED && !err) {
        err = QGPU_ERR_DMA_WRITE;
    }
    if (fence) {
        uint8_t le[sizeof(uint64_t)];

        trace_qgpu_fence(s->cur_index, s->cur_fence_addr, s->cur_fence_value);
        stq_le_p(le, s->cur_fence_value);
        done = qgpu_guest_rw(s, s->cur_fence_addr, le, sizeof(le),
                             DMA_DIRECTION_FROM_DEVICE, &ferr);
        if (done == QGPU_ACCESS_DISTURBED) {
            return;
        }
        if (done == QGPU_ACCESS_OK) {
            s->fence = s->cur_fence_value;
            s->stats.last_fence = s->fence;
        } else {
            /* Lost a race with an IOMMU unmap: correct the status. */
            qemu_log_mask(LOG_GUEST_ERROR,
                          "qgpu: desc %u: fence write to 0x%" PRIx64
                          " failed (%s)\n", s->cur_index, s->cur_fence_addr,
                          qgpu_err_name(ferr));
            if (!err) {
                err = QGPU_ERR_FENCE_WRITE;
                if (qgpu_write_status(s, QGPU_DESC_STATUS_DONE | err) ==
                    QGPU_ACCESS_DISTURBED) {
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
    uint32_t index = s->ring_head;
    dma_addr_t addr = qgpu_desc_addr(s, index);
    struct qgpu_desc d;
    uint32_t err;

    switch (qgpu_guest_rw(s, addr, &d, sizeof(d), DMA_DIRECTION_TO_DEVICE,
                          &err)) {
    case QGPU_ACCESS_DISTURBED:
        return false;
    case QGPU_ACCESS_FAILED:
        qgpu_halt(s, index, err == QGPU_ERR_DMA_READ ? QGPU_ERR_DESC_FETCH
                                                     : err);
        return false;
    case QGPU_ACCESS_OK:
        break;
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
            QGPUAccess done;

            done = qgpu_guest_rw(s, ga, vp, n,
                                 to_vram ? DMA_DIRECTION_TO_DEVICE
                                         : DMA_DIRECTION_FROM_DEVICE, err);
            if (to_vram && s->vram) {
                /*
                 * Before the check below: a read that reset us still wrote
                 * @vp, and VRAM survives a reset, so a migration must resend
                 * it. After an unplug (s->vram gone) nothing migrates it.
                 */
                memory_region_set_dirty(s->vram, voff, n);
            }
            if (done == QGPU_ACCESS_DISTURBED) {
                return moved;   /* s->segs may be gone */
            }
            if (done == QGPU_ACCESS_FAILED) {
                qemu_log_mask(LOG_GUEST_ERROR,
                              "qgpu: desc %u: DMA %s guest 0x%" PRIx64
                              "+0x%" PRIx64 " failed (%s)\n", s->cur_index,
                              to_vram ? "read from" : "write to", ga, n,
                              qgpu_err_name(*err));
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

/* Flip the byte at @off of the destination of the descriptor in flight. */
static QGPUAccess G_GNUC_WARN_UNUSED_RESULT
qgpu_corrupt_byte(QGPUState *s, uint64_t off)
{
    uint64_t start = 0;
    uint32_t err;
    uint8_t byte;

    if (s->cur_opcode == QGPU_OP_COPY_TO_VRAM) {
        s->vram_ptr[s->cur_dst + off] ^= 0xff;
        memory_region_set_dirty(s->vram, s->cur_dst + off, 1);
        return QGPU_ACCESS_OK;
    }
    for (uint32_t i = 0; i < s->nsegs; i++) {
        if (off < start + s->segs[i].len) {
            dma_addr_t ga = s->segs[i].addr + (off - start);
            QGPUAccess done = qgpu_guest_rw(s, ga, &byte, 1,
                                            DMA_DIRECTION_TO_DEVICE, &err);

            if (done != QGPU_ACCESS_OK) {
                return done;    /* a failed fault injection is no error */
            }
            byte ^= 0xff;
            return qgpu_guest_rw(s, ga, &byte, 1, DMA_DIRECTION_FROM_DEVICE,
                                 &err);
        }
        start += s->segs[i].len;
    }
    return QGPU_ACCESS_OK;
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
        if (qgpu_corrupt_byte(s, s->cur_length / 2) ==
            QGPU_ACCESS_DISTURBED) {
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
    /* The last step: the callers look for a disturbance themselves. */
    qgpu_write_status_at(s, s->abort_index, s->abort_status_addr,
                         QGPU_DESC_STATUS_DONE | QGPU_ERR_ABORTED);
}

/*
 * The delay timer runs the engine under the device's re-entrancy guard, as
 * the bottom half does (see aio_bh_call()): DMA that reaches our own MMIO
 * is then refused by the memory core instead of recursing into the device.
 */
void qgpu_delay_expired(void *opaque)
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
 * MMIO access. Each run moves at most x-dma-slice bytes and retires at most
 * QGPU_DMA_SLICE_DESCS descriptors, then yields to the main loop. After
 * anything that reaches guest-chosen addresses it checks qgpu_disturbed().
 */
static void qgpu_engine_work(QGPUState *s)
{
    uint64_t budget = s->dma_slice;
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

/*
 * Both ways into the engine (bottom half, delay timer) come here, so
 * stat-engine-busy-ns is the host time the engine held the main loop: what
 * a benchmark divides the bytes by to see the engine without the time its
 * driver (or qtest) took to notice it was done. A nested call (see
 * qgpu_run_disturbable()) is inside the outer run's time already.
 */
void qgpu_engine_run(void *opaque)
{
    QGPUState *s = opaque;
    bool outer = !s->in_run;
    int64_t start = outer ? qemu_clock_get_ns(QEMU_CLOCK_REALTIME) : 0;

    qgpu_run_disturbable(s, qgpu_engine_work, qgpu_engine_retry);
    if (outer) {
        /* Still ours after an unplug: qgpu_run_disturbable() defers the unref. */
        s->stats.engine_busy_ns += qemu_clock_get_ns(QEMU_CLOCK_REALTIME) - start;
    }
}

void qgpu_abort_status_run(void *opaque)
{
    qgpu_run_disturbable(opaque, qgpu_write_abort_status,
                         qgpu_abort_status_retry);
}

void qgpu_engine_kick(QGPUState *s)
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
void qgpu_vm_state_change(void *opaque, bool running, RunState state)
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

void qgpu_engine_stop(QGPUState *s)
{
    qemu_bh_cancel(s->bh);
    timer_del(s->delay_timer);
}

/*
 * Count the descriptors a reset discards without starting them: HEAD..TAIL-1,
 * less the one in flight (at HEAD). With aborted and retired descriptors,
 * this lets a driver account for every descriptor it wrote.
 */
void qgpu_count_dropped(QGPUState *s)
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
void qgpu_engine_reset(QGPUState *s)
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

