#pragma once
/* spf_cpu.h - per-CPU slots, interrupts and IPIs.
 *
 * A "CPU" is a worker process.  Each owns one struct spf_percpu in the shared arena;
 * process-local nesting counters mirror into it so that a hang dump can read them.
 *
 * IRQs: spf_irq_disable/enable nest, and block/unblock the IPI signal on the outermost
 * level (so a CPU with IRQs off cannot run the handler, hence cannot ack).  An IRQs-off
 * section is also an RCU read-side section (RCU-sched is merged into RCU).
 *
 * IPI protocol (liburcu's need_mb handshake, made multi-sender with tickets):
 *   sender:  (1) pending |= work   (2) t = ++req_seq   (3) tgkill(target main thread)
 *            (4) wait until ack_seq >= t, re-sending on a back-off, giving up on a dead
 *                target or at the timeout
 *   handler: (a) r = req_seq (acquire; pairs with (2))  (b) work = xchg(pending, 0)
 *            (c) do the work  (d) ack_seq = r (release; pairs with (4))  (e) wake sender
 * Work requested with ticket t <= r was set at (1) before (2), so (b) sees it.
 * The handler is never re-entered (a CPU's IRQs are off in its handler): an IPI that
 * arrives during (a)-(e) of a deferred run (spf_insn_end's) makes it run (a)-(e) again,
 * so (d) never acks a ticket whose work (c) has not done.
 * Delivery is by tgkill to the registered thread: no other thread of the worker
 * (numpy's OpenBLAS threads) can take the signal.
 */
#define SPF_MAX_CPUS 256

struct spf_percpu {
	int32_t  pid;
	int32_t  tid;
	uint32_t alive;          /* SPF_CPU_ONLINE, _OFFLINE (clean exit) or 0 (none/dead) */
	uint32_t req_seq;        /* IPI tickets handed out */
	uint32_t ack_seq;        /* last ticket acked (futex word for senders) */
	uint32_t ack_waiters;
	uint64_t pending;        /* work bits */
	uint64_t rcu_snap;       /* 0 outside any read-side section, else the gp_seq seen */
	int32_t  irq_depth;      /* mirrors of the process-local nesting, for dumps */
	int32_t  rcu_depth;
	uint64_t irq_enable_ns;  /* last outermost irq_enable */
	uint64_t ack_ns;         /* last ack */
	uint64_t ipis_handled;
	uint64_t flush_gen;      /* bumped by every TLB flush this CPU performs */
	uint64_t handler_delays; /* perturbation: delays taken inside the IPI handler */
	uint64_t insn_seq;       /* odd while an instruction (access, walk+fill) runs */
	/* A ranged flush (the kernel's flush_tlb_info, one per sender): this CPU's request
	 * [flush_start, flush_end), published by flush_active while it waits for the acks */
	uint64_t flush_start;
	uint64_t flush_end;
	uint64_t flush_active;
	uint64_t walk_ref;       /* the table a lockless walk of the current read-side or
	                          * IRQs-off section relies on (spf_walk_ref), 0 outside;
	                          * the slot stays 128 bytes: no false sharing */
};

#define SPF_CPU_ONLINE  1
#define SPF_CPU_OFFLINE 2

#define SPF_IPI_FLUSH_TLB 1   /* zero this CPU's registered flush region */
#define SPF_IPI_SYNC      2   /* nothing but the ack (tlb_remove_table_sync_one) */
#define SPF_IPI_FLUSH_RANGE 4 /* the senders' ranges: only through spf_ipi_flush_range */

#define SPF_IPI_ERR_TIMEOUT  1   /* target never acked (IRQs off for too long, or stuck) */
#define SPF_IPI_ERR_DEAD     2   /* target process is gone */
#define SPF_IPI_ERR_IRQS_OFF 3   /* caller had IRQs off: would deadlock, refused */

/* Per process: point at the arena's slot array and the RCU state, install the handler. */
int  spf_cpu_setup(struct spf_percpu *slots, int ncpus, uint64_t *gp_seq);
int  spf_cpu_register(int cpu);          /* this process (main thread) becomes CPU cpu */
void spf_cpu_unregister(void);
void spf_cpu_mark_dead(int cpu);         /* by the runner, once it reaped the worker */
/* spf_cpu_unregister takes this CPU offline cleanly: its TLB flushed, pending IPIs
 * count as acked.  A CPU that died instead is reported by ipi_sync as dead. */
int  spf_cpu_id(void);
/* The flush region: tlb_entries TLB entries (struct spf_tlb_entry, direct-mapped by vpn),
 * then paging-structure-cache entries up to len bytes (two words each, the valid one
 * first).  With tlb_entries 0 every flush is a full one. */
void spf_ipi_set_flush_region(void *p, uint64_t len, uint64_t tlb_entries);

/* Perturbation inside the IPI handler (a named delay point): with probability
 * per_million / 1e6 the handler pauses up to max_ns before it acks; seeded per CPU. */
void spf_ipi_set_handler_delay(uint32_t per_million, uint64_t max_ns, uint64_t seed);

void spf_irq_disable(void);
void spf_irq_enable(void);
int  spf_irqs_disabled(void);

/* Send work to every CPU in mask (bit i of word i/64); the caller's own bit runs the work
 * locally.  Returns -1 when all acked, else the first failing CPU, with the reason in
 * spf_ipi_last_error(); -2 when the caller itself is at fault (IRQs off). */
int  spf_ipi_sync(const uint64_t *mask, int nbits, uint64_t work, int64_t timeout_ns);
int  spf_ipi_last_error(void);
/* (1) of a remote invalidation, one pass: in each of ncpus rows of row_words words from
 * base, the nents entries of ent_words words from word first (every CPU's TLB, or every
 * CPU's paging-structure cache), clear the valid word (an entry's first: key << 1 | 1)
 * of each entry whose key is in [lo, hi).  One relaxed store per entry, so an entry a
 * CPU fills meanwhile is whole or invalid; the next spf_tlb_remote_wait's (2) orders the
 * stores.  A TLB flush primitive: a perturbation point (a scheduling point under the
 * scheduler) before it writes. */
void spf_tlb_remote_invalidate(uint64_t *base, int ncpus, uint64_t row_words,
			       uint64_t first, int nents, int ent_words, uint64_t lo,
			       uint64_t hi);
/* Remote TLB invalidation without interrupting anyone (arm64's broadcast TLBI + DSB):
 * the caller has already cleared the targets' TLBs in the arena; this waits only for
 * the instructions each target had in flight (insn_seq), never for IRQs-off sections.
 *   invalidator: (1) clear the entries  (2) smp_mb  (3) wait while insn_seq is the
 *                same odd value it read
 *   target:      (a) insn_seq++ (odd)   (b) smp_mb  (c) read the TLB ... (d) insn_seq++
 * (2) pairs with (b): an instruction that began after (3) read its seq sees (1). */
void spf_tlb_remote_wait(const uint64_t *mask, int nbits);

/* x86's flush_tlb_mm_range by IPI (arch/x86/mm/tlb.c, v6.15): this CPU's request
 * [start, end) goes in its slot, then the targets are sent SPF_IPI_FLUSH_RANGE.
 *   sender:  (0) flush_start/end = range  (0') flush_active = 1, then (1)-(4) as
 *                ipi_sync (the pending RMW of (1) orders (0) and (0') before it)
 *            (5) flush_active = 0 once every target acked
 *   handler: after (b), (c) invalidates the range of every sender whose flush_active it
 *                reads 1 (flush_tlb_func)
 * A handler that took the sender's work at (b) reads (0) and (0') (they precede (1)), and
 * the sender rewrites its range only after (5); a handler that did not take it may read
 * an active sender's range early, or a range being rewritten, and flush it anyway:
 * harmless, an extra invalidation.  The sender takes its own range the same way.
 * A range invalidates the TLB entries of its pages and every paging-structure-cache
 * entry (INVLPG does both: Intel SDM vol. 3A 4.10.4.1);
 * end == ~0 (the kernel's TLB_FLUSH_ALL) flushes all (a CR3 write).  Returns as
 * spf_ipi_sync. */
int  spf_ipi_flush_range(const uint64_t *mask, int nbits, uint64_t start, uint64_t end,
			 int64_t timeout_ns);

/* Busted twin: sends, but returns without waiting for any ack. */
int  spf_ipi_sync_busted(const uint64_t *mask, int nbits, uint64_t work, int64_t timeout_ns);
