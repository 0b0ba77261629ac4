"""The fault under a per-VMA lock (protocols.md section 4).

Follows Linux v6.4: mm/memory.c lock_vma_under_rcu, arch/x86/mm/fault.c
do_user_addr_fault's VMA-lock attempt, and the vm events VMA_LOCK_{SUCCESS,ABORT,RETRY,
MISS} (include/linux/vm_event_item.h; counted per CPU here, merged at the end).  The
rwsem per-VMA lock and its detached flag stay so up to v6.14 (v6.15 folded the flag
into vm_refcnt).

  1. rcu_read_lock; look the VMA up in the published tree; a VMA without an anon_vma
     (never faulted) aborts: its first fault prepares one under mmap_lock; vma_start_read
     (see mmap_lock.py for its protocol against vma_start_write)
  2. still under RCU: re-check that va is still inside the VMA (it may have been split or
     shrunk before we locked it; else VMA_LOCK_ABORT) and that it is not detached
     (unmapped by a write section that ended since the lookup: then it waits for its
     grace period, which our RCU section holds off): a detached VMA was replaced, so
     vma_end_read and look up again (VMA_LOCK_MISS, "goto retry"); rcu_read_unlock.  From
     here the VMA is attached and read-locked: a writer must vma_start_write it, which
     waits for us, before it can detach it
  3. an access error drops the VMA lock and goes to mmap_lock (6.4; later kernels decide
     the SIGSEGV under the VMA lock); else fault as the classical path does, holding the
     VMA lock instead of mmap_lock: VMA_LOCK_SUCCESS, or VM_FAULT_RETRY: VMA_LOCK_RETRY,
     and the fault is handled again under mmap_lock
Any failure before 3 returns None (VMA_LOCK_ABORT): the caller falls back to mmap_lock.
"""
from .. import native
from .fault import VM_FAULT_RETRY, do_anonymous_page
from .vma import access_ok, find_vma_rcu, read_vma
from .vma_lock import EAGAIN, vma_end_read, vma_start_read


def lock_vma_under_rcu(mm, va):
    """A read-locked VMA copy containing va, or None (counted VMA_LOCK_ABORT)."""
    native.rcu_read_lock()                                                   # 1
    try:
        while True:
            vma = _lock_vma_once(mm, va)
            if vma is not MISS:
                break
            mm.count("vma_lock_miss")
        if vma is None:
            mm.count("vma_lock_abort")
        return vma
    finally:
        native.rcu_read_unlock()


MISS = object()


def _lock_vma_once(mm, va):
    """One lookup under the caller's RCU section: the read-locked VMA copy, None, or MISS
    (the VMA found was detached: the caller looks up again)."""
    if mm.vma_refcnt:
        return _lock_vma_once_refcnt(mm, va)
    found = find_vma_rcu(mm, va, "pervma")
    if found is None or found[0] < 0:
        return None
    vid, gen = found
    if not mm.vma[vid]["anon_vma"]:
        return None                      # find_mergeable_anon_vma reads unlocked neighbours
    mm.delay("pervma_lookup")
    # Bug ``pervma_seq_no_acquire`` emulates what a missing ACQUIRE on the sequence
    # loads lets a weakly ordered CPU do: satisfy the reads of the VMA before them.
    early = read_vma(mm, vid, "pervma", va, lockless=True, gen=gen) \
        if mm.bugs.on("pervma_seq_no_acquire") else None
    if early is not None:
        mm.delay("vma_start_read")
    if not vma_start_read(mm, vid):
        return None
    vma = early or read_vma(mm, vid, "pervma", va, lockless=True, gen=gen)
    if vma is None or not vma.start <= va < vma.end:                      # 2
        vma_end_read(mm, vid)
        return None
    if mm.vma[vid]["detached"] and not mm.bugs.on("pervma_skip_detached"):
        vma_end_read(mm, vid)
        return MISS
    return vma


def _lock_vma_once_refcnt(mm, va):
    """v6.15 lock_vma_under_rcu's loop body (vma_lock.py steps (a)-(d)): the record the
    lookup found may have been freed and reused since (SLAB_TYPESAFE_BY_RCU), so nothing
    of it is read before the reference is held; then it is attached, ours and not
    write-locked, and only the address is left to check.  No anon_vma check here (v6.7
    moved it to vmf_anon_prepare, fault.py)."""
    found = find_vma_rcu(mm, va, "pervma")
    if found is None or found[0] < 0:
        return None
    vid = found[0]
    mm.delay("pervma_lookup")
    got = vma_start_read(mm, vid)
    if got is EAGAIN:
        return MISS
    if not got:
        return None
    vma = read_vma(mm, vid, "pervma", va)
    if vma is None or not vma.start <= va < vma.end:                      # 2
        vma_end_read(mm, vid)
        return None
    return vma


def do_pervma_fault(mm, va, write):
    """The fault's result, or None: the caller handles it under mmap_lock."""
    vma = lock_vma_under_rcu(mm, va)
    if vma is None:
        return None
    try:
        if not access_ok(vma.prot, write):                                   # 3
            return None
        r = do_anonymous_page(mm, vma, va, write, vma_locked=True)
    finally:
        vma_end_read(mm, vma.id)
    if r == VM_FAULT_RETRY:
        mm.count("vma_lock_retry")
        return None
    mm.count("vma_lock_success")
    return r
