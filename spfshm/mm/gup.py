"""gup_fast (mm/gup.c gup_fast, lockless_pages_from_mm before v6.10): pin pages without
mmap_lock.

Follows Linux v6.14 mm/gup.c: gup_fast -> gup_fast_pte_range (its pmd and PTE re-check
after the grab), named so since v6.10 ("mm/gup: consistently name GUP-fast functions").

The two-sided protocol, as mm/gup.c states it:
  gup_fast: (1) IRQs off, whatever the other walkers use  (2) walk to the PTE (or a
            huge pmd) locklessly  (3) take a reference if the page still has one (try_grab:
            refcount > 0; a huge page's reference is its head's)
            (4) re-check the pmd and the PTE are unchanged, else drop the reference
            (5) IRQs on
  zap:      (a) clear the PTE  (b) flush TLBs  (c) drop the mapping's reference
  collapse: (a') clear the pmd  (b) flush  (c') fail if a page has a reference besides
            its mapping (a pin), else copy and drop them (khugepaged.py)
If (3) raced with (a)-(c), (4) sees the PTE changed; if it raced with (a'), (4) sees the
pmd changed (70cbc3cc78a9, "fix the fast GUP race against THP collapse"): the pin never
outlives the check on a page that the address no longer maps.  So a frame that (4)
accepts was still mapped when (4) read the PTE: its mapcount and pipe age, read between
(3) and (4), are checked once (4) passed, whatever protects the walk (a kept pin on a
frame that zap had already unmapped, mapcount 0, is ``gup_unmapped``; one whose
retirement a sync had already waited out is ``pipe_age``).  Without (4) (bug
``gup_fast_no_recheck``) a frame that a zap has just unmapped, or one freed and reused by
someone else, can be pinned.
The holder keeps its pins for a while (DMA), then checks that each pinned frame is the
incarnation it pinned (a pinned frame is never freed under its holder) and unpins.
"""
from .. import native
from .frames import put_page
from .lockdep import lockdep_assert_walk_protected
from .mm_types import PAGE, PMD, PTE
from .pagetable import (GEN_MASK, P, PS, check_table, entry_gen, entry_pfn, index,
                        walk_lockless)
from .pipe import FRAMES

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


def _walk(mm, va):
    """(2): (pmd table, pmd entry, PTE table or -1, leaf entry), or None."""
    lockdep_assert_walk_protected(mm, "gup", va)
    res = walk_lockless(mm, va, "gup", stop=PMD)
    if res is None or res[0] < 0 or not res[1] & P:
        return None
    pmd_t, pmd_e, _ = res
    if pmd_e & PS:
        return pmd_t, pmd_e, -1, pmd_e
    t = entry_pfn(pmd_e)
    e = int(mm.pt[t, index(va, PTE)])
    mm.walk_point()                      # a shared read of the walk, relied on below
    if not check_table(mm, t, entry_gen(pmd_e), PTE, "gup", va) or not e & P:
        return None
    return pmd_t, pmd_e, t, e


def gup_fast(mm, start, npages):
    """Pin up to npages present pages from start; returns [(va, page, gen tag)].
    (1) is local_irq_save in every configuration (v6.12 mm/gup.c gup_fast: "we also want
    to block IPIs that come from callers of tlb_remove_table_sync_one"): IRQs off holds
    off the flush IPI that IPI table freeing waits for, and is an RCU reader for RCU
    table freeing, so --walk does not apply to gup_fast."""
    pinned = []
    native.local_irq_disable()                                                  # (1)
    try:
        for k in range(min(npages, GUP_MAX)):
            va = start + k * PAGE
            res = _walk(mm, va)
            if res is None:
                break
            pmd_t, pmd_e, t, e = res
            f = entry_pfn(e)                   # a huge page's head holds its reference
            mm.delay("gup_pin")
            if f >= mm.g.nframes or not try_grab(mm, f):                          # (3)
                break
            age = mm.pipe.age(FRAMES, f)     # validated by (4) with the PTE: see pipe.py
            mapped = int(mm.frame_meta[f]["mapcount"]) > 0       # the oracle's, likewise
            native.smp_rmb()                 # the stamp before the re-check's reads
            if not mm.bugs.on("gup_fast_no_recheck") and (
                    int(mm.pt[pmd_t, index(va, PMD)]) != pmd_e
                    or (t >= 0 and int(mm.pt[t, index(va, PTE)]) != e)):         # (4)
                put_page(mm, f)
                break
            mm.pipe.record(FRAMES, f, "gup", va, age)        # the pin is ours from here
            if not mapped:
                # zap's (a) cleared the PTE before it dropped the mapcount, and that was
                # before our read: a re-check after that read cannot have passed
                mm.report("gup_unmapped", "gup", va, f, entry_gen(e))
            pinned.append((va, f, entry_gen(e)))
    finally:
        native.local_irq_enable()                                               # (5)
    return pinned


def gup_hold_and_release(mm, pinned):
    """The holder: the pins outlive a while (DMA); each pinned frame must still be the
    incarnation that was pinned; then unpin."""
    mm.delay("gup_hold")
    for va, f, tag in pinned:
        if (int(mm.frame_gen[f]) & GEN_MASK) != tag:
            mm.report("frame_uaf", "gup", va, tag, int(mm.frame_gen[f]), f)
        put_page(mm, f)
