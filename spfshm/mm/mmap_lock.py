"""mmap_lock and mmap_seq (include/linux/mmap_lock.h); the per-VMA locks are vma_lock.py's.

Follows Linux v6.14: include/linux/mmap_lock.h (mmap_read_lock, mmap_read_trylock,
mmap_write_lock, vma_end_write_all: the step that ends every VMA's write lock at once).
mmap_seq is not mainline's: it is the SPF series' counter ("mm: add per-mm mmap sequence
counter for speculative page fault handling.", spf.py).

The write lock is visibly two primitives: down_write, then mmap_seq to odd; the unlock
is mmap_seq to even, then up_write.  mmap_seq's barriers (native/spf_seqcount.h): the
smp_wmb after the odd increment pairs with a speculative reader's final smp_rmb check,
the one before the even increment with its acquire read at the start.
"""
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


def mmap_read_trylock(mm):
    """True if taken (vmf_anon_prepare's, under a VMA lock: no waiting there)."""
    if not native.lib.spf_down_read_trylock(mm.mmap_lock):
        return False
    mm.waiting[3] = 1
    return True


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


def vma_end_write_all(mm):
    """vma_lock.py's step (2): mm_lock_seq moves on, and every VMA this write section
    locked (vm_lock_seq equal to the old value) is unlocked at once."""
    mmap_assert_write_locked(mm, "vma_end_write_all")
    native.store_release(mm.mm_lock_seq, native.load_relaxed(mm.mm_lock_seq) + 1)   # (2)
