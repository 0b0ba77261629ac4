#pragma once
/* spf_futex.h - futex wait/wake on shared (not PRIVATE) 32-bit words.
 *
 * Shared futexes are keyed by the backing page, not by the virtual address, so they work
 * between processes that map the arena at different addresses.
 * spf_futex_wait sleeps while *word == expected; returns 0 when woken (or the value had
 * already changed), 1 on timeout (timeout_ns < 0: wait forever), -1 on interruption.
 * spf_futex_wake wakes up to n sleepers and returns how many it woke.
 */
int spf_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);
int spf_futex_wake(uint32_t *word, int n);
uint64_t spf_now_ns(void);             /* CLOCK_MONOTONIC, the clock of every native stamp */
void spf_sleep_ns(uint64_t ns);
/* spf_work_ns: time a CPU spends working, not waiting for anything (the model's stand-in
 * for kernel work between two protocol steps).  A parallel run sleeps, which widens the
 * window the work spans; under the controlled scheduler it is one scheduling point, so
 * the scheduler alone decides who runs meanwhile (a sleep there would be a wait that
 * only the clock ends, and would force every other CPU to run through the window). */
void spf_work_ns(uint64_t ns);
