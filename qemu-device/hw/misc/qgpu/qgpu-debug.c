/*
 * qgpu: statistics, the DMA trace and fault injection
 *
 * The QOM properties tests read and set at run time: stat-*, dma-trace,
 * x-dma-delay-ns and the x-fault-* knobs (docs/qgpu-spec.md, section 9).
 *
 * Copyright (c) 2026 The qgpu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "hw/pci/pcie_aer.h"
#include "qgpu.h"
#include "trace.h"

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

/* The statistics, the DMA trace and the x- knobs, as QOM properties. */
void qgpu_add_debug_properties(Object *obj)
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
        QGPU_STAT("engine-busy-ns", engine_busy_ns,
                  "host nanoseconds the engine ran (held the main loop); "
                  "this process only: not migrated"),
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
