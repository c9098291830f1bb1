// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: what the driver shows about a device: statistics in
 * /sys/class/misc/qgpuN/stats/, its state in .../state, registers and ring
 * bookkeeping in debugfs.
 */

#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/seq_file.h>
#include <linux/sysfs.h>

#include "qgpu_drv.h"

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
QGPU_STAT_ATTR(line_bounces, QGPU_STAT_LINE_BOUNCES);
QGPU_STAT_ATTR(suspends, QGPU_STAT_SUSPENDS);
QGPU_STAT_ATTR(dmabufs, QGPU_STAT_DMABUFS);
QGPU_STAT_ATTR(dmabuf_maps, QGPU_STAT_DMABUF_MAPS);
QGPU_STAT_ATTR(dmabuf_copies, QGPU_STAT_DMABUF_COPIES);
QGPU_STAT_ATTR(userptrs, QGPU_STAT_USERPTRS);
QGPU_STAT_ATTR(userptr_pages, QGPU_STAT_USERPTR_PAGES);
QGPU_STAT_ATTR(userptr_copies, QGPU_STAT_USERPTR_COPIES);

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
	&qgpu_attr_line_bounces.attr.attr,
	&qgpu_attr_suspends.attr.attr,
	&qgpu_attr_dmabufs.attr.attr,
	&qgpu_attr_dmabuf_maps.attr.attr,
	&qgpu_attr_dmabuf_copies.attr.attr,
	&qgpu_attr_userptrs.attr.attr,
	&qgpu_attr_userptr_pages.attr.attr,
	&qgpu_attr_userptr_copies.attr.attr,
	NULL
};

static const struct attribute_group qgpu_stat_group = {
	.name = "stats",
	.attrs = qgpu_stat_attrs,
};

/* "running", "recovering" (a reset, PCIe error recovery), "suspended" or "failed". */
static ssize_t state_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	struct miscdevice *misc = dev_get_drvdata(dev);
	struct qgpu_device *qdev = container_of(misc, struct qgpu_device, misc);

	if (READ_ONCE(qdev->lost) || READ_ONCE(qdev->dead))
		return sysfs_emit(buf, "failed\n");
	if (READ_ONCE(qdev->suspended))
		return sysfs_emit(buf, "suspended\n");
	return sysfs_emit(buf, "%s\n", READ_ONCE(qdev->frozen) ? "recovering" :
							      "running");
}
static DEVICE_ATTR_RO(state);

/* How the CPU maps VRAM: "write-combining", or "uncached" if not prefetchable. */
static ssize_t vram_caching_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	struct miscdevice *misc = dev_get_drvdata(dev);
	struct qgpu_device *qdev = container_of(misc, struct qgpu_device, misc);

	return sysfs_emit(buf, "%s\n", qdev->vram_wc ? "write-combining" :
							"uncached");
}
static DEVICE_ATTR_RO(vram_caching);

static struct attribute *qgpu_dev_attrs[] = {
	&dev_attr_state.attr,
	&dev_attr_vram_caching.attr,
	NULL
};

static const struct attribute_group qgpu_dev_group = {
	.attrs = qgpu_dev_attrs,
};

const struct attribute_group *qgpu_misc_groups[] = {
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
	qgpu_ring_lock(qdev);
	seq_printf(m, "sw_tail: %u\nnext_seq: %llu\nretired_seq: %llu\n",
		   qdev->tail, qdev->next_seq, qdev->retired_seq);
	qgpu_ring_unlock(qdev);
	seq_printf(m, "completed_seq: %llu\nirq_mode: %d\nnvec: %d\n",
		   qgpu_completed_seq(qdev), qdev->irq_mode, qdev->nvec);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(qgpu_state);


/* debugfs qgpu/<PCI name>/state: registers and ring bookkeeping. */
void qgpu_debugfs_add(struct qgpu_device *qdev, struct dentry *root)
{
	qdev->debugfs = debugfs_create_dir(pci_name(qdev->pdev), root);
	debugfs_create_file("state", 0400, qdev->debugfs, qdev,
			    &qgpu_state_fops);
	debugfs_create_bool("userptr_skip_sync", 0600, qdev->debugfs,
			    &qdev->userptr_skip_sync);
	qgpu_p2p_debugfs_add(qdev);
}
