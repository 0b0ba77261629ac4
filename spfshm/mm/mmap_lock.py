"""mmap_lock and mmap_seq (include/linux/mmap_lock.h).

The write lock is visibly two primitives: down_write, then mmap_seq to odd; the unlock
is mmap_seq to even, then up_write.  mmap_seq's barriers (native/spf_seqcount.h): the
smp_wmb after the odd increment pairs with a speculative reader's final smp_rmb check,
the one before the even increment with its acquire read at the start.
"""
from .. import native


def mmap_read_lock(mm):
    waited = native.lib.spf_down_read(mm.mmap_lock)
    if waited:
        mm.count("mmap_lock_wait_ns", waited)


def mmap_read_unlock(mm):
    native.lib.spf_up_read(mm.mmap_lock)


def mmap_write_lock(mm):
    waited = native.lib.spf_down_write(mm.mmap_lock, mm.cpu)
    if waited:
        mm.count("mmap_lock_wait_ns", waited)
    native.seq_write_begin(mm.mmap_seq)


def mmap_write_unlock(mm):
    native.seq_write_end(mm.mmap_seq)
    native.lib.spf_up_write(mm.mmap_lock)


def mmap_assert_write_locked(mm):
    if not native.lib.spf_rwsem_is_write_locked(mm.mmap_lock):
        raise AssertionError("mmap_lock not write-locked")


def mmap_assert_locked(mm):
    if not native.lib.spf_rwsem_is_locked(mm.mmap_lock):
        raise AssertionError("mmap_lock not locked")
