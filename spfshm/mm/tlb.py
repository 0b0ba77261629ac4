"""TLB shootdown and the mmu_gather (include/asm-generic/tlb.h, mm/mmu_gather.c).

Follows Linux v6.14: include/asm-generic/tlb.h and mm/mmu_gather.c (tlb_gather_mmu,
__tlb_remove_page, tlb_flush_mmu_tlbonly, tlb_flush_mmu, tlb_finish_mmu, tlb_remove_table),
arch/x86/mm/tlb.c flush_tlb_mm_range (IPIs, every ack awaited), mm/pgtable-generic.c
pte_free_defer (v6.6).  --table-free ipi is x86 bare metal's table freeing after the
flush IPIs until 718b13861d22 (v6.14, with PT_RECLAIM) and a37259732a7d (v6.15) made it
RCU; --table-free rcu is MMU_GATHER_RCU_TABLE_FREE's grace period.

Teardown protocol (zap vs. a CPU using a translation), stated once:
  zapper: (1) clear the PTE under the ptl, gather the frame
          (2) flush every CPU's TLB by IPI and wait for all acks
          (3) only then drop the frames' references (free)
  CPU:    a load/store is one instruction; the IPI is taken between instructions, and the
          flush empties the TLB, so after (2) no CPU can reach the frame.
Breaking (2) before (3) is CVE-2018-18281's class (bug ``free_frame_before_flush``).

Tables removed from the tree go through ``tlb_remove_table``: with ``--table-free ipi``
they are freed after the flush IPI of (2) (a CPU walking with IRQs off cannot ack, so it
has left the table); with ``--table-free rcu`` after a grace period (call_rcu).  Note the
IPI scheme "isn't an RCU grace period": it protects only walkers that disable IRQs.
"""
import math

import numpy as np

from .. import native
from .frames import ZAP_COUNT, ZAP_DONE_SHIFT, frame_pages, put_page
from .lockdep import Deadlock, check_ipi_wait
from .mm_types import IPI_HIST_BUCKETS, PAGE_SHIFT, PROT_NONE, PROT_WRITE
from .pagetable import free_table_now, mark_pending, read_tagged
from .pipe import CLOCK_IPI, CLOCK_RCU, FRAMES, TABLES


IPI_SLICE_S = 0.05


def flush_tlb_remote(mm):
    """--tlb-flush no-ipi: invalidate every CPU's TLB without interrupting it (broadcast
    TLBI + DSB): wait for the instructions in flight (a walk that read an old PTE has
    filled its TLB), clear every TLB, wait again (a user of an old entry has finished).
    An IRQs-off section is not waited for: that is what this mode is about.  It is a
    sync of the pipe's IPI clock all the same (pipe.py)."""
    ticket = mm.pipe.ipi_sync_begin()
    wait = native.lib.spf_tlb_remote_wait
    wait(mm.all_cpus.words, mm.g.ncpus)
    # Only the valid words (TLB tags, PWC keys): each is one store, so an entry a CPU is
    # filling at this moment is either whole or invalid, never torn.
    mm.tlbs[:, :, 0] = 0
    mm.pwcs[:, :, 0] = 0
    wait(mm.all_cpus.words, mm.g.ncpus)
    mm.pipe.ipi_sync_done(ticket)
    mm.count("tlb_flush")


def flush_tlb_all(mm):
    """Flush every CPU's TLB (this one's locally) and wait for the acks (step (2)).
    A target silent past a slice is checked for a deadlock against us; past the IPI
    timeout the wait itself is reported (both raise Deadlock: freeing now would be a
    use-after-free)."""
    if mm.cfg.tlb_flush == "no-ipi":
        return flush_tlb_remote(mm)
    t0 = native.now_ns()
    _ipi_all(mm, native.IPI_FLUSH_TLB, t0)
    us = (native.now_ns() - t0) / 1000.0
    mm.ipi_hist[min(IPI_HIST_BUCKETS - 1, int(4 * math.log2(us + 1)))] += 1
    mm.count("ipi_sent", mm.g.ncpus - 1)
    mm.count("tlb_flush")


def _ipi_all(mm, work, t0):
    """Send work to every CPU and wait for every ack (a sync of the pipe's IPI clock)."""
    ticket = mm.pipe.ipi_sync_begin()
    while True:
        try:
            native.ipi_sync(mm.all_cpus, work, timeout_s=IPI_SLICE_S)
            break
        except native.IPIError as e:
            waited_ms = (native.now_ns() - t0) // 1_000_000
            if e.code == native.lib.SPF_IPI_ERR_DEAD:
                native.cpu_mark_dead(e.cpu)     # a dead CPU holds no translations
                continue
            if e.code != native.lib.SPF_IPI_ERR_TIMEOUT:
                raise
            check_ipi_wait(mm, e.cpu, waited_ms)
            if waited_ms > 1000 * mm.cfg.ipi_timeout:
                mm.report("deadlock", "ipi_timeout", 0, waited_ms, e.cpu)
                raise Deadlock()
    mm.pipe.ipi_sync_done(ticket)


def tlb_remove_table_sync_one(mm):
    """mm/mmu_gather.c: wait until no lockless walker is still inside a table just
    unlinked, freeing nothing (khugepaged, before it deposits the table it replaced).
    The kernel's is an IPI (smp_call_function), enough for its IRQs-off walker
    (gup_fast) whatever the TLB flush does; the model's RCU walkers (--walk rcu: SPF,
    gup_fast) are waited for by a grace period instead."""
    if mm.walk_rcu:
        native.synchronize_rcu(mm.rcu.stall_timeout_s, busted=mm.rcu.busted)
    else:
        _ipi_all(mm, native.IPI_SYNC, native.now_ns())


def tlb_snapshot(mm):
    """Every CPU's TLB entries as (valid, data, gen, va), read while they change (an entry
    torn by a fill or a flush is read again until it holds still: pagetable.read_tagged).
    A dead CPU's TLB went with it."""
    valid, ents = read_tagged(mm, mm.tlbs)
    return valid, ents[:, :, 1], ents[:, :, 2], ents[:, :, 3]


def assert_no_translation(mm, frames):
    """KASAN-style assertion before frames are freed: no CPU's TLB may still translate to
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


def assert_no_access_beyond(mm, start, end, prot):
    """After a permission downgrade's flush: no CPU may still hold a translation in
    [start, end) that grants more than ``prot``: none at all under PROT_NONE, none
    writable under read-only (a refill after the flush reads the new PTE)."""
    valid, data, _, va = tlb_snapshot(mm)
    writable = data & 2 == 2
    beyond = True if prot == PROT_NONE else writable & (not prot & PROT_WRITE)
    hit = valid & beyond & (va >= start) & (va < end)
    for cpu, slot in zip(*np.nonzero(hit)):
        mm.report("stale_tlb", "mprotect", int(va[cpu, slot]), int(data[cpu, slot] >> 12),
                  int(writable[cpu, slot]), int(cpu))


def pte_free_defer(mm, t):
    """Free an unlinked table after a grace period (its pipe stamp is taken just before
    the grace period starts: see pipe.py)."""
    mm.pipe.retire(TABLES, t, CLOCK_RCU)
    mm.rcu.call_rcu(free_table_now, mm, t)
    mm.count("call_rcu")


class MmuGather:
    """Frames and tables unlinked by a teardown, held until it is safe to free them, and
    the pages whose contents the teardown takes away (their zap clocks: frames.py)."""

    __slots__ = ("mm", "frames", "tables", "need_flush", "unflushed", "stamped", "zapped")

    def __init__(self, mm):
        self.mm = mm
        self.frames = []
        self.tables = []
        self.need_flush = False
        self.unflushed = 0          # pages gathered since the last flush
        self.stamped = 0            # frames given their pipe stamp
        self.zapped = []            # (page, its zaps begun) completed by the next flush

    def remove_page(self, f):
        """tlb_remove_page: the PTE is cleared; free the frame after the flush."""
        self.need_flush = True
        self.unflushed += 1
        mm = self.mm
        if mm.bugs.on("free_frame_before_flush"):
            assert_no_translation(mm, frame_pages(mm, [f]))
            put_page(mm, f)
        else:
            self.frames.append(f)

    def zap_pages(self, va, n=1):
        """The PTE (or huge pmd) of n pages from va was just cleared, its ptl held: their
        contents go with the frame.  Each page's zap clock counts the zap as begun now,
        and as completed once this gather's flush is done (a store meanwhile may still
        land in the old frame through a TLB entry the flush has not reached)."""
        mm = self.mm
        self.need_flush = True
        first = (va - mm.g.window_base) >> PAGE_SHIFT
        for p in range(first, first + n):
            begun = (native.fetch_add(mm.zap_clock_ptr + p, 1) & ZAP_COUNT) + 1
            self.zapped.append((p, begun))

    def _zaps_completed(self):
        """After the flush: raise each zapped page's completed count to what it had
        begun (an atomic max: zappers of one page complete in any order)."""
        ptr = self.mm.zap_clock_ptr
        for p, begun in self.zapped:
            w = native.load_relaxed(ptr + p)
            while w >> ZAP_DONE_SHIFT < begun:
                seen = native.cmpxchg(ptr + p, w, w & ZAP_COUNT | begun << ZAP_DONE_SHIFT)
                if seen == w:
                    break
                w = seen
        self.zapped = []

    def remove_table(self, t):
        """tlb_remove_table: the parent entry is cleared; freed after the flush, and with
        --table-free rcu after a grace period on top (tlb_table_flush)."""
        mm = self.mm
        self.need_flush = True
        if mm.bugs.on("free_table_no_sync"):
            free_table_now(mm, t)
        else:
            mark_pending(mm, t)
            if mm.cfg.table_free == "ipi":
                mm.pipe.retire(TABLES, t, CLOCK_IPI)
            self.tables.append(t)

    def flush_tlbonly(self):
        if self.need_flush:
            mm = self.mm
            if len(self.frames) > self.stamped:
                # Retired since their PTEs were cleared; stamped before the flush's ticket
                mm.pipe.retire(FRAMES, self.frames[self.stamped:], CLOCK_IPI)
                self.stamped = len(self.frames)
            flush_tlb_all(mm)
            if self.zapped:
                self._zaps_completed()
            self.need_flush = False
            self.unflushed = 0

    def flush(self):
        """tlb_flush_mmu: flush, then free what the flush made unreachable."""
        self.flush_tlbonly()
        mm = self.mm
        assert_no_translation(mm, frame_pages(mm, self.frames))
        for f in self.frames:
            put_page(mm, f)
        for t in self.tables:
            if mm.cfg.table_free == "rcu":
                pte_free_defer(mm, t)
            else:
                free_table_now(mm, t)
        self.frames = []
        self.tables = []
        self.stamped = 0

    finish = flush       # tlb_finish_mmu
