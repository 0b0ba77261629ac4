"""khugepaged collapse and huge PMDs: the collapse and split keep every page's contents,
walkers, faults and teardown handle huge pmds, a pinned page blocks a collapse, and the
stress mix with collapse runs clean in every pairing the kernel uses (the busted
variant ``khugepaged_no_sync`` is caught by tests/test_stress.py's catalogue test)."""
import subprocess
import sys

import pytest

from spfshm import debug, native
from spfshm.check.sweep import sweep
from spfshm.config import Config
from spfshm.diffkernel import Model
from spfshm.mm.gup import gup_fast, gup_hold_and_release
from spfshm.mm.khugepaged import collapse_huge_page, khugepaged_scan
from spfshm.mm.mm_types import HPAGE_NR, PAGE, PROT_BY_NAME, PTE, STAT, TABLE_FREE, TABLE_LIVE
from spfshm.mm.pagetable import (P, PS, RW, alloc_table, deposited_tables,
                                 pgtable_trans_huge_deposit, pmd_entry_of, pte_offset_map_lock,
                                 pte_table_of, pte_unmap_unlock)
from spfshm.mm.spf import do_speculative_page_fault
from spfshm.mm.syscalls import (MAP_FIXED, do_madvise_dontneed, do_mmap, do_mprotect,
                                do_munmap)
from spfshm.run.runner import run_stress

BASE = 0x3F0000000000                       # 2 MiB aligned
BLOCK = HPAGE_NR * PAGE


def make_model(collapse):
    """One CPU's model with two 2 MiB blocks mapped read-write at BASE."""
    m = Model(2 * HPAGE_NR, BASE)
    m.mm.cfg.collapse = collapse
    assert do_mmap(m.mm, BASE, 2 * BLOCK, PROT_BY_NAME["rw"], MAP_FIXED) == BASE
    return m


@pytest.fixture
def model():
    m = make_model("write-lock")
    yield m
    m.close()


def pmd(m, va=BASE):
    t, i = pmd_entry_of(m.mm, va)
    return int(m.mm.pt[t, i])


def kinds(m):
    return {v["kind"] for v in debug.collect(m.arena)}


def store_pages(m, pages):
    for p in pages:
        assert m.cpu.store(BASE + p * PAGE) == "ok"


def loads_ok(m, pages):
    """Every page reads back this CPU's last store there (the lost-update oracle)."""
    for p in pages:
        assert m.cpu.load(BASE + p * PAGE) == "ok"


def test_collapse_keeps_contents_and_accounting(model):
    pages = [0, 1, 7, 100, 511]
    store_pages(model, pages)
    assert collapse_huge_page(model.mm, BASE)
    assert pmd(model) & PS and pmd(model) & RW
    loads_ok(model, pages)
    assert model.cpu.load(BASE + 3 * PAGE) == "ok"      # a hole reads as zero
    model.mm.flush_stats()
    assert sweep(model.mm) > 0 and kinds(model) == set()
    assert int(model.mm.rss_all[:, 0].sum()) == HPAGE_NR


def test_khugepaged_allocation_failure_gives_up(model):
    """khugepaged's huge page allocation fails at random (THP_ALLOC_FAIL): the scan gives
    up, the block stays as it was; a direct collapse (MADV_COLLAPSE) is not subject to
    it."""
    store_pages(model, [0, 9])
    model.mm.thp_alloc_fails = lambda: True
    assert khugepaged_scan(model.mm, BASE) is False
    assert not pmd(model) & PS and model.mm.local[STAT["thp_oom"]] == 1
    loads_ok(model, [0, 9])
    assert collapse_huge_page(model.mm, BASE) and pmd(model) & PS
    loads_ok(model, [0, 9])
    assert sweep(model.mm) > 0 and kinds(model) == set()


def test_split_by_mprotect_dontneed_and_munmap(model):
    pages = [0, 5, 300, 511]
    store_pages(model, pages)
    assert collapse_huge_page(model.mm, BASE)
    store_pages(model, [200])                           # through the huge mapping
    assert do_mprotect(model.mm, BASE + 256 * PAGE, 16 * PAGE, PROT_BY_NAME["r"]) == 0
    assert not pmd(model) & PS                          # split for PTE granularity
    loads_ok(model, pages + [200])
    assert model.cpu.store(BASE + 260 * PAGE) == "segv"
    assert collapse_huge_page(model.mm, BASE + BLOCK) is False     # no page there
    sweep(model.mm)
    assert kinds(model) == set()
    # DONTNEED of part of a huge pmd splits it; of all of it zaps it whole
    store_pages(model, [HPAGE_NR + 1])
    assert collapse_huge_page(model.mm, BASE + BLOCK)
    assert do_madvise_dontneed(model.mm, BASE + BLOCK, PAGE) == 0
    assert not pmd(model, BASE + BLOCK) & PS
    loads_ok(model, [HPAGE_NR + 1])
    assert collapse_huge_page(model.mm, BASE + BLOCK)
    assert do_madvise_dontneed(model.mm, BASE + BLOCK, BLOCK) == 0
    assert pmd(model, BASE + BLOCK) == 0
    sweep(model.mm)
    assert kinds(model) == set()
    assert do_munmap(model.mm, BASE, 2 * BLOCK) == 0
    model.mm.rcu.rcu_barrier()
    sweep(model.mm)
    assert kinds(model) == set() and int(model.mm.rss_all[:, 0].sum()) == 0


def test_pinned_page_blocks_collapse_and_gup_pins_huge_pages(model):
    store_pages(model, [0, 1])
    pins = gup_fast(model.mm, BASE, 2)
    assert len(pins) == 2
    assert collapse_huge_page(model.mm, BASE) is False  # SCAN_PAGE_COUNT
    assert not pmd(model) & PS
    gup_hold_and_release(model.mm, pins)
    assert khugepaged_scan(model.mm, BASE)
    pins = gup_fast(model.mm, BASE, 4)                  # pins the huge page's head
    assert len(pins) == 4 and len({f for _, f, _ in pins}) == 1
    gup_hold_and_release(model.mm, pins)
    sweep(model.mm)
    assert kinds(model) == set()


@pytest.mark.parametrize("collapse,table_free,tlb_flush,mode,workload", [
    ("write-lock", "ipi", "ipi", "classic,spf,pervma", "faults"),
    ("write-lock", "rcu", "no-ipi", "spf,pervma", "mixed"),
    ("write-lock", "rcu", "ipi", "spf,classic", "mixed"),
    ("write-lock", "rcu", "no-ipi", "spf", "faults"),
])
def test_collapse_stress_runs_clean(collapse, table_free, tlb_flush, mode, workload):
    rep = run_stress(Config(cpus=3, ops=2500, seed=41, collapse=collapse, table_free=table_free,
                            tlb_flush=tlb_flush, fault_mode=mode, workload=workload,
                            delay=0.01, check_every=0.3).resolved())
    assert rep["violations"] == [] and rep["errors"] == [] and rep["exit_code"] == 0
    assert rep["thp"]["collapsed"] > 0, rep["thp"]
    assert sum(rep["pipe_ages"]["tables"][1:]) == 0


def test_collapse_option_is_checked():
    r = subprocess.run([sys.executable, "-m", "spfshm", "stress", "--collapse", "sometimes"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--collapse" in r.stderr


def test_reclaim_scan_skips_a_block_collapsed_since_its_scan(model, monkeypatch):
    """Seed reclaim's phase 2 re-reads the pmd: a huge pmd is not a table to remove."""
    from spfshm.mm import reclaim
    store_pages(model, [0])
    assert collapse_huge_page(model.mm, BASE)
    before = pmd(model)
    monkeypatch.setattr(reclaim, "_candidates", lambda mm: [BASE])   # the stale scan
    assert reclaim.reclaim_scan(model.mm) == 0
    assert pmd(model) == before and kinds(model) == set()


def test_sweep_catches_a_huge_pmd_beyond_its_vma_and_torn_subpages(model):
    """The sweep's huge-pmd checks fire: a VMA that no longer covers the whole huge page
    (a split skipped), and a subpage whose state left its head's."""
    from spfshm.mm.vma import current_tree
    from spfshm.mm.mm_types import TREE_HDR
    store_pages(model, [0])
    assert collapse_huge_page(model.mm, BASE)
    mm = model.mm
    head = pmd(model) >> 12 & ((1 << 28) - 1)
    mm.frame_meta[head + 7]["state"] = 0
    row = mm.vma_tree[current_tree(mm)]
    assert row[TREE_HDR] == BASE
    row[TREE_HDR + 1] = BASE + 16 * PAGE             # the VMA now ends inside the block
    mm.tree_cache = (None, None)
    sweep(mm)
    assert {"stale_pte", "frame_leak"} <= kinds(model)
    row[TREE_HDR + 1] = BASE + 2 * BLOCK
    mm.frame_meta[head + 7]["state"] = 1
    mm.tree_cache = (None, None)


def test_collapse_deposits_the_old_table_a_split_refills_it_a_zap_frees_it(model):
    """pgtable_trans_huge_deposit / withdraw: the replaced table stays live, unlinked,
    empty, reachable for the sweep through its deposit; a split links it again, a zap
    frees it at once (zap_deposited_table)."""
    mm = model.mm
    store_pages(model, [0, 9])
    t = pte_table_of(mm, BASE)
    assert collapse_huge_page(mm, BASE)
    pmd_t, _ = pmd_entry_of(mm, BASE)
    assert deposited_tables(mm, pmd_t) == [t] and mm.pt_state[t] == TABLE_LIVE
    assert not mm.pt[t].any()
    sweep(mm)
    assert kinds(model) == set()
    assert do_madvise_dontneed(mm, BASE + 9 * PAGE, PAGE) == 0     # a split
    assert pte_table_of(mm, BASE) == t and deposited_tables(mm, pmd_t) == []
    loads_ok(model, [0])
    assert collapse_huge_page(mm, BASE) and deposited_tables(mm, pmd_t) == [t]
    assert do_madvise_dontneed(mm, BASE, BLOCK) == 0               # a zap of the huge pmd
    assert deposited_tables(mm, pmd_t) == [] and mm.pt_state[t] == TABLE_FREE
    mm.rcu.rcu_barrier()
    sweep(mm, final=True)
    assert kinds(model) == set()


def test_sweep_counts_one_deposited_table_per_huge_pmd(model):
    """A deposit that no huge pmd accounts for is a leak (nobody will withdraw it)."""
    mm = model.mm
    store_pages(model, [0])
    assert collapse_huge_page(mm, BASE)
    pmd_t, _ = pmd_entry_of(mm, BASE)
    extra = alloc_table(mm, PTE)
    native.spin_lock(mm.ptl(pmd_t), mm.cpu)
    pgtable_trans_huge_deposit(mm, pmd_t, extra)
    native.spin_unlock(mm.ptl(pmd_t))
    sweep(mm)
    leaks = [v for v in debug.collect(model.arena) if v["kind"] != "obj_leak"]
    assert [v["signature"] for v in leaks] == ["pt_leak@sweep"]


def test_pte_offset_map_lock_holds_rcu_until_unmap_and_gives_null_on_a_huge_pmd(model):
    """pte_offset_map_lock (6.5+): RCU from the map to pte_unmap_unlock; NULL at once on a
    trans-huge pmd, even one a split holds invalidated (no wait on the pmd lock)."""
    mm = model.mm
    store_pages(model, [0])
    depth = native.rcu_read_depth()
    t = pte_offset_map_lock(mm, BASE)
    assert t >= 0 and native.rcu_read_depth() == depth + 1
    assert native.spin_owner(mm.ptl(t)) == mm.cpu
    pte_unmap_unlock(mm, t)
    assert native.rcu_read_depth() == depth and native.spin_owner(mm.ptl(t)) == -1
    assert collapse_huge_page(mm, BASE)
    assert pte_offset_map_lock(mm, BASE) == -1 and native.rcu_read_depth() == depth
    pmd_t, pmd_i = pmd_entry_of(mm, BASE)
    pmdl = mm.ptl(pmd_t)
    native.spin_lock(pmdl, mm.cpu)                  # a split in progress: pmdp_invalidate
    huge = int(mm.pt[pmd_t, pmd_i])
    mm.pt[pmd_t, pmd_i] = huge & ~P
    try:
        assert pte_offset_map_lock(mm, BASE) == -1 and native.rcu_read_depth() == depth
    finally:
        mm.pt[pmd_t, pmd_i] = huge
        native.spin_unlock(pmdl)


def test_speculative_fault_across_a_collapse_aborts(model):
    """mmap_lock write and vma_start_write keep the classical and per-VMA faults out of
    a collapse, not SPF: one that walked to the PTE table before khugepaged cleared its
    pmd (the collapse runs in its window) finds the pmd changed under the ptl and aborts."""
    mm = model.mm
    mm.walk_rcu = True                   # the collapse's sync is a grace period, which
    store_pages(model, [0])              # this CPU's own walk section does not hold up
    done = []

    def delay(point):
        if point == "spf_before_ptl" and not done:
            done.append(collapse_huge_page(mm, BASE))
    mm.delay = delay
    assert do_speculative_page_fault(mm, BASE + 5 * PAGE, 1) == "pte_map_lock_pmd"
    assert done == [True] and pmd(model) & PS
    loads_ok(model, [0])
    sweep(mm)
    assert kinds(model) == set()
