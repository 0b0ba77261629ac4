"""The v6.15+ per-VMA lock (--vma-lock refcnt; mm/vma_lock.py, native/spf_vmref.h) and
its SLAB_TYPESAFE_BY_RCU VMA records (mm/vma_cache.py): the reference count's rules, the
writer's waits, vma_start_read's checks against a record detached, written or reused by
another mm, and the oracles that catch each step left out."""
import threading
import time

import pytest

from spfshm import native
from spfshm.config import Config, ConfigError
from spfshm.mm import pervma, syscalls
from spfshm.mm.fault import VM_FAULT_OK
from spfshm.mm.mm_types import PROT_BY_NAME, STAT
from spfshm.mm.mmap_lock import mmap_write_lock, mmap_write_unlock
from spfshm.mm.syscalls import MAP_FIXED, do_mmap, do_munmap
from spfshm.mm.vma_lock import (EAGAIN, MM_OTHER, MM_SELF, vma_end_read, vma_mark_detached,
                                vma_refcount_put, vma_start_read, vma_start_write)
from test_fires import BASE, PAGE, fired, make, only  # noqa: F401  (make: the fixture)

OFFSET = native.lib.SPF_VMA_LOCK_OFFSET
HANG_S = 30.0


def refcnt(**kw):
    return dict(vma_lock="refcnt", fault_mode="pervma", **kw)


def count(b, vid):
    return int(b.mm.vma[vid]["vm_refcnt"])


# -- the primitive ----------------------------------------------------------------------
def test_reference_count_rules():
    """0 is detached (no reference taken, the old count says so); a writer's offset
    stops new references; the put that leaves the writer alone is the one it waits for;
    a put of 0 is refused (refcount_t saturates) and says so."""
    word = native.ffi.new("uint32_t *", 0)
    old = native.ffi.new("uint32_t *")
    assert native.lib.spf_vmref_get(word, old) == 0 and old[0] == 0
    word[0] = 1                                                   # attached
    assert native.lib.spf_vmref_get(word, old) == 1 and old[0] == 1 and word[0] == 2
    word[0] = OFFSET + 1                                          # a writer is in
    assert native.lib.spf_vmref_get(word, old) == 0 and old[0] == OFFSET + 1
    word[0] = 1
    assert native.lib.spf_vmref_put(word) == 1 and word[0] == 0
    assert native.lib.spf_vmref_put(word) == 0 and word[0] == 0   # refused
    assert native.lib.spf_vmref_dec_and_test(word) == -1 and word[0] == 0
    assert native.lib.spf_vmref_enter_locked(word, 0) == 0        # detached: no wait


@pytest.mark.parametrize("detaching", [False, True], ids=["write", "detach"])
def test_writer_waits_for_the_readers(detaching):
    """__vma_enter_locked returns only once the readers' references are gone: the
    writer (a thread, blocked in C with the GIL released) is still waiting while one is
    held, and goes on when the reader's put wakes it.  Its busted twin, a writer that
    does not wait, returns at once and fails the first assertion."""
    word = native.ffi.new("uint32_t *", 1 if detaching else 2)    # + one reader
    done = threading.Event()

    def writer():
        assert native.lib.spf_vmref_enter_locked(word, int(detaching)) == 1
        done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.2)
    assert not done.is_set() and word[0] == OFFSET + (1 if detaching else 2)
    native.lib.spf_vmref_put(word)
    assert done.wait(HANG_S)
    assert word[0] == OFFSET + (0 if detaching else 1)
    assert native.lib.spf_vmref_exit_locked(word) == int(detaching)


# -- configuration ----------------------------------------------------------------------
def test_refcnt_has_no_speculative_faults():
    assert Config(cpus=2, vma_lock="refcnt").resolved().fault_mode == "pervma,classic"
    with pytest.raises(ConfigError, match="--vma-lock refcnt"):
        Config(cpus=2, vma_lock="refcnt", fault_mode="spf,pervma").resolved()
    with pytest.raises(ConfigError, match="--vma-lock must be"):
        Config(cpus=2, vma_lock="seqlock").resolved()
    cfg = Config(cpus=2, bugs=("refcnt_no_vm_mm_check",)).resolved()
    assert cfg.vma_lock == "refcnt" and "spf" not in cfg.fault_modes()
    assert "--vma-lock refcnt" in cfg.repro()


# -- the protocol -----------------------------------------------------------------------
def test_a_fault_holds_a_reference_and_gives_it_back(make):
    b = make(**refcnt()).map()
    vid = b.vid()
    assert count(b, vid) == 1                                     # attached, unlocked
    assert pervma.do_pervma_fault(b.mm, BASE + 5 * PAGE, 1) == VM_FAULT_OK
    assert count(b, vid) == 1 and b.mm.waiting[5] == 0 and fired(b) == []


def test_munmap_detaches_and_frees_at_once(make, monkeypatch):
    """No grace period: the record is back on the free list (count 0) when munmap
    returns, and a lookup that found it gets EAGAIN (VMA_LOCK_MISS), not a reference."""
    b = make(**refcnt()).map()
    monkeypatch.setattr(b.mm, "other_mm_reuses", lambda: False)
    vid = b.vid()
    assert do_munmap(b.mm, BASE, 8 * PAGE) == 0
    assert count(b, vid) == 0 and b.mm.vma[vid]["state"] == 0
    assert vma_start_read(b.mm, vid) is EAGAIN
    assert fired(b) == []


@pytest.mark.parametrize("bugs", [(), ("refcnt_no_seq_recheck",)], ids=["correct", "busted"])
def test_a_reference_taken_past_a_writer(make, bugs):
    """Between vma_start_read's hint and its increment a writer write-locks the VMA and
    leaves __vma_exit_locked (the count is 1 again, so the increment succeeds).  Step (d)
    drops the reference; without it the reader holds a written VMA."""
    b = make(bugs=bugs, **refcnt()).map()
    vid, mm = b.vid(), b.mm

    def writer(point):
        if point == "vma_start_read":
            mm.delay = lambda point: None
            mmap_write_lock(mm)
            vma_start_write(mm, vid)
    mm.delay = writer
    got = vma_start_read(mm, vid)
    assert got is bool(bugs)
    if got:
        vma_end_read(mm, vid)
    mmap_write_unlock(mm)
    assert count(b, vid) == 1
    if bugs:
        assert only(b, "vma_read_while_written@vma_end_read")[0] == vid
    else:
        assert fired(b) == []


def _reused_by_the_other_mm(b, monkeypatch):
    """The VMA at BASE, found by a lookup, then unmapped and its record taken at once by
    the other mm at the same address (what a lookup that was overtaken finds)."""
    monkeypatch.setattr(b.mm, "other_mm_reuses", lambda: True)
    vid = b.vid()
    assert do_munmap(b.mm, BASE, 8 * PAGE) == 0
    rec = b.mm.vma[vid]
    assert rec["vm_mm"] == MM_OTHER and count(b, vid) == 1 and rec["start"] == BASE
    return vid


@pytest.mark.parametrize("bugs", [(), ("refcnt_no_vm_mm_check",)], ids=["correct", "busted"])
def test_a_record_reused_by_another_mm(make, monkeypatch, bugs):
    """Step (c): the reference taken on the other mm's VMA is dropped (the count back to
    the other mm's 1) and the fault falls back; without it the fault runs in our mm
    under the other mm's VMA, which the fault's own check reports."""
    b = make(bugs=bugs, **refcnt()).map()
    vid = _reused_by_the_other_mm(b, monkeypatch)
    monkeypatch.setattr(pervma, "find_vma_rcu", lambda mm, va, site: (vid, 0))
    got = pervma.do_pervma_fault(b.mm, BASE + PAGE, 1)
    assert count(b, vid) == 1
    if bugs:
        assert got == VM_FAULT_OK
        assert fired(b)[0][:3] == ("vma_foreign@fault", vid, MM_OTHER)
    else:
        assert got is None and fired(b) == []
        assert b.mm.local[STAT["vma_lock_abort"]] == 1


def test_a_foreign_vma_released(make, monkeypatch):
    b = make(bugs=("refcnt_no_vm_mm_check",), **refcnt()).map()
    vid = _reused_by_the_other_mm(b, monkeypatch)
    assert vma_start_read(b.mm, vid) is True
    vma_end_read(b.mm, vid)
    assert only(b, "vma_foreign@vma_end_read")[:2] == (vid, MM_OTHER)


def test_the_other_mm_unmaps_after_the_next_operation(make, monkeypatch):
    """vma_cache step 2: the record lent during operation n stays the other mm's until
    operation n ends; then it is detached and freed."""
    from spfshm.mm.vma_cache import other_mm_unmap
    b = make(**refcnt()).map()
    vid = _reused_by_the_other_mm(b, monkeypatch)
    other_mm_unmap(b.mm)
    assert b.mm.vma[vid]["vm_mm"] == MM_OTHER
    b.mm.local[STAT["ops"]] += 1
    other_mm_unmap(b.mm)
    assert count(b, vid) == 0 and b.mm.vma[vid]["state"] == 0 and b.mm.lent == []
    assert fired(b) == []


# -- the oracles (FIRES) ----------------------------------------------------------------
def test_put_of_a_count_of_zero(make):
    b = make(**refcnt()).map()
    vid = b.vid()
    b.mm.vma[vid]["vm_refcnt"] = 0
    vma_refcount_put(b.mm, vid)
    assert only(b, "vma_refcnt@vma_refcount_put")[:3] == (vid, 0, 1)


def test_detach_of_a_count_of_zero(make):
    b = make(**refcnt()).map()
    vid = b.vid()
    b.mm.vma[vid]["vm_refcnt"] = 0
    mmap_write_lock(b.mm)
    vma_start_write(b.mm, vid)                    # detached already: nothing to wait for
    vma_mark_detached(b.mm, vid)
    mmap_write_unlock(b.mm)
    assert only(b, "vma_refcnt@vma_mark_detached")[:3] == (vid, 0, 1)


def test_a_vma_detached_with_a_reference_in_it(make, monkeypatch):
    """A reader's temporary reference, taken once munmap's vma_start_write is done (the
    count is 1 again) and not yet dropped when munmap detaches the VMA: the busted
    detach does not wait for it, and the VMA is detached with the reference in it.
    (The kernel's detach waits: test_writer_waits_for_the_readers.)"""
    b = make(bugs=("refcnt_detach_no_wait",), **refcnt()).map()
    vid = b.vid()
    old = native.ffi.new("uint32_t *")
    split = syscalls._split

    def reader_gets_in_then_split(*a, **k):
        assert native.lib.spf_vmref_get(b.mm.vm_refcnt_ptr(vid), old) == 1
        return split(*a, **k)

    monkeypatch.setattr(syscalls, "_split", reader_gets_in_then_split)
    assert do_munmap(b.mm, BASE, 8 * PAGE) == 0
    assert fired(b)[0] == ("vma_refcnt@vma_mark_detached", vid, 1, 2)


def test_a_reference_outlives_its_vma(make):
    """A reference in vm_refcnt when vm_area_free frees the record (vma_assert_detached),
    taken after the detach: only a count that something else wrote can hold one."""
    from spfshm.mm.vma import vm_area_free
    b = make(**refcnt()).map()
    vid = b.vid()
    mmap_write_lock(b.mm)
    vma_start_write(b.mm, vid)
    vma_mark_detached(b.mm, vid)
    b.mm.vma[vid]["vm_refcnt"] = 1
    vm_area_free(b.mm, vid)
    mmap_write_unlock(b.mm)
    assert fired(b)[0] == ("vma_refcnt@vm_area_free", vid, 1, 2)


def test_a_reference_left_in_a_record_attached_again(make, monkeypatch):
    """A reference that outlived the record's free (one of its previous life) is still
    in vm_refcnt when an mmap takes the record and publishes it."""
    b = make(**refcnt()).map()
    monkeypatch.setattr(b.mm, "other_mm_reuses", lambda: False)
    vid = b.vid()
    assert do_munmap(b.mm, BASE, 8 * PAGE) == 0
    b.mm.vma[vid]["vm_refcnt"] = 1
    assert do_mmap(b.mm, BASE, 4 * PAGE, PROT_BY_NAME["rw"], MAP_FIXED) == BASE
    assert b.vid() == vid
    assert only(b, "vma_refcnt@vma_mark_attached")[:3] == (vid, 1, 2)


def test_a_vma_born_detached_is_attached_by_its_tree(make):
    b = make(**refcnt()).map()
    assert b.mm.vma[b.vid()]["vm_mm"] == MM_SELF and b.mm.vma[b.vid()]["detached"] == 0


@pytest.mark.parametrize("lock", ["rwsem", "refcnt"])
def test_a_hang_dump_names_the_vma_read_lock_held(make, lock):
    from types import SimpleNamespace
    from spfshm.run.watchdog import locks_held
    b = make(vma_lock=lock, fault_mode="pervma").map()
    vid, st = b.vid(), SimpleNamespace(arena=b.arena)
    assert vma_start_read(b.mm, vid) is True
    assert "VMA #%d lock (read)" % vid in locks_held(st, 0)
    vma_end_read(b.mm, vid)
    assert locks_held(st, 0) == []
