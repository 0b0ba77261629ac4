#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include "spf_internal.h"
#include "spf_kfault.h"

#define KPAGE 4096UL
#define CHECK_EVERY 1024          /* pages between clock reads */

struct kfault_slot {
	uint64_t faults, elapsed_ns;
	int64_t err;
	uint64_t pad[5];          /* one cache line per process */
};

struct kfault_shared {
	uint32_t ready, go;
	uint64_t pad[7];
	struct kfault_slot slot[SPF_KFAULT_MAX_PROCS];
};

/* The i-th CPU this process may run on, or -1. */
static int nth_allowed_cpu(int i)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		return -1;
	int n = CPU_COUNT(&set);
	if (n == 0)
		return -1;
	i %= n;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &set) && i-- == 0)
			return c;
	return -1;
}

static void kfault_child(struct kfault_shared *sh, int i, uint64_t region_bytes,
			 uint64_t duration_ns)
{
	struct kfault_slot *me = &sh->slot[i];
	uint64_t n = 0;
	__atomic_fetch_add(&sh->ready, 1, __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE))
		spf_cpu_relax();
	uint64_t t0 = spf_now_ns_inline(), end = t0 + duration_ns, now = t0;
	while (now < end) {
		char *p = mmap(NULL, region_bytes, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			me->err = -errno;
			break;
		}
		madvise(p, region_bytes, MADV_NOHUGEPAGE);
		for (uint64_t off = 0; off < region_bytes; off += KPAGE) {
			*(volatile char *)(p + off) = 1;
			if (++n % CHECK_EVERY == 0 && (now = spf_now_ns_inline()) >= end)
				break;
		}
		munmap(p, region_bytes);
		now = spf_now_ns_inline();
	}
	me->faults = n;
	me->elapsed_ns = now - t0;
}

int spf_kfault_run(int nprocs, uint64_t region_bytes, uint64_t duration_ns, int pin,
		   uint64_t *faults, uint64_t *elapsed_ns)
{
	if (nprocs < 1 || nprocs > SPF_KFAULT_MAX_PROCS || region_bytes < KPAGE)
		return -EINVAL;
	struct kfault_shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
					MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return -errno;
	memset(sh, 0, sizeof(*sh));
	pid_t pids[SPF_KFAULT_MAX_PROCS];
	int started = 0, err = 0;
	for (int i = 0; i < nprocs; i++) {
		int cpu = pin ? nth_allowed_cpu(i) : -1;
		pid_t pid = fork();
		if (pid < 0) {
			err = -errno;
			break;
		}
		if (pid == 0) {
			/* Only C from here on: the parent may be a Python process. */
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (cpu >= 0) {
				cpu_set_t set;
				CPU_ZERO(&set);
				CPU_SET(cpu, &set);
				sched_setaffinity(0, sizeof(set), &set);
			}
			kfault_child(sh, i, region_bytes, duration_ns);
			_exit(0);
		}
		pids[started++] = pid;
	}
	if (!err) {
		while (__atomic_load_n(&sh->ready, __ATOMIC_SEQ_CST) < (uint32_t)started)
			usleep(100);
		__atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
	} else {
		for (int i = 0; i < started; i++)
			kill(pids[i], SIGKILL);
	}
	for (int i = 0; i < started; i++) {
		int status;
		while (waitpid(pids[i], &status, 0) < 0 && errno == EINTR)
			;
		if (!err && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
			err = -ECHILD;
	}
	for (int i = 0; !err && i < nprocs; i++) {
		if (sh->slot[i].err)
			err = (int)sh->slot[i].err;
		faults[i] = sh->slot[i].faults;
		elapsed_ns[i] = sh->slot[i].elapsed_ns;
	}
	munmap(sh, sizeof(*sh));
	return err;
}
