"""The classical page fault (arch/x86/mm/fault.c do_user_addr_fault -> handle_mm_fault
-> do_anonymous_page), under mmap_lock read.

Follows Linux v6.14: do_user_addr_fault (but mmap_read_lock + find_vma where the kernel
calls lock_mm_and_find_vma, v6.5+: no stack expansion here) and mm/memory.c
do_anonymous_page (one order-0 page; the table mapped by pte_offset_map_lock, v6.5+).

Fault vs. zap on the same PTE, stated once:
  fault: (1) frame allocated and zeroed  (2) ptl  (3) pte_none?  (4) set the PTE
         (release: the zeroed payload before the PTE)  (5) unlock
  zap:   (a) ptl  (b) clear the PTE  (c) unlock  (d) flush, then free
The ptl orders (3)-(4) against (b): without it two faulters both see pte_none and the
second overwrites the first's PTE (bug ``fault_no_ptl``: a leaked frame, RSS off by one).
"""
from .. import native
from .frames import alloc_frame, put_page
from .huge_memory import huge_pmd_set_accessed
from .lockdep import lockdep_assert_walk_protected
from .mm_types import PROT_WRITE, PTE, VMA_LIVE
from .mmap_lock import mmap_read_lock, mmap_read_trylock, mmap_read_unlock
from .pagetable import (HUGE, P, RW, index, mk_entry, pmd_entry_of, pmd_maps_table,
                        pte_alloc_walk)
from .pipe import TABLES
from .vma import access_ok, anon_vma_prepare, current_tree, find_vma, tree_entries
from .vma_lock import MM_SELF

VM_FAULT_OK, VM_FAULT_SIGSEGV, VM_FAULT_OOM, VM_FAULT_RETRY = 0, 1, 2, 3


def assert_vma_stable(mm, vma, va):
    """A fault that holds mmap_lock read or the VMA's read lock must find the VMA as it
    copied it, and attached: a writer may change or detach it only after waiting for
    those readers (a detached VMA was unmapped; lock_vma_under_rcu must not lock one).
    And va must lie in it: both paths decide that before they fault (find_vma's range,
    lock_vma_under_rcu's re-check once the VMA is locked)."""
    rec = mm.vma[vma.id]
    if not vma.start <= va < vma.end:
        mm.report("fault_outside_vma", "fault", va, vma.id, vma.start, vma.end)
    elif (int(rec["start"]), int(rec["end"]), int(rec["prot"])) != (vma.start, vma.end, vma.prot):
        mm.report("vma_unlocked_change", "fault", va, vma.id, vma.prot, int(rec["prot"]))
    elif rec["detached"]:
        mm.report("vma_detached", "fault", va, vma.id, vma.start, vma.end)
    elif rec["vm_mm"] != MM_SELF:           # a record the other mm reused (refcnt)
        mm.report("vma_foreign", "fault", va, vma.id, int(rec["vm_mm"]))


def install_anon_pte(mm, vma, t, i, f, write):
    """Steps (3)-(4), ptl held: map frame f at PTE t[i] if it is still none; otherwise
    someone else faulted it in and f goes back."""
    e = int(mm.pt[t, i])
    if e == 0:                                                # (3)
        if not vma.anon_vma:         # folio_add_new_anon_rmap: __folio_set_anon's BUG_ON
            mm.report("anon_vma_missing", "fault", 0, vma.id, t, i)
        mm.delay("install_pte")
        mm.frame_meta[f]["mapcount"] = 1
        mm.rss[0] += 1
        native.store_release(mm.entry_ptr(t, i),              # (4)
                             mk_entry(f, int(mm.frame_gen[f]),
                                      P | (RW if vma.prot & PROT_WRITE else 0)))
        return
    put_page(mm, f)
    if write and e & P and not e & RW and vma.prot & PROT_WRITE:
        native.store_release(mm.entry_ptr(t, i), e | RW)      # do_wp_page, exclusive anon


def vmf_anon_prepare(mm, vma, vma_locked):
    """mm/memory.c vmf_anon_prepare (v6.7+): a VMA's first anonymous fault prepares its
    anon_vma under mmap_lock read; under the VMA lock alone (--vma-lock refcnt: v6.4's
    lock_vma_under_rcu fell back before, on a VMA without one) only if mmap_read_trylock
    gets it, else VM_FAULT_RETRY and the fault is taken again under mmap_lock."""
    if vma.anon_vma:
        return VM_FAULT_OK
    if vma_locked and not mmap_read_trylock(mm):
        return VM_FAULT_RETRY
    try:
        anon_vma_prepare(mm, vma)
    finally:
        if vma_locked:
            mmap_read_unlock(mm)
    return VM_FAULT_OK


def do_anonymous_page(mm, vma, va, write, vma_locked=False):
    if vmf_anon_prepare(mm, vma, vma_locked) == VM_FAULT_RETRY:
        return VM_FAULT_RETRY
    f = alloc_frame(mm, may_fail=True)                        # (1)
    if f < 0:
        return VM_FAULT_OOM
    # pte_offset_map_lock (6.5+): the PTE table is mapped under RCU, since reclaim may
    # free it under mmap_lock read, and stays mapped until pte_unmap_unlock; its pmd is
    # re-checked once the ptl is held.
    native.rcu_read_lock()
    try:
        t = pte_alloc_walk(mm, va)
        lockdep_assert_walk_protected(mm, "fault", va)   # the table, until its ptl is held
        if t < 0:
            # HUGE: a trans-huge pmd (collapsed since the TLB missed, or being split):
            # the huge pmd's fault, then the access retries (a present huge pmd is as
            # permissive as its VMA, so it needs no more).
            put_page(mm, f)
            if t != HUGE:
                return VM_FAULT_OOM
            huge_pmd_set_accessed(mm, va)
            return VM_FAULT_RETRY
        ptl = mm.ptl(t)
        mm.delay("fault_before_ptl")
        locked = not mm.bugs.on("fault_no_ptl")
        if locked:
            native.spin_lock(ptl, mm.cpu)                     # (2)
        try:
            # The ptl lives in t: RCU kept t alive from the pmd read to here (observed
            # once the lock is taken, the end of that window, not at its start)
            mm.pipe.observe(TABLES, t, "fault", va)
            pmd_t, pmd_i = pmd_entry_of(mm, va)               # pmd still points here?
            if pmd_t < 0 or not pmd_maps_table(int(mm.pt[pmd_t, pmd_i]), t):
                put_page(mm, f)
                return VM_FAULT_RETRY
            assert_vma_stable(mm, vma, va)
            install_anon_pte(mm, vma, t, index(va, PTE), f, write)
            return VM_FAULT_OK
        finally:
            if locked:
                native.spin_unlock(ptl)                       # (5)
    finally:
        native.rcu_read_unlock()                              # pte_unmap


def assert_segv_justified(mm, va, write):
    """SIGSEGV is decided under mmap_lock read, so the tree cannot change meanwhile: no
    live VMA of it may map va with the access (a linear scan, not find_vma's search; a
    record in the tree that is not live is find_vma's vma_uaf)."""
    starts, ends, ids = tree_entries(mm, current_tree(mm))
    for s, e, vid in zip(starts, ends, ids):
        if s <= va < e and mm.vma[vid]["state"] == VMA_LIVE \
                and access_ok(int(mm.vma[vid]["prot"]), write):
            mm.report("spurious_segv", "fault", va, vid, write)


def do_user_addr_fault(mm, va, write):
    """The classical fault under mmap_lock read (also every speculative fallback)."""
    mm.count("fault_classic")
    mmap_read_lock(mm)
    try:
        vma = find_vma(mm, va)
        if vma is None or not access_ok(vma.prot, write):
            assert_segv_justified(mm, va, write)
            return VM_FAULT_SIGSEGV
        return do_anonymous_page(mm, vma, va, write)
    finally:
        mmap_read_unlock(mm)
