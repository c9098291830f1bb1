// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: user-pointer buffers (QGPU_IOCTL_USERPTR_REGISTER, _UNREGISTER,
 * QGPU_IOCTL_COPY_USERPTR).
 *
 * A registered buffer is pinned once with FOLL_LONGTERM and DMA-mapped once;
 * each copy then only hands the bytes it covers to the device and back. This
 * is the pin-and-map design (as RDMA's ib_umem), not an mmu_interval_notifier
 * one (as amdgpu's and i915's userptr): the buffer is the caller's promise to
 * keep those pages, the device has no page faults to recover from an
 * invalidation, and a long-term pin is what makes the pages stay put under
 * DMA. Its cost is accounted: the pinned pages count in the owner's
 * mm->pinned_vm against RLIMIT_MEMLOCK (CAP_IPC_LOCK exempt), as ib_umem
 * does, and long-term pins migrate pages out of ZONE_MOVABLE and CMA first.
 *
 * Ownership moves with explicit syncs: the table is mapped and unmapped with
 * DMA_ATTR_SKIP_CPU_SYNC, and a copy syncs exactly its byte range for the
 * device before the job and for the CPU after it. Where DMA is bounced
 * (swiotlb) these syncs are what move the bytes, and syncing only the
 * copy's range leaves what the CPU wrote elsewhere in the buffer alone. The
 * debugfs knob userptr_skip_sync leaves them out, so that a test can show
 * the stale data a driver without them would hand out.
 *
 * The same pages registered twice, or twice within one buffer (a memfd
 * mapped at two addresses), are mapped twice: the DMA API does not support
 * overlapping mappings, and DMA-API debugging may warn on their syncs.
 *
 * Lifetime: a registration holds the device; it is released by
 * unregistering, by closing the file (process exit) or, for its pages and
 * mapping, by removal (qgpu_userptr_release_all()), after which copies fail
 * with -ENODEV.
 */

#include <linux/capability.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>

#include "qgpu_drv.h"

#define QGPU_USERPTR_MAX_HANDLE		0xffff

struct qgpu_userptr {
	struct kref ref;
	struct qgpu_device *qdev;	/* holds a device reference */
	struct list_head node;		/* qdev->userptrs, under userptr_lock */
	struct mm_struct *mm;		/* grabbed: its pinned_vm counts ours */
	struct page **pages;		/* NULL once released */
	unsigned long npages;
	struct sg_table sgt;
	enum dma_data_direction dir;	/* of the mapping */
	bool mapped;
	bool writable;
	u64 size;
};

static int qgpu_userptr_account(struct mm_struct *mm, unsigned long npages)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;

	if (atomic64_add_return(npages, &mm->pinned_vm) > limit &&
	    !capable(CAP_IPC_LOCK)) {
		atomic64_sub(npages, &mm->pinned_vm);
		return -ENOMEM;
	}
	return 0;
}

/* Unmap, unpin, unaccount; under userptr_lock (or never listed). */
static void qgpu_userptr_release_backing(struct qgpu_userptr *up)
{
	struct qgpu_device *qdev = up->qdev;

	if (up->mapped)
		dma_unmap_sgtable(qdev->dev, &up->sgt, up->dir,
				  DMA_ATTR_SKIP_CPU_SYNC);
	up->mapped = false;
	if (up->sgt.sgl)
		sg_free_table(&up->sgt);
	up->sgt.sgl = NULL;
	if (!up->pages)
		return;
	unpin_user_pages_dirty_lock(up->pages, up->npages, up->writable);
	kvfree(up->pages);
	up->pages = NULL;
	atomic64_sub(up->npages, &up->mm->pinned_vm);
	qgpu_stat_add(qdev, QGPU_STAT_USERPTR_PAGES, -(s64)up->npages);
}

static void qgpu_userptr_free(struct kref *ref)
{
	struct qgpu_userptr *up = container_of(ref, struct qgpu_userptr, ref);
	struct qgpu_device *qdev = up->qdev;

	mutex_lock(&qdev->userptr_lock);
	list_del(&up->node);
	qgpu_userptr_release_backing(up);
	mutex_unlock(&qdev->userptr_lock);
	qgpu_stat_add(qdev, QGPU_STAT_USERPTRS, -1);
	mmdrop(up->mm);
	qgpu_device_put(qdev);
	kfree(up);
}

void qgpu_userptr_put(struct qgpu_userptr *up)
{
	kref_put(&up->ref, qgpu_userptr_free);
}

/*
 * The handle could not be returned (qgpu_ioctl()): take it back, unless
 * another thread guessed it and unregistered it (and maybe reused it).
 */
void qgpu_userptr_take_back(struct qgpu_file *qf, u32 handle,
			    struct qgpu_userptr *up)
{
	if (xa_cmpxchg(&qf->userptrs, handle, up, NULL, 0) == up)
		qgpu_userptr_put(up);
}

static struct qgpu_userptr *qgpu_userptr_lookup(struct qgpu_file *qf, u32 handle)
{
	struct qgpu_userptr *up;

	xa_lock(&qf->userptrs);
	up = xa_load(&qf->userptrs, handle);
	if (up)
		kref_get(&up->ref);
	xa_unlock(&qf->userptrs);
	return up;
}

/* Pin all @up->npages from @addr, in as many calls as it takes. */
static int qgpu_userptr_pin(struct qgpu_userptr *up, u64 addr)
{
	unsigned int gup = FOLL_LONGTERM | (up->writable ? FOLL_WRITE : 0);
	unsigned long done = 0;
	long n;

	while (done < up->npages) {
		n = qgpu_pin_user_pages(addr + ((u64)done << PAGE_SHIFT),
					up->npages - done, gup, up->pages + done);
		if (n <= 0) {
			if (done)
				unpin_user_pages(up->pages, done);
			/* As COPY_USER: short means not mapped; -EAGAIN a fatal signal */
			return !n ? -EFAULT : n == -EAGAIN ? -EINTR : n;
		}
		done += n;
		if (fatal_signal_pending(current)) {
			unpin_user_pages(up->pages, done);
			return -EINTR;
		}
	}
	return 0;
}

/*
 * Called outside the device's SRCU read section: pinning may wait on user
 * space (userfaultfd, FUSE). The mapping is made inside it, so that removal,
 * which waits for the section, finds every mapped buffer on the list.
 */
long qgpu_ioctl_userptr_register(struct qgpu_file *qf,
				 struct qgpu_ioctl_call *call)
{
	struct qgpu_userptr_register *a = call->args;
	struct qgpu_device *qdev = qf->qdev;
	struct device *dev = qdev->dev;
	struct qgpu_userptr *up;
	size_t max_seg;
	u64 end;
	u32 handle;
	int ret, idx;

	if ((a->flags & ~QGPU_USERPTR_F_WRITE) || a->reserved0 ||
	    a->reserved[0] || a->reserved[1] || !a->length ||
	    !PAGE_ALIGNED(a->addr) || !PAGE_ALIGNED(a->length) ||
	    check_add_overflow(a->addr, a->length, &end) ||
	    end > TASK_SIZE_MAX)
		return -EINVAL;
	if (a->length > QGPU_USERPTR_MAX_SIZE)
		return -E2BIG;
	ret = qgpu_unusable(qdev);
	if (ret)
		return ret;

	up = kzalloc(sizeof(*up), GFP_KERNEL);
	if (!up)
		return -ENOMEM;
	kref_init(&up->ref);
	INIT_LIST_HEAD(&up->node);
	up->qdev = qdev;
	up->size = a->length;
	up->npages = a->length >> PAGE_SHIFT;
	up->writable = a->flags & QGPU_USERPTR_F_WRITE;
	up->dir = up->writable ? DMA_BIDIRECTIONAL : DMA_TO_DEVICE;
	up->mm = current->mm;
	mmgrab(up->mm);

	ret = qgpu_userptr_account(up->mm, up->npages);
	if (ret)
		goto err_mm;
	up->pages = kvmalloc_array(up->npages, sizeof(*up->pages), GFP_KERNEL);
	if (!up->pages) {
		ret = -ENOMEM;
		goto err_unaccount;
	}
	ret = qgpu_userptr_pin(up, a->addr);
	if (ret)
		goto err_free_pages;
	/* Segments must also fit a bounce buffer (swiotlb). */
	max_seg = min_t(size_t, dma_get_max_seg_size(dev),
			dma_max_mapping_size(dev));
	max_seg = max_t(size_t, max_seg & PAGE_MASK, PAGE_SIZE);
	ret = sg_alloc_table_from_pages_segment(&up->sgt, up->pages, up->npages,
						0, up->size, max_seg, GFP_KERNEL);
	if (ret) {
		up->sgt.sgl = NULL;
		goto err_unpin;
	}

	idx = srcu_read_lock(&qdev->srcu);
	ret = qgpu_unusable(qdev);
	if (ret)
		goto err_unlock;
	ret = qgpu_dma_map_user_sgt(dev, &up->sgt, up->dir,
				    DMA_ATTR_SKIP_CPU_SYNC);
	if (ret) {
		/* -EIO is for what the device did: the platform ran out. */
		ret = ret == -EINVAL ? ret : -ENOMEM;
		goto err_unlock;
	}
	up->mapped = true;
	kref_get(&qdev->ref);
	mutex_lock(&qdev->userptr_lock);
	list_add(&up->node, &qdev->userptrs);
	mutex_unlock(&qdev->userptr_lock);
	srcu_read_unlock(&qdev->srcu, idx);
	qgpu_stat_inc(qdev, QGPU_STAT_USERPTRS);
	qgpu_stat_add(qdev, QGPU_STAT_USERPTR_PAGES, up->npages);

	/*
	 * The caller's reference, before the handle is visible: another
	 * thread may unregister it (handles are easy to guess) at once.
	 */
	a->nr_segments = up->sgt.nents;
	kref_get(&up->ref);
	ret = xa_alloc(&qf->userptrs, &handle, up,
		       XA_LIMIT(1, QGPU_USERPTR_MAX_HANDLE), GFP_KERNEL);
	if (ret) {
		qgpu_userptr_put(up);
		qgpu_userptr_put(up);
		return ret == -EBUSY ? -ENOSPC : ret;
	}
	a->handle = handle;
	call->new_userptr = up;
	call->copy_out = true;
	return 0;

err_unlock:
	srcu_read_unlock(&qdev->srcu, idx);
	sg_free_table(&up->sgt);
err_unpin:
	unpin_user_pages(up->pages, up->npages);
err_free_pages:
	kvfree(up->pages);
err_unaccount:
	atomic64_sub(up->npages, &up->mm->pinned_vm);
err_mm:
	mmdrop(up->mm);
	kfree(up);
	return ret;
}

long qgpu_ioctl_userptr_unregister(struct qgpu_file *qf,
				   struct qgpu_ioctl_call *call)
{
	struct qgpu_userptr_unregister *a = call->args;
	struct qgpu_userptr *up;

	if (a->flags || a->reserved[0] || a->reserved[1])
		return -EINVAL;
	up = xa_erase(&qf->userptrs, a->handle);
	if (!up)
		return -ENOENT;
	/* A copy still running holds its own reference. */
	qgpu_userptr_put(up);
	return 0;
}

/*
 * Hand the bytes [@skip, @skip + @len) of the buffer to the device or back
 * to the CPU: each DMA segment's part of the range, nothing else. A whole-
 * table sync for the CPU would copy stale bounce buffers over what the CPU
 * wrote elsewhere in the buffer meanwhile.
 */
static void qgpu_userptr_sync(struct qgpu_device *qdev, struct qgpu_userptr *up,
			      u64 skip, u64 len, enum dma_data_direction dir,
			      bool for_device)
{
	struct scatterlist *sg;
	u64 pos = 0, off, n;
	unsigned int i;

	if (READ_ONCE(qdev->userptr_skip_sync))
		return;
	for_each_sgtable_dma_sg(&up->sgt, sg, i) {
		u64 seg = sg_dma_len(sg);

		if (pos + seg > skip && pos < skip + len) {
			off = max(skip, pos) - pos;
			n = min(skip + len, pos + seg) - pos - off;
			if (for_device)
				dma_sync_single_for_device(qdev->dev,
						sg_dma_address(sg) + off, n, dir);
			else
				dma_sync_single_for_cpu(qdev->dev,
						sg_dma_address(sg) + off, n, dir);
		}
		pos += seg;
		if (pos >= skip + len)
			break;
	}
}

/*
 * QGPU_IOCTL_COPY_USERPTR. The pages are pinned and mapped already: the
 * whole call runs inside the device's SRCU read section.
 */
long qgpu_ioctl_copy_userptr(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_copy_userptr *a = call->args;
	struct qgpu_device *qdev = qf->qdev;
	enum dma_data_direction dir;
	struct qgpu_userptr *up;
	u64 end;
	int ret;

	ret = qgpu_copy_args_check(qf, a->op, a->vram_offset, a->length,
				   !a->flags && !a->reserved0 && !a->reserved[0] &&
				   !a->reserved[1]);
	if (ret)
		return ret;
	a->fence = 0;
	a->hw_status = 0;
	a->nr_segments = 0;
	up = qgpu_userptr_lookup(qf, a->handle);
	if (!up)
		return -ENOENT;
	if (check_add_overflow(a->offset, a->length, &end) || end > up->size) {
		ret = -EINVAL;
		goto out_put;
	}
	if (a->op == QGPU_OP_COPY_FROM_VRAM && !up->writable) {
		ret = -EACCES;
		goto out_put;
	}
	/* Removal unmapped it: qgpu_unusable() already says so (@dead). */
	if (!READ_ONCE(up->mapped)) {
		ret = -ENODEV;
		goto out_put;
	}
	/*
	 * Into the buffer, the range is handed over whole (bidirectional, as
	 * swiotlb maps a buffer): where the device does not write it -- a job
	 * that fails or ends early -- the CPU gets its own bytes back, not a
	 * bounce buffer's older ones.
	 */
	dir = a->op == QGPU_OP_COPY_TO_VRAM ? DMA_TO_DEVICE : DMA_BIDIRECTIONAL;
	qgpu_userptr_sync(qdev, up, a->offset, a->length, dir, true);
	ret = qgpu_copy_sgt(qdev, a->op, &up->sgt, a->offset, a->length,
			    a->vram_offset, QGPU_STAT_USERPTR_COPIES,
			    &a->nr_segments, &a->fence, &a->hw_status);
	/* Retired: the device is done with the range (never submitted: untouched). */
	if (a->fence)
		qgpu_userptr_sync(qdev, up, a->offset, a->length, dir, false);
out_put:
	qgpu_userptr_put(up);
	/* Once submitted, the caller gets the fence whatever the result. */
	call->copy_out = a->fence != 0 || !ret;
	return ret;
}

/* Closing the file: every registration it still holds. */
void qgpu_userptr_file_release(struct qgpu_file *qf)
{
	struct qgpu_userptr *up;
	unsigned long handle;

	xa_for_each(&qf->userptrs, handle, up) {
		xa_erase(&qf->userptrs, handle);
		qgpu_userptr_put(up);
	}
	xa_destroy(&qf->userptrs);
}

/*
 * Removal, once no ioctl is inside the device's SRCU section and the engine
 * is off: unmap and unpin every registered buffer of the device. The
 * registrations stay until their files let go, empty.
 */
void qgpu_userptr_release_all(struct qgpu_device *qdev)
{
	struct qgpu_userptr *up;

	mutex_lock(&qdev->userptr_lock);
	list_for_each_entry(up, &qdev->userptrs, node)
		qgpu_userptr_release_backing(up);
	mutex_unlock(&qdev->userptr_lock);
}
