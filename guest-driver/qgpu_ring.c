// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: descriptor ring, fences, and DMA between user memory and VRAM.
 *
 * The driver owns one ring of QGPU_DESC_SIZE descriptors in coherent
 * memory. Every descriptor carries QGPU_DESC_F_FENCE with a sequence number
 * that the device writes to a coherent fence slot when it retires; the last
 * descriptor of a job also has QGPU_DESC_F_IRQ. Jobs are retired in order by
 * whoever holds ring_lock next (a waiter, a submitter, or the work item
 * queued from the DMA interrupt): status words are read, DMA mappings torn
 * down (the bytes are the CPU's from then on) and the job's fences
 * signalled. Completion is detected from the fence slot, so a missing
 * interrupt only costs latency: waiters poll every QGPU_POLL_MS.
 *
 * Everything under ring_lock is on the way to dma_fence_signal(), and
 * reclaim may wait for those fences: nothing there allocates, waits for a
 * fence, or takes a lock held around either (qgpu_ring_lock() has lockdep
 * check it). So what else a job holds -- pinned user pages,
 * its SG list and bounce buffer, a BO reference -- is let go afterwards,
 * outside the lock: by the submitter once qgpu_job_wait() returns, or,
 * for a job nobody waits for, by whoever drops its last reference
 * (reap_work if that is the ring's).
 */

#include <linux/delay.h>
#include <linux/iopoll.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/pci.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "qgpu_drv.h"

#define QGPU_POLL_MS		20

static unsigned int xfer_chunk_kb = 4096;
module_param(xfer_chunk_kb, uint, 0644);
MODULE_PARM_DESC(xfer_chunk_kb,
		 "User copies are pinned, mapped and run in chunks of this size (KiB)");

static unsigned int sg_max_entries;
module_param(sg_max_entries, uint, 0644);
MODULE_PARM_DESC(sg_max_entries,
		 "SG entries per descriptor (0: the device maximum); for testing");

static unsigned int job_timeout_ms = 10000;
module_param(job_timeout_ms, uint, 0644);
MODULE_PARM_DESC(job_timeout_ms,
		 "Job timeout, and longest time without DMA progress, before an engine reset (ms)");

/* Watchdog period: how often progress is sampled while jobs are queued. */
static unsigned long qgpu_wd_period(void)
{
	return msecs_to_jiffies(clamp(READ_ONCE(job_timeout_ms) / 4, 10U, 1000U));
}

u64 qgpu_completed_seq(struct qgpu_device *qdev)
{
	u64 seq = le64_to_cpu(READ_ONCE(*qdev->fence_slot));

	/* Status words written before the fence are visible after it. */
	dma_rmb();
	return seq;
}

bool qgpu_seq_passed(struct qgpu_device *qdev, u64 seq)
{
	return qgpu_completed_seq(qdev) >= seq ||
	       READ_ONCE(qdev->retired_seq) >= seq;
}

int qgpu_ring_init(struct qgpu_device *qdev)
{
	size_t ring_bytes = (size_t)qdev->ring_entries * QGPU_DESC_SIZE;
	void *mem;
	u64 base;

	/* Ring, then a 64-byte line for the fence slot. */
	mem = dmam_alloc_coherent(qdev->dev, ring_bytes + QGPU_DESC_SIZE,
				  &qdev->ring_dma, GFP_KERNEL);
	if (!mem)
		return -ENOMEM;
	qdev->fence_status = devm_kcalloc(qdev->dev, qdev->ring_entries,
					  sizeof(*qdev->fence_status),
					  GFP_KERNEL);
	qdev->replay = devm_kcalloc(qdev->dev, qdev->ring_entries,
				    sizeof(*qdev->replay), GFP_KERNEL);
	if (!qdev->fence_status || !qdev->replay)
		return -ENOMEM;
	/*
	 * Fences stay monotonic across driver reloads: the FENCE register (also
	 * read through the user page) keeps the last value written until the
	 * device resets, so continue from it. The engine is stopped: no tearing.
	 */
	base = (u64)qgpu_rd(qdev, QGPU_REG_FENCE_HI) << 32 |
	       qgpu_rd(qdev, QGPU_REG_FENCE_LO);
	if (base > U64_MAX / 2)		/* garbage: start over */
		base = 0;
	qdev->last_err_seq = 0;
	qdev->ring = mem;
	qdev->fence_slot = mem + ring_bytes;
	qdev->fence_dma = qdev->ring_dma + ring_bytes;
	*qdev->fence_slot = cpu_to_le64(base);
	qdev->next_seq = base + 1;
	qdev->retired_seq = base;
	INIT_LIST_HEAD(&qdev->inflight);
	return 0;
}

/*
 * ENGINE_RESET, and wait for it to complete: the device posts the status
 * write of the descriptor it aborted (spec 3.5) and keeps ENGINE_STATUS
 * BUSY until it is done. Waiting keeps that write from landing in a ring
 * entry written again, or in a ring already freed. Registers that read all
 * ones end the wait (the caller checks for a lost device). Returns false
 * if the reset did not complete: bus mastering is then switched off, so
 * that the late write cannot reach memory. Sleeps.
 */
bool qgpu_engine_reset(struct qgpu_device *qdev)
{
	u32 st;

	qgpu_wr(qdev, QGPU_REG_ENGINE_RESET, QGPU_ENGINE_RESET_MAGIC);
	if (!readl_poll_timeout(qdev->regs + QGPU_REG_ENGINE_STATUS, st,
				!(st & QGPU_ENGINE_STATUS_BUSY) || st == ~0U,
				10, USEC_PER_SEC))
		return true;
	dev_err(qdev->dev, "engine reset still busy after 1 s (ENGINE_STATUS %#x)\n", st);
	pci_clear_master(qdev->pdev);
	return false;
}

/* Program and enable the engine on an empty ring. */
void qgpu_ring_start(struct qgpu_device *qdev)
{
	qgpu_wr(qdev, QGPU_REG_ENGINE_CTRL, 0);
	if (!qgpu_engine_reset(qdev))
		return;
	qgpu_wr(qdev, QGPU_REG_RING_BASE_LO, lower_32_bits(qdev->ring_dma));
	qgpu_wr(qdev, QGPU_REG_RING_BASE_HI, upper_32_bits(qdev->ring_dma));
	qgpu_wr(qdev, QGPU_REG_RING_SIZE, qdev->ring_entries);
	qdev->tail = 0;
	qgpu_wr(qdev, QGPU_REG_DMA_ERROR, 0);
	qgpu_wr(qdev, QGPU_REG_INT_STATUS, QGPU_INT_ALL);
	qgpu_wr(qdev, QGPU_REG_INT_MASK, QGPU_INT_ALL);
	qgpu_wr(qdev, QGPU_REG_ENGINE_CTRL, QGPU_ENGINE_CTRL_ENABLE);
	if (!(qgpu_rd(qdev, QGPU_REG_ENGINE_STATUS) & QGPU_ENGINE_STATUS_ENABLED))
		dev_err(qdev->dev, "engine refused to start (access error %#x)\n",
			qgpu_rd(qdev, QGPU_REG_ACCESS_ERROR));
}

/*
 * ring_lock, taken inside a dma_fence signalling section: whoever holds it
 * may retire jobs and signal their fences (see the top of this file), so
 * lockdep is told that everything under it is on the way to
 * dma_fence_signal(). The section's cookie is kept with the lock.
 */
void qgpu_ring_lock(struct qgpu_device *qdev)
	__acquires(&qdev->ring_lock)
{
	bool cookie = qgpu_fence_begin_signalling();

	mutex_lock(&qdev->ring_lock);
	qdev->ring_lock_cookie = cookie;
}

void qgpu_ring_unlock(struct qgpu_device *qdev)
	__releases(&qdev->ring_lock)
{
	bool cookie = qdev->ring_lock_cookie;

	mutex_unlock(&qdev->ring_lock);
	qgpu_fence_end_signalling(cookie);
}

struct qgpu_job *qgpu_job_alloc(void)
{
	struct qgpu_job *job = kzalloc(sizeof(*job), GFP_KERNEL);

	if (job) {
		kref_init(&job->ref);
		INIT_LIST_HEAD(&job->node);
		job->dir = DMA_NONE;
	}
	return job;
}

/*
 * Undo the job's DMA mappings: with bounce buffers (swiotlb) this is what
 * copies the device's bytes into the user's pages. Before its fences are
 * signalled, then; it takes no sleeping lock and does not allocate with
 * reclaim (an IOMMU may refill its IOVA caches with GFP_ATOMIC).
 */
static void qgpu_job_unmap(struct qgpu_device *qdev, struct qgpu_job *job)
{
	struct device *dev = qdev->dev;

	if (job->page_mapped)
		dma_unmap_page_attrs(dev, job->page_dma, job->page_len,
				     job->dir, 0);
	job->page_mapped = false;
	/* dma_unmap_sgtable() unmaps orig_nents, as dma_unmap_sg() wants. */
	if (job->sgt_mapped)
		dma_unmap_sgtable(dev, &job->sgt, job->dir, 0);
	job->sgt_mapped = false;
}

/*
 * Undo DMA mappings, unpin pages, drop the BO; safe on partial setups and
 * when called again. Never under ring_lock once the job is submitted.
 */
static void qgpu_job_release_resources(struct qgpu_device *qdev,
				       struct qgpu_job *job)
{
	struct device *dev = qdev->dev;

	qgpu_job_unmap(qdev, job);
	if (job->sgt.sgl)
		sg_free_table(&job->sgt);
	job->sgt.sgl = NULL;
	if (job->sg_list)
		dma_free_coherent(dev, job->sg_list_size, job->sg_list,
				  job->sg_list_dma);
	job->sg_list = NULL;
	if (job->bounce)
		dma_free_coherent(dev, job->bounce_len, job->bounce,
				  job->bounce_dma);
	job->bounce = NULL;
	if (job->pages) {
		unpin_user_pages_dirty_lock(job->pages, job->npages,
					    job->dir == DMA_FROM_DEVICE);
		qgpu_stat_add(qdev, QGPU_STAT_PINNED_PAGES, -(s64)job->npages);
		kvfree(job->pages);
		job->pages = NULL;
	}
	if (job->bo)
		qgpu_bo_put(job->bo);
	job->bo = NULL;
}

/* The last reference: a submitted job's resources go with it. */
static void qgpu_job_free(struct kref *ref)
{
	struct qgpu_job *job = container_of(ref, struct qgpu_job, ref);

	if (job->qdev)
		qgpu_job_release_resources(job->qdev, job);
	kfree(job->bounce_out);
	kfree(job);
}

void qgpu_job_put(struct qgpu_job *job)
{
	kref_put(&job->ref, qgpu_job_free);
}

/*
 * The ring lets go of a retired job, under ring_lock: if its reference is
 * the last (nobody waits for the job), reap_work drops it.
 */
static void qgpu_job_put_ring(struct qgpu_device *qdev, struct qgpu_job *job)
{
	if (refcount_dec_not_one(&job->ref.refcount))
		return;
	llist_add(&job->reap_node, &qdev->reaped_jobs);
	queue_work(system_wq, &qdev->reap_work);
}

void qgpu_reap_work(struct work_struct *work)
{
	struct qgpu_device *qdev = container_of(work, struct qgpu_device,
						reap_work);
	struct qgpu_job *job, *tmp;

	llist_for_each_entry_safe(job, tmp, llist_del_all(&qdev->reaped_jobs),
				  reap_node)
		qgpu_job_put(job);
}

static void qgpu_job_finish(struct qgpu_device *qdev, struct qgpu_job *job)
{
	u32 mask = qdev->ring_entries - 1;
	u64 seq;

	lockdep_assert_held(&qdev->ring_lock);
	if (job->bounce && !job->hw_err) {
		/* The device wrote the data before the fence we read. */
		dma_rmb();
		memcpy(job->bounce_out, job->bounce, job->bounce_len);
	}
	qgpu_job_unmap(qdev, job);
	/* Every fence of the job reports the job's status to WAIT_FENCE. */
	for (seq = job->first_seq; seq <= job->last_seq; seq++) {
		qdev->fence_status[seq & mask].seq = seq;
		qdev->fence_status[seq & mask].err = job->hw_err;
		qdev->fence_status[seq & mask].timed_out = job->timed_out;
	}
	if (job->hw_err) {
		qdev->last_err_seq = max(qdev->last_err_seq, job->last_seq);
		qgpu_stat_inc(qdev, QGPU_STAT_HW_ERRORS);
		atomic64_set(&qdev->stats[QGPU_STAT_LAST_ERROR], job->hw_err);
		dev_dbg(qdev->dev, "job %llu failed: device error %u\n",
			job->last_seq, job->hw_err);
	} else if (job->op == QGPU_OP_COPY_TO_VRAM) {
		qgpu_stat_add(qdev, QGPU_STAT_BYTES_TO_VRAM, job->bytes);
	} else if (job->op == QGPU_OP_COPY_FROM_VRAM) {
		qgpu_stat_add(qdev, QGPU_STAT_BYTES_FROM_VRAM, job->bytes);
	}
	if (job->last_seq > qdev->retired_seq)
		WRITE_ONCE(qdev->retired_seq, job->last_seq);
	qgpu_fence_signal_upto(qdev, job->first_seq, job->last_seq,
			       qgpu_fence_errno(job->hw_err, job->timed_out));
	list_del_init(&job->node);
	/* Pairs with smp_load_acquire() in qgpu_job_wait(): results first. */
	smp_store_release(&job->done, true);
	qgpu_job_put_ring(qdev, job);
}

/* Retire, in order, every job whose last fence the device has written. */
void qgpu_retire_locked(struct qgpu_device *qdev)
{
	u32 mask = qdev->ring_entries - 1;
	struct qgpu_job *job, *tmp;
	bool any = false;
	u64 done;

	lockdep_assert_held(&qdev->ring_lock);
	done = qgpu_completed_seq(qdev);
	list_for_each_entry_safe(job, tmp, &qdev->inflight, node) {
		u32 i;

		if (job->last_seq > done)
			break;
		for (i = 0; i < job->ndesc; i++) {
			struct qgpu_desc *d = &qdev->ring[(job->first_idx + i) & mask];
			u32 st = le32_to_cpu(READ_ONCE(d->status));

			if (!(st & QGPU_DESC_STATUS_DONE))
				st = QGPU_ERR_ABORTED;
			st &= QGPU_DESC_STATUS_ERR_MASK;
			if (st && !job->hw_err)
				job->hw_err = st;
		}
		qgpu_job_finish(qdev, job);
		any = true;
	}
	if (any) {
		qdev->wd_replayed = false;	/* the engine makes progress */
		wake_up_all(&qdev->fence_wq);
	}
}

/*
 * Stop the engine (the device touches no memory afterwards), fail what is
 * still in flight (as timed out if @timed_out) and, if @restart, start
 * again on an empty ring. If BAR0 no longer answers, the reset may not
 * have reached the engine: bus mastering is switched off instead, so that
 * no DMA can hit the pages released here. Unless a PCIe error is being
 * recovered (a frozen link reads all ones until its reset), that also
 * makes the device lost: without bus mastering it cannot work again, and
 * it must not look alive if its registers answer later.
 */
static void qgpu_engine_abort_locked(struct qgpu_device *qdev, bool restart,
				     bool timed_out)
{
	struct qgpu_job *job, *tmp;

	lockdep_assert_held(&qdev->ring_lock);
	qgpu_wr(qdev, QGPU_REG_ENGINE_CTRL, 0);
	if (!qgpu_engine_reset(qdev)) {
		restart = false;	/* bus mastering is off: the device is lost */
		qgpu_mark_lost(qdev, "an engine reset did not complete");
	} else if (qgpu_hw_lost(qdev)) {
		pci_clear_master(qdev->pdev);
		restart = false;
		if (!READ_ONCE(qdev->frozen))
			qgpu_mark_lost(qdev, "registers read all ones at an engine reset");
	}
	qgpu_stat_inc(qdev, QGPU_STAT_ENGINE_RESETS);
	qgpu_retire_locked(qdev);
	list_for_each_entry_safe(job, tmp, &qdev->inflight, node) {
		if (!job->hw_err)
			job->hw_err = QGPU_ERR_ABORTED;
		job->timed_out = timed_out;
		qgpu_job_finish(qdev, job);
	}
	WRITE_ONCE(qdev->retired_seq, qdev->next_seq - 1);
	/* Every job has ended: no exported fence can still be waiting. */
	if (WARN_ON_ONCE(!list_empty(&qdev->fences)))
		qgpu_fence_signal_upto(qdev, 0, U64_MAX, -ECANCELED);
	WRITE_ONCE(qdev->halted, false);
	qdev->wd_replayed = false;
	if (restart)
		qgpu_ring_start(qdev);
	wake_up_all(&qdev->fence_wq);
}

/*
 * The watchdog found the engine stuck: reset it and fail the job it was
 * running, the first one not retired, as timed out. The jobs queued
 * behind it had not started -- the engine runs the ring in order -- and
 * their memory is still pinned and mapped: run them again from the start
 * of the ring, with their fences unchanged, rather than fail work that did
 * nothing wrong. If the engine has retired nothing since the last such
 * replay, the fault is not in one job: fail them all.
 */
static void qgpu_engine_reset_hung_locked(struct qgpu_device *qdev)
{
	u32 mask = qdev->ring_entries - 1, n, i, head, behind;
	struct qgpu_job *guilty, *job;
	struct qgpu_desc *saved;
	u64 first, last;

	lockdep_assert_held(&qdev->ring_lock);
	if (qdev->wd_replayed)
		goto fail_all;
	/*
	 * Stopped, the engine changes nothing that is read below. HEAD, read
	 * before the reset zeroes it, is the descriptor it was stuck on.
	 */
	qgpu_wr(qdev, QGPU_REG_ENGINE_CTRL, 0);
	head = qgpu_rd(qdev, QGPU_REG_RING_HEAD);
	if (!qgpu_engine_reset(qdev) || qgpu_hw_lost(qdev))
		goto fail_all;
	/* What finished before the reset keeps its result. */
	qgpu_retire_locked(qdev);
	guilty = list_first_entry_or_null(&qdev->inflight, struct qgpu_job,
					  node);
	if (!guilty || list_is_singular(&qdev->inflight))
		goto fail_all;
	/*
	 * Only if the engine was stuck inside that job and retired nothing
	 * behind it (a descriptor whose fence write failed retires without
	 * moving the fence) is the rest known not to have run.
	 */
	if (((head - guilty->first_idx) & mask) >= guilty->ndesc)
		goto fail_all;
	/* The jobs behind it fill the ring from its end to the tail. */
	behind = (guilty->first_idx + guilty->ndesc) & mask;
	n = (qdev->tail - behind) & mask;
	/*
	 * Allocated at probe: this path signals fences that other drivers may
	 * wait for from memory reclaim, so it must not allocate memory.
	 */
	saved = qdev->replay;
	for (i = 0; i < n; i++) {
		saved[i] = qdev->ring[(behind + i) & mask];
		if (le32_to_cpu(saved[i].status) & QGPU_DESC_STATUS_DONE)
			goto fail_all;
	}

	qgpu_stat_inc(qdev, QGPU_STAT_ENGINE_RESETS);
	first = guilty->first_seq;
	last = guilty->last_seq;
	/* Its first error: one its descriptors reported, else the abort. */
	for (i = 0; i < guilty->ndesc && !guilty->hw_err; i++) {
		struct qgpu_desc *d = &qdev->ring[(guilty->first_idx + i) & mask];
		u32 st = le32_to_cpu(READ_ONCE(d->status));

		if (st & QGPU_DESC_STATUS_DONE)
			guilty->hw_err = st & QGPU_DESC_STATUS_ERR_MASK;
	}
	if (!guilty->hw_err)
		guilty->hw_err = QGPU_ERR_ABORTED;
	guilty->timed_out = true;
	qgpu_job_finish(qdev, guilty);	/* its reference may pass to reap_work */

	qgpu_ring_start(qdev);		/* tail 0 */
	list_for_each_entry(job, &qdev->inflight, node)
		job->first_idx = (job->first_idx - behind) & mask;
	for (i = 0; i < n; i++) {
		qdev->ring[i] = saved[i];
		qdev->ring[i].status = 0;
	}
	qdev->tail = n;
	qgpu_stat_add(qdev, QGPU_STAT_DESCRIPTORS, n);	/* written again */
	qdev->wd_replayed = true;
	qdev->wd_seq = qgpu_completed_seq(qdev);
	qdev->wd_head = 0;
	qdev->wd_stamp = jiffies;
	dev_warn(qdev->dev,
		 "failed the hung job (fences %llu..%llu); running the %u descriptors queued behind it again\n",
		 first, last, n);
	/* writel() orders the descriptor stores before the doorbell. */
	qgpu_wr(qdev, QGPU_REG_DOORBELL, qdev->tail);
	wake_up_all(&qdev->fence_wq);
	return;

fail_all:
	qgpu_engine_abort_locked(qdev, true, true);
}

/* Stop the engine, fail what is in flight, and mask and ack its interrupts. */
static void qgpu_engine_silence_locked(struct qgpu_device *qdev)
{
	qgpu_engine_abort_locked(qdev, false, false);
	qgpu_wr(qdev, QGPU_REG_INT_MASK, 0);
	qgpu_wr(qdev, QGPU_REG_INT_STATUS, QGPU_INT_ALL);
}

/* Called by remove with qdev->dead set: quiesce the engine for good. */
void qgpu_ring_shutdown(struct qgpu_device *qdev)
{
	qgpu_ring_lock(qdev);
	qgpu_engine_silence_locked(qdev);
	qgpu_ring_unlock(qdev);
}

void qgpu_retire_work(struct work_struct *work)
{
	struct qgpu_device *qdev = container_of(work, struct qgpu_device,
						retire_work);

	qgpu_ring_lock(qdev);
	if (!READ_ONCE(qdev->dead))
		qgpu_retire_locked(qdev);
	qgpu_ring_unlock(qdev);
}

void qgpu_reset_work(struct work_struct *work)
{
	struct qgpu_device *qdev = container_of(work, struct qgpu_device,
						reset_work);

	qgpu_ring_lock(qdev);
	if (READ_ONCE(qdev->halted) && !qgpu_unusable(qdev)) {
		/*
		 * Another reset (the watchdog's, a PCIe recovery's) may have
		 * run since the interrupt: reset only an engine that is still
		 * halted, never one running the jobs submitted since.
		 */
		WRITE_ONCE(qdev->halted, false);
		/* A halt after the clear sets it again and requeues this work. */
		smp_mb();
		if (qgpu_rd(qdev, QGPU_REG_ENGINE_STATUS) &
		    QGPU_ENGINE_STATUS_HALTED) {
			dev_warn(qdev->dev,
				 "engine halted (error %u at ring index %u); resetting\n",
				 READ_ONCE(qdev->halt_err),
				 READ_ONCE(qdev->halt_index));
			qgpu_engine_abort_locked(qdev, true, false);
		}
	}
	qgpu_ring_unlock(qdev);
}

/*
 * PCIe error recovery, step 1: stop the engine and fail what is in flight
 * (-EIO, QGPU_ERR_ABORTED); new submissions fail with -EAGAIN until
 * qgpu_ring_restart().
 */
void qgpu_ring_quiesce(struct qgpu_device *qdev)
{
	qgpu_ring_lock(qdev);
	WRITE_ONCE(qdev->frozen, true);
	qgpu_engine_abort_locked(qdev, false, false);
	qgpu_ring_unlock(qdev);
	cancel_delayed_work_sync(&qdev->watchdog);
}

/*
 * System suspend: refuse new work (-EAGAIN, as while recovering), let the
 * jobs already queued finish -- for at most job_timeout_ms in all -- then
 * stop the engine, failing whatever did not (-EIO, QGPU_ERR_ABORTED), and
 * mask and acknowledge its interrupts. User space is frozen by now, but
 * asynchronous jobs may still be queued; interrupts are handled meanwhile
 * (@suspended, unlike @frozen, does not silence the handler). Returns how
 * many jobs were failed; *@drained says how many were queued at the start.
 */
int qgpu_ring_suspend(struct qgpu_device *qdev, int *drained)
{
	unsigned long deadline = jiffies +
				 msecs_to_jiffies(READ_ONCE(job_timeout_ms));
	int failed = 0;

	WRITE_ONCE(qdev->suspended, true);
	*drained = -1;
	for (;;) {
		bool idle;

		qgpu_ring_lock(qdev);
		qgpu_retire_locked(qdev);
		if (*drained < 0)
			*drained = list_count_nodes(&qdev->inflight);
		idle = list_empty(&qdev->inflight);
		if (idle || time_after(jiffies, deadline) || qgpu_hw_lost(qdev)) {
			failed = list_count_nodes(&qdev->inflight);
			qgpu_engine_silence_locked(qdev);
			qgpu_ring_unlock(qdev);
			break;
		}
		qgpu_ring_unlock(qdev);
		wait_event_timeout(qdev->fence_wq, READ_ONCE(qdev->lost),
				   msecs_to_jiffies(QGPU_POLL_MS));
	}
	cancel_delayed_work_sync(&qdev->watchdog);
	cancel_work_sync(&qdev->retire_work);
	cancel_work_sync(&qdev->reset_work);
	*drained -= failed;
	return failed;
}

/* System resume: the device came back reset; an empty ring from index 0. */
void qgpu_ring_resume(struct qgpu_device *qdev)
{
	qgpu_ring_lock(qdev);
	if (!READ_ONCE(qdev->dead) && !READ_ONCE(qdev->lost))
		qgpu_engine_abort_locked(qdev, true, false);
	WRITE_ONCE(qdev->suspended, false);
	qgpu_ring_unlock(qdev);
	wake_up_all(&qdev->fence_wq);
}

/* PCIe error recovery, last step: program the ring again and accept work. */
void qgpu_ring_restart(struct qgpu_device *qdev)
{
	qgpu_ring_lock(qdev);
	if (!READ_ONCE(qdev->dead) && !READ_ONCE(qdev->lost)) {
		/* The link is back: from here, all ones means a lost device. */
		WRITE_ONCE(qdev->frozen, false);
		/* Nothing is in flight: the ring starts empty at index 0. */
		qgpu_engine_abort_locked(qdev, true, false);
	}
	qgpu_ring_unlock(qdev);
	wake_up_all(&qdev->fence_wq);
}

/*
 * DMA timeout detection. While jobs are queued, sample the fence and the
 * ring head; if neither moved for job_timeout_ms, the engine is hung (or
 * the device stopped answering): reset it, failing the queued jobs.
 */
void qgpu_watchdog_work(struct work_struct *work)
{
	struct qgpu_device *qdev = container_of(to_delayed_work(work),
						struct qgpu_device, watchdog);
	unsigned long limit = msecs_to_jiffies(READ_ONCE(job_timeout_ms));
	u64 seq;
	u32 head;

	qgpu_irq_resync(qdev);
	qgpu_ring_lock(qdev);
	if (qgpu_unusable(qdev))
		goto out_unlock;
	qgpu_retire_locked(qdev);
	if (list_empty(&qdev->inflight))
		goto out_unlock;
	if (qgpu_hw_lost(qdev)) {
		qgpu_ring_unlock(qdev);
		qgpu_mark_lost(qdev, "registers read all ones");
		return;
	}
	seq = qgpu_completed_seq(qdev);
	head = qgpu_rd(qdev, QGPU_REG_RING_HEAD);
	if (seq != qdev->wd_seq || head != qdev->wd_head) {
		qdev->wd_seq = seq;
		qdev->wd_head = head;
		qdev->wd_stamp = jiffies;
	} else if (time_after(jiffies, qdev->wd_stamp + limit)) {
		dev_warn(qdev->dev,
			 "DMA engine made no progress for %u ms (head %u, fence %llu, status %#x); resetting\n",
			 jiffies_to_msecs(jiffies - qdev->wd_stamp), head, seq,
			 qgpu_rd(qdev, QGPU_REG_ENGINE_STATUS));
		qgpu_stat_inc(qdev, QGPU_STAT_TIMEOUTS);
		qgpu_stat_inc(qdev, QGPU_STAT_WATCHDOG_RESETS);
		qgpu_engine_reset_hung_locked(qdev);
		if (list_empty(&qdev->inflight))
			goto out_unlock;
	}
	queue_delayed_work(system_wq, &qdev->watchdog, qgpu_wd_period());
out_unlock:
	qgpu_ring_unlock(qdev);
}

/*
 * Whether @n more descriptors fit. At most ring_entries - 1 may be
 * outstanding, as the driver counts them (unretired). The device, though,
 * writes a descriptor's fence before it moves HEAD past it, so HEAD may
 * still point at one the driver has retired: a doorbell that moved TAIL
 * onto HEAD then would be refused (spec 3.1). Only when the ring is that
 * full does the device's own count, from RING_HEAD, decide.
 */
static bool qgpu_ring_has_room(struct qgpu_device *qdev, u32 n)
{
	u32 used = qdev->next_seq - 1 - qdev->retired_seq;
	u32 mask = qdev->ring_entries - 1;
	u32 head;

	if (used + n < mask)
		return true;
	if (used + n > mask)
		return false;
	head = qgpu_rd(qdev, QGPU_REG_RING_HEAD);
	if (head > mask)
		return false;
	return ((qdev->tail - head) & mask) + n <= mask;
}

/*
 * Queue @n descriptors (@descs, little-endian, fence fields filled in here)
 * as one job. On success the ring holds a reference to @job until it
 * retires (reap_work drops it if it is the last). Submitters queue in the
 * order they came (submit_lock). Fails with -ENODEV once the device is
 * gone, -EINTR on a fatal signal while waiting for ring space or for
 * earlier submitters (other signals do not interrupt submission: see
 * qgpu_job_wait()); nothing is submitted then
 * and the job's resources (mappings, pins, BO reference) have been
 * released.
 */
int qgpu_submit(struct qgpu_device *qdev, struct qgpu_job *job,
		struct qgpu_desc *descs, u32 n)
{
	u32 mask = qdev->ring_entries - 1;
	u32 i;

	if (!n || n > qdev->ring_entries - 1) {
		qgpu_job_release_resources(qdev, job);
		return -EINVAL;
	}

	if (mutex_lock_killable(&qdev->submit_lock)) {
		qgpu_job_release_resources(qdev, job);
		return -EINTR;
	}
	qgpu_ring_lock(qdev);
	for (;;) {
		u64 retired;
		long ret;

		long err = qgpu_unusable(qdev);

		if (!err && qgpu_hw_lost(qdev)) {
			qgpu_ring_unlock(qdev);
			qgpu_mark_lost(qdev, "registers read all ones");
			qgpu_ring_lock(qdev);
			err = -ENODEV;
		}
		if (err) {
			qgpu_ring_unlock(qdev);
			mutex_unlock(&qdev->submit_lock);
			qgpu_job_release_resources(qdev, job);
			return err;
		}
		qgpu_retire_locked(qdev);
		if (!READ_ONCE(qdev->halted) && qgpu_ring_has_room(qdev, n))
			break;
		retired = qdev->retired_seq;
		qgpu_ring_unlock(qdev);
		/* Room comes as jobs retire (or the watchdog fails them). */
		ret = wait_event_killable_timeout(qdev->fence_wq,
				qgpu_completed_seq(qdev) > retired ||
				qgpu_unusable(qdev),
				msecs_to_jiffies(QGPU_POLL_MS));
		if (ret < 0) {
			mutex_unlock(&qdev->submit_lock);
			qgpu_job_release_resources(qdev, job);
			return -EINTR;
		}
		qgpu_ring_lock(qdev);
	}

	job->first_seq = qdev->next_seq;
	job->first_idx = qdev->tail;
	job->ndesc = n;
	for (i = 0; i < n; i++) {
		struct qgpu_desc *d = &qdev->ring[qdev->tail];
		u32 flags = le32_to_cpu(descs[i].flags) | QGPU_DESC_F_FENCE;

		if (i == n - 1)
			flags |= QGPU_DESC_F_IRQ;
		*d = descs[i];
		d->flags = cpu_to_le32(flags);
		d->fence_addr = cpu_to_le64(qdev->fence_dma);
		d->fence_value = cpu_to_le64(qdev->next_seq);
		d->status = 0;
		d->reserved = 0;
		if (flags & QGPU_DESC_F_SG)
			qgpu_stat_inc(qdev, QGPU_STAT_SG_DESCRIPTORS);
		qdev->next_seq++;
		qdev->tail = (qdev->tail + 1) & mask;
	}
	job->last_seq = qdev->next_seq - 1;
	job->qdev = qdev;	/* its resources are released with it from now */
	if (job->fence_pre) {
		job->fence = qgpu_fence_publish_locked(qdev, job->last_seq,
						       job->fence_pre);
		job->fence_pre = NULL;
	}
	kref_get(&job->ref);
	if (list_empty(&qdev->inflight)) {
		/* The watchdog measures progress from here. */
		qdev->wd_seq = qgpu_completed_seq(qdev);
		qdev->wd_head = qgpu_rd(qdev, QGPU_REG_RING_HEAD);
		qdev->wd_stamp = jiffies;
		queue_delayed_work(system_wq, &qdev->watchdog, qgpu_wd_period());
	}
	list_add_tail(&job->node, &qdev->inflight);
	qgpu_stat_inc(qdev, QGPU_STAT_JOBS);
	qgpu_stat_add(qdev, QGPU_STAT_DESCRIPTORS, n);
	/* writel() orders the descriptor stores before the doorbell. */
	qgpu_wr(qdev, QGPU_REG_DOORBELL, qdev->tail);
	qgpu_ring_unlock(qdev);
	mutex_unlock(&qdev->submit_lock);
	return 0;
}

/* Interrupts handled so far (completion and error vectors). */
static s64 qgpu_irq_count(struct qgpu_device *qdev)
{
	return atomic64_read(&qdev->stats[QGPU_STAT_IRQ_DMA]) +
	       atomic64_read(&qdev->stats[QGPU_STAT_IRQ_ERROR]);
}

/*
 * Done, or its fence passed (to be retired here). A device that is gone,
 * lost or recovering fails its jobs (qgpu_engine_abort_locked(), from
 * remove, the lost work or quiesce), which also sets @done.
 */
static bool qgpu_job_waited(struct qgpu_device *qdev, struct qgpu_job *job)
{
	return qgpu_seq_passed(qdev, job->last_seq) || READ_ONCE(job->done);
}

/*
 * Wait for a submitted job to retire: a synchronous ioctl returns only
 * when the device has finished with the caller's memory, its DMA mappings
 * are torn down (bounce buffers copied back) and its pages unpinned.
 * Signals therefore do not interrupt it -- an ioctl that returned -EINTR
 * while the device went on writing into the caller's buffer would be worse
 * -- and a fatal one does not either: the job is waited for all the same,
 * in uninterruptible sleep. There is no deadline of its own: a long job
 * that makes progress is waited for, and an engine that makes none for
 * job_timeout_ms is reset by the watchdog, which fails the job as timed
 * out (-ETIMEDOUT). Every sleep is short (QGPU_POLL_MS), so the hung-task
 * detector never mistakes a long job for a stuck task.
 */
int qgpu_job_wait(struct qgpu_device *qdev, struct qgpu_job *job)
{
	s64 irqs = qgpu_irq_count(qdev);

	/* Pairs with smp_store_release() in qgpu_job_finish(). */
	while (!smp_load_acquire(&job->done)) {
		if (fatal_signal_pending(current))
			wait_event_timeout(qdev->fence_wq,
					   qgpu_job_waited(qdev, job),
					   msecs_to_jiffies(QGPU_POLL_MS));
		else
			wait_event_killable_timeout(qdev->fence_wq,
					qgpu_job_waited(qdev, job),
					msecs_to_jiffies(QGPU_POLL_MS));
		if (qgpu_seq_passed(qdev, job->last_seq) &&
		    qgpu_irq_count(qdev) == irqs) {
			/*
			 * Done without any interrupt: if its message was lost,
			 * the cause is still set and, being an edge, blocks
			 * every later message until acknowledged.
			 */
			qgpu_stat_inc(qdev, QGPU_STAT_POLL_COMPLETIONS);
			qgpu_irq_resync(qdev);
		}

		qgpu_ring_lock(qdev);
		qgpu_retire_locked(qdev);
		qgpu_ring_unlock(qdev);
	}
	/* The caller's memory is its own again when the ioctl returns. */
	qgpu_job_release_resources(qdev, job);
	if (job->timed_out)
		return -ETIMEDOUT;
	if (job->hw_err == QGPU_ERR_ABORTED &&
	    (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost)))
		return -ENODEV;
	return job->hw_err ? -EIO : 0;
}

/*
 * Status of a retired @fence: 0, or -EIO with its QGPU_ERR_* in @hw_status.
 * A slot overwritten by a newer fence has forgotten it: that is still known
 * to be a success if no job failed since, and -ESTALE otherwise.
 */
int qgpu_fence_status(struct qgpu_device *qdev, u64 fence, u32 *hw_status,
		      bool *timed_out)
{
	const struct qgpu_fence_status *fs;

	lockdep_assert_held(&qdev->ring_lock);
	fs = &qdev->fence_status[fence & (qdev->ring_entries - 1)];
	if (fs->seq == fence) {
		*hw_status = fs->err;
		if (timed_out)
			*timed_out = fs->timed_out;
		return fs->err ? -EIO : 0;
	}
	return fence > qdev->last_err_seq ? 0 : -ESTALE;
}

int qgpu_fence_wait(struct qgpu_device *qdev, u64 fence, u64 timeout_ns,
		    u32 *hw_status, u64 *completed)
{
	ktime_t deadline = ktime_add_safe(ktime_get(),
					  ns_to_ktime(min_t(u64, timeout_ns,
							    KTIME_MAX)));
	s64 irqs = qgpu_irq_count(qdev);

	qgpu_ring_lock(qdev);
	if (fence >= qdev->next_seq) {
		qgpu_ring_unlock(qdev);
		return -EINVAL;
	}
	qgpu_ring_unlock(qdev);

	for (;;) {
		s64 left;
		long ret;

		qgpu_ring_lock(qdev);
		qgpu_retire_locked(qdev);
		/* Retired: its status is known (the fence slot runs ahead). */
		*completed = qdev->retired_seq;
		if (*completed >= fence) {
			ret = fence ? qgpu_fence_status(qdev, fence, hw_status,
							NULL) : 0;
			qgpu_ring_unlock(qdev);
			/*
			 * Jobs nobody waited for let go of their BOs in
			 * reap_work: done before we say the fence is, so
			 * that a BO destroyed next is freed at once.
			 */
			flush_work(&qdev->reap_work);
			return ret;
		}
		qgpu_ring_unlock(qdev);
		if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost))
			return -ENODEV;
		left = ktime_to_ns(ktime_sub(deadline, ktime_get()));
		if (left <= 0)
			return -ETIMEDOUT;
		ret = wait_event_interruptible_timeout(qdev->fence_wq,
				qgpu_seq_passed(qdev, fence) ||
				READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost),
				min_t(long, nsecs_to_jiffies(left) + 1,
				      msecs_to_jiffies(QGPU_POLL_MS)));
		if (ret < 0)
			return -EINTR;
		if (qgpu_seq_passed(qdev, fence) && qgpu_irq_count(qdev) == irqs)
			qgpu_irq_resync(qdev);
	}
}

/* ---- user memory <-> VRAM ------------------------------------------------ */

static void qgpu_desc_guest(struct qgpu_desc *d, u32 op, u64 guest,
			    u64 vram, u64 len)
{
	memset(d, 0, sizeof(*d));
	d->opcode = cpu_to_le32(op);
	d->length = cpu_to_le64(len);
	if (op == QGPU_OP_COPY_TO_VRAM) {
		d->src = cpu_to_le64(guest);
		d->dst = cpu_to_le64(vram);
	} else {
		d->src = cpu_to_le64(vram);
		d->dst = cpu_to_le64(guest);
	}
}

/*
 * Entries of the device SG list for @len bytes from byte @skip of the DMA
 * segments of @sgt; 0 if the segments end first.
 */
u32 qgpu_sg_range_entries(struct sg_table *sgt, u64 skip, u64 len)
{
	struct scatterlist *sg;
	unsigned int i;
	u32 n = 0;

	for_each_sgtable_dma_sg(sgt, sg, i) {
		u64 seg = sg_dma_len(sg);

		if (skip >= seg) {
			skip -= seg;
			continue;
		}
		n++;
		if (len <= seg - skip)
			return n;
		len -= seg - skip;
		skip = 0;
	}
	return 0;
}

/*
 * Build the device SG list for @len bytes from byte @skip of the DMA
 * segments of @sgt (mapped for the device): @nents entries
 * (qgpu_sg_range_entries()), one descriptor per @sg_max of them, each
 * covering the VRAM range its entries add up to. @descs has room for
 * DIV_ROUND_UP(@nents, @sg_max). Returns the descriptors built.
 */
int qgpu_build_sg_descs(struct qgpu_device *qdev, struct qgpu_job *job,
			u32 op, struct sg_table *sgt, u64 skip, u64 len,
			u32 nents, u64 vram_offset, struct qgpu_desc *descs,
			u32 sg_max)
{
	struct scatterlist *sg;
	u32 ndesc = 0, in_desc = 0, n = 0;
	u64 desc_len = 0, vram = vram_offset;
	unsigned int i;

	job->sg_list_size = array_size(nents, sizeof(struct qgpu_sg_entry));
	job->sg_list = qgpu_dma_alloc(qdev->dev, job->sg_list_size,
				      &job->sg_list_dma, 0);
	if (!job->sg_list)
		return -ENOMEM;

	for_each_sgtable_dma_sg(sgt, sg, i) {
		u64 seg = sg_dma_len(sg), take;

		if (skip >= seg) {
			skip -= seg;
			continue;
		}
		/* At most QGPU_MAX_XFER: fits the entry's 32 bits. */
		take = min(seg - skip, len);
		job->sg_list[n].addr = cpu_to_le64(sg_dma_address(sg) + skip);
		job->sg_list[n].len = cpu_to_le32(take);
		job->sg_list[n].reserved = 0;
		skip = 0;
		len -= take;
		desc_len += take;
		in_desc++;
		n++;
		if (in_desc == sg_max || n == nents) {
			dma_addr_t list = job->sg_list_dma +
				(u64)(n - in_desc) * QGPU_SG_ENTRY_SIZE;

			qgpu_desc_guest(&descs[ndesc], op, list, vram, desc_len);
			descs[ndesc].flags = cpu_to_le32(QGPU_DESC_F_SG);
			descs[ndesc].sg_count = cpu_to_le32(in_desc);
			ndesc++;
			vram += desc_len;
			desc_len = 0;
			in_desc = 0;
		}
		if (n == nents)
			break;
	}
	qgpu_stat_add(qdev, QGPU_STAT_SG_ENTRIES, nents);
	return ndesc;
}

/* SG entries per descriptor: the device's limit, or the test override. */
u32 qgpu_sg_max(struct qgpu_device *qdev)
{
	u32 sg_max = min_t(u32, qgpu_rd(qdev, QGPU_REG_SG_MAX_ENTRIES),
			   QGPU_SG_MAX_ENTRIES);
	u32 limit = READ_ONCE(sg_max_entries);

	if (limit)
		sg_max = min(sg_max, limit);
	return max(sg_max, 1U);
}

/*
 * A device write into memory must not share a cache line with anything
 * else written meanwhile, by the CPU or by another mapping: where DMA is not
 * coherent, the invalidation of the line drops those writes, and DMA-API
 * debugging refuses two such mappings of one line on every platform
 * ("cacheline tracking EEXIST"; it tracks L1 lines).
 */
static unsigned int qgpu_dma_line(void)
{
	return max_t(unsigned int, dma_get_cache_alignment(), L1_CACHE_BYTES);
}

/*
 * Part of one cache line, copied from VRAM: the device writes a bounce
 * buffer, and the caller copies what it wrote to user memory once the job
 * is over (job->bounce_out, kept when the job retires).
 */
static int qgpu_bounce_prepare(struct qgpu_device *qdev, struct qgpu_job *job,
			       u64 vram_offset, u64 len,
			       struct qgpu_desc **descs)
{
	job->bounce_out = kmalloc(len, GFP_KERNEL);
	*descs = kzalloc(sizeof(**descs), GFP_KERNEL);
	if (!job->bounce_out || !*descs)
		return -ENOMEM;
	job->bounce_len = len;
	job->bounce = qgpu_dma_alloc(qdev->dev, len, &job->bounce_dma, 0);
	if (!job->bounce)
		return -ENOMEM;
	qgpu_desc_guest(*descs, QGPU_OP_COPY_FROM_VRAM, job->bounce_dma,
			vram_offset, len);
	qgpu_stat_inc(qdev, QGPU_STAT_LINE_BOUNCES);
	return 0;
}

/*
 * One chunk of a user copy: pin, then map, submit as one job and wait.
 * Updates the fence, hw_status and nr_segments of @a; @sg_max is what the
 * chunk was sized for. Pinning may wait on user space (userfaultfd, FUSE)
 * for as long as it likes, so it happens before the device's SRCU read
 * section, which remove waits for; so does the copy out of a @bounce
 * buffer, which replaces pinning for part of a cache line.
 */
static int qgpu_copy_user_chunk(struct qgpu_device *qdev,
				struct qgpu_copy_user *a, u64 uptr,
				u64 vram_offset, u64 len, u32 sg_max,
				bool bounce)
{
	struct device *dev = qdev->dev;
	struct qgpu_desc *descs = NULL;
	unsigned int off, nsegs, max_seg;
	struct qgpu_job *job;
	u32 ndesc;
	long pinned;
	int ret, idx;

	job = qgpu_job_alloc();
	if (!job)
		return -ENOMEM;
	job->op = a->op;
	job->bytes = len;
	job->dir = a->op == QGPU_OP_COPY_TO_VRAM ? DMA_TO_DEVICE : DMA_FROM_DEVICE;
	if (bounce)
		goto submit;
	off = offset_in_page(uptr);
	job->npages = DIV_ROUND_UP(off + len, PAGE_SIZE);
	job->pages = kvmalloc_array(job->npages, sizeof(*job->pages),
				    GFP_KERNEL);
	if (!job->pages) {
		ret = -ENOMEM;
		goto out_put;
	}
	/* Short-term pins: released once the job is waited for. */
	pinned = qgpu_pin_user_pages(uptr & PAGE_MASK, job->npages,
				     job->dir == DMA_FROM_DEVICE ? FOLL_WRITE : 0,
				     job->pages);
	if (pinned != job->npages) {
		if (pinned > 0)
			unpin_user_pages(job->pages, pinned);
		kvfree(job->pages);
		job->pages = NULL;
		/*
		 * The kernel's reason (-ENOMEM, -EFAULT, ...); short: not mapped.
		 * GUP's -EAGAIN/-EINTR mean a fatal signal, not "try again".
		 */
		ret = pinned >= 0 ? -EFAULT :
		      pinned == -EAGAIN ? -EINTR : pinned;
		goto out_put;
	}
	qgpu_stat_add(qdev, QGPU_STAT_PINNED_PAGES, job->npages);

submit:
	idx = srcu_read_lock(&qdev->srcu);
	ret = qgpu_unusable(qdev);
	if (ret) {
		qgpu_job_release_resources(qdev, job);
		goto out_unlock;
	}
	if (bounce) {
		ret = qgpu_bounce_prepare(qdev, job, vram_offset, len, &descs);
		if (ret)
			goto out_release;
		ndesc = 1;
		nsegs = 1;
	} else if (job->npages == 1 && !(a->flags & QGPU_SUBMIT_F_FORCE_SG)) {
		descs = kzalloc(sizeof(*descs), GFP_KERNEL);
		if (!descs) {
			ret = -ENOMEM;
			goto out_release;
		}
		ret = qgpu_dma_map_user_page(dev, job->pages[0], off, len,
					     job->dir, &job->page_dma);
		if (ret)
			goto out_release;
		job->page_len = len;
		job->page_mapped = true;
		qgpu_stat_inc(qdev, QGPU_STAT_SINGLE_PAGE_MAPS);
		qgpu_desc_guest(descs, a->op, job->page_dma, vram_offset, len);
		ndesc = 1;
		nsegs = 1;
	} else {
		/* Segments must also fit a bounce buffer (swiotlb). */
		max_seg = min_t(size_t, dma_get_max_seg_size(dev),
				dma_max_mapping_size(dev));
		max_seg = max_t(unsigned int, max_seg & PAGE_MASK, PAGE_SIZE);
		ret = sg_alloc_table_from_pages_segment(&job->sgt, job->pages,
				job->npages, off, len, max_seg, GFP_KERNEL);
		if (ret) {
			job->sgt.sgl = NULL;
			goto out_release;
		}
		ret = qgpu_dma_map_user_sgt(dev, &job->sgt, job->dir, 0);
		if (ret)
			goto out_release;
		job->sgt_mapped = true;
		nsegs = job->sgt.nents;
		descs = kcalloc(DIV_ROUND_UP(nsegs, sg_max), sizeof(*descs),
				GFP_KERNEL);
		if (!descs) {
			ret = -ENOMEM;
			goto out_release;
		}
		if (nsegs == 1 && !(a->flags & QGPU_SUBMIT_F_FORCE_SG)) {
			qgpu_desc_guest(descs, a->op,
					sg_dma_address(job->sgt.sgl),
					vram_offset, len);
			ndesc = 1;
		} else {
			ret = qgpu_build_sg_descs(qdev, job, a->op, &job->sgt,
						  0, len, nsegs, vram_offset,
						  descs, sg_max);
			if (ret < 0)
				goto out_release;
			ndesc = ret;
		}
	}

	ret = qgpu_submit(qdev, job, descs, ndesc);
	if (ret)
		goto out_unlock;
	ret = qgpu_job_wait(qdev, job);
	a->fence = job->last_seq;
	a->hw_status = job->hw_err;
	a->nr_segments += nsegs;
	goto out_unlock;

out_release:
	/* Mapping failures are resource limits (e.g. bounce buffers). */
	if (ret == -EIO)
		ret = -ENOMEM;
	qgpu_job_release_resources(qdev, job);
out_unlock:
	srcu_read_unlock(&qdev->srcu, idx);
	/* Outside the section: the copy may wait on user space. */
	if (!ret && bounce &&
	    copy_to_user(u64_to_user_ptr(uptr), job->bounce_out, len))
		ret = -EFAULT;
out_put:
	kfree(descs);
	qgpu_job_put(job);
	return ret;
}

/*
 * One job that copies @len bytes at @skip of a DMA-mapped table (a dma-buf
 * importer's, a registered user buffer's) to or from VRAM, submitted and
 * waited for, inside the device's SRCU read section. @counter counts it;
 * its segments, fence and status are reported as they become known.
 */
int qgpu_copy_sgt(struct qgpu_device *qdev, u32 op, struct sg_table *sgt,
		  u64 skip, u64 len, u64 vram_offset, enum qgpu_stat counter,
		  u32 *nr_segments, u64 *fence, u32 *hw_status)
{
	struct qgpu_desc *descs;
	struct qgpu_job *job;
	u32 nents, ndesc, sg_max = qgpu_sg_max(qdev);
	int ret;

	nents = qgpu_sg_range_entries(sgt, skip, len);
	if (!nents)
		return -EINVAL;	/* the table maps less than the range */
	if (DIV_ROUND_UP(nents, sg_max) > qdev->ring_entries - 1)
		return -E2BIG;
	descs = kcalloc(DIV_ROUND_UP(nents, sg_max), sizeof(*descs), GFP_KERNEL);
	job = qgpu_job_alloc();
	if (!descs || !job) {
		ret = -ENOMEM;
		goto out;
	}
	job->op = op;
	job->bytes = len;
	ret = qgpu_build_sg_descs(qdev, job, op, sgt, skip, len, nents,
				  vram_offset, descs, sg_max);
	if (ret < 0)
		goto out;
	ndesc = ret;
	*nr_segments = nents;
	/* qgpu_submit() frees the job's SG list if it fails. */
	ret = qgpu_submit(qdev, job, descs, ndesc);
	if (ret)
		goto out;
	qgpu_stat_inc(qdev, counter);
	ret = qgpu_job_wait(qdev, job);
	*fence = job->last_seq;
	*hw_status = job->hw_err;
out:
	kfree(descs);
	if (job)
		qgpu_job_put(job);
	return ret;
}

/*
 * The arguments every copy between guest memory and VRAM shares (COPY_USER,
 * COPY_DMABUF, COPY_USERPTR), in the order their errors take precedence: writing VRAM
 * needs a file opened for writing (see qgpu_ioctl()), then the call's own
 * fields (@fields_ok), the direction and a length, at most QGPU_MAX_XFER,
 * inside VRAM.
 */
int qgpu_copy_args_check(struct qgpu_file *qf, u32 op, u64 vram_offset,
			 u64 length, bool fields_ok)
{
	u64 end;

	if (op == QGPU_OP_COPY_TO_VRAM && !qf->writable)
		return -EBADF;
	if (!fields_ok ||
	    (op != QGPU_OP_COPY_TO_VRAM && op != QGPU_OP_COPY_FROM_VRAM) ||
	    !length)
		return -EINVAL;
	if (length > QGPU_MAX_XFER)
		return -E2BIG;
	if (check_add_overflow(vram_offset, length, &end) ||
	    end > qf->qdev->vram_size)
		return -EINVAL;
	return 0;
}

/*
 * QGPU_IOCTL_COPY_USER. Called outside the device's SRCU read section:
 * each chunk enters it once its pages are pinned.
 */
long qgpu_ioctl_copy_user(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_copy_user *a = call->args;
	u64 end, done = 0, chunk;
	unsigned int line;
	int ret = 0, idx;
	u32 sg_max;

	ret = qgpu_copy_args_check(qf, a->op, a->vram_offset, a->length,
				   !a->reserved[0] && !a->reserved[1] &&
				   !(a->flags & ~QGPU_SUBMIT_F_FORCE_SG));
	if (ret)
		return ret;
	if (check_add_overflow(a->user_ptr, a->length, &end) ||
	    a->user_ptr != (unsigned long)a->user_ptr)
		return -EINVAL;

	/*
	 * Chunks bound the pinned memory and the bounce-buffer space of one
	 * job; a chunk ends on a page boundary of the user buffer.
	 */
	idx = srcu_read_lock(&qdev->srcu);
	ret = qgpu_unusable(qdev);
	if (!ret)
		sg_max = qgpu_sg_max(qdev);
	srcu_read_unlock(&qdev->srcu, idx);
	if (ret)
		return ret;
	chunk = max_t(u64, round_down((u64)READ_ONCE(xfer_chunk_kb) << 10,
				      PAGE_SIZE), PAGE_SIZE);
	/* A chunk's pages, one segment at worst each, must fit the ring. */
	chunk = min_t(u64, chunk, (u64)(qdev->ring_entries - 1) *
			   sg_max * PAGE_SIZE);
	a->fence = 0;
	a->hw_status = 0;
	a->nr_segments = 0;
	line = qgpu_dma_line();
	while (done < a->length) {
		u64 uptr = a->user_ptr + done;
		u64 n = min(a->length - done, chunk - offset_in_page(uptr));
		u64 head = uptr & (line - 1), tail = (uptr + n) & (line - 1);
		bool bounce = false;

		/*
		 * From VRAM, a partial cache line at either end of the buffer
		 * is a chunk of its own, through a bounce buffer: neighbouring
		 * bytes may be someone else's (qgpu_dma_line()).
		 */
		if (a->op == QGPU_OP_COPY_FROM_VRAM && head) {
			n = min_t(u64, n, line - head);
			bounce = true;
		} else if (a->op == QGPU_OP_COPY_FROM_VRAM && tail) {
			if (n > tail)
				n -= tail;	/* whole lines now, the rest next */
			else
				bounce = true;
		}

		/* A dying caller stops between chunks, never inside one. */
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		ret = qgpu_copy_user_chunk(qdev, a, uptr, a->vram_offset + done, n,
					   sg_max, bounce);
		if (ret)
			break;
		done += n;
	}
	/* The fence of the last chunk that ran, whatever the result. */
	call->copy_out = a->fence != 0;
	return ret;
}
