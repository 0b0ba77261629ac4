"""The VMA cache (vm_area_cachep): a record freed, and under --vma-lock refcnt its reuse
by another process.

rwsem (v6.4 to v6.14): vm_area_free defers the free by call_rcu (vma.py), so a lockless
reader never meets a record freed under it.  refcnt (v6.15+): the cache is
SLAB_TYPESAFE_BY_RCU (3104138517fc): vm_area_free hands the record back at once, and any
process's vm_area_alloc may take it while one of our lock_vma_under_rcu, which found it
before the free, still holds the pointer.  Our reader may then take a reference on
another mm's VMA, which vma_start_read's vm_mm check (vma_lock.py step (c)) turns away;
the reference it took and dropped is one the other mm's detach must wait for (step (3)).

The model has one mm; the other process is the rest of the machine reduced to what it
does to our readers:
  1. kmem_cache_free of a refcnt record, with a seeded chance (mm_types.OTHER_MM_REUSE):
     the other mm allocates it at once.  It maps it at the same address (the case the
     check is for: the address check alone would pass), write-locked by its own writer
     (a vm_lock_seq that is never our mm_lock_seq), then attached: vm_refcnt 1 (RELEASE).
  2. After the freeing CPU's next operation (runner.py), the other mm unmaps it (it
     lived one operation of ours, the window a lookup of another CPU may fall in): its
     vma_mark_detached (step (3): waits for the temporary references our readers took),
     and the record goes back to the free list.
The other mm_struct's lifetime (the mmgrab/mmdrop around the put, v6.17's fix) is not
modelled: the model's writer waits on a futex in vm_refcnt, not an rcuwait in the mm.
"""
from .. import native
from .mm_types import POISON, STAT, VMA_FREE, VMA_LIVE
from .vma_lock import MM_OTHER, detach_refcnt

OTHER_SEQ = (1 << 64) - 1          # the other mm's vm_lock_seq: never our mm_lock_seq


def kmem_cache_free(mm, vid):
    """The record poisoned (its generation bumped: lookups that found it can tell) and
    back on the free list, or (refcnt) taken by the other mm: step 1."""
    rec = mm.vma[vid]
    start, end, prot = int(rec["start"]), int(rec["end"]), int(rec["prot"])
    _poison(rec)
    if mm.vma_refcnt and mm.other_mm_reuses():
        rec["vseq"] += 1
        rec["start"], rec["end"], rec["prot"], rec["anon_vma"] = start, end, prot, 1
        rec["vm_lock_seq"] = OTHER_SEQ
        rec["vm_mm"] = MM_OTHER
        rec["state"], rec["detached"] = VMA_LIVE, 0
        rec["vseq"] += 1
        mm.lent.append((mm.local[STAT["ops"]], vid))     # lent during this operation
        mm.count("other_mm_reuse")
        native.lib.spf_vmref_set_release(mm.vm_refcnt_ptr(vid), 1)        # attached
        return
    mm.vmas.free(mm.cpu, vid)


def other_mm_unmap(mm, every=False):
    """Step 2, between two operations of this CPU: for the records the other mm took
    from its frees before the operation that just ended (``every``: all of them, when
    the CPU stops)."""
    now = mm.local[STAT["ops"]]
    keep = []
    for lent_at, vid in mm.lent:
        if lent_at == now and not every:
            keep.append((lent_at, vid))
            continue
        detach_refcnt(mm, vid)
        _poison(mm.vma[vid])
        mm.vmas.free(mm.cpu, vid)
    mm.lent = keep


def _poison(rec):
    rec["vseq"] += 1
    rec["state"] = VMA_FREE
    rec["gen"] = int(rec["gen"]) + 1
    rec["start"] = POISON
    rec["end"] = POISON
    rec["vseq"] += 1
