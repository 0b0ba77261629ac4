#pragma once
/* spf_perturb.h - generic perturbation: a seeded chance of a pause at every primitive.
 *
 * KCSAN's random delays and rr's chaos mode, with no knowledge of the protocol.  Every
 * primitive a CPU calls asks spf_perturb(class) (spf_internal.h) whether to pause:
 *   lock    spin lock/trylock/unlock, rwsem down/up/trylock/downgrade
 *   atomic  loads, stores, RMWs and fences of spf_atomic.h
 *   seq     seqcount read begin/retry, write begin/end
 *   rcu     rcu_read_lock/unlock, grace-period start
 *   irq     irq_disable/enable
 *   ipi     each IPI send; in the handler, before the ack
 *   tlb     TLB access, fill, remote invalidation pass and wait; the local flush, and in
 *           the handler the flush
 *   walk    the shared reads of a lockless walk (Python, through spf_perturb_walk)
 * A primitive pauses after a read or an acquire and before a write or a release, so the
 * pause falls inside the section, or between a read and the use of what it read; a spin
 * lock also before its acquire (a trylock protocol's window ends there); a release (an
 * unlock, a downgrade, a seqcount write end, a release store) also after it, so what the
 * code does next runs late: a step that a broken protocol moved past its unlock or its
 * publication is then seen by the next holder or reader.  A walk's shared
 * read pauses with its own chance (read_factor times the profile's) and always sleeps
 * (1..read_sleep_ns): long enough for another CPU to run a whole operation.
 * Disarmed, the hook is one predictable branch on a process-local flag.
 *
 * A decision: with probability per_million / 1e6 a pause, of kind spin (spf_cpu_relax,
 * 1..spin_max times), yield (sched_yield) or sleep (nanosleep, 1..sleep_max_ns), in the
 * shares spin_pm / yield_pm / the rest (per mille).  The slow CPU (rr's starvation): in
 * the first slow_window_ns of every slow_period_ns (CLOCK_MONOTONIC + slow_phase_ns) one
 * of the slow_cpus CPUs, chosen afresh for every period from slow_key (the same on every
 * CPU, so the CPUs agree and exactly one is slow), has its chance multiplied by
 * slow_factor and every pause a sleep of 1..slow_sleep_ns.  The starved CPU changes
 * because a window opens only when the right side of a race is the slow one: a reader
 * starved while the writer runs, or a writer starved while the reader runs.
 *
 * Streams: xorshift64* per CPU seeded from (seed, cpu).  The IPI handler draws from a
 * stream of its own, never the main one; a handler run that interrupts another (a
 * deferred run) does not pause.  Armed, the timer slack is 1 us so a short sleep is short.
 *
 * Pauses are counted in the CPU's hits row (SPF_PH_WORDS words, in the arena): per class,
 * per kind, those in a slow window, those in the handler.  Relaxed atomic adds: the
 * handler may interrupt the main code's count on the same word.
 */
#define SPF_PC_LOCK    0
#define SPF_PC_ATOMIC  1
#define SPF_PC_SEQ     2
#define SPF_PC_RCU     3
#define SPF_PC_IRQ     4
#define SPF_PC_IPI     5
#define SPF_PC_TLB     6
#define SPF_PC_WALK    7
#define SPF_PC_CLASSES 8

#define SPF_PK_SPIN  1       /* decision kinds (the low 2 bits of a decision) */
#define SPF_PK_YIELD 2
#define SPF_PK_SLEEP 3
#define SPF_PD_SLOW  4       /* decision bit: drawn in a slow window */
#define SPF_PD_SHIFT 3       /* decision >> SPF_PD_SHIFT: spins, or ns to sleep */

#define SPF_PH_KIND    8     /* hits row: [class] pauses, [SPF_PH_KIND + kind - 1] */
#define SPF_PH_SLOW    11    /* pauses in a slow window */
#define SPF_PH_HANDLER 12    /* pauses in the IPI handler */
#define SPF_PH_WORDS   16

struct spf_perturb_profile {
	uint32_t per_million;     /* chance of a pause at each primitive */
	uint32_t spin_pm;         /* of the pauses: spins, per mille */
	uint32_t yield_pm;        /* yields, per mille; the rest sleep */
	uint32_t spin_max;
	uint64_t sleep_max_ns;
	uint32_t slow;            /* the slow cycle is on */
	uint32_t slow_cpus;       /* the CPUs that take turns (this one among them) */
	uint64_t slow_key;        /* which CPU is slow in which period */
	uint32_t slow_factor;
	uint64_t slow_period_ns;
	uint64_t slow_window_ns;
	uint64_t slow_phase_ns;
	uint64_t slow_sleep_ns;
	uint32_t read_factor;     /* a lockless walk's shared read: chance x this (>= 1) */
	uint64_t read_sleep_ns;   /* ... and its pauses are sleeps up to this */
};

/* Arm this process (CPU cpu) with a copy of *p; hits: its row (must outlive the arming).
 * Returns 0, or -1 for an inconsistent profile (then disarmed). */
int      spf_perturb_arm(const struct spf_perturb_profile *p, uint64_t seed, int cpu,
			 uint64_t *hits);
void     spf_perturb_disarm(void);      /* also done by spf_cpu_register and _unregister */
/* The main stream's next decision (0: no pause), as the hook draws it; now_ns places it
 * in or out of a slow window (the hook passes the clock on the slow CPU, else 0). */
uint64_t spf_perturb_draw(uint64_t now_ns);
void     spf_perturb_walk(void);                  /* the lockless walk's hook */
