"""The SMP substrate every model runs on: per-CPU slots, the RCU epoch, event rings.

``smp_regions`` describes the arena regions; ``Smp`` binds them in one process
(``attach``) and turns the calling process into a CPU (``become_cpu``).  Ring reading
is here too, since a dead worker's ring is read by the parent.
"""
import numpy as np

from . import native

PERCPU_DTYPE = native.struct_dtype("struct spf_percpu")
EVENT_DTYPE = native.struct_dtype("struct spf_event")
RING_HDR_WORDS = native.ffi.sizeof("struct spf_ring_hdr") // 8
DEFAULT_RING_CAPACITY = 16384   # events per CPU: ~15000 ops with their IPIs unwrapped


def check_ncpus(ncpus):
    if not 1 <= ncpus <= native.MAX_CPUS:
        raise ValueError("cpus must be 1..%d, got %d" % (native.MAX_CPUS, ncpus))


def smp_regions(ncpus, ring_capacity=DEFAULT_RING_CAPACITY):
    check_ncpus(ncpus)
    if ring_capacity <= 0 or ring_capacity & (ring_capacity - 1):
        raise ValueError("ring capacity must be a power of two, got %d" % ring_capacity)
    ring_words = RING_HDR_WORDS + ring_capacity * EVENT_DTYPE.itemsize // 8
    return [
        ("percpu", PERCPU_DTYPE, ncpus),
        ("rcu_gp_seq", np.uint64, 8),            # one word used; a line of its own
        ("rings", np.uint64, (ncpus, ring_words)),
    ]


class Smp:
    """Per-process binding of the SMP regions of an arena."""

    def __init__(self, arena, ncpus):
        self.arena, self.ncpus = arena, ncpus
        self.percpu = arena["percpu"]
        self.rings = arena["rings"]
        self.capacity = (self.rings.shape[1] - RING_HDR_WORDS) * 8 // EVENT_DTYPE.itemsize

    def init(self):
        """Once, in the creating process, on a new (zero-filled) arena."""
        self.percpu[:] = np.zeros(self.ncpus, dtype=PERCPU_DTYPE)
        self.percpu["alive"] = 0
        self.arena["rcu_gp_seq"][0] = 1
        for c in range(self.ncpus):
            native.lib.spf_ring_init(self.ring_ptr(c), self.capacity)
        self.attach()

    def attach(self):
        """In every process: install the IPI handler, point the native core at the arena."""
        native.cpu_setup(self.arena.ptr("percpu", "struct spf_percpu"), self.ncpus,
                         self.arena.ptr("rcu_gp_seq"))

    def ring_ptr(self, cpu):
        return native.ffi.cast("struct spf_ring_hdr *", self.arena.ptr("rings", "uint64_t")
                               + cpu * self.rings.shape[1])

    def become_cpu(self, cpu):
        native.cpu_register(cpu, self.ring_ptr(cpu))

    def events(self, cpu):
        """The valid records of one CPU's ring, oldest first (works after it died)."""
        row = self.rings[cpu]
        head = int(row[0])
        ev = row[RING_HDR_WORDS:].view(EVENT_DTYPE)
        lo = max(0, head - self.capacity)
        idx = np.arange(lo, head, dtype=np.uint64)
        recs = ev[(idx % self.capacity).astype(np.int64)]
        return recs[recs["seq"] == idx + 1]

    def timeline(self, cpus=None):
        """Events of the given CPUs merged in global (stamp) order."""
        parts = [self.events(c) for c in (range(self.ncpus) if cpus is None else cpus)]
        allev = np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)
        return allev[np.argsort(allev["stamp"], kind="stable")]
