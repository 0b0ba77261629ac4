"""Tearing mappings down and changing their protection (mm/memory.c, mm/mprotect.c).

Follows Linux v6.14: mm/memory.c zap_pte_range (force_flush: tlb_flush_mmu_tlbonly under
the ptl, unlock, tlb_flush_mmu, retry) and free_pgtables; mm/pt_reclaim.c
try_get_and_clear_pmd (fast path) and try_to_free_pte (slow path) for CONFIG_PT_RECLAIM
(new in v6.14, with f39edcf6349a); mm/mprotect.c change_protection, whose range the
kernel gathers in an mmu_gather (4a18419f71cd "mm/mprotect: use mmu_gather") where the
model returns "a permission was lost" and its caller flushes.

zap_pte_range clears PTEs under the ptl into the mmu_gather; every GATHER_BATCH pages it
flushes the TLB while still holding the ptl (force_flush), which is exactly what makes an
IRQs-off walker spinning on that ptl a deadlock; it then drops the ptl to free the batch
and takes it again.  free_pgtables unlinks tables whose whole range lies in
[floor, ceiling) (no VMA can use them) and hands them to tlb_remove_table.
"""
import numpy as np

from .. import native
from .mm_types import LEVEL_SHIFT, PAGE_SHIFT, PGD, PMD, PTE, PTRS
from .huge_memory import split_huge_pmd, zap_huge_pmd
from .pagetable import (NEXT, P, PROTNONE, PS, RW, ROOT, entry_pfn, leaf_beyond_prot,
                        pmd_entry_of, pmd_maps_table, pte_offset_map_lock, pte_unmap_unlock)

GATHER_BATCH = 32            # frames gathered before a forced flush under the ptl
PMD_SIZE = 1 << LEVEL_SHIFT[PMD]


def _pte_ranges(start, end):
    """(table-aligned va, first index, last index + 1) for each PTE table span."""
    va = start
    while va < end:
        nxt = min(end, (va | (PMD_SIZE - 1)) + 1)
        yield va & ~(PMD_SIZE - 1), (va >> PAGE_SHIFT) & (PTRS - 1), \
            ((nxt - 1) >> PAGE_SHIFT & (PTRS - 1)) + 1
        va = nxt


def _locked_tables(mm, start, end):
    """For each existing PTE table over [start, end), mapped and locked: (its base va,
    table, indices of its mapped PTEs in the range).  pte_unmap_unlock when the caller
    asks for the next table."""
    for base, i0, i1 in _pte_ranges(start, end):
        t = pte_offset_map_lock(mm, base)
        if t < 0:
            continue                     # none, or huge: mprotect split those first
        try:
            yield base, t, np.flatnonzero(mm.pt[t, i0:i1] & (P | PROTNONE)) + i0
        finally:
            pte_unmap_unlock(mm, t)


def mapped_leaves(mm, start, end):
    """[(va, entry)] of every mapped leaf in [start, end): huge pmds, and PTEs read under
    their table's ptl (locked callers: mmap_lock write, the VMAs write-locked)."""
    leaves = []
    for base, _, _ in _pte_ranges(start, end):
        pmd_t, pmd_i = pmd_entry_of(mm, base)
        e = int(mm.pt[pmd_t, pmd_i]) if pmd_t >= 0 else 0
        if e & PS and e & (P | PROTNONE):
            leaves.append((base, e))
    for base, t, idx in _locked_tables(mm, start, end):
        leaves += [(base + (i << PAGE_SHIFT), int(mm.pt[t, i])) for i in idx.tolist()]
    return leaves


def assert_range_unmapped(mm, start, end):
    """A model assertion for mmap_region (mmap_lock write held, [start, end) in no VMA):
    nothing may map the range.  Every zap cleared it under the locks, and a fault
    installs only inside a VMA, so a leaf here is one a fault installed after its VMA
    was gone (a speculative fault past a missed mmap_seq change, a per-VMA fault on a
    detached VMA).  The kernel would silently hand it to the new VMA, and the sweep
    would find it legal from then on: this is the last moment it can be seen."""
    for va, e in mapped_leaves(mm, start, end)[:1]:
        mm.report("stale_pte", "mmap", va, entry_pfn(e), e)


def assert_leaves_within(mm, start, end, prot):
    """A model assertion for mprotect (mmap_lock write held, the VMA over [start, end)
    write-locked, its protection ``prot`` not yet changed): no leaf grants more than
    ``prot``.  Every fault maps with its VMA's protection and every change went through
    change_protection under these locks, so a leaf beyond it is one a fault installed
    with a protection its VMA no longer had (a speculative fault past a missed mmap_seq
    change).  change_protection would rewrite it now, and the sweep never see it."""
    for va, e in mapped_leaves(mm, start, end):
        if leaf_beyond_prot(e, prot):
            mm.report("pte_prot", "mprotect", va, e, prot)
            return


def zap_pte_range(mm, tlb, start, end, reclaim=False):
    """Clear every mapped PTE in [start, end) and gather its frame, ptl held per table.
    When the gather fills up: flush under the ptl (force_flush), drop the ptl, free the
    batch, then look the table up again (the kernel's retry: while the ptl was dropped
    the table may have been reclaimed) and go on.  With ``reclaim``
    (--reclaim ptreclaim, MADV_DONTNEED) a table whose whole range was zapped is freed."""
    skip_last = mm.bugs.on("zap_skip_last_pte")
    dec_rss = not mm.bugs.on("rss_no_dec")
    spans = list(_pte_ranges(start, end))
    for n, (base, i0, i1) in enumerate(spans):
        dropped = False
        i, prev = i0, -1
        while i is not None:
            t = _pte_table_or_zap_huge(mm, tlb, base, i0 == 0 and i1 == PTRS)
            if t < 0:
                break
            if prev >= 0 and t != prev:
                i = i0                       # a new table meanwhile: all of it again
            prev = t
            row = mm.pt[t]
            hits = np.flatnonzero(row[i:i1] & (P | PROTNONE)) + i
            if skip_last and n == len(spans) - 1 and len(hits):
                hits = hits[:-1]
            i = None
            for k in hits.tolist():
                f = entry_pfn(int(row[k]))
                native.store_relaxed(mm.entry_ptr(t, k), 0)
                tlb.zap_pages(base + (k << PAGE_SHIFT))
                mm.frame_meta[f]["mapcount"] -= 1
                if dec_rss:
                    mm.rss[0] -= 1
                tlb.remove_page(f)
                if tlb.unflushed >= GATHER_BATCH:
                    mm.delay("zap_under_ptl")
                    tlb.flush_tlbonly()      # under the ptl, as the kernel's force_flush
                    pte_unmap_unlock(mm, t)
                    tlb.flush()              # free the batch without the ptl
                    mm.delay("zap_ptl_dropped")
                    dropped = True
                    i = k + 1                # retry from here
                    break
            if i is not None:
                continue
            if reclaim and i0 == 0 and i1 == PTRS and reclaim_pt(mm, tlb, t, base, dropped):
                native.rcu_read_unlock()     # reclaim_pt released the ptl: the pte_unmap
                break
            pte_unmap_unlock(mm, t)


def _pte_table_or_zap_huge(mm, tlb, base, whole):
    """zap_pmd_range's step for one pmd: the PTE table mapped and locked
    (pte_offset_map_lock), or -1 (nothing, or the huge pmd was zapped).  NULL from
    pte_offset_map_lock with a trans-huge pmd: zapped whole when the range covers it,
    else split first (out of memory: zapped whole, counted as thp_oom); both take the
    pmd lock and re-check it (a split in progress is waited out there), and a pmd that
    changed meanwhile is looked at again."""
    while True:
        t = pte_offset_map_lock(mm, base)
        if t >= 0:
            return t
        pmd_t, pmd_i = pmd_entry_of(mm, base)
        e = int(mm.pt[pmd_t, pmd_i]) if pmd_t >= 0 else 0
        if not e & PS:
            if e & P:
                continue                 # a table populated since: map it
            return -1
        if whole or not split_huge_pmd(mm, pmd_t, pmd_i, e, base):
            if zap_huge_pmd(mm, tlb, pmd_t, pmd_i, e, base):
                return -1


def reclaim_pt(mm, tlb, t, base, dropped):
    """CONFIG_PT_RECLAIM (v6.13 mm/pt_reclaim.c, zap_pte_range's tail in mm/memory.c),
    after zapping all of table t with its ptl held.
    Fast path (try_get_and_clear_pmd, then free_pte): the ptl was held throughout, so t is
    empty: spin_trylock the pmd lock and clear the pmd, with no pmd_same: the pmd was
    validated by pte_offset_map_lock and nothing clears it without t's ptl or a lock that
    excludes this zap (mmap_lock write, the VMA write lock), so a pmd that no longer maps
    t is a broken invariant, reported (``pmd_changed``), not skipped.
    Slow path (try_to_free_pte): pmd lock, then ptl, rescan all 512 entries.  The kernel
    takes it when zap_pte_range did not run in one go (``direct_reclaim`` false: a forced
    break when the gather filled, which dropped the ptl mid-zap, or need_resched, which
    the model does not have); then a fault may have refilled t: only the slow path is
    safe (Qi Zheng's fix; bug ``ptreclaim_after_ptl_drop``).  (``any_skipped``, which
    disables reclaim altogether, is never set here: the model's DONTNEED zaps every
    PTE; the kernel skips some only for zap_details filters and uffd-wp markers.)
    Returns True with the ptl released."""
    pmd_t, pmd_i = pmd_entry_of(mm, base)
    pmdl = mm.ptl(pmd_t)
    ptl = mm.ptl(t)
    if (not dropped or mm.bugs.on("ptreclaim_after_ptl_drop")) \
            and native.spin_trylock(pmdl, mm.cpu):
        e = int(mm.pt[pmd_t, pmd_i])
        if pmd_maps_table(e, t):
            native.store_relaxed(mm.entry_ptr(pmd_t, pmd_i), 0)
            tlb.remove_table(t, base)    # PENDING before a walker's PWC can miss on it
            mm.count("pt_reclaimed")
        else:
            mm.report("pmd_changed", "reclaim_pt", base, e, t)
        native.spin_unlock(pmdl)
        native.spin_unlock(ptl)
        return True
    native.spin_unlock(ptl)
    native.spin_lock(pmdl, mm.cpu)
    if pmd_maps_table(int(mm.pt[pmd_t, pmd_i]), t):
        native.spin_lock(ptl, mm.cpu)
        if not (mm.pt[t] & (P | PROTNONE)).any():
            native.store_relaxed(mm.entry_ptr(pmd_t, pmd_i), 0)
            tlb.remove_table(t, base)
            mm.count("pt_reclaimed")
        native.spin_unlock(ptl)
    native.spin_unlock(pmdl)
    return True


def change_protection(mm, start, end, prot):
    """Rewrite present (and PROT_NONE) PTEs in [start, end) for ``prot``; returns whether
    any translation lost a permission (the caller must flush TLBs before returning)."""
    downgrade = False
    want_none = prot == 0
    for _, t, hits in _locked_tables(mm, start, end):
        row = mm.pt[t]
        for i in hits.tolist():
            e = int(row[i])
            frame_bits = e & ~(P | RW | PROTNONE)
            if want_none:
                new = frame_bits | PROTNONE
            else:
                new = frame_bits | P | (RW if prot & 2 else 0)
            if (e & P) and (not new & P or (e & RW and not new & RW)):
                downgrade = True
            native.store_relaxed(mm.entry_ptr(t, i), new)
    return downgrade


def free_pgtables(mm, tlb, start, end, floor, ceiling):
    """Unlink and free every table below the PGD whose whole range lies in
    [floor, ceiling) and meets [start, end) (mmap_lock write held)."""
    _free_level(mm, tlb, ROOT, PGD, 0, start, end, floor, ceiling)


def _free_level(mm, tlb, table, level, table_va, start, end, floor, ceiling):
    shift = LEVEL_SHIFT[level]
    size = 1 << shift
    lo = max(0, (start - table_va) >> shift)
    hi = min(PTRS, ((end - 1 - table_va) >> shift) + 1)
    row = mm.pt[table]
    for i in range(lo, hi):
        e = int(row[i])
        if not e & P:
            continue
        a = table_va + i * size
        if e & PS:                       # zap removed those inside the VMAs
            mm.report("pt_lost_ptes", "free_pgtables", a, table, 1)
            continue
        child = entry_pfn(e)
        if a >= floor and a + size <= ceiling:
            native.store_relaxed(mm.entry_ptr(table, i), 0)       # (a) unlink, then free
            mm.delay("pmd_clear_to_free")
            _remove_subtree(mm, tlb, child, NEXT[level], a)
        elif NEXT[level] != PTE:
            _free_level(mm, tlb, child, NEXT[level], a, start, end, floor, ceiling)


def _remove_subtree(mm, tlb, table, level, va):
    """Hand table (of ``level``, mapping from va) and every table below it to the gather."""
    if level != PTE:
        row = mm.pt[table]
        for i in np.flatnonzero(row & P).tolist():
            e = int(row[i])
            if e & PS:
                mm.report("pt_lost_ptes", "free_pgtables", 0, table, 1)
                continue
            _remove_subtree(mm, tlb, entry_pfn(e), NEXT[level], va + (i << LEVEL_SHIFT[level]))
    tlb.remove_table(table, va)


