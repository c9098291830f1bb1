// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: system sleep (suspend to RAM, suspend to idle, hibernation). After
 * suspend() the PCI core saves config space and puts the function into
 * D3hot, where the device loses its registers (it has no No_Soft_Reset);
 * on the way back the core powers it up and restores config space (MSI-X
 * included), and resume() programs the ring again. In between the device
 * must be idle: suspend() lets queued jobs finish, then stops the engine.
 * In D3hot the device keeps VRAM, and so user mappings of it stay valid;
 * hibernation's power-off does not keep it (this driver saves nothing).
 */

#include <linux/pci.h>
#include <linux/pm.h>

#include "qgpu_drv.h"

static int qgpu_pm_suspend(struct device *dev)
{
	struct qgpu_pci_priv *priv = dev_get_drvdata(dev);
	struct qgpu_device *qdev = priv->qdev;
	int failed, drained;

	if (READ_ONCE(qdev->lost))
		return 0;
	failed = qgpu_ring_suspend(qdev, &drained);
	qgpu_stat_inc(qdev, QGPU_STAT_SUSPENDS);
	if (failed)
		dev_warn(dev, "%s: %d job(s) did not finish before suspend: failed\n",
			 qdev->name, failed);
	dev_info(dev, "%s: suspended; %d queued job(s) finished first\n",
		 qdev->name, drained);
	return 0;
}

static int qgpu_pm_resume(struct device *dev)
{
	struct qgpu_pci_priv *priv = dev_get_drvdata(dev);
	struct qgpu_device *qdev = priv->qdev;

	if (READ_ONCE(qdev->lost))
		return 0;
	/* The power cycle reset the device: an empty ring, from index 0. */
	qgpu_ring_resume(qdev);
	if (!READ_ONCE(qdev->lost))
		dev_info(dev, "%s: resumed\n", qdev->name);
	return 0;
}

DEFINE_SIMPLE_DEV_PM_OPS(qgpu_pm_ops, qgpu_pm_suspend, qgpu_pm_resume);
