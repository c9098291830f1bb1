// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * qgpu-bench: guest user-space write bandwidth into VRAM through the
 * write-combined mapping, beside the same process writing its own RAM,
 * measured in the same run (ratios travel, absolute numbers do not).
 *
 * usage: qgpu-bench [-d /dev/qgpuN] [MIB [ROUNDS]]
 * Prints one JSON line. It is a benchmark: it asserts nothing about speed,
 * but it does check that what it wrote through the mapping is there.
 */
#include "qgpu-lib.h"

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

int main(int argc, char **argv)
{
	const char *dev = NULL;
	size_t mib = 16, len;
	int rounds = 5, fd;
	void *vram, *lazy, *ram;
	double t_vram, t_lazy_first, t_ram;
	uint64_t *check;

	if (argc > 2 && !strcmp(argv[1], "-d")) {
		dev = argv[2];
		argv += 2;
		argc -= 2;
	}
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
