#pragma once
/* spf_sched.h - the controlled scheduler: the second engine, over the same primitives.
 *
 * The CPUs stay worker processes, but only one runs at a time: the one whose id is in
 * turn.  Every primitive's perturbation hook (spf_perturb.h: lock, atomic, seq, rcu,
 * irq, ipi, tlb, walk) and every named delay point is a scheduling point, where the
 * running CPU counts a step, asks the policy who runs next and, if another, hands the
 * turn over (its go word, a futex) and sleeps until the turn comes back.  Between two
 * points a CPU runs alone, so the shared state it sees is a function of the schedule.
 *
 * Blocking: a wait (a lock's, a sequence's, an IPI ack's, a grace period's, a sleep)
 * is spf_sched_wait: the CPU is BLOCKED on a word and the value it saw, and is not
 * chosen until the word changes, a pending IPI can be taken (IRQs on, no instruction in
 * progress), or its logical deadline passes.  When no CPU can run, the scheduler moves
 * the logical clock to the earliest deadline and wakes that waiter with a timeout;
 * with no deadline left it records a deadlock and stops.
 *
 * IPIs: a send sets the target's pending bits and ticket (spf_cpu.h's (1), (2)) and
 * sends no signal; the target takes the IPI at its next point with IRQs enabled and
 * outside an instruction, and at the outermost irq_enable and insn_end, as a signal
 * would be taken.  Time: spf_now_ns is the logical clock (SPF_SCHED_STEP_NS per step),
 * so deadlines, stamps and pacing count steps, never the wall clock.
 *
 * Policies (all seeded; the same seed and configuration give the same schedule):
 *   RANDOM  at each point, with probability switch_pm / 1e6, a uniformly chosen runnable
 *           CPU runs next; otherwise the current one goes on.
 *   PCT     Burckhardt et al. (ASPLOS 2010): distinct random priorities depth..depth+n-1,
 *           depth-1 change points drawn from [1, k]; the highest-priority runnable CPU
 *           runs; at the i-th change point the running CPU's priority drops to i.
 *   LIST    a recorded schedule: at step s the entry (s, c) switches to c if c can run;
 *           otherwise the current CPU goes on, and a CPU that cannot is followed by the
 *           next one that can, in id order.  Every switch any policy makes is logged as
 *           such an entry, so a run's log replayed as a LIST is the same run; shrinking
 *           drops entries.
 *   GUIDED  a recorded order of events (a real-parallel run's ring events), given as
 *           the CPU of each: the CPU whose entry is next runs until the entry is met;
 *           when it cannot (it waits), a CPU with an IPI to take runs (the acks it may
 *           wait for), else the current one goes on, else the next in id order.
 *           param 0: IPIs and table alloc/unlink/free; an entry is met when its CPU
 *           records its next event of those types.  param 1: operation starts; a CPU's
 *           n-th entry is met once it has begun n + 1 operations (SPF_EV_OP): the entry
 *           runs the operation whose start it records to its end, so the operation's
 *           effects come where it began, not at the CPU's next turn, which may come
 *           many operations of the others later.  (A CPU that ran ahead meets its
 *           entries at once, so the list is always followed to its end; the caller
 *           leaves out each CPU's last start, which would wait for one more.)  Then
 *           the rest of the run (the tail) has one preemption, placed: CPU k & 0xff
 *           runs first, alone, and at the (k >> 8)-th step of the tail drops below
 *           every other CPU (which run in id order, each until it blocks or ends).  A
 *           recorded prefix, then the one preemption, inside the operations that
 *           raced, that parallelism gave.  param 2: the same, but the CPU drops at
 *           the first point after its (k >> 8)-th event of the tail (a lock taken or
 *           released, IRQs or an RCU section entered or left, an IPI, a table's life:
 *           spf_trace's records), as CHESS preempts at synchronisation only: a
 *           writer's window deep inside a long operation (a ptl dropped mid-zap) is
 *           its n-th event, where counting points would need thousands of tries.
 *           With param 2 an entry 256 + c is c's held operation: c runs (its
 *           operation in flight) until its (k >> 8)-th event since the entry came up,
 *           and is then held below every other CPU for the rest of the run, while
 *           the list goes on without it (it runs only when no other CPU can): a long
 *           operation that the others' recorded operations overlapped.
 *           param 3: the recorded operation starts as an order, not a serialisation:
 *           the operations overlap as they did in the run, at random.  A CPU that has
 *           begun an operation whose entry is not yet next (it ran ahead of the order)
 *           is not chosen while one that has not can run; among those that can, as
 *           RANDOM with switch_pm = k & 0xfffff (the current CPU goes on with
 *           probability 1 - switch_pm / 1e6) from the list's (k >> 20)-th entry on;
 *           before it the current CPU goes on until it cannot (the operations one by
 *           one, in the recorded order: the run up to the window that raced).  An
 *           entry is passed once its CPU has begun the operation, so the list covers
 *           every start up to the violation, the operations in flight at it too; after
 *           it, the same coin (when its window began).  No point is added: a run's
 *           switch log replays it as LIST.  (A CPU ahead stops at its operation's
 *           first point, which comes before the operation's shared effects: a lock,
 *           a walk's read, a TLB lookup.)
 *           param 4: param 1's placed preemption and a second: CPU k & 0xff drops at
 *           the (k >> 32)-th step of the tail, and once it has, CPU (k >> 8) & 0xff
 *           drops below it at the first point after its ((k >> 16) & 0xffff)-th event
 *           (as param 2 counts them): the CPU preempted inside its window, the partner
 *           that ran into it preempted at a synchronisation (a sync done, a lock
 *           released) before it finished, and the first one back in between.  The
 *           search tries it where one preemption met a related violation
 *           (sched/replay.py).  param 5: the same, CPU k & 0xff dropping after its
 *           (k >> 32)-th event (as param 2 without a held entry).
 * The digest folds (step, cpu, class) of every point: equal digests, equal schedules.
 *
 * A run ends at a point of the schedule, never at a wall-clock moment: after a violation
 * the CPUs stop at their next operation, and spf_sched_halt_after bounds what they may
 * still do (a CPU left retrying a timed wait for ever would otherwise be cut wherever
 * the runner's patience ended, a different run each time).
 */
#define SPF_SCHED_RANDOM 1
#define SPF_SCHED_PCT    2
#define SPF_SCHED_LIST   3
#define SPF_SCHED_GUIDED 4

#define SPF_SCHED_ABSENT   0   /* per-CPU state: not arrived yet */
#define SPF_SCHED_RUNNABLE 1
#define SPF_SCHED_BLOCKED  2
#define SPF_SCHED_DONE     3

#define SPF_SCHED_NONE     65535  /* turn: nobody (before the start, after a deadlock) */
#define SPF_SCHED_MAX_DEPTH 16
#define SPF_SCHED_STEP_NS  1000   /* logical time per step */
#define SPF_SCHED_CPU_BITS 16     /* a log entry: (step << 16) | cpu */
#define SPF_PC_NAMED 8            /* a named delay point (Python), as a point's class */
#define SPF_PC_WAIT  9            /* a blocking wait, as a point's class */
#define SPF_PC_EXIT  10

struct spf_sched {
	uint32_t turn;            /* the CPU that runs */
	uint32_t ncpus;
	uint32_t arrived;
	uint32_t policy;
	uint64_t rng;
	uint64_t step;            /* points so far (all CPUs) */
	uint64_t clock_ns;        /* logical time */
	uint64_t digest;
	uint32_t switch_pm;       /* RANDOM */
	uint32_t depth;           /* PCT */
	uint64_t change_at[16];   /* PCT change points (steps), ascending */
	uint32_t deadlock;        /* no CPU could run and none had a deadline */
	uint32_t finished;        /* every CPU is done */
	uint64_t halt_at;         /* the schedule stops at this step (0: never) */
	uint32_t halted;          /* ... and it did: every CPU waits for good */
	uint32_t place_cpu;       /* GUIDED param 1, 2: the CPU of the placed preemption */
	uint64_t timeouts;        /* waits ended by their deadline */
	uint64_t switches;        /* turn changes, the first included */
	uint64_t preemptions;     /* ... of them, away from a CPU that could have gone on */
	uint64_t log_len;         /* entries logged (may exceed log_cap: then truncated) */
	uint64_t log_cap;
	uint64_t list_len;        /* LIST: entries to follow */
	uint64_t list_pos;
	uint64_t choice_cap;      /* exploration: steps whose choice is recorded (0: none) */
	uint64_t choice_len;
	uint64_t tail_from;       /* GUIDED param 1, 2: the step its tail began (0: not yet) */
	uint64_t place_events;    /* GUIDED param 2: the placed CPU's events before it drops */
	uint64_t place_seen;      /* ... and those it recorded in the tail so far */
	uint64_t held;            /* GUIDED param 2: place_cpu's operation is held */
	uint32_t overlap;         /* GUIDED param 3: op starts as an order, random between */
	uint64_t overlap_from;    /* ... from this entry on (before it, one by one) */
	uint32_t partner;         /* GUIDED param 4, 5: the CPU of the second preemption */
	uint64_t partner_events;  /* ... its events after place_cpu dropped, before it drops */
	uint64_t partner_seen;
	uint32_t prio[256];
	uint32_t state[256];
	uint32_t go[256];         /* futex words: bumped when the turn is handed to the CPU */
	uint32_t wait_wide[256];
	uint64_t wait_addr[256];  /* the word a BLOCKED CPU waits on to change (0: none) */
	uint64_t wait_val[256];
	uint64_t wait_deadline[256];  /* logical ns, 0: none */
	uint64_t points[256];     /* points per CPU */
	uint64_t ops_begun[256];  /* SPF_EV_OP records per CPU (GUIDED param 1) */
	uint64_t guide_met[256];  /* GUIDED param 1, 3: entries of each CPU passed */
	/* then log_cap log entries, then list_len list entries (uint64_t each), then
	 * choice_cap choices: per step from 0, the mask of CPUs that could run (CPUs < 64)
	 * and (cur + 1) << 32 | next, two words */
};

/* Bytes of the shared area for a log of log_cap entries and a list of list_len. */
uint64_t spf_sched_size(uint64_t log_cap, uint64_t list_len, uint64_t choice_cap);
/* Once, in the creating process.  param: RANDOM switch_pm, PCT depth, GUIDED 1 for the
 * placed preemption at a step, 2 at an event (0: none), 3 for overlapping operations,
 * 4 or 5 for two placed preemptions; k: PCT's estimate of the run's steps, GUIDED's
 * placed preemption (step << 8) | cpu or (events << 8) | cpu, param 3's
 * (first random entry << 20) | switch_pm, or param 4's
 * step (5: events) << 32 | events << 16 | partner << 8 | cpu.  Returns 0, or -1 for a
 * bad argument. */
int  spf_sched_init(struct spf_sched *s, int ncpus, int policy, uint64_t seed,
		    uint32_t param, uint64_t k, uint64_t log_cap,
		    const uint64_t *list, uint64_t list_len, uint64_t choice_cap);
/* In a registered CPU: join; returns once this CPU first has the turn. */
int  spf_sched_enter(struct spf_sched *s);
/* This CPU is done (after spf_cpu_unregister): the turn goes on without it. */
void spf_sched_exit(void);
void spf_sched_yield(int cls);    /* a point (a named delay point); no-op outside --sched */
/* The running CPU: the schedule halts after this many more steps (the first call counts;
 * a violation's report makes it).  No-op outside --sched. */
void spf_sched_halt_after(uint64_t steps);
int  spf_sched_active(void);
