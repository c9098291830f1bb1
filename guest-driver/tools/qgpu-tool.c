// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu-tool: command-line access to /dev/qgpuN.
 *
 * Every command prints exactly one JSON object on one line on stdout:
 * {"ok":true,...} on success (exit 0), {"ok":false,"error":"...",
 * "errno":N} on failure (exit 1). Usage errors exit 2. Numbers accept
 * 0x prefixes and K/M/G suffixes. The device is -d PATH, $QGPU_DEV, or
 * /dev/qgpu0.
 *
 * Kernel fault injection (kernels with CONFIG_FAULT_INJECTION): with
 * QGPU_FAIL_NTH=N in the environment, the N-th fault point this process
 * reaches in the kernel fails (/proc/thread-self/fail-nth; which points
 * count -- failslab, fail_page_alloc, fail_function, and from which code --
 * is set in debugfs), and a second JSON line follows the result:
 * {"fail_nth_injected":true} if the kernel reached the N-th point, false
 * if the command reached fewer.
 */
#include <dirent.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <time.h>

#include "qgpu-lib.h"

static const char *dev;
static int fd = -1;

static void usage(void)
{
	fprintf(stderr,
"usage: qgpu-tool [-d /dev/qgpuN] [--read-only] COMMAND ARGS\n"
"  (--read-only: open the device O_RDONLY)\n"
"  info                               device and driver parameters\n"
"  stats                              driver statistics (sysfs)\n"
"  regs                               read the user register page via mmap\n"
"  fill OFF LEN PATTERN [--cpu]       DMA fill (or kernel CPU fill) of VRAM\n"
"  fill OFF LEN PATTERN --async [--wait MS]  submit without waiting; --wait\n"
"                                     then waits for its fence (0: forever)\n"
"  fill OFF LEN PATTERN --async --poll MS  submit, then poll(2) the device\n"
"                                     file for MS (-1: forever): readable once\n"
"                                     every job this file submitted is over\n"
"  poll MS                            poll(2) a newly opened device file\n"
"  wait-fence FENCE MS                wait for a fence (0: forever)\n"
"  fence-export FENCE [--merge F2] [--poll MS] [--close-device] [--hold MS]\n"
"                                     export a fence as a sync_file (merged\n"
"                                     with F2's), poll it for MS (default 0;\n"
"                                     the device file closed first with\n"
"                                     --close-device), report its status;\n"
"                                     keep it open MS more with --hold\n"
"  hold SECONDS [--dma-off OFF --dma-len LEN] [--keep-going] [--ready FILE]\n"
"                                     map VRAM (eager, lazy), regs, a BO,\n"
"                                     the BO and VRAM as dma-bufs (where\n"
"                                     supported),\n"
"                                     touch them (and DMA round trips) in a\n"
"                                     loop until SIGBUS, an ioctl error or\n"
"                                     SECONDS; report what happened\n"
"  copy-vram SRC DST LEN              DMA VRAM-to-VRAM copy\n"
"  dmabuf-copy to-vram|from-vram udmabuf|bo OFF LEN [PATTERN] [--importer DEV]\n"
"              [--ready FILE --go FILE] [--after-fence F] [--timeout-ns NS]\n"
"                                     DMA between VRAM (of DEV) and a dma-buf\n"
"                                     of a memfd or of a BO (filled with\n"
"                                     PATTERN for to-vram); checksum of the\n"
"                                     dma-buf's bytes afterwards; --ready:\n"
"                                     touch FILE once the dma-buf is made,\n"
"                                     copy once the --go FILE exists;\n"
"                                     --after-fence: fence F of the device\n"
"                                     writes the dma-buf first (its dma_resv)\n"
"  dmabuf-job VRAM_OFF LEN [--poll MS] [--writer-fence DEV:FENCE] [--leave]\n"
"                                     a BO exported as a dma-buf (with fence\n"
"                                     FENCE of DEV in it as a writer), then an\n"
"                                     asynchronous COPY_BO from VRAM into it:\n"
"                                     the dma-buf's write fences (its dma_resv)\n"
"                                     as a sync_file, a COPY_DMABUF from it that\n"
"                                     does not wait, poll(2) of the dma-buf for\n"
"                                     MS (default -1), its checksum afterwards;\n"
"                                     --leave: exit once the job is submitted\n"
"                                     (its BO reference is then the last)\n"
"  p2p-copy pull|push OFF LEN PEER_OFF --peer DEV [--bounce] [--hold-ready FILE\n"
"              --hold-go FILE]\n"
"                                     peer DEV reads (pull) or writes (push)\n"
"                                     the device's VRAM [OFF, +LEN) from or to\n"
"                                     its own at PEER_OFF, through a VRAM\n"
"                                     dma-buf (peer-to-peer); if the kernel\n"
"                                     refuses the path (or with --bounce),\n"
"                                     through a BO of the device (system\n"
"                                     memory); reports which path and why;\n"
"                                     --hold-*: handshake with the dma-buf\n"
"                                     exported, before the peer's copy\n"
"  userptr-copy to-vram|from-vram VRAM_OFF LEN PATTERN [--before P0]\n"
"              [--offset OFF] [--ready FILE --go FILE]\n"
"                                     register a user buffer (filled with P0,\n"
"                                     default ~PATTERN), fill it with PATTERN,\n"
"                                     DMA its bytes from OFF (default 0) to or\n"
"                                     from VRAM; checksums of that range and\n"
"                                     of the rest of the buffer afterwards;\n"
"                                     --ready: touch FILE once registered,\n"
"                                     copy once the --go FILE exists\n"
"  bo-create SIZE [--to-vram OFF]     create a BO, fill it through mmap (and\n"
"                                     DMA it into VRAM at OFF); checksum\n"
"  to-vram OFF FILE [--sg]            DMA a file (or - for stdin) into VRAM\n"
"  from-vram OFF LEN FILE [--sg]      DMA VRAM into a file (- for stdout)\n"
"  checksum OFF LEN [--via dma|cpu|mmap|lazy]   FNV-1a 64 of a VRAM range\n"
"  mmap-read OFF LEN [--lazy]         hex of VRAM bytes read through mmap\n"
"  mmap-write OFF LEN PATTERN [--lazy]  write a 32-bit pattern through mmap\n"
"  raise-irq                          raise and wait for the soft interrupt\n"
"  write-file PATH TEXT               write TEXT to PATH in one write(), e.g.\n"
"                                     a PCI address to a driver's bind file\n");
	exit(2);
}

static void fail(const char *what, int err)
{
	printf("{\"ok\":false,\"error\":\"%s: %s\",\"errno\":%d}\n", what,
	       strerror(err), err);
	exit(1);
}

static uint64_t num(const char *s)
{
	uint64_t v;

	if (qgpu_parse_u64(s, &v)) {
		fprintf(stderr, "qgpu-tool: bad number '%s'\n", s);
		exit(2);
	}
	return v;
}

static int has_opt(int argc, char **argv, const char *opt)
{
	for (int i = 0; i < argc; i++)
		if (!strcmp(argv[i], opt))
			return 1;
	return 0;
}

static const char *opt_val(int argc, char **argv, const char *opt,
			   const char *def)
{
	for (int i = 0; i + 1 < argc; i++)
		if (!strcmp(argv[i], opt))
			return argv[i + 1];
	return def;
}

/* Map VRAM [off, off + len); writable unless the device was opened read-only. */
static void *map_vram(uint64_t off, uint64_t len, int lazy, void **base,
		      size_t *maplen)
{
	uint64_t start = off & ~4095ULL;
	size_t l = (off - start) + len;
	int prot = (fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY ? PROT_READ :
			PROT_READ | PROT_WRITE;
	void *p = mmap(NULL, l, prot, MAP_SHARED, fd,
		       (lazy ? QGPU_MMAP_VRAM_LAZY : QGPU_MMAP_VRAM) + start);

	if (p == MAP_FAILED)
		fail("mmap", errno);
	*base = p;
	*maplen = l;
	return (char *)p + (off - start);
}

static void cmd_info(void)
{
	struct qgpu_info i = {0};
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_INFO, &i);

	if (ret)
		fail("QGPU_IOCTL_INFO", -ret);
	printf("{\"ok\":true,\"device\":\"%s\",\"version\":\"%u.%u\",\"caps\":%u,"
	       "\"vram_size\":%llu,\"irq_mode\":\"%s\",\"irq_vectors\":%u,"
	       "\"ring_entries\":%u,\"sg_max_entries\":%u,\"dma_mask_bits\":%u,"
	       "\"max_xfer\":%llu,\"bo_max_size\":%llu,\"pci\":\"%04x:%02x:%02x.%x\"}\n",
	       dev, i.version >> 16, i.version & 0xffff, i.caps,
	       (unsigned long long)i.vram_size, qgpu_irq_mode_name(i.irq_mode),
	       i.irq_vectors, i.ring_entries, i.sg_max_entries, i.dma_mask_bits,
	       (unsigned long long)i.max_xfer, (unsigned long long)i.bo_max_size,
	       i.pci_domain, (i.pci_bdf >> 8) & 0xff, (i.pci_bdf >> 3) & 0x1f,
	       i.pci_bdf & 7);
}

/* Every statistic the driver has in sysfs, by name. */
static int is_stat(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

static void cmd_stats(void)
{
	const char *name = strrchr(dev, '/');
	struct dirent **names;
	char dir[256];
	int i, n;

	snprintf(dir, sizeof(dir), "/sys/class/misc/%s/stats", name ? name + 1 : dev);
	n = scandir(dir, &names, is_stat, alphasort);
	if (n <= 0)
		fail("sysfs stats", n < 0 ? errno : ENOENT);
	printf("{\"ok\":true");
	for (i = 0; i < n; i++) {
		long long v = qgpu_stat(dev, names[i]->d_name);

		if (v >= 0)
			printf(",\"%s\":%lld", names[i]->d_name, v);
		free(names[i]);
	}
	free(names);
	printf("}\n");
}

static void cmd_regs(void)
{
	volatile uint32_t *r = mmap(NULL, QGPU_PAGE_SIZE, PROT_READ | PROT_WRITE,
				    MAP_SHARED, fd, QGPU_MMAP_REGS);
#define UREG(x) r[((x) - QGPU_REGS_USER_PAGE) / 4]
	if (r == MAP_FAILED)
		fail("mmap regs", errno);
	printf("{\"ok\":true,\"id\":%u,\"engine_status\":%u,\"fence\":%llu,"
	       "\"ring_head\":%u,\"scratch\":%u}\n",
	       UREG(QGPU_REG_USER_ID), UREG(QGPU_REG_USER_ENGINE_STATUS),
	       (unsigned long long)qgpu_user_fence(r),
	       UREG(QGPU_REG_USER_RING_HEAD), UREG(QGPU_REG_USER_SCRATCH));
#undef UREG
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * The host's handshake for a command held mid-way (--ready FILE --go FILE):
 * say we are ready, then wait, at most two minutes, for the go.
 */
static void handshake(const char *ready, const char *go)
{
	uint64_t t0;

	close(open(ready, O_WRONLY | O_CREAT, 0644));
	for (t0 = now_ms(); access(go, F_OK); usleep(10000))
		if (now_ms() - t0 > 120000)
			fail(go, ETIMEDOUT);
}

/* Wait for @fence; print the outcome as JSON. */
static void wait_report(uint64_t fence, uint64_t ms)
{
	struct qgpu_wait_fence w;
	uint64_t t0 = now_ms();
	int ret = qgpu_wait(fd, fence, ms ? ms * 1000000ULL : ~0ULL, &w);

	printf("{\"ok\":%s,\"fence\":%llu,\"errno\":%d,\"hw_status\":%u,"
	       "\"completed\":%llu,\"elapsed_ms\":%llu}\n", ret ? "false" : "true",
	       (unsigned long long)fence, -ret, w.hw_status,
	       (unsigned long long)w.completed,
	       (unsigned long long)(now_ms() - t0));
	exit(ret ? 1 : 0);
}

/*
 * Export argv[0] as a sync_file (merged with the sync_file of --merge F2)
 * and poll it: "ready" is poll(2)'s answer, "status" SYNC_IOC_FILE_INFO's
 * (1, 0, or the fence's -errno), "fences" how many it holds.
 */
static void cmd_fence_export(int argc, char **argv)
{
	uint64_t fence = num(argv[0]), t0;
	const char *merge = opt_val(argc, argv, "--merge", NULL);
	int timeout = num(opt_val(argc, argv, "--poll", "0"));
	uint64_t hold = num(opt_val(argc, argv, "--hold", "0"));
	struct sync_fence_info info[2] = { 0 };
	struct pollfd pfd = { .events = POLLIN };
	unsigned int count;
	int sfd, ready, status;

	sfd = qgpu_fence_export(fd, fence);
	if (sfd < 0)
		fail("fence-export", -sfd);
	if (merge) {
		struct sync_merge_data m = { .name = "qgpu-tool" };
		int other = qgpu_fence_export(fd, num(merge));

		if (other < 0)
			fail("fence-export --merge", -other);
		m.fd2 = other;
		if (ioctl(sfd, SYNC_IOC_MERGE, &m))
			fail("SYNC_IOC_MERGE", errno);
		close(other);
		close(sfd);
		sfd = m.fence;
	}
	if (has_opt(argc, argv, "--close-device")) {
		close(fd);
		fd = -1;
	}
	pfd.fd = sfd;
	t0 = now_ms();
	ready = poll(&pfd, 1, timeout);
	if (ready < 0)
		fail("poll", errno);
	if (qgpu_sync_file_info(sfd, &status, &count, info, 2))
		fail("SYNC_IOC_FILE_INFO", -status);
	printf("{\"ok\":true,\"fence\":%llu,\"fd\":%d,\"ready\":%s,\"revents\":%d,"
	       "\"status\":%d,\"fences\":%u,\"poll_ms\":%llu,\"driver\":",
	       (unsigned long long)fence, sfd, ready ? "true" : "false", pfd.revents,
	       status, count, (unsigned long long)(now_ms() - t0));
	qgpu_json_str(stdout, info[0].driver_name);
	printf(",\"timeline\":");
	qgpu_json_str(stdout, info[0].obj_name);
	printf(",\"fence_status\":%d}\n", info[0].status);
	fflush(stdout);
	if (hold)
		usleep(hold * 1000);
	close(sfd);
}

/*
 * poll(2) the device file for @ms (-1: forever) and report what it said,
 * and whether @fence (0: none) has completed by then.
 */
static void poll_report(uint64_t fence, int ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	uint64_t t0 = now_ms();
	int ready = poll(&pfd, 1, ms), done = -1;

	if (ready < 0)
		fail("poll", errno);
	if (fence) {
		struct qgpu_wait_fence w = { .fence = fence };
		int ret = qgpu_ioctl(fd, QGPU_IOCTL_WAIT_FENCE, &w);

		done = !ret || ret == -EIO;	/* timeout 0: -ETIMEDOUT if pending */
	}
	printf("{\"ok\":true,\"fence\":%llu,\"readable\":%s,\"revents\":%d,"
	       "\"hangup\":%s,\"fence_done\":%s,\"poll_ms\":%llu}\n",
	       (unsigned long long)fence, pfd.revents & POLLIN ? "true" : "false",
	       pfd.revents, pfd.revents & POLLHUP ? "true" : "false",
	       done < 0 ? "null" : done ? "true" : "false",
	       (unsigned long long)(now_ms() - t0));
}

/* Create a BO of argv[0] bytes, fill it, optionally copy it to VRAM. */
static void cmd_bo_create(int argc, char **argv)
{
	const char *to = opt_val(argc, argv, "--to-vram", NULL);
	struct qgpu_bo_create bc = { .size = num(argv[0]) };
	struct qgpu_bo_destroy bd = { 0 };
	struct qgpu_copy_bo cb = { .op = QGPU_OP_COPY_TO_VRAM };
	uint64_t sum;
	uint8_t *p;
	int ret;

	ret = qgpu_ioctl(fd, QGPU_IOCTL_BO_CREATE, &bc);
	if (ret)
		fail("BO create", -ret);
	p = mmap(NULL, bc.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		 bc.mmap_offset);
	if (p == MAP_FAILED)
		fail("BO mmap", errno);
	qgpu_pattern_fill(p, bc.size, 0x42420000u ^ (uint32_t)bc.size);
	sum = qgpu_fnv1a(QGPU_FNV_INIT, p, bc.size);
	if (to) {
		cb.handle = bc.handle;
		cb.vram_offset = num(to);
		cb.length = bc.size;
		ret = qgpu_ioctl(fd, QGPU_IOCTL_COPY_BO, &cb);
		if (ret)
			fail("BO copy", -ret);
	}
	munmap(p, bc.size);
	bd.handle = bc.handle;
	ret = qgpu_ioctl(fd, QGPU_IOCTL_BO_DESTROY, &bd);
	if (ret)
		fail("BO destroy", -ret);
	printf("{\"ok\":true,\"size\":%llu,\"handle\":%u,\"checksum\":\"0x%016llx\"}\n",
	       (unsigned long long)bc.size, bc.handle, (unsigned long long)sum);
}

/*
 * A BO of the device file @fd (@bc: its size in, its handle out), exported
 * as a writable dma-buf: its descriptor. Failures end the command.
 */
static int bo_dmabuf(struct qgpu_bo_create *bc)
{
	int dbuf, ret = qgpu_ioctl(fd, QGPU_IOCTL_BO_CREATE, bc);

	if (ret)
		fail("BO create", -ret);
	dbuf = qgpu_dmabuf_export(fd, bc->handle, QGPU_DMABUF_F_WRITE);
	if (dbuf < 0)
		fail("dma-buf export", -dbuf);
	return dbuf;
}

/*
 * A dma-buf of @len bytes to DMA with: "udmabuf" (a memfd), or "bo" (a BO
 * of the device file @fd, exported; its handle destroyed at once, so the
 * dma-buf alone holds it). Its memory mapped at *map.
 */
static int dmabuf_source(const char *kind, uint64_t len, void **map)
{
	struct qgpu_bo_create bc = { .size = len };
	struct qgpu_bo_destroy bd = { 0 };
	int dbuf, ret;

	if (!strcmp(kind, "udmabuf")) {
		dbuf = qgpu_udmabuf_new(len, map);
		if (dbuf < 0)
			fail("udmabuf", -dbuf);
		return dbuf;
	}
	if (strcmp(kind, "bo"))
		usage();
	dbuf = bo_dmabuf(&bc);
	bd.handle = bc.handle;
	ret = qgpu_ioctl(fd, QGPU_IOCTL_BO_DESTROY, &bd);
	if (ret)
		fail("BO destroy", -ret);
	*map = mmap(NULL, bc.size, PROT_READ | PROT_WRITE, MAP_SHARED, dbuf, 0);
	if (*map == MAP_FAILED)
		fail("dma-buf mmap", errno);
	return dbuf;
}

/*
 * dmabuf-copy to-vram|from-vram SOURCE OFF LEN [PATTERN] [--importer DEV]
 * [--ready FILE --go FILE]: DMA between a dma-buf of SOURCE (dmabuf_source(),
 * filled with PATTERN through its mapping for to-vram) and VRAM at OFF of
 * DEV (default: the device); report the checksum of the bytes the dma-buf
 * holds afterwards. With --ready, the dma-buf is made, the exporting
 * device's file closed (with another importer), FILE created, and the copy
 * waits until the --go file exists (the host removes a device meanwhile).
 * --after-fence F puts the device's fence F in the dma-buf's dma_resv as a
 * writer first; --timeout-ns is how long the copy waits for such fences
 * (default 1 s; 0: -EBUSY if pending).
 */
static void cmd_dmabuf_copy(int argc, char **argv)
{
	int to = !strcmp(argv[0], "to-vram");
	const char *importer = opt_val(argc, argv, "--importer", NULL);
	const char *ready = opt_val(argc, argv, "--ready", NULL);
	const char *go = opt_val(argc, argv, "--go", NULL);
	const char *after = opt_val(argc, argv, "--after-fence", NULL);
	uint64_t timeout_ns = num(opt_val(argc, argv, "--timeout-ns", "1000000000"));
	uint64_t off = num(argv[2]), len = num(argv[3]);
	struct qgpu_copy_dmabuf o;
	int dbuf, ifd = fd, ret, sync;
	char sum[24] = "null";
	void *map = NULL;

	if (!to && strcmp(argv[0], "from-vram"))
		usage();
	if ((to && (argc < 5 || argv[4][0] == '-')) || !ready != !go)
		usage();
	if (!len)
		fail("dmabuf-copy", EINVAL);
	dbuf = dmabuf_source(argv[1], (len + 4095) & ~4095ULL, &map);
	/*
	 * Through the dma-buf's mapping (a BO), the CPU's access is bracketed
	 * as the dma-buf protocol asks. A udmabuf's memory is used through
	 * its memfd's mapping, plain memory, which needs none: and its
	 * DMA_BUF_IOCTL_SYNC would do harm. Linux 6.12's udmabuf syncs a
	 * streaming mapping of its own (made at the first sync), so under
	 * swiotlb=force a sync after another device's DMA into the pages
	 * copies that mapping's stale bounce buffer over them.
	 */
	sync = !strcmp(argv[1], "bo");
	ret = sync ? qgpu_dmabuf_sync(dbuf, 0, DMA_BUF_SYNC_WRITE) : 0;
	if (ret)
		fail("DMA_BUF_IOCTL_SYNC", -ret);
	if (to)
		qgpu_pattern_fill(map, len, num(argv[4]));
	else
		memset(map, 0, len);
	ret = sync ? qgpu_dmabuf_sync(dbuf, 1, DMA_BUF_SYNC_WRITE) : 0;
	if (ret)
		fail("DMA_BUF_IOCTL_SYNC", -ret);
	if (importer) {
		ifd = qgpu_open(importer);
		if (ifd < 0)
			fail(importer, errno);
	}
	if (after) {
		/* The job of fence F writes the dma-buf, as far as its dma_resv knows. */
		struct dma_buf_import_sync_file is = { .flags = DMA_BUF_SYNC_WRITE };

		is.fd = qgpu_fence_export(fd, num(after));
		if (is.fd < 0)
			fail("fence-export", -is.fd);
		if (ioctl(dbuf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &is))
			fail("DMA_BUF_IOCTL_IMPORT_SYNC_FILE", errno);
		close(is.fd);
	}
	if (ready) {
		/* Held: the dma-buf exists, its BO's handle and file are gone. */
		if (fd != ifd) {
			close(fd);
			fd = -1;
		}
		handshake(ready, go);
	}
	ret = qgpu_copy_dmabuf(ifd, dbuf, to ? QGPU_OP_COPY_TO_VRAM : QGPU_OP_COPY_FROM_VRAM,
			       0, off, len, timeout_ns, &o);
	if (ret)
		fail("COPY_DMABUF", -ret);
	/* An exporter removed meanwhile: its memory is gone (SIGBUS), no checksum. */
	ret = sync ? qgpu_dmabuf_sync(dbuf, 0, DMA_BUF_SYNC_READ) : 0;
	if (ret && ret != -ENODEV)
		fail("DMA_BUF_IOCTL_SYNC", -ret);
	if (!ret)
		snprintf(sum, sizeof(sum), "\"0x%016llx\"",
			 (unsigned long long)qgpu_fnv1a(QGPU_FNV_INIT, map, len));
	printf("{\"ok\":true,\"source\":\"%s\",\"length\":%llu,\"fence\":%llu,"
	       "\"segments\":%u,\"checksum\":%s}\n", argv[1], (unsigned long long)len,
	       (unsigned long long)o.fence, o.nr_segments, sum);
}

/*
 * The bounce p2p-copy falls back to: a BO of the device (@fd) in system
 * memory, exported; for a pull the device copies its VRAM into the BO and
 * the peer (@pfd) copies the BO into its VRAM, for a push the other way.
 */
static int p2p_bounce(int pfd, int pull, uint64_t off, uint64_t len,
		      uint64_t peer_off, struct qgpu_copy_dmabuf *o)
{
	struct qgpu_bo_create bc = { .size = (len + 4095) & ~4095ULL };
	struct qgpu_copy_bo cb = { .length = len };
	int dbuf = bo_dmabuf(&bc), ret;

	cb.handle = bc.handle;
	cb.vram_offset = off;
	if (pull) {
		cb.op = QGPU_OP_COPY_FROM_VRAM;
		ret = qgpu_ioctl(fd, QGPU_IOCTL_COPY_BO, &cb);
		if (ret)
			fail("COPY_BO from VRAM", -ret);
		ret = qgpu_copy_dmabuf(pfd, dbuf, QGPU_OP_COPY_TO_VRAM, 0, peer_off,
				       len, 1000000000ULL, o);
	} else {
		ret = qgpu_copy_dmabuf(pfd, dbuf, QGPU_OP_COPY_FROM_VRAM, 0, peer_off,
				       len, 1000000000ULL, o);
		if (!ret) {
			cb.op = QGPU_OP_COPY_TO_VRAM;
			ret = qgpu_ioctl(fd, QGPU_IOCTL_COPY_BO, &cb);
			if (ret)
				fail("COPY_BO to VRAM", -ret);
		}
	}
	close(dbuf);
	return ret;
}

/*
 * p2p-copy pull|push OFF LEN PEER_OFF --peer DEV [--bounce]: the peer DEV
 * DMAs [OFF, OFF + LEN) of the device's VRAM into its own VRAM at PEER_OFF
 * (pull), or its own into the device's (push), through a dma-buf of the
 * pages of the device's VRAM that hold the range (QGPU_IOCTL_VRAM_EXPORT).
 * If the peer cannot attach it (-EOPNOTSUPP: no P2PDMA in the kernel, or
 * a topology it refuses; the kernel log says which), or with --bounce,
 * the bytes go through system memory instead (p2p_bounce()), as user space
 * on such a system must. Reported: "path" ("p2p" or "bounce"), why not
 * P2P ("p2p_errno"), the peer's SG entries and fence. --hold-ready FILE
 * --hold-go FILE: the dma-buf is exported and the device file closed, FILE
 * created, and the peer's copy waits for the --hold-go file (the host
 * removes the device meanwhile); no bounce then.
 */
static void cmd_p2p_copy(int argc, char **argv)
{
	int pull = !strcmp(argv[0], "pull");
	uint64_t off = num(argv[1]), len = num(argv[2]), peer_off = num(argv[3]);
	const char *peer = opt_val(argc, argv, "--peer", NULL);
	const char *ready = opt_val(argc, argv, "--hold-ready", NULL);
	const char *go = opt_val(argc, argv, "--hold-go", NULL);
	int bounce = has_opt(argc, argv, "--bounce");
	uint64_t start = off & ~4095ULL, end;
	struct qgpu_copy_dmabuf o = { 0 };
	int pfd, dbuf, ret, p2p_errno = 0;

	if ((!pull && strcmp(argv[0], "push")) || !peer || !ready != !go)
		usage();
	if (!len || off + len < off)
		fail("p2p-copy", EINVAL);
	end = (off + len + 4095) & ~4095ULL;
	pfd = qgpu_open(peer);
	if (pfd < 0)
		fail(peer, errno);
	if (!bounce) {
		dbuf = qgpu_vram_export(fd, start, end - start,
					pull ? 0 : QGPU_DMABUF_F_WRITE);
		if (dbuf < 0)
			fail("VRAM_EXPORT", -dbuf);
		if (ready) {
			close(fd);
			fd = -1;
			handshake(ready, go);
		}
		ret = qgpu_copy_dmabuf(pfd, dbuf, pull ? QGPU_OP_COPY_TO_VRAM :
					QGPU_OP_COPY_FROM_VRAM, off - start, peer_off,
				       len, 1000000000ULL, &o);
		close(dbuf);
		/* Held, the device file is closed: no bounce through it. */
		if (ret && (ret != -EOPNOTSUPP || ready))
			fail("COPY_DMABUF of the VRAM dma-buf", -ret);
		p2p_errno = -ret;
		bounce = ret != 0;
	}
	if (bounce) {
		ret = p2p_bounce(pfd, pull, off, len, peer_off, &o);
		if (ret)
			fail("COPY_DMABUF of the bounce BO", -ret);
	}
	printf("{\"ok\":true,\"path\":\"%s\",\"p2p_errno\":%d,\"why\":",
	       bounce ? "bounce" : "p2p", p2p_errno);
	qgpu_json_str(stdout, p2p_errno ? strerror(p2p_errno) :
			      bounce ? "--bounce" : "");
	printf(",\"length\":%llu,\"fence\":%llu,\"segments\":%u}\n",
	       (unsigned long long)len, (unsigned long long)o.fence, o.nr_segments);
	close(pfd);
}

/*
 * userptr-copy to-vram|from-vram VRAM_OFF LEN PATTERN [--before P0]
 * [--offset OFF]: a buffer of whole pages holding OFF + LEN bytes, filled
 * with P0 (default ~PATTERN) and registered, then filled with PATTERN by the
 * CPU: a write the device sees only through the copy's sync for the device.
 * Then one copy of [OFF, OFF + LEN) to or from VRAM at VRAM_OFF. Reported:
 * the checksum of that range (what the CPU sees of the device's write, for
 * from-vram) and of the rest of the buffer (PATTERN unless a sync wrote
 * over more than the copy's range). --ready FILE --go FILE: FILE is created
 * once the buffer is registered and filled, and the copy waits for the --go
 * file (the host removes the device meanwhile).
 */
static void cmd_userptr_copy(int argc, char **argv)
{
	int to = !strcmp(argv[0], "to-vram");
	uint64_t vram_off = num(argv[1]), len = num(argv[2]);
	uint32_t pattern = num(argv[3]);
	uint32_t before = num(opt_val(argc, argv, "--before", "0")) ?: ~pattern;
	uint64_t off = num(opt_val(argc, argv, "--offset", "0"));
	const char *ready = opt_val(argc, argv, "--ready", NULL);
	const char *go = opt_val(argc, argv, "--go", NULL);
	struct qgpu_userptr_register r;
	struct qgpu_copy_userptr o;
	uint64_t size, rest;
	uint8_t *buf;
	int ret;

	if ((!to && strcmp(argv[0], "from-vram")) || !ready != !go)
		usage();
	if (!len || off + len < off)
		fail("userptr-copy", EINVAL);
	size = (off + len + 4095) & ~4095ULL;
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		fail("mmap", errno);
	qgpu_pattern_fill(buf, size, before);
	ret = qgpu_userptr_register(fd, buf, size, to ? 0 : QGPU_USERPTR_F_WRITE, &r);
	if (ret)
		fail("USERPTR_REGISTER", -ret);
	qgpu_pattern_fill(buf, size, pattern);
	if (ready)
		handshake(ready, go);
	ret = qgpu_copy_userptr(fd, r.handle, to ? QGPU_OP_COPY_TO_VRAM : QGPU_OP_COPY_FROM_VRAM,
				off, vram_off, len, &o);
	if (ret)
		fail("COPY_USERPTR", -ret);
	/* The rest: the bytes before the range, then those after it. */
	rest = qgpu_fnv1a(qgpu_fnv1a(QGPU_FNV_INIT, buf, off), buf + off + len,
			  size - off - len);
	ret = qgpu_userptr_unregister(fd, r.handle);
	if (ret)
		fail("USERPTR_UNREGISTER", -ret);
	printf("{\"ok\":true,\"handle\":%u,\"buffer_segments\":%u,\"segments\":%u,"
	       "\"fence\":%llu,\"checksum\":\"0x%016llx\",\"rest_checksum\":\"0x%016llx\"}\n",
	       r.handle, r.nr_segments, o.nr_segments, (unsigned long long)o.fence,
	       (unsigned long long)qgpu_fnv1a(QGPU_FNV_INIT, buf + off, len),
	       (unsigned long long)rest);
	munmap(buf, size);
}

/*
 * dmabuf-job VRAM_OFF LEN [--poll MS]: implicit synchronisation of a BO's
 * dma-buf. A BO is exported, then written asynchronously by a COPY_BO from
 * VRAM_OFF (LEN bytes): the job's fence should be in the dma-buf's
 * dma_resv as a writer. Reported: that fence as a sync_file (driver,
 * status: 0 pending), what a COPY_DMABUF out of the dma-buf that does not
 * wait (timeout 0) said, whether poll(2) of the dma-buf became readable
 * (its writers done) within MS, and the checksum of the BO then.
 * --writer-fence DEV:FENCE puts FENCE of device DEV in the dma-buf's
 * dma_resv as a writer first: the COPY_BO must wait for it (copy_bo_ms).
 */
static void cmd_dmabuf_job(int argc, char **argv)
{
	uint64_t off = num(argv[0]), len = num(argv[1]), t0, copy_ms;
	int ms = atoi(opt_val(argc, argv, "--poll", "-1"));
	const char *writer = opt_val(argc, argv, "--writer-fence", NULL);
	struct qgpu_bo_create bc = { .size = len };
	struct qgpu_copy_bo cb = { .op = QGPU_OP_COPY_FROM_VRAM, .flags = QGPU_SUBMIT_F_ASYNC };
	struct dma_buf_export_sync_file es = { .flags = DMA_BUF_SYNC_READ, .fd = -1 };
	struct sync_fence_info info[1] = { 0 };
	struct pollfd pfd = { .events = POLLIN };
	int dbuf, ret, status = -1, ready, copy_now;
	unsigned int count = 0;
	uint8_t *map;

	if (!len)
		fail("dmabuf-job", EINVAL);
	dbuf = bo_dmabuf(&bc);
	if (writer) {
		struct dma_buf_import_sync_file is = { .flags = DMA_BUF_SYNC_WRITE };
		char path[256];
		const char *colon = strrchr(writer, ':');
		int wfd;

		if (!colon || colon - writer >= (long)sizeof(path))
			usage();
		snprintf(path, sizeof(path), "%.*s", (int)(colon - writer), writer);
		wfd = qgpu_open(path);
		if (wfd < 0)
			fail(path, errno);
		is.fd = qgpu_fence_export(wfd, num(colon + 1));
		if (is.fd < 0)
			fail("fence-export", -is.fd);
		if (ioctl(dbuf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &is))
			fail("DMA_BUF_IOCTL_IMPORT_SYNC_FILE", errno);
		close(is.fd);
		close(wfd);
	}
	cb.handle = bc.handle;
	cb.vram_offset = off;
	cb.length = len;
	t0 = now_ms();
	ret = qgpu_ioctl(fd, QGPU_IOCTL_COPY_BO, &cb);
	if (ret)
		fail("COPY_BO", -ret);
	copy_ms = now_ms() - t0;
	if (has_opt(argc, argv, "--leave")) {
		printf("{\"ok\":true,\"fence\":%llu,\"left\":true}\n",
		       (unsigned long long)cb.fence);
		return;
	}
	/* The writers a reader must wait for. */
	if (ioctl(dbuf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &es))
		fail("DMA_BUF_IOCTL_EXPORT_SYNC_FILE", errno);
	if (qgpu_sync_file_info(es.fd, &status, &count, info, 1))
		fail("SYNC_IOC_FILE_INFO", -status);
	copy_now = qgpu_copy_dmabuf(fd, dbuf, QGPU_OP_COPY_TO_VRAM, 0, off + len, len, 0, NULL);
	pfd.fd = dbuf;
	t0 = now_ms();
	ready = poll(&pfd, 1, ms);
	if (ready < 0)
		fail("poll", errno);
	map = mmap(NULL, bc.size, PROT_READ, MAP_SHARED, dbuf, 0);
	if (map == MAP_FAILED)
		fail("dma-buf mmap", errno);
	ret = qgpu_dmabuf_sync(dbuf, 0, DMA_BUF_SYNC_READ);
	if (ret)
		fail("DMA_BUF_IOCTL_SYNC", -ret);
	printf("{\"ok\":true,\"fence\":%llu,\"resv_fences\":%u,\"resv_status\":%d,"
	       "\"resv_driver\":", (unsigned long long)cb.fence, count, status);
	qgpu_json_str(stdout, count ? info[0].driver_name : "");
	printf(",\"copy_bo_ms\":%llu,\"copy_now_errno\":%d,\"readable\":%s,"
	       "\"poll_ms\":%llu,\"checksum\":\"0x%016llx\"}\n",
	       (unsigned long long)copy_ms, -copy_now, ready ? "true" : "false",
	       (unsigned long long)(now_ms() - t0),
	       (unsigned long long)qgpu_fnv1a(QGPU_FNV_INIT, map, len));
	qgpu_dmabuf_sync(dbuf, 1, DMA_BUF_SYNC_READ);
	close(es.fd);
}

/* ---- hold: mappings and DMA under fire ---------------------------------- */

static sigjmp_buf hold_jmp;

static void hold_on_sig(int sig)
{
	siglongjmp(hold_jmp, sig);
}

/*
 * Touch @p: read a byte (@how 0), read and rewrite it (1), or read 32 bits
 * (2: registers). Return 0, or the signal the access raised.
 */
static int probe_byte(volatile uint8_t *p, int how)
{
	int sig = sigsetjmp(hold_jmp, 1);

	if (!sig) {
		if (how == 2) {
			(void)*(volatile uint32_t *)p;
		} else {
			uint8_t v = *p;

			if (how)
				*p = v + 1;
		}
	}
	return sig;
}

static void cmd_hold(int argc, char **argv)
{
	static const char *const names[] = { "vram", "lazy", "regs", "bo", "dmabuf",
					     "vramdmabuf" };
	uint64_t secs = num(argv[0]), t0 = now_ms(), deadline;
	const char *doff = opt_val(argc, argv, "--dma-off", NULL);
	const char *dlen = opt_val(argc, argv, "--dma-len", NULL);
	const char *ready = opt_val(argc, argv, "--ready", NULL);
	int keep_going = has_opt(argc, argv, "--keep-going");
	uint64_t dma_off = doff ? num(doff) : 0, dma_len = dlen ? num(dlen) : 0;
	uint64_t iters = 0, dma_ok = 0, dma_err = 0;
	int first_errno = 0, last_errno = 0, regs_ones = 0, sig, i, ret;
	const char *event = "timeout", *where = "";
	struct qgpu_bo_create bc = { .size = 65536 };
	volatile uint8_t *maps[6];
	int nmaps = 6, dbuf;
	struct sigaction sa = { .sa_handler = hold_on_sig };
	char faulted[64] = "";
	uint8_t *out = NULL, *in = NULL;
	struct qgpu_info info = {0};

	maps[0] = mmap(NULL, 65536, PROT_READ, MAP_SHARED, fd, QGPU_MMAP_VRAM);
	maps[1] = mmap(NULL, 65536, PROT_READ, MAP_SHARED, fd, QGPU_MMAP_VRAM_LAZY);
	maps[2] = mmap(NULL, QGPU_PAGE_SIZE, PROT_READ, MAP_SHARED, fd, QGPU_MMAP_REGS);
	ret = qgpu_ioctl(fd, QGPU_IOCTL_BO_CREATE, &bc);
	if (ret)
		fail("BO create", -ret);
	maps[3] = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, bc.mmap_offset);
	/* The BO as a dma-buf too, held by its mapping alone. */
	dbuf = qgpu_dmabuf_export(fd, bc.handle, QGPU_DMABUF_F_WRITE);
	if (dbuf == -EOPNOTSUPP) {
		nmaps = 4;
	} else if (dbuf < 0) {
		fail("dma-buf export", -dbuf);
	} else {
		maps[4] = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, dbuf, 0);
		close(dbuf);
		/* And VRAM as a dma-buf (read-only), held by its mapping alone. */
		dbuf = qgpu_vram_export(fd, 0, 65536, 0);
		if (dbuf < 0)
			fail("VRAM export", -dbuf);
		maps[5] = mmap(NULL, 65536, PROT_READ, MAP_SHARED, dbuf, 0);
		close(dbuf);
	}
	for (i = 0; i < nmaps; i++)
		if (maps[i] == MAP_FAILED)
			fail(names[i], errno);
	if (dma_len) {
		out = malloc(dma_len);
		in = malloc(dma_len);
		if (!out || !in)
			fail("malloc", ENOMEM);
	}
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
	deadline = t0 + secs * 1000;
	while (now_ms() < deadline) {
		for (i = 0; i < nmaps; i++) {
			sig = probe_byte(maps[i] + (i == 2 ? 0 : 4096 * (iters % 16)),
					 i == 3 || i == 4 ? 1 : i == 2 ? 2 : 0);
			if (sig) {
				event = "sigbus";
				where = names[i];
				goto done;
			}
		}
		if (!probe_byte(maps[2], 2) && *(volatile uint32_t *)maps[2] == ~0U)
			regs_ones = 1;
		if (dma_len) {
			qgpu_pattern_fill(out, dma_len, 0x51470000u + (uint32_t)iters);
			ret = qgpu_copy_user(fd, QGPU_OP_COPY_TO_VRAM, 0, out, dma_off,
					     dma_len, NULL);
			if (!ret)
				ret = qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, 0, in,
						     dma_off, dma_len, NULL);
			if (!ret && memcmp(in, out, dma_len)) {
				event = "mismatch";
				goto done;
			}
			if (ret) {
				dma_err++;
				last_errno = -ret;
				if (!first_errno)
					first_errno = -ret;
				if (!keep_going || ret == -ENODEV) {
					event = "ioctl";
					where = "copy";
					goto done;
				}
			} else {
				dma_ok++;
			}
		}
		iters++;
		if (ready && iters == 1)
			close(open(ready, O_WRONLY | O_CREAT, 0644));
		if (!dma_len)
			usleep(5000);
	}
done:
	/*
	 * Which mappings fault now, and what an ioctl says. A device going
	 * away fails ioctls first and zaps mappings right after, one VMA after
	 * the other while this process runs on another CPU: after -ENODEV or
	 * a first SIGBUS, give the zap up to 3 s to reach every mapping.
	 */
	for (uint64_t until = now_ms() + (last_errno == ENODEV ||
					 !strcmp(event, "sigbus") ? 3000 : 0);;) {
		int n = 0;

		for (i = 0; i < nmaps; i++)
			n += !!probe_byte(maps[i], i == 2 ? 2 : 0);
		if (n == nmaps || now_ms() >= until)
			break;
		usleep(10000);
	}
	for (i = 0; i < nmaps; i++) {
		if (probe_byte(maps[i], i == 2 ? 2 : 0)) {
			strcat(faulted, faulted[0] ? ",\"" : "\"");
			strcat(faulted, names[i]);
			strcat(faulted, "\"");
		}
	}
	ret = qgpu_ioctl(fd, QGPU_IOCTL_INFO, &info);
	printf("{\"ok\":true,\"event\":\"%s\",\"where\":\"%s\",\"iterations\":%llu,"
	       "\"dma_ok\":%llu,\"dma_errors\":%llu,\"first_errno\":%d,"
	       "\"last_errno\":%d,\"regs_all_ones\":%s,\"sigbus\":[%s],"
	       "\"info_errno\":%d,\"elapsed_ms\":%llu}\n", event, where,
	       (unsigned long long)iters, (unsigned long long)dma_ok,
	       (unsigned long long)dma_err, first_errno, last_errno,
	       regs_ones ? "true" : "false", faulted, -ret,
	       (unsigned long long)(now_ms() - t0));
}

static void *read_all(const char *file, size_t *len)
{
	int f = strcmp(file, "-") ? open(file, O_RDONLY) : 0;
	size_t cap = 1 << 20, n = 0;
	char *buf = malloc(cap);
	ssize_t r;

	if (f < 0 || !buf)
		fail(file, errno);
	while ((r = read(f, buf + n, cap - n)) > 0) {
		n += r;
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				fail("realloc", ENOMEM);
		}
	}
	if (r < 0)
		fail(file, errno);
	*len = n;
	return buf;
}

static int fail_nth_fd = -1;

/* Report whether the armed fault was injected (the counter ran down to 0). */
static void fail_nth_report(void)
{
	char buf[32] = "";
	ssize_t n;

	fflush(stdout);
	/*
	 * The driver's release runs in this close(), so its fault points are
	 * counted before the report -- unless a mapping still holds the file
	 * (regs keeps its mapping until exit, for the tests that watch it):
	 * then release runs at exit, after this report.
	 */
	if (fd >= 0)
		close(fd);
	n = pread(fail_nth_fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0) {
		printf("{\"fail_nth_injected\":null,\"error\":\"reading fail-nth: %s\"}\n",
		       strerror(errno));
		return;
	}
	printf("{\"fail_nth_injected\":%s}\n", atoi(buf) == 0 ? "true" : "false");
}

static void fail_nth_arm(void)
{
	const char *nth = getenv("QGPU_FAIL_NTH");

	if (!nth)
		return;
	fail_nth_fd = open("/proc/thread-self/fail-nth", O_RDWR | O_CLOEXEC);
	if (fail_nth_fd < 0 || write(fail_nth_fd, nth, strlen(nth)) < 0) {
		fprintf(stderr, "qgpu-tool: QGPU_FAIL_NTH=%s: /proc/thread-self/fail-nth: %s "
			"(a kernel with CONFIG_FAULT_INJECTION?)\n", nth, strerror(errno));
		exit(2);
	}
	atexit(fail_nth_report);
}

static void cmd_write_file(const char *path, const char *text)
{
	int wfd = open(path, O_WRONLY | O_CLOEXEC);

	if (wfd < 0)
		fail(path, errno);
	if (write(wfd, text, strlen(text)) < 0)
		fail(path, errno);
	close(wfd);
	printf("{\"ok\":true}\n");
}

int main(int argc, char **argv)
{
	const char *cmd;
	int ret, read_only = 0;

	dev = qgpu_dev_path();
	for (;;) {
		if (argc > 2 && !strcmp(argv[1], "-d")) {
			dev = argv[2];
			argv += 2;
			argc -= 2;
		} else if (argc > 1 && !strcmp(argv[1], "--read-only")) {
			read_only = 1;
			argv++;
			argc--;
		} else {
			break;
		}
	}
	if (argc < 2)
		usage();
	cmd = argv[1];
	argc -= 2;
	argv += 2;
	if (!strcmp(cmd, "stats")) {
		cmd_stats();
		return 0;
	}
	fail_nth_arm();
	if (!strcmp(cmd, "write-file") && argc >= 2) {
		cmd_write_file(argv[0], argv[1]);
		return 0;
	}
	fd = read_only ? open(dev, O_RDONLY | O_CLOEXEC) : qgpu_open(dev);
	if (fd < 0)
		fail(dev, errno);

	if (!strcmp(cmd, "info")) {
		cmd_info();
	} else if (!strcmp(cmd, "regs")) {
		cmd_regs();
	} else if (!strcmp(cmd, "fill") && argc >= 3) {
		uint64_t off = num(argv[0]), len = num(argv[1]), fence = 0;
		uint32_t pat = num(argv[2]);
		int cpu = has_opt(argc, argv, "--cpu");
		int async = has_opt(argc, argv, "--async");
		const char *wait = opt_val(argc, argv, "--wait", NULL);
		const char *poll_ms = opt_val(argc, argv, "--poll", NULL);

		ret = cpu ? qgpu_cpu(fd, QGPU_CPU_FILL, off, len, pat, NULL) :
			    qgpu_fill(fd, off, len, pat,
				      async ? QGPU_SUBMIT_F_ASYNC : 0, &fence);
		if (ret)
			fail("fill", -ret);
		if (async && wait)
			wait_report(fence, num(wait));
		if (poll_ms) {
			poll_report(fence, atoi(poll_ms));
			return 0;
		}
		printf("{\"ok\":true,\"fence\":%llu}\n", (unsigned long long)fence);
	} else if (!strcmp(cmd, "poll") && argc >= 1) {
		poll_report(0, atoi(argv[0]));
	} else if (!strcmp(cmd, "wait-fence") && argc >= 2) {
		wait_report(num(argv[0]), num(argv[1]));
	} else if (!strcmp(cmd, "fence-export") && argc >= 1) {
		cmd_fence_export(argc, argv);
	} else if (!strcmp(cmd, "dmabuf-copy") && argc >= 4) {
		cmd_dmabuf_copy(argc, argv);
	} else if (!strcmp(cmd, "dmabuf-job") && argc >= 2) {
		cmd_dmabuf_job(argc, argv);
	} else if (!strcmp(cmd, "p2p-copy") && argc >= 4) {
		cmd_p2p_copy(argc, argv);
	} else if (!strcmp(cmd, "userptr-copy") && argc >= 4) {
		cmd_userptr_copy(argc, argv);
	} else if (!strcmp(cmd, "hold") && argc >= 1) {
		cmd_hold(argc, argv);
	} else if (!strcmp(cmd, "copy-vram") && argc >= 3) {
		struct qgpu_vram_op a = {
			.op = QGPU_OP_COPY_VRAM, .src_offset = num(argv[0]),
			.dst_offset = num(argv[1]), .length = num(argv[2]),
		};
		ret = qgpu_ioctl(fd, QGPU_IOCTL_VRAM_OP, &a);
		if (ret)
			fail("copy-vram", -ret);
		printf("{\"ok\":true,\"fence\":%llu}\n", (unsigned long long)a.fence);
	} else if (!strcmp(cmd, "bo-create") && argc >= 1) {
		cmd_bo_create(argc, argv);
	} else if (!strcmp(cmd, "to-vram") && argc >= 2) {
		struct qgpu_copy_user o;
		size_t len;
		void *buf = read_all(argv[1], &len);

		ret = qgpu_copy_user(fd, QGPU_OP_COPY_TO_VRAM,
				     has_opt(argc, argv, "--sg") ? QGPU_SUBMIT_F_FORCE_SG : 0,
				     buf, num(argv[0]), len, &o);
		if (ret)
			fail("copy to VRAM", -ret);
		printf("{\"ok\":true,\"length\":%zu,\"fence\":%llu,\"segments\":%u,"
		       "\"checksum\":\"0x%016llx\"}\n", len,
		       (unsigned long long)o.fence, o.nr_segments,
		       (unsigned long long)qgpu_fnv1a(QGPU_FNV_INIT, buf, len));
	} else if (!strcmp(cmd, "from-vram") && argc >= 3) {
		struct qgpu_copy_user o;
		uint64_t len = num(argv[1]);
		void *buf = malloc(len ? len : 1);
		int out;

		if (!buf)
			fail("malloc", ENOMEM);
		ret = qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM,
				     has_opt(argc, argv, "--sg") ? QGPU_SUBMIT_F_FORCE_SG : 0,
				     buf, num(argv[0]), len, &o);
		if (ret)
			fail("copy from VRAM", -ret);
		out = strcmp(argv[2], "-") ? open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644) : 1;
		if (out < 0 || write(out, buf, len) != (ssize_t)len)
			fail(argv[2], errno);
		if (out != 1)
			printf("{\"ok\":true,\"length\":%llu,\"fence\":%llu,\"segments\":%u,"
			       "\"checksum\":\"0x%016llx\"}\n", (unsigned long long)len,
			       (unsigned long long)o.fence, o.nr_segments,
			       (unsigned long long)qgpu_fnv1a(QGPU_FNV_INIT, buf, len));
	} else if (!strcmp(cmd, "checksum") && argc >= 2) {
		uint64_t off = num(argv[0]), len = num(argv[1]), sum = 0;
		const char *via = opt_val(argc, argv, "--via", "dma");

		if (!strcmp(via, "cpu")) {
			ret = qgpu_cpu(fd, QGPU_CPU_CHECKSUM, off, len, 0, &sum);
			if (ret)
				fail("cpu checksum", -ret);
		} else if (!strcmp(via, "dma")) {
			void *buf = malloc(len ? len : 1);

			if (!buf)
				fail("malloc", ENOMEM);
			ret = qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, 0, buf,
					     off, len, NULL);
			if (ret)
				fail("copy from VRAM", -ret);
			sum = qgpu_fnv1a(QGPU_FNV_INIT, buf, len);
		} else if (!strcmp(via, "mmap") || !strcmp(via, "lazy")) {
			void *base;
			size_t ml;
			void *p = map_vram(off, len, !strcmp(via, "lazy"), &base, &ml);
			void *tmp = qgpu_xmalloc(len);

			memcpy(tmp, p, len);
			sum = qgpu_fnv1a(QGPU_FNV_INIT, tmp, len);
			munmap(base, ml);
		} else {
			usage();
		}
		printf("{\"ok\":true,\"via\":\"%s\",\"offset\":%llu,\"length\":%llu,"
		       "\"checksum\":\"0x%016llx\"}\n", via, (unsigned long long)off,
		       (unsigned long long)len, (unsigned long long)sum);
	} else if (!strcmp(cmd, "mmap-read") && argc >= 2) {
		uint64_t off = num(argv[0]), len = num(argv[1]);
		void *base;
		size_t ml;
		uint8_t *p;

		if (len > 4096)
			fail("mmap-read: at most 4096 bytes", EINVAL);
		p = map_vram(off, len, has_opt(argc, argv, "--lazy"), &base, &ml);
		printf("{\"ok\":true,\"hex\":\"");
		for (uint64_t i = 0; i < len; i++)
			printf("%02x", p[i]);
		printf("\"}\n");
		munmap(base, ml);
	} else if (!strcmp(cmd, "mmap-write") && argc >= 3) {
		uint64_t off = num(argv[0]), len = num(argv[1]);
		uint32_t pat = num(argv[2]);
		void *base;
		size_t ml;
		void *p = map_vram(off, len, has_opt(argc, argv, "--lazy"), &base, &ml);

		qgpu_pattern_fill(p, len, pat);
		__sync_synchronize();
		munmap(base, ml);
		printf("{\"ok\":true}\n");
	} else if (!strcmp(cmd, "raise-irq")) {
		struct qgpu_raise_irq a = {0};

		ret = qgpu_ioctl(fd, QGPU_IOCTL_RAISE_IRQ, &a);
		if (ret)
			fail("raise-irq", -ret);
		printf("{\"ok\":true,\"irq_count\":%u}\n", a.irq_count);
	} else {
		usage();
	}
	return 0;
}
