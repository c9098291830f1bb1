/* SPDX-License-Identifier: GPL-2.0-only WITH Linux-syscall-note OR MIT */
/*
 * qgpu user-space interface: ioctls and mmap offsets of /dev/qgpuN.
 *
 * Device constants (opcodes, QGPU_ERR_* status codes, the user register
 * page layout) come from the device ABI header, qgpu_hw.h, which is the
 * single source of truth and is included here.
 *
 * Conventions for every ioctl:
 *  - all are _IOWR on a fixed-size struct; unknown numbers or sizes fail
 *    with -ENOTTY;
 *  - fields named reserved* and undefined flag bits must be zero on input
 *    (-EINVAL otherwise);
 *  - offsets and lengths are checked for overflow; out of range is -EINVAL;
 *  - bad user pointers give -EFAULT, unknown buffer-object handles -ENOENT,
 *    transfers above &qgpu_info.max_xfer -E2BIG; a user buffer that cannot
 *    be pinned gives the kernel's reason (-EFAULT where nothing is mapped,
 *    -ENOMEM when memory runs short, ...);
 *  - a descriptor the device fails gives -EIO with @hw_status set to the
 *    device's QGPU_ERR_* code (QGPU_ERR_ABORTED: an engine reset, a PCIe
 *    error recovery, a removal, or a system suspend that waited
 *    job_timeout_ms for it in vain stopped it); while the device is being
 *    reset, recovers from a PCIe error or is suspended (system sleep:
 *    queued jobs finish first, the device then powers down (D3hot) and
 *    loses its registers; VRAM and mappings survive), calls that need it fail with
 *    -EAGAIN (try again; what ran before stays done: earlier COPY_USER
 *    chunks, part of a CPU_ACCESS fill; /sys/class/misc/qgpuN/state reads
 *    "recovering", or "suspended", meanwhile); a removed device gives
 *    -ENODEV, also to a call that was waiting on user memory (userfaultfd,
 *    FUSE) meanwhile: removal does not wait for user space;
 *  - a file opened O_RDONLY may look but not change the device: INFO,
 *    WAIT_FENCE, FENCE_EXPORT, RAISE_IRQ, COPY_USER from VRAM and
 *    CPU_ACCESS checksums work; COPY_USER to VRAM, CPU_ACCESS fills,
 *    VRAM_OP, COPY_BO and the buffer-object ioctls fail with -EBADF (and
 *    it maps read-only).
 *
 * An engine that makes no progress for job_timeout_ms (module parameter)
 * is reset: the job it was running fails (-ETIMEDOUT from a synchronous
 * call; -EIO with QGPU_ERR_ABORTED from WAIT_FENCE), and the jobs queued
 * behind it, which had not started, run again with the same fences -- on
 * whatever the failed job left in VRAM: check every fence you depend on,
 * not only the last. If the engine then retires nothing either, the next
 * timeout fails them all.
 * Submitters wait for ring space in the order they came, so a job of many
 * descriptors is not starved by jobs of one.
 *
 * Signals and the submitting ioctls (COPY_USER, COPY_BO, VRAM_OP): signals
 * do not interrupt them (a handler runs, a stop takes effect, when the call
 * returns). A synchronous call returns only when the device is done with
 * the memory it names (user buffer, buffer object, VRAM), also when it
 * fails because the device was removed or lost, so nothing changes behind
 * the caller's back once it has returned. A fatal
 * signal stops a COPY_USER between chunks (-EINTR, after the chunk in
 * flight has finished) and a submission still waiting for ring space
 * (-EINTR, nothing submitted). Once a job was submitted, @fence is written
 * back whatever the result. Any signal interrupts only WAIT_FENCE,
 * RAISE_IRQ and CPU_ACCESS (the kernel's own copy, which stops where it
 * is): -EINTR; and COPY_BO while it waits for its buffer object's
 * dma_resv -- another driver's fences in it, or another COPY_BO of the
 * object holding it while that one waits for ring space -- before anything
 * is submitted (restarted after a handler with SA_RESTART, else -EINTR).
 */
#ifndef _UAPI_QGPU_H
#define _UAPI_QGPU_H

#include <linux/types.h>
#include <linux/ioctl.h>
#include "hw/misc/qgpu_hw.h"

/* ---- mmap offsets (bytes; the mmap(2) offset selects the region) -------- */

/*
 * [QGPU_MMAP_VRAM, +vram_size): VRAM, write-combined (uncached if the BAR
 *	is not prefetchable: sysfs vram_caching), mapped at mmap time (but
 *	see QGPU_MMAP_REGS on one-page mappings).
 * [QGPU_MMAP_VRAM_LAZY, +vram_size): VRAM, as above, mapped page by page on
 *	first touch (fault handler).
 * [QGPU_MMAP_REGS, +QGPU_PAGE_SIZE): the BAR0 user register page, uncached
 *	(QGPU_REG_USER_* at QGPU_REG_USER_* - QGPU_REGS_USER_PAGE), mapped on
 *	first access (counted in bar_refaults; so is a one-page VRAM mapping
 *	made without an io_mapping: a kernel without CONFIG_IO_MAPPING, or an
 *	uncached BAR).
 * QGPU_MMAP_BO_BASE + (handle << QGPU_MMAP_BO_SHIFT): a buffer object; its
 *	offset is returned by QGPU_IOCTL_BO_CREATE. Mapped at mmap time behind
 *	an IOMMU, else page by page on first access.
 *
 * A debugger (ptrace, /proc/PID/mem) reads and writes VRAM and register
 * pages that are mapped; one not yet touched gives -EIO.
 *
 * Every offset lies below 2^44, so that 32-bit processes reach each region
 * too: mmap2(2) takes the offset in 4 KiB pages, 32 bits of them.
 *
 * A reset of the device (a function reset, or a PCIe link reset during
 * error recovery) unmaps VRAM and the register page from every process for
 * its duration: a process's access then waits for the reset to end and
 * maps the page again (counted in the bar_refaults statistic; lazy VRAM in
 * lazy_faults); the kernel's own accesses meanwhile (an ioctl argument in
 * such a mapping: -EFAULT; ptrace: -EIO) do not wait. Buffer-object
 * mappings are not affected. Once the device is removed or lost, every
 * access raises SIGBUS.
 *
 * Every mapping must be MAP_SHARED (MAP_PRIVATE: -EINVAL), not executable
 * (-EPERM) and lie inside one region (-EINVAL). Mappings cannot be moved by
 * mremap(2) or grown. A file opened O_RDONLY may map any region PROT_READ.
 */
#define QGPU_MMAP_VRAM		0x0ULL
#define QGPU_MMAP_VRAM_LAZY	(1ULL << 40)
#define QGPU_MMAP_REGS		(2ULL << 40)
#define QGPU_MMAP_BO_BASE	(3ULL << 40)
#define QGPU_MMAP_BO_SHIFT	24	/* 16 MiB per handle: any BO fits */

#define QGPU_IOCTL_BASE		'Q'

/* Interrupt modes reported by QGPU_IOCTL_INFO. */
#define QGPU_IRQ_MODE_MSIX	1
#define QGPU_IRQ_MODE_MSI	2
#define QGPU_IRQ_MODE_INTX	3

/**
 * struct qgpu_info - QGPU_IOCTL_INFO: device and driver parameters
 * @flags:        in: must be zero
 * @version:      out: QGPU_REG_VERSION
 * @caps:         out: QGPU_REG_CAPS (QGPU_CAP_*)
 * @irq_mode:     out: QGPU_IRQ_MODE_*
 * @irq_vectors:  out: interrupt vectors in use
 * @ring_entries: out: descriptors in the driver's ring
 * @sg_max_entries: out: QGPU_REG_SG_MAX_ENTRIES
 * @dma_mask_bits: out: DMA mask the driver set (64 or 32)
 * @vram_size:    out: bytes of VRAM
 * @max_xfer:     out: longest transfer one ioctl accepts, bytes
 * @bo_max_size:  out: largest buffer object, bytes (one physically
 *                contiguous allocation: 4 MiB with 4 KiB pages)
 * @pci_bdf:      out: domain << 16 | bus << 8 | devfn, with the low 16
 *                bits of the domain only (see @pci_domain)
 * @pci_domain:   out: the PCI domain (segment), all of it; ignored on input
 *                (before it was added this field was reserved: zero)
 * @reserved:     must be zero
 */
struct qgpu_info {
	__u32 flags;
	__u32 version;
	__u32 caps;
	__u32 irq_mode;
	__u32 irq_vectors;
	__u32 ring_entries;
	__u32 sg_max_entries;
	__u32 dma_mask_bits;
	__u64 vram_size;
	__u64 max_xfer;
	__u64 bo_max_size;
	__u32 pci_bdf;
	__u32 pci_domain;
	__u64 reserved[4];
};

/*
 * Flags of the submitting ioctls (COPY_USER takes only FORCE_SG). An
 * asynchronous job is waited for with QGPU_IOCTL_WAIT_FENCE, a sync_file of
 * its fence (QGPU_IOCTL_FENCE_EXPORT), or poll(2) on the device file that
 * submitted it: readable (POLLIN) once every job that file submitted has
 * completed, POLLERR | POLLHUP once the device is removed or lost. When
 * WAIT_FENCE returns, the job no longer holds its buffer object (a BO
 * destroyed next is freed at once); after the other waits it lets go of it
 * shortly after.
 */
#define QGPU_SUBMIT_F_ASYNC	(1u << 0)	/* return at once; see @fence */
#define QGPU_SUBMIT_F_FORCE_SG	(1u << 1)	/* use an SG list even for 1 segment */

/**
 * struct qgpu_copy_user - QGPU_IOCTL_COPY_USER: DMA between user memory
 *	and VRAM. The driver works in chunks (module parameter xfer_chunk_kb):
 *	each is pinned, DMA-mapped (bounced or IOMMU-mapped as the platform
 *	needs), run and released before the next. On an error, chunks before
 *	the failing one have been transferred. From VRAM, a partial cache
 *	line at either end of the buffer is a chunk of its own: the device
 *	writes it into a kernel bounce buffer, and the driver copies it to
 *	the caller before the call returns (memory the device writes must
 *	not share a cache line with anybody else's data; counted in the
 *	line_bounces statistic). So the bytes beside the buffer, in its
 *	first and last lines, may be used by the CPU or by other copies
 *	while this one runs, even where DMA is not cache-coherent.
 * @op:          in: QGPU_OP_COPY_TO_VRAM or QGPU_OP_COPY_FROM_VRAM
 * @flags:       in: 0 or QGPU_SUBMIT_F_FORCE_SG
 * @user_ptr:    in: user virtual address, any alignment
 * @vram_offset: in: VRAM offset, any alignment
 * @length:      in: bytes, 1..max_xfer
 * @fence:       out: fence of the last chunk that ran (signalled on
 *               return), also when the call fails
 * @hw_status:   out: QGPU_ERR_* of the failed descriptor (-EIO), else 0
 * @nr_segments: out: DMA segments the user buffer mapped to, all chunks
 *               (a bounced partial line counts as one)
 * @reserved:    must be zero
 */
struct qgpu_copy_user {
	__u32 op;
	__u32 flags;
	__u64 user_ptr;
	__u64 vram_offset;
	__u64 length;
	__u64 fence;
	__u32 hw_status;
	__u32 nr_segments;
	__u64 reserved[2];
};

/**
 * struct qgpu_copy_bo - QGPU_IOCTL_COPY_BO: DMA between a buffer object
 *	and VRAM
 * @op:          in: QGPU_OP_COPY_TO_VRAM or QGPU_OP_COPY_FROM_VRAM
 * @flags:       in: 0 or QGPU_SUBMIT_F_ASYNC
 * @handle:      in: buffer object of this file
 * @reserved0:   must be zero
 * @bo_offset:   in: offset in the buffer object
 * @vram_offset: in: VRAM offset
 * @length:      in: bytes, non-zero
 * @fence:       out: fence to wait for with QGPU_IOCTL_WAIT_FENCE
 * @hw_status:   out: QGPU_ERR_* (synchronous calls only)
 * @reserved1:   must be zero
 * @reserved:    must be zero
 *
 * The object's dma_resv is shared by its dma-bufs (QGPU_IOCTL_DMABUF_EXPORT).
 * The job first waits for the fences in it that it must follow -- writers
 * before it reads the object, all before it writes it -- other than this
 * device's own (its jobs run in order); such a wait ends only when they
 * signal, or on a signal. The job's fence then goes into the dma_resv
 * before the job can run: as a writer for QGPU_OP_COPY_FROM_VRAM, as a
 * reader otherwise, so that importers, DMA_BUF_IOCTL_EXPORT_SYNC_FILE and
 * poll(2) on a dma-buf -- made before or while the job runs -- wait for it.
 */
struct qgpu_copy_bo {
	__u32 op;
	__u32 flags;
	__u32 handle;
	__u32 reserved0;
	__u64 bo_offset;
	__u64 vram_offset;
	__u64 length;
	__u64 fence;
	__u32 hw_status;
	__u32 reserved1;
	__u64 reserved[2];
};

/**
 * struct qgpu_vram_op - QGPU_IOCTL_VRAM_OP: device-side VRAM work. Long
 *	operations run as several descriptors (a few MiB each) of one job
 * @op:          in: QGPU_OP_FILL or QGPU_OP_COPY_VRAM (memmove semantics)
 * @flags:       in: 0 or QGPU_SUBMIT_F_ASYNC
 * @src_offset:  in: COPY_VRAM source offset; must be zero for FILL
 * @dst_offset:  in: destination offset
 * @length:      in: bytes, non-zero
 * @pattern:     in: FILL: 32-bit pattern, little-endian from @dst_offset;
 *               must be zero for COPY_VRAM
 * @hw_status:   out: QGPU_ERR_* (synchronous calls only); input ignored
 * @fence:       out: fence of the operation; input ignored
 * @reserved:    must be zero
 */
struct qgpu_vram_op {
	__u32 op;
	__u32 flags;
	__u64 src_offset;
	__u64 dst_offset;
	__u64 length;
	__u32 pattern;
	__u32 hw_status;
	__u64 fence;
	__u64 reserved[2];
};

/**
 * struct qgpu_wait_fence - QGPU_IOCTL_WAIT_FENCE: wait for a fence
 * @fence:      in: fence from a submitting ioctl of this device (0 is
 *              always signalled); a fence never handed out is -EINVAL
 * @timeout_ns: in: relative timeout; 0 polls. -ETIMEDOUT when it expires,
 *              -EINTR on a signal (the wait is not restarted)
 * @flags:      in: must be zero
 * @hw_status:  out: QGPU_ERR_* if the job of this fence failed (-EIO)
 * @completed:  out: the latest fence whose job has retired (its status is
 *              known); fences up to it are signalled
 *
 * Returns 0 only if the job of @fence succeeded. The driver remembers the
 * status of the last ring_entries fences; for an older fence it is still
 * known to be a success if no job has failed since, otherwise the wait
 * fails with -ESTALE (the job may or may not have failed).
 * @reserved:   must be zero
 */
struct qgpu_wait_fence {
	__u64 fence;
	__u64 timeout_ns;
	__u32 flags;
	__u32 hw_status;
	__u64 completed;
	__u64 reserved[2];
};

/**
 * struct qgpu_bo_create - QGPU_IOCTL_BO_CREATE: allocate a DMA-coherent
 *	buffer object, zero-filled; it lives until destroyed and unmapped
 * @size:        in: bytes, 1..bo_max_size; rounded up to pages. All BOs of
 *               a device together are capped by the driver's bo_limit_mb
 *               module parameter (default 256 MiB): -ENOSPC beyond it
 * @flags:       in: must be zero
 * @handle:      out: handle, valid in this open file only
 * @mmap_offset: out: mmap(2) offset of the object
 * @reserved:    must be zero
 */
struct qgpu_bo_create {
	__u64 size;
	__u32 flags;
	__u32 handle;
	__u64 mmap_offset;
	__u64 reserved[2];
};

/**
 * struct qgpu_bo_destroy - QGPU_IOCTL_BO_DESTROY: drop a handle. Existing
 *	mappings stay valid; memory is freed when the last one goes.
 * @handle:   in: handle of this file (-ENOENT if unknown or freed)
 * @flags:    in: must be zero
 * @reserved: must be zero
 */
struct qgpu_bo_destroy {
	__u32 handle;
	__u32 flags;
	__u64 reserved[2];
};

/* CPU access operations (QGPU_IOCTL_CPU_ACCESS). */
#define QGPU_CPU_CHECKSUM	1	/* FNV-1a 64 over the range */
#define QGPU_CPU_FILL		2	/* write @pattern, little-endian */

/**
 * struct qgpu_cpu_access - QGPU_IOCTL_CPU_ACCESS: the kernel reads or
 *	writes VRAM with the CPU through its own mapping (write-combined, or
 *	uncached if the BAR is not prefetchable), 64 KiB at a time; a reset
 *	that starts meanwhile waits for the piece in progress, and a piece
 *	that would start while the device is in reset fails the call with
 *	-EAGAIN (the pieces before it stay written). The call never succeeds
 *	with bytes read or written while a reset hid VRAM: a checksum never
 *	covers them, a fill never reports writes it lost
 * @op:          in: QGPU_CPU_*
 * @pattern:     in: QGPU_CPU_FILL pattern; zero for QGPU_CPU_CHECKSUM
 * @vram_offset: in: VRAM offset
 * @length:      in: bytes, non-zero
 * @checksum:    out: QGPU_CPU_CHECKSUM: FNV-1a 64 of the bytes
 * @reserved:    must be zero
 */
struct qgpu_cpu_access {
	__u32 op;
	__u32 pattern;
	__u64 vram_offset;
	__u64 length;
	__u64 checksum;
	__u64 reserved[2];
};

/**
 * struct qgpu_raise_irq - QGPU_IOCTL_RAISE_IRQ: have the device raise
 *	QGPU_INT_SOFT and wait for its interrupt (tests the misc vector)
 * @flags:     in: must be zero
 * @irq_count: out: soft interrupts the driver handled so far
 * @reserved:  must be zero
 */
struct qgpu_raise_irq {
	__u32 flags;
	__u32 irq_count;
	__u64 reserved[2];
};

/**
 * struct qgpu_fence_export - QGPU_IOCTL_FENCE_EXPORT: a fence as a sync_file
 * @fence:    in: fence from a submitting ioctl of this device (0 is always
 *            signalled); a fence never handed out is -EINVAL
 * @flags:    in: must be zero
 * @fd:       out: a new sync_file file descriptor (close-on-exec) whose
 *            dma_fence signals when the job of @fence retires: poll(2) it
 *            (POLLIN), merge it, or read its status with SYNC_IOC_FILE_INFO
 *            (linux/sync_file.h): 1 signalled, 0 pending, or the job's
 *            error: -EIO (the device reported an error, QGPU_ERR_* as
 *            WAIT_FENCE's hw_status), -ETIMEDOUT (a job the watchdog failed:
 *            the one it found stuck, or every queued one when it could not
 *            tell which, or on a second hang), -ECANCELED
 *            (QGPU_ERR_ABORTED: an engine reset, a PCIe error recovery, a
 *            lost device, a removal or a suspend that could not wait
 *            stopped it), -ESTALE (the driver no longer
 *            knows how so old a job ended, as for WAIT_FENCE: it may have
 *            succeeded)
 * @reserved: must be zero
 *
 * The dma_fence has the device's fence context and @fence as its 64-bit
 * seqno; exporting a pending fence again gives the same dma_fence. A merge
 * of fences of one device keeps only the latest, so the merged sync_file
 * does not report an earlier one's error: check each fence you depend on.
 * It outlives the device
 * file and the device: a removal signals it (-ECANCELED if its job had not
 * retired). While any of the device's dma_fences is referenced (an open
 * sync_file, or one it was merged into), the driver module cannot be
 * unloaded. A kernel without CONFIG_SYNC_FILE fails the call with
 * -EOPNOTSUPP.
 */
struct qgpu_fence_export {
	__u64 fence;
	__u32 flags;
	__s32 fd;
	__u64 reserved[2];
};

/* QGPU_IOCTL_DMABUF_EXPORT flags. */
#define QGPU_DMABUF_F_WRITE	(1U << 0)	/* O_RDWR: importers and mmap may write */

/**
 * struct qgpu_dmabuf_export - QGPU_IOCTL_DMABUF_EXPORT: a buffer object as
 *	a dma-buf
 * @handle:   in: buffer object of this file (-ENOENT if unknown or freed)
 * @flags:    in: QGPU_DMABUF_F_WRITE, else the dma-buf is read-only
 *            (O_RDONLY: mmap(2) PROT_READ only)
 * @fd:       out: a new dma-buf file descriptor (close-on-exec)
 * @reserved: must be zero
 *
 * The dma-buf keeps the object alive after its handle is destroyed and its
 * device file closed; exporting an object again makes another dma-buf of
 * the same memory. Importers (QGPU_IOCTL_COPY_DMABUF of this or another
 * device, any other driver) get the object's pages mapped for their device;
 * mmap(2) of the dma-buf maps them page by page on first access, and
 * DMA_BUF_IOCTL_SYNC (linux/dma-buf.h) makes what importers' DMA wrote
 * visible to the CPU and back. Once the device is removed or lost, mmap(2),
 * vmap and importers' mappings fail with -ENODEV and existing mappings
 * raise SIGBUS: removal frees the memory, after waiting (up to 30 s) for
 * importers to unmap it; memory an importer still maps then is never
 * freed (logged). While a dma-buf is open, the driver module cannot be
 * unloaded. A kernel without CONFIG_DMA_SHARED_BUFFER fails the call with
 * -EOPNOTSUPP.
 */
struct qgpu_dmabuf_export {
	__u32 handle;
	__u32 flags;
	__s32 fd;
	__u32 reserved0;
	__u64 reserved[2];
};

/**
 * struct qgpu_copy_dmabuf - QGPU_IOCTL_COPY_DMABUF: DMA between a dma-buf
 *	of any exporter and VRAM; returns when the DMA is over
 * @fd:          in: the dma-buf (of this device, another qgpu, udmabuf, ...)
 * @op:          in: QGPU_OP_COPY_TO_VRAM (from the dma-buf) or
 *               QGPU_OP_COPY_FROM_VRAM (into it); into VRAM needs a device
 *               file opened for writing (-EBADF)
 * @offset:      in: byte offset in the dma-buf
 * @vram_offset: in: VRAM offset
 * @length:      in: bytes, 1..max_xfer, inside both (-EINVAL; -E2BIG
 *               beyond max_xfer or beyond what the ring holds as SG lists)
 * @timeout_ns:  in: how long to wait for the dma-buf's fences first (its
 *               dma_resv: writers before reading it, everyone before
 *               writing it): 0 does not wait (-EBUSY if one is pending);
 *               -ETIME if they are still pending after it; a signal: -EINTR
 * @flags:       in: must be zero
 * @hw_status:   out: QGPU_ERR_* of the job (-EIO)
 * @fence:       out: fence of the job, 0 if none was submitted; it says
 *               the device is done, the bytes are the CPU's once the call
 *               returns (the mapping is torn down after the fence)
 * @nr_segments: out: DMA segments of the dma-buf range (SG entries used)
 * @reserved0:   must be zero
 * @reserved:    must be zero
 *
 * The device reaches the dma-buf through its exporter's mapping for this
 * device (dma_buf_map_attachment), made for the DMA and torn down before
 * the call returns (-ENOMEM if the exporter cannot map it for this device,
 * e.g. out of bounce buffers). A dynamic exporter's dma-buf (another
 * qgpu's VRAM: QGPU_IOCTL_VRAM_EXPORT) is attached dynamically, offering
 * to take peer-to-peer memory, and pinned for the DMA; its exporter may
 * refuse the attachment (-EOPNOTSUPP: a peer path the kernel does not
 * allow; -EINVAL: this device's own VRAM). A dma-buf that is not one
 * (-EINVAL) or not a file (-EBADF) is refused.
 */
struct qgpu_copy_dmabuf {
	__s32 fd;
	__u32 op;
	__u64 offset;
	__u64 vram_offset;
	__u64 length;
	__u64 timeout_ns;
	__u32 flags;
	__u32 hw_status;
	__u64 fence;
	__u32 nr_segments;
	__u32 reserved0;
	__u64 reserved[2];
};

/**
 * struct qgpu_vram_export - QGPU_IOCTL_VRAM_EXPORT: a range of VRAM as a
 *	dma-buf, for peer-to-peer DMA by another device
 * @vram_offset: in: start of the range, page-aligned
 * @size:        in: bytes, page-aligned, > 0, inside VRAM (-EINVAL)
 * @flags:       in: QGPU_DMABUF_F_WRITE (needs a device file opened for
 *               writing: -EBADF), else importers may only read it
 * @fd:          out: a new dma-buf file descriptor (close-on-exec)
 * @reserved:    must be zero
 *
 * VRAM is the device's BAR: it has no struct pages, and only a device
 * whose DMA the PCI topology lets reach the BAR directly can use it. An
 * importer must say it takes peer-to-peer memory (a dynamic attachment
 * with allow_peer2peer, as QGPU_IOCTL_COPY_DMABUF of another qgpu makes)
 * and sit where pci_p2pdma_distance() accepts the path -- both devices
 * below one PCIe switch without ACS redirection on its ports, or host
 * bridges the kernel trusts with P2P traffic (AMD Zen's, not Q35's) -- or
 * its attachment fails with -EOPNOTSUPP, the reason in the kernel log
 * (rate-limited); so does every import on a kernel without
 * CONFIG_PCI_P2PDMA.
 * Then user space bounces through system memory (a buffer object of one
 * device, exported, copied by the other: qgpu-tool p2p-copy). The device's
 * own VRAM dma-buf is refused too (-EINVAL): QGPU_OP_COPY_VRAM moves VRAM
 * within a device. Importers get the range mapped for their device
 * (dma_map_resource(): its bus addresses, or IOVAs behind an IOMMU; in
 * segments of at most its max_seg_size, within its segment boundary), not
 * while the device is suspended or being reset (-EAGAIN). mmap(2) of
 * the dma-buf maps the range as the device file's QGPU_MMAP_VRAM_LAZY
 * region does (write-combined, uncached if the BAR is not prefetchable;
 * page by page on first access; faults wait out a reset, SIGBUS after
 * removal; MAP_SHARED only, else -EINVAL; PROT_EXEC: -EPERM; PROT_WRITE
 * of a read-only dma-buf: -EACCES); the mapping holds the dma-buf. It
 * cannot be vmapped, and carries no fences: order VRAM
 * work on the two devices with their fences (QGPU_IOCTL_WAIT_FENCE,
 * sync_files). The dma-buf holds the device, not its VRAM's contents:
 * once the device is removed or lost, new mappings (DMA or CPU) fail
 * with -ENODEV, and removal waits (up to 30 s) for
 * importers to unmap it. It does not ask them to (no move_notify
 * revocation yet): an importer that keeps a mapping longer (pinned RDMA
 * memory) outlives the wait, logged, and must not DMA after removal.
 */
struct qgpu_vram_export {
	__u64 vram_offset;
	__u64 size;
	__u32 flags;
	__s32 fd;
	__u64 reserved[2];
};

/* QGPU_IOCTL_USERPTR_REGISTER flags. */
#define QGPU_USERPTR_F_WRITE	(1U << 0)	/* the device may write it */

/* Largest user buffer one registration pins. */
#define QGPU_USERPTR_MAX_SIZE	(1ULL << 30)

/**
 * struct qgpu_userptr_register - QGPU_IOCTL_USERPTR_REGISTER: pin a user
 *	buffer and map it for the device once, for any number of copies
 * @addr:        in: start, page-aligned (-EINVAL)
 * @length:      in: bytes, page-aligned, 1 page..QGPU_USERPTR_MAX_SIZE
 *               (-EINVAL; -E2BIG beyond)
 * @flags:       in: QGPU_USERPTR_F_WRITE (the buffer must then be mapped
 *               writable: -EFAULT), else the device only reads it
 * @handle:      out: the registration, for QGPU_IOCTL_COPY_USERPTR and
 *               QGPU_IOCTL_USERPTR_UNREGISTER of this file
 * @nr_segments: out: DMA segments the buffer mapped to
 * @reserved0:   must be zero
 * @reserved:    must be zero
 *
 * The pages are pinned long-term (FOLL_LONGTERM) and counted in the
 * process's pinned memory (VmPin in /proc/PID/status) against
 * RLIMIT_MEMLOCK, unless the caller has CAP_IPC_LOCK (-ENOMEM over it).
 * They stay pinned and mapped until the handle is unregistered, the file
 * closed (process exit) or the device removed, whichever comes first:
 * removal unmaps and unpins them, and later copies fail with -ENODEV.
 * The buffer belongs to the CPU between copies: each copy hands the bytes
 * it covers to the device (dma_sync_*_for_device) and back
 * (dma_sync_*_for_cpu), so CPU writes made after registration reach the
 * device and the device's writes reach the CPU even where the platform
 * bounces DMA (swiotlb), and bytes outside the copy are left alone.
 * Registering the same pages twice maps them twice, which the DMA API does
 * not support: DMA-API debugging may warn on such copies.
 */
struct qgpu_userptr_register {
	__u64 addr;
	__u64 length;
	__u32 flags;
	__u32 handle;
	__u32 nr_segments;
	__u32 reserved0;
	__u64 reserved[2];
};

/**
 * struct qgpu_userptr_unregister - QGPU_IOCTL_USERPTR_UNREGISTER: unmap and
 *	unpin a registered buffer (once no copy of it is running)
 * @handle:   in: handle of this file (-ENOENT if unknown or unregistered)
 * @flags:    in: must be zero
 * @reserved: must be zero
 */
struct qgpu_userptr_unregister {
	__u32 handle;
	__u32 flags;
	__u64 reserved[2];
};

/**
 * struct qgpu_copy_userptr - QGPU_IOCTL_COPY_USERPTR: DMA between part of a
 *	registered user buffer and VRAM; returns when the DMA is over
 * @handle:      in: the registration (-ENOENT)
 * @op:          in: QGPU_OP_COPY_TO_VRAM (needs a file opened for writing:
 *               -EBADF) or QGPU_OP_COPY_FROM_VRAM (needs a registration
 *               with QGPU_USERPTR_F_WRITE: -EACCES)
 * @offset:      in: byte offset in the buffer, any alignment
 * @vram_offset: in: VRAM offset
 * @length:      in: bytes, 1..max_xfer, inside both (-EINVAL; -E2BIG
 *               beyond max_xfer or beyond what the ring holds as SG lists)
 * @flags:       in: must be zero
 * @hw_status:   out: QGPU_ERR_* of the job (-EIO)
 * @fence:       out: fence of the job, 0 if none was submitted; it says
 *               the device is done, the bytes are the CPU's once the call
 *               returns (synced for the CPU after the fence)
 * @nr_segments: out: DMA segments of the range (SG entries used)
 * @reserved0:   must be zero
 * @reserved:    must be zero
 */
struct qgpu_copy_userptr {
	__u32 handle;
	__u32 op;
	__u64 offset;
	__u64 vram_offset;
	__u64 length;
	__u32 flags;
	__u32 hw_status;
	__u64 fence;
	__u32 nr_segments;
	__u32 reserved0;
	__u64 reserved[2];
};

#define QGPU_IOCTL_INFO		_IOWR(QGPU_IOCTL_BASE, 0x00, struct qgpu_info)
#define QGPU_IOCTL_COPY_USER	_IOWR(QGPU_IOCTL_BASE, 0x01, struct qgpu_copy_user)
#define QGPU_IOCTL_COPY_BO	_IOWR(QGPU_IOCTL_BASE, 0x02, struct qgpu_copy_bo)
#define QGPU_IOCTL_VRAM_OP	_IOWR(QGPU_IOCTL_BASE, 0x03, struct qgpu_vram_op)
#define QGPU_IOCTL_WAIT_FENCE	_IOWR(QGPU_IOCTL_BASE, 0x04, struct qgpu_wait_fence)
#define QGPU_IOCTL_BO_CREATE	_IOWR(QGPU_IOCTL_BASE, 0x05, struct qgpu_bo_create)
#define QGPU_IOCTL_BO_DESTROY	_IOWR(QGPU_IOCTL_BASE, 0x06, struct qgpu_bo_destroy)
#define QGPU_IOCTL_CPU_ACCESS	_IOWR(QGPU_IOCTL_BASE, 0x07, struct qgpu_cpu_access)
#define QGPU_IOCTL_RAISE_IRQ	_IOWR(QGPU_IOCTL_BASE, 0x08, struct qgpu_raise_irq)
#define QGPU_IOCTL_FENCE_EXPORT	_IOWR(QGPU_IOCTL_BASE, 0x09, struct qgpu_fence_export)
#define QGPU_IOCTL_DMABUF_EXPORT _IOWR(QGPU_IOCTL_BASE, 0x0a, struct qgpu_dmabuf_export)
#define QGPU_IOCTL_COPY_DMABUF	_IOWR(QGPU_IOCTL_BASE, 0x0b, struct qgpu_copy_dmabuf)
#define QGPU_IOCTL_USERPTR_REGISTER \
	_IOWR(QGPU_IOCTL_BASE, 0x0c, struct qgpu_userptr_register)
#define QGPU_IOCTL_USERPTR_UNREGISTER \
	_IOWR(QGPU_IOCTL_BASE, 0x0d, struct qgpu_userptr_unregister)
#define QGPU_IOCTL_COPY_USERPTR	_IOWR(QGPU_IOCTL_BASE, 0x0e, struct qgpu_copy_userptr)
#define QGPU_IOCTL_VRAM_EXPORT	_IOWR(QGPU_IOCTL_BASE, 0x0f, struct qgpu_vram_export)

#endif /* _UAPI_QGPU_H */
