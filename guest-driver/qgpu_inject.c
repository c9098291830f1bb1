// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu: the kernel calls a test can fail on demand.
 *
 * Pinning and DMA-mapping user pages, allocating DMA-coherent memory and
 * setting up interrupts fail only when the system runs out of memory, IOVA
 * space, bounce buffers or interrupt vectors -- which a test cannot arrange
 * at will, and which is when a driver's error paths finally run. Each such
 * call goes through one of these wrappers. Built with
 * CONFIG_FUNCTION_ERROR_INJECTION, they are on fail_function's list
 * (/sys/kernel/debug/fail_function/injectable), so a test fails them one at
 * a time (the rig's qgpu.kfault); otherwise they are plain calls.
 */
#include <linux/dma-mapping.h>
#include <linux/error-injection.h>
#include <linux/interrupt.h>
#include <linux/mm.h>
#include <linux/pci.h>

#include "qgpu_drv.h"

noinline long qgpu_pin_user_pages(unsigned long start, unsigned long npages,
				  unsigned int gup_flags, struct page **pages)
{
	return pin_user_pages_fast(start, npages, gup_flags, pages);
}
ALLOW_ERROR_INJECTION(qgpu_pin_user_pages, ERRNO);

noinline int qgpu_dma_map_user_sgt(struct device *dev, struct sg_table *sgt,
				   enum dma_data_direction dir,
				   unsigned long attrs)
{
	return dma_map_sgtable(dev, sgt, dir, attrs | DMA_ATTR_NO_WARN);
}
ALLOW_ERROR_INJECTION(qgpu_dma_map_user_sgt, ERRNO);

noinline int qgpu_dma_map_user_page(struct device *dev, struct page *page,
				    unsigned int off, size_t len,
				    enum dma_data_direction dir, dma_addr_t *dma)
{
	*dma = dma_map_page_attrs(dev, page, off, len, dir, DMA_ATTR_NO_WARN);
	return dma_mapping_error(dev, *dma) ? -ENOMEM : 0;
}
ALLOW_ERROR_INJECTION(qgpu_dma_map_user_page, ERRNO);

noinline void *qgpu_dma_alloc(struct device *dev, size_t size,
			      dma_addr_t *dma, unsigned long attrs)
{
	return dma_alloc_attrs(dev, size, dma, GFP_KERNEL, attrs);
}
ALLOW_ERROR_INJECTION(qgpu_dma_alloc, NULL);

noinline int qgpu_alloc_irq_vectors(struct pci_dev *pdev, unsigned int min,
				    unsigned int max, unsigned int flags)
{
	return pci_alloc_irq_vectors(pdev, min, max, flags);
}
ALLOW_ERROR_INJECTION(qgpu_alloc_irq_vectors, ERRNO);

noinline int qgpu_request_irq(unsigned int irq, irq_handler_t handler,
			      unsigned long flags, const char *name, void *data)
{
	return request_irq(irq, handler, flags, name, data);
}
ALLOW_ERROR_INJECTION(qgpu_request_irq, ERRNO);
