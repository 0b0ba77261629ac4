#pragma once
/* spf_ring.h - per-CPU event ring (ftrace-like), readable after its writer died.
 *
 * Layout: struct spf_ring_hdr, then capacity (a power of two) struct spf_event.  Only the
 * owning CPU writes (its main code and its IPI handler, which may interleave).  A writer
 * claims a slot with an atomic add on head, clears seq, fills the record, then publishes
 * seq = index + 1 with a release store; a reader accepts a record only when seq matches,
 * so a torn record (writer killed mid-way, or overwritten) is skipped, never misread.
 * stamp is CLOCK_MONOTONIC ns: one clock for every CPU gives the global order.
 */
struct spf_ring_hdr {
	uint64_t head;
	uint64_t capacity;
	uint64_t digest;         /* under --sched: every record, folded in order */
	uint64_t pad[5];
};
struct spf_event {
	uint64_t stamp;
	uint64_t seq;
	uint32_t cpu;
	uint32_t type;
	uint64_t a0;
	uint64_t a1;
	uint64_t a2;
};
#define SPF_EV_IPI_HANDLE 1     /* a0 = ticket acked, a1 = work bits */
#define SPF_EV_IPI_SEND   2     /* a0 = target cpu, a1 = ticket, a2 = work bits */
#define SPF_EV_TABLE_ALLOC 10   /* spfshm/mm/pagetable.py: a0 = table, a1 = level, a2 = gen */
#define SPF_EV_TABLE_UNLINK 11
#define SPF_EV_TABLE_FREE  12
#define SPF_EV_IPI_DONE   3     /* a0 = result (-1 ok / failing cpu), a1 = error, a2 = ns */
#define SPF_EV_OP         8     /* run/runner.py: an op begins; a0 = its index on the CPU, a1 = OP_INDEX */
/* Under the controlled scheduler only (spf_sched.h): */
#define SPF_EV_LOCK       4     /* a0 = lock address - the scheduler's area, a1 = 1 taken / 0 released, a2 = kind */
#define SPF_EV_IRQ        5     /* a0 = 1 disabled / 0 enabled (outermost) */
#define SPF_EV_RCU        6     /* a0 = 1 rcu_read_lock / 0 unlock (outermost) */
#define SPF_EV_SWITCH     7     /* a0 = from cpu, a1 = to cpu, a2 = step (in the giver's ring) */
#define SPF_LK_SPIN  0          /* SPF_EV_LOCK kinds */
#define SPF_LK_READ  1
#define SPF_LK_WRITE 2

/* The events' memory must be zero (every seq 0: no record valid), as a new arena is;
 * it is not written here, so the pages of a ring no event reaches are never faulted in. */
void spf_ring_init(struct spf_ring_hdr *ring, uint64_t capacity);
void spf_ring_attach(struct spf_ring_hdr *ring);    /* this process's ring */
void spf_trace(uint32_t type, uint64_t a0, uint64_t a1, uint64_t a2);
