"""khugepaged (mm/khugepaged.c): collapse a 2 MiB range of small pages into a huge pmd.

Follows Linux v6.14 mm/khugepaged.c collapse_huge_page (mmap_write_lock, vma_start_write
since v6.4, pmdp_collapse_flush, __collapse_huge_page_isolate, __collapse_huge_page_copy);
--collapse retract borrows retract_page_tables' locking (v6.6, Hugh Dickins's
1d65b771bc08), which the kernel uses for file THPs only.  Knowingly different: the
kernel drops the pmd lock after pmdp_collapse_flush and keeps the old PTE table deposited
under the huge pmd (pgtable_trans_huge_deposit); here the pmd lock is held to the end and
the table is freed (step 8).

collapse_huge_page, as a CPU's op (``--collapse write-lock|retract``):
  1. scan under mmap_lock read (hugepage_vma_revalidate's conditions): a 2 MiB-aligned
     block inside one accessible VMA whose pmd links a PTE table with at least one
     present PTE (max_ptes_none = 511, the default); allocate the huge page
  2. write-lock: mmap_write_lock and vma_start_write, so faults of every kind are out (a
     speculative one sees mmap_seq move);  retract: mmap_lock read only and nothing
     write-locked (6.6's retract_page_tables, Hugh Dickins): faults, DONTNEED and SPF
     may run against us, and each re-checks the pmd under the ptl instead
     (pte_offset_map_lock, SPF step 6b)
  3. pmd lock (held to the end: no fault can populate the pmd meanwhile); re-check the
     VMA and that the pmd still links the table; take its ptl
  4. pmdp_collapse_flush: invalidate the pmd (PMD_INVALID: not present, but DONTNEED
     waits for us instead of taking the block for empty), flush every TLB: from here no
     CPU writes a small page through an old translation and no new walk enters the table
  5. isolate: no present page may have a reference besides its mapping (a gup pin:
     SCAN_PAGE_COUNT); else put the pmd back and give up
  6. copy each small page into its subpage (none: zero), clear the PTEs, gather the
     small pages (freed after the flush)
  7. set the huge pmd (release), unlock
  8. the old PTE table: write-lock: tlb_remove_table (--table-free's IPI or grace
     period); retract: pte_free_defer (a grace period whatever --table-free says, since
     faults map tables under RCU)
Partner of (4) and (8): a lockless walker (gup_fast, SPF) may still be inside the table
after the flush when the flush does not interrupt it (--tlb-flush no-ipi): only (8)'s
sync keeps the table alive under it.  Freeing right after the flush is Jann Horn's 2022
bug (bug ``khugepaged_no_sync``).
"""
import numpy as np

from .. import native
from .frames import alloc_huge_frame, put_page
from .huge_memory import PMD_SIZE, mk_huge_pmd
from .mm_types import HPAGE_NR, PROT_WRITE
from .mmap_lock import (mmap_read_lock, mmap_read_unlock, mmap_write_lock,
                        mmap_write_unlock, vma_start_write)
from .pagetable import (PFN_MASK, PFN_SHIFT, PMD_INVALID, P, PROTNONE, entry_pfn,
                        free_table_now, mark_pending, pmd_entry_of, pmd_maps_table,
                        pte_table_of)
from .tlb import MmuGather, flush_tlb_all, pte_free_defer
from .vma import find_vma

SCAN_BLOCKS = 8             # blocks looked at per scan (khugepaged's pages_to_scan)


def _eligible(mm, base):
    """Step 1/3's conditions at base (mmap_lock held): the VMA, else None."""
    v = find_vma(mm, base)
    if v is None or v.prot == 0 or v.start > base or v.end < base + PMD_SIZE:
        return None
    t = pte_table_of(mm, base)
    if t < 0:
        return None
    row = mm.pt[t]
    if not (row & P).any() or (row & PROTNONE).any():
        return None
    return v


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
    return collapse_huge_page(mm, target)


def collapse_huge_page(mm, base):
    head = alloc_huge_frame(mm)                                               # 1
    if head < 0:
        mm.count("thp_oom")
        return False
    retract = mm.cfg.collapse == "retract"
    (mmap_read_lock if retract else mmap_write_lock)(mm)                      # 2
    try:
        v = _eligible(mm, base)
        if v is not None and not retract:
            vma_start_write(mm, v.id)
        ok = v is not None and _collapse_locked(mm, base, v, head, retract)
    finally:
        (mmap_read_unlock if retract else mmap_write_unlock)(mm)
    if not ok:
        put_page(mm, head)
        mm.count("thp_collapse_fail")
    return ok


def _collapse_locked(mm, base, v, head, retract):
    pmd_t, pmd_i = pmd_entry_of(mm, base)
    pmdl = mm.ptl(pmd_t)
    native.spin_lock(pmdl, mm.cpu)                                            # 3
    tlb = MmuGather(mm)
    ok = False
    try:
        orig = int(mm.pt[pmd_t, pmd_i])
        t = entry_pfn(orig)
        if not pmd_maps_table(orig, t):
            return False
        ptl = mm.ptl(t)
        native.spin_lock(ptl, mm.cpu)
        try:
            native.store_relaxed(mm.entry_ptr(pmd_t, pmd_i), PMD_INVALID)     # 4
            mm.delay("collapse_flush")
            flush_tlb_all(mm)
            row = mm.pt[t]
            hits = np.flatnonzero(row & P)       # no PROT_NONE: _eligible, same lock hold
            frames = (row[hits] >> np.uint64(PFN_SHIFT)) & np.uint64(PFN_MASK)
            refs = mm.frame_meta["refcount"][frames.astype(np.int64)]
            if (refs != 1).any():                                             # 5
                native.store_release(mm.entry_ptr(pmd_t, pmd_i), orig)
                return False
            mm.frame_payload[head + hits] = mm.frame_payload[frames.astype(np.int64)]  # 6
            for i, f in zip(hits.tolist(), frames.tolist()):
                native.store_relaxed(mm.entry_ptr(t, i), 0)
                mm.frame_meta[f]["mapcount"] -= 1
                tlb.remove_page(f)
            mm.frame_meta[head]["mapcount"] = 1
            mm.rss[0] += HPAGE_NR - len(hits)
            native.store_release(mm.entry_ptr(pmd_t, pmd_i),                  # 7
                                 mk_huge_pmd(mm, head, v.prot & PROT_WRITE))
            ok = True
        finally:
            native.spin_unlock(ptl)
    finally:
        native.spin_unlock(pmdl)
        if ok:                                                                # 8
            if mm.bugs.on("khugepaged_no_sync"):
                free_table_now(mm, t)
            elif retract:
                mark_pending(mm, t)
                pte_free_defer(mm, t)
            else:
                tlb.remove_table(t)
        tlb.finish()
    mm.count("thp_collapsed")
    return True

