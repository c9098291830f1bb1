/*
 * qgpu: a small GPU-like PCIe device for driver testing
 *
 * BAR0 holds registers, BAR2 is RAM-backed VRAM (optionally on a host memory
 * backend), BAR4 the MSI-X table. A DMA engine executes 64-byte descriptors
 * from a ring in guest memory: copies between guest memory and VRAM (with
 * optional scatter-gather lists), VRAM to VRAM, and fills. Completion writes
 * a status word and optionally a fence and raises an interrupt.
 *
 * This file: the PCI device and its QOM type, realize and unrealize, reset,
 * power states and migration. See qgpu.h for the other files.
 *
 * Copyright (c) 2026 The qgpu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/log.h"
#include "qapi/error.h"
#include "hw/pci/pcie.h"
#include "hw/pci/pcie_aer.h"
#include "hw/pci/msi.h"
#include "hw/pci/msix.h"
#include "hw/qdev-properties.h"
#include "migration/vmstate.h"
#include "system/dma.h"
#include "qgpu.h"
#include "trace.h"

QEMU_BUILD_BUG_ON(sizeof(struct qgpu_desc) != QGPU_DESC_SIZE);
QEMU_BUILD_BUG_ON(offsetof(struct qgpu_desc, status) != QGPU_DESC_OFF_STATUS);
QEMU_BUILD_BUG_ON(sizeof(struct qgpu_sg_entry) != QGPU_SG_ENTRY_SIZE);

/* The power state in PMCSR: 0 (D0) .. 3 (D3hot). */
uint8_t qgpu_power_state(PCIDevice *pdev)
{
    return pci_get_word(pdev->config + QGPU_CAP_OFF_PM + PCI_PM_CTRL) &
           PCI_PM_CTRL_STATE_MASK;
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
        /*
         * Out of our container: a memdev's region outlives us (and a new
         * device may take it), and our own region, while in it, holds a
         * reference to us.
         */
        if (s->vram->container == &s->vram_bar) {
            memory_region_del_subregion(&s->vram_bar, s->vram);
        }
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
    if (s->dma_slice < QGPU_DMA_SLICE_MIN ||
        s->dma_slice > QGPU_DMA_SLICE_MAX) {
        error_setg(errp, "x-dma-slice must be between %" PRIu64 " and %"
                   PRIu64 " bytes, not %" PRIu64, (uint64_t)QGPU_DMA_SLICE_MIN,
                   (uint64_t)QGPU_DMA_SLICE_MAX, s->dma_slice);
        return;
    }
    if (!s->sg_max_entries || s->sg_max_entries > QGPU_SG_MAX_ENTRIES) {
        error_setg(errp, "x-sg-max-entries must be between 1 and %d, not %u",
                   QGPU_SG_MAX_ENTRIES, s->sg_max_entries);
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
     * VRAM sits in a container, and the container is the BAR: the RAM
     * block's address (its offset in its parent) is then 0 wherever the
     * guest puts the BAR. A migration with x-ignore-shared (VM templating)
     * checks that a shared RAM block has the source's address before the
     * destination has loaded the BAR; with VRAM itself as the BAR, that was
     * the BAR's address on one side and 0 on the other.
     */
    memory_region_init(&s->vram_bar, OBJECT(s), "qgpu.vram-bar", s->vram_size);
    memory_region_add_subregion(&s->vram_bar, 0, s->vram);
    /*
     * VRAM is plain memory, so it is prefetchable; vram-prefetchable=off
     * shows drivers a BAR they must not map write-combining.
     */
    pci_register_bar(pdev, QGPU_BAR_VRAM, PCI_BASE_ADDRESS_SPACE_MEMORY |
                     PCI_BASE_ADDRESS_MEM_TYPE_64 |
                     (s->vram_prefetchable ? PCI_BASE_ADDRESS_MEM_PREFETCH : 0),
                     &s->vram_bar);

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
    /* A record of the last AER error raised since reset, not a setting. */
    g_free(s->fault_aer);
    s->fault_aer = NULL;
    s->int_status = 0;
    s->int_mask = 0;
    s->fence = 0;
    s->dma_error = 0;
    s->dma_error_index = 0;
    s->access_error = 0;
    s->access_error_addr = 0;
}

/*
 * What a stream without the optional subsections leaves as it is; and what
 * is not migrated but records this QEMU's engine runs, the engine's busy
 * time and the DMA trace: a state loaded into a QEMU whose engine ran
 * (loadvm, x-revert-to-template) starts them anew, as a migration's
 * destination does.
 */
static int qgpu_pre_load(void *opaque)
{
    QGPUState *s = opaque;

    s->abort_pending = false;
    s->stats.dropped = 0;
    s->stats.engine_busy_ns = 0;
    s->trace_seq = 0;
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
    DEFINE_PROP_SIZE("x-dma-slice", QGPUState, dma_slice, QGPU_DMA_SLICE_BYTES),
    DEFINE_PROP_UINT32("x-sg-max-entries", QGPUState, sg_max_entries,
                       QGPU_SG_MAX_ENTRIES),
};

static void qgpu_instance_init(Object *obj)
{
    qgpu_add_debug_properties(obj);
}

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
    object_class_property_set_description(klass, "x-dma-slice",
        "bytes the DMA engine moves per run before it yields to the main "
        "loop (4 KiB-64 MiB, default 1 MiB); the fuzzer's configurations "
        "use less, as guest memory there is MMIO");
    object_class_property_set_description(klass, "x-sg-max-entries",
        "entries an SG list may have (1-4096, default 4096), read by the "
        "driver from SG_MAX_ENTRIES; the fuzzer's configurations use less, "
        "as the engine reads each list from the fuzzer's MMIO memory 8 bytes "
        "at a time");
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

