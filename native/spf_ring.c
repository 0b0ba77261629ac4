#include <stdint.h>
#include "spf_internal.h"
#include "spf_ring.h"

void spf_ring_init(struct spf_ring_hdr *ring, uint64_t capacity)
{
	ring->head = 0;
	ring->digest = 0;
	ring->capacity = capacity;
}

void spf_ring_attach(struct spf_ring_hdr *ring) { spf_me.ring = ring; }

void spf_trace(uint32_t type, uint64_t a0, uint64_t a1, uint64_t a2)
{
	struct spf_ring_hdr *r = spf_me.ring;
	if (!r)
		return;
	uint64_t i = __atomic_fetch_add(&r->head, 1, __ATOMIC_RELAXED);
	struct spf_event *e = (struct spf_event *)(r + 1) + (i & (r->capacity - 1));
	__atomic_store_n(&e->seq, 0, __ATOMIC_RELAXED);
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	e->stamp = spf_now_ns_inline();
	e->cpu = (uint32_t)spf_me.cpu;
	e->type = type;
	e->a0 = a0;
	e->a1 = a1;
	e->a2 = a2;
	__atomic_store_n(&e->seq, i + 1, __ATOMIC_RELEASE);
	if (!spf_sched_on)
		return;
	/* Under the scheduler (nothing interrupts this): the run's digest, and the guide. */
	uint64_t h = r->digest;
	uint64_t w[5] = { e->stamp, type, a0, a1, a2 };
	for (int k = 0; k < 5; k++) {
		h ^= w[k] + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
		h *= 0xBF58476D1CE4E5B9ull;
	}
	r->digest = h;
	spf_sched_event(type);
}
