#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "spf_internal.h"
#include "spf_sched.h"

int spf_futex_wait_ns(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
	struct timespec ts, *tsp = NULL;
	if (timeout_ns >= 0) {
		ts.tv_sec = timeout_ns / 1000000000ll;
		ts.tv_nsec = timeout_ns % 1000000000ll;
		tsp = &ts;
	}
	long r = syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, NULL, 0);
	if (r == 0 || errno == EAGAIN)
		return 0;
	if (errno == ETIMEDOUT)
		return 1;
	return -1;
}

int spf_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
	return spf_futex_wait_ns(word, expected, timeout_ns);
}

int spf_futex_wake(uint32_t *word, int n)
{
	long r = syscall(SYS_futex, word, FUTEX_WAKE, n <= 0 ? INT_MAX : n, NULL, NULL, 0);
	return r < 0 ? -1 : (int)r;
}

uint64_t spf_now_ns(void) { return spf_now_ns_inline(); }

void spf_sleep_ns(uint64_t ns)
{
	if (spf_sched_on) {             /* logical time: a wait that only the clock ends */
		spf_sched_sleep(ns);
		return;
	}
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

void spf_work_ns(uint64_t ns)
{
	if (spf_sched_on)
		spf_sched_point(SPF_PC_NAMED);
	else
		spf_sleep_ns(ns);
}
