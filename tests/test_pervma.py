"""The per-VMA lock fault (mm/pervma.py) against v6.4's lock_vma_under_rcu and x86's
VMA-lock attempt: a detached VMA is looked up again (VMA_LOCK_MISS), a VM_FAULT_RETRY and
an access error go to mmap_lock, and each outcome is the vm event the kernel counts."""
import pytest

from spfshm import native

from spfshm.mm import pervma
from spfshm.mm.fault import VM_FAULT_OK, VM_FAULT_RETRY, VM_FAULT_SIGSEGV, \
    do_user_addr_fault
from spfshm.mm.mm_types import PROT_BY_NAME, STAT
from spfshm.mm.syscalls import MAP_FIXED, do_mmap, do_mprotect
from test_fires import BASE, PAGE, fired, make  # noqa: F401  (make: the fixture)

EVENTS = ("success", "abort", "retry", "miss")


def events(b):
    row = b.mm.local                    # this CPU's counts, before flush_stats
    return {e: int(row[STAT["vma_lock_" + e]]) for e in EVENTS}


def read_held(b, vid):
    """The VMA's lock is held (by a reader: nothing here write-locks it)."""
    return bool(native.lib.spf_rwsem_is_locked(b.mm.vma_lock(vid))) or bool(b.mm.waiting[5])


def test_detached_vma_is_looked_up_again(make, monkeypatch):
    """The lookup finds a VMA that a writer detached after publishing its replacement:
    lock_vma_under_rcu drops it and walks the tree again ("goto retry"), still inside
    its RCU section, instead of falling back."""
    b = make().map()
    vid = b.vid()
    found = pervma.find_vma_rcu
    calls = []

    def lookup(mm, va, site):
        calls.append(va)
        # first walk: the record is detached (replaced); the second finds it live again
        mm.vma[vid]["detached"] = int(len(calls) == 1)
        return found(mm, va, site)

    monkeypatch.setattr(pervma, "find_vma_rcu", lookup)
    assert pervma.do_pervma_fault(b.mm, BASE + 5 * PAGE, 1) == VM_FAULT_OK
    assert len(calls) == 2
    assert events(b) == dict(success=1, abort=0, retry=0, miss=1)
    assert read_held(b, vid) is False and fired(b) == []


def test_fault_retry_goes_to_mmap_lock(make, monkeypatch):
    """handle_mm_fault returned VM_FAULT_RETRY under the VMA lock: the lock is dropped,
    VMA_LOCK_RETRY counted, and the caller handles the fault under mmap_lock."""
    b = make().map()
    monkeypatch.setattr(pervma, "do_anonymous_page", lambda mm, vma, va, w, **k: VM_FAULT_RETRY)
    assert pervma.do_pervma_fault(b.mm, BASE + 5 * PAGE, 1) is None
    assert events(b) == dict(success=0, abort=0, retry=1, miss=0)
    assert read_held(b, b.vid()) is False


def test_access_error_goes_to_mmap_lock(make):
    """A write to a read-only VMA: v6.4 drops the VMA lock and lets the classical path
    decide the SIGSEGV (neither a success nor an abort is counted)."""
    b = make().map(stored=1)                 # the first fault prepared its anon_vma
    assert do_mprotect(b.mm, BASE, 8 * PAGE, PROT_BY_NAME["r"]) == 0
    assert pervma.do_pervma_fault(b.mm, BASE, 1) is None
    assert events(b) == dict(success=0, abort=0, retry=0, miss=0)
    assert read_held(b, b.vid()) is False
    assert do_user_addr_fault(b.mm, BASE, 1) == VM_FAULT_SIGSEGV


def test_no_vma_is_an_abort(make):
    b = make().map()
    assert pervma.do_pervma_fault(b.mm, BASE + 100 * PAGE, 0) is None
    assert events(b) == dict(success=0, abort=1, retry=0, miss=0)


@pytest.mark.parametrize("write", [0, 1])
def test_success_is_counted(make, write):
    b = make().map(stored=1)
    assert pervma.do_pervma_fault(b.mm, BASE + 3 * PAGE, write) == VM_FAULT_OK
    assert events(b) == dict(success=1, abort=0, retry=0, miss=0)


def test_a_vma_without_an_anon_vma_falls_back(make):
    """v6.4: a VMA never faulted has no anon_vma, and preparing one needs mmap_lock (it
    reads the unlocked neighbours): the per-VMA attempt aborts, the classical fault
    prepares it, and the next per-VMA fault on that VMA succeeds."""
    b = make()
    assert do_mmap(b.mm, BASE, 8 * PAGE, PROT_BY_NAME["rw"], MAP_FIXED) == BASE
    assert pervma.do_pervma_fault(b.mm, BASE, 1) is None
    assert events(b) == dict(success=0, abort=1, retry=0, miss=0)
    assert do_user_addr_fault(b.mm, BASE, 1) == VM_FAULT_OK
    assert pervma.do_pervma_fault(b.mm, BASE + PAGE, 1) == VM_FAULT_OK
    assert events(b)["success"] == 1
