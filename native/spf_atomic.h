#pragma once
/* spf_atomic.h - atomics and fences on shared memory.
 *
 * The only place in spfshm that spells __atomic_*.  Verbs are paired the way the
 * kernel pairs them: load_acquire pairs with store_release, fence_acquire (smp_rmb)
 * with fence_release (smp_wmb), and fence_full (smp_mb) pairs with itself.
 * Read-modify-write verbs are fully ordered (the kernel's value-returning atomics).
 */
uint64_t spf_load_relaxed(const uint64_t *p);
uint64_t spf_load_acquire(const uint64_t *p);
void     spf_store_relaxed(uint64_t *p, uint64_t v);
void     spf_store_release(uint64_t *p, uint64_t v);
uint64_t spf_cmpxchg(uint64_t *p, uint64_t old, uint64_t new_);   /* returns the value seen */
uint64_t spf_xchg(uint64_t *p, uint64_t v);
uint64_t spf_fetch_add(uint64_t *p, uint64_t v);                  /* returns the old value */
uint64_t spf_fetch_or(uint64_t *p, uint64_t v);
uint64_t spf_fetch_and(uint64_t *p, uint64_t v);

uint32_t spf_load32_relaxed(const uint32_t *p);
uint32_t spf_load32_acquire(const uint32_t *p);
void     spf_store32_relaxed(uint32_t *p, uint32_t v);
void     spf_store32_release(uint32_t *p, uint32_t v);
uint32_t spf_cmpxchg32(uint32_t *p, uint32_t old, uint32_t new_);
uint32_t spf_xchg32(uint32_t *p, uint32_t v);
uint32_t spf_fetch_add32(uint32_t *p, uint32_t v);

/* Batches: one call, and one perturbation point, for many independent words (a huge
 * pmd's 512 pages).  fetch_add_range: old[i] = fetch_add(&p[i], v) for i < n.
 * max_field_each: word p[idx[i]]'s bits from shift up are raised to val[i] where they
 * are below it, its low bits kept (a cmpxchg loop per word: an atomic max). */
void spf_fetch_add_range(uint64_t *p, uint64_t n, uint64_t v, uint64_t *old);
void spf_max_field_each(uint64_t *p, const uint64_t *idx, const uint64_t *val, uint64_t n,
			unsigned shift);

void spf_fence_full(void);     /* smp_mb()  */
void spf_fence_acquire(void);  /* smp_rmb() */
void spf_fence_release(void);  /* smp_wmb() */

/* Busted twin: a "fetch_add" made of a plain load and a plain store (no atomic RMW). */
uint64_t spf_fetch_add_busted(uint64_t *p, uint64_t v);
