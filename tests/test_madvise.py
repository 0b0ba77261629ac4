"""MADV_DONTNEED under the per-VMA lock (--madvise-lock vma; v6.17 madvise_lock's
MADVISE_VMA_READ_LOCK): a range inside one VMA is zapped, and its page table reclaimed,
under that VMA's read lock only; a range across VMAs, or with no VMA, takes mmap_lock
read as before."""
import pytest

from spfshm.config import Config, ConfigError
from spfshm.mm import syscalls
from spfshm.mm.mm_types import HPAGE_NR, PROT_BY_NAME
from spfshm.mm.syscalls import MAP_FIXED, do_madvise_dontneed, do_mmap
from test_fires import BASE, PAGE, fired, make  # noqa: F401  (make: the fixture)


def locks_at_zap(b, monkeypatch):
    seen = []
    real = syscalls.zap_pte_range

    def zap(mm, tlb, start, end, **kw):
        seen.append((int(mm.waiting[3]), int(mm.waiting[5]) - 1))   # mmap read, VMA held
        return real(mm, tlb, start, end, **kw)

    monkeypatch.setattr(syscalls, "zap_pte_range", zap)
    return seen


@pytest.mark.parametrize("lock", ["mmap", "vma"])
def test_dontneed_inside_one_vma(make, monkeypatch, lock):
    b = make(madvise_lock=lock, reclaim="ptreclaim", table_free="rcu")
    b.map(pages=HPAGE_NR, stored=4)
    seen = locks_at_zap(b, monkeypatch)
    assert do_madvise_dontneed(b.mm, BASE, HPAGE_NR * PAGE) == 0
    assert seen == ([(0, b.vid())] if lock == "vma" else [(1, -1)])
    assert b.table() < 0                      # PT_RECLAIM freed it, under that lock
    assert int(b.mm.waiting[3]) == 0 and int(b.mm.waiting[5]) == 0 and fired(b) == []


def test_dontneed_across_vmas_takes_mmap_lock(make, monkeypatch):
    b = make(madvise_lock="vma").map(pages=4, stored=4)
    assert do_mmap(b.mm, BASE + 4 * PAGE, 4 * PAGE, PROT_BY_NAME["r"], MAP_FIXED) \
        == BASE + 4 * PAGE
    seen = locks_at_zap(b, monkeypatch)
    assert do_madvise_dontneed(b.mm, BASE, 8 * PAGE) == 0
    assert [s[0] for s in seen] == [1, 1]


def test_bad_madvise_lock_is_a_usage_error():
    with pytest.raises(ConfigError, match="--madvise-lock"):
        Config(madvise_lock="rcu").resolved()
