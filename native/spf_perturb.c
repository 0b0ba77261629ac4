#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <sys/prctl.h>
#include "spf_internal.h"
#include "spf_futex.h"
#include "spf_perturb.h"

/* Process-local: each worker process is one CPU.  Written only while disarmed (the
 * flag is cleared first and set last, with signal fences: the handler of this thread
 * is the only concurrent reader). */
int spf_perturb_armed;
static struct spf_perturb_profile prof;
static uint64_t main_rng, handler_rng;
static uint64_t *hits;
static uint32_t self_cpu;
static volatile int handler_busy;
static long saved_slack = -1;

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static uint64_t xorshift64s(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* A uniform integer in [0, n) from the high 32 bits of r (n < 2^32). */
static uint64_t below(uint64_t r, uint64_t n) { return ((r >> 32) * n) >> 32; }

/* In the window of this period, and this CPU is the period's slow one. */
static int in_slow_window(uint64_t now)
{
	if (!now || !prof.slow)
		return 0;
	uint64_t t = now + prof.slow_phase_ns;
	if (t % prof.slow_period_ns >= prof.slow_window_ns)
		return 0;
	return below(splitmix64(prof.slow_key ^ (t / prof.slow_period_ns)), prof.slow_cpus)
		== self_cpu;
}

static uint64_t decision(int kind, uint64_t amount, int slow)
{
	return (amount << SPF_PD_SHIFT) | (slow ? SPF_PD_SLOW : 0) | (uint64_t)kind;
}

/* The one decision function: the hooks and spf_perturb_draw all come here. */
static uint64_t decide(uint64_t *s, uint64_t now)
{
	int slow = in_slow_window(now);
	uint64_t pm = prof.per_million;
	if (slow && (pm *= prof.slow_factor) > 1000000)
		pm = 1000000;
	if (below(xorshift64s(s), 1000000) >= pm)
		return 0;
	uint64_t r = xorshift64s(s), share = below(r, 1000), u = r & 0xffffffffu;
	if (slow)
		return decision(SPF_PK_SLEEP, 1 + u % prof.slow_sleep_ns, 1);
	if (share < prof.spin_pm)
		return decision(SPF_PK_SPIN, 1 + u % prof.spin_max, 0);
	if (share < prof.spin_pm + prof.yield_pm)
		return decision(SPF_PK_YIELD, 0, 0);
	return decision(SPF_PK_SLEEP, 1 + u % prof.sleep_max_ns, 0);
}

static void take(int cls, uint64_t d)
{
	int kind = (int)(d & 3);
	uint64_t amount = d >> SPF_PD_SHIFT;
	__atomic_fetch_add(&hits[cls], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&hits[SPF_PH_KIND + kind - 1], 1, __ATOMIC_RELAXED);
	if (d & SPF_PD_SLOW)
		__atomic_fetch_add(&hits[SPF_PH_SLOW], 1, __ATOMIC_RELAXED);
	if (kind == SPF_PK_SPIN) {
		for (uint64_t i = 0; i < amount; i++)
			spf_cpu_relax();
	} else if (kind == SPF_PK_YIELD) {
		sched_yield();
	} else {
		spf_sleep_ns(amount);
	}
}

static uint64_t clock_if_slow(void) { return prof.slow ? spf_now_ns_inline() : 0; }

void spf_perturb_at(int cls)
{
	if (spf_sched_on) {                      /* under the scheduler: a scheduling point */
		spf_sched_point(cls);
		return;
	}
	uint64_t d = decide(&main_rng, clock_if_slow());
	if (d)
		take(cls, d);
}

void spf_perturb_at_handler(int cls)
{
	if (handler_busy || spf_sched_on)   /* the scheduler runs a handler whole */
		return;                  /* interrupted a handler run: its stream is in use */
	handler_busy = 1;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	uint64_t d = decide(&handler_rng, clock_if_slow());
	if (d) {
		__atomic_fetch_add(&hits[SPF_PH_HANDLER], 1, __ATOMIC_RELAXED);
		take(cls, d);
	}
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	handler_busy = 0;
}

/* A lockless walk's shared read: where the windows of this field are (a pointer read
 * and then relied on), so a pause is likelier there and long enough for another CPU to
 * run a whole conflicting operation (unlink, flush, free) before the walker goes on. */
void spf_perturb_walk(void)
{
	if (!spf_perturb_armed)
		return;
	if (spf_sched_on) {
		spf_sched_point(SPF_PC_WALK);
		return;
	}
	uint64_t pm = (uint64_t)prof.per_million * prof.read_factor;
	if (below(xorshift64s(&main_rng), 1000000) >= (pm > 1000000 ? 1000000 : pm))
		return;
	take(SPF_PC_WALK, decision(SPF_PK_SLEEP,
				   1 + (xorshift64s(&main_rng) & 0xffffffffu) % prof.read_sleep_ns,
				   0));
}

uint64_t spf_perturb_draw(uint64_t now_ns) { return decide(&main_rng, now_ns); }

void spf_perturb_disarm(void)
{
	spf_perturb_armed = 0;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	if (saved_slack >= 0) {
		prctl(PR_SET_TIMERSLACK, (unsigned long)saved_slack);
		saved_slack = -1;
	}
}

int spf_perturb_arm(const struct spf_perturb_profile *p, uint64_t seed, int cpu,
		    uint64_t *hits_row)
{
	spf_perturb_disarm();
	if (!hits_row || p->per_million > 1000000 || p->spin_pm + p->yield_pm > 1000
	    || (p->spin_pm && !p->spin_max) || !p->read_factor || !p->read_sleep_ns
	    || (p->spin_pm + p->yield_pm < 1000 && !p->sleep_max_ns)
	    || (p->slow && (!p->slow_factor || !p->slow_sleep_ns
			    || p->slow_window_ns > p->slow_period_ns || !p->slow_period_ns
			    || cpu < 0 || (uint32_t)cpu >= p->slow_cpus)))
		return -1;
	prof = *p;
	uint64_t base = splitmix64(seed ^ splitmix64((uint64_t)cpu));
	main_rng = splitmix64(base) | 1;
	handler_rng = splitmix64(base + 1) | 1;
	hits = hits_row;
	self_cpu = (uint32_t)cpu;
	handler_busy = 0;
	saved_slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
	if (saved_slack >= 0)
		prctl(PR_SET_TIMERSLACK, 1000ul);
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	spf_perturb_armed = p->per_million > 0;
	return 0;
}
