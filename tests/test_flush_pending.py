"""Concurrent zappers (mm->tlb_flush_pending, tlb.py (p1)-(p4); 99baac21e458).

Zapper A (CPU 0's mm) clears a PTE and has not flushed; MADV_DONTNEED B of the same page
(CPU 1's mm) finds it none.  B must not return while CPU 1 can still store through its
TLB entry for A's frame: tlb_finish_mmu sees the nested gather and flushes.  With the
bug ``dontneed_no_flush_pending`` it returns at once, and CPU 1's next store goes into
the frame A takes away (the two CPUs of test_value_oracle.TwoCpus: --tlb-flush no-ipi,
so a flush clears both TLBs in this process)."""
import numpy as np
import pytest

from spfshm import debug, native
from spfshm.bugs import Bugs
from spfshm.mm.frames import ZAP_COUNT, ZAP_DONE_SHIFT, encode_value
from spfshm.mm.khugepaged import collapse_huge_page
from spfshm.mm.memory import zap_pte_range
from spfshm.mm.mm_types import HPAGE_NR, PAGE
from spfshm.mm.syscalls import do_madvise_dontneed
from spfshm.mm.tlb import MmuGather, mm_tlb_flush_nested, zaps_returned
from test_value_oracle import TwoCpus, va

BUG = "dontneed_no_flush_pending"


@pytest.fixture
def two():
    m = TwoCpus()
    m.arena["percpu"]["alive"][1] = native.lib.SPF_CPU_ONLINE    # its TLB counts
    yield m
    m.close()


def fired(two):
    """The violations recorded, oldest first, as (kind@site, va, a0, a1, a2)."""
    recs = [r for row, n in zip(two.arena["viol"], two.arena["viol_count"][:, 0])
            for r in row[:min(int(n), debug.VIOL_PER_CPU)]]
    return [(debug.describe(r)["signature"],) + tuple(int(r[k]) for k in ("va", "a0", "a1", "a2"))
            for r in sorted(recs, key=lambda r: int(r["stamp"]))]


def signatures(two):
    return [g[0] for g in fired(two)]


def pending(two):
    return int(two.arena["tlb_flush_pending"][0])


def race(two, bug, store=True):
    """A zaps page 3 under CPU 1's TLB entry; B (DONTNEED, with ``bug`` or not) of the
    same page returns; CPU 1 stores there (or not); A finishes; CPU 1 loads it back.
    Returns (A's frame, what it held when A's flush began)."""
    mm0, mm1 = two.mms
    mm1.bugs = Bugs([BUG] if bug else [])
    c1 = two.cpus[1]
    assert c1.store(va(3)) == "ok"
    f = two.frame(va(3))
    a = MmuGather(mm0)
    zap_pte_range(mm0, a, va(3), va(4))
    assert a.frames == [f] and pending(two) == 1
    assert do_madvise_dontneed(mm1, va(3), PAGE) == 0 and pending(two) == 1
    assert not store or c1.store(va(3)) == "ok"
    held = int(two.mm.frame_payload[f])       # no CPU can store there after B returned
    a.finish()
    assert pending(two) == 0
    assert c1.load(va(3)) == "ok"
    return f, held


def test_dontneed_finding_the_ptes_cleared_flushes_for_the_other(two):
    """(p3): B counts A's gather and flushes; CPU 1's store faults a new frame in."""
    f, held = race(two, bug=False)
    assert two.frame(va(3)) != f and held >> 63       # its first store, not its second
    assert signatures(two) == []


def test_dontneed_returning_before_the_other_flushed(two):
    """Without (p3)'s flush B returns while CPU 1 still holds its entry for A's frame:
    reported at B's return (CPU 1 does not store: nothing is lost)."""
    f, held = race(two, bug=True, store=False)
    assert fired(two) == [("stale_tlb@madvise", va(3), f, 1, 1)]     # frame, writable, CPU
    assert held >> 55 & 0xFF == 1


def test_store_after_the_dontneed_returned_lost_in_the_zapped_frame(two):
    """And CPU 1's store, begun after B returned, goes through that entry into A's frame:
    reported at A's flush, then at the load of 0 by the load-value oracle (now that the
    page's zap clock records B's return, the store was not one racing A's zap)."""
    f, held = race(two, bug=True)
    got = fired(two)
    assert [g[0] for g in got] == ["stale_tlb@madvise", "lost_update@zap",
                                   "lost_update@load"], got
    assert got[1][1:] == (va(3), held, f, 1)            # the value, the frame, zap 1
    assert held >> 55 & 0xFF == 1 and got[2][3] == held  # CPU 1's, lost


@pytest.mark.parametrize("bug", [False, True])
def test_dontneed_that_zapped_a_page_of_its_own(two, bug):
    """B clears page 4 itself: its flush (p4) is global, or, with the bug, the range it
    cleared only (tlb->start..end), which leaves CPU 1's entry for A's page 3."""
    mm0, mm1 = two.mms
    mm1.bugs = Bugs([BUG] if bug else [])
    c1 = two.cpus[1]
    assert c1.store(va(3)) == "ok" and c1.store(va(4)) == "ok"
    f = two.frame(va(3))
    a = MmuGather(mm0)
    zap_pte_range(mm0, a, va(3), va(4))
    assert do_madvise_dontneed(mm1, va(3), 2 * PAGE) == 0
    a.finish()
    assert fired(two) == ([("stale_tlb@madvise", va(3), f, 1, 1)] if bug else [])


def test_store_racing_a_zap_before_any_dontneed_returned_is_legal(two):
    """The same store before B returns may race A's zap (stamped VALUE_RACED): lost with
    the frame, legally; so does one while only A's zap is in progress, bug or not."""
    mm0, mm1 = two.mms
    mm1.bugs = Bugs([BUG])
    c1 = two.cpus[1]
    assert c1.store(va(3)) == "ok"
    a = MmuGather(mm0)
    zap_pte_range(mm0, a, va(3), va(4))
    assert c1.store(va(3)) == "ok"
    a.finish()
    assert c1.load(va(3)) == "ok" and signatures(two) == []


def test_nested_count_and_what_a_returned_dontneed_promises(two):
    """inc at tlb_gather_mmu, dec after the flush; a returned DONTNEED raises its pages'
    completed counts to the zaps it saw (only where a flush did not already)."""
    mm0, mm1 = two.mms
    assert pending(two) == 0 and not mm_tlb_flush_nested(mm0)
    a, b = MmuGather(mm0), MmuGather(mm1)
    assert pending(two) == 2 and mm_tlb_flush_nested(mm0)
    b.finish()
    assert pending(two) == 1 and not mm_tlb_flush_nested(mm0)
    zap_pte_range(mm0, a, va(3), va(5))               # faulted in by nobody: nothing
    a.finish()
    assert pending(two) == 0
    clock = two.mm.zap_clock
    clock[4:7] = [2 | 1 << ZAP_DONE_SHIFT, 5 | 5 << ZAP_DONE_SHIFT, 3]
    zaps_returned(mm0, 4, np.array([2, 4, 3], dtype=np.uint64))
    assert [int(w) >> ZAP_DONE_SHIFT for w in clock[4:7]] == [2, 5, 3]
    assert [int(w) & ZAP_COUNT for w in clock[4:7]] == [2, 5, 3]


def test_huge_zap_checks_every_subpage(two):
    """A huge pmd's zap: the subpage frame holding a store stamped after the zap was
    complete is reported with its own page and frame (staged: the payload written as a
    stale store would)."""
    mm = two.mm
    base = HPAGE_NR
    assert two.cpus[0].store(va(base)) == "ok"
    assert collapse_huge_page(mm, va(base))
    a = MmuGather(mm)
    zap_pte_range(mm, a, va(base), va(2 * HPAGE_NR))
    assert len(a.frames) == 1 and a.frames[0] >= mm.g.nsmall
    sub = a.frames[0] + 7
    stale = encode_value(1, base + 7, 9) | 1 << 40     # begun 1, not racing
    mm.frame_payload[sub] = stale
    a.finish()
    got = fired(two)
    assert got == [("lost_update@zap", va(base + 7), stale, sub, 1)], got
