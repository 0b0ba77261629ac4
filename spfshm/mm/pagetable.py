"""Page tables: x86-64 4-level radix (PGD/PUD/PMD/PTE, 512 entries each, 48-bit VA).

Follows Linux v6.14: mm/memory.c __pud_alloc / __pmd_alloc / __pte_alloc (pmd_install's
"Has another populated it ?" re-check under the lock) and mm/pgtable-generic.c
__pte_offset_map_lock (v6.5+: map under RCU, take the ptl, re-check pmd_same).  The
entry format and the paging-structure cache are the model's, after x86-64.

Entry format (u64):  bit 0 present, bit 1 writable, bit 7 huge (PS: a PMD entry that maps
a 2 MiB page instead of a PTE table), bit 8 PROT_NONE (software: the frame stays mapped
but the hardware sees not-present), bits 12..39 the index of the next table or of the
frame (a huge page's head), bits 52..62 an 11-bit tag of that object's generation.  The tag lets a
walker tell a table or frame that was freed and reused from the one the entry meant.

Table lifecycle: alloc (zero, then LIVE, then published in the parent with a release
store) -> unlinked from the parent -> tlb_remove_table (IPI sync or grace period) -> free
(state FREE and generation bumped, then contents poisoned).  A PTE table that khugepaged
replaced by a huge pmd stays LIVE, deposited with its PMD table
(pgtable_trans_huge_deposit): a split of a huge pmd there withdraws it and links it
again, a zap of one withdraws it and frees it at once (khugepaged.py, huge_memory.py).

The hardware walker also keeps a paging-structure cache (PWC: 2 MiB block -> PTE table),
as x86 caches PDEs; it is flushed with the TLB, which is why a table may only be freed
after the flush.  ``assert_table_unreferenced`` checks exactly that at free time.

Lockless walker protocol (hardware TLB fill, later SPF and gup_fast), against the freer:
  walker: (1) IRQs off or rcu_read_lock  (2) read the entry  (3) check the table it read
          is still LIVE with the generation the parent's entry named  (4) descend
  freer:  (a) clear the parent entry  (b) IPI sync / grace period  (c) FREE + gen++
          (d) poison
(b) waits for (1)'s section, so (3) can only fail when the protocol is broken: that
failure is reported as pt_uaf at once.  And (3) names the table in the walker's CPU slot
(``walk_ref``, cleared when its section ends, native spf_rcu.h), so that (c) finds a
walker still inside the table (KASAN's view of the free: the walker need not read the
table again for the broken (b) to be seen): reported as pt_uaf@free_pgtables.
"""
import numpy as np

from .. import native
from .mm_types import (LEVEL_SHIFT, PGD, PMD, POISON, PROT_NONE, PROT_WRITE, PTE, PTRS, PUD,
                       TABLE_FREE, TABLE_LIVE, TABLE_PENDING)
from .lockdep import assert_spin_locked, lockdep_assert_walk_protected
from .pipe import TABLES

P, RW, PS, PROTNONE = 0x1, 0x2, 0x80, 0x100
PFN_SHIFT, PFN_MASK = 12, (1 << 28) - 1
GEN_SHIFT, GEN_MASK = 52, 0x7FF
ROOT = 0                         # the PGD is table 0, allocated at mm creation
HUGE = -2                        # "the pmd maps a huge page", where a PTE table was asked for

NEXT = {PGD: PUD, PUD: PMD, PMD: PTE}
EV_TABLE_ALLOC, EV_TABLE_UNLINK, EV_TABLE_FREE = (   # ring event types (spf_ring.h)
    native.lib.SPF_EV_TABLE_ALLOC, native.lib.SPF_EV_TABLE_UNLINK, native.lib.SPF_EV_TABLE_FREE)


def mk_entry(pfn, gen, flags):
    return (pfn << PFN_SHIFT) | ((gen & GEN_MASK) << GEN_SHIFT) | flags


def entry_pfn(e):
    return (e >> PFN_SHIFT) & PFN_MASK


def entry_gen(e):
    return (e >> GEN_SHIFT) & GEN_MASK


def index(va, level):
    return (va >> LEVEL_SHIFT[level]) & (PTRS - 1)


def pmd_maps_table(e, t):
    """Whether pmd entry e links PTE table t (not a huge page that has t's number)."""
    return e & (P | PS) == P and entry_pfn(e) == t


def leaf_frame(e, va):
    """The frame a leaf entry maps at va: the PTE's frame, or a huge pmd's subpage."""
    return entry_pfn(e) + (index(va, PTE) if e & PS else 0)


def leaf_beyond_prot(e, prot):
    """Whether a mapped leaf grants more than a VMA of ``prot`` allows: present under
    PROT_NONE, writable under read-only, or PROT_NONE under an accessible VMA (where no
    fault could ever make it present)."""
    if prot == PROT_NONE:
        return bool(e & (P | RW))
    return bool(e & PROTNONE) or (bool(e & RW) and not prot & PROT_WRITE)


# -- allocation and freeing ---------------------------------------------------------------
def alloc_table(mm, level, may_fail=False):
    """A zeroed LIVE table of ``level``, or -1: the pool is empty, or (``may_fail``: the
    fault path's pte_alloc_one / pmd_alloc_one) it fails at random, as the fault's page
    allocation does (mm_types.FAULT_ALLOC_FAIL).  Publish it with ``populate``."""
    t = -1 if may_fail and mm.fault_alloc_fails() else mm.tables.alloc(mm.cpu)
    if t < 0:
        return -1
    check_table_poison(mm, t)
    mm.pt[t, :] = 0
    mm.pt_level[t] = level
    mm.pt_meta[t]["pmd_huge_pte"] = 0
    mm.pipe.unretire(TABLES, t)
    native.smp_wmb()             # contents before state: pairs with the walker's (3)
    mm.pt_state[t] = TABLE_LIVE
    mm.count("tables_alloc")
    native.trace(EV_TABLE_ALLOC, t, level, int(mm.pt_gen[t]))
    return t


def check_table_poison(mm, t):
    """check_poison_mem for a page-table page (it comes from the page allocator too): a
    free table holds the poison free_table_now wrote (mm_init poisons them all first);
    an entry that does not was written while the table was free (a PTE installed in a
    table already freed, a free that poisoned after the table could be handed out)."""
    bad = np.flatnonzero(mm.pt[t] != np.uint64(POISON))
    if len(bad):
        i = int(bad[0])
        mm.report("poison_overwritten", "alloc_table", 0, t, i, int(mm.pt[t, i]))


def populate(mm, parent, idx, child):
    """Link ``child`` below ``parent[idx]`` (pmd_populate / pud_populate): release store,
    so a walker that sees the entry sees the zeroed table."""
    native.store_release(mm.entry_ptr(parent, idx),
                         mk_entry(child, int(mm.pt_gen[child]), P | RW))


READ_RETRIES = 1000


def read_tagged(mm, ents):
    """A snapshot of entries that their CPUs change while we read them (TLB or PWC
    entries: ``ents[cpu, slot]`` = tag, then data words): the tag is read before and
    after the data, and an entry whose tag changed meanwhile is read again until it
    holds still.  Every change of an entry clears the tag first and sets it last, so
    a torn read never passes.  Returns (valid, words): valid entries of online CPUs
    (a dead CPU's TLB went with it) and a copy of all words."""
    tag = ents[:, :, 0].copy()
    words = ents.copy()
    torn = ents[:, :, 0] != tag
    for _ in range(READ_RETRIES):
        if not torn.any():
            break
        cpu, slot = np.nonzero(torn)
        tag[cpu, slot] = ents[cpu, slot, 0]
        words[cpu, slot] = ents[cpu, slot]
        torn[cpu, slot] = ents[cpu, slot, 0] != tag[cpu, slot]
    if torn.any():
        raise RuntimeError("a TLB or PWC entry kept changing under %d reads" % READ_RETRIES)
    words[:, :, 0] = tag
    return (tag & 1 == 1) & mm.online()[:, None], words


def assert_table_unreferenced(mm, t):
    """No CPU's paging-structure cache may still hold a table being freed (KASAN-style
    assertion: under a correct protocol the flush or grace period removed them all)."""
    valid, pwc = read_tagged(mm, mm.pwcs)
    val = pwc[:, :, 1]
    hit = valid & ((val & 0xFFFFFFFF) == t) \
        & ((val >> 32) == (int(mm.pt_gen[t]) & GEN_MASK))
    for cpu, slot in zip(*np.nonzero(hit)):
        mm.report("pt_uaf", "free_pgtables", int(pwc[cpu, slot, 0] >> 1) << 21, t,
                  int(mm.pt_level[t]), int(cpu))


def walk_ref_of(t, tag):
    """A walker's name for table t of generation tag (its CPU slot's walk_ref)."""
    return (t + 1) | (tag << 32)


def assert_no_walker_in(mm, t):
    """No other CPU's lockless walk may still rely on a table being freed: step (b)
    waited for every walk section that entered it before (a) (a later one cannot find
    it), and each clears its ``walk_ref`` when it ends.  Where (b) is a grace period
    (pte_free_defer stamped t with the gp_seq it read after (a)), no other CPU may
    even be in a read-side section whose rcu_snap is at most that gp_seq: it began
    before the grace period did, which waits for it (spf_rcu.h), and any such section
    may have read the entry before (a) and be inside t (rcutorture's view: a callback
    ran while a reader from before its grace period still runs)."""
    percpu = mm.arena["percpu"][:mm.g.ncpus]
    hit = percpu["walk_ref"] == walk_ref_of(t, int(mm.pt_gen[t]) & GEN_MASK)
    gp = mm.pipe.retired_at_gp(TABLES, t)
    if gp:
        snap = percpu["rcu_snap"].copy()        # one read of each: they change meanwhile
        hit |= (snap != 0) & (snap <= gp)
    if mm.cpu < len(hit):
        hit[mm.cpu] = False
    for cpu in np.flatnonzero(hit & mm.online()):
        mm.report("pt_uaf", "free_pgtables", 0, t, int(mm.pt_level[t]), int(cpu))


def free_table_now(mm, t):
    """The final free (after tlb_remove_table's sync).  A table freed with present PTEs
    lost them: report.  So is a table freed twice (KASAN's double-free; the pool is left
    as it is)."""
    if mm.pt_state[t] == TABLE_FREE:
        mm.report("double_free", "free_pgtables", 0, t, int(mm.pt_level[t]), TABLE_FREE)
        return
    assert_table_unreferenced(mm, t)
    assert_no_walker_in(mm, t)
    if mm.pt_level[t] == PTE:
        present = int(((mm.pt[t] & P) | ((mm.pt[t] & PROTNONE) >> 8)).astype(bool).sum())
        if present:
            mm.report("pt_lost_ptes", "free_pgtables", 0, t, present)
    native.trace(EV_TABLE_FREE, t, int(mm.pt_level[t]), int(mm.pt_gen[t]))
    mm.pt_state[t] = TABLE_FREE
    native.fetch_add(mm.pt_gen_ptr(t), 1)
    native.smp_wmb()             # (c) before (d)
    mm.pt[t, :] = POISON
    mm.tables.free(mm.cpu, t)
    mm.count("tables_freed")


def mark_pending(mm, t, va):
    """Unlinked from its parent (the entry for va, which must no longer map it: a table
    queued for freeing while still linked is reached by walks its sync does not wait
    for), waiting for tlb_remove_table's sync.  A table already pending or free was
    unlinked twice: its second free would be a double free."""
    level = int(mm.pt_level[t])
    parent, lvl = ROOT, PGD
    while parent >= 0 and NEXT.get(lvl) != level:
        e = int(mm.pt[parent, index(va, lvl)])
        parent = entry_pfn(e) if e & P and not e & PS else -1
        lvl = NEXT.get(lvl, PTE)
    if parent >= 0:
        e = int(mm.pt[parent, index(va, lvl)])
        if e & P and not e & PS and entry_pfn(e) == t:
            mm.report("pt_free_reachable", "free_pgtables", va, t, TABLE_PENDING, parent)
    state = int(mm.pt_state[t])
    if state != TABLE_LIVE:
        mm.report("double_free", "free_pgtables", 0, t, int(mm.pt_level[t]), state)
        return
    native.trace(EV_TABLE_UNLINK, t, int(mm.pt_level[t]), int(mm.pt_gen[t]))
    mm.pt_state[t] = TABLE_PENDING


# -- lockless walk ------------------------------------------------------------------------
def lockless_walk_begin(mm):
    """A software walker's protection (--walk): rcu_read_lock where tables are freed by
    RCU, IRQs off where they are freed after the flush IPI (gup_fast, SPF)."""
    (native.rcu_read_lock if mm.walk_rcu else native.local_irq_disable)()


def lockless_walk_end(mm):
    (native.rcu_read_unlock if mm.walk_rcu else native.local_irq_enable)()


def check_table(mm, t, tag, level, site, va):
    """Step (3): the table we just read from must still be the table the entry meant: not
    freed, not reused.  Unlinked and waiting for its sync (PENDING) is fine: that wait
    is exactly what protects this walker, and its pipe age says whether it did."""
    state = mm.pt_state[t]
    if state == TABLE_FREE or mm.pt_level[t] != level \
            or (int(mm.pt_gen[t]) & GEN_MASK) != tag:
        mm.report("pt_uaf", site, va, t, level, tag)
        return False
    native.walk_ref(walk_ref_of(t, tag))      # outside a walk section: ignored
    if state == TABLE_PENDING:
        mm.pipe.observe(TABLES, t, site, va)
    return True


def walk_lockless(mm, va, site, stop=PTE, use_pwc=False):
    """Walk down to ``stop`` without locks (the caller holds IRQs off or RCU).

    Returns (table, entry, tag) of the deepest level reached: ``table`` is the table at
    ``stop`` (``tag`` its generation tag) and ``entry`` its entry for va, or the PMD
    table and a huge pmd (a leaf above ``stop``: ``entry & PS``), or the first
    non-present upper entry with the level it was found at as a negative table
    (-level).  None when a check failed.
    ``use_pwc``: the hardware walker starts from its paging-structure cache when it
    holds va's PTE table, and fills it after a full walk (IRQs are off: no flush can
    interleave).  A PTE it finds not present through the cache drops the cache entry
    (the page fault that follows does, x86 Intel SDM 4.10.4.1), so the retried walk
    reads the tables again instead of a table that reclaim or collapse removed and whose
    flush is still to come, or one that a broken protocol unlinked and leaked.
    ``mm.walk_point()`` follows each shared read: generic perturbation's pause there
    ages the entry before its table is checked and the walk descends."""
    pt, walk_point = mm.pt, mm.walk_point
    block = va >> LEVEL_SHIFT[PMD]
    if use_pwc:
        slot = mm.pwc[block & (len(mm.pwc) - 1)]
        if int(slot[0]) == (block << 1) | 1:
            cached = int(slot[1])
            t, tag = cached & 0xFFFFFFFF, cached >> 32
            e = int(pt[t, index(va, PTE)])
            walk_point()
            if not check_table(mm, t, tag, PTE, site, va):
                return None
            if not e & P:
                slot[0] = 0
            return t, e, tag
    t, tag, level = ROOT, int(mm.pt_gen[ROOT]) & GEN_MASK, PGD
    while True:
        e = int(pt[t, index(va, level)])
        walk_point()
        if not check_table(mm, t, tag, level, site, va):
            return None
        if level == PMD and use_pwc:
            mm.delay("hw_walk")
        if level == stop:
            if use_pwc and level == PTE:       # key cleared first, set last
                slot[0] = 0
                slot[1] = t | (tag << 32)
                slot[0] = (block << 1) | 1
            return t, e, tag
        if not e & P:
            return -level, e, 0
        if e & PS:
            return t, e, tag
        t, tag, level = entry_pfn(e), entry_gen(e), NEXT[level]
        if t >= mm.g.ntables:
            mm.report("pt_uaf", site, va, t, level, tag)
            return None


# -- allocation on the fault path (mmap_read_lock held) ----------------------------------
def _alloc_level(mm, parent, va, level, lock):
    """__pud_alloc / __pmd_alloc / __pte_alloc: allocate the table below parent for va
    unless present; re-check under ``lock`` ("someone populated it meanwhile").
    HUGE when the pmd is trans-huge (a split in progress included: pmd_trans_huge is true
    of an invalidated one): the caller retries, as the kernel's fault does when
    pte_offset_map_lock returns NULL."""
    idx = index(va, level + 1)
    e = int(mm.pt[parent, idx])
    if e & PS:
        return HUGE
    if e & P:
        return entry_pfn(e)
    new = alloc_table(mm, level, may_fail=True)
    if new < 0:
        return -1
    mm.delay("pte_alloc")
    native.spin_lock(lock, mm.cpu)
    e = int(mm.pt[parent, idx])
    if e & P and not mm.bugs.on("pte_alloc_no_recheck"):
        native.spin_unlock(lock)
        free_table_now(mm, new)          # never published: no walker can hold it
        mm.count("pte_alloc_race")
        return HUGE if e & PS else entry_pfn(e)
    populate(mm, parent, idx, new)
    native.spin_unlock(lock)
    return new


def pte_alloc_walk(mm, va):
    """The PTE table for va, allocating missing levels (mmap_read_lock held), or -1
    (out of tables), or HUGE.
    PGD and PUD entries are populated under page_table_lock, PMD entries under the pmd
    lock (the ptl of the PMD table), as the kernel does with split pmd locks."""
    pud = _alloc_level(mm, ROOT, va, PUD, mm.page_table_lock)
    if pud < 0:
        return -1
    pmd = _alloc_level(mm, pud, va, PMD, mm.page_table_lock)
    if pmd < 0:
        return -1
    return _alloc_level(mm, pmd, va, PTE, mm.ptl(pmd))


def pte_table_of(mm, va):
    """The PTE table for va, or -1 when a level is missing or the pmd is huge (locked
    callers only)."""
    t = ROOT
    for level in (PGD, PUD, PMD):
        e = int(mm.pt[t, index(va, level)])
        if e & (P | PS) != P:
            return -1
        t = entry_pfn(e)
    return t


def pte_offset_map_lock(mm, va):
    """mm/pgtable-generic.c (6.5+): __pte_offset_map enters an RCU read section (reclaim
    may free a PTE table under mmap_lock read) and reads the pmd: none or trans-huge (a
    huge pmd, or one a split has invalidated) gives NULL at once, never a wait on the pmd
    lock: -1 here, with nothing held, and the caller looks at the pmd itself (retries,
    splits or zaps the huge pmd).  Else the ptl of the table it links is taken and the
    pmd re-checked (pmd_same: a table reclaimed meanwhile is looked up again).  Returns
    the table with its ptl held AND the RCU read section still entered: the table may be
    unlinked but is not freed until pte_unmap_unlock drops both."""
    while True:
        native.rcu_read_lock()
        lockdep_assert_walk_protected(mm, "pte_offset_map_lock", va)
        pmd_t, pmd_i = pmd_entry_of(mm, va)
        e = int(mm.pt[pmd_t, pmd_i]) if pmd_t >= 0 else 0
        if e & (P | PS) != P:
            native.rcu_read_unlock()
            return -1
        t = entry_pfn(e)
        # The ptl lives in t: under RCU, t may be unlinked but not freed.  (A failed
        # check is reported; the pmd re-check below sends us round again.)
        check_table(mm, t, entry_gen(e), PTE, "pte_offset_map_lock", va)
        native.spin_lock(mm.ptl(t), mm.cpu)
        if int(mm.pt[pmd_t, pmd_i]) == e:
            return t
        pte_unmap_unlock(mm, t)


def pte_unmap_unlock(mm, t):
    """Release what pte_offset_map_lock returned: t's ptl, then the RCU read section."""
    native.spin_unlock(mm.ptl(t))
    native.rcu_read_unlock()


# -- deposited page tables (mm/pgtable-generic.c) ----------------------------------------
def pgtable_trans_huge_deposit(mm, pmd_t, t):
    """Keep PTE table t (empty, unlinked) for the huge pmd about to be set in PMD table
    pmd_t (its pmd lock held): a split will need it.  A list per PMD table, as the
    kernel's pmd_huge_pte: t goes first."""
    assert_spin_locked(mm, pmd_t, "pgtable_trans_huge_deposit")
    meta = mm.pt_meta
    meta[t]["lru"] = meta[pmd_t]["pmd_huge_pte"]
    meta[pmd_t]["pmd_huge_pte"] = t + 1


def pgtable_trans_huge_withdraw(mm, pmd_t):
    """Take a deposited table back (pmd lock held): the split of a huge pmd of pmd_t fills
    it, the zap of one frees it.  Any of the list's tables, not necessarily the one
    deposited for this pmd (the first).  A huge pmd always has one deposited."""
    assert_spin_locked(mm, pmd_t, "pgtable_trans_huge_withdraw")
    meta = mm.pt_meta
    first = int(meta[pmd_t]["pmd_huge_pte"])
    if not first:
        raise RuntimeError("huge pmd in table #%d with no deposited table" % pmd_t)
    t = first - 1
    meta[pmd_t]["pmd_huge_pte"] = meta[t]["lru"]
    meta[t]["lru"] = 0
    return t


def deposited_tables(mm, pmd_t):
    """The tables deposited in PMD table pmd_t, first to last (the sweep's; at most
    ntables of them, so a list corrupted into a loop ends)."""
    out = []
    k = int(mm.pt_meta[pmd_t]["pmd_huge_pte"])
    while 0 < k <= mm.g.ntables and len(out) < mm.g.ntables:
        out.append(k - 1)
        k = int(mm.pt_meta[k - 1]["lru"])
    return out


def pmd_entry_of(mm, va):
    """(pmd table, index) holding va's PMD entry, or (-1, -1) (locked callers only)."""
    t = ROOT
    for level in (PGD, PUD):
        e = int(mm.pt[t, index(va, level)])
        if not e & P:
            return -1, -1
        t = entry_pfn(e)
    return t, index(va, PMD)
