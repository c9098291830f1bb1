/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * qgpu tools: small helpers shared by qgpu-tool and qgpu-test.
 */
#ifndef QGPU_LIB_H
#define QGPU_LIB_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/dma-buf.h>
#include <linux/sync_file.h>
#include <linux/udmabuf.h>

#include "qgpu.h"

#define QGPU_FNV_INIT	0xcbf29ce484222325ULL

static inline uint64_t qgpu_fnv1a(uint64_t h, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	while (n--) {
		h ^= *p++;
		h *= 0x100000001b3ULL;
	}
	return h;
}

/*
 * malloc() that never returns NULL: the tools cannot go on without memory,
 * so they stop with the one-line JSON failure every tool prints.
 */
static inline void *qgpu_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		printf("{\"ok\":false,\"error\":\"out of memory (%zu bytes)\","
		       "\"errno\":%d}\n", n, ENOMEM);
		exit(1);
	}
	return p;
}

/* aligned_alloc(), whose size must be a multiple of @align, never NULL. */
static inline void *qgpu_xaligned_alloc(size_t align, size_t n)
{
	void *p = aligned_alloc(align, (n + align - 1) / align * align);

	if (!p) {
		printf("{\"ok\":false,\"error\":\"out of memory (%zu bytes)\","
		       "\"errno\":%d}\n", n, ENOMEM);
		exit(1);
	}
	return p;
}

/*
 * The 64-bit fence of a mapped user register page. Its halves are two
 * registers: read HI, LO, HI again until HI did not move, or a fence
 * crossing 2^32 would read torn.
 */
static inline uint64_t qgpu_user_fence(const volatile uint32_t *user_page)
{
	const volatile uint32_t *hi_reg =
		&user_page[(QGPU_REG_USER_FENCE_HI - QGPU_REGS_USER_PAGE) / 4];
	const volatile uint32_t *lo_reg =
		&user_page[(QGPU_REG_USER_FENCE_LO - QGPU_REGS_USER_PAGE) / 4];
	uint32_t hi, lo;

	do {
		hi = *hi_reg;
		lo = *lo_reg;
	} while (*hi_reg != hi);
	return (uint64_t)hi << 32 | lo;
}

/* Write @s to @f as a JSON string, quotes and control characters escaped. */
static inline void qgpu_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

/* Monotonic time in milliseconds. */
static inline double qgpu_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Sleep @us microseconds, whatever signals arrive meanwhile. */
static inline void qgpu_sleep_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* Write @text to @path in one write() (a sysfs file): 0 or -errno. */
static inline int qgpu_write_file(const char *path, const char *text)
{
	int f = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;
	int err;

	if (f < 0)
		return -errno;
	n = write(f, text, strlen(text));
	err = n < 0 ? errno : EIO;
	close(f);
	return n == (ssize_t)strlen(text) ? 0 : -err;
}

/* Device node: $QGPU_DEV or /dev/qgpu0. */
static inline const char *qgpu_dev_path(void)
{
	const char *p = getenv("QGPU_DEV");

	return p && *p ? p : "/dev/qgpu0";
}

static inline int qgpu_open(const char *path)
{
	return open(path ? path : qgpu_dev_path(), O_RDWR | O_CLOEXEC);
}

/* ioctl returning 0 or -errno. */
static inline int qgpu_ioctl(int fd, unsigned long req, void *arg)
{
	return ioctl(fd, req, arg) ? -errno : 0;
}

/* /sys/class/misc/<name>/stats/<stat> for the device at @path; -1 on error. */
static inline long long qgpu_stat(const char *path, const char *stat)
{
	const char *name = strrchr(path ? path : qgpu_dev_path(), '/');
	char file[512];
	long long v = -1;
	FILE *f;

	name = name ? name + 1 : (path ? path : qgpu_dev_path());
	snprintf(file, sizeof(file), "/sys/class/misc/%s/stats/%s", name, stat);
	f = fopen(file, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%lld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static inline int qgpu_copy_user(int fd, uint32_t op, uint32_t flags, void *ptr,
				 uint64_t vram_off, uint64_t len,
				 struct qgpu_copy_user *out)
{
	struct qgpu_copy_user a = {
		.op = op, .flags = flags, .user_ptr = (uintptr_t)ptr,
		.vram_offset = vram_off, .length = len,
	};
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_COPY_USER, &a);

	if (out)
		*out = a;
	return ret;
}

static inline int qgpu_fill(int fd, uint64_t off, uint64_t len, uint32_t pattern,
			    uint32_t flags, uint64_t *fence)
{
	struct qgpu_vram_op a = {
		.op = QGPU_OP_FILL, .flags = flags, .dst_offset = off,
		.length = len, .pattern = pattern,
	};
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_VRAM_OP, &a);

	if (fence)
		*fence = a.fence;
	return ret;
}

static inline int qgpu_cpu(int fd, uint32_t op, uint64_t off, uint64_t len,
			   uint32_t pattern, uint64_t *sum)
{
	struct qgpu_cpu_access a = {
		.op = op, .pattern = pattern, .vram_offset = off, .length = len,
	};
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_CPU_ACCESS, &a);

	if (sum)
		*sum = a.checksum;
	return ret;
}

static inline int qgpu_wait(int fd, uint64_t fence, uint64_t timeout_ns,
			    struct qgpu_wait_fence *out)
{
	struct qgpu_wait_fence a = { .fence = fence, .timeout_ns = timeout_ns };
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_WAIT_FENCE, &a);

	if (out)
		*out = a;
	return ret;
}

/* Export @fence as a sync_file: its descriptor, or -errno. */
static inline int qgpu_fence_export(int fd, uint64_t fence)
{
	struct qgpu_fence_export a = { .fence = fence };
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_FENCE_EXPORT, &a);

	return ret ? ret : a.fd;
}

/* Export BO @handle as a dma-buf (QGPU_DMABUF_F_*): its descriptor, or -errno. */
static inline int qgpu_dmabuf_export(int fd, uint32_t handle, uint32_t flags)
{
	struct qgpu_dmabuf_export a = { .handle = handle, .flags = flags };
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_DMABUF_EXPORT, &a);

	return ret ? ret : a.fd;
}

/* VRAM [@vram_offset, + @size) as a dma-buf for peers: its fd or -errno. */
static inline int qgpu_vram_export(int fd, uint64_t vram_offset, uint64_t size,
				   uint32_t flags)
{
	struct qgpu_vram_export a = {
		.vram_offset = vram_offset, .size = size, .flags = flags,
	};
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_VRAM_EXPORT, &a);

	return ret ? ret : a.fd;
}

/* DMA between dma-buf @dbuf (from byte @off) and VRAM; 0 or -errno. */
static inline int qgpu_copy_dmabuf(int fd, int dbuf, uint32_t op, uint64_t off,
				   uint64_t vram_offset, uint64_t len,
				   uint64_t timeout_ns, struct qgpu_copy_dmabuf *out)
{
	struct qgpu_copy_dmabuf a = {
		.fd = dbuf, .op = op, .offset = off, .vram_offset = vram_offset,
		.length = len, .timeout_ns = timeout_ns,
	};
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_COPY_DMABUF, &a);

	if (out)
		*out = a;
	return ret;
}

/* Register @len bytes at @addr (page-aligned) as a user-pointer buffer. */
static inline int qgpu_userptr_register(int fd, void *addr, uint64_t len,
					uint32_t flags,
					struct qgpu_userptr_register *out)
{
	struct qgpu_userptr_register a = {
		.addr = (uintptr_t)addr, .length = len, .flags = flags,
	};
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_USERPTR_REGISTER, &a);

	if (out)
		*out = a;
	return ret;
}

static inline int qgpu_userptr_unregister(int fd, uint32_t handle)
{
	struct qgpu_userptr_unregister a = { .handle = handle };

	return qgpu_ioctl(fd, QGPU_IOCTL_USERPTR_UNREGISTER, &a);
}

/* DMA between a registered buffer (from byte @off) and VRAM; 0 or -errno. */
static inline int qgpu_copy_userptr(int fd, uint32_t handle, uint32_t op,
				    uint64_t off, uint64_t vram_offset,
				    uint64_t len, struct qgpu_copy_userptr *out)
{
	struct qgpu_copy_userptr a = {
		.handle = handle, .op = op, .offset = off,
		.vram_offset = vram_offset, .length = len,
	};
	int ret = qgpu_ioctl(fd, QGPU_IOCTL_COPY_USERPTR, &a);

	if (out)
		*out = a;
	return ret;
}

/* VmPin of this process, in KiB (pinned_vm); -1 if unreadable. */
static inline long long qgpu_vm_pinned_kb(void)
{
	char line[256];
	long long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmPin: %lld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/*
 * A dma-buf of @size bytes of a memfd (udmabuf), the memfd mapped at *map:
 * the dma-buf's descriptor, or -errno (-ENOENT: no /dev/udmabuf).
 */
static inline int qgpu_udmabuf_new(size_t size, void **map)
{
	struct udmabuf_create c = { .flags = UDMABUF_FLAGS_CLOEXEC, .size = size };
	int memfd, dev, ret;

	memfd = memfd_create("qgpu-udmabuf", MFD_ALLOW_SEALING | MFD_CLOEXEC);
	if (memfd < 0)
		return -errno;
	if (ftruncate(memfd, size) || fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK)) {
		ret = -errno;
		close(memfd);
		return ret;
	}
	*map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (*map == MAP_FAILED) {
		ret = -errno;
		close(memfd);
		return ret;
	}
	dev = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
	if (dev < 0) {
		ret = -errno;
		munmap(*map, size);
		close(memfd);
		return ret;
	}
	c.memfd = memfd;
	ret = ioctl(dev, UDMABUF_CREATE, &c);
	ret = ret < 0 ? -errno : ret;
	close(dev);
	close(memfd);		/* the dma-buf and the mapping hold it */
	if (ret < 0)
		munmap(*map, size);
	return ret;
}

/* DMA_BUF_IOCTL_SYNC start (or end) of CPU access: 0 or -errno. */
static inline int qgpu_dmabuf_sync(int dbuf, int end, uint64_t rw)
{
	struct dma_buf_sync s = { .flags = (end ? DMA_BUF_SYNC_END : DMA_BUF_SYNC_START) | rw };

	return qgpu_ioctl(dbuf, DMA_BUF_IOCTL_SYNC, &s);
}

/*
 * The status of sync_file @sfd (1 signalled, 0 pending, <0 the fence's
 * error), how many fences it holds, and the first @max of them; -errno if
 * SYNC_IOC_FILE_INFO fails (stored in *status too).
 */
static inline int qgpu_sync_file_info(int sfd, int *status, unsigned int *count,
				      struct sync_fence_info *fences, unsigned int max)
{
	struct sync_file_info info = { 0 };
	int ret = qgpu_ioctl(sfd, SYNC_IOC_FILE_INFO, &info);	/* the count */

	if (!ret) {
		*count = info.num_fences;
		info.num_fences = *count < max ? *count : max;
		info.sync_fence_info = (uintptr_t)fences;
		/* More fences than asked for is -EINVAL: ask for all or none. */
		if (info.num_fences == *count)
			ret = qgpu_ioctl(sfd, SYNC_IOC_FILE_INFO, &info);
	}
	*status = ret ? ret : info.status;
	return ret;
}

static inline void qgpu_pattern_fill(void *buf, size_t len, uint32_t pattern)
{
	uint8_t *p = buf;
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (uint8_t)(pattern >> (8 * (i % 4)));
}

/* Parse a size with optional K/M/G suffix; returns 0 on success. */
static inline int qgpu_parse_u64(const char *s, uint64_t *v)
{
	char *end;
	unsigned long long x;

	errno = 0;
	x = strtoull(s, &end, 0);
	if (errno || end == s)
		return -1;
	switch (*end) {
	case 'k': case 'K': x <<= 10; end++; break;
	case 'm': case 'M': x <<= 20; end++; break;
	case 'g': case 'G': x <<= 30; end++; break;
	}
	if (*end)
		return -1;
	*v = x;
	return 0;
}

static inline const char *qgpu_irq_mode_name(uint32_t m)
{
	switch (m) {
	case QGPU_IRQ_MODE_MSIX: return "msix";
	case QGPU_IRQ_MODE_MSI: return "msi";
	case QGPU_IRQ_MODE_INTX: return "intx";
	default: return "unknown";
	}
}

#endif /* QGPU_LIB_H */
