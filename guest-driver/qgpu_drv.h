/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * qgpu: driver-internal definitions.
 */
#ifndef QGPU_DRV_H
#define QGPU_DRV_H

#include <linux/atomic.h>
#include <linux/dma-mapping.h>
#include <linux/dma-resv.h>
#include <linux/interrupt.h>
#include <linux/io-mapping.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/llist.h>
#include <linux/miscdevice.h>
#include <linux/mmzone.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/scatterlist.h>
#include <linux/sizes.h>
#include <linux/spinlock.h>
#include <linux/srcu.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "hw/misc/qgpu_hw.h"
#include "qgpu.h"

#define QGPU_DRV_NAME		"qgpu"
#define QGPU_MAX_XFER		(64ULL << 20)
/* One physically contiguous allocation: what dma-direct can always try. */
#define QGPU_BO_MAX_SIZE	((u64)PAGE_SIZE << MAX_PAGE_ORDER)
#define QGPU_BO_MAX_HANDLE	0xffff
/* Longest descriptor of a VRAM_OP, so that the watchdog sees progress. */
#define QGPU_VRAM_OP_CHUNK	SZ_2M

/* Statistics, shown in /sys/class/misc/qgpuN/stats/. */
enum qgpu_stat {
	QGPU_STAT_JOBS,
	/*
	 * Descriptors written to the ring, a replay's included: once the
	 * engine is idle, the device's stat-descriptors + stat-aborted +
	 * stat-dropped over the same time.
	 */
	QGPU_STAT_DESCRIPTORS,
	QGPU_STAT_SG_DESCRIPTORS,
	QGPU_STAT_SG_ENTRIES,
	QGPU_STAT_SINGLE_PAGE_MAPS,
	QGPU_STAT_BYTES_TO_VRAM,
	QGPU_STAT_BYTES_FROM_VRAM,
	QGPU_STAT_HW_ERRORS,
	QGPU_STAT_IRQ_DMA,
	QGPU_STAT_IRQ_ERROR,
	QGPU_STAT_IRQ_SOFT,
	QGPU_STAT_IRQ_SPURIOUS,
	QGPU_STAT_POLL_COMPLETIONS,
	QGPU_STAT_TIMEOUTS,
	QGPU_STAT_ENGINE_RESETS,
	QGPU_STAT_PINNED_PAGES,
	QGPU_STAT_VMA_VRAM,
	QGPU_STAT_VMA_VRAM_LAZY,
	QGPU_STAT_VMA_REGS,
	QGPU_STAT_VMA_BO,
	QGPU_STAT_LAZY_FAULTS,
	QGPU_STAT_BOS,
	QGPU_STAT_BO_BYTES,
	QGPU_STAT_LAST_ERROR,
	QGPU_STAT_IRQ_RESYNC,
	QGPU_STAT_WATCHDOG_RESETS,
	QGPU_STAT_PCI_ERRORS,
	QGPU_STAT_PCI_RECOVERIES,
	QGPU_STAT_DEVICE_LOST,
	QGPU_STAT_BAR_REFAULTS,
	QGPU_STAT_LINE_BOUNCES,
	QGPU_STAT_SUSPENDS,
	QGPU_STAT_DMABUFS,		/* exported dma-bufs alive */
	QGPU_STAT_DMABUF_MAPS,		/* importers' mappings of them */
	QGPU_STAT_DMABUF_COPIES,	/* QGPU_IOCTL_COPY_DMABUF jobs */
	QGPU_STAT_USERPTRS,		/* registered user buffers */
	QGPU_STAT_USERPTR_PAGES,	/* their pages, pinned long-term */
	QGPU_STAT_USERPTR_COPIES,	/* QGPU_IOCTL_COPY_USERPTR jobs */
	QGPU_STAT_NR
};

struct dma_buf;
struct qgpu_device;
struct qgpu_fence;
struct qgpu_userptr;

/* A DMA-coherent buffer object. */
struct qgpu_bo {
	struct kref ref;
	struct qgpu_device *qdev;	/* holds a device reference */
	struct list_head node;		/* qdev->bos, under bo_lock */
	void *vaddr;			/* NULL once freed by remove */
	dma_addr_t dma;
	size_t size;
	u32 handle;
	/* importers' mappings and vmaps (qgpu_dmabuf.c), under dmabuf_lock */
	unsigned int dmabuf_pins;
	/*
	 * The fences of jobs on it, shared by all of its dma-bufs (their
	 * dma_resv), as a GEM object's: a dma-buf made while a job runs sees
	 * it too.
	 */
	struct dma_resv resv;
};

/* One submission: a few descriptors and what to release when retired. */
struct qgpu_job {
	struct kref ref;
	struct list_head node;		/* qdev->inflight, under ring_lock */
	/* The ring's reference, when it is the last: dropped by reap_work. */
	struct llist_node reap_node;
	struct qgpu_device *qdev;	/* set once submitted */
	u64 first_seq, last_seq;	/* fence values of its descriptors */
	u32 first_idx;			/* ring index of the first one */
	u32 ndesc;
	u32 hw_err;			/* first QGPU_ERR_* seen */
	bool done;
	bool timed_out;			/* aborted by a timeout */
	u64 bytes;
	int op;

	/* user-memory transfers */
	struct page **pages;
	unsigned int npages;
	enum dma_data_direction dir;
	struct sg_table sgt;
	bool sgt_mapped;
	dma_addr_t page_dma;		/* single-page path */
	size_t page_len;
	bool page_mapped;
	struct qgpu_sg_entry *sg_list;	/* device SG list (coherent) */
	dma_addr_t sg_list_dma;
	size_t sg_list_size;
	/* a copy from VRAM into part of one cache line: a bounce buffer */
	void *bounce;			/* coherent, what the device writes */
	dma_addr_t bounce_dma;
	size_t bounce_len;
	u8 *bounce_out;			/* its contents, kept when the job retires */

	struct qgpu_bo *bo;		/* BO transfers: reference */
	/*
	 * The job's dma_fence, made by qgpu_submit() (under ring_lock, before
	 * the job can retire) from @fence_pre if the submitter allocated one;
	 * the submitter's reference.
	 */
	struct qgpu_fence *fence_pre;
	struct dma_fence *fence;
};

struct qgpu_device {
	struct kref ref;
	struct pci_dev *pdev;
	struct device *dev;
	void __iomem *regs;
	resource_size_t regs_phys;
	resource_size_t vram_phys;
	u64 vram_size;
	/*
	 * VRAM is write-combined only if its BAR is prefetchable (reads have
	 * no side effects, writes may merge); a non-prefetchable BAR gets
	 * uncached mappings and no io_mapping (it can only be WC).
	 */
	bool vram_wc;
	void *vram;			/* kernel WC mapping (devm_memremap) */
	void __iomem *vram_uc;		/* or, not prefetchable: devm_ioremap */
	struct io_mapping *iomap;	/* VRAM, WC, for user mappings, or NULL */
	u32 caps;
	int dma_bits;

	/*
	 * Lifetime: remove flips @dead. @srcu readers are open and the
	 * ioctls' device work, never their accesses to user memory (which may
	 * block for as long as user space likes: userfaultfd, FUSE), so that
	 * remove never waits for user space; @map_srcu readers are mmap(2),
	 * page faults, ptrace access and the kernel's own CPU accesses to
	 * VRAM (QGPU_IOCTL_CPU_ACCESS, 64 KiB at a time). Two domains, so
	 * that a reset, which must wait only for what touches the BARs, never
	 * waits for an ioctl blocked on user memory (see
	 * qgpu_zap_bar_mappings()).
	 */
	struct srcu_struct srcu;
	struct srcu_struct map_srcu;
	bool dead;
	/*
	 * @lost: BAR0 reads all ones or the PCIe channel failed for good; the
	 * device is disabled (no DMA, mappings zapped) until it is re-probed.
	 * @frozen: a PCIe error is being recovered; no new work until resume.
	 * @suspended: system sleep; no new work until the PM resume. Unlike
	 * @frozen, the device answers: interrupts are handled while queued
	 * jobs drain (qgpu_ring_suspend()).
	 */
	bool lost;
	bool frozen;
	bool suspended;
	struct work_struct lost_work;
	struct inode *inode;		/* private address_space for zapping */
	/* every mmap(2) of the device, see qgpu_zap_user_mappings() */
	spinlock_t mappings_lock;
	struct list_head mappings;
	struct mutex zap_lock;		/* one zap at a time */

	/* misc device */
	int id;
	char name[16];
	struct miscdevice misc;
	bool misc_registered;

	/* interrupts */
	spinlock_t irq_lock;		/* INT_STATUS read-and-ack */
	int irq_mode;
	int nvec;
	int irqs_requested;

	/* ring */
	struct mutex ring_lock;		/* qgpu_ring_lock() */
	bool ring_lock_cookie;		/* its dma_fence signalling section's */
	/*
	 * Held by a submitter from its wait for ring room until it has queued:
	 * submitters go about in the order they came (a mutex hands over to
	 * its waiters in order, after at most one steal), so that a job of
	 * many descriptors is not starved by jobs of one that take each slot
	 * as it comes free. Taken before ring_lock.
	 */
	struct mutex submit_lock;
	struct qgpu_desc *ring;
	dma_addr_t ring_dma;
	__le64 *fence_slot;		/* written by the device */
	dma_addr_t fence_dma;
	u32 ring_entries;
	u32 tail;
	u64 next_seq;			/* fence of the next descriptor */
	u64 retired_seq;		/* every seq <= this has been retired */
	struct list_head inflight;
	wait_queue_head_t fence_wq;
	/* dma_fences (qgpu_fence.c): their context; exported, still pending */
	u64 fence_context;
	struct list_head fences;
	struct work_struct retire_work;
	struct work_struct reset_work;
	/*
	 * Retired jobs nobody else holds, freed outside ring_lock (their
	 * pins and BO references are not let go where fences are signalled).
	 */
	struct llist_head reaped_jobs;
	struct work_struct reap_work;
	/* The engine halted (a ring entry was unreadable): reset it. */
	bool halted;
	u32 halt_err, halt_index;	/* DMA_ERROR and its index, for the log */
	/*
	 * The watchdog failed a hung job and ran the jobs behind it again;
	 * cleared when a job retires. Still set at the next timeout (no job
	 * retired since): every queued job fails.
	 */
	bool wd_replayed;
	/* DMA timeout detection: no progress for job_timeout_ms resets */
	struct delayed_work watchdog;
	u64 wd_seq;
	u32 wd_head;
	unsigned long wd_stamp;
	/*
	 * Status of each retired descriptor, at its fence & (ring_entries - 1);
	 * @seq tells which fence a slot holds (newer ones overwrite older).
	 * @last_err_seq: the newest fence of a failed job (0: none).
	 */
	struct qgpu_fence_status {
		u64 seq;
		u32 err;
		bool timed_out;
	} *fence_status;
	/* the descriptors a watchdog reset runs again (qgpu_ring.c) */
	struct qgpu_desc *replay;
	u64 last_err_seq;

	/* buffer objects */
	struct mutex bo_lock;
	struct list_head bos;
	atomic64_t bo_bytes;		/* coherent memory held by BOs */
	u64 bo_limit;			/* bo_limit_mb: cap on bo_bytes */

	/*
	 * dma-bufs of its BOs (qgpu_dmabuf.c): each one's CPU mappings are
	 * zapped with the device's; removal waits on @dmabuf_wq for the
	 * BOs' importer pins, and peers' mappings of its VRAM dma-bufs
	 * (qgpu_p2p.c), to go before it frees BO memory and the BARs.
	 */
	struct mutex dmabuf_lock;
	struct list_head dmabufs;
	struct list_head vram_dmabufs;	/* qgpu_p2p.c: zapped with VRAM */
	atomic_t dmabuf_pins;		/* BOs' dmabuf_pins + VRAM mappings */
	wait_queue_head_t dmabuf_wq;

	/* registered user buffers (qgpu_userptr.c), each file's */
	struct mutex userptr_lock;
	struct list_head userptrs;
	/* debugfs userptr_skip_sync: copies leave the CPU syncs out (tests) */
	bool userptr_skip_sync;

	wait_queue_head_t soft_wq;

	struct dentry *debugfs;
	atomic64_t stats[QGPU_STAT_NR];
};

/*
 * One ioctl call (qgpu_ioctl()): the kernel copy of its argument, whether it
 * holds results to copy back (some failures report progress too), and a
 * new buffer object whose handle is taken back if that copy fails.
 */
struct qgpu_ioctl_call {
	void *args;
	bool copy_out;
	struct qgpu_bo *new_bo;		/* holds a reference */
	struct qgpu_userptr *new_userptr;	/* holds a reference */
	/* a new file for @new_fd (reserved), installed once args are copied out */
	struct file *new_file;
	int new_fd;
};

int qgpu_call_new_fd(struct qgpu_ioctl_call *call, struct file *file);

/* Per open file. */
struct qgpu_file {
	struct qgpu_device *qdev;
	struct xarray bos;		/* handle -> struct qgpu_bo */
	struct xarray userptrs;		/* handle -> struct qgpu_userptr */
	atomic64_t last_fence;		/* newest fence it submitted (poll) */
	bool writable;			/* opened for writing: may change VRAM */
};

static inline void qgpu_stat_add(struct qgpu_device *qdev, enum qgpu_stat s,
				 s64 v)
{
	atomic64_add(v, &qdev->stats[s]);
}

static inline void qgpu_stat_inc(struct qgpu_device *qdev, enum qgpu_stat s)
{
	atomic64_inc(&qdev->stats[s]);
}

/*
 * Why new work cannot go ahead: 0, -ENODEV (gone or lost) or -EAGAIN (a
 * reset or PCIe error recovery is under way: try again). -EIO is kept for
 * what the device did to a job (its QGPU_ERR_* in hw_status).
 */
static inline int qgpu_unusable(struct qgpu_device *qdev)
{
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost))
		return -ENODEV;
	if (READ_ONCE(qdev->frozen) || READ_ONCE(qdev->suspended))
		return -EAGAIN;
	return 0;
}

static inline u32 qgpu_rd(struct qgpu_device *qdev, u32 reg)
{
	return readl(qdev->regs + reg);
}

static inline void qgpu_wr(struct qgpu_device *qdev, u32 reg, u32 val)
{
	writel(val, qdev->regs + reg);
}

/* Per-vector interrupt context. */
struct qgpu_vec {
	struct qgpu_device *qdev;
	u32 causes;
	char name[32];
};

/* PCI driver data. */
struct qgpu_pci_priv {
	struct qgpu_device *qdev;
	struct qgpu_vec vecs[QGPU_MSIX_VECTORS];
};

/* qgpu_pci.c */
void qgpu_device_put(struct qgpu_device *qdev);

/* qgpu_irq.c */
int qgpu_setup_irqs(struct qgpu_device *qdev, struct qgpu_vec *vecs);
void qgpu_free_irqs(struct qgpu_device *qdev, struct qgpu_vec *vecs);
void qgpu_irq_resync(struct qgpu_device *qdev);

/* qgpu_recovery.c */
bool qgpu_hw_lost(struct qgpu_device *qdev);
void qgpu_mark_lost(struct qgpu_device *qdev, const char *why);
void qgpu_lost_work(struct work_struct *work);
extern const struct pci_error_handlers qgpu_err_handlers;
extern const struct dev_pm_ops qgpu_pm_ops;

/* qgpu_sysfs.c */
extern const struct attribute_group *qgpu_misc_groups[];
void qgpu_debugfs_add(struct qgpu_device *qdev, struct dentry *root);
int qgpu_p2p_distance(struct qgpu_device *qdev, struct device *client,
		      bool verbose);
void qgpu_p2p_debugfs_add(struct qgpu_device *qdev);
long qgpu_ioctl_vram_export(struct qgpu_file *qf, struct qgpu_ioctl_call *call);
void qgpu_p2p_zap(struct qgpu_device *qdev);

/* qgpu_ioctl.c */
extern const struct file_operations qgpu_fops;

/* qgpu_ring.c */
int qgpu_ring_init(struct qgpu_device *qdev);
bool qgpu_engine_reset(struct qgpu_device *qdev);
void qgpu_ring_start(struct qgpu_device *qdev);
void qgpu_ring_shutdown(struct qgpu_device *qdev);
void qgpu_retire_work(struct work_struct *work);
void qgpu_reset_work(struct work_struct *work);
void qgpu_reap_work(struct work_struct *work);
void qgpu_ring_lock(struct qgpu_device *qdev);
void qgpu_ring_unlock(struct qgpu_device *qdev);
void qgpu_watchdog_work(struct work_struct *work);
void qgpu_ring_quiesce(struct qgpu_device *qdev);
void qgpu_ring_restart(struct qgpu_device *qdev);
int qgpu_ring_suspend(struct qgpu_device *qdev, int *drained);
void qgpu_ring_resume(struct qgpu_device *qdev);
struct qgpu_job *qgpu_job_alloc(void);
void qgpu_job_put(struct qgpu_job *job);
int qgpu_submit(struct qgpu_device *qdev, struct qgpu_job *job,
		struct qgpu_desc *descs, u32 n);
int qgpu_job_wait(struct qgpu_device *qdev, struct qgpu_job *job);
int qgpu_fence_wait(struct qgpu_device *qdev, u64 fence, u64 timeout_ns,
		    u32 *hw_status, u64 *completed);
u64 qgpu_completed_seq(struct qgpu_device *qdev);
bool qgpu_seq_passed(struct qgpu_device *qdev, u64 seq);
long qgpu_ioctl_copy_user(struct qgpu_file *qf, struct qgpu_ioctl_call *call);
int qgpu_copy_args_check(struct qgpu_file *qf, u32 op, u64 vram_offset,
			 u64 length, bool fields_ok);
u32 qgpu_sg_max(struct qgpu_device *qdev);
u32 qgpu_sg_range_entries(struct sg_table *sgt, u64 skip, u64 len);
int qgpu_build_sg_descs(struct qgpu_device *qdev, struct qgpu_job *job,
			u32 op, struct sg_table *sgt, u64 skip, u64 len,
			u32 nents, u64 vram_offset, struct qgpu_desc *descs,
			u32 sg_max);
int qgpu_copy_sgt(struct qgpu_device *qdev, u32 op, struct sg_table *sgt,
		  u64 skip, u64 len, u64 vram_offset, enum qgpu_stat counter,
		  u32 *nr_segments, u64 *fence, u32 *hw_status);
void qgpu_retire_locked(struct qgpu_device *qdev);
int qgpu_fence_status(struct qgpu_device *qdev, u64 fence, u32 *hw_status,
		      bool *timed_out);

/* qgpu_fence.c */
u64 qgpu_fence_context_alloc(void);
struct qgpu_fence *qgpu_fence_alloc(void);
void qgpu_fence_free(struct qgpu_fence *fence);
struct dma_fence *qgpu_job_fence(struct qgpu_device *qdev, u64 seq,
				 struct qgpu_fence *fence);
struct dma_fence *qgpu_fence_publish_locked(struct qgpu_device *qdev, u64 seq,
					    struct qgpu_fence *fence);
int qgpu_fence_errno(u32 hw_err, bool timed_out);
bool qgpu_fence_begin_signalling(void);
void qgpu_fence_end_signalling(bool cookie);
void qgpu_fence_signal_upto(struct qgpu_device *qdev, u64 first, u64 last,
			    int error);
void qgpu_fence_barrier(void);
long qgpu_ioctl_fence_export(struct qgpu_file *qf, struct qgpu_ioctl_call *call);

/* qgpu_dmabuf.c */
void qgpu_bo_resv_init(struct qgpu_bo *bo);
void qgpu_bo_resv_fini(struct qgpu_bo *bo);
int qgpu_bo_resv_begin(struct qgpu_bo *bo, bool writes, struct qgpu_fence **pre);
void qgpu_bo_resv_end(struct qgpu_bo *bo, struct dma_fence *fence, bool writes);
long qgpu_ioctl_dmabuf_export(struct qgpu_file *qf,
			      struct qgpu_ioctl_call *call);
long qgpu_ioctl_copy_dmabuf(struct qgpu_file *qf, struct qgpu_ioctl_call *call);
void qgpu_dmabuf_zap(struct qgpu_device *qdev);
void qgpu_dmabuf_wait_unpinned(struct qgpu_device *qdev);

/* qgpu_userptr.c */
long qgpu_ioctl_userptr_register(struct qgpu_file *qf,
				 struct qgpu_ioctl_call *call);
long qgpu_ioctl_userptr_unregister(struct qgpu_file *qf,
				   struct qgpu_ioctl_call *call);
long qgpu_ioctl_copy_userptr(struct qgpu_file *qf, struct qgpu_ioctl_call *call);
void qgpu_userptr_put(struct qgpu_userptr *up);
void qgpu_userptr_take_back(struct qgpu_file *qf, u32 handle,
			    struct qgpu_userptr *up);
void qgpu_userptr_file_release(struct qgpu_file *qf);
void qgpu_userptr_release_all(struct qgpu_device *qdev);

/* qgpu_mmap.c */
int qgpu_mmap(struct file *filp, struct vm_area_struct *vma);
int qgpu_mmap_dev(struct qgpu_device *qdev, struct qgpu_file *qf,
		  struct vm_area_struct *vma);
void qgpu_bo_put(struct qgpu_bo *bo);
struct qgpu_bo *qgpu_bo_lookup(struct qgpu_file *qf, u32 handle);
struct qgpu_bo *qgpu_bo_create(struct qgpu_file *qf,
			       struct qgpu_bo_create *args);
int qgpu_bo_destroy(struct qgpu_file *qf, u32 handle);
void qgpu_bo_free_all_backing(struct qgpu_device *qdev);
void qgpu_zap_user_mappings(struct qgpu_device *qdev);
void qgpu_zap_bar_mappings(struct qgpu_device *qdev);
/* qgpu_inject.c: the kernel calls a test can fail on demand (fail_function) */
long qgpu_pin_user_pages(unsigned long start, unsigned long npages,
			 unsigned int gup_flags, struct page **pages);
int qgpu_dma_map_user_sgt(struct device *dev, struct sg_table *sgt,
			  enum dma_data_direction dir, unsigned long attrs);
int qgpu_dma_map_user_page(struct device *dev, struct page *page,
			   unsigned int off, size_t len,
			   enum dma_data_direction dir, dma_addr_t *dma);
void *qgpu_dma_alloc(struct device *dev, size_t size, dma_addr_t *dma,
		     unsigned long attrs);
int qgpu_alloc_irq_vectors(struct pci_dev *pdev, unsigned int min,
			   unsigned int max, unsigned int flags);
int qgpu_request_irq(unsigned int irq, irq_handler_t handler,
		     unsigned long flags, const char *name, void *data);

struct inode *qgpu_fs_inode_new(void);
void qgpu_fs_inode_free(struct inode *inode);

#endif /* QGPU_DRV_H */
