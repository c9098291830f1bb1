// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: job completion as dma_fences, exported to user space as sync_files
 * (QGPU_IOCTL_FENCE_EXPORT).
 *
 * A uapi fence value is the seqno of a dma_fence on the device's fence
 * context. The dma_fence is made when it is first exported -- as a
 * sync_file, or by qgpu_submit() for a job on a BO (COPY_BO), whose
 * dma_resv gets it (qgpu_bo_resv_begin()) -- not for every job: while
 * pending it waits on qdev->fences (in seqno order, one per seqno, under
 * ring_lock, holding a reference), so later exports of the same fence
 * share it and the list holds at most a ring's worth, until
 * qgpu_job_finish() retires its job and signals it with the job's result.
 * Jobs retire in order, so fences of one context signal in seqno order, as
 * dma_fence requires. Every path that ends a job -- completion, an engine
 * reset, PCIe recovery, a lost device, removal -- goes through
 * qgpu_job_finish(), so no exported fence is left pending by a device that
 * will not complete it.
 *
 * The cross-driver signalling rules hold (another driver may wait for a
 * fence in a dma_resv from its reclaim path): on the way to
 * dma_fence_signal(), that is anywhere under ring_lock, nothing
 * allocates, waits for a fence, takes a page lock or frees a BO; a job's
 * pins and references are let go after its fences are signalled, outside
 * the lock (qgpu_ring.c). ring_lock is taken inside a
 * dma_fence_begin_signalling() section, so lockdep checks it.
 */

#include <linux/dma-fence.h>
#include <linux/file.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/sync_file.h>

#include "qgpu_drv.h"

#if IS_ENABLED(CONFIG_SYNC_FILE)

struct qgpu_fence {
	struct dma_fence base;		/* first: freed as the whole object */
	spinlock_t lock;		/* the dma_fence's */
	struct list_head node;		/* qdev->fences while pending */
	/*
	 * The timeline's name, copied: the last reference to a fence may go
	 * in any context (an importer's callback, a fence array's irq_work),
	 * and freeing the device sleeps, so a fence does not hold it.
	 */
	char timeline[sizeof_field(struct qgpu_device, name)];
};
static_assert(offsetof(struct qgpu_fence, base) == 0);

static struct qgpu_fence *to_qgpu_fence(struct dma_fence *f)
{
	return container_of(f, struct qgpu_fence, base);
}

static const char *qgpu_fence_driver_name(struct dma_fence *f)
{
	return "qgpu";
}

static const char *qgpu_fence_timeline_name(struct dma_fence *f)
{
	return to_qgpu_fence(f)->timeline;
}

static void qgpu_fence_free_rcu(struct rcu_head *rcu)
{
	struct dma_fence *f = container_of(rcu, struct dma_fence, rcu);

	kfree(to_qgpu_fence(f));
	module_put(THIS_MODULE);
}

/*
 * A fence holds this module, where its ops are: rmmod fails while one is
 * referenced (an open sync_file, say) instead of leaving it with ops in
 * freed memory. The reference goes in an RCU callback, after RCU readers
 * of the fence are done, and qgpu_exit() waits for those callbacks to
 * return (rcu_barrier()), so no CPU is still in this module's text when
 * its memory is freed. Any context.
 */
static void qgpu_fence_release(struct dma_fence *f)
{
	call_rcu_hurry(&f->rcu, qgpu_fence_free_rcu);
}

static const struct dma_fence_ops qgpu_fence_ops = {
	.use_64bit_seqno = true,	/* uapi fences are 64-bit */
	.get_driver_name = qgpu_fence_driver_name,
	.get_timeline_name = qgpu_fence_timeline_name,
	.release = qgpu_fence_release,
};

u64 qgpu_fence_context_alloc(void)
{
	return dma_fence_context_alloc(1);
}

void qgpu_fence_barrier(void)
{
	rcu_barrier();
}

/*
 * Signal every exported fence up to @last, as the job of fences
 * @first..@last retires with @error (0: success). Earlier jobs retired
 * earlier, so nothing listed is below @first. ring_lock held.
 */
void qgpu_fence_signal_upto(struct qgpu_device *qdev, u64 first, u64 last,
			    int error)
{
	struct qgpu_fence *fence, *tmp;

	lockdep_assert_held(&qdev->ring_lock);
	list_for_each_entry_safe(fence, tmp, &qdev->fences, node) {
		if (fence->base.seqno > last)
			break;
		WARN_ON_ONCE(fence->base.seqno < first);
		list_del_init(&fence->node);
		if (error)
			dma_fence_set_error(&fence->base, error);
		dma_fence_signal(&fence->base);
		dma_fence_put(&fence->base);	/* the list's */
	}
}

/*
 * Whoever holds ring_lock may retire jobs and signal their fences, so it is
 * taken inside a dma_fence signalling section (qgpu_ring_lock()): lockdep
 * then knows everything under it is on the way to dma_fence_signal().
 * Memory reclaim may wait for fences in a dma_resv (lockdep is taught that
 * at boot): an allocation, a fence wait, or a lock held around either,
 * under ring_lock anywhere, is reported.
 */
bool qgpu_fence_begin_signalling(void)
{
	return dma_fence_begin_signalling();
}

void qgpu_fence_end_signalling(bool cookie)
{
	dma_fence_end_signalling(cookie);
}

/*
 * A fence to be made later (qgpu_job_fence()), allocated where failing is
 * still possible: before a job is submitted.
 */
struct qgpu_fence *qgpu_fence_alloc(void)
{
	struct qgpu_fence *fence = kzalloc(sizeof(*fence), GFP_KERNEL_ACCOUNT);

	if (fence) {
		spin_lock_init(&fence->lock);
		INIT_LIST_HEAD(&fence->node);
	}
	return fence;
}

void qgpu_fence_free(struct qgpu_fence *fence)
{
	kfree(fence);
}

/*
 * A reference to the dma_fence of uapi @seq: the pending one if it was
 * made before, else @fence (from qgpu_fence_alloc(), consumed), signalled
 * already if its job has retired. Takes ring_lock.
 */
struct dma_fence *qgpu_job_fence(struct qgpu_device *qdev, u64 seq,
				 struct qgpu_fence *fence)
{
	struct qgpu_fence *pos;
	bool timed_out = false;
	u32 hw_err = 0;
	int ret = 0;

	qgpu_ring_lock(qdev);
	if (seq >= qdev->next_seq) {
		qgpu_ring_unlock(qdev);
		kfree(fence);
		return ERR_PTR(-EINVAL);
	}
	qgpu_retire_locked(qdev);
	/* Pending and exported before: the same fence (newest at the back). */
	list_for_each_entry_reverse(pos, &qdev->fences, node) {
		if (pos->base.seqno == seq) {
			dma_fence_get(&pos->base);
			qgpu_ring_unlock(qdev);
			kfree(fence);
			return &pos->base;
		}
		if (pos->base.seqno < seq)
			break;
	}
	__module_get(THIS_MODULE);
	strscpy(fence->timeline, qdev->name);
	dma_fence_init(&fence->base, &qgpu_fence_ops, &fence->lock,
		       qdev->fence_context, seq);
	if (seq <= qdev->retired_seq) {
		if (seq)
			ret = qgpu_fence_status(qdev, seq, &hw_err, &timed_out);
		if (ret == -ESTALE)
			dma_fence_set_error(&fence->base, -ESTALE);
		else if (ret)
			dma_fence_set_error(&fence->base,
					    qgpu_fence_errno(hw_err, timed_out));
		dma_fence_signal(&fence->base);
	} else {
		/* After @pos: the last one below @seq, or the list head. */
		list_add(&fence->node, &pos->node);
		dma_fence_get(&fence->base);	/* the list's */
	}
	qgpu_ring_unlock(qdev);
	return &fence->base;
}

/*
 * The dma_fence of the job just given fence @seq, made from @fence: ring_lock
 * held, the job not yet able to retire, so it is pending and the newest.
 * A reference for the caller.
 */
struct dma_fence *qgpu_fence_publish_locked(struct qgpu_device *qdev, u64 seq,
					    struct qgpu_fence *fence)
{
	lockdep_assert_held(&qdev->ring_lock);
	__module_get(THIS_MODULE);
	strscpy(fence->timeline, qdev->name);
	dma_fence_init(&fence->base, &qgpu_fence_ops, &fence->lock,
		       qdev->fence_context, seq);
	list_add_tail(&fence->node, &qdev->fences);
	dma_fence_get(&fence->base);	/* the list's */
	return &fence->base;
}

/*
 * QGPU_IOCTL_FENCE_EXPORT. The new file and its reserved descriptor go to
 * the caller (@call), which installs the descriptor only once the argument
 * holding it has been copied back: a failed copy must not leave user space
 * a descriptor it cannot know about.
 */
long qgpu_ioctl_fence_export(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_fence_export *a = call->args;
	struct qgpu_fence *pre;
	struct dma_fence *fence;
	struct sync_file *sf;
	int fd;

	if (a->flags || a->reserved[0] || a->reserved[1])
		return -EINVAL;
	pre = qgpu_fence_alloc();
	if (!pre)
		return -ENOMEM;
	fence = qgpu_job_fence(qf->qdev, a->fence, pre);
	if (IS_ERR(fence))
		return PTR_ERR(fence);
	sf = sync_file_create(fence);
	dma_fence_put(fence);
	if (!sf)
		return -ENOMEM;
	fd = qgpu_call_new_fd(call, sf->file);
	if (fd < 0)
		return fd;
	a->fd = fd;
	return 0;
}

#else /* !CONFIG_SYNC_FILE */

u64 qgpu_fence_context_alloc(void)
{
	return 0;
}

struct qgpu_fence *qgpu_fence_alloc(void)
{
	return NULL;
}

void qgpu_fence_free(struct qgpu_fence *fence)
{
}

struct dma_fence *qgpu_job_fence(struct qgpu_device *qdev, u64 seq,
				 struct qgpu_fence *fence)
{
	return ERR_PTR(-EOPNOTSUPP);
}

struct dma_fence *qgpu_fence_publish_locked(struct qgpu_device *qdev, u64 seq,
					    struct qgpu_fence *fence)
{
	return NULL;
}

void qgpu_fence_barrier(void)
{
}

void qgpu_fence_signal_upto(struct qgpu_device *qdev, u64 first, u64 last,
			    int error)
{
}

bool qgpu_fence_begin_signalling(void)
{
	return true;
}

void qgpu_fence_end_signalling(bool cookie)
{
}

long qgpu_ioctl_fence_export(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	return -EOPNOTSUPP;
}

#endif

/*
 * The dma_fence error of a job that ended with QGPU_ERR_* @hw_err: the job
 * the watchdog found stuck -ETIMEDOUT, the others an engine reset, a PCIe
 * recovery, a lost device or a removal stopped -ECANCELED, any other
 * device error -EIO; 0 for success.
 */
int qgpu_fence_errno(u32 hw_err, bool timed_out)
{
	if (!hw_err)
		return 0;
	if (timed_out)
		return -ETIMEDOUT;
	return hw_err == QGPU_ERR_ABORTED ? -ECANCELED : -EIO;
}
