#include <stdint.h>
#include "spf_internal.h"
#include "spf_futex.h"
#include "spf_vmref.h"

static int writer_only(uint32_t cnt)          /* the kernel's is_vma_writer_only() */
{
	return (cnt & SPF_VMA_LOCK_OFFSET) && cnt <= SPF_VMA_LOCK_OFFSET + 1;
}

int spf_vmref_get(uint32_t *refcnt, uint32_t *old)                          /* r1 */
{
	uint32_t c = __atomic_load_n(refcnt, __ATOMIC_RELAXED);
	int taken = 0;
	for (;;) {
		if (c == 0 || c + 1 > SPF_VMA_REF_LIMIT)
			break;
		if (__atomic_compare_exchange_n(refcnt, &c, c + 1, 0,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
			taken = 1;
			break;
		}
	}
	*old = c;
	if (taken)
		spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(refcnt), 1, SPF_LK_READ);
	spf_perturb(SPF_PC_ATOMIC);
	return taken;
}

/* Decrement unless 0 (refcount_t saturates and warns there: the caller reports); the
 * count seen, 0 if refused. */
static uint32_t dec_not_zero(uint32_t *refcnt)
{
	uint32_t c = __atomic_load_n(refcnt, __ATOMIC_RELAXED);
	do {
		if (c == 0)
			return 0;
	} while (!__atomic_compare_exchange_n(refcnt, &c, c - 1, 0,
					      __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
	return c;
}

uint32_t spf_vmref_put(uint32_t *refcnt)                                     /* r2 */
{
	spf_perturb(SPF_PC_ATOMIC);
	uint32_t c = dec_not_zero(refcnt);
	if (c == 0)
		return 0;
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(refcnt), 0, SPF_LK_READ);
	if (c - 1 && writer_only(c - 1))
		spf_futex_wake(refcnt, 1 << 30);
	spf_perturb(SPF_PC_ATOMIC);
	return c;
}

/* w2: spin first, then sleep on the word while it still holds the value seen (a put
 * that leaves the writer alone wakes it; any other change ends the sleep at once or is
 * not the one awaited). */
static void wait_for(uint32_t *refcnt, uint32_t target)
{
	uint32_t c;
	for (int n = 0; n < SPF_SPIN_TRIES; n++) {
		if (__atomic_load_n(refcnt, __ATOMIC_ACQUIRE) == target)
			return;
		if (spf_sched_on)
			break;
		spf_cpu_relax();
	}
	while ((c = __atomic_load_n(refcnt, __ATOMIC_ACQUIRE)) != target) {
		if (spf_sched_on)
			spf_sched_wait(refcnt, 0, c, 0);
		else
			spf_futex_wait(refcnt, c, -1);
	}
}

int spf_vmref_enter_locked(uint32_t *refcnt, int detaching)
{
	uint32_t c = __atomic_load_n(refcnt, __ATOMIC_RELAXED);
	do {                                                                 /* w1 */
		if (c == 0)
			return 0;
	} while (!__atomic_compare_exchange_n(refcnt, &c, c + SPF_VMA_LOCK_OFFSET, 0,
					      __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(refcnt), 1, SPF_LK_WRITE);
	spf_perturb(SPF_PC_ATOMIC);
	wait_for(refcnt, SPF_VMA_LOCK_OFFSET + (detaching ? 0 : 1));     /* w2 */
	return 1;
}

int spf_vmref_exit_locked(uint32_t *refcnt)                                  /* w3 */
{
	spf_perturb(SPF_PC_ATOMIC);
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(refcnt), 0, SPF_LK_WRITE);
	uint32_t now = __atomic_sub_fetch(refcnt, SPF_VMA_LOCK_OFFSET, __ATOMIC_SEQ_CST);
	spf_perturb(SPF_PC_ATOMIC);
	return now == 0;
}

int spf_vmref_dec_and_test(uint32_t *refcnt)
{
	spf_perturb(SPF_PC_ATOMIC);
	uint32_t c = dec_not_zero(refcnt);
	if (c == 0)
		return -1;
	spf_perturb(SPF_PC_ATOMIC);
	return c == 1;
}

void spf_vmref_set_release(uint32_t *refcnt, uint32_t v)
{
	spf_perturb(SPF_PC_ATOMIC);
	__atomic_store_n(refcnt, v, __ATOMIC_RELEASE);
	spf_perturb(SPF_PC_ATOMIC);
}
