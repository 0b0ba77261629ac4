"""gup_fast (mm/gup.c lockless_pages_from_mm): pin pages without mmap_lock.

The two-sided protocol, as mm/gup.c states it:
  gup_fast: (1) IRQs off (or the --walk protection)  (2) walk to the PTE locklessly
            (3) take a reference if the frame still has one (try_grab: refcount > 0)
            (4) re-check the PTE is unchanged, else drop the reference (5) IRQs on
  zap:      (a) clear the PTE  (b) flush TLBs  (c) drop the mapping's reference
If (3) raced with (a)-(c), (4) sees the PTE changed: the pin never outlives the check on a
frame that the address no longer maps.  Without (4) (bug ``gup_fast_no_recheck``) a
frame freed and reused by someone else can be pinned: where the flush does not wait for
IRQs-off sections (--tlb-flush no-ipi) that happens.
The holder keeps its pins for a while (DMA), then checks that each pinned frame is the
incarnation it pinned (a pinned frame is never freed under its holder) and unpins.
"""
from .. import native
from .frames import put_page
from .mm_types import PAGE, PTE
from .pagetable import (GEN_MASK, P, entry_gen, entry_pfn, index, lockless_walk_begin,
                        lockless_walk_end, walk_lockless)

GUP_MAX = 16


def try_grab(mm, f):
    """Take a reference unless the frame has none left (folio_try_get)."""
    p = mm.frame_ref_ptr + f * mm.frame_stride
    r = native.load_relaxed(p)
    while r:
        seen = native.cmpxchg(p, r, r + 1)
        if seen == r:
            return True
        r = seen
    return False


def gup_fast(mm, start, npages):
    """Pin up to npages present pages from start; returns [(va, frame, gen tag)]."""
    pinned = []
    lockless_walk_begin(mm)                                                     # (1)
    try:
        for k in range(min(npages, GUP_MAX)):
            va = start + k * PAGE
            res = walk_lockless(mm, va, "gup")                                  # (2)
            if res is None or res[0] < 0 or not res[1] & P:
                break
            t, e, _ = res
            f = entry_pfn(e)
            mm.delay("gup_pin")
            if f >= mm.g.nframes or not try_grab(mm, f):                          # (3)
                break
            if not mm.bugs.on("gup_fast_no_recheck") \
                    and int(mm.pt[t, index(va, PTE)]) != e:                      # (4)
                put_page(mm, f)
                break
            pinned.append((va, f, entry_gen(e)))
    finally:
        lockless_walk_end(mm)                                                   # (5)
    return pinned


def gup_hold_and_release(mm, pinned):
    """The holder: the pins outlive a while (DMA); each pinned frame must still be the
    incarnation that was pinned; then unpin."""
    mm.delay("gup_hold")
    for va, f, tag in pinned:
        if (int(mm.frame_gen[f]) & GEN_MASK) != tag:
            mm.report("frame_uaf", "gup", va, tag, int(mm.frame_gen[f]), f)
        put_page(mm, f)
