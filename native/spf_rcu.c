#include <sched.h>
#include <stdint.h>
#include "spf_internal.h"
#include "spf_futex.h"
#include "spf_cpu.h"
#include "spf_rcu.h"

/* (b'): while gp_seq moved past the published s, publish it again (spf_rcu.h). */
static __attribute__((noinline)) void spf_reader_settle(struct spf_percpu *me, uint64_t s)
{
	uint64_t now;
	while ((now = __atomic_load_n(spf_me.gp_seq, __ATOMIC_SEQ_CST)) != s) {
		s = now;
		__atomic_store_n(&me->rcu_snap, s, __ATOMIC_SEQ_CST);
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
	}
}

void spf_reader_enter(void)
{
	if (spf_me.reader_nest++ == 0 && spf_me.cpu >= 0) {
		struct spf_percpu *me = &spf_me.slots[spf_me.cpu];
		uint64_t s = __atomic_load_n(spf_me.gp_seq, __ATOMIC_SEQ_CST);   /* (a) */
		__atomic_store_n(&me->rcu_snap, s, __ATOMIC_SEQ_CST);            /* (b) */
		__atomic_thread_fence(__ATOMIC_SEQ_CST);   /* pairs with the updater's (2)-(3) */
		spf_reader_settle(me, s);                                        /* (b') */
	}
}

void spf_reader_exit(void)
{
	if (--spf_me.reader_nest == 0 && spf_me.cpu >= 0) {
		__atomic_store_n(&spf_me.slots[spf_me.cpu].walk_ref, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&spf_me.slots[spf_me.cpu].rcu_snap, 0, __ATOMIC_RELEASE); /* (d) */
	}
}

void spf_walk_ref(uint64_t ref)
{
	if (spf_me.reader_nest > 0 && spf_me.cpu >= 0)
		__atomic_store_n(&spf_me.slots[spf_me.cpu].walk_ref, ref, __ATOMIC_RELAXED);
}

/* Perturbation (spf_perturb.h): inside the read-side section, at both ends. */
void spf_rcu_read_lock(void)
{
	if (spf_me.rcu_nest++ == 0)
		spf_sched_trace(SPF_EV_RCU, 1, 0, 0);
	spf_reader_enter();
	if (spf_me.cpu >= 0)
		spf_me.slots[spf_me.cpu].rcu_depth = spf_me.rcu_nest;
	spf_perturb(SPF_PC_RCU);
}

void spf_rcu_read_unlock(void)
{
	if (spf_me.rcu_nest <= 0)
		return;                      /* unbalanced: ignored (Python side asserts) */
	spf_perturb(SPF_PC_RCU);
	if (--spf_me.rcu_nest == 0)
		spf_sched_trace(SPF_EV_RCU, 0, 0, 0);
	spf_reader_exit();
	if (spf_me.cpu >= 0)
		spf_me.slots[spf_me.cpu].rcu_depth = spf_me.rcu_nest;
}

int spf_rcu_read_depth(void) { return spf_me.reader_nest; }

uint64_t spf_rcu_start_gp(void)
{
	uint64_t cookie = __atomic_add_fetch(spf_me.gp_seq, 1, __ATOMIC_SEQ_CST);  /* (2) */
	spf_perturb(SPF_PC_RCU);                                   /* between (2) and (3) */
	return cookie;
}

int spf_rcu_gp_blocker(uint64_t cookie)
{
	for (int c = 0; c < spf_me.ncpus; c++) {                               /* (3) */
		struct spf_percpu *p = &spf_me.slots[c];
		if (c == spf_me.cpu || __atomic_load_n(&p->alive, __ATOMIC_SEQ_CST) != SPF_CPU_ONLINE)
			continue;
		uint64_t s = __atomic_load_n(&p->rcu_snap, __ATOMIC_SEQ_CST);
		if (s != 0 && s < cookie)
			return c;
	}
	return -1;
}

int spf_synchronize_rcu(int64_t timeout_ns)
{
	uint64_t cookie = spf_rcu_start_gp();
	uint64_t deadline = timeout_ns >= 0 ? spf_now_ns_inline() + (uint64_t)timeout_ns : 0;
	for (unsigned n = 0;; n++) {
		int b = spf_rcu_gp_blocker(cookie);
		if (b < 0)
			return -1;
		if (spf_sched_on) {      /* the scheduler: until the blocker's snapshot moves */
			uint64_t *snap = &spf_me.slots[b].rcu_snap;
			if (spf_sched_wait(snap, 1, __atomic_load_n(snap, __ATOMIC_SEQ_CST), deadline))
				return b;
			continue;
		}
		if (n < 64)
			spf_cpu_relax();
		else if (n < 256)
			sched_yield();
		else
			spf_sleep_ns(20000);
		if (deadline && (n & 15) == 0 && spf_now_ns_inline() > deadline)
			return b;
	}
}

int spf_synchronize_rcu_busted(int64_t timeout_ns)
{
	(void)timeout_ns;
	spf_rcu_start_gp();          /* BUSTED: bumps the epoch, waits for nobody */
	return -1;
}
