// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu_hello - the smallest driver of the qgpu device, written from its spec
 * (docs/qgpu-spec.md) and its ABI header (qgpu_hw.h, shipped in the qgpu
 * Python package) only.
 *
 * At probe it checks the device's identity, sets up a two-entry descriptor
 * ring, asks the DMA engine to fill VRAM (module parameters: offset, length,
 * pattern) with a fence, waits for the fence, and reads the descriptor's
 * status: the device writes the status before the fence, and writes the fence
 * for a failed descriptor too, so only the status says whether it worked
 * (spec 4.4). It polls instead of taking an interrupt, to stay small.
 *
 * The bounds of the fill are checked by the device, not here: a fill past the
 * end of VRAM comes back as the device's error code, which probe reports
 * (-EIO, and the code in the log). An example project's tests
 * (examples/hello-qgpu/tests) check both outcomes from the host.
 */
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/io.h>
#include <linux/io-64-nonatomic-lo-hi.h>	/* readq where there is none (FENCE) */
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/pci.h>

#include "qgpu_hw.h"

#define HELLO_RING_ENTRIES	2	/* the smallest ring the device takes */
#define HELLO_TIMEOUT_MS	5000

static ulong offset;
module_param(offset, ulong, 0444);
MODULE_PARM_DESC(offset, "VRAM offset of the fill (default 0)");
static ulong length = 4096;
module_param(length, ulong, 0444);
MODULE_PARM_DESC(length, "bytes to fill (default 4096)");
static uint pattern = 0x5a5aa5a5;
module_param(pattern, uint, 0444);
MODULE_PARM_DESC(pattern, "32-bit fill pattern, repeated little-endian");

/* One page of coherent memory: the ring, then the fence slot. */
struct hello_dma {
	struct qgpu_desc ring[HELLO_RING_ENTRIES];
	__le64 fence;
};

/* Wait for the engine to go idle after a reset (spec 3.5: its status write is posted). */
static void hello_engine_reset(void __iomem *regs)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(1000);

	writel(QGPU_ENGINE_RESET_MAGIC, regs + QGPU_REG_ENGINE_RESET);
	while (readl(regs + QGPU_REG_ENGINE_STATUS) & QGPU_ENGINE_STATUS_BUSY &&
	       time_before(jiffies, deadline))
		usleep_range(100, 200);
}

static int hello_fill(struct pci_dev *pdev, void __iomem *regs, struct hello_dma *mem,
		      dma_addr_t bus)
{
	struct device *dev = &pdev->dev;
	struct qgpu_desc *d = &mem->ring[0];
	unsigned long deadline;
	u32 status, engine, refused;
	u64 seqno;

	/*
	 * Whatever an earlier driver left (an enabled engine, work in flight, a
	 * halt): reset the engine, so that the ring registers take our values
	 * (they refuse writes while the engine is enabled or busy, spec 3.2).
	 * No interrupts: this driver polls.
	 */
	hello_engine_reset(regs);
	writel(0, regs + QGPU_REG_INT_MASK);
	writel(readl(regs + QGPU_REG_ACCESS_ERROR), regs + QGPU_REG_ACCESS_ERROR);

	/* Fences continue after the device's FENCE register (spec 3.5). */
	seqno = readq(regs + QGPU_REG_FENCE_LO) + 1;

	writel(lower_32_bits(bus), regs + QGPU_REG_RING_BASE_LO);
	writel(upper_32_bits(bus), regs + QGPU_REG_RING_BASE_HI);
	writel(HELLO_RING_ENTRIES, regs + QGPU_REG_RING_SIZE);	/* HEAD = TAIL = 0 */
	writel(QGPU_ENGINE_CTRL_ENABLE, regs + QGPU_REG_ENGINE_CTRL);
	engine = readl(regs + QGPU_REG_ENGINE_STATUS);
	refused = readl(regs + QGPU_REG_ACCESS_ERROR);
	if (refused || !(engine & QGPU_ENGINE_STATUS_ENABLED) ||
	    (engine & QGPU_ENGINE_STATUS_HALTED)) {
		dev_err(dev, "the ring setup was refused (ACCESS_ERROR %#x at %#x, ENGINE_STATUS %#x)\n",
			refused, readl(regs + QGPU_REG_ACCESS_ERROR_ADDR), engine);
		hello_engine_reset(regs);
		return -EIO;
	}

	memset(d, 0, sizeof(*d));
	d->opcode = cpu_to_le32(QGPU_OP_FILL);
	d->flags = cpu_to_le32(QGPU_DESC_F_FENCE);
	d->dst = cpu_to_le64(offset);
	d->length = cpu_to_le64(length);
	d->fence_addr = cpu_to_le64(bus + offsetof(struct hello_dma, fence));
	d->fence_value = cpu_to_le64(seqno);
	d->fill_pattern = cpu_to_le32(pattern);
	dma_wmb();	/* the descriptor is in memory before the doorbell */
	writel(1, regs + QGPU_REG_DOORBELL);	/* the new tail: entry 0 is ready */

	/*
	 * Retired: the fence is written (also for a failed descriptor), or HEAD
	 * has moved past the entry (the status is final by then, spec 3.1), which
	 * also covers a fence write that failed.
	 */
	deadline = jiffies + msecs_to_jiffies(HELLO_TIMEOUT_MS);
	while (le64_to_cpu(READ_ONCE(mem->fence)) != seqno &&
	       readl(regs + QGPU_REG_RING_HEAD) == 0) {
		if (time_after(jiffies, deadline)) {
			dev_err(dev, "no fence after %d ms (ENGINE_STATUS %#x)\n",
				HELLO_TIMEOUT_MS, readl(regs + QGPU_REG_ENGINE_STATUS));
			hello_engine_reset(regs);
			return -ETIMEDOUT;
		}
		usleep_range(50, 100);
	}
	dma_rmb();	/* the status was written before the fence */
	status = le32_to_cpu(READ_ONCE(d->status));
	writel(0, regs + QGPU_REG_ENGINE_CTRL);
	writel(readl(regs + QGPU_REG_INT_STATUS), regs + QGPU_REG_INT_STATUS);

	if (!(status & QGPU_DESC_STATUS_DONE) || (status & QGPU_DESC_STATUS_ERR_MASK)) {
		dev_err(dev, "fill of %lu bytes at VRAM %#lx: device error %u (status %#x)\n",
			length, offset, status & QGPU_DESC_STATUS_ERR_MASK, status);
		writel(0, regs + QGPU_REG_DMA_ERROR);	/* any write clears it */
		return -EIO;
	}
	dev_info(dev, "fill of %lu bytes at VRAM %#lx with %#x: done, fence %llu\n",
		 length, offset, pattern, seqno);
	return 0;
}

static int hello_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct hello_dma *mem;
	void __iomem *regs;
	dma_addr_t bus;
	u32 magic, version;
	int ret;

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	regs = pcim_iomap_region(pdev, QGPU_BAR_REGS, KBUILD_MODNAME);
	if (IS_ERR(regs))
		return PTR_ERR(regs);

	magic = readl(regs + QGPU_REG_ID);
	version = readl(regs + QGPU_REG_VERSION);
	if (magic != QGPU_ID_MAGIC || version >> 16 != 1) {
		dev_err(dev, "not a qgpu 1.x: ID %#x, VERSION %#x\n", magic, version);
		return -ENODEV;
	}
	dev_info(dev, "qgpu %u.%u, %llu MiB of VRAM\n", version >> 16, version & 0xffff,
		 ((u64)readl(regs + QGPU_REG_VRAM_SIZE_HI) << 32 |
		  readl(regs + QGPU_REG_VRAM_SIZE_LO)) >> 20);

	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
	if (ret)
		return ret;
	/* Zeroed, freed when the device is unbound (after the engine stopped). */
	mem = dmam_alloc_coherent(dev, sizeof(*mem), &bus, GFP_KERNEL);
	if (!mem)
		return -ENOMEM;
	pci_set_master(pdev);

	ret = hello_fill(pdev, regs, mem, bus);
	if (ret)
		pci_clear_master(pdev);
	return ret;
}

static void hello_remove(struct pci_dev *pdev)
{
	/* The engine is disabled and idle since probe; stop it touching memory at all. */
	pci_clear_master(pdev);
}

static const struct pci_device_id hello_ids[] = {
	{ PCI_DEVICE(QGPU_PCI_VENDOR_ID, QGPU_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, hello_ids);

static struct pci_driver hello_driver = {
	.name = KBUILD_MODNAME,
	.id_table = hello_ids,
	.probe = hello_probe,
	.remove = hello_remove,
};
module_pci_driver(hello_driver);

MODULE_DESCRIPTION("The smallest qgpu driver: one DMA fill with a fence");
MODULE_LICENSE("GPL");
