// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: interrupts. MSI-X gives each cause group its vector (DMA done,
 * errors and halts, the soft interrupt); MSI and INTx share one. Causes
 * are read and acknowledged in INT_STATUS under irq_lock; a completion
 * found by polling resynchronises them (a lost edge blocks later ones).
 */

#include <linux/interrupt.h>
#include <linux/pci.h>
#include <linux/workqueue.h>

#include "qgpu_drv.h"

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
		u32 index = qgpu_rd(qdev, QGPU_REG_DMA_ERROR_INDEX);

		qgpu_stat_inc(qdev, QGPU_STAT_IRQ_ERROR);
		atomic64_set(&qdev->stats[QGPU_STAT_LAST_ERROR], err);
		dev_dbg_ratelimited(qdev->dev, "DMA error %u at ring index %u\n",
				    err, index);
		/* Clearing DMA_ERROR clears its index too: the reset work
		 * reports what was read here. */
		qgpu_wr(qdev, QGPU_REG_DMA_ERROR, 0);
		if ((causes & QGPU_INT_ENGINE_HALT) && !READ_ONCE(qdev->dead)) {
			WRITE_ONCE(qdev->halt_err, err);
			WRITE_ONCE(qdev->halt_index, index);
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

void qgpu_free_irqs(struct qgpu_device *qdev, struct qgpu_vec *vecs)
{
	while (qdev->irqs_requested > 0) {
		int i = --qdev->irqs_requested;

		free_irq(pci_irq_vector(qdev->pdev, i), &vecs[i]);
	}
}

int qgpu_setup_irqs(struct qgpu_device *qdev, struct qgpu_vec *vecs)
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

