#pragma once
/* spf_mmu.h - the hardware side of a CPU: its TLB and one load/store instruction.
 *
 * A TLB is a direct-mapped array of entries in the arena (the CPU's IPI flush region).
 * An entry caches vpn -> (pfn, writable) and the frame's generation at fill time.
 *
 * One access is one instruction: an IPI that arrives in the middle is held (the handler
 * sees the instruction in progress, defers, and the instruction's end runs it), so an
 * interrupt is taken only between instructions, as on hardware.  That is what makes the
 * generation check an exact oracle: under a correct protocol a frame cannot be freed
 * while this CPU still holds a translation to it, since the freer waits for our ack.
 *
 *   spf_tlb_access: SPF_TLB_HIT (out[0] = loaded value), SPF_TLB_MISS, SPF_TLB_PERM
 *   (write through a read-only entry), SPF_TLB_STALE (the frame's generation moved:
 *   out[0] = entry gen, out[1] = frame gen, out[2] = pfn; the access is not performed).
 */
struct spf_tlb_entry {
	uint64_t tag;      /* (vpn << 1) | 1 when valid, 0 when flushed */
	uint64_t data;     /* (pfn << 12) | SPF_TLB_RW */
	uint64_t gen;      /* frame generation when filled */
	uint64_t va;       /* the page address (for audits) */
};
#define SPF_TLB_RW    2
#define SPF_TLB_HIT   0
#define SPF_TLB_MISS  1
#define SPF_TLB_PERM  2
#define SPF_TLB_STALE 3

int  spf_tlb_access(struct spf_tlb_entry *tlb, uint64_t nentries, const uint64_t *frame_gen,
		    uint64_t *frame_payload, uint64_t va, int write, uint64_t value, uint64_t *out);
void spf_tlb_fill(struct spf_tlb_entry *tlb, uint64_t nentries, uint64_t va, uint64_t pfn,
		  uint64_t gen, int writable);

/* Bracket a multi-step "instruction" in Python the same way (IPIs wait for its end). */
void spf_insn_begin(void);
void spf_insn_end(void);
