"""mmap, munmap, mprotect and madvise(MADV_DONTNEED), with Linux's splitting and errors.

Follows Linux v6.14: mm/mmap.c do_mmap, mm/vma.c do_vmi_munmap (vms_clear_ptes:
unmap_vmas, then free_pgtables), mm/mprotect.c do_mprotect_pkey / mprotect_fixup,
mm/madvise.c madvise_dontneed_single_vma -> zap_page_range_single.  Knowingly simpler:
anonymous private mappings only, no merging of adjacent VMAs, and the VMA tree is
republished whole (vma.py).

Results are Linux's: an address (mmap) or 0, else a negative errno.  Every VMA change is
done under mmap_lock write and published as a new tree; DONTNEED runs under mmap_lock
read, racing faults through the ptl.  munmap (v6.12 do_vmi_align_munmap) detaches its
VMAs and publishes the tree under the write lock, then downgrades it: the zap and
free_pgtables run under mmap_lock read, against faults on the neighbouring VMAs (every
path: classical, per-VMA, speculative), DONTNEED and gup_fast, with free_pgtables'
floor and ceiling keeping the tables the neighbours use.
"""
import errno

import numpy as np

from .. import native

from .frames import ZAP_COUNT
from .huge_memory import split_huge_range
from .memory import (assert_leaves_within, assert_range_unmapped, change_protection,
                     free_pgtables, zap_pte_range)
from .mm_types import PAGE, PAGE_SHIFT
from .mmap_lock import (mmap_read_lock, mmap_read_unlock, mmap_write_downgrade, mmap_write_lock,
                        mmap_write_unlock)
from .pervma import lock_vma_under_rcu
from .tlb import (MmuGather, assert_no_access_beyond, assert_zaps_complete, flush_tlb_mm_range,
                  zaps_returned)
from .vma import (Vma, publish_tree, tree_prealloc, tree_prealloc_free, vm_area_alloc,
                  vm_area_free, vmas_snapshot)
from .vma_lock import (vma_assert_no_readers, vma_assert_write_locked, vma_end_read,
                       vma_mark_detached, vma_start_write)

MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HINT = "fixed", "noreplace", "hint"
MAX_ADDR = 1 << 47


def _page_align(n):
    return (n + PAGE - 1) & ~(PAGE - 1)


SPLIT_WORK_NS = 20_000     # the work between __split_vma's bounds and mprotect's flags
                           # (native.work_ns: under --sched a point, not a wait)


def _set_bounds(mm, v, start, end, prot):
    """Shrink or re-protect the original record in place (mmap_lock write held), as
    __split_vma then mprotect_fixup do: bounds first, flags after some work.  ``vseq``
    is a debug-only seqcount around it (the checkers' view, not the protocol's)."""
    vma_assert_write_locked(mm, v.id, "split_vma")
    rec = mm.vma[v.id]
    rec["vseq"] += 1
    rec["start"] = start
    rec["end"] = end
    native.work_ns(SPLIT_WORK_NS)
    mm.delay("split_vma")
    rec["prot"] = prot
    rec["vseq"] += 1
    v.start, v.end, v.prot = start, end, prot
    return v


def _split_fits(mm, vmas, start, end):
    """Whether splitting at start and end stays within vm.max_map_count (checked before
    any record is touched, so a failure leaves the mm as it was: vms_gather_munmap_vmas'
    and vma_modify's map_count checks)."""
    extra = sum((v.start < start < v.end) + (v.start < end < v.end) for v in vmas)
    return len(vmas) + extra <= mm.cfg.max_map_count


def _split(mm, vmas, start, end, prot_of=None):
    """Split the VMAs overlapping [start, end) at its bounds.  Returns (new list, the
    pieces inside), or None (ENOMEM).  As __split_vma, every new record is allocated
    (vm_area_dup) before any record changes, so a failure leaves the mm as it was (the
    caller has preallocated the tree).  With ``prot_of``, the inside pieces get
    prot_of(v)."""
    plan = []                                   # (v, [(start, end, prot, inside)])
    for v in vmas:
        if v.end <= start or v.start >= end:
            plan.append((v, None))
            continue
        pieces = []
        if v.start < start:
            pieces.append((v.start, start, v.prot, False))
        pieces.append((max(v.start, start), min(v.end, end),
                       prot_of(v) if prot_of else v.prot, True))
        if v.end > end:
            pieces.append((end, v.end, v.prot, False))
        plan.append((v, pieces))
    new = {}                                    # (v.id, k) -> the k-th piece's new record
    for v, pieces in plan:
        for k, (a, b, p, _) in enumerate(pieces or ()):
            if k == 0:
                continue
            vid = vm_area_alloc(mm, a, b, p, v.anon_vma)
            if vid < 0:
                for nid in new.values():
                    vm_area_free(mm, nid)       # out_free_vma
                return None
            new[v.id, k] = vid
    out, inside = [], []
    for v, pieces in plan:
        if pieces is None:
            out.append(v)
            continue
        for k, (a, b, p, ins) in enumerate(pieces):
            nv = _set_bounds(mm, v, a, b, p) if k == 0 else \
                Vma(new[v.id, k], a, b, p, v.anon_vma)
            out.append(nv)
            if ins:
                inside.append(nv)
    return out, inside


def _unmap_locked(mm, vmas, start, end, unlock=False):
    """do_vmi_munmap: remove [start, end) from the list, zap it and free its tables.
    Returns the new list, or None (ENOMEM) when the split needs too many records.
    With ``unlock`` (munmap(2): v6.12 do_vmi_align_munmap -> vms_complete_munmap_vmas)
    the caller's write lock is downgraded once the VMAs are detached and the new tree is
    published, the zap and free_pgtables run under mmap_lock read, and the lock is
    released before returning, on every path (mmap's MAP_FIXED replacement keeps it
    written: unlock False)."""
    held = mmap_write_unlock if unlock else None
    try:
        if not any(v.start < end and v.end > start for v in vmas):
            return vmas
        if not _split_fits(mm, vmas, start, end):
            return None
        tree = tree_prealloc(mm)
        if tree < 0:
            return None
        for v in vmas:
            if v.start < end and v.end > start:
                vma_start_write(mm, v.id)
                vma_assert_no_readers(mm, v.id, "munmap")
        res = _split(mm, vmas, start, end)
        if res is None:
            tree_prealloc_free(mm, tree)
            return None
        split, inside = res
        keep = [v for v in split if not (v.start >= start and v.end <= end)]
        publish_tree(mm, tree, keep)
        for v in inside:
            vma_mark_detached(mm, v.id)      # still write-locked: no reader sees it yet
        if unlock:
            mmap_write_downgrade(mm)         # faults on the neighbours run from here
            held = mmap_read_unlock
        floor = max([v.end for v in keep if v.end <= start], default=0)
        ceiling = min([v.start for v in keep if v.start >= end], default=MAX_ADDR)
        tlb = MmuGather(mm)
        for v in inside:
            zap_pte_range(mm, tlb, v.start, v.end)
        free_pgtables(mm, tlb, inside[0].start, inside[-1].end, floor, ceiling)
        tlb.finish()
        for v in inside:
            vm_area_free(mm, v.id)
        return keep
    finally:
        if held:
            held(mm)


def _in_window(mm, start, end):
    return mm.g.window_base <= start and end <= mm.g.window_end


def do_munmap(mm, addr, length):
    if addr & (PAGE - 1) or length <= 0:
        return -errno.EINVAL
    end = addr + _page_align(length)
    if not _in_window(mm, addr, end):
        return -errno.EINVAL
    mmap_write_lock(mm)
    vmas = _unmap_locked(mm, vmas_snapshot(mm), addr, end, unlock=True)     # unlocks
    return 0 if vmas is not None else -errno.ENOMEM


def _get_unmapped_area(mm, vmas, length):
    """Top-down search for a gap of ``length`` in the window (arch_get_unmapped_area_topdown)."""
    hi = mm.g.window_end
    for v in reversed(vmas):
        if v.end <= hi and hi - v.end >= length:
            return hi - length
        hi = min(hi, v.start)
    if hi - mm.g.window_base >= length:
        return hi - length
    return -1


def assert_no_gap(mm, vmas, length):
    """get_unmapped_area failed: the window has no gap of ``length`` (the widest gap,
    from the bounds alone, as vm_unmapped_area's gap search guarantees it would find)."""
    lo = [mm.g.window_base] + [v.end for v in vmas]
    hi = [v.start for v in vmas] + [mm.g.window_end]
    gap, at = max((b - a, a) for a, b in zip(lo, hi))
    if gap >= length:
        mm.report("unmapped_area_missed", "mmap", at, length, gap, at)


def do_mmap(mm, addr, length, prot, flags):
    if length <= 0:
        return -errno.EINVAL
    length = _page_align(length)
    if flags != MAP_HINT and addr & (PAGE - 1):
        return -errno.EINVAL
    if flags != MAP_HINT and not _in_window(mm, addr, addr + length):
        return -errno.ENOMEM
    mmap_write_lock(mm)
    try:
        vmas = vmas_snapshot(mm)
        overlap = any(v.start < addr + length and v.end > addr for v in vmas)
        if flags == MAP_FIXED_NOREPLACE and overlap:
            return -errno.EEXIST
        if flags == MAP_FIXED:
            vmas = _unmap_locked(mm, vmas, addr, addr + length)
            if vmas is None:
                return -errno.ENOMEM
        elif flags == MAP_HINT and (overlap or addr & (PAGE - 1)
                                    or not _in_window(mm, addr, addr + length)):
            addr = _get_unmapped_area(mm, vmas, length)
            if addr < 0:
                assert_no_gap(mm, vmas, length)
                return -errno.ENOMEM
        if len(vmas) >= mm.cfg.max_map_count:       # do_mmap's map_count check
            return -errno.ENOMEM
        assert_range_unmapped(mm, addr, addr + length)
        vid = vm_area_alloc(mm, addr, addr + length, prot)
        if vid < 0:
            return -errno.ENOMEM
        tree = tree_prealloc(mm)
        if tree < 0:
            vm_area_free(mm, vid)
            return -errno.ENOMEM
        publish_tree(mm, tree, sorted(vmas + [Vma(vid, addr, addr + length, prot)],
                                      key=lambda v: v.start))
        return addr
    finally:
        mmap_write_unlock(mm)


def _range_args(mm, addr, length):
    """mprotect's and madvise's argument checks: (error or None, end).  An empty range
    succeeds at once (error 0)."""
    if addr & (PAGE - 1) or length < 0:
        return -errno.EINVAL, 0
    if length == 0:
        return 0, 0
    end = addr + _page_align(length)
    if not _in_window(mm, addr, end):
        return -errno.ENOMEM, 0
    return None, end


def do_mprotect(mm, addr, length, prot):
    """Applies to the VMAs from addr up to the first hole, then ENOMEM (as Linux)."""
    err, end = _range_args(mm, addr, length)
    if err is not None:
        return err
    mmap_write_lock(mm)
    try:
        vmas = vmas_snapshot(mm)
        covered, err, nstart = [], 0, addr
        for v in vmas:
            if v.end <= nstart:
                continue
            if v.start > nstart or nstart >= end:
                break
            covered.append(v)
            nstart = v.end
        if nstart < end:
            err = -errno.ENOMEM
            end = min(end, nstart)
        if not covered or end <= addr or not _split_fits(mm, vmas, addr, end):
            return -errno.ENOMEM
        if not mm.bugs.on("mprotect_no_vma_lock"):
            for v in covered:
                vma_start_write(mm, v.id)
        for v in covered:
            assert_leaves_within(mm, max(v.start, addr), min(v.end, end), v.prot)
        if not split_huge_range(mm, addr, end):        # huge pmds first (vma_adjust_trans_huge)
            return -errno.ENOMEM
        tree = tree_prealloc(mm)
        if tree < 0:
            return -errno.ENOMEM
        res = _split(mm, vmas, addr, end, prot_of=lambda v: prot)
        if res is None:
            tree_prealloc_free(mm, tree)
            return -errno.ENOMEM
        publish_tree(mm, tree, res[0])
        if change_protection(mm, addr, end, prot):
            if not mm.bugs.on("mprotect_no_flush"):
                flush_tlb_mm_range(mm, addr, end, False)   # tlb_finish_mmu's flush
            assert_no_access_beyond(mm, addr, end, prot)
        return err
    finally:
        mmap_write_unlock(mm)


def _dontneed(mm, parts):
    """Zap each (start, end) of ``parts`` (sorted) in one mmu_gather, tlb_gather_mmu to
    tlb_finish_mmu; once it returns, the zaps it saw are promised complete."""
    tlb = MmuGather(mm)                                      # tlb_gather_mmu
    for start, end in parts:
        zap_pte_range(mm, tlb, start, end, reclaim=mm.cfg.reclaim == "ptreclaim")
    base = mm.g.window_base
    pages = slice((parts[0][0] - base) >> PAGE_SHIFT,
                  (parts[-1][1] - base) >> PAGE_SHIFT) if parts else slice(0, 0)
    seen = mm.zap_clock[pages] & np.uint64(ZAP_COUNT)          # the zaps it saw
    tlb.finish()                                             # tlb_finish_mmu
    zaps_returned(mm, pages.start, seen)
    assert_zaps_complete(mm, pages.start, seen)


def _dontneed_vma_locked(mm, start, end):
    """--madvise-lock vma (v6.17 madvise_lock: MADVISE_VMA_READ_LOCK, try_vma_read_lock):
    a range inside one VMA is zapped under that VMA's read lock only, so PT_RECLAIM frees
    page tables with mmap_lock not held at all.  None: no such VMA, or the range goes past
    it (the caller takes mmap_lock read)."""
    vma = lock_vma_under_rcu(mm, start)
    if vma is None:
        return None
    try:
        if end > vma.end:
            return None
        _dontneed(mm, [(start, end)])
        return 0
    finally:
        vma_end_read(mm, vma.id)


def do_madvise_dontneed(mm, addr, length):
    """Zap the mapped parts of the range under mmap_lock read (or its VMA's read lock:
    --madvise-lock vma); ENOMEM if any part of it is unmapped (the mapped parts are
    zapped all the same).  Another DONTNEED of the same range may run at the same time:
    tlb_finish_mmu's nested flush (tlb.py (p3)) is what lets this one return only once
    no CPU reaches a frame either zapped; on return, the zaps it saw are promised
    complete (tlb.zaps_returned)."""
    err, end = _range_args(mm, addr, length)
    if err is not None:
        return err
    if mm.cfg.madvise_lock == "vma":
        r = _dontneed_vma_locked(mm, addr, end)
        if r is not None:
            return r
    mmap_read_lock(mm)
    try:
        nstart, hole, parts = addr, False, []
        for v in vmas_snapshot(mm):
            if v.end <= nstart or v.start >= end:
                continue
            if v.start > nstart:
                hole = True
            parts.append((max(v.start, addr), min(v.end, end)))
            nstart = v.end
        if nstart < end:
            hole = True
        _dontneed(mm, parts)
        return -errno.ENOMEM if hole else 0
    finally:
        mmap_read_unlock(mm)
