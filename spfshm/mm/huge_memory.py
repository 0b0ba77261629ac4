"""Huge PMDs (mm/huge_memory.c): zapping and splitting a 2 MiB mapping.

Follows Linux v6.14 mm/huge_memory.c: zap_huge_pmd, __split_huge_pmd ->
__split_huge_pmd_locked (pmdp_invalidate first), except that the split copies (below).

A huge pmd maps one huge page (frames head..head+511, see frames.py) with the
permissions of its VMA; khugepaged.py creates them.  Whatever needs PTE granularity (a
partial munmap or DONTNEED, mprotect, a VMA split) splits the pmd first.  The split
copies (the kernel remaps the same subpages through a deposited table; copying keeps
every frame a single page and exercises the same locking):

  split: (1) new PTE table and 512 small frames allocated (no locks held)
         (2) pmd lock; re-check the pmd is still this huge page
         (3) invalidate the pmd and flush every TLB (pmdp_invalidate: once we copy, no
             CPU may still write through the huge mapping, and no walk can refill it)
         (4) copy each subpage into its small frame, fill the table, populate the pmd
             (release), unlock
         (5) drop the huge page (no translation to it is left)
  Partners: the invalidated pmd is not present but not none (PMD_INVALID), so DONTNEED
  and munmap wait for the pmd lock and then see the new table, and a fault retries; the
  hardware walker and SPF see "not present": a fault, or the "no_table" abort.
"""
import numpy as np

from .. import native
from .frames import alloc_frame, put_page
from .mm_types import HPAGE_NR, PTE, PTRS
from .pagetable import (GEN_MASK, GEN_SHIFT, P, PFN_SHIFT, PMD_INVALID, PS, RW, alloc_table,
                        entry_pfn, free_table_now, mk_entry, pmd_entry_of, populate)
from .tlb import assert_no_translation, flush_tlb_all

PMD_SIZE = HPAGE_NR << 12


def huge_pmd_of(mm, va):
    """(pmd table, index, entry) when va's pmd maps a huge page, else None (the caller
    holds the mmap_lock)."""
    pmd_t, pmd_i = pmd_entry_of(mm, va)
    if pmd_t < 0:
        return None
    e = int(mm.pt[pmd_t, pmd_i])
    return (pmd_t, pmd_i, e) if e & (P | PS) == P | PS else None


def mk_huge_pmd(mm, head, writable):
    return mk_entry(head, int(mm.frame_gen[head]), P | PS | (RW if writable else 0))


def zap_huge_pmd(mm, tlb, pmd_t, pmd_i, e, va):
    """Clear the huge pmd e (mapping the block at va) under the pmd lock and gather its
    page; False when it changed meanwhile (the caller looks again)."""
    pmdl = mm.ptl(pmd_t)
    native.spin_lock(pmdl, mm.cpu)
    ok = int(mm.pt[pmd_t, pmd_i]) == e
    if ok:
        native.store_relaxed(mm.entry_ptr(pmd_t, pmd_i), 0)
        tlb.zap_pages(va, HPAGE_NR)
        head = entry_pfn(e)
        mm.frame_meta[head]["mapcount"] -= 1
        if not mm.bugs.on("rss_no_dec"):
            mm.rss[0] -= HPAGE_NR
        tlb.remove_page(head)
        mm.count("thp_zap")
    native.spin_unlock(pmdl)
    return ok


def _alloc_small(mm):
    """Step (1): a table and 512 frames, or None (everything given back)."""
    t = alloc_table(mm, PTE)
    frames = []
    while t >= 0 and len(frames) < HPAGE_NR:
        f = alloc_frame(mm)
        if f < 0:
            break
        frames.append(f)
    if t >= 0 and len(frames) == HPAGE_NR:
        return t, np.array(frames, dtype=np.uint64)
    for f in frames:
        put_page(mm, f)
    if t >= 0:
        free_table_now(mm, t)
    return None


def split_huge_pmd(mm, pmd_t, pmd_i, e):
    """Replace huge pmd e by a PTE table mapping copies of its subpages (mmap_lock held,
    read or write).  Returns True when the pmd is no longer e's huge mapping (split
    here, or changed by someone else), False when out of memory."""
    new = _alloc_small(mm)                                                     # (1)
    if new is None:
        mm.rcu.rcu_barrier()             # tables waiting for a grace period: once more
        new = _alloc_small(mm)
        if new is None:
            mm.count("thp_oom")
            return False
    t, frames = new
    pmdl = mm.ptl(pmd_t)
    native.spin_lock(pmdl, mm.cpu)                                            # (2)
    if int(mm.pt[pmd_t, pmd_i]) != e:
        native.spin_unlock(pmdl)
        free_table_now(mm, t)
        for f in frames.tolist():
            put_page(mm, f)
        return True
    native.store_relaxed(mm.entry_ptr(pmd_t, pmd_i), PMD_INVALID)            # (3)
    flush_tlb_all(mm)
    head = entry_pfn(e)
    mm.frame_payload[frames.astype(np.int64)] = mm.frame_payload[head:head + HPAGE_NR]  # (4)
    mm.frame_meta["mapcount"][frames.astype(np.int64)] = 1
    gens = mm.frame_gen[frames.astype(np.int64)] & np.uint64(GEN_MASK)
    mm.pt[t, :PTRS] = (frames << np.uint64(PFN_SHIFT)) | (gens << np.uint64(GEN_SHIFT)) \
        | np.uint64(P | (e & RW))
    native.smp_wmb()
    populate(mm, pmd_t, pmd_i, t)
    native.spin_unlock(pmdl)
    mm.frame_meta[head]["mapcount"] -= 1                                      # (5)
    assert_no_translation(mm, list(range(head, head + HPAGE_NR)))
    put_page(mm, head)
    mm.count("thp_split")
    return True


def split_huge_range(mm, start, end):
    """Split every huge pmd that meets [start, end) (mprotect, before it splits VMAs).
    False when out of memory."""
    base = start & ~(PMD_SIZE - 1)
    while base < end:
        h = huge_pmd_of(mm, base)
        if h is not None and not split_huge_pmd(mm, *h):
            return False
        base += PMD_SIZE
    return True

