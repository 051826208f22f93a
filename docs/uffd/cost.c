/* Cost of async uffd-wp for the tracked task: time to write one word in
 * each page of a populated 256 MiB area, untracked vs write-protected
 * (docs/precopy-uffd.md). Build and run: cc -O2 -o cost docs/uffd/cost.c && ./cost */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/userfaultfd.h>
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#define NP (256 * 256)
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }
int main(void)
{
	long ps = 4096;
	char *a = mmap(NULL, NP * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	madvise(a, NP * ps, MADV_NOHUGEPAGE);
	memset(a, 1, NP * ps);
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC };
	if (ioctl(fd, UFFDIO_API, &api)) { perror("api"); return 1; }
	struct uffdio_register reg = { .range = { (uint64_t)a, NP * ps }, .mode = UFFDIO_REGISTER_MODE_WP };
	if (ioctl(fd, UFFDIO_REGISTER, &reg)) { perror("reg"); return 1; }
	double plain[7], wp[7], prot[7], fresh[7];
	for (int r = 0; r < 7; r++) {
		double t = now();
		for (long p = 0; p < NP; p++) a[p * ps] = r;
		plain[r] = now() - t;
		struct uffdio_writeprotect w = { .range = { (uint64_t)a, NP * ps }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
		t = now();
		ioctl(fd, UFFDIO_WRITEPROTECT, &w);
		prot[r] = now() - t;
		t = now();
		for (long p = 0; p < NP; p++) a[p * ps] = r + 1;
		wp[r] = now() - t;
		struct uffdio_range ur = { (uint64_t)a, NP * ps };
		ioctl(fd, UFFDIO_UNREGISTER, &ur);
		madvise(a, NP * ps, MADV_DONTNEED);
		t = now();
		for (long p = 0; p < NP; p++) a[p * ps] = r + 2;
		fresh[r] = now() - t;
		ioctl(fd, UFFDIO_REGISTER, &reg);
	}
	qsort(plain, 7, 8, cmp); qsort(wp, 7, 8, cmp); qsort(prot, 7, 8, cmp); qsort(fresh, 7, 8, cmp);
	printf("256 MiB, one write per page, medians of 7: untracked %.1f ms (%.0f ns/page), write-protected %.1f ms (%.0f ns/page); write-protecting it: %.1f ms; for scale, first touch of fresh pages %.1f ms (%.0f ns/page)\n",
	       plain[3] * 1e3, plain[3] * 1e9 / NP, wp[3] * 1e3, wp[3] * 1e9 / NP, prot[3] * 1e3, fresh[3] * 1e3, fresh[3] * 1e9 / NP);
	return 0;
}
