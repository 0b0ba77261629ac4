"""Huge PMDs (mm/huge_memory.c, 6.12): zapping and splitting a 2 MiB mapping.

Follows Linux v6.14 mm/huge_memory.c: zap_huge_pmd, __split_huge_pmd ->
__split_huge_pmd_locked (pmdp_invalidate first), except that the split copies (below).

A huge pmd maps one huge page (frames head..head+511, see frames.py) with the
permissions of its VMA; khugepaged.py creates them and deposits the PTE table they
replaced with their PMD table (pgtable_trans_huge_deposit).  Whatever needs PTE
granularity (a partial munmap or DONTNEED, mprotect, a VMA split) splits the pmd first.
The split fills the deposited table with copies of the subpages (the kernel maps the
same subpages; copying keeps every frame a single page, and the locking is the same;
the copies are allocated under the pmd lock, where the kernel allocates nothing, so a
splitter that finds the pmd changed has nothing to give back):

  split: (1) pmd lock; re-check the pmd is still this huge page
         (2) 512 small frames allocated in one batch (none: unlock, out of memory)
         (3) pmdp_invalidate: the pmd loses its present bit (pmd_mkinvalid: still
             trans-huge to software, not present to the hardware walk) and every TLB is
             flushed: once we copy, no CPU may still write through the huge mapping
         (4) withdraw a deposited table (pgtable_trans_huge_withdraw), copy each
             subpage into its small frame and fill the table, populate the pmd
             (release), unlock
         (5) drop the huge page (no translation to it is left)
  zap:   pmd lock; re-check; clear the pmd; zap_deposited_table (withdraw one and free it
         at once: no walker can be in it, khugepaged's tlb_remove_table_sync_one waited
         them out before it was deposited); gather the huge page (freed after the flush)
  Partners: every locked path that meets a trans-huge pmd (an invalidated one included)
  takes the pmd lock and re-checks it (zap_huge_pmd, split_huge_pmd: a split in progress
  is waited out there), or retries (the fault: pte_offset_map_lock gives NULL); the
  hardware walk, SPF and gup_fast see "not present": a fault, "pmd", a stop.
"""
import numpy as np

from .. import native
from .frames import alloc_frames, put_page
from .mm_types import HPAGE_NR, PTRS
from .pagetable import (GEN_MASK, GEN_SHIFT, P, PFN_SHIFT, PS, RW, entry_pfn, free_table_now,
                        mk_entry, pgtable_trans_huge_withdraw, pmd_entry_of, populate)
from .tlb import flush_tlb_range

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


def huge_pmd_set_accessed(mm, va):
    """The fault that meets a trans-huge pmd (__handle_mm_fault: do_huge_pmd_wp_page or
    huge_pmd_set_accessed): the pmd lock, pmd_same, nothing to update in the model (no
    accessed or dirty bits), unlock; the access retries.  A split in progress (its pmd
    invalidated, which is why the hardware walk faulted) is waited out on the lock."""
    pmd_t, _ = pmd_entry_of(mm, va)
    pmdl = mm.ptl(pmd_t)
    native.spin_lock(pmdl, mm.cpu)
    native.spin_unlock(pmdl)


def zap_huge_pmd(mm, tlb, pmd_t, pmd_i, e, va):
    """Clear the huge pmd e (mapping the block at va) under the pmd lock and gather its
    page; False when it changed meanwhile (the caller looks again)."""
    pmdl = mm.ptl(pmd_t)
    native.spin_lock(pmdl, mm.cpu)
    ok = int(mm.pt[pmd_t, pmd_i]) == e
    if ok:
        native.store_relaxed(mm.entry_ptr(pmd_t, pmd_i), 0)
        if not mm.bugs.on("thp_deposit_leak"):
            zap_deposited_table(mm, pmd_t)
        tlb.zap_pages(va, HPAGE_NR)
        head = entry_pfn(e)
        mm.frame_meta[head]["mapcount"] -= 1
        if not mm.bugs.on("rss_no_dec"):
            mm.rss[0] -= HPAGE_NR
        tlb.remove_page(head)
        mm.count("thp_zap")
    native.spin_unlock(pmdl)
    return ok


def zap_deposited_table(mm, pmd_t):
    """The zap of a huge pmd of pmd_t (its pmd lock held): withdraw a deposited table and
    free it now (pte_free: it has been unreachable since its collapse's sync)."""
    free_table_now(mm, pgtable_trans_huge_withdraw(mm, pmd_t))


def split_huge_pmd(mm, pmd_t, pmd_i, e, haddr):
    """Replace huge pmd e by a PTE table mapping copies of its subpages (mmap_lock held,
    read or write).  Returns True when the pmd is no longer e's huge mapping (split
    here, or changed by someone else), False when out of memory."""
    pmdl = mm.ptl(pmd_t)
    native.spin_lock(pmdl, mm.cpu)                                            # (1)
    if int(mm.pt[pmd_t, pmd_i]) != e:
        native.spin_unlock(pmdl)
        return True
    frames = alloc_frames(mm, HPAGE_NR)                                       # (2)
    if frames is None:
        native.spin_unlock(pmdl)
        mm.count("thp_oom")
        return False
    native.store_relaxed(mm.entry_ptr(pmd_t, pmd_i), e & ~P)                 # (3)
    flush_tlb_range(mm, haddr, haddr + PMD_SIZE)                             # pmdp_invalidate
    t = pgtable_trans_huge_withdraw(mm, pmd_t)                                 # (4)
    head = entry_pfn(e)
    mm.frame_payload[frames.astype(np.int64)] = mm.frame_payload[head:head + HPAGE_NR]
    mm.frame_meta["mapcount"][frames.astype(np.int64)] = 1
    gens = mm.frame_gen[frames.astype(np.int64)] & np.uint64(GEN_MASK)
    mm.pt[t, :PTRS] = (frames << np.uint64(PFN_SHIFT)) | (gens << np.uint64(GEN_SHIFT)) \
        | np.uint64(P | (e & RW))
    native.smp_wmb()
    populate(mm, pmd_t, pmd_i, t)
    native.spin_unlock(pmdl)
    mm.frame_meta[head]["mapcount"] -= 1                                      # (5)
    put_page(mm, head)
    mm.count("thp_split")
    return True


def split_huge_range(mm, start, end):
    """Split every huge pmd that meets [start, end) (mprotect, before it splits VMAs).
    False when out of memory."""
    base = start & ~(PMD_SIZE - 1)
    while base < end:
        h = huge_pmd_of(mm, base)
        if h is not None and not split_huge_pmd(mm, *h, base):
            return False
        base += PMD_SIZE
    return True

