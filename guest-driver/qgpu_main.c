// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: Linux driver for the qgpu virtual PCIe GPU-like device.
 *
 * One misc device /dev/qgpuN per PCI function. The device ABI is
 * qemu-device/include/hw/misc/qgpu_hw.h, the user ABI include/uapi/qgpu.h.
 *
 * Lifetime: struct qgpu_device is reference counted (probe, open files,
 * VMAs, buffer objects). Remove marks it dead, stops the engine, waits for
 * every ioctl/mmap/fault in progress (SRCU), zaps all user mappings and
 * frees the hardware resources; what user space still holds then fails
 * with -ENODEV (ioctls) or SIGBUS (mappings).
 */

#include <linux/debugfs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/overflow.h>
#include <linux/pci.h>
#include <linux/sched/signal.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/unaligned.h>

#include "qgpu_drv.h"

static unsigned int ring_entries = 256;
module_param(ring_entries, uint, 0444);
MODULE_PARM_DESC(ring_entries, "Descriptors in the ring (power of two, 2-4096)");

static unsigned int bo_limit_mb = 256;
module_param(bo_limit_mb, uint, 0444);
MODULE_PARM_DESC(bo_limit_mb, "DMA-coherent buffer-object memory per device, MiB");

static unsigned int dma_bits = 64;
module_param(dma_bits, uint, 0444);
MODULE_PARM_DESC(dma_bits, "DMA mask to try first (32-64; 32 is the fallback)");

static DEFINE_IDA(qgpu_ida);
static struct dentry *qgpu_debugfs_root;

/* Per-vector interrupt context. */
struct qgpu_vec {
	struct qgpu_device *qdev;
	u32 causes;
	char name[32];
};

static void qgpu_device_release(struct kref *ref)
{
	struct qgpu_device *qdev = container_of(ref, struct qgpu_device, ref);

	qgpu_fs_inode_free(qdev->inode);
	if (qdev->id >= 0)
		ida_free(&qgpu_ida, qdev->id);
	cleanup_srcu_struct(&qdev->srcu);
	pci_dev_put(qdev->pdev);
	kfree(qdev);
}

void qgpu_device_put(struct qgpu_device *qdev)
{
	kref_put(&qdev->ref, qgpu_device_release);
}

/* ---- interrupts ---------------------------------------------------------- */

static void qgpu_handle_causes(struct qgpu_device *qdev, u32 causes)
{
	if (causes & QGPU_INT_DMA_DONE) {
		qgpu_stat_inc(qdev, QGPU_STAT_IRQ_DMA);
		wake_up_all(&qdev->fence_wq);
		if (!READ_ONCE(qdev->dead))
			queue_work(system_wq, &qdev->retire_work);
	}
	if (causes & (QGPU_INT_DMA_ERROR | QGPU_INT_ENGINE_HALT)) {
		u32 err = qgpu_rd(qdev, QGPU_REG_DMA_ERROR);

		qgpu_stat_inc(qdev, QGPU_STAT_IRQ_ERROR);
		atomic64_set(&qdev->stats[QGPU_STAT_LAST_ERROR], err);
		dev_dbg_ratelimited(qdev->dev, "DMA error %u at ring index %u\n",
				    err, qgpu_rd(qdev, QGPU_REG_DMA_ERROR_INDEX));
		qgpu_wr(qdev, QGPU_REG_DMA_ERROR, 0);
		if ((causes & QGPU_INT_ENGINE_HALT) && !READ_ONCE(qdev->dead)) {
			WRITE_ONCE(qdev->halted, true);
			queue_work(system_wq, &qdev->reset_work);
		}
		wake_up_all(&qdev->fence_wq);
		if (!READ_ONCE(qdev->dead))
			queue_work(system_wq, &qdev->retire_work);
	}
	if (causes & QGPU_INT_SOFT) {
		qgpu_stat_inc(qdev, QGPU_STAT_IRQ_SOFT);
		wake_up_all(&qdev->soft_wq);
	}
}

/* True if BAR0 reads all ones: the device is gone (or looks it). */
bool qgpu_hw_lost(struct qgpu_device *qdev)
{
	return qgpu_rd(qdev, QGPU_REG_ID) == ~0U;
}

/*
 * The device stopped answering (or its PCIe channel failed for good):
 * disable it from process context, see qgpu_lost_work(). Safe in any
 * context.
 */
void qgpu_mark_lost(struct qgpu_device *qdev, const char *why)
{
	if (READ_ONCE(qdev->dead) || xchg(&qdev->lost, true))
		return;
	dev_err(qdev->dev, "%s: device not responding (%s); disabling it\n",
		qdev->name, why);
	qgpu_stat_inc(qdev, QGPU_STAT_DEVICE_LOST);
	wake_up_all(&qdev->fence_wq);
	wake_up_all(&qdev->soft_wq);
	queue_work(system_wq, &qdev->lost_work);
}

/*
 * Disable a lost device: no DMA (bus mastering off, the engine reset if it
 * still listens), every job failed and its pages released, every user
 * mapping zapped (later accesses get SIGBUS); ioctls fail with -ENODEV.
 * User space learns it from the errors, the "state" attribute and a
 * change uevent. Only re-probing (remove and rescan, or reloading the
 * driver) brings the device back.
 */
void qgpu_lost_work(struct work_struct *work)
{
	struct qgpu_device *qdev = container_of(work, struct qgpu_device,
						lost_work);
	char *envp[] = { "QGPU_STATE=failed", NULL };

	if (READ_ONCE(qdev->dead) || !qdev->inode)
		return;
	pci_clear_master(qdev->pdev);
	qgpu_ring_shutdown(qdev);
	cancel_delayed_work_sync(&qdev->watchdog);
	/* Faults and mmaps that saw the device alive finish first, then zap. */
	qgpu_zap_user_mappings(qdev);
	if (qdev->misc_registered)
		kobject_uevent_env(&qdev->misc.this_device->kobj, KOBJ_CHANGE,
				   envp);
}

/*
 * Read and acknowledge the causes in @mask. INT_STATUS reading all ones
 * means the device is gone: nothing is acknowledged then.
 */
static u32 qgpu_take_causes(struct qgpu_device *qdev, u32 mask)
{
	unsigned long flags;
	u32 st;

	spin_lock_irqsave(&qdev->irq_lock, flags);
	st = qgpu_rd(qdev, QGPU_REG_INT_STATUS);
	if (st == ~0U) {
		spin_unlock_irqrestore(&qdev->irq_lock, flags);
		qgpu_mark_lost(qdev, "interrupt status reads all ones");
		return 0;
	}
	st &= mask;
	/* Ack first: a cause that recurs afterwards sends a new message. */
	if (st)
		qgpu_wr(qdev, QGPU_REG_INT_STATUS, st);
	spin_unlock_irqrestore(&qdev->irq_lock, flags);
	return st;
}

/*
 * A completion was found by polling. If its interrupt was lost, the cause
 * is still set in INT_STATUS and, the interrupt being an edge, no further
 * message comes for it until it is acknowledged: do that here.
 */
void qgpu_irq_resync(struct qgpu_device *qdev)
{
	u32 causes;

	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost) ||
	    READ_ONCE(qdev->frozen))
		return;
	causes = qgpu_take_causes(qdev, QGPU_INT_ALL);
	if (causes) {
		qgpu_stat_inc(qdev, QGPU_STAT_IRQ_RESYNC);
		qgpu_handle_causes(qdev, causes);
	}
}

/* MSI-X: one vector per cause group; MSI and INTx: vec->causes is all. */
static irqreturn_t qgpu_irq(int irq, void *data)
{
	struct qgpu_vec *vec = data;
	struct qgpu_device *qdev = vec->qdev;
	u32 causes;

	/* A frozen link may read all ones: that is not a lost device. */
	if (READ_ONCE(qdev->frozen) || READ_ONCE(qdev->lost))
		return qdev->irq_mode == QGPU_IRQ_MODE_INTX ? IRQ_NONE :
							      IRQ_HANDLED;
	causes = qgpu_take_causes(qdev, vec->causes);
	if (!causes) {
		if (qdev->irq_mode == QGPU_IRQ_MODE_INTX)
			return IRQ_NONE;
		qgpu_stat_inc(qdev, QGPU_STAT_IRQ_SPURIOUS);
		return IRQ_HANDLED;
	}
	qgpu_handle_causes(qdev, causes);
	return IRQ_HANDLED;
}

static void qgpu_free_irqs(struct qgpu_device *qdev, struct qgpu_vec *vecs)
{
	while (qdev->irqs_requested > 0) {
		int i = --qdev->irqs_requested;

		free_irq(pci_irq_vector(qdev->pdev, i), &vecs[i]);
	}
}

static int qgpu_setup_irqs(struct qgpu_device *qdev, struct qgpu_vec *vecs)
{
	static const u32 msix_causes[QGPU_MSIX_VECTORS] = {
		[QGPU_MSIX_VEC_DMA] = QGPU_INT_DMA_DONE,
		[QGPU_MSIX_VEC_ERROR] = QGPU_INT_DMA_ERROR | QGPU_INT_ENGINE_HALT,
		[QGPU_MSIX_VEC_MISC] = QGPU_INT_SOFT,
	};
	static const char *const msix_names[QGPU_MSIX_VECTORS] = {
		"dma", "error", "misc",
	};
	struct pci_dev *pdev = qdev->pdev;
	int nvec, i, ret;

	/* Mask everything until the ring is programmed. */
	qgpu_wr(qdev, QGPU_REG_INT_MASK, 0);
	qgpu_wr(qdev, QGPU_REG_INT_STATUS, QGPU_INT_ALL);

	nvec = qgpu_alloc_irq_vectors(pdev, QGPU_MSIX_VECTORS, QGPU_MSIX_VECTORS,
				      PCI_IRQ_MSIX);
	if (nvec == QGPU_MSIX_VECTORS) {
		qdev->irq_mode = QGPU_IRQ_MODE_MSIX;
	} else {
		nvec = qgpu_alloc_irq_vectors(pdev, 1, 1,
					      PCI_IRQ_MSI | PCI_IRQ_INTX);
		if (nvec < 0)
			return nvec;
		qdev->irq_mode = pdev->msi_enabled ? QGPU_IRQ_MODE_MSI :
						     QGPU_IRQ_MODE_INTX;
	}
	qdev->nvec = nvec;

	for (i = 0; i < nvec; i++) {
		vecs[i].qdev = qdev;
		if (qdev->irq_mode == QGPU_IRQ_MODE_MSIX) {
			vecs[i].causes = msix_causes[i];
			snprintf(vecs[i].name, sizeof(vecs[i].name), "%s-%s",
				 qdev->name, msix_names[i]);
		} else {
			vecs[i].causes = QGPU_INT_ALL;
			snprintf(vecs[i].name, sizeof(vecs[i].name), "%s",
				 qdev->name);
		}
		ret = qgpu_request_irq(pci_irq_vector(pdev, i), qgpu_irq,
				       qdev->irq_mode == QGPU_IRQ_MODE_INTX ?
				       IRQF_SHARED : 0, vecs[i].name, &vecs[i]);
		if (ret) {
			qgpu_free_irqs(qdev, vecs);
			return ret;
		}
		qdev->irqs_requested++;
	}
	return 0;
}

/* ---- statistics (sysfs) and state (debugfs) -------------------------------- */

static ssize_t qgpu_stat_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	struct miscdevice *misc = dev_get_drvdata(dev);
	struct qgpu_device *qdev = container_of(misc, struct qgpu_device, misc);
	struct dev_ext_attribute *ea = container_of(attr, struct dev_ext_attribute,
						    attr);

	return sysfs_emit(buf, "%lld\n",
			  atomic64_read(&qdev->stats[(uintptr_t)ea->var]));
}

#define QGPU_STAT_ATTR(_name, _idx)					\
	static struct dev_ext_attribute qgpu_attr_##_name = {		\
		__ATTR(_name, 0444, qgpu_stat_show, NULL),		\
		(void *)(uintptr_t)(_idx)				\
	}

QGPU_STAT_ATTR(jobs, QGPU_STAT_JOBS);
QGPU_STAT_ATTR(descriptors, QGPU_STAT_DESCRIPTORS);
QGPU_STAT_ATTR(sg_descriptors, QGPU_STAT_SG_DESCRIPTORS);
QGPU_STAT_ATTR(sg_entries, QGPU_STAT_SG_ENTRIES);
QGPU_STAT_ATTR(single_page_maps, QGPU_STAT_SINGLE_PAGE_MAPS);
QGPU_STAT_ATTR(bytes_to_vram, QGPU_STAT_BYTES_TO_VRAM);
QGPU_STAT_ATTR(bytes_from_vram, QGPU_STAT_BYTES_FROM_VRAM);
QGPU_STAT_ATTR(hw_errors, QGPU_STAT_HW_ERRORS);
QGPU_STAT_ATTR(irq_dma, QGPU_STAT_IRQ_DMA);
QGPU_STAT_ATTR(irq_error, QGPU_STAT_IRQ_ERROR);
QGPU_STAT_ATTR(irq_soft, QGPU_STAT_IRQ_SOFT);
QGPU_STAT_ATTR(irq_spurious, QGPU_STAT_IRQ_SPURIOUS);
QGPU_STAT_ATTR(poll_completions, QGPU_STAT_POLL_COMPLETIONS);
QGPU_STAT_ATTR(timeouts, QGPU_STAT_TIMEOUTS);
QGPU_STAT_ATTR(engine_resets, QGPU_STAT_ENGINE_RESETS);
QGPU_STAT_ATTR(pinned_pages, QGPU_STAT_PINNED_PAGES);
QGPU_STAT_ATTR(vma_vram, QGPU_STAT_VMA_VRAM);
QGPU_STAT_ATTR(vma_vram_lazy, QGPU_STAT_VMA_VRAM_LAZY);
QGPU_STAT_ATTR(vma_regs, QGPU_STAT_VMA_REGS);
QGPU_STAT_ATTR(vma_bo, QGPU_STAT_VMA_BO);
QGPU_STAT_ATTR(lazy_faults, QGPU_STAT_LAZY_FAULTS);
QGPU_STAT_ATTR(bos, QGPU_STAT_BOS);
QGPU_STAT_ATTR(bo_bytes, QGPU_STAT_BO_BYTES);
QGPU_STAT_ATTR(last_error, QGPU_STAT_LAST_ERROR);
QGPU_STAT_ATTR(irq_resync, QGPU_STAT_IRQ_RESYNC);
QGPU_STAT_ATTR(watchdog_resets, QGPU_STAT_WATCHDOG_RESETS);
QGPU_STAT_ATTR(pci_errors, QGPU_STAT_PCI_ERRORS);
QGPU_STAT_ATTR(pci_recoveries, QGPU_STAT_PCI_RECOVERIES);
QGPU_STAT_ATTR(device_lost, QGPU_STAT_DEVICE_LOST);
QGPU_STAT_ATTR(bar_refaults, QGPU_STAT_BAR_REFAULTS);

static struct attribute *qgpu_stat_attrs[] = {
	&qgpu_attr_jobs.attr.attr,
	&qgpu_attr_descriptors.attr.attr,
	&qgpu_attr_sg_descriptors.attr.attr,
	&qgpu_attr_sg_entries.attr.attr,
	&qgpu_attr_single_page_maps.attr.attr,
	&qgpu_attr_bytes_to_vram.attr.attr,
	&qgpu_attr_bytes_from_vram.attr.attr,
	&qgpu_attr_hw_errors.attr.attr,
	&qgpu_attr_irq_dma.attr.attr,
	&qgpu_attr_irq_error.attr.attr,
	&qgpu_attr_irq_soft.attr.attr,
	&qgpu_attr_irq_spurious.attr.attr,
	&qgpu_attr_poll_completions.attr.attr,
	&qgpu_attr_timeouts.attr.attr,
	&qgpu_attr_engine_resets.attr.attr,
	&qgpu_attr_pinned_pages.attr.attr,
	&qgpu_attr_vma_vram.attr.attr,
	&qgpu_attr_vma_vram_lazy.attr.attr,
	&qgpu_attr_vma_regs.attr.attr,
	&qgpu_attr_vma_bo.attr.attr,
	&qgpu_attr_lazy_faults.attr.attr,
	&qgpu_attr_bos.attr.attr,
	&qgpu_attr_bo_bytes.attr.attr,
	&qgpu_attr_last_error.attr.attr,
	&qgpu_attr_irq_resync.attr.attr,
	&qgpu_attr_watchdog_resets.attr.attr,
	&qgpu_attr_pci_errors.attr.attr,
	&qgpu_attr_pci_recoveries.attr.attr,
	&qgpu_attr_device_lost.attr.attr,
	&qgpu_attr_bar_refaults.attr.attr,
	NULL
};

static const struct attribute_group qgpu_stat_group = {
	.name = "stats",
	.attrs = qgpu_stat_attrs,
};

/* "running", "recovering" (PCIe error recovery) or "failed" (disabled). */
static ssize_t state_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	struct miscdevice *misc = dev_get_drvdata(dev);
	struct qgpu_device *qdev = container_of(misc, struct qgpu_device, misc);

	if (READ_ONCE(qdev->lost) || READ_ONCE(qdev->dead))
		return sysfs_emit(buf, "failed\n");
	return sysfs_emit(buf, "%s\n", READ_ONCE(qdev->frozen) ? "recovering" :
							      "running");
}
static DEVICE_ATTR_RO(state);

static struct attribute *qgpu_dev_attrs[] = {
	&dev_attr_state.attr,
	NULL
};

static const struct attribute_group qgpu_dev_group = {
	.attrs = qgpu_dev_attrs,
};

static const struct attribute_group *qgpu_misc_groups[] = {
	&qgpu_stat_group,
	&qgpu_dev_group,
	NULL
};

static int qgpu_state_show(struct seq_file *m, void *unused)
{
	struct qgpu_device *qdev = m->private;
	static const struct {
		const char *name;
		u32 reg;
	} regs[] = {
		{ "ring_head", QGPU_REG_RING_HEAD },
		{ "ring_tail", QGPU_REG_RING_TAIL },
		{ "engine_status", QGPU_REG_ENGINE_STATUS },
		{ "int_status", QGPU_REG_INT_STATUS },
		{ "int_mask", QGPU_REG_INT_MASK },
		{ "fence_lo", QGPU_REG_FENCE_LO },
		{ "dma_error", QGPU_REG_DMA_ERROR },
		{ "access_error", QGPU_REG_ACCESS_ERROR },
	};
	int i;

	for (i = 0; i < ARRAY_SIZE(regs); i++)
		seq_printf(m, "%s: %#x\n", regs[i].name,
			   qgpu_rd(qdev, regs[i].reg));
	mutex_lock(&qdev->ring_lock);
	seq_printf(m, "sw_tail: %u\nnext_seq: %llu\nretired_seq: %llu\n",
		   qdev->tail, qdev->next_seq, qdev->retired_seq);
	mutex_unlock(&qdev->ring_lock);
	seq_printf(m, "completed_seq: %llu\nirq_mode: %d\nnvec: %d\n",
		   qgpu_completed_seq(qdev), qdev->irq_mode, qdev->nvec);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(qgpu_state);

/* ---- file operations ------------------------------------------------------ */

static int qgpu_open(struct inode *inode, struct file *filp)
{
	struct miscdevice *misc = filp->private_data;
	struct qgpu_device *qdev = container_of(misc, struct qgpu_device, misc);
	struct qgpu_file *qf;
	int idx;

	qf = kzalloc(sizeof(*qf), GFP_KERNEL);
	if (!qf)
		return -ENOMEM;
	idx = srcu_read_lock(&qdev->srcu);
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost)) {
		srcu_read_unlock(&qdev->srcu, idx);
		kfree(qf);
		return -ENODEV;
	}
	kref_get(&qdev->ref);
	srcu_read_unlock(&qdev->srcu, idx);

	qf->qdev = qdev;
	qf->writable = filp->f_mode & FMODE_WRITE;
	xa_init_flags(&qf->bos, XA_FLAGS_ALLOC1);
	filp->private_data = qf;
	/* All mappings of the device share one address_space (for zapping). */
	filp->f_mapping = qdev->inode->i_mapping;
	return nonseekable_open(inode, filp);
}

static int qgpu_release(struct inode *inode, struct file *filp)
{
	struct qgpu_file *qf = filp->private_data;
	struct qgpu_bo *bo;
	unsigned long handle;

	xa_for_each(&qf->bos, handle, bo) {
		xa_erase(&qf->bos, handle);
		qgpu_bo_put(bo);
	}
	xa_destroy(&qf->bos);
	qgpu_device_put(qf->qdev);
	kfree(qf);
	return 0;
}

static bool qgpu_vram_range_ok(struct qgpu_device *qdev, u64 off, u64 len)
{
	u64 end;

	return len && !check_add_overflow(off, len, &end) &&
	       end <= qdev->vram_size;
}

static long qgpu_ioctl_info(struct qgpu_device *qdev, void __user *arg)
{
	struct pci_dev *pdev = qdev->pdev;
	struct qgpu_info a;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.flags || a.reserved0 || memchr_inv(a.reserved, 0, sizeof(a.reserved)))
		return -EINVAL;
	a.version = qgpu_rd(qdev, QGPU_REG_VERSION);
	a.caps = qgpu_rd(qdev, QGPU_REG_CAPS);
	a.irq_mode = qdev->irq_mode;
	a.irq_vectors = qdev->nvec;
	a.ring_entries = qdev->ring_entries;
	a.sg_max_entries = qgpu_rd(qdev, QGPU_REG_SG_MAX_ENTRIES);
	a.dma_mask_bits = qdev->dma_bits;
	a.vram_size = qdev->vram_size;
	a.max_xfer = QGPU_MAX_XFER;
	a.bo_max_size = QGPU_BO_MAX_SIZE;
	a.pci_bdf = pci_domain_nr(pdev->bus) << 16 | pdev->bus->number << 8 |
		    pdev->devfn;
	return copy_to_user(arg, &a, sizeof(a)) ? -EFAULT : 0;
}

/* Submit one descriptor; wait unless asynchronous. */
static int qgpu_run_one(struct qgpu_device *qdev, struct qgpu_job *job,
			struct qgpu_desc *d, bool async, u64 *fence,
			u32 *hw_status)
{
	int ret;

	ret = qgpu_submit(qdev, job, d, 1);
	if (ret)
		return ret;
	*fence = job->last_seq;
	if (async)
		return 0;
	ret = qgpu_job_wait(qdev, job);
	*hw_status = job->hw_err;
	return ret;
}

static long qgpu_ioctl_copy_bo(struct qgpu_file *qf, void __user *arg)
{
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_copy_bo a;
	struct qgpu_desc d = {};
	struct qgpu_job *job;
	struct qgpu_bo *bo;
	u64 end, guest;
	int ret;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.reserved0 || a.reserved1 || a.reserved[0] || a.reserved[1] ||
	    (a.flags & ~QGPU_SUBMIT_F_ASYNC) ||
	    (a.op != QGPU_OP_COPY_TO_VRAM && a.op != QGPU_OP_COPY_FROM_VRAM) ||
	    !qgpu_vram_range_ok(qdev, a.vram_offset, a.length))
		return -EINVAL;
	bo = qgpu_bo_lookup(qf, a.handle);
	if (!bo)
		return -ENOENT;
	if (check_add_overflow(a.bo_offset, a.length, &end) || end > bo->size) {
		qgpu_bo_put(bo);
		return -EINVAL;
	}
	job = qgpu_job_alloc();
	if (!job) {
		qgpu_bo_put(bo);
		return -ENOMEM;
	}
	job->bo = bo;	/* dropped when the job retires */
	job->op = a.op;
	job->bytes = a.length;
	guest = bo->dma + a.bo_offset;
	d.opcode = cpu_to_le32(a.op);
	d.length = cpu_to_le64(a.length);
	d.src = cpu_to_le64(a.op == QGPU_OP_COPY_TO_VRAM ? guest : a.vram_offset);
	d.dst = cpu_to_le64(a.op == QGPU_OP_COPY_TO_VRAM ? a.vram_offset : guest);
	a.fence = 0;
	a.hw_status = 0;
	ret = qgpu_run_one(qdev, job, &d, a.flags & QGPU_SUBMIT_F_ASYNC,
			   &a.fence, &a.hw_status);
	qgpu_job_put(job);
	/* Once submitted, the caller gets the fence whatever the result. */
	if (a.fence && copy_to_user(arg, &a, sizeof(a)) && !ret)
		ret = -EFAULT;
	return ret;
}

/*
 * Split a VRAM_OP into descriptors of at most QGPU_VRAM_OP_CHUNK (more if
 * the ring is small), so that the fence and the ring head move while a long
 * operation runs and the watchdog sees progress. Chunks keep the FILL
 * pattern's phase (multiples of 4); a COPY_VRAM with @dst above @src runs
 * its chunks backwards, which keeps memmove semantics.
 */
static int qgpu_vram_op_descs(struct qgpu_device *qdev,
			      const struct qgpu_vram_op *a,
			      struct qgpu_desc **descsp)
{
	u32 max_desc = qdev->ring_entries - 1;
	bool backwards = a->op == QGPU_OP_COPY_VRAM &&
			 a->dst_offset > a->src_offset;
	struct qgpu_desc *descs;
	u64 chunk, off;
	u32 n, i;

	chunk = max_t(u64, QGPU_VRAM_OP_CHUNK,
		      round_up(DIV_ROUND_UP_ULL(a->length, max_desc), 4));
	n = DIV_ROUND_UP_ULL(a->length, chunk);
	descs = kcalloc(n, sizeof(*descs), GFP_KERNEL);
	if (!descs)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		struct qgpu_desc *d = &descs[backwards ? n - 1 - i : i];

		off = (u64)i * chunk;
		d->opcode = cpu_to_le32(a->op);
		d->dst = cpu_to_le64(a->dst_offset + off);
		d->length = cpu_to_le64(min(chunk, a->length - off));
		if (a->op == QGPU_OP_FILL)
			d->fill_pattern = cpu_to_le32(a->pattern);
		else
			d->src = cpu_to_le64(a->src_offset + off);
	}
	*descsp = descs;
	return n;
}

static long qgpu_ioctl_vram_op(struct qgpu_device *qdev, void __user *arg)
{
	struct qgpu_vram_op a;
	struct qgpu_desc *descs;
	struct qgpu_job *job;
	int ret, n;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	/* @fence and @hw_status are outputs: their input values are ignored. */
	if (a.reserved[0] || a.reserved[1] ||
	    (a.flags & ~QGPU_SUBMIT_F_ASYNC) ||
	    !qgpu_vram_range_ok(qdev, a.dst_offset, a.length))
		return -EINVAL;
	switch (a.op) {
	case QGPU_OP_FILL:
		if (a.src_offset)
			return -EINVAL;
		break;
	case QGPU_OP_COPY_VRAM:
		if (a.pattern || !qgpu_vram_range_ok(qdev, a.src_offset, a.length))
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	a.fence = 0;
	a.hw_status = 0;
	n = qgpu_vram_op_descs(qdev, &a, &descs);
	if (n < 0)
		return n;
	job = qgpu_job_alloc();
	if (!job) {
		kfree(descs);
		return -ENOMEM;
	}
	job->op = a.op;
	ret = qgpu_submit(qdev, job, descs, n);
	kfree(descs);
	if (!ret) {
		a.fence = job->last_seq;
		if (!(a.flags & QGPU_SUBMIT_F_ASYNC)) {
			ret = qgpu_job_wait(qdev, job);
			a.hw_status = job->hw_err;
		}
	}
	qgpu_job_put(job);
	/* Once submitted, the caller gets the fence whatever the result. */
	if (a.fence && copy_to_user(arg, &a, sizeof(a)) && !ret)
		ret = -EFAULT;
	return ret;
}

static long qgpu_ioctl_wait_fence(struct qgpu_device *qdev, void __user *arg)
{
	struct qgpu_wait_fence a;
	int ret;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.flags || a.reserved[0] || a.reserved[1])
		return -EINVAL;
	a.hw_status = 0;
	a.completed = 0;
	ret = qgpu_fence_wait(qdev, a.fence, a.timeout_ns, &a.hw_status,
			      &a.completed);
	if (ret == -EINVAL || ret == -ENODEV)
		return ret;
	if (copy_to_user(arg, &a, sizeof(a)))
		return -EFAULT;
	return ret;
}

static long qgpu_ioctl_bo_create(struct qgpu_file *qf, void __user *arg)
{
	struct qgpu_bo_create a;
	struct qgpu_bo *bo;
	int ret = 0;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	bo = qgpu_bo_create(qf, &a);
	if (IS_ERR(bo))
		return PTR_ERR(bo);
	if (copy_to_user(arg, &a, sizeof(a))) {
		/* Another thread may have destroyed and reused the handle. */
		if (xa_cmpxchg(&qf->bos, a.handle, bo, NULL, 0) == bo)
			qgpu_bo_put(bo);	/* the handle's reference */
		ret = -EFAULT;
	}
	qgpu_bo_put(bo);
	return ret;
}

static long qgpu_ioctl_bo_destroy(struct qgpu_file *qf, void __user *arg)
{
	struct qgpu_bo_destroy a;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.flags || a.reserved[0] || a.reserved[1])
		return -EINVAL;
	return qgpu_bo_destroy(qf, a.handle);
}

static u64 qgpu_fnv1a(u64 h, const u8 *p, size_t n)
{
	while (n--) {
		h ^= *p++;
		h *= 0x100000001b3ULL;
	}
	return h;
}

#define QGPU_CPU_CHUNK	SZ_64K

static long qgpu_ioctl_cpu_access(struct qgpu_file *qf, void __user *arg)
{
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_cpu_access a;
	u64 done = 0, h = 0xcbf29ce484222325ULL;
	u8 *buf;
	int i, ret = 0;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.op == QGPU_CPU_FILL && !qf->writable)
		return -EBADF;
	if (a.reserved[0] || a.reserved[1] || a.checksum ||
	    !qgpu_vram_range_ok(qdev, a.vram_offset, a.length) ||
	    (a.op != QGPU_CPU_CHECKSUM && a.op != QGPU_CPU_FILL) ||
	    (a.op == QGPU_CPU_CHECKSUM && a.pattern))
		return -EINVAL;
	buf = kmalloc(QGPU_CPU_CHUNK, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	if (a.op == QGPU_CPU_FILL)
		for (i = 0; i < QGPU_CPU_CHUNK; i += 4)
			put_unaligned_le32(a.pattern, buf + i);
	while (done < a.length) {
		size_t n = min_t(u64, a.length - done, QGPU_CPU_CHUNK);
		u8 *v = qdev->vram + a.vram_offset + done;

		/* A lost or frozen device reads all ones: stop there. */
		ret = qgpu_unusable(qdev);
		if (ret)
			break;
		if (signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		if (a.op == QGPU_CPU_FILL) {
			memcpy(v, buf, n);
		} else {
			memcpy(buf, v, n);
			h = qgpu_fnv1a(h, buf, n);
		}
		done += n;
		cond_resched();
	}
	kfree(buf);
	if (ret)
		return ret;
	if (a.op == QGPU_CPU_FILL)
		wmb();	/* flush the write-combining buffers */
	a.checksum = a.op == QGPU_CPU_CHECKSUM ? h : 0;
	return copy_to_user(arg, &a, sizeof(a)) ? -EFAULT : 0;
}

static long qgpu_ioctl_raise_irq(struct qgpu_device *qdev, void __user *arg)
{
	struct qgpu_raise_irq a;
	s64 before;
	long ret;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.flags || a.irq_count || a.reserved[0] || a.reserved[1])
		return -EINVAL;
	before = atomic64_read(&qdev->stats[QGPU_STAT_IRQ_SOFT]);
	qgpu_wr(qdev, QGPU_REG_INT_RAISE, QGPU_INT_SOFT);
	ret = wait_event_interruptible_timeout(qdev->soft_wq,
			atomic64_read(&qdev->stats[QGPU_STAT_IRQ_SOFT]) != before ||
			READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost), HZ);
	if (ret < 0)
		return -EINTR;
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost))
		return -ENODEV;
	if (!ret)
		return -ETIMEDOUT;
	a.irq_count = atomic64_read(&qdev->stats[QGPU_STAT_IRQ_SOFT]);
	return copy_to_user(arg, &a, sizeof(a)) ? -EFAULT : 0;
}

static long qgpu_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct qgpu_file *qf = filp->private_data;
	struct qgpu_device *qdev = qf->qdev;
	void __user *uarg = (void __user *)arg;
	long ret;
	int idx;

	idx = srcu_read_lock(&qdev->srcu);
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost)) {
		ret = -ENODEV;
		goto out;
	}
	/*
	 * A file opened read-only may look (INFO, WAIT_FENCE, copies from VRAM
	 * into user memory, CPU checksums, RAISE_IRQ, read-only mappings) but
	 * not change the device: what writes VRAM or holds device memory
	 * (buffer objects) needs a file opened for writing, as write(2) would.
	 */
	if (!qf->writable &&
	    (cmd == QGPU_IOCTL_VRAM_OP || cmd == QGPU_IOCTL_COPY_BO ||
	     cmd == QGPU_IOCTL_BO_CREATE || cmd == QGPU_IOCTL_BO_DESTROY)) {
		ret = -EBADF;
		goto out;
	}
	switch (cmd) {
	case QGPU_IOCTL_INFO:
		ret = qgpu_ioctl_info(qdev, uarg);
		break;
	case QGPU_IOCTL_COPY_USER:
		ret = qgpu_ioctl_copy_user(qf, uarg);
		break;
	case QGPU_IOCTL_COPY_BO:
		ret = qgpu_ioctl_copy_bo(qf, uarg);
		break;
	case QGPU_IOCTL_VRAM_OP:
		ret = qgpu_ioctl_vram_op(qdev, uarg);
		break;
	case QGPU_IOCTL_WAIT_FENCE:
		ret = qgpu_ioctl_wait_fence(qdev, uarg);
		break;
	case QGPU_IOCTL_BO_CREATE:
		ret = qgpu_ioctl_bo_create(qf, uarg);
		break;
	case QGPU_IOCTL_BO_DESTROY:
		ret = qgpu_ioctl_bo_destroy(qf, uarg);
		break;
	case QGPU_IOCTL_CPU_ACCESS:
		ret = qgpu_ioctl_cpu_access(qf, uarg);
		break;
	case QGPU_IOCTL_RAISE_IRQ:
		ret = qgpu_ioctl_raise_irq(qdev, uarg);
		break;
	default:
		ret = -ENOTTY;
		break;
	}
out:
	srcu_read_unlock(&qdev->srcu, idx);
	return ret;
}

static const struct file_operations qgpu_fops = {
	.owner = THIS_MODULE,
	.open = qgpu_open,
	.release = qgpu_release,
	.unlocked_ioctl = qgpu_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = qgpu_mmap,
};

/* ---- probe / remove ---------------------------------------------------------- */

struct qgpu_pci_priv {
	struct qgpu_device *qdev;
	struct qgpu_vec vecs[QGPU_MSIX_VECTORS];
};

static int qgpu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct qgpu_pci_priv *priv;
	struct qgpu_device *qdev;
	u32 magic, version, hw_max;
	int ret;

	priv = devm_kzalloc(dev, sizeof(*priv), GFP_KERNEL);
	if (!priv)
		return -ENOMEM;
	qdev = kzalloc(sizeof(*qdev), GFP_KERNEL);
	if (!qdev)
		return -ENOMEM;
	kref_init(&qdev->ref);
	qdev->id = -1;
	qdev->pdev = pci_dev_get(pdev);
	qdev->dev = dev;
	ret = init_srcu_struct(&qdev->srcu);
	if (ret) {
		pci_dev_put(pdev);
		kfree(qdev);
		return ret;
	}
	mutex_init(&qdev->ring_lock);
	mutex_init(&qdev->bo_lock);
	INIT_LIST_HEAD(&qdev->bos);
	spin_lock_init(&qdev->mappings_lock);
	INIT_LIST_HEAD(&qdev->mappings);
	INIT_LIST_HEAD(&qdev->inflight);
	init_waitqueue_head(&qdev->fence_wq);
	init_waitqueue_head(&qdev->soft_wq);
	INIT_WORK(&qdev->retire_work, qgpu_retire_work);
	INIT_WORK(&qdev->reset_work, qgpu_reset_work);
	INIT_WORK(&qdev->lost_work, qgpu_lost_work);
	INIT_DELAYED_WORK(&qdev->watchdog, qgpu_watchdog_work);
	spin_lock_init(&qdev->irq_lock);
	priv->qdev = qdev;

	ret = pcim_enable_device(pdev);
	if (ret)
		goto err_put;
	/* Off until the engine is known to be stopped (kdump may leave it on). */
	pci_clear_master(pdev);

	if (pci_resource_len(pdev, QGPU_BAR_REGS) < QGPU_REGS_SIZE ||
	    !(pci_resource_flags(pdev, QGPU_BAR_VRAM) & IORESOURCE_MEM)) {
		dev_err(dev, "unexpected BAR layout\n");
		ret = -ENODEV;
		goto err_put;
	}
	qdev->regs = pcim_iomap_region(pdev, QGPU_BAR_REGS, QGPU_DRV_NAME);
	if (IS_ERR(qdev->regs)) {
		ret = PTR_ERR(qdev->regs);
		goto err_put;
	}
	qdev->regs_phys = pci_resource_start(pdev, QGPU_BAR_REGS);
	magic = qgpu_rd(qdev, QGPU_REG_ID);
	version = qgpu_rd(qdev, QGPU_REG_VERSION);
	if (magic != QGPU_ID_MAGIC || version >> 16 != QGPU_VERSION_MAJOR) {
		dev_err(dev, "not a qgpu v%d device (id %#x version %#x)\n",
			QGPU_VERSION_MAJOR, magic, version);
		ret = -ENODEV;
		goto err_put;
	}
	qdev->caps = qgpu_rd(qdev, QGPU_REG_CAPS);
	/*
	 * A previous kernel (kexec) or driver instance may have left the
	 * engine running: stop it before bus mastering lets it reach memory.
	 */
	qgpu_wr(qdev, QGPU_REG_ENGINE_CTRL, 0);
	qgpu_wr(qdev, QGPU_REG_ENGINE_RESET, QGPU_ENGINE_RESET_MAGIC);
	qgpu_wr(qdev, QGPU_REG_INT_MASK, 0);
	pci_set_master(pdev);

	ret = pcim_request_region(pdev, QGPU_BAR_VRAM, QGPU_DRV_NAME "-vram");
	if (ret)
		goto err_put;
	qdev->vram_phys = pci_resource_start(pdev, QGPU_BAR_VRAM);
	qdev->vram_size = pci_resource_len(pdev, QGPU_BAR_VRAM);
	if (qdev->vram_size != ((u64)qgpu_rd(qdev, QGPU_REG_VRAM_SIZE_HI) << 32 |
				qgpu_rd(qdev, QGPU_REG_VRAM_SIZE_LO)) ||
	    !PAGE_ALIGNED(qdev->vram_phys) || !PAGE_ALIGNED(qdev->vram_size)) {
		dev_err(dev, "VRAM BAR and VRAM_SIZE disagree\n");
		ret = -ENODEV;
		goto err_put;
	}
	qdev->vram = devm_memremap(dev, qdev->vram_phys, qdev->vram_size,
				   MEMREMAP_WC);
	if (IS_ERR(qdev->vram)) {
		ret = PTR_ERR(qdev->vram);
		goto err_put;
	}
	qdev->iomap = io_mapping_create_wc(qdev->vram_phys, qdev->vram_size);
	if (!qdev->iomap) {
		ret = -ENOMEM;
		goto err_put;
	}

	qdev->bo_limit = (u64)bo_limit_mb << 20;
	qdev->dma_bits = clamp(dma_bits, 32U, 64U);
	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(qdev->dma_bits));
	if (ret && qdev->dma_bits != 32) {
		qdev->dma_bits = 32;
		ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(32));
	}
	if (ret) {
		dev_err(dev, "no usable DMA mask\n");
		goto err_iomap;
	}
	dma_set_max_seg_size(dev, QGPU_SG_SEG_MAX_LEN);

	hw_max = min_t(u32, qgpu_rd(qdev, QGPU_REG_RING_MAX_ENTRIES),
		       QGPU_RING_MAX_ENTRIES);
	if (!is_power_of_2(ring_entries) || ring_entries < QGPU_RING_MIN_ENTRIES ||
	    ring_entries > hw_max) {
		dev_err(dev, "ring_entries=%u: need a power of two in [%u, %u]\n",
			ring_entries, QGPU_RING_MIN_ENTRIES, hw_max);
		ret = -EINVAL;
		goto err_iomap;
	}
	qdev->ring_entries = ring_entries;
	ret = qgpu_ring_init(qdev);
	if (ret)
		goto err_iomap;

	ret = ida_alloc(&qgpu_ida, GFP_KERNEL);
	if (ret < 0)
		goto err_iomap;
	qdev->id = ret;
	snprintf(qdev->name, sizeof(qdev->name), "qgpu%d", qdev->id);

	ret = qgpu_setup_irqs(qdev, priv->vecs);
	if (ret) {
		dev_err(dev, "cannot set up interrupts: %d\n", ret);
		goto err_iomap;
	}
	qgpu_ring_start(qdev);

	qdev->inode = qgpu_fs_inode_new();
	if (IS_ERR(qdev->inode)) {
		ret = PTR_ERR(qdev->inode);
		qdev->inode = NULL;
		goto err_stop;
	}

	pci_set_drvdata(pdev, priv);
	qdev->misc.minor = MISC_DYNAMIC_MINOR;
	qdev->misc.name = qdev->name;
	qdev->misc.fops = &qgpu_fops;
	qdev->misc.parent = dev;
	qdev->misc.groups = qgpu_misc_groups;
	qdev->misc.mode = 0660;
	ret = misc_register(&qdev->misc);
	if (ret)
		goto err_stop;
	qdev->misc_registered = true;

	qdev->debugfs = debugfs_create_dir(pci_name(pdev), qgpu_debugfs_root);
	debugfs_create_file("state", 0400, qdev->debugfs, qdev,
			    &qgpu_state_fops);
	/* What PCIe error recovery restores after a link reset. */
	pci_save_state(pdev);

	dev_info(dev, "%s: VRAM %llu MiB, %s with %d vector(s), %d-bit DMA, ring %u\n",
		 qdev->name, qdev->vram_size >> 20,
		 qdev->irq_mode == QGPU_IRQ_MODE_MSIX ? "MSI-X" :
		 qdev->irq_mode == QGPU_IRQ_MODE_MSI ? "MSI" : "INTx",
		 qdev->nvec, qdev->dma_bits, qdev->ring_entries);
	return 0;

err_stop:
	WRITE_ONCE(qdev->dead, true);
	qgpu_ring_shutdown(qdev);
	qgpu_free_irqs(qdev, priv->vecs);
	cancel_work_sync(&qdev->retire_work);
	cancel_work_sync(&qdev->reset_work);
	cancel_delayed_work_sync(&qdev->watchdog);
	/* Interrupts and the watchdog may have marked it lost meanwhile. */
	cancel_work_sync(&qdev->lost_work);
err_iomap:
	io_mapping_free(qdev->iomap);
	qdev->iomap = NULL;
err_put:
	qgpu_device_put(qdev);
	return ret;
}

static void qgpu_remove(struct pci_dev *pdev)
{
	struct qgpu_pci_priv *priv = pci_get_drvdata(pdev);
	struct qgpu_device *qdev = priv->qdev;

	/* Fail new opens and calls; the lost-device work needs the misc device. */
	WRITE_ONCE(qdev->dead, true);
	cancel_work_sync(&qdev->lost_work);
	/* No new opens; the stats directory goes too. */
	misc_deregister(&qdev->misc);
	debugfs_remove_recursive(qdev->debugfs);

	wake_up_all(&qdev->soft_wq);
	/*
	 * Engine off and every job retired: the device touches no memory
	 * (if BAR0 no longer answers, bus mastering is switched off).
	 */
	qgpu_ring_shutdown(qdev);
	/*
	 * Wait for ioctls, mmaps and faults that saw the device alive; then no
	 * user PTE may point at the BARs or at BO memory any more.
	 */
	qgpu_zap_user_mappings(qdev);
	qgpu_bo_free_all_backing(qdev);

	qgpu_free_irqs(qdev, priv->vecs);
	cancel_work_sync(&qdev->retire_work);
	cancel_work_sync(&qdev->reset_work);
	cancel_delayed_work_sync(&qdev->watchdog);
	/*
	 * qgpu_mark_lost() may have seen @dead clear just before it was set
	 * and queued the work after the cancel above; nothing queues it now.
	 */
	cancel_work_sync(&qdev->lost_work);
	io_mapping_free(qdev->iomap);
	qdev->iomap = NULL;
	dev_info(&pdev->dev, "%s removed\n", qdev->name);
	qgpu_device_put(qdev);
}

/*
 * Reboot, poweroff and kexec: the device must not DMA into memory that the
 * next kernel (or the firmware) owns. Stop the engine, fail what is in
 * flight and switch bus mastering off; user space is not waited for.
 */
static void qgpu_shutdown(struct pci_dev *pdev)
{
	struct qgpu_pci_priv *priv = pci_get_drvdata(pdev);

	if (!priv)
		return;
	qgpu_ring_quiesce(priv->qdev);
	pci_clear_master(pdev);
}

/* ---- PCIe error recovery (AER) --------------------------------------------- */

/*
 * Non-fatal errors (the link works): carry on to mmio_enabled. Fatal ones:
 * stop DMA and fail what is in flight, then ask for a link reset. A
 * permanently failed channel disables the device.
 */
static pci_ers_result_t qgpu_error_detected(struct pci_dev *pdev,
					    pci_channel_state_t state)
{
	struct qgpu_pci_priv *priv = pci_get_drvdata(pdev);
	struct qgpu_device *qdev = priv->qdev;

	qgpu_stat_inc(qdev, QGPU_STAT_PCI_ERRORS);
	switch (state) {
	case pci_channel_io_normal:
		dev_warn(&pdev->dev, "%s: non-fatal PCIe error; checking the device\n",
			 qdev->name);
		return PCI_ERS_RESULT_CAN_RECOVER;
	case pci_channel_io_frozen:
		dev_warn(&pdev->dev, "%s: fatal PCIe error; DMA stopped, in-flight jobs failed, waiting for a link reset\n",
			 qdev->name);
		qgpu_ring_quiesce(qdev);
		qgpu_zap_bar_mappings(qdev);
		return PCI_ERS_RESULT_NEED_RESET;
	default:
		qgpu_mark_lost(qdev, "PCIe channel failed permanently");
		return PCI_ERS_RESULT_DISCONNECT;
	}
}

/*
 * Non-fatal error, MMIO works: the engine may have consumed poisoned data,
 * so fail what is in flight (-EIO) and restart it on an empty ring.
 */
static pci_ers_result_t qgpu_mmio_enabled(struct pci_dev *pdev)
{
	struct qgpu_pci_priv *priv = pci_get_drvdata(pdev);
	struct qgpu_device *qdev = priv->qdev;

	if (qgpu_hw_lost(qdev))
		return PCI_ERS_RESULT_NEED_RESET;
	qgpu_ring_quiesce(qdev);
	return PCI_ERS_RESULT_RECOVERED;
}

/* After the link reset: the device is in its reset state. */
static pci_ers_result_t qgpu_slot_reset(struct pci_dev *pdev)
{
	struct qgpu_pci_priv *priv = pci_get_drvdata(pdev);
	struct qgpu_device *qdev = priv->qdev;

	pci_restore_state(pdev);
	pci_save_state(pdev);
	pci_set_master(pdev);
	if (qgpu_rd(qdev, QGPU_REG_ID) != QGPU_ID_MAGIC) {
		dev_err(&pdev->dev, "%s: no qgpu after the link reset (id %#x)\n",
			qdev->name, qgpu_rd(qdev, QGPU_REG_ID));
		/* resume() is not called: disable it rather than stay frozen. */
		qgpu_mark_lost(qdev, "no device after link reset");
		return PCI_ERS_RESULT_DISCONNECT;
	}
	/* The reset cleared the interrupt mask and the ring registers. */
	qgpu_wr(qdev, QGPU_REG_INT_STATUS, QGPU_INT_ALL);
	return PCI_ERS_RESULT_RECOVERED;
}

static void qgpu_resume(struct pci_dev *pdev)
{
	struct qgpu_pci_priv *priv = pci_get_drvdata(pdev);
	struct qgpu_device *qdev = priv->qdev;

	if (READ_ONCE(qdev->lost))
		return;
	qgpu_ring_restart(qdev);
	qgpu_stat_inc(qdev, QGPU_STAT_PCI_RECOVERIES);
	dev_info(&pdev->dev, "%s: recovered from the PCIe error\n", qdev->name);
}

/* A function reset through sysfs (or by another driver): quiesce, restart. */
static void qgpu_reset_prepare(struct pci_dev *pdev)
{
	struct qgpu_pci_priv *priv = pci_get_drvdata(pdev);

	qgpu_ring_quiesce(priv->qdev);
	qgpu_zap_bar_mappings(priv->qdev);
}

static void qgpu_reset_done(struct pci_dev *pdev)
{
	struct qgpu_pci_priv *priv = pci_get_drvdata(pdev);

	qgpu_ring_restart(priv->qdev);
}

static const struct pci_error_handlers qgpu_err_handlers = {
	.error_detected = qgpu_error_detected,
	.mmio_enabled = qgpu_mmio_enabled,
	.slot_reset = qgpu_slot_reset,
	.resume = qgpu_resume,
	.reset_prepare = qgpu_reset_prepare,
	.reset_done = qgpu_reset_done,
};

static const struct pci_device_id qgpu_pci_ids[] = {
	{ PCI_DEVICE(QGPU_PCI_VENDOR_ID, QGPU_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, qgpu_pci_ids);

static struct pci_driver qgpu_pci_driver = {
	.name = QGPU_DRV_NAME,
	.id_table = qgpu_pci_ids,
	.probe = qgpu_probe,
	.remove = qgpu_remove,
	.shutdown = qgpu_shutdown,
	.err_handler = &qgpu_err_handlers,
};

static int __init qgpu_init(void)
{
	int ret;

	if (!is_power_of_2(ring_entries) || ring_entries < QGPU_RING_MIN_ENTRIES ||
	    ring_entries > QGPU_RING_MAX_ENTRIES) {
		pr_err("qgpu: ring_entries=%u: need a power of two in [%u, %u]\n",
		       ring_entries, QGPU_RING_MIN_ENTRIES, QGPU_RING_MAX_ENTRIES);
		return -EINVAL;
	}
	qgpu_debugfs_root = debugfs_create_dir(QGPU_DRV_NAME, NULL);
	ret = pci_register_driver(&qgpu_pci_driver);
	if (ret)
		debugfs_remove_recursive(qgpu_debugfs_root);
	return ret;
}

static void __exit qgpu_exit(void)
{
	pci_unregister_driver(&qgpu_pci_driver);
	debugfs_remove_recursive(qgpu_debugfs_root);
	ida_destroy(&qgpu_ida);
}

module_init(qgpu_init);
module_exit(qgpu_exit);

MODULE_DESCRIPTION("Driver for the qgpu virtual PCIe GPU-like device");
MODULE_AUTHOR("The qgpu developers");
MODULE_LICENSE("GPL");
