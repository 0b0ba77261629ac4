"""The per-VMA lock, in the two generations a verdict may be about (--vma-lock).

rwsem   Linux v6.4 to v6.14 (the default): include/linux/mm.h vma_start_read,
        vma_end_read, vma_start_write, vma_mark_detached: an rw_semaphore per VMA checked
        against vm_lock_seq, and a detached flag that lock_vma_under_rcu checks.  VMAs
        are freed through call_rcu (vm_area_free).
refcnt  Linux v6.15+, as of v6.17 (include/linux/mmap_lock.h vma_start_read,
        vma_refcount_put, vma_mark_attached; mm/mmap_lock.c __vma_enter_locked,
        __vma_exit_locked, __vma_start_write, vma_mark_detached): the reference count
        vm_refcnt (native/spf_vmref.h) replaces the rwsem and the detached flag, and the
        VMA cache is SLAB_TYPESAFE_BY_RCU (3104138517fc), so a record is reusable the
        moment it is freed, by this mm or another (vma_cache.py), while a lockless reader
        may still hold the pointer its lookup found.  vma_start_read checks vm_mm itself
        (v6.17, "mm: fix a UAF when vma->mm is freed after vma->vm_refcnt got dropped";
        v6.15 checked it in lock_vma_under_rcu).

Both: the write lock is vm_lock_seq == mm_lock_seq, set once no reader holds the VMA and
ended for every VMA at once when mmap_write_unlock moves mm_lock_seq on.

Protocol (rwsem), a fault holding a VMA read lock against a writer holding mmap_lock write:
  writer: (1) vma_start_write: down_write(vm_lock) (waits for readers to drain),
              vm_lock_seq = mm_lock_seq, up_write (RELEASE)
          ... change the VMA and its page tables ...
          (2) mmap_write_unlock -> vma_end_write_all: mm_lock_seq + 1 (RELEASE)
  reader: (a) vm_lock_seq == mm_lock_seq? fail (ACQUIRE on both; pairs with (2))
          (b) down_read_trylock(vm_lock)? else fail
          (c) vm_lock_seq == mm_lock_seq again? up_read, fail (pairs with (1): a reader
              that got the lock after (1) sees the new vm_lock_seq)
The loads and stores of the sequence counts need acquire/release: b1f02b95758d.

Protocol (refcnt), the same two sides, and the writer's detach:
  writer: (1) vma_start_write: __vma_enter_locked: vm_refcnt += VMA_LOCK_OFFSET, so new
              readers' limited increments fail, and wait until it is VMA_LOCK_OFFSET + 1
              (the readers left); vm_lock_seq = mm_lock_seq; __vma_exit_locked:
              vm_refcnt -= VMA_LOCK_OFFSET (RELEASE)
          (2) as above: vma_end_write_all
          (3) vma_mark_detached (write-locked): vm_refcnt - 1; if references remain (a
              reader's between (b) and its failing (d)), __vma_enter_locked(detaching):
              wait until VMA_LOCK_OFFSET alone is left, then subtract it: 0, detached
  reader: (a) vm_lock_seq == mm_lock_seq? fail (a hint, READ_ONCE: (d) decides)
          (b) vm_refcnt + 1 unless it is 0 (detached since the lookup: -EAGAIN, the
              caller looks up again) or at the limit (a writer is in (1) or (3): fail)
              (__refcount_inc_not_zero_limited_acquire: ACQUIRE, pairs with (1)'s RELEASE)
          (c) vm_mm != mm? the record was freed and reused by another mm: put, fail
          (d) vm_lock_seq == mm_lock_seq (ACQUIRE, pairs with (2))? put, fail (pairs with
              (1): a reference taken after (1) sees the new vm_lock_seq)
          (e) vma_end_read: vm_refcnt - 1 (RELEASE); a put that leaves the writer alone
              wakes it in (1) or (3) (rcuwait_wake_up; here the futex on the word)
  The caller (lock_vma_under_rcu) then checks that the address is still in the VMA: a
  record reused by this mm may now be another range.

The record's ``detached`` word is the rwsem generation's flag; under refcnt (which has
none) the model keeps it as ghost state for the checkers only (assert_vma_stable), set
once (3) has waited.  ``vm_mm`` is the record's owner: MM_SELF, or MM_OTHER while the
other mm holds it (vma_cache.py).
"""
import numpy as np

from .. import native
from .mmap_lock import WAIT_VMA_WRITE, mmap_assert_write_locked

MM_SELF, MM_OTHER = 1, 2
EAGAIN = "EAGAIN"                   # vma_start_read's ERR_PTR(-EAGAIN)
# vma_refcnt reports (a2): refcount_t's underflow warning, or vma_assert_detached
REFCNT_UNDERFLOW, REFCNT_NOT_DETACHED = 1, 2


def vma_lock_init(mm, vid):
    """vma_lock_init, from vm_area_alloc: a fresh rwsem; under refcnt vm_refcnt is left
    as it is, 0 (vm_area_free asserted it), since a reader of the record's previous life
    may still try its increment (v6.15 vm_area_init_from / vma_lock_init(vma, false));
    the record is born detached and attached when a tree publishes it."""
    if not mm.vma_refcnt:
        native.lib.spf_rwsem_init(mm.vma_lock(vid))
    rec = mm.vma[vid]
    rec["vm_mm"] = MM_SELF
    rec["detached"] = 1


def vma_start_read(mm, vid):
    """Try to read-lock a VMA: True; False (fall back to mmap_lock); or, refcnt only,
    EAGAIN (detached since the lookup: look it up again)."""
    if mm.vma_refcnt:
        return _vma_start_read_refcnt(mm, vid)
    seq = native.load_acquire(mm.mm_lock_seq)
    if native.load_acquire(mm.vm_lock_seq_ptr(vid)) == seq:                 # (a)
        return False
    mm.delay("vma_start_read")
    lock = mm.vma_lock(vid)
    if not native.lib.spf_down_read_trylock(lock):                          # (b)
        return False
    if not mm.bugs.on("pervma_no_recheck") and \
            native.load_acquire(mm.vm_lock_seq_ptr(vid)) == native.load_acquire(mm.mm_lock_seq):
        native.lib.spf_up_read(lock)                                        # (c)
        return False
    mm.waiting[5] = vid + 1             # published for vma_assert_no_readers
    return True


def _vma_start_read_refcnt(mm, vid):
    """(a), (c) and (d) read a record the lookup found and that may have been freed and
    reused since (SLAB_TYPESAFE_BY_RCU): each is a lockless walk's shared read, relied
    on (generic perturbation's pause follows it, as it follows the rwsem generation's
    lockless VMA copy and every lookup's tree read)."""
    hint = native.load_relaxed(mm.vm_lock_seq_ptr(vid)) == native.load_relaxed(mm.mm_lock_seq)
    mm.walk_point()
    if hint:
        return False                                                        # (a)
    mm.delay("vma_start_read")
    ref, old = mm.vm_refcnt_ptr(vid), mm.refcnt_old
    if not native.lib.spf_vmref_get(ref, old):                              # (b)
        return EAGAIN if old[0] == 0 else False
    mm.delay("vma_ref_held")
    foreign = mm.vma[vid]["vm_mm"] != MM_SELF and not mm.bugs.on("refcnt_no_vm_mm_check")
    mm.walk_point()
    if foreign or not mm.bugs.on("refcnt_no_seq_recheck") and \
            native.load_relaxed(mm.vm_lock_seq_ptr(vid)) == native.load_acquire(mm.mm_lock_seq):
        vma_refcount_put(mm, vid)                                           # (c), (d)
        return False
    mm.waiting[5] = vid + 1             # published for vma_assert_no_readers
    return True


def vma_refcount_put(mm, vid):
    """Step (e)'s put; refcount_t refuses (and warns of) an underflow: reported."""
    if native.lib.spf_vmref_put(mm.vm_refcnt_ptr(vid)) == 0:
        mm.report("vma_refcnt", "vma_refcount_put", int(mm.vma[vid]["start"]), vid, 0,
                  REFCNT_UNDERFLOW)


def vma_end_read(mm, vid):
    """Oracle first: from the moment step (c) (rwsem) or (d) (refcnt) passed until this
    release no writer can have write-locked the VMA (vma_start_write sets vm_lock_seq
    only once it has waited for the readers, and only mmap_write_unlock moves
    mm_lock_seq on), so vm_lock_seq equal to mm_lock_seq now means a reader got in past
    a writer; and a VMA of another mm was never ours to hold.  Plain reads, no
    primitive: the check draws no pause and is no scheduling point, so it does not
    change the interleavings it judges."""
    rec = mm.vma[vid]
    if rec["vm_lock_seq"] == mm.arena["mm_lock_seq"][0]:
        mm.report("vma_read_while_written", "vma_end_read", int(rec["start"]), vid,
                  int(rec["vm_lock_seq"]))
    if rec["vm_mm"] != MM_SELF:
        mm.report("vma_foreign", "vma_end_read", int(rec["start"]), vid, int(rec["vm_mm"]))
    mm.waiting[5] = 0
    if mm.vma_refcnt:
        vma_refcount_put(mm, vid)                                           # (e)
    else:
        native.lib.spf_up_read(mm.vma_lock(vid))


def vma_assert_no_readers(mm, vid, site):
    """After vma_start_write, no fault may hold the VMA read-locked: a reader publishes
    its hold only once its last check passed, which cannot pass while we hold it
    written."""
    held = np.flatnonzero(mm.waiting_all[:mm.g.ncpus, 5] == vid + 1)
    if len(held):
        mm.report("vma_read_held", site, int(mm.vma[vid]["start"]), vid, int(held[0]))


def _seq_eq(mm, a, b):
    """Sequence counts compared as the kernel does, or (bug ``vma_seq_wrap``) as a 3-bit
    counter would: one that wrapped looks equal to a value from 8 sections ago."""
    return (a & 7) == (b & 7) if mm.bugs.on("vma_seq_wrap") else a == b


def vma_start_write(mm, vid):
    """Write-lock a VMA until mmap_write_unlock (mmap_lock write held): step (1)."""
    mmap_assert_write_locked(mm, "vma_start_write")
    seq = native.load_relaxed(mm.mm_lock_seq)
    if _seq_eq(mm, native.load_relaxed(mm.vm_lock_seq_ptr(vid)), seq):
        return                                                              # already ours
    mm.waiting[1], mm.waiting[2] = WAIT_VMA_WRITE, vid
    if mm.vma_refcnt:
        ref = mm.vm_refcnt_ptr(vid)
        locked = _enter_locked(mm, ref, detaching=False)
        native.store_relaxed(mm.vm_lock_seq_ptr(vid), seq)                  # WRITE_ONCE
        if locked:
            native.lib.spf_vmref_exit_locked(ref)                           # RELEASE
        return
    lock = mm.vma_lock(vid)
    native.lib.spf_down_write(lock, mm.cpu)
    mm.waiting[1] = 0
    native.store_relaxed(mm.vm_lock_seq_ptr(vid), seq)
    native.lib.spf_up_write(lock)                                           # RELEASE


def _enter_locked(mm, ref, detaching):
    """__vma_enter_locked: False if the VMA is detached (nothing to wait for)."""
    locked = native.lib.spf_vmref_enter_locked(ref, detaching)
    mm.waiting[1] = 0
    return bool(locked)


def vma_assert_write_locked(mm, vid, site):
    """What vm_flags_reset() and friends assert: a VMA changes only write-locked, and
    then no fault holds it."""
    mmap_assert_write_locked(mm, site)
    seq = native.load_relaxed(mm.mm_lock_seq)
    own = native.load_relaxed(mm.vm_lock_seq_ptr(vid))
    if own != seq:
        mm.report("vma_not_write_locked", site, int(mm.vma[vid]["start"]), vid, own, seq)
    vma_assert_no_readers(mm, vid, site)


def vma_mark_attached(mm, vid):
    """The VMA enters a tree (vma_iter_store): under refcnt vm_refcnt 0 -> 1 (RELEASE;
    vma_assert_detached first: a reference left over from the record's previous life
    would be overwritten)."""
    mm.vma[vid]["detached"] = 0
    if mm.vma_refcnt:
        vma_assert_detached(mm, vid, "vma_mark_attached")
        native.lib.spf_vmref_set_release(mm.vm_refcnt_ptr(vid), 1)


def vma_mark_detached(mm, vid):
    """The VMA leaves the mm (in do_vmi_align_munmap once it is write-locked and
    gathered; vm_area_free for the rest).  rwsem (v6.4): the flag a per-VMA reader that
    still finds it in an old tree checks after vma_end_write_all (VMA_LOCK_MISS).
    refcnt: step (3), which waits for the temporary references.  A record detached
    already, or never attached (a split piece that the same munmap removes), is left."""
    rec = mm.vma[vid]
    if rec["detached"]:
        return
    if mm.vma_refcnt:
        detach_refcnt(mm, vid)
    rec["detached"] = 1


def detach_refcnt(mm, vid):
    """Step (3) on vm_refcnt (the VMA is write-locked, by this mm or by the other one).
    Then the oracle: a detached VMA holds no reference (the postcondition the wait
    gives; a plain read: no reader can take one from 0), and refcount_t's underflow
    warning if the count was 0 already."""
    ref = mm.vm_refcnt_ptr(vid)
    last = native.lib.spf_vmref_dec_and_test(ref)
    if last == 0 and not mm.bugs.on("refcnt_detach_no_wait"):  # BUSTED: no wait for
        mm.waiting[1], mm.waiting[2] = WAIT_VMA_WRITE, vid       # the temporary readers
        if _enter_locked(mm, ref, detaching=True):
            native.lib.spf_vmref_exit_locked(ref)                           # 0: detached
    left = int(mm.vma[vid]["vm_refcnt"])
    if last < 0 or left:
        mm.report("vma_refcnt", "vma_mark_detached", int(mm.vma[vid]["start"]), vid, left,
                  REFCNT_UNDERFLOW if last < 0 else REFCNT_NOT_DETACHED)


def vma_assert_detached(mm, vid, site):
    """vm_area_free's vma_assert_detached (refcnt): no reference may outlive the VMA."""
    left = int(mm.vma[vid]["vm_refcnt"])
    if left:
        mm.report("vma_refcnt", site, int(mm.vma[vid]["start"]), vid, left,
                  REFCNT_NOT_DETACHED)
