/* Probe: does async uffd-wp tracking work when driven from another process,
 * and does it survive the uffd being closed? (docs/precopy-uffd.md)
 * Build and run as root: cc -O1 -o probe docs/uffd/probe.c && ./probe
 * Each line: what the child just did, then the page ranges PAGEMAP_SCAN
 * reports as written (p: present, w: in write-protect-allowed memory). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>
#include <stdint.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/userfaultfd.h>

#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_WPALLOWED (1 << 0)
struct page_region { uint64_t start, end, categories; };
struct pm_scan_arg { uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages,
	category_inverted, category_mask, category_anyof_mask, return_mask; };
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)

#define NP 16
static long ps;
static char *area, *sarea;
static int to_child[2], to_parent[2];

static void cmd(char c) { write(to_child[1], &c, 1); read(to_parent[0], &c, 1); }

static void child(void)
{
	char c;
	int fd = -1;
	for (;;) {
		if (read(to_child[0], &c, 1) != 1) _exit(0);
		switch (c) {
		case 'u': fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY); dup2(fd, 100); close(fd); fd = 100; break;
		case 'c': close(fd); break;
		case '2': area[2 * ps] = 1; area[5 * ps] = 1; break;
		case '7': area[7 * ps] = 1; break;
		case 'a': area[10 * ps] = 1; break; /* unpopulated before */
		case 'm': mprotect(area, NP * ps, PROT_READ); mprotect(area, NP * ps, PROT_READ | PROT_WRITE); break;
		case 'd': madvise(area + 3 * ps, ps, MADV_DONTNEED); break;
		case 'r': { volatile char x = area[4 * ps]; (void)x; area[4*ps] = area[4*ps]; } break;
		case 'k': { int z = open("/dev/urandom", O_RDONLY); read(z, area + 6 * ps, 8); close(z); } break;
		case 's': sarea[1 * ps] = 1; break;
		}
		write(to_parent[1], &c, 1);
	}
}

static int pm;
static void scan(const char *what, char *base, int wp)
{
	struct page_region r[64];
	struct pm_scan_arg a = { .size = sizeof(a), .flags = wp ? PM_SCAN_WP_MATCHING : 0,
		.start = (uint64_t)base, .end = (uint64_t)base + NP * ps, .vec = (uint64_t)r, .vec_len = 64,
		.category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_WPALLOWED };
	long n = ioctl(pm, PAGEMAP_SCAN, &a);
	printf("%-48s:", what);
	if (n < 0) { printf(" error %s\n", strerror(errno)); return; }
	for (long i = 0; i < n; i++)
		printf(" [%ld-%ld)%s%s", (long)(r[i].start - (uint64_t)base) / ps, (long)(r[i].end - (uint64_t)base) / ps,
		       r[i].categories & PAGE_IS_PRESENT ? "p" : "", r[i].categories & PAGE_IS_WPALLOWED ? "w" : "");
	printf("\n");
}

int main(void)
{
	ps = sysconf(_SC_PAGESIZE);
	area = mmap(NULL, NP * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	sarea = mmap(NULL, NP * ps, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	for (int i = 0; i < 8; i++) area[i * ps] = 0x55, sarea[i * ps] = 0x55;
	pipe(to_child); pipe(to_parent);
	pid_t pid = fork();
	if (!pid) child();
	char path[64]; snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	pm = open(path, O_RDONLY);
	int pidfd = syscall(SYS_pidfd_open, pid, 0);
	cmd('u');
	int fd = syscall(SYS_pidfd_getfd, pidfd, 100, 0);
	printf("pidfd_getfd -> %d (%s)\n", fd, fd < 0 ? strerror(errno) : "ok");
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM };
	printf("UFFDIO_API from outside: %d %s features=%llx\n", ioctl(fd, UFFDIO_API, &api), strerror(errno), (unsigned long long)api.features);
	struct uffdio_register reg = { .range = { (uint64_t)area, NP * ps }, .mode = UFFDIO_REGISTER_MODE_WP };
	printf("REGISTER private from outside: %d %s ioctls=%llx\n", ioctl(fd, UFFDIO_REGISTER, &reg), strerror(errno), (unsigned long long)reg.ioctls);
	struct uffdio_register sreg = { .range = { (uint64_t)sarea, NP * ps }, .mode = UFFDIO_REGISTER_MODE_WP };
	printf("REGISTER shared from outside: %d %s\n", ioctl(fd, UFFDIO_REGISTER, &sreg), strerror(errno));
	scan("after register, before WP", area, 0);
	struct uffdio_writeprotect wp = { .range = { (uint64_t)area, NP * ps }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	{ char b[256], p[64]; snprintf(p, 64, "/proc/%d/fdinfo/100", pid); int f = open(p, O_RDONLY); int n = read(f, b, 255); b[n > 0 ? n : 0] = 0; printf("fdinfo: %s", b); close(f); }
	printf("WRITEPROTECT from outside: %d %s\n", ioctl(fd, UFFDIO_WRITEPROTECT, &wp), strerror(errno));
	wp.range.start = (uint64_t)sarea;
	printf("WRITEPROTECT shared: %d %s\n", ioctl(fd, UFFDIO_WRITEPROTECT, &wp), strerror(errno));
	scan("after WP", area, 0);
	cmd('2'); scan("child wrote 2,5", area, 0);
	scan("same, scan+WP", area, 1);
	scan("after scan+WP", area, 0);
	cmd('a'); scan("child wrote unpopulated 10", area, 1);
	cmd('r'); scan("child read 4 then wrote same value", area, 1);
	cmd('m'); scan("child mprotect RO then RW", area, 0);
	cmd('d'); scan("child MADV_DONTNEED 3", area, 0);
	cmd('s'); scan("shared: child wrote 1", sarea, 1);
	cmd('k'); scan("kernel wrote page 6 (read from urandom)", area, 1);
	cmd('7'); scan("child wrote 7", area, 1);
	close(fd); scan("our dup closed (child still holds 100)", area, 0);
	cmd('7'); scan("child wrote 7 again", area, 1);
	fd = syscall(SYS_pidfd_getfd, pidfd, 100, 0);
	cmd('c'); scan("child closed 100, we hold a dup", area, 0);
	cmd('7'); scan("child wrote 7", area, 1);
	close(fd); scan("both closed", area, 0);
	cmd('7'); scan("child wrote 7 after close", area, 0);
	kill(pid, SIGKILL); waitpid(pid, NULL, 0);
	return 0;
}
