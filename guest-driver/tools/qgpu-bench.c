// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * qgpu-bench: guest-side benchmarks, each printing one JSON line. Figures
 * come with their baseline measured by the same process in the same run
 * (ratios travel, absolute numbers do not). A benchmark asserts nothing
 * about speed, but it does check that what the device moved is there.
 *
 *   qgpu-bench [-d /dev/qgpuN] [MIB [ROUNDS]]
 *	user-space writes into VRAM through the write-combined mapping and
 *	the lazily faulted one, beside the same process writing its own RAM.
 *   qgpu-bench [-d /dev/qgpuN] dma [--max-size BYTES] [--budget BYTES]
 *	DMA through the driver: COPY_USER to and from VRAM (single-page and
 *	SG paths), COPY_BO, VRAM-to-VRAM and fill, per size from 4 KiB up,
 *	beside memcpy() of the same size; submission-to-fence latency of
 *	small jobs; throughput against concurrent submitters; the lazily
 *	faulted mapping's cost against pages touched. See bench_dma().
 */
#include "qgpu-lib.h"

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 64-bit stores, the way a driver's user-space would stream into VRAM. */
static void stream(volatile uint64_t *p, size_t words, uint64_t value)
{
	for (size_t i = 0; i < words; i++)
		p[i] = value + i;
}

/* Best of @rounds passes over @len bytes at @p; returns seconds per pass. */
static double best_pass(void *p, size_t len, int rounds)
{
	double best = 1e30;

	for (int r = 0; r < rounds; r++) {
		double t = now();

		stream(p, len / 8, (uint64_t)r << 32);
		__sync_synchronize();
		t = now() - t;
		if (t < best)
			best = t;
	}
	return best;
}

/* qgpu-bench [MIB [ROUNDS]]: write bandwidth into VRAM mappings. */
static int bench_wc(const char *dev, int argc, char **argv)
{
	size_t mib = 16, len;
	int rounds = 5, fd;
	void *vram, *lazy, *ram;
	double t_vram, t_lazy_first, t_ram;
	uint64_t *check;

	if (argc > 1)
		mib = strtoul(argv[1], NULL, 0);
	if (argc > 2)
		rounds = atoi(argv[2]);
	if (!mib || mib > 1024 || rounds < 1) {
		fprintf(stderr, "usage: qgpu-bench [-d /dev/qgpuN] [MIB (1-1024) [ROUNDS]]\n");
		return 2;
	}
	len = mib << 20;
	fd = qgpu_open(dev);
	if (fd < 0) {
		printf("{\"ok\":false,\"error\":\"open: %s\",\"errno\":%d}\n", strerror(errno), errno);
		return 1;
	}
	vram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, QGPU_MMAP_VRAM);
	lazy = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, QGPU_MMAP_VRAM_LAZY);
	ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
		   -1, 0);
	if (vram == MAP_FAILED || lazy == MAP_FAILED || ram == MAP_FAILED) {
		printf("{\"ok\":false,\"error\":\"mmap: %s\",\"errno\":%d}\n", strerror(errno), errno);
		return 1;
	}

	/* First touch of the lazy mapping pays one fault per page. */
	t_lazy_first = now();
	stream(lazy, len / 8, 7);
	t_lazy_first = now() - t_lazy_first;
	t_vram = best_pass(vram, len, rounds);
	t_ram = best_pass(ram, len, rounds);

	check = vram;
	for (size_t i = 0; i < len / 8; i += 4096 / 8) {
		if (check[i] != ((uint64_t)(rounds - 1) << 32) + i) {
			printf("{\"ok\":false,\"error\":\"VRAM word %zu reads back wrong\"}\n", i);
			return 1;
		}
	}
	printf("{\"ok\":true,\"bytes\":%zu,\"rounds\":%d,\"vram_wc_mb_s\":%.1f,"
	       "\"ram_mb_s\":%.1f,\"vram_vs_ram\":%.3f,\"lazy_first_touch_mb_s\":%.1f}\n",
	       len, rounds, len / t_vram / 1e6, len / t_ram / 1e6, t_ram / t_vram,
	       len / t_lazy_first / 1e6);
	return 0;
}

/* ---- qgpu-bench dma ------------------------------------------------------- */

#define KIB		1024ULL
#define MIB		(1024ULL * KIB)
#define MAX_SAMPLES	31
#define MIN_SAMPLES	3
/*
 * A memcpy() sample copies at least this much (small sizes loop), so that
 * clock reads stay out of the baseline. Every other sample is one ioctl,
 * timed alone: the median is then a typical call, and the max shows the
 * tail (a completion that waited for a timer tick), which an average over
 * a loop would smear into every figure.
 */
#define SAMPLE_MIN_BYTES (256 * KIB)
#define LATENCY_SAMPLES	200
#define MAX_SUBMITTERS	4
#define CHECK_POINTS	8

struct dma_bench {
	int fd;
	const char *dev;
	struct qgpu_info info;
	uint8_t *src, *dst;		/* user buffers, max_size each */
	volatile uint8_t *vram;		/* the whole VRAM, write-combined */
	uint64_t max_size;
	uint64_t budget;		/* bytes per cell: budget / size samples */
	uint32_t bo_handle;
	uint8_t *bo;			/* mapped BO of bo_size bytes, or NULL */
	uint64_t bo_size;
	char bo_error[96];		/* why there is no BO */
	uint32_t last_segments;		/* nr_segments of the last COPY_USER */
	int integrity_errors;
	char first_error[160];
	FILE *out;			/* the JSON line, printed whole at the end */
};

typedef int (*dma_op_fn)(struct dma_bench *b, uint64_t size);

/* 4 bytes that differ from one size to the next in every byte. */
static uint32_t fill_pattern(uint64_t size)
{
	uint32_t k = (uint32_t)__builtin_ctzll(size);

	return 0x01010101u * (k + 1) ^ 0x5a3c96e1u;
}

static int op_memcpy(struct dma_bench *b, uint64_t size)
{
	memcpy(b->dst, b->src, size);
	__asm__ __volatile__("" ::: "memory");	/* the copy is not dead */
	return 0;
}

/* -errno, or -(1000 + QGPU_ERR_*) for a device error (dma_strerror()). */
static int device_error(int ret, uint32_t hw_status)
{
	return ret == -EIO && hw_status ? -(int)(1000 + hw_status) : ret;
}

static int op_copy_user(struct dma_bench *b, uint32_t op, uint32_t flags,
			uint64_t size)
{
	struct qgpu_copy_user out = { 0 };
	int ret = qgpu_copy_user(b->fd, op, flags,
				 op == QGPU_OP_COPY_TO_VRAM ? b->src : b->dst,
				 0, size, &out);

	b->last_segments = out.nr_segments;
	return device_error(ret, out.hw_status);
}

static int op_copy_user_to(struct dma_bench *b, uint64_t size)
{
	return op_copy_user(b, QGPU_OP_COPY_TO_VRAM, 0, size);
}

static int op_copy_user_to_sg(struct dma_bench *b, uint64_t size)
{
	return op_copy_user(b, QGPU_OP_COPY_TO_VRAM, QGPU_SUBMIT_F_FORCE_SG, size);
}

static int op_copy_user_from(struct dma_bench *b, uint64_t size)
{
	return op_copy_user(b, QGPU_OP_COPY_FROM_VRAM, 0, size);
}

static int op_copy_bo(struct dma_bench *b, uint32_t op, uint64_t size)
{
	struct qgpu_copy_bo c = { .op = op, .handle = b->bo_handle,
				  .length = size };

	return device_error(qgpu_ioctl(b->fd, QGPU_IOCTL_COPY_BO, &c), c.hw_status);
}

static int op_copy_bo_to(struct dma_bench *b, uint64_t size)
{
	return op_copy_bo(b, QGPU_OP_COPY_TO_VRAM, size);
}

static int op_copy_bo_from(struct dma_bench *b, uint64_t size)
{
	return op_copy_bo(b, QGPU_OP_COPY_FROM_VRAM, size);
}

static int op_vram(struct dma_bench *b, uint32_t op, uint64_t size)
{
	struct qgpu_vram_op v = {
		.op = op, .length = size, .src_offset = 0,
		.dst_offset = op == QGPU_OP_COPY_VRAM ? size : 0,
		.pattern = op == QGPU_OP_FILL ? fill_pattern(size) : 0,
	};

	return device_error(qgpu_ioctl(b->fd, QGPU_IOCTL_VRAM_OP, &v), v.hw_status);
}

static int op_copy_vram(struct dma_bench *b, uint64_t size)
{
	return op_vram(b, QGPU_OP_COPY_VRAM, size);
}

static int op_fill(struct dma_bench *b, uint64_t size)
{
	return op_vram(b, QGPU_OP_FILL, size);
}

static const struct dma_op {
	const char *name;
	dma_op_fn fn;
} dma_ops[] = {
	{ "memcpy", op_memcpy },	/* the baseline: first */
	{ "copy_user_to", op_copy_user_to },
	{ "copy_user_to_sg", op_copy_user_to_sg },
	{ "copy_user_from", op_copy_user_from },
	{ "copy_bo_to", op_copy_bo_to },
	{ "copy_bo_from", op_copy_bo_from },
	{ "copy_vram", op_copy_vram },
	{ "fill", op_fill },
};

static bool is_op(const struct dma_op *op, const char *prefix)
{
	return !strncmp(op->name, prefix, strlen(prefix));
}

/* Why @op cannot run at @size on this device, or NULL. */
static const char *dma_op_skip(struct dma_bench *b, const struct dma_op *op,
			       uint64_t size)
{
	if (is_op(op, "copy_bo") && !b->bo)
		return b->bo_error;
	if (is_op(op, "copy_bo") && size > b->bo_size)
		return "larger than the largest buffer object";
	if (is_op(op, "copy_vram") && 2 * size > b->info.vram_size)
		return "source and destination do not fit VRAM apart";
	if (size > b->info.vram_size)
		return "larger than VRAM";
	if (op->fn != op_memcpy && size > b->info.max_xfer)
		return "larger than one ioctl accepts";
	return NULL;
}

/*
 * Where a run of @op at @size writes, and what it must write there: byte
 * @at of the destination and its expected value.
 */
static volatile uint8_t *dma_dest(struct dma_bench *b, const struct dma_op *op,
				  uint64_t size, uint64_t at, uint8_t *want)
{
	if (op->fn == op_memcpy) {
		*want = b->src[at];
		return &b->dst[at];
	}
	if (is_op(op, "copy_user_to")) {
		*want = b->src[at];
		return &b->vram[at];
	}
	if (op->fn == op_copy_user_from) {
		*want = b->vram[at];
		return &b->dst[at];
	}
	if (op->fn == op_copy_bo_to) {
		*want = b->bo[at];
		return &b->vram[at];
	}
	if (op->fn == op_copy_bo_from) {
		*want = b->vram[at];
		return &b->bo[at];
	}
	if (op->fn == op_copy_vram) {
		*want = b->vram[at];
		return &b->vram[size + at];
	}
	*want = (uint8_t)(fill_pattern(size) >> (8 * (at % 4)));	/* fill */
	return &b->vram[at];
}

/*
 * One more, untimed run of @op, checked: at CHECK_POINTS bytes of the
 * destination (both ends, the middle, and between), the opposite of what
 * the run must write is stored first, so a run that moves nothing, half
 * or the wrong bytes is caught. Returns 0 or the run's error.
 */
static int dma_verify(struct dma_bench *b, const struct dma_op *op, uint64_t size)
{
	uint64_t at[CHECK_POINTS] = { 0, size / 2, size - 1 };
	uint8_t want[CHECK_POINTS];
	int ret;

	for (int i = 3; i < CHECK_POINTS; i++)
		at[i] = size / CHECK_POINTS * i + (i * 4099) % (size / CHECK_POINTS);
	for (int i = 0; i < CHECK_POINTS; i++) {
		volatile uint8_t *p = dma_dest(b, op, size, at[i], &want[i]);

		*p = (uint8_t)~want[i];
	}
	__sync_synchronize();	/* out of the write-combining buffers */
	ret = op->fn(b, size);
	if (ret)
		return ret;
	for (int i = 0; i < CHECK_POINTS; i++) {
		uint8_t ignored, got = *dma_dest(b, op, size, at[i], &ignored);

		if (got != want[i] && !b->integrity_errors++)
			snprintf(b->first_error, sizeof(b->first_error),
				 "%s %llu bytes: byte %llu is %#x, not %#x",
				 op->name, (unsigned long long)size,
				 (unsigned long long)at[i], got, want[i]);
	}
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* The value at quantile @q (0..1) of @n sorted samples, nearest rank. */
static double quantile(const double *sorted, int n, double q)
{
	int i = (int)(q * (n - 1) + 0.5);

	return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static const char *dma_strerror(int err)
{
	static char buf[64];

	if (err <= -1000) {
		snprintf(buf, sizeof(buf), "device error %d", -err - 1000);
		return buf;
	}
	return strerror(-err);
}

static void dma_print_error(struct dma_bench *b, int err)
{
	fprintf(b->out, ",\"errno\":%d,\"error\":", err <= -1000 ? EIO : -err);
	qgpu_json_str(b->out, dma_strerror(err));
}

/*
 * One cell: @op at @size, timed. "runs" counts every operation it ran:
 * the warm-up, the samples, the checked run.
 */
static void dma_cell(struct dma_bench *b, const struct dma_op *op, uint64_t size)
{
	uint64_t inner = op->fn != op_memcpy || size >= SAMPLE_MIN_BYTES ? 1 :
			 SAMPLE_MIN_BYTES / size;
	uint64_t want = b->budget / size;
	int n = want < MIN_SAMPLES ? MIN_SAMPLES : want > MAX_SAMPLES ? MAX_SAMPLES : (int)want;
	double t[MAX_SAMPLES];
	const char *skip = dma_op_skip(b, op, size);
	int ret, s;

	fprintf(b->out, "{\"size\":%llu", (unsigned long long)size);
	if (skip) {
		fprintf(b->out, ",\"skipped\":");
		qgpu_json_str(b->out, skip);
		fprintf(b->out, "}");
		return;
	}
	ret = op->fn(b, size);		/* warm: first-touch and caches */
	for (s = 0; s < n && !ret; s++) {
		double start = now();

		for (uint64_t k = 0; k < inner && !ret; k++)
			ret = op->fn(b, size);
		t[s] = (now() - start) / inner;
	}
	if (!ret)
		ret = dma_verify(b, op, size);
	if (ret) {
		dma_print_error(b, ret);
		fprintf(b->out, "}");
		return;
	}
	qsort(t, n, sizeof(*t), cmp_double);
	fprintf(b->out, ",\"n\":%d,\"inner\":%llu,\"runs\":%llu,\"median_s\":%.6e,"
		"\"min_s\":%.6e,\"max_s\":%.6e", n, (unsigned long long)inner,
		2 + n * (unsigned long long)inner, quantile(t, n, 0.5), t[0], t[n - 1]);
	if (is_op(op, "copy_user"))
		fprintf(b->out, ",\"segments\":%u", b->last_segments);
	fprintf(b->out, "}");
}

/*
 * Latency of small jobs, each timed alone: a 4 KiB fill submitted async and
 * waited for with WAIT_FENCE (submission to fence), and a synchronous 4 KiB
 * COPY_USER (pin, map, submit, interrupt, unmap, unpin). Samples sorted.
 */
static void dma_latency(struct dma_bench *b)
{
	static double fill[LATENCY_SAMPLES], copy[LATENCY_SAMPLES];
	int err = 0;

	for (int i = 0; i < LATENCY_SAMPLES && !err; i++) {
		struct qgpu_wait_fence w;
		uint64_t fence;
		double start = now();

		err = qgpu_fill(b->fd, 0, 4096, i, QGPU_SUBMIT_F_ASYNC, &fence);
		if (!err)
			err = qgpu_wait(b->fd, fence, 1000000000ULL, &w);
		if (!err && w.hw_status)
			err = -(int)(1000 + w.hw_status);
		fill[i] = now() - start;
		if (!err) {
			start = now();
			err = op_copy_user_to(b, 4096);
			copy[i] = now() - start;
		}
	}
	fprintf(b->out, ",\"latency\":{");
	if (err) {
		fprintf(b->out, "\"error_at\":\"latency\"");
		dma_print_error(b, err);
		fprintf(b->out, "}");
		return;
	}
	qsort(fill, LATENCY_SAMPLES, sizeof(double), cmp_double);
	qsort(copy, LATENCY_SAMPLES, sizeof(double), cmp_double);
	for (int k = 0; k < 2; k++) {
		const double *v = k ? copy : fill;

		fprintf(b->out, "%s\"%s\":{\"n\":%d,\"median_s\":%.6e,\"p99_s\":%.6e,"
			"\"min_s\":%.6e,\"max_s\":%.6e,\"samples_us\":[", k ? "," : "",
			k ? "copy_user_4k" : "fill_4k_fence", LATENCY_SAMPLES,
			quantile(v, LATENCY_SAMPLES, 0.5),
			quantile(v, LATENCY_SAMPLES, 0.99), v[0],
			v[LATENCY_SAMPLES - 1]);
		for (int i = 0; i < LATENCY_SAMPLES; i++)
			fprintf(b->out, "%s%.1f", i ? "," : "", v[i] * 1e6);
		fprintf(b->out, "]}");
	}
	fprintf(b->out, "}");
}

struct submitters {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool go;
	uint64_t len, iters;
};

struct submitter {
	struct dma_bench *b;
	struct submitters *all;
	int index, fd, err;
	uint8_t *buf;
};

static void *submitter_run(void *arg)
{
	struct submitter *s = arg;
	struct submitters *all = s->all;

	pthread_mutex_lock(&all->lock);
	while (!all->go)
		pthread_cond_wait(&all->cond, &all->lock);
	pthread_mutex_unlock(&all->lock);
	for (uint64_t i = 0; i < all->iters && !s->err; i++)
		s->err = qgpu_copy_user(s->fd, QGPU_OP_COPY_TO_VRAM, 0, s->buf,
					(uint64_t)s->index * all->len, all->len, NULL);
	return NULL;
}

/*
 * Aggregate COPY_USER throughput of 1, 2 and 4 threads, each with its own
 * file, buffer and VRAM slot, started together: min(1 MiB, --max-size)
 * per call, budget / 4 per thread (2 to 16 calls).
 */
static void dma_submitters(struct dma_bench *b)
{
	static const int counts[] = { 1, 2, 4 };
	struct submitters all = { .len = b->max_size < MIB ? b->max_size : MIB };
	struct submitter s[MAX_SUBMITTERS] = { 0 };
	uint64_t iters = b->budget / 4 / all.len;

	all.iters = iters < 2 ? 2 : iters > 16 ? 16 : iters;
	fprintf(b->out, ",\"submitters\":[");
	for (unsigned int c = 0; c < sizeof(counts) / sizeof(*counts); c++) {
		int n = counts[c], started = 0, err = 0;
		pthread_t t[MAX_SUBMITTERS];
		double start;

		if ((uint64_t)n * all.len > b->info.vram_size)
			break;
		pthread_mutex_init(&all.lock, NULL);
		pthread_cond_init(&all.cond, NULL);
		all.go = false;
		for (int i = 0; i < n; i++) {
			s[i] = (struct submitter){ .b = b, .all = &all, .index = i };
			s[i].fd = qgpu_open(b->dev);
			s[i].err = s[i].fd < 0 ? -errno : 0;
			s[i].buf = qgpu_xaligned_alloc(4096, all.len);
			memset(s[i].buf, i + 1, all.len);
		}
		for (; started < n && !err; started++)
			err = -pthread_create(&t[started], NULL, submitter_run, &s[started]);
		if (err)
			started--;	/* the failed one did not start */
		pthread_mutex_lock(&all.lock);
		start = now();		/* before any of them can start */
		all.go = true;		/* the started ones run, and end */
		pthread_cond_broadcast(&all.cond);
		pthread_mutex_unlock(&all.lock);
		for (int i = 0; i < started; i++)
			pthread_join(t[i], NULL);
		start = now() - start;
		for (int i = 0; i < n; i++) {
			if (s[i].err && !err)
				err = s[i].err;
			if (s[i].fd >= 0)
				close(s[i].fd);
			free(s[i].buf);
		}
		pthread_cond_destroy(&all.cond);
		pthread_mutex_destroy(&all.lock);
		fprintf(b->out, "%s{\"threads\":%d", c ? "," : "", n);
		if (err)
			dma_print_error(b, err);
		else
			fprintf(b->out, ",\"bytes\":%llu,\"calls\":%llu,\"seconds\":%.6e",
				(unsigned long long)(n * all.iters * all.len),
				(unsigned long long)(n * all.iters), start);
		fprintf(b->out, "}");
	}
	fprintf(b->out, "]");
}

/*
 * The lazily faulted VRAM mapping: first-touch time against pages touched,
 * 1 to 16,384 pages, as far as VRAM and budget / 2 allow.
 */
static void dma_lazy(struct dma_bench *b)
{
	static const uint64_t pages[] = { 1, 16, 256, 4096, 16384 };
	long psz = sysconf(_SC_PAGESIZE);

	fprintf(b->out, ",\"lazy_touch\":[");
	for (unsigned int i = 0; i < sizeof(pages) / sizeof(*pages); i++) {
		uint64_t len = pages[i] * psz;
		double t[MIN_SAMPLES];
		int r, err = 0;

		if (len > b->info.vram_size || (i && len > b->budget / 2))
			break;
		for (r = 0; r < MIN_SAMPLES; r++) {
			volatile uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
						   MAP_SHARED, b->fd, QGPU_MMAP_VRAM_LAZY);
			double start;

			if (p == MAP_FAILED) {
				err = -errno;
				break;
			}
			start = now();
			for (uint64_t o = 0; o < len; o += psz)
				p[o] = (uint8_t)o;
			t[r] = now() - start;
			munmap((void *)p, len);
		}
		fprintf(b->out, "%s{\"pages\":%llu", i ? "," : "",
			(unsigned long long)pages[i]);
		if (err) {
			dma_print_error(b, err);
		} else {
			qsort(t, MIN_SAMPLES, sizeof(double), cmp_double);
			fprintf(b->out, ",\"n\":%d,\"median_s\":%.6e,\"min_s\":%.6e,"
				"\"max_s\":%.6e", MIN_SAMPLES,
				quantile(t, MIN_SAMPLES, 0.5), t[0], t[MIN_SAMPLES - 1]);
		}
		fprintf(b->out, "}");
	}
	fprintf(b->out, "]");
}

/* Driver statistics whose growth over the run explains its figures. */
static const char *const dma_driver_stats[] = {
	"jobs", "descriptors", "sg_descriptors", "single_page_maps", "pinned_pages",
	"bytes_to_vram", "bytes_from_vram", "irq_dma", "poll_completions",
	"timeouts", "lazy_faults",
};
#define N_DRIVER_STATS (sizeof(dma_driver_stats) / sizeof(*dma_driver_stats))

static void dma_read_stats(const char *dev, long long *v)
{
	for (unsigned int i = 0; i < N_DRIVER_STATS; i++)
		v[i] = qgpu_stat(dev, dma_driver_stats[i]);
}

static int dma_usage(void)
{
	fprintf(stderr, "usage: qgpu-bench [-d /dev/qgpuN] dma [--max-size BYTES] "
		"[--budget BYTES]\n(sizes take a K, M or G suffix)\n");
	return 2;
}

/* The set-up failed: the one JSON line says what and why. */
static int dma_setup_failed(const char *what, int err)
{
	printf("{\"ok\":false,\"error\":\"%s: %s\",\"errno\":%d}\n", what,
	       strerror(err), err);
	return 1;
}

/*
 * qgpu-bench dma: one JSON line, {"ok", "info", "sizes", "results": {op:
 * [cell per size]}, "latency", "submitters", "lazy_touch", "driver_stats"
 * (growth of the driver's statistics over the run; -1: unreadable)}. A
 * cell is {"size", "n", "inner", "runs", "median_s", "min_s", "max_s"}
 * (seconds per operation; "inner" operations per timed sample; "runs"
 * operations in all, the warm-up and the checked run included; COPY_USER
 * cells add "segments", the DMA segments of the last call), or {"size",
 * "errno", "error"}, or {"size", "skipped"}. Sizes are powers of 4 from
 * 4 KiB up to --max-size (default 64 MiB); a cell takes budget / size
 * samples (--budget, default 32 MiB), at least 3 and at most 31. "ok" is
 * false only when a checked run moved the wrong bytes, or the set-up
 * failed. The line is built in memory and printed whole at the end, so a
 * run that dies prints nothing rather than half a result.
 */
static int bench_dma(const char *dev, int argc, char **argv)
{
	struct dma_bench b = { .max_size = 64 * MIB, .budget = 32 * MIB, .dev = dev };
	struct qgpu_bo_create bc = { 0 };
	long long stats0[N_DRIVER_STATS], stats1[N_DRIVER_STATS];
	char *line = NULL;
	size_t line_len = 0;
	uint64_t v;

	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && !strcmp(argv[i], "--max-size") &&
		    !qgpu_parse_u64(argv[i + 1], &v) && v >= 4096 && v <= 4096 * MIB) {
			b.max_size = v;
			i++;
		} else if (i + 1 < argc && !strcmp(argv[i], "--budget") &&
			   !qgpu_parse_u64(argv[i + 1], &v) && v >= 4096 &&
			   v <= 4096 * MIB) {
			b.budget = v;
			i++;
		} else {
			return dma_usage();
		}
	}
	b.fd = qgpu_open(dev);
	if (b.fd < 0)
		return dma_setup_failed("open", errno);
	if (qgpu_ioctl(b.fd, QGPU_IOCTL_INFO, &b.info))
		return dma_setup_failed("QGPU_IOCTL_INFO", errno);
	b.src = qgpu_xaligned_alloc(4096, b.max_size);
	b.dst = qgpu_xaligned_alloc(4096, b.max_size);
	for (uint64_t i = 0; i < b.max_size; i++)
		b.src[i] = (uint8_t)(i * 7 + (i >> 12));
	memset(b.dst, 0, b.max_size);
	b.vram = mmap(NULL, b.info.vram_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		      b.fd, QGPU_MMAP_VRAM);
	if (b.vram == MAP_FAILED)
		return dma_setup_failed("mmap VRAM", errno);
	/* One physically contiguous BO: it can fail on a fragmented guest. */
	bc.size = b.info.bo_max_size < b.max_size ? b.info.bo_max_size : b.max_size;
	if (qgpu_ioctl(b.fd, QGPU_IOCTL_BO_CREATE, &bc)) {
		snprintf(b.bo_error, sizeof(b.bo_error), "QGPU_IOCTL_BO_CREATE of %llu "
			 "bytes: %s", (unsigned long long)bc.size, strerror(errno));
	} else {
		b.bo_handle = bc.handle;
		b.bo_size = bc.size;
		b.bo = mmap(NULL, bc.size, PROT_READ | PROT_WRITE, MAP_SHARED, b.fd,
			    bc.mmap_offset);
		if (b.bo == MAP_FAILED)
			return dma_setup_failed("mmap BO", errno);
		memcpy(b.bo, b.src, b.bo_size);
	}
	b.out = open_memstream(&line, &line_len);
	if (!b.out)
		return dma_setup_failed("open_memstream", errno);
	dma_read_stats(dev, stats0);

	fprintf(b.out, "{\"info\":{\"vram_size\":%llu,\"max_xfer\":%llu,\"bo_max_size\":%llu,"
		"\"sg_max_entries\":%u,\"ring_entries\":%u,\"dma_mask_bits\":%u,"
		"\"irq_mode\":\"%s\",\"page_size\":%ld},\"sizes\":[",
		(unsigned long long)b.info.vram_size,
		(unsigned long long)b.info.max_xfer,
		(unsigned long long)b.info.bo_max_size, b.info.sg_max_entries,
		b.info.ring_entries, b.info.dma_mask_bits,
		qgpu_irq_mode_name(b.info.irq_mode), sysconf(_SC_PAGESIZE));
	for (uint64_t size = 4096; size <= b.max_size; size *= 4)
		fprintf(b.out, "%s%llu", size > 4096 ? "," : "", (unsigned long long)size);
	fprintf(b.out, "],\"results\":{");
	for (unsigned int o = 0; o < sizeof(dma_ops) / sizeof(*dma_ops); o++) {
		fprintf(b.out, "%s\"%s\":[", o ? "," : "", dma_ops[o].name);
		for (uint64_t size = 4096; size <= b.max_size; size *= 4) {
			if (size > 4096)
				fprintf(b.out, ",");
			dma_cell(&b, &dma_ops[o], size);
		}
		fprintf(b.out, "]");
	}
	fprintf(b.out, "}");
	dma_latency(&b);
	dma_submitters(&b);
	dma_lazy(&b);
	dma_read_stats(dev, stats1);
	fprintf(b.out, ",\"driver_stats\":{");
	for (unsigned int i = 0; i < N_DRIVER_STATS; i++)
		fprintf(b.out, "%s\"%s\":%lld", i ? "," : "", dma_driver_stats[i],
			stats0[i] < 0 || stats1[i] < 0 ? -1 : stats1[i] - stats0[i]);
	fprintf(b.out, "},\"integrity_errors\":%d", b.integrity_errors);
	if (b.integrity_errors) {
		fprintf(b.out, ",\"error\":");
		qgpu_json_str(b.out, b.first_error);
	}
	fprintf(b.out, ",\"ok\":%s}\n", b.integrity_errors ? "false" : "true");
	if (fclose(b.out))
		return dma_setup_failed("open_memstream", errno);
	fwrite(line, 1, line_len, stdout);
	free(line);
	return b.integrity_errors ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *dev = NULL;

	if (argc > 2 && !strcmp(argv[1], "-d")) {
		dev = argv[2];
		argv += 2;
		argc -= 2;
	}
	if (argc > 1 && !strcmp(argv[1], "dma"))
		return bench_dma(dev, argc - 1, argv + 1);
	return bench_wc(dev, argc, argv);
}
