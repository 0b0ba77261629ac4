"""Physical frames: allocation (zeroed), reference counts, freeing with poison.

A frame's generation is bumped every time it is freed; PTEs carry an 11-bit tag of it and
TLB entries the full value, so any use of a frame after it was freed or reused is seen.
Payload: zero after allocation (clear_page), the last stored value otherwise.  A value
encodes who stored it: ((cpu + 1) << 40) | sequence.
"""
from .. import native
from .mm_types import FRAME_FREE, FRAME_INUSE, POISON

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
    return f


def put_page(mm, f):
    """Drop a reference; the last one frees the frame."""
    if native.fetch_add(mm.frame_ref_ptr + f * mm.frame_stride, 2**64 - 1) == 1:
        free_frame(mm, f)


def free_frame(mm, f):
    """Generation first, then poison (a reader of the poison also sees the new
    generation: the smp_wmb pairs with spf_tlb_access's acquire load of the gen)."""
    mm.frame_meta[f]["state"] = FRAME_FREE
    native.fetch_add(mm.frame_gen_ptr + f, 1)
    native.smp_wmb()
    mm.frame_payload[f] = POISON
    mm.frames.free(mm.cpu, f)
    mm.count("frames_freed")
