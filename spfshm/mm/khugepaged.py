"""khugepaged (mm/khugepaged.c, 6.12): collapse a 2 MiB range of small pages into a huge
pmd, anonymous memory only (collapse_huge_page; retract_page_tables, the mmap_lock-free
way, is for file and shmem VMAs, which the model does not have).

collapse_huge_page, as a CPU's op (``--collapse write-lock``):
  1. scan under mmap_lock read (hpage_collapse_scan_pmd, hugepage_vma_revalidate's
     conditions): a 2 MiB-aligned block inside one accessible VMA whose pmd links a PTE
     table with at least one present PTE (max_ptes_none = 511, the default); drop the
     lock, allocate the huge page (it may fail, SCAN_ALLOC_HUGE_PAGE_FAIL: give up)
  2. mmap_write_lock, revalidate the VMA, vma_start_write, then check_pmd_still_valid
     (in this order since "mm: Fix the race between collapse and PT_RECLAIM under
     per-vma lock", 2025: before vma_start_write a DONTNEED under the VMA's read lock,
     --madvise-lock vma, may still reclaim the table; bug
     ``collapse_pmd_check_before_vma_lock``): classical, per-VMA and DONTNEED's zaps
     (under mmap_lock read or the VMA's read lock) are out, a speculative
     fault sees mmap_seq move (anon_vma_lock_write excludes rmap walkers: the model has
     none, so there is nothing to take)
  3. pmd lock; pmdp_collapse_flush: the pmd is cleared to none and every TLB (and
     paging-structure cache) flushed; pmd unlock.  From here no walk enters the table:
     the hardware walk faults, SPF aborts ("pmd", or "pte_map_lock_pmd" and
     "pte_map_lock_seq1/2" at its step 6), gup_fast stops
  4. tlb_remove_table_sync_one: an IPI (RCU walkers: a grace period, tlb.py): a lockless
     walker that read the pmd before (3) (gup_fast, SPF: the flush need not interrupt
     them, --tlb-flush no-ipi) has left the table
  5. pte_offset_map_lock on the saved pmd value (_pmd): the ptl of the unlinked table;
     isolate: no present page may have a reference besides its mapping (a gup pin:
     SCAN_PAGE_COUNT); else unlock, pmd lock, pmd_populate the table back, give up
  6. copy each small page into its subpage (none: zero), clear the PTEs, drop the small
     pages (the flush of (3) removed every translation to them); pte_unmap_unlock
  7. pmd lock; the pmd is still none; pgtable_trans_huge_deposit(the old table): kept for
     a split, freed by a zap of a huge pmd (huge_memory.py); set the huge pmd (release);
     unlock; mmap_write_unlock.  The deposit hands the table over for reuse or freeing
     with no further sync: the checkers assert that (4) held (assert_walkers_gone)
Partners of (3)-(4): gup_fast's pmd re-check (gup.py (4): it backs off when the pmd
changed), SPF's pmd_same and mmap_seq checks under the ptl (spf.py step 6).  Without (4)
a walker may still be inside the table when a zap frees it or a split refills it: Jann
Horn's 2022 bug (bug ``khugepaged_no_sync``).
"""
import numpy as np

from .. import native
from .frames import alloc_huge_frame, put_page
from .huge_memory import PMD_SIZE, mk_huge_pmd
from .mm_types import HPAGE_NR, PROT_WRITE, PTE
from .mmap_lock import mmap_read_lock, mmap_read_unlock, mmap_write_lock, mmap_write_unlock
from .pagetable import (PFN_MASK, PFN_SHIFT, P, PROTNONE, entry_pfn,
                        pgtable_trans_huge_deposit,
                        pmd_entry_of, pmd_maps_table, populate, pte_table_of, pte_unmap_unlock)
from .tlb import flush_tlb_range, tlb_remove_table_sync_one
from .vma import find_vma
from .vma_lock import vma_start_write

SCAN_BLOCKS = 8             # blocks looked at per scan (khugepaged's pages_to_scan)


def hugepage_vma_revalidate(mm, base):
    """Step 1/2's VMA conditions at base (mmap_lock held): the VMA, else None."""
    v = find_vma(mm, base)
    if v is None or v.prot == 0 or v.start > base or v.end < base + PMD_SIZE:
        return None
    return v


def check_pmd_still_valid(mm, base):
    """Step 1/2's pmd conditions: the pmd links a PTE table with a present PTE and no
    PROT_NONE one."""
    t = pte_table_of(mm, base)
    if t < 0:
        return False
    row = mm.pt[t]
    return bool((row & P).any() and not (row & PROTNONE).any())


def _eligible(mm, base):
    """Step 1's conditions at base (mmap_lock held): the VMA, else None."""
    v = hugepage_vma_revalidate(mm, base)
    return v if v is not None and check_pmd_still_valid(mm, base) else None


def khugepaged_scan(mm, start):
    """Look at up to SCAN_BLOCKS blocks from start's (wrapping in the window) and
    collapse the first eligible one.  Returns True when one was collapsed."""
    g = mm.g
    nblocks = max(1, g.window_len // PMD_SIZE)
    first = (start - (g.window_base & ~(PMD_SIZE - 1))) // PMD_SIZE
    mmap_read_lock(mm)
    try:
        target = None
        for k in range(min(SCAN_BLOCKS, nblocks)):
            base = (g.window_base & ~(PMD_SIZE - 1)) + ((first + k) % nblocks) * PMD_SIZE
            if _eligible(mm, base) is not None:
                target = base
                break
    finally:
        mmap_read_unlock(mm)
    if target is None:
        return False
    return collapse_huge_page(mm, target, may_fail=True)


def collapse_huge_page(mm, base, may_fail=False):
    """Collapse the block at base (steps 1-7); ``may_fail``: khugepaged's allocation,
    which fails at random (frames.alloc_huge_frame).  True when collapsed."""
    head = alloc_huge_frame(mm, may_fail)                                     # 1
    if head < 0:
        mm.count("thp_oom")
        return False
    mmap_write_lock(mm)                                                       # 2
    try:
        v = hugepage_vma_revalidate(mm, base)
        ok = v is not None
        if ok and mm.bugs.on("collapse_pmd_check_before_vma_lock"):
            ok = check_pmd_still_valid(mm, base)      # BUSTED: DONTNEED under the VMA's
            mm.delay("collapse_vma_lock")             # read lock may still reclaim it
            vma_start_write(mm, v.id)
        elif ok:
            vma_start_write(mm, v.id)
            ok = check_pmd_still_valid(mm, base)
        ok = ok and _collapse_locked(mm, base, v, head)
    finally:
        mmap_write_unlock(mm)
    if not ok:
        put_page(mm, head)
        mm.count("thp_collapse_fail")
    return ok


def assert_walkers_gone(mm, base, t, unlinked):
    """KASAN-style assertion before the deposit, from which a split or a zap may reuse or
    free t without another sync: no lockless walker that began before the unlink (3) may
    still run.  Exact for RCU walkers (--walk rcu): the epoch RCU knows when each reader
    began, so the grace period begun at the unlink (cookie ``unlinked``) has elapsed.
    With IRQs-off walkers (4)'s IPI is not checked: the epoch RCU counts rcu_read_lock
    sections too, which an IPI does not wait for."""
    if unlinked:
        cpu = native.rcu_gp_blocker(unlinked)
        if cpu >= 0:
            mm.report("pt_uaf", "collapse_huge_page", base, t, PTE, cpu)


def _collapse_locked(mm, base, v, head):
    pmd_t, pmd_i = pmd_entry_of(mm, base)
    pmd_ptr = mm.entry_ptr(pmd_t, pmd_i)
    pmdl = mm.ptl(pmd_t)
    native.spin_lock(pmdl, mm.cpu)                                            # 3
    _pmd = int(mm.pt[pmd_t, pmd_i])
    t = entry_pfn(_pmd)
    if not pmd_maps_table(_pmd, t):
        # check_pmd_still_valid saw a table, and mmap_lock write with the VMA write lock
        # keeps every pmd changer out since; the kernel would pmd_populate the garbage
        # of a none _pmd back at (5)'s failure
        mm.report("pmd_changed", "collapse_huge_page", base, _pmd, t)
        native.spin_unlock(pmdl)
        return False
    native.store_relaxed(pmd_ptr, 0)                          # 3: pmdp_collapse_flush
    unlinked = native.rcu_start_gp() if mm.walk_rcu else 0      # the oracle's epoch (7)
    mm.delay("collapse_flush")
    flush_tlb_range(mm, base, base + PMD_SIZE)                      # pmdp_collapse_flush
    native.spin_unlock(pmdl)
    if not mm.bugs.on("khugepaged_no_sync"):
        tlb_remove_table_sync_one(mm)                                         # 4
    native.rcu_read_lock()               # 5: pte_offset_map_lock(mm, &_pmd): _pmd is our
    native.spin_lock(mm.ptl(t), mm.cpu)  #    own copy, no pmd_same to make
    try:
        row = mm.pt[t]
        hits = np.flatnonzero(row & P)       # no PROT_NONE: _eligible, same write lock
        frames = ((row[hits] >> np.uint64(PFN_SHIFT)) & np.uint64(PFN_MASK)).astype(np.int64)
        if (mm.frame_meta["refcount"][frames] != 1).any():                   # SCAN_PAGE_COUNT
            ok = False
        else:
            mm.frame_payload[head + hits] = mm.frame_payload[frames]         # 6
            for i in hits.tolist():
                native.store_relaxed(mm.entry_ptr(t, i), 0)
            mm.frame_meta["mapcount"][frames] -= 1
            ok = True
    finally:
        pte_unmap_unlock(mm, t)
    if ok:
        for f in frames.tolist():
            put_page(mm, f)
    native.spin_lock(pmdl, mm.cpu)                                            # 7
    if not ok:
        populate(mm, pmd_t, pmd_i, t)        # pmd_populate: the table back, unchanged
        native.spin_unlock(pmdl)
        return False
    mm.frame_meta[head]["mapcount"] = 1
    mm.rss[0] += HPAGE_NR - len(hits)
    assert_walkers_gone(mm, base, t, unlinked)
    pgtable_trans_huge_deposit(mm, pmd_t, t)
    native.store_release(pmd_ptr, mk_huge_pmd(mm, head, v.prot & PROT_WRITE))
    native.spin_unlock(pmdl)
    mm.count("thp_collapsed")
    return True
