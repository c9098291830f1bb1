// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: when the device fails. A device whose registers read all ones, or
 * whose PCIe channel failed for good, is lost: disabled until re-probed.
 * PCIe error recovery (AER) and function resets quiesce the engine, unmap
 * the BARs from user space and restart on an empty ring.
 */

#include <linux/delay.h>
#include <linux/pci.h>
#include <linux/workqueue.h>

#include "qgpu_drv.h"

/* ---- lost devices ------------------------------------------------------- */

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

/* ---- PCIe error recovery (AER) and function resets ------------------------ */

static unsigned int reset_hold_ms;
module_param(reset_hold_ms, uint, 0644);
MODULE_PARM_DESC(reset_hold_ms,
		 "Testing: keep the device recovering this long (at most 5 s) at the end of a function reset (0: off)");

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

/*
 * After a fatal error's link reset: the device is in its reset state.
 * slot_reset also comes after a non-fatal error, for which
 * error_detected() let the engine run (CAN_RECOVER), when another driver
 * below the same port voted NEED_RESET (mmio_enabled() is skipped then;
 * 6.12 resets nothing in that case, a platform may): stop what is still
 * running and zap the BAR mappings first, as a fatal error would have.
 */
static pci_ers_result_t qgpu_slot_reset(struct pci_dev *pdev)
{
	struct qgpu_pci_priv *priv = pci_get_drvdata(pdev);
	struct qgpu_device *qdev = priv->qdev;

	if (!READ_ONCE(qdev->frozen)) {
		dev_warn(&pdev->dev, "%s: slot reset after a non-fatal error; DMA stopped, in-flight jobs failed\n",
			 qdev->name);
		qgpu_ring_quiesce(qdev);
		qgpu_zap_bar_mappings(qdev);
	}
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
	/* The restart finds out whether the device answers again. */
	if (READ_ONCE(qdev->lost))
		return;
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
	unsigned int hold = min(READ_ONCE(reset_hold_ms), 5000U);

	if (hold)
		msleep(hold);
	qgpu_ring_restart(priv->qdev);
}

const struct pci_error_handlers qgpu_err_handlers = {
	.error_detected = qgpu_error_detected,
	.mmio_enabled = qgpu_mmio_enabled,
	.slot_reset = qgpu_slot_reset,
	.resume = qgpu_resume,
	.reset_prepare = qgpu_reset_prepare,
	.reset_done = qgpu_reset_done,
};

