"""The load-value oracle (mm/cpu.py): every load is checked, against every CPU's stores.

Two CPUs share one mm in this process: CPU 1 has its own TLB, faults and stores, but each
of its steps runs to completion between CPU 0's, and with --tlb-flush no-ipi a flush
clears both TLBs without interrupting anyone.  A store that the protocol loses (two frames
for one page, as ``fault_no_ptl`` makes) is staged by rewriting a frame's payload; every
legal way to lose a value (a zap, a store racing one) must stay clean."""
import pytest

from spfshm import debug, native
from spfshm.arena import Arena, Layout
from spfshm.bugs import Bugs
from spfshm.config import Config
from spfshm.mm import mm_types
from spfshm.mm.cpu import Cpu
from spfshm.mm.frames import VALUE_STORED, ZAP_DONE_SHIFT, encode_value, stamp_value
from spfshm.mm.khugepaged import collapse_huge_page
from spfshm.mm.memory import zap_pte_range
from spfshm.mm.mm_types import HPAGE_NR, MM, PAGE, POISON, PROT_BY_NAME, Geometry, mm_init
from spfshm.mm.pagetable import entry_pfn, index, pte_table_of
from spfshm.mm.syscalls import MAP_FIXED, do_madvise_dontneed, do_mmap, do_mprotect, do_munmap
from spfshm.mm.tlb import MmuGather
from spfshm.smp import Smp, smp_regions

BASE = 0x3F0000000000                       # 2 MiB aligned
NPAGES = 2 * HPAGE_NR
RW = PROT_BY_NAME["rw"]


class TwoCpus:
    """CPUs 0 (this process) and 1 over one mm, the window mapped read-write."""

    def __init__(self):
        cfg = Config(cpus=2, window_pages=NPAGES, tlb_flush="no-ipi",
                     table_free="rcu-always",
                     fault_mode="classic", reclaim="off", collapse="off")
        g = Geometry(2, NPAGES, cfg.tlb_entries, window_base=BASE)
        self.arena = Arena(Layout(smp_regions(2) + mm_types.regions(g)))
        smp = Smp(self.arena, 2)
        smp.init()
        smp.become_cpu(0)
        self.mms = [MM(self.arena, g, cfg, Bugs(), c) for c in (0, 1)]
        mm_init(self.mms[0])
        cpu1 = Cpu(self.mms[1])
        self.cpus = [Cpu(self.mms[0]), cpu1]     # this process's IPI flush region: CPU 0's
        self.mm = self.mms[0]
        assert do_mmap(self.mm, BASE, NPAGES * PAGE, RW, MAP_FIXED) == BASE

    def close(self):
        for mm in self.mms:
            mm.rcu.rcu_barrier()
        native.cpu_unregister()
        self.arena.close()

    def frame(self, va):
        t = pte_table_of(self.mm, va)
        return entry_pfn(int(self.mm.pt[t, index(va, 1)]))

    def kinds(self):
        return [v["kind"] for v in debug.collect(self.arena)]


@pytest.fixture
def two():
    m = TwoCpus()
    yield m
    m.close()


def va(page):
    return BASE + page * PAGE


@pytest.mark.parametrize("storer", [0, 1])
def test_zero_hiding_a_store_without_a_zap_is_a_lost_update(two, storer):
    """CPU 0 stored, or loaded CPU 1's store; then the page reads 0 with no zap since."""
    c0 = two.cpus[0]
    assert two.cpus[storer].store(va(3)) == "ok"
    assert c0.load(va(3)) == "ok" and two.kinds() == []
    two.mm.frame_payload[two.frame(va(3))] = 0
    assert c0.load(va(3)) == "ok"
    assert two.kinds() == ["lost_update"]


def test_own_older_value_is_a_lost_update(two):
    c0 = two.cpus[0]
    assert c0.store(va(3)) == "ok"
    older = int(two.mm.frame_payload[two.frame(va(3))])
    assert c0.store(va(3)) == "ok"
    two.mm.frame_payload[two.frame(va(3))] = older
    assert c0.load(va(3)) == "ok"
    assert two.kinds() == ["lost_update"]


def test_zaps_are_the_legal_way_to_lose_a_value(two):
    """DONTNEED, munmap, mmap over a mapping and a huge pmd's zap: afterwards 0, clean;
    collapse, split and mprotect keep every value (each load checks it)."""
    c0, c1 = two.cpus
    mm = two.mm
    pages = [0, 1, 7, 300, HPAGE_NR + 2, HPAGE_NR + 9]

    def store_all():
        for p in pages:
            assert c0.store(va(p)) == "ok" and c1.load(va(p)) == "ok"
        assert c1.store(va(5)) == "ok" and c0.load(va(5)) == "ok"

    def load_all():
        for p in pages + [5]:
            assert c0.load(va(p)) == "ok" and c1.load(va(p)) == "ok"

    store_all()
    assert do_madvise_dontneed(mm, BASE, NPAGES * PAGE) == 0
    load_all()
    store_all()
    assert do_munmap(mm, BASE, NPAGES * PAGE) == 0
    assert do_mmap(mm, BASE, NPAGES * PAGE, RW, MAP_FIXED) == BASE
    load_all()
    store_all()
    assert do_mmap(mm, BASE, HPAGE_NR * PAGE, RW, MAP_FIXED) == BASE
    load_all()
    store_all()
    assert collapse_huge_page(mm, BASE)                  # copies: every value survives
    load_all()
    assert do_mprotect(mm, va(256), 16 * PAGE, PROT_BY_NAME["r"]) == 0    # split, kept
    load_all()
    assert collapse_huge_page(mm, va(HPAGE_NR))
    load_all()
    assert do_madvise_dontneed(mm, va(HPAGE_NR), HPAGE_NR * PAGE) == 0    # the huge zap
    load_all()
    assert two.kinds() == []
    assert [int(mm.frame_payload[two.frame(va(p))]) for p in pages[-2:]] == [0, 0]


def test_another_cpus_value_at_the_wrong_page_is_bad(two):
    c0, c1 = two.cpus
    assert c0.store(va(3)) == "ok" and c1.store(va(4)) == "ok"
    assert c0.load(va(4)) == "ok" and two.kinds() == []
    two.mm.frame_payload[two.frame(va(3))] = two.mm.frame_payload[two.frame(va(4))]
    assert c0.load(va(3)) == "ok"
    assert two.kinds() == ["bad_value"]


def test_value_from_before_a_completed_zap_is_bad(two):
    """CPU 1's value, still readable through a TLB entry while its zap is in progress,
    must be gone once the zap's flush completed (staged: it shows up in the new frame)."""
    c0, c1 = two.cpus
    assert c1.store(va(3)) == "ok" and c0.load(va(3)) == "ok"
    v = int(two.mm.frame_payload[two.frame(va(3))])
    tlb = MmuGather(two.mm)
    zap_pte_range(two.mm, tlb, va(3), va(4))             # the PTE is cleared, no flush yet
    assert c0.load(va(3)) == "ok" and two.kinds() == []   # through CPU 0's TLB entry
    tlb.finish()
    assert c0.load(va(3)) == "ok" and two.kinds() == []   # a new frame: 0
    two.mm.frame_payload[two.frame(va(3))] = v
    assert c0.load(va(3)) == "ok"
    assert two.kinds() == ["bad_value"]


def test_store_racing_a_zap_may_be_lost(two):
    """CPU 1 stores through its TLB entry after the PTE was cleared, before the flush: the
    value lands in the frame the zap takes away; both CPUs read it until the flush, then
    0 (the same store with no zap in progress: the first test)."""
    c0, c1 = two.cpus
    assert c0.load(va(3)) == "ok" and c1.load(va(3)) == "ok"
    tlb = MmuGather(two.mm)
    zap_pte_range(two.mm, tlb, va(3), va(4))
    assert c1.store(va(3)) == "ok" and c1.load(va(3)) == "ok" and c0.load(va(3)) == "ok"
    assert int(two.mm.frame_payload[tlb.frames[0]]) >> 63       # it went to the old frame
    tlb.finish()
    assert c1.load(va(3)) == "ok" and c0.load(va(3)) == "ok"
    assert two.kinds() == []
    assert int(two.mm.frame_payload[two.frame(va(3))]) == 0


def test_the_stamp_is_read_before_the_attempt_that_completes(two):
    """A zap that completes while a store is in its access loop (here: inside its first
    hardware walk, at the ``hw_walk`` delay point) happened before the store: the store
    faults a new frame in and is stamped after that zap."""
    c0, c1 = two.cpus
    assert c1.store(va(3)) == "ok"
    zapped = []

    def zap_once(point):
        if point == "hw_walk" and not zapped:
            zapped.append(do_madvise_dontneed(two.mms[1], va(3), PAGE))

    two.mms[0].delay = zap_once
    assert c0.store(va(3)) == "ok" and zapped == [0]
    assert c1.load(va(3)) == "ok" and c0.load(va(3)) == "ok"
    assert two.kinds() == []


def zap_word(begun, done):
    return begun | done << ZAP_DONE_SHIFT


def test_check_value_stamps(two):
    """Driven directly: a stamp ahead of the load's begun count is legal only for a store
    that raced a zap; a value no CPU could have stored here is bad."""
    c0 = two.cpus[0]
    now = zap_word(1, 1)
    c0.check_value(3, stamp_value(encode_value(1, 3, 7), zap_word(2, 1)), now)  # raced
    assert two.kinds() == []
    bad = {4: stamp_value(encode_value(1, 4, 7), zap_word(2, 2)),   # from the future
           5: stamp_value(encode_value(1, 5, 7), now) & ~VALUE_STORED,
           6: stamp_value(encode_value(2, 6, 7), now),             # there is no CPU 2
           7: stamp_value(encode_value(0, 7, 7), now),             # CPU 0 never was here
           8: POISON}
    for page, v in bad.items():
        c0.check_value(page, v, now)
    assert two.kinds() == ["bad_value"] * len(bad)


def test_zap_counts_wrap_soundly(two):
    """The values carry 14 bits of the begun count: the window of legal stamps is checked
    modulo, and what a CPU remembers keeps the full count (a 0 after exactly 2**14 zaps
    is legal)."""
    c0, c1 = two.cpus
    mm = two.mm
    mm.zap_clock[3] = zap_word(2**14 - 1, 2**14 - 1)
    assert c0.store(va(3)) == "ok"
    assert do_madvise_dontneed(mm, va(3), PAGE) == 0     # begun 2**14: stamp bits 0
    assert c0.load(va(3)) == "ok"
    assert c1.store(va(3)) == "ok" and c0.load(va(3)) == "ok"
    assert c0.store(va(3)) == "ok"
    mm.zap_clock[3] = zap_word(2 * 2**14, 2 * 2**14)      # as if 2**14 zaps completed
    mm.frame_payload[two.frame(va(3))] = 0
    assert c0.load(va(3)) == "ok"
    assert two.kinds() == []
