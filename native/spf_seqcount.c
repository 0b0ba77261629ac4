#include <sched.h>
#include <stdint.h>
#include "spf_internal.h"
#include "spf_seqcount.h"

uint64_t spf_seq_read_begin(const uint64_t *seq)
{
	for (unsigned n = 0;; n++) {
		uint64_t s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);   /* (a), pairs with (4) */
		if (!(s & 1)) {
			spf_perturb(SPF_PC_SEQ);    /* perturbation: between (a) and (b) */
			return s;
		}
		if (spf_sched_on)
			spf_sched_wait(seq, 1, s, 0);    /* until the writer's (4) */
		else if (n < SPF_SPIN_TRIES)
			spf_cpu_relax();
		else
			sched_yield();
	}
}

uint64_t spf_seq_try_begin(const uint64_t *seq)
{
	uint64_t s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);      /* (a), pairs with (4) */
	spf_perturb(SPF_PC_SEQ);
	return s;
}

int spf_seq_read_retry(const uint64_t *seq, uint64_t start)
{
	spf_perturb(SPF_PC_SEQ);                                  /* between (b) and (c) */
	__atomic_thread_fence(__ATOMIC_ACQUIRE);                  /* (c), pairs with (2) */
	return __atomic_load_n(seq, __ATOMIC_RELAXED) != start;
}

void spf_seq_write_begin(uint64_t *seq)
{
	__atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);                  /* (2), pairs with (c) */
	spf_perturb(SPF_PC_SEQ);                                  /* between (2) and (3) */
}

void spf_seq_write_end(uint64_t *seq)
{
	spf_perturb(SPF_PC_SEQ);                                  /* between (3) and (4) */
	__atomic_thread_fence(__ATOMIC_RELEASE);                  /* (4), pairs with (a) */
	__atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
	spf_perturb(SPF_PC_SEQ);                                  /* after (4) */
}

void spf_seq_write_begin_busted(uint64_t *seq)
{
	(void)seq;  /* BUSTED: the count stays even while the writer works. */
	spf_perturb(SPF_PC_SEQ);
}

void spf_seq_write_end_busted(uint64_t *seq)
{
	spf_perturb(SPF_PC_SEQ);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 2, __ATOMIC_RELAXED);
}
