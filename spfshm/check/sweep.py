"""Quiescent sweeps: with every CPU parked between operations, check the whole arena.

- every frame is free, or mapped exactly as often as its mapcount says (a huge page by
  its head: its subpages share the head's state);
- every table is reachable exactly once, or pending free, or free (and a free or pending
  one is linked from nowhere);
- no present PTE outside a VMA or more permissive than its VMA;
- VMAs sorted, live, not overlapping;
- RSS counters (summed over CPUs) equal the PTEs that map frames;
- every TLB entry agrees with its PTE (same frame, no more permission).
Returns the number of objects checked; violations go to the sweeper's row.
"""
import bisect

import numpy as np

from ..mm.mm_types import (FRAME_FREE, FRAME_INUSE, HPAGE_NR, LEVEL_SHIFT, PAGE, PGD, PTE,
                           TABLE_LIVE, VMA_LIVE)
from ..mm.pagetable import (GEN_MASK, NEXT, P, PROTNONE, PS, RW, ROOT, entry_gen, entry_pfn,
                            mk_entry)
from ..mm.vma import current_tree, tree_entries

MAPPED = P | PROTNONE


def sweep(mm):
    rep = mm.report
    g = mm.g
    checked = 0

    # VMAs
    starts, ends, ids = tree_entries(mm, current_tree(mm))
    prev_end = 0
    for s, e, vid in zip(starts, ends, ids):
        if s < prev_end or e <= s:
            rep("vma_overlap", "sweep", s, s, e, prev_end)
        if mm.vma[vid]["state"] != VMA_LIVE:
            rep("vma_uaf", "sweep", s, vid, int(mm.vma[vid]["state"]), int(mm.vma[vid]["gen"]))
        prev_end = e
    checked += len(ids)
    prots = [int(mm.vma[v]["prot"]) for v in ids]

    # Page tables, from the root
    reach = np.zeros(g.ntables, dtype=np.int64)
    frame_maps = np.zeros(g.nframes, dtype=np.int64)
    ptes = {}                                   # va -> pte for the TLB audit
    present = 0
    stack = [(ROOT, PGD, 0)]
    reach[ROOT] = 1
    while stack:
        t, level, base = stack.pop()
        row = mm.pt[t]
        idx = np.flatnonzero(row & MAPPED if level == PTE else row & P)
        checked += 1
        for i in idx.tolist():
            e = int(row[i])
            va = base + (i << LEVEL_SHIFT[level])
            child = entry_pfn(e)
            if e & PS:
                present += HPAGE_NR
                checked += 1
                if _check_leaf(mm, rep, va, e, frame_maps, starts, ends, prots,
                               va + (HPAGE_NR - 1) * PAGE):
                    for k in range(HPAGE_NR):
                        ptes[va + k * PAGE] = mk_entry(child + k, entry_gen(e), e & (P | RW))
                continue
            if level != PTE:
                if child >= g.ntables:
                    rep("pt_leak", "sweep", va, child, level, -1)
                    continue
                if mm.pt_state[child] != TABLE_LIVE:
                    rep("pt_free_reachable", "sweep", va, child, int(mm.pt_state[child]), t)
                    continue
                reach[child] += 1
                if reach[child] == 1:
                    stack.append((child, NEXT[level], va))
                continue
            present += 1
            ptes[va] = e
            checked += 1
            _check_leaf(mm, rep, va, e, frame_maps, starts, ends, prots, va)

    states = mm.pt_state[:g.ntables]
    for t in np.flatnonzero((states == TABLE_LIVE) & (reach != 1)).tolist():
        rep("pt_leak", "sweep", 0, t, int(mm.pt_level[t]), int(reach[t]))
    for t in np.flatnonzero((states != TABLE_LIVE) & (reach > 0)).tolist():
        rep("pt_free_reachable", "sweep", 0, t, int(states[t]), -1)
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
    free = np.concatenate([mm.frames.free_set(), heads[mm.hpages.free_set()]])
    for f in free[meta["state"][free] != FRAME_FREE].tolist():
        rep("frame_leak", "sweep", 0, f, int(meta[f]["refcount"]), -1)
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
            if e is None or not e & P or entry_pfn(e) != f or (writable and not e & RW):
                rep("stale_tlb", "sweep", va, f, int(writable), cpu)
            checked += 1
    return checked


def _check_leaf(mm, rep, va, e, frame_maps, starts, ends, prots, last):
    """A present leaf (PTE, or huge pmd covering [va, last]): its frame is in use at the
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
    elif e & RW and not prots[k] & 2:
        rep("pte_prot", "sweep", va, e, prots[k])
    return True
