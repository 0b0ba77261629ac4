"""Page-table reclaim, David Hildenbrand's plan from the seed thread (--reclaim seed).

Follows no kernel version: a proposal, never merged.  What merged is PT_RECLAIM (v6.14,
memory.reclaim_pt).

  1. scan under mmap_lock read: PTE tables inside VMAs whose 512 entries are all none
     (a racy look, candidates only)
  2. under mmap_lock write: write-lock the VMAs over each candidate's range
     (vma_start_write, so per-VMA faults are out too), re-check under the pmd lock and
     the ptl that the pmd still points at the table and the table is still empty
  3. clear the pmd, tlb_remove_table (IPI sync or grace period, per --table-free)
mmap_lock write keeps classical faults out and moves mmap_seq, so a speculative fault
that raced with us aborts; lockless walkers are covered by tlb_remove_table.
The merged alternative (--reclaim ptreclaim, CONFIG_PT_RECLAIM) frees tables at
MADV_DONTNEED instead: see memory.reclaim_pt.
"""
import numpy as np

from .. import native
from .memory import PMD_SIZE
from .mm_types import TABLE_LIVE
from .mmap_lock import mmap_read_lock, mmap_read_unlock, mmap_write_lock, mmap_write_unlock
from .pagetable import P, PROTNONE, entry_pfn, pmd_entry_of, pmd_maps_table, pte_table_of
from .tlb import MmuGather
from .vma import vmas_snapshot
from .vma_lock import vma_start_write

MAX_BATCH = 8         # tables removed per write-locked pass


def _candidates(mm):
    """Step 1: empty PTE tables under the VMAs (mmap_lock read held)."""
    out = []
    for v in vmas_snapshot(mm):
        base = v.start & ~(PMD_SIZE - 1)
        while base < v.end and len(out) < MAX_BATCH:
            t = pte_table_of(mm, base)
            if t >= 0 and not (mm.pt[t] & (P | PROTNONE)).any() and base not in out:
                out.append(base)
            base += PMD_SIZE
    return out


def reclaim_scan(mm):
    """One scan-and-remove pass; returns the number of tables removed."""
    mmap_read_lock(mm)
    try:
        cands = _candidates(mm)
    finally:
        mmap_read_unlock(mm)
    if not cands:
        return 0
    removed = 0
    mmap_write_lock(mm)
    try:
        vmas = vmas_snapshot(mm)
        tlb = MmuGather(mm)
        for base in cands:
            for v in vmas:                                                   # 2
                if v.start < base + PMD_SIZE and v.end > base:
                    vma_start_write(mm, v.id)
            pmd_t, pmd_i = pmd_entry_of(mm, base)
            if pmd_t < 0:
                continue
            pmdl = mm.ptl(pmd_t)
            native.spin_lock(pmdl, mm.cpu)
            e = int(mm.pt[pmd_t, pmd_i])
            t = entry_pfn(e)
            if pmd_maps_table(e, t):         # not a huge pmd collapsed since the scan
                ptl = mm.ptl(t)
                native.spin_lock(ptl, mm.cpu)
                if not (mm.pt[t] & (P | PROTNONE)).any() or mm.bugs.on("reclaim_no_recheck"):
                    native.store_relaxed(mm.entry_ptr(pmd_t, pmd_i), 0)       # 3
                    tlb.remove_table(t, base)  # PENDING before a walker's PWC can miss on it
                    removed += 1
                native.spin_unlock(ptl)
            native.spin_unlock(pmdl)
        tlb.finish()
    finally:
        mmap_write_unlock(mm)
    mm.count("pt_reclaimed", removed)
    return removed


def pt_pages(mm):
    """Page-table pages in use now (VmPTE / 4 KiB): live tables below the PGD."""
    return int(np.count_nonzero(mm.pt_state[1:] == TABLE_LIVE))
