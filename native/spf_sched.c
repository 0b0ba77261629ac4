#define _GNU_SOURCE
#include <stddef.h>
#include <string.h>
#include <stdint.h>
#include "spf_internal.h"
#include "spf_futex.h"
#include "spf_cpu.h"
#include "spf_sched.h"

/* Handing the turn over (the one two-sided protocol here):
 *   giver:  (1) turn = next (seq_cst)  (2) go[next]++  (3) futex_wake(go[next])
 *   taker:  (a) g = go[me]  (b) turn == me? run  (c) else futex_wait(go[me], g)
 * If (b) misses (1), (a) read go before (2), so (c) returns at once or is woken by (3).
 * Everything the giver wrote before (1) is visible to the taker after (b) (seq_cst
 * pairs (1) with (b)); only the turn holder writes the scheduler's fields. */

int spf_sched_on;                 /* process-local: this CPU runs under the scheduler */
static struct spf_sched *S;
static int sched_cpu = -1;        /* this CPU's id (spf_me.cpu is gone after unregister) */

#define LOG(s) ((uint64_t *)((s) + 1))
#define LIST(s) (LOG(s) + (s)->log_cap)
#define CHOICES(s) (LIST(s) + (s)->list_len)
#define SPIN_TURN 200

static uint64_t mix(uint64_t h, uint64_t x)
{
	h ^= x + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
	h ^= h >> 31;
	h *= 0xBF58476D1CE4E5B9ull;
	return h ^ (h >> 29);
}

static uint64_t rnd(struct spf_sched *s)
{
	uint64_t x = s->rng;
	x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
	s->rng = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static uint64_t below(uint64_t r, uint64_t n) { return ((r >> 32) * n) >> 32; }

uint64_t spf_sched_size(uint64_t log_cap, uint64_t list_len, uint64_t choice_cap)
{
	return sizeof(struct spf_sched) + 8 * (log_cap + list_len + 2 * choice_cap);
}

int spf_sched_init(struct spf_sched *s, int ncpus, int policy, uint64_t seed,
		   uint32_t param, uint64_t k, uint64_t log_cap,
		   const uint64_t *list, uint64_t list_len, uint64_t choice_cap)
{
	if (ncpus < 1 || ncpus > 256 || policy < SPF_SCHED_RANDOM || policy > SPF_SCHED_GUIDED
	    || (policy == SPF_SCHED_RANDOM && param > 1000000)
	    || (policy == SPF_SCHED_PCT && (param < 1 || param > SPF_SCHED_MAX_DEPTH || !k))
	    || (policy == SPF_SCHED_GUIDED && param && param < 3
		&& ((k & 0xff) >= (uint64_t)ncpus || !(k >> 8)))
	    || (policy == SPF_SCHED_GUIDED && param == 3
		&& (!(k & 0xfffff) || (k & 0xfffff) > 1000000))
	    || (policy == SPF_SCHED_GUIDED && param >= 4
		&& ((k & 0xff) >= (uint64_t)ncpus || (k >> 8 & 0xff) >= (uint64_t)ncpus
		    || (k & 0xff) == (k >> 8 & 0xff) || !(k >> 16 & 0xffff) || !(k >> 32)))
	    || (policy == SPF_SCHED_GUIDED && param > 5))
		return -1;
	for (uint64_t i = 0; policy == SPF_SCHED_GUIDED && i < list_len; i++)
		if (list[i] >= 256 && (param != 2 || list[i] - 256 != (k & 0xff)))
			return -1;             /* a held operation is the placed CPU's, by events */
	memset(s, 0, sizeof(*s));      /* the log is written before it is read */
	s->turn = SPF_SCHED_NONE;
	s->ncpus = (uint32_t)ncpus;
	s->policy = (uint32_t)policy;
	s->rng = mix(seed, 0x5c4ed) | 1;
	s->digest = mix(seed, (uint64_t)policy);
	s->log_cap = log_cap;
	if (policy == SPF_SCHED_RANDOM)
		s->switch_pm = param;
	if (policy == SPF_SCHED_GUIDED && param == 3) {
		s->overlap = 1;
		s->switch_pm = (uint32_t)(k & 0xfffff);
		s->overlap_from = k >> 20;
	} else if (policy == SPF_SCHED_GUIDED && param) {
		/* one preemption: CPU k & 0xff runs first and runs last from its (k >> 8)-th
		 * step (param 2: after its (k >> 8)-th event) of the tail on; the others in
		 * between, lower ids first (params 4, 5: and a second, below) */
		s->depth = 2;
		for (int c = 0; c < ncpus; c++)
			s->prio[c] = 2 + (uint32_t)(ncpus - c);
		s->prio[k & 0xff] = 3 + (uint32_t)ncpus;
		s->place_cpu = (uint32_t)(k & 0xff);
		if (param == 1)
			s->change_at[0] = k >> 8;
		else if (param == 2)
			s->place_events = k >> 8;     /* change_at[0] is set by the event */
		else {                         /* 4, 5: and its partner after an event */
			if (param == 4)
				s->change_at[0] = k >> 32;
			else
				s->place_events = k >> 32;
			s->partner = (uint32_t)(k >> 8 & 0xff);
			s->partner_events = k >> 16 & 0xffff;
		}
	} else if (policy == SPF_SCHED_PCT) {
		s->depth = param;
		/* a random permutation of depth..depth+n-1 */
		for (int c = 0; c < ncpus; c++)
			s->prio[c] = param + (uint32_t)c;
		for (int c = ncpus - 1; c > 0; c--) {
			int j = (int)below(rnd(s), (uint64_t)c + 1);
			uint32_t t = s->prio[c]; s->prio[c] = s->prio[j]; s->prio[j] = t;
		}
		for (uint32_t i = 0; i + 1 < param; i++)
			s->change_at[i] = 1 + below(rnd(s), k);
		for (uint32_t i = 1; i + 1 < param; i++)        /* ascending: change i is the i-th */
			for (uint32_t j = i; j > 0 && s->change_at[j - 1] > s->change_at[j]; j--) {
				uint64_t t = s->change_at[j];
				s->change_at[j] = s->change_at[j - 1]; s->change_at[j - 1] = t;
			}
	}
	s->list_len = policy >= SPF_SCHED_LIST ? list_len : 0;
	for (uint64_t i = 0; i < s->list_len; i++)
		LIST(s)[i] = list[i];
	s->choice_cap = choice_cap;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return 0;
}

uint64_t spf_sched_clock(void) { return S->clock_ns; }
uint64_t spf_sched_rel(const void *p) { return (uint64_t)((uintptr_t)p - (uintptr_t)S); }
int spf_sched_active(void) { return spf_sched_on; }

static uint64_t load_word(struct spf_sched *s, int c)
{
	const void *a = (const void *)(uintptr_t)s->wait_addr[c];
	return s->wait_wide[c] ? __atomic_load_n((const uint64_t *)a, __ATOMIC_SEQ_CST)
		: __atomic_load_n((const uint32_t *)a, __ATOMIC_SEQ_CST);
}

/* An IPI CPU c would take now: pending work, IRQs on, no instruction in progress. */
static int ipi_takeable(int c)
{
	struct spf_percpu *p = &spf_me.slots[c];
	return __atomic_load_n(&p->pending, __ATOMIC_SEQ_CST) && p->irq_depth == 0
		&& !(__atomic_load_n(&p->insn_seq, __ATOMIC_SEQ_CST) & 1);
}

static int can_run(struct spf_sched *s, int c)
{
	uint32_t st = s->state[c];
	if (st == SPF_SCHED_RUNNABLE)
		return 1;
	if (st != SPF_SCHED_BLOCKED)
		return 0;
	if (s->wait_deadline[c] && s->clock_ns >= s->wait_deadline[c])
		return 1;
	if (s->wait_addr[c] && load_word(s, c) != s->wait_val[c])
		return 1;
	return ipi_takeable(c);
}

/* GUIDED with a placed preemption: whether the list is done and the tail runs (as PCT
 * with the priorities and change point init gave); the change point moves to count from
 * the step where the tail began. */
static int placed_tail(struct spf_sched *s)
{
	if (s->policy != SPF_SCHED_GUIDED || !s->depth || s->list_pos < s->list_len)
		return 0;
	if (!s->tail_from) {
		s->tail_from = s->step ? s->step : 1;
		for (uint32_t i = 0; !s->place_events && i + 1 < s->depth; i++)
			s->change_at[i] += s->tail_from;
	}
	return 1;
}

/* GUIDED param 3: among the CPUs that can run and have not begun an operation ahead of
 * the recorded order (all of them once it is passed), the current one goes on or, with
 * probability switch_pm / 1e6 from the list's overlap_from-th entry on, a uniformly
 * chosen one runs (before it, another only when the current one cannot: the next
 * entry's CPU, else the next in id order; the operations one by one in the recorded
 * order, no coin drawn).  When only CPUs ahead can run (the entry's CPU waits for one
 * of them), one with an IPI to take, else the current one, else the next in id order. */
static int pick_overlap(struct spf_sched *s, int cur, const uint8_t *ok)
{
	int n = (int)s->ncpus, nel = 0, in_list = s->list_pos < s->list_len;
	uint8_t el[256];
	for (int c = 0; c < n; c++)
		nel += el[c] = (uint8_t)(ok[c] && !(in_list && s->ops_begun[c] > s->guide_met[c]));
	if (nel) {
		uint32_t pm = s->list_pos < s->overlap_from ? 0 : s->switch_pm;
		int flip = pm && below(rnd(s), 1000000) < pm;
		if (cur >= 0 && el[cur] && !flip)
			return cur;
		if (pm) {
			uint64_t k = below(rnd(s), (uint64_t)nel);
			for (int c = 0; c < n; c++)
				if (el[c] && k-- == 0)
					return c;
		}
		uint64_t g = in_list ? LIST(s)[s->list_pos] : 0;  /* one by one: the entry's */
		if (g < (uint64_t)n && el[g])
			return (int)g;
		for (int i = 1; i <= n; i++)
			if (el[(cur + i + n) % n])
				return (cur + i + n) % n;
	}
	for (int i = 1; i <= n; i++)
		if (ok[(cur + i + n) % n] && ipi_takeable((cur + i + n) % n))
			return (cur + i + n) % n;
	if (cur >= 0 && ok[cur])
		return cur;
	for (int i = 1; i <= n; i++)
		if (ok[(cur + i + n) % n])
			return (cur + i + n) % n;
	return -1;
}

/* Who runs after a point of cur (-1: none, at the start and at an exit).  Sets
 * *preempt when cur could have gone on.  -1: nobody can (a deadlock). */
static int pick(struct spf_sched *s, int cur, int *preempt)
{
	uint8_t ok[256];
	int n = (int)s->ncpus, nok = 0;
	for (int c = 0; c < n; c++)
		nok += ok[c] = (uint8_t)can_run(s, c);
	*preempt = 0;
	if (!nok) {                       /* logical time moves to the earliest deadline */
		int best = -1;
		for (int c = 0; c < n; c++)
			if (s->state[c] == SPF_SCHED_BLOCKED && s->wait_deadline[c]
			    && (best < 0 || s->wait_deadline[c] < s->wait_deadline[best]))
				best = c;
		if (best >= 0) {
			s->clock_ns = s->wait_deadline[best];
			s->timeouts++;
		}
		return best;
	}
	int cur_ok = cur >= 0 && ok[cur], next = -1;
	if (s->policy == SPF_SCHED_RANDOM) {
		if (cur_ok && below(rnd(s), 1000000) >= s->switch_pm)
			return cur;
		uint64_t k = below(rnd(s), (uint64_t)nok);
		for (int c = 0; c < n; c++)
			if (ok[c] && k-- == 0) { next = c; break; }
	} else if (s->policy == SPF_SCHED_PCT || placed_tail(s)) {
		for (uint32_t i = 0; cur >= 0 && i + 1 < s->depth; i++)
			if (s->change_at[i] == s->step)
				s->prio[cur] = i + 1;
		for (int c = 0; c < n; c++)
			if (ok[c] && (next < 0 || s->prio[c] > s->prio[next]))
				next = c;
	} else if (s->overlap) {
		next = pick_overlap(s, cur, ok);
	} else if (s->policy == SPF_SCHED_GUIDED) {
		uint64_t g = s->list_pos < s->list_len ? LIST(s)[s->list_pos] : (uint64_t)n;
		int held = s->held ? (int)s->place_cpu : -1;
		if (g >= 256)
			g -= 256;                      /* a held operation's entry: its CPU */
		if (g < (uint64_t)n && ok[g])
			next = (int)g;
		for (int i = 1; next < 0 && i <= n; i++) {  /* an IPI the entry's CPU waits for */
			int c = (cur + i + n) % n;
			if (ok[c] && c != held && ipi_takeable(c))
				next = c;
		}
		if (next < 0 && cur_ok && cur != held)
			return cur;
		for (int i = 1; next < 0 && i <= n; i++)
			if (ok[(cur + i + n) % n] && (cur + i + n) % n != held)
				next = (cur + i + n) % n;
		if (next < 0 && held >= 0 && ok[held])
			next = held;
	} else {
		uint64_t *l = LIST(s);
		while (s->list_pos < s->list_len && l[s->list_pos] >> SPF_SCHED_CPU_BITS < s->step)
			s->list_pos++;
		if (s->list_pos < s->list_len && l[s->list_pos] >> SPF_SCHED_CPU_BITS == s->step) {
			uint64_t c = l[s->list_pos++] & ((1u << SPF_SCHED_CPU_BITS) - 1);
			if (c < (uint64_t)n && ok[c])
				next = (int)c;
		}
		if (next < 0 && cur_ok)
			return cur;
		for (int i = 1; next < 0 && i <= n; i++)
			if (ok[(cur + i + n) % n])
				next = (cur + i + n) % n;
	}
	*preempt = cur_ok && next != cur;
	return next;
}

/* pick, and for exploration the choice it made: who could run, who ran, who runs; a
 * free choice is logged as made by nobody (-1) and is no preemption. */
static int pick_choice(struct spf_sched *s, int cur, int free_choice, int *preempt)
{
	uint64_t mask = 0;
	for (int c = 0; s->choice_len < s->choice_cap && c < (int)s->ncpus && c < 64; c++)
		if (can_run(s, c))
			mask |= 1ull << c;
	int next = pick(s, cur, preempt);
	if (free_choice)
		*preempt = 0;
	if (s->choice_len < s->choice_cap) {
		CHOICES(s)[2 * s->choice_len] = mask;
		CHOICES(s)[2 * s->choice_len + 1] =
			(uint64_t)(free_choice ? 0 : cur + 1) << 32 | (uint32_t)next;
	}
	if (s->choice_cap)
		s->choice_len++;
	return next;
}

static void wait_turn(struct spf_sched *s, int me)
{
	for (int n = 0;; n++) {
		uint32_t g = __atomic_load_n(&s->go[me], __ATOMIC_SEQ_CST);            /* (a) */
		if (__atomic_load_n(&s->turn, __ATOMIC_SEQ_CST) == (uint32_t)me)       /* (b) */
			return;
		if (n < SPIN_TURN)
			spf_cpu_relax();
		else
			spf_futex_wait_ns(&s->go[me], g, -1);                         /* (c) */
	}
}

static void give_turn(struct spf_sched *s, int next)
{
	__atomic_store_n(&s->turn, (uint32_t)next, __ATOMIC_SEQ_CST);                 /* (1) */
	__atomic_fetch_add(&s->go[next], 1, __ATOMIC_SEQ_CST);                        /* (2) */
	spf_futex_wake(&s->go[next], 0);                                              /* (3) */
}

/* The turn holder decided: log a switch and hand over (returns at once when next is
 * the caller; for a caller that goes on waiting, when the turn is back). */
static void switch_to(struct spf_sched *s, int me, int next, int preempt, int wait)
{
	if (next < 0 || s->halted) {
		int live = 0;
		for (int c = 0; c < (int)s->ncpus; c++)
			live += s->state[c] != SPF_SCHED_DONE;
		if (!s->halted) {            /* halted: stopped on purpose, neither */
			s->deadlock = live > 0;
			s->finished = live == 0;
		}
		__atomic_store_n(&s->turn, SPF_SCHED_NONE, __ATOMIC_SEQ_CST);
		for (int c = 0; c < (int)s->ncpus; c++)      /* the runner reads what happened */
			__atomic_fetch_add(&s->go[c], 1, __ATOMIC_SEQ_CST);
		if (wait)
			for (;;)
				spf_futex_wait_ns(&s->turn, SPF_SCHED_NONE, -1);
		return;
	}
	if (next == me)
		return;
	if (s->log_len < s->log_cap)
		LOG(s)[s->log_len] = s->step << SPF_SCHED_CPU_BITS | (uint64_t)next;
	s->log_len++;
	s->switches++;
	s->preemptions += (uint64_t)preempt;
	spf_trace(SPF_EV_SWITCH, (uint64_t)me, (uint64_t)next, s->step);
	give_turn(s, next);
	if (wait)
		wait_turn(s, me);
}

static void step(int cls, int free_choice)
{
	struct spf_sched *s = S;
	int me = spf_me.cpu, preempt;
	s->step++;
	s->clock_ns += SPF_SCHED_STEP_NS;
	s->points[me]++;
	s->digest = mix(s->digest, s->step << 24 | (uint64_t)me << 8 | (uint64_t)cls);
	if (s->halt_at && s->step >= s->halt_at)
		s->halted = 1;                         /* switch_to stops everyone */
	int next = pick_choice(s, me, free_choice, &preempt);
	switch_to(s, me, next, preempt, 1);
}

/* The IPI a signal would deliver here.  Once it is acked, its sender, which waited,
 * and this CPU, which was interrupted, both go on at once, as two CPUs do: who runs
 * first is a free choice (a step of its own, no preemption), as after a block. */
static void take_ipi(void)
{
	if (spf_me.irq_nest == 0 && spf_me.insn_nest == 0 && spf_me.cpu >= 0
	    && __atomic_load_n(&spf_me.slots[spf_me.cpu].pending, __ATOMIC_SEQ_CST)) {
		spf_ipi_handle();
		step(SPF_PC_IPI, 1);
	}
}

void spf_sched_take_ipi(void)
{
	if (spf_sched_on)
		take_ipi();
}

void spf_sched_point(int cls)
{
	step(cls, 0);
	take_ipi();
}

/* This CPU recorded an event (spf_trace): count an operation's start; under GUIDED, the
 * entries it meets are passed. */
void spf_sched_event(uint32_t type)
{
	struct spf_sched *s = S;
	uint32_t me = (uint32_t)spf_me.cpu;
	if (type == SPF_EV_OP)
		s->ops_begun[me]++;
	if (s->place_events && !s->held && s->list_pos >= s->list_len && me == s->place_cpu
	    && type != SPF_EV_SWITCH && ++s->place_seen == s->place_events)
		s->change_at[0] = s->step + 1;             /* its next point: pick() drops it */
	if (s->partner_events && s->list_pos >= s->list_len && me == s->partner
	    && s->prio[s->place_cpu] == 1 && type != SPF_EV_SWITCH
	    && ++s->partner_seen == s->partner_events)
		s->prio[me] = 0;          /* params 4, 5: below the placed CPU, at its next point */
	if (s->policy != SPF_SCHED_GUIDED || s->list_pos >= s->list_len)
		return;
	uint64_t *l = LIST(s);
	if (l[s->list_pos] >= 256 && l[s->list_pos] - 256 == me && type != SPF_EV_SWITCH
	    && ++s->place_seen == s->place_events) {       /* param 2: hold the operation */
		s->held = 1;
		s->prio[me] = 1;                           /* below all, in the tail too */
		s->list_pos++;
	}
	if (s->overlap) {              /* param 3: an entry is passed once its op has begun */
		while (s->list_pos < s->list_len
		       && s->ops_begun[l[s->list_pos]] > s->guide_met[l[s->list_pos]]) {
			s->guide_met[l[s->list_pos]]++;
			s->list_pos++;
		}
		return;
	}
	if (!s->depth) {                                   /* param 0: IPI and table events */
		int guided = type == SPF_EV_IPI_SEND || type == SPF_EV_IPI_HANDLE
			|| (type >= SPF_EV_TABLE_ALLOC && type <= SPF_EV_TABLE_FREE);
		if (guided && l[s->list_pos] == me)
			s->list_pos++;
		return;
	}
	while (s->list_pos < s->list_len && l[s->list_pos] < 256   /* param 1, 2: op starts */
	       && s->ops_begun[l[s->list_pos]] > s->guide_met[l[s->list_pos]] + 1) {
		s->guide_met[l[s->list_pos]]++;
		s->list_pos++;
	}
}

void spf_sched_halt_after(uint64_t steps)
{
	if (spf_sched_on && !S->halt_at)
		S->halt_at = S->step + (steps ? steps : 1);
}

void spf_sched_yield(int cls)
{
	if (spf_sched_on)
		spf_sched_point(cls);
}

int spf_sched_wait(const void *addr, int wide, uint64_t val, uint64_t deadline)
{
	struct spf_sched *s = S;
	int me = spf_me.cpu;
	s->wait_addr[me] = (uint64_t)(uintptr_t)addr;
	s->wait_wide[me] = (uint32_t)wide;
	s->wait_val[me] = val;
	s->wait_deadline[me] = deadline;
	s->state[me] = SPF_SCHED_BLOCKED;
	spf_sched_point(SPF_PC_WAIT);
	s->state[me] = SPF_SCHED_RUNNABLE;
	s->wait_addr[me] = 0;
	s->wait_deadline[me] = 0;
	return deadline && s->clock_ns >= deadline;
}

void spf_sched_sleep(uint64_t ns)
{
	spf_sched_wait(NULL, 0, 0, S->clock_ns + (ns ? ns : 1));
}

int spf_sched_enter(struct spf_sched *s)
{
	int me = spf_me.cpu;
	if (me < 0 || me >= (int)s->ncpus)
		return -1;
	S = s;
	sched_cpu = me;
	__atomic_store_n(&s->state[me], SPF_SCHED_RUNNABLE, __ATOMIC_SEQ_CST);
	if (__atomic_add_fetch(&s->arrived, 1, __ATOMIC_SEQ_CST) == s->ncpus) {
		int preempt;            /* the last to arrive starts the schedule (step 0) */
		int first = pick_choice(s, -1, 0, &preempt);
		if (s->log_len < s->log_cap)
			LOG(s)[s->log_len] = (uint64_t)first;
		s->log_len++;
		s->switches++;
		give_turn(s, first);
	}
	wait_turn(s, me);
	spf_sched_on = 1;
	spf_perturb_armed = 1;        /* the hooks are the points (spf_perturb_at) */
	return 0;
}

void spf_sched_exit(void)
{
	if (!spf_sched_on)
		return;
	struct spf_sched *s = S;
	int me = sched_cpu, preempt;
	spf_sched_on = 0;
	spf_perturb_armed = 0;
	s->step++;
	s->digest = mix(s->digest, s->step << 24 | (uint64_t)me << 8 | SPF_PC_EXIT);
	s->state[me] = SPF_SCHED_DONE;
	switch_to(s, me, pick_choice(s, -1, 0, &preempt), 0, 0);
}
