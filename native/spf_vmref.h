#pragma once
/* spf_vmref.h - the per-VMA lock of Linux v6.15+ (vm_refcnt in struct vm_area_struct;
 * include/linux/mmap_lock.h, mm/mmap_lock.c), as the reference-count word it is.
 *
 * 0 is detached; 1 attached, unlocked; 1 + n: n readers; VMA_LOCK_OFFSET added: a
 * writer excludes new readers (their limited increment fails) and waits for the old
 * ones to leave.  The writer's wait (rcuwait on mm->vma_writer_wait in the kernel) is a
 * futex on the word itself, woken by the reader whose put leaves only the writer.
 *
 * Protocol, a reader's reference against a writer (every step seq_cst or stronger than
 * the kernel's, which the comments name):
 *   reader: (r1) spf_vmref_get: increment unless 0 (detached) or >= the limit (a writer
 *                is in): __refcount_inc_not_zero_limited_acquire (ACQUIRE; pairs with w3)
 *           (r2) spf_vmref_put: decrement (RELEASE); if the new count is the writer's
 *                alone, wake it (vma_refcount_put -> rcuwait_wake_up; pairs with w2)
 *   writer: (w1) spf_vmref_enter_locked: add VMA_LOCK_OFFSET unless detached
 *                (refcount_add_not_zero), then (w2) wait until the count is
 *                VMA_LOCK_OFFSET + 1, or VMA_LOCK_OFFSET when detaching (readers gone)
 *           (w3) spf_vmref_exit_locked: subtract it (refcount_sub_and_test, RELEASE);
 *                1 if that left 0: detached
 * Perturbation (spf_perturb.h, class atomic): after r1 and w1, before and after r2 and
 * w3; every wait of w2 is a scheduling point (spf_sched_wait on the word).
 */
#define SPF_VMA_LOCK_OFFSET 1073741824   /* VMA_LOCK_OFFSET, 0x40000000 */
#define SPF_VMA_REF_LIMIT   1073741823   /* VMA_REF_LIMIT: VMA_LOCK_OFFSET - 1 */

int      spf_vmref_get(uint32_t *refcnt, uint32_t *old);    /* r1: 1 taken; *old: seen */
uint32_t spf_vmref_put(uint32_t *refcnt);   /* r2: the old count (0: an underflow, refused) */
int      spf_vmref_enter_locked(uint32_t *refcnt, int detaching);    /* w1, w2: 0 detached */
int      spf_vmref_exit_locked(uint32_t *refcnt);           /* w3 */
int      spf_vmref_dec_and_test(uint32_t *refcnt);   /* refcount_dec_and_test: 1 if now 0,
                                                       -1 if it was 0 (refused) */
void     spf_vmref_set_release(uint32_t *refcnt, uint32_t v);  /* refcount_set_release */
