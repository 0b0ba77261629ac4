#pragma once
/* spf_rwsem.h - the kernel's rw_semaphore (mmap_lock, per-VMA lock).
 *
 * Sleeping readers and writers, writer preference: once a writer waits, new readers
 * wait too (down_read_trylock fails).  Waiters spin SPF_SPIN_TRIES times before they
 * sleep on a shared futex (an event count bumped by every release).
 *
 * state: bits 0-15 active readers, bits 16-30 waiting writers, bit 31 writer holds it.
 * owner: CPU of the writer, -1 otherwise (for hang dumps and asserts).
 *
 * Ordering: a successful acquire is an ACQUIRE; every release is a RELEASE; the two pair
 * through the state word.  The down_* calls return how many ns they waited (0 on the fast
 * path) so callers can report lock wait time without timing the fast path.
 */
struct spf_rwsem {
	uint32_t state;
	uint32_t evc;        /* event count: bumped on release, futex word for sleepers */
	uint32_t sleepers;
	int32_t owner;
};
uint64_t spf_down_read(struct spf_rwsem *s);
int      spf_down_read_trylock(struct spf_rwsem *s);     /* 1 = taken */
void     spf_up_read(struct spf_rwsem *s);
uint64_t spf_down_write(struct spf_rwsem *s, int cpu);
int      spf_down_write_trylock(struct spf_rwsem *s, int cpu);
void     spf_up_write(struct spf_rwsem *s);
void     spf_downgrade_write(struct spf_rwsem *s);       /* write -> read, without a gap */
void     spf_rwsem_init(struct spf_rwsem *s);
int      spf_rwsem_is_locked(const struct spf_rwsem *s);
int      spf_rwsem_is_write_locked(const struct spf_rwsem *s);
int      spf_rwsem_readers(const struct spf_rwsem *s);
int      spf_rwsem_waiting_writers(const struct spf_rwsem *s);

/* Busted twin: a writer that takes the lock without waiting for readers to drain. */
uint64_t spf_down_write_busted(struct spf_rwsem *s, int cpu);
