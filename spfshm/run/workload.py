"""The op mix, derived from the run's seed and the CPU id (every random choice here).

Each CPU draws from its own ``random.Random`` seeded by (seed, cpu), so a run's workload is
a pure function of its configuration.  Accesses dominate; address-space changes churn the
layout so faults, zaps, splits and table frees keep happening.
"""
import random

from ..mm.mm_types import PAGE, PROT_BY_NAME
from ..mm.syscalls import MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HINT

# op -> weight (per mille)
MIX = {"load": 430, "store": 430, "madvise": 40, "mmap": 45, "munmap": 20, "mprotect": 35}
PROTS = [PROT_BY_NAME["rw"]] * 16 + [PROT_BY_NAME["r"]] * 3 + [PROT_BY_NAME["none"]]


def rng_for(seed, cpu):
    return random.Random("spfshm:%d:%d" % (seed, cpu))


def initial_layout(g, seed):
    """(addr, npages, prot) VMAs covering most of the window, from the seed."""
    r = rng_for(seed, -1)
    out, page = [], 0
    while page < g.window_pages:
        n = min(g.window_pages - page, r.randint(16, 256))
        if r.random() < 0.9:
            out.append((g.window_base + page * PAGE, n, r.choice(PROTS)))
        page += n
    return out


BLOCK = 2 << 20   # what one PTE table maps
NHOT = 4          # hot spots shared by all CPUs, so that they contend on the same pages


def hot_spots(g, seed):
    r = rng_for(seed, -2)
    return [g.window_base + r.randrange(g.window_pages) * PAGE for _ in range(NHOT)]


class Workload:
    def __init__(self, g, seed, cpu):
        self.g = g
        self.r = rng_for(seed, cpu)
        self.spots = hot_spots(g, seed)
        self.ops = list(MIX)
        self.cum = []
        acc = 0
        for op in self.ops:
            acc += MIX[op]
            self.cum.append(acc)
        self.total = acc
        self.hot = self.spots[cpu % NHOT]

    def _page(self):
        """A page address, mostly near this CPU's current hot spot (which wanders)."""
        r, g = self.r, self.g
        if r.random() < 0.02:
            self.hot = r.choice(self.spots) if r.random() < 0.7 else \
                g.window_base + r.randrange(g.window_pages) * PAGE
        if r.random() < 0.8:
            va = self.hot + r.randrange(-32, 32) * PAGE
            if g.window_base <= va < g.window_end:
                return va
        return g.window_base + r.randrange(g.window_pages) * PAGE

    def _range(self, maxpages):
        va = self._page()
        n = min(self.r.randint(1, maxpages), (self.g.window_end - va) // PAGE)
        return va, n * PAGE

    def next(self):
        """(op, args)."""
        r = self.r
        x = r.randrange(self.total)
        for op, c in zip(self.ops, self.cum):
            if x < c:
                break
        if op in ("load", "store"):
            return op, (self._page() + 8 * r.randrange(512),)
        if op == "madvise":            # sometimes a large arena's worth (malloc trim)
            return op, self._range(512 if r.random() < 0.25 else 64)
        if op == "munmap":
            if r.random() < 0.1:       # a whole 2 MiB block: its page table gets freed
                base = self._page() & ~(BLOCK - 1)
                if base >= self.g.window_base and base + BLOCK <= self.g.window_end:
                    return op, (base, BLOCK)
            return op, self._range(1024 if r.random() < 0.1 else 128)
        if op == "mprotect":
            va, n = self._range(128)
            return op, (va, n, r.choice(PROTS))
        va, n = self._range(1024 if r.random() < 0.1 else 256)
        flags = r.choice([MAP_FIXED, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HINT])
        return op, (va, n, r.choice(PROTS), flags)
