"""Ranged TLB flushes and freed_tables (spfshm/mm/tlb.py, native/spf_cpu.c).

A flush removes the TLB entries of its range only (past 33 pages: everything); by IPI
(x86's INVLPG) every paging-structure-cache entry goes too, without one (INVLPGB, arm64
TLBI) only with freed_tables.  The gather passes the range it gathered and whether it
freed tables; the two busted variants (a short range, a lost freed_tables) are caught by
the existing oracles.
"""
import pytest

from spfshm import native
from spfshm.bugs import Bugs
from spfshm.mm import tlb as tlb_mod
from spfshm.mm.cpu import Cpu
from spfshm.mm.mm_types import MM, PAGE, PTE
from spfshm.mm.syscalls import do_madvise_dontneed, do_munmap
from spfshm.mm.tlb import TLB_FLUSH_ALL, flush_tlb_mm_range
from spfshm.run.workers import Workers
from test_fires import BASE, fired, make, only  # noqa: F401  (make: the fixture)

BLOCK_SHIFT = 21


def _fill(mm, cpu, pages, blocks):
    """CPU ``cpu``'s TLB holds ``pages`` (page numbers from BASE) and its PWC ``blocks``
    (2 MiB blocks from BASE's), written directly (valid word last)."""
    for p in pages:
        vpn = (BASE >> 12) + p
        e = mm.tlbs[cpu, vpn & (mm.g.tlb_entries - 1)]
        e[1:] = (7 << 12, 0, vpn << 12)
        e[0] = vpn << 1 | 1
    for k in blocks:
        block = (BASE >> BLOCK_SHIFT) + k
        e = mm.pwcs[cpu, block & (mm.pwcs.shape[1] - 1)]
        e[1] = 3
        e[0] = block << 1 | 1


def _held(mm, cpu):
    """(pages, blocks) CPU ``cpu`` still caches, as _fill numbers them."""
    tags, keys = mm.tlbs[cpu, :, 0], mm.pwcs[cpu, :, 0]
    return (sorted(int(t >> 1) - (BASE >> 12) for t in tags if t & 1),
            sorted(int(k >> 1) - (BASE >> BLOCK_SHIFT) for k in keys if k & 1))


RANGES = [  # (first page, end page, freed_tables) -> what the flush leaves, by IPI / not
    ((2, 5, False), ([0, 1, 5, 6, 7], []), ([0, 1, 5, 6, 7], [0, 1])),
    ((2, 5, True), ([0, 1, 5, 6, 7], []), ([0, 1, 5, 6, 7], [1])),
    ((512, 513, True), ([0, 1, 2, 3, 4, 5, 6, 7], []), ([0, 1, 2, 3, 4, 5, 6, 7], [0])),
    ((0, 34, False), ([], []), ([], [])),                  # past the ceiling: everything
]


@pytest.mark.parametrize("rng,by_ipi,remote", RANGES)
def test_ipi_flush_reaches_a_target_with_its_range(make, rng, by_ipi, remote):
    """CPU 1 flushes by IPI; CPU 0 (a worker) takes the range from CPU 1's slot: the
    TLB entries in the range go, the rest stay; INVLPG empties the paging-structure
    cache whatever freed_tables says."""
    b = make(ncpus=2, cpu=1)
    mm = b.mm

    def target(cpu):
        Cpu(MM(b.arena, b.g, b.cfg, Bugs(), cpu))      # registers its flush region
        b.flags[0] = 1
        while not b.flags[1]:
            native.sleep_ns(100_000)

    with Workers(b.smp, 1, target) as w:
        while not b.flags[0]:
            native.sleep_ns(100_000)
        _fill(mm, 0, range(8), (0, 1))
        _fill(mm, 1, range(8), (0, 1))
        first, end, freed = rng
        flush_tlb_mm_range(mm, BASE + first * PAGE, BASE + end * PAGE, freed)
        held0, held1 = _held(mm, 0), _held(mm, 1)
        b.flags[1] = 1
        assert w.join(30) == {0: 0}
    assert held0 == by_ipi and held1 == by_ipi        # the target's and the sender's own


@pytest.mark.parametrize("rng,by_ipi,remote", RANGES)
def test_remote_flush_keeps_the_paging_structure_caches_without_freed_tables(
        make, rng, by_ipi, remote):
    """--tlb-flush no-ipi: the range's TLB entries go; the range's paging-structure-cache
    entries only with freed_tables (INVLPGB_FINAL_ONLY, arm64's last_level otherwise)."""
    b = make(ncpus=2, cpu=1, tlb_flush="no-ipi", table_free="rcu", walk="rcu")
    _fill(b.mm, 0, range(8), (0, 1))
    first, end, freed = rng
    flush_tlb_mm_range(b.mm, BASE + first * PAGE, BASE + end * PAGE, freed)
    assert _held(b.mm, 0) == remote


@pytest.fixture
def flushes(monkeypatch):
    """The gather's flushes, as (first page, end page or None for all, freed_tables)."""
    seen = []
    real = tlb_mod.flush_tlb_mm_range

    def record(mm, start, end, freed_tables):
        seen.append(((start - BASE) // PAGE if end != TLB_FLUSH_ALL else 0,
                     (end - BASE) // PAGE if end != TLB_FLUSH_ALL else None, freed_tables))
        real(mm, start, end, freed_tables)

    monkeypatch.setattr(tlb_mod, "flush_tlb_mm_range", record)
    return seen


@pytest.mark.parametrize("bugs,want", [
    ((), (1, 4, False)),
    (("flush_range_short",), (1, 3, False)),
])
def test_gather_flushes_the_pages_it_zapped(make, flushes, bugs, want):
    b = make(bugs=bugs).map()
    assert do_madvise_dontneed(b.mm, BASE + PAGE, 3 * PAGE) == 0
    assert flushes == [want]


@pytest.mark.parametrize("bugs,freed", [((), True), (("flush_no_freed_tables",), False)])
def test_gather_that_frees_a_table_says_so(make, flushes, bugs, freed):
    """munmap zaps pages 0-3 and frees the tables, whose page at BASE is in the range
    already: one flush, with freed_tables."""
    b = make(bugs=bugs).map()
    assert do_munmap(b.mm, BASE, 8 * PAGE) == 0
    assert flushes == [(0, 4, freed)]


def test_short_range_leaves_a_translation_to_a_freed_frame(make):
    """flush_range_short: DONTNEED of the 4 stored pages flushes 3; the fourth page's
    TLB entry (this CPU's) still reaches its frame when the gather frees it."""
    b = make(bugs=("flush_range_short",)).map()
    f = b.frame(BASE + 3 * PAGE)
    assert do_madvise_dontneed(b.mm, BASE, 4 * PAGE) == 0
    assert only(b, "frame_uaf@zap")[2] == f


@pytest.mark.parametrize("bugs", [(), ("flush_no_freed_tables",)])
def test_lost_freed_tables_leaves_a_cached_table_to_a_freed_one(make, bugs):
    """--tlb-flush no-ipi, flush_no_freed_tables: munmap's flush keeps CPU 0's
    paging-structure-cache entry to the table it frees; the free finds it.  Without the
    bug the same munmap is clean."""
    b = make(ncpus=2, cpu=1, bugs=bugs, tlb_flush="no-ipi", table_free="rcu",
             walk="rcu").map()
    t = b.table()
    block = BASE >> BLOCK_SHIFT
    e = b.mm.pwcs[0, block & (b.mm.pwcs.shape[1] - 1)]
    e[:] = (block << 1 | 1, int(b.mm.pwcs[1, block & (b.mm.pwcs.shape[1] - 1), 1]))
    assert do_munmap(b.mm, BASE, 8 * PAGE) == 0
    b.mm.rcu.rcu_barrier()
    if bugs:
        assert only(b, "pt_uaf@free_pgtables")[:2] == (t, PTE) and e[0] & 1
    else:
        assert fired(b) == [] and not e[0] & 1


def test_remote_flush_order(make, monkeypatch):
    """--tlb-flush no-ipi, steps (1)-(4) of flush_tlb_remote, for a ranged flush that
    frees tables: the PWC entries go before the first wait (a walk that starts after it
    finds none), again after it (those the waited-for walks filled) with one more wait
    (a walk that used one has filled its TLB), and only then the TLB pass.  Without the
    first pass or the second wait, a walk through a stale PWC entry into a table a
    collapse unlinked with present PTEs fills a TLB entry the TLB pass has missed (the
    false frame_uaf@zap these steps fix)."""
    b = make(ncpus=2, cpu=1, tlb_flush="no-ipi", table_free="rcu-always")
    _fill(b.mm, 0, [3], (0,))
    events = []
    real, real_pwcs, real_inv = native.lib, tlb_mod._invalidate_pwcs, tlb_mod._invalidate

    class Lib:
        def __getattr__(self, name):
            return getattr(real, name)

        def spf_tlb_remote_wait(self, words, n):
            events.append(("wait", _held(b.mm, 0)))
            return real.spf_tlb_remote_wait(words, n)

    class Native:
        lib = Lib()

        def __getattr__(self, name):
            return getattr(native, name)

    def pwcs(*a):
        events.append(("pwc",))
        return real_pwcs(*a)

    def invalidate(mm, first, *a):
        if first == 0:                      # the TLB pass (the PWC's start further on)
            events.append(("tlb",))
        return real_inv(mm, first, *a)

    monkeypatch.setattr(tlb_mod, "native", Native())
    monkeypatch.setattr(tlb_mod, "_invalidate_pwcs", pwcs)
    monkeypatch.setattr(tlb_mod, "_invalidate", invalidate)
    flush_tlb_mm_range(b.mm, BASE + 2 * PAGE, BASE + 5 * PAGE, True)
    assert [e[0] for e in events] == ["pwc", "wait", "pwc", "wait", "tlb", "wait"]
    assert events[1][1] == ([3], [])          # at the first wait: the PWC entry is gone
    assert _held(b.mm, 0) == ([], [])
