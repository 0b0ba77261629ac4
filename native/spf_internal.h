/* spf_internal.h - helpers shared by the native sources; not part of the API (not in cdef). */
#ifndef SPF_INTERNAL_H
#define SPF_INTERNAL_H
#include <stdint.h>
#include <time.h>

static inline void spf_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

/* The controlled scheduler (spf_sched.h), process-local: set in a CPU that runs under it.
 * Its waits and its clock replace the wall clock's: spf_now_ns_inline is logical there. */
extern int spf_sched_on __attribute__((visibility("hidden")));
uint64_t spf_sched_clock(void) __attribute__((visibility("hidden")));
void spf_sched_point(int cls) __attribute__((visibility("hidden")));
/* Block until *addr (64-bit if wide, else 32) differs from val, an IPI can be taken, or
 * the logical deadline (0: none) passes; 1 if the deadline ended it. */
int  spf_sched_wait(const void *addr, int wide, uint64_t val, uint64_t deadline)
	__attribute__((visibility("hidden")));
void spf_sched_sleep(uint64_t ns) __attribute__((visibility("hidden")));
void spf_sched_take_ipi(void) __attribute__((visibility("hidden")));
void spf_sched_event(uint32_t type) __attribute__((visibility("hidden")));
/* An address as its offset from the scheduler's area (the arena's layout fixes it; the
 * mapping's address differs from run to run). */
uint64_t spf_sched_rel(const void *p) __attribute__((visibility("hidden")));
/* Under the scheduler, holds and sections go to the CPU's ring too (the trace's slices,
 * spf_ring.h's SPF_EV_LOCK, _IRQ, _RCU); parallel runs skip them. */
#include "spf_ring.h"
#define spf_sched_trace(type, a0, a1, a2) do { \
		if (__builtin_expect(spf_sched_on, 0)) \
			spf_trace((type), (uint64_t)(a0), (uint64_t)(a1), (uint64_t)(a2)); \
	} while (0)

static inline uint64_t spf_now_ns_inline(void)
{
	if (__builtin_expect(spf_sched_on, 0))
		return spf_sched_clock();
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* How long a lock waiter spins before it sleeps (see measurements.md: spinning briefly
 * first turns a ~70 us futex round trip into ~0.3 us when the holder is running). */
#define SPF_SPIN_TRIES 2000

int spf_futex_wait_ns(uint32_t *word, uint32_t expected, int64_t timeout_ns);

/* Generic perturbation (spf_perturb.h): every primitive calls spf_perturb(class), the IPI
 * handler spf_perturb_handler(class).  Disarmed: one predictable branch on a process-local
 * flag. */
#include "spf_perturb.h"
extern int spf_perturb_armed __attribute__((visibility("hidden")));
void spf_perturb_at(int cls) __attribute__((cold, visibility("hidden")));
void spf_perturb_at_handler(int cls) __attribute__((cold, visibility("hidden")));

static inline void spf_perturb(int cls)
{
	if (__builtin_expect(spf_perturb_armed, 0))
		spf_perturb_at(cls);
}

static inline void spf_perturb_handler(int cls)
{
	if (__builtin_expect(spf_perturb_armed, 0))
		spf_perturb_at_handler(cls);
}

/* Process-local state of "this CPU" (each worker process is one CPU). */
struct spf_percpu;
struct spf_ring_hdr;
struct spf_local {
	struct spf_percpu *slots;
	int ncpus;
	int cpu;                 /* -1 until spf_cpu_register */
	uint64_t *gp_seq;
	int irq_nest;
	int reader_nest;         /* rcu_read_lock depth + (irq_nest > 0) */
	int rcu_nest;
	struct spf_ring_hdr *ring;
	void *flush_p;
	uint64_t flush_len;
	int ipi_err;
	volatile int insn_nest;       /* inside an "instruction": IPIs wait */
	volatile int insn_deferred;   /* an IPI arrived meanwhile */
	volatile int ipi_running;     /* spf_ipi_handle is running (maybe deferred) */
	volatile int ipi_again;       /* an IPI arrived meanwhile: the running one reruns */
	uint32_t delay_per_million;   /* IPI handler perturbation */
	uint64_t delay_max_ns;
	uint64_t delay_rng;
};
extern struct spf_local spf_me;

void spf_reader_enter(void);   /* outermost RCU reader entry: publish the gp snapshot */
void spf_reader_exit(void);
void spf_ipi_handle(void);      /* the IPI handler body (also run deferred) */
#endif
