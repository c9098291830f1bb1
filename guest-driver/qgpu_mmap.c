// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: mmap of VRAM (write-combined, eager or lazily faulted), of the
 * user register page (uncached), and of DMA-coherent buffer objects.
 *
 * All mappings of a device live in one private address_space (an inode of
 * a small pseudo file system, as DRM does) so that remove can zap every
 * user PTE with unmap_mapping_range() before the BARs and the coherent
 * memory go away; qgpu_zap_user_mappings() says why that alone is not
 * enough for mappings populated inside ->mmap. Every VMA holds a reference
 * on what it maps; vm_ops open/close keep the per-kind VMA counts in the
 * statistics exact across fork() and partial munmap().
 */

#include <linux/cc_platform.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "qgpu_drv.h"

static unsigned int mmap_race_delay_us;
module_param(mmap_race_delay_us, uint, 0644);
MODULE_PARM_DESC(mmap_race_delay_us,
		 "Testing: stall each mmap(2) this long (at most 1 s) after the driver's part, before the core makes the new mapping visible to remove (0: off)");

/* ---- private address_space ------------------------------------------------ */

#define QGPU_FS_MAGIC	0x51475055

static struct vfsmount *qgpu_fs_mnt;
static int qgpu_fs_cnt;

static int qgpu_fs_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, QGPU_FS_MAGIC) ? 0 : -ENOMEM;
}

/*
 * No .owner: the internal mount would pin the module while any device is
 * bound, so rmmod could never succeed. The mount only lives while a device
 * does, and every device is released in pci_unregister_driver() (open
 * files and mappings pin the module through qgpu_fops).
 */
static struct file_system_type qgpu_fs_type = {
	.name = "qgpu_fs",
	.init_fs_context = qgpu_fs_init_fs_context,
	.kill_sb = kill_anon_super,
};

struct inode *qgpu_fs_inode_new(void)
{
	struct inode *inode;
	int ret;

	ret = simple_pin_fs(&qgpu_fs_type, &qgpu_fs_mnt, &qgpu_fs_cnt);
	if (ret)
		return ERR_PTR(ret);
	inode = alloc_anon_inode(qgpu_fs_mnt->mnt_sb);
	if (IS_ERR(inode))
		simple_release_fs(&qgpu_fs_mnt, &qgpu_fs_cnt);
	return inode;
}

void qgpu_fs_inode_free(struct inode *inode)
{
	if (inode) {
		iput(inode);
		simple_release_fs(&qgpu_fs_mnt, &qgpu_fs_cnt);
	}
}

/* ---- buffer objects -------------------------------------------------------- */

/* Allocated with these attributes, freed with the same (dma_free_attrs()). */
#define QGPU_BO_DMA_ATTRS	DMA_ATTR_NO_WARN	/* no splat on -ENOMEM */

static void qgpu_bo_release(struct kref *ref)
{
	struct qgpu_bo *bo = container_of(ref, struct qgpu_bo, ref);
	struct qgpu_device *qdev = bo->qdev;

	mutex_lock(&qdev->bo_lock);
	list_del(&bo->node);
	if (bo->vaddr) {
		dma_free_attrs(qdev->dev, bo->size, bo->vaddr, bo->dma,
			       QGPU_BO_DMA_ATTRS);
		atomic64_sub(bo->size, &qdev->bo_bytes);
		qgpu_stat_add(qdev, QGPU_STAT_BOS, -1);
		qgpu_stat_add(qdev, QGPU_STAT_BO_BYTES, -(s64)bo->size);
	}
	mutex_unlock(&qdev->bo_lock);
	qgpu_bo_resv_fini(bo);
	kfree(bo);
	qgpu_device_put(qdev);
}

void qgpu_bo_put(struct qgpu_bo *bo)
{
	kref_put(&bo->ref, qgpu_bo_release);
}

/* Remove: free the memory of every object; the structs live on. */
void qgpu_bo_free_all_backing(struct qgpu_device *qdev)
{
	struct qgpu_bo *bo;

	mutex_lock(&qdev->bo_lock);
	list_for_each_entry(bo, &qdev->bos, node) {
		if (!bo->vaddr)
			continue;
		/*
		 * An importer that did not unmap in time (see
		 * qgpu_dmabuf_wait_unpinned()) may still DMA into it: better
		 * never freed than reused under that DMA.
		 */
		mutex_lock(&qdev->dmabuf_lock);
		if (bo->dmabuf_pins)
			dev_warn(qdev->dev, "%s: BO %u still mapped by %u importer(s): its %zu bytes are never freed\n",
				 qdev->name, bo->handle, bo->dmabuf_pins,
				 bo->size);
		else
			dma_free_attrs(qdev->dev, bo->size, bo->vaddr, bo->dma,
				       QGPU_BO_DMA_ATTRS);
		mutex_unlock(&qdev->dmabuf_lock);
		atomic64_sub(bo->size, &qdev->bo_bytes);
		WRITE_ONCE(bo->vaddr, NULL);	/* lookups read it locklessly */
		qgpu_stat_add(qdev, QGPU_STAT_BOS, -1);
		qgpu_stat_add(qdev, QGPU_STAT_BO_BYTES, -(s64)bo->size);
	}
	mutex_unlock(&qdev->bo_lock);
}

/* A referenced BO of this file with live memory, or NULL. */
struct qgpu_bo *qgpu_bo_lookup(struct qgpu_file *qf, u32 handle)
{
	struct qgpu_bo *bo;

	xa_lock(&qf->bos);
	bo = xa_load(&qf->bos, handle);
	if (bo && (!READ_ONCE(bo->vaddr) || !kref_get_unless_zero(&bo->ref)))
		bo = NULL;
	xa_unlock(&qf->bos);
	return bo;
}

/*
 * Create a BO and give it a handle in @qf. Returns it with a reference for
 * the caller (the handle holds another), or an ERR_PTR().
 */
struct qgpu_bo *qgpu_bo_create(struct qgpu_file *qf,
			       struct qgpu_bo_create *args)
{
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_bo *bo;
	u32 handle;
	int ret;

	if (args->flags || args->reserved[0] || args->reserved[1] ||
	    args->handle || args->mmap_offset || !args->size)
		return ERR_PTR(-EINVAL);
	if (args->size > QGPU_BO_MAX_SIZE)
		return ERR_PTR(-E2BIG);
	/*
	 * Coherent memory is charged to no cgroup: cap it per device, or any
	 * user of the device could exhaust the machine's memory.
	 */
	if (atomic64_add_return(PAGE_ALIGN(args->size), &qdev->bo_bytes) >
	    qdev->bo_limit) {
		atomic64_sub(PAGE_ALIGN(args->size), &qdev->bo_bytes);
		return ERR_PTR(-ENOSPC);
	}

	bo = kzalloc(sizeof(*bo), GFP_KERNEL);
	if (!bo) {
		atomic64_sub(PAGE_ALIGN(args->size), &qdev->bo_bytes);
		return ERR_PTR(-ENOMEM);
	}
	kref_init(&bo->ref);
	qgpu_bo_resv_init(bo);
	bo->qdev = qdev;
	bo->size = PAGE_ALIGN(args->size);
	/* Running out of contiguous memory is an -ENOMEM, not a warning. */
	bo->vaddr = qgpu_dma_alloc(qdev->dev, bo->size, &bo->dma,
				   QGPU_BO_DMA_ATTRS);
	if (!bo->vaddr) {
		atomic64_sub(bo->size, &qdev->bo_bytes);
		qgpu_bo_resv_fini(bo);
		kfree(bo);
		return ERR_PTR(-ENOMEM);
	}
	kref_get(&qdev->ref);
	mutex_lock(&qdev->bo_lock);
	list_add(&bo->node, &qdev->bos);
	mutex_unlock(&qdev->bo_lock);
	qgpu_stat_inc(qdev, QGPU_STAT_BOS);
	qgpu_stat_add(qdev, QGPU_STAT_BO_BYTES, bo->size);

	kref_get(&bo->ref);	/* the caller's, before the handle is visible */
	ret = xa_alloc(&qf->bos, &handle, bo, XA_LIMIT(1, QGPU_BO_MAX_HANDLE),
		       GFP_KERNEL);
	if (ret) {
		qgpu_bo_put(bo);
		qgpu_bo_put(bo);
		return ERR_PTR(ret == -EBUSY ? -ENOSPC : ret);
	}
	bo->handle = handle;
	args->handle = handle;
	args->mmap_offset = QGPU_MMAP_BO_BASE +
			    ((u64)handle << QGPU_MMAP_BO_SHIFT);
	return bo;
}

int qgpu_bo_destroy(struct qgpu_file *qf, u32 handle)
{
	struct qgpu_bo *bo;

	if (!handle)
		return -ENOENT;
	bo = xa_erase(&qf->bos, handle);
	if (!bo)
		return -ENOENT;
	qgpu_bo_put(bo);
	return 0;
}

/* ---- VMAs -------------------------------------------------------------- */

enum qgpu_map_kind {
	QGPU_MAP_VRAM,
	QGPU_MAP_VRAM_LAZY,
	QGPU_MAP_REGS,
	QGPU_MAP_BO,
};

static const enum qgpu_stat qgpu_map_stat[] = {
	[QGPU_MAP_VRAM] = QGPU_STAT_VMA_VRAM,
	[QGPU_MAP_VRAM_LAZY] = QGPU_STAT_VMA_VRAM_LAZY,
	[QGPU_MAP_REGS] = QGPU_STAT_VMA_REGS,
	[QGPU_MAP_BO] = QGPU_STAT_VMA_BO,
};

/*
 * vm_private_data of our VMAs: one per mmap(2), shared by the VMAs that
 * fork() and partial munmap() make of it.
 */
struct qgpu_vma_priv {
	struct kref ref;
	struct qgpu_device *qdev;	/* reference */
	struct qgpu_bo *bo;		/* reference, QGPU_MAP_BO only */
	enum qgpu_map_kind kind;
	pgoff_t base;			/* mmap offset of the region's byte 0, pages */
	struct mm_struct *mm;		/* mmgrab()bed; NULL until mapped */
	struct list_head node;		/* qdev->mappings, under mappings_lock */
};

static void qgpu_vma_priv_release(struct kref *ref)
{
	struct qgpu_vma_priv *p = container_of(ref, struct qgpu_vma_priv, ref);
	struct qgpu_device *qdev = p->qdev;

	if (p->mm) {
		spin_lock(&qdev->mappings_lock);
		list_del(&p->node);
		spin_unlock(&qdev->mappings_lock);
		mmdrop(p->mm);
	}
	if (p->bo)
		qgpu_bo_put(p->bo);
	qgpu_device_put(qdev);
	kfree(p);
}

/*
 * Remove (and a lost device) call this, with @dead or @lost set, to take
 * every user PTE of the device away before its BARs and BO memory go;
 * resets zap the BARs' (qgpu_zap_bar_mappings()).
 *
 * Faults check those flags under @map_srcu, so synchronize_srcu() and then
 * unmap_mapping_range() would do for them. ->mmap is different: it fills
 * PTEs (remap_pfn_range, io_mapping_map_user, dma_mmap_coherent), but the
 * core links the new VMA into the address_space only after ->mmap has
 * returned, so an mmap(2) whose ->mmap saw the device alive can link its
 * VMA after unmap_mapping_range() looked, and keep PTEs to freed memory.
 * The core holds the mm's mmap_lock for writing from before ->mmap until
 * the VMA is linked (or torn down on failure): taking it once for each
 * mapping's mm waits for every such mmap(2) to finish. The mappings are
 * taken off the list right after synchronize_srcu(): that snapshot holds
 * every ->mmap that saw the flags clear, and later ones fill no PTEs of
 * what is zapped, so the wait is bounded. mmap_lock is taken without
 * holding mappings_lock (munmap holds mmap_lock while releasing a
 * mapping, which takes it); zap_lock, held throughout so that two zaps
 * never split the list between them, is never taken under mmap_lock.
 *
 * The synchronize_srcu() is also what keeps the kernel's own CPU accesses
 * to VRAM (qgpu_cpu_access_chunk()) out of a reset: it must stay
 * unconditional, even with no user mapping to zap.
 */
static void qgpu_zap_range(struct qgpu_device *qdev, u64 start, u64 len)
{
	struct qgpu_vma_priv *p;
	struct mm_struct *mm;
	LIST_HEAD(todo);
	LIST_HEAD(waited);

	mutex_lock(&qdev->zap_lock);
	synchronize_srcu(&qdev->map_srcu);
	spin_lock(&qdev->mappings_lock);
	list_splice_init(&qdev->mappings, &todo);
	while ((p = list_first_entry_or_null(&todo, struct qgpu_vma_priv,
					     node))) {
		list_move_tail(&p->node, &waited);
		mm = p->mm;
		mmgrab(mm);
		spin_unlock(&qdev->mappings_lock);
		mmap_read_lock(mm);
		mmap_read_unlock(mm);
		mmdrop(mm);
		spin_lock(&qdev->mappings_lock);
	}
	list_splice(&waited, &qdev->mappings);
	spin_unlock(&qdev->mappings_lock);
	unmap_mapping_range(qdev->inode->i_mapping, start, len, 1);
	/* VRAM's mappings through its dma-bufs (qgpu_mmap_dev() listed them too). */
	qgpu_p2p_zap(qdev);
	mutex_unlock(&qdev->zap_lock);
}

/*
 * Everything, the BOs' dma-bufs' mappings too; ioctls, which may use BO
 * memory, are waited for as well.
 */
void qgpu_zap_user_mappings(struct qgpu_device *qdev)
{
	synchronize_srcu(&qdev->srcu);
	qgpu_zap_range(qdev, 0, 0);
	qgpu_dmabuf_zap(qdev);
}

/*
 * A reset (function reset, PCIe link reset) is about to make the BARs
 * unreachable, with @frozen set: take every user PTE of VRAM and of the
 * register page away, as vfio-pci does. Accesses fault and wait in
 * qgpu_vm_fault() until qgpu_ring_restart() clears @frozen, then map the
 * page again. Buffer objects are system memory: their mappings stay (each
 * VMA's vm_pgoff is its mmap offset, so the BAR regions are one range).
 */
void qgpu_zap_bar_mappings(struct qgpu_device *qdev)
{
	qgpu_zap_range(qdev, 0, QGPU_MMAP_BO_BASE);
}

static void qgpu_vm_open(struct vm_area_struct *vma)
{
	struct qgpu_vma_priv *p = vma->vm_private_data;

	kref_get(&p->ref);
	qgpu_stat_inc(p->qdev, qgpu_map_stat[p->kind]);
}

static void qgpu_vm_close(struct vm_area_struct *vma)
{
	struct qgpu_vma_priv *p = vma->vm_private_data;

	qgpu_stat_add(p->qdev, qgpu_map_stat[p->kind], -1);
	kref_put(&p->ref, qgpu_vma_priv_release);
}

/* Moving a device mapping is refused (growing is, by VM_DONTEXPAND). */
static int qgpu_vm_mremap(struct vm_area_struct *vma)
{
	return -EINVAL;
}

/*
 * Wait, without the fault lock, until a reset in progress is over; then
 * the fault is retried. Only user-space accesses wait: false (SIGBUS, or
 * -EFAULT for the kernel's uaccess) for the kernel's own and for faults
 * that may not drop their lock. The file is held while waiting: once the
 * lock is dropped the VMA may go, and with it what kept @qdev and the
 * module alive; the last fput() is deferred until the task leaves the
 * kernel.
 */
static bool qgpu_fault_wait_reset(struct vm_fault *vmf, struct qgpu_device *qdev)
{
	struct file *file;

	if (!(vmf->flags & FAULT_FLAG_USER) ||
	    !(vmf->flags & FAULT_FLAG_ALLOW_RETRY))
		return false;
	if (vmf->flags & FAULT_FLAG_RETRY_NOWAIT)
		return true;
	file = get_file(vmf->vma->vm_file);
	release_fault_lock(vmf);
	wait_event_killable(qdev->fence_wq,
			    !READ_ONCE(qdev->frozen) || READ_ONCE(qdev->dead) ||
			    READ_ONCE(qdev->lost));
	fput(file);
	return true;
}

/*
 * Insert the faulting page. VRAM and the register page fault when lazily
 * mapped, or after a reset zapped them (qgpu_zap_bar_mappings()); during
 * the reset the fault waits for it to end. A buffer object without an
 * IOMMU faults at first access (qgpu_mmap_bo()). Behind one,
 * dma_mmap_coherent() mapped its remapped pages VM_MIXEDMAP, which
 * MADV_DONTNEED may zap; insert the page again (VM_PFNMAP mappings refuse
 * MADV_DONTNEED). After remove or a lost device zapped everything: SIGBUS.
 */
static vm_fault_t qgpu_vm_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct qgpu_vma_priv *p = vma->vm_private_data;
	struct qgpu_device *qdev = p->qdev;
	vm_fault_t ret = VM_FAULT_SIGBUS;
	unsigned long pgoff, pfn;
	void *vaddr;
	int idx;

	if (p->kind == QGPU_MAP_BO &&
	    !(vma->vm_flags & (VM_MIXEDMAP | VM_PFNMAP)))
		return VM_FAULT_SIGBUS;
	/* The page of the region: vm_pgoff is the mmap offset of vm_start. */
	pgoff = vma->vm_pgoff - p->base +
		((vmf->address - vma->vm_start) >> PAGE_SHIFT);

	idx = srcu_read_lock(&qdev->map_srcu);
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost))
		goto out;
	if (p->kind == QGPU_MAP_BO) {
		/* Remove frees BO memory only after synchronize_srcu(). */
		vaddr = READ_ONCE(p->bo->vaddr);
		if (!vaddr || pgoff >= p->bo->size >> PAGE_SHIFT)
			goto out;
		vaddr += pgoff << PAGE_SHIFT;
		if (vma->vm_flags & VM_MIXEDMAP)
			ret = is_vmalloc_addr(vaddr) ?
			      vmf_insert_page(vma, vmf->address,
					      vmalloc_to_page(vaddr)) :
			      VM_FAULT_SIGBUS;
		else if (!is_vmalloc_addr(vaddr))
			ret = vmf_insert_pfn(vma, vmf->address,
					     page_to_pfn(virt_to_page(vaddr)));
		goto out;
	}
	if (READ_ONCE(qdev->frozen)) {
		srcu_read_unlock(&qdev->map_srcu, idx);
		return qgpu_fault_wait_reset(vmf, qdev) ? VM_FAULT_RETRY :
							  VM_FAULT_SIGBUS;
	}
	if (p->kind == QGPU_MAP_REGS) {
		if (pgoff)
			goto out;
		pfn = (qdev->regs_phys + QGPU_REGS_USER_PAGE) >> PAGE_SHIFT;
	} else {
		if (pgoff >= qdev->vram_size >> PAGE_SHIFT)
			goto out;
		pfn = (qdev->vram_phys >> PAGE_SHIFT) + pgoff;
	}
	ret = vmf_insert_pfn_prot(vma, vmf->address, pfn, vma->vm_page_prot);
	if (ret == VM_FAULT_NOPAGE)
		qgpu_stat_inc(qdev, p->kind == QGPU_MAP_VRAM_LAZY ?
				    QGPU_STAT_LAZY_FAULTS : QGPU_STAT_BAR_REFAULTS);
out:
	srcu_read_unlock(&qdev->map_srcu, idx);
	return ret;
}

/*
 * ptrace (gdb) and /proc/PID/mem reach device mappings here, as
 * get_user_pages() cannot (VM_PFNMAP). VRAM and the register page: through
 * a temporary mapping of the page the PTE points at (generic_access_phys(),
 * so only pages faulted in -- the register page and lazy VRAM are mapped on
 * first access --, with the mapping's own permissions). Buffer
 * objects: through the kernel's address of their memory, while it lives.
 */
static int qgpu_vm_access(struct vm_area_struct *vma, unsigned long addr,
			  void *buf, int len, int write)
{
	struct qgpu_vma_priv *p = vma->vm_private_data;
	struct qgpu_device *qdev = p->qdev;
	u64 off;
	void *vaddr;
	int idx;

	/*
	 * One page at most, inside the VMA: generic_access_phys() maps the
	 * physical range from the first page's PTE on, which past this page
	 * could be beyond the BAR. The core calls again for the rest.
	 */
	len = min_t(unsigned long, len,
		    min(PAGE_SIZE - offset_in_page(addr), vma->vm_end - addr));
	if (p->kind != QGPU_MAP_BO)
		return generic_access_phys(vma, addr, buf, len, write);
	if (write && !(vma->vm_flags & VM_WRITE))
		return -EACCES;
	off = ((u64)(vma->vm_pgoff - p->base) << PAGE_SHIFT) +
	      (addr - vma->vm_start);
	if (off >= p->bo->size)
		return -EINVAL;
	len = min_t(u64, len, p->bo->size - off);
	idx = srcu_read_lock(&qdev->map_srcu);
	/* Remove frees BO memory only after synchronize_srcu(). */
	vaddr = READ_ONCE(p->bo->vaddr);
	if (!vaddr || READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost)) {
		len = -EIO;
	} else if (write) {
		memcpy(vaddr + off, buf, len);
	} else {
		memcpy(buf, vaddr + off, len);
	}
	srcu_read_unlock(&qdev->map_srcu, idx);
	return len;
}

static const struct vm_operations_struct qgpu_vm_ops = {
	.open = qgpu_vm_open,
	.close = qgpu_vm_close,
	.mremap = qgpu_vm_mremap,
	.fault = qgpu_vm_fault,
	.access = qgpu_vm_access,
};

/*
 * WC protection of the io_mapping, other bits from the VMA; uncached for a
 * VRAM BAR that is not prefetchable.
 */
static pgprot_t qgpu_vram_prot(struct qgpu_device *qdev,
			       struct vm_area_struct *vma)
{
	if (!qdev->vram_wc)
		return pgprot_noncached(vma->vm_page_prot);
#ifdef _PAGE_CACHE_MASK
	return __pgprot((pgprot_val(qdev->iomap->prot) & _PAGE_CACHE_MASK) |
			(pgprot_val(vma->vm_page_prot) & ~_PAGE_CACHE_MASK));
#else
	return pgprot_writecombine(vma->vm_page_prot);
#endif
}

static int qgpu_mmap_vram(struct qgpu_device *qdev, struct vm_area_struct *vma,
			  unsigned long pgoff)
{
	unsigned long pfn = (qdev->vram_phys >> PAGE_SHIFT) + pgoff;
	unsigned long size = vma->vm_end - vma->vm_start;
	unsigned long first = size > PAGE_SIZE ? PAGE_SIZE : size;
	int ret;

	/* What a fault after a reset inserts with. */
	vma->vm_page_prot = pgprot_decrypted(qgpu_vram_prot(qdev, vma));
#if IS_ENABLED(CONFIG_IO_MAPPING)
	if (qdev->iomap)
		return io_mapping_map_user(qdev->iomap, vma, vma->vm_start,
					   pfn, size);
#endif
	/*
	 * io_mapping_map_user() skips PAT tracking: the io_mapping's
	 * ioremap_wc() (or, uncached, the driver's ioremap()) already reserved
	 * the memtype of the BAR. A remap of the whole VMA would take a
	 * second, VMA-wide reservation (VM_PAT) that partial munmap() cannot
	 * split cleanly ("freeing invalid memtype"), and that Linux 6.12
	 * releases by reading the PTE at the VMA's start: a reset's zap that
	 * meets fork() copying the VMA, after it set VM_PAT on the copy and
	 * before it copied the PTEs, finds none and warns (untrack_pfn; fixed
	 * in 6.16 by "mm: convert VM_PFNMAP tracking to pfnmap_track() +
	 * pfnmap_untrack()"). Remapping in two pieces makes PAT only check
	 * the range against the existing reservation; a single page is left
	 * to its first access, which inserts it without tracking.
	 */
	if (first == size)
		return 0;
	ret = io_remap_pfn_range(vma, vma->vm_start, pfn, first,
				 vma->vm_page_prot);
	if (ret)
		return ret;
	return io_remap_pfn_range(vma, vma->vm_start + first,
				  pfn + (first >> PAGE_SHIFT), size - first,
				  vma->vm_page_prot);
}

static int qgpu_mmap_bo(struct qgpu_file *qf, struct vm_area_struct *vma,
			u64 off, struct qgpu_vma_priv *p)
{
	u64 rel = off - QGPU_MMAP_BO_BASE;
	u64 handle = rel >> QGPU_MMAP_BO_SHIFT;
	u64 bo_off = rel & ((1ULL << QGPU_MMAP_BO_SHIFT) - 1);
	unsigned long size = vma->vm_end - vma->vm_start;
	struct qgpu_bo *bo;
	int ret;

	/* Handles and sizes fit the uapi's layout, below what mmap2 reaches. */
	BUILD_BUG_ON(QGPU_BO_MAX_SIZE > 1ULL << QGPU_MMAP_BO_SHIFT);
	BUILD_BUG_ON(QGPU_MMAP_BO_BASE +
		     ((u64)(QGPU_BO_MAX_HANDLE + 1) << QGPU_MMAP_BO_SHIFT) >
		     1ULL << (32 + 12));
	if (!handle || handle > QGPU_BO_MAX_HANDLE)
		return -EINVAL;
	bo = qgpu_bo_lookup(qf, handle);
	if (!bo)
		return -EINVAL;
	if (bo_off >= bo->size || size > bo->size - bo_off) {
		qgpu_bo_put(bo);
		return -EINVAL;
	}
	p->base = (off - bo_off) >> PAGE_SHIFT;
	/*
	 * A buffer in the kernel's linear map (no IOMMU: direct, swiotlb) is
	 * mapped page by page on first access (qgpu_vm_fault()), as udmabuf
	 * maps its pages. dma_mmap_coherent() would remap it whole, which
	 * gives the VMA x86 PAT's VM_PAT; Linux 6.12 warns when remove's zap
	 * meets fork() copying such a VMA (see qgpu_mmap_vram()), and fork()
	 * can fail. Behind an IOMMU the buffer is vmalloc'ed pages, which
	 * dma_mmap_coherent() maps VM_MIXEDMAP, untracked. Under memory
	 * encryption the DMA API knows the right protection: left to it.
	 */
	if (!is_vmalloc_addr(bo->vaddr) && !cc_platform_has(CC_ATTR_MEM_ENCRYPT)) {
		vm_flags_set(vma, VM_IO | VM_PFNMAP);
		p->bo = bo;
		return 0;
	}
	/*
	 * dma_mmap_coherent() takes vm_pgoff as the offset into the buffer;
	 * the VMA keeps its mmap offset (see qgpu_zap_bar_mappings()).
	 */
	vma->vm_pgoff = bo_off >> PAGE_SHIFT;
	ret = dma_mmap_coherent(qf->qdev->dev, vma, bo->vaddr, bo->dma,
				bo->size);
	vma->vm_pgoff = off >> PAGE_SHIFT;
	if (ret) {
		qgpu_bo_put(bo);
		return ret;
	}
	p->bo = bo;
	return 0;
}

int qgpu_mmap(struct file *filp, struct vm_area_struct *vma)
{
	struct qgpu_file *qf = filp->private_data;

	return qgpu_mmap_dev(qf->qdev, qf, vma);
}

/*
 * An mmap(2) of the device's regions, by its file @qf, or with @qf NULL of
 * a VRAM dma-buf (qgpu_vram_dmabuf_mmap()), which has no buffer objects.
 */
int qgpu_mmap_dev(struct qgpu_device *qdev, struct qgpu_file *qf,
		  struct vm_area_struct *vma)
{
	unsigned long size = vma->vm_end - vma->vm_start;
	u64 off = (u64)vma->vm_pgoff << PAGE_SHIFT;
	struct qgpu_vma_priv *p;
	bool frozen;
	u64 end;
	int idx, ret;

	/*
	 * VM_MAYSHARE, not VM_SHARED: the core clears VM_SHARED for MAP_SHARED
	 * on a read-only file, and such a read-only view is fine.
	 */
	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (vma->vm_flags & VM_EXEC)
		return -EPERM;
	if (check_add_overflow(off, (u64)size, &end))
		return -EINVAL;

	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p)
		return -ENOMEM;
	kref_init(&p->ref);
	p->qdev = qdev;

	idx = srcu_read_lock(&qdev->map_srcu);
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost)) {
		ret = -ENODEV;
		goto err;
	}

	vm_flags_clear(vma, VM_MAYEXEC);
	vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
	/*
	 * Device memory is VM_IO | VM_PFNMAP. Buffer objects: VM_IO |
	 * VM_PFNMAP too without an IOMMU (qgpu_mmap_bo()); behind one, the
	 * flags of dma_mmap_coherent()'s vm_map_pages() (VM_MIXEDMAP; it
	 * BUG()s on VM_PFNMAP).
	 */
	if (off < QGPU_MMAP_BO_BASE)
		vm_flags_set(vma, VM_IO | VM_PFNMAP);
	vma->vm_ops = &qgpu_vm_ops;
	vma->vm_private_data = p;

	/*
	 * VRAM is mapped here (eagerly) unless a reset is in progress: its
	 * faults then map it once it is over.
	 */
	frozen = READ_ONCE(qdev->frozen);
	if (end <= QGPU_MMAP_VRAM + qdev->vram_size) {
		p->kind = QGPU_MAP_VRAM;
		p->base = QGPU_MMAP_VRAM >> PAGE_SHIFT;
		vma->vm_page_prot = pgprot_decrypted(qgpu_vram_prot(qdev, vma));
		ret = frozen ? 0 :
		      qgpu_mmap_vram(qdev, vma, (off - QGPU_MMAP_VRAM) >> PAGE_SHIFT);
	} else if (off >= QGPU_MMAP_VRAM_LAZY &&
		   end <= QGPU_MMAP_VRAM_LAZY + qdev->vram_size) {
		p->kind = QGPU_MAP_VRAM_LAZY;
		p->base = QGPU_MMAP_VRAM_LAZY >> PAGE_SHIFT;
		/* io_remap_pfn_range() would add pgprot_decrypted() too. */
		vma->vm_page_prot = pgprot_decrypted(qgpu_vram_prot(qdev, vma));
		ret = 0;
	} else if (off == QGPU_MMAP_REGS && size == PAGE_SIZE &&
		   PAGE_SIZE == QGPU_PAGE_SIZE) {
		/*
		 * Only the user page; the kernel page is never mapped. Its
		 * first access maps it (qgpu_vm_fault()), as vfio-pci maps
		 * BARs: see qgpu_mmap_vram() on VM_PAT.
		 */
		p->kind = QGPU_MAP_REGS;
		p->base = QGPU_MMAP_REGS >> PAGE_SHIFT;
		vma->vm_page_prot = pgprot_decrypted(pgprot_noncached(vma->vm_page_prot));
		ret = 0;
	} else if (off >= QGPU_MMAP_BO_BASE && qf) {
		p->kind = QGPU_MAP_BO;
		ret = qgpu_mmap_bo(qf, vma, off, p);
	} else {
		ret = -EINVAL;
	}
	if (ret)
		goto err;

	kref_get(&qdev->ref);
	qgpu_stat_inc(qdev, qgpu_map_stat[p->kind]);
	/* Inside the SRCU section: remove's zap waits for this mmap(2). */
	p->mm = vma->vm_mm;
	mmgrab(p->mm);
	spin_lock(&qdev->mappings_lock);
	list_add_tail(&p->node, &qdev->mappings);
	spin_unlock(&qdev->mappings_lock);
	srcu_read_unlock(&qdev->map_srcu, idx);
	/* Widens the window between ->mmap and the VMA's linking, for tests. */
	if (READ_ONCE(mmap_race_delay_us))
		fsleep(min(READ_ONCE(mmap_race_delay_us), USEC_PER_SEC));
	return 0;

err:
	srcu_read_unlock(&qdev->map_srcu, idx);
	vma->vm_private_data = NULL;
	vma->vm_ops = NULL;
	kfree(p);
	return ret;
}
