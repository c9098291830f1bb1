// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: peer-to-peer DMA between two qgpus -- which peers the PCI topology
 * lets this device's VRAM be reached from.
 *
 * A peer reaches another device's BAR directly only through a PCIe switch
 * both sit below (with no ACS redirection on its ports), or through a host
 * bridge the kernel knows forwards peer-to-peer traffic; Q35's is not one.
 * pci_p2pdma_distance() decides, from the topology alone: a VRAM dma-buf's
 * importers are checked with it, and debugfs qgpu/<PCI name>/p2p lists its
 * answer for every other qgpu, so that a test (or a user) sees why a path
 * is refused (the kernel logs the reason). Kernels without
 * CONFIG_PCI_P2PDMA (Debian's) refuse every peer.
 */

#include <linux/debugfs.h>
#include <linux/pci.h>
#include <linux/pci-p2pdma.h>
#include <linux/seq_file.h>

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
