"""Pipe-count ages (rcutorture's pipe check) of retired objects seen by lockless walkers.

An object (a page table, a VMA record, a VMA tree array, a frame) is *retired* when it has
been unlinked and its free waits for a sync: a shootdown IPI or a grace period.  At that
moment it is stamped with the clock of that sync.  A lockless walker that later reads it
records its *age*: how many syncs began after the stamp and are known to have completed.
A sync that began after the unlink waits for every walker that could still reach the
object, so while a walker reads it that sync cannot have finished: the legal bucket is 0,
and any read in a bucket past it is a violation (``pipe_age``), even when the free itself
has not happened yet (rcutorture's "pipe too long").

Every lockless read of a retired object is observed, in every configuration, where the
walker relies on the object; what makes bucket 0 the only legal one there:

| reader (site)                  | object         | protection         | waited for by     |
|--------------------------------|----------------|--------------------|-------------------|
| hardware walk, its TLB fill    | tables, frames | IRQs off, one insn | every TLB flush,  |
|   (hw_walk, tlb_fill)          |                |                    |   a grace period  |
| SPF walk (spf_walk), gup_fast  | tables         | --walk: IRQs off   | an IPI flush,     |
|   walk (gup)                   |                |   or rcu_read_lock | a grace period    |
| VMA lookups (spf, pervma)      | VMAs, trees    | rcu_read_lock      | a grace period    |
| ptl in a table under RCU       | tables         | rcu_read_lock      | a grace period    |
|   (fault, pte_offset_map_lock) |                |                    |                   |
| gup_fast's pin (gup)           | frames         | pin + PTE re-check | -- (*)            |

(*) a frame the re-check accepts was still mapped, so not retired: its age is read
between the pin and the re-check and recorded once the re-check passed.  The forbidden
pairings (--walk rcu with --table-free ipi, IRQs-off walkers with --tlb-flush no-ipi)
are exactly reads whose protection their sync does not wait for: the check fires.

Clocks, stated once (each completes out of order on many CPUs; per-CPU slots, no shared
counter on a hot path):
  IPI:  a TLB flush (the shootdown IPI, or --tlb-flush no-ipi's remote invalidation, which
        waits only for instructions in flight): the flusher (1) takes a ticket (a shared
        fetch_add, on the flusher's path only) before it starts, (2) waits for every ack
        (every instruction in flight), (3) records ticket+1 in its CPU's slot.  A walker
        with IRQs off cannot ack, so an IPI's (2) waits for it.
  RCU:  a CPU that sees a grace-period cookie elapse (its call_rcu queue) records the
        cookie in its slot.  The stamp is the gp_seq before the free's own cookie.
age = max over the CPUs' slots - stamp.  A grace period is also known to have completed
the moment it has, not only once a CPU's callbacks run (between its operations): the
first one after the stamp has begun and no CPU is in a read-side section that began
before it (rcu_gp_blocker's test, but over every CPU, the reader's own and dead ones
included: a walker that left its section is no reader) gives age 1 at least.
"""
import numpy as np

from .. import native

CLOCK_IPI, CLOCK_RCU = 0, 1
KINDS = ("tables", "vmas", "frames", "trees")
TABLES, VMAS, FRAMES, TREES = range(4)
BUCKETS = 8                                  # ages 0..6, and 7 for 7 or more
LEGAL_AGE = 0
_CLOCK_BIT = 1 << 63


def regions(g):
    n1 = g.ncpus + 1
    return [("pipe_ticket", np.uint64, 8),                   # [0] IPI sync tickets
            ("pipe_clock", np.uint64, (n1, 8)),             # [cpu, clock] completed up to
            ("pipe_hist", np.uint64, (n1, len(KINDS), BUCKETS)),
            ("pipe_stamp_tables", np.uint64, g.ntables),     # 0: not retired
            ("pipe_stamp_vmas", np.uint64, g.nvmas),
            ("pipe_stamp_frames", np.uint64, g.nframes),
            ("pipe_stamp_trees", np.uint64, g.ntrees)]


class Pipe:
    """One CPU's view: its clock slots, its histogram row, and the stamp arrays."""

    __slots__ = ("ticket_ptr", "gp_seq_ptr", "clocks", "my_clock", "hist", "stamps",
                 "report", "percpu")

    def __init__(self, arena, cpu, report):
        self.ticket_ptr = arena.ptr("pipe_ticket")
        self.gp_seq_ptr = arena.ptr("rcu_gp_seq")
        self.clocks = arena["pipe_clock"]
        self.my_clock = self.clocks[cpu]
        self.hist = arena["pipe_hist"][cpu]
        self.stamps = [arena["pipe_stamp_" + k] for k in KINDS]
        self.report = report
        self.percpu = arena["percpu"]

    # -- the syncs' side ------------------------------------------------------------------
    def ipi_sync_begin(self):
        """(1): the ticket of a shootdown about to be sent."""
        return native.fetch_add(self.ticket_ptr, 1)

    def ipi_sync_done(self, ticket):
        """(3): every ack is in."""
        if ticket + 1 > self.my_clock[CLOCK_IPI]:
            self.my_clock[CLOCK_IPI] = ticket + 1

    def gp_done(self, cookie):
        """A grace period with this cookie has elapsed."""
        if cookie > self.my_clock[CLOCK_RCU]:
            self.my_clock[CLOCK_RCU] = cookie

    # -- the objects' side ----------------------------------------------------------------
    def retire(self, kind, idx, clock):
        """Stamp an unlinked object (or a list of them: an mmu_gather's pages, just
        before its flush) with the clock its free waits on."""
        native.smp_mb()                  # the unlink before the clock read
        now = native.load_relaxed(self.ticket_ptr if clock == CLOCK_IPI else self.gp_seq_ptr)
        self.stamps[kind][idx] = (now + 1) | (_CLOCK_BIT if clock == CLOCK_RCU else 0)

    def unretire(self, kind, idx):
        """Allocated again: not retired."""
        self.stamps[kind][idx] = 0

    def retired_at_gp(self, kind, idx):
        """The gp_seq read when the object was retired to wait for a grace period, or 0
        (not retired, or retired to wait for an IPI sync)."""
        s = int(self.stamps[kind][idx])
        return (s & ~_CLOCK_BIT) - 1 if s & _CLOCK_BIT else 0

    def age(self, kind, idx):
        """The object's age in syncs, or -1 when it is not retired."""
        s = int(self.stamps[kind][idx])
        if not s:
            return -1
        clock = CLOCK_RCU if s & _CLOCK_BIT else CLOCK_IPI
        done = int(self.clocks[:, clock].max())
        a = max(0, done - ((s & ~_CLOCK_BIT) - 1))
        if a == 0 and clock == CLOCK_RCU and self._gp_elapsed(s & ~_CLOCK_BIT):
            a = 1
        return a

    def _gp_elapsed(self, cookie):
        """Whether the grace period ``cookie`` has begun and ended by now: no CPU (this
        one too; a dead one's stale section only hides an age) is in a read-side section
        that began before it."""
        if native.load_acquire(self.gp_seq_ptr) < cookie:
            return False
        native.smp_mb()
        snaps = self.percpu["rcu_snap"]
        return not ((snaps != 0) & (snaps < cookie)).any()

    def observe(self, kind, idx, site, va=0):
        """A lockless walker relies on the object now: histogram its age; past the legal
        bucket is a violation.  Returns the age (-1: not retired)."""
        return self.record(kind, idx, site, va, self.age(kind, idx))

    def record(self, kind, idx, site, va, a):
        """``observe`` with the age read earlier: by a walker whose later re-check
        validates what it read (gup_fast: the age read between the pin and the PTE
        re-check is recorded only once the re-check passed)."""
        if a >= 0:
            self.hist[kind, min(a, BUCKETS - 1)] += 1
            if a > LEGAL_AGE:
                self.report("pipe_age", site, va, kind, idx, a)
        return a


def histograms(arena, ncpus):
    """{kind: [count per bucket]} summed over CPUs."""
    h = arena["pipe_hist"][:ncpus + 1].sum(axis=0)
    return {k: h[i].tolist() for i, k in enumerate(KINDS)}
