#pragma once
/* spf_rcu.h - epoch-based RCU emulation.
 *
 * One shared counter gp_seq (starts at 1).  A reader's outermost rcu_read_lock (or
 * irq_disable) publishes the gp_seq it saw in its slot; the outermost unlock clears it.
 * A grace period with cookie c (= gp_seq after a bump) has elapsed when every live CPU's
 * slot is 0 or >= c, i.e. every reader that could have seen the pre-bump state is gone.
 *
 * Protocol (seq_cst):
 *   updater: (1) unpublish the object  (2) c = ++gp_seq  (3) wait for every slot 0 or >= c
 *            (4) free
 *   reader:  (a) s = gp_seq  (b) slot = s, then smp_mb  (b') gp_seq again: changed, back
 *            to (b) with it  (c) read pointers ... (d) slot = 0
 * If (3) read the slot as 0 before (b), then (c) comes after (1) and cannot find the object;
 * if it read s < c, it waits for (d).  gp_seq is 64-bit: it never wraps.  (b') makes a
 * published s exact: gp_seq was s after the slot held it, so a grace period with c > s
 * began after that and its (3) sees the slot; a section whose s is below the cookie of
 * a grace period seen to elapse has ended (pagetable.assert_no_walker_in relies on it).
 * A CPU marked dead is not waited for.
 */
void     spf_rcu_read_lock(void);
void     spf_rcu_read_unlock(void);
int      spf_rcu_read_depth(void);              /* includes IRQs-off sections */
/* A lockless walker names the table it now relies on (its slot's walk_ref), inside a
 * read-side or IRQs-off section only (else ignored); the section's outermost end (or
 * the outermost irq_enable: an IPI sync waits for no more) clears it.  A table free
 * that finds its table named by another CPU frees it under a walker (pagetable.py). */
void     spf_walk_ref(uint64_t ref);
uint64_t spf_rcu_start_gp(void);                /* returns the cookie */
int      spf_rcu_gp_blocker(uint64_t cookie);   /* -1 when elapsed, else a CPU holding it */
int      spf_synchronize_rcu(int64_t timeout_ns); /* -1 ok, else the CPU that held it up */
/* Busted twin: a grace period that does not wait for anyone. */
int      spf_synchronize_rcu_busted(int64_t timeout_ns);
