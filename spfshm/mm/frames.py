"""Physical frames: allocation (zeroed), reference counts, freeing with poison.

A huge page (THP) is HPAGE_NR consecutive frames from the huge range; its head carries
the reference and map counts, and every subpage shares the head's state and generation
(they are allocated, bumped and freed together), so a TLB entry for a subpage is checked
exactly as one for a small page.

A frame's generation is bumped every time it is freed; PTEs carry an 11-bit tag of it and
TLB entries the full value, so any use of a frame after it was freed or reused is seen.
Payload: zero after allocation (clear_page), the last stored value otherwise.  A value
encodes who stored it: ((cpu + 1) << 40) | sequence.
"""
from .. import native
from .mm_types import FRAME_FREE, FRAME_INUSE, HPAGE_NR, POISON
from .pipe import FRAMES

VALUE_CPU_SHIFT = 40


def encode_value(cpu, seq):
    return ((cpu + 1) << VALUE_CPU_SHIFT) | seq


def value_cpu(v):
    return (v >> VALUE_CPU_SHIFT) - 1


def alloc_frame(mm):
    """A zeroed frame with refcount 1 and no mapping, or -1 when memory is exhausted."""
    f = mm.frames.alloc(mm.cpu)
    if f < 0:
        return -1
    meta = mm.frame_meta[f]
    meta["state"] = FRAME_INUSE
    meta["refcount"] = 1
    meta["mapcount"] = 0
    mm.frame_payload[f] = 0
    mm.pipe.unretire(FRAMES, f)
    return f


def frame_pages(mm, frames):
    """The frames mappings of ``frames`` cover (a huge page's: its subpages)."""
    small = mm.g.nsmall
    if not any(f >= small for f in frames):
        return frames
    return [p for f in frames for p in (range(f, f + HPAGE_NR) if f >= small else (f,))]


def alloc_huge_frame(mm):
    """A zeroed huge page (its head frame) with refcount 1 and no mapping, or -1."""
    k = mm.hpages.alloc(mm.cpu)
    if k < 0:
        return -1
    f = mm.g.nsmall + k * HPAGE_NR
    sub = mm.frame_meta[f:f + HPAGE_NR]
    sub["state"] = FRAME_INUSE
    sub["refcount"] = 0
    sub["mapcount"] = 0
    mm.frame_meta[f]["refcount"] = 1
    mm.frame_payload[f:f + HPAGE_NR] = 0
    mm.pipe.unretire(FRAMES, f)
    return f


def put_page(mm, f):
    """Drop a reference; the last one frees the frame."""
    if native.fetch_add(mm.frame_ref_ptr + f * mm.frame_stride, 2**64 - 1) == 1:
        free_frame(mm, f)


def free_frame(mm, f):
    """Generation first, then poison (a reader of the poison also sees the new
    generation: the smp_wmb pairs with spf_tlb_access's acquire load of the gen)."""
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
