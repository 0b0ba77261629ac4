"""The fault under a per-VMA lock (lock_vma_under_rcu, Linux 6.4; protocols.md section 4).

  1. rcu_read_lock; look the VMA up in the published tree; vma_start_read (see
     mmap_lock.py for its protocol against vma_start_write)
  2. still under RCU: re-check that the VMA is not detached (unmapped by a write section
     that ended since the lookup: then it waits for its grace period, which our RCU
     section holds off) and that va is still inside it (it may have been split or
     shrunk before we locked it); rcu_read_unlock.  From here the VMA is attached and
     read-locked: a writer must vma_start_write it, which waits for us, before it can
     detach it
  3. fault as the classical path does, holding the VMA lock instead of mmap_lock
Any failure before 3 returns None: the caller falls back to mmap_lock.
"""
from .. import native
from .fault import VM_FAULT_SIGSEGV, do_anonymous_page
from .mmap_lock import vma_end_read, vma_start_read
from .vma import access_ok, find_vma_rcu, read_vma


def lock_vma_under_rcu(mm, va):
    """A read-locked VMA copy containing va, or None."""
    native.rcu_read_lock()                                                   # 1
    try:
        vid = find_vma_rcu(mm, va, "pervma")
        if vid is None or vid < 0:
            return None
        mm.delay("pervma_lookup")
        # Bug ``pervma_seq_no_acquire`` emulates what a missing ACQUIRE on the sequence
        # loads lets a weakly ordered CPU do: satisfy the reads of the VMA before them.
        early = read_vma(mm, vid, "pervma", va, lockless=True) \
            if mm.bugs.on("pervma_seq_no_acquire") else None
        if early is not None:
            mm.delay("vma_start_read")
        if not vma_start_read(mm, vid):
            return None
        vma = early or read_vma(mm, vid, "pervma", va, lockless=True)
        if vma is None or mm.vma[vid]["detached"] or not vma.start <= va < vma.end:  # 2
            vma_end_read(mm, vid)
            return None
        return vma
    finally:
        native.rcu_read_unlock()


def do_pervma_fault(mm, va, write):
    vma = lock_vma_under_rcu(mm, va)
    if vma is None:
        return None
    try:
        if not access_ok(vma.prot, write):
            return VM_FAULT_SIGSEGV
        return do_anonymous_page(mm, vma, va, write)                         # 3
    finally:
        vma_end_read(mm, vma.id)
