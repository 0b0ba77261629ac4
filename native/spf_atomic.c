#include <stdint.h>
#include "spf_internal.h"

/* Perturbation (spf_perturb.h): after a load or an RMW (what it read ages), before a
 * store (the section before it widens), after a release store too (what follows a
 * publication), after a fence. */
#define AFTER(expr) do { __typeof__(expr) v_ = (expr); spf_perturb(SPF_PC_ATOMIC); return v_; } while (0)

uint64_t spf_load_relaxed(const uint64_t *p) { AFTER(__atomic_load_n(p, __ATOMIC_RELAXED)); }
uint64_t spf_load_acquire(const uint64_t *p) { AFTER(__atomic_load_n(p, __ATOMIC_ACQUIRE)); }
void spf_store_relaxed(uint64_t *p, uint64_t v)
{
	spf_perturb(SPF_PC_ATOMIC);
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}
void spf_store_release(uint64_t *p, uint64_t v)
{
	spf_perturb(SPF_PC_ATOMIC);
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
	spf_perturb(SPF_PC_ATOMIC);
}
uint64_t spf_cmpxchg(uint64_t *p, uint64_t old, uint64_t new_)
{
	__atomic_compare_exchange_n(p, &old, new_, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	spf_perturb(SPF_PC_ATOMIC);
	return old;
}
uint64_t spf_xchg(uint64_t *p, uint64_t v) { AFTER(__atomic_exchange_n(p, v, __ATOMIC_SEQ_CST)); }
uint64_t spf_fetch_add(uint64_t *p, uint64_t v) { AFTER(__atomic_fetch_add(p, v, __ATOMIC_SEQ_CST)); }
uint64_t spf_fetch_or(uint64_t *p, uint64_t v) { AFTER(__atomic_fetch_or(p, v, __ATOMIC_SEQ_CST)); }
uint64_t spf_fetch_and(uint64_t *p, uint64_t v) { AFTER(__atomic_fetch_and(p, v, __ATOMIC_SEQ_CST)); }

uint32_t spf_load32_relaxed(const uint32_t *p) { AFTER(__atomic_load_n(p, __ATOMIC_RELAXED)); }
uint32_t spf_load32_acquire(const uint32_t *p) { AFTER(__atomic_load_n(p, __ATOMIC_ACQUIRE)); }
void spf_store32_relaxed(uint32_t *p, uint32_t v)
{
	spf_perturb(SPF_PC_ATOMIC);
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}
void spf_store32_release(uint32_t *p, uint32_t v)
{
	spf_perturb(SPF_PC_ATOMIC);
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
	spf_perturb(SPF_PC_ATOMIC);
}
uint32_t spf_cmpxchg32(uint32_t *p, uint32_t old, uint32_t new_)
{
	__atomic_compare_exchange_n(p, &old, new_, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	spf_perturb(SPF_PC_ATOMIC);
	return old;
}
uint32_t spf_xchg32(uint32_t *p, uint32_t v) { AFTER(__atomic_exchange_n(p, v, __ATOMIC_SEQ_CST)); }
uint32_t spf_fetch_add32(uint32_t *p, uint32_t v) { AFTER(__atomic_fetch_add(p, v, __ATOMIC_SEQ_CST)); }

void spf_fetch_add_range(uint64_t *p, uint64_t n, uint64_t v, uint64_t *old)
{
	for (uint64_t i = 0; i < n; i++)
		old[i] = __atomic_fetch_add(&p[i], v, __ATOMIC_SEQ_CST);
	spf_perturb(SPF_PC_ATOMIC);
}

void spf_max_field_each(uint64_t *p, const uint64_t *idx, const uint64_t *val, uint64_t n,
			unsigned shift)
{
	uint64_t low = shift >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << shift) - 1;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t *w = &p[idx[i]];
		uint64_t cur = __atomic_load_n(w, __ATOMIC_RELAXED);
		while ((cur >> shift) < val[i] &&
		       !__atomic_compare_exchange_n(w, &cur, (cur & low) | (val[i] << shift), 0,
						    __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
			;
	}
	spf_perturb(SPF_PC_ATOMIC);
}

void spf_fence_full(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); spf_perturb(SPF_PC_ATOMIC); }
void spf_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); spf_perturb(SPF_PC_ATOMIC); }
void spf_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); spf_perturb(SPF_PC_ATOMIC); }

uint64_t spf_fetch_add_busted(uint64_t *p, uint64_t v)
{
	/* BUSTED: load and store are separate; two CPUs can both read the same old
	 * value and one increment is lost.  The pause widens the window so that the
	 * lost update shows up in a short test. */
	uint64_t old = *(volatile uint64_t *)p;
	for (int i = 0; i < 8; i++)
		spf_cpu_relax();
	*(volatile uint64_t *)p = old + v;
	spf_perturb(SPF_PC_ATOMIC);
	return old;
}
