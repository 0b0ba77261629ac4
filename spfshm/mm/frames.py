"""Physical frames: allocation (zeroed), reference counts, freeing with poison.

A huge page (THP) is HPAGE_NR consecutive frames from the huge range; its head carries
the reference and map counts, and every subpage shares the head's state and generation
(they are allocated, bumped and freed together), so a TLB entry for a subpage is checked
exactly as one for a small page.

A frame's generation is bumped every time it is freed; PTEs carry an 11-bit tag of it and
TLB entries the full value, so any use of a frame after it was freed or reused is seen.
Payload: zero after allocation (clear_page), the last stored value otherwise.  A stored
value says who stored it, at which page, and how far the page's zaps had gone when it did
(the load-value oracle: cpu.py).
"""
import numpy as np

from .. import native
from .mm_types import FRAME_FREE, FRAME_INUSE, FRAME_META, HPAGE_NR, POISON
from .pagetable import read_tagged
from .pipe import FRAMES

# A page's zap clock (mm.zap_clock, a word per page of the window): how many zaps of the
# page have begun (its PTE or huge pmd cleared, under that ptl) and, above them, the
# highest begun count whose mmu_gather flush has completed, or that a MADV_DONTNEED of
# the page saw before it returned (its return promises them complete: tlb.py, (p1)-(p4)).
# Every flush is global, so a completed count k means every zap up to k is complete: no
# CPU reaches those frames (a store that lands in one anyway is lost: tlb.py checks).
ZAP_DONE_SHIFT, ZAP_COUNT = 32, (1 << 32) - 1

# A stored value: bit 63 (so never 0 nor POISON), the storer's CPU, whether a zap of the
# page was in progress (begun > completed: the store may land in the frame that zap is
# taking away, through a TLB entry not flushed yet), the low bits of the begun count and
# of the page, and the storer's sequence number.  The zap bits are read right before the
# attempt that completes the store (stamp_value).
VALUE_STORED = 1 << 63
VALUE_CPU_SHIFT, VALUE_CPU = 55, 0xFF
VALUE_RACED = 1 << 54
VALUE_ZAP_SHIFT, VALUE_ZAP = 40, (1 << 14) - 1
VALUE_PAGE_SHIFT, VALUE_PAGE = 28, (1 << 12) - 1
VALUE_SEQ = (1 << 28) - 1


def encode_value(cpu, page, seq):
    """A store's value, to be stamped with the page's zap clock (stamp_value)."""
    return VALUE_STORED | cpu << VALUE_CPU_SHIFT | (page & VALUE_PAGE) << VALUE_PAGE_SHIFT \
        | seq & VALUE_SEQ


def stamp_value(v, zw):
    """v with the zap bits of the page's zap clock word zw."""
    begun = zw & ZAP_COUNT
    return v | (begun & VALUE_ZAP) << VALUE_ZAP_SHIFT \
        | (VALUE_RACED if begun != zw >> ZAP_DONE_SHIFT else 0)


# A frame as an allocation hands it out: one reference, unmapped, no zap (alloc_frame and
# alloc_frames store this whole record)
FRESH_META = np.array((1, 0, FRAME_INUSE, 0), dtype=FRAME_META)


def _hand_out(mm, f):
    """Frame(s) f (an index or an array of them) made fresh and zeroed, once
    check_poison_mem has looked at them."""
    check_poison_mem(mm, f)
    mm.frame_meta[f] = FRESH_META
    mm.frame_payload[f] = 0
    mm.pipe.unretire(FRAMES, f)


def check_poison_mem(mm, f):
    """CONFIG_PAGE_POISONING's check at allocation (mm/page_poison.c): a free frame holds
    the poison free_frame wrote before it gave the frame back (mm_init poisons them all
    first); anything else was written while it was free: a store through a translation
    that outlived the free, or a free that poisoned after the frame could be handed out
    again ("pagealloc: memory corruption").  f: an index or an array of them."""
    if np.ndim(f) == 0:
        if mm.frame_payload[f] != POISON:
            mm.report("poison_overwritten", "alloc", 0, int(f), int(mm.frame_payload[f]))
        return
    for x in np.asarray(f)[mm.frame_payload[f] != POISON].tolist()[:4]:
        mm.report("poison_overwritten", "alloc", 0, int(x), int(mm.frame_payload[x]))


def alloc_frame(mm, may_fail=False):
    """A zeroed frame with refcount 1 and no mapping, or -1: memory is exhausted, or
    (``may_fail``: a fault's allocation and memcg charge) it fails at random
    (FAULT_ALLOC_FAIL, seeded per CPU)."""
    f = -1 if may_fail and mm.fault_alloc_fails() else mm.frames.alloc(mm.cpu)
    if f < 0:
        return -1
    _hand_out(mm, f)
    return f


def alloc_frames(mm, n):
    """n zeroed frames (uint64 array) with refcount 1 and no mapping, taken in one batch
    (a huge pmd's split), or None: memory is exhausted, or it fails at random
    (SPLIT_ALLOC_FAIL, seeded per CPU)."""
    fs = None if mm.split_alloc_fails() else mm.frames.alloc_many(mm.cpu, n)
    if fs is None:
        return None
    _hand_out(mm, fs)
    return fs.astype(np.uint64)


def frame_pages(mm, frames):
    """The frames mappings of ``frames`` cover (a huge page's: its subpages)."""
    small = mm.g.nsmall
    if not any(f >= small for f in frames):
        return frames
    return [p for f in frames for p in (range(f, f + HPAGE_NR) if f >= small else (f,))]


def alloc_huge_frame(mm, may_fail=False):
    """A zeroed huge page (its head frame) with refcount 1 and no mapping, or -1: the
    pool is empty, or (``may_fail``: khugepaged's GFP_TRANSHUGE allocation) it fails at
    random, as under fragmentation (THP_ALLOC_FAIL, seeded per CPU)."""
    k = -1 if may_fail and mm.thp_alloc_fails() else mm.hpages.alloc(mm.cpu)
    if k < 0:
        return -1
    f = mm.g.nsmall + k * HPAGE_NR
    sub = mm.frame_meta[f:f + HPAGE_NR]
    sub["state"] = FRAME_INUSE
    sub["refcount"] = 0
    sub["mapcount"] = 0
    sub["zap"] = 0
    mm.frame_meta[f]["refcount"] = 1
    check_poison_mem(mm, np.arange(f, f + HPAGE_NR))
    mm.frame_payload[f:f + HPAGE_NR] = 0
    mm.pipe.unretire(FRAMES, f)
    return f


def tlb_snapshot(mm):
    """Every CPU's TLB entries as (valid, data, gen, va), read while they change (an entry
    torn by a fill or a flush is read again until it holds still: pagetable.read_tagged).
    A dead CPU's TLB went with it."""
    valid, ents = read_tagged(mm, mm.tlbs)
    return valid, ents[:, :, 1], ents[:, :, 2], ents[:, :, 3]


def assert_no_translation(mm, frames):
    """KASAN-style assertion before frames are freed (free_frame: every free; and the
    mmu_gather's flush, for a frame a pin keeps): no CPU's TLB may still translate to
    them (this incarnation).  Exact under a correct protocol: the PTEs were cleared
    before the flush, and a walker that read one had IRQs off, so its fill was flushed."""
    if not frames:
        return
    valid, data, gen, va = tlb_snapshot(mm)
    pfn = (data >> 12).astype(np.int64)
    hit = valid & np.isin(pfn, frames)
    if hit.any():
        hit &= gen == mm.frame_gen[np.where(hit, pfn, 0)]
        for cpu, slot in zip(*np.nonzero(hit)):
            f = int(pfn[cpu, slot])
            mm.report("frame_uaf", "zap", int(va[cpu, slot]), int(gen[cpu, slot]),
                      int(mm.frame_gen[f]), f)


def put_page(mm, f):
    """Drop a reference; the last one frees the frame.  Dropping one the frame no longer
    has (its refcount was zero: the last one was dropped before) is a double free."""
    old = native.fetch_add(mm.frame_ref_ptr + f * mm.frame_stride, 2**64 - 1)
    if old == 1:
        free_frame(mm, f)
    elif old == 0 or old >= 2**63:
        mm.report("double_free", "put_page", 0, f, int(mm.frame_gen[f]))


def free_frame(mm, f):
    """Generation first, then poison (a reader of the poison also sees the new
    generation: the smp_wmb pairs with spf_tlb_access's acquire load of the gen).
    Freeing a free frame is reported (KASAN's double-free) and leaves the pool as it is;
    so is freeing one still counted as mapped (free_pages_prepare's bad_page) or still
    translated by a TLB (assert_no_translation)."""
    if mm.frame_meta[f]["state"] == FRAME_FREE:
        mm.report("double_free", "free_frame", 0, f, int(mm.frame_gen[f]))
        return
    if mm.frame_meta[f]["mapcount"]:             # free_page_is_bad: "nonzero mapcount"
        mm.report("bad_page", "free_frame", 0, f, int(mm.frame_meta[f]["mapcount"]))
    n = HPAGE_NR if f >= mm.g.nsmall else 1
    # A racy look first (an entry filled meanwhile for a freed frame is the fill's to
    # report): nothing cached for these pfns, no need for the snapshot
    if ((mm.tlbs[:, :, 1] >> np.uint64(12)) - np.uint64(f) < np.uint64(n)).any():
        assert_no_translation(mm, list(range(f, f + n)))
    if f >= mm.g.nsmall:                         # a huge page
        mm.frame_meta[f:f + HPAGE_NR]["state"] = FRAME_FREE
        mm.frame_gen[f:f + HPAGE_NR] += 1        # nobody else writes a free page's gens
        native.smp_wmb()
        mm.frame_payload[f:f + HPAGE_NR] = POISON
        mm.hpages.free(mm.cpu, (f - mm.g.nsmall) // HPAGE_NR)
        mm.count("frames_freed", HPAGE_NR)
        return
    mm.frame_meta[f]["state"] = FRAME_FREE
    native.fetch_add(mm.frame_gen_ptr + f, 1)
    native.smp_wmb()
    mm.frame_payload[f] = POISON
    mm.frames.free(mm.cpu, f)
    mm.count("frames_freed")
