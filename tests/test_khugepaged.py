"""khugepaged collapse and huge PMDs: the collapse and split keep every page's contents,
walkers, faults and teardown handle huge pmds, a pinned page blocks a collapse, and the
stress mix with collapse runs clean in every pairing the kernel uses (the busted
variant ``khugepaged_no_sync`` is caught by tests/test_stress.py's catalogue test)."""
import subprocess
import sys

import pytest

from spfshm import debug
from spfshm.check.sweep import sweep
from spfshm.config import Config
from spfshm.diffkernel import Model
from spfshm.mm.gup import gup_fast, gup_hold_and_release
from spfshm.mm.khugepaged import collapse_huge_page, khugepaged_scan
from spfshm.mm.mm_types import HPAGE_NR, PAGE, PROT_BY_NAME
from spfshm.mm.pagetable import PS, RW, pmd_entry_of
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


@pytest.fixture(params=["write-lock", "retract"])
def model(request):
    m = make_model(request.param)
    yield m
    m.close()


@pytest.fixture
def retract_model():
    """Only a retract collapse runs under mmap_lock read, so only it can race DONTNEED."""
    m = make_model("retract")
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
    ("retract", "ipi", "ipi", "spf,classic", "mixed"),
    ("retract", "rcu", "ipi", "pervma,spf", "faults"),
    ("retract", "rcu", "no-ipi", "spf", "faults"),
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


def test_dontneed_of_a_block_collapsed_while_its_ptl_was_dropped(retract_model):
    """The zap retry after its forced flush finds a huge pmd: it zaps it whole."""
    m = retract_model
    store_pages(m, range(100))
    done = []

    def delay(point):
        if point == "zap_ptl_dropped" and not done:
            done.append(collapse_huge_page(m.mm, BASE))
    m.mm.delay = delay
    assert do_madvise_dontneed(m.mm, BASE, BLOCK) == 0 and done == [True]
    assert pmd(m) == 0                                    # nothing left mapped
    m.mm.rcu.rcu_barrier()
    m.mm.flush_stats()
    sweep(m.mm)
    assert kinds(m) == set() and int(m.mm.rss_all[:, 0].sum()) == 0


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
