"""mmap_lock, mmap_seq and the per-VMA locks (include/linux/mmap_lock.h).

Follows Linux v6.14: include/linux/mmap_lock.h (mmap_read_lock, mmap_write_lock,
vma_end_write_all) and include/linux/mm.h (vma_start_read, vma_end_read, vma_start_write:
the per-VMA lock of v6.4 to v6.14, an rw_semaphore checked against vm_lock_seq, which
v6.15 replaced with the vm_refcnt reference count).  mmap_seq is not mainline's: it is
the SPF series' counter ("mm: add per-mm mmap sequence counter for speculative page
fault handling.", spf.py).

The write lock is visibly two primitives: down_write, then mmap_seq to odd; the unlock
is mmap_seq to even, then up_write.  mmap_seq's barriers (native/spf_seqcount.h): the
smp_wmb after the odd increment pairs with a speculative reader's final smp_rmb check,
the one before the even increment with its acquire read at the start.
"""
import numpy as np

from .. import native


# What this CPU waits for and holds, published in its own arena line for hang dumps
# (mm.waiting: [0] ptl table + 1, [1] rwsem being waited for, [2] its VMA, [3] mmap_lock
# held for read, [4] held for write, [5] VMA read-locked + 1).
WAIT_MMAP_READ, WAIT_MMAP_WRITE, WAIT_VMA_WRITE = 1, 2, 3


def mmap_read_lock(mm):
    w = mm.waiting
    w[1] = WAIT_MMAP_READ
    waited = native.lib.spf_down_read(mm.mmap_lock)
    w[1] = 0
    w[3] = 1
    if waited:
        mm.count("mmap_lock_wait_ns", waited)


def mmap_read_unlock(mm):
    mm.waiting[3] = 0
    native.lib.spf_up_read(mm.mmap_lock)


def mmap_write_lock(mm):
    w = mm.waiting
    w[1] = WAIT_MMAP_WRITE
    waited = native.lib.spf_down_write(mm.mmap_lock, mm.cpu)
    w[1] = 0
    w[4] = 1
    if waited:
        mm.count("mmap_lock_wait_ns", waited)
    native.seq_write_begin(mm.mmap_seq)


def mmap_write_unlock(mm):
    vma_end_write_all(mm)
    native.seq_write_end(mm.mmap_seq)
    mm.waiting[4] = 0
    if mm.bugs.on("mmap_unlock_leak") and mm.rng_leak():
        return                          # BUSTED: an error path forgets the unlock
    native.lib.spf_up_write(mm.mmap_lock)


def mmap_write_downgrade(mm):
    """Write -> read without a gap (v6.4+ include/linux/mmap_lock.h: vma_end_write_all,
    then downgrade_write; the SPF series ends the mmap_seq write section here too)."""
    vma_end_write_all(mm)
    native.seq_write_end(mm.mmap_seq)
    w = mm.waiting
    w[3] = 1
    w[4] = 0
    native.lib.spf_downgrade_write(mm.mmap_lock)


# The asserts (include/linux/mmap_lock.h, as of v6.12: rwsem_assert_held, which is lockdep's
# "held by this task" when lockdep is on) read this CPU's own published hold words: exact,
# and one or two word reads on the fault path.  Called where the kernel asserts:
# find_vma (mmap_assert_locked), vma_start_write and vma_assert_write_locked
# (__is_vma_write_locked), vma_end_write_all, and the VMA tree stores (vma_expand,
# vma_merge_*: publish_tree here) (mmap_assert_write_locked).
NEED_LOCKED, NEED_WRITE = 1, 2


def mmap_assert_locked(mm, site, va=0):
    w = mm.waiting
    if not (w[3] or w[4]):
        mm.report("mmap_not_locked", site, va, NEED_LOCKED, int(w[3]), int(w[4]))


def mmap_assert_write_locked(mm, site, va=0):
    w = mm.waiting
    if not w[4]:
        mm.report("mmap_not_locked", site, va, NEED_WRITE, int(w[3]), int(w[4]))


# -- per-VMA locks (Linux 6.4) -----------------------------------------------------------
# Protocol, a fault holding a VMA read lock against a writer holding mmap_lock write:
#   writer: (1) vma_start_write: down_write(vm_lock) (waits for readers to drain),
#               vm_lock_seq = mm_lock_seq, up_write (RELEASE)
#           ... change the VMA and its page tables ...
#           (2) mmap_write_unlock -> vma_end_write_all: mm_lock_seq + 1 (RELEASE),
#               which unlocks every VMA locked in this write section at once
#   reader: (a) vm_lock_seq == mm_lock_seq? fail (ACQUIRE on both; pairs with (2))
#           (b) down_read_trylock(vm_lock)? else fail
#           (c) vm_lock_seq == mm_lock_seq again? up_read, fail (pairs with (1): a reader
#               that got the lock after (1) sees the new vm_lock_seq)
# The loads and stores of the sequence counts need acquire/release: b1f02b95758d.

def vma_start_read(mm, vid):
    """Try to read-lock a VMA; False means fall back to mmap_lock."""
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


def vma_end_read(mm, vid):
    """Oracle first: from the moment step (c) passed until this release no writer can
    have write-locked the VMA (vma_start_write sets vm_lock_seq only once its down_write
    has waited for the readers, and only mmap_write_unlock moves mm_lock_seq on), so
    vm_lock_seq equal to mm_lock_seq now means a reader got in past a writer.  Plain
    reads, no primitive: the check draws no pause and is no scheduling point, so it does
    not change the interleavings it judges."""
    rec = mm.vma[vid]
    if rec["vm_lock_seq"] == mm.arena["mm_lock_seq"][0]:
        mm.report("vma_read_while_written", "vma_end_read", int(rec["start"]), vid,
                  int(rec["vm_lock_seq"]))
    mm.waiting[5] = 0
    native.lib.spf_up_read(mm.vma_lock(vid))


def vma_assert_no_readers(mm, vid, site):
    """After vma_start_write, no fault may hold the VMA read-locked: a reader publishes
    its hold only once step (c) passed, and (c) cannot pass while we hold it written."""
    held = np.flatnonzero(mm.waiting_all[:mm.g.ncpus, 5] == vid + 1)
    if len(held):
        mm.report("vma_read_held", site, int(mm.vma[vid]["start"]), vid, int(held[0]))


def _seq_eq(mm, a, b):
    """Sequence counts compared as the kernel does, or (bug ``vma_seq_wrap``) as a 3-bit
    counter would: one that wrapped looks equal to a value from 8 sections ago."""
    return (a & 7) == (b & 7) if mm.bugs.on("vma_seq_wrap") else a == b


def vma_start_write(mm, vid):
    """Write-lock a VMA until mmap_write_unlock (mmap_lock write held)."""
    mmap_assert_write_locked(mm, "vma_start_write")
    seq = native.load_relaxed(mm.mm_lock_seq)
    if _seq_eq(mm, native.load_relaxed(mm.vm_lock_seq_ptr(vid)), seq):
        return                                                              # already ours
    lock = mm.vma_lock(vid)
    mm.waiting[1], mm.waiting[2] = WAIT_VMA_WRITE, vid
    native.lib.spf_down_write(lock, mm.cpu)                                 # (1)
    mm.waiting[1] = 0
    native.store_relaxed(mm.vm_lock_seq_ptr(vid), seq)
    native.lib.spf_up_write(lock)                                           # RELEASE


def vma_assert_write_locked(mm, vid, site):
    """What vm_flags_reset() and friends assert: a VMA changes only write-locked, and
    then no fault holds it."""
    mmap_assert_write_locked(mm, site)
    seq = native.load_relaxed(mm.mm_lock_seq)
    own = native.load_relaxed(mm.vm_lock_seq_ptr(vid))
    if own != seq:
        mm.report("vma_not_write_locked", site, int(mm.vma[vid]["start"]), vid, own, seq)
    vma_assert_no_readers(mm, vid, site)


def vma_end_write_all(mm):
    mmap_assert_write_locked(mm, "vma_end_write_all")
    native.store_release(mm.mm_lock_seq, native.load_relaxed(mm.mm_lock_seq) + 1)   # (2)
