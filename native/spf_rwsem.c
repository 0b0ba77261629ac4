#include <stdint.h>
#include "spf_internal.h"
#include "spf_futex.h"
#include "spf_rwsem.h"

#define RW_READER_MASK 0x0000ffffu
#define RW_WW_ONE      0x00010000u
#define RW_WW_MASK     0x7fff0000u
#define RW_WRITER      0x80000000u

static int read_ok(uint32_t st) { return (st & (RW_WRITER | RW_WW_MASK)) == 0; }
static int write_ok(uint32_t st) { return (st & (RW_WRITER | RW_READER_MASK)) == 0; }

void spf_rwsem_init(struct spf_rwsem *s)
{
	s->state = 0;
	s->evc = 0;
	s->sleepers = 0;
	s->owner = -1;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Event-count protocol between a releaser and a sleeper (all steps seq_cst):
 *   releaser: (1) change state  (2) read sleepers; if any: (3) bump evc, futex_wake
 *   sleeper:  (a) sleepers++  (b) read evc  (c) re-check state  (d) futex_wait(evc, b)
 * If (2) reads zero, (a) follows (2), so (c) follows (1) and sees the new state.
 * Otherwise (3) moves evc after (1): a sleeper past (b) returns from (d) at once or is
 * woken, and one before (b) sees the new state at (c).  No bump on the uncontended path. */
static void rwsem_wake(struct spf_rwsem *s)
{
	if (__atomic_load_n(&s->sleepers, __ATOMIC_SEQ_CST)) {
		__atomic_fetch_add(&s->evc, 1, __ATOMIC_SEQ_CST);
		spf_futex_wake(&s->evc, 0);
	}
}

/* Wait until ok(state) might hold: spin first, then sleep on the event count. */
static void rwsem_wait(struct spf_rwsem *s, int (*ok)(uint32_t))
{
	if (spf_sched_on) {              /* the scheduler: blocked until the state changes */
		uint32_t st = __atomic_load_n(&s->state, __ATOMIC_SEQ_CST);
		if (!ok(st))
			spf_sched_wait(&s->state, 0, st, 0);
		return;
	}
	for (int n = 0; n < SPF_SPIN_TRIES; n++) {
		if (ok(__atomic_load_n(&s->state, __ATOMIC_RELAXED)))
			return;
		spf_cpu_relax();
	}
	__atomic_fetch_add(&s->sleepers, 1, __ATOMIC_SEQ_CST);
	uint32_t ev = __atomic_load_n(&s->evc, __ATOMIC_SEQ_CST);
	if (!ok(__atomic_load_n(&s->state, __ATOMIC_SEQ_CST)))
		spf_futex_wait(&s->evc, ev, -1);
	__atomic_fetch_sub(&s->sleepers, 1, __ATOMIC_SEQ_CST);
}

static int read_claim(struct spf_rwsem *s)
{
	uint32_t st = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
	while (read_ok(st)) {
		if (__atomic_compare_exchange_n(&s->state, &st, st + 1, 0,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return 1;
	}
	return 0;
}

/* Perturbation (spf_perturb.h): after an acquire attempt; before and after a release or
 * downgrade. */
int spf_down_read_trylock(struct spf_rwsem *s)
{
	int taken = read_claim(s);
	if (taken)
		spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(s), 1, SPF_LK_READ);
	spf_perturb(SPF_PC_LOCK);
	return taken;
}

uint64_t spf_down_read(struct spf_rwsem *s)
{
	uint64_t waited = 0;
	if (!read_claim(s)) {
		uint64_t t0 = spf_now_ns_inline();
		while (!read_claim(s))
			rwsem_wait(s, read_ok);
		waited = spf_now_ns_inline() - t0;
	}
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(s), 1, SPF_LK_READ);
	spf_perturb(SPF_PC_LOCK);
	return waited;
}

void spf_up_read(struct spf_rwsem *s)
{
	spf_perturb(SPF_PC_LOCK);
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(s), 0, SPF_LK_READ);
	__atomic_fetch_sub(&s->state, 1, __ATOMIC_SEQ_CST);     /* RELEASE, and step (1) */
	rwsem_wake(s);
	spf_perturb(SPF_PC_LOCK);
}

static int write_claim(struct spf_rwsem *s, uint32_t extra_clear, int cpu)
{
	uint32_t st = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
	while (write_ok(st)) {
		if (__atomic_compare_exchange_n(&s->state, &st, (st - extra_clear) | RW_WRITER,
						0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
			__atomic_store_n(&s->owner, cpu, __ATOMIC_RELAXED);
			return 1;
		}
	}
	return 0;
}

int spf_down_write_trylock(struct spf_rwsem *s, int cpu)
{
	int taken = write_claim(s, 0, cpu);
	if (taken)
		spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(s), 1, SPF_LK_WRITE);
	spf_perturb(SPF_PC_LOCK);
	return taken;
}

uint64_t spf_down_write(struct spf_rwsem *s, int cpu)
{
	uint64_t waited = 0;
	if (!write_claim(s, 0, cpu)) {
		uint64_t t0 = spf_now_ns_inline();
		/* Announce the waiting writer: from here new readers queue behind us. */
		__atomic_fetch_add(&s->state, RW_WW_ONE, __ATOMIC_SEQ_CST);
		while (!write_claim(s, RW_WW_ONE, cpu))
			rwsem_wait(s, write_ok);
		waited = spf_now_ns_inline() - t0;
	}
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(s), 1, SPF_LK_WRITE);
	spf_perturb(SPF_PC_LOCK);
	return waited;
}

void spf_up_write(struct spf_rwsem *s)
{
	spf_perturb(SPF_PC_LOCK);
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(s), 0, SPF_LK_WRITE);
	__atomic_store_n(&s->owner, -1, __ATOMIC_RELAXED);
	__atomic_fetch_and(&s->state, ~RW_WRITER, __ATOMIC_SEQ_CST);
	rwsem_wake(s);
	spf_perturb(SPF_PC_LOCK);
}

void spf_downgrade_write(struct spf_rwsem *s)
{
	spf_perturb(SPF_PC_LOCK);
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(s), 0, SPF_LK_WRITE);
	spf_sched_trace(SPF_EV_LOCK, spf_sched_rel(s), 1, SPF_LK_READ);
	__atomic_store_n(&s->owner, -1, __ATOMIC_RELAXED);
	/* One RMW: writer bit off and one reader on, so no other writer gets in between. */
	__atomic_fetch_add(&s->state, 1u - RW_WRITER, __ATOMIC_SEQ_CST);
	rwsem_wake(s);
	spf_perturb(SPF_PC_LOCK);
}

int spf_rwsem_is_locked(const struct spf_rwsem *s)
{
	return (__atomic_load_n(&s->state, __ATOMIC_RELAXED) & (RW_WRITER | RW_READER_MASK)) != 0;
}
int spf_rwsem_is_write_locked(const struct spf_rwsem *s)
{
	return (__atomic_load_n(&s->state, __ATOMIC_RELAXED) & RW_WRITER) != 0;
}
int spf_rwsem_readers(const struct spf_rwsem *s)
{
	return (int)(__atomic_load_n(&s->state, __ATOMIC_RELAXED) & RW_READER_MASK);
}
int spf_rwsem_waiting_writers(const struct spf_rwsem *s)
{
	return (int)((__atomic_load_n(&s->state, __ATOMIC_RELAXED) & RW_WW_MASK) >> 16);
}

uint64_t spf_down_write_busted(struct spf_rwsem *s, int cpu)
{
	/* BUSTED: waits only for other writers, not for readers to drain. */
	for (;;) {
		uint32_t st = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
		if (!(st & RW_WRITER) &&
		    __atomic_compare_exchange_n(&s->state, &st, st | RW_WRITER, 0,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			break;
		if (spf_sched_on)
			spf_sched_wait(&s->state, 0, st, 0);
		else
			spf_cpu_relax();
	}
	__atomic_store_n(&s->owner, cpu, __ATOMIC_RELAXED);
	spf_perturb(SPF_PC_LOCK);
	return 0;
}
