"""munmap downgrades mmap_lock (v6.12 do_vmi_align_munmap -> vms_complete_munmap_vmas):
the VMAs are detached and the new tree published under the write lock, then the zap and
free_pgtables run under mmap_lock read, with mmap_seq even again (the SPF series) and
every VMA write lock dropped (vma_end_write_all), so faults on the neighbours proceed."""
import errno

import pytest

from spfshm import native
from spfshm.mm import pervma, syscalls
from spfshm.mm.fault import VM_FAULT_OK
from spfshm.mm.mm_types import STAT
from spfshm.mm.vma_lock import vma_end_read, vma_start_read
from spfshm.mm.pervma import do_pervma_fault, lock_vma_under_rcu
from spfshm.mm.spf import do_speculative_page_fault
from spfshm.mm.vma import current_tree, tree_entries
from test_fires import BASE, PAGE, fired, make  # noqa: F401  (make: the fixture)


def test_zap_and_free_pgtables_run_under_the_read_lock(make, monkeypatch):
    """munmap of the middle of a VMA: while it zaps, its lock is held for read only,
    mmap_seq is even, the piece it removes is detached and out of the tree, and both
    neighbours can be read-locked (a per-VMA fault on them proceeds)."""
    b = make().map(pages=8, stored=8)
    mm = b.mm
    seen = []
    real = syscalls.zap_pte_range

    def zap(mm_, tlb, start, end, **kw):
        ids = tree_entries(mm, current_tree(mm))[2]
        neighbours = [vid for vid in ids if vma_start_read(mm, vid)]
        for vid in neighbours:
            vma_end_read(mm, vid)
        seen.append(dict(read=int(mm.waiting[3]), write=int(mm.waiting[4]),
                         seq_odd=native.seq_try_begin(mm.mmap_seq) & 1,
                         tree=len(ids), lockable=len(neighbours),
                         # a speculative fault and a per-VMA fault on a neighbour
                         spf=do_speculative_page_fault(mm, BASE + 7 * PAGE, 1),
                         pervma=do_pervma_fault(mm, BASE, 1)))
        return real(mm_, tlb, start, end, **kw)

    monkeypatch.setattr(syscalls, "zap_pte_range", zap)
    assert syscalls.do_munmap(mm, BASE + 2 * PAGE, 4 * PAGE) == 0
    assert seen == [dict(read=1, write=0, seq_odd=0, tree=2, lockable=2,
                         spf=VM_FAULT_OK, pervma=VM_FAULT_OK)]
    assert mm.waiting[3] == 0 and mm.waiting[4] == 0           # released
    assert not native.lib.spf_rwsem_is_locked(mm.mmap_lock)
    assert fired(b) == []


def test_a_reader_of_the_old_tree_finds_the_vma_detached(make, monkeypatch):
    """A per-VMA fault that still looks the unmapped VMA up in the tree it read before
    the store can read-lock it once the write locks are dropped, but finds it detached:
    it looks up again (VMA_LOCK_MISS) in the new tree and falls back (no VMA there)."""
    b = make().map(pages=8, stored=8)
    mm = b.mm
    vid = b.vid()
    old, lookups = [], []
    real_zap = syscalls.zap_pte_range
    real_find = pervma.find_vma_rcu

    def find(mm_, va, site):
        lookups.append(va)                 # the first walk is of the tree before the store
        return (vid, int(mm_.vma[vid]["gen"])) if len(lookups) == 1 \
            else real_find(mm_, va, site)

    def zap(mm_, tlb, start, end, **kw):
        monkeypatch.setattr(pervma, "find_vma_rcu", find)
        old.append(lock_vma_under_rcu(mm, BASE + PAGE))
        monkeypatch.setattr(pervma, "find_vma_rcu", real_find)
        return real_zap(mm_, tlb, start, end, **kw)

    monkeypatch.setattr(syscalls, "zap_pte_range", zap)
    assert syscalls.do_munmap(mm, BASE, 8 * PAGE) == 0
    assert old == [None] and len(lookups) == 2
    row = mm.local
    assert int(row[STAT["vma_lock_miss"]]) == 1 and int(row[STAT["vma_lock_abort"]]) == 1
    assert fired(b) == []


def _vma_state(mm):
    """The published tree and every live record's bounds and protection."""
    from spfshm.mm.mm_types import VMA_LIVE
    live = [(vid, int(r["start"]), int(r["end"]), int(r["prot"]))
            for vid, r in enumerate(mm.vma) if int(r["state"]) == VMA_LIVE]
    starts, ends, ids = tree_entries(mm, current_tree(mm))
    return list(zip(starts, ends, ids)), live


def test_a_failed_record_or_tree_allocation_leaves_the_mm_as_it_was(make):
    """failslab on each allocation of an mmap, a munmap and an mprotect that split
    (vm_area_dup, vma_iter_prealloc): ENOMEM, and the tree and every record as before
    (__split_vma allocates before it changes a record); the same call then succeeds."""
    from spfshm.mm.mm_types import PROT_READ
    from test_fires import PROT_RW
    calls = [("munmap", lambda mm: syscalls.do_munmap(mm, BASE + 2 * PAGE, 2 * PAGE)),
             ("mprotect", lambda mm: syscalls.do_mprotect(mm, BASE + 5 * PAGE, PAGE,
                                                           PROT_READ)),
             ("mmap", lambda mm: syscalls.do_mmap(mm, BASE + 2 * PAGE, 2 * PAGE, PROT_RW,
                                                  syscalls.MAP_FIXED_NOREPLACE))]
    for name, call in calls:
        b = make().map(pages=8, stored=8)
        mm = b.mm
        if name == "mmap":
            assert syscalls.do_munmap(mm, BASE + 2 * PAGE, 2 * PAGE) == 0
        failed = 0
        for k in range(8):                     # the k-th allocation fails
            draws = iter([False] * k + [True])
            mm.slab_alloc_fails = lambda: next(draws, False)
            before = _vma_state(mm)
            r = call(mm)
            if r >= 0:
                break
            assert r == -errno.ENOMEM, (name, k, r)
            assert _vma_state(mm) == before, (name, k)
            failed += 1
        assert failed >= 2, (name, failed)      # a record and the tree, at least
        assert r >= 0 and fired(b) == [], (name, r, fired(b))


def test_max_map_count_bounds_mmap_and_splits(make):
    """vm.max_map_count: an mmap or a split past it is ENOMEM and changes nothing (the
    checks come before any record is touched); the tree holds the largest value."""
    from spfshm.config import Config
    from spfshm.mm.mm_types import MAX_VMAS, PROT_READ
    from test_fires import PROT_RW
    assert Config.max_map_count == MAX_VMAS
    b = make(max_map_count=2).map(pages=8, stored=8)
    mm = b.mm
    before = _vma_state(mm)
    assert syscalls.do_munmap(mm, BASE + 2 * PAGE, 2 * PAGE) == -errno.ENOMEM   # 3 pieces
    assert syscalls.do_mprotect(mm, BASE + 2 * PAGE, PAGE, PROT_READ) == -errno.ENOMEM
    assert _vma_state(mm) == before
    assert syscalls.do_munmap(mm, BASE + 6 * PAGE, 2 * PAGE) == 0                 # 1 piece
    assert syscalls.do_mmap(mm, BASE + 6 * PAGE, PAGE, PROT_RW, syscalls.MAP_FIXED) \
        == BASE + 6 * PAGE                                                        # 2 VMAs
    before = _vma_state(mm)
    assert syscalls.do_mmap(mm, BASE + 7 * PAGE, PAGE, PROT_RW, syscalls.MAP_FIXED) \
        == -errno.ENOMEM
    assert _vma_state(mm) == before and fired(b) == []


def test_the_pools_global_stack_moves_only_under_its_lock(make, monkeypatch):
    """A refill, a drain and a batch allocation (a huge pmd's split) take the global
    stack's lock; without it (the busted twin: spin_lock a no-op) the first refill
    raises instead of racing another CPU's."""
    from spfshm.mm import pool
    b = make()
    frames = b.mm.frames
    got = [frames.alloc(b.mm.cpu) for _ in range(3 * pool.BATCH)]
    more = frames.alloc_many(b.mm.cpu, 2 * pool.BATCH)
    for f in got + more.tolist():
        frames.free(b.mm.cpu, f)
    monkeypatch.setattr(pool.native, "spin_lock", lambda lock, cpu: None)
    monkeypatch.setattr(pool.native, "spin_unlock", lambda lock: None)
    with pytest.raises(RuntimeError, match="without its lock"):
        frames.alloc_many(b.mm.cpu, 8 * pool.BATCH)
