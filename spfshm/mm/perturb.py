"""Perturbation at named protocol points (KCSAN's and rcutorture's delays, but seeded).

At each named point a CPU pauses with probability ``--delay P`` for up to ``MAX_US``
(uniform), drawing from its own RNG stream of (seed, cpu), so a run's perturbation is part
of its configuration.  ``--delay-points a,b`` restricts the points.  Each point counts its
hits per CPU.  Pauses inside IRQs-off sections are what make windows wide: a walker with
IRQs off that pauses holds every TLB-flush IPI, a writer that pauses between two steps
exposes its intermediate state.
"""
import random

from .. import native

POINTS = {
    "spf_after_seq_read": "SPF: after the mmap_seq read (step 1)",
    "vma_copy": "lockless VMA copy: between reading the fields",
    "spf_before_ptl": "SPF: between the pmd re-read and spin_trylock(ptl) (step 6)",
    "fault_before_ptl": "classical fault: between the table walk and the ptl",
    "install_pte": "anonymous fault: between the pte_none check and setting the PTE",
    "pte_alloc": "__pte_alloc: between finding the pmd empty and taking the pmd lock",
    "gup_pin": "gup_fast: between reading the PTE and taking the reference",
    "gup_hold": "gup_fast holder: between pinning pages and releasing them (DMA)",
    "pervma_lookup": "per-VMA fault: between the RCU lookup and vma_start_read",
    "vma_start_read": "vma_start_read: between the sequence check and the trylock",
    "hw_walk": "hardware walk (IRQs off): between reading the PMD and the PTE",
    "zap_under_ptl": "zap_pte_range: PTEs cleared, ptl held, before the forced flush",
    "zap_ptl_dropped": "zap_pte_range: ptl dropped to free a batch, before taking it again",
    "pmd_clear_to_free": "free_pgtables: between clearing the pmd and freeing the table",
    "collapse_flush": "khugepaged: pmd cleared, ptl and pmd lock held, before the flush",
    "split_vma": "__split_vma: between updating the bounds and the flags",
    "ipi_handler": "inside the IPI handler, before the ack (native)",
}
POINT_NAMES = list(POINTS)
POINT_ID = {p: i for i, p in enumerate(POINT_NAMES)}


class Perturb:
    """Per CPU; ``delay(point)`` is a no-op method when perturbation is off."""

    def __init__(self, cfg, cpu, hits_row):
        self.p = cfg.delay
        self.max_ns = int(cfg.delay_max_us * 1000)
        self.points = set(cfg.delay_points or POINT_NAMES)
        self.rng = random.Random("spfshm-delay:%d:%d" % (cfg.seed, cpu))
        self.hits = hits_row
        if "ipi_handler" in self.points and self.p > 0:
            native.lib.spf_ipi_set_handler_delay(int(self.p * 1e6), self.max_ns,
                                                 self.rng.getrandbits(64))

    def delay(self, point):
        if point in self.points and self.rng.random() < self.p:
            self.hits[POINT_ID[point]] += 1
            native.sleep_ns(self.rng.randrange(self.max_ns + 1))


def no_delay(point):
    pass
