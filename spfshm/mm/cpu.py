"""What one CPU does: load and store through its TLB (the hardware), faulting on a miss.

Follows x86-64 hardware (the TLB, the page walk, the paging-structure cache), not kernel
code; the page fault it raises enters the kernel's arch/x86/mm/fault.c
do_user_addr_fault as of Linux v6.14 (fault.py, spf.py, pervma.py).

access(): (1) one instruction through the TLB (native: an IPI waits for its end)
          (2) on a miss, a hardware walk with IRQs off (it cannot ack a shootdown, and
              IRQs-off is an RCU reader, so no table it reads can be freed under it);
              a present PTE with the right permission fills the TLB, then back to (1)
          (3) otherwise the page fault handler; SIGSEGV and OOM are results, not crashes.

The load-value oracle: every load is checked, against every CPU's stores.  A page's zap
clock (frames.py) counts its zaps begun (PTE or huge pmd cleared, under the ptl) and
completed (that zap's mmu_gather flush done, or a MADV_DONTNEED that saw it returned).
Zaps are the only way a value disappears: collapse and split copy the page, mprotect
keeps the frame.  A store that began once its page's zaps were complete is not stamped
as racing one: if it lands in a zapped frame anyway, the zap's flush reports it (tlb.py).
  store: (a) read the page's zap clock right before each attempt of (1), and stamp the
             value with it (encode_value, stamp_value)
  load:  (b) read the zap clock right before each attempt of (1)
         (c) a nonzero value must have been stored at this page by a CPU that exists,
             and not before a zap that completed before (b): the flush of a zap begun
             after the store's (a) removed every translation to the frame the store
             reached (else bad_value).  Its begun count is at most (b)'s, unless a zap
             was in progress at (a) (then the store may have gone through a stale TLB
             entry to a frame that a later load still reaches through its own)
         (d) against what this CPU last stored or loaded at the page: a value of its own
             must be that one (an older one came back: lost_update); 0 may hide a nonzero
             one only if a zap began after (a) of its store, or was in progress at (a)
             (else lost_update: the store went to a frame the page lost without a zap)
(a) and (b) come before the attempt, so a translation that attempt uses was filled
before them; a zap's flush completes only after every attempt that used the old frame.
"""
from .. import native
from .fault import VM_FAULT_OK, VM_FAULT_OOM, VM_FAULT_RETRY, VM_FAULT_SIGSEGV, \
    do_user_addr_fault
from .frames import (VALUE_CPU, VALUE_CPU_SHIFT, VALUE_PAGE, VALUE_PAGE_SHIFT,
                     VALUE_RACED, VALUE_STORED, VALUE_ZAP, VALUE_ZAP_SHIFT, ZAP_COUNT,
                     ZAP_DONE_SHIFT, encode_value, stamp_value)
from .mm_types import FRAME_INUSE, PAGE_SHIFT
from .pervma import do_pervma_fault
from .spf import do_speculative_page_fault
from .pagetable import GEN_MASK, P, RW, entry_gen, entry_pfn, leaf_frame, walk_lockless
from .pipe import FRAMES

OK, SEGV, OOM, VIOLATION = "ok", "segv", "oom", "violation"
MAX_TRIES = 64
_lib = native.lib
HIT, MISS, PERM, STALE = _lib.SPF_TLB_HIT, _lib.SPF_TLB_MISS, _lib.SPF_TLB_PERM, \
    _lib.SPF_TLB_STALE


class Cpu:
    def __init__(self, mm):
        self.mm = mm
        self.out = native.ffi.new("uint64_t[4]")
        self.seen = {}          # page -> (value, its zaps begun) this CPU last stored or
                                # loaded there
        self.zap_clock = mm.zap_clock
        self.first_page = mm.g.window_base >> PAGE_SHIFT
        self.seq = 0
        self.reclaimer_pause = 0
        modes = mm.cfg.fault_modes()
        self.mode = modes[mm.cpu % len(modes)]
        native.set_flush_region(mm.tlb_ptr, mm.tlb_words * 8, mm.g.tlb_entries)

    def _fill(self, va, write):
        """(2): True when the TLB now holds a usable translation; None on a violation."""
        mm = self.mm
        native.local_irq_disable()
        _lib.spf_insn_begin()          # the walk and the fill are one hardware step
        try:
            res = walk_lockless(mm, va, "hw_walk", use_pwc=True)
            if res is None:
                return None
            t, e, _ = res
            if t < 0 or not e & P or (write and not e & RW):
                return False
            f = leaf_frame(e, va)          # a huge pmd: the TLB caches its 4 KiB subpage
            g = int(mm.frame_gen[f])
            if (g & GEN_MASK) != entry_gen(e) or mm.frame_meta[f]["state"] != FRAME_INUSE:
                mm.report("frame_uaf", "tlb_fill", va, entry_gen(e), g, f)
                return None
            mm.pipe.observe(FRAMES, entry_pfn(e), "tlb_fill", va)    # a flush waits for us
            _lib.spf_tlb_fill(mm.tlb_ptr, mm.g.tlb_entries, va, f, g, 1 if e & RW else 0)
            mm.count("tlb_fill")
            return True
        finally:
            _lib.spf_insn_end()
            native.local_irq_enable()

    def access(self, va, write, value=0):
        """One load or store of a raw value (diff-kernel): (result, loaded value)."""
        res, v, _ = self._access(va, write, value, -1)
        return res, v

    def _access(self, va, write, value, page):
        """(1)-(3) until the access completes: (result, the value loaded or stored, the
        page's zap clock word read right before the attempt that completed).  With a
        page (>= 0), a store's value is stamped with that word on each attempt ((a))."""
        mm, out, base = self.mm, self.out, value
        zw = 0
        for _ in range(MAX_TRIES):
            if page >= 0:
                zw = self.zap_clock.item(page)
                if write:
                    value = stamp_value(base, zw)
            r = _lib.spf_tlb_access(mm.tlb_ptr, mm.g.tlb_entries, mm.frame_gen_ptr,
                                    mm.frame_payload_ptr, va, write, value, out)
            if r == HIT:
                return OK, value if write else out[0], zw
            if r == STALE:
                mm.report("frame_uaf", "tlb_access", va, out[0], out[1], out[2])
                return VIOLATION, 0, zw
            mm.count("tlb_miss")
            filled = self._fill(va, write)
            if filled is None:
                return VIOLATION, 0, zw
            if filled:
                continue
            fault = self.handle_fault(va, write)
            if fault == VM_FAULT_SIGSEGV:
                return SEGV, 0, zw
            if fault == VM_FAULT_OOM:
                return OOM, 0, zw
            if fault == VM_FAULT_RETRY:
                mm.count("fault_retry")
        mm.report("fault_loop", "fault", va, MAX_TRIES)
        return VIOLATION, 0, zw

    def handle_fault(self, va, write):
        """This CPU's fault path (--fault-mode), falling back to mmap_lock."""
        mm = self.mm
        if self.mode == "spf":
            r = do_speculative_page_fault(mm, va, write)
            if r == VM_FAULT_OK:
                mm.count("spf_ok")
                return r
            mm.count("spf_abort_" + r)
        elif self.mode == "pervma":
            r = do_pervma_fault(mm, va, write)      # counts its vm events
            if r is not None:
                return r
        return do_user_addr_fault(mm, va, write)

    def load(self, va):
        page = (va >> PAGE_SHIFT) - self.first_page
        res, v, zw = self._access(va, 0, 0, page)
        if res == OK:
            self.check_value(page, v, zw)
        return res

    def store(self, va):
        self.seq += 1
        page = (va >> PAGE_SHIFT) - self.first_page
        base = encode_value(self.mm.cpu, page, self.seq)
        res, v, zw = self._access(va, 1, base, page)
        if res == OK:
            self.seen[page] = (v, zw & ZAP_COUNT)
        return res

    def check_value(self, page, v, zw):
        """(c) and (d) for a load of v at page, zw its zap clock word from (b)."""
        mm = self.mm
        begun, done = zw & ZAP_COUNT, zw >> ZAP_DONE_SHIFT
        last = self.seen.get(page)
        if v == 0:
            lost = last is not None and last[0] and begun <= last[1] \
                and not last[0] & VALUE_RACED
            self.seen[page] = (0, begun)
        else:
            who = v >> VALUE_CPU_SHIFT & VALUE_CPU
            ahead = (v >> VALUE_ZAP_SHIFT) - done & VALUE_ZAP   # its begun count past done
            if not v & VALUE_STORED or who >= mm.g.ncpus \
                    or (v >> VALUE_PAGE_SHIFT ^ page) & VALUE_PAGE \
                    or ahead > begun - done and not (v & VALUE_RACED
                                                     and ahead <= VALUE_ZAP // 2) \
                    or who == mm.cpu and last is None:
                mm.report("bad_value", "load", self.va_of(page), v, zw)
                return
            lost = who == mm.cpu and v != last[0]
            self.seen[page] = (v, done + ahead)
        if lost:
            mm.report("lost_update", "load", self.va_of(page), v, last[0], zw)

    def va_of(self, page):
        return (self.first_page + page) << PAGE_SHIFT
