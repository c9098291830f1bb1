// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu-test: in-guest tests of the qgpu driver.
 *
 *   qgpu-test [-d /dev/qgpuN] [--tap] [--list] [--destructive] [TEST...]
 *
 * Each test runs in its own child process with a timeout, so a crash
 * (SIGBUS, SIGSEGV) fails that test only. Output: one JSON line per test,
 *   {"test":"dma_copy_sizes","result":"pass|fail|skip","ms":12,"detail":"..."}
 * and a final {"summary":true,"pass":N,"fail":N,"skip":N}; with --tap,
 * TAP version 13 instead. Exit status 0 iff no test failed.
 *
 * --destructive adds tests that hot-remove the PCI device (rescanned after).
 */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "qgpu-lib.h"

static const char *dev;
static int fd = -1;
static struct qgpu_info info;
static char detail[512];
static int tap;

#define PASS 0
#define FAIL 1
#define SKIP 2

#define CHECK(cond, fmt, ...) do {					\
	if (!(cond)) {							\
		snprintf(detail, sizeof(detail), "line %d: " fmt, __LINE__, \
			 ##__VA_ARGS__);				\
		return FAIL;						\
	}								\
} while (0)

/* An ioctl or syscall result, as -errno, must equal @want. */
#define EXPECT_ERR(expr, want, what) do {				\
	int _r = (expr);						\
	CHECK(_r == (want), "%s: got %d (%s), want %d (%s)", what, _r,	\
	      strerror(-_r), (want), strerror(-(want)));		\
} while (0)

#define MMAP_ERR(len, prot, flags, off)					\
	(mmap(NULL, (len), (prot), (flags), fd, (off)) == MAP_FAILED ? -errno : 0)

static uint64_t rnd_state = 0x9e3779b97f4a7c15ULL;

static void rnd_fill(void *buf, size_t len)
{
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i++) {
		rnd_state ^= rnd_state << 13;
		rnd_state ^= rnd_state >> 7;
		rnd_state ^= rnd_state << 17;
		p[i] = (uint8_t)rnd_state;
	}
}

static long long stat_of(const char *name)
{
	return qgpu_stat(dev, name);
}

static void *xmap_vram(uint64_t off, size_t len, int lazy)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		       (lazy ? QGPU_MMAP_VRAM_LAZY : QGPU_MMAP_VRAM) + off);

	return p == MAP_FAILED ? NULL : p;
}

static uint64_t cpu_sum(uint64_t off, uint64_t len)
{
	uint64_t s = 0;

	if (qgpu_cpu(fd, QGPU_CPU_CHECKSUM, off, len, 0, &s))
		return 0;
	return s;
}

static int first_diff(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;

	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return (int)i;
	return -1;
}

/* ---- tests ----------------------------------------------------------------- */

static int t_info(void)
{
	CHECK(info.version >> 16 == QGPU_VERSION_MAJOR, "version %#x", info.version);
	CHECK((info.caps & (QGPU_CAP_DMA_COPY | QGPU_CAP_DMA_FILL | QGPU_CAP_SG |
			    QGPU_CAP_FENCE)) == (QGPU_CAP_DMA_COPY | QGPU_CAP_DMA_FILL |
						 QGPU_CAP_SG | QGPU_CAP_FENCE),
	      "caps %#x", info.caps);
	CHECK(info.vram_size >= QGPU_VRAM_SIZE_MIN &&
	      !(info.vram_size & (info.vram_size - 1)), "vram %llu",
	      (unsigned long long)info.vram_size);
	CHECK(info.irq_mode >= QGPU_IRQ_MODE_MSIX && info.irq_mode <= QGPU_IRQ_MODE_INTX,
	      "irq mode %u", info.irq_mode);
	CHECK(info.irq_vectors == (info.irq_mode == QGPU_IRQ_MODE_MSIX ?
				   QGPU_MSIX_VECTORS : 1), "vectors %u", info.irq_vectors);
	CHECK(stat_of("jobs") >= 0, "no sysfs stats");
	snprintf(detail, sizeof(detail), "irq=%s vram=%lluM dma=%ubit",
		 qgpu_irq_mode_name(info.irq_mode),
		 (unsigned long long)info.vram_size >> 20, info.dma_mask_bits);
	return PASS;
}

static int t_regs_mmap(void)
{
	long long before = stat_of("vma_regs");
	volatile uint32_t *r = mmap(NULL, QGPU_PAGE_SIZE, PROT_READ | PROT_WRITE,
				    MAP_SHARED, fd, QGPU_MMAP_REGS);
#define UREG(x) r[((x) - QGPU_REGS_USER_PAGE) / 4]

	CHECK(r != MAP_FAILED, "mmap regs: %s", strerror(errno));
	CHECK(stat_of("vma_regs") == before + 1, "vma_regs not counted");
	CHECK(UREG(QGPU_REG_USER_ID) == QGPU_ID_MAGIC, "USER_ID %#x",
	      UREG(QGPU_REG_USER_ID));
	CHECK(UREG(QGPU_REG_USER_ENGINE_STATUS) & QGPU_ENGINE_STATUS_ENABLED,
	      "engine not enabled: %#x", UREG(QGPU_REG_USER_ENGINE_STATUS));
	UREG(QGPU_REG_USER_SCRATCH) = 0x5a5aa5a5;
	CHECK(UREG(QGPU_REG_USER_SCRATCH) == 0x5a5aa5a5, "scratch %#x",
	      UREG(QGPU_REG_USER_SCRATCH));
	UREG(QGPU_REG_USER_SCRATCH) = 0;
	{
		uint64_t fence;
		struct qgpu_wait_fence w;
		uint64_t hw;

		CHECK(!qgpu_fill(fd, 0, 4096, 1, 0, &fence), "fill");
		CHECK(!qgpu_wait(fd, fence, 0, &w), "wait");
		hw = qgpu_user_fence(r);
		CHECK(hw >= fence, "user-page fence %llu < %llu",
		      (unsigned long long)hw, (unsigned long long)fence);
	}
	munmap((void *)r, QGPU_PAGE_SIZE);
	CHECK(stat_of("vma_regs") == before, "vma_regs not uncounted");
#undef UREG
	return PASS;
}

static int t_regs_mmap_bad(void)
{
	int rw = PROT_READ | PROT_WRITE;

	EXPECT_ERR(MMAP_ERR(2 * QGPU_PAGE_SIZE, rw, MAP_SHARED, QGPU_MMAP_REGS),
		   -EINVAL, "2-page regs map");
	EXPECT_ERR(MMAP_ERR(QGPU_PAGE_SIZE, rw, MAP_SHARED, QGPU_MMAP_REGS + 4096),
		   -EINVAL, "regs map beyond the user page");
	EXPECT_ERR(MMAP_ERR(QGPU_PAGE_SIZE, rw, MAP_PRIVATE, QGPU_MMAP_REGS),
		   -EINVAL, "MAP_PRIVATE regs");
	EXPECT_ERR(MMAP_ERR(QGPU_PAGE_SIZE, PROT_READ | PROT_EXEC, MAP_SHARED,
			    QGPU_MMAP_REGS), -EPERM, "PROT_EXEC regs");
	EXPECT_ERR(MMAP_ERR(QGPU_PAGE_SIZE, rw, MAP_SHARED, QGPU_MMAP_REGS + 1),
		   -EINVAL, "misaligned offset");
	return PASS;
}

/* A read-only open may map registers and VRAM for reading, never writing. */
static int t_readonly_fd(void)
{
	size_t len = 4096;
	uint64_t off = 6 << 20;
	int ro = open(dev, O_RDONLY | O_CLOEXEC);
	volatile uint32_t *r;
	uint8_t *v, *w;

	CHECK(ro >= 0, "open %s read-only: %s", dev, strerror(errno));
	r = mmap(NULL, QGPU_PAGE_SIZE, PROT_READ, MAP_SHARED, ro, QGPU_MMAP_REGS);
	CHECK(r != MAP_FAILED, "read-only regs map: %s", strerror(errno));
	CHECK(r[(QGPU_REG_USER_ID - QGPU_REGS_USER_PAGE) / 4] == QGPU_ID_MAGIC,
	      "USER_ID through a read-only map");
	munmap((void *)r, QGPU_PAGE_SIZE);

	w = xmap_vram(off, len, 0);
	CHECK(w, "read-write VRAM map: %s", strerror(errno));
	rnd_fill(w, len);
	__sync_synchronize();
	v = mmap(NULL, len, PROT_READ, MAP_SHARED, ro, QGPU_MMAP_VRAM_LAZY + off);
	CHECK(v != MAP_FAILED, "read-only lazy VRAM map: %s", strerror(errno));
	CHECK(first_diff(v, w, len) < 0, "read-only view differs at %d",
	      first_diff(v, w, len));
	munmap(v, len);
	munmap(w, len);

	CHECK(mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, ro,
		   QGPU_MMAP_VRAM + off) == MAP_FAILED && errno == EACCES,
	      "writable map of a read-only fd: want EACCES, got %s",
	      strerror(errno));
	CHECK(mmap(NULL, len, PROT_READ, MAP_PRIVATE, ro, QGPU_MMAP_VRAM + off) ==
	      MAP_FAILED && errno == EINVAL,
	      "MAP_PRIVATE of a read-only fd: want EINVAL, got %s", strerror(errno));
	close(ro);
	return PASS;
}

static int t_vram_mmap_wc(void)
{
	size_t len = 1 << 20;
	uint64_t off = 2 << 20;
	uint8_t *v = xmap_vram(0, info.vram_size, 0);
	uint8_t *src = qgpu_xmalloc(len), *dst = qgpu_xmalloc(len);

	CHECK(v, "mmap VRAM: %s", strerror(errno));
	rnd_fill(src, len);
	memcpy(v + off, src, len);
	__sync_synchronize();
	CHECK(cpu_sum(off, len) == qgpu_fnv1a(QGPU_FNV_INIT, src, len),
	      "kernel checksum differs from user data written through WC mmap");
	CHECK(!qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, 0, dst, off, len, NULL),
	      "dma from VRAM");
	CHECK(first_diff(src, dst, len) < 0, "DMA readback differs at %d",
	      first_diff(src, dst, len));
	/* DMA fill, read through the mapping. */
	CHECK(!qgpu_fill(fd, off, len, 0xa1b2c3d4, 0, NULL), "fill");
	qgpu_pattern_fill(src, len, 0xa1b2c3d4);
	CHECK(first_diff(src, v + off, len) < 0, "fill seen through mmap differs at %d",
	      first_diff(src, v + off, len));
	/* Last page of VRAM is reachable. */
	v[info.vram_size - 1] = 0x77;
	__sync_synchronize();
	CHECK(cpu_sum(info.vram_size - 1, 1) == qgpu_fnv1a(QGPU_FNV_INIT, "\x77", 1),
	      "last byte");
	munmap(v, info.vram_size);
	return PASS;
}

static int t_vram_mmap_lazy(void)
{
	size_t npages = 16, len = npages * 4096;
	uint64_t off = 4 << 20;
	long long faults = stat_of("lazy_faults"), vmas = stat_of("vma_vram_lazy");
	uint8_t *wc = xmap_vram(off, len, 0);
	uint8_t *lz = xmap_vram(off, len, 1);
	uint8_t *ref = qgpu_xmalloc(len);

	CHECK(wc && lz, "mmap: %s", strerror(errno));
	CHECK(stat_of("vma_vram_lazy") == vmas + 1, "vma_vram_lazy");
	CHECK(stat_of("lazy_faults") == faults, "faulted before touch");
	rnd_fill(ref, len);
	memcpy(wc, ref, len);
	__sync_synchronize();
	CHECK(lz[0] == ref[0] && lz[5 * 4096 + 7] == ref[5 * 4096 + 7] &&
	      lz[15 * 4096 + 4095] == ref[15 * 4096 + 4095], "lazy data");
	CHECK(stat_of("lazy_faults") == faults + 3, "lazy_faults %lld, want %lld",
	      stat_of("lazy_faults"), faults + 3);
	CHECK(first_diff(lz, ref, len) < 0, "lazy view differs at %d",
	      first_diff(lz, ref, len));
	CHECK(stat_of("lazy_faults") == faults + (long long)npages, "one fault per page");
	lz[100] = 0x42;
	__sync_synchronize();
	CHECK(wc[100] == 0x42, "write through lazy map not visible");
	munmap(lz, len);
	munmap(wc, len);
	CHECK(stat_of("vma_vram_lazy") == vmas, "vma_vram_lazy after munmap");
	return PASS;
}

static int t_vram_mmap_bad(void)
{
	int rw = PROT_READ | PROT_WRITE;
	uint64_t vs = info.vram_size;
	void *p, *q;

	EXPECT_ERR(MMAP_ERR(4096, rw, MAP_SHARED, vs), -EINVAL, "offset = VRAM size");
	EXPECT_ERR(MMAP_ERR(8192, rw, MAP_SHARED, vs - 4096), -EINVAL, "straddles end");
	EXPECT_ERR(MMAP_ERR(vs + 4096, rw, MAP_SHARED, 0), -EINVAL, "oversized");
	EXPECT_ERR(MMAP_ERR(4096, rw, MAP_PRIVATE, 0), -EINVAL, "MAP_PRIVATE VRAM");
	EXPECT_ERR(MMAP_ERR(4096, rw, MAP_PRIVATE, QGPU_MMAP_VRAM_LAZY), -EINVAL,
		   "MAP_PRIVATE lazy");
	EXPECT_ERR(MMAP_ERR(8192, rw, MAP_SHARED, QGPU_MMAP_VRAM_LAZY + vs - 4096),
		   -EINVAL, "lazy straddles end");
	EXPECT_ERR(MMAP_ERR(4096, rw, MAP_SHARED, QGPU_MMAP_REGS + 4096), -EINVAL,
		   "hole offset");
	EXPECT_ERR(MMAP_ERR(4096, rw, MAP_SHARED, 4ULL << 40), -EINVAL,
		   "past the BO offsets");
	EXPECT_ERR(MMAP_ERR(4096, rw, MAP_SHARED, QGPU_MMAP_BO_BASE), -EINVAL,
		   "BO handle 0");
	EXPECT_ERR(MMAP_ERR(4096, rw, MAP_SHARED,
			    QGPU_MMAP_BO_BASE + (77ULL << QGPU_MMAP_BO_SHIFT)),
		   -EINVAL, "unknown BO");
	/* The mmap core refuses offset + length overflows itself. */
	CHECK(MMAP_ERR(4096, rw, MAP_SHARED, 0xfffffffffffff000ULL) == -EOVERFLOW ||
	      MMAP_ERR(4096, rw, MAP_SHARED, 0xfffffffffffff000ULL) == -EINVAL,
	      "huge offset");
	EXPECT_ERR(MMAP_ERR(8192, rw, MAP_SHARED, (1ULL << 52) - 4096), -EINVAL,
		   "offset beyond every region");
	EXPECT_ERR(MMAP_ERR(4096, rw, MAP_SHARED, 123), -EINVAL, "misaligned offset");
	/* mremap: moving or growing is refused; the mapping stays usable. */
	p = xmap_vram(0, 8192, 0);
	CHECK(p, "mmap");
	q = mremap(p, 8192, 16384, MREMAP_MAYMOVE);
	CHECK(q == MAP_FAILED, "mremap grow succeeded");
	q = mmap(NULL, 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mremap(p, 8192, 8192, MREMAP_MAYMOVE | MREMAP_FIXED, q) == MAP_FAILED,
	      "mremap move succeeded");
	CHECK(errno == EINVAL, "mremap move errno %d", errno);
	((volatile uint8_t *)p)[0] = 1;
	munmap(p, 8192);
	munmap(q, 8192);
	return PASS;
}

static int t_vma_accounting(void)
{
	long long base = stat_of("vma_vram");
	uint8_t *p = xmap_vram(0, 4 * 4096, 0);
	int pipefd[2], go[2];
	pid_t pid;
	char c;
	int st;

	CHECK(p, "mmap");
	CHECK(stat_of("vma_vram") == base + 1, "after mmap: %lld", stat_of("vma_vram"));
	CHECK(!pipe(pipefd) && !pipe(go), "pipe");
	p[0] = 0x11;
	pid = fork();
	if (pid == 0) {
		/* The child sees the shared mapping and writes through it. */
		c = p[0] == 0x11 ? 'y' : 'n';
		p[1] = 0x22;
		if (write(pipefd[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(1);
		_exit(0);
	}
	CHECK(read(pipefd[0], &c, 1) == 1 && c == 'y', "child view");
	CHECK(stat_of("vma_vram") == base + 2, "with child: %lld", stat_of("vma_vram"));
	CHECK(p[1] == 0x22, "child write not visible");
	CHECK(write(go[1], "x", 1) == 1, "pipe");
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && !WEXITSTATUS(st), "child failed");
	CHECK(stat_of("vma_vram") == base + 1, "after child exit: %lld",
	      stat_of("vma_vram"));
	/* Punch a hole: one VMA becomes two. */
	CHECK(!munmap(p + 4096, 4096), "partial munmap");
	CHECK(stat_of("vma_vram") == base + 2, "after split: %lld", stat_of("vma_vram"));
	CHECK(p[0] == 0x11 && p[2 * 4096] == p[2 * 4096], "remaining pages");
	CHECK(!munmap(p + 3 * 4096, 4096), "tail munmap");
	CHECK(stat_of("vma_vram") == base + 2, "after trim: %lld", stat_of("vma_vram"));
	munmap(p, 4 * 4096);
	CHECK(stat_of("vma_vram") == base, "after munmap: %lld", stat_of("vma_vram"));
	return PASS;
}

/* Copy @len bytes at user misalignment @mis to VRAM @off and back; verify. */
static int roundtrip(uint64_t off, size_t len, size_t mis, uint32_t flags,
		     uint32_t *segs)
{
	uint8_t *a = qgpu_xaligned_alloc(4096, len + mis + 4096);
	uint8_t *b = qgpu_xaligned_alloc(4096, len + mis + 4096);
	struct qgpu_copy_user o;
	int ret, d;

	if (!a || !b) {
		snprintf(detail, sizeof(detail), "alloc %zu", len);
		return FAIL;
	}
	rnd_fill(a + mis, len);
	memset(b, 0xee, len + mis + 4096);
	ret = qgpu_copy_user(fd, QGPU_OP_COPY_TO_VRAM, flags, a + mis, off, len, &o);
	CHECK(!ret, "to VRAM len %zu mis %zu: %s (hw %u)", len, mis, strerror(-ret),
	      o.hw_status);
	if (segs)
		*segs = o.nr_segments;
	CHECK(cpu_sum(off, len) == qgpu_fnv1a(QGPU_FNV_INIT, a + mis, len),
	      "kernel checksum after to-VRAM len %zu mis %zu", len, mis);
	ret = qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, flags, b + mis, off, len, &o);
	CHECK(!ret, "from VRAM len %zu mis %zu: %s", len, mis, strerror(-ret));
	d = first_diff(a + mis, b + mis, len);
	CHECK(d < 0, "len %zu mis %zu: differs at %d", len, mis, d);
	CHECK(b[mis + len] == 0xee && (mis == 0 || b[mis - 1] == 0xee),
	      "len %zu mis %zu: wrote outside the buffer", len, mis);
	free(a);
	free(b);
	return PASS;
}

static int t_dma_copy_sizes(void)
{
	static const size_t sizes[] = { 1, 3, 64, 4095, 4096, 4097, 8192,
					65536 + 7, (1 << 20) + 123, 8 << 20 };
	static const size_t mis[] = { 0, 1, 4093 };
	long long single = stat_of("single_page_maps");

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		for (size_t j = 0; j < 3; j++) {
			uint64_t off = (i * 3 + j) * 4099 % (info.vram_size / 2);
			int r = roundtrip(off, sizes[i], mis[j], 0, NULL);

			if (r)
				return r;
		}
	CHECK(stat_of("single_page_maps") > single, "single-page path not used");
	CHECK(stat_of("pinned_pages") == 0, "pages left pinned: %lld",
	      stat_of("pinned_pages"));
	return PASS;
}

static int t_dma_force_sg(void)
{
	long long sgd = stat_of("sg_descriptors");
	uint32_t segs = 0;
	int r;

	r = roundtrip(12345, 100, 7, QGPU_SUBMIT_F_FORCE_SG, &segs);
	if (r)
		return r;
	CHECK(segs == 1, "1-page SG segments %u", segs);
	r = roundtrip(1 << 20, (3 << 20) + 5, 4000, QGPU_SUBMIT_F_FORCE_SG, &segs);
	if (r)
		return r;
	CHECK(stat_of("sg_descriptors") >= sgd + 2, "SG descriptors not used");
	snprintf(detail, sizeof(detail), "3MiB buffer -> %u segments", segs);
	return PASS;
}

static int set_param(const char *name, const char *val)
{
	char path[128];
	int f, ok;

	snprintf(path, sizeof(path), "/sys/module/qgpu/parameters/%s", name);
	f = open(path, O_WRONLY);
	ok = f >= 0 && write(f, val, strlen(val)) == (ssize_t)strlen(val);
	if (f >= 0)
		close(f);
	return ok ? 0 : -1;
}

static int chunk_sg_body(void)
{
	long long sgd = stat_of("sg_descriptors"), jobs = stat_of("jobs");
	uint32_t segs = 0;
	int r;

	/* 64 KiB chunks: chunk boundaries fall inside the buffer. */
	CHECK(!set_param("xfer_chunk_kb", "64"), "set xfer_chunk_kb");
	r = roundtrip(777, (1 << 20) + 4321, 1234, 0, &segs);
	if (r)
		return r;
	CHECK(stat_of("jobs") - jobs >= 2 * 17, "chunks: %lld jobs",
	      stat_of("jobs") - jobs);
	/* At most 2 SG entries per descriptor: multi-descriptor SG jobs. */
	CHECK(!set_param("xfer_chunk_kb", "4096"), "reset xfer_chunk_kb");
	CHECK(!set_param("sg_max_entries", "2"), "set sg_max_entries");
	sgd = stat_of("sg_descriptors");
	r = roundtrip(5 << 20, 300 * 1024 + 5, 99, QGPU_SUBMIT_F_FORCE_SG, &segs);
	if (r)
		return r;
	/* @segs is the download's count: ceil(segs / 2) plus the upload's. */
	CHECK(stat_of("sg_descriptors") - sgd >= (segs + 1) / 2 + 1,
	      "%u segments but %lld SG descriptors", segs,
	      stat_of("sg_descriptors") - sgd);
	snprintf(detail, sizeof(detail), "300K buffer: %u segments, %lld SG descriptors",
		 segs, stat_of("sg_descriptors") - sgd);
	return PASS;
}

static int t_dma_chunks_sg_split(void)
{
	int r = chunk_sg_body();

	set_param("xfer_chunk_kb", "4096");
	set_param("sg_max_entries", "0");
	return r;
}

static int t_dma_large(void)
{
	uint64_t len = info.max_xfer;
	uint32_t segs = 0;
	int r;

	if (len > info.vram_size)
		len = info.vram_size;
	if (len > 16 << 20)
		len = 16 << 20;
	r = roundtrip(0, len, 0, 0, &segs);
	if (r)
		return r;
	snprintf(detail, sizeof(detail), "%llu bytes in %u segments",
		 (unsigned long long)len, segs);
	return PASS;
}

static int t_dma_scattered(void)
{
	/* Every other page of a buffer: many discontiguous segments. */
	size_t n = 600, len = n * 4096;
	uint8_t *big = mmap(NULL, 2 * len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *ref = qgpu_xmalloc(len), *back = qgpu_xmalloc(len);
	struct qgpu_copy_user o;
	int ret;

	CHECK(big != MAP_FAILED, "mmap");
	/* Fault in reversed order to discourage physically contiguous pages. */
	for (size_t i = 2 * n; i-- > 0;)
		big[i * 4096] = 1;
	for (size_t i = 1; i < 2 * n; i += 2)
		munmap(big + i * 4096, 4096);
	/* Remap the holes so the range is a single (fragmented) buffer. */
	for (size_t i = 1; i < 2 * n; i += 2)
		CHECK(mmap(big + i * 4096, 4096, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED,
		      "remap");
	rnd_fill(big, 2 * len);
	ret = qgpu_copy_user(fd, QGPU_OP_COPY_TO_VRAM, 0, big, 0, 2 * len, &o);
	CHECK(!ret, "to VRAM: %s", strerror(-ret));
	CHECK(cpu_sum(0, 2 * len) == qgpu_fnv1a(QGPU_FNV_INIT, big, 2 * len), "sum");
	memset(big, 0, 2 * len);
	ret = qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, 0, big, 0, 2 * len, &o);
	CHECK(!ret, "from VRAM: %s", strerror(-ret));
	CHECK(cpu_sum(0, 2 * len) == qgpu_fnv1a(QGPU_FNV_INIT, big, 2 * len),
	      "readback");
	snprintf(detail, sizeof(detail), "%zu pages in %u segments", 2 * n,
		 o.nr_segments);
	free(ref);
	free(back);
	munmap(big, 2 * len);
	return PASS;
}

static int t_dma_readonly(void)
{
	size_t len = 3 * 4096;
	uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int ret;

	CHECK(p != MAP_FAILED, "mmap");
	rnd_fill(p, len);
	CHECK(!mprotect(p, len, PROT_READ), "mprotect");
	ret = qgpu_copy_user(fd, QGPU_OP_COPY_TO_VRAM, 0, p, 8192, len, NULL);
	CHECK(!ret, "read-only source: %s", strerror(-ret));
	CHECK(cpu_sum(8192, len) == qgpu_fnv1a(QGPU_FNV_INIT, p, len), "sum");
	EXPECT_ERR(qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, 0, p, 0, len, NULL),
		   -EFAULT, "read-only destination");
	EXPECT_ERR(qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, 0, p, 0, 10, NULL),
		   -EFAULT, "read-only destination, single page");
	CHECK(stat_of("pinned_pages") == 0, "pages left pinned");
	munmap(p, len);
	return PASS;
}

static int t_dma_bad_ptrs(void)
{
	uint8_t *v = xmap_vram(0, 8192, 0);
	uint8_t *gap = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	static const uint64_t kptrs[] = { 0xffff888000000000ULL,
					  0xffffffff81000000ULL,
					  0x00007ffffffff000ULL };
	int ops[2] = { QGPU_OP_COPY_TO_VRAM, QGPU_OP_COPY_FROM_VRAM };

	CHECK(v && gap != MAP_FAILED, "mmap");
	munmap(gap + 4096, 4096);
	for (int i = 0; i < 2; i++) {
		EXPECT_ERR(qgpu_copy_user(fd, ops[i], 0, NULL, 0, 16, NULL), -EFAULT,
			   "NULL");
		for (int k = 0; k < 3; k++)
			EXPECT_ERR(qgpu_copy_user(fd, ops[i], 0, (void *)(uintptr_t)kptrs[k],
						  0, 8192, NULL), -EFAULT, "kernel/unmapped ptr");
		EXPECT_ERR(qgpu_copy_user(fd, ops[i], 0, v, 65536, 4096, NULL), -EFAULT,
			   "VRAM mapping as user buffer");
		EXPECT_ERR(qgpu_copy_user(fd, ops[i], 0, gap, 0, 3 * 4096, NULL),
			   -EFAULT, "buffer with a hole");
	}
	CHECK(stat_of("pinned_pages") == 0, "pages left pinned: %lld",
	      stat_of("pinned_pages"));
	munmap(v, 8192);
	return PASS;
}

static int t_bad_args(void)
{
	uint8_t buf[64];
	struct qgpu_copy_user cu;
	struct qgpu_vram_op vo;
	struct qgpu_wait_fence wf;
	struct qgpu_info in;
	struct qgpu_cpu_access ca;
	struct qgpu_raise_irq ri;
	uint64_t vs = info.vram_size;

#define CU(...) (cu = (struct qgpu_copy_user){ .op = QGPU_OP_COPY_TO_VRAM,	\
		.user_ptr = (uintptr_t)buf, .length = 16, __VA_ARGS__ },		\
		qgpu_ioctl(fd, QGPU_IOCTL_COPY_USER, &cu))
	EXPECT_ERR(CU(.reserved[0] = 1), -EINVAL, "copy reserved[0]");
	EXPECT_ERR(CU(.reserved[1] = 1), -EINVAL, "copy reserved[1]");
	EXPECT_ERR(CU(.flags = 0x80), -EINVAL, "copy unknown flag");
	EXPECT_ERR(CU(.flags = QGPU_SUBMIT_F_ASYNC), -EINVAL, "copy async");
	EXPECT_ERR(CU(.op = QGPU_OP_FILL), -EINVAL, "copy bad op");
	EXPECT_ERR(CU(.op = 99), -EINVAL, "copy op 99");
	EXPECT_ERR(CU(.length = 0), -EINVAL, "copy zero length");
	EXPECT_ERR(CU(.length = info.max_xfer + 1), -E2BIG, "copy > max_xfer");
	EXPECT_ERR(CU(.length = ~0ULL), -E2BIG, "copy length ~0");
	EXPECT_ERR(CU(.vram_offset = vs), -EINVAL, "copy at VRAM end");
	EXPECT_ERR(CU(.vram_offset = vs - 8), -EINVAL, "copy across VRAM end");
	EXPECT_ERR(CU(.vram_offset = ~0ULL - 4), -EINVAL, "copy vram offset overflow");
	EXPECT_ERR(CU(.user_ptr = ~0ULL - 4), -EINVAL, "copy user ptr overflow");
#undef CU
#define VO(...) (vo = (struct qgpu_vram_op){ .op = QGPU_OP_FILL, .length = 64,	\
		__VA_ARGS__ }, qgpu_ioctl(fd, QGPU_IOCTL_VRAM_OP, &vo))
	EXPECT_ERR(VO(.reserved[1] = 1), -EINVAL, "vram_op reserved");
	/* @fence and @hw_status are outputs: what user space left there is ignored. */
	EXPECT_ERR(VO(.fence = 1, .hw_status = 1), 0, "vram_op output fields set");
	EXPECT_ERR(VO(.flags = 4), -EINVAL, "vram_op flag");
	EXPECT_ERR(VO(.op = QGPU_OP_NOP), -EINVAL, "vram_op NOP");
	EXPECT_ERR(VO(.src_offset = 4), -EINVAL, "fill with src");
	EXPECT_ERR(VO(.length = 0), -EINVAL, "fill zero length");
	EXPECT_ERR(VO(.dst_offset = vs - 32), -EINVAL, "fill across end");
	EXPECT_ERR(VO(.dst_offset = ~0ULL, .length = 2), -EINVAL, "fill overflow");
	EXPECT_ERR(VO(.op = QGPU_OP_COPY_VRAM, .pattern = 1), -EINVAL,
		   "copy_vram with pattern");
	EXPECT_ERR(VO(.op = QGPU_OP_COPY_VRAM, .src_offset = vs), -EINVAL,
		   "copy_vram src beyond");
	EXPECT_ERR(VO(.op = QGPU_OP_COPY_VRAM, .src_offset = ~0ULL - 10), -EINVAL,
		   "copy_vram src overflow");
#undef VO
	wf = (struct qgpu_wait_fence){ .fence = 1ULL << 60 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_WAIT_FENCE, &wf), -EINVAL,
		   "wait for a fence never handed out");
	wf = (struct qgpu_wait_fence){ .flags = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_WAIT_FENCE, &wf), -EINVAL, "wait flags");
	wf = (struct qgpu_wait_fence){ .reserved[0] = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_WAIT_FENCE, &wf), -EINVAL, "wait reserved");
	in = (struct qgpu_info){ .flags = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_INFO, &in), -EINVAL, "info flags");
	in = (struct qgpu_info){ .reserved[3] = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_INFO, &in), -EINVAL, "info reserved");
	ca = (struct qgpu_cpu_access){ .op = 7, .length = 4 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_CPU_ACCESS, &ca), -EINVAL, "cpu bad op");
	ca = (struct qgpu_cpu_access){ .op = QGPU_CPU_CHECKSUM, .length = 4,
				       .pattern = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_CPU_ACCESS, &ca), -EINVAL,
		   "cpu checksum with pattern");
	ca = (struct qgpu_cpu_access){ .op = QGPU_CPU_FILL, .vram_offset = vs,
				       .length = 4 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_CPU_ACCESS, &ca), -EINVAL, "cpu beyond");
	ri = (struct qgpu_raise_irq){ .flags = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_RAISE_IRQ, &ri), -EINVAL, "raise flags");
	/* Unknown numbers, wrong sizes and directions, other magic. */
	EXPECT_ERR(qgpu_ioctl(fd, _IOWR(QGPU_IOCTL_BASE, 0x40, struct qgpu_info), &in),
		   -ENOTTY, "unknown nr");
	EXPECT_ERR(qgpu_ioctl(fd, _IOWR(QGPU_IOCTL_BASE, 0x00, uint64_t), &in),
		   -ENOTTY, "INFO with wrong size");
	EXPECT_ERR(qgpu_ioctl(fd, _IOR(QGPU_IOCTL_BASE, 0x00, struct qgpu_info), &in),
		   -ENOTTY, "INFO with wrong direction");
	EXPECT_ERR(qgpu_ioctl(fd, _IOWR('X', 0x00, struct qgpu_info), &in),
		   -ENOTTY, "other magic");
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_INFO, (void *)0x10), -EFAULT,
		   "INFO bad pointer");
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_COPY_USER,
			      (void *)0xffff888000000000ULL), -EFAULT,
		   "COPY_USER kernel pointer arg");
	return PASS;
}

static int bo_create(int f, uint64_t size, struct qgpu_bo_create *bc)
{
	*bc = (struct qgpu_bo_create){ .size = size };
	return qgpu_ioctl(f, QGPU_IOCTL_BO_CREATE, bc);
}

static int bo_destroy(int f, uint32_t h)
{
	struct qgpu_bo_destroy d = { .handle = h };

	return qgpu_ioctl(f, QGPU_IOCTL_BO_DESTROY, &d);
}

static int bo_copy(int f, uint32_t op, uint32_t flags, uint32_t h, uint64_t bo_off,
		   uint64_t vram_off, uint64_t len, uint64_t *fence)
{
	struct qgpu_copy_bo c = { .op = op, .flags = flags, .handle = h,
				  .bo_offset = bo_off, .vram_offset = vram_off,
				  .length = len };
	int ret = qgpu_ioctl(f, QGPU_IOCTL_COPY_BO, &c);

	if (fence)
		*fence = c.fence;
	return ret;
}

static int t_bo_basic(void)
{
	struct qgpu_bo_create bc;
	long long bos = stat_of("bos"), vmas = stat_of("vma_bo");
	size_t size = 3 * 4096;
	uint8_t *p, *ref = qgpu_xmalloc(size);
	uint64_t fence;
	int ret;

	ret = bo_create(fd, 10000, &bc);
	CHECK(!ret, "create: %s", strerror(-ret));
	CHECK(bc.handle && bc.mmap_offset == QGPU_MMAP_BO_BASE +
	      ((uint64_t)bc.handle << QGPU_MMAP_BO_SHIFT), "handle/offset");
	CHECK(stat_of("bos") == bos + 1, "bos stat");
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, bc.mmap_offset);
	CHECK(p != MAP_FAILED, "mmap BO: %s", strerror(errno));
	CHECK(stat_of("vma_bo") == vmas + 1, "vma_bo stat");
	for (size_t i = 0; i < size; i++)
		CHECK(p[i] == 0, "BO not zeroed at %zu", i);
	rnd_fill(ref, size);
	memcpy(p, ref, size);
	ret = bo_copy(fd, QGPU_OP_COPY_TO_VRAM, 0, bc.handle, 0, 1 << 20, size, NULL);
	CHECK(!ret, "BO->VRAM: %s", strerror(-ret));
	CHECK(cpu_sum(1 << 20, size) == qgpu_fnv1a(QGPU_FNV_INIT, ref, size),
	      "VRAM after BO copy");
	/* Partial, unaligned copy back into the middle of the BO, async. */
	CHECK(!qgpu_fill(fd, 2 << 20, 5000, 0x01020304, 0, NULL), "fill");
	ret = bo_copy(fd, QGPU_OP_COPY_FROM_VRAM, QGPU_SUBMIT_F_ASYNC, bc.handle, 777,
		      2 << 20, 5000, &fence);
	CHECK(!ret, "VRAM->BO: %s", strerror(-ret));
	CHECK(!qgpu_wait(fd, fence, 5000000000ULL, NULL), "wait");
	qgpu_pattern_fill(ref + 777, 5000, 0x01020304);
	CHECK(first_diff(ref, p, size) < 0, "BO contents differ at %d",
	      first_diff(ref, p, size));
	/* A mapping of the second page only. */
	{
		uint8_t *q = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd,
				  bc.mmap_offset + 4096);

		CHECK(q != MAP_FAILED, "mmap BO page 1: %s", strerror(errno));
		CHECK(!memcmp(q, ref + 4096, 4096), "BO page 1 view");
		munmap(q, 4096);
	}
	EXPECT_ERR(bo_copy(fd, QGPU_OP_COPY_TO_VRAM, 0, bc.handle, 8192, 0, 4097, NULL),
		   -EINVAL, "copy beyond BO");
	EXPECT_ERR(bo_copy(fd, QGPU_OP_COPY_TO_VRAM, 0, bc.handle, ~0ULL, 0, 2, NULL),
		   -EINVAL, "BO offset overflow");
	EXPECT_ERR(MMAP_ERR(4 * 4096, PROT_READ, MAP_SHARED, bc.mmap_offset), -EINVAL,
		   "mmap larger than BO");
	EXPECT_ERR(MMAP_ERR(4096, PROT_READ, MAP_SHARED, bc.mmap_offset + 3 * 4096),
		   -EINVAL, "mmap past BO");
	EXPECT_ERR(MMAP_ERR(4096, PROT_READ, MAP_PRIVATE, bc.mmap_offset), -EINVAL,
		   "MAP_PRIVATE BO");
	munmap(p, size);
	CHECK(stat_of("vma_bo") == vmas, "vma_bo after munmap");
	CHECK(!bo_destroy(fd, bc.handle), "destroy");
	EXPECT_ERR(bo_destroy(fd, bc.handle), -ENOENT, "double destroy");
	EXPECT_ERR(bo_destroy(fd, 0), -ENOENT, "destroy handle 0");
	EXPECT_ERR(bo_destroy(fd, 12345), -ENOENT, "destroy unknown");
	EXPECT_ERR(bo_copy(fd, QGPU_OP_COPY_TO_VRAM, 0, bc.handle, 0, 0, 16, NULL),
		   -ENOENT, "copy with freed handle");
	EXPECT_ERR(MMAP_ERR(4096, PROT_READ, MAP_SHARED, bc.mmap_offset), -EINVAL,
		   "mmap freed BO");
	CHECK(stat_of("bos") == bos, "bos stat after destroy");
	return PASS;
}

static int t_bo_foreign(void)
{
	int fd2 = qgpu_open(dev);
	struct qgpu_bo_create bc;

	CHECK(fd2 >= 0, "open 2");
	CHECK(!bo_create(fd, 4096, &bc), "create");
	EXPECT_ERR(bo_copy(fd2, QGPU_OP_COPY_TO_VRAM, 0, bc.handle, 0, 0, 16, NULL),
		   -ENOENT, "foreign handle copy");
	EXPECT_ERR(bo_destroy(fd2, bc.handle), -ENOENT, "foreign handle destroy");
	EXPECT_ERR(mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd2, bc.mmap_offset) ==
		   MAP_FAILED ? -errno : 0, -EINVAL, "foreign handle mmap");
	CHECK(!bo_destroy(fd, bc.handle), "destroy by owner");
	close(fd2);
	return PASS;
}

static int t_bo_lifetime(void)
{
	struct qgpu_bo_create bc;
	long long bos = stat_of("bos");
	uint8_t *p;
	int fd2 = qgpu_open(dev);

	CHECK(fd2 >= 0, "open");
	CHECK(!bo_create(fd2, 8192, &bc), "create");
	p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd2, bc.mmap_offset);
	CHECK(p != MAP_FAILED, "mmap");
	CHECK(!bo_destroy(fd2, bc.handle), "destroy while mapped");
	close(fd2);
	/* Memory stays until the last mapping goes. */
	memset(p, 0x5c, 8192);
	CHECK(p[8191] == 0x5c, "mapping after destroy and close");
	CHECK(stat_of("bos") == bos + 1, "BO freed while mapped");
	munmap(p, 8192);
	CHECK(stat_of("bos") == bos, "BO not freed after munmap");
	/* Closing a file frees its objects. */
	fd2 = qgpu_open(dev);
	CHECK(!bo_create(fd2, 4096, &bc) && !bo_create(fd2, 4096, &bc), "create 2");
	CHECK(stat_of("bos") == bos + 2, "bos");
	close(fd2);
	CHECK(stat_of("bos") == bos, "close did not free objects");
	return PASS;
}

static int t_bo_bad(void)
{
	struct qgpu_bo_create bc;
	struct qgpu_bo_destroy bd;

	EXPECT_ERR(bo_create(fd, 0, &bc), -EINVAL, "size 0");
	EXPECT_ERR(bo_create(fd, info.bo_max_size + 1, &bc), -E2BIG, "too big");
	EXPECT_ERR(bo_create(fd, ~0ULL, &bc), -E2BIG, "size ~0");
	bc = (struct qgpu_bo_create){ .size = 4096, .flags = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_BO_CREATE, &bc), -EINVAL, "flags");
	bc = (struct qgpu_bo_create){ .size = 4096, .reserved[1] = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_BO_CREATE, &bc), -EINVAL, "reserved");
	bd = (struct qgpu_bo_destroy){ .handle = 1, .reserved[0] = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_BO_DESTROY, &bd), -EINVAL,
		   "destroy reserved");
	EXPECT_ERR(bo_copy(fd, QGPU_OP_COPY_TO_VRAM, 0, 999, 0, 0, 16, NULL), -ENOENT,
		   "copy unknown handle");
	return PASS;
}

static int t_fence(void)
{
	struct qgpu_wait_fence w;
	uint64_t f1, f2;

	CHECK(!qgpu_fill(fd, 0, 1 << 20, 0x11111111, QGPU_SUBMIT_F_ASYNC, &f1), "fill");
	CHECK(!qgpu_fill(fd, 1 << 20, 1 << 20, 0x22222222, QGPU_SUBMIT_F_ASYNC, &f2),
	      "fill");
	CHECK(f1 && f2 > f1, "fences %llu %llu", (unsigned long long)f1,
	      (unsigned long long)f2);
	CHECK(!qgpu_wait(fd, f2, 5000000000ULL, &w), "wait");
	CHECK(w.completed >= f2, "completed %llu", (unsigned long long)w.completed);
	CHECK(!qgpu_wait(fd, f1, 0, NULL), "older fence");
	CHECK(!qgpu_wait(fd, 0, 0, NULL), "fence 0");
	CHECK(cpu_sum(1 << 20, 4) == qgpu_fnv1a(QGPU_FNV_INIT, "\x22\x22\x22\x22", 4),
	      "fill result");
	return PASS;
}

/* Poll sync_file @sfd for @ms; 1 if readable (signalled), 0 if not, -errno. */
static int sync_file_poll(int sfd, int ms)
{
	struct pollfd pfd = { .fd = sfd, .events = POLLIN };
	int n = poll(&pfd, 1, ms);

	return n < 0 ? -errno : n > 0 && (pfd.revents & POLLIN);
}

/* Export @fence; SKIP (in the caller) on kernels without sync_file. */
#define EXPORT_OR_SKIP(sfd, dev_fd, fence) do {				\
	(sfd) = qgpu_fence_export((dev_fd), (fence));			\
	if ((sfd) == -EOPNOTSUPP) {					\
		snprintf(detail, sizeof(detail),			\
			 "kernel without CONFIG_SYNC_FILE");		\
		return SKIP;						\
	}								\
	CHECK((sfd) >= 0, "export fence %llu: %s",			\
	      (unsigned long long)(fence), strerror(-(sfd)));		\
} while (0)

static int t_fence_export(void)
{
	struct qgpu_fence_export a;
	struct sync_fence_info fi;
	const char *name = strrchr(dev, '/') ? strrchr(dev, '/') + 1 : dev;
	uint64_t f1, f2;
	unsigned int count;
	int s1, s2, s0, status, ro;

	CHECK(!qgpu_fill(fd, 0, 1 << 20, 0x11111111, QGPU_SUBMIT_F_ASYNC, &f1), "fill");
	CHECK(!qgpu_fill(fd, 1 << 20, 1 << 20, 0x22222222, QGPU_SUBMIT_F_ASYNC, &f2),
	      "fill");
	EXPORT_OR_SKIP(s2, fd, f2);
	CHECK(fcntl(s2, F_GETFD) & FD_CLOEXEC, "sync_file fd without FD_CLOEXEC");
	CHECK(sync_file_poll(s2, 10000) == 1, "fence %llu not signalled in 10 s",
	      (unsigned long long)f2);
	CHECK(!qgpu_sync_file_info(s2, &status, &count, &fi, 1), "FILE_INFO: %s",
	      strerror(-status));
	CHECK(status == 1 && count == 1 && fi.status == 1, "status %d, %u fences, "
	      "fence status %d", status, count, fi.status);
	CHECK(!strcmp(fi.driver_name, "qgpu") && !strcmp(fi.obj_name, name),
	      "driver %s, timeline %s (want qgpu, %s)", fi.driver_name, fi.obj_name, name);
	/* The job of f2 retired after f1's: f1 is signalled when exported. */
	EXPORT_OR_SKIP(s1, fd, f1);
	CHECK(sync_file_poll(s1, 0) == 1, "retired fence %llu not signalled",
	      (unsigned long long)f1);
	EXPORT_OR_SKIP(s0, fd, 0);
	CHECK(sync_file_poll(s0, 0) == 1, "fence 0 not signalled");
	CHECK(cpu_sum(1 << 20, 4) == qgpu_fnv1a(QGPU_FNV_INIT, "\x22\x22\x22\x22", 4),
	      "fill result");
	/* A read-only file may export too: it only looks. */
	ro = open(dev, O_RDONLY | O_CLOEXEC);
	CHECK(ro >= 0, "open read-only: %s", strerror(errno));
	close(s0);
	s0 = qgpu_fence_export(ro, f2);
	CHECK(s0 >= 0, "export from a read-only file: %s", strerror(-s0));
	close(s0);
	close(ro);
	/* Bad input. */
	EXPECT_ERR(qgpu_fence_export(fd, f2 + (1ULL << 40)), -EINVAL, "fence never handed out");
	a = (struct qgpu_fence_export){ .fence = f1, .flags = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_FENCE_EXPORT, &a), -EINVAL, "flags");
	a = (struct qgpu_fence_export){ .fence = f1, .reserved[1] = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_FENCE_EXPORT, &a), -EINVAL, "reserved");
	close(s1);
	close(s2);
	return PASS;
}

/*
 * A sync_file outlives the device file it came from, and merges with
 * another (SYNC_IOC_MERGE) into one that signals when both have: as both
 * fences are on the device's one context, the merge holds only the later.
 */
static int t_fence_export_outlives_the_file(void)
{
	struct sync_merge_data m = { .name = "qgpu-test" };
	struct sync_fence_info fi[2];
	struct sync_file_info si = { .num_fences = 2, .sync_fence_info = (uintptr_t)fi };
	int dfd = qgpu_open(dev), s1, s2;
	uint64_t f1, f2, q = info.vram_size / 4;

	CHECK(dfd >= 0, "open: %s", strerror(errno));
	CHECK(!qgpu_fill(dfd, 0, q, 0x33333333, QGPU_SUBMIT_F_ASYNC, &f1), "fill");
	CHECK(!qgpu_fill(dfd, q, q, 0x44444444, QGPU_SUBMIT_F_ASYNC, &f2), "fill");
	EXPORT_OR_SKIP(s1, dfd, f1);
	EXPORT_OR_SKIP(s2, dfd, f2);
	close(dfd);
	m.fd2 = s2;
	CHECK(!qgpu_ioctl(s1, SYNC_IOC_MERGE, &m), "SYNC_IOC_MERGE: %s", strerror(errno));
	close(s1);
	close(s2);
	CHECK(sync_file_poll(m.fence, 10000) == 1, "merged fence not signalled in 10 s");
	CHECK(!qgpu_ioctl(m.fence, SYNC_IOC_FILE_INFO, &si), "FILE_INFO: %s", strerror(errno));
	/*
	 * One context, seqno order: a merge keeps only the later fence (or,
	 * both signalled by then, the kernel's stub). The host holds the
	 * engine to see the first case every time (test_fence_export.py).
	 */
	CHECK(si.status == 1 && si.num_fences == 1 && fi[0].status == 1 &&
	      (!strcmp(fi[0].driver_name, "qgpu") || !strcmp(fi[0].driver_name, "stub")),
	      "merged: status %d, %u fences (want 1: both on one context), driver %s",
	      si.status, si.num_fences, fi[0].driver_name);
	snprintf(detail, sizeof(detail), "merged into %s's fence", fi[0].driver_name);
	close(m.fence);
	CHECK(cpu_sum(q - 4, 4) == qgpu_fnv1a(QGPU_FNV_INIT, "\x33\x33\x33\x33", 4) &&
	      cpu_sum(2 * q - 4, 4) == qgpu_fnv1a(QGPU_FNV_INIT, "\x44\x44\x44\x44", 4),
	      "fill results");
	return PASS;
}

/* ---- dma-bufs ------------------------------------------------------------- */

/* Export BO @handle of @f; SKIP (in the caller) on kernels without dma-buf. */
#define DMABUF_OR_SKIP(dbuf, f, handle, flags) do {			\
	(dbuf) = qgpu_dmabuf_export((f), (handle), (flags));		\
	if ((dbuf) == -EOPNOTSUPP) {					\
		snprintf(detail, sizeof(detail),			\
			 "kernel without CONFIG_DMA_SHARED_BUFFER");	\
		return SKIP;						\
	}								\
	CHECK((dbuf) >= 0, "export BO %u: %s", (handle), strerror(-(dbuf))); \
} while (0)

/* A BO as a dma-buf: one memory through either mapping; bad input refused. */
static int t_dmabuf_export(void)
{
	struct qgpu_dmabuf_export a;
	struct qgpu_bo_create bc;
	long long bufs = stat_of("dmabufs");
	size_t size = 4 * 4096;
	uint8_t *p, *q, *r, *ref = qgpu_xmalloc(size);
	int dbuf, rbuf;

	CHECK(!bo_create(fd, size, &bc), "create");
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, bc.mmap_offset);
	CHECK(p != MAP_FAILED, "mmap BO: %s", strerror(errno));
	rnd_fill(ref, size);
	memcpy(p, ref, size);
	DMABUF_OR_SKIP(dbuf, fd, bc.handle, QGPU_DMABUF_F_WRITE);
	CHECK(fcntl(dbuf, F_GETFD) & FD_CLOEXEC, "dma-buf fd without FD_CLOEXEC");
	CHECK(stat_of("dmabufs") == bufs + 1, "dmabufs stat %lld, want %lld",
	      stat_of("dmabufs"), bufs + 1);
	CHECK(lseek(dbuf, 0, SEEK_END) == (off_t)size, "dma-buf size %lld",
	      (long long)lseek(dbuf, 0, SEEK_END));
	q = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, dbuf, 0);
	CHECK(q != MAP_FAILED, "mmap dma-buf: %s", strerror(errno));
	CHECK(!qgpu_dmabuf_sync(dbuf, 0, DMA_BUF_SYNC_RW), "SYNC start");
	CHECK(!memcmp(q, ref, size), "dma-buf view differs at %d", first_diff(q, ref, size));
	q[5000] = 0xa5 ^ ref[5000];
	CHECK(!qgpu_dmabuf_sync(dbuf, 1, DMA_BUF_SYNC_RW), "SYNC end");
	CHECK((p[5000] ^ ref[5000]) == 0xa5, "a write through the dma-buf not in the BO");
	q[5000] = ref[5000];
	/* Part of it, from an offset; nothing past its end, nothing private. */
	r = mmap(NULL, 4096, PROT_READ, MAP_SHARED, dbuf, 2 * 4096);
	CHECK(r != MAP_FAILED, "mmap dma-buf page 2: %s", strerror(errno));
	CHECK(!memcmp(r, ref + 2 * 4096, 4096), "dma-buf page 2 view");
	munmap(r, 4096);
	r = mmap(NULL, 2 * 4096, PROT_READ, MAP_SHARED, dbuf, size - 4096);
	CHECK(r == MAP_FAILED && errno == EINVAL, "mapped past the end (%s)",
	      r == MAP_FAILED ? strerror(errno) : "ok");
	r = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, dbuf, 0);
	CHECK(r == MAP_FAILED && errno == EINVAL, "MAP_PRIVATE mapped (%s)",
	      r == MAP_FAILED ? strerror(errno) : "ok");
	/* Read-only: readable, not writable. */
	DMABUF_OR_SKIP(rbuf, fd, bc.handle, 0);
	r = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rbuf, 0);
	CHECK(r == MAP_FAILED && errno == EACCES, "read-only dma-buf mapped writable (%s)",
	      r == MAP_FAILED ? strerror(errno) : "ok");
	r = mmap(NULL, 4096, PROT_READ, MAP_SHARED, rbuf, 0);
	CHECK(r != MAP_FAILED && !memcmp(r, ref, 4096), "read-only dma-buf view");
	munmap(r, 4096);
	close(rbuf);
	/* Bad input. */
	EXPECT_ERR(qgpu_dmabuf_export(fd, 0xfff0, 0), -ENOENT, "unknown handle");
	EXPECT_ERR(qgpu_dmabuf_export(fd, 0, 0), -ENOENT, "handle 0");
	EXPECT_ERR(qgpu_dmabuf_export(fd, bc.handle, 2), -EINVAL, "flags");
	a = (struct qgpu_dmabuf_export){ .handle = bc.handle, .reserved0 = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_DMABUF_EXPORT, &a), -EINVAL, "reserved0");
	a = (struct qgpu_dmabuf_export){ .handle = bc.handle, .reserved[1] = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_DMABUF_EXPORT, &a), -EINVAL, "reserved");
	/* The mapping holds the dma-buf: released with the last of both. */
	close(dbuf);
	CHECK(stat_of("dmabufs") == bufs + 1, "dma-buf gone while mapped");
	munmap(q, size);
	CHECK(stat_of("dmabufs") == bufs, "dmabufs stat %lld after release, want %lld",
	      stat_of("dmabufs"), bufs);
	munmap(p, size);
	free(ref);
	return PASS;
}

/* The dma-buf keeps its BO after the handle is destroyed and the file closed. */
static int t_dmabuf_outlives_the_handle(void)
{
	struct qgpu_bo_destroy bd = { 0 };
	struct qgpu_bo_create bc;
	long long bos = stat_of("bos");
	size_t size = 16 * 4096;
	uint8_t *p, *ref = qgpu_xmalloc(size);
	int f2 = qgpu_open(dev), dbuf, ret;

	CHECK(f2 >= 0, "open: %s", strerror(errno));
	CHECK(!bo_create(f2, size, &bc), "create");
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, f2, bc.mmap_offset);
	CHECK(p != MAP_FAILED, "mmap BO: %s", strerror(errno));
	rnd_fill(ref, size);
	memcpy(p, ref, size);
	munmap(p, size);
	DMABUF_OR_SKIP(dbuf, f2, bc.handle, QGPU_DMABUF_F_WRITE);
	bd.handle = bc.handle;
	CHECK(!qgpu_ioctl(f2, QGPU_IOCTL_BO_DESTROY, &bd), "destroy");
	close(f2);
	CHECK(stat_of("bos") == bos + 1, "bos stat %lld: the BO went with its handle",
	      stat_of("bos"));
	p = mmap(NULL, size, PROT_READ, MAP_SHARED, dbuf, 0);
	CHECK(p != MAP_FAILED, "mmap dma-buf: %s", strerror(errno));
	CHECK(!memcmp(p, ref, size), "contents after the handle went");
	munmap(p, size);
	ret = qgpu_copy_dmabuf(fd, dbuf, QGPU_OP_COPY_TO_VRAM, 0, 3 << 20, size,
			       1000000000ULL, NULL);
	CHECK(!ret, "dma-buf -> VRAM: %s", strerror(-ret));
	CHECK(cpu_sum(3 << 20, size) == qgpu_fnv1a(QGPU_FNV_INIT, ref, size),
	      "VRAM after the copy");
	close(dbuf);
	CHECK(stat_of("bos") == bos, "bos stat %lld after the dma-buf, want %lld",
	      stat_of("bos"), bos);
	free(ref);
	return PASS;
}

/* COPY_DMABUF of the device's own BO, both ways, unaligned; bad input. */
static int t_dmabuf_import_self(void)
{
	struct qgpu_copy_dmabuf o, a;
	struct qgpu_bo_create bc;
	long long maps = stat_of("dmabuf_maps"), copies = stat_of("dmabuf_copies");
	size_t size = 3 * 4096;
	uint8_t *p, *ref = qgpu_xmalloc(size);
	int dbuf, rbuf, ro, ret;

	CHECK(!bo_create(fd, size, &bc), "create");
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, bc.mmap_offset);
	CHECK(p != MAP_FAILED, "mmap BO: %s", strerror(errno));
	DMABUF_OR_SKIP(dbuf, fd, bc.handle, QGPU_DMABUF_F_WRITE);
	/* VRAM into the middle of it. */
	memset(ref, 0, size);
	CHECK(!qgpu_fill(fd, 4 << 20, size, 0x5a5b5c5d, 0, NULL), "fill");
	ret = qgpu_copy_dmabuf(fd, dbuf, QGPU_OP_COPY_FROM_VRAM, 100, 4 << 20, 9000,
			       0, &o);
	CHECK(!ret, "VRAM -> dma-buf: %s", strerror(-ret));
	CHECK(o.fence && !o.hw_status && o.nr_segments >= 1, "fence %llu, status %u, "
	      "segments %u", (unsigned long long)o.fence, o.hw_status, o.nr_segments);
	qgpu_pattern_fill(ref + 100, 9000, 0x5a5b5c5d);
	CHECK(first_diff(p, ref, size) < 0, "BO differs at %d", first_diff(p, ref, size));
	/* Back into VRAM from an unaligned offset. */
	rnd_fill(ref, size);
	memcpy(p, ref, size);
	ret = qgpu_copy_dmabuf(fd, dbuf, QGPU_OP_COPY_TO_VRAM, 4096 + 7, 5 << 20, 5000,
			       0, &o);
	CHECK(!ret, "dma-buf -> VRAM: %s", strerror(-ret));
	CHECK(cpu_sum(5 << 20, 5000) == qgpu_fnv1a(QGPU_FNV_INIT, ref + 4096 + 7, 5000),
	      "VRAM after the copy");
	CHECK(stat_of("dmabuf_maps") == maps, "dmabuf_maps %lld, want %lld: a mapping "
	      "outlived its copy", stat_of("dmabuf_maps"), maps);
	CHECK(stat_of("dmabuf_copies") == copies + 2, "dmabuf_copies %lld, want %lld",
	      stat_of("dmabuf_copies"), copies + 2);
	snprintf(detail, sizeof(detail), "%u segment(s)", o.nr_segments);
	/* Bad input. */
#define COPY_ERR(dfd, op, off, voff, len, want, what)				\
	EXPECT_ERR(qgpu_copy_dmabuf(fd, (dfd), (op), (off), (voff), (len), 0, NULL), \
		   (want), (what))
	COPY_ERR(dbuf, QGPU_OP_COPY_TO_VRAM, 0, 0, 0, -EINVAL, "length 0");
	COPY_ERR(dbuf, QGPU_OP_COPY_TO_VRAM, 1, 0, size, -EINVAL, "past the dma-buf's end");
	COPY_ERR(dbuf, QGPU_OP_COPY_TO_VRAM, UINT64_MAX - 10, 0, 100, -EINVAL,
		 "offset + length overflows");
	COPY_ERR(dbuf, QGPU_OP_COPY_TO_VRAM, 0, info.vram_size - 10, 100, -EINVAL,
		 "past the end of VRAM");
	COPY_ERR(dbuf, QGPU_OP_COPY_TO_VRAM, 0, 0, info.max_xfer + 1, -E2BIG,
		 "longer than max_xfer");
	COPY_ERR(dbuf, QGPU_OP_COPY_VRAM, 0, 0, 100, -EINVAL, "op");
	COPY_ERR(fd, QGPU_OP_COPY_TO_VRAM, 0, 0, 100, -EINVAL, "not a dma-buf");
	COPY_ERR(-1, QGPU_OP_COPY_TO_VRAM, 0, 0, 100, -EBADF, "not a file");
	a = (struct qgpu_copy_dmabuf){ .fd = dbuf, .op = QGPU_OP_COPY_TO_VRAM,
				       .length = 100, .flags = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_COPY_DMABUF, &a), -EINVAL, "flags");
	a.flags = 0;
	a.reserved[0] = 1;
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_COPY_DMABUF, &a), -EINVAL, "reserved");
	DMABUF_OR_SKIP(rbuf, fd, bc.handle, 0);
	COPY_ERR(rbuf, QGPU_OP_COPY_FROM_VRAM, 0, 0, 100, -EBADF,
		 "into a read-only dma-buf");
	ro = open(dev, O_RDONLY | O_CLOEXEC);
	CHECK(ro >= 0, "open read-only: %s", strerror(errno));
	EXPECT_ERR(qgpu_copy_dmabuf(ro, dbuf, QGPU_OP_COPY_TO_VRAM, 0, 0, 100, 0, NULL),
		   -EBADF, "into VRAM from a read-only device file");
	EXPECT_ERR(qgpu_copy_dmabuf(ro, dbuf, QGPU_OP_COPY_FROM_VRAM, 0, 0, 100, 0, NULL),
		   0, "from VRAM with a read-only device file");
#undef COPY_ERR
	close(ro);
	close(rbuf);
	close(dbuf);
	munmap(p, size);
	free(ref);
	return PASS;
}

/* A dma-buf of another exporter: udmabuf over a memfd, both ways. */
static int t_dmabuf_import_udmabuf(void)
{
	struct qgpu_copy_dmabuf o;
	size_t size = 256 << 10;
	uint8_t *m, *ref = qgpu_xmalloc(size);
	void *map = NULL;
	int dbuf, ret;

	dbuf = qgpu_udmabuf_new(size, &map);
	if (dbuf == -ENOENT) {
		snprintf(detail, sizeof(detail), "no /dev/udmabuf (CONFIG_UDMABUF)");
		return SKIP;
	}
	CHECK(dbuf >= 0, "udmabuf: %s", strerror(-dbuf));
	m = map;
	rnd_fill(m, size);
	ret = qgpu_copy_dmabuf(fd, dbuf, QGPU_OP_COPY_TO_VRAM, 0, 6 << 20, size, 0, &o);
	CHECK(!ret, "udmabuf -> VRAM: %s", strerror(-ret));
	CHECK(cpu_sum(6 << 20, size) == qgpu_fnv1a(QGPU_FNV_INIT, m, size),
	      "VRAM after the copy");
	CHECK(!qgpu_fill(fd, 7 << 20, size, 0x600df00d, 0, NULL), "fill");
	memset(m, 0, size);
	ret = qgpu_copy_dmabuf(fd, dbuf, QGPU_OP_COPY_FROM_VRAM, 0, 7 << 20, size, 0, &o);
	CHECK(!ret, "VRAM -> udmabuf: %s", strerror(-ret));
	qgpu_pattern_fill(ref, size, 0x600df00d);
	CHECK(first_diff(m, ref, size) < 0, "memfd differs at %d", first_diff(m, ref, size));
	snprintf(detail, sizeof(detail), "%u segment(s)", o.nr_segments);
	close(dbuf);
	munmap(map, size);
	free(ref);
	return PASS;
}

/*
 * A job that writes an exported BO (COPY_BO, asynchronous) puts its fence in
 * the dma-buf's dma_resv as a writer: a reader's sync_file holds it (qgpu's
 * while pending), poll(2) of the dma-buf waits for it, and then the BO
 * holds what the job wrote.
 */
static int t_dmabuf_bo_job_fence(void)
{
	struct dma_buf_export_sync_file es = { .flags = DMA_BUF_SYNC_READ };
	struct qgpu_copy_bo cb = { .op = QGPU_OP_COPY_FROM_VRAM, .flags = QGPU_SUBMIT_F_ASYNC,
				   .vram_offset = 3 << 20, .length = 4096 };
	struct pollfd p = { .events = POLLIN };
	struct sync_fence_info fi[1];
	struct qgpu_bo_create bc;
	uint8_t *map, ref[4096];
	unsigned int count;
	int dbuf, status, n, pending;
	uint64_t fence = 0;

	CHECK(!bo_create(fd, 4096, &bc), "create");
	DMABUF_OR_SKIP(dbuf, fd, bc.handle, QGPU_DMABUF_F_WRITE);
	CHECK(!qgpu_fill(fd, 3 << 20, 4096, 0xb0b0f00d, 0, NULL), "fill");
	for (n = 0; n < 100; n++)
		CHECK(!qgpu_fill(fd, 4 << 20, info.vram_size - (4 << 20), 0x7100 + n,
				 QGPU_SUBMIT_F_ASYNC, &fence), "fill %d", n);
	cb.handle = bc.handle;
	CHECK(!qgpu_ioctl(fd, QGPU_IOCTL_COPY_BO, &cb), "COPY_BO: %s", strerror(errno));
	CHECK(!qgpu_ioctl(dbuf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &es),
	      "EXPORT_SYNC_FILE: %s", strerror(errno));
	CHECK(!qgpu_sync_file_info(es.fd, &status, &count, fi, 1), "SYNC_IOC_FILE_INFO");
	pending = status == 0;
	if (pending)
		CHECK(count == 1 && !strcmp(fi[0].driver_name, "qgpu"),
		      "a pending writer that is not the job: %u fence(s), driver %s", count,
		      fi[0].driver_name);
	p.fd = dbuf;
	CHECK(poll(&p, 1, 30000) == 1 && (p.revents & POLLIN), "poll of the dma-buf: %#x",
	      p.revents);
	CHECK(qgpu_sync_file_info(es.fd, &status, &count, fi, 1) == 0 && status == 1,
	      "the writer's sync_file after poll: status %d", status);
	map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, dbuf, 0);
	CHECK(map != MAP_FAILED, "mmap");
	CHECK(!qgpu_dmabuf_sync(dbuf, 0, DMA_BUF_SYNC_READ), "SYNC start");
	qgpu_pattern_fill(ref, sizeof(ref), 0xb0b0f00d);
	CHECK(first_diff(map, ref, sizeof(ref)) < 0, "the BO differs at %d",
	      first_diff(map, ref, sizeof(ref)));
	qgpu_dmabuf_sync(dbuf, 1, DMA_BUF_SYNC_READ);
	munmap(map, 4096);
	close(es.fd);
	close(dbuf);
	CHECK(!bo_destroy(fd, bc.handle), "destroy");
	snprintf(detail, sizeof(detail), "%s", pending ? "seen pending in the dma_resv" :
		 "the engine was done before the dma_resv was read");
	return PASS;
}

/*
 * The dma-buf's fences come first: a pending fence of the device, imported
 * into the dma-buf's dma_resv (DMA_BUF_IOCTL_IMPORT_SYNC_FILE), holds a copy
 * until it signals -- as a writer for both directions, as a reader only for
 * a copy into the dma-buf.
 */
static int t_dmabuf_resv_wait(void)
{
	struct dma_buf_import_sync_file is = { 0 };
	struct qgpu_bo_create bc;
	uint64_t fence = 0;
	int dbuf, sfd, ret, n;

	CHECK(!bo_create(fd, 4096, &bc), "create");
	DMABUF_OR_SKIP(dbuf, fd, bc.handle, QGPU_DMABUF_F_WRITE);
	for (int round = 0; round < 2; round++) {
		for (n = 0; n < 200; n++)
			CHECK(!qgpu_fill(fd, 0, info.vram_size, 0x7000 + n,
					 QGPU_SUBMIT_F_ASYNC, &fence), "fill %d", n);
		EXPORT_OR_SKIP(sfd, fd, fence);
		is.flags = round ? DMA_BUF_SYNC_READ : DMA_BUF_SYNC_WRITE;
		is.fd = sfd;
		CHECK(!qgpu_ioctl(dbuf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &is),
		      "IMPORT_SYNC_FILE: %s", strerror(errno));
		ret = qgpu_copy_dmabuf(fd, dbuf, round ? QGPU_OP_COPY_FROM_VRAM :
				       QGPU_OP_COPY_TO_VRAM, 0, 8 << 20, 4096, 0, NULL);
		if (!ret && sync_file_poll(sfd, 0) == 1) {
			/* Signalled before the copy looked: nothing to tell. */
			snprintf(detail, sizeof(detail), "engine too fast to test");
			return SKIP;
		}
		EXPECT_ERR(ret, -EBUSY, round ? "a writer with a reader pending, no wait" :
						"with a writer pending, no wait");
		ret = qgpu_copy_dmabuf(fd, dbuf, round ? QGPU_OP_COPY_FROM_VRAM :
				       QGPU_OP_COPY_TO_VRAM, 0, 8 << 20, 4096, 1000000, NULL);
		if (ret != -ETIME)
			CHECK(!ret && sync_file_poll(sfd, 0) == 1, "a wait of 1 ms: %s, "
			      "the fence %s", strerror(-ret),
			      sync_file_poll(sfd, 0) == 1 ? "signalled" : "pending");
		if (round && sync_file_poll(sfd, 0) == 0) {
			/* Readers do not wait for readers: no -EBUSY without a wait. */
			ret = qgpu_copy_dmabuf(fd, dbuf, QGPU_OP_COPY_TO_VRAM, 0, 8 << 20,
					       4096, 0, NULL);
			CHECK(!ret, "a reader, with only a reader pending: %s",
			      strerror(-ret));
		}
		ret = qgpu_copy_dmabuf(fd, dbuf, round ? QGPU_OP_COPY_FROM_VRAM :
				       QGPU_OP_COPY_TO_VRAM, 0, 8 << 20, 4096,
				       120000000000ULL, NULL);
		CHECK(!ret, "a long wait: %s", strerror(-ret));
		CHECK(sync_file_poll(sfd, 0) == 1, "the copy went ahead of the fence");
		close(sfd);
	}
	close(dbuf);
	return PASS;
}

static void on_alarm(int sig)
{
}

static int t_fence_timeout_signal(void)
{
	struct sigaction sa = { .sa_handler = on_alarm };
	uint64_t fence = 0, len = info.vram_size;
	struct itimerval it = { .it_value = { .tv_usec = 100000 } };
	struct timespec t0, t1;
	int n = 0, ret;

	/* Queue enough work to keep the engine busy for a while. */
	while (n < 200) {
		ret = qgpu_fill(fd, 0, len, 0x1000 + n, QGPU_SUBMIT_F_ASYNC, &fence);
		CHECK(!ret, "fill %d: %s", n, strerror(-ret));
		n++;
	}
	ret = qgpu_wait(fd, fence, 1000000, NULL);
	if (ret == 0) {
		snprintf(detail, sizeof(detail), "engine too fast to test timeouts");
		return SKIP;
	}
	EXPECT_ERR(ret, -ETIMEDOUT, "1 ms wait");
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = qgpu_wait(fd, fence, 60000000000ULL, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (ret == 0) {
		snprintf(detail, sizeof(detail), "finished before the signal");
		return SKIP;
	}
	EXPECT_ERR(ret, -EINTR, "interrupted wait");
	ret = qgpu_wait(fd, fence, 120000000000ULL, NULL);
	CHECK(!ret, "final wait: %s", strerror(-ret));
	{
		uint32_t last = 0x1000 + n - 1;

		CHECK(cpu_sum(len - 4, 4) == qgpu_fnv1a(QGPU_FNV_INIT, &last, 4),
		      "last fill did not win");
	}
	snprintf(detail, sizeof(detail), "%d fills; EINTR after %ld ms", n,
		 (long)((t1.tv_sec - t0.tv_sec) * 1000 +
			(t1.tv_nsec - t0.tv_nsec) / 1000000));
	return PASS;
}

static int t_vram_copy(void)
{
	size_t len = 100000;
	uint8_t *a = qgpu_xmalloc(len + 5000), *b = qgpu_xmalloc(len + 5000);
	struct qgpu_vram_op vo = { .op = QGPU_OP_COPY_VRAM, .src_offset = 3 << 20,
				   .dst_offset = (3 << 20) + 4321, .length = len };
	int ret;

	rnd_fill(a, len + 5000);
	CHECK(!qgpu_copy_user(fd, QGPU_OP_COPY_TO_VRAM, 0, a, 3 << 20, len + 5000,
			      NULL), "upload");
	ret = qgpu_ioctl(fd, QGPU_IOCTL_VRAM_OP, &vo);
	CHECK(!ret, "overlapping copy: %s", strerror(-ret));
	memmove(a + 4321, a, len);
	CHECK(!qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, 0, b, 3 << 20, len + 5000,
			      NULL), "download");
	CHECK(first_diff(a, b, len + 5000) < 0, "memmove semantics differ at %d",
	      first_diff(a, b, len + 5000));
	return PASS;
}

static int t_cpu_access(void)
{
	size_t len = 256 * 1024 + 3;
	uint8_t *v = xmap_vram(5 << 20, 512 * 1024, 0), *ref = qgpu_xmalloc(len);

	CHECK(v, "mmap");
	CHECK(!qgpu_cpu(fd, QGPU_CPU_FILL, (5 << 20) + 1, len, 0xcafef00d, NULL),
	      "cpu fill");
	qgpu_pattern_fill(ref, len, 0xcafef00d);
	CHECK(first_diff(v + 1, ref, len) < 0, "mmap view of kernel fill differs at %d",
	      first_diff(v + 1, ref, len));
	CHECK(cpu_sum((5 << 20) + 1, len) == qgpu_fnv1a(QGPU_FNV_INIT, ref, len),
	      "kernel checksum");
	munmap(v, 512 * 1024);
	return PASS;
}

static int t_soft_irq(void)
{
	struct qgpu_raise_irq a = {0};
	long long before = stat_of("irq_soft");
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_RAISE_IRQ, &a);

	CHECK(!ret, "raise: %s", strerror(-ret));
	CHECK(a.irq_count > before && stat_of("irq_soft") > before, "count");
	return PASS;
}

struct worker {
	int id, iters, fail;
	char why[128];
};

static void *worker_fn(void *arg)
{
	struct worker *w = arg;
	size_t len = 3000 + w->id * 1000;
	uint8_t *a = qgpu_xmalloc(len), *b = qgpu_xmalloc(len);
	uint64_t base = (8 << 20) + w->id * (1 << 20);

	for (int i = 0; i < w->iters && !w->fail; i++) {
		uint64_t off = base + (i * 4097) % (1 << 19);

		for (size_t k = 0; k < len; k++)
			a[k] = (uint8_t)(k * 7 + i + w->id);
		if (qgpu_copy_user(fd, QGPU_OP_COPY_TO_VRAM, 0, a, off, len, NULL) ||
		    qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, 0, b, off, len, NULL) ||
		    memcmp(a, b, len)) {
			snprintf(w->why, sizeof(w->why), "worker %d iter %d", w->id, i);
			w->fail = 1;
		}
	}
	return NULL;
}

static int t_ring_wrap_threads(void)
{
	struct worker w[3];
	pthread_t th[3];
	long long jobs = stat_of("jobs");

	for (int i = 0; i < 3; i++) {
		w[i] = (struct worker){ .id = i, .iters = 200 };
		pthread_create(&th[i], NULL, worker_fn, &w[i]);
	}
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < 3; i++)
		CHECK(!w[i].fail, "%s", w[i].why);
	CHECK(stat_of("jobs") - jobs >= 1200, "jobs %lld", stat_of("jobs") - jobs);
	CHECK(stat_of("pinned_pages") == 0, "pages left pinned");
	snprintf(detail, sizeof(detail), "1200 jobs over a %u-entry ring; "
		 "irq_dma=%lld poll_completions=%lld", info.ring_entries,
		 stat_of("irq_dma"), stat_of("poll_completions"));
	return PASS;
}

static int t_no_leaks(void)
{
	CHECK(stat_of("pinned_pages") == 0, "pinned_pages %lld", stat_of("pinned_pages"));
	CHECK(stat_of("vma_vram") == 0 && stat_of("vma_vram_lazy") == 0 &&
	      stat_of("vma_regs") == 0 && stat_of("vma_bo") == 0, "VMAs left");
	CHECK(stat_of("bos") == 0, "bos %lld", stat_of("bos"));
	CHECK(stat_of("userptrs") == 0 && stat_of("userptr_pages") == 0,
	      "userptrs %lld, userptr_pages %lld", stat_of("userptrs"),
	      stat_of("userptr_pages"));
	CHECK(stat_of("hw_errors") == 0, "hw_errors %lld (last %lld)",
	      stat_of("hw_errors"), stat_of("last_error"));
	CHECK(stat_of("timeouts") == 0, "timeouts %lld", stat_of("timeouts"));
	return PASS;
}

/*
 * poll(2) on the device file: readable at once with nothing in flight,
 * and once every job the file submitted is over -- whatever other files
 * have in flight.
 */
static int t_fence_poll_device_fd(void)
{
	struct pollfd p = { .events = POLLIN };
	struct qgpu_wait_fence w = { 0 };
	uint64_t fence = 0;
	int f = qgpu_open(dev), n, pending = 0;

	CHECK(f >= 0, "open");
	p.fd = f;
	CHECK(poll(&p, 1, 0) == 1 && p.revents == POLLIN, "a new file: revents %#x", p.revents);
	for (n = 0; n < 100; n++)
		CHECK(!qgpu_fill(f, 0, info.vram_size, 0x9000 + n, QGPU_SUBMIT_F_ASYNC, &fence),
		      "fill %d", n);
	/* Another file has nothing in flight. */
	p.fd = qgpu_open(dev);
	CHECK(p.fd >= 0, "open");
	n = poll(&p, 1, 0);
	close(p.fd);
	CHECK(n == 1 && p.revents == POLLIN, "another file: revents %#x", p.revents);
	p.fd = f;
	pending = poll(&p, 1, 0) == 0;
	CHECK(poll(&p, 1, 30000) == 1 && p.revents == POLLIN, "after the jobs: revents %#x",
	      p.revents);
	w.fence = fence;
	CHECK(!qgpu_ioctl(f, QGPU_IOCTL_WAIT_FENCE, &w), "readable, but fence %llu is not done",
	      (unsigned long long)fence);
	close(f);
	snprintf(detail, sizeof(detail), "%s", pending ? "seen pending, then readable" :
		 "the engine was done before the first poll");
	return PASS;
}

/* ---- user-pointer buffers ------------------------------------------------------ */

static void *anon_pages(size_t size, int prot)
{
	void *p = mmap(NULL, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* Every bad argument gets its errno; nothing stays registered or pinned. */
static int t_userptr_bad_args(void)
{
	struct qgpu_userptr_register r = { 0 };
	struct qgpu_copy_userptr c = { 0 };
	long long regs = stat_of("userptrs");
	size_t size = 4 * 4096;
	uint8_t *buf = anon_pages(size, PROT_READ | PROT_WRITE), *ro, *gone;

	CHECK(buf, "mmap");
	EXPECT_ERR(qgpu_userptr_register(fd, buf + 1, 4096, 0, NULL), -EINVAL, "unaligned address");
	EXPECT_ERR(qgpu_userptr_register(fd, buf, 100, 0, NULL), -EINVAL, "unaligned length");
	EXPECT_ERR(qgpu_userptr_register(fd, buf, 0, 0, NULL), -EINVAL, "zero length");
	EXPECT_ERR(qgpu_userptr_register(fd, buf, 4096, 2, NULL), -EINVAL, "unknown flag");
	EXPECT_ERR(qgpu_userptr_register(fd, (void *)(uintptr_t)-4096, 8192, 0, NULL), -EINVAL,
		   "address + length wraps");
	EXPECT_ERR(qgpu_userptr_register(fd, buf, QGPU_USERPTR_MAX_SIZE + 4096, 0, NULL),
		   -E2BIG, "longer than QGPU_USERPTR_MAX_SIZE");
	r.addr = (uintptr_t)buf;
	r.length = 4096;
	r.reserved[1] = 1;
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_USERPTR_REGISTER, &r), -EINVAL, "reserved");
	gone = anon_pages(size, PROT_READ | PROT_WRITE);
	CHECK(gone && !munmap(gone, size), "mmap, munmap");
	EXPECT_ERR(qgpu_userptr_register(fd, gone, size, 0, NULL), -EFAULT, "unmapped buffer");
	/* Pages of its own (not the shared zero page), then read-only. */
	ro = anon_pages(size, PROT_READ | PROT_WRITE);
	CHECK(ro, "mmap");
	memset(ro, 0x3c, size);
	CHECK(!mprotect(ro, size, PROT_READ), "mprotect");
	EXPECT_ERR(qgpu_userptr_register(fd, ro, size, QGPU_USERPTR_F_WRITE, NULL), -EFAULT,
		   "writable registration of a read-only mapping");
	CHECK(stat_of("userptrs") == regs, "userptrs %lld after failures, want %lld",
	      stat_of("userptrs"), regs);
	/*
	 * The handle cannot be written back (the argument is read-only):
	 * -EFAULT, and the registration is taken back.
	 */
	{
		struct qgpu_userptr_register *arg = anon_pages(4096, PROT_READ | PROT_WRITE);
		long long pin0 = qgpu_vm_pinned_kb();

		CHECK(arg, "mmap");
		arg->addr = (uintptr_t)buf;
		arg->length = size;
		CHECK(!mprotect(arg, 4096, PROT_READ), "mprotect");
		EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_USERPTR_REGISTER, arg), -EFAULT,
			   "register with a read-only argument");
		CHECK(stat_of("userptrs") == regs && qgpu_vm_pinned_kb() == pin0,
		      "not taken back: userptrs %lld (want %lld), VmPin %lld kB (want %lld)",
		      stat_of("userptrs"), regs, qgpu_vm_pinned_kb(), pin0);
		munmap(arg, 4096);
	}

	/* A read-only registration: the device reads it, never writes it. */
	CHECK(!qgpu_userptr_register(fd, ro, size, 0, &r), "read-only registration");
	CHECK(r.handle && r.nr_segments >= 1, "handle %u, %u segment(s)", r.handle, r.nr_segments);
	EXPECT_ERR(qgpu_copy_userptr(fd, r.handle, QGPU_OP_COPY_FROM_VRAM, 0, 0, 4096, NULL),
		   -EACCES, "copy from VRAM into a read-only registration");
	EXPECT_ERR(qgpu_copy_userptr(fd, r.handle, QGPU_OP_COPY_TO_VRAM, 4096, 0, size, NULL),
		   -EINVAL, "range beyond the buffer");
	EXPECT_ERR(qgpu_copy_userptr(fd, r.handle, QGPU_OP_COPY_TO_VRAM, (uint64_t)-1, 0, 2, NULL),
		   -EINVAL, "offset + length wraps");
	EXPECT_ERR(qgpu_copy_userptr(fd, r.handle, QGPU_OP_COPY_TO_VRAM, 0,
				     info.vram_size - 100, 4096, NULL), -EINVAL, "beyond VRAM");
	EXPECT_ERR(qgpu_copy_userptr(fd, r.handle, 7, 0, 0, 4096, NULL), -EINVAL, "unknown op");
	EXPECT_ERR(qgpu_copy_userptr(fd, r.handle + 1000, QGPU_OP_COPY_TO_VRAM, 0, 0, 4096, NULL),
		   -ENOENT, "unknown handle");
	c.handle = r.handle;
	c.op = QGPU_OP_COPY_TO_VRAM;
	c.length = 4096;
	c.flags = 1;
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_COPY_USERPTR, &c), -EINVAL, "copy flags");
	CHECK(!qgpu_copy_userptr(fd, r.handle, QGPU_OP_COPY_TO_VRAM, 0, 0, 4096, NULL),
	      "a good copy after the bad ones");
	CHECK(!qgpu_userptr_unregister(fd, r.handle), "unregister");
	EXPECT_ERR(qgpu_userptr_unregister(fd, r.handle), -ENOENT, "unregister twice");
	EXPECT_ERR(qgpu_copy_userptr(fd, r.handle, QGPU_OP_COPY_TO_VRAM, 0, 0, 4096, NULL),
		   -ENOENT, "copy after unregister");
	CHECK(stat_of("userptrs") == regs, "userptrs %lld, want %lld", stat_of("userptrs"), regs);
	munmap(ro, size);
	munmap(buf, size);
	return PASS;
}

/*
 * Registered once, copied both ways at unaligned offsets. The CPU writes the
 * buffer after registering it and the device's writes must reach the CPU:
 * the copies' syncs move them (bounced DMA), and only the copy's range --
 * the bytes around it keep what the CPU wrote there. VmPin counts the pages
 * while they are registered.
 */
static int t_userptr_copy(void)
{
	size_t size = (64 << 10) + 2 * 4096, in_off = 100, in_len = 64 << 10;
	size_t out_off = 4096 + 7, out_len = 5000;
	uint8_t *buf = anon_pages(size, PROT_READ | PROT_WRITE), *ref = qgpu_xmalloc(size);
	long long pin0 = qgpu_vm_pinned_kb(), copies = stat_of("userptr_copies");
	struct qgpu_userptr_register r;
	struct qgpu_copy_userptr o;
	int ret;

	CHECK(buf && pin0 >= 0, "mmap, VmPin");
	memset(buf, 0x5a, size);
	CHECK(!qgpu_userptr_register(fd, buf, size, QGPU_USERPTR_F_WRITE, &r), "register");
	CHECK(qgpu_vm_pinned_kb() == pin0 + (long long)(size >> 10), "VmPin %lld kB, want %lld",
	      qgpu_vm_pinned_kb(), pin0 + (long long)(size >> 10));
	rnd_fill(buf, size);
	ret = qgpu_copy_userptr(fd, r.handle, QGPU_OP_COPY_TO_VRAM, in_off, 9 << 20, in_len, &o);
	CHECK(!ret, "to VRAM: %s", strerror(-ret));
	CHECK(o.fence && !o.hw_status && o.nr_segments >= 1, "fence %llu, status %u, %u segs",
	      (unsigned long long)o.fence, o.hw_status, o.nr_segments);
	CHECK(cpu_sum(9 << 20, in_len) == qgpu_fnv1a(QGPU_FNV_INIT, buf + in_off, in_len),
	      "VRAM does not hold what the CPU wrote after registering");

	CHECK(!qgpu_fill(fd, 10 << 20, out_len, 0xc0ffee11, 0, NULL), "fill");
	/* The CPU writes the whole buffer again: none of it may be lost. */
	rnd_fill(buf, size);
	memcpy(ref, buf, size);
	qgpu_pattern_fill(ref + out_off, out_len, 0xc0ffee11);
	ret = qgpu_copy_userptr(fd, r.handle, QGPU_OP_COPY_FROM_VRAM, out_off, 10 << 20, out_len, &o);
	CHECK(!ret, "from VRAM: %s", strerror(-ret));
	CHECK(first_diff(buf, ref, size) < 0, "buffer differs at byte %d (copy at %zu..%zu)",
	      first_diff(buf, ref, size), out_off, out_off + out_len);
	CHECK(stat_of("userptr_copies") == copies + 2, "userptr_copies %lld, want %lld",
	      stat_of("userptr_copies"), copies + 2);
	CHECK(!qgpu_userptr_unregister(fd, r.handle), "unregister");
	CHECK(qgpu_vm_pinned_kb() == pin0, "VmPin %lld kB after unregister, want %lld",
	      qgpu_vm_pinned_kb(), pin0);
	snprintf(detail, sizeof(detail), "%u segment(s)", r.nr_segments);
	munmap(buf, size);
	free(ref);
	return PASS;
}

static int drop_capability(int cap)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return -errno;
	d[cap / 32].effective &= ~(1U << (cap % 32));
	return syscall(SYS_capset, &h, d) ? -errno : 0;
}

/* The body of t_userptr_memlock, in a child: 0 or the number of the failed step. */
static int userptr_memlock_child(void)
{
	long long pin0 = qgpu_vm_pinned_kb();
	struct rlimit rl;
	struct qgpu_userptr_register a, b;
	uint8_t *buf = anon_pages(4 * 4096, PROT_READ | PROT_WRITE);
	int f = qgpu_open(dev);

	if (!buf || f < 0 || pin0 < 0 || drop_capability(CAP_IPC_LOCK))
		return 1;
	rl.rlim_cur = rl.rlim_max = (pin0 << 10) + 2 * 4096;
	if (setrlimit(RLIMIT_MEMLOCK, &rl))
		return 2;
	if (qgpu_userptr_register(f, buf, 2 * 4096, 0, &a))
		return 3;		/* at the limit: allowed */
	if (qgpu_userptr_register(f, buf + 2 * 4096, 4096, 0, &b) != -ENOMEM)
		return 4;		/* over it */
	if (qgpu_vm_pinned_kb() != pin0 + 8)
		return 5;		/* the refused one is not counted */
	if (qgpu_userptr_unregister(f, a.handle) ||
	    qgpu_userptr_register(f, buf + 2 * 4096, 4096, 0, &b))
		return 6;		/* room again */
	close(f);			/* releases b */
	if (qgpu_vm_pinned_kb() != pin0)
		return 7;
	return 0;
}

/*
 * Registered pages count against RLIMIT_MEMLOCK for a process without
 * CAP_IPC_LOCK; unregistering and closing the file give them back.
 */
static int t_userptr_memlock(void)
{
	int st;
	pid_t pid = fork();

	CHECK(pid >= 0, "fork");
	if (!pid)
		_exit(userptr_memlock_child());
	CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	CHECK(WIFEXITED(st) && !WEXITSTATUS(st), "child failed at step %d (status %#x)",
	      WIFEXITED(st) ? WEXITSTATUS(st) : -1, st);
	return PASS;
}

struct unregister_race {
	int fd;
	volatile int stop;
	long hits;
};

static void *unregister_guesser(void *arg)
{
	struct unregister_race *r = arg;

	while (!r->stop)
		for (uint32_t h = 1; h <= 4; h++)
			r->hits += !qgpu_userptr_unregister(r->fd, h);
	return NULL;
}

/*
 * Handles are easy to guess: another thread unregisters them as soon as
 * they exist, while registrations are made. Nothing is used after it is
 * freed (KASAN on the debug kernel), nothing stays pinned.
 */
static int t_userptr_register_race(void)
{
	struct unregister_race r = { .fd = qgpu_open(dev) };
	long long regs = stat_of("userptrs"), pin0 = qgpu_vm_pinned_kb();
	uint8_t *buf = anon_pages(16 * 4096, PROT_READ | PROT_WRITE);
	double t0 = qgpu_now_ms();
	long made = 0;
	pthread_t t;
	int ret;

	CHECK(buf && r.fd >= 0, "mmap, open");
	CHECK(!pthread_create(&t, NULL, unregister_guesser, &r), "pthread_create");
	while (qgpu_now_ms() - t0 < 500) {
		struct qgpu_userptr_register reg;

		ret = qgpu_userptr_register(r.fd, buf, 16 * 4096, QGPU_USERPTR_F_WRITE, &reg);
		if (!ret) {
			made++;
			/* Ours to unregister, unless the guesser was first. */
			ret = qgpu_userptr_unregister(r.fd, reg.handle);
			ret = ret == -ENOENT ? 0 : ret;
		}
		if (ret) {
			r.stop = 1;
			pthread_join(t, NULL);
			CHECK(0, "register, unregister: %s", strerror(-ret));
		}
	}
	r.stop = 1;
	pthread_join(t, NULL);
	close(r.fd);
	CHECK(stat_of("userptrs") == regs && qgpu_vm_pinned_kb() == pin0,
	      "after close: userptrs %lld (want %lld), VmPin %lld kB (want %lld)",
	      stat_of("userptrs"), regs, qgpu_vm_pinned_kb(), pin0);
	snprintf(detail, sizeof(detail), "%ld registered, %ld unregistered by the guesser",
		 made, r.hits);
	munmap(buf, 16 * 4096);
	return PASS;
}

/* A process that exits with buffers registered leaves nothing pinned. */
static int t_userptr_process_exit(void)
{
	long long regs = stat_of("userptrs"), pages = stat_of("userptr_pages");
	int st, up[2];
	pid_t pid;
	char c;

	CHECK(!pipe(up), "pipe");
	pid = fork();
	CHECK(pid >= 0, "fork");
	if (!pid) {
		size_t size = 1 << 20;
		uint8_t *buf = anon_pages(size, PROT_READ | PROT_WRITE);
		int f = qgpu_open(dev);

		if (!buf || f < 0 ||
		    qgpu_userptr_register(f, buf, size, QGPU_USERPTR_F_WRITE, NULL) ||
		    qgpu_userptr_register(f, buf, 4096, 0, NULL))
			_exit(1);
		c = 'r';
		if (write(up[1], &c, 1) != 1)
			_exit(1);
		pause();		/* killed with both registered */
		_exit(1);
	}
	close(up[1]);
	CHECK(read(up[0], &c, 1) == 1, "the child did not register");
	close(up[0]);
	CHECK(stat_of("userptrs") == regs + 2 && stat_of("userptr_pages") == pages + 257,
	      "while registered: userptrs %lld, pages %lld", stat_of("userptrs"),
	      stat_of("userptr_pages"));
	kill(pid, SIGKILL);
	CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	CHECK(stat_of("userptrs") == regs && stat_of("userptr_pages") == pages,
	      "after exit: userptrs %lld (want %lld), pages %lld (want %lld)",
	      stat_of("userptrs"), regs, stat_of("userptr_pages"), pages);
	return PASS;
}

/* ---- destructive: hot removal while open ------------------------------------ */

static sigjmp_buf bus_jmp;

static void on_bus(int sig)
{
	siglongjmp(bus_jmp, sig);
}

static int touch(volatile uint8_t *p)
{
	struct sigaction sa = { .sa_handler = on_bus }, old_bus, old_segv;
	int sig;

	sigaction(SIGBUS, &sa, &old_bus);
	sigaction(SIGSEGV, &sa, &old_segv);
	sig = sigsetjmp(bus_jmp, 1);
	if (!sig)
		(void)*p;
	sigaction(SIGBUS, &old_bus, NULL);
	sigaction(SIGSEGV, &old_segv, NULL);
	return sig;
}

/*
 * MADV_DONTNEED on a BO mapping: refused where the mapping is VM_PFNMAP
 * (direct mapping), else the pages fault back in with their contents
 * (behind an IOMMU, dma_mmap_coherent() maps remapped pages VM_MIXEDMAP).
 */
static int t_bo_madvise(void)
{
	struct qgpu_bo_create bc;
	size_t size = 4 * 4096;
	uint8_t *p, *ref = qgpu_xmalloc(size);
	int ret;

	ret = bo_create(fd, size, &bc);
	CHECK(!ret, "create: %s", strerror(-ret));
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, bc.mmap_offset);
	CHECK(p != MAP_FAILED, "mmap BO: %s", strerror(errno));
	rnd_fill(ref, size);
	memcpy(p, ref, size);
	if (madvise(p, size, MADV_DONTNEED)) {
		CHECK(errno == EINVAL, "madvise: %s", strerror(errno));
		snprintf(detail, sizeof(detail), "MADV_DONTNEED refused (PFN mapping)");
	} else {
		for (size_t off = 0; off < size; off += 4096)
			CHECK(!touch(p + off), "signal at BO page %zu after MADV_DONTNEED",
			      off / 4096);
		CHECK(first_diff(ref, p, size) < 0, "BO contents differ at %d after "
		      "MADV_DONTNEED", first_diff(ref, p, size));
		/* Written through the new PTEs, read by the device: the same pages. */
		rnd_fill(ref, size);
		memcpy(p, ref, size);
		ret = bo_copy(fd, QGPU_OP_COPY_TO_VRAM, 0, bc.handle, 0, 3 << 20, size,
			      NULL);
		CHECK(!ret, "BO->VRAM: %s", strerror(-ret));
		CHECK(cpu_sum(3 << 20, size) == qgpu_fnv1a(QGPU_FNV_INIT, ref, size),
		      "the refaulted pages are not the BO's");
		snprintf(detail, sizeof(detail), "pages faulted back in");
	}
	munmap(p, size);
	CHECK(!bo_destroy(fd, bc.handle), "destroy");
	free(ref);
	return PASS;
}

static int t_remove_while_open(void)
{
	char path[128], bdf[32];
	struct qgpu_bo_create bc;
	struct qgpu_info in = {0};
	uint8_t *v, *lz, *bo, buf[64];
	volatile uint32_t *regs;
	uint64_t fence;
	int fd2, ret, tries;

	snprintf(bdf, sizeof(bdf), "%04x:%02x:%02x.%x", info.pci_domain,
		 (info.pci_bdf >> 8) & 0xff, (info.pci_bdf >> 3) & 0x1f,
		 info.pci_bdf & 7);
	v = xmap_vram(0, 1 << 20, 0);
	lz = xmap_vram(0, 1 << 20, 1);
	regs = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, QGPU_MMAP_REGS);
	CHECK(!bo_create(fd, 8192, &bc), "bo");
	bo = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, bc.mmap_offset);
	CHECK(v && lz && regs != MAP_FAILED && bo != MAP_FAILED, "mmaps");
	/* Every mapping has a PTE now (the register page's is made at first access). */
	v[0] = 1;
	(void)lz[0];
	(void)regs[(QGPU_REG_USER_ID - QGPU_REGS_USER_PAGE) / 4];
	bo[0] = 1;
	/* Leave work queued while the device goes. */
	for (int i = 0; i < 20; i++)
		qgpu_fill(fd, 0, info.vram_size, i, QGPU_SUBMIT_F_ASYNC, &fence);

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/remove", bdf);
	ret = qgpu_write_file(path, "1");
	CHECK(!ret, "remove %s: %s", path, strerror(-ret));

	in = (struct qgpu_info){0};
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_INFO, &in), -ENODEV, "INFO after remove");
	EXPECT_ERR(qgpu_copy_user(fd, QGPU_OP_COPY_TO_VRAM, 0, buf, 0, 64, NULL),
		   -ENODEV, "copy after remove");
	EXPECT_ERR(qgpu_wait(fd, fence, 0, NULL), -ENODEV, "wait after remove");
	{
		struct qgpu_copy_bo cb = { .op = QGPU_OP_COPY_TO_VRAM, .handle = bc.handle,
					   .length = 64 };
		void *page = anon_pages(4096, PROT_READ | PROT_WRITE);

		EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_COPY_BO, &cb), -ENODEV,
			   "COPY_BO after remove");
		CHECK(page, "mmap");
		EXPECT_ERR(qgpu_userptr_register(fd, page, 4096, 0, NULL), -ENODEV,
			   "USERPTR_REGISTER after remove");
		munmap(page, 4096);
	}
	EXPECT_ERR(bo_destroy(fd, bc.handle), -ENODEV, "BO destroy after remove");
	EXPECT_ERR(MMAP_ERR(4096, PROT_READ, MAP_SHARED, 0), -ENODEV,
		   "mmap after remove");
	CHECK(touch(v) == SIGBUS, "VRAM mapping still readable after remove");
	CHECK(touch(lz + 8192) == SIGBUS, "lazy mapping after remove");
	CHECK(touch(lz) == SIGBUS, "lazy mapping (faulted page) after remove");
	CHECK(touch((volatile uint8_t *)regs) == SIGBUS, "regs mapping after remove");
	CHECK(touch(bo) == SIGBUS, "BO mapping after remove");
	munmap(v, 1 << 20);
	munmap(lz, 1 << 20);
	munmap((void *)regs, 4096);
	munmap(bo, 8192);
	close(fd);
	fd = -1;

	CHECK(!qgpu_write_file("/sys/bus/pci/rescan", "1"), "rescan");
	for (tries = 0; tries < 50; tries++) {
		fd2 = -1;
		for (int n = 0; n < 8 && fd2 < 0; n++) {
			snprintf(path, sizeof(path), "/dev/qgpu%d", n);
			fd2 = qgpu_open(path);
		}
		if (fd2 >= 0)
			break;
		usleep(100000);
	}
	CHECK(fd2 >= 0, "no /dev/qgpuN after rescan");
	ret = qgpu_ioctl(fd2, QGPU_IOCTL_INFO, &in);
	CHECK(!ret, "INFO after rescan: %s", strerror(-ret));
	CHECK(!qgpu_fill(fd2, 0, 4096, 0x99, 0, NULL), "fill after rescan");
	snprintf(detail, sizeof(detail), "re-probed as %s", path);
	close(fd2);
	return PASS;
}

/* ---- peer-to-peer: VRAM as a dma-buf --------------------------------------- */

/*
 * A VRAM range as a dma-buf: its size, its lifetime in the stats, its CPU
 * mapping (the device's VRAM), bad ranges refused, and not the device's own
 * DMA (the e2e tests, with two devices, check the peers).
 */
static int t_p2p_vram_export(void)
{
	uint64_t vram = info.vram_size, page = 4096;
	long long bufs = stat_of("dmabufs"), maps = stat_of("dmabuf_maps");
	struct qgpu_vram_export a;
	struct qgpu_copy_dmabuf o;
	void *p, *dev_map;
	unsigned int i;
	int dbuf, ro;

	dbuf = qgpu_vram_export(fd, vram - 4 * page, 4 * page, QGPU_DMABUF_F_WRITE);
	if (dbuf == -EOPNOTSUPP) {
		snprintf(detail, sizeof(detail), "kernel without CONFIG_DMA_SHARED_BUFFER");
		return SKIP;
	}
	CHECK(dbuf >= 0, "export the last 4 pages: %s", strerror(-dbuf));
	CHECK(fcntl(dbuf, F_GETFD) & FD_CLOEXEC, "dma-buf fd without FD_CLOEXEC");
	CHECK(lseek(dbuf, 0, SEEK_END) == (off_t)(4 * page), "dma-buf size %lld",
	      (long long)lseek(dbuf, 0, SEEK_END));
	CHECK(stat_of("dmabufs") == bufs + 1, "dmabufs stat %lld, want %lld",
	      stat_of("dmabufs"), bufs + 1);
	/* Mapped, it is the device's VRAM: what one mapping writes, the other reads. */
	dev_map = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		       QGPU_MMAP_VRAM + vram - 4 * page);
	CHECK(dev_map != MAP_FAILED, "mmap VRAM: %s", strerror(errno));
	p = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_SHARED, dbuf, page);
	CHECK(p != MAP_FAILED, "mmap the VRAM dma-buf from page 1: %s", strerror(errno));
	for (i = 0; i < 3 * page / 4; i++)
		((volatile uint32_t *)dev_map)[page / 4 + i] = 0x50325000u + i;
	__sync_synchronize();
	for (i = 0; i < 3 * page / 4; i++)
		CHECK(((volatile uint32_t *)p)[i] == 0x50325000u + i,
		      "dma-buf mapping word %u: %#x", i, ((volatile uint32_t *)p)[i]);
	((volatile uint32_t *)p)[7] = 0xd0d0cafe;
	__sync_synchronize();
	CHECK(((volatile uint32_t *)dev_map)[page / 4 + 7] == 0xd0d0cafe,
	      "a write through the dma-buf mapping not in VRAM");
	CHECK(mmap(NULL, 2 * page, PROT_READ, MAP_SHARED, dbuf, 3 * page) == MAP_FAILED &&
	      errno == EINVAL, "mapped past the dma-buf's end");
	CHECK(mmap(NULL, page, PROT_READ, MAP_PRIVATE, dbuf, 0) == MAP_FAILED &&
	      errno == EINVAL, "a private mapping of VRAM");
	/* Its own VRAM: the device does not DMA into its own BARs. */
	EXPECT_ERR(qgpu_copy_dmabuf(fd, dbuf, QGPU_OP_COPY_TO_VRAM, 0, 0, page, 0, &o),
		   -EINVAL, "the device's own VRAM dma-buf imported");
	CHECK(stat_of("dmabuf_maps") == maps, "dmabuf_maps %lld, want %lld",
	      stat_of("dmabuf_maps"), maps);
	/* The mapping holds the dma-buf: released with the last of both. */
	close(dbuf);
	CHECK(stat_of("dmabufs") == bufs + 1, "dma-buf gone while mapped");
	CHECK(((volatile uint32_t *)p)[7] == 0xd0d0cafe, "the mapping after the close");
	munmap(p, 3 * page);
	CHECK(stat_of("dmabufs") == bufs, "dmabufs stat %lld after release, want %lld",
	      stat_of("dmabufs"), bufs);
	munmap(dev_map, 4 * page);
	/* The whole of VRAM is one range, and a page is too. */
	dbuf = qgpu_vram_export(fd, 0, vram, 0);
	CHECK(dbuf >= 0, "export all of VRAM: %s", strerror(-dbuf));
	close(dbuf);
	/* Bad input. */
	EXPECT_ERR(qgpu_vram_export(fd, 0, 0, 0), -EINVAL, "size 0");
	EXPECT_ERR(qgpu_vram_export(fd, 100, page, 0), -EINVAL, "unaligned offset");
	EXPECT_ERR(qgpu_vram_export(fd, 0, page + 1, 0), -EINVAL, "unaligned size");
	EXPECT_ERR(qgpu_vram_export(fd, vram, page, 0), -EINVAL, "past VRAM");
	EXPECT_ERR(qgpu_vram_export(fd, vram - page, 2 * page, 0), -EINVAL, "across the end");
	EXPECT_ERR(qgpu_vram_export(fd, page, UINT64_MAX & ~(page - 1), 0), -EINVAL,
		   "a size that wraps");
	EXPECT_ERR(qgpu_vram_export(fd, 0, page, 2), -EINVAL, "flags");
	a = (struct qgpu_vram_export){ .size = page, .reserved[1] = 1 };
	EXPECT_ERR(qgpu_ioctl(fd, QGPU_IOCTL_VRAM_EXPORT, &a), -EINVAL, "reserved");
	/* Writable by peers only from a file that may change VRAM. */
	ro = open(dev, O_RDONLY | O_CLOEXEC);
	CHECK(ro >= 0, "open O_RDONLY: %s", strerror(errno));
	EXPECT_ERR(qgpu_vram_export(ro, 0, page, QGPU_DMABUF_F_WRITE), -EBADF,
		   "a writable export from a read-only file");
	dbuf = qgpu_vram_export(ro, 0, page, 0);
	CHECK(dbuf >= 0, "a read-only export from a read-only file: %s", strerror(-dbuf));
	CHECK(mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, dbuf, 0) == MAP_FAILED &&
	      errno == EACCES, "a read-only VRAM dma-buf mapped writable");
	p = mmap(NULL, page, PROT_READ, MAP_SHARED, dbuf, 0);
	CHECK(p != MAP_FAILED, "a read-only VRAM dma-buf mapped read-only: %s",
	      strerror(errno));
	munmap(p, page);
	close(dbuf);
	close(ro);
	CHECK(stat_of("dmabufs") == bufs, "dmabufs stat %lld at the end, want %lld",
	      stat_of("dmabufs"), bufs);
	return PASS;
}

/* ---- harness ---------------------------------------------------------------- */

struct test {
	const char *name;
	int (*fn)(void);
	int timeout_s;
	int destructive;
};

static const struct test tests[] = {
	{ "info", t_info, 10 },
	{ "regs_mmap", t_regs_mmap, 10 },
	{ "regs_mmap_bad", t_regs_mmap_bad, 10 },
	{ "readonly_fd", t_readonly_fd, 10 },
	{ "vram_mmap_wc", t_vram_mmap_wc, 60 },
	{ "vram_mmap_lazy", t_vram_mmap_lazy, 30 },
	{ "vram_mmap_bad", t_vram_mmap_bad, 10 },
	{ "vma_accounting", t_vma_accounting, 10 },
	{ "dma_copy_sizes", t_dma_copy_sizes, 120 },
	{ "dma_force_sg", t_dma_force_sg, 60 },
	{ "dma_large", t_dma_large, 120 },
	{ "dma_chunks_sg_split", t_dma_chunks_sg_split, 60 },
	{ "dma_scattered", t_dma_scattered, 60 },
	{ "dma_readonly", t_dma_readonly, 10 },
	{ "dma_bad_ptrs", t_dma_bad_ptrs, 10 },
	{ "bad_args", t_bad_args, 10 },
	{ "bo_basic", t_bo_basic, 30 },
	{ "bo_foreign", t_bo_foreign, 10 },
	{ "bo_lifetime", t_bo_lifetime, 10 },
	{ "bo_bad", t_bo_bad, 10 },
	{ "bo_madvise", t_bo_madvise, 10 },
	{ "fence", t_fence, 30 },
	{ "fence_timeout_signal", t_fence_timeout_signal, 300 },
	{ "fence_export", t_fence_export, 30 },
	{ "fence_export_outlives_the_file", t_fence_export_outlives_the_file, 60 },
	{ "fence_poll_device_fd", t_fence_poll_device_fd, 60 },
	{ "dmabuf_export", t_dmabuf_export, 30 },
	{ "dmabuf_outlives_the_handle", t_dmabuf_outlives_the_handle, 30 },
	{ "dmabuf_import_self", t_dmabuf_import_self, 30 },
	{ "dmabuf_import_udmabuf", t_dmabuf_import_udmabuf, 30 },
	{ "dmabuf_resv_wait", t_dmabuf_resv_wait, 300 },
	{ "dmabuf_bo_job_fence", t_dmabuf_bo_job_fence, 60 },
	{ "p2p_vram_export", t_p2p_vram_export, 30 },
	{ "userptr_bad_args", t_userptr_bad_args, 30 },
	{ "userptr_copy", t_userptr_copy, 30 },
	{ "userptr_memlock", t_userptr_memlock, 30 },
	{ "userptr_register_race", t_userptr_register_race, 30 },
	{ "userptr_process_exit", t_userptr_process_exit, 30 },
	{ "vram_copy", t_vram_copy, 30 },
	{ "cpu_access", t_cpu_access, 30 },
	{ "soft_irq", t_soft_irq, 10 },
	{ "ring_wrap_threads", t_ring_wrap_threads, 300 },
	{ "no_leaks", t_no_leaks, 10 },
	{ "remove_while_open", t_remove_while_open, 60, 1 },
};

static int run_one(const struct test *t, int num)
{
	static const char *const names[] = { "pass", "fail", "skip" };
	struct timespec t0, t1;
	int pfd[2], st, res;
	char buf[sizeof(detail)] = "";
	ssize_t n = 0;
	pid_t pid;
	long ms;

	if (pipe(pfd))
		return FAIL;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		alarm(t->timeout_s);
		fd = qgpu_open(dev);
		if (fd < 0) {
			snprintf(detail, sizeof(detail), "open %s: %s", dev,
				 strerror(errno));
			res = FAIL;
		} else {
			res = t->fn();
		}
		if (write(pfd[1], detail, strlen(detail)) < 0)
			res = FAIL;
		_exit(res);
	}
	close(pfd[1]);
	for (;;) {
		ssize_t r = read(pfd[0], buf + n, sizeof(buf) - 1 - n);

		if (r <= 0)
			break;
		n += r;
	}
	buf[n] = 0;
	close(pfd[0]);
	waitpid(pid, &st, 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	if (WIFEXITED(st) && WEXITSTATUS(st) <= SKIP) {
		res = WEXITSTATUS(st);
	} else {
		res = FAIL;
		snprintf(buf, sizeof(buf), "child %s %d%s",
			 WIFSIGNALED(st) ? "killed by signal" : "exit status",
			 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
			 WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
	}
	if (tap) {
		printf("%s %d - %s%s%s\n", res == FAIL ? "not ok" : "ok", num, t->name,
		       res == SKIP ? " # SKIP " : "", res == SKIP ? buf : "");
		if (*buf && res != SKIP)
			printf("# %s\n", buf);
	} else {
		printf("{\"test\":\"%s\",\"result\":\"%s\",\"ms\":%ld,\"detail\":",
		       t->name, names[res], ms);
		qgpu_json_str(stdout, buf);
		printf("}\n");
	}
	fflush(stdout);
	return res;
}

int main(int argc, char **argv)
{
	int destructive = 0, list = 0, nsel = 0, counts[3] = {0}, num = 0;
	const char *sel[64];
	size_t ntests = sizeof(tests) / sizeof(tests[0]);

	dev = qgpu_dev_path();
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-d") && i + 1 < argc)
			dev = argv[++i];
		else if (!strcmp(argv[i], "--tap"))
			tap = 1;
		else if (!strcmp(argv[i], "--destructive"))
			destructive = 1;
		else if (!strcmp(argv[i], "--list"))
			list = 1;
		else if (argv[i][0] == '-') {
			fprintf(stderr, "usage: qgpu-test [-d DEV] [--tap] [--list] "
				"[--destructive] [TEST...]\n");
			return 2;
		} else if (nsel < 64)
			sel[nsel++] = argv[i];
	}
	if (list) {
		for (size_t i = 0; i < ntests; i++)
			printf("%s%s\n", tests[i].name,
			       tests[i].destructive ? " (destructive)" : "");
		return 0;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	fd = qgpu_open(dev);
	if (fd < 0 || qgpu_ioctl(fd, QGPU_IOCTL_INFO, &info)) {
		printf("{\"summary\":true,\"error\":\"cannot open %s: %s\"}\n", dev,
		       strerror(errno));
		return 1;
	}
	close(fd);
	fd = -1;
	if (tap)
		printf("TAP version 13\n");
	for (size_t i = 0; i < ntests; i++) {
		int want = 0;

		for (int k = 0; k < nsel; k++)
			if (!strcmp(sel[k], tests[i].name))
				want = 1;
		if (nsel ? !want : (tests[i].destructive && !destructive))
			continue;
		counts[run_one(&tests[i], ++num)]++;
	}
	if (tap)
		printf("1..%d\n", num);
	else
		printf("{\"summary\":true,\"pass\":%d,\"fail\":%d,\"skip\":%d}\n",
		       counts[PASS], counts[FAIL], counts[SKIP]);
	return counts[FAIL] ? 1 : 0;
}
