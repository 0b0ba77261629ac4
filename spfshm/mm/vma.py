"""VMAs and the VMA tree (the maple tree's role).

Follows what Linux v6.14's lockless readers rely on, not its data structure: the maple
tree in RCU mode (nodes replaced, the old ones freed by RCU) and VMAs freed through
call_rcu (vm_area_free, v6.4 to v6.14: --vma-lock rwsem) or, v6.15+ (--vma-lock refcnt),
at once into a SLAB_TYPESAFE_BY_RCU cache (vma_cache.py), where a reader's reference
(vma_lock.py) is what keeps a record.  A sorted array republished whole stands in for
the maple tree.

The tree is a sorted array of (start, end, id) published copy-on-write: a writer (under
mmap_lock write) builds a new array in a free slot, publishes its index with a release
store, and retires the old one with call_rcu, so a lockless reader (SPF, later) never
reads a freed array without it being poisoned and detectably so.  VMA records are
modified only under mmap_lock write and freed through call_rcu too (rwsem); freed
records are poisoned (start = end = POISON, state FREE, generation bumped).

Writer protocol against a lockless reader:
  writer: (1) fill the new array  (2) publish its index (release)  (3) call_rcu(free old),
          the old one stamped for the pipe check (pipe.py)
  reader: (a) rcu_read_lock  (b) read the index (acquire; pairs with (2))  (c) search
          (d) copy the VMA record  (e) validate (mmap_seq for SPF, the VMA lock's
          recheck for per-VMA locks)  (f) rcu_read_unlock
          (refcnt: (d) only once the VMA lock's reference is held, and (e) the address)
"""
import bisect

import numpy as np

from .. import native
from .lockdep import lockdep_assert_walk_protected
from .mmap_lock import mmap_assert_locked, mmap_assert_write_locked
from .vma_cache import kmem_cache_free
from .vma_lock import vma_assert_detached, vma_lock_init, vma_mark_attached, vma_mark_detached
from .pipe import CLOCK_RCU, TREES, VMAS
from .mm_types import MAX_VMAS, POISON, PROT_WRITE, TREE_HDR, VMA_LIVE, VMA_PENDING

TREE_FREE, TREE_LIVE, TREE_PENDING = 0, 1, 2


class Vma:
    """A private copy of a VMA record (what SPF calls the vma copy)."""

    __slots__ = ("id", "start", "end", "prot", "anon_vma", "torn")

    def __init__(self, vid, start, end, prot, anon_vma=0):
        self.id, self.start, self.end, self.prot = vid, start, end, prot
        self.anon_vma = anon_vma
        self.torn = False

    def __repr__(self):
        return "Vma#%d[%#x,%#x) prot=%d" % (self.id, self.start, self.end, self.prot)


def access_ok(prot, write):
    return bool(prot & PROT_WRITE) if write else prot != 0


# -- records ------------------------------------------------------------------------------
def slab_alloc(mm, pool):
    """kmem_cache_alloc (GFP_KERNEL) of a VMA record or, for a tree, the maple tree's
    preallocation (mas_preallocate): an index, or -1 when failslab fails it
    (SLAB_ALLOC_FAIL, seeded per CPU).  The pools are sized for MAX_VMAS live objects,
    the call_rcu queues' limits and every CPU's cache (mm_types.Geometry), so they do
    not run dry otherwise."""
    return -1 if mm.slab_alloc_fails() else pool.alloc(mm.cpu)


def vm_area_alloc(mm, start, end, prot, anon_vma=0):
    """A new record, born write-locked, or -1 (ENOMEM).  Nothing is published: the caller
    (do_mmap, __split_vma) allocates before it changes anything, so a failure leaves the
    mm as it was."""
    vid = slab_alloc(mm, mm.vmas)
    if vid < 0:
        return -1
    rec = mm.vma[vid]
    vma_lock_init(mm, vid)               # born detached: attached when a tree publishes it
    rec["start"], rec["end"], rec["prot"] = start, end, prot
    rec["anon_vma"] = anon_vma           # a split piece shares its original's (anon_vma_clone)
    mm.pipe.unretire(VMAS, vid)
    # Born write-locked: unlocked with every other VMA at mmap_write_unlock.
    native.store_relaxed(mm.vm_lock_seq_ptr(vid), native.load_relaxed(mm.mm_lock_seq))
    native.smp_wmb()
    rec["state"] = VMA_LIVE
    return vid


def _vm_area_free_now(mm, vid):
    """The call_rcu callback: the record's pipe age (pipe.py) must show a grace period
    that began after vm_area_free retired it and has ended."""
    age = mm.pipe.age(VMAS, vid)
    if age < 1:
        mm.report("early_free", "vm_area_free", 0, vid, age)
    kmem_cache_free(mm, vid)


def anon_vma_prepare(mm, vma):
    """mm/rmap.c __anon_vma_prepare, on a VMA's first anonymous fault: under mmap_lock
    read (never under the VMA lock alone: v6.4's lock_vma_under_rcu falls back on a VMA
    without one, since find_mergeable_anon_vma reads the unlocked neighbours) and the mm's
    page_table_lock, which orders two faulters preparing the same VMA.  The model has no
    reverse map: the anon_vma is a flag that, once set, stays for the VMA's life (a
    split piece inherits it).  mmap_lock is asserted as v6.10 does ("mm: Assert the
    mmap_lock is held in __anon_vma_prepare()", which made the comment an assertion)."""
    mmap_assert_locked(mm, "anon_vma_prepare")
    lock = mm.page_table_lock
    native.spin_lock(lock, mm.cpu)
    rec = mm.vma[vma.id]
    if not rec["anon_vma"]:
        rec["anon_vma"] = 1
    native.spin_unlock(lock)
    vma.anon_vma = 1


def vm_area_free(mm, vid):
    """Detach, then free: rwsem (v6.4 to v6.14) after a grace period, since lockless
    readers may still hold it; refcnt (v6.15+) at once, into the SLAB_TYPESAFE_BY_RCU
    cache (vma_cache.py), once vma_assert_detached shows no reference left.  A record
    already pending or free is reported (KASAN's double-free) and left alone."""
    state = int(mm.vma[vid]["state"])
    if state != VMA_LIVE:
        mm.report("double_free", "vm_area_free", 0, vid, state)
        return
    vma_mark_detached(mm, vid)
    if mm.vma_refcnt:
        vma_assert_detached(mm, vid, "vm_area_free")
        kmem_cache_free(mm, vid)
        return
    mm.vma[vid]["state"] = VMA_PENDING
    mm.pipe.retire(VMAS, vid, CLOCK_RCU)
    mm.rcu.call_rcu(_vm_area_free_now, mm, vid)
    mm.count("call_rcu")


def read_vma(mm, vid, site, va=0, lockless=False, gen=None):
    """Copy a record.  Under mmap_lock or the VMA's lock it must be live; a lockless
    reader (RCU) may also see it detached and waiting for its grace period, but never
    freed, nor freed and reused (``gen``: its generation when the lookup found it, which
    only a free changes): either is a use-after-free.  ``v.torn`` tells whether a writer
    changed the record during the copy (the debug seqcount; only checkers look at it)."""
    rec = mm.vma[vid]
    s0 = int(rec["vseq"])
    start = int(rec["start"])
    if lockless:
        mm.delay("vma_copy")
    v = Vma(vid, start, int(rec["end"]), int(rec["prot"]), int(rec["anon_vma"]))
    v.torn = bool(s0 & 1) or int(rec["vseq"]) != s0
    if lockless:
        mm.walk_point()                  # a shared read of the walk, relied on below
    state = rec["state"]
    if state != VMA_LIVE and not (lockless and state == VMA_PENDING) \
            or gen is not None and int(rec["gen"]) != gen:
        mm.report("vma_uaf", site, va, vid, int(rec["state"]), int(rec["gen"]))
        return None
    if state == VMA_PENDING:         # our rcu_read_lock holds its grace period off
        mm.pipe.observe(VMAS, vid, site, va)
    return v


# -- the tree -------------------------------------------------------------------------------
def current_tree(mm):
    return int(native.load_acquire(mm.arena.ptr("mm_words")))       # (b)


def tree_entries(mm, tree):
    """(starts, ends, ids) lists of a tree, cached per process by (index, generation)."""
    row = mm.vma_tree[tree]
    key = (tree, int(row[2]))
    if mm.tree_cache[0] == key:
        return mm.tree_cache[1]
    n = int(row[1])
    flat = row[TREE_HDR:TREE_HDR + 3 * n].reshape(n, 3) if n else row[TREE_HDR:TREE_HDR]
    ents = ([int(x) for x in flat[:, 0]], [int(x) for x in flat[:, 1]],
            [int(x) for x in flat[:, 2]]) if n else ([], [], [])
    mm.tree_cache = (key, ents)
    return ents


def find_vma_rcu(mm, va, site):
    """Lockless lookup (rcu_read_lock held): (id, generation) of the VMA containing va in
    the published tree (id -1 if none), or None when the tree read was a use-after-free.
    The generation (the record's, read at once: the model's tree holds ids, not
    pointers) is what read_vma checks the record against when it copies it."""
    lockdep_assert_walk_protected(mm, site, va)
    tree = current_tree(mm)                                            # (b)
    row = mm.vma_tree[tree]
    gen = int(row[2])
    n = min(int(row[1]), MAX_VMAS)
    ends = row[TREE_HDR + 1:TREE_HDR + 3 * n:3]                         # (c)
    i = int(np.searchsorted(ends, va, side="right"))
    found = i < n and int(row[TREE_HDR + 3 * i]) <= va
    vid = int(row[TREE_HDR + 3 * i + 2]) if found else -1
    vgen = int(mm.vma[vid]["gen"]) if 0 <= vid < len(mm.vma) else 0
    mm.walk_point()                      # a shared read of the walk, relied on below
    # Retired and waiting for a grace period is fine; freed (or freed and reused) while
    # we were in it is a use-after-free, whatever we read.
    state = row[0]
    if state == TREE_FREE or int(row[2]) != gen or vid >= len(mm.vma):
        mm.report("vma_uaf", site, va, tree, int(row[0]), int(row[2]))
        return None
    if state == TREE_PENDING:        # our rcu_read_lock holds its grace period off
        mm.pipe.observe(TREES, tree, site, va)
    return vid, vgen


def find_vma(mm, va):
    """The VMA containing va, or None (mmap_lock held)."""
    mmap_assert_locked(mm, "find_vma", va)
    starts, ends, ids = tree_entries(mm, current_tree(mm))
    i = bisect.bisect_right(ends, va)
    if i < len(ends) and starts[i] <= va:
        return read_vma(mm, ids[i], "find_vma", va)
    return None


def vmas_snapshot(mm):
    """The VMA list as Vma copies, sorted (mmap_lock held: the kernel's VMA iterator
    walks the maple tree under mmap_lock, lockdep-checked)."""
    mmap_assert_locked(mm, "vmas_snapshot")
    starts, ends, ids = tree_entries(mm, current_tree(mm))
    return [Vma(v, s, e, int(mm.vma[v]["prot"]), int(mm.vma[v]["anon_vma"]))
            for s, e, v in zip(starts, ends, ids)]


def tree_prealloc(mm):
    """A free tree slot for publish_tree, or -1 (ENOMEM): vma_iter_prealloc, taken before
    the records change (__split_vma, mmap_region, vms_gather_munmap_vmas), so the store
    itself cannot fail (mmap_lock write held: publish_tree asserts it)."""
    return slab_alloc(mm, mm.trees)


def tree_prealloc_free(mm, new):
    """An unused preallocation given back (mas_destroy on an error path)."""
    mm.trees.free(mm.cpu, new)


def publish_tree(mm, new, vmas):
    """Steps (1)-(3): the preallocated slot ``new`` filled from ``vmas`` (sorted Vma list,
    at most MAX_VMAS: the callers' map_count checks), published; the old one retired.
    A list longer than vm.max_map_count is reported here, at the change that made it
    (an mmap or a split that skipped its check), not only if a sweep meets it."""
    mmap_assert_write_locked(mm, "publish_tree")
    if len(vmas) > mm.cfg.max_map_count:
        mm.report("map_count", "publish_tree", vmas[0].start, len(vmas), mm.cfg.max_map_count, 0)
    mm.pipe.unretire(TREES, new)
    row = mm.vma_tree[new]
    for i, v in enumerate(vmas):
        row[TREE_HDR + 3 * i:TREE_HDR + 3 * i + 3] = (v.start, v.end, v.id)
        if mm.vma[v.id]["detached"]:
            vma_mark_attached(mm, v.id)          # new: vma_iter_store
    row[1] = len(vmas)
    row[2] = int(row[2]) + 1
    row[0] = TREE_LIVE
    old = current_tree(mm)
    native.store_release(mm.arena.ptr("mm_words"), new)             # (2)
    mm.vma_tree[old][0] = TREE_PENDING
    mm.pipe.retire(TREES, old, CLOCK_RCU)
    if mm.bugs.on("vma_tree_free_no_rcu"):
        _tree_free_now(mm, old)                 # BUSTED: readers may still be in it
    else:
        mm.rcu.call_rcu(_tree_free_now, mm, old)                   # (3)


def _tree_free_now(mm, tree):
    row = mm.vma_tree[tree]
    row[0] = TREE_FREE
    row[2] = int(row[2]) + 1
    row[TREE_HDR:TREE_HDR + 3 * int(row[1])] = POISON
    row[1] = 0
    mm.trees.free(mm.cpu, tree)


def init_tree(mm):
    """The empty tree of a new mm (the creating process)."""
    t = mm.trees.alloc(mm.cpu)
    row = mm.vma_tree[t]
    row[1] = 0
    row[0] = TREE_LIVE
    native.store_release(mm.arena.ptr("mm_words"), t)
