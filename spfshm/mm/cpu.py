"""What one CPU does: load and store through its TLB (the hardware), faulting on a miss.

access(): (1) one instruction through the TLB (native: an IPI waits for its end)
          (2) on a miss, a hardware walk with IRQs off (it cannot ack a shootdown, and
              IRQs-off is an RCU reader, so no table it reads can be freed under it);
              a present PTE with the right permission fills the TLB, then back to (1)
          (3) otherwise the page fault handler; SIGSEGV and OOM are results, not crashes.
Loads are checked against this CPU's own stores: a value it stored earlier at the same
address that is not its last store there is a lost update (the last store went to a
frame that is no longer mapped there).
"""
from .. import native
from .fault import VM_FAULT_OK, VM_FAULT_OOM, VM_FAULT_RETRY, VM_FAULT_SIGSEGV, \
    do_user_addr_fault
from .frames import VALUE_CPU_SHIFT, encode_value, value_cpu
from .mm_types import FRAME_INUSE, PAGE, POISON
from .pervma import do_pervma_fault
from .spf import do_speculative_page_fault
from .pagetable import GEN_MASK, P, RW, entry_gen, leaf_frame, walk_lockless

OK, SEGV, OOM, VIOLATION = "ok", "segv", "oom", "violation"
MAX_TRIES = 64
_lib = native.lib
HIT, MISS, PERM, STALE = _lib.SPF_TLB_HIT, _lib.SPF_TLB_MISS, _lib.SPF_TLB_PERM, \
    _lib.SPF_TLB_STALE


class Cpu:
    def __init__(self, mm):
        self.mm = mm
        self.out = native.ffi.new("uint64_t[4]")
        self.last_store = {}          # page va -> the last value this CPU stored there
        self.seq = 0
        self.reclaimer_pause = 0
        modes = mm.cfg.fault_modes()
        self.mode = modes[mm.cpu % len(modes)]
        native.set_flush_region(mm.tlb_ptr, mm.tlb_words * 8)

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
            _lib.spf_tlb_fill(mm.tlb_ptr, mm.g.tlb_entries, va, f, g, 1 if e & RW else 0)
            mm.count("tlb_fill")
            return True
        finally:
            _lib.spf_insn_end()
            native.local_irq_enable()

    def access(self, va, write, value=0):
        """Returns (result, loaded value)."""
        mm, out = self.mm, self.out
        for _ in range(MAX_TRIES):
            r = _lib.spf_tlb_access(mm.tlb_ptr, mm.g.tlb_entries, mm.frame_gen_ptr,
                                    mm.frame_payload_ptr, va, write, value, out)
            if r == HIT:
                return OK, out[0]
            if r == STALE:
                mm.report("frame_uaf", "tlb_access", va, out[0], out[1], out[2])
                return VIOLATION, 0
            mm.count("tlb_miss")
            filled = self._fill(va, write)
            if filled is None:
                return VIOLATION, 0
            if filled:
                continue
            fault = self.handle_fault(va, write)
            if fault == VM_FAULT_SIGSEGV:
                return SEGV, 0
            if fault == VM_FAULT_OOM:
                return OOM, 0
            if fault == VM_FAULT_RETRY:
                mm.count("fault_retry")
        mm.report("fault_loop", "fault", va, MAX_TRIES)
        return VIOLATION, 0

    def handle_fault(self, va, write):
        """This CPU's fault path (--fault-mode), falling back to mmap_lock."""
        mm = self.mm
        if self.mode == "spf":
            r = do_speculative_page_fault(mm, va, write)
            if r in (VM_FAULT_OK, VM_FAULT_SIGSEGV):
                mm.count("spf_ok")
                return r
            mm.count("spf_abort_" + r)
        elif self.mode == "pervma":
            r = do_pervma_fault(mm, va, write)
            if r is not None:
                mm.count("pervma_ok")
                return r
            mm.count("pervma_fallback")
        return do_user_addr_fault(mm, va, write)

    def load(self, va):
        res, v = self.access(va, 0)
        if res == OK:
            self.check_value(va, v)
        return res

    def store(self, va):
        self.seq += 1
        v = encode_value(self.mm.cpu, self.seq)
        res, _ = self.access(va, 1, v)
        if res == OK:
            self.last_store[va & ~(PAGE - 1)] = v
        return res

    def check_value(self, va, v):
        if v == 0:
            return                      # fresh or zapped page: zero is always legal
        mm = self.mm
        who = value_cpu(v)
        if v == POISON or not 0 <= who < mm.g.ncpus or v & ((1 << VALUE_CPU_SHIFT) - 1) == 0:
            mm.report("bad_value", "load", va, v)
        elif who == mm.cpu:
            last = self.last_store.get(va & ~(PAGE - 1))
            if last is not None and last != v:
                mm.report("lost_update", "load", va, v, last)
