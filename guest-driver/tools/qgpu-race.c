// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu-race: reproducers for races between user space and the driver,
 * each bounded in time and reporting one JSON line like qgpu-tool
 * ({"ok":true,...}; "ok" says the run completed, the fields say what it
 * saw). The tests decide what counts as a bug.
 *
 *   remove-vs-mmap TRIES [--remove-after-us N] [--preempt]
 *	Per try: a thread maps a buffer object again and again while the main
 *	thread removes the device through sysfs, after a random 0..3 ms or
 *	after N µs. With --preempt, a SCHED_FIFO thread on the mapper's CPU
 *	preempts it at random moments. After remove has returned, every
 *	mapping still held must fault (SIGBUS): one that can be read kept its
 *	PTEs past remove, to memory remove has freed. The device is rescanned
 *	before the next try. (The driver's mmap_race_delay_us parameter holds
 *	each mmap(2) in the window where the race lies.)
 *
 *   signal-copy LEN ALARM_MS [WATCH_MS]
 *	A synchronous COPY_USER of LEN bytes from VRAM into a fresh buffer,
 *	with SIGALRM (a handler, no SA_RESTART) after ALARM_MS. Reports how
 *	the call ended, and how many bytes of the buffer changed during the
 *	WATCH_MS (default 300) after it returned: the device must not write
 *	to user memory once the call is over.
 *
 *   signal-fill LEN ALARM_MS
 *	The same for a synchronous VRAM_OP FILL: how it ended, its fence.
 *
 *   reset-vs-mappings RESETS
 *	Maps 64 KiB of VRAM eagerly and lazily, the register page and a
 *	buffer object, touches them all, and resets the function through
 *	sysfs; then reads every mapping and reports whether each read right
 *	and how many page faults the driver counted meanwhile (its lazy_faults
 *	and bar_refaults statistics): a mapping whose PTEs the reset zapped
 *	faults again. (pagemap cannot tell: page walks skip VM_PFNMAP.) Then
 *	RESETS more resets run while a thread reads the VRAM mappings without
 *	pause, counting the reads that raised SIGBUS.
 *
 *   access-bounds
 *	Reads 8 bytes through /proc/self/mem at 4 bytes before the end of a
 *	one-page mapping of the register page, of VRAM's last page and of a
 *	buffer object's first page: a debugger's access must stop at the end
 *	of the mapping (4 bytes), never reach past it (beyond the BAR).
 *
 *   stuck-ioctl reset|remove arg|buffer
 *	An ioctl whose argument (INFO), or whose user buffer (COPY_USER to
 *	VRAM), is in a userfaultfd page nobody serves blocks in the kernel;
 *	meanwhile the function is reset, or the device removed, through sysfs.
 *	Reports whether that finished while the ioctl was still blocked (it
 *	must not wait for user space), then serves the page and reports the
 *	ioctl's result.
 *
 *   shared-lines ITERATIONS
 *	Four threads copy from VRAM into neighbouring pieces of user memory
 *	at once, ITERATIONS times each: two pieces of one page whose ends
 *	share a cache line (40 and 88 bytes, the second starting in the
 *	first's line), and two multi-page pieces meeting inside a line. Each
 *	thread checks its piece after every copy, and canaries around them
 *	are checked at the end. The driver must never map one cache line for
 *	two device writes at once (DMA-API debugging: "cacheline tracking
 *	EEXIST"), nor let a copy touch a byte outside its piece.
 *
 *   reset-vs-cpu-access TRIES [--reset-after-us N]
 *	Per try: a thread makes one CPU access (QGPU_IOCTL_CPU_ACCESS) of
 *	64 KiB of VRAM -- a checksum on even tries, a fill with a new pattern
 *	on odd ones -- while the main thread resets the function through
 *	sysfs N µs (default 5000) after it started. The access must either
 *	fail with EAGAIN or be right: the checksum that of what VRAM holds, the
 *	fill's pattern in VRAM afterwards. (The driver's cpu_access_delay_us
 *	parameter holds each access between its check of the device and its
 *	access to VRAM, where a reset makes VRAM read all ones.) Reports how
 *	the tries ended and how many of them the reset overlapped.
 *
 *   fork-vs-zap reset|remove TRIES
 *	A process holding many mappings of the register page, of VRAM and
 *	of a buffer object forks again and again (each child exits at once)
 *	while the main thread resets the function, or removes the device and
 *	rescans the bus, TRIES times: the driver zaps those mappings
 *	(unmap_mapping_range()) while fork() copies them. On x86, a mapping
 *	one remap_pfn_range() made whole carries PAT's VM_PAT, which Linux
 *	6.12 untracks by reading the PTE at the VMA's start; a zap that meets
 *	a child's copy after fork() set VM_PAT on it and before its PTEs were
 *	copied finds none and warns (untrack_pfn). Reports how many forks
 *	ran and how many failed; the tests read the kernel log.
 */
#include <dirent.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

#include "qgpu-lib.h"

#define KEEP_MAPPINGS	8	/* newest mappings of a try that are checked */

static void usage(void)
{
	fprintf(stderr,
"usage: qgpu-race COMMAND ARGS   (device: $QGPU_DEV or /dev/qgpu0)\n"
"  remove-vs-mmap TRIES [--remove-after-us N] [--preempt]\n"
"                                     mmap a BO in a loop while the device is\n"
"                                     removed; count mappings that survive\n"
"  signal-copy LEN ALARM_MS [WATCH_MS]  SIGALRM during a synchronous copy\n"
"                                     from VRAM; count bytes written after\n"
"                                     the call returned\n"
"  signal-fill LEN ALARM_MS           SIGALRM during a synchronous fill\n"
"  reset-vs-mappings RESETS           function resets under live mappings\n"
"  access-bounds                      /proc/self/mem reads across a mapping's end\n"
"  stuck-ioctl reset|remove arg|buffer\n"
"                                     a reset or a remove while an ioctl waits\n"
"                                     on user memory (its argument or buffer)\n"
"  shared-lines ITERATIONS            concurrent copies from VRAM into\n"
"                                     pieces of memory sharing cache lines\n"
"  reset-vs-cpu-access TRIES [--reset-after-us N]\n"
"                                     function resets during CPU accesses to\n"
"                                     VRAM; count wrong results\n"
"  fork-vs-zap reset|remove TRIES     fork() in a loop with live mappings\n"
"                                     while the device is reset or removed\n");
	exit(2);
}

static void fail(const char *what, int err)
{
	printf("{\"ok\":false,\"error\":\"%s: %s\",\"errno\":%d}\n", what,
	       strerror(err), err);
	exit(1);
}

static uint64_t arg_u64(const char *s)
{
	uint64_t v;

	if (qgpu_parse_u64(s, &v))
		usage();
	return v;
}

/* ---- remove-vs-mmap ------------------------------------------------------ */

static __thread sigjmp_buf probe_jmp;	/* per thread: SIGBUS is per thread */

static void on_sigbus(int sig)
{
	siglongjmp(probe_jmp, 1);
}

/* 1 if the byte at @p can be read, 0 if reading it raises SIGBUS. */
static int readable(volatile uint8_t *p)
{
	if (sigsetjmp(probe_jmp, 1))
		return 0;
	(void)*p;
	return 1;
}

struct mapper {
	int fd;
	uint64_t offset;
	int cpu;
	atomic_int stop;
	void *maps[KEEP_MAPPINGS];	/* newest mappings, a ring */
	unsigned long count;		/* successful mmap() calls */
	int last_errno;
};

static void pin_to(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

static void *mapper_thread(void *arg)
{
	struct mapper *m = arg;

	pin_to(m->cpu);
	while (!atomic_load(&m->stop)) {
		void *p = mmap(NULL, QGPU_PAGE_SIZE, PROT_READ | PROT_WRITE,
			       MAP_SHARED, m->fd, m->offset);
		void **slot;

		if (p == MAP_FAILED) {
			m->last_errno = errno;
			break;
		}
		slot = &m->maps[m->count % KEEP_MAPPINGS];
		if (*slot)
			munmap(*slot, QGPU_PAGE_SIZE);
		*slot = p;
		m->count++;
	}
	return NULL;
}

/*
 * Preempts the mapper at random moments (sleeps up to 0.5 ms) and holds
 * its CPU for up to 2 ms: long enough for remove, on another CPU, to run
 * while the mapper stands anywhere in mmap(2) (on a preemptible kernel;
 * elsewhere at its preemption points).
 */
static void *preempter_thread(void *arg)
{
	struct mapper *m = arg;
	struct sched_param sp = { .sched_priority = 1 };
	unsigned int seed = (unsigned int)getpid();

	pin_to(m->cpu);
	pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
	while (!atomic_load(&m->stop)) {
		double until = qgpu_now_ms() + (rand_r(&seed) % 2000) / 1000.0;

		while (qgpu_now_ms() < until)
			;
		qgpu_sleep_us(20 + rand_r(&seed) % 500);
	}
	return NULL;
}

/* The device's sysfs folder, e.g. /sys/devices/pci0000:00/.../0000:01:00.0. */
static int device_sysfs(const char *node, char *out, size_t len)
{
	const char *name = strrchr(node, '/');
	char link[PATH_MAX];

	snprintf(link, sizeof(link), "/sys/class/misc/%s/device",
		 name ? name + 1 : node);
	if (!realpath(link, out))
		return -errno;
	return strlen(out) < len ? 0 : -ENAMETOOLONG;
}

static int wait_node(const char *node, double ms)
{
	double end = qgpu_now_ms() + ms;

	while (access(node, R_OK | W_OK)) {
		if (qgpu_now_ms() > end)
			return -ETIMEDOUT;
		qgpu_sleep_us(10000);
	}
	return 0;
}

/*
 * Wait for @node (after a rescan), find its sysfs folder, open it and
 * create a buffer object of @bo->size; return the file. Fails the run.
 */
static int open_with_bo(const char *node, char *sysdir, size_t len,
			struct qgpu_bo_create *bo)
{
	int fd, ret;

	ret = wait_node(node, 10000);
	if (ret)
		fail("waiting for the device node after rescan", -ret);
	ret = device_sysfs(node, sysdir, len);
	if (ret)
		fail("finding the device in sysfs", -ret);
	fd = qgpu_open(node);
	if (fd < 0)
		fail("open", errno);
	ret = qgpu_ioctl(fd, QGPU_IOCTL_BO_CREATE, bo);
	if (ret)
		fail("BO_CREATE", -ret);
	return fd;
}

static void rescan_bus(void)
{
	int ret = qgpu_write_file("/sys/bus/pci/rescan", "1");

	if (ret)
		fail("rescanning the PCI bus", -ret);
}

static void cmd_remove_vs_mmap(uint64_t tries, long remove_after_us,
			       int preempt)
{
	const char *node = qgpu_dev_path();
	unsigned long stale = 0, mmaps = 0, tries_stale = 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct sigaction sa = { .sa_handler = on_sigbus };
	unsigned int seed = (unsigned int)time(NULL);
	char sysdir[PATH_MAX], path[PATH_MAX + 16];
	double t0 = qgpu_now_ms();
	uint64_t t;
	int ret;

	sigaction(SIGBUS, &sa, NULL);
	for (t = 0; t < tries; t++) {
		struct qgpu_bo_create bo = { .size = QGPU_PAGE_SIZE };
		struct mapper m = { .cpu = 0 };
		pthread_t mt, pt;
		int i, hit = 0;

		m.fd = open_with_bo(node, sysdir, sizeof(sysdir), &bo);
		m.offset = bo.mmap_offset;

		pthread_create(&mt, NULL, mapper_thread, &m);
		if (preempt)
			pthread_create(&pt, NULL, preempter_thread, &m);
		pin_to(ncpu > 1 ? 1 : 0);
		qgpu_sleep_us(remove_after_us >= 0 ? remove_after_us
					      : rand_r(&seed) % 3000);
		snprintf(path, sizeof(path), "%s/remove", sysdir);
		ret = qgpu_write_file(path, "1");
		if (ret)
			fail("writing the device's sysfs remove", -ret);
		atomic_store(&m.stop, 1);
		pthread_join(mt, NULL);
		if (preempt)
			pthread_join(pt, NULL);

		/* remove has returned: nothing of the device may be mapped. */
		for (i = 0; i < KEEP_MAPPINGS; i++) {
			if (m.maps[i] && readable(m.maps[i])) {
				stale++;
				hit = 1;
			}
			if (m.maps[i])
				munmap(m.maps[i], QGPU_PAGE_SIZE);
		}
		tries_stale += hit;
		mmaps += m.count;
		close(m.fd);
		rescan_bus();
	}
	ret = wait_node(node, 10000);
	if (ret)
		fail("waiting for the device node after the last rescan", -ret);
	printf("{\"ok\":true,\"tries\":%llu,\"tries_with_stale_mapping\":%lu,"
	       "\"stale_mappings\":%lu,\"mmaps\":%lu,\"seconds\":%.1f}\n",
	       (unsigned long long)tries, tries_stale, stale, mmaps,
	       (qgpu_now_ms() - t0) / 1e3);
}

/* ---- signal-copy --------------------------------------------------------- */

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	alarms++;
}

static void cmd_signal_copy(uint64_t len, uint64_t alarm_ms, uint64_t watch_ms)
{
	struct sigaction sa = { .sa_handler = on_alarm };	/* no SA_RESTART */
	struct itimerval it = {
		.it_value = { alarm_ms / 1000, (alarm_ms % 1000) * 1000 },
	};
	struct qgpu_copy_user res;
	uint8_t *buf, *snap;
	uint64_t changed = 0, i, pattern_ok = 1;
	double t0, t1;
	int fd, ret;

	fd = qgpu_open(NULL);
	if (fd < 0)
		fail("open", errno);
	buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	snap = malloc(len);
	if (buf == MAP_FAILED || !snap)
		fail("allocating buffers", ENOMEM);
	memset(buf, 0xaa, len);
	/* VRAM holds 0x5a5a...: every byte the copy lands changes. */
	ret = qgpu_fill(fd, 0, len, 0x5a5a5a5a, 0, NULL);
	if (ret)
		fail("VRAM_OP FILL", -ret);

	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	t0 = qgpu_now_ms();
	ret = qgpu_copy_user(fd, QGPU_OP_COPY_FROM_VRAM, 0, buf, 0, len, &res);
	t1 = qgpu_now_ms();
	memcpy(snap, buf, len);
	qgpu_sleep_us(watch_ms * 1000);
	for (i = 0; i < len; i++) {
		changed += buf[i] != snap[i];
		pattern_ok &= buf[i] == 0x5a;
	}
	printf("{\"ok\":true,\"result\":%d,\"alarms\":%d,\"call_ms\":%.1f,"
	       "\"fence\":%llu,\"hw_status\":%u,\"bytes_changed_after_return\":%llu,"
	       "\"copied_all\":%s}\n", ret, (int)alarms, t1 - t0,
	       (unsigned long long)res.fence, res.hw_status,
	       (unsigned long long)changed, pattern_ok ? "true" : "false");
}

static void cmd_signal_fill(uint64_t len, uint64_t alarm_ms)
{
	struct sigaction sa = { .sa_handler = on_alarm };	/* no SA_RESTART */
	struct itimerval it = {
		.it_value = { alarm_ms / 1000, (alarm_ms % 1000) * 1000 },
	};
	struct qgpu_vram_op a = {
		.op = QGPU_OP_FILL, .length = len, .pattern = 0x0f0f0f0f,
	};
	double t0, t1;
	int fd, ret;

	fd = qgpu_open(NULL);
	if (fd < 0)
		fail("open", errno);
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	t0 = qgpu_now_ms();
	ret = qgpu_ioctl(fd, QGPU_IOCTL_VRAM_OP, &a);
	t1 = qgpu_now_ms();
	printf("{\"ok\":true,\"result\":%d,\"alarms\":%d,\"call_ms\":%.1f,"
	       "\"fence\":%llu,\"hw_status\":%u}\n", ret, (int)alarms, t1 - t0,
	       (unsigned long long)a.fence, a.hw_status);
}

/* ---- reset-vs-mappings ---------------------------------------------------- */

#define RESET_MAP_LEN	(64 * 1024)

/* 1 if [p, p + len) reads as @want (or, @want NULL, is readable), 0 if not, -1 on SIGBUS. */
static int reads_as(const volatile uint8_t *p, const uint8_t *want, size_t len)
{
	size_t i;

	if (sigsetjmp(probe_jmp, 1))
		return -1;
	for (i = 0; i < len; i++)
		if (want && p[i] != want[i])
			return 0;
		else if (!want)
			(void)p[i];
	return 1;
}

struct toucher {
	const volatile uint8_t *vram, *lazy;
	atomic_int stop;
	unsigned long reads, sigbus;
};

static void *toucher_thread(void *arg)
{
	struct toucher *t = arg;
	volatile size_t off = 0;	/* lives across siglongjmp() */

	while (!atomic_load(&t->stop)) {
		if (sigsetjmp(probe_jmp, 1)) {
			t->sigbus++;
		} else {
			(void)t->vram[off];
			(void)t->lazy[off];
		}
		t->reads++;
		off = (off + 4096) % RESET_MAP_LEN;
	}
	return NULL;
}

static void cmd_reset_vs_mappings(uint64_t resets)
{
	struct sigaction sa = { .sa_handler = on_sigbus };
	struct qgpu_bo_create bo = { .size = 4096 };
	char sysdir[PATH_MAX], path[PATH_MAX + 16];
	uint8_t *vram, *lazy, *bom, want[RESET_MAP_LEN];
	volatile uint32_t *regs;
	struct toucher t = { 0 };
	const char *name[4] = { "vram", "lazy", "regs", "bo" };
	long long lazy0, bar0, lazy1, bar1;
	int reads[4], fd, ret, i;
	uint64_t r;
	pthread_t th;

	sigaction(SIGBUS, &sa, NULL);
	fd = qgpu_open(NULL);
	if (fd < 0)
		fail("open", errno);
	ret = device_sysfs(qgpu_dev_path(), sysdir, sizeof(sysdir));
	if (ret)
		fail("finding the device in sysfs", -ret);
	snprintf(path, sizeof(path), "%s/reset", sysdir);
	ret = qgpu_ioctl(fd, QGPU_IOCTL_BO_CREATE, &bo);
	if (ret)
		fail("BO_CREATE", -ret);
	vram = mmap(NULL, RESET_MAP_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		    QGPU_MMAP_VRAM);
	lazy = mmap(NULL, RESET_MAP_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		    QGPU_MMAP_VRAM_LAZY);
	regs = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, QGPU_MMAP_REGS);
	bom = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		   bo.mmap_offset);
	if (vram == MAP_FAILED || lazy == MAP_FAILED || regs == MAP_FAILED ||
	    bom == MAP_FAILED)
		fail("mmap", errno);
	for (i = 0; i < RESET_MAP_LEN; i++)
		want[i] = (uint8_t)(i * 7 + 3);
	memcpy(vram, want, RESET_MAP_LEN);
	memset(bom, 0x3c, 4096);
	__sync_synchronize();
	/* Touch every page: all have PTEs now. */
	if (reads_as(lazy, want, RESET_MAP_LEN) != 1 ||
	    regs[(QGPU_REG_USER_ID - QGPU_REGS_USER_PAGE) / 4] != QGPU_ID_MAGIC)
		fail("mappings before the reset", EIO);
	lazy0 = qgpu_stat(NULL, "lazy_faults");
	bar0 = qgpu_stat(NULL, "bar_refaults");
	ret = qgpu_write_file(path, "1");
	if (ret)
		fail("writing the device's sysfs reset", -ret);
	reads[0] = reads_as(vram, want, RESET_MAP_LEN);
	reads[1] = reads_as(lazy, want, RESET_MAP_LEN);
	reads[2] = reads_as((const volatile uint8_t *)regs, NULL, 4096) == 1 &&
		   regs[(QGPU_REG_USER_ID - QGPU_REGS_USER_PAGE) / 4] == QGPU_ID_MAGIC;
	memset(want, 0x3c, 4096);
	reads[3] = reads_as(bom, want, 4096);
	lazy1 = qgpu_stat(NULL, "lazy_faults");
	bar1 = qgpu_stat(NULL, "bar_refaults");

	t.vram = vram;
	t.lazy = lazy;
	pthread_create(&th, NULL, toucher_thread, &t);
	for (r = 0; r < resets; r++) {
		ret = qgpu_write_file(path, "1");
		if (ret)
			fail("writing the device's sysfs reset", -ret);
	}
	qgpu_sleep_us(20000);
	atomic_store(&t.stop, 1);
	pthread_join(th, NULL);

	printf("{\"ok\":true,\"faults_after_reset\":{\"lazy\":%lld,"
	       "\"bar_refaults\":%lld},\"reads_right_after_reset\":{",
	       lazy1 - lazy0, bar1 - bar0);
	for (i = 0; i < 4; i++)
		printf("%s\"%s\":%d", i ? "," : "", name[i], reads[i]);
	printf("},\"resets\":%llu,\"reads_during_resets\":%lu,"
	       "\"sigbus_during_resets\":%lu}\n", (unsigned long long)resets,
	       t.reads, t.sigbus);
}

/* ---- reset-vs-cpu-access ----------------------------------------------------- */

#define CPU_RACE_LEN	(64 * 1024)	/* one chunk of a CPU access */

struct cpu_try {
	int fd;
	uint32_t op, pattern;
	int result;
	uint64_t sum;
	pthread_barrier_t go;	/* the reset's countdown starts with the access */
	double start_ms, end_ms;
};

static void *cpu_try_thread(void *arg)
{
	struct cpu_try *c = arg;

	pthread_barrier_wait(&c->go);
	c->start_ms = qgpu_now_ms();
	c->result = qgpu_cpu(c->fd, c->op, 0, CPU_RACE_LEN,
			     c->op == QGPU_CPU_FILL ? c->pattern : 0, &c->sum);
	c->end_ms = qgpu_now_ms();
	return NULL;
}

/* The checksum VRAM[0, CPU_RACE_LEN) has when it holds @pattern. */
static uint64_t pattern_sum(uint32_t pattern)
{
	static uint8_t buf[CPU_RACE_LEN];

	qgpu_pattern_fill(buf, sizeof(buf), pattern);
	return qgpu_fnv1a(QGPU_FNV_INIT, buf, sizeof(buf));
}

/* Put @pattern into VRAM[0, CPU_RACE_LEN) with no reset about; fails the run. */
static void cpu_fill_quiet(int fd, uint32_t pattern)
{
	uint64_t sum;
	int ret = qgpu_cpu(fd, QGPU_CPU_FILL, 0, CPU_RACE_LEN, pattern, NULL);

	if (!ret)
		ret = qgpu_cpu(fd, QGPU_CPU_CHECKSUM, 0, CPU_RACE_LEN, 0, &sum);
	if (ret)
		fail("CPU access without a reset", -ret);
	if (sum != pattern_sum(pattern))
		fail("VRAM does not hold what a CPU fill wrote", EIO);
}

static void cmd_reset_vs_cpu_access(uint64_t tries, long reset_after_us)
{
	unsigned long right = 0, wrong = 0, eagain = 0, other = 0;
	unsigned long overlapped = 0, lost_writes = 0;
	char sysdir[PATH_MAX], path[PATH_MAX + 16];
	uint32_t pattern = 0x5eed0000;
	double t0 = qgpu_now_ms();
	int fd, ret, other_errno = 0;
	uint64_t t;

	fd = qgpu_open(NULL);
	if (fd < 0)
		fail("open", errno);
	ret = device_sysfs(qgpu_dev_path(), sysdir, sizeof(sysdir));
	if (ret)
		fail("finding the device in sysfs", -ret);
	snprintf(path, sizeof(path), "%s/reset", sysdir);
	cpu_fill_quiet(fd, pattern);
	for (t = 0; t < tries; t++) {
		struct cpu_try c = {
			.fd = fd,
			.op = t % 2 ? QGPU_CPU_FILL : QGPU_CPU_CHECKSUM,
			.pattern = pattern + 1,
		};
		double reset_ms;
		pthread_t th;
		uint64_t sum;

		pthread_barrier_init(&c.go, NULL, 2);
		ret = pthread_create(&th, NULL, cpu_try_thread, &c);
		if (ret)
			fail("pthread_create", ret);
		pthread_barrier_wait(&c.go);
		qgpu_sleep_us(reset_after_us);
		reset_ms = qgpu_now_ms();
		ret = qgpu_write_file(path, "1");
		if (ret)
			fail("writing the device's sysfs reset", -ret);
		pthread_join(th, NULL);
		pthread_barrier_destroy(&c.go);
		/* The reset began while the access was under way. */
		overlapped += c.start_ms < reset_ms && c.end_ms > reset_ms;
		if (c.result == -EAGAIN) {
			eagain++;
		} else if (c.result) {
			other++;
			other_errno = -c.result;
		} else if (c.op == QGPU_CPU_CHECKSUM) {
			if (c.sum == pattern_sum(pattern))
				right++;
			else
				wrong++;
		} else {
			/* The fill said it was done: VRAM must hold it. */
			ret = qgpu_cpu(fd, QGPU_CPU_CHECKSUM, 0, CPU_RACE_LEN, 0,
				       &sum);
			if (ret)
				fail("checksum after a fill", -ret);
			if (sum == pattern_sum(c.pattern)) {
				right++;
			} else {
				wrong++;
				lost_writes++;
			}
		}
		/* A known pattern for the next try, whatever this one left. */
		pattern++;
		cpu_fill_quiet(fd, pattern);
	}
	close(fd);
	printf("{\"ok\":true,\"tries\":%llu,\"overlapped\":%lu,\"right\":%lu,"
	       "\"wrong\":%lu,\"lost_writes\":%lu,\"eagain\":%lu,"
	       "\"other_errors\":%lu,\"other_errno\":%d,\"seconds\":%.1f}\n",
	       (unsigned long long)tries, overlapped, right, wrong, lost_writes,
	       eagain, other, other_errno, (qgpu_now_ms() - t0) / 1e3);
}

/* ---- access-bounds --------------------------------------------------------- */

/* A one-page mapping of @off with nothing mapped after it. */
static uint8_t *map_before_hole(int fd, uint64_t off)
{
	uint8_t *two = mmap(NULL, 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	uint8_t *p;

	if (two == MAP_FAILED)
		return MAP_FAILED;
	p = mmap(two, 4096, PROT_READ, MAP_SHARED | MAP_FIXED, fd, off);
	munmap(two + 4096, 4096);
	return p;
}

/* Bytes pread(/proc/self/mem) returns for 8 bytes at @p + 4092, or -errno. */
static long mem_read_across(int mem, const uint8_t *p)
{
	uint8_t buf[8];
	ssize_t n = pread(mem, buf, sizeof(buf), (off_t)(uintptr_t)(p + 4092));

	return n < 0 ? -errno : n;
}

static void cmd_access_bounds(void)
{
	struct qgpu_bo_create bo = { .size = 8192 };
	struct qgpu_info info = { 0 };
	uint8_t *regs, *vram, *bom;
	int fd, mem, ret;

	fd = qgpu_open(NULL);
	mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || mem < 0)
		fail("open", errno);
	ret = qgpu_ioctl(fd, QGPU_IOCTL_INFO, &info);
	if (!ret)
		ret = qgpu_ioctl(fd, QGPU_IOCTL_BO_CREATE, &bo);
	if (ret)
		fail("INFO, BO_CREATE", -ret);
	regs = map_before_hole(fd, QGPU_MMAP_REGS);
	vram = map_before_hole(fd, QGPU_MMAP_VRAM + info.vram_size - 4096);
	bom = map_before_hole(fd, bo.mmap_offset);
	if (regs == MAP_FAILED || vram == MAP_FAILED || bom == MAP_FAILED)
		fail("mmap", errno);
	/* Fault them in: a debugger reads only pages a PTE maps. */
	(void)*(volatile uint32_t *)regs;
	(void)*(volatile uint8_t *)vram;
	printf("{\"ok\":true,\"bytes_read\":{\"regs\":%ld,\"vram\":%ld,\"bo\":%ld}}\n",
	       mem_read_across(mem, regs), mem_read_across(mem, vram),
	       mem_read_across(mem, bom));
}

/* ---- stuck-ioctl ------------------------------------------------------------ */

struct stuck {
	int fd;
	int use_buffer;		/* the user buffer, not the argument, is stuck */
	void *page;		/* the userfaultfd page nobody serves */
	int result;		/* the ioctl's: 0 or -errno */
	const char *action_path;
	atomic_int action_done;
	double action_ms;
};

static void *stuck_ioctl_thread(void *arg)
{
	struct stuck *st = arg;

	if (st->use_buffer) {
		/* COPY_USER from the page: pinning it faults. */
		struct qgpu_copy_user a = {
			.op = QGPU_OP_COPY_TO_VRAM,
			.user_ptr = (uintptr_t)st->page,
			.length = 4096,
		};

		st->result = qgpu_ioctl(st->fd, QGPU_IOCTL_COPY_USER, &a);
	} else {
		/* The argument itself: copying it in faults. */
		st->result = qgpu_ioctl(st->fd, QGPU_IOCTL_INFO, st->page);
	}
	return NULL;
}

static void *action_thread(void *arg)
{
	struct stuck *st = arg;
	double t0 = qgpu_now_ms();

	if (qgpu_write_file(st->action_path, "1") == 0)
		st->action_ms = qgpu_now_ms() - t0;
	atomic_store(&st->action_done, 1);
	return NULL;
}

static void cmd_stuck_ioctl(const char *action, const char *where)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };
	struct uffdio_zeropage zero = { 0 };
	struct stuck st = { .action_ms = -1 };
	char sysdir[PATH_MAX], path[PATH_MAX + 16];
	struct uffd_msg msg;
	struct pollfd pfd;
	pthread_t io, act;
	double end;
	int uffd, ret, done_while_blocked;

	if (strcmp(action, "reset") && strcmp(action, "remove"))
		usage();
	if (strcmp(where, "arg") && strcmp(where, "buffer"))
		usage();
	st.use_buffer = !strcmp(where, "buffer");
	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (uffd < 0) {
		printf("{\"ok\":true,\"supported\":false,\"errno\":%d}\n", errno);
		return;
	}
	if (ioctl(uffd, UFFDIO_API, &api))
		fail("UFFDIO_API", errno);
	st.fd = qgpu_open(NULL);
	if (st.fd < 0)
		fail("open", errno);
	ret = device_sysfs(qgpu_dev_path(), sysdir, sizeof(sysdir));
	if (ret)
		fail("finding the device in sysfs", -ret);
	snprintf(path, sizeof(path), "%s/%s", sysdir, action);
	st.action_path = path;
	st.page = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (st.page == MAP_FAILED)
		fail("mmap", errno);
	reg.range.start = (uintptr_t)st.page;
	reg.range.len = 4096;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		fail("UFFDIO_REGISTER", errno);
	pthread_create(&io, NULL, stuck_ioctl_thread, &st);
	/* The ioctl is blocked once it faulted on the page. */
	pfd.fd = uffd;
	pfd.events = POLLIN;
	if (poll(&pfd, 1, 10000) != 1 || read(uffd, &msg, sizeof(msg)) != sizeof(msg))
		fail("waiting for the ioctl to fault on user memory", ETIMEDOUT);
	pthread_create(&act, NULL, action_thread, &st);
	end = qgpu_now_ms() + 5000;
	while (!atomic_load(&st.action_done) && qgpu_now_ms() < end)
		qgpu_sleep_us(10000);
	done_while_blocked = atomic_load(&st.action_done);
	zero.range.start = (uintptr_t)st.page;
	zero.range.len = 4096;
	if (ioctl(uffd, UFFDIO_ZEROPAGE, &zero))
		fail("UFFDIO_ZEROPAGE", errno);
	pthread_join(io, NULL);
	pthread_join(act, NULL);
	printf("{\"ok\":true,\"supported\":true,\"action\":\"%s\",\"where\":\"%s\","
	       "\"done_while_blocked\":%s,\"action_ms\":%.1f,\"ioctl_result\":%d}\n",
	       action, where, done_while_blocked ? "true" : "false", st.action_ms,
	       st.result);
}

/* ---- shared-lines ----------------------------------------------------------- */

#define SHARED_BUF_LEN	(4 * 4096)
#define SHARED_CANARY	0xc5

struct piece {
	int fd;
	uint8_t *dst;
	uint64_t vram_off, len, iterations;
	uint32_t flags;
	uint8_t want;			/* the byte VRAM holds for this piece */
	uint64_t copies, mismatches;
	int first_errno;
};

static void *piece_worker(void *arg)
{
	struct piece *pc = arg;
	struct qgpu_copy_user res;
	uint64_t it, i;
	int ret;

	for (it = 0; it < pc->iterations; it++) {
		/* The copy must change every byte of the piece back. */
		memset(pc->dst, (uint8_t)~pc->want, pc->len);
		ret = qgpu_copy_user(pc->fd, QGPU_OP_COPY_FROM_VRAM, pc->flags,
				     pc->dst, pc->vram_off, pc->len, &res);
		if (ret) {
			if (!pc->first_errno)
				pc->first_errno = -ret;
			continue;
		}
		pc->copies++;
		for (i = 0; i < pc->len; i++)
			pc->mismatches += pc->dst[i] != pc->want;
	}
	return NULL;
}

static void cmd_shared_lines(uint64_t iterations)
{
	/* Offsets in the buffer; the second pair meets inside a line. */
	static const struct { uint64_t at, len; uint32_t flags; } layout[] = {
		{ 64, 40, 0 },
		{ 104, 88, 0 },
		{ 4096 + 8, 6000, QGPU_SUBMIT_F_FORCE_SG },
		{ 4096 + 6008, 4000, QGPU_SUBMIT_F_FORCE_SG },
	};
	enum { N = sizeof(layout) / sizeof(layout[0]) };
	struct piece pcs[N];
	pthread_t th[N];
	uint64_t copies = 0, mismatches = 0, canary_bad = 0, at;
	uint8_t *buf;
	int fd, ret, first_errno = 0, k;

	fd = qgpu_open(NULL);
	if (fd < 0)
		fail("open", errno);
	buf = mmap(NULL, SHARED_BUF_LEN, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED)
		fail("mmap", errno);
	memset(buf, SHARED_CANARY, SHARED_BUF_LEN);
	for (k = 0; k < N; k++) {
		pcs[k] = (struct piece){
			.fd = fd, .dst = buf + layout[k].at,
			.vram_off = (uint64_t)k << 16, .len = layout[k].len,
			.flags = layout[k].flags, .iterations = iterations,
			.want = (uint8_t)(0x11 * (k + 1)),
		};
		ret = qgpu_fill(fd, pcs[k].vram_off, 65536,
				0x01010101u * pcs[k].want, 0, NULL);
		if (ret)
			fail("VRAM_OP FILL", -ret);
	}
	for (k = 0; k < N; k++)
		if (pthread_create(&th[k], NULL, piece_worker, &pcs[k]))
			fail("pthread_create", EAGAIN);
	for (k = 0; k < N; k++) {
		pthread_join(th[k], NULL);
		copies += pcs[k].copies;
		mismatches += pcs[k].mismatches;
		if (!first_errno)
			first_errno = pcs[k].first_errno;
	}
	/* Bytes no piece covers keep their canary. */
	for (at = 0; at < SHARED_BUF_LEN; at++) {
		int covered = 0;

		for (k = 0; k < N; k++)
			covered |= at >= layout[k].at &&
				   at < layout[k].at + layout[k].len;
		if (!covered)
			canary_bad += buf[at] != SHARED_CANARY;
	}
	printf("{\"ok\":true,\"copies\":%llu,\"expected\":%llu,\"mismatches\":%llu,"
	       "\"canary_bytes_changed\":%llu,\"first_errno\":%d}\n",
	       (unsigned long long)copies,
	       (unsigned long long)(iterations * N),
	       (unsigned long long)mismatches,
	       (unsigned long long)canary_bad, first_errno);
}

/* ---- fork-vs-zap ----------------------------------------------------------- */

#define FORK_MAPS	64	/* mappings of each kind: fork() spends its time on them */

struct forker {
	atomic_int stop;
	unsigned long forks, failed;
	int last_errno;
};

static void *forker_thread(void *arg)
{
	struct forker *f = arg;
	pid_t pid;
	int st;

	pin_to(0);
	while (!atomic_load(&f->stop)) {
		pid = fork();
		if (pid == 0)
			_exit(0);
		if (pid < 0) {
			/* fork() fails when it cannot copy a mapping's PAT state. */
			f->failed++;
			f->last_errno = errno;
			continue;
		}
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		f->forks++;
	}
	return NULL;
}

/* Map FORK_MAPS pages of the register page, eager VRAM and a BO on @fd. */
static int map_many(int fd, uint64_t bo_offset, void **maps)
{
	static const int prot[3] = { PROT_READ, PROT_READ | PROT_WRITE,
				     PROT_READ | PROT_WRITE };
	uint64_t off[3] = { QGPU_MMAP_REGS, QGPU_MMAP_VRAM, bo_offset };
	int k, i;

	for (k = 0; k < 3; k++)
		for (i = 0; i < FORK_MAPS; i++) {
			void *p = mmap(NULL, QGPU_PAGE_SIZE, prot[k], MAP_SHARED,
				       fd, off[k]);

			if (p == MAP_FAILED)
				return -errno;
			/* Fault in what the mapping did not fill (registers: 32 bits). */
			(void)*(volatile uint32_t *)p;
			maps[k * FORK_MAPS + i] = p;
		}
	return 0;
}

static void cmd_fork_vs_zap(const char *action, uint64_t tries)
{
	int remove = !strcmp(action, "remove");
	const char *node = qgpu_dev_path();
	unsigned int seed = (unsigned int)time(NULL);
	char sysdir[PATH_MAX], path[PATH_MAX + 16];
	unsigned long forks = 0, fork_failures = 0;
	void *maps[3 * FORK_MAPS];
	double t0 = qgpu_now_ms();
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t t;
	int fd, ret, i;

	if (!remove && strcmp(action, "reset"))
		usage();
	for (t = 0; t < tries; t++) {
		struct qgpu_bo_create bo = { .size = QGPU_PAGE_SIZE };
		struct forker f = { 0 };
		pthread_t ft;

		fd = open_with_bo(node, sysdir, sizeof(sysdir), &bo);
		/* New mappings every try: a zap ends a mapping's PAT tracking. */
		ret = map_many(fd, bo.mmap_offset, maps);
		if (ret)
			fail("mmap", -ret);
		pthread_create(&ft, NULL, forker_thread, &f);
		pin_to(ncpu > 1 ? 1 : 0);
		qgpu_sleep_us(rand_r(&seed) % 3000);
		snprintf(path, sizeof(path), "%s/%s", sysdir, action);
		ret = qgpu_write_file(path, "1");
		if (ret)
			fail(remove ? "writing the device's sysfs remove" :
				      "writing the device's sysfs reset", -ret);
		atomic_store(&f.stop, 1);
		pthread_join(ft, NULL);
		forks += f.forks;
		fork_failures += f.failed;
		for (i = 0; i < 3 * FORK_MAPS; i++)
			munmap(maps[i], QGPU_PAGE_SIZE);
		close(fd);
		if (remove) {
			rescan_bus();
		}
	}
	ret = wait_node(node, 10000);
	if (ret)
		fail("waiting for the device node at the end", -ret);
	printf("{\"ok\":true,\"action\":\"%s\",\"tries\":%llu,\"forks\":%lu,"
	       "\"fork_failures\":%lu,\"seconds\":%.1f}\n", action,
	       (unsigned long long)tries, forks, fork_failures,
	       (qgpu_now_ms() - t0) / 1e3);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 3 && !strcmp(argv[1], "remove-vs-mmap")) {
		long after = -1;
		int i, preempt = 0;

		for (i = 3; i < argc; i++) {
			if (!strcmp(argv[i], "--preempt"))
				preempt = 1;
			else if (!strcmp(argv[i], "--remove-after-us") && i + 1 < argc)
				after = (long)arg_u64(argv[++i]);
			else
				usage();
		}
		cmd_remove_vs_mmap(arg_u64(argv[2]), after, preempt);
	}
	else if (argc >= 4 && !strcmp(argv[1], "signal-copy"))
		cmd_signal_copy(arg_u64(argv[2]), arg_u64(argv[3]),
				argc >= 5 ? arg_u64(argv[4]) : 300);
	else if (argc >= 2 && !strcmp(argv[1], "access-bounds"))
		cmd_access_bounds();
	else if (argc >= 4 && !strcmp(argv[1], "stuck-ioctl"))
		cmd_stuck_ioctl(argv[2], argv[3]);
	else if (argc >= 3 && !strcmp(argv[1], "reset-vs-mappings"))
		cmd_reset_vs_mappings(arg_u64(argv[2]));
	else if (argc >= 4 && !strcmp(argv[1], "signal-fill"))
		cmd_signal_fill(arg_u64(argv[2]), arg_u64(argv[3]));
	else if (argc >= 3 && !strcmp(argv[1], "shared-lines"))
		cmd_shared_lines(arg_u64(argv[2]));
	else if (argc >= 3 && !strcmp(argv[1], "reset-vs-cpu-access")) {
		long after = 5000;
		int i;

		for (i = 3; i < argc; i++) {
			if (!strcmp(argv[i], "--reset-after-us") && i + 1 < argc)
				after = (long)arg_u64(argv[++i]);
			else
				usage();
		}
		cmd_reset_vs_cpu_access(arg_u64(argv[2]), after);
	}
	else if (argc >= 4 && !strcmp(argv[1], "fork-vs-zap"))
		cmd_fork_vs_zap(argv[2], arg_u64(argv[3]));
	else
		usage();
	return 0;
}
