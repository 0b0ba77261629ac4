"""The op mix, derived from the run's seed and the CPU id (every random choice here).

Each CPU draws from its own ``random.Random`` seeded by (seed, cpu), so a run's workload is
a pure function of its configuration.  How hard the CPUs contend on the same pages (the
number of shared hot spots, how far a CPU strays from its own) rotates with the seed.  ``--workload``:

- ``mixed`` (default): accesses dominate; address-space changes churn the layout so
  faults, zaps, splits and table frees keep happening (a race finder's mix).
- ``faults``: loads and stores over a fully mapped window, with MADV_DONTNEED to make
  pages fault again (no mmap_lock writer: will-it-scale page_fault style).
- ``faults+writer``: the same, and CPU 0 maps and unmaps a small region of its own in a
  loop (the mmap_lock contention the SPF and per-VMA lock series measured); with
  ``--writer-rate R`` it starts one mmap+munmap pair every 1/R seconds (a fixed schedule,
  no randomness: the op sequence stays a function of the configuration), idling between.
- ``pf1`` / ``pf1+writer``: will-it-scale page_fault1's shape for the scaling benchmark:
  each fault CPU owns a private slice of the window, stores to every page of it in
  order (each store a fault) and then MADV_DONTNEEDs the whole slice, so there is no
  sharing between CPUs and one zap (one shootdown per GATHER_BATCH pages) per slice
  instead of one per few faults; ``+writer`` adds the same writer as ``faults+writer``
  (CPU 0, not a fault CPU).
"""
import random

from ..mm.mm_types import PAGE, PROT_BY_NAME
from ..mm.syscalls import MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HINT

# Every op a CPU can run, in the order of the heartbeat's and the op event's index
OPS = ["load", "store", "mmap", "munmap", "mprotect", "madvise", "reclaim", "gup", "collapse"]
# op -> weight (per mille)
MIXES = {
    "mixed": {"load": 405, "store": 405, "madvise": 40, "mmap": 45, "munmap": 20,
              "mprotect": 35, "gup": 50},
    "faults": {"load": 450, "store": 450, "madvise": 100},
}
WORKLOADS = ("mixed", "faults", "faults+writer", "pf1", "pf1+writer")
WRITER_WORKLOADS = ("faults+writer", "pf1+writer")
WRITER_PAGES = 64        # the writer's own region, at the top of the window
PROTS = [PROT_BY_NAME["rw"]] * 16 + [PROT_BY_NAME["r"]] * 3 + [PROT_BY_NAME["none"]]


def rng_for(seed, cpu):
    return random.Random("spfshm:%d:%d" % (seed, cpu))


def initial_layout(g, seed, workload="mixed"):
    """(addr, npages, prot) VMAs covering most of the window, from the seed (all of it,
    read-write, for the fault workloads, except the writer's region)."""
    r = rng_for(seed, -1)
    out, page = [], 0
    limit = g.window_pages - (WRITER_PAGES if workload != "mixed" else 0)
    while page < limit:
        n = min(limit - page, r.randint(16, 1024))
        if workload != "mixed":
            out.append((g.window_base + page * PAGE, n, PROT_BY_NAME["rw"]))
        elif r.random() < 0.9:
            out.append((g.window_base + page * PAGE, n, r.choice(PROTS)))
        page += n
    return out


BLOCK = 2 << 20   # what one PTE table maps
# How hard the CPUs contend, chosen by the seed (a generic knob, like the perturbation
# profile: narrow windows need two CPUs on one page at one moment): hot spots shared by
# all CPUs, and how far around its hot spot a CPU strays (pages).  A spot needs CPUs to
# contend on it: there are at most ncpus // CPUS_PER_SPOT of them (at least one), and
# CPUs start on them in turn (CPU c on spot c mod spots); a CPU that wanders off to
# another spot finds others there.  With 2 CPUs every level has one spot, and the
# levels differ in how far the CPUs stray.  The radius starts at the seed's level and
# changes within the run: each time a CPU wanders (WANDER_P per page drawn), it draws
# its radius anew from the levels', so that every run meets every level (a window that
# one level rarely opens is not missed by the seeds that start there).
CONTENTION = ((4, 32), (2, 8), (1, 2))
CPUS_PER_SPOT = 4
WANDER_P = 0.02


def contention(seed, ncpus):
    """(hot spots, first radius in pages) of a run: level (seed + seed // 4) mod 3, so
    that seeds 0 to 4 (a short campaign, ``bench detect --seeds 5``) start at every
    level, every generic perturbation profile (seed mod 4) meets every level within 12
    consecutive seeds, and every configuration of the fuzz rotation (seed mod 15) within
    4 turns."""
    spots, radius = CONTENTION[(seed + seed // 4) % len(CONTENTION)]
    return min(spots, max(1, ncpus // CPUS_PER_SPOT)), radius


def hot_spots(g, seed):
    r = rng_for(seed, -2)
    return [g.window_base + r.randrange(g.window_pages) * PAGE
            for _ in range(contention(seed, g.ncpus)[0])]


class Workload:
    def __init__(self, g, seed, cpu, kind="mixed", reclaim_op=False, reclaimer=False,
                 collapse_op=False, writer_rate=0.0, whole_blocks=False):
        self.g = g
        self.r = rng_for(seed, cpu)
        self.writer = kind in WRITER_WORKLOADS and cpu == 0
        # --writer-rate: the writer's pair k is due at start + k * period (0: no pacing)
        self.period_ns = int(1e9 / writer_rate) if self.writer and writer_rate > 0 else 0
        self.due_ns = None
        self.reclaimer = reclaimer
        # With reclaim or collapse on, whole 2 MiB blocks are mapped read-write and
        # zapped more often: PT_RECLAIM frees a table only when one VMA's zap covers all
        # of it, and khugepaged collapses only a block inside one writable VMA.
        self.zap_block_p = 0.3 if whole_blocks else 0.1      # of DONTNEEDs
        self.map_block_p = 0.2 if whole_blocks else 0.0      # of mmaps
        self.end = g.window_end - (WRITER_PAGES * PAGE if kind != "mixed" else 0)
        self.spots = [va for va in hot_spots(g, seed) if va < self.end] or [g.window_base]
        self.radius = contention(seed, g.ncpus)[1]
        mix = dict(MIXES["mixed" if kind == "mixed" else "faults"])
        if reclaim_op:
            mix["reclaim"] = 10          # the seed scanner, inline (no --reclaimer)
        if collapse_op:
            mix["collapse"] = 5          # a khugepaged scan from a page near the hot spot
        self.ops = list(mix)
        self.cum = []
        acc = 0
        for op in self.ops:
            acc += mix[op]
            self.cum.append(acc)
        self.total = acc
        self.hot = self.spots[cpu % len(self.spots)]
        self.mapped = False
        self.pf1 = kind.startswith("pf1") and not self.writer
        if self.pf1:                     # this CPU's private slice of the window
            first = 1 if kind in WRITER_WORKLOADS else 0
            nfault = max(1, g.ncpus - first)
            self.slice_pages = (self.end - g.window_base) // PAGE // nfault
            self.slice = g.window_base + (cpu - first) % nfault * self.slice_pages * PAGE
            self.cursor = 0

    def _page(self):
        """A page address, mostly near this CPU's current hot spot (which wanders)."""
        r, g = self.r, self.g
        if r.random() < WANDER_P:
            self.hot = r.choice(self.spots) if r.random() < 0.7 else \
                g.window_base + r.randrange((self.end - g.window_base) // PAGE) * PAGE
            self.radius = r.choice(CONTENTION)[1]
        if r.random() < 0.8:
            va = self.hot + r.randrange(-self.radius, self.radius) * PAGE
            if g.window_base <= va < self.end:
                return va
        return g.window_base + r.randrange((self.end - g.window_base) // PAGE) * PAGE

    def _block(self):
        """A whole 2 MiB-aligned block near the hot spot, or None."""
        base = self._page() & ~(BLOCK - 1)
        if base >= self.g.window_base and base + BLOCK <= self.end:
            return base, BLOCK
        return None

    def _range(self, maxpages):
        va = self._page()
        n = min(self.r.randint(1, maxpages), (self.end - va) // PAGE)
        return va, n * PAGE

    def wait_ns(self, now_ns):
        """With --writer-rate: how long the writer must idle before its next pair is due
        (0: go).  A writer that fell behind does not burst: it restarts the schedule."""
        if not self.period_ns or self.mapped:
            return 0                     # not paced, or the munmap half of a pair
        if self.due_ns is None:
            self.due_ns = now_ns
        wait = self.due_ns - now_ns
        if wait > 0:
            return wait
        self.due_ns += self.period_ns
        if self.due_ns < now_ns - self.period_ns:      # more than a period late: restart
            self.due_ns = now_ns + self.period_ns
        return 0

    def next(self):
        """(op, args)."""
        r = self.r
        if self.reclaimer:
            return "reclaim", ()
        if self.pf1:                     # touch every page of the slice, then zap it all
            if self.cursor < self.slice_pages:
                self.cursor += 1
                return "store", (self.slice + (self.cursor - 1) * PAGE,)
            self.cursor = 0
            return "madvise", (self.slice, self.slice_pages * PAGE)
        if self.writer:                  # mmap, then munmap, its own region, in a loop
            self.mapped = not self.mapped
            n = WRITER_PAGES * PAGE
            if self.mapped:
                return "mmap", (self.end, n, PROT_BY_NAME["rw"], MAP_FIXED_NOREPLACE)
            return "munmap", (self.end, n)
        x = r.randrange(self.total)
        for op, c in zip(self.ops, self.cum):
            if x < c:
                break
        if op in ("load", "store"):
            return op, (self._page() + 8 * r.randrange(512),)
        if op == "reclaim":
            return op, ()
        if op == "collapse":
            return op, (self._page(),)
        if op == "gup":
            return op, (self._page(), r.randint(1, 16))
        if op == "madvise":            # sometimes a large arena's worth (malloc trim)
            if r.random() < self.zap_block_p:
                block = self._block()
                if block:
                    return op, block
            return op, self._range(512 if r.random() < 0.25 else 64)
        if op == "munmap":
            if r.random() < 0.1:       # a whole 2 MiB block: its page table gets freed
                block = self._block()
                if block:
                    return op, block
            return op, self._range(1024 if r.random() < 0.1 else 128)
        if op == "mprotect":
            va, n = self._range(128)
            return op, (va, n, r.choice(PROTS))
        if r.random() < self.map_block_p:    # a whole block, read-write (a heap arena)
            block = self._block()
            if block:
                return op, block + (PROT_BY_NAME["rw"], MAP_FIXED)
        va, n = self._range(1024 if r.random() < 0.1 else 256)
        flags = r.choice([MAP_FIXED, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HINT])
        return op, (va, n, r.choice(PROTS), flags)
