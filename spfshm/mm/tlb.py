"""TLB shootdown and the mmu_gather (include/asm-generic/tlb.h, mm/mmu_gather.c).

Follows Linux v6.14: include/asm-generic/tlb.h and mm/mmu_gather.c (tlb_gather_mmu,
__tlb_remove_page, tlb_flush_mmu_tlbonly, tlb_flush_mmu, tlb_finish_mmu, tlb_remove_table),
arch/x86/mm/tlb.c flush_tlb_mm_range (IPIs, every ack awaited), mm/pgtable-generic.c
pte_free_defer (v6.6).  --table-free ipi is x86 bare metal's table freeing after the
flush IPIs until 718b13861d22 (v6.14, with PT_RECLAIM) and a37259732a7d (v6.15) made it
RCU; --table-free rcu is MMU_GATHER_RCU_TABLE_FREE's batch and grace period, with its
fallback (tlb_remove_table_one).

Teardown protocol (zap vs. a CPU using a translation), stated once:
  zapper: (1) clear the PTE under the ptl, gather the frame and widen the gather's range
              over its page (tlb_remove_tlb_entry -> __tlb_adjust_range)
          (2) flush the range from every CPU's TLB by IPI and wait for all acks
          (3) only then drop the frames' references (free)
  CPU:    a load/store is one instruction; the IPI is taken between instructions, and the
          flush removes every entry in the range, so after (2) no CPU can reach the frame.
Breaking (2) before (3) is CVE-2018-18281's class (bug ``free_frame_before_flush``); a
range that misses a page of (1) is bug ``flush_range_short``.

Tables removed from the tree go through ``tlb_remove_table``, which widens the range over
a page of the table's span and sets ``freed_tables`` (pte_free_tlb): with ``--table-free
ipi`` they are freed after the flush IPI of (2) (a CPU walking with IRQs off cannot ack,
so it has left the table); with ``--table-free rcu`` a batch after a grace period
(tlb_table_flush), or, when no batch page can be had, at once after an IPI sync
(tlb_remove_table_one; call_rcu with CONFIG_PT_RECLAIM); with ``rcu-always`` after a
grace period every time.  Note the IPI scheme "isn't an RCU grace period": it protects
only walkers that disable IRQs.

What a flush removes (x86, arch/x86/mm/tlb.c and asm/tlb.h as of v6.15), stated once:
  flush_tlb_mm_range(start, end, freed_tables): more than tlb_single_page_flush_ceiling
  (33) pages is a full flush.  By IPI (native_flush_tlb_multi -> flush_tlb_func) each CPU
  runs INVLPG per page, which also invalidates every paging-structure-cache entry of the
  current PCID, or a CR3 write: the paging-structure caches go either way, and
  ``freed_tables`` only decides whether CPUs in lazy TLB mode are interrupted too (this
  model's CPUs are never lazy, so the IPI carries the range alone).  Without an IPI
  (--tlb-flush no-ipi: INVLPGB, broadcast_tlb_flush; arm64's TLBI, __flush_tlb_range with
  last_level = !freed_tables) a ranged flush keeps the paging-structure caches unless
  ``freed_tables`` (INVLPGB_FINAL_ONLY otherwise), and a full flush drops everything.
  flush_tlb_range (pmdp_invalidate, pmdp_collapse_flush) passes freed_tables=true since
  3ef938c35035 ("x86/mm: Fix flush_tlb_range() when used for zapping normal PMDs").
A gather that lost ``freed_tables`` (bug ``flush_no_freed_tables``) leaves a stale
paging-structure-cache entry to a table it frees: a walk through a freed table.

Concurrent zappers (mm->tlb_flush_pending; 99baac21e458 "mm: fix MADV_[FREE|DONTNEED] TLB
flush miss problem"), stated once.  Two MADV_DONTNEEDs of one range under mmap_lock read:
the second finds the PTEs the first cleared none, so it gathers nothing and has nothing
of its own to flush; yet it must not return while a CPU can still store through a TLB
entry for a frame the first one zapped (the store would be lost with the frame).
  every zapper (an MmuGather, any caller):
  (p1) tlb_gather_mmu: inc_tlb_flush_pending (atomic), before it takes any ptl
  (p2) zap_pte_range: clear the present PTEs under the ptl; a PTE another zapper cleared
       is none, nothing is gathered (need_flush may stay off).  The ptl's release and
       acquire order (p1) of a zapper before every PTE clear another zapper sees
  (p3) tlb_finish_mmu: mm_tlb_flush_nested (the count > 1, read after (p2)): a zapper
       whose clear we saw and that has not done (p4) yet is counted (partner: its (p1),
       through the ptl of (p2)); then flush even with need_flush off: the whole mm,
       with freed_tables (the kernel: fullmm or need_flush_all, and freed_tables)
  (p4) tlb_flush_mmu, then dec_tlb_flush_pending: after the flush (partner: a later
       (p3) that no longer counts us may rely on our flush being done)
So a zapper returns only after a flush that began after every PTE clear it saw, or
after that clear's own flush completed.  Without (p3)'s forced flush (bug
``dontneed_no_flush_pending``) the second DONTNEED, whose own flush covers only the
range it cleared (tlb->start..end), returns while the first has not flushed.
Followed: mm/mmu_gather.c at torvalds/linux 06d0742985 (fullmm = 1 in (p3); other
versions set need_flush_all instead: the same whole-mm flush) and
include/linux/mm_types.h.

The oracles: a MADV_DONTNEED that returned must have left no TLB entry for a frame one
of the zaps it saw took away (``assert_zaps_complete``, stale_tlb@madvise).  It also
raises its pages' zap clocks to the zaps it saw (``zaps_returned``: it promises them
complete, frames.py), so a store that begins after it is not one that may race those
zaps: after each flush, ``_check_zapped_frames`` looks in every zapped frame for a store
that began once its zap was complete or promised complete, which went through a stale
TLB entry and is lost with the frame (lost_update@zap; a load of the page then sees 0
where the load-value oracle expects the store: lost_update@load).
"""
import math

import numpy as np

from .. import native
from .frames import (VALUE_PAGE, VALUE_PAGE_SHIFT, VALUE_RACED, VALUE_STORED, VALUE_ZAP,
                     VALUE_ZAP_SHIFT, ZAP_COUNT, ZAP_DONE_SHIFT, assert_no_translation,
                     frame_pages, put_page, tlb_snapshot)
from .lockdep import Deadlock, check_ipi_wait
from .mm_types import HPAGE_NR, IPI_HIST_BUCKETS, LEVEL_SHIFT, PAGE_SHIFT, PMD, PROT_NONE, \
    PROT_WRITE, PWC_ENTRIES
from .pagetable import free_table_now, mark_pending
from .pipe import CLOCK_IPI, CLOCK_RCU, FRAMES, TABLES


IPI_SLICE_S = 0.05
TLB_FLUSH_ALL = native.TLB_FLUSH_ALL
TLB_SINGLE_PAGE_FLUSH_CEILING = 33       # pages (tlb_single_page_flush_ceiling)
KEY_ALL = (1 << 64) - 1                  # above every entry's key: a full flush
PAGE = 1 << PAGE_SHIFT


def _invalidate(mm, first, nents, ent_words, lo, hi):
    """One pass over every CPU's TLB (entries from word 0) or paging-structure cache
    (from word ``first``): each valid entry whose key is in [lo, hi) is cleared, one
    store each, so an entry a CPU fills meanwhile is whole or invalid (flush_tlb_remote's
    steps say which fills can still come: clearing a new one too is harmless).  Native:
    a TLB flush primitive, with its perturbation (and scheduling) point."""
    native.lib.spf_tlb_remote_invalidate(mm.tlb_base, mm.g.ncpus, mm.tlb_words, first,
                                         nents, ent_words, lo, hi)


def flush_tlb_remote(mm, start, end, freed_tables):
    """--tlb-flush no-ipi: invalidate [start, end) in every CPU's TLB without interrupting
    it (broadcast TLBI + DSB, INVLPGB + TLBSYNC).  A ranged flush drops the
    paging-structure caches (PWC) of the range only with ``freed_tables``; a full one
    drops them all.  The caller cleared the pmd or PTEs first.  Stated once:
      (1) drop the PWC entries the flush drops: a walk that starts after (2)'s look at
          its CPU finds none and reads the cleared pmd (a collapse unlinks a table whose
          PTEs are still present: through a stale PWC entry a later walk would reach
          them and fill a TLB entry)
      (2) wait for the instructions in flight (partner: spf_insn_begin's fence): every
          walk that read an old entry has ended, its TLB or PWC filled
      (2a) if PWC entries are dropped: drop them again (those (2)'s walks filled; no
          other walk can fill one now) and (2b) wait again: a walk that used one of
          them before (2a) has filled its TLB too
      (3) drop the TLB entries of the range
      (4) wait again: a user of an old entry has finished
    The hardware's invalidation also covers what walks in flight fill, so it needs none
    of (1), (2a), (2b); the model's passes over the arrays do.  An IRQs-off section is
    not waited for: that is what this mode is about.  It is a sync of the pipe's IPI
    clock all the same (pipe.py)."""
    ticket = mm.pipe.ipi_sync_begin()
    wait = native.lib.spf_tlb_remote_wait
    drops_pwc = end == TLB_FLUSH_ALL or freed_tables
    _invalidate_pwcs(mm, start, end, freed_tables)                           # (1)
    wait(mm.all_cpus.words, mm.g.ncpus)                                      # (2)
    if drops_pwc:
        _invalidate_pwcs(mm, start, end, freed_tables)                       # (2a)
        wait(mm.all_cpus.words, mm.g.ncpus)                                  # (2b)
    lo, hi = (0, KEY_ALL) if end == TLB_FLUSH_ALL else \
        (start >> PAGE_SHIFT, (end + PAGE - 1) >> PAGE_SHIFT)
    _invalidate(mm, 0, mm.g.tlb_entries, 4, lo, hi)                          # (3)
    wait(mm.all_cpus.words, mm.g.ncpus)                                      # (4)
    mm.pipe.ipi_sync_done(ticket)
    mm.count("tlb_flush")


def _invalidate_pwcs(mm, start, end, freed_tables):
    """The paging-structure-cache entries a flush of [start, end) drops."""
    pmd = LEVEL_SHIFT[PMD]
    if end == TLB_FLUSH_ALL:
        lo, hi = 0, KEY_ALL
    elif freed_tables:
        lo, hi = start >> pmd, ((end - 1) >> pmd) + 1
    else:
        return
    _invalidate(mm, mm.g.tlb_entries * 4, PWC_ENTRIES, 2, lo, hi)


def flush_tlb_mm_range(mm, start, end, freed_tables):
    """Flush [start, end) from every CPU's TLB (this one's locally) and wait for the acks
    (step (2)); past the ceiling, or ``end`` TLB_FLUSH_ALL, everything.  A target silent
    past a slice is checked for a deadlock against us; past the IPI timeout the wait
    itself is reported (both raise Deadlock: freeing now would be a use-after-free)."""
    if end != TLB_FLUSH_ALL and (end - start) >> PAGE_SHIFT > TLB_SINGLE_PAGE_FLUSH_CEILING:
        start, end = 0, TLB_FLUSH_ALL
    if mm.cfg.tlb_flush == "no-ipi":
        return flush_tlb_remote(mm, start, end, freed_tables)
    t0 = native.now_ns()
    _ipi_all(mm, lambda timeout_s: native.ipi_flush_tlb_range(mm.all_cpus, start, end,
                                                              timeout_s=timeout_s), t0)
    us = (native.now_ns() - t0) / 1000.0
    mm.ipi_hist[min(IPI_HIST_BUCKETS - 1, int(4 * math.log2(us + 1)))] += 1
    mm.count("ipi_sent", mm.g.ncpus - 1)
    mm.count("tlb_flush")


def _ipi_all(mm, send, t0):
    """send(timeout_s) an IPI to every CPU and wait for every ack (a sync of the pipe's
    IPI clock), re-sent past each slice until the deadlock checks decide."""
    ticket = mm.pipe.ipi_sync_begin()
    while True:
        try:
            send(IPI_SLICE_S)
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


def _ipi_sync_all(mm):
    """An IPI that does nothing but must be acked by every CPU (smp_call_function)."""
    _ipi_all(mm, lambda timeout_s: native.ipi_sync(mm.all_cpus, native.IPI_SYNC,
                                                   timeout_s=timeout_s), native.now_ns())


def tlb_remove_table_sync_one(mm):
    """mm/mmu_gather.c: wait until no lockless walker is still inside a table just
    unlinked, freeing nothing (khugepaged, before it deposits the table it replaced).
    The kernel's is an IPI (smp_call_function), enough for its IRQs-off walker
    (gup_fast) whatever the TLB flush does; the model's RCU walkers (--walk rcu: SPF,
    gup_fast) are waited for by a grace period instead."""
    if mm.walk_rcu:
        native.synchronize_rcu(mm.rcu.stall_timeout_s, busted=mm.rcu.busted)
    else:
        _ipi_sync_all(mm)


def flush_tlb_range(mm, start, end):
    """x86's flush_tlb_range: the range, with freed_tables (it may zap a pmd that points
    to a table: pmdp_collapse_flush)."""
    flush_tlb_mm_range(mm, start, end, True)


def flush_tlb_all(mm):
    """flush_tlb_mm: everything, on every CPU."""
    flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL, True)


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


def assert_zaps_complete(mm, first, seen):
    """After a MADV_DONTNEED returned, having seen ``seen`` zaps begun of each page from
    ``first``: no CPU may still hold a TLB entry for a frame (this incarnation) that one
    of those zaps took away (the frame's ``zap``, recorded at tlb_remove_page)."""
    lo = mm.g.window_base + (first << PAGE_SHIFT)
    va = mm.tlbs[:, :, 3]
    near = (va >= lo) & (va < lo + (len(seen) << PAGE_SHIFT)) & (mm.tlbs[:, :, 0] & 1 == 1)
    if not near.any() or not mm.frame_zap[(mm.tlbs[:, :, 1][near] >> 12).astype(np.int64)
                                          ].any():
        return                  # nothing cached there for a zapped frame: no need to look
    valid, data, gen, va = tlb_snapshot(mm)
    page = ((va - lo) >> PAGE_SHIFT).astype(np.int64)
    hit = valid & (va >= lo) & (page < len(seen))
    pfn = np.where(hit, data >> 12, 0).astype(np.int64)
    zap = mm.frame_zap[pfn]
    hit &= (zap != 0) & (zap <= seen[np.where(hit, page, 0)]) & (gen == mm.frame_gen[pfn])
    for cpu, slot in zip(*np.nonzero(hit)):
        mm.report("stale_tlb", "madvise", int(va[cpu, slot]), int(pfn[cpu, slot]),
                  int(data[cpu, slot]) >> 1 & 1, int(cpu))


def pte_free_defer(mm, t):
    """Free an unlinked table after a grace period (its pipe stamp is taken just before
    the grace period starts: see pipe.py; at the free, pagetable.assert_no_walker_in
    checks against it that no read-side section from before the grace period runs)."""
    mm.pipe.retire(TABLES, t, CLOCK_RCU)
    mm.rcu.call_rcu(free_table_now, mm, t)
    mm.count("call_rcu")


def tlb_remove_table_one(mm, t):
    """tlb_remove_table's fallback when no batch page can be had (v6.14 mm/mmu_gather.c,
    without CONFIG_PT_RECLAIM): tlb_remove_table_sync_one (an IPI every CPU must ack: an
    IRQs-off walker has left the table) and the free at once: an rcu_read_lock()-only
    walker may still be in it (the pairing ``walk_rcu_table_free_fallback``).  (With
    CONFIG_PT_RECLAIM, __tlb_remove_table_one is call_rcu on the table's own rcu head:
    a grace period, as for a batch, so MmuGather.remove_table keeps it with the batch.)"""
    mm.pipe.retire(TABLES, t, CLOCK_IPI)
    _ipi_sync_all(mm)
    free_table_now(mm, t)
    mm.count("table_free_one")


def inc_tlb_flush_pending(mm):
    """(p1), in tlb_gather_mmu."""
    native.fetch_add(mm.tlb_flush_pending, 1)


def dec_tlb_flush_pending(mm):
    """(p4), in tlb_finish_mmu after the flush."""
    native.fetch_add(mm.tlb_flush_pending, 2**64 - 1)


def mm_tlb_flush_nested(mm):
    """(p3): another mmu_gather is between its (p1) and (p4) (atomic_read > 1)."""
    return native.load_relaxed(mm.tlb_flush_pending) > 1


def complete_zaps(mm, pages, counts):
    """Raise each page's completed count to at least its count (an atomic max: zappers
    of one page complete in any order)."""
    if len(pages):
        native.max_field_each(mm.zap_clock_ptr, np.asarray(pages, dtype=np.uint64),
                              np.asarray(counts, dtype=np.uint64), ZAP_DONE_SHIFT)


def zaps_returned(mm, first, seen):
    """A MADV_DONTNEED of the pages from ``first`` returned, having seen ``seen`` (an
    array) zaps of each begun, read after its ptl sections and before its (p3): it
    promises them complete (a store that begins now must not reach their frames), so
    their completed counts go up to them where no flush has raised them yet."""
    done = mm.zap_clock[first:first + len(seen)] >> np.uint64(ZAP_DONE_SHIFT)
    behind = np.flatnonzero(done < seen)
    if len(behind):
        complete_zaps(mm, (behind + first).tolist(), seen[behind].tolist())


class MmuGather:
    """Frames and tables unlinked by a teardown, held until it is safe to free them, and
    the pages whose contents the teardown takes away (their zap clocks: frames.py).
    Making one is tlb_gather_mmu, ``finish`` is tlb_finish_mmu: every one is finished."""

    __slots__ = ("mm", "frames", "tables", "need_flush", "unflushed", "stamped", "zapped",
                 "last_zap", "unchecked", "start", "end", "freed_tables", "batch")

    def __init__(self, mm):
        self.mm = mm
        self.frames = []
        self.tables = []
        self.need_flush = False
        self.unflushed = 0          # pages gathered since the last flush
        self.stamped = 0            # frames given their pipe stamp
        self.zapped = []            # (page, its zaps begun) completed by the next flush
        self.last_zap = None        # index in zapped of the pages the next frame held
        self.unchecked = []         # (frame, index in zapped of its first page)
        self._reset_range()
        self.batch = False          # tlb->batch: a page to batch tables in (--table-free rcu)
        inc_tlb_flush_pending(mm)                                            # (p1)

    def _reset_range(self):
        """__tlb_reset_range: nothing to flush yet."""
        self.start, self.end, self.freed_tables = TLB_FLUSH_ALL, 0, False

    def _adjust_range(self, va, size):
        """__tlb_adjust_range: the next flush covers [va, va + size) too."""
        self.start = min(self.start, va)
        self.end = max(self.end, va + size)

    def remove_page(self, f):
        """tlb_remove_page: the PTE is cleared; free the frame after the flush."""
        self.need_flush = True
        self.unflushed += 1
        mm = self.mm
        zapped, self.last_zap = self.last_zap, None
        if mm.bugs.on("free_frame_before_flush"):
            put_page(mm, f)              # free_frame's assertion sees the TLB entries
        else:
            self.frames.append(f)
            if zapped is not None:
                self.unchecked.append((f, zapped))
                n = HPAGE_NR if f >= mm.g.nsmall else 1
                mm.frame_zap[f:f + n] = [z for _, z in self.zapped[zapped:zapped + n]]

    def zap_pages(self, va, n=1):
        """The PTE (or huge pmd) of n pages from va was just cleared, its ptl held: their
        contents go with the frame (``remove_page`` next).  Each page's zap clock counts
        the zap as begun now, and as completed once this gather's flush is done (a store
        meanwhile may still land in the old frame through a TLB entry the flush has not
        reached)."""
        mm = self.mm
        self.need_flush = True
        self.last_zap = len(self.zapped)
        self._adjust_range(va, n << PAGE_SHIFT)
        first = (va - mm.g.window_base) >> PAGE_SHIFT
        if n == 1:                       # a PTE (zap_pte_range's loop): one atomic
            old = (native.fetch_add(mm.zap_clock_ptr + first, 1),)
        else:                            # a huge pmd's pages: one call, one step
            buf = np.empty(n, dtype=np.uint64)
            native.fetch_add_range(mm.zap_clock_ptr + first, buf, 1)
            old = buf.tolist()
        self.zapped.extend(zip(range(first, first + n), [(o & ZAP_COUNT) + 1 for o in old]))

    def _check_zapped_frames(self):
        """After the flush (no CPU can reach the zapped frames any more), before they are
        freed: none may hold a store that began when its zap was complete or promised
        complete (a value of its page not stamped VALUE_RACED, whose begun count is at
        least the zap's).  Such a store went through a stale TLB entry: it is lost."""
        mm = self.mm
        payload, base = mm.frame_payload, mm.g.window_base
        for f, i in self.unchecked:
            n = HPAGE_NR if f >= mm.g.nsmall else 1
            for (p, z), v in zip(self.zapped[i:i + n], payload[f:f + n].tolist()):
                if v & VALUE_STORED and not v & VALUE_RACED \
                        and not (v >> VALUE_PAGE_SHIFT ^ p) & VALUE_PAGE \
                        and (v >> VALUE_ZAP_SHIFT) - z & VALUE_ZAP <= VALUE_ZAP // 2:
                    mm.report("lost_update", "zap", base + (p << PAGE_SHIFT), v,
                              f + (p - self.zapped[i][0]), z)
        self.unchecked = []

    def _zaps_completed(self):
        """After the flush: raise each zapped page's completed count to what it had
        begun."""
        complete_zaps(self.mm, [p for p, _ in self.zapped], [b for _, b in self.zapped])
        self.zapped = []

    def remove_table(self, t, va):
        """pte_free_tlb / tlb_remove_table: the parent entry of table t, which maps va, is
        cleared; the flush covers a page at va and the paging-structure caches
        (freed_tables); t is freed after the flush, and with --table-free rcu after a
        grace period on top (tlb_table_flush)."""
        mm = self.mm
        self.need_flush = True
        self._adjust_range(va, PAGE)
        if not mm.bugs.on("flush_no_freed_tables"):
            self.freed_tables = True
        if mm.bugs.on("free_table_no_sync"):
            free_table_now(mm, t)
        else:
            mark_pending(mm, t, va)
            if mm.cfg.table_free == "ipi":
                mm.pipe.retire(TABLES, t, CLOCK_IPI)
            elif mm.cfg.table_free == "rcu" and not self.batch:
                # __get_free_page(GFP_NOWAIT) for the batch, which may fail (seeded)
                self.batch = not mm.table_batch_alloc_fails()
                if not self.batch and mm.cfg.reclaim != "ptreclaim":
                    self.flush_tlbonly()             # tlb_table_invalidate
                    tlb_remove_table_one(mm, t)
                    return
            self.tables.append(t)

    def flush_tlbonly(self):
        if self.need_flush:
            mm = self.mm
            if len(self.frames) > self.stamped:
                # Retired since their PTEs were cleared; stamped before the flush's ticket
                mm.pipe.retire(FRAMES, self.frames[self.stamped:], CLOCK_IPI)
                self.stamped = len(self.frames)
            end = self.end - PAGE if mm.bugs.on("flush_range_short") else self.end
            if end > self.start or self.freed_tables:
                flush_tlb_mm_range(mm, self.start, end, self.freed_tables)   # tlb_flush
            self._reset_range()
            if self.unchecked:
                self._check_zapped_frames()
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
            if mm.cfg.table_free == "ipi":
                free_table_now(mm, t)
            else:
                pte_free_defer(mm, t)        # tlb_table_flush: the batch after a grace period
        self.frames = []
        self.tables = []
        self.batch = False
        self.stamped = 0

    def finish(self):
        """tlb_finish_mmu: (p3) a nested gather forces the flush, (p4) then the count
        goes down."""
        mm = self.mm
        mm.delay("tlb_finish_mmu")
        if mm_tlb_flush_nested(mm) and not mm.bugs.on("dontneed_no_flush_pending"):
            self.need_flush = True                                           # (p3)
            self.start, self.end, self.freed_tables = 0, TLB_FLUSH_ALL, True
        self.flush()
        dec_tlb_flush_pending(mm)                                            # (p4)
