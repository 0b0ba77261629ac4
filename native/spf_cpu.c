#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "spf_internal.h"
#include "spf_futex.h"
#include "spf_cpu.h"
#include "spf_mmu.h"
#include "spf_ring.h"

struct spf_local spf_me = { .cpu = -1 };
static int ipi_sig;
static uint64_t flush_tlb_entries;      /* the flush region's TLB part (entries) */
#define TLB_FLUSH_ALL (~0ULL)

int spf_cpu_id(void) { return spf_me.cpu; }

void spf_ipi_set_handler_delay(uint32_t per_million, uint64_t max_ns, uint64_t seed)
{
	spf_me.delay_per_million = per_million;
	spf_me.delay_max_ns = max_ns;
	spf_me.delay_rng = seed | 1;
}
int spf_ipi_last_error(void) { return spf_me.ipi_err; }

void spf_ipi_set_flush_region(void *p, uint64_t len, uint64_t tlb_entries)
{
	spf_me.flush_p = p;
	spf_me.flush_len = len;
	flush_tlb_entries = tlb_entries;
}

/* Zero the words [from, to) of the flush region in order: each entry's valid word (its
 * first) is cleared before its other words, which is what lets a remote reader tell a
 * torn entry. */
static void flush_words(uint64_t from, uint64_t to)
{
	uint64_t *w = spf_me.flush_p;
	for (uint64_t i = from; i < to; i++)
		__atomic_store_n(&w[i], 0, __ATOMIC_RELEASE);
}

/* flush_tlb_func for [start, end): each page's TLB entry (invlpg), and with it every
 * paging-structure-cache entry (the words after the TLB). */
static void flush_range_local(uint64_t start, uint64_t end)
{
	uint64_t n = flush_tlb_entries;
	if (end == TLB_FLUSH_ALL || n == 0) {
		flush_words(0, spf_me.flush_len / 8);
		return;
	}
	uint64_t lo = start >> 12, hi = (end + 0xfff) >> 12;
	struct spf_tlb_entry *tlb = spf_me.flush_p;
	if (hi - lo >= n) {                  /* every slot may hold one of the pages */
		for (uint64_t i = 0; i < n; i++) {
			uint64_t tag = __atomic_load_n(&tlb[i].tag, __ATOMIC_RELAXED);
			if ((tag & 1) && tag >> 1 >= lo && tag >> 1 < hi)
				__atomic_store_n(&tlb[i].tag, 0, __ATOMIC_RELEASE);
		}
	} else {
		for (uint64_t vpn = lo; vpn < hi; vpn++) {
			uint64_t *tag = &tlb[vpn & (n - 1)].tag;
			if (__atomic_load_n(tag, __ATOMIC_RELAXED) == ((vpn << 1) | 1))
				__atomic_store_n(tag, 0, __ATOMIC_RELEASE);
		}
	}
	flush_words(n * 4, spf_me.flush_len / 8);
}

/* (c) of a ranged flush: every active sender's range. */
static void flush_senders(void)
{
	for (int c = 0; c < spf_me.ncpus; c++) {
		struct spf_percpu *s = &spf_me.slots[c];
		if (__atomic_load_n(&s->flush_active, __ATOMIC_ACQUIRE))
			flush_range_local(__atomic_load_n(&s->flush_start, __ATOMIC_RELAXED),
					  __atomic_load_n(&s->flush_end, __ATOMIC_RELAXED));
	}
}

/* The work an IPI asks for; also run locally for the sender's own bit (a ranged flush
 * takes the sender's own range as a target does). */
static void ipi_do_work(uint64_t work)
{
	if (!(work & (SPF_IPI_FLUSH_TLB | SPF_IPI_FLUSH_RANGE)) || !spf_me.flush_p)
		return;
	if (work & SPF_IPI_FLUSH_TLB)
		flush_words(0, spf_me.flush_len / 8);
	else
		flush_senders();
	struct spf_percpu *me = &spf_me.slots[spf_me.cpu];
	__atomic_fetch_add(&me->flush_gen, 1, __ATOMIC_RELEASE);
}

/* An instruction in progress holds the IPI until its end (interrupts are taken between
 * instructions).  The handler and insn_end run in the same thread, so plain volatile
 * flags with compiler fences order them; running the body twice is harmless (the second
 * run finds no new ticket and no pending work). */
void spf_insn_begin(void)
{
	if (spf_me.insn_nest++ == 0 && spf_me.cpu >= 0) {
		uint64_t *seq = &spf_me.slots[spf_me.cpu].insn_seq;
		__atomic_store_n(seq, *seq + 1, __ATOMIC_RELAXED);        /* (a) */
		__atomic_thread_fence(__ATOMIC_SEQ_CST);                    /* (b) */
	}
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
}

void spf_insn_end(void)
{
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	if (spf_me.insn_nest == 1 && spf_me.cpu >= 0) {
		uint64_t *seq = &spf_me.slots[spf_me.cpu].insn_seq;
		__atomic_store_n(seq, *seq + 1, __ATOMIC_RELEASE);        /* (d) */
	}
	if (--spf_me.insn_nest == 0 && spf_me.insn_deferred) {
		spf_me.insn_deferred = 0;
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		spf_ipi_handle();
	} else if (spf_me.insn_nest == 0) {
		spf_sched_take_ipi();            /* the scheduler's IPI waited for the end too */
	}
}

static void ipi_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)si; (void)uc;
	int saved = errno;
	if (spf_me.insn_nest > 0)
		spf_me.insn_deferred = 1;
	else
		spf_ipi_handle();
	errno = saved;
}

/* The handler is not re-entered, as a CPU's IRQs are off in its own: a deferred run (from
 * spf_insn_end, with the signal unblocked) may be interrupted by an IPI re-sent on the
 * back-off, and a nested run would ack the ticket the outer one read at (a) while the
 * outer one still holds the work it took at (b), undone.  The nested run only marks the
 * IPI; the running one runs the body again once it is done. */
static void ipi_handle_once(void);

void spf_ipi_handle(void)
{
	if (spf_me.cpu < 0)
		return;
	if (spf_me.ipi_running) {
		spf_me.ipi_again = 1;
		return;
	}
	for (;;) {
		spf_me.ipi_running = 1;
		spf_me.ipi_again = 0;
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		ipi_handle_once();
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		spf_me.ipi_running = 0;
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		if (!spf_me.ipi_again)     /* one that comes after this runs the body itself */
			return;
	}
}

static void ipi_handle_once(void)
{
	struct spf_percpu *me = &spf_me.slots[spf_me.cpu];
	uint32_t r = __atomic_load_n(&me->req_seq, __ATOMIC_ACQUIRE);     /* (a) pairs with (2) */
	uint64_t work = __atomic_exchange_n(&me->pending, 0, __ATOMIC_SEQ_CST); /* (b) */
	if (work & (SPF_IPI_FLUSH_TLB | SPF_IPI_FLUSH_RANGE))
		spf_perturb_handler(SPF_PC_TLB);     /* generic perturbation: the flush waits */
	ipi_do_work(work);                                                 /* (c) */
	if (spf_me.delay_per_million && !spf_sched_on) {
		uint64_t x = spf_me.delay_rng;          /* xorshift64: async-signal-safe */
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		spf_me.delay_rng = x;
		if (x % 1000000 < spf_me.delay_per_million) {
			__atomic_fetch_add(&me->handler_delays, 1, __ATOMIC_RELAXED);
			spf_sleep_ns((x >> 20) % (spf_me.delay_max_ns + 1));
		}
	}
	spf_perturb_handler(SPF_PC_IPI);             /* ... and so does the ack */
	__atomic_fetch_add(&me->ipis_handled, 1, __ATOMIC_RELAXED);
	spf_trace(SPF_EV_IPI_HANDLE, r, work, 0);
	__atomic_store_n(&me->ack_ns, spf_now_ns_inline(), __ATOMIC_RELAXED);
	__atomic_store_n(&me->ack_seq, r, __ATOMIC_SEQ_CST);               /* (d) pairs with (4) */
	if (__atomic_load_n(&me->ack_waiters, __ATOMIC_SEQ_CST))
		spf_futex_wake(&me->ack_seq, 0);                           /* (e) */
}

static void ipi_mask(int how)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, ipi_sig);
	pthread_sigmask(how, &set, NULL);
}

int spf_cpu_setup(struct spf_percpu *slots, int ncpus, uint64_t *gp_seq)
{
	if (ncpus <= 0 || ncpus > SPF_MAX_CPUS)
		return -1;
	spf_me.slots = slots;
	spf_me.ncpus = ncpus;
	spf_me.gp_seq = gp_seq;
	spf_me.cpu = -1;
	spf_me.irq_nest = spf_me.reader_nest = spf_me.rcu_nest = 0;
	spf_me.ipi_running = spf_me.ipi_again = 0;
	spf_me.ring = NULL;
	spf_me.flush_p = NULL;
	spf_me.flush_len = 0;
	spf_me.delay_per_million = 0;
	ipi_sig = SIGRTMIN + 2;
	/* Blocked until a CPU registers: a stray IPI to the parent or a non-CPU thread
	 * stays pending instead of killing it. */
	ipi_mask(SIG_BLOCK);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = ipi_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigfillset(&sa.sa_mask);      /* nothing interrupts the handler */
	return sigaction(ipi_sig, &sa, NULL);
}

int spf_cpu_register(int cpu)
{
	if (!spf_me.slots || cpu < 0 || cpu >= spf_me.ncpus)
		return -1;
	spf_perturb_disarm();          /* an arming (inherited by fork) was another CPU's */
	struct spf_percpu *me = &spf_me.slots[cpu];
	spf_me.cpu = cpu;
	me->pid = getpid();
	me->tid = (int32_t)syscall(SYS_gettid);
	me->irq_depth = 0;
	me->rcu_depth = 0;
	me->rcu_snap = 0;
	me->pending = 0;
	__atomic_store_n(&me->ack_seq, __atomic_load_n(&me->req_seq, __ATOMIC_SEQ_CST), __ATOMIC_SEQ_CST);
	__atomic_store_n(&me->alive, SPF_CPU_ONLINE, __ATOMIC_SEQ_CST);
	ipi_mask(SIG_UNBLOCK);
	return 0;
}

void spf_cpu_unregister(void)
{
	if (spf_me.cpu < 0)
		return;
	spf_perturb_disarm();                     /* its hits row may be unmapped next */
	ipi_mask(SIG_BLOCK);
	ipi_do_work(SPF_IPI_FLUSH_TLB);          /* an offline CPU holds no translations */
	struct spf_percpu *me = &spf_me.slots[spf_me.cpu];
	__atomic_store_n(&me->alive, SPF_CPU_OFFLINE, __ATOMIC_SEQ_CST);
	spf_futex_wake(&me->ack_seq, 0);          /* waiting senders: it has gone offline */
	spf_me.cpu = -1;
	spf_me.ring = NULL;                       /* the arena may be unmapped next */
	spf_me.flush_p = NULL;
	spf_me.flush_len = 0;
}

void spf_cpu_mark_dead(int cpu)
{
	if (!spf_me.slots || cpu < 0 || cpu >= spf_me.ncpus)
		return;
	struct spf_percpu *c = &spf_me.slots[cpu];
	uint32_t online = SPF_CPU_ONLINE;     /* an offline CPU stays offline */
	__atomic_compare_exchange_n(&c->alive, &online, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	/* Wake senders waiting for its ack: they re-check alive. */
	__atomic_fetch_add(&c->ack_seq, 0, __ATOMIC_SEQ_CST);
	spf_futex_wake(&c->ack_seq, 0);
}

/* Perturbation (spf_perturb.h): with IRQs off, at both ends (IPIs wait meanwhile). */
void spf_irq_disable(void)
{
	if (spf_me.irq_nest++ == 0) {
		ipi_mask(SIG_BLOCK);
		spf_sched_trace(SPF_EV_IRQ, 1, 0, 0);
		spf_reader_enter();          /* IRQs off is an RCU reader too */
	}
	if (spf_me.cpu >= 0)
		spf_me.slots[spf_me.cpu].irq_depth = spf_me.irq_nest;
	spf_perturb(SPF_PC_IRQ);
}

void spf_irq_enable(void)
{
	if (spf_me.irq_nest <= 0)
		return;                          /* unbalanced: ignored (Python side asserts) */
	spf_perturb(SPF_PC_IRQ);
	if (--spf_me.irq_nest == 0) {
		spf_sched_trace(SPF_EV_IRQ, 0, 0, 0);
		spf_reader_exit();
		if (spf_me.cpu >= 0) {
			struct spf_percpu *me = &spf_me.slots[spf_me.cpu];
			me->irq_depth = 0;
			/* before the ack below: an IPI sync waits for this section alone */
			__atomic_store_n(&me->walk_ref, 0, __ATOMIC_RELEASE);
			__atomic_store_n(&me->irq_enable_ns, spf_now_ns_inline(), __ATOMIC_SEQ_CST);
		}
		ipi_mask(SIG_UNBLOCK);           /* a pending IPI runs here, before we return */
		spf_sched_take_ipi();            /* ... and so under the scheduler */
	} else if (spf_me.cpu >= 0) {
		spf_me.slots[spf_me.cpu].irq_depth = spf_me.irq_nest;
	}
}

int spf_irqs_disabled(void) { return spf_me.irq_nest > 0; }

/* A zombie (killed, not yet reaped) still accepts tgkill: read its state from /proc.
 * Only on the slow path, once per re-send. */
static int is_zombie(int pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

/* 1: dead (killed), 2: went offline cleanly (counts as an ack), 0: still there. */
static int target_gone(struct spf_percpu *t, int deep)
{
	uint32_t a = __atomic_load_n(&t->alive, __ATOMIC_SEQ_CST);
	if (a == SPF_CPU_OFFLINE)
		return 2;
	if (a != SPF_CPU_ONLINE)
		return 1;
	if (syscall(SYS_tgkill, t->pid, t->tid, 0) != 0 && errno == ESRCH)
		return 1;
	return deep && is_zombie(t->pid);
}

static int ipi_send(int cpu, uint64_t work, uint32_t *ticket)
{
	struct spf_percpu *t = &spf_me.slots[cpu];
	__atomic_fetch_or(&t->pending, work, __ATOMIC_SEQ_CST);                 /* (1) */
	*ticket = __atomic_add_fetch(&t->req_seq, 1, __ATOMIC_SEQ_CST);        /* (2) */
	spf_trace(SPF_EV_IPI_SEND, (uint64_t)cpu, *ticket, work);
	if (spf_sched_on)            /* the scheduler delivers it at the target's next point */
		return 0;
	if (syscall(SYS_tgkill, t->pid, t->tid, ipi_sig) != 0)                 /* (3) */
		return errno == ESRCH ? SPF_IPI_ERR_DEAD : SPF_IPI_ERR_TIMEOUT;
	return 0;
}

static int acked(struct spf_percpu *t, uint32_t ticket)
{
	return (int32_t)(__atomic_load_n(&t->ack_seq, __ATOMIC_ACQUIRE) - ticket) >= 0;
}

/* (4): wait for one target's ack.  Spin briefly, then sleep on its ack word; re-send
 * with a back-off (a lost or coalesced signal must not hang us). */
#define IPI_SPIN_NS 50000ULL

/* Under the scheduler: blocked on the ack word until the ticket is acked, the target
 * goes offline or dies (the runner's mark), or the logical deadline passes. */
static int ipi_wait_sched(struct spf_percpu *t, uint32_t ticket, uint64_t deadline)
{
	for (;;) {
		uint32_t a = __atomic_load_n(&t->ack_seq, __ATOMIC_SEQ_CST);
		if ((int32_t)(a - ticket) >= 0)
			return 0;
		uint32_t alive = __atomic_load_n(&t->alive, __ATOMIC_SEQ_CST);
		if (alive != SPF_CPU_ONLINE)
			return alive == SPF_CPU_OFFLINE ? 0 : SPF_IPI_ERR_DEAD;
		if (spf_sched_wait(&t->ack_seq, 0, a, deadline))
			return SPF_IPI_ERR_TIMEOUT;
	}
}

static int ipi_wait(int cpu, uint32_t ticket, uint64_t deadline)
{
	struct spf_percpu *t = &spf_me.slots[cpu];
	if (spf_sched_on)
		return ipi_wait_sched(t, ticket, deadline);
	/* Spin for up to IPI_SPIN_NS first, as the kernel's csd_lock_wait does: a busy target
	 * acks in ~20 us, while a futex sleep costs an idle-CPU wake-up (~50 us on a VM). */
	uint64_t spin_end = spf_now_ns_inline() + IPI_SPIN_NS;
	for (int n = 0; ; n++) {
		if (acked(t, ticket))
			return 0;
		spf_cpu_relax();
		if ((n & 63) == 63 && spf_now_ns_inline() > spin_end)
			break;
	}
	int err = 0;
	uint64_t resend_ns = 2000000, next_resend = spf_now_ns_inline() + resend_ns;
	__atomic_fetch_add(&t->ack_waiters, 1, __ATOMIC_SEQ_CST);
	for (;;) {
		uint32_t a = __atomic_load_n(&t->ack_seq, __ATOMIC_SEQ_CST);
		if ((int32_t)(a - ticket) >= 0)
			break;
		uint64_t now = spf_now_ns_inline();
		int gone = target_gone(t, now > next_resend);
		if (gone) {
			err = gone == 2 ? 0 : SPF_IPI_ERR_DEAD;
			break;
		}
		if (deadline && now > deadline) { err = SPF_IPI_ERR_TIMEOUT; break; }
		if (now > next_resend) {
			syscall(SYS_tgkill, t->pid, t->tid, ipi_sig);
			if (resend_ns < 32000000)
				resend_ns *= 2;
			next_resend = now + resend_ns;
		}
		spf_futex_wait_ns(&t->ack_seq, a, 1000000);
	}
	__atomic_fetch_sub(&t->ack_waiters, 1, __ATOMIC_SEQ_CST);
	return err;
}

static int ipi_sync_common(const uint64_t *mask, int nbits, uint64_t work,
			   int64_t timeout_ns, int wait)
{
	uint32_t tickets[SPF_MAX_CPUS];
	uint8_t sent[SPF_MAX_CPUS] = { 0 };
	int self = spf_me.cpu, fail = -1;
	uint64_t t0 = spf_now_ns_inline();
	spf_me.ipi_err = 0;
	if (spf_me.irq_nest > 0) {
		spf_me.ipi_err = SPF_IPI_ERR_IRQS_OFF;
		return -2;
	}
	if (nbits > spf_me.ncpus)
		nbits = spf_me.ncpus;
	for (int c = 0; c < nbits; c++) {
		if (!(mask[c / 64] >> (c % 64) & 1) || c == self)
			continue;
		if (__atomic_load_n(&spf_me.slots[c].alive, __ATOMIC_SEQ_CST) != SPF_CPU_ONLINE) {
			continue;                /* an offline or dead CPU holds no translations */
		}
		spf_perturb(SPF_PC_IPI);         /* perturbation: before each send */
		int err = ipi_send(c, work, &tickets[c]);
		sent[c] = 1;
		if (err && fail < 0) {
			fail = c;
			spf_me.ipi_err = err;
		}
	}
	if (self >= 0 && self < nbits && (mask[self / 64] >> (self % 64) & 1)) {
		if (work & (SPF_IPI_FLUSH_TLB | SPF_IPI_FLUSH_RANGE))
			spf_perturb(SPF_PC_TLB);
		ipi_do_work(work);
	}
	uint64_t deadline = timeout_ns >= 0 ? t0 + (uint64_t)timeout_ns : 0;
	for (int c = 0; wait && fail < 0 && c < nbits; c++) {
		if (!(mask[c / 64] >> (c % 64) & 1) || !sent[c])
			continue;
		int err = ipi_wait(c, tickets[c], deadline);
		if (err) {
			fail = c;
			spf_me.ipi_err = err;
		}
	}
	spf_trace(SPF_EV_IPI_DONE, (uint64_t)(int64_t)fail, (uint64_t)spf_me.ipi_err,
		  spf_now_ns_inline() - t0);
	return fail;
}

int spf_ipi_sync(const uint64_t *mask, int nbits, uint64_t work, int64_t timeout_ns)
{
	return ipi_sync_common(mask, nbits, work, timeout_ns, 1);
}

int spf_ipi_flush_range(const uint64_t *mask, int nbits, uint64_t start, uint64_t end,
			int64_t timeout_ns)
{
	if (end == TLB_FLUSH_ALL || spf_me.cpu < 0)     /* no slot of ours: flush it all */
		return ipi_sync_common(mask, nbits, SPF_IPI_FLUSH_TLB, timeout_ns, 1);
	struct spf_percpu *me = &spf_me.slots[spf_me.cpu];
	__atomic_store_n(&me->flush_start, start, __ATOMIC_RELAXED);             /* (0) */
	__atomic_store_n(&me->flush_end, end, __ATOMIC_RELAXED);
	__atomic_store_n(&me->flush_active, 1, __ATOMIC_SEQ_CST);               /* (0') */
	int r = ipi_sync_common(mask, nbits, SPF_IPI_FLUSH_RANGE, timeout_ns, 1);
	__atomic_store_n(&me->flush_active, 0, __ATOMIC_RELEASE);               /* (5) */
	return r;
}

void spf_tlb_remote_invalidate(uint64_t *base, int ncpus, uint64_t row_words,
			       uint64_t first, int nents, int ent_words, uint64_t lo,
			       uint64_t hi)
{
	spf_perturb(SPF_PC_TLB);
	for (int c = 0; c < ncpus; c++) {
		uint64_t *e = base + (uint64_t)c * row_words + first;
		for (int i = 0; i < nents; i++, e += ent_words) {
			uint64_t tag = __atomic_load_n(e, __ATOMIC_RELAXED);
			if ((tag & 1) && (tag >> 1) >= lo && (tag >> 1) < hi)
				__atomic_store_n(e, 0, __ATOMIC_RELAXED);
		}
	}
}

void spf_tlb_remote_wait(const uint64_t *mask, int nbits)
{
	spf_perturb(SPF_PC_TLB);             /* perturbation: between (1) and (2) */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);                            /* (2) */
	if (nbits > spf_me.ncpus)
		nbits = spf_me.ncpus;
	for (int c = 0; c < nbits; c++) {
		if (!(mask[c / 64] >> (c % 64) & 1) || c == spf_me.cpu)
			continue;
		struct spf_percpu *t = &spf_me.slots[c];
		uint64_t s = __atomic_load_n(&t->insn_seq, __ATOMIC_ACQUIRE);  /* (3) */
		if (spf_sched_on) {     /* the scheduler: until that instruction ends */
			if ((s & 1) && __atomic_load_n(&t->alive, __ATOMIC_RELAXED) == SPF_CPU_ONLINE)
				spf_sched_wait(&t->insn_seq, 1, s, 0);
			continue;
		}
		for (unsigned n = 0; (s & 1) && __atomic_load_n(&t->insn_seq, __ATOMIC_ACQUIRE) == s
			     && __atomic_load_n(&t->alive, __ATOMIC_RELAXED) == SPF_CPU_ONLINE; n++) {
			if (n < SPF_SPIN_TRIES)
				spf_cpu_relax();
			else
				sched_yield();
		}
	}
}

int spf_ipi_sync_busted(const uint64_t *mask, int nbits, uint64_t work, int64_t timeout_ns)
{
	return ipi_sync_common(mask, nbits, work, timeout_ns, 0);  /* BUSTED: no wait */
}
