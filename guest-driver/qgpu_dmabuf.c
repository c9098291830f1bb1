// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: buffer objects shared as dma-bufs (QGPU_IOCTL_DMABUF_EXPORT), and
 * dma-bufs of any exporter as the source or destination of a DMA
 * (QGPU_IOCTL_COPY_DMABUF).
 *
 * Exporter. A dma-buf holds a reference on its BO, so the BO outlives its
 * handle and the file that made it. Importers get the BO's pages mapped for
 * their own device, in segments their DMA can map (swiotlb bounces at most
 * 256 KiB at once), through their IOMMU or swiotlb as any pages would be. The CPU maps the dma-buf page by
 * page on first access, never inside ->mmap, so that removal's zap of each
 * dma-buf's address_space after its SRCU wait is enough (see
 * qgpu_zap_user_mappings()). Removal frees BO memory, which the DMA API
 * can only do while the device is there: it first waits a bounded time for
 * importers to unmap, then leaves memory still mapped allocated for good
 * (qgpu_bo_free_all_backing()) rather than free it under their DMA.
 *
 * Importer. The device's mapping of a dma-buf is made for one job and torn
 * down before the ioctl returns, after the job's fence has signalled and
 * outside the ring lock: a dma_resv lock is never taken where a fence is
 * signalled. The dma-buf's own fences (its dma_resv) are waited for before
 * the job is queued, interruptibly and for at most the caller's timeout.
 * The job adds no fence to the dma_resv: the ioctl returns only once it is
 * over. Jobs on a BO through its handle (COPY_BO) do add theirs to its
 * dma_resv, which its dma-bufs share (qgpu_bo_resv_begin()).
 */

#include <linux/cc_platform.h>
#include <linux/dma-buf.h>
#include <linux/dma-resv.h>
#include <linux/file.h>
#include <linux/iosys-map.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "qgpu_drv.h"

#if IS_ENABLED(CONFIG_DMA_SHARED_BUFFER)

MODULE_IMPORT_NS(DMA_BUF);

/* How long removal waits for importers to unmap a BO's dma-buf. */
#define QGPU_DMABUF_UNPIN_WAIT	(30 * HZ)

/* The exporter's private data of a dma-buf. */
struct qgpu_dmabuf {
	struct qgpu_bo *bo;		/* reference */
	struct qgpu_device *qdev;	/* bo->qdev: alive as long as @bo */
	struct dma_buf *dmabuf;
	/*
	 * The dma-buf file's inode, held until release: what its mappings
	 * are zapped through (the file itself may be freed before release).
	 */
	struct inode *inode;
	struct list_head node;		/* qdev->dmabufs, under dmabuf_lock */
	struct list_head maps;		/* qgpu_dmabuf_map, under dmabuf_lock */
};

/* One importer mapping: the BO's pages, mapped for the importer's device. */
struct qgpu_dmabuf_map {
	struct sg_table sgt;
	struct device *dev;
	enum dma_data_direction dir;
	struct list_head node;		/* qgpu_dmabuf.maps */
};

/*
 * The BO's memory, pinned for an importer (a mapping or a vmap) under
 * dmabuf_lock, or NULL once the device is gone or lost.
 */
static void *qgpu_dmabuf_pin_locked(struct qgpu_dmabuf *qb)
{
	struct qgpu_device *qdev = qb->qdev;
	void *vaddr;

	lockdep_assert_held(&qdev->dmabuf_lock);
	if (qgpu_unusable(qdev) == -ENODEV)
		return NULL;
	vaddr = READ_ONCE(qb->bo->vaddr);
	if (vaddr) {
		qb->bo->dmabuf_pins++;
		atomic_inc(&qdev->dmabuf_pins);
	}
	return vaddr;
}

static void qgpu_dmabuf_unpin_locked(struct qgpu_dmabuf *qb)
{
	struct qgpu_device *qdev = qb->qdev;

	lockdep_assert_held(&qdev->dmabuf_lock);
	if (WARN_ON_ONCE(!qb->bo->dmabuf_pins))
		return;
	qb->bo->dmabuf_pins--;
	if (atomic_dec_and_test(&qdev->dmabuf_pins))
		wake_up_all(&qdev->dmabuf_wq);
}

/*
 * The BO's pages as a table for an importer's device: in segments of at
 * most what it can map in one piece (swiotlb's slots, its max_seg_size).
 * Linear memory (no IOMMU) or, behind an IOMMU, remapped pages.
 */
static int qgpu_dmabuf_table(struct qgpu_bo *bo, void *vaddr, struct device *dev,
			     struct sg_table *sgt)
{
	unsigned int i, n = bo->size >> PAGE_SHIFT;
	size_t max_seg = min_t(size_t, dma_get_max_seg_size(dev),
			       dma_max_mapping_size(dev));
	struct page **pages;
	int ret;

	pages = kvmalloc_array(n, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		pages[i] = is_vmalloc_addr(vaddr) ?
			   vmalloc_to_page(vaddr + ((size_t)i << PAGE_SHIFT)) :
			   virt_to_page(vaddr) + i;
	max_seg = max_t(size_t, max_seg & PAGE_MASK, PAGE_SIZE);
	ret = sg_alloc_table_from_pages_segment(sgt, pages, n, 0, bo->size,
						max_seg, GFP_KERNEL);
	kvfree(pages);
	return ret;
}

/*
 * The BO's coherent allocation is, to DMA-API debugging, a mapping the
 * device may write; another mapping of its cache lines that a device may
 * write is "overlapping" unless the CPU syncs are explicit
 * (DMA_ATTR_SKIP_CPU_SYNC, as DRM's PRIME does): made here, in the
 * mapping's direction, after mapping and before unmapping.
 */
#define QGPU_DMABUF_MAP_ATTRS	DMA_ATTR_SKIP_CPU_SYNC

static struct sg_table *qgpu_dmabuf_map(struct dma_buf_attachment *at,
					enum dma_data_direction dir)
{
	struct qgpu_dmabuf *qb = at->dmabuf->priv;
	struct qgpu_device *qdev = qb->qdev;
	struct qgpu_dmabuf_map *m;
	void *vaddr;
	int ret;

	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return ERR_PTR(-ENOMEM);
	m->dev = at->dev;
	m->dir = dir;
	mutex_lock(&qdev->dmabuf_lock);
	vaddr = qgpu_dmabuf_pin_locked(qb);
	if (!vaddr) {
		ret = -ENODEV;
		goto err_free;
	}
	ret = qgpu_dmabuf_table(qb->bo, vaddr, at->dev, &m->sgt);
	if (ret)
		goto err_unpin;
	ret = qgpu_dma_map_user_sgt(at->dev, &m->sgt, dir, QGPU_DMABUF_MAP_ATTRS);
	if (ret)
		goto err_free_table;
	dma_sync_sgtable_for_device(at->dev, &m->sgt, dir);
	list_add(&m->node, &qb->maps);
	mutex_unlock(&qdev->dmabuf_lock);
	qgpu_stat_inc(qdev, QGPU_STAT_DMABUF_MAPS);
	return &m->sgt;

err_free_table:
	sg_free_table(&m->sgt);
err_unpin:
	qgpu_dmabuf_unpin_locked(qb);
err_free:
	mutex_unlock(&qdev->dmabuf_lock);
	kfree(m);
	return ERR_PTR(ret);
}

/*
 * Off the list first, so that a CPU-access sync never meets a mapping on
 * its way out; unpinned last, so that removal frees nothing still mapped.
 */
static void qgpu_dmabuf_unmap(struct dma_buf_attachment *at,
			      struct sg_table *sgt,
			      enum dma_data_direction dir)
{
	struct qgpu_dmabuf_map *m = container_of(sgt, struct qgpu_dmabuf_map, sgt);
	struct qgpu_dmabuf *qb = at->dmabuf->priv;
	struct qgpu_device *qdev = qb->qdev;

	mutex_lock(&qdev->dmabuf_lock);
	list_del(&m->node);
	mutex_unlock(&qdev->dmabuf_lock);
	dma_sync_sgtable_for_cpu(at->dev, sgt, dir);
	dma_unmap_sgtable(at->dev, sgt, dir, QGPU_DMABUF_MAP_ATTRS);
	sg_free_table(sgt);
	kfree(m);
	mutex_lock(&qdev->dmabuf_lock);
	qgpu_dmabuf_unpin_locked(qb);
	mutex_unlock(&qdev->dmabuf_lock);
	qgpu_stat_add(qdev, QGPU_STAT_DMABUF_MAPS, -1);
}

/*
 * Importers' mappings may be bounce buffers (swiotlb) or sit behind
 * non-coherent caches: before the CPU reads what they wrote, and before
 * they read what the CPU wrote, each mapping is synced its own way. The
 * BO's mapping for this device is coherent and needs none. The CPU's
 * access begins once the importers' DMA is over: the dma_resv fences the
 * access must follow are waited for before the sync (the core waits only
 * after this op).
 */
static int qgpu_dmabuf_cpu_access(struct dma_buf *dmabuf, bool begin,
				  enum dma_data_direction dir)
{
	struct qgpu_dmabuf *qb = dmabuf->priv;
	struct qgpu_device *qdev = qb->qdev;
	struct qgpu_dmabuf_map *m;
	long t;
	int ret = 0;

	if (begin) {
		t = dma_resv_wait_timeout(dmabuf->resv,
				dma_resv_usage_rw(dir == DMA_BIDIRECTIONAL ||
						  dir == DMA_TO_DEVICE),
				true, MAX_SCHEDULE_TIMEOUT);
		if (t < 0)
			return t;
	}
	mutex_lock(&qdev->dmabuf_lock);
	if (qgpu_unusable(qdev) == -ENODEV || !READ_ONCE(qb->bo->vaddr)) {
		ret = -ENODEV;
		goto out;
	}
	list_for_each_entry(m, &qb->maps, node) {
		if (begin)
			dma_sync_sgtable_for_cpu(m->dev, &m->sgt, m->dir);
		else
			dma_sync_sgtable_for_device(m->dev, &m->sgt, m->dir);
	}
out:
	mutex_unlock(&qdev->dmabuf_lock);
	return ret;
}

static int qgpu_dmabuf_begin_cpu_access(struct dma_buf *dmabuf,
					enum dma_data_direction dir)
{
	return qgpu_dmabuf_cpu_access(dmabuf, true, dir);
}

static int qgpu_dmabuf_end_cpu_access(struct dma_buf *dmabuf,
				      enum dma_data_direction dir)
{
	return qgpu_dmabuf_cpu_access(dmabuf, false, dir);
}

/*
 * Insert the faulting page of the BO; SIGBUS once the device is removed
 * or lost (its memory is freed after removal's zap, which waits for this
 * fault's SRCU section).
 */
static vm_fault_t qgpu_dmabuf_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct qgpu_dmabuf *qb = vma->vm_private_data;
	struct qgpu_device *qdev = qb->qdev;
	vm_fault_t ret = VM_FAULT_SIGBUS;
	void *vaddr;
	int idx;

	idx = srcu_read_lock(&qdev->map_srcu);
	vaddr = READ_ONCE(qb->bo->vaddr);
	if (qgpu_unusable(qdev) == -ENODEV || !vaddr ||
	    vmf->pgoff >= qb->bo->size >> PAGE_SHIFT)
		goto out;
	vaddr += vmf->pgoff << PAGE_SHIFT;
	if (vma->vm_flags & VM_MIXEDMAP)
		ret = vmf_insert_page(vma, vmf->address, vmalloc_to_page(vaddr));
	else
		ret = vmf_insert_pfn(vma, vmf->address,
				     page_to_pfn(virt_to_page(vaddr)));
out:
	srcu_read_unlock(&qdev->map_srcu, idx);
	return ret;
}

/* ptrace and /proc/PID/mem: through the kernel's address, while it lives. */
static int qgpu_dmabuf_access(struct vm_area_struct *vma, unsigned long addr,
			      void *buf, int len, int write)
{
	struct qgpu_dmabuf *qb = vma->vm_private_data;
	struct qgpu_device *qdev = qb->qdev;
	u64 off = ((u64)vma->vm_pgoff << PAGE_SHIFT) + (addr - vma->vm_start);
	void *vaddr;
	int idx;

	if (write && !(vma->vm_flags & VM_WRITE))
		return -EACCES;
	if (off >= qb->bo->size)
		return -EINVAL;
	len = min_t(u64, len, qb->bo->size - off);
	idx = srcu_read_lock(&qdev->map_srcu);
	vaddr = READ_ONCE(qb->bo->vaddr);
	if (!vaddr || qgpu_unusable(qdev) == -ENODEV)
		len = -EIO;
	else if (write)
		memcpy(vaddr + off, buf, len);
	else
		memcpy(buf, vaddr + off, len);
	srcu_read_unlock(&qdev->map_srcu, idx);
	return len;
}

static const struct vm_operations_struct qgpu_dmabuf_vm_ops = {
	.fault = qgpu_dmabuf_fault,
	.access = qgpu_dmabuf_access,
};

/*
 * The core checked the range against the dma-buf's size and holds the
 * dma-buf's file in the VMA, which keeps @qb. Linear memory (no IOMMU) is
 * mapped by PFN, remapped pages (behind an IOMMU) as pages, as
 * qgpu_mmap_bo() maps them, with the VMA's (cached) protection: right for
 * x86's coherent DMA. Under memory encryption the buffer is decrypted
 * memory that only the DMA API knows how to map (qgpu_mmap_bo() leaves it
 * to dma_mmap_coherent()): refused.
 */
static int qgpu_dmabuf_mmap(struct dma_buf *dmabuf, struct vm_area_struct *vma)
{
	struct qgpu_dmabuf *qb = dmabuf->priv;
	struct qgpu_device *qdev = qb->qdev;
	void *vaddr;
	int idx, ret = 0;

	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (vma->vm_flags & VM_EXEC)
		return -EPERM;
	if (cc_platform_has(CC_ATTR_MEM_ENCRYPT))
		return -EOPNOTSUPP;
	idx = srcu_read_lock(&qdev->map_srcu);
	vaddr = READ_ONCE(qb->bo->vaddr);
	if (qgpu_unusable(qdev) == -ENODEV || !vaddr) {
		ret = -ENODEV;
	} else {
		vm_flags_clear(vma, VM_MAYEXEC);
		vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP |
			     (is_vmalloc_addr(vaddr) ? VM_MIXEDMAP :
						       VM_IO | VM_PFNMAP));
		vma->vm_ops = &qgpu_dmabuf_vm_ops;
		vma->vm_private_data = qb;
	}
	srcu_read_unlock(&qdev->map_srcu, idx);
	return ret;
}

/* A kernel mapping: the coherent buffer's own, pinned until vunmap. */
static int qgpu_dmabuf_vmap(struct dma_buf *dmabuf, struct iosys_map *map)
{
	struct qgpu_dmabuf *qb = dmabuf->priv;
	void *vaddr;

	mutex_lock(&qb->qdev->dmabuf_lock);
	vaddr = qgpu_dmabuf_pin_locked(qb);
	mutex_unlock(&qb->qdev->dmabuf_lock);
	if (!vaddr)
		return -ENODEV;
	iosys_map_set_vaddr(map, vaddr);
	return 0;
}

static void qgpu_dmabuf_vunmap(struct dma_buf *dmabuf, struct iosys_map *map)
{
	struct qgpu_dmabuf *qb = dmabuf->priv;

	mutex_lock(&qb->qdev->dmabuf_lock);
	qgpu_dmabuf_unpin_locked(qb);
	mutex_unlock(&qb->qdev->dmabuf_lock);
}

static void qgpu_dmabuf_release(struct dma_buf *dmabuf)
{
	struct qgpu_dmabuf *qb = dmabuf->priv;
	struct qgpu_device *qdev = qb->qdev;

	mutex_lock(&qdev->dmabuf_lock);
	WARN_ON(!list_empty(&qb->maps));
	list_del(&qb->node);
	mutex_unlock(&qdev->dmabuf_lock);
	qgpu_stat_add(qdev, QGPU_STAT_DMABUFS, -1);
	qgpu_bo_put(qb->bo);		/* may drop the last device reference */
	iput(qb->inode);
	kfree(qb);
}

static const struct dma_buf_ops qgpu_dmabuf_ops = {
	.map_dma_buf = qgpu_dmabuf_map,
	.unmap_dma_buf = qgpu_dmabuf_unmap,
	.release = qgpu_dmabuf_release,
	.begin_cpu_access = qgpu_dmabuf_begin_cpu_access,
	.end_cpu_access = qgpu_dmabuf_end_cpu_access,
	.mmap = qgpu_dmabuf_mmap,
	.vmap = qgpu_dmabuf_vmap,
	.vunmap = qgpu_dmabuf_vunmap,
};

/*
 * Removal, after the device's zap: every CPU mapping of the dma-bufs goes
 * too. Their faults check @dead or @lost under map_srcu, which the zap
 * synchronized, and ->mmap inserts nothing. Through each dma-buf's inode,
 * which it holds until release: its file is freed at the last fput(), and
 * release (the dentry's) may come later, still on the list -- with no
 * mapping left (each holds the file).
 */
void qgpu_dmabuf_zap(struct qgpu_device *qdev)
{
	struct qgpu_dmabuf *qb;

	mutex_lock(&qdev->dmabuf_lock);
	list_for_each_entry(qb, &qdev->dmabufs, node)
		unmap_mapping_range(qb->inode->i_mapping, 0, 0, 1);
	mutex_unlock(&qdev->dmabuf_lock);
}

/*
 * Removal, with @dead set (no new pins): give importers that still map a
 * BO (a job of another device, bounded by its watchdog) time to finish.
 */
void qgpu_dmabuf_wait_unpinned(struct qgpu_device *qdev)
{
	if (!wait_event_timeout(qdev->dmabuf_wq, !atomic_read(&qdev->dmabuf_pins),
				QGPU_DMABUF_UNPIN_WAIT))
		dev_warn(qdev->dev, "%s: importers did not unmap its buffers in %u s\n",
			 qdev->name, QGPU_DMABUF_UNPIN_WAIT / HZ);
}

/*
 * QGPU_IOCTL_DMABUF_EXPORT. As for QGPU_IOCTL_FENCE_EXPORT, the caller
 * (qgpu_ioctl()) installs the descriptor once the argument is copied back.
 */
long qgpu_ioctl_dmabuf_export(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_dmabuf_export *a = call->args;
	DEFINE_DMA_BUF_EXPORT_INFO(exp);
	struct qgpu_device *qdev = qf->qdev;
	struct dma_buf *dmabuf;
	struct qgpu_dmabuf *qb;
	int fd, ret;

	if ((a->flags & ~QGPU_DMABUF_F_WRITE) || a->reserved0 ||
	    a->reserved[0] || a->reserved[1])
		return -EINVAL;
	qb = kzalloc(sizeof(*qb), GFP_KERNEL);
	if (!qb)
		return -ENOMEM;
	INIT_LIST_HEAD(&qb->maps);
	INIT_LIST_HEAD(&qb->node);
	qb->qdev = qdev;
	qb->bo = qgpu_bo_lookup(qf, a->handle);
	if (!qb->bo) {
		ret = -ENOENT;
		goto err_free;
	}
	exp.ops = &qgpu_dmabuf_ops;
	exp.size = qb->bo->size;
	exp.resv = &qb->bo->resv;
	exp.flags = O_CLOEXEC | (a->flags & QGPU_DMABUF_F_WRITE ? O_RDWR : O_RDONLY);
	exp.priv = qb;
	dmabuf = dma_buf_export(&exp);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		goto err_put_bo;
	}
	/* From here, dma_buf's release (the last fput()) undoes it all. */
	qb->dmabuf = dmabuf;
	qb->inode = file_inode(dmabuf->file);
	ihold(qb->inode);
	mutex_lock(&qdev->dmabuf_lock);
	list_add(&qb->node, &qdev->dmabufs);
	mutex_unlock(&qdev->dmabuf_lock);
	qgpu_stat_inc(qdev, QGPU_STAT_DMABUFS);
	fd = qgpu_call_new_fd(call, dmabuf->file);
	if (fd < 0)
		return fd;
	a->fd = fd;
	return 0;

err_put_bo:
	qgpu_bo_put(qb->bo);
err_free:
	kfree(qb);
	return ret;
}

/*
 * A BO's dma_resv is its dma-bufs' (as a GEM object's): the fences of jobs
 * on it, and fences importers add (DMA_BUF_IOCTL_IMPORT_SYNC_FILE). A job
 * on the BO through its handle (COPY_BO) first waits for the fences it must
 * follow -- writers before it reads the BO, everyone before it writes it --
 * except this device's own, which its ring runs in order anyway; then it
 * puts its own fence in, as a writer if it writes the BO, before it can
 * run -- always, as GEM drivers do, so that a dma-buf made while the job
 * runs waits for it too: the dma_resv stays locked from the last check
 * through submission (qgpu_bo_resv_begin(), _end()). Lock
 * order: dma_resv, then submit_lock and ring_lock; dmabuf_lock is never
 * held while a dma_resv is taken (importers' map calls take it under
 * theirs).
 */
void qgpu_bo_resv_init(struct qgpu_bo *bo)
{
	dma_resv_init(&bo->resv);
}

void qgpu_bo_resv_fini(struct qgpu_bo *bo)
{
	dma_resv_fini(&bo->resv);
}

/* A fence of @resv with @usage a job must wait for: pending, not @context's. */
static struct dma_fence *qgpu_resv_foreign_locked(struct dma_resv *resv,
						  enum dma_resv_usage usage,
						  u64 context)
{
	struct dma_resv_iter cursor;
	struct dma_fence *fence;

	dma_resv_for_each_fence(&cursor, resv, usage, fence)
		if (fence->context != context && !dma_fence_is_signaled(fence))
			return dma_fence_get(fence);
	return NULL;
}

/*
 * Before a job on @bo: wait for the fences it must follow, then lock the
 * dma_resv, with room for the job's fence and *@pre allocated for it.
 * Outside the device's SRCU section: another driver's fence takes as long
 * as it takes (and another job on the BO holds the lock while it waits for
 * ring space). Only a signal ends the wait, with nothing done
 * (-ERESTARTSYS).
 */
int qgpu_bo_resv_begin(struct qgpu_bo *bo, bool writes, struct qgpu_fence **pre)
{
	enum dma_resv_usage usage = dma_resv_usage_rw(writes);
	struct dma_fence *fence;
	int ret;

	*pre = NULL;
	for (;;) {
		if (dma_resv_lock_interruptible(&bo->resv, NULL))
			return -ERESTARTSYS;
		fence = qgpu_resv_foreign_locked(&bo->resv, usage,
						 bo->qdev->fence_context);
		if (!fence)
			break;
		dma_resv_unlock(&bo->resv);
		ret = dma_fence_wait(fence, true);
		dma_fence_put(fence);
		if (ret)
			return -ERESTARTSYS;
	}
	if (!IS_ENABLED(CONFIG_SYNC_FILE))
		return 0;	/* no fences of its own to give */
	ret = dma_resv_reserve_fences(&bo->resv, 1);
	if (!ret) {
		*pre = qgpu_fence_alloc();
		if (!*pre)
			ret = -ENOMEM;
	}
	if (ret)
		dma_resv_unlock(&bo->resv);
	return ret;
}

/*
 * The job is submitted (with its @fence, or NULL) or not: unlock. The
 * caller's reference to @fence is dropped.
 */
void qgpu_bo_resv_end(struct qgpu_bo *bo, struct dma_fence *fence, bool writes)
{
	if (fence)
		dma_resv_add_fence(&bo->resv, fence, writes ?
				   DMA_RESV_USAGE_WRITE : DMA_RESV_USAGE_READ);
	dma_resv_unlock(&bo->resv);
	if (fence)
		dma_fence_put(fence);
}

/*
 * Wait for the dma-buf's fences that a DMA in direction @dir must follow:
 * its writers before the device reads it, everyone before it writes it.
 */
static int qgpu_dmabuf_wait_resv(struct dma_buf *dmabuf,
				 enum dma_data_direction dir, u64 timeout_ns)
{
	enum dma_resv_usage usage = dma_resv_usage_rw(dir == DMA_FROM_DEVICE);
	long t;

	if (!timeout_ns)
		return dma_resv_test_signaled(dmabuf->resv, usage) ? 0 : -EBUSY;
	t = dma_resv_wait_timeout(dmabuf->resv, usage, true,
				  min_t(u64, nsecs_to_jiffies64(timeout_ns),
					MAX_SCHEDULE_TIMEOUT - 1) ?: 1);
	if (t < 0)
		return t == -ERESTARTSYS ? -EINTR : t;
	return t ? 0 : -ETIME;
}

/*
 * A dynamic exporter (one with pin and unpin: another qgpu's VRAM, a GPU
 * driver's) may hand out peer-to-peer memory to importers that ask for it,
 * which only a dynamic attachment can: the device takes bus addresses
 * without pages (its SG list holds DMA addresses only). The mapping lives
 * for one job, pinned (a GPU driver's pin may first move the buffer to
 * system memory, and add a kernel fence for the move: waited for after
 * mapping), so there is nothing to invalidate when the exporter moves or
 * revokes it: it goes when the job ends.
 */
static void qgpu_dmabuf_move_notify(struct dma_buf_attachment *at)
{
}

static const struct dma_buf_attach_ops qgpu_dmabuf_importer_ops = {
	.allow_peer2peer = true,
	.move_notify = qgpu_dmabuf_move_notify,
};

/*
 * Attach the device to @dmabuf: dynamically (and so able to take P2P
 * memory) if its exporter is dynamic; statically otherwise, where a
 * dynamic attachment would buy nothing (the core would map the buffer at
 * once, both ways, for the attachment's life).
 */
static struct dma_buf_attachment *qgpu_dmabuf_attach(struct qgpu_device *qdev,
						     struct dma_buf *dmabuf)
{
	if (dma_buf_is_dynamic(dmabuf))
		return dma_buf_dynamic_attach(dmabuf, qdev->dev,
					      &qgpu_dmabuf_importer_ops, qdev);
	return dma_buf_attach(dmabuf, qdev->dev);
}

static struct sg_table *qgpu_dmabuf_map_pinned(struct dma_buf_attachment *at,
					       enum dma_data_direction dir)
{
	struct sg_table *sgt;
	int ret;

	if (!dma_buf_attachment_is_dynamic(at))
		return dma_buf_map_attachment_unlocked(at, dir);
	dma_resv_lock(at->dmabuf->resv, NULL);
	ret = dma_buf_pin(at);
	if (ret) {
		sgt = ERR_PTR(ret);
		goto out;
	}
	sgt = dma_buf_map_attachment(at, dir);
	if (IS_ERR(sgt))
		dma_buf_unpin(at);
out:
	dma_resv_unlock(at->dmabuf->resv);
	return sgt;
}

static void qgpu_dmabuf_unmap_after_job(struct dma_buf_attachment *at,
					struct sg_table *sgt,
					enum dma_data_direction dir)
{
	if (!dma_buf_attachment_is_dynamic(at)) {
		dma_buf_unmap_attachment_unlocked(at, sgt, dir);
		return;
	}
	dma_resv_lock(at->dmabuf->resv, NULL);
	dma_buf_unmap_attachment(at, sgt, dir);
	dma_buf_unpin(at);
	dma_resv_unlock(at->dmabuf->resv);
}

/*
 * The device's mapping of the dma-buf for one job. The core does not wait
 * for a dynamic attachment's mapping: the fences the pin may have added (a
 * move) are waited for here, for at most the caller's @timeout_ns (inside
 * the device's SRCU section, which removal waits for: bounded).
 */
static struct sg_table *qgpu_dmabuf_map_for_job(struct dma_buf_attachment *at,
						enum dma_data_direction dir,
						u64 timeout_ns)
{
	struct sg_table *sgt = qgpu_dmabuf_map_pinned(at, dir);
	int ret;

	if (IS_ERR(sgt) || !dma_buf_attachment_is_dynamic(at))
		return sgt;
	ret = qgpu_dmabuf_wait_resv(at->dmabuf, dir, timeout_ns);
	if (ret) {
		qgpu_dmabuf_unmap_after_job(at, sgt, dir);
		return ERR_PTR(ret);
	}
	return sgt;
}

/*
 * QGPU_IOCTL_COPY_DMABUF. Called outside the device's SRCU read section:
 * the wait for the dma-buf's fences (its kernel fences among them, which
 * the exporter's mapping would wait for without a deadline) and the
 * attachment come first, and may take as long as another driver likes.
 */
long qgpu_ioctl_copy_dmabuf(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_copy_dmabuf *a = call->args;
	struct dma_buf_attachment *at;
	enum dma_data_direction dir;
	struct dma_buf *dmabuf;
	struct sg_table *sgt;
	u64 end;
	int ret, idx;

	ret = qgpu_copy_args_check(qf, a->op, a->vram_offset, a->length,
				   !a->flags && !a->reserved0 && !a->reserved[0] &&
				   !a->reserved[1]);
	if (ret)
		return ret;
	a->fence = 0;
	a->hw_status = 0;
	a->nr_segments = 0;
	dir = a->op == QGPU_OP_COPY_TO_VRAM ? DMA_TO_DEVICE : DMA_FROM_DEVICE;

	dmabuf = dma_buf_get(a->fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	if (check_add_overflow(a->offset, a->length, &end) || end > dmabuf->size) {
		ret = -EINVAL;
		goto out_put;
	}
	/* Into a dma-buf opened read-only: no. */
	if (dir == DMA_FROM_DEVICE && !(dmabuf->file->f_mode & FMODE_WRITE)) {
		ret = -EBADF;
		goto out_put;
	}
	ret = qgpu_dmabuf_wait_resv(dmabuf, dir, a->timeout_ns);
	if (ret)
		goto out_put;
	/* An exporter's attach looks at this device: not at one going away. */
	ret = qgpu_unusable(qdev);
	if (ret)
		goto out_put;
	at = qgpu_dmabuf_attach(qdev, dmabuf);
	if (IS_ERR(at)) {
		ret = PTR_ERR(at);
		goto out_put;
	}

	idx = srcu_read_lock(&qdev->srcu);
	ret = qgpu_unusable(qdev);
	if (ret)
		goto out_unlock;
	sgt = qgpu_dmabuf_map_for_job(at, dir, a->timeout_ns);
	if (IS_ERR(sgt)) {
		ret = PTR_ERR(sgt);
		/*
		 * dma_map_sgtable()'s -EIO: the exporter could not map it for
		 * this device (bounce buffers, IOVA space), a resource limit;
		 * -EIO is for what the device did to a job.
		 */
		if (ret == -EIO)
			ret = -ENOMEM;
		goto out_unlock;
	}
	ret = qgpu_copy_sgt(qdev, a->op, sgt, a->offset, a->length,
			    a->vram_offset, QGPU_STAT_DMABUF_COPIES,
			    &a->nr_segments, &a->fence, &a->hw_status);
	/* The job has retired (and its fence signalled): no DMA any more. */
	qgpu_dmabuf_unmap_after_job(at, sgt, dir);
out_unlock:
	srcu_read_unlock(&qdev->srcu, idx);
	dma_buf_detach(dmabuf, at);
out_put:
	dma_buf_put(dmabuf);
	/* Once submitted, the caller gets the fence whatever the result. */
	call->copy_out = a->fence != 0 || !ret;
	return ret;
}

#else /* !CONFIG_DMA_SHARED_BUFFER */

void qgpu_bo_resv_init(struct qgpu_bo *bo)
{
}

void qgpu_bo_resv_fini(struct qgpu_bo *bo)
{
}

int qgpu_bo_resv_begin(struct qgpu_bo *bo, bool writes, struct qgpu_fence **pre)
{
	*pre = NULL;
	return 0;
}

void qgpu_bo_resv_end(struct qgpu_bo *bo, struct dma_fence *fence, bool writes)
{
}

long qgpu_ioctl_dmabuf_export(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	return -EOPNOTSUPP;
}

long qgpu_ioctl_copy_dmabuf(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	return -EOPNOTSUPP;
}

void qgpu_dmabuf_zap(struct qgpu_device *qdev)
{
}

void qgpu_dmabuf_wait_unpinned(struct qgpu_device *qdev)
{
}

#endif
