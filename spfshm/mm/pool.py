"""A page allocator for frames, page tables and VMA records (the buddy allocator's role).

A global stack under a spinlock plus a per-CPU cache (the kernel's per-cpu page lists):
a CPU takes and returns objects in batches, so the global lock is off the hot path.
With the caches off (``batch`` 0, --pcp off: zone_pcp_disable(), which memory offlining
uses, sets pcp->high and batch to 0 so that every free goes straight to the buddy lists)
an object freed by one CPU is the next another allocates: a free's order against the
stores that must precede it (the poison, a new generation) is then open to a race.
Everything lives in the arena, so a sweep (and a post-mortem) can account for every
object: each is on the global stack, in exactly one CPU cache, or in use.
"""
import numpy as np

from .. import native

BATCH = 16
PCP_HIGH = 3 * BATCH


def regions(name, n, ncpus):
    return [(name + "_stack", np.uint32, n),
            (name + "_hdr", np.uint32, 16),                    # [0] lock, [8] top
            (name + "_pcp", np.uint32, (ncpus + 1, PCP_HIGH + BATCH + 1))]   # [c, 0] = count


class Pool:
    __slots__ = ("n", "stack", "hdr", "pcp", "lock", "name", "batch")

    def __init__(self, arena, name, n, batch=BATCH):
        """``batch``: objects moved per refill or drain (a cache holds up to 3 batches);
        0: no cache, every object comes from and goes to the global stack."""
        self.name, self.n, self.batch = name, n, batch
        self.stack = arena[name + "_stack"]
        self.hdr = arena[name + "_hdr"]
        self.pcp = arena[name + "_pcp"]
        self.lock = arena.ptr(name + "_hdr", "uint32_t")

    def init(self, reserved=()):
        """Every object free except ``reserved`` (allocated by the caller)."""
        reserved = set(reserved)
        free = np.array([i for i in range(self.n - 1, -1, -1) if i not in reserved],
                        dtype=np.uint32)
        self.stack[:len(free)] = free
        self.hdr[8] = len(free)
        self.pcp[:, 0] = 0

    def alloc(self, cpu):
        """An object index, or -1 when none is left."""
        if not self.batch:
            got = self._take(cpu, 1)
            return int(got[0]) if len(got) else -1
        pcp = self.pcp[cpu]
        n = int(pcp[0])
        if n == 0:
            n = self._refill(cpu, pcp)
            if n == 0:
                return -1
        pcp[0] = n - 1
        return int(pcp[n])

    def alloc_many(self, cpu, n):
        """n object indexes (an int64 array), or None when fewer are left: this CPU's
        cache first, the rest in one trip to the global stack."""
        pcp = self.pcp[cpu]
        have = int(pcp[0])
        k = min(have, n)
        more = self._take(cpu, n - k, whole=True) if n > k else ()
        if len(more) < n - k:
            return None
        out = np.concatenate([pcp[have - k + 1:have + 1], more]).astype(np.int64)
        pcp[0] = have - k
        return out

    def free(self, cpu, idx):
        if not self.batch:
            self._push(cpu, (idx,))
            return
        pcp = self.pcp[cpu]
        n = int(pcp[0]) + 1
        pcp[n] = idx
        pcp[0] = n
        if n > 3 * self.batch:
            self._drain(cpu, pcp, self.batch)

    def _assert_held(self, cpu):
        """lockdep_assert_held(&zone->lock), at the end of each section that moves the
        global stack's top: a CPU that does not hold the lock there raced, or may have
        raced, another's refill or drain (a model bug: raised, and the run fails)."""
        if native.spin_owner(self.lock) != cpu:
            raise RuntimeError("pool %s: the global stack changed without its lock (CPU %d)"
                               % (self.name, cpu))

    def _take(self, cpu, k, whole=False):
        """Up to k objects off the global stack (``whole``: k or none), as an array."""
        native.spin_lock(self.lock, cpu)
        top = int(self.hdr[8])
        k = min(k, top) if not whole or top >= k else 0
        out = self.stack[top - k:top].copy()
        self.hdr[8] = top - k
        self._assert_held(cpu)
        native.spin_unlock(self.lock)
        return out

    def _refill(self, cpu, pcp):
        got = self._take(cpu, self.batch)
        pcp[1:len(got) + 1] = got
        pcp[0] = len(got)
        return len(got)

    def _drain(self, cpu, pcp, k):
        """Give k objects back to the global stack."""
        n = int(pcp[0])
        k = min(k, n)
        self._push(cpu, pcp[n - k + 1:n + 1])
        pcp[0] = n - k

    def _push(self, cpu, objs):
        """Objects onto the global stack."""
        native.spin_lock(self.lock, cpu)
        top = int(self.hdr[8])
        self.stack[top:top + len(objs)] = objs
        self.hdr[8] = top + len(objs)
        self._assert_held(cpu)
        native.spin_unlock(self.lock)

    def free_counts(self):
        """For each object, how often it is on the global stack or in a CPU cache (at
        quiescence): 1 when free, 0 when in use, more when it was freed twice."""
        parts = [self.stack[:int(self.hdr[8])]]
        for row in self.pcp:
            parts.append(row[1:int(row[0]) + 1])
        return np.bincount(np.concatenate(parts).astype(np.int64), minlength=self.n)
