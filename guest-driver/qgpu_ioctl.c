// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: the device file /dev/qgpuN: open, release and the ioctls of
 * include/uapi/qgpu.h (COPY_USER is in qgpu_ring.c, mmap in qgpu_mmap.c).
 */

#include <linux/delay.h>
#include <linux/dma-fence.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/unaligned.h>

#include "qgpu_drv.h"

static int qgpu_open(struct inode *inode, struct file *filp)
{
	struct miscdevice *misc = filp->private_data;
	struct qgpu_device *qdev = container_of(misc, struct qgpu_device, misc);
	struct qgpu_file *qf;
	int idx;

	qf = kzalloc(sizeof(*qf), GFP_KERNEL);
	if (!qf)
		return -ENOMEM;
	idx = srcu_read_lock(&qdev->srcu);
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost)) {
		srcu_read_unlock(&qdev->srcu, idx);
		kfree(qf);
		return -ENODEV;
	}
	kref_get(&qdev->ref);
	srcu_read_unlock(&qdev->srcu, idx);

	qf->qdev = qdev;
	qf->writable = filp->f_mode & FMODE_WRITE;
	xa_init_flags(&qf->bos, XA_FLAGS_ALLOC1);
	xa_init_flags(&qf->userptrs, XA_FLAGS_ALLOC1);
	filp->private_data = qf;
	/* All mappings of the device share one address_space (for zapping). */
	filp->f_mapping = qdev->inode->i_mapping;
	return nonseekable_open(inode, filp);
}

static int qgpu_release(struct inode *inode, struct file *filp)
{
	struct qgpu_file *qf = filp->private_data;
	struct qgpu_bo *bo;
	unsigned long handle;

	xa_for_each(&qf->bos, handle, bo) {
		xa_erase(&qf->bos, handle);
		qgpu_bo_put(bo);
	}
	xa_destroy(&qf->bos);
	qgpu_userptr_file_release(qf);
	qgpu_device_put(qf->qdev);
	kfree(qf);
	return 0;
}

static bool qgpu_vram_range_ok(struct qgpu_device *qdev, u64 off, u64 len)
{
	u64 end;

	return len && !check_add_overflow(off, len, &end) &&
	       end <= qdev->vram_size;
}

static long qgpu_ioctl_info(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_device *qdev = qf->qdev;
	struct pci_dev *pdev = qdev->pdev;
	struct qgpu_info *a = call->args;

	if (a->flags || memchr_inv(a->reserved, 0, sizeof(a->reserved)))
		return -EINVAL;
	a->version = qgpu_rd(qdev, QGPU_REG_VERSION);
	a->caps = qgpu_rd(qdev, QGPU_REG_CAPS);
	a->irq_mode = qdev->irq_mode;
	a->irq_vectors = qdev->nvec;
	a->ring_entries = qdev->ring_entries;
	a->sg_max_entries = qgpu_rd(qdev, QGPU_REG_SG_MAX_ENTRIES);
	a->dma_mask_bits = qdev->dma_bits;
	a->vram_size = qdev->vram_size;
	a->max_xfer = QGPU_MAX_XFER;
	a->bo_max_size = QGPU_BO_MAX_SIZE;
	a->pci_domain = pci_domain_nr(pdev->bus);
	a->pci_bdf = (a->pci_domain & 0xffff) << 16 | pdev->bus->number << 8 |
		    pdev->devfn;
	call->copy_out = true;
	return 0;
}

/*
 * A job of @qf was submitted: poll(2) on the file waits for it (and for
 * the file's earlier ones). Fences rise with submission, so the newest is
 * the one to wait for; concurrent submitters keep the highest.
 */
static void qgpu_file_submitted(struct qgpu_file *qf, u64 fence)
{
	s64 old = atomic64_read(&qf->last_fence);

	while (old < (s64)fence &&
	       !atomic64_try_cmpxchg(&qf->last_fence, &old, fence))
		;
}

/*
 * QGPU_IOCTL_COPY_BO. Called outside the device's SRCU read section: the
 * BO's dma_resv (its dma-bufs') may hold another driver's fences, which the job
 * waits for first (qgpu_bo_resv_begin()); the section covers the job's
 * submission, and the wait for it.
 */
static long qgpu_ioctl_copy_bo(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_copy_bo *a = call->args;
	bool writes = a->op == QGPU_OP_COPY_FROM_VRAM;
	struct qgpu_job *job = NULL;
	struct qgpu_fence *pre;
	struct qgpu_desc d = {};
	struct qgpu_bo *bo;
	u64 end, guest;
	int ret, idx;

	/* As for the calls inside the section (qgpu_ioctl()): gone first. */
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost))
		return -ENODEV;
	if (a->reserved0 || a->reserved1 || a->reserved[0] || a->reserved[1] ||
	    (a->flags & ~QGPU_SUBMIT_F_ASYNC) ||
	    (a->op != QGPU_OP_COPY_TO_VRAM && a->op != QGPU_OP_COPY_FROM_VRAM) ||
	    !qgpu_vram_range_ok(qdev, a->vram_offset, a->length))
		return -EINVAL;
	bo = qgpu_bo_lookup(qf, a->handle);	/* the call's reference */
	if (!bo)
		return -ENOENT;
	if (check_add_overflow(a->bo_offset, a->length, &end) || end > bo->size) {
		ret = -EINVAL;
		goto out_put_bo;
	}
	a->fence = 0;
	a->hw_status = 0;
	ret = qgpu_bo_resv_begin(bo, writes, &pre);
	if (ret)
		goto out_put_bo;

	idx = srcu_read_lock(&qdev->srcu);
	ret = qgpu_unusable(qdev);
	if (!ret) {
		job = qgpu_job_alloc();
		if (!job)
			ret = -ENOMEM;
	}
	if (!ret) {
		kref_get(&bo->ref);
		job->bo = bo;	/* dropped with the job, outside ring_lock */
		job->op = a->op;
		job->bytes = a->length;
		job->fence_pre = pre;	/* made into job->fence by qgpu_submit() */
		pre = NULL;
		guest = bo->dma + a->bo_offset;
		d.opcode = cpu_to_le32(a->op);
		d.length = cpu_to_le64(a->length);
		d.src = cpu_to_le64(a->op == QGPU_OP_COPY_TO_VRAM ? guest : a->vram_offset);
		d.dst = cpu_to_le64(a->op == QGPU_OP_COPY_TO_VRAM ? a->vram_offset : guest);
		/* On failure it drops the job's resources (the BO), not the fence. */
		ret = qgpu_submit(qdev, job, &d, 1);
		if (ret)
			swap(pre, job->fence_pre);
	}
	/* Submitted: its fence is in before anybody sees the dma_resv again. */
	qgpu_bo_resv_end(bo, ret ? NULL : job->fence, writes);
	if (job)
		job->fence = NULL;	/* the reference went with it */
	qgpu_fence_free(pre);
	if (!ret) {
		a->fence = job->last_seq;
		qgpu_file_submitted(qf, a->fence);
		if (!(a->flags & QGPU_SUBMIT_F_ASYNC)) {
			ret = qgpu_job_wait(qdev, job);
			a->hw_status = job->hw_err;
		}
	}
	srcu_read_unlock(&qdev->srcu, idx);
	if (job)
		qgpu_job_put(job);
out_put_bo:
	qgpu_bo_put(bo);
	/* Once submitted, the caller gets the fence whatever the result. */
	call->copy_out = a->fence != 0;
	return ret;
}

/*
 * Split a VRAM_OP into descriptors of at most QGPU_VRAM_OP_CHUNK (more if
 * the ring is small), so that the fence and the ring head move while a long
 * operation runs and the watchdog sees progress. Chunks keep the FILL
 * pattern's phase (multiples of 4); a COPY_VRAM with @dst above @src runs
 * its chunks backwards, which keeps memmove semantics.
 */
static int qgpu_vram_op_descs(struct qgpu_device *qdev,
			      const struct qgpu_vram_op *a,
			      struct qgpu_desc **descsp)
{
	u32 max_desc = qdev->ring_entries - 1;
	bool backwards = a->op == QGPU_OP_COPY_VRAM &&
			 a->dst_offset > a->src_offset;
	struct qgpu_desc *descs;
	u64 chunk, off;
	u32 n, i;

	chunk = max_t(u64, QGPU_VRAM_OP_CHUNK,
		      round_up(DIV_ROUND_UP_ULL(a->length, max_desc), 4));
	n = DIV_ROUND_UP_ULL(a->length, chunk);
	descs = kcalloc(n, sizeof(*descs), GFP_KERNEL);
	if (!descs)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		struct qgpu_desc *d = &descs[backwards ? n - 1 - i : i];

		off = (u64)i * chunk;
		d->opcode = cpu_to_le32(a->op);
		d->dst = cpu_to_le64(a->dst_offset + off);
		d->length = cpu_to_le64(min(chunk, a->length - off));
		if (a->op == QGPU_OP_FILL)
			d->fill_pattern = cpu_to_le32(a->pattern);
		else
			d->src = cpu_to_le64(a->src_offset + off);
	}
	*descsp = descs;
	return n;
}

static long qgpu_ioctl_vram_op(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_vram_op *a = call->args;
	struct qgpu_desc *descs;
	struct qgpu_job *job;
	int ret, n;

	/* @fence and @hw_status are outputs: their input values are ignored. */
	if (a->reserved[0] || a->reserved[1] ||
	    (a->flags & ~QGPU_SUBMIT_F_ASYNC) ||
	    !qgpu_vram_range_ok(qdev, a->dst_offset, a->length))
		return -EINVAL;
	switch (a->op) {
	case QGPU_OP_FILL:
		if (a->src_offset)
			return -EINVAL;
		break;
	case QGPU_OP_COPY_VRAM:
		if (a->pattern || !qgpu_vram_range_ok(qdev, a->src_offset, a->length))
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	a->fence = 0;
	a->hw_status = 0;
	n = qgpu_vram_op_descs(qdev, a, &descs);
	if (n < 0)
		return n;
	job = qgpu_job_alloc();
	if (!job) {
		kfree(descs);
		return -ENOMEM;
	}
	job->op = a->op;
	ret = qgpu_submit(qdev, job, descs, n);
	kfree(descs);
	if (!ret) {
		a->fence = job->last_seq;
		qgpu_file_submitted(qf, job->last_seq);
		if (!(a->flags & QGPU_SUBMIT_F_ASYNC)) {
			ret = qgpu_job_wait(qdev, job);
			a->hw_status = job->hw_err;
		}
	}
	qgpu_job_put(job);
	/* Once submitted, the caller gets the fence whatever the result. */
	call->copy_out = a->fence != 0;
	return ret;
}

static long qgpu_ioctl_wait_fence(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_wait_fence *a = call->args;
	int ret;

	if (a->flags || a->reserved[0] || a->reserved[1])
		return -EINVAL;
	a->hw_status = 0;
	a->completed = 0;
	ret = qgpu_fence_wait(qf->qdev, a->fence, a->timeout_ns, &a->hw_status,
			      &a->completed);
	/* Timeouts, signals and failed jobs report how far the device got. */
	call->copy_out = ret != -EINVAL && ret != -ENODEV;
	return ret;
}

static long qgpu_ioctl_bo_create(struct qgpu_file *qf,
				 struct qgpu_ioctl_call *call)
{
	struct qgpu_bo *bo;

	bo = qgpu_bo_create(qf, call->args);
	if (IS_ERR(bo))
		return PTR_ERR(bo);
	/* A reference for qgpu_ioctl(), in case the handle cannot be returned. */
	call->new_bo = bo;
	call->copy_out = true;
	return 0;
}

static long qgpu_ioctl_bo_destroy(struct qgpu_file *qf,
				  struct qgpu_ioctl_call *call)
{
	struct qgpu_bo_destroy *a = call->args;

	if (a->flags || a->reserved[0] || a->reserved[1])
		return -EINVAL;
	return qgpu_bo_destroy(qf, a->handle);
}

static u64 qgpu_fnv1a(u64 h, const u8 *p, size_t n)
{
	while (n--) {
		h ^= *p++;
		h *= 0x100000001b3ULL;
	}
	return h;
}

#define QGPU_CPU_CHUNK	SZ_64K

static unsigned int cpu_access_delay_us;
module_param(cpu_access_delay_us, uint, 0644);
MODULE_PARM_DESC(cpu_access_delay_us,
		 "Testing: stall each 64 KiB chunk of a CPU access ioctl this long (at most 100 ms) between its check that the device is usable and its access to VRAM (0: off)");

/*
 * One chunk of a CPU access, or -errno if the device cannot be used now.
 * A reset makes VRAM unreachable from reset_prepare until the config
 * space is restored (memory decoding is off: reads return all ones, writes
 * are dropped), so the check and the access are one @map_srcu read
 * section: the reset's zap, which comes after it sets @frozen, waits for
 * the chunk, and the next chunk sees @frozen (-EAGAIN). The section is
 * bounded (64 KiB of VRAM and a kernel buffer, never user memory), so a
 * reset waits for one chunk at most.
 */
static int qgpu_cpu_access_chunk(struct qgpu_device *qdev, u32 op, u64 at,
				 u8 *buf, size_t n)
{
	unsigned int delay_us;
	int idx, ret;

	idx = srcu_read_lock(&qdev->map_srcu);
	/* A lost or frozen device reads all ones: stop there. */
	ret = qgpu_unusable(qdev);
	if (ret)
		goto out;
	/* Widens the window between the check and the access, for tests. */
	delay_us = READ_ONCE(cpu_access_delay_us);
	if (delay_us)
		fsleep(min(delay_us, 100U * USEC_PER_MSEC));
	if (op == QGPU_CPU_FILL) {
		if (qdev->vram)
			memcpy(qdev->vram + at, buf, n);
		else
			memcpy_toio(qdev->vram_uc + at, buf, n);
		wmb();	/* drain the write-combining buffers inside the section */
	} else {
		if (qdev->vram)
			memcpy(buf, qdev->vram + at, n);
		else
			memcpy_fromio(buf, qdev->vram_uc + at, n);
	}
out:
	srcu_read_unlock(&qdev->map_srcu, idx);
	return ret;
}

static long qgpu_ioctl_cpu_access(struct qgpu_file *qf,
				  struct qgpu_ioctl_call *call)
{
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_cpu_access *a = call->args;
	u64 done = 0, h = 0xcbf29ce484222325ULL;
	u8 *buf;
	int i, ret = 0;

	if (a->op == QGPU_CPU_FILL && !qf->writable)
		return -EBADF;
	if (a->reserved[0] || a->reserved[1] || a->checksum ||
	    !qgpu_vram_range_ok(qdev, a->vram_offset, a->length) ||
	    (a->op != QGPU_CPU_CHECKSUM && a->op != QGPU_CPU_FILL) ||
	    (a->op == QGPU_CPU_CHECKSUM && a->pattern))
		return -EINVAL;
	buf = kmalloc(QGPU_CPU_CHUNK, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	if (a->op == QGPU_CPU_FILL)
		for (i = 0; i < QGPU_CPU_CHUNK; i += 4)
			put_unaligned_le32(a->pattern, buf + i);
	while (done < a->length) {
		size_t n = min_t(u64, a->length - done, QGPU_CPU_CHUNK);

		if (signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		ret = qgpu_cpu_access_chunk(qdev, a->op, a->vram_offset + done,
					    buf, n);
		if (ret)
			break;
		if (a->op == QGPU_CPU_CHECKSUM)
			h = qgpu_fnv1a(h, buf, n);
		done += n;
		cond_resched();
	}
	kfree(buf);
	if (ret)
		return ret;
	a->checksum = a->op == QGPU_CPU_CHECKSUM ? h : 0;
	call->copy_out = true;
	return 0;
}

static long qgpu_ioctl_raise_irq(struct qgpu_file *qf,
				 struct qgpu_ioctl_call *call)
{
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_raise_irq *a = call->args;
	s64 before;
	long ret;

	if (a->flags || a->irq_count || a->reserved[0] || a->reserved[1])
		return -EINVAL;
	before = atomic64_read(&qdev->stats[QGPU_STAT_IRQ_SOFT]);
	qgpu_wr(qdev, QGPU_REG_INT_RAISE, QGPU_INT_SOFT);
	ret = wait_event_interruptible_timeout(qdev->soft_wq,
			atomic64_read(&qdev->stats[QGPU_STAT_IRQ_SOFT]) != before ||
			READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost), HZ);
	if (ret < 0)
		return -EINTR;
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost))
		return -ENODEV;
	if (!ret)
		return -ETIMEDOUT;
	a->irq_count = atomic64_read(&qdev->stats[QGPU_STAT_IRQ_SOFT]);
	call->copy_out = true;
	return 0;
}

/*
 * Each ioctl: its handler; QGPU_IOCTL_F_WRITE if it changes the device (it
 * needs a file opened for writing, as write(2) would: a read-only file may
 * look -- INFO, WAIT_FENCE, copies from VRAM into user memory, checksums,
 * RAISE_IRQ, read-only mappings -- but not change VRAM or hold device
 * memory; COPY_USER and CPU_ACCESS check their direction themselves); and
 * QGPU_IOCTL_F_USER_MEMORY if it touches user memory beyond its argument,
 * or QGPU_IOCTL_F_WAITS if it waits for other drivers' fences, in which
 * case it enters the device's SRCU section itself, around the device work
 * only: removal waits for that section, and must not wait for user space
 * or another driver.
 */
#define QGPU_IOCTL_F_WRITE		BIT(0)
#define QGPU_IOCTL_F_USER_MEMORY	BIT(1)
#define QGPU_IOCTL_F_WAITS		QGPU_IOCTL_F_USER_MEMORY

/* The largest ioctl argument: every one is copied in and out whole. */
#define QGPU_IOCTL_MAX_ARG	128

struct qgpu_ioctl_def {
	unsigned int cmd;
	long (*handler)(struct qgpu_file *qf, struct qgpu_ioctl_call *call);
	unsigned int flags;
};

#define QGPU_IOCTL_DEF(_cmd, _handler, _flags)				\
	{ .cmd = (_cmd) + BUILD_BUG_ON_ZERO(_IOC_SIZE(_cmd) > QGPU_IOCTL_MAX_ARG), \
	  .handler = (_handler), .flags = (_flags) }

static const struct qgpu_ioctl_def qgpu_ioctls[] = {
	QGPU_IOCTL_DEF(QGPU_IOCTL_INFO, qgpu_ioctl_info, 0),
	QGPU_IOCTL_DEF(QGPU_IOCTL_COPY_USER, qgpu_ioctl_copy_user,
		       QGPU_IOCTL_F_USER_MEMORY),
	QGPU_IOCTL_DEF(QGPU_IOCTL_COPY_BO, qgpu_ioctl_copy_bo,
		       QGPU_IOCTL_F_WRITE | QGPU_IOCTL_F_WAITS),
	QGPU_IOCTL_DEF(QGPU_IOCTL_VRAM_OP, qgpu_ioctl_vram_op, QGPU_IOCTL_F_WRITE),
	QGPU_IOCTL_DEF(QGPU_IOCTL_WAIT_FENCE, qgpu_ioctl_wait_fence, 0),
	QGPU_IOCTL_DEF(QGPU_IOCTL_BO_CREATE, qgpu_ioctl_bo_create,
		       QGPU_IOCTL_F_WRITE),
	QGPU_IOCTL_DEF(QGPU_IOCTL_BO_DESTROY, qgpu_ioctl_bo_destroy,
		       QGPU_IOCTL_F_WRITE),
	QGPU_IOCTL_DEF(QGPU_IOCTL_CPU_ACCESS, qgpu_ioctl_cpu_access, 0),
	QGPU_IOCTL_DEF(QGPU_IOCTL_RAISE_IRQ, qgpu_ioctl_raise_irq, 0),
	QGPU_IOCTL_DEF(QGPU_IOCTL_FENCE_EXPORT, qgpu_ioctl_fence_export, 0),
	QGPU_IOCTL_DEF(QGPU_IOCTL_DMABUF_EXPORT, qgpu_ioctl_dmabuf_export, 0),
	QGPU_IOCTL_DEF(QGPU_IOCTL_COPY_DMABUF, qgpu_ioctl_copy_dmabuf,
		       QGPU_IOCTL_F_USER_MEMORY),
	QGPU_IOCTL_DEF(QGPU_IOCTL_USERPTR_REGISTER, qgpu_ioctl_userptr_register,
		       QGPU_IOCTL_F_USER_MEMORY),
	QGPU_IOCTL_DEF(QGPU_IOCTL_USERPTR_UNREGISTER,
		       qgpu_ioctl_userptr_unregister, 0),
	QGPU_IOCTL_DEF(QGPU_IOCTL_COPY_USERPTR, qgpu_ioctl_copy_userptr, 0),
	QGPU_IOCTL_DEF(QGPU_IOCTL_VRAM_EXPORT, qgpu_ioctl_vram_export, 0),
};

/*
 * Hand @file to the caller as a new close-on-exec descriptor, which
 * qgpu_ioctl() installs once the argument is copied back: its number, or
 * -errno with @file put.
 */
int qgpu_call_new_fd(struct qgpu_ioctl_call *call, struct file *file)
{
	int fd = get_unused_fd_flags(O_CLOEXEC);

	if (fd < 0) {
		fput(file);
		return fd;
	}
	call->new_file = file;
	call->new_fd = fd;
	call->copy_out = true;
	return fd;
}

/*
 * The argument is copied in before, and out after, the device's SRCU read
 * section (as DRM does, for another reason): remove waits for those
 * sections, and user memory can take as long as user space likes to
 * arrive (userfaultfd, FUSE). Handlers work on the kernel copy.
 */
static long qgpu_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct qgpu_file *qf = filp->private_data;
	struct qgpu_device *qdev = qf->qdev;
	void __user *uarg = (void __user *)arg;
	const struct qgpu_ioctl_def *def = NULL;
	u64 args[QGPU_IOCTL_MAX_ARG / sizeof(u64)];
	struct qgpu_ioctl_call call = { .args = args };
	unsigned int i, size = _IOC_SIZE(cmd);
	long ret;
	int idx;

	for (i = 0; i < ARRAY_SIZE(qgpu_ioctls) && !def; i++)
		if (qgpu_ioctls[i].cmd == cmd)
			def = &qgpu_ioctls[i];
	if (!def)
		return -ENOTTY;
	if ((def->flags & QGPU_IOCTL_F_WRITE) && !qf->writable)
		return -EBADF;
	if (copy_from_user(args, uarg, size))
		return -EFAULT;

	if (def->flags & QGPU_IOCTL_F_USER_MEMORY) {
		ret = def->handler(qf, &call);
	} else {
		idx = srcu_read_lock(&qdev->srcu);
		if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost))
			ret = -ENODEV;
		else
			ret = def->handler(qf, &call);
		srcu_read_unlock(&qdev->srcu, idx);
	}

	if (call.copy_out && copy_to_user(uarg, args, size)) {
		if (!ret)
			ret = -EFAULT;
		/*
		 * The handle cannot be returned: take it back, unless another
		 * thread guessed it and destroyed it (and maybe reused it).
		 */
		if (call.new_bo) {
			struct qgpu_bo_create *a = (void *)args;

			if (xa_cmpxchg(&qf->bos, a->handle, call.new_bo, NULL,
				       0) == call.new_bo)
				qgpu_bo_put(call.new_bo);
		}
		if (call.new_userptr) {
			struct qgpu_userptr_register *a = (void *)args;

			qgpu_userptr_take_back(qf, a->handle, call.new_userptr);
		}
	}
	if (call.new_bo)
		qgpu_bo_put(call.new_bo);
	if (call.new_userptr)
		qgpu_userptr_put(call.new_userptr);
	if (call.new_file) {
		/* Installed only where user space learns its number. */
		if (!ret && WARN_ON_ONCE(!call.copy_out))
			ret = -EINVAL;
		if (ret) {
			put_unused_fd(call.new_fd);
			fput(call.new_file);
		} else {
			fd_install(call.new_fd, call.new_file);
		}
	}
	return ret;
}

/*
 * poll(2): readable once every job submitted through this file has
 * completed (at once if it submitted none), so that asynchronous jobs
 * (QGPU_SUBMIT_F_ASYNC) can be waited for with poll, select or epoll beside
 * other files; an error and a hang-up once the device is removed or lost,
 * which ends all of its jobs. Woken where waiters of fences are. Inside
 * the device's SRCU section: removal frees the ring that holds the
 * device's fence only after it.
 */
static __poll_t qgpu_poll(struct file *filp, poll_table *wait)
{
	struct qgpu_file *qf = filp->private_data;
	struct qgpu_device *qdev = qf->qdev;
	__poll_t mask = 0;
	u64 fence;
	int idx;

	poll_wait(filp, &qdev->fence_wq, wait);
	idx = srcu_read_lock(&qdev->srcu);
	if (READ_ONCE(qdev->dead) || READ_ONCE(qdev->lost)) {
		mask = EPOLLERR | EPOLLHUP;
	} else {
		fence = atomic64_read(&qf->last_fence);
		if (!fence || qgpu_seq_passed(qdev, fence))
			mask = EPOLLIN | EPOLLRDNORM;
	}
	srcu_read_unlock(&qdev->srcu, idx);
	return mask;
}

const struct file_operations qgpu_fops = {
	.owner = THIS_MODULE,
	.open = qgpu_open,
	.release = qgpu_release,
	.unlocked_ioctl = qgpu_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = qgpu_mmap,
	.poll = qgpu_poll,
};

