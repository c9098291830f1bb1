// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu-stress: processes x threads hammering one device for a bounded time,
 * checking every byte they can check, while the device is reset, removed
 * and rescanned, and the workers are signalled, stopped and continued.
 *
 *   qgpu-stress [--seconds N] [--seed S] [--procs P] [--threads T]
 *               [--signals] [--stop-cont] [--reset-every-ms MS]
 *               [--remove-every-ms MS] [--remove-from-ms MS]
 *
 * Each worker thread owns a 1 MiB slot at the top of VRAM and loops over
 * random operations (seeded: --seed and the thread's index give the same
 * sequence of choices again): COPY_USER round trips (single page, SG,
 * unaligned), buffer objects (create, map, fill through the mapping,
 * COPY_BO sync and async, partial munmap, MADV_DONTNEED, destroy), async
 * VRAM fills waited for with WAIT_FENCE, VRAM-to-VRAM copies, eager and
 * lazy VRAM mappings written and read back, and fork() with live mappings
 * (the child checks what it inherited). What the device did is verified
 * whenever the calls that did it all succeeded; a device error, a reset
 * (-EIO), removal (-ENODEV, SIGBUS) only abandons the operation. Buffers
 * a copy from VRAM wrote are checksummed when the call returns and again
 * later: the device must not write user memory after the call is over.
 *
 * With --signals, SIGALRM arrives every 300 us in every worker (a handler,
 * no SA_RESTART); with --stop-cont, the controller stops and continues
 * random workers; --reset-every-ms resets the function through sysfs,
 * --remove-every-ms removes the device and rescans the bus, the first time
 * --remove-from-ms into the run (default: one period in). Keep that apart from
 * a hot-unplug the host does meanwhile: Linux 6.12 frees the pci_dev of an
 * ACPI eject under a concurrent sysfs remove (KASAN: use-after-free in
 * pci_stop_bus_device), a PCI core race outside the driver.
 *
 * One JSON line reports what ran; "ok" is false on any integrity failure,
 * late write, crashed or stuck worker. Exit status 0 only if ok.
 */
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

#include "qgpu-lib.h"

#define SLOT		(1u << 20)	/* VRAM per worker thread */
#define MAX_WORKERS	8
#define XFER_MAX	(256u << 10)
#define RETRY_MS	200		/* a reset or removal that could not happen */

enum op { OP_COPY, OP_BO, OP_FILL, OP_COPY_VRAM, OP_MMAP, OP_FORK, OP_NR };
static const char *const op_names[OP_NR] = {
	"copy_user", "bo", "fill_async", "copy_vram", "mmap", "fork",
};

/* Counters of one worker thread, in memory shared with the controller. */
struct counters {
	atomic_ulong ops[OP_NR];	/* completed and verified */
	atomic_ulong abandoned;		/* a call failed: nothing to verify */
	atomic_ulong errnos[150];	/* by errno */
	atomic_ulong sigbus;
	atomic_ulong integrity_failures;
	atomic_ulong late_writes;
	atomic_ulong reopens;
	atomic_ulong alarms;		/* SIGALRMs this worker thread took */
	char first_failure[256];
};

struct shared {
	atomic_int stop;
	atomic_int failure_taken;
	struct counters c[MAX_WORKERS];
};

static struct shared *sh;
static const char *node;
static uint64_t vram_size;

/* xorshift64*: the same seed gives the same choices. */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dULL;
}

/*
 * A length in [1, max], log-uniform: as many short ones as long ones. The
 * operations checked by a CPU checksum of VRAM need it: the kernel stops a
 * checksum at a signal, and on a slow guest (a debug kernel under TCG) a long
 * one always meets one of the 300 us alarms, so with uniform lengths up to a
 * MiB no fill completed in a 30 s run.
 */
static size_t rnd_len(uint64_t *s, size_t max)
{
	size_t cap = (size_t)1 << (1 + rnd(s) % (64 - __builtin_clzll(max)));

	return 1 + rnd(s) % (cap < max ? cap : max);
}

/* ---- per-thread state ------------------------------------------------------ */

struct worker {
	int index;			/* slot and counters */
	uint64_t seed;
	int fd;
	uint64_t slot;			/* VRAM offset of the slot */
	struct counters *c;
	uint8_t *a, *b;			/* user buffers, a slot + two pages */
};

static __thread sigjmp_buf bus_jmp;
static __thread volatile int bus_armed;
static __thread struct counters *my_counters;	/* for signal handlers */

static void on_sigbus(int sig)
{
	if (bus_armed)
		siglongjmp(bus_jmp, 1);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void on_alarm(int sig)
{
	if (my_counters)
		atomic_fetch_add(&my_counters->alarms, 1);
}

static void failure(struct worker *w, const char *fmt, ...)
{
	va_list ap;

	atomic_fetch_add(&w->c->integrity_failures, 1);
	if (atomic_exchange(&sh->failure_taken, 1))
		return;
	va_start(ap, fmt);
	vsnprintf(w->c->first_failure, sizeof(w->c->first_failure), fmt, ap);
	va_end(ap);
}

/* A call failed with -@err: count it; a device gone means reopening. */
static void abandon(struct worker *w, int err)
{
	atomic_fetch_add(&w->c->abandoned, 1);
	if (err > 0 && err < 150)
		atomic_fetch_add(&w->c->errnos[err], 1);
	if (err == ENODEV && w->fd >= 0) {
		close(w->fd);
		w->fd = -1;
	}
}

static void pattern(uint8_t *p, size_t n, uint64_t *s)
{
	uint64_t v = rnd(s);
	size_t i;

	for (i = 0; i < n; i++) {
		if (!(i & 7))
			v = rnd(s);
		p[i] = (uint8_t)(v >> (8 * (i & 7)));
	}
}

static uint64_t sum(const void *p, size_t n)
{
	return qgpu_fnv1a(QGPU_FNV_INIT, p, n);
}

/* WAIT_FENCE, retried on signals: 0 or -errno. */
static int wait_fence(int fd, uint64_t fence)
{
	int ret;

	do
		ret = qgpu_wait(fd, fence, 5000000000ULL, NULL);
	while (ret == -EINTR && !atomic_load(&sh->stop));
	return ret;
}

/*
 * Say where a round trip went wrong: the first byte that differs, its offset
 * in its user page (a DMA that starts on a page's last byte reaches that page
 * through one IOMMU mapping and the next byte through another), and how many
 * bytes differ.
 */
static void round_trip_differs(struct worker *w, const uint8_t *sent,
			       const uint8_t *got, uint64_t voff, size_t len)
{
	size_t i, first = len, n = 0;

	for (i = 0; i < len; i++) {
		if (sent[i] == got[i])
			continue;
		if (first == len)
			first = i;
		n++;
	}
	/* Both buffers are page aligned, at the same offset: one page offset. */
	failure(w, "copy_user round trip differs (vram %#llx len %zu): %zu byte(s), "
		"the first at +%zu (user page offset %#lx)", (unsigned long long)voff,
		len, n, first, (unsigned long)((uintptr_t)(sent + first) & 4095));
}

/* ---- operations -------------------------------------------------------------- */

/* COPY_USER to VRAM and back, any alignment, single page or SG. */
static void op_copy(struct worker *w, uint64_t *s)
{
	size_t len = 1 + rnd(s) % XFER_MAX, mis = rnd(s) % 4096;
	uint64_t voff = w->slot + rnd(s) % (SLOT - len);
	uint32_t flags = rnd(s) % 4 == 0 ? QGPU_SUBMIT_F_FORCE_SG : 0;
	uint64_t after;
	int ret;

	pattern(w->a + mis, len, s);
	ret = qgpu_copy_user(w->fd, QGPU_OP_COPY_TO_VRAM, flags, w->a + mis,
			     voff, len, NULL);
	if (ret)
		return abandon(w, -ret);
	memset(w->b, 0xee, len + 4096);
	ret = qgpu_copy_user(w->fd, QGPU_OP_COPY_FROM_VRAM, flags, w->b + mis,
			     voff, len, NULL);
	/* Whatever the result, the buffer must not change from now on. */
	after = sum(w->b, len + 4096);
	if (!ret && memcmp(w->a + mis, w->b + mis, len))
		round_trip_differs(w, w->a + mis, w->b + mis, voff, len);
	qgpu_sleep_us(rnd(s) % 2000);
	if (sum(w->b, len + 4096) != after) {
		atomic_fetch_add(&w->c->late_writes, 1);
		failure(w, "buffer changed after COPY_USER returned %d", ret);
	}
	if (ret)
		return abandon(w, -ret);
	atomic_fetch_add(&w->c->ops[OP_COPY], 1);
}

/* A BO: create, map, fill through the mapping, to VRAM and back. */
static void op_bo(struct worker *w, uint64_t *s)
{
	struct qgpu_bo_create bc = { .size = 4096 * (1 + rnd(s) % 64) };
	struct qgpu_bo_destroy bd = { 0 };
	struct qgpu_copy_bo cb = { 0 };
	uint8_t *volatile p = MAP_FAILED;
	size_t len;
	int ret;

	ret = qgpu_ioctl(w->fd, QGPU_IOCTL_BO_CREATE, &bc);
	if (ret)
		return abandon(w, -ret);
	len = bc.size;
	bd.handle = bc.handle;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, w->fd,
		 bc.mmap_offset);
	if (p == MAP_FAILED) {
		ret = -errno;
		goto out;
	}
	if (sigsetjmp(bus_jmp, 1)) {
		bus_armed = 0;
		atomic_fetch_add(&w->c->sigbus, 1);
		ret = -ENODEV;
		goto out;
	}
	bus_armed = 1;
	pattern(p, len, s);
	memcpy(w->a, (void *)p, len);
	cb.handle = bc.handle;
	cb.op = QGPU_OP_COPY_TO_VRAM;
	cb.vram_offset = w->slot;
	cb.length = len;
	cb.flags = rnd(s) % 2 ? QGPU_SUBMIT_F_ASYNC : 0;
	ret = qgpu_ioctl(w->fd, QGPU_IOCTL_COPY_BO, &cb);
	if (!ret && cb.flags)
		ret = wait_fence(w->fd, cb.fence);
	if (ret)
		goto out;
	memset((void *)p, 0, len);
	if (rnd(s) % 2)		/* only an IOMMU's page mappings may drop PTEs */
		madvise((void *)p, len, MADV_DONTNEED);
	cb.op = QGPU_OP_COPY_FROM_VRAM;
	cb.flags = 0;
	ret = qgpu_ioctl(w->fd, QGPU_IOCTL_COPY_BO, &cb);
	if (ret)
		goto out;
	if (memcmp((void *)p, w->a, len))
		failure(w, "BO round trip differs (%zu bytes)", len);
	if (len > 4096) {	/* partial munmap: the rest stays valid */
		munmap((void *)p, 4096);
		if (memcmp((void *)(p + 4096), w->a + 4096, len - 4096))
			failure(w, "BO mapping changed by a partial munmap");
		munmap((void *)(p + 4096), len - 4096);
		p = MAP_FAILED;
	}
	atomic_fetch_add(&w->c->ops[OP_BO], 1);
out:
	bus_armed = 0;
	if (p != MAP_FAILED)
		munmap((void *)p, len);
	if (bd.handle && w->fd >= 0)
		qgpu_ioctl(w->fd, QGPU_IOCTL_BO_DESTROY, &bd);
	if (ret)
		abandon(w, -ret);
}

/* An async fill, waited for, checked by the kernel's CPU checksum. */
static void op_fill(struct worker *w, uint64_t *s)
{
	size_t len = 4 * rnd_len(s, SLOT / 4 - 1);
	uint64_t voff = w->slot + 4 * (rnd(s) % ((SLOT - len) / 4 + 1));
	uint32_t pat = (uint32_t)rnd(s);
	uint64_t fence, got;
	int ret;

	ret = qgpu_fill(w->fd, voff, len, pat, QGPU_SUBMIT_F_ASYNC, &fence);
	if (!ret)
		ret = wait_fence(w->fd, fence);
	if (!ret)
		ret = qgpu_cpu(w->fd, QGPU_CPU_CHECKSUM, voff, len, 0, &got);
	if (ret)
		return abandon(w, -ret);
	qgpu_pattern_fill(w->b, len, pat);
	if (got != sum(w->b, len))
		failure(w, "async fill of %zu bytes at %#llx differs", len,
			(unsigned long long)voff);
	atomic_fetch_add(&w->c->ops[OP_FILL], 1);
}

/* VRAM to VRAM inside the slot, overlapping either way (memmove). */
static void op_copy_vram(struct worker *w, uint64_t *s)
{
	size_t len = rnd_len(s, SLOT / 2);
	uint64_t src = w->slot + rnd(s) % (SLOT - len);
	uint64_t dst = w->slot + rnd(s) % (SLOT - len);
	struct qgpu_vram_op a = {
		.op = QGPU_OP_COPY_VRAM, .src_offset = src, .dst_offset = dst,
		.length = len,
	};
	uint64_t got;
	int ret;

	pattern(w->a, len, s);
	ret = qgpu_copy_user(w->fd, QGPU_OP_COPY_TO_VRAM, 0, w->a, src, len,
			     NULL);
	if (!ret)
		ret = qgpu_ioctl(w->fd, QGPU_IOCTL_VRAM_OP, &a);
	if (!ret)
		ret = qgpu_cpu(w->fd, QGPU_CPU_CHECKSUM, dst, len, 0, &got);
	if (ret)
		return abandon(w, -ret);
	if (got != sum(w->a, len))
		failure(w, "copy_vram %#llx -> %#llx (%zu) differs",
			(unsigned long long)src, (unsigned long long)dst, len);
	atomic_fetch_add(&w->c->ops[OP_COPY_VRAM], 1);
}

/* Write the slot through an eager mapping, read it through a lazy one. */
static void op_mmap(struct worker *w, uint64_t *s)
{
	size_t len = 4096 * (1 + rnd(s) % 32);
	uint64_t voff = w->slot + 4096 * (rnd(s) % ((SLOT - len) / 4096));
	uint8_t *volatile e = MAP_FAILED, *volatile l = MAP_FAILED;
	volatile int ret = 0;		/* lives across siglongjmp() */

	e = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, w->fd,
		 QGPU_MMAP_VRAM + voff);
	l = mmap(NULL, len, PROT_READ, MAP_SHARED, w->fd,
		 QGPU_MMAP_VRAM_LAZY + voff);
	if (e == MAP_FAILED || l == MAP_FAILED) {
		ret = -errno;
		goto out;
	}
	if (sigsetjmp(bus_jmp, 1)) {
		bus_armed = 0;
		atomic_fetch_add(&w->c->sigbus, 1);
		ret = -ENODEV;
		goto out;
	}
	bus_armed = 1;
	pattern(w->a, len, s);
	memcpy((void *)e, w->a, len);
	__sync_synchronize();
	if (memcmp((void *)l, w->a, len))
		failure(w, "lazy view of an eager write differs (%zu at %#llx)",
			len, (unsigned long long)voff);
	if (len > 4096)		/* VM_PFNMAP refuses MADV_DONTNEED: harmless */
		madvise((void *)l, len, MADV_DONTNEED);
	atomic_fetch_add(&w->c->ops[OP_MMAP], 1);
out:
	bus_armed = 0;
	if (e != MAP_FAILED)
		munmap((void *)e, len);
	if (l != MAP_FAILED)
		munmap((void *)l, len);
	if (ret)
		abandon(w, -ret);
}

/* fork() with a live mapping: the child sees the same VRAM. */
static void op_fork(struct worker *w, uint64_t *s)
{
	size_t len = 4096 * (1 + rnd(s) % 8);
	uint8_t *e;
	pid_t pid;
	int st;

	e = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, w->fd,
		 QGPU_MMAP_VRAM + w->slot);
	if (e == MAP_FAILED)
		return abandon(w, errno);
	pattern(w->a, len, s);
	if (sigsetjmp(bus_jmp, 1)) {
		bus_armed = 0;
		atomic_fetch_add(&w->c->sigbus, 1);
		munmap(e, len);
		return abandon(w, ENODEV);
	}
	bus_armed = 1;
	memcpy(e, w->a, len);
	bus_armed = 0;
	pid = fork();
	if (pid == 0) {
		/* A removal while the child reads is a SIGBUS: it dies of it. */
		signal(SIGBUS, SIG_DFL);
		_exit(memcmp(e, w->a, len) ? 2 : 0);
	}
	munmap(e, len);
	if (pid < 0)
		return abandon(w, errno);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 2)
		failure(w, "a forked child saw other VRAM contents");
	else if (!WIFEXITED(st) || WEXITSTATUS(st))
		return abandon(w, ENODEV);	/* SIGBUS: removed meanwhile */
	atomic_fetch_add(&w->c->ops[OP_FORK], 1);
}

static void *worker_thread(void *arg)
{
	struct worker *w = arg;
	uint64_t s = w->seed;

	my_counters = w->c;
	w->a = qgpu_xaligned_alloc(4096, SLOT + 8192);
	w->b = qgpu_xaligned_alloc(4096, SLOT + 8192);
	w->fd = -1;
	while (!atomic_load(&sh->stop)) {
		if (w->fd < 0) {
			w->fd = qgpu_open(node);
			if (w->fd < 0) {
				qgpu_sleep_us(10000);
				continue;
			}
			atomic_fetch_add(&w->c->reopens, 1);
		}
		switch (rnd(&s) % OP_NR) {
		case OP_COPY: op_copy(w, &s); break;
		case OP_BO: op_bo(w, &s); break;
		case OP_FILL: op_fill(w, &s); break;
		case OP_COPY_VRAM: op_copy_vram(w, &s); break;
		case OP_MMAP: op_mmap(w, &s); break;
		case OP_FORK: op_fork(w, &s); break;
		}
	}
	if (w->fd >= 0)
		close(w->fd);
	return NULL;
}

/* One worker process: @threads threads, counters from @first on. */
static void worker_process(int first, int threads, uint64_t seed, int signals)
{
	struct sigaction sa = { .sa_handler = on_sigbus };
	struct sigaction al = { .sa_handler = on_alarm };	/* no SA_RESTART */
	struct itimerval it = { { 0, 300 }, { 0, 300 } };
	struct worker w[MAX_WORKERS];
	pthread_t t[MAX_WORKERS];
	int i;

	sigaction(SIGBUS, &sa, NULL);
	if (signals) {
		sigaction(SIGALRM, &al, NULL);
		setitimer(ITIMER_REAL, &it, NULL);
	}
	for (i = 0; i < threads; i++) {
		w[i].index = first + i;
		w[i].seed = seed * 0x9e3779b97f4a7c15ULL + first + i + 1;
		w[i].slot = vram_size - (uint64_t)MAX_WORKERS * SLOT +
			    (uint64_t)(first + i) * SLOT;
		w[i].c = &sh->c[first + i];
		pthread_create(&t[i], NULL, worker_thread, &w[i]);
	}
	/*
	 * The timer's SIGALRM goes to the process, and the kernel would hand
	 * it to this thread, idle in pthread_join(): block it here, so that it
	 * interrupts the workers' calls.
	 */
	if (signals) {
		sigset_t alrm;

		sigemptyset(&alrm);
		sigaddset(&alrm, SIGALRM);
		pthread_sigmask(SIG_BLOCK, &alrm, NULL);
	}
	for (i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	_exit(0);
}

/* ---- controller -------------------------------------------------------------- */

static void usage(void)
{
	fprintf(stderr,
"usage: qgpu-stress [--seconds N] [--seed S] [--procs P] [--threads T]\n"
"                   [--signals] [--stop-cont] [--reset-every-ms MS]\n"
"                   [--remove-every-ms MS] [--remove-from-ms MS]\n"
"                   (device: $QGPU_DEV or /dev/qgpu0)\n"
"  P x T <= %d; see the comment at the top of qgpu-stress.c\n", MAX_WORKERS);
	exit(2);
}

static uint64_t arg(int argc, char **argv, int *i)
{
	uint64_t v;

	if (*i + 1 >= argc || qgpu_parse_u64(argv[*i + 1], &v))
		usage();
	*i += 1;
	return v;
}

int main(int argc, char **argv)
{
	uint64_t seconds = 60, seed = 1, procs = 2, threads = 2;
	uint64_t reset_ms = 0, remove_ms = 0, remove_from_ms = UINT64_MAX;
	int signals = 0, stop_cont = 0, stuck = 0, crashed = 0, i, fd, ok;
	unsigned long resets = 0, removals = 0, stops = 0;
	char sysdir[PATH_MAX], link[PATH_MAX], path[PATH_MAX + 16];
	struct qgpu_info info = { 0 };
	double t0, next_reset, next_remove;
	pid_t pids[MAX_WORKERS];
	unsigned long total[OP_NR] = { 0 }, abandoned = 0, sigbus = 0;
	unsigned long integrity = 0, late = 0, reopens = 0, alarms = 0;
	const char *first = "";
	uint64_t rs;
	const char *name;

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--seconds"))
			seconds = arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--seed"))
			seed = arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--procs"))
			procs = arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--threads"))
			threads = arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--reset-every-ms"))
			reset_ms = arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--remove-every-ms"))
			remove_ms = arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--remove-from-ms"))
			remove_from_ms = arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--signals"))
			signals = 1;
		else if (!strcmp(argv[i], "--stop-cont"))
			stop_cont = 1;
		else
			usage();
	}
	if (!procs || !threads || procs * threads > MAX_WORKERS)
		usage();
	node = qgpu_dev_path();
	fd = qgpu_open(node);
	if (fd < 0 || qgpu_ioctl(fd, QGPU_IOCTL_INFO, &info)) {
		printf("{\"ok\":false,\"error\":\"%s: %s\",\"errno\":%d}\n", node,
		       strerror(errno), errno);
		return 1;
	}
	close(fd);
	vram_size = info.vram_size;
	if (vram_size < 2ULL * MAX_WORKERS * SLOT) {
		printf("{\"ok\":false,\"error\":\"VRAM of %llu bytes is too small\","
		       "\"errno\":%d}\n", (unsigned long long)vram_size, EINVAL);
		return 1;
	}
	name = strrchr(node, '/') ? strrchr(node, '/') + 1 : node;
	snprintf(link, sizeof(link), "/sys/class/misc/%s/device", name);
	if (!realpath(link, sysdir)) {
		printf("{\"ok\":false,\"error\":\"%s: %s\",\"errno\":%d}\n", link,
		       strerror(errno), errno);
		return 1;
	}
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return 1;

	for (i = 0; i < (int)procs; i++) {
		pids[i] = fork();
		if (pids[i] == 0)
			worker_process(i * threads, threads, seed, signals);
	}
	rs = seed;
	t0 = qgpu_now_ms();
	next_reset = t0 + reset_ms;
	next_remove = t0 + (remove_from_ms == UINT64_MAX ? remove_ms : remove_from_ms);
	while (qgpu_now_ms() < t0 + seconds * 1e3) {
		if (stop_cont) {
			pid_t p = pids[rnd(&rs) % procs];

			kill(p, SIGSTOP);
			qgpu_sleep_us(rnd(&rs) % 20000);
			kill(p, SIGCONT);
			stops++;
		}
		/*
		 * A reset or removal that cannot happen now (the device is
		 * away: hot-unplugged by the host meanwhile) is tried again
		 * soon rather than a whole period later.
		 */
		if (reset_ms && qgpu_now_ms() >= next_reset) {
			snprintf(path, sizeof(path), "%s/reset", sysdir);
			ok = !qgpu_write_file(path, "1");
			resets += ok;
			next_reset = qgpu_now_ms() + (ok ? reset_ms : RETRY_MS);
		}
		if (remove_ms && qgpu_now_ms() >= next_remove) {
			snprintf(path, sizeof(path), "%s/remove", sysdir);
			ok = !qgpu_write_file(path, "1");
			removals += ok;
			if (ok)
				qgpu_write_file("/sys/bus/pci/rescan", "1");
			next_remove = qgpu_now_ms() + (ok ? remove_ms : RETRY_MS);
		}
		qgpu_sleep_us(5000 + rnd(&rs) % 20000);
	}
	atomic_store(&sh->stop, 1);
	/* Bounded: a worker still there 60 s later is stuck (in the driver). */
	for (i = 0; i < (int)procs; i++) {
		double give_up = qgpu_now_ms() + 60000;
		int st = 0;
		pid_t r;

		kill(pids[i], SIGCONT);
		while ((r = waitpid(pids[i], &st, WNOHANG)) == 0 &&
		       qgpu_now_ms() < give_up)
			qgpu_sleep_us(10000);
		if (r == 0) {
			stuck++;
			kill(pids[i], SIGKILL);
			waitpid(pids[i], &st, 0);
		} else if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			crashed++;
		}
	}

	for (i = 0; i < (int)(procs * threads); i++) {
		struct counters *c = &sh->c[i];
		int k;

		for (k = 0; k < OP_NR; k++)
			total[k] += c->ops[k];
		abandoned += c->abandoned;
		sigbus += c->sigbus;
		integrity += c->integrity_failures;
		late += c->late_writes;
		reopens += c->reopens;
		alarms += c->alarms;
		if (c->first_failure[0])
			first = c->first_failure;
	}
	printf("{\"ok\":%s,\"seed\":%llu,\"seconds\":%.1f,\"workers\":%llu,\"ops\":{",
	       integrity || late || stuck || crashed ? "false" : "true",
	       (unsigned long long)seed, (qgpu_now_ms() - t0) / 1e3,
	       (unsigned long long)(procs * threads));
	for (i = 0; i < OP_NR; i++)
		printf("%s\"%s\":%lu", i ? "," : "", op_names[i], total[i]);
	printf("},\"errnos\":{");
	for (int e = 1, n = 0; e < 150; e++) {
		unsigned long v = 0;

		for (i = 0; i < (int)(procs * threads); i++)
			v += sh->c[i].errnos[e];
		if (v)
			printf("%s\"%d\":%lu", n++ ? "," : "", e, v);
	}
	printf("},\"abandoned\":%lu,\"sigbus\":%lu,\"reopens\":%lu,\"resets\":%lu,"
	       "\"removals\":%lu,\"stops\":%lu,\"alarms_in_workers\":%lu,"
	       "\"integrity_failures\":%lu,\"late_writes\":%lu,"
	       "\"stuck_workers\":%d,\"crashed_workers\":%d,"
	       "\"first_failure\":\"%s\"}\n", abandoned, sigbus, reopens, resets,
	       removals, stops, alarms, integrity, late, stuck, crashed, first);
	return integrity || late || stuck || crashed ? 1 : 0;
}
