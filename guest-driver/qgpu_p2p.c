// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: peer-to-peer DMA between two qgpus -- which peers the PCI topology
 * lets this device's VRAM be reached from, and VRAM ranges exported to
 * them as dma-bufs (QGPU_IOCTL_VRAM_EXPORT).
 *
 * A peer reaches another device's BAR directly only through a PCIe switch
 * both sit below (with no ACS redirection on its ports), or through a host
 * bridge the kernel knows forwards peer-to-peer traffic; Q35's is not one.
 * pci_p2pdma_distance() decides, from the topology alone: a VRAM dma-buf's
 * importers are checked with it, and debugfs qgpu/<PCI name>/p2p lists its
 * answer for every other qgpu, so that a test (or a user) sees why a path
 * is refused (the kernel logs the reason). Kernels without
 * CONFIG_PCI_P2PDMA (Debian's) refuse every peer.
 *
 * The exporter. VRAM has no struct pages: an importer gets bus addresses
 * only, which it must have asked for (allow_peer2peer, a dynamic
 * attachment), each segment mapped for its device with dma_map_resource()
 * as amdgpu maps its VRAM for peers. pci_p2pdma_add_resource() would give
 * VRAM pages for the page-based P2P API, but its memremap_pages() claims
 * the BAR uncached, and the driver's write-combined io_mapping of the same
 * range (user mmaps of VRAM) then conflicts with it. The exporter is
 * dynamic (pin and unpin, though VRAM never moves): the core then maps it
 * when the importer asks, in the importer's direction, under the dma-buf's
 * dma_resv, and a dynamic importer knows it may offer to take P2P memory.
 * Mappings count as importer pins (qdev->dmabuf_pins), which removal waits
 * for (a bounded time) before the BAR goes; it does not revoke them
 * (dma_buf_move_notify()) yet. A dma-buf holds the device, not its VRAM's
 * contents.
 */

#include <linux/debugfs.h>
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/pci-p2pdma.h>
#include <linux/seq_file.h>
#include <linux/slab.h>

#include "qgpu_drv.h"

/*
 * How far @client's DMA is from this device's BARs (>= 0), or -EOPNOTSUPP
 * if it cannot reach them peer-to-peer (the reason logged if @verbose).
 */
int qgpu_p2p_distance(struct qgpu_device *qdev, struct device *client,
		      bool verbose)
{
	int dist;

	if (!IS_ENABLED(CONFIG_PCI_P2PDMA))
		return -EOPNOTSUPP;
	dist = pci_p2pdma_distance(qdev->pdev, client, verbose);
	return dist < 0 ? -EOPNOTSUPP : dist;
}

/* debugfs qgpu/<PCI name>/p2p: each other qgpu, and whether it is a peer. */
static int qgpu_p2p_show(struct seq_file *m, void *unused)
{
	struct qgpu_device *qdev = m->private;
	struct pci_dev *peer = NULL;

	seq_printf(m, "p2pdma: %s\n",
		   IS_ENABLED(CONFIG_PCI_P2PDMA) ? "yes" : "no");
	while ((peer = pci_get_device(QGPU_PCI_VENDOR_ID, QGPU_PCI_DEVICE_ID,
				      peer))) {
		int dist;

		if (peer == qdev->pdev)
			continue;
		dist = qgpu_p2p_distance(qdev, &peer->dev, true);
		if (dist < 0)
			seq_printf(m, "%s unreachable\n", pci_name(peer));
		else
			seq_printf(m, "%s distance %d\n", pci_name(peer), dist);
	}
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(qgpu_p2p);

void qgpu_p2p_debugfs_add(struct qgpu_device *qdev)
{
	debugfs_create_file("p2p", 0400, qdev->debugfs, qdev, &qgpu_p2p_fops);
}

#if IS_ENABLED(CONFIG_DMA_SHARED_BUFFER)

MODULE_IMPORT_NS(DMA_BUF);

/* The exporter's private data of a VRAM dma-buf. */
struct qgpu_vram_dmabuf {
	struct qgpu_device *qdev;	/* reference */
	u64 vram_offset;
	u64 size;
	struct dma_buf *dmabuf;
	struct inode *inode;		/* as struct qgpu_dmabuf's: for zaps */
	struct list_head node;		/* qdev->vram_dmabufs, under dmabuf_lock */
};

static DEFINE_RATELIMIT_STATE(qgpu_p2p_refusals, 5 * HZ, 5);

/*
 * Only importers that take bus addresses without pages, and whose DMA
 * reaches the BAR directly. Not the device itself: it refuses DMA into
 * its own BARs (QGPU_ERR_SELF_DMA).
 */
static int qgpu_vram_dmabuf_attach(struct dma_buf *dmabuf,
				   struct dma_buf_attachment *at)
{
	struct qgpu_vram_dmabuf *vb = dmabuf->priv;
	struct qgpu_device *qdev = vb->qdev;

	if (at->dev == qdev->dev)
		return -EINVAL;
	if (!at->peer2peer) {
		dev_dbg(qdev->dev, "%s: %s cannot take peer-to-peer memory\n",
			qdev->name, dev_name(at->dev));
		return -EOPNOTSUPP;
	}
	if (qgpu_unusable(qdev) == -ENODEV)
		return -ENODEV;
	/* The kernel's reason is logged, not once per call of a busy caller. */
	return qgpu_p2p_distance(qdev, at->dev, __ratelimit(&qgpu_p2p_refusals)) < 0 ?
	       -EOPNOTSUPP : 0;
}

/* VRAM stays where it is: nothing to pin, but a dynamic exporter has these. */
static int qgpu_vram_dmabuf_pin(struct dma_buf_attachment *at)
{
	return 0;
}

static void qgpu_vram_dmabuf_unpin(struct dma_buf_attachment *at)
{
}

/* The next segment at @addr: at most @max_seg, up to the next boundary. */
static u64 qgpu_vram_dmabuf_seg(u64 addr, u64 left, u64 max_seg, u64 boundary)
{
	if (boundary != U64_MAX)
		left = min(left, boundary - (addr & boundary) + 1);
	return min(left, max_seg);
}

static void qgpu_vram_dmabuf_unmap_segments(struct dma_buf_attachment *at,
					    struct sg_table *sgt,
					    enum dma_data_direction dir,
					    unsigned int nents)
{
	struct scatterlist *sg;
	unsigned int i;

	for_each_sgtable_dma_sg(sgt, sg, i) {
		if (i == nents)
			break;
		dma_unmap_resource(at->dev, sg_dma_address(sg), sg_dma_len(sg),
				   dir, 0);
	}
}

/*
 * The range's bus addresses for the importer's device, in segments of at
 * most its max_seg_size that cross none of its segment boundaries; the
 * table has no pages (importers that asked for P2P memory look at the DMA
 * side only). Under the dma-buf's dma_resv. Not while the device is
 * suspended or in a reset (-EAGAIN): its BAR may not answer.
 */
static struct sg_table *qgpu_vram_dmabuf_map(struct dma_buf_attachment *at,
					     enum dma_data_direction dir)
{
	struct qgpu_vram_dmabuf *vb = at->dmabuf->priv;
	struct qgpu_device *qdev = vb->qdev;
	size_t max_seg = max_t(size_t, dma_get_max_seg_size(at->dev) & PAGE_MASK,
			       PAGE_SIZE);
	u64 boundary = dma_get_seg_boundary(at->dev);
	phys_addr_t phys = qdev->vram_phys + vb->vram_offset;
	unsigned int i, nents = 0;
	struct scatterlist *sg;
	struct sg_table *sgt;
	u64 done = 0;
	int ret;

	/* The core checks nothing of the kind: a read-only dma-buf is read. */
	if (dir != DMA_TO_DEVICE && !(at->dmabuf->file->f_mode & FMODE_WRITE))
		return ERR_PTR(-EACCES);
	for (done = 0; done < vb->size; nents++)
		done += qgpu_vram_dmabuf_seg(phys + done, vb->size - done,
					     max_seg, boundary);
	sgt = kzalloc(sizeof(*sgt), GFP_KERNEL);
	if (!sgt)
		return ERR_PTR(-ENOMEM);
	ret = sg_alloc_table(sgt, nents, GFP_KERNEL);
	if (ret)
		goto err_free;
	done = 0;
	for_each_sgtable_sg(sgt, sg, i) {
		size_t len = qgpu_vram_dmabuf_seg(phys + done, vb->size - done,
						  max_seg, boundary);
		dma_addr_t addr = dma_map_resource(at->dev, phys + done, len,
						   dir, 0);

		if (dma_mapping_error(at->dev, addr)) {
			ret = -ENOMEM;
			goto err_unmap;
		}
		sg_set_page(sg, NULL, len, 0);
		sg_dma_address(sg) = addr;
		sg_dma_len(sg) = len;
		done += len;
	}
	/* Counted only while the device is there; removal waits for these. */
	mutex_lock(&qdev->dmabuf_lock);
	ret = qgpu_unusable(qdev);
	if (!ret)
		atomic_inc(&qdev->dmabuf_pins);
	mutex_unlock(&qdev->dmabuf_lock);
	if (ret)
		goto err_unmap;
	qgpu_stat_inc(qdev, QGPU_STAT_DMABUF_MAPS);
	return sgt;

err_unmap:
	qgpu_vram_dmabuf_unmap_segments(at, sgt, dir, i);
	sg_free_table(sgt);
err_free:
	kfree(sgt);
	return ERR_PTR(ret);
}

static void qgpu_vram_dmabuf_unmap(struct dma_buf_attachment *at,
				   struct sg_table *sgt,
				   enum dma_data_direction dir)
{
	struct qgpu_vram_dmabuf *vb = at->dmabuf->priv;
	struct qgpu_device *qdev = vb->qdev;

	qgpu_vram_dmabuf_unmap_segments(at, sgt, dir, sgt->nents);
	sg_free_table(sgt);
	kfree(sgt);
	qgpu_stat_add(qdev, QGPU_STAT_DMABUF_MAPS, -1);
	if (atomic_dec_and_test(&qdev->dmabuf_pins))
		wake_up_all(&qdev->dmabuf_wq);
}

/*
 * The device file's lazily faulted VRAM mapping of the range: its VMA is
 * the device's (qgpu_mmap_dev() lists it for the zaps' mmap_lock wait),
 * shifted to the range, and the dma-buf file it holds keeps the device.
 * Removal and resets zap it with the device's own mappings
 * (qgpu_p2p_zap()), and faults wait out a reset. The core checked the
 * range against the dma-buf's size; a read-only dma-buf cannot be mapped
 * writable (its file is O_RDONLY).
 */
static int qgpu_vram_dmabuf_mmap(struct dma_buf *dmabuf,
				 struct vm_area_struct *vma)
{
	struct qgpu_vram_dmabuf *vb = dmabuf->priv;

	vma->vm_pgoff += (QGPU_MMAP_VRAM_LAZY + vb->vram_offset) >> PAGE_SHIFT;
	return qgpu_mmap_dev(vb->qdev, NULL, vma);
}

static void qgpu_vram_dmabuf_release(struct dma_buf *dmabuf)
{
	struct qgpu_vram_dmabuf *vb = dmabuf->priv;

	mutex_lock(&vb->qdev->dmabuf_lock);
	list_del(&vb->node);
	mutex_unlock(&vb->qdev->dmabuf_lock);
	iput(vb->inode);

	qgpu_stat_add(vb->qdev, QGPU_STAT_DMABUFS, -1);
	qgpu_device_put(vb->qdev);
	kfree(vb);
}

static const struct dma_buf_ops qgpu_vram_dmabuf_ops = {
	.attach = qgpu_vram_dmabuf_attach,
	.pin = qgpu_vram_dmabuf_pin,
	.unpin = qgpu_vram_dmabuf_unpin,
	.map_dma_buf = qgpu_vram_dmabuf_map,
	.unmap_dma_buf = qgpu_vram_dmabuf_unmap,
	.release = qgpu_vram_dmabuf_release,
	.mmap = qgpu_vram_dmabuf_mmap,
};

/*
 * QGPU_IOCTL_VRAM_EXPORT. As for QGPU_IOCTL_DMABUF_EXPORT, the caller
 * (qgpu_ioctl()) installs the descriptor once the argument is copied back.
 */
long qgpu_ioctl_vram_export(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	struct qgpu_vram_export *a = call->args;
	DEFINE_DMA_BUF_EXPORT_INFO(exp);
	struct qgpu_device *qdev = qf->qdev;
	struct qgpu_vram_dmabuf *vb;
	struct dma_buf *dmabuf;
	int fd, ret;

	if ((a->flags & ~QGPU_DMABUF_F_WRITE) || a->reserved[0] || a->reserved[1])
		return -EINVAL;
	/* Letting peers write VRAM is changing it. */
	if ((a->flags & QGPU_DMABUF_F_WRITE) && !qf->writable)
		return -EBADF;
	if (!a->size || !PAGE_ALIGNED(a->vram_offset) || !PAGE_ALIGNED(a->size) ||
	    a->vram_offset > qdev->vram_size ||
	    a->size > qdev->vram_size - a->vram_offset)
		return -EINVAL;
	vb = kzalloc(sizeof(*vb), GFP_KERNEL);
	if (!vb)
		return -ENOMEM;
	kref_get(&qdev->ref);
	vb->qdev = qdev;
	vb->vram_offset = a->vram_offset;
	vb->size = a->size;
	exp.ops = &qgpu_vram_dmabuf_ops;
	exp.size = a->size;
	exp.flags = O_CLOEXEC | (a->flags & QGPU_DMABUF_F_WRITE ? O_RDWR : O_RDONLY);
	exp.priv = vb;
	dmabuf = dma_buf_export(&exp);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		goto err_put;
	}
	/* From here, dma_buf's release (the last fput()) undoes it all. */
	vb->dmabuf = dmabuf;
	vb->inode = file_inode(dmabuf->file);
	ihold(vb->inode);
	mutex_lock(&qdev->dmabuf_lock);
	list_add(&vb->node, &qdev->vram_dmabufs);
	mutex_unlock(&qdev->dmabuf_lock);
	qgpu_stat_inc(qdev, QGPU_STAT_DMABUFS);
	fd = qgpu_call_new_fd(call, dmabuf->file);
	if (fd < 0)
		return fd;
	a->fd = fd;
	return 0;

err_put:
	qgpu_device_put(qdev);
	kfree(vb);
	return ret;
}

/*
 * Removal and resets, after the device's zap: the CPU mappings of its VRAM
 * dma-bufs go too (their faults check @dead, @lost and @frozen under
 * map_srcu, which the zap synchronized), through the inodes they hold (see
 * qgpu_dmabuf_zap()).
 */
void qgpu_p2p_zap(struct qgpu_device *qdev)
{
	struct qgpu_vram_dmabuf *vb;

	mutex_lock(&qdev->dmabuf_lock);
	list_for_each_entry(vb, &qdev->vram_dmabufs, node)
		unmap_mapping_range(vb->inode->i_mapping, 0, 0, 1);
	mutex_unlock(&qdev->dmabuf_lock);
}

#else /* !CONFIG_DMA_SHARED_BUFFER */

void qgpu_p2p_zap(struct qgpu_device *qdev)
{
}

long qgpu_ioctl_vram_export(struct qgpu_file *qf, struct qgpu_ioctl_call *call)
{
	return -EOPNOTSUPP;
}

#endif
