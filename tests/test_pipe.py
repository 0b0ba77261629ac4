"""Pipe-count ages (rcutorture's pipe check): a retired table, VMA or frame read by a
lockless walker after a sync that began after its retirement is reported; one read
before any such sync is not.  Driven directly, as one CPU: each object's sync is
completed by hand, which is what a broken protocol would let happen."""
import pytest

from spfshm import debug, native
from spfshm.diffkernel import Model
from spfshm.mm import pipe
from spfshm.mm.gup import gup_fast, gup_hold_and_release
from spfshm.mm.mm_types import PAGE, PROT_BY_NAME, PTE
from spfshm.mm.pagetable import check_table, entry_gen, mark_pending, pmd_entry_of, \
    pte_table_of
from spfshm.mm.syscalls import MAP_FIXED, do_mmap
from spfshm.mm.vma import find_vma, read_vma

BASE = 0x3F0000000000


@pytest.fixture
def model():
    m = Model(64, BASE)
    assert do_mmap(m.mm, BASE, 8 * PAGE, PROT_BY_NAME["rw"], MAP_FIXED) == BASE
    assert m.cpu.store(BASE) == "ok"
    yield m
    m.close()


def ages(m, kind):
    return pipe.histograms(m.arena, 1)[kind]


def reported(m):
    return [v for v in debug.collect(m.arena) if v["kind"] == "pipe_age"]


def ipi_sync(mm):
    mm.pipe.ipi_sync_done(mm.pipe.ipi_sync_begin())


def gp(mm):
    mm.pipe.gp_done(native.rcu_start_gp())


def test_table_read_after_a_later_shootdown(model):
    mm = model.mm
    t = pte_table_of(mm, BASE)
    pmd_t, pmd_i = pmd_entry_of(mm, BASE)
    tag = entry_gen(int(mm.pt[pmd_t, pmd_i]))
    ipi_sync(mm)                          # before the retirement: does not count
    mark_pending(mm, t)
    mm.pipe.retire(pipe.TABLES, t, pipe.CLOCK_IPI)
    assert check_table(mm, t, tag, PTE, "spf_walk", BASE)
    assert reported(model) == [] and ages(model, "tables")[0] == 1
    ipi_sync(mm)
    check_table(mm, t, tag, PTE, "spf_walk", BASE)
    assert ages(model, "tables")[1] == 1 and reported(model)[0]["site"] == "spf_walk"


def test_vma_read_under_rcu_after_a_grace_period(model):
    mm = model.mm
    v = find_vma(mm, BASE)
    mm.vma[v.id]["state"] = 2             # VMA_PENDING: detached, waiting for its GP
    mm.pipe.retire(pipe.VMAS, v.id, pipe.CLOCK_RCU)
    native.rcu_read_lock()
    try:
        read_vma(mm, v.id, "spf", BASE, lockless=True)
        assert reported(model) == []
        gp(mm)
        read_vma(mm, v.id, "spf", BASE, lockless=True)
    finally:
        native.rcu_read_unlock()
    assert ages(model, "vmas")[:2] == [1, 1] and len(reported(model)) == 1
    mm.vma[v.id]["state"] = 1


def test_frame_pinned_after_a_later_shootdown(model):
    mm = model.mm
    t = pte_table_of(mm, BASE)
    f = int(mm.pt[t, 0]) >> 12 & ((1 << 28) - 1)
    mm.pipe.retire(pipe.FRAMES, f, pipe.CLOCK_IPI)
    gup_hold_and_release(mm, gup_fast(mm, BASE, 1))
    assert reported(model) == []
    ipi_sync(mm)
    gup_hold_and_release(mm, gup_fast(mm, BASE, 1))
    assert ages(model, "frames")[:2] == [1, 1] and reported(model)[0]["site"] == "gup"
