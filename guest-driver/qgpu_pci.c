// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: Linux driver for the qgpu virtual PCIe GPU-like device -- the PCI
 * driver: probe, remove, shutdown, the module, the device's lifetime.
 *
 * One misc device /dev/qgpuN per PCI function. The device ABI is
 * qemu-device/include/hw/misc/qgpu_hw.h, the user ABI include/uapi/qgpu.h.
 *
 * Lifetime: struct qgpu_device is reference counted (probe, open files,
 * VMAs, buffer objects). Remove marks it dead, stops the engine, waits for
 * every ioctl/mmap/fault in progress (SRCU), zaps all user mappings and
 * frees the hardware resources; what user space still holds then fails
 * with -ENODEV (ioctls) or SIGBUS (mappings).
 *
 * The other files: qgpu_ioctl.c (the device file and its ioctls),
 * qgpu_ring.c (descriptor ring, fences, user copies), qgpu_mmap.c
 * (mappings, buffer objects), qgpu_irq.c (interrupts), qgpu_recovery.c
 * (lost devices, PCIe error recovery, resets), qgpu_sysfs.c (statistics,
 * state), qgpu_inject.c (kernel calls tests can fail).
 */

#include <linux/debugfs.h>
#include <linux/idr.h>
#include <linux/io.h>
#include <linux/io-mapping.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>

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

static void qgpu_device_release(struct kref *ref)
{
	struct qgpu_device *qdev = container_of(ref, struct qgpu_device, ref);

	/* Removal retired every job, and so signalled every exported fence. */
	WARN_ON(!list_empty(&qdev->fences));
	/* Each dma-buf holds its BO, which holds the device. */
	WARN_ON(!list_empty(&qdev->dmabufs));
	WARN_ON(!list_empty(&qdev->vram_dmabufs));
	qgpu_fs_inode_free(qdev->inode);
	if (qdev->id >= 0)
		ida_free(&qgpu_ida, qdev->id);
	cleanup_srcu_struct(&qdev->map_srcu);
	cleanup_srcu_struct(&qdev->srcu);
	pci_dev_put(qdev->pdev);
	kfree(qdev);
}

void qgpu_device_put(struct qgpu_device *qdev)
{
	kref_put(&qdev->ref, qgpu_device_release);
}

/* ---- probe / remove ---------------------------------------------------------- */

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
	if (ret)
		goto err_free;
	ret = init_srcu_struct(&qdev->map_srcu);
	if (ret)
		goto err_srcu;
	mutex_init(&qdev->ring_lock);
	mutex_init(&qdev->submit_lock);
	mutex_init(&qdev->bo_lock);
	INIT_LIST_HEAD(&qdev->bos);
	spin_lock_init(&qdev->mappings_lock);
	INIT_LIST_HEAD(&qdev->mappings);
	mutex_init(&qdev->zap_lock);
	INIT_LIST_HEAD(&qdev->inflight);
	INIT_LIST_HEAD(&qdev->fences);
	qdev->fence_context = qgpu_fence_context_alloc();
	init_waitqueue_head(&qdev->fence_wq);
	init_waitqueue_head(&qdev->soft_wq);
	mutex_init(&qdev->dmabuf_lock);
	INIT_LIST_HEAD(&qdev->dmabufs);
	INIT_LIST_HEAD(&qdev->vram_dmabufs);
	init_waitqueue_head(&qdev->dmabuf_wq);
	mutex_init(&qdev->userptr_lock);
	INIT_LIST_HEAD(&qdev->userptrs);
	INIT_WORK(&qdev->retire_work, qgpu_retire_work);
	INIT_WORK(&qdev->reset_work, qgpu_reset_work);
	init_llist_head(&qdev->reaped_jobs);
	INIT_WORK(&qdev->reap_work, qgpu_reap_work);
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
	if (!qgpu_engine_reset(qdev)) {
		ret = -EIO;
		goto err_put;
	}
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
	/*
	 * Write-combining is only right for a prefetchable BAR: a device may
	 * give reads of a non-prefetchable one side effects, and need its
	 * writes in order and unmerged.
	 */
	qdev->vram_wc = pci_resource_flags(pdev, QGPU_BAR_VRAM) &
			IORESOURCE_PREFETCH;
	if (qdev->vram_wc) {
		qdev->vram = devm_memremap(dev, qdev->vram_phys,
					   qdev->vram_size, MEMREMAP_WC);
		if (IS_ERR(qdev->vram)) {
			ret = PTR_ERR(qdev->vram);
			goto err_put;
		}
		qdev->iomap = io_mapping_create_wc(qdev->vram_phys,
						   qdev->vram_size);
		if (!qdev->iomap) {
			ret = -ENOMEM;
			goto err_put;
		}
	} else {
		qdev->vram = NULL;
		qdev->vram_uc = devm_ioremap(dev, qdev->vram_phys,
					     qdev->vram_size);
		if (!qdev->vram_uc) {
			ret = -ENOMEM;
			goto err_put;
		}
		dev_info(dev, "VRAM BAR is not prefetchable: mapped uncached\n");
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

	qgpu_debugfs_add(qdev, qgpu_debugfs_root);
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
	if (qdev->iomap)
		io_mapping_free(qdev->iomap);
	qdev->iomap = NULL;
err_put:
	qgpu_device_put(qdev);
	return ret;
err_srcu:
	cleanup_srcu_struct(&qdev->srcu);
err_free:
	pci_dev_put(pdev);
	kfree(qdev);
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
	/*
	 * The name is free again: a device probed next (a rescan) is qgpuN
	 * again even while files and mappings of this one are still open.
	 */
	ida_free(&qgpu_ida, qdev->id);
	qdev->id = -1;

	wake_up_all(&qdev->soft_wq);
	/*
	 * Engine off and every job retired: the device touches no memory
	 * (if BAR0 no longer answers, bus mastering is switched off).
	 */
	qgpu_ring_shutdown(qdev);
	/* The BO references of retired jobs nobody waited for, let go. */
	flush_work(&qdev->reap_work);
	/*
	 * Wait for ioctls, mmaps and faults that saw the device alive; then no
	 * user PTE may point at the BARs or at BO memory any more.
	 */
	qgpu_zap_user_mappings(qdev);
	/* Importers of its BOs' dma-bufs, given time to unmap them. */
	qgpu_dmabuf_wait_unpinned(qdev);
	qgpu_bo_free_all_backing(qdev);
	/* Registered user buffers: unmapped and unpinned, their files keep them empty. */
	qgpu_userptr_release_all(qdev);

	qgpu_free_irqs(qdev, priv->vecs);
	cancel_work_sync(&qdev->retire_work);
	cancel_work_sync(&qdev->reset_work);
	cancel_delayed_work_sync(&qdev->watchdog);
	/*
	 * qgpu_mark_lost() may have seen @dead clear just before it was set
	 * and queued the work after the cancel above; nothing queues it now.
	 */
	cancel_work_sync(&qdev->lost_work);
	if (qdev->iomap)
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
	.driver.pm = pm_sleep_ptr(&qgpu_pm_ops),
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
	qgpu_fence_barrier();
}

module_init(qgpu_init);
module_exit(qgpu_exit);

MODULE_DESCRIPTION("Driver for the qgpu virtual PCIe GPU-like device");
MODULE_AUTHOR("The qgpu developers");
MODULE_LICENSE("GPL");
