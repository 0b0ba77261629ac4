#include <signal.h>
#include <stdint.h>
#include "spf_internal.h"
#include "spf_mmu.h"

int spf_tlb_access(struct spf_tlb_entry *tlb, uint64_t nentries, const uint64_t *frame_gen,
		   uint64_t *frame_payload, uint64_t va, int write, uint64_t value, uint64_t *out)
{
	uint64_t vpn = va >> 12;
	struct spf_tlb_entry *e = &tlb[vpn & (nentries - 1)];
	int r;
	spf_perturb(SPF_PC_TLB);             /* perturbation: between instructions */
	spf_insn_begin();
	if (__atomic_load_n(&e->tag, __ATOMIC_RELAXED) != ((vpn << 1) | 1)) {
		r = SPF_TLB_MISS;
	} else if (write && !(e->data & SPF_TLB_RW)) {
		r = SPF_TLB_PERM;
	} else {
		uint64_t pfn = e->data >> 12;
		/* The translation is read; the data access comes after it (a store waits in
		 * the store buffer): a flush must wait for this instruction to end (its IPI is
		 * deferred to spf_insn_end, a remote invalidation waits for insn_seq). */
		spf_perturb_walk();
		uint64_t g = __atomic_load_n(&frame_gen[pfn], __ATOMIC_ACQUIRE);
		if (g != e->gen) {
			out[0] = e->gen;
			out[1] = g;
			out[2] = pfn;
			r = SPF_TLB_STALE;
		} else {
			if (write)
				__atomic_store_n(&frame_payload[pfn], value, __ATOMIC_RELAXED);
			else
				out[0] = __atomic_load_n(&frame_payload[pfn], __ATOMIC_RELAXED);
			r = SPF_TLB_HIT;
		}
	}
	spf_insn_end();
	return r;
}

void spf_tlb_fill(struct spf_tlb_entry *tlb, uint64_t nentries, uint64_t va, uint64_t pfn,
		  uint64_t gen, int writable)
{
	uint64_t vpn = va >> 12;
	struct spf_tlb_entry *e = &tlb[vpn & (nentries - 1)];
	spf_insn_begin();
	spf_perturb(SPF_PC_TLB);             /* perturbation: the walked entry ages before the fill */
	/* The tag is cleared first and set last, so a remote reader (the checkers) that reads
	 * the tag before and after the other words never accepts a torn entry. */
	__atomic_store_n(&e->tag, 0, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_store_n(&e->data, (pfn << 12) | (writable ? SPF_TLB_RW : 0), __ATOMIC_RELAXED);
	__atomic_store_n(&e->gen, gen, __ATOMIC_RELAXED);
	__atomic_store_n(&e->va, va & ~0xfffull, __ATOMIC_RELAXED);
	__atomic_store_n(&e->tag, (vpn << 1) | 1, __ATOMIC_RELEASE);
	spf_insn_end();
}
