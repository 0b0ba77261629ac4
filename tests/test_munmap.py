"""munmap downgrades mmap_lock (v6.12 do_vmi_align_munmap -> vms_complete_munmap_vmas):
the VMAs are detached and the new tree published under the write lock, then the zap and
free_pgtables run under mmap_lock read, with mmap_seq even again (the SPF series) and
every VMA write lock dropped (vma_end_write_all), so faults on the neighbours proceed."""
from spfshm import native
from spfshm.mm import pervma, syscalls
from spfshm.mm.fault import VM_FAULT_OK
from spfshm.mm.mm_types import STAT
from spfshm.mm.mmap_lock import vma_end_read, vma_start_read
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
