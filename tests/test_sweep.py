"""The quiescent sweep's checks fire on a state corrupted in a controlled way (in one
process, as one CPU), each with its exact kind@site, and stay silent on correct states:
permissions against the VMA, TLB generations, the pools (double frees, lost and listed
objects, leaks) and, at the end of a run, objects left waiting for their free."""
from collections import Counter

import pytest

from spfshm import debug
from spfshm.check.sweep import (POOL_FRAMES, POOL_HPAGES, POOL_TABLES, POOL_TREES,
                                POOL_VMAS, sweep)
from spfshm.config import Config
from spfshm.diffkernel import Model
from spfshm.mm.frames import alloc_frame, free_frame, put_page
from spfshm.mm.khugepaged import collapse_huge_page
from spfshm.mm.mm_types import (HPAGE_NR, PAGE, PROT_BY_NAME, PTE, TABLE_FREE, TABLE_PENDING,
                                TREE_HDR)
from spfshm.mm.mmap_lock import mmap_write_lock, mmap_write_unlock
from spfshm.mm.pagetable import (P, PROTNONE, RW, alloc_table, entry_pfn,
                                 free_table_now, index, mark_pending, mk_entry,
                                 pmd_entry_of, pte_table_of)
from spfshm.mm.syscalls import MAP_FIXED, do_madvise_dontneed, do_mmap, do_mprotect, do_munmap
from spfshm.mm.vma import TREE_LIVE, current_tree, vm_area_alloc, vm_area_free
from spfshm.run import runner

BASE = 0x3F0000000000                       # 2 MiB aligned
BLOCK = HPAGE_NR * PAGE


@pytest.fixture
def model():
    m = Model(2 * HPAGE_NR, BASE)
    yield m
    m.close()


def found(m):
    """Every violation recorded so far, as kind@site -> count."""
    return Counter(v["signature"] for v in debug.collect(m.arena))


def records(m, signature):
    return [r for r in m.arena["viol"][0][:int(m.arena["viol_count"][0, 0])]
            if "%s@%s" % (debug.KIND_NAMES[r["kind"]], debug.SITES[r["site"]]) == signature]


def mapped(m, prot="rw", pages=2, at=BASE):
    """pages pages mapped at ``at`` and touched (stored to, or loaded when read-only), so
    the PTEs are present and the TLB holds their translations.  Returns (PTE table, index
    of the first PTE)."""
    assert do_mmap(m.mm, at, pages * PAGE, PROT_BY_NAME[prot], MAP_FIXED) == at
    for p in range(pages):
        assert (m.cpu.store if prot == "rw" else m.cpu.load)(at + p * PAGE) == "ok"
    return pte_table_of(m.mm, at), index(at, PTE)


def test_correct_states_sweep_clean(model):
    mm = model.mm
    mapped(model, "rw", 4)
    assert do_mprotect(mm, BASE, PAGE, PROT_BY_NAME["none"]) == 0
    assert do_mprotect(mm, BASE + PAGE, PAGE, PROT_BY_NAME["r"]) == 0
    assert model.cpu.load(BASE) == "segv" and model.cpu.load(BASE + PAGE) == "ok"
    assert do_madvise_dontneed(mm, BASE + 2 * PAGE, PAGE) == 0
    assert sweep(mm) > 0 and found(model) == {}
    assert do_munmap(mm, BASE, 4 * PAGE) == 0
    mm.rcu.rcu_barrier()
    assert sweep(mm, final=True) > 0 and found(model) == {}


# -- every permission against the VMA ------------------------------------------------------
def test_present_pte_under_a_prot_none_vma(model):
    t, i = mapped(model, "r", 1)
    assert do_mprotect(model.mm, BASE, PAGE, PROT_BY_NAME["none"]) == 0
    e = int(model.mm.pt[t, i])
    assert e & PROTNONE and not e & P
    model.mm.pt[t, i] = (e & ~PROTNONE) | P          # readable again, the VMA is not
    sweep(model.mm)
    assert found(model) == {"pte_prot@sweep": 1}
    assert records(model, "pte_prot@sweep")[0]["a1"] == PROT_BY_NAME["none"]


def test_prot_none_pte_under_an_accessible_vma(model):
    t, i = mapped(model, "rw", 1)
    assert do_mprotect(model.mm, BASE, PAGE, PROT_BY_NAME["none"]) == 0
    vid = int(model.mm.vma_tree[current_tree(model.mm)][TREE_HDR + 2])
    model.mm.vma[vid]["prot"] = PROT_BY_NAME["rw"]     # the VMA changed, the PTE did not
    sweep(model.mm)
    assert found(model) == {"pte_prot@sweep": 1}


def test_writable_pte_under_a_read_only_vma(model):
    t, i = mapped(model, "r", 1)
    model.mm.pt[t, i] |= RW
    sweep(model.mm)
    assert found(model) == {"pte_prot@sweep": 1}


# -- the TLB entry's generation ------------------------------------------------------------
def test_tlb_entry_for_a_frame_freed_and_reused_at_the_same_pfn(model):
    """The PTE is zapped without a flush, the frame freed and handed out again (the
    per-CPU cache is LIFO: same pfn), and mapped at the same address: frame, PTE and
    permissions all agree with the stale TLB entry; only its generation does not."""
    mm = model.mm
    t, i = mapped(model, "rw", 1)
    f = entry_pfn(int(mm.pt[t, i]))
    gen = int(mm.frame_gen[f])
    mm.pt[t, i] = 0
    mm.frame_meta[f]["mapcount"] = 0
    put_page(mm, f)
    assert alloc_frame(mm) == f and int(mm.frame_gen[f]) == gen + 1
    mm.frame_meta[f]["mapcount"] = 1
    mm.pt[t, i] = mk_entry(f, gen + 1, P | RW)
    sweep(mm)
    # free_frame's own assertion saw the entry at the free; the sweep sees it again
    assert found(model) == {"frame_uaf@zap": 1, "frame_uaf@sweep": 1}
    r = records(model, "frame_uaf@sweep")[0]
    assert (r["va"], r["a0"], r["a1"], r["a2"]) == (BASE, gen, gen + 1, f)


def new_vma_record(mm):
    mmap_write_lock(mm)
    try:
        return vm_area_alloc(mm, BASE, BASE + PAGE, PROT_BY_NAME["rw"])
    finally:
        mmap_write_unlock(mm)


# -- double frees, at the free -------------------------------------------------------------
def test_frame_freed_twice_is_reported_at_the_free_and_listed_once(model):
    mm = model.mm
    f = alloc_frame(mm)
    put_page(mm, f)
    free_frame(mm, f)                    # freed again
    assert found(model) == {"double_free@free_frame": 1}
    sweep(mm)                            # the free lists hold it once
    assert found(model) == {"double_free@free_frame": 1}


def test_frame_put_without_a_reference_is_a_double_free(model):
    mm = model.mm
    f = alloc_frame(mm)
    put_page(mm, f)
    put_page(mm, f)                      # a reference it no longer has
    assert found(model) == {"double_free@put_page": 1}
    sweep(mm)
    assert found(model) == {"double_free@put_page": 1}


def test_table_freed_twice_is_reported_at_the_free(model):
    mm = model.mm
    t = alloc_table(mm, PTE)
    free_table_now(mm, t)
    free_table_now(mm, t)
    assert found(model) == {"double_free@free_pgtables": 1}
    sweep(mm)
    assert found(model) == {"double_free@free_pgtables": 1}


@pytest.mark.parametrize("freed", [False, True])
def test_table_unlinked_twice_is_reported_at_the_unlink(model, freed):
    """Unlinked again while it waits for its sync, or after it was freed: either way a
    second free would follow."""
    mm = model.mm
    t = alloc_table(mm, PTE)
    mark_pending(mm, t, 0)
    if freed:
        free_table_now(mm, t)
    mark_pending(mm, t, 0)
    assert found(model) == {"double_free@free_pgtables": 1}
    assert records(model, "double_free@free_pgtables")[0]["a2"] == \
        (TABLE_FREE if freed else TABLE_PENDING)
    if not freed:
        free_table_now(mm, t)            # its one free
    sweep(mm, final=True)
    assert found(model) == {"double_free@free_pgtables": 1}


def test_vma_record_freed_twice_is_reported_at_the_free(model):
    mm = model.mm
    vid = new_vma_record(mm)
    vm_area_free(mm, vid)
    vm_area_free(mm, vid)                # while it waits for its grace period
    mm.rcu.rcu_barrier()
    vm_area_free(mm, vid)                # after it was freed
    assert found(model) == {"double_free@vm_area_free": 2}
    sweep(mm, final=True)
    assert found(model) == {"double_free@vm_area_free": 2}


# -- the pools, in every sweep -------------------------------------------------------------
POOLS = [(POOL_TABLES, "tables"), (POOL_FRAMES, "frames"), (POOL_HPAGES, "hpages"),
         (POOL_VMAS, "vmas"), (POOL_TREES, "trees")]


@pytest.mark.parametrize("code,name", POOLS)
def test_object_on_the_free_lists_twice(model, code, name):
    pool = getattr(model.mm, name)
    i = pool.alloc(0)
    pool.free(0, i)
    pool.free(0, i)                      # behind the free functions' backs
    sweep(model.mm)
    assert found(model) == {"double_free@sweep": 1}
    r = records(model, "double_free@sweep")[0]
    assert (r["a0"], r["a1"], r["a2"]) == (code, i, 2)


def test_duplicates_in_different_cpu_caches_count(model):
    """An object in one CPU's cache and on the global stack is on the free lists twice."""
    mm = model.mm
    i = mm.frames.alloc(0)
    mm.frames.free(0, i)
    mm.frames.pcp[1, 0] = 1              # and in the sweeper's (the last row) cache
    mm.frames.pcp[1, 1] = i
    sweep(mm)
    assert found(model) == {"double_free@sweep": 1}


@pytest.mark.parametrize("code,name", POOLS)
def test_free_object_on_no_free_list(model, code, name):
    i = getattr(model.mm, name).alloc(0)        # taken, but its state still says free
    sweep(model.mm)
    assert found(model) == {"free_unlisted@sweep": 1}
    r = records(model, "free_unlisted@sweep")[0]
    assert (r["a0"], r["a1"]) == (code, i)


@pytest.fixture
def busy():
    """A model with every kind of object in use: a huge page (collapsed) in the first
    block, small pages in the second."""
    m = Model(2 * HPAGE_NR, BASE)
    m.mm.cfg.collapse = "write-lock"
    assert do_mmap(m.mm, BASE, 2 * BLOCK, PROT_BY_NAME["rw"], MAP_FIXED) == BASE
    for va in (BASE, BASE + BLOCK):
        assert m.cpu.store(va) == "ok"
    assert collapse_huge_page(m.mm, BASE)
    m.mm.rcu.rcu_barrier()
    yield m
    m.close()


def in_use(m, name):
    """One object of pool ``name`` that the busy model uses."""
    mm = m.mm
    pmd_t, pmd_i = pmd_entry_of(mm, BASE)
    return {"tables": pte_table_of(mm, BASE + BLOCK),
            "frames": entry_pfn(int(mm.pt[pte_table_of(mm, BASE + BLOCK), 0])),
            "hpages": (entry_pfn(int(mm.pt[pmd_t, pmd_i])) - mm.g.nsmall) // HPAGE_NR,
            "vmas": int(mm.vma_tree[current_tree(mm)][TREE_HDR + 2]),
            "trees": current_tree(mm)}[name]


@pytest.mark.parametrize("code,name", POOLS)
def test_object_in_use_on_a_free_list(busy, code, name):
    sweep(busy.mm)
    assert found(busy) == {}
    i = in_use(busy, name)
    getattr(busy.mm, name).free(0, i)
    sweep(busy.mm)
    assert found(busy) == {"listed_inuse@sweep": 1}
    r = records(busy, "listed_inuse@sweep")[0]
    assert (r["a0"], r["a1"]) == (code, i)


def test_live_vma_record_and_tree_published_nowhere(model):
    mm = model.mm
    vid = new_vma_record(mm)             # never published
    tree = mm.trees.alloc(0)
    mm.vma_tree[tree][0] = TREE_LIVE
    sweep(mm)
    assert found(model) == {"obj_leak@sweep": 2}
    assert sorted((int(r["a0"]), int(r["a1"])) for r in records(model, "obj_leak@sweep")) \
        == [(POOL_VMAS, vid), (POOL_TREES, tree)]


# -- the final sweep -----------------------------------------------------------------------
def test_final_sweep_finds_what_was_never_freed(model):
    """munmap leaves its tables (--table-free rcu), its VMA record and the old tree
    waiting for a grace period: fine in a sweep, a leak in the final one (which comes
    after every CPU's rcu_barrier), and gone after the barrier."""
    mm = model.mm
    mm.cfg.table_free = "rcu"
    mapped(model, "rw", 2)
    assert do_munmap(mm, BASE, 2 * PAGE) == 0
    sweep(mm)
    assert found(model) == {}
    sweep(mm, final=True)
    pools = Counter(int(r["a0"]) for r in records(model, "never_freed@sweep"))
    assert set(found(model)) == {"never_freed@sweep"}
    assert pools[POOL_VMAS] == 1 and pools[POOL_TREES] >= 1 and pools[POOL_TABLES] == 3
    mm.rcu.rcu_barrier()
    before = sum(found(model).values())
    sweep(mm, final=True)
    assert sum(found(model).values()) == before


def test_final_sweep_finds_a_table_unlinked_and_never_freed(model):
    mm = model.mm
    t = alloc_table(mm, PTE)
    mark_pending(mm, t, 0)               # unlinked, and nobody will free it
    sweep(mm)
    assert found(model) == {}
    sweep(mm, final=True)
    assert found(model) == {"never_freed@sweep": 1}
    r = records(model, "never_freed@sweep")[0]
    assert (r["a0"], r["a1"], r["a2"]) == (POOL_TABLES, t, TABLE_PENDING)


@pytest.mark.parametrize("cfg", [
    dict(fault_mode="classic", table_free="ipi"),
    dict(fault_mode="spf,pervma", table_free="rcu", reclaim="ptreclaim", workload="faults"),
    dict(fault_mode="pervma,spf", table_free="rcu", collapse="write-lock", workload="faults"),
])
def test_correct_run_ends_with_a_clean_final_sweep(cfg, monkeypatch):
    """The end of a correct run: every CPU's rcu_barrier has run, nothing is pending."""
    calls = []

    def spy(mm, final=False):
        calls.append(final)
        return sweep(mm, final=final)
    monkeypatch.setattr(runner, "sweep", spy)
    rep = runner.run_stress(Config(cpus=2, ops=1500, seed=5, check_every=0, **cfg).resolved())
    assert rep["violations"] == [] and rep["errors"] == [] and rep["exit_code"] == 0
    assert calls == [True] and rep["tables"]["freed"] > 0


# -- the reachability walk is the one place a linked free table is found -------------------
def test_linked_table_not_live_is_reported_once_where_it_is_linked(model):
    mm = model.mm
    mapped(model, "rw", 1)
    assert do_madvise_dontneed(mm, BASE, PAGE) == 0      # an empty, live PTE table
    t = pte_table_of(mm, BASE)
    mm.pt_state[t] = TABLE_PENDING
    sweep(mm)
    assert found(model) == {"pt_free_reachable@sweep": 1}
    r = records(model, "pt_free_reachable@sweep")[0]
    assert (r["a0"], r["a2"]) == (t, pmd_entry_of(mm, BASE)[0])


def test_with_the_caches_off_a_freed_object_is_the_next_any_cpu_takes(model):
    """--pcp off (zone_pcp_disable): a free goes straight to the global stack, so the
    other CPU's next allocation is that object; with the caches on it waits in the
    freeing CPU's cache.  The sweep accounts for both."""
    from spfshm.mm import pool
    mm = model.mm
    for batch, other_gets_it in ((0, True), (pool.BATCH, False)):
        p = pool.Pool(model.arena, "frames", mm.g.nsmall, batch=batch)
        i = p.alloc(0)
        p.free(0, i)
        j = p.alloc(1)
        assert (j == i) == other_gets_it, (batch, i, j)
        p.free(1, j)
    sweep(mm)
    assert found(model) == {}
