#pragma once
/* spf_spinlock.h - the kernel's spinlock_t (ptl, pmd lock, page_table_lock).
 *
 * The word holds 0 when free, else owner CPU + 1 (read by hang dumps).  spf_spin_lock
 * spins with pause and yields the core after a while (workers may outnumber cores; a
 * real spinlock never sleeps and neither does this one).  spin_unlock is a release
 * store and pairs with the acquiring cmpxchg of the next locker.
 * spf_spin_lock_timeout gives up after timeout_ns and returns 1 (0 = taken), so a
 * caller that models "spin forever" can still report a deadlock instead of hanging.
 */
typedef uint32_t spf_spinlock_t;
void spf_spin_lock(spf_spinlock_t *l, int cpu);
int  spf_spin_lock_timeout(spf_spinlock_t *l, int cpu, int64_t timeout_ns);
int  spf_spin_trylock(spf_spinlock_t *l, int cpu);      /* 1 = taken */
void spf_spin_unlock(spf_spinlock_t *l);
uint64_t spf_spin_bugs_take(void);   /* unlocks of a free lock since the last take */
int  spf_spin_is_locked(const spf_spinlock_t *l);
int  spf_spin_owner(const spf_spinlock_t *l);            /* -1 when free */

/* Busted twin: test, then set, with no atomic read-modify-write in between. */
void spf_spin_lock_busted(spf_spinlock_t *l, int cpu);
