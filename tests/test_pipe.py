"""Pipe-count ages (rcutorture's pipe check): every lockless read of a retired table, VMA,
VMA tree or frame is checked, in every mode, where the walker relies on the object.  Driven
directly, as one CPU, through the real read paths: each object is retired by hand and
its sync completed by hand (what a broken protocol would let happen), then a walker
reads it and pipe_age@site must fire; one read before any such sync must not."""
import dataclasses

import pytest

from spfshm import debug, native
from spfshm.bugs import Bugs
from spfshm.diffkernel import Model
from spfshm.mm import pipe
from spfshm.mm.fault import do_user_addr_fault
from spfshm.mm.gup import gup_fast, gup_hold_and_release
from spfshm.mm.mm_types import PAGE, PROT_BY_NAME, TABLE_LIVE, VMA_LIVE, VMA_PENDING
from spfshm.mm.pagetable import (entry_pfn, free_table_now, mark_pending,
                                  pte_offset_map_lock, pte_table_of, pte_unmap_unlock)
from spfshm.mm.pervma import do_pervma_fault
from spfshm.mm.spf import do_speculative_page_fault
from spfshm.mm.syscalls import MAP_FIXED, do_madvise_dontneed, do_mmap, do_munmap
from spfshm.mm.tlb import flush_tlb_all
from spfshm.mm.vma import TREE_LIVE, TREE_PENDING, current_tree, find_vma_rcu

BASE = 0x3F0000000000
CLOCKS = {"ipi": pipe.CLOCK_IPI, "rcu": pipe.CLOCK_RCU}


@pytest.fixture
def model():
    m = Model(64, BASE)
    assert do_mmap(m.mm, BASE, 8 * PAGE, PROT_BY_NAME["rw"], MAP_FIXED) == BASE
    assert m.cpu.store(BASE) == "ok"
    yield m
    m.close()


def configure(m, walk="irq", tlb_flush="ipi"):
    m.mm.cfg = dataclasses.replace(m.mm.cfg, tlb_flush=tlb_flush)
    m.mm.walk_rcu = walk == "rcu"


def ages(m, kind):
    return pipe.histograms(m.arena, 1)[kind]


def reported(m):
    return [v["signature"] for v in debug.collect(m.arena) if v["kind"] == "pipe_age"]


def others(m):
    return [v["signature"] for v in debug.collect(m.arena) if v["kind"] != "pipe_age"]


def sync(mm, clock):
    """Complete one sync of ``clock`` (a flush that acked, or a grace period)."""
    if clock == pipe.CLOCK_IPI:
        mm.pipe.ipi_sync_done(mm.pipe.ipi_sync_begin())
    else:
        mm.pipe.gp_done(native.rcu_start_gp())


def retire_table(m, clock):
    """BASE's PTE table retired (unlinked, as far as its state says) and one sync done."""
    mm = m.mm
    t = pte_table_of(mm, BASE)
    mark_pending(mm, t, 0)
    mm.pipe.retire(pipe.TABLES, t, clock)
    sync(mm, clock)
    return t


def revive_table(m, t):
    m.mm.pt_state[t] = TABLE_LIVE
    m.mm.pipe.unretire(pipe.TABLES, t)


def frame_at(m, va):
    mm = m.mm
    return entry_pfn(int(mm.pt[pte_table_of(mm, va), (va >> 12) & 511]))


# -- tables -------------------------------------------------------------------------------
@pytest.mark.parametrize("clock", ["ipi", "rcu"])
def test_table_read_by_the_hardware_walk(model, clock):
    m = model
    m.mm.tlbs[:, :, 0] = 0                       # the next access walks (through the PWC)
    t = retire_table(m, CLOCKS[clock])
    assert m.cpu.load(BASE) == "ok"
    assert "pipe_age@hw_walk" in reported(m) and others(m) == []
    revive_table(m, t)


@pytest.mark.parametrize("walk,clock", [("irq", "ipi"), ("rcu", "rcu"), ("irq", "rcu")])
def test_table_read_by_the_spf_walk(model, walk, clock):
    m = model
    configure(m, walk)
    t = retire_table(m, CLOCKS[clock])
    do_speculative_page_fault(m.mm, BASE + PAGE, 1)       # steps 6 and 7 read it
    assert set(reported(m)) == {"pipe_age@spf_walk"} and others(m) == []
    revive_table(m, t)


@pytest.mark.parametrize("walk,clock", [("irq", "ipi"), ("rcu", "rcu")])
def test_table_read_by_gup_fast(model, walk, clock):
    m = model
    configure(m, walk)
    t = retire_table(m, CLOCKS[clock])
    gup_hold_and_release(m.mm, gup_fast(m.mm, BASE, 1))
    assert reported(m) == ["pipe_age@gup"] and others(m) == []
    revive_table(m, t)


def test_freed_table_whose_ptl_pte_offset_map_lock_takes(model):
    """The same read site checks the table itself: freed under it is pt_uaf."""
    m = model
    mm = m.mm
    t = pte_table_of(mm, BASE)
    mm.pt[t, :] = 0                              # nothing for free_table_now to report:
    mm.pwcs[:, :, 0] = 0                         # no PTE in it, no PWC entry for it
    free_table_now(mm, t)                        # the pmd still links it: a broken freer
    assert pte_offset_map_lock(mm, BASE) == t
    pte_unmap_unlock(mm, t)
    assert [v["signature"] for v in debug.collect(m.arena)] == \
        ["pt_uaf@pte_offset_map_lock"]


# Who maps a PTE table under RCU and takes the ptl in it (True when the call itself
# succeeded, as far as the test checks), and the site that reports it
PTL_TAKERS = {
    "dontneed": (lambda mm: do_madvise_dontneed(mm, BASE, PAGE) == 0, "pte_offset_map_lock"),
    "classic": (lambda mm: do_user_addr_fault(mm, BASE + PAGE, 1) is not None, "fault"),
    "pervma": (lambda mm: do_pervma_fault(mm, BASE + PAGE, 1) is not None, "fault"),
}


@pytest.mark.parametrize("path", list(PTL_TAKERS))
def test_table_whose_ptl_is_taken_under_rcu(model, path):
    """DONTNEED (under mmap_lock read) and the faults map the table under RCU and take
    the ptl in it: a retired table read there is aged."""
    m = model
    take, site = PTL_TAKERS[path]
    t = retire_table(m, pipe.CLOCK_RCU)
    assert take(m.mm)
    assert reported(m) == ["pipe_age@" + site] and others(m) == []
    revive_table(m, t)


@pytest.mark.parametrize("clock", ["ipi", "rcu"])
def test_fault_relies_on_the_table_until_it_holds_its_ptl(model, clock):
    """The fault read the pmd, then the table was retired and its sync completed before
    the fault took the ptl in it (a reclaim that did not wait for it): the age is read
    once the ptl is held, the end of the window, so it is seen."""
    m = model
    mm = m.mm
    retired = []

    def delay(point):
        if point == "fault_before_ptl" and not retired:
            retired.append(retire_table(m, CLOCKS[clock]))
    mm.delay = delay
    assert do_user_addr_fault(mm, BASE + PAGE, 1) is not None
    assert retired and reported(m) == ["pipe_age@fault"] and others(m) == []
    revive_table(m, retired[0])


def test_table_read_before_any_later_sync_is_legal(model):
    m = model
    mm = m.mm
    t = pte_table_of(mm, BASE)
    sync(mm, pipe.CLOCK_IPI)                     # before the retirement: does not count
    mark_pending(mm, t, 0)
    mm.pipe.retire(pipe.TABLES, t, pipe.CLOCK_IPI)
    gup_hold_and_release(mm, gup_fast(mm, BASE, 1))
    assert reported(m) == [] and ages(m, "tables")[0] >= 1
    revive_table(m, t)


@pytest.mark.parametrize("table_free", ["ipi", "rcu"])
def test_no_ipi_flush_is_a_sync(model, table_free):
    """--tlb-flush no-ipi's remote invalidation completes the IPI clock too: an IRQs-off
    walker in a table retired before it (irq_walk_no_ipi_flush) is reported."""
    m = model
    configure(m, "irq", "no-ipi")
    mm = m.mm
    t = pte_table_of(mm, BASE)
    mark_pending(mm, t, 0)
    mm.pipe.retire(pipe.TABLES, t, CLOCKS[table_free])
    flush_tlb_all(mm)
    gup_hold_and_release(mm, gup_fast(mm, BASE, 1))
    assert reported(m) == (["pipe_age@gup"] if table_free == "ipi" else [])
    revive_table(m, t)


# -- VMAs and VMA trees -----------------------------------------------------------------------
def retire_vma(m):
    mm = m.mm
    native.rcu_read_lock()
    vid = find_vma_rcu(mm, BASE, "spf")[0]
    native.rcu_read_unlock()
    mm.vma[vid]["state"] = VMA_PENDING           # detached, waiting for its grace period
    mm.pipe.retire(pipe.VMAS, vid, pipe.CLOCK_RCU)
    return vid


FAULTS = {"spf": do_speculative_page_fault, "pervma": do_pervma_fault}


@pytest.mark.parametrize("path", ["spf", "pervma"])
def test_vma_read_by_a_lockless_lookup(model, path):
    """pervma: the VMA is read after vma_start_read, still under RCU (it used to be read
    after rcu_read_unlock, which no grace period waits for)."""
    m = model
    vid = retire_vma(m)
    FAULTS[path](m.mm, BASE + PAGE, 1)
    assert reported(m) == [] and ages(m, "vmas")[0] >= 1
    sync(m.mm, pipe.CLOCK_RCU)
    FAULTS[path](m.mm, BASE + 2 * PAGE, 1)
    assert reported(m) == ["pipe_age@" + path] and others(m) == []
    m.mm.vma[vid]["state"] = VMA_LIVE


@pytest.mark.parametrize("path", ["spf", "pervma"])
def test_grace_period_known_to_end_without_its_callbacks(model, path):
    """A grace period that began after the retirement and ended (no reader holds it) ages
    the object at once, before any CPU's callbacks run and record it: a reader whose
    section began after it (one that left its section in between, as an SPF step 6
    without its walk section would) is reported."""
    m = model
    vid = retire_vma(m)
    native.rcu_start_gp()                        # begun; nobody reads: over, unrecorded
    FAULTS[path](m.mm, BASE + PAGE, 1)
    assert reported(m) == ["pipe_age@" + path] and others(m) == []
    m.mm.vma[vid]["state"] = VMA_LIVE


@pytest.mark.parametrize("path", ["spf", "pervma"])
def test_lockless_vma_reads_hold_rcu(model, path):
    """The reads above are legal at age 0 only because the reader's RCU section holds
    the VMA's grace period off: every lockless VMA copy is made inside one."""
    m = model
    depths = []
    m.mm.delay = lambda point: point == "vma_copy" and depths.append(native.rcu_read_depth())
    assert FAULTS[path](m.mm, BASE + PAGE, 1) == 0
    assert depths and all(depths)


@pytest.mark.parametrize("path", ["spf", "pervma"])
def test_vma_tree_read_by_a_lockless_lookup(model, path):
    m = model
    mm = m.mm
    tree = current_tree(mm)
    mm.vma_tree[tree][0] = TREE_PENDING          # replaced, waiting for its grace period
    mm.pipe.retire(pipe.TREES, tree, pipe.CLOCK_RCU)
    FAULTS[path](mm, BASE + PAGE, 1)
    assert reported(m) == [] and ages(m, "trees")[0] >= 1
    sync(mm, pipe.CLOCK_RCU)
    FAULTS[path](mm, BASE + 2 * PAGE, 1)
    assert reported(m) == ["pipe_age@" + path] and others(m) == []
    mm.vma_tree[tree][0] = TREE_LIVE


# -- frames ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tlb_flush", ["ipi", "no-ipi"])
def test_frame_read_by_the_tlb_fill(model, tlb_flush):
    m = model
    configure(m, "irq", tlb_flush)
    mm = m.mm
    f = frame_at(m, BASE)
    mm.tlbs[:, :, 0] = 0
    mm.pipe.retire(pipe.FRAMES, f, pipe.CLOCK_IPI)
    assert m.cpu.load(BASE) == "ok" and reported(m) == []
    mm.tlbs[:, :, 0] = 0
    flush_tlb_all(mm)
    assert m.cpu.load(BASE) == "ok"
    assert reported(m) == ["pipe_age@tlb_fill"] and others(m) == []


@pytest.mark.parametrize("tlb_flush", ["ipi", "no-ipi"])
def test_zapped_frames_are_retired_in_every_flush_mode(model, tlb_flush):
    m = model
    configure(m, "irq", tlb_flush)
    f = frame_at(m, BASE)
    assert m.mm.pipe.age(pipe.FRAMES, f) == -1
    assert do_munmap(m.mm, BASE, PAGE) == 0
    assert m.mm.pipe.age(pipe.FRAMES, f) == 1    # stamped before its flush, which is done


@pytest.mark.parametrize("walk", ["irq", "rcu"])
def test_frame_pinned_by_gup_fast(model, walk):
    """A frame the PTE still maps but that was retired (a broken zap) and whose flush
    completed, pinned: with either walker protection."""
    m = model
    configure(m, walk)
    mm = m.mm
    f = frame_at(m, BASE)
    mm.pipe.retire(pipe.FRAMES, f, pipe.CLOCK_IPI)
    gup_hold_and_release(mm, gup_fast(mm, BASE, 1))
    assert reported(m) == []
    sync(mm, pipe.CLOCK_IPI)
    gup_hold_and_release(mm, gup_fast(mm, BASE, 1))
    assert ages(m, "frames")[:2] == [1, 1] and reported(m) == ["pipe_age@gup"]
    assert others(m) == []


@pytest.mark.parametrize("bug", [False, True])
def test_gup_fast_frame_age_counts_only_once_the_recheck_passed(model, bug):
    """A zap clears the PTE between gup_fast's walk and its pin, retires the frame and
    completes its flush (an RCU walker does not hold it off): reading the retired frame
    is legal, and the re-check drops the pin.  Without the re-check the pin is kept, and
    its age is reported."""
    m = model
    configure(m, "rcu")
    mm = m.mm
    if bug:
        mm.bugs = Bugs(("gup_fast_no_recheck",))
    t, f = pte_table_of(mm, BASE), frame_at(m, BASE)
    pte = int(mm.pt[t, 0])

    def zap_meanwhile(point):
        if point == "gup_pin":
            mm.pt[t, 0] = 0
            mm.pipe.retire(pipe.FRAMES, f, pipe.CLOCK_IPI)
            sync(mm, pipe.CLOCK_IPI)

    mm.delay = zap_meanwhile
    pinned = gup_fast(mm, BASE, 1)
    mm.pt[t, 0] = pte
    gup_hold_and_release(mm, pinned)
    assert len(pinned) == bug
    assert reported(m) == (["pipe_age@gup"] if bug else [])
