// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu_canary: commits one kernel bug on request, for tests only.
 *
 * The rig claims that the debug kernel's detectors turn a driver bug into a
 * failed test with the report in the artifact bundle. A detector that never
 * fires proves nothing, so this module makes each of them fire:
 *
 *   insmod qgpu_canary.ko bug=use-after-free    KASAN: slab-use-after-free
 *   insmod qgpu_canary.ko bug=leak              kmemleak: unreferenced object
 *   insmod qgpu_canary.ko bug=lock-inversion    lockdep: circular dependency
 *   insmod qgpu_canary.ko bug=dma-wrong-size    DMA-API: unmap of a different
 *                                               size than was mapped (on the
 *                                               first device bound to qgpu)
 *   insmod qgpu_canary.ko bug=none              nothing (the control case)
 *
 * The module commits the bug in its init function and stays loaded (its
 * exit does nothing), so the report comes from a clean, known place. Never
 * packed for anything but the rig's own detector tests.
 */
#include <linux/device.h>
#include <linux/dma-mapping.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/string.h>

#define QGPU_CANARY_VENDOR	0x1234
#define QGPU_CANARY_DEVICE	0x5147

static char *bug = "none";
module_param(bug, charp, 0444);
MODULE_PARM_DESC(bug, "use-after-free | leak | lock-inversion | dma-wrong-size | none");

/* Kept global so the compiler cannot prove the reads away. */
static volatile char canary_sink;
static void *canary_leaked_once;

static DEFINE_MUTEX(canary_lock_a);
static DEFINE_MUTEX(canary_lock_b);

static int canary_use_after_free(void)
{
	char *p = kmalloc(64, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	memset(p, 0x5a, 64);
	kfree(p);
	canary_sink = READ_ONCE(p[8]);		/* the bug */
	return 0;
}

#define CANARY_LEAKS	8

/* Overwrite the stack below our caller, where stale copies of pointers lie. */
static noinline void canary_scrub_stack(void)
{
	char junk[1024];

	memzero_explicit(junk, sizeof(junk));	/* not optimised away */
}

/*
 * kmemleak reports an object only if no copy of its address is left in the
 * memory it scans, and a stale copy can survive in a spill slot of this
 * task's kernel stack (a freed vmap stack is cached, not cleared, and is
 * scanned like any vmalloc area): one leaked object was missed now and
 * then. Leak several, one pointer variable reused for all, and scrub the
 * stack afterwards: at most the last can stay hidden.
 */
static int canary_leak(void)
{
	int i;

	for (i = 0; i < CANARY_LEAKS; i++) {
		void *p = kmalloc(1024, GFP_KERNEL);

		if (!p)
			return -ENOMEM;
		memset(p, 0x6b, 1024);
		/* Drop the only reference (kmemleak scans memory for it). */
		WRITE_ONCE(canary_leaked_once, p);
		WRITE_ONCE(canary_leaked_once, NULL);	/* the bug */
	}
	canary_scrub_stack();
	return 0;
}

static int canary_lock_inversion(void)
{
	/* A then B, later B then A: no deadlock here, but lockdep sees the cycle. */
	mutex_lock(&canary_lock_a);
	mutex_lock(&canary_lock_b);
	mutex_unlock(&canary_lock_b);
	mutex_unlock(&canary_lock_a);

	mutex_lock(&canary_lock_b);
	mutex_lock(&canary_lock_a);		/* the bug */
	mutex_unlock(&canary_lock_a);
	mutex_unlock(&canary_lock_b);
	return 0;
}

static int canary_dma_wrong_size(void)
{
	struct pci_dev *pdev = NULL;
	dma_addr_t dma;
	void *buf;
	int ret = -ENODEV;

	/* A qgpu device with the qgpu driver bound: DMA-API debug reports for it. */
	while ((pdev = pci_get_device(QGPU_CANARY_VENDOR, QGPU_CANARY_DEVICE, pdev)))
		if (pdev->dev.driver)
			break;
	if (!pdev)
		return ret;

	buf = kmalloc(PAGE_SIZE, GFP_KERNEL);
	if (!buf) {
		ret = -ENOMEM;
		goto put_dev;
	}
	dma = dma_map_single(&pdev->dev, buf, PAGE_SIZE, DMA_TO_DEVICE);
	if (dma_mapping_error(&pdev->dev, dma)) {
		ret = -EIO;
		goto free_buf;
	}
	dma_unmap_single(&pdev->dev, dma, PAGE_SIZE / 2, DMA_TO_DEVICE);	/* the bug */
	ret = 0;
free_buf:
	kfree(buf);
put_dev:
	pci_dev_put(pdev);
	return ret;
}

static int __init qgpu_canary_init(void)
{
	int ret;

	pr_info("qgpu_canary: committing bug '%s'\n", bug);
	if (!strcmp(bug, "use-after-free"))
		ret = canary_use_after_free();
	else if (!strcmp(bug, "leak"))
		ret = canary_leak();
	else if (!strcmp(bug, "lock-inversion"))
		ret = canary_lock_inversion();
	else if (!strcmp(bug, "dma-wrong-size"))
		ret = canary_dma_wrong_size();
	else if (!strcmp(bug, "none"))
		ret = 0;
	else
		ret = -EINVAL;
	if (ret)
		pr_err("qgpu_canary: bug '%s' not committed: %d\n", bug, ret);
	return ret;
}

static void __exit qgpu_canary_exit(void)
{
}

module_init(qgpu_canary_init);
module_exit(qgpu_canary_exit);
MODULE_DESCRIPTION("qgpu test rig: kernel bugs on request, to prove the detectors");
MODULE_LICENSE("GPL");
