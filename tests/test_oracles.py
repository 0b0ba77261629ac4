"""Oracles without a busted protocol variant of their own, shown to fire by corrupting the
model's state directly (in one process, as one CPU)."""
from collections import Counter

import numpy as np
import pytest

from spfshm import debug
from spfshm.bugs import Bugs
from spfshm.check.sweep import sweep
from spfshm.diffkernel import Model
from spfshm.kernel_exec import default_window_base
from spfshm.mm.memory import change_protection
from spfshm.mm.frames import put_page
from spfshm.mm.mm_types import PAGE, PROT_BY_NAME, TREE_HDR
from spfshm.mm.pagetable import READ_RETRIES, RW, entry_pfn, index, pte_table_of
from spfshm.mm.syscalls import MAP_FIXED, do_mmap, do_mprotect
from spfshm.mm.tlb import assert_no_access_beyond, assert_no_translation, tlb_snapshot
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


def signatures(m):
    return Counter(v["signature"] for v in debug.collect(m.arena))


def frames_of(m, pages):
    t = pte_table_of(m.mm, BASE)
    return [entry_pfn(int(m.mm.pt[t, index(BASE, 1) + p])) for p in range(pages)]


# -- TLB assertions: every permission, every hit, torn entries read again ------------------
def test_readable_entry_after_a_downgrade_to_prot_none(model):
    """mprotect(PROT_NONE) must leave no translation at all, readable ones included."""
    mapped(model, "r", 2)
    assert change_protection(model.mm, BASE, BASE + 2 * PAGE, PROT_BY_NAME["none"])
    assert_no_access_beyond(model.mm, BASE, BASE + 2 * PAGE, PROT_BY_NAME["none"])
    assert signatures(model) == {"stale_tlb@mprotect": 2}


def test_writable_entry_after_a_downgrade_to_read_only(model):
    mapped(model, "rw", 2)
    assert change_protection(model.mm, BASE, BASE + 2 * PAGE, PROT_BY_NAME["r"])
    assert_no_access_beyond(model.mm, BASE, BASE + 2 * PAGE, PROT_BY_NAME["r"])
    assert signatures(model) == {"stale_tlb@mprotect": 2}


@pytest.mark.parametrize("start,prot", [("r", "none"), ("rw", "none"), ("rw", "r")])
def test_mprotect_without_its_flush_is_caught(model, start, prot):
    """The busted variant mprotect_no_flush, downgrading to PROT_NONE as well as to
    read-only; with the flush the same mprotect is clean."""
    mapped(model, start, 2)
    model.mm.bugs = Bugs(("mprotect_no_flush",))
    assert do_mprotect(model.mm, BASE, PAGE, PROT_BY_NAME[prot]) == 0
    assert signatures(model) == {"stale_tlb@mprotect": 1}
    model.mm.bugs = Bugs()
    assert do_mprotect(model.mm, BASE + PAGE, PAGE, PROT_BY_NAME[prot]) == 0
    assert signatures(model) == {"stale_tlb@mprotect": 1}


def test_every_translation_to_a_freed_frame_is_reported(model):
    mapped(model, "rw", 2)
    assert_no_translation(model.mm, frames_of(model, 2))
    assert signatures(model) == {"frame_uaf@zap": 2}


def test_a_frame_freed_while_translated_is_reported_at_the_free(model):
    """free_frame's own assertion (KASAN at the free, whoever frees: a put_page of the
    last reference that bypassed the mmu_gather, as zap_huge_pmd freeing its huge page
    before the flush would): the PTE cleared, the TLB entry not flushed."""
    mapped(model, "rw", 2)
    t, i = pte_table_of(model.mm, BASE), index(BASE, 1)
    f = frames_of(model, 1)[0]
    model.mm.pt[t, i] = 0
    model.mm.frame_meta[f]["mapcount"] -= 1
    put_page(model.mm, f)
    assert signatures(model) == {"frame_uaf@zap": 1}


class Refilling:
    """mm.tlbs as seen while its CPU refills one entry again and again: before each of the
    first ``changes`` reads, the entry is refilled with another page (a new one each
    time, so its tag never comes back), the last time with the translation it held."""

    def __init__(self, tlbs, slot, changes):
        self.tlbs, self.slot = tlbs, slot
        self.final = tlbs[0, slot].copy()
        self.left = changes

    def _change(self):
        if self.left:
            self.left -= 1
            e = self.final.copy()
            e[0] += 2 * len(self.tlbs[0]) * self.left        # same slot, another page
            e[3] += len(self.tlbs[0]) * PAGE * self.left
            self.tlbs[0, self.slot] = e

    def __getitem__(self, key):
        self._change()
        return self.tlbs[key]

    def copy(self):
        self._change()
        return self.tlbs.copy()


def refilling(m):
    """The model's TLB, with its one valid entry (a translation) being refilled."""
    mapped(m, "rw", 1)
    tlbs = m.mm.tlbs
    return tlbs, int(np.flatnonzero(tlbs[0, :, 0] & 1)[0])


@pytest.mark.parametrize("changes", [2, 7, READ_RETRIES // 2])
def test_an_entry_torn_while_read_is_read_again(model, changes):
    """A torn entry is not skipped: it is read again until it holds still, and its
    stable value counts (here a translation to a frame being freed)."""
    tlbs, slot = refilling(model)
    model.mm.tlbs = Refilling(tlbs, slot, changes)
    assert_no_translation(model.mm, frames_of(model, 1))
    model.mm.tlbs = tlbs
    assert signatures(model) == {"frame_uaf@zap": 1}


def test_an_entry_that_never_holds_still_is_an_error(model):
    tlbs, slot = refilling(model)
    model.mm.tlbs = Refilling(tlbs, slot, 10 * READ_RETRIES)
    with pytest.raises(RuntimeError, match="kept changing"):
        tlb_snapshot(model.mm)
    model.mm.tlbs = tlbs
