"""The speculative fault aborts as Lespinasse's v5.12-spf-anon series does, each reason
named after its SPF_ABORT_* vm event, and never decides a SIGSEGV itself: no VMA at the
address ("unmapped") and an access error ("access_error") go to the classical path,
which decides; a VMA without an anon_vma aborts ("anon_vma") and the classical fault
prepares one (under mmap_lock read and page_table_lock), after which SPF succeeds."""
from spfshm.mm.fault import VM_FAULT_OK, VM_FAULT_OOM, VM_FAULT_SIGSEGV, do_user_addr_fault
from spfshm.mm.mm_types import FRAME_INUSE, PROT_BY_NAME, TABLE_LIVE
from spfshm.mm.spf import do_speculative_page_fault
from spfshm.mm.vma import current_tree, tree_entries
from spfshm.mm.syscalls import MAP_FIXED, do_mmap, do_mprotect, do_munmap
from test_fires import BASE, PAGE, fired, make  # noqa: F401  (make: the fixture)


def test_no_vma_aborts_and_the_classical_path_decides(make):
    b = make().map(pages=8, stored=1)
    assert do_speculative_page_fault(b.mm, BASE + 100 * PAGE, 0) == "unmapped"
    assert do_user_addr_fault(b.mm, BASE + 100 * PAGE, 0) == VM_FAULT_SIGSEGV


def test_access_error_aborts_and_the_classical_path_decides(make):
    b = make().map(pages=8, stored=1)
    assert do_mprotect(b.mm, BASE, 8 * PAGE, PROT_BY_NAME["r"]) == 0
    assert do_speculative_page_fault(b.mm, BASE + PAGE, 1) == "access_error"
    assert do_user_addr_fault(b.mm, BASE + PAGE, 1) == VM_FAULT_SIGSEGV


def test_first_fault_of_a_vma_prepares_its_anon_vma(make):
    b = make().map(pages=4, stored=1)          # its page tables exist from here
    mm = b.mm
    assert do_mmap(mm, BASE + 4 * PAGE, 4 * PAGE, PROT_BY_NAME["rw"], MAP_FIXED) \
        == BASE + 4 * PAGE
    vid = tree_entries(mm, current_tree(mm))[2][1]
    assert mm.vma[vid]["anon_vma"] == 0
    assert do_speculative_page_fault(mm, BASE + 4 * PAGE, 1) == "anon_vma"
    assert do_user_addr_fault(mm, BASE + 4 * PAGE, 1) == VM_FAULT_OK
    assert mm.vma[vid]["anon_vma"] == 1
    assert do_speculative_page_fault(mm, BASE + 5 * PAGE, 1) == VM_FAULT_OK
    assert fired(b) == []


def test_split_pieces_inherit_the_anon_vma(make):
    """anon_vma_clone: both sides of a split share the original's anon_vma, so a
    speculative fault on the far side of an unmapped hole does not abort for it."""
    b = make().map(pages=8, stored=1)
    assert do_munmap(b.mm, BASE + 2 * PAGE, 2 * PAGE) == 0
    assert do_speculative_page_fault(b.mm, BASE + 6 * PAGE, 1) == VM_FAULT_OK


def test_a_failed_page_allocation_is_oom_on_both_paths_and_leaks_nothing(make):
    """The fault's allocation fails (FAULT_ALLOC_FAIL, forced here): SPF aborts "oom",
    the classical fault returns VM_FAULT_OOM, nothing is mapped or held; once it stops
    failing, both succeed."""
    b = make().map(pages=4, stored=1)
    mm = b.mm
    in_use = lambda: int((mm.frame_meta["state"] == FRAME_INUSE).sum())  # noqa: E731
    rss, frames = int(mm.rss[0]), in_use()
    mm.fault_alloc_fails = lambda: True
    assert do_speculative_page_fault(mm, BASE + 2 * PAGE, 1) == "oom"
    assert do_user_addr_fault(mm, BASE + 2 * PAGE, 1) == VM_FAULT_OOM
    assert (int(mm.rss[0]), in_use()) == (rss, frames) and fired(b) == []
    mm.fault_alloc_fails = lambda: False
    assert do_speculative_page_fault(mm, BASE + 2 * PAGE, 1) == VM_FAULT_OK
    assert do_user_addr_fault(mm, BASE + 3 * PAGE, 1) == VM_FAULT_OK
    assert (int(mm.rss[0]), in_use()) == (rss + 2, frames + 2) and fired(b) == []


def test_a_failed_page_table_allocation_is_oom_and_leaks_nothing(make):
    """The fault's page is allocated, its page table cannot be (pte_alloc_one failing):
    VM_FAULT_OOM, no table and no frame held; the next fault allocates it."""
    b = make().map(pages=4, stored=0)          # mapped, never faulted: no page table yet
    mm = b.mm
    tables = lambda: int((mm.pt_state == TABLE_LIVE).sum())           # noqa: E731
    frames, live = int((mm.frame_meta["state"] == FRAME_INUSE).sum()), tables()
    draws = iter([False])                      # the page's allocation, then the tables'
    mm.fault_alloc_fails = lambda: next(draws, True)
    assert do_user_addr_fault(mm, BASE + PAGE, 1) == VM_FAULT_OOM
    assert tables() == live and fired(b) == []
    assert int((mm.frame_meta["state"] == FRAME_INUSE).sum()) == frames
    mm.fault_alloc_fails = lambda: False
    assert do_user_addr_fault(mm, BASE + PAGE, 1) == VM_FAULT_OK
    assert tables() > live and fired(b) == []


def test_allocation_failures_are_drawn_on_the_workers_only(tmp_path):
    """The parent builds a scenario's layout without injected failures (populate's 512
    faults would meet one on this seed's stream: see the first assert), and the
    diff-kernel model, compared with a kernel that has memory, never fails either."""
    import random
    from spfshm import diffkernel as dk
    from spfshm.mm.mm_types import FAULT_ALLOC_FAIL
    from spfshm.run import scenario
    from spfshm.run.runner import run_stress
    stream = random.Random("spfshm-fault-alloc:%d:%d" % (1, 1))   # seed 1, row ncpus=1
    assert any(stream.random() < FAULT_ALLOC_FAIL for _ in range(512))
    path = tmp_path / "p.litmus"
    path.write_text("config fault-mode=classic reclaim=off collapse=off seed=1\n"
                    "map 0 512 rw\npopulate 0 512\ncpu 0: load 0\n")
    cfg = scenario.config_of(str(path), sched="list", artifacts=str(tmp_path / "a"))
    rep = run_stress(cfg.resolved())
    assert rep["exit_code"] == 0, rep["errors"]
    model = dk.Model(64, dk.default_window_base())
    try:
        assert not any(model.mm.fault_alloc_fails() for _ in range(20000))
    finally:
        model.close()
