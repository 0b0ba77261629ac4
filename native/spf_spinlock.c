#include <sched.h>
#include <stdint.h>
#include "spf_internal.h"
#include "spf_spinlock.h"

static int spin_wait_free(spf_spinlock_t *l, uint64_t deadline)
{
	for (unsigned n = 0;; n++) {
		uint32_t v = __atomic_load_n(l, __ATOMIC_RELAXED);
		if (v == 0)
			return 0;
		if (spf_sched_on) {       /* the scheduler: blocked until the word changes */
			if (spf_sched_wait(l, 0, v, deadline))
				return 1;
			continue;
		}
		if (n < SPF_SPIN_TRIES) {
			spf_cpu_relax();
			continue;
		}
		sched_yield();
		if (deadline && (n & 63) == 0 && spf_now_ns_inline() > deadline)
			return 1;
	}
}

int spf_spin_lock_timeout(spf_spinlock_t *l, int cpu, int64_t timeout_ns)
{
	uint64_t deadline = timeout_ns >= 0 ? spf_now_ns_inline() + (uint64_t)timeout_ns : 0;
	spf_perturb(SPF_PC_LOCK);     /* before the acquire: what was read before still holds? */
	for (;;) {
		uint32_t free_ = 0;
		if (__atomic_compare_exchange_n(l, &free_, (uint32_t)cpu + 1, 0,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
			spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(l), 1, SPF_LK_SPIN);
			spf_perturb(SPF_PC_LOCK);        /* inside the section */
			return 0;
		}
		if (spin_wait_free(l, deadline))
			return 1;
	}
}

void spf_spin_lock(spf_spinlock_t *l, int cpu) { spf_spin_lock_timeout(l, cpu, -1); }

int spf_spin_trylock(spf_spinlock_t *l, int cpu)
{
	uint32_t free_ = 0;
	spf_perturb(SPF_PC_LOCK);     /* before the attempt: a trylock's window is behind it */
	int taken = __atomic_compare_exchange_n(l, &free_, (uint32_t)cpu + 1, 0,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
	if (taken)
		spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(l), 1, SPF_LK_SPIN);
	spf_perturb(SPF_PC_LOCK);
	return taken;
}

/* CONFIG_DEBUG_SPINLOCK's "already unlocked": this process's unlocks of a free lock (a
 * caller that went on as if it held a lock it never took), taken by spf_spin_bugs_take. */
static uint64_t spin_bugs;

void spf_spin_unlock(spf_spinlock_t *l)
{
	spf_perturb(SPF_PC_LOCK);                        /* still inside the section */
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(l), 0, SPF_LK_SPIN);
	if (__atomic_exchange_n(l, 0, __ATOMIC_RELEASE) == 0)
		spin_bugs++;
	spf_perturb(SPF_PC_LOCK);                        /* released: what comes next */
}

uint64_t spf_spin_bugs_take(void)
{
	uint64_t n = spin_bugs;
	spin_bugs = 0;
	return n;
}
int spf_spin_is_locked(const spf_spinlock_t *l) { return __atomic_load_n(l, __ATOMIC_RELAXED) != 0; }
int spf_spin_owner(const spf_spinlock_t *l) { return (int)__atomic_load_n(l, __ATOMIC_RELAXED) - 1; }

void spf_spin_lock_busted(spf_spinlock_t *l, int cpu)
{
	/* BUSTED: two CPUs can both see the lock free and both "take" it. */
	for (uint32_t v; (v = *(volatile uint32_t *)l) != 0;) {
		if (spf_sched_on)
			spf_sched_wait(l, 0, v, 0);
		else
			sched_yield();
	}
	for (int i = 0; i < 8; i++)
		spf_cpu_relax();
	*(volatile uint32_t *)l = (uint32_t)cpu + 1;
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	spf_perturb(SPF_PC_LOCK);
}
