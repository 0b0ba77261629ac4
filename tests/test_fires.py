"""Every violation kind@site the code can report is shown to fire, on its own.

``report_points.scan()`` finds every report call in spfshm/ and the kind@site each can
report.  FIRES names, for every kind@site, one test per call that reports it (in the
scan's order: file, then line), and the meta-test fails when a reportable kind@site has
no test or fewer tests than calls, or when FIRES names one the code cannot report.

Each test builds a state in this process, as one CPU of an arena (the other CPUs are
arena rows, or a worker the test starts), drives the model code that reports, and
asserts that this kind@site and nothing else fired (with the operands that tell its
report calls apart).  A broken state is built either by a busted variant switched on
in-process, or by writing the arena directly where no variant breaks that step.
"""
import ast
import dataclasses
import errno
import os

import numpy as np
import pytest

import report_points
from spfshm import debug, native
from spfshm.arena import Arena, Layout
from spfshm.bugs import Bugs
from spfshm.check.sweep import sweep
from spfshm.config import Config
from spfshm.mm import mm_types, syscalls
from spfshm.mm.cpu import MAX_TRIES, VIOLATION, Cpu
from spfshm.mm.fault import VM_FAULT_OK, VM_FAULT_SIGSEGV, do_anonymous_page, \
    do_user_addr_fault, install_anon_pte
from spfshm.mm.frames import alloc_frame, alloc_huge_frame, put_page
from spfshm.mm import fault as fault_module, pagetable as pagetable_module
from spfshm.mm.gup import _walk as gup_walk, gup_fast, gup_hold_and_release
from spfshm.mm.khugepaged import collapse_huge_page
from spfshm.mm.lockdep import Deadlock, check_spin_unlocks, ptl_lock_irqs_off
from spfshm.mm.memory import free_pgtables, reclaim_pt
from spfshm.mm.mm_types import (FRAME_INUSE, HPAGE_NR, MM, PAGE, PGD, PROT_BY_NAME,
                                PROT_READ, PTE, PUD, TABLE_PENDING, TREE_HDR, VMA_FREE,
                                VMA_PENDING, Geometry, mm_init)
from spfshm.mm.mmap_lock import mmap_read_lock, mmap_read_unlock, mmap_write_lock, \
    mmap_write_unlock
from spfshm.mm.pagetable import (P, PROTNONE, ROOT, RW, alloc_table, entry_pfn,
                                 free_table_now, index, mark_pending, mk_entry,
                                 pmd_entry_of, pte_offset_map_lock, pte_table_of,
                                 pte_unmap_unlock, walk_lockless)
from spfshm.mm.perturb import no_delay
from spfshm.mm.pervma import do_pervma_fault
from spfshm.mm.pipe import CLOCK_IPI, CLOCK_RCU, FRAMES, TABLES, VMAS
from spfshm.mm.spf import do_speculative_page_fault
from spfshm.mm.syscalls import MAP_FIXED, MAX_ADDR, do_madvise_dontneed, do_mmap, \
    do_mprotect, do_munmap
from spfshm.mm.tlb import MmuGather, flush_tlb_all
from spfshm.mm.vma import (TREE_FREE, current_tree, find_vma, find_vma_rcu, tree_entries,
                           vm_area_free)
from spfshm.run.runner import run_stress
from spfshm.run.workers import Workers
from spfshm.smp import Smp, smp_regions

HERE = os.path.dirname(os.path.abspath(__file__))

# kind@site -> the tests that make it fire, one per report call (scan order).  A name is
# a test of this file (with its parameter id), or "file.py::test[id]" under tests/.
FIRES = {
    "spurious_segv@fault": ("test_spurious_segv",),
    # mm/lockdep.py's lockdep_assert_walk_protected, from each lockless reader
    "walk_unprotected@spf_walk": ("test_walk_unprotected[spf_walk-walk]",),
    "walk_unprotected@spf": ("test_walk_unprotected[spf-find_vma_rcu]",),
    "walk_unprotected@pervma": ("test_walk_unprotected[pervma-find_vma_rcu]",),
    "walk_unprotected@gup": ("test_walk_unprotected[gup]",),
    "walk_unprotected@fault": ("test_walk_unprotected[fault]",),
    "walk_unprotected@pte_offset_map_lock": ("test_walk_unprotected[pte_offset_map_lock]",),
    # check/sweep.py
    "vma_overlap@sweep": ("test_sweep[vma_overlap@sweep]",),
    "vma_outside@sweep": ("test_sweep[vma_outside@sweep]",),
    "vma_uaf@sweep": ("test_sweep[vma_uaf@sweep]",),
    "map_count@sweep": ("test_sweep[map_count@sweep]",),
    "map_count@publish_tree": ("test_a_split_past_max_map_count",),
    "pt_leak@sweep": ("test_sweep[pt_leak@sweep-walk]", "test_sweep[pt_leak@sweep-count]"),
    "pt_free_reachable@sweep": ("test_sweep[pt_free_reachable@sweep-linked]",),
    "pt_free_reachable@free_pgtables": ("test_table_queued_for_freeing_while_linked",),
    "frame_leak@sweep": ("test_sweep[frame_leak@sweep-huge]",
                         "test_sweep[frame_leak@sweep-unmapped]"),
    "mapcount@sweep": ("test_sweep[mapcount@sweep]",),
    "rss@sweep": ("test_sweep[rss@sweep]",),
    "frame_uaf@sweep":
        ("test_sweep.py::test_tlb_entry_for_a_frame_freed_and_reused_at_the_same_pfn",),
    "stale_tlb@sweep": ("test_sweep[stale_tlb@sweep]",),
    "frame_free_mapped@sweep": ("test_sweep[frame_free_mapped@sweep]",),
    "stale_pte@sweep": ("test_sweep[stale_pte@sweep]",),
    "pte_prot@sweep": ("test_sweep[pte_prot@sweep]",),
    "double_free@sweep": ("test_sweep.py::test_object_on_the_free_lists_twice[1-frames]",),
    "free_unlisted@sweep": ("test_sweep.py::test_free_object_on_no_free_list[1-frames]",),
    "listed_inuse@sweep": ("test_sweep.py::test_object_in_use_on_a_free_list[1-frames]",),
    "never_freed@sweep":
        ("test_sweep.py::test_final_sweep_finds_a_table_unlinked_and_never_freed",),
    "obj_leak@sweep": ("test_sweep.py::test_live_vma_record_and_tree_published_nowhere",) * 2,
    # mm/cpu.py, fault.py, frames.py, gup.py
    "frame_uaf@tlb_fill": ("test_tlb_fill_of_a_freed_frame",),
    "frame_uaf@tlb_access": ("test_tlb_hit_on_a_freed_frame",),
    "fault_loop@fault": ("test_fault_that_never_makes_progress",),
    "bad_value@load": ("test_load_of_poison",),
    "lost_update@load": ("test_load_of_an_older_store",),
    "vma_unlocked_change@fault": ("test_vma_changed_under_a_fault",),
    "vma_detached@fault": ("test_fault_in_a_detached_vma",),
    "vma_foreign@fault": ("test_vma_refcnt.py::test_a_record_reused_by_another_mm",),
    "vma_foreign@vma_end_read": ("test_vma_refcnt.py::test_a_foreign_vma_released",),
    "vma_refcnt@vma_refcount_put": ("test_vma_refcnt.py::test_put_of_a_count_of_zero",),
    "vma_refcnt@vma_mark_detached": ("test_vma_refcnt.py::test_detach_of_a_count_of_zero",),
    "vma_refcnt@vm_area_free": ("test_vma_refcnt.py::test_a_reference_outlives_its_vma",),
    "vma_refcnt@vma_mark_attached":
        ("test_vma_refcnt.py::test_a_reference_left_in_a_record_attached_again",),
    "fault_outside_vma@fault": ("test_fault_outside_its_vma",),
    "anon_vma_missing@fault": ("test_anon_page_mapped_without_an_anon_vma",),
    "double_free@put_page":
        ("test_sweep.py::test_frame_put_without_a_reference_is_a_double_free",),
    "double_free@free_frame":
        ("test_sweep.py::test_frame_freed_twice_is_reported_at_the_free_and_listed_once",),
    "frame_uaf@gup": ("test_pinned_frame_reused",),
    "bad_page@free_frame": ("test_frame_freed_with_a_mapcount",),
    "poison_overwritten@alloc": ("test_frame_written_while_free[small]",
                                 "test_frame_written_while_free[huge]"),
    "poison_overwritten@alloc_table": ("test_table_written_while_free",),
    "expect_failed@scenario": ("test_explore.py::test_an_expect_line_is_a_final_condition[2-False]",),
    # mm/lockdep.py, memory.py, mmap_lock.py
    "deadlock@ptl": ("test_ptl_spin_with_irqs_off",),
    "spin_bug@spin_unlock": ("test_unlock_of_a_lock_not_held",),
    "deadlock@ipi": ("test_ipi_to_a_cpu_spinning_on_our_ptl",),
    "pt_lost_ptes@free_pgtables": ("test_huge_pmd_left_below_the_floor",
                                   "test_huge_pmd_left_in_a_removed_subtree",
                                   "test_table_freed_with_a_pte"),
    "mmap_not_locked@find_vma": ("test_asserts.py::test_find_vma_asserts_the_lock[find_vma]",),
    "mmap_not_locked@vmas_snapshot":
        ("test_asserts.py::test_find_vma_asserts_the_lock[vmas_snapshot]",),
    "mmap_not_locked@publish_tree": ("test_asserts.py::test_write_lock_asserts[publish_tree]",),
    "mmap_not_locked@anon_vma_prepare":
        ("test_asserts.py::test_anon_vma_prepare_asserts_the_lock",),
    "mmap_not_locked@split_vma": ("test_asserts.py::test_write_lock_asserts[split_vma]",),
    "mmap_not_locked@vma_end_write_all":
        ("test_asserts.py::test_write_lock_asserts[vma_end_write_all]",),
    "mmap_not_locked@vma_start_write":
        ("test_asserts.py::test_write_lock_asserts[vma_start_write]",),
    "vma_read_while_written@vma_end_read": ("test_a_reader_let_in_past_a_writer[busted]",),
    "vma_read_held@munmap": ("test_vma_read_held[vma_read_held@munmap]",),
    "vma_read_held@split_vma": ("test_vma_read_held[vma_read_held@split_vma]",),
    "vma_not_write_locked@split_vma": ("test_vma_split_without_its_write_lock",),
    # mm/pagetable.py
    "pt_uaf@free_pgtables": ("test_table_freed_while_cached",
                             "test_table_freed_under_a_walker[inside]"),
    "pmd_changed@reclaim_pt": ("test_pmd_changed_under_the_ptl",),
    "pmd_changed@collapse_huge_page": ("test_collapse_checks_the_pmd_before_the_vma_lock",),
    "pt_uaf@collapse_huge_page":
        ("test_table_deposited_while_a_walker_from_before_its_unlink_runs",),
    "double_free@free_pgtables":
        ("test_sweep.py::test_table_freed_twice_is_reported_at_the_free",
         "test_sweep.py::test_table_unlinked_twice_is_reported_at_the_unlink[False]"),
    "pt_uaf@gup": ("test_walker_in_a_freed_table[pt_uaf@gup]",
                   "test_walker_past_the_tables[pt_uaf@gup]"),
    "pt_uaf@hw_walk": ("test_walker_in_a_freed_table[pt_uaf@hw_walk]",
                       "test_walker_past_the_tables[pt_uaf@hw_walk]"),
    "pt_uaf@pte_offset_map_lock":
        ("test_pipe.py::test_freed_table_whose_ptl_pte_offset_map_lock_takes",),
    "pt_uaf@spf_walk": ("test_walker_in_a_freed_table[pt_uaf@spf_walk]",
                        "test_walker_past_the_tables[pt_uaf@spf_walk]"),
    # mm/pipe.py
    "pipe_age@fault": ("test_pipe.py::test_table_whose_ptl_is_taken_under_rcu[classic]",),
    "pipe_age@gup": ("test_pipe_age[pipe_age@gup]",),
    "gup_unmapped@gup": ("test_pin_kept_on_a_frame_zap_just_unmapped",),
    "pipe_age@hw_walk": ("test_pipe_age[pipe_age@hw_walk]",),
    "pipe_age@pervma": ("test_pipe_age[pipe_age@pervma]",),
    "pipe_age@pte_offset_map_lock":
        ("test_pipe.py::test_table_whose_ptl_is_taken_under_rcu[dontneed]",),
    "pipe_age@spf": ("test_pipe_age[pipe_age@spf]",),
    "pipe_age@spf_walk": ("test_pipe_age_in_a_run",),
    "pipe_age@tlb_fill": ("test_pipe.py::test_frame_read_by_the_tlb_fill[ipi]",),
    # mm/spf.py, tlb.py, vma.py; run/runner.py
    "torn_vma@spf": ("test_spf_decides_on_a_torn_vma",),
    "deadlock@ipi_timeout": ("test_ipi_never_acked",),
    "frame_uaf@zap": ("test_frame_freed_before_the_flush",),
    "stale_tlb@mprotect": ("test_writable_tlb_entry_after_mprotect",),
    "unmapped_area_missed@mmap": ("test_mmap_misses_the_lowest_gap",),
    "stale_pte@mmap": ("test_mmap_over_a_pte_left_in_a_hole",),
    "pte_prot@mprotect": ("test_mprotect_of_a_pte_beyond_its_vma",),
    "ptl_not_held@pgtable_trans_huge_deposit": ("test_deposit_list_needs_the_pmd_lock",),
    "ptl_not_held@pgtable_trans_huge_withdraw": ("test_deposit_list_needs_the_pmd_lock",),
    "stale_tlb@madvise":
        ("test_flush_pending.py::test_dontneed_returning_before_the_other_flushed",),
    "lost_update@zap": ("test_flush_pending.py::test_huge_zap_checks_every_subpage",),
    "double_free@vm_area_free":
        ("test_sweep.py::test_vma_record_freed_twice_is_reported_at_the_free",),
    "vma_uaf@find_vma": ("test_retired_vma_read_under_mmap_lock",),
    "early_free@vm_area_free": ("test_vma_record_freed_before_its_grace_period",),
    "vma_uaf@pervma": ("test_freed_vma[vma_uaf@pervma-record]",
                       "test_freed_vma[vma_uaf@pervma-tree]"),
    "vma_uaf@spf": ("test_freed_vma[vma_uaf@spf-record]", "test_freed_vma[vma_uaf@spf-tree]"),
    "hang@watchdog": ("test_hang_in_a_run",),
}

# kind@site the scan finds but no state can make fire, with the test showing what fires
# instead: read_vma reports a retired VMA read under mmap_lock before its pipe age.
UNREACHABLE = {
    "pipe_age@find_vma": "test_retired_vma_read_under_mmap_lock",
}


# -- the meta-test ----------------------------------------------------------------------
def test_every_reportable_signature_fires():
    """Each kind@site the code can report has as many tests in FIRES as calls report
    it, each test exists, and FIRES and UNREACHABLE name nothing the code cannot
    report (so a new site comes in with its test, and a removed one takes it along)."""
    points, unresolved = report_points.scan()
    assert unresolved == [], "report calls whose kind or site is not a literal, nor a " \
        "parameter every caller passes one for: %s" % unresolved
    calls = {}
    for p in points:
        calls.setdefault("%s@%s" % (p.kind, p.site), []).append(p.where)
    for sig, where in calls.items():
        kind, site = sig.split("@")
        text = debug.KINDS.get(kind)
        assert text is not None and site in debug.SITES, "%s (%s) is not in debug's " \
            "KINDS/SITES" % (sig, where)
        assert not isinstance(text, dict) or site in text, "%s: no sentence" % sig
    reportable = set(calls) - set(UNREACHABLE)
    missing = sorted(reportable - set(FIRES))
    assert not missing, "no test makes these fire: %s" % {s: calls[s] for s in missing}
    extra = sorted(set(FIRES) - reportable)
    assert not extra, "FIRES names what the code cannot report: %s" % extra
    stale = sorted(set(UNREACHABLE) - set(calls))
    assert not stale, "UNREACHABLE names what the code no longer reports: %s" % stale
    for sig in sorted(reportable):
        assert len(FIRES[sig]) == len(calls[sig]), "%s is reported from %d calls (%s), " \
            "FIRES names %d tests" % (sig, len(calls[sig]), calls[sig], len(FIRES[sig]))
    named = [(t, sig) for sig, ts in FIRES.items() for t in ts] + \
        [(t, sig) for sig, t in UNREACHABLE.items()]
    for test, sig in named:
        assert _names_a_test(test, sig.split("@")[0]), "%s: no such test for %s" % (test, sig)
    unused = sorted(set(debug.SITES) - {s.split("@")[1] for s in calls}) + \
        sorted(set(debug.KINDS) - {s.split("@")[0] for s in calls})
    assert not unused, "debug's tables name kinds or sites nothing reports: %s" % unused


SCAN_FIXTURE = {
    "a.py": """
def check(mm, site):
    mm.report("k1", site)
def walk(mm, site, stop=0):
    check(mm, site)
def walkers(mm):
    walk(mm, "s1")
    check(mm, site="s2")
""",
    "b/c.py": """
class Pipe:
    def observe(self, idx, site="s3"):
        self.report("k2", site, idx)
def reader(mm, pipe):
    pipe.observe(1)
    pipe.observe(2, "s4")
    rep = mm.report
    rep("k3", "s5" if mm else "s6")
def computed(mm, name):
    mm.report("k4", name)
def caller(mm):
    computed(mm, mm.name)
""",
}


def test_scan_resolves_sites_through_callers(tmp_path):
    """The scan follows a site parameter up the call chain (positional, keyword,
    default, method), sees a local alias of report, and gives up on a computed site."""
    for name, src in SCAN_FIXTURE.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(src)
    points, unresolved = report_points.scan(str(tmp_path))
    assert ["%s@%s" % (p.kind, p.site) for p in points] == [
        "k1@s1", "k1@s2", "k2@s3", "k2@s4", "k3@s5", "k3@s6"]
    assert points[0].where == "a.py:3 in check"
    assert unresolved == ["b/c.py:11 in computed"]


def _names_a_test(test, kind):
    """A test of this file, with one of its parameter ids if it has any; or a test
    function of another file under tests/ with ``kind`` in one of its strings (its
    parameter id is not checked)."""
    path, _, name = test.rpartition("::")
    name, _, param = name.partition("[")
    if path:
        with open(os.path.join(HERE, path)) as f:
            for node in ast.parse(f.read()).body:
                if isinstance(node, ast.FunctionDef) and node.name == name:
                    return any(isinstance(n, ast.Constant) and kind in str(n.value)
                               for n in ast.walk(node))
        return False
    fn = globals().get(name)
    marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
    if fn is None or bool(marks) != bool(param):
        return False
    ids = marks[0].kwargs.get("ids") if marks else None
    return not marks or param[:-1] in (ids or marks[0].args[1])


# -- the model in this process ---------------------------------------------------------
BASE = 0x3F0000000000                       # 512 GiB aligned: every level starts here
BLOCK = HPAGE_NR * PAGE
WINDOW = 2 * HPAGE_NR                       # pages: room for a collapse
OTHER = 1                                   # a CPU that exists only as arena rows
PROT_RW = PROT_BY_NAME["rw"]


class Box:
    """The model in this process as CPU ``cpu`` of ``ncpus``, with ``bugs`` switched on
    and ``cfg`` overrides of the classical single-path settings; ``flags`` is a line of
    words shared with workers."""

    def __init__(self, ncpus=1, cpu=0, bugs=(), **cfg):
        cfg = dict(dict(fault_mode="classic", table_free="ipi", reclaim="off",
                        collapse="off", perturb="off"), **cfg)
        self.cfg = Config(cpus=ncpus, window_pages=WINDOW, bugs=tuple(bugs), **cfg)
        self.g = Geometry(ncpus, WINDOW, self.cfg.tlb_entries, window_base=BASE)
        self.arena = Arena(Layout(smp_regions(ncpus) + mm_types.regions(self.g)
                                  + [("flags", np.uint64, 8)]))
        self.flags = self.arena["flags"]
        self.smp = Smp(self.arena, ncpus)
        self.smp.init()
        self.smp.become_cpu(cpu)
        self.mm = MM(self.arena, self.g, self.cfg, Bugs(bugs), cpu)
        mm_init(self.mm)
        self.cpu = Cpu(self.mm)

    def map(self, pages=8, stored=4):
        """An rw VMA of ``pages`` at BASE, the first ``stored`` of them stored to (so
        faulted in, and in this CPU's TLB)."""
        assert do_mmap(self.mm, BASE, pages * PAGE, PROT_RW, MAP_FIXED) == BASE
        for p in range(stored):
            assert self.cpu.store(BASE + p * PAGE) == "ok"
        return self

    def table(self, va=BASE):
        return pte_table_of(self.mm, va)

    def frame(self, va=BASE):
        return entry_pfn(int(self.mm.pt[self.table(va), index(va, PTE)]))

    def vid(self):
        """The first VMA's record."""
        return tree_entries(self.mm, current_tree(self.mm))[2][0]

    def close(self):
        self.mm.rcu.rcu_barrier()
        native.cpu_unregister()
        self.arena.close()


@pytest.fixture
def make():
    boxes = []

    def make(**kw):
        boxes.append(Box(**kw))
        return boxes[-1]

    yield make
    for b in boxes:
        b.close()


@pytest.fixture
def box(make):
    return make().map()


def fired(b):
    """The violations recorded, oldest first, as (kind@site, a0, a1, a2)."""
    recs = [r for row, n in zip(b.arena["viol"], b.arena["viol_count"][:, 0])
            for r in row[:min(int(n), debug.VIOL_PER_CPU)]]
    return [(debug.describe(r)["signature"], int(r["a0"]), int(r["a1"]), int(r["a2"]))
            for r in sorted(recs, key=lambda r: int(r["stamp"]))]


def only(b, sig):
    """Assert that ``sig`` fired and nothing else did; the first one's operands."""
    got = fired(b)
    assert got and {g[0] for g in got} == {sig}, got
    return got[0][1:]


def grace_period(mm):
    """A grace period that begins now and is seen to end (its callback runs)."""
    mm.rcu.call_rcu(lambda: None)
    mm.rcu.rcu_barrier()


NOT_SET = 2**64 - 1                          # an operand reported as -1


# -- the sweep -------------------------------------------------------------------------
def _overlap(b):
    assert do_mmap(b.mm, BASE + 16 * PAGE, 4 * PAGE, PROT_RW, MAP_FIXED) > 0
    row = b.mm.vma_tree[current_tree(b.mm)]
    row[TREE_HDR + 3] = BASE + 2 * PAGE      # the second VMA now starts inside the first
    b.mm.tree_cache = (None, None)
    return BASE + 2 * PAGE, BASE + 20 * PAGE, BASE + 8 * PAGE


def _outside(b):
    """A VMA placed below the window (an mmap that did not check it got one there)."""
    row = b.mm.vma_tree[current_tree(b.mm)]
    row[TREE_HDR] = b.mm.g.window_base - 4 * PAGE
    b.mm.tree_cache = (None, None)
    return b.mm.g.window_base - 4 * PAGE, BASE + 8 * PAGE, b.mm.g.window_end


def _over_max_map_count(b):
    """Two VMAs (a munmap split one) where vm.max_map_count allows one: an mmap or a
    split that did not check it."""
    assert do_munmap(b.mm, BASE + 2 * PAGE, PAGE) == 0
    b.mm.cfg = dataclasses.replace(b.mm.cfg, max_map_count=1)
    return 2, 1, 0


def _vma_retired_in_tree(b):
    vid = b.vid()
    b.mm.vma[vid]["state"] = VMA_PENDING
    return vid, VMA_PENDING, None


def _entry_past_the_tables(b):
    bad = b.g.ntables + 3                    # an unused PGD slot now links no real table
    b.mm.pt[ROOT, index(BASE, PGD) + 1] = mk_entry(bad, 0, P | RW)
    return bad, PGD, NOT_SET


def _table_unlinked_by_nobody(b):
    return alloc_table(b.mm, PTE), PTE, 0


def _pending_table_linked(b):
    assert do_madvise_dontneed(b.mm, BASE, 8 * PAGE) == 0      # empty, still linked
    t = b.table()
    b.mm.pt_state[t] = TABLE_PENDING
    return t, TABLE_PENDING, pmd_entry_of(b.mm, BASE)[0]


def _huge_page_torn(b):
    head = b.g.nsmall                        # a free huge page, one subpage in use
    b.mm.frame_meta[head + 5]["state"] = FRAME_INUSE
    return head, 0, NOT_SET


def _frame_unmapped(b):
    f = alloc_frame(b.mm)
    return f, 1, 0


def _mapcount(b):
    f = b.frame()
    b.mm.frame_meta[f]["mapcount"] += 1
    return f, 2, 1


def _rss(b):
    b.mm.rss[0] += 1
    return 5, 4, 0


def _pte_read_only_tlb_writable(b):
    b.mm.pt[b.table(), 0] &= ~np.uint64(RW)
    return b.frame(), 1, b.mm.cpu


def _reference_dropped_while_mapped(b):
    f = b.frame()
    flush_tlb_all(b.mm)                      # (free_frame asserts no TLB entry is left
    b.mm.frame_meta[f]["mapcount"] = 0       #  and no mapcount)
    put_page(b.mm, f)                        # the mapping's reference: freed, still mapped
    return f, 0, 0


def _pte_beyond_the_vma(b):
    b.mm.bugs = Bugs(("zap_skip_last_pte",))
    assert do_munmap(b.mm, BASE + 3 * PAGE, 5 * PAGE) == 0     # page 3 stays mapped
    f = b.frame(BASE + 3 * PAGE)
    return f, int(b.mm.pt[b.table(), 3]), 0


def _pte_writable_in_read_only_vma(b):
    assert do_mprotect(b.mm, BASE, 8 * PAGE, PROT_READ) == 0
    t = b.table()
    b.mm.pt[t, 0] |= np.uint64(RW)
    return int(b.mm.pt[t, 0]), PROT_READ, 0


SWEEP_STATES = {
    "vma_overlap@sweep": _overlap,
    "vma_outside@sweep": _outside,
    "vma_uaf@sweep": _vma_retired_in_tree,
    "map_count@sweep": _over_max_map_count,
    "pt_leak@sweep-walk": _entry_past_the_tables,
    "pt_leak@sweep-count": _table_unlinked_by_nobody,
    "pt_free_reachable@sweep-linked": _pending_table_linked,
    "frame_leak@sweep-huge": _huge_page_torn,
    "frame_leak@sweep-unmapped": _frame_unmapped,
    "mapcount@sweep": _mapcount,
    "rss@sweep": _rss,
    "stale_tlb@sweep": _pte_read_only_tlb_writable,
    "frame_free_mapped@sweep": _reference_dropped_while_mapped,
    "stale_pte@sweep": _pte_beyond_the_vma,
    "pte_prot@sweep": _pte_writable_in_read_only_vma,
}


def test_sweep_of_a_correct_state_is_clean(box):
    assert sweep(box.mm) > 0 and fired(box) == []


@pytest.mark.parametrize("case", sorted(SWEEP_STATES))
def test_sweep(box, case):
    """Each state breaks one invariant; the sweep reports it with these operands (None:
    not compared)."""
    want = SWEEP_STATES[case](box)
    sweep(box.mm)
    got = only(box, case.split("-")[0])
    assert all(w is None or w == g for w, g in zip(want, got)), (want, got)


# -- one CPU's accesses -----------------------------------------------------------------
def test_tlb_fill_of_a_freed_frame(box):
    """The PTE still maps a frame that was freed: the hardware walk's fill sees it."""
    f = box.frame()
    flush_tlb_all(box.mm)                    # (free_frame asserts no TLB entry is left
    box.mm.frame_meta[f]["mapcount"] = 0     #  and no mapcount)
    put_page(box.mm, f)
    assert box.cpu.load(BASE) == VIOLATION
    assert only(box, "frame_uaf@tlb_fill")[2] == f


def test_tlb_hit_on_a_freed_frame(box):
    """A TLB entry outlives its frame's free: the access through it sees it.  (Freed
    behind free_frame's back, a new generation at the same pfn: free_frame's own
    assertion would report the entry first, as frame_uaf@zap.)"""
    f = box.frame()
    box.mm.frame_gen[f] += 1
    assert box.cpu.load(BASE) == VIOLATION
    assert only(box, "frame_uaf@tlb_access")[2] == f


def test_frame_freed_with_a_mapcount(box):
    """free_pages_prepare's bad_page: a frame freed while its mapcount still counts a
    mapping (a split that drops the huge page before its mapcount, say)."""
    f = alloc_frame(box.mm)
    box.mm.frame_meta[f]["mapcount"] = 1
    put_page(box.mm, f)
    assert only(box, "bad_page@free_frame") == (f, 1, 0)


@pytest.mark.parametrize("size", ["small", "huge"])
def test_frame_written_while_free(box, size):
    """check_poison_mem: a store lands in a frame after its free poisoned it (through a
    translation that outlived the free); the next allocation of the frame (this CPU's
    cache hands it back first) finds the poison overwritten."""
    mm = box.mm
    alloc = alloc_frame if size == "small" else alloc_huge_frame
    f = alloc(mm)
    put_page(mm, f)
    hit = f if size == "small" else f + 3
    mm.frame_payload[hit] = 5
    assert alloc(mm) == f
    assert only(box, "poison_overwritten@alloc") == (hit, 5, 0)


def test_table_written_while_free(box):
    """check_poison_mem for page tables: an entry written into a table after its free
    (a PTE installed through a pointer to a table already freed) is found when the
    table is allocated again (this CPU's cache hands it back first)."""
    mm = box.mm
    t = alloc_table(mm, PTE)
    free_table_now(mm, t)
    mm.pt[t, 7] = 5
    assert alloc_table(mm, PTE) == t
    assert only(box, "poison_overwritten@alloc_table") == (t, 7, 5)


def test_fault_that_never_makes_progress(box):
    """A PROT_NONE PTE in an accessible VMA: the walk cannot use it and the fault finds
    it not none, so every retry ends where it began."""
    t = box.table()
    box.mm.pt[t, 0] = (box.mm.pt[t, 0] & ~np.uint64(P | RW)) | np.uint64(PROTNONE)
    flush_tlb_all(box.mm)
    assert box.cpu.load(BASE) == VIOLATION
    assert only(box, "fault_loop@fault")[0] == MAX_TRIES


def test_load_of_poison(box):
    box.mm.frame_payload[box.frame()] = mm_types.POISON
    assert box.cpu.load(BASE) == "ok"
    assert only(box, "bad_value@load")[0] == mm_types.POISON


def test_load_of_an_older_store(box):
    f = box.frame()
    old = int(box.mm.frame_payload[f])
    assert box.cpu.store(BASE) == "ok"
    new = int(box.mm.frame_payload[f])
    box.mm.frame_payload[f] = old            # the last store went astray
    assert box.cpu.load(BASE) == "ok"
    assert only(box, "lost_update@load")[:2] == (old, new)


def test_vma_changed_under_a_fault(box):
    """A writer changes the VMA without waiting for the fault that copied it."""
    mm = box.mm
    mmap_read_lock(mm)
    try:
        v = find_vma(mm, BASE)
        mm.vma[v.id]["prot"] = PROT_READ
        assert do_anonymous_page(mm, v, BASE + 5 * PAGE, 1) == VM_FAULT_OK
    finally:
        mmap_read_unlock(mm)
    assert only(box, "vma_unlocked_change@fault") == (v.id, PROT_RW, PROT_READ)


def test_fault_in_a_detached_vma(make):
    """The per-VMA path locks a VMA that munmap detached after the lookup found it (its
    detached check skipped): the fault runs in a VMA that is no longer in the mm."""
    box = make(bugs=("pervma_skip_detached",)).map()
    mm = box.mm
    mmap_read_lock(mm)
    v = find_vma(mm, BASE)
    mmap_read_unlock(mm)
    mm.vma[v.id]["anon_vma"] = 1
    mm.vma[v.id]["detached"] = 1
    assert do_pervma_fault(mm, BASE + 5 * PAGE, 1) == VM_FAULT_OK
    assert only(box, "vma_detached@fault") == (v.id, v.start, v.end)


def test_fault_outside_its_vma(box):
    """A fault handed a VMA that does not contain its address (a path whose range check
    is missing: the VMA shrank between the lookup and the lock)."""
    mm = box.mm
    mmap_read_lock(mm)
    try:
        v = find_vma(mm, BASE)
        assert do_anonymous_page(mm, v, v.end, 1) == VM_FAULT_OK
    finally:
        mmap_read_unlock(mm)
    assert only(box, "fault_outside_vma@fault") == (v.id, v.start, v.end)


def test_anon_page_mapped_without_an_anon_vma(box):
    """__folio_set_anon's BUG_ON(!anon_vma): a path that maps an anonymous page in a VMA
    it believes has no anon_vma (a speculative fault without its step 5, say)."""
    mm = box.mm
    t = box.table()
    mmap_read_lock(mm)
    try:
        v = find_vma(mm, BASE)           # a private copy
        v.anon_vma = 0
        native.spin_lock(mm.ptl(t), mm.cpu)
        install_anon_pte(mm, v, t, 5, alloc_frame(mm), 1)
        native.spin_unlock(mm.ptl(t))
    finally:
        mmap_read_unlock(mm)
    assert only(box, "anon_vma_missing@fault") == (v.id, t, 5)


def test_pin_kept_on_a_frame_zap_just_unmapped(make):
    """gup_fast without its re-check: between its walk and its reference, a zap clears
    the PTE and drops the mapcount (the frame is gathered, its flush still to come, not
    even retired yet); the pin is kept."""
    b = make(bugs=("gup_fast_no_recheck",)).map()
    f = b.frame()

    def zap_meanwhile(point):
        if point == "gup_pin":
            b.mm.pt[b.table(), index(BASE, PTE)] = 0
            b.mm.frame_meta[f]["mapcount"] -= 1
    b.mm.delay = zap_meanwhile
    assert [p[1] for p in gup_fast(b.mm, BASE, 1)] == [f]
    assert only(b, "gup_unmapped@gup")[:1] == (f,)


def test_pinned_frame_reused(box):
    """The pinned page is a new incarnation when its holder lets go (a pin that missed
    gup_fast's re-check sees that)."""
    (va, f, tag), = gup_fast(box.mm, BASE, 1)
    box.mm.frame_gen[f] += 1
    gup_hold_and_release(box.mm, [(va, f, tag)])
    assert only(box, "frame_uaf@gup")[2] == f


# -- locks: named deadlocks ---------------------------------------------------------------
def test_ptl_spin_with_irqs_off(make):
    b = make(ncpus=2, ipi_timeout=0.05).map()
    t = b.table()
    native.spin_lock(b.mm.ptl(t), OTHER)
    try:
        with pytest.raises(Deadlock):
            ptl_lock_irqs_off(b.mm, t)
    finally:
        native.spin_unlock(b.mm.ptl(t))
    assert only(b, "deadlock@ptl")[1:] == (t, OTHER)


def test_unlock_of_a_lock_not_held(make):
    """A caller that goes on as if a spin_trylock had taken the lock (and releases it)."""
    b = make().map()
    native.spin_bugs_take()
    ptl = b.mm.ptl(pte_table_of(b.mm, BASE))
    native.spin_lock(ptl, b.mm.cpu)
    native.spin_unlock(ptl)
    check_spin_unlocks(b.mm)
    assert debug.collect(b.arena) == []             # a lock that was held: fine
    native.spin_unlock(ptl)
    check_spin_unlocks(b.mm)
    assert only(b, "spin_bug@spin_unlock")[0] == 1


def _wait_for(cond, what):
    deadline = native.now_ns() + 30 * 10**9
    while not cond():
        assert native.now_ns() < deadline, what
        native.sleep_ns(100_000)


def test_ipi_to_a_cpu_spinning_on_our_ptl(make):
    """CPU 0 spins with IRQs off on the ptl this CPU (1) holds while it flushes: the
    unacked IPI is named as the deadlock it is."""
    b = make(ncpus=2, cpu=1).map()
    t = b.table()
    ptl = b.mm.ptl(t)
    native.spin_lock(ptl, b.mm.cpu)

    def spinner(cpu):
        mm0 = MM(b.arena, b.g, b.cfg, Bugs(), cpu)
        native.local_irq_disable()
        try:
            assert ptl_lock_irqs_off(mm0, t)
            native.spin_unlock(ptl)
        finally:
            native.local_irq_enable()

    with Workers(b.smp, 1, spinner) as w:
        _wait_for(lambda: b.mm.waiting_all[0, 0] == t + 1, "CPU 0 never spun")
        try:
            with pytest.raises(Deadlock):
                flush_tlb_all(b.mm)
        finally:
            native.spin_unlock(ptl)
        assert w.join(30) == {0: 0}
    assert only(b, "deadlock@ipi")[1:] == (0, t)


def _holding(b, enter, leave):
    """A worker's body: enter a section (IRQs off, RCU), raise flags[0], stay until
    flags[1] is raised, leave."""
    def body(cpu):
        enter()
        b.flags[0] = 1
        while not b.flags[1]:
            pass
        leave()
    return body


def test_ipi_never_acked(make):
    """CPU 0 keeps IRQs off past --ipi-timeout: the flush gives up and says so."""
    b = make(ncpus=2, cpu=1, ipi_timeout=0.2).map()

    with Workers(b.smp, 1, _holding(b, native.local_irq_disable, native.local_irq_enable)) as w:
        _wait_for(lambda: b.flags[0], "CPU 0 never disabled IRQs")
        try:
            with pytest.raises(Deadlock):
                flush_tlb_all(b.mm)
        finally:
            b.flags[1] = 1
        assert w.join(30) == {0: 0}
    assert only(b, "deadlock@ipi_timeout")[1] == 0


# -- page tables: freeing -----------------------------------------------------------------
def _collapsed(make):
    """A box whose first 2 MiB block is one huge pmd and nothing else is mapped."""
    b = make().map(pages=HPAGE_NR, stored=1)
    assert collapse_huge_page(b.mm, BASE)
    return b


def _free_pgtables(mm, floor, ceiling):
    """munmap's free_pgtables over the first block, as if zap had left it alone."""
    mmap_write_lock(mm)
    try:
        tlb = MmuGather(mm)
        free_pgtables(mm, tlb, BASE, BASE + BLOCK, floor, ceiling)
        tlb.finish()
    finally:
        mmap_write_unlock(mm)


def test_huge_pmd_left_below_the_floor(make):
    """The upper tables stay (their range is not all free): the huge pmd is met in the
    PMD table that free_pgtables walks."""
    b = _collapsed(make)
    pmd_t, _ = pmd_entry_of(b.mm, BASE)
    _free_pgtables(b.mm, BASE, BASE + BLOCK)
    assert only(b, "pt_lost_ptes@free_pgtables") == (pmd_t, 1, 0)


def test_huge_pmd_left_in_a_removed_subtree(make):
    """The whole PGD slot is free: the huge pmd is met while its subtree is removed."""
    b = _collapsed(make)
    pmd_t, _ = pmd_entry_of(b.mm, BASE)
    _free_pgtables(b.mm, 0, MAX_ADDR)
    assert only(b, "pt_lost_ptes@free_pgtables") == (pmd_t, 1, 0)


def test_table_freed_with_a_pte(make):
    b = make(bugs=("zap_skip_last_pte",)).map(pages=4)
    t = b.table()
    assert do_munmap(b.mm, BASE, 4 * PAGE) == 0
    assert only(b, "pt_lost_ptes@free_pgtables") == (t, 1, 0)


def test_pmd_changed_under_the_ptl(make):
    """PT_RECLAIM's fast path clears the pmd with no pmd_same, as try_get_and_clear_pmd
    does: the ptl, held since pte_offset_map_lock validated the pmd, must have kept it.
    A pmd changed meanwhile (here: cleared behind the ptl's back) is reported and left
    alone, not silently skipped."""
    b = make().map(pages=4)
    mm = b.mm
    assert do_madvise_dontneed(mm, BASE, 4 * PAGE) == 0           # t is empty now
    t = pte_offset_map_lock(mm, BASE)
    pmd_t, pmd_i = pmd_entry_of(mm, BASE)
    native.store_relaxed(mm.entry_ptr(pmd_t, pmd_i), 0)
    tlb = MmuGather(mm)
    assert reclaim_pt(mm, tlb, t, BASE, False)
    native.rcu_read_unlock()             # pte_offset_map_lock's, as zap_pte_range does
    tlb.finish()
    assert only(b, "pmd_changed@reclaim_pt") == (0, t, 0)
    assert not native.lib.spf_spin_is_locked(mm.ptl(t)) and native.rcu_read_depth() == 0


def test_collapse_checks_the_pmd_before_the_vma_lock(make):
    """The pre-2025 order: khugepaged checks the pmd under mmap_lock write, then
    write-locks the VMA; in between, CPU 1's DONTNEED under the VMA's read lock only
    (--madvise-lock vma) zaps the block and PT_RECLAIM clears the pmd."""
    b = make(ncpus=2, reclaim="ptreclaim", table_free="rcu", madvise_lock="vma",
             collapse="write-lock", bugs=("collapse_pmd_check_before_vma_lock",))
    b.map(pages=HPAGE_NR, stored=2)
    t = b.table()
    cpu1 = MM(b.arena, b.g, b.cfg, Bugs(b.cfg.bugs), 1)

    def meanwhile(point):
        if point == "collapse_vma_lock":
            b.mm.delay = no_delay
            assert do_madvise_dontneed(cpu1, BASE, BLOCK) == 0
            assert pte_table_of(b.mm, BASE) < 0               # reclaimed

    b.mm.delay = meanwhile
    assert not collapse_huge_page(b.mm, BASE)
    assert only(b, "pmd_changed@collapse_huge_page") == (0, 0, 0)
    assert t >= 0


def test_table_deposited_while_a_walker_from_before_its_unlink_runs(make):
    """khugepaged without tlb_remove_table_sync_one: CPU 0 entered an RCU walk before
    the collapse unlinked the table, and is still in it when the table is deposited."""
    b = make(ncpus=2, cpu=1, table_free="rcu-always", bugs=("khugepaged_no_sync",))
    b.map(pages=HPAGE_NR, stored=1)
    t = b.table()

    with Workers(b.smp, 1, _holding(b, native.rcu_read_lock, native.rcu_read_unlock)) as w:
        _wait_for(lambda: b.flags[0], "CPU 0 never entered its walk")
        try:
            assert collapse_huge_page(b.mm, BASE)
        finally:
            b.flags[1] = 1
        assert w.join(30) == {0: 0}
    assert only(b, "pt_uaf@collapse_huge_page") == (t, PTE, 0)


def test_table_freed_while_cached(make):
    """munmap frees the emptied table before its flush: this CPU's paging-structure
    cache still holds it."""
    b = make(bugs=("free_table_no_sync",)).map()
    t = b.table()
    assert do_munmap(b.mm, BASE, 8 * PAGE) == 0
    assert only(b, "pt_uaf@free_pgtables") == (t, PTE, b.mm.cpu)


@pytest.mark.parametrize("how", ["inside", "before_retire", "after_retire"])
def test_table_freed_under_a_walker(make, how):
    """A table freed at once (no grace period) while CPU 0 runs an RCU read-side section
    that is inside it (it need not read the table again to be seen), or that began
    before the table was retired for a grace period (which would have waited for it).
    The control: a section that began after a grace period began (after the
    retirement) cannot have found the table, and that grace period does not wait for
    it: nothing fires."""
    b = make(ncpus=2, cpu=1, table_free="rcu-always", reclaim="off").map()
    assert do_madvise_dontneed(b.mm, BASE, 8 * PAGE) == 0      # empty; TLBs flushed
    t = b.table()
    if how == "after_retire":
        b.mm.pipe.retire(TABLES, t, CLOCK_RCU)
        native.rcu_start_gp()

    def walker(cpu):
        mm0 = MM(b.arena, b.g, b.cfg, Bugs(), cpu)
        native.rcu_read_lock()
        if how == "inside":
            assert walk_lockless(mm0, BASE, "spf_walk")[0] == t
        b.flags[0] = 1
        _wait_for(lambda: b.flags[1], "never released")
        native.rcu_read_unlock()

    with Workers(b.smp, 1, walker) as w:
        _wait_for(lambda: b.flags[0], "CPU 0 never entered its section")
        try:
            if how == "before_retire":
                b.mm.pipe.retire(TABLES, t, CLOCK_RCU)
            free_table_now(b.mm, t)
        finally:
            b.flags[1] = 1
        assert w.join(30) == {0: 0}
    if how == "after_retire":
        assert fired(b) == []
    else:
        assert only(b, "pt_uaf@free_pgtables") == (t, PTE, 0)


def _hw_walk(b, va):
    return b.cpu.load(va) == VIOLATION


def _spf_walk(b, va):
    return do_speculative_page_fault(b.mm, va, 1) == "uaf"


def _gup(b, va):
    return gup_fast(b.mm, va, 1) == []


WALKERS = {"pt_uaf@hw_walk": _hw_walk, "pt_uaf@spf_walk": _spf_walk, "pt_uaf@gup": _gup}


@pytest.mark.parametrize("sig", sorted(WALKERS))
def test_walker_in_a_freed_table(box, sig):
    """The table is freed while its pmd still links it (no unlink, no sync)."""
    assert do_madvise_dontneed(box.mm, BASE, 8 * PAGE) == 0      # empty; TLBs flushed
    t = box.table()
    free_table_now(box.mm, t)
    assert WALKERS[sig](box, BASE)
    assert only(box, sig)[:2] == (t, PTE)


@pytest.mark.parametrize("sig", sorted(WALKERS))
def test_walker_past_the_tables(box, sig):
    """An upper entry names a table index past the table array."""
    bad = box.g.ntables + 3
    box.mm.pt[ROOT, index(BASE, PGD)] = mk_entry(bad, 0, P | RW)
    flush_tlb_all(box.mm)
    assert WALKERS[sig](box, BASE)
    assert only(box, sig)[:2] == (bad, PUD)


# -- VMAs ---------------------------------------------------------------------------------
def test_retired_vma_read_under_mmap_lock(box):
    """A VMA retired (detached, its free waiting for a grace period that has since
    ended) is still in the tree: a reader under mmap_lock reports the use-after-free.
    Its pipe age is never taken (the grace period claims only lockless readers), which
    is why pipe_age@find_vma, though a site the scan resolves, cannot fire."""
    mm = box.mm
    vid = box.vid()
    mm.vma[vid]["state"] = VMA_PENDING
    mm.pipe.retire(VMAS, vid, CLOCK_RCU)
    grace_period(mm)
    assert do_user_addr_fault(mm, BASE + 5 * PAGE, 1) == VM_FAULT_SIGSEGV
    assert only(box, "vma_uaf@find_vma")[:2] == (vid, VMA_PENDING)


class _NoGracePeriod:
    """A call_rcu that runs its callback at once."""

    def call_rcu(self, fn, *args):
        fn(*args)

    def rcu_barrier(self):
        pass


def test_vma_record_freed_before_its_grace_period(box):
    """vm_area_free's callback runs with no grace period since the record was detached
    and retired: a lockless reader that found it may still be in it (or in its reuse)."""
    mm = box.mm
    vid = box.vid()
    mm.rcu = _NoGracePeriod()
    vm_area_free(mm, vid)
    assert only(box, "early_free@vm_area_free") == (vid, 0, 0)


def _spf_fault(mm, va):
    return do_speculative_page_fault(mm, va, 1) == "uaf"


def _pervma_fault(mm, va):
    return do_pervma_fault(mm, va, 1) is None


@pytest.mark.parametrize("sig,what", [("vma_uaf@spf", "record"), ("vma_uaf@spf", "tree"),
                                      ("vma_uaf@spf", "reused"),
                                      ("vma_uaf@pervma", "record"),
                                      ("vma_uaf@pervma", "tree"),
                                      ("vma_uaf@pervma", "reused")],
                         ids=["vma_uaf@spf-record", "vma_uaf@spf-tree", "vma_uaf@spf-reused",
                              "vma_uaf@pervma-record", "vma_uaf@pervma-tree",
                              "vma_uaf@pervma-reused"])
def test_freed_vma(box, sig, what):
    """A lockless fault finds the VMA record, or the tree it looks it up in, freed while
    still published; or the record is freed and reused (live again, a new generation)
    between the lookup and the copy, as vm_area_free without its grace period lets a
    writer do."""
    mm = box.mm
    state = VMA_FREE if what == "record" else TREE_FREE
    if what == "tree":
        obj = current_tree(mm)
        mm.vma_tree[obj][0] = TREE_FREE
    else:
        obj = box.vid()
        if what == "record":
            mm.vma[obj]["state"] = VMA_FREE
        else:
            state = int(mm.vma[obj]["state"])

            def reuse(point):
                if point == "vma_copy":
                    mm.vma[obj]["gen"] += 1

            mm.delay = reuse
    fault = _spf_fault if sig.endswith("spf") else _pervma_fault
    assert fault(mm, BASE + 5 * PAGE)
    assert only(box, sig)[:2] == (obj, state)


@pytest.mark.parametrize("sig", ["vma_read_held@munmap", "vma_read_held@split_vma"])
def test_vma_read_held(make, monkeypatch, sig):
    """CPU 1 has published a read hold on the VMA (as a fault that slipped past
    vma_start_read's re-check does) when munmap or mprotect write-locks it.  For munmap,
    the reader leaves before the split, which would report it again."""
    b = make(ncpus=2).map()
    vid = b.vid()
    b.mm.waiting_all[OTHER, 5] = vid + 1
    if sig.endswith("munmap"):
        split = syscalls._split

        def reader_leaves_then_split(*a, **k):
            b.mm.waiting_all[OTHER, 5] = 0
            return split(*a, **k)

        monkeypatch.setattr(syscalls, "_split", reader_leaves_then_split)
        assert do_munmap(b.mm, BASE, 8 * PAGE) == 0
    else:
        assert do_mprotect(b.mm, BASE, PAGE, PROT_READ) == 0
    assert only(b, sig)[:2] == (vid, OTHER)


@pytest.mark.parametrize("bugs", [(), ("pervma_no_recheck",)], ids=["correct", "busted"])
def test_a_reader_let_in_past_a_writer(make, bugs):
    """Between vma_start_read's first check and its trylock (the named point there) a
    writer write-locks the VMA and releases the rwsem, as vma_start_write does.  The
    re-check (c) sends the reader to mmap_lock: nothing held, nothing reported.  Without
    it the reader goes on holding a write-locked VMA, and its release reports that."""
    from spfshm.mm.vma_lock import vma_end_read, vma_start_read, vma_start_write
    b = make(bugs=bugs).map()
    vid, mm = b.vid(), b.mm
    assert vma_start_read(mm, vid)                       # no writer: in and out, silent
    vma_end_read(mm, vid)

    def writer(point):
        if point == "vma_start_read":
            mm.delay = no_delay
            mmap_write_lock(mm)
            vma_start_write(mm, vid)
    mm.delay = writer
    got = vma_start_read(mm, vid)
    assert got == bool(bugs)
    if got:
        vma_end_read(mm, vid)
    mmap_write_unlock(mm)
    if bugs:
        assert only(b, "vma_read_while_written@vma_end_read")[0] == vid
    else:
        assert fired(b) == []


def test_vma_split_without_its_write_lock(make):
    b = make(bugs=("mprotect_no_vma_lock",)).map()
    vid = b.vid()
    assert do_mprotect(b.mm, BASE, PAGE, PROT_READ) == 0
    assert only(b, "vma_not_write_locked@split_vma")[0] == vid


def test_spf_decides_on_a_torn_vma(make):
    """An mprotect splits the VMA while the speculative fault copies it (at the copy's
    delay point), and the fault skips the mmap_seq check that would catch it: it goes
    on with a copy of no moment of the VMA's life (here it would abort as unmapped)."""
    b = make(bugs=("spf_skip_vma_check",)).map()
    vid = b.vid()
    mm = b.mm

    def delay(point):
        if point == "vma_copy":
            mm.delay = lambda point: None
            assert do_mprotect(mm, BASE + 2 * PAGE, 6 * PAGE, PROT_READ) == 0

    mm.delay = delay
    assert do_speculative_page_fault(mm, BASE + 3 * PAGE, 0) == "uaf"
    assert only(b, "torn_vma@spf") == (vid, BASE, BASE + 2 * PAGE)


# -- pipe ages ----------------------------------------------------------------------------
def _retire_table(b):
    """The table is retired (its free waits for a shootdown) while still linked, and a
    shootdown that began after that has completed."""
    t = b.table()
    mark_pending(b.mm, t, 0)      # va 0: the unlink itself is not under test
    b.mm.pipe.retire(TABLES, t, CLOCK_IPI)
    flush_tlb_all(b.mm)
    return TABLES, t


def _retire_vma(b):
    """The VMA is retired (its free waits for a grace period) while still in the tree,
    and a grace period that began after that has ended."""
    vid = b.vid()
    b.mm.vma[vid]["state"] = VMA_PENDING
    b.mm.pipe.retire(VMAS, vid, CLOCK_RCU)
    grace_period(b.mm)
    return VMAS, vid


def _retire_frame(b):
    """The frame is retired (its free waits for a shootdown) while still mapped, and a
    shootdown that began after that has completed."""
    f = b.frame()
    b.mm.pipe.retire(FRAMES, f, CLOCK_IPI)
    flush_tlb_all(b.mm)
    return FRAMES, f


PIPE_CASES = {   # sig -> (retire, the lockless reader)
    "pipe_age@hw_walk": (_retire_table, lambda b: b.cpu.load(BASE) == "ok"),
    "pipe_age@gup": (_retire_frame, lambda b: len(gup_fast(b.mm, BASE, 1)) == 1),
    "pipe_age@spf": (_retire_vma,
                     lambda b: do_speculative_page_fault(b.mm, BASE + 5 * PAGE, 1)
                     == VM_FAULT_OK),
    "pipe_age@pervma": (_retire_vma,
                        lambda b: do_pervma_fault(b.mm, BASE + 5 * PAGE, 1) == VM_FAULT_OK),
}


@pytest.mark.parametrize("sig", sorted(PIPE_CASES))
def test_pipe_age(box, sig):
    retire, read = PIPE_CASES[sig]
    kind, idx = retire(box)
    assert read(box)
    assert only(box, sig) == (kind, idx, 1)


def test_pipe_age_in_a_run(make):
    """Three CPUs' operations, interleaved at the delay point that the catalogue perturbs
    for spf_walk_unprotected: CPU 0's speculative fault walks without protection to the
    PTE table; meanwhile CPU 1 unmaps the range (the table is retired, its free waits
    for a grace period) and CPU 2 sees a grace period end that began after that.  CPU 0
    then takes the ptl in the retired table.  (A stress run with the variant meets this
    interleaving only sometimes: its first violation is pt_uaf when the free comes
    first.)"""
    b = make(ncpus=3, bugs=("spf_walk_unprotected",), table_free="rcu",
             tlb_flush="no-ipi").map()
    cpu1, cpu2 = (MM(b.arena, b.g, b.cfg, Bugs(b.cfg.bugs), c) for c in (1, 2))
    t = b.table()

    def meanwhile(point):
        if point == "spf_before_ptl":
            b.mm.delay = no_delay
            assert do_munmap(cpu1, BASE, 8 * PAGE) == 0
            assert do_mmap(cpu2, BASE + BLOCK, PAGE, PROT_RW, MAP_FIXED) == BASE + BLOCK
            cpu2.rcu.rcu_barrier()           # the old VMA tree's grace period

    b.mm.delay = meanwhile
    assert do_speculative_page_fault(b.mm, BASE + 5 * PAGE, 1) == "pte_map_lock_seq2"
    got = [g for g in fired(b) if g[0] != "walk_unprotected@spf_walk"]   # PROVE_RCU too
    assert [g[0] for g in got] == ["pipe_age@spf_walk"], fired(b)
    kind, idx, age = got[0][1:]
    assert (kind, idx) == (TABLES, t) and age >= 1


# -- teardown and permission changes -----------------------------------------------------
def test_frame_freed_before_the_flush(make):
    b = make(bugs=("free_frame_before_flush",)).map()
    f = b.frame()
    assert do_munmap(b.mm, BASE, PAGE) == 0
    assert only(b, "frame_uaf@zap")[2] == f


def test_table_queued_for_freeing_while_linked(box):
    """tlb_remove_table's precondition: the parent entry no longer maps the table (here
    the pmd still does, as when a free is moved above the pmd_clear)."""
    from spfshm.mm.pagetable import mark_pending, pmd_entry_of
    t = box.table()
    mark_pending(box.mm, t, BASE)
    assert only(box, "pt_free_reachable@free_pgtables") == (
        t, TABLE_PENDING, pmd_entry_of(box.mm, BASE)[0])


def test_deposit_list_needs_the_pmd_lock(box):
    """The deposit list of a PMD table is changed only under its pmd lock (the kernel's
    assert_spin_locked in pgtable_trans_huge_deposit and _withdraw): held, nothing is
    reported; not held, each reports."""
    from spfshm.mm.pagetable import (alloc_table, pgtable_trans_huge_deposit,
                                     pgtable_trans_huge_withdraw, pmd_entry_of)
    mm = box.mm
    pmd_t = pmd_entry_of(mm, BASE)[0]
    t = alloc_table(mm, PTE)
    native.spin_lock(mm.ptl(pmd_t), mm.cpu)
    pgtable_trans_huge_deposit(mm, pmd_t, t)
    assert pgtable_trans_huge_withdraw(mm, pmd_t) == t
    native.spin_unlock(mm.ptl(pmd_t))
    assert fired(box) == []
    pgtable_trans_huge_deposit(mm, pmd_t, t)
    assert pgtable_trans_huge_withdraw(mm, pmd_t) == t
    assert [f[:3] for f in fired(box)] == [
        ("ptl_not_held@pgtable_trans_huge_deposit", pmd_t, 0),
        ("ptl_not_held@pgtable_trans_huge_withdraw", pmd_t, 0)]
    free_table_now(mm, t)


def test_mmap_misses_the_lowest_gap(make, monkeypatch):
    """The window full but for a gap below its lowest VMA, and a get_unmapped_area that
    looks only between and above the VMAs: the hinted mmap's ENOMEM is reported (the
    correct search finds the gap, and nothing fires)."""
    from spfshm.mm import syscalls
    b = make()
    mm, g = b.mm, b.mm.g
    low = g.window_base + 8 * PAGE
    assert do_mmap(mm, low, g.window_end - low, PROT_RW, MAP_FIXED) == low
    assert do_mmap(mm, low, 4 * PAGE, PROT_RW, syscalls.MAP_HINT) == low - 4 * PAGE
    assert fired(b) == []
    real = syscalls._get_unmapped_area
    monkeypatch.setattr(syscalls, "_get_unmapped_area",
                        lambda mm_, vmas, length: -1 if vmas[0].start > g.window_base
                        else real(mm_, vmas, length))
    assert do_mmap(mm, low, 2 * PAGE, PROT_RW, syscalls.MAP_HINT) == -errno.ENOMEM
    assert only(b, "unmapped_area_missed@mmap") == (2 * PAGE, 4 * PAGE, g.window_base)


def test_mmap_over_a_pte_left_in_a_hole(box):
    """munmap leaves a PTE behind (zap_skip_last_pte): the mmap that covers the hole
    reports it, before the new VMA makes it look legal.  After a correct munmap the
    same mmap finds nothing."""
    assert do_munmap(box.mm, BASE + 6 * PAGE, 2 * PAGE) == 0
    assert do_mmap(box.mm, BASE + 6 * PAGE, 2 * PAGE, PROT_RW, MAP_FIXED) == BASE + 6 * PAGE
    assert fired(box) == []
    f, e, _ = _pte_beyond_the_vma(box)                       # page 3 stays mapped
    box.mm.bugs = Bugs(())
    assert do_mmap(box.mm, BASE + 2 * PAGE, 4 * PAGE, PROT_RW, MAP_FIXED) == BASE + 2 * PAGE
    assert only(box, "stale_pte@mmap") == (f, e, 0)


def test_mprotect_of_a_pte_beyond_its_vma(box):
    """A writable PTE under a read-only VMA (as a fault installs it with a protection
    its VMA no longer has): the next mprotect of the range reports it before rewriting
    it.  A correct mprotect (read-only, then back to rw) finds nothing."""
    assert do_mprotect(box.mm, BASE, 8 * PAGE, PROT_READ) == 0
    assert do_mprotect(box.mm, BASE, 8 * PAGE, PROT_RW) == 0
    assert do_mprotect(box.mm, BASE, 8 * PAGE, PROT_READ) == 0
    assert fired(box) == []
    e, _, _ = _pte_writable_in_read_only_vma(box)
    assert do_mprotect(box.mm, BASE + PAGE, 7 * PAGE, PROT_RW) == 0    # page 0 is not in it
    assert fired(box) == []
    assert do_mprotect(box.mm, BASE, PAGE, PROT_RW) == 0
    assert only(box, "pte_prot@mprotect") == (e, PROT_READ, 0)


def test_a_split_past_max_map_count(make, monkeypatch):
    """vm.max_map_count 1: a munmap in the middle of the one VMA would make 2, and is
    ENOMEM; without its check (the twin: _split_fits always yes) the split is reported
    by the tree publish that makes the list too long, not only by a later sweep."""
    b = make(max_map_count=1).map()
    assert do_munmap(b.mm, BASE + 2 * PAGE, PAGE) == -errno.ENOMEM
    assert fired(b) == []
    monkeypatch.setattr(syscalls, "_split_fits", lambda *a: True)
    assert do_munmap(b.mm, BASE + 2 * PAGE, PAGE) == 0
    assert only(b, "map_count@publish_tree") == (2, 1, 0)


def test_writable_tlb_entry_after_mprotect(make):
    b = make(bugs=("mprotect_no_flush",)).map()
    assert do_mprotect(b.mm, BASE, 8 * PAGE, PROT_READ) == 0
    assert only(b, "stale_tlb@mprotect")[1:] == (1, b.mm.cpu)


# -- whole runs -------------------------------------------------------------------------
def test_hang_in_a_run(tmp_path):
    """A leaked mmap_lock stops every other CPU: the watchdog ends the run."""
    rep = run_stress(Config(cpus=2, duration=60, seed=1, bugs=("mmap_unlock_leak",),
                            stall_timeout=0.5, check_every=0,
                            artifacts=str(tmp_path)).resolved())
    assert rep["exit_code"] == 3 and rep["violations"], rep["errors"]
    assert {v["signature"] for v in rep["violations"]} == {"hang@watchdog"}, rep["violations"]


# -- PROVE_RCU: a lockless reader with neither RCU nor IRQs off ------------------------------
class _NoRcu:
    """A module's ``native`` whose rcu_read_lock/unlock do nothing: that module's RCU
    section deleted, as the section mutants do."""

    def __init__(self):
        self.rcu_read_lock = self.rcu_read_unlock = lambda: None

    def __getattr__(self, name):
        return getattr(native, name)


def _unprotected_pte_map_lock(b):
    from spfshm.mm import spf
    native.rcu_read_lock()
    pmd_t, orig_pmd, tag = walk_lockless(b.mm, BASE, "spf_walk", stop=mm_types.PMD)
    native.rcu_read_unlock()
    seq = native.seq_try_begin(b.mm.mmap_seq)
    assert getattr(spf, "__pte_map_lock")(b.mm, BASE, seq, pmd_t, tag, orig_pmd,
                                          entry_pfn(orig_pmd)) is None
    native.spin_unlock(b.mm.ptl(entry_pfn(orig_pmd)))


def _anonymous_fault(mm, va):
    mmap_read_lock(mm)
    try:
        do_anonymous_page(mm, find_vma(mm, va), va, 1)
    finally:
        mmap_read_unlock(mm)


def _without_rcu(module, call):
    def run(b, monkeypatch):
        monkeypatch.setattr(module, "native", _NoRcu())
        call(b)
    return run


WALK_UNPROTECTED = {
    "spf_walk-walk": (dict(fault_mode="spf", bugs=("spf_walk_unprotected",)),
                      lambda b, mp: do_speculative_page_fault(b.mm, BASE + 5 * PAGE, 1)),
    "spf_walk-pte_map_lock": (dict(fault_mode="spf"), lambda b, mp: _unprotected_pte_map_lock(b)),
    "spf-find_vma_rcu": ({}, lambda b, mp: find_vma_rcu(b.mm, BASE, "spf")),
    "pervma-find_vma_rcu": ({}, lambda b, mp: find_vma_rcu(b.mm, BASE, "pervma")),
    "gup": ({}, lambda b, mp: gup_walk(b.mm, BASE)),
    "fault": ({}, _without_rcu(fault_module, lambda b: _anonymous_fault(b.mm, BASE + 5 * PAGE))),
    "pte_offset_map_lock": ({}, _without_rcu(pagetable_module, lambda b: pte_unmap_unlock(
        b.mm, pte_offset_map_lock(b.mm, BASE)))),
}


@pytest.mark.parametrize("case", sorted(WALK_UNPROTECTED))
def test_walk_unprotected(make, monkeypatch, case):
    """Each lockless reader asserts it holds RCU or IRQs off where it relies on what it
    read (lockdep_assert_walk_protected); without, the assert fires at once, before any
    free could meet it."""
    kw, run = WALK_UNPROTECTED[case]
    b = make(**kw).map()
    run(b, monkeypatch)
    site = case.split("-")[0]
    assert only(b, "walk_unprotected@" + site) == (0, 0, 0)


def test_spurious_segv(box, monkeypatch):
    """A classical fault that decides SIGSEGV where a VMA maps the page with the access
    (here find_vma made to miss it) is reported: nothing else would judge a SIGSEGV."""
    monkeypatch.setattr(fault_module, "find_vma", lambda mm, va: None)
    assert do_user_addr_fault(box.mm, BASE + 5 * PAGE, 1) == VM_FAULT_SIGSEGV
    assert only(box, "spurious_segv@fault") == (box.vid(), 1, 0)
