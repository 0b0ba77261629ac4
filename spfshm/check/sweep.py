"""Quiescent sweeps: with every CPU parked between operations, check the whole arena.

- every frame is free, or mapped exactly as often as its mapcount says (a huge page by
  its head: its subpages share the head's state);
- every table is reachable exactly once, or pending free, or free (and a free or pending
  one is linked from nowhere); a PTE table deposited with a PMD table for one of its huge
  pmds (khugepaged) is reachable through that deposit, one per huge pmd;
- no mapped PTE outside a VMA, and none that grants more than its VMA: a present one
  under PROT_NONE, a writable one under a read-only VMA; a PROT_NONE entry only under
  PROT_NONE (elsewhere no fault could ever make it present);
- VMAs sorted, live, not overlapping; every live VMA record and tree published;
- RSS counters (summed over CPUs) equal the PTEs that map frames;
- every TLB entry agrees with its PTE: the frame at the generation it was filled at (a
  frame freed and reused at the same pfn is a different frame), no more permission;
- every pool (tables, frames, huge pages, VMA records, VMA trees): a free object is on
  the free lists (global stack and CPU caches) exactly once, an object in use on none.
With ``final`` (the end of a run, after every CPU's rcu_barrier) also: no table, VMA
record or tree is left unlinked and waiting for a free that will never come (kmemleak).
Returns the number of objects checked; violations go to the sweeper's row.
"""
import bisect

import numpy as np

from ..mm.mm_types import (FRAME_FREE, FRAME_INUSE, HPAGE_NR, LEVEL_SHIFT, PAGE, PGD, PMD,
                           PTE, TABLE_FREE, TABLE_LIVE, TABLE_PENDING, VMA_FREE, VMA_LIVE,
                           VMA_PENDING)
from ..mm.pagetable import (GEN_MASK, NEXT, P, PROTNONE, PS, RW, ROOT, deposited_tables,
                            entry_gen, entry_pfn, leaf_beyond_prot, mk_entry)
from ..mm.vma import TREE_FREE, TREE_LIVE, TREE_PENDING, current_tree, tree_entries
from ..mm.vma_lock import MM_OTHER

MAPPED = P | PROTNONE
# Pool numbers in the pool violations (debug.KINDS spells them out)
POOL_TABLES, POOL_FRAMES, POOL_HPAGES, POOL_VMAS, POOL_TREES = range(5)


def sweep(mm, final=False):
    rep = mm.report
    g = mm.g
    checked = 0

    # VMAs
    starts, ends, ids = tree_entries(mm, current_tree(mm))
    prev_end = 0
    for s, e, vid in zip(starts, ends, ids):
        if s < prev_end or e <= s:
            rep("vma_overlap", "sweep", s, s, e, prev_end)
        if s < g.window_base or e > g.window_end:
            rep("vma_outside", "sweep", s, s, e, g.window_end)
        if mm.vma[vid]["state"] != VMA_LIVE:
            rep("vma_uaf", "sweep", s, vid, int(mm.vma[vid]["state"]), int(mm.vma[vid]["gen"]))
        prev_end = e
    if len(ids) > mm.cfg.max_map_count:
        rep("map_count", "sweep", starts[0], len(ids), mm.cfg.max_map_count, 0)
    checked += len(ids)
    prots = [int(mm.vma[v]["prot"]) for v in ids]

    # Page tables, from the root (a free or pending table is reported where it is linked)
    reach = np.zeros(g.ntables, dtype=np.int64)
    frame_maps = np.zeros(g.nframes, dtype=np.int64)
    ptes = {}                                   # va -> pte for the TLB audit
    present = 0
    stack = [(ROOT, PGD, 0)]
    reach[ROOT] = 1

    def link(child, level, va, parent, walk):
        """A table linked below parent (or deposited there: not walked, it is empty)."""
        if child >= g.ntables:
            rep("pt_leak", "sweep", va, child, level, -1)
        elif mm.pt_state[child] != TABLE_LIVE:
            rep("pt_free_reachable", "sweep", va, child, int(mm.pt_state[child]), parent)
        else:
            reach[child] += 1
            if reach[child] == 1 and walk:
                stack.append((child, NEXT[level], va))

    while stack:
        t, level, base = stack.pop()
        row = mm.pt[t]
        idx = np.flatnonzero(row & MAPPED if level == PTE else row & P)
        checked += 1
        huge = 0
        for i in idx.tolist():
            e = int(row[i])
            va = base + (i << LEVEL_SHIFT[level])
            child = entry_pfn(e)
            if e & PS:
                huge += 1
                present += HPAGE_NR
                checked += 1
                if _check_leaf(mm, rep, va, e, frame_maps, starts, ends, prots,
                               va + (HPAGE_NR - 1) * PAGE):
                    for k in range(HPAGE_NR):
                        ptes[va + k * PAGE] = mk_entry(child + k, entry_gen(e), e & (P | RW))
                continue
            if level != PTE:
                link(child, level, va, t, True)
                continue
            present += 1
            ptes[va] = e
            checked += 1
            _check_leaf(mm, rep, va, e, frame_maps, starts, ends, prots, va)
        # One deposited PTE table per huge pmd (khugepaged's): those are reachable; one
        # more is leaked (nobody withdraws it), one fewer would fail the next split
        for dep in deposited_tables(mm, t)[:huge] if level == PMD else ():
            link(dep, PMD, base, t, False)

    states = mm.pt_state[:g.ntables]
    for t in np.flatnonzero((states == TABLE_LIVE) & (reach != 1)).tolist():
        rep("pt_leak", "sweep", 0, t, int(mm.pt_level[t]), int(reach[t]))
    checked += g.ntables

    # Frames (a huge page's tails follow its head)
    meta = mm.frame_meta[:g.nframes]
    inuse = meta["state"] == FRAME_INUSE
    heads = np.arange(g.nsmall, g.nframes, HPAGE_NR)
    huge_state = meta["state"][g.nsmall:].reshape(-1, HPAGE_NR)
    for h in heads[(huge_state != huge_state[:, :1]).any(axis=1)].tolist():
        rep("frame_leak", "sweep", 0, h, int(meta[h]["refcount"]), -1)
    inuse[g.nsmall:] &= (np.arange(g.nsmall, g.nframes) - g.nsmall) % HPAGE_NR == 0
    for f in np.flatnonzero(inuse & (frame_maps == 0)).tolist():
        rep("frame_leak", "sweep", 0, f, int(meta[f]["refcount"]), int(meta[f]["mapcount"]))
    for f in np.flatnonzero(inuse & (frame_maps > 0) & (meta["mapcount"] != frame_maps)).tolist():
        rep("mapcount", "sweep", 0, f, int(meta[f]["mapcount"]), int(frame_maps[f]))
    checked += g.nframes

    # RSS
    rss = int(mm.rss_all[:, 0].sum())
    if rss != present:
        rep("rss", "sweep", 0, rss, present)

    # TLBs (an entry for a huge page's subpage is checked against its PTE-like view)
    for cpu in np.flatnonzero(mm.online()).tolist():
        tlb = mm.tlbs[cpu]
        for tag, data, gen, va in tlb[tlb[:, 0] & 1 == 1].tolist():
            e = ptes.get(va)
            f, writable = data >> 12, bool(data & 2)
            if f < g.nframes and gen != int(mm.frame_gen[f]):
                rep("frame_uaf", "sweep", va, gen, int(mm.frame_gen[f]), f)
            elif e is None or not e & P or entry_pfn(e) != f or (writable and not e & RW):
                rep("stale_tlb", "sweep", va, f, int(writable), cpu)
            checked += 1

    checked += _check_pools(mm, rep, ids, heads, final)
    return checked


def _check_leaf(mm, rep, va, e, frame_maps, starts, ends, prots, last):
    """A mapped leaf (PTE, or huge pmd covering [va, last]): its frame is in use at the
    generation it names, and one VMA allows all of it.  False when the frame is bad."""
    f = entry_pfn(e)
    if f >= mm.g.nframes or mm.frame_meta[f]["state"] != FRAME_INUSE \
            or (int(mm.frame_gen[f]) & GEN_MASK) != entry_gen(e):
        rep("frame_free_mapped", "sweep", va, f,
            int(mm.frame_meta[f]["state"]) if f < mm.g.nframes else -1)
        return False
    frame_maps[f] += 1
    k = bisect.bisect_right(ends, va)
    if k >= len(ends) or starts[k] > va or ends[k] <= last:
        rep("stale_pte", "sweep", va, f, e)
    elif leaf_beyond_prot(e, prots[k]):
        rep("pte_prot", "sweep", va, e, prots[k])
    return True


def _check_pools(mm, rep, ids, heads, final):
    """Every object of every pool is free and on the free lists once, or in use and on
    none; live VMA records and trees are published; with ``final``, nothing is still
    pending.  Returns the number of objects checked."""
    g = mm.g
    vma_state = mm.vma["state"]
    tree_state = mm.vma_tree[:, 0]
    pools = [(POOL_TABLES, mm.tables, mm.pt_state[:g.ntables], TABLE_FREE, TABLE_PENDING),
             (POOL_FRAMES, mm.frames, mm.frame_meta["state"][:g.nsmall], FRAME_FREE, None),
             (POOL_HPAGES, mm.hpages, mm.frame_meta["state"][heads], FRAME_FREE, None),
             (POOL_VMAS, mm.vmas, vma_state, VMA_FREE, VMA_PENDING),
             (POOL_TREES, mm.trees, tree_state, TREE_FREE, TREE_PENDING)]
    checked = 0
    for code, pool, state, free, pending in pools:
        listed = pool.free_counts()[:pool.n]
        is_free = state == free
        for i in np.flatnonzero(listed > 1).tolist():
            rep("double_free", "sweep", 0, code, i, int(listed[i]))
        for i in np.flatnonzero(is_free & (listed == 0)).tolist():
            rep("free_unlisted", "sweep", 0, code, i, int(state[i]))
        for i in np.flatnonzero(~is_free & (listed > 0)).tolist():
            rep("listed_inuse", "sweep", 0, code, i, int(state[i]))
        if final and pending is not None:
            for i in np.flatnonzero(state == pending).tolist():
                rep("never_freed", "sweep", 0, code, i, int(state[i]))
        checked += pool.n

    published = np.zeros(g.nvmas, dtype=bool)
    published[ids] = True
    ours = mm.vma["vm_mm"] != MM_OTHER          # the other mm's (vma_cache.py) are in use
    for v in np.flatnonzero((vma_state == VMA_LIVE) & ours & ~published).tolist():
        rep("obj_leak", "sweep", 0, POOL_VMAS, v, VMA_LIVE)
    live_trees = np.flatnonzero(tree_state == TREE_LIVE)
    for t in live_trees[live_trees != current_tree(mm)].tolist():
        rep("obj_leak", "sweep", 0, POOL_TREES, t, TREE_LIVE)
    return checked
