"""Oracles without a busted protocol variant of their own, shown to fire by corrupting the
model's state directly (in one process, as one CPU)."""
import pytest

from spfshm import debug
from spfshm.check.sweep import sweep
from spfshm.diffkernel import Model
from spfshm.kernel_exec import default_window_base
from spfshm.mm.frames import encode_value
from spfshm.mm.mm_types import PAGE, POISON, PROT_BY_NAME, TREE_HDR
from spfshm.mm.pagetable import RW, entry_pfn, index, pte_table_of
from spfshm.mm.syscalls import MAP_FIXED, do_mmap
from spfshm.mm.vma import current_tree

BASE = default_window_base()


@pytest.fixture
def model():
    m = Model(64, BASE)
    yield m
    m.close()


def kinds(m):
    return {v["kind"] for v in debug.collect(m.arena)}


def mapped(m, prot="rw", pages=4):
    assert do_mmap(m.mm, BASE, pages * PAGE, PROT_BY_NAME[prot], MAP_FIXED) == BASE
    for p in range(pages):
        assert m.cpu.store(BASE + p * PAGE) == "ok" if prot == "rw" else \
            m.cpu.load(BASE + p * PAGE) == "ok"
    t = pte_table_of(m.mm, BASE)
    return t, index(BASE, 1)


def test_clean_model_sweeps_clean(model):
    mapped(model)
    assert sweep(model.mm) > 0 and kinds(model) == set()


def test_lost_update_and_bad_value(model):
    cpu = model.cpu
    cpu.last_store[BASE] = encode_value(0, 9)
    cpu.check_value(BASE, encode_value(0, 5))         # an older store of ours came back
    cpu.check_value(BASE, POISON)                     # a freed frame's poison
    cpu.check_value(BASE, encode_value(0, 9))         # the latest: fine
    cpu.check_value(BASE, 0)                          # zero: always fine
    assert kinds(model) == {"lost_update", "bad_value"}


def test_pte_more_permissive_than_vma(model):
    t, i = mapped(model, "r")
    model.mm.pt[t, i] |= RW
    sweep(model.mm)
    assert "pte_prot" in kinds(model)


def test_mapcount_and_rss(model):
    t, i = mapped(model)
    model.mm.frame_meta[entry_pfn(int(model.mm.pt[t, i]))]["mapcount"] += 1
    model.mm.rss[0] += 1
    sweep(model.mm)
    assert {"mapcount", "rss"} <= kinds(model)


def test_pte_to_a_free_frame(model):
    t, i = mapped(model)
    model.mm.frame_meta[entry_pfn(int(model.mm.pt[t, i]))]["state"] = 0
    sweep(model.mm)
    assert "frame_free_mapped" in kinds(model)


def test_freed_table_still_linked(model):
    t, _ = mapped(model)
    model.mm.pt_state[t] = 0
    sweep(model.mm)
    assert "pt_free_reachable" in kinds(model)


def test_overlapping_vmas(model):
    mapped(model)
    mm = model.mm
    assert do_mmap(mm, BASE + 8 * PAGE, 4 * PAGE, PROT_BY_NAME["rw"], MAP_FIXED) > 0
    row = mm.vma_tree[current_tree(mm)]
    assert row[1] == 2 and row[TREE_HDR + 3] == BASE + 8 * PAGE
    row[TREE_HDR + 3] = BASE + 2 * PAGE            # the second VMA now starts inside the first
    mm.tree_cache = (None, None)
    sweep(mm)
    assert "vma_overlap" in kinds(model)
